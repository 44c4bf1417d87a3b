//! The bus task: exactly one owner per `[[modbus_tcp]]` connection, per `[[modbus_rtu]]` serial
//! line and per `[[mbus]]` line, reading its meters one after another on their wall-clock
//! schedules and committing each meter's readings to the queue. Generic over the line ([`Line`])
//! and the protocol's meter ([`BusMeter`]), so Modbus and M-Bus share one scheduler.
//!
//! A failed meter costs at most its timeout on the slots where it is tried; it goes down after
//! three failed slots and is retried at growing intervals (`schedule.rs`). The first failure
//! logs one WARN, recovery one INFO. Readings are not taken while the clock is before the
//! binary's build date, nor before synchronisation with `[clock] require_sync`. A serial port
//! that disappears is reopened every 2 s without counting failures against its meters, and
//! the slots missed meanwhile are polled as soon as it returns. Cancellation is honoured only
//! between transactions: a running request finishes (bounded by its timeout).

use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use std::fmt;
use std::future::Future;

use crate::clock;
use std::sync::Arc;

use crate::config::Output;
use crate::events;
use crate::notify::{Fault, Health};
use crate::queue::{MeterPoll, PendingCommit, Queue};
use crate::reading::Reading;
use crate::schedule::{MeterSchedule, RateLimit, Transition};

/// What a bus task needs besides its link and meters.
#[derive(Debug, Clone)]
pub struct BusContext {
    pub queue: Queue,
    pub require_sync: bool,
    /// Where the task promises when it will check in again (the watchdog looks at it).
    pub health: Arc<Health>,
    /// Cancelled when a bus task panics (a bug, never device input): the daemon then stops
    /// with exit status 1 so systemd restarts it, instead of running on without that bus.
    pub crashed: tokio_util::sync::CancellationToken,
}

/// Removes a finished bus task's promise, however the task ends.
struct Forget(Arc<Health>, String);

impl Drop for Forget {
    fn drop(&mut self) {
        self.0.forget(&self.1);
    }
}

/// Why a transaction failed, as the line saw it. Shaped by the bus's next decision: a timeout,
/// a broken link or a foreign answer fails the meter's slot (the link resets itself), a device
/// exception fails the slot on a working link, a vanished serial port is not the meter's fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkError {
    /// No answer within the timeout (the link has been reset: a late answer is never read).
    Timeout,
    /// Could not connect or open the line.
    Connect(String),
    /// The connection broke.
    Transport(String),
    /// An answer that does not belong to the request, or cannot be decoded.
    Protocol(String),
    /// The meter answered with a Modbus exception.
    Exception(tokio_modbus::ExceptionCode),
    /// The meter refused the request in its own terms (M-Bus application error, …).
    Refused(String),
    /// An answer with the wrong number of registers (a stale or foreign answer).
    WrongCount { expected: u16, got: usize },
    /// The serial port is gone (USB unplugged): not the meter's fault.
    PortGone(String),
}

impl fmt::Display for LinkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LinkError::Timeout => f.write_str("no answer within the timeout"),
            LinkError::Connect(e) => write!(f, "cannot connect: {e}"),
            LinkError::Transport(e) => write!(f, "connection lost: {e}"),
            LinkError::Protocol(e) => write!(f, "answer does not match the request: {e}"),
            LinkError::Exception(c) => write!(
                f,
                "Modbus exception: {}",
                crate::modbus::poll::exception_name(*c)
            ),
            LinkError::Refused(e) => write!(f, "the meter refused: {e}"),
            LinkError::WrongCount { expected, got } => {
                write!(f, "answer with {got} registers instead of {expected}")
            }
            LinkError::PortGone(e) => write!(f, "serial port gone: {e}"),
        }
    }
}

impl std::error::Error for LinkError {}

/// Garbage bytes and bad frames seen on a serial line (cumulative).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LineErrors {
    pub crc_errors: u64,
    pub garbage_bytes: u64,
}

/// A TCP connection or serial line a bus owns.
pub trait Line: Send {
    /// Opens the line again after [`LinkError::PortGone`]; Ok when it is usable.
    fn reconnect(&mut self) -> impl Future<Output = Result<(), LinkError>> + Send;

    /// Line errors counted so far (zero for lines without a serial port).
    fn line_errors(&self) -> LineErrors {
        LineErrors::default()
    }
}

