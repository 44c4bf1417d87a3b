//! Simulated peers for tests and the `demo` command: a stand-in of the Enectiva import API
//! ([`api`]) and a Modbus TCP endpoint with simulated meters behind it ([`modbus`]). Everything
//! here binds to loopback only and is used by tests and `demo`, never by the daemon's own send or
//! poll path; nothing here may reuse the crate's wire code, because the stand-in exists to check
//! that code independently against SPEC §4.

pub mod api;
pub mod modbus;
