//! Operations with the real binary: sd_notify through a fake `NOTIFY_SOCKET` (READY, WATCHDOG,
//! STATUS, STOPPING, and the watchdog stopping when a task hangs), SIGHUP reloads, and the token
//! never showing up in any output, `status --json` or the database on any error path.

use std::io::Read as _;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use enectiva_collector::queue;
use enectiva_collector::sim::api::{Accepted, Answer, Mode, StandIn};
use enectiva_collector::sim::modbus::{SimMeter, SimModbus};

use crate::common::CUSTOMER;

const TOKEN: &str = "TOKEN-do-not-leak-8f3a2c";
const LONG: Duration = Duration::from_secs(60);

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_enectiva-collector")
}

fn head(api: &str, dir: &Path) -> String {
    format!(
        "[api]\nbase_url = \"{api}\"\ncustomer_id = \"{CUSTOMER}\"\ntoken_file = \"{}\"\nsender = \"ops\"\nmax_backoff = \"1s\"\n\n[queue]\npath = \"{}\"\n",
        dir.join("token").display(),
        dir.join("queue.db").display()
    )
}

fn tcp_bus(
    bus: &str,
    addr: std::net::SocketAddr,
    meter: &str,
    interval: &str,
    import_id: &str,
) -> String {
    format!(
        "\n[[modbus_tcp]]\nname = \"{bus}\"\naddress = \"{addr}\"\ntimeout = \"300ms\"\n  [[modbus_tcp.meter]]\n  name = \"{meter}\"\n  unit_id = 1\n  interval = \"{interval}\"\n  profile = \"eastron-sdm630\"\n  channels = [ {{ quantity = \"import_energy_total\", import_id = \"{import_id}\", unit = \"kWh\" }} ]\n"
    )
}

fn spawn(config: &Path, env: &[(&str, &str)]) -> Child {
    let mut c = Command::new(bin());
    c.args(["-c", config.to_str().expect("utf8"), "run"])
        .env_remove("JOURNAL_STREAM")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_USEC")
        .env_remove("CREDENTIALS_DIRECTORY")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in env {
        c.env(k, v);
    }
    c.spawn().expect("run")
}

fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .expect("kill")
        .success();
    assert!(ok);
}

fn finish(mut child: Child) -> (Option<i32>, String) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            return (status.code(), err);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the daemon did not exit");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Collects notifications: (arrival, message).
fn receive(sock: &UnixDatagram, until: Instant, out: &mut Vec<(Instant, String)>) {
    let mut buf = [0u8; 4096];
    while Instant::now() < until {
        let left = until
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1));
        sock.set_read_timeout(Some(left.min(Duration::from_millis(200))))
            .expect("timeout");
        if let Ok(n) = sock.recv(&mut buf) {
            out.push((
                Instant::now(),
                String::from_utf8_lossy(&buf[..n]).into_owned(),
            ));
        }
    }
}

fn pings(msgs: &[(Instant, String)]) -> Vec<Instant> {
    msgs.iter()
        .filter(|(_, m)| m.lines().any(|l| l == "WATCHDOG=1"))
        .map(|(t, _)| *t)
        .collect()
}

struct Rig {
    dir: tempfile::TempDir,
    api: StandIn,
    sim: SimModbus,
    config: PathBuf,
}

