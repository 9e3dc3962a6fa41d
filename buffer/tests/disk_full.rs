//! A full disk under the buffer: a small tmpfs (mounted by the test, so it needs root) is filled
//! while records are appended. The buffer must stop taking appends at the first failed write,
//! say so in its health and counters, see the space come back, and after the reopen hold every
//! record an `append` returned seqs for.
//!
//! Without root the test is reported as not run for real ([`test_peers::missing`]); with `CI` set it
//! fails instead.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::Running;
use gateway_buffer::{AppendError, BufferHealth, Lane, Reading, Record, Source};

/// A reading whose device id carries `id` and some incompressible bytes, so that the disk fills
/// after a few hundred appends rather than many thousands.
fn reading(id: u64) -> Record {
    let mut x = id.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let noise: String = (0..48)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            char::from(b'a' + (x % 26) as u8)
        })
        .collect();
    Record::Reading(Reading {
        device: format!("dev-{id:08}-{noise}"),
        metric: "temperature".into(),
        value: id as f64,
        unit: None,
        ts_ms: common::TS0 + id as i64,
        source: Source::Serial,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_stops_appends_until_reopened_and_loses_no_acknowledged_record() {
    let test = "a_full_disk_stops_appends_until_reopened_and_loses_no_acknowledged_record";
    let Some(fs) = test_peers::Tmpfs::mount(test, 8 * 1024) else {
        return;
    };
    let mut o = common::opts(&fs.path().join("buffer"));
    o.commit_interval_ms = 1;
    let running = Running::open(o.clone());
    let b = running.buffer.clone();

    // Acknowledged records: seq -> id.
    let mut acked: BTreeMap<u64, u64> = BTreeMap::new();
    let mut next_id = 0u64;
    let append = |b: &gateway_buffer::Buffer, next_id: &mut u64| {
        let ids: Vec<u64> = (*next_id..*next_id + 20).collect();
        *next_id += 20;
        let records: Vec<Record> = ids.iter().map(|&i| reading(i)).collect();
        let b = b.clone();
        async move { (ids, b.append(records).await) }
    };
    for _ in 0..5 {
        let (ids, r) = append(&b, &mut next_id).await;
        let seqs = r.expect("appends succeed before the disk is full");
        acked.extend(seqs.into_iter().zip(ids));
    }
    assert!(b.health().is_writable());

    let filler = fs.path().join("filler");
    let filled = test_peers::fill(&filler);
    assert!(filled > 0, "the filler took the free space");

    // Append until the buffer refuses: sled's log must grow, and the disk has no room.
    let deadline = Instant::now() + Duration::from_secs(60);
    let first_error = loop {
        assert!(
            Instant::now() < deadline,
            "appends kept succeeding on a full disk ({} acknowledged)",
            acked.len()
        );
        let (ids, r) = append(&b, &mut next_id).await;
        match r {
            Ok(seqs) => acked.extend(seqs.into_iter().zip(ids)),
            Err(e) => break e,
        }
    };
    assert!(
        first_error.is_write_error(),
        "a full disk is a write error: {first_error}"
    );
    let health = b.health();
    let BufferHealth::WriteFailed { error, .. } = &health else {
        panic!("health after a failed write: {health:?}");
    };
    assert!(
        error.contains("No space left"),
        "the health names the cause: {error}"
    );
    assert!(b.stats().write_errors >= 1, "the failed write is counted");

    // From now on appends are refused at once, without touching sled.
    let (_, r) = append(&b, &mut next_id).await;
    match r {
        Err(AppendError::Unavailable { reason }) => {
            assert!(reason.contains("No space left"), "{reason}")
        }
        other => panic!("an append after the failure: {other:?}"),
    }
    // Acks keep working (in memory), so the forwarder is not taken down.
    let last = *acked.keys().next_back().expect("records were acknowledged");
    b.ack("forwarder", Lane::Readings, last)
        .expect("an ack while writes fail");

    // Space comes back: the probe notices and asks for a reopen.
    std::fs::remove_file(&filler).expect("remove the filler");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match b.health() {
            BufferHealth::ReopenNeeded { error, .. } => {
                assert!(error.contains("No space left"), "{error}");
                break;
            }
            other => assert!(
                Instant::now() < deadline,
                "the probe did not see free space within 30 s: {other:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_, r) = append(&b, &mut next_id).await;
    assert!(
        matches!(r, Err(AppendError::Unavailable { .. })),
        "this instance still refuses appends: {r:?}"
    );
    assert!(
        !fs.path()
            .join("buffer")
            .join(gateway_buffer::PROBE_FILE_NAME)
            .exists(),
        "the probe file is removed"
    );

    // Reopen: every acknowledged record is there, with its seq.
    running.shutdown.cancel();
    let _ = running.task.await.expect("committer task");
    drop(b);
    drop(running.buffer);
    let reopened = Running::open(o);
    let b = reopened.buffer.clone();
    assert!(b.health().is_writable());
    let stored: BTreeMap<u64, u64> = common::read_all(&b, "forwarder", Lane::Readings)
        .into_iter()
        .map(|s| match s.record {
            Record::Reading(r) => (s.seq, r.value as u64),
            other => panic!("unexpected record {other:?}"),
        })
        .collect();
    for (seq, id) in &acked {
        assert_eq!(
            stored.get(seq),
            Some(id),
            "acknowledged seq {seq} (record {id}) after the reopen"
        );
    }
    // And the buffer takes appends again, above every seq handed out before.
    let (ids, r) = append(&b, &mut next_id).await;
    let seqs = r.expect("appends succeed after the reopen");
    assert_eq!(seqs.len(), ids.len());
    assert!(seqs[0] > last, "seqs continue above {last}: {seqs:?}");
    reopened.close().await;
}
