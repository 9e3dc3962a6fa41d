//! The buffer handle, its shared state, recovery at open, reads, acks and retention.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{mpsc, oneshot, watch};
use tracing::{error, info, warn};

use crate::block::{self, BlockHeader, RawBlock};
use crate::committer::{APPEND_QUEUE_CAPACITY, AppendRequest, Committer};
use crate::dead::{DeadKind, DeadLetter, DeadLetterInput, DeadLetters, DeadPayload};
use crate::error::{AppendError, BufferError};
use crate::health::{self, BufferHealth};
use crate::keys;
use crate::options::{BufferOptions, WhenFull};
use crate::record::{Lane, Record, Stored};
use crate::stats::{
    BufferStats, CommitTimes, ConsumerLaneStats, ConsumerStats, DeadKindStats, DeadLetterStats,
    Durations, LaneStats, MovedAside,
};
use crate::watermark::{self, Loaded, Watermark};

/// Handle on the durable queue. Cheap to clone; every clone talks to the same database.
#[derive(Clone, Debug)]
pub struct Buffer {
    pub(crate) inner: Arc<Inner>,
    pub(crate) tx: mpsc::Sender<AppendRequest>,
}

/// Shared by every handle and the committer.
#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) opts: BufferOptions,
    pub(crate) db: sled::Db,
    /// sled's log file, opened a second time only to `fdatasync` it: sled 0.34 "flushes" with
    /// `sync_file_range`, which neither flushes the drive's write cache nor the file size
    /// (sled issue #1452), so a power cut could lose data sled reported as flushed.
    db_file: Option<File>,
    db_file_path: PathBuf,
    pub(crate) lanes: [sled::Tree; 2],
    pub(crate) meta: sled::Tree,
    pub(crate) requeue: sled::Tree,
    /// Dead letters of rejected input.
    pub(crate) dead: sled::Tree,
    /// Dead letters of batches the upstream refused.
    pub(crate) dead_refused: sled::Tree,
    /// A std mutex: it is held only for in-memory bookkeeping and sled calls that do not wait on
    /// the disk (`apply_batch` fills sled's in-memory log buffer), never across an `.await` or a
    /// flush.
    state: Mutex<State>,
    pub(crate) durable_tx: watch::Sender<u64>,
    /// Something other than appended blocks (acks, consumer meta, dead letters, requeues) was
    /// written since the last flush; the committer flushes it on its next idle tick.
    dirty: AtomicBool,
    /// Group commits since open (for stats).
    pub(crate) commits: AtomicU64,
    /// How long group commits took: writing (lock wait included) and flushing.
    pub(crate) commit_write: Durations,
    pub(crate) commit_flush: Durations,
    /// How long flushes between commits (acks, state) took.
    pub(crate) idle_flush: Durations,
    /// Whether the database still takes writes (see `health.rs`).
    health: watch::Sender<BufferHealth>,
    /// Failed writes and flushes of the database since open.
    write_errors: AtomicU64,
    /// `<dir>/seq.watermark` (see `watermark.rs`). Its own mutex rather than inside `State`:
    /// `note_durable` runs after the commit dropped the state lock, and must not make readers
    /// and ackers wait for it.
    watermark: Mutex<Watermark>,
}

#[derive(Debug)]
pub(crate) struct State {
    pub(crate) next_seq: u64,
    pub(crate) lanes: [LaneState; 2],
    /// consumer -> acked seq per lane.
    cursors: HashMap<String, [Option<u64>; 2]>,
    /// consumer -> what eviction took from it, per lane (only lanes it reads are ever counted).
    views: HashMap<String, [ConsumerView; 2]>,
    pub(crate) dead: DeadState,
    pub(crate) compressor: flate2::Compress,
    moved_aside: u64,
    /// Seqs the database had made durable and no longer holds at this open.
    missing_at_open: u64,
}

#[derive(Debug, Default)]
pub(crate) struct LaneState {
    /// Records in stored blocks, including acked records still in the partially acked front block.
    stored_records: u64,
    bytes: u64,
    blocks: u64,
    front: Option<(u64, BlockHeader)>,
    /// Records of the front block already acked by every consumer.
    acked_in_front: u64,
    /// The newest block, kept decoded so small groups merge into it.
    pub(crate) tail: Option<RawBlock>,
    pub(crate) appended: u64,
    dropped_quota: u64,
    expired: u64,
    undecodable: u64,
    requeued: u64,
}

/// One consumer's view of what eviction took from one lane.
#[derive(Debug, Default)]
pub(crate) struct ConsumerView {
    /// Highest seq `read` handed to the consumer; counts from its acked cursor.
    handed: u64,
    /// Records evicted (quota or expiry) after they were handed to the consumer and before it
    /// acked them: the consumer may still deliver them (then they are its delivered records) or
    /// shed them ([`Buffer::shed_evicted`], then they are counted under their reason). Bounded by
    /// what the consumer holds un-acked (a few batches for a forwarder).
    in_hand_evicted: BTreeMap<u64, Removal>,
    /// Records evicted by the quota before the consumer had them, or shed by it.
    dropped_quota: u64,
    /// The same, by `max_age_s`.
    expired: u64,
}

#[derive(Debug, Default)]
pub(crate) struct DeadState {
    /// Per [`DeadKind`] (by `DeadKind::index`).
    pub(crate) kinds: [DeadKindState; 2],
    next_id: u64,
}

#[derive(Debug, Default)]
pub(crate) struct DeadKindState {
    pub(crate) count: u64,
    pub(crate) bytes: u64,
    dropped: u64,
}

/// Why a block left a lane.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Removal {
    Acked,
    Quota,
    Expired,
}

impl Removal {
    /// Adds `n` records lost for this reason to its counter; records acked are not lost.
    fn count(self, n: u64, dropped_quota: &mut u64, expired: &mut u64) {
        match self {
            Removal::Acked => {}
            Removal::Quota => *dropped_quota += n,
            Removal::Expired => *expired += n,
        }
    }
}

impl Buffer {
    /// Open (or create) the buffer in `opts.dir` and recover its state.
    ///
    /// Recovery resumes the seq counter (max of the persisted counter and the last stored
    /// seq + 1), every consumer's cursor, and the stats (from block headers, not block bodies).
    /// A database sled cannot open because it is corrupt is renamed to
    /// `<dir>/buffer.sled.corrupt-<UTC timestamp>`, logged at error level, counted in
    /// `stats().moved_aside`, and a fresh one is started: nothing is ever deleted. Any other
    /// open failure (lock held by another process, permissions) is returned untouched.
    ///
    /// Seqs never restart below ones handed out before, even when the database is moved aside
    /// or comes back without records it had made durable (truncated, rolled back): the seq
    /// watermark beside it (`<dir>/seq.watermark`) keeps a fsynced bound above every seq ever
    /// handed out. Seqs a database lost are logged at error with their range and counted in
    /// `stats().missing_at_open`; the module docs of `watermark.rs` give the rules.
    ///
    /// The returned [`Committer`] must be run (`committer.run(shutdown).await`) for appends to
    /// complete.
    pub fn open(opts: BufferOptions) -> Result<(Buffer, Committer), BufferError> {
        Self::open_with_seq_reserve_step(opts, watermark::RESERVE_STEP)
    }

