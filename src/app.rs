//! The daemon: opens the queue, starts one task per bus and the sender under one shutdown
//! token and task tracker, talks to systemd, reloads the configuration on SIGHUP, and stops
//! everything in order.
//!
//! Shutdown (SIGTERM/SIGINT, or the caller's token): `STOPPING=1`; bus tasks finish their running
//! transaction (bounded by its timeout) and stop; the sender abandons its in-flight requests
//! (they are sent again later and answered 409); the queue commits what it holds, checkpoints
//! and closes. A fatal queue error (I/O error on commit) stops everything and is returned, so
//! the process exits 1 and systemd restarts it with the committed data intact.
//!
//! Reload (SIGHUP): the file is read and validated again; if it is invalid the running
//! configuration stays and an ERROR says why. Otherwise only the buses whose configuration
//! changed are restarted (each finishes its running transaction first), and the sender is
//! restarted when `[api]` changed. The queue is never touched: pending readings survive.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt as _;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::bus::{BusContext, run_bus};
use crate::config::{
    Api, ClockSettings, Config, MbusBus, ModbusRtuBus, ModbusTcpBus, QueueSettings,
};
use crate::mbus::bus::{MbusLink, MbusMeterPoller};
use crate::modbus::poll::MeterPoller;
use crate::modbus::rtu::{RtuLink, SerialSettings};
use crate::modbus::tcp::TcpLink;
use crate::notify::{Fault, Health, Notifier, status_line};
use crate::queue::{Queue, QueueError, QueueOptions, now_unix};
use crate::sender::{Sender, SenderError, SenderSettings};

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error(transparent)]
    Sender(#[from] SenderError),
    #[error("the queue could not be opened: {0}")]
    Join(String),
    #[error("a bus task failed (see the ERROR before); stopping so the service restarts")]
    BusFailed,
}

/// How the daemon is driven from outside: shutdown, reload requests, systemd.
#[derive(Debug)]
pub struct Control {
    pub shutdown: CancellationToken,
    /// One message per SIGHUP.
    pub reload: Option<mpsc::UnboundedReceiver<()>>,
    /// The file to read again on reload.
    pub config_path: Option<PathBuf>,
    pub notifier: Notifier,
    pub fault: Fault,
}

impl From<CancellationToken> for Control {
    /// Shutdown only: no reloads; systemd notifications only if `NOTIFY_SOCKET` is set.
    fn from(shutdown: CancellationToken) -> Control {
        Control {
            shutdown,
            reload: None,
            config_path: None,
            notifier: Notifier::from_env(),
            fault: Fault::None,
        }
    }
}

/// How long bus tasks and the sender get to stop before the queue is closed anyway.
const STOP_GRACE: Duration = Duration::from_secs(8);
/// How long a reload waits for a changed bus to finish its transaction.
const BUS_STOP_GRACE: Duration = Duration::from_secs(30);
/// How often `STATUS=` is refreshed.
const STATUS_EVERY: Duration = Duration::from_secs(10);

