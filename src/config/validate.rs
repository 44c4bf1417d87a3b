//! Stage 2 of the configuration: the raw tree from `raw.rs` → a validated [`Config`].
//!
//! Owns every semantic rule of SPEC §3 (defaults, ranges, names, units, uniqueness) and reports
//! every problem at once, each with the file, line and column of the offending value and the
//! bus/meter/channel it concerns. It looks at the file system only where a rule is about a file
//! (`ca_file` must be readable, `token_file` permissions, `profiles_dir`, serial ports compared
//! after resolving symlinks); it never opens ports or sockets and never reads the API token.

use std::collections::{BTreeMap, HashMap};
use std::ops::{Range, RangeInclusive};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::modbus::{
    DEFAULT_MAX_GAP, DataType, MAX_REGISTERS_PER_REQUEST, RegisterSpec, Table, WordOrder,
};
use crate::profile::{Profile, Registry};
use crate::reading::{Kind, Series};
use crate::units::{Conversion, Temperature, Transform};

use super::mbus_quantities::{MBUS_QUANTITIES, mbus_quantity};
use super::raw::{
    self, Positions, RawApi, RawClock, RawConfig, RawLog, RawMbusBus, RawMbusChannel, RawMbusMeter,
    RawModbusChannel, RawModbusMeter, RawModbusRtuBus, RawModbusTcpBus, RawQueue,
};
use super::{
    Api, ClockSettings, Config, ConfigError, Diagnostic, IdField, LogSettings, MbusAddress,
    MbusBus, MbusChannel, MbusFunction, MbusMeter, MbusSelector, MbusTimeout, ModbusChannel,
    ModbusMeter, ModbusRtuBus, ModbusTcpBus, Output, Parity, QueueSettings, SecondaryAddress,
};

type S<T> = toml::Spanned<T>;

pub const DEFAULT_BASE_URL: &str = "https://api.enectiva.cz";
/// The `sender` when the host name cannot be read.
pub const FALLBACK_SENDER: &str = "enectiva-collector";

const MAX_IMPORT_ID_CHARS: usize = 255;
const MAX_UNIT_CHARS: usize = 50;
const MAX_SENDER_CHARS: usize = 255;
const MAX_DECIMALS: i64 = 15;
const RTU_BAUD: RangeInclusive<i64> = 300..=921_600;
const MBUS_BAUDS: &[i64] = &[300, 600, 1200, 2400, 4800, 9600, 19200, 38400];
/// Enectiva keeps at most one reading per minute per meter.
const READING_INTERVAL_HINT: Duration = Duration::from_secs(60);
// The DIF carries one storage bit and each of at most 10 DIFEs four storage bits, two tariff
// bits and one subunit bit: a selector beyond these can never match a record.
const MAX_STORAGE: i64 = (1 << 41) - 1;
const MAX_TARIFF: i64 = (1 << 20) - 1;
const MAX_SUBUNIT: i64 = (1 << 10) - 1;

/// Parses a duration written as one or more `<integer><unit>` parts without spaces, units
/// `ms`, `s`, `m`, `h`, `d`: `"500ms"`, `"30s"`, `"15m"`, `"1h30m"`, `"90d"`.
///
/// Deliberately narrower than humantime: `"5 minutes"` or a bare `"10"` is more likely a
/// mistake than a wish, and one spelling keeps example configs and messages uniform.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    const HINT: &str = "write a duration like \"500ms\", \"30s\", \"15m\", \"1h\" or \"90d\"";
    if s.is_empty() {
        return Err(format!("empty duration: {HINT}"));
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        if digits == 0 {
            return Err(format!("\"{s}\" is not a duration: {HINT}"));
        }
        let (number, after) = rest.split_at(digits);
        let unit_len = after.len()
            - after
                .trim_start_matches(|c: char| c.is_ascii_alphabetic())
                .len();
        let (unit, after) = after.split_at(unit_len);
        let millis_per_unit: u64 = match unit {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "" if after.is_empty() => return Err(format!("\"{s}\" has no unit: {HINT}")),
            "" => return Err(format!("\"{s}\" is not a duration: {HINT}")),
            other => return Err(format!("unknown unit \"{other}\" in \"{s}\": {HINT}")),
        };
        let part = number
            .parse::<u64>()
            .ok()
            .and_then(|n| n.checked_mul(millis_per_unit))
            .ok_or_else(|| format!("\"{s}\" is too long a duration"))?;
        total = total
            .checked_add(Duration::from_millis(part))
            .ok_or_else(|| format!("\"{s}\" is too long a duration"))?;
        rest = after;
    }
    Ok(total)
}

/// The default queue path: `$STATE_DIRECTORY/queue.db` (systemd's `StateDirectory=`; the first
/// entry when it lists several, colon-separated), else `./queue.db`.
pub fn default_queue_path(state_directory: Option<&str>) -> PathBuf {
    match state_directory.and_then(|v| v.split(':').find(|d| !d.is_empty())) {
        Some(dir) => Path::new(dir).join("queue.db"),
        None => PathBuf::from("./queue.db"),
    }
}

/// The default `sender`: the host name (`gethostname(2)`), else [`FALLBACK_SENDER`].
pub fn default_sender(hostname: Option<&str>) -> String {
    match hostname.map(str::trim) {
        Some(h) if !h.is_empty() && h.chars().count() <= MAX_SENDER_CHARS => h.to_owned(),
        _ => FALLBACK_SENDER.to_owned(),
    }
}

/// Parses a secondary address. Accepted forms (letters and hex digits in either case):
///
/// - `"12345678"`: the 8-digit identification number;
/// - `"12345678KAM"`: plus the 3-letter manufacturer code;
/// - `"12345678KAM0804"`: plus version and medium, two hex digits each;
/// - `"1234567824C40804"`: libmbus's 16-hex-digit form: ID digits, the two manufacturer bytes
///   in wire order (least significant first), version, medium; `FFFF`, `FF`, `FF` there mean
///   "any manufacturer / version / medium".
///
/// The identification number must be 8 decimal digits: wildcards could select several meters.
pub fn parse_secondary_address(s: &str) -> Result<SecondaryAddress, String> {
    const FORMS: &str = "expected 8 digits, optionally followed by a 3-letter manufacturer code and then version and medium \
                         as two hex digits each (\"12345678\", \"12345678KAM\", \"12345678KAM0804\"), or libmbus's 16 hex digits \
                         (\"1234567824C40804\")";
    let bad = || format!("secondary address \"{s}\" is malformed: {FORMS}");
    if !s.is_ascii() || s.len() < 8 {
        return Err(bad());
    }
    let (id, rest) = s.split_at(8);
    if !id.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let hex_byte = |h: &str| {
        u8::from_str_radix(h, 16)
            .ok()
            .filter(|_| h.bytes().all(|b| b.is_ascii_hexdigit()))
    };
    let mut address = SecondaryAddress {
        id: id.to_owned(),
        manufacturer: None,
        version: None,
        medium: None,
    };
    match rest.len() {
        0 => {}
        3 | 7 => {
            let (letters, tail) = rest.split_at(3);
            if !letters.bytes().all(|b| b.is_ascii_alphabetic()) {
                return Err(bad());
            }
            address.manufacturer = Some(letters.to_ascii_uppercase());
            if !tail.is_empty() {
                let (v, m) = tail.split_at(2);
                address.version = Some(hex_byte(v).ok_or_else(bad)?);
                address.medium = Some(hex_byte(m).ok_or_else(bad)?);
            }
        }
        8 => {
            let lo = hex_byte(&rest[0..2]).ok_or_else(bad)?;
            let hi = hex_byte(&rest[2..4]).ok_or_else(bad)?;
            let version = hex_byte(&rest[4..6]).ok_or_else(bad)?;
            let medium = hex_byte(&rest[6..8]).ok_or_else(bad)?;
            let word = u16::from(lo) | (u16::from(hi) << 8);
            if word != 0xFFFF {
                if word & 0x8000 != 0 {
                    return Err(format!(
                        "secondary address \"{s}\": manufacturer bytes {:02X} {:02X} have bit 15 set, which wired M-Bus does not use",
                        lo, hi
                    ));
                }
                let letter = |shift: u16| char::from(64 + ((word >> shift) & 0x1F) as u8);
                address.manufacturer = Some([letter(10), letter(5), letter(0)].iter().collect());
            }
            address.version = (version != 0xFF).then_some(version);
            address.medium = (medium != 0xFF).then_some(medium);
        }
        _ => return Err(bad()),
    }
    Ok(address)
}

