//! The admin HTTP API on `admin.listen`: `/healthz`, `/metrics` (Prometheus text), `/status`
//! (JSON), `POST /reload`, and the status page at `/`.
//!
//! # Access
//! Loopback by default; the config refuses any other address without `admin.token_env`. With a
//! token, `/metrics`, `/status` and `POST /reload` need `Authorization: Bearer <token>` (else
//! 401). Two routes answer without it:
//! - `/healthz`, so that a load balancer or `curl -f` can check the gateway without holding the
//!   secret. It says only the status and the degraded reasons; to a client without the token
//!   the reasons leave out the error text sled or the OS gave (it can name paths on the box).
//! - `/`, the status page: a shell without any data. Its script fetches `/status` with the
//!   token, taken from the URL fragment (`/#token=…`: browsers never send a fragment, so it is
//!   in no request line or log) or typed into the form the page shows on a 401, and kept in the
//!   tab's `sessionStorage`.
//!
//! # Connections
//! Served with hyper's HTTP/1 connection directly, because `axum::serve` has no header
//! timeout. [`Limits`] bounds what clients can hold: a connection must send a whole request
//! head within [`Limits::header_read_timeout`] of being accepted or of its last response (a
//! slow-loris or an idle keep-alive connection is closed then), and the rest of the request
//! within [`Limits::request_timeout`] (else 408); at most [`Limits::max_connections`] are
//! served at once and further clients wait, unaccepted, in the kernel's listen backlog; none
//! is served longer than [`Limits::max_connection_age`] (a client that never reads its answers
//! stalls writes, where no read timeout runs); a request head is read into at most 16 KiB; a
//! request body over [`Limits::max_body_bytes`] is answered 413. On `stop` the listener
//! closes, idle connections are closed and requests in progress finish.
//!
//! Not promised: fairness between clients beyond the backlog's order, TLS (put a reverse proxy
//! in front for that), HTTP/2.

use crate::alarm::rules_from_config;
use crate::ops::ListenError;
use crate::pipeline::Pipeline;
use crate::sinks::SinkView;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use gateway_buffer::{BufferHealth, Lane, LaneStats, MovedAside, Source};
use gateway_config::{Config, Secret};
use gateway_forwarder::ForwarderHandle;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use serde_json::{Value, json};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// What a client of the admin API can hold. [`Limits::default`] in the gateway; tests shrink
/// the timeout and the cap to see them act.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// A connection that has not sent a complete request head this long after it was accepted,
    /// or after its previous response, is closed: a slow-loris client, or an idle keep-alive
    /// one. Default 10 s.
    pub header_read_timeout: Duration,
    /// Connections served at once (at least 1). Beyond it, new clients wait in the kernel's
    /// listen backlog, not accepted, costing no task or buffer here, until a served connection
    /// closes. Default 64: a few scrapers, a status page and the CLI need a handful.
    pub max_connections: usize,
    /// A request not answered this long after its head arrived is answered 408 and its
    /// connection closed: a client that sends its body slowly, or never. The routes themselves
    /// answer in milliseconds. Default 10 s.
    pub request_timeout: Duration,
    /// Largest request body in bytes; a larger one is answered 413 without reading it further.
    /// No route takes a body (`POST /reload` has none). Default 64 KiB.
    pub max_body_bytes: usize,
    /// Longest a connection is served, however busy: a client that sends requests and never
    /// reads the answers stalls hyper's writes, where no read timeout runs, and would otherwise
    /// hold its slot for ever. Clients reconnect. Default 60 s.
    pub max_connection_age: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_read_timeout: Duration::from_secs(10),
            max_connections: 64,
            request_timeout: Duration::from_secs(10),
            max_body_bytes: 64 * 1024,
            max_connection_age: Duration::from_secs(60),
        }
    }
}

/// Read buffer of one admin connection: a request head must fit.
const MAX_HEAD_BYTES: usize = 16 * 1024;

/// How long the accept loop waits after `accept` failed (out of file descriptors, mostly)
/// before it tries again; `axum::serve` waits the same.
const ACCEPT_RETRY: Duration = Duration::from_secs(1);

/// What the admin API reads from; cheap to clone.
#[derive(Debug, Clone)]
pub struct AdminState {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    gateway_id: String,
    pipeline: Pipeline,
    /// Every forwarder sink, `[upstream]` first (see [`Inner::upstream`]).
    sinks: Vec<SinkView>,
    config_path: Option<PathBuf>,
    token: Option<Secret>,
    started: Instant,
}

impl Inner {
    /// The `[upstream]` forwarder, which the wiring puts first among the sinks.
    fn upstream(&self) -> &ForwarderHandle {
        &self.sinks[0].forwarder
    }
}

impl AdminState {
    /// `sinks` must start with `[upstream]` (consumer [`gateway_forwarder::CONSUMER`]).
    pub fn new(
        config: &Config,
        pipeline: Pipeline,
        sinks: Vec<SinkView>,
        config_path: Option<PathBuf>,
    ) -> AdminState {
        debug_assert_eq!(
            sinks.first().map(|s| s.name.as_str()),
            Some(gateway_forwarder::CONSUMER)
        );
        AdminState {
            inner: Arc::new(Inner {
                gateway_id: config.gateway_id.clone(),
                pipeline,
                sinks,
                config_path,
                token: config.admin.token.clone(),
                started: Instant::now(),
            }),
        }
    }

    /// Re-reads the config file and swaps in its alarm rules. An invalid file keeps the old
    /// rules; the error says why. Other settings need a restart.
    pub fn reload(&self) -> Result<String, String> {
        let Some(path) = &self.inner.config_path else {
            return Err("reload: running on built-in defaults; there is no file to re-read".into());
        };
        let config =
            Config::load(path).map_err(|e| format!("reload: {e}; keeping the current rules"))?;
        let rules = rules_from_config(&config);
        let n = rules.len();
        self.inner.pipeline.reload_rules(rules);
        Ok(format!("reload: {n} alarm rule(s) from {}", path.display()))
    }

