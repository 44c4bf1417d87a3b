//! The wired M-Bus application layer (EN 13757-3), pure: turns the user data of a slave's
//! RSP_UD telegram into a header and a list of data records with exact values, or into the
//! application error the slave reported (CI `70`).
//!
//! Covered: CI `72` (12-byte header, LSB first), `76` (the same, MSB first), `7A` (4-byte short
//! header), `78` (no header), `73` (the legacy fixed data structure, decoded into two records as
//! libmbus does) and `70` (application errors). Records: DIF/DIFE chains (storage, tariff,
//! sub-unit, function; at most 10 DIFEs), every data type (BCD with sign and error digits,
//! integers of 8–64 bits, real32, LVAR text/BCD/binary, dates G/F/I and times J), the primary,
//! `FD` and `FB` VIF tables (in `super::vif`), combinable VIFEs kept as modifiers,
//! correction factors applied, plain-text VIFs (both byte orders met in the field), and
//! manufacturer-specific VIFs and `0F`/`1F` data kept raw.
//!
//! Values keep their exact scale (mantissa × 10^exponent) in the base unit of their quantity.
//! This module must not do IO, read the clock, log, or know about channels, units conversion or
//! JSON; and it never panics on any input: a truncated or malformed telegram is a
//! [`DecodeError`] naming the record and the user-data byte where it went wrong.

mod data;
#[cfg(test)]
mod tests;

use std::fmt;

use super::frame::{Frame, PRM};
use super::vif::{self, Effect, Factor, Kind};
pub use crate::config::MbusFunction as Function;
use data::{Decimal, Lvar};

/// The identification of the meter that answered (from the CI `72`/`76` header; fields a
/// shorter header does not carry are empty or zero, see [`decode_user_data`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// The identification number as 8 digits; an ID that is not valid BCD comes out as the
    /// hex of its 4 bytes, most significant first (`0500023E`), never rejected.
    pub id: String,
    /// The 4 ID bytes as on the wire.
    pub id_raw: [u8; 4],
    /// Three letters (FLAG code); `@@@` for 0.
    pub manufacturer: String,
    pub manufacturer_raw: u16,
    pub version: u8,
    /// The medium / device type code; [`medium_name`] names it.
    pub medium: u8,
    pub access_number: u8,
    pub status: u8,
    /// The signature (configuration) word; not taken as a sign of encryption.
    pub signature: u16,
}

/// The snake_case name of a medium / device-type code (EN 13757-3 / MBDOC48), as in SPEC §7
/// (`heat_outlet`); `reserved` for codes without a meaning.
pub fn medium_name(code: u8) -> &'static str {
    match code {
        0x00 => "other",
        0x01 => "oil",
        0x02 => "electricity",
        0x03 => "gas",
        0x04 => "heat_outlet",
        0x05 => "steam",
        0x06 => "warm_water",
        0x07 => "water",
        0x08 => "heat_cost_allocator",
        0x09 => "compressed_air",
        0x0A => "cooling_outlet",
        0x0B => "cooling_inlet",
        0x0C => "heat_inlet",
        0x0D => "heat_cooling",
        0x0E => "bus_system",
        0x0F => "unknown",
        0x15 => "hot_water",
        0x16 => "cold_water",
        0x17 => "dual_water",
        0x18 => "pressure",
        0x19 => "ad_converter",
        0x1A => "smoke_detector",
        0x1B => "room_sensor",
        0x1C => "gas_detector",
        0x20 => "breaker",
        0x21 => "valve",
        0x25 => "display",
        0x28 => "waste_water",
        0x29 => "waste",
        0x30 => "service_tool",
        0x31 => "gateway",
        0x32 => "unidirectional_repeater",
        0x33 => "bidirectional_repeater",
        0x36 => "radio_converter_system",
        0x37 => "radio_converter_meter",
        0x38 => "bus_control_unit",
        _ => "reserved",
    }
}

/// The snake_case name of a record function (SPEC §7).
pub fn function_name(function: Function) -> &'static str {
    match function {
        Function::Instantaneous => "instantaneous",
        Function::Maximum => "maximum",
        Function::Minimum => "minimum",
        Function::Error => "error",
    }
}

/// A record's value, in the base unit of its quantity.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// Exact: value = mantissa × 10^exponent (integers, BCD, and anything scaled by the VIF).
    Number { mantissa: i128, exponent: i32 },
    /// A real32 from the meter, taken as the f32's shortest decimal and scaled exactly; also a
    /// °F temperature converted to °C (not a decimal factor). NaN and infinities kept.
    Real(f64),
    /// Variable-length text (in reading order).
    Text(String),
    /// `2026-11-26`, `2026-11-26T10:15:00`, a time of day `10:15:00`, or a yearly date
    /// `--01-01` (EN 13757-3's year 127, "every year").
    Date(String),
    /// Raw bytes as on the wire: binary LVAR fields longer than 15 bytes, empty data fields.
    Bytes(Vec<u8>),
    /// Not a value: BCD with error digits (A–E) or an impossible date; the data field's hex
    /// digits, most significant first (`DDDDEBBD`).
    Invalid(String),
}

