//! The seq watermark beside the database (`<dir>/seq.watermark`): seqs never restart below
//! ones handed out before when the database is moved aside, rolled back or truncated; seqs a
//! database lost are counted exactly; the reserved bound is on disk before a seq above it is
//! handed out; a watermark that does not decode is rewritten and seqs continue a step above.

mod common;

use std::path::Path;

use common::{Running, alarm, opts, read_all, reading};
use gateway_buffer::{Buffer, BufferOptions, DB_DIR_NAME, Lane, Record};

const C: &str = "forwarder";
const WATERMARK: &str = "seq.watermark";
/// A small reservation step, so that appends cross the reserved bound many times.
const STEP: u64 = 10;

/// Open with the reservation step `STEP`, waiting while a previous instance still holds the
/// database lock (as `Running::open` does).
fn open_small_step(o: BufferOptions) -> Running {
    Running::open_with(o, |o| Buffer::open_with_seq_reserve_step(o, STEP))
}

/// Append `n` readings numbered from `from`, `per_call` to a call; returns their seqs.
async fn append(r: &Running, from: u64, n: u64, per_call: u64) -> Vec<u64> {
    let mut seqs = Vec::new();
    let mut i = from;
    while i < from + n {
        let k = per_call.min(from + n - i);
        let recs: Vec<Record> = (i..i + k).map(reading).collect();
        seqs.extend(r.buffer.append(recs).await.unwrap());
        i += k;
    }
    seqs
}

/// `(reserved, durable)` of the watermark's two copies as they are on disk, per the layout
/// in `src/watermark.rs`: slot A at 0, slot B at 512, each
/// `"GBWM" | 1u32 | reserved u64 | durable u64 | crc32 of the first 24 bytes`, little-endian.
fn slots(dir: &Path) -> [Option<(u64, u64)>; 2] {
    let bytes = std::fs::read(dir.join(WATERMARK)).unwrap();
    let slot = |at: usize| {
        let s = bytes.get(at..at + 32)?;
        let crc = u32::from_le_bytes(s[24..28].try_into().unwrap());
        (&s[0..4] == b"GBWM" && crc == crc32fast::hash(&s[0..24])).then(|| {
            (
                u64::from_le_bytes(s[8..16].try_into().unwrap()),
                u64::from_le_bytes(s[16..24].try_into().unwrap()),
            )
        })
    };
    [slot(0), slot(512)]
}

