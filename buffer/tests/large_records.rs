//! Records of any size up to the record limit round-trip through append, read and reopen, and
//! a large record never makes its neighbours unreadable.

mod common;

use common::{Running, TS0, opts, read_all};
use gateway_buffer::{AppendError, Lane, MAX_RECORD_BYTES, Reading, Record, Source};
use proptest::prelude::*;

const C: &str = "forwarder";

/// A reading whose unit string is `unit_len` bytes long (the way one JSON payload can make one
/// record big), with varied content so deflate cannot squeeze it to nothing.
fn reading(i: u64, unit_len: usize) -> Record {
    let unit: String = (0..unit_len)
        .map(|k| char::from(b'a' + ((k as u64 * 7 + i * 13) % 26) as u8))
        .collect();
    Record::Reading(Reading {
        device: format!("dev-{:04}", i % 50),
        metric: "temperature".into(),
        value: i as f64 / 3.0,
        unit: Some(unit),
        ts_ms: TS0 + i as i64,
        source: Source::Mqtt,
    })
}

fn size() -> impl Strategy<Value = usize> {
    prop_oneof![
        8 => 0usize..64,
        2 => 1_000usize..20_000,
        1 => 60_000usize..300_000,
    ]
}

async fn round_trip(calls: Vec<Vec<usize>>) {
    let dir = tempfile::tempdir().unwrap();
    let r = Running::open(opts(dir.path()));
    let mut want = Vec::new();
    let mut i = 0u64;
    for call in calls {
        let records: Vec<Record> = call
            .iter()
            .map(|&n| {
                i += 1;
                reading(i, n)
            })
            .collect();
        let seqs = r.buffer.append(records.clone()).await.unwrap();
        want.extend(seqs.into_iter().zip(records));
    }
    let got: Vec<_> = read_all(&r.buffer, C, Lane::Readings)
        .into_iter()
        .map(|s| (s.seq, s.record))
        .collect();
    assert_eq!(got.len(), want.len());
    assert!(got == want, "read back differs before reopen");
    assert_eq!(r.buffer.stats().readings.undecodable, 0);
    assert_eq!(r.buffer.dead_letters().count(), 0);
    r.close().await;

    let r = Running::open(opts(dir.path()));
    let got: Vec<_> = read_all(&r.buffer, C, Lane::Readings)
        .into_iter()
        .map(|s| (s.seq, s.record))
        .collect();
    assert!(got == want, "read back differs after reopen");
    assert_eq!(r.buffer.stats().readings.undecodable, 0);
    assert_eq!(r.buffer.stats().readings.records, want.len() as u64);
    r.close().await;
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn mixed_small_and_huge_records_round_trip_through_append_read_and_reopen(
        calls in prop::collection::vec(prop::collection::vec(size(), 1..12), 1..8)
    ) {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(round_trip(calls));
    }
}

#[tokio::test]
async fn a_large_reading_behind_small_ones_of_other_devices_leaves_every_one_readable() {
    // The case that used to make the whole block undecodable: small readings, then one over
    // the old 64 KiB inflate cap, in one group.
    let mut calls = vec![vec![10; 40]];
    calls[0].push(200_000);
    calls[0].extend([10; 40]);
    round_trip(calls).await;
}

#[tokio::test]
async fn a_record_over_the_record_limit_is_refused_and_nothing_of_its_call_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let r = Running::open(opts(dir.path()));
    let err = r
        .buffer
        .append(vec![reading(1, 10), reading(2, MAX_RECORD_BYTES)])
        .await
        .unwrap_err();
    assert!(
        matches!(err, AppendError::RecordTooLarge { index: 1, .. }),
        "{err}"
    );
    assert!(!err.is_retryable());
    assert_eq!(r.buffer.stats().readings.appended_total, 0);
    // A record just under the limit is stored and read back.
    let big = reading(3, MAX_RECORD_BYTES - 200);
    let seqs = r.buffer.append(vec![big.clone()]).await.unwrap();
    let got = read_all(&r.buffer, C, Lane::Readings);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].seq, seqs[0]);
    assert!(got[0].record == big);
    r.close().await;
}
