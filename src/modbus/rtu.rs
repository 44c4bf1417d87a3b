//! The Modbus RTU edge: one serial port (an RS-485 line) opened exclusively by its bus task.
//!
//! RTU answers carry no transaction id, so a late answer could be taken for the next one:
//! the input buffer is flushed right before every request is written, every answer's register
//! count is checked, and every transaction keeps at least t3.5 of silence (plus the configured
//! `delay`) after the previous one. tokio-modbus's decoder skips garbage and bad-CRC frames
//! silently; the thin [`Wire`] wrapper around the port records the bytes of each transaction so
//! they can be counted. A port that returns an I/O error (USB adapter unplugged) is closed at
//! once and reported as [`LinkError::PortGone`]; the bus reopens it when it returns.

use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};

use futures_util::FutureExt as _;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_modbus::client::{Context, Reader};
use tokio_modbus::prelude::SlaveContext;
use tokio_modbus::{Slave, client::rtu};
use tokio_serial::{SerialPort, SerialStream};

use super::Table;
use super::poll::{LineErrors, Link, LinkError};
use crate::bus::Line;
use crate::config::{ModbusRtuBus, Parity};

const CRC: crc::Crc<u16> = crc::Crc::<u16>::new(&crc::CRC_16_MODBUS);

/// How a serial line is set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SerialSettings {
    pub path: PathBuf,
    pub baud: u32,
    pub parity: Parity,
    pub data_bits: u8,
    pub stop_bits: u8,
}

impl SerialSettings {
    pub fn from_bus(bus: &ModbusRtuBus) -> SerialSettings {
        SerialSettings {
            path: bus.port.clone(),
            baud: bus.baud,
            parity: bus.parity,
            data_bits: bus.data_bits,
            stop_bits: bus.stop_bits,
        }
    }

    /// Bits on the wire per character: start + data + parity + stop.
    pub fn bits_per_char(&self) -> u32 {
        1 + u32::from(self.data_bits)
            + u32::from(self.parity != Parity::None)
            + u32::from(self.stop_bits)
    }

    /// 3.5 character times of silence between frames; fixed at 1.75 ms above 19200 baud
    /// (Modbus over Serial Line V1.02 §2.5.1.1).
    pub fn t35(&self) -> Duration {
        if self.baud > 19_200 {
            return Duration::from_micros(1750);
        }
        let micros = 3_500_000u64 * u64::from(self.bits_per_char()) / u64::from(self.baud.max(1));
        Duration::from_micros(micros)
    }

    fn builder(&self) -> tokio_serial::SerialPortBuilder {
        let parity = match self.parity {
            Parity::None => tokio_serial::Parity::None,
            Parity::Even => tokio_serial::Parity::Even,
            Parity::Odd => tokio_serial::Parity::Odd,
        };
        let data_bits = if self.data_bits == 7 {
            tokio_serial::DataBits::Seven
        } else {
            tokio_serial::DataBits::Eight
        };
        let stop_bits = if self.stop_bits == 2 {
            tokio_serial::StopBits::Two
        } else {
            tokio_serial::StopBits::One
        };
        tokio_serial::new(self.path.to_string_lossy(), self.baud)
            .parity(parity)
            .data_bits(data_bits)
            .stop_bits(stop_bits)
            .flow_control(tokio_serial::FlowControl::None)
    }
}

/// Opens a serial port exclusively, with errors that say what to do.
pub fn open_port(s: &SerialSettings) -> Result<SerialStream, LinkError> {
    match SerialStream::open(&s.builder()) {
        Ok(p) => Ok(p),
        Err(e) => Err(classify_open_error(&s.path, &e)),
    }
}

fn classify_open_error(path: &Path, e: &tokio_serial::Error) -> LinkError {
    let msg = e.to_string();
    let missing = !path.exists()
        || matches!(
            e.kind(),
            tokio_serial::ErrorKind::Io(io::ErrorKind::NotFound)
        )
        || msg.contains("No such file")
        || msg.contains("No such device");
    if missing {
        return LinkError::PortGone(format!("{}: {msg}", path.display()));
    }
    if msg.contains("exclusive lock") || msg.contains("busy") {
        return LinkError::Connect(format!(
            "{} is held by another process (is enectiva-collector running? stop it first: systemctl stop enectiva-collector)",
            path.display()
        ));
    }
    LinkError::Connect(format!("{}: {msg}", path.display()))
}

