//! A simulated Modbus TCP endpoint on loopback, like a meter with an Ethernet port or a
//! TCP-to-RTU gateway: one listener serving one or more unit ids, each a [`SimMeter`] with
//! holding and input registers, scriptable faults (exceptions, late answers, silence, refused
//! connections) and a record of every answer it sent.
//!
//! It owns its listener, its connections and the simulated registers; the meter model
//! ([`SimMeter`], and the per-unit counts and served log) is shared with the RS-485 line of
//! [`super::rtu`]. It is used by tests and by `demo`, never by the daemon's poll path, and it must not reuse the crate's request planner
//! or decoder (it encodes its values itself, so it can check them); the only thing it shares is
//! the [`Table`] vocabulary. Framing is tokio-modbus's own server; nothing in here panics on
//! network input.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::future::Future;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_modbus::server::Service;
use tokio_modbus::server::tcp::Server;
use tokio_modbus::{ExceptionCode, Request, Response, SlaveRequest};
use tokio_util::sync::{CancellationToken, DropGuard};
use tokio_util::task::{TaskTracker, task_tracker::TaskTrackerToken};

use crate::modbus::Table;

/// The protocol's limit for one FC3/FC4 read (Modbus Application Protocol V1.1b3, 6.3/6.4).
/// Larger counts answer exception 03; they would not fit the one-byte byte count of the answer
/// either (tokio-modbus's encoder only `debug_assert`s that).
pub const MAX_READ_REGISTERS: u16 = 125;

/// What an Eastron meter accepts in one request (40 parameters); more answers exception 02.
pub const EASTRON_MAX_REGISTERS: u16 = 80;

/// One unit id's registers and behaviour. Build it with [`SimMeter::new`] or
/// [`SimMeter::sdm630`] and the `with_*` helpers, then hand it to [`SimModbus::start`] or
/// [`super::rtu::SimRtuBus::start`].
///
/// Values are stored as 16-bit words; the `f32` helpers write two words high word first
/// (ABCD), as Eastron meters do. Reading any register that was never written answers
/// exception 02 (IllegalDataAddress), like a meter's unmapped address.
#[derive(Debug, Clone)]
pub struct SimMeter {
    unit: u8,
    holding: BTreeMap<u16, u16>,
    input: BTreeMap<u16, u16>,
    growing: Vec<Growing>,
    sums: Vec<Sum>,
    max_registers: Option<u16>,
    silent: bool,
    /// Pending late answers: (how many requests still, delay each).
    delays: VecDeque<(usize, Duration)>,
    exceptions: Vec<ScriptedException>,
    /// The next this-many answers carry one register less than asked (a wrong count).
    short: usize,
}

#[derive(Debug, Clone)]
struct Growing {
    table: Table,
    addr: u16,
    step: f32,
}

/// An f32 kept equal to the sum of other f32s of the same table (e.g. SDM630 total energy).
#[derive(Debug, Clone)]
struct Sum {
    table: Table,
    addr: u16,
    parts: Vec<u16>,
}

#[derive(Debug, Clone)]
struct ScriptedException {
    table: Table,
    start: u32,
    end: u32,
    code: ExceptionCode,
}

impl SimMeter {
    /// A meter with no registers: every read answers exception 02.
    pub fn new(unit: u8) -> SimMeter {
        SimMeter {
            unit,
            holding: BTreeMap::new(),
            input: BTreeMap::new(),
            growing: Vec::new(),
            sums: Vec::new(),
            max_registers: None,
            silent: false,
            delays: VecDeque::new(),
            exceptions: Vec::new(),
            short: 0,
        }
    }

    /// An Eastron SDM630-style meter (`shared/reference/modbus.md` §3.1): FC4 input registers,
    /// f32 ABCD, the whole block 0x0000..0x0050 and 0x0156..0x0166 mapped (other addresses and
    /// the holding table answer exception 02), at most [`EASTRON_MAX_REGISTERS`] per request.
    ///
    /// Values: V L1..L3 230.1/231.2/229.8, I 5.2/4.8/6.1 A, P L1..L3 780.5/720/801 W and total
    /// 2301.5 W (0x0034), PF total 0.98 (0x003E), 50.0 Hz (0x0046), import 1000.0 kWh (0x0048,
    /// growing by 0.25 after every read of it), export 12.5 kWh (0x004A), reactive 250.0/3.5
    /// kvarh (0x004C/0x004E), total energy 0x0156 = import + export (1012.5 at the start);
    /// addresses of the block not named here read 0.0.
    pub fn sdm630(unit: u8) -> SimMeter {
        const VALUES: &[(u16, f32)] = &[
            (0x0000, 230.1), // voltage L1-N
            (0x0002, 231.2),
            (0x0004, 229.8),
            (0x0006, 5.2), // current L1
            (0x0008, 4.8),
            (0x000A, 6.1),
            (0x000C, 780.5), // active power L1 (W)
            (0x000E, 720.0),
            (0x0010, 801.0),
            (0x0012, 1196.5), // apparent power L1 (VA)
            (0x0014, 1109.8),
            (0x0016, 1401.8),
            (0x0018, 150.2), // reactive power L1 (var)
            (0x001A, 140.1),
            (0x001C, 160.3),
            (0x001E, 0.98), // power factor L1
            (0x0020, 0.97),
            (0x0022, 0.99),
            (0x002A, 230.4), // average voltage L-N
            (0x002E, 5.37),  // average current
            (0x0030, 16.1),  // sum of currents
            (0x0034, 2301.5),
            (0x0038, 3708.1),
            (0x003C, 450.6),
            (0x003E, 0.98),
            (0x0046, 50.0),
            (0x0048, 1000.0),
            (0x004A, 12.5),
            (0x004C, 250.0),
            (0x004E, 3.5),
            (0x0158, 253.5), // total reactive energy
            (0x015A, 330.0), // import kWh L1..L3
            (0x015C, 320.0),
            (0x015E, 350.0),
            (0x0160, 4.5), // export kWh L1..L3
            (0x0162, 4.0),
            (0x0164, 4.0),
        ];
        let mut meter = SimMeter::new(unit).with_max_registers(EASTRON_MAX_REGISTERS);
        // Map both blocks completely first, so a read of any address inside them answers.
        for addr in (0x0000..0x0050).chain(0x0156..0x0166) {
            meter.input.insert(addr, 0);
        }
        for &(addr, value) in VALUES {
            meter = meter.with_f32(Table::Input, addr, value);
        }
        meter
            .growing(Table::Input, 0x0048, 0.25)
            .with_sum(Table::Input, 0x0156, &[0x0048, 0x004A])
    }

