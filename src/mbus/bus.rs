//! The wired M-Bus edge: one serial line (8E1 through a level converter) owned by its bus task,
//! the master procedures on it, and the channel values of each meter.
//!
//! Per meter and cycle (SPEC §6.4): SND_NKE on first contact and after any failure, a secondary
//! select (CI 0x52 to address 253) when the meter has a secondary address, REQ_UD2 with FCB
//! handling, and a multi-telegram readout while a telegram ends with DIF 0x1F (at most
//! [`MAX_TELEGRAMS`]). Retries keep the FCB. The first byte of an answer gets the `auto` timeout
//! (330 bit times + 50 ms, at least 0.5 s), then an inter-byte timeout until the length in the
//! frame is complete, and the whole answer an absolute deadline ([`MbusLink::answer_limit`]), so
//! a line that never stops sending bytes (a shorted bus, a slave at another baud rate) cannot
//! hold the bus. Echoed request bytes (converters that echo) are skipped: every frame with
//! the master direction bit is dropped. Frames are parsed and records decoded by the pure
//! `frame` and `record` modules; this module only moves bytes and keeps FCB state.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_serial::{SerialPort, SerialStream};

use super::frame::{self, ADDRESS_SELECTED, Frame, Parsed, SecondaryMask};
use super::record::{self, Header, Record, Response};
use super::select::select;
use crate::bus::{BusMeter, LineErrors, LinkError, Sample};
use crate::config::{MbusAddress, MbusBus, MbusMeter, MbusTimeout, Parity, SecondaryAddress};
use crate::modbus::rtu::{SerialSettings, open_port};
use crate::units::{Conversion, Temperature, Transform};

/// The most telegrams of one readout (some meters cycle their storage forever).
pub const MAX_TELEGRAMS: usize = 16;

/// The longest frame on the wire: a long frame with L = 255.
const MAX_FRAME: usize = 261;

/// The longest request we send: a secondary select (`68 0B 0B 68 C A CI`, 8 bytes, CS, stop).
const MAX_REQUEST: usize = 17;

/// What came back after a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Frame(Frame),
    /// Nothing within the timeout.
    Nothing,
    /// Bytes that are not a frame (overlapping answers of several slaves, noise).
    Garbled(usize),
}

/// One M-Bus line.
pub struct MbusLink {
    settings: SerialSettings,
    timeout: MbusTimeout,
    port: Option<SerialStream>,
    last_done: Option<Instant>,
    errors: LineErrors,
}

impl std::fmt::Debug for MbusLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MbusLink")
            .field("port", &self.settings.path)
            .field("open", &self.port.is_some())
            .finish()
    }
}

impl MbusLink {
    pub fn new(bus: &MbusBus) -> MbusLink {
        MbusLink::with(bus.port.clone(), bus.baud, bus.timeout)
    }

    pub fn with(port: std::path::PathBuf, baud: u32, timeout: MbusTimeout) -> MbusLink {
        MbusLink {
            settings: SerialSettings {
                path: port,
                baud,
                parity: Parity::Even,
                data_bits: 8,
                stop_bits: 1,
            },
            timeout,
            port: None,
            last_done: None,
            errors: LineErrors::default(),
        }
    }

    fn char_time(&self) -> Duration {
        Duration::from_micros(11_000_000 / u64::from(self.settings.baud.max(1)))
    }

    /// How long to wait for the first byte of an answer (SPEC §6.4 `auto`: at least 330 bit
    /// times + 50 ms and 0.5 s).
    pub fn first_byte_timeout(&self) -> Duration {
        match self.timeout {
            MbusTimeout::Fixed(d) => d,
            MbusTimeout::Auto => {
                let window =
                    Duration::from_micros(330_000_000 / u64::from(self.settings.baud.max(1)))
                        + Duration::from_millis(50);
                window.max(Duration::from_millis(500))
            }
        }
    }

    /// The longest pause between two bytes of one frame.
    pub fn inter_byte_timeout(&self) -> Duration {
        (self.char_time() * 20).max(Duration::from_millis(100))
    }

