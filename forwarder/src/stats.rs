//! Counters and gauges, shared between the driver's tasks and any number of handles.
//!
//! Plain atomics: the hot path (one update per attempt) never takes a lock, and a snapshot is
//! allowed to be a few updates apart between fields.

use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use gateway_buffer::Lane;

/// Upper bounds of the latency histogram buckets, in seconds (Prometheus `le` labels); a final
/// `+Inf` bucket is implied. Spans a LAN round trip to a 10 s timeout.
pub const LATENCY_BUCKETS_S: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// After this many retryable failures in a row the upstream is reported `down`, not merely
/// `backing_off`: one 503 is a hiccup, three in a row is an outage.
pub const DOWN_AFTER_FAILURES: u64 = 3;

/// How the upstream looks from here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpstreamState {
    /// Nothing was sent yet.
    Unknown,
    /// The last attempt got an answer (2xx, or a 4xx rejection: the server is up).
    Ok,
    /// The last attempt failed with a retryable error; retrying.
    BackingOff,
    /// [`DOWN_AFTER_FAILURES`] or more retryable failures in a row.
    Down,
}

impl UpstreamState {
    /// `unknown`, `ok`, `backing_off` or `down`, for /status and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamState::Unknown => "unknown",
            UpstreamState::Ok => "ok",
            UpstreamState::BackingOff => "backing_off",
            UpstreamState::Down => "down",
        }
    }
}

/// A per-lane pair of counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PerLane {
    /// Alarm lane.
    pub alarms: u64,
    /// Readings lane.
    pub readings: u64,
}

impl PerLane {
    /// The count for `lane`.
    pub fn get(&self, lane: Lane) -> u64 {
        match lane {
            Lane::Alarms => self.alarms,
            Lane::Readings => self.readings,
        }
    }
}

/// Upstream request latency, Prometheus style.
#[derive(Clone, Debug, PartialEq)]
pub struct LatencyHistogram {
    /// Bucket upper bounds in seconds ([`LATENCY_BUCKETS_S`]).
    pub bounds_s: &'static [f64],
    /// Cumulative counts: `cumulative[i]` attempts took ≤ `bounds_s[i]`; one more entry at the
    /// end for `+Inf` (equal to `count`).
    pub cumulative: Vec<u64>,
    /// Number of observations.
    pub count: u64,
    /// Sum of observations in seconds.
    pub sum_s: f64,
}

/// A snapshot of the forwarder's counters and gauges.
#[derive(Clone, Debug, PartialEq)]
pub struct ForwarderStats {
    /// Batches the upstream accepted (2xx).
    pub batches_sent: u64,
    /// HTTP attempts made, successful or not.
    pub attempts: u64,
    /// Attempts that failed retryably (408/429/5xx, timeout, connection, TLS).
    pub failed_retryable: u64,
    /// Attempts the upstream rejected for good (other 4xx); each became a dead letter.
    pub failed_permanent: u64,
    /// Attempts that were repeats of an earlier attempt of the same batch.
    pub retries: u64,
    /// Of the retryable failures, how many were per-attempt timeouts.
    pub timeouts: u64,
    /// Batches parked in the dead-letter store.
    pub dead_lettered_batches: u64,
    /// Records delivered, per lane.
    pub records_delivered: PerLane,
    /// Records dead-lettered, per lane.
    pub records_dead_lettered: PerLane,
    /// Request body bytes (as sent, compressed if configured) of delivered batches.
    pub bytes_delivered: u64,
    /// Batches currently in flight (sending or waiting to retry), both lanes.
    pub in_flight: u64,
    /// Readings attempts the adaptive concurrency allows on the wire now (1 to `max_in_flight`).
    pub concurrency: u64,
    /// The delay of the most recent backoff, ms; 0 once a batch gets through.
    pub backoff_ms: u64,
    /// How the upstream looks.
    pub upstream: UpstreamState,
    /// Since when (ms since the epoch) the current run of failures lasts, if one does.
    pub down_since_ms: Option<i64>,
    /// When (ms since the epoch) a batch was last delivered.
    pub last_delivered_ms: Option<i64>,
    /// The last retryable or permanent failure, for humans.
    pub last_error: Option<String>,
    /// Latency of attempts that got an HTTP response.
    pub latency: LatencyHistogram,
}

