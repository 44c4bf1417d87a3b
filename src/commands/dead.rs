//! `dead list | retry | purge`: the operator's view of dead-lettered readings.

use std::path::Path;

use super::Exit;
use crate::queue::{self, DeadRow, DeadSelection};
use crate::sender::payload::format_time;

fn print_rows(rows: &[DeadRow]) {
    for d in rows {
        let suit = d
            .series
            .suit
            .as_deref()
            .map(|x| format!("/{x}"))
            .unwrap_or_default();
        let value = d.value.map_or_else(|| "NaN".to_string(), |v| v.to_string());
        println!(
            "{:>6}  {} {}{suit}  {}  {} {}  — {}",
            d.id,
            d.series.kind,
            d.series.import_id,
            format_time(d.time),
            value,
            d.unit.as_deref().unwrap_or(""),
            d.reason
        );
    }
}

pub fn list(queue_path: &Path, json: bool) -> Exit {
    let rows = match queue::dead_list(queue_path) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return Exit::Failure;
        }
    };
    if json {
        let items: Vec<serde_json::Value> = rows
            .iter()
            .map(|d| {
                serde_json::json!({
                    "id": d.id,
                    "kind": d.series.kind.as_str(),
                    "import_id": d.series.import_id,
                    "suit": d.series.suit,
                    "time": format_time(d.time),
                    "value": d.value,
                    "unit": d.unit,
                    "reason": d.reason,
                    "status": d.status,
                    "body": d.body,
                    "dead_at": format_time(d.dead_at),
                })
            })
            .collect();
        println!("{}", serde_json::Value::Array(items));
        return Exit::Ok;
    }
    if rows.is_empty() {
        println!("no dead letters");
    } else {
        print_rows(&rows);
        println!(
            "{} dead letter(s); `dead retry ID…` requeues, `dead purge ID…` deletes",
            rows.len()
        );
    }
    Exit::Ok
}

fn selection(all: bool, ids: &[i64]) -> Result<DeadSelection, Exit> {
    match (all, ids.is_empty()) {
        (true, true) => Ok(DeadSelection::All),
        (false, false) => Ok(DeadSelection::Ids(ids.to_vec())),
        _ => {
            eprintln!("error: give either --all or dead letter ids (see `dead list`)");
            Err(Exit::Invalid)
        }
    }
}

pub fn retry(queue_path: &Path, all: bool, ids: &[i64]) -> Exit {
    let sel = match selection(all, ids) {
        Ok(s) => s,
        Err(e) => return e,
    };
    match queue::dead_retry(queue_path, &sel) {
        Ok((rows, missing)) => {
            print_rows(&rows);
            println!(
                "{} reading(s) requeued; the service sends them in this order",
                rows.len()
            );
            report_missing(&missing)
        }
        Err(e) => {
            eprintln!("error: {e}");
            Exit::Failure
        }
    }
}

pub fn purge(queue_path: &Path, all: bool, ids: &[i64]) -> Exit {
    let sel = match selection(all, ids) {
        Ok(s) => s,
        Err(e) => return e,
    };
    match queue::dead_purge(queue_path, &sel) {
        Ok((rows, missing)) => {
            println!("{} dead letter(s) deleted", rows.len());
            report_missing(&missing)
        }
        Err(e) => {
            eprintln!("error: {e}");
            Exit::Failure
        }
    }
}

fn report_missing(missing: &[i64]) -> Exit {
    if missing.is_empty() {
        return Exit::Ok;
    }
    let ids: Vec<String> = missing.iter().map(i64::to_string).collect();
    eprintln!("error: no dead letter with id {}", ids.join(", "));
    Exit::Failure
}
