//! Setting a corrupt queue file aside and carrying its readable rows into a fresh queue
//! (SPEC §5, reliability promise R8).
//!
//! The damaged file (with its `-wal` and `-shm`) is renamed to `queue.db.corrupt-<UTC time>`,
//! a fresh queue is created, and every reading and dead letter that can still be read is
//! copied over with its original id, so delivery order and the sender's cursors stay valid.
//! Readings come from two readers: SQLite, probing forward through the rowid space over damaged
//! regions (bounded), and `pages.rs`, which decodes the leaf pages of the file and of its log's
//! intact frames without SQLite and finds what no b-tree path reaches any more. Readings that
//! could not be read are counted as dropped. [`carry_over`] does the same for the readings of
//! log frames SQLite will not replay (damaged log, `wal.rs`) when the file itself is sound.
//! Never panics, whatever the files hold.

use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags};

use super::db::{Db, DeadRow, Mode, Opened, Row};
use super::{pages, wal};
use crate::events;
use crate::reading::Kind;

/// How many set-aside files are kept next to the queue (oldest deleted first).
const KEEP_SET_ASIDE: usize = 3;

/// What a set-aside did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetAside {
    pub moved_to: PathBuf,
    pub reason: String,
    /// Readings and dead letters carried into the fresh queue.
    pub salvaged: u64,
    /// Of the readings, those found only by reading the leaf pages directly (SQLite could not
    /// reach them through the damaged pages above).
    pub from_pages: u64,
    pub salvaged_dead: u64,
    /// Readings known to have been queued but unreadable (None when the counters were
    /// unreadable too, so nobody can know).
    pub lost: Option<u64>,
}

pub(super) fn utc_stamp() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now())
        .to_string()
        .replace(['-', ':'], "")
}

pub(super) fn with_suffix(p: &Path, suffix: &str) -> PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// Renames the queue files aside, opens a fresh queue and salvages what can be read.
/// `min_next_id`: reading ids handed out so far; new ids continue above it.
pub fn set_aside(path: &Path, reason: &str, min_next_id: i64) -> Result<(Db, SetAside), String> {
    let mut target = with_suffix(path, &format!(".corrupt-{}", utc_stamp()));
    let mut n = 1;
    while target.exists() {
        target = with_suffix(path, &format!(".corrupt-{}-{n}", utc_stamp()));
        n += 1;
    }
    std::fs::rename(path, &target)
        .map_err(|e| format!("cannot move {} aside: {e}", path.display()))?;
    // SQLite finds a WAL by the database's name: keep the pair together.
    for ext in ["-wal", "-shm", "-journal"] {
        let from = with_suffix(path, ext);
        if from.exists() {
            let _ = std::fs::rename(&from, with_suffix(&target, ext));
        }
    }
    prune(path, ".corrupt-");

    let mut fresh = match Db::open(path, Mode::Daemon, false) {
        Ok(Opened::Ok(db)) => db,
        Ok(Opened::Corrupt(e)) => return Err(format!("the fresh queue is unusable: {e}")),
        Err(e) => return Err(format!("cannot create a fresh queue: {e}")),
    };

    let found = read_old(&target);
    let salvaged = found.readings.len() as u64;
    let from_pages = found.from_pages;
    let salvaged_dead = found.dead.len() as u64;
    let lost = found.counters.as_ref().map(|c| {
        let get = |k: &str| c.iter().find(|(n, _)| n == k).map_or(0, |(_, v)| *v);
        let pending = get("enqueued") - get("delivered") - get("dead_lettered") - get("dropped");
        u64::try_from(pending).unwrap_or(0).saturating_sub(salvaged)
    });

    let copy = (|| -> rusqlite::Result<()> {
        fresh.conn.execute_batch("BEGIN IMMEDIATE")?;
        let mut last: std::collections::HashMap<crate::reading::Series, (i64, f64)> =
            Default::default();
        let mut max_id = min_next_id;
        for row in &found.readings {
            let id = fresh.insert_reading(&row.reading, Some(row.id))?;
            max_id = max_id.max(id);
            if row.reading.series.kind == Kind::Reading {
                last.insert(row.reading.series.clone(), (id, row.reading.value));
            }
        }
        for (series, (id, value)) in &last {
            let sid = fresh.series_id(series)?;
            fresh.set_last_value(sid, *value, *id)?;
        }
        for d in &found.dead {
            fresh.insert_dead(d, true)?;
        }
        fresh.bump_sequence(max_id)?;
        match &found.counters {
            Some(counters) => {
                for (name, value) in counters {
                    fresh.add_counter(name, *value)?;
                }
                fresh.add_counter(
                    "dropped",
                    i64::try_from(lost.unwrap_or(0)).unwrap_or(i64::MAX),
                )?;
            }
            None => {
                // Nothing is known of the old history: start the books with what we carry.
                fresh.add_counter("enqueued", (salvaged + salvaged_dead) as i64)?;
                fresh.add_counter("dead_lettered", salvaged_dead as i64)?;
            }
        }
        fresh.add_counter("set_aside", 1)?;
        fresh.add_counter("salvaged", salvaged as i64)?;
        fresh.set_state("last_set_aside", &target.display().to_string())?;
        fresh.conn.execute_batch("COMMIT")
    })();
    if let Err(e) = copy {
        let _ = fresh.conn.execute_batch("ROLLBACK");
        return Err(format!(
            "cannot copy salvaged readings into the fresh queue: {e}"
        ));
    }
    fresh.forget_series_cache();

    let aside = SetAside {
        moved_to: target,
        // One line, whatever the error said (the log is read line by line outside journald).
        reason: reason.lines().map(str::trim).collect::<Vec<_>>().join("; "),
        salvaged,
        from_pages,
        salvaged_dead,
        lost,
    };
    tracing::error!(
        message_id = events::QUEUE_SET_ASIDE,
        moved_to = %aside.moved_to.display(),
        reason = %aside.reason,
        salvaged = aside.salvaged,
        from_pages = aside.from_pages,
        salvaged_dead = aside.salvaged_dead,
        lost = aside.lost.map_or_else(|| "unknown".to_string(), |n| n.to_string()),
        "queue file was corrupt: set aside, readable readings carried into a fresh queue"
    );
    Ok((fresh, aside))
}

