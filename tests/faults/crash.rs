//! R1 — process crash: `kill -9` at random moments while the daemon polls 100 readings/s and
//! sends; restart each time. Every reading ever seen in the queue is delivered, nothing is
//! delivered that was never read, `quick_check` is ok after every kill, duplicates stay within
//! what was in flight.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use enectiva_collector::queue;

use crate::harness::{
    LONG, Rng, World, assert_order, delivered_set, key, queue_rows, quick_check, size, wait_until,
};

/// Requests on the wire at once (`max_in_flight` default). Acknowledgements not yet in a
/// committed removal group survive a kill in the queue's acknowledgement journal, so only
/// these can be sent twice.
const MAX_IN_FLIGHT: u64 = 4;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r1_kill_9_at_random_moments_loses_nothing() {
    let _serial = crate::harness::one_at_a_time().await;
    let kills = size(20, 200);
    let world = World::new(10, 10, "1s").await;
    let mut rng = Rng::new("r1");
    let mut seen: BTreeSet<(String, i64, u64)> = BTreeSet::new();
    let started = Instant::now();
    for k in 0..kills {
        let d = world.start(&[]);
        tokio::time::sleep(Duration::from_millis(rng.range(300, 2500))).await;
        d.kill9();
        assert_eq!(quick_check(&world.queue_path()), "ok", "after kill {k}");
        for (id, t, v) in queue_rows(&world.queue_path()) {
            seen.insert((id, t, key(v)));
        }
    }
    // The last run drains everything.
    let d = world.start(&[]);
    let qp = world.queue_path();
    assert!(d.wait_running().await, "{}", d.log_text());
    let drained = wait_until(LONG, || {
        delivered_set(&world.api.accepted()).is_superset(&seen)
    })
    .await;
    let (code, _, log) = d.stop();
    assert!(
        drained,
        "the readings seen in the queue were not all delivered:\n{log}"
    );
    assert_eq!(code, Some(0), "{log}");
    let acc = world.api.accepted();
    let delivered = delivered_set(&acc);
    let lost: Vec<_> = seen.difference(&delivered).take(5).collect();
    assert!(
        lost.is_empty(),
        "readings seen in the queue but never delivered: {lost:?}"
    );
    // Nothing invented: every delivered energy is a value its register held when read.
    world.assert_nothing_invented(&acc);
    assert_order(&acc);
    let duplicates = world.duplicates() as u64;
    let elapsed = started.elapsed().as_secs_f64();
    let bound = kills as u64 * MAX_IN_FLIGHT;
    assert!(
        duplicates <= bound,
        "{duplicates} duplicates after {kills} kills (bound {bound})"
    );
    let st = queue::status(&qp).expect("status");
    let c = |k: &str| st.counters.get(k).copied().unwrap_or(0);
    assert_eq!(
        c("enqueued"),
        c("delivered") + c("dead_lettered") + c("dropped")
    );
    println!(
        "R1: {kills} kill -9, {} readings seen in the queue, {} delivered, {duplicates} duplicates (409) = {:.2} per kill (bound {:.0} per kill), quick_check ok {kills}/{kills}, {:.0} s",
        seen.len(),
        delivered.len(),
        duplicates as f64 / kills as f64,
        bound as f64 / kills as f64,
        elapsed
    );
}
