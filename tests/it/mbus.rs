//! Wired M-Bus on real pseudo-terminals: the master procedures against the simulated line
//! (`sim::mbus`, which parses and builds telegrams independently of `src/mbus`), `scan mbus`,
//! and a heat meter end to end to the stand-in API.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use enectiva_collector::app;
use enectiva_collector::bus::{BusMeter, Line, LinkError};
use enectiva_collector::config::{Config, MbusAddress, MbusMeter, MbusTimeout, SecondaryAddress};
use enectiva_collector::mbus::bus::{Answer, MbusLink, MbusMeterPoller};
use enectiva_collector::mbus::frame;
use enectiva_collector::mbus::record::{self, Response, Telegram};
use enectiva_collector::queue::QueueOptions;
use enectiva_collector::sender::SenderSettings;
use enectiva_collector::sim::api::{Accepted, StandIn};
use enectiva_collector::sim::mbus::{MbusLineOptions, RequestKind, SimMbus, SimSlave};
use tokio_util::sync::CancellationToken;

use crate::common::CUSTOMER;

const TOKEN: &str = "mbus-token";
const LONG: Duration = Duration::from_secs(60);

fn link(sim: &SimMbus, timeout: MbusTimeout) -> MbusLink {
    MbusLink::with(sim.path(), 2400, timeout)
}

fn meter(name: &str, address: MbusAddress) -> MbusMeter {
    MbusMeter {
        name: name.into(),
        address,
        interval: Duration::from_secs(900),
        channels: Vec::new(),
    }
}

fn secondary(id: &str) -> MbusAddress {
    MbusAddress::Secondary(SecondaryAddress {
        id: id.into(),
        manufacturer: None,
        version: None,
        medium: None,
    })
}

fn quantity_value(
    records: &[enectiva_collector::mbus::record::Record],
    q: &str,
    storage: u64,
) -> Option<f64> {
    records
        .iter()
        .find(|r| r.quantity == q && r.storage == storage)
        .and_then(|r| r.as_f64())
}

