//! Wired M-Bus (EN 13757): our own stack, since no crate covers the master side. `frame` is the
//! link layer and `record` the application layer, both pure; the serial edge lives in `bus`.

pub mod frame;
