//! Modbus benchmark: what polling costs the gateway, against a bare Modbus client in the same
//! process.
//!
//! `device-sim modbus --tcp 127.0.0.1:0 --devices 50` serves units 1..=50 on one listener; each
//! unit is read for 10 registers (input: four f32, an i16, a u16 and a u32 at 0..12; holding: the
//! u16, i16 and u32 of the fixed pattern at 0..4), two read requests per poll. Five runs, each on
//! a fresh simulator:
//!
//! 1. **bare, no pause**: a tokio-modbus TCP client in this process, one connection per unit,
//!    each polling its registers back to back (what the simulator and the machine can serve);
//! 2. **bare, 10 ms** and 3. **gateway, 10 ms**: the same 50 slaves polled every 10 ms (5,000
//!    polls/s asked), the bare client against the release gateway with 50 `[[modbus]]` slaves;
//! 4. **bare, 1000 ms** and 5. **gateway, 1000 ms**: the realistic period (the default `poll_ms`),
//!    for the CPU a poll costs at a Pi-like rate.
//!
//! The bare client does what the gateway's poll does on the wire (the same two requests, a 500
//! ms timeout, a missed period skipped) and decodes the 10 values; it stores and forwards
//! nothing. Each run measures polls/s over its window (the gateway's from
//! `gateway_modbus_polls_total` and `gateway_modbus_polls_complete_total` in `/metrics`, read at
//! the window's start and end), CPU seconds of the polling process over the window
//! (`/proc/PID/stat` utime + stime; this process's own for the bare client) per poll and as a
//! share of one core, and its RSS at the end.
//!
//! The gateway runs with `mqtt.mode = "disabled"` and the default upstream settings (linger
//! 1000 ms, gzip) sending to a receiver on a thread of this process that counts readings by
//! seq and checks the values of the fixed pattern. After the window the simulator stops, the
//! gateway drains what it holds, and the bench checks that every reading the gateway made
//! durable (`gateway_readings_received_total{source="modbus"}`) arrived upstream once, that the
//! readings made durable in the window are 10 per complete poll, and that none went unstored.
//!
//! Run: `cargo build --release -p gateway -p device-sim && cargo run --release -p gateway-tests
//! --bin modbus_bench`. Environment: `BENCH_SECONDS` (20): the window of the unpaced and 10 ms
//! runs; `BENCH_PI_SECONDS` (60): the window of the 1000 ms runs (longer, as the CPU clock ticks
//! every 10 ms); `GATEWAY_BIN`, `DEVICE_SIM_BIN`, `E2E_NO_BUILD` as in the test harness. Writes
//! `target/modbus-bench.{json,md}`; exits non-zero when a reading is lost, duplicated, wrong or
//! unstored.

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use gateway_tests::{ModbusSim, ModbusSimAt, free_port, gateway_bin};
use serde_json::{Value, json};
use std::collections::HashSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::time::MissedTickBehavior;
use tokio_modbus::client::Reader as _;
use tokio_util::sync::CancellationToken;

/// Slaves polled: units 1..=SLAVES of one simulator.
const SLAVES: u8 = 50;
/// The gateway's `timeout_ms` (its default), used by the bare client too.
const TIMEOUT: Duration = Duration::from_millis(500);
/// A short period, so that the poller is the limit, and the realistic one.
const FAST_POLL_MS: u64 = 10;
const PI_POLL_MS: u64 = 1000;
/// How long the gateway may take to hand upstream what it holds once polling stops.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);

