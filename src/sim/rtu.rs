//! A simulated RS-485 line with Modbus RTU meters behind an in-process pseudo-terminal: the
//! daemon opens [`SimRtuBus::path`] (`/dev/pts/N`) exactly as it opens a USB adapter's tty, and
//! every [`SimMeter`] on the line hears every request while only the addressed one answers. The
//! meters are the TCP simulator's ([`super::modbus`]: registers, growing counters, late answers,
//! exceptions, silence, the served log); what only a serial line has is added here: wire time,
//! noise before an answer, a corrupted CRC, and an adapter that is unplugged.
//!
//! It owns the pty pair, an internal second pair for tokio-modbus's RTU server, and one task.
//! It is used by tests and `demo`, never by the daemon's poll path. Framing is tokio-modbus's
//! own; only the fault injection is ours, and nothing here panics on bytes from the line. The pty
//! plumbing (and its `FD_CLOEXEC` `unsafe` block) is shared with [`super::mbus`] in `pty.rs`.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::fs::File;
use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_modbus::server::Service;
use tokio_modbus::server::rtu::Server;
use tokio_modbus::{ExceptionCode, Request, Response, SlaveRequest};
use tokio_serial::SerialStream;
use tokio_util::sync::{CancellationToken, DropGuard};
use tokio_util::task::TaskTracker;

use super::modbus::{Arrival, Served, SimMeter, Units};
use super::pty::{HANGUP_PAUSE, Pty, set_cloexec};

/// The pause before a new internal server after one ended, so a failure that repeats (no free
/// pty, say) cannot spin either.
const RESTART_PAUSE: Duration = Duration::from_millis(20);

/// How long bytes take on the simulated wire (Modbus over Serial Line V1.02 §2.5;
/// `shared/reference/modbus.md` §4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LineTiming {
    /// Bits per second. 0 counts as 1, so nothing divides by zero.
    pub baud: u32,
    /// Bits per character on the wire: 11 for 8E1 or 8N2 (the spec's RTU framing), 10 for 8N1.
    pub bits_per_char: u32,
    /// The meter's processing time between the end of a request and the start of its answer.
    pub latency: Duration,
}

impl LineTiming {
    /// One character on the wire (1.146 ms at 9600 baud 8E1).
    pub fn char_time(&self) -> Duration {
        self.frame_time(1)
    }

    /// The silence that ends a frame: 3.5 characters, fixed at 1.75 ms above 19200 baud.
    pub fn t35(&self) -> Duration {
        if self.baud > 19_200 {
            Duration::from_micros(1_750)
        } else {
            self.chars(35, 10)
        }
    }

    /// `bytes` characters back to back.
    pub fn frame_time(&self, bytes: usize) -> Duration {
        // usize is at most 64 bits on every target Rust supports, so this never saturates.
        self.chars(u128::try_from(bytes).unwrap_or(u128::MAX), 1)
    }

    /// `numerator / denominator` characters in whole nanoseconds, computed in one division so
    /// long frames do not accumulate the rounding of a per-character time.
    fn chars(&self, numerator: u128, denominator: u128) -> Duration {
        let nanos = numerator
            .saturating_mul(u128::from(self.bits_per_char))
            .saturating_mul(1_000_000_000)
            / denominator
                .saturating_mul(u128::from(self.baud.max(1)))
                .max(1);
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }
}