    /// [`Buffer::open`] with another reservation step of the seq watermark (default one
    /// million): tests use a small one so that appends cross the bound. Not for production.
    #[doc(hidden)]
    pub fn open_with_seq_reserve_step(
        opts: BufferOptions,
        seq_reserve_step: u64,
    ) -> Result<(Buffer, Committer), BufferError> {
        opts.validate()?;
        let created = create_dirs(&opts.dir)?;
        let path = opts.dir.join(keys::DB_DIR_NAME);
        let mut moved_aside = 0;
        let db = match open_sled(&path, &opts) {
            Ok(db) => db,
            Err(OpenFailure::Unopenable(reason)) => {
                let aside = move_aside(&path, opts.clock.now_ms())?;
                error!(
                    db = %path.display(),
                    moved_to = %aside.display(),
                    %reason,
                    "buffer database cannot be opened: moved aside, starting an empty buffer"
                );
                moved_aside = 1;
                match open_sled(&path, &opts) {
                    Ok(db) => db,
                    Err(OpenFailure::Other(source)) => {
                        return Err(BufferError::Open { path, source });
                    }
                    Err(OpenFailure::Unopenable(reason)) => {
                        return Err(BufferError::Open {
                            path,
                            source: sled::Error::Unsupported(reason),
                        });
                    }
                }
            }
            Err(OpenFailure::Other(source)) => return Err(BufferError::Open { path, source }),
        };
        // sled fsyncs its log but never a directory, nor its `conf` file: after a power cut the
        // whole database directory (and with it every acknowledged record) could vanish. Make
        // the files' names durable before anything can be acknowledged.
        sync_names(&path, &opts.dir, &created)?;
        let lanes = [
            db.open_tree(keys::lane_tree(Lane::Alarms))?,
            db.open_tree(keys::lane_tree(Lane::Readings))?,
        ];
        let meta = db.open_tree(keys::META_TREE)?;
        let requeue = db.open_tree(keys::REQUEUE_TREE)?;
        let dead = db.open_tree(keys::DEAD_TREE)?;
        let dead_refused = db.open_tree(keys::DEAD_REFUSED_TREE)?;
        let db_file_path = path.join("db");
        let db_file = File::open(&db_file_path).ok();
        // Read only now that sled holds its lock on the database: the watermark belongs to
        // whoever opened the database.
        let (watermark, loaded) = Watermark::open(&opts.dir, seq_reserve_step)?;
        let state = State {
            next_seq: 1,
            lanes: Default::default(),
            cursors: opts
                .consumers
                .iter()
                .map(|c| (c.clone(), [None, None]))
                .collect(),
            views: opts
                .consumers
                .iter()
                .map(|c| (c.clone(), Default::default()))
                .collect(),
            dead: DeadState::default(),
            compressor: block::new_compressor(),
            moved_aside,
            missing_at_open: 0,
        };
        let (durable_tx, _) = watch::channel(0);
        // A probe file left by a crash in the middle of a probe only takes space.
        let _ = std::fs::remove_file(opts.dir.join(health::PROBE_FILE_NAME));
        let inner = Arc::new(Inner {
            opts,
            db,
            db_file,
            db_file_path,
            lanes,
            meta,
            requeue,
            dead,
            dead_refused,
            state: Mutex::new(state),
            durable_tx,
            dirty: AtomicBool::new(false),
            commits: AtomicU64::new(0),
            commit_write: Durations::default(),
            commit_flush: Durations::default(),
            idle_flush: Durations::default(),
            health: watch::channel(BufferHealth::Writable).0,
            write_errors: AtomicU64::new(0),
            watermark: Mutex::new(watermark),
        });
        inner.recover()?;
        inner.settle_seqs(loaded, moved_aside > 0)?;
        let (tx, rx) = mpsc::channel(APPEND_QUEUE_CAPACITY);
        let committer = Committer::new(inner.clone(), rx);
        Ok((Buffer { inner, tx }, committer))
    }

    /// Append records (lanes may be mixed). Resolves once they are durable (fsynced), with
    /// their seqs in the order given. Concurrent calls share one flush (group commit).
    ///
    /// Cancel safety: dropping the future after it was queued does not withdraw the records;
    /// they become durable under seqs the caller never learns (a duplicate if re-appended).
    pub async fn append(&self, records: Vec<Record>) -> Result<Vec<u64>, AppendError> {
        self.append_shared(records.into()).await
    }

    /// [`Buffer::append`] of records the caller keeps a handle to, so that a retry (after
    /// [`AppendError::Full`]) does not copy them.
    pub async fn append_shared(&self, records: Arc<[Record]>) -> Result<Vec<u64>, AppendError> {
        if records.is_empty() {
            return Ok(Vec::new());
        }
        check_record_sizes(&records)?;
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(AppendRequest {
                records,
                reply,
                arrived: tokio::time::Instant::now(),
                in_line: false,
                waited: false,
                on_wait: None,
                state: Vec::new(),
            })
            .await
            .map_err(|_| AppendError::Closed)?;
        rx.await.map_err(|_| AppendError::Closed)?.map(|a| a.seqs)
    }

    /// Up to `max_records` records of `lane` with seq > max(`after_seq`, the consumer's acked
    /// cursor), in seq order, stopping before `max_bytes` of encoded records would be exceeded
    /// but always returning at least one record when one is available. Only durable records are
    /// returned. Reads block by block from sled; the backlog is never loaded.
    ///
    /// A block that no longer decodes is moved to the dead letters (reason
    /// `undecodable_block`, the raw bytes as payload), counted, and skipped.
    pub fn read(
        &self,
        consumer: &str,
        lane: Lane,
        after_seq: Option<u64>,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Vec<Stored>, BufferError> {
        let acked = self.acked_checked(consumer, lane)?;
        let durable = *self.inner.durable_tx.borrow();
        let start = after_seq
            .unwrap_or(0)
            .max(acked.unwrap_or(0))
            .saturating_add(1);
        let mut out = Vec::new();
        if start > durable || max_records == 0 {
            return Ok(out);
        }
        self.read_blocks(lane, start, durable, max_records, max_bytes, &mut out)?;
        self.hand_over(consumer, lane, &mut out);
        Ok(out)
    }

    /// Records of `lane` from seq `start` up to `durable`, decoded block by block.
    fn read_blocks(
        &self,
        lane: Lane,
        start: u64,
        durable: u64,
        max_records: usize,
        max_bytes: usize,
        out: &mut Vec<Stored>,
    ) -> Result<(), BufferError> {
        let tree = &self.inner.lanes[lane.index()];
        // The block holding `start`, if any, begins at or before it.
        let begin = match tree
            .range(keys::block_key(0)..=keys::block_key(start))
            .next_back()
        {
            Some(item) => keys::seq_of(&item?.0).unwrap_or(start),
            None => start,
        };
        let mut bytes = 0usize;
        'blocks: for item in tree.range(keys::block_key(begin)..=keys::block_key(u64::MAX)) {
            let (k, v) = item?;
            let Some(first) = keys::seq_of(&k) else {
                continue;
            };
            if first > durable {
                break;
            }
            let entries = match block::decode(first, &v) {
                Ok(e) => e,
                Err(e) => {
                    self.inner
                        .quarantine_block(lane, first, v.to_vec(), &e.to_string())?;
                    continue;
                }
            };
            for (seq, record, len) in entries {
                if seq < start {
                    continue;
                }
                if seq > durable || out.len() >= max_records {
                    break 'blocks;
                }
                if !out.is_empty() && bytes + len > max_bytes {
                    break 'blocks;
                }
                bytes += len;
                out.push(Stored { seq, record });
            }
        }
        Ok(())
    }

    /// Makes what `read` found the consumer's, atomically with respect to eviction: records
    /// evicted while they were being decoded are withheld (eviction, which saw them un-handed,
    /// counted them as dropped for this consumer), and the consumer's handed mark moves over the
    /// rest (so from now on eviction leaves them to the consumer to deliver or shed). Nothing
    /// but eviction and expiry removes a record above the consumer's ack cursor, and both take
    /// the lane's oldest blocks first, so "evicted" is exactly "below the lane's oldest stored
    /// seq".
    fn hand_over(&self, consumer: &str, lane: Lane, out: &mut Vec<Stored>) {
        if out.is_empty() {
            return;
        }
        let mut st = self.inner.lock();
        let oldest = st.lanes[lane.index()].front.map(|(first, _)| first);
        out.retain(|s| oldest.is_some_and(|o| s.seq >= o));
        if let Some(last) = out.last()
            && let Some(view) = st.views.get_mut(consumer)
        {
            let view = &mut view[lane.index()];
            view.handed = view.handed.max(last.seq);
        }
    }

    /// Of `seqs` (records `consumer` was handed by [`Buffer::read`] and has not acked), those
    /// the buffer evicted (quota or expiry) since. The consumer drops them from what it still
    /// has to send, and they are counted, once, as dropped or expired: a record the consumer was
    /// handed is thus counted either delivered (by the consumer, when it sends it) or dropped
    /// (here, when the consumer sheds it), never both. Records the consumer had not been handed
    /// when evicted were counted at eviction.
    ///
    /// Each consumer's losses are counted in its own [`ConsumerStats`]; the lane counters
    /// ([`LaneStats::dropped_quota`], [`LaneStats::expired`]) take the accounting consumer's
    /// (the first consumer that reads every lane; the `[upstream]` forwarder in the gateway).
    pub fn shed_evicted(
        &self,
        consumer: &str,
        lane: Lane,
        seqs: &[u64],
    ) -> Result<Vec<u64>, BufferError> {
        let accounting = self.inner.accounting_consumer() == consumer;
        let mut st = self.inner.lock();
        let State { views, lanes, .. } = &mut *st;
        let view = &mut views
            .get_mut(consumer)
            .ok_or_else(|| BufferError::UnknownConsumer(consumer.to_string()))?[lane.index()];
        let ls = &mut lanes[lane.index()];
        let mut shed = Vec::new();
        for &seq in seqs {
            let Some(why) = view.in_hand_evicted.remove(&seq) else {
                continue;
            };
            why.count(1, &mut view.dropped_quota, &mut view.expired);
            if accounting {
                why.count(1, &mut ls.dropped_quota, &mut ls.expired);
            }
            shed.push(seq);
        }
        Ok(shed)
    }

