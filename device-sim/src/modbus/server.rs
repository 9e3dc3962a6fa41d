//! The server loops: Modbus TCP (many connections) and Modbus RTU (one line, one request at a
//! time), moving frames between the transport and [`Slaves`].

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use nix::fcntl::{FcntlArg, OFlag, fcntl};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::frame::{self, MAX_RTU_ADU, RtuDecoder};
use super::slave::{Reply, Slaves, Unserved};

/// Concurrent TCP connections served; more are accepted and closed at once (and counted). A
/// gateway polls over a few connections; the bound keeps a flood of idle connections to this
/// many tasks of one small buffer each.
pub const MAX_CONNECTIONS: usize = 64;

/// The largest TCP frame: MBAP header of 6 bytes before the length, and a length of at most 254.
const MAX_TCP_ADU: usize = 6 + 254;

/// MBAP protocol id of a corrupted TCP answer (Modbus is 0).
pub const CORRUPT_PROTOCOL_ID: u16 = 1;

/// Shortest pause that ends an RTU frame of unknown shape. The standard's 3.5 characters (4 ms
/// at 9600 baud) would split frames on a pty or a USB adapter, which deliver bytes in bursts up
/// to their latency timer apart (16 ms by default on FTDI chips).
const RTU_MIN_GAP: Duration = Duration::from_millis(20);

/// Counts of the transport, beside the units' own.
#[derive(Debug, Default)]
pub struct LineCounts {
    /// RTU: bytes dropped while resynchronising (garbage, bad CRC, frames cut short).
    pub discarded_bytes: AtomicU64,
    /// TCP: connections accepted and served.
    pub connections: AtomicU64,
    /// TCP: connections closed at once because [`MAX_CONNECTIONS`] were open.
    pub refused_connections: AtomicU64,
    /// TCP: connections closed on a frame whose MBAP header no Modbus peer sends.
    pub bad_headers: AtomicU64,
}

/// What the loops share.
#[derive(Debug)]
pub struct Shared {
    /// The units. A std mutex: it is held only to decide one reply, never across an await.
    pub slaves: Mutex<Slaves>,
    /// Transport counts.
    pub line: LineCounts,
    /// The run's start, for fault windows.
    pub started: Instant,
}

impl Shared {
    fn slaves(&self) -> MutexGuard<'_, Slaves> {
        // A panic while holding the lock would already have ended the process (no task
        // catches one), so a poisoned lock is not expected; its data is still consistent.
        self.slaves.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn reply(&self, frame: &frame::Frame, unserved: Unserved) -> Reply {
        let elapsed_ms = self.started.elapsed().as_millis() as u64;
        self.slaves().handle(frame, elapsed_ms, unserved)
    }
}

/// Take one sample of every unit each `period` until cancelled.
pub async fn sample(shared: Arc<Shared>, period: Duration, cancel: CancellationToken) {
    // The units took their first sample when they were made.
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = ticks.tick() => shared.slaves().sample(),
        }
    }
}

/// Accept TCP connections until cancelled; each is served by its own task on `tracker`.
pub async fn serve_tcp(
    listener: TcpListener,
    shared: Arc<Shared>,
    tracker: TaskTracker,
    cancel: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let accepted = tokio::select! {
            _ = cancel.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors and the like: wait a little rather than spin.
                tracing::warn!("accepting a Modbus TCP connection: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
            shared.line.refused_connections.fetch_add(1, Relaxed);
            drop(stream);
            continue;
        };
        shared.line.connections.fetch_add(1, Relaxed);
        let (shared, cancel) = (Arc::clone(&shared), cancel.clone());
        tracker.spawn(async move {
            if let Err(e) = serve_connection(stream, &shared, &cancel).await {
                tracing::debug!("Modbus TCP connection ended: {e}");
            }
            drop(permit);
        });
    }
}

