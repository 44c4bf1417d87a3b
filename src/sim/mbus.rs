//! A simulated wired M-Bus behind an in-process pseudo-terminal: a level converter with
//! [`SimSlave`]s on it. The daemon opens [`SimMbus::path`] (`/dev/pts/N`; configured as 2400 8E1,
//! which a pty ignores) exactly as it opens a USB M-Bus master, writes the master's telegrams and
//! reads what the slaves answer: `E5`, RSP_UD long frames (CI `72`), or the garbled bytes of a
//! collision. The slaves behave as `shared/reference/mbus.md` §5–§6 describes: SND_NKE, REQ_UD2
//! with FCB and multi-telegram readout, secondary selection with wildcards, the addresses 253–255.
//! The converter can echo the master's bytes, and the line can emulate wire time.
//!
//! It owns the pty pair and one task, and serves tests and `demo`, never the daemon's poll path.
//! It must not use the crate's M-Bus code (`crate::mbus`), which it exists to test: the few
//! frame formats it needs are parsed and built here, independently. Nothing here panics on bytes
//! from the line; a telegram that does not parse or whose checksum fails gets no answer, as a
//! real slave must not answer a corrupted telegram.

use std::collections::VecDeque;
use std::fmt;
use std::fs::File;
use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use tokio_serial::SerialStream;
use tokio_util::sync::{CancellationToken, DropGuard};
use tokio_util::task::TaskTracker;

use super::pty::{HANGUP_PAUSE, Pty};
use super::rtu::LineTiming;

/// A partial telegram is dropped after this long without a further byte, as a slave's UART
/// resynchronises on a pause: otherwise one stray `68` from the master would make the line wait
/// for a frame that never completes and swallow the next real telegrams.
const PARTIAL_TIMEOUT: Duration = Duration::from_millis(100);

/// Noise ([`SimMbus::set_noise`]) goes out as chunks of this many bytes, one every
/// [`NOISE_PERIOD`] (3200 bytes a second, whatever the line's timing).
const NOISE_CHUNK: usize = 16;
const NOISE_PERIOD: Duration = Duration::from_millis(5);

/// How many decoded requests [`SimMbus::requests`] keeps (the newest), so a long `demo` does not
/// grow without bound.
const REQUEST_LOG: usize = 10_000;

const ACK: u8 = 0xE5;
const SHORT_START: u8 = 0x10;
const LONG_START: u8 = 0x68;
const STOP: u8 = 0x16;
const C_SND_NKE: u8 = 0x40;
const C_SND_UD: u8 = 0x53;
const C_REQ_UD2: u8 = 0x5B;
const C_RSP_UD: u8 = 0x08;
const FCB: u8 = 0x20;
const CI_APP_RESET: u8 = 0x50;
const CI_SELECT: u8 = 0x52;
const CI_RSP_VARIABLE: u8 = 0x72;
const LAST_PRIMARY: u8 = 250;
const SELECTED: u8 = 0xFD;
const BROADCAST_REPLY: u8 = 0xFE;
const BROADCAST_SILENT: u8 = 0xFF;
/// The 12-byte CI `72` header leaves this much of a long frame's 252 data bytes for records.
const MAX_RECORDS: usize = 252 - 12;

/// How the converter and the wire behave.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MbusLineOptions {
    /// The converter echoes every byte the master writes back to it, before any answer, as some
    /// converters and optical heads do (mbus.md §3). Junk and corrupted telegrams are echoed too.
    pub echo: bool,
    /// `(baud, latency)`: bytes take 11 bit times each on the wire (8E1), and a slave starts
    /// answering `latency` after the master's telegram ended; its answer arrives byte by byte.
    /// Without it everything is instant.
    pub timing: Option<(u32, Duration)>,
}

/// One slave on the bus, as configured before [`SimMbus::start`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimSlave {
    primary: u8,
    id: u32,
    manufacturer: String,
    version: u8,
    medium: u8,
    data: Data,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Data {
    /// [`SimSlave::heat_meter`]'s one telegram; the energy register of the next readout.
    HeatMeter { energy_kwh: u32 },
    /// The records of each telegram of a readout (the bytes after the 12-byte header).
    Telegrams(Vec<Vec<u8>>),
    /// A whole RSP_UD frame, sent verbatim.
    Raw(Vec<u8>),
}

impl SimSlave {
    /// A slave with primary address `primary` (0–250), identification number `id` (8 decimal
    /// digits, e.g. `12345678`, sent as BCD), a three-letter manufacturer (`"KAM"`), version and
    /// medium. Its readout is one telegram with the header only, until [`SimSlave::with_telegrams`]
    /// or [`SimSlave::with_raw_rsp_ud`] says otherwise. [`SimMbus::start`] checks the values.
    pub fn new(primary: u8, id: u32, manufacturer: &str, version: u8, medium: u8) -> SimSlave {
        SimSlave {
            primary,
            id,
            manufacturer: manufacturer.to_owned(),
            version,
            medium,
            data: Data::Telegrams(vec![Vec::new()]),
        }
    }

    /// A Kamstrup-like heat meter (manufacturer KAM, version 1, medium `04` heat) whose readout
    /// is one RSP_UD. For `heat_meter(5, 12345678)` the first readout is exactly
    ///
    /// ```text
    /// 68 38 38 68 08 05 72               long frame, L = 56; RSP_UD; address 5; CI 72
    /// 78 56 34 12 2D 2C 01 04 01 00 00 00  id 12345678, KAM, version 1, heat, access 1, status 0, signature 0
    /// 0C 06 45 23 01 00                  energy, 8-digit BCD, kWh (Wh × 10^3)  12345 kWh
    /// 0C 14 21 43 65 00                  volume, 8-digit BCD, 0.01 m³          6543.21 m³
    /// 0B 2B 50 12 00                     power, 6-digit BCD, W                 1250 W
    /// 0A 5A 35 06                        flow temperature, 4-digit BCD, 0.1 °C  63.5 °C
    /// 0A 5E 12 04                        return temperature, 0.1 °C            41.2 °C
    /// 0A 62 23 02                        temperature difference, 0.1 K         22.3 K
    /// 4C 06 00 00 01 00                  energy, storage 1 (DIF 4C), kWh        10000 kWh
    /// 0C 78 78 56 34 12                  fabrication number (BCD)              12345678
    /// 87 16                              checksum, stop
    /// ```
    ///
    /// Each later readout (a REQ_UD2 that is not a retry) has 1 kWh more energy and the next
    /// access number; everything else stays. The fabrication number is the identification number.
    pub fn heat_meter(primary: u8, id: u32) -> SimSlave {
        SimSlave {
            data: Data::HeatMeter { energy_kwh: 12_345 },
            ..SimSlave::new(primary, id, "KAM", 0x01, 0x04)
        }
    }

    /// A multi-telegram readout: the records of each telegram (the user data after the 12-byte
    /// header, which the simulator fills in: id, manufacturer, version, medium, an access number
    /// that grows with every new answer, status 0, signature 0). The records are sent verbatim,
    /// so the caller ends every telegram but the last with DIF `1F` ("more records follow"),
    /// and can leave it out to simulate a meter that gets it wrong. At most 240 bytes each.
    pub fn with_telegrams(self, telegrams: Vec<Vec<u8>>) -> SimSlave {
        SimSlave {
            data: Data::Telegrams(telegrams),
            ..self
        }
    }

    /// Answers every REQ_UD2 with exactly `frame` (e.g. a libmbus fixture), whatever its address
    /// field or checksum says; the slave's own settings only decide who it answers to.
    pub fn with_raw_rsp_ud(self, frame: Vec<u8>) -> SimSlave {
        SimSlave {
            data: Data::Raw(frame),
            ..self
        }
    }

    fn invalid(&self, why: &str) -> io::Error {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("simulated M-Bus slave {}: {why}", self.primary),
        )
    }

    /// The running slave, or why this configuration cannot be one.
    fn into_slave(self) -> io::Result<Slave> {
        if self.primary > LAST_PRIMARY {
            return Err(self.invalid("primary addresses are 0-250"));
        }
        if self.id > 99_999_999 {
            return Err(self.invalid("the identification number has 8 decimal digits"));
        }
        let Some(manufacturer) = manufacturer_code(&self.manufacturer) else {
            return Err(self.invalid("the manufacturer is three letters A-Z"));
        };
        match &self.data {
            Data::Telegrams(telegrams) if telegrams.is_empty() => {
                return Err(self.invalid("a readout has at least one telegram"));
            }
            Data::Telegrams(telegrams) if telegrams.iter().any(|t| t.len() > MAX_RECORDS) => {
                return Err(self.invalid("a telegram's records are at most 240 bytes"));
            }
            Data::Raw(frame) if frame.is_empty() => {
                return Err(self.invalid("a raw RSP_UD has at least one byte"));
            }
            _ => {}
        }
        Ok(Slave {
            primary: self.primary,
            id: bcd4(self.id),
            manufacturer,
            version: self.version,
            medium: self.medium,
            data: self.data,
            selected: false,
            fcb: None,
            position: 0,
            last: Vec::new(),
            access: 0,
            readouts: 0,
            absent: false,
            reply_delay: Duration::ZERO,
        })
    }
}

