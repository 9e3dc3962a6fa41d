//! What one HTTP attempt meant for its batch: delivered, try again, or give up on it.

use std::fmt;
use std::time::Duration;

/// Which HTTP statuses are worth retrying. A non-2xx status that is not retried dead-letters
/// the batch.
///
/// 1xx and 3xx are always retried: they mean a confused proxy or a moved endpoint, not a verdict
/// on the batch, and throwing data into dead letters for that helps nobody.
#[derive(Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Bit `code - 100` set: that status is retryable.
    retryable: [u64; 8],
}

impl RetryPolicy {
    /// Retry the listed statuses (values outside 100..=599 are ignored), and every 5xx when
    /// `retry_5xx` (config `upstream.retry_on_status`, `upstream.retry_on_5xx`).
    pub fn new(statuses: impl IntoIterator<Item = u16>, retry_5xx: bool) -> Self {
        let mut policy = RetryPolicy { retryable: [0; 8] };
        let always = (100..200).chain(300..400);
        let server = (500..600).filter(|_| retry_5xx);
        for status in statuses.into_iter().chain(always).chain(server) {
            if (100..=599).contains(&status) {
                let bit = usize::from(status - 100);
                policy.retryable[bit / 64] |= 1 << (bit % 64);
            }
        }
        policy
    }

    /// Whether a non-2xx `status` should be retried.
    pub fn retries(&self, status: u16) -> bool {
        if !(100..=599).contains(&status) {
            return false;
        }
        let bit = usize::from(status - 100);
        self.retryable[bit / 64] & (1 << (bit % 64)) != 0
    }

    /// The 4xx and 5xx statuses this policy retries, ascending.
    pub fn statuses(&self) -> Vec<u16> {
        (400..=599).filter(|s| self.retries(*s)).collect()
    }
}

impl Default for RetryPolicy {
    /// WIRE.md §3: 408, 429 and every 5xx.
    fn default() -> Self {
        RetryPolicy::new([408, 429], true)
    }
}

impl fmt::Debug for RetryPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryPolicy")
            .field("statuses", &self.statuses())
            .finish()
    }
}

/// Why an attempt is worth repeating.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RetryReason {
    /// The server answered with a retryable status.
    Status(u16),
    /// The per-attempt timeout fired.
    Timeout,
    /// No connection: refused, reset, DNS, TLS handshake.
    Connect(String),
    /// The connection broke mid-request, or anything else below HTTP.
    Transport(String),
}

impl fmt::Display for RetryReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RetryReason::Status(s) => write!(f, "HTTP {s}"),
            RetryReason::Timeout => f.write_str("timeout"),
            RetryReason::Connect(e) => write!(f, "connect: {e}"),
            RetryReason::Transport(e) => write!(f, "transport: {e}"),
        }
    }
}

/// The meaning of one attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// 2xx: the cloud has the batch.
    Delivered {
        /// The status received.
        status: u16,
    },
    /// Try again later.
    Retry {
        /// What went wrong.
        reason: RetryReason,
        /// The server's `Retry-After`, if it sent one we could read.
        retry_after: Option<Duration>,
    },
    /// The cloud refuses this batch; sending it again will not help.
    Rejected {
        /// The status received.
        status: u16,
        /// The start of the response body (lossy UTF-8, truncated).
        body: String,
    },
}

impl Outcome {
    /// Classifies a response status. `retry_after` and `body` are only kept where they matter.
    pub fn from_status(
        policy: &RetryPolicy,
        status: u16,
        retry_after: Option<Duration>,
        body: impl FnOnce() -> String,
    ) -> Outcome {
        if (200..300).contains(&status) {
            Outcome::Delivered { status }
        } else if policy.retries(status) {
            Outcome::Retry {
                reason: RetryReason::Status(status),
                retry_after,
            }
        } else {
            Outcome::Rejected {
                status,
                body: body(),
            }
        }
    }

    /// Classifies a failure below HTTP. All of them are retryable: the request may never have
    /// reached the server, and the cloud deduplicates if it did.
    pub fn from_transport_error(err: &reqwest::Error) -> Outcome {
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
}

/// An error and its sources on one line: reqwest's own message hides the interesting part.
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

#[cfg(test)]
mod tests {
    use super::*;

    fn classify(status: u16) -> Outcome {
        Outcome::from_status(&RetryPolicy::default(), status, None, || "body".into())
    }

    #[test]
    fn any_2xx_is_delivered() {
        for s in [200, 201, 202, 204, 299] {
            assert_eq!(classify(s), Outcome::Delivered { status: s });
        }
    }

    #[test]
    fn the_wire_contract_statuses_are_retried() {
        for s in [408, 429, 500, 502, 503, 504, 599] {
            assert!(matches!(classify(s), Outcome::Retry { .. }), "{s}");
        }
    }

    #[test]
    fn other_4xx_are_rejected_with_their_body() {
        for s in [400, 401, 403, 404, 409, 413, 422] {
            assert_eq!(
                classify(s),
                Outcome::Rejected {
                    status: s,
                    body: "body".into()
                }
            );
        }
    }

    #[test]
    fn a_custom_policy_retries_only_what_it_lists() {
        let policy = RetryPolicy::new([503, 401, 9999], false);
        assert!(policy.retries(503));
        assert!(policy.retries(401));
        assert!(!policy.retries(500));
        assert!(!policy.retries(429));
        assert!(policy.retries(302), "3xx is never a verdict on the batch");
        assert_eq!(policy.statuses(), vec![401, 503]);
        assert!(matches!(
            Outcome::from_status(&policy, 500, None, String::new),
            Outcome::Rejected { status: 500, .. }
        ));
    }
}
