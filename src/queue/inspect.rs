//! The queue as the operator tools see it: `status` (read-only, works while the daemon runs)
//! and `dead list|retry|purge` (short write transactions beside the running daemon).
//!
//! Tools never set a file aside or migrate it: that is the daemon's job. Every file a tool's
//! write creates next to the queue (`-wal`, `-shm`) is handed to the queue file's owner, so a
//! command run as root never locks the service out.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::db::{Db, DeadRow, Mode, OpenError, Opened};
use super::{MeterPoll, QueueError, now_unix};
use crate::reading::Kind;

/// Pending readings of one series.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SeriesStatus {
    pub kind: String,
    pub import_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub suit: Option<String>,
    pub pending: u64,
    /// Unix seconds of the oldest pending reading.
    pub oldest_time: i64,
}

/// What `status` shows.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Status {
    pub queue: PathBuf,
    pub schema_version: i64,
    pub pending: u64,
    pub oldest_time: Option<i64>,
    pub unsynced_pending: u64,
    pub dead_letters: u64,
    pub series: Vec<SeriesStatus>,
    pub counters: BTreeMap<String, i64>,
    pub state: BTreeMap<String, String>,
    pub meters: Vec<MeterPoll>,
}

fn tool_error(path: &Path, e: impl std::fmt::Display) -> QueueError {
    QueueError::Open {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

fn open(path: &Path, mode: Mode) -> Result<Db, QueueError> {
    match Db::open(path, mode, false) {
        Ok(Opened::Ok(db)) => Ok(db),
        Ok(Opened::Corrupt(e)) => Err(tool_error(
            path,
            format!(
                "{e}: the file is damaged; the service sets it aside and salvages it when it starts"
            ),
        )),
        Err(OpenError::Missing) => Err(tool_error(
            path,
            "there is no queue file here yet (the service creates it when it starts; check [queue] path)",
        )),
        Err(e) => Err(tool_error(path, e)),
    }
}

/// Reads the queue for `status`.
pub fn status(path: &Path) -> Result<Status, QueueError> {
    let db = open(path, Mode::ReadOnly)?;
    let q = |e: rusqlite::Error| tool_error(path, e);
    let schema_version: i64 = db
        .conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(q)?;
    let mut series = Vec::new();
    {
        let mut stmt = db
            .conn
            .prepare(
                "SELECT kind, import_id, suit, count(*), min(time) FROM readings
                 GROUP BY series_id ORDER BY min(id)",
            )
            .map_err(q)?;
        let rows = stmt
            .query_map([], |r| {
                let suit: String = r.get(2)?;
                Ok(SeriesStatus {
                    kind: r.get(0)?,
                    import_id: r.get(1)?,
                    suit: (!suit.is_empty()).then_some(suit),
                    pending: r.get::<_, i64>(3)?.max(0) as u64,
                    oldest_time: r.get(4)?,
                })
            })
            .map_err(q)?;
        for row in rows {
            series.push(row.map_err(q)?);
        }
    }
    let pending = series.iter().map(|s| s.pending).sum();
    let oldest_time = series.iter().map(|s| s.oldest_time).min();
    let unsynced: i64 = db
        .conn
        .query_row("SELECT count(*) FROM readings WHERE synced = 0", [], |r| {
            r.get(0)
        })
        .map_err(q)?;
    let dead: i64 = db
        .conn
        .query_row("SELECT count(*) FROM dead_letters", [], |r| r.get(0))
        .map_err(q)?;
    let mut counters: BTreeMap<String, i64> =
        super::COUNTERS.iter().map(|c| (c.to_string(), 0)).collect();
    counters.extend(db.counters().map_err(q)?);
    let state = db.state().map_err(q)?.into_iter().collect();
    let meters = db.meters().map_err(q)?;
    Ok(Status {
        queue: path.to_path_buf(),
        schema_version,
        pending,
        oldest_time,
        unsynced_pending: unsynced.max(0) as u64,
        dead_letters: dead.max(0) as u64,
        series,
        counters,
        state,
        meters,
    })
}

/// Which dead letters a command acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeadSelection {
    All,
    Ids(Vec<i64>),
}

impl DeadSelection {
    fn matches(&self, id: i64) -> bool {
        match self {
            DeadSelection::All => true,
            DeadSelection::Ids(ids) => ids.contains(&id),
        }
    }

    fn missing(&self, rows: &[DeadRow]) -> Vec<i64> {
        match self {
            DeadSelection::All => Vec::new(),
            DeadSelection::Ids(ids) => ids
                .iter()
                .copied()
                .filter(|id| !rows.iter().any(|r| r.id == *id))
                .collect(),
        }
    }
}

pub fn dead_list(path: &Path) -> Result<Vec<DeadRow>, QueueError> {
    let db = open(path, Mode::ReadOnly)?;
    db.dead_letters().map_err(|e| tool_error(path, e))
}

/// Requeues dead letters in their original order (by reading time, then id) at the end of
/// their series. Returns the requeued rows and the requested ids that do not exist.
///
/// The operator confirms the values, so they are not checked for plausibility again, and a
/// requeued cumulative reading becomes its series' reference value: after a meter swap,
/// retrying the first readings of the new meter lets the following ones through.
pub fn dead_retry(
    path: &Path,
    sel: &DeadSelection,
) -> Result<(Vec<DeadRow>, Vec<i64>), QueueError> {
    let result = write(path, |db| {
        let mut rows: Vec<DeadRow> = db
            .dead_letters()?
            .into_iter()
            .filter(|d| sel.matches(d.id))
            .collect();
        let missing = sel.missing(&rows);
        rows.sort_by_key(|d| (d.time, d.id));
        let mut n = 0i64;
        for d in &rows {
            let value = d.value.unwrap_or(f64::NAN);
            if !value.is_finite() {
                // A NaN cannot be sent, confirmed or not: it stays a dead letter.
                continue;
            }
            let reading = crate::reading::Reading {
                series: d.series.clone(),
                time: d.time,
                value,
                unit: d.unit.clone(),
                clock_synced: d.clock_synced,
                invalid: None,
            };
            let id = db.insert_reading(&reading, None)?;
            if d.series.kind == Kind::Reading {
                let sid = db.series_id(&d.series)?;
                db.set_last_value(sid, value, id)?;
            }
            db.delete_dead(d.id)?;
            n += 1;
        }
        db.add_counter("retried", n)?;
        db.add_counter("enqueued", n)?;
        rows.retain(|d| d.value.is_some_and(f64::is_finite));
        Ok((rows, missing))
    })?;
    Ok(result)
}

/// Deletes dead letters. Returns the deleted rows and the requested ids that do not exist.
pub fn dead_purge(
    path: &Path,
    sel: &DeadSelection,
) -> Result<(Vec<DeadRow>, Vec<i64>), QueueError> {
    write(path, |db| {
        let rows: Vec<DeadRow> = db
            .dead_letters()?
            .into_iter()
            .filter(|d| sel.matches(d.id))
            .collect();
        let missing = sel.missing(&rows);
        for d in &rows {
            db.delete_dead(d.id)?;
        }
        Ok((rows, missing))
    })
}

/// Runs one write transaction for a tool, then hands created files to the queue's owner.
fn write<T>(path: &Path, f: impl FnOnce(&mut Db) -> rusqlite::Result<T>) -> Result<T, QueueError> {
    let mut db = open(path, Mode::Tool)?;
    let q = |e: rusqlite::Error| tool_error(path, e);
    // Readings requeued by a tool must be as durable as any other.
    db.set_full_sync(true).map_err(q)?;
    db.conn.execute_batch("BEGIN IMMEDIATE").map_err(q)?;
    let out = match f(&mut db) {
        Ok(v) => v,
        Err(e) => {
            let _ = db.conn.execute_batch("ROLLBACK");
            return Err(q(e));
        }
    };
    db.set_state("last_tool_write", &now_unix().to_string())
        .map_err(q)?;
    db.conn.execute_batch("COMMIT").map_err(q)?;
    // The -shm file exists while any connection is open; fix ownership before and after close.
    fix_ownership(path);
    drop(db);
    fix_ownership(path);
    Ok(out)
}

/// Gives `-wal`, `-shm` and `-journal` files next to the queue the owner and group of the queue
/// file itself. Only root can change owners; for anyone else the files are theirs already.
pub fn fix_ownership(path: &Path) {
    let Ok(meta) = std::fs::metadata(path) else {
        return;
    };
    let (uid, gid) = (meta.uid(), meta.gid());
    for ext in ["-wal", "-shm", "-journal"] {
        let mut p = path.as_os_str().to_owned();
        p.push(ext);
        let p = PathBuf::from(p);
        if let Ok(m) = std::fs::metadata(&p) {
            if m.uid() != uid || m.gid() != gid {
                if let Err(e) = std::os::unix::fs::chown(&p, Some(uid), Some(gid)) {
                    tracing::warn!(file = %p.display(), error = %e, "cannot give the file to the queue's owner");
                }
            }
        }
    }
}
