//! A real HTTP upstream that answers from a script, and a real buffer in a temp dir.

#![allow(dead_code)]

use std::collections::VecDeque;
use std::io::Read;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use gateway_buffer::{
    AlarmEvent, AlarmState, Buffer, BufferOptions, Reading, Record, Severity, Source,
};
use gateway_forwarder::{ForwarderDriver, ForwarderHandle, ForwarderOptions};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// What the server does with one request.
#[derive(Clone, Debug)]
pub enum Reply {
    /// Answer with this status and an empty body.
    Status(u16),
    /// Answer with this status and `Retry-After: <value>`.
    RetryAfter(u16, &'static str),
    /// Answer with this status and body.
    StatusBody(u16, &'static str),
    /// Sit on the request this long, then answer 200.
    Hang(Duration),
    /// Sit on the request this long, then answer with this status.
    After(Duration, u16),
}

/// One request as the server saw it.
#[derive(Clone, Debug)]
pub struct Received {
    pub at: Instant,
    pub headers: HeaderMap,
    /// The raw request body.
    pub raw: Vec<u8>,
    /// The body after gzip decoding, if it was gzipped.
    pub json: Vec<u8>,
    /// What the server answered.
    pub reply: Reply,
}

impl Received {
    pub fn key(&self) -> String {
        self.headers["idempotency-key"]
            .to_str()
            .unwrap()
            .to_string()
    }

    pub fn value(&self) -> serde_json::Value {
        serde_json::from_slice(&self.json).unwrap()
    }

    pub fn lane(&self) -> String {
        self.value()["lane"].as_str().unwrap().to_string()
    }

    pub fn seqs(&self) -> Vec<u64> {
        self.value()["records"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["seq"].as_u64().unwrap())
            .collect()
    }

    pub fn delivered(&self) -> bool {
        matches!(
            self.reply,
            Reply::Status(200..=299) | Reply::Hang(_) | Reply::After(_, 200..=299)
        )
    }
}

#[derive(Default)]
struct Shared {
    script: Mutex<VecDeque<Reply>>,
    /// The reply once the script is used up; `None`: 200.
    default: Mutex<Option<Reply>>,
    received: Mutex<Vec<Received>>,
    /// Requests being answered now, and the most seen at once since the last reset.
    on_wire: AtomicUsize,
    max_on_wire: AtomicUsize,
}

/// Counts a request as being answered until dropped (also when the client goes away).
struct OnWire<'a>(&'a Shared);

impl<'a> OnWire<'a> {
    fn new(shared: &'a Shared) -> Self {
        let now = shared.on_wire.fetch_add(1, SeqCst) + 1;
        shared.max_on_wire.fetch_max(now, SeqCst);
        OnWire(shared)
    }
}

impl Drop for OnWire<'_> {
    fn drop(&mut self) {
        self.0.on_wire.fetch_sub(1, SeqCst);
    }
}

/// The scripted upstream.
#[derive(Clone)]
pub struct Upstream {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    stop: CancellationToken,
}

async fn ingest(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let _on_wire = OnWire::new(&shared);
    let reply = shared.script.lock().unwrap().pop_front();
    let reply = reply
        .or_else(|| shared.default.lock().unwrap().clone())
        .unwrap_or(Reply::Status(200));
    let json = if headers.get("content-encoding").is_some_and(|v| v == "gzip") {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&body[..])
            .read_to_end(&mut out)
            .unwrap();
        out
    } else {
        body.to_vec()
    };
    shared.received.lock().unwrap().push(Received {
        at: Instant::now(),
        headers,
        raw: body.to_vec(),
        json,
        reply: reply.clone(),
    });
    let status = |s: u16| StatusCode::from_u16(s).unwrap();
    match reply {
        Reply::Status(s) => status(s).into_response(),
        Reply::RetryAfter(s, after) => (status(s), [("retry-after", after)]).into_response(),
        Reply::StatusBody(s, body) => (status(s), body).into_response(),
        Reply::Hang(d) => {
            tokio::time::sleep(d).await;
            StatusCode::OK.into_response()
        }
        Reply::After(d, s) => {
            tokio::time::sleep(d).await;
            status(s).into_response()
        }
    }
}

impl Upstream {
    /// Serves on a fresh port of 127.0.0.1.
    pub async fn start(script: impl IntoIterator<Item = Reply>) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Upstream::serve(listener, script)
    }

    /// Serves on `addr` (a port chosen earlier, for "down, then up").
    pub async fn start_on(addr: SocketAddr, script: impl IntoIterator<Item = Reply>) -> Upstream {
        let listener = TcpListener::bind(addr).await.unwrap();
        Upstream::serve(listener, script)
    }

    fn serve(listener: TcpListener, script: impl IntoIterator<Item = Reply>) -> Upstream {
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared::default());
        shared.script.lock().unwrap().extend(script);
        let stop = CancellationToken::new();
        let app = Router::new()
            .route("/ingest", post(ingest))
            .with_state(shared.clone());
        let signal = stop.clone();
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move { signal.cancelled().await })
                .await
                .unwrap();
        });
        Upstream { addr, shared, stop }
    }

    pub fn url(&self) -> String {
        format!("http://{}/ingest", self.addr)
    }

    /// What every request gets once the script is used up (200 until set).
    pub fn set_default(&self, reply: Reply) {
        *self.shared.default.lock().unwrap() = Some(reply);
    }

    /// The most requests answered at once since the start or the last reset.
    pub fn max_on_wire(&self) -> usize {
        self.shared.max_on_wire.load(SeqCst)
    }

    /// Starts counting [`Upstream::max_on_wire`] afresh, from the requests on the wire now.
    pub fn reset_max_on_wire(&self) {
        let now = self.shared.on_wire.load(SeqCst);
        self.shared.max_on_wire.store(now, SeqCst);
    }

    pub fn received(&self) -> Vec<Received> {
        self.shared.received.lock().unwrap().clone()
    }

    /// Requests answered 2xx.
    pub fn delivered(&self) -> Vec<Received> {
        self.received()
            .into_iter()
            .filter(|r| r.delivered())
            .collect()
    }

    /// Seqs of every 2xx-answered request, in arrival order, for one lane.
    pub fn delivered_seqs(&self, lane: &str) -> Vec<u64> {
        self.delivered()
            .iter()
            .filter(|r| r.lane() == lane)
            .flat_map(|r| r.seqs())
            .collect()
    }

    /// Waits (real time) until `cond` holds over what was received, or panics after `limit`.
    pub async fn wait_until(&self, limit: Duration, cond: impl Fn(&[Received]) -> bool) {
        let deadline = Instant::now() + limit;
        loop {
            if cond(&self.received()) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "condition not met within {limit:?}; received {} requests",
                self.received().len()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    pub fn stop(&self) {
        self.stop.cancel();
    }
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
