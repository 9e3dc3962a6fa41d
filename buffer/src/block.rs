//! Block codec: one committed group of one lane as a single sled value.
//!
//! ```text
//! value  = format:u8 (=1) | crc32(deflated):u32 LE | deflated
//! raw    = entry*            (what `deflated` inflates to)
//! entry  = varint(seq - previous seq, first entry: seq - block key) | postcard(Record)
//! header = postcard(BlockHeader)   (stored under its own key, see lib.rs)
//! ```

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use serde::{Deserialize, Serialize};

use crate::record::Record;

/// A block stops growing at this many records: big enough that sled's per-key overhead is
/// amortised (≈ 0.3 B/record) and deflate sees repetition, small enough that decoding one block
/// to serve a read or count an ack costs tens of µs.
pub(crate) const BLOCK_MAX_RECORDS: u32 = 256;
/// ... or at this many raw (uncompressed) bytes; keeps a block's sled value a few KiB, far under
/// sled's blob threshold (segment_size / 4 = 128 KiB), so it stays inline in the log.
pub(crate) const BLOCK_MAX_RAW_BYTES: usize = 16 * 1024;
/// Inflating a block never produces more than this; a corrupt length cannot balloon memory.
const MAX_INFLATED_BYTES: usize = 4 * BLOCK_MAX_RAW_BYTES;
const FORMAT: u8 = 1;

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

    pub(crate) fn push(&mut self, seq: u64, record: &Record) -> Result<(), postcard::Error> {
        let prev = if self.count == 0 {
            self.first_seq
        } else {
            self.last_seq
        };
        debug_assert!(seq >= prev);
        put_varint(&mut self.raw, seq - prev);
        self.raw = postcard::to_extend(record, std::mem::take(&mut self.raw))?;
        self.last_seq = seq;
        self.count += 1;
        self.min_ts_ms = self.min_ts_ms.min(record.ts_ms());
        Ok(())
    }

    /// Compress into a sled value and its header.
    pub(crate) fn seal(&self, z: &mut Compress, now_ms: i64) -> (BlockHeader, Vec<u8>) {
        let mut value = Vec::with_capacity(self.raw.len() / 2 + 64);
        value.push(FORMAT);
        value.extend_from_slice(&[0; 4]);
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
    if value[0] != FORMAT {
        return Err(BlockError::Format(value[0]));
    }
    let crc = u32::from_le_bytes([value[1], value[2], value[3], value[4]]);
    let body = &value[5..];
    if crc32fast::hash(body) != crc {
        return Err(BlockError::Checksum);
    }
    let mut d = Decompress::new(false);
    let mut out = Vec::with_capacity(body.len() * 4);
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
            return Ok(out);
        }
        if out.len() > MAX_INFLATED_BYTES {
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