    /// The unit id this meter answers to.
    pub fn unit(&self) -> u8 {
        self.unit
    }

    /// Maps `addr` and `addr + 1` to `v` as f32, high word first.
    pub fn with_f32(mut self, table: Table, addr: u16, v: f32) -> Self {
        self.write(table, addr, &f32_words(v));
        self
    }

    /// Maps one register.
    pub fn with_u16(mut self, table: Table, addr: u16, v: u16) -> Self {
        self.write(table, addr, &[v]);
        self
    }

    /// Maps consecutive registers from `addr`; words beyond 0xFFFF are dropped.
    pub fn with_words(mut self, table: Table, addr: u16, words: &[u16]) -> Self {
        self.write(table, addr, words);
        self
    }

    /// Makes the f32 at `addr` a counter that grows by `step` after every answered read that
    /// covered any of its two registers, so consecutive polls see e.g. 1000.0, 1000.25, 1000.5
    /// (exact in f32 for steps like 0.25). Maps it to 0.0 if it was not mapped yet.
    pub fn growing(mut self, table: Table, addr: u16, step: f32) -> Self {
        if self.f32_at(table, addr).is_none() {
            self.write(table, addr, &f32_words(0.0));
        }
        self.growing.push(Growing { table, addr, step });
        self
    }

    /// Keeps the f32 at `addr` equal to the sum of the f32s at `parts` (same table), recomputed
    /// whenever a register of this meter changes; a write to `addr` itself is overwritten then.
    pub fn with_sum(mut self, table: Table, addr: u16, parts: &[u16]) -> Self {
        self.sums.push(Sum {
            table,
            addr,
            parts: parts.to_vec(),
        });
        self.recompute_sums();
        self
    }

    /// Requests for more than `max` registers answer exception 02, as an Eastron meter does
    /// beyond 80.
    pub fn with_max_registers(mut self, max: u16) -> Self {
        self.max_registers = Some(max);
        self
    }

    fn registers(&self, table: Table) -> &BTreeMap<u16, u16> {
        match table {
            Table::Holding => &self.holding,
            Table::Input => &self.input,
        }
    }

    fn registers_mut(&mut self, table: Table) -> &mut BTreeMap<u16, u16> {
        match table {
            Table::Holding => &mut self.holding,
            Table::Input => &mut self.input,
        }
    }

    fn write(&mut self, table: Table, addr: u16, words: &[u16]) {
        self.write_raw(table, addr, words);
        self.recompute_sums();
    }

    fn write_raw(&mut self, table: Table, addr: u16, words: &[u16]) {
        let registers = self.registers_mut(table);
        for (offset, &word) in (0u16..).zip(words) {
            let Some(at) = addr.checked_add(offset) else {
                break;
            };
            registers.insert(at, word);
        }
    }

    /// `count` registers from `start`, or `None` if any of them is unmapped.
    fn words(&self, table: Table, start: u16, count: u16) -> Option<Vec<u16>> {
        let registers = self.registers(table);
        (u32::from(start)..u32::from(start) + u32::from(count))
            .map(|addr| {
                u16::try_from(addr)
                    .ok()
                    .and_then(|addr| registers.get(&addr).copied())
            })
            .collect()
    }

    fn f32_at(&self, table: Table, addr: u16) -> Option<f32> {
        match self.words(table, addr, 2)?.as_slice() {
            &[high, low] => Some(words_f32(high, low)),
            _ => None,
        }
    }

    fn recompute_sums(&mut self) {
        for i in 0..self.sums.len() {
            let Sum { table, addr, parts } = &self.sums[i];
            let (table, addr) = (*table, *addr);
            // Summed in f32, as the meter would, so totals stay exact for exact parts.
            let total = parts
                .iter()
                .map(|&part| self.f32_at(table, part))
                .sum::<Option<f32>>();
            if let Some(total) = total {
                self.write_raw(table, addr, &f32_words(total));
            }
        }
    }

    /// Does the meter's part of answering a read: checks, words, growth. The request counters,
    /// silence and delays are the endpoint's business and happened before.
    fn read(&mut self, table: Table, start: u16, count: u16) -> Result<Vec<u16>, ExceptionCode> {
        if count == 0 || count > MAX_READ_REGISTERS {
            return Err(ExceptionCode::IllegalDataValue);
        }
        let (begin, end) = (u32::from(start), u32::from(start) + u32::from(count));
        if end > 0x1_0000 {
            return Err(ExceptionCode::IllegalDataAddress);
        }
        if let Some(scripted) = self
            .exceptions
            .iter()
            .find(|e| e.table == table && e.start < end && begin < e.end)
        {
            return Err(scripted.code);
        }
        if self.max_registers.is_some_and(|max| count > max) {
            return Err(ExceptionCode::IllegalDataAddress);
        }
        let words = self
            .words(table, start, count)
            .ok_or(ExceptionCode::IllegalDataAddress)?;
        // The answer is taken before the counters grow: this read sees the current value.
        let grown: Vec<(Table, u16, f32)> = self
            .growing
            .iter()
            .filter(|g| {
                let at = u32::from(g.addr);
                g.table == table && at < end && begin < at + 2
            })
            .filter_map(|g| Some((g.table, g.addr, self.f32_at(g.table, g.addr)? + g.step)))
            .collect();
        if !grown.is_empty() {
            for (table, addr, value) in grown {
                self.write_raw(table, addr, &f32_words(value));
            }
            self.recompute_sums();
        }
        Ok(words)
    }

    /// Takes the delay for the next answer, if one is scripted.
    fn take_delay(&mut self) -> Option<Duration> {
        let (remaining, delay) = self.delays.front_mut()?;
        let delay = *delay;
        // Entries are queued with n > 0 and popped at zero; saturating keeps that a non-issue.
        *remaining = remaining.saturating_sub(1);
        if *remaining == 0 {
            self.delays.pop_front();
        }
        Some(delay)
    }
}

/// One answered read, exactly as it was handed to the connection (TCP) or written to the
/// line ([`super::rtu`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Served {
    /// When the answer was produced (after any scripted delay); on an RTU line, when it was
    /// written to the line.
    pub at: Instant,
    /// Which TCP connection carried it (0, 1, … in accept order), to check reconnects; always
    /// 0 on an RTU line, which has no connections.
    pub connection: u64,
    pub unit: u8,
    pub table: Table,
    pub start: u16,
    pub count: u16,
    pub words: Vec<u16>,
}

