//! What every source does with what it read: alarm rules, then a durable append; or, for
//! something unreadable, a count and a dead letter.
//!
//! Sources call [`Pipeline::ingest`] and acknowledge their input only when it returns `Ok`.

use crate::alarm::{self, ActiveAlarm, Engine, EngineStats, Rule, SHARDS, Snapshot};
use crate::ops::metrics::IngestMetrics;
use crate::ops::telemetry::Throttle;
use crate::sources::decode::Reject;
use gateway_buffer::{
    AppendError, Appended, Buffer, DeadLetterInput, OnWait, Reading, Record, Source,
};
use gateway_config::Config;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

// One reading holds at most one payload or line, whose size the config caps: every reading that
// passes ingest fits a buffer record, so no append is refused for its size and leaves its MQTT
// message to be redelivered forever. (Ids and the record's envelope are far below the margin.)
const _: () = assert!(2 * gateway_config::MAX_INPUT_BYTES <= gateway_buffer::MAX_RECORD_BYTES);

/// The key under which older versions kept the whole alarm engine state in the buffer. Read
/// once at start (and emptied) to carry that state over; see [`shard_key`].
const ENGINE_STATE_KEY: &str = "alarm-engine";

/// The key of one shard of the alarm engine's state: `alarm-engine/00` … `alarm-engine/63`.
/// Saving by shard bounds both the time the engine is held for a copy and the bytes written
/// at once (see `alarm`'s module doc).
fn shard_key(shard: usize) -> String {
    format!("{ENGINE_STATE_KEY}/{shard:02}")
}

/// Every shard.
const ALL_SHARDS: u64 = u64::MAX >> (64 - SHARDS);

/// On shutdown, how long an append in progress gets to complete before it is withdrawn (only
/// one waiting for space in a full buffer takes longer than a commit).
const CANCEL_GRACE: Duration = Duration::from_millis(500);

