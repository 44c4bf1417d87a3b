//! Meter profiles: named Modbus register maps (table, word order, request limits and the
//! quantities a meter offers), built in from `config/profiles/*.toml` and optionally added or
//! replaced from a user directory (`profiles_dir`).
//!
//! This module owns the profile file format and its validation: a syntax or type error stops
//! at the first problem, a semantic one (unknown table, a register running past 0xFFFF, …) is
//! reported at the earliest place in the file, always with file, line and column. Profiles
//! from a user directory are input, so nothing here panics on them. It never touches a meter,
//! converts units or resolves channels; the configuration does that with what it finds here.

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use crate::modbus::plan::ReadRequest;
use crate::modbus::{
    DEFAULT_MAX_GAP, DataType, MAX_REGISTERS_PER_REQUEST, RegisterSpec, Table, WordOrder,
};

/// The built-in profiles: (name, TOML text). Names equal the file stems (a test checks it).
pub const BUILTIN: &[(&str, &str)] = &[
    ("abb-b23", include_str!("../config/profiles/abb-b23.toml")),
    (
        "carlo-gavazzi-em24",
        include_str!("../config/profiles/carlo-gavazzi-em24.toml"),
    ),
    (
        "carlo-gavazzi-em340",
        include_str!("../config/profiles/carlo-gavazzi-em340.toml"),
    ),
    (
        "eastron-sdm120",
        include_str!("../config/profiles/eastron-sdm120.toml"),
    ),
    (
        "eastron-sdm630",
        include_str!("../config/profiles/eastron-sdm630.toml"),
    ),
    (
        "eastron-sdm72",
        include_str!("../config/profiles/eastron-sdm72.toml"),
    ),
    (
        "finder-7m",
        include_str!("../config/profiles/finder-7m.toml"),
    ),
    (
        "janitza-umg96rm",
        include_str!("../config/profiles/janitza-umg96rm.toml"),
    ),
    (
        "schneider-iem3000",
        include_str!("../config/profiles/schneider-iem3000.toml"),
    ),
    (
        "socomec-countis-e",
        include_str!("../config/profiles/socomec-countis-e.toml"),
    ),
];

/// One value a meter offers.
#[derive(Debug, Clone, PartialEq)]
pub struct ProfileQuantity {
    /// PDU address (0-based).
    pub register: u16,
    pub table: Table,
    pub data_type: DataType,
    pub order: WordOrder,
    /// The unit of `raw × scale`; `Some("")` for dimensionless values (power factor), `None`
    /// when the profile does not say.
    pub unit: Option<String>,
    /// Raw register value × `scale` gives `unit` (1 when the file sets none).
    pub scale: f64,
    pub note: Option<String>,
}

impl ProfileQuantity {
    /// Where the value lives and how to read it.
    pub fn spec(&self) -> RegisterSpec {
        RegisterSpec {
            table: self.table,
            address: self.register,
            data_type: self.data_type,
            order: self.order,
        }
    }
}

/// A meter's register map.
#[derive(Debug, Clone, PartialEq)]
pub struct Profile {
    /// Equals the file stem.
    pub name: String,
    /// The meter models it covers.
    pub description: String,
    /// Default table of its quantities.
    pub table: Table,
    /// Default word order of its quantities.
    pub order: WordOrder,
    /// Registers per request the meter serves, 1..=125.
    pub max_registers: u16,
    /// Unwanted registers worth reading to merge two requests.
    pub max_gap: u16,
    /// Register blocks the meter serves whole: a request inside one is widened to the block
    /// (SPEC §6.3, `plan::widen`).
    pub blocks: Vec<ReadRequest>,
    /// False where public register maps disagree; `check` warns about such profiles.
    pub verified: bool,
    /// Where the map comes from, and where sources differ.
    pub source: String,
    pub builtin: bool,
    pub quantities: BTreeMap<String, ProfileQuantity>,
    /// The file it was read from (for built-ins, its path in the source tree).
    pub path: PathBuf,
    /// The TOML text as written, for `profiles NAME`.
    pub toml_text: String,
}

impl Profile {
    /// Parses and validates one profile. `name_hint` is the file stem, which the profile's
    /// `name` must equal; `file` is used in error messages.
    pub fn parse(
        name_hint: &str,
        text: &str,
        file: &Path,
        builtin: bool,
    ) -> Result<Profile, ProfileError> {
        let raw: RawProfile = toml::from_str(text)
            .map_err(|e| ProfileError::at(file, text, e.span(), e.message().to_string()))?;
        build(name_hint, raw, text, file, builtin)
    }

    /// The original TOML text.
    pub fn toml_source(&self) -> &str {
        &self.toml_text
    }

    /// The register spec of one quantity.
    pub fn spec(&self, quantity: &str) -> Option<RegisterSpec> {
        self.quantities.get(quantity).map(ProfileQuantity::spec)
    }

