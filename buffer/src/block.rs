//! Block codec: one committed group of one lane as a single sled value.
//!
//! ```text
//! value  = 0x02 | crc32(raw_len ++ deflated):u32 LE | raw_len:u32 LE | deflated   (written now)
//!        | 0x01 | crc32(deflated):u32 LE | deflated                             (older databases)
//! raw    = entry*            (what `deflated` inflates to; exactly raw_len bytes)
//! entry  = varint(seq - previous seq, first entry: seq - block key) | postcard(Record)
//! header = postcard(BlockHeader)   (stored under its own key, see lib.rs)
//! ```
//!
//! # Every block the writer builds, the reader opens
//! The writer bounds a block's raw size: a record joins a block only if the block stays within
//! [`BLOCK_MAX_RAW_BYTES`]; a record that would push it over seals the block and starts the
//! next one, so a block is either ≤ `BLOCK_MAX_RAW_BYTES` raw, or holds one record alone. A
//! record is at most [`MAX_RECORD_BYTES`] encoded (`Buffer::append` refuses larger ones), so no
//! block's raw size exceeds [`MAX_INFLATED_BYTES`], and that is exactly the reader's cap. The
//! format-2 header also stores the raw length, so the reader inflates into a buffer of exactly
//! that size and a length field past the cap is refused before any allocation.
//!
//! Format 1 (older databases) did not bound blocks this way: a block could hold up to 16 KiB of
//! small records *plus* one record of any size, and the old reader refused everything over
//! 64 KiB. Such blocks are read with the same cap as format 2, so every format-1 block whose
//! records each fit in `MAX_RECORD_BYTES` opens now, including ones the old code could not.

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use serde::{Deserialize, Serialize};

use crate::record::Record;

/// A block stops growing at this many records: big enough that sled's per-key overhead is
/// amortised (≈ 0.3 B/record) and deflate sees repetition, small enough that decoding one block
/// to serve a read or count an ack costs tens of µs.
pub(crate) const BLOCK_MAX_RECORDS: u32 = 256;
/// ... or at this many raw (uncompressed) bytes; keeps a block's sled value a few KiB, far under
/// sled's blob threshold (segment_size / 4 = 128 KiB), so it stays inline in the log. A record
/// that would push a non-empty block past this starts a new block; a record larger than this
/// gets a block of its own.
pub(crate) const BLOCK_MAX_RAW_BYTES: usize = 16 * 1024;
/// The largest record the buffer stores, in encoded (postcard) bytes. Every string of a record
/// comes from one ingested payload, so a record is at most that payload plus ~40 bytes of
/// numbers and lengths: `mqtt.max_payload_bytes` (default 64 KiB) and serial lines (≤ 1 KiB)
/// stay far below. `Buffer::append` refuses anything larger, which is what lets the reader's
/// cap below be a promise rather than a guess.
pub const MAX_RECORD_BYTES: usize = 4 * 1024 * 1024;
/// Longest seq delta varint in front of a record.
const MAX_VARINT_BYTES: usize = 10;
/// Inflating a block never produces more than this: the largest raw block the writer can build
/// (a block of small records, or one record alone). A corrupt length cannot balloon memory.
pub(crate) const MAX_INFLATED_BYTES: usize = if BLOCK_MAX_RAW_BYTES > MAX_RECORD_BYTES {
    BLOCK_MAX_RAW_BYTES
} else {
    MAX_RECORD_BYTES + MAX_VARINT_BYTES
};
/// Format written now (stores the raw length).
const FORMAT: u8 = 2;
/// Format of blocks written before the raw length was stored; still read.
const FORMAT_V1: u8 = 1;

/// What the buffer needs to know about a block without decoding it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct BlockHeader {
    pub last_seq: u64,
    pub count: u32,
    /// Length of the block's sled value (what quotas count).
    pub stored_bytes: u32,
    pub first_commit_ms: i64,
    pub last_commit_ms: i64,
    pub min_ts_ms: i64,
}

impl BlockHeader {
    pub(crate) fn encode(&self) -> Vec<u8> {
        postcard::to_stdvec(self).expect("header encodes")
    }
    pub(crate) fn decode(bytes: &[u8]) -> Option<BlockHeader> {
        postcard::from_bytes(bytes).ok()
    }
}

/// Why a block value could not be decoded.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BlockError {
    #[error("block too short")]
    Short,
    #[error("unknown block format {0}")]
    Format(u8),
    #[error("block checksum mismatch")]
    Checksum,
    #[error("block does not inflate: {0}")]
    Inflate(String),
    /// A format-2 block claims a raw length the writer can never produce.
    #[error("block claims {0} raw bytes, over the {MAX_INFLATED_BYTES}-byte limit")]
    TooLarge(u64),
    #[error("record {index} of the block does not decode: {reason}")]
    Record { index: usize, reason: String },
}

