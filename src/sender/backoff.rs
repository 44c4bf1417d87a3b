//! Exponential backoff with full jitter, through the `backoff` crate (the design card's
//! choice; RUSTSEC-2025-0012 flags it unmaintained, so it is used only here and swapping it
//! is a one-file change).
//!
//! SPEC §4: from 1 s, doubling, capped at `api.max_backoff`, full jitter, never giving up. The
//! crate draws from `current × [1 − f, 1 + f]`; with randomization factor 1 that is
//! `[0, 2 × current]`, so starting at half the base with `max_interval` at half the cap gives
//! delays uniform in `[0, min(cap, base × 2^n)]`, i.e. full jitter over the doubling schedule.
//! The base is 1 s in the daemon; tests scale it down to see many doublings in little time.

use std::time::Duration;

use backoff::backoff::Backoff as _;

/// One backoff schedule (per series, or global).
#[derive(Debug)]
pub struct Backoff {
    inner: backoff::ExponentialBackoff,
    attempts: u32,
}

/// The first ceiling (SPEC §4: 1 s).
pub const BASE: Duration = Duration::from_secs(1);

impl Backoff {
    /// The SPEC schedule: ceilings 1 s, 2 s, 4 s, … up to `cap`.
    pub fn new(cap: Duration) -> Backoff {
        Backoff::with_base(BASE, cap)
    }

    /// Ceilings `base`, 2 × `base`, 4 × `base`, … up to `cap` (at least `base`).
    pub fn with_base(base: Duration, cap: Duration) -> Backoff {
        let base = base.max(Duration::from_millis(1));
        let cap = cap.max(base);
        let inner = backoff::ExponentialBackoff {
            current_interval: base / 2,
            initial_interval: base / 2,
            randomization_factor: 1.0,
            multiplier: 2.0,
            max_interval: cap / 2,
            // The crate gives up after 15 minutes by default; meter data is irreplaceable.
            max_elapsed_time: None,
            ..backoff::ExponentialBackoff::default()
        };
        Backoff { inner, attempts: 0 }
    }

    /// The delay before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        self.attempts = self.attempts.saturating_add(1);
        // With max_elapsed_time = None the crate never stops; the fallback is the cap.
        self.inner
            .next_backoff()
            .unwrap_or(self.inner.max_interval * 2)
    }

    /// The upper bound of the next delay (for tests and log messages).
    pub fn next_ceiling(&self) -> Duration {
        self.inner.current_interval * 2
    }

    pub fn reset(&mut self) {
        self.attempts = 0;
        self.inner.reset();
    }

    /// Failed attempts since the last reset.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_from_one_second_within_full_jitter_and_caps() {
        let cap = Duration::from_secs(300);
        let mut samples: Vec<Vec<Duration>> = vec![Vec::new(); 12];
        for _ in 0..400 {
            let mut b = Backoff::new(cap);
            for s in samples.iter_mut() {
                s.push(b.next_delay());
            }
        }
        for (n, s) in samples.iter().enumerate() {
            let ceiling = Duration::from_secs(1u64 << n).min(cap);
            assert!(
                s.iter().all(|d| *d <= ceiling + Duration::from_millis(1)),
                "attempt {n}"
            );
            // Full jitter: spread over the whole range, mean about half the ceiling.
            let mean = s.iter().map(Duration::as_secs_f64).sum::<f64>() / s.len() as f64;
            let c = ceiling.as_secs_f64();
            assert!(
                mean > 0.35 * c && mean < 0.65 * c,
                "attempt {n}: mean {mean} of {c}"
            );
            assert!(
                s.iter().any(|d| d.as_secs_f64() < 0.2 * c),
                "attempt {n}: no short delay"
            );
            assert!(
                s.iter().any(|d| d.as_secs_f64() > 0.8 * c),
                "attempt {n}: no long delay"
            );
        }
    }

    #[test]
    fn a_smaller_base_doubles_from_there() {
        let (base, cap) = (Duration::from_millis(50), Duration::from_secs(4));
        let ceilings: Vec<Duration> = (0..10).map(|n| (base * (1u32 << n)).min(cap)).collect();
        let mut longest = vec![Duration::ZERO; ceilings.len()];
        for _ in 0..400 {
            let mut b = Backoff::with_base(base, cap);
            for (n, c) in ceilings.iter().enumerate() {
                assert_eq!(b.next_ceiling(), *c, "attempt {n}");
                let d = b.next_delay();
                assert!(d <= *c + Duration::from_millis(1), "attempt {n}: {d:?}");
                longest[n] = longest[n].max(d);
            }
        }
        // 400 draws each: the longest is close to its ceiling (P(all < 0.8 c) = 0.8^400).
        for (n, (l, c)) in longest.iter().zip(&ceilings).enumerate() {
            assert!(
                l.as_secs_f64() > 0.8 * c.as_secs_f64(),
                "attempt {n}: {l:?}"
            );
        }
        assert_eq!(
            Backoff::with_base(Duration::from_secs(2), Duration::from_secs(1)).next_ceiling(),
            Duration::from_secs(2),
            "the cap is at least the base"
        );
    }

    #[test]
    fn never_gives_up_and_resets() {
        let mut b = Backoff::new(Duration::from_secs(4));
        for _ in 0..10_000 {
            assert!(b.next_delay() <= Duration::from_secs(4) + Duration::from_millis(1));
        }
        assert_eq!(b.attempts(), 10_000);
        b.reset();
        assert_eq!(b.attempts(), 0);
        assert!(b.next_delay() <= Duration::from_secs(1) + Duration::from_millis(1));
    }
}