/// One bus of the configuration, whatever its protocol.
#[derive(Debug, Clone, Copy)]
enum BusConfig<'a> {
    Tcp(&'a ModbusTcpBus),
    Rtu(&'a ModbusRtuBus),
    Mbus(&'a MbusBus),
}

impl BusConfig<'_> {
    fn name(&self) -> &str {
        match self {
            BusConfig::Tcp(b) => &b.name,
            BusConfig::Rtu(b) => &b.name,
            BusConfig::Mbus(b) => &b.name,
        }
    }

    /// Two buses with the same fingerprint need no restart on reload; `[clock]` is part of it
    /// because every bus task holds `require_sync`.
    fn fingerprint(&self, clock: &ClockSettings) -> String {
        format!("{self:?}|{clock:?}")
    }

    fn meters(&self) -> Vec<String> {
        match self {
            BusConfig::Tcp(b) => b.meters.iter().map(|m| m.name.clone()).collect(),
            BusConfig::Rtu(b) => b.meters.iter().map(|m| m.name.clone()).collect(),
            BusConfig::Mbus(b) => b.meters.iter().map(|m| m.name.clone()).collect(),
        }
    }

    fn spawn(
        &self,
        tracker: &TaskTracker,
        ctx: BusContext,
        token: CancellationToken,
    ) -> JoinHandle<()> {
        let crashed = ctx.crashed.clone();
        match *self {
            BusConfig::Tcp(b) => {
                let link = TcpLink::new(b.address.clone(), b.timeout);
                let meters: Vec<MeterPoller> =
                    b.meters.iter().cloned().map(MeterPoller::new).collect();
                spawn_bus(
                    tracker,
                    &b.name,
                    run_bus(b.name.clone(), link, meters, ctx, token),
                    crashed,
                )
            }
            BusConfig::Rtu(b) => {
                let link = RtuLink::new(SerialSettings::from_bus(b));
                let meters: Vec<MeterPoller> =
                    b.meters.iter().cloned().map(MeterPoller::new).collect();
                spawn_bus(
                    tracker,
                    &b.name,
                    run_bus(b.name.clone(), link, meters, ctx, token),
                    crashed,
                )
            }
            BusConfig::Mbus(b) => {
                let link = MbusLink::new(b);
                let meters: Vec<MbusMeterPoller> = b
                    .meters
                    .iter()
                    .cloned()
                    .map(|m| MbusMeterPoller::new(m, b.retries))
                    .collect();
                spawn_bus(
                    tracker,
                    &b.name,
                    run_bus(b.name.clone(), link, meters, ctx, token),
                    crashed,
                )
            }
        }
    }
}

/// Spawns a bus task; a panic in it (a bug: device input is handled without panics) is
/// logged as an ERROR and cancels `crashed`, which stops the daemon with exit status 1.
fn spawn_bus(
    tracker: &TaskTracker,
    name: &str,
    task: impl Future<Output = ()> + Send + 'static,
    crashed: CancellationToken,
) -> JoinHandle<()> {
    let name = name.to_string();
    tracker.spawn(async move {
        if let Err(panic) = std::panic::AssertUnwindSafe(task).catch_unwind().await {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            tracing::error!(bus = %name, panic = %what, "bus task failed; stopping so the service restarts");
            crashed.cancel();
        }
    })
}

fn buses(config: &Config) -> Vec<BusConfig<'_>> {
    let mut v: Vec<BusConfig<'_>> = config.modbus_tcp.iter().map(BusConfig::Tcp).collect();
    v.extend(config.modbus_rtu.iter().map(BusConfig::Rtu));
    v.extend(config.mbus.iter().map(BusConfig::Mbus));
    v
}

fn meter_count(config: &Config) -> usize {
    buses(config).iter().map(|b| b.meters().len()).sum()
}

struct RunningBus {
    fingerprint: String,
    meters: Vec<String>,
    token: CancellationToken,
    handle: JoinHandle<()>,
}

/// Everything that runs, and what it was started with.
struct Running<S> {
    buses: BTreeMap<String, RunningBus>,
    sender: JoinHandle<Result<(), SenderError>>,
    sender_token: CancellationToken,
    api: String,
    sender_settings: S,
}

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

fn build_sender(
    api: &Api,
    settings: &impl Fn(&Api) -> SenderSettings,
    queue: &Queue,
    health: &Arc<Health>,
) -> Result<Sender, SenderError> {
    Ok(Sender::new(settings(api), queue.clone())?.with_health(health.clone()))
}

fn spawn_sender(
    api: &Api,
    settings: &impl Fn(&Api) -> SenderSettings,
    queue: &Queue,
    health: &Arc<Health>,
    tracker: &TaskTracker,
    parent: &CancellationToken,
) -> Result<(JoinHandle<Result<(), SenderError>>, CancellationToken), SenderError> {
    let sender = build_sender(api, settings, queue, health)?;
    let token = parent.child_token();
    Ok((tracker.spawn(sender.run(token.clone())), token))
}

