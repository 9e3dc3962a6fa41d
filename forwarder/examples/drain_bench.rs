//! Drain throughput and alarm latency of the forwarder against a local HTTP receiver.
//!
//! ```text
//! cargo run --release -p gateway-forwarder --example drain_bench -- [backlog_readings]
//! ```
//!
//! 1. Appends a backlog (default 1,000,000 readings) to a fresh buffer with two consumers, then
//!    drains it once with gzip and once without (batch 1000), timing each drain until the
//!    receiver has seen every record.
//!    With `BENCH_RTT_MS` set, the receiver answers each batch that long after it arrived (a
//!    distant cloud; the forwarder adapts its concurrency up to the default `max_in_flight`).
//! 2. With a forwarder running (gzip, batch 1000, linger 1 s), appends 5,000 readings/s in the
//!    background and an alarm every 20 ms, and reports p50/p99/max of append-to-receipt latency.

use std::collections::HashMap;
use std::io::Read;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::serve::ListenerExt as _;
use gateway_buffer::{
    AlarmEvent, AlarmState, Buffer, BufferOptions, Reading, Record, Severity, Source,
};
use gateway_forwarder::{Compression, Forwarder, ForwarderOptions};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

#[derive(Deserialize)]
struct Body {
    lane: String,
    records: Vec<Seq>,
}

#[derive(Deserialize)]
struct Seq {
    seq: u64,
}

#[derive(Default)]
struct Receiver {
    /// How long to sit on each batch before answering.
    rtt: Duration,
    readings: AtomicU64,
    /// Alarm seq → when it arrived.
    alarms: Mutex<HashMap<u64, Instant>>,
}

async fn ingest(State(rx): State<Arc<Receiver>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let now = Instant::now();
    let json = if headers.get("content-encoding").is_some_and(|v| v == "gzip") {
        let mut out = Vec::with_capacity(body.len() * 8);
        if flate2::read::GzDecoder::new(&body[..])
            .read_to_end(&mut out)
            .is_err()
        {
            return StatusCode::BAD_REQUEST;
        }
        out
    } else {
        body.to_vec()
    };
    let Ok(parsed) = serde_json::from_slice::<Body>(&json) else {
        return StatusCode::BAD_REQUEST;
    };
    if parsed.lane == "alarms" {
        let mut alarms = rx.alarms.lock().unwrap();
        for r in parsed.records {
            alarms.entry(r.seq).or_insert(now);
        }
    } else {
        rx.readings
            .fetch_add(parsed.records.len() as u64, Ordering::Relaxed);
    }
    if !rx.rtt.is_zero() {
        tokio::time::sleep(rx.rtt).await;
    }
    StatusCode::OK
}

fn reading(i: u64) -> Record {
    Record::Reading(Reading {
        device: format!("dev-{}", i % 50),
        metric: ["temperature", "humidity", "pressure"][(i % 3) as usize].into(),
        value: 20.0 + (i % 1000) as f64 / 37.0,
        unit: Some("C".into()),
        ts_ms: 1_764_081_600_000 + i as i64,
        source: Source::Mqtt,
    })
}

fn alarm(i: u64) -> Record {
    Record::Alarm(AlarmEvent {
        alarm: "overheat".into(),
        state: AlarmState::Raised,
        severity: Severity::Critical,
        device: format!("dev-{}", i % 50),
        metric: "temperature".into(),
        value: 36.2,
        threshold: Some(35.0),
        ts_ms: 1_764_081_600_000 + i as i64,
    })
}

fn options(url: &str, consumer: &str, compression: Compression) -> ForwarderOptions {
    let mut o = ForwarderOptions::new("gw-bench", url.parse().unwrap());
    o.consumer = consumer.into();
    o.batch_max_records = 1000;
    o.batch_max_bytes = 1024 * 1024;
    o.compression = compression;
    o
}

