//! Behaviour at tiny limits: quotas, expiry, corruption, dead letters, requeue, cursors.

mod common;

use std::sync::Arc;

use common::{Running, alarm, opts, read_all, reading};
use gateway_buffer::{
    AppendError, Buffer, BufferError, DeadLetterInput, DeadPayload, Lane, ManualClock, Stored,
    WhenFull,
};

const C: &str = "forwarder";

#[tokio::test]
async fn appended_records_come_back_in_order_with_their_seqs_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let r = Running::open(opts(dir.path()));
    let a = r
        .buffer
        .append(vec![reading(1), alarm(1), reading(2)])
        .await
        .unwrap();
    let b = r.buffer.append(vec![reading(3)]).await.unwrap();
    assert_eq!(a, vec![1, 2, 3]);
    assert_eq!(b, vec![4]);
    r.close().await;

    let r = Running::open(opts(dir.path()));
    let readings = read_all(&r.buffer, C, Lane::Readings);
    let seqs: Vec<u64> = readings.iter().map(|s| s.seq).collect();
    assert_eq!(seqs, vec![1, 3, 4]);
    assert_eq!(readings[2].record, reading(3));
    assert_eq!(read_all(&r.buffer, C, Lane::Alarms)[0].seq, 2);
    let next = r.buffer.append(vec![reading(5)]).await.unwrap();
    assert_eq!(next, vec![5], "seq resumes after the last durable one");
    assert_eq!(r.buffer.stats().readings.records, 4);
    r.close().await;
}

#[tokio::test]
async fn drop_oldest_counts_every_evicted_record_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = opts(dir.path());
    o.readings_max_bytes = 3000;
    let r = Running::open(o);
    let mut i = 0;
    for _ in 0..60 {
        let batch: Vec<_> = (0..37)
            .map(|_| {
                i += 1;
                reading(i)
            })
            .collect();
        r.buffer.append(batch).await.unwrap();
    }
    let s = r.buffer.stats().readings;
    assert_eq!(s.appended_total, 60 * 37);
    assert!(s.dropped_quota > 0, "the quota must have evicted something");
    assert_eq!(s.records + s.dropped_quota, s.appended_total);
    let left = read_all(&r.buffer, C, Lane::Readings);
    assert_eq!(left.len() as u64, s.records);
    // What is left is the newest records, contiguous up to the last seq.
    let last = left.last().unwrap().seq;
    assert_eq!(last, 60 * 37);
    assert_eq!(left[0].seq, last + 1 - left.len() as u64);
    r.close().await;
}

#[tokio::test]
async fn block_mode_reports_full_writes_nothing_and_recovers_after_ack() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = opts(dir.path());
    o.readings_max_bytes = 1500;
    o.when_full = WhenFull::Block;
    let r = Running::open(o);
    let mut appended = 0u64;
    let full = loop {
        match r.buffer.append((0..50).map(reading).collect()).await {
            Ok(_) => appended += 50,
            Err(e) => break e,
        }
        assert!(appended < 100_000, "never became full");
    };
    assert!(matches!(
        full,
        AppendError::Full {
            lane: Lane::Readings
        }
    ));
    assert!(full.is_retryable() && full.is_full());
    assert_eq!(r.buffer.stats().readings.appended_total, appended);
    // A call that touches only alarms is not refused.
    r.buffer.append(vec![alarm(1)]).await.unwrap();
    // Nor was anything of the refused call written.
    let all = read_all(&r.buffer, C, Lane::Readings);
    assert_eq!(all.len() as u64, appended);
    r.buffer
        .ack(C, Lane::Readings, all.last().unwrap().seq)
        .unwrap();
    assert_eq!(r.buffer.stats().readings.bytes, 0);
    r.buffer.append(vec![reading(1)]).await.unwrap();
    r.close().await;
}