/// One value a poll produced, ready to become a [`Reading`].
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub output: Output,
    pub value: f64,
    /// The meter said "not available".
    pub sentinel: Option<String>,
}

/// A meter on a bus, whatever its protocol.
pub trait BusMeter<L: Line>: Send {
    fn name(&self) -> &str;
    fn interval(&self) -> Duration;
    /// Whether it has anything to read.
    fn has_channels(&self) -> bool;
    /// The longest one poll may take (every request timing out, retries included): the bus
    /// promises the watchdog to be back within it.
    fn max_duration(&self, line: &L) -> Duration;
    /// Reads the meter once. All or nothing: a failure means no sample of this slot.
    fn poll(
        &mut self,
        line: &mut L,
        bus: &str,
    ) -> impl Future<Output = Result<Vec<Sample>, LinkError>> + Send;
}

struct Meter<M> {
    poller: M,
    schedule: MeterSchedule,
    /// Line errors seen while polling this meter (since the task started).
    line: LineErrors,
    /// A slot was skipped while the serial port was gone: poll as soon as it returns.
    missed: bool,
}

/// The longest single sleep: the wall clock is looked at again at least this often, so a
/// clock step never leaves a bus asleep for a whole interval.
const MAX_SLEEP: Duration = Duration::from_secs(5);
/// How often a lost serial port is tried again (SPEC: polling resumes within 10 s).
const REOPEN_EVERY: Duration = Duration::from_secs(2);

