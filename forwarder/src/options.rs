//! What the forwarder needs to know, as plain values: built from the validated config by the
//! gateway, or by hand in tests.

use gateway_config::{Compression, RetryPolicy, TlsClient, redact_url};
use reqwest::Url;
use std::fmt;
use std::time::Duration;

use crate::error::ForwarderError;

/// The buffer consumer the forwarder reads and acks as.
pub const CONSUMER: &str = "upstream";

/// Everything the forwarder is configured with. Field defaults are those of
/// `gateway.example.toml` `[upstream]`.
#[derive(Clone)]
pub struct ForwarderOptions {
    /// Goes into every body and Idempotency-Key.
    pub gateway_id: String,
    /// Where batches are POSTed (`upstream.url`, as loaded).
    pub url: Url,
    /// Sent as `Authorization: Bearer …` when set (resolved from `upstream.bearer_token_env`).
    /// Redacted in `Debug`.
    pub bearer_token: Option<String>,
    /// The TLS client for an `https://` URL (`upstream.ca_file`, `upstream.client_cert_file`,
    /// `upstream.client_key_file`, checked at config load). `None` with `https://`: the
    /// platform's roots, no client certificate. Never plaintext for `https://`.
    pub tls: Option<TlsClient>,
    /// Records per batch at most (`upstream.batch_max_records`, default 500).
    pub batch_max_records: usize,
    /// Uncompressed JSON body bytes per batch at most (`upstream.batch_max_bytes`, default
    /// 262144). A single larger record is still sent, alone.
    pub batch_max_bytes: usize,
    /// How long a readings batch waits to fill, from its first record (`upstream.linger_ms`,
    /// default 1 s). Alarms never wait.
    pub linger: Duration,
    /// Body compression (`upstream.compression`, default gzip).
    pub compression: Compression,
    /// Per attempt, connect to last response byte (`upstream.timeout_ms`, default 10 s).
    pub timeout: Duration,
    /// Smallest retry delay and first jitter ceiling (`upstream.retry_initial_ms`, default 200 ms).
    pub retry_initial: Duration,
    /// Largest jitter ceiling (`upstream.retry_max_ms`, default 60 s).
    pub retry_max: Duration,
    /// Cap on readings attempts on the wire at once (`upstream.max_in_flight`, default 16; 1:
    /// strict order). The forwarder adapts between 1 and this ([`crate::Pacing`]). The alarms
    /// lane always has at most one batch, so a raise reaches the cloud before its clear.
    pub max_in_flight: usize,
    /// Which statuses retry (`upstream.retry_on_status`, `upstream.retry_on_5xx`).
    pub retry_policy: RetryPolicy,
    /// Buffer consumer name (default [`CONSUMER`]); must be listed in the buffer's consumers.
    pub consumer: String,
}

impl ForwarderOptions {
    /// Defaults for everything but the gateway id and the URL.
    pub fn new(gateway_id: impl Into<String>, url: Url) -> Self {
        ForwarderOptions {
            gateway_id: gateway_id.into(),
            url,
            bearer_token: None,
            tls: None,
            batch_max_records: 500,
            batch_max_bytes: 262_144,
            linger: Duration::from_millis(1_000),
            compression: Compression::Gzip,
            timeout: Duration::from_millis(10_000),
            retry_initial: Duration::from_millis(200),
            retry_max: Duration::from_millis(60_000),
            max_in_flight: 16,
            retry_policy: RetryPolicy::default(),
            consumer: CONSUMER.to_string(),
        }
    }

    /// Checks ranges; the error names the field.
    pub fn validate(&self) -> Result<(), ForwarderError> {
        let bad = |field: &'static str, reason: &str| {
            Err(ForwarderError::InvalidOptions {
                field,
                reason: reason.to_string(),
            })
        };
        if self.gateway_id.is_empty() {
            return bad("gateway_id", "must not be empty");
        }
        if self.batch_max_records == 0 {
            return bad("batch_max_records", "must be > 0");
        }
        if self.batch_max_bytes == 0 {
            return bad("batch_max_bytes", "must be > 0");
        }
        if self.timeout.is_zero() {
            return bad("timeout_ms", "must be > 0");
        }
        if self.retry_initial.is_zero() {
            return bad("retry_initial_ms", "must be > 0");
        }
        if self.retry_max < self.retry_initial {
            return bad("retry_max_ms", "must be ≥ retry_initial_ms");
        }
        if self.max_in_flight == 0 {
            return bad("max_in_flight", "must be > 0");
        }
        Ok(())
    }
}

impl fmt::Debug for ForwarderOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ForwarderOptions")
            .field("gateway_id", &self.gateway_id)
            .field("url", &redact_url(&self.url))
            .field(
                "bearer_token",
                &self.bearer_token.as_ref().map(|_| "<redacted>"),
            )
            .field("tls", &self.tls)
            .field("batch_max_records", &self.batch_max_records)
            .field("batch_max_bytes", &self.batch_max_bytes)
            .field("linger", &self.linger)
            .field("compression", &self.compression)
            .field("timeout", &self.timeout)
            .field("retry_initial", &self.retry_initial)
            .field("retry_max", &self.retry_max)
            .field("max_in_flight", &self.max_in_flight)
            .field("retry_policy", &self.retry_policy)
            .field("consumer", &self.consumer)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_never_shows_the_token() {
        let mut o = ForwarderOptions::new("gw", "http://x".parse().unwrap());
        o.bearer_token = Some("s3cret".into());
        let text = format!("{o:?}");
        assert!(!text.contains("s3cret"));
        assert!(text.contains("<redacted>"));
    }

    #[test]
    fn validation_names_the_bad_field() {
        let mut o = ForwarderOptions::new("gw", "http://x".parse().unwrap());
        o.max_in_flight = 0;
        let err = o.validate().unwrap_err().to_string();
        assert!(err.contains("max_in_flight"), "{err}");
    }
}