#[tokio::test]
async fn alarms_survive_a_flood_of_readings() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = opts(dir.path());
    o.readings_max_bytes = 4000;
    o.alarms_max_bytes = 4000;
    let r = Running::open(o);
    let alarms: Vec<_> = (0..5).map(alarm).collect();
    r.buffer.append(alarms.clone()).await.unwrap();
    for k in 0..100 {
        r.buffer
            .append((k * 100..k * 100 + 100).map(reading).collect())
            .await
            .unwrap();
    }
    let s = r.buffer.stats();
    assert!(s.readings.dropped_quota > 0);
    assert_eq!(s.alarms.dropped_quota, 0);
    let got: Vec<_> = read_all(&r.buffer, C, Lane::Alarms)
        .into_iter()
        .map(|s| s.record)
        .collect();
    assert_eq!(got, alarms);
    r.close().await;
}

#[tokio::test]
async fn records_expire_by_storage_time_with_an_injected_clock() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(common::TS0));
    let mut o = opts(dir.path());
    o.max_age_s = 60;
    o.clock = clock.clone();
    let r = Running::open(o);
    r.buffer
        .append((0..10).map(reading).collect())
        .await
        .unwrap();
    clock.advance(59_000);
    assert_eq!(r.buffer.enforce_retention().unwrap(), 0);
    assert_eq!(r.buffer.stats().readings.oldest_age_ms, Some(59_000));
    clock.advance(1_000);
    assert_eq!(r.buffer.enforce_retention().unwrap(), 10);
    let s = r.buffer.stats().readings;
    assert_eq!((s.records, s.expired, s.blocks), (0, 10, 0));
    assert!(read_all(&r.buffer, C, Lane::Readings).is_empty());
    // The next commit runs expiry too.
    r.buffer.append(vec![reading(100)]).await.unwrap();
    clock.advance(61_000);
    r.buffer.append(vec![alarm(1)]).await.unwrap();
    assert_eq!(r.buffer.stats().readings.expired, 11);
    assert_eq!(r.buffer.stats().alarms.records, 1);
    r.close().await;
}

#[tokio::test]
async fn expiry_never_counts_records_already_acked() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(common::TS0));
    let mut o = opts(dir.path());
    o.max_age_s = 1;
    o.clock = clock.clone();
    let r = Running::open(o);
    let seqs = r
        .buffer
        .append((0..10).map(reading).collect())
        .await
        .unwrap();
    r.buffer.ack(C, Lane::Readings, seqs[3]).unwrap();
    assert_eq!(r.buffer.stats().readings.records, 6);
    clock.advance(5_000);
    assert_eq!(r.buffer.enforce_retention().unwrap(), 6);
    r.close().await;
}

#[tokio::test]
async fn a_database_sled_cannot_open_is_moved_aside_counted_and_kept() {
    let dir = tempfile::tempdir().unwrap();
    let r = Running::open(opts(dir.path()));
    r.buffer
        .append((0..100).map(reading).collect())
        .await
        .unwrap();
    r.close().await;
    let db = dir.path().join(gateway_buffer::DB_DIR_NAME);
    // A garbled config file: sled refuses the database.
    std::fs::write(db.join("conf"), b"\xff\x00 not a sled config \x13\x37").unwrap();
    let db_len = std::fs::metadata(db.join("db")).unwrap().len();

    let r = Running::open(opts(dir.path()));
    let s = r.buffer.stats();
    assert_eq!(s.moved_aside, 1);
    assert_eq!(s.readings.records, 0);
    let aside: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("buffer.sled.corrupt-"))
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    let kept = dir.path().join(&aside[0]).join("db");
    assert_eq!(
        std::fs::metadata(kept).unwrap().len(),
        db_len,
        "data kept, not wiped"
    );
    // The fresh buffer works, and continues above the seqs of the database moved aside.
    let seq = r.buffer.append(vec![reading(1)]).await.unwrap()[0];
    assert!(
        seq > 100,
        "seq {seq} repeats one of the moved-aside database"
    );
    r.close().await;
}

