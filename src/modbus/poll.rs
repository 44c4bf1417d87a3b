//! One Modbus meter's poll: its merged read requests, the exception-02 fallback it remembers,
//! and the decoding of every channel, over any [`Link`] (TCP now, RTU on a serial line later).
//!
//! Errors are shaped by the caller's next decision (DESIGN): a broken link (timeout, transport,
//! protocol mismatch, wrong register count) fails this meter's slot and the link reconnects; a
//! Modbus exception fails the slot on a working link; a register the meter does not have
//! (exception 02 on a single value) retires that channel with one WARN and the rest go on.
//! This module never opens sockets itself and never reads the clock.

use std::future::Future;
use std::time::Duration;

use tokio_modbus::ExceptionCode;

use super::decode::decode;
use super::plan::{Plan, fallback, plan, widen};
use super::{RegisterSpec, Table};
use crate::bus::{BusMeter, Line, Sample};
use crate::config::ModbusMeter;

pub use crate::bus::{LineErrors, LinkError};

/// The exception's name as the Modbus specification gives it.
pub fn exception_name(code: ExceptionCode) -> String {
    match code {
        ExceptionCode::IllegalFunction => "illegal function".into(),
        ExceptionCode::IllegalDataAddress => "illegal data address".into(),
        ExceptionCode::IllegalDataValue => "illegal data value".into(),
        ExceptionCode::ServerDeviceFailure => "server device failure".into(),
        ExceptionCode::Acknowledge => "acknowledge".into(),
        ExceptionCode::ServerDeviceBusy => "server device busy".into(),
        ExceptionCode::MemoryParityError => "memory parity error".into(),
        ExceptionCode::GatewayPathUnavailable => "gateway path unavailable".into(),
        ExceptionCode::GatewayTargetDevice => "gateway target device failed to respond".into(),
        ExceptionCode::Custom(c) => format!("exception 0x{c:02X}"),
    }
}

/// Something that reads registers from a unit id: a TCP connection or a serial line. It keeps
/// `gap` (the configured `delay`) of quiet between two transactions, on a serial line on top of
/// the t3.5 that ends every frame, and resets itself after an error that leaves it in an
/// unknown state.
pub trait Link: Line {
    fn read(
        &mut self,
        unit: u8,
        table: Table,
        start: u16,
        count: u16,
        gap: Duration,
        timeout: Duration,
    ) -> impl Future<Output = Result<Vec<u16>, LinkError>> + Send;
}

/// One channel's value from a poll.
#[derive(Debug, Clone, PartialEq)]
pub struct ChannelValue {
    /// Index into the meter's `channels`.
    pub channel: usize,
    /// The registers as read.
    pub words: Vec<u16>,
    /// Decoded (f32 as its shortest decimal) before the channel's transform.
    pub raw: f64,
    /// After scale, unit conversion, offset and rounding: what is sent.
    pub value: f64,
    /// Set when the meter answered with a "not available" value.
    pub sentinel: Option<String>,
}

/// The outcome of one poll.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PollResult {
    pub values: Vec<ChannelValue>,
    /// Read requests sent (including fallbacks).
    pub requests: u32,
    /// Channels found unavailable in this poll (logged once by the caller).
    pub retired: Vec<usize>,
    /// The meter's merged requests were split after exception 02 in this poll.
    pub fell_back: bool,
}

/// A meter and what the poller has learnt about it.
#[derive(Debug, Clone)]
pub struct MeterPoller {
    pub meter: ModbusMeter,
    /// Channels that answered exception 02 on their own: never read again.
    retired: Vec<bool>,
    /// Indices of the channels still read, in the order of `specs`.
    active: Vec<usize>,
    specs: Vec<RegisterSpec>,
    plan: Plan,
    fallen_back: bool,
}

impl MeterPoller {
    pub fn new(meter: ModbusMeter) -> MeterPoller {
        let n = meter.channels.len();
        let mut p = MeterPoller {
            meter,
            retired: vec![false; n],
            active: Vec::new(),
            specs: Vec::new(),
            plan: Plan::default(),
            fallen_back: false,
        };
        p.replan();
        p
    }

    fn replan(&mut self) {
        self.active = (0..self.meter.channels.len())
            .filter(|i| !self.retired[*i])
            .collect();
        self.specs = self
            .active
            .iter()
            .map(|i| self.meter.channels[*i].register)
            .collect();
        self.plan = if self.fallen_back {
            // After a meter refused a merged request and a channel was retired since, read
            // every value on its own rather than risk the refusal again.
            plan(&self.specs, 1, 0)
        } else {
            widen(
                plan(&self.specs, self.meter.max_registers, self.meter.max_gap),
                &self.meter.blocks,
                self.meter.max_registers,
            )
        };
    }

