//! The daemon end to end on loopback: simulated Modbus TCP meters → bus tasks → queue → sender
//! → the stand-in API. In-process through `app::run_with`, and as the real binary (`run`)
//! where signals, logs and kill -9 matter.

use std::collections::BTreeMap;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use enectiva_collector::app;
use enectiva_collector::config::Config;
use enectiva_collector::modbus::Table;
use enectiva_collector::queue::{self, QueueOptions};
use enectiva_collector::sender::SenderSettings;
use enectiva_collector::sim::api::{Accepted, Mode, StandIn};
use enectiva_collector::sim::modbus::{SimMeter, SimModbus};
use tokio_util::sync::CancellationToken;

use crate::common::CUSTOMER;

const TOKEN: &str = "daemon-token";
const LONG: Duration = Duration::from_secs(60);

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_enectiva-collector")
}

/// `[api]` and `[queue]` for a config in `dir`.
fn head(api: &str, dir: &Path) -> String {
    std::fs::write(dir.join("token"), TOKEN).expect("token");
    format!(
        "[api]\nbase_url = \"{api}\"\ncustomer_id = \"{CUSTOMER}\"\ntoken_file = \"{}\"\nsender = \"it\"\nmax_backoff = \"2s\"\n\n[queue]\npath = \"{}\"\n\n[log]\nlevel = \"info\"\n",
        dir.join("token").display(),
        dir.join("queue.db").display()
    )
}

/// Every value the simulator served for an f32 input register of a unit, in serving order.
fn served_f32(sim: &SimModbus, unit: u8, addr: u16) -> Vec<f64> {
    sim.served()
        .iter()
        .filter(|s| {
            s.unit == unit
                && s.table == Table::Input
                && s.start <= addr
                && addr + 1 < s.start + s.count
                && usize::from(addr - s.start) + 1 < s.words.len()
        })
        .map(|s| {
            let words = &s.words;
            let bits = (u32::from(words[usize::from(addr - s.start)]) << 16)
                | u32::from(words[usize::from(addr - s.start) + 1]);
            let v = f32::from_bits(bits);
            v.to_string().parse::<f64>().unwrap_or(f64::NAN)
        })
        .collect()
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

struct Daemon {
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), app::AppError>>,
}

fn start(config_text: &str, dir: &Path) -> Daemon {
    start_with(config_text, dir, Duration::from_millis(50))
}

