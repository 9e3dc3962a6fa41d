//! What every source does with what it read: alarm rules, then windows and deadbands, then a
//! durable append; or, for something unreadable, a count and a dead letter.
//!
//! Sources call [`Pipeline::ingest`] and acknowledge their input only when it returns `Ok`.
//!
//! # Windows and deadbands are exact across restarts
//! The alarm rules see every raw reading first. Then the [`Reducer`] decides what goes upstream
//! (raw readings kept, dropped or suppressed; aggregates of windows that closed), and the state
//! of every series the batch changed is handed to the buffer *with the batch's records*
//! ([`Buffer::queue_in_line_with_state`]): the committer writes it after the records' blocks,
//! in the same group commit, and only if the records are stored. So:
//! - A reading is acknowledged only once its contribution is durable. A crash (SIGKILL, power
//!   cut) never loses a contribution that was acknowledged, and never keeps one that was not:
//!   what the broker redelivers after the crash was counted nowhere. The one exception is the
//!   duplicate that at-least-once already allows: a reading made durable whose acknowledgement
//!   the crash cut off is redelivered and counted again (as it would be forwarded again raw).
//! - An emitted window's aggregates and the state saying it was emitted are one commit: a
//!   window is never emitted twice nor lost, by a crash or a restart.
//! - Appends are queued in the order their state was taken (one lock spans reducing a batch and
//!   queueing its append), so the later state of a series is the one that stays.
//! - Nothing is saved at shutdown or on a timer: what is durable is always what was committed.
//!   An append that fails (shutdown while waiting for space, a failed disk) took its state with
//!   it; the process then ends, and the reducer restarts from what is durable.

use crate::alarm::{self, ActiveAlarm, Engine, EngineStats, Rule, SHARDS, Snapshot};
use crate::ops::metrics::IngestMetrics;
use crate::ops::telemetry::Throttle;
use crate::sources::decode::Reject;
use crate::window::{ReduceStats, Reducer, STATE_PREFIX};
use gateway_buffer::{
    AppendError, Appended, Buffer, DeadLetterInput, OnWait, Reading, Record, Source, StateWrites,
};
use gateway_config::Config;
use std::collections::HashSet;
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
    // A std mutex: reducing is short, CPU-only, and never held across an await.
    reducer: Arc<Mutex<Reducer>>,
    /// Held from reducing a batch until its append is queued, so the series' states reach the
    /// committer in the order they were taken (see the module doc).
    order: Arc<tokio::sync::Mutex<()>>,
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
            reducer: Arc::new(Mutex::new(Reducer::new(Vec::new(), Vec::new(), 0))),
            order: Arc::new(tokio::sync::Mutex::new(())),
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
        )
        .with_reducer(Reducer::from_config(config));
        (pipeline, metrics)
    }

    /// Reduces readings with `reducer` (`[[window]]`, `[[deadband]]`), restoring the series'
    /// state the buffer holds.
    pub fn with_reducer(mut self, mut reducer: Reducer) -> Pipeline {
        match self.buffer.states(STATE_PREFIX) {
            Ok(stored) => {
                for key in reducer.restore(stored) {
                    tracing::error!(key = ?key, "window state unreadable; that series starts afresh");
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "window state could not be read; every series starts afresh")
            }
        }
        self.reducer = Arc::new(Mutex::new(reducer));
        self
    }

    pub fn reduce_stats(&self) -> ReduceStats {
        self.lock_reducer().stats()
    }

    fn lock_reducer(&self) -> std::sync::MutexGuard<'_, Reducer> {
        self.reducer.lock().unwrap_or_else(|p| p.into_inner())
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
        let order = self.order.lock().await;
        // Alarm rules see every raw reading, before anything is reduced.
        let mut records: Vec<Record> = self
            .evaluate(&readings)
            .into_iter()
            .map(Record::Alarm)
            .collect();
        let state = self.reduce(readings, &mut records);
        // In line: with the buffer full and set to block, the append waits for space behind
        // every earlier one.
        let metrics = self.metrics.clone();
        let on_wait: OnWait = Box::new(move || {
            metrics.blocked_full.fetch_add(1, Relaxed);
        });
        let outcome = self
            .buffer
            .queue_in_line_with_state(records.into(), state, Some(on_wait))
            .await?;
        drop(order);
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

    /// Runs the readings through the windows and deadbands: pushes what goes upstream onto
    /// `records` (aggregates of windows a reading closed ahead of it) and returns the state of
    /// every series that changed, to be committed with them.
    fn reduce(&self, readings: Vec<Reading>, records: &mut Vec<Record>) -> StateWrites {
        let mut reducer = self.lock_reducer();
        if !reducer.is_active() {
            records.extend(readings.into_iter().map(Record::Reading));
            return StateWrites::new();
        }
        let mut changed: HashSet<(String, String)> = HashSet::new();
        for r in readings {
            let decision = reducer.on_reading(&r);
            records.extend(decision.emitted.into_iter().map(Record::Reading));
            if decision.changed {
                changed.insert((r.device.clone(), r.metric.clone()));
            }
            if decision.forward {
                records.push(Record::Reading(r));
            }
        }
        changed
            .iter()
            .map(|(device, metric)| reducer.state_write(device, metric))
            .collect()
    }

    fn lock_engine(&self) -> std::sync::MutexGuard<'_, Engine> {
        self.engine.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Silence rules and windows on the clock: appends the events and the aggregates of windows
    /// that ended; call about once a second.
    pub async fn tick(&self) -> Result<(), AppendError> {
        let windows = self.tick_windows().await;
        let alarms = self.tick_alarms().await;
        windows.and(alarms)
    }

    /// Emits the windows the clock closed, with the state that says so, in one commit.
    async fn tick_windows(&self) -> Result<(), AppendError> {
        let queued = {
            let _order = self.order.lock().await;
            let (records, state) = {
                let mut reducer = self.lock_reducer();
                let (emitted, changed) = reducer.tick(self.now_ms());
                if changed.is_empty() {
                    return Ok(());
                }
                let state: StateWrites = changed
                    .iter()
                    .map(|(device, metric)| reducer.state_write(device, metric))
                    .collect();
                let records: Vec<Record> = emitted.into_iter().map(Record::Reading).collect();
                (records, state)
            };
            self.buffer
                .queue_in_line_with_state(records.into(), state, None)
                .await?
        };
        queued.await.map(|_| ())
    }

    async fn tick_alarms(&self) -> Result<(), AppendError> {
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
