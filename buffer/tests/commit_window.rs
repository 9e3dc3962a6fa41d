//! The group-commit window at a trickle: with `commit_stretch_ms`, appends that come a little
//! apart share one commit; a busy buffer or an alarm keeps the ordinary window.

mod common;

use common::{Running, alarm, opts, reading};
use gateway_buffer::Record;
use std::time::Duration;

/// Appends `first`, then `second` 50 ms later, and returns how many group commits the two took.
async fn commits_for(stretch_ms: u64, first: Vec<Record>, second: Vec<Record>) -> u64 {
    let dir = tempfile::tempdir().unwrap();
    let mut o = opts(dir.path());
    o.commit_interval_ms = 5;
    o.commit_stretch_ms = stretch_ms;
    let r = Running::open(o);
    let before = r.buffer.stats().commits;
    let b = r.buffer.clone();
    let a = tokio::spawn(async move { b.append(first).await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    r.buffer.append(second).await.unwrap();
    a.await.unwrap().unwrap();
    let commits = r.buffer.stats().commits - before;
    r.close().await;
    commits
}

#[tokio::test]
async fn at_a_trickle_appends_a_little_apart_share_one_commit() {
    // A 2 s stretch: a loaded machine's late wake-up cannot end the window before the second
    // append, 50 ms later, joins it.
    assert_eq!(
        commits_for(2_000, vec![reading(1)], vec![reading(2)]).await,
        1
    );
    // Without the stretch each goes alone.
    assert_eq!(commits_for(0, vec![reading(1)], vec![reading(2)]).await, 2);
}

#[tokio::test]
async fn a_busy_second_or_an_alarm_keeps_the_ordinary_window() {
    // 20 records at once is more than a stretched group may hold.
    let burst = (0..20).map(reading).collect();
    assert_eq!(commits_for(2_000, burst, vec![reading(30)]).await, 2);
    // An alarm is not held back for company.
    assert_eq!(
        commits_for(2_000, vec![alarm(1)], vec![reading(2)]).await,
        2
    );
}