/// Serve one TCP connection: frames in order, answers in order, until the peer closes, sends a
/// header no Modbus peer sends, or the run stops.
async fn serve_connection(
    mut stream: TcpStream,
    shared: &Shared,
    cancel: &CancellationToken,
) -> io::Result<()> {
    let _ = stream.set_nodelay(true);
    let mut buf = [0u8; MAX_TCP_ADU];
    let mut filled = 0;
    let mut out = Vec::with_capacity(MAX_TCP_ADU);
    loop {
        loop {
            let (tcp, used) = match frame::decode_mbap(&buf[..filled]) {
                Ok(Some(whole)) => whole,
                Ok(None) => break,
                Err(e) => {
                    shared.line.bad_headers.fetch_add(1, Relaxed);
                    return Err(io::Error::new(io::ErrorKind::InvalidData, e));
                }
            };
            buf.copy_within(used..filled, 0);
            filled -= used;
            if let Reply::Pdu { pdu, corrupt } =
                shared.reply(&tcp.frame, Unserved::GatewayTargetFailed)
            {
                let protocol = if corrupt { CORRUPT_PROTOCOL_ID } else { 0 };
                out.clear();
                frame::encode_mbap(tcp.transaction, protocol, tcp.frame.unit, &pdu, &mut out);
                // Cancel-safe enough: at a stop the answer is abandoned, the peer sees a close.
                tokio::select! {
                    _ = cancel.cancelled() => return Ok(()),
                    written = stream.write_all(&out) => written?,
                }
            }
        }
        // A whole frame fits the buffer and was taken above, so there is room to read into.
        let n = tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            n = stream.read(&mut buf[filled..]) => n?,
        };
        if n == 0 {
            return Ok(());
        }
        filled += n;
    }
}

/// A tty, a pty master or any character device, read and written without blocking the runtime.
#[derive(Debug)]
pub struct Line {
    fd: AsyncFd<File>,
}

impl Line {
    /// Wrap `file`, switching it to non-blocking mode. Needs a Tokio runtime.
    pub fn new(file: File) -> io::Result<Line> {
        let flags = fcntl(file.as_fd(), FcntlArg::F_GETFL).map_err(io::Error::from)?;
        let flags = OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK;
        fcntl(file.as_fd(), FcntlArg::F_SETFL(flags)).map_err(io::Error::from)?;
        // `AsyncFd::new` is deprecated for types whose raw fd may change or close under it;
        // a `File` owns its one fd until dropped, which is what `register` (unsafe, and this
        // workspace forbids unsafe code) asks the caller to promise.
        #[allow(deprecated)]
        let fd = AsyncFd::new(file)?;
        Ok(Line { fd })
    }

    /// Open a serial port read-write in raw mode at `baud`.
    pub fn open_tty(path: &Path, baud: u32) -> io::Result<Line> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)?;
        crate::serial::set_raw(&file, baud)?;
        Line::new(file)
    }

    /// Read what is there, waiting for at least one byte. Cancel-safe: nothing is consumed
    /// unless it is returned.
    async fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let mut ready = self.fd.readable().await?;
            if let Ok(result) = ready.try_io(|fd| fd.get_ref().read(buf)) {
                return result;
            }
        }
    }

    async fn write_all(&self, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            let mut ready = self.fd.writable().await?;
            if let Ok(result) = ready.try_io(|fd| fd.get_ref().write(bytes)) {
                bytes = &bytes[result?..];
            }
        }
        Ok(())
    }
}

/// Serve Modbus RTU on `line` until cancelled: one request at a time, answers paced by `baud`
/// (10 bits a byte, as 8N1).
pub async fn serve_rtu(
    line: Line,
    baud: u32,
    shared: Arc<Shared>,
    cancel: CancellationToken,
) -> io::Result<()> {
    let byte_time = Duration::from_secs_f64(10.0 / f64::from(baud.max(1)));
    let gap = (byte_time * 7 / 2).max(RTU_MIN_GAP);
    let mut decoder = RtuDecoder::new();
    let mut buf = [0u8; MAX_RTU_ADU];
    let mut out = Vec::with_capacity(MAX_RTU_ADU);
    loop {
        let room = decoder.room().min(buf.len());
        // Bytes, or a pause while something waits. Both branches are cancel-safe: a read
        // consumes nothing unless it returns.
        let idle = tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            n = line.read(&mut buf[..room]) => {
                let n = n?;
                if n == 0 {
                    // A hung-up tty reads as end of file until it is reopened; do not spin.
                    tokio::time::sleep(RTU_MIN_GAP).await;
                }
                decoder.push(&buf[..n]);
                false
            }
            _ = tokio::time::sleep(gap), if decoder.pending() > 0 => true,
        };
        // Every whole frame in, one at a time as on a bus; at a pause, also what it ends.
        loop {
            let frame = decoder.next_frame(idle);
            // This loop is the decoder's only user, so storing its total keeps the count exact.
            shared
                .line
                .discarded_bytes
                .store(decoder.discarded(), Relaxed);
            let Some(frame) = frame else { break };
            let Reply::Pdu { pdu, corrupt } = shared.reply(&frame, Unserved::Ignore) else {
                continue;
            };
            out.clear();
            frame::encode_rtu(frame.unit, &pdu, corrupt, &mut out);
            // The last byte of a real slave's answer arrives this long after the first.
            tokio::time::sleep(byte_time * out.len() as u32).await;
            tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                written = line.write_all(&out) => written?,
            }
        }
    }
}
