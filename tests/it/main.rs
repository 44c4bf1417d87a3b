//! Integration tests: one test binary, one module per area (add yours here). Tests drive the
//! library through its public API with files under `tests/data/`; they never touch the network
//! beyond loopback and never depend on the order in which they run.

mod config;