impl Value {
    /// The value as an f64 (numbers only): the nearest f64 to the exact decimal.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Number { mantissa, exponent } => Some(
                Decimal {
                    mantissa: *mantissa,
                    exponent: *exponent,
                }
                .to_f64(),
            ),
            Value::Real(x) => Some(*x),
            _ => None,
        }
    }
}

impl fmt::Display for Value {
    /// Exact decimal for numbers, the string for text and dates, hex for bytes.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Number { mantissa, exponent } => Decimal {
                mantissa: *mantissa,
                exponent: *exponent,
            }
            .fmt(f),
            Value::Real(x) => write!(f, "{x}"),
            Value::Text(s) => write!(f, "{s:?}"),
            Value::Date(s) => f.write_str(s),
            Value::Bytes(b) => f.write_str(&hex(b)),
            Value::Invalid(s) => write!(f, "invalid ({s})"),
        }
    }
}

/// Bytes as upper-case hex without separators, in the order given.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02X}")).collect()
}

/// One data record.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// 0-based position in the telegram, fillers not counted (libmbus's `DataRecord id`).
    pub index: usize,
    pub function: Function,
    pub storage: u64,
    pub tariff: u32,
    pub subunit: u32,
    /// A name from [`MBUS_QUANTITIES`](crate::config::MBUS_QUANTITIES), `plain_text` for a
    /// plain-text VIF, `unknown` for what the decoder does not understand (manufacturer-specific
    /// and reserved codes, non-metric units); unknown values are raw (unscaled).
    pub quantity: String,
    /// The base unit of the quantity (`Wh` or `J` for energy, `W` or `J/h` for power, `m3`,
    /// `°C`, `s`, …); the meter's text for `plain_text`; empty for none.
    pub unit: String,
    pub value: Value,
    /// What the VIFE chain says beyond the quantity, snake_case: `forward_flow`,
    /// `backward_flow`, `per_hour`, `upper_limit`, `future_value`, `manufacturer_specific`,
    /// `record_error_…`. Correction factors are applied, not listed.
    pub modifiers: Vec<String>,
    /// The raw bytes from the DIF up to the data field (DIFEs, VIF, VIFEs, plain text).
    pub dif_vif: Vec<u8>,
    /// The raw data field (with its LVAR byte, if any), as on the wire.
    pub data: Vec<u8>,
}

impl Record {
    /// The value in the base unit, if it is a number.
    pub fn as_f64(&self) -> Option<f64> {
        self.value.as_f64()
    }
}

/// A decoded RSP_UD telegram.
#[derive(Debug, Clone, PartialEq)]
pub struct Telegram {
    /// The A-field of the frame (the primary address, or 253 for a selected slave).
    pub address: u8,
    pub ci: u8,
    pub header: Header,
    pub records: Vec<Record>,
    /// The telegram ended with DIF `1F`: the master should ask for the next one.
    pub more_records_follow: bool,
    /// The bytes after DIF `0F`/`1F` (manufacturer specific), as on the wire.
    pub manufacturer_data: Vec<u8>,
}

/// What a slave answered.
#[derive(Debug, Clone, PartialEq)]
pub enum Response {
    Data(Telegram),
    /// CI `70`: the slave could not process the request. A per-meter error, not a decode
    /// failure.
    ApplicationError {
        address: u8,
        code: Option<u8>,
        text: &'static str,
    },
}