    /// The absolute deadline of one answer, from the end of a request of `request_len` bytes to
    /// the answer's last byte: the first-byte timeout, one inter-byte timeout, and twice the wire
    /// time of the echoed request and the longest frame (261 characters), because converters
    /// deliver bytes in bursts. Bytes that have not formed a frame by then are garbage.
    pub fn answer_limit(&self, request_len: usize) -> Duration {
        let chars = u32::try_from(2 * (MAX_FRAME + request_len)).unwrap_or(u32::MAX);
        self.first_byte_timeout() + self.inter_byte_timeout() + self.char_time() * chars
    }

    /// The longest one request and its answer may take (what [`MbusLink::transact`] enforces):
    /// quiet time and the answer limit of the longest request.
    pub fn worst_transaction(&self) -> Duration {
        self.quiet() + self.answer_limit(MAX_REQUEST)
    }

    /// Quiet time kept between an answer and the next request (Gossen: ≥ 10 ms).
    fn quiet(&self) -> Duration {
        (self.char_time() * 4).max(Duration::from_millis(10))
    }

    fn port(&mut self) -> Result<&mut SerialStream, LinkError> {
        if self.port.is_none() {
            self.port = Some(open_port(&self.settings)?);
        }
        self.port
            .as_mut()
            .ok_or_else(|| LinkError::Connect(self.settings.path.display().to_string()))
    }

    /// Sends a telegram and, if `answer` is true, waits for the answer. Echoed master frames
    /// are skipped; bytes that are not a frame are counted and skipped.
    pub async fn transact(&mut self, request: &[u8], answer: bool) -> Result<Answer, LinkError> {
        if let Some(last) = self.last_done {
            tokio::time::sleep_until((last + self.quiet()).into()).await;
        }
        let timeouts = Timeouts {
            first: self.first_byte_timeout(),
            inter: self.inter_byte_timeout(),
            limit: self.answer_limit(request.len()),
        };
        let path = self.settings.path.display().to_string();
        let port = self.port()?;
        let io = async {
            // Whatever is left on the line (a late answer, noise) is not this answer.
            port.clear(tokio_serial::ClearBuffer::Input)
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            port.write_all(request).await?;
            port.flush().await?;
            if !answer {
                return Ok((Answer::Nothing, 0));
            }
            receive(port, timeouts).await
        };
        let result = io.await;
        self.last_done = Some(Instant::now());
        match result {
            Ok((a, garbage)) => {
                self.errors.garbage_bytes += garbage as u64;
                if matches!(a, Answer::Garbled(_)) {
                    self.errors.crc_errors += 1;
                }
                Ok(a)
            }
            Err(e) => {
                // An I/O error on a serial port: the converter is gone. Close it at once.
                self.port = None;
                Err(LinkError::PortGone(format!("{path}: {e}")))
            }
        }
    }

    /// Closes the port (reopened on the next transaction).
    pub fn close(&mut self) {
        self.port = None;
    }
}

/// How long [`receive`] waits: for the first byte, between bytes, and for the whole answer.
#[derive(Debug, Clone, Copy)]
struct Timeouts {
    first: Duration,
    inter: Duration,
    limit: Duration,
}

/// What is left when the waiting ends without a frame: garbage if any byte came, else nothing.
fn give_up(leftover: usize, garbage: usize) -> (Answer, usize) {
    let skipped = garbage + leftover;
    if skipped > 0 {
        (Answer::Garbled(skipped), skipped)
    } else {
        (Answer::Nothing, 0)
    }
}