async fn rig() -> Rig {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("token"), TOKEN).expect("token");
    let api = StandIn::start(CUSTOMER, TOKEN).await.expect("api");
    let sim = SimModbus::start(vec![SimMeter::sdm630(1)])
        .await
        .expect("sim");
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "{}{}",
            head(&api.base_url(), dir.path()),
            tcp_bus("gw", sim.addr(), "m", "1s", "E")
        ),
    )
    .expect("config");
    Rig {
        dir,
        api,
        sim,
        config,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_ready_watchdog_status_stopping() {
    let r = rig().await;
    let sock_path = r.dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).expect("bind");
    let child = spawn(
        &r.config,
        &[
            ("NOTIFY_SOCKET", sock_path.to_str().expect("utf8")),
            ("WATCHDOG_USEC", "2000000"),
        ],
    );
    let started = Instant::now();
    let mut msgs = Vec::new();
    let deadline = started + LONG;
    while !msgs
        .iter()
        .any(|(_, m): &(Instant, String)| m.contains("READY=1"))
        && Instant::now() < deadline
    {
        receive(
            &sock,
            Instant::now() + Duration::from_millis(200),
            &mut msgs,
        );
    }
    // READY comes after the queue was opened.
    assert!(
        r.dir.path().join("queue.db").exists(),
        "READY before the queue exists"
    );
    let ready_at = msgs
        .iter()
        .find(|(_, m)| m.contains("READY=1"))
        .map(|(t, _)| *t)
        .expect("READY=1");
    receive(&sock, Instant::now() + Duration::from_secs(12), &mut msgs);
    let p = pings(&msgs);
    assert!(p.len() >= 8, "only {} pings in 12 s", p.len());
    // Every WatchdogSec/2 (1 s) at least, with a little scheduling slack.
    let first_gap = p[0].duration_since(ready_at);
    assert!(
        first_gap <= Duration::from_millis(1300),
        "first ping {first_gap:?} after READY"
    );
    for w in p.windows(2) {
        let gap = w[1].duration_since(w[0]);
        assert!(gap <= Duration::from_millis(1300), "ping gap {gap:?}");
    }
    let status: Vec<&String> = msgs
        .iter()
        .map(|(_, m)| m)
        .filter(|m| m.starts_with("STATUS="))
        .collect();
    assert!(!status.is_empty(), "no STATUS= line");
    let last = status.last().expect("status");
    assert!(
        last.contains("1/1 meters ok")
            && last.contains("pending")
            && last.contains("last delivery"),
        "{last}"
    );
    assert!(!status.iter().any(|s| s.contains(TOKEN)));
    signal(&child, "-TERM");
    let (code, stderr) = finish(child);
    receive(
        &sock,
        Instant::now() + Duration::from_millis(300),
        &mut msgs,
    );
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        msgs.iter().any(|(_, m)| m.contains("STOPPING=1")),
        "no STOPPING=1"
    );
    assert!(r.api.accepted_count() > 0);
    drop(r.sim);
}

async fn watchdog_stops_when(fault: &str) {
    let r = rig().await;
    let sock_path = r.dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).expect("bind");
    let child = spawn(
        &r.config,
        &[
            ("NOTIFY_SOCKET", sock_path.to_str().expect("utf8")),
            ("WATCHDOG_USEC", "2000000"),
            ("ENECTIVA_TEST_FAULT", fault),
        ],
    );
    let mut msgs = Vec::new();
    receive(&sock, Instant::now() + Duration::from_secs(10), &mut msgs);
    let ready_at = msgs
        .iter()
        .find(|(_, m)| m.contains("READY=1"))
        .map(|(t, _)| *t)
        .expect("READY=1");
    let p = pings(&msgs);
    // The stalled task promised 1 s (+2 s slack): no ping may come later than that (+1 s).
    let late: Vec<Duration> = p
        .iter()
        .map(|t| t.duration_since(ready_at))
        .filter(|d| *d > Duration::from_secs(4))
        .collect();
    assert!(late.is_empty(), "{fault}: pings kept coming: {late:?}");
    signal(&child, "-TERM");
    let (code, stderr) = finish(child);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("watchdog pings stop"), "{fault}: {stderr}");
    drop(r.sim);
    drop(r.api);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchdog_stops_when_the_sender_stalls() {
    watchdog_stops_when("stall-sender").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchdog_stops_when_the_scheduler_stalls() {
    watchdog_stops_when("stall-scheduler").await;
}

/// A bus task that panics (a bug; device input never panics) stops the daemon with exit
/// status 1 and an ERROR, so systemd restarts it, instead of a daemon that runs on without
/// that bus while the watchdog stays happy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_bus_task_stops_the_daemon_with_exit_1() {
    let r = rig().await;
    let child = spawn(&r.config, &[("ENECTIVA_TEST_FAULT", "panic-bus")]);
    let (code, stderr) = finish(child);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("bus task failed") && stderr.contains("test fault"),
        "{stderr}"
    );
    assert!(
        stderr.contains("stopping so the service restarts"),
        "{stderr}"
    );
    drop(r.sim);
    drop(r.api);
}

