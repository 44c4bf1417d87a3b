//! Logging set-up with `tracing`: native journald fields when the process runs under systemd
//! (`JOURNAL_STREAM` is set and the journal socket answers), compact text on stderr otherwise.
//! `RUST_LOG` overrides the configured level. Messages are short; fields carry `bus`, `meter`,
//! `import_id`, `error`, and loss/recovery events a fixed `message_id` (→ `MESSAGE_ID`).

use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Where log lines went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Journald,
    Stderr,
}

/// Installs the global subscriber (once; later calls do nothing). `level` is a level or an
/// EnvFilter directive; `RUST_LOG` wins when set.
pub fn init(level: &str) -> Target {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        // Without a journal socket the layer cannot be built: fall back to stderr.
        if let Ok(layer) = tracing_journald::layer() {
            let layer = layer.with_field_prefix(None);
            if tracing_subscriber::registry()
                .with(filter)
                .with(layer)
                .try_init()
                .is_ok()
            {
                return Target::Journald;
            }
            return Target::Stderr;
        }
    }
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours only for a person at a terminal, not in a file or a pipe.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .compact()
        .try_init();
    Target::Stderr
}
