//! `probe modbus` and `scan modbus`: the commissioning tools. `probe` reads raw registers and
//! prints every interpretation (16/32/64-bit integers and floats in all four word orders),
//! marking values that look like a mains voltage or frequency, so a meter's word order is found
//! in one command. `scan` lists the unit ids that answer on a TCP endpoint or a serial line.

use std::io::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use super::Exit;
use crate::config::Parity;
use crate::modbus::Table;
use crate::modbus::decode::interpretations;
use crate::modbus::poll::{Link, LinkError, exception_name};
use crate::modbus::rtu::{RtuLink, SerialSettings};
use crate::modbus::tcp::TcpLink;
use tokio_modbus::ExceptionCode;

/// Where to talk Modbus: a TCP endpoint or a serial line.
#[derive(Debug, Clone)]
pub enum Target {
    Tcp(String),
    Serial(SerialSettings),
}

impl Target {
    pub fn serial(
        port: PathBuf,
        baud: u32,
        parity: Parity,
        data_bits: u8,
        stop_bits: u8,
    ) -> Target {
        Target::Serial(SerialSettings {
            path: port,
            baud,
            parity,
            data_bits,
            stop_bits,
        })
    }

    fn describe(&self) -> String {
        match self {
            Target::Tcp(a) => a.clone(),
            Target::Serial(s) => format!(
                "{} {} baud {}{}{}",
                s.path.display(),
                s.baud,
                s.data_bits,
                match s.parity {
                    Parity::None => 'N',
                    Parity::Even => 'E',
                    Parity::Odd => 'O',
                },
                s.stop_bits
            ),
        }
    }
}

/// Parses `0x0156` or `342`.
pub fn parse_register(s: &str) -> Result<u16, String> {
    let t = s.trim();
    let r = match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        Some(hex) => u16::from_str_radix(hex, 16),
        None => t.parse::<u16>(),
    };
    r.map_err(|_| format!("`{s}` is not a register address (0–65535, decimal or 0x hex)"))
}

