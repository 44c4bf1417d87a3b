//! The M-Bus value-information tables (EN 13757-3 / MBDOC48): what a VIF, a VIFE of the main
//! (`FD`) or alternate (`FB`) extension table, a combinable (orthogonal) VIFE, or a unit code of
//! the legacy fixed data structure means — the quantity name (one of
//! [`MBUS_QUANTITIES`](crate::config::MBUS_QUANTITIES)), the base unit the value is normalized
//! to, and the exact factor (mantissa × 10^exponent) from the raw number to that unit.
//!
//! Tables only: no parsing of bytes beyond one code, no IO, no panics. Codes the tables do not
//! know map to the quantity `"unknown"` (never an error: the record is kept raw). The base units
//! follow libmbus's `.norm.xml` normalization (Wh or J, m3, kg, s, W or J/h, m3/h, kg/h, °C, K,
//! bar, V, A) so fixtures compare directly; durations are in seconds with libmbus's month
//! (2 629 743.83 s) and year (31 556 926 s).

/// An exact multiplier: `mantissa × 10^exponent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Factor {
    pub mantissa: i64,
    pub exponent: i32,
}

impl Factor {
    pub const ONE: Factor = Factor::pow10(0);

    pub const fn pow10(exponent: i32) -> Factor {
        Factor {
            mantissa: 1,
            exponent,
        }
    }
}

/// Seconds in one unit of the 2-bit duration codes (`00` s, `01` min, `10` h, `11` days).
const fn duration(nn: u8) -> Factor {
    let mantissa = match nn & 3 {
        0 => 1,
        1 => 60,
        2 => 3600,
        _ => 86400,
    };
    Factor {
        mantissa,
        exponent: 0,
    }
}

/// libmbus's average month, 2 629 743.83 s.
const MONTH: Factor = Factor {
    mantissa: 262_974_383,
    exponent: -2,
};
/// libmbus's year, 31 556 926 s.
const YEAR: Factor = Factor {
    mantissa: 31_556_926,
    exponent: 0,
};
const HOUR: Factor = duration(2);
const DAY: Factor = duration(3);

/// How the data field of a record is to be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A number: raw × factor, in `unit`.
    Number(Factor),
    /// A date, date-time or time (data types G, F, I, J chosen by the data length).
    DateTime,
    /// A temperature sent in °F × factor, normalized to °C (`difference`: to K, no offset).
    Fahrenheit { factor: Factor, difference: bool },
    /// Not understood: the raw value as the data field codes it, unscaled.
    Raw,
}

/// What a VIF (or VIF + first VIFE for the extension tables) means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meaning {
    pub quantity: &'static str,
    pub unit: &'static str,
    pub kind: Kind,
}

pub const UNKNOWN: Meaning = Meaning {
    quantity: "unknown",
    unit: "",
    kind: Kind::Raw,
};

const fn num(quantity: &'static str, unit: &'static str, factor: Factor) -> Meaning {
    Meaning {
        quantity,
        unit,
        kind: Kind::Number(factor),
    }
}

const fn plain(quantity: &'static str) -> Meaning {
    num(quantity, "", Factor::ONE)
}

const fn date(quantity: &'static str) -> Meaning {
    Meaning {
        quantity,
        unit: "",
        kind: Kind::DateTime,
    }
}

/// `10^(low bits of code − bias)`.
const fn p(code: u8, mask: u8, bias: i32) -> Factor {
    Factor::pow10((code & mask) as i32 - bias)
}

