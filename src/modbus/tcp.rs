//! The Modbus TCP edge: one connection per `[[modbus_tcp]]` endpoint, opened on demand and
//! dropped after any timeout, transport or protocol error, so a late answer is never taken for
//! the answer to the next request (tokio-modbus 0.17 has no timeouts and a context that timed
//! out stays one answer behind). Every request runs under a timeout; the configured `delay`
//! is kept between two requests on the connection.

use std::time::{Duration, Instant};

use futures_util::FutureExt as _;

use tokio_modbus::client::{Context, Reader};
use tokio_modbus::prelude::SlaveContext;
use tokio_modbus::{Slave, client::tcp};

use super::Table;
use super::poll::{Link, LinkError};
use crate::bus::Line;

/// A Modbus TCP connection that reconnects itself.
pub struct TcpLink {
    address: String,
    connect_timeout: Duration,
    ctx: Option<Context>,
    last_done: Option<Instant>,
    /// Connections opened (for tests and `status`).
    pub connects: u64,
}

impl std::fmt::Debug for TcpLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpLink")
            .field("address", &self.address)
            .field("connected", &self.ctx.is_some())
            .field("connects", &self.connects)
            .finish()
    }
}

impl TcpLink {
    pub fn new(address: impl Into<String>, connect_timeout: Duration) -> TcpLink {
        TcpLink {
            address: address.into(),
            connect_timeout,
            ctx: None,
            last_done: None,
            connects: 0,
        }
    }

    pub fn is_connected(&self) -> bool {
        self.ctx.is_some()
    }

    /// Drops the connection; the next request opens a fresh one.
    pub fn reset(&mut self) {
        self.ctx = None;
    }

    async fn connect(&mut self, unit: u8) -> Result<(), LinkError> {
        let addrs: Vec<std::net::SocketAddr> = match tokio::time::timeout(
            self.connect_timeout,
            tokio::net::lookup_host(self.address.as_str()),
        )
        .await
        {
            Ok(Ok(a)) => a.collect(),
            Ok(Err(e)) => return Err(LinkError::Connect(format!("{}: {e}", self.address))),
            Err(_) => {
                return Err(LinkError::Connect(format!(
                    "{}: name lookup timed out",
                    self.address
                )));
            }
        };
        let mut last = format!("{}: no address", self.address);
        for addr in addrs {
            match tokio::time::timeout(self.connect_timeout, tcp::connect_slave(addr, Slave(unit)))
                .await
            {
                Ok(Ok(ctx)) => {
                    self.ctx = Some(ctx);
                    self.connects += 1;
                    return Ok(());
                }
                Ok(Err(e)) => last = format!("{addr}: {e}"),
                Err(_) => last = format!("{addr}: connect timed out"),
            }
        }
        Err(LinkError::Connect(last))
    }
}

impl Link for TcpLink {
    async fn read(
        &mut self,
        unit: u8,
        table: Table,
        start: u16,
        count: u16,
        gap: Duration,
        timeout: Duration,
    ) -> Result<Vec<u16>, LinkError> {
        if let Some(last) = self.last_done {
            tokio::time::sleep_until((last + gap).into()).await;
        }
        if self.ctx.is_none() {
            let connected = self.connect(unit).await;
            self.last_done = Some(Instant::now());
            connected?;
        }
        let Some(ctx) = self.ctx.as_mut() else {
            return Err(LinkError::Connect(self.address.clone()));
        };
        ctx.set_slave(Slave(unit));
        // tokio-modbus asserts on malformed answers in debug builds (a wrong register count);
        // input from a device must never take the bus task down.
        let call = std::panic::AssertUnwindSafe(async {
            match table {
                Table::Holding => ctx.read_holding_registers(start, count).await,
                Table::Input => ctx.read_input_registers(start, count).await,
            }
        })
        .catch_unwind();
        let answer = tokio::time::timeout(timeout, call).await;
        self.last_done = Some(Instant::now());
        let answer = match answer {
            Ok(Err(_panic)) => {
                self.ctx = None;
                return Err(LinkError::Protocol("malformed answer".into()));
            }
            Ok(Ok(a)) => Ok(a),
            Err(e) => Err(e),
        };
        let result = match answer {
            Err(_) => Err(LinkError::Timeout),
            Ok(Err(tokio_modbus::Error::Transport(e))) => Err(LinkError::Transport(e.to_string())),
            Ok(Err(tokio_modbus::Error::Protocol(e))) => Err(LinkError::Protocol(e.to_string())),
            Ok(Ok(Err(code))) => return Err(LinkError::Exception(code)),
            Ok(Ok(Ok(words))) if words.len() == usize::from(count) => return Ok(words),
            Ok(Ok(Ok(words))) => Err(LinkError::WrongCount {
                expected: count,
                got: words.len(),
            }),
        };
        // Anything but an answer or an exception leaves the connection in an unknown state.
        self.ctx = None;
        result
    }
}

impl Line for TcpLink {
    async fn reconnect(&mut self) -> Result<(), LinkError> {
        self.ctx = None;
        Ok(())
    }
}