    /// Record that `consumer` has processed `lane` up to and including `up_to_seq` (clamped to
    /// the last durable seq; a lower value than the current cursor is ignored). Blocks every
    /// consumer has fully acked are deleted.
    ///
    /// Durability: the cursor is written at once but flushed with the next group commit or the
    /// committer's idle flush (≤ ~100 ms later), and on shutdown. An ack lost in a crash inside
    /// that window only means those records are read — and sent — again: a duplicate, never a
    /// loss.
    pub fn ack(&self, consumer: &str, lane: Lane, up_to_seq: u64) -> Result<(), BufferError> {
        let durable = *self.inner.durable_tx.borrow();
        let up = up_to_seq.min(durable);
        let inner = &self.inner;
        let mut st = inner.lock();
        let cursor = st
            .cursors
            .get_mut(consumer)
            .ok_or_else(|| BufferError::UnknownConsumer(consumer.to_string()))?;
        let slot = &mut cursor[lane.index()];
        if slot.is_some_and(|c| c >= up) {
            return Ok(());
        }
        *slot = Some(up);
        if let Some(view) = st.views.get_mut(consumer) {
            // Evicted records it held up to here were delivered (or parked) by it: theirs.
            let view = &mut view[lane.index()];
            view.in_hand_evicted = view.in_hand_evicted.split_off(&up.saturating_add(1));
            view.handed = view.handed.max(up);
        }
        // While the database refuses writes the cursor moves in memory only (see `health.rs`).
        if inner.is_failed() {
            return Ok(());
        }
        let written = inner
            .meta
            .insert(keys::ack_key(consumer, lane), &up.to_be_bytes())
            .map_err(BufferError::from)
            .and_then(|_| {
                inner.mark_dirty();
                inner.gc_acked(&mut st, lane)
            });
        inner.tolerate_write_error(written)
    }

    /// The consumer's acked cursor on `lane`; `None` if it never acked (or is unknown).
    pub fn acked(&self, consumer: &str, lane: Lane) -> Option<u64> {
        self.inner
            .lock()
            .cursors
            .get(consumer)
            .and_then(|c| c[lane.index()])
    }

    fn acked_checked(&self, consumer: &str, lane: Lane) -> Result<Option<u64>, BufferError> {
        self.inner
            .lock()
            .cursors
            .get(consumer)
            .map(|c| c[lane.index()])
            .ok_or_else(|| BufferError::UnknownConsumer(consumer.to_string()))
    }

    /// The last durable seq (0 before anything was stored); changes after every commit.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.durable_tx.subscribe()
    }

    /// Counters and gauges, from memory: O(lanes), no disk access.
    pub fn stats(&self) -> BufferStats {
        let now = self.inner.opts.clock.now_ms();
        let st = self.inner.lock();
        let lane = |l: Lane| {
            let s = &st.lanes[l.index()];
            LaneStats {
                records: s.stored_records - s.acked_in_front,
                bytes: s.bytes,
                blocks: s.blocks,
                oldest_ts_ms: s.front.map(|(_, h)| h.min_ts_ms),
                oldest_stored_ms: s.front.map(|(_, h)| h.first_commit_ms),
                oldest_age_ms: s.front.map(|(_, h)| (now - h.first_commit_ms).max(0)),
                appended_total: s.appended,
                dropped_quota: s.dropped_quota,
                expired: s.expired,
                undecodable: s.undecodable,
                requeued: s.requeued,
                evicted_in_flight: st
                    .views
                    .get(self.inner.accounting_consumer())
                    .map_or(0, |v| v[l.index()].in_hand_evicted.len() as u64),
            }
        };
        BufferStats {
            alarms: lane(Lane::Alarms),
            readings: lane(Lane::Readings),
            dead_letters: {
                let kind = |k: DeadKind| {
                    let s = &st.dead.kinds[k.index()];
                    DeadKindStats {
                        count: s.count,
                        bytes: s.bytes,
                        dropped: s.dropped,
                    }
                };
                let (input, refused) = (kind(DeadKind::Input), kind(DeadKind::Refused));
                DeadLetterStats {
                    count: input.count + refused.count,
                    bytes: input.bytes + refused.bytes,
                    dropped: input.dropped + refused.dropped,
                    input,
                    refused,
                }
            },
            moved_aside: st.moved_aside,
            missing_at_open: st.missing_at_open,
            last_durable_seq: *self.inner.durable_tx.borrow(),
            commits: self.inner.commits.load(Ordering::Relaxed),
            commit_times: CommitTimes {
                write: self.inner.commit_write.snapshot(),
                flush: self.inner.commit_flush.snapshot(),
                idle_flush: self.inner.idle_flush.snapshot(),
            },
            write_errors: self.inner.write_errors.load(Ordering::Relaxed),
        }
    }

    /// What eviction took from `consumer` (see [`ConsumerStats`]); `None` for an unknown
    /// consumer. From memory.
    pub fn consumer_stats(&self, consumer: &str) -> Option<ConsumerStats> {
        let st = self.inner.lock();
        let view = st.views.get(consumer)?;
        let lane = |l: Lane| {
            let v = &view[l.index()];
            ConsumerLaneStats {
                dropped_quota: v.dropped_quota,
                expired: v.expired,
                evicted_in_flight: v.in_hand_evicted.len() as u64,
            }
        };
        Some(ConsumerStats {
            alarms: lane(Lane::Alarms),
            readings: lane(Lane::Readings),
        })
    }

    /// The databases moved aside in this buffer's directory that are still on disk, by this
    /// open or earlier ones: [`list_moved_aside`] on [`BufferOptions::dir`]. Reads the
    /// directory (a few `stat`s), unlike [`Buffer::stats`].
    pub fn moved_aside_on_disk(&self) -> Result<Vec<MovedAside>, BufferError> {
        list_moved_aside(&self.inner.opts.dir)
    }

    /// Whether the database still takes writes; see [`BufferHealth`]. From memory.
    pub fn health(&self) -> BufferHealth {
        self.inner.health.borrow().clone()
    }

    /// Changes of [`Buffer::health`]: the owner waits on this for
    /// [`BufferHealth::ReopenNeeded`].
    pub fn watch_health(&self) -> watch::Receiver<BufferHealth> {
        self.inner.health.subscribe()
    }

    /// The smallest seq still stored in `lane` (the first seq of its oldest block, which may
    /// include records every consumer has acked but that are not deleted yet, because they
    /// share a block with un-acked ones); `None` when the lane holds no block. From memory.
    pub fn oldest_seq(&self, lane: Lane) -> Option<u64> {
        self.inner.lock().lanes[lane.index()]
            .front
            .map(|(first, _)| first)
    }

    /// The dead-letter store.
    pub fn dead_letters(&self) -> DeadLetters {
        DeadLetters {
            inner: self.inner.clone(),
        }
    }

    /// Store records (dead-lettered by a consumer) for `consumer` to replay, keeping their
    /// ORIGINAL seqs, apart from the lane's queue: only that consumer reads them back, so a
    /// batch one sink refused is replayed to that sink, not to the others that had it.
    /// Re-requeuing a seq overwrites it.
    pub fn requeue(
        &self,
        consumer: &str,
        lane: Lane,
        records: Vec<Stored>,
    ) -> Result<(), BufferError> {
        self.acked_checked(consumer, lane)?;
        for s in &records {
            if s.record.lane() != lane {
                return Err(BufferError::WrongLane {
                    seq: s.seq,
                    expected: lane,
                    actual: s.record.lane(),
                });
            }
        }
        let inner = &self.inner;
        let mut st = inner.lock();
        for s in &records {
            let value = postcard::to_stdvec(&s.record)?;
            if inner
                .requeue
                .insert(keys::requeue_key(consumer, lane, s.seq), value)?
                .is_none()
            {
                st.lanes[lane.index()].requeued += 1;
            }
        }
        inner.mark_dirty();
        Ok(())
    }

    /// The first `max_records` records of `lane` requeued for `consumer`, in seq order. A
    /// record that does not decode is moved to the dead letters.
    pub fn read_requeued(
        &self,
        consumer: &str,
        lane: Lane,
        max_records: usize,
    ) -> Result<Vec<Stored>, BufferError> {
        self.acked_checked(consumer, lane)?;
        let mut out = Vec::new();
        for item in self
            .inner
            .requeue
            .scan_prefix(keys::requeue_prefix(consumer, lane))
        {
            if out.len() >= max_records {
                break;
            }
            let (k, v) = item?;
            let Some(seq) = keys::seq_of(&k) else {
                continue;
            };
            match postcard::from_bytes::<Record>(&v) {
                Ok(record) => out.push(Stored { seq, record }),
                Err(e) => {
                    let inner = &self.inner;
                    let mut st = inner.lock();
                    if inner.requeue.remove(&k)?.is_some() {
                        st.lanes[lane.index()].requeued -= 1;
                    }
                    inner.put_dead_quietly(
                        &mut st,
                        "undecodable_requeued_record",
                        lane,
                        e.to_string(),
                        v.to_vec(),
                    );
                }
            }
        }
        Ok(out)
    }

    /// Remove the records of `lane` requeued for `consumer` with seq ≤ `up_to_seq`.
    pub fn ack_requeued(
        &self,
        consumer: &str,
        lane: Lane,
        up_to_seq: u64,
    ) -> Result<(), BufferError> {
        self.acked_checked(consumer, lane)?;
        let inner = &self.inner;
        // Like an ack: with the database refusing writes, the records are sent again after the
        // reopen (a duplicate, never a loss).
        if inner.is_failed() {
            return Ok(());
        }
        let mut st = inner.lock();
        let range =
            keys::requeue_key(consumer, lane, 0)..=keys::requeue_key(consumer, lane, up_to_seq);
        let removed = (|| -> Result<(), BufferError> {
            for item in inner.requeue.range(range) {
                let (k, _) = item?;
                if inner.requeue.remove(&k)?.is_some() {
                    st.lanes[lane.index()].requeued -= 1;
                }
            }
            inner.mark_dirty();
            Ok(())
        })();
        inner.tolerate_write_error(removed)
    }

    /// Store small per-consumer state (e.g. the forwarder's in-flight batch range). Flushed
    /// with the next commit or idle flush, like acks.
    pub fn set_consumer_meta(
        &self,
        consumer: &str,
        key: &str,
        value: &[u8],
    ) -> Result<(), BufferError> {
        self.acked_checked(consumer, Lane::Alarms)?;
        // Consumer meta is flushed lazily, so a crash may lose it anyway; while the database
        // refuses writes it is not kept at all (the consumer recovers as after such a crash).
        if self.inner.is_failed() {
            return Ok(());
        }
        let written = self
            .inner
            .meta
            .insert(keys::consumer_meta_key(consumer, key), value)
            .map(|_| self.inner.mark_dirty())
            .map_err(BufferError::from);
        self.inner.tolerate_write_error(written)
    }

    /// Store a small piece of state of a component that is not a consumer (the alarm engine).
    /// Written before an `append`, it becomes durable with that append's group commit at the
    /// latest, so the state and the records it explains survive a crash together.
    pub fn set_state(&self, key: &str, value: &[u8]) -> Result<(), BufferError> {
        self.inner.meta.insert(keys::state_key(key), value)?;
        self.inner.mark_dirty();
        Ok(())
    }

    /// Every state entry whose key starts with `prefix`, in key order (stored by
    /// [`Buffer::set_state`] or [`Buffer::queue_in_line_with_state`]).
    pub fn states(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, BufferError> {
        self.inner
            .meta
            .scan_prefix(keys::state_key(prefix))
            .map(|entry| {
                let (k, v) = entry?;
                let key = k.get(keys::STATE_PREFIX.len()..).unwrap_or_default();
                Ok((String::from_utf8_lossy(key).into_owned(), v.to_vec()))
            })
            .collect()
    }

    /// Read back what [`Buffer::set_state`] stored.
    pub fn state(&self, key: &str) -> Result<Option<Vec<u8>>, BufferError> {
        Ok(self
            .inner
            .meta
            .get(keys::state_key(key))?
            .map(|v| v.to_vec()))
    }

    /// Read back what [`Buffer::set_consumer_meta`] stored.
    pub fn consumer_meta(&self, consumer: &str, key: &str) -> Result<Option<Vec<u8>>, BufferError> {
        Ok(self
            .inner
            .meta
            .get(keys::consumer_meta_key(consumer, key))?
            .map(|v| v.to_vec()))
    }

    /// Make everything written so far (acks, meta, dead letters, requeues) durable now.
    pub async fn flush(&self) -> Result<(), BufferError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let flushed = inner.durable_flush();
            if let Err(e) = &flushed {
                inner.note_write_error(e);
            }
            flushed
        })
        .await
        .map_err(|_| BufferError::Closed)?
    }

    /// Apply `max_age_s` expiry now (the committer also does this on every commit and about
    /// ten times a second when idle). Returns how many records expired.
    pub fn enforce_retention(&self) -> Result<u64, BufferError> {
        let now = self.inner.opts.clock.now_ms();
        let mut st = self.inner.lock();
        self.inner.expire(&mut st, now)
    }
}

