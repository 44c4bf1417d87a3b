//! Simulated peers for tests and the `demo` command: a stand-in of the Enectiva import API
//! ([`api`]), a Modbus TCP endpoint with simulated meters behind it ([`modbus`]), an RS-485
//! line with Modbus RTU meters on an in-process pseudo-terminal ([`rtu`]), and a wired M-Bus
//! (a level converter with slaves) on a pseudo-terminal too ([`mbus`]). Everything here binds
//! to loopback or a pty only and is used by tests and `demo`, never by the daemon's own send or
//! poll path; nothing here may reuse the crate's wire code, because the stand-in exists to check
//! that code independently against SPEC §4.

pub mod api;
pub mod mbus;
pub mod modbus;
mod pty;
pub mod rtu;
