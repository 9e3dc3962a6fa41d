//! End-to-end benchmark: device-sim (load mode, QoS 1) → mosquitto → gateway (release) →
//! a local HTTP receiver that counts and checks every record; and, in the same run, the same
//! broker delivering the same stream to `mosquitto_sub -q 1` (the baseline).
//!
//! Reports end-to-end readings/s and its ratio to the baseline, publish→receipt latency p50/p99
//! and alarm latency p50/p99 (probes published at wall-clock time during the load), the
//! gateway's peak RSS, CPU seconds and bytes written to disk per reading. Writes
//! `target/e2e-bench.json` and `target/e2e-bench.md`.
//!
//! Run (after the README set-up):
//! `cargo build --release -p gateway && cargo run --release -p gateway-tests --bin e2e_bench`
//! Environment: `BENCH_READINGS` (default 200000), `BENCH_DEVICES` (50), `GATEWAY_BIN`.

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::post;
use device_sim::{Broker, FleetConfig, Metric, MqttForm};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::{Value, json};
use std::collections::HashSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The gateway's linger in this run (the contract's default); p99 target is linger + 100 ms.
const LINGER_MS: u64 = 1000;
/// Probes: one latency reading every 20 ms, one alarm transition every 100 ms.
const PROBE_EVERY: Duration = Duration::from_millis(20);
const ALARM_EVERY: Duration = Duration::from_millis(100);

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

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// mosquitto with the settings the gateway's docs recommend (deploy/mosquitto.conf).
struct Mosquitto {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Mosquitto {
    fn start() -> Mosquitto {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let conf = dir.path().join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\nmax_inflight_messages 1000\n\
                 max_queued_messages 1000000\npersistence false\n"
            ),
        )
        .unwrap();
        let bin = ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .unwrap_or("mosquitto");
        let child = Command::new(bin)
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto (apt-get install mosquitto)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "mosquitto did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Mosquitto {
            child,
            port,
            _dir: dir,
        }
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn fleet(port: u16, devices: u32, per_device: u64, prefix: &str) -> FleetConfig {
    let mut cfg = FleetConfig::new(format!("127.0.0.1:{port}").parse::<Broker>().unwrap());
    cfg.devices = devices;
    cfg.count = Some(per_device);
    cfg.qos = 1;
    cfg.form = MqttForm::Json;
    cfg.metrics = vec![Metric::Temperature];
    cfg.load = true;
    cfg.connections = Some(devices.min(8));
    cfg.client_id_prefix = prefix.to_owned();
    cfg.progress = false;
    cfg
}

/// Baseline: the broker delivers the stream to `mosquitto_sub -q 1` (to /dev/null).
async fn baseline(port: u16, devices: u32, per_device: u64) -> f64 {
    let n = u64::from(devices) * per_device;
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
            "-C",
            &n.to_string(),
            "-i",
            "bench-baseline",
        ])
        .stdout(Stdio::null())
        .spawn()
        .expect("mosquitto_sub (apt-get install mosquitto-clients)");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    let report = device_sim::run_fleet(
        fleet(port, devices, per_device, "base-"),
        std::future::pending(),
    )
    .await
    .unwrap();
    assert_eq!(
        report.summary.totals.readings_acked, n,
        "every baseline message acknowledged"
    );
    let status = tokio::task::spawn_blocking(move || sub.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success());
    n as f64 / started.elapsed().as_secs_f64()
}

/// What the receiver saw.
#[derive(Default)]
struct Seen {
    readings: usize,
    seqs: HashSet<u64>,
    duplicates: usize,
    probe_latency_ms: Vec<f64>,
    alarm_latency_ms: Vec<f64>,
    last_at: Option<Instant>,
}

async fn receive(
    State(seen): State<Arc<Mutex<Seen>>>,
    headers: HeaderMap,
    body: Bytes,
) -> &'static str {
    let arrived = now_ms();
    let mut json = Vec::new();
    let bytes = if headers.get("content-encoding").is_some_and(|v| v == "gzip") {
        flate2::read::GzDecoder::new(&body[..])
            .read_to_end(&mut json)
            .unwrap();
        &json[..]
    } else {
        &body[..]
    };
    let batch: Value = serde_json::from_slice(bytes).unwrap();
    let alarms = batch["lane"] == "alarms";
    let mut s = seen.lock().unwrap();
    for r in batch["records"].as_array().unwrap() {
        if !s.seqs.insert(r["seq"].as_u64().unwrap()) {
            s.duplicates += 1;
            continue;
        }
        let ts = r["ts"].as_i64().unwrap_or(arrived);
        if alarms {
            s.alarm_latency_ms.push((arrived - ts) as f64);
        } else if r["device"] == "probe-latency" {
            s.probe_latency_ms.push((arrived - ts) as f64);
        } else if r["device"] != "probe-alarm" {
            s.readings += 1;
        }
    }
    s.last_at = Some(Instant::now());
    "ok"
}