    /// The JSON of `/status`.
    pub async fn status(&self) -> Value {
        let moved_aside_on_disk = moved_aside_json(&list_moved_aside(self).await);
        let p = &self.inner.pipeline;
        let m = p.metrics();
        let ack = m.ack_latency();
        let b = p.buffer().stats();
        let f = self.inner.upstream().stats();
        let engine = p.engine_stats();
        let lane = |s: &LaneStats| {
            json!({
                "records": s.records,
                "bytes": s.bytes,
                "oldest_age_s": s.oldest_age_ms.map(|ms| ms as f64 / 1000.0),
                "appended": s.appended_total,
                "dropped": s.dropped_quota,
                "expired": s.expired,
                "undecodable": s.undecodable,
                "evicted_in_flight": s.evicted_in_flight,
            })
        };
        json!({
            "gateway_id": self.inner.gateway_id,
            "version": env!("CARGO_PKG_VERSION"),
            "uptime_s": self.inner.started.elapsed().as_secs(),
            "ingest": {
                "readings": { "mqtt": m.readings(Source::Mqtt), "serial": m.readings(Source::Serial), "modbus": m.readings(Source::Modbus) },
                "rejected": m.rejected().filter(|(_, n)| *n > 0).map(|(r, n)| (r.to_owned(), json!(n))).collect::<serde_json::Map<String, Value>>(),
                "rejected_total": m.rejected_total(),
                "mqtt_connected": m.mqtt_connected(),
                "mqtt_subscribed": m.mqtt_subscribed(),
                "blocked_full": m.blocked_full.load(std::sync::atomic::Ordering::Relaxed),
                "source_disconnects": m.source_disconnects.load(std::sync::atomic::Ordering::Relaxed),
                "ack_latency_ms": { "p50": ack.quantile_ms(0.5), "p99": ack.quantile_ms(0.99), "count": ack.count() },
            },
            "buffer": {
                "lanes": { "alarms": lane(&b.alarms), "readings": lane(&b.readings) },
                "dead_letters": {
                    "count": b.dead_letters.count, "bytes": b.dead_letters.bytes, "dropped": b.dead_letters.dropped,
                    "input": { "count": b.dead_letters.input.count, "bytes": b.dead_letters.input.bytes, "dropped": b.dead_letters.input.dropped },
                    "refused": { "count": b.dead_letters.refused.count, "bytes": b.dead_letters.refused.bytes, "dropped": b.dead_letters.refused.dropped },
                },
                "moved_aside": b.moved_aside,
                "moved_aside_on_disk": moved_aside_on_disk,
                "missing_at_open": b.missing_at_open,
                "last_durable_seq": b.last_durable_seq,
                "commits": b.commits,
                "commit_ms": {
                    "write": commit_ms(&b.commit_times.write),
                    "flush": commit_ms(&b.commit_times.flush),
                    "idle_flush": commit_ms(&b.commit_times.idle_flush),
                },
                "write_errors": b.write_errors,
                "writable": p.buffer().health().is_writable(),
            },
            "upstream": {
                "state": f.upstream.as_str(),
                "backoff_ms": f.backoff_ms,
                "down_since_ms": f.down_since_ms,
                "last_delivered_ms": f.last_delivered_ms,
                "last_error": f.last_error,
                "batches_sent": f.batches_sent,
                "failed_retryable": f.failed_retryable,
                "failed_permanent": f.failed_permanent,
                "timeouts": f.timeouts,
                "retries": f.retries,
                "in_flight": f.in_flight,
                "concurrency": f.concurrency,
                "records_delivered": { "alarms": f.records_delivered.alarms, "readings": f.records_delivered.readings },
                "bytes_delivered": f.bytes_delivered,
                "bytes_per_raw_reading": bytes_per_raw_reading(f.bytes_delivered, m),
                "latency_avg_s": if f.latency.count > 0 { Some(f.latency.sum_s / f.latency.count as f64) } else { None },
            },
            "sinks": self.inner.sinks.iter().map(|sink| {
                let f = sink.forwarder.stats();
                let lost = p.buffer().consumer_stats(&sink.name).unwrap_or_default();
                json!({
                    "name": sink.name,
                    "kind": sink.kind,
                    "state": f.upstream.as_str(),
                    "last_delivered_ms": f.last_delivered_ms,
                    "last_error": f.last_error,
                    "batches_sent": f.batches_sent,
                    "failed_retryable": f.failed_retryable,
                    "failed_permanent": f.failed_permanent,
                    "in_flight": f.in_flight,
                    "concurrency": f.concurrency,
                    "records_delivered": { "alarms": f.records_delivered.alarms, "readings": f.records_delivered.readings },
                    "records_dead_lettered": { "alarms": f.records_dead_lettered.alarms, "readings": f.records_dead_lettered.readings },
                    "dropped": { "alarms": lost.alarms.dropped_quota, "readings": lost.readings.dropped_quota },
                    "expired": { "alarms": lost.alarms.expired, "readings": lost.readings.expired },
                    "lag_seqs": { "alarms": sink.lag_seqs(p.buffer(), &b, Lane::Alarms), "readings": sink.lag_seqs(p.buffer(), &b, Lane::Readings) },
                })
            }).collect::<Vec<_>>(),
            "modbus": modbus_json(m),
            "alarms": {
                "active": p.active_alarms(),
                "events": m.alarm_events.load(std::sync::atomic::Ordering::Relaxed),
                "series": engine.series,
                "series_refused": engine.series_refused,
                "series_evicted": engine.series_evicted,
                "local_errors": m.local_alarm_errors.load(std::sync::atomic::Ordering::Relaxed),
                "out_of_order": engine.out_of_order,
            },
            "windows": p.reduce_stats(),
        })
    }

