//! Unit tests of the application layer: each data type and table entry that matters, the worked
//! examples of the M-Bus reference (§9.1, §9.2) byte for byte, every error with its place, and
//! property tests that no input — arbitrary or a mutated real telegram — panics the decoder.

use proptest::prelude::*;

use super::*;
use crate::mbus::frame::{Parsed, from_hex, parse};

/// The CI 0x72 header of the reference's §9.2: ID 12345678, KAM, version 1, heat, access 42.
const HEADER: &str = "78 56 34 12 2D 2C 01 04 2A 00 00 00";

fn bytes(text: &str) -> Vec<u8> {
    from_hex(text).expect("hex")
}

fn telegram(records: &str) -> Telegram {
    let data = bytes(&format!("{HEADER} {records}"));
    match decode_user_data(5, 0x72, &data) {
        Ok(Response::Data(t)) => t,
        other => panic!("{records}: {other:?}"),
    }
}

fn one(records: &str) -> Record {
    let t = telegram(records);
    assert_eq!(t.records.len(), 1, "{records}: {:?}", t.records);
    t.records.into_iter().next().expect("one record")
}

fn err(records: &str) -> DecodeError {
    let data = bytes(&format!("{HEADER} {records}"));
    decode_user_data(5, 0x72, &data).expect_err(records)
}

fn num(mantissa: i128, exponent: i32) -> Value {
    Value::Number { mantissa, exponent }
}

/// Quantity, unit, value, modifiers of a single-record telegram.
fn check(records: &str, quantity: &str, unit: &str, value: Value, modifiers: &[&str]) {
    let r = one(records);
    assert_eq!(
        (r.quantity.as_str(), r.unit.as_str(), &r.value),
        (quantity, unit, &value),
        "{records}"
    );
    assert_eq!(r.modifiers, modifiers, "{records}");
}

