//! Salvage of last resort: readings read straight from the b-tree leaf pages of a damaged queue
//! file and its write-ahead log, without SQLite (SPEC §5, reliability promise R8).
//!
//! SQLite reaches a row only through the pages above it: a damaged first page (the schema), a
//! damaged root or interior page of the readings table, or a file cut short hides every intact
//! leaf below; and it replays its log only up to the first damaged frame, so the transactions
//! committed after it vanish. This module walks the pages instead: each page as the newest
//! frame of the log that checks out on its own holds it (`wal::Summary::trusted`), else as the
//! main file holds it. It decodes every table-leaf cell whose record has exactly the shape of a
//! `readings` row (nine columns: the rowid alias, the series id, a kind that is `reading` or
//! `data_point`, import id, suit, time, value, unit, clock flag); the cell's rowid is the
//! reading's id. Pages the pointer map (present in every queue, which uses `auto_vacuum`) marks
//! as free are skipped, so delivered readings left in freed pages do not come back; where that
//! map is itself damaged, or where the newest copy of a page is the damaged one, such stale
//! readings may be sent again, which the API answers 409 (a duplicate, never a loss). A log
//! frame whose checksum failed is never decoded: a damaged byte inside a value would send a
//! reading that was never read (pages of the main file carry no checksum; for them only the
//! record's exact shape is checked). Format: "Database File Format" at
//! <https://www.sqlite.org/fileformat2.html>. Pure parsing: never panics, whatever the bytes;
//! memory is one page plus the rows found.

use std::collections::BTreeMap;
use std::io;
use std::path::Path;

use super::db::Row;
use super::wal::Summary;
use crate::reading::{Kind, Reading, Series};

/// What a scan found.
#[derive(Debug, Default)]
pub struct Scan {
    /// Readings by id (a cell found twice, e.g. moved by a rebalance, counts once).
    pub rows: BTreeMap<i64, Row>,
    /// Pages read, and those skipped because the pointer map marks them free.
    pub pages: u64,
    pub free: u64,
}

const MAGIC: &[u8; 16] = b"SQLite format 3\0";
/// b-tree page type of a table leaf.
const TABLE_LEAF: u8 = 0x0D;
/// Pointer-map entry type of a free page.
const PTRMAP_FREE: u8 = 2;

fn be16(b: &[u8], at: usize) -> Option<usize> {
    match b.get(at..at + 2)? {
        &[x, y] => Some(usize::from(u16::from_be_bytes([x, y]))),
        _ => None,
    }
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    match b.get(at..at + 4)? {
        &[a, b, c, d] => Some(u32::from_be_bytes([a, b, c, d])),
        _ => None,
    }
}

/// SQLite's variable-length integer: 1–9 bytes, big-endian, 7 bits a byte (8 in the ninth).
fn varint(b: &[u8]) -> Option<(u64, usize)> {
    let mut v = 0u64;
    for i in 0..9 {
        let byte = *b.get(i)?;
        if i == 8 {
            return Some(((v << 8) | u64::from(byte), 9));
        }
        v = (v << 7) | u64::from(byte & 0x7f);
        if byte & 0x80 == 0 {
            return Some((v, i + 1));
        }
    }
    None
}

/// A decoded column value.
#[derive(Debug, Clone, PartialEq)]
enum Value {
    Null,
    Int(i64),
    Real(f64),
    Text(String),
    Blob,
}

/// Bytes a value of this serial type takes in the record body.
fn serial_len(t: u64) -> Option<usize> {
    Some(match t {
        0 | 8 | 9 => 0,
        1 => 1,
        2 => 2,
        3 => 3,
        4 => 4,
        5 => 6,
        6 | 7 => 8,
        10 | 11 => return None,
        n => usize::try_from((n - 12) / 2).ok()?,
    })
}

