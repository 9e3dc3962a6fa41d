//! End-to-end benchmark: device-sim (load mode, QoS 1) → mosquitto → gateway (release) →
//! a local HTTP receiver; and, in the same run and against the same broker, the baseline: the
//! same stream delivered to `mosquitto_sub -q 1`.
//!
//! Both sides are measured alike: the same fleet (device-sim reports every reading it sent), the
//! same probes publishing during the load, a clock that starts when the fleet starts and stops
//! when the consumer (the subscriber, or the cloud receiver) holds the last distinct fleet
//! reading. Readings are checked by identity (device, metric, ts) and value: "lost" is the sent
//! readings that never arrived.
//!
//! Reports end-to-end readings/s and its ratio to the baseline, the gateway's ingest rate (first
//! `/status` poll, every 10 ms, showing every fleet reading durable), publish→receipt latency
//! p50/p99 on both sides and alarm latency p50/p99 (probes published at wall-clock time during
//! the load), the gateway's peak RSS, CPU seconds and bytes written to disk per reading. Writes
//! `target/e2e-bench.json` and `target/e2e-bench.md`.
//!
//! Run (after the README set-up):
//! `cargo build --release -p gateway && cargo run --release -p gateway-tests --bin e2e_bench`
//! Environment: `BENCH_READINGS` (default 200000), `BENCH_DEVICES` (50), `GATEWAY_BIN`,
//! `BENCH_RTT_MS` (0): the cloud receiver answers each batch this long after it arrived, as a
//! distant cloud does (the gateway runs with the contract's `max_in_flight = 16`).
//!
//! `BENCH_MQTT_SINK=1`: instead, what a second sink costs. The same fleet and probes through a
//! gateway with the HTTP upstream alone, then through a fresh gateway (new data dir) with the
//! HTTP upstream and one `[[sink]] kind = "mqtt"` publishing to a second mosquitto on a TLS
//! listener that requires client certificates (as AWS IoT Core does), where a subscriber with a
//! certificate of its own plays the cloud; no `mosquitto_sub` baseline. Each clock runs from the
//! fleet's start until every consumer (the HTTP receiver, and the cloud subscriber) holds the last
//! distinct fleet reading; every consumer is checked by identity (device, metric, ts), value bit
//! for bit, and a reading must carry the same seq at both sinks and in every duplicate. Reports
//! both rates and their ratio, each sink's own rate and latencies, ingest, peak RSS, CPU and disk
//! written. Writes `target/e2e-bench-mqtt-sink[-rttN].{json,md}`.
//!
//! `BENCH_MODE=wear`: instead, a Pi-like trickle for the SD card's sake: 20 devices × 3 metrics
//! at 1 Hz for `BENCH_WEAR_S` seconds (60), with the upstream up (or down with
//! `BENCH_UPSTREAM_DOWN=1`). Reports the bytes the gateway process had written to disk per
//! reading (`/proc/PID/io` `write_bytes`) against, in the same run, the floor of any durable
//! queue on this disk: a thread appending the same number of 30-byte records to a plain file
//! with one `fdatasync` a second (and another with one every 100 ms), measured the same way;
//! also the gateway's PUBACK latency (`/status` `ingest.ack_latency_ms`), its group commits, the
//! readings' publish→receipt latency at the cloud (receipt minus `ts`, which the trickle takes
//! from the wall clock) and how many readings requests it took.
//! `BENCH_STAGGER=1` spreads the devices over each second (`device-sim --stagger`) instead of
//! having all of them publish at the same instant; `BENCH_WEAR_DEVICES` (20) sets the fleet's
//! size and `BENCH_COMMIT_STRETCH_MS` the gateway's `buffer.commit_stretch_ms` (else its
//! default). Writes `target/e2e-bench-wear-upstream-{up,down}[-staggered][-stretchN].{json,md}`.
//!
//! `BENCH_MODE=windows`: instead, what windows save upstream. One fleet, 20 devices × 3 metrics
//! at 1 Hz (device-sim, QoS 1, JSON) for `BENCH_WINDOWS_S` seconds (300), feeds four gateways at
//! once through one mosquitto, each with its own client id, data dir and HTTP receiver: raw
//! forwarding (no rules), and `[[window]] metric = "*"`, `window_s = 60`, `raw = "drop"` emitting
//! all five functions, mean/min/max, and the mean alone. After the fleet stops, each windowed
//! gateway's clock closes its last windows. Reports, per gateway, the request body bytes its
//! receiver got (as sent: gzip, the contract's default) per raw reading the broker acknowledged,
//! the records delivered, the cut against raw forwarding, and the gateway's own
//! `upstream.bytes_per_raw_reading`; the raw side is checked to have delivered every reading,
//! each windowed side every window it emitted. Writes `target/e2e-bench-windows.{json,md}`.

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::serve::ListenerExt as _;
use device_sim::{Broker, FleetConfig, Metric, MqttForm, SentRecord};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, TlsConfiguration, Transport};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use test_peers::{Mosquitto, Pki, RefusedPort, deploy_limits, free_port};

/// The gateway's linger in this run (the contract's default); p99 target is linger + 100 ms.
const LINGER_MS: u64 = 1000;
/// Probes: one latency reading every 20 ms, one alarm transition every 100 ms.
const PROBE_EVERY: Duration = Duration::from_millis(20);
const ALARM_EVERY: Duration = Duration::from_millis(100);
/// How long a consumer may take to receive the whole fleet after it finished publishing.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(120);

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// mosquitto with the limits of `deploy/mosquitto.conf` (in flight, queue, packet size),
/// anonymous, and without persistence (its autosaves would only add noise to both sides).
fn mosquitto() -> Mosquitto {
    Mosquitto::builder().conf(&deploy_limits()).start()
}

fn fleet(port: u16, devices: u32, per_device: u64, prefix: &str) -> FleetConfig {
    let mut cfg = FleetConfig::new(format!("127.0.0.1:{port}").parse::<Broker>().unwrap());
    cfg.devices = devices;
    cfg.count = Some(per_device);
    cfg.qos = 1;
    cfg.form = MqttForm::Json;
    cfg.metrics = vec![Metric::Temperature];
    cfg.load = true;
    cfg.connections = Some(devices.min(10));
    cfg.client_id_prefix = prefix.to_owned();
    cfg.progress = false;
    cfg.record_sent = true;
    cfg
}

/// A reading's identity: device-sim's `ts` strictly increases per device.
type Key = (String, String, i64);

fn key_of(r: &SentRecord) -> Key {
    (
        r.device.clone(),
        r.metric.clone(),
        r.ts.expect("the JSON form carries ts"),
    )
}

/// What arrived of one fleet reading, first time: its seq (none through the baseline) and value.
type Ident = (Option<u64>, f64);

/// What one consumer (the baseline subscriber, the gateway's cloud receiver, or the cloud behind
/// its MQTT sink) received.
#[derive(Default)]
struct Tally {
    /// Fleet readings wanted: the clock stops when this many distinct ones arrived.
    want: usize,
    /// Distinct fleet readings received, with the seq and value of their first copy.
    seen: HashMap<Key, Ident>,
    /// Copies beyond the first.
    duplicates: usize,
    /// Copies that came under another seq than the first (a re-sent record keeps its seq).
    renumbered: usize,
    /// When the `want`-th distinct fleet reading arrived.
    done_at: Option<Instant>,
    /// Publish→receipt of the latency probes, ms.
    probe_latency_ms: Vec<f64>,
    /// Publish→receipt of the alarm events the alarm probes caused, ms.
    alarm_latency_ms: Vec<f64>,
    /// Receipt minus `ts` of each distinct fleet reading, ms: publish→receipt where the fleet's
    /// clock is the wall clock (the 1 Hz trickles), meaningless in load mode.
    reading_latency_ms: Vec<f64>,
    /// Requests of the readings lane.
    readings_batches: usize,
}

impl Tally {
    fn new(want: usize) -> Tally {
        Tally {
            want,
            ..Tally::default()
        }
    }

