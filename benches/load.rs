//! Load harness: the real daemon (`run`, release build) polling N simulated Modbus TCP meters
//! × M channels at an interval, delivering every value as its own request to the stand-in
//! API. Samples the daemon's RSS, CPU time and bytes written from /proc. Figures go into
//! BENCHMARKS.md; nothing is asserted.
//!
//! `cargo bench --bench load` (defaults: 20 meters × 10 channels at 1 s for 60 s);
//! override with LOAD_METERS, LOAD_SECONDS.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use enectiva_collector::sim::api::StandIn;
use enectiva_collector::sim::modbus::{SimMeter, SimModbus};

const CUSTOMER: &str = "0c7f4a52-2d1e-4e59-9b0a-6d1f3c2b8e11";
const QUANTITIES: [&str; 9] = [
    "voltage_l1",
    "voltage_l2",
    "voltage_l3",
    "current_l1",
    "current_l2",
    "current_l3",
    "active_power_total",
    "frequency",
    "import_energy_total",
];

fn env_num(k: &str, default: u64) -> u64 {
    std::env::var(k)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// (utime + stime) in seconds, RSS in KiB, write_bytes.
fn sample(pid: u32) -> (f64, u64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which is in parentheses).
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = 100.0; // USER_HZ on Linux
    let cpu = (f.get(11).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0))
        / ticks;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).unwrap_or_default();
    let written = io
        .lines()
        .find(|l| l.starts_with("write_bytes:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    (cpu, rss, written)
}

fn main() {
    let meters = env_num("LOAD_METERS", 20) as usize;
    let seconds = env_num("LOAD_SECONDS", 60);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async move {
        let dir = tempfile::tempdir().expect("tempdir");
        let api = StandIn::start(CUSTOMER, "load").await.expect("stand-in");
        std::fs::write(dir.path().join("token"), "load").expect("token");
        let mut sims = Vec::new();
        let mut text = format!(
            "[api]\nbase_url = \"{}\"\ncustomer_id = \"{CUSTOMER}\"\ntoken_file = \"{}\"\nsender = \"load\"\n\n[queue]\npath = \"{}\"\n\n[log]\nlevel = \"error\"\n",
            api.base_url(),
            dir.path().join("token").display(),
            dir.path().join("queue.db").display()
        );
        for i in 0..meters {
            let sim = SimModbus::start(vec![SimMeter::sdm630(1)]).await.expect("sim");
            let mut channels: Vec<String> = QUANTITIES
                .iter()
                .map(|q| {
                    let kind = if *q == "import_energy_total" { "reading" } else { "data_point" };
                    format!("    {{ quantity = \"{q}\", import_id = \"M{i:02}_{q}\", kind = \"{kind}\" }},")
                })
                .collect();
            channels.push(format!("    {{ quantity = \"total_energy\", import_id = \"M{i:02}_total\" }},"));
            text.push_str(&format!(
                "\n[[modbus_tcp]]\nname = \"tcp{i:02}\"\naddress = \"{}\"\n  [[modbus_tcp.meter]]\n  name = \"m{i:02}\"\n  unit_id = 1\n  interval = \"1s\"\n  profile = \"eastron-sdm630\"\n  channels = [\n{}\n  ]\n",
                sim.addr(),
                channels.join("\n")
            ));
            sims.push(sim);
        }
        let config = dir.path().join("config.toml");
        std::fs::write(&config, text).expect("config");
        let mut child = Command::new(env!("CARGO_BIN_EXE_enectiva-collector"))
            .args(["-c", config.to_str().expect("utf8"), "run"])
            .env_remove("JOURNAL_STREAM")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn run");
        let pid = child.id();
        // Warm-up, then measure over the run.
        tokio::time::sleep(Duration::from_secs(5)).await;
        let (cpu0, _, w0) = sample(pid);
        let d0 = api.accepted_count();
        let t0 = Instant::now();
        tokio::time::sleep(Duration::from_secs(seconds)).await;
        let (cpu1, rss, w1) = sample(pid);
        let d1 = api.accepted_count();
        let elapsed = t0.elapsed().as_secs_f64();
        let _ = Command::new("kill").args(["-TERM", &pid.to_string()]).status();
        let _ = child.wait();
        let delivered = (d1 - d0) as f64;
        let cpu = cpu1 - cpu0;
        let requests: u64 = sims.iter().map(|s| s.requests()).sum();
        println!("daemon `run`: {meters} Modbus TCP meters × 10 channels at 1 s, {elapsed:.0} s measured after 5 s warm-up");
        println!("  RSS at the end           {:.1} MiB", rss as f64 / 1024.0);
        println!("  CPU                      {cpu:.2} s in {elapsed:.0} s = {:.2} s per minute ({:.2} % of one core)", cpu * 60.0 / elapsed, cpu * 100.0 / elapsed);
        println!("  delivered                {delivered:.0} values ({:.0}/s), {:.3} ms CPU per delivered value", delivered / elapsed, cpu * 1000.0 / delivered.max(1.0));
        println!("  bytes written to disk    {:.1} KiB/s", (w1 - w0) as f64 / 1024.0 / elapsed);
        println!("  Modbus requests (total)  {requests}");
    });
}
