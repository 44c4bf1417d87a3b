//! `read [METER...] [--json]`: polls meters once and prints every channel's decoded value and
//! unit, sending and queueing nothing. For commissioning: compare with the meter's display.

use std::path::Path;

use serde_json::json;

use super::Exit;
use crate::config::{Config, ModbusMeter};
use crate::modbus::poll::{ChannelValue, LinkError, MeterPoller};
use crate::modbus::tcp::TcpLink;

fn words_hex(words: &[u16]) -> String {
    let w: Vec<String> = words.iter().map(|w| format!("0x{w:04X}")).collect();
    w.join(" ")
}

/// The meters named (all when none), or the names that do not exist.
fn select<'a>(
    config: &'a Config,
    names: &[String],
) -> Result<Vec<(&'a str, &'a str, &'a ModbusMeter)>, Vec<String>> {
    let mut all: Vec<(&str, &str, &ModbusMeter)> = Vec::new();
    for b in &config.modbus_tcp {
        for m in &b.meters {
            all.push((b.name.as_str(), b.address.as_str(), m));
        }
    }
    if names.is_empty() {
        return Ok(all);
    }
    let unknown: Vec<String> = names
        .iter()
        .filter(|n| !all.iter().any(|(_, _, m)| &m.name == *n))
        .cloned()
        .collect();
    if !unknown.is_empty() {
        return Err(unknown);
    }
    Ok(all
        .into_iter()
        .filter(|(_, _, m)| names.contains(&m.name))
        .collect())
}

fn channel_json(m: &ModbusMeter, v: &ChannelValue) -> serde_json::Value {
    let c = &m.channels[v.channel];
    json!({
        "channel": v.channel,
        "quantity": c.quantity,
        "table": c.register.table.as_str(),
        "register": c.register.address,
        "type": c.register.data_type.as_str(),
        "order": c.register.order.as_str(),
        "words": v.words,
        "raw": v.raw,
        "source_unit": c.source_unit,
        "value": v.value,
        "unit": c.output.unit,
        "kind": c.output.series.kind.as_str(),
        "import_id": c.output.series.import_id,
        "suit": c.output.series.suit,
        "sentinel": v.sentinel,
    })
}

fn print_channel(m: &ModbusMeter, v: &ChannelValue) {
    let c = &m.channels[v.channel];
    let name = c
        .quantity
        .clone()
        .unwrap_or_else(|| format!("register 0x{:04X}", c.register.address));
    let unit = c.output.unit.as_deref().unwrap_or("");
    let raw = match &c.source_unit {
        Some(u) if c.output.unit.as_deref() != Some(u.as_str()) => format!(", raw {} {u}", v.raw),
        _ => String::new(),
    };
    let warn = v
        .sentinel
        .as_deref()
        .map(|s| format!("  NOT AVAILABLE: {s}"))
        .unwrap_or_default();
    println!(
        "  {name:<24} {} {unit:<5} → {} {}   ({} 0x{:04X} {} {} = {}{raw}){warn}",
        v.value,
        c.output.series.kind,
        c.output.series.import_id,
        c.register.table,
        c.register.address,
        c.register.data_type,
        c.register.order,
        words_hex(&v.words)
    );
}

pub async fn run(config: &Path, names: &[String], json: bool) -> Exit {
    let config = match super::load_config(config) {
        Ok(c) => c,
        Err(e) => return e,
    };
    let selected = match select(&config, names) {
        Ok(s) => s,
        Err(unknown) => {
            let known: Vec<&str> = config
                .modbus_tcp
                .iter()
                .flat_map(|b| b.meters.iter().map(|m| m.name.as_str()))
                .collect();
            eprintln!(
                "error: no Modbus TCP meter named {}; known: {}",
                unknown.join(", "),
                known.join(", ")
            );
            return Exit::Invalid;
        }
    };
    if !config.modbus_rtu.is_empty() || !config.mbus.is_empty() {
        eprintln!(
            "note: Modbus RTU and M-Bus meters are not read by this version; only Modbus TCP meters are polled"
        );
    }
    let mut failed = 0;
    let mut out = Vec::new();
    for (bus, address, meter) in selected {
        let mut link = TcpLink::new(address, meter.timeout);
        let mut poller = MeterPoller::new(meter.clone());
        let result = poller.poll(&mut link).await;
        match result {
            Ok(res) => {
                if json {
                    out.push(json!({
                        "bus": bus, "meter": meter.name, "ok": true, "requests": res.requests,
                        "channels": res.values.iter().map(|v| channel_json(meter, v)).collect::<Vec<_>>(),
                        "unavailable": res.retired,
                    }));
                } else {
                    println!(
                        "{bus}/{} (unit {} at {address}): {} request(s)",
                        meter.name, meter.unit_id, res.requests
                    );
                    for v in &res.values {
                        print_channel(meter, v);
                    }
                    for ch in &res.retired {
                        println!(
                            "  channel {} not available on this meter (illegal data address)",
                            ch + 1
                        );
                    }
                }
            }
            Err(e) => {
                failed += 1;
                let hint = match e {
                    LinkError::Connect(_) => {
                        " (check the address and port; a meter that accepts one connection only must be read with the service stopped: systemctl stop enectiva-collector)"
                    }
                    LinkError::Timeout => " (check the unit id and the timeout)",
                    _ => "",
                };
                if json {
                    out.push(json!({"bus": bus, "meter": meter.name, "ok": false, "error": format!("{e}{hint}")}));
                } else {
                    println!(
                        "{bus}/{} (unit {} at {address}): FAILED: {e}{hint}",
                        meter.name, meter.unit_id
                    );
                }
            }
        }
    }
    if json {
        println!("{}", serde_json::Value::Array(out));
    }
    if failed > 0 { Exit::Failure } else { Exit::Ok }
}
