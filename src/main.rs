//! The `enectiva-collector` command line: parses arguments with clap, sets up logging, calls
//! into the library and maps the outcome to an exit status (0 ok, 1 runtime failure, 2 invalid
//! configuration or usage). No logic lives here.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use enectiva_collector::commands::{self, Exit};
use enectiva_collector::config::{DEFAULT_PATH, MbusTimeout, Parity};
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
    /// Commissioning: read raw registers and print every interpretation
    Probe {
        #[command(subcommand)]
        what: ProbeWhat,
    },
    /// M-Bus tools
    Mbus {
        #[command(subcommand)]
        what: MbusWhat,
    },
    /// Commissioning: list the addresses that answer
    Scan {
        #[command(subcommand)]
        what: ScanWhat,
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

/// A Modbus TCP endpoint or a serial line.
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["tcp", "port"])))]
struct ModbusTarget {
    /// Modbus TCP endpoint, HOST:PORT
    #[arg(long)]
    tcp: Option<String>,
    /// Serial port (prefer /dev/serial/by-id/…)
    #[arg(long)]
    port: Option<PathBuf>,
    #[arg(long, default_value_t = 9600)]
    baud: u32,
    /// none | even | odd
    #[arg(long, default_value = "none", value_parser = parse_parity)]
    parity: Parity,
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u8).range(7..=8))]
    data_bits: u8,
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=2))]
    stop_bits: u8,
}

impl ModbusTarget {
    fn target(&self) -> commands::probe::Target {
        match (&self.tcp, &self.port) {
            (Some(t), _) => commands::probe::Target::Tcp(t.clone()),
            (None, Some(p)) => commands::probe::Target::serial(
                p.clone(),
                self.baud,
                self.parity,
                self.data_bits,
                self.stop_bits,
            ),
            // clap's required group guarantees one of them.
            (None, None) => commands::probe::Target::Tcp(String::new()),
        }
    }
}

fn parse_parity(s: &str) -> Result<Parity, String> {
    match s {
        "none" | "N" | "n" => Ok(Parity::None),
        "even" | "E" | "e" => Ok(Parity::Even),
        "odd" | "O" | "o" => Ok(Parity::Odd),
        _ => Err(format!("`{s}`: parity is none, even or odd")),
    }
}

fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    enectiva_collector::config::parse_duration(s)
}

#[derive(Debug, Subcommand)]
enum ProbeWhat {
    /// Read raw registers and print every interpretation (find a meter's word order)
    Modbus {
        #[command(flatten)]
        target: ModbusTarget,
        /// Unit id (slave address)
        #[arg(long)]
        unit: u8,
        /// PDU address, decimal or 0x hex (vendor register number − 1)
        #[arg(long, value_parser = commands::probe::parse_register)]
        register: u16,
        /// Read input registers (FC4) instead of holding registers (FC3)
        #[arg(long)]
        input: bool,
        /// Registers to read: 1, 2 or 4 [default: 4, then 2 if the meter refuses 4 with
        /// exception 02]
        #[arg(long)]
        count: Option<u16>,
        #[arg(long, default_value = "1s", value_parser = parse_duration)]
        timeout: std::time::Duration,
    },
}

fn parse_mbus_timeout(s: &str) -> Result<MbusTimeout, String> {
    if s == "auto" {
        Ok(MbusTimeout::Auto)
    } else {
        parse_duration(s).map(MbusTimeout::Fixed)
    }
}

