//! `read [METER...] [--json]`: polls meters once and prints every channel's decoded value and
//! unit, sending and queueing nothing. For commissioning: compare with the meter's display.

use std::path::Path;

use serde_json::json;

use super::Exit;
use crate::config::{Config, ModbusMeter};
use crate::mbus::bus::{MbusLink, MbusMeterPoller};
use crate::modbus::poll::{ChannelValue, Link, LinkError, MeterPoller, PollResult};
use crate::modbus::rtu::{RtuLink, SerialSettings};
use crate::modbus::tcp::TcpLink;

fn words_hex(words: &[u16]) -> String {
    let w: Vec<String> = words.iter().map(|w| format!("0x{w:04X}")).collect();
    w.join(" ")
}

/// Where a meter is.
#[derive(Debug, Clone, Copy)]
enum Where<'a> {
    Tcp { address: &'a str },
    Rtu { bus: usize },
}

struct Selected<'a> {
    bus: &'a str,
    at: Where<'a>,
    meter: &'a ModbusMeter,
}

/// The meters named (all when none), or the names that do not exist.
fn select<'a>(config: &'a Config, names: &[String]) -> Result<Vec<Selected<'a>>, Vec<String>> {
    let mut all = Vec::new();
    for b in &config.modbus_tcp {
        for m in &b.meters {
            all.push(Selected {
                bus: b.name.as_str(),
                at: Where::Tcp {
                    address: b.address.as_str(),
                },
                meter: m,
            });
        }
    }
    for (i, b) in config.modbus_rtu.iter().enumerate() {
        for m in &b.meters {
            all.push(Selected {
                bus: b.name.as_str(),
                at: Where::Rtu { bus: i },
                meter: m,
            });
        }
    }
    if names.is_empty() {
        return Ok(all);
    }
    let is_mbus = |n: &String| {
        config
            .mbus
            .iter()
            .any(|b| b.meters.iter().any(|m| &m.name == n))
    };
    let unknown: Vec<String> = names
        .iter()
        .filter(|n| !all.iter().any(|s| &s.meter.name == *n) && !is_mbus(n))
        .cloned()
        .collect();
    if !unknown.is_empty() {
        return Err(unknown);
    }
    Ok(all
        .into_iter()
        .filter(|s| names.contains(&s.meter.name))
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

async fn poll_one<L: Link>(link: &mut L, meter: &ModbusMeter) -> Result<PollResult, LinkError> {
    MeterPoller::new(meter.clone()).poll(link).await
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
                .flat_map(|b| b.meters.iter())
                .chain(config.modbus_rtu.iter().flat_map(|b| b.meters.iter()))
                .map(|m| m.name.as_str())
                .chain(
                    config
                        .mbus
                        .iter()
                        .flat_map(|b| b.meters.iter().map(|m| m.name.as_str())),
                )
                .collect();
            eprintln!(
                "error: no meter named {}; known: {}",
                unknown.join(", "),
                known.join(", ")
            );
            return Exit::Invalid;
        }
    };
    // One open serial port per RTU bus, shared by its meters (one after another).
    let mut rtu: Vec<Option<RtuLink>> = config.modbus_rtu.iter().map(|_| None).collect();
    let mut failed = 0;
    let mut out = Vec::new();
    for sel in selected {
        let meter = sel.meter;
        let (result, place) = match sel.at {
            Where::Tcp { address } => {
                let mut link = TcpLink::new(address, meter.timeout);
                (poll_one(&mut link, meter).await, address.to_string())
            }
            Where::Rtu { bus } => {
                let b = &config.modbus_rtu[bus];
                let link =
                    rtu[bus].get_or_insert_with(|| RtuLink::new(SerialSettings::from_bus(b)));
                (poll_one(link, meter).await, b.port.display().to_string())
            }
        };
        let bus = sel.bus;
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
                        "{bus}/{} (unit {} at {place}): {} request(s)",
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
                let hint = match (&e, sel.at) {
                    (LinkError::Connect(_), Where::Tcp { .. }) => {
                        " (check the address and port; a meter that accepts one connection only must be read with the service stopped: systemctl stop enectiva-collector)"
                    }
                    (LinkError::Timeout, Where::Rtu { .. }) => {
                        " (check the unit id, baud rate, parity and the A/B wiring; `scan modbus` lists the unit ids that answer)"
                    }
                    (LinkError::Timeout, _) => " (check the unit id and the timeout)",
                    _ => "",
                };
                if json {
                    out.push(json!({"bus": bus, "meter": meter.name, "ok": false, "error": format!("{e}{hint}")}));
                } else {
                    println!(
                        "{bus}/{} (unit {} at {place}): FAILED: {e}{hint}",
                        meter.name, meter.unit_id
                    );
                }
            }
        }
    }
    failed += read_mbus(&config, names, json, &mut out).await;
    if json {
        println!("{}", serde_json::Value::Array(out));
    }
    if failed > 0 { Exit::Failure } else { Exit::Ok }
}

