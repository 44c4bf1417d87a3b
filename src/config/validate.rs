//! Validation. STUB.
use super::{Config, ConfigError};
use std::path::Path;
use std::time::Duration;
pub fn parse_duration(_s: &str) -> Result<Duration, String> {
    todo!()
}
pub(super) fn load(_path: &Path) -> Result<Config, ConfigError> {
    todo!()
}
pub(super) fn parse(_text: &str, _path: &Path) -> Result<Config, ConfigError> {
    todo!()
}
