//! Wired M-Bus (EN 13757): our own stack, since no crate covers the master side. `frame` is the
//! link layer and `record` the application layer (with its VIF tables in `vif`), both pure;
//! `json` renders a decoded answer for `mbus decode`, `select` maps a channel to a record; the
//! serial edge lives in `bus`.

pub mod bus;
pub mod frame;
pub mod json;
pub mod record;
pub mod select;
pub mod vif;
