//! Sender throughput side by side (issue 8, item 3): in one run, against the same stand-in API
//! on loopback, (a) the daemon's sender draining a prefilled queue with keep-alive and
//! `max_in_flight` 1/4/8, (b) a shell loop starting one `curl` per reading, as a shell script
//! would, and (c) a Python `requests.Session` keep-alive loop (the baseline's HTTP client, in
//! the same venv). Every request carries the same headers and the same body shape. Readings/s
//! and ratios are printed; nothing is asserted.
//!
//! `cargo bench --bench sender_compare`; knobs SENDER_SERIES × SENDER_PER_SERIES (100 × 200)
//! for the daemon, SENDER_CURL_N (500), SENDER_PY_N (2000).

mod common;

use std::process::Command;
use std::time::Instant;

use common::{CUSTOMER, TOKEN, env_num};
use enectiva_collector::sim::api::StandIn;

const MEDIA: &str = "application/vnd.api+json";
const UA: &str = "enectiva-collector/0-bench-loop";

/// One `curl` process per reading from a bash loop; readings/s over the loop's wall time.
fn curl_rate(api: &StandIn, n: u64) -> f64 {
    let url = format!("{}/import/readings/{CUSTOMER}", api.base_url());
    let script = format!(
        r#"for i in $(seq 1 {n}); do
  curl -sS -o /dev/null -X POST -H 'Authorization: Bearer {TOKEN}' -H 'Content-Type: {MEDIA}' \
    -H 'Accept: {MEDIA}' -A '{UA}' \
    --data-binary "{{\"data\":{{\"import_id\":\"CURL_$i\",\"time\":\"2026-11-26T10:15:00Z\",\"state\":1000.25,\"unit\":\"kWh\",\"sender\":\"bench\"}}}}" \
    '{url}' || exit 1
done"#
    );
    let before = api.accepted_count();
    let started = Instant::now();
    let ok = Command::new("bash")
        .args(["-c", &script])
        .status()
        .is_ok_and(|s| s.success());
    let elapsed = started.elapsed().as_secs_f64();
    let accepted = api.accepted_count() - before;
    if !ok || accepted as u64 != n {
        eprintln!("curl loop: exit ok {ok}, {accepted} of {n} accepted");
    }
    accepted as f64 / elapsed
}

/// A `requests.Session` loop (keep-alive); the rate over the loop as timed inside Python.
fn python_rate(api: &StandIn, n: u64) -> f64 {
    let py = common::python();
    let url = format!("{}/import/readings/{CUSTOMER}", api.base_url());
    let script = format!(
        r#"import json, time, requests
s = requests.Session()
h = {{"Authorization": "Bearer {TOKEN}", "Content-Type": "{MEDIA}", "Accept": "{MEDIA}", "User-Agent": "{UA}"}}
t = time.monotonic()
for i in range({n}):
    body = json.dumps({{"data": {{"import_id": f"PY_{{i}}", "time": "2026-11-26T10:15:00Z", "state": 1000.25, "unit": "kWh", "sender": "bench"}}}})
    r = s.post("{url}", data=body, headers=h, timeout=10)
    if not (200 <= r.status_code < 300):
        raise SystemExit(f"status {{r.status_code}}: {{r.text}}")
print(time.monotonic() - t)
"#
    );
    let before = api.accepted_count();
    let out = Command::new(py)
        .args(["-c", &script])
        .output()
        .expect("python");
    let accepted = api.accepted_count() - before;
    let elapsed: f64 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(f64::NAN);
    if !out.status.success() || accepted as u64 != n {
        eprintln!(
            "python loop: {accepted} of {n} accepted; {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    accepted as f64 / elapsed
}

fn main() {
    let series = env_num("SENDER_SERIES", 100) as usize;
    let per_series = env_num("SENDER_PER_SERIES", 200) as usize;
    let curl_n = env_num("SENDER_CURL_N", 500);
    let py_n = env_num("SENDER_PY_N", 2000);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async move {
        let api = StandIn::start(CUSTOMER, TOKEN).await.expect("stand-in");
        println!("machine: {}", common::machine());
        println!("one stand-in API on loopback, one POST per reading, answered 201 after full validation");
        println!("(a) the daemon's sender, {series} series × {per_series} readings prefilled, keep-alive:");
        let mut best = 0.0f64;
        for mif in [1, 4, 8] {
            let (r, conns) = common::sender_rate(&api, series, per_series, mif).await;
            best = best.max(r);
            println!("  max_in_flight {mif}: {r:>8.0} readings/s over {conns} connection(s)");
        }
        let api2 = api.clone();
        let curl = tokio::task::spawn_blocking(move || curl_rate(&api2, curl_n)).await.expect("curl");
        println!("(b) bash loop, one `curl` process per reading, {curl_n} readings: {curl:>8.0} readings/s");
        let api3 = api.clone();
        let python = tokio::task::spawn_blocking(move || python_rate(&api3, py_n)).await.expect("python");
        println!("(c) Python requests.Session keep-alive loop, {py_n} readings:   {python:>8.0} readings/s");
        println!("ratios (best max_in_flight):");
        println!("  daemon / curl loop       {:.1} ×  (target ≥ 10 ×)", best / curl);
        println!("  daemon / Python session  {:.1} ×  (target ≥ 1 ×)", best / python);
        api.stop().await;
    });
}
