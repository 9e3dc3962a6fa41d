//! Memory benchmark: how much RAM the gateway (release) takes for many distinct devices, with
//! the contract's alarm rules (`overheat`, `freezing`, `pressure-jump`, and `silent` on every
//! metric, so every (device, metric) is an alarm series) and the default `alarm_max_series`.
//!
//! Three runs, each on a fresh gateway and data dir, device-sim (QoS 1, JSON, one reading per
//! message, temperature + humidity + pressure) → mosquitto → gateway → a local HTTP receiver
//! that counts records:
//! 1. **baseline**: 50 devices × 3 metrics, as many readings as run 2;
//! 2. **fleet**: `MEM_DEVICES` (100,000) distinct devices × 3 metrics, one reading each;
//! 3. **steady**: 1,000 devices × 3 metrics at 1 reading/s each for `MEM_STEADY_S` (60) s.
//!
//! Reports the gateway's peak RSS (`VmHWM`) per run and, for the steady run, the largest
//! `VmRSS` seen during its second half; targets: fleet peak ≤ 64 MB, steady ≤ 40 MB. Exits
//! non-zero when a target is missed or a reading is lost.
//!
//! Run: `cargo build --release -p gateway && cargo run --release -p gateway-tests --bin
//! memory_bench` (`GATEWAY_BIN` to pick the binary).

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use axum::serve::ListenerExt as _;
use device_sim::{Broker, FleetConfig, Metric, MqttForm};
use gateway_tests::{broker, free_port};
use serde_json::Value;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

const MB: f64 = 1024.0 * 1024.0;

/// The contract's rules (`gateway.example.toml`), verbatim.
const RULES: &str = r#"
[[alarm]]
name = "overheat"
metric = "temperature"
device = "*"
above = 35.0
clear_below = 33.0
for_s = 10
severity = "critical"

[[alarm]]
name = "freezing"
metric = "temperature"
below = 0.0
clear_above = 1.0
severity = "warning"

[[alarm]]
name = "pressure-jump"
metric = "pressure"
rate_above_per_s = 5.0
severity = "warning"

[[alarm]]
name = "silent"
metric = "*"
no_data_s = 120
severity = "warning"
"#;

fn gateway_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("GATEWAY_BIN") {
        return p.into();
    }
    let exe = std::env::current_exe().expect("current_exe");
    let bin = exe.parent().expect("target dir").join("gateway");
    assert!(
        bin.exists(),
        "{} missing: run `cargo build --release -p gateway` first",
        bin.display()
    );
    bin
}

/// (VmHWM, VmRSS) in bytes.
fn memory(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|k| k.parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    (field("VmHWM:"), field("VmRSS:"))
}

async fn receive(State(count): State<Arc<AtomicU64>>, body: Bytes) -> &'static str {
    let batch: Value = serde_json::from_slice(&body).expect("batch JSON");
    if batch["lane"] == "readings" {
        let n = batch["records"].as_array().map_or(0, Vec::len);
        count.fetch_add(n as u64, Ordering::Relaxed);
    }
    "ok"
}