    /// A human-readable listing for `profiles NAME`.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail; the results are ignored for that reason only.
        let _ = writeln!(out, "{}: {}", self.name, self.description);
        let origin = if self.builtin { "built-in" } else { "user" };
        let _ = writeln!(out, "  {origin} profile, {}", self.path.display());
        let _ = writeln!(
            out,
            "  default table {}, word order {}, at most {} registers per request, gaps of up to {} registers merged",
            self.table, self.order, self.max_registers, self.max_gap
        );
        if !self.blocks.is_empty() {
            let blocks: Vec<String> = self.blocks.iter().map(ToString::to_string).collect();
            let _ = writeln!(
                out,
                "  read whole: {} (a request inside a block reads all of it)",
                blocks.join(", ")
            );
        }
        if self.verified {
            let _ = writeln!(out, "  verified: yes (public register maps agree)");
        } else {
            let _ = writeln!(
                out,
                "  verified: NO (register maps disagree or are unconfirmed; check values on the meter)"
            );
        }
        if !self.source.trim().is_empty() {
            let _ = writeln!(out, "  source:");
            for line in wrap(self.source.trim(), 92) {
                let _ = writeln!(out, "    {line}");
            }
        }
        let _ = writeln!(out, "  quantities ({}):", self.quantities.len());

        // In register order, so the listing reads like the vendor's register map.
        let mut by_register: Vec<(&String, &ProfileQuantity)> = self.quantities.iter().collect();
        by_register.sort_by_key(|(name, q)| (q.table, q.register, *name));
        let rows: Vec<[String; 7]> = by_register
            .iter()
            .map(|(name, q)| {
                [
                    name.to_string(),
                    q.table.to_string(),
                    format!("0x{:04X} ({})", q.register, q.register),
                    q.data_type.to_string(),
                    q.order.to_string(),
                    match q.unit.as_deref() {
                        None => "?".to_string(),
                        Some("") => "-".to_string(),
                        Some(u) => u.to_string(),
                    },
                    format!("{}", q.scale),
                ]
            })
            .collect();
        let header = [
            "name", "table", "register", "type", "order", "unit", "scale",
        ]
        .map(str::to_string);
        let mut widths = [0usize; 7];
        for row in std::iter::once(&header).chain(&rows) {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let line = |row: &[String; 7]| {
            let mut s = String::from("    ");
            for (cell, w) in row.iter().zip(widths) {
                let _ = write!(s, "{cell:<w$}  ");
            }
            s.trim_end().to_string()
        };
        let _ = writeln!(out, "{}", line(&header));
        for (row, (_, q)) in rows.iter().zip(&by_register) {
            let _ = writeln!(out, "{}", line(row));
            if let Some(note) = &q.note {
                let _ = writeln!(out, "      note: {note}");
            }
        }
        out
    }
}

/// A problem with a profile file: where it is and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProfileError {
    pub file: PathBuf,
    /// 1-based; `None` when the problem is the file as a whole (e.g. it cannot be read).
    pub line: Option<usize>,
    /// 1-based, in characters.
    pub column: Option<usize>,
    pub message: String,
}

impl ProfileError {
    fn at(file: &Path, text: &str, span: Option<Range<usize>>, message: String) -> ProfileError {
        let (line, column) = match span {
            Some(span) => {
                let (l, c) = line_col(text, span.start);
                (Some(l), Some(c))
            }
            None => (None, None),
        };
        ProfileError {
            file: file.to_path_buf(),
            line,
            column,
            message,
        }
    }

    fn whole(file: &Path, message: String) -> ProfileError {
        ProfileError {
            file: file.to_path_buf(),
            line: None,
            column: None,
            message,
        }
    }
}

impl fmt::Display for ProfileError {
    /// `path:line:col: message`, or `path: message` without a position.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(column) = self.column {
                write!(f, ":{column}")?;
            }
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ProfileError {}

/// All known profiles, by name.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    profiles: BTreeMap<String, Profile>,
}

impl Registry {
    /// The built-in profiles.
    pub fn builtin() -> Registry {
        let mut registry = Registry::default();
        for (name, text) in BUILTIN {
            let path = PathBuf::from(format!("config/profiles/{name}.toml"));
            match Profile::parse(name, text, &path, true) {
                Ok(p) => {
                    registry.insert(p);
                }
                // A test parses every built-in, so this is a build defect; losing one profile
                // beats refusing to start.
                Err(e) => tracing::error!(error = %e, "built-in profile is invalid; skipped"),
            }
        }
        registry
    }

    /// Parses one profile (see [`Profile::parse`]).
    pub fn parse(
        name_hint: &str,
        text: &str,
        file: &Path,
        builtin: bool,
    ) -> Result<Profile, ProfileError> {
        Profile::parse(name_hint, text, file, builtin)
    }

    /// Adds a profile, returning the one of the same name it replaces.
    pub fn insert(&mut self, profile: Profile) -> Option<Profile> {
        self.profiles.insert(profile.name.clone(), profile)
    }

    /// Adds every `*.toml` profile in `dir` (in file name order); a user profile replaces a
    /// built-in or earlier one of the same name. All or nothing: on the first invalid file
    /// nothing is added. Returns notes worth showing the operator (replacements).
    pub fn load_dir(&mut self, dir: &Path) -> Result<Vec<String>, ProfileError> {
        let (profiles, errors) = read_dir(dir);
        if let Some(e) = errors.into_iter().next() {
            return Err(e);
        }
        Ok(self.add_user(profiles))
    }