/// Reads until one frame from a slave is complete, or a timeout runs out: the first-byte
/// timeout before the answer begins, the inter-byte timeout within it, and `limit` for the whole
/// answer whatever keeps arriving. Returns the answer and the number of garbage bytes skipped.
async fn receive(port: &mut SerialStream, t: Timeouts) -> std::io::Result<(Answer, usize)> {
    let mut buf: Vec<u8> = Vec::new();
    let mut garbage = 0usize;
    let mut got_any = false;
    let started = Instant::now();
    let deadline = started + t.limit;
    let mut chunk = [0u8; 512];
    loop {
        // Take every complete frame out of the buffer.
        loop {
            match frame::parse(&buf) {
                Parsed::Frame(f, used) => {
                    buf.drain(..used);
                    if f.is_from_master() {
                        // Our own request, echoed by the converter: the answer has not begun,
                        // so the first-byte timeout still applies.
                        if buf.is_empty() {
                            got_any = false;
                        }
                        continue;
                    }
                    return Ok((Answer::Frame(f), garbage));
                }
                Parsed::NeedMore(_) => break,
                Parsed::Invalid { skip, .. } => {
                    let n = skip.min(buf.len()).max(1).min(buf.len());
                    buf.drain(..n);
                    garbage += n;
                }
            }
        }
        let wait = if got_any {
            t.inter
        } else {
            match t.first.checked_sub(started.elapsed()) {
                Some(w) => w,
                None => return Ok(give_up(buf.len(), garbage)),
            }
        };
        // A line that keeps sending bytes never lets the other timeouts run out.
        let wait = match deadline.checked_duration_since(Instant::now()) {
            Some(left) if !left.is_zero() => wait.min(left),
            _ => return Ok(give_up(buf.len(), garbage)),
        };
        match tokio::time::timeout(wait, port.read(&mut chunk)).await {
            Err(_) => return Ok(give_up(buf.len(), garbage)),
            Ok(Ok(0)) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::BrokenPipe,
                    "serial port closed",
                ));
            }
            Ok(Ok(n)) => {
                got_any = true;
                buf.extend_from_slice(&chunk[..n]);
                if buf.len() > 4096 {
                    // A stream of noise: never grow without bound.
                    garbage += buf.len();
                    buf.clear();
                }
            }
            Ok(Err(e)) => return Err(e),
        }
    }
}

impl crate::bus::Line for MbusLink {
    async fn reconnect(&mut self) -> Result<(), LinkError> {
        self.port = None;
        self.port().map(|_| ())
    }

    fn line_errors(&self) -> LineErrors {
        self.errors
    }
}

/// The select mask of a configured secondary address.
pub fn mask_of(s: &SecondaryAddress) -> SecondaryMask {
    let mut m = SecondaryMask::for_id(&s.id).unwrap_or(SecondaryMask::ANY);
    if let Some(code) = s
        .manufacturer
        .as_deref()
        .and_then(SecondaryMask::manufacturer_code)
    {
        m.manufacturer = code;
    }
    if let Some(v) = s.version {
        m.version = v;
    }
    if let Some(med) = s.medium {
        m.medium = med;
    }
    m
}

/// Why a telegram's header is not that of the meter with secondary address `s`, if it is not.
fn secondary_mismatch(s: &SecondaryAddress, h: &Header) -> Option<String> {
    let mut wrong = Vec::new();
    if h.id != s.id {
        wrong.push(format!("id {}", h.id));
    }
    if let Some(m) = s.manufacturer.as_deref().filter(|m| *m != h.manufacturer) {
        wrong.push(format!("manufacturer {} (not {m})", h.manufacturer));
    }
    if let Some(v) = s.version.filter(|v| *v != h.version) {
        wrong.push(format!("version {} (not {v})", h.version));
    }
    if let Some(m) = s.medium.filter(|m| *m != h.medium) {
        wrong.push(format!("medium 0x{:02X} (not 0x{m:02X})", h.medium));
    }
    (!wrong.is_empty()).then(|| {
        format!(
            "the meter selected as id {} answered as {}",
            s.id,
            wrong.join(", ")
        )
    })
}

/// One readout: the header of its first telegram and every record, numbered across telegrams.
#[derive(Debug, Clone, PartialEq)]
pub struct Readout {
    pub header: Header,
    pub address: u8,
    pub records: Vec<Record>,
    pub telegrams: usize,
    /// The last of [`MAX_TELEGRAMS`] telegrams still said "more records follow": the records
    /// after it were not read.
    pub truncated: bool,
}