fn decode(t: u64, b: &[u8]) -> Option<Value> {
    Some(match t {
        0 => Value::Null,
        8 => Value::Int(0),
        9 => Value::Int(1),
        1..=6 => {
            let negative = b.first().is_some_and(|x| x & 0x80 != 0);
            let mut v: i64 = if negative { -1 } else { 0 };
            for x in b {
                v = (v << 8) | i64::from(*x);
            }
            Value::Int(v)
        }
        7 => match b {
            &[a, b, c, d, e, f, g, h] => Value::Real(f64::from_be_bytes([a, b, c, d, e, f, g, h])),
            _ => return None,
        },
        n if n >= 13 && n % 2 == 1 => Value::Text(String::from_utf8(b.to_vec()).ok()?),
        n if n >= 12 => Value::Blob,
        _ => return None,
    })
}

/// A record's values, when its header and body are consistent and it has at most `max`
/// columns.
fn record(body: &[u8], max: usize) -> Option<Vec<Value>> {
    let (header_len, n) = varint(body)?;
    let header_len = usize::try_from(header_len).ok()?;
    let header = body.get(n..header_len)?;
    let mut types = Vec::with_capacity(max);
    let mut at = 0;
    while at < header.len() {
        let (t, k) = varint(&header[at..])?;
        types.push(t);
        at += k;
        if types.len() > max {
            return None;
        }
    }
    let mut values = Vec::with_capacity(types.len());
    let mut at = header_len;
    for t in types {
        let len = serial_len(t)?;
        let end = at.checked_add(len)?;
        values.push(decode(t, body.get(at..end)?)?);
        at = end;
    }
    // A record fills its payload exactly.
    (at == body.len()).then_some(values)
}

/// A `readings` row, when the record has exactly that shape.
fn reading(id: i64, values: Vec<Value>) -> Option<Row> {
    let mut v = values.into_iter();
    let mut next = || v.next();
    let (Some(Value::Null), Some(Value::Int(_series)), Some(Value::Text(kind))) =
        (next(), next(), next())
    else {
        return None;
    };
    let (Some(Value::Text(import_id)), Some(Value::Text(suit)), Some(Value::Int(time))) =
        (next(), next(), next())
    else {
        return None;
    };
    let value = match next()? {
        Value::Real(x) => x,
        // REAL columns store integral values as integers.
        Value::Int(i) => i as f64,
        _ => return None,
    };
    let unit = match next()? {
        Value::Text(u) => Some(u),
        Value::Null => None,
        _ => return None,
    };
    let Some(Value::Int(synced)) = next() else {
        return None;
    };
    if next().is_some() || id <= 0 || import_id.is_empty() {
        return None;
    }
    let kind = Kind::parse(&kind)?;
    Some(Row {
        id,
        reading: Reading {
            series: Series::new(kind, import_id, (!suit.is_empty()).then_some(suit)),
            time,
            value,
            unit,
            clock_synced: synced != 0,
            invalid: None,
        },
    })
}

/// The readings in one table-leaf page (`usable`: page size less reserved bytes).
fn leaf(page: &[u8], usable: usize, out: &mut BTreeMap<i64, Row>) {
    if page.first() != Some(&TABLE_LEAF) {
        return;
    }
    let Some(cells) = be16(page, 3) else {
        return;
    };
    let pointers_end = 8 + 2 * cells;
    if pointers_end > usable {
        return;
    }
    // The largest payload a table leaf keeps on the page; ours are far smaller.
    let max_local = usable.saturating_sub(35);
    for k in 0..cells {
        let Some(at) = be16(page, 8 + 2 * k) else {
            break;
        };
        if at < pointers_end || at >= usable {
            continue;
        }
        let Some(cell) = page.get(at..usable) else {
            continue;
        };
        let Some((payload, n1)) = varint(cell) else {
            continue;
        };
        let Some((rowid, n2)) = cell.get(n1..).and_then(varint) else {
            continue;
        };
        let Ok(payload) = usize::try_from(payload) else {
            continue;
        };
        if payload > max_local {
            continue;
        }
        let Some(body) = cell.get(n1 + n2..n1 + n2 + payload) else {
            continue;
        };
        if let Some(row) = record(body, 9).and_then(|v| reading(rowid as i64, v)) {
            out.entry(row.id).or_insert(row);
        }
    }
}