fn series<'a>(acc: &'a [Accepted], id: &str) -> Vec<&'a Accepted> {
    acc.iter().filter(|a| a.import_id == id).collect()
}

fn pending(dir: &Path, id: &str) -> u64 {
    queue::status(&dir.join("queue.db"))
        .map(|s| {
            s.series
                .iter()
                .filter(|x| x.import_id == id)
                .map(|x| x.pending)
                .sum()
        })
        .unwrap_or(0)
}

async fn wait_pending(dir: &Path, id: &str, n: u64) -> bool {
    let deadline = Instant::now() + LONG;
    while Instant::now() < deadline {
        if pending(dir, id) >= n {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_adds_removes_and_changes_meters_keeping_pending_readings() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("token"), TOKEN).expect("token");
    let api = StandIn::start(CUSTOMER, TOKEN).await.expect("api");
    // The API is down: everything stays pending in the queue across the reloads.
    api.set_mode(Mode::Down).await.expect("down");
    let a = SimModbus::start(vec![SimMeter::sdm630(1)])
        .await
        .expect("a");
    let b = SimModbus::start(vec![SimMeter::sdm630(1)])
        .await
        .expect("b");
    let c = SimModbus::start(vec![SimMeter::sdm630(1)])
        .await
        .expect("c");
    let config = dir.path().join("config.toml");
    let h = head(&api.base_url(), dir.path());
    std::fs::write(
        &config,
        format!(
            "{h}{}{}",
            tcp_bus("bus-a", a.addr(), "ma", "1s", "A"),
            tcp_bus("bus-b", b.addr(), "mb", "1s", "B")
        ),
    )
    .expect("config");
    let child = spawn(&config, &[]);
    let pid = child.id();
    assert!(wait_pending(dir.path(), "A", 3).await && wait_pending(dir.path(), "B", 3).await);
    // An invalid file: the running configuration stays.
    std::fs::write(&config, format!("{h}\n[[modbus_tcp]\nname = broken\n")).expect("bad config");
    signal(&child, "-HUP");
    let a_before = pending(dir.path(), "A");
    assert!(
        wait_pending(dir.path(), "A", a_before + 2).await,
        "polling stopped after an invalid reload"
    );
    // Change A's interval, remove B, add C.
    std::fs::write(
        &config,
        format!(
            "{h}{}{}",
            tcp_bus("bus-a", a.addr(), "ma", "2s", "A"),
            tcp_bus("bus-c", c.addr(), "mc", "1s", "C")
        ),
    )
    .expect("new config");
    signal(&child, "-HUP");
    assert!(
        wait_pending(dir.path(), "C", 3).await,
        "the added meter is not polled"
    );
    let b_after = pending(dir.path(), "B");
    let a_reads_before = a.requests();
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        pending(dir.path(), "B"),
        b_after,
        "the removed meter is still polled"
    );
    let a_reads = a.requests() - a_reads_before;
    assert!(
        (1..=3).contains(&a_reads),
        "A read {a_reads} times in 4 s with a 2 s interval"
    );
    // The API comes back: every reading, including the removed meter's, is delivered.
    api.set_mode(Mode::Normal).await.expect("up");
    let deadline = Instant::now() + LONG;
    while Instant::now() < deadline {
        let st = queue::status(&dir.path().join("queue.db")).expect("status");
        if st.pending == 0 && series(&api.accepted(), "B").len() as u64 >= b_after {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        series(&api.accepted(), "B").len() as u64 >= b_after,
        "pending readings of the removed meter were lost"
    );
    assert!(!series(&api.accepted(), "C").is_empty());
    assert_eq!(child.id(), pid);
    signal(&child, "-TERM");
    let (code, stderr) = finish(child);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stderr
            .lines()
            .any(|l| l.contains("ERROR") && l.contains("configuration reload failed")),
        "no ERROR for the invalid file:\n{stderr}"
    );
    assert!(stderr.contains("configuration reloaded"), "{stderr}");
    let st = queue::status(&dir.path().join("queue.db")).expect("status");
    let cnt = |k: &str| st.counters.get(k).copied().unwrap_or(0);
    assert_eq!(
        cnt("enqueued"),
        cnt("delivered") + cnt("dead_lettered") + cnt("dropped") + st.pending as i64
    );
}

