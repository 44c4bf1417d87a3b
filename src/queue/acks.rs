//! The acknowledgement journal (`<queue>-acks`): removals of delivered readings are committed
//! in groups (SPEC §5) to keep disk syncs bounded, so between an API answer and its group's
//! commit the acknowledgement lives only in memory. [`super::Queue::delivered`] appends every
//! acknowledgement here before it returns (one small `write` on the caller's thread, no sync,
//! through the inbox in `inbox.rs`), the writer clears the file after each commit, and the
//! queue replays it when it opens. A `kill -9` therefore re-sends only
//! the requests that were really on the wire; after a power cut the unsynced tail may be gone,
//! which costs duplicates (answered 409), never a reading: the journal only ever removes
//! readings the API already accepted. Records carry a check word, so a torn or zeroed tail is
//! skipped instead of removing a wrong row.

use std::fs::{File, OpenOptions};
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};

/// One record: the reading id and a check word that also carries the 409 flag.
const RECORD: usize = 16;
const MIX: u64 = 0x9E37_79B9_7F4A_7C15;
const SALT: u64 = 0x454E_4543_5449_5641;

/// Where the journal of the queue at `queue` lives.
pub fn path_for(queue: &Path) -> PathBuf {
    let mut s = queue.as_os_str().to_os_string();
    s.push("-acks");
    PathBuf::from(s)
}

fn check(id: i64, duplicate: bool) -> u64 {
    (id as u64).wrapping_mul(MIX).rotate_left(29) ^ SALT ^ u64::from(duplicate)
}

/// Encodes one acknowledgement.
pub fn encode(id: i64, duplicate: bool) -> [u8; RECORD] {
    let mut rec = [0u8; RECORD];
    rec[..8].copy_from_slice(&id.to_le_bytes());
    rec[8..].copy_from_slice(&check(id, duplicate).to_le_bytes());
    rec
}

/// Decodes a journal: every intact record with a positive id, in order; damaged records and a
/// torn tail are skipped.
pub fn decode(bytes: &[u8]) -> Vec<(i64, bool)> {
    bytes
        .chunks_exact(RECORD)
        .filter_map(|rec| {
            let id = i64::from_le_bytes(rec[..8].try_into().ok()?);
            let word = u64::from_le_bytes(rec[8..].try_into().ok()?);
            if id <= 0 {
                return None;
            }
            match word ^ check(id, false) {
                0 => Some((id, false)),
                1 => Some((id, true)),
                _ => None,
            }
        })
        .collect()
}

/// Reads the journal of the queue at `queue` (empty when there is none or it cannot be read).
pub fn read(queue: &Path) -> Vec<(i64, bool)> {
    let mut bytes = Vec::new();
    match File::open(path_for(queue)) {
        Ok(mut f) => {
            if let Err(e) = f.read_to_end(&mut bytes) {
                tracing::warn!(error = %e, "cannot read the acknowledgement journal; some readings may be sent twice");
                return Vec::new();
            }
        }
        Err(_) => return Vec::new(),
    }
    decode(&bytes)
}

/// The open journal, kept in the inbox (`inbox.rs`) behind its lock.
#[derive(Debug)]
pub struct AckLog {
    path: PathBuf,
    file: Option<File>,
    written: u64,
    warned: bool,
}

impl AckLog {
    /// Opens (creating) the journal next to the queue and empties it: call after [`read`] and
    /// after the replayed removals are committed.
    pub fn open(queue: &Path) -> AckLog {
        let path = path_for(queue);
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|f| f.set_len(0).map(|()| f));
        let mut log = AckLog {
            path,
            file: None,
            written: 0,
            warned: false,
        };
        match file {
            Ok(f) => log.file = Some(f),
            Err(e) => log.warn(&e),
        }
        log
    }

    fn warn(&mut self, e: &std::io::Error) {
        if !self.warned {
            self.warned = true;
            tracing::warn!(path = %self.path.display(), error = %e,
                "acknowledgement journal not writable; after a crash more readings are sent twice (answered 409)");
        }
    }

    /// Appends one acknowledgement (not synced: it has to survive a crash of the process, not
    /// of the machine).
    pub fn record(&mut self, id: i64, duplicate: bool) {
        let Some(f) = self.file.as_mut() else { return };
        match f.write_all(&encode(id, duplicate)) {
            Ok(()) => self.written += RECORD as u64,
            Err(e) => self.warn(&e),
        }
    }

    /// Everything recorded so far is committed in the queue: start over.
    pub fn clear(&mut self) {
        if self.written == 0 {
            return;
        }
        if let Some(f) = self.file.as_mut() {
            match f.set_len(0) {
                Ok(()) => self.written = 0,
                Err(e) => self.warn(&e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_damage_is_skipped() {
        let mut bytes = Vec::new();
        for (id, dup) in [(1, false), (42, true), (i64::MAX, false)] {
            bytes.extend_from_slice(&encode(id, dup));
        }
        assert_eq!(
            decode(&bytes),
            vec![(1, false), (42, true), (i64::MAX, false)]
        );
        // A flipped bit in the middle record, zeros and a torn tail are all skipped.
        let mut damaged = bytes.clone();
        damaged[RECORD + 3] ^= 0x10;
        damaged.extend_from_slice(&[0u8; RECORD]);
        damaged.extend_from_slice(&encode(7, false)[..9]);
        assert_eq!(decode(&damaged), vec![(1, false), (i64::MAX, false)]);
        assert!(decode(&[0xFF; 64]).is_empty());
    }

    #[test]
    fn the_journal_is_cleared_after_a_commit_and_read_back_after_a_crash() {
        let dir = tempfile::tempdir().expect("tempdir");
        let q = dir.path().join("queue.db");
        let mut log = AckLog::open(&q);
        log.record(5, false);
        log.record(6, true);
        assert_eq!(read(&q), vec![(5, false), (6, true)]);
        log.clear();
        assert!(read(&q).is_empty());
        log.record(9, false);
        drop(log);
        assert_eq!(read(&q), vec![(9, false)]);
        // Opening again empties it (the caller replays first).
        let _log = AckLog::open(&q);
        assert!(read(&q).is_empty());
    }
}
