//! The group-commit driver.
//!
//! Appends arrive on a bounded queue and are committed in groups: one sled batch and one flush
//! for everything that queued within `commit_interval_ms` of the group's first append.
//!
//! Appends made [`Buffer::append_in_line`] that find their lane full (`when_full = "block"`)
//! are parked instead of refused, and so is every such append after them: parked appends are
//! retried in arrival order as space returns, so a later one is never stored before an earlier
//! one. A parked append whose caller gave up (dropped the future) is withdrawn, never written.
//!
//! Once a write of the database fails, the committer refuses every append at once (sled would
//! fail it anyway: it keeps its first write error until reopened), skips its idle work, and
//! probes the disk every [`crate::PROBE_INTERVAL`] until writes succeed again; see `health.rs`.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, warn};

use crate::buffer::{Buffer, Inner, State};
use crate::error::{AppendError, BufferError};
use crate::health;
use crate::pace::Pace;
use crate::record::{Lane, Record};

/// Capacity of the append queue, in calls (not records). Bounded so a stalled disk pushes back
/// on ingest (appenders wait in `send`) instead of growing memory without limit; 1024 calls is
/// far more than the gateway's concurrent appenders (a few ingest tasks), so a healthy
/// committer never makes anyone wait on the queue, and at the ~100 records a call ingest sends,
/// a full queue holds at most a few MB.
pub(crate) const APPEND_QUEUE_CAPACITY: usize = 1024;

/// When idle, the committer flushes dirty acks/meta/dead letters and runs expiry this often.
/// This is the window in which an ack can be lost by a crash (→ a duplicate, never a loss).
pub(crate) const IDLE_FLUSH_INTERVAL: Duration = Duration::from_millis(100);

pub(crate) struct AppendRequest {
    pub(crate) records: Arc<[Record]>,
    pub(crate) reply: oneshot::Sender<Result<Appended, AppendError>>,
    /// When the append was queued: the commit window is measured from the group's first one.
    pub(crate) arrived: tokio::time::Instant,
    /// Wait in line for space instead of failing with [`AppendError::Full`].
    pub(crate) in_line: bool,
    /// Whether it has been parked (reported back to the caller).
    pub(crate) waited: bool,
    /// Called when it starts waiting for space.
    pub(crate) on_wait: Option<OnWait>,
    /// State written in the same group commit as `records`, only if they are stored.
    pub(crate) state: StateWrites,
}

/// `(key, value)` pairs for the state store ([`Buffer::set_state`]); an empty value removes
/// the key.
pub type StateWrites = Vec<(String, Vec<u8>)>;

/// Called once when an in-line append starts waiting for space (for a gauge or a log line).
pub type OnWait = Box<dyn FnOnce() + Send + Sync>;

/// A completed append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    /// The records' seqs, in the order given.
    pub seqs: Vec<u64>,
    /// It found its lane full (or others waiting) and waited for space.
    pub waited_for_space: bool,
}

/// How long parked appends wait between attempts; acks free space at any moment, so this is
/// the most an append waits after space returns.
const PARKED_RETRY: Duration = Duration::from_millis(50);

impl Buffer {
    /// Like [`Buffer::append_shared`], but when the buffer is full and set to block, waits for
    /// space in line behind every earlier such append instead of failing with
    /// [`AppendError::Full`]; so appends from one source stay in order through a full buffer.
    ///
    /// Cancel safety: dropping the future while it waits for space withdraws the records
    /// (they are never written); once space was found, as [`Buffer::append`].
    pub async fn append_in_line(&self, records: Arc<[Record]>) -> Result<Appended, AppendError> {
        self.queue_in_line(records, None).await?.await
    }

    /// The first half of [`Buffer::append_in_line`]: queues the append now (waiting only while
    /// the append queue itself is full) and returns the wait for its outcome. Appends are stored
    /// in the order they were queued, however their waits are polled. `on_wait` is called if
    /// and when it starts waiting for space.
    pub async fn queue_in_line(
        &self,
        records: Arc<[Record]>,
        on_wait: Option<OnWait>,
    ) -> Result<impl Future<Output = Result<Appended, AppendError>> + Send + 'static, AppendError>
    {
        self.queue_in_line_with_state(records, StateWrites::new(), on_wait)
            .await
    }

