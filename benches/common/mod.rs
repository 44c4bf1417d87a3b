//! Shared pieces of the issue-8 harnesses (`load`, `sender_compare`, `backlog`, `startup`):
//! sampling a process from /proc, the daemon's config for the SDM630 scenario, prefilling a
//! queue, and the Python venv for the baseline. Each harness includes it with `mod common;`
//! and uses only part of it. It measures; it never asserts a speed.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use enectiva_collector::queue::{Queue, QueueOptions};
use enectiva_collector::reading::{Kind, Reading, Series};

pub const CUSTOMER: &str = "0c7f4a52-2d1e-4e59-9b0a-6d1f3c2b8e11";
pub const TOKEN: &str = "bench";
/// The Python baseline's default registers (PDU addresses, f32 ABCD, one block 0..76).
pub const PY_REGISTERS: &str = "0,2,4,6,8,10,52,70,72,74";
/// The same ten values as profile quantities of `eastron-sdm630`, in the same order.
pub const QUANTITIES: [&str; 10] = [
    "voltage_l1",
    "voltage_l2",
    "voltage_l3",
    "current_l1",
    "current_l2",
    "current_l3",
    "active_power_total",
    "frequency",
    "import_energy_total",
    "export_energy_total",
];

pub fn env_num(k: &str, default: u64) -> u64 {
    std::env::var(k)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One /proc sample of a process.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sample {
    /// utime + stime, seconds.
    pub cpu: f64,
    /// cutime + cstime (waited-for children), seconds.
    pub children_cpu: f64,
    /// VmRSS, KiB.
    pub rss_kib: u64,
    /// VmHWM (peak RSS), KiB.
    pub hwm_kib: u64,
    /// write_bytes from /proc/PID/io (bytes this process caused to be sent to storage).
    pub write_bytes: u64,
}

impl Sample {
    pub fn total_cpu(&self) -> f64 {
        self.cpu + self.children_cpu
    }
}

fn status_kib(status: &str, key: &str) -> u64 {
    status
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

pub fn sample(pid: u32) -> Sample {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which is in parentheses): field n is at index n - 3.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = 100.0; // USER_HZ on Linux
    let field = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0) / ticks;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).unwrap_or_default();
    Sample {
        cpu: field(11) + field(12),
        children_cpu: field(13) + field(14),
        rss_kib: status_kib(&status, "VmRSS:"),
        hwm_kib: status_kib(&status, "VmHWM:"),
        write_bytes: status_kib(&io, "write_bytes:"),
    }
}

/// The daemon's config: `[api]` to `base_url`, the queue at `queue`, then `buses` (TOML).
pub fn daemon_config(
    dir: &Path,
    base_url: &str,
    queue: &Path,
    extra_api: &str,
    buses: &str,
) -> PathBuf {
    std::fs::write(dir.join("token"), TOKEN).expect("token");
    let text = format!(
        "[api]\nbase_url = \"{base_url}\"\ncustomer_id = \"{CUSTOMER}\"\ntoken_file = \"{}\"\nsender = \"bench\"\n{extra_api}\n[queue]\npath = \"{}\"\n\n[log]\nlevel = \"error\"\n{buses}",
        dir.join("token").display(),
        queue.display()
    );
    let config = dir.join("config.toml");
    std::fs::write(&config, text).expect("config");
    config
}

/// One `[[modbus_tcp]]` bus at `addr` with `meters` SDM630 meters (unit ids 1..=meters), each
/// reading the ten [`QUANTITIES`] every `interval`: one request (0x0000 + 76) per meter and cycle.
pub fn sdm630_bus(addr: std::net::SocketAddr, meters: u8, interval: &str) -> String {
    let mut text = format!("\n[[modbus_tcp]]\nname = \"tcp\"\naddress = \"{addr}\"\n");
    for unit in 1..=meters {
        let channels: Vec<String> = QUANTITIES
            .iter()
            .map(|q| {
                let kind = if q.ends_with("energy_total") { "reading" } else { "data_point" };
                format!("    {{ quantity = \"{q}\", import_id = \"M{unit:02}_{q}\", kind = \"{kind}\" }},")
            })
            .collect();
        text.push_str(&format!(
            "  [[modbus_tcp.meter]]\n  name = \"m{unit:02}\"\n  unit_id = {unit}\n  interval = \"{interval}\"\n  profile = \"eastron-sdm630\"\n  channels = [\n{}\n  ]\n",
            channels.join("\n")
        ));
    }
    text
}

/// The same meters as [`sdm630_bus`], one `[[modbus_tcp]]` bus per meter: `addrs[i]` serves
/// unit id `i + 1` (the config allows one bus per endpoint, so each meter has its own endpoint).
pub fn sdm630_bus_per_meter(addrs: &[std::net::SocketAddr], interval: &str) -> String {
    let meters = addrs.len() as u8;
    addrs
        .iter()
        .enumerate()
        .map(|(i, addr)| {
            let unit = i + 1;
            sdm630_bus(*addr, meters, interval)
                .split("  [[modbus_tcp.meter]]")
                .nth(unit)
                .map(|m| format!("\n[[modbus_tcp]]\nname = \"tcp{unit:02}\"\naddress = \"{addr}\"\n  [[modbus_tcp.meter]]{m}"))
                .unwrap_or_default()
        })
        .collect()
}

pub fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Reading `i` of series `prefix_{series:03}`: one per minute starting at `start` (unix s).
pub fn reading(prefix: &str, series: usize, i: usize, start: i64) -> Reading {
    Reading {
        series: Series::new(Kind::Reading, format!("{prefix}_{series:03}"), None),
        time: start + i as i64 * 60,
        value: 1000.0 + i as f64 * 0.25,
        unit: Some("kWh".into()),
        clock_synced: true,
        invalid: None,
    }
}

