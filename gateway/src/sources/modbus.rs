//! The Modbus source: polls the `[[modbus]]` slaves over Modbus RTU and TCP (tokio-modbus
//! clients) and hands every poll's values to the pipeline as readings with source `"modbus"`,
//! the poll's start as `ts`, `raw * scale + offset` as value and the register's unit.
//!
//! # Buses
//! A [`Bus`] is one link and the slaves polled over it, driven by one task: every slave of one
//! RTU port (requests go one at a time on an RS-485 bus), or one TCP slave on its own
//! connection. Inside a bus the pure [`schedule::Schedule`] picks the next slave (earliest due,
//! turns between equals; a silent slave backs off) and [`plan::plan`] has grouped each slave's
//! registers into as few requests as the protocol allows; the task only does the I/O.
//!
//! # Failures
//! Each failed request is counted for its slave by reason (`timeout`, `exception` by code,
//! `corrupt`, `io`: see [`MODBUS_ERROR_REASONS`]). A request that times out ends the poll (a
//! dead slave costs the bus one timeout per attempt). After a timeout, garbage or an I/O error a
//! TCP connection is made anew (an answer arriving late would otherwise be taken for the next
//! one); on RTU the client is rebuilt on the open port and late bytes are drained before the
//! next request, and an I/O error reopens the port. The client's buffers are bounded by the
//! protocol (an RTU frame is at most 256 bytes, a TCP one 260), answers of the wrong size are
//! refused, nothing a slave sends can panic the task or hold the bus longer than the request
//! timeout (the drain is bounded by it too).
//!
//! # Not promised
//! - Readings carry no acknowledgement: appends still in progress when the process dies are
//!   lost (one poll's worth per slave at most), like serial lines.
//! - A slave whose answers decode but carry nonsense cannot be told from a working one.
//! - Polls of one slave are as regular as its bus allows: on a saturated bus, ticks are
//!   skipped rather than queued.

pub mod plan;
pub mod schedule;

use crate::ops::metrics::{IngestMetrics, ModbusSlaveStats, SlaveState};
use crate::ops::telemetry::Throttle;
use crate::pipeline::{IngestError, Pipeline};
use crate::sources::decode::IngestRules;
use futures::stream::{FuturesUnordered, StreamExt};
use gateway_buffer::{Reading, Source};
use gateway_config::{ModbusConfig, ModbusLink, ModbusRegister, Parity, RegisterKind, RtuLine};
use plan::ReadRequest;
use schedule::{Outcome, Schedule};
use std::collections::BTreeMap;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::time::Instant;
use tokio_modbus::client::Client as _;
use tokio_modbus::prelude::SlaveContext as _;
use tokio_modbus::{Request, Response, Slave};
use tokio_util::sync::CancellationToken;

pub use crate::ops::metrics::MODBUS_ERROR_REASONS;

/// Appends in progress per bus. Polls stop while this many are outstanding, which bounds
/// memory when the disk is slower than the bus; one poll makes one append, and 64 polls are far
/// more than one commit interval holds.
const MAX_PENDING_APPENDS: usize = 64;

/// One slave of a bus, resolved from its `[[modbus]]` table.
#[derive(Debug)]
struct Slave_ {
    device: String,
    unit_id: u8,
    period: Duration,
    timeout: Duration,
    backoff_max: Duration,
    registers: Vec<ModbusRegister>,
    requests: Vec<ReadRequest>,
    stats: Arc<ModbusSlaveStats>,
}

/// One link and the slaves polled over it; run it with [`Bus::run`].
#[derive(Debug)]
pub struct Bus {
    link: ModbusLink,
    slaves: Vec<Slave_>,
    rules: IngestRules,
}

