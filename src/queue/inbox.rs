//! The writer's inbox for the frequent fire-and-forget updates: acknowledgements from the
//! sender and meter-poll / status facts. They wait here, behind a mutex, until the writer thread
//! takes them into its next transaction, instead of each one travelling the command channel and
//! waking the writer (at 200 deliveries a second those wake-ups cost 13 % of the daemon's CPU,
//! BENCHMARKS.md issue 8). Only the first update after each take wakes the writer, which
//! then knows a transaction is due within its window.
//!
//! Acknowledgements go into the journal (`acks.rs`) on the caller's thread, under the same lock
//! as they join the inbox, so the journal always holds every acknowledgement that is not yet in
//! a committed removal group: after a commit the writer empties the journal and writes back the
//! ones that arrived while it was committing.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard};

use super::MeterPoll;
use super::acks::AckLog;

/// What the writer takes into a transaction.
#[derive(Debug, Default)]
pub struct Taken {
    /// Acknowledged readings: `(id, answered 409)`, in arrival order.
    pub removals: Vec<(i64, bool)>,
    /// The latest poll of each meter.
    pub meters: HashMap<String, MeterPoll>,
    /// The latest value of each status key.
    pub state: BTreeMap<String, String>,
}

#[derive(Debug)]
struct Inner {
    taken: Taken,
    journal: AckLog,
    /// A wake-up for writes (resp. status) was sent since the last take.
    write_armed: bool,
    state_armed: bool,
    /// The writer stopped: nothing put here will be committed by it.
    closed: bool,
}

/// Shared between every [`super::Queue`] handle and the writer thread.
#[derive(Debug)]
pub struct Inbox {
    inner: Mutex<Inner>,
}

/// Why an update was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Closed;

impl Inbox {
    pub fn new(journal: AckLog) -> Inbox {
        Inbox {
            inner: Mutex::new(Inner {
                taken: Taken::default(),
                journal,
                write_armed: false,
                state_armed: false,
                closed: false,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves plain data behind; carry on with it.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// An acknowledgement: journaled now, committed with the writer's next group. `true`
    /// when the writer must be woken to schedule that group.
    pub fn delivered(&self, id: i64, duplicate: bool) -> Result<bool, Closed> {
        let mut g = self.lock();
        if g.closed {
            return Err(Closed);
        }
        g.journal.record(id, duplicate);
        g.taken.removals.push((id, duplicate));
        Ok(!std::mem::replace(&mut g.write_armed, true))
    }

    /// A meter's last poll (replaces an earlier one not yet committed).
    pub fn meter(&self, poll: MeterPoll) -> Result<bool, Closed> {
        let mut g = self.lock();
        if g.closed {
            return Err(Closed);
        }
        g.taken.meters.insert(poll.meter.clone(), poll);
        Ok(!std::mem::replace(&mut g.state_armed, true))
    }

    /// A status fact (replaces an earlier value of the key not yet committed).
    pub fn state(&self, key: &str, value: String) -> Result<bool, Closed> {
        let mut g = self.lock();
        if g.closed {
            return Err(Closed);
        }
        g.taken.state.insert(key.to_string(), value);
        Ok(!std::mem::replace(&mut g.state_armed, true))
    }

    /// What kinds of transaction the waiting updates ask for (a wake-up that arrives after its
    /// updates were already taken finds nothing).
    pub fn due(&self) -> (bool, bool) {
        let g = self.lock();
        (
            !g.taken.removals.is_empty(),
            !g.taken.meters.is_empty() || !g.taken.state.is_empty(),
        )
    }

    /// Everything waiting, for the transaction about to start; the next update wakes the
    /// writer again.
    pub fn take(&self) -> Taken {
        let mut g = self.lock();
        g.write_armed = false;
        g.state_armed = false;
        std::mem::take(&mut g.taken)
    }

    /// The removals taken before a transaction are committed: the journal keeps only those
    /// that arrived since.
    pub fn committed(&self) {
        let mut g = self.lock();
        let Inner { taken, journal, .. } = &mut *g;
        journal.clear();
        for (id, duplicate) in &taken.removals {
            journal.record(*id, *duplicate);
        }
    }

    /// The writer stopped; later updates are refused (acknowledgements already journaled are
    /// replayed when the queue opens next).
    pub fn close(&self) {
        self.lock().closed = true;
    }
}

#[cfg(test)]
mod tests {
    use super::super::acks;
    use super::*;

    #[test]
    fn only_the_first_update_after_a_take_wakes_the_writer() {
        let dir = tempfile::tempdir().expect("tempdir");
        let q = dir.path().join("queue.db");
        let inbox = Inbox::new(AckLog::open(&q));
        assert_eq!(inbox.delivered(1, false), Ok(true));
        assert_eq!(inbox.delivered(2, true), Ok(false));
        assert_eq!(inbox.state("sending", "ok".into()), Ok(true));
        assert_eq!(inbox.state("sending", "paused".into()), Ok(false));
        assert_eq!(inbox.due(), (true, true));
        let taken = inbox.take();
        assert_eq!(taken.removals, vec![(1, false), (2, true)]);
        assert_eq!(
            taken.state.get("sending").map(String::as_str),
            Some("paused")
        );
        assert_eq!(inbox.due(), (false, false));
        assert_eq!(inbox.delivered(3, false), Ok(true));
        inbox.close();
        assert_eq!(inbox.delivered(4, false), Err(Closed));
        assert_eq!(acks::read(&q), vec![(1, false), (2, true), (3, false)]);
    }

    #[test]
    fn the_journal_keeps_what_arrived_during_a_commit() {
        let dir = tempfile::tempdir().expect("tempdir");
        let q = dir.path().join("queue.db");
        let inbox = Inbox::new(AckLog::open(&q));
        for id in 1..=3 {
            inbox.delivered(id, false).expect("open");
        }
        let taken = inbox.take();
        assert_eq!(taken.removals.len(), 3);
        // While the writer commits 1..=3, two more answers come in.
        inbox.delivered(4, true).expect("open");
        inbox.delivered(5, false).expect("open");
        assert_eq!(acks::read(&q).len(), 5);
        inbox.committed();
        assert_eq!(acks::read(&q), vec![(4, true), (5, false)]);
        inbox.take();
        inbox.committed();
        assert!(acks::read(&q).is_empty());
    }
}
