//! Error types. Classify with the methods, never by matching on messages.

use std::path::PathBuf;
use std::sync::Arc;

use crate::record::Lane;

/// Everything but appending can fail with this.
#[derive(Debug, thiserror::Error)]
pub enum BufferError {
    /// sled failed a read or write after the database was open (I/O error, disk full, or a
    /// corruption sled detected while paging data in).
    #[error("buffer storage error: {0}")]
    Storage(#[from] sled::Error),
    /// A filesystem call made by the buffer itself failed: creating the data directory, moving
    /// a broken database aside, or the extra `fdatasync` after a sled flush.
    #[error("buffer I/O error on {path}: {source}")]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// sled refused to open the database for a reason that is not corruption (another process
    /// holds its lock, permissions, a missing mount). The database was left exactly where it is.
    #[error("cannot open buffer database at {path}: {source}")]
    Open {
        /// The sled directory.
        path: PathBuf,
        /// What sled said.
        #[source]
        source: sled::Error,
    },
    /// A field of [`crate::BufferOptions`] is out of range; the message names it.
    #[error("invalid buffer option `{field}`: {reason}")]
    InvalidOptions {
        /// The option's field name.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// `read`/`ack`/`set_consumer_meta` named a consumer that is not in
    /// [`crate::BufferOptions::consumers`].
    #[error("unknown consumer `{0}` (not listed in BufferOptions::consumers)")]
    UnknownConsumer(String),
    /// `requeue` was given a record of the other lane.
    #[error("record seq {seq} belongs to lane {actual}, not {expected}")]
    WrongLane {
        /// The offending record's seq.
        seq: u64,
        /// The lane `requeue` was called for.
        expected: Lane,
        /// The record's own lane.
        actual: Lane,
    },
    /// A dead letter is larger than the whole dead-letter quota, so it cannot be kept at all.
    #[error("dead letter of {bytes} bytes exceeds dead_letter_max_bytes = {max}")]
    DeadLetterTooLarge {
        /// Encoded size of the letter.
        bytes: u64,
        /// The configured quota.
        max: u64,
    },
    /// postcard failed to encode a value (not expected with the types of this crate).
    #[error("encoding failed: {0}")]
    Encode(#[from] postcard::Error),
    /// The committer has shut down, so nothing more can be made durable.
    #[error("buffer is closed")]
    Closed,
}

impl BufferError {
    /// Whether trying the same call again later may succeed (I/O trouble, a lock held by a
    /// process that is going away). Invalid arguments and a closed buffer are not retryable.
    pub fn is_retryable(&self) -> bool {
        match self {
            BufferError::Storage(e) | BufferError::Open { source: e, .. } => {
                matches!(e, sled::Error::Io(_))
            }
            BufferError::Io { .. } => true,
            BufferError::InvalidOptions { .. }
            | BufferError::UnknownConsumer(_)
            | BufferError::WrongLane { .. }
            | BufferError::DeadLetterTooLarge { .. }
            | BufferError::Encode(_)
            | BufferError::Closed => false,
        }
    }

    /// Whether sled reported corruption of data it had stored.
    pub fn is_corruption(&self) -> bool {
        matches!(
            self,
            BufferError::Storage(sled::Error::Corruption { .. })
                | BufferError::Open {
                    source: sled::Error::Corruption { .. },
                    ..
                }
        )
    }
}

/// Why an `append` did not return seqs.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AppendError {
    /// `when_full = Block` and the lane's byte quota is reached. Nothing of this call was
    /// written. The caller should stop acknowledging its source and retry once consumers ack.
    #[error("buffer lane {lane} is full")]
    Full {
        /// The lane that is full.
        lane: Lane,
    },
    /// The committer has stopped (shutdown) or was never run; nothing of this call was written.
    #[error("buffer is closed")]
    Closed,
    /// Writing or flushing the group this call was part of failed. The records may or may not
    /// be on disk: if they are, they will be delivered under seqs the caller never learned, so
    /// re-appending them makes a duplicate, never a loss.
    #[error("buffer append failed: {0}")]
    Storage(Arc<BufferError>),
    /// An earlier write or flush of the database failed (disk full, I/O error), and sled
    /// refuses every write after its first error until the database is reopened: the append
    /// was refused at once and nothing of it was written. The caller must leave its source
    /// unacknowledged. [`crate::Buffer::health`] says why and whether writes succeed again
    /// (then the process must restart to reopen the database).
    #[error("buffer unavailable: {reason}")]
    Unavailable {
        /// The write error that made the buffer stop accepting appends.
        reason: String,
    },
    /// A record of the call is larger than the buffer stores ([`crate::MAX_RECORD_BYTES`]
    /// encoded; ingest's payload limit keeps real records far below it). Nothing of this call
    /// was written; trying again will not help.
    #[error("record {index} of the append is {bytes} bytes, over the {max}-byte record limit")]
    RecordTooLarge {
        /// Its position in the call.
        index: usize,
        /// Its (bounded) encoded size.
        bytes: usize,
        /// [`crate::MAX_RECORD_BYTES`].
        max: usize,
    },
}

impl AppendError {
    /// `Full` and I/O failures may clear up; `Closed` will not.
    pub fn is_retryable(&self) -> bool {
        match self {
            AppendError::Full { .. } => true,
            AppendError::Closed | AppendError::RecordTooLarge { .. } => false,
            AppendError::Storage(e) => e.is_retryable(),
            AppendError::Unavailable { .. } => true,
        }
    }

    /// Whether the database failed a write: this append's (`Storage`) or an earlier one
    /// (`Unavailable`).
    pub fn is_write_error(&self) -> bool {
        matches!(
            self,
            AppendError::Storage(_) | AppendError::Unavailable { .. }
        )
    }

    /// Whether this is backpressure from a full lane.
    pub fn is_full(&self) -> bool {
        matches!(self, AppendError::Full { .. })
    }
}