/// Why user data could not be decoded. Offsets count bytes of the user data (after the CI).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("{0} carries no user data")]
    NoUserData(&'static str),
    #[error("C-field 0x{0:02X} is a master's telegram, not a meter's answer")]
    FromMaster(u8),
    #[error("C-field 0x{0:02X} is not RSP_UD")]
    NotRspUd(u8),
    #[error("CI 0x{ci:02X} ({what}) is not decoded")]
    UnsupportedCi { ci: u8, what: &'static str },
    #[error("the {what} header needs {needed} bytes, the user data has {available}")]
    HeaderTooShort {
        what: &'static str,
        needed: usize,
        available: usize,
    },
    #[error("the fixed data structure needs 16 bytes of user data, the telegram has {0}")]
    FixedLength(usize),
    #[error("premature end of record {record} at {at}, user-data byte {offset}")]
    PrematureEnd {
        record: usize,
        at: &'static str,
        offset: usize,
    },
    #[error("record {record} has more than 10 DIFEs (user-data byte {offset})")]
    TooManyDifes { record: usize, offset: usize },
    #[error("record {record} has more than 10 VIFEs (user-data byte {offset})")]
    TooManyVifes { record: usize, offset: usize },
    #[error(
        "record {record}: plain-text unit of {len} characters at user-data byte {offset} is too long (at most {MAX_TEXT})"
    )]
    PlainTextTooLong {
        record: usize,
        len: usize,
        offset: usize,
    },
    #[error("record {record}: reserved DIF 0x{dif:02X} at user-data byte {offset}")]
    ReservedDif {
        record: usize,
        dif: u8,
        offset: usize,
    },
    #[error(
        "record {record}: reserved variable-length code 0x{lvar:02X} at user-data byte {offset}"
    )]
    ReservedLvar {
        record: usize,
        lvar: u8,
        offset: usize,
    },
}

/// EN 13757-3 allows at most 10 DIFEs and 10 VIFEs per record.
const MAX_EXTENSIONS: usize = 10;
/// The longest plain-text unit accepted (libmbus's bound).
const MAX_TEXT: usize = 128;

/// The text of an application error code (CI `70`); no code byte means "unspecified".
pub fn application_error_text(code: Option<u8>) -> &'static str {
    match code {
        None | Some(0) => "unspecified error",
        Some(1) => "unimplemented CI field",
        Some(2) => "buffer too long, truncated",
        Some(3) => "too many records",
        Some(4) => "premature end of record",
        Some(5) => "more than 10 DIFEs",
        Some(6) => "more than 10 VIFEs",
        Some(7) => "reserved",
        Some(8) => "application busy",
        Some(9) => "too many readouts",
        Some(_) => "unknown application error",
    }
}

/// Decodes a slave's telegram: RSP_UD long frames (and the control-frame form of a CI `70`
/// error without a code byte). Acknowledgements, short frames and master telegrams are errors.
pub fn decode(frame: &Frame) -> Result<Response, DecodeError> {
    match frame {
        Frame::Ack => Err(DecodeError::NoUserData("an acknowledgement (E5)")),
        Frame::Short { .. } => Err(DecodeError::NoUserData("a short frame")),
        Frame::Control { c, a, ci } => {
            check_control(*c)?;
            decode_user_data(*a, *ci, &[])
        }
        Frame::Long { c, a, ci, data } => {
            check_control(*c)?;
            decode_user_data(*a, *ci, data)
        }
    }
}

/// RSP_UD is `08`, optionally with DFC (`10`) and ACD (`20`).
fn check_control(c: u8) -> Result<(), DecodeError> {
    if c & PRM != 0 {
        Err(DecodeError::FromMaster(c))
    } else if c & 0xCF != 0x08 {
        Err(DecodeError::NotRspUd(c))
    } else {
        Ok(())
    }
}

/// Decodes the user data (the bytes after the CI) of a slave's telegram. Headers shorter than
/// CI `72`'s leave what they do not carry empty: CI `7A` and `78` have no ID, manufacturer,
/// version or medium (`id` and `manufacturer` are empty strings); CI `73` has no manufacturer
/// or version.
pub fn decode_user_data(address: u8, ci: u8, data: &[u8]) -> Result<Response, DecodeError> {
    match ci {
        0x70 => {
            let code = data.first().copied();
            Ok(Response::ApplicationError {
                address,
                code,
                text: application_error_text(code),
            })
        }
        0x72 | 0x76 => {
            let msb_first = ci == 0x76;
            let header_bytes: [u8; 12] = data.get(..12).and_then(|h| h.try_into().ok()).ok_or(
                DecodeError::HeaderTooShort {
                    what: "variable data (CI 0x72)",
                    needed: 12,
                    available: data.len(),
                },
            )?;
            let header = long_header(header_bytes, msb_first);
            variable(address, ci, header, data, 12, msb_first)
        }
        0x7A => {
            let [access_number, status, s0, s1]: [u8; 4] = data
                .get(..4)
                .and_then(|h| h.try_into().ok())
                .ok_or(DecodeError::HeaderTooShort {
                    what: "short (CI 0x7A)",
                    needed: 4,
                    available: data.len(),
                })?;
            let header = Header {
                access_number,
                status,
                signature: u16::from_le_bytes([s0, s1]),
                ..empty_header()
            };
            variable(address, ci, header, data, 4, false)
        }
        0x78 => variable(address, ci, empty_header(), data, 0, false),
        0x73 => fixed(address, ci, data),
        _ => Err(DecodeError::UnsupportedCi {
            ci,
            what: ci_name(ci),
        }),
    }
}

