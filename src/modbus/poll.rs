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
use super::plan::{Plan, fallback, plan};
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
/// at least `gap` of quiet between two transactions and resets itself after an error that
/// leaves it in an unknown state.
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
            plan(&self.specs, self.meter.max_registers, self.meter.max_gap)
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
        // Each request may time out; a fallback may add one request per channel.
        let requests = (self.plan.requests.len() + self.meter.channels.len() + 1) as u32;
        (self.meter.timeout + self.meter.delay + Duration::from_millis(50)) * requests
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
