//! The wire shape of one reading (SPEC §4). The only module that knows the HTTP JSON format,
//! so a change confirmed by Enectiva is a one-line change here.

use serde_json::{Number, Value};

use crate::config::IdField;
use crate::reading::{Kind, Reading, Series};

/// `Content-Type` and `Accept` of every request.
pub const MEDIA_TYPE: &str = "application/vnd.api+json";

/// `User-Agent`: product and version.
pub fn user_agent() -> String {
    format!("enectiva-collector/{}", env!("CARGO_PKG_VERSION"))
}

fn endpoint(kind: Kind) -> &'static str {
    match kind {
        Kind::Reading => "readings",
        Kind::DataPoint => "data_points",
    }
}

/// `POST {base}/import/readings/{customer}` or `…/data_points/{customer}`.
pub fn post_url(base_url: &str, customer_id: &str, kind: Kind) -> String {
    format!(
        "{}/import/{}/{}",
        base_url.trim_end_matches('/'),
        endpoint(kind),
        customer_id
    )
}

/// `GET {base}/import/{readings|data_points}/{customer}/{import_id}/{suit}/latest`, with path
/// segments escaped.
pub fn latest_url(
    base_url: &str,
    customer_id: &str,
    series: &Series,
) -> Result<reqwest::Url, String> {
    let mut url = reqwest::Url::parse(base_url.trim_end_matches('/')).map_err(|e| e.to_string())?;
    {
        let mut seg = url
            .path_segments_mut()
            .map_err(|()| "base_url cannot have a path".to_string())?;
        seg.pop_if_empty();
        seg.extend([
            "import",
            endpoint(series.kind),
            customer_id,
            &series.import_id,
            series.suit.as_deref().unwrap_or("default"),
            "latest",
        ]);
    }
    Ok(url)
}

/// RFC 3339, UTC, whole seconds: `2026-11-26T10:15:00Z`.
pub fn format_time(unix: i64) -> String {
    let t =
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(u64::try_from(unix).unwrap_or(0));
    humantime::format_rfc3339_seconds(t).to_string()
}

/// A JSON number with no spurious digits: integral values without `.0`, others with the
/// shortest decimal that round-trips (the value was already rounded by the channel's
/// transform). None for NaN and infinities, which are never sent.
pub fn number(v: f64) -> Option<Number> {
    if !v.is_finite() {
        return None;
    }
    if v.fract() == 0.0 && v.abs() < 9_007_199_254_740_992.0 {
        // Exact: |v| < 2^53 and integral.
        return Some(Number::from(v as i64));
    }
    Number::from_f64(v)
}

/// The fields of one request, in the order they are written.
struct Data<'a> {
    id_field: &'static str,
    reading: &'a Reading,
    value: Number,
    sender: &'a str,
}

impl serde::Serialize for Data<'_> {
    fn serialize<S: serde::Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let r = self.reading;
        let mut m = ser.serialize_map(None)?;
        m.serialize_entry(self.id_field, &r.series.import_id)?;
        m.serialize_entry("time", &format_time(r.time))?;
        let value_key = match r.series.kind {
            Kind::Reading => "state",
            Kind::DataPoint => "value",
        };
        m.serialize_entry(value_key, &self.value)?;
        if let Some(unit) = &r.unit {
            m.serialize_entry("unit", unit)?;
        }
        if !self.sender.is_empty() {
            m.serialize_entry("sender", self.sender)?;
        }
        if let Some(suit) = &r.series.suit {
            m.serialize_entry("suit", suit)?;
        }
        m.end()
    }
}

/// The request body of one reading, or None when its value cannot be sent.
pub fn body(reading: &Reading, sender: &str, id_field: IdField) -> Option<Vec<u8>> {
    let data = Data {
        id_field: id_field.as_str(),
        reading,
        value: number(reading.value)?,
        sender,
    };
    #[derive(serde::Serialize)]
    struct Envelope<'a> {
        data: Data<'a>,
    }
    serde_json::to_vec(&Envelope { data }).ok()
}

/// `time` and `state` (a reading) or `value` (a data point) of a `latest` answer
/// (`{"data":{…}}`), as text; `None` for what the answer does not carry.
pub fn latest_fields(body: &str) -> (Option<String>, Option<String>) {
    let v: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
    let data = v.get("data");
    let field = |k: &str| {
        data.and_then(|d| d.get(k))
            .map(|x| x.to_string().trim_matches('"').to_string())
    };
    (field("time"), field("state").or_else(|| field("value")))
}

