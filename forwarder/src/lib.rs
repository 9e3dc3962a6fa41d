//! Micro-batching forwarder: drains the durable buffer to one sink, such as the cloud's HTTP
//! endpoint.
//!
//! A forwarder is one consumer of [`gateway_buffer::Buffer`] (`"upstream"` for the HTTP sink of
//! `[upstream]`) with its own cursor per lane, and delivers through one [`Sink`]: the seam
//! between what every way out shares (this crate's driver: batching, concurrency, backoff, dead
//! letters, ordered acks) and what one of them does (take one encoded batch to its destination
//! and classify the outcome). [`HttpSink`] is the WIRE §3 sink, [`MqttSink`] and [`KafkaSink`]
//! those of WIRE §4a; see [`sinks`] for the contract a sink keeps. Below, "the upstream" is the sink's destination.
//!
//! The forwarder reads each lane in seq order, cuts batches of one lane each by
//! `batch_max_records`, `batch_max_bytes` (uncompressed JSON body) or `linger_ms` from the
//! batch's first record, whichever comes first; a batch whose stream of records stopped is cut
//! once quiet, before its linger ends (the rule is in `batcher.rs`; it leaves
//! a steady trickle batched by linger). It encodes them in the WIRE.md §3 format and hands
//! them to the sink under an `{gateway_id}:{lane}:{first_seq}-{last_seq}` key (the HTTP sink's
//! `Idempotency-Key`). The alarm lane is read first,
//! never lingers, and an alarm batch started while the readings lane is idle gets a head start:
//! readings start only once it completed. Readings already in flight keep flowing, and idle ones
//! wait behind at most one alarm batch, so a steady stream of alarms cannot starve them.
//!
//! Shape: [`Forwarder::new`] (HTTP) or [`Forwarder::with_sink`] returns a [`ForwarderHandle`]
//! (stats, cheap to clone) and a [`ForwarderDriver`] whose [`ForwarderDriver::run`] future the
//! caller spawns; the crate spawns nothing. The decisions are pure state machines with the
//! clock and I/O outside them: [`Batcher`] (when to cut), [`Pacing`] (how many attempts at
//! once, and when every attempt must wait), [`Backoff`] (how long), [`Outcome`] (what an
//! attempt means), [`AckOrder`] (how far the cursor may move).
//!
//! # Guarantees
//! - **At least once, never dropped.** A batch is acked in the buffer only after a 2xx, or
//!   after it was parked as a dead letter (reason `upstream_rejected`, origin the consumer name,
//!   payload [`gateway_buffer::DeadPayload::Records`] with the original seqs, detail = status +
//!   the first 1 KiB of the response body) because the sink refused it ([`Outcome::Refused`]:
//!   for HTTP, a status the [`RetryPolicy`] does not retry). Retryable failures — 408, 429, 5xx (configurable), 1xx/3xx,
//!   timeouts, connection and TLS errors — are retried forever.
//! - **Same batch, same bytes.** A batch is encoded (and gzipped) once and every retry sends the
//!   identical body and Idempotency-Key. Before its first send its seq range is written to
//!   consumer meta (`inflight.alarms` / `inflight.readings`); after a restart those ranges are
//!   re-read and sent first, so the cloud sees the same records under the same key.
//! - **Order.** Alarm batches go one at a time, so they reach the upstream in seq order and a
//!   raise always arrives before its clear. With `max_in_flight = 1` readings batches do too.
//!   With more, the cursor is acked only up to the highest batch below which every batch is done.
//! - **Adaptive concurrency.** Readings attempts on the wire adapt between 1 and `max_in_flight`
//!   ([`Pacing`]): doubling per round from 1 while answers stay fast, then one more per round;
//!   halved by a retryable failure, cut by a quarter when latency rises past twice its baseline.
//!   Waiting attempts go in batch order.
//! - **Backoff holds the upstream.** A retryable failure holds every attempt of both lanes for
//!   the backoff: exponential with full jitter, step *n* a uniform draw from
//!   `0..=min(retry_max, retry_initial·2ⁿ)` raised to at least `retry_initial`, one step per round
//!   of failures; a `Retry-After` (seconds or HTTP date, capped at one hour) is a floor. While the
//!   upstream gives no answer at all, a TCP connect probes it every [`PROBE_EVERY`]; once a probe
//!   that failed is followed by one that connects, the hold ends (not through a proxy set in the
//!   environment).
//! - **Full batches from a backlog.** An open batch is topped up from the buffer before its
//!   linger may cut it, so only a caught-up lane sends a batch below its caps.
//! - **Bounded memory.** At most one batch per lane is being filled, and one alarms batch and
//!   `max_in_flight` readings batches are in flight (more than the current concurrency only
//!   right after it dropped: those wait their turn); a backlog is streamed from disk one batch at a time.
//! - **Exact eviction accounting.** Before every attempt, the first included, a batch sheds
//!   the records the buffer evicted since they were read ([`gateway_buffer::Buffer::shed_evicted`]),
//!   which counts them as dropped; what an attempt delivers is counted delivered. A record is
//!   thus counted dropped or delivered, never both: one evicted while its attempt is on the wire
//!   is delivered if that attempt succeeds, shed before the next one otherwise.
//! - **Replays first.** Records put back with [`gateway_buffer::Buffer::requeue`] (dead-letter
//!   replay) are sent, one batch at a time, before the lane's normal records.
//! - **Shutdown.** When the token is cancelled no new batch starts, batches waiting to retry
//!   give up their wait, sends on the wire get until the grace period ends, and the buffer is
//!   flushed so acks are durable.
//!
//! # Non-guarantees
//! - **Duplicates happen**: a batch delivered but not yet acked durably when the process dies is
//!   sent again (same key and seqs); the cloud deduplicates on `(gateway_id, seq)`.
//! - **A batch may shrink**: records the buffer evicted (`drop_oldest`) or expired before an
//!   attempt are shed, and the rest goes under the idempotency key of the survivors' range; after
//!   a restart, a re-read in-flight range carries only its survivors.
//! - **Replayed batches are re-formed** from the requeue store after a restart rather than
//!   persisted as ranges; their seqs are unchanged, their grouping may differ.
//! - **Alarm priority is by start, not by wire**: an alarm arriving while readings batches are
//!   being sent goes out concurrently with them (on a slot of its own), not before them, and more
//!   readings batches may start meanwhile.
//! - **A rejection is final for that batch** even if only one record in it was bad; the whole
//!   batch is parked so an operator can inspect and replay it.

