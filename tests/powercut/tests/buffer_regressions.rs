//! Regression tests for durability findings of the power-cut trials, each one exact sequence.

use std::path::Path;

use gateway_buffer::{Buffer, BufferOptions, Lane, Reading, Record, Source};
use powercut::{Options, PowerCutMount};

fn reading(value: f64) -> Record {
    Record::Reading(Reading {
        device: "dev-1".into(),
        metric: "temperature".into(),
        value,
        unit: Some("C".into()),
        ts_ms: 1_764_081_600_000,
        source: Source::Mqtt,
    })
}

fn options(dir: &Path) -> BufferOptions {
    let mut o = BufferOptions::new(dir);
    o.commit_interval_ms = 0;
    o
}

/// Finding 1 (strict rule): `Buffer::open` creates `buffer.sled/` with `conf`, `db` and
/// `blobs/`, and every append `fdatasync`s `db`, but nothing ever fsyncs the directories
/// `<dir>/buffer.sled/` or `<dir>/`, so the database's names are not durable. After a power
/// cut the directory is gone and `open` silently starts an empty buffer: every acknowledged
/// record is lost and `moved_aside` stays 0.
#[test]
fn a_fresh_buffers_acknowledged_append_survives_a_power_cut() {
    let test = "a_fresh_buffers_acknowledged_append_survives_a_power_cut";
    if !powercut::require_fuse(test) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let mut disk =
        PowerCutMount::mount(&dir.path().join("backing"), &mnt, Options::default()).unwrap();
    // An installed gateway: its data directory exists and is durable.
    let data = mnt.join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::File::open(&mnt).unwrap().sync_all().unwrap();

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let seqs = rt.block_on(async {
        let (buffer, committer) = Buffer::open(options(&data)).unwrap();
        let shutdown = tokio_util::sync::CancellationToken::new();
        let task = tokio::spawn(committer.run(shutdown.clone()));
        let seqs = buffer
            .append(vec![reading(1.0), reading(2.0)])
            .await
            .unwrap();
        // Stop without `close`-style syncing beyond what sled's own drop does (it re-syncs
        // `db`, already durable); sled panics on drop once the disk returns EIO, so the handles
        // go before the power does.
        shutdown.cancel();
        let _ = task.await;
        drop(buffer);
        seqs
    });
    drop(rt);
    disk.power_cut().unwrap();

    assert!(
        data.join(gateway_buffer::DB_DIR_NAME).exists(),
        "{}/ vanished at the power cut: its directory entries were never fsynced",
        gateway_buffer::DB_DIR_NAME
    );
    let (buffer, _committer) = Buffer::open(options(&data)).unwrap();
    let got: Vec<u64> = buffer
        .read("forwarder", Lane::Readings, None, 100, usize::MAX)
        .unwrap()
        .iter()
        .map(|s| s.seq)
        .collect();
    assert_eq!(got, seqs, "acknowledged records lost at the power cut");
    assert_eq!(buffer.stats().moved_aside, 0);
}
