//! Load harness, side by side (issues 3 and 8): the real daemon (`run`, release build) and the
//! hand-written Python baseline (`../shared/baseline/python_poller.py`) do the same work one
//! after the other, each measured from /proc: the same simulated Modbus TCP endpoint (unit ids
//! 1..N, SDM630-style input registers, ten f32 values per meter read in one request per meter
//! and cycle at 1 s) and a fresh instance of the same stand-in API, every value delivered as
//! its own request. Figures go into BENCHMARKS.md; nothing is asserted.
//!
//! `cargo bench --bench load` (defaults: 20 meters, 5 s warm-up, 60 s measured per phase);
//! knobs LOAD_METERS, LOAD_SECONDS, LOAD_WARMUP, LOAD_ONLY=daemon|python, BASELINE_PY, and
//! LOAD_LAYOUT=bus-per-meter (the daemon gets one `[[modbus_tcp]]` entry per meter, all on the
//! same endpoint, instead of one bus of N meters as the Python poller's single connection).
//! Queue commits of the daemon are counted from its `committed` debug line (one per
//! transaction with new readings, each ending in an fsync: `synchronous=FULL`).

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{CUSTOMER, PY_REGISTERS, PY_UA_WRAPPER, Sample, TOKEN, env_num, sample};
use enectiva_collector::sim::api::StandIn;
use enectiva_collector::sim::modbus::{SimMeter, SimModbus};

/// What one phase measured.
#[derive(Debug, Default)]
struct Figures {
    name: &'static str,
    elapsed: f64,
    start: Sample,
    end: Sample,
    delivered: u64,
    modbus_requests: u64,
    commits: Option<u64>,
}

impl Figures {
    fn cpu(&self) -> f64 {
        self.end.total_cpu() - self.start.total_cpu()
    }
    fn cpu_ms_per_value(&self) -> f64 {
        self.cpu() * 1000.0 / (self.delivered.max(1) as f64)
    }
    fn core_pct(&self) -> f64 {
        self.cpu() * 100.0 / self.elapsed
    }
    fn written(&self) -> f64 {
        self.end.write_bytes.saturating_sub(self.start.write_bytes) as f64
    }
}

async fn daemon_phase(
    sim: &SimModbus,
    meters: u8,
    warmup: u64,
    seconds: u64,
    per_meter: bool,
) -> Figures {
    let dir = tempfile::tempdir().expect("tempdir");
    let api = StandIn::start(CUSTOMER, TOKEN).await.expect("stand-in");
    // Bus per meter: one endpoint per meter (unit id i on the i-th), else the shared `sim`.
    let mut own = Vec::new();
    if per_meter {
        for unit in 1..=meters {
            own.push(
                SimModbus::start(vec![SimMeter::sdm630(unit)])
                    .await
                    .expect("sim"),
            );
        }
    }
    let requests = || -> u64 {
        if own.is_empty() {
            sim.requests()
        } else {
            own.iter().map(|s| s.requests()).sum()
        }
    };
    let config = common::daemon_config(
        dir.path(),
        &api.base_url(),
        &dir.path().join("queue.db"),
        "",
        &if per_meter {
            common::sdm630_bus_per_meter(&own.iter().map(SimModbus::addr).collect::<Vec<_>>(), "1s")
        } else {
            common::sdm630_bus(sim.addr(), meters, "1s")
        },
    );
    let mut child = Command::new(common::daemon_bin())
        .args(["-c", config.to_str().expect("utf8"), "run"])
        .env_remove("JOURNAL_STREAM")
        .env_remove("NOTIFY_SOCKET")
        .env("RUST_LOG", "info,enectiva_collector::queue=debug")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn run");
    let pid = child.id();
    let commits = Arc::new(AtomicU64::new(0));
    let stderr = child.stderr.take().expect("stderr");
    let counter = commits.clone();
    let reader = std::thread::spawn(move || {
        let mut other = Vec::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("committed") && line.contains("max_id") {
                counter.fetch_add(1, Ordering::Relaxed);
            } else if other.len() < 20 {
                other.push(line);
            }
        }
        other
    });
    tokio::time::sleep(Duration::from_secs(warmup)).await;
    let (s0, d0, r0, c0) = (
        sample(pid),
        api.accepted_count(),
        requests(),
        commits.load(Ordering::Relaxed),
    );
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let (s1, d1, r1, c1) = (
        sample(pid),
        api.accepted_count(),
        requests(),
        commits.load(Ordering::Relaxed),
    );
    let elapsed = t0.elapsed().as_secs_f64();
    common::signal(pid, "-TERM");
    let _ = child.wait();
    let other = reader.join().unwrap_or_default();
    if d1 == d0 {
        eprintln!("daemon delivered nothing; its log:\n{}", other.join("\n"));
    }
    Figures {
        name: if per_meter {
            "daemon (one bus per meter)"
        } else {
            "daemon (one bus of all meters)"
        },
        elapsed,
        start: s0,
        end: s1,
        delivered: (d1 - d0) as u64,
        modbus_requests: r1 - r0,
        commits: Some(c1 - c0),
    }
}

