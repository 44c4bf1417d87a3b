//! The fault-injection harness: the real daemon binary as a child process, simulated Modbus TCP
//! meters, and the stand-in API that records every reading it accepts. Scenarios build on it;
//! each prints its figures. `ENECTIVA_FAULTS_LONG=1` selects the longer release-check settings.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use enectiva_collector::sim::api::{Accepted, StandIn};
use enectiva_collector::sim::modbus::{SimMeter, SimModbus};

pub const CUSTOMER: &str = "0c7f4a52-2d1e-4e59-9b0a-6d1f3c2b8e11";
pub const TOKEN: &str = "faults-token";
pub const LONG: Duration = Duration::from_secs(120);

/// One scenario at a time: each runs a daemon at a high rate and some measure poll gaps, so
/// two at once on a 2-core CI machine would measure each other. Every scenario holds this.
pub async fn one_at_a_time() -> tokio::sync::MutexGuard<'static, ()> {
    static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    SERIAL.lock().await
}

/// CI-sized (false) or release-check-sized (true) runs.
pub fn long_mode() -> bool {
    std::env::var_os("ENECTIVA_FAULTS_LONG").is_some()
}

/// `ci` in CI, `long` with `ENECTIVA_FAULTS_LONG`.
pub fn size(ci: usize, long: usize) -> usize {
    if long_mode() { long } else { ci }
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_enectiva-collector")
}

/// A small xorshift seeded from the clock and the pid (printed, so a run can be repeated with
/// `FAULTS_SEED`).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(name: &str) -> Rng {
        let seed = std::env::var("FAULTS_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(1)
                    ^ u64::from(std::process::id())
            });
        println!("{name}: seed {seed} (FAULTS_SEED={seed} repeats it)");
        Rng(seed | 1)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Uniform in [lo, hi).
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo).max(1)
    }

    pub fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

/// A scenario's world: a directory, the stand-in API, simulated meters, a config file.
pub struct World {
    pub dir: tempfile::TempDir,
    pub api: StandIn,
    pub meters: Vec<SimModbus>,
    pub config: PathBuf,
}

/// Channels per meter: 9 quantities in the 0x0000 block plus total energy (2 requests).
pub const QUANTITIES: [&str; 10] = [
    "import_energy_total",
    "voltage_l1",
    "voltage_l2",
    "voltage_l3",
    "current_l1",
    "current_l2",
    "current_l3",
    "active_power_total",
    "frequency",
    "total_energy",
];

/// The import id of a meter's channel.
pub fn import_id(meter: usize, quantity: &str) -> String {
    format!("M{meter:02}_{quantity}")
}

impl World {
    /// `meters` simulated SDM630s (one TCP endpoint each), `channels` channels each (≤ 10),
    /// polled every `interval`; the two energies are readings, the rest data points.
    pub async fn new(meters: usize, channels: usize, interval: &str) -> World {
        World::with_head(meters, channels, interval, "").await
    }

