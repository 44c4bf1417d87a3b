//! Units and numbers (SPEC §3 "Numbers"): which unit strings we know, conversion between units of
//! the same dimension, the f32 shortest-decimal rule, and the rounding applied to every value
//! before it is queued. Everything here is a pure function of its arguments: no IO, no clock, no
//! logging, and no panic on any input (NaN, infinities, subnormals, unknown or empty unit
//! strings). It must not decide policy: whether an unknown unit or an incompatible pair is a
//! config error is the caller's call; this module only reports it.
//!
//! Numbers follow one idea throughout: an `f64` stands for its shortest round-trip decimal (what
//! `Display` and `serde_json` print), and rounding works on those decimal digits, half away from
//! zero. So a value that prints as `1.005` rounds to `1.01` at two decimals, even though the
//! binary number behind it lies a hair below 1.005.

use thiserror::Error;

/// Significant digits kept for values decoded from an `f32` register (SPEC §3).
pub const F32_SIGNIFICANT_DIGITS: u32 = 7;
/// Significant digits kept for every other source (SPEC §3).
pub const SIGNIFICANT_DIGITS: u32 = 15;

/// Whether a temperature is absolute (°C ↔ K adds 273.15) or a difference (never offset).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Temperature {
    Absolute,
    Difference,
}

/// Why two units cannot be converted, or a unit is unknown.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum UnitError {
    #[error("unknown unit \"{0}\"")]
    Unknown(String),
    #[error(
        "cannot convert \"{from}\" ({}) to \"{to}\" ({}): they measure different things",
        dimension_label(.from),
        dimension_label(.to)
    )]
    Incompatible { from: String, to: String },
}

fn dimension_label(unit: &str) -> &'static str {
    dimension_name(unit).unwrap_or("unknown")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dimension {
    Energy,
    Power,
    ReactiveEnergy,
    ReactivePower,
    ApparentEnergy,
    ApparentPower,
    Volume,
    VolumeFlow,
    Mass,
    MassFlow,
    Temperature,
    Voltage,
    Current,
    Frequency,
    Pressure,
    Time,
    Ratio,
}

impl Dimension {
    fn name(self) -> &'static str {
        match self {
            Dimension::Energy => "energy",
            Dimension::Power => "power",
            Dimension::ReactiveEnergy => "reactive energy",
            Dimension::ReactivePower => "reactive power",
            Dimension::ApparentEnergy => "apparent energy",
            Dimension::ApparentPower => "apparent power",
            Dimension::Volume => "volume",
            Dimension::VolumeFlow => "volume flow",
            Dimension::Mass => "mass",
            Dimension::MassFlow => "mass flow",
            Dimension::Temperature => "temperature",
            Dimension::Voltage => "voltage",
            Dimension::Current => "current",
            Dimension::Frequency => "frequency",
            Dimension::Pressure => "pressure",
            Dimension::Time => "time",
            Dimension::Ratio => "ratio",
        }
    }
}

/// A known unit: `base = value × factor + offset`.
#[derive(Debug, Clone, Copy)]
struct Unit {
    name: &'static str,
    dimension: Dimension,
    factor: f64,
    offset: f64,
}

const fn unit(name: &'static str, dimension: Dimension, factor: f64) -> Unit {
    Unit {
        name,
        dimension,
        factor,
        offset: 0.0,
    }
}

use Dimension as D;