mod ack;
mod backoff;
mod batcher;
mod driver;
mod error;
mod gate;
mod options;
mod outcome;
mod pacing;
pub mod sinks;
mod stats;
mod wire;

pub use ack::{AckOrder, SeqRange};
pub use backoff::{Backoff, MAX_RETRY_AFTER, parse_retry_after};
pub use batcher::{BatchLimits, Batcher, Cut};
pub use driver::{
    DEAD_LETTER_ORIGIN, DEAD_LETTER_REASON, Forwarder, ForwarderDriver, ForwarderHandle,
};
pub use error::ForwarderError;
pub use gate::PROBE_EVERY;
/// The config's own types, taken as loaded: where they are used, not translated.
pub use gateway_config::{Compression, RetryPolicy};
pub use options::{CONSUMER, ForwarderOptions};
pub use outcome::{Outcome, RetryReason};
pub use pacing::{Admit, Answer, HoldCause, LATENCY_SLACK, Pacing, Ticket};
pub use sinks::http::{HttpSink, MAX_REJECTION_BODY_BYTES};
pub use sinks::kafka::{KafkaSink, KafkaSinkOptions};
pub use sinks::mqtt::{MqttConnection, MqttSink, MqttSinkOptions};
pub use sinks::{Attempt, EncodedBatch, Sink};
pub use stats::{
    DOWN_AFTER_FAILURES, ForwarderStats, LATENCY_BUCKETS_S, LatencyHistogram, PerLane,
    UpstreamState,
};
pub use wire::{encode_body, encode_record, idempotency_key};
