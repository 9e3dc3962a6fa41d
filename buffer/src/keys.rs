//! Key layout (drawn in the crate docs). Seqs and ids are big-endian so sled's byte order is
//! numeric order.

use crate::record::Lane;

/// Directory of the sled database inside `BufferOptions::dir`.
pub(crate) const DB_DIR_NAME: &str = "buffer.sled";

pub(crate) fn lane_tree(lane: Lane) -> &'static str {
    match lane {
        Lane::Alarms => "lane.alarms",
        Lane::Readings => "lane.readings",
    }
}
pub(crate) const META_TREE: &str = "meta";
pub(crate) const REQUEUE_TREE: &str = "requeue";
/// Dead letters of rejected input (payloads, undecodable blocks): everything but refused batches.
pub(crate) const DEAD_TREE: &str = "dead";
/// Dead letters of batches the upstream refused (replayable records), under their own quota.
pub(crate) const DEAD_REFUSED_TREE: &str = "dead.refused";

pub(crate) const HEADER_PREFIX: u8 = b'h';
pub(crate) const BLOCK_PREFIX: u8 = b'b';

pub(crate) const NEXT_SEQ_KEY: &[u8] = b"next_seq";
pub(crate) const DEAD_NEXT_ID_KEY: &[u8] = b"dead_next_id";
/// Present once refused batches were moved out of the "dead" tree (databases written before
/// the two dead-letter quotas kept both kinds there).
pub(crate) const DEAD_SPLIT_KEY: &[u8] = b"dead_split";
pub(crate) const ACK_PREFIX: &[u8] = b"ack\0";
pub(crate) const CONSUMER_META_PREFIX: &[u8] = b"cmeta\0";
/// Prefix of component state keys (the alarm engine's state).
pub(crate) const STATE_PREFIX: &[u8] = b"state\0";

pub(crate) fn prefixed(prefix: u8, seq: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = prefix;
    k[1..].copy_from_slice(&seq.to_be_bytes());
    k
}

pub(crate) fn header_key(seq: u64) -> [u8; 9] {
    prefixed(HEADER_PREFIX, seq)
}
pub(crate) fn block_key(seq: u64) -> [u8; 9] {
    prefixed(BLOCK_PREFIX, seq)
}
/// Records put back for `consumer`: lane tag ++ consumer ++ NUL ++ seq. Consumer names never
/// hold a NUL, so one consumer's keys are one contiguous, seq-ordered range.
pub(crate) fn requeue_key(consumer: &str, lane: Lane, seq: u64) -> Vec<u8> {
    let mut k = requeue_prefix(consumer, lane);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}
pub(crate) fn requeue_prefix(consumer: &str, lane: Lane) -> Vec<u8> {
    let mut k = Vec::with_capacity(consumer.len() + 10);
    k.push(lane.tag());
    k.extend_from_slice(consumer.as_bytes());
    k.push(0);
    k
}
/// Requeue keys of older versions, shared by every consumer: lane tag ++ seq (9 bytes). Open
/// moves them to the accounting consumer's range.
pub(crate) const LEGACY_REQUEUE_KEY_LEN: usize = 9;

/// The seq of a 9-byte prefixed key (or of an 8-byte id key).
pub(crate) fn seq_of(key: &[u8]) -> Option<u64> {
    let tail: [u8; 8] = key.get(key.len().checked_sub(8)?..)?.try_into().ok()?;
    Some(u64::from_be_bytes(tail))
}

pub(crate) fn ack_key(consumer: &str, lane: Lane) -> Vec<u8> {
    let mut k = ACK_PREFIX.to_vec();
    k.push(lane.tag());
    k.push(0);
    k.extend_from_slice(consumer.as_bytes());
    k
}

/// `(lane, consumer)` of an ack key.
pub(crate) fn parse_ack_key(key: &[u8]) -> Option<(Lane, String)> {
    let rest = key.strip_prefix(ACK_PREFIX)?;
    let (&tag, rest) = rest.split_first()?;
    let lane = Lane::ALL.into_iter().find(|l| l.tag() == tag)?;
    let rest = rest.strip_prefix(&[0])?;
    Some((lane, String::from_utf8(rest.to_vec()).ok()?))
}

/// Key of [`crate::Buffer::set_state`]: state of a component that is not a consumer.
pub(crate) fn state_key(key: &str) -> Vec<u8> {
    let mut k = STATE_PREFIX.to_vec();
    k.extend_from_slice(key.as_bytes());
    k
}

pub(crate) fn consumer_meta_key(consumer: &str, key: &str) -> Vec<u8> {
    let mut k = CONSUMER_META_PREFIX.to_vec();
    k.extend_from_slice(consumer.as_bytes());
    k.push(0);
    k.extend_from_slice(key.as_bytes());
    k
}
