//! Units and numbers (SPEC §3 "Numbers"): conversion between compatible units, the f32
//! shortest-decimal rule and rounding. Pure: no IO, no clock.
//! STUB: interface only, to be implemented.

use std::fmt;

/// Whether a temperature is absolute (°C ↔ K adds 273.15) or a difference (never offset).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Temperature {
    Absolute,
    Difference,
}

/// Why two units cannot be converted, or a unit is unknown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnitError {
    Unknown(String),
    Incompatible { from: String, to: String },
}

impl fmt::Display for UnitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UnitError::Unknown(u) => write!(f, "unknown unit \"{u}\""),
            UnitError::Incompatible { from, to } => write!(
                f,
                "cannot convert \"{from}\" to \"{to}\": they measure different things"
            ),
        }
    }
}

impl std::error::Error for UnitError {}

/// value_in_to = value_in_from × factor + offset
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Conversion {
    pub factor: f64,
    pub offset: f64,
}

impl Conversion {
    pub const IDENTITY: Conversion = Conversion {
        factor: 1.0,
        offset: 0.0,
    };

    pub fn between(
        _from: &str,
        _to: &str,
        _temperature: Temperature,
    ) -> Result<Conversion, UnitError> {
        todo!()
    }

    pub fn apply(&self, v: f64) -> f64 {
        v * self.factor + self.offset
    }
}

/// Raw decoded value → the value sent.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Transform {
    pub source_scale: f64,
    pub conversion: Conversion,
    pub scale: f64,
    pub offset: f64,
    pub significant_digits: u32,
    pub decimals: Option<u32>,
}

impl Transform {
    pub fn apply(&self, _raw: f64) -> f64 {
        todo!()
    }
}

pub fn f32_shortest(_x: f32) -> f64 {
    todo!()
}