/// Refuses a call holding a record larger than [`block::MAX_RECORD_BYTES`]: the block writer
/// relies on that bound to build only blocks the reader opens.
pub(crate) fn check_record_sizes(records: &[Record]) -> Result<(), AppendError> {
    match records
        .iter()
        .map(Record::encoded_len_bound)
        .enumerate()
        .find(|(_, n)| *n > block::MAX_RECORD_BYTES)
    {
        Some((index, bytes)) => Err(AppendError::RecordTooLarge {
            index,
            bytes,
            max: block::MAX_RECORD_BYTES,
        }),
        None => Ok(()),
    }
}

enum OpenFailure {
    /// sled says the data is corrupt (or panicked reading it): move it aside.
    Unopenable(String),
    /// Anything else: leave the files alone and report.
    Other(sled::Error),
}

fn open_sled(path: &Path, opts: &BufferOptions) -> Result<sled::Db, OpenFailure> {
    let config = sled::Config::new()
        .path(path)
        .cache_capacity(opts.cache_capacity_bytes)
        // The committer flushes explicitly: after every group and when acks are dirty.
        .flush_every_ms(None)
        .mode(sled::Mode::LowSpace);
    // sled 0.34 panics on some corrupt files (issues #1155, #1387) instead of returning
    // `Corruption`. In unwinding builds that panic is caught here and treated as corruption;
    // with `panic = "abort"` (the release profile) it aborts the process instead — see
    // "Non-guarantees" in the crate docs.
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| config.open()));
    match result {
        Ok(Ok(db)) => Ok(db),
        Ok(Err(e)) => match &e {
            sled::Error::Corruption { .. }
            | sled::Error::ReportableBug(_)
            | sled::Error::Unsupported(_) => Err(OpenFailure::Unopenable(e.to_string())),
            sled::Error::Io(io)
                if matches!(
                    io.kind(),
                    std::io::ErrorKind::InvalidData | std::io::ErrorKind::UnexpectedEof
                ) =>
            {
                Err(OpenFailure::Unopenable(e.to_string()))
            }
            _ => Err(OpenFailure::Other(e)),
        },
        Err(panic) => {
            let msg = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "sled panicked while opening".to_string());
            Err(OpenFailure::Unopenable(format!("sled panicked: {msg}")))
        }
    }
}

/// What [`move_aside`] puts between the database's name and the time it was moved aside.
const ASIDE_MARK: &str = ".corrupt-";

/// Rename `path` to `<path>.corrupt-<UTC timestamp>` (plus `-N` if taken). Never deletes.
fn move_aside(path: &Path, now_ms: i64) -> Result<PathBuf, BufferError> {
    let stamp = utc_stamp(now_ms);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| keys::DB_DIR_NAME.to_string());
    let mut target = path.with_file_name(format!("{name}{ASIDE_MARK}{stamp}"));
    let mut n = 1;
    while target.exists() {
        target = path.with_file_name(format!("{name}{ASIDE_MARK}{stamp}-{n}"));
        n += 1;
    }
    std::fs::rename(path, &target).map_err(|source| BufferError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    // The rename is durable only with its directory: else, after a power cut, the damaged
    // database would be back and the fresh one gone.
    if let Some(parent) = path.parent() {
        fsync_path(parent)?;
    }
    Ok(target)
}

/// The databases [`Buffer::open`] moved aside in the buffer directory `dir`
/// (`<dir>/buffer.sled.corrupt-<UTC timestamp>[-N]`) that are still there, oldest first.
///
/// The buffer never opens, reads or deletes them again: they only take space until an operator
/// removes them. Works on a directory whose buffer is open or not; a directory that does not
/// exist holds none. An entry removed while it is being measured is left out.
pub fn list_moved_aside(dir: &Path) -> Result<Vec<MovedAside>, BufferError> {
    let io_error = |path: &Path| {
        let path = path.to_path_buf();
        move |source| BufferError::Io { path, source }
    };
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_error(dir)(e)),
    };
    let prefix = format!("{}{ASIDE_MARK}", keys::DB_DIR_NAME);
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io_error(dir))?;
        let name = entry.file_name();
        let Some(stamp) = name.to_str().and_then(|n| n.strip_prefix(&prefix)) else {
            continue;
        };
        let path = entry.path();
        let Some(bytes) = bytes_under(&path).map_err(io_error(&path))? else {
            continue;
        };
        found.push(MovedAside {
            moved_at_ms: parse_aside_stamp(stamp),
            path,
            bytes,
        });
    }
    found.sort_by(|a, b| (a.moved_at_ms, &a.path).cmp(&(b.moved_at_ms, &b.path)));
    Ok(found)
}