/// A meter on an M-Bus line and its link state (FCB, whether it needs SND_NKE).
#[derive(Debug)]
pub struct MbusMeterPoller {
    pub meter: MbusMeter,
    retries: u32,
    needs_init: bool,
    fcb: bool,
    /// Channel problems already logged (logged once each).
    warned: HashSet<(usize, String)>,
}

impl MbusMeterPoller {
    pub fn new(meter: MbusMeter, retries: u32) -> MbusMeterPoller {
        MbusMeterPoller {
            meter,
            retries,
            needs_init: true,
            fcb: true,
            warned: HashSet::new(),
        }
    }

    fn address(&self) -> u8 {
        match &self.meter.address {
            MbusAddress::Primary(a) => *a,
            MbusAddress::Secondary(_) => ADDRESS_SELECTED,
        }
    }

    /// Sends a request, retrying (same bytes, so the same FCB) when nothing valid comes back.
    /// `ack` says whether an `E5` is the expected answer; when a data telegram is expected, a
    /// stray `E5` (a late acknowledgement of an earlier request) is not an answer. When no
    /// attempt gets a frame: a timeout, or a protocol error if some attempt got garbage.
    async fn request(
        &self,
        link: &mut MbusLink,
        bytes: &[u8],
        ack: bool,
    ) -> Result<Frame, LinkError> {
        let mut garbled = None;
        for _ in 0..=self.retries {
            match link.transact(bytes, true).await? {
                Answer::Frame(Frame::Ack) if !ack => {}
                Answer::Frame(f) => return Ok(f),
                Answer::Garbled(n) => garbled = Some(n),
                Answer::Nothing => {}
            }
        }
        Err(match garbled {
            Some(n) => LinkError::Protocol(format!(
                "garbled answer: {n} bytes that are not a frame (noise on the line, a wrong baud rate, or several meters answering)"
            )),
            None => LinkError::Timeout,
        })
    }

    /// Reads the meter once: SND_NKE when needed, select, REQ_UD2 until the last telegram.
    pub async fn readout(&mut self, link: &mut MbusLink) -> Result<Readout, LinkError> {
        let result = self.readout_inner(link).await;
        if result.is_err() {
            self.needs_init = true;
        }
        result
    }

    async fn readout_inner(&mut self, link: &mut MbusLink) -> Result<Readout, LinkError> {
        let addr = self.address();
        if self.needs_init {
            // A missing E5 is tolerated: some meters do not acknowledge SND_NKE.
            link.transact(&frame::snd_nke(addr), true).await?;
            self.fcb = true;
            self.needs_init = false;
        }
        if let MbusAddress::Secondary(s) = &self.meter.address {
            let mask = mask_of(s);
            match self
                .request(link, &frame::select(&mask, true), true)
                .await?
            {
                Frame::Ack => {}
                other => {
                    return Err(LinkError::Protocol(format!(
                        "select of {mask} answered with {other:?} instead of E5"
                    )));
                }
            }
        }
        let mut records: Vec<Record> = Vec::new();
        let mut header = None;
        let mut telegrams = 0;
        // Whether the last telegram read said "more records follow".
        let mut more = false;
        for _ in 0..MAX_TELEGRAMS {
            let f = self
                .request(link, &frame::req_ud2(addr, self.fcb), false)
                .await?;
            let response = record::decode(&f).map_err(|e| LinkError::Protocol(e.to_string()))?;
            // The exchange succeeded: the next request is a new one.
            self.fcb = !self.fcb;
            telegrams += 1;
            match response {
                Response::Data(t) => {
                    match &self.meter.address {
                        MbusAddress::Primary(a) if t.address != *a => {
                            return Err(LinkError::Protocol(format!(
                                "answer from address {} to a request for {a}",
                                t.address
                            )));
                        }
                        MbusAddress::Primary(_) => {}
                        // Another meter can end up selected (a select it took for its own, a
                        // converter mixing up lines): its records must not pass for ours.
                        MbusAddress::Secondary(s) => {
                            if let Some(why) = secondary_mismatch(s, &t.header) {
                                return Err(LinkError::Protocol(why));
                            }
                        }
                    }
                    let base = records.len();
                    records.extend(t.records.into_iter().enumerate().map(|(i, mut r)| {
                        r.index = base + i;
                        r
                    }));
                    more = t.more_records_follow;
                    header.get_or_insert((t.header, t.address));
                    if !more {
                        break;
                    }
                }
                Response::ApplicationError { text, code, .. } => {
                    return Err(LinkError::Refused(match code {
                        Some(c) => format!("application error {c}: {text}"),
                        None => format!("application error: {text}"),
                    }));
                }
            }
        }
        let Some((header, address)) = header else {
            return Err(LinkError::Protocol("no data telegram".into()));
        };
        if more {
            tracing::warn!(
                meter = %self.meter.name,
                telegrams,
                records = records.len(),
                "M-Bus readout truncated: the last telegram allowed still says more records follow; the records after it are not read"
            );
        }
        Ok(Readout {
            header,
            address,
            records,
            telegrams,
            truncated: more,
        })
    }

