//! The `enectiva-collector` command line: parses arguments with clap, sets up logging, calls
//! into the library and maps the outcome to an exit status (0 ok, 1 runtime failure, 2 invalid
//! configuration or usage). No logic lives here.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use enectiva_collector::commands::{self, Exit};
use enectiva_collector::config::DEFAULT_PATH;
use enectiva_collector::{app, logging};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Parser)]
#[command(
    name = "enectiva-collector",
    version,
    about = "Reads energy meters and delivers their readings to Enectiva"
)]
struct Cli {
    /// Configuration file
    #[arg(short, long, global = true, env = "ENECTIVA_COLLECTOR_CONFIG", default_value = DEFAULT_PATH)]
    config: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the daemon in the foreground (systemd runs this)
    Run,
    /// Run the real pipeline against simulated meters and a local stand-in API (loopback only)
    Demo {
        /// How long to run
        #[arg(long, default_value_t = 30)]
        seconds: u64,
    },
    /// Poll meters once and print every channel; sends and queues nothing
    Read {
        /// Meter names (default: all)
        meters: Vec<String>,
        #[arg(long)]
        json: bool,
    },
    /// Validate the configuration and print buses, meters, channels and planned requests
    Check {
        /// Also ask the API's read-only `latest` endpoint for every series
        #[arg(long)]
        online: bool,
    },
    /// Show pending readings, dead letters, drops, last delivery and last polls
    Status {
        #[arg(long)]
        json: bool,
        /// Queue file (default: the configuration's [queue] path)
        #[arg(long)]
        queue: Option<PathBuf>,
    },
    /// Inspect, requeue or delete dead-lettered readings
    Dead {
        #[command(subcommand)]
        action: DeadAction,
        /// Queue file (default: the configuration's [queue] path)
        #[arg(long, global = true)]
        queue: Option<PathBuf>,
    },
    /// List the meter profiles, or print one
    Profiles {
        name: Option<String>,
        /// Print the profile's TOML file instead of the table
        #[arg(long, requires = "name")]
        toml: bool,
    },
}

#[derive(Debug, Subcommand)]
enum DeadAction {
    /// List dead letters with their reasons
    List {
        #[arg(long)]
        json: bool,
    },
    /// Requeue dead letters (in their original order) so the service sends them
    Retry {
        #[arg(long, conflicts_with = "ids")]
        all: bool,
        ids: Vec<i64>,
    },
    /// Delete dead letters
    Purge {
        #[arg(long, conflicts_with = "ids")]
        all: bool,
        ids: Vec<i64>,
    },
}

fn runtime() -> Result<tokio::runtime::Runtime, Exit> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("error: cannot start the runtime: {e}");
            Exit::Failure
        })
}

/// `run`: the daemon until SIGTERM/SIGINT.
fn run_daemon(config: &std::path::Path) -> Exit {
    let config = match commands::load_config(config) {
        Ok(c) => c,
        Err(e) => return e,
    };
    logging::init(&config.log.level);
    for w in &config.warnings {
        tracing::warn!("{w}");
    }
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => return e,
    };
    let shutdown = CancellationToken::new();
    let mut signals = match signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
    ]) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: cannot install signal handlers: {e}");
            return Exit::Failure;
        }
    };
    let handle = signals.handle();
    let on_signal = shutdown.clone();
    let watcher = std::thread::spawn(move || {
        if let Some(sig) = signals.forever().next() {
            tracing::info!(signal = sig, "signal received; stopping");
            on_signal.cancel();
        }
    });
    let result = rt.block_on(app::run(config, shutdown));
    handle.close();
    let _ = watcher.join();
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(()) => Exit::Ok,
        Err(e) => {
            tracing::error!(error = %e, "stopped with an error");
            eprintln!("error: {e}");
            Exit::Failure
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Run) {
        logging::init("warn");
    }
    let exit = match cli.command {
        Command::Run => run_daemon(&cli.config),
        Command::Demo { seconds } => match runtime() {
            Ok(rt) => rt.block_on(commands::demo::run(seconds)),
            Err(e) => e,
        },
        Command::Read { meters, json } => match runtime() {
            Ok(rt) => rt.block_on(commands::read::run(&cli.config, &meters, json)),
            Err(e) => e,
        },
        Command::Check { online } => match runtime() {
            Ok(rt) => rt.block_on(commands::check::run(&cli.config, online)),
            Err(e) => e,
        },
        Command::Status { json, queue } => {
            match commands::queue_path(&cli.config, queue.as_deref()) {
                Ok(q) => commands::status::run(&q, json),
                Err(e) => e,
            }
        }
        Command::Dead { action, queue } => {
            match commands::queue_path(&cli.config, queue.as_deref()) {
                Ok(q) => match action {
                    DeadAction::List { json } => commands::dead::list(&q, json),
                    DeadAction::Retry { all, ids } => commands::dead::retry(&q, all, &ids),
                    DeadAction::Purge { all, ids } => commands::dead::purge(&q, all, &ids),
                },
                Err(e) => e,
            }
        }
        Command::Profiles { name, toml } => {
            commands::profiles::run(&cli.config, name.as_deref(), toml)
        }
    };
    ExitCode::from(exit as u8)
}
