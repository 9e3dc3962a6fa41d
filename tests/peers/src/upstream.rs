//! The cloud end of a test: a real HTTP server on 127.0.0.1 that records every request to
//! `POST /ingest` as a WIRE.md §3 [`Batch`] and answers from a script.
//!
//! It fails in every way a forwarder must survive: any status, a status with a body,
//! `Retry-After`, slow answers, no answer at all ([`Reply::Hang`]), one poisoned batch refused on
//! every re-send ([`Poison`]), and down (connections refused, open ones dropped) then up again on
//! the same port ([`Upstream::go_down`], [`Upstream::come_up`]). It also serves HTTPS, asking
//! for a client certificate if told to ([`Upstream::start_tls`]).
//!
//! # Guarantees
//! - Binds port 0; the public port is kept for the whole test, across down and up.
//! - Every response leaves in one write: sockets have `TCP_NODELAY` set, so a response is never
//!   held back ~40 ms by Nagle's algorithm waiting for a delayed ACK.
//! - A body that is not a WIRE.md §3 batch (gzip or plain JSON, `lane` readings or alarms, a
//!   `gateway_id`, a non-empty `records` array) is answered 400 without using the script, and
//!   recorded in [`Upstream::errors`], not as a batch.
//! - A request never answered (a hang) is recorded with status 0, which [`Batch::delivered`]
//!   treats as not delivered: the client never learned of a success.
//! - Stops when dropped.
//!
//! How it is built: the HTTP server (axum) listens on a private port for the whole test; the
//! public port is a TCP relay in front of it, so going down really closes the listener *and*
//! every open (keep-alive) connection, which a stopped axum server would not do.

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::serve::ListenerExt as _;
use serde_json::Value;
use std::collections::VecDeque;
use std::io::Read as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// How one request is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    /// This status at once, with an empty body.
    Status(u16),
    /// This status and body at once.
    Body { status: u16, body: &'static str },
    /// This status (429 or 503, say) with `Retry-After: secs`.
    RetryAfter { status: u16, secs: u64 },
    /// Wait `delay`, then answer the status.
    Slow { status: u16, delay: Duration },
    /// Never answer: hold the request until the client gives up or the upstream goes down.
    Hang,
}

impl Reply {
    /// The status the client gets; 0 for none.
    fn answered(self) -> u16 {
        match self {
            Reply::Status(s)
            | Reply::Body { status: s, .. }
            | Reply::RetryAfter { status: s, .. }
            | Reply::Slow { status: s, .. } => s,
            Reply::Hang => 0,
        }
    }
}

/// Refuse the `nth` (from 0) readings-lane batch with `status`, and every re-send of the same
/// seqs (the same first seq): a batch the cloud will never take (WIRE.md §3: a 4xx other than
/// 408/429 dead-letters it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Poison {
    pub nth: usize,
    pub status: u16,
}

/// What an HTTPS upstream presents and asks for.
#[derive(Debug, Clone)]
pub struct TlsServer {
    /// PEM certificate and key of the server (for `127.0.0.1`).
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Require a client certificate signed by this CA (PEM); `None`: ask for none.
    pub client_ca: Option<PathBuf>,
}

/// One well-formed request as received.
#[derive(Debug, Clone)]
pub struct Batch {
    /// Position among all batches, from 0.
    pub index: usize,
    /// When it arrived.
    pub arrived: Instant,
    /// `lane` of the body.
    pub lane: String,
    /// `gateway_id` of the body.
    pub gateway_id: String,
    /// `records` of the body.
    pub records: Vec<Value>,
    /// The `Idempotency-Key` header.
    pub idempotency_key: Option<String>,
    /// The `Authorization` header.
    pub authorization: Option<String>,
    /// The `Content-Encoding` header.
    pub content_encoding: Option<String>,
    /// Every header.
    pub headers: HeaderMap,
    /// The body as sent.
    pub raw: Vec<u8>,
    /// The body after its `Content-Encoding`: the JSON text.
    pub json: Vec<u8>,
    /// The status answered; 0 for none (a hang).
    pub status: u16,
}