/// The live counters behind [`ForwarderStats`].
#[derive(Debug, Default)]
pub(crate) struct Metrics {
    batches_sent: AtomicU64,
    attempts: AtomicU64,
    failed_retryable: AtomicU64,
    failed_permanent: AtomicU64,
    retries: AtomicU64,
    timeouts: AtomicU64,
    dead_lettered_batches: AtomicU64,
    records_delivered: [AtomicU64; 2],
    records_dead_lettered: [AtomicU64; 2],
    bytes_delivered: AtomicU64,
    in_flight: AtomicU64,
    backoff_ms: AtomicU64,
    consecutive_failures: AtomicU64,
    /// 0: no failure run in progress.
    down_since_ms: AtomicI64,
    /// 0: never.
    last_delivered_ms: AtomicI64,
    /// A std mutex: written once per failure, read by snapshots, never held across an await.
    last_error: Mutex<Option<String>>,
    latency_buckets: [AtomicU64; LATENCY_BUCKETS_S.len() + 1],
    latency_count: AtomicU64,
    latency_sum_us: AtomicU64,
}

fn lane_index(lane: Lane) -> usize {
    match lane {
        Lane::Alarms => 0,
        Lane::Readings => 1,
    }
}

pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

impl Metrics {
    pub(crate) fn attempt(&self, is_retry: bool) {
        self.attempts.fetch_add(1, Relaxed);
        if is_retry {
            self.retries.fetch_add(1, Relaxed);
        }
    }

    pub(crate) fn response_latency(&self, latency: Duration) {
        let secs = latency.as_secs_f64();
        let bucket = LATENCY_BUCKETS_S
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(LATENCY_BUCKETS_S.len());
        self.latency_buckets[bucket].fetch_add(1, Relaxed);
        self.latency_count.fetch_add(1, Relaxed);
        self.latency_sum_us.fetch_add(
            u64::try_from(latency.as_micros()).unwrap_or(u64::MAX),
            Relaxed,
        );
    }

    pub(crate) fn delivered(&self, lane: Lane, records: usize, body_bytes: usize) {
        self.batches_sent.fetch_add(1, Relaxed);
        self.records_delivered[lane_index(lane)].fetch_add(records as u64, Relaxed);
        self.bytes_delivered.fetch_add(body_bytes as u64, Relaxed);
        self.last_delivered_ms.store(now_ms(), Relaxed);
        self.upstream_answered();
    }

    pub(crate) fn rejected(&self, error: String) {
        self.failed_permanent.fetch_add(1, Relaxed);
        *self.last_error.lock().unwrap() = Some(error);
        self.upstream_answered();
    }

    pub(crate) fn dead_lettered(&self, lane: Lane, records: usize) {
        self.dead_lettered_batches.fetch_add(1, Relaxed);
        self.records_dead_lettered[lane_index(lane)].fetch_add(records as u64, Relaxed);
    }

    pub(crate) fn failed_retryable(&self, timeout: bool, error: String, backoff: Duration) {
        self.failed_retryable.fetch_add(1, Relaxed);
        if timeout {
            self.timeouts.fetch_add(1, Relaxed);
        }
        if self.consecutive_failures.fetch_add(1, Relaxed) == 0 {
            self.down_since_ms.store(now_ms(), Relaxed);
        }
        self.backoff_ms.store(
            u64::try_from(backoff.as_millis()).unwrap_or(u64::MAX),
            Relaxed,
        );
        *self.last_error.lock().unwrap() = Some(error);
    }

    fn upstream_answered(&self) {
        self.consecutive_failures.store(0, Relaxed);
        self.down_since_ms.store(0, Relaxed);
        self.backoff_ms.store(0, Relaxed);
    }

    pub(crate) fn set_in_flight(&self, n: usize) {
        self.in_flight.store(n as u64, Relaxed);
    }