    /// Whether a request with `headers` may see everything: no token is configured, or it
    /// carries the token as `Authorization: Bearer <token>`.
    fn authorized(&self, headers: &HeaderMap) -> bool {
        let Some(token) = &self.inner.token else {
            return true;
        };
        headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|presented| token.matches(presented))
    }

    /// `/healthz`: which parts are degraded. Ingest and buffer being up is what makes it 200;
    /// a buffer that cannot write makes it 503, with the reason. `detail` adds the error text
    /// of a buffer failure to its reason.
    fn health(&self, detail: bool) -> (StatusCode, Value) {
        let m = self.inner.pipeline.metrics();
        let f = self.inner.upstream().stats();
        let mut degraded = Vec::new();
        degraded.extend(Degraded::of_buffer(self.inner.pipeline.buffer().health()));
        if m.mqtt_enabled() && !m.mqtt_connected() {
            degraded.push(Degraded::MqttNotConnected);
        } else if m.mqtt_enabled() && !m.mqtt_subscribed() {
            degraded.push(Degraded::MqttNotSubscribed);
        }
        match f.upstream {
            gateway_forwarder::UpstreamState::Down => degraded.push(Degraded::UpstreamDown),
            gateway_forwarder::UpstreamState::BackingOff => {
                degraded.push(Degraded::UpstreamBackingOff);
            }
            _ => {}
        }
        for sink in self.inner.sinks.iter().skip(1) {
            if sink.forwarder.stats().upstream == gateway_forwarder::UpstreamState::Down {
                degraded.push(Degraded::SinkDown(sink.name.clone()));
            }
        }
        for slave in m.modbus() {
            if slave.state() == crate::ops::metrics::SlaveState::Down {
                degraded.push(Degraded::ModbusDown(slave.device.clone()));
            }
        }
        let (code, status) = if degraded.iter().any(Degraded::is_unhealthy) {
            (StatusCode::SERVICE_UNAVAILABLE, "unhealthy")
        } else if degraded.is_empty() {
            (StatusCode::OK, "ok")
        } else {
            (StatusCode::OK, "degraded")
        };
        let reasons: Vec<String> = degraded.iter().map(|d| d.reason(detail)).collect();
        (code, json!({ "status": status, "degraded": reasons }))
    }
}

/// One reason why `/healthz` is not plainly "ok".
#[derive(Debug, Clone, PartialEq, Eq)]
enum Degraded {
    /// A write of the buffer database failed; nothing more is acknowledged (503).
    BufferWriteFailed { error: String },
    /// Writes succeed again after failing; the gateway restarts to reopen the database (503).
    BufferReopenNeeded { error: String },
    /// MQTT is configured and the broker connection is down.
    MqttNotConnected,
    /// Connected, but the broker has not granted every topic filter.
    MqttNotSubscribed,
    /// The upstream is down.
    UpstreamDown,
    /// The upstream failed and the forwarder waits before retrying.
    UpstreamBackingOff,
    /// A `[[sink]]` (by name) is down.
    SinkDown(String),
    /// A Modbus slave (by device name) gave no answer at its last poll.
    ModbusDown(String),
}

impl Degraded {
    /// The buffer's part, or `None` while it writes.
    fn of_buffer(health: BufferHealth) -> Option<Degraded> {
        match health {
            BufferHealth::Writable => None,
            BufferHealth::WriteFailed { error, .. } => Some(Degraded::BufferWriteFailed { error }),
            BufferHealth::ReopenNeeded { error, .. } => {
                Some(Degraded::BufferReopenNeeded { error })
            }
        }
    }

    /// Whether this makes `/healthz` 503: the buffer, not ingest or the upstream.
    fn is_unhealthy(&self) -> bool {
        matches!(
            self,
            Degraded::BufferWriteFailed { .. } | Degraded::BufferReopenNeeded { .. }
        )
    }

    /// The line in `degraded`. Without `detail` the error sled or the OS reported is left out:
    /// it can name paths and devices of the box, and `/healthz` answers without the token.
    fn reason(&self, detail: bool) -> String {
        let error = |e: &str| {
            if detail {
                format!(" ({e})")
            } else {
                String::new()
            }
        };
        match self {
            Degraded::BufferWriteFailed { error: e } => format!(
                "buffer: writes fail{}; readings are not acknowledged (MQTT messages wait at the \
                 broker); checking for free space every {}s",
                error(e),
                gateway_buffer::PROBE_INTERVAL.as_secs()
            ),
            Degraded::BufferReopenNeeded { error: e } => format!(
                "buffer: writes succeed again after failing{}; restarting to reopen the database",
                error(e)
            ),
            Degraded::MqttNotConnected => "mqtt: not connected to the broker".into(),
            Degraded::MqttNotSubscribed => {
                "mqtt: subscription not granted by the broker (yet)".into()
            }
            Degraded::UpstreamDown => "upstream: down".into(),
            Degraded::UpstreamBackingOff => "upstream: backing off".into(),
            Degraded::SinkDown(name) => format!("sink {name}: down"),
            Degraded::ModbusDown(device) => {
                format!("modbus {device}: not answering (polled with backoff)")
            }
        }
    }
}

/// A histogram's samples for `family`, whose "labels" carry the series suffix too: `_bucket`
/// per bound of [`gateway_buffer::LATENCY_BUCKETS_S`] and `+Inf`, `_sum` (seconds) and `_count`,
/// each with `labels` (`name="value",…`, or empty).
fn histogram_samples(h: &gateway_buffer::DurationHistogram, labels: &str) -> Vec<(String, f64)> {
    let (sep, braced) = if labels.is_empty() {
        ("", String::new())
    } else {
        (",", format!("{{{labels}}}"))
    };
    let counts = h.cumulative.iter().copied().chain(std::iter::repeat(0));
    gateway_buffer::LATENCY_BUCKETS_S
        .iter()
        .map(|b| b.to_string())
        .chain(["+Inf".to_owned()])
        .zip(counts)
        .map(|(le, c)| (format!("_bucket{{{labels}{sep}le=\"{le}\"}}"), c as f64))
        .chain([
            (format!("_sum{braced}"), h.sum_us as f64 / 1e6),
            (format!("_count{braced}"), h.count() as f64),
        ])
        .collect()
}

/// One phase of the group commits for `/status`: how many, p50 and p99 (bucket bounds, an
/// estimate from above) and the longest, in ms.
fn commit_ms(h: &gateway_buffer::DurationHistogram) -> Value {
    json!({
        "count": h.count(),
        "p50": h.quantile_ms(0.5),
        "p99": h.quantile_ms(0.99),
        "max": h.max_us as f64 / 1000.0,
    })
}

/// `buffer.moved_aside_on_disk` of `/status`: the databases moved aside and still on disk.
fn moved_aside_json(listed: &Result<Vec<MovedAside>, String>) -> Value {
    match listed {
        Ok(list) => json!({
            "count": list.len(),
            "bytes": list.iter().map(|a| a.bytes).sum::<u64>(),
            "databases": list.iter().map(|a| json!({
                "path": a.path.display().to_string(),
                "bytes": a.bytes,
                "moved_at_ms": a.moved_at_ms,
            })).collect::<Vec<_>>(),
            "error": null,
        }),
        Err(e) => json!({ "count": null, "bytes": null, "databases": [], "error": e }),
    }
}