#[derive(Debug, Subcommand)]
enum MbusWhat {
    /// Decode one captured telegram (hex text, whitespace allowed) into JSON
    Decode {
        /// A file with the hex text, or - for standard input
        #[arg(default_value = "-")]
        input: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum ScanWhat {
    /// List the unit ids that answer on a TCP endpoint or a serial line
    Modbus {
        #[command(flatten)]
        target: ModbusTarget,
        /// Unit ids to try, e.g. 1-247 or 1,3,10-20
        #[arg(long, default_value = "1-247", value_parser = commands::probe::parse_units)]
        units: std::vec::Vec<u8>,
        /// Per unit id
        #[arg(long, default_value = "200ms", value_parser = parse_duration)]
        timeout: std::time::Duration,
    },
    /// List the M-Bus meters on a line: primary addresses, or a secondary wildcard search
    Mbus {
        /// Serial port of the level converter
        #[arg(long)]
        port: PathBuf,
        #[arg(long, default_value_t = 2400)]
        baud: u32,
        /// Search by identification number (wildcard select) instead of primary addresses
        #[arg(long)]
        secondary: bool,
        /// Primary addresses to try
        #[arg(long, default_value = "0-250", value_parser = commands::mbus::parse_addresses)]
        addresses: std::vec::Vec<u8>,
        /// "auto" or a duration, per request
        #[arg(long, default_value = "auto", value_parser = parse_mbus_timeout)]
        timeout: MbusTimeout,
        #[arg(long, default_value_t = 1)]
        retries: u32,
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

/// The daemon's runtime: one thread. Its work is IO-bound (a few hundred small requests a
/// second at most); a second worker only added cross-thread wake-ups (futex, work stealing)
/// and a thread's stack and malloc arena (BENCHMARKS.md, issue 8). SQLite work stays on the
/// queue's own writer thread.
fn daemon_runtime() -> Result<tokio::runtime::Runtime, Exit> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("error: cannot start the runtime: {e}");
            Exit::Failure
        })
}

/// `run`: the daemon until SIGTERM/SIGINT.
fn run_daemon(config_path: &std::path::Path) -> Exit {
    // Signals first: a stop that arrives while the configuration loads is then a clean stop
    // too (only one that lands before this line ends the process by the signal itself, which
    // systemd also counts as a clean stop; nothing was read yet).
    let mut signals = match signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGHUP,
    ]) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: cannot install signal handlers: {e}");
            return Exit::Failure;
        }
    };
    let config = match commands::load_config(config_path) {
        Ok(c) => c,
        Err(e) => return e,
    };
    logging::init(&config.log.level);
    for w in &config.warnings {
        tracing::warn!("{w}");
    }
    let rt = match daemon_runtime() {
        Ok(rt) => rt,
        Err(e) => return e,
    };
    let shutdown = CancellationToken::new();
    let handle = signals.handle();
    let on_signal = shutdown.clone();
    let (reload_tx, reload_rx) = tokio::sync::mpsc::unbounded_channel();
    let watcher = std::thread::spawn(move || {
        for sig in signals.forever() {
            if sig == signal_hook::consts::SIGHUP {
                tracing::info!("SIGHUP: reloading the configuration");
                let _ = reload_tx.send(());
                continue;
            }
            tracing::info!(signal = sig, "signal received; stopping");
            on_signal.cancel();
            break;
        }
    });
    let control = app::Control {
        shutdown,
        reload: Some(reload_rx),
        config_path: Some(config_path.to_path_buf()),
        notifier: enectiva_collector::notify::Notifier::from_env(),
        fault: enectiva_collector::notify::Fault::from_env(),
    };
    let result = rt.block_on(app::run_with(
        config,
        |s: &enectiva_collector::config::QueueSettings| {
            enectiva_collector::queue::QueueOptions::from_settings(s).with_test_knobs()
        },
        enectiva_collector::sender::SenderSettings::from_api,
        control,
    ));
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
        Command::Probe {
            what:
                ProbeWhat::Modbus {
                    target,
                    unit,
                    register,
                    input,
                    count,
                    timeout,
                },
        } => match runtime() {
            Ok(rt) => rt.block_on(commands::probe::probe(
                target.target(),
                unit,
                register,
                input,
                count,
                timeout,
            )),
            Err(e) => e,
        },
        Command::Scan {
            what:
                ScanWhat::Modbus {
                    target,
                    units,
                    timeout,
                },
        } => match runtime() {
            Ok(rt) => rt.block_on(commands::probe::scan(target.target(), units, timeout)),
            Err(e) => e,
        },
        Command::Scan {
            what:
                ScanWhat::Mbus {
                    port,
                    baud,
                    secondary,
                    addresses,
                    timeout,
                    retries,
                },
        } => match runtime() {
            Ok(rt) => rt.block_on(commands::mbus::scan(
                port, baud, secondary, addresses, timeout, retries,
            )),
            Err(e) => e,
        },
        Command::Mbus {
            what: MbusWhat::Decode { input },
        } => commands::mbus::decode(&input),
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