    /// Like [`Registry::load_dir`], but adds every valid profile and returns all problems, so
    /// `check` can report every broken file at once.
    pub fn load_dir_all(&mut self, dir: &Path) -> (Vec<String>, Vec<ProfileError>) {
        let (profiles, errors) = read_dir(dir);
        (self.add_user(profiles), errors)
    }

    pub fn get(&self, name: &str) -> Option<&Profile> {
        self.profiles.get(name)
    }

    /// Profile names, sorted.
    pub fn names(&self) -> Vec<&str> {
        self.profiles.keys().map(String::as_str).collect()
    }

    /// Profiles in name order.
    pub fn iter(&self) -> impl Iterator<Item = &Profile> {
        self.profiles.values()
    }

    pub fn len(&self) -> usize {
        self.profiles.len()
    }

    pub fn is_empty(&self) -> bool {
        self.profiles.is_empty()
    }

    fn add_user(&mut self, profiles: Vec<Profile>) -> Vec<String> {
        let mut notes = Vec::new();
        for p in profiles {
            let path = p.path.display().to_string();
            let name = p.name.clone();
            match self.insert(p) {
                Some(old) if old.builtin => notes.push(format!(
                    "user profile \"{name}\" ({path}) replaces the built-in one"
                )),
                Some(old) => notes.push(format!(
                    "user profile \"{name}\" ({path}) replaces the one from {}",
                    old.path.display()
                )),
                None => {}
            }
        }
        notes
    }
}

/// Reads and parses the `*.toml` files of `dir`, sorted by file name.
fn read_dir(dir: &Path) -> (Vec<Profile>, Vec<ProfileError>) {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => {
            let msg = format!("cannot read the profile directory: {e}");
            return (Vec::new(), vec![ProfileError::whole(dir, msg)]);
        }
    };
    let mut errors = Vec::new();
    let mut paths = Vec::new();
    for entry in entries {
        match entry {
            Ok(entry) => {
                let path = entry.path();
                // metadata() follows symlinks, so a linked profile file counts.
                let is_file = std::fs::metadata(&path).is_ok_and(|m| m.is_file());
                if is_file && path.extension().is_some_and(|ext| ext == "toml") {
                    paths.push(path);
                }
            }
            Err(e) => errors.push(ProfileError::whole(
                dir,
                format!("cannot list the profile directory: {e}"),
            )),
        }
    }
    paths.sort();

    let mut profiles = Vec::new();
    for path in paths {
        let Some(stem) = path.file_stem().and_then(|s| s.to_str()) else {
            errors.push(ProfileError::whole(
                &path,
                "the file name is not valid UTF-8; name profile files after their profile".into(),
            ));
            continue;
        };
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) => {
                errors.push(ProfileError::whole(&path, format!("cannot read: {e}")));
                continue;
            }
        };
        match Profile::parse(stem, &text, &path, false) {
            Ok(p) => profiles.push(p),
            Err(e) => errors.push(e),
        }
    }
    (profiles, errors)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProfile {
    name: Spanned<String>,
    #[serde(default)]
    description: String,
    table: Option<Spanned<String>>,
    order: Option<Spanned<String>>,
    max_registers: Option<Spanned<u16>>,
    max_gap: Option<u16>,
    #[serde(default)]
    blocks: Vec<RawBlock>,
    #[serde(default)]
    verified: bool,
    #[serde(default)]
    source: String,
    quantities: Spanned<BTreeMap<Spanned<String>, RawQuantity>>,
}

/// `blocks = [{ start = 0x0000, count = 80 }]`; `table` defaults to the profile's.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBlock {
    table: Option<Spanned<String>>,
    start: Spanned<u16>,
    count: Spanned<u16>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawQuantity {
    register: Spanned<u16>,
    // Required although channels default to u16: a map that silently reads the wrong width
    // would give plausible wrong numbers.
    #[serde(rename = "type")]
    data_type: Spanned<String>,
    table: Option<Spanned<String>>,
    order: Option<Spanned<String>>,
    unit: Option<String>,
    scale: Option<Spanned<f64>>,
    note: Option<String>,
}

/// Semantic problems, each with its byte span; the earliest is reported.
struct Problems {
    found: Vec<(usize, String)>,
}

impl Problems {
    fn add<T>(&mut self, at: &Spanned<T>, message: String) {
        self.found.push((at.span().start, message));
    }
}