/// The moved-aside databases of the buffer directory, listed on the blocking pool (it reads
/// the directory, and an SD card can be slow to answer); the error as text.
async fn list_moved_aside(state: &AdminState) -> Result<Vec<MovedAside>, String> {
    let buffer = state.inner.pipeline.buffer().clone();
    match tokio::task::spawn_blocking(move || buffer.moved_aside_on_disk()).await {
        Ok(listed) => listed.map_err(|e| e.to_string()),
        Err(e) => Err(format!("listing the moved-aside databases failed: {e}")),
    }
}

/// The `gateway_sink_*` families: one series per forwarder sink (`sink="upstream"` for
/// `[upstream]`, whose `gateway_upstream_*` families stay as they were).
fn render_sink_metrics(out: &mut String, state: &AdminState) {
    let buffer = state.inner.pipeline.buffer();
    let sinks: Vec<_> = state
        .inner
        .sinks
        .iter()
        .map(|s| {
            let lost = buffer.consumer_stats(&s.name).unwrap_or_default();
            (s, s.forwarder.stats(), lost)
        })
        .collect();
    let buffer_stats = buffer.stats();
    let lanes = [Lane::Alarms, Lane::Readings];
    let mut family = |name: &str, kind: &str, help: &str, samples: Vec<(String, f64)>| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, v) in samples {
            let _ = writeln!(out, "{name}{labels} {v}");
        }
    };
    let per_sink = |f: &dyn Fn(&gateway_forwarder::ForwarderStats) -> f64| {
        sinks
            .iter()
            .map(|(s, stats, _)| (format!("{{sink=\"{}\"}}", s.name), f(stats)))
            .collect::<Vec<_>>()
    };
    let per_lane = |f: &dyn Fn(
        &gateway_forwarder::ForwarderStats,
        &gateway_buffer::ConsumerStats,
        Lane,
    ) -> f64| {
        sinks
            .iter()
            .flat_map(|(s, stats, lost)| {
                lanes.map(|l| {
                    (
                        format!("{{sink=\"{}\",lane=\"{}\"}}", s.name, l.as_str()),
                        f(stats, lost, l),
                    )
                })
            })
            .collect::<Vec<_>>()
    };
    family(
        "gateway_sink_records_delivered_total",
        "counter",
        "Records a sink delivered, by sink and lane.",
        per_lane(&|f, _, l| f.records_delivered.get(l) as f64),
    );
    family(
        "gateway_sink_dropped_total",
        "counter",
        "Records the buffer's quota (drop_oldest) or max_age_s removed before the sink had them, by sink and lane: each sink counts what it lost.",
        per_lane(&|_, lost, l| {
            let lane = lost.lane(l);
            (lane.dropped_quota + lane.expired) as f64
        }),
    );
    family(
        "gateway_sink_dead_lettered_total",
        "counter",
        "Records of batches a sink refused for good, kept as dead letters, by sink and lane.",
        per_lane(&|f, _, l| f.records_dead_lettered.get(l) as f64),
    );
    family(
        "gateway_sink_lag_seqs",
        "gauge",
        "How far a sink's cursor is behind the newest durable record, in seqs, by sink and lane: an upper bound on the records it has yet to deliver (0 when the lane holds nothing undelivered).",
        sinks
            .iter()
            .flat_map(|(s, _, _)| {
                lanes.map(|l| {
                    (
                        format!("{{sink=\"{}\",lane=\"{}\"}}", s.name, l.as_str()),
                        s.lag_seqs(buffer, &buffer_stats, l) as f64,
                    )
                })
            })
            .collect(),
    );
    family(
        "gateway_sink_batches_sent_total",
        "counter",
        "Batches a sink delivered.",
        per_sink(&|f| f.batches_sent as f64),
    );
    family(
        "gateway_sink_attempts_failed_total",
        "counter",
        "Attempts that failed and will be retried, by sink.",
        per_sink(&|f| f.failed_retryable as f64),
    );
    family(
        "gateway_sink_concurrency",
        "gauge",
        "Readings batches a sink lets out at once now (adaptive, between 1 and its max_in_flight).",
        per_sink(&|f| f.concurrency as f64),
    );
    family(
        "gateway_sink_up",
        "gauge",
        "1 unless the sink is backing off or down.",
        per_sink(&|f| {
            f64::from(u8::from(!matches!(
                f.upstream,
                gateway_forwarder::UpstreamState::Down
                    | gateway_forwarder::UpstreamState::BackingOff
            )))
        }),
    );
}

/// `modbus` of `/status`: one object per polled slave, in config order.
fn modbus_json(m: &crate::ops::metrics::IngestMetrics) -> Value {
    let relaxed = std::sync::atomic::Ordering::Relaxed;
    m.modbus()
        .iter()
        .map(|s| {
            json!({
                "device": s.device,
                "url": s.url,
                "unit_id": s.unit_id,
                "state": s.state().as_str(),
                "polls": s.polls.load(relaxed),
                "polls_complete": s.polls_complete.load(relaxed),
                "requests": s.requests.load(relaxed),
                "errors": s.errors().map(|(r, n)| (r.to_owned(), json!(n))).collect::<serde_json::Map<String, Value>>(),
                "exceptions": s.exceptions().into_iter().map(|(c, n)| (format!("{c:#04x}"), json!(n))).collect::<serde_json::Map<String, Value>>(),
                "readings_not_stored": s.readings_not_stored.load(relaxed),
                "last_poll_ms": s.last_poll_ms(),
                "last_poll_latency_ms": s.last_poll_ms().map(|_| s.last_poll_latency().as_secs_f64() * 1000.0),
                "backoff_ms": s.backoff().as_millis() as u64,
                "last_error": s.last_error(),
            })
        })
        .collect::<Vec<_>>()
        .into()
}