#[test]
fn reference_9_1_amtron_byte_for_byte() {
    let frame = bytes(
        "68 31 31 68 08 01 72 45 58 57 03 B4 05 34 04 9E 00 27 B6 03 06 F9 34 15 03 15 C6 00 4D 05 2E 00 00 00 00 05 3D 00 00 00 00 05 5B 22 F3 26 42 05 5F C7 DA 0D 42 FA 16",
    );
    let Parsed::Frame(f, 55) = parse(&frame) else {
        panic!("frame")
    };
    let Ok(Response::Data(t)) = decode(&f) else {
        panic!("decode")
    };
    assert_eq!((t.address, t.ci), (1, 0x72));
    assert_eq!(
        t.header,
        Header {
            id: "03575845".into(),
            id_raw: [0x45, 0x58, 0x57, 0x03],
            manufacturer: "AMT".into(),
            manufacturer_raw: 0x05B4,
            version: 52,
            medium: 4,
            access_number: 158,
            status: 0,
            signature: 0xB627,
        }
    );
    assert_eq!(medium_name(t.header.medium), "heat_outlet");
    let got: Vec<(&str, &str, Value, usize)> = t
        .records
        .iter()
        .map(|r| {
            (
                r.quantity.as_str(),
                r.unit.as_str(),
                r.value.clone(),
                r.index,
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            ("energy", "Wh", num(1_389_817, 3), 0),
            ("volume", "m3", num(5_046_470, -1), 1),
            ("power", "W", Value::Real(0.0), 2),
            ("volume_flow", "m3/h", Value::Real(0.0), 3),
            ("flow_temperature", "°C", Value::Real(41.737434), 4),
            ("return_temperature", "°C", Value::Real(35.46365), 5),
        ]
    );
    assert_eq!(t.records[0].as_f64(), Some(1_389_817_000.0));
    assert_eq!(t.records[1].as_f64(), Some(504_647.0));
    for r in &t.records {
        assert_eq!(
            (r.function, r.storage, r.tariff, r.subunit),
            (Function::Instantaneous, 0, 0, 0)
        );
        assert!(r.modifiers.is_empty());
    }
    assert_eq!(t.records[0].dif_vif, vec![0x03, 0x06]);
    assert_eq!(t.records[0].data, vec![0xF9, 0x34, 0x15]);
    assert!(!t.more_records_follow);
    assert!(t.manufacturer_data.is_empty());
}

#[test]
fn reference_9_2_constructed_heat_meter_byte_for_byte() {
    let frame = bytes(
        "68 46 46 68 08 05 72 78 56 34 12 2D 2C 01 04 2A 00 00 00 0C 06 45 23 01 00 0C 14 21 43 65 00 0B 2B 50 12 00 0A 5A 35 06 0A 5E 12 04 04 93 3C 2A 00 00 00 4C 06 10 98 02 00 42 6C 1F 3C 8C 10 06 00 05 00 00 02 FD 17 00 00 1F 12 16",
    );
    let Parsed::Frame(f, 76) = parse(&frame) else {
        panic!("frame")
    };
    let Ok(Response::Data(t)) = decode(&f) else {
        panic!("decode")
    };
    assert_eq!(t.header.id, "12345678");
    assert_eq!(t.header.manufacturer, "KAM");
    assert_eq!(
        (t.header.version, t.header.medium, t.header.access_number),
        (1, 4, 42)
    );
    type Row<'a> = (&'a str, &'a str, Value, u64, u32, Vec<&'a str>);
    let got: Vec<Row> = t
        .records
        .iter()
        .map(|r| {
            (
                r.quantity.as_str(),
                r.unit.as_str(),
                r.value.clone(),
                r.storage,
                r.tariff,
                r.modifiers.iter().map(String::as_str).collect(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            ("energy", "Wh", num(12345, 3), 0, 0, vec![]),
            ("volume", "m3", num(654_321, -2), 0, 0, vec![]),
            ("power", "W", num(1250, 0), 0, 0, vec![]),
            ("flow_temperature", "°C", num(635, -1), 0, 0, vec![]),
            ("return_temperature", "°C", num(412, -1), 0, 0, vec![]),
            ("volume", "m3", num(42, -3), 0, 0, vec!["backward_flow"]),
            ("energy", "Wh", num(29810, 3), 1, 0, vec![]),
            (
                "time_point",
                "",
                Value::Date("2024-12-31".into()),
                1,
                0,
                vec![]
            ),
            ("energy", "Wh", num(500, 3), 0, 1, vec![]),
            ("error_flags", "", num(0, 0), 0, 0, vec![]),
        ]
    );
    assert_eq!(
        t.records.iter().map(|r| r.index).collect::<Vec<_>>(),
        (0..10).collect::<Vec<_>>()
    );
    assert_eq!(t.records[1].as_f64(), Some(6543.21));
    assert_eq!(t.records[5].as_f64(), Some(0.042));
    assert!(t.more_records_follow);
    assert!(t.manufacturer_data.is_empty());
}

#[test]
fn headers() {
    // Non-BCD ID (electricity-meter-1) and manufacturer 0.
    let data = bytes("3E 02 00 05 00 00 01 02 03 10 FF FF");
    let Ok(Response::Data(t)) = decode_user_data(0, 0x72, &data) else {
        panic!()
    };
    assert_eq!(t.header.id, "0500023E");
    assert_eq!(t.header.manufacturer, "@@@");
    assert_eq!(t.header.signature, 0xFFFF);
    assert_eq!((t.header.status, t.header.access_number), (0x10, 3));
    assert!(t.records.is_empty());
    // CI 0x76: the same fields most significant byte first, numbers too.
    let data = bytes("12 34 56 78 2C 2D 01 04 2A 00 00 00 04 03 00 00 01 02");
    let Ok(Response::Data(t)) = decode_user_data(5, 0x76, &data) else {
        panic!()
    };
    assert_eq!(t.header.id, "12345678");
    assert_eq!(t.header.manufacturer, "KAM");
    assert_eq!(t.records[0].value, num(258, 0));
    // CI 0x7A short header and CI 0x78 without one.
    let Ok(Response::Data(t)) = decode_user_data(5, 0x7A, &bytes("07 00 00 00 01 5B 30")) else {
        panic!()
    };
    assert_eq!((t.header.access_number, t.header.id.as_str()), (7, ""));
    assert_eq!(t.records[0].value, num(48, 0));
    let Ok(Response::Data(t)) = decode_user_data(5, 0x78, &bytes("01 5B 30")) else {
        panic!()
    };
    assert_eq!(t.records[0].quantity, "flow_temperature");
}

#[test]
fn integers_of_every_width() {
    check("01 13 FF", "volume", "m3", num(-1, -3), &[]);
    check("02 13 00 80", "volume", "m3", num(-32768, -3), &[]);
    check("03 13 FF FF 7F", "volume", "m3", num(8_388_607, -3), &[]);
    check("04 13 FE FF FF FF", "volume", "m3", num(-2, -3), &[]);
    check(
        "06 13 01 00 00 00 00 80",
        "volume",
        "m3",
        num(-140_737_488_355_327, -3),
        &[],
    );
    check(
        "07 13 FF FF FF FF FF FF FF 7F",
        "volume",
        "m3",
        num(i128::from(i64::MAX), -3),
        &[],
    );
}

#[test]
fn bcd_with_sign_and_error_digits() {
    check("09 13 42", "volume", "m3", num(42, -3), &[]);
    check("0A 13 34 12", "volume", "m3", num(1234, -3), &[]);
    check("0B 13 56 34 12", "volume", "m3", num(123_456, -3), &[]);
    check(
        "0E 13 12 90 78 56 34 12",
        "volume",
        "m3",
        num(123_456_789_012, -3),
        &[],
    );
    check("0A 13 34 F2", "volume", "m3", num(-234, -3), &[]);
    // Value during error state with hex digits (ELS_Elster-F96-Plus): kept as digits.
    let r = one("3C 2B BD EB DD DD");
    assert_eq!(r.function, Function::Error);
    assert_eq!(r.value, Value::Invalid("DDDDEBBD".into()));
    assert_eq!(r.as_f64(), None);
}

#[test]
fn reals() {
    check("05 2E 00 00 C0 3F", "power", "W", Value::Real(1500.0), &[]);
    check(
        "05 5A 00 00 20 41",
        "flow_temperature",
        "°C",
        Value::Real(1.0),
        &[],
    );
    let r = one("05 2B 00 00 C0 7F");
    assert!(matches!(r.value, Value::Real(x) if x.is_nan()));
}

#[test]
fn variable_length_fields() {
    // Text is sent last character first (siemens_rvd235's parameter set "RVD235").
    check(
        "0D FD 0B 06 35 33 32 44 56 52",
        "parameter_set_id",
        "",
        Value::Text("RVD235".into()),
        &[],
    );
    check("0D 13 C2 34 12", "volume", "m3", num(1234, -3), &[]);
    check("0D 13 D2 34 12", "volume", "m3", num(-1234, -3), &[]);
    check("0D 13 E2 34 12", "volume", "m3", num(0x1234, -3), &[]);
    // E0: a binary number of no bytes is legal and must not crash.
    check("0D 13 E0", "volume", "m3", Value::Bytes(vec![]), &[]);
    // 16 bytes and more stay raw, in wire order.
    let r = one("0D 13 F0 00 01 02 03 04 05 06 07 08 09 0A 0B 0C 0D 0E 0F");
    assert_eq!(r.value, Value::Bytes((0..16).collect()));
    assert_eq!(r.data.len(), 17, "the LVAR byte is part of the raw data");
    assert!(matches!(
        err("0D 13 F7 00"),
        DecodeError::ReservedLvar {
            record: 0,
            lvar: 0xF7,
            offset: 14
        }
    ));
}

#[test]
fn dates_and_times() {
    check(
        "02 6C 1F 3C",
        "time_point",
        "",
        Value::Date("2024-12-31".into()),
        &[],
    );
    check(
        "04 6D 0C 15 A8 22",
        "time_point",
        "",
        Value::Date("2021-02-08T21:12:00".into()),
        &[],
    );
    check(
        "06 6D 05 0C 15 A8 22 00",
        "time_point",
        "",
        Value::Date("2021-02-08T21:12:05".into()),
        &[],
    );
    check(
        "03 6D 05 0C 15",
        "time_point",
        "",
        Value::Date("21:12:05".into()),
        &[],
    );
    // All zeros is no date.
    check(
        "02 6C 00 00",
        "time_point",
        "",
        Value::Invalid("0000".into()),
        &[],
    );
    // "Every year" (landis+gyr_ultraheat_t230): year 127.
    check(
        "04 6D 00 00 E1 F1",
        "time_point",
        "",
        Value::Date("--01-01T00:00:00".into()),
        &[],
    );
    // Start of tariff and battery change are dates in the FD table.
    check(
        "04 FD 30 0C 15 A8 22",
        "tariff_start",
        "",
        Value::Date("2021-02-08T21:12:00".into()),
        &[],
    );
}

#[test]
fn primary_table() {
    check("01 00 01", "energy", "Wh", num(1, -3), &[]);
    check("01 07 01", "energy", "Wh", num(1, 4), &[]);
    check("01 0E 01", "energy", "J", num(1, 6), &[]);
    check("01 16 01", "volume", "m3", num(1, 0), &[]);
    check("01 1B 01", "mass", "kg", num(1, 0), &[]);
    check("01 22 02", "on_time", "s", num(7200, 0), &[]);
    check("01 27 02", "operating_time", "s", num(172_800, 0), &[]);
    check("01 2E 02", "power", "W", num(2, 3), &[]);
    check("01 33 02", "power", "J/h", num(2, 3), &[]);
    check("01 3B 02", "volume_flow", "m3/h", num(2, -3), &[]);
    check("01 46 02", "volume_flow", "m3/h", num(120, -1), &[]);
    check("01 4F 02", "volume_flow", "m3/h", num(7200, -2), &[]);
    check("01 53 02", "mass_flow", "kg/h", num(2, 0), &[]);
    check("01 59 02", "flow_temperature", "°C", num(2, -2), &[]);
    check("01 5D 02", "return_temperature", "°C", num(2, -2), &[]);
    check("01 61 02", "temperature_difference", "K", num(2, -2), &[]);
    check("01 65 02", "external_temperature", "°C", num(2, -2), &[]);
    check("01 69 02", "pressure", "bar", num(2, -2), &[]);
    check("01 6E 02", "units_for_hca", "", num(2, 0), &[]);
    check("01 72 02", "averaging_duration", "s", num(7200, 0), &[]);
    check("01 75 02", "actuality_duration", "s", num(120, 0), &[]);
    check(
        "0C 78 78 56 34 12",
        "fabrication_number",
        "",
        num(12_345_678, 0),
        &[],
    );
    check("01 79 02", "enhanced_identification", "", num(2, 0), &[]);
    check("01 7A 02", "bus_address", "", num(2, 0), &[]);
    // 7B alone is not a VIF (libmbus issue #169): kept, unknown and raw.
    check("01 7B 02", "unknown", "", num(2, 0), &[]);
}

#[test]
fn extension_tables() {
    check("02 FD 48 E6 00", "voltage", "V", num(230, -1), &[]);
    check("02 FD 59 E8 03", "current", "A", num(1000, -3), &[]);
    check("01 FD 17 04", "error_flags", "", num(4, 0), &[]);
    check(
        "01 FD 28 02",
        "storage_interval",
        "s",
        num(525_948_766, -2),
        &[],
    );
    check(
        "01 FD 6F 01",
        "battery_operating_time",
        "s",
        num(31_556_926, 0),
        &[],
    );
    // FB: MWh and GJ.
    check("04 FB 00 08 00 00 00", "energy", "Wh", num(8, 5), &[]);
    check("04 FB 09 03 00 00 00", "energy", "J", num(3, 9), &[]);
    check("04 FB 11 03 00 00 00", "volume", "m3", num(3, 3), &[]);
    // °F converted to °C.
    check(
        "01 FB 5B 32",
        "flow_temperature",
        "°C",
        Value::Real(10.0),
        &[],
    );
    check(
        "01 FB 63 09",
        "temperature_difference",
        "K",
        Value::Real(5.0),
        &[],
    );
    // Reserved codes of the FD table are unknown and raw.
    check("01 FD 7C 01", "unknown", "", num(1, 0), &[]);
}

#[test]
fn combinable_vifes_and_corrections() {
    // Forward and backward flow differ only in the modifier (EDC).
    check(
        "04 86 3B 23 00 00 00",
        "energy",
        "Wh",
        num(35, 3),
        &["forward_flow"],
    );
    check(
        "04 86 3C D1 01 00 00",
        "energy",
        "Wh",
        num(465, 3),
        &["backward_flow"],
    );
    // Multiplicative 10^(n−6), 10^3, additive 10^(n−3) in the VIF's unit.
    check("01 96 74 05", "volume", "m3", num(5, -2), &[]);
    check("01 96 7D 05", "volume", "m3", num(5, 3), &[]);
    check("01 96 7A 05", "volume", "m3", num(51, -1), &[]);
    // Every correction of the chain applies, not only the first.
    check("01 96 FD 74 05", "volume", "m3", num(5, 1), &[]);
    // Per-time and pulse modifiers keep the quantity.
    check(
        "04 90 28 0B 00 00 00",
        "volume",
        "m3",
        num(11, -6),
        &["per_input_pulse_channel_0"],
    );
    check(
        "01 96 A2 3B 05",
        "volume",
        "m3",
        num(5, 0),
        &["per_hour", "forward_flow"],
    );
    // A date of an event (landis+gyr_ultraheat_t230: maximum power, end of last period).
    let r = one("94 10 DA 6F 32 14 7A 18");
    assert_eq!(
        (r.quantity.as_str(), r.function, r.tariff),
        ("flow_temperature", Function::Maximum, 1)
    );
    assert_eq!(r.value, Value::Date("2011-08-26T20:50:00".into()));
    assert_eq!(r.modifiers, ["end_of_last"]);
    assert_eq!(r.unit, "");
    // A count and a duration of limit exceeds.
    check(
        "01 DA 49 03",
        "flow_temperature",
        "",
        num(3, 0),
        &["upper_limit_exceed_count"],
    );
    check(
        "01 DA 5A 03",
        "flow_temperature",
        "s",
        num(10800, 0),
        &["duration_of_first_upper_limit_exceed"],
    );
    // Future value on a date (REL-Relay-Padpuls2).
    check(
        "42 EC 7E FF 1C",
        "time_point",
        "",
        Value::Date("2015-12-31".into()),
        &["future_value"],
    );
    // Record error annotations.
    check(
        "04 84 00 01 00 00 00",
        "energy",
        "Wh",
        num(1, 1),
        &["record_error_none"],
    );
    // Non-metric units: not what the VIF says, so unknown and raw.
    check("01 86 3D 05", "unknown", "", num(5, 0), &["non_metric"]);
    // The combinable extension table behind FC.
    check(
        "02 FD C8 FC 01 E6 00",
        "voltage",
        "V",
        num(230, -1),
        &["at_phase_l1"],
    );
}

#[test]
fn manufacturer_specific_is_kept_raw() {
    // 7F after a standard VIF: the rest of the chain is the manufacturer's (EMU, SBC ALE3).
    check(
        "04 AB FF 01 FE FF FF FF",
        "power",
        "W",
        num(-2, 0),
        &["manufacturer_specific"],
    );
    check(
        "02 FD C9 FF 01 DF 00",
        "voltage",
        "V",
        num(223, 0),
        &["manufacturer_specific"],
    );
    // A manufacturer-specific VIF: its VIFEs are not read against the standard tables, so the
    // F2 of ABB B21 is no correction factor (m-bus-parser #114).
    let r = one("04 FF F2 01 E8 03 00 00");
    assert_eq!(r.quantity, "unknown");
    assert_eq!(r.value, num(1000, 0));
    assert_eq!(r.modifiers, ["manufacturer_specific"]);
    assert_eq!(r.dif_vif, vec![0x04, 0xFF, 0xF2, 0x01]);
    // DIF 0F: everything after it is manufacturer data.
    let t = telegram("01 5B 30 0F 01 02 03");
    assert_eq!(t.records.len(), 1);
    assert_eq!(t.manufacturer_data, vec![1, 2, 3]);
    assert!(!t.more_records_follow);
    let t = telegram("1F 09");
    assert!(t.more_records_follow);
    assert_eq!(t.manufacturer_data, vec![9]);
}

#[test]
fn plain_text_vif_in_both_positions() {
    // Text right after the VIF, before the VIFEs (Elvaco CMa10/CMa11, libmbus's reading).
    check(
        "02 FC 03 48 52 25 74 D4 11",
        "plain_text",
        "%RH",
        num(4564, -2),
        &[],
    );
    // The standard position: after the VIFE chain.
    check(
        "02 FC 74 03 48 52 25 D4 11",
        "plain_text",
        "%RH",
        num(4564, -2),
        &[],
    );
    // Without VIFEs both coincide.
    check("01 7C 01 43 05", "plain_text", "C", num(5, 0), &[]);
    let r = one("02 FC 03 48 52 25 74 D4 11");
    assert_eq!(r.dif_vif, bytes("02 FC 03 48 52 25 74"));
}

#[test]
fn fillers_are_skipped_and_not_counted() {
    let t = telegram("2F 2F 01 5B 30 2F 01 5F 20 2F");
    assert_eq!(t.records.len(), 2);
    assert_eq!((t.records[0].index, t.records[1].index), (0, 1));
}

#[test]
fn storage_tariff_subunit_from_the_dife_chain() {
    // DIF 8B DIFE 60: sub-unit 1, tariff 2.
    let r = one("8B 60 04 37 18 02");
    assert_eq!((r.storage, r.tariff, r.subunit), (0, 2, 1));
    // DIF storage bit + two DIFEs: storage 1 | 0xF << 1 | 0x3 << 5, tariff 1 | 2 << 2, sub-unit 2.
    let r = one("C2 9F 63 6C 1F 3C");
    assert_eq!(
        (r.storage, r.tariff, r.subunit),
        (1 | (0xF << 1) | (3 << 5), 1 | (2 << 2), 2)
    );
    // Ten DIFEs: the widest storage number.
    let r = one("C1 8F 8F 8F 8F 8F 8F 8F 8F 8F 0F 13 01");
    assert_eq!(r.storage, (1u64 << 41) - 1);
    // Function bits.
    assert_eq!(one("11 13 01").function, Function::Maximum);
    assert_eq!(one("21 13 01").function, Function::Minimum);
    assert_eq!(one("31 13 01").function, Function::Error);
}

#[test]
fn fixed_data_structure() {
    // libmbus manual_frame2: water, BCD counters of 1 l and 135 l (historic).
    let Ok(Response::Data(t)) = decode_user_data(
        5,
        0x73,
        &bytes("78 56 34 12 0A 00 E9 7E 01 00 00 00 35 01 00 00"),
    ) else {
        panic!()
    };
    assert_eq!(t.header.id, "12345678");
    assert_eq!((t.header.medium, t.header.access_number), (7, 10));
    assert_eq!(
        (
            t.records[0].quantity.as_str(),
            &t.records[0].value,
            t.records[0].storage
        ),
        ("volume", &num(1, -3), 0)
    );
    assert_eq!(
        (
            t.records[1].quantity.as_str(),
            &t.records[1].value,
            t.records[1].storage
        ),
        ("volume", &num(135, -3), 1)
    );
    // Binary counters (status bit 7) and stored values (bit 6).
    let Ok(Response::Data(t)) = decode_user_data(
        1,
        0x73,
        &bytes("93 92 91 90 10 C0 05 69 31 65 00 00 69 00 00 00"),
    ) else {
        panic!()
    };
    assert_eq!(t.header.medium, 4);
    assert_eq!(t.records[0].value, num(0x6531, 3));
    assert_eq!(t.records[0].unit, "Wh");
    assert_eq!(t.records[1].storage, 1);
    assert_eq!(
        decode_user_data(1, 0x73, &[0; 15]),
        Err(DecodeError::FixedLength(15))
    );
}

#[test]
fn application_errors() {
    for (code, text) in [
        (Some(0), "unspecified error"),
        (Some(1), "unimplemented CI field"),
        (Some(8), "application busy"),
        (Some(9), "too many readouts"),
        (Some(200), "unknown application error"),
        (None, "unspecified error"),
    ] {
        let data: Vec<u8> = code.into_iter().collect();
        assert_eq!(
            decode_user_data(3, 0x70, &data),
            Ok(Response::ApplicationError {
                address: 3,
                code,
                text
            })
        );
    }
}

#[test]
fn errors_name_the_place() {
    use DecodeError as E;
    let premature = |at, record, offset| E::PrematureEnd { record, at, offset };
    assert_eq!(err("01 13 05 8B"), premature("DIFE", 1, 16));
    assert_eq!(err("8B 60"), premature("VIF", 0, 14));
    assert_eq!(err("8B 60 84"), premature("VIFE", 0, 15));
    assert_eq!(err("8B 60 04 37 18"), premature("data", 0, 15));
    assert_eq!(err("0D 13"), premature("variable-length LVAR", 0, 14));
    assert_eq!(err("0D 13 05 41"), premature("data", 0, 15));
    assert_eq!(
        err("12 FC 13 48 52 25 74 B4"),
        premature("plain-text VIF", 0, 14)
    );
    assert_eq!(
        err("12 FC F3 48 52 25 74 B4"),
        E::PlainTextTooLong {
            record: 0,
            len: 0xF3,
            offset: 14
        }
    );
    assert_eq!(
        err("8B 8B 8B 8B 8B 8B 8B 8B 8B 8B 8B 60 04 37 18 02"),
        E::TooManyDifes {
            record: 0,
            offset: 23
        }
    );
    assert_eq!(
        err("8B 60 84 84 84 84 84 84 84 84 84 84 84 04 37 18 02"),
        E::TooManyVifes {
            record: 0,
            offset: 25
        }
    );
    assert_eq!(
        err("3F 00"),
        E::ReservedDif {
            record: 0,
            dif: 0x3F,
            offset: 12
        }
    );
    assert_eq!(
        err("01 13 05 7F"),
        E::ReservedDif {
            record: 1,
            dif: 0x7F,
            offset: 15
        }
    );
    assert!(matches!(
        decode_user_data(1, 0x72, &bytes("78 56 34 12 24")),
        Err(E::HeaderTooShort {
            needed: 12,
            available: 5,
            ..
        })
    ));
    assert!(matches!(
        decode_user_data(1, 0x71, &[]),
        Err(E::UnsupportedCi { ci: 0x71, .. })
    ));
    let msg = err("8B 60 04 37 18").to_string();
    assert_eq!(msg, "premature end of record 0 at data, user-data byte 15");
}

#[test]
fn frames_that_are_not_answers() {
    assert_eq!(
        decode(&Frame::Ack),
        Err(DecodeError::NoUserData("an acknowledgement (E5)"))
    );
    assert!(matches!(
        decode(&Frame::Short { c: 0x5B, a: 1 }),
        Err(DecodeError::NoUserData(_))
    ));
    let select = Frame::Long {
        c: 0x53,
        a: 0xFE,
        ci: 0x51,
        data: vec![1, 0x7A, 8],
    };
    assert_eq!(decode(&select), Err(DecodeError::FromMaster(0x53)));
    let odd = Frame::Long {
        c: 0x09,
        a: 1,
        ci: 0x72,
        data: vec![0],
    };
    assert_eq!(decode(&odd), Err(DecodeError::NotRspUd(0x09)));
    // ACD and DFC are allowed (EDC.hex has C = 28).
    let acd = Frame::Control {
        c: 0x38,
        a: 1,
        ci: 0x70,
    };
    assert!(matches!(
        decode(&acd),
        Ok(Response::ApplicationError { code: None, .. })
    ));
}

#[test]
fn value_helpers() {
    assert_eq!(num(1_389_817, 3).to_string(), "1389817000");
    assert_eq!(num(42, -3).to_string(), "0.042");
    assert_eq!(num(i128::MAX, i32::MAX).as_f64(), Some(f64::INFINITY));
    assert_eq!(Value::Bytes(vec![0xAB, 1]).to_string(), "AB01");
    assert_eq!(Value::Text("x".into()).as_f64(), None);
    assert_eq!(Value::Date("2024-12-31".into()).to_string(), "2024-12-31");
}

/// Every real telegram in the libmbus fixture set, as bytes.
fn fixtures() -> Vec<Vec<u8>> {
    let base = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/mbus/libmbus");
    let mut out = Vec::new();
    for dir in ["test-frames", "error-frames", "unsupported-frames"] {
        let Ok(entries) = std::fs::read_dir(format!("{base}/{dir}")) else {
            continue;
        };
        for e in entries.flatten() {
            if e.path().extension().is_some_and(|x| x == "hex") {
                let text = std::fs::read_to_string(e.path()).unwrap_or_default();
                if let Ok(b) = from_hex(&text) {
                    out.push(b);
                }
            }
        }
    }
    out.sort();
    out
}

/// The link layer and the decoder together, as the bus edge runs them.
fn decode_all(bytes: &[u8]) {
    let mut rest = bytes;
    while !rest.is_empty() {
        match parse(rest) {
            Parsed::Frame(frame, used) => {
                let _ = decode(&frame);
                if let Frame::Long { ci, data, .. } = &frame {
                    let _ = decode_user_data(0, *ci, data);
                }
                rest = rest.get(used..).unwrap_or_default();
            }
            Parsed::NeedMore(_) => break,
            Parsed::Invalid { skip, .. } => rest = rest.get(skip..).unwrap_or_default(),
        }
    }
}

/// Puts a long frame's L, L and checksum right again after a mutation, so the mutation reaches
/// the application layer instead of being rejected by the link layer.
fn fix_up(mut b: Vec<u8>) -> Vec<u8> {
    if b.len() >= 9 && b.first() == Some(&0x68) {
        let l = (b.len() - 6).min(255) as u8;
        b.truncate(usize::from(l) + 6);
        b[1] = l;
        b[2] = l;
        b[3] = 0x68;
        let n = b.len();
        b[n - 2] = b[4..n - 2].iter().fold(0u8, |s, x| s.wrapping_add(*x));
        b[n - 1] = 0x16;
    }
    b
}

#[test]
fn fixtures_are_found() {
    assert!(fixtures().len() >= 100);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        decode_all(&bytes);
    }

    #[test]
    fn arbitrary_user_data_never_panics(ci in any::<u8>(), data in proptest::collection::vec(any::<u8>(), 0..260)) {
        let _ = decode_user_data(1, ci, &data);
    }

    #[test]
    fn record_like_user_data_never_panics(
        ci in prop::sample::select(vec![0x72u8, 0x76, 0x7A, 0x78, 0x73]),
        data in proptest::collection::vec(
            prop::sample::select(vec![0x00u8, 0x01, 0x04, 0x05, 0x07, 0x0C, 0x0D, 0x0E, 0x0F, 0x1F,
                0x2F, 0x6C, 0x6D, 0x7C, 0x7F, 0x80, 0x8F, 0xC0, 0xC9, 0xD9, 0xE0, 0xEF, 0xF0, 0xF6,
                0xFB, 0xFC, 0xFD, 0xFF, 0x3C, 0x74, 0x7D, 0x03, 0x48, 0x52, 0x25]),
            0..260,
        ),
    ) {
        let _ = decode_user_data(1, ci, &data);
    }

    #[test]
    fn mutated_fixtures_never_panic(
        pick in any::<prop::sample::Index>(),
        edits in proptest::collection::vec((0u8..3, any::<prop::sample::Index>(), any::<u8>()), 1..8),
    ) {
        let all = fixtures();
        prop_assume!(!all.is_empty());
        let mut b = pick.get(&all).clone();
        for (kind, at, byte) in edits {
            let len = b.len();
            match kind {
                0 if len > 0 => { let i = at.index(len); b[i] ^= byte | 1; }
                1 => { let i = at.index(len + 1); b.insert(i, byte); }
                _ if len > 0 => { let i = at.index(len); b.remove(i); }
                _ => {}
            }
        }
        decode_all(&b);
        decode_all(&fix_up(b.clone()));
        if let Some(data) = b.get(7..) {
            for ci in [0x72, 0x76, 0x7A, 0x78, 0x73, 0x70] {
                let _ = decode_user_data(0, ci, data);
            }
        }
    }
}