    /// The value of one channel from a readout, or why it has none.
    pub fn channel_value(
        &self,
        channel: usize,
        records: &[Record],
    ) -> Result<(Sample, usize), String> {
        let ch = self
            .meter
            .channels
            .get(channel)
            .ok_or_else(|| format!("no channel {channel}"))?;
        let rec = select(records, &ch.selector, &ch.modifiers).map_err(|e| e.to_string())?;
        let raw = rec
            .as_f64()
            .ok_or_else(|| format!("record {} ({}) is not a number", rec.index, rec.quantity))?;
        let temperature = if rec.quantity == "temperature_difference" {
            Temperature::Difference
        } else {
            Temperature::Absolute
        };
        let to = ch.output.unit.clone().unwrap_or_else(|| rec.unit.clone());
        // Config checks cannot catch this for `record = N`: the record is known only now.
        let conversion = Conversion::between(&rec.unit, &to, temperature).map_err(|e| {
            format!(
                "meter \"{}\", record {} ({} in {}): {e}",
                self.meter.name, rec.index, rec.quantity, rec.unit
            )
        })?;
        let transform = Transform {
            source_scale: 1.0,
            conversion,
            scale: ch.scale,
            offset: ch.offset,
            significant_digits: 15,
            decimals: ch.decimals,
        };
        let mut output = ch.output.clone();
        if output.unit.is_none() && !rec.unit.is_empty() {
            output.unit = Some(rec.unit.clone());
        }
        Ok((
            Sample {
                output,
                value: transform.apply(raw),
                sentinel: None,
            },
            rec.index,
        ))
    }
}

impl BusMeter<MbusLink> for MbusMeterPoller {
    fn name(&self) -> &str {
        &self.meter.name
    }

    fn interval(&self) -> Duration {
        self.meter.interval
    }

    fn has_channels(&self) -> bool {
        !self.meter.channels.is_empty()
    }

    fn max_duration(&self, line: &MbusLink) -> Duration {
        // SND_NKE, a select and every telegram, each with its retries, each a whole frame.
        line.worst_transaction() * ((MAX_TELEGRAMS as u32 + 2) * (self.retries + 1))
    }

    async fn poll(&mut self, line: &mut MbusLink, bus: &str) -> Result<Vec<Sample>, LinkError> {
        let readout = self.readout(line).await?;
        let mut samples = Vec::new();
        for i in 0..self.meter.channels.len() {
            match self.channel_value(i, &readout.records) {
                Ok((s, _)) => samples.push(s),
                Err(why) => {
                    if self.warned.insert((i, why.clone())) {
                        let c = &self.meter.channels[i];
                        tracing::warn!(
                            bus,
                            meter = %self.meter.name,
                            import_id = %c.output.series.import_id,
                            error = %why,
                            "M-Bus channel has no value (run `enectiva-collector read` to list the records)"
                        );
                    }
                }
            }
        }
        Ok(samples)
    }
}