/// The entry types of a pointer-map page, when every entry is a valid type (a damaged map is
/// no information).
fn ptrmap(page: &[u8], entries: usize) -> Option<Vec<u8>> {
    let types: Vec<u8> = page.chunks_exact(5).take(entries).map(|e| e[0]).collect();
    types.iter().all(|t| *t <= 5).then_some(types)
}

/// Where pages come from: a file's bytes, or a queue file overlaid by its log.
trait Pages {
    /// Fills the start of `buf` with page `pgno` (1-based) at `page_size`; returns how many
    /// bytes the page has (less than a page where a file is cut short, 0 when it is missing).
    fn read(&mut self, pgno: u64, page_size: usize, buf: &mut [u8]) -> usize;
    /// How many pages the database has at `page_size`.
    fn count(&self, page_size: usize) -> u64;
}

impl Pages for &[u8] {
    fn read(&mut self, pgno: u64, page_size: usize, buf: &mut [u8]) -> usize {
        let Some(start) = usize::try_from(pgno - 1)
            .ok()
            .and_then(|i| i.checked_mul(page_size))
        else {
            return 0;
        };
        let Some(bytes) = self.get(start..) else {
            return 0;
        };
        let n = bytes.len().min(buf.len());
        buf[..n].copy_from_slice(&bytes[..n]);
        n
    }

    fn count(&self, page_size: usize) -> u64 {
        self.len().div_ceil(page_size) as u64
    }
}

/// Reads at `offset` until `buf` is full or the file ends; an error ends the read there.
fn read_at(f: &std::fs::File, offset: u64, buf: &mut [u8]) -> usize {
    use std::os::unix::fs::FileExt;
    let mut filled = 0;
    while filled < buf.len() {
        match f.read_at(&mut buf[filled..], offset + filled as u64) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    filled
}

/// A queue file with the trusted frames of its log laid over it.
struct Overlay<'a> {
    main: Option<std::fs::File>,
    main_len: u64,
    log: Option<(std::fs::File, &'a Summary)>,
}

impl Pages for Overlay<'_> {
    fn read(&mut self, pgno: u64, page_size: usize, buf: &mut [u8]) -> usize {
        if let Some((log, summary)) = &self.log {
            let frame = u32::try_from(pgno)
                .ok()
                .and_then(|p| summary.trusted.get(&p));
            if let Some(index) = frame {
                return read_at(log, summary.page_offset(*index), buf);
            }
        }
        let Some(main) = &self.main else {
            return 0;
        };
        let offset = (pgno - 1).saturating_mul(page_size as u64);
        if offset >= self.main_len {
            return 0;
        }
        let n = usize::try_from(self.main_len - offset).map_or(buf.len(), |n| n.min(buf.len()));
        read_at(main, offset, &mut buf[..n])
    }

    fn count(&self, page_size: usize) -> u64 {
        // The last trusted commit says how big the database is (pages beyond it were cut off
        // by a vacuum); without one, the main file does.
        match self.log.as_ref().and_then(|(_, s)| s.db_pages) {
            Some(n) => u64::from(n),
            None => self.main_len.div_ceil(page_size as u64),
        }
    }
}