/// The unit ids behind one endpoint or line (this TCP endpoint, or the RS-485 line of
/// [`super::rtu`]): their meters, the request counts and the served log, and the order in which
/// a request meets them: counted first, then silence or a scripted delay ([`Units::arrive`]),
/// then the meter's answer. Transport faults stay with the transport.
///
/// The state lock is never held across an await.
#[allow(missing_debug_implementations)]
pub struct Units {
    state: Mutex<State>,
    requests_tx: watch::Sender<u64>,
    served_tx: watch::Sender<u64>,
}

struct State {
    meters: HashMap<u8, SimMeter>,
    requests: u64,
    requests_by_unit: HashMap<u8, u64>,
    served: Vec<Served>,
    /// (unit id, when the whole request had arrived), in arrival order.
    arrivals: Vec<(u8, Instant)>,
}

/// What to do with a request that just arrived.
pub(crate) enum Arrival {
    Silent,
    Answer { delay: Option<Duration> },
}

/// A meter's words for one read, before they go out.
pub(crate) struct Read {
    pub(crate) unit: u8,
    pub(crate) table: Table,
    pub(crate) start: u16,
    pub(crate) count: u16,
    pub(crate) words: Vec<u16>,
}

impl Read {
    pub(crate) fn response(&self) -> Response {
        match self.table {
            Table::Holding => Response::ReadHoldingRegisters(self.words.clone()),
            Table::Input => Response::ReadInputRegisters(self.words.clone()),
        }
    }

    /// Every answered read in the order answered (exceptions and silence are not recorded).
    pub fn served(self, connection: u64, at: Instant) -> Served {
        Served {
            at,
            connection,
            unit: self.unit,
            table: self.table,
            start: self.start,
            count: self.count,
            words: self.words,
        }
    }
}

impl Units {
    /// Two meters with the same unit id are refused (`InvalidInput`).
    pub(crate) fn new(meters: Vec<SimMeter>) -> io::Result<Units> {
        let mut by_unit = HashMap::new();
        for meter in meters {
            let unit = meter.unit;
            if by_unit.insert(unit, meter).is_some() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("two simulated meters with unit id {unit}"),
                ));
            }
        }
        Ok(Units {
            state: Mutex::new(State {
                meters: by_unit,
                requests: 0,
                requests_by_unit: HashMap::new(),
                served: Vec::new(),
                arrivals: Vec::new(),
            }),
            requests_tx: watch::Sender::new(0),
            served_tx: watch::Sender::new(0),
        })
    }

    /// A panic elsewhere must not wedge tests, so a poisoned lock is taken over.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts the request, then decides on silence and takes any scripted delay.
    pub(crate) fn arrive(&self, unit: u8) -> Arrival {
        let mut state = self.lock();
        state.requests += 1;
        *state.requests_by_unit.entry(unit).or_insert(0) += 1;
        state.arrivals.push((unit, Instant::now()));
        self.requests_tx.send_replace(state.requests);
        match state.meters.get_mut(&unit) {
            None => Arrival::Silent,
            Some(meter) if meter.silent => Arrival::Silent,
            Some(meter) => Arrival::Answer {
                delay: meter.take_delay(),
            },
        }
    }

    /// The meter's answer, recorded as served at once (the TCP endpoint hands it to its
    /// connection right away). `Ok(None)`: no such meter, stay silent.
    pub(crate) fn answer_now(
        &self,
        unit: u8,
        request: &Request<'_>,
        connection: u64,
    ) -> Result<Option<Response>, ExceptionCode> {
        let mut state = self.lock();
        let Some(read) = read_locked(&mut state, unit, request)? else {
            return Ok(None);
        };
        let response = read.response();
        state.served.push(read.served(connection, Instant::now()));
        // Sent under the lock so the watched count never goes backwards between connections.
        self.served_tx.send_replace(state.served.len() as u64);
        Ok(Some(response))
    }

    /// The meter's answer (its counters grow now), for a transport that records it with
    /// [`Units::record`] once it is really on the wire. `Ok(None)`: no such meter.
    pub(crate) fn answer_later(
        &self,
        unit: u8,
        request: &Request<'_>,
    ) -> Result<Option<Read>, ExceptionCode> {
        read_locked(&mut self.lock(), unit, request)
    }

    pub(crate) fn record(&self, served: Served) {
        let mut state = self.lock();
        state.served.push(served);
        self.served_tx.send_replace(state.served.len() as u64);
    }

    pub(crate) fn has(&self, unit: u8) -> bool {
        self.lock().meters.contains_key(&unit)
    }

    /// Requests received so far, for all unit ids (known or not) and function codes, counted
    /// on arrival, before any fault handling.
    pub fn requests(&self) -> u64 {
        self.lock().requests
    }

    /// When each request had arrived (decoded by the server), with its unit id, in arrival
    /// order: with [`Served::at`] it shows the silence a master kept between transactions.
    pub fn arrivals(&self) -> Vec<(u8, Instant)> {
        self.lock().arrivals.clone()
    }

    /// Requests received so far for unit id `unit`.
    pub fn requests_for(&self, unit: u8) -> u64 {
        self.lock()
            .requests_by_unit
            .get(&unit)
            .copied()
            .unwrap_or(0)
    }

    /// Every answer with words actually sent, in order (exceptions and silence are not
    /// recorded).
    pub fn served(&self) -> Vec<Served> {
        self.lock().served.clone()
    }

    /// Waits until at least `n` requests arrived, at most `timeout`; false on timeout.
    pub async fn wait_requests(&self, n: u64, timeout: Duration) -> bool {
        wait_count(&self.requests_tx, n, timeout).await
    }

    /// Waits until at least `n` reads were answered, at most `timeout`; false on timeout.
    pub async fn wait_served(&self, n: u64, timeout: Duration) -> bool {
        wait_count(&self.served_tx, n, timeout).await
    }

    /// Sets the f32 at `addr` (high word first).
    pub fn set_f32(&self, unit: u8, table: Table, addr: u16, v: f32) {
        self.with_meter(unit, |meter| meter.write(table, addr, &f32_words(v)));
    }

    /// Sets (and maps) consecutive registers from `addr`.
    pub fn set_words(&self, unit: u8, table: Table, addr: u16, words: &[u16]) {
        self.with_meter(unit, |meter| meter.write(table, addr, words));
    }

    /// The current words, without counting a request or growing a counter; `None` for an
    /// unknown unit or if any register is unmapped.
    pub fn words(&self, unit: u8, table: Table, addr: u16, count: u16) -> Option<Vec<u16>> {
        self.lock().meters.get(&unit)?.words(table, addr, count)
    }

    /// The current f32 at `addr` (high word first), as [`Units::words`].
    pub fn f32_at(&self, unit: u8, table: Table, addr: u16) -> Option<f32> {
        self.lock().meters.get(&unit)?.f32_at(table, addr)
    }

    /// The next `n` requests for `unit` that get an answer are answered `delay` late (after any
    /// delays already pending). The answer is still sent and recorded as served: a TCP client
    /// that timed out and kept its connection, or an RTU master that does not flush its input,
    /// reads it as the answer to its next request.
    pub fn delay_next(&self, unit: u8, n: usize, delay: Duration) {
        if n > 0 {
            self.with_meter(unit, |meter| meter.delays.push_back((n, delay)));
        }
    }

    /// From now on, any read of `table` overlapping `count` registers from `start` answers
    /// `code` (e.g. `IllegalDataAddress` for "merged request too large", `ServerDeviceBusy`).
    pub fn exception(&self, unit: u8, table: Table, start: u16, count: u16, code: ExceptionCode) {
        let start = u32::from(start);
        self.with_meter(unit, |meter| {
            meter.exceptions.push(ScriptedException {
                table,
                start,
                end: start + u32::from(count),
                code,
            });
        });
    }

    /// Removes every range set with [`Units::exception`] for `unit`.
    pub fn clear_exceptions(&self, unit: u8) {
        self.with_meter(unit, |meter| meter.exceptions.clear());
    }

    /// Requests for more than `max` registers answer exception 02 from now on.
    pub fn max_registers(&self, unit: u8, max: u16) {
        self.with_meter(unit, |meter| meter.max_registers = Some(max));
    }

    /// The next `n` answers of `unit` carry one register less than the request asked for (a
    /// malformed answer; recorded as served with the words actually sent).
    pub fn short_next(&self, unit: u8, n: usize) {
        self.with_meter(unit, |meter| meter.short += n);
    }

    /// A silent unit gets no answer at all (the client times out); nothing late is queued.
    pub fn set_silent(&self, unit: u8, silent: bool) {
        self.with_meter(unit, |meter| meter.silent = silent);
    }

    /// Setters for a unit id nobody answers to change nothing but say so.
    fn with_meter(&self, unit: u8, change: impl FnOnce(&mut SimMeter)) {
        match self.lock().meters.get_mut(&unit) {
            Some(meter) => change(meter),
            None => tracing::warn!(unit, "simulated Modbus: no meter with this unit id"),
        }
    }
}