#[tokio::test]
async fn a_truncated_or_scribbled_log_never_panics_open() {
    for mode in ["truncate", "scribble"] {
        let dir = tempfile::tempdir().unwrap();
        let r = Running::open(opts(dir.path()));
        for k in 0..20 {
            r.buffer
                .append((k * 50..k * 50 + 50).map(reading).collect())
                .await
                .unwrap();
        }
        r.close().await;
        let file = dir.path().join(gateway_buffer::DB_DIR_NAME).join("db");
        let len = std::fs::metadata(&file).unwrap().len();
        if mode == "truncate" {
            let f = std::fs::OpenOptions::new().write(true).open(&file).unwrap();
            f.set_len(len / 2).unwrap();
        } else {
            let mut bytes = std::fs::read(&file).unwrap();
            let start = bytes.len() / 3;
            for (i, b) in bytes[start..start + 4096].iter_mut().enumerate() {
                *b = (i as u8).wrapping_mul(31) ^ 0xA5;
            }
            std::fs::write(&file, bytes).unwrap();
        }
        // Either sled recovers a prefix, or the database is moved aside: both are fine, a
        // panic or an error is not.
        let r = Running::open(opts(dir.path()));
        let s = r.buffer.stats();
        let readable = read_all(&r.buffer, C, Lane::Readings);
        assert!(readable.windows(2).all(|w| w[0].seq < w[1].seq), "{mode}");
        eprintln!(
            "{mode}: moved_aside={} readable={}",
            s.moved_aside,
            readable.len()
        );
        assert!(s.moved_aside <= 1);
        let seq = r.buffer.append(vec![reading(1)]).await.unwrap()[0];
        assert!(seq > readable.last().map_or(0, |s| s.seq), "{mode}");
        r.close().await;
    }
}

#[tokio::test]
async fn a_block_that_does_not_decode_becomes_a_dead_letter_and_the_lane_moves_on() {
    let dir = tempfile::tempdir().unwrap();
    let r = Running::open(opts(dir.path()));
    let first = r
        .buffer
        .append((0..10).map(reading).collect())
        .await
        .unwrap();
    // Separate blocks: a block is closed when the buffer reopens.
    r.close().await;
    let r = Running::open(opts(dir.path()));
    let second = r
        .buffer
        .append((10..20).map(reading).collect())
        .await
        .unwrap();
    r.close().await;
    {
        let db = common::open_raw_sled(dir.path());
        let tree = db.open_tree("lane.readings").unwrap();
        let mut key = vec![b'b'];
        key.extend_from_slice(&first[0].to_be_bytes());
        let mut v = tree.get(&key).unwrap().unwrap().to_vec();
        let n = v.len();
        v[n / 2] ^= 0xff;
        tree.insert(&key, v).unwrap();
        db.flush().unwrap();
    }
    let r = Running::open(opts(dir.path()));
    let got = read_all(&r.buffer, C, Lane::Readings);
    assert_eq!(got.iter().map(|s| s.seq).collect::<Vec<_>>(), second);
    let s = r.buffer.stats();
    assert_eq!(s.readings.undecodable, 10);
    assert_eq!(s.readings.records, 10);
    assert_eq!(s.dead_letters.count, 1);
    let letters = r.buffer.dead_letters().list(10, None).unwrap();
    assert_eq!(letters[0].reason, "undecodable_block");
    assert_eq!(letters[0].origin, "buffer/readings");
    assert!(matches!(letters[0].payload, DeadPayload::Raw(ref b) if !b.is_empty()));
    r.close().await;
}

#[tokio::test]
async fn requeued_records_round_trip_with_their_original_seqs() {
    let dir = tempfile::tempdir().unwrap();
    let r = Running::open(opts(dir.path()));
    let recs: Vec<Stored> = [(7, reading(7)), (9, reading(9)), (12, reading(12))]
        .into_iter()
        .map(|(seq, record)| Stored { seq, record })
        .collect();
    r.buffer.requeue(C, Lane::Readings, recs.clone()).unwrap();
    let err = r
        .buffer
        .requeue(C, Lane::Alarms, vec![recs[0].clone()])
        .unwrap_err();
    assert!(matches!(err, BufferError::WrongLane { seq: 7, .. }));
    assert!(matches!(
        r.buffer.requeue("stranger", Lane::Readings, recs.clone()),
        Err(BufferError::UnknownConsumer(_))
    ));
    assert_eq!(r.buffer.stats().readings.requeued, 3);
    r.close().await;

    let r = Running::open(opts(dir.path()));
    assert_eq!(r.buffer.read_requeued(C, Lane::Readings, 10).unwrap(), recs);
    assert!(
        r.buffer
            .read_requeued(C, Lane::Alarms, 10)
            .unwrap()
            .is_empty()
    );
    r.buffer.ack_requeued(C, Lane::Readings, 9).unwrap();
    assert_eq!(
        r.buffer.read_requeued(C, Lane::Readings, 10).unwrap(),
        recs[2..]
    );
    assert_eq!(r.buffer.stats().readings.requeued, 1);
    // Requeued records are apart from the lane.
    assert!(read_all(&r.buffer, C, Lane::Readings).is_empty());
    r.close().await;
}