    /// One reading received at `arrived_ms` (wall clock).
    fn reading(&mut self, key: Key, value: f64, seq: Option<u64>, arrived_ms: i64) {
        let device = key.0.as_str();
        if device == "probe-latency" {
            self.probe_latency_ms.push((arrived_ms - key.2) as f64);
        } else if device.starts_with("probe-") {
        } else if let Some(&(first_seq, _)) = self.seen.get(&key) {
            self.duplicates += 1;
            if first_seq != seq {
                self.renumbered += 1;
            }
        } else {
            self.reading_latency_ms.push((arrived_ms - key.2) as f64);
            self.seen.insert(key, (seq, value));
            if self.seen.len() == self.want {
                self.done_at = Some(Instant::now());
            }
        }
    }
}

/// What one consumer got of a side's fleet.
struct Got {
    /// Readings per second from the fleet's start until this consumer held the last one.
    rate: f64,
    /// Sent readings that never arrived (within [`DRAIN_TIMEOUT`]).
    lost: Vec<Key>,
    /// Fleet readings that arrived but were never sent.
    unexpected: usize,
    /// Readings that arrived with another value than the one sent (compared bit for bit).
    wrong_value: usize,
    duplicates: usize,
    renumbered: usize,
    probe_latency_ms: Vec<f64>,
    alarm_latency_ms: Vec<f64>,
    /// Each reading that arrived, with the seq and value of its first copy.
    seen: HashMap<Key, Ident>,
}

impl Got {
    fn delivered(&self, sent: usize) -> usize {
        sent - self.lost.len()
    }
}

/// How one side went.
struct Side {
    /// Readings per second from the fleet's start until every consumer held the last one.
    rate: f64,
    /// Sent readings (all acknowledged by the broker).
    sent: usize,
    /// What each consumer got, in the order they were given to [`measure`].
    got: Vec<Got>,
    /// When the fleet started (the clock's start).
    started: Instant,
    /// From the fleet's start until device-sim returned (publishing, draining, disconnecting).
    publish_elapsed: Duration,
}

/// Starts the probes, waits until every consumer's tally shows it receives them (so it is
/// subscribed and warm), runs the fleet, and waits until every consumer has every reading. The
/// side's clock runs from the fleet's start until the last consumer's `done_at`; each consumer's
/// own until its `done_at`.
async fn measure(
    port: u16,
    devices: u32,
    per_device: u64,
    prefix: &str,
    consumers: &[Arc<Mutex<Tally>>],
    probes_published: Arc<AtomicU64>,
) -> Side {
    let stop_probes = tokio_util::sync::CancellationToken::new();
    let probe_task = on_own_thread(probes(
        port,
        format!("{prefix}probe"),
        stop_probes.clone(),
        probes_published,
    ));
    let deadline = Instant::now() + Duration::from_secs(30);
    while consumers
        .iter()
        .any(|t| t.lock().unwrap().probe_latency_ms.is_empty())
    {
        assert!(
            Instant::now() < deadline,
            "{prefix}: a consumer never received a probe"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for t in consumers {
        // Latency counts under the load only.
        let mut t = t.lock().unwrap();
        t.probe_latency_ms.clear();
        t.alarm_latency_ms.clear();
    }
    let started = Instant::now();
    let report = device_sim::run_fleet(
        fleet(port, devices, per_device, prefix),
        std::future::pending(),
    )
    .await
    .unwrap();
    let publish_elapsed = started.elapsed();
    let sent: HashMap<Key, f64> = report
        .records
        .iter()
        .map(|r| (key_of(r), r.value))
        .collect();
    assert_eq!(
        report.summary.totals.readings_acked as usize,
        sent.len(),
        "{prefix}: the broker acknowledged every reading sent"
    );
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    while consumers
        .iter()
        .any(|t| t.lock().unwrap().done_at.is_none())
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop_probes.cancel();
    tokio::task::spawn_blocking(move || probe_task.join())
        .await
        .unwrap()
        .unwrap();
    let mut got = Vec::new();
    let mut last_end = started;
    for t in consumers {
        let mut t = t.lock().unwrap();
        let end = t.done_at.unwrap_or_else(Instant::now);
        last_end = last_end.max(end);
        let mut lost: Vec<Key> = sent
            .keys()
            .filter(|k| !t.seen.contains_key(*k))
            .cloned()
            .collect();
        lost.sort();
        let arrived_sent = t.seen.keys().filter(|k| sent.contains_key(*k)).count();
        got.push(Got {
            rate: arrived_sent as f64 / (end - started).as_secs_f64(),
            lost,
            unexpected: t.seen.len() - arrived_sent,
            wrong_value: t
                .seen
                .iter()
                .filter(|(k, (_, v))| sent.get(*k).is_some_and(|s| s.to_bits() != v.to_bits()))
                .count(),
            duplicates: t.duplicates,
            renumbered: t.renumbered,
            probe_latency_ms: t.probe_latency_ms.clone(),
            alarm_latency_ms: t.alarm_latency_ms.clone(),
            seen: std::mem::take(&mut t.seen),
        });
    }
    // Readings that reached every consumer, over the time until the last one held them all.
    let everywhere = sent
        .keys()
        .filter(|k| got.iter().all(|g| g.seen.contains_key(*k)))
        .count();
    Side {
        rate: everywhere as f64 / (last_end - started).as_secs_f64(),
        sent: sent.len(),
        got,
        started,
        publish_elapsed,
    }
}

/// Baseline: the broker delivers the stream to `mosquitto_sub -q 1`, whose output (topic and
/// payload of every message) this process reads and checks.
async fn baseline(port: u16, devices: u32, per_device: u64) -> Side {
    let mut sub = Command::new("mosquitto_sub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-q",
            "1",
            "-t",
            "sensors/#",
            "-v",
            "-i",
            "bench-baseline",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("mosquitto_sub (apt-get install mosquitto-clients)");
    let want = devices as usize * per_device as usize;
    let tally = Arc::new(Mutex::new(Tally::new(want)));
    let out = sub.stdout.take().unwrap();
    let t = tally.clone();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { return };
            let arrived = now_ms();
            let Some((topic, payload)) = line.split_once(' ') else {
                continue;
            };
            let mut parts = topic.split('/').skip(1);
            let (Some(device), Some(metric)) = (parts.next(), parts.next()) else {
                continue;
            };
            let v: Value = serde_json::from_str(payload).expect("every message is JSON");
            let ts = v["ts"]
                .as_i64()
                .expect("every message of the bench carries ts");
            let value = v["value"].as_f64().unwrap_or(f64::NAN);
            let key = (device.to_owned(), metric.to_owned(), ts);
            t.lock().unwrap().reading(key, value, None, arrived);
        }
    });
    let side = measure(
        port,
        devices,
        per_device,
        "base-",
        &[tally],
        Arc::new(AtomicU64::new(0)),
    )
    .await;
    let _ = sub.kill();
    let _ = sub.wait();
    let _ = reader.join();
    side
}

/// The cloud receiver's state: what arrived, and how long it takes to answer.
#[derive(Clone)]
struct Cloud {
    tally: Arc<Mutex<Tally>>,
    rtt: Duration,
}

/// The batch JSON of a request body, gunzipped when the request says it is gzip.
fn batch_json(headers: &HeaderMap, body: &[u8]) -> Value {
    let mut json = Vec::new();
    let bytes = if headers.get("content-encoding").is_some_and(|v| v == "gzip") {
        flate2::read::GzDecoder::new(body)
            .read_to_end(&mut json)
            .unwrap();
        &json[..]
    } else {
        body
    };
    serde_json::from_slice(bytes).unwrap()
}

async fn receive(State(cloud): State<Cloud>, headers: HeaderMap, body: Bytes) -> &'static str {
    let arrived = now_ms();
    let batch = batch_json(&headers, &body);
    let alarms = batch["lane"] == "alarms";
    cloud.tally.lock().unwrap().batch(&batch, alarms, arrived);
    if !cloud.rtt.is_zero() {
        tokio::time::sleep(cloud.rtt).await;
    }
    "ok"
}

