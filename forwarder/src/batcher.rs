//! The batching decision, as a pure state machine.
//!
//! The batcher owns no timer and does no I/O: the driver pushes encoded records in with the
//! current time, asks [`Batcher::poll`] whether a batch is ready, and sleeps until
//! [`Batcher::deadline`] when nothing is. That keeps every trigger (count, bytes, linger,
//! quiet) testable with made-up instants.
//!
//! **Quiet.** Linger is how long a batch waits *at most* to fill. Once records have come in a
//! stream and then stop (the end of a burst, a fleet that has finished), waiting out the rest of
//! the linger only delays what is already there: an open batch is also cut once nothing was
//! pushed for [`QUIET_GAPS`] times its mean gap between pushes, and never sooner than
//! `linger / QUIET_FRACTION` after the last one. A steady trickle never looks quiet by that
//! measure (its gaps are its mean gap), so it is batched by linger exactly as before and sends
//! no more requests; a batch with a single push has no gap to judge by and waits out its linger.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

/// An open batch is quiet after this many of its mean gaps between pushes without a push ...
pub const QUIET_GAPS: u32 = 10;
/// ... and after at least `linger / QUIET_FRACTION`.
pub const QUIET_FRACTION: u32 = 10;

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
    /// When the last pending record arrived, and at how many distinct instants records were
    /// pushed into the open batch: the quiet clock.
    last_at: Option<Instant>,
    pushes: u32,
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
            last_at: None,
            pushes: 0,
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
            self.last_at = Some(now);
            self.pushes = 1;
        } else if self.last_at.is_some_and(|last| now > last) {
            self.last_at = Some(now);
            self.pushes += 1;
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
    /// once its linger has expired or it went quiet.
    pub fn poll(&mut self, now: Instant) -> Option<Cut<T>> {
        if let Some(cut) = self.ready.pop_front() {
            return Some(cut);
        }
        match self.open_deadline() {
            Some(deadline) if now >= deadline => {
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

    /// When the open batch is cut (its linger expires or it goes quiet), if there is an open
    /// batch and nothing is ready. A batch that is already ready has no deadline:
    /// [`Batcher::poll`] returns it at once.
    pub fn deadline(&self) -> Option<Instant> {
        if !self.ready.is_empty() {
            return None;
        }
        self.open_deadline()
    }

    /// The open batch's cut time: the end of its linger, or sooner once it is quiet. `None`
    /// with nothing open, or when both lie beyond what the clock can represent (a linger of
    /// centuries: the batch is then cut by its caps alone).
    fn open_deadline(&self) -> Option<Instant> {
        let first = self.first_at?;
        let linger_end = first.checked_add(self.limits.linger);
        let quiet_end = match self.last_at {
            Some(last) if self.pushes >= 2 => {
                let mean_gap = (last - first) / (self.pushes - 1);
                let quiet = mean_gap
                    .saturating_mul(QUIET_GAPS)
                    .max(self.limits.linger / QUIET_FRACTION);
                last.checked_add(quiet)
            }
            _ => None,
        };
        match (linger_end, quiet_end) {
            (Some(l), Some(q)) => Some(l.min(q)),
            (l, q) => l.or(q),
        }
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
        self.last_at = None;
        self.pushes = 0;
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
    fn a_stream_that_stops_is_cut_once_quiet_not_at_the_end_of_its_linger() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut b = batcher(1_000, 1_000_000, 1_000);
        // Pushes every 2 ms for 40 ms (21 pushes, mean gap 2 ms), then nothing.
        for i in 0..=20 {
            b.push(i, 5, t0 + ms(2 * u64::from(i)));
        }
        // Quiet after max(10 × 2 ms, 1 s / 10) = 100 ms from the last push at 40 ms.
        assert_eq!(b.deadline(), Some(t0 + ms(140)));
        assert_eq!(items(b.poll(t0 + ms(139))), None);
        assert_eq!(b.poll(t0 + ms(140)).map(|c| c.items.len()), Some(21));
        assert_eq!(b.deadline(), None, "nothing open");
    }

    #[test]
    fn a_steady_trickle_is_never_quiet_and_waits_out_its_linger() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut b = batcher(1_000, 1_000_000, 1_000);
        // One record every 150 ms: quiet would need 1.5 s without one, beyond the linger.
        for i in 0..7 {
            b.push(i, 5, t0 + ms(150 * u64::from(i)));
            assert_eq!(b.deadline(), Some(t0 + ms(1_000)), "after push {i}");
        }
        assert_eq!(items(b.poll(t0 + ms(999))), None);
        assert_eq!(b.poll(t0 + ms(1_000)).map(|c| c.items.len()), Some(7));
    }

    #[test]
    fn one_push_alone_has_no_gap_to_judge_by_and_waits_out_its_linger() {
        let t0 = Instant::now();
        let mut b = batcher(1_000, 1_000_000, 1_000);
        for i in 0..60 {
            b.push(i, 5, t0);
        }
        assert_eq!(b.deadline(), Some(t0 + Duration::from_millis(1_000)));
        // A second push at another instant starts the quiet clock: gap 5 ms, quiet 100 ms.
        b.push(60, 5, t0 + Duration::from_millis(5));
        assert_eq!(b.deadline(), Some(t0 + Duration::from_millis(105)));
    }

    #[test]
    fn a_linger_beyond_the_clock_leaves_the_caps_to_cut_and_does_not_panic() {
        let t0 = Instant::now();
        let mut b = Batcher::new(
            BatchLimits {
                max_records: 2,
                max_bytes: 10_000,
                linger: Duration::MAX,
            },
            ENVELOPE,
        );
        b.push(1, 5, t0);
        assert_eq!(b.deadline(), None);
        assert!(!b.has_ready(t0 + Duration::from_secs(86_400)));
        b.push(2, 5, t0 + Duration::from_millis(1));
        assert_eq!(items(b.poll(t0)), Some(vec![1, 2]), "cut by count");
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