    /// As [`World::new`], with extra lines in the `[api]` section (e.g. `max_backoff = "2s"`).
    pub async fn with_head(
        meters: usize,
        channels: usize,
        interval: &str,
        api_extra: &str,
    ) -> World {
        let dir = tempfile::tempdir().expect("tempdir");
        let api = StandIn::start(CUSTOMER, TOKEN).await.expect("stand-in");
        std::fs::write(dir.path().join("token"), TOKEN).expect("token");
        std::fs::set_permissions(
            dir.path().join("token"),
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .expect("chmod token");
        let mut text = format!(
            "[api]\nbase_url = \"{}\"\ncustomer_id = \"{CUSTOMER}\"\ntoken_file = \"{}\"\nsender = \"faults\"\n{api_extra}\n\n[queue]\npath = \"{}\"\n",
            api.base_url(),
            dir.path().join("token").display(),
            dir.path().join("queue.db").display()
        );
        let mut sims = Vec::new();
        for m in 0..meters {
            let sim = SimModbus::start(vec![SimMeter::sdm630(1)])
                .await
                .expect("sim");
            let chans: Vec<String> = QUANTITIES
                .iter()
                .take(channels.clamp(1, 10))
                .map(|q| {
                    let kind = if q.contains("energy") {
                        "reading"
                    } else {
                        "data_point"
                    };
                    format!(
                        "    {{ quantity = \"{q}\", import_id = \"{}\", kind = \"{kind}\" }},",
                        import_id(m, q)
                    )
                })
                .collect();
            text.push_str(&format!(
                "\n[[modbus_tcp]]\nname = \"tcp{m:02}\"\naddress = \"{}\"\ntimeout = \"500ms\"\n  [[modbus_tcp.meter]]\n  name = \"m{m:02}\"\n  unit_id = 1\n  interval = \"{interval}\"\n  profile = \"eastron-sdm630\"\n  channels = [\n{}\n  ]\n",
                sim.addr(),
                chans.join("\n")
            ));
            sims.push(sim);
        }
        let config = dir.path().join("config.toml");
        std::fs::write(&config, text).expect("config");
        World {
            dir,
            api,
            meters: sims,
            config,
        }
    }

    pub fn queue_path(&self) -> PathBuf {
        self.dir.path().join("queue.db")
    }

    /// Starts `run` with stderr captured to a file (so a killed child loses nothing).
    pub fn start(&self, env: &[(&str, &str)]) -> Daemon {
        Daemon::start(&self.config, self.dir.path(), env)
    }

    /// Every value a meter's register held when it was read, per import id, as the sim served
    /// it (only for the two energies, which grow and so identify their read).
    pub fn served_energy(&self) -> BTreeMap<String, BTreeSet<u64>> {
        let mut out: BTreeMap<String, BTreeSet<u64>> = BTreeMap::new();
        for (m, sim) in self.meters.iter().enumerate() {
            for s in sim.served() {
                for (q, addr) in [("import_energy_total", 0x0048u16), ("total_energy", 0x0156)] {
                    if s.start <= addr && addr + 1 < s.start + s.count {
                        let i = usize::from(addr - s.start);
                        let bits = (u32::from(s.words[i]) << 16) | u32::from(s.words[i + 1]);
                        let v = f32::from_bits(bits)
                            .to_string()
                            .parse::<f64>()
                            .unwrap_or(f64::NAN);
                        out.entry(import_id(m, q)).or_default().insert(key(v));
                    }
                }
            }
        }
        out
    }

    /// Nothing invented: every delivered energy is a value its register held when read.
    pub fn assert_nothing_invented(&self, acc: &[Accepted]) {
        let served = self.served_energy();
        for a in acc {
            if a.import_id.ends_with("energy_total") || a.import_id.ends_with("total_energy") {
                assert!(
                    served
                        .get(&a.import_id)
                        .is_some_and(|s| s.contains(&key(a.value))),
                    "{} = {} was never read",
                    a.import_id,
                    a.value
                );
            }
        }
    }

    /// Requests the stand-in answered 409: readings sent again after their first delivery.
    pub fn duplicates(&self) -> usize {
        self.api
            .attempts()
            .iter()
            .filter(|a| a.status == Some(409))
            .count()
    }
}

/// An f64 as an exact key (values are multiples of 0.25).
pub fn key(v: f64) -> u64 {
    (v * 1000.0).round() as u64
}

/// What is in the queue file right now: (import id, time, value) of every pending reading.
/// Read-only and tolerant: a file being written is read through SQLite's own locking.
pub fn queue_rows(path: &Path) -> Vec<(String, i64, f64)> {
    let Ok(conn) =
        rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
    else {
        return Vec::new();
    };
    let _ = conn.busy_timeout(Duration::from_secs(5));
    let Ok(mut stmt) = conn.prepare("SELECT import_id, time, value FROM readings ORDER BY id")
    else {
        return Vec::new();
    };
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .map(|rows| rows.filter_map(Result::ok).collect())
        .unwrap_or_default()
}

/// `PRAGMA quick_check` of the queue file as a string ("ok" when sound), or the error.
pub fn quick_check(path: &Path) -> String {
    let conn = match rusqlite::Connection::open(path) {
        Ok(c) => c,
        Err(e) => return format!("open: {e}"),
    };
    let _ = conn.busy_timeout(Duration::from_secs(5));
    conn.query_row("PRAGMA quick_check", [], |r| r.get::<_, String>(0))
        .unwrap_or_else(|e| format!("quick_check: {e}"))
}

/// The stand-in's accepted readings grouped by import id, in arrival order.
pub fn by_series(acc: &[Accepted]) -> BTreeMap<String, Vec<&Accepted>> {
    let mut out: BTreeMap<String, Vec<&Accepted>> = BTreeMap::new();
    for a in acc {
        out.entry(a.import_id.clone()).or_default().push(a);
    }
    out
}

/// Every series' accepted readings are in increasing time order (the order they were read).
pub fn assert_order(acc: &[Accepted]) {
    for (id, v) in by_series(acc) {
        assert!(
            v.windows(2).all(|w| w[0].time < w[1].time),
            "series {id} delivered out of order"
        );
    }
}

/// The daemon as a child process.
pub struct Daemon {
    pub child: Child,
    pub log: PathBuf,
    pub started: Instant,
}

impl Daemon {
    pub fn start(config: &Path, dir: &Path, env: &[(&str, &str)]) -> Daemon {
        let log = dir.join(format!(
            "daemon-{}.log",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        ));
        let file = std::fs::File::create(&log).expect("log");
        let mut c = Command::new(bin());
        c.args(["-c", config.to_str().expect("utf8"), "run"])
            .env_remove("JOURNAL_STREAM")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("CREDENTIALS_DIRECTORY")
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::from(file));
        for (k, v) in env {
            c.env(k, v);
        }
        Daemon {
            child: c.spawn().expect("spawn run"),
            log,
            started: Instant::now(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn signal(&self, sig: &str) {
        let _ = Command::new("kill")
            .args([sig, &self.pid().to_string()])
            .status();
    }

    /// SIGTERM and wait (bounded); (exit code, how long the stop took, log).
    pub fn stop(self) -> (Option<i32>, Duration, String) {
        let (status, took, log) = self.stop_status();
        (status.code(), took, log)
    }

    /// [`Daemon::stop`] with the whole exit status (a death by a signal has no code); a daemon
    /// that does not stop within 15 s is killed (SIGKILL).
    pub fn stop_status(mut self) -> (std::process::ExitStatus, Duration, String) {
        let t = Instant::now();
        self.signal("-TERM");
        let limit = Duration::from_secs(15);
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(s)) => break s,
                Ok(None) if t.elapsed() <= limit => {}
                _ => {
                    let _ = self.child.kill();
                    break self.child.wait().expect("wait for the killed daemon");
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let took = t.elapsed();
        (status, took, self.log_text())
    }

    /// Waits (bounded) until the daemon logged "running": signals are handled and tasks are up.
    pub async fn wait_running(&self) -> bool {
        wait_until(LONG, || self.log_text().contains(" running")).await
    }

    pub fn log_text(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }
}

/// Waits for a condition (bounded); true when it held.
pub async fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    f()
}

/// Seconds since the epoch of an RFC 3339 time as the API received it.
pub fn epoch(rfc3339: &str) -> i64 {
    humantime::parse_rfc3339(rfc3339)
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs() as i64)
}

/// (import id, epoch seconds, value key) of every accepted reading and data point.
pub fn delivered_set(acc: &[Accepted]) -> BTreeSet<(String, i64, u64)> {
    acc.iter()
        .map(|a| (a.import_id.clone(), epoch(&a.time), key(a.value)))
        .collect()
}

/// An in-process TCP proxy on loopback in front of the stand-in that can turn into a black
/// hole: every byte in either direction is swallowed and new connections are accepted and then
/// ignored, as when a cellular link dies without a reset (no root, no firewall needed).
#[derive(Clone)]
pub struct Proxy {
    pub addr: std::net::SocketAddr,
    black_hole: std::sync::Arc<std::sync::atomic::AtomicBool>,
    accepts: std::sync::Arc<std::sync::Mutex<Vec<Instant>>>,
}

impl Proxy {
    pub async fn start(upstream: std::net::SocketAddr) -> Proxy {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind proxy");
        let proxy = Proxy {
            addr: listener.local_addr().expect("addr"),
            black_hole: Default::default(),
            accepts: Default::default(),
        };
        let p = proxy.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                p.accepts.lock().expect("lock").push(Instant::now());
                let hole = p.black_hole.clone();
                tokio::spawn(async move {
                    let (mut cr, mut cw) = client.into_split();
                    if hole.load(Ordering::SeqCst) {
                        swallow(&mut cr).await;
                        drop(cw);
                        return;
                    }
                    let Ok(server) = tokio::net::TcpStream::connect(upstream).await else {
                        return;
                    };
                    let (mut sr, mut sw) = server.into_split();
                    let h1 = hole.clone();
                    let up = tokio::spawn(async move { pump(&mut cr, &mut sw, &h1).await });
                    pump(&mut sr, &mut cw, &hole).await;
                    up.abort();
                });
            }
        });
        proxy
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn set_black_hole(&self, on: bool) {
        self.black_hole
            .store(on, std::sync::atomic::Ordering::SeqCst);
    }

    /// When each connection was accepted.
    pub fn accepts(&self) -> Vec<Instant> {
        self.accepts.lock().expect("lock").clone()
    }
}