/// The 10 registers of every slave: (metric, kind, address, type), in two contiguous runs, one
/// per kind, so that a poll is two read requests (input 0..12, holding 0..4).
const REGISTERS: [(&str, &str, u16, &str); 10] = [
    ("temperature", "input", 0, "f32"),
    ("humidity", "input", 2, "f32"),
    ("pressure", "input", 4, "f32"),
    ("battery", "input", 6, "f32"),
    ("temperature_x100", "input", 8, "i16"),
    ("humidity_x100", "input", 9, "u16"),
    ("pressure_pa", "input", 10, "u32"),
    ("pattern_u16", "holding", 0, "u16"),
    ("pattern_i16", "holding", 1, "i16"),
    ("pattern_u32", "holding", 2, "u32"),
];
const INPUT_WORDS: u16 = 12;
const HOLDING_WORDS: u16 = 4;
/// The fixed holding pattern (device-sim's register map), checked upstream.
const PATTERN: [(&str, f64); 3] = [
    ("pattern_u16", 51234.0),
    ("pattern_i16", -1234.0),
    ("pattern_u32", 3_000_000_123.0),
];

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Clock ticks per second of `/proc/PID/stat` (`getconf CLK_TCK`; 100 on Linux if that fails).
fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|t| *t > 0.0)
        .unwrap_or(100.0)
}

/// utime + stime of a process, in clock ticks (`pid` "self" for this one).
fn cpu_ticks(pid: &str) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let field = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok());
    // After the command: state is field 0, utime 11, stime 12.
    field(11).unwrap_or(0) + field(12).unwrap_or(0)
}

/// A `Vm…:` line of `/proc/PID/status`, bytes.
fn vm(pid: &str, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|k| k.parse::<u64>().ok())
        .unwrap_or(0)
        * 1024
}

/// What one run measured over its window.
#[derive(Debug, Clone)]
struct Run {
    name: String,
    poll_ms: u64,
    seconds: f64,
    polls: u64,
    complete: u64,
    cpu_s: f64,
    rss: u64,
}

impl Run {
    fn polls_per_s(&self) -> f64 {
        self.polls as f64 / self.seconds
    }
    fn cpu_us_per_poll(&self) -> f64 {
        self.cpu_s * 1e6 / self.polls.max(1) as f64
    }
    fn cpu_percent(&self) -> f64 {
        self.cpu_s * 100.0 / self.seconds
    }
    fn json(&self) -> Value {
        json!({
            "name": self.name, "poll_ms": self.poll_ms, "seconds": self.seconds,
            "polls": self.polls, "polls_complete": self.complete,
            "polls_per_s": self.polls_per_s(), "cpu_s": self.cpu_s,
            "cpu_us_per_poll": self.cpu_us_per_poll(), "cpu_percent_of_one_core": self.cpu_percent(),
            "rss_bytes": self.rss,
        })
    }
}

fn sim_addr(sim: &ModbusSim) -> String {
    match &sim.at {
        ModbusSimAt::Tcp(addr) => addr.clone(),
        other => panic!("device-sim modbus serves TCP here, not {other:?}"),
    }
}

fn f32_big(w: &[u16]) -> f64 {
    f64::from(f32::from_bits((u32::from(w[0]) << 16) | u32::from(w[1])))
}

fn u32_big(w: &[u16]) -> f64 {
    f64::from((u32::from(w[0]) << 16) | u32::from(w[1]))
}

/// The 10 values of one poll, decoded as the gateway decodes them.
fn decode(input: &[u16], holding: &[u16]) -> [f64; 10] {
    [
        f32_big(&input[0..2]),
        f32_big(&input[2..4]),
        f32_big(&input[4..6]),
        f32_big(&input[6..8]),
        f64::from(input[8] as i16),
        f64::from(input[9]),
        u32_big(&input[10..12]),
        f64::from(holding[0]),
        f64::from(holding[1] as i16),
        u32_big(&holding[2..4]),
    ]
}

/// One poll of the bare client: both requests, each within [`TIMEOUT`]; `true` when both were
/// answered in full.
async fn bare_poll(ctx: &mut tokio_modbus::client::Context) -> bool {
    let input = tokio::time::timeout(TIMEOUT, ctx.read_input_registers(0, INPUT_WORDS)).await;
    let Ok(Ok(Ok(input))) = input else {
        return false;
    };
    let holding = tokio::time::timeout(TIMEOUT, ctx.read_holding_registers(0, HOLDING_WORDS)).await;
    let Ok(Ok(Ok(holding))) = holding else {
        return false;
    };
    if input.len() != usize::from(INPUT_WORDS) || holding.len() != usize::from(HOLDING_WORDS) {
        return false;
    }
    let values = decode(&input, &holding);
    std::hint::black_box(values).iter().all(|v| v.is_finite())
}