/// Function code, then the meter's checks. A meter cannot disappear (there is no API for it),
/// but silence is the safe answer if it did.
fn read_locked(
    state: &mut State,
    unit: u8,
    request: &Request<'_>,
) -> Result<Option<Read>, ExceptionCode> {
    let (table, start, count) = match *request {
        Request::ReadHoldingRegisters(start, count) => (Table::Holding, start, count),
        Request::ReadInputRegisters(start, count) => (Table::Input, start, count),
        _ => return Err(ExceptionCode::IllegalFunction),
    };
    let Some(meter) = state.meters.get_mut(&unit) else {
        return Ok(None);
    };
    let mut words = meter.read(table, start, count)?;
    if meter.short > 0 {
        meter.short -= 1;
        words.pop();
    }
    Ok(Some(Read {
        unit,
        table,
        start,
        count,
        words,
    }))
}

/// A running endpoint on `127.0.0.1`. Clones share it; it stops with [`SimModbus::stop`] or
/// when the last clone is dropped.
///
/// Every request is counted first (per unit id, whatever its fate), then handled in this
/// order: a unit id no meter answers to, or a silent unit, gets no answer at all (a gateway
/// with nothing behind that address; the client runs into its timeout); a scripted late
/// answer waits its delay; a function code other than 3 or 4 answers exception 01; a count of
/// 0 or above [`MAX_READ_REGISTERS`] exception 03; a range beyond 0xFFFF exception 02; a
/// scripted [`SimModbus::exception`] range its code; more than the meter's maximum, or any
/// unmapped register, exception 02; otherwise the words, recorded as [`Served`].
///
/// tokio-modbus's server handles one request at a time per connection, as a meter does: a
/// late answer holds up the requests behind it on the same connection, and is still sent.
#[derive(Clone)]
pub struct SimModbus {
    shared: Arc<Shared>,
    /// Cancels every task of the endpoint when the last handle goes away, so a forgotten
    /// `stop` cannot leave a listener behind in a long `demo`.
    _alive: Arc<DropGuard>,
}

impl fmt::Debug for SimModbus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimModbus")
            .field("addr", &self.shared.addr)
            .finish_non_exhaustive()
    }
}

/// The meters' registers, faults and request log (shared with the RTU simulator).
impl std::ops::Deref for SimModbus {
    type Target = Units;

    fn deref(&self) -> &Units {
        &self.shared.units
    }
}

impl SimModbus {
    /// Binds `127.0.0.1:0` and serves `meters`; two meters with the same unit id are refused
    /// (`InvalidInput`).
    pub async fn start(meters: Vec<SimMeter>) -> io::Result<SimModbus> {
        let units = Units::new(meters)?;
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let root = CancellationToken::new();
        let shared = Arc::new(Shared {
            addr,
            units,
            connections: AtomicU64::new(0),
            root: root.clone(),
            control: tokio::sync::Mutex::new(Control {
                listening: None,
                stopped: false,
            }),
        });
        let generation = Generation::spawn(&shared, listener);
        shared.control.lock().await.listening = Some(generation);
        Ok(SimModbus {
            shared,
            _alive: Arc::new(root.drop_guard()),
        })
    }

    /// The listening address; the same after [`SimModbus::set_refusing`] and back.
    pub fn addr(&self) -> SocketAddr {
        self.shared.addr
    }

    /// TCP connections accepted so far (a client that reconnects raises this).
    pub fn connections(&self) -> u64 {
        self.shared.connections.load(Ordering::Relaxed)
    }

    /// `true`: the listener and every open connection (including one waiting for a late
    /// answer) are closed, so clients see "connection refused" or a closed connection.
    /// `false`: rebinds the same port. When this returns the change is in force; rebinding
    /// fails only if something else took the port meanwhile.
    pub async fn set_refusing(&self, refusing: bool) -> io::Result<()> {
        let mut control = self.shared.control.lock().await;
        if control.stopped {
            return Err(io::Error::other(
                "the simulated Modbus endpoint was stopped",
            ));
        }
        if refusing {
            if let Some(generation) = control.listening.take() {
                generation.shut().await;
            }
        } else if control.listening.is_none() {
            // tokio sets SO_REUSEADDR, so the port's TIME_WAIT sockets do not block this.
            let listener = TcpListener::bind(self.shared.addr).await?;
            control.listening = Some(Generation::spawn(&self.shared, listener));
        }
        Ok(())
    }

