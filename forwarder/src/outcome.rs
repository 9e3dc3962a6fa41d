//! What one attempt meant for its batch, whatever the sink: delivered, try again, or give up on
//! it.

use std::fmt;
use std::time::Duration;

/// Why an attempt is worth repeating.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RetryReason {
    /// The destination answered, and the answer means "not now" (e.g. `HTTP 503`).
    Answered(String),
    /// The per-attempt timeout fired.
    Timeout,
    /// No connection: refused, reset, DNS, TLS handshake.
    Connect(String),
    /// The connection broke mid-attempt, or anything else below the sink's protocol.
    Transport(String),
}

impl fmt::Display for RetryReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RetryReason::Answered(answer) => f.write_str(answer),
            RetryReason::Timeout => f.write_str("timeout"),
            RetryReason::Connect(e) => write!(f, "connect: {e}"),
            RetryReason::Transport(e) => write!(f, "transport: {e}"),
        }
    }
}

/// The meaning of one attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The destination has the batch for good (HTTP 2xx, MQTT PUBACK).
    Delivered,
    /// Try again later.
    Retry {
        /// What went wrong.
        reason: RetryReason,
        /// How long the destination asked us to wait (HTTP `Retry-After`), if it said.
        retry_after: Option<Duration>,
    },
    /// The destination refuses this batch; sending it again will not help.
    Refused {
        /// The answer, short (e.g. `HTTP 400`).
        answer: String,
        /// What the destination said about it (an HTTP response body: lossy UTF-8, truncated).
        detail: String,
    },
}

/// An error and its sources on one line: a client library's own message hides the interesting
/// part.
pub(crate) fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}