/// The bare tokio-modbus client: one connection per unit, each polled every `poll_ms` (0: back
/// to back) for `seconds`; counts and CPU of this process over the window.
async fn bare(poll_ms: u64, seconds: u64) -> Run {
    let sim = ModbusSim::tcp(&["--devices", &SLAVES.to_string()]);
    let addr: std::net::SocketAddr = sim_addr(&sim).parse().expect("simulator address");
    let mut contexts = Vec::new();
    for unit in 1..=SLAVES {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .expect("connect to device-sim");
        let _ = stream.set_nodelay(true);
        contexts.push(tokio_modbus::client::tcp::attach_slave(
            stream,
            tokio_modbus::Slave(unit),
        ));
    }
    let polls = Arc::new(AtomicU64::new(0));
    let complete = Arc::new(AtomicU64::new(0));
    let (cpu0, t0) = (cpu_ticks("self"), Instant::now());
    let end = tokio::time::Instant::from_std(t0 + Duration::from_secs(seconds));
    let mut tasks = Vec::new();
    for mut ctx in contexts {
        let (polls, complete) = (polls.clone(), complete.clone());
        tasks.push(tokio::spawn(async move {
            let mut tick = (poll_ms > 0).then(|| {
                let mut t = tokio::time::interval(Duration::from_millis(poll_ms));
                // As the gateway's schedule: a period missed is skipped, not caught up.
                t.set_missed_tick_behavior(MissedTickBehavior::Skip);
                t
            });
            while tokio::time::Instant::now() < end {
                match tick.as_mut() {
                    Some(t) => {
                        tokio::select! {
                            _ = t.tick() => {}
                            _ = tokio::time::sleep_until(end) => break,
                        }
                    }
                    None => tokio::task::yield_now().await,
                }
                let ok = bare_poll(&mut ctx).await;
                polls.fetch_add(1, Relaxed);
                if ok {
                    complete.fetch_add(1, Relaxed);
                }
            }
        }));
    }
    for t in tasks {
        t.await.expect("poll task");
    }
    let (cpu1, elapsed) = (cpu_ticks("self"), t0.elapsed());
    let rss = vm("self", "VmRSS:");
    let summary = sim.stop().await;
    let answered: u64 = summary.iter().map(|u| u.answered).sum();
    let run = Run {
        name: match poll_ms {
            0 => "bare tokio-modbus, no pause".to_owned(),
            ms => format!("bare tokio-modbus, {ms} ms"),
        },
        poll_ms,
        seconds: elapsed.as_secs_f64(),
        polls: polls.load(Relaxed),
        complete: complete.load(Relaxed),
        cpu_s: (cpu1 - cpu0) as f64 / clock_ticks(),
        rss,
    };
    println!(
        "{}: {:.0} polls/s, {:.1} µs CPU/poll, {:.1}% of a core ({answered} answers from the simulator)",
        run.name,
        run.polls_per_s(),
        run.cpu_us_per_poll(),
        run.cpu_percent(),
    );
    run
}

/// What the receiver counted, shared with its thread.
#[derive(Debug, Default)]
struct Upstream {
    /// Reading records received (every copy).
    records: AtomicU64,
    /// Records of source "modbus" from a bench slave.
    modbus: AtomicU64,
    /// Distinct seqs of reading records.
    seqs: Mutex<HashSet<u64>>,
    /// Pattern registers whose value is not the pattern's.
    wrong: AtomicU64,
    /// Batches that were not WIRE JSON.
    bad_batches: AtomicU64,
}