fn ci_name(ci: u8) -> &'static str {
    match ci {
        0x50 => "application reset, sent by a master",
        0x51 => "data send, sent by a master",
        0x52 => "slave select, sent by a master",
        0x54 => "synchronize action, sent by a master",
        0x55 | 0x56 => "mode 2 data send or select, sent by a master",
        0x71 => "alarm status",
        0x77 => "fixed data structure, MSB first",
        0x8C..=0x8F => "extended link layer, wireless",
        0xA0..=0xB7 => "manufacturer specific",
        0xB8..=0xBF => "set baud rate, sent by a master",
        _ => "unknown",
    }
}

fn empty_header() -> Header {
    Header {
        id: String::new(),
        id_raw: [0; 4],
        manufacturer: String::new(),
        manufacturer_raw: 0,
        version: 0,
        medium: 0,
        access_number: 0,
        status: 0,
        signature: 0,
    }
}

/// The three letters of a manufacturer word: 5 bits each, + 64 (`0` → `@`).
fn manufacturer_letters(m: u16) -> String {
    [(m >> 10) & 0x1F, (m >> 5) & 0x1F, m & 0x1F]
        .into_iter()
        .map(|v| char::from(v as u8 + 64))
        .collect()
}

fn long_header(h: [u8; 12], msb_first: bool) -> Header {
    let [
        i0,
        i1,
        i2,
        i3,
        m0,
        m1,
        version,
        medium,
        access_number,
        status,
        s0,
        s1,
    ] = h;
    let id_raw = [i0, i1, i2, i3];
    let word = |a: u8, b: u8| {
        if msb_first {
            u16::from_be_bytes([a, b])
        } else {
            u16::from_le_bytes([a, b])
        }
    };
    let manufacturer_raw = word(m0, m1);
    // Valid BCD prints as its digits; anything else as the same hex, so it is never rejected.
    let id = if msb_first {
        hex(&id_raw)
    } else {
        data::hex_msb_first(&id_raw)
    };
    Header {
        id,
        id_raw,
        manufacturer: manufacturer_letters(manufacturer_raw),
        manufacturer_raw,
        version,
        medium,
        access_number,
        status,
        signature: word(s0, s1),
    }
}

fn variable(
    address: u8,
    ci: u8,
    header: Header,
    data: &[u8],
    start: usize,
    msb_first: bool,
) -> Result<Response, DecodeError> {
    let body = parse_records(data, start, msb_first)?;
    Ok(Response::Data(Telegram {
        address,
        ci,
        header,
        records: body.records,
        more_records_follow: body.more_records_follow,
        manufacturer_data: body.manufacturer_data,
    }))
}

/// A read position in the user data; every read is bounds-checked.
#[derive(Debug, Clone)]
struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn byte(&mut self) -> Option<u8> {
        let b = *self.data.get(self.pos)?;
        self.pos += 1;
        Some(b)
    }

    fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(n)?;
        let s = self.data.get(self.pos..end)?;
        self.pos = end;
        Some(s)
    }

    fn rest(&mut self) -> &'a [u8] {
        let s = self.data.get(self.pos..).unwrap_or_default();
        self.pos = self.data.len();
        s
    }
}

struct Body {
    records: Vec<Record>,
    more_records_follow: bool,
    manufacturer_data: Vec<u8>,
}

/// The data field of a record before interpretation.
enum Payload<'a> {
    /// A fixed-length field; `code` is the DIF's data field code.
    Fixed {
        code: u8,
        bytes: &'a [u8],
    },
    Variable {
        kind: Lvar,
        bytes: &'a [u8],
    },
}