/// A running line. Clones share it; it stops with [`SimRtuBus::close`] or when the last clone
/// is dropped.
///
/// **The pty ends.** The line is the master end of a pty pair; its slave end is
/// [`SimRtuBus::path`], which the daemon opens exclusively (serialport sets TIOCEXCL on the tty
/// and takes an exclusive `flock` on its own open file description). The simulator keeps one
/// slave descriptor of its own open for the whole life of the line, opened plainly
/// (`O_NOCTTY`, no TIOCEXCL, no lock), because:
/// - while no slave descriptor is open, Linux reports a hangup on the master (every read
///   fails with EIO at once), so between the daemon's closes the line would have to poll;
///   with ours open, the master simply waits for the next request;
/// - it holds no lock and was opened before anyone set TIOCEXCL, so the daemon's exclusive open
///   succeeds and a second open of the path still fails (EWOULDBLOCK on the lock; EBUSY too
///   for non-root callers).
///
/// The relay still backs off on EIO, in case a hangup happens anyway.
///
/// One difference from a USB adapter remains: a pty keeps TIOCEXCL for as long as its master
/// is open, and only a clean close clears it (serialport does that on drop). After a daemon is
/// killed with SIGKILL, a non-root reopen of the path fails with EBUSY until the line is closed;
/// root is exempt, and the `flock` goes away with the process either way.
///
/// **What a request meets.** Every request is counted first (per unit id, whatever its fate),
/// then handled as on the TCP endpoint ([`super::modbus::SimModbus`]): a unit id no meter
/// answers to (including 0, the broadcast address), or a silent unit, gets no answer at all;
/// a scripted late answer waits its delay; then the meter answers (data or an exception). Then
/// this line's own faults: the answer can be preceded by noise ([`SimRtuBus::garbage_next`]) or
/// go out with a corrupted CRC ([`SimRtuBus::bad_crc_next`]). One request is handled at a
/// time, as on a half-duplex line: a late answer holds up everything behind it, and it is still
/// written when it is due, whoever listens; it then waits in the tty's input buffer until the
/// daemon reads or flushes it (also across the daemon's closes).
///
/// With [`LineTiming`], an answer is written `frame_time(request) + t35 + latency +
/// frame_time(noise + answer)` after the request arrived (one timer per frame): a master's cycle
/// then takes what `shared/reference/modbus.md` §4.3 says, once it adds its own t3.5 gap.
/// Without it, answers go out at once.
///
/// [`Served`] records every answer with words that was written to the line (with noise or a bad
/// CRC too: it was on the wire), at the time it was written; `connection` is always 0.
///
/// **Inside.** tokio-modbus's RTU server only takes a `tokio_serial::SerialStream`, so it runs
/// on a second, internal pty pair, and a relay task copies requests to it verbatim and each
/// answer back to the line, adding the faults. The server tells the relay every answer's length
/// and faults before handing it over, so the relay cuts frames without parsing them. If the
/// server gives up on junk from the master (tokio-modbus ends its RTU server on an undecodable
/// stream), a new internal pair and server take over; junk that looks like the start of a long
/// frame can still swallow a request or two before the decoder finds its feet again.
#[derive(Clone)]
pub struct SimRtuBus {
    line: Arc<Line>,
    /// Stops the line when the last handle goes away, so a forgotten `close` cannot leave a
    /// pty and a task behind in a long `demo`.
    _alive: Arc<DropGuard>,
}

impl fmt::Debug for SimRtuBus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimRtuBus")
            .field("path", &self.line.path)
            .field("timing", &self.line.timing)
            .finish_non_exhaustive()
    }
}

/// The meters' registers, faults and request log (the same model as the TCP simulator).
impl std::ops::Deref for SimRtuBus {
    type Target = Units;

    fn deref(&self) -> &Units {
        &self.line.units
    }
}

impl SimRtuBus {
    /// Creates the pty pair and serves `meters` on it. Two meters with the same unit id, or one
    /// with unit id 0 (the broadcast address, which nobody answers), are refused
    /// (`InvalidInput`).
    pub async fn start(meters: Vec<SimMeter>, timing: Option<LineTiming>) -> io::Result<SimRtuBus> {
        if meters.iter().any(|meter| meter.unit() == 0) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "unit id 0 is the RTU broadcast address, which no meter answers",
            ));
        }
        let units = Units::new(meters)?;
        // `held` is our own slave descriptor (see the type's docs).
        let Pty { master, path, held } = Pty::open()?;

        let stop = CancellationToken::new();
        let tasks = TaskTracker::new();
        let line = Arc::new(Line {
            path,
            timing,
            units,
            faults: Mutex::new(HashMap::new()),
            restarts: AtomicU64::new(0),
            stop: stop.clone(),
            tasks: tasks.clone(),
        });
        tasks.spawn(run(line.clone(), master, held));
        Ok(SimRtuBus {
            line,
            _alive: Arc::new(stop.drop_guard()),
        })
    }

    /// The pty's slave end, e.g. `/dev/pts/4`: what the daemon opens. The kernel hands the
    /// number to the next pty once the line is closed.
    pub fn path(&self) -> PathBuf {
        self.line.path.clone()
    }

    /// The wire-time model, if any.
    pub fn timing(&self) -> Option<LineTiming> {
        self.line.timing
    }

    /// The next `n` answers of `unit` (data or exception) are preceded on the wire by `bytes`,
    /// like noise on the line (after any noise already pending). tokio-modbus's decoder drops
    /// leading bytes until a frame's CRC checks (at most 20 per attempt), so a few bytes of
    /// noise cost the master nothing it notices; noise that reads like the header of a long
    /// frame makes it wait for bytes that never come (a timeout).
    pub fn garbage_next(&self, unit: u8, n: usize, bytes: Vec<u8>) {
        if n > 0 && !bytes.is_empty() {
            self.line
                .with_faults(unit, |faults| faults.garbage.push_back((n, bytes)));
        }
    }

    /// The next `n` answers of `unit` (data or exception) go out with the last CRC byte
    /// inverted; the frame is otherwise right. The master gets an error or times out.
    pub fn bad_crc_next(&self, unit: u8, n: usize) {
        self.line.with_faults(unit, |faults| {
            faults.bad_crc = faults.bad_crc.saturating_add(n)
        });
    }

    /// Drops the noise and bad CRCs still pending for `unit`: the line is clean again.
    pub fn clear_faults(&self, unit: u8) {
        self.line
            .with_faults(unit, |faults| *faults = Faults::default());
    }

    /// Unplugs the adapter: closes the master end (and everything else of the line) and waits
    /// until it is gone. A daemon holding the port open then fails at once: writes with EIO,
    /// a pending read with end of file.
    pub async fn close(self) {
        self.line.stop.cancel();
        self.line.tasks.close();
        self.line.tasks.wait().await;
    }
}

