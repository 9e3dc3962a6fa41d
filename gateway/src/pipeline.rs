//! What every source does with what it read: alarm rules, then a durable append; or, for
//! something unreadable, a count and a dead letter.
//!
//! Sources call [`Pipeline::ingest`] and acknowledge their input only when it returns `Ok`.

use crate::alarm::{ActiveAlarm, Engine, EngineStats, Rule};
use crate::decode::Reject;
use crate::metrics::IngestMetrics;
use crate::telemetry::Throttle;
use gateway_buffer::{
    AppendError, Appended, Buffer, DeadLetterInput, OnWait, Reading, Record, Source,
};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The key under which the alarm engine keeps its state in the buffer.
const ENGINE_STATE_KEY: &str = "alarm-engine";

/// On shutdown, how long an append in progress gets to complete before it is withdrawn (only
/// one waiting for space in a full buffer takes longer than a commit).
const CANCEL_GRACE: Duration = Duration::from_millis(500);

/// Shared by every source task.
#[derive(Debug, Clone)]
pub struct Pipeline {
    buffer: Buffer,
    // A std mutex: evaluation is short, CPU-only, and never held across an await.
    engine: Arc<Mutex<Engine>>,
    metrics: Arc<IngestMetrics>,
    clock: fn() -> i64,
}

/// An ingest whose append is queued; see [`Pipeline::queue`].
pub struct Queued {
    outcome: Pin<Box<dyn Future<Output = Result<Appended, AppendError>> + Send>>,
    metrics: Arc<IngestMetrics>,
    source: Source,
    readings: u64,
}

impl std::fmt::Debug for Queued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queued")
            .field("source", &self.source)
            .field("readings", &self.readings)
            .finish()
    }
}

impl Queued {
    /// Resolves once the readings are durable. When `cancel` fires, an append that is not
    /// waiting for space still completes (within a commit); one that waits is withdrawn, and the
    /// caller must leave its input unacknowledged.
    pub async fn durable(mut self, cancel: &CancellationToken) -> Result<(), IngestError> {
        let appended = tokio::select! {
            biased;
            r = &mut self.outcome => r?,
            _ = cancel.cancelled() => {
                match tokio::time::timeout(CANCEL_GRACE, &mut self.outcome).await {
                    Ok(r) => r?,
                    Err(_) => return Err(IngestError::Cancelled),
                }
            }
        };
        if appended.waited_for_space {
            tracing::debug!(readings = self.readings, "stored after waiting for space");
        }
        self.metrics.add_readings(self.source, self.readings);
        Ok(())
    }
}

/// Why readings could not be appended.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// Shutdown began while the buffer was full; the input stays unacknowledged.
    #[error("shutting down while the buffer is full")]
    Cancelled,
    /// The buffer failed; the input stays unacknowledged.
    #[error(transparent)]
    Append(#[from] AppendError),
}