/// Parses `1-247`, `5`, or `1,3,10-20` into unit ids.
pub fn parse_units(s: &str) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    for part in s.split(',') {
        let part = part.trim();
        let (a, b) = match part.split_once('-') {
            Some((a, b)) => (a.trim(), b.trim()),
            None => (part, part),
        };
        let a: u8 = a
            .parse()
            .map_err(|_| format!("`{part}` is not a unit id range (0–255)"))?;
        let b: u8 = b
            .parse()
            .map_err(|_| format!("`{part}` is not a unit id range (0–255)"))?;
        if a > b {
            return Err(format!("`{part}`: the range is reversed"));
        }
        out.extend(a..=b);
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

async fn read_with<L: Link>(
    link: &mut L,
    unit: u8,
    table: Table,
    start: u16,
    count: u16,
    timeout: Duration,
) -> Result<Vec<u16>, LinkError> {
    link.read(unit, table, start, count, Duration::ZERO, timeout)
        .await
}

/// `probe modbus`: reads `count` registers (`None`: 4, so the 64-bit types show too, or 2
/// when the meter refuses 4 with exception 02, e.g. a 32-bit value at the end of its map) and
/// prints every interpretation.
pub async fn probe(
    target: Target,
    unit: u8,
    register: u16,
    input: bool,
    count: Option<u16>,
    timeout: Duration,
) -> Exit {
    if count.is_some_and(|c| ![1, 2, 4].contains(&c)) {
        eprintln!("error: --count must be 1, 2 or 4");
        return Exit::Invalid;
    }
    let table = if input { Table::Input } else { Table::Holding };
    let read = |count: u16| {
        let target = &target;
        async move {
            match target {
                Target::Tcp(a) => {
                    read_with(
                        &mut TcpLink::new(a.clone(), timeout),
                        unit,
                        table,
                        register,
                        count,
                        timeout,
                    )
                    .await
                }
                Target::Serial(s) => {
                    read_with(
                        &mut RtuLink::new(s.clone()),
                        unit,
                        table,
                        register,
                        count,
                        timeout,
                    )
                    .await
                }
            }
        }
    };
    let mut count = count.unwrap_or(4);
    let mut result = read(count).await;
    if count == 4
        && matches!(
            result,
            Err(LinkError::Exception(ExceptionCode::IllegalDataAddress))
        )
    {
        eprintln!(
            "note: unit {unit} refused 4 registers at 0x{register:04X} (illegal data address); reading 2"
        );
        count = 2;
        result = read(count).await;
    }
    let words = match result {
        Ok(w) => w,
        Err(e) => {
            eprintln!(
                "error: {table} 0x{register:04X} ×{count} from unit {unit} at {}: {e}",
                target.describe()
            );
            if let LinkError::Exception(_) = e {
                eprintln!(
                    "hint: try the other table (--input reads input registers, FC4) or a register from the meter's manual minus 1"
                );
            }
            return Exit::Failure;
        }
    };
    let hex: Vec<String> = words.iter().map(|w| format!("0x{w:04X}")).collect();
    println!(
        "{table} register 0x{register:04X} ({register}) ×{count} from unit {unit} at {}: {}",
        target.describe(),
        hex.join(" ")
    );
    for i in interpretations(&words) {
        let hint = i.hint.map(|h| format!("   ← {h}")).unwrap_or_default();
        println!("  {:<10} {:>24}{hint}", i.name, i.value);
    }
    let likely: Vec<_> = interpretations(&words)
        .into_iter()
        .filter(|i| i.hint.is_some())
        .collect();
    for i in likely.iter().take(3) {
        let mut parts = i.name.split_whitespace();
        let ty = parts.next().unwrap_or("u16");
        let order = parts.next().unwrap_or("ABCD");
        println!(
            "channel: {{ register = 0x{register:04X}, table = \"{table}\", type = \"{ty}\", order = \"{order}\", import_id = \"…\" }}"
        );
    }
    Exit::Ok
}

async fn scan_with<L: Link>(
    link: &mut L,
    units: &[u8],
    timeout: Duration,
    label: &str,
) -> Vec<(u8, String)> {
    let mut found = Vec::new();
    let mut err = std::io::stderr();
    for (n, &unit) in units.iter().enumerate() {
        let _ = write!(
            err,
            "\rscanning {label}: unit {unit:>3} ({}/{}), {} found   ",
            n + 1,
            units.len(),
            found.len()
        );
        let _ = err.flush();
        match link
            .read(unit, Table::Holding, 0, 1, Duration::ZERO, timeout)
            .await
        {
            Ok(w) => found.push((
                unit,
                format!(
                    "answers (holding 0x0000 = 0x{:04X})",
                    w.first().copied().unwrap_or(0)
                ),
            )),
            Err(LinkError::Exception(c)) => {
                found.push((unit, format!("answers (exception: {})", exception_name(c))))
            }
            Err(LinkError::PortGone(e)) | Err(LinkError::Connect(e)) => {
                let _ = writeln!(err);
                eprintln!("error: {e}");
                return found;
            }
            Err(_) => {}
        }
    }
    let _ = writeln!(
        err,
        "\rscanned {label}: {} unit ids, {} answered{}",
        units.len(),
        found.len(),
        " ".repeat(20)
    );
    found
}

pub async fn scan(target: Target, units: Vec<u8>, timeout: Duration) -> Exit {
    let label = target.describe();
    let found = match &target {
        Target::Tcp(a) => {
            scan_with(
                &mut TcpLink::new(a.clone(), timeout),
                &units,
                timeout,
                &label,
            )
            .await
        }
        Target::Serial(s) => scan_with(&mut RtuLink::new(s.clone()), &units, timeout, &label).await,
    };
    for (unit, what) in &found {
        println!("unit {unit:>3}: {what}");
    }
    if found.is_empty() {
        println!("no unit id answered (check wiring, baud rate and parity, or widen --units)");
        return Exit::Failure;
    }
    Exit::Ok
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse() {
        assert_eq!(parse_register("0x0156"), Ok(342));
        assert_eq!(parse_register("342"), Ok(342));
        assert!(parse_register("0x10000").is_err());
        assert_eq!(parse_units("1-3,5,2"), Ok(vec![1, 2, 3, 5]));
        assert_eq!(parse_units("247").map(|v| v.len()), Ok(1));
        assert!(parse_units("5-1").is_err());
        assert!(parse_units("1-300").is_err());
    }
}