/// Every byte of every file in the directory (the queue and its WAL).
fn files_contain(dir: &Path, needle: &str) -> Vec<PathBuf> {
    let mut hits = Vec::new();
    for e in std::fs::read_dir(dir).expect("dir").flatten() {
        let p = e.path();
        if p.file_name().is_some_and(|n| n == "token") {
            continue;
        }
        if let Ok(bytes) = std::fs::read(&p) {
            if bytes.windows(needle.len()).any(|w| w == needle.as_bytes()) {
                hits.push(p);
            }
        }
    }
    hits
}

/// The daemon at trace level, stdout and stderr into `log` (a file, so a long run never
/// blocks on a full pipe and the test can watch it while it runs).
fn spawn_logged(config: &Path, env: &[(&str, &str)], log: &Path) -> Child {
    let out = std::fs::File::create(log).expect("log");
    let err = out.try_clone().expect("log");
    let mut c = Command::new(bin());
    c.args(["-c", config.to_str().expect("utf8"), "run"])
        .env_remove("JOURNAL_STREAM")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_USEC")
        .env_remove("CREDENTIALS_DIRECTORY")
        .env_remove("ENECTIVA_TOKEN")
        .env("RUST_LOG", "trace")
        .stdout(out)
        .stderr(err);
    for (k, v) in env {
        c.env(k, v);
    }
    c.spawn().expect("run")
}