impl Batch {
    /// Answered with 2xx: the client counts it delivered.
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
struct Script {
    batches: Vec<Batch>,
    replies: VecDeque<Reply>,
    default: Option<Reply>,
    poison: Option<Poison>,
    /// First seq of the poisoned batch, once it was picked.
    poisoned_first_seq: Option<u64>,
    readings_batches: usize,
    /// Requests that were not a WIRE.md §3 batch: what was wrong.
    errors: Vec<String>,
}

#[derive(Debug, Default)]
struct Shared {
    script: Mutex<Script>,
    /// Requests being answered now, and the most seen at once since the last reset.
    on_wire: AtomicUsize,
    max_on_wire: AtomicUsize,
    handshake_errors: Mutex<Vec<String>>,
}

/// The scripted upstream. Answers 200 until told otherwise.
#[derive(Debug)]
pub struct Upstream {
    scheme: &'static str,
    addr: SocketAddr,
    backend: SocketAddr,
    shared: Arc<Shared>,
    server: CancellationToken,
    relay: Option<CancellationToken>,
}

impl Upstream {
    /// Serves HTTP on a port of its own; must be called on a tokio runtime.
    pub async fn start() -> Upstream {
        let backend = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind upstream backend");
        Upstream::serve("http", backend, None).await
    }

    /// The same over HTTPS (rustls): `https://127.0.0.1:PORT/ingest`. A failed handshake (say,
    /// no client certificate when one is required) is recorded in [`Upstream::handshake_errors`]
    /// and never reaches the script.
    pub async fn start_tls(tls: &TlsServer) -> Upstream {
        let backend = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind upstream backend");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_config(tls)));
        Upstream::serve("https", backend, Some(acceptor)).await
    }

    /// [`Upstream::start`], then [`Upstream::go_down`]: its URL refuses connections until
    /// [`Upstream::come_up`].
    pub async fn start_down() -> Upstream {
        let mut up = Upstream::start().await;
        up.go_down().await;
        up
    }

