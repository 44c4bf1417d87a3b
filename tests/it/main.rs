//! The integration tests: one test binary, one module per area, all on loopback, real SQLite
//! files in temporary directories and pseudo-terminals for serial lines.

mod cli;
mod common;
mod config;
mod crash;
mod daemon;
mod mbus;
mod mbus_decode;
mod ops;
mod rtu;
mod sender;
