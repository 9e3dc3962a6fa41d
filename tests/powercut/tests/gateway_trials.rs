//! Whole-gateway power-cut trials: the real `gateway` binary with its data dir on the power-cut
//! filesystem, connected in `external` mode to a real mosquitto broker, with an upstream that
//! never answers (a closed port, so the forwarder keeps everything in the buffer).
//!
//! # What is promised, and how it is checked
//! In external mode the gateway's PUBACKs to the broker are its durability promise: its MQTT
//! source keeps a persistent session (`clean_session = false`) and acknowledges a message only
//! after its readings are fsynced in the buffer. Until then the broker keeps the message for the
//! session and redelivers it when the gateway comes back. So if the gateway ever acknowledged a
//! reading that was not durable, mosquitto would have discarded it, a power cut would take it
//! from the buffer, nobody would hold it any more, and the check below fails.
//!
//! One trial:
//! 1. Start the gateway (data dir on the power-cut mount) and wait until it ingests a probe, so
//!    its subscription exists before anything is published.
//! 2. QoS 1 publishers, one per device, flood `sensors/pc-dev-N/temperature` with increasing
//!    values and record which ones mosquitto PUBACKed.
//! 3. At a random moment while the gateway ingests: cut the power, SIGKILL the gateway, stop the
//!    publishers, restore the power (only what was fsynced survives).
//! 4. In one trial out of three, start the gateway again and cut again at a random moment while
//!    it takes the broker's redelivery.
//! 5. Publish an end-of-trial marker reading behind everything else in the session's queue,
//!    restart the gateway on the same data dir with the same client id, let it drain what the
//!    broker redelivers, and stop it with SIGTERM (it must exit 0). Until the marker is in the
//!    buffer, drain again.
//! 6. Open the buffer directly and check, for every device, that every reading the publishers
//!    got a PUBACK for, in this trial or an earlier one, is there (redelivery appends again what
//!    was durable but not yet acknowledged when the power went: duplicates are allowed and
//!    counted); that the database was never moved aside, at any open; and that nothing in its
//!    lanes was undecodable.
//!
//! Trials accumulate on one disk, as on a gateway that loses power again and again.
//!
//! # Order
//! Mosquitto delivers one publisher's messages on a topic in order, so per device the buffer
//! should hold them in publish order: in seq order, each value's last copy after the previous
//! value's last copy. Any place where it does not ("order inversion") fails the trial
//! (`POWERCUT_ASSERT_ORDER=0` only counts them). These trials found that the MQTT source once
//! queued its appends in the order their futures were first polled, which under tokio's
//! cooperative budget is not arrival order (runs of readings stored reversed); the source now
//! queues each append before it awaits it.
//!
//! # Model
//! Only the gateway's disk loses power. Mosquitto runs as a separate process that is not
//! power-cut (a broker on another machine, or on a UPS); it stays up through every trial, so the
//! test measures the gateway's promise, not the broker's persistence.
//!
//! # Knobs
//! `POWERCUT_GATEWAY_TRIALS` (default 10) sets the number of trials, `POWERCUT_SEED` replays a
//! run (cut moments and which trials cut twice), `POWERCUT_TORN=1` turns on torn writes,
//! `POWERCUT_ASSERT_ORDER=0` counts order inversions without failing, `POWERCUT_KEEP=1` keeps the
//! logs.
//! `GATEWAY_BIN` points at a prebuilt binary; otherwise `target/<profile>/gateway` is built.
//! `MOSQUITTO` points at the broker; otherwise `/usr/sbin/mosquitto` or `mosquitto` on `PATH`.
//! Without FUSE or mosquitto the test prints why and does nothing, unless `CI` is set: then it
//! fails.

use std::collections::{BTreeMap, HashSet};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gateway_buffer::{Buffer, BufferOptions, Lane, Record};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use powercut::{Options, PowerCutMount, Rng, env_u64};
use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS};
use serde_json::Value;
use test_peers::{Mosquitto, RefusedPort, free_port};