/// A block being built (or the lane's tail block kept in memory so the next small group can be
/// merged into it instead of making a new tiny block).
#[derive(Debug)]
pub(crate) struct RawBlock {
    pub first_seq: u64,
    pub last_seq: u64,
    pub count: u32,
    pub raw: Vec<u8>,
    pub first_commit_ms: i64,
    pub min_ts_ms: i64,
    /// The header as last written to sled, if this block is already there.
    pub written: Option<BlockHeader>,
}

impl RawBlock {
    pub(crate) fn new(first_seq: u64, now_ms: i64) -> Self {
        RawBlock {
            first_seq,
            last_seq: first_seq,
            count: 0,
            raw: Vec::with_capacity(1024),
            first_commit_ms: now_ms,
            min_ts_ms: i64::MAX,
            written: None,
        }
    }

    pub(crate) fn is_full(&self) -> bool {
        self.count >= BLOCK_MAX_RECORDS || self.raw.len() >= BLOCK_MAX_RAW_BYTES
    }

    /// Whether a record of `encoded` bytes (postcard) may join this block: always when the
    /// block is empty (a large record gets a block of its own), otherwise only if the block
    /// stays within [`BLOCK_MAX_RAW_BYTES`] and [`BLOCK_MAX_RECORDS`].
    pub(crate) fn fits(&self, encoded: usize) -> bool {
        self.count == 0
            || (self.count < BLOCK_MAX_RECORDS
                && self.raw.len() + MAX_VARINT_BYTES + encoded <= BLOCK_MAX_RAW_BYTES)
    }

    /// Appends one record. The caller checks [`RawBlock::fits`] first; pushing a record larger
    /// than [`MAX_RECORD_BYTES`] is a bug (append refuses them).
    #[cfg(test)]
    pub(crate) fn push(&mut self, seq: u64, record: &Record) -> Result<(), postcard::Error> {
        let encoded = postcard::to_stdvec(record)?;
        self.push_encoded(seq, &encoded, record.ts_ms());
        Ok(())
    }

    /// [`RawBlock::push`] of a record already encoded with postcard.
    pub(crate) fn push_encoded(&mut self, seq: u64, encoded: &[u8], ts_ms: i64) {
        let prev = if self.count == 0 {
            self.first_seq
        } else {
            self.last_seq
        };
        debug_assert!(seq >= prev);
        put_varint(&mut self.raw, seq - prev);
        self.raw.extend_from_slice(encoded);
        debug_assert!(
            self.raw.len() <= MAX_INFLATED_BYTES,
            "block over the reader's cap"
        );
        self.last_seq = seq;
        self.count += 1;
        self.min_ts_ms = self.min_ts_ms.min(ts_ms);
    }

    /// Compress into a sled value and its header.
    pub(crate) fn seal(&self, z: &mut Compress, now_ms: i64) -> (BlockHeader, Vec<u8>) {
        let mut value = Vec::with_capacity(self.raw.len() / 2 + 64);
        value.push(FORMAT);
        value.extend_from_slice(&[0; 4]);
        let raw_len = u32::try_from(self.raw.len()).expect("a block is bounded far below 4 GiB");
        value.extend_from_slice(&raw_len.to_le_bytes());
        z.reset();
        loop {
            if value.capacity() - value.len() < 64 {
                value.reserve(value.capacity());
            }
            let consumed = usize::try_from(z.total_in()).unwrap_or(usize::MAX);
            let status = z
                .compress_vec(&self.raw[consumed..], &mut value, FlushCompress::Finish)
                .expect("deflate of an in-memory buffer cannot fail");
            if status == Status::StreamEnd {
                break;
            }
        }
        let crc = crc32fast::hash(&value[5..]);
        value[1..5].copy_from_slice(&crc.to_le_bytes());
        let header = BlockHeader {
            last_seq: self.last_seq,
            count: self.count,
            stored_bytes: u32::try_from(value.len()).unwrap_or(u32::MAX),
            first_commit_ms: self.first_commit_ms,
            last_commit_ms: now_ms,
            min_ts_ms: self.min_ts_ms,
        };
        (header, value)
    }
}

/// One decoded record: its seq, the record, and its encoded (postcard) size in bytes.
pub(crate) type Entry = (u64, Record, usize);

/// Decode a whole block value.
pub(crate) fn decode(first_seq: u64, value: &[u8]) -> Result<Vec<Entry>, BlockError> {
    let raw = inflate(value)?;
    let mut out = Vec::new();
    let mut rest: &[u8] = &raw;
    let mut seq = first_seq;
    while !rest.is_empty() {
        let index = out.len();
        let bad = |reason: String| BlockError::Record { index, reason };
        let (delta, r) = take_varint(rest).ok_or_else(|| bad("bad seq delta".into()))?;
        seq = seq
            .checked_add(delta)
            .ok_or_else(|| bad("seq overflow".into()))?;
        let (record, r2) =
            postcard::take_from_bytes::<Record>(r).map_err(|e| bad(e.to_string()))?;
        out.push((seq, record, r.len() - r2.len()));
        rest = r2;
    }
    Ok(out)
}

