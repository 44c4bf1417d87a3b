//! Checking the queue's write-ahead log before SQLite opens it (SPEC §5, reliability promise
//! R8). SQLite replays a WAL frame by frame and stops, without any error, at the first frame
//! whose salts or cumulative checksum do not match; when the header's own checksum fails it
//! ignores the whole log. Transactions committed after a damaged frame therefore vanish
//! silently. [`check`] reads the log as SQLite's recovery does (format: "WAL file format" in
//! <https://www.sqlite.org/fileformat2.html>) and tells damage apart from what SQLite normally
//! leaves behind: the frames of a transaction that never committed, and frames of an earlier
//! round of a log that was reset after a checkpoint (they carry other salts). Damage means a
//! commit frame of the current round lies beyond what SQLite will replay. [`check`] also checks
//! every frame on its own (its checksum seeded with the one stored just before it), so the
//! frames after a damaged one can still be trusted and salvaged (`pages.rs`). [`inspect`] runs
//! the check on the queue's `-wal` before SQLite opens it, reads the readings of the lost
//! transactions from those frames and keeps a copy of the damaged log; the queue then opens
//! normally (SQLite uses the valid prefix; `quick_check` runs and sets aside a file the prefix
//! leaves inconsistent), the readings are carried into it, and the loss is logged with
//! `QUEUE_WAL_DAMAGED`. Parsing never panics, whatever the bytes.

use std::collections::BTreeMap;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use super::db::Row;
use super::pages;
use super::salvage::{prune, utc_stamp, with_suffix};
use crate::events;

/// Bytes of the log header and of each frame header.
pub const HEADER: usize = 32;
pub const FRAME_HEADER: usize = 24;
/// Magic numbers: the low bit says whether checksums read the data as big-endian words.
const MAGIC_LE: u32 = 0x377f_0682;
const MAGIC_BE: u32 = 0x377f_0683;
/// The only format version SQLite writes; a valid header with another one makes SQLite refuse
/// to open the database (`SQLITE_CANTOPEN`).
const VERSION: u32 = 3_007_000;

/// What a log holds, as SQLite's recovery will read it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    /// Page size from the header (0 when the header is unusable).
    pub page_size: u32,
    /// Complete frames in the file.
    pub frames: u64,
    /// Frames SQLite replays (up to its last valid commit frame), and the commits among them.
    pub frames_used: u64,
    pub commits_used: u64,
    pub damage: Option<Damage>,
    /// The newest copy of each page in a frame that checks out on its own (the round's salts,
    /// and its checksum seeded with the one stored just before it) and belongs to a
    /// transaction whose commit frame checks out too: page number → frame index. Beside a
    /// sound log these are exactly the pages SQLite replays; after damage they also hold the
    /// transactions committed beyond it, which salvage reads without SQLite.
    pub trusted: BTreeMap<u32, u64>,
    /// The database size in pages from the last of those commit frames.
    pub db_pages: Option<u32>,
}

impl Summary {
    /// Where the page of frame `index` starts in the log.
    pub fn page_offset(&self, index: u64) -> u64 {
        let page = if self.page_size == 0 {
            QUEUE_PAGE_SIZE
        } else {
            self.page_size
        };
        HEADER as u64 + index * (FRAME_HEADER as u64 + u64::from(page)) + FRAME_HEADER as u64
    }
}

/// Committed transactions SQLite will not replay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    /// The first unreadable frame (0-based); `None` when the header is damaged, so that SQLite
    /// ignores the whole log.
    pub first_bad_frame: Option<u64>,
    /// Frames of the current round that SQLite ignores, and the commit frames among them (one
    /// per committed transaction whose readings are lost).
    pub frames_lost: u64,
    pub commits_lost: u64,
    /// Bytes after the header when the header is too damaged to find frames in them.
    pub bytes_unparsed: u64,
    /// SQLite refuses to open the database beside this log: it must be moved away, not copied.
    pub refused: bool,
}