fn open_buffer(dir: &std::path::Path, consumers: &[&str]) -> (Buffer, CancellationToken) {
    let mut opts = BufferOptions::new(dir);
    opts.consumers = consumers.iter().map(|c| c.to_string()).collect();
    opts.readings_max_bytes = 1024 * 1024 * 1024;
    opts.commit_interval_ms = 2;
    let (buffer, committer) = Buffer::open(opts).expect("open buffer");
    let stop = CancellationToken::new();
    tokio::spawn(committer.run(stop.clone()));
    (buffer, stop)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx]
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let backlog: u64 = std::env::args()
        .nth(1)
        .map(|a| a.parse().expect("backlog_readings must be a number"))
        .unwrap_or(1_000_000);

    let rtt_ms: u64 = std::env::var("BENCH_RTT_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    println!("receiver answers after {rtt_ms} ms");
    let receiver = Arc::new(Receiver {
        rtt: Duration::from_millis(rtt_ms),
        ..Receiver::default()
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/ingest", listener.local_addr().unwrap());
    let app = Router::new()
        .route("/ingest", post(ingest))
        .with_state(receiver.clone());
    tokio::spawn(async move { axum::serve(listener.tap_io(nodelay), app).await.unwrap() });

    // --- Drain ---
    let dir = tempfile::tempdir().unwrap();
    let (buffer, buffer_stop) = open_buffer(dir.path(), &["gzip", "plain"]);
    let started = Instant::now();
    let mut i = 0;
    while i < backlog {
        let n = 1000.min(backlog - i);
        buffer
            .append((i..i + n).map(reading).collect())
            .await
            .unwrap();
        i += n;
    }
    let append_s = started.elapsed().as_secs_f64();
    println!(
        "appended {backlog} readings in {append_s:.2} s ({:.0}/s)",
        backlog as f64 / append_s
    );

    println!("| mode | readings | seconds | readings/s | batches | wire MB |");
    println!("|---|---|---|---|---|---|");
    for (consumer, compression) in [("gzip", Compression::Gzip), ("plain", Compression::None)] {
        receiver.readings.store(0, Ordering::Relaxed);
        let (handle, driver) =
            Forwarder::new(buffer.clone(), options(&url, consumer, compression)).unwrap();
        let stop = CancellationToken::new();
        let started = Instant::now();
        let task = tokio::spawn(driver.run(stop.clone(), Duration::from_secs(5)));
        while receiver.readings.load(Ordering::Relaxed) < backlog {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let secs = started.elapsed().as_secs_f64();
        stop.cancel();
        task.await.unwrap().unwrap();
        let stats = handle.stats();
        println!(
            "| {consumer} | {backlog} | {secs:.2} | {:.0} | {} | {:.1} |",
            backlog as f64 / secs,
            stats.batches_sent,
            stats.bytes_delivered as f64 / 1e6
        );
    }
    buffer_stop.cancel();
    drop(buffer);

    // --- Alarm latency under load ---
    // The drains above left ~100 MB of deleted database behind; have the kernel write back what
    // they dirtied now, so that writeback does not land in the middle of this measurement.
    let _ = std::process::Command::new("sync").status();
    let dir = tempfile::tempdir().unwrap();
    let (buffer, buffer_stop) = open_buffer(dir.path(), &["upstream"]);
    let (handle, driver) =
        Forwarder::new(buffer.clone(), options(&url, "upstream", Compression::Gzip)).unwrap();
    let stop = CancellationToken::new();
    let task = tokio::spawn(driver.run(stop.clone(), Duration::from_secs(5)));
    let load_stop = CancellationToken::new();
    let load = {
        let buffer = buffer.clone();
        let load_stop = load_stop.clone();
        tokio::spawn(async move {
            // 50 readings every 10 ms: 5,000 readings/s.
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            let mut i = 0;
            while !load_stop.is_cancelled() {
                tick.tick().await;
                buffer
                    .append((i..i + 50).map(reading).collect())
                    .await
                    .unwrap();
                i += 50;
            }
            i
        })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut sent: Vec<(u64, Instant)> = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    for n in 0..500 {
        tick.tick().await;
        let at = Instant::now();
        let seq = buffer.append(vec![alarm(n)]).await.unwrap()[0];
        sent.push((seq, at));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    load_stop.cancel();
    let background = load.await.unwrap();
    stop.cancel();
    task.await.unwrap().unwrap();
    let arrived = receiver.alarms.lock().unwrap().clone();
    let mut latencies: Vec<Duration> = sent
        .iter()
        .map(|(seq, at)| {
            arrived
                .get(seq)
                .expect("alarm delivered")
                .duration_since(*at)
        })
        .collect();
    latencies.sort();
    let stats = handle.stats();
    println!();
    println!(
        "alarm latency append→receipt, {} alarms at 50/s under {background} background readings \
         (5,000/s); readings delivered meanwhile: {}",
        latencies.len(),
        stats.records_delivered.readings
    );
    println!(
        "p50 {:.1} ms | p99 {:.1} ms | max {:.1} ms",
        percentile(&latencies, 0.50).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3,
        latencies.last().unwrap().as_secs_f64() * 1e3
    );
    // An alarm waits for its group commit: the commits' own times tell a slow disk apart from
    // a wait in the forwarder.
    let times = buffer.stats().commit_times;
    let phase = |h: &gateway_buffer::DurationHistogram| {
        format!(
            "p99 ≤ {} ms, max {:.1} ms",
            h.quantile_ms(0.99)
                .map_or("?".to_owned(), |v| v.to_string()),
            h.max_us as f64 / 1e3
        )
    };
    println!(
        "buffer group commits: {}; write {}; flush {}; idle flush {}",
        times.flush.count(),
        phase(&times.write),
        phase(&times.flush),
        phase(&times.idle_flush)
    );
    buffer_stop.cancel();
}

/// Sets `TCP_NODELAY` on an accepted connection: a response is never held back by Nagle's
/// algorithm waiting for the client's delayed ACK.
fn nodelay(tcp: &mut tokio::net::TcpStream) {
    let _ = tcp.set_nodelay(true);
}