/// Total bytes of the regular files at or under `path` (symlinks are not followed), or `None`
/// if `path` itself is gone. Files that vanish meanwhile count as 0.
fn bytes_under(path: &Path) -> std::io::Result<Option<u64>> {
    let gone = |e: &std::io::Error| e.kind() == std::io::ErrorKind::NotFound;
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if gone(&e) => return Ok(None),
        Err(e) => return Err(e),
    };
    if !meta.is_dir() {
        return Ok(Some(if meta.is_file() { meta.len() } else { 0 }));
    }
    // An explicit stack rather than recursion: a damaged tree cannot overflow the stack.
    let mut total = 0;
    let mut dirs = vec![path.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if gone(&e) => continue,
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            match entry.metadata() {
                Ok(meta) if meta.is_dir() => dirs.push(entry.path()),
                Ok(meta) if meta.is_file() => total += meta.len(),
                Ok(_) => {}
                Err(e) if gone(&e) => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(Some(total))
}

/// When a database was moved aside, from what [`move_aside`] wrote after the mark:
/// `<UTC timestamp>` or `<UTC timestamp>-N`. `None` for anything else.
fn parse_aside_stamp(rest: &str) -> Option<i64> {
    let (stamp, suffix) = (rest.get(..16)?, rest.get(16..)?);
    let numbered = |s: &str| !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit());
    if !(suffix.is_empty() || suffix.strip_prefix('-').is_some_and(numbered)) {
        return None;
    }
    parse_utc_stamp(stamp)
}

/// The inverse of [`utc_stamp`] (days-from-civil, H. Hinnant): ms since the epoch of a
/// `YYYYMMDDTHHMMSSZ` stamp, `None` unless `utc_stamp` would write exactly this text.
fn parse_utc_stamp(stamp: &str) -> Option<i64> {
    let b = stamp.as_bytes();
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
        return None;
    }
    let num = |from: usize, to: usize| -> Option<i64> {
        let digits = stamp.get(from..to)?;
        if !digits.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        digits.parse().ok()
    };
    let (y, m, d) = (num(0, 4)?, num(4, 6)?, num(6, 8)?);
    let (hh, mm, ss) = (num(9, 11)?, num(11, 13)?, num(13, 15)?);
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let ms = (days * 86_400 + hh * 3600 + mm * 60 + ss) * 1000;
    // Out-of-range fields (month 13, 25 o'clock, 31 February) would land on another date.
    (utc_stamp(ms) == stamp).then_some(ms)
}

/// `create_dir_all`, returning the directories it created (outermost first).
fn create_dirs(dir: &Path) -> Result<Vec<PathBuf>, BufferError> {
    let mut missing = Vec::new();
    let mut d = Some(dir);
    while let Some(p) = d {
        if p.as_os_str().is_empty() || p.exists() {
            break;
        }
        missing.push(p.to_path_buf());
        d = p.parent();
    }
    std::fs::create_dir_all(dir).map_err(|source| BufferError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    missing.reverse();
    Ok(missing)
}

/// fsyncs what makes the database's names durable: sled's `conf` and `blobs/`, the database
/// directory, the buffer directory, and the parents of every directory `open` created.
fn sync_names(db_dir: &Path, dir: &Path, created: &[PathBuf]) -> Result<(), BufferError> {
    let conf = db_dir.join("conf");
    if conf.exists() {
        fsync_path(&conf)?;
    }
    let blobs = db_dir.join("blobs");
    if blobs.exists() {
        fsync_path(&blobs)?;
    }
    fsync_path(db_dir)?;
    fsync_path(dir)?;
    for d in created {
        if let Some(parent) = d.parent().filter(|p| !p.as_os_str().is_empty()) {
            fsync_path(parent)?;
        }
    }
    Ok(())
}

/// fsync of a file or directory by path.
pub(crate) fn fsync_path(path: &Path) -> Result<(), BufferError> {
    File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(|source| BufferError::Io {
            path: path.to_path_buf(),
            source,
        })
}

/// `YYYYMMDDTHHMMSSZ` for ms since the epoch (civil-from-days, H. Hinnant).
pub(crate) fn utc_stamp(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
        sod / 3600,
        (sod / 60) % 60,
        sod % 60
    )
}

impl Inner {
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves counters possibly off by one group; the data
        // on disk is still consistent, so carry on rather than poison every later call.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One state entry, as the group commit writes it; an empty value removes the key.
    pub(crate) fn write_state(&self, key: &str, value: &[u8]) -> Result<(), BufferError> {
        let key = keys::state_key(key);
        if value.is_empty() {
            self.meta.remove(key)?;
        } else {
            self.meta.insert(key, value)?;
        }
        Ok(())
    }

    pub(crate) fn mark_dirty(&self) {
        self.dirty.store(true, Ordering::Release);
    }

    pub(crate) fn take_dirty(&self) -> bool {
        self.dirty.swap(false, Ordering::AcqRel)
    }

    /// A write or flush of the database failed: count it, and on the first one stop taking
    /// appends (sled refuses every later write anyway; see `health.rs`).
    pub(crate) fn note_write_error(&self, e: &dyn std::fmt::Display) {
        self.write_errors.fetch_add(1, Ordering::Relaxed);
        let error = e.to_string();
        let now = self.opts.clock.now_ms();
        let first = self.health.send_if_modified(|h| {
            if h.is_writable() {
                *h = BufferHealth::WriteFailed {
                    error: error.clone(),
                    since_ms: now,
                };
                true
            } else {
                false
            }
        });
        if first {
            error!(
                %error,
                dir = %self.opts.dir.display(),
                "buffer: the database failed a write; appends are refused (sources stay \
                 unacknowledged) until it is reopened; probing the disk every {}s",
                health::PROBE_INTERVAL.as_secs()
            );
        }
    }

