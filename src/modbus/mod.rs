//! Modbus vocabulary shared by the configuration, the profiles, the request planner and the
//! decoder: register tables, data types and word orders. Plain data, no IO.

pub mod decode;
pub mod plan;
pub mod poll;
pub mod rtu;
pub mod tcp;

use std::fmt;

/// The register table a value lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Table {
    /// Holding registers, read with function code 3 (the default).
    Holding,
    /// Input registers, read with function code 4.
    Input,
}

impl Table {
    pub const NAMES: &'static [&'static str] = &["holding", "input"];

    pub fn parse(s: &str) -> Option<Table> {
        match s {
            "holding" => Some(Table::Holding),
            "input" => Some(Table::Input),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Table::Holding => "holding",
            Table::Input => "input",
        }
    }

    /// The Modbus function code that reads this table.
    pub fn function_code(self) -> u8 {
        match self {
            Table::Holding => 3,
            Table::Input => 4,
        }
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How the registers of one value are interpreted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DataType {
    U16,
    I16,
    U32,
    I32,
    U64,
    I64,
    F32,
    F64,
}

impl DataType {
    /// Every type, in the order of [`DataType::NAMES`].
    pub const ALL: [DataType; 8] = [
        DataType::U16,
        DataType::I16,
        DataType::U32,
        DataType::I32,
        DataType::U64,
        DataType::I64,
        DataType::F32,
        DataType::F64,
    ];

    pub const NAMES: &'static [&'static str] =
        &["u16", "i16", "u32", "i32", "u64", "i64", "f32", "f64"];

    pub fn parse(s: &str) -> Option<DataType> {
        Some(match s {
            "u16" => DataType::U16,
            "i16" => DataType::I16,
            "u32" => DataType::U32,
            "i32" => DataType::I32,
            "u64" => DataType::U64,
            "i64" => DataType::I64,
            "f32" => DataType::F32,
            "f64" => DataType::F64,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            DataType::U16 => "u16",
            DataType::I16 => "i16",
            DataType::U32 => "u32",
            DataType::I32 => "i32",
            DataType::U64 => "u64",
            DataType::I64 => "i64",
            DataType::F32 => "f32",
            DataType::F64 => "f64",
        }
    }

    /// Number of 16-bit registers the value occupies.
    pub fn words(self) -> u16 {
        match self {
            DataType::U16 | DataType::I16 => 1,
            DataType::U32 | DataType::I32 | DataType::F32 => 2,
            DataType::U64 | DataType::I64 | DataType::F64 => 4,
        }
    }

    /// Significant digits kept after conversion (SPEC §3 "Numbers"): 7 for `f32`, 15 otherwise.
    pub fn significant_digits(self) -> u32 {
        match self {
            DataType::F32 => 7,
            _ => 15,
        }
    }
}

impl fmt::Display for DataType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Byte and word order of a multi-register value, defined for any width.
///
/// `ABCD` is big-endian; `CDAB` puts the 16-bit words low first (each word big-endian);
/// `BADC` swaps the bytes inside each word; `DCBA` is little-endian.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WordOrder {
    Abcd,
    Cdab,
    Badc,
    Dcba,
}

impl WordOrder {
    pub const NAMES: &'static [&'static str] = &["ABCD", "CDAB", "BADC", "DCBA"];
    pub const ALL: [WordOrder; 4] = [
        WordOrder::Abcd,
        WordOrder::Cdab,
        WordOrder::Badc,
        WordOrder::Dcba,
    ];

    pub fn parse(s: &str) -> Option<WordOrder> {
        match s {
            "ABCD" => Some(WordOrder::Abcd),
            "CDAB" => Some(WordOrder::Cdab),
            "BADC" => Some(WordOrder::Badc),
            "DCBA" => Some(WordOrder::Dcba),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            WordOrder::Abcd => "ABCD",
            WordOrder::Cdab => "CDAB",
            WordOrder::Badc => "BADC",
            WordOrder::Dcba => "DCBA",
        }
    }
}

impl fmt::Display for WordOrder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where one value lives and how to read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RegisterSpec {
    pub table: Table,
    /// PDU address (0-based, as sent on the wire).
    pub address: u16,
    pub data_type: DataType,
    pub order: WordOrder,
}

impl RegisterSpec {
    /// One past the last register of the value (as u32, so 0xFFFF + 2 does not overflow).
    pub fn end(&self) -> u32 {
        u32::from(self.address) + u32::from(self.data_type.words())
    }
}

/// The protocol limit on registers per FC3/FC4 request.
pub const MAX_REGISTERS_PER_REQUEST: u16 = 125;
/// Default `max_gap` when neither the meter nor its profile sets one.
pub const DEFAULT_MAX_GAP: u16 = 8;