/// A master telegram the line received, decoded by the simulator's own parser.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// When its last byte was read from the pty.
    pub at: Instant,
    pub kind: RequestKind,
    /// The A-field (as received, for a corrupted telegram too).
    pub address: u8,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestKind {
    /// `10 40 A CS 16`.
    SndNke,
    /// `10 5B/7B A CS 16`.
    ReqUd2 { fcb: bool },
    /// SND_UD (`53`/`73`) with CI `52` and 8 data bytes: ID (BCD, LSB first), manufacturer,
    /// version, medium, with `F` nibbles and `FF` bytes as wildcards.
    Select { mask: [u8; 8] },
    /// SND_UD with CI `50` and at most one subcode byte.
    AppReset,
    /// A well-formed telegram of any other kind (no slave answers it): the whole frame.
    Other(Vec<u8>),
    /// A frame whose structure is right but whose checksum is not (no slave answers it).
    Corrupt(Vec<u8>),
}

/// A running bus. Clones share it; it stops with [`SimMbus::close`] or when the last clone is
/// dropped.
///
/// **The pty ends** are handled as on [`super::rtu::SimRtuBus`] (which says why): the daemon
/// opens [`SimMbus::path`] exclusively, the simulator keeps a slave descriptor of its own so
/// the line survives the daemon's closes, and every descriptor is close-on-exec.
///
/// **One telegram at a time.** The line reads the master's bytes, echoes them if the converter
/// does, cuts them into telegrams (dropping bytes that cannot start one, and a partial telegram
/// after 100 ms of silence), records each in [`SimMbus::requests`], and lets every
/// slave that is not absent react to it, as all slaves hear every telegram. Those the telegram
/// asks to answer do, after their reply delay; while they wait, later bytes from the master
/// wait in the pty, as on a half-duplex bus.
///
/// **Addresses.** 0–250: the slaves with that primary address (two with the same one collide).
/// 253: the selected slaves. 254: every slave. 255: every slave, but nobody answers.
/// - SND_NKE: `E5`; the slave's FCB and multi-telegram position are reset; to 253 or 255 it
///   also deselects the slave.
/// - REQ_UD2: RSP_UD (C `08`, A = its primary address). The first REQ_UD2 after a reset gets
///   telegram 1; a toggled FCB gets the next telegram (after the last, telegram 1 of a new
///   readout); the same FCB again is a retry and gets the same bytes again (same access number).
/// - Select (to 253 only): a matching slave is selected, its FCB and position are reset (the
///   select starts a new conversation), and it answers `E5`; every other slave deselects itself.
/// - Application reset (CI `50`): `E5`, and the next REQ_UD2 gets telegram 1.
/// - Anything else, or a bad checksum: no answer and no change.
///
/// **Collisions.** When several slaves answer one telegram, the line carries their answers
/// superimposed: on M-Bus a slave sends a 0 bit by drawing extra current, so a
/// 0 from anyone wins (a wired AND), and no two slaves start in the same bit time, so each
/// further slave is taken to start one bit time after the previous one. The result is read in
/// 11-bit characters (8E1) at the first answer's character boundaries; parity and framing
/// errors cannot cross a pty, so only the data bits arrive. Two `E5`s become the one byte `C0`,
/// three become `80`; colliding long frames start with `40` instead of `68` and run about as
/// long as the longest of them. The collision goes out after the longest reply delay among the slaves involved.
///
/// **Absent** slaves hear nothing: they neither answer nor change state.
///
/// **Noise** ([`SimMbus::set_noise`]): while it is on, the line carries one byte value over and
/// over whenever it is not busy answering; the slaves still hear and answer telegrams.
///
/// **Wire time** ([`MbusLineOptions::timing`]): every chunk of bytes read from the master is
/// taken to have just crossed the wire (its frame time passes before it is echoed or parsed);
/// an answer starts `latency + reply delay` later and crosses the wire a character at a time:
/// each byte is written once its last bit would be in, so the master sees the answer trickle in
/// (its inter-byte timeout at work) and has the last byte `latency + reply delay + frame time of
/// the answer` after the telegram.
#[derive(Clone)]
pub struct SimMbus {
    line: Arc<Line>,
    /// Stops the line when the last handle goes away, so a forgotten `close` cannot leave a
    /// pty and a task behind in a long `demo`.
    _alive: Arc<DropGuard>,
}

impl fmt::Debug for SimMbus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimMbus")
            .field("path", &self.line.path)
            .field("echo", &self.line.echo)
            .field("timing", &self.line.timing)
            .finish_non_exhaustive()
    }
}

impl SimMbus {
    /// Creates the pty pair and puts `slaves` on the bus. A primary address above 250, an
    /// identification number above 99999999, a manufacturer that is not three letters, no
    /// telegram, a telegram with more than 240 bytes of records or an empty raw frame is refused
    /// (`InvalidInput`). Two slaves may share a primary address: they collide when addressed.
    pub async fn start(slaves: Vec<SimSlave>, opts: MbusLineOptions) -> io::Result<SimMbus> {
        let slaves = slaves
            .into_iter()
            .map(SimSlave::into_slave)
            .collect::<io::Result<Vec<_>>>()?;
        let Pty { master, path, held } = Pty::open()?;
        let stop = CancellationToken::new();
        let tasks = TaskTracker::new();
        let line = Arc::new(Line {
            path,
            echo: opts.echo,
            timing: opts.timing.map(|(baud, latency)| LineTiming {
                baud,
                bits_per_char: 11,
                latency,
            }),
            bus: Mutex::new(Bus {
                slaves,
                requests: VecDeque::new(),
            }),
            received: watch::Sender::new(0),
            noise: watch::Sender::new(None),
            stop: stop.clone(),
            tasks: tasks.clone(),
        });
        tasks.spawn(run(line.clone(), master, held));
        Ok(SimMbus {
            line,
            _alive: Arc::new(stop.drop_guard()),
        })
    }

    /// The pty's slave end, e.g. `/dev/pts/4`: what the daemon opens.
    pub fn path(&self) -> PathBuf {
        self.line.path.clone()
    }

    /// Every master telegram received so far (the newest 10 000), decoded, in order of arrival.
    /// Bytes that never formed a telegram are not listed.
    pub fn requests(&self) -> Vec<Request> {
        lock(&self.line.bus).requests.iter().cloned().collect()
    }

    /// Waits until at least `n` telegrams were received in all, at most `timeout`; false on
    /// timeout. A telegram is recorded before any slave reacts to it.
    pub async fn wait_requests(&self, n: u64, timeout: Duration) -> bool {
        let mut rx = self.line.received.subscribe();
        matches!(
            tokio::time::timeout(timeout, rx.wait_for(|&count| count >= n)).await,
            Ok(Ok(_))
        )
    }

    /// RSP_UD frames written to the line by the slave(s) with this primary address, however
    /// they were addressed, retries and collisions included.
    pub fn readouts(&self, primary: u8) -> u64 {
        lock(&self.line.bus)
            .slaves
            .iter()
            .filter(|slave| slave.primary == primary)
            .map(|slave| slave.readouts)
            .sum()
    }

    /// An absent slave (unplugged, or dead) hears nothing and never answers. Like every setter
    /// here, it applies to every slave with that primary address and only logs a warning if
    /// there is none.
    pub fn set_absent(&self, primary: u8, absent: bool) {
        self.line
            .with_slaves(primary, |slave| slave.absent = absent);
    }

    /// The slave waits `delay` more before it answers (slow, but within the master's timeout if
    /// the test chooses so).
    pub fn set_reply_delay(&self, primary: u8, delay: Duration) {
        self.line
            .with_slaves(primary, |slave| slave.reply_delay = delay);
    }

    /// With `Some(byte)`, the line carries `byte` continuously, between and after the slaves'
    /// answers, until `set_noise(None)`: a shorted bus reads as a stream of `00`, a slave at
    /// another baud rate as junk. 16 bytes go out every 5 ms.
    pub fn set_noise(&self, byte: Option<u8>) {
        self.line.noise.send_replace(byte);
    }

    /// Unplugs the converter: closes the master end (and everything else of the line) and waits
    /// until it is gone. A daemon holding the port open then fails at once: a read with end of
    /// file or EIO, a write with EIO.
    pub async fn close(self) {
        self.line.stop.cancel();
        self.line.tasks.close();
        self.line.tasks.wait().await;
    }
}

struct Line {
    path: PathBuf,
    echo: bool,
    timing: Option<LineTiming>,
    bus: Mutex<Bus>,
    /// Telegrams received in all (the log keeps only the newest).
    received: watch::Sender<u64>,
    /// The byte the line carries continuously, if any ([`SimMbus::set_noise`]).
    noise: watch::Sender<Option<u8>>,
    stop: CancellationToken,
    tasks: TaskTracker,
}