impl Tally {
    /// Counts one batch's records as arrived at `arrived` (ms since the epoch).
    fn batch(&mut self, batch: &Value, alarms: bool, arrived: i64) {
        if !alarms {
            self.readings_batches += 1;
        }
        for r in batch["records"].as_array().unwrap() {
            let ts = r["ts"].as_i64().unwrap_or(arrived);
            if alarms {
                self.alarm_latency_ms.push((arrived - ts) as f64);
            } else {
                let key = (
                    r["device"].as_str().unwrap_or("").to_owned(),
                    r["metric"].as_str().unwrap_or("").to_owned(),
                    ts,
                );
                let value = r["value"].as_f64().unwrap_or(f64::NAN);
                self.reading(key, value, r["seq"].as_u64(), arrived);
            }
        }
    }
}

/// Polls the gateway's `/status` until it has ingested (made durable) `n` fleet readings plus
/// every probe published so far; returns when that was first seen.
async fn ingested_at(
    admin: u16,
    n: u64,
    probes_published: Arc<AtomicU64>,
    stop: tokio_util::sync::CancellationToken,
) -> Option<Instant> {
    let client = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{admin}/status");
    while !stop.is_cancelled() {
        // Read before the status, so probes published meanwhile only make this stricter.
        let probes = probes_published.load(SeqCst);
        if let Ok(r) = client.get(&url).send().await
            && let Ok(body) = r.bytes().await
            && let Ok(s) = serde_json::from_slice::<Value>(&body)
            && s["ingest"]["readings"]["mqtt"].as_u64().unwrap_or(0) >= n + probes
        {
            return Some(Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    None
}

/// Publishes probes at wall-clock `ts` until `stop`, counting them in `published`.
async fn probes(
    port: u16,
    client_id: String,
    stop: tokio_util::sync::CancellationToken,
    published: Arc<AtomicU64>,
) {
    let mut opts = MqttOptions::new(client_id, "127.0.0.1", port);
    opts.set_keep_alive(Duration::from_secs(30));
    let (client, mut events) = AsyncClient::new(opts, 100);
    tokio::spawn(async move {
        while let Ok(e) = events.poll().await {
            if let Event::Incoming(Packet::Disconnect) = e {
                break;
            }
        }
    });
    let mut probe = tokio::time::interval(PROBE_EVERY);
    let mut alarm = tokio::time::interval(ALARM_EVERY);
    let mut hot = false;
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = probe.tick() => {
                let p = json!({"value": 1.0, "ts": now_ms()}).to_string();
                published.fetch_add(1, SeqCst);
                let _ = client.publish("sensors/probe-latency/latency", QoS::AtLeastOnce, false, p).await;
            }
            _ = alarm.tick() => {
                hot = !hot;
                let p = json!({"value": if hot { 40.0 } else { 20.0 }, "ts": now_ms()}).to_string();
                published.fetch_add(1, SeqCst);
                let _ = client.publish("sensors/probe-alarm/temperature", QoS::AtLeastOnce, false, p).await;
            }
        }
    }
    let _ = client.disconnect().await;
}

fn percentile(xs: &mut [f64], p: f64) -> f64 {
    if xs.is_empty() {
        return f64::NAN;
    }
    xs.sort_by(|a, b| a.partial_cmp(b).unwrap());
    xs[((xs.len() as f64 - 1.0) * p).round() as usize]
}

/// (peak RSS bytes, CPU seconds, bytes written to disk) of a process.
fn proc_stats(pid: u32) -> (u64, f64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let hwm = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|k| k.parse::<u64>().ok())
        .unwrap_or(0)
        * 1024;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, r)| r.split_whitespace().collect())
        .unwrap_or_default();
    let ticks: f64 = fields
        .get(11)
        .and_then(|u| u.parse::<f64>().ok())
        .unwrap_or(0.0)
        + fields
            .get(12)
            .and_then(|s| s.parse::<f64>().ok())
            .unwrap_or(0.0);
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).unwrap_or_default();
    let written = io
        .lines()
        .find(|l| l.starts_with("write_bytes:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    (hwm, ticks / 100.0, written)
}

fn gateway_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("GATEWAY_BIN") {
        return p.into();
    }
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap();
    let bin = dir.join("gateway");
    assert!(
        bin.exists(),
        "{} missing: run `cargo build --release -p gateway` first",
        bin.display()
    );
    bin
}

/// Writes `config` into `dir` and starts the gateway on it, its log in `dir/gateway.log`.
fn spawn_gateway(dir: &Path, config: &str) -> Child {
    let config_path = dir.join("gateway.toml");
    std::fs::write(&config_path, config).unwrap();
    let log = std::fs::File::create(dir.join("gateway.log")).unwrap();
    Command::new(gateway_bin())
        .args(["run", "--config"])
        .arg(&config_path)
        .stderr(log)
        .spawn()
        .unwrap()
}

/// The gateway's `/status`, if it answers.
async fn fetch_status(client: &reqwest::Client, admin: u16) -> Option<Value> {
    let r = client
        .get(format!("http://127.0.0.1:{admin}/status"))
        .send()
        .await
        .ok()?;
    serde_json::from_slice::<Value>(&r.bytes().await.ok()?).ok()
}

/// The gateway's group commits since it started, from a `/status` (0 if absent).
fn buffer_commits(status: &Value) -> u64 {
    status["buffer"]["commits"].as_u64().unwrap_or(0)
}

/// Runs `task` to completion on a new thread with a runtime of its own.
fn on_own_thread<F>(task: F) -> std::thread::JoinHandle<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(task)
    })
}

/// One gateway run on a fresh data dir: what each consumer got, and what the process used
/// while the load ran.
struct GatewayRun {
    side: Side,
    /// Fleet readings per second until every one was durable in the buffer (`None`: not seen).
    ingest_rate: Option<f64>,
    /// Peak RSS of the gateway process, bytes.
    rss: u64,
    /// CPU seconds and bytes written to disk from ready until every consumer had the fleet.
    cpu: f64,
    written: u64,
    /// Group commits (each one fsync) over the same span.
    commits: u64,
}

/// The cloud IoT broker of the MQTT sink: its TLS port, and the PKI its certificates (and the
/// gateway's and the cloud subscriber's client certificates) come from.
#[derive(Clone, Copy)]
struct MqttCloud<'a> {
    tls_port: u16,
    pki: &'a Pki,
}

/// The topic the MQTT sink publishes on (the contract's example) and the cloud subscribes to.
const SINK_TOPIC: &str = "dt/gateways/{gateway_id}/{lane}";
const SINK_FILTER: &str = "dt/gateways/gw-bench/+";