#[tokio::test]
async fn records_requeued_for_one_consumer_are_replayed_to_it_alone() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = opts(dir.path());
    o.consumers = vec![C.into(), "cloud-mqtt".into()];
    let r = Running::open(o);
    let recs: Vec<Stored> = [(3, reading(3)), (5, reading(5))]
        .into_iter()
        .map(|(seq, record)| Stored { seq, record })
        .collect();
    r.buffer
        .requeue("cloud-mqtt", Lane::Readings, recs.clone())
        .unwrap();
    assert!(
        r.buffer
            .read_requeued(C, Lane::Readings, 10)
            .unwrap()
            .is_empty(),
        "the other consumer never sees them"
    );
    r.buffer.ack_requeued(C, Lane::Readings, 5).unwrap();
    assert_eq!(
        r.buffer
            .read_requeued("cloud-mqtt", Lane::Readings, 10)
            .unwrap(),
        recs,
        "another consumer's ack removes nothing"
    );
    r.buffer
        .ack_requeued("cloud-mqtt", Lane::Readings, 5)
        .unwrap();
    assert_eq!(r.buffer.stats().readings.requeued, 0);
    r.close().await;
}

#[tokio::test]
async fn records_requeued_by_an_older_version_go_to_the_accounting_consumer() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = opts(dir.path());
    o.consumers = vec![C.into(), "cloud-mqtt".into()];
    Running::open(o.clone()).close().await;
    {
        // The older layout: lane tag ++ seq, shared by every consumer.
        let db = common::open_raw_sled(dir.path());
        let tree = db.open_tree("requeue").unwrap();
        for seq in [4u64, 6] {
            let mut key = vec![b'r'];
            key.extend_from_slice(&seq.to_be_bytes());
            tree.insert(key, postcard::to_stdvec(&reading(seq)).unwrap())
                .unwrap();
        }
        db.flush().unwrap();
    }
    let r = Running::open(o);
    assert_eq!(r.buffer.stats().readings.requeued, 2);
    let seqs = |consumer: &str| -> Vec<u64> {
        r.buffer
            .read_requeued(consumer, Lane::Readings, 10)
            .unwrap()
            .iter()
            .map(|s| s.seq)
            .collect()
    };
    assert_eq!(seqs(C), [4, 6]);
    assert!(seqs("cloud-mqtt").is_empty());
    r.close().await;
}

#[tokio::test]
async fn the_dead_letter_quota_drops_the_oldest_and_counts_them() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = opts(dir.path());
    o.dead_letter_max_bytes = 1000;
    let r = Running::open(o);
    let dl = r.buffer.dead_letters();
    let put = |i: usize| DeadLetterInput {
        reason: "bad_json".into(),
        origin: "sensors/dev-1/temperature".into(),
        detail: format!("letter {i}"),
        payload: DeadPayload::Raw(vec![b'x'; 100]),
    };
    let ids: Vec<u64> = (0..20).map(|i| dl.put(put(i)).unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]));
    let s = r.buffer.stats().dead_letters;
    assert!(s.bytes <= 1000);
    assert_eq!(s.count + s.dropped, 20);
    let listed = dl.list(100, None).unwrap();
    assert_eq!(listed.len() as u64, s.count);
    assert_eq!(
        listed.last().unwrap().id,
        *ids.last().unwrap(),
        "newest kept"
    );
    let taken = dl.take(listed[0].id).unwrap().unwrap();
    assert_eq!(taken, listed[0]);
    assert_eq!(dl.get(listed[0].id).unwrap(), None);
    assert_eq!(dl.count(), s.count - 1);
    assert_eq!(dl.list(1, Some(listed[1].id)).unwrap()[0], listed[2]);
    let huge = DeadLetterInput {
        payload: DeadPayload::Raw(vec![0; 5000]),
        ..put(99)
    };
    assert!(matches!(
        dl.put(huge),
        Err(BufferError::DeadLetterTooLarge { .. })
    ));
    drop(dl);
    r.close().await;

    // Ids are never reused after a reopen, even when the newest letter was taken.
    let mut o = opts(dir.path());
    o.dead_letter_max_bytes = 1000;
    let r = Running::open(o);
    let dl = r.buffer.dead_letters();
    dl.take(*ids.last().unwrap()).unwrap().unwrap();
    r.buffer.flush().await.unwrap();
    drop(dl);
    r.close().await;
    let r = Running::open(opts(dir.path()));
    assert!(r.buffer.dead_letters().put(put(100)).unwrap() > *ids.last().unwrap());
    r.close().await;
}