/// What the wire saw during the current transaction.
#[derive(Debug, Default)]
struct WireState {
    /// Flush the input buffer before the next write (the start of a request).
    flush_before_write: bool,
    /// Bytes received since the last request was written (capped).
    rx: Vec<u8>,
}

/// A serial port that flushes its input right before each request and records what it
/// receives, for the garbage/CRC counters.
struct Wire {
    port: SerialStream,
    state: Arc<Mutex<WireState>>,
}

impl std::fmt::Debug for Wire {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Wire")
    }
}

const RX_CAP: usize = 2048;

impl AsyncRead for Wire {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.port).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = &r {
            let new = &buf.filled()[before..];
            if new.is_empty() {
                // EOF on a serial line means the device is gone; never spin on zero-length reads.
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::BrokenPipe,
                    "serial port closed",
                )));
            }
            let mut st = this.state.lock().unwrap_or_else(|e| e.into_inner());
            let room = RX_CAP.saturating_sub(st.rx.len());
            st.rx.extend_from_slice(&new[..new.len().min(room)]);
        }
        r
    }
}

impl AsyncWrite for Wire {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        {
            let mut st = this.state.lock().unwrap_or_else(|e| e.into_inner());
            if st.flush_before_write {
                // Whatever arrived since the last transaction (a late answer, noise) must not
                // be read as the answer to this request.
                if let Err(e) = this.port.clear(tokio_serial::ClearBuffer::Input) {
                    return Poll::Ready(Err(io::Error::other(e.to_string())));
                }
                st.flush_before_write = false;
                st.rx.clear();
            }
        }
        Pin::new(&mut this.port).poll_write(cx, data)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().port).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().port).poll_shutdown(cx)
    }
}

/// Counts garbage and bad-CRC frames among the bytes of one transaction. `answer_len` is the
/// length of the frame tokio-modbus accepted (None when it accepted none).
///
/// Pure, and public only so the `modbus` fuzz target can feed it arbitrary bytes: it scans
/// bytes a device sent and must never panic or overflow on them.
pub fn count_line_errors(
    rx: &[u8],
    unit: u8,
    function: u8,
    answer_len: Option<usize>,
    errors: &mut LineErrors,
) {
    match answer_len {
        Some(len) => errors.garbage_bytes += rx.len().saturating_sub(len) as u64,
        None if rx.is_empty() => {}
        None => {
            // A frame from the addressed unit with the expected function whose CRC fails.
            let bad_crc = (0..rx.len()).find(|&p| {
                let Some(&[addr, fc, n]) =
                    rx.get(p..p + 3).and_then(|s| <&[u8; 3]>::try_from(s).ok())
                else {
                    return false;
                };
                let len = if fc == function {
                    3 + usize::from(n) + 2
                } else if fc == function | 0x80 {
                    5
                } else {
                    return false;
                };
                addr == unit
                    && rx.get(p..p + len).is_some_and(|frame| {
                        let (body, crc) = frame.split_at(len - 2);
                        CRC.checksum(body).to_le_bytes() != [crc[0], crc[1]]
                    })
            });
            match bad_crc {
                Some(p) => {
                    errors.crc_errors += 1;
                    errors.garbage_bytes += p as u64;
                }
                None => errors.garbage_bytes += rx.len() as u64,
            }
        }
    }
}

/// A Modbus RTU master on one serial line.
pub struct RtuLink {
    settings: SerialSettings,
    ctx: Option<Context>,
    state: Arc<Mutex<WireState>>,
    last_done: Option<Instant>,
    errors: LineErrors,
}

impl std::fmt::Debug for RtuLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RtuLink")
            .field("port", &self.settings.path)
            .field("open", &self.ctx.is_some())
            .finish()
    }
}