/// Writes `series × per_series` pending readings (one per minute per series, ending about now)
/// into the queue at `path` through the crate's own queue API (1 000 readings per transaction),
/// then closes it cleanly. Returns the seconds it took.
pub async fn prefill(path: &Path, prefix: &str, series: usize, per_series: usize) -> f64 {
    let started = std::time::Instant::now();
    let (q, _) = Queue::open(QueueOptions {
        commit_window: Duration::ZERO,
        max_readings: u64::MAX,
        ..QueueOptions::new(path)
    })
    .expect("queue");
    let start = now_unix() - per_series as i64 * 60;
    let steps = (1000 / series).max(1);
    let mut i = 0;
    while i < per_series {
        let batch = (i..(i + steps).min(per_series))
            .flat_map(|k| (0..series).map(move |s| (s, k)))
            .map(|(s, k)| reading(prefix, s, k, start))
            .collect();
        q.commit(batch).await.expect("commit");
        i += steps;
    }
    q.close().await.expect("close");
    started.elapsed().as_secs_f64()
}

/// `target/bench-venv/bin/python` with pymodbus and requests, created on first use
/// (`python3 -m venv target/bench-venv && target/bench-venv/bin/pip install pymodbus requests`).
pub fn python() -> PathBuf {
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-venv");
    let py = venv.join("bin/python");
    let ready = py.exists()
        && Command::new(&py)
            .args(["-c", "import pymodbus, requests"])
            .status()
            .is_ok_and(|s| s.success());
    if !ready {
        eprintln!("creating {} (pymodbus, requests)", venv.display());
        let ok = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .is_ok_and(|s| s.success())
            && Command::new(venv.join("bin/pip"))
                .args(["install", "-q", "pymodbus", "requests"])
                .status()
                .is_ok_and(|s| s.success());
        assert!(ok, "cannot set up the Python venv at {}", venv.display());
    }
    py
}

/// The stand-in API checks `User-Agent: enectiva-collector/<version>` (400 otherwise), so the
/// baseline runs through this wrapper: it changes only the default User-Agent of `requests`
/// (the header the poller does not set itself), then runs the poller unchanged as `__main__`.
pub const PY_UA_WRAPPER: &str = "import sys, runpy, requests.utils\n\
requests.utils.default_user_agent = lambda name='python-requests': 'enectiva-collector/0-python-baseline'\n\
path = sys.argv[1]\nsys.argv = sys.argv[1:]\nrunpy.run_path(path, run_name='__main__')\n";

/// `../shared/baseline/python_poller.py` (override with BASELINE_PY).
pub fn baseline_script() -> PathBuf {
    std::env::var_os("BASELINE_PY")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/work/shared/baseline/python_poller.py"))
}

pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return f64::NAN;
    }
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

pub fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill").args([sig, &pid.to_string()]).status();
}

/// A short description of this machine for the figures' header.
pub fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, m)| m.trim().to_owned())
        .unwrap_or_default();
    let cores = cpuinfo
        .lines()
        .filter(|l| l.starts_with("processor"))
        .count();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    format!(
        "{cores} core(s), {model}; load average {}",
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    )
}

/// The daemon binary the harnesses run: `BENCH_BIN` (e.g. the shipped build,
/// `target/release-small/enectiva-collector` from `cargo build --profile release-small`) or
/// the bench profile's own build.
pub fn daemon_bin() -> std::path::PathBuf {
    std::env::var_os("BENCH_BIN").map_or_else(
        || std::path::PathBuf::from(env!("CARGO_BIN_EXE_enectiva-collector")),
        std::path::PathBuf::from,
    )
}

/// (readings/s, connections) for the crate's sender draining `series × per_series` readings.
pub async fn sender_rate(
    api: &enectiva_collector::sim::api::StandIn,
    series: usize,
    per_series: usize,
    max_in_flight: usize,
) -> (f64, u64) {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("token"), TOKEN).expect("token");
    let path = dir.path().join("queue.db");
    prefill(&path, &format!("D{max_in_flight}"), series, per_series).await;
    let (q, _) = Queue::open(QueueOptions::new(&path)).expect("queue");
    let total = series * per_series;
    let s = enectiva_collector::sender::SenderSettings {
        base_url: api.base_url(),
        customer_id: CUSTOMER.into(),
        sender: "bench".into(),
        id_field: enectiva_collector::config::IdField::ImportId,
        timeout: Duration::from_secs(10),
        max_in_flight,
        max_backoff: Duration::from_secs(5),
        backoff_base: Duration::from_secs(1),
        ca_file: None,
        token: Some(enectiva_collector::token::TokenSource::File(
            dir.path().join("token"),
        )),
        auth_retry: Duration::from_secs(1),
        error_log_every: Duration::from_secs(600),
        rescan: Duration::from_secs(1),
    };
    let (before, conns_before) = (api.accepted_count(), api.connections());
    let shutdown = tokio_util::sync::CancellationToken::new();
    let started = std::time::Instant::now();
    let task = tokio::spawn(
        enectiva_collector::sender::Sender::new(s, q.clone())
            .expect("sender")
            .run(shutdown.clone()),
    );
    let done = api
        .wait_accepted(before + total, Duration::from_secs(600))
        .await;
    let rate = total as f64 / started.elapsed().as_secs_f64();
    shutdown.cancel();
    let _ = task.await;
    q.close().await.expect("close");
    if !done {
        eprintln!("max_in_flight {max_in_flight}: not all delivered within 600 s");
    }
    (rate, api.connections() - conns_before)
}