fn start_with(config_text: &str, dir: &Path, commit_window: Duration) -> Daemon {
    let config = Config::parse(config_text, &dir.join("config.toml"))
        .unwrap_or_else(|e| panic!("{e}\n{config_text}"));
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(app::run_with(
        config,
        move |q| QueueOptions {
            commit_window,
            ..QueueOptions::from_settings(q)
        },
        |a| SenderSettings {
            rescan: Duration::from_millis(200),
            auth_retry: Duration::from_millis(500),
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
async fn two_meters_end_to_end_with_conversion_and_data_points() {
    let dir = tempfile::tempdir().expect("tempdir");
    let api = StandIn::start(CUSTOMER, TOKEN).await.expect("api");
    let sim = SimModbus::start(vec![SimMeter::sdm630(1), SimMeter::sdm630(2)])
        .await
        .expect("sim");
    sim.set_f32(1, Table::Input, 0x0034, 2301.5);
    sim.set_f32(2, Table::Input, 0x0046, 49.98);
    let text = format!(
        r#"{}
[[modbus_tcp]]
name = "gw"
address = "{}"
timeout = "500ms"
  [[modbus_tcp.meter]]
  name = "m1"
  unit_id = 1
  interval = "1s"
  profile = "eastron-sdm630"
  channels = [
    {{ quantity = "import_energy_total", import_id = "M1_E", unit = "kWh" }},
    {{ quantity = "active_power_total", import_id = "M1_P", unit = "kW", kind = "data_point" }},
    {{ quantity = "voltage_l1", import_id = "M1_U", unit = "V", kind = "data_point" }},
  ]
  [[modbus_tcp.meter]]
  name = "m2"
  unit_id = 2
  interval = "1s"
  profile = "eastron-sdm630"
  channels = [
    {{ quantity = "import_energy_total", import_id = "M2_E", unit = "Wh" }},
    {{ quantity = "frequency", import_id = "M2_F", unit = "Hz", kind = "data_point" }},
  ]
"#,
        head(&api.base_url(), dir.path()),
        sim.addr()
    );
    let d = start(&text, dir.path());
    let ids = ["M1_E", "M1_P", "M1_U", "M2_E", "M2_F"];
    assert!(
        wait_for(&api, |acc| ids.iter().all(|id| series(acc, id).len() >= 3)).await,
        "not every channel delivered 3 times: {:?}",
        api.accepted()
            .iter()
            .map(|a| a.import_id.clone())
            .collect::<Vec<_>>()
    );
    d.stop().await;
    let acc = api.accepted();
    // Energy: exactly the register contents, in order, each poll once.
    for (unit, id, factor) in [(1u8, "M1_E", 1.0), (2, "M2_E", 1000.0)] {
        let delivered: Vec<f64> = series(&acc, id).iter().map(|a| a.value).collect();
        let served: Vec<f64> = served_f32(&sim, unit, 0x0048)
            .iter()
            .map(|v| v * factor)
            .collect();
        assert!(delivered.len() >= 3);
        assert_eq!(
            delivered[..],
            served[..delivered.len()],
            "{id}: delivered vs served"
        );
        assert!(
            delivered.windows(2).all(|w| w[0] < w[1]),
            "{id} not increasing: {delivered:?}"
        );
    }
    // W register sent as kW, as a data point.
    for a in series(&acc, "M1_P") {
        assert_eq!(
            (a.kind, a.raw_value.as_str(), a.unit.as_deref()),
            ("data_point", "2.3015", Some("kW"))
        );
    }
    for a in series(&acc, "M1_U") {
        assert_eq!((a.kind, a.raw_value.as_str()), ("data_point", "230.1"));
    }
    for a in series(&acc, "M2_F") {
        assert_eq!((a.kind, a.raw_value.as_str()), ("data_point", "49.98"));
    }
    for a in series(&acc, "M2_E") {
        assert_eq!((a.kind, a.unit.as_deref()), ("reading", Some("Wh")));
    }
    // Times are whole-second slots, in order per series.
    for id in ids {
        let times: Vec<&str> = series(&acc, id).iter().map(|a| a.time.as_str()).collect();
        assert!(times.windows(2).all(|w| w[0] < w[1]), "{id}: {times:?}");
    }
    let st = queue::status(&dir.path().join("queue.db")).expect("status");
    let polls: BTreeMap<&str, bool> = st.meters.iter().map(|m| (m.meter.as_str(), m.ok)).collect();
    assert_eq!(polls.get("m1"), Some(&true));
    assert_eq!(polls.get("m2"), Some(&true));
}

/// Twenty meters on one Modbus TCP connection, each every second, with the default 200 ms
/// group-commit window: the bus hands each meter's readings to the queue and polls the next
/// meter while they are committed. (Waiting for each commit held a bus to five meters a
/// second: every meter was read only every fourth slot.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_bus_reads_twenty_meters_every_second_without_waiting_for_each_commit() {
    const METERS: u8 = 20;
    let dir = tempfile::tempdir().expect("tempdir");
    let api = StandIn::start(CUSTOMER, TOKEN).await.expect("api");
    let sim = SimModbus::start((1..=METERS).map(SimMeter::sdm630).collect())
        .await
        .expect("sim");
    let mut text = format!(
        "{}\n[[modbus_tcp]]\nname = \"gw\"\naddress = \"{}\"\n",
        head(&api.base_url(), dir.path()),
        sim.addr()
    );
    for unit in 1..=METERS {
        text.push_str(&format!(
            "  [[modbus_tcp.meter]]\n  name = \"m{unit}\"\n  unit_id = {unit}\n  interval = \"1s\"\n  profile = \"eastron-sdm630\"\n  channels = [ {{ quantity = \"import_energy_total\", import_id = \"M{unit}\", unit = \"kWh\" }} ]\n"
        ));
    }
    let d = start_with(&text, dir.path(), Duration::from_millis(200));
    let ids: Vec<String> = (1..=METERS).map(|u| format!("M{u}")).collect();
    let enough = wait_for(&api, |acc| ids.iter().all(|id| series(acc, id).len() >= 8)).await;
    d.stop().await;
    assert!(enough, "not every meter delivered 8 readings");
    let acc = api.accepted();
    for id in &ids {
        let times: Vec<i64> = series(&acc, id).iter().map(|a| epoch(&a.time)).collect();
        // The last five readings (past start-up) come from five slots in a row, give or take
        // one slot skipped on a busy machine; reading every fourth slot would span 16 s.
        let last = &times[times.len() - 5..];
        let span = last[4] - last[0];
        assert!(
            span <= 5,
            "{id}: five readings span {span} s at a 1 s interval: {times:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdm630_with_ten_channels_costs_two_requests_per_cycle() {
    let dir = tempfile::tempdir().expect("tempdir");
    let api = StandIn::start(CUSTOMER, TOKEN).await.expect("api");
    let sim = SimModbus::start(vec![SimMeter::sdm630(1)])
        .await
        .expect("sim");
    let quantities = [
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
    let mut channels: Vec<String> = quantities
        .iter()
        .map(|q| {
            format!("    {{ quantity = \"{q}\", import_id = \"Q_{q}\", kind = \"data_point\" }},")
        })
        .collect();
    channels.push(
        "    { quantity = \"total_energy\", import_id = \"Q_total\", unit = \"kWh\" },".into(),
    );
    let text = format!(
        "{}\n[[modbus_tcp]]\nname = \"gw\"\naddress = \"{}\"\n  [[modbus_tcp.meter]]\n  name = \"m\"\n  unit_id = 1\n  interval = \"1s\"\n  profile = \"eastron-sdm630\"\n  channels = [\n{}\n  ]\n",
        head(&api.base_url(), dir.path()),
        sim.addr(),
        channels.join("\n")
    );
    let d = start(&text, dir.path());
    assert!(wait_for(&api, |acc| series(acc, "Q_total").len() >= 3).await);
    d.stop().await;
    let served = sim.served();
    let cycles = served.iter().filter(|s| s.start == 0).count();
    assert!(cycles >= 3);
    // Exactly two reads per cycle: the whole 80-register block (the profile's `blocks`) and
    // 0x0156.
    assert_eq!(sim.requests_for(1), 2 * cycles as u64, "{served:?}");
    for s in &served {
        assert_eq!(s.table, Table::Input);
        assert!(
            (s.start, s.count) == (0, 80) || (s.start, s.count) == (0x0156, 2),
            "unexpected request {:?}",
            (s.start, s.count)
        );
    }
    assert_eq!(
        series(&api.accepted(), "Q_total").len(),
        series(&api.accepted(), "Q_voltage_l1").len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_answer_never_becomes_a_wrong_value() {
    let dir = tempfile::tempdir().expect("tempdir");
    let api = StandIn::start(CUSTOMER, TOKEN).await.expect("api");
    let sim = SimModbus::start(vec![SimMeter::sdm630(1)])
        .await
        .expect("sim");
    let text = format!(
        r#"{}
[[modbus_tcp]]
name = "gw"
address = "{}"
timeout = "300ms"
  [[modbus_tcp.meter]]
  name = "m"
  unit_id = 1
  interval = "1s"
  profile = "eastron-sdm630"
  channels = [
    {{ quantity = "import_energy_total", import_id = "E", unit = "kWh" }},
    {{ quantity = "total_energy", import_id = "T", unit = "kWh" }},
    {{ quantity = "voltage_l1", import_id = "U", kind = "data_point" }},
  ]
"#,
        head(&api.base_url(), dir.path()),
        sim.addr()
    );
    let d = start(&text, dir.path());
    assert!(wait_for(&api, |acc| series(acc, "E").len() >= 2).await);
    let connections_before = sim.connections();
    let old_connection = connections_before - 1;
    // The next request is answered 700 ms late, after the 300 ms timeout.
    let scripted = Instant::now();
    sim.delay_next(1, 1, Duration::from_millis(700));
    let before = series(&api.accepted(), "E").len();
    assert!(wait_for(&api, |acc| series(acc, "E").len() >= before + 3).await);
    d.stop().await;
    // Exactly one fresh connection, and the old one carried nothing after the late answer:
    // a client that kept it would have sent its next request there and read the late answer
    // (or tripped over it) instead.
    assert_eq!(
        sim.connections(),
        connections_before + 1,
        "expected exactly one fresh connection after the timeout"
    );
    let served = sim.served();
    let on_old_after: Vec<&_> = served
        .iter()
        .filter(|s| s.connection == old_connection && s.at > scripted)
        .collect();
    assert_eq!(
        on_old_after.len(),
        1,
        "only the late answer may follow on the old connection: {on_old_after:?}"
    );
    assert!(on_old_after[0].at >= scripted + Duration::from_millis(600));
    let acc = api.accepted();
    // Every delivered value is the one its register held, never a neighbour's.
    let served_e = served_f32(&sim, 1, 0x0048);
    let served_t = served_f32(&sim, 1, 0x0156);
    for a in series(&acc, "E") {
        assert!(
            served_e.contains(&a.value),
            "E {} was never in register 0x0048",
            a.value
        );
        assert!(a.value >= 1000.0 && a.value < 1100.0);
    }
    for a in series(&acc, "T") {
        assert!(
            served_t.contains(&a.value),
            "T {} was never in register 0x0156",
            a.value
        );
    }
    for a in series(&acc, "U") {
        assert_eq!(a.raw_value, "230.1");
    }
    // One slot was lost to the late answer; the others are whole polls (same count per series).
    assert_eq!(series(&acc, "E").len(), series(&acc, "T").len());
    assert_eq!(series(&acc, "E").len(), series(&acc, "U").len());
}

/// A malformed answer (one register short) is never decoded: the connection is dropped (a
/// debug build of tokio-modbus asserts on it, which must not take the bus down either), the
/// slot is lost, and the next cycle reads correctly on a fresh connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_answer_is_dropped_and_the_next_cycle_reads_on_a_fresh_connection() {
    let OneMeter {
        dir,
        api,
        sim,
        text,
        ..
    } = one_meter_rig(Mode::Normal, "300ms").await;
    let d = start(&text, dir.path());
    assert!(wait_for(&api, |acc| series(acc, "E").len() >= 2).await);
    let connections_before = sim.connections();
    sim.short_next(1, 1);
    let before = series(&api.accepted(), "E").len();
    assert!(wait_for(&api, |acc| series(acc, "E").len() >= before + 3).await);
    d.stop().await;
    assert_eq!(sim.connections(), connections_before + 1);
    let short: Vec<_> = sim
        .served()
        .into_iter()
        .filter(|s| s.words.len() != usize::from(s.count))
        .collect();
    assert_eq!(short.len(), 1, "the simulator sent one short answer");
    let served_e = served_f32(&sim, 1, 0x0048);
    let delivered: Vec<f64> = series(&api.accepted(), "E")
        .iter()
        .map(|a| a.value)
        .collect();
    for v in &delivered {
        assert!(served_e.contains(v), "E {v} was never in register 0x0048");
    }
    let mut sorted = delivered.clone();
    sorted.dedup();
    assert_eq!(sorted, delivered, "no value delivered twice");
}

// ---- the real binary ----

/// An I/O error on commit stops `run` with exit status 1 and an ERROR naming it (SPEC §5), so
/// systemd restarts it instead of a daemon that polls into a queue it cannot write; what was
/// committed before is still in the file. strace fails the 20th and every later fsync of each
/// thread (it counts per thread): opening the queue takes about 14 on its thread, the queue
/// writer makes one per commit, so the error lands on a commit after about 20 s of polling.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_io_error_on_commit_stops_run_with_exit_1() {
    if !crate::common::strace_available() {
        return;
    }
    let OneMeter {
        dir,
        api: _api,
        sim,
        config,
        ..
    } = one_meter_rig(Mode::Down, "300ms").await;
    let child = Command::new("strace")
        .args([
            "-f",
            "-qq",
            "-o",
            "/dev/null",
            "-e",
            "trace=fsync,fdatasync",
            "-e",
            "inject=fsync,fdatasync:error=EIO:when=20+",
        ])
        .arg(bin())
        .args(["-c", config.to_str().expect("utf8"), "run"])
        .env_remove("JOURNAL_STREAM")
        .env_remove("CREDENTIALS_DIRECTORY")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn strace");
    let (code, _, stderr) = tokio::task::spawn_blocking(move || wait_exit(child, LONG))
        .await
        .expect("join");
    assert_eq!(code, Some(1), "run must exit 1 on an I/O error:\n{stderr}");
    assert!(
        stderr.contains("stopped with an error") && stderr.contains("I/O error"),
        "no ERROR naming the I/O error:\n{stderr}"
    );
    assert!(
        served_f32(&sim, 1, 0x0048).len() >= 2,
        "the meter was never polled: the error came before any commit\n{stderr}"
    );
    let st = queue::status(&dir.path().join("queue.db")).expect("status after the error");
    assert!(st.pending >= 1, "nothing committed before the error");
}

/// Unix seconds of an RFC 3339 time as sent (0 if it does not parse, which fails the caller).
fn epoch(rfc3339: &str) -> i64 {
    humantime::parse_rfc3339(rfc3339)
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs() as i64)
}

fn spawn_run(config: &Path) -> Child {
    spawn_run_with(config, &[])
}

fn spawn_run_with(config: &Path, env: &[(&str, &str)]) -> Child {
    Command::new(bin())
        .args(["-c", config.to_str().expect("utf8"), "run"])
        .env_remove("JOURNAL_STREAM")
        .env_remove("CREDENTIALS_DIRECTORY")
        .env("RUST_LOG", "info")
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn run")
}

const LIBFAKETIME: &[&str] = &[
    "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1",
    "/usr/lib/aarch64-linux-gnu/faketime/libfaketimeMT.so.1",
    "/usr/lib/faketime/libfaketimeMT.so.1",
];

/// A board without an RTC boots in 2020 (before this binary was built): no meter is read and
/// nothing is queued, and one ERROR says why (SPEC §6.1, the clock sanity floor). The wall
/// clock is faked with libfaketime; timers keep real (monotonic) time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clock_before_the_build_date_takes_no_readings_and_says_why() {
    let Some(lib) = LIBFAKETIME.iter().find(|p| Path::new(p).exists()) else {
        assert!(
            std::env::var_os("ENECTIVA_REQUIRE_TOOLS").is_none(),
            "libfaketime is needed here: apt-get install faketime"
        );
        eprintln!("skipped: libfaketime is not installed (CI installs it)");
        return;
    };
    let OneMeter {
        dir,
        api,
        sim,
        config,
        ..
    } = one_meter_rig(Mode::Normal, "300ms").await;
    let child = spawn_run_with(
        &config,
        &[
            ("LD_PRELOAD", lib),
            ("FAKETIME", "@2020-01-01 00:00:00"),
            ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
        ],
    );
    // Four 1 s slots go by.
    tokio::time::sleep(Duration::from_secs(4)).await;
    sigterm(&child);
    let (code, _, stderr) = tokio::task::spawn_blocking(move || wait_exit(child, LONG))
        .await
        .expect("join");
    assert_eq!(code, Some(0), "{stderr}");
    let floor = "system clock is before this binary's build date";
    assert_eq!(
        stderr.matches(floor).count(),
        1,
        "one ERROR, not one per slot:\n{stderr}"
    );
    assert!(stderr.contains("ERROR"), "{stderr}");
    assert_eq!(sim.requests(), 0, "a meter was read with a wrong clock");
    let st = queue::status(&dir.path().join("queue.db")).expect("status");
    assert_eq!(st.pending, 0);
    assert!(api.accepted().is_empty());
}

/// A bus whose meters answer slower than its interval allows skips slots instead of bursting
/// and says so with one WARN (SPEC §6.1); the readings it takes are on the schedule's slots.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bus_that_cannot_keep_its_interval_warns_once_and_skips_slots() {
    let OneMeter {
        dir: _dir,
        api,
        sim,
        config,
        ..
    } = one_meter_rig(Mode::Normal, "2s").await;
    // Every answer comes 1.2 s late (within the 2 s timeout): a poll outlasts the 1 s interval.
    sim.delay_next(1, 1000, Duration::from_millis(1200));
    let child = spawn_run(&config);
    assert!(wait_for(&api, |acc| series(acc, "E").len() >= 4).await);
    sigterm(&child);
    let (code, _, stderr) = tokio::task::spawn_blocking(move || wait_exit(child, LONG))
        .await
        .expect("join");
    assert_eq!(code, Some(0), "{stderr}");
    let behind = "bus cannot finish its cycle in time";
    assert_eq!(
        stderr.matches(behind).count(),
        1,
        "one WARN per minute:\n{stderr}"
    );
    let times: Vec<i64> = series(&api.accepted(), "E")
        .iter()
        .map(|a| epoch(&a.time))
        .collect();
    // No burst: two readings never share a second, and slots were skipped (gaps above 1 s).
    for w in times.windows(2) {
        assert!(
            w[1] > w[0],
            "readings out of order or in a burst: {times:?}"
        );
    }
    assert!(
        times.windows(2).any(|w| w[1] - w[0] >= 2),
        "no slot skipped: {times:?}"
    );
}

fn sigterm(child: &Child) {
    let pid = child.id().to_string();
    let ok = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill")
        .success();
    assert!(ok);
}

/// Waits for the child to exit (bounded); returns (status, elapsed, stderr).
fn wait_exit(mut child: Child, limit: Duration) -> (Option<i32>, Duration, String) {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            return (status.code(), started.elapsed(), err);
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            panic!("the daemon did not exit within {limit:?}:\n{err}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn write_config(dir: &Path, text: &str) -> PathBuf {
    let p = dir.join("config.toml");
    std::fs::write(&p, text).expect("config");
    p
}

/// One SDM630-style meter (unit 1) behind its own simulated endpoint, read every second into
/// series "E" with the given request timeout, the stand-in API answering in `mode`, and the
/// configuration written to `dir/config.toml`. Bind `dir`, `api` and `sim` (as `_name` when
/// unused): each stops or is deleted when dropped.
struct OneMeter {
    dir: tempfile::TempDir,
    api: StandIn,
    sim: SimModbus,
    text: String,
    config: PathBuf,
}

async fn one_meter_rig(mode: Mode, timeout: &str) -> OneMeter {
    let dir = tempfile::tempdir().expect("tempdir");
    let api = StandIn::start(CUSTOMER, TOKEN).await.expect("api");
    api.set_mode(mode).await.expect("mode");
    let sim = SimModbus::start(vec![SimMeter::sdm630(1)])
        .await
        .expect("sim");
    let text = format!(
        "{}{}",
        head(&api.base_url(), dir.path()),
        one_meter("m", "gw", sim.addr(), 1, "E")
            .replace("timeout = \"300ms\"", &format!("timeout = \"{timeout}\""))
    );
    let config = write_config(dir.path(), &text);
    OneMeter {
        dir,
        api,
        sim,
        text,
        config,
    }
}

fn one_meter(
    name: &str,
    bus: &str,
    addr: std::net::SocketAddr,
    unit: u8,
    import_id: &str,
) -> String {
    format!(
        r#"
[[modbus_tcp]]
name = "{bus}"
address = "{addr}"
timeout = "300ms"
  [[modbus_tcp.meter]]
  name = "{name}"
  unit_id = {unit}
  interval = "1s"
  profile = "eastron-sdm630"
  channels = [ {{ quantity = "import_energy_total", import_id = "{import_id}", unit = "kWh" }} ]
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_unreachable_endpoint_leaves_the_other_on_schedule_and_logs_once_each_way() {
    one_endpoint_down(false).await;
}

/// The same with an endpoint that accepts the connection but never answers (every request runs
/// into its timeout), the harder case for the other bus's schedule.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_silent_endpoint_leaves_the_other_on_schedule_and_logs_once_each_way() {
    one_endpoint_down(true).await;
}

async fn one_endpoint_down(silent: bool) {
    let dir = tempfile::tempdir().expect("tempdir");
    let api = StandIn::start(CUSTOMER, TOKEN).await.expect("api");
    let a = SimModbus::start(vec![SimMeter::sdm630(1)])
        .await
        .expect("sim a");
    let b = SimModbus::start(vec![SimMeter::sdm630(1)])
        .await
        .expect("sim b");
    if silent {
        b.set_silent(1, true);
    } else {
        b.set_refusing(true).await.expect("refuse");
    }
    let text = format!(
        "{}{}{}",
        head(&api.base_url(), dir.path()),
        one_meter("ma", "a", a.addr(), 1, "A_E"),
        one_meter("mb", "b", b.addr(), 1, "B_E")
    );
    let child = spawn_run(&write_config(dir.path(), &text));
    // B is down for about 5 slots while A keeps its schedule.
    let t0 = Instant::now();
    assert!(wait_for(&api, |acc| series(acc, "A_E").len() >= 5).await);
    let a_during_outage = series(&api.accepted(), "A_E").len();
    assert_eq!(series(&api.accepted(), "B_E").len(), 0);
    if silent {
        b.set_silent(1, false);
    } else {
        b.set_refusing(false).await.expect("serve");
    }
    assert!(wait_for(&api, |acc| series(acc, "B_E").len() >= 2).await);
    let elapsed = t0.elapsed().as_secs_f64();
    sigterm(&child);
    let (code, took, stderr) = wait_exit(child, Duration::from_secs(10));
    assert_eq!(code, Some(0), "{stderr}");
    assert!(took < Duration::from_secs(10));
    // A: one reading per 1 s slot (give or take the slot being polled at either end).
    let a_total = series(&api.accepted(), "A_E").len() as f64;
    assert!(
        a_total >= elapsed - 2.5,
        "A delivered {a_total} in {elapsed:.1} s (during B's outage: {a_during_outage})"
    );
    let down: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("meter not answering"))
        .collect();
    let up: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("meter answers again"))
        .collect();
    assert_eq!(down.len(), 1, "{stderr}");
    assert_eq!(up.len(), 1, "{stderr}");
    assert!(
        down[0].contains("WARN") && down[0].contains("mb"),
        "{}",
        down[0]
    );
    assert!(up[0].contains("INFO") && up[0].contains("mb"), "{}", up[0]);
    assert!(!stderr.contains(TOKEN));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_an_api_outage_loses_no_committed_reading() {
    let OneMeter {
        dir,
        api,
        sim,
        config,
        ..
    } = one_meter_rig(Mode::Down, "300ms").await;
    let mut child = spawn_run(&config);
    // Let it poll a few slots into the queue, then kill it hard.
    let deadline = Instant::now() + LONG;
    while served_f32(&sim, 1, 0x0048).len() < 5 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    child.kill().expect("SIGKILL");
    let _ = child.wait();
    let st = queue::status(&dir.path().join("queue.db")).expect("status after kill");
    let committed = st.pending;
    assert!(
        committed >= 4,
        "only {committed} readings committed before the kill"
    );
    let served_before = served_f32(&sim, 1, 0x0048);
    let in_queue: Vec<f64> = {
        let conn = rusqlite::Connection::open(dir.path().join("queue.db")).expect("open");
        let mut stmt = conn
            .prepare("SELECT value FROM readings ORDER BY id")
            .expect("prepare");
        stmt.query_map([], |r| r.get(0))
            .expect("query")
            .map(|v| v.expect("row"))
            .collect()
    };
    assert_eq!(in_queue.len() as u64, committed);
    // Restart with the API back.
    api.set_mode(Mode::Normal).await.expect("up");
    let child = spawn_run(&config);
    assert!(wait_for(&api, |acc| series(acc, "E").len() as u64 >= committed + 3).await);
    sigterm(&child);
    let (code, _, stderr) = wait_exit(child, Duration::from_secs(10));
    assert_eq!(code, Some(0), "{stderr}");
    let delivered: Vec<f64> = series(&api.accepted(), "E")
        .iter()
        .map(|a| a.value)
        .collect();
    // Every value served before the kill was delivered except at most the one polled at the
    // kill; in order, no duplicates stored.
    let lost: Vec<&f64> = in_queue.iter().filter(|v| !delivered.contains(v)).collect();
    assert!(
        lost.is_empty(),
        "committed before the kill but never delivered: {lost:?}"
    );
    let missing: Vec<&f64> = served_before
        .iter()
        .filter(|v| !delivered.contains(v))
        .collect();
    assert!(
        missing.len() <= 1,
        "missing after restart: {missing:?} (delivered {delivered:?})"
    );
    assert!(delivered.windows(2).all(|w| w[0] < w[1]), "{delivered:?}");
    let times: Vec<String> = series(&api.accepted(), "E")
        .iter()
        .map(|a| a.time.clone())
        .collect();
    assert!(times.windows(2).all(|w| w[0] < w[1]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_0_within_10_s_with_the_queue_intact() {
    stops_cleanly_on("-TERM").await;
}

/// Ctrl-C in a terminal is the same clean stop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_exits_0_within_10_s_with_the_queue_intact() {
    stops_cleanly_on("-INT").await;
}

async fn stops_cleanly_on(signal: &str) {
    // The API hangs: an in-flight request must not hold up the stop.
    let OneMeter {
        dir,
        api: _api,
        sim,
        config,
        ..
    } = one_meter_rig(Mode::Hang, "300ms").await;
    let child = spawn_run(&config);
    let deadline = Instant::now() + LONG;
    while served_f32(&sim, 1, 0x0048).len() < 3 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let ok = Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .expect("kill")
        .success();
    assert!(ok);
    let (code, took, stderr) = wait_exit(child, Duration::from_secs(10));
    assert_eq!(code, Some(0), "{stderr}");
    assert!(took < Duration::from_secs(10), "{took:?}");
    let st = queue::status(&dir.path().join("queue.db")).expect("status");
    assert!(st.pending >= 2, "{st:?}");
    assert_eq!(
        st.state.get("clean_shutdown").map(String::as_str),
        Some("1")
    );
    let conn = rusqlite::Connection::open(dir.path().join("queue.db")).expect("open");
    let check: String = conn
        .query_row("PRAGMA quick_check", [], |r| r.get(0))
        .expect("quick_check");
    assert_eq!(check, "ok");
}

#[test]
fn demo_runs_the_pipeline_and_delivers_every_channel() {
    let out = Command::new(bin())
        .args(["demo", "--seconds", "20"])
        .env_remove("ENECTIVA_COLLECTOR_CONFIG")
        .output()
        .expect("demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for id in [
        "DEMO_IMPORT",
        "DEMO_EXPORT",
        "DEMO_TOTAL",
        "DEMO_POWER",
        "DEMO_U1",
        "DEMO_FREQ",
        "RTU1_IMPORT",
        "RTU1_POWER",
        "RTU2_IMPORT",
        "RTU2_U1",
        "HEAT_ENERGY",
        "HEAT_VOLUME",
        "HEAT_TFLOW",
    ] {
        let line = stdout
            .lines()
            .find(|l| l.trim_start().starts_with(id))
            .unwrap_or_else(|| panic!("{id} missing:\n{stdout}"));
        let n: usize = line
            .split_whitespace()
            .nth(1)
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        assert!(n >= 3, "{id}: {line}");
    }
    assert!(stdout.contains("every channel was delivered"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exception_02_splits_merged_requests_and_retires_missing_registers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let api = StandIn::start(CUSTOMER, TOKEN).await.expect("api");
    let sim = SimModbus::start(vec![SimMeter::sdm630(1)])
        .await
        .expect("sim");
    // This "meter" refuses requests longer than 10 registers (exception 02).
    sim.max_registers(1, 10);
    let text = format!(
        r#"{}
[[modbus_tcp]]
name = "gw"
address = "{}"
  [[modbus_tcp.meter]]
  name = "m"
  unit_id = 1
  interval = "1s"
  profile = "eastron-sdm630"
  channels = [
    {{ quantity = "voltage_l1", import_id = "U", kind = "data_point" }},
    {{ quantity = "import_energy_total", import_id = "E", unit = "kWh" }},
    {{ register = 0x0100, table = "input", type = "f32", import_id = "MISSING", kind = "data_point" }},
  ]
"#,
        head(&api.base_url(), dir.path()),
        sim.addr()
    );
    let d = start(&text, dir.path());
    assert!(wait_for(&api, |acc| series(acc, "E").len() >= 3).await);
    let at_three = sim.requests_for(1);
    assert!(wait_for(&api, |acc| series(acc, "E").len() >= 5).await);
    let per_cycle = sim.requests_for(1) - at_three;
    d.stop().await;
    // After the split: one request per remaining value, the missing register no longer asked.
    assert_eq!(
        per_cycle,
        2 * 2,
        "requests in two cycles after the fallback"
    );
    let served = sim.served();
    assert!(served.iter().all(|s| s.count <= 10));
    assert!(served.iter().all(|s| s.start != 0x0100));
    assert_eq!(series(&api.accepted(), "MISSING").len(), 0);
    assert_eq!(
        series(&api.accepted(), "U").len(),
        series(&api.accepted(), "E").len()
    );
}