/// Every unit we convert. Each dimension's base is its smallest unit here, so every factor is an
/// integer below 2^53 and therefore exact; a conversion factor is then one correctly rounded
/// division. Names are case-sensitive (`mWh` is not `MWh`).
const UNITS: &[Unit] = &[
    // Energy, base J (1 Wh = 3600 J).
    unit("J", D::Energy, 1.0),
    unit("kJ", D::Energy, 1e3),
    unit("MJ", D::Energy, 1e6),
    unit("GJ", D::Energy, 1e9),
    unit("Wh", D::Energy, 3.6e3),
    unit("kWh", D::Energy, 3.6e6),
    unit("MWh", D::Energy, 3.6e9),
    unit("GWh", D::Energy, 3.6e12),
    // Power, base J/h (1 W = 3600 J/h).
    unit("J/h", D::Power, 1.0),
    unit("kJ/h", D::Power, 1e3),
    unit("MJ/h", D::Power, 1e6),
    unit("GJ/h", D::Power, 1e9),
    unit("W", D::Power, 3.6e3),
    unit("kW", D::Power, 3.6e6),
    unit("MW", D::Power, 3.6e9),
    unit("GW", D::Power, 3.6e12),
    // Reactive and apparent; meter manuals also write "VAr".
    unit("varh", D::ReactiveEnergy, 1.0),
    unit("kvarh", D::ReactiveEnergy, 1e3),
    unit("Mvarh", D::ReactiveEnergy, 1e6),
    unit("VArh", D::ReactiveEnergy, 1.0),
    unit("kVArh", D::ReactiveEnergy, 1e3),
    unit("MVArh", D::ReactiveEnergy, 1e6),
    unit("var", D::ReactivePower, 1.0),
    unit("kvar", D::ReactivePower, 1e3),
    unit("Mvar", D::ReactivePower, 1e6),
    unit("VAr", D::ReactivePower, 1.0),
    unit("kVAr", D::ReactivePower, 1e3),
    unit("MVAr", D::ReactivePower, 1e6),
    unit("VAh", D::ApparentEnergy, 1.0),
    unit("kVAh", D::ApparentEnergy, 1e3),
    unit("MVAh", D::ApparentEnergy, 1e6),
    unit("VA", D::ApparentPower, 1.0),
    unit("kVA", D::ApparentPower, 1e3),
    unit("MVA", D::ApparentPower, 1e6),
    // Volume, base ml.
    unit("ml", D::Volume, 1.0),
    unit("mL", D::Volume, 1.0),
    unit("l", D::Volume, 1e3),
    unit("L", D::Volume, 1e3),
    unit("m3", D::Volume, 1e6),
    unit("m³", D::Volume, 1e6),
    // Volume flow, base ml/h.
    unit("l/h", D::VolumeFlow, 1e3),
    unit("L/h", D::VolumeFlow, 1e3),
    unit("m3/h", D::VolumeFlow, 1e6),
    unit("m³/h", D::VolumeFlow, 1e6),
    unit("l/min", D::VolumeFlow, 6e4),
    unit("L/min", D::VolumeFlow, 6e4),
    unit("m3/min", D::VolumeFlow, 6e7),
    unit("m³/min", D::VolumeFlow, 6e7),
    unit("l/s", D::VolumeFlow, 3.6e6),
    unit("L/s", D::VolumeFlow, 3.6e6),
    unit("m3/s", D::VolumeFlow, 3.6e9),
    unit("m³/s", D::VolumeFlow, 3.6e9),
    // Mass, base g; mass flow, base g/h.
    unit("g", D::Mass, 1.0),
    unit("kg", D::Mass, 1e3),
    unit("t", D::Mass, 1e6),
    unit("kg/h", D::MassFlow, 1e3),
    unit("t/h", D::MassFlow, 1e6),
    unit("kg/min", D::MassFlow, 6e4),
    unit("kg/s", D::MassFlow, 3.6e6),
    // Temperature, base K. "C" is Celsius here, never coulomb: meter manuals write it that way.
    unit("K", D::Temperature, 1.0),
    Unit {
        name: "°C",
        dimension: D::Temperature,
        factor: 1.0,
        offset: 273.15,
    },
    Unit {
        name: "℃",
        dimension: D::Temperature,
        factor: 1.0,
        offset: 273.15,
    },
    Unit {
        name: "C",
        dimension: D::Temperature,
        factor: 1.0,
        offset: 273.15,
    },
    Unit {
        name: "degC",
        dimension: D::Temperature,
        factor: 1.0,
        offset: 273.15,
    },
    // Electrical, base milli-unit.
    unit("mV", D::Voltage, 1.0),
    unit("V", D::Voltage, 1e3),
    unit("kV", D::Voltage, 1e6),
    unit("mA", D::Current, 1.0),
    unit("A", D::Current, 1e3),
    unit("kA", D::Current, 1e6),
    unit("mHz", D::Frequency, 1.0),
    unit("Hz", D::Frequency, 1e3),
    unit("kHz", D::Frequency, 1e6),
    // Pressure, base Pa.
    unit("Pa", D::Pressure, 1.0),
    unit("hPa", D::Pressure, 1e2),
    unit("kPa", D::Pressure, 1e3),
    unit("MPa", D::Pressure, 1e6),
    unit("mbar", D::Pressure, 1e2),
    unit("bar", D::Pressure, 1e5),
    // Time, base s.
    unit("s", D::Time, 1.0),
    unit("min", D::Time, 60.0),
    unit("h", D::Time, 3600.0),
    unit("d", D::Time, 86400.0),
    // Ratios (power factor and the like), base %: "", "-" and "1" all mean a bare number.
    unit("%", D::Ratio, 1.0),
    unit("", D::Ratio, 100.0),
    unit("-", D::Ratio, 100.0),
    unit("1", D::Ratio, 100.0),
];

