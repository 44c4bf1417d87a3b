//! `status [--json]`: what the queue holds and how sending and polling went, read from the queue
//! file (works while the daemon runs).

use std::path::Path;

use super::{Exit, age};
use crate::queue;
use crate::sender::payload::format_time;

pub fn run(queue_path: &Path, json: bool) -> Exit {
    let st = match queue::status(queue_path) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return Exit::Failure;
        }
    };
    if json {
        match serde_json::to_string_pretty(&st) {
            Ok(s) => println!("{s}"),
            Err(e) => {
                eprintln!("error: {e}");
                return Exit::Failure;
            }
        }
        return Exit::Ok;
    }
    let now = queue::now_unix();
    let c = |k: &str| st.counters.get(k).copied().unwrap_or(0);
    let state = |k: &str| st.state.get(k).map(String::as_str);
    println!("queue {}", st.queue.display());
    match st.oldest_time {
        Some(t) => println!(
            "  pending       {} readings in {} series, oldest {} ago ({})",
            st.pending,
            st.series.len(),
            age(now - t),
            format_time(t)
        ),
        None => println!("  pending       0 readings"),
    }
    println!("  dead letters  {} (see `dead list`)", st.dead_letters);
    println!(
        "  totals        enqueued {}, delivered {} (of which 409 duplicates {}), dead-lettered {}, dropped {}",
        c("enqueued"),
        c("delivered"),
        c("duplicates"),
        c("dead_lettered"),
        c("dropped")
    );
    if c("unsynced") > 0 || st.unsynced_pending > 0 {
        println!(
            "  clock         {} readings taken with an unsynchronised clock ({} still pending)",
            c("unsynced"),
            st.unsynced_pending
        );
    }
    if c("set_aside") > 0 {
        println!(
            "  corruption    queue set aside {} time(s), {} readings salvaged; last: {}",
            c("set_aside"),
            c("salvaged"),
            state("last_set_aside").unwrap_or("?")
        );
    }
    if c("retried") > 0 {
        println!(
            "  retried       {} dead letters requeued by an operator",
            c("retried")
        );
    }
    match state("last_delivery").and_then(|v| v.parse::<i64>().ok()) {
        Some(t) => println!("  last delivery {} ago ({})", age(now - t), format_time(t)),
        None => println!("  last delivery never"),
    }
    if let Some(s) = state("sending") {
        println!("  sending       {s}");
    }
    if let Some(e) = state("last_error") {
        let when = state("last_error_at")
            .and_then(|v| v.parse::<i64>().ok())
            .map(|t| format!(" ({} ago)", age(now - t)))
            .unwrap_or_default();
        println!("  last error    {e}{when}");
    }
    if !st.series.is_empty() {
        println!("series with pending readings:");
        for s in &st.series {
            let suit = s
                .suit
                .as_deref()
                .map(|x| format!("/{x}"))
                .unwrap_or_default();
            println!(
                "  {:<10} {}{suit}: {} pending, oldest {} ago",
                s.kind,
                s.import_id,
                s.pending,
                age(now - s.oldest_time)
            );
        }
    }
    if !st.meters.is_empty() {
        println!("meters (last poll):");
        for m in &st.meters {
            let result = if m.ok {
                "ok".to_string()
            } else {
                format!(
                    "FAILED{} ({} in a row): {}",
                    if m.down { ", down" } else { "" },
                    m.failures,
                    m.error.as_deref().unwrap_or("?")
                )
            };
            let line = if m.crc_errors > 0 || m.garbage_bytes > 0 {
                format!(
                    " (line noise: {} bad CRC, {} garbage bytes)",
                    m.crc_errors, m.garbage_bytes
                )
            } else {
                String::new()
            };
            println!(
                "  {}/{}: {} ago, {result}{line}",
                m.bus,
                m.meter,
                age(now - m.time)
            );
        }
    }
    Exit::Ok
}
