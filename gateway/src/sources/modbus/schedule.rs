//! When each slave of a bus is polled: a pure state machine over instants the caller passes in
//! (tests drive it with a made-up clock), no timers and no I/O.
//!
//! One bus (an RTU port, or one TCP slave's connection) does one poll at a time. The next poll
//! is of the slave whose due time is earliest; among slaves due at the same instant, the one
//! that started a poll least recently goes first, so slaves take turns whatever their order in
//! the config. A slave that answered is due `poll_ms` after its previous due time; ticks that
//! passed while the bus was busy are skipped (no burst of catch-up polls), keeping the phase.
//! A slave that
//! did not answer at all is due again after `poll_ms`, then 2, 4, 8 … times that, at most
//! `max(backoff_max_ms, poll_ms)`, measured from when its failed poll ended; its first answer
//! makes it due every `poll_ms` again.
//!
//! So a dead slave costs the bus one request timeout per attempt, and its attempts thin out
//! exponentially: the others keep their rate as long as the bus has the time for them.

use std::time::Duration;
use tokio::time::Instant;

/// How a poll ended, as far as scheduling cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The slave answered at least one request (with values, an exception or even a garbled
    /// frame: something is there).
    Answered,
    /// Nothing came back: every request timed out or the link failed.
    Silent,
}

#[derive(Debug, Clone)]
struct Slot {
    period: Duration,
    backoff_max: Duration,
    due: Instant,
    /// Polls in a row that got no answer.
    silent: u32,
    /// When this slave last started a poll, in turns of the bus (0: never).
    turn: u64,
}

/// The poll schedule of one bus.
#[derive(Debug, Clone)]
pub struct Schedule {
    slots: Vec<Slot>,
    turns: u64,
}

impl Schedule {
    /// A schedule of slaves with these `(poll period, backoff ceiling)`, every one due at `now`.
    pub fn new(slaves: impl IntoIterator<Item = (Duration, Duration)>, now: Instant) -> Schedule {
        let slots = slaves
            .into_iter()
            .map(|(period, backoff_max)| Slot {
                period,
                backoff_max: backoff_max.max(period),
                due: now,
                silent: 0,
                turn: 0,
            })
            .collect();
        Schedule { slots, turns: 0 }
    }

    /// The slave to poll next and when; `None` for a bus without slaves.
    pub fn next(&self) -> Option<(usize, Instant)> {
        self.slots
            .iter()
            .enumerate()
            .min_by_key(|(_, s)| (s.due, s.turn))
            .map(|(i, s)| (i, s.due))
    }

    /// Slave `i` starts a poll now.
    pub fn start(&mut self, i: usize) {
        self.turns += 1;
        self.slots[i].turn = self.turns;
    }

    /// Slave `i`'s poll ended at `now` with `outcome`; returns the pause before its next
    /// attempt while it does not answer (zero while it does).
    pub fn finish(&mut self, i: usize, now: Instant, outcome: Outcome) -> Duration {
        let slot = &mut self.slots[i];
        match outcome {
            Outcome::Answered => {
                slot.silent = 0;
                slot.due += slot.period;
                if slot.due < now && !slot.period.is_zero() {
                    let missed = (now - slot.due).as_nanos() / slot.period.as_nanos() + 1;
                    let missed = u32::try_from(missed).unwrap_or(u32::MAX);
                    slot.due += slot.period.saturating_mul(missed);
                }
                Duration::ZERO
            }
            Outcome::Silent => {
                slot.silent = slot.silent.saturating_add(1);
                let factor = 1u32 << (slot.silent - 1).min(31);
                let pause = slot.period.saturating_mul(factor).min(slot.backoff_max);
                slot.due = now + pause;
                pause
            }
        }
    }