/// Reads the named M-Bus meters (all when no names), listing every record so a user can choose
/// channels. Returns how many failed.
async fn read_mbus(
    config: &Config,
    names: &[String],
    json: bool,
    out: &mut Vec<serde_json::Value>,
) -> usize {
    let mut failed = 0;
    for bus in &config.mbus {
        let mut link = MbusLink::new(bus);
        for meter in &bus.meters {
            if !names.is_empty() && !names.contains(&meter.name) {
                continue;
            }
            let mut poller = MbusMeterPoller::new(meter.clone(), bus.retries);
            let place = bus.port.display().to_string();
            match poller.readout(&mut link).await {
                Ok(r) => {
                    let channels: Vec<Result<(crate::bus::Sample, usize), String>> =
                        (0..meter.channels.len())
                            .map(|i| poller.channel_value(i, &r.records))
                            .collect();
                    if json {
                        let chans: Vec<serde_json::Value> = channels
                            .iter()
                            .zip(&meter.channels)
                            .map(|(c, ch)| match c {
                                Ok((s, rec)) => json!({
                                    "import_id": ch.output.series.import_id, "record": rec,
                                    "value": s.value, "unit": s.output.unit,
                                }),
                                Err(e) => {
                                    json!({"import_id": ch.output.series.import_id, "error": e})
                                }
                            })
                            .collect();
                        out.push(json!({
                            "bus": bus.name, "meter": meter.name, "ok": true,
                            "address": r.address, "id": r.header.id, "manufacturer": r.header.manufacturer,
                            "medium": crate::mbus::record::medium_name(r.header.medium), "telegrams": r.telegrams, "truncated": r.truncated,
                            "records": r.records.iter().map(crate::mbus::json::record).collect::<Vec<_>>(),
                            "channels": chans,
                        }));
                    } else {
                        println!(
                            "{}/{} (M-Bus address {} at {place}): id {}, {}, {}, {} telegram(s)",
                            bus.name,
                            meter.name,
                            r.address,
                            r.header.id,
                            r.header.manufacturer,
                            crate::mbus::record::medium_name(r.header.medium),
                            r.telegrams
                        );
                        if r.truncated {
                            println!(
                                "  truncated: telegram {} still says more records follow; the records after it were not read",
                                r.telegrams
                            );
                        }
                        println!("  records:");
                        for rec in &r.records {
                            println!("    {}", crate::mbus::select::describe(rec));
                        }
                        if !meter.channels.is_empty() {
                            println!("  channels:");
                        }
                        for (c, ch) in channels.iter().zip(&meter.channels) {
                            match c {
                                Ok((s, rec)) => println!(
                                    "    {} {} → {} {} (record {rec})",
                                    s.value,
                                    s.output.unit.as_deref().unwrap_or(""),
                                    ch.output.series.kind,
                                    ch.output.series.import_id
                                ),
                                Err(e) => {
                                    println!("    {}: NO VALUE: {e}", ch.output.series.import_id)
                                }
                            }
                        }
                    }
                }
                Err(e) => {
                    failed += 1;
                    if json {
                        out.push(json!({"bus": bus.name, "meter": meter.name, "ok": false, "error": e.to_string()}));
                    } else {
                        println!(
                            "{}/{} (M-Bus at {place}): FAILED: {e} (check the address, the baud rate and the converter; `scan mbus` lists the meters)",
                            bus.name, meter.name
                        );
                    }
                }
            }
        }
    }
    failed
}
