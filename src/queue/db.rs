//! The SQLite file of the queue: opening with the right pragmas, the versioned schema and its
//! forward migrations, and every SQL statement the queue runs.
//!
//! Everything here is synchronous and runs on one thread at a time (the queue's writer thread,
//! or a CLI command). It never decides policy (when to commit, what to drop, what to do with a
//! disk-full error): `mod.rs` does. Counters are always updated relatively (`value = value + ?`)
//! so that a CLI command writing the same file while the daemon runs never loses an increment.

use std::collections::HashMap;
use std::path::Path;

use rusqlite::{Connection, ErrorCode, OpenFlags, OptionalExtension, TransactionBehavior, params};

use crate::reading::{Kind, Reading, Series};

/// The schema version this binary writes (`PRAGMA user_version`).
pub const SCHEMA_VERSION: i64 = 3;

/// Counter names, in the order `status` shows them.
pub const COUNTERS: &[&str] = &[
    "enqueued",
    "delivered",
    "duplicates",
    "dead_lettered",
    "dropped",
    "retried",
    "unsynced",
    "set_aside",
    "salvaged",
];

/// What an SQLite error means for the caller's next decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// SQLITE_FULL: the disk (or `max_page_count`) is full; hold data in memory and retry.
    Full,
    /// SQLITE_CORRUPT / SQLITE_NOTADB: set the file aside.
    Corrupt,
    /// Another process holds the lock beyond the busy timeout: retry later.
    Busy,
    /// SQLITE_IOERR and anything unexpected: committed data is intact, but we can no longer
    /// know what reached the disk; the process must end (SPEC §5).
    Fatal,
}

pub fn classify(e: &rusqlite::Error) -> Failure {
    match e.sqlite_error_code() {
        Some(ErrorCode::DiskFull) => Failure::Full,
        Some(ErrorCode::DatabaseCorrupt) | Some(ErrorCode::NotADatabase) => Failure::Corrupt,
        Some(ErrorCode::DatabaseBusy) | Some(ErrorCode::DatabaseLocked) => Failure::Busy,
        _ => Failure::Fatal,
    }
}

/// `quick_check`'s findings in one log-friendly line: the first problem and how many more
/// (it can list a hundred, one per line).
pub fn condense(result: &str) -> String {
    let problems: Vec<&str> = result
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("***"))
        .collect();
    match problems.as_slice() {
        [] => result.split_whitespace().collect::<Vec<_>>().join(" "),
        [one] => (*one).to_string(),
        [first, rest @ ..] => format!("{first} (and {} more problems)", rest.len()),
    }
}

/// A reading as stored in the queue.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub id: i64,
    pub reading: Reading,
}

/// A dead letter as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadRow {
    pub id: i64,
    /// The reading's id in the queue when it was dead-lettered (None if refused at commit).
    pub reading_id: Option<i64>,
    pub series: Series,
    pub time: i64,
    /// None when the value was not a finite number.
    pub value: Option<f64>,
    pub unit: Option<String>,
    pub clock_synced: bool,
    pub reason: String,
    pub status: Option<u16>,
    pub body: Option<String>,
    pub dead_at: i64,
}

pub struct Db {
    pub conn: Connection,
    series_ids: HashMap<Series, i64>,
    full_sync: bool,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db")
            .field("series", &self.series_ids.len())
            .finish()
    }
}

fn suit_db(suit: &Option<String>) -> &str {
    suit.as_deref().unwrap_or("")
}

fn suit_opt(s: String) -> Option<String> {
    if s.is_empty() { None } else { Some(s) }
}

fn kind_of(s: &str) -> Kind {
    // Only this module writes the column; an unknown spelling can only come from a damaged
    // file, and sending it as a reading is the conservative choice (it is checked for going
    // backwards).
    Kind::parse(s).unwrap_or(Kind::Reading)
}

/// The outcome of opening a file.
#[derive(Debug)]
pub enum Opened {
    Ok(Db),
    /// The file exists but is not a usable queue: set it aside.
    Corrupt(String),
}

/// How a file is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The daemon: creates and migrates.
    Daemon,
    /// A CLI command that writes: the schema must already be current.
    Tool,
    /// `status`: read-only.
    ReadOnly,
}

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("{0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error(
        "the queue was written by a newer version of enectiva-collector (schema {found}, this binary knows {known}); upgrade this binary"
    )]
    TooNew { found: i64, known: i64 },
    #[error(
        "the queue has schema {found} but this binary writes {known}; start the service once so it migrates the queue"
    )]
    Outdated { found: i64, known: i64 },
    #[error("there is no queue at this path yet")]
    Missing,
}