/// What the sender was started with: the `[api]` settings and which token the token source
/// holds now, so a reload after fixing or rotating the token restarts the sender at once
/// (instead of after the one-minute credential retry).
fn api_key(api: &Api, settings: &impl Fn(&Api) -> SenderSettings) -> String {
    let token = settings(api)
        .token
        .and_then(|source| source.read().ok())
        .map(|t| t.fingerprint());
    format!("{api:?}|{token:?}")
}

/// How often opening the queue is tried again while its disk is full.
const DISK_FULL_RETRY: Duration = Duration::from_secs(5);

/// Opens the queue (off the runtime threads: opening may run `quick_check` and salvage a
/// damaged file). When it cannot be opened because its disk is full (SQLite cannot even create
/// the `-wal` file), the daemon neither exits nor crash-loops under `Restart=on-failure`: it logs
/// one ERROR with `QUEUE_DISK_FULL`, tells systemd why it is not ready yet (`STATUS=`, and
/// `EXTEND_TIMEOUT_USEC` so the start timeout does not kill it) and tries again every few
/// seconds until space returns or it is told to stop (then `None`).
async fn open_queue(
    opts: QueueOptions,
    control: &Control,
) -> Result<Option<(Queue, crate::queue::OpenReport)>, AppError> {
    let mut waiting_since = None;
    loop {
        let attempt = opts.clone();
        let opened = tokio::task::spawn_blocking(move || {
            let dir = attempt
                .path
                .parent()
                .map(std::path::Path::to_path_buf)
                .unwrap_or_default();
            Queue::open(attempt).map_err(|e| {
                let full = matches!(e, QueueError::Open { .. }) && crate::queue::disk_is_full(&dir);
                (e, full)
            })
        })
        .await
        .map_err(|e| AppError::Join(e.to_string()))?;
        match opened {
            Ok(open) => {
                if let Some(since) = waiting_since {
                    tracing::warn!(
                        message_id = crate::events::QUEUE_DISK_OK,
                        queue = %opts.path.display(),
                        waited_s = std::time::Instant::elapsed(&since).as_secs(),
                        "queue disk has space again; the queue is open"
                    );
                }
                return Ok(Some(open));
            }
            Err((e, true)) => {
                if waiting_since.is_none() {
                    tracing::error!(
                        message_id = crate::events::QUEUE_DISK_FULL,
                        queue = %opts.path.display(),
                        error = %e,
                        "cannot open the queue: its disk is full; trying again every {} s until space is freed",
                        DISK_FULL_RETRY.as_secs()
                    );
                    waiting_since = Some(std::time::Instant::now());
                }
                control
                    .notifier
                    .status("not ready: the queue's disk is full; waiting for space");
                control.notifier.extend_timeout(DISK_FULL_RETRY * 3);
                tokio::select! {
                    () = control.shutdown.cancelled() => return Ok(None),
                    () = tokio::time::sleep(DISK_FULL_RETRY) => {}
                }
            }
            Err((e, false)) => return Err(e.into()),
        }
    }
}