/// Starts a gateway on the broker at `port` with the HTTP upstream (a receiver on a thread of its
/// own, answering after `rtt`) and, with `mqtt`, one MQTT sink to that cloud broker (a subscriber
/// there counting what arrives); measures the fleet through it (fleet and client ids prefixed
/// `prefix`) and stops it. The consumers of the side are the HTTP receiver, then the MQTT cloud.
async fn run_gateway(
    port: u16,
    devices: u32,
    per_device: u64,
    prefix: &str,
    rtt: Duration,
    mqtt: Option<MqttCloud<'_>>,
) -> GatewayRun {
    let n = per_device * u64::from(devices);
    // Receiver.
    let tally = Arc::new(Mutex::new(Tally::new(n as usize)));
    let app = Router::new()
        .route("/ingest", axum::routing::post(receive))
        .with_state(Cloud {
            tally: tally.clone(),
            rtt,
        });
    // The receiver and the probes (the cloud and a device) run on threads of their own, so the
    // simulated fleet's load on this process's runtime does not delay their timestamps.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let recv_port = listener.local_addr().unwrap().port();
    on_own_thread(async move {
        let listener = tokio::net::TcpListener::from_std(listener).unwrap();
        axum::serve(listener.tap_io(nodelay), app).await.unwrap()
    });
    let mut consumers = vec![tally];

    // The MQTT sink's cloud, subscribed before the gateway starts.
    let sink = match mqtt {
        None => String::new(),
        Some(cloud) => {
            let tally = Arc::new(Mutex::new(Tally::new(n as usize)));
            mqtt_cloud(cloud, &format!("{prefix}cloud"), tally.clone()).await;
            consumers.push(tally);
            let t = &cloud.pki.trusted;
            format!(
                "[[sink]]\nname = \"cloud-mqtt\"\nkind = \"mqtt\"\n\
                 url = \"mqtts://127.0.0.1:{tls_port}\"\nclient_id = \"{prefix}bench-sink\"\n\
                 ca_file = \"{ca}\"\nclient_cert_file = \"{cert}\"\nclient_key_file = \"{key}\"\n\
                 topic = \"{SINK_TOPIC}\"\nlanes = [\"readings\", \"alarms\"]\n\
                 linger_ms = {LINGER_MS}\nbatch_max_records = 1000\n",
                tls_port = cloud.tls_port,
                ca = t.ca.display(),
                cert = t.client_cert.display(),
                key = t.client_key.display(),
            )
        }
    };

    // Gateway.
    let dir = tempfile::tempdir().unwrap();
    let admin = free_port();
    let config = format!(
        "gateway_id = \"gw-bench\"\ndata_dir = \"{data}\"\n\
         [mqtt]\nmode = \"external\"\nurl = \"mqtt://127.0.0.1:{port}\"\nclient_id = \"{prefix}bench\"\nmax_inflight = 1000\n\
         [upstream]\nurl = \"http://127.0.0.1:{recv_port}/ingest\"\nlinger_ms = {LINGER_MS}\nbatch_max_records = 1000\n\
         [admin]\nlisten = \"127.0.0.1:{admin}\"\n\
         [[alarm]]\nname = \"overheat\"\ndevice = \"probe-*\"\nmetric = \"temperature\"\nabove = 35.0\nclear_below = 33.0\nseverity = \"critical\"\n\
         {sink}",
        data = dir.path().join("data").display(),
    );
    let mut gw = spawn_gateway(dir.path(), &config);
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if fetch_status(&client, admin)
            .await
            .is_some_and(|s| s["ingest"]["mqtt_connected"] == true)
        {
            break;
        }
        assert!(Instant::now() < deadline, "gateway did not become ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_, cpu_before, written_before) = proc_stats(gw.id());
    let commits_before = buffer_commits(&fetch_status(&client, admin).await.unwrap_or_default());

    let probes_published = Arc::new(AtomicU64::new(0));
    let stop_ingest_poll = tokio_util::sync::CancellationToken::new();
    let ingest_poll = on_own_thread(ingested_at(
        admin,
        n,
        probes_published.clone(),
        stop_ingest_poll.clone(),
    ));
    let side = measure(
        port,
        devices,
        per_device,
        prefix,
        &consumers,
        probes_published,
    )
    .await;
    stop_ingest_poll.cancel();
    let ingested = tokio::task::spawn_blocking(move || ingest_poll.join())
        .await
        .unwrap()
        .unwrap();
    let (rss, cpu_after, written_after) = proc_stats(gw.id());
    let commits_after = buffer_commits(&fetch_status(&client, admin).await.unwrap_or_default());
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(gw.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = gw.wait();
    GatewayRun {
        ingest_rate: ingested.map(|t| n as f64 / (t - side.started).as_secs_f64()),
        side,
        rss,
        cpu: cpu_after - cpu_before,
        written: written_after - written_before,
        commits: commits_after.saturating_sub(commits_before),
    }
}

/// The cloud behind the MQTT sink: a subscriber as `client_id` on the cloud broker's TLS port
/// with a client certificate of its own (as the harness's `Cloud`: a persistent session that
/// subscribes again on every connect), on a thread of its own like the HTTP receiver. Counts
/// every batch into `tally` as it arrives, after checking it is a WIRE §3 batch of this gateway
/// on its lane's topic. Returns once the broker granted the subscription.
async fn mqtt_cloud(cloud: MqttCloud<'_>, client_id: &str, tally: Arc<Mutex<Tally>>) {
    let t = &cloud.pki.trusted;
    let tls = gateway_tests::tls_client(t, Some((&t.rsa_client_cert, &t.rsa_client_key)));
    let mut mo = MqttOptions::new(client_id, "127.0.0.1", cloud.tls_port);
    mo.set_clean_session(false)
        .set_keep_alive(Duration::from_secs(30))
        .set_max_packet_size(1 << 20, 1 << 20)
        .set_transport(Transport::Tls(TlsConfiguration::Rustls(tls.config())));
    let (subscribed_tx, subscribed_rx) = std::sync::mpsc::channel();
    on_own_thread(async move {
        let (client, mut eventloop) = AsyncClient::new(mo, 16);
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => client
                    .try_subscribe(SINK_FILTER, QoS::AtLeastOnce)
                    .expect("queue SUBSCRIBE"),
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    let _ = subscribed_tx.send(());
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let arrived = now_ms();
                    let batch: Value = serde_json::from_slice(&p.payload).unwrap_or_else(|e| {
                        panic!("not JSON ({e}): {}", String::from_utf8_lossy(&p.payload))
                    });
                    assert_eq!(batch["gateway_id"], "gw-bench", "{batch}");
                    let lane = batch["lane"].as_str().expect("a lane");
                    assert_eq!(p.topic, format!("dt/gateways/gw-bench/{lane}"));
                    tally
                        .lock()
                        .unwrap()
                        .batch(&batch, lane == "alarms", arrived);
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    });
    tokio::task::spawn_blocking(move || subscribed_rx.recv_timeout(Duration::from_secs(20)))
        .await
        .unwrap()
        .expect("the MQTT sink's cloud subscribed within 20 s");
}

#[tokio::main]
async fn main() {
    if std::env::var("BENCH_MODE").as_deref() == Ok("windows") {
        windows().await;
        return;
    }
    if std::env::var("BENCH_MODE").as_deref() == Ok("wear") {
        wear().await;
        return;
    }
    if std::env::var("BENCH_MQTT_SINK").is_ok_and(|v| v == "1") {
        mqtt_sink().await;
        return;
    }
    let n_total = env_usize("BENCH_READINGS", 200_000) as u64;
    let devices = env_usize("BENCH_DEVICES", 50) as u32;
    let per_device = n_total / u64::from(devices);
    let n = per_device * u64::from(devices);
    let broker = mosquitto();
    println!(
        "workload: {n} readings from {devices} devices, QoS 1, one reading per message; the cloud answers after {} ms",
        env_usize("BENCH_RTT_MS", 0)
    );

    let base = baseline(broker.port(), devices, per_device).await;
    println!("baseline (mosquitto_sub -q 1): {:.0} readings/s", base.rate);

    let rtt = Duration::from_millis(env_usize("BENCH_RTT_MS", 0) as u64);
    let run = run_gateway(broker.port(), devices, per_device, "gw-", rtt, None).await;
    let (side, base_got) = (&run.side, &base.got[0]);
    let got = &side.got[0];
    let ingest_rate = run.ingest_rate;
    let ingest_ratio = ingest_rate.map(|r| r / base.rate);
    let delivered = got.delivered(side.sent);
    let (rss, cpu) = (run.rss, run.cpu);
    let written_per_reading = run.written as f64 / delivered.max(1) as f64;
    let (mut lat, mut alarm) = (got.probe_latency_ms.clone(), got.alarm_latency_ms.clone());
    let (p50, p99) = (percentile(&mut lat, 0.5), percentile(&mut lat, 0.99));
    let (a50, a99) = (percentile(&mut alarm, 0.5), percentile(&mut alarm, 0.99));
    let mut base_lat = base_got.probe_latency_ms.clone();
    let (b50, b99) = (
        percentile(&mut base_lat, 0.5),
        percentile(&mut base_lat, 0.99),
    );

    let ratio = side.rate / base.rate;
    let rss_mb = rss as f64 / 1_048_576.0;
    let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
    let rows = [
        (
            "ingest readings/s (durable in the buffer)",
            ingest_rate.map_or("not seen".to_owned(), |r| format!("{r:.0}")),
            match ingest_ratio {
                Some(q) => format!(
                    "≥ 90% of baseline: {:.0}% ({})",
                    q * 100.0,
                    verdict(q >= 0.9)
                ),
                None => "≥ 90% of baseline (MISSED)".to_owned(),
            },
        ),
        (
            "end-to-end readings/s",
            format!("{:.0}", side.rate),
            format!(
                "≥ 90% of baseline: {:.0}% ({})",
                ratio * 100.0,
                verdict(ratio >= 0.9)
            ),
        ),
        (
            "baseline mosquitto_sub -q 1 readings/s",
            format!("{:.0}", base.rate),
            String::new(),
        ),
        (
            "publish→receipt latency p50 / p99",
            format!("{p50:.0} / {p99:.0} ms (baseline {b50:.0} / {b99:.0} ms)"),
            format!(
                "p99 ≤ {} ms ({})",
                LINGER_MS + 100,
                verdict(p99 <= (LINGER_MS + 100) as f64)
            ),
        ),
        (
            "alarm latency p50 / p99 (under load)",
            format!("{a50:.0} / {a99:.0} ms"),
            format!("p99 ≤ 50 ms ({})", verdict(a99 <= 50.0)),
        ),
        (
            "gateway peak RSS",
            format!("{rss_mb:.1} MB"),
            format!("≤ 40 MB ({})", verdict(rss_mb <= 40.0)),
        ),
        (
            "gateway CPU",
            format!(
                "{cpu:.1} s ({:.1} µs/reading)",
                cpu * 1e6 / delivered.max(1) as f64
            ),
            String::new(),
        ),
        (
            "disk written per reading",
            format!("{written_per_reading:.0} B"),
            String::new(),
        ),
        (
            "group commits (fsyncs)",
            format!(
                "{} ({:.0} readings, {:.0} B written each)",
                run.commits,
                delivered as f64 / run.commits.max(1) as f64,
                run.written as f64 / run.commits.max(1) as f64
            ),
            String::new(),
        ),
        (
            "readings sent / delivered / lost, by identity",
            lost_row(side.sent, got),
            format!("zero lost ({})", verdict(got.lost.is_empty())),
        ),
        (
            "baseline: sent / received / lost, by identity",
            lost_row(base.sent, base_got),
            String::new(),
        ),
        (
            "duplicate readings upstream",
            format!("{}", got.duplicates),
            String::new(),
        ),
    ];
    let mut md = "| measure | value | target |\n|---|---|---|\n".to_owned();
    for (k, v, t) in &rows {
        md.push_str(&format!("| {k} | {v} | {t} |\n"));
    }
    md.push_str(&format!(
        "\nWorkload: {n} readings from {devices} devices (device-sim load mode, QoS 1, {} connections), linger {LINGER_MS} ms, batch 1000, gzip, max_in_flight 16, the cloud answering after {} ms; device-sim took {:.1} s (gateway side) and {:.1} s (baseline) from start to disconnect. Probes on both sides: {} latency readings, {} alarm events upstream.\n",
        devices.min(10),
        rtt.as_millis(),
        side.publish_elapsed.as_secs_f64(),
        base.publish_elapsed.as_secs_f64(),
        lat.len(),
        alarm.len()
    ));
    println!("\n{md}");
    if !got.lost.is_empty() {
        println!(
            "first readings lost: {:?}",
            &got.lost[..got.lost.len().min(5)]
        );
    }
    let report = json!({
        "readings": n, "devices": devices, "rtt_ms": rtt.as_millis() as u64, "baseline_readings_per_s": base.rate, "e2e_readings_per_s": side.rate,
        "ratio": ratio, "ingest_readings_per_s": ingest_rate, "ingest_ratio": ingest_ratio,
        "latency_ms": {"p50": p50, "p99": p99}, "baseline_latency_ms": {"p50": b50, "p99": b99},
        "alarm_latency_ms": {"p50": a50, "p99": a99},
        "peak_rss_bytes": rss, "cpu_s": cpu, "disk_bytes_per_reading": written_per_reading, "commits": run.commits,
        "sent": side.sent, "delivered": delivered, "lost": got.lost.len(), "unexpected": got.unexpected, "wrong_value": got.wrong_value,
        "duplicates": got.duplicates, "renumbered": got.renumbered, "baseline_lost": base_got.lost.len(),
    });
    let target = gateway_bin()
        .parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("target"));
    let name = match rtt.as_millis() {
        0 => "e2e-bench".to_owned(),
        ms => format!("e2e-bench-rtt{ms}"),
    };
    let _ = std::fs::write(
        target.join(format!("{name}.json")),
        serde_json::to_string_pretty(&report).unwrap(),
    );
    let _ = std::fs::write(target.join(format!("{name}.md")), &md);
    println!("wrote {}/{name}.{{json,md}}", target.display());
    if !got.lost.is_empty() || got.unexpected > 0 || got.wrong_value > 0 || got.renumbered > 0 {
        std::process::exit(1);
    }
}

/// p50 and p99 of `xs`, ms, as "p50 / p99 ms".
fn p50_p99(xs: &[f64]) -> String {
    let mut xs = xs.to_vec();
    let (p50, p99) = (percentile(&mut xs, 0.5), percentile(&mut xs, 0.99));
    format!("{p50:.0} / {p99:.0} ms")
}

/// `BENCH_MQTT_SINK=1`: the same fleet through a gateway with the HTTP upstream alone, then
/// through a fresh gateway with the HTTP upstream and one MQTT sink (see the module docs).
async fn mqtt_sink() {
    let n_total = env_usize("BENCH_READINGS", 200_000) as u64;
    let devices = env_usize("BENCH_DEVICES", 50) as u32;
    let per_device = n_total / u64::from(devices);
    let n = per_device * u64::from(devices);
    let rtt = Duration::from_millis(env_usize("BENCH_RTT_MS", 0) as u64);
    let broker = mosquitto();
    let pki_dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(pki_dir.path());
    let (_cloud_broker, tls_port) = gateway_tests::tls_mosquitto("e2e_bench", &pki.trusted, true)
        .expect("mosquitto (apt-get install mosquitto)");
    println!(
        "workload: {n} readings from {devices} devices, QoS 1, one reading per message; the HTTP upstream answers after {} ms; the MQTT sink publishes to mosquitto over TLS with a client certificate",
        rtt.as_millis()
    );

    let http = run_gateway(broker.port(), devices, per_device, "http-", rtt, None).await;
    println!("HTTP upstream alone: {:.0} readings/s", http.side.rate);
    let cloud = MqttCloud {
        tls_port,
        pki: &pki,
    };
    let both = run_gateway(
        broker.port(),
        devices,
        per_device,
        "both-",
        rtt,
        Some(cloud),
    )
    .await;
    println!(
        "HTTP upstream + MQTT sink: {:.0} readings/s",
        both.side.rate
    );

    let (h, bh, bm) = (&http.side.got[0], &both.side.got[0], &both.side.got[1]);
    // The same record at both sinks: every reading under one seq.
    let at_both: Vec<_> = bh
        .seen
        .iter()
        .filter_map(|(k, (seq, _))| bm.seen.get(k).map(|(s, _)| (seq, s)))
        .collect();
    let seq_mismatch = at_both.iter().filter(|(a, b)| a != b).count();
    let mb = |r: &GatewayRun| r.rss as f64 / 1_048_576.0;
    let us = |r: &GatewayRun| r.cpu * 1e6 / n.max(1) as f64;
    let per_reading = |r: &GatewayRun| r.written as f64 / n.max(1) as f64;
    let rate = |r: Option<f64>| r.map_or("not seen".to_owned(), |r| format!("{r:.0}"));
    let ratio = |a: f64, b: f64| format!("{:.2}", b / a);
    let dups = |g: &Got| format!("{} ({} under another seq)", g.duplicates, g.renumbered);
    let rows = [
        (
            "end-to-end readings/s (until every reading is at every sink)",
            format!("{:.0}", http.side.rate),
            format!("{:.0}", both.side.rate),
            ratio(http.side.rate, both.side.rate),
        ),
        (
            "readings/s until the last is at the HTTP upstream / the MQTT sink's cloud",
            format!("{:.0} / -", h.rate),
            format!("{:.0} / {:.0}", bh.rate, bm.rate),
            String::new(),
        ),
        (
            "ingest readings/s (durable in the buffer)",
            rate(http.ingest_rate),
            rate(both.ingest_rate),
            match (http.ingest_rate, both.ingest_rate) {
                (Some(a), Some(b)) => ratio(a, b),
                _ => String::new(),
            },
        ),
        (
            "publish→receipt latency p50 / p99, HTTP upstream",
            p50_p99(&h.probe_latency_ms),
            p50_p99(&bh.probe_latency_ms),
            String::new(),
        ),
        (
            "publish→receipt latency p50 / p99, MQTT sink",
            "-".to_owned(),
            p50_p99(&bm.probe_latency_ms),
            String::new(),
        ),
        (
            "alarm latency p50 / p99 (under load), HTTP upstream",
            p50_p99(&h.alarm_latency_ms),
            p50_p99(&bh.alarm_latency_ms),
            String::new(),
        ),
        (
            "alarm latency p50 / p99 (under load), MQTT sink",
            "-".to_owned(),
            p50_p99(&bm.alarm_latency_ms),
            String::new(),
        ),
        (
            "gateway peak RSS",
            format!("{:.1} MB", mb(&http)),
            format!("{:.1} MB", mb(&both)),
            ratio(mb(&http), mb(&both)),
        ),
        (
            "gateway CPU",
            format!("{:.1} s ({:.1} µs/reading)", http.cpu, us(&http)),
            format!("{:.1} s ({:.1} µs/reading)", both.cpu, us(&both)),
            ratio(http.cpu, both.cpu),
        ),
        (
            "disk written per reading",
            format!("{:.0} B", per_reading(&http)),
            format!("{:.0} B", per_reading(&both)),
            String::new(),
        ),
        (
            "HTTP upstream: sent / delivered / lost, by identity",
            lost_row(http.side.sent, h),
            lost_row(both.side.sent, bh),
            String::new(),
        ),
        (
            "MQTT sink: sent / delivered / lost, by identity",
            "-".to_owned(),
            lost_row(both.side.sent, bm),
            String::new(),
        ),
        (
            "duplicate readings, HTTP upstream / MQTT sink",
            dups(h),
            format!("{} / {}", dups(bh), dups(bm)),
            String::new(),
        ),
        (
            "readings at both sinks under the same seq",
            "-".to_owned(),
            format!("{} of {}", at_both.len() - seq_mismatch, at_both.len()),
            String::new(),
        ),
    ];
    let mut md = "| measure | HTTP upstream alone | HTTP upstream + MQTT sink | ratio (both / HTTP alone) |\n|---|---|---|---|\n".to_owned();
    for (k, a, b, r) in &rows {
        md.push_str(&format!("| {k} | {a} | {b} | {r} |\n"));
    }
    md.push_str(&format!(
        "\nWorkload: {n} readings from {devices} devices (device-sim load mode, QoS 1, {} connections), the same for both gateways, one after the other, each fresh; upstream linger {LINGER_MS} ms, batch 1000, gzip, max_in_flight 16, answering after {} ms; MQTT sink to mosquitto over TLS with client certificates required, topic {SINK_TOPIC}, linger {LINGER_MS} ms, batch 1000, its default batch_max_bytes and max_message_bytes (131072), max_in_flight 16. Each clock runs from the fleet's start until the last reading is held by every consumer (the HTTP receiver; the subscriber on the cloud broker). device-sim took {:.1} s (HTTP alone) and {:.1} s (both) from start to disconnect. Probes: {} / {} latency readings and {} / {} alarm events at the HTTP upstream / MQTT sink (both).\n",
        devices.min(10),
        rtt.as_millis(),
        http.side.publish_elapsed.as_secs_f64(),
        both.side.publish_elapsed.as_secs_f64(),
        bh.probe_latency_ms.len(),
        bm.probe_latency_ms.len(),
        bh.alarm_latency_ms.len(),
        bm.alarm_latency_ms.len(),
    ));
    println!("\n{md}");
    for (name, g) in [("HTTP alone", h), ("HTTP (both)", bh), ("MQTT (both)", bm)] {
        if !g.lost.is_empty() {
            println!(
                "{name}: first readings lost: {:?}",
                &g.lost[..g.lost.len().min(5)]
            );
        }
    }
    let got_json = |g: &Got| {
        json!({
            "readings_per_s": g.rate, "lost": g.lost.len(), "unexpected": g.unexpected,
            "wrong_value": g.wrong_value, "duplicates": g.duplicates, "renumbered": g.renumbered,
            "latency_ms": {"p50": percentile(&mut g.probe_latency_ms.clone(), 0.5), "p99": percentile(&mut g.probe_latency_ms.clone(), 0.99)},
            "alarm_latency_ms": {"p50": percentile(&mut g.alarm_latency_ms.clone(), 0.5), "p99": percentile(&mut g.alarm_latency_ms.clone(), 0.99)},
        })
    };
    let run_json = |r: &GatewayRun, sinks: Value| {
        json!({
            "e2e_readings_per_s": r.side.rate, "ingest_readings_per_s": r.ingest_rate,
            "peak_rss_bytes": r.rss, "cpu_s": r.cpu, "disk_bytes_per_reading": per_reading(r),
            "sent": r.side.sent, "sinks": sinks,
        })
    };
    let report = json!({
        "mode": "mqtt_sink", "readings": n, "devices": devices, "rtt_ms": rtt.as_millis() as u64,
        "http_alone": run_json(&http, json!({"upstream": got_json(h)})),
        "http_and_mqtt": run_json(&both, json!({"upstream": got_json(bh), "cloud-mqtt": got_json(bm)})),
        "ratio": both.side.rate / http.side.rate,
        "rss_ratio": mb(&both) / mb(&http),
        "seq_mismatch": seq_mismatch,
    });
    let target = gateway_bin()
        .parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("target"));
    let name = match rtt.as_millis() {
        0 => "e2e-bench-mqtt-sink".to_owned(),
        ms => format!("e2e-bench-mqtt-sink-rtt{ms}"),
    };
    let _ = std::fs::write(
        target.join(format!("{name}.json")),
        serde_json::to_string_pretty(&report).unwrap(),
    );
    let _ = std::fs::write(target.join(format!("{name}.md")), &md);
    println!("wrote {}/{name}.{{json,md}}", target.display());
    let failed = [h, bh, bm]
        .iter()
        .any(|g| !g.lost.is_empty() || g.unexpected > 0 || g.wrong_value > 0 || g.renumbered > 0);
    if failed || seq_mismatch > 0 {
        std::process::exit(1);
    }
}