impl Damage {
    /// One sentence for the log.
    pub fn describe(&self) -> String {
        let lost = if self.bytes_unparsed > 0 {
            format!(
                "{} bytes of frames, {} committed transactions among them",
                self.bytes_unparsed, self.commits_lost
            )
        } else {
            format!(
                "{} frames holding {} committed transactions",
                self.frames_lost, self.commits_lost
            )
        };
        match self.first_bad_frame {
            Some(i) => format!(
                "frame {} of the write-ahead log is damaged: SQLite ignores it and everything after it ({lost})",
                i + 1
            ),
            None if self.refused => format!(
                "the write-ahead log has an unknown format version: SQLite refuses it, so it is moved away ({lost})"
            ),
            None if self.bytes_unparsed > 0 => format!(
                "the write-ahead log header has no valid page size: SQLite ignores the whole log ({lost})"
            ),
            None => format!(
                "the write-ahead log header is damaged: SQLite ignores the whole log ({lost})"
            ),
        }
    }
}

fn be32(b: &[u8], at: usize) -> u32 {
    match b.get(at..at + 4) {
        Some(&[a, b, c, d]) => u32::from_be_bytes([a, b, c, d]),
        _ => 0,
    }
}

/// SQLite's cumulative checksum (`walChecksumBytes`): pairs of 32-bit words, read big-endian
/// when `big` (magic 0x377f0683) and little-endian otherwise, added Fletcher-style onto `seed`.
/// A trailing part shorter than 8 bytes is ignored (SQLite only checksums multiples of 8).
pub fn checksum(data: &[u8], big: bool, seed: (u32, u32)) -> (u32, u32) {
    let word = |w: [u8; 4]| {
        if big {
            u32::from_be_bytes(w)
        } else {
            u32::from_le_bytes(w)
        }
    };
    let (mut s1, mut s2) = seed;
    for pair in data.chunks_exact(8) {
        if let &[a0, a1, a2, a3, b0, b1, b2, b3] = pair {
            s1 = s1.wrapping_add(word([a0, a1, a2, a3])).wrapping_add(s2);
            s2 = s2.wrapping_add(word([b0, b1, b2, b3])).wrapping_add(s1);
        }
    }
    (s1, s2)
}

/// Reads until `buf` is full or the input ends; returns how many bytes were read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// The queue's page size, used to find frames when the header's own is unreadable.
const QUEUE_PAGE_SIZE: u32 = 4096;

