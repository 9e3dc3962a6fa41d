//! Durable, sled-backed queue of readings and alarm events: the gateway's "never lose a
//! reading" store.
//!
//! Ingest calls [`Buffer::append`], which resolves only once the records are on disk; the
//! forwarder (and any other consumer listed in [`BufferOptions::consumers`]) reads each lane in
//! order with [`Buffer::read`] and moves its own cursor with [`Buffer::ack`]. Many concurrent
//! appends share one flush (group commit, driven by the [`Committer`] the caller spawns). Each
//! committed group is stored per lane as one compressed block, not one key per record, which
//! keeps disk use and memory small on an SD-card gateway.
//!
//! # Guarantees
//! - **Durable before acknowledged.** `append` returns seqs only after sled flushed the group
//!   *and* the log file was `fdatasync`ed (sled 0.34 alone uses `sync_file_range`, which does
//!   not flush the drive cache). One flush per group, never per record.
//! - **Seqs** are unique across both lanes, increase in order of durability, and are never
//!   reused after a restart or crash: the counter is persisted in the same flush as the blocks,
//!   and at open the buffer takes max(persisted counter, last stored seq + 1).
//! - **Seqs are not reused even when the database is lost.** A seq watermark file beside the
//!   database keeps a fsynced bound above every seq ever handed out (moved in steps of a
//!   million, one fsync per step) and the last seq known durable (rewritten after each group
//!   commit, no fsync). A database moved aside, truncated or rolled back continues above that
//!   bound. See `src/watermark.rs` for the rules.
//! - **Lost records are never silent.** A database that opens without seqs it had made durable
//!   (a truncated log, an older copy restored) is detected against the watermark: the missing
//!   seq range is logged at error and counted ([`BufferStats::missing_at_open`]). The records
//!   themselves cannot be brought back.
//! - **Readers only see durable records**, so a seq that reached the cloud can never be
//!   re-issued to another record after a crash.
//! - **State rides with records.** [`Buffer::queue_in_line_with_state`] writes small state
//!   entries in the same group commit as its records, after their blocks, and only if they are
//!   stored: once it resolves `Ok` both are durable; an append refused or withdrawn wrote
//!   neither. (Plain [`Buffer::set_state`] is durable with the next flush, whichever it is.)
//! - **Per-lane order.** A consumer reads a lane in seq order from its cursor; after a reopen
//!   every durable, un-acked record is there in order with the same seq.
//! - **Retention is counted, exactly.** Every record removed un-acked is counted by reason:
//!   quota (`drop_oldest`), expiry (`max_age_s`), or undecodable (then its bytes are a dead
//!   letter). A record evicted after [`Buffer::read`] handed it to the accounting consumer (the
//!   first consumer of every lane: the forwarder) and before it acked it is not counted at
//!   eviction: the consumer either delivers it (acks it) or sheds it with
//!   [`Buffer::shed_evicted`], which counts it then. So per lane, at every moment,
//!   `appended = records + dropped + expired + undecodable + evicted_in_flight + acked by the
//!   consumer` ([`LaneStats::evicted_in_flight`]). The alarms lane has its own quota; readings
//!   never evict alarms.
//! - **A cursor per consumer, losses per consumer.** Each consumer (one per sink in the
//!   gateway) reads, sheds and acks on its own; a block leaves once every consumer that reads
//!   its lane acked it ([`BufferOptions::alarms_only_consumers`],
//!   [`BufferOptions::readings_only_consumers`]). The same identity holds for every consumer
//!   with its own counts ([`Buffer::consumer_stats`]): `appended = stored and not acked by it +
//!   its dropped + its expired + its evicted_in_flight + acked by it`. The lane counters above
//!   are the accounting consumer's view.
//! - **Every block opens.** A block holds ≤ 16 KiB of records or one larger record alone, and
//!   a record is at most [`MAX_RECORD_BYTES`] ([`Buffer::append`] refuses larger ones with
//!   [`AppendError::RecordTooLarge`]), so the reader's cap covers every block the writer builds.
//!   Blocks of older versions (format 1) are still read.
//! - **Two dead-letter quotas.** Rejected input and batches the upstream refused are kept under
//!   separate quotas (`dead_letter_max_bytes`, `refused_dead_letter_max_bytes`): a flood of
//!   one never evicts the other ([`DeadKind`]).
//! - **Corruption never wipes data.** A database sled cannot open is renamed to
//!   `<dir>/buffer.sled.corrupt-<UTC timestamp>`, logged at error, counted
//!   ([`BufferStats::moved_aside`]) and a fresh one is started. A block that does not decode is
//!   moved to the dead letters and the lane moves on. The moved-aside copies stay until someone
//!   removes them; [`list_moved_aside`] (or [`Buffer::moved_aside_on_disk`]) lists them with
//!   their size.
//! - **Bounded memory.** Reads stream block by block; stats are kept incrementally (O(lanes));
//!   the sled cache is capped by [`BufferOptions::cache_capacity_bytes`]; the append queue is
//!   bounded.
//!
//! - **A failed write stops appends, never acknowledges.** sled 0.34 keeps the first error of a
//!   log write (disk full, I/O error) and fails every later write of that `Db` until it is
//!   opened again. At the first failed write or flush the buffer counts it
//!   ([`BufferStats::write_errors`]), reports [`BufferHealth::WriteFailed`], and refuses every
//!   append at once with [`AppendError::Unavailable`] (nothing written, so the caller leaves its
//!   source unacknowledged). Every record an `append` returned seqs for was durable before that
//!   and stays so. The committer then probes the data directory every [`PROBE_INTERVAL`]
//!   (writes, fsyncs and removes a [`PROBE_BYTES`] file); when that succeeds the health becomes
//!   [`BufferHealth::ReopenNeeded`] and the owner must drop the buffer and open it again (the
//!   gateway exits non-zero and its service manager restarts it). Opening is sled's ordinary
//!   crash recovery: the log up to the last successful flush, the torn tail dropped.
//! - **Why not reopen in place.** Reopening needs every handle on the old `Db` gone first
//!   (sled's file lock is held until its last `Tree` and background write are dropped), every
//!   in-memory counter and cursor rebuilt, and the MQTT session re-established so the broker
//!   redelivers what was left unacknowledged (brokers redeliver only on reconnect). A process
//!   restart does all three with code paths that the crash tests already cover.
//!
//! # Non-guarantees (the loss and duplicate windows)
//! - **While writes fail, acks, consumer meta and requeue acks are kept in memory only** (they
//!   are lazily flushed, so the crash window above already allows losing them): after the
//!   reopen, records delivered since the last durable ack are delivered again with the same
//!   seqs. Dead letters and requeues cannot be kept and fail with the write error.
//! - **Acks, consumer meta, dead letters and requeues are flushed lazily**: with the next
//!   group commit or the committer's idle flush (every ~100 ms), at [`Buffer::flush`], and at
//!   shutdown. A crash inside that window re-delivers records already acked (duplicates; the
//!   cloud dedups on seq) and may lose a dead letter parked in that window.
//! - **Failed or cancelled appends may still land.** If the flush of a group fails, or the
//!   `append` future is dropped after queueing, the records may become durable under seqs the
//!   caller never learned; re-appending them duplicates, never loses.
//! - **Quotas are approximate by one block/group.** `drop_oldest` never evicts the newest block,
//!   and `block` refuses appends once the stored bytes reach the quota, so a lane may exceed its
//!   quota by one group. Quotas count compressed block bytes, not sled's own overhead
//!   (sled's log needs roughly 1.5× that on disk).
//! - **Expiry is by storage time, per block**: a record expires once the block holding it was
//!   last written more than `max_age_s` ago (gateway clock), not by its own `ts_ms` (device
//!   clocks lie, and back-filled data must not vanish on arrival). A small block keeps growing
//!   by merging later groups, so a record can outlive `max_age_s` by the time its block took to
//!   fill.
//! - **sled panics.** sled 0.34 panics instead of erroring on some corrupt files. `open` catches
//!   that in unwinding builds and moves the database aside; under `panic = "abort"` (the
//!   release profile) the process aborts instead, and systemd's restart meets the same panic.
//!   Nothing is deleted either way.
//! - **Counters restart at zero** at each open (they are process counters for metrics); the
//!   gauges (records, bytes, oldest age) are recomputed from disk.
//! - **The watermark lags after a power cut** (its `durable` is not fsynced), so records lost
//!   from a database in the same power cut, after the last fsynced watermark write, are not
//!   counted as missing; their seqs are still never reused. If the watermark file and the
//!   database are both lost, seqs restart and may repeat.
//!
//! # On-disk layout
//! One sled database in `<dir>/buffer.sled` and the seq watermark `<dir>/seq.watermark` (two
//! checksummed copies of `reserved` and `durable`; layout in `src/watermark.rs`). In sled,
//! big-endian numbers so byte order is numeric order.
//! Records are postcard, which stores an enum by variant index: the enums inside them
//! ([`Lane`], [`Source`], [`AlarmState`], [`Severity`]) are never reordered, only appended to (a
//! test in `src/record.rs` pins the bytes of every severity). The gateway's config names
//! [`Severity`] and [`WhenFull`] in its keys and uses these types as they are: it depends on this
//! crate, never the other way round.
//!
//! ```text
//! tree "lane.alarms" / "lane.readings"        (one tree per lane)
//!   'h' ++ first_seq:u64be  -> postcard BlockHeader { last_seq, count, stored_bytes,
//!                                first_commit_ms, last_commit_ms, min_ts_ms }
//!   'b' ++ first_seq:u64be  -> block: 0x02 | crc32:u32le | raw_len:u32le | deflate(entries)
//!                              (0x01 | crc32:u32le | deflate(entries) from older versions)
//!                              entry = varint(seq delta) | postcard(Record)
//!                              a block is ≤ 16 KiB raw or holds one record alone; a record
//!                              is ≤ MAX_RECORD_BYTES (see src/block.rs)
//!       header and block of one seq are written in one sled batch; open reads only headers
//! tree "meta"
//!   "next_seq"                            -> u64be   next seq to hand out
//!   "dead_next_id"                        -> u64be   next dead-letter id
//!   "dead_split"                          -> 0x01    refused batches live in "dead.refused"
//!   "ack\0" ++ lane tag ('a'|'r') ++ "\0" ++ consumer -> u64be  acked up to (inclusive)
//!   "cmeta\0" ++ consumer ++ "\0" ++ key  -> bytes   per-consumer state
//!   "state\0" ++ key                      -> bytes   state of other components (alarm engine,
//!                                                   windows and deadbands: "window/…")
//! tree "requeue"                            (dead letters put back for one consumer)
//!   lane tag ++ consumer ++ "\0" ++ seq:u64be -> postcard Record (original seq kept)
//!       (older versions: lane tag ++ seq:u64be, moved to the accounting consumer at open)
//! tree "dead"                                (rejected input: Raw payloads)
//!   id:u64be                              -> postcard DeadLetter
//! tree "dead.refused"                        (batches the upstream refused: Records payloads)
//!   id:u64be                              -> postcard DeadLetter   (ids shared with "dead")
//! ```

mod block;
mod buffer;
mod committer;
mod dead;
mod error;
mod health;
mod keys;
mod options;
mod pace;
pub mod record;
mod stats;
mod watermark;

pub use block::MAX_RECORD_BYTES;
pub use buffer::{Buffer, list_moved_aside};
pub use committer::{Appended, Committer, OnWait, StateWrites};
pub use dead::{DeadKind, DeadLetter, DeadLetterInput, DeadLetters, DeadPayload};
pub use error::{AppendError, BufferError};
pub use health::{BufferHealth, PROBE_BYTES, PROBE_FILE_NAME, PROBE_INTERVAL};
pub use options::{BufferOptions, Clock, ManualClock, SystemClock, WhenFull};
pub use record::{AlarmEvent, AlarmState, Lane, Reading, Record, Severity, Source, Stored};
pub use stats::{
    BufferStats, CommitTimes, ConsumerLaneStats, ConsumerStats, DeadKindStats, DeadLetterStats,
    DurationHistogram, Durations, LATENCY_BUCKETS_S, LaneStats, MovedAside,
};

/// Name of the sled directory inside [`BufferOptions::dir`].
pub const DB_DIR_NAME: &str = keys::DB_DIR_NAME;