/// The buses of `[[modbus]]`: one per RTU port, holding every slave on it in config order, and
/// one per TCP slave. Registers each slave's counters with `metrics`, so that they show from
/// the start.
pub fn buses(slaves: &[ModbusConfig], rules: IngestRules, metrics: &IngestMetrics) -> Vec<Bus> {
    let mut buses: Vec<Bus> = Vec::new();
    let mut by_port: BTreeMap<PathBuf, usize> = BTreeMap::new();
    for s in slaves {
        let slave = Slave_ {
            device: s.device.clone(),
            unit_id: s.unit_id,
            period: Duration::from_millis(s.poll_ms),
            timeout: Duration::from_millis(s.timeout_ms),
            backoff_max: Duration::from_millis(s.backoff_max_ms),
            requests: plan::plan(&s.registers),
            registers: s.registers.clone(),
            stats: metrics.register_modbus(&s.device, &s.link.url(), s.unit_id),
        };
        let shared = match &s.link {
            ModbusLink::Rtu(line) => by_port.get(&line.port).copied(),
            ModbusLink::Tcp { .. } => None,
        };
        match shared {
            Some(i) => buses[i].slaves.push(slave),
            None => {
                if let ModbusLink::Rtu(line) = &s.link {
                    by_port.insert(line.port.clone(), buses.len());
                }
                buses.push(Bus {
                    link: s.link.clone(),
                    slaves: vec![slave],
                    rules,
                });
            }
        }
    }
    buses
}

impl Bus {
    /// The devices polled on this bus, in config order.
    pub fn devices(&self) -> impl Iterator<Item = &str> {
        self.slaves.iter().map(|s| s.device.as_str())
    }

    /// Polls the slaves until `shutdown`, then waits for the appends in progress.
    pub async fn run(self, pipeline: Pipeline, shutdown: CancellationToken) {
        let origin = self.link.url();
        let mut link = Link::new(self.link.clone());
        let mut schedule = Schedule::new(
            self.slaves.iter().map(|s| (s.period, s.backoff_max)),
            Instant::now(),
        );
        let mut pending = FuturesUnordered::new();
        tracing::info!(link = %origin, slaves = self.slaves.len(), "modbus bus polling");
        while let Some((i, due)) = schedule.next() {
            // Wait for the slave's turn, storing meanwhile; with too many appends in progress,
            // for one of them first.
            let ready = tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                Some(()) = pending.next(), if !pending.is_empty() => false,
                _ = tokio::time::sleep_until(due), if pending.len() < MAX_PENDING_APPENDS => true,
            };
            if !ready {
                continue;
            }
            let slave = &self.slaves[i];
            schedule.start(i);
            let started = Instant::now();
            let ts = pipeline.now_ms();
            let poll = tokio::select! {
                // Dropping a request half way is safe: the link is rebuilt after it.
                _ = shutdown.cancelled() => break,
                poll = poll_slave(&mut link, slave) => poll,
            };
            let was_down = slave.stats.state() == SlaveState::Down;
            let backoff = schedule.finish(i, Instant::now(), poll.outcome());
            slave
                .stats
                .poll_done(ts, started.elapsed(), poll.state(), backoff);
            match poll.outcome() {
                Outcome::Silent if schedule.silent_polls(i) == 1 => {
                    tracing::warn!(device = %slave.device, link = %origin, unit = slave.unit_id, error = slave.stats.last_error().unwrap_or_default(), "modbus slave stopped answering; retrying with backoff");
                }
                Outcome::Answered if was_down => {
                    tracing::info!(device = %slave.device, link = %origin, unit = slave.unit_id, "modbus slave answers again");
                }
                _ => {}
            }
            let readings = self.readings(slave, &poll.answers, ts, &pipeline, &origin);
            if !readings.is_empty() {
                let pipeline = pipeline.clone();
                let cancel = shutdown.clone();
                let stats = slave.stats.clone();
                pending.push(async move {
                    let n = readings.len() as u64;
                    if let Err(e) = pipeline.ingest(Source::Modbus, readings, &cancel).await {
                        not_stored(&stats, n, &e);
                    }
                });
            }
        }
        while pending.next().await.is_some() {}
        tracing::info!(link = %origin, "modbus bus stopped");
    }

    /// The readings of one poll's answers; a value the ingest rules refuse (a non-finite `f32`)
    /// is rejected like any unreadable input, with its registers as the dead letter's payload.
    fn readings(
        &self,
        slave: &Slave_,
        answers: &[(usize, Vec<u16>)],
        ts: i64,
        pipeline: &Pipeline,
        origin: &str,
    ) -> Vec<Reading> {
        let now = pipeline.now_ms();
        let mut readings = Vec::new();
        for (request, words) in answers {
            let request = &slave.requests[*request];
            for &r in &request.values {
                let register = &slave.registers[r];
                let at = usize::from(register.address - request.address);
                let span = &words[at.min(words.len())..];
                // The answer's length was checked against the request, so this always is Some.
                let Some(raw) = plan::raw_value(register.value, span) else {
                    continue;
                };
                let value = plan::scaled(register, raw);
                match self.rules.reading(
                    &slave.device,
                    &register.metric,
                    value,
                    register.unit.clone(),
                    ts,
                    now,
                    Source::Modbus,
                ) {
                    Ok(reading) => readings.push(reading),
                    Err(why) => {
                        let words = &span[..usize::from(register.value.span()).min(span.len())];
                        let payload = format!(
                            "{} unit {} {} {} {:04x?}",
                            slave.device, slave.unit_id, register.kind, register.address, words
                        );
                        pipeline.reject(origin, payload.as_bytes(), &why);
                    }
                }
            }
        }
        readings
    }
}

