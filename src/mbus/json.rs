//! The `mbus decode` JSON of SPEC §7: a decoded [`Response`] as a `serde_json::Value`.
//!
//! Shape: `address`, `id` (string), `manufacturer`, `version`, `medium` (name), `access_number`,
//! `status`, `records` with `index`, `function`, `storage`, `tariff`, `subunit`, `quantity`,
//! `unit`, `value` (a number in the base unit; a string for dates, text, raw bytes in hex and
//! invalid values), `modifiers` when there are any, `raw` (hex of the whole record) for
//! `unknown` records, and `invalid: true` for values that are not values. A telegram that ends
//! in DIF `1F` adds `"more_records_follow": true`, and manufacturer data after `0F`/`1F` adds
//! `manufacturer_data` (hex). An application error is `{"address", "error", "code"}`.
//! Presentation only: no decoding, no IO.

use serde_json::{Map, Value as Json, json};

use super::record::{Record, Response, Value, function_name, hex, medium_name};

/// The JSON of a decoded answer.
pub fn to_json(response: &Response) -> Json {
    match response {
        Response::ApplicationError {
            address,
            code,
            text,
        } => json!({ "address": address, "error": text, "code": code }),
        Response::Data(t) => {
            let h = &t.header;
            let mut o = Map::new();
            o.insert("address".into(), json!(t.address));
            o.insert("id".into(), json!(h.id));
            o.insert("manufacturer".into(), json!(h.manufacturer));
            o.insert("version".into(), json!(h.version));
            o.insert("medium".into(), json!(medium_name(h.medium)));
            o.insert("access_number".into(), json!(h.access_number));
            o.insert("status".into(), json!(h.status));
            o.insert(
                "records".into(),
                Json::Array(t.records.iter().map(record).collect()),
            );
            if t.more_records_follow {
                o.insert("more_records_follow".into(), json!(true));
            }
            if !t.manufacturer_data.is_empty() {
                o.insert("manufacturer_data".into(), json!(hex(&t.manufacturer_data)));
            }
            Json::Object(o)
        }
    }
}

/// One record's object.
pub fn record(r: &Record) -> Json {
    let mut o = Map::new();
    o.insert("index".into(), json!(r.index));
    o.insert("function".into(), json!(function_name(r.function)));
    o.insert("storage".into(), json!(r.storage));
    o.insert("tariff".into(), json!(r.tariff));
    o.insert("subunit".into(), json!(r.subunit));
    o.insert("quantity".into(), json!(r.quantity));
    o.insert("unit".into(), json!(r.unit));
    o.insert("value".into(), value(&r.value));
    if matches!(r.value, Value::Invalid(_)) {
        o.insert("invalid".into(), json!(true));
    }
    if !r.modifiers.is_empty() {
        o.insert("modifiers".into(), json!(r.modifiers));
    }
    if r.quantity == "unknown" {
        let mut raw = r.dif_vif.clone();
        raw.extend_from_slice(&r.data);
        o.insert("raw".into(), json!(hex(&raw)));
    }
    Json::Object(o)
}

/// Numbers as JSON numbers (NaN and infinities, which JSON cannot carry, as null); everything
/// else as a string.
fn value(v: &Value) -> Json {
    match v {
        Value::Number { .. } | Value::Real(_) => v
            .as_f64()
            .and_then(serde_json::Number::from_f64)
            .map_or(Json::Null, Json::Number),
        Value::Text(s) | Value::Date(s) | Value::Invalid(s) => json!(s),
        Value::Bytes(b) => json!(hex(b)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mbus::frame::{Parsed, from_hex, parse};
    use crate::mbus::record::{decode, decode_user_data};

    fn decode_hex(text: &str) -> Response {
        let bytes = from_hex(text).expect("hex");
        let Parsed::Frame(frame, _) = parse(&bytes) else {
            panic!("not a frame")
        };
        decode(&frame).expect("decodes")
    }

    #[test]
    fn spec_shape() {
        let r = decode_hex(
            "68 31 31 68 08 01 72 45 58 57 03 B4 05 34 04 9E 00 27 B6 03 06 F9 34 15 03 15 C6 00 4D 05 2E 00 00 00 00 05 3D 00 00 00 00 05 5B 22 F3 26 42 05 5F C7 DA 0D 42 FA 16",
        );
        let j = to_json(&r);
        assert_eq!(
            j["records"][0],
            json!({"index": 0, "function": "instantaneous", "storage": 0, "tariff": 0,
                   "subunit": 0, "quantity": "energy", "unit": "Wh", "value": 1389817000.0})
        );
        assert_eq!(j["id"], json!("03575845"));
        assert_eq!(j["manufacturer"], json!("AMT"));
        assert_eq!(j["medium"], json!("heat_outlet"));
        assert_eq!(j["version"], json!(52));
        assert_eq!(j["access_number"], json!(158));
        assert_eq!(j["status"], json!(0));
        assert_eq!(j["address"], json!(1));
        assert_eq!(j["records"][4]["value"], json!(41.737434));
        assert!(j.get("more_records_follow").is_none());
        let keys: Vec<&String> = j.as_object().expect("object").keys().collect();
        assert_eq!(keys.len(), 8, "{keys:?}");
    }

    #[test]
    fn application_error() {
        let r = decode_hex("68 04 04 68 08 01 70 08 81 16");
        assert_eq!(
            to_json(&r),
            json!({"address": 1, "error": "application busy", "code": 8})
        );
        let r = decode_hex("68 03 03 68 08 01 70 79 16");
        assert_eq!(
            to_json(&r),
            json!({"address": 1, "error": "unspecified error", "code": null})
        );
    }

    #[test]
    fn modifiers_dates_unknown_and_more_records() {
        let data = from_hex(
            "78 56 34 12 2D 2C 01 04 2A 00 00 00 04 93 3C 2A 00 00 00 42 6C 1F 3C 01 FF 07 05 1F",
        )
        .expect("hex");
        let r = decode_user_data(5, 0x72, &data).expect("decodes");
        let j = to_json(&r);
        assert_eq!(j["records"][0]["modifiers"], json!(["backward_flow"]));
        assert_eq!(j["records"][0]["value"], json!(0.042));
        assert_eq!(j["records"][1]["value"], json!("2024-12-31"));
        assert_eq!(j["records"][1]["storage"], json!(1));
        assert_eq!(j["records"][2]["quantity"], json!("unknown"));
        assert_eq!(j["records"][2]["raw"], json!("01FF0705"));
        assert_eq!(j["records"][2]["value"], json!(5.0));
        assert_eq!(j["more_records_follow"], json!(true));
        assert!(j.get("manufacturer_data").is_none());
    }
}
