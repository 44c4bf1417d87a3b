//! The bus task: exactly one owner per `[[modbus_tcp]]` connection and per `[[modbus_rtu]]`
//! serial line, reading its meters one after another on their wall-clock schedules and committing
//! each meter's readings to the queue.
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

use super::poll::{LineErrors, Link, LinkError, MeterPoller};
use crate::clock;
use crate::config::ModbusMeter;
use crate::events;
use crate::queue::{MeterPoll, Queue};
use crate::reading::Reading;
use crate::schedule::{MeterSchedule, RateLimit, Transition};

/// What a bus task needs besides its link and meters.
#[derive(Debug, Clone)]
pub struct BusContext {
    pub queue: Queue,
    pub require_sync: bool,
}

struct Meter {
    poller: MeterPoller,
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
pub async fn run_bus<L: Link>(
    bus: String,
    mut link: L,
    meters: Vec<ModbusMeter>,
    ctx: BusContext,
    shutdown: CancellationToken,
) {
    let now = clock::now_ms();
    let mut meters: Vec<Meter> = meters
        .into_iter()
        .filter(|m| !m.channels.is_empty())
        .map(|m| Meter {
            schedule: MeterSchedule::new(m.interval, now),
            poller: MeterPoller::new(m),
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
    let mut clock_log = RateLimit::new(600_000);
    let mut sync_log = RateLimit::new(600_000);
    let mut port_lost: Option<Instant> = None;
    loop {
        if shutdown.is_cancelled() {
            return;
        }
        if let Some(since) = port_lost {
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
        let next = meters
            .iter()
            .map(|m| m.schedule.next_due())
            .min()
            .unwrap_or(now);
        if next > now {
            let wait = Duration::from_millis(u64::try_from(next - now).unwrap_or(0)).min(MAX_SLEEP);
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
        let synced = clock::synchronized().unwrap_or(false);
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
            let outcome = m.poller.poll(&mut link).await;
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
                    meter = %m.poller.meter.name,
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
            poll_done(&bus, m, slot, outcome, done, synced, &ctx.queue, &mut logs).await;
        }
    }
}

struct Logs {
    behind: RateLimit,
    line: RateLimit,
    reopen: RateLimit,
}

fn record(queue: &Queue, bus: &str, m: &Meter, done_ms: i64, ok: bool, error: Option<String>) {
    let _ = queue.record_poll(MeterPoll {
        meter: m.poller.meter.name.clone(),
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
async fn poll_done(
    bus: &str,
    m: &mut Meter,
    slot: i64,
    outcome: Result<super::poll::PollResult, LinkError>,
    done_ms: i64,
    synced: bool,
    queue: &Queue,
    logs: &mut Logs,
) {
    let meter = m.poller.meter.name.clone();
    let time = done_ms.div_euclid(1000);
    let (ok, error) = match outcome {
        Ok(res) => {
            for ch in &res.retired {
                let c = &m.poller.meter.channels[*ch];
                tracing::warn!(
                    bus,
                    meter = %meter,
                    import_id = %c.output.series.import_id,
                    register = c.register.address,
                    "register not available on this meter (illegal data address): channel skipped from now on"
                );
            }
            if res.fell_back {
                tracing::info!(
                    bus,
                    meter = %meter,
                    "meter refused a merged request (illegal data address): reading its values in smaller requests from now on"
                );
            }
            let readings: Vec<Reading> = res
                .values
                .iter()
                .map(|v| {
                    let c = &m.poller.meter.channels[v.channel];
                    Reading {
                        series: c.output.series.clone(),
                        time,
                        value: v.value,
                        unit: c.output.unit.clone(),
                        clock_synced: synced,
                        invalid: v.sentinel.clone(),
                    }
                })
                .collect();
            if let Err(e) = queue.commit(readings).await {
                // The app sees the queue's fatal state and stops the process.
                tracing::error!(bus, meter = %meter, error = %e, "cannot commit readings");
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
