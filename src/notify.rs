//! systemd integration: `READY=1`, `WATCHDOG=1`, `STATUS=`, `RELOADING=1` and `STOPPING=1`
//! through sd_notify, and the health the watchdog ping depends on.
//!
//! Every long-running task (each bus, the sender) promises a deadline by which it will check in
//! again — before it sleeps, until the end of its sleep; before a meter transaction, until the
//! longest that transaction may take. The watchdog is pinged only while every promise is kept,
//! so a task that hangs (a deadlock, a stuck commit) stops the pings and systemd restarts the
//! service, while a task waiting for a known reason (the next slot, a backoff, a slow M-Bus
//! readout) keeps them going. Without `NOTIFY_SOCKET` nothing is sent.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sd_notify::NotifyState;

/// Extra time on top of every promise: scheduling jitter, a slow disk sync.
const SLACK: Duration = Duration::from_secs(2);

/// Sends notifications to systemd (a no-op when not started by systemd with `Type=notify`).
#[derive(Debug, Clone)]
pub struct Notifier {
    watchdog: Option<Duration>,
}

impl Notifier {
    /// From `NOTIFY_SOCKET` / `WATCHDOG_USEC` / `WATCHDOG_PID`.
    pub fn from_env() -> Notifier {
        Notifier {
            watchdog: sd_notify::watchdog_enabled(),
        }
    }

    /// The watchdog interval systemd expects pings within (`WatchdogSec=`), if any.
    pub fn watchdog(&self) -> Option<Duration> {
        self.watchdog
    }

    fn send(&self, states: &[NotifyState]) {
        if let Err(e) = sd_notify::notify(states) {
            tracing::debug!(error = %e, "sd_notify failed");
        }
    }

    pub fn ready(&self) {
        self.send(&[NotifyState::Ready]);
    }

    pub fn reloading(&self) {
        self.send(&[NotifyState::Reloading]);
    }

    pub fn stopping(&self) {
        self.send(&[NotifyState::Stopping]);
    }

    /// Asks systemd for more time to start (`EXTEND_TIMEOUT_USEC`), e.g. while waiting for
    /// disk space before `READY=1`.
    pub fn extend_timeout(&self, by: Duration) {
        let usec = u32::try_from(by.as_micros()).unwrap_or(u32::MAX);
        self.send(&[NotifyState::ExtendTimeoutUsec(usec)]);
    }

    pub fn ping(&self) {
        self.send(&[NotifyState::Watchdog]);
    }

    pub fn status(&self, line: &str) {
        self.send(&[NotifyState::Status(line)]);
    }
}

/// A test-only fault switch (`ENECTIVA_TEST_FAULT=stall-sender` or `stall-scheduler`): the named
/// task hangs after its first check-in, so tests can prove the watchdog stops pinging;
/// `panic-bus` makes every bus task panic as it starts, so tests can prove a failed bus stops
/// the daemon with exit status 1. Does nothing unless the variable is set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    None,
    StallSender,
    StallScheduler,
    PanicBus,
}

impl Fault {
    pub fn from_env() -> Fault {
        let fault = match std::env::var("ENECTIVA_TEST_FAULT").as_deref() {
            Ok("stall-sender") => Fault::StallSender,
            Ok("stall-scheduler") => Fault::StallScheduler,
            Ok("panic-bus") => Fault::PanicBus,
            _ => Fault::None,
        };
        if fault != Fault::None {
            tracing::warn!(
                ?fault,
                "ENECTIVA_TEST_FAULT is set: a test-only fault is switched on"
            );
        }
        fault
    }
}

/// What the watchdog and `STATUS=` look at.
#[derive(Debug)]
pub struct Health {
    started: Instant,
    /// Task name → the instant (ms since `started`) by which it promised to check in again.
    promises: Mutex<HashMap<String, i64>>,
    /// Meter → whether its last poll succeeded.
    meters: Mutex<HashMap<String, bool>>,
    /// Unix seconds of the last delivery, 0 if none since start.
    last_delivery: AtomicI64,
    pub fault: Fault,
}

impl Health {
    pub fn new(fault: Fault) -> Arc<Health> {
        Arc::new(Health {
            started: Instant::now(),
            promises: Mutex::new(HashMap::new()),
            meters: Mutex::new(HashMap::new()),
            last_delivery: AtomicI64::new(0),
            fault,
        })
    }

