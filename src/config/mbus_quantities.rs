//! The M-Bus quantity names a channel may select (SPEC §7) and the unit the decoder normalizes
//! each one to: the single list shared by config validation and the M-Bus record decoder.
//!
//! Plain data only. The names are snake_case English as in `mbus decode` JSON; the base units
//! follow libmbus's `.norm.xml` normalization (energy in Wh, volume in m3, temperatures in °C,
//! durations in seconds, …). `None` means the value has no unit that a conversion could act on
//! (identifiers, dates, flags, counters). Only this file may grow the list.

/// (quantity name, base unit of its normalized value).
///
/// Energy records given in J (VIF 08–0F) and power in J/h (VIF 30–37) are normalized by the
/// decoder into the same quantity; the config only needs a representative unit to check that a
/// channel's `unit` measures the same thing.
pub const MBUS_QUANTITIES: &[(&str, Option<&str>)] = &[
    // Primary VIF table.
    ("energy", Some("Wh")),
    ("volume", Some("m3")),
    ("mass", Some("kg")),
    ("on_time", Some("s")),
    ("operating_time", Some("s")),
    ("power", Some("W")),
    ("volume_flow", Some("m3/h")),
    ("mass_flow", Some("kg/h")),
    ("flow_temperature", Some("°C")),
    ("return_temperature", Some("°C")),
    ("temperature_difference", Some("K")),
    ("external_temperature", Some("°C")),
    ("pressure", Some("bar")),
    ("time_point", None),
    ("units_for_hca", None),
    ("averaging_duration", Some("s")),
    ("actuality_duration", Some("s")),
    ("fabrication_number", None),
    ("enhanced_identification", None),
    ("bus_address", None),
    // Main extension table (VIF FD).
    ("credit", None),
    ("debit", None),
    ("access_number", None),
    ("medium", None),
    ("manufacturer", None),
    ("parameter_set_id", None),
    ("model_version", None),
    ("hardware_version", None),
    ("firmware_version", None),
    ("software_version", None),
    ("customer_location", None),
    ("customer", None),
    ("access_code_user", None),
    ("access_code_operator", None),
    ("access_code_system_operator", None),
    ("access_code_developer", None),
    ("password", None),
    ("error_flags", None),
    ("error_mask", None),
    ("digital_output", None),
    ("digital_input", None),
    ("baud_rate", None),
    ("response_delay_time", None),
    ("retry", None),
    ("first_storage_number", None),
    ("last_storage_number", None),
    ("storage_block_size", None),
    ("storage_interval", Some("s")),
    ("duration_since_last_readout", Some("s")),
    ("tariff_start", None),
    ("tariff_duration", Some("s")),
    ("tariff_period", Some("s")),
    ("dimensionless", None),
    ("voltage", Some("V")),
    ("current", Some("A")),
    ("reset_counter", None),
    ("cumulation_counter", None),
    ("control_signal", None),
    ("day_of_week", None),
    ("week_number", None),
    ("time_point_of_day_change", None),
    ("parameter_activation_state", None),
    ("special_supplier_information", None),
    ("duration_since_last_cumulation", Some("s")),
    ("battery_operating_time", Some("s")),
    ("battery_change_time", None),
    ("remote_control", None),
    // Alternate extension table (VIF FB) and newer editions.
    ("reactive_energy", Some("varh")),
    ("apparent_energy", Some("VAh")),
    ("temperature_limit", Some("°C")),
    ("cumulative_max_power", Some("W")),
    ("reactive_power", Some("var")),
    ("apparent_power", Some("VA")),
    ("frequency", Some("Hz")),
    ("relative_humidity", Some("%")),
    // The legacy fixed data structure (CI 73) has a temperature without flow/return.
    ("temperature", Some("°C")),
    // A plain-text VIF: the meter names its own unit, which the record carries.
    ("plain_text", None),
];

/// Whether `name` is an M-Bus quantity, and its base unit.
pub fn mbus_quantity(name: &str) -> Option<Option<&'static str>> {
    MBUS_QUANTITIES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, unit)| *unit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_snake_case() {
        let mut seen = std::collections::BTreeSet::new();
        for (name, _) in MBUS_QUANTITIES {
            assert!(seen.insert(*name), "{name} twice");
            assert!(
                name.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
                "{name}"
            );
        }
        assert_eq!(mbus_quantity("energy"), Some(Some("Wh")));
        assert_eq!(mbus_quantity("fabrication_number"), Some(None));
        assert_eq!(mbus_quantity("energie"), None);
    }
}
