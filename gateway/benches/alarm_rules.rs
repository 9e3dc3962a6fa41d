//! What alarm rules cost the ingest path: 50 rules over 10,000 device+metric series.
//!
//! Two measurements in one run, so the ratio holds on a noisy machine:
//! 1. the rule engine alone, per reading (criterion-style repeated timing, median of runs);
//! 2. the whole ingest path (decode → rules → durable group-committed append) with no rules and
//!    with the 50 rules, same readings, same buffer settings. Its wall-clock rate is bounded by
//!    the group-commit window (appenders wait for the fsync), which would hide what the rules
//!    cost, so the comparison is of CPU time per reading (user + system, every thread of the
//!    process): the rules' share is the extra CPU they take.
//!
//! Three configurations: no rules; the rules over readings that never cross them (the cost of
//! watching); the same rules over readings with rare spikes that they raise and clear alarms on
//! (counted, so a bench whose rules never fire fails), which gives the cost of an alarm event.
//!
//! Target: watching rules cost at most 10% of the ingest path's CPU time per reading.
//! Run: `cargo bench -p gateway --bench alarm_rules` (set `ALARM_BENCH_READINGS` to change the
//! number of readings per ingest run; default 200,000).

use gateway::alarm::{Engine, Rule};
use gateway::ops::metrics::IngestMetrics;
use gateway::pipeline::Pipeline;
use gateway::sources::decode::MqttDecoder;
use gateway_buffer::{Buffer, BufferOptions, Reading, Severity, Source};
use gateway_config::{AlarmCondition, Limit, TopicTemplate};
use nix::sys::resource::{UsageWho, getrusage};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

const DEVICES: usize = 2_500;
const METRICS: [&str; 4] = ["temperature", "humidity", "pressure", "battery"];
const RULES: usize = 50;
/// Concurrent ingesting tasks, like MQTT messages in flight.
const APPENDERS: usize = 64;
/// The first reading's timestamp; reading `i` is stamped `TS0 + i` ms.
const TS0: i64 = 1_764_081_600_000;
/// One reading in this many is a spike the threshold and rate rules fire on.
const SPIKE_EVERY: usize = 997;

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
                0..=2 => AlarmCondition::Threshold {
                    above: Some(Limit {
                        trigger: 60.0 + (i % 3) as f64,
                        clear: 30.0,
                    }),
                    below: Some(Limit {
                        trigger: -40.0,
                        clear: -39.0,
                    }),
                },
                3 => AlarmCondition::Rate {
                    rate_above_per_s: 2.0,
                },
                _ => AlarmCondition::NoData { no_data_s: 3_600 },
            };
            Rule::new(
                &format!("rule-{i}"),
                &device,
                metric,
                condition,
                0,
                0,
                Severity::Warning,
            )
            .unwrap()
        })
        .collect()
}

