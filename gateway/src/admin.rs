//! The admin HTTP API on `admin.listen`: `/healthz`, `/metrics` (Prometheus text), `/status`
//! (JSON), `POST /reload`, and the status page at `/`.
//!
//! Loopback by default; the config refuses any other address without `admin.token_env`, and
//! with a token every request must carry `Authorization: Bearer <token>`.

use crate::app::rules_from_config;
use crate::pipeline::Pipeline;
use axum::Router;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use gateway_buffer::{BufferHealth, Lane, LaneStats, Source};
use gateway_config::{Config, Secret};
use gateway_forwarder::ForwarderHandle;
use serde_json::{Value, json};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;
use tokio_util::sync::CancellationToken;

/// What the admin API reads from; cheap to clone.
#[derive(Debug, Clone)]
pub struct AdminState {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    gateway_id: String,
    pipeline: Pipeline,
    forwarder: ForwarderHandle,
    config_path: Option<PathBuf>,
    token: Option<Secret>,
    started: Instant,
}

impl AdminState {
    pub fn new(
        config: &Config,
        pipeline: Pipeline,
        forwarder: ForwarderHandle,
        config_path: Option<PathBuf>,
    ) -> AdminState {
        AdminState {
            inner: Arc::new(Inner {
                gateway_id: config.gateway_id.clone(),
                pipeline,
                forwarder,
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
        let rules = rules_from_config(&config)
            .map_err(|e| format!("reload: {e}; keeping the current rules"))?;
        let n = rules.len();
        self.inner.pipeline.reload_rules(rules);
        Ok(format!("reload: {n} alarm rule(s) from {}", path.display()))
    }

    /// The JSON of `/status`.
    pub fn status(&self) -> Value {
        let p = &self.inner.pipeline;
        let m = p.metrics();
        let b = p.buffer().stats();
        let f = self.inner.forwarder.stats();
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
                "readings": { "mqtt": m.readings(Source::Mqtt), "serial": m.readings(Source::Serial) },
                "rejected": m.rejected().filter(|(_, n)| *n > 0).map(|(r, n)| (r.to_owned(), json!(n))).collect::<serde_json::Map<String, Value>>(),
                "rejected_total": m.rejected_total(),
                "mqtt_connected": m.mqtt_connected(),
                "mqtt_subscribed": m.mqtt_subscribed(),
                "blocked_full": m.blocked_full.load(std::sync::atomic::Ordering::Relaxed),
                "source_disconnects": m.source_disconnects.load(std::sync::atomic::Ordering::Relaxed),
            },
            "buffer": {
                "lanes": { "alarms": lane(&b.alarms), "readings": lane(&b.readings) },
                "dead_letters": {
                    "count": b.dead_letters.count, "bytes": b.dead_letters.bytes, "dropped": b.dead_letters.dropped,
                    "input": { "count": b.dead_letters.input.count, "bytes": b.dead_letters.input.bytes, "dropped": b.dead_letters.input.dropped },
                    "refused": { "count": b.dead_letters.refused.count, "bytes": b.dead_letters.refused.bytes, "dropped": b.dead_letters.refused.dropped },
                },
                "moved_aside": b.moved_aside,
                "missing_at_open": b.missing_at_open,
                "last_durable_seq": b.last_durable_seq,
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
                "records_delivered": { "alarms": f.records_delivered.alarms, "readings": f.records_delivered.readings },
                "latency_avg_s": if f.latency.count > 0 { Some(f.latency.sum_s / f.latency.count as f64) } else { None },
            },
            "alarms": {
                "active": p.active_alarms(),
                "events": m.alarm_events.load(std::sync::atomic::Ordering::Relaxed),
                "series": engine.series,
                "series_refused": engine.series_refused,
                "series_evicted": engine.series_evicted,
                "local_errors": m.local_alarm_errors.load(std::sync::atomic::Ordering::Relaxed),
                "out_of_order": engine.out_of_order,
            },
        })
    }