/// Checks `base_url` and returns it without a trailing slash.
fn check_base_url(s: &str) -> Result<String, String> {
    let url = reqwest::Url::parse(s).map_err(|e| format!("base_url \"{s}\" is not a URL: {e}"))?;
    let Some(host) = url.host_str() else {
        return Err(format!("base_url \"{s}\" has no host"));
    };
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let loopback = match bare.parse::<std::net::IpAddr>() {
        Ok(ip) => ip.is_loopback(),
        Err(_) => host.eq_ignore_ascii_case("localhost"),
    };
    match url.scheme() {
        "https" => {}
        "http" if loopback => {}
        "http" => {
            return Err(format!(
                "base_url \"{s}\" uses http to a host that is not loopback: the token would travel unencrypted; use https"
            ));
        }
        other => {
            return Err(format!(
                "base_url \"{s}\" has scheme \"{other}\"; use https"
            ));
        }
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!(
            "base_url \"{s}\" must not have a query or fragment: API paths are appended to it"
        ));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(format!(
            "base_url \"{s}\" must not carry credentials: use token_file"
        ));
    }
    Ok(url.as_str().trim_end_matches('/').to_owned())
}

/// 8-4-4-4-12 hex digits.
fn is_uuid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Splits `host:port` (IPv6 in brackets) and returns the lower-cased endpoint used to compare
/// two buses.
fn check_tcp_address(s: &str) -> Result<String, String> {
    let hint = "write it as host:port, e.g. \"192.168.1.50:502\" or \"[fe80::1]:502\"";
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("address \"{s}\" is malformed: {hint}"))?;
        let port = after
            .strip_prefix(':')
            .ok_or_else(|| format!("address \"{s}\" has no port: {hint}"))?;
        if host.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(format!(
                "address \"{s}\": \"{host}\" is not an IPv6 address"
            ));
        }
        (format!("[{host}]"), port)
    } else {
        let (host, port) = s
            .rsplit_once(':')
            .ok_or_else(|| format!("address \"{s}\" has no port: {hint}"))?;
        if host.contains(':') {
            return Err(format!(
                "address \"{s}\": put an IPv6 address in brackets: {hint}"
            ));
        }
        (host.to_owned(), port)
    };
    if host.is_empty() || host.chars().any(|c| c.is_whitespace()) {
        return Err(format!("address \"{s}\" has no valid host: {hint}"));
    }
    match port.parse::<u32>() {
        Ok(p) if (1..=65535).contains(&p) => Ok(format!("{}:{p}", host.to_ascii_lowercase())),
        _ => Err(format!(
            "address \"{s}\": port \"{port}\" must be 1..=65535"
        )),
    }
}

/// What the validation reads from the environment, passed in so tests can pin it.
#[derive(Debug, Clone, Default)]
pub(super) struct Env {
    pub state_directory: Option<String>,
    pub hostname: Option<String>,
}

impl Env {
    fn from_process() -> Env {
        Env {
            state_directory: std::env::var("STATE_DIRECTORY").ok(),
            hostname: hostname(),
        }
    }
}

/// The kernel's host name through `gethostname(2)` (a system call, so it works under
/// systemd's `ProcSubset=pid`, which hides `/proc/sys/kernel/hostname`).
#[cfg(unix)]
#[allow(unsafe_code)]
fn hostname() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: `buf` is a valid, exclusively borrowed buffer of `buf.len()` bytes for the whole
    // call; gethostname writes at most that many bytes into it and keeps no pointer.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return None;
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8(buf.get(..end)?.to_vec()).ok()
}

#[cfg(not(unix))]
fn hostname() -> Option<String> {
    None
}

pub(super) fn load(path: &Path) -> Result<Config, ConfigError> {
    match std::fs::read(path) {
        Ok(bytes) => from_bytes(&bytes, path),
        Err(e) => Err(unreadable(path, &e)),
    }
}

/// The file's bytes → [`Config`]: what `load` does once the file is read. Text that is not
/// UTF-8 is refused with the message `std::fs::read_to_string` gave before this split.
pub(super) fn from_bytes(bytes: &[u8], path: &Path) -> Result<Config, ConfigError> {
    match std::str::from_utf8(bytes) {
        Ok(text) => parse(text, path),
        Err(_) => Err(unreadable(
            path,
            &std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "stream did not contain valid UTF-8",
            ),
        )),
    }
}

fn unreadable(path: &Path, e: &std::io::Error) -> ConfigError {
    ConfigError {
        diagnostics: vec![Diagnostic {
            file: path.to_path_buf(),
            line: None,
            column: None,
            item: String::new(),
            message: format!("cannot read the configuration: {e}"),
        }],
    }
}

pub(super) fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
    parse_with_env(text, path, &Env::from_process())
}

pub(super) fn parse_with_env(text: &str, path: &Path, env: &Env) -> Result<Config, ConfigError> {
    let raw = raw::parse(text, path).map_err(|d| ConfigError {
        diagnostics: vec![d],
    })?;
    from_raw(raw, text, path, env)
}

/// Where something was defined, to name both places in a uniqueness error.
#[derive(Debug, Clone)]
struct Place {
    item: String,
    line: usize,
    column: usize,
}

struct Validator<'a> {
    file: PathBuf,
    dir: PathBuf,
    positions: Positions<'a>,
    errors: Vec<Diagnostic>,
    warnings: Vec<Diagnostic>,
    bus_names: HashMap<String, Place>,
    meter_names: HashMap<String, Place>,
    ports: HashMap<PathBuf, Place>,
    tcp_endpoints: HashMap<String, Place>,
    series: HashMap<Series, Place>,
}

fn from_raw(raw: RawConfig, text: &str, path: &Path, env: &Env) -> Result<Config, ConfigError> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut v = Validator {
        file: path.to_path_buf(),
        dir,
        positions: Positions::new(text),
        errors: Vec::new(),
        warnings: Vec::new(),
        bus_names: HashMap::new(),
        meter_names: HashMap::new(),
        ports: HashMap::new(),
        tcp_endpoints: HashMap::new(),
        series: HashMap::new(),
    };

    let api = v.api(raw.api, env);
    let queue = v.queue(raw.queue, env);
    let log = v.log(raw.log);
    let clock = v.clock(raw.clock);
    let (profiles_dir, profiles) = v.profiles(raw.profiles_dir);

    let modbus_tcp = raw
        .modbus_tcp
        .into_iter()
        .enumerate()
        .map(|(i, b)| v.modbus_tcp(b, i, &profiles))
        .collect();
    let modbus_rtu = raw
        .modbus_rtu
        .into_iter()
        .enumerate()
        .map(|(i, b)| v.modbus_rtu(b, i, &profiles))
        .collect();
    let mbus = raw
        .mbus
        .into_iter()
        .enumerate()
        .map(|(i, b)| v.mbus(b, i))
        .collect();

    // The config file's own problems in file order, then those of other files (profiles).
    let file = path.to_path_buf();
    let by_position = |d: &Diagnostic| {
        (
            d.file != file,
            d.line.unwrap_or(usize::MAX),
            d.column.unwrap_or(0),
        )
    };
    v.errors.sort_by_key(by_position);
    v.warnings.sort_by_key(by_position);
    if !v.errors.is_empty() {
        return Err(ConfigError {
            diagnostics: v.errors,
        });
    }
    Ok(Config {
        source: path.to_path_buf(),
        api,
        queue,
        log,
        clock,
        profiles_dir,
        profiles,
        modbus_tcp,
        modbus_rtu,
        mbus,
        warnings: v.warnings,
    })
}

/// The common part of a Modbus and an M-Bus channel, validated.
struct ChannelCommon {
    output: Output,
    scale: f64,
    offset: f64,
    decimals: Option<u32>,
}

/// The keys shared by Modbus and M-Bus channels, borrowed from either raw channel.
struct CommonKeys<'r> {
    import_id: &'r Option<S<String>>,
    kind: &'r Option<S<String>>,
    unit: &'r Option<S<String>>,
    suit: &'r Option<S<String>>,
    scale: &'r Option<S<f64>>,
    offset: &'r Option<S<f64>>,
    decimals: &'r Option<S<i64>>,
}