struct Line {
    path: PathBuf,
    timing: Option<LineTiming>,
    units: Units,
    faults: Mutex<HashMap<u8, Faults>>,
    /// Internal servers that gave up on junk and were replaced (for tests).
    restarts: AtomicU64,
    stop: CancellationToken,
    tasks: TaskTracker,
}

/// A unit's pending line faults.
#[derive(Debug, Default)]
struct Faults {
    /// (how many answers still, the noise before each).
    garbage: VecDeque<(usize, Vec<u8>)>,
    bad_crc: usize,
}

impl Faults {
    /// The faults of the next answer: its noise and whether its CRC is corrupted.
    fn take(&mut self) -> (Vec<u8>, bool) {
        let mut noise = Vec::new();
        let mut used_up = false;
        if let Some((remaining, bytes)) = self.garbage.front_mut() {
            noise.clone_from(bytes);
            // Entries are queued with n > 0 and popped at zero.
            *remaining = remaining.saturating_sub(1);
            used_up = *remaining == 0;
        }
        if used_up {
            self.garbage.pop_front();
        }
        let bad_crc = self.bad_crc > 0;
        self.bad_crc = self.bad_crc.saturating_sub(1);
        (noise, bad_crc)
    }
}

/// An answer the server is about to write to the internal pty, for the relay.
#[derive(Debug)]
struct Outgoing {
    /// Its length as tokio-modbus encodes it: address, PDU, CRC.
    len: usize,
    noise: Vec<u8>,
    bad_crc: bool,
    /// Recorded once written; `None` for an exception.
    served: Option<Served>,
}

/// Answers announced by the service, in the order the server writes them.
type Announced = Mutex<VecDeque<Outgoing>>;

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Never held across an await; a panic elsewhere must not wedge the line.
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl Line {
    fn with_faults(&self, unit: u8, change: impl FnOnce(&mut Faults)) {
        if self.units.has(unit) {
            change(lock(&self.faults).entry(unit).or_default());
        } else {
            tracing::warn!(unit, "simulated RTU line: no meter with this unit id");
        }
    }

    async fn answer(
        &self,
        request: SlaveRequest<'static>,
        announced: &Announced,
    ) -> Result<Option<Response>, ExceptionCode> {
        let unit = request.slave;
        let delay = match self.units.arrive(unit) {
            Arrival::Silent => return Ok(None),
            Arrival::Answer { delay } => delay.unwrap_or_default(),
        };
        let (noise, bad_crc) = lock(&self.faults).entry(unit).or_default().take();
        // The meter has heard the whole request, waited for the silence that ends it, and
        // worked on it, before it looks at its registers.
        let before = match self.timing {
            Some(t) => t
                .frame_time(request_len(&request.request))
                .saturating_add(t.t35())
                .saturating_add(t.latency)
                .saturating_add(delay),
            None => delay,
        };
        if !before.is_zero() {
            tokio::time::sleep(before).await;
        }
        let (len, served, answer) = match self.units.answer_later(unit, &request.request) {
            Ok(None) => return Ok(None),
            Ok(Some(read)) => {
                let response = read.response();
                (
                    5 + 2 * read.words.len(),
                    Some(read.served(0, Instant::now())),
                    Ok(Some(response)),
                )
            }
            Err(code) => (5, None, Err(code)),
        };
        if let Some(t) = self.timing {
            tokio::time::sleep(t.frame_time(noise.len() + len)).await;
        }
        lock(announced).push_back(Outgoing {
            len,
            noise,
            bad_crc,
            served,
        });
        answer
    }
}

/// A request's length on the wire (address, PDU, CRC), for the timing model.
fn request_len(request: &Request<'_>) -> usize {
    match request {
        Request::WriteMultipleRegisters(_, words) => 9 + 2 * words.len(),
        Request::WriteMultipleCoils(_, coils) => 9 + coils.len().div_ceil(8),
        // Reads and single writes. The other function codes are answered exception 01 and
        // only need a plausible length.
        _ => 8,
    }
}

/// The tokio-modbus service of one internal server: it shares the line, and announces each
/// answer to that generation's relay.
struct LineService {
    line: Arc<Line>,
    announced: Arc<Announced>,
}

type Answer = Result<Option<Response>, ExceptionCode>;

impl Service for LineService {
    type Request = SlaveRequest<'static>;
    type Response = Option<Response>;
    type Exception = ExceptionCode;
    type Future = Pin<Box<dyn Future<Output = Answer> + Send>>;

    fn call(&self, request: Self::Request) -> Self::Future {
        let line = self.line.clone();
        let announced = self.announced.clone();
        Box::pin(async move { line.answer(request, &announced).await })
    }
}

