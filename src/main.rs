//! The `enectiva-collector` command line: parses arguments with clap, sets up logging, calls
//! into the library and maps the outcome to an exit status (0 ok, 1 runtime failure, 2 invalid
//! configuration or usage). No logic lives here.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use enectiva_collector::commands::{self, Exit};
use enectiva_collector::config::DEFAULT_PATH;

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

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .compact()
        .try_init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    let exit = match cli.command {
        Command::Check { online } => match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt.block_on(commands::check::run(&cli.config, online)),
            Err(e) => {
                eprintln!("error: cannot start the runtime: {e}");
                Exit::Failure
            }
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