/// Reads a whole log (streaming, one frame in memory) and says what SQLite will make of it,
/// and which frames can still be trusted on their own.
pub fn check(mut r: impl Read) -> io::Result<Summary> {
    let mut hdr = [0u8; HEADER];
    if read_full(&mut r, &mut hdr)? < HEADER {
        // SQLite ignores a log without a complete header; nothing was ever committed in it.
        return Ok(Summary::default());
    }
    let magic = be32(&hdr, 0);
    let header_size = be32(&hdr, 8);
    let big = magic == MAGIC_BE;
    let magic_ok = magic == MAGIC_LE || magic == MAGIC_BE;
    let size_ok = header_size.is_power_of_two() && (512..=65536).contains(&header_size);
    // With an unreadable page size SQLite ignores the log; frames are still looked for at
    // the queue's page size, so that what they hold can be salvaged.
    let page_size = if size_ok {
        header_size
    } else {
        QUEUE_PAGE_SIZE
    };
    let header_sum = checksum(&hdr[..24], big, (0, 0));
    let stored_header_sum = (be32(&hdr, 24), be32(&hdr, 28));
    let header_ok = magic_ok && size_ok && header_sum == stored_header_sum;
    let salts = [
        hdr[16], hdr[17], hdr[18], hdr[19], hdr[20], hdr[21], hdr[22], hdr[23],
    ];

    let frame_len = FRAME_HEADER + page_size as usize;
    let mut buf = vec![0u8; frame_len];
    // With a damaged header the round is the one of the first frame (always the newest).
    let mut round: Option<[u8; 8]> = header_ok.then_some(salts);
    let mut chain = header_ok.then_some(header_sum);
    let mut s = Summary {
        page_size: if size_ok { page_size } else { 0 },
        ..Summary::default()
    };
    let (mut valid, mut later_frames, mut later_commits) = (0u64, 0u64, 0u64);
    let mut first_bad = None;
    let mut bad_in_round = false;
    // Frame by frame on its own: seeded with the checksum stored before it (the previous
    // frame's, or the header's, stored or recomputed), so one damaged frame does not take the
    // trust of every later one with it.
    let mut seeds = [stored_header_sum, header_sum];
    let mut uncommitted: Vec<(u32, u64)> = Vec::new();
    let mut bytes = 0u64;
    loop {
        let n = read_full(&mut r, &mut buf)?;
        bytes += n as u64;
        if n < frame_len {
            break;
        }
        let index = s.frames;
        s.frames += 1;
        let frame_salts = [
            buf[8], buf[9], buf[10], buf[11], buf[12], buf[13], buf[14], buf[15],
        ];
        let pgno = be32(&buf, 0);
        let commit = be32(&buf, 4);
        let stored = (be32(&buf, 16), be32(&buf, 20));
        let round = *round.get_or_insert(frame_salts);
        let in_round = frame_salts == round;
        let body = |seed| checksum(&buf[FRAME_HEADER..], big, checksum(&buf[..8], big, seed));
        let sound = in_round && pgno != 0 && seeds.iter().any(|seed| body(*seed) == stored);
        seeds = [stored, stored];
        if sound {
            uncommitted.push((pgno, index));
            if commit != 0 {
                s.trusted.extend(uncommitted.drain(..));
                s.db_pages = Some(commit);
            }
        }
        if let Some(seed) = chain {
            let sum = body(seed);
            if in_round && pgno != 0 && sum == stored {
                chain = Some(sum);
                valid += 1;
                if commit != 0 {
                    s.frames_used = valid;
                    s.commits_used += 1;
                }
                continue;
            }
            chain = None;
            first_bad = Some(index);
            bad_in_round = in_round;
        }
        if in_round {
            later_frames += 1;
            later_commits += u64::from(commit != 0);
        }
    }
    // Frames of this round beyond the first bad one: without them the bad frame is the
    // torn end of an append, which SQLite expects after a crash. (A bad frame inside the last
    // transaction, before its commit frame, counts as damage: that transaction's COMMIT may
    // have returned.)
    let beyond_bad = later_frames.saturating_sub(u64::from(bad_in_round));
    let frames_lost = valid - s.frames_used + later_frames;
    let version_ok = be32(&hdr, 4) == VERSION;
    s.damage = if !size_ok {
        // SQLite cannot even find the frames: all of them are lost to it.
        (bytes >= (FRAME_HEADER + 512) as u64).then_some(Damage {
            first_bad_frame: None,
            frames_lost: s.frames,
            commits_lost: later_commits,
            bytes_unparsed: bytes,
            refused: false,
        })
    } else if header_ok && !version_ok {
        // SQLite refuses the log (and the database with it) whatever its frames hold.
        Some(Damage {
            first_bad_frame: None,
            frames_lost: s.frames,
            commits_lost: s.commits_used + later_commits,
            bytes_unparsed: 0,
            refused: true,
        })
    } else if later_commits > 0 && beyond_bad > 0 {
        Some(Damage {
            first_bad_frame: if header_ok { first_bad } else { None },
            frames_lost,
            commits_lost: later_commits,
            bytes_unparsed: 0,
            refused: false,
        })
    } else {
        None
    };
    if !header_ok || !version_ok {
        s.frames_used = 0;
        s.commits_used = 0;
    }
    Ok(s)
}

/// Checks a log file; see [`check`].
pub fn check_file(path: &Path) -> io::Result<Summary> {
    check(io::BufReader::with_capacity(
        64 * 1024,
        std::fs::File::open(path)?,
    ))
}

