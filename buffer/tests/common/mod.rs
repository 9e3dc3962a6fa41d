//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::Path;

use gateway_buffer::{
    AlarmEvent, AlarmState, Buffer, BufferError, BufferOptions, Lane, Reading, Record, Severity,
    Source,
};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub const TS0: i64 = 1_764_081_600_000;

pub fn reading(i: u64) -> Record {
    Record::Reading(Reading {
        device: "dev-0042".into(),
        metric: "temperature".into(),
        value: 20.0 + (i % 100) as f64 / 10.0,
        unit: Some("C".into()),
        ts_ms: TS0 + i as i64 * 1000,
        source: Source::Mqtt,
    })
}

pub fn alarm(i: u64) -> Record {
    Record::Alarm(AlarmEvent {
        alarm: "overheat".into(),
        state: if i.is_multiple_of(2) {
            AlarmState::Raised
        } else {
            AlarmState::Cleared
        },
        severity: Severity::Critical,
        device: format!("dev-{i}"),
        metric: "temperature".into(),
        value: 36.0 + i as f64,
        threshold: Some(35.0),
        ts_ms: TS0 + i as i64,
    })
}

/// Small options for tests: fast commits, tiny cache.
pub fn opts(dir: &Path) -> BufferOptions {
    let mut o = BufferOptions::new(dir);
    o.commit_interval_ms = 0;
    o.cache_capacity_bytes = 1024 * 1024;
    o
}

/// An open buffer whose committer runs on the current runtime.
pub struct Running {
    pub buffer: Buffer,
    pub shutdown: CancellationToken,
    pub task: JoinHandle<Result<(), BufferError>>,
}

impl Running {
    /// Open, waiting (≤ 5 s) while a previous instance in this process still holds the
    /// database lock: sled finishes log writes of a dropped database on its own threads, and an
    /// aborted committer's last commit may still be running in the blocking pool.
    pub fn open(o: BufferOptions) -> Running {
        Running::open_with(o, Buffer::open)
    }

    /// [`Running::open`] through another opening function (same options, other knobs).
    pub fn open_with(
        o: BufferOptions,
        open: impl Fn(BufferOptions) -> Result<(Buffer, gateway_buffer::Committer), BufferError>,
    ) -> Running {
        for _ in 0..500 {
            match open(o.clone()) {
                Ok((buffer, committer)) => {
                    let shutdown = CancellationToken::new();
                    let task = tokio::spawn(committer.run(shutdown.clone()));
                    return Running {
                        buffer,
                        shutdown,
                        task,
                    };
                }
                Err(e) if e.is_retryable() => {
                    std::thread::sleep(std::time::Duration::from_millis(10))
                }
                Err(e) => panic!("open: {e}"),
            }
        }
        panic!("database still locked after 5 s");
    }

    /// Stop the committer and drop every handle, so the database can be reopened.
    pub async fn close(self) {
        self.shutdown.cancel();
        self.task
            .await
            .expect("committer task")
            .expect("final flush");
        drop(self.buffer);
    }
}

/// Open the buffer's sled database under `dir` directly (to rewrite it as an older version left
/// it), waiting (≤ 5 s) like [`Running::open`] while a closed buffer's sled threads still hold
/// the lock.
pub fn open_raw_sled(dir: &std::path::Path) -> sled::Db {
    let path = dir.join(gateway_buffer::DB_DIR_NAME);
    let mut last = None;
    for _ in 0..500 {
        match sled::open(&path) {
            Ok(db) => return db,
            // sled reports a held lock as an `Io` error of kind `Other`.
            Err(sled::Error::Io(e)) => {
                last = Some(e);
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Err(e) => panic!("sled open: {e}"),
        }
    }
    panic!("database still locked after 5 s: {last:?}");
}

/// Read the whole lane for `consumer` from its cursor.
pub fn read_all(b: &Buffer, consumer: &str, lane: Lane) -> Vec<gateway_buffer::Stored> {
    let mut out = Vec::new();
    let mut after = None;
    loop {
        let batch = b.read(consumer, lane, after, 1000, usize::MAX).unwrap();
        match batch.last() {
            Some(s) => after = Some(s.seq),
            None => return out,
        }
        out.extend(batch);
    }
}
