//! The operator commands behind `main.rs`: each takes parsed arguments, prints to stdout and
//! returns an [`Exit`] status. They call into the library and hold no logic of their own
//! beyond presentation.

pub mod check;
pub mod dead;
pub mod demo;
pub mod mbus;
pub mod probe;
pub mod profiles;
pub mod read;
pub mod status;

use std::path::{Path, PathBuf};

use crate::config::{Config, ConfigError};

/// Exit statuses (SPEC §2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Ok = 0,
    /// A runtime failure.
    Failure = 1,
    /// An invalid configuration or usage.
    Invalid = 2,
}

/// Prints every problem of an invalid configuration to stderr.
pub fn print_config_error(e: &ConfigError) {
    for d in &e.diagnostics {
        eprintln!("error: {d}");
    }
    eprintln!(
        "{} problem{} found; nothing was started",
        e.diagnostics.len(),
        if e.diagnostics.len() == 1 { "" } else { "s" }
    );
}

/// Loads the configuration or prints why not.
pub fn load_config(path: &Path) -> Result<Config, Exit> {
    Config::load(path).map_err(|e| {
        print_config_error(&e);
        Exit::Invalid
    })
}

/// The queue file a tool works on: `--queue` if given, else the configuration's.
pub fn queue_path(config: &Path, queue: Option<&Path>) -> Result<PathBuf, Exit> {
    match queue {
        Some(q) => Ok(q.to_path_buf()),
        None => Ok(load_config(config)?.queue.path),
    }
}

/// A duration as the configuration writes it (and `parse_duration` reads it back): `500ms`,
/// `30s`, `15m`, `1h30m`, `90d`.
pub fn duration(d: std::time::Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        return "0s".into();
    }
    if ms % 1000 != 0 {
        return format!("{ms}ms");
    }
    let mut s = d.as_secs();
    let mut parts = Vec::new();
    for (unit, size) in [("d", 86_400), ("h", 3600), ("m", 60), ("s", 1)] {
        if s >= size {
            parts.push(format!("{}{unit}", s / size));
            s %= size;
        }
    }
    parts.concat()
}

/// A compact age: `3s`, `14m`, `2h 5m`, `3d 4h`.
pub fn age(secs: i64) -> String {
    let s = secs.max(0);
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m", s / 60),
        3600..=86_399 => format!("{}h {}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d {}h", s / 86_400, (s % 86_400) / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::{age, duration};
    use std::time::Duration;

    #[test]
    fn durations() {
        assert_eq!(duration(Duration::from_millis(500)), "500ms");
        assert_eq!(duration(Duration::ZERO), "0s");
        assert_eq!(duration(Duration::from_secs(90 * 86_400)), "90d");
        assert_eq!(duration(Duration::from_secs(5400)), "1h30m");
        assert_eq!(duration(Duration::from_secs(60)), "1m");
        for d in [0, 500, 1_000, 61_000, 5_400_000, 90 * 86_400_000 + 1_000] {
            let d = Duration::from_millis(d);
            assert_eq!(crate::config::parse_duration(&duration(d)), Ok(d), "{d:?}");
        }
    }

    #[test]
    fn ages() {
        assert_eq!(age(-5), "0s");
        assert_eq!(age(59), "59s");
        assert_eq!(age(14 * 60 + 3), "14m");
        assert_eq!(age(2 * 3600 + 5 * 60), "2h 5m");
        assert_eq!(age(3 * 86_400 + 4 * 3600), "3d 4h");
    }
}
