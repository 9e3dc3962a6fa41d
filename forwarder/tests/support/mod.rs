//! A real buffer in a temp dir, records to put in it, a forwarder to run over it, and the
//! scripted upstream of `test_peers` to send to.

#![allow(dead_code)]

use std::time::Duration;

use gateway_buffer::{
    AlarmEvent, AlarmState, Buffer, BufferOptions, Reading, Record, Severity, Source,
};
use gateway_forwarder::{ForwarderDriver, ForwarderHandle, ForwarderOptions};
use test_peers::{Reply, Upstream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// An upstream that answers `script` first, then 200.
pub async fn scripted(script: impl IntoIterator<Item = Reply>) -> Upstream {
    let upstream = Upstream::start().await;
    upstream.push_replies(script);
    upstream
}

/// A real buffer in a temp dir, with its committer running.
pub struct TestBuffer {
    pub buffer: Buffer,
    pub shutdown: CancellationToken,
    committer: JoinHandle<()>,
}

impl TestBuffer {
    pub fn open(dir: &std::path::Path) -> TestBuffer {
        let mut opts = BufferOptions::new(dir);
        opts.consumers = vec![gateway_forwarder::CONSUMER.to_string()];
        opts.commit_interval_ms = 1;
        let (buffer, committer) = Buffer::open(opts).unwrap();
        let shutdown = CancellationToken::new();
        let token = shutdown.clone();
        let committer = tokio::spawn(async move {
            committer.run(token).await.unwrap();
        });
        TestBuffer {
            buffer,
            shutdown,
            committer,
        }
    }

    /// Stops the committer and waits for it, so the database can be reopened.
    pub async fn close(self) {
        self.shutdown.cancel();
        drop(self.buffer);
        self.committer.await.unwrap();
    }
}

pub fn reading(i: usize) -> Record {
    Record::Reading(Reading {
        device: format!("dev-{}", i % 10),
        metric: "temperature".into(),
        value: 20.0 + (i % 100) as f64 / 10.0,
        unit: if i.is_multiple_of(2) {
            Some("C".into())
        } else {
            None
        },
        ts_ms: 1_764_081_600_000 + i as i64,
        source: if i.is_multiple_of(3) {
            Source::Serial
        } else {
            Source::Mqtt
        },
    })
}

pub fn alarm(i: usize) -> Record {
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
        value: 36.2,
        threshold: Some(35.0),
        ts_ms: 1_764_081_600_000 + i as i64,
    })
}

/// Options suited to tests: fast retries, short timeouts, no linger unless asked, and one
/// readings batch at a time (strict order) unless a test asks for more.
pub fn options(url: &str) -> ForwarderOptions {
    let mut o = ForwarderOptions::new("gw-test", url.parse().unwrap());
    o.max_in_flight = 1;
    o.linger = Duration::from_millis(20);
    o.timeout = Duration::from_secs(5);
    o.retry_initial = Duration::from_millis(20);
    o.retry_max = Duration::from_millis(100);
    o.compression = gateway_forwarder::Compression::None;
    o
}

/// A started forwarder: its handle, the token that stops it, and the driver's task.
pub struct Running {
    pub handle: ForwarderHandle,
    pub shutdown: CancellationToken,
    pub task: JoinHandle<Result<(), gateway_forwarder::ForwarderError>>,
}

impl Running {
    pub fn spawn(handle: ForwarderHandle, driver: ForwarderDriver) -> Running {
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(driver.run(shutdown.clone(), Duration::from_secs(2)));
        Running {
            handle,
            shutdown,
            task,
        }
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.unwrap().unwrap();
    }
}
