//! Options of [`crate::Buffer::open`] and the injectable clock.

use serde::Deserialize;
use std::fmt::Debug;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use crate::error::BufferError;
use crate::record::Lane;

/// What to do when a lane's byte quota is reached; `buffer.when_full` in the gateway's config,
/// which uses this type with the names below.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WhenFull {
    /// `"drop_oldest"`: evict the oldest blocks of that lane (counted as `dropped_quota`) to make
    /// room.
    #[default]
    DropOldest,
    /// `"block"`: refuse new appends touching that lane with [`crate::AppendError::Full`] until
    /// consumers ack (the gateway then stops acking MQTT; the broker holds the rest).
    Block,
}

impl WhenFull {
    /// `"drop_oldest"` or `"block"`.
    pub fn as_str(self) -> &'static str {
        match self {
            WhenFull::DropOldest => "drop_oldest",
            WhenFull::Block => "block",
        }
    }
}

impl std::fmt::Display for WhenFull {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Wall-clock time in ms since the Unix epoch. Injected so expiry can be tested.
pub trait Clock: Send + Sync + Debug {
    /// Milliseconds since the Unix epoch, UTC.
    fn now_ms(&self) -> i64;
}

/// The real clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        let d = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
    }
}

/// A clock that only moves when told to; for tests here and in other crates.
#[derive(Debug, Default)]
pub struct ManualClock(AtomicI64);

impl ManualClock {
    /// A clock reading `now_ms`.
    pub fn new(now_ms: i64) -> Self {
        ManualClock(AtomicI64::new(now_ms))
    }
    /// Set the time.
    pub fn set(&self, now_ms: i64) {
        self.0.store(now_ms, Ordering::SeqCst);
    }
    /// Move the time forward by `ms`.
    pub fn advance(&self, ms: i64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// How the buffer is laid out and bounded. Build with [`BufferOptions::new`] and adjust fields.
#[derive(Clone, Debug)]
pub struct BufferOptions {
    /// Data directory; the sled database lives in `<dir>/buffer.sled`.
    pub dir: PathBuf,
    /// Quota of the readings lane in bytes of stored (compressed) blocks. Default 64 MiB.
    pub readings_max_bytes: u64,
    /// Quota of the alarms lane in bytes of stored blocks. Default 8 MiB.
    pub alarms_max_bytes: u64,
    /// What a full lane does. Default [`WhenFull::DropOldest`].
    pub when_full: WhenFull,
    /// Records are expired once the block holding them was last written more than this many
    /// seconds ago (gateway time of storage, not the record's own `ts`). 0 disables expiry.
    /// Default 7 days.
    pub max_age_s: u64,
    /// How long, in ms, the committer waits after the first append of a group for more appends
    /// to share its flush. 0 means "only what is already queued". Default 2 ms.
    pub commit_interval_ms: u64,
    /// At a trickle the window stretches to this many ms, so messages that arrive spread out
    /// share fewer fsyncs; only while a stretched group would hold at most 16 records (the rate
    /// over the last second says so), and never for a group with an alarm. No longer than
    /// `commit_interval_ms` (0, say): never stretches. Default 0.
    pub commit_stretch_ms: u64,
    /// A group is committed as soon as it holds this many records. Default 4096.
    pub commit_max_records: usize,
    /// sled page cache capacity in bytes. Default 8 MiB.
    pub cache_capacity_bytes: u64,
    /// Quota of the dead letters of rejected input (unreadable payloads, undecodable blocks) in
    /// encoded bytes; the oldest such letters are dropped (and counted) past it. Default 4 MiB.
    pub dead_letter_max_bytes: u64,
    /// Quota of the dead letters of batches the upstream refused, apart from the one above so
    /// that junk never evicts readings waiting for a replay. Default 4 MiB.
    pub refused_dead_letter_max_bytes: u64,
    /// Names of the consumers whose acks gate deletion; a block is deleted once every one of
    /// them acked all of it. Default `["forwarder"]`.
    pub consumers: Vec<String>,
    /// Those of `consumers` that read only the alarms lane: their acks gate deletion there, and
    /// the readings lane does not wait for them. Default none.
    pub alarms_only_consumers: Vec<String>,
    /// Those of `consumers` that read only the readings lane, the same way round. Default none.
    pub readings_only_consumers: Vec<String>,
    /// Source of wall-clock time. Default [`SystemClock`].
    pub clock: Arc<dyn Clock>,
}

impl BufferOptions {
    /// Small, sane defaults rooted at `dir` (see each field for its default).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        BufferOptions {
            dir: dir.into(),
            readings_max_bytes: 64 * 1024 * 1024,
            alarms_max_bytes: 8 * 1024 * 1024,
            when_full: WhenFull::DropOldest,
            max_age_s: 7 * 24 * 3600,
            commit_interval_ms: 2,
            commit_stretch_ms: 0,
            commit_max_records: 4096,
            cache_capacity_bytes: 8 * 1024 * 1024,
            dead_letter_max_bytes: 4 * 1024 * 1024,
            refused_dead_letter_max_bytes: 4 * 1024 * 1024,
            consumers: vec!["forwarder".to_string()],
            alarms_only_consumers: Vec::new(),
            readings_only_consumers: Vec::new(),
            clock: Arc::new(SystemClock),
        }
    }

