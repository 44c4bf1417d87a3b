//! Poll schedule (SPEC §6.1, §6.2): wall-clock-aligned slots, skipping slots a slow bus missed
//! instead of bursting, the down state after 3 failed slots with its exponential backoff, and
//! the transitions the bus task logs (first failure, down, recovered). Also a small rate limit
//! for the bus's "behind" WARN.
//!
//! Pure: time is a parameter (Unix milliseconds, UTC), never read here; no IO, no logging, no
//! sleeping, no panics on any input (saturating arithmetic, interval ≥ 1 ms). It decides when a
//! meter is due and what changed; the bus task does the polling and the logging.

use std::time::Duration;

/// Consecutive failed slots after which a meter is down (SPEC §6.2).
pub const DOWN_AFTER: u32 = 3;
/// The backoff of a down meter never exceeds this (nor 10 × its interval).
const MAX_BACKOFF_MS: i64 = 60 * 60 * 1000;

/// The first aligned slot strictly after `now_ms`: a multiple of `interval_ms` since the Unix
/// epoch (a 15 m meter is due at :00, :15, :30, :45 UTC). An interval below 1 ms counts as 1 ms.
/// Saturates at `i64::MAX` (then it is not after `now_ms`) for times near the end of the range.
pub fn next_slot(now_ms: i64, interval_ms: i64) -> i64 {
    let iv = i128::from(interval_ms.max(1));
    saturate(floor(i128::from(now_ms), iv) + iv)
}

/// The last aligned slot at or before `now_ms` (`now_ms` itself when it is on the grid).
/// Saturates at `i64::MIN` for times near the start of the range.
pub fn slot_at_or_before(now_ms: i64, interval_ms: i64) -> i64 {
    saturate(floor(i128::from(now_ms), i128::from(interval_ms.max(1))))
}

/// Largest multiple of `iv` (> 0) at or below `t`. In i128 so no input can overflow.
fn floor(t: i128, iv: i128) -> i128 {
    t.div_euclid(iv) * iv
}

fn saturate(x: i128) -> i64 {
    i64::try_from(x).unwrap_or(if x < 0 { i64::MIN } else { i64::MAX })
}

/// When one meter is due, and its failure state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeterSchedule {
    interval_ms: i64,
    next_due: i64,
    failures: u32,
}

/// What one completed poll changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Completion {
    pub transition: Transition,
    /// Slots that came due while this poll was still running and are skipped rather than polled
    /// in a burst. Slots a down meter leaves out on purpose (its backoff) are not counted, so a
    /// non-zero count always means the bus is behind.
    pub missed_slots: u64,
    /// How long after the end of its slot (`slot_ms + interval`) the poll finished; 0 when in
    /// time.
    pub behind_ms: i64,
}

/// A change the bus task logs once (SPEC §6.2: the first failure is a WARN, repeats are quiet,
/// recovery is an INFO with the count).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    None,
    /// The first failure after a success.
    FirstFailure,
    /// The failure that made the meter down ([`DOWN_AFTER`] in a row).
    WentDown,
    /// The first success after `failures` consecutive failed slots.
    Recovered {
        failures: u32,
    },
}

impl MeterSchedule {
    /// A schedule whose first slot is the next aligned slot strictly after `now_ms`, so a
    /// daemon started at 10:07 reads a 15 m meter first at 10:15, like every later reading.
    /// An interval below 1 ms counts as 1 ms; one beyond `i64::MAX` ms as `i64::MAX` ms.
    pub fn new(interval: Duration, now_ms: i64) -> MeterSchedule {
        let interval_ms = i64::try_from(interval.as_millis())
            .unwrap_or(i64::MAX)
            .max(1);
        MeterSchedule {
            interval_ms,
            next_due: next_slot(now_ms, interval_ms),
            failures: 0,
        }
    }

    pub fn interval_ms(&self) -> i64 {
        self.interval_ms
    }

    /// The slot time the meter should be polled at next (aligned to its interval).
    pub fn next_due(&self) -> i64 {
        self.next_due
    }

    /// Down after [`DOWN_AFTER`] consecutive failed slots, until a poll succeeds.
    pub fn is_down(&self) -> bool {
        self.failures >= DOWN_AFTER
    }

