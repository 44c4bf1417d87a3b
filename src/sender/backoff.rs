//! Exponential backoff with full jitter, through the `backoff` crate (the design card's
//! choice; RUSTSEC-2025-0012 flags it unmaintained, so it is used only here and swapping it
//! is a one-file change).
//!
//! SPEC §4: from 1 s, doubling, capped at `api.max_backoff`, full jitter, never giving up. The
//! crate draws from `current × [1 − f, 1 + f]`; with randomization factor 1 that is
//! `[0, 2 × current]`, so starting at 0.5 s with `max_interval` at half the cap gives delays
//! uniform in `[0, min(cap, 2^n s)]`, i.e. full jitter over the doubling schedule.

use std::time::Duration;

use backoff::backoff::Backoff as _;

/// One backoff schedule (per series, or global).
#[derive(Debug)]
pub struct Backoff {
    inner: backoff::ExponentialBackoff,
    attempts: u32,
}

impl Backoff {
    pub fn new(cap: Duration) -> Backoff {
        let cap = cap.max(Duration::from_secs(1));
        let inner = backoff::ExponentialBackoff {
            current_interval: Duration::from_millis(500),
            initial_interval: Duration::from_millis(500),
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
