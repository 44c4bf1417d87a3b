//! What an API answer means for the sender's next step (SPEC §4 answer table), and the breaker
//! that stops one systematic rejection from dead-lettering everything.
//!
//! Pure: a status code, a `Retry-After` value and `now` go in; an [`Outcome`] comes out. No IO,
//! no clock of its own.

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime};

use crate::reading::Series;

/// The longest `Retry-After` honoured (SPEC §4: at most 1 h).
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// What to do after one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// 2xx: stored; remove from the queue.
    Delivered,
    /// 409: an identical reading is already stored; remove from the queue.
    Duplicate,
    /// 400, 413, 422: this reading is rejected; dead-letter it and continue with the series.
    Rejected,
    /// 401, 403, 404, 406, 415 (and any other 3xx/4xx): credentials, customer id, URL or wire
    /// format are wrong, which would hit every reading: pause all sending, keep everything.
    PauseAll { reread_token: bool },
    /// 429, 503: the API asks us to slow down: pause all series, `Retry-After` as a floor.
    SlowDown { retry_after: Option<Duration> },
    /// 408 and other 5xx: back off this series.
    RetrySeries,
    /// Timeout, connection or TLS failure: the network is down; back off globally.
    NetworkDown,
}

/// Classifies an HTTP status (with its `Retry-After` header, if any).
pub fn classify(status: u16, retry_after: Option<&str>, now: SystemTime) -> Outcome {
    match status {
        200..=299 => Outcome::Delivered,
        409 => Outcome::Duplicate,
        400 | 413 | 422 => Outcome::Rejected,
        429 | 503 => Outcome::SlowDown {
            retry_after: retry_after.and_then(|v| parse_retry_after(v, now)),
        },
        408 | 500..=599 => Outcome::RetrySeries,
        401 | 403 => Outcome::PauseAll { reread_token: true },
        // 404/406/415 and every other code we do not expect: a configuration or client
        // problem, never a reason to drop data.
        _ => Outcome::PauseAll {
            reread_token: false,
        },
    }
}

/// `Retry-After` as delay-seconds or an HTTP date (RFC 9110 §10.2.3), clamped to
/// [0, [`MAX_RETRY_AFTER`]]. A date in the past (or a wrong local clock) gives zero.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let v = value.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs).min(MAX_RETRY_AFTER));
    }
    let when = httpdate::parse_http_date(v).ok()?;
    Some(
        when.duration_since(now)
            .unwrap_or(Duration::ZERO)
            .min(MAX_RETRY_AFTER),
    )
}

/// Consecutive identical rejections needed to trip the breaker.
pub const BREAKER_THRESHOLD: u32 = 5;
/// ... across at least this many series.
pub const BREAKER_MIN_SERIES: usize = 2;

/// What to do with a rejected reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// An ordinary rejection: dead-letter it.
    DeadLetter,
    /// This rejection tripped the breaker: keep the reading and pause everything.
    Trip,
    /// The breaker is open and the API still answers the same: keep it, pause again.
    StillTripped,
}

/// SPEC §4: when 5 consecutive requests across at least 2 series are rejected with the same
/// 4xx, sending pauses as for 401 instead of dead-lettering more.
#[derive(Debug, Clone, Default)]
pub struct Breaker {
    status: Option<u16>,
    count: u32,
    series: BTreeSet<Series>,
    tripped: Option<u16>,
}

impl Breaker {
    pub fn on_rejected(&mut self, status: u16, series: &Series) -> Verdict {
        if self.tripped == Some(status) {
            return Verdict::StillTripped;
        }
        if self.status == Some(status) {
            self.count += 1;
        } else {
            self.status = Some(status);
            self.count = 1;
            self.series.clear();
        }
        self.series.insert(series.clone());
        if self.count >= BREAKER_THRESHOLD && self.series.len() >= BREAKER_MIN_SERIES {
            self.tripped = Some(status);
            Verdict::Trip
        } else {
            Verdict::DeadLetter
        }
    }

    /// Any other answer from the API breaks the streak; a success also closes the breaker.
    pub fn on_other_answer(&mut self, success: bool) {
        self.status = None;
        self.count = 0;
        self.series.clear();
        if success {
            self.tripped = None;
        }
    }

    pub fn is_tripped(&self) -> bool {
        self.tripped.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reading::Kind;

    #[test]
    fn answer_table() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        for s in [200, 201, 204] {
            assert_eq!(classify(s, None, now), Outcome::Delivered);
        }
        assert_eq!(classify(409, None, now), Outcome::Duplicate);
        for s in [400, 413, 422] {
            assert_eq!(classify(s, None, now), Outcome::Rejected);
        }
        for s in [401, 403] {
            assert_eq!(
                classify(s, None, now),
                Outcome::PauseAll { reread_token: true }
            );
        }
        for s in [404, 406, 415, 405, 301, 302] {
            assert_eq!(
                classify(s, None, now),
                Outcome::PauseAll {
                    reread_token: false
                }
            );
        }
        assert_eq!(
            classify(429, Some("3"), now),
            Outcome::SlowDown {
                retry_after: Some(Duration::from_secs(3))
            }
        );
        assert_eq!(
            classify(503, None, now),
            Outcome::SlowDown { retry_after: None }
        );
        for s in [408, 500, 502, 504, 599] {
            assert_eq!(classify(s, None, now), Outcome::RetrySeries);
        }
    }

    #[test]
    fn retry_after_forms() {
        let now = httpdate::parse_http_date("Wed, 21 Oct 2026 07:28:00 GMT").expect("date");
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("99999", now), Some(MAX_RETRY_AFTER));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2026 07:28:30 GMT", now),
            Some(Duration::from_secs(30))
        );
        // In the past: no wait beyond the backoff.
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2026 07:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(
            parse_retry_after("Fri, 21 Oct 2033 07:28:00 GMT", now),
            Some(MAX_RETRY_AFTER)
        );
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-5", now), None);
    }

    #[test]
    fn breaker_needs_five_across_two_series() {
        let a = Series::new(Kind::Reading, "A", None);
        let b = Series::new(Kind::Reading, "B", None);
        let mut br = Breaker::default();
        // Five from one series only: all dead letters.
        for _ in 0..6 {
            assert_eq!(br.on_rejected(400, &a), Verdict::DeadLetter);
        }
        // The sixth 400 came from A; one from B makes 7 across two series: trip.
        assert_eq!(br.on_rejected(400, &b), Verdict::Trip);
        assert!(br.is_tripped());
        assert_eq!(br.on_rejected(400, &a), Verdict::StillTripped);
        // A different failure in between does not close it; a success does.
        br.on_other_answer(false);
        assert_eq!(br.on_rejected(400, &b), Verdict::StillTripped);
        br.on_other_answer(true);
        assert_eq!(br.on_rejected(400, &b), Verdict::DeadLetter);
    }

    #[test]
    fn breaker_streak_is_consecutive_and_same_status() {
        let a = Series::new(Kind::Reading, "A", None);
        let b = Series::new(Kind::Reading, "B", None);
        let mut br = Breaker::default();
        for _ in 0..2 {
            br.on_rejected(400, &a);
            br.on_rejected(400, &b);
        }
        assert_eq!(br.on_rejected(422, &a), Verdict::DeadLetter);
        assert_eq!(br.on_rejected(400, &a), Verdict::DeadLetter);
        br.on_other_answer(true);
        for _ in 0..4 {
            assert_eq!(br.on_rejected(400, &a), Verdict::DeadLetter);
        }
        assert_eq!(br.on_rejected(400, &b), Verdict::Trip);
    }
}