/// Heat meters at primary 5 (id 12345678) and 7 (id 87654321) on one plain line.
async fn two_heat_meters() -> SimMbus {
    SimMbus::start(
        vec![
            SimSlave::heat_meter(5, 12345678),
            SimSlave::heat_meter(7, 87654321),
        ],
        MbusLineOptions::default(),
    )
    .await
    .expect("sim")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn primary_and_secondary_reads() {
    let sim = two_heat_meters().await;
    let mut l = link(&sim, MbusTimeout::Auto);
    let mut p = MbusMeterPoller::new(meter("primary", MbusAddress::Primary(5)), 2);
    let r = p.readout(&mut l).await.expect("primary readout");
    assert_eq!(
        (
            r.address,
            r.header.id.as_str(),
            r.header.manufacturer.as_str()
        ),
        (5, "12345678", "KAM")
    );
    assert_eq!(
        quantity_value(&r.records, "energy", 0),
        Some(12_345_000.0),
        "energy in Wh"
    );
    assert_eq!(quantity_value(&r.records, "volume", 0), Some(6543.21));
    assert_eq!(
        quantity_value(&r.records, "flow_temperature", 0),
        Some(63.5)
    );
    assert_eq!(quantity_value(&r.records, "energy", 1), Some(10_000_000.0));
    // A second readout: SND_NKE is not repeated, the FCB toggles, energy grew by 1 kWh.
    let r2 = p.readout(&mut l).await.expect("second readout");
    assert_eq!(quantity_value(&r2.records, "energy", 0), Some(12_346_000.0));
    let kinds: Vec<RequestKind> = sim
        .requests()
        .into_iter()
        .filter(|q| q.address == 5)
        .map(|q| q.kind)
        .collect();
    assert_eq!(
        kinds,
        vec![
            RequestKind::SndNke,
            RequestKind::ReqUd2 { fcb: true },
            RequestKind::ReqUd2 { fcb: false }
        ]
    );
    // Secondary: select by identification number, read through address 253.
    let mut s = MbusMeterPoller::new(meter("secondary", secondary("87654321")), 2);
    let r = s.readout(&mut l).await.expect("secondary readout");
    assert_eq!((r.address, r.header.id.as_str()), (7, "87654321"));
    assert!(
        sim.requests()
            .iter()
            .any(|q| matches!(q.kind, RequestKind::Select { .. }) && q.address == 0xFD)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_telegram_readout_delivers_every_record() {
    // Three telegrams; the first two end with DIF 0x1F ("more records follow").
    let t1 = vec![0x04, 0x06, 0x01, 0x00, 0x00, 0x00, 0x1F]; // energy 1 kWh
    let t2 = vec![0x04, 0x13, 0x02, 0x00, 0x00, 0x00, 0x1F]; // volume 2 l
    let t3 = vec![0x02, 0x5B, 0x03, 0x00]; // flow temperature 3 °C
    let sim = SimMbus::start(
        vec![SimSlave::new(9, 11112222, "ABB", 2, 0x04).with_telegrams(vec![t1, t2, t3])],
        MbusLineOptions::default(),
    )
    .await
    .expect("sim");
    let mut l = link(&sim, MbusTimeout::Auto);
    let mut p = MbusMeterPoller::new(meter("multi", MbusAddress::Primary(9)), 1);
    let r = p.readout(&mut l).await.expect("readout");
    assert_eq!((r.telegrams, r.truncated), (3, false));
    let q: Vec<(usize, &str)> = r
        .records
        .iter()
        .map(|r| (r.index, r.quantity.as_str()))
        .collect();
    assert_eq!(
        q,
        vec![(0, "energy"), (1, "volume"), (2, "flow_temperature")]
    );
    assert_eq!(quantity_value(&r.records, "volume", 0), Some(0.002));
    let fcbs: Vec<bool> = sim
        .requests()
        .into_iter()
        .filter_map(|q| match q.kind {
            RequestKind::ReqUd2 { fcb } => Some(fcb),
            _ => None,
        })
        .collect();
    assert_eq!(fcbs, vec![true, false, true], "FCB toggles per telegram");
}

/// Log lines written while a [`Capture`] is the thread's subscriber.
#[derive(Clone, Default)]
struct Capture(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Capture {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_readout_that_never_ends_is_cut_at_16_telegrams_and_flagged() {
    // Every telegram says "more records follow" (DIF 1F), forever.
    let endless = vec![0x04, 0x06, 0x01, 0x00, 0x00, 0x00, 0x1F];
    let sim = SimMbus::start(
        vec![SimSlave::new(9, 11112222, "ABB", 2, 0x04).with_telegrams(vec![endless])],
        MbusLineOptions::default(),
    )
    .await
    .expect("sim");
    let mut l = link(&sim, MbusTimeout::Auto);
    let mut p = MbusMeterPoller::new(meter("endless", MbusAddress::Primary(9)), 1);
    let log = Capture::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer({
            let log = log.clone();
            move || log.clone()
        })
        .with_ansi(false)
        .finish();
    // The test's own thread polls the readout, so a thread-local subscriber sees its events.
    let r = {
        let _guard = tracing::subscriber::set_default(subscriber);
        p.readout(&mut l).await.expect("readout")
    };
    assert_eq!((r.telegrams, r.records.len(), r.truncated), (16, 16, true));
    assert_eq!(r.records.last().map(|r| r.index), Some(15));
    let log = log.text();
    assert!(
        log.contains("WARN") && log.contains("truncated") && log.contains("endless"),
        "{log}"
    );
    assert_eq!(
        sim.requests()
            .iter()
            .filter(|q| matches!(q.kind, RequestKind::ReqUd2 { .. }))
            .count(),
        16
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echoing_converter_slow_meter_and_absent_meter() {
    let sim = SimMbus::start(
        vec![
            SimSlave::heat_meter(1, 10000001),
            SimSlave::heat_meter(2, 10000002),
            SimSlave::heat_meter(3, 10000003),
        ],
        MbusLineOptions {
            echo: true,
            timing: None,
        },
    )
    .await
    .expect("sim");
    sim.set_reply_delay(2, Duration::from_millis(350));
    sim.set_absent(3, true);
    let mut l = link(&sim, MbusTimeout::Fixed(Duration::from_millis(500)));
    let mut slow = MbusMeterPoller::new(meter("slow", MbusAddress::Primary(2)), 0);
    let mut absent = MbusMeterPoller::new(meter("absent", MbusAddress::Primary(3)), 1);
    let mut first = MbusMeterPoller::new(meter("first", MbusAddress::Primary(1)), 0);
    // Echoed requests are skipped; the slow but in-time meter is read.
    let r = first.readout(&mut l).await.expect("echo");
    assert_eq!(r.header.id, "10000001");
    let r = slow.readout(&mut l).await.expect("slow meter");
    assert_eq!(r.header.id, "10000002");
    // The absent meter costs its timeout × (1 + retries) for each request it is sent, then fails.
    let t = Instant::now();
    let e = absent.readout(&mut l).await.expect_err("absent");
    let cost = t.elapsed();
    assert!(
        cost < Duration::from_millis(2 * 2 * 500 + 500),
        "{cost:?}: {e}"
    );
    // The others are not stalled by it.
    let t = Instant::now();
    first.readout(&mut l).await.expect("after the absent one");
    assert!(t.elapsed() < Duration::from_millis(500));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_line_that_keeps_sending_noise_does_not_hold_the_master() {
    // A shorted bus: a stream of 00 bytes, and the meter cannot be heard through it.
    let sim = SimMbus::start(
        vec![SimSlave::heat_meter(5, 12345678)],
        MbusLineOptions::default(),
    )
    .await
    .expect("sim");
    sim.set_absent(5, true);
    sim.set_noise(Some(0x00));
    let mut l = MbusLink::with(
        sim.path(),
        9600,
        MbusTimeout::Fixed(Duration::from_millis(300)),
    );
    // One request: the bytes keep coming, so neither the first-byte nor the inter-byte timeout
    // ever runs out; the answer's deadline ends it.
    let t = Instant::now();
    let answer = tokio::time::timeout(LONG, l.transact(&frame::req_ud2(5, true), true))
        .await
        .expect("the master gave up")
        .expect("the line works");
    let took = t.elapsed();
    assert!(matches!(answer, Answer::Garbled(n) if n > 0), "{answer:?}");
    assert!(
        took >= l.answer_limit(5) && took < l.worst_transaction() + Duration::from_secs(10),
        "{took:?}"
    );
    assert!(l.line_errors().garbage_bytes > 0);
    // A whole readout fails with a clear error within the bound the bus promises its watchdog.
    let mut p = MbusMeterPoller::new(meter("shorted", MbusAddress::Primary(5)), 1);
    let t = Instant::now();
    let e = tokio::time::timeout(LONG, p.readout(&mut l))
        .await
        .expect("the readout gave up")
        .expect_err("no readout through noise");
    assert!(e.to_string().contains("garbled"), "{e}");
    assert!(t.elapsed() < p.max_duration(&l), "{:?}", t.elapsed());
    // The short is gone: the meter is read again.
    sim.set_noise(None);
    sim.set_absent(5, false);
    let r = p.readout(&mut l).await.expect("after the noise");
    assert_eq!(r.header.id, "12345678");
}

/// The telegrams the simulated line received for `address`, from the `from`-th on.
fn kinds_to(sim: &SimMbus, address: u8, from: usize) -> Vec<RequestKind> {
    sim.requests()
        .into_iter()
        .skip(from)
        .filter(|q| q.address == address)
        .map(|q| q.kind)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_resends_the_same_request_with_the_same_fcb() {
    let sim = SimMbus::start(
        vec![SimSlave::heat_meter(5, 12345678)],
        MbusLineOptions::default(),
    )
    .await
    .expect("sim");
    let mut l = link(&sim, MbusTimeout::Fixed(Duration::from_millis(300)));
    let mut p = MbusMeterPoller::new(meter("flat", MbusAddress::Primary(5)), 3);
    let r = p.readout(&mut l).await.expect("first readout");
    assert_eq!(quantity_value(&r.records, "energy", 0), Some(12_345_000.0));
    // The meter misses the next request (it hears nothing); it is back for the retry.
    sim.set_absent(5, true);
    let before = sim.requests().len();
    let back = tokio::spawn({
        let sim = sim.clone();
        async move {
            // A request is logged before the slaves react, under the same lock: the first
            // attempt goes unheard whatever happens here.
            let heard = sim.wait_requests(before as u64 + 1, LONG).await;
            sim.set_absent(5, false);
            heard
        }
    });
    let r = p.readout(&mut l).await.expect("a retry is answered");
    assert!(back.await.expect("join"), "the first attempt never came");
    // Every attempt is the same telegram, `10 5B 05 60 16`: REQ_UD2 with the FCB of this
    // exchange (0: the first readout used 1), never toggled by a retry.
    let kinds = kinds_to(&sim, 5, before);
    assert!(kinds.len() >= 2, "{kinds:?}");
    assert!(
        kinds
            .iter()
            .all(|k| *k == RequestKind::ReqUd2 { fcb: false }),
        "{kinds:?}"
    );
    // So the meter took the retry for the next readout (had the retry toggled the FCB back to 1,
    // it would have repeated its last telegram: 12345 kWh again).
    assert_eq!(quantity_value(&r.records, "energy", 0), Some(12_346_000.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snd_nke_is_sent_again_after_a_failed_readout() {
    let sim = SimMbus::start(
        vec![SimSlave::heat_meter(5, 12345678)],
        MbusLineOptions::default(),
    )
    .await
    .expect("sim");
    let mut l = link(&sim, MbusTimeout::Fixed(Duration::from_millis(300)));
    let mut p = MbusMeterPoller::new(meter("flat", MbusAddress::Primary(5)), 1);
    p.readout(&mut l).await.expect("first readout");
    p.readout(&mut l).await.expect("second readout");
    assert_eq!(
        kinds_to(&sim, 5, 0),
        [
            RequestKind::SndNke,
            RequestKind::ReqUd2 { fcb: true },
            RequestKind::ReqUd2 { fcb: false },
        ],
        "SND_NKE on first contact only"
    );
    sim.set_absent(5, true);
    let before = sim.requests().len();
    let e = p.readout(&mut l).await.expect_err("the meter is away");
    assert!(matches!(e, LinkError::Timeout), "{e}");
    assert_eq!(
        kinds_to(&sim, 5, before),
        [
            RequestKind::ReqUd2 { fcb: true },
            RequestKind::ReqUd2 { fcb: true }
        ],
        "one attempt and one retry, same FCB"
    );
    sim.set_absent(5, false);
    let before = sim.requests().len();
    p.readout(&mut l).await.expect("back");
    assert_eq!(
        kinds_to(&sim, 5, before),
        [RequestKind::SndNke, RequestKind::ReqUd2 { fcb: true }],
        "after a failure: SND_NKE, and the FCB starts anew"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_select_is_sent_before_each_secondary_readout() {
    let sim = two_heat_meters().await;
    let mut l = link(&sim, MbusTimeout::Fixed(Duration::from_millis(300)));
    let mut p = MbusMeterPoller::new(meter("by-id", secondary("87654321")), 1);
    // Another meter is read in between, as on a real bus; whatever happened on the line since,
    // each secondary readout selects its meter again.
    let mut other = MbusMeterPoller::new(meter("other", MbusAddress::Primary(5)), 1);
    for _ in 0..2 {
        let r = p.readout(&mut l).await.expect("secondary readout");
        assert_eq!((r.address, r.header.id.as_str()), (7, "87654321"));
        other.readout(&mut l).await.expect("primary readout");
    }
    let select = RequestKind::Select {
        mask: [0x21, 0x43, 0x65, 0x87, 0xFF, 0xFF, 0xFF, 0xFF],
    };
    assert_eq!(
        kinds_to(&sim, 0xFD, 0),
        [
            RequestKind::SndNke,
            select.clone(),
            RequestKind::ReqUd2 { fcb: true },
            select,
            RequestKind::ReqUd2 { fcb: false },
        ]
    );
    assert_eq!(sim.readouts(7), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_line_is_read_with_the_auto_timeouts() {
    // 300 baud: the heat meter's 62-byte answer takes 2.27 s on the wire, twice the first-byte
    // timeout (1.15 s); only the inter-byte timeout (0.73 s) carries the master through it.
    let sim = SimMbus::start(
        vec![SimSlave::heat_meter(5, 12345678)],
        MbusLineOptions {
            echo: false,
            timing: Some((300, Duration::from_millis(20))),
        },
    )
    .await
    .expect("sim");
    let mut l = MbusLink::with(sim.path(), 300, MbusTimeout::Auto);
    let wire_time = Duration::from_micros(36_667) * 62;
    assert!(wire_time > l.first_byte_timeout());
    let mut p = MbusMeterPoller::new(meter("slow", MbusAddress::Primary(5)), 0);
    let t = Instant::now();
    let r = p.readout(&mut l).await.expect("slow readout");
    assert!(t.elapsed() >= wire_time, "{:?}", t.elapsed());
    assert_eq!(r.header.id, "12345678");
    assert_eq!(quantity_value(&r.records, "energy", 0), Some(12_345_000.0));
    assert_eq!(quantity_value(&r.records, "volume", 0), Some(6543.21));
    assert_eq!(
        quantity_value(&r.records, "flow_temperature", 0),
        Some(63.5)
    );
    assert_eq!(r.records.len(), 8);
    // No retry was needed: one SND_NKE, one REQ_UD2.
    assert_eq!(
        kinds_to(&sim, 5, 0),
        [RequestKind::SndNke, RequestKind::ReqUd2 { fcb: true }]
    );
}

/// A libmbus fixture's bytes and what the decoder makes of them.
fn fixture(name: &str) -> (Vec<u8>, Telegram) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/mbus/libmbus/test-frames")
        .join(name);
    let bytes = frame::from_hex(&std::fs::read_to_string(&path).expect("fixture")).expect("hex");
    let frame::Parsed::Frame(f, used) = frame::parse(&bytes) else {
        panic!("{name}: not a frame");
    };
    assert_eq!(used, bytes.len(), "{name}");
    match record::decode(&f) {
        Ok(Response::Data(t)) => (bytes, t),
        other => panic!("{name}: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_telegrams_replayed_on_the_line_read_as_the_decoder_decodes_them() {
    // A Kamstrup Multical 601 (27 records) at primary address 17, and a Landis+Gyr Ultraheat
    // T230 (34 records) read by its secondary address: their real telegrams, verbatim.
    let (kamstrup, kamstrup_decoded) = fixture("kamstrup_multical_601.hex");
    let (landis, landis_decoded) = fixture("landis+gyr_ultraheat_t230.hex");
    assert_eq!(
        (kamstrup_decoded.address, kamstrup_decoded.records.len()),
        (17, 27)
    );
    assert_eq!(
        (
            landis_decoded.header.id.as_str(),
            landis_decoded.records.len()
        ),
        ("66660205", 34)
    );
    let sim = SimMbus::start(
        vec![
            SimSlave::new(17, 6855817, "KAM", 8, 0x04).with_raw_rsp_ud(kamstrup),
            SimSlave::new(0, 66660205, "LUG", 7, 0x04).with_raw_rsp_ud(landis),
        ],
        MbusLineOptions::default(),
    )
    .await
    .expect("sim");
    let mut l = link(&sim, MbusTimeout::Auto);
    for (mut p, decoded) in [
        (
            MbusMeterPoller::new(meter("multical", MbusAddress::Primary(17)), 1),
            kamstrup_decoded,
        ),
        (
            MbusMeterPoller::new(meter("ultraheat", secondary("66660205")), 1),
            landis_decoded,
        ),
    ] {
        let r = p.readout(&mut l).await.expect("readout");
        assert_eq!(r.telegrams, 1);
        assert_eq!(r.address, decoded.address);
        assert_eq!(r.header, decoded.header);
        // Every record, value, unit, storage, tariff, function and modifier as decoded.
        assert_eq!(r.records, decoded.records);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secondary_readout_answered_by_another_id_fails() {
    // The slave takes the select of 11111111, but its telegram is another meter's (03575845).
    let (telegram, decoded) = fixture("example_data_01.hex");
    assert_eq!(decoded.header.id, "03575845");
    let sim = SimMbus::start(
        vec![SimSlave::new(1, 11111111, "AMT", 0x34, 0x04).with_raw_rsp_ud(telegram)],
        MbusLineOptions::default(),
    )
    .await
    .expect("sim");
    let mut l = link(&sim, MbusTimeout::Auto);
    let mut p = MbusMeterPoller::new(meter("flat-3", secondary("11111111")), 1);
    let e = p
        .readout(&mut l)
        .await
        .expect_err("another meter's records");
    assert!(matches!(e, LinkError::Protocol(_)), "{e:?}");
    let e = e.to_string();
    assert!(e.contains("11111111") && e.contains("03575845"), "{e}");
    // As a poll of the bus: the meter failed this slot, no sample.
    assert!(p.poll(&mut l, "b").await.is_err());
    assert_eq!(sim.readouts(1), 2);
}

fn run_scan(port: &Path, secondary: bool) -> (Option<i32>, String, String) {
    run_scan_addresses(port, secondary, "0-12")
}

fn run_scan_addresses(
    port: &Path,
    secondary: bool,
    addresses: &str,
) -> (Option<i32>, String, String) {
    let mut args = vec![
        "scan",
        "mbus",
        "--port",
        port.to_str().expect("utf8"),
        "--baud",
        "2400",
        "--timeout",
        "300ms",
    ];
    if secondary {
        args.push("--secondary");
    } else {
        args.extend(["--addresses", addresses]);
    }
    let out = Command::new(env!("CARGO_BIN_EXE_enectiva-collector"))
        .args(&args)
        .output()
        .expect("scan");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scan_finds_every_meter_by_primary_and_by_secondary_search() {
    // Ids sharing their first digits collide until the last one.
    let sim = SimMbus::start(
        vec![
            SimSlave::heat_meter(3, 12340001),
            SimSlave::heat_meter(7, 12340002),
            SimSlave::new(11, 55500001, "ELS", 8, 0x07),
        ],
        MbusLineOptions::default(),
    )
    .await
    .expect("sim");
    let path = sim.path();
    let (code, out, err) = tokio::task::spawn_blocking({
        let p = path.clone();
        move || run_scan(&p, false)
    })
    .await
    .expect("join");
    assert_eq!(code, Some(0), "{out}{err}");
    for (addr, id) in [(3, "12340001"), (7, "12340002"), (11, "55500001")] {
        assert!(
            out.lines()
                .any(|l| l.contains(&format!("address {addr:>3}")) && l.contains(id)),
            "{addr}/{id} missing:\n{out}"
        );
    }
    assert!(out.contains("ELS") && out.contains("water"), "{out}");
    let (code, out, err) = tokio::task::spawn_blocking(move || run_scan(&path, true))
        .await
        .expect("join");
    assert_eq!(code, Some(0), "{out}{err}");
    for id in ["12340001", "12340002", "55500001"] {
        assert!(
            out.contains(id),
            "{id} missing from the secondary search:\n{out}"
        );
    }
    assert_eq!(
        out.lines().filter(|l| l.contains("secondary")).count(),
        3,
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn primary_scan_reports_meters_that_share_an_address() {
    // Two meters left at primary address 4: their answers overlap on the line.
    let sim = SimMbus::start(
        vec![
            SimSlave::heat_meter(4, 11111111),
            SimSlave::heat_meter(4, 22222222),
            SimSlave::heat_meter(6, 33333333),
        ],
        MbusLineOptions::default(),
    )
    .await
    .expect("sim");
    let path = sim.path();
    let (code, out, err) = tokio::task::spawn_blocking({
        let p = path.clone();
        move || run_scan_addresses(&p, false, "0-8")
    })
    .await
    .expect("join");
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        out.lines().any(
            |l| l.starts_with("address   4: several meters answer (collision)")
                && l.contains("distinct primary addresses")
                && l.contains("secondary addressing")
        ),
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.starts_with("address   6:") && l.contains("33333333")),
        "{out}"
    );
    assert_eq!(out.lines().count(), 2, "{out}");
    // Both were asked: the simulator saw a SND_NKE and REQ_UD2s to 4.
    assert!(sim.readouts(4) >= 2, "{}", sim.readouts(4));
    // What the message advises works: the secondary search tells them apart.
    let (code, out, err) = tokio::task::spawn_blocking(move || run_scan(&path, true))
        .await
        .expect("join");
    assert_eq!(code, Some(0), "{out}{err}");
    for id in ["11111111", "22222222", "33333333"] {
        assert!(out.contains(id), "{id} missing:\n{out}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_lists_every_record_and_names_the_candidates_of_a_channel_without_value() {
    let sim = SimMbus::start(
        vec![SimSlave::heat_meter(5, 12345678)],
        MbusLineOptions::default(),
    )
    .await
    .expect("sim");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            r#"[api]
customer_id = "{CUSTOMER}"
[queue]
path = "{}"
[[mbus]]
name = "heat-bus"
port = "{}"
baud = 2400
  [[mbus.meter]]
  name = "flat-12"
  address = 5
  channels = [
    {{ quantity = "energy", import_id = "HEAT_12", unit = "kWh" }},
    {{ quantity = "energy", storage = 2, import_id = "HEAT_12_DUE2", unit = "kWh" }},
    {{ quantity = "pressure", import_id = "HEAT_12_P", kind = "data_point" }},
  ]
"#,
            dir.path().join("queue.db").display(),
            sim.path().display()
        ),
    )
    .expect("config");
    let out = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_enectiva-collector"))
            .args(["-c", config.to_str().expect("utf8"), "read"])
            .output()
            .expect("read")
    })
    .await
    .expect("join");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(
        stdout.starts_with("heat-bus/flat-12 (M-Bus address 5 at ")
            && stdout.contains("id 12345678, KAM, heat_outlet, 1 telegram(s)"),
        "{stdout}"
    );
    // Every record of the readout, in order, between `records:` and `channels:`.
    let records: Vec<&str> = stdout
        .lines()
        .skip_while(|l| l.trim() != "records:")
        .skip(1)
        .take_while(|l| l.trim() != "channels:")
        .map(str::trim)
        .collect();
    let expected = [
        "energy storage 0 tariff 0 subunit 0 instantaneous = 12345000 Wh",
        "volume storage 0 tariff 0 subunit 0 instantaneous = 6543.21 m3",
        "power storage 0 tariff 0 subunit 0 instantaneous = 1250 W",
        "flow_temperature storage 0 tariff 0 subunit 0 instantaneous = 63.5 °C",
        "return_temperature storage 0 tariff 0 subunit 0 instantaneous = 41.2 °C",
        "temperature_difference storage 0 tariff 0 subunit 0 instantaneous = 22.3 K",
        "energy storage 1 tariff 0 subunit 0 instantaneous = 10000000 Wh",
        "fabrication_number storage 0 tariff 0 subunit 0 instantaneous = 12345678",
    ];
    let expected: Vec<String> = expected
        .iter()
        .enumerate()
        .map(|(i, r)| format!("record {i}: {r}"))
        .collect();
    assert_eq!(records, expected, "{stdout}");
    let channel = |id: &str| {
        stdout
            .lines()
            .map(str::trim)
            .find(|l| l.starts_with(&format!("{id}: ")) || l.ends_with(&format!("{id} (record 0)")))
            .unwrap_or_else(|| panic!("no line for {id}:\n{stdout}"))
            .to_owned()
    };
    assert_eq!(channel("HEAT_12"), "12345 kWh → reading HEAT_12 (record 0)");
    // Storage 2 does not exist: the line names the energy records there are.
    assert_eq!(
        channel("HEAT_12_DUE2"),
        format!(
            "HEAT_12_DUE2: NO VALUE: no record is energy storage 2 tariff 0 subunit 0 instantaneous; \
             records with that quantity: {}; {}",
            expected[0], expected[6]
        )
    );
    // No pressure at all: the line names the quantities there are.
    assert_eq!(
        channel("HEAT_12_P"),
        "HEAT_12_P: NO VALUE: no record is pressure storage 0 tariff 0 subunit 0 instantaneous; \
         the readout has no such quantity; quantities in this readout: energy, fabrication_number, \
         flow_temperature, power, return_temperature, temperature_difference, volume"
    );
    // `read` reads; it queues and sends nothing.
    assert!(!dir.path().join("queue.db").exists());
}

fn series<'a>(acc: &'a [Accepted], id: &str) -> Vec<&'a Accepted> {
    acc.iter().filter(|a| a.import_id == id).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heat_meter_end_to_end_in_kwh_m3_and_a_flow_temperature_data_point() {
    let dir = tempfile::tempdir().expect("tempdir");
    let api = StandIn::start(CUSTOMER, TOKEN).await.expect("api");
    let sim = SimMbus::start(
        vec![SimSlave::heat_meter(5, 12345678)],
        MbusLineOptions::default(),
    )
    .await
    .expect("sim");
    std::fs::write(dir.path().join("token"), TOKEN).expect("token");
    let text = format!(
        r#"[api]
base_url = "{}"
customer_id = "{CUSTOMER}"
token_file = "{}"
[queue]
path = "{}"
[[mbus]]
name = "heat-bus"
port = "{}"
baud = 2400
timeout = "auto"
  [[mbus.meter]]
  name = "flat-12"
  address = 5
  interval = "1s"
  channels = [
    {{ quantity = "energy", import_id = "HEAT_12", unit = "kWh" }},
    {{ quantity = "energy", storage = 1, import_id = "HEAT_12_DUE", unit = "MWh" }},
    {{ quantity = "volume", import_id = "HEAT_12_VOL", unit = "m3" }},
    {{ quantity = "flow_temperature", import_id = "HEAT_12_TFLOW", unit = "°C", kind = "data_point" }},
    {{ quantity = "temperature_difference", import_id = "HEAT_12_DT", unit = "K", kind = "data_point" }},
  ]
"#,
        api.base_url(),
        dir.path().join("token").display(),
        dir.path().join("queue.db").display(),
        sim.path().display()
    );
    let config =
        Config::parse(&text, &dir.path().join("config.toml")).unwrap_or_else(|e| panic!("{e}"));
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(app::run_with(
        config,
        |q| QueueOptions {
            commit_window: Duration::from_millis(50),
            ..QueueOptions::from_settings(q)
        },
        |a| SenderSettings {
            rescan: Duration::from_millis(200),
            ..SenderSettings::from_api(a)
        },
        shutdown.clone(),
    ));
    let deadline = Instant::now() + LONG;
    while series(&api.accepted(), "HEAT_12").len() < 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    shutdown.cancel();
    task.await.expect("join").expect("daemon");
    let acc = api.accepted();
    let energy: Vec<&str> = series(&acc, "HEAT_12")
        .iter()
        .map(|a| a.raw_value.as_str())
        .collect();
    assert!(energy.len() >= 2, "{acc:?}");
    assert_eq!(&energy[..2], &["12345", "12346"], "kWh from Wh × 10^3");
    let e = series(&acc, "HEAT_12")[0];
    assert_eq!((e.kind, e.unit.as_deref()), ("reading", Some("kWh")));
    assert_eq!(series(&acc, "HEAT_12_DUE")[0].raw_value, "10");
    let v = series(&acc, "HEAT_12_VOL")[0];
    assert_eq!(
        (v.raw_value.as_str(), v.unit.as_deref()),
        ("6543.21", Some("m3"))
    );
    let t = series(&acc, "HEAT_12_TFLOW")[0];
    assert_eq!(
        (t.kind, t.raw_value.as_str(), t.unit.as_deref()),
        ("data_point", "63.5", Some("°C"))
    );
    let dt = series(&acc, "HEAT_12_DT")[0];
    assert_eq!(
        (dt.raw_value.as_str(), dt.unit.as_deref()),
        ("22.3", Some("K"))
    );
}

#[test]
fn mbus_decode_prints_the_json_of_spec_section_7() {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/mbus/libmbus/test-frames/example_data_01.hex");
    let out = Command::new(env!("CARGO_BIN_EXE_enectiva-collector"))
        .args(["mbus", "decode", fixture.to_str().expect("utf8")])
        .output()
        .expect("decode");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["address"], 1);
    assert_eq!(v["id"], "03575845");
    assert_eq!(v["manufacturer"], "AMT");
    assert_eq!(v["access_number"], 158);
    let r0 = &v["records"][0];
    assert_eq!(
        (
            r0["index"].clone(),
            r0["quantity"].clone(),
            r0["unit"].clone()
        ),
        (0.into(), "energy".into(), "Wh".into())
    );
    assert_eq!(r0["value"], 1389817000.0);
    assert_eq!(r0["function"], "instantaneous");
    // Garbage in: a clear error, exit status 1, no panic.
    let mut child = Command::new(env!("CARGO_BIN_EXE_enectiva-collector"))
        .args(["mbus", "decode", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    if let Some(mut stdin) = child.stdin.take() {
        use std::io::Write as _;
        stdin
            .write_all(b"68 05 05 68 08 01 72 00 16")
            .expect("write");
    }
    let out = child.wait_with_output().expect("wait");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("error:"));
}