/// Something found by a scan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub primary: Option<u8>,
    pub header: Header,
    pub address: u8,
}

/// What answered REQ_UD2 at an address during a scan.
#[derive(Debug)]
enum Identity {
    Meter(Header, u8),
    /// Only garbage came back (overlapping answers of several meters, or noise).
    Garbled,
    /// Nothing, or a telegram that is no data telegram.
    Nothing,
}

/// Reads the header of whatever answers REQ_UD2 at `addr`.
async fn identify(link: &mut MbusLink, addr: u8, retries: u32) -> Result<Identity, LinkError> {
    let mut garbled = false;
    for _ in 0..=retries {
        match link.transact(&frame::req_ud2(addr, true), true).await? {
            // A late acknowledgement, not the data telegram asked for.
            Answer::Frame(Frame::Ack) => {}
            Answer::Frame(f) => {
                return Ok(match record::decode(&f) {
                    Ok(Response::Data(t)) => Identity::Meter(t.header, t.address),
                    _ => Identity::Nothing,
                });
            }
            Answer::Garbled(_) => garbled = true,
            Answer::Nothing => {}
        }
    }
    Ok(if garbled {
        Identity::Garbled
    } else {
        Identity::Nothing
    })
}

/// What a scan found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScanReport {
    pub found: Vec<Found>,
    /// Addresses where only garbled answers came back: several meters share the address.
    pub collisions: Vec<u8>,
}

/// Primary scan: SND_NKE to each address; those that acknowledge are read for their header.
/// An address where the answers overlap (several meters with that primary address) is listed
/// in [`ScanReport::collisions`]: it needs fixing, and no header can be read through it.
pub async fn scan_primary(
    link: &mut MbusLink,
    addresses: impl IntoIterator<Item = u8>,
    retries: u32,
    mut progress: impl FnMut(u8, usize),
) -> Result<ScanReport, LinkError> {
    let mut scan = ScanReport::default();
    for a in addresses {
        progress(a, scan.found.len());
        let mut acked = false;
        let mut garbled = false;
        for _ in 0..=retries {
            match link.transact(&frame::snd_nke(a), true).await? {
                Answer::Frame(Frame::Ack) => {
                    acked = true;
                    break;
                }
                Answer::Garbled(_) => {
                    // Overlapping E5s of several meters, most likely: read on to tell.
                    garbled = true;
                    break;
                }
                _ => {}
            }
        }
        if !acked && !garbled {
            continue;
        }
        match identify(link, a, retries).await? {
            Identity::Meter(header, address) => scan.found.push(Found {
                primary: Some(a),
                header,
                address,
            }),
            Identity::Garbled => scan.collisions.push(a),
            Identity::Nothing if garbled => scan.collisions.push(a),
            Identity::Nothing => {}
        }
    }
    Ok(scan)
}