struct Found {
    readings: Vec<Row>,
    from_pages: u64,
    dead: Vec<DeadRow>,
    counters: Option<Vec<(String, i64)>>,
}

fn read_old(path: &Path) -> Found {
    let mut found = Found {
        readings: Vec::new(),
        from_pages: 0,
        dead: Vec::new(),
        counters: None,
    };
    // The pages first, before SQLite touches the files: it deletes a log that lies beside an
    // empty file, replays a damaged one only up to the damage, and checkpoints when it closes.
    // Leaves that SQLite cannot reach (damaged schema, root or interior pages, a file cut
    // short, frames beyond a damaged one) still hold readings.
    let log = with_suffix(path, "-wal");
    let summary = wal::check_file(&log).ok();
    let scan = pages::scan_queue(path, summary.as_ref().map(|s| (log.as_path(), s)), None);
    let empty = std::fs::metadata(path).map_or(true, |m| m.len() == 0);
    if empty {
        // SQLite would see a new, empty database (and delete the log): nothing to ask it.
    } else if let Ok(conn) = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    ) {
        let _ = conn.busy_timeout(std::time::Duration::from_secs(1));
        let db = Db::wrap(conn);
        found.counters = db.counters().ok().filter(|c| !c.is_empty());
        found.readings = probe(|after, limit| db.readings_after(after, limit), |r| r.id);
        found.dead = probe(|after, limit| db.dead_after(after, limit), |d| d.id);
    }
    // What SQLite returned wins; the pages add the readings it could not reach.
    let known: std::collections::HashSet<i64> = found.readings.iter().map(|r| r.id).collect();
    let before = found.readings.len();
    found
        .readings
        .extend(scan.rows.into_values().filter(|r| !known.contains(&r.id)));
    found.from_pages = (found.readings.len() - before) as u64;
    if found.from_pages > 0 {
        found.readings.sort_by_key(|r| r.id);
    }
    found
}