fn build(
    name_hint: &str,
    raw: RawProfile,
    text: &str,
    file: &Path,
    builtin: bool,
) -> Result<Profile, ProfileError> {
    let mut problems = Problems { found: Vec::new() };

    let name = raw.name.get_ref();
    if name != name_hint {
        problems.add(
            &raw.name,
            format!(
                "profile name \"{name}\" must equal the file name \"{name_hint}\" (without .toml)"
            ),
        );
    } else if !valid_profile_name(name) {
        problems.add(
            &raw.name,
            format!("profile name \"{name}\" may only use letters, digits, '-', '_' and '.'"),
        );
    }

    let table = parse_table(raw.table.as_ref(), &mut problems).unwrap_or(Table::Holding);
    let order = parse_order(raw.order.as_ref(), &mut problems).unwrap_or(WordOrder::Abcd);
    let max_registers = match &raw.max_registers {
        Some(m) if !(1..=MAX_REGISTERS_PER_REQUEST).contains(m.get_ref()) => {
            problems.add(
                m,
                format!(
                    "max_registers = {} is outside 1..={MAX_REGISTERS_PER_REQUEST}",
                    m.get_ref()
                ),
            );
            MAX_REGISTERS_PER_REQUEST
        }
        Some(m) => *m.get_ref(),
        None => MAX_REGISTERS_PER_REQUEST,
    };

    if raw.quantities.get_ref().is_empty() {
        problems.add(&raw.quantities, "the profile defines no quantities".into());
    }
    let mut quantities = BTreeMap::new();
    for (key, q) in raw.quantities.into_inner() {
        let qname = key.get_ref();
        if !valid_quantity_name(qname) {
            problems.add(
                &key,
                format!("quantity name \"{qname}\" must be snake_case (a-z, 0-9, _; starting with a letter)"),
            );
        }
        let Some(data_type) = parse_type(&q.data_type, &mut problems) else {
            continue;
        };
        let q_table = match &q.table {
            Some(t) => parse_table(Some(t), &mut problems).unwrap_or(table),
            None => table,
        };
        let q_order = match &q.order {
            Some(o) => parse_order(Some(o), &mut problems).unwrap_or(order),
            None => order,
        };
        let register = *q.register.get_ref();
        let words = data_type.words();
        if u32::from(register) + u32::from(words) > 0x1_0000 {
            problems.add(
                &q.register,
                format!(
                    "quantity \"{qname}\": {data_type} at 0x{register:04X} needs {words} registers and runs past the last address 0xFFFF"
                ),
            );
        }
        if words > max_registers {
            problems.add(
                &q.data_type,
                format!(
                    "quantity \"{qname}\": {data_type} needs {words} registers, more than max_registers = {max_registers}"
                ),
            );
        }
        let scale = match &q.scale {
            Some(s) if !s.get_ref().is_finite() || *s.get_ref() == 0.0 => {
                problems.add(
                    s,
                    format!("quantity \"{qname}\": scale must be a finite, non-zero number"),
                );
                1.0
            }
            Some(s) => *s.get_ref(),
            None => 1.0,
        };
        quantities.insert(
            qname.clone(),
            ProfileQuantity {
                register,
                table: q_table,
                data_type,
                order: q_order,
                unit: q.unit,
                scale,
                note: q.note,
            },
        );
    }

    let mut blocks = Vec::new();
    for b in &raw.blocks {
        let count = *b.count.get_ref();
        let start = *b.start.get_ref();
        if count == 0 || count > max_registers {
            problems.add(
                &b.count,
                format!("block count = {count} is outside 1..=max_registers ({max_registers})"),
            );
        } else if u32::from(start) + u32::from(count) > 0x1_0000 {
            problems.add(&b.count, "block runs past register 0xFFFF".to_string());
        } else {
            blocks.push(ReadRequest {
                table: parse_table(b.table.as_ref(), &mut problems).unwrap_or(table),
                start,
                count,
            });
        }
    }

    if let Some((offset, message)) = problems.found.into_iter().min_by_key(|(o, _)| *o) {
        return Err(ProfileError::at(file, text, Some(offset..offset), message));
    }
    Ok(Profile {
        name: raw.name.into_inner(),
        description: raw.description,
        table,
        order,
        max_registers,
        max_gap: raw.max_gap.unwrap_or(DEFAULT_MAX_GAP),
        blocks,
        verified: raw.verified,
        source: raw.source,
        builtin,
        quantities,
        path: file.to_path_buf(),
        toml_text: text.to_string(),
    })
}

fn parse_table(s: Option<&Spanned<String>>, problems: &mut Problems) -> Option<Table> {
    let s = s?;
    let parsed = Table::parse(s.get_ref());
    if parsed.is_none() {
        problems.add(
            s,
            format!(
                "unknown table \"{}\" (expected {})",
                s.get_ref(),
                one_of(Table::NAMES)
            ),
        );
    }
    parsed
}

fn parse_order(s: Option<&Spanned<String>>, problems: &mut Problems) -> Option<WordOrder> {
    let s = s?;
    let parsed = WordOrder::parse(s.get_ref());
    if parsed.is_none() {
        problems.add(
            s,
            format!(
                "unknown word order \"{}\" (expected {})",
                s.get_ref(),
                one_of(WordOrder::NAMES)
            ),
        );
    }
    parsed
}

fn parse_type(s: &Spanned<String>, problems: &mut Problems) -> Option<DataType> {
    let parsed = DataType::parse(s.get_ref());
    if parsed.is_none() {
        problems.add(
            s,
            format!(
                "unknown type \"{}\" (expected {})",
                s.get_ref(),
                one_of(DataType::NAMES)
            ),
        );
    }
    parsed
}

