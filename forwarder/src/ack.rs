//! Ordered completion: with several batches in flight, the cursor only moves over a prefix of
//! batches that are all done.
//!
//! Pure bookkeeping; the driver calls [`AckOrder::start`] before a batch's first send and
//! [`AckOrder::complete`] when it is delivered or dead-lettered, and acks what comes back.

use std::collections::VecDeque;

/// The seq range of one batch, inclusive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SeqRange {
    /// Seq of the first record.
    pub first: u64,
    /// Seq of the last record.
    pub last: u64,
}

impl SeqRange {
    /// Encodes ranges as ASCII `first-last;first-last` for consumer meta.
    pub fn encode_list(ranges: impl IntoIterator<Item = SeqRange>) -> Vec<u8> {
        let parts: Vec<String> = ranges
            .into_iter()
            .map(|r| format!("{}-{}", r.first, r.last))
            .collect();
        parts.join(";").into_bytes()
    }

    /// Decodes what [`SeqRange::encode_list`] wrote; unreadable parts are skipped (the worst
    /// case is a batch re-formed from the cursor instead of re-sent as it was: still no loss).
    pub fn decode_list(bytes: &[u8]) -> Vec<SeqRange> {
        let Ok(text) = std::str::from_utf8(bytes) else {
            return Vec::new();
        };
        text.split(';')
            .filter_map(|part| {
                let (first, last) = part.split_once('-')?;
                let range = SeqRange {
                    first: first.parse().ok()?,
                    last: last.parse().ok()?,
                };
                (range.first <= range.last).then_some(range)
            })
            .collect()
    }
}

#[derive(Debug)]
struct Slot {
    id: u64,
    range: SeqRange,
    done: bool,
}

/// Batches in flight on one lane, in the order they were started.
#[derive(Debug, Default)]
pub struct AckOrder {
    slots: VecDeque<Slot>,
}

impl AckOrder {
    /// Records a batch as started. Batches must be started in seq order.
    pub fn start(&mut self, id: u64, range: SeqRange) {
        debug_assert!(self.slots.back().is_none_or(|s| s.range.last < range.first));
        self.slots.push_back(Slot {
            id,
            range,
            done: false,
        });
    }

    /// Marks a batch done (delivered or dead-lettered). Returns the seq the cursor may now be
    /// acked up to, if the done prefix grew.
    pub fn complete(&mut self, id: u64) -> Option<u64> {
        if let Some(slot) = self.slots.iter_mut().find(|s| s.id == id) {
            slot.done = true;
        }
        let mut ack = None;
        while self.slots.front().is_some_and(|s| s.done) {
            ack = self.slots.pop_front().map(|s| s.range.last);
        }
        ack
    }

    /// Batches started and not yet acked (done ones waiting behind a slower one included).
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether nothing is outstanding.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Ranges not yet acked, oldest first: what a restart must send again.
    pub fn ranges(&self) -> impl Iterator<Item = SeqRange> + '_ {
        self.slots.iter().map(|s| s.range)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(first: u64, last: u64) -> SeqRange {
        SeqRange { first, last }
    }

    #[test]
    fn the_cursor_moves_only_over_a_done_prefix() {
        let mut order = AckOrder::default();
        order.start(1, r(1, 10));
        order.start(2, r(11, 20));
        order.start(3, r(21, 30));
        assert_eq!(order.complete(2), None, "batch 1 is still out");
        assert_eq!(order.complete(3), None);
        assert_eq!(order.len(), 3);
        assert_eq!(order.complete(1), Some(30));
        assert!(order.is_empty());
    }

    #[test]
    fn in_order_completion_acks_each_batch() {
        let mut order = AckOrder::default();
        order.start(1, r(1, 10));
        order.start(2, r(11, 20));
        assert_eq!(order.complete(1), Some(10));
        assert_eq!(order.ranges().collect::<Vec<_>>(), vec![r(11, 20)]);
        assert_eq!(order.complete(2), Some(20));
    }

    #[test]
    fn ranges_round_trip_through_consumer_meta_bytes() {
        let ranges = vec![r(1, 10), r(12, 12)];
        let bytes = SeqRange::encode_list(ranges.clone());
        assert_eq!(bytes, b"1-10;12-12");
        assert_eq!(SeqRange::decode_list(&bytes), ranges);
        assert_eq!(SeqRange::decode_list(b""), vec![]);
        assert_eq!(SeqRange::decode_list(b"5-1;x;3-4"), vec![r(3, 4)]);
    }
}