/// The line's task: holds the master and our slave descriptor until the line stops, and keeps
/// one internal server generation running.
async fn run(line: Arc<Line>, mut master: SerialStream, held: File) {
    loop {
        tokio::select! {
            () = line.stop.cancelled() => break,
            () = generation(&line, &mut master) => {}
        }
        tokio::select! {
            () = line.stop.cancelled() => break,
            () = tokio::time::sleep(RESTART_PAUSE) => {}
        }
    }
    // The master first: closing it hangs up every slave descriptor, the daemon's included.
    drop(master);
    drop(held);
}

/// One internal pty pair with a tokio-modbus RTU server on one end and the relay on the other,
/// until either of them ends.
async fn generation(line: &Arc<Line>, master: &mut SerialStream) {
    let (server_end, relay_end) = match internal_pair() {
        Ok(pair) => pair,
        Err(error) => {
            tracing::warn!(%error, "simulated RTU line: no internal pty");
            return;
        }
    };
    let announced = Arc::new(Announced::default());
    let service = LineService {
        line: line.clone(),
        announced: announced.clone(),
    };
    tokio::select! {
        result = Server::new(server_end).serve_forever(service) => {
            line.restarts.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(?result, "simulated RTU line: the server gave up; starting a new one");
        }
        () = relay(line, master, relay_end, &announced) => {}
    }
}

fn internal_pair() -> io::Result<(SerialStream, SerialStream)> {
    let (a, b) = SerialStream::pair().map_err(io::Error::from)?;
    set_cloexec(&a)?;
    set_cloexec(&b)?;
    Ok((a, b))
}

/// Copies the master's bytes to the server verbatim, and the server's answers back with their
/// faults. Returns when the server's end is gone.
async fn relay(
    line: &Line,
    master: &mut SerialStream,
    mut inner: SerialStream,
    announced: &Announced,
) {
    let mut from_master = [0u8; 512];
    let mut from_server = [0u8; 512];
    let mut pending = Vec::new();
    loop {
        tokio::select! {
            read = master.read(&mut from_master) => match read {
                Ok(n) if n > 0 => {
                    if let Err(error) = inner.write_all(&from_master[..n]).await {
                        tracing::debug!(%error, "simulated RTU line: internal pty failed");
                        return;
                    }
                }
                // A hangup (no slave descriptor open): see HANGUP_PAUSE.
                Ok(_) | Err(_) => tokio::time::sleep(HANGUP_PAUSE).await,
            },
            read = inner.read(&mut from_server) => match read {
                Ok(n) if n > 0 => {
                    pending.extend_from_slice(&from_server[..n]);
                    if let Err(error) = send_answers(line, master, &mut pending, announced).await {
                        // The answer is lost, as on a line nobody listens to; not served.
                        tracing::debug!(%error, "simulated RTU line: writing an answer failed");
                    }
                }
                _ => return,
            },
        }
    }
}