    async fn serve(
        scheme: &'static str,
        backend: TcpListener,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> Upstream {
        let shared = Arc::new(Shared::default());
        let app = Router::new()
            .route("/ingest", post(handle))
            .with_state(shared.clone());
        let backend_addr = backend.local_addr().expect("backend addr");
        let server = CancellationToken::new();
        let token = server.clone();
        match tls {
            None => {
                let listener = backend.tap_io(|tcp| {
                    let _ = tcp.set_nodelay(true);
                });
                tokio::spawn(async move {
                    tokio::select! {
                        _ = axum::serve(listener, app) => {}
                        _ = token.cancelled() => {}
                    }
                });
            }
            Some(acceptor) => {
                let listener = TlsListener {
                    tcp: backend,
                    acceptor,
                    shared: shared.clone(),
                };
                tokio::spawn(async move {
                    tokio::select! {
                        _ = axum::serve(listener, app) => {}
                        _ = token.cancelled() => {}
                    }
                });
            }
        }
        let public = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind upstream");
        let mut up = Upstream {
            scheme,
            addr: public.local_addr().expect("upstream addr"),
            backend: backend_addr,
            shared,
            server,
            relay: None,
        };
        up.relay(public);
        up
    }

    /// Relays every connection on `listener` to the HTTP server until the relay is cancelled;
    /// then the listener and every relayed connection are dropped.
    fn relay(&mut self, listener: TcpListener) {
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
                            if let Ok(mut server) = TcpStream::connect(backend).await {
                                // The relay writes what it reads as it reads it: no Nagle here
                                // either.
                                let _ = client.set_nodelay(true);
                                let _ = server.set_nodelay(true);
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

    /// The URL to give the client: `http://127.0.0.1:PORT/ingest` (`https` from
    /// [`Upstream::start_tls`]).
    pub fn url(&self) -> String {
        format!("{}://{}/ingest", self.scheme, self.addr)
    }

    /// Its public address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Whether it is listening.
    pub fn is_up(&self) -> bool {
        self.relay.is_some()
    }

    /// Stops listening and drops every connection: the client sees connection refused or reset.
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
            match TcpListener::bind(self.addr).await {
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
    pub fn push_replies(&self, replies: impl IntoIterator<Item = Reply>) {
        self.script().replies.extend(replies);
    }

    /// The answer once the script is used up (200 at first).
    pub fn set_default(&self, reply: Reply) {
        self.script().default = Some(reply);
    }

    /// Refuses one readings batch (and every re-send of it); see [`Poison`].
    pub fn set_poison(&self, poison: Poison) {
        self.script().poison = Some(poison);
    }

    /// Every batch so far, in arrival order.
    pub fn batches(&self) -> Vec<Batch> {
        self.script().batches.clone()
    }

    /// `f` over every batch so far, without copying them.
    pub fn inspect<R>(&self, f: impl FnOnce(&[Batch]) -> R) -> R {
        f(&self.script().batches)
    }

    /// Batches answered with 2xx, in arrival order.
    pub fn delivered(&self) -> Vec<Batch> {
        self.inspect(|b| b.iter().filter(|b| b.delivered()).cloned().collect())
    }

    /// Every record of `lane` in batches answered with 2xx, in arrival order (duplicates kept).
    pub fn delivered_records(&self, lane: &str) -> Vec<Value> {
        self.inspect(|b| {
            b.iter()
                .filter(|b| b.delivered() && b.lane == lane)
                .flat_map(|b| b.records.iter().cloned())
                .collect()
        })
    }

    /// Number of records of `lane` in batches answered with 2xx.
    pub fn delivered_count(&self, lane: &str) -> usize {
        self.inspect(|b| {
            b.iter()
                .filter(|b| b.delivered() && b.lane == lane)
                .map(|b| b.records.len())
                .sum()
        })
    }

    /// Seqs of every batch of `lane` answered with 2xx, in arrival order.
    pub fn delivered_seqs(&self, lane: &str) -> Vec<u64> {
        self.inspect(|b| {
            b.iter()
                .filter(|b| b.delivered() && b.lane == lane)
                .flat_map(|b| b.seqs())
                .collect()
        })
    }

    /// Requests that were not well-formed batches (should stay empty).
    pub fn errors(&self) -> Vec<String> {
        self.script().errors.clone()
    }

    /// Why TLS handshakes failed, in order ([`Upstream::start_tls`] only).
    pub fn handshake_errors(&self) -> Vec<String> {
        self.shared.handshake_errors.lock().unwrap().clone()
    }

    /// The most requests being answered at once since the start or the last reset.
    pub fn max_on_wire(&self) -> usize {
        self.shared.max_on_wire.load(SeqCst)
    }

    /// Starts counting [`Upstream::max_on_wire`] afresh, from the requests being answered now.
    pub fn reset_max_on_wire(&self) {
        let now = self.shared.on_wire.load(SeqCst);
        self.shared.max_on_wire.store(now, SeqCst);
    }

    /// Waits until `done` holds over the batches so far, checking every [`crate::POLL`]; panics
    /// after `timeout`, saying how many batches had arrived.
    pub async fn wait_until(&self, timeout: Duration, done: impl Fn(&[Batch]) -> bool) {
        let deadline = Instant::now() + timeout;
        while !self.inspect(&done) {
            assert!(
                Instant::now() < deadline,
                "condition not met within {timeout:?}; {} batches received",
                self.inspect(<[Batch]>::len)
            );
            tokio::time::sleep(crate::POLL).await;
        }
    }

    fn script(&self) -> std::sync::MutexGuard<'_, Script> {
        self.shared.script.lock().unwrap()
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        if let Some(stop) = self.relay.take() {
            stop.cancel();
        }
        self.server.cancel();
    }
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

async fn handle(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let _on_wire = OnWire::new(&shared);
    let arrived = Instant::now();
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let encoding = header("content-encoding");
    let reply = {
        let mut s = shared.script.lock().unwrap();
        match decode(&body, encoding.as_deref()) {
            Err(e) => {
                s.errors.push(e);
                Reply::Status(400)
            }
            Ok((json, lane, gateway_id, records)) => {
                let reply = match s.poisoned(&lane, &records) {
                    Some(r) => r,
                    None => s
                        .replies
                        .pop_front()
                        .or(s.default)
                        .unwrap_or(Reply::Status(200)),
                };
                let index = s.batches.len();
                s.batches.push(Batch {
                    index,
                    arrived,
                    lane,
                    gateway_id,
                    records,
                    idempotency_key: header("idempotency-key"),
                    authorization: header("authorization"),
                    content_encoding: encoding,
                    headers: headers.clone(),
                    raw: body.to_vec(),
                    json,
                    status: reply.answered(),
                });
                reply
            }
        }
    };
    let status = |s: u16| StatusCode::from_u16(s).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    match reply {
        Reply::Status(s) => status(s).into_response(),
        Reply::Body { status: s, body } => (status(s), body).into_response(),
        Reply::RetryAfter { status: s, secs } => {
            let mut r = status(s).into_response();
            r.headers_mut()
                .insert("retry-after", HeaderValue::from(secs));
            r
        }
        Reply::Slow { status: s, delay } => {
            tokio::time::sleep(delay).await;
            status(s).into_response()
        }
        // Dropped (with the connection) when the client gives up or the relay goes down.
        Reply::Hang => std::future::pending::<Response>().await,
    }
}

impl Script {
    /// The poison's answer if this batch is the poisoned one or a re-send of it; counts
    /// readings batches.
    fn poisoned(&mut self, lane: &str, records: &[Value]) -> Option<Reply> {
        if lane != "readings" {
            return None;
        }
        let first_seq = records.first().and_then(|r| r["seq"].as_u64());
        let mut reply = None;
        if let Some(p) = self.poison {
            if self.poisoned_first_seq.is_none() && self.readings_batches == p.nth {
                self.poisoned_first_seq = first_seq;
            }
            if self.poisoned_first_seq.is_some() && self.poisoned_first_seq == first_seq {
                reply = Some(Reply::Status(p.status));
            }
        }
        self.readings_batches += 1;
        reply
    }
}

/// Body → (JSON text, lane, gateway_id, records), or what is wrong with it.
fn decode(
    body: &[u8],
    encoding: Option<&str>,
) -> Result<(Vec<u8>, String, String, Vec<Value>), String> {
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
    Ok((json, lane, gateway_id, records))
}

/// TCP accepts with a TLS handshake each; failed handshakes are recorded and skipped.
struct TlsListener {
    tcp: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    shared: Arc<Shared>,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((tcp, addr)) = self.tcp.accept().await else {
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let handshake = self.acceptor.accept(tcp);
            let failed = match tokio::time::timeout(Duration::from_secs(5), handshake).await {
                Ok(Ok(tls)) => return (tls, addr),
                Ok(Err(e)) => e.to_string(),
                Err(_) => "handshake timed out".into(),
            };
            self.shared.handshake_errors.lock().unwrap().push(failed);
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

fn server_config(tls: &TlsServer) -> rustls::ServerConfig {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let certs = CertificateDer::pem_file_iter(&tls.cert)
        .expect("server certificate")
        .collect::<Result<Vec<_>, _>>()
        .expect("server certificate PEM");
    let key = PrivateKeyDer::from_pem_file(&tls.key).expect("server key");
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("protocol versions");
    let builder = match &tls.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(ca).expect("client CA") {
                roots.add(cert.expect("client CA PEM")).expect("client CA");
            }
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                    .build()
                    .expect("client verifier");
            builder.with_client_cert_verifier(verifier)
        }
    };
    builder
        .with_single_cert(certs, key)
        .expect("server certificate and key")
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    const BATCH: &str = r#"{"gateway_id":"gw","lane":"readings","records":[{"seq":1},{"seq":2}]}"#;

    /// POSTs `body` on a fresh connection; the raw response.
    async fn post(up: &Upstream, body: &str) -> String {
        let mut s = TcpStream::connect(up.addr()).await.unwrap();
        let req = format!(
            "POST /ingest HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).await.unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out).await;
        out
    }

    #[tokio::test]
    async fn answers_from_the_script_then_the_default_and_records_each_batch() {
        let up = Upstream::start().await;
        up.push_replies([
            Reply::RetryAfter {
                status: 429,
                secs: 7,
            },
            Reply::Body {
                status: 400,
                body: "bad unit",
            },
        ]);
        up.set_default(Reply::Status(503));
        let first = post(&up, BATCH).await;
        assert!(first.starts_with("HTTP/1.1 429"), "{first}");
        assert!(
            first.to_ascii_lowercase().contains("retry-after: 7"),
            "{first}"
        );
        assert!(post(&up, BATCH).await.ends_with("bad unit"));
        assert!(post(&up, BATCH).await.starts_with("HTTP/1.1 503"));
        assert!(post(&up, "{}").await.starts_with("HTTP/1.1 400"));
        let batches = up.batches();
        let statuses: Vec<u16> = batches.iter().map(|b| b.status).collect();
        assert_eq!(statuses, [429, 400, 503]);
        assert_eq!(batches[0].seqs(), [1, 2]);
        assert_eq!(batches[0].json, BATCH.as_bytes());
        assert_eq!(up.errors().len(), 1, "{:?}", up.errors());
        assert_eq!(up.delivered_count("readings"), 0);
    }

    #[tokio::test]
    async fn a_poisoned_batch_is_refused_on_every_resend_and_others_pass() {
        let up = Upstream::start().await;
        up.set_poison(Poison {
            nth: 1,
            status: 422,
        });
        let other = BATCH.replace("\"seq\":1", "\"seq\":0");
        assert!(post(&up, &other).await.starts_with("HTTP/1.1 200"));
        assert!(post(&up, BATCH).await.starts_with("HTTP/1.1 422"));
        assert!(post(&up, BATCH).await.starts_with("HTTP/1.1 422"));
        assert!(post(&up, &other).await.starts_with("HTTP/1.1 200"));
        assert_eq!(up.delivered_seqs("readings"), [0, 2, 0, 2]);
    }

    #[tokio::test]
    async fn down_refuses_and_drops_connections_and_up_serves_on_the_same_port() {
        let mut up = Upstream::start().await;
        up.push_replies([Reply::Hang]);
        let addr = up.addr();
        let mut hung = TcpStream::connect(addr).await.unwrap();
        let req = format!(
            "POST /ingest HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{BATCH}",
            BATCH.len()
        );
        hung.write_all(req.as_bytes()).await.unwrap();
        up.wait_until(Duration::from_secs(5), |b| b.len() == 1)
            .await;
        up.go_down().await;
        assert!(!up.is_up());
        let mut rest = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), hung.read_to_end(&mut rest)).await;
        assert!(
            matches!(read, Ok(Ok(0)) | Ok(Err(_))),
            "the held connection is dropped: {read:?}"
        );
        assert!(TcpStream::connect(addr).await.is_err());
        up.come_up().await;
        assert_eq!(up.addr(), addr);
        assert!(post(&up, BATCH).await.starts_with("HTTP/1.1 200"));
        let statuses: Vec<u16> = up.batches().iter().map(|b| b.status).collect();
        assert_eq!(statuses, [0, 200]);
    }
}
