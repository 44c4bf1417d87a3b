//! Request planner. STUB: interface only, to be implemented.

use super::{RegisterSpec, Table};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadRequest {
    pub table: Table,
    pub start: u16,
    pub count: u16,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub requests: Vec<ReadRequest>,
    pub slots: Vec<(usize, u16)>,
}

pub fn plan(_specs: &[RegisterSpec], _max_registers: u16, _max_gap: u16) -> Plan {
    todo!()
}
