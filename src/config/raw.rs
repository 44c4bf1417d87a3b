//! Stage 1 of the configuration: a serde mirror of the TOML file, nothing more.
//!
//! Every table denies unknown keys, so a misspelt key stops parsing with its line and column.
//! Values that stage 2 (`validate.rs`) checks are kept as `toml::Spanned` so its messages can
//! point at them. This module must not interpret values (ranges, units, names, defaults): that
//! is `validate.rs`'s job, where every problem is collected instead of stopping at the first.
//! It must not use `#[serde(flatten)]` or internally tagged enums: both buffer the input and
//! lose the positions. Keys that are required are still `Option` here (except where noted) so a
//! missing one is reported together with all other problems, not as a lone serde error.

use std::ops::Range;
use std::path::Path;

use serde::Deserialize;
use toml::Spanned;

use super::Diagnostic;

type S<T> = Spanned<T>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub api: Option<S<RawApi>>,
    pub queue: Option<S<RawQueue>>,
    pub log: Option<S<RawLog>>,
    pub clock: Option<S<RawClock>>,
    pub profiles_dir: Option<S<String>>,
    #[serde(default)]
    pub modbus_tcp: Vec<S<RawModbusTcpBus>>,
    #[serde(default)]
    pub modbus_rtu: Vec<S<RawModbusRtuBus>>,
    #[serde(default)]
    pub mbus: Vec<S<RawMbusBus>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawApi {
    pub base_url: Option<S<String>>,
    pub customer_id: Option<S<String>>,
    pub token_file: Option<S<String>>,
    pub sender: Option<S<String>>,
    pub id_field: Option<S<String>>,
    pub timeout: Option<S<String>>,
    pub max_in_flight: Option<S<i64>>,
    pub max_backoff: Option<S<String>>,
    pub ca_file: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawQueue {
    pub path: Option<S<String>>,
    pub max_readings: Option<S<i64>>,
    pub max_age: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLog {
    pub level: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawClock {
    pub require_sync: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawModbusTcpBus {
    pub name: Option<S<String>>,
    pub address: Option<S<String>>,
    pub timeout: Option<S<String>>,
    pub delay: Option<S<String>>,
    #[serde(default)]
    pub meter: Vec<S<RawModbusMeter>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawModbusRtuBus {
    pub name: Option<S<String>>,
    pub port: Option<S<String>>,
    pub baud: Option<S<i64>>,
    pub parity: Option<S<String>>,
    pub data_bits: Option<S<i64>>,
    pub stop_bits: Option<S<i64>>,
    pub timeout: Option<S<String>>,
    pub delay: Option<S<String>>,
    #[serde(default)]
    pub meter: Vec<S<RawModbusMeter>>,
}

/// The same keys on TCP and RTU buses; the unit id range differs and is checked in stage 2.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawModbusMeter {
    pub name: Option<S<String>>,
    pub unit_id: Option<S<i64>>,
    pub interval: Option<S<String>>,
    pub profile: Option<S<String>>,
    pub timeout: Option<S<String>>,
    pub delay: Option<S<String>>,
    pub max_registers: Option<S<i64>>,
    pub max_gap: Option<S<i64>>,
    #[serde(default)]
    pub channels: Vec<S<RawModbusChannel>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawModbusChannel {
    pub import_id: Option<S<String>>,
    pub kind: Option<S<String>>,
    pub unit: Option<S<String>>,
    pub suit: Option<S<String>>,
    pub scale: Option<S<f64>>,
    pub offset: Option<S<f64>>,
    pub decimals: Option<S<i64>>,
    pub quantity: Option<S<String>>,
    pub register: Option<S<i64>>,
    pub table: Option<S<String>>,
    #[serde(rename = "type")]
    pub data_type: Option<S<String>>,
    pub order: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMbusBus {
    pub name: Option<S<String>>,
    pub port: Option<S<String>>,
    pub baud: Option<S<i64>>,
    pub timeout: Option<S<String>>,
    pub retries: Option<S<i64>>,
    #[serde(default)]
    pub meter: Vec<S<RawMbusMeter>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMbusMeter {
    pub name: Option<S<String>>,
    pub address: Option<S<i64>>,
    pub secondary_address: Option<S<String>>,
    pub interval: Option<S<String>>,
    #[serde(default)]
    pub channels: Vec<S<RawMbusChannel>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMbusChannel {
    pub import_id: Option<S<String>>,
    pub kind: Option<S<String>>,
    pub unit: Option<S<String>>,
    pub suit: Option<S<String>>,
    pub scale: Option<S<f64>>,
    pub offset: Option<S<f64>>,
    pub decimals: Option<S<i64>>,
    pub quantity: Option<S<String>>,
    pub storage: Option<S<i64>>,
    pub tariff: Option<S<i64>>,
    pub subunit: Option<S<i64>>,
    pub function: Option<S<String>>,
    pub modifiers: Option<S<Vec<String>>>,
    pub record: Option<S<i64>>,
}

/// Byte offsets → 1-based line and column (columns counted in characters, as editors show them).
#[derive(Debug)]
pub(super) struct Positions<'a> {
    text: &'a str,
    line_starts: Vec<usize>,
}

impl<'a> Positions<'a> {
    pub fn new(text: &'a str) -> Positions<'a> {
        let mut line_starts = vec![0];
        line_starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        Positions { text, line_starts }
    }

    pub fn line_col(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let line = self
            .line_starts
            .partition_point(|&start| start <= offset)
            .max(1);
        let start = self.line_starts[line - 1];
        // A span never starts inside a UTF-8 sequence, but an out-of-range or odd offset must
        // not panic: fall back to counting bytes.
        let column = match self.text.get(start..offset) {
            Some(prefix) => prefix.chars().count(),
            None => offset - start,
        };
        (line, column + 1)
    }
}

/// Parses the text into the raw tree, or one diagnostic for the first syntax or type error.
pub(super) fn parse(text: &str, file: &Path) -> Result<RawConfig, Diagnostic> {
    toml::from_str(text).map_err(|e| {
        let (line, column) = match e.span() {
            Some(Range { start, .. }) => {
                let (l, c) = Positions::new(text).line_col(start);
                (Some(l), Some(c))
            }
            None => (None, None),
        };
        Diagnostic {
            file: file.to_path_buf(),
            line,
            column,
            item: String::new(),
            message: clean_message(e.message()),
        }
    })
}

/// toml's messages may span several lines and name Rust types; the operator wants one line in
/// the words of the file.
fn clean_message(message: &str) -> String {
    let one_line = message.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut out = one_line
        .replace("expected i64", "expected an integer")
        .replace("expected f64", "expected a number")
        .replace("expected a sequence", "expected an array")
        .replace("expected a boolean", "expected true or false")
        .replace("unknown field", "unknown key")
        .replace("missing field", "missing key")
        .replace("duplicate key", "key given twice");
    if out.starts_with("unknown key") {
        out = out
            .replacen(", expected one of ", "; allowed keys: ", 1)
            .replacen(", expected ", "; allowed keys: ", 1);
    }
    if out.is_empty() {
        out = "invalid TOML".to_owned();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_count_characters() {
        let text = "a = 1\nb = \"é\" x\n\nc";
        let p = Positions::new(text);
        assert_eq!(p.line_col(0), (1, 1));
        assert_eq!(p.line_col(4), (1, 5));
        assert_eq!(p.line_col(6), (2, 1));
        // "b = \"é\" " is 8 characters but 9 bytes.
        let x = text.find('x').unwrap_or_default();
        assert_eq!(p.line_col(x), (2, 9));
        assert_eq!(p.line_col(text.len()), (4, 2));
        assert_eq!(p.line_col(text.len() + 10), (4, 2));
    }

    #[test]
    fn syntax_error_has_position_and_one_line() {
        let d = parse("[api]\ncustomer_id = \"x\"\nfoo = ", Path::new("c.toml")).unwrap_err();
        assert_eq!((d.line, d.column), (Some(3), Some(7)));
        assert!(!d.message.contains('\n'));
    }

    #[test]
    fn unknown_key_message() {
        let d = parse("[log]\nlevle = \"x\"", Path::new("c.toml")).unwrap_err();
        assert_eq!((d.line, d.column), (Some(2), Some(1)));
        assert_eq!(d.message, "unknown key `levle`; allowed keys: `level`");
    }
}
