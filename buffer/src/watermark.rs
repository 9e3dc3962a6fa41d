//! The seq watermark: a small file beside the sled database, `<dir>/seq.watermark`, that
//! remembers how far seqs went even when the database itself is lost or rolled back.
//!
//! sled's own counter (`meta/next_seq`) lives in the database, so a database that is moved
//! aside (sled cannot open it) or that comes back shorter (a truncated log, a restored backup)
//! would restart seqs below ones the cloud already has; the cloud deduplicates on
//! `(gateway_id, seq)` and would drop the new records. The watermark keeps two numbers outside
//! the database:
//!
//! - `reserved`: a bound above every seq ever handed out. It is made durable (written and
//!   `fdatasync`ed) **before** any seq ≥ the old bound is assigned, and moved in big steps
//!   ([`RESERVE_STEP`] by default), so the fsync costs once per million seqs and the bound holds
//!   even after a power cut.
//! - `durable`: the last seq known durable in sled. Rewritten in place after every successful
//!   group commit, *after* sled's flush and `fdatasync`, without a fsync of its own: it is never
//!   ahead of what sled has made durable, and after a power cut it may lag (which can only
//!   under-report missing seqs, never invent them).
//!
//! # Contract
//! - At open, with sled's recovered counter `N` (the next seq sled would hand out):
//!   - database moved aside (fresh): seqs continue at `max(N, reserved)`. The old records are in
//!     the moved-aside copy, not lost, so nothing is reported missing.
//!   - `N - 1 < durable`: the database came back without records it had made durable. Seqs
//!     `N ..= durable` are reported missing (logged at error with the range, counted in
//!     [`crate::BufferStats::missing_at_open`]) and seqs continue at `max(N, reserved)`: none of
//!     them is ever reused, including any handed out after `durable` was last written.
//!   - otherwise seqs continue at `N`, as before.
//! - No file (first start, or a buffer written by a version without watermark): it is created
//!   from `N`; nothing can be checked at this open.
//! - A file that does not decode (both copies fail their checksum): logged (warn, or error when
//!   the database was moved aside too), and seqs continue at `N + RESERVE_STEP`. With the
//!   database intact `N` alone is already safe; the margin also covers the double fault of a
//!   damaged watermark and a database that lost fewer than a step of seqs. Missing seqs cannot
//!   be counted then. A fresh (moved-aside) database plus an unreadable watermark leaves no
//!   record of earlier seqs: they may repeat — the error log says so.
//! - The file is only touched by the process that holds sled's lock on the database.
//!
//! # Layout
//! Two copies of one 32-byte slot, in separate 512-byte sectors so that a torn write can only
//! damage one of them:
//!
//! ```text
//! offset 0    slot A   "GBWM" | version:u32le = 1 | reserved:u64le | durable:u64le | crc32:u32le | 0:u32
//! offset 512  slot B   same; written only together with a fsync (a reservation or at open)
//! ```
//!
//! `durable` updates rewrite slot A only; a reservation writes A, fsyncs, then writes B and
//! fsyncs again, so at every moment one fully written copy carries the current `reserved`.
//! Reading takes the larger value of each field over the copies that decode; both fields only
//! grow.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::buffer::fsync_path;
use crate::error::BufferError;

/// Name of the watermark file inside [`crate::BufferOptions::dir`].
pub(crate) const FILE_NAME: &str = "seq.watermark";

/// How far above the seqs handed out `reserved` is moved each time it is reached: one fsync
/// per million seqs (a few hours of a busy gateway), and a gap of at most a million seqs
/// skipped after a database is lost (seqs are u64; the cloud only needs them unique and
/// increasing).
pub(crate) const RESERVE_STEP: u64 = 1_000_000;

const MAGIC: [u8; 4] = *b"GBWM";
const VERSION: u32 = 1;
const SLOT_LEN: usize = 32;
const SLOT_B_OFFSET: u64 = 512;