/// The `gateway_modbus_*` families: one series per polled slave (`device` label), errors also
/// by reason and exceptions by code.
fn render_modbus_metrics(out: &mut String, m: &crate::ops::metrics::IngestMetrics) {
    let slaves = m.modbus();
    let relaxed = std::sync::atomic::Ordering::Relaxed;
    let label = |device: &str| device.replace('\\', "\\\\").replace('"', "\\\"");
    let mut family = |name: &str, kind: &str, help: &str, samples: Vec<(String, f64)>| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, v) in samples {
            let _ = writeln!(out, "{name}{labels} {v}");
        }
    };
    let per_slave = |f: &dyn Fn(&crate::ops::metrics::ModbusSlaveStats) -> f64| {
        slaves
            .iter()
            .map(|s| (format!("{{device=\"{}\"}}", label(&s.device)), f(s)))
            .collect::<Vec<_>>()
    };
    family(
        "gateway_modbus_polls_total",
        "counter",
        "Polls of a Modbus slave started (each reads all its registers), by device.",
        per_slave(&|s| s.polls.load(relaxed) as f64),
    );
    family(
        "gateway_modbus_polls_complete_total",
        "counter",
        "Polls that read every register of the slave, by device.",
        per_slave(&|s| s.polls_complete.load(relaxed) as f64),
    );
    family(
        "gateway_modbus_requests_total",
        "counter",
        "Read requests sent to a Modbus slave, by device.",
        per_slave(&|s| s.requests.load(relaxed) as f64),
    );
    family(
        "gateway_modbus_errors_total",
        "counter",
        "Failed Modbus requests, by device and reason (timeout: no answer; exception: an exception answer; corrupt: a wrong CRC, broken framing or a mismatched answer; io: the port or connection failed).",
        slaves
            .iter()
            .flat_map(|s| {
                s.errors()
                    .map(|(r, n)| {
                        (
                            format!("{{device=\"{}\",reason=\"{r}\"}}", label(&s.device)),
                            n as f64,
                        )
                    })
                    .collect::<Vec<_>>()
            })
            .collect(),
    );
    family(
        "gateway_modbus_exceptions_total",
        "counter",
        "Modbus exception answers, by device and exception code.",
        slaves
            .iter()
            .flat_map(|s| {
                s.exceptions()
                    .into_iter()
                    .map(|(c, n)| {
                        (
                            format!("{{device=\"{}\",code=\"{c}\"}}", label(&s.device)),
                            n as f64,
                        )
                    })
                    .collect::<Vec<_>>()
            })
            .collect(),
    );
    family(
        "gateway_modbus_readings_not_stored_total",
        "counter",
        "Readings from a Modbus slave the buffer did not store (a failed write, shutdown), by device.",
        per_slave(&|s| s.readings_not_stored.load(relaxed) as f64),
    );
    family(
        "gateway_modbus_up",
        "gauge",
        "1 when the slave's last poll read every register, by device.",
        per_slave(&|s| f64::from(u8::from(s.state() == crate::ops::metrics::SlaveState::Up))),
    );
    family(
        "gateway_modbus_poll_duration_seconds",
        "gauge",
        "How long the slave's last poll took (all its requests), by device.",
        per_slave(&|s| s.last_poll_latency().as_secs_f64()),
    );
    family(
        "gateway_modbus_backoff_seconds",
        "gauge",
        "Pause before the next attempt at a slave that stopped answering (0 while it answers), by device.",
        per_slave(&|s| s.backoff().as_secs_f64()),
    );
}