/// Scans the pages of `src` for readings; `wanted` says which pages (other than pointer-map
/// pages, always read) to decode. The page size comes from the header when it is intact,
/// else 4096 (what the queue uses).
fn scan_pages(mut src: impl Pages, wanted: impl Fn(u64) -> bool) -> Scan {
    let mut scan = Scan::default();
    let mut head = [0u8; 100];
    let got = src.read(1, 100, &mut head);
    let size = be16(&head, 16).map(|s| if s == 1 { 65536 } else { s });
    let (page_size, reserved, auto_vacuum) = match size {
        Some(s)
            if got == head.len()
                && head.starts_with(MAGIC)
                && s.is_power_of_two()
                && (512..=65536).contains(&s) =>
        {
            let reserved = usize::from(head[20]);
            let auto = be32(&head, 52).is_some_and(|root| root != 0);
            if s - reserved >= 480 {
                (s, reserved, auto)
            } else {
                (s, 0, auto)
            }
        }
        // Every queue is created with auto_vacuum; a damaged header does not change that.
        _ => (4096, 0, true),
    };
    let usable = page_size - reserved;
    let per_map = (usable / 5) as u64;
    let mut page = vec![0u8; page_size];
    let mut map: Option<(u64, Vec<u8>)> = None;
    // Page 1 holds the schema, never a reading.
    for pgno in 2..=src.count(page_size) {
        let is_map = auto_vacuum && (pgno - 2) % (per_map + 1) == 0;
        if !is_map && !wanted(pgno) {
            continue;
        }
        let n = src.read(pgno, page_size, &mut page);
        if is_map {
            map = (n == page_size)
                .then(|| ptrmap(&page, per_map as usize))
                .flatten()
                .map(|types| (pgno, types));
            continue;
        }
        if n == 0 {
            continue;
        }
        scan.pages += 1;
        // A page cut short: zeros beyond the cut (as SQLite reads past the end); only cells
        // wholly before the cut are taken, a cell cut in two would decode with wrong values.
        page[n..].fill(0);
        let free = map.as_ref().is_some_and(|(base, types)| {
            usize::try_from(pgno - base - 1)
                .ok()
                .and_then(|i| types.get(i))
                == Some(&PTRMAP_FREE)
        });
        if free {
            scan.free += 1;
        } else {
            leaf(&page[..n], usable.min(n), &mut scan.rows);
        }
    }
    scan
}

/// Scans a whole file's bytes.
#[cfg(test)]
pub fn scan(bytes: &[u8]) -> Scan {
    scan_pages(bytes, |_| true)
}