impl RtuLink {
    pub fn new(settings: SerialSettings) -> RtuLink {
        RtuLink {
            settings,
            ctx: None,
            state: Arc::new(Mutex::new(WireState::default())),
            last_done: None,
            errors: LineErrors::default(),
        }
    }

    pub fn settings(&self) -> &SerialSettings {
        &self.settings
    }

    fn open(&mut self, unit: u8) -> Result<(), LinkError> {
        let port = open_port(&self.settings)?;
        self.state = Arc::new(Mutex::new(WireState::default()));
        let wire = Wire {
            port,
            state: self.state.clone(),
        };
        self.ctx = Some(rtu::attach_slave(wire, Slave(unit)));
        Ok(())
    }

    /// Closes the port (it is reopened on the next request or reconnect).
    pub fn close(&mut self) {
        self.ctx = None;
    }

    fn take_rx(&self) -> Vec<u8> {
        std::mem::take(&mut self.state.lock().unwrap_or_else(|e| e.into_inner()).rx)
    }
}

impl Link for RtuLink {
    async fn read(
        &mut self,
        unit: u8,
        table: Table,
        start: u16,
        count: u16,
        gap: Duration,
        timeout: Duration,
    ) -> Result<Vec<u16>, LinkError> {
        if self.ctx.is_none() {
            self.open(unit)?;
        }
        // t3.5 of silence ends a frame on the wire; the configured `delay` (the meter's
        // turnaround) comes on top of it (SPEC §6.2).
        let quiet = self.settings.t35().saturating_add(gap);
        if let Some(last) = self.last_done {
            tokio::time::sleep_until((last + quiet).into()).await;
        }
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .flush_before_write = true;
        let Some(ctx) = self.ctx.as_mut() else {
            return Err(LinkError::Connect(self.settings.path.display().to_string()));
        };
        ctx.set_slave(Slave(unit));
        // tokio-modbus asserts on malformed answers in debug builds; input from a device
        // must never take the bus task down.
        let call = std::panic::AssertUnwindSafe(async {
            match table {
                Table::Holding => ctx.read_holding_registers(start, count).await,
                Table::Input => ctx.read_input_registers(start, count).await,
            }
        })
        .catch_unwind();
        let answer = tokio::time::timeout(timeout, call).await;
        self.last_done = Some(Instant::now());
        let rx = self.take_rx();
        let function = table.function_code();
        let frame_len = |n: usize| 5 + 2 * n;
        match answer {
            Err(_) => {
                count_line_errors(&rx, unit, function, None, &mut self.errors);
                Err(LinkError::Timeout)
            }
            Ok(Err(_panic)) => {
                count_line_errors(&rx, unit, function, None, &mut self.errors);
                self.ctx = None;
                Err(LinkError::Protocol("malformed answer".into()))
            }
            Ok(Ok(Err(tokio_modbus::Error::Transport(e)))) => {
                if e.kind() == io::ErrorKind::InvalidData {
                    // The decoder gave up on noise or bad CRCs: the line works.
                    count_line_errors(&rx, unit, function, None, &mut self.errors);
                    return Err(LinkError::Protocol(e.to_string()));
                }
                // An I/O error on a serial port: the device is gone. Close it at once.
                self.ctx = None;
                Err(LinkError::PortGone(format!(
                    "{}: {e}",
                    self.settings.path.display()
                )))
            }
            Ok(Ok(Err(tokio_modbus::Error::Protocol(e)))) => {
                count_line_errors(&rx, unit, function, None, &mut self.errors);
                Err(LinkError::Protocol(e.to_string()))
            }
            Ok(Ok(Ok(Err(code)))) => {
                count_line_errors(&rx, unit, function, Some(5), &mut self.errors);
                Err(LinkError::Exception(code))
            }
            Ok(Ok(Ok(Ok(words)))) => {
                count_line_errors(
                    &rx,
                    unit,
                    function,
                    Some(frame_len(words.len())),
                    &mut self.errors,
                );
                if words.len() == usize::from(count) {
                    Ok(words)
                } else {
                    Err(LinkError::WrongCount {
                        expected: count,
                        got: words.len(),
                    })
                }
            }
        }
    }
}

impl Line for RtuLink {
    async fn reconnect(&mut self) -> Result<(), LinkError> {
        self.ctx = None;
        self.open(0)
    }