struct Gateway {
    child: Child,
    admin: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start_gateway(broker_port: u16, recv_port: u16, name: &str) -> Gateway {
    let dir = tempfile::tempdir().expect("temp dir");
    let admin = free_port();
    let config = format!(
        "gateway_id = \"gw-mem\"\ndata_dir = \"{data}\"\n\
         [mqtt]\nmode = \"external\"\nurl = \"mqtt://127.0.0.1:{broker_port}\"\nclient_id = \"gw-mem-{name}\"\n\
         [upstream]\nurl = \"http://127.0.0.1:{recv_port}/ingest\"\ncompression = \"none\"\nbatch_max_records = 1000\n\
         [admin]\nlisten = \"127.0.0.1:{admin}\"\n{RULES}",
        data = dir.path().join("data").display(),
    );
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, config).expect("write config");
    let log = std::fs::File::create(dir.path().join("gateway.log")).expect("log");
    let child = Command::new(gateway_bin())
        .args(["run", "--config"])
        .arg(&path)
        .stderr(log)
        .spawn()
        .expect("spawn gateway");
    let gw = Gateway {
        child,
        admin,
        _dir: dir,
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while status(admin)
        .await
        .is_none_or(|s| s["ingest"]["mqtt_connected"] != true)
    {
        assert!(Instant::now() < deadline, "gateway did not become ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    gw
}

async fn status(admin: u16) -> Option<Value> {
    let r = reqwest::get(format!("http://127.0.0.1:{admin}/status"))
        .await
        .ok()?;
    serde_json::from_slice(&r.bytes().await.ok()?).ok()
}

fn fleet(port: u16, devices: u32, first: u32, prefix: &str) -> FleetConfig {
    let mut cfg = FleetConfig::new(
        format!("127.0.0.1:{port}")
            .parse::<Broker>()
            .expect("broker"),
    );
    cfg.devices = devices;
    cfg.first_device = first;
    cfg.qos = 1;
    cfg.form = MqttForm::Json;
    cfg.metrics = vec![Metric::Temperature, Metric::Humidity, Metric::Pressure];
    cfg.connections = Some(devices.min(8));
    cfg.client_id_prefix = prefix.to_owned();
    cfg.progress = false;
    cfg
}

/// What one run measured.
struct Run {
    name: &'static str,
    readings: u64,
    peak: u64,
    /// Largest VmRSS over the second half (steady run only).
    steady: Option<u64>,
    series: u64,
    evicted: u64,
}

/// Runs `cfg` against a fresh gateway; waits until every acknowledged reading is upstream.
async fn run(
    name: &'static str,
    cfg: FleetConfig,
    broker_port: u16,
    recv_port: u16,
    delivered: &Arc<AtomicU64>,
    steady_for: Option<Duration>,
) -> Run {
    delivered.store(0, Ordering::Relaxed);
    let gw = start_gateway(broker_port, recv_port, name).await;
    let pid = gw.child.id();
    let started = Instant::now();
    let sampler = steady_for.map(|d| {
        tokio::spawn(async move {
            let mut max_rss = 0;
            while started.elapsed() < d {
                if started.elapsed() > d / 2 {
                    max_rss = max_rss.max(memory(pid).1);
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            max_rss
        })
    });
    let report = device_sim::run_fleet(cfg, std::future::pending())
        .await
        .expect("fleet");
    let acked = report.summary.totals.readings_acked;
    let deadline = Instant::now() + Duration::from_secs(300);
    while delivered.load(Ordering::Relaxed) < acked {
        assert!(
            Instant::now() < deadline,
            "{name}: {} of {acked} readings upstream after 300 s",
            delivered.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let steady = match sampler {
        Some(s) => Some(s.await.expect("sampler")),
        None => None,
    };
    let s = status(gw.admin).await.unwrap_or_default();
    let (peak, _) = memory(pid);
    Run {
        name,
        readings: delivered.load(Ordering::Relaxed),
        peak,
        steady,
        series: s["alarms"]["series"].as_u64().unwrap_or(0),
        evicted: s["alarms"]["series_evicted"].as_u64().unwrap_or(0),
    }
}

#[tokio::main]
async fn main() {
    let devices = gateway_tests::env_usize("MEM_DEVICES", 100_000) as u32;
    let steady_s = gateway_tests::env_usize("MEM_STEADY_S", 60) as u64;
    // A queue deep enough that a fleet publishing faster than the gateway ingests loses nothing.
    let broker = broker()
        .conf("max_queued_messages 0\nmax_queued_bytes 0")
        .start();
    let delivered = Arc::new(AtomicU64::new(0));
    let app = Router::new()
        .route("/ingest", post(receive))
        .with_state(delivered.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind receiver");
    let recv_port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move { axum::serve(listener.tap_io(nodelay), app).await });

    let mut runs = Vec::new();
    // 1. Baseline: the same number of readings from 50 devices.
    let mut base = fleet(broker.port(), 50, 1, "mem-base-");
    base.load = true;
    base.count = Some(u64::from(devices) / 50);
    runs.push(
        run(
            "baseline (50 devices)",
            base,
            broker.port(),
            recv_port,
            &delivered,
            None,
        )
        .await,
    );
    // 2. Many distinct devices, one reading of each metric each.
    let mut many = fleet(broker.port(), devices, 1, "mem-fleet-");
    many.load = true;
    many.count = Some(1);
    let fleet_name = "fleet (distinct devices)";
    runs.push(run(fleet_name, many, broker.port(), recv_port, &delivered, None).await);
    // 3. Steady: 1,000 devices at 1 Hz.
    let mut steady = fleet(broker.port(), 1000, 1, "mem-steady-");
    steady.rate_hz = 1.0;
    steady.duration = Some(Duration::from_secs(steady_s));
    runs.push(
        run(
            "steady (1,000 devices, 1 Hz)",
            steady,
            broker.port(),
            recv_port,
            &delivered,
            Some(Duration::from_secs(steady_s)),
        )
        .await,
    );

    println!(
        "| run | readings | peak RSS (VmHWM) | steady RSS (2nd half, max) | alarm series | evicted |"
    );
    println!("|---|---|---|---|---|---|");
    for r in &runs {
        println!(
            "| {} | {} | {:.1} MB | {} | {} | {} |",
            r.name,
            r.readings,
            r.peak as f64 / MB,
            r.steady
                .map_or("-".to_owned(), |s| format!("{:.1} MB", s as f64 / MB)),
            r.series,
            r.evicted
        );
    }
    let fleet_peak = runs[1].peak as f64 / MB;
    let steady_rss = runs[2].steady.unwrap_or(u64::MAX) as f64 / MB;
    println!(
        "devices: {devices}; targets: fleet peak ≤ 64 MB ({fleet_peak:.1}), steady ≤ 40 MB ({steady_rss:.1})"
    );
    if fleet_peak > 64.0 || steady_rss > 40.0 {
        eprintln!("memory target missed");
        std::process::exit(1);
    }
}

/// Sets `TCP_NODELAY` on an accepted connection: a response is never held back by Nagle's
/// algorithm waiting for the client's delayed ACK.
fn nodelay(tcp: &mut tokio::net::TcpStream) {
    let _ = tcp.set_nodelay(true);
}
