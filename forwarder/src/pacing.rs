//! How hard the forwarder may push its upstream: how many readings attempts may be on the wire
//! at once, and whether every attempt must wait.
//!
//! - **Concurrency** adapts between 1 and `max_in_flight` (AIMD, as TCP and Vector's adaptive
//!   request concurrency do). It starts at 1 and doubles every round (a round: as many answers
//!   as the limit was) while answers come back fast and the limit was used; after the first
//!   decrease it grows by one per round. Any retryable failure halves it; a round whose mean
//!   latency is more than twice the baseline (plus [`LATENCY_SLACK`]) cuts it by a quarter. A
//!   decrease happens once per round: failures of attempts started before it are news of the
//!   same congestion.
//! - **Hold**: a retryable failure holds *every* attempt to this upstream, of either lane, for a
//!   backoff delay (exponential with full jitter, one step per round of failures, so sixteen
//!   batches failing together advance it once) or the server's `Retry-After` if longer.
//!
//! Pure: the clock and the random source come in as arguments.

use std::time::Duration;

use rand::Rng;
use tokio::time::Instant;

use crate::backoff::{Backoff, MAX_RETRY_AFTER};

/// Latency within this much of twice the baseline is not "rising": keeps sub-millisecond
/// jitter of a nearby upstream from cutting the concurrency.
pub const LATENCY_SLACK: Duration = Duration::from_millis(20);

/// Why attempts are held back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HoldCause {
    /// The server answered with a retryable status (429, 503, …): it asked us to slow down, and
    /// only the clock ends the hold.
    Answered,
    /// No usable answer: refused, reset, timed out. The caller may probe the upstream and end
    /// the hold early once it is reachable again ([`Pacing::lift_hold`]).
    Unreachable,
}

/// What one attempt came to, as far as pacing cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    /// An HTTP answer that was not a retryable failure (2xx, or a rejection: the server is up
    /// and said so quickly), with the attempt's latency.
    Fine(Duration),
    /// A retryable failure.
    Failed {
        /// Whether the server answered (a status) or not (connection, timeout).
        cause: HoldCause,
        /// The server's `Retry-After`, if any.
        retry_after: Option<Duration>,
    },
}

/// An attempt in progress: hand it back to [`Pacing::finish`].
#[derive(Debug)]
#[must_use = "an attempt's ticket must be finished, or its slot stays taken"]
pub struct Ticket {
    round: u64,
    counted: bool,
}

/// Whether an attempt may start now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admit {
    /// Go ahead.
    Go,
    /// Every attempt waits until then.
    HeldUntil(Instant),
    /// Every readings slot is taken; wait for an answer.
    Full,
}

/// The pacing state of one upstream.
#[derive(Debug)]
pub struct Pacing {
    max: usize,
    limit: usize,
    slow_start: bool,
    /// Bumped at every decrease; a ticket from an older round brings no new news.
    round: u64,
    backoff: Backoff,
    hold: Option<(Instant, HoldCause)>,
    /// Readings attempts on the wire.
    on_wire: usize,
    /// Answers still to come before this round ends.
    round_left: usize,
    round_latency: Duration,
    round_answers: u32,
    /// The limit was reached during this round: there is demand for more.
    round_limited: bool,
    /// A slowly rising minimum of the rounds' mean latencies.
    baseline: Option<Duration>,
}

impl Pacing {
    /// Concurrency between 1 and `max` (raised to 1), backoff between `retry_initial` and
    /// `retry_max`.
    pub fn new(max: usize, retry_initial: Duration, retry_max: Duration) -> Self {
        Pacing {
            max: max.max(1),
            limit: 1,
            slow_start: true,
            round: 0,
            backoff: Backoff::new(retry_initial, retry_max),
            hold: None,
            on_wire: 0,
            round_left: 1,
            round_latency: Duration::ZERO,
            round_answers: 0,
            round_limited: false,
            baseline: None,
        }
    }

    /// Readings attempts allowed on the wire at once now.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Readings attempts on the wire now.
    pub fn on_wire(&self) -> usize {
        self.on_wire
    }

