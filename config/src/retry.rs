//! Which HTTP answers of the upstream are retried: `upstream.retry_on_status` and
//! `upstream.retry_on_5xx` read once into a [`RetryPolicy`], which the forwarder's HTTP sink asks
//! for every answer. The one place that decides; nothing else interprets those keys.

use std::fmt;

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
    /// `retry_5xx` (config `upstream.retry_on_status`, `upstream.retry_on_5xx`; see
    /// [`crate::UpstreamConfig::retry_policy`]).
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

    /// Whether a non-2xx `status` should be retried. A 2xx (and anything outside 100..=599) is
    /// never retried.
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
    /// WIRE.md §3: 408, 429 and every 5xx (the defaults of `[upstream]`).
    fn default() -> Self {
        RetryPolicy::new(
            crate::defaults::UPSTREAM_RETRY_ON_STATUS.iter().copied(),
            crate::defaults::UPSTREAM_RETRY_ON_5XX,
        )
    }
}

impl fmt::Debug for RetryPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryPolicy")
            .field("statuses", &self.statuses())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_is_the_wire_contract() {
        let policy = RetryPolicy::default();
        assert_eq!(policy, RetryPolicy::new([408, 429], true));
        for s in [408, 429, 500, 502, 503, 504, 599] {
            assert!(policy.retries(s), "{s}");
        }
        for s in [200, 204, 400, 401, 403, 404, 409, 413, 422] {
            assert!(!policy.retries(s), "{s}");
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
    }
}