/// Scans a queue file as its newest trusted state: each page from the log's trusted frames
/// (see [`Summary::trusted`]) where they hold it, else from the file. With `beyond`, only the
/// pages whose trusted copy lies in a frame from that index on are decoded: what SQLite will
/// not replay, bounded by the log's size. Unreadable files are empty scans.
pub fn scan_queue(main: &Path, log: Option<(&Path, &Summary)>, beyond: Option<u64>) -> Scan {
    let file = std::fs::File::open(main).ok();
    let main_len = file
        .as_ref()
        .and_then(|f| f.metadata().ok())
        .map_or(0, |m| m.len());
    let log = log.and_then(|(path, s)| std::fs::File::open(path).ok().map(|f| (f, s)));
    let trusted = log.as_ref().map(|(_, s)| &s.trusted);
    let wanted = |pgno: u64| match (beyond, trusted) {
        (None, _) => true,
        (Some(from), Some(t)) => u32::try_from(pgno)
            .ok()
            .and_then(|p| t.get(&p))
            .is_some_and(|i| *i >= from),
        (Some(_), None) => false,
    };
    scan_pages(
        Overlay {
            main: file,
            main_len,
            log,
        },
        wanted,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::db::{Db, Mode, Opened};
    use proptest::prelude::*;

    fn reading_row(kind: Kind, id: &str, time: i64, value: f64, unit: Option<&str>) -> Reading {
        Reading {
            series: Series::new(kind, id, None),
            time,
            value,
            unit: unit.map(str::to_string),
            clock_synced: time % 2 == 0,
            invalid: None,
        }
    }

    /// A queue file with `n` readings (ids 1..=n), checkpointed into the main file; the
    /// readings with ids in `delete` removed again. Returns the file's bytes.
    fn queue_file(dir: &Path, n: i64, delete: std::ops::Range<i64>) -> (Vec<u8>, Vec<Reading>) {
        let path = dir.join("queue.db");
        let Ok(Opened::Ok(mut db)) = Db::open(&path, Mode::Daemon, false) else {
            panic!("open");
        };
        let mut all = Vec::new();
        db.conn.execute_batch("BEGIN").expect("begin");
        for i in 1..=n {
            let r = if i % 3 == 0 {
                reading_row(Kind::DataPoint, "P", i, i as f64 + 0.25, None)
            } else {
                reading_row(Kind::Reading, "E", i, (i * 10) as f64, Some("kWh"))
            };
            db.insert_reading(&r, None).expect("insert");
            all.push(r);
        }
        db.conn.execute_batch("COMMIT").expect("commit");
        for id in delete {
            db.remove(id).expect("remove");
        }
        db.conn
            .execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
            .expect("checkpoint");
        drop(db);
        (std::fs::read(&path).expect("read"), all)
    }

    #[test]
    fn every_row_of_a_sound_file_is_found_with_its_id_and_content() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (bytes, all) = queue_file(dir.path(), 2000, 0..0);
        let s = scan(&bytes[..]);
        assert_eq!(s.rows.len(), 2000);
        for (i, r) in all.iter().enumerate() {
            let found = &s.rows[&(i as i64 + 1)];
            assert_eq!(&found.reading, r);
        }
    }

    #[test]
    fn rows_behind_a_damaged_first_page_and_root_are_found() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut bytes, all) = queue_file(dir.path(), 3000, 0..0);
        // Page 1 (schema and header) and every interior page are overwritten.
        let pages = bytes.len() / 4096;
        for p in 0..pages {
            let page = &mut bytes[p * 4096..(p + 1) * 4096];
            if p == 0 || page[0] == 0x05 {
                page.fill(0xA5);
            }
        }
        let s = scan(&bytes[..]);
        assert_eq!(s.rows.len(), 3000);
        for cut in (4096..bytes.len()).step_by(997) {
            let s = scan(&bytes[..cut]);
            for (id, row) in &s.rows {
                assert_eq!(row.reading, all[*id as usize - 1], "cut at {cut}");
            }
        }
        // Cut short in the middle of a page: the complete leaves before the cut are found
        // (table leaves and index pages alternate as the file grows), and no cell cut in two.
        let cut = &bytes[..bytes.len() / 2 + 100];
        let s = scan(cut);
        assert!(
            s.rows.len() > 500 && s.rows.len() < 3000,
            "{}",
            s.rows.len()
        );
    }

    #[test]
    fn freed_pages_do_not_bring_back_deleted_rows() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (bytes, _) = queue_file(dir.path(), 3000, 1..2001);
        let s = scan(&bytes[..]);
        assert!(s.free > 0, "{s:?}");
        assert_eq!(s.rows.len(), 1000);
        assert_eq!(s.rows.keys().next(), Some(&2001));
    }

    #[test]
    fn varints_and_values_decode_as_sqlite_writes_them() {
        assert_eq!(varint(&[0x05]), Some((5, 1)));
        assert_eq!(varint(&[0x81, 0x00]), Some((128, 2)));
        assert_eq!(varint(&[0xff; 9]), Some((u64::MAX, 9)));
        assert_eq!(varint(&[0x81]), None);
        assert_eq!(decode(1, &[0xff]), Some(Value::Int(-1)));
        assert_eq!(decode(2, &[0x01, 0x00]), Some(Value::Int(256)));
        assert_eq!(
            decode(5, &[0xff, 0xff, 0xff, 0xff, 0xff, 0xfe]),
            Some(Value::Int(-2))
        );
        assert_eq!(decode(7, &1.5f64.to_be_bytes()), Some(Value::Real(1.5)));
        assert_eq!(decode(15, b"a"), Some(Value::Text("a".into())));
        assert_eq!(decode(10, &[]), None);
    }

    proptest! {
        #[test]
        fn any_bytes_are_scanned_without_panicking(
            bytes in proptest::collection::vec(any::<u8>(), 0..20_000),
            leafy in any::<bool>(),
        ) {
            let mut bytes = bytes;
            if leafy {
                // Make every 4 KiB page claim to be a table leaf so cells get parsed.
                for p in bytes.chunks_mut(4096) {
                    p[0] = TABLE_LEAF;
                }
            }
            let s = scan(&bytes[..]);
            prop_assert!(s.free <= s.pages);
        }

        #[test]
        fn damaged_files_are_scanned_without_panicking(
            flips in proptest::collection::vec((0usize..1_000_000, any::<u8>()), 1..200),
        ) {
            static FILE: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
            let mut bytes = FILE
                .get_or_init(|| {
                    let dir = tempfile::tempdir().expect("tempdir");
                    queue_file(dir.path(), 300, 0..0).0
                })
                .clone();
            let len = bytes.len();
            for (at, v) in flips {
                bytes[at % len] = v;
            }
            let s = scan(&bytes[..]);
            prop_assert!(s.free <= s.pages);
        }
    }
}
