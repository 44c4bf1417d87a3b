//! Fuzz target: Modbus answer decoding. The same bytes are read three ways:
//!
//! 1. as register words (big-endian pairs), decoded as every data type in every word order at
//!    every offset (`decode::decode`, `ordered_bytes`, `interpretations` for `probe`);
//! 2. as a meter: up to 15 fuzz-chosen channels (table, address, type, order, rounding) and
//!    `max_registers`/`max_gap`, planned into merged requests (`plan`, every `fallback`), then
//!    polled three times (`MeterPoller::poll`, the daemon's code) over a scripted link whose
//!    answers the bytes choose: the words asked for, too few or too many (a wrong register
//!    count), exception 02 or another exception, a timeout. Every value must be exactly the
//!    registers its channel names, decoded as its type and order;
//! 3. as the bytes one RTU transaction saw (`rtu::count_line_errors`, which looks for garbage
//!    and bad-CRC frames in them).
//!
//! Must never panic, overflow or read out of bounds. Owns nothing else.

#![no_main]

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use enectiva_collector::bus::{Line, LineErrors};
use enectiva_collector::config::{ModbusChannel, ModbusMeter, Output};
use enectiva_collector::modbus::decode::{decode, interpretations, ordered_bytes};
use enectiva_collector::modbus::plan::{Plan, ReadRequest, fallback, plan, widen};
use enectiva_collector::modbus::poll::{Link, LinkError, MeterPoller};
use enectiva_collector::modbus::rtu::count_line_errors;
use enectiva_collector::modbus::{DataType, RegisterSpec, Table, WordOrder};
use enectiva_collector::reading::{Kind, Series};
use enectiva_collector::units::Transform;
use libfuzzer_sys::fuzz_target;
use tokio_modbus::ExceptionCode;

const TYPES: [DataType; 8] = DataType::ALL;

/// Reads the input front to back; an exhausted input reads as zeros.
struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((b, rest)) => {
                self.0 = rest;
                *b
            }
            None => 0,
        }
    }

    fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.u8(), self.u8()])
    }

    fn u64(&mut self) -> u64 {
        (0..4).fold(0, |a, _| (a << 16) | u64::from(self.u16()))
    }
}

// ---- 1. words → values ----------------------------------------------------------------------

fn words_as_values(data: &[u8]) {
    let words: Vec<u16> = data
        .chunks_exact(2)
        .map(|p| u16::from_be_bytes([p[0], p[1]]))
        .collect();
    for t in TYPES {
        let n = usize::from(t.words());
        for o in WordOrder::ALL {
            // The whole answer as one value: only the exact width decodes.
            assert_eq!(decode(&words, t, o).is_ok(), words.len() == n);
            assert_eq!(ordered_bytes(&words, o).len(), 2 * words.len());
            for w in words.windows(n).take(16) {
                let d = match decode(w, t, o) {
                    Ok(d) => d,
                    Err(e) => panic!("{t} {o} {w:04X?}: {e}"),
                };
                if !d.value.is_finite() {
                    assert!(
                        d.sentinel.is_some(),
                        "{t} {o} {w:04X?}: unmarked {}",
                        d.value
                    );
                }
            }
        }
    }
    for i in 0..words.len().min(8) {
        let _ = interpretations(&words[i..]);
    }
}

// ---- 2. a meter's plan and polls ------------------------------------------------------------

/// The meter's registers: register `a` of table `t` holds `memory[(a + 7t) mod len]`, so a
/// value read from any request, merged or not, must be the same words.
struct Memory(Vec<u16>);

impl Memory {
    fn word(&self, table: Table, address: u32) -> u16 {
        if self.0.is_empty() {
            return (address as u16) ^ 0xA5A5;
        }
        let t = if table == Table::Input { 7 } else { 0 };
        self.0[((address as usize) + t) % self.0.len()]
    }
}

/// A link whose answers the remaining input scripts, one byte per request.
struct Scripted<'a> {
    memory: Memory,
    script: Bytes<'a>,
    asked: u32,
}

impl Line for Scripted<'_> {
    async fn reconnect(&mut self) -> Result<(), LinkError> {
        Ok(())
    }
}

impl Link for Scripted<'_> {
    async fn read(
        &mut self,
        _unit: u8,
        table: Table,
        start: u16,
        count: u16,
        _gap: Duration,
        _timeout: Duration,
    ) -> Result<Vec<u16>, LinkError> {
        self.asked += 1;
        let n = match self.script.u8() {
            0..=159 => i32::from(count),
            // A wrong register count: up to 128 registers too few or too many.
            160..=199 => i32::from(count) + i32::from(self.script.u8() as i8),
            200..=219 => return Err(LinkError::Exception(ExceptionCode::IllegalDataAddress)),
            220..=239 => return Err(LinkError::Exception(ExceptionCode::new(self.script.u8()))),
            240..=247 => return Err(LinkError::Timeout),
            _ => return Err(LinkError::Protocol("garbled".into())),
        };
        let n = u32::try_from(n).unwrap_or(0);
        Ok((0..n)
            .map(|i| self.memory.word(table, u32::from(start) + i))
            .collect())
    }
}

/// Polls the future once: the scripted link never waits, so it must be finished.
fn finish<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("a poll over the scripted link waited"),
    }
}

