//! Helpers shared by the integration test modules.

use std::path::Path;
use std::time::Duration;

use enectiva_collector::config::IdField;
use enectiva_collector::reading::{Kind, Reading, Series};
use enectiva_collector::sender::SenderSettings;
use enectiva_collector::token::TokenSource;

pub const CUSTOMER: &str = "0c7f4a52-2d1e-4e59-9b0a-6d1f3c2b8e11";

/// Sender settings for tests: short retry intervals, the token read from `token_file`.
pub fn sender_settings(base_url: String, token_file: &Path) -> SenderSettings {
    SenderSettings {
        base_url,
        customer_id: CUSTOMER.into(),
        sender: "gateway-test".into(),
        id_field: IdField::ImportId,
        timeout: Duration::from_secs(2),
        max_in_flight: 2,
        max_backoff: Duration::from_secs(2),
        backoff_base: Duration::from_secs(1),
        ca_file: None,
        token: Some(TokenSource::File(token_file.to_path_buf())),
        auth_retry: Duration::from_millis(300),
        error_log_every: Duration::from_secs(600),
        rescan: Duration::from_millis(200),
    }
}

/// A reading in kWh with a synchronised clock.
pub fn reading(kind: Kind, id: &str, time: i64, value: f64) -> Reading {
    Reading {
        series: Series::new(kind, id, None),
        time,
        value,
        unit: Some("kWh".into()),
        clock_synced: true,
        invalid: None,
    }
}

/// Whether strace can run here (I/O-error injection). Without it the calling test skips, or
/// fails when CI asks for every tool (`ENECTIVA_REQUIRE_TOOLS`).
pub fn strace_available() -> bool {
    let have = std::process::Command::new("strace")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success());
    if !have {
        assert!(
            std::env::var_os("ENECTIVA_REQUIRE_TOOLS").is_none(),
            "strace is required here (apt-get install strace)"
        );
        eprintln!("skipped: strace is not installed (CI installs it)");
    }
    have
}