struct Bus {
    slaves: Vec<Slave>,
    requests: VecDeque<Request>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Never held across an await; a panic elsewhere must not wedge the line.
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl Line {
    fn with_slaves(&self, primary: u8, change: impl Fn(&mut Slave)) {
        let mut bus = lock(&self.bus);
        let mut found = false;
        for slave in bus.slaves.iter_mut().filter(|s| s.primary == primary) {
            change(slave);
            found = true;
        }
        if !found {
            tracing::warn!(
                primary,
                "simulated M-Bus: no slave with this primary address"
            );
        }
    }

    /// Records a telegram and lets every slave react; returns who answers what.
    fn receive(&self, raw: Vec<u8>) -> Vec<Reply> {
        let (kind, address) = decode(raw);
        let mut bus = lock(&self.bus);
        if bus.requests.len() >= REQUEST_LOG {
            bus.requests.pop_front();
        }
        bus.requests.push_back(Request {
            at: Instant::now(),
            kind: kind.clone(),
            address,
        });
        self.received.send_modify(|count| *count += 1);
        bus.slaves
            .iter_mut()
            .enumerate()
            .filter(|(_, slave)| !slave.absent)
            .filter_map(|(index, slave)| {
                let (bytes, readout) = slave.react(&kind, address)?;
                Some(Reply {
                    slave: index,
                    bytes,
                    readout,
                    delay: slave.reply_delay,
                })
            })
            .collect()
    }

    /// Writes the answers to one telegram, superimposed if there are several.
    async fn answer(&self, master: &mut SerialStream, replies: Vec<Reply>) {
        let Some(delay) = replies.iter().map(|reply| reply.delay).max() else {
            return;
        };
        let bytes = match replies.as_slice() {
            [one] => one.bytes.clone(),
            _ => superimpose(replies.iter().map(|reply| reply.bytes.as_slice())),
        };
        let written = match self.timing {
            Some(t) => {
                let start = tokio::time::Instant::now() + t.latency.saturating_add(delay);
                write_paced(master, &bytes, t, start).await
            }
            None => {
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                master.write_all(&bytes).await
            }
        };
        if let Err(error) = written {
            // Lost, as on a line nobody listens to; not counted.
            tracing::debug!(%error, "simulated M-Bus: writing an answer failed");
            return;
        }
        let mut bus = lock(&self.bus);
        for reply in replies.iter().filter(|reply| reply.readout) {
            if let Some(slave) = bus.slaves.get_mut(reply.slave) {
                slave.readouts += 1;
            }
        }
    }
}

/// Writes `bytes` as they would cross the wire from `start` on: byte `k` (from 1) once its last
/// bit is in, `start + frame_time(k)`. Whatever is due goes out together, so a late wake-up
/// catches up instead of stretching the answer.
async fn write_paced(
    master: &mut SerialStream,
    bytes: &[u8],
    timing: LineTiming,
    start: tokio::time::Instant,
) -> io::Result<()> {
    let mut sent = 0;
    while sent < bytes.len() {
        tokio::time::sleep_until(start + timing.frame_time(sent + 1)).await;
        let now = tokio::time::Instant::now();
        let mut due = sent + 1;
        while due < bytes.len() && start + timing.frame_time(due + 1) <= now {
            due += 1;
        }
        master
            .write_all(bytes.get(sent..due).unwrap_or_default())
            .await?;
        sent = due;
    }
    Ok(())
}

/// One slave's answer to one telegram.
struct Reply {
    slave: usize,
    bytes: Vec<u8>,
    /// An RSP_UD (counted in [`SimMbus::readouts`] once written).
    readout: bool,
    delay: Duration,
}

/// A slave while the bus runs.
struct Slave {
    primary: u8,
    /// BCD, least significant byte first, as in the header and a select.
    id: [u8; 4],
    /// As on the wire (little-endian).
    manufacturer: [u8; 2],
    version: u8,
    medium: u8,
    data: Data,
    selected: bool,
    /// The FCB of the last REQ_UD2 answered; `None` after a reset, when any FCB starts anew.
    fcb: Option<bool>,
    /// The telegram `last` holds (index into the readout).
    position: usize,
    /// The last RSP_UD sent, for a retry.
    last: Vec<u8>,
    /// The access number of the last RSP_UD built.
    access: u8,
    readouts: u64,
    absent: bool,
    reply_delay: Duration,
}

impl Slave {
    /// What this slave sends in answer to the telegram, if anything, and whether it is an
    /// RSP_UD; updates its link state either way.
    fn react(&mut self, kind: &RequestKind, address: u8) -> Option<(Vec<u8>, bool)> {
        let ack = Some((vec![ACK], false));
        match kind {
            RequestKind::SndNke => {
                if !self.addressed(address) {
                    return None;
                }
                self.reset();
                if matches!(address, SELECTED | BROADCAST_SILENT) {
                    self.selected = false;
                }
                if address == BROADCAST_SILENT {
                    None
                } else {
                    ack
                }
            }
            RequestKind::ReqUd2 { fcb } => {
                if !self.addressed(address) || address == BROADCAST_SILENT {
                    return None;
                }
                Some((self.req_ud2(*fcb), true))
            }
            RequestKind::Select { mask } => {
                if address != SELECTED {
                    return None;
                }
                self.selected = self.matches(mask);
                if !self.selected {
                    return None;
                }
                self.reset();
                ack
            }
            RequestKind::AppReset => {
                if !self.addressed(address) {
                    return None;
                }
                self.reset();
                if address == BROADCAST_SILENT {
                    None
                } else {
                    ack
                }
            }
            RequestKind::Other(_) | RequestKind::Corrupt(_) => None,
        }
    }

    fn addressed(&self, address: u8) -> bool {
        match address {
            SELECTED => self.selected,
            BROADCAST_REPLY | BROADCAST_SILENT => true,
            primary => primary == self.primary,
        }
    }

    fn reset(&mut self) {
        self.fcb = None;
        self.position = 0;
        self.last.clear();
    }

    /// mbus.md §5.2–5.3: same FCB = retry, toggled = next telegram, after a reset = telegram 1.
    fn req_ud2(&mut self, fcb: bool) -> Vec<u8> {
        match self.fcb {
            Some(previous) if previous == fcb && !self.last.is_empty() => {}
            Some(_) => {
                self.position = (self.position + 1) % self.telegrams();
                self.last = self.build(self.position);
            }
            None => {
                self.position = 0;
                self.last = self.build(0);
            }
        }
        self.fcb = Some(fcb);
        self.last.clone()
    }

    fn telegrams(&self) -> usize {
        match &self.data {
            Data::Telegrams(telegrams) => telegrams.len().max(1),
            Data::HeatMeter { .. } | Data::Raw(_) => 1,
        }
    }

    /// A new RSP_UD with telegram `index` of the readout (a new access number; the heat meter's
    /// energy grows).
    fn build(&mut self, index: usize) -> Vec<u8> {
        let records = match &mut self.data {
            Data::Raw(frame) => return frame.clone(),
            Data::HeatMeter { energy_kwh } => {
                let records = heat_meter_records(*energy_kwh, self.id);
                *energy_kwh = energy_kwh.wrapping_add(1);
                records
            }
            Data::Telegrams(telegrams) => telegrams.get(index).cloned().unwrap_or_default(),
        };
        self.access = self.access.wrapping_add(1);
        let mut data = Vec::with_capacity(12 + records.len());
        data.extend_from_slice(&self.id);
        data.extend_from_slice(&self.manufacturer);
        data.extend_from_slice(&[self.version, self.medium, self.access, 0x00, 0x00, 0x00]);
        data.extend_from_slice(&records);
        long_frame(C_RSP_UD, self.primary, CI_RSP_VARIABLE, &data)
    }