    /// `/healthz`: which parts are degraded. Ingest and buffer being up is what makes it 200;
    /// a buffer that cannot write makes it 503, with the reason.
    fn health(&self) -> (StatusCode, Value) {
        let m = self.inner.pipeline.metrics();
        let f = self.inner.forwarder.stats();
        let mut degraded = Vec::new();
        let buffer_down = buffer_unhealthy_reason(&self.inner.pipeline.buffer().health());
        if let Some(reason) = &buffer_down {
            degraded.push(reason.as_str());
        }
        if m.mqtt_enabled() && !m.mqtt_connected() {
            degraded.push("mqtt: not connected to the broker");
        } else if m.mqtt_enabled() && !m.mqtt_subscribed() {
            degraded.push("mqtt: subscription not granted by the broker (yet)");
        }
        match f.upstream {
            gateway_forwarder::UpstreamState::Down => degraded.push("upstream: down"),
            gateway_forwarder::UpstreamState::BackingOff => degraded.push("upstream: backing off"),
            _ => {}
        }
        let (code, status) = if buffer_down.is_some() {
            (StatusCode::SERVICE_UNAVAILABLE, "unhealthy")
        } else if degraded.is_empty() {
            (StatusCode::OK, "ok")
        } else {
            (StatusCode::OK, "degraded")
        };
        (code, json!({ "status": status, "degraded": degraded }))
    }
}

/// Why `/healthz` is 503 because of the buffer, or `None` while it writes.
fn buffer_unhealthy_reason(health: &BufferHealth) -> Option<String> {
    match health {
        BufferHealth::Writable => None,
        BufferHealth::WriteFailed { error, .. } => Some(format!(
            "buffer: writes fail ({error}); readings are not acknowledged (MQTT messages wait at \
             the broker); checking for free space every {}s",
            gateway_buffer::PROBE_INTERVAL.as_secs()
        )),
        BufferHealth::ReopenNeeded { error, .. } => Some(format!(
            "buffer: writes succeed again after failing ({error}); restarting to reopen the \
             database"
        )),
    }
}

/// Renders `/metrics` in the Prometheus text exposition format.
pub fn render_metrics(state: &AdminState) -> String {
    let p = &state.inner.pipeline;
    let m = p.metrics();
    let b = p.buffer().stats();
    let f = state.inner.forwarder.stats();
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
        &[Source::Mqtt, Source::Serial].map(|s| {
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
        "gateway_upstream_up",
        "gauge",
        "1 unless the upstream is backing off or down.",
        &one(u64::from(!matches!(
            f.upstream,
            gateway_forwarder::UpstreamState::Down | gateway_forwarder::UpstreamState::BackingOff
        ))),
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
        "gateway_uptime_seconds",
        "gauge",
        "Seconds since start.",
        state.inner.started.elapsed().as_secs_f64(),
    );
    out
}

/// Binds and serves until `stop`; returns the bound address.
pub async fn serve(
    listen: SocketAddr,
    state: AdminState,
    stop: CancellationToken,
) -> Result<SocketAddr, crate::app::RunError> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|source| crate::app::RunError::Listen {
            what: "admin.listen",
            addr: listen,
            source,
        })?;
    let addr = listener.local_addr().unwrap_or(listen);
    let app = router(state);
    tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { stop.cancelled().await });
        if let Err(e) = served.await {
            tracing::error!(error = %e, "admin server stopped");
        }
    });
    Ok(addr)
}

/// The routes, with the bearer-token check in front when a token is configured.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/status", get(status))
        .route("/reload", post(reload))
        .layer(middleware::from_fn_with_state(state.clone(), require_token))
        .with_state(state)
}

async fn require_token(State(state): State<AdminState>, req: Request, next: Next) -> Response {
    if let Some(token) = &state.inner.token {
        let presented = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if !presented.is_some_and(|p| token.matches(p)) {
            return (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer")],
                "missing or wrong admin token\n",
            )
                .into_response();
        }
    }
    next.run(req).await
}

async fn healthz(State(state): State<AdminState>) -> Response {
    let (code, body) = state.health();
    (code, axum::Json(body)).into_response()
}

async fn metrics(State(state): State<AdminState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        render_metrics(&state),
    )
        .into_response()
}

async fn status(State(state): State<AdminState>) -> Response {
    axum::Json(state.status()).into_response()
}

async fn reload(State(state): State<AdminState>) -> Response {
    match state.reload() {
        Ok(msg) => (StatusCode::OK, msg + "\n").into_response(),
        Err(msg) => (StatusCode::UNPROCESSABLE_ENTITY, msg + "\n").into_response(),
    }
}

async fn page() -> Response {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        include_str!("status.html"),
    )
        .into_response()
}
