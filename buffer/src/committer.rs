//! The group-commit driver.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error};

use crate::buffer::Inner;
use crate::error::{AppendError, BufferError};
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
    pub(crate) reply: oneshot::Sender<Result<Vec<u64>, AppendError>>,
    /// When the append was queued: the commit window is measured from the group's first one.
    pub(crate) arrived: tokio::time::Instant,
}

/// Drives group commit. Spawn `committer.run(shutdown)` once; appends complete only while it
/// runs. On shutdown it commits what is queued, flushes, and returns.
#[derive(Debug)]
pub struct Committer {
    inner: Arc<Inner>,
    rx: mpsc::Receiver<AppendRequest>,
}

impl std::fmt::Debug for AppendRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppendRequest")
            .field("records", &self.records.len())
            .finish()
    }
}

impl Committer {
    pub(crate) fn new(inner: Arc<Inner>, rx: mpsc::Receiver<AppendRequest>) -> Self {
        Committer { inner, rx }
    }

    /// Run until `shutdown` is cancelled or every [`crate::Buffer`] handle is dropped.
    /// Returns the error of the final flush, if any.
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<(), BufferError> {
        let interval = Duration::from_millis(self.inner.opts.commit_interval_ms);
        let max_records = self.inner.opts.commit_max_records;
        let mut tick = tokio::time::interval(IDLE_FLUSH_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // Cancel safety: `recv` and `tick` lose nothing when another branch wins.
            let first = tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                r = self.rx.recv() => match r {
                    Some(r) => r,
                    None => break,
                },
                _ = tick.tick() => {
                    self.idle().await;
                    continue;
                }
            };
            let first_arrived = first.arrived;
            let mut n = first.records.len();
            let mut group = vec![first];
            // The window runs from when the first append was queued, not from when the
            // committer got to it: appends that queued during a slow flush have waited already,
            // so under load groups go out back to back and the window only adds latency when
            // the buffer is idle.
            let deadline = first_arrived + interval;
            while n < max_records {
                match self.rx.try_recv() {
                    Ok(r) => {
                        n += r.records.len();
                        group.push(r);
                        continue;
                    }
                    Err(mpsc::error::TryRecvError::Empty) if !interval.is_zero() => {}
                    Err(_) => break,
                }
                tokio::select! {
                    biased;
                    r = self.rx.recv() => match r {
                        Some(r) => {
                            n += r.records.len();
                            group.push(r);
                        }
                        None => break,
                    },
                    _ = tokio::time::sleep_until(deadline) => break,
                    _ = shutdown.cancelled() => break,
                }
            }
            self.commit(group).await;
        }
        // Shutdown: refuse new appends, commit what was already queued, flush.
        self.rx.close();
        let mut rest = Vec::new();
        while let Ok(r) = self.rx.try_recv() {
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

    async fn idle(&self) {
        let inner = self.inner.clone();
        let done = tokio::task::spawn_blocking(move || -> Result<(), BufferError> {
            let now = inner.opts.clock.now_ms();
            let expired = {
                let mut st = inner.lock();
                inner.expire(&mut st, now)?
            };
            if expired > 0 || inner.take_dirty() {
                inner.durable_flush()?;
            }
            Ok(())
        })
        .await;
        if let Ok(Err(e)) = done {
            error!(error = %e, "buffer: idle flush failed");
        }
    }

    async fn commit(&self, group: Vec<AppendRequest>) {
        let inner = self.inner.clone();
        let (replies, records): (Vec<_>, Vec<_>) =
            group.into_iter().map(|r| (r.reply, r.records)).unzip();
        let results = tokio::task::spawn_blocking(move || commit_group(&inner, records))
            .await
            .unwrap_or_else(|e| {
                error!(error = %e, "buffer: commit task failed");
                Vec::new()
            });
        // A missing result (the commit task panicked) drops the reply: that caller sees Closed.
        for (reply, result) in replies.into_iter().zip(results) {
            let _ = reply.send(result);
        }
    }
}

/// Assign seqs, write one block per lane, persist the counter, flush once, publish.
fn commit_group(inner: &Inner, calls: Vec<Arc<[Record]>>) -> Vec<Result<Vec<u64>, AppendError>> {
    let now = inner.opts.clock.now_ms();
    let mut results = Vec::with_capacity(calls.len());
    let mut st = inner.lock();
    let mut per_lane: [Vec<(u64, &Record)>; 2] = [Vec::new(), Vec::new()];
    for records in &calls {
        let full = Lane::ALL
            .into_iter()
            .find(|&l| records.iter().any(|r| r.lane() == l) && inner.lane_full(&st, l));
        if let Some(lane) = full {
            results.push(Err(AppendError::Full { lane }));
            continue;
        }
        let mut seqs = Vec::with_capacity(records.len());
        for r in records.iter() {
            let seq = st.next_seq;
            st.next_seq += 1;
            per_lane[r.lane().index()].push((seq, r));
            seqs.push(seq);
        }
        results.push(Ok(seqs));
    }
    let written = (|| -> Result<(), BufferError> {
        for lane in Lane::ALL {
            let recs = &per_lane[lane.index()];
            if !recs.is_empty() {
                inner.write_lane(&mut st, lane, recs, now)?;
                inner.enforce_quota(&mut st, lane)?;
            }
        }
        inner.expire(&mut st, now)?;
        inner.persist_next_seq(st.next_seq)?;
        Ok(())
    })();
    let durable_seq = st.next_seq - 1;
    drop(st);
    let outcome = written.and_then(|()| inner.durable_flush());
    match outcome {
        Ok(()) => {
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
            let e = Arc::new(e);
            for r in &mut results {
                if r.is_ok() {
                    *r = Err(AppendError::Storage(e.clone()));
                }
            }
        }
    }
    results
}
