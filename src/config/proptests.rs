//! Property tests of the whole configuration load path (`Config::from_bytes`, the path `check`
//! and the daemon use once the file is read): arbitrary bytes, arbitrary TOML-like text and
//! random mutations of `config/example.toml` never panic, and each either loads or is refused
//! with diagnostics that point inside the text (1-based line and column of a character that
//! exists, or just past the end of its line). The in-CI counterpart of the `config` fuzz target
//! (`fuzz/fuzz_targets/config.rs`); owns no production code.

use std::path::Path;

use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

use super::{Config, ConfigError};

const EXAMPLE: &str = include_str!("../../config/example.toml");
/// A directory that does not exist, so relative paths in a mutated config name nothing.
const PATH: &str = "/nonexistent/enectiva-proptest/config.toml";

/// Pieces the mutations and the TOML-like generator splice in: section headers, keys, values
/// of every TOML type, the characters that end strings, tables and lines, and multi-byte text.
const TOKENS: &[&str] = &[
    "[api]",
    "[queue]",
    "[log]",
    "[clock]",
    "[[modbus_tcp]]",
    "[[modbus_tcp.meter]]",
    "[[modbus_rtu]]",
    "[[modbus_rtu.meter]]",
    "[[mbus]]",
    "[[mbus.meter]]",
    "[[mbus.meter.channels]]",
    "channels = [",
    "customer_id = \"0c7f1e2a-3b4c-4d5e-8f90-a1b2c3d4e5f6\"",
    "name = \"x\"",
    "import_id = \"A\"",
    "quantity = \"energy\"",
    "register = ",
    "type = \"f64\"",
    "unit = \"kWh\"",
    "profile = \"eastron-sdm630\"",
    "address = ",
    "secondary_address = \"12345678\"",
    "profiles_dir = \".\"",
    "timeout = ",
    "interval = \"1s\"",
    "max_registers = 1",
    "decimals = 15",
    "scale = ",
    "=",
    " = ",
    "\"",
    "'",
    "\"\"\"",
    "[",
    "]",
    "{",
    "}",
    ",",
    ".",
    "#",
    "\n",
    "\r\n",
    "\t",
    "\\",
    "\\u00e9",
    "é",
    "°C",
    "\u{0}",
    "0",
    "-1",
    "65535",
    "65536",
    "0xFFFF",
    "9223372036854775807",
    "99999999999999999999",
    "1e400",
    "-0.0",
    "nan",
    "inf",
    "true",
    "1979-05-27T07:32:00Z",
    "\"0ms\"",
    "\"213503982334601d\"",
    "\"1h30m\"",
    "\"auto\"",
];

/// Every diagnostic of the file itself has a line and column inside `text`; the only one
/// without a place is the missing `[api]` section (there is nothing to point at).
fn check(text: &str, result: &Result<Config, ConfigError>) -> Result<(), TestCaseError> {
    let lines: Vec<&str> = text.split('\n').collect();
    let diagnostics = match result {
        Ok(c) => &c.warnings,
        Err(e) => {
            prop_assert!(!e.diagnostics.is_empty(), "an error without diagnostics");
            &e.diagnostics
        }
    };
    for d in diagnostics {
        prop_assert!(!d.message.is_empty(), "empty message: {d:?}");
        if d.file != Path::new(PATH) {
            // A profile file's own problem (profiles_dir pointing somewhere real).
            continue;
        }
        match (d.line, d.column) {
            (Some(line), Some(column)) => {
                prop_assert!(
                    (1..=lines.len()).contains(&line),
                    "line {line} of {}: {d}",
                    lines.len()
                );
                let chars = lines[line - 1].chars().count();
                prop_assert!(
                    (1..=chars + 1).contains(&column),
                    "column {column} of a {chars}-character line: {d}"
                );
            }
            (None, None) => prop_assert!(
                d.item == "api" && d.message.starts_with("missing section [api]"),
                "a diagnostic without a place: {d}"
            ),
            _ => prop_assert!(false, "a line without a column or the reverse: {d:?}"),
        }
    }
    Ok(())
}