/// The wall clock in milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl Pipeline {
    /// Builds the pipeline and restores the alarm engine's persisted state.
    pub fn new(
        buffer: Buffer,
        rules: Vec<Rule>,
        max_series: usize,
        metrics: Arc<IngestMetrics>,
    ) -> Pipeline {
        let mut engine = Engine::new(rules, max_series);
        match buffer.state(ENGINE_STATE_KEY) {
            Ok(Some(bytes)) => match postcard::from_bytes(&bytes) {
                Ok(snapshot) => engine.restore(snapshot),
                Err(e) => {
                    tracing::error!(error = %e, "alarm state unreadable; starting with no active alarms")
                }
            },
            Ok(None) => {}
            Err(e) => {
                tracing::error!(error = %e, "alarm state could not be read; starting with no active alarms")
            }
        }
        Pipeline {
            buffer,
            engine: Arc::new(Mutex::new(engine)),
            metrics,
            clock: now_ms,
        }
    }

    pub fn metrics(&self) -> &Arc<IngestMetrics> {
        &self.metrics
    }

    pub fn buffer(&self) -> &Buffer {
        &self.buffer
    }

    pub fn now_ms(&self) -> i64 {
        (self.clock)()
    }

    /// Evaluates the rules and appends readings and alarm events durably. With the buffer full
    /// and set to block, waits in line until space returns or `cancel` fires.
    pub async fn ingest(
        &self,
        source: Source,
        readings: Vec<Reading>,
        cancel: &CancellationToken,
    ) -> Result<(), IngestError> {
        self.queue(source, readings).await?.durable(cancel).await
    }

    /// The first half of [`Pipeline::ingest`]: evaluates the rules and queues the append now, so
    /// that readings are stored in the order this is called (a full append queue makes it
    /// wait). Then await [`Queued::durable`].
    pub async fn queue(
        &self,
        source: Source,
        readings: Vec<Reading>,
    ) -> Result<Queued, IngestError> {
        let n = readings.len() as u64;
        let mut records: Vec<Record> = self
            .evaluate(&readings)
            .into_iter()
            .map(Record::Alarm)
            .collect();
        records.extend(readings.into_iter().map(Record::Reading));
        // In line: with the buffer full and set to block, the append waits for space behind
        // every earlier one.
        let metrics = self.metrics.clone();
        let on_wait: OnWait = Box::new(move || {
            metrics.blocked_full.fetch_add(1, Relaxed);
        });
        let outcome = self
            .buffer
            .queue_in_line(records.into(), Some(on_wait))
            .await?;
        Ok(Queued {
            outcome: Box::pin(outcome),
            metrics: self.metrics.clone(),
            source,
            readings: n,
        })
    }

    /// Runs the alarm rules over readings; persists the engine's state when anything changed, so
    /// the state rides on the same group commit as the events.
    fn evaluate(&self, readings: &[Reading]) -> Vec<gateway_buffer::AlarmEvent> {
        let now = self.now_ms();
        let mut engine = self.engine.lock().unwrap_or_else(|p| p.into_inner());
        let refused_before = engine.stats().series_refused;
        let events: Vec<_> = readings
            .iter()
            .flat_map(|r| engine.on_reading(r, now))
            .collect();
        let refused = engine.stats().series_refused - refused_before;
        if refused > 0 {
            self.metrics
                .alarm_series_refused
                .fetch_add(refused, Relaxed);
        }
        if !events.is_empty() {
            self.persist_engine(&engine);
            self.note_events(&events);
        }
        events
    }

    /// Silence rules on the clock: appends the events; call about once a second.
    pub async fn tick(&self) -> Result<(), AppendError> {
        let events = {
            let mut engine = self.engine.lock().unwrap_or_else(|p| p.into_inner());
            let events = engine.tick(self.now_ms());
            if !events.is_empty() {
                self.persist_engine(&engine);
            }
            events
        };
        if events.is_empty() {
            return Ok(());
        }
        self.note_events(&events);
        self.buffer
            .append(events.into_iter().map(Record::Alarm).collect())
            .await
            .map(|_| ())
    }

    /// Saves the engine state now (periodically, and on shutdown), so silence tracking survives.
    pub fn save_engine_state(&self) {
        let engine = self.engine.lock().unwrap_or_else(|p| p.into_inner());
        self.persist_engine(&engine);
    }

    fn persist_engine(&self, engine: &Engine) {
        let result = postcard::to_stdvec(&engine.snapshot())
            .map_err(|e| e.to_string())
            .and_then(|bytes| {
                self.buffer
                    .set_state(ENGINE_STATE_KEY, &bytes)
                    .map_err(|e| e.to_string())
            });
        if let Err(e) = result {
            tracing::error!(error = %e, "could not persist alarm state");
        }
    }

    fn note_events(&self, events: &[gateway_buffer::AlarmEvent]) {
        self.metrics
            .alarm_events
            .fetch_add(events.len() as u64, Relaxed);
        for e in events {
            tracing::warn!(alarm = %e.alarm, device = %e.device, metric = %e.metric, state = ?e.state, value = e.value, "alarm");
        }
    }

    /// Counts an unreadable payload and parks it as a dead letter; never fails.
    pub fn reject(&self, origin: &str, payload: &[u8], why: &Reject) {
        static LOG: Throttle = Throttle::new(Duration::from_secs(5));
        self.metrics.add_rejected(why);
        if let Some(suppressed) = LOG.allow() {
            tracing::warn!(origin, reason = why.reason(), detail = %why, suppressed, "payload rejected (dead-lettered; counted in /metrics)");
        }
        let input = DeadLetterInput {
            reason: why.reason().to_owned(),
            origin: origin.to_owned(),
            detail: why.to_string(),
            payload: gateway_buffer::DeadPayload::Raw(payload.to_vec()),
        };
        if let Err(e) = self.buffer.dead_letters().put(input) {
            tracing::error!(error = %e, origin, "could not store dead letter");
        }
    }

    pub fn active_alarms(&self) -> Vec<ActiveAlarm> {
        self.engine
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .active()
    }

    pub fn engine_stats(&self) -> EngineStats {
        self.engine
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .stats()
    }

    /// Swaps in new rules; states of unchanged rules are kept.
    pub fn reload_rules(&self, rules: Vec<Rule>) {
        let mut engine = self.engine.lock().unwrap_or_else(|p| p.into_inner());
        engine.reload(rules);
        self.persist_engine(&engine);
    }
}
