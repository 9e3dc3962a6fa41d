//! The cloud end: a real HTTP server that records every WIRE.md §3 batch and answers from a
//! script.

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::Value;
use std::collections::VecDeque;
use std::io::Read as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// How the receiver answers one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// Wait this long before answering.
    pub delay: Duration,
}

impl Reply {
    /// Answer `status` at once.
    pub fn status(status: u16) -> Reply {
        Reply {
            status,
            delay: Duration::ZERO,
        }
    }
}

/// One request as received.
#[derive(Debug, Clone)]
pub struct Batch {
    /// Position among all requests, from 0.
    pub index: usize,
    /// `lane` of the body.
    pub lane: String,
    /// `gateway_id` of the body.
    pub gateway_id: String,
    /// `records` of the body.
    pub records: Vec<Value>,
    /// The `Idempotency-Key` header.
    pub idempotency_key: Option<String>,
    /// The `Content-Encoding` header.
    pub content_encoding: Option<String>,
    /// The status we answered.
    pub status: u16,
    /// When it arrived.
    pub arrived: Instant,
}

impl Batch {
    /// Answered with 2xx: the gateway counts it delivered.
    pub fn delivered(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The `seq` of every record.
    pub fn seqs(&self) -> Vec<u64> {
        self.records
            .iter()
            .map(|r| r["seq"].as_u64().expect("record without a numeric seq"))
            .collect()
    }
}

#[derive(Debug, Default)]
struct Shared {
    batches: Vec<Batch>,
    script: VecDeque<Reply>,
    default: Option<Reply>,
    /// Requests that were not a WIRE.md §3 batch: what was wrong.
    errors: Vec<String>,
}

/// A receiver on 127.0.0.1 with a port bound to 0. Stops when dropped.
#[derive(Debug)]
pub struct Receiver {
    url: String,
    shared: Arc<Mutex<Shared>>,
    stop: CancellationToken,
}

impl Receiver {
    /// Starts it on the current tokio runtime; answers 200 until told otherwise.
    pub async fn start() -> Receiver {
        let shared = Arc::new(Mutex::new(Shared::default()));
        let app = Router::new()
            .route("/ingest", post(handle))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind receiver");
        let addr = listener.local_addr().expect("receiver addr");
        let stop = CancellationToken::new();
        let token = stop.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(token.cancelled_owned())
                .await;
        });
        Receiver {
            url: format!("http://{addr}/ingest"),
            shared,
            stop,
        }
    }

    /// The URL to put in `upstream.url`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Answers these first, in order, then the default.
    pub fn push_replies(&self, replies: impl IntoIterator<Item = Reply>) {
        self.shared.lock().unwrap().script.extend(replies);
    }

    /// The answer once the script is used up (200 at first).
    pub fn set_default(&self, reply: Reply) {
        self.shared.lock().unwrap().default = Some(reply);
    }

    /// Every request so far, in arrival order.
    pub fn batches(&self) -> Vec<Batch> {
        self.shared.lock().unwrap().batches.clone()
    }

    /// Requests that were not well-formed batches (should stay empty).
    pub fn errors(&self) -> Vec<String> {
        self.shared.lock().unwrap().errors.clone()
    }

    /// Every record of `lane` in batches answered with 2xx, in arrival order (duplicates kept).
    pub fn delivered_records(&self, lane: &str) -> Vec<Value> {
        delivered_records(&self.shared.lock().unwrap().batches, lane)
    }

    /// Number of records of `lane` in batches answered with 2xx.
    pub fn delivered_count(&self, lane: &str) -> usize {
        delivered_count(&self.shared.lock().unwrap().batches, lane)
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn handle(
    State(shared): State<Arc<Mutex<Shared>>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let arrived = Instant::now();
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let encoding = header("content-encoding");
    let parsed = decode(&body, encoding.as_deref());
    let reply = {
        let mut s = shared.lock().unwrap();
        let reply = match &parsed {
            Err(_) => Reply::status(400),
            Ok(_) => s
                .script
                .pop_front()
                .or(s.default)
                .unwrap_or(Reply::status(200)),
        };
        match parsed {
            Ok((lane, gateway_id, records)) => {
                let index = s.batches.len();
                s.batches.push(Batch {
                    index,
                    lane,
                    gateway_id,
                    records,
                    idempotency_key: header("idempotency-key"),
                    content_encoding: encoding,
                    status: reply.status,
                    arrived,
                });
            }
            Err(e) => s.errors.push(e),
        }
        reply
    };
    if !reply.delay.is_zero() {
        tokio::time::sleep(reply.delay).await;
    }
    StatusCode::from_u16(reply.status)
        .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
        .into_response()
}

/// Body → (lane, gateway_id, records), or what is wrong with it.
pub(crate) fn decode(
    body: &[u8],
    encoding: Option<&str>,
) -> Result<(String, String, Vec<Value>), String> {
    let json = match encoding {
        Some("gzip") => {
            let mut out = Vec::new();
            flate2::read::GzDecoder::new(body)
                .read_to_end(&mut out)
                .map_err(|e| format!("Content-Encoding: gzip but not gzip: {e}"))?;
            out
        }
        None => body.to_vec(),
        Some(other) => return Err(format!("unexpected Content-Encoding {other}")),
    };
    let v: Value = serde_json::from_slice(&json).map_err(|e| format!("body is not JSON: {e}"))?;
    let lane = v["lane"]
        .as_str()
        .filter(|l| *l == "readings" || *l == "alarms")
        .ok_or_else(|| format!("bad lane in {v}"))?
        .to_owned();
    let gateway_id = v["gateway_id"]
        .as_str()
        .ok_or_else(|| format!("no gateway_id in {v}"))?
        .to_owned();
    let records = v["records"]
        .as_array()
        .ok_or_else(|| format!("no records array in {v}"))?
        .clone();
    if records.is_empty() {
        return Err("empty batch".into());
    }
    Ok((lane, gateway_id, records))
}

/// Every record of `lane` in `batches` answered with 2xx, in arrival order (duplicates kept).
pub(crate) fn delivered_records(batches: &[Batch], lane: &str) -> Vec<Value> {
    batches
        .iter()
        .filter(|b| b.delivered() && b.lane == lane)
        .flat_map(|b| b.records.iter().cloned())
        .collect()
}

/// Number of records of `lane` in `batches` answered with 2xx.
pub(crate) fn delivered_count(batches: &[Batch], lane: &str) -> usize {
    batches
        .iter()
        .filter(|b| b.delivered() && b.lane == lane)
        .map(|b| b.records.len())
        .sum()
}
