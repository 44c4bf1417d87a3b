//! Meter profiles. STUB: interface only, to be implemented.

use std::collections::BTreeMap;

use crate::modbus::{DataType, Table, WordOrder};

#[derive(Debug, Clone, PartialEq)]
pub struct ProfileQuantity {
    pub register: u16,
    pub table: Table,
    pub data_type: DataType,
    pub order: WordOrder,
    pub unit: Option<String>,
    pub scale: f64,
    pub note: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Profile {
    pub name: String,
    pub description: String,
    pub table: Table,
    pub order: WordOrder,
    pub max_registers: u16,
    pub max_gap: u16,
    pub verified: bool,
    pub source: String,
    pub builtin: bool,
    pub quantities: BTreeMap<String, ProfileQuantity>,
}

#[derive(Debug, Clone, Default)]
pub struct Registry {
    profiles: BTreeMap<String, Profile>,
}

impl Registry {
    pub fn get(&self, name: &str) -> Option<&Profile> {
        self.profiles.get(name)
    }
}