    /// Until when, and why, every attempt is held; `None` when not held at `now`.
    pub fn hold(&self, now: Instant) -> Option<(Instant, HoldCause)> {
        self.hold.filter(|(until, _)| *until > now)
    }

    /// Whether an attempt may start at `now`. `counted`: a readings attempt, which needs one of
    /// the `limit` slots; alarm attempts only obey the hold.
    pub fn admit(&self, counted: bool, now: Instant) -> Admit {
        if let Some((until, _)) = self.hold(now) {
            return Admit::HeldUntil(until);
        }
        if counted && self.on_wire >= self.limit {
            return Admit::Full;
        }
        Admit::Go
    }

    /// Free readings slots at `now` (0 while held).
    pub fn free_slots(&self, now: Instant) -> usize {
        if self.hold(now).is_some() {
            0
        } else {
            self.limit.saturating_sub(self.on_wire)
        }
    }

    /// An attempt starts (after [`Pacing::admit`] said [`Admit::Go`]).
    pub fn start(&mut self, counted: bool) -> Ticket {
        if counted {
            self.on_wire += 1;
            if self.on_wire >= self.limit {
                self.round_limited = true;
            }
        }
        Ticket {
            round: self.round,
            counted,
        }
    }

    /// An attempt ended with `answer` at `now`. Returns the hold this failure set or extended.
    pub fn finish(
        &mut self,
        ticket: Ticket,
        answer: Answer,
        now: Instant,
        rng: &mut impl Rng,
    ) -> Option<Duration> {
        if ticket.counted {
            self.on_wire = self.on_wire.saturating_sub(1);
        }
        match answer {
            Answer::Fine(latency) => {
                self.backoff.reset();
                if ticket.counted {
                    self.observe(latency);
                }
                None
            }
            Answer::Failed { cause, retry_after } => {
                if ticket.round == self.round {
                    // First news of this congestion: one backoff step, one decrease.
                    let delay = self.backoff.next_delay(rng, retry_after);
                    self.extend_hold(now + delay, cause);
                    self.decrease(self.limit / 2);
                    Some(delay)
                } else {
                    // News of a congestion already acted on: only a longer `Retry-After`, or a
                    // server's answer where there was silence, changes the hold.
                    let after = retry_after.unwrap_or_default().min(MAX_RETRY_AFTER);
                    self.extend_hold(now + after, cause);
                    retry_after.map(|_| after)
                }
            }
        }
    }

    /// An attempt that was admitted did not happen after all: its slot is free again, and it
    /// says nothing about the upstream.
    pub fn release(&mut self, ticket: Ticket) {
        if ticket.counted {
            self.on_wire = self.on_wire.saturating_sub(1);
        }
    }

    /// The upstream is reachable again (a probe got through): attempts may resume now.
    pub fn lift_hold(&mut self) {
        self.hold = None;
    }

    /// Backoff steps taken since the last good answer.
    pub fn backoff_attempts(&self) -> u32 {
        self.backoff.attempts()
    }

    fn extend_hold(&mut self, until: Instant, cause: HoldCause) {
        match &mut self.hold {
            Some((held, held_cause)) if *held >= until => {
                // A server's answer outranks a silence: only the clock ends that hold.
                if cause == HoldCause::Answered {
                    *held_cause = cause;
                }
            }
            hold => *hold = Some((until, cause)),
        }
    }

    fn observe(&mut self, latency: Duration) {
        self.round_latency += latency;
        self.round_answers += 1;
        self.round_left = self.round_left.saturating_sub(1);
        if self.round_left > 0 {
            return;
        }
        let mean = self.round_latency / self.round_answers;
        let baseline = match self.baseline {
            Some(b) if mean >= b => b + (mean - b) / 16,
            _ => mean,
        };
        self.baseline = Some(baseline);
        if mean > baseline * 2 + LATENCY_SLACK {
            self.decrease(self.limit * 3 / 4);
        } else {
            if self.round_limited {
                self.limit = if self.slow_start {
                    self.limit * 2
                } else {
                    self.limit + 1
                }
                .min(self.max);
            }
            self.new_round();
        }
    }

