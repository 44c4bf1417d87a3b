//! enectiva-collector: an edge daemon that reads Modbus and M-Bus energy meters, commits every
//! reading to a durable SQLite queue and delivers it to the Enectiva import API.
//!
//! The library holds everything; `main.rs` only parses the command line and maps errors to exit
//! codes. Data flows one way: bus task → [`queue`] → [`sender`]. Protocol cores
//! ([`modbus::plan`], [`units`], [`sender::classify`], …) are pure: no IO, no clock, no spawning.

pub mod app;
pub mod bus;
pub mod ca;
pub mod clock;
pub mod commands;
pub mod config;
pub mod events;
pub mod logging;
pub mod mbus;
pub mod modbus;
pub mod notify;
pub mod profile;
pub mod queue;
pub mod reading;
pub mod schedule;
pub mod sender;
pub mod sim;
pub mod token;
pub mod units;