fn inflate(value: &[u8]) -> Result<Vec<u8>, BlockError> {
    if value.len() < 5 {
        return Err(BlockError::Short);
    }
    let crc = u32::from_le_bytes([value[1], value[2], value[3], value[4]]);
    let checked = &value[5..];
    let (body, raw_len) = match value[0] {
        FORMAT => {
            let Some((len, body)) = checked.split_first_chunk::<4>() else {
                return Err(BlockError::Short);
            };
            (body, Some(u32::from_le_bytes(*len) as usize))
        }
        FORMAT_V1 => (checked, None),
        other => return Err(BlockError::Format(other)),
    };
    if crc32fast::hash(checked) != crc {
        return Err(BlockError::Checksum);
    }
    if let Some(len) = raw_len
        && len > MAX_INFLATED_BYTES
    {
        return Err(BlockError::TooLarge(len as u64));
    }
    let mut d = Decompress::new(false);
    let mut out = Vec::with_capacity(raw_len.unwrap_or(body.len() * 4).min(MAX_INFLATED_BYTES) + 1);
    loop {
        if out.capacity() - out.len() < 256 {
            out.reserve(out.capacity());
        }
        let (in0, out0) = (d.total_in(), d.total_out());
        let consumed = usize::try_from(in0).unwrap_or(usize::MAX);
        let status = d
            .decompress_vec(&body[consumed..], &mut out, FlushDecompress::None)
            .map_err(|e| BlockError::Inflate(e.to_string()))?;
        if status == Status::StreamEnd {
            if raw_len.is_some_and(|len| len != out.len()) {
                return Err(BlockError::Inflate(format!(
                    "inflated to {} bytes, header says {}",
                    out.len(),
                    raw_len.unwrap_or(0)
                )));
            }
            return Ok(out);
        }
        if out.len() > raw_len.unwrap_or(MAX_INFLATED_BYTES) {
            return Err(BlockError::Inflate("inflates past the size limit".into()));
        }
        if d.total_in() == in0 && d.total_out() == out0 {
            return Err(BlockError::Inflate("truncated stream".into()));
        }
    }
}

