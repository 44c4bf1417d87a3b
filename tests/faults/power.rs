//! R2 — power cut (simulated): the daemon runs with the `shim/powercut.c` LD_PRELOAD shim,
//! which copies each queue file to a snapshot whenever an fsync/fdatasync of it succeeds. A
//! "cut" is `kill -9` at a random moment while 10 meters × 10 channels are polled every second
//! and sent (some runs with the API down, so the next one drains a backlog), followed by
//! putting every file of the state directory back to its last synced content: a file with a
//! snapshot is replaced by it, one without (never synced) is deleted, and so is the `-shm`.
//! After every cut the restored queue must pass `quick_check`, the daemon must start on it, and
//! its `readings` sequence must reach the highest id the daemon had logged as committed; every
//! reading seen in a restored queue is delivered in the end, the distinct readings delivered
//! are exactly those that got a durable id (the final sequence) and the counters balance. The
//! negative control runs the same cuts with `synchronous=NORMAL` and must catch a loss, which
//! proves the harness can see one.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use enectiva_collector::events;
use enectiva_collector::queue;
use enectiva_collector::sim::api::Mode;

use crate::harness::{
    LONG, Rng, World, assert_order, build_shim, committed_ids, delivered_set, key, long_mode,
    move_queue, queue_rows, quick_check, readings_sequence, size, wait_until,
};

/// The chance that a file keeps its unsynced writes at a cut (all of them, as if written back
/// just before); otherwise it is back at its last sync.
const FLUSHED_PERCENT: u64 = 25;

/// The chance that a cut comes right after SIGTERM, during the stop's commit and checkpoint
/// (`wal_checkpoint(TRUNCATE)`), which a CI-sized run otherwise never reaches (SQLite's
/// automatic checkpoint comes every 1000 WAL pages, about a minute of this load).
const STOPPING_PERCENT: u64 = 30;

/// What the cuts of one series found.
#[derive(Debug, Default)]
struct Cuts {
    cuts: usize,
    /// Every (import id, time, value key) seen in a restored queue.
    seen: BTreeSet<(String, i64, u64)>,
    /// Cuts after which a reading reported committed was missing: (cut, reported, restored).
    losses: Vec<(usize, i64, i64)>,
    /// Highest reading id reported committed over all runs.
    reported: i64,
    /// Restored `readings` sequence after the last cut.
    restored: i64,
    /// Runs whose queue file was set aside as corrupt at start.
    set_aside: usize,
    /// Cuts that came while the daemon was stopping.
    while_stopping: usize,
    /// Files that kept their unsynced content at a cut.
    flushed: usize,
    /// Cuts at which the shim held a snapshot of the WAL (proof that it is preloaded; at the
    /// last cut there may be none: a clean stop deletes the WAL and drops its snapshot).
    wal_snapshots: usize,
    /// Runs during which the main database file was synced (a checkpoint), so the cut came
    /// after one.
    checkpointed: usize,
}

/// When the snapshot of the main database file last changed.
fn db_synced_at(state: &Path) -> Option<std::time::SystemTime> {
    std::fs::metadata(state.join(".snapshots").join("queue.db"))
        .and_then(|m| m.modified())
        .ok()
}

/// Puts the state directory back to what the disk may hold after a power cut, the last
/// successful sync of each file: a file with a snapshot is replaced by it, one without is
/// deleted, and so is the `-shm` (SQLite rebuilds it). With `flushed_percent`, each file
/// instead keeps its current content with that chance (the kernel happened to write its
/// unsynced data back before the cut, which is just as possible; for a deleted file, the
/// deletion reached the disk). Returns how many files kept their unsynced state.
fn cut_power(state: &Path, rng: &mut Rng, flushed_percent: u64) -> usize {
    let snaps = state.join(".snapshots");
    let mut names: BTreeSet<String> = BTreeSet::new();
    for dir in [state, snaps.as_path()] {
        if let Ok(rd) = std::fs::read_dir(dir) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if !name.starts_with('.') && e.file_type().is_ok_and(|t| t.is_file()) {
                    names.insert(name);
                }
            }
        }
    }
    let mut flushed = 0;
    for name in names {
        let file = state.join(&name);
        let snap = snaps.join(&name);
        if name.ends_with("-shm") {
            let _ = std::fs::remove_file(&file);
            let _ = std::fs::remove_file(&snap);
        } else if rng.chance(flushed_percent) {
            // Everything written (or the deletion) reached the disk: that is now its state.
            if file.exists() {
                std::fs::copy(&file, &snap).expect("flushed file");
            } else {
                let _ = std::fs::remove_file(&snap);
            }
            flushed += 1;
        } else if snap.exists() {
            let tmp = state.join(format!(".restore-{name}"));
            std::fs::copy(&snap, &tmp).expect("copy snapshot");
            std::fs::rename(&tmp, &file).expect("restore snapshot");
        } else {
            let _ = std::fs::remove_file(&file);
        }
    }
    flushed
}

