//! Eviction accounting: under any order of appends (which evict at the quota), reads, expiry,
//! sheds and acks, every appended reading is, at every moment, exactly one of: still buffered,
//! counted dropped or expired, evicted while the consumer holds it (it will deliver or shed
//! it), or delivered by the consumer. Never two, never none.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;

use common::{Running, TS0, opts};
use gateway_buffer::{Lane, ManualClock, Reading, Record, Source, WhenFull};
use proptest::prelude::*;

const C: &str = "forwarder";

#[derive(Clone, Debug)]
enum Op {
    /// Append n readings (one call); may evict at the quota.
    Append(usize),
    /// The consumer reads up to n more records after what it holds.
    Read(usize),
    /// The consumer sends its first n held records: sheds the evicted ones if `shed`, delivers
    /// the rest, and acks up to the last of the n.
    Send { n: usize, shed: bool },
    /// Time passes by this many seconds and expiry runs.
    Age(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (1usize..80).prop_map(Op::Append),
        4 => (1usize..60).prop_map(Op::Read),
        4 => (1usize..60, prop::bool::weighted(0.7)).prop_map(|(n, shed)| Op::Send { n, shed }),
        1 => (0u64..40).prop_map(Op::Age),
    ]
}

/// A reading that deflate cannot squeeze much, so a small quota holds only a few blocks.
fn reading(i: u64) -> Record {
    Record::Reading(Reading {
        device: format!("dev-{:x}", i.wrapping_mul(0x9e37_79b9_7f4a_7c15)),
        metric: "temperature".into(),
        value: (i as f64).sqrt(),
        unit: Some("C".into()),
        ts_ms: TS0 + (i as i64) * 997,
        source: Source::Mqtt,
    })
}

struct Consumer {
    /// Seqs read and not yet sent, in order.
    hand: Vec<u64>,
    last_read: Option<u64>,
    delivered: BTreeSet<u64>,
}

fn check(r: &Running, c: &Consumer, appended: &BTreeSet<u64>, at: &str) {
    let s = r.buffer.stats().readings;
    assert_eq!(s.appended_total, appended.len() as u64);
    assert_eq!(
        s.appended_total,
        s.records
            + s.dropped_quota
            + s.expired
            + s.undecodable
            + s.evicted_in_flight
            + c.delivered.len() as u64,
        "{at}: {s:?}, delivered {}",
        c.delivered.len()
    );
}

async fn run(ops: Vec<Op>) -> u64 {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(TS0));
    let mut o = opts(dir.path());
    o.readings_max_bytes = 3_000;
    o.when_full = WhenFull::DropOldest;
    o.max_age_s = 60;
    o.clock = clock.clone();
    let r = Running::open(o);
    let mut c = Consumer {
        hand: Vec::new(),
        last_read: None,
        delivered: BTreeSet::new(),
    };
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
            Op::Read(n) => {
                let got = r
                    .buffer
                    .read(C, Lane::Readings, c.last_read, n, usize::MAX)
                    .unwrap();
                if let Some(last) = got.last() {
                    c.last_read = Some(last.seq);
                }
                c.hand.extend(got.iter().map(|s| s.seq));
            }
            Op::Send { n, shed } => {
                let n = n.min(c.hand.len());
                if n == 0 {
                    continue;
                }
                let batch: Vec<u64> = c.hand.drain(..n).collect();
                let gone = if shed {
                    r.buffer.shed_evicted(C, Lane::Readings, &batch).unwrap()
                } else {
                    Vec::new()
                };
                for seq in &batch {
                    if !gone.contains(seq) {
                        assert!(c.delivered.insert(*seq), "seq {seq} delivered twice");
                    }
                }
                r.buffer
                    .ack(C, Lane::Readings, *batch.last().unwrap())
                    .unwrap();
            }
            Op::Age(s) => {
                clock.advance(s as i64 * 1000);
                r.buffer.enforce_retention().unwrap();
            }
        }
        check(&r, &c, &appended, &format!("after {op:?}"));
    }
    // Drain: read everything left, shed what was evicted, deliver the rest.
    loop {
        let got = r
            .buffer
            .read(C, Lane::Readings, c.last_read, 100, usize::MAX)
            .unwrap();
        if let Some(last) = got.last() {
            c.last_read = Some(last.seq);
        }
        c.hand.extend(got.iter().map(|s| s.seq));
        if c.hand.is_empty() {
            break;
        }
        let batch: Vec<u64> = std::mem::take(&mut c.hand);
        let gone = r.buffer.shed_evicted(C, Lane::Readings, &batch).unwrap();
        c.delivered
            .extend(batch.iter().filter(|s| !gone.contains(s)).copied());
        r.buffer
            .ack(C, Lane::Readings, *batch.last().unwrap())
            .unwrap();
    }
    check(&r, &c, &appended, "drained");
    let s = r.buffer.stats().readings;
    assert_eq!(s.records, 0);
    assert_eq!(s.evicted_in_flight, 0);
    assert!(c.delivered.is_subset(&appended));
    assert_eq!(
        appended.len() as u64,
        c.delivered.len() as u64 + s.dropped_quota + s.expired
    );
    r.close().await;
    s.dropped_quota + s.expired
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn every_reading_is_buffered_dropped_in_hand_or_delivered_exactly_once(
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
async fn a_record_evicted_while_the_consumer_holds_it_counts_as_delivered_or_as_dropped_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = opts(dir.path());
    o.readings_max_bytes = 3_000;
    let r = Running::open(o);
    let first: Vec<u64> = r
        .buffer
        .append((1..=200).map(reading).collect())
        .await
        .unwrap();
    // The consumer takes the first 100 and starts sending them.
    let held = r
        .buffer
        .read(C, Lane::Readings, None, 100, usize::MAX)
        .unwrap();
    assert_eq!(held.len(), 100);
    // A flood evicts the first block while they are out.
    for k in 0..20u64 {
        r.buffer
            .append((0..200).map(|j| reading(1_000 + k * 200 + j)).collect())
            .await
            .unwrap();
    }
    let s = r.buffer.stats().readings;
    assert!(
        r.buffer.oldest_seq(Lane::Readings).unwrap() > first[199],
        "{s:?}"
    );
    assert_eq!(
        s.evicted_in_flight, 100,
        "held records are the consumer's to count"
    );
    let dropped_before = s.dropped_quota;
    // The attempt in flight succeeds for the first 60: delivered, not dropped.
    r.buffer.ack(C, Lane::Readings, held[59].seq).unwrap();
    let s = r.buffer.stats().readings;
    assert_eq!(s.evicted_in_flight, 40);
    assert_eq!(s.dropped_quota, dropped_before);
    // The rest are shed before the next attempt: dropped, once.
    let rest: Vec<u64> = held[60..].iter().map(|s| s.seq).collect();
    assert_eq!(
        r.buffer.shed_evicted(C, Lane::Readings, &rest).unwrap(),
        rest
    );
    assert_eq!(
        r.buffer.shed_evicted(C, Lane::Readings, &rest).unwrap(),
        vec![]
    );
    let s = r.buffer.stats().readings;
    assert_eq!(s.evicted_in_flight, 0);
    assert_eq!(s.dropped_quota, dropped_before + 40);
    // Records never handed over (101..=200 of the first call) were counted at eviction.
    assert_eq!(s.appended_total, s.records + s.dropped_quota + 60, "{s:?}");
    r.close().await;
}