const TEST: &str = "acknowledged_readings_survive_power_cuts_of_the_whole_gateway";
/// Concurrent publishers, one device each (publish order is defined per device).
const DEVICES: u64 = 4;
/// The gateway's MQTT client id: the same at every start, so the broker keeps its session.
const GATEWAY_CLIENT_ID: &str = "powercut-gw";
const PROBE_TOPIC: &str = "sensors/pc-probe/ready";
const MARKER_DEVICE: &str = "pc-marker";
/// Longest wait for any one step (a start, a drain, a stop) before the trial fails.
const STEP_TIMEOUT: Duration = Duration::from_secs(60);
/// A drain is taken as finished when the gateway's ingest count stood still this long; the
/// marker check afterwards makes the result exact (a drain that stopped early runs again).
const QUIET: Duration = Duration::from_millis(300);
/// Drain runs per trial before giving up on seeing the marker.
const MAX_DRAINS: u32 = 5;

fn gateway_bin() -> PathBuf {
    if let Ok(p) = std::env::var("GATEWAY_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(Path::parent).unwrap().to_path_buf();
    let bin = profile_dir.join("gateway");
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(workspace)
        .args(["build", "--quiet", "-p", "gateway", "--bin", "gateway"])
        .output()
        .unwrap();
    if !out.status.success() {
        let why = String::from_utf8_lossy(&out.stderr);
        if !bin.exists() {
            panic!("cargo build -p gateway --bin gateway failed:\n{why}");
        }
        eprintln!(
            "{TEST}: cargo build -p gateway failed; testing the existing {}:\n{why}",
            bin.display()
        );
    }
    bin
}

// ---------------------------------------------------------------------------------------------
// Mosquitto.

/// A mosquitto on a free port, with persistence in `dir` (not on the power-cut mount). The queue
/// limits matter: past max_queued_messages mosquitto drops QoS 1 messages for a session after
/// PUBACKing the publisher, which would look like a gateway loss.
fn mosquitto(dir: &Path) -> Mosquitto {
    Mosquitto::builder()
        .persistent(60)
        .conf(
            "max_inflight_messages 100\nmax_queued_messages 10000000\nmax_queued_bytes 0\n\
             set_tcp_nodelay true",
        )
        .dir(dir)
        .start()
}

// ---------------------------------------------------------------------------------------------
// The gateway process.

fn gateway_config(data: &Path, mqtt_port: u16, admin_port: u16, upstream_port: u16) -> String {
    format!(
        "gateway_id = \"powercut\"\n\
         data_dir = \"{data}\"\n\
         shutdown_grace_s = 1\n\
         \n[mqtt]\nmode = \"external\"\nurl = \"mqtt://127.0.0.1:{mqtt_port}\"\n\
         client_id = \"{GATEWAY_CLIENT_ID}\"\ntopics = [\"sensors/#\"]\nmax_inflight = 100\n\
         reconnect_max_ms = 500\n\
         \n[buffer]\ncommit_interval_ms = 2\n\
         \n[upstream]\nurl = \"http://127.0.0.1:{upstream_port}/ingest\"\nlinger_ms = 50\n\
         retry_initial_ms = 50\nretry_max_ms = 500\ntimeout_ms = 1000\n\
         \n[admin]\nlisten = \"127.0.0.1:{admin_port}\"\n",
        data = data.display()
    )
}

/// GET `/status` from the admin API with a bare HTTP/1.0 request.
fn status(admin_port: u16) -> Option<Value> {
    let mut s = TcpStream::connect(("127.0.0.1", admin_port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(b"GET /status HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    let json = body.split_once("\r\n\r\n")?.1;
    serde_json::from_str(json).ok()
}

fn mqtt_readings(s: &Value) -> u64 {
    s["ingest"]["readings"]["mqtt"].as_u64().unwrap_or(0)
}

/// A running gateway; SIGKILLed on drop if still running.
#[derive(Debug)]
struct Gateway {
    child: Child,
    admin_port: u16,
    name: String,
}

impl Gateway {
    /// Every upload goes to `upstream_port`, where connections are refused ([`RefusedPort`]):
    /// readings stay buffered.
    fn start(
        bin: &Path,
        work: &Path,
        data: &Path,
        mqtt_port: u16,
        upstream_port: u16,
        name: String,
    ) -> Gateway {
        let admin_port = free_port();
        let cfg = work.join(format!("{name}.toml"));
        std::fs::write(
            &cfg,
            gateway_config(data, mqtt_port, admin_port, upstream_port),
        )
        .unwrap();
        let log = std::fs::File::create(work.join(format!("{name}.log"))).unwrap();
        let child = Command::new(bin)
            .args(["run", "--config"])
            .arg(&cfg)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        Gateway {
            child,
            admin_port,
            name,
        }
    }

    /// Polls `/status` until `done` holds and returns that status; panics if the gateway exits
    /// first or after [`STEP_TIMEOUT`].
    fn wait_until(&mut self, what: &str, mut done: impl FnMut(&Value) -> bool) -> Value {
        let deadline = Instant::now() + STEP_TIMEOUT;
        loop {
            if let Some(exit) = self.child.try_wait().unwrap() {
                panic!(
                    "{}: the gateway exited ({exit}) waiting for {what}",
                    self.name
                );
            }
            if let Some(s) = status(self.admin_port)
                && done(&s)
            {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "{}: timed out after {STEP_TIMEOUT:?} waiting for {what}",
                self.name
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The first `/status` answer: the buffer is open. Checks it opened without moving the
    /// database aside (after a cut this is the first open).
    fn wait_open(&mut self) -> Value {
        let s = self.wait_until("the admin API", |_| true);
        assert_eq!(
            s["buffer"]["moved_aside"].as_u64(),
            Some(0),
            "{}: the gateway moved its database aside at open: {}",
            self.name,
            s["buffer"]
        );
        s
    }

    /// Waits until the ingest count stood still for [`QUIET`] after reaching `at_least`.
    fn wait_quiet(&mut self, at_least: u64) {
        let mut last = (u64::MAX, Instant::now());
        self.wait_until("the broker's redelivery to end", |s| {
            let n = mqtt_readings(s);
            if n != last.0 {
                last = (n, Instant::now());
            }
            n >= at_least && last.1.elapsed() >= QUIET
        });
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        self.child.wait().unwrap();
    }

    /// SIGTERM, as systemd stops it; waits for the exit.
    fn stop(&mut self) -> ExitStatus {
        kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM).unwrap();
        let deadline = Instant::now() + STEP_TIMEOUT;
        loop {
            if let Some(exit) = self.child.try_wait().unwrap() {
                return exit;
            }
            assert!(
                Instant::now() < deadline,
                "{}: still running {STEP_TIMEOUT:?} after SIGTERM",
                self.name
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// MQTT clients.

/// Values the broker PUBACKed, in PUBACK order.
type Acked = Arc<Mutex<Vec<u64>>>;

/// Publish QoS 1 readings `sensors/<device>/temperature` = `first_value`, `first_value + 1`, ...
/// as fast as the in-flight window allows, recording the broker's PUBACKs, until aborted.
async fn publish(port: u16, device: String, first_value: u64, acked: Acked) {
    let mut opts = MqttOptions::new(format!("pub-{device}"), "127.0.0.1", port);
    opts.set_keep_alive(Duration::from_secs(30));
    opts.set_inflight(50);
    let (client, mut eventloop) = AsyncClient::new(opts, 100);
    let topic = format!("sensors/{device}/temperature");
    let producer = tokio::spawn(async move {
        let mut v = first_value;
        while client
            .publish(topic.as_str(), QoS::AtLeastOnce, false, v.to_string())
            .await
            .is_ok()
        {
            v += 1;
        }
    });
    // Outgoing publishes leave in request order: the nth Outgoing::Publish carries value n.
    let mut next = first_value;
    let mut in_flight: BTreeMap<u16, u64> = BTreeMap::new();
    loop {
        match eventloop.poll().await {
            Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                in_flight.insert(pkid, next);
                next += 1;
            }
            Ok(Event::Incoming(Packet::PubAck(ack))) => {
                if let Some(v) = in_flight.remove(&ack.pkid) {
                    acked.lock().unwrap().push(v);
                }
            }
            Ok(_) => {}
            // The broker is not cut and stays up; a broken connection would also break the
            // value <-> pkid bookkeeping, so stop recording (the trial then checks less).
            Err(e) => {
                eprintln!("{TEST}: publisher {device}: {e}");
                break;
            }
        }
    }
    producer.abort();
}

/// Publish a probe reading every 100 ms until aborted.
async fn probe(port: u16) {
    let (client, mut eventloop) =
        AsyncClient::new(MqttOptions::new("probe", "127.0.0.1", port), 10);
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut n = 0u64;
    loop {
        tokio::select! {
            _ = tick.tick() => {
                n += 1;
                let _ = client.try_publish(PROBE_TOPIC, QoS::AtLeastOnce, false, n.to_string());
            }
            event = eventloop.poll() => {
                if event.is_err() {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}

/// Publish the end-of-trial marker reading (value `trial`) and wait for the broker's PUBACK:
/// it is then queued for the gateway's session behind every reading published before.
async fn publish_marker(port: u16, trial: u64) {
    let (client, mut eventloop) =
        AsyncClient::new(MqttOptions::new("marker", "127.0.0.1", port), 10);
    client
        .publish(
            format!("sensors/{MARKER_DEVICE}/trial"),
            QoS::AtLeastOnce,
            false,
            trial.to_string(),
        )
        .await
        .unwrap();
    let acked = async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => return,
                Ok(_) => {}
                Err(e) => panic!("marker publisher: {e}"),
            }
        }
    };
    tokio::time::timeout(STEP_TIMEOUT, acked)
        .await
        .expect("the broker PUBACKs the marker");
    let _ = client.try_disconnect();
    let _ = tokio::time::timeout(Duration::from_secs(1), eventloop.poll()).await;
}

// ---------------------------------------------------------------------------------------------
// The buffer, opened directly once the gateway has stopped.

#[derive(Debug, Default)]
struct Scan {
    /// Device -> (seq, value) of its readings, in seq order.
    values: BTreeMap<String, Vec<(u64, u64)>>,
    moved_aside: u64,
    undecodable: u64,
    /// Batches parked as dead letters: something answered the uploads that must all fail.
    dead_letters: u64,
}

fn scan_buffer(data: &Path) -> Scan {
    let mut o = BufferOptions::new(data.join("buffer"));
    o.consumers = vec!["upstream".into(), "local-alarms".into()];
    let deadline = Instant::now() + Duration::from_secs(10);
    let (buffer, _committer) = loop {
        match Buffer::open(o.clone()) {
            Ok(x) => break x,
            // The lock of a database just dropped in this process: sled's threads finish.
            Err(e) if e.is_retryable() && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10))
            }
            Err(e) => panic!("open the gateway's buffer: {e}"),
        }
    };
    let stats = buffer.stats();
    let mut scan = Scan {
        moved_aside: stats.moved_aside,
        undecodable: stats.readings.undecodable + stats.alarms.undecodable,
        dead_letters: buffer.dead_letters().count(),
        ..Scan::default()
    };
    let mut after = None;
    loop {
        let got = buffer
            .read("upstream", Lane::Readings, after, 5000, usize::MAX)
            .unwrap();
        let Some(last) = got.last() else { break };
        after = Some(last.seq);
        for s in &got {
            if let Record::Reading(r) = &s.record {
                scan.values
                    .entry(r.device.clone())
                    .or_default()
                    .push((s.seq, r.value as u64));
            }
        }
    }
    scan
}

/// Databases moved aside under `data` (`buffer.sled.corrupt-*`), by name.
fn corrupt_copies(data: &Path) -> Vec<String> {
    std::fs::read_dir(data.join("buffer"))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.contains(".corrupt-"))
                .collect()
        })
        .unwrap_or_default()
}

/// What the check found for one device.
#[derive(Debug, Default)]
struct DeviceCheck {
    missing: Vec<u64>,
    duplicates: u64,
    /// Neighbouring last copies whose values go backwards.
    inversions: u64,
    /// The first such pair, as (seq, value).
    first_inversion: Option<((u64, u64), (u64, u64))>,
}

fn check_device(acked: &[u64], stored: &[(u64, u64)]) -> DeviceCheck {
    let present: HashSet<u64> = stored.iter().map(|s| s.1).collect();
    let mut c = DeviceCheck {
        missing: acked
            .iter()
            .copied()
            .filter(|v| !present.contains(v))
            .collect(),
        duplicates: (stored.len() - present.len()) as u64,
        inversions: 0,
        first_inversion: None,
    };
    // Last copies, in seq order: a redelivery appends again, in publish order, everything from
    // the first reading the gateway had not acknowledged.
    let mut seen = HashSet::new();
    let mut last_copies: Vec<(u64, u64)> = stored
        .iter()
        .rev()
        .filter(|s| seen.insert(s.1))
        .copied()
        .collect();
    last_copies.reverse();
    for w in last_copies.windows(2) {
        if w[0].1 > w[1].1 {
            c.inversions += 1;
            c.first_inversion.get_or_insert((w[0], w[1]));
        }
    }
    c
}

/// Keeps the work directory (logs, configs, the disk's backing files) when the test fails, or
/// always with `POWERCUT_KEEP` set.
struct KeepOnPanic(Option<tempfile::TempDir>);

impl Drop for KeepOnPanic {
    fn drop(&mut self) {
        if (std::thread::panicking() || std::env::var_os("POWERCUT_KEEP").is_some())
            && let Some(dir) = self.0.take()
        {
            eprintln!("{TEST}: logs and disk kept in {}", dir.keep().display());
        }
    }
}

#[test]
fn acknowledged_readings_survive_power_cuts_of_the_whole_gateway() {
    if !powercut::require_fuse(TEST) {
        return;
    }
    if !Mosquitto::available() {
        test_peers::missing(
            TEST,
            "mosquitto is not installed",
            "apt-get install mosquitto",
        );
        return;
    }
    let trials = env_u64("POWERCUT_GATEWAY_TRIALS").unwrap_or(10);
    let seed = powercut::seed();
    let torn_writes = std::env::var("POWERCUT_TORN").as_deref() == Ok("1");
    let assert_order = std::env::var("POWERCUT_ASSERT_ORDER").as_deref() != Ok("0");
    let bin = gateway_bin();

    // Drop order (reverse of declaration): gateways, publishers' runtime, broker, disk, then
    // the directory, kept if the test failed.
    let dir = KeepOnPanic(Some(tempfile::tempdir().unwrap()));
    let work = dir.0.as_ref().unwrap().path().to_path_buf();
    let mnt = work.join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let disk_options = Options {
        torn_writes,
        seed,
        journaled_namespace: false,
    };
    let mut disk = PowerCutMount::mount(&work.join("backing"), &mnt, disk_options).unwrap();
    // An installed gateway: its data directory exists and is durable.
    let data = mnt.join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::File::open(&mnt).unwrap().sync_all().unwrap();
    let broker = mosquitto(&work.join("broker"));
    let port = broker.port();
    // The cloud is down for the whole test. Held bound (not merely a port that was free a
    // moment ago), so no gateway's admin API can get this port and answer the uploads.
    let cloud_down = RefusedPort::bind();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    eprintln!(
        "{TEST}: {trials} trials, POWERCUT_SEED={seed}, disk {disk_options:?}, gateway {}, \
         mosquitto on port {port}, work dir {}",
        bin.display(),
        work.display()
    );

    let mut rng = Rng(seed);
    let devices: Vec<String> = (0..DEVICES).map(|d| format!("pc-dev-{d}")).collect();
    // Every value the broker PUBACKed to the publishers, per device, over all trials.
    let mut acked_all: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    let (mut cuts, mut drains, mut stored_total) = (0u64, 0u64, 0u64);
    let (mut duplicates, mut inversions) = (0u64, 0u64);
    let started = Instant::now();
    for trial in 1..=trials {
        let trial_started = Instant::now();
        let fail = |what: String| -> ! {
            panic!("{TEST}: trial {trial} of {trials} (POWERCUT_SEED={seed}): {what}")
        };

        // 1. The gateway, subscribed.
        let mut gw = Gateway::start(
            &bin,
            &work,
            &data,
            port,
            cloud_down.port(),
            format!("gateway-{trial}-load"),
        );
        gw.wait_open();
        let prober = rt.spawn(probe(port));
        gw.wait_until("a probe reading (the subscription exists)", |s| {
            mqtt_readings(s) > 0
        });
        prober.abort();

        // 2. Load.
        let before = mqtt_readings(&gw.wait_until("status", |_| true));
        let acked: Vec<Acked> = devices.iter().map(|_| Acked::default()).collect();
        let publishers: Vec<_> = devices
            .iter()
            .zip(&acked)
            .map(|(d, a)| rt.spawn(publish(port, d.clone(), trial << 32, a.clone())))
            .collect();
        gw.wait_until("readings from the publishers", |s| {
            mqtt_readings(s) > before + 100
        });

        // 3. The cut, at a random moment within the next 500 ms of load (the randomness is the
        // point, not a wait for some state).
        std::thread::sleep(Duration::from_millis(rng.below(500)));
        disk.cut_power();
        cuts += 1;
        gw.kill();
        for p in &publishers {
            p.abort();
        }
        rt.block_on(async {
            for p in publishers {
                let _ = p.await;
            }
        });
        let mut acked_now = 0;
        for (d, a) in devices.iter().zip(&acked) {
            let a = a.lock().unwrap();
            acked_now += a.len();
            acked_all.entry(d.clone()).or_default().extend(a.iter());
        }
        disk.restore_power().unwrap();

        // 4. Sometimes a second cut, while the broker redelivers.
        let mut twice = false;
        if rng.below(3) == 0 {
            twice = true;
            let mut gw = Gateway::start(
                &bin,
                &work,
                &data,
                port,
                cloud_down.port(),
                format!("gateway-{trial}-redo"),
            );
            gw.wait_open();
            // Again a random moment, not a wait for state.
            std::thread::sleep(Duration::from_millis(rng.below(300)));
            disk.cut_power();
            cuts += 1;
            gw.kill();
            disk.restore_power().unwrap();
        }

        // 5. Drain until the marker is in the buffer.
        rt.block_on(publish_marker(port, trial));
        let mut scan;
        let mut drain = 0;
        loop {
            drain += 1;
            drains += 1;
            if drain > MAX_DRAINS {
                fail(format!(
                    "the marker never reached the buffer in {MAX_DRAINS} drains"
                ));
            }
            let mut gw = Gateway::start(
                &bin,
                &work,
                &data,
                port,
                cloud_down.port(),
                format!("gateway-{trial}-drain-{drain}"),
            );
            gw.wait_open();
            gw.wait_quiet(1);
            let exit = gw.stop();
            if !exit.success() {
                fail(format!("{}: exited with {exit} after SIGTERM", gw.name));
            }
            drop(gw);
            scan = scan_buffer(&data);
            let marker_seen = scan
                .values
                .get(MARKER_DEVICE)
                .is_some_and(|v| v.iter().any(|s| s.1 == trial));
            if marker_seen {
                break;
            }
        }

        // 6. The check.
        if scan.dead_letters > 0 {
            fail(format!(
                "{} batches parked as dead letters: something answered at the upstream port {} \
                 (see the drain logs); the check of the live queue would report them missing",
                scan.dead_letters,
                cloud_down.port()
            ));
        }
        let corrupt = corrupt_copies(&data);
        if scan.moved_aside > 0 || !corrupt.is_empty() || scan.undecodable > 0 {
            fail(format!(
                "the buffer did not open cleanly: moved aside {}, copies {corrupt:?}, \
                 undecodable records {}",
                scan.moved_aside, scan.undecodable
            ));
        }
        let (mut trial_dups, mut trial_inversions) = (0, 0);
        let mut problems = Vec::new();
        for (device, acked) in &acked_all {
            let stored = scan.values.get(device).map(Vec::as_slice).unwrap_or(&[]);
            let c = check_device(acked, stored);
            if !c.missing.is_empty() {
                problems.push(format!(
                    "{device}: {} of {} PUBACKed readings missing from the buffer (first {:#x?}); \
                     {} stored; this trial: {acked_now} PUBACKed, cut twice: {twice}",
                    c.missing.len(),
                    acked.len(),
                    &c.missing[..c.missing.len().min(10)],
                    stored.len(),
                ));
            }
            if let Some((a, b)) = c.first_inversion
                && assert_order
            {
                problems.push(format!(
                    "{device}: out of publish order in the buffer: the last copy of {:#x} (seq \
                     {}) comes after the last copy of {:#x} (seq {})",
                    b.1, b.0, a.1, a.0
                ));
            }
            trial_dups += c.duplicates;
            trial_inversions += c.inversions;
        }
        if !problems.is_empty() || std::env::var_os("POWERCUT_KEEP").is_some() {
            // Every reading in the buffer, for the post-mortem.
            let dump = work.join("buffer-dump.txt");
            let mut rows: Vec<(u64, &str, u64)> = scan
                .values
                .iter()
                .flat_map(|(d, v)| v.iter().map(move |s| (s.0, d.as_str(), s.1)))
                .collect();
            rows.sort_unstable();
            let text: String = rows
                .iter()
                .map(|(seq, d, v)| format!("{seq} {d} {v:#x}\n"))
                .collect();
            std::fs::write(&dump, text).unwrap();
        }
        if !problems.is_empty() {
            let dump = work.join("buffer-dump.txt");
            fail(format!(
                "{}; disk {:?}; every reading as `seq device value` in {}",
                problems.join("; "),
                disk.stats(),
                dump.display()
            ));
        }
        duplicates = trial_dups;
        inversions = trial_inversions;
        stored_total = devices
            .iter()
            .map(|d| scan.values.get(d).map_or(0, Vec::len) as u64)
            .sum();
        eprintln!(
            "{TEST}: trial {trial}: {acked_now} PUBACKed, cut {}, {drain} drain(s), buffer holds \
             {stored_total} readings of the publishers ({trial_dups} duplicates, \
             {trial_inversions} order inversions), {:.1?}",
            if twice { "twice" } else { "once" },
            trial_started.elapsed()
        );
    }
    let checked: usize = acked_all.values().map(Vec::len).sum();
    eprintln!(
        "{TEST}: {trials} trials, {cuts} power cuts, {drains} drains in {:.1?}: {checked} \
         PUBACKed readings checked, 0 lost; buffer holds {stored_total} readings of the \
         publishers, {duplicates} duplicates, {inversions} order inversions{}; disk {:?}",
        started.elapsed(),
        if assert_order {
            " (asserted: none)"
        } else {
            " (counted, not asserted)"
        },
        disk.stats()
    );
    assert!(checked > 0, "the publishers got no PUBACK");
}
