//! A cursor per consumer: each consumer (one per sink in the gateway) reads, sheds and acks on
//! its own, a record leaves the buffer once every consumer that reads its lane acked it, and
//! what the quota or expiry takes is counted for each consumer that had not acked it
//! ([`Buffer::consumer_stats`]). Under any interleaving, for each consumer and at every
//! moment, every appended reading is exactly one of: still stored and not acked by it, counted
//! dropped or expired for it, evicted while it holds it, or delivered by it.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;

use common::{Running, TS0, alarm, opts, reading};
use gateway_buffer::{Buffer, BufferError, Lane, ManualClock, WhenFull};
use proptest::prelude::*;

/// The consumers: the first reads every lane, so the lane counters take its view.
const NAMES: [&str; 2] = ["upstream", "cloud-mqtt"];

#[derive(Clone, Debug)]
enum Op {
    /// Append n readings (one call); may evict at the quota.
    Append(usize),
    /// Consumer `c` reads up to n more records after what it holds.
    Read { c: usize, n: usize },
    /// Consumer `c` sends its first n held records: sheds the evicted ones if `shed`, delivers
    /// the rest, and acks up to the last of the n.
    Send { c: usize, n: usize, shed: bool },
    /// Time passes by this many seconds and expiry runs.
    Age(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (1usize..80).prop_map(Op::Append),
        4 => (0usize..2, 1usize..60).prop_map(|(c, n)| Op::Read { c, n }),
        4 => (0usize..2, 1usize..60, prop::bool::weighted(0.7))
            .prop_map(|(c, n, shed)| Op::Send { c, n, shed }),
        1 => (0u64..40).prop_map(Op::Age),
    ]
}

#[derive(Default)]
struct Consumer {
    /// Seqs read and not yet sent, in order.
    hand: Vec<u64>,
    last_read: Option<u64>,
    acked: Option<u64>,
    delivered: BTreeSet<u64>,
}

/// The per-consumer identity for consumer `c`, and for the first one also the lane counters.
fn check(r: &Running, cs: &[Consumer], appended: &BTreeSet<u64>, at: &str) {
    let oldest = r.buffer.oldest_seq(Lane::Readings);
    for (name, c) in NAMES.iter().zip(cs) {
        let s = r.buffer.consumer_stats(name).unwrap().readings;
        let stored_unacked = appended
            .iter()
            .filter(|seq| oldest.is_some_and(|o| **seq >= o))
            .filter(|seq| c.acked.is_none_or(|a| **seq > a))
            .count() as u64;
        assert_eq!(
            appended.len() as u64,
            stored_unacked
                + s.dropped_quota
                + s.expired
                + s.evicted_in_flight
                + c.delivered.len() as u64,
            "{at}: {name}: {s:?}, stored un-acked {stored_unacked}, delivered {}",
            c.delivered.len()
        );
    }
    let lane = r.buffer.stats().readings;
    let first = r.buffer.consumer_stats(NAMES[0]).unwrap().readings;
    assert_eq!(
        (lane.dropped_quota, lane.expired, lane.evicted_in_flight),
        (first.dropped_quota, first.expired, first.evicted_in_flight),
        "{at}: the lane counters are the first consumer's view"
    );
}

fn read(r: &Running, name: &str, c: &mut Consumer, n: usize) {
    let got = r
        .buffer
        .read(name, Lane::Readings, c.last_read, n, usize::MAX)
        .unwrap();
    if let Some(last) = got.last() {
        c.last_read = Some(last.seq);
    }
    c.hand.extend(got.iter().map(|s| s.seq));
}

fn send(r: &Running, name: &str, c: &mut Consumer, n: usize, shed: bool) {
    let n = n.min(c.hand.len());
    if n == 0 {
        return;
    }
    let batch: Vec<u64> = c.hand.drain(..n).collect();
    let gone = if shed {
        r.buffer.shed_evicted(name, Lane::Readings, &batch).unwrap()
    } else {
        Vec::new()
    };
    for seq in &batch {
        if !gone.contains(seq) {
            assert!(
                c.delivered.insert(*seq),
                "{name}: seq {seq} delivered twice"
            );
        }
    }
    let last = *batch.last().unwrap();
    r.buffer.ack(name, Lane::Readings, last).unwrap();
    c.acked = Some(last);
}