/// Runs one bus until `shutdown`.
pub async fn run_bus<L: Line, M: BusMeter<L>>(
    bus: String,
    mut link: L,
    meters: Vec<M>,
    ctx: BusContext,
    shutdown: CancellationToken,
) {
    let now = clock::now_ms();
    let mut meters: Vec<Meter<M>> = meters
        .into_iter()
        .filter(|m| m.has_channels())
        .map(|m| Meter {
            schedule: MeterSchedule::new(m.interval(), now),
            poller: m,
            line: LineErrors::default(),
            missed: false,
        })
        .collect();
    if meters.is_empty() {
        return;
    }
    let mut logs = Logs {
        behind: RateLimit::new(60_000),
        line: RateLimit::new(60_000),
        reopen: RateLimit::new(600_000),
    };
    let mut in_flight = InFlight::new(meters.len());
    let mut clock_log = RateLimit::new(600_000);
    let mut step_log = RateLimit::new(600_000);
    let mut sync_log = RateLimit::new(600_000);
    let mut sync_unknown_logged = false;
    let mut port_lost: Option<Instant> = None;
    let task = format!("bus {bus}");
    let _forget = Forget(ctx.health.clone(), task.clone());
    if ctx.health.fault == Fault::PanicBus {
        panic!("test fault: bus {bus} panics");
    }
    loop {
        if shutdown.is_cancelled() {
            return;
        }
        if ctx.health.fault == Fault::StallScheduler {
            // Test-only: hang like a deadlocked task (but still stop on shutdown).
            ctx.health.promise(&task, Duration::from_secs(1));
            shutdown.cancelled().await;
            return;
        }
        if let Some(since) = port_lost {
            ctx.health.promise(&task, REOPEN_EVERY * 2);
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(REOPEN_EVERY) => {}
            }
            let now = clock::now_ms();
            match link.reconnect().await {
                Ok(()) => {
                    port_lost = None;
                    tracing::info!(bus = %bus, gone_s = since.elapsed().as_secs(), "serial port is back; polling resumes");
                    for m in meters.iter_mut().filter(|m| m.missed) {
                        m.missed = false;
                        m.schedule.due_now(now);
                    }
                }
                Err(e) => {
                    if !matches!(e, LinkError::PortGone(_)) && logs.reopen.allow(now) {
                        tracing::warn!(bus = %bus, error = %e, "serial port cannot be opened; trying again");
                    }
                    for m in meters.iter_mut().filter(|m| m.schedule.next_due() <= now) {
                        m.schedule.skip(now);
                        m.missed = true;
                    }
                }
            }
            continue;
        }
        let now = clock::now_ms();
        let mut stepped = false;
        for m in &mut meters {
            stepped |= m.schedule.clock_stepped_back(now);
        }
        if stepped && step_log.allow(now) {
            tracing::warn!(bus = %bus, "the system clock stepped back; meters are polled on the new clock from the next slot");
        }
        let next = meters
            .iter()
            .map(|m| m.schedule.next_due())
            .min()
            .unwrap_or(now);
        if next > now {
            let wait = Duration::from_millis(u64::try_from(next - now).unwrap_or(0)).min(MAX_SLEEP);
            ctx.health.promise(&task, wait);
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
            }
            continue;
        }
        let now_unix = now.div_euclid(1000);
        if !clock::is_sane(now_unix) {
            if clock_log.allow(now) {
                tracing::error!(
                    bus = %bus,
                    "system clock is before this binary's build date: no readings are taken until it is set (check NTP / the RTC)"
                );
            }
            for m in meters.iter_mut().filter(|m| m.schedule.next_due() <= now) {
                m.schedule.skip(now);
            }
            continue;
        }
        let synced = match clock::synchronized() {
            Ok(synced) => synced,
            Err(e) => {
                if !sync_unknown_logged {
                    sync_unknown_logged = true;
                    tracing::warn!(bus = %bus, error = %e, "cannot read the clock's synchronisation state: readings are recorded as unsynchronised (is adjtimex denied by a seccomp filter?)");
                }
                false
            }
        };
        if ctx.require_sync && !synced {
            if sync_log.allow(now) {
                tracing::warn!(bus = %bus, "waiting for the clock to be synchronised ([clock] require_sync)");
            }
            for m in meters.iter_mut().filter(|m| m.schedule.next_due() <= now) {
                m.schedule.skip(now);
            }
            continue;
        }
        // Every meter due now, earliest slot first, one after another.
        let mut due: Vec<usize> = (0..meters.len())
            .filter(|i| meters[*i].schedule.next_due() <= now)
            .collect();
        due.sort_by_key(|i| (meters[*i].schedule.next_due(), *i));
        for i in due {
            if shutdown.is_cancelled() {
                return;
            }
            let m = &mut meters[i];
            let slot = m.schedule.next_due();
            let before = link.line_errors();
            // The poll; its readings go to the queue, which commits them with the next group
            // while the bus goes on to the next meter.
            ctx.health.promise(
                &task,
                m.poller
                    .max_duration(&link)
                    .saturating_add(Duration::from_secs(5)),
            );
            let outcome = m.poller.poll(&mut link, &bus).await;
            ctx.health.meter_result(m.poller.name(), outcome.is_ok());
            let after = link.line_errors();
            let done = clock::now_ms();
            let new_errors = LineErrors {
                crc_errors: after.crc_errors.saturating_sub(before.crc_errors),
                garbage_bytes: after.garbage_bytes.saturating_sub(before.garbage_bytes),
            };
            m.line.crc_errors += new_errors.crc_errors;
            m.line.garbage_bytes += new_errors.garbage_bytes;
            if new_errors != LineErrors::default() && logs.line.allow(done) {
                tracing::warn!(
                    bus = %bus,
                    meter = %m.poller.name(),
                    crc_errors = m.line.crc_errors,
                    garbage_bytes = m.line.garbage_bytes,
                    "noise on the line: bad CRC or garbage bytes (check cabling, termination and the baud rate)"
                );
            }
            if let Err(LinkError::PortGone(e)) = &outcome {
                tracing::warn!(bus = %bus, error = %e, "serial port gone; trying to reopen it every 2 s (its meters are not counted as failed)");
                port_lost = Some(Instant::now());
                for m in meters.iter_mut().filter(|m| m.schedule.next_due() <= done) {
                    m.schedule.skip(done);
                    m.missed = true;
                }
                let m = &meters[i];
                record(
                    &ctx.queue,
                    &bus,
                    m,
                    done,
                    false,
                    Some(format!("serial port gone: {e}")),
                );
                break;
            }
            poll_done(
                &bus,
                m,
                slot,
                outcome,
                done,
                synced,
                &ctx.queue,
                &mut in_flight,
                &mut logs,
            )
            .await;
        }
    }
}

/// The bus's commits handed to the queue and not yet answered. The bus polls its next meter
/// while the queue's group commit (one window of up to 200 ms plus a disk sync) runs, instead
/// of waiting for each meter's commit, which held one bus to five meters a second. At most one
/// cycle's worth (one commit per meter) stays unanswered, so a stalled disk still holds the bus
/// back instead of piling readings up in memory. Order is kept: the queue takes submissions in
/// the order they are made.
struct InFlight {
    answers: std::collections::VecDeque<(String, PendingCommit)>,
    limit: usize,
}