/// How small a duration may be.
#[derive(Clone, Copy)]
enum Min {
    Zero,
    Positive,
    AtLeast(Duration, &'static str),
}

impl Validator<'_> {
    fn diag(&self, span: Option<&Range<usize>>, item: &str, message: String) -> Diagnostic {
        let (line, column) = match span {
            Some(r) => {
                let (l, c) = self.positions.line_col(r.start);
                (Some(l), Some(c))
            }
            None => (None, None),
        };
        Diagnostic {
            file: self.file.clone(),
            line,
            column,
            item: item.to_owned(),
            message,
        }
    }

    fn error(&mut self, span: Option<&Range<usize>>, item: &str, message: impl Into<String>) {
        let d = self.diag(span, item, message.into());
        self.errors.push(d);
    }

    fn error_at<T>(&mut self, value: &S<T>, item: &str, message: impl Into<String>) {
        self.error(Some(&value.span()), item, message);
    }

    fn warn(&mut self, span: Option<&Range<usize>>, item: &str, message: impl Into<String>) {
        let d = self.diag(span, item, message.into());
        self.warnings.push(d);
    }

    fn place(&self, span: &Range<usize>, item: &str) -> Place {
        let (line, column) = self.positions.line_col(span.start);
        Place {
            item: item.to_owned(),
            line,
            column,
        }
    }

    /// Records `key` as taken by `item`; when it already was, reports both places.
    fn claim<K: std::hash::Hash + Eq>(
        &mut self,
        map: fn(&mut Self) -> &mut HashMap<K, Place>,
        key: K,
        span: &Range<usize>,
        item: &str,
        what: &str,
        hint: &str,
    ) {
        let place = self.place(span, item);
        match map(self).get(&key) {
            Some(first) => {
                let message = format!(
                    "{what} is already used by {} (line {}:{}){hint}",
                    first.item, first.line, first.column
                );
                self.error(Some(span), item, message);
            }
            None => {
                map(self).insert(key, place);
            }
        }
    }