/// The compressor kept by the committer (its state is ~300 KiB; building one per block would
/// mostly measure memset).
pub(crate) fn new_compressor() -> Compress {
    Compress::new(Compression::fast(), false)
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn take_varint(bytes: &[u8]) -> Option<(u64, &[u8])> {
    let mut v: u64 = 0;
    for (i, b) in bytes.iter().enumerate().take(10) {
        v |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some((v, &bytes[i + 1..]));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Reading, Source};

    fn reading(i: i64) -> Record {
        Record::Reading(Reading {
            device: "dev-0042".into(),
            metric: "temperature".into(),
            value: 20.0 + (i as f64) / 10.0,
            unit: Some("C".into()),
            ts_ms: 1_764_081_600_000 + i * 1000,
            source: Source::Mqtt,
        })
    }

    #[test]
    fn a_sealed_block_decodes_to_the_same_records_and_seqs() {
        let mut b = RawBlock::new(10, 0);
        for (i, seq) in [10u64, 11, 15, 300].iter().enumerate() {
            b.push(*seq, &reading(i as i64)).unwrap();
        }
        let (h, v) = b.seal(&mut new_compressor(), 5);
        assert_eq!(h.count, 4);
        assert_eq!(h.last_seq, 300);
        let d = decode(10, &v).unwrap();
        let seqs: Vec<u64> = d.iter().map(|e| e.0).collect();
        assert_eq!(seqs, vec![10, 11, 15, 300]);
        assert_eq!(d[3].1, reading(3));
    }

    #[test]
    fn a_flipped_byte_is_reported_not_panicked_on() {
        let mut b = RawBlock::new(1, 0);
        b.push(1, &reading(1)).unwrap();
        let (_, mut v) = b.seal(&mut new_compressor(), 0);
        let n = v.len();
        v[n - 1] ^= 0x55;
        assert!(matches!(decode(1, &v), Err(BlockError::Checksum)));
        assert!(decode(1, &v[..3]).is_err());
    }
}
#[cfg(test)]
mod more_tests {
    use super::*;
    use crate::record::{Reading, Source};
    #[test]
    fn a_full_block_of_similar_readings_round_trips() {
        let mut b = RawBlock::new(1, 0);
        for i in 0..300u64 {
            if b.is_full() {
                break;
            }
            b.push(
                i + 1,
                &Record::Reading(Reading {
                    device: "dev-0042".into(),
                    metric: "temperature".into(),
                    value: 20.0,
                    unit: Some("C".into()),
                    ts_ms: 1_764_081_600_000 + i as i64,
                    source: Source::Mqtt,
                }),
            )
            .unwrap();
        }
        let (h, v) = b.seal(&mut new_compressor(), 0);
        assert_eq!(h.count, BLOCK_MAX_RECORDS);
        assert!(v.len() < b.raw.len() / 4, "similar readings compress well");
        let d = decode(1, &v).map_err(|e| e.to_string()).unwrap();
        assert_eq!(d.len() as u32, h.count);
    }
}

#[cfg(test)]
mod size_tests {
    use super::*;
    use crate::record::{Reading, Source};

    fn reading(i: u64, unit_len: usize) -> Record {
        Record::Reading(Reading {
            device: format!("dev-{i}"),
            metric: "temperature".into(),
            value: i as f64,
            unit: Some(
                (0..unit_len)
                    .map(|k| char::from(b'a' + (k % 26) as u8))
                    .collect(),
            ),
            ts_ms: 1_764_081_600_000 + i as i64,
            source: Source::Mqtt,
        })
    }

    /// What the writer of format 1 did: every record into one block, then `0x01 | crc | deflate`.
    fn seal_v1(first: u64, records: &[(u64, Record)]) -> Vec<u8> {
        let mut raw = Vec::new();
        let mut prev = first;
        for (seq, r) in records {
            put_varint(&mut raw, seq - prev);
            prev = *seq;
            raw = postcard::to_extend(r, raw).unwrap();
        }
        let mut z = new_compressor();
        let mut value = vec![FORMAT_V1, 0, 0, 0, 0];
        value.reserve(raw.len() + 1024);
        let status = z
            .compress_vec(&raw, &mut value, FlushCompress::Finish)
            .unwrap();
        assert_eq!(status, Status::StreamEnd);
        let crc = crc32fast::hash(&value[5..]);
        value[1..5].copy_from_slice(&crc.to_le_bytes());
        value
    }

    #[test]
    fn a_large_record_does_not_fit_behind_small_ones_but_opens_a_block_of_its_own() {
        let mut b = RawBlock::new(1, 0);
        for i in 1..=10 {
            let e = postcard::to_stdvec(&reading(i, 10)).unwrap();
            assert!(b.fits(e.len()));
            b.push_encoded(i, &e, 0);
        }
        let big = postcard::to_stdvec(&reading(11, 100_000)).unwrap();
        assert!(!b.fits(big.len()), "the writer seals before it");
        let mut alone = RawBlock::new(11, 0);
        assert!(alone.fits(big.len()));
        alone.push_encoded(11, &big, 0);
        let (_, v) = alone.seal(&mut new_compressor(), 0);
        let d = decode(11, &v).unwrap();
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].1, reading(11, 100_000));
    }

    #[test]
    fn a_block_of_the_largest_record_opens() {
        let r = reading(1, MAX_RECORD_BYTES - 200);
        let mut b = RawBlock::new(1, 0);
        b.push(1, &r).unwrap();
        let (h, v) = b.seal(&mut new_compressor(), 0);
        assert_eq!(h.count, 1);
        assert_eq!(decode(1, &v).unwrap()[0].1, r);
    }

    #[test]
    fn a_format_1_block_with_a_large_record_behind_small_ones_still_opens() {
        // Written by the old code, refused by its 64 KiB inflate cap.
        let mut records: Vec<(u64, Record)> = (1..=20).map(|i| (i, reading(i, 10))).collect();
        records.push((21, reading(21, 150_000)));
        records.push((22, reading(22, 10)));
        let v = seal_v1(1, &records);
        let d = decode(1, &v).unwrap();
        assert_eq!(d.len(), 22);
        assert_eq!(d[20].1, records[20].1);
        assert_eq!(d[21].0, 22);
    }

    #[test]
    fn a_length_field_past_the_cap_or_a_wrong_length_is_refused_before_inflating() {
        let mut b = RawBlock::new(1, 0);
        b.push(1, &reading(1, 10)).unwrap();
        let (_, v) = b.seal(&mut new_compressor(), 0);
        let rewrite = |len: u32| {
            let mut v = v.clone();
            v[5..9].copy_from_slice(&len.to_le_bytes());
            let crc = crc32fast::hash(&v[5..]);
            v[1..5].copy_from_slice(&crc.to_le_bytes());
            v
        };
        assert!(matches!(
            decode(1, &rewrite(u32::MAX)),
            Err(BlockError::TooLarge(_))
        ));
        assert!(matches!(
            decode(1, &rewrite(3)),
            Err(BlockError::Inflate(_))
        ));
    }
}
