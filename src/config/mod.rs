//! The configuration: a TOML device map turned into a validated [`Config`].
//!
//! Two stages (ripgrep's raw → validated args): `raw.rs` mirrors the file with serde and
//! `deny_unknown_fields`, so a syntax or type error stops at the first problem with its line and
//! column; `validate.rs` then turns the raw tree into [`Config`] and reports every semantic
//! problem at once, each with file, line and column kept through `toml::Spanned`. This module
//! never opens serial ports or sockets and never reads the API token.

mod mbus_quantities;
#[cfg(test)]
mod proptests;
mod raw;
mod validate;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::modbus::RegisterSpec;
use crate::profile::Registry;
use crate::reading::Series;
use crate::units::Transform;

pub use mbus_quantities::{MBUS_QUANTITIES, mbus_quantity};
pub use validate::{
    DEFAULT_BASE_URL, FALLBACK_SENDER, default_queue_path, default_sender, parse_duration,
    parse_secondary_address,
};

/// Default config path when neither `-c` nor `$ENECTIVA_COLLECTOR_CONFIG` is given.
pub const DEFAULT_PATH: &str = "/etc/enectiva-collector/config.toml";

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it was read from.
    pub source: PathBuf,
    pub api: Api,
    pub queue: QueueSettings,
    pub log: LogSettings,
    pub clock: ClockSettings,
    pub profiles_dir: Option<PathBuf>,
    /// Built-in profiles plus those of `profiles_dir`.
    pub profiles: Registry,
    pub modbus_tcp: Vec<ModbusTcpBus>,
    pub modbus_rtu: Vec<ModbusRtuBus>,
    pub mbus: Vec<MbusBus>,
    /// Things worth telling the operator that do not make the config invalid.
    pub warnings: Vec<Diagnostic>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdField {
    ImportId,
    MeterId,
}

