//! The seam between the shared delivery machinery and one way out of the gateway.
//!
//! The driver owns everything every sink needs alike: reading the buffer with the sink's own
//! cursor, cutting batches, encoding them once, the adaptive concurrency and the hold
//! ([`crate::Pacing`]), backoff, dead letters, ordered acks and eviction accounting. A [`Sink`]
//! does one thing: it takes one encoded batch to its destination once and says what came of it
//! as an [`Outcome`]: delivered, retry (perhaps after a time the destination named), or refused
//! for good. It never retries, sleeps or touches the buffer itself.
//!
//! A sink must:
//! - answer every attempt, never panic: every failure is an [`Outcome`];
//! - report [`Outcome::Delivered`] only once the destination has taken the batch for good (an
//!   HTTP 2xx, an MQTT PUBACK), since the cursor moves past it then;
//! - send the same bytes every time it is handed the same batch, so the destination can
//!   deduplicate on `(gateway_id, seq)`;
//! - report [`Outcome::Refused`] only when sending the same batch again cannot help: the batch
//!   goes to the dead letters and the lane moves on.

pub mod http;
pub mod kafka;
pub mod mqtt;

use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use gateway_buffer::{Lane, Stored};

use crate::gate::ProbeTarget;
use crate::outcome::Outcome;

/// One way out: delivers encoded batches and classifies each attempt.
pub trait Sink: fmt::Debug + Send + Sync + 'static {
    /// The batch body as this sink sends it, from the batch's WIRE §3 JSON: called once per
    /// batch (and again only when evictions shrink it), never per attempt.
    fn encode(&self, json: Vec<u8>) -> Bytes {
        Bytes::from(json)
    }

    /// Where to probe reachability with a bare TCP connect while attempts fail without an
    /// answer; `None`: do not probe (the backoff alone decides).
    fn probe_target(&self) -> Option<ProbeTarget>;

    /// Takes `batch` to the destination once.
    fn attempt<'a>(&'a self, batch: &'a EncodedBatch) -> BoxFuture<'a, Attempt>;
}

/// A batch ready to go: encoded once, then sent byte-for-byte on every attempt.
#[derive(Debug)]
pub struct EncodedBatch {
    /// Its lane.
    pub lane: Lane,
    /// Seq of the last record.
    pub last_seq: u64,
    /// `{gateway_id}:{lane}:{first_seq}-{last_seq}`.
    pub idempotency_key: String,
    /// The body as sent (see [`Sink::encode`]).
    pub body: Bytes,
    /// The records, for the dead-letter store if the destination refuses them.
    pub records: Vec<Stored>,
}

impl EncodedBatch {
    /// `records` (not empty, in seq order) with their encoded `body` and the idempotency key
    /// of their seq range.
    pub fn new(gateway_id: &str, lane: Lane, records: Vec<Stored>, body: Bytes) -> Self {
        let first_seq = records.first().map_or(0, |r| r.seq);
        let last_seq = records.last().map_or(0, |r| r.seq);
        EncodedBatch {
            lane,
            last_seq,
            idempotency_key: crate::wire::idempotency_key(gateway_id, lane, first_seq, last_seq),
            body,
            records,
        }
    }
}

/// What came of one attempt.
#[derive(Debug)]
pub struct Attempt {
    /// Its meaning.
    pub outcome: Outcome,
    /// Time to the destination's answer, if one came (feeds the latency histogram and the
    /// adaptive concurrency).
    pub latency: Option<Duration>,
}