fn load(text: &str) -> Result<(), TestCaseError> {
    let result = Config::from_bytes(text.as_bytes(), Path::new(PATH));
    check(text, &result)
}

/// What a key holds, so generated values mostly have the right TOML type.
#[derive(Debug, Clone, Copy)]
enum Ty {
    Str,
    Int,
    Float,
    Bool,
    List,
}

/// Every table with its keys, as `raw.rs` declares them.
const TABLES: &[(&str, &[(&str, Ty)])] = &[
    (
        "[api]",
        &[
            ("base_url", Ty::Str),
            ("customer_id", Ty::Str),
            ("token_file", Ty::Str),
            ("sender", Ty::Str),
            ("id_field", Ty::Str),
            ("timeout", Ty::Str),
            ("max_in_flight", Ty::Int),
            ("max_backoff", Ty::Str),
            ("ca_file", Ty::Str),
        ],
    ),
    (
        "[queue]",
        &[
            ("path", Ty::Str),
            ("max_readings", Ty::Int),
            ("max_age", Ty::Str),
        ],
    ),
    ("[log]", &[("level", Ty::Str)]),
    ("[clock]", &[("require_sync", Ty::Bool)]),
    (
        "[[modbus_tcp]]",
        &[
            ("name", Ty::Str),
            ("address", Ty::Str),
            ("timeout", Ty::Str),
            ("delay", Ty::Str),
        ],
    ),
    ("[[modbus_tcp.meter]]", MODBUS_METER),
    ("[[modbus_tcp.meter.channels]]", MODBUS_CHANNEL),
    (
        "[[modbus_rtu]]",
        &[
            ("name", Ty::Str),
            ("port", Ty::Str),
            ("baud", Ty::Int),
            ("parity", Ty::Str),
            ("data_bits", Ty::Int),
            ("stop_bits", Ty::Int),
            ("timeout", Ty::Str),
            ("delay", Ty::Str),
        ],
    ),
    ("[[modbus_rtu.meter]]", MODBUS_METER),
    ("[[modbus_rtu.meter.channels]]", MODBUS_CHANNEL),
    (
        "[[mbus]]",
        &[
            ("name", Ty::Str),
            ("port", Ty::Str),
            ("baud", Ty::Int),
            ("timeout", Ty::Str),
            ("retries", Ty::Int),
        ],
    ),
    (
        "[[mbus.meter]]",
        &[
            ("name", Ty::Str),
            ("address", Ty::Int),
            ("secondary_address", Ty::Str),
            ("interval", Ty::Str),
        ],
    ),
    (
        "[[mbus.meter.channels]]",
        &[
            ("import_id", Ty::Str),
            ("kind", Ty::Str),
            ("unit", Ty::Str),
            ("suit", Ty::Str),
            ("scale", Ty::Float),
            ("offset", Ty::Float),
            ("decimals", Ty::Int),
            ("quantity", Ty::Str),
            ("storage", Ty::Int),
            ("tariff", Ty::Int),
            ("subunit", Ty::Int),
            ("function", Ty::Str),
            ("modifiers", Ty::List),
            ("record", Ty::Int),
        ],
    ),
];

const MODBUS_METER: &[(&str, Ty)] = &[
    ("name", Ty::Str),
    ("unit_id", Ty::Int),
    ("interval", Ty::Str),
    ("profile", Ty::Str),
    ("timeout", Ty::Str),
    ("delay", Ty::Str),
    ("max_registers", Ty::Int),
    ("max_gap", Ty::Int),
];