/// A copy of the restored queue files in `to` (so checking them changes nothing the daemon
/// will see: SQLite would recover the WAL or roll back a hot journal in place), returning the
/// copy's queue path. Every `queue.db*` file but the `-shm` goes along.
fn copy_queue(state: &Path, to: &Path) -> PathBuf {
    let _ = std::fs::remove_dir_all(to);
    std::fs::create_dir_all(to).expect("check dir");
    if let Ok(rd) = std::fs::read_dir(state) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with("queue.db")
                && !name.ends_with("-shm")
                && e.file_type().is_ok_and(|t| t.is_file())
            {
                std::fs::copy(e.path(), to.join(&name)).expect("copy queue");
            }
        }
    }
    to.join("queue.db")
}

/// `cuts` power cuts (at most; with `stop_at_loss` the series ends at the first loss).
async fn run_cuts(
    world: &World,
    state: &Path,
    env: &[(&str, &str)],
    cuts: usize,
    stop_at_loss: bool,
    rng: &mut Rng,
) -> Cuts {
    let mut out = Cuts::default();
    let check = world.dir.path().join("check");
    // Durable before the first cut (a clean stop's checkpoint), so never to be lost.
    let mut last_seq = readings_sequence(&copy_queue(state, &check));
    for k in 0..cuts {
        // Some runs with the API down, so the next run drains a backlog while it is cut.
        let mode = if rng.chance(30) {
            Mode::Down
        } else {
            Mode::Normal
        };
        world.api.set_mode(mode).await.expect("api mode");
        let d = world.start(env);
        let running = d.wait_running().await;
        let synced_before = db_synced_at(state);
        let log = d.log_text();
        assert!(running, "cut {k}: the daemon did not start:\n{log}");
        if log.contains(events::QUEUE_SET_ASIDE) {
            out.set_aside += 1;
        }
        tokio::time::sleep(Duration::from_millis(rng.range(300, 3000))).await;
        let log_path = d.log.clone();
        if rng.chance(STOPPING_PERCENT) {
            // The cut hits a stopping daemon: its last commit and its checkpoint.
            d.signal("-TERM");
            tokio::time::sleep(Duration::from_millis(rng.range(0, 40))).await;
            out.while_stopping += 1;
        }
        d.kill9();
        if state.join(".snapshots").join("queue.db-wal").exists() {
            out.wal_snapshots += 1;
        }
        if db_synced_at(state) != synced_before {
            out.checkpointed += 1;
        }
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        let reported = committed_ids(&log).into_iter().max().unwrap_or(0);
        out.reported = out.reported.max(reported);
        out.flushed += cut_power(state, rng, FLUSHED_PERCENT);
        let copy = copy_queue(state, &check);
        let qc = quick_check(&copy);
        assert_eq!(qc, "ok", "cut {k}: quick_check of the restored queue");
        let seq = readings_sequence(&copy);
        for (id, t, v) in queue_rows(&copy) {
            out.seen.insert((id, t, key(v)));
        }
        out.cuts += 1;
        out.restored = seq;
        if reported > seq {
            out.losses.push((k, reported, seq));
            if stop_at_loss {
                break;
            }
        } else if seq < last_seq {
            // Ids reported in an earlier run went missing now.
            out.losses.push((k, last_seq, seq));
            if stop_at_loss {
                break;
            }
        }
        last_seq = seq;
    }
    world.api.set_mode(Mode::Normal).await.expect("api up");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r2_power_cuts_lose_no_committed_reading() {
    let _serial = crate::harness::one_at_a_time().await;
    let started = Instant::now();
    let cuts = size(20, 200);
    let mut rng = Rng::new("r2");
    let world = World::with_head(10, 10, "1s", "max_backoff = \"2s\"").await;
    let state = world.dir.path().join("state");
    std::fs::create_dir_all(&state).expect("state dir");
    let state = state.canonicalize().expect("canonical state dir");
    let qp = move_queue(&world, &state);
    let shim = build_shim("powercut", world.dir.path());
    let shim_s = shim.to_str().expect("utf8").to_string();
    let state_s = state.to_str().expect("utf8").to_string();
    let env = [
        ("LD_PRELOAD", shim_s.as_str()),
        ("POWERCUT_DIR", state_s.as_str()),
        ("RUST_LOG", "info,enectiva_collector::queue=debug"),
    ];

    let r = run_cuts(&world, &state, &env, cuts, false, &mut rng).await;
    assert!(
        r.wal_snapshots > 0,
        "the shim never took a snapshot of the WAL: is it preloaded?"
    );
    assert!(r.reported > 0, "no commit was ever reported");
    assert!(
        r.losses.is_empty(),
        "readings reported committed were lost in a power cut (cut, reported max_id, restored sequence): {:?}",
        r.losses
    );
    assert_eq!(r.set_aside, 0, "a restored queue was set aside as corrupt");

    // The last run drains everything seen in a restored queue.
    let d = world.start(&env);
    assert!(d.wait_running().await, "{}", d.log_text());
    let drained = wait_until(LONG, || {
        delivered_set(&world.api.accepted()).is_superset(&r.seen)
    })
    .await;
    for sim in &world.meters {
        sim.set_silent(1, true);
    }
    let empty = wait_until(LONG, || queue::status(&qp).is_ok_and(|s| s.pending == 0)).await;
    let (code, _, log) = d.stop();
    assert!(
        drained,
        "readings seen in a restored queue were not all delivered:\n{log}"
    );
    assert!(empty, "the queue did not drain:\n{log}");
    assert_eq!(code, Some(0), "{log}");
    assert!(!log.contains(events::QUEUE_SET_ASIDE), "{log}");

    let acc = world.api.accepted();
    let delivered = delivered_set(&acc);
    world.assert_nothing_invented(&acc);
    assert_order(&acc);
    let st = queue::status(&qp).expect("status");
    let c = |k: &str| st.counters.get(k).copied().unwrap_or(0);
    assert_eq!(st.pending, 0);
    assert_eq!(
        c("enqueued"),
        c("delivered") + c("dead_lettered") + c("dropped"),
        "counters after the drain: {:?}",
        st.counters
    );
    // Every id the queue ever made durable is one reading, delivered: ids of a transaction lost
    // in a cut (never reported, never visible to the sender) are reused, so the final sequence
    // counts exactly the readings that reached the disk, and none is missing at the API.
    let durable = readings_sequence(&qp);
    assert_eq!(
        delivered.len() as i64,
        durable,
        "distinct readings delivered != readings that reached a durable id; counters {:?}",
        st.counters
    );
    assert_eq!(c("delivered"), durable, "counters {:?}", st.counters);
    let duplicates = world.duplicates();
    let positive_s = started.elapsed().as_secs_f64();

    // Negative control: the same cuts with synchronous=NORMAL must show a loss.
    let control_started = Instant::now();
    let control_cuts = size(20, 30);
    let cworld = World::with_head(10, 10, "1s", "max_backoff = \"2s\"").await;
    let cstate = cworld.dir.path().join("state");
    std::fs::create_dir_all(&cstate).expect("state dir");
    let cstate = cstate.canonicalize().expect("canonical state dir");
    let cqp = move_queue(&cworld, &cstate);
    let cstate_s = cstate.to_str().expect("utf8").to_string();
    let cenv = [
        ("LD_PRELOAD", shim_s.as_str()),
        ("POWERCUT_DIR", cstate_s.as_str()),
        ("RUST_LOG", "info,enectiva_collector::queue=debug"),
        ("ENECTIVA_TEST_QUEUE", "sync=normal"),
    ];
    // A durable prefix first (synchronous=FULL, clean stop), so the control's losses are of
    // readings committed on top of a live queue, not of a queue that never reached the disk.
    let d = cworld.start(&cenv[..3]);
    assert!(d.wait_running().await, "{}", d.log_text());
    assert!(
        wait_until(LONG, || committed_ids(&d.log_text()).len() >= 3).await,
        "{}",
        d.log_text()
    );
    let (code, _, log) = d.stop();
    assert_eq!(code, Some(0), "{log}");
    let prefix = readings_sequence(&cqp);
    let ctl = run_cuts(
        &cworld,
        &cstate,
        &cenv,
        control_cuts,
        !long_mode(),
        &mut rng,
    )
    .await;
    let first = ctl.losses.first().copied();
    assert!(
        first.is_some(),
        "the negative control (synchronous=NORMAL) lost nothing in {} cuts: the harness cannot detect loss",
        ctl.cuts
    );
    let (at, rep, got) = first.unwrap_or_default();

    println!(
        "R2: {} power cuts (kill -9, unsynced data dropped), {} readings reported committed, {} lost (restored sequence {} after the last cut); quick_check ok {}/{}, 0 start-up failures, 0 set aside; {} cuts while stopping, {} after a checkpoint, {} files kept their unsynced state; {} readings seen in restored queues all delivered, {} readings made durable = {} distinct delivered ({} re-sent, 409); counters balance; {:.0} s. Control (synchronous=NORMAL, on a durable prefix of {prefix}): {} lost of {rep} reported committed at cut {} of {}{}; {:.0} s",
        r.cuts,
        r.reported,
        r.losses.iter().map(|(_, rep, got)| rep - got).sum::<i64>(),
        r.restored,
        r.cuts,
        r.cuts,
        r.while_stopping,
        r.checkpointed,
        r.flushed,
        r.seen.len(),
        durable,
        delivered.len(),
        duplicates,
        positive_s,
        rep - got,
        at + 1,
        ctl.cuts,
        if long_mode() {
            format!(", {} of {} cuts lost readings", ctl.losses.len(), ctl.cuts)
        } else {
            String::new()
        },
        control_started.elapsed().as_secs_f64()
    );
}
