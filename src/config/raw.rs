//! Raw config (serde mirror of the file). STUB.
