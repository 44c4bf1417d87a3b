//! `check [--online]`: validates the configuration and profiles and prints what the daemon would
//! do: each bus, meter and channel, and the Modbus requests of one poll cycle. `--online` also
//! asks the API's read-only `latest` endpoint for every series, proving the token, the customer
//! id and the import ids.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use super::Exit;
use crate::config::{Config, MbusAddress, MbusSelector, MbusTimeout, ModbusMeter, Output, Parity};
use crate::modbus::plan::{plan, widen};
use crate::sender::{self, Latest, SenderSettings};

fn dur(d: Duration) -> String {
    super::duration(d)
}

fn output(o: &Output) -> String {
    let mut s = format!("{} {}", o.series.kind, o.series.import_id);
    if let Some(suit) = &o.series.suit {
        let _ = write!(s, " (suit {suit})");
    }
    if let Some(u) = &o.unit {
        let _ = write!(s, " [{u}]");
    }
    s
}

fn modbus_meter(out: &mut String, m: &ModbusMeter, unit_word: &str) {
    let _ = writeln!(
        out,
        "  meter \"{}\": {unit_word} {}, every {}, timeout {}, delay {}{}",
        m.name,
        m.unit_id,
        dur(m.interval),
        dur(m.timeout),
        dur(m.delay),
        m.profile
            .as_deref()
            .map(|p| format!(", profile {p}"))
            .unwrap_or_default()
    );
    let specs: Vec<_> = m.channels.iter().map(|c| c.register).collect();
    let p = widen(
        plan(&specs, m.max_registers, m.max_gap),
        &m.blocks,
        m.max_registers,
    );
    let reqs: Vec<String> = p.requests.iter().map(ToString::to_string).collect();
    let _ = writeln!(
        out,
        "    {} request(s) per poll (max_registers {}, max_gap {}): {}",
        p.requests.len(),
        m.max_registers,
        m.max_gap,
        reqs.join(", ")
    );
    for c in &m.channels {
        let r = c.register;
        let what = c.quantity.clone().unwrap_or_else(|| "register".to_string());
        let conv = match (&c.source_unit, &c.output.unit) {
            (Some(from), Some(to)) if from != to => format!(", {from} → {to}"),
            _ => String::new(),
        };
        let _ = writeln!(
            out,
            "    {what}: {} 0x{:04X} {} {}{conv} → {}",
            r.table,
            r.address,
            r.data_type,
            r.order,
            output(&c.output)
        );
    }
}