    fn resolve(&self, p: &str) -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.dir.join(p)
        }
    }

    fn duration(
        &mut self,
        value: &Option<S<String>>,
        default: Duration,
        item: &str,
        key: &str,
        min: Min,
    ) -> Duration {
        let Some(value) = value else {
            return default;
        };
        match parse_duration(value.get_ref()) {
            Ok(d) => {
                let problem = match min {
                    Min::Zero => None,
                    Min::Positive if d.is_zero() => Some(format!("{key} must be more than 0")),
                    Min::AtLeast(floor, text) if d < floor => {
                        Some(format!("{key} must be at least {text}"))
                    }
                    _ => None,
                };
                match problem {
                    Some(p) => {
                        self.error_at(value, item, p);
                        default
                    }
                    None => d,
                }
            }
            Err(e) => {
                self.error_at(value, item, format!("{key}: {e}"));
                default
            }
        }
    }

    /// An integer key within `range`; `None` (after reporting) when it is outside.
    fn int_in(
        &mut self,
        value: &S<i64>,
        range: RangeInclusive<i64>,
        item: &str,
        key: &str,
    ) -> Option<i64> {
        let n = *value.get_ref();
        if range.contains(&n) {
            Some(n)
        } else {
            self.error_at(
                value,
                item,
                format!(
                    "{key} = {n} is out of range {}..={}",
                    range.start(),
                    range.end()
                ),
            );
            None
        }
    }

    fn opt_int<T: TryFrom<i64>>(
        &mut self,
        value: &Option<S<i64>>,
        default: T,
        range: RangeInclusive<i64>,
        item: &str,
        key: &str,
    ) -> T {
        match value {
            Some(v) => self
                .int_in(v, range, item, key)
                .and_then(|n| T::try_from(n).ok())
                .unwrap_or(default),
            None => default,
        }
    }

    /// A name of a bus or meter: required, non-empty, printable.
    fn name(
        &mut self,
        value: &Option<S<String>>,
        table_span: &Range<usize>,
        item: &str,
    ) -> Option<String> {
        let Some(value) = value else {
            self.error(Some(table_span), item, "missing key `name`");
            return None;
        };
        let name = value.get_ref();
        if name.trim().is_empty() || name.chars().any(char::is_control) || name.trim() != name {
            self.error_at(value, item, format!("name \"{name}\" must be non-empty without control characters or surrounding spaces"));
            return None;
        }
        Some(name.clone())
    }

    fn api(&mut self, raw: Option<S<RawApi>>, env: &Env) -> Api {
        const ITEM: &str = "api";
        let mut api = Api {
            base_url: DEFAULT_BASE_URL.to_owned(),
            customer_id: String::new(),
            token_file: None,
            sender: default_sender(env.hostname.as_deref()),
            id_field: IdField::ImportId,
            timeout: Duration::from_secs(30),
            max_in_flight: 4,
            max_backoff: Duration::from_secs(300),
            ca_file: None,
        };
        let Some(raw) = raw else {
            self.error(
                None,
                ITEM,
                "missing section [api] with customer_id (the Enectiva customer UUID)",
            );
            return api;
        };
        let span = raw.span();
        let raw = raw.into_inner();

        match &raw.customer_id {
            None => self.error(
                Some(&span),
                ITEM,
                "missing key `customer_id` (the Enectiva customer UUID)",
            ),
            Some(c) if !is_uuid(c.get_ref()) => self.error_at(
                c,
                ITEM,
                format!(
                    "customer_id \"{}\" is not a UUID (8-4-4-4-12 hex digits)",
                    c.get_ref()
                ),
            ),
            Some(c) => api.customer_id = c.get_ref().clone(),
        }
        if let Some(u) = &raw.base_url {
            match check_base_url(u.get_ref()) {
                Ok(url) => api.base_url = url,
                Err(e) => self.error_at(u, ITEM, e),
            }
        }
        if let Some(s) = &raw.sender {
            let sender = s.get_ref();
            if sender.trim().is_empty() || sender.chars().count() > MAX_SENDER_CHARS {
                self.error_at(
                    s,
                    ITEM,
                    format!("sender must be 1..={MAX_SENDER_CHARS} characters"),
                );
            } else {
                api.sender = sender.clone();
            }
        }
        if let Some(f) = &raw.id_field {
            match f.get_ref().as_str() {
                "import_id" => api.id_field = IdField::ImportId,
                "meter_id" => api.id_field = IdField::MeterId,
                other => self.error_at(
                    f,
                    ITEM,
                    format!("id_field \"{other}\" must be \"import_id\" or \"meter_id\""),
                ),
            }
        }
        api.timeout = self.duration(&raw.timeout, api.timeout, ITEM, "timeout", Min::Positive);
        api.max_in_flight = self.opt_int(
            &raw.max_in_flight,
            api.max_in_flight,
            1..=64,
            ITEM,
            "max_in_flight",
        );
        api.max_backoff = self.duration(
            &raw.max_backoff,
            api.max_backoff,
            ITEM,
            "max_backoff",
            Min::AtLeast(Duration::from_secs(1), "1s"),
        );
        if let Some(t) = &raw.token_file {
            if t.get_ref().is_empty() {
                self.error_at(
                    t,
                    ITEM,
                    "token_file must not be empty (leave the key out instead)",
                );
            } else {
                let path = self.resolve(t.get_ref());
                self.check_token_permissions(&path, t);
                api.token_file = Some(path);
            }
        }
        if let Some(c) = &raw.ca_file {
            let path = self.resolve(c.get_ref());
            match std::fs::File::open(&path).and_then(|f| f.metadata()) {
                Ok(m) if m.is_file() => match crate::ca::load(&path) {
                    Ok(_) => api.ca_file = Some(path),
                    Err(e) => {
                        self.error_at(c, ITEM, format!("ca_file {} {e}", path.display()));
                    }
                },
                Ok(_) => {
                    self.error_at(c, ITEM, format!("ca_file {} is not a file", path.display()))
                }
                Err(e) => self.error_at(
                    c,
                    ITEM,
                    format!("ca_file {} cannot be read: {e}", path.display()),
                ),
            }
        }
        api
    }

    #[cfg(unix)]
    fn check_token_permissions(&mut self, path: &Path, at: &S<String>) {
        use std::os::unix::fs::PermissionsExt;
        // Only the metadata: the token itself is read by the sender, never here.
        if let Ok(m) = std::fs::metadata(path) {
            let mode = m.permissions().mode();
            if mode & 0o077 != 0 {
                self.warn(
                    Some(&at.span()),
                    "api",
                    format!(
                        "token_file {} is readable by group or others (mode {:o}); run chmod 600 on it",
                        path.display(),
                        mode & 0o777
                    ),
                );
            }
        }
    }

    #[cfg(not(unix))]
    fn check_token_permissions(&mut self, _path: &Path, _at: &S<String>) {}

    fn queue(&mut self, raw: Option<S<RawQueue>>, env: &Env) -> QueueSettings {
        const ITEM: &str = "queue";
        let mut queue = QueueSettings {
            path: default_queue_path(env.state_directory.as_deref()),
            max_readings: 5_000_000,
            max_age: Duration::from_secs(90 * 86_400),
        };
        let Some(raw) = raw else {
            return queue;
        };
        let raw = raw.into_inner();
        if let Some(p) = &raw.path {
            if p.get_ref().is_empty() {
                self.error_at(
                    p,
                    ITEM,
                    "path must not be empty (leave the key out for the default)",
                );
            } else {
                queue.path = self.resolve(p.get_ref());
            }
        }
        queue.max_readings = self.opt_int(
            &raw.max_readings,
            queue.max_readings,
            1..=i64::MAX,
            ITEM,
            "max_readings",
        );
        queue.max_age = self.duration(&raw.max_age, queue.max_age, ITEM, "max_age", Min::Positive);
        queue
    }

    fn log(&mut self, raw: Option<S<RawLog>>) -> LogSettings {
        let mut log = LogSettings {
            level: "info".to_owned(),
        };
        let Some(level) = raw.and_then(|r| r.into_inner().level) else {
            return log;
        };
        let text = level.get_ref();
        const LEVELS: &[&str] = &["off", "error", "warn", "info", "debug", "trace"];
        // EnvFilter takes any bare word as a target name, so a misspelt level ("inof") would
        // silently switch logging off; a lone word must therefore be a level.
        let lone_word = !text.contains(['=', ',', '[']);
        let ok = if lone_word {
            LEVELS.contains(&text.to_ascii_lowercase().as_str())
        } else {
            tracing_subscriber::EnvFilter::try_new(text).is_ok()
        };
        if ok {
            log.level = text.clone();
        } else {
            self.error_at(
                &level,
                "log",
                format!("level \"{text}\" is neither a level (off, error, warn, info, debug, trace) nor a filter like \"info,enectiva_collector=debug\""),
            );
        }
        log
    }

    fn clock(&mut self, raw: Option<S<RawClock>>) -> ClockSettings {
        let raw: Option<RawClock> = raw.map(S::into_inner);
        ClockSettings {
            require_sync: raw.and_then(|r| r.require_sync).unwrap_or(false),
        }
    }

    fn profiles(&mut self, dir: Option<S<String>>) -> (Option<PathBuf>, Registry) {
        let mut registry = Registry::builtin();
        let Some(dir) = dir else {
            return (None, registry);
        };
        let path = self.resolve(dir.get_ref());
        if !path.is_dir() {
            self.error_at(
                &dir,
                "profiles_dir",
                format!("profiles_dir {} is not a directory", path.display()),
            );
            return (Some(path), registry);
        }
        // Every broken profile file at once, like every other problem; the good ones still load
        // so meters using them are checked too.
        let (notes, errors) = registry.load_dir_all(&path);
        for e in errors {
            self.errors.push(Diagnostic {
                file: e.file,
                line: e.line,
                column: e.column,
                item: "profile".to_owned(),
                message: e.message,
            });
        }
        for note in notes {
            // A user profile that replaces another is usually meant, but an accidental name
            // clash would silently change register maps.
            self.warn(Some(&dir.span()), "profiles_dir", note);
        }
        (Some(path), registry)
    }

    fn serial_port(
        &mut self,
        value: &Option<S<String>>,
        span: &Range<usize>,
        item: &str,
    ) -> PathBuf {
        let Some(port) = value else {
            self.error(
                Some(span),
                item,
                "missing key `port` (the serial device, e.g. /dev/ttyUSB0)",
            );
            return PathBuf::new();
        };
        if port.get_ref().is_empty() {
            self.error_at(port, item, "port must not be empty");
            return PathBuf::new();
        }
        let path = PathBuf::from(port.get_ref());
        // Two names for one device (a by-id symlink and /dev/ttyUSB0) must count as one port.
        let key = std::fs::canonicalize(&path).unwrap_or_else(|_| path.clone());
        let what = format!("serial port {}", path.display());
        let hint = "; a serial port belongs to one bus (compared after resolving symlinks)";
        self.claim(|v| &mut v.ports, key, &port.span(), item, &what, hint);
        path
    }

    fn bus_name(
        &mut self,
        value: &Option<S<String>>,
        span: &Range<usize>,
        kind: &str,
        index: usize,
    ) -> (String, String) {
        let fallback = format!("{kind} #{}", index + 1);
        match self.name(value, span, &fallback) {
            Some(name) => {
                let item = format!("{kind} \"{name}\"");
                if let Some(v) = value {
                    self.claim(
                        |v| &mut v.bus_names,
                        name.clone(),
                        &v.span(),
                        &item,
                        &format!("bus name \"{name}\""),
                        "",
                    );
                }
                (name, item)
            }
            None => (String::new(), fallback),
        }
    }

    fn modbus_tcp(
        &mut self,
        raw: S<RawModbusTcpBus>,
        index: usize,
        profiles: &Registry,
    ) -> ModbusTcpBus {
        let span = raw.span();
        let raw = raw.into_inner();
        let (name, item) = self.bus_name(&raw.name, &span, "modbus_tcp", index);
        let address = match &raw.address {
            None => {
                self.error(
                    Some(&span),
                    &item,
                    "missing key `address` (host:port, e.g. \"192.168.1.50:502\")",
                );
                String::new()
            }
            Some(a) => {
                match check_tcp_address(a.get_ref()) {
                    Ok(endpoint) => {
                        let what = format!("address {}", a.get_ref());
                        let hint = "; one connection per endpoint: put all its meters under one [[modbus_tcp]]";
                        self.claim(
                            |v| &mut v.tcp_endpoints,
                            endpoint,
                            &a.span(),
                            &item,
                            &what,
                            hint,
                        );
                    }
                    Err(e) => self.error_at(a, &item, e),
                }
                a.get_ref().clone()
            }
        };
        let timeout = self.duration(
            &raw.timeout,
            Duration::from_secs(1),
            &item,
            "timeout",
            Min::Positive,
        );
        let delay = self.duration(&raw.delay, Duration::ZERO, &item, "delay", Min::Zero);
        let mut unit_ids = HashMap::new();
        let meters = raw
            .meter
            .into_iter()
            .enumerate()
            .map(|(i, m)| {
                self.modbus_meter(
                    m,
                    &item,
                    i,
                    0..=255,
                    timeout,
                    delay,
                    &mut unit_ids,
                    profiles,
                )
            })
            .collect();
        ModbusTcpBus {
            name,
            address,
            timeout,
            delay,
            meters,
        }
    }

    fn modbus_rtu(
        &mut self,
        raw: S<RawModbusRtuBus>,
        index: usize,
        profiles: &Registry,
    ) -> ModbusRtuBus {
        let span = raw.span();
        let raw = raw.into_inner();
        let (name, item) = self.bus_name(&raw.name, &span, "modbus_rtu", index);
        let port = self.serial_port(&raw.port, &span, &item);
        let baud = self.opt_int(&raw.baud, 9600, RTU_BAUD, &item, "baud");
        let parity = match &raw.parity {
            None => Parity::None,
            Some(p) => match p.get_ref().as_str() {
                "none" => Parity::None,
                "even" => Parity::Even,
                "odd" => Parity::Odd,
                other => {
                    self.error_at(
                        p,
                        &item,
                        format!("parity \"{other}\" must be \"none\", \"even\" or \"odd\""),
                    );
                    Parity::None
                }
            },
        };
        let data_bits = self.opt_int(&raw.data_bits, 8, 7..=8, &item, "data_bits");
        let stop_bits = self.opt_int(&raw.stop_bits, 1, 1..=2, &item, "stop_bits");
        let timeout = self.duration(
            &raw.timeout,
            Duration::from_millis(500),
            &item,
            "timeout",
            Min::Positive,
        );
        let delay = self.duration(
            &raw.delay,
            Duration::from_millis(20),
            &item,
            "delay",
            Min::Zero,
        );
        let mut unit_ids = HashMap::new();
        let meters = raw
            .meter
            .into_iter()
            .enumerate()
            .map(|(i, m)| {
                self.modbus_meter(
                    m,
                    &item,
                    i,
                    1..=247,
                    timeout,
                    delay,
                    &mut unit_ids,
                    profiles,
                )
            })
            .collect();
        ModbusRtuBus {
            name,
            port,
            baud,
            parity,
            data_bits,
            stop_bits,
            timeout,
            delay,
            meters,
        }
    }

    /// A meter name, unique across the whole configuration; returns (name, item).
    fn meter_name(
        &mut self,
        value: &Option<S<String>>,
        span: &Range<usize>,
        bus_item: &str,
        index: usize,
    ) -> (String, String) {
        let fallback = format!("{bus_item} meter #{}", index + 1);
        match self.name(value, span, &fallback) {
            Some(name) => {
                let item = format!("{bus_item} meter \"{name}\"");
                if let Some(v) = value {
                    self.claim(
                        |v| &mut v.meter_names,
                        name.clone(),
                        &v.span(),
                        &item,
                        &format!("meter name \"{name}\""),
                        "",
                    );
                }
                (name, item)
            }
            None => (String::new(), fallback),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn modbus_meter(
        &mut self,
        raw: S<RawModbusMeter>,
        bus_item: &str,
        index: usize,
        unit_range: RangeInclusive<i64>,
        bus_timeout: Duration,
        bus_delay: Duration,
        unit_ids: &mut HashMap<u8, Place>,
        profiles: &Registry,
    ) -> ModbusMeter {
        let span = raw.span();
        let raw = raw.into_inner();
        let (name, item) = self.meter_name(&raw.name, &span, bus_item, index);

        let unit_id = match &raw.unit_id {
            None => {
                self.error(
                    Some(&span),
                    &item,
                    format!(
                        "missing key `unit_id` ({}..={})",
                        unit_range.start(),
                        unit_range.end()
                    ),
                );
                0
            }
            Some(u) => match self
                .int_in(u, unit_range, &item, "unit_id")
                .and_then(|n| u8::try_from(n).ok())
            {
                Some(id) => {
                    let place = self.place(&u.span(), &item);
                    match unit_ids.get(&id) {
                        Some(first) => {
                            let message = format!(
                                "unit_id {id} is already used on this bus by {} (line {}:{})",
                                first.item, first.line, first.column
                            );
                            self.error_at(u, &item, message);
                        }
                        None => {
                            unit_ids.insert(id, place);
                        }
                    }
                    id
                }
                None => 0,
            },
        };
        let interval = self.duration(
            &raw.interval,
            Duration::from_secs(60),
            &item,
            "interval",
            Min::AtLeast(Duration::from_secs(1), "1s"),
        );
        let profile: Option<&Profile> = match &raw.profile {
            None => None,
            Some(p) => match profiles.get(p.get_ref()) {
                Some(profile) => {
                    if !profile.verified {
                        let source = profile
                            .source
                            .split_whitespace()
                            .collect::<Vec<_>>()
                            .join(" ");
                        self.warn(
                            Some(&p.span()),
                            &item,
                            format!(
                                "profile \"{}\" is not verified: check the register map against your meter ({source})",
                                profile.name
                            ),
                        );
                    }
                    Some(profile)
                }
                None => {
                    let names = profiles
                        .names()
                        .into_iter()
                        .map(|n| n.to_string())
                        .collect::<Vec<_>>()
                        .join(", ");
                    self.error_at(
                        p,
                        &item,
                        format!("unknown profile \"{}\"; available: {names}", p.get_ref()),
                    );
                    None
                }
            },
        };
        let timeout = self.duration(&raw.timeout, bus_timeout, &item, "timeout", Min::Positive);
        let delay = self.duration(&raw.delay, bus_delay, &item, "delay", Min::Zero);
        let max = i64::from(MAX_REGISTERS_PER_REQUEST);
        let max_registers = self.opt_int(
            &raw.max_registers,
            profile.map_or(MAX_REGISTERS_PER_REQUEST, |p| p.max_registers),
            1..=max,
            &item,
            "max_registers",
        );
        let max_gap = self.opt_int(
            &raw.max_gap,
            profile.map_or(DEFAULT_MAX_GAP, |p| p.max_gap),
            0..=max,
            &item,
            "max_gap",
        );
        if raw.channels.is_empty() {
            self.warn(
                Some(&span),
                &item,
                "meter has no channels: it is never read",
            );
        }
        let channels: Vec<ModbusChannel> = raw
            .channels
            .into_iter()
            .enumerate()
            .filter_map(|(i, c)| {
                self.modbus_channel(c, &format!("{item} channel {}", i + 1), profile)
            })
            .collect();
        self.interval_hint(
            interval,
            channels.iter().map(|c| &c.output),
            raw.interval.as_ref(),
            &span,
            &item,
        );
        ModbusMeter {
            name,
            unit_id,
            interval,
            profile: profile.map(|p| p.name.clone()),
            timeout,
            delay,
            max_registers,
            max_gap,
            blocks: profile.map(|p| p.blocks.clone()).unwrap_or_default(),
            channels,
        }
    }

    fn interval_hint<'o>(
        &mut self,
        interval: Duration,
        outputs: impl IntoIterator<Item = &'o Output>,
        at: Option<&S<String>>,
        meter_span: &Range<usize>,
        item: &str,
    ) {
        let has_readings = outputs.into_iter().any(|o| o.series.kind == Kind::Reading);
        if has_readings && interval < READING_INTERVAL_HINT {
            let span = at.map_or_else(|| meter_span.clone(), S::span);
            self.warn(
                Some(&span),
                item,
                "interval is below 1 minute on a meter with `reading` channels; Enectiva uses at most one reading per minute per meter",
            );
        }
    }

    /// The keys every channel has; `None` (after reporting) when the channel cannot be used.
    fn channel_common(
        &mut self,
        keys: CommonKeys<'_>,
        span: &Range<usize>,
        item: &str,
    ) -> Option<ChannelCommon> {
        let mut ok = true;
        let import_id = match keys.import_id {
            None => {
                self.error(
                    Some(span),
                    item,
                    "missing key `import_id` (the Enectiva import identifier)",
                );
                ok = false;
                String::new()
            }
            Some(id) => {
                let text = id.get_ref();
                if let Some(problem) = check_identifier(text, MAX_IMPORT_ID_CHARS) {
                    self.error_at(id, item, format!("import_id \"{}\" {problem}", shown(text)));
                    ok = false;
                }
                text.clone()
            }
        };
        let kind = match keys.kind {
            None => Kind::Reading,
            Some(k) => Kind::parse(k.get_ref()).unwrap_or_else(|| {
                self.error_at(
                    k,
                    item,
                    format!(
                        "kind \"{}\" must be \"reading\" or \"data_point\"",
                        k.get_ref()
                    ),
                );
                ok = false;
                Kind::Reading
            }),
        };
        let unit = match keys.unit {
            None => None,
            Some(u) => {
                let text = u.get_ref();
                if text.trim().is_empty() {
                    self.error_at(
                        u,
                        item,
                        "unit must not be empty (leave the key out instead)",
                    );
                    ok = false;
                } else if text.chars().count() > MAX_UNIT_CHARS {
                    self.error_at(
                        u,
                        item,
                        format!(
                            "unit \"{}\" is longer than {MAX_UNIT_CHARS} characters",
                            shown(text)
                        ),
                    );
                    ok = false;
                }
                Some(text.clone())
            }
        };
        let suit = match keys.suit {
            None => None,
            Some(s) => {
                let text = s.get_ref();
                if let Some(problem) = check_identifier(text, MAX_IMPORT_ID_CHARS) {
                    self.error_at(s, item, format!("suit \"{}\" {problem}", shown(text)));
                    ok = false;
                }
                Some(text.clone())
            }
        };
        let scale = match keys.scale {
            None => 1.0,
            Some(s) => {
                let x = *s.get_ref();
                if !x.is_finite() || x == 0.0 {
                    self.error_at(
                        s,
                        item,
                        format!("scale = {x} must be a finite number other than 0"),
                    );
                    ok = false;
                }
                x
            }
        };
        let offset = match keys.offset {
            None => 0.0,
            Some(o) => {
                let x = *o.get_ref();
                if !x.is_finite() {
                    self.error_at(o, item, format!("offset = {x} must be a finite number"));
                    ok = false;
                }
                x
            }
        };
        let decimals = match keys.decimals {
            None => None,
            Some(d) => match self.int_in(d, 0..=MAX_DECIMALS, item, "decimals") {
                Some(n) => u32::try_from(n).ok(),
                None => {
                    ok = false;
                    None
                }
            },
        };
        let series = Series::new(kind, import_id, suit);
        if ok {
            let at = keys
                .import_id
                .as_ref()
                .map_or_else(|| span.clone(), S::span);
            let what = format!("series {series}");
            let hint = "; each series is fed by one channel (tell them apart by kind or suit)";
            self.claim(|v| &mut v.series, series.clone(), &at, item, &what, hint);
        }
        ok.then_some(ChannelCommon {
            output: Output { series, unit },
            scale,
            offset,
            decimals,
        })
    }

    fn modbus_channel(
        &mut self,
        raw: S<RawModbusChannel>,
        item: &str,
        profile: Option<&Profile>,
    ) -> Option<ModbusChannel> {
        let span = raw.span();
        let raw = raw.into_inner();
        let common = self.channel_common(
            CommonKeys {
                import_id: &raw.import_id,
                kind: &raw.kind,
                unit: &raw.unit,
                suit: &raw.suit,
                scale: &raw.scale,
                offset: &raw.offset,
                decimals: &raw.decimals,
            },
            &span,
            item,
        );

        let source = match (&raw.quantity, &raw.register) {
            (Some(q), _) => {
                let mut mixed = false;
                for (key, present) in [
                    ("register", raw.register.as_ref().map(S::span)),
                    ("table", raw.table.as_ref().map(S::span)),
                    ("type", raw.data_type.as_ref().map(S::span)),
                    ("order", raw.order.as_ref().map(S::span)),
                ] {
                    if let Some(at) = present {
                        self.error(
                            Some(&at),
                            item,
                            format!("`{key}` cannot be combined with `quantity`: the profile defines the register; use either"),
                        );
                        mixed = true;
                    }
                }
                let quantity = self.profile_quantity(q, profile, raw.unit.as_ref(), item);
                if mixed { None } else { quantity }
            }
            (None, Some(r)) => self.explicit_register(r, &raw, item),
            (None, None) => {
                self.error(
                    Some(&span),
                    item,
                    "channel needs either `quantity` (from the meter's profile) or `register`",
                );
                None
            }
        };
        let (common, source) = (common?, source?);
        let register = source.register;
        Some(ModbusChannel {
            output: Output {
                series: common.output.series,
                unit: common.output.unit.or(source.unit_sent),
            },
            register,
            quantity: source.quantity,
            source_unit: source.source_unit,
            transform: Transform {
                source_scale: source.source_scale,
                conversion: source.conversion,
                scale: common.scale,
                offset: common.offset,
                significant_digits: register.data_type.significant_digits(),
                decimals: common.decimals,
            },
        })
    }

    fn profile_quantity(
        &mut self,
        q: &S<String>,
        profile: Option<&Profile>,
        unit: Option<&S<String>>,
        item: &str,
    ) -> Option<ModbusSource> {
        let Some(profile) = profile else {
            self.error_at(
                q,
                item,
                format!(
                    "quantity \"{}\" needs a profile: set `profile` on the meter, or give the register explicitly",
                    q.get_ref()
                ),
            );
            return None;
        };
        let Some(pq) = profile.quantities.get(q.get_ref()) else {
            let names = profile
                .quantities
                .keys()
                .map(String::as_str)
                .collect::<Vec<_>>()
                .join(", ");
            self.error_at(
                q,
                item,
                format!(
                    "profile \"{}\" has no quantity \"{}\"; it has: {names}",
                    profile.name,
                    q.get_ref()
                ),
            );
            return None;
        };
        let register = RegisterSpec {
            table: pq.table,
            address: pq.register,
            data_type: pq.data_type,
            order: pq.order,
        };
        // Profiles write "" for dimensionless quantities such as a power factor.
        let source_unit = pq.unit.clone().filter(|u| !u.is_empty());
        let conversion = match (source_unit.as_deref(), unit) {
            (Some(from), Some(to_at)) => {
                match Conversion::between(from, to_at.get_ref(), Temperature::Absolute) {
                    Ok(c) => c,
                    Err(e) => {
                        let to = to_at.get_ref();
                        self.error_at(
                        to_at,
                        item,
                        format!(
                            "unit \"{to}\" does not fit quantity \"{}\", which the profile gives in \"{from}\": {e}",
                            q.get_ref()
                        ),
                    );
                        return None;
                    }
                }
            }
            // No source unit (a dimensionless quantity): the channel's unit is a label only.
            _ => Conversion::IDENTITY,
        };
        Some(ModbusSource {
            register,
            quantity: Some(q.get_ref().clone()),
            unit_sent: source_unit.clone(),
            source_unit,
            source_scale: pq.scale,
            conversion,
        })
    }

    fn explicit_register(
        &mut self,
        r: &S<i64>,
        raw: &RawModbusChannel,
        item: &str,
    ) -> Option<ModbusSource> {
        let mut ok = true;
        let address = self
            .int_in(r, 0..=0xFFFF, item, "register")
            .and_then(|n| u16::try_from(n).ok());
        let table = match &raw.table {
            None => Table::Holding,
            Some(t) => Table::parse(t.get_ref()).unwrap_or_else(|| {
                self.error_at(t, item, one_of("table", t.get_ref(), Table::NAMES));
                ok = false;
                Table::Holding
            }),
        };
        let data_type = match &raw.data_type {
            None => DataType::U16,
            Some(t) => DataType::parse(t.get_ref()).unwrap_or_else(|| {
                self.error_at(t, item, one_of("type", t.get_ref(), DataType::NAMES));
                ok = false;
                DataType::U16
            }),
        };
        let order = match &raw.order {
            None => WordOrder::Abcd,
            Some(o) => WordOrder::parse(o.get_ref()).unwrap_or_else(|| {
                self.error_at(o, item, one_of("order", o.get_ref(), WordOrder::NAMES));
                ok = false;
                WordOrder::Abcd
            }),
        };
        let address = address?;
        let register = RegisterSpec {
            table,
            address,
            data_type,
            order,
        };
        if register.end() > 0x1_0000 {
            self.error_at(
                r,
                item,
                format!(
                    "register {address:#06x} with type {data_type} ({} registers) runs past the last register 0xffff",
                    data_type.words()
                ),
            );
            return None;
        }
        ok.then_some(ModbusSource {
            register,
            quantity: None,
            source_unit: None,
            unit_sent: None,
            source_scale: 1.0,
            conversion: Conversion::IDENTITY,
        })
    }

    fn mbus(&mut self, raw: S<RawMbusBus>, index: usize) -> MbusBus {
        let span = raw.span();
        let raw = raw.into_inner();
        let (name, item) = self.bus_name(&raw.name, &span, "mbus", index);
        let port = self.serial_port(&raw.port, &span, &item);
        let baud = match &raw.baud {
            None => 2400,
            Some(b) => {
                let n = *b.get_ref();
                if MBUS_BAUDS.contains(&n) {
                    u32::try_from(n).unwrap_or(2400)
                } else {
                    let list = MBUS_BAUDS
                        .iter()
                        .map(i64::to_string)
                        .collect::<Vec<_>>()
                        .join(", ");
                    self.error_at(
                        b,
                        &item,
                        format!("baud = {n} is not an M-Bus rate ({list})"),
                    );
                    2400
                }
            }
        };
        let timeout = match &raw.timeout {
            None => MbusTimeout::Auto,
            Some(t) if t.get_ref() == "auto" => MbusTimeout::Auto,
            Some(_) => MbusTimeout::Fixed(self.duration(
                &raw.timeout,
                Duration::from_secs(1),
                &item,
                "timeout",
                Min::Positive,
            )),
        };
        let retries = self.opt_int(&raw.retries, 2, 0..=10, &item, "retries");
        let mut addresses = Addresses::default();
        let meters = raw
            .meter
            .into_iter()
            .enumerate()
            .map(|(i, m)| self.mbus_meter(m, &item, i, &mut addresses))
            .collect();
        MbusBus {
            name,
            port,
            baud,
            timeout,
            retries,
            meters,
        }
    }

    fn mbus_meter(
        &mut self,
        raw: S<RawMbusMeter>,
        bus_item: &str,
        index: usize,
        seen: &mut Addresses,
    ) -> MbusMeter {
        let span = raw.span();
        let raw = raw.into_inner();
        let (name, item) = self.meter_name(&raw.name, &span, bus_item, index);
        let address = match (&raw.address, &raw.secondary_address) {
            (Some(a), Some(s)) => {
                self.error_at(
                    s,
                    &item,
                    format!(
                        "give either `address` (line {}) or `secondary_address`, not both",
                        self.positions.line_col(a.span().start).0
                    ),
                );
                MbusAddress::Primary(0)
            }
            (None, None) => {
                self.error(
                    Some(&span),
                    &item,
                    "missing key `address` (primary 0..=250) or `secondary_address` (8-digit id)",
                );
                MbusAddress::Primary(0)
            }
            (Some(a), None) => match self
                .int_in(a, 0..=250, &item, "address")
                .and_then(|n| u8::try_from(n).ok())
            {
                Some(n) => {
                    let place = self.place(&a.span(), &item);
                    if let Some(first) = seen.primary.get(&n) {
                        let message = format!(
                            "address {n} is already used on this bus by {} (line {}:{})",
                            first.item, first.line, first.column
                        );
                        self.error_at(a, &item, message);
                    } else {
                        seen.primary.insert(n, place);
                    }
                    MbusAddress::Primary(n)
                }
                None => MbusAddress::Primary(0),
            },
            (None, Some(s)) => match parse_secondary_address(s.get_ref()) {
                Ok(sa) => {
                    let place = self.place(&s.span(), &item);
                    if let Some((_, first)) = seen
                        .secondary
                        .iter()
                        .find(|(other, _)| secondaries_overlap(other, &sa))
                    {
                        let message = format!(
                            "secondary address \"{}\" can select the same meter as {} (line {}:{})",
                            s.get_ref(),
                            first.item,
                            first.line,
                            first.column
                        );
                        self.error_at(s, &item, message);
                    } else {
                        seen.secondary.push((sa.clone(), place));
                    }
                    MbusAddress::Secondary(sa)
                }
                Err(e) => {
                    self.error_at(s, &item, e);
                    MbusAddress::Primary(0)
                }
            },
        };
        let interval = self.duration(
            &raw.interval,
            Duration::from_secs(15 * 60),
            &item,
            "interval",
            Min::AtLeast(Duration::from_secs(1), "1s"),
        );
        if raw.channels.is_empty() {
            self.warn(
                Some(&span),
                &item,
                "meter has no channels: it is never read",
            );
        }
        let channels: Vec<MbusChannel> = raw
            .channels
            .into_iter()
            .enumerate()
            .filter_map(|(i, c)| self.mbus_channel(c, &format!("{item} channel {}", i + 1)))
            .collect();
        self.interval_hint(
            interval,
            channels.iter().map(|c| &c.output),
            raw.interval.as_ref(),
            &span,
            &item,
        );
        MbusMeter {
            name,
            address,
            interval,
            channels,
        }
    }

    fn mbus_channel(&mut self, raw: S<RawMbusChannel>, item: &str) -> Option<MbusChannel> {
        let span = raw.span();
        let raw = raw.into_inner();
        let common = self.channel_common(
            CommonKeys {
                import_id: &raw.import_id,
                kind: &raw.kind,
                unit: &raw.unit,
                suit: &raw.suit,
                scale: &raw.scale,
                offset: &raw.offset,
                decimals: &raw.decimals,
            },
            &span,
            item,
        );
        let (selector, base_unit) = match (&raw.quantity, &raw.record) {
            (Some(q), Some(r)) => {
                self.error_at(
                    r,
                    item,
                    format!(
                        "give either `quantity` (line {}) or `record`, not both",
                        self.positions.line_col(q.span().start).0
                    ),
                );
                (None, None)
            }
            (None, None) => {
                self.error(
                    Some(&span),
                    item,
                    "channel needs either `quantity` or `record`",
                );
                (None, None)
            }
            (None, Some(r)) => {
                for (key, present) in [
                    ("storage", raw.storage.as_ref().map(S::span)),
                    ("tariff", raw.tariff.as_ref().map(S::span)),
                    ("subunit", raw.subunit.as_ref().map(S::span)),
                    ("function", raw.function.as_ref().map(S::span)),
                    ("modifiers", raw.modifiers.as_ref().map(S::span)),
                ] {
                    if let Some(at) = present {
                        self.error(
                            Some(&at),
                            item,
                            format!("`{key}` only narrows a `quantity`; `record` already names one record"),
                        );
                    }
                }
                let selector = self
                    .int_in(r, 0..=i64::from(u16::MAX), item, "record")
                    .and_then(|n| usize::try_from(n).ok())
                    .map(MbusSelector::Record);
                (selector, None)
            }
            (Some(q), None) => match mbus_quantity(q.get_ref()) {
                None => {
                    let names = MBUS_QUANTITIES
                        .iter()
                        .map(|(n, _)| *n)
                        .collect::<Vec<_>>()
                        .join(", ");
                    self.error_at(
                        q,
                        item,
                        format!("unknown M-Bus quantity \"{}\"; known: {names}", q.get_ref()),
                    );
                    (None, None)
                }
                Some(base) => {
                    let storage = raw.storage.as_ref().map_or(Some(0), |s| {
                        self.int_in(s, 0..=MAX_STORAGE, item, "storage")
                    });
                    let tariff = raw
                        .tariff
                        .as_ref()
                        .map_or(Some(0), |t| self.int_in(t, 0..=MAX_TARIFF, item, "tariff"));
                    let subunit = raw.subunit.as_ref().map_or(Some(0), |s| {
                        self.int_in(s, 0..=MAX_SUBUNIT, item, "subunit")
                    });
                    let function = match &raw.function {
                        None => Some(MbusFunction::Instantaneous),
                        Some(f) => match f.get_ref().as_str() {
                            "instantaneous" => Some(MbusFunction::Instantaneous),
                            "maximum" => Some(MbusFunction::Maximum),
                            "minimum" => Some(MbusFunction::Minimum),
                            "error" => Some(MbusFunction::Error),
                            other => {
                                self.error_at(
                                    f,
                                    item,
                                    one_of(
                                        "function",
                                        other,
                                        &["instantaneous", "maximum", "minimum", "error"],
                                    ),
                                );
                                None
                            }
                        },
                    };
                    let mut ok = true;
                    if let (Some(from), Some(c)) = (base, common.as_ref()) {
                        if let Some(to) = c.output.unit.as_deref() {
                            let temperature = if q.get_ref() == "temperature_difference" {
                                Temperature::Difference
                            } else {
                                Temperature::Absolute
                            };
                            if let Err(e) = Conversion::between(from, to, temperature) {
                                let at = raw.unit.as_ref().map_or_else(|| q.span(), S::span);
                                self.error(
                                    Some(&at),
                                    item,
                                    format!(
                                        "unit \"{to}\" does not fit M-Bus quantity \"{}\", measured in \"{from}\": {e}",
                                        q.get_ref()
                                    ),
                                );
                                ok = false;
                            }
                        }
                    }
                    let selector = match (storage, tariff, subunit, function, ok) {
                        (Some(storage), Some(tariff), Some(subunit), Some(function), true) => {
                            Some(MbusSelector::Quantity {
                                quantity: q.get_ref().clone(),
                                storage: u64::try_from(storage).unwrap_or(0),
                                tariff: u32::try_from(tariff).unwrap_or(0),
                                subunit: u32::try_from(subunit).unwrap_or(0),
                                function,
                            })
                        }
                        _ => None,
                    };
                    (selector, base)
                }
            },
        };
        let modifiers = match &raw.modifiers {
            None => Some(Vec::new()),
            Some(m) => {
                let bad: Vec<&String> = m
                    .get_ref()
                    .iter()
                    .filter(|s| {
                        s.is_empty()
                            || !s
                                .chars()
                                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
                    })
                    .collect();
                if bad.is_empty() {
                    Some(m.get_ref().clone())
                } else {
                    self.error_at(
                        m,
                        item,
                        format!(
                            "modifiers are snake_case names as `read` lists them (e.g. \"backward_flow\"), not {bad:?}"
                        ),
                    );
                    None
                }
            }
        };
        let (common, selector, modifiers) = (common?, selector?, modifiers?);
        Some(MbusChannel {
            output: Output {
                series: common.output.series,
                unit: common.output.unit.or_else(|| base_unit.map(str::to_owned)),
            },
            selector,
            modifiers,
            scale: common.scale,
            offset: common.offset,
            decimals: common.decimals,
        })
    }
}