    fn decrease(&mut self, to: usize) {
        self.limit = to.clamp(1, self.max);
        self.slow_start = false;
        self.round += 1;
        self.new_round();
    }

    fn new_round(&mut self) {
        self.round_left = self.limit;
        self.round_latency = Duration::ZERO;
        self.round_answers = 0;
        self.round_limited = self.on_wire >= self.limit;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::SmallRng;

    const MS: Duration = Duration::from_millis(1);

    fn pacing(max: usize) -> Pacing {
        Pacing::new(max, 200 * MS, 60_000 * MS)
    }

    /// Keeps the limit's worth of readings attempts on the wire and answers them all with
    /// `answer`, one round; returns the limit after.
    fn round(p: &mut Pacing, answer: Answer, now: Instant, rng: &mut SmallRng) -> usize {
        let tickets: Vec<Ticket> = (0..p.limit()).map(|_| p.start(true)).collect();
        for t in tickets {
            p.finish(t, answer, now, rng);
        }
        p.limit()
    }

    fn rng() -> SmallRng {
        SmallRng::seed_from_u64(7)
    }

    #[test]
    fn the_limit_doubles_while_answers_are_fast_and_stops_at_max() {
        let (mut p, mut r, now) = (pacing(16), rng(), Instant::now());
        let limits: Vec<usize> = (0..6)
            .map(|_| round(&mut p, Answer::Fine(50 * MS), now, &mut r))
            .collect();
        assert_eq!(limits, [2, 4, 8, 16, 16, 16]);
    }

    #[test]
    fn the_limit_does_not_grow_when_it_is_not_used() {
        let (mut p, mut r, now) = (pacing(16), rng(), Instant::now());
        round(&mut p, Answer::Fine(50 * MS), now, &mut r);
        assert_eq!(p.limit(), 2);
        // One attempt at a time, where two were allowed: no demand for more.
        for _ in 0..10 {
            let t = p.start(true);
            p.finish(t, Answer::Fine(50 * MS), now, &mut r);
        }
        assert_eq!(p.limit(), 2);
    }

    #[test]
    fn failing_every_request_brings_the_limit_down_to_one_round_by_round_and_it_recovers() {
        let (mut p, mut r, mut now) = (pacing(16), rng(), Instant::now());
        while p.limit() < 16 {
            round(&mut p, Answer::Fine(50 * MS), now, &mut r);
        }
        let busy = Answer::Failed {
            cause: HoldCause::Answered,
            retry_after: None,
        };
        // Sixteen on the wire fail together: news of one congestion, one halving.
        assert_eq!(round(&mut p, busy, now, &mut r), 8);
        let mut limits = vec![];
        while p.limit() > 1 {
            now = p.hold(now).map_or(now, |(until, _)| until);
            limits.push(round(&mut p, busy, now, &mut r));
        }
        assert_eq!(limits, [4, 2, 1]);
        assert_eq!(round(&mut p, busy, now, &mut r), 1, "never below one");
        // Recovered: one more per round (no more doubling after a decrease).
        now = p.hold(now).map_or(now, |(until, _)| until);
        let limits: Vec<usize> = (0..3)
            .map(|_| round(&mut p, Answer::Fine(50 * MS), now, &mut r))
            .collect();
        assert_eq!(limits, [2, 3, 4]);
    }

    #[test]
    fn rising_latency_cuts_the_limit_by_a_quarter() {
        let (mut p, mut r, now) = (pacing(16), rng(), Instant::now());
        while p.limit() < 16 {
            round(&mut p, Answer::Fine(50 * MS), now, &mut r);
        }
        // Within twice the baseline plus the slack: holds.
        assert_eq!(round(&mut p, Answer::Fine(110 * MS), now, &mut r), 16);
        assert_eq!(round(&mut p, Answer::Fine(400 * MS), now, &mut r), 12);
    }

    #[test]
    fn a_failure_holds_every_attempt_of_either_lane_until_the_backoff_or_retry_after_ends() {
        let (mut p, mut r, now) = (pacing(16), rng(), Instant::now());
        let t = p.start(true);
        let delay = p
            .finish(
                t,
                Answer::Failed {
                    cause: HoldCause::Answered,
                    retry_after: Some(Duration::from_secs(2)),
                },
                now,
                &mut r,
            )
            .unwrap();
        assert!(delay >= Duration::from_secs(2));
        let until = now + delay;
        assert_eq!(p.admit(true, now), Admit::HeldUntil(until));
        assert_eq!(
            p.admit(false, now + Duration::from_secs(1)),
            Admit::HeldUntil(until)
        );
        assert_eq!(p.free_slots(now), 0);
        assert_eq!(p.admit(true, until), Admit::Go);
        assert_eq!(p.admit(false, until), Admit::Go);
    }

    #[test]
    fn failures_of_one_round_advance_the_backoff_once_but_each_retry_after_counts() {
        let (mut p, mut r, now) = (pacing(4), rng(), Instant::now());
        while p.limit() < 4 {
            round(&mut p, Answer::Fine(50 * MS), now, &mut r);
        }
        let tickets: Vec<Ticket> = (0..4).map(|_| p.start(true)).collect();
        let mut answers = tickets.into_iter();
        let failed = |after: Option<u64>| Answer::Failed {
            cause: HoldCause::Answered,
            retry_after: after.map(Duration::from_secs),
        };
        p.finish(answers.next().unwrap(), failed(None), now, &mut r);
        p.finish(answers.next().unwrap(), failed(None), now, &mut r);
        assert_eq!(p.backoff_attempts(), 1);
        p.finish(answers.next().unwrap(), failed(Some(30)), now, &mut r);
        assert_eq!(p.backoff_attempts(), 1);
        assert_eq!(p.hold(now).unwrap().0, now + Duration::from_secs(30));
        // A later, shorter answer does not shorten the hold.
        p.finish(answers.next().unwrap(), failed(Some(1)), now, &mut r);
        assert_eq!(p.hold(now).unwrap().0, now + Duration::from_secs(30));
        assert_eq!(p.limit(), 2);
        assert_eq!(p.on_wire(), 0);
    }

    #[test]
    fn a_full_limit_admits_alarms_but_not_readings() {
        let (mut p, now) = (pacing(16), Instant::now());
        let _t = p.start(true);
        assert_eq!(p.admit(true, now), Admit::Full);
        assert_eq!(p.admit(false, now), Admit::Go);
        let _alarm = p.start(false);
        assert_eq!(p.on_wire(), 1, "alarms take no readings slot");
    }

    #[test]
    fn an_unreachable_hold_can_be_lifted_but_a_servers_answer_marks_it_answered() {
        let (mut p, mut r, now) = (pacing(16), rng(), Instant::now());
        let t = p.start(true);
        let gone = Answer::Failed {
            cause: HoldCause::Unreachable,
            retry_after: None,
        };
        p.finish(t, gone, now, &mut r);
        assert_eq!(p.hold(now).unwrap().1, HoldCause::Unreachable);
        p.lift_hold();
        assert_eq!(p.admit(true, now), Admit::Go);
        // Unreachable, then (same round) a 503 within the hold: only the clock ends it.
        let t1 = p.start(true);
        let t2 = p.start(false);
        p.finish(t1, gone, now, &mut r);
        let busy = Answer::Failed {
            cause: HoldCause::Answered,
            retry_after: None,
        };
        p.finish(t2, busy, now, &mut r);
        assert_eq!(p.hold(now).unwrap().1, HoldCause::Answered);
    }

    #[test]
    fn a_success_resets_the_backoff() {
        let (mut p, mut r, now) = (pacing(1), rng(), Instant::now());
        let failed = Answer::Failed {
            cause: HoldCause::Answered,
            retry_after: None,
        };
        for _ in 0..3 {
            let t = p.start(true);
            p.finish(t, failed, now, &mut r);
        }
        assert_eq!(p.backoff_attempts(), 3);
        let t = p.start(true);
        p.finish(t, Answer::Fine(MS), now, &mut r);
        assert_eq!(p.backoff_attempts(), 0);
    }
}
