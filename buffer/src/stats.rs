//! Counters and gauges served by [`crate::Buffer::stats`]; all kept in memory, updated as the
//! buffer works, computed once at open from block headers. Counters (`*_total`, `dropped_*`,
//! `expired`, `undecodable`) count since this open.

use std::path::PathBuf;

use crate::record::Lane;

/// One lane.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LaneStats {
    /// Records not yet acked by every consumer (the depth).
    pub records: u64,
    /// Bytes of stored blocks (compressed sled values; sled's own overhead is not included).
    pub bytes: u64,
    /// Stored blocks.
    pub blocks: u64,
    /// Smallest record `ts_ms` in the oldest stored block.
    pub oldest_ts_ms: Option<i64>,
    /// When the oldest stored block was first written (gateway clock).
    pub oldest_stored_ms: Option<i64>,
    /// Age of the oldest stored block, ms (now − `oldest_stored_ms`).
    pub oldest_age_ms: Option<i64>,
    /// Records appended since open.
    pub appended_total: u64,
    /// Records evicted un-acked by the byte quota (`drop_oldest`).
    pub dropped_quota: u64,
    /// Records deleted un-acked by `max_age_s`.
    pub expired: u64,
    /// Records lost because their block no longer decoded (its bytes are in the dead letters).
    pub undecodable: u64,
    /// Requeued records waiting (gauge).
    pub requeued: u64,
    /// Records evicted (quota or expiry) while the accounting consumer (the forwarder) held
    /// them un-acked (gauge): it either delivers them (then they count as delivered) or sheds
    /// them (then `dropped_quota` or `expired` counts them). At every moment, per lane,
    /// `appended_total == records + dropped_quota + expired + undecodable + evicted_in_flight
    /// + records the consumer acked` (records requeued or read back from disk at open aside).
    pub evicted_in_flight: u64,
}

impl LaneStats {
    /// Every record lost without being acked, whatever the reason.
    pub fn dropped_total(&self) -> u64 {
        self.dropped_quota + self.expired + self.undecodable
    }
}

/// What eviction took from one consumer in one lane, since open: records removed by the quota
/// or by `max_age_s` before the consumer acked them, and not delivered by it afterwards. A
/// consumer that keeps up loses nothing; a slow or down one loses what the quota evicts before
/// it had it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConsumerLaneStats {
    /// Records evicted by the byte quota (`drop_oldest`).
    pub dropped_quota: u64,
    /// Records deleted by `max_age_s`.
    pub expired: u64,
    /// Records evicted while the consumer held them un-acked (gauge): it delivers or sheds them.
    pub evicted_in_flight: u64,
}

/// One consumer's losses, per lane ([`crate::Buffer::consumer_stats`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConsumerStats {
    /// The alarms lane (zero for a consumer that does not read it).
    pub alarms: ConsumerLaneStats,
    /// The readings lane (zero for a consumer that does not read it).
    pub readings: ConsumerLaneStats,
}

impl ConsumerStats {
    /// One lane.
    pub fn lane(&self, lane: Lane) -> &ConsumerLaneStats {
        match lane {
            Lane::Alarms => &self.alarms,
            Lane::Readings => &self.readings,
        }
    }
}

/// The dead-letter store (both kinds summed, and each kind).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeadLetterStats {
    /// Letters kept.
    pub count: u64,
    /// Their encoded bytes.
    pub bytes: u64,
    /// Letters dropped since open by their kind's quota.
    pub dropped: u64,
    /// Rejected input (`dead_letter_max_bytes`).
    pub input: DeadKindStats,
    /// Batches the upstream refused (`refused_dead_letter_max_bytes`).
    pub refused: DeadKindStats,
}

/// One kind of dead letters ([`crate::DeadKind`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeadKindStats {
    /// Letters kept.
    pub count: u64,
    /// Their encoded bytes.
    pub bytes: u64,
    /// Letters dropped since open because of this kind's quota (or too large for it).
    pub dropped: u64,
}

/// Everything [`crate::Buffer::stats`] reports.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BufferStats {
    /// The alarms lane.
    pub alarms: LaneStats,
    /// The readings lane.
    pub readings: LaneStats,
    /// Dead letters.
    pub dead_letters: DeadLetterStats,
    /// Databases moved aside at this open because sled could not open them (0 or 1).
    pub moved_aside: u64,
    /// Seqs missing from the database at this open: it came back (truncated log, an older
    /// copy restored) with its last seq below the last seq it had made durable, so every record
    /// in between is gone; those that had not been delivered are lost (some may have been
    /// delivered before). The seqs are never reused. An upper bound on the records lost, from
    /// the seq watermark beside the database; that watermark may lag after a power cut, so a
    /// loss inside that lag is not seen.
    pub missing_at_open: u64,
    /// The last durable seq.
    pub last_durable_seq: u64,
    /// Group commits (one flush each) since open; `appended_total / commits` is the mean group.
    pub commits: u64,
    /// Writes and flushes of the database that failed since open (disk full, I/O error). After
    /// the first one the buffer refuses appends until it is reopened
    /// ([`crate::Buffer::health`]).
    pub write_errors: u64,
}

impl BufferStats {
    /// The stats of one lane.
    pub fn lane(&self, lane: Lane) -> &LaneStats {
        match lane {
            Lane::Alarms => &self.alarms,
            Lane::Readings => &self.readings,
        }
    }
}

/// A database moved aside because sled could not open it, still on disk (listed by
/// [`crate::list_moved_aside`]). The buffer never uses it again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MovedAside {
    /// Where it is: `<dir>/buffer.sled.corrupt-<UTC timestamp>`, or with `-N` appended when
    /// two were moved aside in the same second.
    pub path: PathBuf,
    /// Total size of the files under it, in bytes: what removing it frees.
    pub bytes: u64,
    /// When it was moved aside (ms since the epoch, whole seconds), read from its name; `None`
    /// when the name holds no readable time.
    pub moved_at_ms: Option<i64>,
}