fn garble_conf(dir: &Path) {
    let db = dir.join(DB_DIR_NAME);
    std::fs::write(db.join("conf"), b"\xff\x00 not a sled config \x13\x37").unwrap();
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

#[tokio::test]
async fn a_fresh_database_after_a_move_aside_continues_above_every_seq_used_before() {
    let dir = tempfile::tempdir().unwrap();
    let r = open_small_step(opts(dir.path()));
    // 95 seqs in calls of 7: the reserved bound moves several times.
    let before = append(&r, 0, 95, 7).await;
    // An alarm too: seqs are shared by both lanes.
    let alarm_seq = r.buffer.append(vec![alarm(1)]).await.unwrap()[0];
    r.close().await;
    let max_before = before.iter().copied().max().unwrap().max(alarm_seq);
    assert_eq!(max_before, 96);
    garble_conf(dir.path());

    let r = open_small_step(opts(dir.path()));
    let s = r.buffer.stats();
    assert_eq!(s.moved_aside, 1);
    assert_eq!(
        s.missing_at_open, 0,
        "the old records are kept aside, not lost"
    );
    assert_eq!(s.readings.records, 0);
    let after = append(&r, 1000, 20, 5).await;
    assert!(
        after[0] > max_before,
        "the fresh database reuses seq {} (had up to {max_before})",
        after[0]
    );
    // Above the bound reserved before the move-aside, and not far above it.
    assert!(after[0] <= max_before + 2 * STEP, "{after:?}");
    assert!(after.windows(2).all(|w| w[1] == w[0] + 1), "{after:?}");
    r.close().await;

    // A clean reopen after that continues where the fresh database stopped.
    let r = open_small_step(opts(dir.path()));
    assert_eq!(r.buffer.stats().missing_at_open, 0);
    let next = r.buffer.append(vec![reading(2000)]).await.unwrap()[0];
    assert_eq!(next, after.last().unwrap() + 1);
    r.close().await;
}

#[tokio::test]
async fn the_default_step_also_keeps_seqs_above_a_moved_aside_database() {
    let dir = tempfile::tempdir().unwrap();
    let r = Running::open(opts(dir.path()));
    let before = append(&r, 0, 300, 100).await;
    r.close().await;
    garble_conf(dir.path());
    let r = Running::open(opts(dir.path()));
    assert_eq!(r.buffer.stats().moved_aside, 1);
    let seq = r.buffer.append(vec![reading(1)]).await.unwrap()[0];
    assert!(seq > *before.last().unwrap(), "seq {seq} reused");
    r.close().await;
}

#[tokio::test]
async fn a_rolled_back_database_reports_exactly_the_missing_seqs_and_never_reuses_them() {
    let dir = tempfile::tempdir().unwrap();
    let backup = tempfile::tempdir().unwrap();
    let db = dir.path().join(DB_DIR_NAME);
    let r = open_small_step(opts(dir.path()));
    let first = append(&r, 0, 50, 8).await;
    assert_eq!(first.last(), Some(&50));
    r.close().await;
    // The database as it was with seqs 1..=50.
    copy_dir(&db, backup.path());

    let r = open_small_step(opts(dir.path()));
    let second = append(&r, 50, 30, 8).await;
    assert_eq!(second, (51..=80).collect::<Vec<u64>>());
    let handed_out = r.buffer.append(vec![alarm(3)]).await.unwrap()[0];
    assert_eq!(handed_out, 81);
    r.close().await;

    // The database comes back as the older copy; the watermark beside it is the newer one.
    std::fs::remove_dir_all(&db).unwrap();
    copy_dir(backup.path(), &db);
    let r = open_small_step(opts(dir.path()));
    let s = r.buffer.stats();
    assert_eq!(s.moved_aside, 0);
    assert_eq!(s.missing_at_open, 31, "seqs 51..=81 are missing");
    assert_eq!(s.readings.records, 50);
    let got: Vec<u64> = read_all(&r.buffer, C, Lane::Readings)
        .iter()
        .map(|x| x.seq)
        .collect();
    assert_eq!(got, first);
    let next = r.buffer.append(vec![reading(500)]).await.unwrap()[0];
    assert!(next > 81, "seq {next} reused");
    r.close().await;

    // Reported once: the next open finds nothing missing and continues in order.
    let r = open_small_step(opts(dir.path()));
    assert_eq!(r.buffer.stats().missing_at_open, 0);
    assert_eq!(
        r.buffer.append(vec![reading(501)]).await.unwrap()[0],
        next + 1
    );
    r.close().await;
}

#[tokio::test]
async fn a_truncated_log_never_loses_records_without_counting_their_seqs() {
    let dir = tempfile::tempdir().unwrap();
    let r = Running::open(opts(dir.path()));
    let stored = append(&r, 0, 1000, 50).await;
    r.close().await;
    let file = dir.path().join(DB_DIR_NAME).join("db");
    let len = std::fs::metadata(&file).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&file)
        .unwrap()
        .set_len(len / 2)
        .unwrap();

    let r = Running::open(opts(dir.path()));
    let s = r.buffer.stats();
    let readable = read_all(&r.buffer, C, Lane::Readings);
    eprintln!(
        "truncated to {} of {len} bytes: moved_aside={} readable={} missing_at_open={}",
        len / 2,
        s.moved_aside,
        readable.len(),
        s.missing_at_open
    );
    if s.moved_aside == 0 {
        let lost = stored.len() - readable.len();
        assert!(lost as u64 <= s.missing_at_open, "{lost} lost, {s:?}");
        assert_eq!(lost > 0, s.missing_at_open > 0, "{s:?}");
    }
    let seq = r.buffer.append(vec![reading(1)]).await.unwrap()[0];
    assert!(seq > *stored.last().unwrap(), "seq {seq} reused");
    r.close().await;
}

#[tokio::test]
async fn every_seq_handed_out_is_below_a_bound_already_written_by_a_fsyncing_store() {
    let dir = tempfile::tempdir().unwrap();
    let r = open_small_step(opts(dir.path()));
    let mut bounds = Vec::new();
    for k in 0..40u64 {
        let seqs = r
            .buffer
            .append((k * 3..k * 3 + 3).map(reading).collect())
            .await
            .unwrap();
        let max = *seqs.last().unwrap();
        // Slot B is written only by a reservation, which fsyncs slot A before writing it and
        // fsyncs again after; it must already cover every seq the append returned.
        let [a, b] = slots(dir.path());
        let (reserved_b, _) = b.expect("slot B decodes");
        let (reserved_a, durable_a) = a.expect("slot A decodes");
        assert!(
            max < reserved_b,
            "seq {max} handed out above the bound {reserved_b}"
        );
        assert_eq!(reserved_a, reserved_b);
        // `durable` follows the commits (it is written after the flush).
        assert_eq!(durable_a, max);
        if bounds.last() != Some(&reserved_b) {
            bounds.push(reserved_b);
        }
    }
    // 120 seqs with a step of 10: the bound moved many times, never more than a step ahead.
    assert!(bounds.len() >= 10, "{bounds:?}");
    assert!(bounds.windows(2).all(|w| w[0] < w[1]), "{bounds:?}");
    assert!(*bounds.last().unwrap() <= 121 + STEP, "{bounds:?}");
    r.close().await;
}