/// Carries readings that SQLite cannot see (read from the log's intact frames beyond a damaged
/// one) into the open queue, with their ids, skipping ids the queue holds. The counter updates
/// of their transactions were lost with them, so they are counted as enqueued (and salvaged)
/// here and the books still balance. Returns how many were carried.
pub fn carry_over(db: &mut Db, rows: &[Row]) -> rusqlite::Result<u64> {
    if rows.is_empty() {
        return Ok(0);
    }
    db.conn.execute_batch("BEGIN IMMEDIATE")?;
    let result = (|| -> rusqlite::Result<u64> {
        let mut carried = 0u64;
        let mut max_id = 0;
        for row in rows {
            if db.has_reading(row.id)? {
                continue;
            }
            let id = db.insert_reading(&row.reading, Some(row.id))?;
            max_id = max_id.max(id);
            carried += 1;
            if row.reading.series.kind == Kind::Reading {
                let sid = db.series_id(&row.reading.series)?;
                db.raise_last_value(sid, row.reading.value, id)?;
            }
        }
        db.bump_sequence(max_id)?;
        let n = i64::try_from(carried).unwrap_or(i64::MAX);
        db.add_counter("enqueued", n)?;
        db.add_counter("salvaged", n)?;
        Ok(carried)
    })();
    match result {
        Ok(n) => {
            db.conn.execute_batch("COMMIT")?;
            Ok(n)
        }
        Err(e) => {
            let _ = db.conn.execute_batch("ROLLBACK");
            db.forget_series_cache();
            Err(e)
        }
    }
}

/// Reads rows in id order; on an error, skips forward through the id space with growing steps
/// until rows can be read again. Bounded: at most 64 consecutive failed probes.
fn probe<T>(
    read: impl Fn(i64, usize) -> rusqlite::Result<Vec<T>>,
    id_of: impl Fn(&T) -> i64,
) -> Vec<T> {
    let mut out = Vec::new();
    let mut after = 0i64;
    let mut step = 1i64;
    let mut failures = 0;
    loop {
        match read(after, 256) {
            Ok(rows) if rows.is_empty() => {
                // The end, or a damaged interior page that hides the rest: keep probing a
                // little further only after errors.
                if failures == 0 {
                    break;
                }
                after = after.saturating_add(step);
                step = step.saturating_mul(2);
                failures += 1;
            }
            Ok(rows) => {
                failures = 0;
                step = 1;
                if let Some(last) = rows.last() {
                    after = id_of(last);
                }
                out.extend(rows);
            }
            Err(_) => {
                // Try smaller reads first: one row at a time gets everything before the damage.
                match read(after, 1) {
                    Ok(rows) if !rows.is_empty() => {
                        if let Some(last) = rows.last() {
                            after = id_of(last);
                        }
                        out.extend(rows);
                        continue;
                    }
                    _ => {}
                }
                after = after.saturating_add(step);
                step = step.saturating_mul(2);
                failures += 1;
            }
        }
        if failures > 64 || after == i64::MAX {
            break;
        }
    }
    out
}

/// Keeps only the newest set-aside files: those named `<queue name><infix>…` (`.corrupt-` for
/// set-aside queues with their `-wal`/`-shm`, `-wal.corrupt-` for copies of damaged logs).
pub(super) fn prune(path: &Path, infix: &str) {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return;
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let prefix = format!("{}{infix}", name.to_string_lossy());
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut bases: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name().is_some_and(|n| {
                let n = n.to_string_lossy();
                n.starts_with(&prefix)
                    && !n.ends_with("-wal")
                    && !n.ends_with("-shm")
                    && !n.ends_with("-journal")
            })
        })
        .collect();
    bases.sort();
    while bases.len() > KEEP_SET_ASIDE {
        let old = bases.remove(0);
        for ext in ["", "-wal", "-shm", "-journal"] {
            let _ = std::fs::remove_file(with_suffix(&old, ext));
        }
    }
}
