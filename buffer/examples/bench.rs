//! Buffer benchmark: durable append with concurrent appenders, read+ack drain, bytes on disk
//! and RSS with the backlog, reopen time; and for comparison raw sled with the same
//! parallelism: as many appender threads, each `apply_batch` of the same records per call, one
//! key per record, then `flush` (sled lets concurrent flushes share one fsync) before its next
//! call, as a durable append must.
//!
//! ```text
//! cargo run --release -p gateway-buffer --example bench [-- --records N --appenders N --per-call N]
//! ```

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gateway_buffer::{Buffer, BufferOptions, Lane, Reading, Record, Source};
use tokio_util::sync::CancellationToken;

const TS0: i64 = 1_764_081_600_000;

fn reading(i: u64) -> Record {
    Record::Reading(Reading {
        device: "dev-0042".into(),
        metric: "temperature".into(),
        value: 18.0 + ((i * 37) % 120) as f64 / 10.0,
        unit: Some("C".into()),
        ts_ms: TS0 + i as i64 * 250,
        source: Source::Mqtt,
    })
}

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Bytes this process has caused to be written to storage (`/proc/self/io` `write_bytes`): what
/// an SD card would see, sled's rewrites included.
fn written_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/io")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("write_bytes:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Allocated bytes of every file under `dir` (what the disk actually holds).
fn disk_bytes(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let md = e.metadata().unwrap();
        if md.is_dir() {
            total += disk_bytes(&e.path());
        } else {
            total += md.blocks() * 512;
        }
    }
    total
}

fn opts(dir: &Path) -> BufferOptions {
    let mut o = BufferOptions::new(dir);
    o.readings_max_bytes = 1 << 30;
    o.commit_interval_ms = 0;
    o.max_age_s = 0;
    o.cache_capacity_bytes = 8 * 1024 * 1024;
    o
}

