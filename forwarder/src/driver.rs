//! The forwarder's handle and driver: the only part with tasks, timers and the buffer.
//!
//! One driver future owns both lanes. Each loop turn it (1) starts every batch the lanes may
//! start, alarms first, then (2) waits for the first of: shutdown, a send finishing, new durable
//! data, or the readings linger deadline. Sends are futures polled by the driver itself (no
//! spawning); each one runs its own attempt/backoff loop until the batch is delivered or
//! rejected, so a slow or dead upstream never blocks the loop that starts alarm batches.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use futures::stream::{FuturesUnordered, StreamExt};
use gateway_buffer::{Buffer, BufferError, DeadLetterInput, DeadPayload, Lane, Stored};
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::ack::{AckOrder, SeqRange};
use crate::batcher::{BatchLimits, Batcher, Cut};
use crate::error::ForwarderError;
use crate::gate::Gate;
use crate::options::ForwarderOptions;
use crate::outcome::{Outcome, RetryReason};
use crate::pacing::{Answer, HoldCause, Pacing};
use crate::sinks::http::HttpSink;
use crate::sinks::{EncodedBatch, Sink};
use crate::stats::{ForwarderStats, Metrics};
use crate::wire;

/// Dead letters written by the forwarder carry this reason.
pub const DEAD_LETTER_REASON: &str = "upstream_rejected";
/// ... and their sink's consumer name as origin: this one for `[upstream]`.
pub const DEAD_LETTER_ORIGIN: &str = crate::options::CONSUMER;

/// Records asked of the buffer per read when re-reading an in-flight range after a restart.
const RECOVERY_READ_RECORDS: usize = 1024;

/// Builds a forwarder.
#[derive(Debug)]
pub struct Forwarder;

impl Forwarder {
    /// A forwarder to the HTTP sink the options describe (`[upstream]`): validates them and
    /// builds the HTTP client. See [`Forwarder::with_sink`].
    #[allow(clippy::new_ret_no_self)]
    pub fn new(
        buffer: Buffer,
        options: ForwarderOptions,
    ) -> Result<(ForwarderHandle, ForwarderDriver), ForwarderError> {
        let sink = Arc::new(HttpSink::new(&options)?);
        Forwarder::with_sink(buffer, options, sink)
    }

    /// A forwarder to `sink`, reading the buffer as [`ForwarderOptions::consumer`], which the
    /// buffer must list among its consumers. The driver must be run (spawned by the caller) for
    /// anything to be sent; the handle reads its stats from anywhere.
    ///
    /// Of the options, the HTTP ones (`url`, `bearer_token`, `tls`, `compression`,
    /// `retry_policy`) are [`HttpSink`]'s and unused here; the sink brings its own.
    pub fn with_sink(
        buffer: Buffer,
        options: ForwarderOptions,
        sink: Arc<dyn Sink>,
    ) -> Result<(ForwarderHandle, ForwarderDriver), ForwarderError> {
        options.validate()?;
        // Fail now, not at the first read, if the buffer does not know our consumer name (a
        // zero-record read checks the name and touches nothing).
        buffer.read(&options.consumer, Lane::Alarms, Some(u64::MAX), 0, 0)?;
        let metrics = Arc::new(Metrics::default());
        let gate = Arc::new(Gate::new(
            Pacing::new(
                options.max_in_flight,
                options.retry_initial,
                options.retry_max,
            ),
            sink.probe_target(),
        ));
        let handle = ForwarderHandle {
            metrics: metrics.clone(),
            gate: gate.clone(),
        };
        let driver = ForwarderDriver {
            buffer,
            options,
            sink,
            metrics,
            gate,
        };
        Ok((handle, driver))
    }
}

/// Read-only view of a running forwarder. Cheap to clone.
#[derive(Clone, Debug)]
pub struct ForwarderHandle {
    metrics: Arc<Metrics>,
    gate: Arc<Gate>,
}