#[tokio::test]
async fn acks_and_consumer_meta_survive_a_clean_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let r = Running::open(opts(dir.path()));
    let seqs = r
        .buffer
        .append((0..10).map(reading).collect())
        .await
        .unwrap();
    r.buffer.ack(C, Lane::Readings, seqs[4]).unwrap();
    r.buffer.set_consumer_meta(C, "inflight", b"6-10").unwrap();
    assert!(matches!(
        r.buffer.ack("nobody", Lane::Readings, 1),
        Err(BufferError::UnknownConsumer(_))
    ));
    r.close().await;

    let r = Running::open(opts(dir.path()));
    assert_eq!(r.buffer.acked(C, Lane::Readings), Some(seqs[4]));
    assert_eq!(r.buffer.acked(C, Lane::Alarms), None);
    assert_eq!(
        r.buffer.consumer_meta(C, "inflight").unwrap().as_deref(),
        Some(&b"6-10"[..])
    );
    let rest = read_all(&r.buffer, C, Lane::Readings);
    assert_eq!(rest.iter().map(|s| s.seq).collect::<Vec<_>>(), seqs[5..]);
    assert_eq!(r.buffer.stats().readings.records, 5);
    r.close().await;
}

#[tokio::test]
async fn component_state_written_before_an_append_is_durable_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let r = Running::open(opts(dir.path()));
    assert_eq!(r.buffer.state("alarm-engine").unwrap(), None);
    r.buffer.set_state("alarm-engine", b"v1").unwrap();
    r.buffer.append(vec![reading(1)]).await.unwrap();
    r.buffer.set_state("alarm-engine", b"v2").unwrap();
    r.close().await;

    let r = Running::open(opts(dir.path()));
    assert_eq!(
        r.buffer.state("alarm-engine").unwrap().as_deref(),
        Some(&b"v2"[..])
    );
    r.close().await;
}

#[tokio::test]
async fn a_block_is_deleted_only_when_every_consumer_acked_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = opts(dir.path());
    o.consumers = vec!["fast".into(), "slow".into()];
    let r = Running::open(o);
    let seqs = r
        .buffer
        .append((0..10).map(reading).collect())
        .await
        .unwrap();
    let last = *seqs.last().unwrap();
    r.buffer.ack("fast", Lane::Readings, last).unwrap();
    assert!(read_all(&r.buffer, "fast", Lane::Readings).is_empty());
    assert_eq!(read_all(&r.buffer, "slow", Lane::Readings).len(), 10);
    assert_eq!(r.buffer.stats().readings.blocks, 1);
    r.buffer.ack("slow", Lane::Readings, last).unwrap();
    let s = r.buffer.stats().readings;
    assert_eq!((s.records, s.blocks, s.bytes), (0, 0, 0));
    r.close().await;
}