    /// mbus.md §6.1: `F` nibbles of the ID and `FF` manufacturer, version and medium match
    /// anything.
    fn matches(&self, mask: &[u8; 8]) -> bool {
        let [i0, i1, i2, i3, m0, m1, version, medium] = *mask;
        let digit = |mask: u8, digit: u8| mask == 0xF || mask == digit;
        let id = [i0, i1, i2, i3]
            .iter()
            .zip(self.id)
            .all(|(&m, d)| digit(m >> 4, d >> 4) && digit(m & 0xF, d & 0xF));
        id && ([m0, m1] == [0xFF, 0xFF] || [m0, m1] == self.manufacturer)
            && (version == 0xFF || version == self.version)
            && (medium == 0xFF || medium == self.medium)
    }
}

/// The heat meter's records, as documented on [`SimSlave::heat_meter`].
fn heat_meter_records(energy_kwh: u32, id: [u8; 4]) -> Vec<u8> {
    let mut records = vec![0x0C, 0x06];
    records.extend_from_slice(&bcd4(energy_kwh % 100_000_000));
    records.extend_from_slice(&[
        0x0C, 0x14, 0x21, 0x43, 0x65, 0x00, // volume 6543.21 m³
        0x0B, 0x2B, 0x50, 0x12, 0x00, // power 1250 W
        0x0A, 0x5A, 0x35, 0x06, // flow temperature 63.5 °C
        0x0A, 0x5E, 0x12, 0x04, // return temperature 41.2 °C
        0x0A, 0x62, 0x23, 0x02, // temperature difference 22.3 K
        0x4C, 0x06, 0x00, 0x00, 0x01, 0x00, // energy, storage 1: 10000 kWh
        0x0C, 0x78, // fabrication number
    ]);
    records.extend_from_slice(&id);
    records
}

/// The last 8 decimal digits of `value` as BCD, least significant byte first.
fn bcd4(mut value: u32) -> [u8; 4] {
    let mut out = [0; 4];
    for byte in &mut out {
        let low = (value % 10) as u8;
        value /= 10;
        let high = (value % 10) as u8;
        value /= 10;
        *byte = high << 4 | low;
    }
    out
}

/// `"KAM"` → `[0x2D, 0x2C]` (mbus.md §7.2); `None` unless three characters `@`..`_`.
fn manufacturer_code(name: &str) -> Option<[u8; 2]> {
    let &[a, b, c] = name.as_bytes() else {
        return None;
    };
    let letter = |c: u8| (0x40..=0x5F).contains(&c).then(|| u16::from(c - 0x40));
    let word = letter(a)? << 10 | letter(b)? << 5 | letter(c)?;
    Some(word.to_le_bytes())
}

/// `68 L L 68 C A CI data CS 16`. The data of every frame built here fits (≤ 252 bytes, checked
/// at start); the length byte saturates rather than wraps should it ever not.
fn long_frame(c: u8, a: u8, ci: u8, data: &[u8]) -> Vec<u8> {
    let l = u8::try_from(data.len().saturating_add(3)).unwrap_or(u8::MAX);
    let mut frame = vec![LONG_START, l, l, LONG_START, c, a, ci];
    frame.extend_from_slice(data);
    let checksum = checksum(frame.get(4..).unwrap_or_default());
    frame.extend_from_slice(&[checksum, STOP]);
    frame
}

/// The sum of the bytes mod 256 (C through the last data byte).
fn checksum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |sum, &b| sum.wrapping_add(b))
}

/// Where the front of the buffer stands.
#[derive(Debug, PartialEq, Eq)]
enum Scan {
    /// A telegram's length in bytes (its checksum still unchecked).
    Telegram(usize),
    /// So many bytes cannot start a telegram.
    Skip(usize),
    /// A telegram may start here; more bytes are needed to tell.
    Need,
}

/// mbus.md §4.1's receiver checks, in order: start byte; for `68` the repeated length (≥ 3) and
/// the second `68`; the full length; the stop byte. A failed check skips one byte, so the next
/// possible start is tried (the way a UART-fed slave resynchronises).
fn scan(buf: &[u8]) -> Scan {
    match buf {
        [] => Scan::Need,
        [SHORT_START, rest @ ..] => match rest.get(3) {
            None => Scan::Need,
            Some(&STOP) => Scan::Telegram(5),
            Some(_) => Scan::Skip(1),
        },
        [LONG_START, rest @ ..] => {
            let l = match rest {
                [l, ..] if *l < 3 => return Scan::Skip(1),
                [l1, l2, ..] if l1 != l2 => return Scan::Skip(1),
                [_, _, second, ..] if *second != LONG_START => return Scan::Skip(1),
                [l, _, _, ..] => usize::from(*l),
                _ => return Scan::Need,
            };
            match buf.get(l + 5) {
                None => Scan::Need,
                Some(&STOP) => Scan::Telegram(l + 6),
                Some(_) => Scan::Skip(1),
            }
        }
        _ => Scan::Skip(
            buf.iter()
                .take_while(|&&b| b != SHORT_START && b != LONG_START)
                .count(),
        ),
    }
}

/// Takes the next whole telegram off the front of `pending`, dropping bytes that cannot start
/// one; `None` once what is left is empty or the start of a telegram still incomplete.
fn next_telegram(pending: &mut Vec<u8>) -> Option<Vec<u8>> {
    loop {
        match scan(pending) {
            Scan::Need => return None,
            // Never 0 (see scan), so this always makes progress.
            Scan::Skip(n) => {
                let n = n.min(pending.len());
                if n == 0 {
                    return None;
                }
                pending.drain(..n);
            }
            Scan::Telegram(len) => return Some(pending.drain(..len).collect()),
        }
    }
}

/// A whole telegram (as cut by [`scan`]) → what it asks, and its address.
fn decode(raw: Vec<u8>) -> (RequestKind, u8) {
    match raw.as_slice() {
        &[SHORT_START, c, a, cs, STOP] => {
            let kind = if c.wrapping_add(a) != cs {
                RequestKind::Corrupt(raw)
            } else if c == C_SND_NKE {
                RequestKind::SndNke
            } else if c & !FCB == C_REQ_UD2 {
                RequestKind::ReqUd2 { fcb: c & FCB != 0 }
            } else {
                RequestKind::Other(raw)
            };
            (kind, a)
        }
        [LONG_START, _, _, LONG_START, body @ .., cs, STOP] => {
            let &[c, a, ci, ref data @ ..] = body else {
                // scan() only cuts long frames with L ≥ 3.
                return (RequestKind::Other(raw.clone()), 0);
            };
            let kind = if checksum(body) != *cs {
                RequestKind::Corrupt(raw.clone())
            } else if c & !FCB != C_SND_UD {
                RequestKind::Other(raw.clone())
            } else if let (CI_SELECT, Ok(mask)) = (ci, <[u8; 8]>::try_from(data)) {
                RequestKind::Select { mask }
            } else if ci == CI_APP_RESET && data.len() <= 1 {
                RequestKind::AppReset
            } else {
                RequestKind::Other(raw.clone())
            };
            (kind, a)
        }
        _ => (RequestKind::Other(raw), 0),
    }
}

/// Bits per character on M-Bus: start, 8 data bits, even parity, stop.
const CHAR_BITS: usize = 11;

/// Several answers on the wire at once (see [`SimMbus`], "Collisions"): bit streams combined
/// with a wired AND, answer `k` starting `k` bit times late, read back as characters at the first
/// answer's boundaries. A character slot that stays idle (all ones) is no character; a single
/// answer comes out unchanged.
fn superimpose<'a>(answers: impl Iterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut line: Vec<bool> = Vec::new();
    for (skew, answer) in answers.enumerate() {
        for (index, &byte) in answer.iter().enumerate() {
            for (bit, level) in char_bits(byte).into_iter().enumerate() {
                let at = skew + index * CHAR_BITS + bit;
                if line.len() <= at {
                    line.resize(at + 1, true);
                }
                if let Some(slot) = line.get_mut(at) {
                    *slot &= level;
                }
            }
        }
    }
    line.chunks(CHAR_BITS)
        .filter(|slot| slot.contains(&false))
        .map(|slot| {
            // The data bits follow the start bit, least significant first; bits past the end
            // of the line are idle (ones).
            (0..8).fold(0u8, |byte, bit| {
                let level = slot.get(bit + 1).copied().unwrap_or(true);
                byte | u8::from(level) << bit
            })
        })
        .collect()
}

/// One 8E1 character on the wire, first bit first (true = mark, 1).
fn char_bits(byte: u8) -> [bool; CHAR_BITS] {
    let mut bits = [true; CHAR_BITS];
    bits[0] = false;
    for (bit, slot) in bits.iter_mut().skip(1).take(8).enumerate() {
        *slot = byte >> bit & 1 == 1;
    }
    // Even parity: the parity bit makes the number of ones even.
    bits[9] = byte.count_ones() % 2 == 1;
    bits
}

/// The line's task: holds the master and our slave descriptor until the line stops.
async fn run(line: Arc<Line>, mut master: SerialStream, held: File) {
    tokio::select! {
        () = line.stop.cancelled() => {}
        () = serve(&line, &mut master) => {}
    }
    // The master first: closing it hangs up every slave descriptor, the daemon's included.
    drop(master);
    drop(held);
}