const MODBUS_CHANNEL: &[(&str, Ty)] = &[
    ("import_id", Ty::Str),
    ("kind", Ty::Str),
    ("unit", Ty::Str),
    ("suit", Ty::Str),
    ("scale", Ty::Float),
    ("offset", Ty::Float),
    ("decimals", Ty::Int),
    ("quantity", Ty::Str),
    ("register", Ty::Int),
    ("table", Ty::Str),
    ("type", Ty::Str),
    ("order", Ty::Str),
];

const CUSTOMER: &str = "\"0c7f1e2a-3b4c-4d5e-8f90-a1b2c3d4e5f6\"";
const STRINGS: &[&str] = &[
    "\"x\"",
    "\"y\"",
    "\"\"",
    "\"a b\"",
    "\"é\"",
    "\"https://127.0.0.1:1/\"",
    "\"http://example.com\"",
    CUSTOMER,
    "\"meter_id\"",
    "\"30s\"",
    "\"0s\"",
    "\"1h30m\"",
    "\"500ms\"",
    "\"213503982334601d\"",
    "\"auto\"",
    "\"10.0.0.1:502\"",
    "\"[::1]:502\"",
    "\"/dev/null\"",
    "\"/dev/ttyUSB0\"",
    "\"input\"",
    "\"holding\"",
    "\"f32\"",
    "\"u64\"",
    "\"i16\"",
    "\"CDAB\"",
    "\"DCBA\"",
    "\"kWh\"",
    "\"W\"",
    "\"°C\"",
    "\"K\"",
    "\"energy\"",
    "\"volume\"",
    "\"power\"",
    "\"import_energy_total\"",
    "\"voltage_l1\"",
    "\"eastron-sdm630\"",
    "\"abb-b23\"",
    "\"data_point\"",
    "\"reading\"",
    "\"even\"",
    "\"none\"",
    "\"maximum\"",
    "\"error\"",
    "\"12345678\"",
    "\"12345678KAM0804\"",
    "\"1234567824C40804\"",
    "\"1234567FFFFFFFFF\"",
    "\"info,enectiva_collector=debug\"",
    "\"inof\"",
];
const INTS: &[&str] = &[
    "0",
    "1",
    "-1",
    "2",
    "5",
    "7",
    "64",
    "65",
    "247",
    "250",
    "251",
    "255",
    "256",
    "65535",
    "65536",
    "300",
    "2400",
    "9600",
    "921600",
    "921601",
    "124",
    "125",
    "126",
    "15",
    "16",
    "0x0156",
    "9223372036854775807",
    "-9223372036854775808",
];
const FLOATS: &[&str] = &[
    "0.0", "-0.0", "0.1", "1.0", "-40", "1e308", "-1e308", "5e-324", "nan", "inf", "-inf",
];
const LISTS: &[&str] = &["[]", "[\"backward_flow\"]", "[\"x\", \"x\"]", "[1]"];

/// Keys of one table: which keys (each used once) and which value for each.
type Picks = Vec<(prop::sample::Index, prop::sample::Index, bool)>;

fn picks() -> impl Strategy<Value = Picks> {
    prop::collection::vec(
        (
            any::<prop::sample::Index>(),
            any::<prop::sample::Index>(),
            prop::bool::weighted(0.9),
        ),
        0..8,
    )
}

/// `header` and a `key = value` line per picked key: values of the key's type most of the
/// time, any string otherwise.
fn render_table(out: &mut Vec<String>, header: &str, keys: &[(&str, Ty)], picks: &Picks) {
    out.push(header.to_owned());
    let mut used = Vec::new();
    if header == "[api]" && picks.len() % 4 != 0 {
        // Mostly a valid customer id, so validation goes on to the buses.
        out.push(format!("customer_id = {CUSTOMER}"));
        used.push("customer_id");
    }
    for (key, value, typed) in picks {
        let (k, ty) = *key.get(keys);
        if used.contains(&k) {
            continue;
        }
        used.push(k);
        let values = match (typed, ty) {
            (false, _) | (true, Ty::Str) => STRINGS,
            (true, Ty::Int) => INTS,
            (true, Ty::Float) => FLOATS,
            (true, Ty::Bool) => &["true", "false"][..],
            (true, Ty::List) => LISTS,
        };
        out.push(format!("{k} = {}", value.get(values)));
    }
}

