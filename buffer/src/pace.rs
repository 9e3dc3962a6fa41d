//! How long a group commit stays open: `commit_interval_ms`, or, at a trickle,
//! `commit_stretch_ms`.
//!
//! Every group commit costs an fsync and the blocks it rewrites, whatever it holds: on an SD
//! card a fleet whose messages arrive spread out (independent devices are not in step) pays that
//! once per message with a short window. At a trickle a longer window lets several messages share
//! one commit, at the price of a longer wait for their PUBACKs.
//!
//! The window stretches only while that cannot slow ingest down. A broker lets the gateway hold
//! a fixed number of unacknowledged messages (mosquitto: 20 by default), so ingest runs at most
//! that number per ack latency. A stretched group holds at most [`STRETCH_MAX_RECORDS`] records
//! (and so at most that many messages): the rate measured over the last second must be low
//! enough that a stretched window gathers no more, and a group that reaches it anyway closes at
//! the ordinary window. Alarms never wait for a stretched window.

use std::time::Duration;
use tokio::time::Instant;

/// The most records a stretched group holds: below the 20 unacknowledged messages mosquitto
/// allows a client by default, so a stretched window never keeps the broker from sending more.
pub(crate) const STRETCH_MAX_RECORDS: u64 = 16;

/// Records arriving per second, counted over the current and the previous second.
#[derive(Debug)]
pub(crate) struct Pace {
    second_began: Instant,
    this_second: u64,
    last_second: u64,
}

impl Pace {
    pub(crate) fn new(now: Instant) -> Pace {
        Pace {
            second_began: now,
            this_second: 0,
            last_second: 0,
        }
    }

    /// Counts `records` appended at `at`.
    pub(crate) fn arrived(&mut self, at: Instant, records: usize) {
        let since = at.saturating_duration_since(self.second_began);
        if since >= Duration::from_secs(1) {
            // A whole quiet second in between means nothing arrived during the last one.
            self.last_second = if since < Duration::from_secs(2) {
                self.this_second
            } else {
                0
            };
            self.this_second = 0;
            self.second_began = at;
        }
        self.this_second += records as u64;
    }

    /// The window of a group that holds `records` so far (`alarm`: one of them is an alarm):
    /// `stretch` at a trickle, otherwise `base`.
    pub(crate) fn window(
        &self,
        base: Duration,
        stretch: Duration,
        records: usize,
        alarm: bool,
    ) -> Duration {
        if stretch <= base || alarm || records as u64 >= STRETCH_MAX_RECORDS {
            return base;
        }
        let rate = self.this_second.max(self.last_second) as f64;
        if rate * stretch.as_secs_f64() <= STRETCH_MAX_RECORDS as f64 {
            stretch
        } else {
            base
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: Duration = Duration::from_millis(5);
    const STRETCH: Duration = Duration::from_millis(50);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_trickle_stretches_the_window_and_a_busy_second_does_not() {
        let t0 = Instant::now();
        let mut p = Pace::new(t0);
        // 60 records a second, three at a time: a stretched window gathers 3.
        for i in 0..20 {
            p.arrived(t0 + ms(50 * i), 3);
        }
        assert_eq!(p.window(BASE, STRETCH, 3, false), STRETCH);
        // The next second is busy (400 records a second): from the moment the count passes
        // what a stretched window may gather (320 a second at 50 ms), the window is the base.
        for i in 0..20 {
            p.arrived(t0 + ms(1000 + 10 * i), 20);
        }
        assert_eq!(p.window(BASE, STRETCH, 1, false), BASE);
        // ... and stays so through the following second, however quiet it starts.
        p.arrived(t0 + ms(2100), 1);
        assert_eq!(p.window(BASE, STRETCH, 1, false), BASE);
        // After a second with nothing, a trickle stretches again.
        p.arrived(t0 + ms(4200), 3);
        assert_eq!(p.window(BASE, STRETCH, 3, false), STRETCH);
    }

    #[test]
    fn a_group_that_grew_large_or_holds_an_alarm_closes_at_the_base_window() {
        let t0 = Instant::now();
        let mut p = Pace::new(t0);
        p.arrived(t0, 1);
        assert_eq!(p.window(BASE, STRETCH, 15, false), STRETCH);
        assert_eq!(p.window(BASE, STRETCH, 16, false), BASE);
        assert_eq!(p.window(BASE, STRETCH, 1, true), BASE);
    }

    #[test]
    fn a_stretch_no_longer_than_the_base_changes_nothing() {
        let t0 = Instant::now();
        let p = Pace::new(t0);
        assert_eq!(p.window(BASE, Duration::ZERO, 1, false), BASE);
        assert_eq!(p.window(BASE, ms(5), 1, false), BASE);
        assert_eq!(
            p.window(Duration::ZERO, Duration::ZERO, 1, false),
            Duration::ZERO
        );
    }
}