/// Copies until EOF; while the black hole is on, reads and drops.
async fn pump(
    from: &mut tokio::net::tcp::OwnedReadHalf,
    to: &mut tokio::net::tcp::OwnedWriteHalf,
    hole: &std::sync::atomic::AtomicBool,
) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if hole.load(std::sync::atomic::Ordering::SeqCst) {
                    continue;
                }
                if to.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
}

async fn swallow(from: &mut tokio::net::tcp::OwnedReadHalf) {
    use tokio::io::AsyncReadExt as _;
    let mut buf = vec![0u8; 16 * 1024];
    while let Ok(n) = from.read(&mut buf).await {
        if n == 0 {
            return;
        }
    }
}

/// Points the world's config at another API address (e.g. a [`Proxy`]).
pub fn redirect_api(world: &World, url: &str) {
    let text = std::fs::read_to_string(&world.config).expect("config");
    std::fs::write(&world.config, text.replace(&world.api.base_url(), url)).expect("config");
}

/// Coefficient of variation (standard deviation / mean) of durations in seconds.
pub fn coefficient_of_variation(v: &[f64]) -> f64 {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
    var.sqrt() / mean
}

// ---- Helpers of the power-cut (R2) and disk-full (R3) scenarios ----

/// Points the world's config at a queue file inside `dir` (a state directory of its own, so
/// the scenario's logs and config stay out of it) and returns the new queue path.
pub fn move_queue(world: &World, dir: &Path) -> PathBuf {
    let old = world.queue_path();
    let new = dir.join("queue.db");
    let text = std::fs::read_to_string(&world.config).expect("read config");
    let from = format!("path = \"{}\"", old.display());
    assert!(text.contains(&from), "queue path not in the config");
    let text = text.replace(&from, &format!("path = \"{}\"", new.display()));
    std::fs::write(&world.config, text).expect("write config");
    new
}

