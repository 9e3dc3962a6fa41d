//! Dead letters: payloads that could not be used, parked with why, where from and when.
//!
//! Two kinds, each with its own tree and quota, so a flood of one never evicts the other:
//! rejected input (unreadable payloads, bad ids, undecodable blocks: [`DeadPayload::Raw`]) under
//! `dead_letter_max_bytes`, and batches the upstream refused ([`DeadPayload::Records`], the
//! only ones [`crate::Buffer::requeue`] can replay) under `refused_dead_letter_max_bytes`. Ids
//! come from one counter, so [`DeadLetters::list`] merges both in id (arrival) order.

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

/// Which quota a dead letter counts against.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DeadKind {
    /// Input the gateway could not use: [`DeadPayload::Raw`].
    Input,
    /// Batches the upstream refused: [`DeadPayload::Records`].
    Refused,
}

impl DeadKind {
    /// Both kinds.
    pub const ALL: [DeadKind; 2] = [DeadKind::Input, DeadKind::Refused];

    /// `"input"` or `"refused"` (the `kind` label of the dead-letter metrics).
    pub fn as_str(self) -> &'static str {
        match self {
            DeadKind::Input => "input",
            DeadKind::Refused => "refused",
        }
    }

    pub(crate) fn index(self) -> usize {
        match self {
            DeadKind::Input => 0,
            DeadKind::Refused => 1,
        }
    }
}

impl DeadPayload {
    /// The quota this payload counts against.
    pub fn kind(&self) -> DeadKind {
        match self {
            DeadPayload::Raw(_) => DeadKind::Input,
            DeadPayload::Records { .. } => DeadKind::Refused,
        }
    }
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
    /// Park a payload; returns its id. Past its kind's quota (`dead_letter_max_bytes` for
    /// rejected input, `refused_dead_letter_max_bytes` for refused batches) the oldest letters
    /// *of the same kind* are dropped and counted (`stats().dead_letters.input.dropped` /
    /// `.refused.dropped`).
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
        // Both trees are in id order: merge them.
        let mut a = self.inner.dead.range(start.to_be_bytes()..).peekable();
        let mut b = self
            .inner
            .dead_refused
            .range(start.to_be_bytes()..)
            .peekable();
        while out.len() < limit {
            let take_a = match (a.peek(), b.peek()) {
                (None, None) => break,
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (Some(Ok((ka, _))), Some(Ok((kb, _)))) => ka.as_ref() <= kb.as_ref(),
                // An error surfaces on the next line.
                (Some(Err(_)), _) => true,
                (_, Some(Err(_))) => false,
            };
            let item = if take_a { a.next() } else { b.next() };
            let Some(item) = item else { break };
            let (_, v) = item?;
            if let Some(letter) = self.inner.decode_dead(&v) {
                out.push(letter);
            }
        }
        Ok(out)
    }

    /// How many letters are parked, both kinds (O(1)).
    pub fn count(&self) -> u64 {
        self.inner.lock().dead.kinds.iter().map(|k| k.count).sum()
    }

    /// The letter with this id, if any.
    pub fn get(&self, id: u64) -> Result<Option<DeadLetter>, BufferError> {
        let v = match self.inner.dead.get(id.to_be_bytes())? {
            Some(v) => Some(v),
            None => self.inner.dead_refused.get(id.to_be_bytes())?,
        };
        Ok(v.and_then(|v| self.inner.decode_dead(&v)))
    }

    /// Remove the letter with this id and return it (for replay).
    pub fn take(&self, id: u64) -> Result<Option<DeadLetter>, BufferError> {
        let mut st = self.inner.lock();
        let mut found = None;
        for kind in DeadKind::ALL {
            if let Some(v) = self.inner.dead_tree(kind).remove(id.to_be_bytes())? {
                found = Some((kind, v));
                break;
            }
        }
        let Some((kind, v)) = found else {
            return Ok(None);
        };
        let k = &mut st.dead.kinds[kind.index()];
        k.count -= 1;
        k.bytes = k.bytes.saturating_sub(v.len() as u64);
        self.inner.mark_dirty();
        Ok(self.inner.decode_dead(&v))
    }
}