/// Where a Modbus channel's value comes from, resolved from a profile quantity or the keys.
struct ModbusSource {
    register: RegisterSpec,
    quantity: Option<String>,
    source_unit: Option<String>,
    /// Sent when the channel has no `unit` of its own.
    unit_sent: Option<String>,
    source_scale: f64,
    conversion: Conversion,
}

/// M-Bus addresses taken on one bus.
#[derive(Default)]
struct Addresses {
    primary: BTreeMap<u8, Place>,
    secondary: Vec<(SecondaryAddress, Place)>,
}

/// Two secondary addresses overlap when some meter could answer both selects: same id and no
/// field (manufacturer, version, medium) where both are given and differ.
fn secondaries_overlap(a: &SecondaryAddress, b: &SecondaryAddress) -> bool {
    fn compatible<T: PartialEq>(x: &Option<T>, y: &Option<T>) -> bool {
        match (x, y) {
            (Some(x), Some(y)) => x == y,
            _ => true,
        }
    }
    a.id == b.id
        && compatible(&a.manufacturer, &b.manufacturer)
        && compatible(&a.version, &b.version)
        && compatible(&a.medium, &b.medium)
}

/// Why an import id or suit is unusable, if it is.
fn check_identifier(s: &str, max_chars: usize) -> Option<String> {
    if s.is_empty() {
        Some("must not be empty".to_owned())
    } else if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        Some("must not contain spaces or control characters".to_owned())
    } else if s.chars().count() > max_chars {
        Some(format!("is longer than {max_chars} characters"))
    } else {
        None
    }
}