/// Secondary wildcard search (collision-driven tree search over the identification digits,
/// most significant first).
pub async fn scan_secondary(
    link: &mut MbusLink,
    retries: u32,
    mut progress: impl FnMut(&SecondaryMask, usize),
) -> Result<Vec<Found>, LinkError> {
    // No slave may stay selected from before.
    link.transact(&frame::snd_nke(ADDRESS_SELECTED), false)
        .await?;
    link.transact(&frame::snd_nke(frame::ADDRESS_BROADCAST), false)
        .await?;
    let mut found = Vec::new();
    // An explicit stack instead of recursion: (mask, next digit position).
    let mut stack: Vec<(SecondaryMask, usize)> = vec![(SecondaryMask::ANY, 0)];
    let mut probes = 0usize;
    while let Some((mask, pos)) = stack.pop() {
        // Digits pushed in reverse so the search runs 0..9 in order.
        let mut children = Vec::new();
        for d in 0..=9u8 {
            let m = mask.with_digit(pos, d);
            probes += 1;
            progress(&m, found.len());
            let mut answer = Answer::Nothing;
            for _ in 0..=retries {
                answer = link.transact(&frame::select(&m, true), true).await?;
                if !matches!(answer, Answer::Nothing) {
                    break;
                }
            }
            match answer {
                Answer::Nothing => {}
                Answer::Frame(Frame::Ack) => {
                    if let Identity::Meter(header, address) =
                        identify(link, ADDRESS_SELECTED, retries).await?
                    {
                        if !found.iter().any(|f: &Found| f.header == header) {
                            found.push(Found {
                                primary: None,
                                header,
                                address,
                            });
                        }
                    }
                }
                Answer::Frame(_) | Answer::Garbled(_) => {
                    if pos + 1 < 8 {
                        children.push((m, pos + 1));
                    } else {
                        tracing::warn!(mask = %m, "two meters answer to the same identification number; use enhanced selection or primary addresses");
                    }
                }
            }
            if probes > 100_000 {
                return Ok(found);
            }
        }
        stack.extend(children.into_iter().rev());
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    /// The constructed heat-meter telegram of the M-Bus reference (§9.2): storage, tariff, a
    /// backward-flow VIFE and "more records follow".
    const TELEGRAM: &str = "68 46 46 68 08 05 72 78 56 34 12 2D 2C 01 04 2A 00 00 00
        0C 06 45 23 01 00 0C 14 21 43 65 00 0B 2B 50 12 00 0A 5A 35 06 0A 5E 12 04
        04 93 3C 2A 00 00 00 4C 06 10 98 02 00 42 6C 1F 3C 8C 10 06 00 05 00 00
        02 FD 17 00 00 1F 12 16";

    fn records() -> Vec<Record> {
        let bytes = frame::from_hex(TELEGRAM).expect("hex");
        let Parsed::Frame(f, _) = frame::parse(&bytes) else {
            panic!("not a frame");
        };
        match record::decode(&f).expect("decode") {
            Response::Data(t) => t.records,
            other => panic!("{other:?}"),
        }
    }

    fn poller(channels: &str) -> MbusMeterPoller {
        let text = format!(
            "[api]\ncustomer_id = \"0c7f4a52-2d1e-4e59-9b0a-6d1f3c2b8e11\"\n[[mbus]]\nname = \"b\"\nport = \"/dev/ttyUSB7\"\n  [[mbus.meter]]\n  name = \"flat-7\"\n  address = 5\n  channels = [ {channels} ]\n"
        );
        let c =
            Config::parse(&text, std::path::Path::new("t.toml")).unwrap_or_else(|e| panic!("{e}"));
        MbusMeterPoller::new(c.mbus[0].meters[0].clone(), 2)
    }

    #[test]
    fn channels_pick_records_by_quantity_storage_tariff_and_modifiers() {
        let recs = records();
        let p = poller(
            r#"{ quantity = "energy", import_id = "E", unit = "kWh" },
               { quantity = "energy", storage = 1, import_id = "E_DUE", unit = "MWh" },
               { quantity = "energy", tariff = 1, import_id = "E_T1", unit = "GJ" },
               { quantity = "volume", modifiers = ["backward_flow"], import_id = "V_BACK", unit = "l" },
               { quantity = "return_temperature", import_id = "T_RET", unit = "K", kind = "data_point" },
               { record = 3, import_id = "T_FLOW", kind = "data_point" }"#,
        );
        let v = |i: usize| {
            p.channel_value(i, &recs)
                .map(|(s, rec)| (s.value, s.output.unit, rec))
        };
        assert_eq!(v(0), Ok((12345.0, Some("kWh".into()), 0)));
        assert_eq!(v(1), Ok((29.81, Some("MWh".into()), 6)));
        assert_eq!(v(2), Ok((1.8, Some("GJ".into()), 8)));
        assert_eq!(v(3), Ok((42.0, Some("l".into()), 5)));
        assert_eq!(v(4), Ok((314.35, Some("K".into()), 4)));
        assert_eq!(v(5), Ok((63.5, Some("°C".into()), 3)));
    }

    #[test]
    fn a_selector_matching_nothing_or_several_records_names_the_candidates() {
        let mut recs = records();
        // A second forward volume record makes "volume" ambiguous.
        let mut extra = recs[1].clone();
        extra.index = recs.len();
        recs.push(extra);
        let p = poller(
            r#"{ quantity = "volume", import_id = "V" }, { quantity = "power", storage = 3, import_id = "P", kind = "data_point" }"#,
        );
        let e = p.channel_value(0, &recs).expect_err("ambiguous");
        assert!(
            e.contains("record 1") && e.contains(&format!("record {}", recs.len() - 1)),
            "{e}"
        );
        let e = p.channel_value(1, &recs).expect_err("not found");
        assert!(e.contains("power"), "{e}");
    }

    #[test]
    fn an_incompatible_unit_names_the_meter_and_the_record() {
        let recs = records();
        let p = poller(
            r#"{ record = 1, import_id = "V", unit = "kWh" },
               { record = 3, import_id = "T", unit = "m3", kind = "data_point" }"#,
        );
        assert_eq!(
            p.channel_value(0, &recs).map(|(s, _)| s.value),
            Err(
                "meter \"flat-7\", record 1 (volume in m3): cannot convert \"m3\" (volume) to \"kWh\" (energy): they measure different things"
                    .to_owned()
            )
        );
        let e = p.channel_value(1, &recs).expect_err("°C is no volume");
        assert!(
            e.starts_with("meter \"flat-7\", record 3 (flow_temperature in °C): "),
            "{e}"
        );
    }

    #[test]
    fn a_header_from_another_meter_than_the_secondary_address_names_both() {
        let bytes = frame::from_hex(TELEGRAM).expect("hex");
        let Parsed::Frame(f, _) = frame::parse(&bytes) else {
            panic!("not a frame");
        };
        let Ok(Response::Data(t)) = record::decode(&f) else {
            panic!("not data");
        };
        let address =
            |id: &str, m: Option<&str>, v: Option<u8>, med: Option<u8>| SecondaryAddress {
                id: id.into(),
                manufacturer: m.map(str::to_owned),
                version: v,
                medium: med,
            };
        assert_eq!(
            secondary_mismatch(
                &address("12345678", Some("KAM"), Some(1), Some(4)),
                &t.header
            ),
            None
        );
        assert_eq!(
            secondary_mismatch(&address("87654321", None, None, None), &t.header).as_deref(),
            Some("the meter selected as id 87654321 answered as id 12345678")
        );
        assert_eq!(
            secondary_mismatch(
                &address("12345678", Some("ABB"), Some(2), Some(7)),
                &t.header
            )
            .as_deref(),
            Some(
                "the meter selected as id 12345678 answered as manufacturer KAM (not ABB), version 1 (not 2), medium 0x04 (not 0x07)"
            )
        );
    }

    #[test]
    fn auto_timeouts_follow_the_baud_rate() {
        let l = MbusLink::with("/dev/null".into(), 2400, MbusTimeout::Auto);
        assert_eq!(l.first_byte_timeout(), Duration::from_millis(500));
        let slow = MbusLink::with("/dev/null".into(), 300, MbusTimeout::Auto);
        assert_eq!(slow.first_byte_timeout(), Duration::from_millis(1150));
        assert_eq!(slow.inter_byte_timeout(), Duration::from_micros(733_320));
        // The whole answer: first byte, one inter-byte pause, twice the wire time of the echoed
        // request and a 261-byte frame (4583 µs a character at 2400 baud).
        assert_eq!(
            l.answer_limit(5),
            Duration::from_micros(600_000 + 532 * 4583)
        );
        assert_eq!(
            l.worst_transaction(),
            Duration::from_micros(4 * 4583 + 600_000 + 556 * 4583)
        );
        assert_eq!(
            slow.answer_limit(17),
            Duration::from_micros(1_150_000 + 733_320 + 556 * 36_666)
        );
        let fixed = MbusLink::with(
            "/dev/null".into(),
            9600,
            MbusTimeout::Fixed(Duration::from_secs(2)),
        );
        assert_eq!(fixed.first_byte_timeout(), Duration::from_secs(2));
    }
}