impl InFlight {
    fn new(meters: usize) -> InFlight {
        InFlight {
            answers: std::collections::VecDeque::with_capacity(meters),
            limit: meters.max(1),
        }
    }

    /// Adds a submitted commit; first takes the answers already in and, while the limit is
    /// reached, waits for the oldest.
    async fn push(&mut self, bus: &str, meter: &str, answer: PendingCommit) {
        use tokio::sync::oneshot::error::TryRecvError;
        loop {
            let full = self.answers.len() >= self.limit;
            let Some((_, oldest)) = self.answers.front_mut() else {
                break;
            };
            // `None`: the writer stopped without answering.
            let result = if full {
                oldest.await.ok()
            } else {
                match oldest.try_recv() {
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Closed) => None,
                    Ok(r) => Some(r),
                }
            };
            let m = self.answers.pop_front().map(|(m, _)| m).unwrap_or_default();
            match result {
                Some(Ok(_)) => {}
                // The app sees the queue's fatal state and stops the process.
                Some(Err(e)) => {
                    tracing::error!(bus, meter = %m, error = %e, "cannot commit readings")
                }
                None => {
                    tracing::error!(bus, meter = %m, "cannot commit readings: the queue is closed")
                }
            }
        }
        self.answers.push_back((meter.to_string(), answer));
    }
}

struct Logs {
    behind: RateLimit,
    line: RateLimit,
    reopen: RateLimit,
}

fn record<L: Line, M: BusMeter<L>>(
    queue: &Queue,
    bus: &str,
    m: &Meter<M>,
    done_ms: i64,
    ok: bool,
    error: Option<String>,
) {
    let _ = queue.record_poll(MeterPoll {
        meter: m.poller.name().to_string(),
        bus: bus.to_string(),
        time: done_ms.div_euclid(1000),
        ok,
        error,
        failures: i64::from(m.schedule.failures()),
        down: m.schedule.is_down(),
        crc_errors: i64::try_from(m.line.crc_errors).unwrap_or(i64::MAX),
        garbage_bytes: i64::try_from(m.line.garbage_bytes).unwrap_or(i64::MAX),
    });
}

#[allow(clippy::too_many_arguments)]
async fn poll_done<L: Line, M: BusMeter<L>>(
    bus: &str,
    m: &mut Meter<M>,
    slot: i64,
    outcome: Result<Vec<Sample>, LinkError>,
    done_ms: i64,
    synced: bool,
    queue: &Queue,
    in_flight: &mut InFlight,
    logs: &mut Logs,
) {
    let meter = m.poller.name().to_string();
    let time = done_ms.div_euclid(1000);
    let (ok, error) = match outcome {
        Ok(samples) => {
            let readings: Vec<Reading> = samples
                .into_iter()
                .map(|s| Reading {
                    series: s.output.series,
                    time,
                    value: s.value,
                    unit: s.output.unit,
                    clock_synced: synced,
                    invalid: s.sentinel,
                })
                .collect();
            match queue.submit(readings) {
                Ok(answer) => in_flight.push(bus, &meter, answer).await,
                // The app sees the queue's fatal state and stops the process.
                Err(e) => {
                    tracing::error!(bus, meter = %meter, error = %e, "cannot commit readings")
                }
            }
            (true, None)
        }
        Err(e) => (false, Some(e.to_string())),
    };
    let completion = m.schedule.complete(slot, ok, done_ms);
    match completion.transition {
        Transition::FirstFailure => tracing::warn!(
            message_id = events::METER_DOWN,
            bus,
            meter = %meter,
            error = error.as_deref().unwrap_or(""),
            "meter not answering; retrying on schedule (repeats are not logged)"
        ),
        Transition::WentDown => {
            tracing::debug!(bus, meter = %meter, "meter down: retried at growing intervals")
        }
        Transition::Recovered { failures } => tracing::info!(
            message_id = events::METER_UP,
            bus,
            meter = %meter,
            failed_slots = failures,
            "meter answers again"
        ),
        Transition::None => {}
    }
    if completion.behind_ms > 0 && logs.behind.allow(done_ms) {
        tracing::warn!(
            bus,
            meter = %meter,
            behind_ms = completion.behind_ms,
            skipped_slots = completion.missed_slots,
            "bus cannot finish its cycle in time: slots skipped (fewer meters per bus, a higher baud rate or a longer interval help)"
        );
    }
    record(queue, bus, m, done_ms, ok, error);
}