fn lookup(name: &str) -> Option<&'static Unit> {
    UNITS.iter().find(|u| u.name == name)
}

/// Whether `unit` is one this module can convert.
pub fn is_known(unit: &str) -> bool {
    lookup(unit).is_some()
}

/// What a known unit measures ("energy", "power", "volume", "temperature", …), for messages.
pub fn dimension_name(unit: &str) -> Option<&'static str> {
    lookup(unit).map(|u| u.dimension.name())
}

/// Whether a value in `from` can be sent as `to` (see [`Conversion::between`]).
pub fn compatible(from: &str, to: &str) -> bool {
    Conversion::between(from, to, Temperature::Difference).is_ok()
}

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

    /// The conversion from one unit to another of the same dimension.
    ///
    /// Identical strings always give [`Conversion::IDENTITY`], even when the unit is unknown, so
    /// a user can send a unit we have never heard of (`"%RH"`, `"ppm"`) unchanged. Otherwise both
    /// units must be known ([`UnitError::Unknown`] names the first that is not) and measure the
    /// same thing ([`UnitError::Incompatible`]). `temperature` only matters between °C and K:
    /// a difference of 5 °C is 5 K.
    pub fn between(
        from: &str,
        to: &str,
        temperature: Temperature,
    ) -> Result<Conversion, UnitError> {
        if from == to {
            return Ok(Conversion::IDENTITY);
        }
        let a = lookup(from).ok_or_else(|| UnitError::Unknown(from.to_owned()))?;
        let b = lookup(to).ok_or_else(|| UnitError::Unknown(to.to_owned()))?;
        if a.dimension != b.dimension {
            return Err(UnitError::Incompatible {
                from: from.to_owned(),
                to: to.to_owned(),
            });
        }
        let offset = match temperature {
            Temperature::Absolute => (a.offset - b.offset) / b.factor,
            Temperature::Difference => 0.0,
        };
        Ok(Conversion {
            factor: a.factor / b.factor,
            offset,
        })
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
    /// Changes nothing but the rounding to `significant_digits`.
    pub fn identity(significant_digits: u32) -> Transform {
        Transform {
            source_scale: 1.0,
            conversion: Conversion::IDENTITY,
            scale: 1.0,
            offset: 0.0,
            significant_digits,
            decimals: None,
        }
    }

    /// raw × source_scale, converted, × scale + offset, rounded to `significant_digits`, then to
    /// `decimals` if set. NaN and infinities pass through unchanged for the queue to dead-letter;
    /// a zero result is always +0.
    pub fn apply(&self, raw: f64) -> f64 {
        let v = raw * self.source_scale;
        let v = self.conversion.apply(v);
        let v = v * self.scale + self.offset;
        let v = round_significant(v, self.significant_digits);
        match self.decimals {
            Some(d) => round_decimals(v, d),
            None => v,
        }
    }
}

/// The f64 denoted by the shortest decimal that reads back as `x` (`230.1f32` → `230.1`, not
/// `230.100006103515625`). NaN and infinities map to themselves.
pub fn f32_shortest(x: f32) -> f64 {
    if !x.is_finite() {
        return f64::from(x);
    }
    // Rust's float formatting without a precision prints exactly the shortest round-trip digits.
    format!("{x:e}").parse().unwrap_or(f64::from(x))
}