    /// The requests of one poll cycle as planned now.
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    pub fn is_retired(&self, channel: usize) -> bool {
        self.retired.get(channel).copied().unwrap_or(false)
    }

    /// Reads every active channel. Fails as a whole on a broken link or an exception other
    /// than "illegal data address", so a slot's readings come from one consistent poll.
    pub async fn poll<L: Link>(&mut self, link: &mut L) -> Result<PollResult, LinkError> {
        let mut result = PollResult::default();
        // Each restart removes a channel or splits a request, so this ends.
        let bound = self.meter.channels.len() * 2 + 4;
        'attempt: for _ in 0..bound {
            if self.active.is_empty() {
                return Ok(result);
            }
            let mut answers: Vec<Vec<u16>> = Vec::with_capacity(self.plan.requests.len());
            for (ri, req) in self.plan.requests.clone().iter().enumerate() {
                result.requests += 1;
                let read = link
                    .read(
                        self.meter.unit_id,
                        req.table,
                        req.start,
                        req.count,
                        self.meter.delay,
                        self.meter.timeout,
                    )
                    .await;
                match read {
                    Ok(words) => answers.push(words),
                    Err(LinkError::Exception(ExceptionCode::IllegalDataAddress)) => {
                        let members = self.plan.members(ri);
                        let distinct: std::collections::BTreeSet<(Table, u16)> = members
                            .iter()
                            .map(|m| (self.specs[*m].table, self.specs[*m].address))
                            .collect();
                        if distinct.len() > 1 {
                            // Split only the refused request; the plan is kept, so the meter
                            // remembers it for every later poll.
                            self.fallen_back = true;
                            result.fell_back = true;
                            self.plan = fallback(&self.plan, ri, &self.specs);
                        } else {
                            for m in members {
                                let ch = self.active[m];
                                self.retired[ch] = true;
                                result.retired.push(ch);
                            }
                            self.replan();
                        }
                        continue 'attempt;
                    }
                    Err(e) => return Err(e),
                }
            }
            for (si, spec) in self.specs.iter().enumerate() {
                let Some(&(ri, offset)) = self.plan.slots.get(si) else {
                    continue;
                };
                let Some(words) = answers.get(ri) else {
                    continue;
                };
                let start = usize::from(offset);
                let end = start + usize::from(spec.data_type.words());
                let Some(w) = words.get(start..end) else {
                    return Err(LinkError::WrongCount {
                        expected: self.plan.requests[ri].count,
                        got: words.len(),
                    });
                };
                let ch = self.active[si];
                let channel = &self.meter.channels[ch];
                let d = decode(w, spec.data_type, spec.order)
                    .map_err(|e| LinkError::Protocol(e.to_string()))?;
                result.values.push(ChannelValue {
                    channel: ch,
                    words: w.to_vec(),
                    raw: d.value,
                    value: channel.transform.apply(d.value),
                    sentinel: d.sentinel,
                });
            }
            result.values.sort_by_key(|v| v.channel);
            return Ok(result);
        }
        Err(LinkError::Protocol(
            "the meter keeps refusing requests (illegal data address)".into(),
        ))
    }
}

impl<L: Link> BusMeter<L> for MeterPoller {
    fn name(&self) -> &str {
        &self.meter.name
    }

    fn interval(&self) -> Duration {
        self.meter.interval
    }

    fn has_channels(&self) -> bool {
        !self.meter.channels.is_empty()
    }

    fn max_duration(&self, _line: &L) -> Duration {
        // Each request may time out; a fallback may add one request per channel. Configured
        // durations have no upper bound ("213503982334d" is valid), so this saturates.
        let requests = self.plan.requests.len() + self.meter.channels.len() + 1;
        let requests = u32::try_from(requests).unwrap_or(u32::MAX);
        self.meter
            .timeout
            .saturating_add(self.meter.delay)
            .saturating_add(Duration::from_millis(50))
            .saturating_mul(requests)
    }