impl ForwarderHandle {
    /// A snapshot of the counters and gauges.
    pub fn stats(&self) -> ForwarderStats {
        ForwarderStats {
            concurrency: self.gate.limit() as u64,
            ..self.metrics.snapshot()
        }
    }
}

/// The forwarder's work loop; run it with [`ForwarderDriver::run`].
#[derive(Debug)]
pub struct ForwarderDriver {
    buffer: Buffer,
    options: ForwarderOptions,
    sink: Arc<dyn Sink>,
    metrics: Arc<Metrics>,
    /// How many readings attempts may be on the wire, and whether all must wait.
    gate: Arc<Gate>,
}

/// Normal batches come from the lane's queue and move the consumer cursor; requeued ones are
/// replayed dead letters and are acked in the requeue store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Normal,
    Requeued,
}

/// How a send ended.
#[derive(Debug)]
enum Delivery {
    Delivered,
    Refused {
        answer: String,
        detail: String,
    },
    /// Shutdown came while the batch waited to retry: it stays un-acked and is re-sent, as the
    /// same batch, after a restart.
    Abandoned,
    /// Before an attempt, the buffer had evicted every record of it (`drop_oldest` at the
    /// quota, or `max_age_s`): they were shed, counted as dropped there, and not sent.
    Evicted,
}

struct Completion {
    id: u64,
    kind: Kind,
    batch: Arc<EncodedBatch>,
    delivery: Delivery,
}

/// A record and its encoded JSON, as held by the batcher.
type Encoded = (Stored, Vec<u8>);

/// Sends in progress, polled by the driver itself.
type Sends = FuturesUnordered<BoxFuture<'static, Completion>>;

/// A batch formed and encoded, not yet started.
struct Formed {
    kind: Kind,
    records: Vec<Stored>,
    json: Vec<u8>,
}

struct LaneState {
    lane: Lane,
    batcher: Batcher<Encoded>,
    /// Last seq handed to the batcher; `None`: start after the acked cursor.
    cursor: Option<u64>,
    /// The last read found nothing new; set back when the buffer reports new durable data.
    caught_up: bool,
    order: AckOrder,
    /// Batches that were in flight when the process stopped, re-read from their seq ranges.
    recovered: VecDeque<Vec<Stored>>,
    /// A replayed dead-letter batch is being sent; normal records of the lane wait behind it.
    requeue_in_flight: bool,
    /// Readings lane: an alarm batch completed since this lane last started a batch, so it
    /// may start one even while the next alarm batch is in flight.
    waited_out_alarms: bool,
    meta_key: String,
}

impl LaneState {
    fn in_flight(&self) -> usize {
        self.order.len() + usize::from(self.requeue_in_flight)
    }
}

fn meta_key(lane: Lane) -> String {
    format!("inflight.{}", lane.as_str())
}

impl ForwarderDriver {
    /// Forwards until `shutdown` is cancelled, then stops starting batches, lets sends already on
    /// the wire finish for up to `grace`, makes acks durable and returns.
    ///
    /// Batches waiting to retry when shutdown comes are not retried; like any batch not
    /// delivered by the deadline, they stay un-acked and are sent again, with the same seqs and
    /// Idempotency-Key, by the next run.
    ///
    /// Returns an error only if the buffer fails; upstream trouble is retried or dead-lettered.
    pub async fn run(
        self,
        shutdown: CancellationToken,
        grace: Duration,
    ) -> Result<(), ForwarderError> {
        let result = self.forward(&shutdown, grace).await;
        // Acks and consumer meta are flushed lazily by the buffer; make them durable now so a
        // restart does not re-send what was just delivered.
        if let Err(e) = self.buffer.flush().await {
            warn!(error = %e, "forwarder: flushing acks at shutdown failed");
        }
        result
    }

