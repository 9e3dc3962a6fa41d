//! A cloud end that can fail in every way the forwarder must survive: down (connection
//! refused), any status, `Retry-After`, slow answers, hangs, and a poison rule that refuses one
//! particular batch with a 4xx.
//!
//! [`crate::Receiver`] answers from a script of status codes and delays on a port it keeps;
//! this one also gives its port up and takes the same port back ([`FaultyUpstream::go_down`],
//! [`FaultyUpstream::come_up`]) and sets headers. It records requests as the same
//! [`crate::Batch`] values, so the workload checks work on both. A request the server never
//! answered (a hang) is recorded with status 0, which [`crate::Batch::delivered`] treats as not
//! delivered: the gateway never learned of a success.

use crate::receiver::{Batch, decode, delivered_count, delivered_records};
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::Value;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// How one request is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Answer this status at once.
    Status(u16),
    /// Answer this status (429 or 503) with `Retry-After: secs`.
    RetryAfter { status: u16, secs: u64 },
    /// Wait, then answer the status.
    Slow { status: u16, delay: Duration },
    /// Never answer: hold the request until the client gives up.
    Hang,
}

impl Fault {
    fn status(self) -> u16 {
        match self {
            Fault::Status(s)
            | Fault::RetryAfter { status: s, .. }
            | Fault::Slow { status: s, .. } => s,
            Fault::Hang => 0,
        }
    }
}

/// Refuse the `nth` (from 0) readings-lane batch with `status`, and every re-send of the same
/// seqs: a batch the cloud will never take (WIRE.md §3: a 4xx other than 408/429 dead-letters it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Poison {
    pub nth: usize,
    pub status: u16,
}

#[derive(Debug, Default)]
struct Shared {
    batches: Vec<Batch>,
    script: VecDeque<Fault>,
    default: Option<Fault>,
    poison: Option<Poison>,
    /// First seq of the poisoned batch, once it was picked.
    poisoned_first_seq: Option<u64>,
    readings_batches: usize,
    errors: Vec<String>,
}

/// The fault-injecting cloud on 127.0.0.1, on a port it keeps across [`Self::go_down`] and
/// [`Self::come_up`]. Stops when dropped.
///
/// The HTTP server listens on a private port for the whole test; the public port is a TCP relay
/// in front of it, so going down really closes the listener *and* every open (keep-alive)
/// connection, which a stopped axum server would not do.
#[derive(Debug)]
pub struct FaultyUpstream {
    addr: SocketAddr,
    backend: SocketAddr,
    shared: Arc<Mutex<Shared>>,
    server: CancellationToken,
    relay: Option<CancellationToken>,
}

impl FaultyUpstream {
    /// Binds port 0 and serves; answers 200 until told otherwise.
    pub async fn start() -> FaultyUpstream {
        let shared = Arc::new(Mutex::new(Shared::default()));
        let app = Router::new()
            .route("/ingest", post(handle))
            .with_state(shared.clone());
        let backend_listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind upstream backend");
        let backend = backend_listener.local_addr().expect("backend addr");
        let server = CancellationToken::new();
        let token = server.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = axum::serve(backend_listener, app) => {}
                _ = token.cancelled() => {}
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind upstream");
        let addr = listener.local_addr().expect("upstream addr");
        let mut up = FaultyUpstream {
            addr,
            backend,
            shared,
            server,
            relay: None,
        };
        up.relay(listener);
        up
    }

    /// Binds port 0, then gives it up: connections are refused until [`Self::come_up`].
    pub async fn start_down() -> FaultyUpstream {
        let mut up = FaultyUpstream::start().await;
        up.go_down().await;
        up
    }