/// Shared by every source task.
#[derive(Debug, Clone)]
pub struct Pipeline {
    buffer: Buffer,
    // A std mutex: evaluation is short, CPU-only, and never held across an await.
    engine: Arc<Mutex<Engine>>,
    /// Held while shards are copied and written, so two saves of one shard land in the order
    /// they were copied (the engine lock is taken only for each copy).
    saving: Arc<Mutex<()>>,
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
    /// Shutdown began and the append was not durable within a short grace (it waited for
    /// space, or the disk was slow); the input stays unacknowledged. An append already queued
    /// may still be stored by the final commit.
    #[error("shutting down before the append was durable (buffer full or disk slow)")]
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
        let mut snapshot = Snapshot::default();
        for shard in 0..SHARDS {
            if let Some(s) = read_snapshot(&buffer, &shard_key(shard)) {
                snapshot.series.extend(s.series);
            }
        }
        // State of an older version (one key for everything): taken over, then emptied below
        // once it is saved as shards. Both may exist after a crash in between; they agree.
        let legacy = read_snapshot(&buffer, ENGINE_STATE_KEY);
        let migrate = legacy.is_some();
        if let Some(s) = legacy {
            snapshot.series.extend(s.series);
        }
        engine.restore(snapshot);
        let pipeline = Pipeline {
            buffer,
            engine: Arc::new(Mutex::new(engine)),
            saving: Arc::new(Mutex::new(())),
            metrics,
            clock: now_ms,
        };
        if migrate {
            pipeline.persist_shards(ALL_SHARDS);
            if let Err(e) = pipeline.buffer.set_state(ENGINE_STATE_KEY, &[]) {
                tracing::error!(error = %e, "could not retire the old alarm state key");
            }
        }
        pipeline
    }

    /// The ingest pipeline of a config on `buffer` (its alarm rules, with the engine state the
    /// buffer holds), and the metrics it counts into.
    pub fn from_config(config: &Config, buffer: &Buffer) -> (Pipeline, Arc<IngestMetrics>) {
        let metrics = Arc::new(IngestMetrics::default());
        let pipeline = Pipeline::new(
            buffer.clone(),
            alarm::rules_from_config(config),
            config.alarm_max_series,
            metrics.clone(),
        );
        (pipeline, metrics)
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

    /// Runs the alarm rules over readings; when anything was raised or cleared, saves the shards
    /// of those series before the events are queued, so the state rides on the same group
    /// commit as the events.
    fn evaluate(&self, readings: &[Reading]) -> Vec<gateway_buffer::AlarmEvent> {
        let now = self.now_ms();
        let events: Vec<_> = {
            let mut engine = self.lock_engine();
            let refused_before = engine.stats().series_refused;
            let events = readings
                .iter()
                .flat_map(|r| engine.on_reading(r, now))
                .collect();
            let refused = engine.stats().series_refused - refused_before;
            if refused > 0 {
                self.metrics
                    .alarm_series_refused
                    .fetch_add(refused, Relaxed);
            }
            events
        };
        if !events.is_empty() {
            self.persist_shards(shards_of(&events));
            self.note_events(&events);
        }
        events
    }

    fn lock_engine(&self) -> std::sync::MutexGuard<'_, Engine> {
        self.engine.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Silence rules on the clock: appends the events; call about once a second.
    pub async fn tick(&self) -> Result<(), AppendError> {
        let events = self.lock_engine().tick(self.now_ms());
        if events.is_empty() {
            return Ok(());
        }
        self.persist_shards(shards_of(&events));
        self.note_events(&events);
        self.buffer
            .append(events.into_iter().map(Record::Alarm).collect())
            .await
            .map(|_| ())
    }

    /// Saves the shards of the engine state that changed (periodically, and on shutdown), so
    /// silence tracking survives.
    pub fn save_engine_state(&self) {
        let dirty = self.lock_engine().dirty_shards();
        self.persist_shards(dirty);
    }

    /// Saves the shards in `mask`, one at a time: the engine is held only to copy one shard;
    /// encoding and writing happen without it.
    fn persist_shards(&self, mask: u64) {
        let _saving = self.saving.lock().unwrap_or_else(|p| p.into_inner());
        for shard in (0..SHARDS).filter(|i| mask & (1 << i) != 0) {
            let snapshot = self.lock_engine().shard_snapshot(shard);
            let result = postcard::to_stdvec(&snapshot)
                .map_err(|e| e.to_string())
                .and_then(|bytes| {
                    self.buffer
                        .set_state(&shard_key(shard), &bytes)
                        .map_err(|e| e.to_string())
                });
            if let Err(e) = result {
                static LOG: Throttle = Throttle::new(Duration::from_secs(10));
                if let Some(suppressed) = LOG.allow() {
                    tracing::error!(error = %e, shard, suppressed, "could not persist alarm state");
                }
            }
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
        self.lock_engine().active()
    }

    pub fn engine_stats(&self) -> EngineStats {
        self.lock_engine().stats()
    }

    /// Swaps in new rules; states of unchanged rules are kept.
    pub fn reload_rules(&self, rules: Vec<Rule>) {
        self.lock_engine().reload(rules);
        self.save_engine_state();
    }
}

/// The shards holding the series of these events.
fn shards_of(events: &[gateway_buffer::AlarmEvent]) -> u64 {
    events
        .iter()
        .fold(0, |m, e| m | 1 << alarm::shard_of(&e.device, &e.metric))
}

/// A persisted engine snapshot under `key`; `None` when absent or empty (a retired key). An
/// unreadable one is logged and skipped: the other shards still restore.
fn read_snapshot(buffer: &Buffer, key: &str) -> Option<Snapshot> {
    match buffer.state(key) {
        Ok(Some(bytes)) if !bytes.is_empty() => match postcard::from_bytes(&bytes) {
            Ok(snapshot) => Some(snapshot),
            Err(e) => {
                tracing::error!(error = %e, key, "alarm state unreadable; its series start with no active alarms");
                None
            }
        },
        Ok(_) => None,
        Err(e) => {
            tracing::error!(error = %e, key, "alarm state could not be read; its series start with no active alarms");
            None
        }
    }
}