/// "sent / delivered / lost (unexpected, wrong values)" of one consumer, by identity.
fn lost_row(sent: usize, g: &Got) -> String {
    format!(
        "{} / {} / {} ({} unexpected, {} with another value)",
        sent,
        g.delivered(sent),
        g.lost.len(),
        g.unexpected,
        g.wrong_value
    )
}

/// Bytes written to disk by the calling thread so far (`/proc/thread-self/io`).
fn thread_written() -> u64 {
    std::fs::read_to_string("/proc/thread-self/io")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("write_bytes:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// The floor: `per_second` records of 30 bytes appended to a plain file each second for
/// `seconds`, one `fdatasync` a second. Returns the bytes this thread wrote to disk.
fn append_only_floor(dir: &Path, per_second: usize, seconds: u64, sync_every: Duration) -> u64 {
    use std::io::Write as _;
    let path = dir.join(format!("floor-{}ms.log", sync_every.as_millis()));
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .unwrap();
    let record = [b'x'; 30];
    let syncs = (seconds as f64 / sync_every.as_secs_f64()).round() as u64;
    let total = per_second as u64 * seconds;
    let before = thread_written();
    let start = Instant::now();
    let mut written = 0;
    for sync in 1..=syncs {
        // The records that arrived by the end of this interval, spread evenly.
        let due = total * sync / syncs;
        for _ in written..due {
            file.write_all(&record).unwrap();
        }
        written = due;
        file.sync_data().unwrap();
        let next = start + sync_every * sync as u32;
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    thread_written() - before
}

/// `BENCH_MODE=wear`: bytes written per reading at a Pi-like trickle (see the module docs).
async fn wear() {
    let devices = env_usize("BENCH_WEAR_DEVICES", 20) as u32;
    let stretch = std::env::var("BENCH_COMMIT_STRETCH_MS").ok();
    let seconds = env_usize("BENCH_WEAR_S", 60) as u64;
    let upstream_down = std::env::var("BENCH_UPSTREAM_DOWN").is_ok_and(|v| v == "1");
    let stagger = std::env::var("BENCH_STAGGER").is_ok_and(|v| v == "1");
    let metrics = vec![Metric::Temperature, Metric::Humidity, Metric::Pressure];
    let per_second = devices as usize * metrics.len();
    let broker = mosquitto();
    let dir = tempfile::tempdir().unwrap();

    let tally = Arc::new(Mutex::new(Tally::new(usize::MAX)));
    // Held for the whole run: a cloud that is down refuses every connection.
    let cloud_down = RefusedPort::bind();
    let recv_port = if upstream_down {
        cloud_down.port()
    } else {
        let app = Router::new()
            .route("/ingest", axum::routing::post(receive))
            .with_state(Cloud {
                tally: tally.clone(),
                rtt: Duration::from_millis(env_usize("BENCH_RTT_MS", 0) as u64),
            });
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        on_own_thread(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            axum::serve(listener.tap_io(nodelay), app).await.unwrap()
        });
        port
    };
    let admin = free_port();
    let config = format!(
        "gateway_id = \"gw-wear\"\ndata_dir = \"{data}\"\n\
         [mqtt]\nmode = \"external\"\nurl = \"mqtt://127.0.0.1:{port}\"\nclient_id = \"gw-wear\"\n\
         [upstream]\nurl = \"http://127.0.0.1:{recv_port}/ingest\"\n\
         [admin]\nlisten = \"127.0.0.1:{admin}\"\n{buffer}",
        data = dir.path().join("data").display(),
        port = broker.port(),
        buffer = stretch.as_ref().map_or(String::new(), |ms| format!(
            "[buffer]\ncommit_stretch_ms = {ms}\n"
        )),
    );
    let mut gw = spawn_gateway(dir.path(), &config);
    let client = reqwest::Client::new();
    let status = || fetch_status(&client, admin);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !status()
        .await
        .is_some_and(|s| s["ingest"]["mqtt_subscribed"] == true)
    {
        assert!(Instant::now() < deadline, "gateway did not become ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Settled: the opening writes of the database are not the trickle's.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let commits_before = buffer_commits(&status().await.unwrap_or_default());
    let (_, cpu_before, written_before) = proc_stats(gw.id());

    // Two floors: one fdatasync a second, and one every 100 ms (what a PUBACK p99 ≤ 100 ms
    // allows when messages arrive spread out).
    let floors = [Duration::from_secs(1), Duration::from_millis(100)].map(|every| {
        let dir = dir.path().to_path_buf();
        std::thread::spawn(move || append_only_floor(&dir, per_second, seconds, every))
    });
    let sent = trickle(broker.port(), devices, metrics, seconds, "wear-", stagger).await;
    // Everything ingested (and, with the upstream up, delivered) before the meter is read.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = status().await.unwrap_or_default();
        let ingested = s["ingest"]["readings"]["mqtt"].as_u64().unwrap_or(0);
        let delivered = s["upstream"]["records_delivered"]["readings"]
            .as_u64()
            .unwrap_or(0);
        if ingested >= sent && (upstream_down || delivered >= sent) || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (rss, cpu_after, written_after) = proc_stats(gw.id());
    let end = status().await.unwrap_or_default();
    let commits_made = buffer_commits(&end) - commits_before;
    let (mut delivery_ms, requests) = {
        let t = tally.lock().unwrap();
        (t.reading_latency_ms.clone(), t.readings_batches)
    };
    let delivery = if delivery_ms.is_empty() {
        "none delivered".to_owned()
    } else {
        format!(
            "{:.0} / {:.0} ms",
            percentile(&mut delivery_ms, 0.5),
            percentile(&mut delivery_ms, 0.99)
        )
    };
    let ack = &end["ingest"]["ack_latency_ms"];
    let ack_ms = |q: &str| ack[q].as_f64().map_or("?".to_owned(), |v| format!("≤ {v}"));
    let commit_ms = &end["buffer"]["commit_ms"];
    let phase = |p: &str| {
        let t = &commit_ms[p];
        format!(
            "≤ {} / {:.1} ms",
            t["p99"].as_f64().map_or("?".to_owned(), |v| v.to_string()),
            t["max"].as_f64().unwrap_or(f64::NAN)
        )
    };
    let [floor_1s, floor_100ms] = floors.map(|f| f.join().unwrap());
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(gw.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = gw.wait();

    let written = written_after - written_before;
    let per_reading = written as f64 / sent.max(1) as f64;
    let floor = |written: u64| written as f64 / (per_second as u64 * seconds) as f64;
    let (floor_per_reading, floor_100ms_per_reading) = (floor(floor_1s), floor(floor_100ms));
    let upstream = if upstream_down { "down" } else { "up" };
    let devices_in_step = if stagger {
        "spread evenly over each second (device-sim --stagger)"
    } else {
        "all publishing at the same instant each second"
    };
    let md = format!(
        "| measure | value | target |\n|---|---|---|\n\
         | readings (acked by the broker) | {sent} | |\n\
         | gateway disk written per reading | {per_reading:.0} B ({:.1} MB a day at this rate) | ≤ 64 B ({}) |\n\
         | floor: append-only file, fdatasync each second | {floor_per_reading:.0} B | |\n\
         | floor: append-only file, fdatasync every 100 ms | {floor_100ms_per_reading:.0} B | |\n\
         | gateway / floor (1 s) | {:.1}× | |\n\
         | group commits (fdatasyncs) | {commits_made} ({:.1} a second, {:.0} B written each) | |\n\
         | gateway PUBACK latency p50 / p99 (bucket bounds) | {} / {} ms | p99 ≤ 100 ms |\n\
         | group commit write · flush · idle flush: p99 (bucket bound) / longest | {} · {} · {} | |\n\
         | publish→receipt at the cloud p50 / p99 | {delivery} | |\n\
         | readings requests upstream | {requests} ({:.1} a second) | |\n\
         | gateway CPU | {:.2} s ({:.0} µs/reading) | |\n\
         | gateway peak RSS | {:.1} MB | ≤ 40 MB |\n\
         \nWear: {devices} devices × 3 metrics at 1 Hz for {seconds} s (device-sim, QoS 1, JSON), {devices_in_step}, contract config{}, upstream {upstream}.\n",
        per_reading * per_second as f64 * 86_400.0 / 1e6,
        if per_reading <= 64.0 { "met" } else { "MISSED" },
        per_reading / floor_per_reading.max(1.0),
        commits_made as f64 / seconds as f64,
        written as f64 / commits_made.max(1) as f64,
        ack_ms("p50"),
        ack_ms("p99"),
        phase("write"),
        phase("flush"),
        phase("idle_flush"),
        requests as f64 / seconds as f64,
        cpu_after - cpu_before,
        (cpu_after - cpu_before) * 1e6 / sent.max(1) as f64,
        rss as f64 / 1_048_576.0,
        stretch.as_ref().map_or(String::new(), |ms| format!(
            " with commit_stretch_ms = {ms}"
        )),
    );
    println!("\n{md}");
    let report = json!({
        "mode": "wear", "devices": devices, "seconds": seconds, "upstream": upstream,
        "commit_stretch_ms": stretch,
        "readings": sent, "disk_bytes_per_reading": per_reading,
        "floor_bytes_per_reading": floor_per_reading,
        "floor_100ms_bytes_per_reading": floor_100ms_per_reading,
        "cpu_s": cpu_after - cpu_before, "commits": commits_made, "stagger": stagger,
        "ack_latency_ms": ack, "commit_ms": commit_ms,
        "delivery_latency_ms": delivery, "readings_requests": requests,
        "peak_rss_bytes": rss,
    });
    let target = gateway_bin()
        .parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("target"));
    let name = format!(
        "e2e-bench-wear-upstream-{upstream}{}{}{}",
        if devices == 20 {
            String::new()
        } else {
            format!("-{devices}devices")
        },
        if stagger { "-staggered" } else { "" },
        stretch
            .as_ref()
            .map_or(String::new(), |ms| format!("-stretch{ms}"))
    );
    let _ = std::fs::write(
        target.join(format!("{name}.json")),
        serde_json::to_string_pretty(&report).unwrap(),
    );
    let _ = std::fs::write(target.join(format!("{name}.md")), &md);
    println!("wrote {}/{name}.{{json,md}}", target.display());
}

/// Sets `TCP_NODELAY` on an accepted connection: a response is never held back by Nagle's
/// algorithm waiting for the client's delayed ACK.
fn nodelay(tcp: &mut tokio::net::TcpStream) {
    let _ = tcp.set_nodelay(true);
}

/// What one receiver of `BENCH_MODE=windows` got: body bytes as sent, readings records.
#[derive(Default)]
struct Metered {
    body_bytes: AtomicU64,
    records: AtomicU64,
}

async fn metered_receive(
    State(m): State<Arc<Metered>>,
    headers: HeaderMap,
    body: Bytes,
) -> &'static str {
    m.body_bytes.fetch_add(body.len() as u64, SeqCst);
    let batch = batch_json(&headers, &body);
    if batch["lane"] == "readings" {
        let n = batch["records"].as_array().map_or(0, Vec::len);
        m.records.fetch_add(n as u64, SeqCst);
    }
    "ok"
}

/// `BENCH_MODE=windows`: upstream bytes per raw reading with 60 s windows against raw
/// forwarding, in one run (see the module docs).
async fn windows() {
    let seconds = env_usize("BENCH_WINDOWS_S", 300) as u64;
    let devices = 20u32;
    let metrics = vec![Metric::Temperature, Metric::Humidity, Metric::Pressure];
    let series = devices as u64 * metrics.len() as u64;
    let broker = mosquitto();
    let dir = tempfile::tempdir().unwrap();
    // (name, the [[window]] table; empty for raw forwarding)
    let variants: [(&str, &str); 4] = [
        ("raw forwarding", ""),
        (
            "window, all five",
            "emit = [\"mean\", \"min\", \"max\", \"count\", \"last\"]",
        ),
        (
            "window, mean/min/max",
            "emit = [\"mean\", \"min\", \"max\"]",
        ),
        ("window, mean", "emit = [\"mean\"]"),
    ];
    let mut gateways = Vec::new();
    for (i, (name, emit)) in variants.iter().enumerate() {
        let meter = Arc::new(Metered::default());
        let app = Router::new()
            .route("/ingest", axum::routing::post(metered_receive))
            .with_state(meter.clone());
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let recv_port = listener.local_addr().unwrap().port();
        on_own_thread(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            axum::serve(listener, app).await.unwrap()
        });
        let admin = free_port();
        let window = if emit.is_empty() {
            String::new()
        } else {
            format!("[[window]]\nmetric = \"*\"\nwindow_s = 60\nraw = \"drop\"\n{emit}\n")
        };
        let gw_dir = dir.path().join(format!("gw-{i}"));
        std::fs::create_dir_all(&gw_dir).unwrap();
        let config = format!(
            "gateway_id = \"gw-windows-{i}\"\ndata_dir = \"{data}\"\n\
             [mqtt]\nmode = \"external\"\nurl = \"mqtt://127.0.0.1:{port}\"\nclient_id = \"gw-windows-{i}\"\n\
             [upstream]\nurl = \"http://127.0.0.1:{recv_port}/ingest\"\n\
             [admin]\nlisten = \"127.0.0.1:{admin}\"\n{window}",
            data = gw_dir.join("data").display(),
            port = broker.port(),
        );
        let child = spawn_gateway(&gw_dir, &config);
        gateways.push((*name, !emit.is_empty(), meter, admin, child));
    }
    let client = reqwest::Client::new();
    for (name, _, _, admin, _) in &gateways {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !fetch_status(&client, *admin)
            .await
            .is_some_and(|s| s["ingest"]["mqtt_subscribed"] == true)
        {
            assert!(
                Instant::now() < deadline,
                "{name}: gateway did not become ready"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    let sent = trickle(broker.port(), devices, metrics, seconds, "win-", false).await;

    // Every reading ingested by every gateway, every window closed by the clock (its end plus
    // the close delay) and everything delivered.
    let deadline = Instant::now() + Duration::from_secs(150);
    let mut finals = Vec::new();
    for (name, windowed, meter, admin, _) in &gateways {
        let status = loop {
            let s = fetch_status(&client, *admin).await.unwrap_or_default();
            let ingested = s["ingest"]["readings"]["mqtt"].as_u64().unwrap_or(0);
            let delivered = s["upstream"]["records_delivered"]["readings"]
                .as_u64()
                .unwrap_or(0);
            let expected = if *windowed {
                s["windows"]["readings_emitted"]
                    .as_u64()
                    .unwrap_or(u64::MAX)
            } else {
                sent
            };
            let open = s["windows"]["open_windows"].as_u64().unwrap_or(1);
            let done = ingested >= sent
                && delivered >= expected
                && meter.records.load(SeqCst) >= expected
                && (!*windowed || open == 0);
            if done {
                break s;
            }
            assert!(
                Instant::now() < deadline,
                "{name}: not drained (ingested {ingested} of {sent}, delivered {delivered} of {expected}, {open} windows open)"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        finals.push(status);
    }
    for (_, _, _, _, child) in &mut gateways {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = child.wait();
    }

    let raw_bytes = gateways[0].2.body_bytes.load(SeqCst) as f64 / sent.max(1) as f64;
    let mut rows = String::new();
    let mut json_rows = Vec::new();
    for ((name, windowed, meter, _, _), status) in gateways.iter().zip(&finals) {
        let bytes = meter.body_bytes.load(SeqCst);
        let records = meter.records.load(SeqCst);
        let per_raw = bytes as f64 / sent.max(1) as f64;
        let cut = raw_bytes / per_raw.max(f64::MIN_POSITIVE);
        let own = status["upstream"]["bytes_per_raw_reading"]
            .as_f64()
            .unwrap_or(f64::NAN);
        let w = &status["windows"];
        rows.push_str(&format!(
            "| {name} | {bytes} | {records} | {per_raw:.2} B | {own:.2} B | {} | {} |\n",
            if *windowed {
                format!("{cut:.1}×")
            } else {
                "1×".to_owned()
            },
            if *windowed {
                format!("{} windows, {} late", w["windows_emitted"], w["late"])
            } else {
                String::new()
            },
        ));
        json_rows.push(json!({
            "name": name, "body_bytes": bytes, "records_delivered": records,
            "bytes_per_raw_reading": per_raw, "gateway_bytes_per_raw_reading": own,
            "cut": cut, "windows": w,
        }));
    }
    let md = format!(
        "| gateway | upstream body bytes | readings records | bytes per raw reading | its own metric | cut | windows |\n|---|---|---|---|---|---|---|\n{rows}\n\
         {sent} raw readings: {devices} devices × 3 metrics at 1 Hz for {seconds} s (device-sim, QoS 1, JSON), all four gateways fed at once by one mosquitto; \
         gzip bodies, linger_ms 1000, batch_max_records 500. {series} series; each 60 s window the run touched (a partial one at each end) emits once. \
         \"its own metric\" is /status upstream.bytes_per_raw_reading (its own ingest count; the probe-free run makes it the same ratio).\n",
    );
    println!("\n{md}");
    let target = gateway_bin()
        .parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("target"));
    let report = json!({
        "mode": "windows", "devices": devices, "seconds": seconds, "readings": sent,
        "gateways": json_rows,
    });
    let _ = std::fs::write(
        target.join("e2e-bench-windows.json"),
        serde_json::to_string_pretty(&report).unwrap(),
    );
    let _ = std::fs::write(target.join("e2e-bench-windows.md"), &md);
    println!("wrote {}/e2e-bench-windows.{{json,md}}", target.display());
}

/// A device-sim fleet at 1 Hz for `seconds` (QoS 1, JSON) through the broker on `port`; returns
/// the readings the broker acknowledged.
async fn trickle(
    port: u16,
    devices: u32,
    metrics: Vec<Metric>,
    seconds: u64,
    prefix: &str,
    stagger: bool,
) -> u64 {
    let mut cfg = FleetConfig::new(format!("127.0.0.1:{port}").parse::<Broker>().unwrap());
    cfg.devices = devices;
    cfg.rate_hz = 1.0;
    cfg.duration = Some(Duration::from_secs(seconds));
    cfg.qos = 1;
    cfg.form = MqttForm::Json;
    cfg.metrics = metrics;
    cfg.client_id_prefix = prefix.to_owned();
    cfg.stagger = stagger;
    cfg.progress = false;
    let report = device_sim::run_fleet(cfg, std::future::pending())
        .await
        .unwrap();
    report.summary.totals.readings_acked
}
