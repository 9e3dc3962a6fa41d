//! Sinks: what takes durable records and alarm events out of the buffer and delivers them
//! somewhere.
//!
//! # What a sink is here
//! - **It reads only what is durable.** A sink is a consumer of the buffer with a cursor of its
//!   own (its `CONSUMER` name, registered by [`buffer::options`](crate::buffer::options)),
//!   reading one lane or both; the buffer shows readers only durable records.
//! - **It acknowledges only once delivered.** A record is acked to the buffer after its
//!   destination took it, or after it was counted because the destination never will (the
//!   forwarder keeps such a batch as a dead letter; the local alarm topics count and skip an
//!   event no broker accepts); so a restart or an outage repeats records and never skips one.
//! - **It never holds back the others.** Each sink has its own cursor, and one record that
//!   cannot be delivered must not stop its cursor: the buffer keeps a record until every
//!   consumer acked it, and with `buffer.when_full = "block"` a stuck cursor would in the end
//!   stop ingest.
//! - **It stops on the token,** after the sources: what it has not acked is read again on the
//!   next start.
//!
//! The local alarm topics on the gateway's own broker ([`local_alarms`]) are the sink that lives
//! in this crate. The upstream sinks (batches to the cloud, retries, dead letters of refused
//! batches) live in the `gateway-forwarder` crate: the HTTP sink of `[upstream]` (consumer
//! `upstream`) and one [`Forwarder`](gateway_forwarder::Forwarder) per `[[sink]]` (consumer =
//! its name, on the lanes it lists; an MQTT bridge runs its connection task beside it; a Kafka
//! sink needs none). The
//! `wiring` module builds them and runs their drivers beside these; [`SinkView`] is how
//! operations code sees each of them.

pub mod local_alarms;

use gateway_buffer::{Buffer, BufferStats, Lane};
use gateway_forwarder::ForwarderHandle;

/// One forwarder sink as operations code (metrics, `/status`) sees it.
#[derive(Clone, Debug)]
pub struct SinkView {
    /// Its name: the buffer consumer (`upstream` for `[upstream]`, else `sink[].name`).
    pub name: String,
    /// `http`, `mqtt` or `kafka`.
    pub kind: &'static str,
    /// The lanes it reads.
    pub lanes: Vec<Lane>,
    /// Its forwarder's counters.
    pub forwarder: ForwarderHandle,
}

impl SinkView {
    /// How far the sink's cursor on `lane` is behind the newest durable record, in seqs: an
    /// upper bound on the records of that lane it has yet to deliver (both lanes draw from one
    /// seq sequence). 0 for a lane it does not read, and when the lane holds nothing any sink
    /// still needs.
    /// `stats` is the buffer's, taken once for every sink.
    pub fn lag_seqs(&self, buffer: &Buffer, stats: &BufferStats, lane: Lane) -> u64 {
        if !self.lanes.contains(&lane) || stats.lane(lane).records == 0 {
            return 0;
        }
        let acked = buffer.acked(&self.name, lane).unwrap_or(0);
        stats.last_durable_seq.saturating_sub(acked)
    }
}