fn one_of(names: &[&str]) -> String {
    let quoted: Vec<String> = names.iter().map(|n| format!("\"{n}\"")).collect();
    format!("one of {}", quoted.join(", "))
}

fn valid_profile_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn valid_quantity_name(name: &str) -> bool {
    name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// 1-based line and column (in characters) of a byte offset; offsets past the end or inside
/// a character are clamped rather than trusted.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

/// Greedy word wrap for the source note.
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut current = String::new();
    for word in text.split_whitespace() {
        if !current.is_empty() && current.chars().count() + 1 + word.chars().count() > width {
            lines.push(std::mem::take(&mut current));
        }
        if !current.is_empty() {
            current.push(' ');
        }
        current.push_str(word);
    }
    if !current.is_empty() {
        lines.push(current);
    }
    lines
}

// Tests may unwrap (house rule: no unwrap outside tests); the crate lint would flag them.
#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::modbus::plan::{plan, widen};

    const COMMON: &[&str] = &[
        "voltage_l1",
        "voltage_l2",
        "voltage_l3",
        "current_l1",
        "current_l2",
        "current_l3",
        "active_power_l1",
        "active_power_l2",
        "active_power_l3",
        "active_power_total",
        "power_factor_total",
        "frequency",
        "import_energy_total",
        "export_energy_total",
    ];

    fn parse(text: &str) -> Result<Profile, ProfileError> {
        Profile::parse("x", text, Path::new("/p/x.toml"), false)
    }

    const MINIMAL: &str = r#"
