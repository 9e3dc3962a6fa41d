//! Dead letters: payloads that could not be used, parked with why, where from and when.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::buffer::Inner;
use crate::error::BufferError;
use crate::record::{Lane, Stored};

/// What was parked.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum DeadPayload {
    /// Bytes as received (an unreadable MQTT payload or serial line) or as stored (a buffer
    /// block that no longer decodes).
    Raw(Vec<u8>),
    /// Records the upstream refused (a non-retryable 4xx); replay them with
    /// [`crate::Buffer::requeue`], which keeps their seqs.
    Records {
        /// Their lane.
        lane: Lane,
        /// The records, with their original seqs.
        records: Vec<Stored>,
    },
}

/// A parked payload.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// Increasing id, never reused.
    pub id: u64,
    /// When it was parked, ms since the epoch (buffer clock).
    pub received_ms: i64,
    /// Short machine-friendly reason, e.g. `bad_json`, `http_400`, `undecodable_block`.
    pub reason: String,
    /// MQTT topic, serial port, `upstream`, or `buffer/<lane>`.
    pub origin: String,
    /// Human detail (an error message).
    pub detail: String,
    /// What was parked.
    pub payload: DeadPayload,
}

/// What the caller supplies to [`DeadLetters::put`]; id and time are assigned by the store.
#[derive(Clone, Debug, PartialEq)]
pub struct DeadLetterInput {
    /// See [`DeadLetter::reason`].
    pub reason: String,
    /// See [`DeadLetter::origin`].
    pub origin: String,
    /// See [`DeadLetter::detail`].
    pub detail: String,
    /// See [`DeadLetter::payload`].
    pub payload: DeadPayload,
}

/// Handle on the dead-letter store of a [`crate::Buffer`] (cheap to clone).
///
/// Writes are durable with the next commit flush or idle flush (≤ ~100 ms), or at once with
/// [`crate::Buffer::flush`].
#[derive(Clone, Debug)]
pub struct DeadLetters {
    pub(crate) inner: Arc<Inner>,
}

impl DeadLetters {
    /// Park a payload; returns its id. Past `dead_letter_max_bytes` the oldest letters are
    /// dropped and counted in `stats().dead_letters.dropped`.
    pub fn put(&self, input: DeadLetterInput) -> Result<u64, BufferError> {
        let mut st = self.inner.lock();
        self.inner.put_dead(&mut st, input)
    }

    /// Up to `limit` letters with id > `after_id`, oldest first.
    pub fn list(
        &self,
        limit: usize,
        after_id: Option<u64>,
    ) -> Result<Vec<DeadLetter>, BufferError> {
        let start = after_id.map_or(0, |id| id.saturating_add(1));
        let mut out = Vec::new();
        for item in self.inner.dead.range(start.to_be_bytes()..) {
            if out.len() >= limit {
                break;
            }
            let (_, v) = item?;
            if let Some(letter) = self.inner.decode_dead(&v) {
                out.push(letter);
            }
        }
        Ok(out)
    }

    /// How many letters are parked (O(1)).
    pub fn count(&self) -> u64 {
        self.inner.lock().dead.count
    }

    /// The letter with this id, if any.
    pub fn get(&self, id: u64) -> Result<Option<DeadLetter>, BufferError> {
        Ok(self
            .inner
            .dead
            .get(id.to_be_bytes())?
            .and_then(|v| self.inner.decode_dead(&v)))
    }

    /// Remove the letter with this id and return it (for replay).
    pub fn take(&self, id: u64) -> Result<Option<DeadLetter>, BufferError> {
        let mut st = self.inner.lock();
        let Some(v) = self.inner.dead.remove(id.to_be_bytes())? else {
            return Ok(None);
        };
        st.dead.count -= 1;
        st.dead.bytes = st.dead.bytes.saturating_sub(v.len() as u64);
        self.inner.mark_dirty();
        Ok(self.inner.decode_dead(&v))
    }
}
