//! Counters and gauges served by [`crate::Buffer::stats`]; all kept in memory, updated as the
//! buffer works, computed once at open from block headers. Counters (`*_total`, `dropped_*`,
//! `expired`, `undecodable`) count since this open.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

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
    /// How long those group commits took.
    pub commit_times: CommitTimes,
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

/// Upper bounds, in seconds, of the buckets of every [`Durations`]: from a group commit on a fast
/// disk (~0.2 ms fsync) or an SD card (~2 ms), through a commit window stretched at a trickle
/// (50 ms by default), to a disk that stalls.
pub const LATENCY_BUCKETS_S: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// How long the group commits since open took, in two phases: `write` (waiting for the
/// buffer's lock, encoding the blocks and handing them to sled) and `flush` (sled's flush and
/// the `fdatasync`). A PUBACK waits for both. And `idle_flush`: the flushes of acks and state
/// between commits (the committer takes no group while one runs).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CommitTimes {
    pub write: DurationHistogram,
    pub flush: DurationHistogram,
    pub idle_flush: DurationHistogram,
}

/// A snapshot of [`Durations`]: counts in the buckets of [`LATENCY_BUCKETS_S`], Prometheus style.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DurationHistogram {
    /// `cumulative[i]` observations were ≤ `LATENCY_BUCKETS_S[i]`; the last entry counts every
    /// one (`+Inf`).
    pub cumulative: Vec<u64>,
    /// Their sum, µs.
    pub sum_us: u64,
    /// The longest, µs.
    pub max_us: u64,
}

impl DurationHistogram {
    pub fn count(&self) -> u64 {
        self.cumulative.last().copied().unwrap_or(0)
    }

    /// The upper bound, in ms, of the bucket holding quantile `q` (0..=1): an estimate from
    /// above. `None` before any observation, or when the quantile falls past the last bound.
    pub fn quantile_ms(&self, q: f64) -> Option<f64> {
        let count = self.count();
        if count == 0 {
            return None;
        }
        let rank = (q * count as f64).ceil().max(1.0) as u64;
        let i = self.cumulative.iter().position(|&c| c >= rank)?;
        LATENCY_BUCKETS_S.get(i).map(|b| b * 1000.0)
    }
}

/// A histogram of durations kept in atomics, so whoever observes never waits on a reader (the
/// buffer's commits, the gateway's PUBACKs).
#[derive(Debug, Default)]
pub struct Durations {
    buckets: [AtomicU64; LATENCY_BUCKETS_S.len() + 1],
    sum_us: AtomicU64,
    max_us: AtomicU64,
}

impl Durations {
    /// Counts `n` events that each took `took`.
    pub fn observe(&self, took: Duration, n: u64) {
        let secs = took.as_secs_f64();
        let bucket = LATENCY_BUCKETS_S
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(LATENCY_BUCKETS_S.len());
        self.buckets[bucket].fetch_add(n, Relaxed);
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.sum_us.fetch_add(us.saturating_mul(n), Relaxed);
        if n > 0 {
            self.max_us.fetch_max(us, Relaxed);
        }
    }

    pub fn snapshot(&self) -> DurationHistogram {
        let mut total = 0;
        let cumulative = self
            .buckets
            .iter()
            .map(|b| {
                total += b.load(Relaxed);
                total
            })
            .collect();
        DurationHistogram {
            cumulative,
            sum_us: self.sum_us.load(Relaxed),
            max_us: self.max_us.load(Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_duration_lands_in_the_first_bucket_that_holds_it_and_quantiles_come_from_above() {
        let d = Durations::default();
        assert_eq!(d.snapshot().quantile_ms(0.99), None);
        d.observe(Duration::from_micros(300), 98);
        d.observe(Duration::from_millis(40), 1);
        d.observe(Duration::from_secs(30), 1);
        d.observe(Duration::from_secs(99), 0);
        let h = d.snapshot();
        assert_eq!(h.count(), 100);
        assert_eq!(h.cumulative[0], 98, "0.3 ms is within the 0.5 ms bucket");
        assert_eq!(
            h.cumulative[6] - h.cumulative[5],
            1,
            "40 ms is in (25, 50] ms"
        );
        assert_eq!(h.cumulative[13], 99, "30 s is past the last bound");
        assert_eq!(h.quantile_ms(0.5), Some(0.5));
        assert_eq!(h.quantile_ms(0.99), Some(50.0));
        assert_eq!(h.quantile_ms(1.0), None);
        assert_eq!(h.max_us, 30_000_000);
        assert_eq!(h.sum_us, 98 * 300 + 40_000 + 30_000_000);
    }
}