name = "x"
[quantities]
import_energy_total = { register = 0x0048, type = "f32", unit = "kWh" }
"#;

    #[test]
    fn every_builtin_profile_loads() {
        let registry = Registry::builtin();
        assert_eq!(registry.len(), BUILTIN.len());
        for required in [
            "eastron-sdm630",
            "eastron-sdm120",
            "eastron-sdm72",
            "abb-b23",
            "carlo-gavazzi-em24",
            "carlo-gavazzi-em340",
            "janitza-umg96rm",
            "schneider-iem3000",
            "finder-7m",
            "socomec-countis-e",
        ] {
            assert!(registry.get(required).is_some(), "{required} missing");
        }
        for (name, text) in BUILTIN {
            let path = PathBuf::from(format!("config/profiles/{name}.toml"));
            if let Err(e) = Profile::parse(name, text, &path, true) {
                panic!("{e}");
            }
        }
    }

    #[test]
    fn builtin_names_equal_file_stems() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/profiles");
        let mut stems: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "toml"))
            .map(|p| p.file_stem().unwrap().to_str().unwrap().to_string())
            .collect();
        stems.sort();
        let embedded: Vec<&str> = BUILTIN.iter().map(|(n, _)| *n).collect();
        assert_eq!(
            stems, embedded,
            "BUILTIN must embed every file in config/profiles"
        );
        for (name, text) in BUILTIN {
            let on_disk = std::fs::read_to_string(dir.join(format!("{name}.toml"))).unwrap();
            assert_eq!(&on_disk, text);
        }
        for p in Registry::builtin().iter() {
            assert!(p.builtin);
            assert_eq!(p.path.file_stem().unwrap().to_str(), Some(p.name.as_str()));
        }
    }

    #[test]
    fn builtin_quantities_are_well_formed() {
        for p in Registry::builtin().iter() {
            assert!(!p.description.is_empty(), "{}", p.name);
            assert!(!p.source.is_empty(), "{}", p.name);
            assert!((1..=MAX_REGISTERS_PER_REQUEST).contains(&p.max_registers));
            for (name, q) in &p.quantities {
                let spec = q.spec();
                assert!(spec.end() <= 0x1_0000, "{}.{name}", p.name);
                assert!(q.data_type.words() <= p.max_registers, "{}.{name}", p.name);
                assert!(q.unit.is_some(), "{}.{name} has no unit", p.name);
                assert!(q.scale.is_finite() && q.scale != 0.0);
            }
            assert!(
                p.quantities.contains_key("import_energy_total"),
                "{} lacks import_energy_total",
                p.name
            );
        }
    }

    #[test]
    fn common_quantities_exist_where_the_meter_has_them() {
        let registry = Registry::builtin();
        let has_all = |name: &str, except: &[&str]| {
            let p = registry.get(name).unwrap();
            for q in COMMON.iter().filter(|q| !except.contains(q)) {
                assert!(p.quantities.contains_key(*q), "{name} lacks {q}");
            }
        };
        has_all("eastron-sdm630", &[]);
        has_all("abb-b23", &[]);
        has_all("carlo-gavazzi-em24", &[]);
        has_all("carlo-gavazzi-em340", &[]);
        has_all("finder-7m", &[]);
        // The reference lists only cos φ per phase for the UMG 96 RM.
        has_all("janitza-umg96rm", &["power_factor_total"]);
        // Schneider's power factor is 4-quadrant encoded, so it has another name.
        has_all("schneider-iem3000", &["power_factor_total"]);
        // No power factor in the Countis map.
        has_all("socomec-countis-e", &["power_factor_total"]);
        let single_phase = [
            "voltage_l2",
            "voltage_l3",
            "current_l2",
            "current_l3",
            "active_power_l2",
            "active_power_l3",
        ];
        has_all("eastron-sdm120", &single_phase);
        let sdm72 = registry.get("eastron-sdm72").unwrap();
        assert_eq!(
            sdm72.quantities.keys().collect::<Vec<_>>(),
            [
                "active_power_total",
                "export_energy_total",
                "import_energy_total",
                "total_energy"
            ]
        );
    }

    #[test]
    fn flags_and_facts_from_the_reference() {
        let r = Registry::builtin();
        let unverified: Vec<&str> = r
            .iter()
            .filter(|p| !p.verified)
            .map(|p| p.name.as_str())
            .collect();
        assert_eq!(
            unverified,
            [
                "carlo-gavazzi-em24",
                "eastron-sdm72",
                "finder-7m",
                "janitza-umg96rm",
                "schneider-iem3000",
                "socomec-countis-e"
            ]
        );
        let abb = &r.get("abb-b23").unwrap().quantities["import_energy_total"];
        assert_eq!(
            (abb.register, abb.data_type, abb.scale, abb.unit.as_deref()),
            (0x5000, DataType::U64, 0.01, Some("kWh"))
        );
        let janitza = &r.get("janitza-umg96rm").unwrap().quantities["import_energy_total"];
        assert_eq!(
            (janitza.register, janitza.scale, janitza.unit.as_deref()),
            (19068, 1.0, Some("Wh"))
        );
        let em24 = r.get("carlo-gavazzi-em24").unwrap();
        assert_eq!(em24.order, WordOrder::Cdab);
        assert!(
            em24.quantities["export_energy_total"]
                .note
                .as_deref()
                .unwrap()
                .contains("exception 02")
        );
        let sdm = r.get("eastron-sdm630").unwrap();
        assert_eq!((sdm.table, sdm.max_registers), (Table::Input, 80));
        assert_eq!(sdm.quantities["total_energy"].register, 0x0156);
    }

    /// The grouping each profile's limits were chosen for (reference §3.10).
    #[test]
    fn builtin_limits_give_the_documented_requests() {
        let r = Registry::builtin();
        let requests = |name: &str, quantities: &[&str]| -> Vec<String> {
            let p = r.get(name).unwrap();
            let specs: Vec<_> = quantities.iter().map(|q| p.spec(q).unwrap()).collect();
            widen(
                plan(&specs, p.max_registers, p.max_gap),
                &p.blocks,
                p.max_registers,
            )
            .requests
            .iter()
            .map(|q| q.to_string())
            .collect()
        };
        let all = |name: &str| -> Vec<String> {
            let p = r.get(name).unwrap();
            let names: Vec<&str> = p.quantities.keys().map(String::as_str).collect();
            requests(name, &names)
        };
        let sdm_block: Vec<&str> = r
            .get("eastron-sdm630")
            .unwrap()
            .quantities
            .iter()
            .filter(|(_, q)| q.register < 0x50)
            .map(|(n, _)| n.as_str())
            .collect();
        assert_eq!(requests("eastron-sdm630", &sdm_block), ["input 0x0000+80"]);
        // The common quantities (voltages, currents, total power, frequency, import and
        // export) read as the whole 80-register block, plus the total energy at 0x0156.
        let common = [
            "voltage_l1",
            "voltage_l2",
            "voltage_l3",
            "current_l1",
            "current_l2",
            "current_l3",
            "active_power_total",
            "frequency",
            "import_energy_total",
            "export_energy_total",
            "total_energy",
        ];
        assert_eq!(
            requests("eastron-sdm630", &common),
            ["input 0x0000+80", "input 0x0156+2"]
        );
        assert_eq!(
            all("eastron-sdm630"),
            ["input 0x0000+80", "input 0x0156+16"]
        );
        assert_eq!(all("eastron-sdm120"), ["input 0x0000+80", "input 0x0156+2"]);
        assert_eq!(
            all("abb-b23"),
            ["holding 0x5000+8", "holding 0x5460+24", "holding 0x5B00+62"]
        );
        assert_eq!(all("carlo-gavazzi-em24"), ["input 0x0000+94"]);
        assert_eq!(all("carlo-gavazzi-em340"), ["input 0x0000+80"]);
        assert_eq!(
            all("janitza-umg96rm"),
            ["holding 0x4A38+52", "holding 0x4A76+16"]
        );
        assert_eq!(
            all("schneider-iem3000"),
            [
                "holding 0x0BB7+112",
                "holding 0x0C83+24",
                "holding 0x0DBD+12"
            ]
        );
        assert_eq!(all("finder-7m"), ["input 0x09C4+86", "input 0x0AC0+8"]);
        assert_eq!(
            all("socomec-countis-e"),
            ["holding 0xC558+30", "holding 0xC702+8"]
        );
    }

    #[test]
    fn render_lists_every_quantity() {
        let r = Registry::builtin();
        for p in r.iter() {
            let text = p.render();
            assert!(text.starts_with(&format!("{}: ", p.name)));
            for name in p.quantities.keys() {
                assert!(text.contains(name.as_str()), "{}: {name}", p.name);
            }
            assert_eq!(p.toml_source(), p.toml_text);
        }
        let text = r.get("eastron-sdm630").unwrap().render();
        assert!(text.contains("verified: yes"));
        assert!(
            text.lines().any(|l| {
                let cells: Vec<&str> = l.split_whitespace().collect();
                cells
                    == [
                        "total_energy",
                        "input",
                        "0x0156",
                        "(342)",
                        "f32",
                        "ABCD",
                        "kWh",
                        "1",
                    ]
            }),
            "{text}"
        );
        let abb = r.get("abb-b23").unwrap().render();
        assert!(
            abb.lines().any(|l| l.split_whitespace().collect::<Vec<_>>()
                == [
                    "power_factor_total",
                    "holding",
                    "0x5B3A",
                    "(23354)",
                    "i16",
                    "ABCD",
                    "-",
                    "0.001"
                ]),
            "{abb}"
        );
        assert!(
            r.get("schneider-iem3000")
                .unwrap()
                .render()
                .contains("verified: NO")
        );
    }

    #[test]
    fn minimal_profile_takes_defaults_and_overrides() {
        let p = parse(MINIMAL).unwrap();
        assert_eq!((p.table, p.order), (Table::Holding, WordOrder::Abcd));
        assert_eq!((p.max_registers, p.max_gap), (125, DEFAULT_MAX_GAP));
        assert!(!p.verified && !p.builtin);
        let text = r#"
name = "x"
table = "input"
order = "CDAB"
max_registers = 1
max_gap = 0
[quantities]
a = { register = 1, type = "u16", table = "holding", order = "DCBA", scale = 10, note = "n" }
b = { register = 65535, type = "i16" }
"#;
        let p = parse(text).unwrap();
        let a = &p.quantities["a"];
        assert_eq!(
            (a.table, a.order, a.scale),
            (Table::Holding, WordOrder::Dcba, 10.0)
        );
        assert_eq!(a.note.as_deref(), Some("n"));
        let b = &p.quantities["b"];
        assert_eq!(
            (b.table, b.order, b.scale, b.unit.as_deref()),
            (Table::Input, WordOrder::Cdab, 1.0, None)
        );
    }

    /// (profile text, expected line, column, part of the message)
    const BROKEN: &[(&str, usize, usize, &str)] = &[
        (
            "name = \"x\"\n[quantities]\na = { register = 1, type = \"f32\"\n",
            3,
            33,
            "",
        ),
        (
            "name = \"x\"\ncolour = 1\n[quantities]\na = { register = 1, type = \"f32\" }\n",
            2,
            1,
            "unknown field `colour`",
        ),
        (
            "name = \"x\"\n[quantities]\na = { register = 1, type = \"f32\", bogus = 2 }\n",
            3,
            35,
            "unknown field `bogus`",
        ),
        (
            "name = \"x\"\n[quantities]\na = { register = 70000, type = \"f32\" }\n",
            3,
            18,
            "",
        ),
        (
            "name = \"x\"\n[quantities]\na = { register = 1 }\n",
            3,
            5,
            "type",
        ),
        (
            "name = \"y\"\n[quantities]\na = { register = 1, type = \"f32\" }\n",
            1,
            8,
            "must equal the file name \"x\"",
        ),
        (
            "name = \"x\"\ntable = \"coils\"\n[quantities]\na = { register = 1, type = \"f32\" }\n",
            2,
            9,
            "unknown table \"coils\"",
        ),
        (
            "name = \"x\"\norder = \"abcd\"\n[quantities]\na = { register = 1, type = \"f32\" }\n",
            2,
            9,
            "unknown word order",
        ),
        (
            "name = \"x\"\n[quantities]\na = { register = 1, type = \"float\" }\n",
            3,
            28,
            "unknown type \"float\"",
        ),
        (
            "name = \"x\"\n[quantities]\na = { register = 0xFFFF, type = \"f32\" }\n",
            3,
            18,
            "runs past the last address",
        ),
        (
            "name = \"x\"\n[quantities]\na = { register = 0xFFFC, type = \"f64\" }\nb = { register = 0xFFFD, type = \"u64\" }\n",
            4,
            18,
            "quantity \"b\"",
        ),
        (
            "name = \"x\"\nmax_registers = 126\n[quantities]\na = { register = 1, type = \"f32\" }\n",
            2,
            17,
            "outside 1..=125",
        ),
        (
            "name = \"x\"\nmax_registers = 0\n[quantities]\na = { register = 1, type = \"f32\" }\n",
            2,
            17,
            "outside 1..=125",
        ),
        (
            "name = \"x\"\nmax_registers = 1\n[quantities]\na = { register = 1, type = \"f32\" }\n",
            4,
            28,
            "more than max_registers = 1",
        ),
        (
            "name = \"x\"\n[quantities]\nVoltage = { register = 1, type = \"f32\" }\n",
            3,
            1,
            "snake_case",
        ),
        (
            "name = \"x\"\n[quantities]\na = { register = 1, type = \"f32\", scale = nan }\n",
            3,
            43,
            "scale",
        ),
        (
            "name = \"x\"\n[quantities]\na = { register = 1, type = \"f32\", scale = 0 }\n",
            3,
            43,
            "scale",
        ),
        ("name = \"x\"\n[quantities]\n", 2, 1, "no quantities"),
        (
            "name = \"x\"\n# é ü\n[quantities]\n\"é\" = { register = 1, type = \"f32\" }\n",
            4,
            1,
            "snake_case",
        ),
        // Columns count characters, not bytes.
        (
            "name = \"x\"\n[quantities]\na = { register = 1, type = \"f32\", note = \"éé\", scale = 0 }\n",
            3,
            56,
            "scale",
        ),
        (
            "name = \"x\"\n[quantities]\na = { register = 1, type = \"f32\" }\na = { register = 2, type = \"f32\" }\n",
            4,
            1,
            "",
        ),
    ];

    #[test]
    fn malformed_profiles_give_line_and_column() {
        for &(text, line, column, message) in BROKEN {
            let e = match parse(text) {
                Ok(_) => panic!("accepted:\n{text}"),
                Err(e) => e,
            };
            assert_eq!(
                (e.line, e.column),
                (Some(line), Some(column)),
                "{e}\n{text}"
            );
            assert!(e.message.contains(message), "{e}");
            assert!(
                e.to_string()
                    .starts_with(&format!("/p/x.toml:{line}:{column}: ")),
                "{e}"
            );
        }
    }

    #[test]
    fn line_col_handles_any_offset() {
        let text = "ab\nçd\n";
        assert_eq!(line_col(text, 0), (1, 1));
        assert_eq!(line_col(text, 3), (2, 1));
        assert_eq!(line_col(text, 4), (2, 1)); // inside 'ç': clamped back
        assert_eq!(line_col(text, 5), (2, 2));
        assert_eq!(line_col(text, 999), (3, 1));
        assert_eq!(line_col("", 5), (1, 1));
    }

    #[test]
    fn load_dir_adds_and_replaces() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("my-meter.toml"),
            MINIMAL.replace("\"x\"", "\"my-meter\""),
        )
        .unwrap();
        let replacement = MINIMAL.replace("\"x\"", "\"eastron-sdm72\"");
        std::fs::write(dir.path().join("eastron-sdm72.toml"), &replacement).unwrap();
        std::fs::write(dir.path().join("README.md"), "not a profile").unwrap();
        std::fs::create_dir(dir.path().join("sub.toml")).unwrap();

        let mut r = Registry::builtin();
        let notes = r.load_dir(dir.path()).unwrap();
        assert_eq!(notes.len(), 1, "{notes:?}");
        assert!(
            notes[0].contains("\"eastron-sdm72\"")
                && notes[0].contains("replaces the built-in one")
        );
        let mine = r.get("my-meter").unwrap();
        assert!(!mine.builtin);
        assert_eq!(mine.path, dir.path().join("my-meter.toml"));
        assert!(!r.get("eastron-sdm72").unwrap().builtin);
        assert_eq!(r.get("eastron-sdm72").unwrap().toml_source(), replacement);
        assert_eq!(r.len(), BUILTIN.len() + 1);
        assert!(r.names().contains(&"my-meter"));
        assert!(r.names().windows(2).all(|w| w[0] < w[1]));

        // Loading again replaces the user profiles themselves.
        let notes = r.load_dir(dir.path()).unwrap();
        assert_eq!(notes.len(), 2, "{notes:?}");
    }

    #[test]
    fn load_dir_is_all_or_nothing_and_load_dir_all_reports_everything() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.toml"), MINIMAL.replace("\"x\"", "\"a\"")).unwrap();
        std::fs::write(dir.path().join("b.toml"), "name = \"b\"\n[quantities\n").unwrap();
        std::fs::write(dir.path().join("c.toml"), MINIMAL).unwrap();

        let mut r = Registry::default();
        let e = r.load_dir(dir.path()).unwrap_err();
        assert_eq!(e.file, dir.path().join("b.toml"));
        assert_eq!((e.line, e.column), (Some(2), Some(12)), "{e}");
        assert!(r.is_empty());

        let (notes, errors) = r.load_dir_all(dir.path());
        assert!(notes.is_empty());
        assert_eq!(errors.len(), 2);
        assert_eq!(errors[1].file, dir.path().join("c.toml"));
        assert!(errors[1].message.contains("must equal the file name \"c\""));
        assert_eq!(r.names(), ["a"]);

        let missing = dir.path().join("nope");
        let e = Registry::default().load_dir(&missing).unwrap_err();
        assert_eq!((e.file.as_path(), e.line), (missing.as_path(), None));
        assert!(
            e.to_string()
                .starts_with(&format!("{}: cannot read", missing.display()))
        );
    }

    #[test]
    fn arbitrary_text_never_panics() {
        use proptest::prelude::*;
        proptest!(|(text in "(name|=|\"x\"|\\[quantities\\]|a|register|type|\"f32\"|0x[0-9A-F]{1,5}|[{},\n ]|é){0,40}")| {
            let _ = parse(&text);
        });
    }
}
