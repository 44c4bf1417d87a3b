//! Channel selection (SPEC §6.4): which record of a readout a configured M-Bus channel means,
//! and the one-line description of a record that `read` prints so a user can choose.
//!
//! The rule: a quantity selector matches a record when quantity, storage, tariff, sub-unit and
//! function are equal **and** the selector's modifiers are exactly the record's modifiers,
//! ignoring record-error annotations (`record_error_…`). Every other VIFE modifier changes what
//! a value means — forward and backward volume, per-hour rates, limit values, future values,
//! manufacturer-specific variants — so a selector without modifiers matches only records without
//! any. A selector matching several records is an error naming them, never a silent pick; a
//! `record = N` selector picks by index. Pure: no IO, no logging, no panics.

use super::record::{Record, function_name};
use super::vif::RECORD_ERROR_PREFIX;
use crate::config::MbusSelector;

/// Why a selector does not pick exactly one record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectError {
    #[error("no record is {wanted}; {}", what_there_is(.candidates, .quantities))]
    NotFound {
        wanted: String,
        /// The records with the wanted quantity ([`describe`] lines).
        candidates: Vec<String>,
        /// When there are none: the quantities the readout does have, sorted.
        quantities: Vec<String>,
    },
    #[error("{} records are {wanted}, choose one with `record = N` or more attributes: {}", .candidates.len(), .candidates.join("; "))]
    Ambiguous {
        wanted: String,
        candidates: Vec<String>,
    },
    #[error("record {index} does not exist: the readout has {len} records")]
    IndexOutOfRange { index: usize, len: usize },
}

fn what_there_is(candidates: &[String], quantities: &[String]) -> String {
    if !candidates.is_empty() {
        format!("records with that quantity: {}", candidates.join("; "))
    } else if !quantities.is_empty() {
        format!(
            "the readout has no such quantity; quantities in this readout: {}",
            quantities.join(", ")
        )
    } else {
        "the readout has no records".to_owned()
    }
}

/// The record `selector` (with the channel's VIFE `modifiers`) picks out of a readout.
pub fn select<'a>(
    records: &'a [Record],
    selector: &MbusSelector,
    modifiers: &[String],
) -> Result<&'a Record, SelectError> {
    match selector {
        MbusSelector::Record(index) => {
            records
                .iter()
                .find(|r| r.index == *index)
                .ok_or(SelectError::IndexOutOfRange {
                    index: *index,
                    len: records.len(),
                })
        }
        MbusSelector::Quantity {
            quantity,
            storage,
            tariff,
            subunit,
            function,
        } => {
            let wanted_modifiers = distinguishing(modifiers.iter());
            let matches: Vec<&Record> = records
                .iter()
                .filter(|r| {
                    r.quantity == *quantity
                        && r.storage == *storage
                        && r.tariff == *tariff
                        && r.subunit == *subunit
                        && r.function == *function
                        && distinguishing(r.modifiers.iter()) == wanted_modifiers
                })
                .collect();
            let wanted = attributes(
                quantity,
                *storage,
                *tariff,
                *subunit,
                function_name(*function),
                &wanted_modifiers,
            );
            match matches.as_slice() {
                [one] => Ok(one),
                [] => {
                    let candidates: Vec<String> = records
                        .iter()
                        .filter(|r| r.quantity == *quantity)
                        .map(describe)
                        .collect();
                    let mut quantities: Vec<String> = Vec::new();
                    if candidates.is_empty() {
                        quantities = records.iter().map(|r| r.quantity.clone()).collect();
                        quantities.sort_unstable();
                        quantities.dedup();
                    }
                    Err(SelectError::NotFound {
                        wanted,
                        candidates,
                        quantities,
                    })
                }
                several => Err(SelectError::Ambiguous {
                    wanted,
                    candidates: several.iter().map(|r| describe(r)).collect(),
                }),
            }
        }
    }
}

/// The modifiers that take part in matching, sorted (order in the VIFE chain does not matter).
fn distinguishing<'a>(modifiers: impl Iterator<Item = &'a String>) -> Vec<&'a str> {
    let mut v: Vec<&str> = modifiers
        .map(String::as_str)
        .filter(|m| !m.starts_with(RECORD_ERROR_PREFIX))
        .collect();
    v.sort_unstable();
    v.dedup();
    v
}

fn attributes(
    quantity: &str,
    storage: u64,
    tariff: u32,
    subunit: u32,
    function: &str,
    modifiers: &[&str],
) -> String {
    let mut s =
        format!("{quantity} storage {storage} tariff {tariff} subunit {subunit} {function}");
    if !modifiers.is_empty() {
        s.push_str(&format!(" [{}]", modifiers.join(", ")));
    }
    s
}