impl Db {
    /// Wraps a connection as is (salvage reads a set-aside file without checks).
    pub fn wrap(conn: Connection) -> Db {
        Db {
            conn,
            series_ids: HashMap::new(),
            full_sync: true,
        }
    }

    /// Opens (and for the daemon creates and migrates) a queue file.
    pub fn open(path: &Path, mode: Mode, quick_check: bool) -> Result<Opened, OpenError> {
        if mode != Mode::Daemon && !path.exists() {
            return Err(OpenError::Missing);
        }
        let flags = match mode {
            Mode::ReadOnly => OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            Mode::Tool => OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            Mode::Daemon => {
                OpenFlags::SQLITE_OPEN_READ_WRITE
                    | OpenFlags::SQLITE_OPEN_CREATE
                    | OpenFlags::SQLITE_OPEN_NO_MUTEX
            }
        };
        let conn = Connection::open_with_flags(path, flags)?;
        match Self::prepare(conn, mode, quick_check) {
            Ok(db) => Ok(Opened::Ok(db)),
            Err(OpenError::Sqlite(e)) if classify(&e) == Failure::Corrupt => {
                Ok(Opened::Corrupt(e.to_string()))
            }
            Err(e) => Err(e),
        }
    }

    fn prepare(conn: Connection, mode: Mode, quick_check: bool) -> Result<Db, OpenError> {
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        if mode != Mode::ReadOnly {
            // auto_vacuum must be chosen before the first table exists; on an existing file
            // this is a no-op.
            conn.execute_batch("PRAGMA auto_vacuum = INCREMENTAL;")?;
            let jm: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
            if !jm.eq_ignore_ascii_case("wal") {
                return Err(OpenError::Sqlite(rusqlite::Error::InvalidQuery));
            }
            conn.execute_batch(
                "PRAGMA synchronous = FULL;
                 PRAGMA temp_store = MEMORY;
                 PRAGMA journal_size_limit = 4194304;",
            )?;
        }
        // Reading the schema touches page 1: a file that is not a database fails here.
        let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if quick_check {
            let result: String = conn.query_row("PRAGMA quick_check", [], |r| r.get(0))?;
            if result != "ok" {
                return Err(OpenError::Sqlite(rusqlite::Error::SqliteFailure(
                    rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CORRUPT),
                    Some(format!("quick_check: {}", condense(&result))),
                )));
            }
        }
        if version > SCHEMA_VERSION {
            return Err(OpenError::TooNew {
                found: version,
                known: SCHEMA_VERSION,
            });
        }
        let mut db = Db {
            conn,
            series_ids: HashMap::new(),
            full_sync: true,
        };
        if version < SCHEMA_VERSION {
            if mode != Mode::Daemon {
                return Err(OpenError::Outdated {
                    found: version,
                    known: SCHEMA_VERSION,
                });
            }
            db.migrate(version)?;
        }
        if mode == Mode::ReadOnly {
            return Ok(db);
        }
        db.check_tables()?;
        Ok(db)
    }

    /// A file of ours has exactly these tables; anything else is set aside as corrupt.
    fn check_tables(&self) -> Result<(), OpenError> {
        for t in [
            "readings",
            "series",
            "dead_letters",
            "counters",
            "state",
            "meters",
        ] {
            let n: i64 = self.conn.query_row(
                "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = ?1",
                [t],
                |r| r.get(0),
            )?;
            if n != 1 {
                return Err(OpenError::Sqlite(rusqlite::Error::SqliteFailure(
                    rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CORRUPT),
                    Some(format!("table {t} is missing")),
                )));
            }
        }
        Ok(())
    }

    /// Forward migrations, one version at a time, each in its own transaction.
    fn migrate(&mut self, from: i64) -> Result<(), OpenError> {
        if from == 0 {
            let tables: i64 =
                self.conn
                    .query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))?;
            if tables != 0 {
                // A database, but not one of ours (or one whose header was damaged).
                return Err(OpenError::Sqlite(rusqlite::Error::SqliteFailure(
                    rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_NOTADB),
                    Some("not an enectiva-collector queue (unknown tables, user_version 0)".into()),
                )));
            }
        }
        let mut v = from;
        while v < SCHEMA_VERSION {
            let tx = self
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)?;
            match v {
                0 => tx.execute_batch(SCHEMA_V1)?,
                1 => tx.execute_batch(MIGRATE_V1_V2)?,
                2 => tx.execute_batch(MIGRATE_V2_V3)?,
                _ => {}
            }
            v += 1;
            tx.execute_batch(&format!("PRAGMA user_version = {v};"))?;
            tx.commit()?;
        }
        Ok(())
    }

    /// `synchronous=FULL` for transactions that carry new readings, NORMAL for removals and
    /// status only: a removal lost in a power cut costs one resend answered with 409.
    pub fn set_full_sync(&mut self, full: bool) -> rusqlite::Result<()> {
        if self.full_sync != full {
            self.conn.execute_batch(if full {
                "PRAGMA synchronous = FULL"
            } else {
                "PRAGMA synchronous = NORMAL"
            })?;
            self.full_sync = full;
        }
        Ok(())
    }

    pub fn forget_series_cache(&mut self) {
        self.series_ids.clear();
    }

    /// The id of a series row, created on first use. Call inside a transaction.
    pub fn series_id(&mut self, s: &Series) -> rusqlite::Result<i64> {
        if let Some(id) = self.series_ids.get(s) {
            return Ok(*id);
        }
        let kind = s.kind.as_str();
        let suit = suit_db(&s.suit);
        let found: Option<i64> = self
            .conn
            .query_row(
                "SELECT id FROM series WHERE kind = ?1 AND import_id = ?2 AND suit = ?3",
                params![kind, s.import_id, suit],
                |r| r.get(0),
            )
            .optional()?;
        let id = match found {
            Some(id) => id,
            None => {
                self.conn.execute(
                    "INSERT INTO series (kind, import_id, suit) VALUES (?1, ?2, ?3)",
                    params![kind, s.import_id, suit],
                )?;
                self.conn.last_insert_rowid()
            }
        };
        self.series_ids.insert(s.clone(), id);
        Ok(id)
    }

    /// The series id if the series exists (no insert).
    pub fn find_series(&mut self, s: &Series) -> rusqlite::Result<Option<i64>> {
        if let Some(id) = self.series_ids.get(s) {
            return Ok(Some(*id));
        }
        let id: Option<i64> = self
            .conn
            .query_row(
                "SELECT id FROM series WHERE kind = ?1 AND import_id = ?2 AND suit = ?3",
                params![s.kind.as_str(), s.import_id, suit_db(&s.suit)],
                |r| r.get(0),
            )
            .optional()?;
        if let Some(id) = id {
            self.series_ids.insert(s.clone(), id);
        }
        Ok(id)
    }

    pub fn last_value(&self, series_id: i64) -> rusqlite::Result<Option<f64>> {
        // Cached statements: the commit path runs these once per reading.
        self.conn
            .prepare_cached("SELECT last_value FROM series WHERE id = ?1")?
            .query_row([series_id], |r| r.get(0))
            .optional()
            .map(Option::flatten)
    }

    pub fn set_last_value(
        &self,
        series_id: i64,
        value: f64,
        reading_id: i64,
    ) -> rusqlite::Result<()> {
        self.conn
            .prepare_cached("UPDATE series SET last_value = ?2, last_id = ?3 WHERE id = ?1")?
            .execute(params![series_id, value, reading_id])?;
        Ok(())
    }

    /// Whether a reading with this id is queued.
    pub fn has_reading(&self, id: i64) -> rusqlite::Result<bool> {
        self.conn
            .prepare_cached("SELECT 1 FROM readings WHERE id = ?1")?
            .exists([id])
    }

    /// Makes a salvaged reading the series' reference value unless a newer one is.
    pub fn raise_last_value(
        &self,
        series_id: i64,
        value: f64,
        reading_id: i64,
    ) -> rusqlite::Result<()> {
        self.conn.execute(
            "UPDATE series SET last_value = ?2, last_id = ?3
             WHERE id = ?1 AND (last_id IS NULL OR last_id < ?3)",
            params![series_id, value, reading_id],
        )?;
        Ok(())
    }

    /// Inserts a reading; `id` keeps a salvaged reading's original position.
    pub fn insert_reading(&mut self, r: &Reading, id: Option<i64>) -> rusqlite::Result<i64> {
        let series_id = self.series_id(&r.series)?;
        let mut stmt = self.conn.prepare_cached(
            "INSERT INTO readings (id, series_id, kind, import_id, suit, time, value, unit, synced)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        )?;
        stmt.execute(params![
            id,
            series_id,
            r.series.kind.as_str(),
            r.series.import_id,
            suit_db(&r.series.suit),
            r.time,
            r.value,
            r.unit,
            r.clock_synced,
        ])?;
        Ok(self.conn.last_insert_rowid())
    }

    pub fn insert_dead(&mut self, d: &DeadRow, keep_id: bool) -> rusqlite::Result<()> {
        let mut stmt = self.conn.prepare_cached(
            "INSERT INTO dead_letters (id, reading_id, kind, import_id, suit, time, value, unit, synced,
                                       reason, status, body, dead_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
        )?;
        stmt.execute(params![
            if keep_id { Some(d.id) } else { None },
            d.reading_id,
            d.series.kind.as_str(),
            d.series.import_id,
            suit_db(&d.series.suit),
            d.time,
            d.value,
            d.unit,
            d.clock_synced,
            d.reason,
            d.status,
            d.body,
            d.dead_at,
        ])?;
        Ok(())
    }

    /// Moves a queued reading to the dead letters; returns whether it was still queued.
    pub fn dead_letter(
        &mut self,
        id: i64,
        reason: &str,
        status: Option<u16>,
        body: Option<&str>,
        now: i64,
    ) -> rusqlite::Result<bool> {
        let moved = self.conn.prepare_cached(
            "INSERT INTO dead_letters (reading_id, kind, import_id, suit, time, value, unit, synced,
                                       reason, status, body, dead_at)
             SELECT id, kind, import_id, suit, time, value, unit, synced, ?2, ?3, ?4, ?5
             FROM readings WHERE id = ?1",
        )?
        .execute(params![id, reason, status, body, now])?;
        if moved == 0 {
            return Ok(false);
        }
        self.conn
            .prepare_cached("DELETE FROM readings WHERE id = ?1")?
            .execute([id])?;
        Ok(true)
    }

    /// Deletes a delivered reading; returns whether it was still queued.
    pub fn remove(&mut self, id: i64) -> rusqlite::Result<bool> {
        Ok(self
            .conn
            .prepare_cached("DELETE FROM readings WHERE id = ?1")?
            .execute([id])?
            > 0)
    }

    pub fn add_counter(&self, name: &str, delta: i64) -> rusqlite::Result<()> {
        if delta != 0 {
            self.conn
                .prepare_cached(
                    "INSERT INTO counters (name, value) VALUES (?1, ?2)
                     ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
                )?
                .execute(params![name, delta])?;
        }
        Ok(())
    }

    pub fn counters(&self) -> rusqlite::Result<Vec<(String, i64)>> {
        let mut stmt = self.conn.prepare("SELECT name, value FROM counters")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        rows.collect()
    }

    pub fn set_state(&self, key: &str, value: &str) -> rusqlite::Result<()> {
        self.conn
            .prepare_cached(
                "INSERT INTO state (key, value) VALUES (?1, ?2)
                 ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            )?
            .execute(params![key, value])?;
        Ok(())
    }

    pub fn state(&self) -> rusqlite::Result<Vec<(String, String)>> {
        let mut stmt = self
            .conn
            .prepare("SELECT key, value FROM state ORDER BY key")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        rows.collect()
    }

    pub fn get_state(&self, key: &str) -> rusqlite::Result<Option<String>> {
        self.conn
            .query_row("SELECT value FROM state WHERE key = ?1", [key], |r| {
                r.get(0)
            })
            .optional()
    }

    pub fn upsert_meter(&self, m: &super::MeterPoll) -> rusqlite::Result<()> {
        self.conn
            .prepare_cached(
                "INSERT INTO meters (name, bus, time, ok, error, failures, down, crc_errors, garbage_bytes)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
                 ON CONFLICT(name) DO UPDATE SET bus = excluded.bus, time = excluded.time,
                   ok = excluded.ok, error = excluded.error, failures = excluded.failures,
                   down = excluded.down, crc_errors = excluded.crc_errors,
                   garbage_bytes = excluded.garbage_bytes",
            )?
            .execute(params![
                m.meter,
                m.bus,
                m.time,
                m.ok,
                m.error,
                m.failures,
                m.down,
                m.crc_errors,
                m.garbage_bytes
            ])?;
        Ok(())
    }

    pub fn meters(&self) -> rusqlite::Result<Vec<super::MeterPoll>> {
        let mut stmt = self.conn.prepare(
            "SELECT name, bus, time, ok, error, failures, down, crc_errors, garbage_bytes FROM meters ORDER BY bus, name",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(super::MeterPoll {
                meter: r.get(0)?,
                bus: r.get(1)?,
                time: r.get(2)?,
                ok: r.get(3)?,
                error: r.get(4)?,
                failures: r.get(5)?,
                down: r.get(6)?,
                crc_errors: r.get(7)?,
                garbage_bytes: r.get(8)?,
            })
        })?;
        rows.collect()
    }

    pub fn count_readings(&self) -> rusqlite::Result<u64> {
        let n: i64 = self
            .conn
            .query_row("SELECT count(*) FROM readings", [], |r| r.get(0))?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    pub fn max_reading_id(&self) -> rusqlite::Result<i64> {
        // sqlite_sequence remembers ids of rows already deleted, so ids never go back.
        let seq: Option<i64> = self
            .conn
            .query_row(
                "SELECT seq FROM sqlite_sequence WHERE name = 'readings'",
                [],
                |r| r.get(0),
            )
            .optional()?;
        let max: Option<i64> = self
            .conn
            .query_row("SELECT max(id) FROM readings", [], |r| r.get(0))?;
        Ok(seq.unwrap_or(0).max(max.unwrap_or(0)))
    }

    /// Makes the next reading id larger than `id` (after a set-aside, so ids never go back).
    pub fn bump_sequence(&self, id: i64) -> rusqlite::Result<()> {
        let cur = self.max_reading_id()?;
        if id > cur {
            let n = self.conn.execute(
                "UPDATE sqlite_sequence SET seq = ?1 WHERE name = 'readings'",
                [id],
            )?;
            if n == 0 {
                self.conn.execute(
                    "INSERT INTO sqlite_sequence (name, seq) VALUES ('readings', ?1)",
                    [id],
                )?;
            }
        }
        Ok(())
    }

    fn row_to_reading(r: &rusqlite::Row<'_>) -> rusqlite::Result<Row> {
        let kind: String = r.get(1)?;
        let suit: String = r.get(3)?;
        Ok(Row {
            id: r.get(0)?,
            reading: Reading {
                series: Series::new(kind_of(&kind), r.get::<_, String>(2)?, suit_opt(suit)),
                time: r.get(4)?,
                value: r.get::<_, Option<f64>>(5)?.unwrap_or(f64::NAN),
                unit: r.get(6)?,
                clock_synced: r.get(7)?,
                invalid: None,
            },
        })
    }

    const READING_COLUMNS: &'static str = "id, kind, import_id, suit, time, value, unit, synced";

    /// The readings of one series after `after_id`, oldest first.
    pub fn fetch(
        &mut self,
        series: &Series,
        after_id: i64,
        limit: usize,
    ) -> rusqlite::Result<Vec<Row>> {
        let Some(sid) = self.find_series(series)? else {
            return Ok(Vec::new());
        };
        let sql = format!(
            "SELECT {} FROM readings WHERE series_id = ?1 AND id > ?2 ORDER BY id LIMIT ?3",
            Self::READING_COLUMNS
        );
        let mut stmt = self.conn.prepare_cached(&sql)?;
        let rows = stmt.query_map(params![sid, after_id, limit as i64], Self::row_to_reading)?;
        rows.collect()
    }

    /// Readings with id > `after_id`, oldest first (used by salvage and tests).
    pub fn readings_after(&self, after_id: i64, limit: usize) -> rusqlite::Result<Vec<Row>> {
        let sql = format!(
            "SELECT {} FROM readings WHERE id > ?1 ORDER BY id LIMIT ?2",
            Self::READING_COLUMNS
        );
        let mut stmt = self.conn.prepare_cached(&sql)?;
        let rows = stmt.query_map(params![after_id, limit as i64], Self::row_to_reading)?;
        rows.collect()
    }

    /// Every series with queued readings, with the ids of its oldest and newest, oldest first.
    pub fn pending_series(&mut self) -> rusqlite::Result<Vec<super::PendingSeries>> {
        let mut out = Vec::new();
        let all: Vec<(i64, String, String, String)> = {
            let mut stmt = self
                .conn
                .prepare_cached("SELECT id, kind, import_id, suit FROM series")?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?;
            rows.collect::<rusqlite::Result<_>>()?
        };
        // Two index lookups per series: O(series × log n), whatever the backlog.
        let mut first = self
            .conn
            .prepare_cached("SELECT min(id), max(id) FROM readings WHERE series_id = ?1")?;
        for (sid, kind, import_id, suit) in all {
            let (min, max): (Option<i64>, Option<i64>) =
                first.query_row([sid], |r| Ok((r.get(0)?, r.get(1)?)))?;
            if let (Some(first_id), Some(last_id)) = (min, max) {
                let s = Series::new(kind_of(&kind), import_id, suit_opt(suit));
                self.series_ids.insert(s.clone(), sid);
                out.push(super::PendingSeries {
                    series: s,
                    first_id,
                    last_id,
                });
            }
        }
        out.sort_by_key(|p| p.first_id);
        Ok(out)
    }

    /// The series with readings above `after_id`, with the ids of the oldest and newest of
    /// those, oldest first: a range scan of the rowid over the new rows only.
    pub fn pending_since(&mut self, after_id: i64) -> rusqlite::Result<Vec<super::PendingSeries>> {
        let rows: Vec<(i64, i64, i64, String, String, String)> = {
            let mut stmt = self.conn.prepare_cached(
                "SELECT n.series_id, n.first_id, n.last_id, s.kind, s.import_id, s.suit
                 FROM (SELECT series_id, min(id) AS first_id, max(id) AS last_id
                       FROM readings WHERE id > ?1 GROUP BY series_id) AS n
                 JOIN series AS s ON s.id = n.series_id",
            )?;
            let rows = stmt.query_map([after_id], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                ))
            })?;
            rows.collect::<rusqlite::Result<_>>()?
        };
        let mut out = Vec::with_capacity(rows.len());
        for (sid, first_id, last_id, kind, import_id, suit) in rows {
            let s = Series::new(kind_of(&kind), import_id, suit_opt(suit));
            self.series_ids.insert(s.clone(), sid);
            out.push(super::PendingSeries {
                series: s,
                first_id,
                last_id,
            });
        }
        out.sort_by_key(|p| p.first_id);
        Ok(out)
    }

    /// Drops up to `n` of the oldest queued readings of one kind; returns how many.
    pub fn drop_oldest(&self, kind: Kind, n: u64) -> rusqlite::Result<u64> {
        if n == 0 {
            return Ok(0);
        }
        let dropped = self.conn.execute(
            "DELETE FROM readings WHERE id IN
               (SELECT id FROM readings WHERE series_id IN (SELECT id FROM series WHERE kind = ?1)
                ORDER BY id LIMIT ?2)",
            params![kind.as_str(), i64::try_from(n).unwrap_or(i64::MAX)],
        )?;
        Ok(dropped as u64)
    }

    /// Drops readings taken before `cutoff` among the oldest `scan` rows (ids follow time
    /// closely, so old readings sit at the head; scanning the head keeps this O(scan) instead
    /// of a full-table scan on a 5-million-row queue). Returns how many were dropped.
    pub fn drop_older_than(&self, cutoff: i64, scan: usize) -> rusqlite::Result<u64> {
        let n = self.conn.execute(
            "DELETE FROM readings WHERE id IN
               (SELECT id FROM (SELECT id, time FROM readings ORDER BY id LIMIT ?2) WHERE time < ?1)",
            params![cutoff, scan as i64],
        )?;
        Ok(n as u64)
    }

    pub fn dead_letters(&self) -> rusqlite::Result<Vec<DeadRow>> {
        let mut stmt = self.conn.prepare(
            "SELECT id, reading_id, kind, import_id, suit, time, value, unit, synced, reason, status, body, dead_at
             FROM dead_letters ORDER BY id",
        )?;
        let rows = stmt.query_map([], Self::row_to_dead)?;
        rows.collect()
    }

    pub fn dead_after(&self, after_id: i64, limit: usize) -> rusqlite::Result<Vec<DeadRow>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT id, reading_id, kind, import_id, suit, time, value, unit, synced, reason, status, body, dead_at
             FROM dead_letters WHERE id > ?1 ORDER BY id LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![after_id, limit as i64], Self::row_to_dead)?;
        rows.collect()
    }

    fn row_to_dead(r: &rusqlite::Row<'_>) -> rusqlite::Result<DeadRow> {
        let kind: String = r.get(2)?;
        let suit: String = r.get(4)?;
        Ok(DeadRow {
            id: r.get(0)?,
            reading_id: r.get(1)?,
            series: Series::new(kind_of(&kind), r.get::<_, String>(3)?, suit_opt(suit)),
            time: r.get(5)?,
            value: r.get(6)?,
            unit: r.get(7)?,
            clock_synced: r.get(8)?,
            reason: r.get(9)?,
            status: r.get(10)?,
            body: r.get(11)?,
            dead_at: r.get(12)?,
        })
    }

    pub fn delete_dead(&self, id: i64) -> rusqlite::Result<bool> {
        Ok(self
            .conn
            .execute("DELETE FROM dead_letters WHERE id = ?1", [id])?
            > 0)
    }

    /// Frees pages left by a drained backlog, a little at a time, when the free list is large.
    pub fn incremental_vacuum(&self) -> rusqlite::Result<()> {
        let free: i64 = self
            .conn
            .query_row("PRAGMA freelist_count", [], |r| r.get(0))?;
        let pages: i64 = self.conn.query_row("PRAGMA page_count", [], |r| r.get(0))?;
        if free > 4096 && free * 4 > pages {
            self.conn.execute_batch("PRAGMA incremental_vacuum(1024)")?;
        }
        Ok(())
    }
}