/// Every spec's words lie inside the request its slot names, at the slot's offset.
fn check_slots(p: &Plan, specs: &[RegisterSpec]) {
    assert_eq!(p.slots.len(), specs.len());
    for (s, &(r, offset)) in specs.iter().zip(&p.slots) {
        let q = p.requests[r];
        assert_eq!(q.table, s.table);
        assert_eq!(u32::from(q.start) + u32::from(offset), u32::from(s.address));
        assert!(s.end() <= q.end(), "{s:?} beyond {q}");
    }
}

fn meter_polls(data: &[u8]) {
    let mut b = Bytes(data);
    let n = usize::from(b.u8() % 16);
    let max_registers = match b.u8() {
        x @ 0..=199 => u16::from(x),
        _ => b.u16(),
    };
    let max_gap = match b.u8() {
        x @ 0..=199 => u16::from(x % 32),
        _ => b.u16(),
    };
    let mut specs = Vec::with_capacity(n);
    let mut channels = Vec::with_capacity(n);
    let mut previous: u16 = 0;
    for i in 0..n {
        let c = b.u8();
        let table = if c & 1 == 0 {
            Table::Holding
        } else {
            Table::Input
        };
        let data_type = TYPES[usize::from((c >> 1) & 7)];
        let order = WordOrder::ALL[usize::from((c >> 4) & 3)];
        let address = match c >> 6 {
            0 => previous.wrapping_add(u16::from(b.u8() % 16)),
            1 => u16::from(b.u8()),
            2 => 0xFF00 | u16::from(b.u8()),
            _ => b.u16(),
        };
        previous = address;
        let spec = RegisterSpec {
            table,
            address,
            data_type,
            order,
        };
        let mut transform = Transform::identity(data_type.significant_digits());
        let r = b.u8();
        if r < 16 {
            transform.decimals = Some(u32::from(r));
        } else if r >= 0xF0 {
            transform.scale = f64::from_bits(b.u64());
            transform.offset = f64::from_bits(b.u64());
        }
        specs.push(spec);
        channels.push(ModbusChannel {
            output: Output {
                series: Series::new(Kind::DataPoint, format!("C{i}"), None),
                unit: None,
            },
            register: spec,
            quantity: None,
            source_unit: None,
            transform,
        });
    }

    // The planner on its own, and every fallback of its plan.
    let p = plan(&specs, max_registers, max_gap);
    check_slots(&p, &specs);
    for failed in 0..=p.requests.len() {
        check_slots(&fallback(&p, failed, &specs), &specs);
    }

    // Blocks a profile would declare, and the widened plan the poller uses.
    let blocks: Vec<ReadRequest> = (0..b.u8() % 3)
        .map(|_| {
            let table = if b.u8() & 1 == 0 { Table::Holding } else { Table::Input };
            let start = b.u16();
            let room = u16::try_from(0x1_0000 - u32::from(start)).unwrap_or(u16::MAX);
            ReadRequest {
                table,
                start,
                count: (u16::from(b.u8() % 126) + 1).min(room),
            }
        })
        .collect();
    let w = widen(p.clone(), &blocks, max_registers);
    check_slots(&w, &specs);
    assert_eq!(w.requests.len(), p.requests.len());

    let memory_len = usize::from(b.u8() % 64);
    let memory = Memory((0..memory_len).map(|_| b.u16()).collect());
    let mut poller = MeterPoller::new(ModbusMeter {
        name: "fuzz".into(),
        unit_id: 1,
        interval: Duration::from_secs(60),
        profile: None,
        timeout: Duration::from_secs(1),
        delay: Duration::ZERO,
        max_registers,
        max_gap,
        blocks,
        channels,
    });
    let mut link = Scripted {
        memory,
        script: b,
        asked: 0,
    };
    let mut retired = Vec::new();
    for _ in 0..3 {
        check_slots(poller.plan(), &{
            let active: Vec<RegisterSpec> = (0..n)
                .filter(|&i| !poller.is_retired(i))
                .map(|i| specs[i])
                .collect();
            active
        });
        let before = link.asked;
        let Ok(r) = finish(poller.poll(&mut link)) else {
            continue;
        };
        assert_eq!(r.requests, link.asked - before);
        retired.extend(r.retired.iter().copied());
        assert!(r.values.windows(2).all(|w| w[0].channel < w[1].channel));
        for v in &r.values {
            assert!(
                !retired.contains(&v.channel),
                "retired channel {} read",
                v.channel
            );
            let s = specs[v.channel];
            let want: Vec<u16> = (0..u32::from(s.data_type.words()))
                .map(|k| link.memory.word(s.table, u32::from(s.address) + k))
                .collect();
            assert_eq!(v.words, want, "channel {} {s:?}", v.channel);
            let d = match decode(&want, s.data_type, s.order) {
                Ok(d) => d,
                Err(e) => panic!("{e}"),
            };
            assert_eq!(v.raw.to_bits(), d.value.to_bits());
            assert_eq!(v.sentinel, d.sentinel);
        }
    }
}

// ---- 3. the bytes of one RTU transaction ----------------------------------------------------

fn rtu_line_errors(data: &[u8]) {
    let mut b = Bytes(data);
    let unit = b.u8();
    let function = if b.u8() & 1 == 0 { 3 } else { 4 };
    let answer_len = match b.u8() {
        0..=127 => None,
        _ => Some(usize::from(b.u16())),
    };
    let rx = b.0;
    let mut e = LineErrors::default();
    count_line_errors(rx, unit, function, answer_len, &mut e);
    assert!(e.crc_errors <= 1);
    assert!(e.garbage_bytes <= rx.len() as u64);
}

fuzz_target!(|data: &[u8]| {
    words_as_values(data);
    meter_polls(data);
    rtu_line_errors(data);
});