#[tokio::test]
async fn a_watermark_that_does_not_decode_is_rewritten_and_seqs_continue_a_step_above() {
    let dir = tempfile::tempdir().unwrap();
    let backup = tempfile::tempdir().unwrap();
    let db = dir.path().join(DB_DIR_NAME);
    let r = open_small_step(opts(dir.path()));
    append(&r, 0, 20, 4).await;
    r.close().await;
    copy_dir(&db, backup.path());
    let r = open_small_step(opts(dir.path()));
    let lost = append(&r, 20, 5, 5).await;
    assert_eq!(lost, vec![21, 22, 23, 24, 25]);
    r.close().await;

    // Double fault: the database rolled back to seq 20 AND the watermark garbled.
    std::fs::remove_dir_all(&db).unwrap();
    copy_dir(backup.path(), &db);
    std::fs::write(dir.path().join(WATERMARK), vec![0x5a; 600]).unwrap();
    let r = open_small_step(opts(dir.path()));
    let s = r.buffer.stats();
    assert_eq!(s.moved_aside, 0);
    assert_eq!(
        s.missing_at_open, 0,
        "cannot be counted without a watermark"
    );
    // Seqs continue one step above the database's (21 + STEP), so a loss of fewer than a step
    // of seqs is still never reused.
    let next = r.buffer.append(vec![reading(100)]).await.unwrap()[0];
    assert_eq!(next, 21 + STEP);
    r.close().await;
    assert!(slots(dir.path()).iter().all(Option::is_some), "rewritten");

    // The rewritten watermark works as usual from then on.
    let r = open_small_step(opts(dir.path()));
    assert_eq!(r.buffer.stats().missing_at_open, 0);
    assert_eq!(
        r.buffer.append(vec![reading(101)]).await.unwrap()[0],
        next + 1
    );
    r.close().await;
}

#[tokio::test]
async fn a_buffer_without_a_watermark_continues_at_its_own_counter_and_gets_one() {
    let dir = tempfile::tempdir().unwrap();
    let r = Running::open(opts(dir.path()));
    append(&r, 0, 30, 10).await;
    r.close().await;
    // As left by a version without the watermark.
    std::fs::remove_file(dir.path().join(WATERMARK)).unwrap();
    let r = Running::open(opts(dir.path()));
    assert_eq!(r.buffer.stats().missing_at_open, 0);
    assert_eq!(r.buffer.append(vec![reading(30)]).await.unwrap(), vec![31]);
    r.close().await;
    let [a, b] = slots(dir.path());
    assert_eq!(a.map(|x| x.1), Some(31));
    assert!(b.is_some_and(|(reserved, _)| reserved > 31));
}

#[tokio::test]
async fn oldest_seq_is_the_first_seq_of_the_oldest_stored_block_of_the_lane() {
    let dir = tempfile::tempdir().unwrap();
    let r = Running::open(opts(dir.path()));
    assert_eq!(r.buffer.oldest_seq(Lane::Readings), None);
    assert_eq!(r.buffer.oldest_seq(Lane::Alarms), None);
    let a = r.buffer.append(vec![alarm(1)]).await.unwrap()[0];
    let first = append(&r, 0, 300, 50).await;
    assert_eq!(r.buffer.oldest_seq(Lane::Alarms), Some(a));
    assert_eq!(r.buffer.oldest_seq(Lane::Readings), Some(first[0]));
    // Acking part of the oldest block keeps it (and its first seq) stored.
    r.buffer.ack(C, Lane::Readings, first[10]).unwrap();
    assert_eq!(r.buffer.oldest_seq(Lane::Readings), Some(first[0]));
    // Acking whole blocks deletes them: the oldest seq moves up to a later block's first
    // seq, still at or below the first un-acked record.
    r.buffer.ack(C, Lane::Readings, first[280]).unwrap();
    let oldest = r.buffer.oldest_seq(Lane::Readings).unwrap();
    assert!(oldest > first[0] && oldest <= first[281], "{oldest}");
    // It survives a reopen.
    r.close().await;
    let r = Running::open(opts(dir.path()));
    assert_eq!(r.buffer.oldest_seq(Lane::Readings), Some(oldest));
    r.buffer
        .ack(C, Lane::Readings, *first.last().unwrap())
        .unwrap();
    r.buffer.ack(C, Lane::Alarms, a).unwrap();
    assert_eq!(r.buffer.oldest_seq(Lane::Readings), None);
    assert_eq!(r.buffer.oldest_seq(Lane::Alarms), None);
    r.close().await;
}