    /// Consecutive failed slots (0 after a success).
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// The poll of slot `slot_ms` finished at `now_ms` with `ok`. Moves to the next slot and says
    /// what changed.
    ///
    /// The next slot is the one the schedule plans (the following slot, or for a down meter the
    /// backoff slot), or, if the poll finished after that, the first aligned slot strictly after
    /// `now_ms`: missed slots are skipped, never made up in a burst.
    pub fn complete(&mut self, slot_ms: i64, ok: bool, now_ms: i64) -> Completion {
        let transition = if ok {
            let t = match self.failures {
                0 => Transition::None,
                failures => Transition::Recovered { failures },
            };
            self.failures = 0;
            t
        } else {
            self.failures = self.failures.saturating_add(1);
            match self.failures {
                1 => Transition::FirstFailure,
                DOWN_AFTER => Transition::WentDown,
                _ => Transition::None,
            }
        };

        let iv = i128::from(self.interval_ms);
        let slot = i128::from(slot_ms);
        let now = i128::from(now_ms);
        // The slot the meter would be polled at had this poll finished in time.
        let planned = floor(slot + self.delay_ms(), iv);
        let (next, missed) = if planned > now {
            (planned, 0)
        } else {
            // Every slot from `planned` up to `now` is skipped; `next` is the one after `now`.
            let next = floor(now, iv) + iv;
            (next, (next - planned) / iv)
        };
        self.next_due = saturate(next);
        Completion {
            transition,
            missed_slots: u64::try_from(missed).unwrap_or(u64::MAX),
            behind_ms: saturate((now - (slot + iv)).max(0)),
        }
    }

    /// Readings for this slot could not be taken for a reason that is not the meter's fault
    /// (serial port gone, clock not sane): move on without counting a failure.
    ///
    /// A slot that is not due yet is kept, so calling this for every meter of a bus whose port
    /// vanished never brings a meter (or a down meter's backoff slot) forward.
    pub fn skip(&mut self, now_ms: i64) {
        self.next_due = self.next_due.max(next_slot(now_ms, self.interval_ms));
    }

    /// Makes the meter due at once (in the slot that contains `now_ms`), unless it is down and
    /// its backoff slot is still ahead. Used when a lost serial port returns, so polling
    /// resumes within seconds instead of at the next slot.
    pub fn due_now(&mut self, now_ms: i64) {
        if !self.is_down() {
            self.next_due = self
                .next_due
                .min(slot_at_or_before(now_ms, self.interval_ms));
        }
    }

    /// The wall clock stepped back (an NTP step, an RTC-less boot corrected): a planned slot
    /// can never lie further ahead than one planned delay, so one that does was planned on the
    /// old clock. Moves it to the next aligned slot on the new clock and returns true;
    /// otherwise changes nothing. Without this a step back of an hour would stall the meter
    /// for an hour.
    pub fn clock_stepped_back(&mut self, now_ms: i64) -> bool {
        let limit = i128::from(now_ms) + self.delay_ms();
        if i128::from(self.next_due) > limit {
            self.next_due = next_slot(now_ms, self.interval_ms);
            true
        } else {
            false
        }
    }

    /// Distance from a polled slot to the planned next one: one interval, or for a down meter
    /// 2, 4, 8 … intervals (2 after the failure that made it down), capped at
    /// min(10 × interval, 1 h) but never below one interval.
    fn delay_ms(&self) -> i128 {
        let iv = i128::from(self.interval_ms);
        if !self.is_down() {
            return iv;
        }
        let cap = (10 * iv).min(i128::from(MAX_BACKOFF_MS)).max(iv);
        // The cap is reached long before the shift could overflow (2^62 × i64::MAX < 2^126).
        let doublings = (self.failures - DOWN_AFTER + 1).min(62);
        (iv << doublings).min(cap)
    }
}

/// Lets an event through at most once per period (a WARN that would otherwise repeat every
/// cycle). The first event always passes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimit {
    period_ms: i64,
    last: Option<i64>,
}

impl RateLimit {
    /// A negative period counts as 0 (everything passes).
    pub fn new(period_ms: i64) -> Self {
        RateLimit {
            period_ms: period_ms.max(0),
            last: None,
        }
    }

