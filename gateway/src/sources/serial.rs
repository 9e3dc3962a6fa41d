//! The serial source: one task per `[[serial]]` port, lines per WIRE.md §2.
//!
//! Serial lines carry no acknowledgement, so the task keeps reading while earlier lines are being
//! committed; what was read but not yet durable when the process dies (at most about one commit
//! interval of lines) is lost. A port that disappears, errors or reaches EOF is reopened with
//! capped backoff; a line cut short by that is counted as `partial_line`.

use crate::ops::telemetry::Throttle;
use crate::pipeline::{IngestError, Pipeline};
use crate::sources::decode::{IngestRules, SerialDecoder};
use crate::sources::framing::{Frame, LineFramer};
use futures::stream::{FuturesUnordered, StreamExt};
use gateway_buffer::Source;
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio_util::sync::CancellationToken;

/// One port, resolved from the config.
#[derive(Debug, Clone)]
pub struct SerialSettings {
    pub port: PathBuf,
    pub baud: u32,
    pub device: String,
    pub max_line_bytes: usize,
    pub reopen_max: Duration,
    /// The `[ingest]` rules readings are checked against.
    pub rules: IngestRules,
}

/// Appends in progress per port. Reads stop while this many are outstanding, which bounds
/// memory when the disk is slower than the line; 64 chunks is far more than one commit
/// interval of a 115200-baud line needs.
const MAX_PENDING_APPENDS: usize = 64;

/// Reads the port until `shutdown`, reopening it whenever it goes away.
pub async fn run(settings: SerialSettings, pipeline: Pipeline, shutdown: CancellationToken) {
    let origin = settings.port.display().to_string();
    let decoder = SerialDecoder::new(settings.device.clone()).with_rules(settings.rules);
    let mut framer = LineFramer::new(settings.max_line_bytes);
    let mut pending = FuturesUnordered::new();
    let mut backoff = Duration::from_millis(100);
    let mut buf = vec![0u8; 4096];

    'reopen: while !shutdown.is_cancelled() {
        let mut port = match open(&settings) {
            Ok(p) => {
                tracing::info!(port = %origin, baud = settings.baud, "serial port open");
                backoff = Duration::from_millis(100);
                p
            }
            Err(e) => {
                tracing::warn!(port = %origin, error = %e, retry_in_ms = backoff.as_millis() as u64, "serial port unavailable");
                tokio::select! {
                    _ = shutdown.cancelled() => break 'reopen,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(settings.reopen_max);
                continue;
            }
        };
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break 'reopen,
                Some(()) = pending.next(), if !pending.is_empty() => {}
                read = port.read(&mut buf), if pending.len() < MAX_PENDING_APPENDS => {
                    let n = match read {
                        // EOF: the other end closed (a pty) or the device went away.
                        Ok(0) => { lost(&pipeline, &origin, &mut framer, "end of file"); break; }
                        Ok(n) => n,
                        Err(e) => { lost(&pipeline, &origin, &mut framer, &e.to_string()); break; }
                    };
                    let readings = decode_chunk(&decoder, &pipeline, &origin, &mut framer, &buf[..n]);
                    if !readings.is_empty() {
                        let pipeline = pipeline.clone();
                        // Serial input cannot be held back at the source, so shutdown does not
                        // cancel an append that is waiting for buffer space any sooner than it
                        // cancels the rest.
                        let cancel = shutdown.clone();
                        let origin = origin.clone();
                        pending.push(async move {
                            let n = readings.len() as u64;
                            if let Err(e) = pipeline.ingest(Source::Serial, readings, &cancel).await {
                                not_stored(&pipeline, &origin, n, &e);
                            }
                        });
                    }
                }
            }
        }
        // Reopen after a pause, so a port that keeps failing does not spin.
        tokio::select! {
            _ = shutdown.cancelled() => break 'reopen,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(settings.reopen_max);
    }
    while pending.next().await.is_some() {}
    tracing::info!(port = %origin, "serial source stopped");
}

/// Serial readings the buffer refused: counted by reason and logged (throttled). A serial line
/// cannot be left unacknowledged, and holding it in memory for a disk that may stay full would
/// grow without bound, so it is dropped.
fn not_stored(pipeline: &Pipeline, origin: &str, n: u64, e: &IngestError) {
    static LOG: Throttle = Throttle::new(Duration::from_secs(10));
    let reason = match e {
        IngestError::Append(a) if a.is_write_error() => "buffer_write_error",
        _ => "shutdown",
    };
    pipeline.metrics().add_serial_dropped(reason, n);
    if let Some(suppressed) = LOG.allow() {
        tracing::error!(port = %origin, error = %e, readings = n, reason, suppressed, "serial readings not stored (counted in /metrics)");
    }
}

fn open(settings: &SerialSettings) -> Result<tokio_serial::SerialStream, tokio_serial::Error> {
    use tokio_serial::SerialPortBuilderExt;
    tokio_serial::new(settings.port.to_string_lossy(), settings.baud).open_native_async()
}

fn lost(pipeline: &Pipeline, origin: &str, framer: &mut LineFramer, why: &str) {
    pipeline.metrics().source_disconnects.fetch_add(1, Relaxed);
    tracing::warn!(port = %origin, reason = why, "serial port lost; reopening");
    if let Some(partial) = framer.finish() {
        pipeline.reject(origin, b"", &partial);
    }
}

/// Frames and decodes one chunk; bad lines are counted and parked, good readings returned.
fn decode_chunk(
    decoder: &SerialDecoder,
    pipeline: &Pipeline,
    origin: &str,
    framer: &mut LineFramer,
    chunk: &[u8],
) -> Vec<gateway_buffer::Reading> {
    let now = pipeline.now_ms();
    let mut readings = Vec::new();
    for frame in framer.push(chunk) {
        match frame {
            Frame::Line(line) => match decoder.decode(&line, now) {
                Ok(rs) => readings.extend(rs),
                Err(why) => pipeline.reject(origin, &line, &why),
            },
            Frame::Dropped(why) => pipeline.reject(origin, b"", &why),
        }
    }
    readings
}
