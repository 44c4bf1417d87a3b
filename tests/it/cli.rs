//! The command line through the real binary: exit statuses, messages, `status --json`,
//! `dead` and `profiles`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use crate::common::reading;
use enectiva_collector::queue::{Queue, QueueOptions};
use enectiva_collector::reading::Kind;

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_enectiva-collector")
}

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn run(args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .env_remove("ENECTIVA_COLLECTOR_CONFIG")
        .env_remove("ENECTIVA_TOKEN")
        .env_remove("CREDENTIALS_DIRECTORY")
        .output()
        .expect("run the binary")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn every_bad_config_makes_check_exit_2_naming_the_place() {
    let dir = repo().join("tests/data/config/bad");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("bad configs")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    assert!(files.len() >= 20, "only {} bad configs", files.len());
    for f in &files {
        let first = std::fs::read_to_string(f).expect("read");
        let expect = first
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("# expect: "))
            .expect("expect line");
        let (message, place) = expect.rsplit_once(" @ ").expect("@");
        let out = run(&["-c", f.to_str().expect("utf8"), "check"]);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{}: {err}", f.display());
        assert!(
            err.contains(message),
            "{}: stderr lacks `{message}`:\n{err}",
            f.display()
        );
        let name = f.file_name().and_then(|n| n.to_str()).expect("name");
        if place.contains(':') && place.chars().next().is_some_and(|c| c.is_ascii_digit()) {
            assert!(
                err.contains(&format!("{name}:{place}")),
                "{}: stderr lacks `{name}:{place}`:\n{err}",
                f.display()
            );
        } else {
            assert!(
                err.contains(place),
                "{}: stderr lacks `{place}`:\n{err}",
                f.display()
            );
        }
    }
}

