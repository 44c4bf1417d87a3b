//! Start-up time (issue 8, item 5): from spawning the release binary (`run`) to `READY=1` on a
//! fake `NOTIFY_SOCKET` (a unix datagram socket the harness binds, as systemd would), median of
//! several runs, in three situations: an empty queue (no file yet); 1 000 000 pending readings
//! after an unclean stop (each run ends with `kill -9`, so the next one finds the
//! `clean_shutdown` flag unset and runs `quick_check` over the whole file); and the same file
//! after clean stops (SIGTERM; above `quick_check_max` no check runs). The API is down during
//! the 1M runs so nothing is delivered. Figures go into BENCHMARKS.md; nothing is asserted.
//!
//! `cargo bench --bench startup`; knobs STARTUP_RUNS (7), STARTUP_PENDING (1 000 000),
//! STARTUP_ONLY=empty|unclean|clean.

mod common;

use std::io::Read;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{CUSTOMER, TOKEN, env_num, median};
use enectiva_collector::sim::api::{Mode, StandIn};
use enectiva_collector::sim::modbus::{SimMeter, SimModbus};

/// One start: (seconds to READY=1, the daemon's "queue open" log line). Stops the daemon with
/// `sig` afterwards and waits for it.
fn start_once(dir: &Path, config: &Path, sig: &str) -> (f64, String) {
    let sock_path = dir.join("notify.sock");
    let _ = std::fs::remove_file(&sock_path);
    let sock = UnixDatagram::bind(&sock_path).expect("bind");
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .expect("timeout");
    let started = Instant::now();
    let mut child = Command::new(common::daemon_bin())
        .args(["-c", config.to_str().expect("utf8"), "run"])
        .env_remove("JOURNAL_STREAM")
        .env_remove("WATCHDOG_USEC")
        .env("NOTIFY_SOCKET", &sock_path)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn run");
    let mut buf = [0u8; 4096];
    let mut ready = None;
    while started.elapsed() < Duration::from_secs(120) {
        if let Ok(n) = sock.recv(&mut buf) {
            if String::from_utf8_lossy(&buf[..n]).contains("READY=1") {
                ready = Some(started.elapsed().as_secs_f64());
                break;
            }
        }
        if let Ok(Some(status)) = child.try_wait() {
            eprintln!("the daemon exited before READY: {status}");
            break;
        }
    }
    common::signal(child.id(), sig);
    let _ = child.wait();
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    let open = err
        .lines()
        .find(|l| l.contains("queue open"))
        .map(str::to_owned)
        .unwrap_or_default();
    (ready.unwrap_or(f64::NAN), open)
}

fn series(name: &str, runs: usize, mut times: Vec<f64>, open: &str, target: &str) {
    let (min, max) = times
        .iter()
        .fold((f64::MAX, 0.0f64), |(a, b), &t| (a.min(t), b.max(t)));
    let med = median(&mut times);
    println!(
        "  {name:<44} median {:>8.1} ms  (min {:.1}, max {:.1}, {runs} runs; target {target})",
        med * 1000.0,
        min * 1000.0,
        max * 1000.0
    );
    let fields: Vec<&str> = open
        .split_whitespace()
        .filter(|w| w.starts_with("pending=") || w.starts_with("unclean="))
        .collect();
    println!("  {:<44} last run's queue open: {}", "", fields.join(" "));
}

fn main() {
    let runs = env_num("STARTUP_RUNS", 7) as usize;
    let pending = env_num("STARTUP_PENDING", 1_000_000) as usize;
    let only = std::env::var("STARTUP_ONLY").unwrap_or_default();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async move {
        println!("machine: {}", common::machine());
        println!("time from spawn to READY=1 on NOTIFY_SOCKET (release `run`, one SDM630 meter configured):");
        let api = StandIn::start(CUSTOMER, TOKEN).await.expect("stand-in");
        let sim = SimModbus::start(vec![SimMeter::sdm630(1)]).await.expect("sim");
        let bus = common::sdm630_bus(sim.addr(), 1, "60s");
        if only.is_empty() || only == "empty" {
            let mut times = Vec::new();
            let mut open = String::new();
            for _ in 0..runs {
                let dir = tempfile::tempdir().expect("tempdir");
                let config = common::daemon_config(dir.path(), &api.base_url(), &dir.path().join("queue.db"), "", &bus);
                let (t, o) = start_once(dir.path(), &config, "-TERM");
                times.push(t);
                open = o;
            }
            series("empty queue (no file)", runs, times, &open, "≤ 100 ms");
        }
        if only.is_empty() || only == "unclean" || only == "clean" {
            let dir = tempfile::tempdir().expect("tempdir");
            let queue = dir.path().join("queue.db");
            let took = common::prefill(&queue, "START", 100, pending.div_ceil(100)).await;
            let size = std::fs::metadata(&queue).map(|m| m.len()).unwrap_or(0);
            println!(
                "  (prefilled {} pending readings in {took:.1} s; queue file {:.0} MiB)",
                pending.div_ceil(100) * 100,
                size as f64 / 1048576.0
            );
            // Nothing may be delivered: the API refuses connections.
            api.set_mode(Mode::Down).await.expect("down");
            let config = common::daemon_config(dir.path(), &api.base_url(), &queue, "", &bus);
            if only.is_empty() || only == "clean" {
                // The prefill closed the file cleanly; each SIGTERM closes it cleanly again.
                let mut times = Vec::new();
                let mut open = String::new();
                for _ in 0..runs {
                    let (t, o) = start_once(dir.path(), &config, "-TERM");
                    times.push(t);
                    open = o;
                }
                series(&format!("{pending} pending, after a clean stop"), runs, times, &open, "≤ 2 s");
            }
            if only.is_empty() || only == "unclean" {
                // One start ended by kill -9 makes the next one unclean; then every run is.
                let _ = start_once(dir.path(), &config, "-KILL");
                let mut times = Vec::new();
                let mut open = String::new();
                for _ in 0..runs {
                    let (t, o) = start_once(dir.path(), &config, "-KILL");
                    times.push(t);
                    open = o;
                }
                series(&format!("{pending} pending, after kill -9 (quick_check)"), runs, times, &open, "≤ 2 s");
            }
        }
        sim.stop().await;
        api.stop().await;
    });
}