/// Compiles the LD_PRELOAD shim `tests/faults/shim/<name>.c` into `<out>/<name>.so` with `$CC`
/// (default `cc`). A missing compiler fails the scenario with what to install: the shim is the
/// fault, so there is nothing honest to skip to.
pub fn build_shim(name: &str, out: &Path) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/faults/shim")
        .join(format!("{name}.c"));
    let so = out.join(format!("{name}.so"));
    let cc = std::env::var("CC")
        .ok()
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(|| "cc".to_string());
    let o = match Command::new(&cc)
        .args(["-shared", "-fPIC", "-O2", "-pthread", "-o"])
        .arg(&so)
        .arg(&src)
        .arg("-ldl")
        .output()
    {
        Ok(o) => o,
        Err(e) => panic!(
            "cannot run the C compiler `{cc}` ({e}) to build the LD_PRELOAD shim {}: install one \
             (Debian: apt-get install gcc) or point $CC at it",
            src.display()
        ),
    };
    assert!(
        o.status.success(),
        "`{cc}` failed to build the LD_PRELOAD shim {} ({}):\n{}",
        src.display(),
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    so
}

/// The `max_id` of every `committed` debug line of the queue (log level
/// `enectiva_collector::queue=debug`), in order: everything up to it was reported durable.
pub fn committed_ids(log: &str) -> Vec<i64> {
    strip_ansi(log)
        .lines()
        .filter(|l| l.contains("committed"))
        .filter_map(|l| {
            let rest = &l[l.find("max_id=")? + "max_id=".len()..];
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        })
        .collect()
}

/// The log text without the ANSI colour sequences the compact stderr format writes.
pub fn strip_ansi(log: &str) -> String {
    let mut out = String::with_capacity(log.len());
    let mut chars = log.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ parameters… final letter.
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// How many log lines carry this `MESSAGE_ID`.
pub fn count_message(log: &str, message_id: &str) -> usize {
    log.lines().filter(|l| l.contains(message_id)).count()
}

/// `SELECT seq FROM sqlite_sequence` for `readings`: the highest reading id ever committed to
/// this file (0 when there is none).
pub fn readings_sequence(path: &Path) -> i64 {
    let Ok(conn) = rusqlite::Connection::open(path) else {
        return 0;
    };
    let _ = conn.busy_timeout(Duration::from_secs(5));
    conn.query_row(
        "SELECT seq FROM sqlite_sequence WHERE name = 'readings'",
        [],
        |r| r.get(0),
    )
    .unwrap_or(0)
}

/// True when the tests run as root (`id -u` is 0).
pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// Readings read from the simulated meters in complete polls: a meter's poll is all or nothing
/// and reads the 0x0000 block (with 0x0048) and the 0x0156 block, so the polls that got both
/// answers are the smaller of the two counts; each gave `channels` readings.
pub fn readings_read(world: &World, channels: usize) -> usize {
    world
        .meters
        .iter()
        .map(|sim| {
            let served = sim.served();
            let has = |addr: u16| {
                served
                    .iter()
                    .filter(|s| s.start <= addr && addr < s.start + s.count)
                    .count()
            };
            has(0x0048).min(has(0x0156)) * channels
        })
        .sum()
}

impl World {
    /// Puts a fresh stand-in API (nothing accepted yet) in place of the current one and points
    /// the config file at it; daemons started afterwards send there. The meters keep running,
    /// so their energies keep growing across the scenario's runs.
    pub async fn replace_api(&mut self) {
        let old = self.api.base_url();
        let api = StandIn::start(CUSTOMER, TOKEN).await.expect("stand-in");
        let text = std::fs::read_to_string(&self.config).expect("config");
        std::fs::write(&self.config, text.replace(&old, &api.base_url())).expect("config");
        std::mem::replace(&mut self.api, api).stop().await;
    }
}