    async fn forward(
        &self,
        shutdown: &CancellationToken,
        grace: Duration,
    ) -> Result<(), ForwarderError> {
        let opts = &self.options;
        let mut lanes = Lane::ALL.map(|lane| LaneState {
            lane,
            batcher: Batcher::new(
                BatchLimits {
                    max_records: opts.batch_max_records,
                    max_bytes: opts.batch_max_bytes,
                    // WIRE.md §3: the alarm lane does not wait for linger_ms.
                    linger: match lane {
                        Lane::Alarms => Duration::ZERO,
                        Lane::Readings => opts.linger,
                    },
                },
                wire::envelope_len(&opts.gateway_id, lane),
            ),
            cursor: None,
            caught_up: false,
            order: AckOrder::default(),
            recovered: VecDeque::new(),
            requeue_in_flight: false,
            waited_out_alarms: false,
            meta_key: meta_key(lane),
        });
        for state in &mut lanes {
            self.recover(state)?;
        }

        let mut durable = self.buffer.subscribe();
        let mut durable_open = true;
        let mut sends = Sends::new();
        let mut next_id = 0u64;
        let mut drain_deadline: Option<Instant> = None;

        loop {
            if drain_deadline.is_none() {
                self.fill(&mut lanes, &mut sends, &mut next_id, shutdown)?;
            } else if sends.is_empty() {
                break;
            }
            self.metrics.set_in_flight(sends.len());
            let linger_deadline = if drain_deadline.is_none() {
                self.linger_deadline(&lanes)
            } else {
                None
            };

            tokio::select! {
                // Cancel-safe: `cancelled()` holds no state.
                () = shutdown.cancelled(), if drain_deadline.is_none() => {
                    info!(in_flight = sends.len(), ?grace, "forwarder: shutting down");
                    drain_deadline = Some(Instant::now() + grace);
                }
                () = sleep_until(drain_deadline.unwrap_or_else(Instant::now)),
                    if drain_deadline.is_some() =>
                {
                    warn!(
                        abandoned = sends.len(),
                        "forwarder: grace period over with sends in flight; they will be re-sent \
                         after restart"
                    );
                    break;
                }
                // Cancel-safe: a completion not taken stays in the set.
                Some(done) = sends.next(), if !sends.is_empty() => {
                    self.complete(&mut lanes, done)?;
                }
                // Cancel-safe: `changed()` only marks the version seen when it returns.
                changed = durable.changed(), if durable_open && drain_deadline.is_none() => {
                    if changed.is_err() {
                        durable_open = false;
                    }
                    for state in &mut lanes {
                        state.caught_up = false;
                    }
                }
                () = sleep_until(linger_deadline.unwrap_or_else(Instant::now)),
                    if linger_deadline.is_some() => {}
            }
        }
        self.metrics.set_in_flight(0);
        Ok(())
    }