    /// Closes the listener and every connection and waits until they are gone.
    pub async fn stop(self) {
        let mut control = self.shared.control.lock().await;
        control.stopped = true;
        self.shared.root.cancel();
        if let Some(generation) = control.listening.take() {
            generation.shut().await;
        }
    }
}

async fn wait_count<T: Copy + PartialOrd>(
    counter: &watch::Sender<T>,
    n: T,
    timeout: Duration,
) -> bool {
    let mut rx = counter.subscribe();
    matches!(
        tokio::time::timeout(timeout, rx.wait_for(|&count| count >= n)).await,
        Ok(Ok(_))
    )
}

struct Shared {
    addr: SocketAddr,
    units: Units,
    connections: AtomicU64,
    root: CancellationToken,
    /// Serialises `set_refusing` and `stop`; held across the awaits of closing and rebinding.
    control: tokio::sync::Mutex<Control>,
}

impl Shared {
    async fn handle(
        &self,
        connection: u64,
        request: SlaveRequest<'static>,
    ) -> Result<Option<Response>, ExceptionCode> {
        let unit = request.slave;
        let delay = match self.units.arrive(unit) {
            Arrival::Silent => return Ok(None),
            Arrival::Answer { delay } => delay,
        };
        if let Some(delay) = delay {
            tokio::time::sleep(delay).await;
        }
        self.units.answer_now(unit, &request.request, connection)
    }
}

struct Control {
    listening: Option<Generation>,
    stopped: bool,
}

/// One listening period: the accept loop and every connection it accepted.
struct Generation {
    stop: CancellationToken,
    tasks: TaskTracker,
}

impl Generation {
    fn spawn(shared: &Arc<Shared>, listener: TcpListener) -> Generation {
        let stop = shared.root.child_token();
        let tasks = TaskTracker::new();
        let on_connected = {
            let shared = shared.clone();
            let tasks = tasks.clone();
            move |stream: TcpStream, _peer: SocketAddr| {
                // Only latency is at stake; a failure here changes nothing observable.
                let _ = stream.set_nodelay(true);
                let connection = shared.connections.fetch_add(1, Ordering::Relaxed);
                let service = SimService {
                    shared: shared.clone(),
                    connection,
                };
                let transport = Tracked {
                    stream,
                    _token: tasks.token(),
                };
                std::future::ready(io::Result::Ok(Some((service, transport))))
            }
        };
        let on_process_error =
            |error: io::Error| tracing::debug!(%error, "simulated Modbus: connection ended");
        let server = Server::new(listener);
        let cancelled = stop.clone();
        tasks.spawn(async move {
            loop {
                // Dropping `serve` cancels the connection tasks it spawned (its drop guard),
                // and each of them holds a tracker token in its transport until its socket is
                // dropped, so `shut` can wait for every connection to be really closed.
                let result = tokio::select! {
                    () = cancelled.cancelled() => return,
                    result = server.serve(&on_connected, on_process_error) => result,
                };
                // Out of file descriptors and the like: pause instead of spinning on accept.
                if let Err(error) = result {
                    tracing::warn!(%error, "simulated Modbus: accept failed");
                }
                tokio::select! {
                    () = cancelled.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_millis(50)) => {}
                }
            }
        });
        Generation { stop, tasks }
    }

    /// Drops the listener and every connection (late answers included) and waits for it.
    async fn shut(self) {
        self.stop.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }
}

/// The per-connection service: knows which connection it serves, for [`Served::connection`].
struct SimService {
    shared: Arc<Shared>,
    connection: u64,
}

type Answer = Result<Option<Response>, ExceptionCode>;

impl Service for SimService {
    type Request = SlaveRequest<'static>;
    type Response = Option<Response>;
    type Exception = ExceptionCode;
    type Future = Pin<Box<dyn Future<Output = Answer> + Send>>;

    fn call(&self, request: Self::Request) -> Self::Future {
        let shared = self.shared.clone();
        let connection = self.connection;
        Box::pin(async move { shared.handle(connection, request).await })
    }
}

/// A connection's socket plus a token of the generation's tracker: the tracker counts the
/// connection as open until tokio-modbus's connection task dropped the socket.
struct Tracked {
    stream: TcpStream,
    _token: TaskTrackerToken,
}

