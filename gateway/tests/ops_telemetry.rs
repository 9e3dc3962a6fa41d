//! The log throttle: repeated failures cost one line per interval, and that line says how many
//! were held back.

use gateway::ops::telemetry::Throttle;
use std::time::{Duration, Instant};

#[test]
fn the_first_occurrence_is_logged_and_repeats_within_the_interval_are_held_back() {
    let throttle = Throttle::new(Duration::from_secs(10));
    let t0 = Instant::now();
    assert_eq!(throttle.allow_at(t0), Some(0));
    for s in 1..10 {
        assert_eq!(throttle.allow_at(t0 + Duration::from_secs(s)), None);
    }
    assert_eq!(
        throttle.allow_at(t0 + Duration::from_secs(10)),
        Some(9),
        "the next line counts the nine held back"
    );
    assert_eq!(throttle.allow_at(t0 + Duration::from_secs(11)), None);
    assert_eq!(throttle.allow_at(t0 + Duration::from_secs(25)), Some(1));
    assert_eq!(throttle.allow_at(t0 + Duration::from_secs(40)), Some(0));
}

#[test]
fn a_clock_that_seems_to_go_back_does_not_release_or_lose_the_count() {
    let throttle = Throttle::new(Duration::from_secs(10));
    let t0 = Instant::now() + Duration::from_secs(100);
    assert_eq!(throttle.allow_at(t0), Some(0));
    assert_eq!(throttle.allow_at(t0 - Duration::from_secs(5)), None);
    assert_eq!(throttle.allow_at(t0 + Duration::from_secs(10)), Some(1));
}

#[test]
fn one_static_throttle_serves_a_call_site_across_threads() {
    static SHARED: Throttle = Throttle::new(Duration::from_secs(3600));
    let logged: u64 = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|_| s.spawn(|| (0..1000).filter(|_| SHARED.allow().is_some()).count() as u64))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum()
    });
    assert_eq!(logged, 1, "one line in the interval, whatever the threads");
    assert_eq!(
        SHARED.allow_at(Instant::now() + Duration::from_secs(3601)),
        Some(3999)
    );
}