/// The primary VIF table (`code` = VIF without the extension bit). `7B`/`7D` (the extension
/// escapes without their extension bit), `7C` (plain text), `7E` (any VIF) and `7F`
/// (manufacturer specific) are not measurements and come back [`UNKNOWN`]; the record decoder
/// handles the escapes itself.
pub fn primary(code: u8) -> Meaning {
    let c = code & 0x7F;
    match c {
        0x00..=0x07 => num("energy", "Wh", p(c, 7, 3)),
        0x08..=0x0F => num("energy", "J", p(c, 7, 0)),
        0x10..=0x17 => num("volume", "m3", p(c, 7, 6)),
        0x18..=0x1F => num("mass", "kg", p(c, 7, 3)),
        0x20..=0x23 => num("on_time", "s", duration(c)),
        0x24..=0x27 => num("operating_time", "s", duration(c)),
        0x28..=0x2F => num("power", "W", p(c, 7, 3)),
        0x30..=0x37 => num("power", "J/h", p(c, 7, 0)),
        0x38..=0x3F => num("volume_flow", "m3/h", p(c, 7, 6)),
        // m3/min and m3/s, normalized to m3/h: the same quantity as the main volume flow, so a
        // `quantity = "volume_flow"` channel reads a meter whichever of the three it sends.
        0x40..=0x47 => num(
            "volume_flow",
            "m3/h",
            Factor {
                mantissa: 60,
                exponent: (c & 7) as i32 - 7,
            },
        ),
        0x48..=0x4F => num(
            "volume_flow",
            "m3/h",
            Factor {
                mantissa: 3600,
                exponent: (c & 7) as i32 - 9,
            },
        ),
        0x50..=0x57 => num("mass_flow", "kg/h", p(c, 7, 3)),
        0x58..=0x5B => num("flow_temperature", "°C", p(c, 3, 3)),
        0x5C..=0x5F => num("return_temperature", "°C", p(c, 3, 3)),
        0x60..=0x63 => num("temperature_difference", "K", p(c, 3, 3)),
        0x64..=0x67 => num("external_temperature", "°C", p(c, 3, 3)),
        0x68..=0x6B => num("pressure", "bar", p(c, 3, 3)),
        0x6C | 0x6D => date("time_point"),
        0x6E => plain("units_for_hca"),
        0x70..=0x73 => num("averaging_duration", "s", duration(c)),
        0x74..=0x77 => num("actuality_duration", "s", duration(c)),
        0x78 => plain("fabrication_number"),
        0x79 => plain("enhanced_identification"),
        0x7A => plain("bus_address"),
        _ => UNKNOWN,
    }
}

/// The main extension table: the first VIFE after VIF `FD` (extension bit ignored).
pub fn main_extension(code: u8) -> Meaning {
    let c = code & 0x7F;
    match c {
        0x00..=0x03 => num("credit", "", p(c, 3, 3)),
        0x04..=0x07 => num("debit", "", p(c, 3, 3)),
        0x08 => plain("access_number"),
        0x09 => plain("medium"),
        0x0A => plain("manufacturer"),
        0x0B => plain("parameter_set_id"),
        0x0C => plain("model_version"),
        0x0D => plain("hardware_version"),
        0x0E => plain("firmware_version"),
        0x0F => plain("software_version"),
        0x10 => plain("customer_location"),
        0x11 => plain("customer"),
        0x12 => plain("access_code_user"),
        0x13 => plain("access_code_operator"),
        0x14 => plain("access_code_system_operator"),
        0x15 => plain("access_code_developer"),
        0x16 => plain("password"),
        0x17 => plain("error_flags"),
        0x18 => plain("error_mask"),
        0x1A => plain("digital_output"),
        0x1B => plain("digital_input"),
        0x1C => plain("baud_rate"),
        0x1D => plain("response_delay_time"),
        0x1E => plain("retry"),
        0x1F => plain("remote_control"),
        0x20 => plain("first_storage_number"),
        0x21 => plain("last_storage_number"),
        0x22 => plain("storage_block_size"),
        0x24..=0x27 => num("storage_interval", "s", duration(c)),
        0x28 => num("storage_interval", "s", MONTH),
        0x29 => num("storage_interval", "s", YEAR),
        0x2C..=0x2F => num("duration_since_last_readout", "s", duration(c)),
        // Start of tariff: type F or G, told apart by the data field.
        0x30 => date("tariff_start"),
        // nn = 01..11: minutes to days (00 is "start of tariff" above).
        0x31..=0x33 => num("tariff_duration", "s", duration(c)),
        0x34..=0x37 => num("tariff_period", "s", duration(c)),
        0x38 => num("tariff_period", "s", MONTH),
        0x39 => num("tariff_period", "s", YEAR),
        0x3A => plain("dimensionless"),
        0x40..=0x4F => num("voltage", "V", p(c, 0x0F, 9)),
        0x50..=0x5F => num("current", "A", p(c, 0x0F, 12)),
        0x60 => plain("reset_counter"),
        0x61 => plain("cumulation_counter"),
        0x62 => plain("control_signal"),
        0x63 => plain("day_of_week"),
        0x64 => plain("week_number"),
        0x65 => plain("time_point_of_day_change"),
        0x66 => plain("parameter_activation_state"),
        0x67 => plain("special_supplier_information"),
        0x68 => num("duration_since_last_cumulation", "s", HOUR),
        0x69 => num("duration_since_last_cumulation", "s", DAY),
        0x6A => num("duration_since_last_cumulation", "s", MONTH),
        0x6B => num("duration_since_last_cumulation", "s", YEAR),
        0x6C => num("battery_operating_time", "s", HOUR),
        0x6D => num("battery_operating_time", "s", DAY),
        0x6E => num("battery_operating_time", "s", MONTH),
        0x6F => num("battery_operating_time", "s", YEAR),
        0x70 => date("battery_change_time"),
        _ => UNKNOWN,
    }
}