/// Readings the buffer did not store: counted for the slave and logged (throttled). Like
/// serial lines they cannot be asked for again, and holding them for a disk that may stay full
/// would grow without bound.
fn not_stored(stats: &ModbusSlaveStats, n: u64, e: &IngestError) {
    static LOG: Throttle = Throttle::new(Duration::from_secs(10));
    stats.readings_not_stored.fetch_add(n, Relaxed);
    if let Some(suppressed) = LOG.allow() {
        tracing::error!(device = %stats.device, error = %e, readings = n, suppressed, "modbus readings not stored (counted in /metrics)");
    }
}

/// What one poll of a slave got.
#[derive(Debug, Default)]
struct PollResult {
    /// (request index, its registers, bits as 0/1) for every request answered with values.
    answers: Vec<(usize, Vec<u16>)>,
    /// Requests answered at all (values, an exception, a garbled frame).
    answered: usize,
    /// Requests that failed.
    failed: usize,
}

impl PollResult {
    fn outcome(&self) -> Outcome {
        if self.answered > 0 {
            Outcome::Answered
        } else {
            Outcome::Silent
        }
    }

    fn state(&self) -> SlaveState {
        match (self.answered, self.failed) {
            (0, _) => SlaveState::Down,
            (_, 0) => SlaveState::Up,
            _ => SlaveState::Errors,
        }
    }
}

/// Sends a slave's requests one after another; stops at the first that gets no answer.
async fn poll_slave(link: &mut Link, slave: &Slave_) -> PollResult {
    let mut result = PollResult::default();
    slave.stats.polls.fetch_add(1, Relaxed);
    for (i, request) in slave.requests.iter().enumerate() {
        slave.stats.requests.fetch_add(1, Relaxed);
        match link.read(slave.unit_id, request, slave.timeout).await {
            Ok(words) => {
                result.answered += 1;
                result.answers.push((i, words));
            }
            Err(failure) => {
                result.failed += 1;
                let code = match failure {
                    Failure::Exception(code) => Some(code),
                    _ => None,
                };
                let detail = format!(
                    "{} {} {}+{}: {failure}",
                    slave.device, request.kind, request.address, request.count
                );
                slave.stats.add_error(failure.reason(), code, detail);
                if failure.answered() {
                    result.answered += 1;
                } else {
                    break;
                }
            }
        }
    }
    result
}

/// Why one request got no values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
enum Failure {
    /// Nothing came back within the request timeout.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The slave answered with this Modbus exception code.
    #[error("exception {0:#04x}")]
    Exception(u8),
    /// What came back is no answer to the request: a wrong CRC or broken framing (RTU), a
    /// header that is not Modbus TCP, another request's or slave's answer, or the wrong amount
    /// of data.
    #[error("corrupt answer: {0}")]
    Corrupt(String),
    /// The port or connection could not be opened, or failed.
    #[error("i/o: {0}")]
    Io(String),
}