    fn ms(&self, at: Instant) -> i64 {
        i64::try_from(at.saturating_duration_since(self.started).as_millis()).unwrap_or(i64::MAX)
    }

    /// `task` will check in again within `within` (plus slack). A `within` beyond what an
    /// `Instant` can hold (durations in the config have no upper bound) is a promise for ever.
    pub fn promise(&self, task: &str, within: Duration) {
        let deadline = match Instant::now().checked_add(within.saturating_add(SLACK)) {
            Some(at) => self.ms(at),
            None => i64::MAX,
        };
        let mut p = self.promises.lock().unwrap_or_else(|e| e.into_inner());
        match p.get_mut(task) {
            Some(d) => *d = deadline,
            None => {
                p.insert(task.to_string(), deadline);
            }
        }
    }

    /// A task that ended on purpose (a bus removed by a reload) no longer counts.
    pub fn forget(&self, task: &str) {
        self.promises
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(task);
    }

    /// Every task kept its promise: the watchdog may be pinged.
    pub fn healthy(&self) -> bool {
        let now = self.ms(Instant::now());
        let p = self.promises.lock().unwrap_or_else(|e| e.into_inner());
        p.values().all(|deadline| *deadline >= now)
    }

    /// Tasks that broke their promise (for the log).
    pub fn late(&self) -> Vec<String> {
        let now = self.ms(Instant::now());
        let p = self.promises.lock().unwrap_or_else(|e| e.into_inner());
        let mut late: Vec<String> = p
            .iter()
            .filter(|(_, d)| **d < now)
            .map(|(t, _)| t.clone())
            .collect();
        late.sort();
        late
    }

    pub fn meter_result(&self, meter: &str, ok: bool) {
        self.meters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(meter.to_string(), ok);
    }

    pub fn forget_meter(&self, meter: &str) {
        self.meters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(meter);
    }

    /// (meters whose last poll succeeded, meters polled at least once).
    pub fn meters_ok(&self) -> (usize, usize) {
        let m = self.meters.lock().unwrap_or_else(|e| e.into_inner());
        (m.values().filter(|ok| **ok).count(), m.len())
    }

    pub fn delivered(&self, unix: i64) {
        self.last_delivery.store(unix, Ordering::Relaxed);
    }

    pub fn last_delivery(&self) -> Option<i64> {
        let v = self.last_delivery.load(Ordering::Relaxed);
        (v > 0).then_some(v)
    }
}

/// The one-line `STATUS=`, e.g. `5/6 meters ok, 1204 pending (oldest 14m), last delivery 3s ago`.
pub fn status_line(
    meters_ok: (usize, usize),
    configured: usize,
    pending: u64,
    oldest_age: Option<i64>,
    last_delivery_age: Option<i64>,
) -> String {
    let (ok, _) = meters_ok;
    let mut s = format!("{ok}/{configured} meters ok, {pending} pending");
    if let Some(age) = oldest_age {
        s.push_str(&format!(" (oldest {})", crate::commands::age(age)));
    }
    match last_delivery_age {
        Some(a) => s.push_str(&format!(", last delivery {} ago", crate::commands::age(a))),
        None => s.push_str(", nothing delivered yet"),
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn promises_decide_health() {
        let h = Health::new(Fault::None);
        assert!(h.healthy(), "no task yet");
        h.promise("bus a", Duration::from_secs(60));
        h.promise("sender", Duration::from_secs(60));
        assert!(h.healthy());
        // A promise already in the past (0 s + slack elapsed) is broken.
        {
            let mut p = h.promises.lock().unwrap_or_else(|e| e.into_inner());
            p.insert("sender".into(), -1);
        }
        assert!(!h.healthy());
        assert_eq!(h.late(), vec!["sender".to_string()]);
        h.forget("sender");
        assert!(h.healthy());
        // The longest wait a configuration can ask for is a promise, not a panic.
        h.promise("bus b", Duration::MAX);
        assert!(h.healthy());
    }

    #[test]
    fn status_line_reads_like_the_spec() {
        assert_eq!(
            status_line((5, 6), 6, 1204, Some(14 * 60), Some(3)),
            "5/6 meters ok, 1204 pending (oldest 14m), last delivery 3s ago"
        );
        assert_eq!(
            status_line((0, 0), 2, 0, None, None),
            "0/2 meters ok, 0 pending, nothing delivered yet"
        );
    }
}