    /// Relays every connection on `listener` to the HTTP server until the relay is cancelled;
    /// then the listener and every relayed connection are dropped.
    fn relay(&mut self, listener: tokio::net::TcpListener) {
        let stop = CancellationToken::new();
        let token = stop.clone();
        let backend = self.backend;
        tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                tokio::select! {
                    _ = token.cancelled() => break,
                    accepted = listener.accept() => {
                        let Ok((mut client, _)) = accepted else { continue };
                        conns.spawn(async move {
                            if let Ok(mut server) = tokio::net::TcpStream::connect(backend).await {
                                let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                            }
                        });
                    }
                }
            }
            drop(listener);
            conns.shutdown().await;
        });
        self.relay = Some(stop);
    }

    /// The URL to put in `upstream.url`.
    pub fn url(&self) -> String {
        format!("http://{}/ingest", self.addr)
    }

    /// Whether it is listening.
    pub fn is_up(&self) -> bool {
        self.relay.is_some()
    }

    /// Stops listening and drops every connection: the gateway sees connection refused/reset.
    pub async fn go_down(&mut self) {
        if let Some(stop) = self.relay.take() {
            stop.cancel();
        }
        // The listener closes once the relay task has seen the cancellation.
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(self.addr).is_ok() {
            assert!(
                Instant::now() < deadline,
                "upstream still accepts on {}",
                self.addr
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Listens again on the same port.
    pub async fn come_up(&mut self) {
        assert!(self.relay.is_none(), "come_up: already up");
        let deadline = Instant::now() + Duration::from_secs(10);
        let listener = loop {
            match tokio::net::TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                Err(e) => {
                    assert!(
                        Instant::now() < deadline,
                        "could not bind {} again: {e}",
                        self.addr
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        };
        self.relay(listener);
    }

    /// Answers these first, in order, then the default.
    pub fn push_faults(&self, faults: impl IntoIterator<Item = Fault>) {
        self.shared.lock().unwrap().script.extend(faults);
    }

    /// The answer once the script is used up (200 at first).
    pub fn set_default(&self, fault: Fault) {
        self.shared.lock().unwrap().default = Some(fault);
    }

    /// Refuses one readings batch (and every re-send of it); see [`Poison`].
    pub fn set_poison(&self, poison: Poison) {
        self.shared.lock().unwrap().poison = Some(poison);
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

impl Drop for FaultyUpstream {
    fn drop(&mut self) {
        if let Some(stop) = self.relay.take() {
            stop.cancel();
        }
        self.server.cancel();
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
    let fault = {
        let mut s = shared.lock().unwrap();
        match decode(&body, encoding.as_deref()) {
            Err(e) => {
                s.errors.push(e);
                Fault::Status(400)
            }
            Ok((lane, gateway_id, records)) => {
                let first_seq = records.first().and_then(|r| r["seq"].as_u64());
                let mut fault = None;
                if lane == "readings" {
                    if let Some(p) = s.poison {
                        if s.poisoned_first_seq.is_none() && s.readings_batches == p.nth {
                            s.poisoned_first_seq = first_seq;
                        }
                        if s.poisoned_first_seq.is_some() && s.poisoned_first_seq == first_seq {
                            fault = Some(Fault::Status(p.status));
                        }
                    }
                    s.readings_batches += 1;
                }
                let fault = match fault {
                    Some(f) => f,
                    None => s
                        .script
                        .pop_front()
                        .or(s.default)
                        .unwrap_or(Fault::Status(200)),
                };
                let index = s.batches.len();
                s.batches.push(Batch {
                    index,
                    lane,
                    gateway_id,
                    records,
                    idempotency_key: header("idempotency-key"),
                    authorization: header("authorization"),
                    content_encoding: encoding,
                    status: fault.status(),
                    arrived,
                });
                fault
            }
        }
    };
    let status = |s: u16| StatusCode::from_u16(s).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    match fault {
        Fault::Status(s) => status(s).into_response(),
        Fault::RetryAfter { status: s, secs } => {
            let mut r = status(s).into_response();
            r.headers_mut()
                .insert("retry-after", HeaderValue::from(secs));
            r
        }
        Fault::Slow { status: s, delay } => {
            tokio::time::sleep(delay).await;
            status(s).into_response()
        }
        // Dropped (with the connection) when the client gives up or the relay goes down.
        Fault::Hang => std::future::pending::<Response>().await,
    }
}

impl FaultyUpstream {
    /// A barrier through the whole pipeline, as [`crate::GatewayProcess::barrier`] for this
    /// cloud: publishes one probe reading with a fresh value to the broker on `port` and waits
    /// (90 s) until it was delivered here. Readings are forwarded in seq order, so everything the
    /// gateway stored before the probe has been delivered by then.
    pub async fn barrier(&self, port: u16, gw: &crate::GatewayProcess) {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let value = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) as f64;
        let probe = crate::Message {
            topic: format!("sensors/{}/upstream_barrier", crate::workload::PROBE_DEVICE),
            payload: format!("{value}").into_bytes(),
        };
        let opts =
            crate::PublisherOptions::new(port, format!("upstream-barrier-{}", std::process::id()));
        crate::Publisher::publish_all(opts, vec![probe], Duration::from_secs(30)).await;
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let arrived = self.delivered_records("readings").iter().any(|r| {
                r["device"] == crate::workload::PROBE_DEVICE
                    && r["metric"] == "upstream_barrier"
                    && r["value"].as_f64() == Some(value)
            });
            if arrived {
                return;
            }
            if Instant::now() >= deadline {
                panic!(
                    "barrier probe {value} did not reach the upstream within 90 s\n{}",
                    gw.stderr_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