async fn receive(State(up): State<Arc<Upstream>>, headers: HeaderMap, body: Bytes) -> &'static str {
    let gzip = headers
        .get("content-encoding")
        .is_some_and(|v| v.as_bytes() == b"gzip");
    let mut text = Vec::new();
    let body = if gzip {
        match flate2::read::GzDecoder::new(&body[..]).read_to_end(&mut text) {
            Ok(_) => &text[..],
            Err(_) => {
                up.bad_batches.fetch_add(1, Relaxed);
                return "ok";
            }
        }
    } else {
        &body[..]
    };
    let Ok(batch) = serde_json::from_slice::<Value>(body) else {
        up.bad_batches.fetch_add(1, Relaxed);
        return "ok";
    };
    if batch["lane"] != "readings" {
        return "ok";
    }
    let records = batch["records"].as_array().map_or(&[][..], Vec::as_slice);
    let mut seqs = Vec::with_capacity(records.len());
    for r in records {
        up.records.fetch_add(1, Relaxed);
        if let Some(seq) = r["seq"].as_u64() {
            seqs.push(seq);
        }
        let device = r["device"].as_str().unwrap_or_default();
        if r["source"] != "modbus" || !device.starts_with("meter-") {
            continue;
        }
        up.modbus.fetch_add(1, Relaxed);
        let metric = r["metric"].as_str().unwrap_or_default();
        if let Some((_, want)) = PATTERN.iter().find(|(m, _)| *m == metric)
            && r["value"].as_f64() != Some(*want)
        {
            up.wrong.fetch_add(1, Relaxed);
        }
    }
    up.seqs.lock().unwrap().extend(seqs);
    "ok"
}

/// The receiver on a thread with a runtime of its own (its CPU is not the gateway's, and the
/// gateway's load does not delay it); stops when `stop` is cancelled.
fn start_receiver(
    up: Arc<Upstream>,
    stop: CancellationToken,
) -> (u16, std::thread::JoinHandle<()>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind receiver");
    listener.set_nonblocking(true).expect("nonblocking");
    let port = listener.local_addr().expect("addr").port();
    let thread = std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("receiver runtime")
            .block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                let app = Router::new()
                    .route("/ingest", axum::routing::post(receive))
                    .with_state(up);
                axum::serve(listener, app)
                    .with_graceful_shutdown(stop.cancelled_owned())
                    .await
                    .expect("receiver");
            });
    });
    (port, thread)
}

/// The gateway's config: 50 slaves at `poll_ms`, no MQTT, the receiver upstream.
fn config(dir: &Path, sim: &str, poll_ms: u64, upstream: u16, admin: u16) -> String {
    let mut toml = format!(
        "gateway_id = \"gw-modbus-bench\"\ndata_dir = \"{}\"\n\n[mqtt]\nmode = \"disabled\"\n\n\
         [upstream]\nurl = \"http://127.0.0.1:{upstream}/ingest\"\n\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n",
        dir.join("data").display()
    );
    for unit in 1..=SLAVES {
        toml.push_str(&format!(
            "\n[[modbus]]\ndevice = \"meter-{unit}\"\nurl = \"tcp://{sim}\"\nunit_id = {unit}\npoll_ms = {poll_ms}\n"
        ));
        for (metric, kind, address, ty) in REGISTERS {
            toml.push_str(&format!(
                "[[modbus.register]]\nmetric = \"{metric}\"\nkind = \"{kind}\"\naddress = {address}\ntype = \"{ty}\"\n"
            ));
        }
    }
    toml
}