    /// Whether an event at `now_ms` may pass; if so, the period starts again from `now_ms`.
    /// A clock that stepped back before the last event also lets it through, so a clock
    /// correction never silences the warning until the clock catches up again.
    pub fn allow(&mut self, now_ms: i64) -> bool {
        let pass = match self.last {
            None => true,
            Some(last) => {
                now_ms < last || i128::from(now_ms) - i128::from(last) >= i128::from(self.period_ms)
            }
        };
        if pass {
            self.last = Some(now_ms);
        }
        pass
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const S: i64 = 1000;
    const M: i64 = 60 * S;
    const H: i64 = 60 * M;
    /// 2026-03-02T10:00:00Z, a Monday: a round hour to read the expected times easily.
    const T0: i64 = 1_772_445_600_000;

    fn minutes(m: u64) -> Duration {
        Duration::from_secs(60 * m)
    }

    #[test]
    fn a_clock_step_back_moves_the_plan_to_the_new_clock_and_nothing_else_does() {
        let mut s = MeterSchedule::new(minutes(15), T0 + 7 * M);
        assert_eq!(s.next_due(), T0 + 15 * M);
        // Forward steps and the normal passing of time change nothing.
        assert!(!s.clock_stepped_back(T0 + 7 * M));
        assert!(!s.clock_stepped_back(T0 + 24 * H));
        assert_eq!(s.next_due(), T0 + 15 * M);
        // 10:15 is exactly one interval ahead of 10:00 (still a plan of this clock); from
        // 09:07 it is over an hour ahead: the clock stepped back.
        assert!(!s.clock_stepped_back(T0));
        assert!(s.clock_stepped_back(T0 - H + 7 * M));
        assert_eq!(s.next_due(), T0 - H + 15 * M);
        // A down meter's backoff slot lies further ahead and is kept.
        let mut d = MeterSchedule::new(minutes(1), T0);
        let mut slot = d.next_due();
        for _ in 0..5 {
            let _ = d.complete(slot, false, slot + S);
            slot = d.next_due();
        }
        assert!(d.is_down());
        assert!(slot - (T0 + 5 * M) > M, "backoff beyond one interval");
        assert!(!d.clock_stepped_back(slot - 2 * M));
        assert!(d.clock_stepped_back(slot - H));
        assert_eq!(d.next_due(), slot - H + M);
    }

    #[test]
    fn due_now_brings_a_healthy_meter_forward_but_not_a_down_one() {
        let iv = 60_000;
        let t0 = 1_800_000_000_000i64;
        let mut s = MeterSchedule::new(Duration::from_millis(iv as u64), t0 + 1000);
        s.skip(t0 + 5000);
        s.due_now(t0 + 20_000);
        assert_eq!(s.next_due(), t0);
        let mut d = MeterSchedule::new(Duration::from_millis(iv as u64), t0);
        for k in 1..=3 {
            let slot = d.next_due();
            d.complete(slot, false, slot + 100);
            let _ = k;
        }
        assert!(d.is_down());
        let planned = d.next_due();
        d.due_now(planned - 1);
        assert_eq!(d.next_due(), planned);
    }

    #[test]
    fn alignment() {
        assert_eq!(T0 % H, 0);
        // 15 m: :00 :15 :30 :45.
        assert_eq!(next_slot(T0 + 7 * M, 15 * M), T0 + 15 * M);
        assert_eq!(next_slot(T0 + 15 * M - 1, 15 * M), T0 + 15 * M);
        assert_eq!(next_slot(T0 + 44 * M, 15 * M), T0 + 45 * M);
        assert_eq!(next_slot(T0 + 50 * M, 15 * M), T0 + H);
        // Exactly on a slot → the next one.
        assert_eq!(next_slot(T0, 15 * M), T0 + 15 * M);
        assert_eq!(next_slot(T0 + 15 * M, 15 * M), T0 + 30 * M);
        assert_eq!(slot_at_or_before(T0 + 15 * M, 15 * M), T0 + 15 * M);
        assert_eq!(slot_at_or_before(T0 + 29 * M, 15 * M), T0 + 15 * M);
        // 1 s.
        assert_eq!(next_slot(T0 + 1500, S), T0 + 2 * S);
        assert_eq!(next_slot(T0 + 2000, S), T0 + 3 * S);
        // 7 s: multiples of 7 s since the epoch, not since the hour.
        let t = next_slot(T0, 7 * S);
        assert_eq!(t % (7 * S), 0);
        assert!(t > T0 && t <= T0 + 7 * S);
        assert_eq!(next_slot(t, 7 * S), t + 7 * S);
        assert_eq!(next_slot(t - 1, 7 * S), t);
        // Before the epoch the grid continues (Euclidean division, not truncation).
        assert_eq!(next_slot(-1, 10), 0);
        assert_eq!(next_slot(-10, 10), 0);
        assert_eq!(slot_at_or_before(-1, 10), -10);
        // A zero or negative interval counts as 1 ms.
        assert_eq!(next_slot(5, 0), 6);
        assert_eq!(next_slot(5, -3), 6);
        // Saturation instead of overflow.
        assert_eq!(next_slot(i64::MAX, 1), i64::MAX);
        assert_eq!(next_slot(i64::MAX - 5, i64::MAX), i64::MAX);
        assert_eq!(slot_at_or_before(i64::MIN, 3), i64::MIN);
    }

    #[test]
    fn new_starts_at_the_next_slot() {
        let s = MeterSchedule::new(minutes(15), T0 + 7 * M);
        assert_eq!(s.next_due(), T0 + 15 * M);
        assert_eq!(s.interval_ms(), 15 * M);
        assert!(!s.is_down());
        assert_eq!(s.failures(), 0);
        assert_eq!(MeterSchedule::new(minutes(15), T0).next_due(), T0 + 15 * M);
        assert_eq!(MeterSchedule::new(Duration::ZERO, 5).interval_ms(), 1);
        assert_eq!(
            MeterSchedule::new(Duration::from_micros(500), 5).next_due(),
            6
        );
        assert_eq!(MeterSchedule::new(Duration::MAX, 0).interval_ms(), i64::MAX);
    }

    #[test]
    fn polls_in_time_follow_the_grid() {
        let mut s = MeterSchedule::new(minutes(15), T0 - 1);
        let c = s.complete(T0, true, T0 + 3 * S);
        assert_eq!(
            c,
            Completion {
                transition: Transition::None,
                missed_slots: 0,
                behind_ms: 0
            }
        );
        assert_eq!(s.next_due(), T0 + 15 * M);
        // Finishing exactly at the end of the slot is not behind, but that slot is already
        // taken by the clock: it is skipped rather than polled at once.
        let c = s.complete(T0 + 15 * M, true, T0 + 30 * M);
        assert_eq!((c.missed_slots, c.behind_ms), (1, 0));
        assert_eq!(s.next_due(), T0 + 45 * M);
    }

    #[test]
    fn a_long_poll_skips_missed_slots() {
        let mut s = MeterSchedule::new(Duration::from_secs(10), T0 - 1);
        // The slot at T0 finished 35 s late: slots +10, +20, +30 passed; next is +40.
        let c = s.complete(T0, true, T0 + 35 * S);
        assert_eq!(c.missed_slots, 3);
        assert_eq!(c.behind_ms, 25 * S);
        assert_eq!(s.next_due(), T0 + 40 * S);
        // Just past the end of the slot: one missed, 1 ms behind.
        let c = s.complete(T0 + 40 * S, true, T0 + 50 * S + 1);
        assert_eq!((c.missed_slots, c.behind_ms), (1, 1));
        assert_eq!(s.next_due(), T0 + 60 * S);
        // A poll that "finished" before its slot (the clock stepped back) still moves forward.
        let c = s.complete(T0 + 60 * S, true, T0);
        assert_eq!((c.missed_slots, c.behind_ms), (0, 0));
        assert_eq!(s.next_due(), T0 + 70 * S);
    }

    /// Runs failed polls that each finish 1 s after their slot; returns the due times seen.
    fn fail_times(s: &mut MeterSchedule, n: usize) -> Vec<i64> {
        let mut seen = Vec::new();
        for _ in 0..n {
            let due = s.next_due();
            let c = s.complete(due, false, due + S);
            assert_eq!(c.missed_slots, 0);
            seen.push(s.next_due() - due);
        }
        seen
    }

    #[test]
    fn down_and_backoff_for_a_1m_meter() {
        let mut s = MeterSchedule::new(minutes(1), T0 - 1);
        assert_eq!(s.next_due(), T0);
        let c = s.complete(T0, false, T0 + S);
        assert_eq!(c.transition, Transition::FirstFailure);
        assert_eq!(s.next_due(), T0 + M);
        let c = s.complete(T0 + M, false, T0 + M + S);
        assert_eq!(c.transition, Transition::None);
        assert!(!s.is_down());
        let c = s.complete(T0 + 2 * M, false, T0 + 2 * M + S);
        assert_eq!(c.transition, Transition::WentDown);
        assert!(s.is_down());
        assert_eq!(s.failures(), 3);
        // Down: next tries at +2, +4, +8, then capped at +10 m.
        assert_eq!(s.next_due(), T0 + 4 * M);
        let gaps = fail_times(&mut s, 5);
        assert_eq!(gaps, [4 * M, 8 * M, 10 * M, 10 * M, 10 * M]);
        assert_eq!(s.failures(), 8);
        assert_eq!(s.next_due(), T0 + 4 * M + 42 * M);
        // Recovery: the count of failed slots, then back to every minute.
        let due = s.next_due();
        let c = s.complete(due, true, due + S);
        assert_eq!(c.transition, Transition::Recovered { failures: 8 });
        assert!(!s.is_down());
        assert_eq!(s.failures(), 0);
        assert_eq!(s.next_due(), due + M);
        let c = s.complete(due + M, true, due + M + S);
        assert_eq!(c.transition, Transition::None);
    }

    #[test]
    fn backoff_for_a_15m_meter_caps_at_an_hour() {
        let mut s = MeterSchedule::new(minutes(15), T0 - 1);
        let gaps = fail_times(&mut s, 7);
        assert_eq!(gaps, [15 * M, 15 * M, 30 * M, H, H, H, H]);
        assert_eq!(s.next_due() % (15 * M), 0);
    }

    #[test]
    fn backoff_cap_not_on_the_grid_rounds_down() {
        // 7 m: the 1 h cap is not a multiple of 7 m; the try lands on the grid before it.
        let mut s = MeterSchedule::new(minutes(7), T0);
        let gaps = fail_times(&mut s, 7);
        assert_eq!(gaps, [7 * M, 7 * M, 14 * M, 28 * M, 56 * M, 56 * M, 56 * M]);
        // An interval above an hour: the cap is one interval.
        let mut s = MeterSchedule::new(Duration::from_secs(2 * 3600), T0);
        let gaps = fail_times(&mut s, 5);
        assert_eq!(gaps, [2 * H; 5]);
    }

    #[test]
    fn recovery_after_one_failure() {
        let mut s = MeterSchedule::new(minutes(1), T0 - 1);
        assert_eq!(
            s.complete(T0, false, T0 + S).transition,
            Transition::FirstFailure
        );
        let c = s.complete(T0 + M, true, T0 + M + S);
        assert_eq!(c.transition, Transition::Recovered { failures: 1 });
        // The next failure is a first failure again.
        let c = s.complete(T0 + 2 * M, false, T0 + 2 * M + S);
        assert_eq!(c.transition, Transition::FirstFailure);
    }

    #[test]
    fn a_late_failure_while_down_skips_from_now() {
        let mut s = MeterSchedule::new(minutes(1), T0 - 1);
        fail_times(&mut s, 3);
        let due = s.next_due();
        // Planned +4 m, but the poll took 5.5 m: the backoff slot passed, and the one at +5 m.
        let c = s.complete(due, false, due + 5 * M + 30 * S);
        assert_eq!(c.missed_slots, 2);
        assert_eq!(c.behind_ms, 4 * M + 30 * S);
        assert_eq!(s.next_due(), due + 6 * M);
    }

    #[test]
    fn skip_does_not_count() {
        let mut s = MeterSchedule::new(minutes(1), T0 - 1);
        s.complete(T0, false, T0 + S);
        assert_eq!(s.next_due(), T0 + M);
        // The port was gone for the slot at +1 m; checked at +1 m 5 s.
        s.skip(T0 + M + 5 * S);
        assert_eq!(s.next_due(), T0 + 2 * M);
        assert_eq!(s.failures(), 1);
        // Skipping before the slot is due keeps it.
        s.skip(T0 + M + 30 * S);
        assert_eq!(s.next_due(), T0 + 2 * M);
        // A down meter's backoff slot is kept too.
        fail_times(&mut s, 2);
        assert!(s.is_down());
        let due = s.next_due();
        s.skip(due - 30 * S);
        assert_eq!(s.next_due(), due);
        s.skip(due);
        assert_eq!(s.next_due(), due + M);
        assert_eq!(s.failures(), 3);
    }

    #[test]
    fn absurd_inputs_saturate() {
        let mut s = MeterSchedule::new(Duration::MAX, i64::MAX);
        assert_eq!(s.next_due(), i64::MAX);
        let c = s.complete(i64::MAX, false, i64::MIN);
        assert_eq!(c.behind_ms, 0);
        s.complete(i64::MIN, true, i64::MAX);
        s.skip(i64::MAX);
        let mut s = MeterSchedule::new(Duration::from_millis(1), i64::MIN);
        let c = s.complete(i64::MIN, true, i64::MAX);
        assert_eq!(c.missed_slots, u64::MAX);
        assert_eq!(c.behind_ms, i64::MAX);
        for _ in 0..200 {
            s.complete(0, false, 0);
        }
        assert_eq!(s.failures(), 200);
        // Down with a 1 ms interval: the cap is 10 intervals.
        assert_eq!(s.next_due(), 10);
    }

    #[test]
    fn rate_limit() {
        let mut r = RateLimit::new(10 * M);
        assert!(r.allow(T0));
        assert!(!r.allow(T0 + 1));
        assert!(!r.allow(T0 + 10 * M - 1));
        assert!(r.allow(T0 + 10 * M));
        assert!(!r.allow(T0 + 15 * M));
        // The clock stepped back: let the warning through rather than silence it for hours.
        assert!(r.allow(T0 - H));
        assert!(!r.allow(T0 - H + 1));
        let mut r = RateLimit::new(-5);
        assert!(r.allow(0));
        assert!(r.allow(0));
        let mut r = RateLimit::new(i64::MAX);
        assert!(r.allow(0));
        assert!(!r.allow(i64::MAX - 1));
        assert!(r.allow(i64::MAX));
    }

    proptest! {
        #[test]
        fn next_slot_is_aligned_and_after_now(
            now in -(1i64 << 60)..(1i64 << 60),
            interval in 1i64..(1 << 40),
        ) {
            let n = next_slot(now, interval);
            prop_assert!(n > now);
            prop_assert!(n - now <= interval);
            prop_assert_eq!(n.rem_euclid(interval), 0);
            let b = slot_at_or_before(now, interval);
            prop_assert!(b <= now && now - b < interval);
            prop_assert_eq!(n - b, interval);
        }

        #[test]
        fn next_due_stays_aligned_and_after_now(
            start in 0i64..(1i64 << 50),
            interval_ms in 1u64..(48 * 3_600_000),
            polls in prop::collection::vec((any::<bool>(), 0i64..(4 * 3_600_000), any::<bool>()), 0..40),
        ) {
            let mut s = MeterSchedule::new(Duration::from_millis(interval_ms), start);
            let iv = s.interval_ms();
            let mut now = start;
            prop_assert!(s.next_due() > now);
            for (ok, took, skip) in polls {
                let slot = s.next_due();
                now = slot + took;
                let failures = s.failures();
                if skip {
                    s.skip(now);
                    prop_assert_eq!(s.failures(), failures);
                } else {
                    let c = s.complete(slot, ok, now);
                    prop_assert_eq!(c.behind_ms, (now - slot - iv).max(0));
                    match c.transition {
                        Transition::Recovered { failures: f } => prop_assert_eq!(f, failures),
                        Transition::WentDown => prop_assert_eq!(s.failures(), DOWN_AFTER),
                        _ => {}
                    }
                    let gap = s.next_due() - slot;
                    let cap = (10 * iv).min(MAX_BACKOFF_MS).max(iv);
                    if c.missed_slots == 0 {
                        prop_assert!(gap >= iv && gap <= cap);
                    }
                }
                prop_assert!(s.next_due() > now);
                prop_assert_eq!(s.next_due().rem_euclid(iv), 0);
                prop_assert_eq!(s.is_down(), s.failures() >= DOWN_AFTER);
            }
        }

        #[test]
        fn never_panics(
            interval in any::<u64>(),
            start: i64,
            calls in prop::collection::vec((any::<i64>(), any::<bool>(), any::<i64>()), 0..20),
        ) {
            let mut s = MeterSchedule::new(Duration::from_millis(interval), start);
            let mut r = RateLimit::new(start);
            for (slot, ok, now) in calls {
                s.complete(slot, ok, now);
                s.skip(now);
                r.allow(now);
                next_slot(now, slot);
                slot_at_or_before(now, slot);
                prop_assert!(s.interval_ms() >= 1);
            }
        }
    }
}