    /// Polls in a row slave `i` got no answer to.
    pub fn silent_polls(&self, i: usize) -> u32 {
        self.slots[i].silent
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// Runs the bus for `run` of made-up time: each poll takes `answer` when the slave answers
    /// and `timeout` when `dead(slave, now)`; returns polls per slave.
    fn simulate(
        schedule: &mut Schedule,
        start: Instant,
        run: Duration,
        answer: Duration,
        timeout: Duration,
        dead: impl Fn(usize, Instant) -> bool,
    ) -> Vec<u32> {
        let mut polls = vec![0; schedule.slots.len()];
        let mut now = start;
        while let Some((i, due)) = schedule.next() {
            now = now.max(due);
            if now >= start + run {
                break;
            }
            schedule.start(i);
            polls[i] += 1;
            let silent = dead(i, now);
            now += if silent { timeout } else { answer };
            let outcome = if silent {
                Outcome::Silent
            } else {
                Outcome::Answered
            };
            schedule.finish(i, now, outcome);
        }
        polls
    }

    #[test]
    fn an_answering_slave_is_polled_every_period_without_drift() {
        let t0 = Instant::now();
        let mut s = Schedule::new([(100 * MS, 10_000 * MS)], t0);
        assert_eq!(s.next(), Some((0, t0)));
        s.start(0);
        assert_eq!(s.finish(0, t0 + 30 * MS, Outcome::Answered), Duration::ZERO);
        assert_eq!(
            s.next(),
            Some((0, t0 + 100 * MS)),
            "from the due time, not the end"
        );
        s.start(0);
        s.finish(0, t0 + 350 * MS, Outcome::Answered);
        assert_eq!(
            s.next(),
            Some((0, t0 + 400 * MS)),
            "late: the missed tick at 200 and 300 ms is skipped, the phase kept"
        );
    }

    #[test]
    fn a_silent_slave_backs_off_exponentially_up_to_the_cap_and_recovers_on_its_first_answer() {
        let t0 = Instant::now();
        let mut s = Schedule::new([(100 * MS, 1000 * MS)], t0);
        let mut now = t0;
        let mut pauses = Vec::new();
        for _ in 0..6 {
            s.start(0);
            now += 50 * MS;
            pauses.push(s.finish(0, now, Outcome::Silent));
            assert_eq!(s.next(), Some((0, now + *pauses.last().unwrap())));
            now = s.next().unwrap().1;
        }
        assert_eq!(pauses, [100, 200, 400, 800, 1000, 1000].map(|ms| ms * MS));
        assert_eq!(s.silent_polls(0), 6);
        s.start(0);
        assert_eq!(s.finish(0, now + 5 * MS, Outcome::Answered), Duration::ZERO);
        assert_eq!(s.silent_polls(0), 0);
        assert_eq!(s.next(), Some((0, now + 100 * MS)), "normal rate again");
    }

    #[test]
    fn the_backoff_ceiling_is_never_below_the_period() {
        let t0 = Instant::now();
        let mut s = Schedule::new([(5000 * MS, 1000 * MS)], t0);
        s.start(0);
        assert_eq!(s.finish(0, t0, Outcome::Silent), 5000 * MS);
        s.start(0);
        assert_eq!(s.finish(0, t0, Outcome::Silent), 5000 * MS);
    }

    #[test]
    fn many_silent_polls_never_overflow() {
        let t0 = Instant::now();
        let mut s = Schedule::new([(MS, Duration::from_secs(3600))], t0);
        for _ in 0..100_000 {
            s.start(0);
            s.finish(0, t0, Outcome::Silent);
        }
        assert_eq!(s.next(), Some((0, t0 + Duration::from_secs(3600))));
    }

    #[test]
    fn slaves_due_together_take_turns() {
        let t0 = Instant::now();
        // A saturated bus: every poll takes longer than the period, so all are always due.
        let mut s = Schedule::new([(MS, MS); 3], t0);
        let polls = simulate(&mut s, t0, 3000 * MS, 10 * MS, 10 * MS, |_, _| false);
        assert_eq!(polls, [100, 100, 100]);
    }

    #[test]
    fn a_dead_slave_does_not_slow_the_others_on_its_bus() {
        let t0 = Instant::now();
        let slaves = [(100 * MS, 5000 * MS); 3];
        let run = 60_000 * MS;
        let (answer, timeout) = (20 * MS, 200 * MS);
        let healthy = simulate(
            &mut Schedule::new(slaves, t0),
            t0,
            run,
            answer,
            timeout,
            |_, _| false,
        );
        // Slave 1 stops answering after 10 s of the minute.
        let with_dead = simulate(
            &mut Schedule::new(slaves, t0),
            t0,
            run,
            answer,
            timeout,
            |i, now| i == 1 && now >= t0 + 10_000 * MS,
        );
        assert_eq!(healthy, [600, 600, 600]);
        // 100 polls in its first 10 s, then attempts 100, 200, 400 … 5000 ms apart.
        let attempts = with_dead[1] - 100;
        assert!(
            (8..=20).contains(&attempts),
            "the dead slave is retried, sparsely: {with_dead:?}"
        );
        // Each attempt holds the bus for one timeout (two of the others' periods): they lose
        // at most the ticks that fall in it, never their rate.
        for other in [with_dead[0], with_dead[2]] {
            assert!(
                600 - other <= attempts * 2,
                "the others keep their rate: {with_dead:?}"
            );
        }
    }
}
