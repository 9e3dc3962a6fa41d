//! The batching decision, as a pure state machine.
//!
//! The batcher owns no timer and does no I/O: the driver pushes encoded records in with the
//! current time, asks [`Batcher::poll`] whether a batch is ready, and sleeps until
//! [`Batcher::deadline`] when nothing is. That keeps every trigger (count, bytes, linger,
//! quiet) testable with made-up instants.
//!
//! **Quiet.** Linger is how long a batch waits *at most* to fill. Once records have come in a
//! stream and then stop, or fall to a trickle (the end of a burst, a fleet that has finished
//! while a few devices go on), waiting out the rest of the linger only delays what is already
//! there. So an open batch is also cut once, for a whole window of [`QUIET_GAPS`] of its mean gaps
//! between pushes (and at least `linger / QUIET_FRACTION`), fewer records came than a
//! [`QUIET_SHARE`]th of what its mean rate brings in such a window. For a stream that stops,
//! that is a window without a push. A steady trickle never looks quiet by that measure (each
//! window holds about its mean), so it is batched by linger exactly as before and sends no more
//! requests; a stream that falls to a tenth of its rate costs one request more, sent a window
//! after the fall rather than at the end of the linger. A batch with a single push has no gap to
//! judge by and waits out its linger.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

/// An open batch is quiet after this many of its mean gaps between pushes without a push ...
pub const QUIET_GAPS: u32 = 10;
/// ... and after at least `linger / QUIET_FRACTION`.
pub const QUIET_FRACTION: u32 = 10;
/// ... once such a window brought fewer records than this share of what the batch's mean rate
/// brings in it (1 / `QUIET_SHARE`).
pub const QUIET_SHARE: u32 = 10;

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
    /// The distinct instants records were pushed into the open batch at, oldest first, with how
    /// many at each: the quiet clock. At most one entry per pending record.
    arrivals: Vec<(Instant, u32)>,
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
            arrivals: Vec::new(),
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
        match self.arrivals.last_mut() {
            Some((last, n)) if now <= *last => *n += 1,
            _ => self.arrivals.push((now, 1)),
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
        let quiet_end = self.quiet_end(first);
        match (linger_end, quiet_end) {
            (Some(l), Some(q)) => Some(l.min(q)),
            (l, q) => l.or(q),
        }
    }

    /// When the open batch goes quiet if nothing more comes: a window after the newest push
    /// from which on the records pushed still reach a `QUIET_SHARE`th of what the batch's mean
    /// rate brings in a window (the last push, for a steady stream). `None` before a second push.
    fn quiet_end(&self, first: Instant) -> Option<Instant> {
        let &[.., (last, _)] = self.arrivals.as_slice() else {
            return None;
        };
        let gaps = u32::try_from(self.arrivals.len() - 1)
            .ok()
            .filter(|&g| g > 0)?;
        let span = last - first;
        let window = (span / gaps)
            .saturating_mul(QUIET_GAPS)
            .max(self.limits.linger / QUIET_FRACTION);
        let share = self.pending.len() as f64 * window.as_secs_f64()
            / span.as_secs_f64()
            / f64::from(QUIET_SHARE);
        if share > self.pending.len() as f64 {
            // Not even the whole batch reaches it (a batch younger than a tenth of its window):
            // quiet a window after the last push, without walking every push.
            return last.checked_add(window);
        }
        let mut since = 0u64;
        let fell = self
            .arrivals
            .iter()
            .rev()
            .find(|(_, n)| {
                since += u64::from(*n);
                since as f64 >= share
            })
            .map_or(last, |&(at, _)| at);
        fell.checked_add(window)
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
        self.arrivals.clear();
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
        // The window is max(10 × 2 ms, 1 s / 10) = 100 ms, in which the mean rate (21 records
        // in 40 ms) brings 52.5 records; a tenth is 5.25. From the push at 30 ms on, six came:
        // quiet once that push is a window old, at 130 ms, unless more come.
        assert_eq!(b.deadline(), Some(t0 + ms(130)));
        assert_eq!(items(b.poll(t0 + ms(129))), None);
        assert_eq!(b.poll(t0 + ms(130)).map(|c| c.items.len()), Some(21));
        assert_eq!(b.deadline(), None, "nothing open");
    }

    #[test]
    fn a_burst_that_falls_to_a_trickle_is_cut_a_window_after_the_fall() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut b = batcher(10_000, 10_000_000, 1_000);
        // A burst: 100 records every 5 ms for 20 ms (500 records), then one record every 20 ms,
        // as probes or a few devices that go on after a fleet has finished.
        let mut i = 0;
        for k in 0..5 {
            for _ in 0..100 {
                b.push(i, 5, t0 + ms(5 * k));
                i += 1;
            }
        }
        let mut at = ms(20);
        let cut = loop {
            at += ms(20);
            if let Some(cut) = b.poll(t0 + at) {
                break (at, cut.items.len());
            }
            assert!(
                at < ms(1_000),
                "still open at {at:?}: the trickle held it to its linger"
            );
            b.push(i, 5, t0 + at);
            i += 1;
        };
        // The window grows with the trickle's gaps (10 × ~18 ms), and the cut comes one window
        // after the burst's last push, far before the linger's end at 1 s.
        assert!(
            cut.0 >= ms(120) && cut.0 <= ms(240),
            "cut at {:?} with {} records",
            cut.0,
            cut.1
        );
        assert!(cut.1 > 500, "the burst and the trickle so far: {}", cut.1);
    }

    #[test]
    fn a_stream_at_half_its_rate_or_with_uneven_pushes_waits_out_its_linger() {
        let ms = Duration::from_millis;
        let t0 = Instant::now();
        // Nothing is cut between pushes (polled just before each), and the batch holds every
        // record until its linger ends at 1 s.
        let run = |pushes: &[(u64, u32)]| {
            let mut b = batcher(100_000, 100_000_000, 1_000);
            for (k, &(at, n)) in pushes.iter().enumerate() {
                assert_eq!(
                    items(b.poll(t0 + ms(at))),
                    None,
                    "before push {k} at {at} ms"
                );
                for _ in 0..n {
                    b.push(0, 5, t0 + ms(at));
                }
            }
            assert_eq!(b.deadline(), Some(t0 + ms(1_000)));
        };
        // 10 records every 10 ms, then 5 every 10 ms: slower, not quiet.
        run(&(0..100)
            .map(|k| (10 * k, if k < 20 { 10 } else { 5 }))
            .collect::<Vec<_>>());
        // Pushes of 1 and 9 records in turn every 25 ms: each window holds about its mean.
        run(&(0..40)
            .map(|k| (25 * k, if k % 2 == 0 { 1 } else { 9 }))
            .collect::<Vec<_>>());
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
