//! The HTTP sink (WIRE §3): one POST per attempt, classified by status. `[upstream]` is this
//! sink, named "upstream".

use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use futures::FutureExt;
use futures::future::BoxFuture;
use gateway_config::{Compression, RetryPolicy, TlsClient, TlsFiles};
use reqwest::header::{AUTHORIZATION, CONTENT_ENCODING, CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use tokio::time::Instant;

use super::{Attempt, EncodedBatch, Sink};
use crate::backoff::parse_retry_after;
use crate::error::ForwarderError;
use crate::gate::ProbeTarget;
use crate::options::ForwarderOptions;
use crate::outcome::{Outcome, RetryReason, error_chain};

/// How much of a rejecting response body is kept in the dead letter.
pub const MAX_REJECTION_BODY_BYTES: usize = 1024;

/// A configured HTTP client for the upstream. `Debug` shows the URL redacted and no token.
pub struct HttpSink {
    client: reqwest::Client,
    url: reqwest::Url,
    auth: Option<HeaderValue>,
    gzip: bool,
    timeout: Duration,
    policy: RetryPolicy,
}

impl fmt::Debug for HttpSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpSink")
            .field("url", &gateway_config::redact_url(&self.url))
            .field("auth", &self.auth.as_ref().map(|_| "***"))
            .field("gzip", &self.gzip)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl HttpSink {
    /// Builds the client: for `https://`, rustls configured by [`gateway_config::tls`].
    pub fn new(options: &ForwarderOptions) -> Result<Self, ForwarderError> {
        let url = options.url.clone();
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
        Ok(HttpSink {
            client,
            url,
            auth,
            gzip: options.compression == Compression::Gzip,
            timeout: options.timeout,
            policy: options.retry_policy.clone(),
        })
    }
}

impl Sink for HttpSink {
    /// Gzipped when `upstream.compression = "gzip"`.
    fn encode(&self, json: Vec<u8>) -> Bytes {
        if self.gzip {
            crate::wire::gzip(&json)
        } else {
            Bytes::from(json)
        }
    }

    /// The URL's host and port. `None` when a proxy is configured in the environment (reqwest
    /// goes through it, so the upstream's own port says nothing).
    fn probe_target(&self) -> Option<ProbeTarget> {
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

    /// POSTs the batch once and classifies what happened. Never panics, never returns an error:
    /// every failure is an [`Outcome`].
    fn attempt<'a>(&'a self, batch: &'a EncodedBatch) -> BoxFuture<'a, Attempt> {
        self.post(batch).boxed()
    }
}

impl HttpSink {
    async fn post(&self, batch: &EncodedBatch) -> Attempt {
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
                    outcome: from_transport_error(&e.without_url()),
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
            Outcome::Delivered
        } else if self.policy.retries(status) {
            from_status(&self.policy, status, retry_after, String::new)
        } else {
            let body = drain(response, MAX_REJECTION_BODY_BYTES)
                .await
                .unwrap_or_default();
            let mut text = String::from_utf8_lossy(&body).into_owned();
            if body.len() >= MAX_REJECTION_BODY_BYTES {
                text.push('…');
            }
            from_status(&self.policy, status, retry_after, || text)
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

/// Classifies a response status. `retry_after` and `body` are only kept where they matter.
fn from_status(
    policy: &RetryPolicy,
    status: u16,
    retry_after: Option<Duration>,
    body: impl FnOnce() -> String,
) -> Outcome {
    if (200..300).contains(&status) {
        Outcome::Delivered
    } else if policy.retries(status) {
        Outcome::Retry {
            reason: RetryReason::Answered(format!("HTTP {status}")),
            retry_after,
        }
    } else {
        Outcome::Refused {
            answer: format!("HTTP {status}"),
            detail: body(),
        }
    }
}

/// Classifies a failure below HTTP. All of them are retryable: the request may never have
/// reached the server, and the cloud deduplicates if it did.
fn from_transport_error(err: &reqwest::Error) -> Outcome {
    let reason = if err.is_timeout() {
        RetryReason::Timeout
    } else if err.is_connect() {
        RetryReason::Connect(error_chain(err))
    } else {
        RetryReason::Transport(error_chain(err))
    };
    Outcome::Retry {
        reason,
        retry_after: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn classify(status: u16) -> Outcome {
        from_status(&RetryPolicy::default(), status, None, || "body".into())
    }

    #[test]
    fn any_2xx_is_delivered() {
        for s in [200, 201, 202, 204, 299] {
            assert_eq!(classify(s), Outcome::Delivered, "{s}");
        }
    }

    #[test]
    fn the_wire_contract_statuses_are_retried() {
        for s in [408, 429, 500, 502, 503, 504, 599] {
            assert_eq!(
                classify(s),
                Outcome::Retry {
                    reason: RetryReason::Answered(format!("HTTP {s}")),
                    retry_after: None
                }
            );
        }
    }

    #[test]
    fn other_4xx_are_refused_with_their_body() {
        for s in [400, 401, 403, 404, 409, 413, 422] {
            assert_eq!(
                classify(s),
                Outcome::Refused {
                    answer: format!("HTTP {s}"),
                    detail: "body".into()
                }
            );
        }
    }

    #[test]
    fn a_custom_policy_retries_only_what_it_lists() {
        let policy = RetryPolicy::new([503, 401, 9999], false);
        assert!(matches!(
            from_status(&policy, 503, None, String::new),
            Outcome::Retry { .. }
        ));
        assert!(matches!(
            from_status(&policy, 500, None, String::new),
            Outcome::Refused { .. }
        ));
    }
}