/// Probe messages published so far (each is one reading in the gateway's ingest count).
static PROBES_PUBLISHED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Polls the gateway's `/status` until it has ingested (made durable) `n` fleet readings;
/// returns when that was first seen.
async fn ingested_at(
    admin: u16,
    n: u64,
    stop: tokio_util::sync::CancellationToken,
) -> Option<Instant> {
    let client = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{admin}/status");
    while !stop.is_cancelled() {
        // Read before the status, so probes published meanwhile only make this stricter.
        let probes = PROBES_PUBLISHED.load(std::sync::atomic::Ordering::SeqCst);
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

/// Publishes probes at wall-clock `ts` until `stop`.
async fn probes(port: u16, stop: tokio_util::sync::CancellationToken) {
    let mut opts = MqttOptions::new("bench-probe", "127.0.0.1", port);
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
                PROBES_PUBLISHED.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let _ = client.publish("sensors/probe-latency/latency", QoS::AtLeastOnce, false, p).await;
            }
            _ = alarm.tick() => {
                hot = !hot;
                let p = json!({"value": if hot { 40.0 } else { 20.0 }, "ts": now_ms()}).to_string();
                PROBES_PUBLISHED.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
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

#[tokio::main]
async fn main() {
    let n_total = env_usize("BENCH_READINGS", 200_000) as u64;
    let devices = env_usize("BENCH_DEVICES", 50) as u32;
    let per_device = n_total / u64::from(devices);
    let n = per_device * u64::from(devices);
    let broker = Mosquitto::start();
    println!("workload: {n} readings from {devices} devices, QoS 1, one reading per message");

    let baseline_rate = baseline(broker.port, devices, per_device).await;
    println!("baseline (mosquitto_sub -q 1): {baseline_rate:.0} readings/s");

    // Receiver.
    let seen = Arc::new(Mutex::new(Seen::default()));
    let app = Router::new()
        .route("/ingest", post(receive))
        .with_state(seen.clone());
    // The receiver and the probes (the cloud and a device) run on threads of their own, so the
    // simulated fleet's load on this process's runtime does not delay their timestamps.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let recv_port = listener.local_addr().unwrap().port();
    on_own_thread(async move {
        let listener = tokio::net::TcpListener::from_std(listener).unwrap();
        axum::serve(listener, app).await.unwrap()
    });

    // Gateway.
    let dir = tempfile::tempdir().unwrap();
    let admin = free_port();
    let config = format!(
        "gateway_id = \"gw-bench\"\ndata_dir = \"{data}\"\n\
         [mqtt]\nmode = \"external\"\nurl = \"mqtt://127.0.0.1:{port}\"\nclient_id = \"gw-bench\"\nmax_inflight = 1000\n\
         [upstream]\nurl = \"http://127.0.0.1:{recv_port}/ingest\"\nlinger_ms = {LINGER_MS}\nbatch_max_records = 1000\n\
         [admin]\nlisten = \"127.0.0.1:{admin}\"\n\
         [[alarm]]\nname = \"overheat\"\ndevice = \"probe-*\"\nmetric = \"temperature\"\nabove = 35.0\nclear_below = 33.0\nseverity = \"critical\"\n",
        data = dir.path().join("data").display(),
        port = broker.port,
    );
    let config_path = dir.path().join("gateway.toml");
    std::fs::write(&config_path, config).unwrap();
    let log = std::fs::File::create(dir.path().join("gateway.log")).unwrap();
    let mut gw = Command::new(gateway_bin())
        .args(["run", "--config"])
        .arg(&config_path)
        .stderr(log)
        .spawn()
        .unwrap();
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let ok = client
            .get(format!("http://127.0.0.1:{admin}/status"))
            .send()
            .await
            .ok()
            .map(|r| r.status().is_success())
            .unwrap_or(false);
        if ok {
            let body = client
                .get(format!("http://127.0.0.1:{admin}/status"))
                .send()
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap();
            let s: Value = serde_json::from_slice(&body).unwrap();
            if s["ingest"]["mqtt_connected"] == true {
                break;
            }
        }
        assert!(Instant::now() < deadline, "gateway did not become ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, cpu_before, written_before) = proc_stats(gw.id());

    let stop_probes = tokio_util::sync::CancellationToken::new();
    let probe_task = on_own_thread(probes(broker.port, stop_probes.clone()));
    let stop_ingest_poll = tokio_util::sync::CancellationToken::new();
    let ingest_poll = on_own_thread(ingested_at(admin, n, stop_ingest_poll.clone()));
    let started = Instant::now();
    let report = device_sim::run_fleet(
        fleet(broker.port, devices, per_device, "gw-"),
        std::future::pending(),
    )
    .await
    .unwrap();
    let publish_elapsed = started.elapsed();
    let acked = report.summary.totals.readings_acked;
    let deadline = Instant::now() + Duration::from_secs(120);
    while (seen.lock().unwrap().readings as u64) < acked && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop_probes.cancel();
    tokio::task::spawn_blocking(move || probe_task.join())
        .await
        .unwrap()
        .unwrap();
    stop_ingest_poll.cancel();
    let ingested = tokio::task::spawn_blocking(move || ingest_poll.join())
        .await
        .unwrap()
        .unwrap();
    let ingest_rate = ingested.map(|t| n as f64 / (t - started).as_secs_f64());
    let ingest_ratio = ingest_rate.map(|r| r / baseline_rate);
    let s = seen.lock().unwrap();
    let last = s.last_at.unwrap_or_else(Instant::now);
    let e2e_rate = s.readings as f64 / (last - started).as_secs_f64();
    let (rss, cpu_after, written_after) = proc_stats(gw.id());
    let cpu = cpu_after - cpu_before;
    let written_per_reading = (written_after - written_before) as f64 / s.readings.max(1) as f64;
    let (mut lat, mut alarm) = (s.probe_latency_ms.clone(), s.alarm_latency_ms.clone());
    let (p50, p99) = (percentile(&mut lat, 0.5), percentile(&mut lat, 0.99));
    let (a50, a99) = (percentile(&mut alarm, 0.5), percentile(&mut alarm, 0.99));
    let lost = acked.saturating_sub(s.readings as u64);
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(gw.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = gw.wait();

    let ratio = e2e_rate / baseline_rate;
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
            format!("{e2e_rate:.0}"),
            format!(
                "≥ 90% of baseline: {:.0}% ({})",
                ratio * 100.0,
                verdict(ratio >= 0.9)
            ),
        ),
        (
            "baseline mosquitto_sub -q 1 readings/s",
            format!("{baseline_rate:.0}"),
            String::new(),
        ),
        (
            "publish→receipt latency p50 / p99",
            format!("{p50:.0} / {p99:.0} ms"),
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
                cpu * 1e6 / s.readings.max(1) as f64
            ),
            String::new(),
        ),
        (
            "disk written per reading",
            format!("{written_per_reading:.0} B"),
            String::new(),
        ),
        (
            "readings acked by broker / delivered / lost",
            format!("{acked} / {} / {lost}", s.readings),
            format!("zero lost ({})", verdict(lost == 0)),
        ),
        (
            "duplicate records upstream",
            format!("{}", s.duplicates),
            String::new(),
        ),
    ];
    let mut md = "| measure | value | target |\n|---|---|---|\n".to_owned();
    for (k, v, t) in &rows {
        md.push_str(&format!("| {k} | {v} | {t} |\n"));
    }
    md.push_str(&format!(
        "\nWorkload: {n} readings from {devices} devices (device-sim load mode, QoS 1, 8 connections), linger {LINGER_MS} ms, batch 1000, gzip; publishing took {:.1} s. Probes: {} latency readings, {} alarm events.\n",
        publish_elapsed.as_secs_f64(),
        lat.len(),
        alarm.len()
    ));
    println!("\n{md}");
    let report = json!({
        "readings": n, "devices": devices, "baseline_readings_per_s": baseline_rate, "e2e_readings_per_s": e2e_rate,
        "ratio": ratio, "ingest_readings_per_s": ingest_rate, "ingest_ratio": ingest_ratio, "latency_ms": {"p50": p50, "p99": p99}, "alarm_latency_ms": {"p50": a50, "p99": a99},
        "peak_rss_bytes": rss, "cpu_s": cpu, "disk_bytes_per_reading": written_per_reading,
        "acked": acked, "delivered": s.readings, "lost": lost, "duplicates": s.duplicates,
    });
    let target = gateway_bin()
        .parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("target"));
    let _ = std::fs::write(
        target.join("e2e-bench.json"),
        serde_json::to_string_pretty(&report).unwrap(),
    );
    let _ = std::fs::write(target.join("e2e-bench.md"), &md);
    println!("wrote {}/e2e-bench.{{json,md}}", target.display());
    if lost > 0 {
        std::process::exit(1);
    }
}