/// Readings cycling over every series, with increasing timestamps (each series every 10 s),
/// between 20 and 21.6 (no rule fires on them); with `spikes`, +50 on one reading in
/// [`SPIKE_EVERY`].
fn readings(n: usize, spikes: bool) -> Vec<Reading> {
    (0..n)
        .map(|i| {
            let series = i % (DEVICES * METRICS.len());
            let spike = if spikes && i % SPIKE_EVERY == 0 {
                50.0
            } else {
                0.0
            };
            Reading {
                device: format!("dev-{:04}", series / METRICS.len()),
                metric: METRICS[series % METRICS.len()].to_owned(),
                value: 20.0 + (i % 17) as f64 * 0.1 + spike,
                unit: None,
                ts_ms: TS0 + i as i64,
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

/// CPU time (user + system) of the whole process so far, in nanoseconds.
fn cpu_ns() -> f64 {
    let u = getrusage(UsageWho::RUSAGE_SELF).expect("getrusage");
    let ns = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 * 1e9 + t.tv_usec() as f64 * 1e3;
    ns(u.user_time()) + ns(u.system_time())
}

/// One run of the ingest path.
struct IngestRun {
    /// Readings per second, wall clock.
    rate: f64,
    /// CPU nanoseconds per reading, every thread.
    cpu_ns: f64,
    /// Alarm events the rules raised or cleared (appended to the alarms lane).
    alarm_events: u64,
}

/// Decode → rules → durable append of every payload, with `APPENDERS` concurrent tasks.
async fn ingest_run(rules: Vec<Rule>, payloads: &[(String, Vec<u8>)]) -> IngestRun {
    // The gateway's clock: just after the last reading, so none is refused as from the future.
    let now_ms = TS0 + payloads.len() as i64;
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
    let template = TopicTemplate::new("sensors/{device}/{metric}").unwrap();
    let decoder = Arc::new(MqttDecoder::new(&[template], 65536));
    let payloads = Arc::new(payloads.to_vec());
    let (started, cpu_at_start) = (Instant::now(), cpu_ns());
    let tasks: Vec<_> = (0..APPENDERS)
        .map(|k| {
            let (pipeline, decoder, payloads) =
                (pipeline.clone(), decoder.clone(), payloads.clone());
            tokio::spawn(async move {
                let cancel = CancellationToken::new();
                for (topic, payload) in payloads.iter().skip(k).step_by(APPENDERS) {
                    let rs = decoder.decode(topic, payload, now_ms).unwrap();
                    pipeline.ingest(Source::Mqtt, rs, &cancel).await.unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let run = IngestRun {
        rate: payloads.len() as f64 / started.elapsed().as_secs_f64(),
        cpu_ns: (cpu_ns() - cpu_at_start) / payloads.len() as f64,
        alarm_events: buffer.stats().alarms.records,
    };
    stop.cancel();
    let _ = commit_task.await;
    run
}

fn payloads(rs: &[Reading]) -> Vec<(String, Vec<u8>)> {
    rs.iter()
        .map(|r| {
            let topic = format!("sensors/{}/{}", r.device, r.metric);
            (
                topic,
                format!("{{\"value\":{},\"ts\":{}}}", r.value, r.ts_ms).into_bytes(),
            )
        })
        .collect()
}

fn main() {
    let n: usize = std::env::var("ALARM_BENCH_READINGS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let spiky = readings(n, true);
    let ns = engine_ns_per_reading(&spiky);
    println!(
        "rule engine alone: {ns:.0} ns/reading ({:.0} readings/s on one core)",
        1e9 / ns
    );

    let (quiet, spiky) = (payloads(&readings(n, false)), payloads(&spiky));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    // Alternate the configurations and take medians, so drift on the machine hits all three.
    let (mut without, mut watching, mut firing) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..3 {
        without.push(rt.block_on(ingest_run(Vec::new(), &quiet)));
        watching.push(rt.block_on(ingest_run(rules(), &quiet)));
        firing.push(rt.block_on(ingest_run(rules(), &spiky)));
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        without.iter().chain(&watching).all(|r| r.alarm_events == 0),
        "quiet readings raise nothing"
    );
    let events = firing.iter().map(|r| r.alarm_events).min().unwrap();
    assert!(
        events > 0,
        "the rules never fired: the bench would not measure them"
    );
    let med = |runs: &[IngestRun], f: fn(&IngestRun) -> f64| median(runs.iter().map(f).collect());
    let rate = |runs: &[IngestRun]| med(runs, |r| r.rate);
    let cpu = |runs: &[IngestRun]| med(runs, |r| r.cpu_ns);
    let (cpu0, cpu_watch, cpu_fire) = (cpu(&without), cpu(&watching), cpu(&firing));
    let cost = (cpu_watch / cpu0 - 1.0) * 100.0;
    let per_event_us = (cpu_fire - cpu_watch) * n as f64 / events as f64 / 1e3;
    let series = DEVICES * METRICS.len();
    println!(
        "| ingest path ({n} readings, {APPENDERS} appenders) | readings/s (wall) | CPU µs/reading |"
    );
    println!("|---|---|---|");
    println!("| no rules | {:.0} | {:.2} |", rate(&without), cpu0 / 1e3);
    println!(
        "| {RULES} rules over {series} series, none firing | {:.0} | {:.2} |",
        rate(&watching),
        cpu_watch / 1e3
    );
    println!(
        "| the same rules, {events} alarm events (a spike every {SPIKE_EVERY} readings) | {:.0} | {:.2} |",
        rate(&firing),
        cpu_fire / 1e3
    );
    println!(
        "engine alone predicts {:.1}% extra CPU for watching; measured on the ingest path: {cost:.1}%",
        ns / cpu0 * 100.0
    );
    println!(
        "each alarm event costs {per_event_us:.0} µs of CPU (its engine shard is saved with it)"
    );
    println!(
        "watching rules cost {cost:.1}% of the ingest path's CPU per reading (target ≤ 10%): {}",
        if cost <= 10.0 { "met" } else { "MISSED" }
    );
}