/// [`run`] with hooks to adjust the queue and sender settings (tests and `demo` use shorter
/// windows and retry intervals) and the outside [`Control`] (or just a shutdown token).
pub async fn run_with(
    config: Config,
    queue_options: impl FnOnce(&QueueSettings) -> QueueOptions,
    sender_settings: impl Fn(&Api) -> SenderSettings,
    control: impl Into<Control>,
) -> Result<(), AppError> {
    let mut control: Control = control.into();
    let opts = queue_options(&config.queue);
    let path = opts.path.clone();
    let Some((queue, report)) = open_queue(opts, &control).await? else {
        tracing::info!("stopped while waiting for disk space");
        return Ok(());
    };
    tracing::info!(queue = %path.display(), pending = report.pending, unclean = report.unclean, "queue open");

    let health = Health::new(control.fault);
    let tracker = TaskTracker::new();
    let tasks = CancellationToken::new();
    let ctx = BusContext {
        queue: queue.clone(),
        require_sync: config.clock.require_sync,
        health: health.clone(),
        crashed: CancellationToken::new(),
    };
    let (sender, sender_token) = spawn_sender(
        &config.api,
        &sender_settings,
        &queue,
        &health,
        &tracker,
        &tasks,
    )?;
    let mut running = Running {
        buses: BTreeMap::new(),
        sender,
        sender_token,
        api: api_key(&config.api, &sender_settings),
        sender_settings,
    };
    for b in buses(&config) {
        let token = tasks.child_token();
        let handle = b.spawn(&tracker, ctx.clone(), token.clone());
        running.buses.insert(
            b.name().to_string(),
            RunningBus {
                fingerprint: b.fingerprint(&config.clock),
                meters: b.meters(),
                token,
                handle,
            },
        );
    }
    let mut config = config;
    tracing::info!(
        buses = running.buses.len(),
        meters = meter_count(&config),
        series = config.series().len(),
        "running"
    );
    control.notifier.ready();

    let watchdog = control.notifier.watchdog();
    let ping_every = watchdog.map_or(STATUS_EVERY, |w| (w / 2).max(Duration::from_millis(100)));
    let mut tick = tokio::time::interval(ping_every.min(STATUS_EVERY));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_status = tokio::time::Instant::now() - STATUS_EVERY;
    let mut was_healthy = true;
    let mut fatal = queue.fatal();
    let failure = loop {
        tokio::select! {
            () = control.shutdown.cancelled() => break None,
            () = ctx.crashed.cancelled() => break Some(AppError::BusFailed),
            failed = async { fatal.wait_for(Option::is_some).await.ok().and_then(|f| f.clone()) } => break failed.map(AppError::Queue),
            joined = &mut running.sender => match joined {
                Ok(Err(SenderError::Queue(e))) => break Some(AppError::Queue(e)),
                other => {
                    // The sender only ends on its own when the queue is gone.
                    tracing::error!(result = ?other.map(|r| r.map_err(|e| e.to_string())), "sender stopped");
                    break None;
                }
            },
            Some(()) = async { match control.reload.as_mut() { Some(r) => r.recv().await, None => std::future::pending().await } } => {
                reload(&mut config, &mut running, &control, &ctx, &tracker, &tasks, &queue, &health).await;
            }
            _ = tick.tick() => {
                let healthy = health.healthy();
                if healthy {
                    if watchdog.is_some() {
                        control.notifier.ping();
                    }
                } else if was_healthy {
                    tracing::error!(late = ?health.late(), "a task stopped making progress: watchdog pings stop so systemd restarts the service");
                }
                was_healthy = healthy;
                if last_status.elapsed() >= STATUS_EVERY {
                    last_status = tokio::time::Instant::now();
                    if let Ok(stats) = queue.stats().await {
                        let now = now_unix();
                        let line = status_line(
                            health.meters_ok(),
                            meter_count(&config),
                            stats.pending,
                            stats.oldest_time.map(|t| now - t),
                            health.last_delivery().map(|t| now - t),
                        );
                        control.notifier.status(&line);
                    }
                }
            }
        }
    };
    control.notifier.stopping();
    tracing::info!("stopping");
    tasks.cancel();
    tracker.close();
    if tokio::time::timeout(STOP_GRACE, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!("tasks did not stop in time; closing the queue anyway");
    }
    match failure {
        // The queue cannot take writes: closing it would only fail again.
        Some(e @ AppError::Queue(_)) => Err(e),
        Some(e) => {
            queue.close().await?;
            Err(e)
        }
        None => {
            queue.close().await?;
            tracing::info!("stopped");
            Ok(())
        }
    }
}

