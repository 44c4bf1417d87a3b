//! The durable queue (SPEC §5): every reading is committed here before anything else happens
//! to it, and leaves only when the API acknowledged it, it was dead-lettered, or a counted bound
//! dropped it.
//!
//! One writer thread owns the SQLite connection. Bus tasks call [`Queue::commit`]; the sender
//! calls [`Queue::fetch`], [`Queue::delivered`] and [`Queue::dead_letter`]. Writes are grouped:
//! everything that arrives within one commit window goes into one transaction (WAL,
//! `synchronous=FULL` when it carries new readings), so disk syncs per second stay bounded
//! whatever the number of buses or the delivery rate. A full disk holds new readings in memory
//! (bounded) and retries; an I/O error ends the process (committed data is intact); a corrupt
//! file is set aside and its readable rows are carried into a fresh queue. This module tree is
//! the only place that imports rusqlite; it never talks to meters or the network.

mod acks;
mod db;
mod inbox;
mod inspect;
mod pages;
mod salvage;
mod wal;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::{oneshot, watch};

use crate::events;
use crate::reading::{Implausible, Kind, Reading, Series, plausibility};

pub use db::{COUNTERS, DeadRow, OpenError, Row as QueuedReading, SCHEMA_VERSION};
pub use inspect::{
    DeadSelection, SeriesStatus, Status, dead_list, dead_purge, dead_retry, fix_ownership, status,
};
pub use salvage::SetAside;
pub use wal::{Damage as WalLoss, Recovered, WalDamage};

use db::{Db, Failure, Mode, Opened};

/// How the queue behaves; [`QueueOptions::new`] gives the defaults.
#[derive(Debug, Clone)]
pub struct QueueOptions {
    pub path: PathBuf,
    /// Bound on queued readings; beyond it the oldest data points, then readings, are dropped.
    pub max_readings: u64,
    /// Readings older than this are dropped.
    pub max_age: Duration,
    /// Group-commit window: at most one transaction per window (SPEC: ≤ 200 ms).
    pub commit_window: Duration,
    /// Readings held in memory while the disk is full.
    pub memory_limit: usize,
    /// How long status-only updates (meter polls, last delivery) may wait for a transaction.
    pub state_interval: Duration,
    /// How often the max_age sweep and free-page reclaim run.
    pub maintenance_interval: Duration,
    /// `PRAGMA max_page_count` for fault tests: makes the queue report a full disk at a chosen
    /// size without needing a small filesystem.
    #[doc(hidden)]
    pub max_page_count: Option<u32>,
    /// `synchronous=FULL` for transactions with new readings (SPEC §5). Off only in the
    /// power-cut harness's control run, which must show that the harness detects loss.
    #[doc(hidden)]
    pub full_sync: bool,
    /// `quick_check` runs at open after an unclean stop, and after a clean one while the file
    /// is at most this big (a full read; well under a second on an SD card at 32 MiB). Fault
    /// tests set 0 so that damage is found later, by the statement that reads it.
    #[doc(hidden)]
    pub quick_check_max: u64,
}

impl QueueOptions {
    pub fn new(path: impl Into<PathBuf>) -> QueueOptions {
        QueueOptions {
            path: path.into(),
            max_readings: 5_000_000,
            max_age: Duration::from_secs(90 * 86_400),
            commit_window: Duration::from_millis(200),
            memory_limit: 50_000,
            state_interval: Duration::from_secs(10),
            maintenance_interval: Duration::from_secs(60),
            max_page_count: None,
            full_sync: true,
            quick_check_max: 32 << 20,
        }
    }

    /// Fault-injection knobs for the daemon binary, from `ENECTIVA_TEST_QUEUE` (comma-separated
    /// `memory_limit=N`, `max_page_count=N`, `sync=normal`, `quick_check_max=BYTES`); unknown
    /// or absent knobs change nothing. Used only by `tests/faults`.
    #[must_use]
    pub fn with_test_knobs(mut self) -> QueueOptions {
        let Ok(knobs) = std::env::var("ENECTIVA_TEST_QUEUE") else {
            return self;
        };
        for knob in knobs.split(',') {
            match knob.trim().split_once('=') {
                Some(("memory_limit", v)) => {
                    if let Ok(n) = v.parse() {
                        self.memory_limit = n;
                    }
                }
                Some(("max_page_count", v)) => self.max_page_count = v.parse().ok(),
                Some(("sync", "normal")) => self.full_sync = false,
                Some(("quick_check_max", v)) => {
                    if let Ok(n) = v.parse() {
                        self.quick_check_max = n;
                    }
                }
                _ => {}
            }
        }
        tracing::warn!(knobs = %knobs, "ENECTIVA_TEST_QUEUE fault-injection knobs in effect");
        self
    }

    pub fn from_settings(s: &crate::config::QueueSettings) -> QueueOptions {
        QueueOptions {
            max_readings: s.max_readings,
            max_age: s.max_age,
            ..QueueOptions::new(&s.path)
        }
    }
}

/// Why the queue cannot go on.
#[derive(Debug, Clone, thiserror::Error)]
pub enum QueueError {
    #[error("cannot open the queue {path}: {message}")]
    Open { path: PathBuf, message: String },
    #[error(
        "I/O error writing the queue {path}: {message}; committed readings are intact, the process must restart"
    )]
    Fatal { path: PathBuf, message: String },
    #[error("the queue is closed")]
    Closed,
}

/// What happened to the readings of one [`Queue::commit`] call.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommitReport {
    /// Durably committed to the queue.
    pub committed: usize,
    /// Refused by the plausibility rule and committed as dead letters.
    pub dead_lettered: usize,
    /// Not yet durable: the disk is full and they wait in memory.
    pub held: usize,
}