/// Damage found in the queue's log before it was opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalDamage {
    pub damage: Damage,
    /// Where the damaged log was copied (or moved, when SQLite would refuse it); `None` when
    /// that failed.
    pub kept: Option<PathBuf>,
    /// Frames SQLite replays (and the commits among them).
    pub frames_used: u64,
    /// What became of the readings of the lost transactions.
    pub recovered: Recovered,
}

/// What became of the readings in a damaged log's intact frames beyond the damage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recovered {
    /// Not known yet: the queue has not been opened.
    Pending,
    /// This many were carried into the queue (the others were there already).
    Carried(u64),
    /// The queue file was corrupt and set aside; its salvage read the log's frames too.
    SetAside,
    /// The queue could not be opened or written: nothing was carried (the copy is kept).
    Failed,
}

impl WalDamage {
    /// Logs the event (ERROR, `QUEUE_WAL_DAMAGED`): the loss SQLite would have made silently.
    pub fn log(&self) {
        let (recovered, what) = match self.recovered {
            Recovered::Carried(n) => (
                n.to_string(),
                "readings of those transactions found in the log's intact frames were kept in the queue (recovered), the rest is lost",
            ),
            Recovered::SetAside => (
                "-".to_string(),
                "the queue file was set aside too; its salvage read the log's intact frames",
            ),
            Recovered::Pending | Recovered::Failed => (
                "0".to_string(),
                "the readings of those transactions are lost unless a checkpoint had already copied them into the queue file",
            ),
        };
        tracing::error!(
            message_id = events::QUEUE_WAL_DAMAGED,
            kept = %self.kept.as_ref().map_or_else(|| "-".to_string(), |p| p.display().to_string()),
            first_bad_frame = self.damage.first_bad_frame.map_or(0, |i| i + 1),
            frames_lost = self.damage.frames_lost,
            commits_lost = self.damage.commits_lost,
            frames_used = self.frames_used,
            recovered = %recovered,
            "{}; {what}",
            self.damage.describe()
        );
    }
}

/// What [`inspect`] found: the damage, and the readings in the trusted frames SQLite will not
/// replay (read before anything touches the log).
#[derive(Debug)]
pub struct Inspected {
    pub damage: WalDamage,
    pub rows: Vec<Row>,
}