    /// [`Buffer::queue_in_line`] that also writes `state` to the state store in the same group
    /// commit as the records, and only if the records are stored: once the append resolves
    /// `Ok`, both are durable; if it fails (refused, withdrawn), neither was written by it. An
    /// append of state alone (no records) is committed like any other. Appends are committed
    /// in the order they were queued, so of two writes of one key queued in turn, the later
    /// one is what stays.
    pub async fn queue_in_line_with_state(
        &self,
        records: Arc<[Record]>,
        state: StateWrites,
        on_wait: Option<OnWait>,
    ) -> Result<impl Future<Output = Result<Appended, AppendError>> + Send + 'static, AppendError>
    {
        crate::buffer::check_record_sizes(&records)?;
        let (reply, rx) = oneshot::channel();
        if records.is_empty() && state.is_empty() {
            let _ = reply.send(Ok(Appended {
                seqs: Vec::new(),
                waited_for_space: false,
            }));
        } else {
            self.tx
                .send(AppendRequest {
                    records,
                    reply,
                    arrived: tokio::time::Instant::now(),
                    in_line: true,
                    waited: false,
                    on_wait,
                    state,
                })
                .await
                .map_err(|_| AppendError::Closed)?;
        }
        Ok(async move { rx.await.map_err(|_| AppendError::Closed)? })
    }
}

/// Drives group commit. Spawn `committer.run(shutdown)` once; appends complete only while it
/// runs. On shutdown it commits what is queued, flushes, and returns.
#[derive(Debug)]
pub struct Committer {
    inner: Arc<Inner>,
    rx: mpsc::Receiver<AppendRequest>,
    /// In-line appends waiting for space, oldest first.
    parked: VecDeque<AppendRequest>,
}

impl std::fmt::Debug for AppendRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppendRequest")
            .field("records", &self.records.len())
            .field("in_line", &self.in_line)
            .finish()
    }
}

impl Committer {
    pub(crate) fn new(inner: Arc<Inner>, rx: mpsc::Receiver<AppendRequest>) -> Self {
        Committer {
            inner,
            rx,
            parked: VecDeque::new(),
        }
    }