/// The report `check` prints for a valid configuration.
pub fn describe(c: &Config) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "configuration {} is valid", c.source.display());
    let _ = writeln!(
        out,
        "api {} customer {} as sender \"{}\" ({} field, timeout {}, {} series in flight, backoff up to {})",
        c.api.base_url,
        c.api.customer_id,
        c.api.sender,
        c.api.id_field.as_str(),
        dur(c.api.timeout),
        c.api.max_in_flight,
        dur(c.api.max_backoff)
    );
    match crate::token::TokenSource::resolve(c.api.token_file.as_deref()) {
        Some(src) => {
            let _ = writeln!(out, "token from {}", src.describe());
        }
        None => {
            let _ = writeln!(
                out,
                "token: NONE found (readings are collected and queued, but nothing is sent until one is set up)"
            );
        }
    }
    let _ = writeln!(
        out,
        "queue {} (at most {} readings, {} old)",
        c.queue.path.display(),
        c.queue.max_readings,
        dur(c.queue.max_age)
    );
    for b in &c.modbus_tcp {
        let _ = writeln!(
            out,
            "modbus_tcp \"{}\" {} (timeout {}, delay {})",
            b.name,
            b.address,
            dur(b.timeout),
            dur(b.delay)
        );
        for m in &b.meters {
            modbus_meter(&mut out, m, "unit id");
        }
    }
    for b in &c.modbus_rtu {
        let parity = match b.parity {
            Parity::None => 'N',
            Parity::Even => 'E',
            Parity::Odd => 'O',
        };
        let _ = writeln!(
            out,
            "modbus_rtu \"{}\" {} {} baud {}{}{} (timeout {}, delay {})",
            b.name,
            b.port.display(),
            b.baud,
            b.data_bits,
            parity,
            b.stop_bits,
            dur(b.timeout),
            dur(b.delay)
        );
        for m in &b.meters {
            modbus_meter(&mut out, m, "unit id");
        }
    }
    for b in &c.mbus {
        let timeout = match b.timeout {
            MbusTimeout::Auto => "auto".to_string(),
            MbusTimeout::Fixed(d) => dur(d),
        };
        let _ = writeln!(
            out,
            "mbus \"{}\" {} {} baud 8E1 (timeout {timeout}, retries {})",
            b.name,
            b.port.display(),
            b.baud,
            b.retries
        );
        for m in &b.meters {
            let addr = match &m.address {
                MbusAddress::Primary(a) => format!("primary address {a}"),
                MbusAddress::Secondary(s) => format!(
                    "secondary address {}{}",
                    s.id,
                    s.manufacturer
                        .as_deref()
                        .map(|x| format!(" {x}"))
                        .unwrap_or_default()
                ),
            };
            let _ = writeln!(
                out,
                "  meter \"{}\": {addr}, every {}",
                m.name,
                dur(m.interval)
            );
            for ch in &m.channels {
                let sel = match &ch.selector {
                    MbusSelector::Quantity {
                        quantity,
                        storage,
                        tariff,
                        subunit,
                        function,
                    } => format!(
                        "{quantity} (storage {storage}, tariff {tariff}, subunit {subunit}, {})",
                        format!("{function:?}").to_lowercase()
                    ),
                    MbusSelector::Record(i) => format!("record {i}"),
                };
                let _ = writeln!(out, "    {sel} → {}", output(&ch.output));
            }
        }
    }
    for w in &c.warnings {
        let _ = writeln!(out, "warning: {w}");
    }
    out
}

pub async fn run(config: &Path, online: bool) -> Exit {
    let c = match super::load_config(config) {
        Ok(c) => c,
        Err(e) => return e,
    };
    print!("{}", describe(&c));
    if !online {
        return Exit::Ok;
    }
    check_online(&c).await
}

async fn check_online(c: &Config) -> Exit {
    let settings = SenderSettings::from_api(&c.api);
    let Some(src) = &settings.token else {
        eprintln!("error: {}", crate::token::TokenError::NoSource);
        return Exit::Failure;
    };
    let token = match src.read() {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e}");
            return Exit::Failure;
        }
    };
    let client = match sender::http_client(&settings) {
        Ok(cl) => cl,
        Err(e) => {
            eprintln!("error: {e}");
            return Exit::Failure;
        }
    };
    println!("online check against {}:", c.api.base_url);
    let mut failed = 0;
    for (bus, meter, o) in c.series() {
        let r = sender::latest(&client, &settings, &token, &o.series).await;
        let line = match r {
            Ok(Latest::Found { time, value }) => format!(
                "ok, latest {} at {}",
                value.as_deref().unwrap_or("?"),
                time.as_deref().unwrap_or("?")
            ),
            Ok(Latest::NotFound) => {
                "ok, nothing stored yet (or an import id Enectiva does not know)".to_string()
            }
            Ok(Latest::Refused { status, detail }) => {
                failed += 1;
                let hint = match status {
                    401 | 403 => " (check the token)",
                    404 => " (check api.customer_id)",
                    _ => "",
                };
                format!("FAILED: {status} {detail}{hint}")
            }
            Err(e) => {
                failed += 1;
                format!("FAILED: {e}")
            }
        };
        println!("  {bus}/{meter} {}: {line}", output(o));
    }
    if failed > 0 {
        eprintln!("error: {failed} series could not be checked");
        Exit::Failure
    } else {
        Exit::Ok
    }
}