/// The gateway process; killed on drop.
struct Gateway {
    child: Child,
    admin: u16,
    http: reqwest::Client,
    dir: tempfile::TempDir,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Gateway {
    fn start(sim: &str, poll_ms: u64, upstream: u16) -> Gateway {
        let dir = tempfile::Builder::new()
            .prefix("modbus-bench-")
            .tempdir()
            .expect("temp dir");
        let admin = free_port();
        let path = dir.path().join("gateway.toml");
        std::fs::write(&path, config(dir.path(), sim, poll_ms, upstream, admin))
            .expect("write config");
        let log = std::fs::File::create(dir.path().join("gateway.log")).expect("log");
        let child = Command::new(gateway_bin())
            .args(["run", "--config"])
            .arg(&path)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn gateway");
        Gateway {
            child,
            admin,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .expect("http client"),
            dir,
        }
    }

    fn pid(&self) -> String {
        self.child.id().to_string()
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.path().join("gateway.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    async fn get(&self, path: &str) -> Option<String> {
        let r = self
            .http
            .get(format!("http://127.0.0.1:{}{path}", self.admin))
            .send()
            .await
            .ok()?;
        r.text().await.ok()
    }

    /// Waits until every slave has answered a poll (`/status` modbus state "up").
    async fn wait_all_up(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let status = self.get("/status").await;
            let up = status
                .and_then(|s| serde_json::from_str::<Value>(&s).ok())
                .and_then(|s| {
                    s["modbus"]
                        .as_array()
                        .map(|a| a.iter().filter(|m| m["state"] == "up").count())
                })
                .unwrap_or(0);
            if up == usize::from(SLAVES) {
                return;
            }
            if let Ok(Some(exit)) = self.child.try_wait() {
                panic!("the gateway exited ({exit})\n{}", self.log_tail());
            }
            assert!(
                Instant::now() < deadline,
                "{up} of {SLAVES} slaves up after 30 s\n{}",
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn metrics(&self) -> Metrics {
        let text = self.get("/metrics").await.expect("/metrics");
        Metrics::parse(&text)
    }

    /// SIGTERM, and waits up to 20 s for the exit.
    async fn stop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.child.try_wait().ok().flatten().is_none() {
            assert!(
                Instant::now() < deadline,
                "the gateway did not stop on SIGTERM"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The gateway's counters the bench reads, summed over its slaves.
#[derive(Debug, Clone, Copy, Default)]
struct Metrics {
    polls: u64,
    complete: u64,
    requests: u64,
    errors: u64,
    not_stored: u64,
    /// `gateway_readings_received_total{source="modbus"}`: readings made durable.
    durable: u64,
}

impl Metrics {
    fn parse(text: &str) -> Metrics {
        let sum = |family: &str| -> u64 {
            text.lines()
                .filter(|l| {
                    l.strip_prefix(family)
                        .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
                })
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum::<f64>() as u64
        };
        let durable = text
            .lines()
            .find(|l| l.starts_with("gateway_readings_received_total{source=\"modbus\"}"))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .unwrap_or(0.0) as u64;
        Metrics {
            polls: sum("gateway_modbus_polls_total"),
            complete: sum("gateway_modbus_polls_complete_total"),
            requests: sum("gateway_modbus_requests_total"),
            errors: sum("gateway_modbus_errors_total"),
            not_stored: sum("gateway_modbus_readings_not_stored_total"),
            durable,
        }
    }
}

/// What became of the gateway's readings.
#[derive(Debug, Clone)]
struct Delivery {
    /// Readings made durable during the window, and complete polls × 10 in it.
    durable_in_window: u64,
    complete_x10: u64,
    /// Over the whole run: made durable, arrived upstream (every copy), distinct seqs upstream.
    durable_total: u64,
    upstream: u64,
    upstream_distinct: u64,
    wrong: u64,
    bad_batches: u64,
    not_stored: u64,
    /// Requests in the window, and failed ones.
    requests: u64,
    errors: u64,
    /// From the simulator's stop until upstream held every durable reading.
    drain_s: f64,
}

impl Delivery {
    fn ok(&self) -> bool {
        self.upstream == self.durable_total
            && self.upstream_distinct == self.upstream
            && self.wrong == 0
            && self.bad_batches == 0
            && self.not_stored == 0
    }
    fn json(&self) -> Value {
        json!({
            "durable_in_window": self.durable_in_window, "complete_polls_x10": self.complete_x10,
            "durable_total": self.durable_total, "upstream": self.upstream,
            "upstream_distinct": self.upstream_distinct, "wrong_values": self.wrong,
            "bad_batches": self.bad_batches, "not_stored": self.not_stored,
            "requests_in_window": self.requests, "errors_in_window": self.errors,
            "drain_s": self.drain_s, "ok": self.ok(),
        })
    }
}

/// The release gateway polling 50 slaves every `poll_ms` for `seconds`.
async fn gateway(poll_ms: u64, seconds: u64) -> (Run, Delivery) {
    let sim = ModbusSim::tcp(&["--devices", &SLAVES.to_string()]);
    let up = Arc::new(Upstream::default());
    let stop = CancellationToken::new();
    let (port, receiver) = start_receiver(up.clone(), stop.clone());
    let mut gw = Gateway::start(&sim_addr(&sim), poll_ms, port);
    gw.wait_all_up().await;
    let pid = gw.pid();
    let (m0, cpu0, t0) = (gw.metrics().await, cpu_ticks(&pid), Instant::now());
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let (cpu1, elapsed) = (cpu_ticks(&pid), t0.elapsed());
    let m1 = gw.metrics().await;
    let rss = vm(&pid, "VmRSS:");
    let run = Run {
        name: format!("gateway, {poll_ms} ms"),
        poll_ms,
        seconds: elapsed.as_secs_f64(),
        polls: m1.polls - m0.polls,
        complete: m1.complete - m0.complete,
        cpu_s: (cpu1 - cpu0) as f64 / clock_ticks(),
        rss,
    };

    // Polling stops with the simulator; then everything made durable must arrive upstream.
    sim.stop().await;
    let stopped = Instant::now();
    let mut last = gw.metrics().await;
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = gw.metrics().await;
        let settled = now.durable == last.durable && now.complete == last.complete;
        if settled && up.modbus.load(Relaxed) >= now.durable {
            last = now;
            break;
        }
        last = now;
        if stopped.elapsed() > DRAIN_TIMEOUT {
            println!(
                "upstream still short after {DRAIN_TIMEOUT:?}: {} of {}",
                up.modbus.load(Relaxed),
                now.durable
            );
            break;
        }
    }
    let drain_s = stopped.elapsed().as_secs_f64();
    gw.stop().await;
    stop.cancel();
    receiver.join().expect("receiver thread");
    let distinct = up.seqs.lock().unwrap().len() as u64;
    let delivery = Delivery {
        durable_in_window: m1.durable - m0.durable,
        complete_x10: (m1.complete - m0.complete) * REGISTERS.len() as u64,
        durable_total: last.durable,
        upstream: up.modbus.load(Relaxed),
        upstream_distinct: distinct,
        wrong: up.wrong.load(Relaxed),
        bad_batches: up.bad_batches.load(Relaxed),
        not_stored: last.not_stored,
        requests: m1.requests - m0.requests,
        errors: m1.errors - m0.errors,
        drain_s,
    };
    println!(
        "{}: {:.0} polls/s, {:.1} µs CPU/poll, {:.1}% of a core; {} readings durable, {} upstream ({} distinct)",
        run.name,
        run.polls_per_s(),
        run.cpu_us_per_poll(),
        run.cpu_percent(),
        delivery.durable_total,
        delivery.upstream,
        delivery.upstream_distinct
    );
    (run, delivery)
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1_048_576.0
}

fn row(r: &Run) -> String {
    format!(
        "| {} | {:.0} | {:.1}% | {:.1} | {:.1}% | {:.1} MB |\n",
        r.name,
        r.polls_per_s(),
        r.complete as f64 * 100.0 / r.polls.max(1) as f64,
        r.cpu_us_per_poll(),
        r.cpu_percent(),
        mb(r.rss)
    )
}

fn ratio_row(gw: &Run, bare: &Run) -> String {
    format!(
        "| gateway ÷ bare, {} ms | {:.2}× | | {:.2}× | {:.2}× | |\n",
        gw.poll_ms,
        gw.polls_per_s() / bare.polls_per_s(),
        gw.cpu_us_per_poll() / bare.cpu_us_per_poll(),
        gw.cpu_percent() / bare.cpu_percent()
    )
}

fn delivery_row(name: &str, d: &Delivery) -> String {
    format!(
        "| {name} | {} / {} | {} / {} / {} | {} | {} | {:.1} s |\n",
        d.durable_in_window,
        d.complete_x10,
        d.durable_total,
        d.upstream,
        d.upstream_distinct,
        d.wrong,
        d.not_stored,
        d.drain_s
    )
}

#[tokio::main]
async fn main() {
    let seconds = env_u64("BENCH_SECONDS", 20);
    let pi_seconds = env_u64("BENCH_PI_SECONDS", 60);
    println!(
        "{SLAVES} Modbus TCP slaves × {} registers (2 requests a poll), {seconds} s windows, {pi_seconds} s at {PI_POLL_MS} ms",
        REGISTERS.len()
    );
    let unpaced = bare(0, seconds).await;
    let bare_fast = bare(FAST_POLL_MS, seconds).await;
    let (gw_fast, fast_delivery) = gateway(FAST_POLL_MS, seconds).await;
    let bare_pi = bare(PI_POLL_MS, pi_seconds).await;
    let (gw_pi, pi_delivery) = gateway(PI_POLL_MS, pi_seconds).await;

    let mut md = String::from(
        "| run | polls/s | complete | CPU µs per poll | CPU % of one core | RSS |\n|---|---|---|---|---|---|\n",
    );
    md += &row(&unpaced);
    md += &row(&bare_fast);
    md += &row(&gw_fast);
    md += &ratio_row(&gw_fast, &bare_fast);
    md += &row(&bare_pi);
    md += &row(&gw_pi);
    md += &ratio_row(&gw_pi, &bare_pi);
    md += "\n| gateway run | durable in window / complete polls × 10 | durable / upstream / distinct upstream | wrong pattern values | not stored | drain |\n|---|---|---|---|---|---|\n";
    md += &delivery_row(&format!("{FAST_POLL_MS} ms"), &fast_delivery);
    md += &delivery_row(&format!("{PI_POLL_MS} ms"), &pi_delivery);
    md += &format!(
        "\n{SLAVES} slaves of one `device-sim modbus --tcp` (one connection each), 10 registers a slave in 2 requests; windows of {seconds} s ({pi_seconds} s at {PI_POLL_MS} ms). Bare: tokio-modbus in the bench process, decoding only; its CPU and RSS are the bench process's. Gateway: release binary, MQTT disabled, default upstream (linger 1000 ms, gzip) to a receiver in the bench process; its requests in the windows: {} ({} failed) at {FAST_POLL_MS} ms, {} ({} failed) at {PI_POLL_MS} ms.\n",
        fast_delivery.requests, fast_delivery.errors, pi_delivery.requests, pi_delivery.errors,
    );
    println!("\n{md}");

    let report = json!({
        "slaves": SLAVES, "registers_per_slave": REGISTERS.len(), "requests_per_poll": 2,
        "seconds": seconds, "pi_seconds": pi_seconds,
        "runs": [unpaced.json(), bare_fast.json(), gw_fast.json(), bare_pi.json(), gw_pi.json()],
        "ratios": {
            "fast": {
                "polls_per_s": gw_fast.polls_per_s() / bare_fast.polls_per_s(),
                "cpu_per_poll": gw_fast.cpu_us_per_poll() / bare_fast.cpu_us_per_poll(),
            },
            "pi": {
                "polls_per_s": gw_pi.polls_per_s() / bare_pi.polls_per_s(),
                "cpu_per_poll": gw_pi.cpu_us_per_poll() / bare_pi.cpu_us_per_poll(),
            },
        },
        "delivery": {"fast": fast_delivery.json(), "pi": pi_delivery.json()},
    });
    let target = gateway_bin()
        .parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("target"));
    let _ = std::fs::write(
        target.join("modbus-bench.json"),
        serde_json::to_string_pretty(&report).unwrap(),
    );
    let _ = std::fs::write(target.join("modbus-bench.md"), &md);
    println!("wrote {}/modbus-bench.{{json,md}}", target.display());
    if !fast_delivery.ok() || !pi_delivery.ok() {
        eprintln!("readings lost, duplicated, wrong or unstored");
        std::process::exit(1);
    }
}