    pub(crate) fn snapshot(&self) -> ForwarderStats {
        let failures = self.consecutive_failures.load(Relaxed);
        let attempts = self.attempts.load(Relaxed);
        let upstream = match failures {
            0 if attempts == 0 => UpstreamState::Unknown,
            0 => UpstreamState::Ok,
            n if n < DOWN_AFTER_FAILURES => UpstreamState::BackingOff,
            _ => UpstreamState::Down,
        };
        let per_lane = |c: &[AtomicU64; 2]| PerLane {
            alarms: c[0].load(Relaxed),
            readings: c[1].load(Relaxed),
        };
        let mut running = 0;
        let cumulative = self
            .latency_buckets
            .iter()
            .map(|b| {
                running += b.load(Relaxed);
                running
            })
            .collect();
        let nonzero = |v: i64| (v != 0).then_some(v);
        ForwarderStats {
            batches_sent: self.batches_sent.load(Relaxed),
            attempts,
            failed_retryable: self.failed_retryable.load(Relaxed),
            failed_permanent: self.failed_permanent.load(Relaxed),
            retries: self.retries.load(Relaxed),
            timeouts: self.timeouts.load(Relaxed),
            dead_lettered_batches: self.dead_lettered_batches.load(Relaxed),
            records_delivered: per_lane(&self.records_delivered),
            records_dead_lettered: per_lane(&self.records_dead_lettered),
            bytes_delivered: self.bytes_delivered.load(Relaxed),
            in_flight: self.in_flight.load(Relaxed),
            concurrency: 0,
            backoff_ms: self.backoff_ms.load(Relaxed),
            upstream,
            down_since_ms: nonzero(self.down_since_ms.load(Relaxed)),
            last_delivered_ms: nonzero(self.last_delivered_ms.load(Relaxed)),
            last_error: self.last_error.lock().unwrap().clone(),
            latency: LatencyHistogram {
                bounds_s: &LATENCY_BUCKETS_S,
                cumulative,
                count: self.latency_count.load(Relaxed),
                sum_s: self.latency_sum_us.load(Relaxed) as f64 / 1e6,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_latency_histogram_is_cumulative_with_an_inf_bucket() {
        let m = Metrics::default();
        m.response_latency(Duration::from_millis(3));
        m.response_latency(Duration::from_millis(30));
        m.response_latency(Duration::from_secs(60));
        let h = m.snapshot().latency;
        assert_eq!(h.cumulative.len(), LATENCY_BUCKETS_S.len() + 1);
        assert_eq!(h.cumulative[0], 1); // ≤ 5 ms
        assert_eq!(h.cumulative[3], 2); // ≤ 50 ms
        assert_eq!(h.cumulative[LATENCY_BUCKETS_S.len() - 1], 2); // ≤ 30 s
        assert_eq!(*h.cumulative.last().unwrap(), 3);
        assert_eq!(h.count, 3);
        assert!((h.sum_s - 60.033).abs() < 1e-6);
    }

    #[test]
    fn the_upstream_goes_from_backing_off_to_down_and_back_to_ok() {
        let m = Metrics::default();
        assert_eq!(m.snapshot().upstream, UpstreamState::Unknown);
        m.attempt(false);
        m.failed_retryable(false, "HTTP 503".into(), Duration::from_millis(200));
        let s = m.snapshot();
        assert_eq!(s.upstream, UpstreamState::BackingOff);
        assert_eq!(s.backoff_ms, 200);
        assert!(s.down_since_ms.is_some());
        for _ in 0..2 {
            m.attempt(true);
            m.failed_retryable(true, "timeout".into(), Duration::from_millis(400));
        }
        let s = m.snapshot();
        assert_eq!(s.upstream, UpstreamState::Down);
        assert_eq!((s.retries, s.timeouts, s.failed_retryable), (2, 2, 3));
        m.attempt(true);
        m.delivered(Lane::Readings, 10, 100);
        let s = m.snapshot();
        assert_eq!(s.upstream, UpstreamState::Ok);
        assert_eq!((s.backoff_ms, s.down_since_ms), (0, None));
        assert_eq!(s.records_delivered.get(Lane::Readings), 10);
    }
}