/// One line per record for `read`: index, quantity, storage/tariff/subunit/function, modifiers,
/// value and unit — e.g. `record 5: volume storage 0 tariff 0 subunit 0 instantaneous
/// [backward_flow] = 0.042 m3`.
pub fn describe(record: &Record) -> String {
    let modifiers: Vec<&str> = record.modifiers.iter().map(String::as_str).collect();
    let mut line = format!(
        "record {}: {} = {}",
        record.index,
        attributes(
            &record.quantity,
            record.storage,
            record.tariff,
            record.subunit,
            function_name(record.function),
            &modifiers,
        ),
        record.value
    );
    if !record.unit.is_empty() {
        line.push(' ');
        line.push_str(&record.unit);
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::MbusFunction;
    use crate::mbus::record::Value;

    fn rec(index: usize, quantity: &str, storage: u64, modifiers: &[&str]) -> Record {
        Record {
            index,
            function: MbusFunction::Instantaneous,
            storage,
            tariff: 0,
            subunit: 0,
            quantity: quantity.into(),
            unit: "m3".into(),
            value: Value::Number {
                mantissa: 42,
                exponent: -3,
            },
            modifiers: modifiers.iter().map(|m| m.to_string()).collect(),
            dif_vif: vec![],
            data: vec![],
        }
    }

    fn q(quantity: &str, storage: u64) -> MbusSelector {
        MbusSelector::Quantity {
            quantity: quantity.into(),
            storage,
            tariff: 0,
            subunit: 0,
            function: MbusFunction::Instantaneous,
        }
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn direction_modifiers_tell_volumes_apart() {
        let records = vec![
            rec(0, "volume", 0, &["forward_flow"]),
            rec(1, "volume", 0, &["backward_flow"]),
            rec(2, "volume", 0, &["record_error_none"]),
            rec(3, "volume", 1, &[]),
        ];
        // Without modifiers: only the record without meaning-changing modifiers (the record
        // error annotation does not count).
        assert_eq!(
            select(&records, &q("volume", 0), &[]).map(|r| r.index),
            Ok(2)
        );
        assert_eq!(
            select(&records, &q("volume", 0), &strings(&["backward_flow"])).map(|r| r.index),
            Ok(1)
        );
        assert_eq!(
            select(&records, &q("volume", 0), &strings(&["forward_flow"])).map(|r| r.index),
            Ok(0)
        );
        assert_eq!(
            select(&records, &q("volume", 1), &[]).map(|r| r.index),
            Ok(3)
        );
        assert_eq!(
            select(&records, &MbusSelector::Record(1), &[]).map(|r| r.index),
            Ok(1)
        );
        assert_eq!(
            select(&records, &MbusSelector::Record(9), &[]),
            Err(SelectError::IndexOutOfRange { index: 9, len: 4 })
        );
    }

    #[test]
    fn several_matches_are_an_error_naming_them() {
        let records = vec![rec(0, "volume", 0, &[]), rec(4, "volume", 0, &[])];
        let err = select(&records, &q("volume", 0), &[]).expect_err("ambiguous");
        assert_eq!(
            err,
            SelectError::Ambiguous {
                wanted: "volume storage 0 tariff 0 subunit 0 instantaneous".into(),
                candidates: vec![
                    "record 0: volume storage 0 tariff 0 subunit 0 instantaneous = 0.042 m3".into(),
                    "record 4: volume storage 0 tariff 0 subunit 0 instantaneous = 0.042 m3".into(),
                ],
            }
        );
        assert!(err.to_string().contains("record = N"), "{err}");
    }

    #[test]
    fn not_found_lists_what_there_is() {
        let records = vec![
            rec(0, "volume", 0, &["backward_flow"]),
            rec(1, "energy", 0, &[]),
        ];
        let err = select(&records, &q("volume", 0), &[]).expect_err("not found");
        let SelectError::NotFound { candidates, .. } = &err else {
            panic!("{err:?}")
        };
        assert_eq!(
            candidates,
            &vec![
                "record 0: volume storage 0 tariff 0 subunit 0 instantaneous [backward_flow] = 0.042 m3"
                    .to_string()
            ]
        );
        let err = select(&records, &q("power", 0), &[]).expect_err("not found");
        assert_eq!(
            err.to_string(),
            "no record is power storage 0 tariff 0 subunit 0 instantaneous; the readout has no \
             such quantity; quantities in this readout: energy, volume"
        );
        let err = select(&[], &q("power", 0), &[]).expect_err("not found");
        assert!(
            matches!(
                &err,
                SelectError::NotFound { candidates, quantities, .. }
                    if candidates.is_empty() && quantities.is_empty()
            ),
            "{err:?}"
        );
        assert!(
            err.to_string().ends_with("the readout has no records"),
            "{err}"
        );
    }
}
