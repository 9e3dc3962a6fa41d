//! The Kafka sink's throughput against rskafka's own producer, the same records to the same
//! broker in the same run.
//!
//! ```text
//! cargo run --release -p gateway-forwarder --example kafka_bench -- [readings]
//! ```
//!
//! Starts a Kafka-protocol broker (tansu, see `test_peers::Kafka`) and, in rounds, sends the
//! same readings (default 200,000; 50 devices) to a fresh 3-partition topic each time:
//! - **producer**: rskafka's `BatchProducer`, one per partition (linger 5 ms, 1 MiB batches),
//!   every record handed to it at once, each record keyed and built exactly as the sink builds
//!   it; timed until every record is acked;
//! - **sink**: a forwarder with the Kafka sink (batch 5000 records or 4 MiB, linger 200 ms, one
//!   batch in flight: the sink's defaults; `BENCH_BATCH_RECORDS` and `BENCH_BATCH_BYTES` set
//!   others) draining a buffer that already holds the readings; timed from the forwarder's start
//!   until every record is acked.
//!
//! Reports each round, the ratio of the medians (sink / producer) and the process's peak resident
//! memory (`VmHWM`: the readings held for the producer included).

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::try_join_all;
use gateway_buffer::{Buffer, BufferOptions, Reading, Record, Source, Stored};
use gateway_config::KafkaCompression;
use gateway_forwarder::sinks::kafka::{kafka_record, partition_of};
use gateway_forwarder::{Forwarder, ForwarderOptions, KafkaSink, KafkaSinkOptions};
use rskafka::client::ClientBuilder;
use rskafka::client::partition::{Compression, UnknownTopicHandling};
use rskafka::client::producer::BatchProducerBuilder;
use rskafka::client::producer::aggregator::RecordAggregator;
use tokio_util::sync::CancellationToken;

const PARTITIONS: u32 = 3;
const GATEWAY_ID: &str = "gw-bench";

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

/// rskafka's own batching producer: every record at once, one producer per partition.
async fn producer_round(bootstrap: &str, topic: &str, records: &[Stored]) -> f64 {
    let client = ClientBuilder::new(vec![bootstrap.to_owned()])
        .build()
        .await
        .expect("connect");
    let mut producers = Vec::new();
    for p in 0..PARTITIONS as i32 {
        let partition = Arc::new(
            client
                .partition_client(topic, p, UnknownTopicHandling::Retry)
                .await
                .expect("partition client"),
        );
        producers.push(
            BatchProducerBuilder::new(partition)
                .with_linger(Duration::from_millis(5))
                .with_compression(Compression::NoCompression)
                .build(RecordAggregator::new(1024 * 1024)),
        );
    }
    let started = Instant::now();
    try_join_all(records.iter().map(|s| {
        let r = kafka_record(GATEWAY_ID, s);
        let p = partition_of(r.key.as_deref().unwrap_or_default(), PARTITIONS as i32);
        producers[p as usize].produce(r)
    }))
    .await
    .expect("produce");
    started.elapsed().as_secs_f64()
}

/// A forwarder with the Kafka sink draining `n` readings already in the buffer.
async fn sink_round(buffer: &Buffer, consumer: &str, bootstrap: &str, topic: &str, n: u64) -> f64 {
    let mut kafka = KafkaSinkOptions::new(GATEWAY_ID, vec![bootstrap.to_owned()], topic);
    kafka.compression = KafkaCompression::None;
    let sink = KafkaSink::new(kafka).expect("sink");
    let mut options = ForwarderOptions::new(
        GATEWAY_ID,
        format!("kafka://{bootstrap}").parse().expect("url"),
    );
    options.consumer = consumer.into();
    options.batch_max_records = env_usize("BENCH_BATCH_RECORDS", 5000);
    options.batch_max_bytes = env_usize("BENCH_BATCH_BYTES", 4 * 1024 * 1024);
    options.linger = Duration::from_millis(200);
    options.max_in_flight = 1;
    let (handle, driver) =
        Forwarder::with_sink(buffer.clone(), options, Arc::new(sink)).expect("forwarder");
    let stop = CancellationToken::new();
    let started = Instant::now();
    let task = tokio::spawn(driver.run(stop.clone(), Duration::from_secs(5)));
    while handle.stats().records_delivered.readings < n {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let secs = started.elapsed().as_secs_f64();
    stop.cancel();
    task.await.expect("join").expect("forwarder");
    secs
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n: u64 = std::env::args()
        .nth(1)
        .map(|a| a.parse().expect("readings must be a number"))
        .unwrap_or(200_000);
    let rounds = 3;
    let Some(kafka) = test_peers::Kafka::require("kafka_bench") else {
        std::process::exit(2);
    };
    let bootstrap = kafka.bootstrap();

    let dir = tempfile::tempdir().expect("temp dir");
    let consumers: Vec<String> = (0..rounds).map(|r| format!("kafka-{r}")).collect();
    let mut opts = BufferOptions::new(dir.path());
    opts.consumers = consumers.clone();
    opts.readings_max_bytes = 1024 * 1024 * 1024;
    opts.commit_interval_ms = 2;
    let (buffer, committer) = Buffer::open(opts).expect("open buffer");
    let buffer_stop = CancellationToken::new();
    tokio::spawn(committer.run(buffer_stop.clone()));
    let mut records = Vec::with_capacity(n as usize);
    let mut i = 0;
    while i < n {
        let batch: Vec<Record> = (i..(i + 1000).min(n)).map(reading).collect();
        let seqs = buffer.append(batch.clone()).await.expect("append");
        records.extend(
            seqs.into_iter()
                .zip(batch)
                .map(|(seq, record)| Stored { seq, record }),
        );
        i += 1000;
    }
    println!("{n} readings, 50 devices, {PARTITIONS} partitions, tansu in memory, no compression");
    println!(
        "| round | rskafka BatchProducer readings/s | Kafka sink readings/s | sink / producer |"
    );
    println!("|---|---|---|---|");
    let (mut producer, mut sink) = (Vec::new(), Vec::new());
    for (r, consumer) in consumers.iter().enumerate() {
        let topic = format!("bench-producer-{r}");
        kafka.create_topic(&topic, PARTITIONS);
        let p = n as f64 / producer_round(&bootstrap, &topic, &records).await;
        let topic = format!("bench-sink-{r}");
        kafka.create_topic(&topic, PARTITIONS);
        let s = n as f64 / sink_round(&buffer, consumer, &bootstrap, &topic, n).await;
        println!("| {} | {p:.0} | {s:.0} | {:.2} |", r + 1, s / p);
        producer.push(p);
        sink.push(s);
    }
    let (p, s) = (median(producer), median(sink));
    println!(
        "median: producer {p:.0}/s, sink {s:.0}/s, ratio {:.2}; peak RSS of this process {:.1} MB",
        s / p,
        peak_rss_mb()
    );
    buffer_stop.cancel();
}