fn parse_records(data: &[u8], start: usize, msb_first: bool) -> Result<Body, DecodeError> {
    let mut r = Reader { data, pos: start };
    let mut records = Vec::new();
    let mut more_records_follow = false;
    let mut manufacturer_data = Vec::new();
    loop {
        let record = records.len();
        let record_start = r.pos;
        let Some(dif) = r.byte() else { break };
        match dif {
            // Idle filler: no DIFE, VIF or data follow, and it is not counted.
            0x2F => continue,
            0x0F | 0x1F => {
                more_records_follow = dif == 0x1F;
                manufacturer_data = r.rest().to_vec();
                break;
            }
            // 3F–7F (and F with the extension bit): reserved or master-only special functions
            // whose length nobody knows, so nothing after them can be read.
            d if d & 0x0F == 0x0F => {
                return Err(DecodeError::ReservedDif {
                    record,
                    dif: d,
                    offset: record_start,
                });
            }
            _ => {}
        }
        let mut difes = Vec::new();
        let mut last = dif;
        while last & 0x80 != 0 {
            let offset = r.pos;
            let b = r.byte().ok_or(DecodeError::PrematureEnd {
                record,
                at: "DIFE",
                offset,
            })?;
            if difes.len() == MAX_EXTENSIONS {
                return Err(DecodeError::TooManyDifes { record, offset });
            }
            difes.push(b);
            last = b;
        }
        let offset = r.pos;
        let vif = r.byte().ok_or(DecodeError::PrematureEnd {
            record,
            at: "VIF",
            offset,
        })?;
        let (vifes, text) = if vif & 0x7F == 0x7C {
            let (vifes, text) = plain_text_vib(&mut r, vif, record, msb_first)?;
            (vifes, Some(text))
        } else {
            (vife_chain(&mut r, vif, record)?, None)
        };
        let data_start = r.pos;
        let code = dif & 0x0F;
        let payload = match code {
            0x0D => {
                let l = r.byte().ok_or(DecodeError::PrematureEnd {
                    record,
                    at: "variable-length LVAR",
                    offset: data_start,
                })?;
                let kind = data::lvar(l);
                let n = match kind {
                    Lvar::Text(n) | Lvar::Binary(n) | Lvar::Bcd { bytes: n, .. } => n,
                    Lvar::Reserved => {
                        return Err(DecodeError::ReservedLvar {
                            record,
                            lvar: l,
                            offset: data_start,
                        });
                    }
                };
                let offset = r.pos;
                let bytes = r.bytes(n).ok_or(DecodeError::PrematureEnd {
                    record,
                    at: "data",
                    offset,
                })?;
                Payload::Variable { kind, bytes }
            }
            _ => {
                let bytes = r
                    .bytes(data_length(code))
                    .ok_or(DecodeError::PrematureEnd {
                        record,
                        at: "data",
                        offset: data_start,
                    })?;
                Payload::Fixed { code, bytes }
            }
        };
        let raw = |a: usize, b: usize| data.get(a..b).unwrap_or_default().to_vec();
        records.push(interpret(
            Parts {
                index: record,
                dif,
                difes: &difes,
                vif,
                vifes: &vifes,
                text,
                payload,
                msb_first,
            },
            raw(record_start, data_start),
            raw(data_start, r.pos),
        ));
    }
    Ok(Body {
        records,
        more_records_follow,
        manufacturer_data,
    })
}

/// Bytes of a fixed-length data field by DIF data code (`D` and `F` are handled elsewhere).
fn data_length(code: u8) -> usize {
    match code {
        0x1 | 0x9 => 1,
        0x2 | 0xA => 2,
        0x3 | 0xB => 3,
        0x4 | 0x5 | 0xC => 4,
        0x6 | 0xE => 6,
        0x7 => 8,
        // 0 no data, 8 selection for readout (no data in a response).
        _ => 0,
    }
}

/// The VIFEs following a byte whose extension bit may be set.
fn vife_chain(r: &mut Reader<'_>, first: u8, record: usize) -> Result<Vec<u8>, DecodeError> {
    let mut vifes = Vec::new();
    let mut last = first;
    while last & 0x80 != 0 {
        let offset = r.pos;
        let b = r.byte().ok_or(DecodeError::PrematureEnd {
            record,
            at: "VIFE",
            offset,
        })?;
        if vifes.len() == MAX_EXTENSIONS {
            return Err(DecodeError::TooManyVifes { record, offset });
        }
        vifes.push(b);
        last = b;
    }
    Ok(vifes)
}

/// A plain-text VIF (`7C`/`FC`): its VIFEs and the unit text (in reading order).
///
/// EN 13757-3 puts the length byte and text after the VIFE chain; several real meters (the
/// Elvaco CMa10/CMa11 in the libmbus fixtures) put them right after the VIF, before the VIFEs,
/// and libmbus reads it that way. With `7C` (no VIFEs) both coincide. With `FC` the standard
/// position is tried first and accepted only if it gives printable ASCII that fits the
/// telegram; otherwise the text is read right after the VIF.
fn plain_text_vib(
    r: &mut Reader<'_>,
    vif: u8,
    record: usize,
    msb_first: bool,
) -> Result<(Vec<u8>, String), DecodeError> {
    if vif & 0x80 == 0 {
        let text = read_text(r, record, msb_first)?;
        return Ok((Vec::new(), text));
    }
    let mut standard = r.clone();
    if let Ok(vifes) = vife_chain(&mut standard, vif, record) {
        let len = standard.byte().map(usize::from).unwrap_or(0);
        if (1..=MAX_TEXT).contains(&len) {
            if let Some(bytes) = standard.bytes(len) {
                if bytes.iter().all(|b| (0x20..=0x7E).contains(b)) {
                    *r = standard;
                    return Ok((vifes, text_in_order(bytes, msb_first)));
                }
            }
        }
    }
    let text = read_text(r, record, msb_first)?;
    let vifes = vife_chain(r, vif, record)?;
    Ok((vifes, text))
}