/// The most useful line of an error answer: JSON:API `errors[0].detail`, a top-level
/// `detail`, or the start of the body.
pub fn error_detail(body: &str) -> String {
    if let Ok(v) = serde_json::from_str::<Value>(body) {
        let d = v
            .pointer("/errors/0/detail")
            .or_else(|| v.get("detail"))
            .and_then(Value::as_str);
        if let Some(d) = d {
            return truncate(d, 300).to_string();
        }
    }
    truncate(body.trim(), 300).to_string()
}

/// The first `max` bytes of `s`, cut at a character boundary.
pub fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latest_answers_give_time_and_value() {
        let reading = r#"{"data":{"time":"2026-11-26T10:15:00Z","state":1000.5}}"#;
        assert_eq!(
            latest_fields(reading),
            (Some("2026-11-26T10:15:00Z".into()), Some("1000.5".into()))
        );
        let point = r#"{"data":{"time":"2026-11-26T10:15:00Z","value":"0.2301"}}"#;
        assert_eq!(latest_fields(point).1, Some("0.2301".into()));
        assert_eq!(latest_fields("not json"), (None, None));
        assert_eq!(latest_fields(r#"{"data":{}}"#), (None, None));
    }

    fn r(kind: Kind, value: f64, suit: Option<&str>) -> Reading {
        Reading {
            series: Series::new(kind, "40AABB_007", suit.map(str::to_string)),
            time: 1_795_688_100,
            value,
            unit: Some("kWh".into()),
            clock_synced: true,
            invalid: None,
        }
    }

    #[test]
    fn reading_body() {
        let b = body(
            &r(Kind::Reading, 123456.78, None),
            "gateway-01",
            IdField::ImportId,
        )
        .expect("body");
        assert_eq!(
            String::from_utf8(b).expect("utf8"),
            r#"{"data":{"import_id":"40AABB_007","time":"2026-11-26T10:15:00Z","state":123456.78,"unit":"kWh","sender":"gateway-01"}}"#
        );
    }

    #[test]
    fn data_point_meter_id_and_suit() {
        let b = body(
            &r(Kind::DataPoint, 0.2301, Some("test")),
            "gw",
            IdField::MeterId,
        )
        .expect("body");
        assert_eq!(
            String::from_utf8(b).expect("utf8"),
            r#"{"data":{"meter_id":"40AABB_007","time":"2026-11-26T10:15:00Z","value":0.2301,"unit":"kWh","sender":"gw","suit":"test"}}"#
        );
    }

    #[test]
    fn numbers_without_spurious_digits() {
        let f = |v: f64| number(v).map(|n| n.to_string());
        assert_eq!(f(230.1).as_deref(), Some("230.1"));
        assert_eq!(f(1000.0).as_deref(), Some("1000"));
        assert_eq!(f(-0.0).as_deref(), Some("0"));
        assert_eq!(f(0.2301).as_deref(), Some("0.2301"));
        assert_eq!(f(1e20).as_deref(), Some("1e+20"));
        assert_eq!(f(f64::NAN), None);
        assert_eq!(f(f64::INFINITY), None);
        assert!(body(&r(Kind::Reading, f64::NAN, None), "gw", IdField::ImportId).is_none());
    }

    #[test]
    fn urls() {
        assert_eq!(
            post_url("https://api.enectiva.cz/", "c-1", Kind::Reading),
            "https://api.enectiva.cz/import/readings/c-1"
        );
        assert_eq!(
            post_url("http://127.0.0.1:9", "c", Kind::DataPoint),
            "http://127.0.0.1:9/import/data_points/c"
        );
        let s = Series::new(Kind::Reading, "A/B", None);
        assert_eq!(
            latest_url("https://x.test/base/", "c", &s)
                .expect("url")
                .as_str(),
            "https://x.test/base/import/readings/c/A%2FB/default/latest"
        );
    }

    #[test]
    fn details() {
        assert_eq!(
            error_detail(r#"{"errors":[{"status":"400","detail":"time is invalid"}]}"#),
            "time is invalid"
        );
        assert_eq!(error_detail(r#"{"detail":"nope"}"#), "nope");
        assert_eq!(error_detail("  plain text  "), "plain text");
        assert_eq!(truncate("žžž", 3), "ž");
    }
}