async fn run(ops: Vec<Op>) {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(TS0));
    let mut o = opts(dir.path());
    o.consumers = NAMES.map(String::from).to_vec();
    o.readings_max_bytes = 3_000;
    o.when_full = WhenFull::DropOldest;
    o.max_age_s = 60;
    o.clock = clock.clone();
    let r = Running::open(o);
    let mut cs = [Consumer::default(), Consumer::default()];
    let mut appended = BTreeSet::new();
    let mut i = 0;
    for op in ops {
        match op {
            Op::Append(n) => {
                let records = (0..n)
                    .map(|_| {
                        i += 1;
                        reading(i)
                    })
                    .collect();
                appended.extend(r.buffer.append(records).await.unwrap());
            }
            Op::Read { c, n } => read(&r, NAMES[c], &mut cs[c], n),
            Op::Send { c, n, shed } => send(&r, NAMES[c], &mut cs[c], n, shed),
            Op::Age(s) => {
                clock.advance(s as i64 * 1000);
                r.buffer.enforce_retention().unwrap();
            }
        }
        check(&r, &cs, &appended, &format!("after {op:?}"));
    }
    // Drain both: read everything left, shed what was evicted, deliver the rest.
    for (name, c) in NAMES.iter().zip(cs.iter_mut()) {
        loop {
            read(&r, name, c, 100);
            if c.hand.is_empty() {
                break;
            }
            send(&r, name, c, usize::MAX, true);
        }
    }
    check(&r, &cs, &appended, "drained");
    assert_eq!(r.buffer.stats().readings.records, 0);
    for (name, c) in NAMES.iter().zip(&cs) {
        let s = r.buffer.consumer_stats(name).unwrap().readings;
        assert_eq!(s.evicted_in_flight, 0);
        assert!(c.delivered.is_subset(&appended));
        assert_eq!(
            appended.len() as u64,
            c.delivered.len() as u64 + s.dropped_quota + s.expired,
            "{name}"
        );
    }
    r.close().await;
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn for_each_consumer_every_reading_is_stored_dropped_in_hand_or_delivered_exactly_once(
        ops in prop::collection::vec(op(), 1..60)
    ) {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(run(ops));
    }
}

#[tokio::test]
async fn a_consumer_that_keeps_up_loses_nothing_while_a_stalled_one_loses_what_the_quota_evicts() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = opts(dir.path());
    o.consumers = NAMES.map(String::from).to_vec();
    o.readings_max_bytes = 3_000;
    let r = Running::open(o);
    let (fast, stalled) = (NAMES[0], NAMES[1]);
    let mut delivered = 0u64;
    let mut last = None;
    for k in 0..40u64 {
        let seqs = r
            .buffer
            .append((0..50).map(|j| reading(k * 50 + j)).collect())
            .await
            .unwrap();
        let got = r
            .buffer
            .read(fast, Lane::Readings, last, usize::MAX, usize::MAX)
            .unwrap();
        assert_eq!(got.len(), seqs.len(), "the fast consumer sees every record");
        delivered += got.len() as u64;
        last = got.last().map(|s| s.seq);
        r.buffer.ack(fast, Lane::Readings, last.unwrap()).unwrap();
    }
    let fast_stats = r.buffer.consumer_stats(fast).unwrap().readings;
    let stalled_stats = r.buffer.consumer_stats(stalled).unwrap().readings;
    assert_eq!(delivered, 2_000);
    assert_eq!(fast_stats.dropped_quota, 0, "{fast_stats:?}");
    let stored = r.buffer.stats().readings.records;
    assert!(stored < 2_000, "the quota evicted: {stored} stored");
    assert_eq!(
        stalled_stats.dropped_quota + stored,
        2_000,
        "the stalled consumer lost exactly what is no longer stored"
    );
    assert_eq!(
        r.buffer.stats().readings.dropped_quota,
        0,
        "the lane counters are the first consumer's"
    );
    // The stalled consumer gets exactly the rest.
    let rest = r
        .buffer
        .read(stalled, Lane::Readings, None, usize::MAX, usize::MAX)
        .unwrap();
    assert_eq!(rest.len() as u64, stored);
    r.close().await;
}

#[tokio::test]
async fn a_readings_only_consumer_holds_back_the_readings_lane_but_not_the_alarms_lane() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = opts(dir.path());
    o.consumers = NAMES.map(String::from).to_vec();
    o.readings_only_consumers = vec![NAMES[1].into()];
    let r = Running::open(o);
    r.buffer
        .append(vec![reading(1), alarm(1), reading(2)])
        .await
        .unwrap();
    r.buffer.ack(NAMES[0], Lane::Readings, 3).unwrap();
    r.buffer.ack(NAMES[0], Lane::Alarms, 3).unwrap();
    let s = r.buffer.stats();
    assert_eq!(
        s.alarms.records, 0,
        "alarms go once the first consumer acked them"
    );
    assert_eq!(
        s.readings.records, 2,
        "readings wait for the readings-only consumer"
    );
    r.buffer.ack(NAMES[1], Lane::Readings, 3).unwrap();
    assert_eq!(r.buffer.stats().readings.records, 0);
    r.close().await;
}

#[test]
fn readings_only_consumers_must_be_consumers_of_one_lane_and_leave_one_reading_both() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = opts(dir.path());
    o.consumers = NAMES.map(String::from).to_vec();
    let invalid = |o: &gateway_buffer::BufferOptions| {
        matches!(
            Buffer::open(o.clone()),
            Err(BufferError::InvalidOptions {
                field: "readings_only_consumers",
                ..
            })
        )
    };
    o.readings_only_consumers = vec!["stranger".into()];
    assert!(invalid(&o));
    o.readings_only_consumers = vec![NAMES[1].into()];
    o.alarms_only_consumers = vec![NAMES[1].into()];
    assert!(invalid(&o), "one consumer cannot be limited to both lanes");
    o.readings_only_consumers = vec![NAMES[0].into()];
    assert!(invalid(&o), "someone must read both lanes");
}