/// A length byte and that many characters.
fn read_text(r: &mut Reader<'_>, record: usize, msb_first: bool) -> Result<String, DecodeError> {
    let offset = r.pos;
    let premature = DecodeError::PrematureEnd {
        record,
        at: "plain-text VIF",
        offset,
    };
    let len = usize::from(r.byte().ok_or(premature.clone())?);
    if len > MAX_TEXT {
        return Err(DecodeError::PlainTextTooLong {
            record,
            len,
            offset,
        });
    }
    let bytes = r.bytes(len).ok_or(premature)?;
    Ok(text_in_order(bytes, msb_first))
}

/// Texts are sent last character first (in LSB-first telegrams).
fn text_in_order(bytes: &[u8], msb_first: bool) -> String {
    if msb_first {
        data::latin1(bytes.iter().copied())
    } else {
        data::latin1(bytes.iter().rev().copied())
    }
}

/// The parsed pieces of one record.
struct Parts<'a> {
    index: usize,
    dif: u8,
    difes: &'a [u8],
    vif: u8,
    vifes: &'a [u8],
    text: Option<String>,
    payload: Payload<'a>,
    msb_first: bool,
}

/// How the value is to be computed, after the VIF and the VIFE chain.
struct Interpretation {
    quantity: String,
    unit: String,
    kind: Kind,
    /// Sum of the multiplicative corrections (powers of ten).
    shift: i32,
    /// Additive corrections, 10^n each, in the unit of the VIF.
    offsets: Vec<i32>,
    modifiers: Vec<String>,
}

fn interpret(p: Parts<'_>, dif_vif: Vec<u8>, data: Vec<u8>) -> Record {
    let function = match (p.dif >> 4) & 3 {
        0 => Function::Instantaneous,
        1 => Function::Maximum,
        2 => Function::Minimum,
        _ => Function::Error,
    };
    // storage = DIF bit 6 | Σ DIFE_i[3:0] << (1 + 4i); tariff = Σ DIFE_i[5:4] << 2i;
    // sub-unit = Σ DIFE_i[6] << i. Ten DIFEs at most: 41, 20 and 10 bits.
    let mut storage = u64::from((p.dif >> 6) & 1);
    let mut tariff = 0u32;
    let mut subunit = 0u32;
    for (i, d) in p.difes.iter().enumerate().take(MAX_EXTENSIONS) {
        storage |= u64::from(d & 0x0F) << (1 + 4 * i);
        tariff |= u32::from((d >> 4) & 3) << (2 * i);
        subunit |= u32::from((d >> 6) & 1) << i;
    }
    let how = value_information(p.vif, p.vifes, p.text);
    let value = compute_value(&p.payload, &how, p.msb_first);
    Record {
        index: p.index,
        function,
        storage,
        tariff,
        subunit,
        quantity: how.quantity,
        unit: how.unit,
        value,
        modifiers: how.modifiers,
        dif_vif,
        data,
    }
}