    /// Run until `shutdown` is cancelled or every [`crate::Buffer`] handle is dropped.
    /// Returns the error of the final flush, if any.
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<(), BufferError> {
        let interval = Duration::from_millis(self.inner.opts.commit_interval_ms);
        let stretch = Duration::from_millis(self.inner.opts.commit_stretch_ms);
        let mut pace = Pace::new(tokio::time::Instant::now());
        let max_records = self.inner.opts.commit_max_records;
        let mut tick = tokio::time::interval(IDLE_FLUSH_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut retry = tokio::time::interval(PARKED_RETRY);
        retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut probe = tokio::time::interval(health::PROBE_INTERVAL);
        probe.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let probing = matches!(
                *self.inner.health_ref(),
                health::BufferHealth::WriteFailed { .. }
            );
            // Cancel safety: `recv` and the ticks lose nothing when another branch wins.
            let first = tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                _ = probe.tick(), if probing => {
                    self.probe().await;
                    continue;
                }
                _ = retry.tick(), if !self.parked.is_empty() => {
                    self.retry_parked().await;
                    continue;
                }
                r = self.rx.recv() => match r {
                    Some(r) => r,
                    None => break,
                },
                _ = tick.tick() => {
                    self.idle().await;
                    continue;
                }
            };
            // Appends whose callers gave up do not hold anyone back.
            self.parked.retain(|r| !r.reply.is_closed());
            if first.in_line && !self.parked.is_empty() {
                // Others are waiting for space: this one waits behind them.
                self.park(first);
                continue;
            }
            let first_arrived = first.arrived;
            let mut n = first.records.len();
            let mut alarm = has_alarm(&first.records);
            pace.arrived(first.arrived, n);
            let mut group = vec![first];
            // The window runs from when the first append was queued, not from when the
            // committer got to it: appends that queued during a slow flush have waited already,
            // so under load groups go out back to back and the window only adds latency when
            // the buffer is idle. At a trickle it may stretch (see `pace.rs`); it shrinks back
            // as the group grows or takes an alarm.
            let mut window = pace.window(interval, stretch, n, alarm);
            while n < max_records {
                let r = match self.rx.try_recv() {
                    Ok(r) => Some(r),
                    Err(mpsc::error::TryRecvError::Empty) if !window.is_zero() => {
                        tokio::select! {
                            biased;
                            r = self.rx.recv() => match r {
                                Some(r) => Some(r),
                                None => break,
                            },
                            _ = tokio::time::sleep_until(first_arrived + window) => None,
                            _ = shutdown.cancelled() => None,
                        }
                    }
                    Err(_) => None,
                };
                let Some(r) = r else { break };
                n += r.records.len();
                alarm |= has_alarm(&r.records);
                pace.arrived(r.arrived, r.records.len());
                group.push(r);
                window = pace.window(interval, stretch, n, alarm);
            }
            self.commit(group).await;
        }
        // Shutdown: refuse new appends and those waiting for space, commit what was already
        // queued, flush.
        self.rx.close();
        // In-line appends queued behind refused ones are refused too: committing them would
        // store them ahead of the earlier ones, which come back later.
        let mut refuse_in_line = !self.parked.is_empty();
        for r in self.parked.drain(..) {
            let lane =
                full_lane(&self.inner, &self.inner.lock(), &r.records).unwrap_or(Lane::Readings);
            let _ = r.reply.send(Err(AppendError::Full { lane }));
        }
        let mut rest = Vec::new();
        while let Ok(r) = self.rx.try_recv() {
            if r.in_line {
                let full = full_lane(&self.inner, &self.inner.lock(), &r.records);
                if refuse_in_line || full.is_some() {
                    refuse_in_line = true;
                    let lane = full.unwrap_or(Lane::Readings);
                    let _ = r.reply.send(Err(AppendError::Full { lane }));
                    continue;
                }
            }
            rest.push(r);
        }
        if !rest.is_empty() {
            self.commit(rest).await;
        }
        let inner = self.inner.clone();
        let result = tokio::task::spawn_blocking(move || inner.durable_flush())
            .await
            .unwrap_or(Err(BufferError::Closed));
        debug!("buffer committer stopped");
        result
    }

    /// Writes a probe file; once that works, the database must be reopened.
    async fn probe(&self) {
        let dir = self.inner.opts.dir.clone();
        let probed = tokio::task::spawn_blocking(move || health::probe_write(&dir)).await;
        match probed {
            Ok(Ok(())) => {
                if self.inner.note_probe_passed() {
                    warn!(
                        dir = %self.inner.opts.dir.display(),
                        "buffer: the disk takes writes again; the database must be reopened \
                         to resume"
                    );
                }
            }
            Ok(Err(e)) => debug!(error = %e, "buffer: the disk still refuses writes"),
            Err(e) => error!(error = %e, "buffer: probe task failed"),
        }
    }

    async fn idle(&self) {
        // Expiry and lazy flushes write; sled refuses that until the database is reopened.
        if self.inner.is_failed() {
            return;
        }
        let inner = self.inner.clone();
        let done = tokio::task::spawn_blocking(move || -> Result<(), BufferError> {
            let now = inner.opts.clock.now_ms();
            let expired = {
                let mut st = inner.lock();
                inner.expire(&mut st, now)?
            };
            if expired > 0 || inner.take_dirty() {
                let began = std::time::Instant::now();
                inner.durable_flush()?;
                inner.idle_flush.observe(began.elapsed(), 1);
            }
            Ok(())
        })
        .await;
        if let Ok(Err(e)) = done {
            error!(error = %e, "buffer: idle flush failed");
            self.inner.note_write_error(&e);
        }
    }

    fn park(&mut self, mut request: AppendRequest) {
        request.waited = true;
        if let Some(on_wait) = request.on_wait.take() {
            on_wait();
        }
        self.parked.push_back(request);
    }

    /// Commits the parked appends that fit now, oldest first; the rest stay parked in order.
    async fn retry_parked(&mut self) {
        // The caller gave up waiting: withdrawn, never written.
        self.parked.retain(|r| !r.reply.is_closed());
        let group: Vec<AppendRequest> = self.parked.drain(..).collect();
        if !group.is_empty() {
            self.commit(group).await;
        }
    }

    /// Commits a group; in-line appends refused for space are parked, with every in-line
    /// append after them in the group.
    async fn commit(&mut self, mut group: Vec<AppendRequest>) {
        if let Some(reason) = self.inner.failure() {
            // Refused without touching sled, in-line appends included: waiting for a disk that
            // may not come back would only hold their sources' data in memory, and the broker
            // keeps what is not acknowledged.
            for request in group {
                let _ = request.reply.send(Err(AppendError::Unavailable {
                    reason: reason.clone(),
                }));
            }
            return;
        }
        let inner = self.inner.clone();
        let calls: Vec<Call> = group
            .iter_mut()
            .map(|r| Call {
                records: r.records.clone(),
                in_line: r.in_line,
                // A parked append keeps its state for the retry (it is put back below).
                state: std::mem::take(&mut r.state),
            })
            .collect();
        let outcomes = tokio::task::spawn_blocking(move || commit_group(&inner, calls))
            .await
            .unwrap_or_else(|e| {
                error!(error = %e, "buffer: commit task failed");
                Vec::new()
            });
        // A missing outcome (the commit task panicked) drops the reply: that caller sees Closed.
        for (mut request, (outcome, state)) in group.into_iter().zip(outcomes) {
            match outcome {
                Outcome::Park => {
                    request.state = state;
                    self.park(request);
                }
                Outcome::Done(result) => {
                    let waited = request.waited;
                    let _ = request.reply.send(result.map(|seqs| Appended {
                        seqs,
                        waited_for_space: waited,
                    }));
                }
            }
        }
    }
}

