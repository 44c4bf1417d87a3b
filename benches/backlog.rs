//! Backlog drain (issue 8, item 4): the queue is prefilled with one day of 100 series at one
//! reading per minute (144 000 pending readings, through the crate's queue API), then the real
//! daemon (`run`, release build) starts on it while it polls 20 simulated SDM630 meters × 10
//! values every second against the stand-in API. Measures the time from spawn until the last
//! prefilled reading was accepted, and how many new readings were delivered meanwhile and
//! after. Figures go into BENCHMARKS.md; nothing is asserted.
//!
//! `cargo bench --bench backlog`; knobs BACKLOG_SERIES (100), BACKLOG_PER_SERIES (1440),
//! BACKLOG_METERS (20), BACKLOG_LAYOUT=one-bus (default: one bus per meter), BACKLOG_MAX_IN_FLIGHT (unset: the config default), BACKLOG_TIMEOUT
//! (600 s), BACKLOG_AFTER (10 s of polling measured after the drain).

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{CUSTOMER, TOKEN, env_num};
use enectiva_collector::sim::api::StandIn;
use enectiva_collector::sim::modbus::{SimMeter, SimModbus};

const PREFIX: &str = "BACKLOG";

fn main() {
    let series = env_num("BACKLOG_SERIES", 100) as usize;
    let per_series = env_num("BACKLOG_PER_SERIES", 1440) as usize;
    let meters = env_num("BACKLOG_METERS", 20).clamp(1, 247) as u8;
    let timeout = env_num("BACKLOG_TIMEOUT", 600);
    let after = env_num("BACKLOG_AFTER", 10);
    let mif = std::env::var("BACKLOG_MAX_IN_FLIGHT").ok();
    let one_bus = std::env::var("BACKLOG_LAYOUT").is_ok_and(|v| v == "one-bus");
    let total = series * per_series;
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async move {
        println!("machine: {}", common::machine());
        let dir = tempfile::tempdir().expect("tempdir");
        let queue = dir.path().join("queue.db");
        let took = common::prefill(&queue, PREFIX, series, per_series).await;
        let size = std::fs::metadata(&queue).map(|m| m.len()).unwrap_or(0);
        println!(
            "prefilled {total} readings ({series} series × {per_series}) in {took:.1} s; queue file {:.1} MiB",
            size as f64 / 1048576.0
        );
        let api = StandIn::start(CUSTOMER, TOKEN).await.expect("stand-in");
        // Default: one endpoint (and bus) per meter; BACKLOG_LAYOUT=one-bus: one endpoint with
        // unit ids 1..N as in `load` (one bus task polls all meters in turn).
        let mut sims = Vec::new();
        if one_bus {
            sims.push(SimModbus::start((1..=meters).map(SimMeter::sdm630).collect()).await.expect("sim"));
        } else {
            for unit in 1..=meters {
                sims.push(SimModbus::start(vec![SimMeter::sdm630(unit)]).await.expect("sim"));
            }
        }
        let addrs: Vec<_> = sims.iter().map(|s| s.addr()).collect();
        let requests = || -> u64 { sims.iter().map(|s| s.requests()).sum() };
        let extra = mif
            .as_deref()
            .map(|m| format!("max_in_flight = {m}\n"))
            .unwrap_or_default();
        let config = common::daemon_config(
            dir.path(),
            &api.base_url(),
            &queue,
            &extra,
            &if one_bus {
                common::sdm630_bus(addrs[0], meters, "1s")
            } else {
                common::sdm630_bus_per_meter(&addrs, "1s")
            },
        );
        let spawned = Instant::now();
        let mut child = Command::new(common::daemon_bin())
            .args(["-c", config.to_str().expect("utf8"), "run"])
            .env_remove("JOURNAL_STREAM")
            .env_remove("NOTIFY_SOCKET")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn run");
        let pid = child.id();
        let deadline = spawned + Duration::from_secs(timeout);
        // Nothing can be complete before `total` values were accepted; then look at the ids.
        let mut drained = false;
        let mut progress = Vec::new();
        let mut next_mark = 10u64;
        let mut last_check = spawned;
        while Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(250)).await;
            let secs = spawned.elapsed().as_secs();
            if secs >= next_mark {
                progress.push((secs, api.accepted_count()));
                next_mark += 10;
            }
            // Cloning 150 000 stored values holds the stand-in's lock: at most once a second.
            if api.accepted_count() < total || last_check.elapsed() < Duration::from_secs(1) {
                continue;
            }
            last_check = Instant::now();
            let backlog = api
                .accepted()
                .iter()
                .filter(|a| a.import_id.starts_with(PREFIX))
                .count();
            if backlog >= total {
                drained = true;
                break;
            }
        }
        let at_drain = Instant::now();
        let polled_during = requests();
        let during = api.accepted_count();
        let s_drain = common::sample(pid);
        // The exact moment: the arrival of the last prefilled reading that was answered 201.
        let attempts = api.attempts();
        let last = attempts
            .iter()
            .filter(|a| a.status == Some(201) && a.import_id.as_deref().is_some_and(|i| i.starts_with(PREFIX)))
            .map(|a| a.at)
            .max();
        let first_new = attempts
            .iter()
            .filter(|a| a.status == Some(201) && a.import_id.as_deref().is_some_and(|i| !i.starts_with(PREFIX)))
            .map(|a| a.at)
            .min();
        let drain_s = last.map(|t| t.duration_since(spawned).as_secs_f64()).unwrap_or(f64::NAN);
        let new_during = attempts
            .iter()
            .filter(|a| {
                a.status == Some(201)
                    && a.import_id.as_deref().is_some_and(|i| !i.starts_with(PREFIX))
                    && last.is_some_and(|l| a.at <= l)
            })
            .count();
        // Keep polling a little longer: new readings must flow at the polling rate.
        tokio::time::sleep(Duration::from_secs(after)).await;
        let after_count = api.accepted_count() - during;
        let after_s = at_drain.elapsed().as_secs_f64();
        let s_end = common::sample(pid);
        common::signal(pid, "-TERM");
        let _ = child.wait();
        let polled = meters as f64 * 10.0;
        println!(
            "daemon `run` on {total} pending readings, polling {meters} meters × 10 values at 1 s ({polled:.0} new values/s, {}), max_in_flight {}:",
            if one_bus { "one bus of all meters" } else { "one bus per meter" },
            mif.as_deref().unwrap_or("default (4)")
        );
        if drained {
            println!("  backlog delivered in        {drain_s:.1} s from spawn = {:.0} readings/s (target ≤ 120 s)", total as f64 / drain_s);
        } else {
            println!("  backlog NOT delivered within {timeout} s");
        }
        println!(
            "  first new reading accepted  {:.1} s after spawn",
            first_new.map(|t| t.duration_since(spawned).as_secs_f64()).unwrap_or(f64::NAN)
        );
        println!(
            "  new readings during drain   {new_during} = {:.0}/s while draining (polled: {polled:.0}/s)",
            new_during as f64 / drain_s
        );
        println!(
            "  new readings after drain    {after_count} in {after_s:.1} s = {:.0}/s",
            after_count as f64 / after_s
        );
        println!(
            "  daemon CPU / RSS / peak     {:.2} s during the drain, {:.1} MiB at drain end, peak {:.1} MiB",
            s_drain.cpu,
            s_drain.rss_kib as f64 / 1024.0,
            s_end.hwm_kib as f64 / 1024.0
        );
        println!("  disk write_bytes            {:.1} MiB up to drain end", s_drain.write_bytes as f64 / 1048576.0);
        println!("  accepted every 10 s (s, total): {progress:?}");
        println!(
            "  Modbus requests during drain {polled_during} = {:.2} per meter and second (polling went on)",
            polled_during as f64 / at_drain.duration_since(spawned).as_secs_f64() / meters as f64
        );
        for sim in sims {
            sim.stop().await;
        }
        api.stop().await;
    });
}