fn table(header: &str) -> &'static [(&'static str, Ty)] {
    TABLES
        .iter()
        .find(|(h, _)| *h == header)
        .map_or(&[][..], |(_, keys)| *keys)
}

/// A configuration's tree: optional `[api]`, `[queue]`, `[log]`, `[clock]`, then buses of
/// the three kinds with meters and channels, keys from `raw.rs` and values valid and not; then
/// now and then a line of [`TOKENS`] spliced in anywhere. Much of it gets past stage 1 into validation,
/// which random characters almost never do.
fn toml_like() -> impl Strategy<Value = String> {
    let meter = (picks(), prop::collection::vec(picks(), 0..4));
    let bus = (0usize..3, picks(), prop::collection::vec(meter, 0..3));
    (
        prop::collection::vec(prop::option::weighted(0.8, picks()), 4),
        prop::collection::vec(bus, 0..3),
        prop::option::weighted(
            0.3,
            (any::<prop::sample::Index>(), prop::sample::select(TOKENS)),
        ),
    )
        .prop_map(|(sections, buses, noise)| {
            let mut out = Vec::new();
            for (header, p) in ["[api]", "[queue]", "[log]", "[clock]"]
                .iter()
                .zip(&sections)
            {
                if let Some(p) = p {
                    render_table(&mut out, header, table(header), p);
                }
            }
            for (kind, bus, meters) in &buses {
                let name = ["modbus_tcp", "modbus_rtu", "mbus"][*kind];
                let header = format!("[[{name}]]");
                render_table(&mut out, &header, table(&header), bus);
                for (meter, channels) in meters {
                    let header = format!("[[{name}.meter]]");
                    render_table(&mut out, &header, table(&header), meter);
                    for channel in channels {
                        let header = format!("[[{name}.meter.channels]]");
                        render_table(&mut out, &header, table(&header), channel);
                    }
                }
            }
            if let Some((at, token)) = noise {
                let p = at.index(out.len() + 1);
                out.insert(p, token.to_owned());
            }
            out.join("\n")
        })
}