/// What became of one append in a group.
enum Outcome {
    Done(Result<Vec<u64>, AppendError>),
    /// An in-line append that must wait for space.
    Park,
}

/// Whether any of the records goes to the alarm lane.
fn has_alarm(records: &[Record]) -> bool {
    records.iter().any(|r| r.lane() == Lane::Alarms)
}

/// The first lane `records` touch that is full (and set to block) now.
fn full_lane(inner: &Inner, st: &State, records: &[Record]) -> Option<Lane> {
    Lane::ALL
        .into_iter()
        .find(|&l| records.iter().any(|r| r.lane() == l) && inner.lane_full(st, l))
}

/// One append of a group, as the commit task sees it.
struct Call {
    records: Arc<[Record]>,
    in_line: bool,
    state: StateWrites,
}

/// Assign seqs, write one block per lane and the state of the stored appends, persist the
/// counter, flush once, publish. Each outcome comes back with its call's state (written or not;
/// a parked append needs it again).
fn commit_group(inner: &Inner, calls: Vec<Call>) -> Vec<(Outcome, StateWrites)> {
    let now = inner.opts.clock.now_ms();
    let mut results = Vec::with_capacity(calls.len());
    let began = std::time::Instant::now();
    let mut st = inner.lock();
    let mut per_lane: [Vec<(u64, &Record)>; 2] = [Vec::new(), Vec::new()];
    // Once an in-line append waits, every in-line append after it waits too (order).
    let mut parking = false;
    for Call {
        records, in_line, ..
    } in &calls
    {
        if *in_line && parking {
            results.push(Outcome::Park);
            continue;
        }
        if let Some(lane) = full_lane(inner, &st, records) {
            if *in_line {
                parking = true;
                results.push(Outcome::Park);
            } else {
                results.push(Outcome::Done(Err(AppendError::Full { lane })));
            }
            continue;
        }
        let mut seqs = Vec::with_capacity(records.len());
        for r in records.iter() {
            let seq = st.next_seq;
            st.next_seq += 1;
            per_lane[r.lane().index()].push((seq, r));
            seqs.push(seq);
        }
        results.push(Outcome::Done(Ok(seqs)));
    }
    let written = (|| -> Result<(), BufferError> {
        inner.reserve_seqs(&st)?;
        for lane in Lane::ALL {
            let recs = &per_lane[lane.index()];
            if !recs.is_empty() {
                inner.write_lane(&mut st, lane, recs, now)?;
                inner.enforce_quota(&mut st, lane)?;
            }
        }
        // After the blocks: state never lands in the log ahead of the records it explains.
        for (call, result) in calls.iter().zip(&results) {
            if matches!(result, Outcome::Done(Ok(_))) {
                for (key, value) in &call.state {
                    inner.write_state(key, value)?;
                }
            }
        }
        inner.expire(&mut st, now)?;
        inner.persist_next_seq(st.next_seq)?;
        Ok(())
    })();
    let durable_seq = st.next_seq - 1;
    drop(st);
    let wrote = std::time::Instant::now();
    let outcome = written.and_then(|()| inner.durable_flush());
    match outcome {
        Ok(()) => {
            inner.commit_write.observe(wrote - began, 1);
            inner.commit_flush.observe(wrote.elapsed(), 1);
            inner.note_durable(durable_seq);
            inner
                .commits
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            inner.durable_tx.send_if_modified(|v| {
                let changed = *v != durable_seq;
                *v = durable_seq;
                changed
            });
        }
        Err(e) => {
            error!(error = %e, "buffer: group commit failed");
            inner.note_write_error(&e);
            let e = Arc::new(e);
            for r in &mut results {
                if let Outcome::Done(r @ Ok(_)) = r {
                    *r = Err(AppendError::Storage(e.clone()));
                }
            }
        }
    }
    results
        .into_iter()
        .zip(calls)
        .map(|(outcome, call)| (outcome, call.state))
        .collect()
}
