//! The upstream's [`Pacing`], shared by every send: an attempt waits here for a readings slot
//! and for the end of a hold, in batch order with alarms first. While the upstream is
//! unreachable, the first in line probes it with a bare TCP connect, so delivery resumes within
//! about [`PROBE_EVERY`] of its return however far the backoff has grown.
//!
//! A probe lifts a hold only after an earlier probe of it failed: an upstream that accepts TCP
//! but fails every request (a broken TLS setup, a proxy with no backend) is not hammered at the
//! probe rate; it gets the backoff.

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::Duration;

use gateway_buffer::Lane;
use rand::SeedableRng;
use rand::rngs::SmallRng;
use tokio::sync::Notify;
use tokio::time::{Instant, sleep_until, timeout};
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::pacing::{Admit, Answer, HoldCause, Pacing, Ticket};

/// How often the first waiter probes an unreachable upstream.
pub const PROBE_EVERY: Duration = Duration::from_secs(1);
/// How long a probe's TCP connect may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// Where a probe connects: the upstream URL's host and port.
#[derive(Clone, Debug)]
pub struct ProbeTarget {
    /// Host name or address.
    pub host: String,
    /// TCP port.
    pub port: u16,
}

/// Waiting order: alarm batches first, then by batch id (start order).
type Place = (u8, u64);

#[derive(Debug)]
struct State {
    pacing: Pacing,
    waiting: BTreeSet<Place>,
    /// A probe of the current unreachable spell failed: the next one that connects lifts the hold.
    probe_saw_down: bool,
    rng: SmallRng,
}

/// One upstream's pacing behind a lock, with the waiting line.
#[derive(Debug)]
pub struct Gate {
    state: Mutex<State>,
    changed: Notify,
    probe: Option<ProbeTarget>,
}

/// An attempt that may go on the wire: finish it with [`Gate::finish`] or [`Gate::release`].
#[derive(Debug)]
#[must_use = "an attempt's pass must be finished or released"]
pub struct Pass(Ticket);

impl Gate {
    /// A gate over `pacing`; `probe`: where to check reachability during an unreachable hold.
    pub fn new(pacing: Pacing, probe: Option<ProbeTarget>) -> Self {
        Gate {
            state: Mutex::new(State {
                pacing,
                waiting: BTreeSet::new(),
                probe_saw_down: false,
                rng: SmallRng::from_os_rng(),
            }),
            changed: Notify::new(),
            probe,
        }
    }

    /// Readings attempts allowed at once now.
    pub fn limit(&self) -> usize {
        self.lock().pacing.limit()
    }

    /// How long every attempt is still held, if it is.
    pub fn held_for(&self) -> Option<Duration> {
        let now = Instant::now();
        self.lock()
            .pacing
            .hold(now)
            .map(|(until, _)| until.saturating_duration_since(now))
    }

