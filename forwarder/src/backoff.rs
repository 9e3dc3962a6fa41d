//! The retry schedule: exponential backoff with full jitter, and `Retry-After` parsing.
//!
//! Pure: the random source and the clock are passed in.

use std::time::{Duration, SystemTime};

use rand::Rng;
use time::{OffsetDateTime, PrimitiveDateTime, macros::format_description};

/// The longest `Retry-After` we obey. A server asking for more is probably confused; an hour
/// keeps a gateway from going silent for days on one bad header.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3_600);

/// Exponential backoff with full jitter.
///
/// Attempt `n` (0-based) draws uniformly from `0..=min(max, initial * 2^n)` and is then raised
/// to at least `initial`: the spread of full jitter, without hot-looping on a dead server.
#[derive(Clone, Debug)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    /// Failures since the last success.
    attempt: u32,
}

impl Backoff {
    /// A schedule between `initial` and `max` (`max` is raised to `initial` if smaller).
    pub fn new(initial: Duration, max: Duration) -> Self {
        Backoff {
            initial,
            max: max.max(initial),
            attempt: 0,
        }
    }

    /// The ceiling of the jitter window for the next delay.
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(31)).unwrap_or(u32::MAX);
        self.initial.saturating_mul(factor).min(self.max)
    }

    /// The delay before the next attempt, advancing the schedule. A `Retry-After` from the server
    /// is a floor (capped at [`MAX_RETRY_AFTER`]).
    pub fn next_delay(&mut self, rng: &mut impl Rng, retry_after: Option<Duration>) -> Duration {
        let ceiling = self.ceiling();
        let ceiling_ms = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
        let jittered = Duration::from_millis(rng.random_range(0..=ceiling_ms)).max(self.initial);
        self.attempt = self.attempt.saturating_add(1);
        match retry_after {
            Some(after) => jittered.max(after.min(MAX_RETRY_AFTER)),
            None => jittered,
        }
    }

    /// Failures counted since the last [`Backoff::reset`].
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    /// Back to the start of the schedule, after a success.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// Parses a `Retry-After` header value: delay-seconds or an HTTP date (IMF-fixdate, RFC 9110
/// §5.6.7), relative to `now`. A date in the past means "now" (zero). Garbage is `None`.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let format = format_description!(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
    );
    let at = PrimitiveDateTime::parse(value, format).ok()?.assume_utc();
    let now = OffsetDateTime::from(now);
    let ahead = at - now;
    Some(Duration::try_from(ahead).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{SeedableRng, rngs::SmallRng};

    #[test]
    fn delays_stay_between_initial_and_a_doubling_ceiling_capped_at_max() {
        let mut rng = SmallRng::seed_from_u64(7);
        let initial = Duration::from_millis(100);
        let max = Duration::from_millis(1_000);
        let mut backoff = Backoff::new(initial, max);
        let ceilings = [100, 200, 400, 800, 1_000, 1_000, 1_000];
        for ceiling in ceilings {
            assert_eq!(backoff.ceiling(), Duration::from_millis(ceiling));
            let d = backoff.next_delay(&mut rng, None);
            assert!(d >= initial && d <= Duration::from_millis(ceiling), "{d:?}");
        }
        backoff.reset();
        assert_eq!(backoff.ceiling(), initial);
    }

    #[test]
    fn full_jitter_spreads_delays_across_the_window() {
        let mut rng = SmallRng::seed_from_u64(1);
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..200 {
            let mut b = Backoff::new(Duration::from_millis(10), Duration::from_millis(10_000));
            for _ in 0..10 {
                b.next_delay(&mut rng, None);
            }
            seen.insert(b.next_delay(&mut rng, None).as_millis() / 1_000);
        }
        assert!(seen.len() >= 8, "delays cluster: {seen:?}");
    }

    #[test]
    fn retry_after_is_a_floor_on_the_delay() {
        let mut rng = SmallRng::seed_from_u64(3);
        let mut b = Backoff::new(Duration::from_millis(10), Duration::from_millis(100));
        let d = b.next_delay(&mut rng, Some(Duration::from_secs(2)));
        assert_eq!(d, Duration::from_secs(2));
        let d = b.next_delay(&mut rng, Some(Duration::from_secs(86_400)));
        assert_eq!(d, MAX_RETRY_AFTER);
    }

    #[test]
    fn retry_after_parses_seconds_and_http_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777); // 1994-11-06 08:49:37
        assert_eq!(parse_retry_after("2", now), Some(Duration::from_secs(2)));
        assert_eq!(
            parse_retry_after(" 120 ", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:47 GMT", now),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-1", now), None);
    }
}