#[test]
fn example_config_passes_check() {
    let out = run(&[
        "-c",
        repo().join("config/example.toml").to_str().expect("utf8"),
        "check",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("is valid"));
    assert!(stdout.contains("request(s) per poll"));
}

#[test]
fn missing_config_file_is_exit_2_with_its_path() {
    let out = run(&["-c", "/nonexistent/enectiva.toml", "check"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("/nonexistent/enectiva.toml"));
}

#[test]
fn usage_errors_are_exit_2() {
    assert_eq!(run(&["frobnicate"]).status.code(), Some(2));
    assert_eq!(run(&["dead", "retry", "--all", "3"]).status.code(), Some(2));
}

#[test]
fn profiles_lists_and_prints() {
    let out = run(&["-c", "/nonexistent.toml", "profiles"]);
    assert_eq!(out.status.code(), Some(0));
    let s = text(&out.stdout);
    for name in [
        "eastron-sdm630",
        "eastron-sdm120",
        "eastron-sdm72",
        "abb-b23",
        "carlo-gavazzi-em24",
        "carlo-gavazzi-em340",
        "janitza-umg96rm",
        "schneider-iem3000",
        "finder-7m",
        "socomec-countis-e",
    ] {
        assert!(s.contains(name), "{name} missing from:\n{s}");
    }
    let out = run(&["-c", "/nonexistent.toml", "profiles", "eastron-sdm630"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(text(&out.stdout).contains("import_energy_total"));
    let out = run(&[
        "-c",
        "/nonexistent.toml",
        "profiles",
        "eastron-sdm630",
        "--toml",
    ]);
    assert!(text(&out.stdout).contains("[quantities]"));
    let out = run(&["-c", "/nonexistent.toml", "profiles", "no-such-meter"]);
    assert_eq!(out.status.code(), Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bounds_show_exact_counts_in_status_json() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("queue.db");
    let (q, _) = Queue::open(QueueOptions {
        max_readings: 5,
        commit_window: Duration::from_millis(10),
        ..QueueOptions::new(&path)
    })
    .expect("queue");
    let mut batch = Vec::new();
    for i in 0..4 {
        batch.push(reading(Kind::DataPoint, "P", i, i as f64));
        batch.push(reading(Kind::Reading, "R", i, i as f64));
    }
    q.commit(batch).await.expect("commit");
    // One counter going backwards, kept as a dead letter.
    q.commit(vec![reading(Kind::Reading, "R", 10, 1.0)])
        .await
        .expect("commit");
    q.close().await.expect("close");
    let out = run(&["status", "--json", "--queue", path.to_str().expect("utf8")]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["pending"], 5);
    assert_eq!(v["counters"]["enqueued"], 9);
    assert_eq!(v["counters"]["dropped"], 3);
    assert_eq!(v["counters"]["dead_lettered"], 1);
    assert_eq!(v["dead_letters"], 1);
    // The three oldest data points went; the newest one and every reading stay.
    let series = v["series"].as_array().expect("series");
    let pending = |id: &str| {
        series
            .iter()
            .find(|s| s["import_id"] == id)
            .map(|s| s["pending"].clone())
    };
    assert_eq!(pending("P"), Some(serde_json::json!(1)));
    assert_eq!(pending("R"), Some(serde_json::json!(4)));
    // Human form too.
    let out = run(&["status", "--queue", path.to_str().expect("utf8")]);
    assert!(
        text(&out.stdout).contains("dropped 3"),
        "{}",
        text(&out.stdout)
    );
    // dead list / retry / purge
    let out = run(&["dead", "list", "--queue", path.to_str().expect("utf8")]);
    let listed = text(&out.stdout);
    assert!(listed.contains("went backwards from 3 to 1"), "{listed}");
    let id = listed.split_whitespace().next().expect("id").to_string();
    let out = run(&[
        "dead",
        "retry",
        &id,
        "--queue",
        path.to_str().expect("utf8"),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let out = run(&[
        "dead",
        "purge",
        "12345",
        "--queue",
        path.to_str().expect("utf8"),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("12345"));
    let out = run(&["status", "--json", "--queue", path.to_str().expect("utf8")]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(
        (v["pending"].clone(), v["dead_letters"].clone()),
        (serde_json::json!(6), serde_json::json!(0))
    );
}

#[test]
fn status_without_a_queue_says_so() {
    let out = run(&["status", "--queue", "/nonexistent/queue.db"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("no queue file"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_online_asks_latest_for_every_series() {
    use crate::common::CUSTOMER;
    use enectiva_collector::sender::Sender;
    use enectiva_collector::sim::api::StandIn;
    let api = StandIn::start(CUSTOMER, "online-token")
        .await
        .expect("stand-in");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[api]
base_url = "{}"
customer_id = "{CUSTOMER}"

[[modbus_tcp]]
name = "tcp"
address = "127.0.0.1:1502"
  [[modbus_tcp.meter]]
  name = "m1"
  unit_id = 1
  channels = [
    {{ register = 0, type = "f32", import_id = "SENT_BEFORE", unit = "kWh" }},
    {{ register = 2, type = "f32", import_id = "NEVER_SENT", unit = "kWh", kind = "data_point" }},
  ]
"#,
            api.base_url()
        ),
    )
    .expect("config");
    // One reading stored in the stand-in through the real sender.
    std::fs::write(dir.path().join("token"), "online-token").expect("token");
    let (q, _) = Queue::open(QueueOptions::new(dir.path().join("queue.db"))).expect("queue");
    q.commit(vec![reading(
        Kind::Reading,
        "SENT_BEFORE",
        1_795_000_000,
        42.5,
    )])
    .await
    .expect("commit");
    let s = crate::common::sender_settings(api.base_url(), &dir.path().join("token"));
    let stop = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(Sender::new(s, q.clone()).expect("sender").run(stop.clone()));
    assert!(api.wait_accepted(1, Duration::from_secs(30)).await);
    stop.cancel();
    task.await.expect("join").expect("sender");
    q.close().await.expect("close");

    let cfg = config.to_str().expect("utf8").to_string();
    let run_with = |token: &'static str| {
        let cfg = cfg.clone();
        tokio::task::spawn_blocking(move || {
            Command::new(bin())
                .args(["-c", &cfg, "check", "--online"])
                .env_remove("CREDENTIALS_DIRECTORY")
                .env("ENECTIVA_TOKEN", token)
                .output()
                .expect("run")
        })
    };
    let out = run_with("online-token").await.expect("join");
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
    assert!(
        stdout.contains("SENT_BEFORE [kWh]: ok, latest 42.5 at 2026-11-18T11:06:40Z"),
        "{stdout}"
    );
    assert!(
        stdout.contains("NEVER_SENT [kWh]: ok, nothing stored yet"),
        "{stdout}"
    );
    let out = run_with("wrong-token").await.expect("join");
    assert_eq!(out.status.code(), Some(1));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("FAILED: 401") && stdout.contains("check the token"),
        "{stdout}"
    );
    assert!(!stdout.contains("wrong-token") && !text(&out.stderr).contains("wrong-token"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_prints_every_channel_and_exceptions_by_name() {
    use enectiva_collector::modbus::Table;
    use enectiva_collector::sim::modbus::{SimMeter, SimModbus};

    let sim = SimModbus::start(vec![SimMeter::sdm630(1), SimMeter::sdm630(2)])
        .await
        .expect("sim");
    sim.set_f32(1, Table::Input, 0x0034, 2301.5);
    sim.exception(
        2,
        Table::Input,
        0,
        200,
        tokio_modbus::ExceptionCode::ServerDeviceBusy,
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[api]
customer_id = "0c7f4a52-2d1e-4e59-9b0a-6d1f3c2b8e11"
[queue]
path = "{}"
[[modbus_tcp]]
name = "gw"
address = "{}"
  [[modbus_tcp.meter]]
  name = "good"
  unit_id = 1
  profile = "eastron-sdm630"
  channels = [
    {{ quantity = "import_energy_total", import_id = "E", unit = "kWh" }},
    {{ quantity = "active_power_total", import_id = "P", unit = "kW", kind = "data_point" }},
  ]
  [[modbus_tcp.meter]]
  name = "busy"
  unit_id = 2
  profile = "eastron-sdm630"
  channels = [ {{ quantity = "voltage_l1", import_id = "U", kind = "data_point" }} ]
"#,
            dir.path().join("queue.db").display(),
            sim.addr()
        ),
    )
    .expect("config");
    let cfg = config.to_str().expect("utf8").to_string();
    let out = tokio::task::spawn_blocking(move || run(&["-c", &cfg, "read"]))
        .await
        .expect("join");
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "one meter failed: {stdout}");
    assert!(
        stdout.contains("import_energy_total") && stdout.contains("1000 kWh"),
        "{stdout}"
    );
    assert!(
        stdout.contains("2.3015 kW") && stdout.contains("raw 2301.5 W"),
        "{stdout}"
    );
    assert!(
        stdout.contains("busy") && stdout.contains("server device busy"),
        "{stdout}"
    );
    // Nothing was queued or sent by `read`.
    assert!(!dir.path().join("queue.db").exists());
    let cfg = config.to_str().expect("utf8").to_string();
    let out = tokio::task::spawn_blocking(move || run(&["-c", &cfg, "read", "good", "--json"]))
        .await
        .expect("join");
    assert_eq!(out.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v[0]["meter"], "good");
    assert_eq!(v[0]["channels"][1]["value"], 2.3015);
    assert_eq!(
        v[0]["channels"][1]["words"],
        serde_json::json!([0x450F, 0xD800])
    );
    let cfg = config.to_str().expect("utf8").to_string();
    let out = tokio::task::spawn_blocking(move || run(&["-c", &cfg, "read", "nosuch"]))
        .await
        .expect("join");
    assert_eq!(out.status.code(), Some(2));
}
