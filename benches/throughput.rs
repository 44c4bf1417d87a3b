//! Throughput of the queue and the sender, measured on this machine (figures go into
//! BENCHMARKS.md). Run with `cargo bench --bench throughput`. Not a test: nothing here asserts a
//! speed.
//!
//! 1. Queue commit: readings committed per second with N readings per transaction (WAL,
//!    `synchronous=FULL`), on a real file in a temporary directory. 200 per transaction is the
//!    cycle-sized line of issue 8 (20 meters × 10 values polled in one cycle).
//! 2. Sender: readings delivered per second from a prefilled queue to the stand-in API over
//!    loopback HTTP/1.1 with keep-alive, `max_in_flight` series at once.

mod common;

use std::time::{Duration, Instant};

use enectiva_collector::queue::{Queue, QueueOptions};
use enectiva_collector::reading::{Kind, Reading, Series};
use enectiva_collector::sim::api::StandIn;

fn reading(series: usize, i: usize) -> Reading {
    Reading {
        series: Series::new(Kind::Reading, format!("METER_{series:03}"), None),
        time: 1_795_000_000 + i as i64 * 60,
        value: 1000.0 + i as f64 * 0.25,
        unit: Some("kWh".into()),
        clock_synced: true,
        invalid: None,
    }
}

async fn commit_rate(per_tx: usize, total: usize) -> f64 {
    let dir = tempfile::tempdir().expect("tempdir");
    let (q, _) = Queue::open(QueueOptions {
        // The window only rate-limits transactions; measure the disk, not the window.
        commit_window: Duration::ZERO,
        max_readings: u64::MAX,
        ..QueueOptions::new(dir.path().join("queue.db"))
    })
    .expect("queue");
    let started = Instant::now();
    let mut i = 0;
    while i < total {
        let batch = (i..i + per_tx).map(|k| reading(k % 100, k / 100)).collect();
        q.commit(batch).await.expect("commit");
        i += per_tx;
    }
    let rate = total as f64 / started.elapsed().as_secs_f64();
    q.close().await.expect("close");
    rate
}

fn main() {
    // `cargo bench` passes `--bench`; ignore arguments.
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        println!("queue commit (WAL, synchronous=FULL), 100 000 readings:");
        for per_tx in [1, 10, 100, 200, 1000] {
            let total = if per_tx == 1 { 5_000 } else { 100_000 };
            let r = commit_rate(per_tx, total).await;
            println!("  {per_tx:>5} readings per transaction: {r:>10.0} readings/s");
        }
        println!(
            "sender to the stand-in API over loopback (keep-alive), 100 series × 200 readings:"
        );
        for mif in [1, 4, 8] {
            let api = StandIn::start(common::CUSTOMER, common::TOKEN)
                .await
                .expect("stand-in");
            let (r, conns) = common::sender_rate(&api, 100, 200, mif).await;
            println!("  max_in_flight {mif}: {r:>8.0} readings/s over {conns} connection(s)");
        }
    });
}
