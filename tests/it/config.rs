//! Configuration tests: the example config, defaults, the bad-config table under
//! `tests/data/config/bad/` and rules that need real files (relative paths, permissions,
//! symlinked serial ports, user profiles). They never change the process environment.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use enectiva_collector::config::{
    Config, ConfigError, Diagnostic, IdField, MbusAddress, MbusFunction, MbusSelector, MbusTimeout,
    Parity, default_queue_path, default_sender,
};
use enectiva_collector::modbus::{DataType, RegisterSpec, Table, WordOrder};
use enectiva_collector::reading::{Kind, Series};
use enectiva_collector::units::{Conversion, f32_shortest};

const API: &str = "[api]\ncustomer_id = \"0c7f1e2a-3b4c-4d5e-8f90-a1b2c3d4e5f6\"\n";

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, Path::new("/nonexistent/config.toml"))
}

fn parse_ok(text: &str) -> Config {
    match parse(text) {
        Ok(c) => c,
        Err(e) => panic!("config rejected:\n{e}"),
    }
}

fn parse_err(text: &str) -> Vec<Diagnostic> {
    match parse(text) {
        Ok(_) => panic!("config accepted:\n{text}"),
        Err(e) => e.diagnostics,
    }
}

fn messages(ds: &[Diagnostic]) -> String {
    ds.iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Where a bad config's expected diagnostic points.
enum Where {
    At(usize, usize),
    Item(String),
}

/// `# expect: <substring> @ <line>:<col>` or `# expect: <substring> @ <item>`.
fn expectation(text: &str) -> Option<(String, Where)> {
    let first = text.lines().next()?.strip_prefix("# expect: ")?;
    let (message, place) = first.rsplit_once(" @ ")?;
    let position = place
        .split_once(':')
        .and_then(|(l, c)| Some(Where::At(l.parse().ok()?, c.parse().ok()?)));
    Some((
        message.to_owned(),
        position.unwrap_or_else(|| Where::Item(place.to_owned())),
    ))
}

#[test]
fn bad_configs_are_rejected_with_message_and_position() {
    let dir = repo().join("tests/data/config/bad");
    let mut files: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    assert!(files.len() >= 25, "only {} bad configs", files.len());

    let mut failures = Vec::new();
    for path in &files {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let text = fs::read_to_string(path).unwrap();
        let Some((want, place)) = expectation(&text) else {
            failures.push(format!(
                "{name}: first line is not `# expect: <message> @ <where>`"
            ));
            continue;
        };
        // Catch panics so one broken rule does not hide the others, and because nothing may
        // panic on any input file.
        let result = std::panic::catch_unwind(|| Config::load(path));
        let diagnostics = match result {
            Err(_) => {
                failures.push(format!("{name}: panicked"));
                continue;
            }
            Ok(Ok(_)) => {
                failures.push(format!("{name}: accepted, expected `{want}`"));
                continue;
            }
            Ok(Err(e)) => e.diagnostics,
        };
        let hit = diagnostics.iter().find(|d| d.message.contains(&want));
        let Some(d) = hit else {
            failures.push(format!(
                "{name}: no message contains `{want}`; got:\n    {}",
                messages(&diagnostics).replace('\n', "\n    ")
            ));
            continue;
        };
        assert_eq!(d.file, *path, "{name}: diagnostic names another file");
        match &place {
            Where::At(line, column) => {
                if (d.line, d.column) != (Some(*line), Some(*column)) {
                    failures.push(format!(
                        "{name}: `{want}` at {:?}:{:?}, expected {line}:{column}",
                        d.line, d.column
                    ));
                }
            }
            Where::Item(item) => {
                if d.item != *item {
                    failures.push(format!("{name}: item `{}`, expected `{item}`", d.item));
                }
            }
        }
        if d.message.contains('\n') {
            failures.push(format!("{name}: message spans several lines"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} bad configs failed:\n{}",
        failures.len(),
        files.len(),
        failures.join("\n")
    );
}

#[test]
fn example_config_is_valid_and_complete() {
    let path = repo().join("config/example.toml");
    let c = match Config::load(&path) {
        Ok(c) => c,
        Err(e) => panic!("example.toml rejected:\n{e}"),
    };
    assert!(
        c.warnings.is_empty(),
        "example.toml draws warnings:\n{}",
        messages(&c.warnings)
    );

    assert_eq!(c.api.base_url, "https://api.enectiva.cz");
    assert_eq!(c.api.customer_id, "0c7f1e2a-3b4c-4d5e-8f90-a1b2c3d4e5f6");
    assert_eq!(
        c.api.token_file.as_deref(),
        Some(Path::new("/etc/enectiva-collector/token"))
    );
    assert_eq!(c.api.sender, "gateway-01");
    assert_eq!(c.api.id_field, IdField::ImportId);
    assert_eq!(c.api.timeout, Duration::from_secs(30));
    assert_eq!(c.api.max_in_flight, 4);
    assert_eq!(c.api.max_backoff, Duration::from_secs(300));
    assert_eq!(c.api.ca_file, None);
    assert_eq!(
        c.queue.path,
        Path::new("/var/lib/enectiva-collector/queue.db")
    );
    assert_eq!(c.queue.max_readings, 5_000_000);
    assert_eq!(c.queue.max_age, Duration::from_secs(90 * 86_400));
    assert_eq!(c.log.level, "info");
    assert!(!c.clock.require_sync);
    assert_eq!(c.profiles_dir, None);

    // Modbus TCP: one endpoint, one meter with quantities, a data point and a register.
    assert_eq!(c.modbus_tcp.len(), 1);
    let sw = &c.modbus_tcp[0];
    assert_eq!(
        (sw.name.as_str(), sw.address.as_str()),
        ("switchboard", "192.168.1.50:502")
    );
    assert_eq!(
        (sw.timeout, sw.delay),
        (Duration::from_secs(1), Duration::ZERO)
    );
    let main = &sw.meters[0];
    assert_eq!(main.name, "main");
    assert_eq!(main.unit_id, 1);
    assert_eq!(main.interval, Duration::from_secs(60));
    assert_eq!(main.profile.as_deref(), Some("eastron-sdm630"));
    assert_eq!((main.timeout, main.delay), (sw.timeout, sw.delay));
    let sdm630 = c.profiles.get("eastron-sdm630").unwrap();
    assert_eq!(
        (main.max_registers, main.max_gap),
        (sdm630.max_registers, sdm630.max_gap)
    );
    assert_eq!(main.channels.len(), 4);
    let energy = &main.channels[0];
    assert_eq!(
        energy.output.series,
        Series::new(Kind::Reading, "40AABB_007", None)
    );
    assert_eq!(energy.output.unit.as_deref(), Some("kWh"));
    assert_eq!(energy.quantity.as_deref(), Some("import_energy_total"));
    assert_eq!(
        energy.register,
        sdm630.quantities["import_energy_total"].spec_for_test()
    );
    let power = &main.channels[1];
    assert_eq!(
        power.output.series,
        Series::new(Kind::DataPoint, "MAIN_P", None)
    );
    assert_eq!(power.transform.decimals, None);
    let volts = &main.channels[2];
    assert_eq!(
        volts.output.series,
        Series::new(Kind::DataPoint, "MAIN_U", Some("L1".into()))
    );
    assert_eq!(
        volts.output.unit.as_deref(),
        Some("V"),
        "the profile's unit is sent"
    );
    assert_eq!(volts.transform.decimals, Some(1));
    let total = &main.channels[3];
    assert_eq!(
        total.register,
        RegisterSpec {
            table: Table::Input,
            address: 0x0156,
            data_type: DataType::F32,
            order: WordOrder::Abcd
        }
    );
    assert_eq!(total.quantity, None);
    assert_eq!(total.source_unit, None);
    assert_eq!(total.output.unit.as_deref(), Some("kWh"));

    // Modbus RTU: two meters, the second with its own timeout, delay and request limits.
    assert_eq!(c.modbus_rtu.len(), 1);
    let rtu = &c.modbus_rtu[0];
    assert_eq!(rtu.name, "rs485-1");
    assert_eq!(rtu.port, Path::new("/dev/ttyUSB0"));
    assert_eq!(
        (rtu.baud, rtu.parity, rtu.data_bits, rtu.stop_bits),
        (9600, Parity::None, 8, 1)
    );
    assert_eq!(rtu.meters.len(), 2);
    let sub = &rtu.meters[0];
    assert_eq!((sub.name.as_str(), sub.unit_id), ("sub-1", 3));
    assert_eq!(
        (sub.timeout, sub.delay),
        (Duration::from_millis(500), Duration::from_millis(20))
    );
    let boiler = &rtu.meters[1];
    assert_eq!(boiler.name, "boiler");
    assert_eq!(boiler.interval, Duration::from_secs(300));
    assert_eq!(
        (boiler.timeout, boiler.delay),
        (Duration::from_secs(1), Duration::from_millis(50))
    );
    assert_eq!((boiler.max_registers, boiler.max_gap), (32, 4));
    assert_eq!(boiler.profile, None);
    let counter = &boiler.channels[0];
    assert_eq!(
        counter.register,
        RegisterSpec {
            table: Table::Holding,
            address: 100,
            data_type: DataType::U32,
            order: WordOrder::Cdab
        }
    );
    assert_eq!(counter.transform.scale, 0.1);
    assert_eq!(counter.transform.significant_digits, 15);
    let temp = &boiler.channels[1];
    assert_eq!(temp.transform.offset, -40.0);
    assert_eq!(temp.output.series.kind, Kind::DataPoint);

    // M-Bus: a primary and a secondary-address meter, selectors by quantity and by record.
    assert_eq!(c.mbus.len(), 1);
    let mbus = &c.mbus[0];
    assert_eq!(
        (mbus.baud, mbus.timeout, mbus.retries),
        (2400, MbusTimeout::Auto, 2)
    );
    let flat12 = &mbus.meters[0];
    assert_eq!(flat12.address, MbusAddress::Primary(5));
    assert_eq!(flat12.interval, Duration::from_secs(900));
    assert_eq!(
        flat12.channels[0].selector,
        MbusSelector::Quantity {
            quantity: "energy".into(),
            storage: 0,
            tariff: 0,
            subunit: 0,
            function: MbusFunction::Instantaneous
        }
    );
    assert_eq!(flat12.channels[2].selector, MbusSelector::Record(4));
    assert_eq!(flat12.channels[2].output.unit.as_deref(), Some("°C"));
    let flat14 = &mbus.meters[1];
    match &flat14.address {
        MbusAddress::Secondary(a) => {
            assert_eq!(a.id, "67432101");
            assert_eq!(a.manufacturer.as_deref(), Some("KAM"));
        }
        other => panic!("expected a secondary address, got {other:?}"),
    }
    assert_eq!(flat14.interval, Duration::from_secs(900));
    assert!(matches!(
        &flat14.channels[1].selector,
        MbusSelector::Quantity { storage: 1, .. }
    ));
    assert!(matches!(
        &flat14.channels[2].selector,
        MbusSelector::Quantity {
            function: MbusFunction::Maximum,
            ..
        }
    ));

    assert_eq!(
        flat14.channels[4].modifiers,
        vec!["backward_flow".to_string()]
    );

    let series = c.series();
    assert_eq!(series.len(), 4 + 2 + 2 + 3 + 5);
}

/// Helper view of a profile quantity as the register spec a channel must end up with.
trait SpecForTest {
    fn spec_for_test(&self) -> RegisterSpec;
}

impl SpecForTest for enectiva_collector::profile::ProfileQuantity {
    fn spec_for_test(&self) -> RegisterSpec {
        RegisterSpec {
            table: self.table,
            address: self.register,
            data_type: self.data_type,
            order: self.order,
        }
    }
}

#[test]
fn power_in_watts_is_sent_in_kilowatts() {
    let c = Config::load(&repo().join("config/example.toml")).unwrap();
    let power = &c.modbus_tcp[0].meters[0].channels[1];
    assert_eq!(power.source_unit.as_deref(), Some("W"));
    assert_eq!(power.output.unit.as_deref(), Some("kW"));
    assert_eq!(power.transform.significant_digits, 7);
    // SPEC §3: 230.1 W from an f32 register is sent as 0.2301 kW.
    let sent = power.transform.apply(f32_shortest(230.1_f32));
    assert_eq!(sent, 0.2301);
}

#[test]
fn defaults_are_applied() {
    let text = format!(
        "{API}
[[modbus_tcp]]
name = \"t\"
address = \"10.0.0.1:502\"
  [[modbus_tcp.meter]]
  name = \"tm\"
  unit_id = 0
  channels = [ {{ register = 7, import_id = \"T\" }} ]

[[modbus_rtu]]
name = \"r\"
port = \"/dev/ttyTEST-defaults\"
  [[modbus_rtu.meter]]
  name = \"rm\"
  unit_id = 1
  channels = [ {{ register = 7, import_id = \"R\", kind = \"data_point\" }} ]

[[mbus]]
name = \"m\"
port = \"/dev/ttyTEST-defaults-mbus\"
  [[mbus.meter]]
  name = \"mm\"
  address = 0
  channels = [ {{ quantity = \"volume\", import_id = \"M\" }}, {{ record = 0, import_id = \"N\" }} ]
"
    );
    let c = parse_ok(&text);
    assert_eq!(c.api.base_url, "https://api.enectiva.cz");
    let hostname = fs::read_to_string("/proc/sys/kernel/hostname").ok();
    assert_eq!(c.api.sender, default_sender(hostname.as_deref()));
    assert_eq!(c.api.id_field, IdField::ImportId);
    assert_eq!(c.api.timeout, Duration::from_secs(30));
    assert_eq!(c.api.max_in_flight, 4);
    assert_eq!(c.api.max_backoff, Duration::from_secs(300));
    assert_eq!(
        (c.api.token_file.as_ref(), c.api.ca_file.as_ref()),
        (None, None)
    );
    let state = std::env::var("STATE_DIRECTORY").ok();
    assert_eq!(c.queue.path, default_queue_path(state.as_deref()));
    assert_eq!(c.queue.max_readings, 5_000_000);
    assert_eq!(c.queue.max_age, Duration::from_secs(90 * 86_400));
    assert_eq!(c.log.level, "info");
    assert!(!c.clock.require_sync);
    assert!(
        c.profiles.get("eastron-sdm630").is_some(),
        "built-in profiles are loaded"
    );

    let t = &c.modbus_tcp[0];
    assert_eq!(
        (t.timeout, t.delay),
        (Duration::from_secs(1), Duration::ZERO)
    );
    let tm = &t.meters[0];
    assert_eq!(tm.interval, Duration::from_secs(60));
    assert_eq!((tm.max_registers, tm.max_gap), (125, 8));
    assert_eq!((tm.timeout, tm.delay), (t.timeout, t.delay));
    let ch = &tm.channels[0];
    assert_eq!(
        ch.register,
        RegisterSpec {
            table: Table::Holding,
            address: 7,
            data_type: DataType::U16,
            order: WordOrder::Abcd
        }
    );
    assert_eq!(ch.output.series, Series::new(Kind::Reading, "T", None));
    assert_eq!(ch.output.unit, None);
    assert_eq!(ch.transform.source_scale, 1.0);
    assert_eq!(ch.transform.conversion, Conversion::IDENTITY);
    assert_eq!((ch.transform.scale, ch.transform.offset), (1.0, 0.0));
    assert_eq!(ch.transform.decimals, None);
    assert_eq!(ch.transform.significant_digits, 15);

    let r = &c.modbus_rtu[0];
    assert_eq!(
        (r.baud, r.parity, r.data_bits, r.stop_bits),
        (9600, Parity::None, 8, 1)
    );
    assert_eq!(
        (r.timeout, r.delay),
        (Duration::from_millis(500), Duration::from_millis(20))
    );
    assert_eq!(
        (r.meters[0].timeout, r.meters[0].delay),
        (r.timeout, r.delay)
    );

    let m = &c.mbus[0];
    assert_eq!((m.baud, m.timeout, m.retries), (2400, MbusTimeout::Auto, 2));
    let mm = &m.meters[0];
    assert_eq!(mm.interval, Duration::from_secs(900));
    assert_eq!(
        mm.channels[0].output.unit.as_deref(),
        Some("m3"),
        "the base unit is sent"
    );
    assert_eq!(
        mm.channels[1].output.unit, None,
        "a record's own unit is sent"
    );
    assert_eq!((mm.channels[0].scale, mm.channels[0].offset), (1.0, 0.0));
    assert!(c.warnings.is_empty(), "{}", messages(&c.warnings));
}

#[test]
fn queue_path_default_follows_state_directory() {
    // Pure function of the variable's value: no process-wide environment changes.
    assert_eq!(default_queue_path(None), Path::new("./queue.db"));
    assert_eq!(
        default_queue_path(Some("/var/lib/enectiva-collector")),
        Path::new("/var/lib/enectiva-collector/queue.db")
    );
    assert_eq!(
        default_queue_path(Some("/var/lib/a:/var/lib/b")),
        Path::new("/var/lib/a/queue.db")
    );
}

#[test]
fn every_problem_is_reported_at_once() {
    let text = format!(
        "{API}timeout = \"5 minutes\"
max_in_flight = 0

[[modbus_rtu]]
name = \"r\"
port = \"/dev/ttyTEST-many\"
baud = 7
  [[modbus_rtu.meter]]
  name = \"m\"
  unit_id = 248
  channels = [
    {{ register = 1, import_id = \"A B\" }},
    {{ register = 2, type = \"f16\", import_id = \"C\", decimals = 16 }},
  ]
"
    );
    let ds = parse_err(&text);
    let wanted = [
        (3, "timeout"),
        (4, "max_in_flight = 0"),
        (9, "baud = 7"),
        (12, "unit_id = 248"),
        (14, "import_id \"A B\""),
        (15, "type \"f16\""),
        (15, "decimals = 16"),
    ];
    assert_eq!(ds.len(), wanted.len(), "{}", messages(&ds));
    for (d, (line, text)) in ds.iter().zip(wanted) {
        assert_eq!(d.line, Some(line), "{d}");
        assert!(d.message.contains(text), "{d} lacks {text}");
    }
    assert_eq!(ds[3].item, "modbus_rtu \"r\" meter \"m\"");
    assert_eq!(ds[4].item, "modbus_rtu \"r\" meter \"m\" channel 1");
    assert_eq!(ds[5].item, "modbus_rtu \"r\" meter \"m\" channel 2");
    assert!(
        ds[0]
            .to_string()
            .starts_with("/nonexistent/config.toml:3:11: api: timeout:"),
        "{}",
        ds[0]
    );
}

#[test]
fn relative_paths_resolve_against_the_config_directory() {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir(dir.path().join("secrets")).unwrap();
    fs::copy(test_ca(), dir.path().join("ca.pem")).unwrap();
    let path = dir.path().join("config.toml");
    fs::write(
        &path,
        format!(
            "{API}token_file = \"secrets/token\"\nca_file = \"ca.pem\"\n[queue]\npath = \"state/q.db\"\n"
        ),
    )
    .unwrap();
    let c = Config::load(&path).unwrap();
    assert_eq!(c.api.token_file, Some(dir.path().join("secrets/token")));
    assert_eq!(c.api.ca_file, Some(dir.path().join("ca.pem")));
    assert_eq!(c.queue.path, dir.path().join("state/q.db"));
    // The token file does not exist yet: that is the sender's business, not a config error.
    assert!(c.warnings.is_empty(), "{}", messages(&c.warnings));
}

#[cfg(unix)]
#[test]
fn token_file_readable_by_others_is_a_warning() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    fs::write(&token, "secret").unwrap();
    let path = dir.path().join("config.toml");
    fs::write(&path, format!("{API}token_file = \"token\"\n")).unwrap();

    fs::set_permissions(&token, fs::Permissions::from_mode(0o644)).unwrap();
    let c = Config::load(&path).unwrap();
    assert_eq!(c.warnings.len(), 1, "{}", messages(&c.warnings));
    assert!(
        c.warnings[0]
            .message
            .contains("readable by group or others")
    );
    assert!(!c.warnings[0].message.contains("secret"));
    assert_eq!(
        (c.warnings[0].line, c.warnings[0].column),
        (Some(3), Some(14))
    );

    fs::set_permissions(&token, fs::Permissions::from_mode(0o600)).unwrap();
    let c = Config::load(&path).unwrap();
    assert!(c.warnings.is_empty(), "{}", messages(&c.warnings));
}

/// A real self-signed CA certificate (tests/data/tls/test-ca.pem).
fn test_ca() -> PathBuf {
    repo().join("tests/data/tls/test-ca.pem")
}

#[test]
fn ca_file_fixture_with_an_existing_file() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("proxy-ca.pem");
    fs::copy(test_ca(), &ca).unwrap();
    let text = format!("{API}ca_file = \"{}\"\n", ca.display());
    let c = parse_ok(&text);
    assert_eq!(c.api.ca_file, Some(ca.clone()));

    // A truncated bundle, one that holds no certificate, and a DER file are errors at the key.
    let pem = fs::read_to_string(test_ca()).unwrap();
    for (content, expect) in [
        (&pem[..pem.len() / 2], "is not a valid PEM file"),
        ("-----BEGIN CERTIFICATE-----\n", "is not a valid PEM file"),
        ("not a certificate\n", "holds no PEM certificate"),
    ] {
        fs::write(&ca, content).unwrap();
        let ds = parse_err(&text);
        assert!(ds[0].message.contains(expect), "{}", messages(&ds));
        assert_eq!((ds[0].line, ds[0].column), (Some(3), Some(11)));
    }

    let text = format!("{API}ca_file = \"{}\"\n", dir.path().display());
    let ds = parse_err(&text);
    assert!(ds[0].message.contains("is not a file"), "{}", messages(&ds));
}

#[test]
fn short_interval_and_unverified_profile_are_warnings() {
    let text = format!(
        "{API}
[[modbus_tcp]]
name = \"t\"
address = \"10.0.0.1:502\"
  [[modbus_tcp.meter]]
  name = \"fast\"
  unit_id = 1
  interval = \"10s\"
  channels = [ {{ register = 7, import_id = \"FAST\" }} ]
  [[modbus_tcp.meter]]
  name = \"fast-data\"
  unit_id = 2
  interval = \"10s\"
  channels = [ {{ register = 7, import_id = \"FAST_P\", kind = \"data_point\" }} ]
  [[modbus_tcp.meter]]
  name = \"em24\"
  unit_id = 3
  profile = \"carlo-gavazzi-em24\"
  channels = [ {{ register = 7, import_id = \"EM24\" }} ]
"
    );
    let c = parse_ok(&text);
    let w = &c.warnings;
    assert_eq!(w.len(), 2, "{}", messages(w));
    assert_eq!((w[0].line, w[0].column), (Some(10), Some(14)));
    assert!(w[0].message.contains("below 1 minute"), "{}", w[0]);
    assert_eq!(w[0].item, "modbus_tcp \"t\" meter \"fast\"");
    assert_eq!(w[1].line, Some(20));
    assert!(
        w[1].message
            .contains("check the register map against your meter"),
        "{}",
        w[1]
    );
    let source = &c.profiles.get("carlo-gavazzi-em24").unwrap().source;
    let first_words: String = source
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ");
    assert!(
        w[1].message.contains(&first_words),
        "{} lacks the source note",
        w[1]
    );
}

#[cfg(unix)]
#[test]
fn one_serial_port_under_two_names_is_one_port() {
    let dir = tempfile::tempdir().unwrap();
    let device = dir.path().join("ttyUSB7");
    fs::write(&device, "").unwrap();
    let link = dir.path().join("usb-FTDI-1234");
    std::os::unix::fs::symlink(&device, &link).unwrap();
    let text = format!(
        "{API}
[[modbus_rtu]]
name = \"rs485\"
port = \"{}\"

[[mbus]]
name = \"heat\"
port = \"{}\"
",
        device.display(),
        link.display()
    );
    let ds = parse_err(&text);
    assert_eq!(ds.len(), 1, "{}", messages(&ds));
    assert!(
        ds[0]
            .message
            .contains("is already used by modbus_rtu \"rs485\""),
        "{}",
        ds[0]
    );
    assert_eq!(ds[0].line, Some(10));
}

#[test]
fn same_import_id_in_different_series_is_fine() {
    let text = format!(
        "{API}
[[modbus_tcp]]
name = \"t\"
address = \"10.0.0.1:502\"
  [[modbus_tcp.meter]]
  name = \"m\"
  unit_id = 1
  channels = [
    {{ register = 1, import_id = \"X\" }},
    {{ register = 2, import_id = \"X\", kind = \"data_point\" }},
    {{ register = 3, import_id = \"X\", suit = \"a\" }},
    {{ register = 4, import_id = \"x\" }},
  ]
"
    );
    let c = parse_ok(&text);
    assert_eq!(c.series().len(), 4);
}

#[test]
fn secondary_address_forms() {
    let text = format!(
        "{API}
[[mbus]]
name = \"heat\"
port = \"/dev/ttyTEST-secondary\"
  [[mbus.meter]]
  name = \"a\"
  secondary_address = \"12345678\"
  channels = [ {{ record = 0, import_id = \"A\" }} ]
  [[mbus.meter]]
  name = \"b\"
  secondary_address = \"12345679KAM0804\"
  channels = [ {{ record = 0, import_id = \"B\" }} ]
  [[mbus.meter]]
  name = \"c\"
  secondary_address = \"148391202D2C0102\"
  channels = [ {{ record = 0, import_id = \"C\" }} ]
"
    );
    let c = parse_ok(&text);
    let addresses: Vec<_> = c.mbus[0]
        .meters
        .iter()
        .map(|m| match &m.address {
            MbusAddress::Secondary(a) => {
                (a.id.clone(), a.manufacturer.clone(), a.version, a.medium)
            }
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        addresses,
        [
            ("12345678".into(), None, None, None),
            ("12345679".into(), Some("KAM".into()), Some(8), Some(4)),
            ("14839120".into(), Some("KAM".into()), Some(1), Some(2)),
        ]
    );
}

#[test]
fn mbus_units_are_checked_against_the_quantity() {
    let text = format!(
        "{API}
[[mbus]]
name = \"heat\"
port = \"/dev/ttyTEST-units\"
timeout = \"2s\"
  [[mbus.meter]]
  name = \"a\"
  address = 1
  channels = [
    {{ quantity = \"energy\", import_id = \"E\", unit = \"GJ\" }},
    {{ quantity = \"temperature_difference\", import_id = \"DT\", unit = \"K\", kind = \"data_point\" }},
    {{ quantity = \"fabrication_number\", import_id = \"FAB\", kind = \"data_point\" }},
  ]
"
    );
    let c = parse_ok(&text);
    let m = &c.mbus[0];
    assert_eq!(m.timeout, MbusTimeout::Fixed(Duration::from_secs(2)));
    assert_eq!(m.meters[0].channels[0].output.unit.as_deref(), Some("GJ"));
    assert_eq!(m.meters[0].channels[2].output.unit, None);
}

#[test]
fn user_profiles_are_loaded_from_profiles_dir() {
    let dir = tempfile::tempdir().unwrap();
    let profiles = dir.path().join("profiles");
    fs::create_dir(&profiles).unwrap();
    fs::write(
        profiles.join("acme-m1.toml"),
        r#"name = "acme-m1"
description = "ACME M1 test meter"
table = "holding"
order = "CDAB"
max_registers = 60
max_gap = 10
verified = true
source = "made up for a test"

[quantities]
import_energy_total = { register = 0x0010, type = "u32", unit = "Wh", scale = 10.0 }
"#,
    )
    .unwrap();
    let path = dir.path().join("config.toml");
    fs::write(
        &path,
        format!(
            "profiles_dir = \"profiles\"\n{API}
[[modbus_tcp]]
name = \"t\"
address = \"10.0.0.1:502\"
  [[modbus_tcp.meter]]
  name = \"m\"
  unit_id = 1
  profile = \"acme-m1\"
  channels = [ {{ quantity = \"import_energy_total\", import_id = \"E\", unit = \"kWh\" }} ]
"
        ),
    )
    .unwrap();
    let c = match Config::load(&path) {
        Ok(c) => c,
        Err(e) => panic!("{e}"),
    };
    assert_eq!(c.profiles_dir, Some(profiles.clone()));
    assert!(c.profiles.get("eastron-sdm630").is_some(), "built-ins stay");
    let m = &c.modbus_tcp[0].meters[0];
    assert_eq!((m.max_registers, m.max_gap), (60, 10));
    let ch = &m.channels[0];
    assert_eq!(ch.register.order, WordOrder::Cdab);
    assert_eq!(ch.transform.source_scale, 10.0);
    // 1234 × 10 Wh = 12.34 kWh
    assert!((ch.transform.apply(1234.0) - 12.34).abs() < 1e-9);

    // A user profile that replaces a built-in one is allowed, with a warning.
    fs::copy(
        repo().join("config/profiles/eastron-sdm120.toml"),
        profiles.join("eastron-sdm120.toml"),
    )
    .unwrap();
    let c = Config::load(&path).unwrap();
    assert_eq!(c.warnings.len(), 1, "{}", messages(&c.warnings));
    assert!(
        c.warnings[0].message.contains("eastron-sdm120"),
        "{}",
        c.warnings[0]
    );
    assert_eq!(
        (c.warnings[0].line, c.warnings[0].column),
        (Some(1), Some(16))
    );

    // A broken user profile is reported with its own file and position.
    fs::write(
        profiles.join("broken.toml"),
        "name = \"broken\"\nbogus = 1\n",
    )
    .unwrap();
    let e = Config::load(&path).unwrap_err();
    let d = e
        .diagnostics
        .iter()
        .find(|d| d.file.ends_with("broken.toml"))
        .unwrap_or_else(|| panic!("no diagnostic for broken.toml:\n{e}"));
    assert!(d.line.is_some(), "{d}");
}

#[test]
fn unreadable_config_file_is_one_diagnostic() {
    let e = Config::load(Path::new("/nonexistent/enectiva/config.toml")).unwrap_err();
    assert_eq!(e.diagnostics.len(), 1);
    assert!(e.diagnostics[0].message.contains("cannot read"), "{e}");
}

#[test]
fn mangled_example_never_panics() {
    // Cheap robustness sweep: cut the example at many points and flip characters; every
    // result must be a Config or diagnostics, never a panic.
    let text = fs::read_to_string(repo().join("config/example.toml")).unwrap();
    let bytes = text.as_bytes();
    let mut cases = Vec::new();
    for cut in (0..bytes.len()).step_by(97) {
        cases.push(String::from_utf8_lossy(&bytes[..cut]).into_owned());
    }
    for (i, replacement) in ["\"", "=", "]", "[", "0", "-", "x", "}", "\n"]
        .iter()
        .enumerate()
    {
        for at in (i * 13..bytes.len()).step_by(211) {
            let mut b = bytes.to_vec();
            b.splice(at..at + 1, replacement.bytes());
            cases.push(String::from_utf8_lossy(&b).into_owned());
        }
    }
    for case in &cases {
        let result = std::panic::catch_unwind(|| parse(case));
        assert!(result.is_ok(), "panicked on:\n{case}");
    }
}

#[test]
fn api_variants() {
    let text = format!(
        "{API}base_url = \"http://127.0.0.1:8080/enectiva/\"
id_field = \"meter_id\"
sender = \"gw 7\"
max_in_flight = 64
max_backoff = \"1s\"
[log]
level = \"info,enectiva_collector=debug\"
[clock]
require_sync = true
"
    );
    let c = parse_ok(&text);
    assert_eq!(c.api.base_url, "http://127.0.0.1:8080/enectiva");
    assert_eq!(c.api.id_field, IdField::MeterId);
    assert_eq!(c.api.sender, "gw 7");
    assert_eq!(c.api.max_in_flight, 64);
    assert_eq!(c.api.max_backoff, Duration::from_secs(1));
    assert_eq!(c.log.level, "info,enectiva_collector=debug");
    assert!(c.clock.require_sync);
    for url in ["http://localhost:1234", "http://[::1]:1234/"] {
        parse_ok(&format!("{API}base_url = \"{url}\"\n"));
    }
}

#[test]
fn unit_ids_and_addresses_are_per_bus() {
    let text = format!(
        "{API}
[[modbus_tcp]]
name = \"a\"
address = \"10.0.0.1:502\"
  [[modbus_tcp.meter]]
  name = \"a1\"
  unit_id = 1
[[modbus_tcp]]
name = \"b\"
address = \"10.0.0.2:502\"
  [[modbus_tcp.meter]]
  name = \"b1\"
  unit_id = 1
[[mbus]]
name = \"c\"
port = \"/dev/ttyTEST-c\"
  [[mbus.meter]]
  name = \"c1\"
  address = 1
[[mbus]]
name = \"d\"
port = \"/dev/ttyTEST-d\"
  [[mbus.meter]]
  name = \"d1\"
  address = 1
"
    );
    let c = parse_ok(&text);
    assert_eq!((c.modbus_tcp.len(), c.mbus.len()), (2, 2));
    // Meters without channels are never read: worth a warning each, not an error.
    assert_eq!(c.warnings.len(), 4, "{}", messages(&c.warnings));
}