/// The last poll of one meter, as `status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct MeterPoll {
    pub meter: String,
    pub bus: String,
    /// Unix seconds.
    pub time: i64,
    pub ok: bool,
    pub error: Option<String>,
    /// Consecutive failed slots.
    pub failures: i64,
    pub down: bool,
    /// Serial lines: bad-CRC frames and garbage bytes seen while polling this meter (since the
    /// daemon started).
    pub crc_errors: i64,
    pub garbage_bytes: i64,
}

/// A series with readings in the queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingSeries {
    pub series: Series,
    /// Id of its oldest queued reading.
    pub first_id: i64,
    /// Id of its newest queued reading.
    pub last_id: i64,
}

/// What opening the queue found.
#[derive(Debug, Clone, Default)]
pub struct OpenReport {
    /// Readings waiting to be sent.
    pub pending: u64,
    /// The previous run did not close the queue cleanly (so `quick_check` ran).
    pub unclean: bool,
    /// The file was corrupt and was set aside.
    pub set_aside: Option<SetAside>,
    /// The write-ahead log was damaged: committed transactions in it were unreadable.
    pub wal_damage: Option<WalDamage>,
}

/// Counters and gauges the daemon reads without touching the disk.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    pub pending: u64,
    pub oldest_time: Option<i64>,
    pub held_in_memory: usize,
    pub disk_full: bool,
    pub counters: BTreeMap<String, i64>,
    pub commits: u64,
}

enum Cmd {
    Commit {
        readings: Vec<Reading>,
        reply: oneshot::Sender<Result<CommitReport, QueueError>>,
    },
    /// Updates are waiting in the inbox ([`inbox::Inbox`]): schedule a transaction.
    Wake,
    DeadLetter {
        id: i64,
        reason: String,
        status: Option<u16>,
        body: Option<String>,
    },
    Fetch {
        series: Series,
        after: i64,
        limit: usize,
        reply: oneshot::Sender<Result<Vec<QueuedReading>, QueueError>>,
    },
    FetchMany {
        wanted: Vec<(Series, i64)>,
        limit: usize,
        reply: oneshot::Sender<Result<Vec<Vec<QueuedReading>>, QueueError>>,
    },
    PendingSince {
        after: i64,
        reply: oneshot::Sender<Result<Vec<PendingSeries>, QueueError>>,
    },
    Pending {
        reply: oneshot::Sender<Result<Vec<PendingSeries>, QueueError>>,
    },
    Stats {
        reply: oneshot::Sender<Result<Stats, QueueError>>,
    },
    Flush {
        reply: oneshot::Sender<Result<(), QueueError>>,
    },
    Close {
        reply: oneshot::Sender<Result<(), QueueError>>,
    },
    MaxPageCount(u32),
}

/// The answer to a [`Queue::submit`]: how the commit went, once it is durable (the channel
/// closes without an answer only if the writer stopped).
pub type PendingCommit = oneshot::Receiver<Result<CommitReport, QueueError>>;

/// A handle to the queue; cheap to clone, usable from any task.
#[derive(Debug, Clone)]
pub struct Queue {
    tx: mpsc::Sender<Cmd>,
    commits: watch::Receiver<u64>,
    fatal: watch::Receiver<Option<QueueError>>,
    path: Arc<PathBuf>,
    inbox: Arc<inbox::Inbox>,
}

impl Queue {
    /// Opens (creating, migrating or setting aside as needed) and starts the writer thread.
    pub fn open(opts: QueueOptions) -> Result<(Queue, OpenReport), QueueError> {
        let (db, report, max_id) = open_for_daemon(&opts)?;
        let (tx, rx) = mpsc::channel();
        let (commits_tx, commits) = watch::channel(0u64);
        let (fatal_tx, fatal) = watch::channel(None);
        let path = Arc::new(opts.path.clone());
        let inbox = Arc::new(inbox::Inbox::new(acks::AckLog::open(&opts.path)));
        let writer = Writer::new(
            db,
            opts,
            report.pending,
            max_id,
            (commits_tx, fatal_tx),
            Arc::clone(&inbox),
        );
        thread::Builder::new()
            .name("queue-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| QueueError::Open {
                path: path.to_path_buf(),
                message: format!("cannot start the writer thread: {e}"),
            })?;
        Ok((
            Queue {
                tx,
                commits,
                fatal,
                path,
                inbox,
            },
            report,
        ))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn send(&self, cmd: Cmd) -> Result<(), QueueError> {
        self.tx.send(cmd).map_err(|_| self.closed_error())
    }