    /// Waits until the attempt of batch `id` on `lane` may go; `None` if `shutdown` came first.
    pub async fn enter(&self, lane: Lane, id: u64, shutdown: &CancellationToken) -> Option<Pass> {
        let counted = lane == Lane::Readings;
        let place: Place = (u8::from(counted), id);
        self.lock().waiting.insert(place);
        let pass = loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let now = Instant::now();
            let wait = {
                let mut s = self.lock();
                match s.pacing.admit(counted, now) {
                    Admit::Go if !counted || s.rank(place) < s.pacing.free_slots(now) => {
                        s.waiting.remove(&place);
                        break Some(Pass(s.pacing.start(counted)));
                    }
                    Admit::Go | Admit::Full => Wait::Notified,
                    Admit::HeldUntil(until) => match s.pacing.hold(now) {
                        Some((_, HoldCause::Unreachable))
                            if self.probe.is_some() && s.waiting.first() == Some(&place) =>
                        {
                            Wait::Probe(until.min(now + PROBE_EVERY), until)
                        }
                        _ => Wait::Until(until),
                    },
                }
            };
            let wake = match wait {
                Wait::Notified => None,
                Wait::Until(at) | Wait::Probe(at, _) => Some(at),
            };
            tokio::select! {
                () = shutdown.cancelled() => break None,
                () = &mut notified => continue,
                () = sleep_until(wake.unwrap_or_else(Instant::now)), if wake.is_some() => {}
            }
            if let Wait::Probe(at, until) = wait
                && at < until
            {
                tokio::select! {
                    () = shutdown.cancelled() => break None,
                    () = self.probe_once() => {}
                }
            }
        };
        if pass.is_none() {
            self.lock().waiting.remove(&place);
        }
        // Whoever is next in line may go now (a slot was taken, or the line moved).
        self.changed.notify_waiters();
        pass
    }

    /// The attempt ended with `answer`. Returns the hold it set or extended, if any.
    pub fn finish(&self, pass: Pass, answer: Answer) -> Option<Duration> {
        let hold = {
            let mut s = self.lock();
            if matches!(answer, Answer::Fine(_)) {
                s.probe_saw_down = false;
            }
            let State { pacing, rng, .. } = &mut *s;
            pacing.finish(pass.0, answer, Instant::now(), rng)
        };
        self.changed.notify_waiters();
        hold
    }

    /// The attempt did not happen after all (its batch was evicted meanwhile).
    pub fn release(&self, pass: Pass) {
        self.lock().pacing.release(pass.0);
        self.changed.notify_waiters();
    }

    async fn probe_once(&self) {
        let Some(target) = &self.probe else {
            return;
        };
        let connect = tokio::net::TcpStream::connect((target.host.as_str(), target.port));
        let up = matches!(timeout(PROBE_TIMEOUT, connect).await, Ok(Ok(_)));
        let mut s = self.lock();
        if !up {
            s.probe_saw_down = true;
        } else if s.probe_saw_down && s.pacing.hold(Instant::now()).is_some() {
            info!(host = %target.host, port = target.port, "forwarder: the upstream is reachable again; resuming now");
            s.probe_saw_down = false;
            s.pacing.lift_hold();
            drop(s);
            self.changed.notify_waiters();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Nothing panics while holding the lock; a poisoned one still holds a consistent state.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl State {
    /// How many readings attempts wait ahead of `place`.
    fn rank(&self, place: Place) -> usize {
        self.waiting.range((1, 0)..place).count()
    }
}

/// What an attempt that may not go yet waits for.
#[derive(Clone, Copy)]
enum Wait {
    /// A change: a slot freed, the line moved.
    Notified,
    /// The hold's end.
    Until(Instant),
    /// The next probe (first of the pair), or the hold's end (second) if sooner.
    Probe(Instant, Instant),
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    const MS: Duration = Duration::from_millis(1);

    fn gate(max: usize, probe: Option<ProbeTarget>) -> Arc<Gate> {
        Arc::new(Gate::new(Pacing::new(max, 100 * MS, 60_000 * MS), probe))
    }

    #[tokio::test(start_paused = true)]
    async fn readings_attempts_wait_for_a_slot_in_batch_order() {
        let g = gate(1, None);
        let stop = CancellationToken::new();
        let first = g.enter(Lane::Readings, 1, &stop).await.unwrap();
        let (g3, g2, s3, s2) = (g.clone(), g.clone(), stop.clone(), stop.clone());
        let third = tokio::spawn(async move { g3.enter(Lane::Readings, 3, &s3).await });
        tokio::task::yield_now().await;
        let second = tokio::spawn(async move { g2.enter(Lane::Readings, 2, &s2).await });
        tokio::time::sleep(10 * MS).await;
        assert!(!third.is_finished() && !second.is_finished());
        // An alarm does not need a readings slot.
        let alarm = g.enter(Lane::Alarms, 4, &stop).await.unwrap();
        g.finish(alarm, Answer::Fine(MS));
        g.finish(first, Answer::Fine(MS));
        let second = second.await.unwrap().expect("batch 2 goes before batch 3");
        tokio::time::sleep(10 * MS).await;
        assert!(!third.is_finished(), "one slot: 3 waits for 2");
        g.finish(second, Answer::Fine(MS));
        let third = third.await.unwrap().unwrap();
        g.release(third);
    }

    #[tokio::test(start_paused = true)]
    async fn a_retry_after_holds_every_lane_until_it_ends() {
        let g = gate(16, None);
        let stop = CancellationToken::new();
        let pass = g.enter(Lane::Readings, 1, &stop).await.unwrap();
        let failed = Answer::Failed {
            cause: HoldCause::Answered,
            retry_after: Some(Duration::from_secs(2)),
        };
        assert!(g.finish(pass, failed).unwrap() >= Duration::from_secs(2));
        let start = Instant::now();
        let alarm = g.enter(Lane::Alarms, 2, &stop).await.unwrap();
        assert!(start.elapsed() >= Duration::from_secs(2));
        g.finish(alarm, Answer::Fine(MS));
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_ends_a_wait_and_leaves_the_line() {
        let g = gate(1, None);
        let stop = CancellationToken::new();
        let held = g.enter(Lane::Readings, 1, &stop).await.unwrap();
        let (g2, s2) = (g.clone(), stop.clone());
        let waiting = tokio::spawn(async move { g2.enter(Lane::Readings, 2, &s2).await });
        tokio::time::sleep(10 * MS).await;
        stop.cancel();
        assert!(waiting.await.unwrap().is_none());
        assert!(g.lock().waiting.is_empty());
        g.release(held);
    }

    #[tokio::test]
    async fn a_probe_that_sees_the_upstream_come_back_lifts_an_unreachable_hold() {
        // A port with nothing listening, then a listener on it.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let target = ProbeTarget {
            host: "127.0.0.1".into(),
            port,
        };
        let g = Arc::new(Gate::new(
            Pacing::new(1, Duration::from_secs(60), Duration::from_secs(60)),
            Some(target),
        ));
        let stop = CancellationToken::new();
        let pass = g.enter(Lane::Readings, 1, &stop).await.unwrap();
        let gone = Answer::Failed {
            cause: HoldCause::Unreachable,
            retry_after: None,
        };
        assert!(g.finish(pass, gone).unwrap() >= Duration::from_secs(60));
        let (g2, s2) = (g.clone(), stop.clone());
        let waiting = tokio::spawn(async move { g2.enter(Lane::Readings, 2, &s2).await });
        // Let at least one probe fail, then come back.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !g.lock().probe_saw_down {
            assert!(Instant::now() < deadline, "no probe failed");
            tokio::time::sleep(20 * MS).await;
        }
        let back = Instant::now();
        let _listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        let pass = tokio::time::timeout(Duration::from_secs(10), waiting)
            .await
            .expect("the hold was lifted long before the 60 s backoff")
            .unwrap()
            .unwrap();
        assert!(back.elapsed() < PROBE_EVERY + PROBE_TIMEOUT + Duration::from_secs(1));
        g.finish(pass, Answer::Fine(MS));
    }

    #[tokio::test]
    async fn an_upstream_that_always_accepts_tcp_is_not_probed_out_of_its_backoff() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = ProbeTarget {
            host: "127.0.0.1".into(),
            port: listener.local_addr().unwrap().port(),
        };
        let g = Arc::new(Gate::new(
            Pacing::new(1, Duration::from_secs(60), Duration::from_secs(60)),
            Some(target),
        ));
        let stop = CancellationToken::new();
        let pass = g.enter(Lane::Readings, 1, &stop).await.unwrap();
        let broken = Answer::Failed {
            cause: HoldCause::Unreachable,
            retry_after: None,
        };
        g.finish(pass, broken);
        let waited = tokio::time::timeout(PROBE_EVERY * 3, g.enter(Lane::Readings, 2, &stop)).await;
        assert!(
            waited.is_err(),
            "the probes connected but never saw it down"
        );
    }
}
