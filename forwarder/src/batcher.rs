//! The batching decision, as a pure state machine.
//!
//! The batcher owns no timer and does no I/O: the driver pushes encoded records in with the
//! current time, asks [`Batcher::poll`] whether a batch is ready, and sleeps until
//! [`Batcher::deadline`] when nothing is. That keeps every trigger (count, bytes, linger)
//! testable with made-up instants.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

/// When a batch is cut.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchLimits {
    /// At most this many records per batch (at least 1).
    pub max_records: usize,
    /// At most this many bytes of uncompressed body per batch, envelope included. A single
    /// record larger than this still goes out, alone.
    pub max_bytes: usize,
    /// How long the first record of a batch may wait for company. Zero: never wait.
    pub linger: Duration,
}

/// A cut batch: its items in push order and its exact uncompressed body size.
#[derive(Debug, PartialEq)]
pub struct Cut<T> {
    /// The records, in the order they were pushed.
    pub items: Vec<T>,
    /// Body size in bytes: envelope + records + separating commas.
    pub bytes: usize,
}

/// Collects records into batches by count, encoded size, or linger time, whichever comes first.
#[derive(Debug)]
pub struct Batcher<T> {
    limits: BatchLimits,
    /// Bytes of the body that do not depend on the records (`{"gateway_id":…,"records":[` `]}`).
    envelope_bytes: usize,
    pending: Vec<T>,
    pending_bytes: usize,
    /// When the first pending record arrived; the linger clock starts here.
    first_at: Option<Instant>,
    /// Batches already cut, oldest first, waiting for the driver to take them.
    ready: VecDeque<Cut<T>>,
}

impl<T> Batcher<T> {
    /// A batcher whose bodies carry `envelope_bytes` of fixed overhead.
    pub fn new(limits: BatchLimits, envelope_bytes: usize) -> Self {
        let limits = BatchLimits {
            max_records: limits.max_records.max(1),
            ..limits
        };
        Batcher {
            limits,
            envelope_bytes,
            pending: Vec::new(),
            pending_bytes: envelope_bytes,
            first_at: None,
            ready: VecDeque::new(),
        }
    }

    /// Adds one record whose encoded form is `encoded_len` bytes, received at `now`.
    ///
    /// If the record does not fit in the open batch, the open batch is cut first and the record
    /// opens the next one.
    pub fn push(&mut self, item: T, encoded_len: usize, now: Instant) {
        let separator = usize::from(!self.pending.is_empty());
        if !self.pending.is_empty()
            && self.pending_bytes + separator + encoded_len > self.limits.max_bytes
        {
            self.cut();
        }
        let separator = usize::from(!self.pending.is_empty());
        if self.pending.is_empty() {
            self.first_at = Some(now);
        }
        self.pending.push(item);
        self.pending_bytes += separator + encoded_len;
        // Full by count, or so full by bytes that not even a one-byte record would fit.
        if self.pending.len() >= self.limits.max_records
            || self.pending_bytes + 2 > self.limits.max_bytes
        {
            self.cut();
        }
    }

    /// The next batch to send, if one is ready at `now`: an already cut one, or the open batch
    /// once its linger has expired.
    pub fn poll(&mut self, now: Instant) -> Option<Cut<T>> {
        if let Some(cut) = self.ready.pop_front() {
            return Some(cut);
        }
        match self.first_at {
            Some(first) if now >= first + self.limits.linger => {
                self.cut();
                self.ready.pop_front()
            }
            _ => None,
        }
    }

    /// The oldest batch already cut (full by count or bytes), if any; the open batch stays open
    /// whatever its linger.
    pub fn take_ready(&mut self) -> Option<Cut<T>> {
        self.ready.pop_front()
    }

    /// Cuts and returns whatever is open or ready, regardless of linger.
    pub fn flush(&mut self) -> Option<Cut<T>> {
        if self.ready.is_empty() {
            self.cut();
        }
        self.ready.pop_front()
    }

    /// When the open batch's linger expires, if there is an open batch and nothing is ready.
    /// A batch that is already ready has no deadline: [`Batcher::poll`] returns it at once.
    pub fn deadline(&self) -> Option<Instant> {
        if !self.ready.is_empty() {
            return None;
        }
        self.first_at.map(|first| first + self.limits.linger)
    }

    /// Whether anything is ready now, i.e. [`Batcher::poll`] would return a batch at `now`.
    pub fn has_ready(&self, now: Instant) -> bool {
        !self.ready.is_empty() || self.deadline().is_some_and(|d| now >= d)
    }