/// Renders `/metrics` in the Prometheus text exposition format.
pub async fn render_metrics(state: &AdminState) -> String {
    let moved_aside_on_disk = list_moved_aside(state).await;
    let p = &state.inner.pipeline;
    let m = p.metrics();
    let b = p.buffer().stats();
    let f = state.inner.upstream().stats();
    let engine = p.engine_stats();
    let mut out = String::with_capacity(4096);
    let mut family = |name: &str, kind: &str, help: &str, samples: &[(String, f64)]| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, v) in samples {
            let _ = writeln!(out, "{name}{labels} {v}");
        }
    };
    let one = |v: u64| vec![(String::new(), v as f64)];
    let relaxed = std::sync::atomic::Ordering::Relaxed;
    family(
        "gateway_readings_received_total",
        "counter",
        "Readings made durable, by source.",
        &[Source::Mqtt, Source::Serial, Source::Modbus].map(|s| {
            (
                format!("{{source=\"{}\"}}", s.as_str()),
                m.readings(s) as f64,
            )
        }),
    );
    family(
        "gateway_payloads_rejected_total",
        "counter",
        "Payloads or lines that could not be read, by reason (kept as dead letters).",
        &m.rejected()
            .map(|(r, n)| (format!("{{reason=\"{r}\"}}"), n as f64))
            .collect::<Vec<_>>(),
    );
    family(
        "gateway_ingest_blocked_total",
        "counter",
        "Messages whose ack waited because the buffer was full (when_full = block).",
        &one(m.blocked_full.load(relaxed)),
    );
    family(
        "gateway_source_disconnects_total",
        "counter",
        "Times the broker connection or a serial port was lost.",
        &one(m.source_disconnects.load(relaxed)),
    );
    family(
        "gateway_mqtt_connected",
        "gauge",
        "1 while connected to the MQTT broker.",
        &one(u64::from(m.mqtt_connected())),
    );
    family(
        "gateway_mqtt_subscribed",
        "gauge",
        "1 once the broker granted every topic filter on the current connection.",
        &one(u64::from(m.mqtt_subscribed())),
    );
    family(
        "gateway_ingest_ack_seconds",
        "histogram",
        "Time from an MQTT message's arrival to its PUBACK being queued: decoding, the group commit's window and its fsync.",
        &histogram_samples(&m.ack_latency(), ""),
    );
    let lanes = [Lane::Alarms, Lane::Readings];
    let per_lane = |f: &dyn Fn(&LaneStats) -> f64| {
        lanes
            .map(|l| (format!("{{lane=\"{}\"}}", l.as_str()), f(b.lane(l))))
            .to_vec()
    };
    family(
        "gateway_buffer_records",
        "gauge",
        "Records in the buffer, by lane.",
        &per_lane(&|s| s.records as f64),
    );
    family(
        "gateway_buffer_bytes",
        "gauge",
        "Bytes the buffer holds on disk, by lane.",
        &per_lane(&|s| s.bytes as f64),
    );
    family(
        "gateway_buffer_oldest_age_seconds",
        "gauge",
        "Age of the oldest buffered record, by lane (0 when empty).",
        &per_lane(&|s| s.oldest_age_ms.unwrap_or(0) as f64 / 1000.0),
    );
    family(
        "gateway_buffer_dropped_total",
        "counter",
        "Records evicted by the byte quota (when_full = drop_oldest), by lane.",
        &per_lane(&|s| s.dropped_quota as f64),
    );
    family(
        "gateway_buffer_expired_total",
        "counter",
        "Records expired by max_age_s, by lane.",
        &per_lane(&|s| s.expired as f64),
    );
    family(
        "gateway_buffer_undecodable_total",
        "counter",
        "Records found unreadable on disk and moved to dead letters, by lane.",
        &per_lane(&|s| s.undecodable as f64),
    );
    let per_kind = |f: &dyn Fn(&gateway_buffer::DeadKindStats) -> u64| {
        [
            (
                "{kind=\"input\"}".to_owned(),
                f(&b.dead_letters.input) as f64,
            ),
            (
                "{kind=\"refused\"}".to_owned(),
                f(&b.dead_letters.refused) as f64,
            ),
        ]
    };
    family(
        "gateway_dead_letters",
        "gauge",
        "Dead letters kept, by kind (input: rejected input; refused: batches the upstream refused).",
        &per_kind(&|k| k.count),
    );
    family(
        "gateway_dead_letters_dropped_total",
        "counter",
        "Dead letters dropped by their kind's quota (dead_letter_max_bytes, refused_dead_letter_max_bytes), by kind.",
        &per_kind(&|k| k.dropped),
    );
    family(
        "gateway_buffer_moved_aside_total",
        "counter",
        "Unopenable databases moved aside at start.",
        &one(b.moved_aside),
    );
    // Left without samples when the directory cannot be listed (`/status` says why).
    let on_disk = |f: fn(&MovedAside) -> u64| {
        moved_aside_on_disk
            .iter()
            .map(|list| (String::new(), list.iter().map(f).sum::<u64>() as f64))
            .collect::<Vec<_>>()
    };
    family(
        "gateway_buffer_moved_aside_on_disk",
        "gauge",
        "Databases moved aside (at this start or an earlier one) still on disk; the gateway never uses them again.",
        &on_disk(|_| 1),
    );
    family(
        "gateway_buffer_moved_aside_on_disk_bytes",
        "gauge",
        "Bytes the databases moved aside still take on disk.",
        &on_disk(|a| a.bytes),
    );
    family(
        "gateway_buffer_commits_total",
        "counter",
        "Group commits of the buffer (each one sled flush and one fdatasync): at a trickle, what wears an SD card.",
        &one(b.commits),
    );
    let samples: Vec<(String, f64)> = [
        ("write", &b.commit_times.write),
        ("flush", &b.commit_times.flush),
        ("idle_flush", &b.commit_times.idle_flush),
    ]
    .into_iter()
    .flat_map(|(phase, h)| histogram_samples(h, &format!("phase=\"{phase}\"")))
    .collect();
    family(
        "gateway_buffer_commit_seconds",
        "histogram",
        "How long group commits took, by phase: write (waiting for the buffer's lock, encoding blocks, handing them to sled); flush (sled's flush and the fdatasync); and idle_flush, the flushes of acks and state between commits, during which no group is committed. A PUBACK waits for the first two, and for an idle flush under way when its message arrived.",
        &samples,
    );
    family(
        "gateway_buffer_write_errors_total",
        "counter",
        "Failed writes and flushes of the buffer database (disk full, I/O error); after the first, appends are refused until the gateway restarts.",
        &one(b.write_errors),
    );
    family(
        "gateway_buffer_writable",
        "gauge",
        "1 while the buffer database takes writes, 0 after a write failed (until the restart).",
        &one(u64::from(p.buffer().health().is_writable())),
    );
    family(
        "gateway_serial_readings_dropped_total",
        "counter",
        "Serial readings that could not be stored (serial lines carry no ack), by reason.",
        &m.serial_dropped()
            .map(|(r, n)| (format!("{{reason=\"{r}\"}}"), n as f64))
            .collect::<Vec<_>>(),
    );
    family(
        "gateway_buffer_missing_at_open_total",
        "counter",
        "Seqs the buffer database had made durable but no longer held at start (truncated or rolled back); undelivered records among them are lost.",
        &one(b.missing_at_open),
    );
    family(
        "gateway_upstream_batches_sent_total",
        "counter",
        "Batches delivered upstream (2xx).",
        &one(f.batches_sent),
    );
    family(
        "gateway_upstream_batches_failed_total",
        "counter",
        "Failed upstream attempts, by class.",
        &[
            (
                "{class=\"retryable\"}".to_owned(),
                f.failed_retryable as f64,
            ),
            (
                "{class=\"permanent\"}".to_owned(),
                f.failed_permanent as f64,
            ),
        ],
    );
    family(
        "gateway_upstream_timeouts_total",
        "counter",
        "Upstream attempts that got no complete answer within `upstream.timeout_ms` (also counted as retryable failures).",
        &one(f.timeouts),
    );
    family(
        "gateway_upstream_retries_total",
        "counter",
        "Upstream attempts that were retries.",
        &one(f.retries),
    );
    family(
        "gateway_upstream_records_delivered_total",
        "counter",
        "Records delivered upstream, by lane.",
        &lanes.map(|l| {
            (
                format!("{{lane=\"{}\"}}", l.as_str()),
                f.records_delivered.get(l) as f64,
            )
        }),
    );
    family(
        "gateway_upstream_backoff_seconds",
        "gauge",
        "Current retry backoff.",
        &[(String::new(), f.backoff_ms as f64 / 1000.0)],
    );
    family(
        "gateway_upstream_concurrency",
        "gauge",
        "Readings requests the forwarder lets on the wire at once now: adapts between 1 and upstream.max_in_flight (halved on 429/5xx/timeouts, cut on rising latency, grown while answers stay fast).",
        &one(f.concurrency),
    );
    family(
        "gateway_upstream_up",
        "gauge",
        "1 unless the upstream is backing off or down.",
        &one(u64::from(!matches!(
            f.upstream,
            gateway_forwarder::UpstreamState::Down | gateway_forwarder::UpstreamState::BackingOff
        ))),
    );
    family(
        "gateway_upstream_bytes_delivered_total",
        "counter",
        "Request body bytes (as sent, compressed when configured) of batches the upstream accepted.",
        &one(f.bytes_delivered),
    );
    family(
        "gateway_upstream_bytes_per_raw_reading",
        "gauge",
        "gateway_upstream_bytes_delivered_total / sum of gateway_readings_received_total: what one raw reading costs upstream since start, alarms, aggregates and batch envelopes included (0 before any reading).",
        &[(String::new(), bytes_per_raw_reading(f.bytes_delivered, m))],
    );
    let _ = writeln!(
        out,
        "# HELP gateway_upstream_latency_seconds Upstream request latency.\n# TYPE gateway_upstream_latency_seconds histogram"
    );
    for (bound, count) in f.latency.bounds_s.iter().zip(&f.latency.cumulative) {
        let _ = writeln!(
            out,
            "gateway_upstream_latency_seconds_bucket{{le=\"{bound}\"}} {count}"
        );
    }
    let _ = writeln!(
        out,
        "gateway_upstream_latency_seconds_bucket{{le=\"+Inf\"}} {}",
        f.latency.count
    );
    let _ = writeln!(
        out,
        "gateway_upstream_latency_seconds_sum {}",
        f.latency.sum_s
    );
    let _ = writeln!(
        out,
        "gateway_upstream_latency_seconds_count {}",
        f.latency.count
    );
    render_sink_metrics(&mut out, state);
    render_modbus_metrics(&mut out, m);
    let reduce = p.reduce_stats();
    let mut family = |name: &str, kind: &str, help: &str, v: f64| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
        );
    };
    family(
        "gateway_alarm_events_total",
        "counter",
        "Alarm events raised or cleared.",
        m.alarm_events.load(relaxed) as f64,
    );
    family(
        "gateway_alarms_active",
        "gauge",
        "Alarms raised now.",
        p.active_alarms().len() as f64,
    );
    family(
        "gateway_alarm_series",
        "gauge",
        "Rule/device/metric series tracked.",
        engine.series as f64,
    );
    family(
        "gateway_alarm_series_refused_total",
        "counter",
        "New series refused: alarm_max_series reached and every tracked series has an active alarm.",
        engine.series_refused as f64,
    );
    family(
        "gateway_alarm_series_evicted_total",
        "counter",
        "Idle series forgotten, least recently seen first, to admit new ones under alarm_max_series.",
        engine.series_evicted as f64,
    );
    family(
        "gateway_local_alarm_errors_total",
        "counter",
        "Alarm events that could not be published on the local alarm topic and were skipped.",
        m.local_alarm_errors.load(relaxed) as f64,
    );
    family(
        "gateway_window_series",
        "gauge",
        "Device/metric series tracked by [[window]] and [[deadband]] rules.",
        reduce.series as f64,
    );
    family(
        "gateway_window_open",
        "gauge",
        "Windows holding readings, not yet emitted.",
        reduce.open_windows as f64,
    );
    family(
        "gateway_window_emits_total",
        "counter",
        "Windows emitted (each as one reading per emit function).",
        reduce.windows_emitted as f64,
    );
    family(
        "gateway_window_readings_emitted_total",
        "counter",
        "Aggregate readings (<metric>.<fn>) emitted by windows.",
        reduce.readings_emitted as f64,
    );
    family(
        "gateway_window_late_readings_total",
        "counter",
        "Readings older than their series' open or last emitted window: not aggregated, forwarded raw.",
        reduce.late as f64,
    );
    family(
        "gateway_window_raw_dropped_total",
        "counter",
        "Raw readings aggregated and not forwarded (raw = \"drop\").",
        reduce.raw_dropped as f64,
    );
    family(
        "gateway_deadband_suppressed_total",
        "counter",
        "Readings a [[deadband]] did not forward.",
        reduce.suppressed as f64,
    );
    family(
        "gateway_window_series_refused_total",
        "counter",
        "Readings of new series refused by window_max_series (forwarded unreduced).",
        reduce.series_refused as f64,
    );
    family(
        "gateway_uptime_seconds",
        "gauge",
        "Seconds since start.",
        state.inner.started.elapsed().as_secs_f64(),
    );
    out
}