/// US gallon in m³ (exactly 3.785411784 l).
const US_GALLON_M3: i64 = 3_785_411_784;
/// Cubic foot in m³ (exactly 0.028316846592 m³).
const CUBIC_FOOT_M3: i64 = 28_316_846_592;

/// The alternate extension table: the first VIFE after VIF `FB` (extension bit ignored).
/// Entries of MBDOC48 plus the reactive/apparent/frequency/humidity codes of later editions;
/// non-metric volumes are converted exactly to m³, °F temperatures to °C.
pub fn alternate_extension(code: u8) -> Meaning {
    let c = code & 0x7F;
    let f = |mantissa: i64, exponent: i32| Factor { mantissa, exponent };
    match c {
        // MWh: 10^(n−1) MWh = 10^(n+5) Wh.
        0x00..=0x01 => num("energy", "Wh", p(c, 1, -5)),
        // 10^n kvarh / kVAh.
        0x02..=0x03 => num("reactive_energy", "varh", p(c, 1, -3)),
        0x04..=0x05 => num("apparent_energy", "VAh", p(c, 1, -3)),
        // GJ: 10^(n−1) GJ = 10^(n+8) J.
        0x08..=0x09 => num("energy", "J", p(c, 1, -8)),
        // 10^(n+2) m³.
        0x10..=0x11 => num("volume", "m3", p(c, 1, -2)),
        0x14..=0x17 => num("reactive_power", "var", p(c, 3, 0)),
        // 10^(n+2) t = 10^(n+5) kg.
        0x18..=0x19 => num("mass", "kg", p(c, 1, -5)),
        0x1A..=0x1B => num("relative_humidity", "%", p(c, 1, 1)),
        0x20 => num("volume", "m3", f(CUBIC_FOOT_M3, -12)),
        0x21 => num("volume", "m3", f(CUBIC_FOOT_M3, -13)),
        0x22 => num("volume", "m3", f(US_GALLON_M3, -13)),
        0x23 => num("volume", "m3", f(US_GALLON_M3, -12)),
        // US gal/min (0.001 and 1) and US gal/h, as m³/h.
        0x24 => num("volume_flow", "m3/h", f(US_GALLON_M3 * 60, -15)),
        0x25 => num("volume_flow", "m3/h", f(US_GALLON_M3 * 60, -12)),
        0x26 => num("volume_flow", "m3/h", f(US_GALLON_M3, -12)),
        // MW: 10^(n−1) MW = 10^(n+5) W.
        0x28..=0x29 => num("power", "W", p(c, 1, -5)),
        0x2C..=0x2F => num("frequency", "Hz", p(c, 3, 3)),
        // GJ/h: 10^(n+8) J/h.
        0x30..=0x31 => num("power", "J/h", p(c, 1, -8)),
        0x34..=0x37 => num("apparent_power", "VA", p(c, 3, 0)),
        0x58..=0x5B => fahrenheit("flow_temperature", "°C", c, false),
        0x5C..=0x5F => fahrenheit("return_temperature", "°C", c, false),
        0x60..=0x63 => fahrenheit("temperature_difference", "K", c, true),
        0x64..=0x67 => fahrenheit("external_temperature", "°C", c, false),
        0x70..=0x73 => fahrenheit("temperature_limit", "°C", c, false),
        0x74..=0x77 => num("temperature_limit", "°C", p(c, 3, 3)),
        0x78..=0x7F => num("cumulative_max_power", "W", p(c, 7, 3)),
        _ => UNKNOWN,
    }
}