/// One edit of the example: at a character position (taken modulo the length), delete some
/// characters, insert a token, replace a character by a token, duplicate or drop a line, or cut
/// the text there.
#[derive(Debug, Clone)]
enum Edit {
    Delete(prop::sample::Index, usize),
    Insert(prop::sample::Index, &'static str),
    Replace(prop::sample::Index, &'static str),
    DuplicateLine(prop::sample::Index),
    DropLine(prop::sample::Index),
    Truncate(prop::sample::Index),
}

fn edit() -> impl Strategy<Value = Edit> {
    let token = || prop::sample::select(TOKENS);
    prop_oneof![
        3 => (any::<prop::sample::Index>(), 1usize..4).prop_map(|(i, n)| Edit::Delete(i, n)),
        3 => (any::<prop::sample::Index>(), token()).prop_map(|(i, t)| Edit::Insert(i, t)),
        3 => (any::<prop::sample::Index>(), token()).prop_map(|(i, t)| Edit::Replace(i, t)),
        1 => any::<prop::sample::Index>().prop_map(Edit::DuplicateLine),
        1 => any::<prop::sample::Index>().prop_map(Edit::DropLine),
        1 => any::<prop::sample::Index>().prop_map(Edit::Truncate),
    ]
}

fn apply(text: &str, edit: &Edit) -> String {
    let mut chars: Vec<char> = text.chars().collect();
    let at = |i: &prop::sample::Index, len: usize| i.index(len.max(1)).min(len);
    match edit {
        Edit::Delete(i, n) => {
            let start = at(i, chars.len());
            let end = (start + n).min(chars.len());
            chars.drain(start..end);
        }
        Edit::Insert(i, t) => {
            let p = at(i, chars.len() + 1);
            chars.splice(p..p, t.chars());
        }
        Edit::Replace(i, t) => {
            let p = at(i, chars.len());
            let end = (p + 1).min(chars.len());
            chars.splice(p..end, t.chars());
        }
        Edit::DuplicateLine(i) | Edit::DropLine(i) => {
            let mut lines: Vec<&str> = text.split('\n').collect();
            let l = at(i, lines.len()).min(lines.len().saturating_sub(1));
            if matches!(edit, Edit::DuplicateLine(_)) {
                lines.insert(l, lines[l]);
            } else {
                lines.remove(l);
            }
            return lines.join("\n");
        }
        Edit::Truncate(i) => chars.truncate(at(i, chars.len())),
    }
    chars.into_iter().collect()
}

#[test]
fn the_example_loads_and_passes_the_check() {
    let result = Config::from_bytes(EXAMPLE.as_bytes(), Path::new(PATH));
    assert!(result.is_ok(), "{result:?}");
    if let Err(e) = check(EXAMPLE, &result) {
        panic!("{e}");
    }
}

#[test]
fn invalid_utf8_is_the_message_read_to_string_gave() {
    // `load` used to call `std::fs::read_to_string`; its error text for the same bytes is kept.
    let bytes = b"[api]\ncustomer_id = \"\xFF\"\n";
    let Err(e) = Config::from_bytes(bytes, Path::new(PATH)) else {
        panic!("invalid UTF-8 accepted");
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("config.toml");
    std::fs::write(&file, bytes).expect("write the config");
    let Err(std_error) = std::fs::read_to_string(&file) else {
        panic!("std accepted invalid UTF-8");
    };
    assert_eq!(e.diagnostics.len(), 1);
    let d = &e.diagnostics[0];
    assert_eq!(
        d.message,
        format!("cannot read the configuration: {std_error}")
    );
    assert_eq!((d.line, d.column), (None, None));
    // And `load` of that file says the same, naming the file.
    let Err(loaded) = Config::load(&file) else {
        panic!("invalid UTF-8 accepted by load");
    };
    assert_eq!(loaded.diagnostics.len(), 1);
    assert_eq!(loaded.diagnostics[0].message, d.message);
    assert_eq!(loaded.diagnostics[0].file, file);
}

proptest! {
    #[test]
    fn arbitrary_bytes_load_or_are_refused(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        let result = Config::from_bytes(&bytes, Path::new(PATH));
        match std::str::from_utf8(&bytes) {
            Ok(text) => check(text, &result)?,
            Err(_) => {
                let Err(e) = result else {
                    return Err(TestCaseError::fail("invalid UTF-8 accepted"));
                };
                prop_assert_eq!(e.diagnostics.len(), 1);
                prop_assert!(e.diagnostics[0].message.contains("valid UTF-8"), "{}", e);
            }
        }
    }

    #[test]
    fn arbitrary_text_loads_or_is_refused_with_a_place(text in any::<String>()) {
        load(&text)?;
    }

    #[test]
    fn toml_like_text_loads_or_is_refused_with_a_place(text in toml_like()) {
        load(&text)?;
    }

    #[test]
    fn mutated_example_loads_or_is_refused_with_a_place(
        edits in prop::collection::vec(edit(), 1..6),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut text = EXAMPLE.to_owned();
        for e in &edits {
            text = apply(&text, e);
        }
        load(&text)?;
        // The file cut at any byte (a write interrupted halfway): a cut inside a multi-byte
        // character is refused as not UTF-8, any other cut is text like the rest.
        let bytes = &text.as_bytes()[..cut.index(text.len() + 1)];
        let result = Config::from_bytes(bytes, Path::new(PATH));
        match std::str::from_utf8(bytes) {
            Ok(t) => check(t, &result)?,
            Err(_) => prop_assert!(result.is_err()),
        }
    }
}