/// `x` rounded to `digits` significant digits (clamped to 1..=17), half away from zero on its
/// shortest decimal. Non-finite values pass through; zero becomes +0. A finite value whose
/// rounding would overflow (`f64::MAX` to one digit) is returned unchanged rather than made
/// infinite.
pub fn round_significant(x: f64, digits: u32) -> f64 {
    let digits = digits.clamp(1, 17);
    round_with(x, |_| i64::from(digits))
}

/// `x` rounded to `decimals` places after the point, half away from zero on its shortest
/// decimal. No clamp is needed: places beyond the digits `x` has change nothing. Non-finite
/// values pass through; zero (and anything that rounds to zero) becomes +0.
pub fn round_decimals(x: f64, decimals: u32) -> f64 {
    // The digit at position i (0-based) has place value 10^(exponent − i); keep places ≥ 10^−d.
    round_with(x, |d| i64::from(d.exponent) + i64::from(decimals) + 1)
}

fn round_with(x: f64, keep: impl FnOnce(&Decimal) -> i64) -> f64 {
    if !x.is_finite() {
        return x;
    }
    if x == 0.0 {
        return 0.0;
    }
    let Some(decimal) = Decimal::shortest(x) else {
        return x;
    };
    let keep = keep(&decimal);
    let Some(rounded) = decimal.round_to(keep) else {
        return 0.0;
    };
    match rounded.to_f64() {
        // Rounded digits are never all zero, but an underflow must still not yield -0.
        Some(y) if y.is_finite() => {
            if y == 0.0 {
                0.0
            } else {
                y
            }
        }
        _ => x,
    }
}

/// A finite non-zero number as decimal digits: ±d₀.d₁d₂… × 10^exponent, d₀ ≠ 0.
#[derive(Debug)]
struct Decimal {
    negative: bool,
    /// ASCII digits.
    digits: Vec<u8>,
    exponent: i32,
}

impl Decimal {
    fn shortest(x: f64) -> Option<Decimal> {
        let text = format!("{:e}", x.abs());
        let (mantissa, exponent) = text.split_once('e')?;
        let exponent = exponent.parse().ok()?;
        let digits: Vec<u8> = mantissa.bytes().filter(|&b| b != b'.').collect();
        if !digits.iter().all(u8::is_ascii_digit) || digits.first().is_none_or(|&d| d == b'0') {
            return None;
        }
        Some(Decimal {
            negative: x.is_sign_negative(),
            digits,
            exponent,
        })
    }

    /// Keeps the first `keep` digits, rounding half away from zero; `None` when the number
    /// rounds to zero.
    fn round_to(mut self, keep: i64) -> Option<Decimal> {
        if keep < 0 {
            return None;
        }
        // More digits than any usize can count (32-bit targets): nothing is dropped.
        let Ok(keep) = usize::try_from(keep) else {
            return Some(self);
        };
        let Some(&first_dropped) = self.digits.get(keep) else {
            return Some(self);
        };
        self.digits.truncate(keep);
        if first_dropped >= b'5' {
            let mut carry = true;
            for d in self.digits.iter_mut().rev() {
                if *d == b'9' {
                    *d = b'0';
                } else {
                    *d += 1;
                    carry = false;
                    break;
                }
            }
            if carry {
                // 9.99 → 10.0: the trailing zeros keep the value, the exponent moves.
                self.digits.insert(0, b'1');
                self.exponent += 1;
            }
        }
        if self.digits.is_empty() {
            return None;
        }
        Some(self)
    }

