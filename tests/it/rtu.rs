//! Modbus RTU end to end on real pseudo-terminals: simulated RS-485 lines (`sim::rtu`) opened
//! by path by the daemon, in-process and as the real binary.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use enectiva_collector::app;
use enectiva_collector::config::Config;
use enectiva_collector::modbus::Table;
use enectiva_collector::queue::{self, QueueOptions};
use enectiva_collector::sender::SenderSettings;
use enectiva_collector::sim::api::{Accepted, StandIn};
use enectiva_collector::sim::modbus::{SimMeter, SimModbus};
use enectiva_collector::sim::rtu::SimRtuBus;
use tokio_util::sync::CancellationToken;

use crate::common::CUSTOMER;

const TOKEN: &str = "rtu-token";
const LONG: Duration = Duration::from_secs(60);

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_enectiva-collector")
}

fn head(api: &str, dir: &Path) -> String {
    std::fs::write(dir.join("token"), TOKEN).expect("token");
    format!(
        "[api]\nbase_url = \"{api}\"\ncustomer_id = \"{CUSTOMER}\"\ntoken_file = \"{}\"\nsender = \"it\"\n\n[queue]\npath = \"{}\"\n",
        dir.join("token").display(),
        dir.join("queue.db").display()
    )
}

fn rtu_bus(name: &str, port: &Path, timeout: &str) -> String {
    format!(
        "\n[[modbus_rtu]]\nname = \"{name}\"\nport = \"{}\"\nbaud = 9600\ntimeout = \"{timeout}\"\ndelay = \"0ms\"\n",
        port.display()
    )
}

fn meter(name: &str, unit: u8, import_id: &str) -> String {
    format!(
        "  [[modbus_rtu.meter]]\n  name = \"{name}\"\n  unit_id = {unit}\n  interval = \"1s\"\n  profile = \"eastron-sdm630\"\n  channels = [\n    {{ quantity = \"import_energy_total\", import_id = \"{import_id}\", unit = \"kWh\" }},\n    {{ quantity = \"voltage_l1\", import_id = \"{import_id}_U\", kind = \"data_point\" }},\n  ]\n"
    )
}

fn series<'a>(acc: &'a [Accepted], id: &str) -> Vec<&'a Accepted> {
    acc.iter().filter(|a| a.import_id == id).collect()
}