/// Reads the master's bytes, echoes them, and answers each telegram in turn, with noise in
/// between while [`SimMbus::set_noise`] says so; never returns.
async fn serve(line: &Line, master: &mut SerialStream) {
    let mut chunk = [0u8; 512];
    let mut pending = Vec::new();
    // When the partial telegram in `pending` is dropped: PARTIAL_TIMEOUT after its last byte.
    let mut partial_until: Option<tokio::time::Instant> = None;
    let mut noise = line.noise.subscribe();
    loop {
        let read = tokio::select! {
            read = master.read(&mut chunk) => read,
            () = sleep_until(partial_until) => {
                tracing::debug!(
                    bytes = pending.len(),
                    "simulated M-Bus: partial telegram dropped"
                );
                pending.clear();
                partial_until = None;
                continue;
            }
            byte = next_noise(&mut noise) => {
                if let Err(error) = master.write_all(&[byte; NOISE_CHUNK]).await {
                    tracing::debug!(%error, "simulated M-Bus: writing noise failed");
                }
                continue;
            }
        };
        let bytes = match read {
            Ok(n) if n > 0 => chunk.get(..n).unwrap_or_default(),
            // A hangup (no slave descriptor open): see HANGUP_PAUSE.
            Ok(_) | Err(_) => {
                tokio::time::sleep(HANGUP_PAUSE).await;
                continue;
            }
        };
        if let Some(t) = line.timing {
            tokio::time::sleep(t.frame_time(bytes.len())).await;
        }
        if line.echo {
            if let Err(error) = master.write_all(bytes).await {
                tracing::debug!(%error, "simulated M-Bus: echo failed");
            }
        }
        pending.extend_from_slice(bytes);
        while let Some(telegram) = next_telegram(&mut pending) {
            let replies = line.receive(telegram);
            line.answer(master, replies).await;
        }
        partial_until =
            (!pending.is_empty()).then(|| tokio::time::Instant::now() + PARTIAL_TIMEOUT);
    }
}