const fn fahrenheit(
    quantity: &'static str,
    unit: &'static str,
    c: u8,
    difference: bool,
) -> Meaning {
    Meaning {
        quantity,
        unit,
        kind: Kind::Fahrenheit {
            factor: p(c, 3, 3),
            difference,
        },
    }
}

/// What a combinable (orthogonal) VIFE does to its record, besides naming a modifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// Only the modifier: the value keeps its quantity, unit and scale.
    Tag,
    /// Multiplicative correction: exponent += n (`70`–`77`: n − 6; `7D`: 3).
    Scale(i32),
    /// Additive correction of 10^n in the unit of the VIF (`78`–`7B`).
    Offset(i32),
    /// The value is a date/time of the named event, not the VIF's quantity.
    Date,
    /// The value is a count (of limit exceeds), without the VIF's unit or scale.
    Count,
    /// The value is a duration of the named event in seconds × factor.
    Duration(Factor),
    /// Non-metric units (BTU, US gal, °F in later editions): the unit is unknown to us.
    NonMetric,
    /// `7F`: the rest of the VIFE chain and the data are manufacturer specific.
    ManufacturerSpecific,
    /// `7C`: the next VIFE comes from the combinable extension table.
    Extension,
    /// A record error code (`00`–`1F`): an annotation that never distinguishes records.
    RecordError,
}

/// The modifier name and effect of a combinable VIFE (extension bit ignored). Names are
/// snake_case; codes without a known meaning are named by their hex value (`vife_0x3e`).
pub fn combinable(code: u8) -> (String, Effect) {
    let c = code & 0x7F;
    let tag = |name: &str| (name.to_owned(), Effect::Tag);
    match c {
        0x00..=0x1F => (record_error_name(c), Effect::RecordError),
        0x20 => tag("per_second"),
        0x21 => tag("per_minute"),
        0x22 => tag("per_hour"),
        0x23 => tag("per_day"),
        0x24 => tag("per_week"),
        0x25 => tag("per_month"),
        0x26 => tag("per_year"),
        0x27 => tag("per_revolution"),
        0x28 => tag("per_input_pulse_channel_0"),
        0x29 => tag("per_input_pulse_channel_1"),
        0x2A => tag("per_output_pulse_channel_0"),
        0x2B => tag("per_output_pulse_channel_1"),
        0x2C => tag("per_litre"),
        0x2D => tag("per_m3"),
        0x2E => tag("per_kg"),
        0x2F => tag("per_kelvin"),
        0x30 => tag("per_kwh"),
        0x31 => tag("per_gj"),
        0x32 => tag("per_kw"),
        0x33 => tag("per_kelvin_litre"),
        0x34 => tag("per_volt"),
        0x35 => tag("per_ampere"),
        0x36 => tag("times_second"),
        0x37 => tag("times_second_per_volt"),
        0x38 => tag("times_second_per_ampere"),
        0x39 => ("start_date_time".to_owned(), Effect::Date),
        0x3A => tag("uncorrected"),
        0x3B => tag("forward_flow"),
        0x3C => tag("backward_flow"),
        0x3D => ("non_metric".to_owned(), Effect::NonMetric),
        0x3E => tag("value_at_base_conditions"),
        0x3F => tag("obis_declaration"),
        0x40 => tag("lower_limit"),
        0x48 => tag("upper_limit"),
        0x41 => ("lower_limit_exceed_count".to_owned(), Effect::Count),
        0x49 => ("upper_limit_exceed_count".to_owned(), Effect::Count),
        // E100 uf1b: u lower/upper, f first/last, b begin/end.
        0x42 | 0x43 | 0x46 | 0x47 | 0x4A | 0x4B | 0x4E | 0x4F => {
            let name = format!(
                "{}_of_{}_{}_limit_exceed",
                if c & 1 == 0 { "begin" } else { "end" },
                if c & 4 == 0 { "first" } else { "last" },
                if c & 8 == 0 { "lower" } else { "upper" },
            );
            (name, Effect::Date)
        }
        // E101 ufnn: duration of the first/last lower/upper limit exceed.
        0x50..=0x5F => {
            let name = format!(
                "duration_of_{}_{}_limit_exceed",
                if c & 4 == 0 { "first" } else { "last" },
                if c & 8 == 0 { "lower" } else { "upper" },
            );
            (name, Effect::Duration(duration(c)))
        }
        // E110 0fnn: duration of the first/last occurrence.
        0x60..=0x67 => {
            let name = format!("duration_of_{}", if c & 4 == 0 { "first" } else { "last" });
            (name, Effect::Duration(duration(c)))
        }
        0x68 => tag("value_during_lower_limit_exceed"),
        0x69 => tag("leakage_values"),
        0x6C => tag("value_during_upper_limit_exceed"),
        0x6D => tag("overflow_values"),
        // E110 1f1b: date (and time) of the begin/end of the first/last occurrence.
        0x6A | 0x6B | 0x6E | 0x6F => {
            let name = format!(
                "{}_of_{}",
                if c & 1 == 0 { "begin" } else { "end" },
                if c & 4 == 0 { "first" } else { "last" },
            );
            (name, Effect::Date)
        }
        0x70..=0x77 => (String::new(), Effect::Scale(i32::from(c & 7) - 6)),
        0x78..=0x7B => (String::new(), Effect::Offset(i32::from(c & 3) - 3)),
        0x7C => (String::new(), Effect::Extension),
        0x7D => (String::new(), Effect::Scale(3)),
        0x7E => tag("future_value"),
        0x7F => (
            "manufacturer_specific".to_owned(),
            Effect::ManufacturerSpecific,
        ),
        _ => (format!("vife_0x{c:02x}"), Effect::Tag),
    }
}