impl Failure {
    /// Its reason label (one of [`MODBUS_ERROR_REASONS`]).
    fn reason(&self) -> &'static str {
        match self {
            Failure::Timeout(_) => "timeout",
            Failure::Exception(_) => "exception",
            Failure::Corrupt(_) => "corrupt",
            Failure::Io(_) => "io",
        }
    }

    /// Whether something came back: the slave is there.
    fn answered(&self) -> bool {
        matches!(self, Failure::Exception(_) | Failure::Corrupt(_))
    }
}

/// A byte stream shared between the link and the tokio-modbus client on it, counting the
/// bytes received. Shared, so that after a garbled answer the client (and the state of its
/// frame decoder) can be rebuilt on the same open port; counted, so that a timeout after which
/// bytes did arrive is told apart (corrupt) from silence.
struct Shared<T> {
    // A std mutex, locked only inside one poll call at a time: one task drives the bus.
    io: Arc<Mutex<T>>,
    received: Arc<AtomicU64>,
}

impl<T> Clone for Shared<T> {
    fn clone(&self) -> Self {
        Shared {
            io: self.io.clone(),
            received: self.received.clone(),
        }
    }
}

impl<T> std::fmt::Debug for Shared<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("received", &self.received.load(Relaxed))
            .finish()
    }
}

impl<T> Shared<T> {
    fn new(io: T) -> Self {
        Shared {
            io: Arc::new(Mutex::new(io)),
            received: Arc::new(AtomicU64::new(0)),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, T> {
        self.io.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Shared<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut *self.lock()).poll_read(cx, buf);
        let n = buf.filled().len().saturating_sub(before);
        self.received.fetch_add(n as u64, Relaxed);
        result
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Shared<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.lock()).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.lock()).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.lock()).poll_shutdown(cx)
    }
}

/// An open port or connection.
enum Port {
    Tcp(Shared<tokio::net::TcpStream>),
    Rtu(Shared<tokio_serial::SerialStream>),
}

/// The link of a bus: opened or connected when needed, rebuilt after failures.
struct Link {
    spec: ModbusLink,
    port: Option<Port>,
    client: Option<tokio_modbus::client::Context>,
    /// RTU: bytes of an answer that failed may still come; read them away first.
    drain: bool,
}

impl Link {
    fn new(spec: ModbusLink) -> Link {
        Link {
            spec,
            port: None,
            client: None,
            drain: false,
        }
    }

    /// Reads what `request` asks for from slave `unit`: registers, or bits as 0 and 1.
    async fn read(
        &mut self,
        unit: u8,
        request: &ReadRequest,
        timeout: Duration,
    ) -> Result<Vec<u16>, Failure> {
        let result = self.try_read(unit, request, timeout).await;
        if let Err(failure) = &result {
            self.after(failure);
        }
        result
    }