    async fn poll(&mut self, line: &mut L, bus: &str) -> Result<Vec<Sample>, LinkError> {
        let res = MeterPoller::poll(self, line).await?;
        for ch in &res.retired {
            let c = &self.meter.channels[*ch];
            tracing::warn!(
                bus,
                meter = %self.meter.name,
                import_id = %c.output.series.import_id,
                register = c.register.address,
                "register not available on this meter (illegal data address): channel skipped from now on"
            );
        }
        if res.fell_back {
            tracing::info!(
                bus,
                meter = %self.meter.name,
                "meter refused a merged request (illegal data address): reading its values in smaller requests from now on"
            );
        }
        Ok(res
            .values
            .into_iter()
            .map(|v| Sample {
                output: self.meter.channels[v.channel].output.clone(),
                value: v.value,
                sentinel: v.sentinel,
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use std::pin::pin;
    use std::task::{Context, Poll, Waker};

    use proptest::prelude::*;

    use super::*;
    use crate::config::{ModbusChannel, Output};
    use crate::modbus::{DataType, WordOrder};
    use crate::reading::{Kind, Series};
    use crate::units::Transform;

    /// How the scripted meter answers one request.
    #[derive(Debug, Clone, Copy)]
    enum Answer {
        /// The register words asked for, `delta` more or fewer (a foreign or stale answer).
        Words(i32),
        Exception(u8),
        Timeout,
    }

    /// A meter whose register `a` of table `t` always holds `word(t, a)`, answering requests
    /// as its script says (exactly, once the script is used up).
    struct Scripted {
        script: Vec<Answer>,
        asked: usize,
    }

    fn word(table: Table, address: u32) -> u16 {
        let t = u32::from(table == Table::Input);
        (address.wrapping_mul(40_503) ^ (t * 0x5A5A) ^ (address >> 3)) as u16
    }

    impl Line for Scripted {
        async fn reconnect(&mut self) -> Result<(), LinkError> {
            Ok(())
        }
    }

    impl Link for Scripted {
        async fn read(
            &mut self,
            _unit: u8,
            table: Table,
            start: u16,
            count: u16,
            _gap: Duration,
            _timeout: Duration,
        ) -> Result<Vec<u16>, LinkError> {
            let answer = self
                .script
                .get(self.asked)
                .copied()
                .unwrap_or(Answer::Words(0));
            self.asked += 1;
            match answer {
                Answer::Words(delta) => {
                    let n = (i32::from(count) + delta).max(0) as u32;
                    Ok((0..n).map(|i| word(table, u32::from(start) + i)).collect())
                }
                Answer::Exception(c) => Err(LinkError::Exception(ExceptionCode::new(c))),
                Answer::Timeout => Err(LinkError::Timeout),
            }
        }
    }

    /// Runs a poll to completion: the scripted link never waits, so one poll of the future must
    /// finish it.
    fn finish<F: Future>(f: F) -> F::Output {
        let mut f = pin!(f);
        match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(v) => v,
            Poll::Pending => panic!("a poll over the scripted link waited"),
        }
    }

    const TYPES: [DataType; 8] = DataType::ALL;

    fn meter(specs: &[RegisterSpec], max_registers: u16, max_gap: u16) -> ModbusMeter {
        ModbusMeter {
            name: "m".into(),
            unit_id: 1,
            interval: Duration::from_secs(60),
            profile: None,
            timeout: Duration::from_secs(1),
            delay: Duration::ZERO,
            max_registers,
            max_gap,
            blocks: Vec::new(),
            channels: specs
                .iter()
                .enumerate()
                .map(|(i, s)| ModbusChannel {
                    output: Output {
                        series: Series::new(Kind::DataPoint, format!("C{i}"), None),
                        unit: None,
                    },
                    register: *s,
                    quantity: None,
                    source_unit: None,
                    transform: Transform::identity(s.data_type.significant_digits()),
                })
                .collect(),
        }
    }

    fn arb_spec() -> impl Strategy<Value = RegisterSpec> {
        (
            any::<bool>(),
            prop_oneof![0u16..48, any::<u16>(), 0xFFF0u16..=0xFFFF],
            prop::sample::select(TYPES.to_vec()),
            prop::sample::select(WordOrder::ALL.to_vec()),
        )
            .prop_map(|(input, address, data_type, order)| RegisterSpec {
                table: if input { Table::Input } else { Table::Holding },
                address,
                data_type,
                order,
            })
    }

    fn arb_answer() -> impl Strategy<Value = Answer> {
        prop_oneof![
            6 => Just(Answer::Words(0)),
            2 => (-3i32..=3).prop_map(Answer::Words),
            2 => Just(Answer::Exception(2)),
            1 => prop::sample::select(vec![1u8, 3, 4, 6, 0x0B, 0x7F]).prop_map(Answer::Exception),
            1 => Just(Answer::Timeout),
        ]
    }

    #[test]
    fn merged_answer_is_sliced_per_channel() {
        let specs = [
            RegisterSpec {
                table: Table::Input,
                address: 0,
                data_type: DataType::F32,
                order: WordOrder::Abcd,
            },
            RegisterSpec {
                table: Table::Input,
                address: 6,
                data_type: DataType::U16,
                order: WordOrder::Abcd,
            },
        ];
        let mut p = MeterPoller::new(meter(&specs, 125, 8));
        assert_eq!(p.plan().requests.len(), 1);
        let mut link = Scripted {
            script: vec![],
            asked: 0,
        };
        let r = finish(p.poll(&mut link)).unwrap();
        assert_eq!(r.requests, 1);
        assert_eq!(r.values[1].words, [word(Table::Input, 6)]);
        // One register short: the second value's word is missing.
        let mut link = Scripted {
            script: vec![Answer::Words(-1)],
            asked: 0,
        };
        assert_eq!(
            finish(p.poll(&mut link)),
            Err(LinkError::WrongCount {
                expected: 7,
                got: 6
            })
        );
    }

    #[test]
    fn longest_poll_of_an_absurd_config_saturates() {
        // The longest durations a config accepts, on a meter with 300 channels: the product
        // used to overflow (a panic in the bus task) beyond about 500 requests.
        let specs: Vec<RegisterSpec> = (0..300)
            .map(|i| RegisterSpec {
                table: Table::Holding,
                address: i * 10,
                data_type: DataType::U16,
                order: WordOrder::Abcd,
            })
            .collect();
        let mut m = meter(&specs, 1, 0);
        m.timeout = Duration::from_millis(u64::MAX);
        m.delay = Duration::from_millis(u64::MAX);
        let p = MeterPoller::new(m);
        let link = Scripted {
            script: vec![],
            asked: 0,
        };
        assert_eq!(BusMeter::max_duration(&p, &link), Duration::MAX);
        // An ordinary meter, one merged request: (timeout + delay + 50 ms) × (1 + 2 channels + 1).
        let mut m = meter(&specs[..2], 125, 16);
        m.delay = Duration::from_millis(20);
        let p = MeterPoller::new(m);
        assert_eq!(
            BusMeter::max_duration(&p, &link),
            Duration::from_millis(1070) * 4
        );
    }

    proptest! {
        /// Any channel set, any answers (short, long, exceptions, timeouts) over three polls of
        /// one meter: no panic, and every value comes from exactly the registers its channel
        /// names, decoded as its type and order.
        #[test]
        fn polls_slice_and_decode_any_answers(
            specs in prop::collection::vec(arb_spec(), 0..14),
            max_registers in prop_oneof![0u16..=8, 0u16..=130],
            max_gap in prop_oneof![0u16..=10, any::<u16>()],
            script in prop::collection::vec(arb_answer(), 0..24),
        ) {
            let mut poller = MeterPoller::new(meter(&specs, max_registers, max_gap));
            let exact = script.iter().all(|a| matches!(a, Answer::Words(0)));
            let mut link = Scripted { script, asked: 0 };
            let mut retired = Vec::new();
            for _ in 0..3 {
                let before = link.asked;
                let result = finish(poller.poll(&mut link));
                if exact {
                    prop_assert!(result.is_ok(), "{result:?}");
                }
                let Ok(r) = result else { continue };
                prop_assert_eq!(r.requests as usize, link.asked - before);
                retired.extend(r.retired.iter().copied());
                prop_assert!(r.values.windows(2).all(|w| w[0].channel < w[1].channel));
                for v in &r.values {
                    prop_assert!(!retired.contains(&v.channel));
                    let s = specs[v.channel];
                    let want: Vec<u16> = (0..u32::from(s.data_type.words()))
                        .map(|k| word(s.table, u32::from(s.address) + k))
                        .collect();
                    prop_assert_eq!(&v.words, &want, "channel {}", v.channel);
                    let d = decode(&want, s.data_type, s.order).unwrap();
                    prop_assert!(v.raw.to_bits() == d.value.to_bits());
                    prop_assert_eq!(&v.sentinel, &d.sentinel);
                }
                if exact {
                    prop_assert_eq!(r.values.len() + retired.len(), specs.len());
                }
            }
        }
    }
}