    fn line_errors(&self) -> LineErrors {
        self.errors
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn frame(body: &[u8]) -> Vec<u8> {
        let mut f = body.to_vec();
        f.extend_from_slice(&CRC.checksum(body).to_le_bytes());
        f
    }

    #[test]
    fn t35_and_bits() {
        let s = SerialSettings {
            path: "/dev/null".into(),
            baud: 9600,
            parity: Parity::Even,
            data_bits: 8,
            stop_bits: 1,
        };
        assert_eq!(s.bits_per_char(), 11);
        assert_eq!(s.t35(), Duration::from_micros(4010));
        let s = SerialSettings {
            parity: Parity::None,
            ..s
        };
        assert_eq!(s.t35(), Duration::from_micros(3645));
        let fast = SerialSettings { baud: 38_400, ..s };
        assert_eq!(fast.t35(), Duration::from_micros(1750));
    }

    #[test]
    fn counts_garbage_and_bad_crc() {
        let good = frame(&[1, 4, 4, 0x43, 0x66, 0x19, 0x9A]);
        let mut e = LineErrors::default();
        let mut rx = vec![0xFF, 0x00, 0x55];
        rx.extend_from_slice(&good);
        count_line_errors(&rx, 1, 4, Some(good.len()), &mut e);
        assert_eq!(
            e,
            LineErrors {
                crc_errors: 0,
                garbage_bytes: 3
            }
        );
        let mut bad = good.clone();
        let last = bad.len() - 1;
        bad[last] ^= 0xFF;
        let mut rx = vec![0x11];
        rx.extend_from_slice(&bad);
        count_line_errors(&rx, 1, 4, None, &mut e);
        assert_eq!(
            e,
            LineErrors {
                crc_errors: 1,
                garbage_bytes: 4
            }
        );
        count_line_errors(&[0xAA, 0xBB], 1, 4, None, &mut e);
        assert_eq!(
            e,
            LineErrors {
                crc_errors: 1,
                garbage_bytes: 6
            }
        );
        // Nothing received (a silent unit): nothing counted.
        count_line_errors(&[], 1, 4, None, &mut e);
        assert_eq!(e.garbage_bytes, 6);
        // Bad CRC on an exception frame.
        let mut ex = frame(&[1, 0x84, 2]);
        ex[4] ^= 1;
        count_line_errors(&ex, 1, 4, None, &mut e);
        assert_eq!(e.crc_errors, 2);
    }

    proptest! {
        /// Any bytes a line delivers, with or without an accepted answer: nothing panics or
        /// overflows, a transaction counts at most one bad frame and at most its own bytes.
        #[test]
        fn line_error_counting_never_panics(
            rx in prop::collection::vec(any::<u8>(), 0..300),
            unit in 0u8..4,
            function in prop::sample::select(vec![3u8, 4]),
            answer_len in prop::option::of(0usize..400),
            crc_frame_at in prop::option::of(any::<prop::sample::Index>()),
        ) {
            // Sometimes splice in a frame of the addressed unit with a broken CRC.
            let mut rx = rx;
            if let Some(at) = crc_frame_at {
                let mut f = frame(&[unit, function, 2, 0x12, 0x34]);
                f[5] ^= 0x01;
                let p = at.index(rx.len() + 1);
                rx.splice(p..p, f);
            }
            let mut e = LineErrors::default();
            count_line_errors(&rx, unit, function, answer_len, &mut e);
            prop_assert!(e.crc_errors <= 1);
            prop_assert!(e.garbage_bytes <= rx.len() as u64);
            if answer_len.is_none() && crc_frame_at.is_some() {
                prop_assert_eq!(e.crc_errors, 1);
            }
        }
    }

    #[test]
    fn missing_port_is_gone_not_a_meter_failure() {
        let s = SerialSettings {
            path: "/nonexistent/ttyUSB9".into(),
            baud: 9600,
            parity: Parity::None,
            data_bits: 8,
            stop_bits: 1,
        };
        assert!(matches!(open_port(&s), Err(LinkError::PortGone(_))));
    }
}