    /// Whether `consumer` reads `lane` (it is one of [`BufferOptions::consumers`] and not
    /// limited to the other lane).
    pub fn reads(&self, consumer: &str, lane: Lane) -> bool {
        let only_other = match lane {
            Lane::Alarms => &self.readings_only_consumers,
            Lane::Readings => &self.alarms_only_consumers,
        };
        self.consumers.iter().any(|c| c == consumer) && !only_other.iter().any(|c| c == consumer)
    }

    /// The byte quota of `lane`.
    pub fn max_bytes(&self, lane: Lane) -> u64 {
        match lane {
            Lane::Alarms => self.alarms_max_bytes,
            Lane::Readings => self.readings_max_bytes,
        }
    }

    /// The dead-letter quota of `kind`.
    pub fn dead_letter_max_bytes_of(&self, kind: crate::DeadKind) -> u64 {
        match kind {
            crate::DeadKind::Input => self.dead_letter_max_bytes,
            crate::DeadKind::Refused => self.refused_dead_letter_max_bytes,
        }
    }

    pub(crate) fn validate(&self) -> Result<(), BufferError> {
        let bad = |field, reason: &str| {
            Err(BufferError::InvalidOptions {
                field,
                reason: reason.to_string(),
            })
        };
        if self.readings_max_bytes == 0 {
            return bad("readings_max_bytes", "must be > 0");
        }
        if self.alarms_max_bytes == 0 {
            return bad("alarms_max_bytes", "must be > 0");
        }
        if self.commit_max_records == 0 {
            return bad("commit_max_records", "must be > 0");
        }
        if self.dead_letter_max_bytes == 0 {
            return bad("dead_letter_max_bytes", "must be > 0");
        }
        if self.refused_dead_letter_max_bytes == 0 {
            return bad("refused_dead_letter_max_bytes", "must be > 0");
        }
        if self.consumers.is_empty() {
            return bad(
                "consumers",
                "at least one consumer is needed, or nothing would ever be deleted",
            );
        }
        for c in &self.consumers {
            if c.is_empty() || c.contains('\0') {
                return bad(
                    "consumers",
                    "names must be non-empty and contain no NUL byte",
                );
            }
        }
        if let Some(c) = self
            .alarms_only_consumers
            .iter()
            .find(|c| !self.consumers.contains(c))
        {
            return bad(
                "alarms_only_consumers",
                &format!("`{c}` is not one of `consumers`"),
            );
        }
        if self
            .consumers
            .iter()
            .all(|c| self.alarms_only_consumers.contains(c))
        {
            return bad(
                "alarms_only_consumers",
                "some consumer must read the readings lane, or no reading would ever be deleted",
            );
        }
        if let Some(c) = self
            .readings_only_consumers
            .iter()
            .find(|c| !self.consumers.contains(c) || self.alarms_only_consumers.contains(c))
        {
            return bad(
                "readings_only_consumers",
                &format!("`{c}` is not one of `consumers`, or also reads only the alarms lane"),
            );
        }
        if !self
            .consumers
            .iter()
            .any(|c| Lane::ALL.iter().all(|l| self.reads(c, *l)))
        {
            return bad(
                "readings_only_consumers",
                "some consumer must read both lanes: the lane counters take its view",
            );
        }
        Ok(())
    }
}