/// Quantity, unit, scale and modifiers from the VIF, its VIFEs and a plain-text unit.
fn value_information(vif: u8, vifes: &[u8], text: Option<String>) -> Interpretation {
    let mut modifiers = Vec::new();
    let (meaning, chain) = match vif {
        0xFD | 0xFB => match vifes.split_first() {
            Some((first, rest)) if vif == 0xFD => (vif::main_extension(*first), rest),
            Some((first, rest)) => (vif::alternate_extension(*first), rest),
            None => (vif::UNKNOWN, &[][..]),
        },
        // A plain-text unit is a number in the meter's own unit; its VIFEs still apply.
        0x7C | 0xFC => (
            vif::Meaning {
                quantity: "plain_text",
                unit: "",
                kind: Kind::Number(Factor::ONE),
            },
            vifes,
        ),
        // Manufacturer specific: the VIFEs that follow are the manufacturer's too, so none of
        // them is read against the standard tables (m-bus-parser #114).
        0x7F | 0xFF => {
            modifiers.push("manufacturer_specific".to_owned());
            (vif::UNKNOWN, &[][..])
        }
        v => (vif::primary(v), vifes),
    };
    let mut how = Interpretation {
        quantity: meaning.quantity.to_owned(),
        unit: match &text {
            Some(t) => t.clone(),
            None => meaning.unit.to_owned(),
        },
        kind: meaning.kind,
        shift: 0,
        offsets: Vec::new(),
        modifiers,
    };
    if how.kind == Kind::Raw {
        // Reserved codes: the meaning of the VIFEs is unknown too; they stay in `dif_vif`.
        return how;
    }
    let mut chain = chain.iter();
    while let Some(&v) = chain.next() {
        let (name, effect) = match vif::combinable(v) {
            (_, Effect::Extension) => match chain.next() {
                Some(&e) => vif::combinable_extension(e),
                None => ("vife_ext".to_owned(), Effect::Tag),
            },
            other => other,
        };
        match effect {
            Effect::Tag | Effect::RecordError => how.modifiers.push(name),
            Effect::Scale(n) => how.shift = how.shift.saturating_add(n),
            Effect::Offset(n) => how.offsets.push(n),
            Effect::Date => {
                how.modifiers.push(name);
                how.kind = Kind::DateTime;
                how.unit.clear();
            }
            Effect::Count => {
                how.modifiers.push(name);
                how.kind = Kind::Number(Factor::ONE);
                how.unit.clear();
            }
            Effect::Duration(f) => {
                how.modifiers.push(name);
                how.kind = Kind::Number(f);
                how.unit = "s".to_owned();
            }
            Effect::NonMetric => {
                // BTU, US gallons, °F…: not what the VIF's unit says, so not a usable number.
                how.modifiers.push(name);
                how.quantity = "unknown".to_owned();
                how.unit.clear();
                how.kind = Kind::Raw;
                return how;
            }
            Effect::ManufacturerSpecific => {
                how.modifiers.push(name);
                break;
            }
            Effect::Extension => {}
        }
    }
    how
}

/// The raw reading of a data field, before scaling.
enum RawValue {
    Int(i128),
    Bcd(Result<i128, String>),
    Real(f32),
    Text(String),
    Bytes(Vec<u8>),
}

fn le_bytes(bytes: &[u8], msb_first: bool) -> Vec<u8> {
    if msb_first {
        bytes.iter().rev().copied().collect()
    } else {
        bytes.to_vec()
    }
}

fn raw_value(payload: &Payload<'_>, msb_first: bool) -> RawValue {
    match *payload {
        Payload::Fixed { code, bytes } => {
            let le = le_bytes(bytes, msb_first);
            match code {
                0x1..=0x4 | 0x6 | 0x7 => RawValue::Int(data::int(&le)),
                0x5 => match <[u8; 4]>::try_from(le.as_slice()) {
                    Ok(b) => RawValue::Real(data::real(b)),
                    Err(_) => RawValue::Bytes(bytes.to_vec()),
                },
                0x9..=0xC | 0xE => RawValue::Bcd(data::bcd(&le)),
                _ => RawValue::Bytes(bytes.to_vec()),
            }
        }
        Payload::Variable { kind, bytes } => match kind {
            Lvar::Text(_) => RawValue::Text(text_in_order(bytes, msb_first)),
            Lvar::Bcd { negative, .. } => RawValue::Bcd(
                data::bcd(&le_bytes(bytes, msb_first)).map(|v| if negative { -v } else { v }),
            ),
            // Up to 15 bytes fit an i128 exactly; longer ones (keys, hashes) stay bytes.
            Lvar::Binary(n) if (1..16).contains(&n) => {
                RawValue::Int(data::int(&le_bytes(bytes, msb_first)))
            }
            Lvar::Binary(_) | Lvar::Reserved => RawValue::Bytes(bytes.to_vec()),
        },
    }
}

/// A date/time by the length of an integer data field: G (2), J (3), F (4), I (6).
fn date_value(payload: &Payload<'_>, msb_first: bool) -> Option<Value> {
    let Payload::Fixed { code, bytes } = *payload else {
        return None;
    };
    if !matches!(code, 0x2 | 0x3 | 0x4 | 0x6) {
        return None;
    }
    let le = le_bytes(bytes, msb_first);
    let result = match le.as_slice() {
        [a, b] => data::date_g([*a, *b]),
        [a, b, c] => data::time_j([*a, *b, *c]),
        [a, b, c, d] => data::date_time_f([*a, *b, *c, *d]),
        [a, b, c, d, e, f] => data::date_time_i([*a, *b, *c, *d, *e, *f]),
        _ => return None,
    };
    Some(match result {
        Ok(s) => Value::Date(s),
        Err(h) => Value::Invalid(h),
    })
}