impl AsyncRead for Tracked {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

/// An f32 as two registers, high word first (ABCD).
fn f32_words(v: f32) -> [u16; 2] {
    let bits = v.to_bits();
    [(bits >> 16) as u16, bits as u16]
}

fn words_f32(high: u16, low: u16) -> f32 {
    f32::from_bits((u32::from(high) << 16) | u32::from(low))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_modbus::client::{Context as Client, tcp};
    use tokio_modbus::prelude::{Reader, SlaveContext, Writer};
    use tokio_modbus::{ProtocolError, Slave};

    const WAIT: Duration = Duration::from_secs(5);
    /// The client's timeout in the lateness tests; the late answers come well after it.
    const CLIENT_TIMEOUT: Duration = Duration::from_millis(200);
    const LATE: Duration = Duration::from_millis(500);

    type Read = tokio_modbus::Result<Vec<u16>>;

    async fn connect(sim: &SimModbus, unit: u8) -> Client {
        tcp::connect_slave(sim.addr(), Slave(unit)).await.unwrap()
    }

    /// A read that must get some answer (data, exception or error) within `WAIT`.
    async fn read(client: &mut Client, table: Table, start: u16, count: u16) -> Read {
        tokio::time::timeout(WAIT, read_within(client, table, start, count))
            .await
            .unwrap()
    }

    async fn read_within(client: &mut Client, table: Table, start: u16, count: u16) -> Read {
        match table {
            Table::Holding => client.read_holding_registers(start, count).await,
            Table::Input => client.read_input_registers(start, count).await,
        }
    }

    /// Words the endpoint must answer.
    async fn words(client: &mut Client, table: Table, start: u16, count: u16) -> Vec<u16> {
        read(client, table, start, count).await.unwrap().unwrap()
    }

    async fn exception(client: &mut Client, table: Table, start: u16, count: u16) -> ExceptionCode {
        read(client, table, start, count)
            .await
            .unwrap()
            .unwrap_err()
    }

    /// Decoded here, independently of the simulator's encoder: big-endian, high word first.
    fn f32_in(words: &[u16], offset: usize) -> f32 {
        let [a, b] = words[offset].to_be_bytes();
        let [c, d] = words[offset + 1].to_be_bytes();
        f32::from_be_bytes([a, b, c, d])
    }

    #[tokio::test]
    async fn sdm630_block_decodes_as_big_endian_f32() {
        let sim = SimModbus::start(vec![SimMeter::sdm630(1)]).await.unwrap();
        let mut client = connect(&sim, 1).await;
        let total = words(&mut client, Table::Input, 0x0156, 2).await;
        assert_eq!(f32_in(&total, 0), 1012.5);
        let block = words(&mut client, Table::Input, 0x0000, 80).await;
        assert_eq!(block.len(), 80);
        assert_eq!(
            &block[..2],
            &[0x4366, 0x199A],
            "230.1 as f32 ABCD on the wire"
        );
        let expected: &[(usize, f32)] = &[
            (0x00, 230.1),
            (0x02, 231.2),
            (0x04, 229.8),
            (0x06, 5.2),
            (0x08, 4.8),
            (0x0A, 6.1),
            (0x0C, 780.5),
            (0x0E, 720.0),
            (0x10, 801.0),
            (0x34, 2301.5),
            (0x3E, 0.98),
            (0x40, 0.0),
            (0x46, 50.0),
            (0x48, 1000.0),
            (0x4A, 12.5),
            (0x4C, 250.0),
            (0x4E, 3.5),
        ];
        for &(addr, value) in expected {
            assert_eq!(f32_in(&block, addr), value, "input {addr:#06x}");
        }
        // Phase powers add up to the total, as on a real meter.
        assert_eq!(
            f32_in(&block, 0x0C) + f32_in(&block, 0x0E) + f32_in(&block, 0x10),
            2301.5
        );
        let tail = words(&mut client, Table::Input, 0x0156, 16).await;
        assert_eq!(
            f32_in(&tail, 0),
            1012.75,
            "import grew by 0.25 after the block read"
        );

        let served = sim.served();
        assert_eq!(served.len(), 3);
        let block_served = &served[1];
        assert_eq!(
            (
                block_served.unit,
                block_served.table,
                block_served.start,
                block_served.count
            ),
            (1, Table::Input, 0, 80)
        );
        assert_eq!(block_served.words, block, "exactly what was sent");
        assert!(served.iter().all(|s| s.connection == 0));
        assert!(served.windows(2).all(|w| w[0].at <= w[1].at));
        sim.stop().await;
    }

    #[tokio::test]
    async fn unmapped_too_large_and_invalid_reads_answer_exceptions() {
        let holding: Vec<u16> = (1..=20).collect();
        let sim = SimModbus::start(vec![
            SimMeter::sdm630(1),
            SimMeter::new(2).with_words(Table::Holding, 100, &holding),
            SimMeter::new(3),
        ])
        .await
        .unwrap();
        let mut client = connect(&sim, 1).await;
        let illegal = ExceptionCode::IllegalDataAddress;
        for (table, start, count) in [
            (Table::Input, 0x0050, 2), // just past the block
            (Table::Input, 0x004E, 4), // straddles its end
            (Table::Input, 0x0154, 4), // straddles the start of the second block
            (Table::Input, 0x0166, 2),
            (Table::Input, 0x0000, 81), // beyond the Eastron limit
            (Table::Holding, 0x0000, 2),
            (Table::Input, 0xFFFF, 2), // beyond the address space
        ] {
            assert_eq!(
                exception(&mut client, table, start, count).await,
                illegal,
                "{table} {start:#06x}+{count}"
            );
        }
        assert_eq!(words(&mut client, Table::Input, 0x0156, 16).await.len(), 16);

        client.set_slave(Slave(2));
        assert_eq!(words(&mut client, Table::Holding, 100, 20).await, holding);
        sim.max_registers(2, 10);
        assert_eq!(
            exception(&mut client, Table::Holding, 100, 11).await,
            illegal
        );
        assert_eq!(
            words(&mut client, Table::Holding, 105, 10).await,
            &holding[5..15]
        );
        assert_eq!(exception(&mut client, Table::Input, 100, 2).await, illegal);
        for count in [0, 126] {
            assert_eq!(
                exception(&mut client, Table::Holding, 100, count).await,
                ExceptionCode::IllegalDataValue,
                "count {count}"
            );
        }
        let write = tokio::time::timeout(WAIT, client.write_single_register(100, 7))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(write, Err(ExceptionCode::IllegalFunction));

        client.set_slave(Slave(3));
        assert_eq!(exception(&mut client, Table::Holding, 0, 1).await, illegal);
        assert_eq!(exception(&mut client, Table::Input, 0, 1).await, illegal);

        assert_eq!(
            (
                sim.requests_for(1),
                sim.requests_for(2),
                sim.requests_for(3)
            ),
            (8, 7, 2)
        );
        assert_eq!(sim.requests(), 17);
        assert_eq!(sim.served().len(), 3, "exceptions are not served reads");
        sim.stop().await;
    }

    #[tokio::test]
    async fn growing_counter_steps_after_each_read_and_keeps_the_total() {
        let sim = SimModbus::start(vec![
            SimMeter::sdm630(1),
            SimMeter::new(2).growing(Table::Holding, 10, 0.5),
        ])
        .await
        .unwrap();
        let mut client = connect(&sim, 1).await;
        let mut seen = Vec::new();
        for _ in 0..3 {
            seen.push(f32_in(
                &words(&mut client, Table::Input, 0x0048, 2).await,
                0,
            ));
        }
        assert_eq!(seen, [1000.0, 1000.25, 1000.5]);
        // Reads that do not cover the counter leave it alone.
        words(&mut client, Table::Input, 0x0000, 0x0048).await;
        words(&mut client, Table::Input, 0x004A, 2).await;
        let total = words(&mut client, Table::Input, 0x0156, 2).await;
        assert_eq!(f32_in(&total, 0), 1000.75 + 12.5);
        assert_eq!(sim.f32_at(1, Table::Input, 0x0048), Some(1000.75));

        sim.set_f32(1, Table::Input, 0x004A, 20.0);
        assert_eq!(sim.f32_at(1, Table::Input, 0x0156), Some(1020.75));
        sim.set_words(1, Table::Input, 0x0048, &[0x447A, 0x0000]); // 1000.0
        let total = words(&mut client, Table::Input, 0x0156, 2).await;
        assert_eq!(f32_in(&total, 0), 1020.0);

        client.set_slave(Slave(2));
        let first = words(&mut client, Table::Holding, 10, 2).await;
        let second = words(&mut client, Table::Holding, 10, 2).await;
        assert_eq!((f32_in(&first, 0), f32_in(&second, 0)), (0.0, 0.5));
        assert_eq!(
            sim.words(2, Table::Holding, 10, 2),
            Some(f32_words(1.0).to_vec())
        );
        assert_eq!(
            sim.words(2, Table::Holding, 10, 3),
            None,
            "11 is mapped, 12 is not"
        );
        assert_eq!(sim.words(9, Table::Holding, 10, 2), None, "no such unit");
        // Setters for a unit that is not served change nothing.
        sim.set_f32(9, Table::Holding, 10, 1.0);
        assert_eq!(sim.words(9, Table::Holding, 10, 2), None);
        sim.stop().await;
    }

    #[tokio::test]
    async fn counts_requests_per_unit_and_connections() {
        let sim = SimModbus::start(vec![SimMeter::sdm630(1)]).await.unwrap();
        let mut first = connect(&sim, 1).await;
        for _ in 0..3 {
            words(&mut first, Table::Input, 0, 2).await;
        }
        let mut second = connect(&sim, 9).await;
        let unknown =
            tokio::time::timeout(CLIENT_TIMEOUT, read_within(&mut second, Table::Input, 0, 2))
                .await;
        assert!(unknown.is_err(), "an unknown unit id gets no answer");
        assert!(sim.wait_requests(4, WAIT).await);
        assert_eq!(sim.requests(), 4);
        assert_eq!((sim.requests_for(1), sim.requests_for(9)), (3, 1));
        assert_eq!(sim.requests_for(2), 0);
        assert_eq!(sim.connections(), 2);
        assert_eq!(sim.served().len(), 3);
        assert!(sim.wait_served(3, WAIT).await);
        assert!(!sim.wait_served(4, Duration::from_millis(10)).await);
        sim.stop().await;
    }

    #[tokio::test]
    async fn late_answer_is_read_as_the_next_answer_on_a_kept_connection() {
        let sim = SimModbus::start(vec![SimMeter::sdm630(1)]).await.unwrap();
        let mut client = connect(&sim, 1).await;
        sim.delay_next(1, 1, LATE);
        let sent = Instant::now();
        let timed_out =
            tokio::time::timeout(CLIENT_TIMEOUT, read_within(&mut client, Table::Input, 0, 2))
                .await;
        assert!(timed_out.is_err(), "the answer must come after the timeout");

        // The bug the daemon must avoid: the next request on the same connection gets the
        // late answer to the previous one (tokio-modbus notices the transaction id; a client
        // that does not would take 230.1 V for the import energy).
        match read(&mut client, Table::Input, 0x0048, 2).await {
            Err(tokio_modbus::Error::Protocol(ProtocolError::HeaderMismatch {
                result: Ok(Response::ReadInputRegisters(late)),
                ..
            })) => assert_eq!(f32_in(&late, 0), 230.1),
            Ok(Ok(late)) => assert_eq!(f32_in(&late, 0), 230.1),
            other => panic!("expected the late answer, got {other:?}"),
        }
        assert!(sim.wait_served(2, WAIT).await);
        let served = sim.served();
        assert_eq!((served[0].start, served[1].start), (0x0000, 0x0048));
        assert!(served[0].at >= sent + LATE, "answered late, not early");
        assert!(served.iter().all(|s| s.connection == 0));
        assert_eq!(sim.connections(), 1);
        sim.stop().await;
    }

    #[tokio::test]
    async fn a_fresh_connection_after_a_timeout_reads_correct_data() {
        let sim = SimModbus::start(vec![SimMeter::sdm630(1)]).await.unwrap();
        let mut client = connect(&sim, 1).await;
        sim.delay_next(1, 1, LATE);
        let timed_out =
            tokio::time::timeout(CLIENT_TIMEOUT, read_within(&mut client, Table::Input, 0, 2))
                .await;
        assert!(timed_out.is_err());
        drop(client);

        let mut client = connect(&sim, 1).await;
        let energy = words(&mut client, Table::Input, 0x0048, 2).await;
        assert_eq!(f32_in(&energy, 0), 1000.0);
        // Only one request was delayed: the next one on this connection is prompt too.
        let voltage = words(&mut client, Table::Input, 0x0000, 2).await;
        assert_eq!(f32_in(&voltage, 0), 230.1);
        // The late answer still went out on the abandoned connection.
        assert!(sim.wait_served(3, WAIT).await);
        let late: Vec<_> = sim
            .served()
            .into_iter()
            .filter(|s| s.connection == 0)
            .collect();
        assert_eq!(late.len(), 1);
        assert_eq!(late[0].start, 0);
        assert_eq!(sim.connections(), 2);
        sim.stop().await;
    }

    #[tokio::test]
    async fn silent_unit_times_out_and_leaves_nothing_late_behind() {
        let sim = SimModbus::start(vec![SimMeter::sdm630(1)]).await.unwrap();
        let mut client = connect(&sim, 1).await;
        sim.set_silent(1, true);
        let timed_out =
            tokio::time::timeout(CLIENT_TIMEOUT, read_within(&mut client, Table::Input, 0, 2))
                .await;
        assert!(timed_out.is_err());
        assert_eq!(sim.requests_for(1), 1);
        assert!(sim.served().is_empty());
        sim.set_silent(1, false);
        let voltage = words(&mut client, Table::Input, 0, 2).await;
        assert_eq!(
            f32_in(&voltage, 0),
            230.1,
            "the kept connection is still in step"
        );
        sim.stop().await;
    }

    #[tokio::test]
    async fn scripted_exception_hits_every_overlapping_read() {
        let sim = SimModbus::start(vec![SimMeter::sdm630(1)]).await.unwrap();
        let mut client = connect(&sim, 1).await;
        let busy = ExceptionCode::ServerDeviceBusy;
        sim.exception(1, Table::Input, 0x0010, 4, busy);
        for (start, count) in [(0x0000, 80), (0x000E, 4), (0x0012, 2), (0x0013, 1)] {
            assert_eq!(
                exception(&mut client, Table::Input, start, count).await,
                busy,
                "{start:#06x}+{count}"
            );
        }
        assert_eq!(words(&mut client, Table::Input, 0x000C, 4).await.len(), 4);
        assert_eq!(words(&mut client, Table::Input, 0x0014, 2).await.len(), 2);
        // Another table is not affected (and has nothing mapped here).
        assert_eq!(
            exception(&mut client, Table::Holding, 0x0010, 2).await,
            ExceptionCode::IllegalDataAddress
        );
        sim.clear_exceptions(1);
        assert_eq!(words(&mut client, Table::Input, 0, 80).await.len(), 80);
        sim.stop().await;
    }

    #[tokio::test]
    async fn refusing_closes_open_connections_and_rebinds_the_same_port() {
        let sim = SimModbus::start(vec![SimMeter::sdm630(1)]).await.unwrap();
        let addr = sim.addr();
        let mut client = connect(&sim, 1).await;
        words(&mut client, Table::Input, 0, 2).await;

        sim.set_refusing(true).await.unwrap();
        sim.set_refusing(true).await.unwrap();
        let broken = read(&mut client, Table::Input, 0, 2).await;
        assert!(
            matches!(broken, Err(tokio_modbus::Error::Transport(_))),
            "{broken:?}"
        );
        let refused = tcp::connect_slave(addr, Slave(1))
            .await
            .map(drop)
            .unwrap_err();
        assert_eq!(refused.kind(), io::ErrorKind::ConnectionRefused);

        sim.set_refusing(false).await.unwrap();
        sim.set_refusing(false).await.unwrap();
        assert_eq!(sim.addr(), addr);
        let mut client = connect(&sim, 1).await;
        let voltage = words(&mut client, Table::Input, 0, 2).await;
        assert_eq!(f32_in(&voltage, 0), 230.1);
        assert_eq!(sim.connections(), 2);
        sim.stop().await;
        assert!(tcp::connect_slave(addr, Slave(1)).await.is_err());
    }

    #[tokio::test]
    async fn refusing_and_stop_close_a_connection_waiting_for_a_late_answer() {
        let sim = SimModbus::start(vec![SimMeter::sdm630(1)]).await.unwrap();
        let mut client = connect(&sim, 1).await;
        sim.delay_next(1, 1, Duration::from_secs(60));
        let pending = tokio::spawn(async move { read(&mut client, Table::Input, 0, 2).await });
        assert!(sim.wait_requests(1, WAIT).await);
        tokio::time::timeout(WAIT, sim.set_refusing(true))
            .await
            .unwrap()
            .unwrap();
        let result = pending.await.unwrap();
        assert!(
            matches!(result, Err(tokio_modbus::Error::Transport(_))),
            "{result:?}"
        );
        assert!(sim.served().is_empty());

        sim.set_refusing(false).await.unwrap();
        let mut client = connect(&sim, 1).await;
        sim.delay_next(1, 1, Duration::from_secs(60));
        let pending = tokio::spawn(async move { read(&mut client, Table::Input, 0, 2).await });
        assert!(sim.wait_requests(2, WAIT).await);
        let handle = sim.clone();
        tokio::time::timeout(WAIT, sim.stop()).await.unwrap();
        let result = pending.await.unwrap();
        assert!(
            matches!(result, Err(tokio_modbus::Error::Transport(_))),
            "{result:?}"
        );
        assert!(
            handle.set_refusing(false).await.is_err(),
            "stopped for good"
        );
    }

    #[tokio::test]
    async fn two_unit_ids_share_one_endpoint() {
        let sim = SimModbus::start(vec![
            SimMeter::sdm630(1),
            SimMeter::new(2)
                .with_f32(Table::Holding, 0x0100, 42.5)
                .with_u16(Table::Holding, 0x0102, 7),
        ])
        .await
        .unwrap();
        let mut client = connect(&sim, 2).await;
        let holding = words(&mut client, Table::Holding, 0x0100, 3).await;
        assert_eq!((f32_in(&holding, 0), holding[2]), (42.5, 7));
        assert_eq!(
            exception(&mut client, Table::Input, 0, 2).await,
            ExceptionCode::IllegalDataAddress
        );
        client.set_slave(Slave(1));
        assert_eq!(
            f32_in(&words(&mut client, Table::Input, 0, 2).await, 0),
            230.1
        );
        client.set_slave(Slave(7));
        let nobody =
            tokio::time::timeout(CLIENT_TIMEOUT, read_within(&mut client, Table::Input, 0, 2))
                .await;
        assert!(nobody.is_err(), "a unit id nobody answers to stays silent");
        client.set_slave(Slave(2));
        assert_eq!(words(&mut client, Table::Holding, 0x0102, 1).await, [7]);
        assert_eq!(
            (
                sim.requests_for(1),
                sim.requests_for(2),
                sim.requests_for(7)
            ),
            (1, 3, 1)
        );
        let units: Vec<u8> = sim.served().iter().map(|s| s.unit).collect();
        assert_eq!(units, [2, 1, 2]);
        sim.stop().await;
    }

    #[tokio::test]
    async fn malformed_frames_close_only_their_connection() {
        let sim = SimModbus::start(vec![SimMeter::new(1).with_u16(Table::Holding, 0, 9)])
            .await
            .unwrap();
        // A well-formed frame asking for 2000 registers: exception 03, not a panic or an
        // oversized answer.
        let mut raw = TcpStream::connect(sim.addr()).await.unwrap();
        raw.write_all(&[0, 1, 0, 0, 0, 6, 1, 0x03, 0, 0, 0x07, 0xD0])
            .await
            .unwrap();
        let mut answer = [0u8; 9];
        tokio::time::timeout(WAIT, raw.read_exact(&mut answer))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(answer, [0, 1, 0, 0, 0, 3, 1, 0x83, 0x03]);

        for junk in [
            &[0, 2, 0xFF, 0xFF, 0, 6, 1, 0x03, 0, 0, 0, 1][..], // wrong protocol id
            &[0, 3, 0, 0, 0, 0, 1, 0x03][..],                   // length zero
            &[0, 4, 0, 0, 0, 2, 1, 0x03][..],                   // truncated PDU
            &[0, 5, 0, 0, 0, 2, 1, 0x90][..],                   // function code with the error bit
        ] {
            let mut raw = TcpStream::connect(sim.addr()).await.unwrap();
            raw.write_all(junk).await.unwrap();
            let mut rest = Vec::new();
            // Closed by the server (or reset): either way the read ends well before `WAIT`.
            let closed = tokio::time::timeout(WAIT, raw.read_to_end(&mut rest)).await;
            assert!(closed.is_ok(), "{junk:02x?} left the connection open");
        }
        let mut client = connect(&sim, 1).await;
        assert_eq!(words(&mut client, Table::Holding, 0, 1).await, [9]);
        sim.stop().await;
    }

    #[tokio::test]
    async fn start_refuses_two_meters_with_one_unit_id() {
        let error = SimModbus::start(vec![SimMeter::new(4), SimMeter::sdm630(4)])
            .await
            .unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidInput);
    }
}
