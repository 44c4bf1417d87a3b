//! Build script: records when the binary was built as `ENECTIVA_BUILD_TIME` (Unix seconds), the
//! floor below which `clock` takes the system clock for wrong (SPEC §6.1). It honours
//! `SOURCE_DATE_EPOCH` so reproducible builds stay byte-identical.
//!
//! It must not generate code, link anything or pull in crates: one environment variable only.
//! It reruns only when `SOURCE_DATE_EPOCH` or this file changes, so without `SOURCE_DATE_EPOCH`
//! the value is the first build's time, which is still a valid floor for later builds.

use std::env::VarError;
use std::time::{SystemTime, UNIX_EPOCH};

fn main() -> Result<(), String> {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=SOURCE_DATE_EPOCH");
    let secs = match std::env::var("SOURCE_DATE_EPOCH") {
        // The reproducible-builds spec asks a malformed value to fail the build rather than be
        // replaced by the current time silently.
        Ok(v) => v
            .trim()
            .parse::<i64>()
            .map_err(|e| format!("SOURCE_DATE_EPOCH={v:?} is not a Unix timestamp: {e}"))?,
        Err(VarError::NotUnicode(v)) => {
            return Err(format!("SOURCE_DATE_EPOCH={v:?} is not a Unix timestamp"));
        }
        Err(VarError::NotPresent) => SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
            // A build host whose clock is before 1970 gets no floor at all rather than a failure.
            .unwrap_or(0),
    };
    println!("cargo:rustc-env=ENECTIVA_BUILD_TIME={secs}");
    Ok(())
}
