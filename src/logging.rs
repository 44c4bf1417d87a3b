//! Logging set-up with `tracing`: native journald fields when the process runs under systemd
//! (stderr is the stream `JOURNAL_STREAM` names, and the journal socket answers), compact text on
//! stderr otherwise.
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
    if stderr_is_the_journal(std::env::var("JOURNAL_STREAM").ok().as_deref()) {
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

/// Whether stderr is the journal stream systemd named in `JOURNAL_STREAM` (`DEVICE:INODE`), as
/// systemd.exec(5) advises checking: a shell started from a service inherits the variable, and
/// its output to a terminal must stay text.
fn stderr_is_the_journal(journal_stream: Option<&str>) -> bool {
    let Some((dev, ino)) = journal_stream.and_then(|v| v.split_once(':')) else {
        return false;
    };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else {
        return false;
    };
    stderr_identity().is_some_and(|(d, i)| d == dev && i == ino)
}

/// `(st_dev, st_ino)` of file descriptor 2.
#[cfg(unix)]
fn stderr_identity() -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata("/proc/self/fd/2")
        .ok()
        .map(|m| (m.dev(), m.ino()))
}

#[cfg(not(unix))]
fn stderr_identity() -> Option<(u64, u64)> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_stream_that_is_stderr_counts() {
        assert!(!stderr_is_the_journal(None));
        assert!(!stderr_is_the_journal(Some("")));
        assert!(!stderr_is_the_journal(Some("8:x")));
        assert!(!stderr_is_the_journal(Some("8:1234:5")));
        if let Some((dev, ino)) = stderr_identity() {
            assert!(stderr_is_the_journal(Some(&format!("{dev}:{ino}"))));
            assert!(!stderr_is_the_journal(Some(&format!("{dev}:{}", ino + 1))));
        }
    }
}