    /// Re-reads the batches that were in flight when the last run stopped.
    fn recover(&self, state: &mut LaneState) -> Result<(), ForwarderError> {
        let consumer = &self.options.consumer;
        let Some(bytes) = self.buffer.consumer_meta(consumer, &state.meta_key)? else {
            return Ok(());
        };
        for range in SeqRange::decode_list(&bytes) {
            let mut records = Vec::new();
            let mut after = range.first.checked_sub(1);
            'read: loop {
                let chunk = self.buffer.read(
                    consumer,
                    state.lane,
                    after,
                    RECOVERY_READ_RECORDS,
                    usize::MAX,
                )?;
                if chunk.is_empty() {
                    break;
                }
                for stored in chunk {
                    if stored.seq > range.last {
                        break 'read;
                    }
                    after = Some(stored.seq);
                    records.push(stored);
                }
            }
            // Whatever happens to this range, reading resumes after it.
            state.cursor = Some(state.cursor.map_or(range.last, |c| c.max(range.last)));
            if records.is_empty() {
                // Acked just before the stop (the meta update did not make it to disk).
                continue;
            }
            info!(
                lane = %state.lane,
                first_seq = records[0].seq,
                last_seq = range.last,
                records = records.len(),
                "forwarder: re-sending the batch that was in flight before the restart"
            );
            state.recovered.push_back(records);
        }
        Ok(())
    }

    /// Starts every batch the lanes may start now, alarms first. An alarm batch started while
    /// the readings lane is idle gets a head start: readings wait until it completes, so it
    /// never queues behind a backlog of readings. Readings already flowing keep flowing (alarms
    /// have a slot of their own at the upstream), and idle readings wait behind at most one
    /// alarm batch, or a steady stream of alarms to a distant cloud would starve them.
    fn fill(
        &self,
        lanes: &mut [LaneState; 2],
        sends: &mut Sends,
        next_id: &mut u64,
        shutdown: &CancellationToken,
    ) -> Result<(), ForwarderError> {
        self.fill_lane(&mut lanes[0], sends, next_id, shutdown)?;
        if readings_may_start(lanes) {
            let readings = &mut lanes[1];
            let before = readings.in_flight();
            self.fill_lane(readings, sends, next_id, shutdown)?;
            if readings.in_flight() > before {
                readings.waited_out_alarms = false;
            }
        }
        Ok(())
    }

    /// Batches a lane may have outstanding: alarms one at a time, so a raise always reaches the
    /// cloud before its clear (WIRE §3); readings as many as the adaptive concurrency allows now
    /// (between 1 and `max_in_flight`).
    fn lane_cap(&self, lane: Lane) -> usize {
        match lane {
            Lane::Alarms => 1,
            Lane::Readings => self.gate.limit(),
        }
    }

    fn fill_lane(
        &self,
        state: &mut LaneState,
        sends: &mut Sends,
        next_id: &mut u64,
        shutdown: &CancellationToken,
    ) -> Result<(), ForwarderError> {
        while state.in_flight() < self.lane_cap(state.lane) {
            let Some(Formed {
                kind,
                records,
                json,
            }) = self.next_batch(state)?
            else {
                break;
            };
            *next_id += 1;
            let id = *next_id;
            let first_seq = records[0].seq;
            let last_seq = records[records.len() - 1].seq;
            match kind {
                Kind::Normal => {
                    state.order.start(
                        id,
                        SeqRange {
                            first: first_seq,
                            last: last_seq,
                        },
                    );
                    // Before the first send: a restart must re-send exactly this range.
                    self.persist_in_flight(state)?;
                }
                Kind::Requeued => state.requeue_in_flight = true,
            }
            let json_len = json.len();
            let body = self.sink.encode(json);
            let batch = Arc::new(EncodedBatch {
                lane: state.lane,
                last_seq,
                idempotency_key: wire::idempotency_key(
                    &self.options.gateway_id,
                    state.lane,
                    first_seq,
                    last_seq,
                ),
                body,
                records,
            });
            debug!(
                lane = %state.lane,
                key = %batch.idempotency_key,
                records = batch.records.len(),
                json_bytes = json_len,
                body_bytes = batch.body.len(),
                "forwarder: sending batch"
            );
            // Requeued dead letters live outside the lane: nothing evicts them.
            let evictions = (kind == Kind::Normal).then(|| Evictions {
                buffer: self.buffer.clone(),
                consumer: self.options.consumer.clone(),
                gateway_id: self.options.gateway_id.clone(),
                sink: self.sink.clone(),
            });
            let send = deliver(
                Link {
                    sink: self.sink.clone(),
                    metrics: self.metrics.clone(),
                    gate: self.gate.clone(),
                    shutdown: shutdown.clone(),
                },
                id,
                batch,
                evictions,
            )
            .map(move |(delivery, batch)| Completion {
                id,
                kind,
                batch,
                delivery,
            });
            sends.push(send.boxed());
        }
        Ok(())
    }

    /// The next batch of a lane, if one is ready: a batch recovered from before a restart, then
    /// replayed dead letters, then the lane's queue through the batcher.
    fn next_batch(&self, state: &mut LaneState) -> Result<Option<Formed>, ForwarderError> {
        let opts = &self.options;
        if let Some(records) = state.recovered.pop_front() {
            let json = wire::encode_body(&opts.gateway_id, state.lane, &records);
            return Ok(Some(Formed {
                kind: Kind::Normal,
                records,
                json,
            }));
        }
        if state.requeue_in_flight {
            return Ok(None);
        }
        let requeued =
            self.buffer
                .read_requeued(&opts.consumer, state.lane, opts.batch_max_records)?;
        if !requeued.is_empty() {
            // Cut by bytes like any batch; what does not fit stays queued for the next one.
            let mut batcher = Batcher::new(
                BatchLimits {
                    max_records: opts.batch_max_records,
                    max_bytes: opts.batch_max_bytes,
                    linger: Duration::ZERO,
                },
                wire::envelope_len(&opts.gateway_id, state.lane),
            );
            let now = Instant::now();
            for stored in requeued {
                let mut encoded = Vec::new();
                wire::encode_record(&stored, &mut encoded);
                let len = encoded.len();
                batcher.push((stored, encoded), len, now);
            }
            let cut = batcher
                .flush()
                .expect("at least one requeued record was pushed");
            let (records, json) = self.assemble(state.lane, cut);
            return Ok(Some(Formed {
                kind: Kind::Requeued,
                records,
                json,
            }));
        }
        loop {
            // A full batch first; an open one is topped up from the buffer before its linger
            // may cut it, so a backlog always goes out in full batches.
            let cut = match state.batcher.take_ready() {
                Some(cut) => Some(cut),
                None if state.caught_up => state.batcher.poll(Instant::now()),
                None => None,
            };
            if let Some(cut) = cut {
                let (records, json) = self.assemble(state.lane, cut);
                return Ok(Some(Formed {
                    kind: Kind::Normal,
                    records,
                    json,
                }));
            }
            if state.caught_up {
                return Ok(None);
            }
            // Streams from disk: at most one batch worth of records is read per turn.
            let chunk = self.buffer.read(
                &opts.consumer,
                state.lane,
                state.cursor,
                opts.batch_max_records,
                opts.batch_max_bytes,
            )?;
            if chunk.is_empty() {
                state.caught_up = true;
                continue;
            }
            let now = Instant::now();
            for stored in chunk {
                state.cursor = Some(stored.seq);
                let mut encoded = Vec::with_capacity(160);
                wire::encode_record(&stored, &mut encoded);
                let len = encoded.len();
                state.batcher.push((stored, encoded), len, now);
            }
        }
    }

    fn assemble(&self, lane: Lane, cut: Cut<Encoded>) -> (Vec<Stored>, Vec<u8>) {
        let json = wire::assemble_body(
            &self.options.gateway_id,
            lane,
            cut.items.iter().map(|(_, e)| e.as_slice()),
            cut.bytes,
        );
        debug_assert_eq!(json.len(), cut.bytes);
        let records = cut.items.into_iter().map(|(s, _)| s).collect();
        (records, json)
    }

    /// The earliest linger deadline of a lane that could start a batch when it expires.
    fn linger_deadline(&self, lanes: &[LaneState; 2]) -> Option<Instant> {
        let readings_may_start = readings_may_start(lanes);
        lanes
            .iter()
            .filter(|s| s.in_flight() < self.lane_cap(s.lane))
            .filter(|s| s.lane == Lane::Alarms || readings_may_start)
            .filter_map(|s| s.batcher.deadline())
            .min()
    }

    fn complete(&self, lanes: &mut [LaneState; 2], done: Completion) -> Result<(), ForwarderError> {
        let batch = &done.batch;
        if batch.lane == Lane::Alarms
            && let Some(readings) = lanes.iter_mut().find(|s| s.lane == Lane::Readings)
        {
            readings.waited_out_alarms = true;
        }
        let state = lanes
            .iter_mut()
            .find(|s| s.lane == batch.lane)
            .expect("every lane has a state");
        match done.delivery {
            Delivery::Abandoned => return Ok(()),
            Delivery::Delivered | Delivery::Evicted => {}
            Delivery::Refused { answer, detail } => {
                let detail = format!("{answer}: {detail}");
                error!(
                    consumer = %self.options.consumer,
                    lane = %batch.lane,
                    key = %batch.idempotency_key,
                    records = batch.records.len(),
                    %detail,
                    "forwarder: the sink refused the batch; parked in dead letters"
                );
                self.park(batch.lane, batch.records.clone(), &detail)?;
                self.metrics.dead_lettered(batch.lane, batch.records.len());
            }
        }
        match done.kind {
            Kind::Normal => {
                if let Some(up_to) = state.order.complete(done.id) {
                    self.buffer.ack(&self.options.consumer, state.lane, up_to)?;
                    self.persist_in_flight(state)?;
                }
            }
            Kind::Requeued => {
                self.buffer
                    .ack_requeued(&self.options.consumer, state.lane, batch.last_seq)?;
                state.requeue_in_flight = false;
            }
        }
        Ok(())
    }

    /// Parks rejected records as dead letters, split in halves if one letter would exceed the
    /// dead-letter quota.
    fn park(&self, lane: Lane, records: Vec<Stored>, detail: &str) -> Result<(), ForwarderError> {
        let store = self.buffer.dead_letters();
        let mut pending = vec![records];
        while let Some(records) = pending.pop() {
            let input = DeadLetterInput {
                reason: DEAD_LETTER_REASON.to_string(),
                origin: self.options.consumer.clone(),
                detail: detail.to_string(),
                payload: DeadPayload::Records {
                    lane,
                    records: records.clone(),
                },
            };
            match store.put(input) {
                Ok(_) => {}
                Err(BufferError::DeadLetterTooLarge { .. }) if records.len() > 1 => {
                    let mut first = records;
                    let second = first.split_off(first.len() / 2);
                    // Popped last-in-first-out: keep the letters in seq order.
                    pending.push(second);
                    pending.push(first);
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    fn persist_in_flight(&self, state: &LaneState) -> Result<(), ForwarderError> {
        let value = SeqRange::encode_list(state.order.ranges());
        self.buffer
            .set_consumer_meta(&self.options.consumer, &state.meta_key, &value)?;
        Ok(())
    }
}

/// Whether the readings lane (`lanes[1]`) may start batches next to the alarm lane (`lanes[0]`):
/// no alarm batch in flight, readings already flowing, or an alarm batch completed since
/// readings last started one (see [`ForwarderDriver::fill`]).
fn readings_may_start([alarms, readings]: &[LaneState; 2]) -> bool {
    alarms.in_flight() == 0 || readings.in_flight() > 0 || readings.waited_out_alarms
}

/// What a send needs besides its batch: the sink, the counters, the sink's pacing and the
/// shutdown signal.
struct Link {
    sink: Arc<dyn Sink>,
    metrics: Arc<Metrics>,
    gate: Arc<Gate>,
    shutdown: CancellationToken,
}

/// Sends one batch until it is delivered or rejected. Every attempt first passes the upstream's
/// [`Gate`]: a readings slot of the adaptive concurrency, and the end of any hold (backoff,
/// `Retry-After`) that a failure of any batch set. Returns `Abandoned` instead of waiting once
/// `shutdown` is cancelled.
///
/// Before every attempt (the first included) the records the buffer evicted since they were
/// read are shed from the batch (and counted as dropped by the buffer), so a record is counted
/// either dropped or delivered, never both: one evicted while an attempt is on the wire is
/// delivered by that attempt if it succeeds (and was never counted dropped), or shed before the
/// next. Returns how the send ended and the batch as last sent (what a rejection parks).
async fn deliver(
    link: Link,
    id: u64,
    mut batch: Arc<EncodedBatch>,
    evictions: Option<Evictions>,
) -> (Delivery, Arc<EncodedBatch>) {
    let Link {
        sink,
        metrics,
        gate,
        shutdown,
    } = link;
    let mut is_retry = false;
    loop {
        let Some(pass) = gate.enter(batch.lane, id, &shutdown).await else {
            return (Delivery::Abandoned, batch);
        };
        if let Some(evictions) = &evictions {
            match evictions.trim(&batch) {
                Trim::Whole => {}
                Trim::Part(rest) => {
                    info!(
                        key = %batch.idempotency_key,
                        now = %rest.idempotency_key,
                        evicted = batch.records.len() - rest.records.len(),
                        "forwarder: the buffer evicted part of a batch before it was delivered; sending the rest"
                    );
                    batch = Arc::new(rest);
                }
                Trim::Gone => {
                    info!(key = %batch.idempotency_key, "forwarder: the buffer evicted a whole batch before it was delivered");
                    gate.release(pass);
                    return (Delivery::Evicted, batch);
                }
            }
        }
        metrics.attempt(is_retry);
        let attempt = sink.attempt(&batch).await;
        if let Some(latency) = attempt.latency {
            metrics.response_latency(latency);
        }
        let answer = match &attempt.outcome {
            Outcome::Delivered | Outcome::Refused { .. } => {
                Answer::Fine(attempt.latency.unwrap_or_default())
            }
            Outcome::Retry {
                reason,
                retry_after,
            } => Answer::Failed {
                cause: match reason {
                    RetryReason::Answered(_) => HoldCause::Answered,
                    RetryReason::Timeout | RetryReason::Connect(_) | RetryReason::Transport(_) => {
                        HoldCause::Unreachable
                    }
                },
                retry_after: *retry_after,
            },
        };
        let hold = gate.finish(pass, answer);
        match attempt.outcome {
            Outcome::Delivered => {
                metrics.delivered(batch.lane, batch.records.len(), batch.body.len());
                return (Delivery::Delivered, batch);
            }
            Outcome::Refused { answer, detail } => {
                metrics.rejected(format!("{} rejected with {answer}", batch.idempotency_key));
                return (Delivery::Refused { answer, detail }, batch);
            }
            Outcome::Retry { reason, .. } => {
                // This failure set the hold, or a failure of the same round already had.
                let delay = hold.or_else(|| gate.held_for()).unwrap_or_default();
                warn!(
                    key = %batch.idempotency_key,
                    %reason,
                    retry_in_ms = delay.as_millis() as u64,
                    concurrency = gate.limit(),
                    "forwarder: upstream attempt failed; every batch waits, then this one is retried"
                );
                metrics.failed_retryable(
                    reason == RetryReason::Timeout,
                    format!("{}: {reason}", batch.idempotency_key),
                    delay,
                );
                is_retry = true;
            }
        }
    }
}

/// What a batch still holds once the buffer's evictions are taken out.
#[derive(Debug)]
enum Trim {
    Whole,
    Part(EncodedBatch),
    Gone,
}

/// Lets a send see what the buffer evicted (`drop_oldest`, `max_age_s`) since the batch was
/// read, and shed it, so a record is either counted as dropped or delivered, never both.
struct Evictions {
    buffer: Buffer,
    consumer: String,
    gateway_id: String,
    sink: Arc<dyn Sink>,
}

impl Evictions {
    fn trim(&self, batch: &EncodedBatch) -> Trim {
        let seqs: Vec<u64> = batch.records.iter().map(|r| r.seq).collect();
        match self.buffer.shed_evicted(&self.consumer, batch.lane, &seqs) {
            Ok(shed) => trim_batch(batch, &shed, &self.gateway_id, self.sink.as_ref()),
            Err(e) => {
                // Nothing was shed, so nothing was counted: sending all of it stays exact.
                warn!(error = %e, key = %batch.idempotency_key, "forwarder: could not ask the buffer what it evicted; sending the batch whole");
                Trim::Whole
            }
        }
    }
}

/// `batch` without the records whose seqs are in `shed` (sorted ascending, as
/// [`Buffer::shed_evicted`] returns them for a batch in seq order): re-encoded under the
/// idempotency key of the survivors' range.
fn trim_batch(batch: &EncodedBatch, shed: &[u64], gateway_id: &str, sink: &dyn Sink) -> Trim {
    if shed.is_empty() {
        return Trim::Whole;
    }
    let records: Vec<Stored> = batch
        .records
        .iter()
        .filter(|r| shed.binary_search(&r.seq).is_err())
        .cloned()
        .collect();
    if records.is_empty() {
        return Trim::Gone;
    }
    if records.len() == batch.records.len() {
        return Trim::Whole;
    }
    let body = sink.encode(wire::encode_body(gateway_id, batch.lane, &records));
    Trim::Part(EncodedBatch::new(gateway_id, batch.lane, records, body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use gateway_buffer::{Reading, Record, Source};
    use gateway_config::Compression;

    /// The HTTP sink, gzipping or not: what a trimmed batch is re-encoded for.
    fn http(gzip: bool) -> HttpSink {
        let mut options = ForwarderOptions::new("gw", "http://127.0.0.1:9/ingest".parse().unwrap());
        options.compression = if gzip {
            Compression::Gzip
        } else {
            Compression::None
        };
        HttpSink::new(&options).unwrap()
    }

    fn stored(seq: u64) -> Stored {
        Stored {
            seq,
            record: Record::Reading(Reading {
                device: format!("dev-{seq}"),
                metric: "temperature".into(),
                value: seq as f64,
                unit: None,
                ts_ms: 1_764_081_600_000 + seq as i64,
                source: Source::Mqtt,
            }),
        }
    }

    fn batch(seqs: &[u64]) -> EncodedBatch {
        let records: Vec<Stored> = seqs.iter().copied().map(stored).collect();
        let json = wire::encode_body("gw", Lane::Readings, &records);
        EncodedBatch::new("gw", Lane::Readings, records, json.into())
    }

    fn seqs_in_body(b: &EncodedBatch) -> Vec<u64> {
        let v: serde_json::Value = serde_json::from_slice(&b.body).unwrap();
        v["records"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["seq"].as_u64().unwrap())
            .collect()
    }

    #[test]
    fn a_batch_nothing_of_which_was_evicted_is_sent_as_it_was() {
        let b = batch(&[3, 5, 8]);
        assert!(matches!(
            trim_batch(&b, &[], "gw", &http(false)),
            Trim::Whole
        ));
        // Seqs shed that are not in the batch change nothing either.
        assert!(matches!(
            trim_batch(&b, &[4, 9], "gw", &http(false)),
            Trim::Whole
        ));
    }

    #[test]
    fn a_partly_evicted_batch_keeps_only_its_survivors_in_records_body_and_key() {
        let b = batch(&[3, 5, 8, 13]);
        let Trim::Part(rest) = trim_batch(&b, &[3, 8], "gw", &http(false)) else {
            panic!("expected a part");
        };
        assert_eq!(
            rest.records.iter().map(|r| r.seq).collect::<Vec<_>>(),
            [5, 13]
        );
        assert_eq!(seqs_in_body(&rest), [5, 13]);
        assert_eq!(rest.idempotency_key, "gw:readings:5-13");
        assert_eq!(rest.last_seq, 13);
        assert_eq!(rest.records[0], b.records[1], "records are kept unchanged");
    }

    #[test]
    fn a_gzipped_trimmed_batch_is_gzipped_again() {
        let b = batch(&[1, 2, 3]);
        let Trim::Part(rest) = trim_batch(&b, &[2], "gw", &http(true)) else {
            panic!("expected a part");
        };
        let mut json = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&rest.body[..]), &mut json)
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(v["records"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn a_batch_whose_every_record_was_evicted_is_gone() {
        let b = batch(&[3, 5]);
        assert!(matches!(
            trim_batch(&b, &[3, 5], "gw", &http(false)),
            Trim::Gone
        ));
    }
}
