//! The system clock as the daemon sees it (SPEC §6.1): the current time in Unix seconds and
//! milliseconds, whether the clock is sane (not earlier than the day this binary was built),
//! and whether the kernel reports it synchronised (`adjtimex(2)`, read-only).
//!
//! This is the one module that reads the clock; pure cores (`schedule`, the protocol decoders)
//! take time as a parameter instead. It never sets or slews the clock, never sleeps, and never
//! panics: out-of-range times saturate. Its single `unsafe` block is the `adjtimex` call.

use std::time::{SystemTime, UNIX_EPOCH};

const DAY_SECS: i64 = 24 * 60 * 60;

/// When this binary was built (Unix seconds, from `build.rs`: `SOURCE_DATE_EPOCH` or the first
/// build's time); 0 if the recorded value does not parse, which disables the sanity floor
/// rather than refusing every reading.
pub fn build_time() -> i64 {
    env!("ENECTIVA_BUILD_TIME").parse().unwrap_or(0)
}

/// The earliest time the clock may show for readings to be taken: the start of the UTC day of
/// [`build_time`]. The whole day, so a build made late in the day in one time zone does not make
/// a board whose RTC was set by hand that morning look wrong.
pub fn clock_floor() -> i64 {
    floor_of(build_time())
}

fn floor_of(build_time: i64) -> i64 {
    build_time.saturating_sub(build_time.rem_euclid(DAY_SECS))
}

/// Whether `now_unix` can be a true time: not earlier than [`clock_floor`]. A board without a
/// battery-backed RTC boots in 1970 or at its last saved time, and readings stamped then would
/// be wrong forever (SPEC §6.1).
pub fn is_sane(now_unix: i64) -> bool {
    now_unix >= clock_floor()
}

/// The kernel's view of synchronisation: `Ok(true)` when NTP (or chrony, or timesyncd) has
/// cleared `STA_UNSYNC`, `Ok(false)` when it is set, `Err` with the reason when the call fails
/// (a seccomp filter that denies `adjtimex`, as systemd's `ProtectClock=` does) or the platform
/// has no `adjtimex`.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
pub fn synchronized() -> Result<bool, String> {
    // SAFETY: `timex` is a plain C struct for which all-zero bytes are a valid value. With
    // `modes = 0` (from the zeroing) adjtimex only reads the kernel's state into the struct,
    // which is a valid, exclusively borrowed local for the whole call; no pointer outlives it.
    let (rc, status) = unsafe {
        let mut tx: libc::timex = std::mem::zeroed();
        let rc = libc::adjtimex(&mut tx);
        (rc, tx.status)
    };
    if rc == -1 {
        return Err(format!("adjtimex: {}", std::io::Error::last_os_error()));
    }
    Ok(status & libc::STA_UNSYNC == 0)
}

/// The kernel's view of synchronisation: unknown on platforms without `adjtimex`.
#[cfg(not(target_os = "linux"))]
pub fn synchronized() -> Result<bool, String> {
    Err("this platform has no adjtimex".to_string())
}

/// Now in Unix milliseconds (negative before 1970), saturating at the ends of `i64`.
pub fn now_ms() -> i64 {
    since_epoch(SystemTime::now(), |d| d.as_millis())
}

/// Now in Unix seconds (negative before 1970, rounded toward zero), saturating at the ends of
/// `i64`.
pub fn now_unix() -> i64 {
    since_epoch(SystemTime::now(), |d| u128::from(d.as_secs()))
}

fn since_epoch(t: SystemTime, units: impl Fn(std::time::Duration) -> u128) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(units(d)).unwrap_or(i64::MAX),
        Err(e) => i64::try_from(units(e.duration()))
            .map(|n| -n)
            .unwrap_or(i64::MIN),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// 2026-01-01T00:00:00Z.
    const JAN_2026: i64 = 1_767_225_600;

    #[test]
    fn build_time_is_plausible() {
        let b = build_time();
        // Unless SOURCE_DATE_EPOCH set it to something old, the build happened recently.
        if std::env::var_os("SOURCE_DATE_EPOCH").is_none() {
            assert!(b > JAN_2026, "{b}");
        }
        assert!(b <= now_unix() + DAY_SECS, "{b}");
        assert!(clock_floor() <= b);
        assert!(b - clock_floor() < DAY_SECS);
        assert_eq!(clock_floor() % DAY_SECS, 0);
    }

    #[test]
    fn floor_is_the_start_of_the_utc_day() {
        assert_eq!(floor_of(JAN_2026), JAN_2026);
        assert_eq!(floor_of(JAN_2026 + DAY_SECS - 1), JAN_2026);
        assert_eq!(floor_of(JAN_2026 + DAY_SECS), JAN_2026 + DAY_SECS);
        assert_eq!(floor_of(0), 0);
        assert_eq!(floor_of(-1), -DAY_SECS);
        assert_eq!(floor_of(i64::MIN), i64::MIN);
        assert!(floor_of(i64::MAX) > i64::MAX - DAY_SECS);
    }

    #[test]
    fn sanity() {
        assert!(is_sane(now_unix()));
        assert!(is_sane(clock_floor()));
        // 2001-09-09: a board that booted from a dead RTC.
        assert!(!is_sane(1_000_000_000));
        assert!(!is_sane(0));
        assert!(!is_sane(i64::MIN));
    }

    #[test]
    fn synchronized_answers() {
        // Any answer is fine on a test machine: containers often report unsynchronised, and a
        // seccomp filter may refuse the call (Err). It must just return, and agree with itself.
        let s = synchronized();
        eprintln!("synchronized() = {s:?}");
        if !cfg!(target_os = "linux") {
            assert!(s.is_err());
        }
        assert_eq!(s.is_ok(), synchronized().is_ok());
        if let Err(e) = s {
            assert!(!e.is_empty());
        }
    }

    #[test]
    fn now_is_consistent() {
        let ms = now_ms();
        let s = now_unix();
        assert!(ms > JAN_2026 * 1000);
        assert!((ms / 1000 - s).abs() <= 1);
    }

    #[test]
    fn since_epoch_saturates() {
        let ms = |t| since_epoch(t, |d| d.as_millis());
        assert_eq!(ms(UNIX_EPOCH), 0);
        assert_eq!(ms(UNIX_EPOCH + Duration::from_millis(1500)), 1500);
        assert_eq!(ms(UNIX_EPOCH - Duration::from_millis(1500)), -1500);
        if let Some(far) = UNIX_EPOCH.checked_add(Duration::from_secs(u64::MAX / 2)) {
            assert_eq!(ms(far), i64::MAX);
        }
        if let Some(past) = UNIX_EPOCH.checked_sub(Duration::from_secs(u64::MAX / 2)) {
            assert_eq!(ms(past), i64::MIN);
        }
    }
}