async fn python_phase(sim: &SimModbus, meters: u8, warmup: u64, seconds: u64) -> Figures {
    let py = common::python();
    let dir = tempfile::tempdir().expect("tempdir");
    let api = StandIn::start(CUSTOMER, TOKEN).await.expect("stand-in");
    let log = dir.path().join("python.log");
    let log_file = std::fs::File::create(&log).expect("log");
    let mut child = Command::new(&py)
        .arg("-c")
        .arg(PY_UA_WRAPPER)
        .arg(common::baseline_script())
        .args(["--port", &sim.addr().port().to_string()])
        .args(["--units", &meters.to_string()])
        .args(["--registers", PY_REGISTERS])
        .args(["--period", "1"])
        // Still polling when the measurement ends; the harness stops it.
        .args(["--duration", &(warmup + seconds + 30).to_string()])
        .args(["--db", dir.path().join("queue.db").to_str().expect("utf8")])
        .args(["--base-url", &api.base_url()])
        .args(["--customer", CUSTOMER, "--token", TOKEN])
        .current_dir(dir.path())
        .stdout(log_file.try_clone().expect("log"))
        .stderr(log_file)
        .spawn()
        .expect("spawn python");
    let pid = child.id();
    tokio::time::sleep(Duration::from_secs(warmup)).await;
    let (s0, d0, r0) = (sample(pid), api.accepted_count(), sim.requests());
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let (s1, d1, r1) = (sample(pid), api.accepted_count(), sim.requests());
    let elapsed = t0.elapsed().as_secs_f64();
    common::signal(pid, "-TERM");
    let _ = child.wait();
    if d1 == d0 {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let rejected: Vec<_> = api
            .attempts()
            .into_iter()
            .filter(|a| a.status != Some(201))
            .take(3)
            .collect();
        eprintln!(
            "python delivered nothing; its output:\n{text}\nfirst non-201 attempts: {rejected:?}"
        );
    }
    Figures {
        name: "python",
        elapsed,
        start: s0,
        end: s1,
        delivered: (d1 - d0) as u64,
        modbus_requests: r1 - r0,
        commits: None,
    }
}

fn print(f: &Figures, meters: u8) {
    let mib = |k: u64| k as f64 / 1024.0;
    println!(
        "{}: {meters} meters × 10 values at 1 s, {:.1} s measured",
        f.name, f.elapsed
    );
    println!(
        "  RSS at the end / peak (VmHWM)   {:.1} MiB / {:.1} MiB",
        mib(f.end.rss_kib),
        mib(f.end.hwm_kib)
    );
    println!(
        "  CPU (utime+stime, +children)    {:.2} s = {:.2} % of one core (children {:.2} s)",
        f.cpu(),
        f.core_pct(),
        f.end.children_cpu - f.start.children_cpu
    );
    println!(
        "  delivered (stand-in accepted)   {} values = {:.1}/s, {:.3} ms CPU per delivered value",
        f.delivered,
        f.delivered as f64 / f.elapsed,
        f.cpu_ms_per_value()
    );
    println!(
        "  disk write_bytes                {:.1} KiB/s = {:.0} bytes per delivered value",
        f.written() / 1024.0 / f.elapsed,
        f.written() / f.delivered.max(1) as f64
    );
    println!(
        "  Modbus requests                 {} = {:.2} per meter and second",
        f.modbus_requests,
        f.modbus_requests as f64 / f.elapsed / meters as f64
    );
    match f.commits {
        Some(c) => println!(
            "  queue commits (new readings)    {c} = {:.2}/s, {:.0} readings per commit",
            c as f64 / f.elapsed,
            f.delivered as f64 / c.max(1) as f64
        ),
        None => println!(
            "  queue commits                   not observed (by its source: 1 insert transaction per cycle + 1 delete transaction per value, synchronous=NORMAL: no fsync per commit)"
        ),
    }
}

fn main() {
    let meters = env_num("LOAD_METERS", 20).clamp(1, 247) as u8;
    let seconds = env_num("LOAD_SECONDS", 60);
    let warmup = env_num("LOAD_WARMUP", 5);
    let only = std::env::var("LOAD_ONLY").unwrap_or_default();
    let per_meter = std::env::var("LOAD_LAYOUT").is_ok_and(|v| v == "bus-per-meter");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async move {
        // One endpoint, unit ids 1..N, as the Python poller expects; the daemon reads the same.
        let sim = SimModbus::start((1..=meters).map(SimMeter::sdm630).collect())
            .await
            .expect("sim");
        println!("machine: {}", common::machine());
        println!("daemon binary: {}", common::daemon_bin().display());
        let daemon = if only != "python" {
            Some(daemon_phase(&sim, meters, warmup, seconds, per_meter).await)
        } else {
            None
        };
        if let Some(d) = &daemon {
            print(d, meters);
        }
        let python = if only != "daemon" {
            Some(python_phase(&sim, meters, warmup, seconds).await)
        } else {
            None
        };
        if let Some(p) = &python {
            print(p, meters);
        }
        if let (Some(d), Some(p)) = (&daemon, &python) {
            let ratio = |p: f64, d: f64| if d > 0.0 { p / d } else { f64::NAN };
            println!("ratios python / daemon (same run, same meters, same stand-in):");
            println!(
                "  RSS at the end                  {:.1} ×",
                ratio(p.end.rss_kib as f64, d.end.rss_kib as f64)
            );
            println!(
                "  peak RSS (VmHWM)                {:.1} ×",
                ratio(p.end.hwm_kib as f64, d.end.hwm_kib as f64)
            );
            println!(
                "  CPU per delivered value         {:.1} ×",
                ratio(p.cpu_ms_per_value(), d.cpu_ms_per_value())
            );
            println!(
                "  % of one core                   {:.1} ×",
                ratio(p.core_pct(), d.core_pct())
            );
            println!(
                "  disk bytes per delivered value  {:.2} ×",
                ratio(
                    p.written() / p.delivered.max(1) as f64,
                    d.written() / d.delivered.max(1) as f64
                )
            );
            println!(
                "  values delivered                {:.2} ×",
                ratio(p.delivered as f64, d.delivered as f64)
            );
        }
        sim.stop().await;
    });
}
