//! `scan mbus` and `mbus decode`: finding the meters on an M-Bus line (primary scan 0–250, or
//! the secondary wildcard search) and decoding a captured telegram into the JSON of SPEC §7.

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};

use super::Exit;
use crate::config::MbusTimeout;
use crate::mbus::bus::{MbusLink, ScanReport, scan_primary, scan_secondary};
use crate::mbus::frame::{self, Parsed};
use crate::mbus::record::{self, Header, medium_name};

fn header_line(h: &Header) -> String {
    format!(
        "id {}, {}, version {}, medium {} (0x{:02X})",
        h.id,
        h.manufacturer,
        h.version,
        medium_name(h.medium),
        h.medium
    )
}

/// The 16-character secondary address libmbus prints (and the config accepts).
fn secondary_string(h: &Header) -> String {
    let m = h.manufacturer_raw.to_le_bytes();
    format!(
        "{}{:02X}{:02X}{:02X}{:02X}",
        h.id, m[0], m[1], h.version, h.medium
    )
}

/// Parses `0-250`, `5` or `1,3,10-20` into primary addresses.
pub fn parse_addresses(s: &str) -> Result<Vec<u8>, String> {
    let units = super::probe::parse_units(s)?;
    if let Some(bad) = units.iter().find(|a| **a > 250) {
        return Err(format!("{bad} is not a primary address (0–250)"));
    }
    Ok(units)
}

pub async fn scan(
    port: PathBuf,
    baud: u32,
    secondary: bool,
    addresses: Vec<u8>,
    timeout: MbusTimeout,
    retries: u32,
) -> Exit {
    let mut link = MbusLink::with(port.clone(), baud, timeout);
    let mut err = std::io::stderr();
    let label = format!("{} {baud} baud 8E1", port.display());
    let scan: Result<ScanReport, _> = if secondary {
        scan_secondary(&mut link, retries, |mask, n| {
            let _ = write!(err, "\rsearching {label}: {mask}, {n} found   ");
            let _ = err.flush();
        })
        .await
        .map(|found| ScanReport {
            found,
            collisions: Vec::new(),
        })
    } else {
        let total = addresses.len();
        let mut done = 0usize;
        scan_primary(&mut link, addresses, retries, |a, n| {
            done += 1;
            let _ = write!(
                err,
                "\rscanning {label}: address {a:>3} ({done}/{total}), {n} found   "
            );
            let _ = err.flush();
        })
        .await
    };
    let _ = writeln!(err);
    let ScanReport { found, collisions } = match scan {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return Exit::Failure;
        }
    };
    for f in &found {
        match f.primary {
            Some(a) => println!("address {a:>3}: {}", header_line(&f.header)),
            None => println!(
                "secondary {} (primary address {}): {}",
                secondary_string(&f.header),
                f.address,
                header_line(&f.header)
            ),
        }
    }
    for a in &collisions {
        println!(
            "address {a:>3}: several meters answer (collision) — give them distinct primary addresses or use secondary addressing (`scan mbus --secondary`)"
        );
    }
    eprintln!("{} meter(s) found", found.len());
    if found.is_empty() {
        if collisions.is_empty() {
            println!("no meter answered (check the converter, the baud rate, and try --secondary)");
        }
        return Exit::Failure;
    }
    Exit::Ok
}

/// Reads hex text from a file or `-` (stdin).
fn read_input(input: &Path) -> Result<String, String> {
    if input.as_os_str() == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .map_err(|e| format!("cannot read stdin: {e}"))?;
        return Ok(s);
    }
    std::fs::read_to_string(input).map_err(|e| format!("cannot read {}: {e}", input.display()))
}

pub fn decode(input: &Path) -> Exit {
    let text = match read_input(input) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e}");
            return Exit::Failure;
        }
    };
    let bytes = match frame::from_hex(&text) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("error: not a hex telegram: {e}");
            return Exit::Invalid;
        }
    };
    let frame = match frame::parse(&bytes) {
        Parsed::Frame(f, used) => {
            if used < bytes.len() {
                eprintln!(
                    "note: {} byte(s) after the telegram ignored",
                    bytes.len() - used
                );
            }
            f
        }
        Parsed::NeedMore(n) => {
            eprintln!(
                "error: the telegram is incomplete: {} of {n} bytes",
                bytes.len()
            );
            return Exit::Failure;
        }
        Parsed::Invalid { error, .. } => {
            eprintln!("error: not a valid M-Bus telegram: {error}");
            return Exit::Failure;
        }
    };
    match record::decode(&frame) {
        Ok(response) => {
            match serde_json::to_string_pretty(&crate::mbus::json::to_json(&response)) {
                Ok(s) => println!("{s}"),
                Err(e) => {
                    eprintln!("error: {e}");
                    return Exit::Failure;
                }
            }
            Exit::Ok
        }
        Err(e) => {
            eprintln!("error: {e}");
            Exit::Failure
        }
    }
}
