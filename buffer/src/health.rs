//! What happens when the database cannot write (disk full, I/O error).
//!
//! sled 0.34 keeps the first error of a background log write as a "global error"
//! (`Config::set_global_error` in `pagecache/iobuf.rs`): from then on every reservation in its
//! log, so every insert, batch and flush, fails with that error until the database is opened
//! again (`PageCache::start` resets it). Retrying the same `Db` is useless, so the buffer:
//!
//! 1. notes the first failed write ([`BufferHealth::WriteFailed`], counted in
//!    [`crate::BufferStats::write_errors`]) and from then on refuses appends at once with
//!    [`crate::AppendError::Unavailable`] without touching sled; acks and consumer meta stay in
//!    memory (they would be flushed lazily anyway; after the reopen the records since the last
//!    durable ack are delivered again, same seqs);
//! 2. probes the data directory every [`PROBE_INTERVAL`] by writing, fsyncing and removing a
//!    [`PROBE_BYTES`] file ([`PROBE_FILE_NAME`]);
//! 3. once a probe succeeds, reports [`BufferHealth::ReopenNeeded`]: the owner must drop the
//!    buffer and open it again. The gateway does that by exiting non-zero, so the service
//!    manager restarts it (see the crate docs for why not in place).

use std::io::Write;
use std::path::Path;
use std::time::Duration;

/// How often the committer checks whether the disk takes writes again.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(2);

/// Size of the probe write: two of sled's default 512 KiB log segments, so that a reopen (which
/// may write a segment and a snapshot) is likely to find room once the probe passes.
pub const PROBE_BYTES: usize = 1024 * 1024;

/// The probe file in the buffer directory; removed after each probe (and at open, should a crash
/// have left it behind).
pub const PROBE_FILE_NAME: &str = "write-probe";

/// Whether the buffer can make records durable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BufferHealth {
    /// Writes succeed.
    Writable,
    /// A write or flush of the database failed; appends are refused until the database is
    /// reopened, and the disk is probed every [`PROBE_INTERVAL`].
    WriteFailed {
        /// The first error, as sled or the OS reported it.
        error: String,
        /// When it happened (buffer clock, ms since the epoch).
        since_ms: i64,
    },
    /// Writes failed earlier and the probe now succeeds: drop the buffer and open it again to
    /// resume (appends are still refused by this instance).
    ReopenNeeded {
        /// The error that stopped writes.
        error: String,
        /// When it happened (buffer clock, ms since the epoch).
        since_ms: i64,
    },
}

impl BufferHealth {
    /// `true` only for [`BufferHealth::Writable`].
    pub fn is_writable(&self) -> bool {
        matches!(self, BufferHealth::Writable)
    }

    /// The error that stopped writes, if any.
    pub fn error(&self) -> Option<&str> {
        match self {
            BufferHealth::Writable => None,
            BufferHealth::WriteFailed { error, .. } | BufferHealth::ReopenNeeded { error, .. } => {
                Some(error)
            }
        }
    }
}

/// Writes, fsyncs and removes a [`PROBE_BYTES`] file in `dir`. The file is removed whatever
/// happens, so a failed probe does not hold on to the little space that is left.
pub(crate) fn probe_write(dir: &Path) -> std::io::Result<()> {
    let path = dir.join(PROBE_FILE_NAME);
    let written = (|| {
        let mut f = std::fs::File::create(&path)?;
        let chunk = vec![0u8; 64 * 1024];
        let mut left = PROBE_BYTES;
        while left > 0 {
            let n = left.min(chunk.len());
            f.write_all(&chunk[..n])?;
            left -= n;
        }
        f.sync_all()
    })();
    let removed = std::fs::remove_file(&path);
    written?;
    removed
}