/// Sleeps until `at`; forever without it.
async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The byte of the next noise chunk, [`NOISE_PERIOD`] after the last one, once noise is on.
async fn next_noise(noise: &mut watch::Receiver<Option<u8>>) -> u8 {
    loop {
        let current = *noise.borrow_and_update();
        match current {
            Some(_) => {
                tokio::time::sleep(NOISE_PERIOD).await;
                if let Some(byte) = *noise.borrow() {
                    return byte;
                }
            }
            None => {
                if noise.changed().await.is_err() {
                    // The line is going away: no more noise.
                    std::future::pending::<()>().await;
                }
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use proptest::prelude::*;
    use tokio_serial::{DataBits, Parity, SerialPortBuilderExt, StopBits};

    use super::*;

    const WAIT: Duration = Duration::from_secs(5);
    /// How long the test listens to be sure nothing comes.
    const QUIET: Duration = Duration::from_millis(200);

    /// `heat_meter(5, 12345678)`'s first RSP_UD, as documented.
    const HEAT_METER_5: &str = "68 38 38 68 08 05 72 78 56 34 12 2D 2C 01 04 01 00 00 00 \
        0C 06 45 23 01 00 0C 14 21 43 65 00 0B 2B 50 12 00 0A 5A 35 06 0A 5E 12 04 \
        0A 62 23 02 4C 06 00 00 01 00 0C 78 78 56 34 12 87 16";

    // Master telegrams from mbus.md §6.1 and §9.3 (checksums verified there).
    const SND_NKE_5: &str = "10 40 05 45 16";
    const REQ_UD2_5_FCB1: &str = "10 7B 05 80 16";
    const REQ_UD2_5_FCB0: &str = "10 5B 05 60 16";
    const SND_NKE_FD: &str = "10 40 FD 3D 16";
    const REQ_UD2_FD: &str = "10 5B FD 58 16";
    const SND_NKE_FF: &str = "10 40 FF 3F 16";
    const SELECT_ALL: &str = "68 0B 0B 68 73 FD 52 FF FF FF FF FF FF FF FF BA 16";
    const APP_RESET_5: &str = "68 03 03 68 53 05 50 A8 16";

    fn hex(text: &str) -> Vec<u8> {
        text.split_whitespace()
            .map(|byte| u8::from_str_radix(byte, 16).unwrap())
            .collect()
    }

    /// The test's own encoder (not the simulator's): a short frame.
    fn short(c: u8, a: u8) -> Vec<u8> {
        vec![0x10, c, a, c.wrapping_add(a), 0x16]
    }

    /// A select to 253 with a 16-character libmbus-style address: 8 ID digits, manufacturer
    /// bytes in wire order, version, medium; `F` anywhere is a wildcard.
    fn select(address: &str) -> Vec<u8> {
        let digits = address.as_bytes();
        let mut data: Vec<u8> = digits[..8]
            .chunks(2)
            .rev()
            .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).unwrap(), 16).unwrap())
            .collect();
        data.extend(
            digits[8..]
                .chunks(2)
                .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).unwrap(), 16).unwrap()),
        );
        assert_eq!(data.len(), 8);
        let mut frame = vec![0x68, 0x0B, 0x0B, 0x68, 0x73, 0xFD, 0x52];
        frame.extend(&data);
        let sum = frame[4..].iter().map(|&b| u32::from(b)).sum::<u32>();
        frame.extend([(sum % 256) as u8, 0x16]);
        frame
    }

    /// Opens the line as the daemon does: 2400 8E1, exclusively.
    fn open(bus: &SimMbus) -> SerialStream {
        tokio_serial::new(bus.path().to_string_lossy(), 2400)
            .data_bits(DataBits::Eight)
            .parity(Parity::Even)
            .stop_bits(StopBits::One)
            .open_native_async()
            .unwrap()
    }

    async fn start(slaves: Vec<SimSlave>) -> (SimMbus, SerialStream) {
        let bus = SimMbus::start(slaves, MbusLineOptions::default())
            .await
            .unwrap();
        let port = open(&bus);
        (bus, port)
    }

    async fn read_n(port: &mut SerialStream, n: usize) -> Vec<u8> {
        let mut bytes = vec![0; n];
        tokio::time::timeout(WAIT, port.read_exact(&mut bytes))
            .await
            .unwrap()
            .unwrap();
        bytes
    }

    /// One answer: `E5`, a long frame (by its L), or whatever single byte came first.
    async fn read_answer(port: &mut SerialStream) -> Vec<u8> {
        let mut answer = read_n(port, 1).await;
        if answer == [0x68] {
            answer.extend(read_n(port, 3).await);
            let more = usize::from(answer[1]) + 2;
            answer.extend(read_n(port, more).await);
        }
        answer
    }

    async fn exchange(port: &mut SerialStream, request: &[u8]) -> Vec<u8> {
        port.write_all(request).await.unwrap();
        read_answer(port).await
    }

    /// Sends a telegram and checks that nothing at all comes back.
    async fn no_answer(bus: &SimMbus, port: &mut SerialStream, request: &[u8]) {
        let before = bus.requests().len() as u64;
        port.write_all(request).await.unwrap();
        assert!(bus.wait_requests(before + 1, WAIT).await, "not received");
        silence(port).await;
    }

    async fn silence(port: &mut SerialStream) {
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(QUIET, port.read(&mut byte)).await;
        assert!(read.is_err(), "expected silence, got {read:?} {byte:02X?}");
    }

    /// Checks a long frame's structure and checksum on its own terms; returns (C, A, CI, data).
    fn long_parts(frame: &[u8]) -> (u8, u8, u8, Vec<u8>) {
        assert!(frame.len() >= 9, "{frame:02X?}");
        let l = usize::from(frame[1]);
        assert_eq!(
            (frame[0], frame[2], frame[3], frame.len()),
            (0x68, frame[1], 0x68, l + 6)
        );
        assert_eq!(frame[l + 5], 0x16);
        let sum = frame[4..4 + l].iter().map(|&b| u32::from(b)).sum::<u32>();
        assert_eq!(u32::from(frame[4 + l]), sum % 256, "checksum");
        (frame[4], frame[5], frame[6], frame[7..4 + l].to_vec())
    }

    /// The records of an RSP_UD (after the 12-byte header), and its access number.
    fn records(frame: &[u8]) -> (Vec<u8>, u8) {
        let (_, _, ci, data) = long_parts(frame);
        assert_eq!(ci, 0x72);
        (data[12..].to_vec(), data[8])
    }

    #[test]
    fn the_test_encoders_agree_with_the_reference_frames() {
        assert_eq!(short(0x40, 0x05), hex(SND_NKE_5));
        assert_eq!(short(0x7B, 0x05), hex(REQ_UD2_5_FCB1));
        assert_eq!(short(0x5B, 0xFD), hex(REQ_UD2_FD));
        assert_eq!(select("FFFFFFFFFFFFFFFF"), hex(SELECT_ALL));
        assert_eq!(
            select("1FFFFFFFFFFFFFFF"),
            hex("68 0B 0B 68 73 FD 52 FF FF FF 1F FF FF FF FF DA 16")
        );
        assert_eq!(
            select("148391202D2C0102"),
            hex("68 0B 0B 68 73 FD 52 20 91 83 14 2D 2C 01 02 66 16")
        );
    }

    #[test]
    fn heat_meter_telegram_is_the_documented_one() {
        let mut slave = SimSlave::heat_meter(5, 12_345_678).into_slave().unwrap();
        assert_eq!(slave.req_ud2(true), hex(HEAT_METER_5));
        // Kamstrup's letters, independently: K=11, A=1, M=13.
        assert_eq!(manufacturer_code("KAM"), Some([0x2D, 0x2C]));
        assert_eq!(manufacturer_code("AMT"), Some([0xB4, 0x05]));
        for bad in ["KA", "KAMS", "kam", "K1M"] {
            assert_eq!(manufacturer_code(bad), None, "{bad}");
        }
        assert_eq!(bcd4(12_345_678), [0x78, 0x56, 0x34, 0x12]);
        assert_eq!(bcd4(5), [0x05, 0, 0, 0]);
    }

    #[test]
    fn collisions_superimpose_as_on_the_bus() {
        let e5: &[u8] = &[0xE5];
        assert_eq!(superimpose([e5, e5].into_iter()), [0xC0]);
        assert_eq!(superimpose([e5, e5, e5].into_iter()), [0x80]);
        let frame = hex(HEAT_METER_5);
        assert_eq!(superimpose([frame.as_slice()].into_iter()), frame);
        let other = SimSlave::heat_meter(6, 87_654_321)
            .into_slave()
            .unwrap()
            .req_ud2(true);
        let garbled = superimpose([frame.as_slice(), other.as_slice()].into_iter());
        assert_eq!(garbled.len(), frame.len());
        assert_eq!(garbled[0], 0x40);
        assert!(superimpose(std::iter::empty()).is_empty());
    }

    #[test]
    fn scan_cuts_telegrams_and_resynchronises() {
        let mut pending = hex("00 FF 68 02 02 68 10 40 05 45 16 68 03 03 68 53 05 50 A8");
        assert_eq!(next_telegram(&mut pending), Some(hex(SND_NKE_5)));
        assert_eq!(next_telegram(&mut pending), None, "waits for the stop byte");
        pending.push(0x16);
        assert_eq!(next_telegram(&mut pending), Some(hex(APP_RESET_5)));
        assert!(pending.is_empty());
        // A bad stop byte: not a telegram; the bytes after it are tried.
        let mut pending = hex("10 40 05 45 17 10 7B 05 80 16");
        assert_eq!(next_telegram(&mut pending), Some(hex(REQ_UD2_5_FCB1)));
        // A bad checksum is cut as a telegram but decodes as corrupt.
        let corrupt = hex("10 40 05 46 16");
        assert_eq!(decode(corrupt.clone()), (RequestKind::Corrupt(corrupt), 5));
        assert_eq!(
            decode(hex(SELECT_ALL)),
            (RequestKind::Select { mask: [0xFF; 8] }, 0xFD)
        );
        assert_eq!(decode(hex(APP_RESET_5)), (RequestKind::AppReset, 5));
        assert_eq!(
            decode(hex(REQ_UD2_5_FCB0)),
            (RequestKind::ReqUd2 { fcb: false }, 5)
        );
        let set_address = hex("68 06 06 68 73 05 51 01 7A 0A 4E 16");
        assert_eq!(
            decode(set_address.clone()),
            (RequestKind::Other(set_address), 5)
        );
    }

    proptest! {
        #[test]
        fn any_bytes_from_the_line_are_cut_without_panicking(
            bytes in proptest::collection::vec(
                prop_oneof![Just(0x10u8), Just(0x68u8), Just(0x16u8), Just(0x03u8), any::<u8>()],
                0..300,
            )
        ) {
            let mut pending = bytes;
            let total = pending.len();
            let mut cut = 0;
            while let Some(telegram) = next_telegram(&mut pending) {
                cut += telegram.len();
                let _ = decode(telegram);
            }
            prop_assert!(cut + pending.len() <= total);
            let _ = superimpose([pending.as_slice(), pending.as_slice()].into_iter());
        }
    }

    #[tokio::test]
    async fn snd_nke_is_acknowledged_by_the_addressed_slave_only() {
        let (bus, mut port) = start(vec![SimSlave::heat_meter(5, 12_345_678)]).await;
        assert_eq!(exchange(&mut port, &hex(SND_NKE_5)).await, [0xE5]);
        no_answer(&bus, &mut port, &short(0x40, 6)).await;
        no_answer(&bus, &mut port, &hex(SND_NKE_FF)).await;
        no_answer(&bus, &mut port, &hex(SND_NKE_FD)).await;
        let requests = bus.requests();
        let seen: Vec<_> = requests
            .iter()
            .map(|r| (r.kind.clone(), r.address))
            .collect();
        assert_eq!(
            seen,
            [
                (RequestKind::SndNke, 5),
                (RequestKind::SndNke, 6),
                (RequestKind::SndNke, 0xFF),
                (RequestKind::SndNke, 0xFD)
            ]
        );
        assert!(requests.windows(2).all(|w| w[0].at <= w[1].at));
        assert_eq!(bus.readouts(5), 0);
        bus.close().await;
    }

    #[tokio::test]
    async fn req_ud2_gets_a_checked_long_frame_and_the_energy_grows() {
        let (bus, mut port) = start(vec![SimSlave::heat_meter(5, 12_345_678)]).await;
        assert_eq!(exchange(&mut port, &hex(SND_NKE_5)).await, [0xE5]);
        let first = exchange(&mut port, &hex(REQ_UD2_5_FCB1)).await;
        assert_eq!(first, hex(HEAT_METER_5));
        let (c, a, ci, data) = long_parts(&first);
        assert_eq!((c, a, ci), (0x08, 0x05, 0x72));
        assert_eq!(
            data[..12],
            [
                0x78, 0x56, 0x34, 0x12, 0x2D, 0x2C, 0x01, 0x04, 0x01, 0x00, 0x00, 0x00
            ]
        );
        // Toggled FCB: a new readout, one kWh more, the next access number.
        let second = exchange(&mut port, &hex(REQ_UD2_5_FCB0)).await;
        let (records, access) = records(&second);
        assert_eq!(access, 2);
        assert_eq!(records[..6], [0x0C, 0x06, 0x46, 0x23, 0x01, 0x00]);
        assert_eq!(records[6..], self::records(&first).0[6..]);
        assert_eq!(bus.readouts(5), 2);
        bus.close().await;
    }

    /// REQ_UD2 to the multi-telegram test's slave 7: its records and access number.
    async fn read(port: &mut SerialStream, fcb: bool) -> (Vec<u8>, u8) {
        let frame = exchange(port, &short(if fcb { 0x7B } else { 0x5B }, 7)).await;
        let (c, a, _, data) = long_parts(&frame);
        assert_eq!((c, a), (0x08, 7));
        assert_eq!(data[..8], [0x01, 0, 0, 0, 0x93, 0x15, 0x33, 0x07]);
        (data[12..].to_vec(), data[8])
    }

    #[tokio::test]
    async fn multi_telegram_readout_follows_the_fcb() {
        let telegrams = vec![
            hex("01 FD 17 01 1F"),
            hex("01 FD 17 02 1F"),
            hex("01 FD 17 03 0F AA BB"),
        ];
        let slave = SimSlave::new(7, 1, "ELS", 0x33, 0x07).with_telegrams(telegrams.clone());
        let (bus, mut port) = start(vec![slave]).await;
        assert_eq!(read(&mut port, true).await, (telegrams[0].clone(), 1));
        assert_eq!(read(&mut port, false).await, (telegrams[1].clone(), 2));
        // The master missed telegram 2 and retries with the same FCB: the same bytes again.
        assert_eq!(read(&mut port, false).await, (telegrams[1].clone(), 2));
        assert_eq!(read(&mut port, true).await, (telegrams[2].clone(), 3));
        // After the last telegram, a toggled FCB starts a new readout.
        assert_eq!(read(&mut port, false).await, (telegrams[0].clone(), 4));
        assert_eq!(read(&mut port, true).await, (telegrams[1].clone(), 5));
        // SND_NKE resets the position: telegram 1 again, whatever the FCB.
        assert_eq!(exchange(&mut port, &short(0x40, 7)).await, [0xE5]);
        assert_eq!(read(&mut port, true).await, (telegrams[0].clone(), 6));
        assert_eq!(read(&mut port, false).await, (telegrams[1].clone(), 7));
        // So does an application reset.
        assert_eq!(
            exchange(&mut port, &hex("68 03 03 68 53 07 50 AA 16")).await,
            [0xE5]
        );
        assert_eq!(read(&mut port, false).await, (telegrams[0].clone(), 8));
        assert_eq!(bus.readouts(7), 9);
        let fcbs: Vec<bool> = bus
            .requests()
            .iter()
            .filter_map(|r| match r.kind {
                RequestKind::ReqUd2 { fcb } => Some(fcb),
                _ => None,
            })
            .collect();
        assert_eq!(
            fcbs,
            [true, false, false, true, false, true, true, false, false]
        );
        assert!(
            bus.requests()
                .iter()
                .any(|r| r.kind == RequestKind::AppReset)
        );
        bus.close().await;
    }

    #[tokio::test]
    async fn broadcast_254_reads_the_only_slave() {
        let (bus, mut port) = start(vec![SimSlave::heat_meter(42, 12_345_678)]).await;
        let frame = exchange(&mut port, &short(0x7B, 0xFE)).await;
        let (c, a, ci, _) = long_parts(&frame);
        assert_eq!((c, a, ci), (0x08, 42, 0x72), "its own primary address");
        // 255 is a broadcast nobody answers.
        no_answer(&bus, &mut port, &short(0x7B, 0xFF)).await;
        assert_eq!(bus.readouts(42), 1);
        bus.close().await;
    }

    #[tokio::test]
    async fn select_by_exact_secondary_address_then_read_through_253() {
        let (bus, mut port) = start(vec![
            SimSlave::heat_meter(1, 14_839_120),
            SimSlave::new(2, 14_839_121, "KAM", 0x01, 0x02),
        ])
        .await;
        // Slave 2 by its full address (mbus.md §6.1's frame, with the last digit 1).
        assert_eq!(
            exchange(&mut port, &select("148391212D2C0102")).await,
            [0xE5]
        );
        let frame = exchange(&mut port, &hex(REQ_UD2_FD)).await;
        let (_, a, _, data) = long_parts(&frame);
        assert_eq!(a, 2);
        assert_eq!(data[..4], [0x21, 0x91, 0x83, 0x14]);
        // SND_NKE to 253 acknowledges and deselects.
        assert_eq!(exchange(&mut port, &hex(SND_NKE_FD)).await, [0xE5]);
        no_answer(&bus, &mut port, &hex(REQ_UD2_FD)).await;
        // Slave 1, with wildcards for manufacturer, version and medium.
        assert_eq!(
            exchange(&mut port, &select("14839120FFFFFFFF")).await,
            [0xE5]
        );
        let (_, a, _, _) = long_parts(&exchange(&mut port, &hex(REQ_UD2_FD)).await);
        assert_eq!(a, 1);
        assert_eq!((bus.readouts(1), bus.readouts(2)), (1, 1));
        bus.close().await;
    }

    #[tokio::test]
    async fn a_select_that_matches_nobody_is_silent_and_deselects() {
        let (bus, mut port) = start(vec![SimSlave::heat_meter(1, 14_839_120)]).await;
        assert_eq!(
            exchange(&mut port, &select("14839120FFFFFFFF")).await,
            [0xE5]
        );
        for mask in [
            "14839121FFFFFFFF", // another id
            "14839120B4050104", // another manufacturer (AMT)
            "148391202D2C0204", // another version
            "148391202D2C0107", // another medium
        ] {
            no_answer(&bus, &mut port, &select(mask)).await;
        }
        // The first select's slave deselected itself.
        no_answer(&bus, &mut port, &hex(REQ_UD2_FD)).await;
        assert_eq!(bus.readouts(1), 0);
        bus.close().await;
    }

    #[tokio::test]
    async fn a_wildcard_select_matching_two_slaves_collides() {
        let (bus, mut port) = start(vec![
            SimSlave::heat_meter(1, 11_111_111),
            SimSlave::heat_meter(2, 22_222_222),
        ])
        .await;
        assert_eq!(exchange(&mut port, &hex(SELECT_ALL)).await, [0xC0]);
        silence(&mut port).await;
        // Both are selected now, so a read through 253 collides too: no clean frame.
        port.write_all(&hex(REQ_UD2_FD)).await.unwrap();
        let garbled = read_n(&mut port, 62).await;
        assert_ne!(garbled[0], 0x68);
        assert_eq!((bus.readouts(1), bus.readouts(2)), (1, 1));
        // Narrowing the mask resolves the collision.
        assert_eq!(
            exchange(&mut port, &select("1FFFFFFFFFFFFFFF")).await,
            [0xE5]
        );
        assert_eq!(
            long_parts(&exchange(&mut port, &hex(REQ_UD2_FD)).await).1,
            1
        );
        bus.close().await;
    }

    #[tokio::test]
    async fn ids_that_share_their_first_digits_collide_until_the_last_digit() {
        let (bus, mut port) = start(vec![
            SimSlave::heat_meter(1, 12_340_001),
            SimSlave::heat_meter(2, 12_340_002),
            SimSlave::heat_meter(3, 87_654_321),
        ])
        .await;
        // A depth-first scan's path down to the two (mbus.md §6.2).
        for mask in ["1FFFFFFF", "12FFFFFF", "1234FFFF", "1234000F"] {
            let answer = exchange(&mut port, &select(&format!("{mask}FFFFFFFF"))).await;
            assert_eq!(answer, [0xC0], "{mask}");
            silence(&mut port).await;
        }
        for (mask, primary) in [("12340001", 1), ("12340002", 2), ("FFFFFF21", 3)] {
            let answer = exchange(&mut port, &select(&format!("{mask}FFFFFFFF"))).await;
            assert_eq!(answer, [0xE5], "{mask}");
            let frame = exchange(&mut port, &hex(REQ_UD2_FD)).await;
            assert_eq!(long_parts(&frame).1, primary, "{mask}");
        }
        for mask in ["12340003", "2FFFFFFF", "F1FFFFFF"] {
            no_answer(&bus, &mut port, &select(&format!("{mask}FFFFFFFF"))).await;
        }
        // Three at once.
        assert_eq!(exchange(&mut port, &hex(SELECT_ALL)).await, [0x80]);
        bus.close().await;
    }

    #[tokio::test]
    async fn the_converter_echoes_the_master_first() {
        let bus = SimMbus::start(
            vec![SimSlave::heat_meter(5, 12_345_678)],
            MbusLineOptions {
                echo: true,
                timing: None,
            },
        )
        .await
        .unwrap();
        let mut port = open(&bus);
        port.write_all(&hex(SND_NKE_5)).await.unwrap();
        assert_eq!(read_n(&mut port, 6).await, hex("10 40 05 45 16 E5"));
        port.write_all(&hex(REQ_UD2_5_FCB1)).await.unwrap();
        assert_eq!(read_n(&mut port, 5).await, hex(REQ_UD2_5_FCB1));
        assert_eq!(read_answer(&mut port).await, hex(HEAT_METER_5));
        // Junk and telegrams nobody answers are echoed too, and nothing else comes.
        port.write_all(&hex("00 FF 10 40 09 49 16")).await.unwrap();
        assert_eq!(read_n(&mut port, 7).await, hex("00 FF 10 40 09 49 16"));
        silence(&mut port).await;
        bus.close().await;
    }

    #[tokio::test]
    async fn noise_streams_until_it_is_switched_off() {
        let (bus, mut port) = start(vec![SimSlave::heat_meter(5, 12_345_678)]).await;
        bus.set_noise(Some(0x00));
        // Far more than one chunk: it keeps coming.
        assert_eq!(
            read_n(&mut port, 20 * NOISE_CHUNK).await,
            [0x00; 20 * NOISE_CHUNK]
        );
        // The slaves still answer, amid the noise.
        port.write_all(&hex(SND_NKE_5)).await.unwrap();
        let mut seen = Vec::new();
        tokio::time::timeout(WAIT, async {
            while !seen.contains(&0xE5) {
                seen.extend(read_n(&mut port, 1).await);
            }
        })
        .await
        .expect("the acknowledgement comes");
        assert!(seen.iter().all(|&b| b == 0x00 || b == 0xE5), "{seen:02X?}");
        bus.set_noise(None);
        // At most one chunk was on its way; then silence, and a clean answer.
        let mut byte = [0u8; 1];
        tokio::time::timeout(WAIT, async {
            while tokio::time::timeout(QUIET, port.read(&mut byte))
                .await
                .is_ok()
            {}
        })
        .await
        .expect("the noise stops");
        assert_eq!(exchange(&mut port, &hex(SND_NKE_5)).await, [0xE5]);
        silence(&mut port).await;
        bus.close().await;
    }

    #[tokio::test]
    async fn absent_slaves_never_answer_and_do_not_change() {
        let (bus, mut port) = start(vec![SimSlave::heat_meter(5, 12_345_678)]).await;
        bus.set_absent(5, true);
        no_answer(&bus, &mut port, &hex(SND_NKE_5)).await;
        no_answer(&bus, &mut port, &hex(REQ_UD2_5_FCB1)).await;
        no_answer(&bus, &mut port, &hex(SELECT_ALL)).await;
        no_answer(&bus, &mut port, &short(0x7B, 0xFE)).await;
        assert_eq!(bus.readouts(5), 0);
        bus.set_absent(5, false);
        // Back: its first readout, as if it had never been away.
        assert_eq!(
            exchange(&mut port, &hex(REQ_UD2_5_FCB1)).await,
            hex(HEAT_METER_5)
        );
        assert_eq!(bus.readouts(5), 1);
        bus.close().await;
    }

    #[tokio::test]
    async fn a_reply_delay_holds_the_answer_back() {
        let delay = Duration::from_millis(600);
        let (bus, mut port) = start(vec![SimSlave::heat_meter(5, 12_345_678)]).await;
        bus.set_reply_delay(5, delay);
        let sent = Instant::now();
        port.write_all(&hex(SND_NKE_5)).await.unwrap();
        silence(&mut port).await;
        assert_eq!(read_n(&mut port, 1).await, [0xE5]);
        let took = sent.elapsed();
        assert!(took >= delay && took < delay + WAIT, "{took:?}");
        bus.set_reply_delay(5, Duration::ZERO);
        let sent = Instant::now();
        assert_eq!(exchange(&mut port, &hex(SND_NKE_5)).await, [0xE5]);
        assert!(sent.elapsed() < delay, "{:?}", sent.elapsed());
        bus.close().await;
    }

    #[tokio::test]
    async fn bad_checksums_and_unknown_telegrams_get_no_answer() {
        let (bus, mut port) = start(vec![SimSlave::heat_meter(5, 12_345_678)]).await;
        no_answer(&bus, &mut port, &hex("10 40 05 46 16")).await;
        no_answer(&bus, &mut port, &hex("10 7B 05 81 16")).await;
        no_answer(
            &bus,
            &mut port,
            &hex("68 0B 0B 68 73 FD 52 FF FF FF FF FF FF FF FF BB 16"),
        )
        .await;
        // Set primary address (not simulated), REQ_UD1.
        no_answer(&bus, &mut port, &hex("68 06 06 68 73 05 51 01 7A 0A 4E 16")).await;
        no_answer(&bus, &mut port, &short(0x7A, 5)).await;
        // A stray start byte and a torn telegram are dropped; the next telegram is answered.
        port.write_all(&hex("68 10")).await.unwrap();
        tokio::time::sleep(PARTIAL_TIMEOUT * 2).await;
        assert_eq!(exchange(&mut port, &hex(SND_NKE_5)).await, [0xE5]);
        let kinds: Vec<_> = bus.requests().into_iter().map(|r| r.kind).collect();
        assert!(matches!(kinds[0], RequestKind::Corrupt(_)), "{kinds:?}");
        assert!(matches!(kinds[1], RequestKind::Corrupt(_)), "{kinds:?}");
        assert!(matches!(kinds[2], RequestKind::Corrupt(_)), "{kinds:?}");
        assert!(matches!(kinds[3], RequestKind::Other(_)), "{kinds:?}");
        assert!(matches!(kinds[4], RequestKind::Other(_)), "{kinds:?}");
        assert_eq!(kinds[5], RequestKind::SndNke);
        assert_eq!(kinds.len(), 6);
        bus.close().await;
    }

    #[tokio::test]
    async fn a_raw_rsp_ud_goes_out_verbatim() {
        let fixture = hex(include_str!(
            "../../tests/data/mbus/libmbus/test-frames/example_data_01.hex"
        ));
        let slave = SimSlave::new(1, 3_575_845, "AMT", 0x34, 0x04).with_raw_rsp_ud(fixture.clone());
        let (bus, mut port) = start(vec![slave]).await;
        assert_eq!(exchange(&mut port, &short(0x7B, 1)).await, fixture);
        assert_eq!(exchange(&mut port, &short(0x5B, 1)).await, fixture);
        // It is found by its configured secondary address.
        assert_eq!(
            exchange(&mut port, &select("03575845B4053404")).await,
            [0xE5]
        );
        assert_eq!(exchange(&mut port, &hex(REQ_UD2_FD)).await, fixture);
        assert_eq!(bus.readouts(1), 3);
        bus.close().await;
    }

    #[tokio::test]
    async fn wire_time_is_emulated_per_frame() {
        let bus = SimMbus::start(
            vec![SimSlave::heat_meter(5, 12_345_678)],
            MbusLineOptions {
                echo: true,
                timing: Some((2400, Duration::from_millis(20))),
            },
        )
        .await
        .unwrap();
        let mut port = open(&bus);
        let char_time = Duration::from_micros(4_583); // 11 bits at 2400 baud
        let sent = Instant::now();
        port.write_all(&hex(REQ_UD2_5_FCB1)).await.unwrap();
        assert_eq!(read_n(&mut port, 5).await, hex(REQ_UD2_5_FCB1));
        let echoed = sent.elapsed();
        assert!(echoed >= char_time * 5, "{echoed:?}");
        assert_eq!(read_answer(&mut port).await, hex(HEAT_METER_5));
        let answered = sent.elapsed();
        // 5 + 62 bytes at 4.58 ms, and the latency: 327 ms.
        let minimum = char_time * (5 + 62) + Duration::from_millis(20);
        assert!(answered >= minimum, "{answered:?} < {minimum:?}");
        assert!(answered < minimum + Duration::from_secs(2), "{answered:?}");
        bus.close().await;
    }

    #[tokio::test]
    async fn a_slow_answer_trickles_in_a_character_at_a_time() {
        // 300 baud: 36.7 ms a character, 2.27 s for the heat meter's 62 bytes.
        let bus = SimMbus::start(
            vec![SimSlave::heat_meter(5, 12_345_678)],
            MbusLineOptions {
                echo: false,
                timing: Some((300, Duration::ZERO)),
            },
        )
        .await
        .unwrap();
        let mut port = open(&bus);
        port.write_all(&hex(REQ_UD2_5_FCB1)).await.unwrap();
        let mut answer = read_n(&mut port, 1).await;
        let first = Instant::now();
        answer.extend(read_n(&mut port, 61).await);
        let span = first.elapsed();
        assert_eq!(answer, hex(HEAT_METER_5));
        // Written all at once, the bytes would arrive together; paced, the last one comes about
        // 61 characters (2.2 s) after the first. Only a stall of over a second could hide that.
        assert!(span >= Duration::from_secs(1), "{span:?}");
        bus.close().await;
    }

    #[tokio::test]
    async fn one_opener_at_a_time_and_the_line_outlives_its_closes() {
        let (bus, port) = start(vec![SimSlave::heat_meter(5, 12_345_678)]).await;
        let second = tokio_serial::new(bus.path().to_string_lossy(), 2400).open_native_async();
        assert!(
            second.is_err(),
            "a second open must fail while the first is open"
        );
        drop(port);
        for _ in 0..2 {
            let mut port = open(&bus);
            assert_eq!(exchange(&mut port, &hex(SND_NKE_5)).await, [0xE5]);
        }
        bus.close().await;
    }

    #[tokio::test]
    async fn close_unplugs_the_port() {
        let (bus, mut port) = start(vec![SimSlave::heat_meter(5, 12_345_678)]).await;
        assert_eq!(exchange(&mut port, &hex(SND_NKE_5)).await, [0xE5]);
        // A read waiting for an answer that will not come fails when the converter goes away.
        bus.set_reply_delay(5, Duration::from_secs(60));
        port.write_all(&hex(SND_NKE_5)).await.unwrap();
        assert!(bus.wait_requests(2, WAIT).await);
        let pending = tokio::spawn(async move {
            let mut byte = [0u8; 1];
            let result = port.read_exact(&mut byte).await;
            (port, result)
        });
        let closing = Instant::now();
        tokio::time::timeout(WAIT, bus.close()).await.unwrap();
        let (mut port, result) = tokio::time::timeout(WAIT, pending).await.unwrap().unwrap();
        let error = result.unwrap_err();
        assert!(
            matches!(error.kind(), io::ErrorKind::UnexpectedEof)
                || error.raw_os_error() == Some(libc::EIO),
            "{error:?}"
        );
        assert!(closing.elapsed() < Duration::from_secs(1));
        let error = port.write_all(&hex(SND_NKE_5)).await.unwrap_err();
        assert_eq!(error.raw_os_error(), Some(libc::EIO), "{error}");
    }

    #[tokio::test]
    async fn start_refuses_impossible_slaves() {
        for slave in [
            SimSlave::heat_meter(251, 1),
            SimSlave::heat_meter(1, 100_000_000),
            SimSlave::new(1, 1, "kam", 1, 4),
            SimSlave::new(1, 1, "KAM", 1, 4).with_telegrams(Vec::new()),
            SimSlave::new(1, 1, "KAM", 1, 4).with_telegrams(vec![vec![0; 241]]),
            SimSlave::new(1, 1, "KAM", 1, 4).with_raw_rsp_ud(Vec::new()),
        ] {
            let error = SimMbus::start(vec![slave.clone()], MbusLineOptions::default())
                .await
                .unwrap_err();
            assert_eq!(error.kind(), io::ErrorKind::InvalidInput, "{slave:?}");
        }
        // The largest telegram fits a long frame: L = 255.
        let slave = SimSlave::new(1, 1, "KAM", 1, 4).with_telegrams(vec![vec![0; 240]]);
        let (bus, mut port) = start(vec![slave]).await;
        let frame = exchange(&mut port, &short(0x7B, 1)).await;
        assert_eq!((frame[1], frame.len()), (255, 261));
        long_parts(&frame);
        bus.close().await;
    }
}