    /// Records held, open and cut, not yet taken.
    pub fn len(&self) -> usize {
        self.pending.len() + self.ready.iter().map(|c| c.items.len()).sum::<usize>()
    }

    /// Whether the batcher holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn cut(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let items = std::mem::take(&mut self.pending);
        let bytes = std::mem::replace(&mut self.pending_bytes, self.envelope_bytes);
        self.first_at = None;
        self.ready.push_back(Cut { items, bytes });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ENVELOPE: usize = 10;

    fn batcher(max_records: usize, max_bytes: usize, linger_ms: u64) -> Batcher<u32> {
        Batcher::new(
            BatchLimits {
                max_records,
                max_bytes,
                linger: Duration::from_millis(linger_ms),
            },
            ENVELOPE,
        )
    }

    fn items(cut: Option<Cut<u32>>) -> Option<Vec<u32>> {
        cut.map(|c| c.items)
    }

    #[test]
    fn a_batch_is_cut_when_the_record_count_is_reached() {
        let t0 = Instant::now();
        let mut b = batcher(3, 10_000, 1_000);
        for i in 0..7 {
            b.push(i, 5, t0);
        }
        assert_eq!(items(b.poll(t0)), Some(vec![0, 1, 2]));
        assert_eq!(items(b.poll(t0)), Some(vec![3, 4, 5]));
        assert_eq!(items(b.poll(t0)), None, "the seventh record lingers");
        assert_eq!(b.deadline(), Some(t0 + Duration::from_millis(1_000)));
    }

    #[test]
    fn a_batch_is_cut_before_the_record_that_would_overflow_the_byte_limit() {
        let t0 = Instant::now();
        // Envelope 10 + 3 records of 10 bytes + 2 commas = 42; a fourth would make 53 > 50.
        let mut b = batcher(100, 50, 1_000);
        for i in 0..4 {
            b.push(i, 10, t0);
        }
        let cut = b.poll(t0).unwrap();
        assert_eq!(cut.items, vec![0, 1, 2]);
        assert_eq!(cut.bytes, 42);
        assert_eq!(items(b.poll(t0)), None);
        assert_eq!(b.len(), 1);
    }

    #[test]
    fn a_record_larger_than_the_byte_limit_goes_out_alone() {
        let t0 = Instant::now();
        let mut b = batcher(100, 50, 1_000);
        b.push(1, 5, t0);
        b.push(2, 500, t0);
        b.push(3, 5, t0);
        assert_eq!(items(b.poll(t0)), Some(vec![1]));
        assert_eq!(items(b.poll(t0)), Some(vec![2]));
        assert_eq!(items(b.poll(t0)), None);
        assert_eq!(items(b.flush()), Some(vec![3]));
    }

    #[test]
    fn an_open_batch_is_released_when_its_linger_expires_counted_from_the_first_record() {
        let t0 = Instant::now();
        let mut b = batcher(100, 10_000, 1_000);
        b.push(1, 5, t0);
        b.push(2, 5, t0 + Duration::from_millis(900));
        assert_eq!(items(b.poll(t0 + Duration::from_millis(999))), None);
        assert_eq!(b.deadline(), Some(t0 + Duration::from_millis(1_000)));
        assert!(b.has_ready(t0 + Duration::from_millis(1_000)));
        assert_eq!(
            items(b.poll(t0 + Duration::from_millis(1_000))),
            Some(vec![1, 2])
        );
        assert_eq!(b.deadline(), None);
        assert!(b.is_empty());
    }

    #[test]
    fn zero_linger_releases_whatever_was_pushed_at_once() {
        let t0 = Instant::now();
        let mut b = batcher(2, 10_000, 0);
        for i in 0..3 {
            b.push(i, 5, t0);
        }
        assert_eq!(items(b.poll(t0)), Some(vec![0, 1]));
        assert_eq!(items(b.poll(t0)), Some(vec![2]));
        assert_eq!(items(b.poll(t0)), None);
    }

    #[test]
    fn body_size_counts_envelope_records_and_commas() {
        let t0 = Instant::now();
        let mut b = batcher(2, 10_000, 0);
        b.push(0, 7, t0);
        b.push(1, 8, t0);
        assert_eq!(b.poll(t0).unwrap().bytes, ENVELOPE + 7 + 1 + 8);
    }
}