async fn wait_for(api: &StandIn, what: impl Fn(&[Accepted]) -> bool) -> bool {
    let deadline = Instant::now() + LONG;
    while Instant::now() < deadline {
        if what(&api.accepted()) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// Every value served for an f32 input register of a unit, in serving order.
fn served_f32(served: &[enectiva_collector::sim::modbus::Served], unit: u8, addr: u16) -> Vec<f64> {
    served
        .iter()
        .filter(|s| {
            s.unit == unit
                && s.table == Table::Input
                && s.start <= addr
                && addr + 1 < s.start + s.count
        })
        .map(|s| {
            let i = usize::from(addr - s.start);
            let bits = (u32::from(s.words[i]) << 16) | u32::from(s.words[i + 1]);
            f32::from_bits(bits)
                .to_string()
                .parse::<f64>()
                .unwrap_or(f64::NAN)
        })
        .collect()
}

struct Daemon {
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), app::AppError>>,
}

fn start(text: &str, dir: &Path) -> Daemon {
    let config =
        Config::parse(text, &dir.join("config.toml")).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(app::run_with(
        config,
        |q| QueueOptions {
            commit_window: Duration::from_millis(50),
            state_interval: Duration::from_millis(200),
            ..QueueOptions::from_settings(q)
        },
        |a| SenderSettings {
            rescan: Duration::from_millis(200),
            ..SenderSettings::from_api(a)
        },
        shutdown.clone(),
    ));
    Daemon { shutdown, task }
}

impl Daemon {
    async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.expect("join").expect("daemon");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_meters_on_a_line_an_absent_fourth_and_a_fallback_logged_by_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    let api = StandIn::start(CUSTOMER, TOKEN).await.expect("api");
    let line = SimRtuBus::start(
        vec![
            SimMeter::sdm630(1),
            SimMeter::sdm630(2),
            SimMeter::sdm630(3),
        ],
        None,
    )
    .await
    .expect("line");
    // Unit 3 refuses requests longer than 10 registers: exception 02 on the merged request.
    line.max_registers(3, 10);
    let timeout_ms = 300;
    let text = format!(
        "{}{}{}{}{}{}",
        head(&api.base_url(), dir.path()),
        rtu_bus("rs485", &line.path(), &format!("{timeout_ms}ms")),
        meter("m1", 1, "M1"),
        meter("absent", 9, "M9"),
        meter("m2", 2, "M2"),
        meter("m3", 3, "M3"),
    );
    let config = dir.path().join("config.toml");
    std::fs::write(&config, text).expect("config");
    let child = Command::new(bin())
        .args(["-c", config.to_str().expect("utf8"), "run"])
        .env_remove("JOURNAL_STREAM")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run");
    assert!(
        wait_for(&api, |acc| ["M1", "M2", "M3"].iter().all(|id| series(
            acc, id
        )
        .len()
            >= 6))
        .await,
        "{:?}",
        api.accepted()
            .iter()
            .map(|a| a.import_id.clone())
            .collect::<Vec<_>>()
    );
    let pid = child.id().to_string();
    Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    let out = child.wait_with_output().expect("wait");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let acc = api.accepted();
    let served = line.served();
    for (unit, id) in [(1u8, "M1"), (2, "M2"), (3, "M3")] {
        let delivered: Vec<f64> = series(&acc, id).iter().map(|a| a.value).collect();
        let from_meter = served_f32(&served, unit, 0x0048);
        assert_eq!(delivered[..], from_meter[..delivered.len()], "{id}");
        for a in series(&acc, &format!("{id}_U")) {
            assert_eq!(a.raw_value, "230.1");
        }
    }
    // The absent unit costs at most one timeout per cycle: unit 2 answers within one timeout
    // (plus slack) of unit 1 in every cycle, and unit 9 is asked at most once per cycle.
    let ones: Vec<Instant> = served
        .iter()
        .filter(|s| s.unit == 1)
        .map(|s| s.at)
        .collect();
    let twos: Vec<Instant> = served
        .iter()
        .filter(|s| s.unit == 2)
        .map(|s| s.at)
        .collect();
    for (a, b) in ones.iter().zip(&twos) {
        let gap = b.duration_since(*a);
        assert!(
            gap < Duration::from_millis(timeout_ms + 250),
            "unit 2 answered {gap:?} after unit 1"
        );
    }
    assert!(
        line.requests_for(9) as usize <= ones.len(),
        "absent unit asked more than once per cycle"
    );
    assert!(
        line.requests_for(9) < ones.len() as u64,
        "absent unit not backed off"
    );
    let not_answering: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("meter not answering"))
        .collect();
    assert_eq!(not_answering.len(), 1, "{stderr}");
    assert!(not_answering[0].contains("absent"));
    assert!(
        stderr.lines().any(|l| l.contains("m3")
            && l.contains("illegal data address")
            && l.contains("smaller requests")),
        "fallback not logged by name:\n{stderr}"
    );
    // Unit 3 is read in split requests from then on: the meter remembers the fallback, so
    // the merged request was refused once (the simulator records only answered requests; one
    // more may have been cut off by the stop), never once per cycle.
    let threes: Vec<_> = served.iter().filter(|s| s.unit == 3).collect();
    assert!(threes.iter().all(|s| s.count <= 10), "{threes:?}");
    let refused = line.requests_for(3) - threes.len() as u64;
    assert!(
        (1..=2).contains(&refused),
        "{refused} refused requests for unit 3 over {} answered: the split was not remembered",
        threes.len()
    );
}

