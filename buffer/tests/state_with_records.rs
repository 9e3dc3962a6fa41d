//! State written with an append ([`Buffer::queue_in_line_with_state`]): durable with its records,
//! never without them, later writes of a key win, and a parked append keeps its state.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Running, opts, reading};
use gateway_buffer::{AppendError, Record, WhenFull};

fn writes(pairs: &[(&str, &[u8])]) -> Vec<(String, Vec<u8>)> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.to_vec()))
        .collect()
}

#[tokio::test]
async fn state_appended_with_records_survives_a_reopen_and_the_later_write_wins() {
    let dir = tempfile::tempdir().unwrap();
    let r = Running::open(opts(dir.path()));
    let first = r
        .buffer
        .queue_in_line_with_state(
            vec![reading(1)].into(),
            writes(&[("window/a", b"1"), ("window/b", b"1")]),
            None,
        )
        .await
        .unwrap();
    // State alone, no records: committed too.
    let second = r
        .buffer
        .queue_in_line_with_state(Arc::from([]), writes(&[("window/a", b"2")]), None)
        .await
        .unwrap();
    // An empty value removes the key.
    let third = r
        .buffer
        .queue_in_line_with_state(Arc::from([]), writes(&[("window/b", b"")]), None)
        .await
        .unwrap();
    assert_eq!(first.await.unwrap().seqs.len(), 1);
    assert!(second.await.unwrap().seqs.is_empty());
    third.await.unwrap();
    r.buffer.set_state("other", b"x").unwrap();
    r.close().await;

    let r = Running::open(opts(dir.path()));
    assert_eq!(
        r.buffer.states("window/").unwrap(),
        writes(&[("window/a", b"2")])
    );
    assert_eq!(r.buffer.state("other").unwrap().as_deref(), Some(&b"x"[..]));
    r.close().await;
}

#[tokio::test]
async fn state_of_an_append_refused_for_space_is_never_written() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = opts(dir.path());
    o.readings_max_bytes = 1500;
    o.when_full = WhenFull::Block;
    let r = Running::open(o);
    loop {
        match r.buffer.append((0..50).map(reading).collect()).await {
            Ok(_) => {}
            Err(AppendError::Full { .. }) => break,
            Err(e) => panic!("{e}"),
        }
    }
    let records: Arc<[Record]> = vec![reading(9)].into();
    let waiting = r
        .buffer
        .queue_in_line_with_state(records, writes(&[("window/c", b"1")]), None)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        r.buffer.states("window/").unwrap(),
        Vec::new(),
        "parked: not written"
    );
    // Shutdown refuses the parked append: its state is never written.
    r.shutdown.cancel();
    assert!(matches!(waiting.await, Err(AppendError::Full { .. })));
    r.task.await.unwrap().unwrap();
    drop(r.buffer);
    let r = Running::open(opts(dir.path()));
    assert_eq!(r.buffer.states("window/").unwrap(), Vec::new());
    r.close().await;
}

#[tokio::test]
async fn a_parked_append_writes_its_state_when_space_returns() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = opts(dir.path());
    o.readings_max_bytes = 1500;
    o.when_full = WhenFull::Block;
    let r = Running::open(o);
    let mut last = 0;
    loop {
        match r.buffer.append((0..50).map(reading).collect()).await {
            Ok(seqs) => last = *seqs.last().unwrap(),
            Err(AppendError::Full { .. }) => break,
            Err(e) => panic!("{e}"),
        }
    }
    let waiting = r
        .buffer
        .queue_in_line_with_state(vec![reading(9)].into(), writes(&[("window/d", b"1")]), None)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    r.buffer
        .ack("forwarder", gateway_buffer::Lane::Readings, last)
        .unwrap();
    waiting.await.unwrap();
    assert_eq!(
        r.buffer.states("window/").unwrap(),
        writes(&[("window/d", b"1")])
    );
    r.close().await;
}