/// A value as quoted in a message: long ones are cut so the message stays one readable line.
fn shown(s: &str) -> String {
    const KEEP: usize = 40;
    if s.chars().count() <= KEEP + 8 {
        s.to_owned()
    } else {
        let head: String = s.chars().take(KEEP).collect();
        format!("{head}…")
    }
}

fn one_of(key: &str, value: &str, names: &[&str]) -> String {
    let list = names
        .iter()
        .map(|n| format!("\"{n}\""))
        .collect::<Vec<_>>()
        .join(", ");
    format!("{key} \"{value}\" must be one of {list}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_defaults_come_from_env() {
        let env = Env {
            state_directory: Some("/var/lib/ec:/var/lib/other".into()),
            hostname: Some("box-7\n".into()),
        };
        let text = "[api]\ncustomer_id = \"0c7f1e2a-3b4c-4d5e-8f90-a1b2c3d4e5f6\"\n";
        let c = parse_with_env(text, Path::new("c.toml"), &env).unwrap();
        assert_eq!(c.queue.path, Path::new("/var/lib/ec/queue.db"));
        assert_eq!(c.api.sender, "box-7");
        let c = parse_with_env(text, Path::new("c.toml"), &Env::default()).unwrap();
        assert_eq!(c.queue.path, Path::new("./queue.db"));
        assert_eq!(c.api.sender, FALLBACK_SENDER);
    }

    #[cfg(unix)]
    #[test]
    fn the_host_name_comes_from_the_kernel() {
        let h = hostname().expect("gethostname");
        assert!(!h.is_empty());
        // The same name the kernel shows in /proc where that is readable.
        if let Ok(proc_name) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
            assert_eq!(h, proc_name.trim());
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("90d"), Ok(Duration::from_secs(90 * 86_400)));
        assert_eq!(parse_duration("0ms"), Ok(Duration::ZERO));
        for bad in [
            "",
            "10",
            "5 minutes",
            "-1s",
            "1.5s",
            "1x",
            "s",
            "1h 30m",
            "99999999999999999999d",
            "213503982335d",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} accepted");
        }
        assert!(parse_duration("10").unwrap_err().contains("no unit"));
    }

    #[test]
    fn queue_default_path() {
        assert_eq!(default_queue_path(None), PathBuf::from("./queue.db"));
        assert_eq!(default_queue_path(Some("")), PathBuf::from("./queue.db"));
        assert_eq!(
            default_queue_path(Some("/var/lib/ec")),
            PathBuf::from("/var/lib/ec/queue.db")
        );
        assert_eq!(
            default_queue_path(Some("/var/lib/a:/var/lib/b")),
            PathBuf::from("/var/lib/a/queue.db")
        );
    }

    #[test]
    fn sender_default() {
        assert_eq!(default_sender(Some("gw-01\n")), "gw-01");
        assert_eq!(default_sender(Some("  \n")), FALLBACK_SENDER);
        assert_eq!(default_sender(None), FALLBACK_SENDER);
    }

    #[test]
    fn secondary_addresses() {
        let a = parse_secondary_address("12345678").unwrap();
        assert_eq!(
            (a.id.as_str(), a.manufacturer, a.version, a.medium),
            ("12345678", None, None, None)
        );
        let a = parse_secondary_address("12345678kam").unwrap();
        assert_eq!(a.manufacturer.as_deref(), Some("KAM"));
        let a = parse_secondary_address("12345678KAM0804").unwrap();
        assert_eq!((a.version, a.medium), (Some(8), Some(4)));
        // KAM = 0x2C2D, wire order 2D 2C.
        let a = parse_secondary_address("148391202D2C0102").unwrap();
        assert_eq!(a.id, "14839120");
        assert_eq!(a.manufacturer.as_deref(), Some("KAM"));
        assert_eq!((a.version, a.medium), (Some(1), Some(2)));
        let a = parse_secondary_address("10857629FFFFFFFF").unwrap();
        assert_eq!((a.manufacturer, a.version, a.medium), (None, None, None));
        for bad in [
            "1234567",
            "1234567A",
            "12345678K",
            "12345678KA1",
            "12345678KAM08",
            "12345678KAM08GG",
            "1234567824C408",
            "12345678KAMé",
            "1234FFFF",
            "12345678ABCDEF01",
        ] {
            assert!(parse_secondary_address(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn base_urls() {
        assert_eq!(
            check_base_url("https://api.enectiva.cz").as_deref(),
            Ok("https://api.enectiva.cz")
        );
        assert_eq!(
            check_base_url("https://x.example/base/").as_deref(),
            Ok("https://x.example/base")
        );
        assert!(check_base_url("http://127.0.0.1:8080").is_ok());
        assert!(check_base_url("http://127.3.4.5").is_ok());
        assert!(check_base_url("http://localhost:1234/").is_ok());
        assert!(check_base_url("http://[::1]:1234/").is_ok());
        assert!(check_base_url("http://api.enectiva.cz").is_err());
        assert!(check_base_url("http://192.168.1.5").is_err());
        assert!(check_base_url("ftp://localhost").is_err());
        assert!(check_base_url("https://x.example/?a=b").is_err());
        assert!(check_base_url("not a url").is_err());
    }

    #[test]
    fn uuids() {
        assert!(is_uuid("0c7f1e2a-3b4c-4d5e-8f90-a1b2c3d4e5f6"));
        assert!(is_uuid("0C7F1E2A-3B4C-4D5E-8F90-A1B2C3D4E5F6"));
        assert!(!is_uuid("0c7f1e2a3b4c4d5e8f90a1b2c3d4e5f6"));
        assert!(!is_uuid("0c7f1e2a-3b4c-4d5e-8f90-a1b2c3d4e5fg"));
        assert!(!is_uuid(""));
    }

    #[test]
    fn tcp_addresses() {
        assert_eq!(
            check_tcp_address("192.168.1.50:502").as_deref(),
            Ok("192.168.1.50:502")
        );
        assert_eq!(
            check_tcp_address("Meter.Local:0502").as_deref(),
            Ok("meter.local:502")
        );
        assert_eq!(check_tcp_address("[::1]:502").as_deref(), Ok("[::1]:502"));
        for bad in [
            "192.168.1.50",
            "host:0",
            "host:65536",
            ":502",
            "::1:502",
            "[::1]",
            "[zz]:502",
            "host:x",
        ] {
            assert!(check_tcp_address(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn overlapping_secondaries() {
        let p = |s| parse_secondary_address(s).unwrap();
        assert!(secondaries_overlap(&p("12345678"), &p("12345678KAM")));
        assert!(!secondaries_overlap(&p("12345678KAM"), &p("12345678ELS")));
        assert!(!secondaries_overlap(&p("12345678"), &p("12345679")));
        assert!(!secondaries_overlap(
            &p("12345678KAM0804"),
            &p("12345678KAM0807")
        ));
    }
}