/// SIGHUP: validate the file again and apply what changed.
#[allow(clippy::too_many_arguments)]
async fn reload<S: Fn(&Api) -> SenderSettings>(
    config: &mut Config,
    running: &mut Running<S>,
    control: &Control,
    ctx: &BusContext,
    tracker: &TaskTracker,
    tasks: &CancellationToken,
    queue: &Queue,
    health: &Arc<Health>,
) {
    let Some(path) = control.config_path.clone() else {
        tracing::warn!("reload requested but the configuration file is not known; ignored");
        return;
    };
    control.notifier.reloading();
    let loaded = tokio::task::spawn_blocking(move || Config::load(&path)).await;
    let new = match loaded {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            for d in &e.diagnostics {
                tracing::error!(problem = %d, "configuration reload failed; the running configuration stays");
            }
            control.notifier.ready();
            return;
        }
        Err(e) => {
            tracing::error!(error = %e, "configuration reload failed; the running configuration stays");
            control.notifier.ready();
            return;
        }
    };
    for w in &new.warnings {
        tracing::warn!("{w}");
    }
    let wanted: BTreeMap<String, (String, BusConfig<'_>)> = buses(&new)
        .into_iter()
        .map(|b| (b.name().to_string(), (b.fingerprint(&new.clock), b)))
        .collect();
    // Stop the buses that are gone or changed; each finishes its running transaction.
    let mut stopped: usize = 0;
    let names: Vec<String> = running.buses.keys().cloned().collect();
    for name in names {
        let keep = wanted.get(&name).is_some_and(|(f, _)| {
            running
                .buses
                .get(&name)
                .is_some_and(|r| &r.fingerprint == f)
        });
        if keep {
            continue;
        }
        if let Some(r) = running.buses.remove(&name) {
            r.token.cancel();
            if tokio::time::timeout(BUS_STOP_GRACE, r.handle)
                .await
                .is_err()
            {
                tracing::warn!(bus = %name, "bus did not stop in time during reload");
            }
            health.forget(&format!("bus {name}"));
            for m in &r.meters {
                health.forget_meter(m);
            }
            stopped += 1;
        }
    }
    let mut started: usize = 0;
    // `[clock]` is part of every bus's fingerprint: a change restarts them all with it.
    let ctx = BusContext {
        require_sync: new.clock.require_sync,
        ..ctx.clone()
    };
    for (name, (fingerprint, b)) in &wanted {
        if running.buses.contains_key(name) {
            continue;
        }
        let token = tasks.child_token();
        let handle = b.spawn(tracker, ctx.clone(), token.clone());
        running.buses.insert(
            name.clone(),
            RunningBus {
                fingerprint: fingerprint.clone(),
                meters: b.meters(),
                token,
                handle,
            },
        );
        started += 1;
    }
    let api = api_key(&new.api, &running.sender_settings);
    let mut sender_restarted = false;
    if api != running.api {
        // Built before the running sender is stopped: new settings that cannot be used leave
        // the old sender running (and its handle unfinished, which the main loop polls).
        match build_sender(&new.api, &running.sender_settings, queue, health) {
            Ok(sender) => {
                running.sender_token.cancel();
                let _ = tokio::time::timeout(STOP_GRACE, &mut running.sender).await;
                let token = tasks.child_token();
                running.sender = tracker.spawn(sender.run(token.clone()));
                running.sender_token = token;
                running.api = api;
                sender_restarted = true;
            }
            Err(e) => {
                tracing::error!(error = %e, "the new [api] settings cannot be used; sending goes on with the running ones");
            }
        }
    }
    if format!("{:?}", new.queue) != format!("{:?}", config.queue) {
        tracing::warn!("[queue] settings take effect after a restart");
    }
    if new.log.level != config.log.level {
        tracing::warn!("[log] level takes effect after a restart (RUST_LOG changes it too)");
    }
    tracing::info!(
        buses_restarted = stopped.min(started),
        buses_stopped = stopped.saturating_sub(started.min(stopped)),
        buses_started = started.saturating_sub(stopped.min(started)),
        sender_restarted,
        "configuration reloaded"
    );
    drop(wanted);
    *config = new;
    control.notifier.ready();
}