    fn closed_error(&self) -> QueueError {
        self.fatal.borrow().clone().unwrap_or(QueueError::Closed)
    }

    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, QueueError>>) -> Cmd,
    ) -> Result<T, QueueError> {
        let (reply, rx) = oneshot::channel();
        self.send(make(reply))?;
        rx.await.map_err(|_| self.closed_error())?
    }

    /// Commits readings durably (group commit: resolves within one commit window plus a disk
    /// sync). Readings that fail the plausibility rule become dead letters in the same
    /// transaction. While the disk is full the readings wait in memory and `held` says so.
    pub async fn commit(&self, readings: Vec<Reading>) -> Result<CommitReport, QueueError> {
        let answer = self.submit(readings)?;
        answer.await.map_err(|_| self.closed_error())?
    }

    /// [`Queue::commit`] in two steps: the readings are handed to the writer now (so readings
    /// submitted one after another are committed in that order), and the answer comes on the
    /// returned channel once they are durable. A bus polls its next meter meanwhile.
    pub fn submit(&self, readings: Vec<Reading>) -> Result<PendingCommit, QueueError> {
        let (reply, rx) = oneshot::channel();
        if readings.is_empty() {
            let _ = reply.send(Ok(CommitReport::default()));
        } else {
            self.send(Cmd::Commit { readings, reply })?;
        }
        Ok(rx)
    }

    /// The API acknowledged a reading (2xx, or 409 when `duplicate`). Removed with the next
    /// group; after a crash it may be sent once more (the API answers 409).
    pub fn delivered(&self, id: i64, duplicate: bool) -> Result<(), QueueError> {
        self.wake(self.inbox.delivered(id, duplicate))
    }

    /// Wakes the writer when an update put into the inbox asks for it.
    fn wake(&self, put: Result<bool, inbox::Closed>) -> Result<(), QueueError> {
        match put {
            Ok(true) => self.send(Cmd::Wake),
            Ok(false) => Ok(()),
            Err(inbox::Closed) => Err(self.closed_error()),
        }
    }

    /// The API rejected a reading: keep it as a dead letter with the answer.
    pub fn dead_letter(
        &self,
        id: i64,
        reason: String,
        status: Option<u16>,
        body: Option<String>,
    ) -> Result<(), QueueError> {
        self.send(Cmd::DeadLetter {
            id,
            reason,
            status,
            body,
        })
    }

    /// Records a meter's last poll for `status` (written with the next transaction).
    pub fn record_poll(&self, poll: MeterPoll) -> Result<(), QueueError> {
        self.wake(self.inbox.meter(poll))
    }

    /// Records an operational fact for `status` (e.g. `last_delivery`, `last_error`).
    pub fn record_state(&self, key: &str, value: impl Into<String>) -> Result<(), QueueError> {
        self.wake(self.inbox.state(key, value.into()))
    }

    /// Up to `limit` committed readings of `series` with an id above `after`, oldest first.
    pub async fn fetch(
        &self,
        series: &Series,
        after: i64,
        limit: usize,
    ) -> Result<Vec<QueuedReading>, QueueError> {
        let series = series.clone();
        self.ask(|reply| Cmd::Fetch {
            series,
            after,
            limit,
            reply,
        })
        .await
    }

    /// [`Queue::fetch`] for several series in one round trip to the writer thread: for each
    /// `(series, after)`, up to `limit` readings with an id above `after`, oldest first.
    pub async fn fetch_many(
        &self,
        wanted: Vec<(Series, i64)>,
        limit: usize,
    ) -> Result<Vec<Vec<QueuedReading>>, QueueError> {
        self.ask(|reply| Cmd::FetchMany {
            wanted,
            limit,
            reply,
        })
        .await
    }

    /// Every series with committed readings (ids of its oldest and newest), oldest first.
    pub async fn pending_series(&self) -> Result<Vec<PendingSeries>, QueueError> {
        self.ask(|reply| Cmd::Pending { reply }).await
    }

    /// The series with committed readings above `after` (ids of the oldest and newest of
    /// those), oldest first: a range scan over the new rows only, so the sender can look at
    /// every commit without scanning every series.
    pub async fn pending_since(&self, after: i64) -> Result<Vec<PendingSeries>, QueueError> {
        self.ask(|reply| Cmd::PendingSince { after, reply }).await
    }

    pub async fn stats(&self) -> Result<Stats, QueueError> {
        self.ask(|reply| Cmd::Stats { reply }).await
    }

    /// Commits everything waiting (removals, dead letters, status) now.
    pub async fn flush(&self) -> Result<(), QueueError> {
        self.ask(|reply| Cmd::Flush { reply }).await
    }

    /// Flushes, checkpoints, marks a clean shutdown, closes the file and stops the writer
    /// thread; when it returns, the queue files can be opened (or replaced) by anyone.
    pub async fn close(&self) -> Result<(), QueueError> {
        self.ask(|reply| Cmd::Close { reply }).await
    }

    /// Fault tests: changes `PRAGMA max_page_count` on the writer's connection.
    #[doc(hidden)]
    pub fn debug_set_max_page_count(&self, pages: u32) -> Result<(), QueueError> {
        self.send(Cmd::MaxPageCount(pages))
    }

    /// Changes whenever new readings were committed (the sender waits on it).
    pub fn commits(&self) -> watch::Receiver<u64> {
        self.commits.clone()
    }

    /// Becomes `Some` when the queue hit an I/O error: the process must exit with status 1.
    pub fn fatal(&self) -> watch::Receiver<Option<QueueError>> {
        self.fatal.clone()
    }
}

pub(crate) fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Whether the file system holding `dir` has no room left: a 64 KiB probe file cannot be
/// written there (`ENOSPC` or `EDQUOT`). Tells a full disk apart from a damaged queue when
/// opening fails, so the daemon waits for space instead of exiting.
pub fn disk_is_full(dir: &Path) -> bool {
    use std::io::Write as _;
    let probe = dir.join(".enectiva-space-probe");
    let written = std::fs::File::create(&probe).and_then(|mut f| {
        f.write_all(&[0u8; 64 * 1024])?;
        f.sync_all()
    });
    let _ = std::fs::remove_file(&probe);
    matches!(
        written,
        Err(e) if matches!(e.kind(), std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded)
    )
}