fn compute_value(payload: &Payload<'_>, how: &Interpretation, msb_first: bool) -> Value {
    if how.kind == Kind::DateTime {
        if let Some(v) = date_value(payload, msb_first) {
            return v;
        }
    }
    let (exact, is_real) = match raw_value(payload, msb_first) {
        RawValue::Int(m) | RawValue::Bcd(Ok(m)) => (
            Decimal {
                mantissa: m,
                exponent: 0,
            },
            false,
        ),
        RawValue::Real(x) => match Decimal::from_f32(x) {
            Some(d) => (d, true),
            // NaN or an infinity: nothing to scale.
            None => return Value::Real(f64::from(x)),
        },
        RawValue::Bcd(Err(digits)) => return Value::Invalid(digits),
        RawValue::Text(s) => return Value::Text(s),
        RawValue::Bytes(b) => return Value::Bytes(b),
    };
    let factor = match how.kind {
        Kind::Number(f) | Kind::Fahrenheit { factor: f, .. } => f,
        // Dates in a non-integer field and unknown codes: the raw number, unscaled.
        Kind::DateTime | Kind::Raw => {
            return finish(exact, is_real);
        }
    };
    let scaled = exact
        .times(i128::from(factor.mantissa), factor.exponent)
        .and_then(|d| d.times(1, how.shift))
        .and_then(|d| how.offsets.iter().try_fold(d, |d, n| d.plus_pow10(*n)));
    let Some(scaled) = scaled else {
        // Only a 15-byte binary LVAR times a large factor gets here: keep the magnitude.
        let approx = exact.to_f64()
            * factor.mantissa as f64
            * 10f64.powi(factor.exponent.saturating_add(how.shift));
        return Value::Real(approx);
    };
    match how.kind {
        Kind::Fahrenheit { difference, .. } => {
            let f = scaled.to_f64();
            Value::Real(if difference {
                f * 5.0 / 9.0
            } else {
                (f - 32.0) * 5.0 / 9.0
            })
        }
        _ => finish(scaled, is_real),
    }
}

fn finish(d: Decimal, is_real: bool) -> Value {
    if is_real {
        Value::Real(d.to_f64())
    } else {
        Value::Number {
            mantissa: d.mantissa,
            exponent: d.exponent,
        }
    }
}

/// CI `73`: ID (4 BCD), access number, status, medium and units (2 bytes), two 4-byte counters.
/// Status bit 7 set means binary counters (else BCD); bit 6 set means stored values (taken as
/// storage 1). Counter 2 with unit code `3E` is a historic value of counter 1's quantity.
fn fixed(address: u8, ci: u8, data: &[u8]) -> Result<Response, DecodeError> {
    let bytes: [u8; 16] = data
        .try_into()
        .map_err(|_| DecodeError::FixedLength(data.len()))?;
    let [
        i0,
        i1,
        i2,
        i3,
        access_number,
        status,
        u0,
        u1,
        a0,
        a1,
        a2,
        a3,
        b0,
        b1,
        b2,
        b3,
    ] = bytes;
    let id_raw = [i0, i1, i2, i3];
    // The 4-bit medium is spread over the top two bits of both unit bytes.
    let medium = ((u1 & 0xC0) >> 4) | ((u0 & 0xC0) >> 6);
    let header = Header {
        id: data::hex_msb_first(&id_raw),
        id_raw,
        medium,
        access_number,
        status,
        ..empty_header()
    };
    let binary = status & 0x80 != 0;
    let stored = u64::from(status & 0x40 != 0);
    let unit1 = vif::fixed_unit(u0);
    let counter = |index: usize, unit: vif::FixedUnit, historic: bool, raw: [u8; 4]| {
        let meaning = match unit {
            vif::FixedUnit::Meaning(m) => m,
            vif::FixedUnit::Historic => vif::UNKNOWN,
        };
        let payload = Payload::Fixed {
            code: if binary { 0x4 } else { 0xC },
            bytes: &raw,
        };
        let how = Interpretation {
            quantity: meaning.quantity.to_owned(),
            unit: meaning.unit.to_owned(),
            kind: meaning.kind,
            shift: 0,
            offsets: Vec::new(),
            modifiers: Vec::new(),
        };
        Record {
            index,
            function: Function::Instantaneous,
            storage: if historic { 1 } else { stored },
            tariff: 0,
            subunit: 0,
            value: compute_value(&payload, &how, false),
            quantity: how.quantity,
            unit: how.unit,
            modifiers: Vec::new(),
            dif_vif: Vec::new(),
            data: raw.to_vec(),
        }
    };
    let (unit2, historic) = match vif::fixed_unit(u1) {
        vif::FixedUnit::Historic => (unit1, true),
        other => (other, false),
    };
    let records = vec![
        counter(0, unit1, false, [a0, a1, a2, a3]),
        counter(1, unit2, historic, [b0, b1, b2, b3]),
    ];
    Ok(Response::Data(Telegram {
        address,
        ci,
        header,
        records,
        more_records_follow: false,
        manufacturer_data: Vec::new(),
    }))
}