fn main() {
    let records = arg("--records", 1_000_000);
    let appenders = arg("--appenders", 8);
    let per_call = arg("--per-call", 100);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let base = tempfile::Builder::new()
        .prefix("buffer-bench")
        .tempdir_in(std::env::var("BENCH_DIR").unwrap_or_else(|_| "/tmp".into()))
        .unwrap();
    let dir = base.path().join("buffer");
    println!(
        "buffer bench: {records} readings, {appenders} appenders x {per_call} records/call, \
         {} cores",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let rss_start = rss_mb();

    // 1. Durable append.
    let written_at_start = written_bytes();
    let (append_rate, mean_group) = rt.block_on(async {
        let (buffer, committer) = Buffer::open(opts(&dir)).unwrap();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(committer.run(shutdown.clone()));
        let per_task = records / appenders;
        let started = Instant::now();
        let mut tasks = Vec::new();
        for t in 0..appenders {
            let b = buffer.clone();
            tasks.push(tokio::spawn(async move {
                let mut i = t * per_task;
                let end = i + per_task;
                while i < end {
                    let n = per_call.min(end - i);
                    b.append((i..i + n).map(reading).collect()).await.unwrap();
                    i += n;
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let secs = started.elapsed().as_secs_f64();
        let s = buffer.stats();
        let n = s.readings.appended_total;
        shutdown.cancel();
        task.await.unwrap().unwrap();
        (n as f64 / secs, n as f64 / s.commits.max(1) as f64)
    });
    let disk = disk_bytes(&dir);
    let written_appending = written_bytes() - written_at_start;
    let rss_after_append = rss_mb();
    let written_at_reopen = written_bytes();

    // 2. Reopen with the backlog, then drain with read + ack.
    let (reopen, rss_reopened, drain_rate, drained) = rt.block_on(async {
        let started = Instant::now();
        let (buffer, committer) = Buffer::open(opts(&dir)).unwrap();
        let reopen = started.elapsed();
        let rss_reopened = rss_mb();
        assert_eq!(
            buffer.stats().readings.records,
            records / appenders * appenders
        );
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(committer.run(shutdown.clone()));
        let started = Instant::now();
        let mut drained = 0u64;
        loop {
            let got = buffer
                .read("forwarder", Lane::Readings, None, 1000, usize::MAX)
                .unwrap();
            let Some(last) = got.last() else { break };
            buffer.ack("forwarder", Lane::Readings, last.seq).unwrap();
            drained += got.len() as u64;
        }
        buffer.flush().await.unwrap();
        let secs = started.elapsed().as_secs_f64();
        shutdown.cancel();
        task.await.unwrap().unwrap();
        (reopen, rss_reopened, drained as f64 / secs, drained)
    });
    assert_eq!(drained, records / appenders * appenders);
    let written_draining = written_bytes() - written_at_reopen;

    // 3. Raw sled, same appenders and records per call.
    let raw_dir = base.path().join("raw");
    let (raw_append, raw_drain, raw_disk) = raw_sled(&raw_dir, records, appenders, per_call);

    let ratio = |a: f64, b: f64| a / b * 100.0;
    let per_rec = disk as f64 / records as f64;
    println!();
    println!("| measure | buffer | raw sled (1 key/record) | buffer / raw |");
    println!("|---|---:|---:|---:|");
    println!(
        "| durable append, readings/s ({appenders} appenders x {per_call}/call; buffer's mean group commit {mean_group:.0}) | {append_rate:.0} | {raw_append:.0} | {:.0}% |",
        ratio(append_rate, raw_append)
    );
    println!(
        "| read + ack drain, readings/s | {drain_rate:.0} | {raw_drain:.0} | {:.0}% |",
        ratio(drain_rate, raw_drain)
    );
    println!(
        "| bytes on disk per reading at {records} | {per_rec:.1} | {:.1} | |",
        raw_disk as f64 / records as f64
    );
    println!(
        "| bytes written per reading: appending / draining (`/proc/self/io`) | {:.1} / {:.1} | | |",
        written_appending as f64 / records as f64,
        written_draining as f64 / records as f64
    );
    println!(
        "| written / stored (appending) | {:.1}x | | |",
        written_appending as f64 / disk.max(1) as f64
    );
    println!("| RSS after appending {records}, MB | {rss_after_append:.1} | | |");
    println!(
        "| reopen with {records} buffered, ms | {:.0} | | |",
        reopen.as_secs_f64() * 1000.0
    );
    println!("| RSS right after reopen, MB | {rss_reopened:.1} | | |");
    println!("| RSS at start, MB | {rss_start:.1} | | |");
    let ok = |b: bool| if b { "met" } else { "MISSED" };
    println!();
    println!(
        "targets: append >= 100k/s {} and >= 70% raw {}; drain >= 100k/s {} and >= 70% raw {}; <= 64 B/reading {}; RSS <= 40 MB {}; reopen <= 1 s {}",
        ok(append_rate >= 100_000.0),
        ok(ratio(append_rate, raw_append) >= 70.0),
        ok(drain_rate >= 100_000.0),
        ok(ratio(drain_rate, raw_drain) >= 70.0),
        ok(per_rec <= 64.0),
        ok(rss_after_append.max(rss_reopened) <= 40.0),
        ok(reopen <= Duration::from_secs(1)),
    );
}

fn raw_sled(dir: &Path, records: u64, appenders: u64, per_call: u64) -> (f64, f64, u64) {
    let db = sled::Config::new()
        .path(dir)
        .cache_capacity(8 * 1024 * 1024)
        .flush_every_ms(None)
        .open()
        .unwrap();
    let tree = Arc::new(db.open_tree("raw").unwrap());
    let per_task = records / appenders;
    let records = per_task * appenders;
    let started = Instant::now();
    std::thread::scope(|scope| {
        for t in 0..appenders {
            let tree = &tree;
            scope.spawn(move || {
                let mut i = t * per_task;
                let end = i + per_task;
                while i < end {
                    let n = per_call.min(end - i);
                    let mut b = sled::Batch::default();
                    for k in i..i + n {
                        b.insert(&k.to_be_bytes(), postcard::to_stdvec(&reading(k)).unwrap());
                    }
                    tree.apply_batch(b).unwrap();
                    tree.flush().unwrap();
                    i += n;
                }
            });
        }
    });
    let append = records as f64 / started.elapsed().as_secs_f64();
    let disk = disk_bytes(dir);
    let started = Instant::now();
    let mut from = 0u64;
    let mut drained = 0u64;
    loop {
        let mut b = sled::Batch::default();
        let mut last = None;
        for item in tree.range(from.to_be_bytes()..).take(1000) {
            let (k, v) = item.unwrap();
            let _: Record = postcard::from_bytes(&v).unwrap();
            b.remove(k.clone());
            last = Some(u64::from_be_bytes(k.as_ref().try_into().unwrap()));
            drained += 1;
        }
        let Some(last) = last else { break };
        tree.apply_batch(b).unwrap();
        from = last + 1;
    }
    tree.flush().unwrap();
    let drain = drained as f64 / started.elapsed().as_secs_f64();
    (append, drain, disk)
}