    fn to_f64(&self) -> Option<f64> {
        let (first, rest) = self.digits.split_first()?;
        let mut text = String::with_capacity(self.digits.len() + 8);
        if self.negative {
            text.push('-');
        }
        text.push(char::from(*first));
        if !rest.is_empty() {
            text.push('.');
            text.extend(rest.iter().map(|&d| char::from(d)));
        }
        text.push('e');
        text.push_str(&self.exponent.to_string());
        text.parse().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn check_conversion(from: &str, to: &str, temperature: Temperature, value: f64, want: f64) {
        let conversion = Conversion::between(from, to, temperature)
            .unwrap_or_else(|e| panic!("{from} → {to}: {e}"));
        let got = Transform {
            conversion,
            ..Transform::identity(SIGNIFICANT_DIGITS)
        }
        .apply(value);
        assert_eq!(got, want, "{value} {from} → {to}");
    }

    #[test]
    fn conversions() {
        use Temperature::{Absolute, Difference};
        let table: &[(&str, &str, Temperature, f64, f64)] = &[
            ("MWh", "kWh", Absolute, 1.0, 1000.0),
            ("kWh", "MWh", Absolute, 1234.5, 1.2345),
            ("Wh", "kWh", Absolute, 37_351_000.0, 37_351.0),
            ("GJ", "kWh", Absolute, 1.0, 277.777777777778),
            ("kWh", "GJ", Absolute, 277.777777777778, 1.0),
            ("kWh", "MJ", Absolute, 1.0, 3.6),
            ("GWh", "J", Absolute, 1.0, 3.6e12),
            ("J/h", "W", Absolute, 3600.0, 1.0),
            ("W", "J/h", Absolute, 1.0, 3600.0),
            ("GJ/h", "MW", Absolute, 3.6, 1.0),
            ("kW", "W", Absolute, 0.2301, 230.1),
            ("kvarh", "varh", Absolute, 1.5, 1500.0),
            ("kVArh", "kvarh", Absolute, 2.0, 2.0),
            ("Mvar", "kvar", Absolute, 0.25, 250.0),
            ("VAh", "kVAh", Absolute, 12.0, 0.012),
            ("kVA", "VA", Absolute, 3.3, 3300.0),
            ("l", "m3", Absolute, 1000.0, 1.0),
            ("L", "m³", Absolute, 250.0, 0.25),
            ("m³", "m3", Absolute, 7.0, 7.0),
            ("ml", "l", Absolute, 5.0, 0.005),
            ("l/h", "m3/h", Absolute, 1500.0, 1.5),
            ("m3/h", "l/s", Absolute, 3.6, 1.0),
            ("m³/min", "m3/h", Absolute, 1.0, 60.0),
            ("m3/s", "l/min", Absolute, 0.001, 60.0),
            ("kg", "t", Absolute, 1500.0, 1.5),
            ("t/h", "kg/s", Absolute, 3.6, 1.0),
            ("°C", "K", Absolute, 21.5, 294.65),
            ("K", "°C", Absolute, 294.65, 21.5),
            ("C", "K", Absolute, -273.15, 0.0),
            ("degC", "°C", Absolute, 21.5, 21.5),
            ("℃", "K", Absolute, 0.0, 273.15),
            ("°C", "K", Difference, 5.0, 5.0),
            ("K", "degC", Difference, 5.0, 5.0),
            ("kV", "V", Absolute, 0.4, 400.0),
            ("mA", "A", Absolute, 250.0, 0.25),
            ("kHz", "Hz", Absolute, 0.05, 50.0),
            ("mHz", "Hz", Absolute, 49_987.0, 49.987),
            ("bar", "kPa", Absolute, 1.5, 150.0),
            ("mbar", "hPa", Absolute, 1013.25, 1013.25),
            ("MPa", "bar", Absolute, 1.6, 16.0),
            ("h", "s", Absolute, 2.0, 7200.0),
            ("d", "h", Absolute, 1.5, 36.0),
            ("min", "h", Absolute, 90.0, 1.5),
            ("", "%", Absolute, 0.95, 95.0),
            ("%", "1", Absolute, 95.0, 0.95),
            ("-", "", Absolute, 0.5, 0.5),
        ];
        for &(from, to, temperature, value, want) in table {
            check_conversion(from, to, temperature, value, want);
        }
    }

    #[test]
    fn identical_units_are_identity_even_when_unknown() {
        for unit in ["kWh", "°C", "", "%RH", "ppm", "kwh", "furlongs/fortnight"] {
            for temperature in [Temperature::Absolute, Temperature::Difference] {
                assert_eq!(
                    Conversion::between(unit, unit, temperature),
                    Ok(Conversion::IDENTITY),
                    "{unit}"
                );
            }
        }
    }

    #[test]
    fn incompatible_pairs() {
        for (from, to) in [
            ("kWh", "m3"),
            ("W", "kWh"),
            ("°C", "kWh"),
            ("kvarh", "kWh"),
            ("kVA", "kW"),
            ("m3", "m3/h"),
            ("kg", "l"),
            ("%", "°C"),
            ("bar", "V"),
            ("h", "Hz"),
        ] {
            assert_eq!(
                Conversion::between(from, to, Temperature::Absolute),
                Err(UnitError::Incompatible {
                    from: from.into(),
                    to: to.into()
                }),
                "{from} → {to}"
            );
            assert!(!compatible(from, to));
        }
        let message = Conversion::between("kWh", "m3", Temperature::Absolute)
            .expect_err("energy is not volume")
            .to_string();
        assert_eq!(
            message,
            "cannot convert \"kWh\" (energy) to \"m3\" (volume): they measure different things"
        );
    }

    #[test]
    fn unknown_units() {
        // Case matters: "mWh" is not "MWh", "kwh" is not "kWh".
        for (from, to, unknown) in [
            ("mWh", "kWh", "mWh"),
            ("kWh", "kwh", "kwh"),
            ("KWH", "Wh", "KWH"),
            ("kWh ", "kWh", "kWh "),
            ("%RH", "%", "%RH"),
            ("foo", "bar_", "foo"),
        ] {
            assert_eq!(
                Conversion::between(from, to, Temperature::Absolute),
                Err(UnitError::Unknown(unknown.into())),
                "{from} → {to}"
            );
        }
        assert_eq!(
            UnitError::Unknown("kwh".into()).to_string(),
            "unknown unit \"kwh\""
        );
        assert!(is_known("MWh"));
        assert!(!is_known("mWh"));
        assert!(is_known(""));
    }

    #[test]
    fn dimension_names() {
        for (unit, name) in [
            ("kWh", Some("energy")),
            ("J/h", Some("power")),
            ("kvarh", Some("reactive energy")),
            ("kVA", Some("apparent power")),
            ("m³", Some("volume")),
            ("l/min", Some("volume flow")),
            ("t/h", Some("mass flow")),
            ("K", Some("temperature")),
            ("%", Some("ratio")),
            ("d", Some("time")),
            ("ppm", None),
        ] {
            assert_eq!(dimension_name(unit), name, "{unit}");
        }
    }

    #[test]
    fn unit_names_are_unique() {
        for (i, a) in UNITS.iter().enumerate() {
            for b in &UNITS[i + 1..] {
                assert_ne!(a.name, b.name);
            }
        }
    }

    #[test]
    fn f32_shortest_takes_the_printed_decimal() {
        assert_eq!(f32_shortest(230.1), 230.1);
        assert_eq!(f64::from(230.1f32), 230.10000610351562);
        assert_eq!(f32_shortest(0.1), 0.1);
        assert_eq!(f32_shortest(-49.99), -49.99);
        assert_eq!(f32_shortest(f32::MAX), 3.4028235e38);
        assert_eq!(f32_shortest(f32::MIN_POSITIVE / 8.0), 1.469368e-39);
        assert_eq!(f32_shortest(1e-45), 1e-45);
        assert_eq!(f32_shortest(0.0), 0.0);
        assert!(f32_shortest(f32::NAN).is_nan());
        assert_eq!(f32_shortest(f32::INFINITY), f64::INFINITY);
        assert_eq!(f32_shortest(f32::NEG_INFINITY), f64::NEG_INFINITY);
    }

    #[test]
    fn f32_watts_sent_as_kilowatts() {
        let transform = Transform {
            conversion: Conversion::between("W", "kW", Temperature::Absolute).expect("W → kW"),
            ..Transform::identity(F32_SIGNIFICANT_DIGITS)
        };
        let sent = transform.apply(f32_shortest(230.1));
        assert_eq!(sent, 0.2301);
        assert_eq!(sent.to_string(), "0.2301");
        assert_eq!(
            serde_json::to_string(&sent).expect("a finite f64 serializes"),
            "0.2301"
        );
        // Taken at its binary value, the register would carry noise into the product.
        let naive = f64::from(230.1f32) * transform.conversion.factor;
        assert_eq!(naive.to_string(), "0.23010000610351564");
    }

    #[test]
    fn source_scale_of_an_integer_counter() {
        let transform = Transform {
            source_scale: 0.01,
            ..Transform::identity(SIGNIFICANT_DIGITS)
        };
        assert_eq!(transform.apply(12345.0).to_string(), "123.45");
        assert_eq!((12346.0 * 0.01).to_string(), "123.46000000000001");
        assert_eq!(transform.apply(12346.0).to_string(), "123.46");
    }

    #[test]
    fn scale_offset_and_decimals() {
        let transform = Transform {
            source_scale: 0.001,
            conversion: Conversion::between("kWh", "MWh", Temperature::Absolute)
                .expect("kWh → MWh"),
            scale: 2.0,
            offset: 10.0,
            significant_digits: SIGNIFICANT_DIGITS,
            decimals: Some(2),
        };
        // 12345 × 0.001 kWh = 12.345 kWh = 0.012345 MWh; × 2 + 10 = 10.02469 → 10.02
        assert_eq!(transform.apply(12345.0), 10.02);
    }

    #[test]
    fn decimals_round_what_is_printed_half_away_from_zero() {
        // 1.005 and 12.345 sit just below their decimals in binary; we round the decimal.
        assert_eq!(round_decimals(1.005, 2), 1.01);
        assert_eq!(round_decimals(-1.005, 2), -1.01);
        assert_eq!(round_decimals(0.5, 0), 1.0);
        assert_eq!(round_decimals(2.5, 0), 3.0);
        assert_eq!(round_decimals(-2.5, 0), -3.0);
        assert_eq!(round_decimals(0.125, 2), 0.13);
        assert_eq!(round_decimals(9.995, 2), 10.0);
        assert_eq!(round_decimals(1234.5678, 0), 1235.0);
        assert_eq!(round_decimals(0.4, 0), 0.0);
        assert_eq!(round_decimals(0.0004, 3), 0.0);
        assert_eq!(round_decimals(0.0005, 3), 0.001);
        assert_eq!(round_decimals(123.45, 15), 123.45);
        assert_eq!(round_decimals(1.2345e-18, 20), 1.23e-18);
        assert_eq!(round_decimals(7.0, u32::MAX), 7.0);
        let transform = Transform {
            source_scale: 0.001,
            decimals: Some(2),
            ..Transform::identity(SIGNIFICANT_DIGITS)
        };
        assert_eq!(transform.apply(12345.0), 12.35);
    }

    #[test]
    fn significant_digits() {
        assert_eq!(round_significant(0.23010000000000003, 7), 0.2301);
        assert_eq!(round_significant(277.77777777777777, 15), 277.777777777778);
        assert_eq!(round_significant(123456789.0, 3), 123000000.0);
        assert_eq!(round_significant(-0.00098765, 2), -0.00099);
        assert_eq!(round_significant(999.96, 4), 1000.0);
        assert_eq!(round_significant(0.15, 1), 0.2);
        assert_eq!(round_significant(42.0, 0), 40.0);
        assert_eq!(round_significant(0.1 + 0.2, 17), 0.1 + 0.2);
        assert_eq!(round_significant(0.1 + 0.2, 15), 0.3);
        assert_eq!(round_significant(5e-324, 1), 5e-324);
        // A tie in the 16th digit, once found by the proptest below.
        assert_eq!(
            round_significant(1.000007194520825e299, 15),
            1.00000719452083e299
        );
        assert_eq!(round_significant(f64::MAX, 1), f64::MAX);
        assert_eq!(round_significant(f64::MAX, 17), f64::MAX);
    }

    #[test]
    fn non_finite_pass_through_and_zero_is_positive() {
        let transform = Transform {
            source_scale: 0.1,
            conversion: Conversion::between("°C", "K", Temperature::Absolute).expect("°C → K"),
            scale: 1.0,
            offset: 0.0,
            significant_digits: 15,
            decimals: Some(1),
        };
        assert!(transform.apply(f64::NAN).is_nan());
        assert_eq!(transform.apply(f64::INFINITY), f64::INFINITY);
        assert_eq!(transform.apply(f64::NEG_INFINITY), f64::NEG_INFINITY);
        assert_eq!(transform.apply(-2731.5).to_bits(), 0.0f64.to_bits());
        let identity = Transform::identity(7);
        assert_eq!(identity.apply(-0.0).to_bits(), 0.0f64.to_bits());
        assert_eq!(round_decimals(-0.0001, 2).to_bits(), 0.0f64.to_bits());
        assert_eq!(round_significant(-0.0, 3).to_bits(), 0.0f64.to_bits());
    }

    fn significant_digit_count(x: f64) -> usize {
        Decimal::shortest(x).map_or(0, |d| d.digits.len())
    }

    proptest! {
        #[test]
        fn round_significant_is_idempotent_and_keeps_sign(
            x in proptest::num::f64::ANY,
            digits in any::<u32>(),
        ) {
            let once = round_significant(x, digits);
            let twice = round_significant(once, digits);
            prop_assert_eq!(once.to_bits(), twice.to_bits());
            if x.is_nan() {
                prop_assert!(once.is_nan());
            } else if once != 0.0 {
                prop_assert_eq!(once.is_sign_negative(), x.is_sign_negative());
            } else {
                prop_assert!(once.is_sign_positive());
            }
        }

        #[test]
        fn round_significant_keeps_that_many_digits_and_stays_close(
            x in -1e300f64..1e300,
            digits in 1u32..=17,
        ) {
            let y = round_significant(x, digits);
            prop_assert!(significant_digit_count(y) <= digits as usize);
            // Half a unit in the last kept place is at most 5 × 10^−digits of |x|; x and y each
            // sit up to half an ulp from the decimals they stand for.
            let bound = (5.0 * 10f64.powi(-(digits as i32)) + 2.0 * f64::EPSILON) * x.abs();
            prop_assert!((y - x).abs() <= bound, "{} → {}", x, y);
        }

        #[test]
        fn round_decimals_is_idempotent_and_keeps_sign(
            x in proptest::num::f64::ANY,
            decimals in any::<u32>(),
        ) {
            let once = round_decimals(x, decimals);
            let twice = round_decimals(once, decimals);
            prop_assert_eq!(once.to_bits(), twice.to_bits());
            if !x.is_nan() && once != 0.0 {
                prop_assert_eq!(once.is_sign_negative(), x.is_sign_negative());
            }
        }

        #[test]
        fn transform_never_panics(
            raw in proptest::num::f64::ANY,
            source_scale in proptest::num::f64::ANY,
            factor in proptest::num::f64::ANY,
            conversion_offset in proptest::num::f64::ANY,
            scale in proptest::num::f64::ANY,
            offset in proptest::num::f64::ANY,
            significant_digits in any::<u32>(),
            decimals in proptest::option::of(any::<u32>()),
        ) {
            let transform = Transform {
                source_scale,
                conversion: Conversion { factor, offset: conversion_offset },
                scale,
                offset,
                significant_digits,
                decimals,
            };
            let sent = transform.apply(raw);
            if sent == 0.0 {
                prop_assert!(sent.is_sign_positive());
            }
        }

        #[test]
        fn conversions_round_trip(value in -1e12f64..1e12) {
            for a in UNITS {
                for b in UNITS.iter().filter(|b| b.dimension == a.dimension) {
                    for temperature in [Temperature::Absolute, Temperature::Difference] {
                        let there = Conversion::between(a.name, b.name, temperature);
                        let back = Conversion::between(b.name, a.name, temperature);
                        let (Ok(there), Ok(back)) = (there, back) else {
                            return Err(TestCaseError::fail(format!("{} ↔ {}", a.name, b.name)));
                        };
                        let again = back.apply(there.apply(value));
                        let tolerance = 1e-12 * (value.abs() + there.offset.abs());
                        prop_assert!(
                            (again - value).abs() <= tolerance,
                            "{} {} → {} → {}: {}", value, a.name, b.name, a.name, again
                        );
                    }
                }
            }
        }
    }
}