    async fn try_read(
        &mut self,
        unit: u8,
        request: &ReadRequest,
        timeout: Duration,
    ) -> Result<Vec<u16>, Failure> {
        let received = self.open(timeout).await?;
        if let (Some(Port::Rtu(port)), ModbusLink::Rtu(line)) = (&self.port, &self.spec) {
            let gap = frame_gap(line);
            if std::mem::take(&mut self.drain) {
                drain(port, gap, timeout).await;
            }
            // The silence that ends the previous frame on the bus (3.5 characters).
            tokio::time::sleep(gap).await;
        }
        let Some(client) = self.client.as_mut() else {
            return Err(Failure::Io("not connected".into()));
        };
        client.set_slave(Slave(unit));
        let (address, count) = (request.address, request.count);
        let call = match request.kind {
            RegisterKind::Holding => Request::ReadHoldingRegisters(address, count),
            RegisterKind::Input => Request::ReadInputRegisters(address, count),
            RegisterKind::Coil => Request::ReadCoils(address, count),
            RegisterKind::Discrete => Request::ReadDiscreteInputs(address, count),
        };
        let answer = match tokio::time::timeout(timeout, client.call(call)).await {
            Err(_) if received() > 0 => {
                return Err(Failure::Corrupt(format!(
                    "{} byte(s) came back but no valid frame within {timeout:?} (wrong CRC or \
                     broken framing)",
                    received()
                )));
            }
            Err(_) => return Err(Failure::Timeout(timeout)),
            Ok(Err(tokio_modbus::Error::Transport(e)))
                if e.kind() == io::ErrorKind::InvalidData =>
            {
                return Err(Failure::Corrupt(e.to_string()));
            }
            Ok(Err(tokio_modbus::Error::Transport(e))) => return Err(Failure::Io(e.to_string())),
            Ok(Err(tokio_modbus::Error::Protocol(e))) => {
                return Err(Failure::Corrupt(e.to_string()));
            }
            Ok(Ok(Err(code))) => return Err(Failure::Exception(u8::from(code))),
            Ok(Ok(Ok(answer))) => answer,
        };
        let wanted = usize::from(count);
        let values = match (request.kind, answer) {
            (RegisterKind::Holding, Response::ReadHoldingRegisters(words))
            | (RegisterKind::Input, Response::ReadInputRegisters(words))
                if words.len() == wanted =>
            {
                words
            }
            // Bits come in whole bytes: at least `count`, fewer than 8 more.
            (RegisterKind::Coil, Response::ReadCoils(bits))
            | (RegisterKind::Discrete, Response::ReadDiscreteInputs(bits))
                if (wanted..wanted + 8).contains(&bits.len()) =>
            {
                bits.iter().take(wanted).map(|b| u16::from(*b)).collect()
            }
            (_, answer) => {
                return Err(Failure::Corrupt(format!(
                    "asked for {count} {}, got {}",
                    request.kind,
                    describe(&answer)
                )));
            }
        };
        Ok(values)
    }

    /// Opens the port or connects, and builds the client, when not done yet. Returns a probe
    /// of the bytes received since.
    async fn open(&mut self, timeout: Duration) -> Result<impl Fn() -> u64 + use<>, Failure> {
        if self.port.is_none() {
            self.port = Some(match &self.spec {
                ModbusLink::Tcp { host, port } => {
                    let connect = tokio::net::TcpStream::connect((host.as_str(), *port));
                    let stream = match tokio::time::timeout(timeout, connect).await {
                        Ok(Ok(stream)) => stream,
                        Ok(Err(e)) => {
                            return Err(Failure::Io(format!("connect {host}:{port}: {e}")));
                        }
                        Err(_) => {
                            return Err(Failure::Io(format!(
                                "connect {host}:{port}: no answer within {timeout:?}"
                            )));
                        }
                    };
                    // Requests are small and wait for their answer: send each at once.
                    let _ = stream.set_nodelay(true);
                    Port::Tcp(Shared::new(stream))
                }
                ModbusLink::Rtu(line) => {
                    Port::Rtu(Shared::new(open_serial(line).map_err(|e| {
                        Failure::Io(format!("open {}: {e}", line.port.display()))
                    })?))
                }
            });
            self.client = None;
        }
        let received = match &self.port {
            Some(Port::Tcp(s)) => s.received.clone(),
            Some(Port::Rtu(s)) => s.received.clone(),
            None => Arc::new(AtomicU64::new(0)),
        };
        if self.client.is_none() {
            self.client = match &self.port {
                Some(Port::Tcp(s)) => Some(tokio_modbus::client::tcp::attach(s.clone())),
                Some(Port::Rtu(s)) => Some(tokio_modbus::client::rtu::attach(s.clone())),
                None => None,
            };
        }
        let before = received.load(Relaxed);
        Ok(move || received.load(Relaxed).saturating_sub(before))
    }

