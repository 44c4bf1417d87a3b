//! Reading and Series: the one type that crosses poller → queue → sender.
//!
//! A [`Reading`] is created by a bus task from a meter's answer, committed to the queue, and
//! handed to the sender exactly as it was created: its identity (kind, import id, suit), unit and
//! value never change afterwards, whatever happens to the configuration. This module holds only
//! plain data and the pure plausibility rule; it does no IO.

use std::fmt;

/// Where a series is sent: `/import/readings/` or `/import/data_points/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// A cumulative meter state (`state` on the wire).
    Reading,
    /// A custom time series value (`value` on the wire).
    DataPoint,
}

impl Kind {
    /// The name used in the configuration, the queue and `status`.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Reading => "reading",
            Kind::DataPoint => "data_point",
        }
    }

    /// Parses the configuration / database spelling.
    pub fn parse(s: &str) -> Option<Kind> {
        match s {
            "reading" => Some(Kind::Reading),
            "data_point" => Some(Kind::DataPoint),
            _ => None,
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One Enectiva series: (kind, `import_id`, `suit`). Two channels never feed the same series.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Series {
    pub kind: Kind,
    pub import_id: String,
    pub suit: Option<String>,
}

impl Series {
    pub fn new(kind: Kind, import_id: impl Into<String>, suit: Option<String>) -> Series {
        Series {
            kind,
            import_id: import_id.into(),
            suit,
        }
    }
}

impl fmt::Display for Series {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.kind, self.import_id)?;
        if let Some(suit) = &self.suit {
            write!(f, "/{suit}")?;
        }
        Ok(())
    }
}

/// A value taken from a meter, ready to be committed.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    pub series: Series,
    /// When the values arrived, Unix seconds (UTC, whole seconds).
    pub time: i64,
    /// The value as it will be sent (already converted, scaled and rounded).
    pub value: f64,
    /// The unit sent with the value, if any.
    pub unit: Option<String>,
    /// Whether the kernel reported the clock synchronised when the reading was taken.
    pub clock_synced: bool,
    /// Set by the poller when the meter answered with a sentinel ("not available") value;
    /// the reason is kept with the dead letter.
    pub invalid: Option<String>,
}

/// Why a reading must not be sent (it goes to dead letters instead).
#[derive(Debug, Clone, PartialEq)]
pub enum Implausible {
    /// The meter flagged the value as not available (sentinel register value).
    Sentinel(String),
    /// NaN or an infinity: never sent.
    NotFinite,
    /// A cumulative counter lower than the last value queued for its series.
    WentBackwards { from: f64, to: f64 },
}

impl fmt::Display for Implausible {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Implausible::Sentinel(why) => write!(f, "sentinel value: {why}"),
            Implausible::NotFinite => f.write_str("not a finite number"),
            Implausible::WentBackwards { from, to } => {
                write!(f, "went backwards from {from} to {to}")
            }
        }
    }
}

/// The plausibility rule of SPEC §6.1, as a pure function.
///
/// `last` is the last value queued for the reading's series (if any). Sentinels and non-finite
/// values are refused for every kind; the backwards check applies to cumulative readings only.
pub fn plausibility(reading: &Reading, last: Option<f64>) -> Result<(), Implausible> {
    if let Some(why) = &reading.invalid {
        return Err(Implausible::Sentinel(why.clone()));
    }
    if !reading.value.is_finite() {
        return Err(Implausible::NotFinite);
    }
    if reading.series.kind == Kind::Reading {
        if let Some(last) = last {
            if reading.value < last {
                return Err(Implausible::WentBackwards {
                    from: last,
                    to: reading.value,
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(kind: Kind, value: f64) -> Reading {
        Reading {
            series: Series::new(kind, "X", None),
            time: 1_700_000_000,
            value,
            unit: Some("kWh".into()),
            clock_synced: true,
            invalid: None,
        }
    }

    #[test]
    fn plausibility_rules() {
        let r = reading(Kind::Reading, 10.0);
        assert_eq!(plausibility(&r, None), Ok(()));
        assert_eq!(plausibility(&r, Some(10.0)), Ok(()));
        assert_eq!(
            plausibility(&r, Some(10.5)),
            Err(Implausible::WentBackwards {
                from: 10.5,
                to: 10.0
            })
        );
        assert_eq!(
            plausibility(&r, Some(10.5)).unwrap_err().to_string(),
            "went backwards from 10.5 to 10"
        );
        // Data points may go down.
        assert_eq!(
            plausibility(&reading(Kind::DataPoint, 1.0), Some(5.0)),
            Ok(())
        );
        // NaN is refused for both kinds.
        assert_eq!(
            plausibility(&reading(Kind::DataPoint, f64::NAN), None),
            Err(Implausible::NotFinite)
        );
        assert_eq!(
            plausibility(&reading(Kind::Reading, f64::INFINITY), None),
            Err(Implausible::NotFinite)
        );
        let mut s = reading(Kind::Reading, 1.0);
        s.invalid = Some("0xFFFFFFFF".into());
        assert!(matches!(
            plausibility(&s, None),
            Err(Implausible::Sentinel(_))
        ));
    }
}