#[tokio::test]
async fn read_honours_max_bytes_but_always_returns_one_record() {
    let dir = tempfile::tempdir().unwrap();
    let r = Running::open(opts(dir.path()));
    let seqs = r
        .buffer
        .append((0..10).map(reading).collect())
        .await
        .unwrap();
    let one = r.buffer.read(C, Lane::Readings, None, 100, 1).unwrap();
    assert_eq!(one.len(), 1);
    let some = r.buffer.read(C, Lane::Readings, None, 100, 130).unwrap();
    assert!(some.len() > 1 && some.len() < 10, "{}", some.len());
    let three = r
        .buffer
        .read(C, Lane::Readings, Some(seqs[2]), 3, usize::MAX)
        .unwrap();
    assert_eq!(three.iter().map(|s| s.seq).collect::<Vec<_>>(), seqs[3..6]);
    r.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appenders_share_flushes_and_get_unique_increasing_seqs() {
    let dir = tempfile::tempdir().unwrap();
    let r = Running::open(opts(dir.path()));
    let mut rx = r.buffer.subscribe();
    let tasks: Vec<_> = (0..8)
        .map(|t| {
            let b = r.buffer.clone();
            tokio::spawn(async move {
                let mut all = Vec::new();
                for k in 0..20 {
                    let seqs = b.append(vec![reading(t * 1000 + k); 5]).await.unwrap();
                    assert!(seqs.windows(2).all(|w| w[0] + 1 == w[1]));
                    all.extend(seqs);
                }
                all
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        let seqs = t.await.unwrap();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]));
        all.extend(seqs);
    }
    all.sort_unstable();
    all.dedup();
    assert_eq!(all, (1..=800).collect::<Vec<u64>>());
    rx.mark_changed();
    assert_eq!(*rx.borrow_and_update(), 800);
    assert_eq!(read_all(&r.buffer, C, Lane::Readings).len(), 800);
    r.close().await;
}

#[tokio::test]
async fn appends_after_shutdown_report_closed() {
    let dir = tempfile::tempdir().unwrap();
    let r = Running::open(opts(dir.path()));
    let b = r.buffer.clone();
    r.close().await;
    let err = b.append(vec![reading(1)]).await.unwrap_err();
    assert!(matches!(err, AppendError::Closed));
    assert!(!err.is_retryable());
}

#[tokio::test]
async fn a_second_open_of_a_locked_database_fails_and_moves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let r = Running::open(opts(dir.path()));
    r.buffer.append(vec![reading(1)]).await.unwrap();
    let err = Buffer::open(opts(dir.path())).unwrap_err();
    assert!(matches!(err, BufferError::Open { .. }), "{err}");
    let aside = std::fs::read_dir(dir.path())
        .unwrap()
        .filter(|e| {
            let name = e.as_ref().unwrap().file_name();
            name.to_string_lossy().starts_with("buffer.sled.corrupt-")
        })
        .count();
    assert_eq!(aside, 0, "nothing moved aside");
    assert_eq!(read_all(&r.buffer, C, Lane::Readings).len(), 1);
    r.close().await;
}

#[test]
fn invalid_options_name_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = opts(dir.path());
    o.consumers.clear();
    match Buffer::open(o) {
        Err(BufferError::InvalidOptions { field, .. }) => assert_eq!(field, "consumers"),
        other => panic!("unexpected: {other:?}"),
    }
}

#[tokio::test]
async fn an_alarms_only_consumer_holds_back_the_alarms_lane_but_not_the_readings_lane() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = opts(dir.path());
    o.consumers = vec![C.into(), "local".into()];
    o.alarms_only_consumers = vec!["local".into()];
    let r = Running::open(o);
    r.buffer
        .append(vec![reading(1), alarm(1), reading(2)])
        .await
        .unwrap();
    r.buffer.ack(C, Lane::Readings, 3).unwrap();
    r.buffer.ack(C, Lane::Alarms, 3).unwrap();
    let s = r.buffer.stats();
    assert_eq!(
        s.readings.records, 0,
        "readings go once the forwarder acked them"
    );
    assert_eq!(
        s.alarms.records, 1,
        "alarms wait for the alarms-only consumer"
    );
    r.buffer.ack("local", Lane::Alarms, 3).unwrap();
    assert_eq!(r.buffer.stats().alarms.records, 0);
    r.close().await;
}

#[test]
fn alarms_only_consumers_must_be_consumers_and_leave_one_for_readings() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = opts(dir.path());
    o.alarms_only_consumers = vec!["stranger".into()];
    assert!(matches!(
        Buffer::open(o.clone()),
        Err(BufferError::InvalidOptions {
            field: "alarms_only_consumers",
            ..
        })
    ));
    o.alarms_only_consumers = vec![C.into()];
    assert!(matches!(
        Buffer::open(o),
        Err(BufferError::InvalidOptions {
            field: "alarms_only_consumers",
            ..
        })
    ));
}