fn read_log(log: &Path) -> String {
    std::fs::read(log)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// Waits until `needle` occurs at least `n` times in the log.
async fn wait_log(log: &Path, needle: &str, n: usize) -> bool {
    let deadline = Instant::now() + LONG;
    while Instant::now() < deadline {
        if read_log(log).matches(needle).count() >= n {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// Polls `cond` until it holds, at most [`LONG`].
async fn wait_until(mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + LONG;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// `check --online` at trace level: (success, stdout + stderr).
fn check_online(config: &Path, env: &[(&str, &str)]) -> (bool, String) {
    let out = Command::new(bin())
        .args(["-c", config.to_str().expect("utf8"), "check", "--online"])
        .env_remove("CREDENTIALS_DIRECTORY")
        .env_remove("ENECTIVA_TOKEN")
        .env("RUST_LOG", "trace")
        .envs(env.iter().copied())
        .output()
        .expect("check");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn write_token(path: &Path, text: &str, mode: u32) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::write(path, text).expect("token");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_never_appears_in_logs_status_or_the_database() {
    // Every secret that goes near the daemon; none may show up anywhere.
    const BAD: &str = "BADCHAR-secret 4711";
    const WRONG: &str = "wrong-but-secret-token-123";
    const CRED: &str = "CRED-do-not-leak-51d0";
    const ENV: &str = "ENV-do-not-leak-7c2e";
    let dir = tempfile::tempdir().expect("tempdir");
    let token = dir.path().join("token");
    let log = dir.path().join("daemon.log");
    let api = StandIn::start(CUSTOMER, "another-token")
        .await
        .expect("api");
    // Every error answer quotes the token it was sent (401, 400 → dead letter, 429, 5xx, …).
    api.set_echo_token(true);
    let sim = SimModbus::start(vec![SimMeter::sdm630(1), SimMeter::sdm630(2)])
        .await
        .expect("sim");
    sim.set_silent(2, true);
    let config = dir.path().join("config.toml");
    let text = |sender: &str, token_file: bool| {
        let mut head = head(&api.base_url(), dir.path())
            .replace("sender = \"ops\"", &format!("sender = \"{sender}\""))
            .replace(
                "max_backoff = \"1s\"",
                "max_backoff = \"1s\"\ntimeout = \"1s\"",
            );
        if !token_file {
            head = head.replace(&format!("token_file = \"{}\"\n", token.display()), "");
        }
        format!(
            "{head}{}  [[modbus_tcp.meter]]\n  name = \"silent\"\n  unit_id = 2\n  interval = \"1s\"\n  profile = \"eastron-sdm630\"\n  channels = [ {{ quantity = \"voltage_l1\", import_id = \"S\", kind = \"data_point\" }} ]\n",
            tcp_bus("gw", sim.addr(), "m", "1s", "E").replace(
                "unit = \"kWh\" }",
                "unit = \"kWh\" },\n    { quantity = \"active_power_total\", import_id = \"P\", unit = \"kW\", kind = \"data_point\" }"
            )
        )
    };
    std::fs::write(&config, text("ops-1", true)).expect("config");
    assert!(text("x", false).contains("[api]") && !text("x", false).contains("token_file"));

    // 1. Token errors, each read by a fresh sender (a reload with another `sender` restarts it):
    // no file, an empty one, one with a space.
    let child = spawn_logged(&config, &[], &log);
    let reload = |sender: &str| {
        std::fs::write(&config, text(sender, true)).expect("config");
        signal(&child, "-HUP");
    };
    assert!(wait_log(&log, "cannot read the token from token_file", 1).await);
    write_token(&token, "", 0o600);
    reload("ops-2");
    assert!(wait_log(&log, "the token is empty", 1).await);
    write_token(&token, BAD, 0o600);
    reload("ops-3");
    assert!(wait_log(&log, "the token contains spaces or control characters", 1).await);
    // 2. The token, group-readable (a warning), but the API expects another: 401, re-read.
    write_token(&token, TOKEN, 0o640);
    reload("ops-4");
    assert!(api.wait_answered(401, LONG).await);
    assert!(wait_log(&log, "the API answered 401", 1).await);
    // 3. The breaker: the same 400 for both series (E and P), the token echoed in each body.
    api.set_token(TOKEN);
    api.reject_import_id("E", 400);
    api.reject_import_id("P", 400);
    reload("ops-5");
    assert!(
        wait_log(&log, "breaker open", 1).await,
        "the breaker did not trip"
    );
    api.clear_rejection("E");
    api.clear_rejection("P");
    // 4. 429, 500, 502 and 503 with Retry-After, for a sender without the breaker's pause.
    api.script([
        Answer::StatusRetryAfter(429, "1".into()),
        Answer::Status(500),
        Answer::Status(502),
        Answer::StatusRetryAfter(503, "1".into()),
    ]);
    reload("ops-6");
    assert!(api.wait_answered(503, LONG).await);
    // 5. Timeouts, then refused connections.
    api.set_mode(Mode::Hang).await.expect("hang");
    assert!(wait_log(&log, "(timeout)", 1).await, "no timeout");
    api.set_mode(Mode::Down).await.expect("down");
    let queue_path = dir.path().join("queue.db");
    let last_error = || {
        queue::status(&queue_path)
            .ok()
            .and_then(|s| s.state.get("last_error").cloned())
            .unwrap_or_default()
    };
    assert!(
        wait_until(|| last_error().contains("Connection refused")).await,
        "last_error: {}",
        last_error()
    );
    // 6. Back; then a broken configuration file on SIGHUP.
    let before = api.accepted_count();
    api.set_mode(Mode::Normal).await.expect("up");
    assert!(api.wait_accepted(before + 2, LONG).await);
    std::fs::write(
        &config,
        "[api]\nbase_url = \"http://x\"\n[[modbus_tcp]\nname = broken\n",
    )
    .expect("bad config");
    signal(&child, "-HUP");
    assert!(wait_log(&log, "configuration reload failed", 1).await);
    std::fs::write(&config, text("ops-6", true)).expect("config");
    signal(&child, "-TERM");
    let (code, _) = finish(child);
    assert_eq!(code, Some(0), "{}", read_log(&log));

    let statuses: std::collections::BTreeSet<u16> =
        api.attempts().iter().filter_map(|a| a.status).collect();
    for s in [401, 400, 429, 500, 502, 503, 201] {
        assert!(statuses.contains(&s), "no {s} answer: {statuses:?}");
    }
    let daemon_log = read_log(&log);
    assert!(daemon_log.contains("TRACE"), "not at trace level");
    assert!(daemon_log.contains("(request authorized with Bearer [token])"));
    // The sender says it once per start with the loose file (ops-4, -5, -6), not on every
    // re-read (ops-4 read it again after its 401). (Config validation says it in its words.)
    let warned: Vec<&str> = daemon_log
        .lines()
        .filter(|l| l.contains("readable by group or others (mode 640); run: chmod 600"))
        .collect();
    assert_eq!(warned.len(), 3, "{warned:#?}");
    let mut outputs = vec![("daemon log".to_string(), daemon_log)];
    let queue_arg = queue_path.to_str().expect("utf8");
    for args in [
        &["status", "--json", "--queue", queue_arg][..],
        &["dead", "list", "--queue", queue_arg][..],
    ] {
        let out = Command::new(bin()).args(args).output().expect("status");
        outputs.push((
            args.join(" "),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        ));
    }
    assert!(
        outputs[2].1.contains("rejected by the API (400)"),
        "no dead letter from the 400 path: {}",
        outputs[2].1
    );

    // `check --online` with each token problem: a clear message, never the bad token.
    std::fs::remove_file(&token).expect("rm");
    for (content, message) in [
        (None, "cannot read the token from token_file"),
        (Some(""), "the token is empty"),
        (Some(BAD), "the token contains spaces or control characters"),
    ] {
        if let Some(c) = content {
            write_token(&token, c, 0o600);
        }
        let (ok, out) = check_online(&config, &[]);
        assert!(!ok && out.contains(message), "{out}");
        outputs.push((format!("check --online with {message}"), out));
    }
    // With the right and a wrong token (a 401 whose detail echoes it).
    for t in [TOKEN, WRONG] {
        write_token(&token, t, 0o600);
        let (ok, out) = check_online(&config, &[]);
        assert_eq!(ok, t == TOKEN, "{out}");
        outputs.push((format!("check --online, token {t:.5}…"), out));
    }

    // The systemd credential wins over token_file; its token delivers (400 path, echoed).
    let creds = dir.path().join("creds");
    std::fs::create_dir(&creds).expect("creds");
    write_token(&creds.join("enectiva-token"), CRED, 0o600);
    let creds_env = [("CREDENTIALS_DIRECTORY", creds.to_str().expect("utf8"))];
    api.set_token(CRED);
    let (ok, out) = check_online(&config, &creds_env);
    assert!(ok && out.contains(": ok"), "{out}");
    outputs.push(("check --online, credential".into(), out));
    api.reject_import_id("E", 400);
    let cred_log = dir.path().join("cred.log");
    let child = spawn_logged(&config, &creds_env, &cred_log);
    assert!(wait_log(&cred_log, "reading rejected by the API", 1).await);
    signal(&child, "-TERM");
    assert_eq!(finish(child).0, Some(0));
    api.clear_rejection("E");
    let cred_log = read_log(&cred_log);
    // The rejection's detail echoed the credential's token, redacted.
    assert!(cred_log.contains("Bearer [token]"), "{cred_log}");
    outputs.push(("daemon log, credential".into(), cred_log));

    // $ENECTIVA_TOKEN (no token_file): check delivers; the daemon gets a 401 (echoed).
    std::fs::write(&config, text("ops-env", false)).expect("config");
    let env = [("ENECTIVA_TOKEN", ENV)];
    api.set_token(ENV);
    let (ok, out) = check_online(&config, &env);
    assert!(ok && out.contains(": ok"), "{out}");
    outputs.push(("check --online, $ENECTIVA_TOKEN".into(), out));
    api.set_token("another-token");
    let env_log = dir.path().join("env.log");
    let answered = api
        .attempts()
        .iter()
        .filter(|a| a.status == Some(401))
        .count();
    let child = spawn_logged(&config, &env, &env_log);
    assert!(wait_log(&env_log, "the API answered 401", 1).await);
    signal(&child, "-TERM");
    assert_eq!(finish(child).0, Some(0));
    assert!(
        api.attempts()
            .iter()
            .filter(|a| a.status == Some(401))
            .count()
            > answered
    );
    outputs.push(("daemon log, $ENECTIVA_TOKEN".into(), read_log(&env_log)));

    for secret in [TOKEN, BAD, "BADCHAR-secret", WRONG, CRED, ENV] {
        for (what, text) in &outputs {
            assert!(!text.contains(secret), "{secret:?} in {what}:\n{text}");
        }
        assert_eq!(
            files_contain(dir.path(), secret),
            Vec::<PathBuf>::new(),
            "{secret:?} in a file"
        );
    }
    drop(sim);
}

/// Parses journald's native datagrams: `KEY=value` lines, or `KEY\n<u64 LE length><value>\n`.
fn journal_fields(payload: &[u8]) -> std::collections::HashMap<String, String> {
    let mut out = std::collections::HashMap::new();
    let mut rest = payload;
    while !rest.is_empty() {
        let line_end = rest.iter().position(|b| *b == b'\n').unwrap_or(rest.len());
        let line = &rest[..line_end];
        if let Some(eq) = line.iter().position(|b| *b == b'=') {
            out.insert(
                String::from_utf8_lossy(&line[..eq]).into_owned(),
                String::from_utf8_lossy(&line[eq + 1..]).into_owned(),
            );
            rest = rest.get(line_end + 1..).unwrap_or(&[]);
        } else {
            let key = String::from_utf8_lossy(line).into_owned();
            let after = rest.get(line_end + 1..).unwrap_or(&[]);
            if after.len() < 8 {
                break;
            }
            let len = u64::from_le_bytes(after[..8].try_into().unwrap_or([0; 8])) as usize;
            let value = after.get(8..8 + len).unwrap_or(&[]);
            out.insert(key, String::from_utf8_lossy(value).into_owned());
            rest = after.get(8 + len + 1..).unwrap_or(&[]);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn journald_gets_native_fields_and_message_ids() {
    const SOCKET: &str = "/run/systemd/journal/socket";
    if Path::new(SOCKET).exists() || std::fs::create_dir_all("/run/systemd/journal").is_err() {
        eprintln!(
            "skipped: a real journald runs here, or /run/systemd/journal cannot be created (CI runs as root without one)"
        );
        assert!(
            std::env::var_os("ENECTIVA_REQUIRE_TOOLS").is_none() || Path::new(SOCKET).exists(),
            "cannot set up the fake journal"
        );
        return;
    }
    let journal = UnixDatagram::bind(SOCKET).expect("bind the fake journal");
    let r = rig().await;
    r.sim.set_refusing(true).await.expect("refuse");
    // systemd names the stream it gave the service as stderr; the daemon logs natively only
    // when its stderr is that stream (a file here, whose device and inode the test knows).
    let stderr_path = r.dir.path().join("stderr.log");
    let stderr_file = std::fs::File::create(&stderr_path).expect("stderr file");
    let stream = {
        use std::os::unix::fs::MetadataExt as _;
        let m = stderr_file.metadata().expect("metadata");
        format!("{}:{}", m.dev(), m.ino())
    };
    let child = Command::new(bin())
        .args(["-c", r.config.to_str().expect("utf8"), "run"])
        .env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_USEC")
        .env_remove("CREDENTIALS_DIRECTORY")
        .env("RUST_LOG", "info")
        .env("JOURNAL_STREAM", &stream)
        .stdout(Stdio::null())
        .stderr(stderr_file)
        .spawn()
        .expect("run");
    let mut entries = Vec::new();
    let mut buf = vec![0u8; 65536];
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut recovered = false;
    let mut refused_until = Some(Instant::now() + Duration::from_secs(3));
    while Instant::now() < deadline && !recovered {
        if refused_until.is_some_and(|t| Instant::now() > t) {
            r.sim.set_refusing(false).await.expect("serve");
            refused_until = None;
        }
        journal
            .set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
        if let Ok(n) = journal.recv(&mut buf) {
            let f = journal_fields(&buf[..n]);
            recovered |= f
                .get("MESSAGE_ID")
                .is_some_and(|id| id == "1c6e8b3f9a2d4c7e8f1b5a9d3e6c2f74");
            entries.push(f);
        }
    }
    signal(&child, "-TERM");
    let (code, _) = finish(child);
    let text = std::fs::read_to_string(&stderr_path).unwrap_or_default();
    // The entries of its stop are still in the socket.
    journal
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    while let Ok(n) = journal.recv(&mut buf) {
        entries.push(journal_fields(&buf[..n]));
    }

    // A JOURNAL_STREAM that is not this process's stderr (inherited by a shell started from a
    // service): text on stderr, nothing to the journal.
    let child = spawn(&r.config, &[("JOURNAL_STREAM", "8:1234")]);
    std::thread::sleep(Duration::from_millis(1500));
    signal(&child, "-TERM");
    let (foreign_code, foreign_stderr) = finish(child);
    let mut leaked = 0;
    while journal.recv(&mut buf).is_ok() {
        leaked += 1;
    }
    drop(journal);
    let _ = std::fs::remove_file(SOCKET);
    let _ = std::fs::remove_dir("/run/systemd/journal");
    assert_eq!(code, Some(0));
    assert!(
        !text.contains("meter not answering"),
        "journal entries also went to stderr:\n{text}"
    );
    assert_eq!(foreign_code, Some(0), "{foreign_stderr}");
    assert!(foreign_stderr.contains("running"), "{foreign_stderr}");
    assert_eq!(
        leaked, 0,
        "a foreign JOURNAL_STREAM still logged to the journal"
    );
    let down = entries
        .iter()
        .find(|f| {
            f.get("MESSAGE_ID")
                .is_some_and(|id| id == "7f4a1c9e2b8d4f6a9e3c7b1d5a2f8e60")
        })
        .expect("a meter-down entry with its MESSAGE_ID");
    assert_eq!(down.get("METER").map(String::as_str), Some("m"));
    assert_eq!(down.get("BUS").map(String::as_str), Some("gw"));
    assert_eq!(down.get("PRIORITY").map(String::as_str), Some("4"), "WARN");
    assert!(
        down.get("MESSAGE")
            .is_some_and(|m| m.contains("meter not answering"))
    );
    assert!(down.contains_key("ERROR"));
    assert!(recovered, "no meter-up entry");
    assert_eq!(
        entries
            .iter()
            .filter(|f| f
                .get("MESSAGE_ID")
                .is_some_and(|id| id == "7f4a1c9e2b8d4f6a9e3c7b1d5a2f8e60"))
            .count(),
        1,
        "a down meter is logged once"
    );
    assert!(
        entries
            .iter()
            .all(|f| f.values().all(|v| !v.contains(TOKEN)))
    );
}

/// The shipped unit keeps what the daemon needs from its sandbox: `adjtimex` for the clock's
/// synchronisation state (`ProtectClock=yes` or a deny list without it back would make every
/// reading "unsynchronised" and `require_sync` never poll), and a `check` before start whose
/// failure does not start a restart loop (only `run`'s own exit 2 is matched by
/// `RestartPreventExitStatus=2`). `systemd-analyze verify`/`security` run in `cross/deb.sh`.
#[test]
fn the_unit_leaves_the_daemon_what_it_needs() {
    let unit = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd/enectiva-collector.service"),
    )
    .expect("unit");
    let values = |key: &str| -> Vec<String> {
        unit.lines()
            .filter_map(|l| l.strip_prefix(&format!("{key}=")))
            .map(str::to_string)
            .collect()
    };
    assert!(values("ProtectClock").iter().all(|v| v == "no"));
    let filters = values("SystemCallFilter");
    let last_deny = filters.iter().rposition(|f| f.starts_with('~'));
    let allow_after = filters
        .iter()
        .enumerate()
        .any(|(i, f)| Some(i) > last_deny && f.split_whitespace().any(|s| s == "adjtimex"));
    assert!(
        allow_after,
        "adjtimex must be allowed after the deny list: {filters:?}"
    );
    let pre = values("ExecStartPre");
    assert!(
        pre.iter().all(|p| p.starts_with('-')) && pre.iter().any(|p| p.ends_with(" check")),
        "{pre:?}"
    );
    assert_eq!(values("RestartPreventExitStatus"), ["2"]);
}