    pub(crate) fn health_ref(&self) -> watch::Ref<'_, BufferHealth> {
        self.health.borrow()
    }

    /// Whether a write has failed since open (appends are refused).
    pub(crate) fn is_failed(&self) -> bool {
        !self.health.borrow().is_writable()
    }

    /// The error that stopped writes, if any.
    pub(crate) fn failure(&self) -> Option<String> {
        self.health.borrow().error().map(str::to_owned)
    }

    /// The probe wrote to the disk again: the database must be reopened.
    pub(crate) fn note_probe_passed(&self) -> bool {
        self.health.send_if_modified(|h| match h {
            BufferHealth::WriteFailed { error, since_ms } => {
                *h = BufferHealth::ReopenNeeded {
                    error: std::mem::take(error),
                    since_ms: *since_ms,
                };
                true
            }
            _ => false,
        })
    }

    /// For writes that a crash may lose anyway (acks, consumer meta): an I/O failure of the
    /// database is noted (the buffer stops taking appends) and otherwise ignored; other errors
    /// are returned.
    fn tolerate_write_error(&self, r: Result<(), BufferError>) -> Result<(), BufferError> {
        match r {
            Err(e @ (BufferError::Storage(sled::Error::Io(_)) | BufferError::Io { .. })) => {
                self.note_write_error(&e);
                Ok(())
            }
            other => other,
        }
    }

    /// sled flush (one log for all trees) followed by an `fdatasync` of the log file.
    pub(crate) fn durable_flush(&self) -> Result<(), BufferError> {
        self.dirty.store(false, Ordering::Release);
        self.db.flush()?;
        if let Some(f) = &self.db_file {
            f.sync_data().map_err(|source| BufferError::Io {
                path: self.db_file_path.clone(),
                source,
            })?;
        }
        Ok(())
    }

    /// The lowest ack over the consumers that read `lane` (a consumer of one lane does not
    /// hold back the other).
    fn min_cursor(&self, st: &State, lane: Lane) -> u64 {
        st.cursors
            .iter()
            .filter(|(name, _)| self.opts.reads(name, lane))
            .map(|(_, c)| c[lane.index()].unwrap_or(0))
            .min()
            .unwrap_or(0)
    }

    /// Rebuild the in-memory state from disk.
    fn recover(&self) -> Result<(), BufferError> {
        let mut st = self.lock();
        let mut next_seq = 1u64;
        if let Some(v) = self.meta.get(keys::NEXT_SEQ_KEY)? {
            match keys::seq_of(&v) {
                Some(s) => next_seq = next_seq.max(s),
                None => warn!("buffer: persisted next_seq is unreadable; using stored keys"),
            }
        }
        for item in self.meta.scan_prefix(keys::ACK_PREFIX) {
            let (k, v) = item?;
            match (keys::parse_ack_key(&k), keys::seq_of(&v)) {
                (Some((lane, consumer)), Some(seq)) => {
                    if let Some(c) = st.cursors.get_mut(&consumer) {
                        c[lane.index()] = Some(seq);
                    }
                }
                _ => warn!("buffer: ignoring an unreadable ack cursor"),
            }
        }
        let now = self.opts.clock.now_ms();
        for lane in Lane::ALL {
            let tree = &self.lanes[lane.index()];
            let mut broken = Vec::new();
            for item in tree.scan_prefix([keys::HEADER_PREFIX]) {
                let (k, v) = item?;
                let Some(first) = keys::seq_of(&k) else {
                    continue;
                };
                match BlockHeader::decode(&v) {
                    Some(h) => {
                        let ls = &mut st.lanes[lane.index()];
                        ls.stored_records += u64::from(h.count);
                        ls.bytes += u64::from(h.stored_bytes);
                        ls.blocks += 1;
                        next_seq = next_seq.max(h.last_seq.saturating_add(1));
                    }
                    None => broken.push(first),
                }
            }
            // A header that does not decode: rebuild it from its block if the block decodes,
            // otherwise dead-letter the block.
            for first in broken {
                let Some(v) = tree.get(keys::block_key(first))? else {
                    tree.remove(keys::header_key(first))?;
                    continue;
                };
                match block::decode(first, &v) {
                    Ok(entries) if !entries.is_empty() => {
                        let h = BlockHeader {
                            last_seq: entries.last().map_or(first, |e| e.0),
                            count: u32::try_from(entries.len()).unwrap_or(u32::MAX),
                            stored_bytes: u32::try_from(v.len()).unwrap_or(u32::MAX),
                            first_commit_ms: now,
                            last_commit_ms: now,
                            min_ts_ms: entries.iter().map(|e| e.1.ts_ms()).min().unwrap_or(now),
                        };
                        tree.insert(keys::header_key(first), h.encode())?;
                        warn!(%lane, first, "buffer: rebuilt an unreadable block header");
                        let ls = &mut st.lanes[lane.index()];
                        ls.stored_records += u64::from(h.count);
                        ls.bytes += u64::from(h.stored_bytes);
                        ls.blocks += 1;
                        next_seq = next_seq.max(h.last_seq.saturating_add(1));
                    }
                    _ => {
                        let mut batch = sled::Batch::default();
                        batch.remove(&keys::header_key(first));
                        batch.remove(&keys::block_key(first));
                        tree.apply_batch(batch)?;
                        self.put_dead_quietly(
                            &mut st,
                            "undecodable_block",
                            lane,
                            "block and header both unreadable at open".into(),
                            v.to_vec(),
                        );
                    }
                }
            }
            self.refresh_front(&mut st, lane)?;
            self.gc_acked(&mut st, lane)?;
        }
        self.migrate_shared_requeue()?;
        for item in self.requeue.iter() {
            let (k, _) = item?;
            if let Some(lane) = Lane::ALL.into_iter().find(|l| k.first() == Some(&l.tag())) {
                st.lanes[lane.index()].requeued += 1;
            }
        }
        let mut dead_next = self
            .meta
            .get(keys::DEAD_NEXT_ID_KEY)?
            .and_then(|v| keys::seq_of(&v))
            .unwrap_or(1);
        if self.meta.get(keys::DEAD_SPLIT_KEY)?.is_none() {
            self.split_dead_letters()?;
        }
        for kind in DeadKind::ALL {
            for item in self.dead_tree(kind).iter() {
                let (k, v) = item?;
                let ks = &mut st.dead.kinds[kind.index()];
                ks.count += 1;
                ks.bytes += v.len() as u64;
                if let Some(id) = keys::seq_of(&k) {
                    dead_next = dead_next.max(id + 1);
                }
            }
        }
        st.dead.next_id = dead_next.max(st.dead.next_id).max(1);
        st.next_seq = next_seq;
        self.durable_tx.send_replace(next_seq - 1);
        info!(
            next_seq,
            readings = st.lanes[Lane::Readings.index()].stored_records,
            alarms = st.lanes[Lane::Alarms.index()].stored_records,
            "buffer opened"
        );
        Ok(())
    }

    /// Load the oldest block's header, and count how much of it every consumer has acked.
    fn refresh_front(&self, st: &mut State, lane: Lane) -> Result<(), BufferError> {
        let tree = &self.lanes[lane.index()];
        let mut front = None;
        for item in tree.scan_prefix([keys::HEADER_PREFIX]) {
            let (k, v) = item?;
            if let (Some(first), Some(h)) = (keys::seq_of(&k), BlockHeader::decode(&v)) {
                front = Some((first, h));
                break;
            }
        }
        let min = self.min_cursor(st, lane);
        let mut acked_in_front = 0;
        if let Some((first, h)) = front
            && first <= min
            && h.last_seq > min
        {
            acked_in_front = match tree.get(keys::block_key(first))? {
                Some(v) => block::decode(first, &v)
                    .map(|e| e.iter().filter(|x| x.0 <= min).count() as u64)
                    .unwrap_or(0),
                None => 0,
            };
        }
        let ls = &mut st.lanes[lane.index()];
        ls.front = front;
        ls.acked_in_front = acked_in_front;
        Ok(())
    }

    /// Moves requeued records of older versions, which every consumer shared, to the
    /// accounting consumer (the only one there was), in one batch: a crash leaves either
    /// layout whole.
    fn migrate_shared_requeue(&self) -> Result<(), BufferError> {
        let mut batch = sled::Batch::default();
        let mut moved = 0u64;
        for item in self.requeue.iter() {
            let (k, v) = item?;
            if k.len() != keys::LEGACY_REQUEUE_KEY_LEN {
                continue;
            }
            let (Some(lane), Some(seq)) = (
                Lane::ALL.into_iter().find(|l| k.first() == Some(&l.tag())),
                keys::seq_of(&k),
            ) else {
                continue;
            };
            batch.insert(keys::requeue_key(self.accounting_consumer(), lane, seq), v);
            batch.remove(k);
            moved += 1;
        }
        if moved > 0 {
            self.requeue.apply_batch(batch)?;
            self.mark_dirty();
            info!(
                records = moved,
                consumer = self.accounting_consumer(),
                "buffer: requeued records of an older version now belong to the accounting consumer"
            );
        }
        Ok(())
    }

    /// The consumer whose view the lane counters (`dropped_quota`, `expired`) take: the first
    /// of [`BufferOptions::consumers`] that reads every lane (validation guarantees one). Every
    /// consumer also has its own counts ([`Buffer::consumer_stats`]).
    pub(crate) fn accounting_consumer(&self) -> &str {
        self.opts
            .consumers
            .iter()
            .find(|c| Lane::ALL.iter().all(|l| self.opts.reads(c, *l)))
            .map_or("", String::as_str)
    }

    /// How each consumer that reads `lane` counts the records of the front block `(first, h)`
    /// when eviction removes it: (consumer, records it loses now because it was never handed
    /// them, seqs it was handed and has not acked). Records a consumer acked count nowhere for
    /// it.
    fn split_evicted(
        &self,
        st: &State,
        lane: Lane,
        first: u64,
        h: &BlockHeader,
    ) -> Result<Vec<(String, u64, Vec<u64>)>, BufferError> {
        let unacked_by_all = u64::from(h.count) - st.lanes[lane.index()].acked_in_front;
        let readers: Vec<(&String, u64, u64)> = st
            .cursors
            .iter()
            .filter(|(name, _)| self.opts.reads(name, lane))
            .map(|(name, cursor)| {
                let acked = cursor[lane.index()].unwrap_or(0);
                let handed = st
                    .views
                    .get(name)
                    .map_or(0, |v| v[lane.index()].handed)
                    .max(acked);
                (name, acked, handed)
            })
            .collect();
        // Only a consumer that acked or was handed part of the block needs its seqs.
        let entries = if readers.iter().any(|(_, _, handed)| *handed >= first) {
            self.lanes[lane.index()]
                .get(keys::block_key(first))?
                .and_then(|v| block::decode(first, &v).ok())
        } else {
            None
        };
        Ok(readers
            .into_iter()
            .map(|(name, acked, handed)| {
                let Some(entries) = entries.as_ref().filter(|_| handed >= first) else {
                    // Never handed any of it (or it no longer decodes): all it had not acked
                    // is lost to it now.
                    let now = if acked >= h.last_seq {
                        0
                    } else {
                        unacked_by_all
                    };
                    return (name.clone(), now, Vec::new());
                };
                let mut now = 0;
                let mut in_hand = Vec::new();
                for (seq, _, _) in entries {
                    if *seq <= acked {
                        continue;
                    }
                    if *seq > handed {
                        now += 1;
                    } else {
                        in_hand.push(*seq);
                    }
                }
                (name.clone(), now, in_hand)
            })
            .collect())
    }

    /// Delete the front block, counting its un-acked records under `why` for each consumer (see
    /// [`Inner::split_evicted`]). Returns how many records not every consumer had acked it
    /// held.
    fn remove_front(&self, st: &mut State, lane: Lane, why: Removal) -> Result<u64, BufferError> {
        let Some((first, h)) = st.lanes[lane.index()].front else {
            return Ok(0);
        };
        let losses = match why {
            Removal::Acked => Vec::new(),
            Removal::Quota | Removal::Expired => self.split_evicted(st, lane, first, &h)?,
        };
        let mut batch = sled::Batch::default();
        batch.remove(&keys::header_key(first));
        batch.remove(&keys::block_key(first));
        self.lanes[lane.index()].apply_batch(batch)?;
        let accounting = self.accounting_consumer();
        let State { lanes, views, .. } = st;
        let ls = &mut lanes[lane.index()];
        let unacked = u64::from(h.count) - ls.acked_in_front;
        for (name, now, in_hand) in losses {
            if name == accounting {
                why.count(now, &mut ls.dropped_quota, &mut ls.expired);
            }
            if let Some(view) = views.get_mut(&name) {
                let view = &mut view[lane.index()];
                why.count(now, &mut view.dropped_quota, &mut view.expired);
                view.in_hand_evicted
                    .extend(in_hand.into_iter().map(|seq| (seq, why)));
            }
        }
        ls.stored_records -= u64::from(h.count);
        ls.bytes -= u64::from(h.stored_bytes);
        ls.blocks -= 1;
        if ls.tail.as_ref().is_some_and(|t| t.first_seq == first) {
            ls.tail = None;
        }
        self.refresh_front(st, lane)?;
        Ok(unacked)
    }

    /// Delete every block all consumers have acked entirely.
    pub(crate) fn gc_acked(&self, st: &mut State, lane: Lane) -> Result<(), BufferError> {
        let min = self.min_cursor(st, lane);
        while let Some((_, h)) = st.lanes[lane.index()].front {
            if h.last_seq > min {
                break;
            }
            self.remove_front(st, lane, Removal::Acked)?;
        }
        // The front may have become partially acked without being deleted.
        self.refresh_front(st, lane)
    }

    /// Evict oldest blocks while the lane is over quota (drop_oldest only). The newest block is
    /// never evicted, so a lane may exceed its quota by at most one block.
    pub(crate) fn enforce_quota(&self, st: &mut State, lane: Lane) -> Result<(), BufferError> {
        if self.opts.when_full != WhenFull::DropOldest {
            return Ok(());
        }
        let max = self.opts.max_bytes(lane);
        while st.lanes[lane.index()].bytes > max && st.lanes[lane.index()].blocks > 1 {
            self.remove_front(st, lane, Removal::Quota)?;
        }
        Ok(())
    }

    /// Delete blocks last written more than `max_age_s` ago. Returns the un-acked records they
    /// held (counted as expired now, or when the consumer holding them sheds them).
    pub(crate) fn expire(&self, st: &mut State, now_ms: i64) -> Result<u64, BufferError> {
        if self.opts.max_age_s == 0 {
            return Ok(0);
        }
        let max_age_ms =
            i64::try_from(self.opts.max_age_s.saturating_mul(1000)).unwrap_or(i64::MAX);
        let mut n = 0;
        for lane in Lane::ALL {
            while let Some((_, h)) = st.lanes[lane.index()].front {
                if now_ms.saturating_sub(h.last_commit_ms) < max_age_ms {
                    break;
                }
                n += self.remove_front(st, lane, Removal::Expired)?;
            }
        }
        Ok(n)
    }

    /// Whether an append touching `lane` must be refused now.
    pub(crate) fn lane_full(&self, st: &State, lane: Lane) -> bool {
        self.opts.when_full == WhenFull::Block
            && st.lanes[lane.index()].bytes >= self.opts.max_bytes(lane)
    }

    /// Write `records` (seq-ordered, one lane) as blocks, merging into the tail block while it
    /// has room. One sled batch, so a crash leaves either all of it or none.
    pub(crate) fn write_lane(
        &self,
        st: &mut State,
        lane: Lane,
        records: &[(u64, &Record)],
        now_ms: i64,
    ) -> Result<(), BufferError> {
        let Some(&(first_seq, _)) = records.first() else {
            return Ok(());
        };
        let mut batch = sled::Batch::default();
        let mut cur = match st.lanes[lane.index()].tail.take() {
            Some(t) if !t.is_full() => t,
            _ => RawBlock::new(first_seq, now_ms),
        };
        let mut sealed = Vec::new();
        let mut encoded = Vec::with_capacity(256);
        for &(seq, record) in records {
            encoded.clear();
            encoded = postcard::to_extend(record, encoded)?;
            // Seal before a record that would take the block past what the reader accepts: a
            // large record gets a block of its own instead of making its neighbours unreadable.
            if !cur.fits(encoded.len()) {
                let next = RawBlock::new(seq, now_ms);
                sealed.push(std::mem::replace(&mut cur, next));
            }
            cur.push_encoded(seq, &encoded, record.ts_ms());
        }
        sealed.push(cur);
        let n = sealed.len();
        for (i, mut b) in sealed.into_iter().enumerate() {
            let (h, value) = b.seal(&mut st.compressor, now_ms);
            batch.insert(&keys::header_key(b.first_seq), h.encode());
            batch.insert(&keys::block_key(b.first_seq), value);
            let ls = &mut st.lanes[lane.index()];
            match b.written {
                Some(old) => {
                    ls.stored_records += u64::from(h.count - old.count);
                    ls.bytes = ls.bytes - u64::from(old.stored_bytes) + u64::from(h.stored_bytes);
                }
                None => {
                    ls.stored_records += u64::from(h.count);
                    ls.bytes += u64::from(h.stored_bytes);
                    ls.blocks += 1;
                }
            }
            match ls.front {
                None => ls.front = Some((b.first_seq, h)),
                Some((f, _)) if f == b.first_seq => ls.front = Some((f, h)),
                _ => {}
            }
            b.written = Some(h);
            if i + 1 == n {
                ls.tail = Some(b);
            }
        }
        st.lanes[lane.index()].appended += records.len() as u64;
        self.lanes[lane.index()].apply_batch(batch)?;
        Ok(())
    }

    /// A block that does not decode: move its bytes to the dead letters and drop it from the
    /// lane, so the lane keeps flowing.
    pub(crate) fn quarantine_block(
        &self,
        lane: Lane,
        first: u64,
        value: Vec<u8>,
        why: &str,
    ) -> Result<(), BufferError> {
        let mut st = self.lock();
        let tree = &self.lanes[lane.index()];
        let header = tree
            .get(keys::header_key(first))?
            .and_then(|v| BlockHeader::decode(&v));
        let mut batch = sled::Batch::default();
        batch.remove(&keys::header_key(first));
        batch.remove(&keys::block_key(first));
        tree.apply_batch(batch)?;
        error!(%lane, first, why, "buffer: undecodable block moved to dead letters");
        let is_front = st.lanes[lane.index()].front.map(|f| f.0) == Some(first);
        let ls = &mut st.lanes[lane.index()];
        if let Some(h) = header {
            let acked = if is_front { ls.acked_in_front } else { 0 };
            ls.undecodable += u64::from(h.count) - acked;
            ls.stored_records -= u64::from(h.count);
            ls.bytes -= u64::from(h.stored_bytes);
            ls.blocks -= 1;
        }
        if ls.tail.as_ref().is_some_and(|t| t.first_seq == first) {
            ls.tail = None;
        }
        self.put_dead_quietly(&mut st, "undecodable_block", lane, why.to_string(), value);
        self.mark_dirty();
        if is_front {
            self.refresh_front(&mut st, lane)?;
        }
        Ok(())
    }

    /// Dead-letter internal garbage; failure to park it is logged, not returned.
    fn put_dead_quietly(
        &self,
        st: &mut State,
        reason: &str,
        lane: Lane,
        detail: String,
        raw: Vec<u8>,
    ) {
        let input = DeadLetterInput {
            reason: reason.to_string(),
            origin: format!("buffer/{lane}"),
            detail,
            payload: DeadPayload::Raw(raw),
        };
        if let Err(e) = self.put_dead(st, input) {
            st.dead.kinds[DeadKind::Input.index()].dropped += 1;
            error!(error = %e, "buffer: could not keep an undecodable payload as a dead letter");
        }
    }

    pub(crate) fn put_dead(
        &self,
        st: &mut State,
        input: DeadLetterInput,
    ) -> Result<u64, BufferError> {
        let id = st.dead.next_id.max(1);
        let letter = DeadLetter {
            id,
            received_ms: self.opts.clock.now_ms(),
            reason: input.reason,
            origin: input.origin,
            detail: input.detail,
            payload: input.payload,
        };
        let value = postcard::to_stdvec(&letter)?;
        let len = value.len() as u64;
        let kind = letter.payload.kind();
        let max = self.opts.dead_letter_max_bytes_of(kind);
        let tree = self.dead_tree(kind);
        let ks = &mut st.dead.kinds[kind.index()];
        if len > max {
            ks.dropped += 1;
            return Err(BufferError::DeadLetterTooLarge { bytes: len, max });
        }
        // Oldest first, and only letters of the same kind: junk never evicts refused batches.
        while ks.bytes + len > max {
            let Some((_, v)) = tree.pop_min()? else {
                break;
            };
            ks.count -= 1;
            ks.bytes = ks.bytes.saturating_sub(v.len() as u64);
            ks.dropped += 1;
        }
        tree.insert(id.to_be_bytes(), value)?;
        st.dead.next_id = id + 1;
        self.meta
            .insert(keys::DEAD_NEXT_ID_KEY, &st.dead.next_id.to_be_bytes())?;
        let ks = &mut st.dead.kinds[kind.index()];
        ks.count += 1;
        ks.bytes += len;
        self.mark_dirty();
        Ok(id)
    }

    /// The tree holding dead letters of `kind`.
    pub(crate) fn dead_tree(&self, kind: DeadKind) -> &sled::Tree {
        match kind {
            DeadKind::Input => &self.dead,
            DeadKind::Refused => &self.dead_refused,
        }
    }

    /// Once per database: a database from before the two dead-letter quotas kept refused
    /// batches in the one "dead" tree; move them to their own tree (same ids, same bytes), so
    /// they count against their own quota from now on. Each letter is written to its new tree
    /// before it is removed from the old one, and the flag is written last: a crash in between
    /// leaves a letter in both trees, and the next open simply moves it again.
    fn split_dead_letters(&self) -> Result<(), BufferError> {
        let mut moved = 0u64;
        for item in self.dead.iter() {
            let (k, v) = item?;
            let refused = matches!(
                postcard::from_bytes::<DeadLetter>(&v).map(|l| l.payload.kind()),
                Ok(DeadKind::Refused)
            );
            if refused {
                self.dead_refused.insert(&k, v)?;
                self.dead.remove(&k)?;
                moved += 1;
            }
        }
        self.meta.insert(keys::DEAD_SPLIT_KEY, &[1])?;
        self.durable_flush()?;
        if moved > 0 {
            info!(
                moved,
                "buffer: refused batches now kept under their own dead-letter quota"
            );
        }
        Ok(())
    }

    pub(crate) fn decode_dead(&self, v: &[u8]) -> Option<DeadLetter> {
        match postcard::from_bytes(v) {
            Ok(l) => Some(l),
            Err(e) => {
                warn!(error = %e, "buffer: skipping an unreadable dead letter");
                None
            }
        }
    }

    /// Persist the seq counter (rides on the same flush as the blocks).
    pub(crate) fn persist_next_seq(&self, next_seq: u64) -> Result<(), BufferError> {
        self.meta
            .insert(keys::NEXT_SEQ_KEY, &next_seq.to_be_bytes())?;
        Ok(())
    }

    fn lock_watermark(&self) -> MutexGuard<'_, Watermark> {
        // The watermark's fields are only ever raised after a successful write, so a panic
        // while holding the lock leaves them conservative.
        self.watermark.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Decide where seqs continue, against the seq watermark (rules in `watermark.rs`), and
    /// make that durable before the first append: the watermark's bound first (fsynced), then
    /// the database's counter (flushed), then the watermark's `durable`.
    fn settle_seqs(&self, loaded: Loaded, moved_aside: bool) -> Result<(), BufferError> {
        let mut st = self.lock();
        let mut wm = self.lock_watermark();
        let n = st.next_seq;
        let stored = n - 1;
        let step = wm.step;
        let wm_path = self.opts.dir.join(watermark::FILE_NAME);
        // (where seqs continue, the `durable` to keep until the database has the new counter,
        // the bound read from the file)
        let (start, keep_durable, old_reserved) = match loaded {
            Loaded::Absent => {
                if moved_aside {
                    error!(
                        watermark = %wm_path.display(),
                        next_seq = n,
                        "buffer: no seq watermark beside the database moved aside: seqs restart \
                         at {n} and may repeat seqs handed out before"
                    );
                } else if stored > 0 {
                    info!(next_seq = n, "buffer: creating the seq watermark");
                }
                (n, stored, 0)
            }
            Loaded::Unreadable(why) => {
                let start = n.saturating_add(step);
                if moved_aside {
                    error!(
                        watermark = %wm_path.display(),
                        %why,
                        next_seq = start,
                        "buffer: seq watermark unreadable and the database moved aside: seqs \
                         handed out before are unknown and may repeat"
                    );
                } else {
                    warn!(
                        watermark = %wm_path.display(),
                        %why,
                        next_seq = start,
                        "buffer: seq watermark unreadable, rewriting it; seqs continue one \
                         reservation step above the database's; records missing from the \
                         database cannot be counted at this open"
                    );
                }
                (start, stored, 0)
            }
            Loaded::Read { reserved, durable } => {
                if moved_aside {
                    let start = n.max(reserved);
                    error!(
                        previous_durable_seq = durable,
                        next_seq = start,
                        "buffer: the fresh database continues seqs above every seq handed out \
                         before"
                    );
                    (start, durable, reserved)
                } else if stored < durable {
                    let missing = durable - stored;
                    let start = n.max(reserved);
                    st.missing_at_open = missing;
                    error!(
                        missing,
                        first_missing_seq = n,
                        last_missing_seq = durable,
                        next_seq = start,
                        "buffer: the database no longer holds {missing} seqs it had made durable \
                         ({n}..={durable}; truncated or rolled back): records among them not yet \
                         delivered are lost; their seqs are never reused"
                    );
                    (start, durable, reserved)
                } else {
                    (n, durable, reserved)
                }
            }
        };
        let reserved = old_reserved.max(start.saturating_add(step));
        wm.store(reserved, keep_durable.min(reserved - 1))?;
        if start != n {
            st.next_seq = start;
            self.persist_next_seq(start)?;
            self.durable_flush()?;
            self.durable_tx.send_replace(start - 1);
        }
        wm.note_durable(start - 1);
        Ok(())
    }

    /// Called by the group commit after it assigned seqs in memory and before it writes any
    /// of them to sled: makes sure the watermark's fsynced bound is above every seq assigned
    /// (all are below `st.next_seq`). One comparison, and a fsync once per reservation step.
    /// It runs under the state lock, before anything under those seqs can reach the disk or a
    /// reader, so no seq can become durable above a bound that is not. On error nothing of the
    /// group is written and its appends fail.
    pub(crate) fn reserve_seqs(&self, st: &State) -> Result<(), BufferError> {
        let mut wm = self.lock_watermark();
        if wm.reserve(st.next_seq)? {
            info!(reserved = wm.reserved, "buffer: seq watermark moved");
        }
        Ok(())
    }

    /// Called by the group commit after its flush succeeded: every seq up to `durable_seq`
    /// is durable in sled (written in place, no fsync; see `watermark.rs`).
    pub(crate) fn note_durable(&self, durable_seq: u64) {
        self.lock_watermark().note_durable(durable_seq);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A directory named like a sled database, holding `files` (relative path, size).
    fn fake_db(path: &Path, files: &[(&str, usize)]) {
        for (name, size) in files {
            let file = path.join(name);
            std::fs::create_dir_all(file.parent().unwrap()).unwrap();
            std::fs::write(file, vec![0u8; *size]).unwrap();
        }
    }

    #[test]
    fn moved_aside_databases_are_listed_with_their_size_and_time_and_nothing_else_is() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join(keys::DB_DIR_NAME);
        // 2024-02-29 23:59:58 UTC, twice in the same second: the second copy gets `-1`.
        let at_ms = 1_709_251_198_000;
        fake_db(&db, &[("conf", 10), ("db", 1000), ("blobs/1", 5)]);
        let first = move_aside(&db, at_ms + 400).unwrap();
        fake_db(&db, &[("conf", 20), ("db", 300)]);
        let second = move_aside(&db, at_ms).unwrap();
        assert_eq!(
            second.file_name().unwrap(),
            "buffer.sled.corrupt-20240229T235958Z-1"
        );
        // What else lives there: the open database, the watermark, the probe, and names that
        // only look alike.
        fake_db(&db, &[("conf", 7), ("db", 7)]);
        fake_db(
            dir.path(),
            &[
                ("seq.watermark", 64),
                (health::PROBE_FILE_NAME, 1),
                ("buffer.sled.old/db", 9),
                ("other.sled.corrupt-20240229T235958Z/db", 9),
            ],
        );

        let listed = list_moved_aside(dir.path()).unwrap();
        assert_eq!(
            listed,
            [
                MovedAside {
                    path: first,
                    bytes: 1015,
                    moved_at_ms: Some(at_ms),
                },
                MovedAside {
                    path: second,
                    bytes: 320,
                    moved_at_ms: Some(at_ms),
                },
            ]
        );
    }

    #[test]
    fn a_moved_aside_name_without_a_readable_time_is_listed_without_one() {
        let dir = tempfile::tempdir().unwrap();
        for name in [
            "buffer.sled.corrupt-yesterday",
            "buffer.sled.corrupt-20241332T000000Z",
            "buffer.sled.corrupt-20240101T000000Z-x",
        ] {
            fake_db(&dir.path().join(name), &[("db", 3)]);
        }
        let listed = list_moved_aside(dir.path()).unwrap();
        assert_eq!(listed.len(), 3, "{listed:?}");
        for aside in listed {
            assert_eq!((aside.bytes, aside.moved_at_ms), (3, None), "{aside:?}");
        }
    }

    #[test]
    fn a_missing_buffer_directory_holds_no_moved_aside_database() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            list_moved_aside(&dir.path().join("never-made")).unwrap(),
            []
        );
    }

    #[test]
    fn utc_stamps_read_back_to_the_second_they_were_written_for() {
        for ms in [0, 951_782_400_000, 1_709_251_198_999, 4_102_444_799_000] {
            let stamp = utc_stamp(ms);
            assert_eq!(parse_utc_stamp(&stamp), Some(ms - ms % 1000), "{stamp}");
        }
        for bad in [
            "20240230T000000Z",
            "20240101T240000Z",
            "2024010xT000000Z",
            "20240101 000000Z",
        ] {
            assert_eq!(parse_utc_stamp(bad), None, "{bad}");
        }
    }
}