/// Every transaction on the line keeps t3.5 of silence plus the configured `delay` after the
/// previous answer (SPEC §6.2): measured at the simulated meters, from the moment an answer
/// was written to the moment the next request had arrived. Only lower bounds: a slow machine
/// makes the gaps longer, never shorter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_transaction_keeps_t35_plus_the_delay_of_silence() {
    let dir = tempfile::tempdir().expect("tempdir");
    let api = StandIn::start(CUSTOMER, TOKEN).await.expect("api");
    let line = SimRtuBus::start(vec![SimMeter::sdm630(1), SimMeter::sdm630(2)], None)
        .await
        .expect("line");
    let text = format!(
        "{}{}{}{}",
        head(&api.base_url(), dir.path()),
        rtu_bus("rs485", &line.path(), "500ms").replace("delay = \"0ms\"", "delay = \"50ms\""),
        meter("m1", 1, "M1"),
        meter("m2", 2, "M2"),
    );
    let d = start(&text, dir.path());
    assert!(
        wait_for(&api, |acc| series(acc, "M1").len() >= 3
            && series(acc, "M2").len() >= 3)
        .await
    );
    d.stop().await;
    let served = line.served();
    let arrivals = line.arrivals();
    assert!(arrivals.len() >= 6, "{arrivals:?}");
    // 9600 baud 8E1: t3.5 = 3.5 × 11 bits / 9600 = 4.01 ms.
    let quiet = Duration::from_millis(50) + Duration::from_micros(4010);
    let mut checked = 0;
    for (unit, arrived) in &arrivals {
        let Some(previous) = served
            .iter()
            .filter(|s| s.at <= *arrived)
            .map(|s| s.at)
            .max()
        else {
            continue;
        };
        let gap = arrived.duration_since(previous);
        assert!(
            gap >= quiet,
            "a request to unit {unit} arrived {gap:?} after the previous answer (< {quiet:?})"
        );
        checked += 1;
    }
    assert!(checked >= 5, "only {checked} gaps measured");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_rtu_answer_never_becomes_a_wrong_value() {
    let dir = tempfile::tempdir().expect("tempdir");
    let api = StandIn::start(CUSTOMER, TOKEN).await.expect("api");
    let line = SimRtuBus::start(vec![SimMeter::sdm630(1)], None)
        .await
        .expect("line");
    let text = format!(
        "{}{}  [[modbus_rtu.meter]]\n  name = \"m\"\n  unit_id = 1\n  interval = \"1s\"\n  profile = \"eastron-sdm630\"\n  channels = [\n    {{ quantity = \"import_energy_total\", import_id = \"E\", unit = \"kWh\" }},\n    {{ quantity = \"total_energy\", import_id = \"T\", unit = \"kWh\" }},\n  ]\n",
        head(&api.base_url(), dir.path()),
        rtu_bus("rs485", &line.path(), "300ms")
    );
    let d = start(&text, dir.path());
    assert!(wait_for(&api, |acc| series(acc, "E").len() >= 2).await);
    line.delay_next(1, 1, Duration::from_millis(600));
    let before = series(&api.accepted(), "E").len();
    assert!(wait_for(&api, |acc| series(acc, "E").len() >= before + 3).await);
    d.stop().await;
    let acc = api.accepted();
    let served = line.served();
    let e = served_f32(&served, 1, 0x0048);
    let t = served_f32(&served, 1, 0x0156);
    for a in series(&acc, "E") {
        assert!(e.contains(&a.value), "E {} never served", a.value);
    }
    for a in series(&acc, "T") {
        assert!(t.contains(&a.value), "T {} never served", a.value);
    }
    assert_eq!(series(&acc, "E").len(), series(&acc, "T").len());
    let vals: Vec<f64> = series(&acc, "E").iter().map(|a| a.value).collect();
    assert!(vals.windows(2).all(|w| w[0] < w[1]), "{vals:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_bad_crc_are_counted_in_status() {
    let dir = tempfile::tempdir().expect("tempdir");
    let api = StandIn::start(CUSTOMER, TOKEN).await.expect("api");
    let line = SimRtuBus::start(vec![SimMeter::sdm630(1)], None)
        .await
        .expect("line");
    let text = format!(
        "{}{}{}",
        head(&api.base_url(), dir.path()),
        rtu_bus("rs485", &line.path(), "300ms"),
        meter("m", 1, "E")
    );
    let d = start(&text, dir.path());
    assert!(wait_for(&api, |acc| series(acc, "E").len() >= 2).await);
    line.garbage_next(1, 1, vec![0x00, 0xFF, 0x00]);
    assert!(wait_for(&api, |acc| series(acc, "E").len() >= 3).await);
    line.bad_crc_next(1, 1);
    let before = series(&api.accepted(), "E").len();
    // The bad-CRC slot is lost; the next cycle is fine.
    assert!(wait_for(&api, |acc| series(acc, "E").len() >= before + 2).await);
    // Let the meter row reach the queue file.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let st = queue::status(&dir.path().join("queue.db")).expect("status");
    let m = st
        .meters
        .iter()
        .find(|m| m.meter == "m")
        .expect("meter row");
    assert!(m.crc_errors >= 1, "{m:?}");
    assert!(m.garbage_bytes >= 3, "{m:?}");
    assert!(m.ok, "{m:?}");
    d.stop().await;
    let out = tokio::task::spawn_blocking({
        let q = dir.path().join("queue.db");
        move || {
            Command::new(bin())
                .args(["status", "--queue", q.to_str().expect("utf8")])
                .output()
                .expect("status")
        }
    })
    .await
    .expect("join");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("bad CRC"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let vals: Vec<f64> = series(&api.accepted(), "E")
        .iter()
        .map(|a| a.value)
        .collect();
    let served = served_f32(&line.served(), 1, 0x0048);
    assert!(vals.iter().all(|v| served.contains(v)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vanished_port_is_reopened_and_the_other_bus_never_stops() {
    let dir = tempfile::tempdir().expect("tempdir");
    let api = StandIn::start(CUSTOMER, TOKEN).await.expect("api");
    let a = SimRtuBus::start(vec![SimMeter::sdm630(1)], None)
        .await
        .expect("line a");
    let b = SimRtuBus::start(vec![SimMeter::sdm630(1)], None)
        .await
        .expect("line b");
    // The config names a stable symlink, like /dev/serial/by-id/….
    let link = dir.path().join("usb-adapter-a");
    std::os::unix::fs::symlink(a.path(), &link).expect("symlink");
    let text = format!(
        "{}{}{}{}{}",
        head(&api.base_url(), dir.path()),
        rtu_bus("bus-a", &link, "300ms"),
        meter("ma", 1, "A"),
        rtu_bus("bus-b", &b.path(), "300ms"),
        meter("mb", 1, "B"),
    );
    let d = start(&text, dir.path());
    assert!(
        wait_for(&api, |acc| series(acc, "A").len() >= 2
            && series(acc, "B").len() >= 2)
        .await
    );
    // Unplug A.
    a.close().await;
    let b_before = series(&api.accepted(), "B").len();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let a_during = series(&api.accepted(), "A").len();
    // B kept its 1 s schedule meanwhile.
    assert!(
        series(&api.accepted(), "B").len() >= b_before + 3,
        "bus B stalled"
    );
    // Plug in a "new" adapter: the symlink points at a new pty.
    let a2 = SimRtuBus::start(vec![SimMeter::sdm630(1)], None)
        .await
        .expect("line a2");
    let tmp = dir.path().join("usb-adapter-a.new");
    std::os::unix::fs::symlink(a2.path(), &tmp).expect("symlink");
    std::fs::rename(&tmp, &link).expect("re-point");
    let back = Instant::now();
    assert!(wait_for(&api, |acc| series(acc, "A").len() > a_during).await);
    let resumed = back.elapsed();
    assert!(
        resumed < Duration::from_secs(10),
        "polling resumed after {resumed:?}"
    );
    tokio::time::sleep(Duration::from_millis(600)).await;
    let st = queue::status(&dir.path().join("queue.db")).expect("status");
    let ma = st.meters.iter().find(|m| m.meter == "ma").expect("ma");
    // A lost port does not count against its meters.
    assert!(!ma.down && ma.failures == 0, "{ma:?}");
    d.stop().await;
    println!(
        "port back after re-pointing: polling resumed in {:.1} s",
        resumed.as_secs_f64()
    );
}

/// Runs the binary with `args` off the runtime; (exit code, stdout, stderr).
async fn run_cli(args: &[&str]) -> (Option<i32>, String, String) {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let out = tokio::task::spawn_blocking(move || Command::new(bin()).args(&args).output())
        .await
        .expect("join")
        .expect("run");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_and_scan_over_serial_and_tcp() {
    let line = SimRtuBus::start(vec![SimMeter::sdm630(1), SimMeter::sdm630(4)], None)
        .await
        .expect("line");
    let tcp = SimModbus::start(vec![SimMeter::sdm630(7)])
        .await
        .expect("tcp");
    let port = line.path().to_string_lossy().into_owned();

    let (code, out, err) = run_cli(&[
        "scan",
        "modbus",
        "--port",
        &port,
        "--units",
        "1-5",
        "--timeout",
        "150ms",
    ])
    .await;
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        out.contains("unit   1: answers") && out.contains("unit   4: answers"),
        "{out}"
    );
    assert!(!out.contains("unit   2:"), "{out}");
    assert!(
        err.contains("scanned") && err.contains("2 answered"),
        "{err}"
    );
    // The progress line, rewritten in place for every unit id.
    for unit in 1..=5 {
        assert!(
            err.contains("\rscanning ") && err.contains(&format!(": unit {unit:>3} ({unit}/5), ")),
            "no progress for unit {unit}: {err:?}"
        );
    }

    let (code, out, err) = run_cli(&[
        "probe",
        "modbus",
        "--port",
        &port,
        "--unit",
        "1",
        "--register",
        "0x0000",
        "--input",
    ])
    .await;
    assert_eq!(code, Some(0), "{out}{err}");
    // Four registers by default, so the 64-bit types show too.
    assert!(out.contains("×4 from unit 1"), "{out}");
    assert!(out.contains("0x4366 0x199A 0x4367 0x3333"), "{out}");
    for name in ["u64 ABCD", "i64 CDAB", "f64 BADC", "f64 DCBA"] {
        assert!(
            out.lines().any(|l| l.trim_start().starts_with(name)),
            "{name} missing:\n{out}"
        );
    }
    let f32_abcd = out
        .lines()
        .find(|l| l.trim_start().starts_with("f32 ABCD"))
        .expect("f32 ABCD line");
    assert!(
        f32_abcd.contains("230.1") && f32_abcd.contains("mains voltage"),
        "{f32_abcd}"
    );
    let cdab = out
        .lines()
        .find(|l| l.trim_start().starts_with("f32 CDAB"))
        .expect("f32 CDAB line");
    assert!(!cdab.contains("mains"), "{cdab}");
    assert!(out.contains("type = \"f32\", order = \"ABCD\""), "{out}");

    let addr = tcp.addr().to_string();
    let (code, out, _) = run_cli(&[
        "scan",
        "modbus",
        "--tcp",
        &addr,
        "--units",
        "5-8",
        "--timeout",
        "150ms",
    ])
    .await;
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("unit   7: answers"), "{out}");
    let (code, out, _) = run_cli(&[
        "probe",
        "modbus",
        "--tcp",
        &addr,
        "--unit",
        "7",
        "--register",
        "70",
        "--input",
    ])
    .await;
    assert_eq!(code, Some(0), "{out}");
    let f = out
        .lines()
        .find(|l| l.trim_start().starts_with("f32 ABCD"))
        .expect("f32 line");
    assert!(f.contains("50") && f.contains("mains frequency"), "{f}");
    // The last value of the meter's map: 4 registers would run past it (exception 02), so
    // probe says so and reads 2.
    let (code, out, err) = run_cli(&[
        "probe",
        "modbus",
        "--tcp",
        &addr,
        "--unit",
        "7",
        "--register",
        "0x0164",
        "--input",
    ])
    .await;
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        err.contains("refused 4 registers") && err.contains("reading 2"),
        "{err}"
    );
    assert!(out.contains("×2 from unit 7"), "{out}");
    assert!(!out.contains("f64"), "{out}");
    // A register the meter does not have: exception by name, exit 1.
    let (code, _, err) = run_cli(&[
        "probe",
        "modbus",
        "--port",
        &port,
        "--unit",
        "1",
        "--register",
        "0x1000",
    ])
    .await;
    assert_eq!(code, Some(1));
    assert!(err.contains("illegal data address"), "{err}");
}