/// Schema version 1: the queue proper.
const SCHEMA_V1: &str = "
CREATE TABLE series (
    id         INTEGER PRIMARY KEY,
    kind       TEXT NOT NULL,
    import_id  TEXT NOT NULL,
    suit       TEXT NOT NULL DEFAULT '',
    last_value REAL,
    last_id    INTEGER,
    UNIQUE (kind, import_id, suit)
);
-- Identity is stored with every reading (not only through series_id) so that a damaged
-- series table never makes a salvaged reading unattributable.
CREATE TABLE readings (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    series_id INTEGER NOT NULL,
    kind      TEXT NOT NULL,
    import_id TEXT NOT NULL,
    suit      TEXT NOT NULL DEFAULT '',
    time      INTEGER NOT NULL,
    value     REAL NOT NULL,
    unit      TEXT,
    synced    INTEGER NOT NULL
);
CREATE INDEX readings_by_series ON readings (series_id, id);
CREATE TABLE dead_letters (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    reading_id INTEGER,
    kind       TEXT NOT NULL,
    import_id  TEXT NOT NULL,
    suit       TEXT NOT NULL DEFAULT '',
    time       INTEGER NOT NULL,
    value      REAL,
    unit       TEXT,
    synced     INTEGER NOT NULL,
    reason     TEXT NOT NULL,
    status     INTEGER,
    body       TEXT,
    dead_at    INTEGER NOT NULL
);
CREATE TABLE counters (
    name  TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
";

/// Version 2 adds what `status` shows besides the queue: operational state and the last poll of
/// each meter.
const MIGRATE_V1_V2: &str = "
CREATE TABLE state (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE meters (
    name     TEXT PRIMARY KEY,
    bus      TEXT NOT NULL,
    time     INTEGER NOT NULL,
    ok       INTEGER NOT NULL,
    error    TEXT,
    failures INTEGER NOT NULL DEFAULT 0,
    down     INTEGER NOT NULL DEFAULT 0
);
";

/// Version 3 counts line errors per meter (serial buses: garbage bytes, bad-CRC frames).
const MIGRATE_V2_V3: &str = "
ALTER TABLE meters ADD COLUMN crc_errors INTEGER NOT NULL DEFAULT 0;
ALTER TABLE meters ADD COLUMN garbage_bytes INTEGER NOT NULL DEFAULT 0;
";

/// Creates a file at schema version 1 only (for the migration test).
#[cfg(test)]
pub fn create_v1(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.execute_batch("PRAGMA journal_mode = WAL;")?;
    conn.execute_batch(SCHEMA_V1)?;
    conn.execute_batch("PRAGMA user_version = 1;")?;
    Ok(conn)
}