fn open_error(path: &Path, e: impl std::fmt::Display) -> QueueError {
    QueueError::Open {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

/// Opens the daemon's queue: quick_check after an unclean stop, set aside when corrupt.
fn open_for_daemon(opts: &QueueOptions) -> Result<(Db, OpenReport, i64), QueueError> {
    let path = &opts.path;
    if let Some(dir) = path.parent() {
        if !dir.as_os_str().is_empty() && !dir.exists() {
            std::fs::create_dir_all(dir).map_err(|e| open_error(path, e))?;
        }
    }
    let existed = path.exists();
    let mut report = OpenReport::default();
    // SQLite replays a damaged log silently up to the damage: look at it before SQLite does,
    // and read what the frames beyond the damage hold while they are still there.
    let inspected = wal::inspect(path);
    // A file that exists but is empty: SQLite would happily treat it as a new database (and
    // delete a log beside it), but the daemon created it and writes its schema at once, so an
    // empty file means its content was lost (a file system that lost the data of a file after
    // a power cut, a tool that truncated it). It is set aside like a damaged one, so the loss
    // is logged with QUEUE_SET_ASIDE and the readings in a log beside it are salvaged.
    let empty = existed && std::fs::metadata(path).is_ok_and(|m| m.len() == 0);
    let mut unclean = false;
    if existed && !empty {
        unclean = previous_run_unclean(path);
    }
    report.unclean = unclean;
    // quick_check reads the whole file: after an unclean stop or a damaged log always (the
    // log's valid prefix may not match pages a checkpoint already copied), otherwise while the
    // file is small enough that it costs well under a second even on an SD card.
    let small = std::fs::metadata(path).is_ok_and(|m| m.len() <= opts.quick_check_max);
    let check = unclean || inspected.is_some() || (existed && small);
    if check && existed && !empty {
        warm_up(path);
    }
    let opened = if empty {
        Ok(Opened::Corrupt(
            "the queue file is empty (zero length): any readings it held are lost".into(),
        ))
    } else {
        Db::open(path, Mode::Daemon, check)
    };
    let (mut wal_damage, log_rows) = match inspected {
        Some(found) => (Some(found.damage), found.rows),
        None => (None, Vec::new()),
    };
    let opened = match opened {
        Ok(o) => o,
        Err(e) => {
            if let Some(d) = wal_damage.as_mut() {
                d.recovered = Recovered::Failed;
                d.log();
            }
            return Err(open_error(path, e));
        }
    };
    let mut db = match opened {
        Opened::Ok(mut db) => {
            if let Some(d) = wal_damage.as_mut() {
                d.recovered = match salvage::carry_over(&mut db, &log_rows) {
                    Ok(n) => Recovered::Carried(n),
                    Err(e) => {
                        tracing::error!(error = %e, "cannot carry the readings of the damaged write-ahead log into the queue");
                        Recovered::Failed
                    }
                };
                d.log();
            }
            db
        }
        Opened::Corrupt(reason) => {
            if let Some(d) = wal_damage.as_mut() {
                d.recovered = Recovered::SetAside;
                d.log();
            }
            let (db, aside) =
                salvage::set_aside(path, &reason, 0).map_err(|e| open_error(path, e))?;
            report.set_aside = Some(aside);
            db
        }
    };
    report.wal_damage = wal_damage;
    // Marked clean again only by Queue::close.
    if let Err(e) = db.set_state("clean_shutdown", "0") {
        // A full disk must not stop the daemon (readings wait in memory); an I/O error means
        // the file can no longer be trusted to take commits, so the start fails (exit 1).
        if db::classify(&e) == db::Failure::Full {
            tracing::error!(error = %e, "cannot mark the queue open (disk full)");
        } else {
            return Err(open_error(path, e));
        }
    }
    if let Some(pages) = opts.max_page_count {
        let _ = db
            .conn
            .query_row(&format!("PRAGMA max_page_count = {pages}"), [], |_| Ok(()));
    }
    let counted = db
        .count_readings()
        .and_then(|n| Ok((n, db.max_reading_id()?)));
    let (pending, max_id) = match counted {
        Ok(v) => v,
        Err(e) if db::classify(&e) == Failure::Corrupt && report.set_aside.is_none() => {
            drop(db);
            let (fresh, aside) =
                salvage::set_aside(path, &e.to_string(), 0).map_err(|e| open_error(path, e))?;
            report.set_aside = Some(aside);
            db = fresh;
            let n = db.count_readings().map_err(|e| open_error(path, e))?;
            (n, db.max_reading_id().map_err(|e| open_error(path, e))?)
        }
        Err(e) => return Err(open_error(path, e)),
    };
    let replayed = replay_acks(&mut db, path).map_err(|e| open_error(path, e))?;
    report.pending = pending.saturating_sub(replayed);
    db.forget_series_cache();
    Ok((db, report, max_id))
}

/// Removes the readings whose acknowledgement reached the journal but not a committed removal
/// group before the last stop; returns how many were still queued.
fn replay_acks(db: &mut Db, path: &Path) -> rusqlite::Result<u64> {
    let acks = acks::read(path);
    if acks.is_empty() {
        return Ok(0);
    }
    db.set_full_sync(false)?;
    db.conn.execute_batch("BEGIN IMMEDIATE")?;
    let result = (|| {
        let (mut delivered, mut duplicates) = (0i64, 0i64);
        for (id, duplicate) in &acks {
            if db.remove(*id)? {
                delivered += 1;
                duplicates += i64::from(*duplicate);
            }
        }
        db.add_counter("delivered", delivered)?;
        db.add_counter("duplicates", duplicates)?;
        Ok(delivered)
    })();
    match result {
        Ok(n) => {
            db.conn.execute_batch("COMMIT")?;
            tracing::info!(
                removed = n,
                journal = acks.len(),
                "acknowledged readings from before the last stop removed from the queue"
            );
            Ok(n as u64)
        }
        Err(e) => {
            let _ = db.conn.execute_batch("ROLLBACK");
            Err(e)
        }
    }
}

/// Reads the clean-shutdown flag without changing anything; a file we cannot read is unclean.
/// Reads the queue file and its log front to back before `quick_check`, so the check finds
/// them in the page cache. quick_check visits pages in b-tree order, which on a cold cache is
/// one small random read per page: 1.5 s for an 89 MB file on this project's VM (far more on
/// an SD card) against 0.15 s for one sequential pass (BENCHMARKS.md, issue 8). Best effort:
/// a read error here is left for SQLite to find.
fn warm_up(path: &Path) {
    use std::io::Read as _;
    let mut buf = vec![0u8; 256 << 10];
    for p in [path.to_path_buf(), salvage::with_suffix(path, "-wal")] {
        if let Ok(mut f) = std::fs::File::open(&p) {
            while let Ok(n) = f.read(&mut buf) {
                if n == 0 {
                    break;
                }
            }
        }
    }
}

fn previous_run_unclean(path: &Path) -> bool {
    match Db::open(path, Mode::ReadOnly, false) {
        Ok(Opened::Ok(db)) => db.get_state("clean_shutdown").ok().flatten().as_deref() != Some("1"),
        _ => true,
    }
}

#[derive(Default)]
struct Batch {
    readings: Vec<Reading>,
    waiters: Vec<(oneshot::Sender<Result<CommitReport, QueueError>>, usize)>,
    removals: Vec<(i64, bool)>,
    dead: Vec<(i64, String, Option<u16>, Option<String>)>,
    meters: HashMap<String, MeterPoll>,
    state: BTreeMap<String, String>,
    flush_waiters: Vec<oneshot::Sender<Result<(), QueueError>>>,
    /// When the first pending flush request arrived.
    flush_requested: Option<Instant>,
    /// When the first write that needs a prompt transaction arrived.
    first_write: Option<Instant>,
    /// When the first status-only update arrived.
    first_state: Option<Instant>,
}

/// Counter changes not yet written (readings dropped from memory while the disk was full).
#[derive(Default)]
struct Deltas {
    enqueued: i64,
    dropped: i64,
}

struct Writer {
    db: Db,
    opts: QueueOptions,
    count: u64,
    max_id: i64,
    batch: Batch,
    /// Readings not yet committed because the disk is full, oldest first.
    held: VecDeque<Reading>,
    deltas: Deltas,
    disk_full_since: Option<Instant>,
    last_flush: Option<Instant>,
    last_maintenance: Instant,
    commits: u64,
    commits_tx: watch::Sender<u64>,
    fatal_tx: watch::Sender<Option<QueueError>>,
    drop_log: DropLog,
    counters_cache: BTreeMap<String, i64>,
    /// Acknowledgements (journaled there) and status updates not yet taken into a batch.
    inbox: Arc<inbox::Inbox>,
}

/// Rate-limits the WARN about dropped readings (SPEC §5: logged, rate-limited).
#[derive(Default)]
struct DropLog {
    since_last: u64,
    last: Option<Instant>,
}

impl DropLog {
    fn add(&mut self, n: u64, why: &str) {
        self.since_last += n;
        let due = self
            .last
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(60));
        if self.since_last > 0 && due {
            tracing::warn!(
                message_id = events::QUEUE_DROPPED,
                dropped = self.since_last,
                reason = why,
                "queue bound reached: oldest readings dropped"
            );
            self.since_last = 0;
            self.last = Some(Instant::now());
        }
    }
}

struct Applied {
    reports: Vec<CommitReport>,
    count: u64,
    max_id: i64,
    new_rows: bool,
    counter_deltas: BTreeMap<&'static str, i64>,
}

impl Writer {
    fn new(
        db: Db,
        opts: QueueOptions,
        count: u64,
        max_id: i64,
        (commits_tx, fatal_tx): (watch::Sender<u64>, watch::Sender<Option<QueueError>>),
        inbox: Arc<inbox::Inbox>,
    ) -> Writer {
        let counters_cache = db
            .counters()
            .map(|v| v.into_iter().collect())
            .unwrap_or_default();
        Writer {
            db,
            opts,
            count,
            max_id,
            batch: Batch::default(),
            held: VecDeque::new(),
            deltas: Deltas::default(),
            disk_full_since: None,
            last_flush: None,
            last_maintenance: Instant::now(),
            commits: 0,
            commits_tx,
            fatal_tx,
            drop_log: DropLog::default(),
            counters_cache,
            inbox,
        }
    }

    /// When the pending batch must be committed, if anything is pending.
    fn deadline(&self) -> Option<Instant> {
        let window = self.opts.commit_window;
        // Every candidate is a fixed instant: a deadline computed from `Instant::now()` here
        // would always lie a little in the future and never come due.
        let retry = if self.disk_full_since.is_some() || !self.held.is_empty() {
            // Retry a full disk about once a second, not every window.
            Some(
                self.last_flush
                    .map_or(self.last_maintenance, |t| t + Duration::from_secs(1)),
            )
        } else {
            None
        };
        let writes = self.batch.first_write.map(|first| match self.last_flush {
            // At most one transaction per window, but no waiting when the last one is old.
            Some(last) => (last + window).max(first),
            None => first,
        });
        let state = self.batch.first_state.map(|t| t + self.opts.state_interval);
        [retry, writes, state, self.batch.flush_requested]
            .into_iter()
            .flatten()
            .min()
    }

    fn run(self, rx: mpsc::Receiver<Cmd>) {
        let inbox = Arc::clone(&self.inbox);
        self.serve(rx);
        inbox.close();
    }

    fn serve(mut self, rx: mpsc::Receiver<Cmd>) {
        loop {
            let deadline = self.deadline();
            let maintenance_at = self.last_maintenance + self.opts.maintenance_interval;
            let wake = deadline.map_or(maintenance_at, |d| d.min(maintenance_at));
            let timeout = wake.saturating_duration_since(Instant::now());
            match rx.recv_timeout(timeout) {
                Ok(Cmd::Close { reply }) => {
                    let result = self.close();
                    // Acknowledgements from now on stay in the journal for the next open.
                    self.inbox.close();
                    // The connection closes before the answer: whoever waited may open the
                    // files next, and a last connection closing later would checkpoint and
                    // delete whatever `-wal` lies there by then.
                    drop(self);
                    let _ = reply.send(result);
                    return;
                }
                Ok(cmd) => self.handle(cmd),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    // Every handle is gone without close(): commit what we have and stop.
                    let _ = self.close();
                    return;
                }
            }
            let now = Instant::now();
            if self.deadline().is_some_and(|d| d <= now) && !self.flush() {
                return;
            }
            if now >= self.last_maintenance + self.opts.maintenance_interval {
                if !self.maintenance() {
                    return;
                }
                self.last_maintenance = Instant::now();
            }
        }
    }

    fn handle(&mut self, cmd: Cmd) {
        let now = Instant::now();
        match cmd {
            Cmd::Commit { readings, reply } => {
                self.batch.waiters.push((reply, readings.len()));
                self.batch.readings.extend(readings);
                self.batch.first_write.get_or_insert(now);
            }
            Cmd::Wake => {
                let (writes, state) = self.inbox.due();
                if writes {
                    self.batch.first_write.get_or_insert(now);
                }
                if state {
                    self.batch.first_state.get_or_insert(now);
                }
            }
            Cmd::DeadLetter {
                id,
                reason,
                status,
                body,
            } => {
                self.batch.dead.push((id, reason, status, body));
                self.batch.first_write.get_or_insert(now);
            }
            Cmd::Fetch {
                series,
                after,
                limit,
                reply,
            } => {
                let r = self.read(|db| db.fetch(&series, after, limit));
                let _ = reply.send(r);
            }
            Cmd::FetchMany {
                wanted,
                limit,
                reply,
            } => {
                let r = self.read(|db| {
                    wanted
                        .iter()
                        .map(|(series, after)| db.fetch(series, *after, limit))
                        .collect()
                });
                let _ = reply.send(r);
            }
            Cmd::PendingSince { after, reply } => {
                let r = self.read(|db| db.pending_since(after));
                let _ = reply.send(r);
            }
            Cmd::Pending { reply } => {
                let r = self.read(|db| db.pending_series());
                let _ = reply.send(r);
            }
            Cmd::Stats { reply } => {
                let r = self.stats();
                let _ = reply.send(r);
            }
            Cmd::Flush { reply } => {
                self.batch.flush_waiters.push(reply);
                self.batch.flush_requested.get_or_insert(now);
            }
            Cmd::Close { .. } => {}
            Cmd::MaxPageCount(pages) => {
                let _ =
                    self.db
                        .conn
                        .query_row(&format!("PRAGMA max_page_count = {pages}"), [], |_| Ok(()));
            }
        }
    }

    /// Runs a read; a corrupt file found by a read is set aside like one found by a write.
    fn read<T>(&mut self, f: impl Fn(&mut Db) -> rusqlite::Result<T>) -> Result<T, QueueError> {
        match f(&mut self.db) {
            Ok(v) => Ok(v),
            Err(e) => match db::classify(&e) {
                Failure::Corrupt => {
                    self.set_aside_now(&e.to_string())?;
                    f(&mut self.db).map_err(|e| self.fatal(e))
                }
                _ => Err(QueueError::Fatal {
                    path: self.opts.path.clone(),
                    message: e.to_string(),
                }),
            },
        }
    }

    fn stats(&mut self) -> Result<Stats, QueueError> {
        let oldest = self.read(|db| {
            db.conn
                .query_row("SELECT time FROM readings ORDER BY id LIMIT 1", [], |r| {
                    r.get::<_, i64>(0)
                })
                .map(Some)
                .or_else(|e| match e {
                    rusqlite::Error::QueryReturnedNoRows => Ok(None),
                    e => Err(e),
                })
        })?;
        Ok(Stats {
            pending: self.count,
            oldest_time: oldest,
            held_in_memory: self.held.len(),
            disk_full: self.disk_full_since.is_some(),
            counters: self.counters_cache.clone(),
            commits: self.commits,
        })
    }

    fn fatal(&self, e: impl std::fmt::Display) -> QueueError {
        let err = QueueError::Fatal {
            path: self.opts.path.clone(),
            message: e.to_string(),
        };
        tracing::error!(
            message_id = events::QUEUE_IO_ERROR,
            path = %self.opts.path.display(),
            error = %e,
            "I/O error on the queue; exiting so the service restarts (committed readings are intact)"
        );
        let _ = self.fatal_tx.send(Some(err.clone()));
        err
    }

    /// Commits the batch. Returns false when the writer must stop (fatal error).
    fn flush(&mut self) -> bool {
        let taken = self.inbox.take();
        self.batch.removals.extend(taken.removals);
        self.batch.meters.extend(taken.meters);
        self.batch.state.extend(taken.state);
        let mut readings: Vec<Reading> = self.held.drain(..).collect();
        readings.append(&mut self.batch.readings);
        let held_before = readings.len() - self.batch.waiters.iter().map(|(_, n)| n).sum::<usize>();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let result = self.apply(&readings, held_before);
            match result {
                Ok(applied) => {
                    self.finish(applied);
                    return true;
                }
                Err(e) => match db::classify(&e) {
                    Failure::Full | Failure::Busy => {
                        self.hold(readings, &e);
                        return true;
                    }
                    Failure::Corrupt if attempt == 1 => {
                        if self.set_aside_now(&e.to_string()).is_err() {
                            self.fail_all();
                            return false;
                        }
                    }
                    _ => {
                        let err = self.fatal(&e);
                        for (w, _) in self.batch.waiters.drain(..) {
                            let _ = w.send(Err(err.clone()));
                        }
                        for w in self.batch.flush_waiters.drain(..) {
                            let _ = w.send(Err(err.clone()));
                        }
                        return false;
                    }
                },
            }
        }
    }

    fn fail_all(&mut self) {
        let err = self.fatal_tx.borrow().clone().unwrap_or(QueueError::Closed);
        for (w, _) in self.batch.waiters.drain(..) {
            let _ = w.send(Err(err.clone()));
        }
        for w in self.batch.flush_waiters.drain(..) {
            let _ = w.send(Err(err.clone()));
        }
    }

    /// One transaction for the whole batch. Nothing in `self` changes unless it commits.
    fn apply(&mut self, readings: &[Reading], held_before: usize) -> rusqlite::Result<Applied> {
        let has_new = !readings.is_empty();
        self.db.set_full_sync(has_new && self.opts.full_sync)?;
        self.db.conn.execute_batch("BEGIN IMMEDIATE")?;
        match self.apply_inner(readings, held_before) {
            Ok(a) => match self.db.conn.execute_batch("COMMIT") {
                Ok(()) => Ok(a),
                Err(e) => {
                    let _ = self.db.conn.execute_batch("ROLLBACK");
                    Err(e)
                }
            },
            Err(e) => {
                let _ = self.db.conn.execute_batch("ROLLBACK");
                Err(e)
            }
        }
    }

    fn apply_inner(
        &mut self,
        readings: &[Reading],
        held_before: usize,
    ) -> rusqlite::Result<Applied> {
        let now = now_unix();
        let mut count = self.count;
        let mut max_id = self.max_id;
        let mut c: BTreeMap<&'static str, i64> = BTreeMap::new();
        let bump = |c: &mut BTreeMap<&'static str, i64>, k: &'static str, n: i64| {
            *c.entry(k).or_insert(0) += n;
        };
        for (id, duplicate) in &self.batch.removals {
            if self.db.remove(*id)? {
                count = count.saturating_sub(1);
                bump(&mut c, "delivered", 1);
                if *duplicate {
                    bump(&mut c, "duplicates", 1);
                }
            }
        }
        for (id, reason, status, body) in &self.batch.dead {
            if self
                .db
                .dead_letter(*id, reason, *status, body.as_deref(), now)?
            {
                count = count.saturating_sub(1);
                bump(&mut c, "dead_lettered", 1);
            }
        }
        // Per call: how many of its readings were committed or dead-lettered.
        let mut outcome: Vec<(usize, usize)> = Vec::with_capacity(readings.len());
        for r in readings {
            let sid = self.db.series_id(&r.series)?;
            let last = if r.series.kind == Kind::Reading {
                self.db.last_value(sid)?
            } else {
                None
            };
            bump(&mut c, "enqueued", 1);
            match plausibility(r, last) {
                Ok(()) => {
                    let id = self.db.insert_reading(r, None)?;
                    max_id = max_id.max(id);
                    if r.series.kind == Kind::Reading {
                        self.db.set_last_value(sid, r.value, id)?;
                    }
                    if !r.clock_synced {
                        bump(&mut c, "unsynced", 1);
                    }
                    count += 1;
                    outcome.push((1, 0));
                }
                Err(why) => {
                    self.db.insert_dead(&dead_row(r, &why, now), false)?;
                    bump(&mut c, "dead_lettered", 1);
                    warn_implausible(r, &why);
                    outcome.push((0, 1));
                }
            }
        }
        // Bounds: data points go first, then readings (SPEC §5).
        if count > self.opts.max_readings {
            let excess = count - self.opts.max_readings;
            let d = self.db.drop_oldest(Kind::DataPoint, excess)?;
            let r = self.db.drop_oldest(Kind::Reading, excess - d)?;
            count -= d + r;
            bump(&mut c, "dropped", i64::try_from(d + r).unwrap_or(i64::MAX));
        }
        bump(&mut c, "enqueued", self.deltas.enqueued);
        bump(&mut c, "dropped", self.deltas.dropped);
        for (name, delta) in &c {
            self.db.add_counter(name, *delta)?;
        }
        for poll in self.batch.meters.values() {
            self.db.upsert_meter(poll)?;
        }
        for (k, v) in &self.batch.state {
            self.db.set_state(k, v)?;
        }
        // Split outcomes back to the calls: held readings (from earlier calls, already
        // answered) come first.
        let mut reports = Vec::with_capacity(self.batch.waiters.len());
        let mut it = outcome.into_iter().skip(held_before);
        for (_, n) in &self.batch.waiters {
            let mut rep = CommitReport::default();
            for (ok, dead) in it.by_ref().take(*n) {
                rep.committed += ok;
                rep.dead_lettered += dead;
            }
            reports.push(rep);
        }
        Ok(Applied {
            reports,
            count,
            max_id,
            new_rows: !readings.is_empty(),
            counter_deltas: c,
        })
    }

    fn finish(&mut self, a: Applied) {
        let dropped = a.counter_deltas.get("dropped").copied().unwrap_or(0);
        if dropped > self.deltas.dropped {
            self.drop_log
                .add((dropped - self.deltas.dropped) as u64, "max_readings");
        }
        self.count = a.count;
        self.max_id = a.max_id;
        self.deltas = Deltas::default();
        for (name, delta) in a.counter_deltas {
            *self.counters_cache.entry(name.to_string()).or_insert(0) += delta;
        }
        let waiters = std::mem::take(&mut self.batch.waiters);
        for ((w, _), rep) in waiters.into_iter().zip(a.reports) {
            let _ = w.send(Ok(rep));
        }
        for w in self.batch.flush_waiters.drain(..) {
            let _ = w.send(Ok(()));
        }
        self.batch = Batch::default();
        self.inbox.committed();
        self.last_flush = Some(Instant::now());
        if let Some(since) = self.disk_full_since.take() {
            tracing::info!(
                message_id = events::QUEUE_DISK_OK,
                after_s = since.elapsed().as_secs(),
                "queue writable again; readings held in memory are committed"
            );
        }
        if a.new_rows {
            self.commits += 1;
            let _ = self.commits_tx.send(self.commits);
            // The fault harness reads this line: everything up to `max_id` is durable.
            tracing::debug!(max_id = self.max_id, pending = self.count, "committed");
        }
    }

    /// The disk is full (or another process holds the lock): keep everything for the next
    /// attempt, new readings in memory up to the bound.
    fn hold(&mut self, readings: Vec<Reading>, e: &rusqlite::Error) {
        let held_now = readings.len();
        self.held.extend(readings);
        let mut over = self.held.len().saturating_sub(self.opts.memory_limit);
        let mut dropped = 0u64;
        // Data points go first here too.
        while over > 0 {
            let pos = self
                .held
                .iter()
                .position(|r| r.series.kind == Kind::DataPoint)
                .unwrap_or(0);
            if self.held.remove(pos).is_none() {
                break;
            }
            over -= 1;
            dropped += 1;
        }
        if dropped > 0 {
            self.deltas.enqueued += dropped as i64;
            self.deltas.dropped += dropped as i64;
            self.drop_log
                .add(dropped, "disk full and memory bound reached");
        }
        let _ = held_now;
        let waiters = std::mem::take(&mut self.batch.waiters);
        for (w, n) in waiters {
            let _ = w.send(Ok(CommitReport {
                committed: 0,
                dead_lettered: 0,
                held: n,
            }));
        }
        // A flush request cannot be honoured now; answer it so nobody waits forever.
        for w in self.batch.flush_waiters.drain(..) {
            let _ = w.send(Ok(()));
        }
        self.batch.flush_requested = None;
        self.batch.first_write = None;
        self.last_flush = Some(Instant::now());
        if self.disk_full_since.is_none() {
            self.disk_full_since = Some(Instant::now());
            let full = db::classify(e) == Failure::Full;
            if full {
                tracing::error!(
                    message_id = events::QUEUE_DISK_FULL,
                    path = %self.opts.path.display(),
                    held = self.held.len(),
                    error = %e,
                    "queue disk full: new readings are held in memory until space returns"
                );
            } else {
                tracing::warn!(path = %self.opts.path.display(), error = %e, "queue busy; will retry");
            }
        }
    }

    fn set_aside_now(&mut self, reason: &str) -> Result<(), QueueError> {
        // Close our connection first: the files are renamed underneath it.
        let placeholder = match rusqlite::Connection::open_in_memory() {
            Ok(c) => c,
            Err(e) => return Err(self.fatal(e)),
        };
        let old = std::mem::replace(&mut self.db.conn, placeholder);
        drop(old);
        match salvage::set_aside(&self.opts.path, reason, self.max_id) {
            Ok((db, aside)) => {
                self.db = db;
                self.count = self.db.count_readings().unwrap_or(0);
                self.max_id = self
                    .db
                    .max_reading_id()
                    .unwrap_or(self.max_id)
                    .max(self.max_id);
                self.counters_cache = self
                    .db
                    .counters()
                    .map(|v| v.into_iter().collect())
                    .unwrap_or_default();
                let _ = aside;
                Ok(())
            }
            Err(e) => Err(self.fatal(e)),
        }
    }

    fn maintenance(&mut self) -> bool {
        if self.disk_full_since.is_some() {
            return true;
        }
        let cutoff = now_unix()
            .saturating_sub(i64::try_from(self.opts.max_age.as_secs()).unwrap_or(i64::MAX));
        let result = (|| -> rusqlite::Result<u64> {
            self.db.set_full_sync(false)?;
            let mut total = 0;
            loop {
                let n = self.db.drop_older_than(cutoff, 5000)?;
                total += n;
                if n < 5000 {
                    break;
                }
            }
            if total > 0 {
                self.db
                    .add_counter("dropped", i64::try_from(total).unwrap_or(i64::MAX))?;
            }
            self.db.incremental_vacuum()?;
            Ok(total)
        })();
        match result {
            Ok(n) => {
                if n > 0 {
                    self.count = self.count.saturating_sub(n);
                    *self.counters_cache.entry("dropped".into()).or_insert(0) += n as i64;
                    self.drop_log.add(n, "max_age");
                }
                // Another process (dead retry) may have added rows: recount now and then.
                if let Ok(c) = self.db.count_readings() {
                    self.count = c;
                }
                true
            }
            Err(e) => match db::classify(&e) {
                Failure::Full | Failure::Busy => true,
                Failure::Corrupt => self.set_aside_now(&e.to_string()).is_ok(),
                Failure::Fatal => {
                    self.fatal(e);
                    false
                }
            },
        }
    }

    fn close(&mut self) -> Result<(), QueueError> {
        self.batch.state.insert("clean_shutdown".into(), "1".into());
        self.batch.first_write.get_or_insert(Instant::now());
        if !self.flush() {
            return Err(self.fatal_tx.borrow().clone().unwrap_or(QueueError::Closed));
        }
        if !self.held.is_empty() {
            tracing::error!(
                message_id = events::QUEUE_DROPPED,
                lost = self.held.len(),
                "stopping with readings that could not be committed (disk full)"
            );
        }
        let _ = self
            .db
            .conn
            .execute_batch("PRAGMA wal_checkpoint(TRUNCATE)");
        Ok(())
    }
}

fn dead_row(r: &Reading, why: &Implausible, now: i64) -> DeadRow {
    DeadRow {
        id: 0,
        reading_id: None,
        series: r.series.clone(),
        time: r.time,
        value: r.value.is_finite().then_some(r.value),
        unit: r.unit.clone(),
        clock_synced: r.clock_synced,
        reason: why.to_string(),
        status: None,
        body: None,
        dead_at: now,
    }
}

fn warn_implausible(r: &Reading, why: &Implausible) {
    tracing::warn!(
        message_id = events::READING_DEAD_LETTERED,
        import_id = %r.series.import_id,
        reason = %why,
        "implausible value kept as a dead letter instead of being sent"
    );
}

#[cfg(test)]
mod tests;