impl IdField {
    pub fn as_str(self) -> &'static str {
        match self {
            IdField::ImportId => "import_id",
            IdField::MeterId => "meter_id",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Api {
    /// Without a trailing slash.
    pub base_url: String,
    pub customer_id: String,
    pub token_file: Option<PathBuf>,
    pub sender: String,
    pub id_field: IdField,
    pub timeout: Duration,
    pub max_in_flight: usize,
    pub max_backoff: Duration,
    pub ca_file: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct QueueSettings {
    pub path: PathBuf,
    pub max_readings: u64,
    pub max_age: Duration,
}

#[derive(Debug, Clone)]
pub struct LogSettings {
    pub level: String,
}

#[derive(Debug, Clone, Default)]
pub struct ClockSettings {
    pub require_sync: bool,
}

/// One Modbus TCP endpoint (a meter or a TCP-to-RTU gateway): one connection, one task.
#[derive(Debug, Clone)]
pub struct ModbusTcpBus {
    pub name: String,
    /// `host:port` as written.
    pub address: String,
    pub timeout: Duration,
    pub delay: Duration,
    pub meters: Vec<ModbusMeter>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parity {
    None,
    Even,
    Odd,
}

/// One RS-485 line.
#[derive(Debug, Clone)]
pub struct ModbusRtuBus {
    pub name: String,
    pub port: PathBuf,
    pub baud: u32,
    pub parity: Parity,
    pub data_bits: u8,
    pub stop_bits: u8,
    pub timeout: Duration,
    pub delay: Duration,
    pub meters: Vec<ModbusMeter>,
}

#[derive(Debug, Clone)]
pub struct ModbusMeter {
    pub name: String,
    pub unit_id: u8,
    pub interval: Duration,
    pub profile: Option<String>,
    /// Resolved: the meter's own value, else the bus's.
    pub timeout: Duration,
    /// Resolved: the meter's own value, else the bus's.
    pub delay: Duration,
    pub max_registers: u16,
    pub max_gap: u16,
    /// The profile's blocks read whole (`plan::widen`); empty without a profile.
    pub blocks: Vec<crate::modbus::plan::ReadRequest>,
    pub channels: Vec<ModbusChannel>,
}

/// Where a channel's values go: its series and the unit sent with them.
#[derive(Debug, Clone, PartialEq)]
pub struct Output {
    pub series: Series,
    pub unit: Option<String>,
}

#[derive(Debug, Clone)]
pub struct ModbusChannel {
    /// `output.unit` is the channel's `unit`, else the profile quantity's unit; a `register`
    /// channel has no known source unit, so its `unit` is sent as written.
    pub output: Output,
    pub register: RegisterSpec,
    /// The profile quantity it came from, if any.
    pub quantity: Option<String>,
    /// The unit of the register value (from the profile), if known.
    pub source_unit: Option<String>,
    /// raw register value → value sent (profile scale, unit conversion, scale, offset, rounding).
    pub transform: Transform,
}

/// `timeout = "auto"` or a fixed duration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MbusTimeout {
    Auto,
    Fixed(Duration),
}

#[derive(Debug, Clone)]
pub struct MbusBus {
    pub name: String,
    pub port: PathBuf,
    pub baud: u32,
    pub timeout: MbusTimeout,
    pub retries: u32,
    pub meters: Vec<MbusMeter>,
}

/// A secondary address: the 8-digit identification number, optionally narrowed by
/// manufacturer, version and medium.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecondaryAddress {
    pub id: String,
    pub manufacturer: Option<String>,
    pub version: Option<u8>,
    pub medium: Option<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MbusAddress {
    Primary(u8),
    Secondary(SecondaryAddress),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MbusFunction {
    Instantaneous,
    Maximum,
    Minimum,
    Error,
}

#[derive(Debug, Clone, PartialEq)]
pub enum MbusSelector {
    Quantity {
        quantity: String,
        storage: u64,
        tariff: u32,
        subunit: u32,
        function: MbusFunction,
    },
    Record(usize),
}

#[derive(Debug, Clone)]
pub struct MbusMeter {
    pub name: String,
    pub address: MbusAddress,
    pub interval: Duration,
    pub channels: Vec<MbusChannel>,
}

#[derive(Debug, Clone)]
pub struct MbusChannel {
    /// `output.unit` is the channel's `unit`, else the quantity's base unit (see
    /// [`MBUS_QUANTITIES`]); `None` for a `record` channel without `unit` and for unitless
    /// quantities, in which case the record's own (normalized) unit is sent.
    pub output: Output,
    pub selector: MbusSelector,
    /// VIFE meanings the record must carry (e.g. `backward_flow`); empty: none.
    pub modifiers: Vec<String>,
    /// Applied after the record's unit has been converted to `output.unit`.
    pub scale: f64,
    pub offset: f64,
    pub decimals: Option<u32>,
}

/// One problem (or warning) found in a configuration or profile file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: PathBuf,
    /// 1-based line and column, when the problem has a place in the file.
    pub line: Option<usize>,
    pub column: Option<usize>,
    /// What it concerns, e.g. `modbus_tcp "switchboard" meter "main" channel 2`; may be empty.
    pub item: String,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(col) = self.column {
                write!(f, ":{col}")?;
            }
        }
        f.write_str(": ")?;
        if !self.item.is_empty() {
            write!(f, "{}: ", self.item)?;
        }
        f.write_str(&self.message)
    }
}

/// An invalid configuration: every problem found (at least one).
#[derive(Debug, Clone)]
pub struct ConfigError {
    pub diagnostics: Vec<Diagnostic>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.diagnostics.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Reads, parses and validates a configuration file (and the profiles it names).
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        validate::load(path)
    }

    /// Parses and validates the bytes of a configuration file: what [`Config::load`] does once
    /// the file is read (no IO beyond validation's own: the files the configuration names, the
    /// host name). Bytes that are not UTF-8 are one diagnostic, never a panic.
    pub fn from_bytes(bytes: &[u8], path: &Path) -> Result<Config, ConfigError> {
        validate::from_bytes(bytes, path)
    }

    /// Parses and validates configuration text; `path` is used in messages and to resolve
    /// relative paths.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        validate::parse(text, path)
    }

    /// Every series the configuration feeds, with the bus and meter names it comes from.
    pub fn series(&self) -> Vec<(&str, &str, &Output)> {
        let mut out = Vec::new();
        for bus in &self.modbus_tcp {
            for m in &bus.meters {
                out.extend(
                    m.channels
                        .iter()
                        .map(|c| (bus.name.as_str(), m.name.as_str(), &c.output)),
                );
            }
        }
        for bus in &self.modbus_rtu {
            for m in &bus.meters {
                out.extend(
                    m.channels
                        .iter()
                        .map(|c| (bus.name.as_str(), m.name.as_str(), &c.output)),
                );
            }
        }
        for bus in &self.mbus {
            for m in &bus.meters {
                out.extend(
                    m.channels
                        .iter()
                        .map(|c| (bus.name.as_str(), m.name.as_str(), &c.output)),
                );
            }
        }
        out
    }
}
