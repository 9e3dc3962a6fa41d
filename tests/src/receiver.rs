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
use std::path::PathBuf;
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
    /// The `Authorization` header.
    pub authorization: Option<String>,
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
    handshake_errors: Arc<Mutex<Vec<String>>>,
}

/// What an HTTPS receiver presents and asks for.
#[derive(Debug, Clone)]
pub struct TlsServer {
    /// PEM certificate and key of the server (for `127.0.0.1`).
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Require a client certificate signed by this CA (PEM); `None`: ask for none.
    pub client_ca: Option<PathBuf>,
}

impl Receiver {
    /// Starts it on the current tokio runtime; answers 200 until told otherwise.
    pub async fn start() -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind receiver");
        let addr = listener.local_addr().expect("receiver addr");
        Receiver::serve(listener, format!("http://{addr}/ingest"), Arc::default())
    }

    /// The same receiver over HTTPS (rustls): `https://127.0.0.1:PORT/ingest`. A failed
    /// handshake (say, no client certificate when one is required) is recorded in
    /// [`Receiver::handshake_errors`] and never reaches the handler.
    pub async fn start_tls(tls: &TlsServer) -> Receiver {
        let tcp = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind receiver");
        let addr = tcp.local_addr().expect("receiver addr");
        let errors = Arc::new(Mutex::new(Vec::new()));
        let listener = TlsListener {
            tcp,
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(server_config(tls))),
            errors: errors.clone(),
        };
        Receiver::serve(listener, format!("https://{addr}/ingest"), errors)
    }

    fn serve<L>(listener: L, url: String, handshake_errors: Arc<Mutex<Vec<String>>>) -> Receiver
    where
        L: axum::serve::Listener,
        L::Addr: std::fmt::Debug,
    {
        let shared = Arc::new(Mutex::new(Shared::default()));
        let app = Router::new()
            .route("/ingest", post(handle))
            .with_state(shared.clone());
        let stop = CancellationToken::new();
        let token = stop.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(token.cancelled_owned())
                .await;
        });
        Receiver {
            url,
            shared,
            stop,
            handshake_errors,
        }
    }

    /// Why TLS handshakes failed, in order (HTTPS receivers only).
    pub fn handshake_errors(&self) -> Vec<String> {
        self.handshake_errors.lock().unwrap().clone()
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

/// TCP accepts with a TLS handshake each; failed handshakes are recorded and skipped.
struct TlsListener {
    tcp: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    errors: Arc<Mutex<Vec<String>>>,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((tcp, addr)) = self.tcp.accept().await else {
                continue;
            };
            let handshake = self.acceptor.accept(tcp);
            match tokio::time::timeout(Duration::from_secs(5), handshake).await {
                Ok(Ok(tls)) => return (tls, addr),
                Ok(Err(e)) => self.errors.lock().unwrap().push(e.to_string()),
                Err(_) => self
                    .errors
                    .lock()
                    .unwrap()
                    .push("handshake timed out".into()),
            }
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
                    authorization: header("authorization"),
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
