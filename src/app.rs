//! The daemon: opens the queue, starts one task per bus and the sender under one shutdown
//! token and task tracker, and stops them in order.
//!
//! Shutdown (SIGTERM/SIGINT, or the caller's token): bus tasks finish their running transaction
//! (bounded by its timeout) and stop; the sender abandons its in-flight requests (they are sent
//! again later and answered 409); the queue commits what it holds, checkpoints and closes. A
//! fatal queue error (I/O error on commit) stops everything and is returned, so the process
//! exits 1 and systemd restarts it with the committed data intact.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::bus::{BusContext, run_bus};
use crate::config::Config;
use crate::mbus::bus::{MbusLink, MbusMeterPoller};
use crate::modbus::poll::MeterPoller;
use crate::modbus::rtu::{RtuLink, SerialSettings};
use crate::modbus::tcp::TcpLink;
use crate::queue::{Queue, QueueError, QueueOptions};
use crate::sender::{Sender, SenderError, SenderSettings};

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error(transparent)]
    Sender(#[from] SenderError),
    #[error("the queue could not be opened: {0}")]
    Join(String),
}

fn pollers(meters: &[crate::config::ModbusMeter]) -> Vec<MeterPoller> {
    meters.iter().cloned().map(MeterPoller::new).collect()
}

/// How long bus tasks and the sender get to stop before the queue is closed anyway.
const STOP_GRACE: Duration = Duration::from_secs(8);

/// Runs the daemon until `shutdown` is cancelled or the queue fails.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), AppError> {
    run_with(
        config,
        QueueOptions::from_settings,
        SenderSettings::from_api,
        shutdown,
    )
    .await
}

/// [`run`] with hooks to adjust the queue and sender settings (tests and `demo` use shorter
/// windows and retry intervals).
pub async fn run_with(
    config: Config,
    queue_options: impl FnOnce(&crate::config::QueueSettings) -> QueueOptions,
    sender_settings: impl FnOnce(&crate::config::Api) -> SenderSettings,
    shutdown: CancellationToken,
) -> Result<(), AppError> {
    let opts = queue_options(&config.queue);
    let path = opts.path.clone();
    // Opening may run quick_check and salvage a damaged file: keep it off the runtime threads.
    let (queue, report) = tokio::task::spawn_blocking(move || Queue::open(opts))
        .await
        .map_err(|e| AppError::Join(e.to_string()))??;
    tracing::info!(
        queue = %path.display(),
        pending = report.pending,
        unclean = report.unclean,
        "queue open"
    );
    let sender = Sender::new(sender_settings(&config.api), queue.clone())?;

    let tracker = TaskTracker::new();
    let tasks = CancellationToken::new();
    let sender_task = tracker.spawn(sender.run(tasks.child_token()));
    let ctx = BusContext {
        queue: queue.clone(),
        require_sync: config.clock.require_sync,
    };
    for bus in &config.modbus_tcp {
        let link = TcpLink::new(bus.address.clone(), bus.timeout);
        tracker.spawn(run_bus(
            bus.name.clone(),
            link,
            pollers(&bus.meters),
            ctx.clone(),
            tasks.child_token(),
        ));
    }
    for bus in &config.modbus_rtu {
        let link = RtuLink::new(SerialSettings::from_bus(bus));
        tracker.spawn(run_bus(
            bus.name.clone(),
            link,
            pollers(&bus.meters),
            ctx.clone(),
            tasks.child_token(),
        ));
    }
    for bus in &config.mbus {
        let link = MbusLink::new(bus);
        let meters: Vec<MbusMeterPoller> = bus
            .meters
            .iter()
            .cloned()
            .map(|m| MbusMeterPoller::new(m, bus.retries))
            .collect();
        tracker.spawn(run_bus(
            bus.name.clone(),
            link,
            meters,
            ctx.clone(),
            tasks.child_token(),
        ));
    }
    tracker.close();
    let meters: usize = config
        .modbus_tcp
        .iter()
        .map(|b| b.meters.len())
        .sum::<usize>()
        + config
            .modbus_rtu
            .iter()
            .map(|b| b.meters.len())
            .sum::<usize>()
        + config.mbus.iter().map(|b| b.meters.len()).sum::<usize>();
    tracing::info!(
        buses = config.modbus_tcp.len() + config.modbus_rtu.len() + config.mbus.len(),
        meters,
        series = config.series().len(),
        "running"
    );

    let mut fatal = queue.fatal();
    let failure = tokio::select! {
        () = shutdown.cancelled() => None,
        changed = fatal.wait_for(Option::is_some) => changed.ok().and_then(|f| f.clone()),
        joined = sender_task => match joined {
            Ok(Err(SenderError::Queue(e))) => Some(e),
            _ => None,
        },
    };
    tracing::info!("stopping");
    tasks.cancel();
    if tokio::time::timeout(STOP_GRACE, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!("tasks did not stop in time; closing the queue anyway");
    }
    if let Some(e) = failure {
        return Err(AppError::Queue(e));
    }
    queue.close().await?;
    tracing::info!("stopped");
    Ok(())
}