/// Upstream bytes per raw reading received since start; 0 before any reading.
fn bytes_per_raw_reading(bytes: u64, m: &crate::ops::metrics::IngestMetrics) -> f64 {
    let raw = m.readings(Source::Mqtt) + m.readings(Source::Serial);
    if raw == 0 {
        0.0
    } else {
        bytes as f64 / raw as f64
    }
}

/// Binds and serves the admin routes under [`Limits::default`] until `stop`; returns the
/// bound address.
pub async fn serve(
    listen: SocketAddr,
    state: AdminState,
    stop: CancellationToken,
) -> Result<SocketAddr, ListenError> {
    serve_with(listen, router(state), Limits::default(), stop).await
}

/// Binds `listen` and serves `app` under `limits` until `stop`, on a task of its own; returns
/// the bound address. On `stop` the listener is closed at once, idle connections are closed
/// and requests in progress finish (with `Connection: close`).
pub async fn serve_with(
    listen: SocketAddr,
    app: Router,
    limits: Limits,
    stop: CancellationToken,
) -> Result<SocketAddr, ListenError> {
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|source| ListenError {
            what: "admin.listen",
            addr: listen,
            source,
        })?;
    let addr = listener.local_addr().unwrap_or(listen);
    let app = app
        // Extractors that read a body stop at the limit with 413 (a chunked body has no
        // length to check up front)...
        .layer(DefaultBodyLimit::max(limits.max_body_bytes))
        // ...within the time a request may take...
        .layer(middleware::from_fn_with_state(
            limits.request_timeout,
            answer_in_time,
        ))
        // ...and a declared length over the limit is answered before anything reads or routes.
        .layer(middleware::from_fn_with_state(
            limits.max_body_bytes,
            refuse_declared_oversize,
        ));
    tokio::spawn(accept_loop(listener, app, limits, stop));
    Ok(addr)
}

/// Accepts and serves connections until `stop`, then waits for the connections to end.
async fn accept_loop(listener: TcpListener, app: Router, limits: Limits, stop: CancellationToken) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let connections = TaskTracker::new();
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        // A request head (and what is read ahead of it) fits in 16 KiB; hyper's default is
        // ~400 KiB per connection.
        .max_buf_size(MAX_HEAD_BYTES);
    loop {
        // A slot before `accept`: past the cap clients wait in the kernel's backlog, which the
        // kernel bounds, instead of as tasks here. Both waits are cancel-safe: losing the race
        // to `stop` drops no connection.
        let slot = tokio::select! {
            () = stop.cancelled() => break,
            slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
        };
        let stream = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "admin: accepting a connection failed; retrying");
                    tokio::select! {
                        () = stop.cancelled() => break,
                        () = tokio::time::sleep(ACCEPT_RETRY) => continue,
                    }
                }
            },
        };
        let conn =
            http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(app.clone()));
        let stop = stop.clone();
        let max_age = limits.max_connection_age;
        connections.spawn(async move {
            let mut conn = std::pin::pin!(conn);
            let ended = tokio::select! {
                ended = conn.as_mut() => ended,
                () = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
                // Dropping the connection closes it, whatever it was waiting for.
                () = tokio::time::sleep(max_age) => Ok(()),
            };
            if let Err(e) = ended {
                // Timeouts and clients going away: nothing for the operator to act on.
                tracing::debug!(error = %e, "admin: connection ended with an error");
            }
            drop(slot);
        });
    }
    // Closed before waiting, so the port is free (and clients refused) at once.
    drop(listener);
    connections.close();
    connections.wait().await;
}

