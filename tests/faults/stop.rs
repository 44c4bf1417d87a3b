//! R11 — graceful stop: SIGTERM at random moments while the daemon polls and sends. Every stop
//! exits 0 within 10 s, leaves an empty WAL, and loses nothing: every energy value a meter
//! served is delivered in the end. (A SIGTERM in the first milliseconds, before `run` installed
//! its handlers, ends the process by the signal itself: counted and reported, not a failure.)

use std::collections::BTreeSet;
use std::os::unix::process::ExitStatusExt as _;
use std::time::{Duration, Instant};

use enectiva_collector::queue;

use crate::harness::{LONG, Rng, World, assert_order, delivered_set, key, size, wait_until};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r11_sigterm_at_random_moments_exits_0_and_loses_nothing() {
    let _serial = crate::harness::one_at_a_time().await;
    let stops = size(50, 500);
    let world = World::new(5, 10, "1s").await;
    let mut rng = Rng::new("r11");
    let started = Instant::now();
    let mut worst = Duration::ZERO;
    let mut wal_left = 0;
    let mut before_handlers = 0;
    for k in 0..stops {
        let d = world.start(&[]);
        // Half the stops come during start-up, half while polling and sending.
        if rng.chance(50) {
            assert!(d.wait_running().await, "{}", d.log_text());
        }
        tokio::time::sleep(Duration::from_millis(rng.range(0, 1500))).await;
        let (status, took, log) = d.stop_status();
        // A SIGTERM that lands in the first milliseconds, before `run` installed its handlers,
        // ends the process by the signal itself (systemd counts that as a clean stop too).
        // Nothing is logged before the handlers, so an empty log tells those stops apart.
        if status.signal() == Some(libc::SIGTERM) && log.is_empty() {
            before_handlers += 1;
        } else {
            assert_eq!(
                status.code(),
                Some(0),
                "stop {k} did not exit 0 ({status}, after {took:?}):\n{log}"
            );
        }
        assert!(took <= Duration::from_secs(10), "stop {k} took {took:?}");
        worst = worst.max(took);
        let wal = world.dir.path().join("queue.db-wal");
        if std::fs::metadata(&wal).is_ok_and(|m| m.len() > 0) {
            wal_left += 1;
        }
    }
    assert_eq!(wal_left, 0, "{wal_left} stops left a non-empty WAL");
    // A last run delivers everything that was read.
    let d = world.start(&[]);
    assert!(d.wait_running().await, "{}", d.log_text());
    let served = world.served_energy();
    let want: BTreeSet<(String, u64)> = served
        .iter()
        .flat_map(|(id, vs)| vs.iter().map(move |v| (id.clone(), *v)))
        .collect();
    let got = || -> BTreeSet<(String, u64)> {
        world
            .api
            .accepted()
            .iter()
            .map(|a| (a.import_id.clone(), key(a.value)))
            .collect()
    };
    let all = wait_until(LONG, || got().is_superset(&want)).await;
    let (code, _, log) = d.stop();
    assert_eq!(code, Some(0), "{log}");
    let missing: Vec<_> = want.difference(&got()).take(5).cloned().collect();
    assert!(
        all,
        "energy values read from a meter but never delivered: {missing:?} ({} of {})",
        want.difference(&got()).count(),
        want.len()
    );
    let acc = world.api.accepted();
    assert_order(&acc);
    let duplicates = world.duplicates();
    let st = queue::status(&world.queue_path()).expect("status");
    let c = |k: &str| st.counters.get(k).copied().unwrap_or(0);
    assert_eq!(
        c("enqueued"),
        c("delivered") + c("dead_lettered") + c("dropped") + st.pending as i64
    );
    assert_eq!(c("dropped"), 0);
    println!(
        "R11: {stops} SIGTERMs, {} exit 0 and {before_handlers} landed before the handlers (ended by the signal itself), slowest stop {:.2} s, WAL empty after {stops}/{stops}, {} energy values read and all delivered, {} values delivered in total, {duplicates} duplicates (409), {:.0} s",
        stops - before_handlers,
        worst.as_secs_f64(),
        want.len(),
        delivered_set(&acc).len(),
        started.elapsed().as_secs_f64()
    );
}