/// The combinable extension table (the VIFE after a `FC`/`7C` combinable VIFE, later editions).
pub fn combinable_extension(code: u8) -> (String, Effect) {
    let c = code & 0x7F;
    let tag = |name: &str| (name.to_owned(), Effect::Tag);
    match c {
        0x01 => tag("at_phase_l1"),
        0x02 => tag("at_phase_l2"),
        0x03 => tag("at_phase_l3"),
        0x04 => tag("at_neutral"),
        0x05 => tag("between_phases_l1_l2"),
        0x06 => tag("between_phases_l2_l3"),
        0x07 => tag("between_phases_l3_l1"),
        0x08 => tag("at_quadrant_1"),
        0x09 => tag("at_quadrant_2"),
        0x0A => tag("at_quadrant_3"),
        0x0B => tag("at_quadrant_4"),
        0x0C => tag("delta_import_export"),
        0x0D => ("non_metric".to_owned(), Effect::NonMetric),
        0x0E => tag("secondary_sensor"),
        0x0F => tag("higher_resolution"),
        0x10 => tag("absolute_accumulation"),
        0x11 => tag("type_c"),
        0x12 => tag("type_d"),
        0x13 => tag("end_date"),
        0x14 => tag("to_meter"),
        0x15 => tag("from_meter"),
        _ => (format!("vife_ext_0x{c:02x}"), Effect::Tag),
    }
}

/// MBDOC48's record error codes (combinable VIFEs `00`–`1F`). Every name starts with
/// `record_error_`, which is how selection recognises them as annotations.
fn record_error_name(c: u8) -> String {
    let name = match c {
        0x00 => "none",
        0x01 => "too_many_difes",
        0x02 => "storage_not_implemented",
        0x03 => "unit_not_implemented",
        0x04 => "tariff_not_implemented",
        0x05 => "function_not_implemented",
        0x06 => "data_class_not_implemented",
        0x07 => "data_size_not_implemented",
        0x0B => "too_many_vifes",
        0x0C => "illegal_vif_group",
        0x0D => "illegal_vif_exponent",
        0x0E => "vif_dif_mismatch",
        0x0F => "unimplemented_action",
        0x15 => "no_data_available",
        0x16 => "data_overflow",
        0x17 => "data_underflow",
        0x18 => "data_error",
        0x1C => "premature_end_of_record",
        _ => return format!("record_error_0x{c:02x}"),
    };
    format!("record_error_{name}")
}

/// The prefix of every record-error modifier.
pub const RECORD_ERROR_PREFIX: &str = "record_error_";

/// A counter of the legacy fixed data structure (CI `73`), by its 6-bit unit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FixedUnit {
    Meaning(Meaning),
    /// `3E`: the unit of counter 1, but a historic (stored) value.
    Historic,
}