/// What the file said at open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Loaded {
    /// No file, or an empty one (a creation cut short before its first fsync).
    Absent,
    /// Present but neither copy decodes; the reason.
    Unreadable(String),
    /// The larger of each field over the copies that decode.
    Read { reserved: u64, durable: u64 },
}

/// The open watermark file and what was last written to it.
#[derive(Debug)]
pub(crate) struct Watermark {
    file: File,
    path: PathBuf,
    /// The file did not exist before this open: its name is durable only once `dir` is fsynced.
    created: bool,
    /// The bound that is durable on disk; every seq handed out is below it.
    pub(crate) reserved: u64,
    /// The last `durable` written (slot A).
    pub(crate) durable: u64,
    /// The reservation step.
    pub(crate) step: u64,
    /// A `durable` write failed and was logged; log again only once it works again.
    write_failing: bool,
}

impl Watermark {
    /// Open (or create, empty) `<dir>/seq.watermark` and read what it holds. Nothing is
    /// written; `reserved` is 0 until [`Watermark::store`].
    pub(crate) fn open(dir: &Path, step: u64) -> Result<(Watermark, Loaded), BufferError> {
        let path = dir.join(FILE_NAME);
        let io = |source| BufferError::Io {
            path: path.clone(),
            source,
        };
        let existed = path.exists();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        let loaded = if len == 0 {
            Loaded::Absent
        } else {
            let mut a = [0u8; SLOT_LEN];
            let mut b = [0u8; SLOT_LEN];
            let slot_a = read_slot(&file, 0, &mut a).map_err(io)?.then(|| decode(&a));
            let slot_b = read_slot(&file, SLOT_B_OFFSET, &mut b)
                .map_err(io)?
                .then(|| decode(&b));
            match (slot_a.flatten(), slot_b.flatten()) {
                (None, None) => Loaded::Unreadable(format!(
                    "neither copy decodes ({len} bytes, expected {})",
                    SLOT_B_OFFSET as usize + SLOT_LEN
                )),
                (x, y) => {
                    let (r, d) = [x, y]
                        .into_iter()
                        .flatten()
                        .fold((0, 0), |(r, d), (r2, d2)| (r.max(r2), d.max(d2)));
                    Loaded::Read {
                        reserved: r,
                        durable: d,
                    }
                }
            }
        };
        let wm = Watermark {
            file,
            path,
            created: !existed,
            reserved: 0,
            durable: 0,
            step: step.max(1),
            write_failing: false,
        };
        Ok((wm, loaded))
    }

    /// Write both copies with fsyncs in between (A, fsync, B, fsync), and on the first store
    /// after creating the file, fsync its directory so its name survives a power cut. Only after this
    /// returns may seqs below `reserved` be handed out.
    pub(crate) fn store(&mut self, reserved: u64, durable: u64) -> Result<(), BufferError> {
        let slot = encode(reserved, durable);
        let io = |source| BufferError::Io {
            path: self.path.clone(),
            source,
        };
        self.file.write_all_at(&slot, 0).map_err(io)?;
        self.file.sync_data().map_err(io)?;
        self.file.write_all_at(&slot, SLOT_B_OFFSET).map_err(io)?;
        self.file.sync_data().map_err(io)?;
        if self.created {
            if let Some(dir) = self.path.parent() {
                fsync_path(dir)?;
            }
            self.created = false;
        }
        self.reserved = reserved;
        self.durable = durable;
        Ok(())
    }

    /// Make sure every seq below `upto` is covered: if not, move `reserved` to `upto + step`
    /// and make it durable first. Returns whether a store happened.
    pub(crate) fn reserve(&mut self, upto: u64) -> Result<bool, BufferError> {
        if upto <= self.reserved {
            return Ok(false);
        }
        let reserved = upto.saturating_add(self.step);
        self.store(reserved, self.durable)?;
        Ok(true)
    }

