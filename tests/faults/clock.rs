//! R15 — clock steps: the daemon runs under libfaketime (`FAKETIME_DONT_FAKE_MONOTONIC=1`, so
//! tokio's timers keep real time) and its wall clock jumps back an hour and then forward a day
//! while the API is down, then a `Retry-After` HTTP date from the API's (true) clock arrives.
//! No meter stalls (poll gaps stay near the interval in real time), no burst (at most one
//! early poll per jump and meter), delivery resumes within the backoff cap, nothing is lost and
//! every series arrives in the order it was read (the energies grow with every read).

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use enectiva_collector::sim::api::{Answer, Mode};

use crate::harness::{LONG, World, import_id, key, wait_until};

const LIBFAKETIME: &[&str] = &[
    "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1",
    "/usr/lib/aarch64-linux-gnu/faketime/libfaketimeMT.so.1",
    "/usr/lib/faketime/libfaketimeMT.so.1",
];

fn set_offset(file: &Path, spec: &str) {
    let tmp = file.with_extension("tmp");
    std::fs::write(&tmp, format!("{spec}\n")).expect("faketime file");
    std::fs::rename(&tmp, file).expect("faketime file");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r15_wall_clock_steps_neither_stall_nor_burst_nor_reorder() {
    let _serial = crate::harness::one_at_a_time().await;
    let Some(lib) = LIBFAKETIME.iter().find(|p| Path::new(p).exists()) else {
        assert!(
            std::env::var_os("ENECTIVA_REQUIRE_TOOLS").is_none(),
            "libfaketime is needed for R15: apt-get install faketime"
        );
        eprintln!(
            "skipped R15: libfaketime is not installed (apt-get install faketime; CI installs it)"
        );
        return;
    };
    let meters = 3;
    let world = World::with_head(meters, 10, "1s", "max_backoff = \"2s\"").await;
    let offset = world.dir.path().join("faketime");
    set_offset(&offset, "+0");
    let offset_s = offset.to_str().expect("utf8").to_string();
    let d = world.start(&[
        ("LD_PRELOAD", lib),
        ("FAKETIME_TIMESTAMP_FILE", &offset_s),
        ("FAKETIME_CACHE_DURATION", "1"),
        ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
    ]);
    assert!(d.wait_running().await, "{}", d.log_text());
    let api = world.api.clone();
    let step = Duration::from_secs(crate::harness::size(4, 30) as u64);
    tokio::time::sleep(Duration::from_secs(3)).await;
    api.set_mode(Mode::Down).await.expect("down");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let back_at = Instant::now();
    set_offset(&offset, "-1h");
    tokio::time::sleep(step).await;
    let forward_at = Instant::now();
    set_offset(&offset, "+1d");
    tokio::time::sleep(step).await;
    // The API returns and asks for a pause until a date on its own (true) clock, a day behind
    // the gateway's: the next request must wait for that date, not come at once. The 429
    // answers the first request after the outage (within the 2 s backoff cap), so the date is
    // 6 s ahead to leave a wait the daemon could get wrong.
    let until = SystemTime::now() + Duration::from_secs(6);
    let date = httpdate::fmt_http_date(until);
    // The date has whole seconds: the earliest allowed request is at the second it names.
    let date_floor = Instant::now() + until.duration_since(SystemTime::now()).unwrap_or_default()
        - Duration::from_nanos(u64::from(
            until
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0),
        ));
    api.script([Answer::StatusRetryAfter(429, date)]);
    api.set_mode(Mode::Normal).await.expect("up");
    let up_at = Instant::now();
    let n = api.accepted_count();
    let resumed = api.wait_accepted(n + 1, Duration::from_secs(15)).await;
    let resumed_after = up_at.elapsed();
    assert!(
        resumed,
        "no delivery after the API returned:\n{}",
        d.log_text()
    );
    // Everything read is delivered.
    let served = world.served_energy();
    let want: BTreeSet<(String, u64)> = served
        .iter()
        .flat_map(|(id, vs)| vs.iter().map(move |v| (id.clone(), *v)))
        .collect();
    let got = || -> BTreeSet<(String, u64)> {
        api.accepted()
            .iter()
            .map(|a| (a.import_id.clone(), key(a.value)))
            .collect()
    };
    let all = wait_until(LONG, || got().is_superset(&want)).await;
    let (code, _, log) = d.stop();
    assert!(
        all,
        "read but not delivered: {:?}",
        want.difference(&got()).take(5).collect::<Vec<_>>()
    );
    assert_eq!(code, Some(0), "{log}");
    assert!(
        log.contains("clock stepped back"),
        "the step back was not logged:\n{log}"
    );

    // The 429's date was honoured on the API's clock: no request before it (50 ms for
    // converting the wall-clock date to the monotonic clock of the attempts), and none much
    // later (no stall).
    let attempts = api.attempts();
    let i429 = attempts
        .iter()
        .position(|a| a.status == Some(429))
        .expect("429");
    let next = attempts[i429 + 1..]
        .iter()
        .find(|a| a.at.duration_since(attempts[i429].at) >= Duration::from_millis(100))
        .expect("a request after the 429");
    let waited = next.at.duration_since(attempts[i429].at);
    let meant = date_floor.saturating_duration_since(attempts[i429].at);
    assert!(
        meant >= Duration::from_secs(1),
        "the 429 was answered too late to judge the wait ({meant:?} before its date)"
    );
    assert!(
        next.at + Duration::from_millis(50) >= date_floor,
        "a request came {:?} before the Retry-After date (waited {waited:?} of {meant:?})",
        date_floor.duration_since(next.at)
    );
    assert!(
        waited <= meant + Duration::from_secs(3),
        "waited {waited:?} for a Retry-After date {meant:?} ahead on the API's clock"
    );

    // Order: in every energy series the values grow in delivery order (the read order).
    let acc = api.accepted();
    for m in 0..meters {
        for q in ["import_energy_total", "total_energy"] {
            let id = import_id(m, q);
            let v: Vec<f64> = acc
                .iter()
                .filter(|a| a.import_id == id)
                .map(|a| a.value)
                .collect();
            assert!(
                v.windows(2).all(|w| w[0] < w[1]),
                "{id} delivered out of read order"
            );
        }
    }
    // Polling: no stall, no burst, measured in real time at the meters.
    let (mut worst_gap, mut early) = (Duration::ZERO, 0);
    for sim in &world.meters {
        let polls: Vec<Instant> = sim
            .served()
            .iter()
            .filter(|s| s.start == 0)
            .map(|s| s.at)
            .collect();
        for w in polls.windows(2) {
            let gap = w[1].duration_since(w[0]);
            worst_gap = worst_gap.max(gap);
            if gap < Duration::from_millis(500) {
                early += 1;
            }
        }
    }
    assert!(
        worst_gap <= Duration::from_millis(2500),
        "a meter was not polled for {worst_gap:?}"
    );
    assert!(
        early <= 2 * meters,
        "{early} early polls for 2 jumps × {meters} meters"
    );
    let times: Vec<i64> = acc.iter().map(|a| crate::harness::epoch(&a.time)).collect();
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let behind = times.iter().filter(|t| now - **t > 1800).count();
    let ahead = times.iter().filter(|t| **t - now > 43_200).count();
    println!(
        "R15: clock -1 h, {:.0} s later +1 d, both during an API outage: worst poll gap {:.2} s (interval 1 s), {early} early polls, \
         {behind} values stamped on the hour-behind clock and {ahead} on the day-ahead clock, all {} read values delivered in read order, \
         delivery resumed {:.2} s after the API returned, a Retry-After date {:.2} s ahead on the API's clock waited {:.2} s",
        forward_at.duration_since(back_at).as_secs_f64(),
        worst_gap.as_secs_f64(),
        want.len(),
        resumed_after.as_secs_f64(),
        meant.as_secs_f64(),
        waited.as_secs_f64()
    );
}