    /// After a failed request: what must be made anew before the next one.
    fn after(&mut self, failure: &Failure) {
        match (failure, &self.spec) {
            // The slave answered, in order: the link is fine.
            (Failure::Exception(_), _) => {}
            // An answer may still be on its way, or the stream is out of step: a new
            // connection starts clean.
            (_, ModbusLink::Tcp { .. }) => {
                self.client = None;
                self.port = None;
            }
            (Failure::Io(_), ModbusLink::Rtu(_)) => {
                self.client = None;
                self.port = None;
            }
            // A fresh client on the open port; late bytes are drained before the next request.
            (Failure::Timeout(_) | Failure::Corrupt(_), ModbusLink::Rtu(_)) => {
                self.client = None;
                self.drain = true;
            }
        }
    }
}

/// What an unexpected answer was, for the error text.
fn describe(answer: &Response) -> String {
    match answer {
        Response::ReadHoldingRegisters(w) => format!("{} holding registers", w.len()),
        Response::ReadInputRegisters(w) => format!("{} input registers", w.len()),
        Response::ReadCoils(b) => format!("{} coils", b.len()),
        Response::ReadDiscreteInputs(b) => format!("{} discrete inputs", b.len()),
        other => format!("function {:?}", other.function_code()),
    }
}

fn open_serial(line: &RtuLine) -> Result<tokio_serial::SerialStream, tokio_serial::Error> {
    use tokio_serial::SerialPortBuilderExt;
    let parity = match line.parity {
        Parity::None => tokio_serial::Parity::None,
        Parity::Even => tokio_serial::Parity::Even,
        Parity::Odd => tokio_serial::Parity::Odd,
    };
    let stop_bits = match line.stop_bits {
        2 => tokio_serial::StopBits::Two,
        _ => tokio_serial::StopBits::One,
    };
    tokio_serial::new(line.port.to_string_lossy(), line.baud)
        .data_bits(tokio_serial::DataBits::Eight)
        .parity(parity)
        .stop_bits(stop_bits)
        .open_native_async()
}

/// The silence between two RTU frames: 3.5 characters of 11 bits, and 1.75 ms above 19200 baud
/// (Modbus over serial line, 2.5.1.1).
fn frame_gap(line: &RtuLine) -> Duration {
    if line.baud > 19_200 {
        return Duration::from_micros(1750);
    }
    Duration::from_micros(38_500_000 / u64::from(line.baud.max(1)))
}

/// Reads away what is still arriving on an RTU port until it has been quiet for `gap`, for at
/// most `limit`, so a late or babbling answer is not taken for the next one.
async fn drain(port: &Shared<tokio_serial::SerialStream>, gap: Duration, limit: Duration) {
    let mut reader = port.clone();
    let mut buf = [0u8; 256];
    let _ = tokio::time::timeout(limit, async {
        loop {
            match tokio::time::timeout(gap.max(Duration::from_millis(2)), reader.read(&mut buf))
                .await
            {
                Ok(Ok(n)) if n > 0 => continue,
                _ => break,
            }
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_frame_gap_is_three_and_a_half_characters_up_to_19200_baud() {
        let line = |baud| RtuLine {
            port: "/dev/null".into(),
            baud,
            parity: Parity::None,
            stop_bits: 1,
        };
        assert_eq!(frame_gap(&line(9600)), Duration::from_micros(4010));
        assert_eq!(frame_gap(&line(19_200)), Duration::from_micros(2005));
        assert_eq!(frame_gap(&line(115_200)), Duration::from_micros(1750));
    }

    #[test]
    fn failures_say_whether_the_slave_answered() {
        assert!(!Failure::Timeout(Duration::from_millis(5)).answered());
        assert!(!Failure::Io("refused".into()).answered());
        assert!(Failure::Exception(2).answered());
        assert!(Failure::Corrupt("crc".into()).answered());
        for f in [
            Failure::Timeout(Duration::ZERO),
            Failure::Exception(4),
            Failure::Corrupt(String::new()),
            Failure::Io(String::new()),
        ] {
            assert!(MODBUS_ERROR_REASONS.contains(&f.reason()));
        }
    }
}