    /// Record that every seq up to `durable` is durable in sled: rewrite slot A in place, no
    /// fsync (see the module docs for why that is enough). A failure is logged, not returned:
    /// the records are durable either way, and a stale `durable` only under-reports.
    pub(crate) fn note_durable(&mut self, durable: u64) {
        if durable <= self.durable {
            return;
        }
        match self.file.write_all_at(&encode(self.reserved, durable), 0) {
            Ok(()) => {
                self.durable = durable;
                if self.write_failing {
                    self.write_failing = false;
                    tracing::info!(path = %self.path.display(), "buffer: seq watermark writes work again");
                }
            }
            Err(e) => {
                if !self.write_failing {
                    self.write_failing = true;
                    tracing::warn!(
                        path = %self.path.display(),
                        error = %e,
                        "buffer: cannot update the seq watermark; records lost from the database \
                         later may be under-reported"
                    );
                }
            }
        }
    }
}

/// Read a slot; `false` when the file is too short to hold it.
fn read_slot(file: &File, offset: u64, buf: &mut [u8; SLOT_LEN]) -> std::io::Result<bool> {
    match file.read_exact_at(buf, offset) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(e),
    }
}

fn encode(reserved: u64, durable: u64) -> [u8; SLOT_LEN] {
    let mut s = [0u8; SLOT_LEN];
    s[0..4].copy_from_slice(&MAGIC);
    s[4..8].copy_from_slice(&VERSION.to_le_bytes());
    s[8..16].copy_from_slice(&reserved.to_le_bytes());
    s[16..24].copy_from_slice(&durable.to_le_bytes());
    let crc = crc32fast::hash(&s[0..24]);
    s[24..28].copy_from_slice(&crc.to_le_bytes());
    s
}

/// `(reserved, durable)` of a slot, or `None` if it does not decode or is inconsistent
/// (`durable` must be below `reserved`).
fn decode(s: &[u8; SLOT_LEN]) -> Option<(u64, u64)> {
    let u32_at = |at: usize| s.get(at..at + 4)?.try_into().ok().map(u32::from_le_bytes);
    let u64_at = |at: usize| s.get(at..at + 8)?.try_into().ok().map(u64::from_le_bytes);
    if s[0..4] != MAGIC || u32_at(24)? != crc32fast::hash(&s[0..24]) || u32_at(4)? != VERSION {
        return None;
    }
    let reserved = u64_at(8)?;
    let durable = u64_at(16)?;
    (durable < reserved).then_some((reserved, durable))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(dir: &Path) -> (Watermark, Loaded) {
        Watermark::open(dir, 10).unwrap()
    }

    #[test]
    fn a_new_file_reads_as_absent_and_round_trips_after_a_store() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wm, loaded) = open(dir.path());
        assert_eq!(loaded, Loaded::Absent);
        wm.store(11, 0).unwrap();
        wm.note_durable(7);
        drop(wm);
        let (_, loaded) = open(dir.path());
        assert_eq!(
            loaded,
            Loaded::Read {
                reserved: 11,
                durable: 7
            }
        );
    }

    #[test]
    fn reserve_stores_only_when_the_bound_is_reached() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wm, _) = open(dir.path());
        wm.store(11, 0).unwrap();
        assert!(!wm.reserve(11).unwrap());
        assert!(wm.reserve(12).unwrap());
        assert_eq!(wm.reserved, 22);
    }

    #[test]
    fn one_damaged_copy_is_enough_and_both_damaged_is_unreadable() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wm, _) = open(dir.path());
        wm.store(50, 3).unwrap();
        wm.note_durable(9);
        drop(wm);
        let path = dir.path().join(FILE_NAME);
        let mut bytes = std::fs::read(&path).unwrap();
        // A torn durable write: slot A garbled. Slot B still has the reservation.
        bytes[10] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(
            open(dir.path()).1,
            Loaded::Read {
                reserved: 50,
                durable: 3
            }
        );
        bytes[SLOT_B_OFFSET as usize + 17] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        assert!(matches!(open(dir.path()).1, Loaded::Unreadable(_)));
    }
}