/// Answers 413 to a request whose `Content-Length` is over `max` bytes, before its body is
/// read or it reaches a route (or the token check).
async fn refuse_declared_oversize(State(max): State<usize>, req: Request, next: Next) -> Response {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return (
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body over {max} bytes\n"),
        )
            .into_response();
    }
    next.run(req).await
}

/// Answers 408 to a request the routes did not answer within `timeout`: only one whose body
/// is slow to arrive can take that long.
async fn answer_in_time(State(timeout): State<Duration>, req: Request, next: Next) -> Response {
    match tokio::time::timeout(timeout, next.run(req)).await {
        Ok(response) => response,
        Err(_) => (
            StatusCode::REQUEST_TIMEOUT,
            [(header::CONNECTION, "close")],
            "request not received in time\n",
        )
            .into_response(),
    }
}

/// The routes. With a token configured, everything but `/healthz` and the page shell at `/`
/// needs it (see the module docs).
pub fn router(state: AdminState) -> Router {
    let guarded = Router::new()
        .route("/metrics", get(metrics))
        .route("/status", get(status))
        .route("/reload", post(reload))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .route("/", get(page))
        .route("/healthz", get(healthz))
        .merge(guarded)
        .with_state(state)
}

async fn require_token(State(state): State<AdminState>, req: Request, next: Next) -> Response {
    if !state.authorized(req.headers()) {
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            "missing or wrong admin token\n",
        )
            .into_response();
    }
    next.run(req).await
}

async fn healthz(State(state): State<AdminState>, headers: HeaderMap) -> Response {
    let (code, body) = state.health(state.authorized(&headers));
    (code, axum::Json(body)).into_response()
}

async fn metrics(State(state): State<AdminState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        render_metrics(&state).await,
    )
        .into_response()
}

async fn status(State(state): State<AdminState>) -> Response {
    axum::Json(state.status().await).into_response()
}

/// `POST /reload`. The body is read (up to the limit, else 413) and ignored: reading it keeps
/// the connection usable for the next request.
async fn reload(State(state): State<AdminState>, _body: Bytes) -> Response {
    match state.reload() {
        Ok(msg) => (StatusCode::OK, msg + "\n").into_response(),
        Err(msg) => (StatusCode::UNPROCESSABLE_ENTITY, msg + "\n").into_response(),
    }
}

/// What the status page may do in a browser: its own inline script and styles, fetches of its
/// own origin only (the token cannot be sent elsewhere), no form submission (a failed script
/// cannot put the token into a URL), no framing.
const PAGE_CSP: &str = "default-src 'none'; script-src 'unsafe-inline'; \
    style-src 'unsafe-inline'; connect-src 'self'; form-action 'none'; base-uri 'none'; \
    frame-ancestors 'none'";

/// The status page: a shell without data, served without the token (its script fetches
/// `/status` with it).
async fn page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, PAGE_CSP),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        include_str!("status.html"),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_histogram_renders_every_bucket_sum_and_count_with_its_labels() {
        let d = gateway_buffer::Durations::default();
        d.observe(Duration::from_millis(3), 2);
        let h = d.snapshot();
        let plain = histogram_samples(&h, "");
        let n = gateway_buffer::LATENCY_BUCKETS_S.len();
        assert_eq!(plain.len(), n + 3, "{plain:?}");
        assert_eq!(plain[0], ("_bucket{le=\"0.0005\"}".to_owned(), 0.0));
        assert_eq!(plain[3], ("_bucket{le=\"0.005\"}".to_owned(), 2.0));
        assert_eq!(plain[n], ("_bucket{le=\"+Inf\"}".to_owned(), 2.0));
        assert_eq!(plain[n + 1], ("_sum".to_owned(), 0.006));
        assert_eq!(plain[n + 2], ("_count".to_owned(), 2.0));
        let labelled = histogram_samples(&h, "phase=\"flush\"");
        assert_eq!(
            labelled[n].0, "_bucket{phase=\"flush\",le=\"+Inf\"}",
            "{labelled:?}"
        );
        assert_eq!(labelled[n + 1].0, "_sum{phase=\"flush\"}");
        assert_eq!(labelled[n + 2].0, "_count{phase=\"flush\"}");
        // Nothing observed yet: every bucket is rendered, at zero.
        let empty = histogram_samples(&gateway_buffer::DurationHistogram::default(), "");
        assert_eq!(empty.len(), n + 3);
        assert!(empty.iter().all(|(_, v)| *v == 0.0), "{empty:?}");
    }

    #[test]
    fn a_buffer_reason_carries_the_error_text_only_with_detail() {
        let error = "buffer I/O error on /var/lib/gateway/buffer/buffer.sled/db: No space left";
        for degraded in [
            Degraded::BufferWriteFailed {
                error: error.into(),
            },
            Degraded::BufferReopenNeeded {
                error: error.into(),
            },
        ] {
            assert!(degraded.is_unhealthy());
            let detailed = degraded.reason(true);
            assert!(detailed.contains(&format!(" ({error})")), "{detailed}");
            let public = degraded.reason(false);
            assert_eq!(public, detailed.replace(&format!(" ({error})"), ""));
            assert!(public.starts_with("buffer: writes "), "{public}");
        }
    }

    #[test]
    fn the_detailed_reason_of_a_failed_write_reads_as_before() {
        let degraded = Degraded::BufferWriteFailed {
            error: "disk full".into(),
        };
        assert_eq!(
            degraded.reason(true),
            format!(
                "buffer: writes fail (disk full); readings are not acknowledged (MQTT messages \
                 wait at the broker); checking for free space every {}s",
                gateway_buffer::PROBE_INTERVAL.as_secs()
            )
        );
    }
}