/// The unit table of the fixed data structure (MBDOC48).
pub fn fixed_unit(code: u8) -> FixedUnit {
    let c = code & 0x3F;
    let m = match c {
        0x02..=0x0A => num("energy", "Wh", Factor::pow10(i32::from(c) - 0x02)),
        0x0B..=0x13 => num("energy", "J", Factor::pow10(i32::from(c) - 0x0B + 3)),
        0x14..=0x1C => num("power", "W", Factor::pow10(i32::from(c) - 0x14)),
        0x1D..=0x25 => num("power", "J/h", Factor::pow10(i32::from(c) - 0x1D + 3)),
        0x26..=0x2E => num("volume", "m3", Factor::pow10(i32::from(c) - 0x26 - 6)),
        0x2F..=0x37 => num(
            "volume_flow",
            "m3/h",
            Factor::pow10(i32::from(c) - 0x2F - 6),
        ),
        0x38 => num("temperature", "°C", Factor::pow10(-3)),
        0x39 => plain("units_for_hca"),
        0x3E => return FixedUnit::Historic,
        0x3F => plain("dimensionless"),
        // 00 (h,m,s) and 01 (D,M,Y) have no documented encoding; 3A–3D are reserved.
        _ => UNKNOWN,
    };
    FixedUnit::Meaning(m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::mbus_quantity;

    /// Every quantity the tables produce is in the shared list, and its unit is the list's base
    /// unit — except energy in J and power in J/h, which the list documents as alternatives.
    #[test]
    fn tables_agree_with_the_quantity_list() {
        let mut meanings = Vec::new();
        for c in 0..=0x7F {
            meanings.push(primary(c));
            meanings.push(main_extension(c));
            meanings.push(alternate_extension(c));
        }
        for c in 0..=0x3F {
            if let FixedUnit::Meaning(m) = fixed_unit(c) {
                meanings.push(m);
            }
        }
        for m in meanings {
            if m.quantity == "unknown" {
                assert_eq!(m.kind, Kind::Raw);
                continue;
            }
            let base = mbus_quantity(m.quantity)
                .unwrap_or_else(|| panic!("{} is not in MBUS_QUANTITIES", m.quantity));
            let alternative =
                (m.quantity, m.unit) == ("energy", "J") || (m.quantity, m.unit) == ("power", "J/h");
            assert!(
                alternative || base.unwrap_or("") == m.unit,
                "{}: unit {:?}, list says {:?}",
                m.quantity,
                m.unit,
                base
            );
        }
    }

    #[test]
    fn scales() {
        assert_eq!(primary(0x06).kind, Kind::Number(Factor::pow10(3)));
        assert_eq!(primary(0x13).kind, Kind::Number(Factor::pow10(-3)));
        assert_eq!(primary(0x5A).kind, Kind::Number(Factor::pow10(-1)));
        assert_eq!(primary(0x86), primary(0x06), "extension bit is ignored");
        assert_eq!(main_extension(0x48).kind, Kind::Number(Factor::pow10(-1)));
        assert_eq!(main_extension(0x59).kind, Kind::Number(Factor::pow10(-3)));
        assert_eq!(
            alternate_extension(0x00).kind,
            Kind::Number(Factor::pow10(5))
        );
        assert_eq!(
            alternate_extension(0x01).kind,
            Kind::Number(Factor::pow10(6))
        );
        assert_eq!(primary(0x22).kind, Kind::Number(duration(2)));
        assert_eq!(primary(0x7F), UNKNOWN);
        assert_eq!(main_extension(0x7C), UNKNOWN);
        assert_eq!(combinable(0xBC).0, "backward_flow");
        assert_eq!(combinable(0x74).1, Effect::Scale(-2));
        assert_eq!(combinable(0x7D).1, Effect::Scale(3));
        assert_eq!(combinable(0x79).1, Effect::Offset(-2));
        assert_eq!(combinable(0x6F).0, "end_of_last");
        assert_eq!(combinable(0x4B).0, "end_of_first_upper_limit_exceed");
        assert!(combinable(0x00).0.starts_with(RECORD_ERROR_PREFIX));
        assert!(combinable(0x19).0.starts_with(RECORD_ERROR_PREFIX));
        assert_eq!(
            fixed_unit(0x29),
            FixedUnit::Meaning(num("volume", "m3", Factor::pow10(-3)))
        );
        assert_eq!(
            fixed_unit(0x05),
            FixedUnit::Meaning(num("energy", "Wh", Factor::pow10(3)))
        );
        assert_eq!(fixed_unit(0x3E), FixedUnit::Historic);
    }
}
