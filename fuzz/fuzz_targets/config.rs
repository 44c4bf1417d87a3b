//! Fuzz target: arbitrary bytes as a configuration file through the whole load path `check`
//! uses once the file is read (`Config::from_bytes`: UTF-8 check, TOML into spanned raw
//! structs, validation), then what `check` does with the outcome: the report of a valid
//! configuration (`check::describe`, the series list, each Modbus meter's request plan and the
//! longest poll the watchdog is promised) or the text of every diagnostic. Bytes that are not UTF-8 are also fed as lossily decoded text to
//! `Config::parse`, so mutations that break UTF-8 still reach the parser. Must never panic,
//! and every diagnostic of the file must point inside the text. Owns nothing else.

#![no_main]

use std::path::Path;

use std::time::Duration;

use enectiva_collector::bus::{BusMeter, Line};
use enectiva_collector::commands::check;
use enectiva_collector::config::{Config, ConfigError, Diagnostic, ModbusMeter};
use enectiva_collector::modbus::Table;
use enectiva_collector::modbus::poll::{Link, LinkError, MeterPoller};
use libfuzzer_sys::fuzz_target;

/// A directory that does not exist, so relative paths in the input name nothing.
const PATH: &str = "/nonexistent/enectiva-fuzz/config.toml";

/// A diagnostic of the file has a 1-based line and column inside `text` (at most one past the
/// end of its line); only the missing `[api]` section has no place.
fn check_place(text: &str, d: &Diagnostic) {
    assert!(!d.message.is_empty(), "empty message: {d:?}");
    if d.file != Path::new(PATH) {
        return; // a profile file's own problem
    }
    match (d.line, d.column) {
        (Some(line), Some(column)) => {
            let lines: Vec<&str> = text.split('\n').collect();
            assert!((1..=lines.len()).contains(&line), "{d}");
            let chars = lines[line - 1].chars().count();
            assert!((1..=chars + 1).contains(&column), "{d}");
        }
        (None, None) => assert!(
            d.item == "api" && d.message.starts_with("missing section [api]"),
            "a diagnostic without a place: {d}"
        ),
        _ => panic!("a line without a column or the reverse: {d:?}"),
    }
}

/// A link nobody answers on: only there because `max_duration` takes the bus's line.
struct Silent;

impl Line for Silent {
    async fn reconnect(&mut self) -> Result<(), LinkError> {
        Ok(())
    }
}

impl Link for Silent {
    async fn read(
        &mut self,
        _unit: u8,
        _table: Table,
        _start: u16,
        _count: u16,
        _gap: Duration,
        _timeout: Duration,
    ) -> Result<Vec<u16>, LinkError> {
        Err(LinkError::Timeout)
    }
}

/// What the bus task derives from a meter before its first poll.
fn plan_meter(m: &ModbusMeter) {
    let poller = MeterPoller::new(m.clone());
    let _ = poller.plan().registers_read();
    let _ =
        BusMeter::<Silent>::max_duration(&poller, &Silent).saturating_add(Duration::from_secs(5));
}

fn exercise(text: &str, result: Result<Config, ConfigError>) {
    match result {
        Ok(c) => {
            let _ = check::describe(&c);
            let _ = c.series();
            for d in &c.warnings {
                check_place(text, d);
            }
            for bus in &c.modbus_tcp {
                bus.meters.iter().for_each(plan_meter);
            }
            for bus in &c.modbus_rtu {
                bus.meters.iter().for_each(plan_meter);
            }
        }
        Err(e) => {
            assert!(!e.diagnostics.is_empty(), "an error without diagnostics");
            let _ = e.to_string();
            for d in &e.diagnostics {
                check_place(text, d);
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let path = Path::new(PATH);
    let result = Config::from_bytes(data, path);
    match std::str::from_utf8(data) {
        Ok(text) => exercise(text, result),
        Err(_) => {
            // What the loader does with a file that is not UTF-8: one diagnostic, no place.
            match result {
                Ok(_) => panic!("invalid UTF-8 accepted"),
                Err(e) => assert!(
                    e.diagnostics.len() == 1 && e.diagnostics[0].line.is_none(),
                    "{e}"
                ),
            }
            let text = String::from_utf8_lossy(data);
            exercise(&text, Config::parse(&text, path));
        }
    }
});
