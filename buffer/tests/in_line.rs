//! In-line appends through a full buffer (`when_full = "block"`): they wait for space instead of
//! failing, and are stored in the order they were made, whatever the timing of the acks.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Running, opts, read_all, reading};
use gateway_buffer::{AppendError, Lane, Record, WhenFull};

const C: &str = "forwarder";

fn batch(from: u64, n: u64) -> Arc<[Record]> {
    (from..from + n).map(reading).collect::<Vec<_>>().into()
}

/// Fills a blocking buffer to its quota; returns how many readings it took.
async fn fill(r: &Running) -> u64 {
    let mut n = 0;
    loop {
        match r.buffer.append((0..50).map(reading).collect()).await {
            Ok(_) => n += 50,
            Err(AppendError::Full { .. }) => return n,
            Err(e) => panic!("{e}"),
        }
        assert!(n < 100_000, "never became full");
    }
}

#[tokio::test]
async fn waiting_appends_are_stored_in_the_order_they_were_made_once_space_returns() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = opts(dir.path());
    o.readings_max_bytes = 1500;
    o.when_full = WhenFull::Block;
    let r = Running::open(o);
    let filled = fill(&r).await;

    // Ten appends, each made a little after the previous one, all waiting for space.
    let mut waiting = Vec::new();
    for i in 0..10u64 {
        let b = r.buffer.clone();
        waiting.push(tokio::spawn(async move {
            b.append_in_line(batch(1000 + i * 10, 10)).await
        }));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        waiting.iter().all(|h| !h.is_finished()),
        "nothing is stored while the buffer is full"
    );
    // A plain append is still refused rather than queued.
    assert!(matches!(
        r.buffer.append(vec![reading(7)]).await,
        Err(AppendError::Full { .. })
    ));

    // Free space one block's worth at a time: the waiting appends go in as it returns.
    let mut stored = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while stored.len() < 10 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "appends still waiting"
        );
        let all = read_all(&r.buffer, C, Lane::Readings);
        if let Some(first) = all.first() {
            r.buffer.ack(C, Lane::Readings, first.seq + 9).unwrap();
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
        stored = waiting.iter().filter(|h| h.is_finished()).collect();
    }
    let mut firsts = Vec::new();
    for h in waiting {
        let a = h.await.unwrap().unwrap();
        assert!(a.waited_for_space);
        firsts.push(a.seqs[0]);
    }
    assert!(
        firsts.windows(2).all(|w| w[0] < w[1]),
        "seqs follow the order the appends were made: {firsts:?}"
    );
    assert!(firsts[0] > filled, "stored after what filled the buffer");
    r.close().await;
}

#[tokio::test]
async fn a_waiting_append_that_is_dropped_is_never_written() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = opts(dir.path());
    o.readings_max_bytes = 1500;
    o.when_full = WhenFull::Block;
    let r = Running::open(o);
    let filled = fill(&r).await;

    let gave_up = tokio::time::timeout(
        Duration::from_millis(150),
        r.buffer.append_in_line(batch(5000, 5)),
    )
    .await;
    assert!(gave_up.is_err(), "it was waiting for space");
    let all = read_all(&r.buffer, C, Lane::Readings);
    r.buffer
        .ack(C, Lane::Readings, all.last().unwrap().seq)
        .unwrap();
    // Space is back; an append made now goes straight in, and the withdrawn one never does.
    let now = r.buffer.append_in_line(batch(6000, 1)).await.unwrap();
    assert!(!now.waited_for_space);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let left = read_all(&r.buffer, C, Lane::Readings);
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(left[0].record, reading(6000));
    assert_eq!(r.buffer.stats().readings.appended_total, filled + 1);
    r.close().await;
}

#[tokio::test]
async fn appends_waiting_at_shutdown_are_refused_not_written() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = opts(dir.path());
    o.readings_max_bytes = 1500;
    o.when_full = WhenFull::Block;
    let r = Running::open(o.clone());
    let filled = fill(&r).await;
    let b = r.buffer.clone();
    let waiting = tokio::spawn(async move { b.append_in_line(batch(7000, 5)).await });
    tokio::time::sleep(Duration::from_millis(150)).await;
    r.close().await;
    assert!(matches!(
        waiting.await.unwrap(),
        Err(AppendError::Full { .. }) | Err(AppendError::Closed)
    ));
    let r = Running::open(o);
    assert_eq!(
        read_all(&r.buffer, C, Lane::Readings).len() as u64,
        filled,
        "nothing of the waiting append was written"
    );
    r.close().await;
}