/// Checks the `-wal` of the queue at `queue` before SQLite opens it. On damage, reads the
/// readings in the frames SQLite will not replay but that check out on their own, and keeps
/// the log as `<queue>-wal.corrupt-<UTC>` (the newest three are kept). Logging is the caller's
/// ([`WalDamage::log`]), once it knows what became of those readings. An unreadable log is
/// only warned about: SQLite will report it when it opens the queue.
pub fn inspect(queue: &Path) -> Option<Inspected> {
    let wal = with_suffix(queue, "-wal");
    if std::fs::metadata(&wal).map_or(0, |m| m.len()) == 0 {
        return None;
    }
    let summary = match check_file(&wal) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(path = %wal.display(), error = %e, "cannot read the queue's write-ahead log to check it");
            return None;
        }
    };
    let damage = summary.damage.clone()?;
    let rows = pages::scan_queue(queue, Some((&wal, &summary)), Some(summary.frames_used))
        .rows
        .into_values()
        .collect();
    let mut target = with_suffix(queue, &format!("-wal.corrupt-{}", utc_stamp()));
    let mut n = 1;
    while target.exists() && n < 1000 {
        target = with_suffix(queue, &format!("-wal.corrupt-{}-{n}", utc_stamp()));
        n += 1;
    }
    let kept = if damage.refused {
        std::fs::rename(&wal, &target)
    } else {
        std::fs::copy(&wal, &target).map(|_| ())
    };
    let kept = match kept {
        Ok(()) => Some(target),
        Err(e) => {
            tracing::warn!(path = %wal.display(), error = %e, "cannot keep a copy of the damaged write-ahead log");
            if damage.refused {
                // SQLite would refuse to open the queue beside it: it has to go.
                let _ = std::fs::remove_file(&wal);
            }
            None
        }
    };
    prune(queue, "-wal.corrupt-");
    Some(Inspected {
        damage: WalDamage {
            damage,
            kept,
            frames_used: summary.frames_used,
            recovered: Recovered::Pending,
        },
        rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rusqlite::Connection;

    /// A database in WAL mode that never checkpoints, with `txns` transactions of `rows`
    /// rows each (plus the table's creation); returns the connection (kept open so the log
    /// stays) and the log's bytes.
    fn make(dir: &Path, txns: usize, rows: usize) -> (Connection, Vec<u8>) {
        let path = dir.join("q.db");
        let conn = Connection::open(&path).expect("open");
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA wal_autocheckpoint = 0;
             CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT);",
        )
        .expect("schema");
        for t in 0..txns {
            conn.execute_batch("BEGIN").expect("begin");
            for r in 0..rows {
                conn.execute(
                    "INSERT INTO t (v) VALUES (?1)",
                    [format!("{t}-{r}-{}", "x".repeat(200))],
                )
                .expect("insert");
            }
            conn.execute_batch("COMMIT").expect("commit");
        }
        let wal = std::fs::read(dir.join("q.db-wal")).expect("wal");
        (conn, wal)
    }

    /// Copies the database and the given log bytes into a fresh directory; counts the rows
    /// SQLite sees there.
    fn rows_seen(dir: &Path, wal: &[u8]) -> i64 {
        let other = tempfile::tempdir().expect("tempdir");
        std::fs::copy(dir.join("q.db"), other.path().join("q.db")).expect("copy");
        std::fs::write(other.path().join("q.db-wal"), wal).expect("wal");
        let conn = Connection::open(other.path().join("q.db")).expect("open");
        conn.query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap_or(-1)
    }

    fn frame_offset(s: &Summary, i: u64) -> usize {
        HEADER + i as usize * (FRAME_HEADER + s.page_size as usize)
    }

    #[test]
    fn a_sound_log_verifies_every_frame() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (_conn, wal) = make(dir.path(), 5, 30);
        let s = check(&wal[..]).expect("check");
        assert_eq!(s.page_size, 4096);
        assert!(s.frames >= 10, "{s:?}");
        assert_eq!(s.frames_used, s.frames);
        // The table's creation (and the journal mode switch) commit too.
        assert!(s.commits_used >= 6, "{s:?}");
        assert_eq!(s.damage, None);
        assert_eq!(rows_seen(dir.path(), &wal), 150);
        // Beside a sound log the trusted frames are the ones SQLite replays, newest per page.
        assert!(!s.trusted.is_empty());
        assert!(s.trusted.values().all(|i| *i < s.frames_used));
        let last = s.trusted.values().max().copied();
        assert_eq!(last, Some(s.frames_used - 1));
        assert!(s.db_pages.is_some());
    }

    #[test]
    fn a_damaged_frame_loses_the_commits_after_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (_conn, wal) = make(dir.path(), 6, 30);
        let sound = check(&wal[..]).expect("check");
        // Damage one byte in the page of frame 3 (0-based 2).
        let mut bad = wal.clone();
        let at = frame_offset(&sound, 2) + FRAME_HEADER + 1000;
        bad[at] ^= 0x40;
        let s = check(&bad[..]).expect("check");
        let d = s.damage.clone().expect("damage");
        assert_eq!(d.first_bad_frame, Some(2));
        assert!(!d.refused);
        assert_eq!(s.frames_used + d.frames_lost, s.frames, "{s:?}");
        assert_eq!(s.commits_used + d.commits_lost, sound.commits_used, "{s:?}");
        assert!(d.commits_lost >= 1);
        assert!(d.describe().contains("frame 3 "), "{}", d.describe());
        // The damaged frame is never trusted; the frames after it check out on their own.
        assert!(s.trusted.values().all(|i| *i != 2), "{:?}", s.trusted);
        assert!(s.trusted.values().any(|i| *i > 2), "{:?}", s.trusted);
        assert_eq!(s.db_pages, sound.db_pages);
        // SQLite agrees: it sees only what the used frames committed.
        let seen = rows_seen(dir.path(), &bad);
        assert!((0..180).contains(&seen), "{seen}");
        // Truncating the log after the used frames gives SQLite the same view.
        let prefix = &bad[..frame_offset(&s, s.frames_used)];
        assert_eq!(rows_seen(dir.path(), prefix), seen);
        // A damaged frame header (its stored checksum) counts the same.
        let mut bad = wal.clone();
        let at = frame_offset(&sound, 1) + 17;
        bad[at] ^= 1;
        let d = check(&bad[..]).expect("check").damage.expect("damage");
        assert_eq!(d.first_bad_frame, Some(1));
        // And so do damaged salts.
        let mut bad = wal.clone();
        let at = frame_offset(&sound, 1) + 9;
        bad[at] ^= 1;
        let d = check(&bad[..]).expect("check").damage.expect("damage");
        assert_eq!(d.first_bad_frame, Some(1));
    }

    #[test]
    fn damage_in_the_last_transaction_alone_is_a_torn_tail_not_a_loss() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (_conn, wal) = make(dir.path(), 3, 30);
        let sound = check(&wal[..]).expect("check");
        // The last frame is the last commit: damaging it leaves no later commit.
        let mut bad = wal.clone();
        let at = frame_offset(&sound, sound.frames - 1) + FRAME_HEADER + 5;
        bad[at] ^= 0xff;
        let s = check(&bad[..]).expect("check");
        assert_eq!(s.damage, None);
        assert_eq!(s.commits_used, sound.commits_used - 1);
        assert!(s.trusted.values().all(|i| *i < s.frames_used), "{s:?}");
        // A log cut in the middle of a frame (a torn append) is no damage either.
        let cut = &wal[..wal.len() - 100];
        assert_eq!(check(cut).expect("check").damage, None);
    }

    #[test]
    fn a_damaged_header_loses_the_whole_log() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (_conn, wal) = make(dir.path(), 4, 10);
        let sound = check(&wal[..]).expect("check");
        for at in [0, 13, 17, 25, 30] {
            let mut bad = wal.clone();
            bad[at] ^= 0x08;
            let s = check(&bad[..]).expect("check");
            let d = s.damage.expect("damage");
            assert_eq!(d.first_bad_frame, None, "byte {at}");
            assert_eq!(d.commits_lost, sound.commits_used, "byte {at}");
            assert_eq!(d.frames_lost, sound.frames, "byte {at}");
            assert_eq!(s.frames_used, 0);
            assert!(d.describe().contains("header"));
        }
        // SQLite agrees: none of the rows (the table itself was created in the log).
        let mut bad = wal.clone();
        bad[25] ^= 0x08;
        assert!(rows_seen(dir.path(), &bad) <= 0);
        // A page size that is no page size: frames cannot be found, the bytes are counted.
        let mut bad = wal.clone();
        bad[9] = 0x13;
        let d = check(&bad[..]).expect("check").damage.expect("damage");
        assert_eq!(d.bytes_unparsed, (wal.len() - HEADER) as u64);
        assert!(d.describe().contains("bytes"));
    }

    #[test]
    fn an_unknown_version_with_a_valid_header_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (_conn, wal) = make(dir.path(), 2, 10);
        let mut bad = wal.clone();
        bad[7] ^= 1;
        // Recompute the header checksum so only the version is wrong.
        let big = be32(&bad, 0) == MAGIC_BE;
        let (a, b) = checksum(&bad[..24], big, (0, 0));
        bad[24..28].copy_from_slice(&a.to_be_bytes());
        bad[28..32].copy_from_slice(&b.to_be_bytes());
        let s = check(&bad[..]).expect("check");
        let d = s.damage.expect("damage");
        assert!(d.refused);
        assert!(d.describe().contains("version"));
        // SQLite indeed refuses to read the database beside it.
        assert_eq!(rows_seen(dir.path(), &bad), -1);
    }

    #[test]
    fn leftovers_of_a_reset_log_are_not_damage() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (conn, _) = make(dir.path(), 6, 30);
        // Checkpoint and restart the log, then write less than before: the old frames stay
        // behind the new ones, with the old salts.
        conn.query_row("PRAGMA wal_checkpoint(RESTART)", [], |_| Ok(()))
            .expect("checkpoint");
        conn.execute("INSERT INTO t (v) VALUES ('after')", [])
            .expect("insert");
        let wal = std::fs::read(dir.path().join("q.db-wal")).expect("wal");
        let s = check(&wal[..]).expect("check");
        assert!(s.frames > s.frames_used, "{s:?}");
        assert_eq!(s.commits_used, 1);
        assert_eq!(s.damage, None);
        // Damage in the leftovers changes nothing.
        let mut bad = wal.clone();
        let at = frame_offset(&s, s.frames - 1) + FRAME_HEADER + 7;
        bad[at] ^= 0x55;
        assert_eq!(check(&bad[..]).expect("check").damage, None);
        assert_eq!(rows_seen(dir.path(), &wal), 181);
    }

    #[test]
    fn short_and_empty_logs_hold_nothing() {
        assert_eq!(check(&[][..]).expect("check"), Summary::default());
        assert_eq!(check(&[0x37u8; 31][..]).expect("check"), Summary::default());
        let s = check(&[0u8; 32][..]).expect("check");
        assert_eq!(s.damage, None);
    }

    #[test]
    fn inspect_keeps_a_copy_and_reports() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (conn, wal) = make(dir.path(), 4, 30);
        let sound = check(&wal[..]).expect("check");
        drop(conn);
        // Closing checkpointed and removed the log: put the damaged one in its place.
        let mut bad = wal.clone();
        bad[frame_offset(&sound, 1) + FRAME_HEADER + 9] ^= 2;
        let queue = dir.path().join("q.db");
        std::fs::write(with_suffix(&queue, "-wal"), &bad).expect("write");
        let found = inspect(&queue).expect("damage");
        assert_eq!(found.damage.damage.first_bad_frame, Some(1));
        assert_eq!(found.damage.recovered, Recovered::Pending);
        let kept = found.damage.kept.clone().expect("kept");
        assert!(
            kept.to_string_lossy().contains("q.db-wal.corrupt-"),
            "{}",
            kept.display()
        );
        assert_eq!(std::fs::read(&kept).expect("read"), bad);
        // The log itself stays for SQLite.
        assert!(with_suffix(&queue, "-wal").exists());
        // A sound log is left alone.
        std::fs::write(with_suffix(&queue, "-wal"), &wal).expect("write");
        assert!(inspect(&queue).is_none());
    }

    fn arbitrary_log() -> impl Strategy<Value = Vec<u8>> {
        (
            proptest::collection::vec(any::<u8>(), 0..3000),
            any::<bool>(),
            any::<bool>(),
        )
            .prop_map(|(mut bytes, shape, sum)| {
                if shape && bytes.len() >= HEADER {
                    // A plausible header (magic, version, 512-byte pages) so frames get parsed.
                    let magic = if bytes[0] & 1 == 0 {
                        MAGIC_LE
                    } else {
                        MAGIC_BE
                    };
                    bytes[0..4].copy_from_slice(&magic.to_be_bytes());
                    bytes[4..8].copy_from_slice(&VERSION.to_be_bytes());
                    bytes[8..12].copy_from_slice(&512u32.to_be_bytes());
                    if sum {
                        let (a, b) = checksum(&bytes[..24], magic == MAGIC_BE, (0, 0));
                        bytes[24..28].copy_from_slice(&a.to_be_bytes());
                        bytes[28..32].copy_from_slice(&b.to_be_bytes());
                    }
                }
                bytes
            })
    }

    proptest! {
        #[test]
        fn any_bytes_are_checked_without_panicking(bytes in arbitrary_log()) {
            let s = check(&bytes[..]).expect("reading a slice cannot fail");
            prop_assert!(s.frames_used <= s.frames);
            if let Some(d) = &s.damage {
                prop_assert!(d.frames_lost <= s.frames);
                let _ = d.describe();
            }
        }
    }
}
