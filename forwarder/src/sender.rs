//! One HTTP attempt for one encoded batch: the only place that touches the network.

use std::time::Duration;

use bytes::Bytes;
use gateway_buffer::{Lane, Stored};
use gateway_config::{TlsClient, TlsFiles};
use reqwest::header::{AUTHORIZATION, CONTENT_ENCODING, CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use tokio::time::Instant;

use crate::backoff::parse_retry_after;
use crate::error::ForwarderError;
use crate::gate::ProbeTarget;
use crate::options::{Compression, ForwarderOptions};
use crate::outcome::{Outcome, RetryPolicy};

/// How much of a rejecting response body is kept in the dead letter.
pub const MAX_REJECTION_BODY_BYTES: usize = 1024;

/// A batch ready to go: encoded once, then sent byte-for-byte on every attempt.
#[derive(Debug)]
pub struct EncodedBatch {
    /// Its lane.
    pub lane: Lane,
    /// Seq of the last record.
    pub last_seq: u64,
    /// `{gateway_id}:{lane}:{first_seq}-{last_seq}`.
    pub idempotency_key: String,
    /// The request body as sent (gzipped if configured).
    pub body: Bytes,
    /// The records, for the dead-letter store if the upstream refuses them.
    pub records: Vec<Stored>,
}

impl EncodedBatch {
    /// `records` (not empty, in seq order) with their JSON body `json`, gzipped if `gzip`, and
    /// the idempotency key of their seq range.
    pub fn new(
        gateway_id: &str,
        lane: Lane,
        records: Vec<Stored>,
        json: Vec<u8>,
        gzip: bool,
    ) -> Self {
        let first_seq = records.first().map_or(0, |r| r.seq);
        let last_seq = records.last().map_or(0, |r| r.seq);
        let body = if gzip {
            crate::wire::gzip(&json)
        } else {
            Bytes::from(json)
        };
        EncodedBatch {
            lane,
            last_seq,
            idempotency_key: crate::wire::idempotency_key(gateway_id, lane, first_seq, last_seq),
            body,
            records,
        }
    }
}

/// What came of one attempt.
#[derive(Debug)]
pub struct Attempt {
    /// Its meaning.
    pub outcome: Outcome,
    /// Time to the response head, if a response came.
    pub latency: Option<Duration>,
}

/// A configured HTTP client for the upstream. `Debug` shows the URL redacted and no token.
pub struct HttpSender {
    client: reqwest::Client,
    url: reqwest::Url,
    auth: Option<HeaderValue>,
    gzip: bool,
    timeout: Duration,
    policy: RetryPolicy,
}

impl std::fmt::Debug for HttpSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpSender")
            .field("url", &gateway_config::redact_url(&self.url))
            .field("auth", &self.auth.as_ref().map(|_| "***"))
            .field("gzip", &self.gzip)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl HttpSender {
    /// Builds the client: for `https://`, rustls configured by [`gateway_config::tls`].
    pub fn new(options: &ForwarderOptions) -> Result<Self, ForwarderError> {
        let url =
            reqwest::Url::parse(&options.url).map_err(|e| ForwarderError::InvalidRequest {
                field: "url",
                reason: e.to_string(),
            })?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(ForwarderError::InvalidRequest {
                field: "url",
                reason: format!("scheme must be http or https, not {}", url.scheme()),
            });
        }
        let auth = match &options.bearer_token {
            Some(token) => {
                let mut value =
                    HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
                        ForwarderError::InvalidRequest {
                            field: "bearer_token_env",
                            reason: "the token contains characters not allowed in an HTTP header"
                                .into(),
                        }
                    })?;
                value.set_sensitive(true);
                Some(value)
            }
            None => None,
        };
        let mut builder = reqwest::Client::builder()
            // A POST must never silently become a GET somewhere else; a 3xx is retried and logged.
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(options.timeout)
            .pool_idle_timeout(Duration::from_secs(60))
            .user_agent(concat!("edge-gateway/", env!("CARGO_PKG_VERSION")));
        if url.scheme() == "https" {
            // Always our own rustls configuration: the configured roots replace the platform's,
            // and the client certificate goes with it (see `gateway_config::tls`).
            let tls = match &options.tls {
                Some(tls) => tls.clone(),
                None => TlsClient::load(TlsFiles::default())?,
            };
            builder = builder.tls_backend_preconfigured((*tls.config()).clone());
        }
        let client = builder.build().map_err(ForwarderError::Client)?;
        Ok(HttpSender {
            client,
            url,
            auth,
            gzip: options.compression == Compression::Gzip,
            timeout: options.timeout,
            policy: options.retry_policy.clone(),
        })
    }

    /// Where to probe the upstream's reachability with a bare TCP connect: the URL's host and
    /// port. `None` when a proxy is configured in the environment (reqwest goes through it, so
    /// the upstream's own port says nothing).
    pub fn probe_target(&self) -> Option<ProbeTarget> {
        let proxied = ["http_proxy", "https_proxy", "all_proxy"]
            .iter()
            .any(|name| {
                std::env::var_os(name).is_some() || std::env::var_os(name.to_uppercase()).is_some()
            });
        if proxied {
            return None;
        }
        Some(ProbeTarget {
            host: self.url.host_str()?.trim_matches(['[', ']']).to_string(),
            port: self.url.port_or_known_default()?,
        })
    }

    /// Whether bodies are gzipped.
    pub fn gzip(&self) -> bool {
        self.gzip
    }

    /// POSTs the batch once and classifies what happened. Never panics, never returns an error:
    /// every failure is an [`Outcome`].
    pub async fn attempt(&self, batch: &EncodedBatch) -> Attempt {
        let mut request = self
            .client
            .post(self.url.clone())
            .timeout(self.timeout)
            .header(CONTENT_TYPE, "application/json")
            .header("Idempotency-Key", batch.idempotency_key.as_str())
            // Cloning `Bytes` shares the buffer: every attempt sends the very same bytes.
            .body(batch.body.clone());
        if self.gzip {
            request = request.header(CONTENT_ENCODING, "gzip");
        }
        if let Some(auth) = &self.auth {
            request = request.header(AUTHORIZATION, auth.clone());
        }
        let started = Instant::now();
        let response = match request.send().await {
            Ok(response) => response,
            Err(e) => {
                // The URL may carry a secret in its query; the error text must not.
                return Attempt {
                    outcome: Outcome::from_transport_error(&e.without_url()),
                    latency: None,
                };
            }
        };
        let latency = started.elapsed();
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, std::time::SystemTime::now()));
        let outcome = if (200..300).contains(&status) {
            // Read the (small) body so the connection goes back to the pool; a failure here
            // changes nothing, the server already said yes.
            let _ = drain(response, 64 * 1024).await;
            Outcome::Delivered { status }
        } else if self.policy.retries(status) {
            Outcome::from_status(&self.policy, status, retry_after, String::new)
        } else {
            let body = drain(response, MAX_REJECTION_BODY_BYTES)
                .await
                .unwrap_or_default();
            let mut text = String::from_utf8_lossy(&body).into_owned();
            if body.len() >= MAX_REJECTION_BODY_BYTES {
                text.push('…');
            }
            Outcome::from_status(&self.policy, status, retry_after, || text)
        };
        Attempt {
            outcome,
            latency: Some(latency),
        }
    }
}

/// Reads up to `limit` bytes of a response body.
async fn drain(mut response: reqwest::Response, limit: usize) -> Result<Vec<u8>, reqwest::Error> {
    let mut body = Vec::new();
    while body.len() < limit {
        match response.chunk().await? {
            Some(chunk) => body.extend_from_slice(&chunk[..chunk.len().min(limit - body.len())]),
            None => break,
        }
    }
    Ok(body)
}
