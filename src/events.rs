//! Fixed journald `MESSAGE_ID`s of loss and recovery events (SPEC §8), so field tooling can run
//! `journalctl MESSAGE_ID=…`. Log these as the `message_id` field; the journald layer maps it.
//! Each id is a random 128-bit value chosen once; never change one that has shipped.

/// Readings dropped by a queue bound (`max_readings`, `max_age`, memory while the disk is full).
pub const QUEUE_DROPPED: &str = "6b1f5c0e2d8a4f47a3c1e9b27d54a610";
/// A reading moved to the dead letters (rejected by the API or implausible).
pub const READING_DEAD_LETTERED: &str = "0f3e8a7c91d24b6a8e5f2c7d1a9b3e42";
/// A corrupt queue file was set aside and a fresh queue started.
pub const QUEUE_SET_ASIDE: &str = "c4a9e2f17b3d4c58a1e6f0b9d2c7e813";
/// The queue's write-ahead log was damaged: SQLite ignores the frames after the damage. The
/// readings in its intact frames were carried into the queue (`recovered`), the rest of those
/// transactions is lost; a copy of the log was kept for inspection.
pub const QUEUE_WAL_DAMAGED: &str = "f3fed7e400334c638930a7c16370f36a";
/// The queue's disk is full: readings wait in memory.
pub const QUEUE_DISK_FULL: &str = "9d2b7e4f1c8a4e3b9f6a2d5c8e1b7a04";
/// The queue is writable again after a full disk.
pub const QUEUE_DISK_OK: &str = "2e7c9a1f4b6d4e8a9c3f5b7d1e2a8c06";
/// An I/O error on commit: the process exits so systemd restarts it.
pub const QUEUE_IO_ERROR: &str = "e81f3b5d7a9c4e2f8b1d6a4c9e3f7b25";
/// The API refused our credentials or URL (401/403/404/406/415) or the breaker tripped:
/// sending is paused.
pub const API_AUTH_FAILED: &str = "5a8c2e9f3d1b4a7e8c6f0d2b9a4e1c37";
/// Sending resumed after an authentication or breaker pause.
pub const API_RESUMED: &str = "b3d9f1a6c8e24b5d9a7e3c1f6b8d2e49";
/// A meter went down (failed three consecutive slots).
pub const METER_DOWN: &str = "7f4a1c9e2b8d4f6a9e3c7b1d5a2f8e60";
/// A meter answers again.
pub const METER_UP: &str = "1c6e8b3f9a2d4c7e8f1b5a9d3e6c2f74";
