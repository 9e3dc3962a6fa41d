//! What alarm rules cost the ingest path: 50 rules over 10,000 device+metric series.
//!
//! Two measurements in one run, so the ratio holds on a noisy machine:
//! 1. the rule engine alone, per reading (criterion-style repeated timing, median of runs);
//! 2. the whole ingest path (decode → rules → durable group-committed append) with no rules and
//!    with the 50 rules, same readings, same buffer settings; the ratio is the rules' share.
//!
//! Target: the rules cost at most 10% of ingest throughput.
//! Run: `cargo bench -p gateway --bench alarm_rules` (set `ALARM_BENCH_READINGS` to change the
//! number of readings per ingest run; default 200,000).

use gateway::alarm::{Band, Condition, Engine, Rule};
use gateway::decode::MqttDecoder;
use gateway::metrics::IngestMetrics;
use gateway::pipeline::Pipeline;
use gateway_buffer::{Buffer, BufferOptions, Reading, Severity, Source};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

const DEVICES: usize = 2_500;
const METRICS: [&str; 4] = ["temperature", "humidity", "pressure", "battery"];
const RULES: usize = 50;
/// Concurrent ingesting tasks, like MQTT messages in flight.
const APPENDERS: usize = 64;

fn rules() -> Vec<Rule> {
    (0..RULES)
        .map(|i| {
            let metric = METRICS[i % METRICS.len()];
            // Device globs of different selectivity: all devices, a tenth, a hundredth.
            let device = match i % 3 {
                0 => "*".to_owned(),
                1 => format!("dev-{}*", i % 10),
                _ => format!("dev-{:02}*", i % 100),
            };
            let condition = match i % 5 {
                0..=2 => Condition::Threshold {
                    above: Some(Band {
                        trigger: 1e6 + i as f64,
                        clear: 1e6,
                    }),
                    below: Some(Band {
                        trigger: -1e6,
                        clear: -1e6 + 1.0,
                    }),
                },
                3 => Condition::Rate { above_per_s: 1e9 },
                _ => Condition::Silence {
                    no_data_ms: 3_600_000,
                },
            };
            Rule::new(
                &format!("rule-{i}"),
                &device,
                metric,
                condition,
                10,
                0,
                Severity::Warning,
            )
            .unwrap()
        })
        .collect()
}

/// Readings cycling over every series, with increasing timestamps.
fn readings(n: usize) -> Vec<Reading> {
    (0..n)
        .map(|i| {
            let series = i % (DEVICES * METRICS.len());
            Reading {
                device: format!("dev-{:04}", series / METRICS.len()),
                metric: METRICS[series % METRICS.len()].to_owned(),
                value: 20.0 + (i % 17) as f64 * 0.1,
                unit: None,
                ts_ms: 1_764_081_600_000 + i as i64,
                source: Source::Mqtt,
            }
        })
        .collect()
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.partial_cmp(b).unwrap());
    xs[xs.len() / 2]
}

/// Nanoseconds per reading of the engine alone (after the series exist).
fn engine_ns_per_reading(rs: &[Reading]) -> f64 {
    let mut engine = Engine::new(rules(), 1_000_000);
    for r in rs.iter().take(DEVICES * METRICS.len()) {
        engine.on_reading(r, r.ts_ms);
    }
    let runs: Vec<f64> = (0..7)
        .map(|_| {
            let t = Instant::now();
            for r in rs {
                std::hint::black_box(engine.on_reading(r, r.ts_ms));
            }
            t.elapsed().as_nanos() as f64 / rs.len() as f64
        })
        .collect();
    println!("series tracked: {}", engine.stats().series);
    median(runs)
}

/// Readings per second through decode → rules → durable append.
async fn ingest_rate(rules: Vec<Rule>, payloads: &[(String, Vec<u8>)]) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = BufferOptions::new(dir.path());
    opts.readings_max_bytes = 1 << 30;
    opts.commit_interval_ms = 5;
    opts.commit_max_records = 1000;
    let (buffer, committer) = Buffer::open(opts).unwrap();
    let stop = CancellationToken::new();
    let commit_task = tokio::spawn(committer.run(stop.clone()));
    let pipeline = Pipeline::new(
        buffer.clone(),
        rules,
        1_000_000,
        Arc::new(IngestMetrics::default()),
    );
    let decoder = Arc::new(MqttDecoder::new(&["sensors/{device}/{metric}"], 65536));
    let payloads = Arc::new(payloads.to_vec());
    let started = Instant::now();
    let tasks: Vec<_> = (0..APPENDERS)
        .map(|k| {
            let (pipeline, decoder, payloads) =
                (pipeline.clone(), decoder.clone(), payloads.clone());
            tokio::spawn(async move {
                let cancel = CancellationToken::new();
                for (topic, payload) in payloads.iter().skip(k).step_by(APPENDERS) {
                    let rs = decoder.decode(topic, payload, 0).unwrap();
                    pipeline.ingest(Source::Mqtt, rs, &cancel).await.unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let rate = payloads.len() as f64 / started.elapsed().as_secs_f64();
    stop.cancel();
    let _ = commit_task.await;
    rate
}

fn main() {
    let n: usize = std::env::var("ALARM_BENCH_READINGS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let rs = readings(n);
    let ns = engine_ns_per_reading(&rs);
    println!(
        "rule engine alone: {ns:.0} ns/reading ({:.0} readings/s on one core)",
        1e9 / ns
    );

    let payloads: Vec<(String, Vec<u8>)> = rs
        .iter()
        .map(|r| {
            let topic = format!("sensors/{}/{}", r.device, r.metric);
            (
                topic,
                format!("{{\"value\":{},\"ts\":{}}}", r.value, r.ts_ms).into_bytes(),
            )
        })
        .collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    // Alternate the two configurations and take medians, so drift on the machine hits both.
    let (mut without, mut with) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        without.push(rt.block_on(ingest_rate(Vec::new(), &payloads)));
        with.push(rt.block_on(ingest_rate(rules(), &payloads)));
        std::thread::sleep(Duration::from_millis(200));
    }
    let (without, with) = (median(without), median(with));
    let cost = (1.0 - with / without) * 100.0;
    println!("| ingest path ({n} readings, {APPENDERS} appenders) | readings/s |");
    println!("|---|---|");
    println!("| no rules | {without:.0} |");
    println!(
        "| {RULES} rules, {} series | {with:.0} |",
        DEVICES * METRICS.len()
    );
    println!(
        "rules cost {cost:.1}% of ingest throughput (target ≤ 10%): {}",
        if cost <= 10.0 { "met" } else { "MISSED" }
    );
}