/// Writes every complete announced answer in `pending` to the line.
async fn send_answers(
    line: &Line,
    master: &mut SerialStream,
    pending: &mut Vec<u8>,
    announced: &Announced,
) -> io::Result<()> {
    loop {
        let next = {
            let mut queue = lock(announced);
            match queue.front() {
                Some(answer) if answer.len <= pending.len() => queue.pop_front(),
                // The rest of the frame is still on its way.
                Some(_) => return Ok(()),
                None => None,
            }
        };
        let Some(answer) = next else {
            // Bytes nobody announced: tokio-modbus's server writes nothing but answers, so this
            // does not happen; should it, the bytes go out untouched.
            if !pending.is_empty() {
                let bytes = std::mem::take(pending);
                master.write_all(&bytes).await?;
            }
            return Ok(());
        };
        let mut bytes = answer.noise;
        bytes.extend(pending.drain(..answer.len));
        if answer.bad_crc {
            // The CRC goes last, low byte first: this is its high byte.
            if let Some(last) = bytes.last_mut() {
                *last ^= 0xFF;
            }
        }
        master.write_all(&bytes).await?;
        if let Some(mut served) = answer.served {
            served.at = Instant::now();
            line.units.record(served);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::task::{Context, Poll};

    use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
    use tokio_modbus::Slave;
    use tokio_modbus::client::{Context as Client, rtu};
    use tokio_modbus::prelude::{Reader, SlaveContext};
    use tokio_serial::{ClearBuffer, SerialPort, SerialPortBuilderExt};

    use super::*;
    use crate::modbus::Table;

    const WAIT: Duration = Duration::from_secs(5);
    /// The client's timeout where no answer, or a late one, is expected.
    const CLIENT_TIMEOUT: Duration = Duration::from_millis(200);
    const LATE: Duration = Duration::from_millis(500);

    /// FC4, unit 1, 2 registers from 0, with its CRC (the usual textbook frame).
    const READ_VOLTAGE: [u8; 8] = [0x01, 0x04, 0x00, 0x00, 0x00, 0x02, 0x71, 0xCB];
    /// The answer's first 7 bytes: unit, FC, byte count, 230.1 as f32 ABCD.
    const VOLTAGE_ANSWER: [u8; 7] = [0x01, 0x04, 0x04, 0x43, 0x66, 0x19, 0x9A];

    type Read = tokio_modbus::Result<Vec<u16>>;

    /// Opens the line as the daemon does (exclusive, non-blocking).
    fn open(bus: &SimRtuBus) -> tokio_serial::Result<SerialStream> {
        tokio_serial::new(bus.path().to_string_lossy(), 9600).open_native_async()
    }

    fn attach(bus: &SimRtuBus, unit: u8) -> Client {
        rtu::attach_slave(open(bus).unwrap(), Slave(unit))
    }

    async fn sdm630_bus() -> SimRtuBus {
        SimRtuBus::start(vec![SimMeter::sdm630(1)], None)
            .await
            .unwrap()
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

    /// A read that must not be answered within `CLIENT_TIMEOUT`.
    async fn no_answer(client: &mut Client, table: Table, start: u16, count: u16) {
        let result =
            tokio::time::timeout(CLIENT_TIMEOUT, read_within(client, table, start, count)).await;
        assert!(result.is_err(), "expected no answer, got {result:?}");
    }

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

    /// Writes raw bytes and reads exactly `len` bytes back, within `WAIT`.
    async fn exchange(port: &mut SerialStream, request: &[u8], len: usize) -> Vec<u8> {
        port.write_all(request).await.unwrap();
        let mut answer = vec![0; len];
        tokio::time::timeout(WAIT, port.read_exact(&mut answer))
            .await
            .unwrap()
            .unwrap();
        answer
    }

    /// The daemon's defence against late answers: the input buffer is flushed just before each
    /// request goes out.
    struct FlushBeforeWrite(SerialStream);

    impl AsyncRead for FlushBeforeWrite {
        fn poll_read(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for FlushBeforeWrite {
        fn poll_write(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let port = &mut self.get_mut().0;
            if let Err(error) = port.clear(ClearBuffer::Input) {
                return Poll::Ready(Err(error.into()));
            }
            Pin::new(port).poll_write(cx, buf)
        }

        fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.get_mut().0).poll_flush(cx)
        }

        fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
        }
    }

    #[test]
    fn line_timing_matches_the_spec_table() {
        let micros = |d: Duration| d.as_micros();
        let t = |baud, bits_per_char| LineTiming {
            baud,
            bits_per_char,
            latency: Duration::ZERO,
        };
        // shared/reference/modbus.md §4.1, to the microsecond.
        for (timing, char_us, t35_us) in [
            (t(9600, 10), 1_041, 3_645),
            (t(9600, 11), 1_145, 4_010),
            (t(19_200, 10), 520, 1_822),
            (t(19_200, 11), 572, 2_005),
            (t(38_400, 11), 286, 1_750),
            (t(115_200, 10), 86, 1_750),
        ] {
            assert_eq!(micros(timing.char_time()), char_us, "{timing:?}");
            assert_eq!(micros(timing.t35()), t35_us, "{timing:?}");
        }
        // §4.3: an 80-register read at 9600 8E1 is 8 + 165 bytes; with two t3.5 the cycle is
        // 206.3 ms.
        let spec = t(9600, 11);
        assert_eq!(micros(spec.frame_time(173)), 198_229);
        assert_eq!(
            (spec.frame_time(173) + 2 * spec.t35()).as_micros() / 100,
            2_062
        );
        assert_eq!(spec.frame_time(0), Duration::ZERO);
        // Nonsense settings do not panic.
        assert_eq!(t(0, 11).char_time(), Duration::from_secs(11));
        assert_eq!(
            t(1, u32::MAX).frame_time(usize::MAX),
            Duration::from_nanos(u64::MAX)
        );
    }

    #[tokio::test]
    async fn sdm630_block_over_the_pty_decodes_as_big_endian_f32() {
        let bus = sdm630_bus().await;
        let mut client = attach(&bus, 1);
        let total = words(&mut client, Table::Input, 0x0156, 2).await;
        assert_eq!(f32_in(&total, 0), 1012.5);
        let block = words(&mut client, Table::Input, 0x0000, 80).await;
        assert_eq!(block.len(), 80);
        assert_eq!(&block[..2], &[0x4366, 0x199A], "230.1 as f32 ABCD");
        for (addr, value) in [
            (0x00, 230.1),
            (0x02, 231.2),
            (0x04, 229.8),
            (0x06, 5.2),
            (0x0C, 780.5),
            (0x34, 2301.5),
            (0x3E, 0.98),
            (0x40, 0.0),
            (0x46, 50.0),
            (0x48, 1000.0),
            (0x4A, 12.5),
            (0x4E, 3.5),
        ] {
            assert_eq!(f32_in(&block, addr), value, "input {addr:#06x}");
        }
        let served = bus.served();
        assert_eq!(served.len(), 2);
        assert_eq!(
            (
                served[1].unit,
                served[1].table,
                served[1].start,
                served[1].count
            ),
            (1, Table::Input, 0, 80)
        );
        assert_eq!(served[1].words, block, "exactly what was sent");
        assert!(served.iter().all(|s| s.connection == 0));
        assert!(served[0].at <= served[1].at);
        assert_eq!(bus.requests(), 2);
        bus.close().await;
    }

    #[tokio::test]
    async fn two_unit_ids_share_the_line() {
        let bus = SimRtuBus::start(
            vec![
                SimMeter::sdm630(1),
                SimMeter::new(2)
                    .with_f32(Table::Holding, 0x0100, 42.5)
                    .with_u16(Table::Holding, 0x0102, 7),
            ],
            None,
        )
        .await
        .unwrap();
        let mut client = attach(&bus, 2);
        let holding = words(&mut client, Table::Holding, 0x0100, 3).await;
        assert_eq!((f32_in(&holding, 0), holding[2]), (42.5, 7));
        client.set_slave(Slave(1));
        let voltage = words(&mut client, Table::Input, 0, 2).await;
        assert_eq!(f32_in(&voltage, 0), 230.1);
        client.set_slave(Slave(2));
        assert_eq!(words(&mut client, Table::Holding, 0x0102, 1).await, [7]);
        assert_eq!((bus.requests_for(1), bus.requests_for(2)), (1, 2));
        let units: Vec<u8> = bus.served().iter().map(|s| s.unit).collect();
        assert_eq!(units, [2, 1, 2]);
        bus.close().await;
    }

    #[tokio::test]
    async fn unknown_silent_and_broadcast_units_get_no_answer() {
        let bus = sdm630_bus().await;
        let mut client = attach(&bus, 9);
        no_answer(&mut client, Table::Input, 0, 2).await;
        client.set_slave(Slave(0));
        no_answer(&mut client, Table::Input, 0, 2).await;
        client.set_slave(Slave(1));
        bus.set_silent(1, true);
        no_answer(&mut client, Table::Input, 0, 2).await;
        assert!(bus.wait_requests(3, WAIT).await);
        assert_eq!(
            (
                bus.requests_for(9),
                bus.requests_for(0),
                bus.requests_for(1)
            ),
            (1, 1, 1)
        );
        assert!(bus.served().is_empty());
        bus.set_silent(1, false);
        // Nothing late was queued: the next answer is this request's.
        let voltage = words(&mut client, Table::Input, 0, 2).await;
        assert_eq!(f32_in(&voltage, 0), 230.1);
        assert_eq!(bus.requests(), 4);
        bus.close().await;
    }

    #[tokio::test]
    async fn exceptions_go_out_on_the_line() {
        let bus = sdm630_bus().await;
        let mut client = attach(&bus, 1);
        let illegal = ExceptionCode::IllegalDataAddress;
        assert_eq!(
            exception(&mut client, Table::Input, 0x0050, 2).await,
            illegal
        );
        assert_eq!(exception(&mut client, Table::Input, 0, 81).await, illegal);
        assert_eq!(exception(&mut client, Table::Holding, 0, 2).await, illegal);
        bus.max_registers(1, 10);
        assert_eq!(exception(&mut client, Table::Input, 0, 12).await, illegal);
        let busy = ExceptionCode::ServerDeviceBusy;
        bus.exception(1, Table::Input, 0x0010, 2, busy);
        assert_eq!(exception(&mut client, Table::Input, 0x000E, 4).await, busy);
        bus.clear_exceptions(1);
        assert_eq!(words(&mut client, Table::Input, 0x000E, 4).await.len(), 4);
        assert_eq!(bus.served().len(), 1, "exceptions are not served reads");
        assert_eq!(bus.requests_for(1), 6);
        bus.close().await;
    }

    #[tokio::test]
    async fn growing_counter_steps_after_each_read() {
        let bus = sdm630_bus().await;
        let mut client = attach(&bus, 1);
        let mut seen = Vec::new();
        for _ in 0..3 {
            let energy = words(&mut client, Table::Input, 0x0048, 2).await;
            seen.push(f32_in(&energy, 0));
        }
        assert_eq!(seen, [1000.0, 1000.25, 1000.5]);
        assert_eq!(bus.f32_at(1, Table::Input, 0x0048), Some(1000.75));
        bus.set_f32(1, Table::Input, 0x004A, 20.0);
        let total = words(&mut client, Table::Input, 0x0156, 2).await;
        assert_eq!(f32_in(&total, 0), 1020.75);
        bus.set_words(1, Table::Input, 0x0048, &[0x447A, 0x0000]); // 1000.0
        assert_eq!(
            bus.words(1, Table::Input, 0x0048, 2),
            Some(vec![0x447A, 0x0000])
        );
        assert_eq!(bus.words(9, Table::Input, 0x0048, 2), None, "no such unit");
        bus.close().await;
    }

    #[tokio::test]
    async fn noise_before_an_answer_is_on_the_wire_and_skipped_by_the_client() {
        let bus = sdm630_bus().await;
        let noise = vec![0x00, 0xFF, 0x00];
        let mut port = open(&bus).unwrap();
        bus.garbage_next(1, 1, noise.clone());
        let answer = exchange(&mut port, &READ_VOLTAGE, noise.len() + 9).await;
        assert_eq!(&answer[..3], &noise[..]);
        assert_eq!(&answer[3..10], &VOLTAGE_ANSWER);

        // What the daemon will see: tokio-modbus drops the noise and decodes the frame.
        let mut client = rtu::attach_slave(port, Slave(1));
        bus.garbage_next(1, 2, noise);
        for _ in 0..2 {
            let voltage = words(&mut client, Table::Input, 0, 2).await;
            assert_eq!(f32_in(&voltage, 0), 230.1);
        }
        assert_eq!(bus.served().len(), 3);
        bus.close().await;
    }

    #[tokio::test]
    async fn a_bad_crc_fails_the_read_and_the_next_one_is_fine() {
        let bus = sdm630_bus().await;
        let mut port = open(&bus).unwrap();
        let good = exchange(&mut port, &READ_VOLTAGE, 9).await;
        assert_eq!(&good[..7], &VOLTAGE_ANSWER);
        bus.bad_crc_next(1, 1);
        let bad = exchange(&mut port, &READ_VOLTAGE, 9).await;
        assert_eq!(&bad[..8], &good[..8], "only the CRC's last byte differs");
        assert_ne!(bad[8], good[8]);

        let mut client = rtu::attach_slave(port, Slave(1));
        bus.bad_crc_next(1, 1);
        let result =
            tokio::time::timeout(CLIENT_TIMEOUT, read_within(&mut client, Table::Input, 0, 2))
                .await;
        assert!(
            matches!(result, Err(_) | Ok(Err(_))),
            "a corrupted answer must not decode: {result:?}"
        );
        let voltage = words(&mut client, Table::Input, 0, 2).await;
        assert_eq!(f32_in(&voltage, 0), 230.1);
        // Corrupted answers were on the wire, so they count as served.
        assert_eq!(bus.served().len(), 4);
        bus.close().await;
    }

    #[tokio::test]
    async fn a_late_answer_lands_after_the_timeout_and_a_flush_discards_it() {
        let bus = sdm630_bus().await;
        // Without a flush, the late answer is taken for the next request's (the hazard the
        // daemon guards against): the same unit and function code, so nothing tells them apart.
        let mut client = attach(&bus, 1);
        bus.delay_next(1, 1, LATE);
        let sent = Instant::now();
        no_answer(&mut client, Table::Input, 0x0000, 2).await;
        let stale = words(&mut client, Table::Input, 0x0048, 2).await;
        assert_eq!(f32_in(&stale, 0), 230.1, "the voltage, not the energy");
        assert!(bus.wait_served(2, WAIT).await);
        assert!(
            bus.served()[0].at >= sent + LATE,
            "answered late, not early"
        );
        drop(client);

        // With a flush before each request, the next read gets its own answer.
        let mut client = rtu::attach_slave(FlushBeforeWrite(open(&bus).unwrap()), Slave(1));
        bus.delay_next(1, 1, LATE);
        no_answer(&mut client, Table::Input, 0x0000, 2).await;
        assert!(bus.wait_served(3, WAIT).await, "the late answer went out");
        let voltage = words(&mut client, Table::Input, 0x0004, 2).await;
        assert_eq!(f32_in(&voltage, 0), 229.8);
        assert_eq!(bus.served().len(), 4);
        bus.close().await;
    }

    #[tokio::test]
    async fn wire_time_follows_the_cycle_model() {
        let timing = LineTiming {
            baud: 9600,
            bits_per_char: 11,
            latency: Duration::ZERO,
        };
        let bus = SimRtuBus::start(vec![SimMeter::sdm630(1)], Some(timing))
            .await
            .unwrap();
        assert_eq!(bus.timing(), Some(timing));
        let mut client = attach(&bus, 1);
        let started = Instant::now();
        assert_eq!(words(&mut client, Table::Input, 0, 80).await.len(), 80);
        let elapsed = started.elapsed();
        // 8 + 165 bytes at 1.146 ms, and the t3.5 that ends the request.
        assert!(
            elapsed >= timing.frame_time(8 + 165) + timing.t35(),
            "{elapsed:?}"
        );
        assert!(elapsed >= Duration::from_millis(202), "{elapsed:?}");
        bus.close().await;
    }

    #[tokio::test]
    async fn one_opener_at_a_time_and_the_line_outlives_its_closes() {
        let bus = sdm630_bus().await;
        let first = open(&bus).unwrap();
        let second = open(&bus);
        assert!(
            second.is_err(),
            "a second open must fail while the first is open"
        );
        let mut client = rtu::attach_slave(first, Slave(1));
        words(&mut client, Table::Input, 0, 2).await;
        drop(client);
        // Nobody has the port open now; the line waits for the next opener.
        for round in 0..3 {
            let mut client = attach(&bus, 1);
            let voltage = words(&mut client, Table::Input, 0, 2).await;
            assert_eq!(f32_in(&voltage, 0), 230.1, "round {round}");
        }
        assert_eq!(bus.requests(), 4);
        bus.close().await;
    }

    #[tokio::test]
    async fn close_unplugs_the_port_and_a_new_line_can_be_opened() {
        let bus = sdm630_bus().await;
        let mut client = attach(&bus, 1);
        words(&mut client, Table::Input, 0, 2).await;

        // A read waiting for a late answer when the adapter goes away fails at once.
        bus.delay_next(1, 1, Duration::from_secs(60));
        let pending = tokio::spawn(async move {
            let result = read(&mut client, Table::Input, 0, 2).await;
            (client, result)
        });
        assert!(bus.wait_requests(2, WAIT).await);
        let handle = bus.clone();
        let closing = Instant::now();
        tokio::time::timeout(WAIT, bus.close()).await.unwrap();
        let (mut client, result) = pending.await.unwrap();
        assert!(
            matches!(result, Err(tokio_modbus::Error::Transport(_))),
            "{result:?}"
        );
        // So does every later request: the port reports EIO, like an unplugged USB adapter.
        match read(&mut client, Table::Input, 0, 2).await {
            Err(tokio_modbus::Error::Transport(error)) => {
                assert_eq!(error.raw_os_error(), Some(libc::EIO), "{error}");
            }
            other => panic!("expected an I/O error, got {other:?}"),
        }
        assert!(closing.elapsed() < Duration::from_secs(1));
        assert_eq!(handle.served().len(), 1, "the late answer never went out");
        drop(client);

        let bus = sdm630_bus().await;
        let mut client = attach(&bus, 1);
        let voltage = words(&mut client, Table::Input, 0, 2).await;
        assert_eq!(f32_in(&voltage, 0), 230.1);
        bus.close().await;
    }

    #[tokio::test]
    async fn junk_from_the_master_does_not_stop_the_line() {
        let bus = sdm630_bus().await;
        let mut port = open(&bus).unwrap();
        // A fixed pseudo-random sequence (an LCG), so a failure can be replayed.
        let mut seed = 0x2545_F491_u32;
        let junk: Vec<u8> = (0..600)
            .map(|_| {
                seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                (seed >> 16) as u8
            })
            .collect();
        // 40 times "01 03": every offset looks like the header of an 8-byte frame whose CRC
        // fails, so tokio-modbus's server gives up after 20 tries and a new one takes over.
        port.write_all(&[0x01, 0x03].repeat(40)).await.unwrap();
        port.write_all(&junk).await.unwrap();
        let mut client = rtu::attach_slave(port, Slave(1));
        // Junk can leave the decoder waiting for the rest of a long frame, which then swallows
        // a request or two, as on a real line without frame gaps.
        let mut answered = None;
        for _ in 0..10 {
            if let Ok(Ok(Ok(words))) =
                tokio::time::timeout(CLIENT_TIMEOUT, read_within(&mut client, Table::Input, 0, 2))
                    .await
            {
                answered = Some(words);
                break;
            }
        }
        assert_eq!(
            f32_in(&answered.expect("the line never answered"), 0),
            230.1
        );
        let voltage = words(&mut client, Table::Input, 0, 2).await;
        assert_eq!(f32_in(&voltage, 0), 230.1);
        assert!(bus.line.restarts.load(Ordering::Relaxed) >= 1);
        bus.close().await;
    }

    #[tokio::test]
    async fn child_processes_do_not_inherit_the_line() {
        let bus = sdm630_bus().await;
        let path = bus.path();
        let index = path
            .strip_prefix("/dev/pts")
            .unwrap()
            .to_string_lossy()
            .into_owned();
        // The shell lists the descriptors it inherited; a pty master names its pty there.
        let output = tokio::task::spawn_blocking(|| {
            std::process::Command::new("sh")
                .arg("-c")
                .arg(r#"for f in /proc/$$/fdinfo/*; do cat "$f"; readlink "/proc/$$/fd/${f##*/}"; done"#)
                .output()
        })
        .await
        .unwrap()
        .unwrap();
        let listing = String::from_utf8_lossy(&output.stdout);
        assert!(listing.contains("flags:"), "{listing}");
        assert!(
            !listing.lines().any(
                |line| line == format!("tty-index:\t{index}") || line == path.to_string_lossy()
            ),
            "{listing}"
        );
        // The line still works, so the descriptors were there to inherit.
        let mut client = attach(&bus, 1);
        words(&mut client, Table::Input, 0, 2).await;
        bus.close().await;
    }

    #[tokio::test]
    async fn start_refuses_duplicate_and_broadcast_unit_ids() {
        for meters in [
            vec![SimMeter::new(4), SimMeter::sdm630(4)],
            vec![SimMeter::new(0)],
        ] {
            let error = SimRtuBus::start(meters, None).await.unwrap_err();
            assert_eq!(error.kind(), io::ErrorKind::InvalidInput);
        }
    }
}
