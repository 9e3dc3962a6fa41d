//! Disk faults: the readings quota reached with each `buffer.when_full` policy while the cloud is
//! down, and buffer files corrupted between runs.
//!
//! - `drop_oldest`: the gateway keeps acking; what it evicts is counted exactly (every reading
//!   device-sim sent is either delivered or counted dropped, never both, never neither), the
//!   evicted readings are the oldest of each device, and alarm events are never evicted.
//! - `block`: the gateway stops acking once the quota is reached (mosquitto holds the rest), drops
//!   nothing, and delivers every reading once the cloud is back.
//! - corruption: a database sled cannot open is moved aside, counted and kept with every reading
//!   that was still waiting in it (read back from the kept copy); the gateway starts, new readings
//!   flow, and their seqs do not repeat ones the cloud already has.

use device_sim::{Broker, FleetConfig, MqttForm, Scenario, run_fleet};
use gateway_buffer::{Buffer, BufferOptions, Lane, Record};
use gateway_tests::fleet::SentLog;
use gateway_tests::workload::{self, BASE_TS_MS, check_seq_stable};
use gateway_tests::{
    GatewayProcess, GatewaySpec, Mosquitto, MqttSetup, Upstream, require_mosquitto, wait_until,
};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A small readings quota: a few hundred device-sim readings (blocks are deflated, ~10-20 bytes
/// a reading).
const QUOTA: &str = "max_bytes = 4096\n";

const OVERHEAT: &str = "[[alarm]]\nname = \"overheat\"\nmetric = \"temperature\"\nabove = 35.0\n\
                        clear_below = 33.0\nfor_s = 0\nseverity = \"critical\"\n";

fn fleet(
    port: u16,
    test: &str,
    first_device: u32,
    devices: u32,
    rate_hz: f64,
    ticks: u64,
) -> FleetConfig {
    let broker: Broker = format!("127.0.0.1:{port}").parse().unwrap();
    let mut cfg = FleetConfig::new(broker);
    cfg.first_device = first_device;
    cfg.devices = devices;
    cfg.rate_hz = rate_hz;
    cfg.count = Some(ticks);
    cfg.form = MqttForm::Json;
    cfg.seed = u64::from(first_device);
    cfg.start_ts_ms = Some(BASE_TS_MS);
    cfg.record_sent = true;
    cfg.client_id_prefix = format!("{test}-{}-", std::process::id());
    cfg
}

async fn send(cfg: FleetConfig) -> SentLog {
    let log = SentLog::from_report(run_fleet(cfg, std::future::pending()).await.unwrap());
    log.check_all_acked().unwrap();
    log
}

fn delivered(up: &Upstream) -> Vec<workload::UpReading> {
    workload::parse_readings(&up.delivered_records("readings"))
}

/// Starts a gateway on `broker` sending to `up` with `buffer_extra`, proves the MQTT path and
/// waits until the probe reached the cloud.
async fn start_gateway(
    broker: &Mosquitto,
    up: &Upstream,
    buffer_extra: &str,
    tables: &str,
) -> GatewayProcess {
    let mut spec = GatewaySpec::new(
        MqttSetup::External {
            port: broker.port(),
        },
        &up.url(),
    );
    spec.buffer_extra = buffer_extra.to_owned();
    spec.tables = tables.to_owned();
    let mut gw = GatewayProcess::start(&spec);
    gw.wait_ready().await;
    gw.wait_mqtt_ingest(broker.port()).await;
    wait_until(
        "the probe reading upstream",
        Duration::from_secs(60),
        || {
            let n = up.delivered_count("readings");
            async move { (n > 0).then_some(()) }
        },
    )
    .await;
    gw
}

fn lane<'a>(s: &'a Value, lane: &str) -> &'a Value {
    &s["buffer"]["lanes"][lane]
}

fn ingested(s: &Value) -> u64 {
    s["ingest"]["readings"]["mqtt"].as_u64().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_oldest_at_the_quota_counts_every_evicted_reading_and_keeps_alarms() {
    let test = "fault-disk-drop-oldest";
    let Some(broker) = require_mosquitto(test) else {
        return;
    };
    let started = Instant::now();
    let mut up = Upstream::start().await;
    let buffer = format!("{QUOTA}when_full = \"drop_oldest\"\n");
    let mut gw = start_gateway(&broker, &up, &buffer, OVERHEAT).await;
    up.go_down().await;
    let before = ingested(&gw.status().await);

    // Two devices overheat for a while in the middle: a raise and a clear each.
    let mut cfg = fleet(broker.port(), test, 1, 4, 50.0, 150);
    cfg.scenarios = vec![
        "spike:at=1s,for=1s,devices=1..2"
            .parse::<Scenario>()
            .unwrap(),
    ];
    let log = send(cfg).await;
    let sent = log.len() as u64;
    let full = gw
        .wait_status("every reading ingested", Duration::from_secs(60), |s| {
            (ingested(s) >= before + sent).then(|| s.clone())
        })
        .await;
    // Records evicted while the forwarder held them (in a batch retrying, or waiting behind an
    // alarm batch) are counted when it sheds them, before their next attempt: evicted so far is
    // both.
    let dropped = lane(&full, "readings")["dropped"].as_u64().unwrap()
        + lane(&full, "readings")["evicted_in_flight"]
            .as_u64()
            .unwrap();
    assert!(
        dropped > 0,
        "{sent} readings did not fill a 4 KiB quota: {full:#}"
    );
    assert_eq!(lane(&full, "alarms")["dropped"], 0, "{full:#}");
    assert_eq!(
        full["ingest"]["blocked_full"], 0,
        "drop_oldest never blocks"
    );

    up.come_up().await;
    gw.wait_status("both lanes drained", Duration::from_secs(60), |s| {
        (lane(s, "readings")["records"] == 0
            && lane(s, "alarms")["records"] == 0
            && lane(s, "readings")["evicted_in_flight"] == 0)
            .then_some(())
    })
    .await;
    gw.barrier(broker.port(), &up).await;
    let status = gw.status().await;
    // The counter only grows; nothing was evicted after the cloud came back.
    assert_eq!(lane(&status, "readings")["dropped"].as_u64(), Some(dropped));

    let d = log.check(&delivered(&up));
    assert!(
        d.unexpected.is_empty() && d.out_of_order.is_empty(),
        "{}",
        d.describe()
    );
    // The lane also holds the readiness and barrier probes, and a late one can be evicted too:
    // the lane's counter is compared with everything that went into the lane, by identity: the
    // device-sim readings that never arrived, plus the probes that never did.
    let probes_appended = lane(&status, "readings")["appended"]
        .as_u64()
        .unwrap()
        .checked_sub(sent)
        .expect("every device-sim reading was appended");
    let probe_seqs: std::collections::BTreeSet<u64> = up
        .delivered_records("readings")
        .iter()
        .filter(|r| r["device"] == workload::PROBE_DEVICE)
        .filter_map(|r| r["seq"].as_u64())
        .collect();
    let probes_dropped = probes_appended
        .checked_sub(probe_seqs.len() as u64)
        .expect("no more probes delivered than appended");
    // Alarms survived the flood: a raise and a clear for each overheating device.
    let alarms = up.delivered_records("alarms");
    for device in ["dev-0001", "dev-0002"] {
        let mut states: Vec<&str> = alarms
            .iter()
            .filter(|r| r["device"] == device && r["alarm"] == "overheat")
            .map(|r| r["state"].as_str().unwrap())
            .collect();
        states.dedup();
        assert_eq!(states, ["raised", "cleared"], "{device}: {alarms:?}");
    }
    // Per device in send order, the kept readings should be a suffix: the evicted ones are the
    // oldest. Readings delivered *before* an evicted one of the same device were evicted too,
    // yet reached the cloud.
    let got: std::collections::HashSet<(String, String, i64)> = delivered(&up)
        .into_iter()
        .map(|r| (r.device, r.metric, r.ts))
        .collect();
    let mut per_device: BTreeMap<&str, Vec<bool>> = BTreeMap::new();
    for r in &log.records {
        let here = got.contains(&(r.device.clone(), r.metric.clone(), r.ts.unwrap()));
        per_device.entry(r.device.as_str()).or_default().push(here);
    }
    let evicted_yet_delivered: usize = per_device
        .values()
        .map(|arrived| {
            let last_missing = arrived.iter().rposition(|a| !a);
            last_missing.map_or(0, |i| arrived[..i].iter().filter(|a| **a).count())
        })
        .sum();
    assert_eq!(
        d.missing.len() as u64 + probes_dropped,
        dropped,
        "the dropped counter must equal the readings that never arrived ({} sent, {} arrived, \
         {probes_dropped} of {probes_appended} probes evicted); {evicted_yet_delivered} readings \
         older than an evicted one of the same device arrived anyway: {}",
        d.sent,
        d.arrived,
        d.describe()
    );
    assert_eq!(
        evicted_yet_delivered, 0,
        "per device, only the oldest readings are evicted"
    );
    check_seq_stable(&up.batches()).unwrap();
    eprintln!(
        "{test}: {sent} readings sent while the cloud was down, {dropped} evicted (counted), {} \
         delivered, {} alarm events kept; {:.1} s",
        d.arrived,
        alarms.len(),
        started.elapsed().as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn block_at_the_quota_stops_acking_loses_nothing_and_resumes_when_the_cloud_is_back() {
    let test = "fault-disk-block";
    let Some(broker) = require_mosquitto(test) else {
        return;
    };
    let started = Instant::now();
    let mut up = Upstream::start().await;
    let buffer = format!("{QUOTA}when_full = \"block\"\n");
    let mut gw = start_gateway(&broker, &up, &buffer, "").await;
    up.go_down().await;
    let before = ingested(&gw.status().await);

    // mosquitto acknowledges device-sim; the gateway behind it stops taking messages.
    let log = send(fleet(broker.port(), test, 1, 4, 50.0, 150)).await;
    let sent = log.len() as u64;
    let blocked = gw
        .wait_status(
            "ingest blocked by the quota",
            Duration::from_secs(60),
            |s| (s["ingest"]["blocked_full"].as_u64()? > 0).then(|| s.clone()),
        )
        .await;
    // Stopped: nothing more is taken while the cloud stays down.
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let a = ingested(&gw.status().await);
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let still = gw.status().await;
    assert_eq!(ingested(&still), a, "ingest went on at a full quota");
    assert!(
        a < before + sent,
        "the gateway took all {sent} readings into a 4 KiB quota: {still:#}"
    );
    assert_eq!(lane(&still, "readings")["dropped"], 0, "{still:#}");

    up.come_up().await;
    let d = {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let d = log.check(&delivered(&up));
            if d.missing.is_empty() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "not every reading arrived after the cloud came back: {}\n{}",
                d.describe(),
                gw.stderr_tail()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        gw.barrier(broker.port(), &up).await;
        log.check(&delivered(&up))
    };
    assert!(
        d.missing.is_empty() && d.unexpected.is_empty(),
        "{}",
        d.describe()
    );
    let status = gw.status().await;
    assert_eq!(lane(&status, "readings")["dropped"], 0, "{status:#}");
    assert!(
        d.out_of_order.is_empty(),
        "a message refused at the full quota was stored after later messages of the same \
         device: {}",
        d.describe()
    );
    check_seq_stable(&up.batches()).unwrap();
    eprintln!(
        "{test}: {sent} readings acked by mosquitto; the gateway took {} before blocking \
         (blocked_full {}), then all {} arrived, {} duplicates, 0 dropped; {:.1} s",
        a - before,
        blocked["ingest"]["blocked_full"],
        d.arrived,
        d.duplicates,
        started.elapsed().as_secs_f64()
    );
}

/// How the buffer's files are damaged while the gateway is stopped.
#[derive(Debug, Clone, Copy)]
enum Damage {
    /// sled's `conf` garbled: sled refuses the database.
    GarbledConf,
    /// The log file `db` cut to half its length.
    TruncatedLog,
}

fn sled_dir(gw: &GatewayProcess) -> PathBuf {
    gw.dir()
        .join("data")
        .join("buffer")
        .join(gateway_buffer::DB_DIR_NAME)
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

/// The readings a database still holds for the forwarder, opened with the buffer library.
async fn waiting_readings(db_copy: &Path) -> Vec<(u64, String, String, i64)> {
    let mut opts = BufferOptions::new(db_copy);
    opts.consumers = vec![gateway_forwarder::CONSUMER.to_owned()];
    let (buffer, committer) = Buffer::open(opts).expect("open the kept database");
    let stop = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(committer.run(stop.clone()));
    let mut out = Vec::new();
    let mut after = None;
    loop {
        let page = buffer
            .read(
                gateway_forwarder::CONSUMER,
                Lane::Readings,
                after,
                1000,
                1 << 20,
            )
            .unwrap();
        let Some(last) = page.last() else { break };
        after = Some(last.seq);
        for s in page {
            if let Record::Reading(r) = s.record {
                out.push((s.seq, r.device, r.metric, r.ts_ms));
            }
        }
    }
    assert_eq!(buffer.stats().moved_aside, 0, "the kept copy opens as is");
    stop.cancel();
    let _ = task.await;
    out
}

async fn corrupted_between_runs(damage: Damage, test: &str) {
    let Some(broker) = require_mosquitto(test) else {
        return;
    };
    let started = Instant::now();
    let mut up = Upstream::start().await;
    let mut gw = start_gateway(&broker, &up, "", "").await;

    // Run 1: delivered. Then readings that wait in the buffer while the cloud is down.
    let delivered_log = send(fleet(broker.port(), test, 1, 2, 50.0, 40)).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !delivered_log.check(&delivered(&up)).missing.is_empty() {
        assert!(Instant::now() < deadline, "run 1 not delivered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let max_seq_before = delivered(&up).iter().map(|r| r.seq).max().unwrap();
    up.go_down().await;
    let before = ingested(&gw.status().await);
    let waiting_log = send(fleet(broker.port(), test, 11, 2, 50.0, 40)).await;
    gw.wait_status("run 2 stored", Duration::from_secs(60), |s| {
        (ingested(s) >= before + waiting_log.len() as u64).then_some(())
    })
    .await;
    // Let the forwarder's cursor of run 1 reach the disk (flushed lazily, ~100 ms).
    tokio::time::sleep(Duration::from_millis(500)).await;
    gw.sigkill();

    let db = sled_dir(&gw);
    let conf = std::fs::read(db.join("conf")).unwrap();
    let db_len = std::fs::metadata(db.join("db")).unwrap().len();
    match damage {
        Damage::GarbledConf => {
            std::fs::write(db.join("conf"), b"\xff\x00 not a sled config \x13\x37").unwrap()
        }
        Damage::TruncatedLog => {
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(db.join("db"))
                .unwrap();
            f.set_len(db_len / 2).unwrap();
        }
    }

    up.come_up().await;
    gw.spawn();
    let status = gw.wait_ready().await;
    let moved_aside = status["buffer"]["moved_aside"].as_u64().unwrap();
    let aside: Vec<PathBuf> = std::fs::read_dir(gw.dir().join("data").join("buffer"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("buffer.sled.corrupt-")
        })
        .collect();
    assert_eq!(aside.len() as u64, moved_aside, "{status:#}");

    // Run 3: new readings flow.
    let new_log = send(fleet(broker.port(), test, 21, 2, 50.0, 40)).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !new_log.check(&delivered(&up)).missing.is_empty() {
        assert!(
            Instant::now() < deadline,
            "{test}: new readings did not flow after the damage: {}\n{}",
            new_log.check(&delivered(&up)).describe(),
            gw.stderr_tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    gw.barrier(broker.port(), &up).await;
    let got = delivered(&up);
    let d_new = new_log.check(&got);
    assert!(d_new.is_clean(), "{}", d_new.describe());

    // Run 2: each reading was delivered after the restart, or is kept in a moved-aside
    // database, or is counted lost. Bytes truncated away cannot be recovered by any
    // implementation, so a truncated log may lose readings; what must never happen is losing
    // them silently. The buffer finds at open how many seqs its database no longer holds
    // (`missing_at_open`, logged at error) and never reuses them: every reading that vanished
    // had one of those seqs, so there are at most that many, and the count is not 0 when one
    // did. A database moved aside loses nothing (it is kept) and reports 0, so for it nothing
    // may vanish.
    let missing = status["buffer"]["missing_at_open"].as_u64().unwrap();
    let mut kept = Vec::new();
    for dir in &aside {
        let tmp = tempfile::tempdir().unwrap();
        let copy = tmp.path().join(gateway_buffer::DB_DIR_NAME);
        copy_dir(dir, &copy);
        if matches!(damage, Damage::GarbledConf) {
            std::fs::write(copy.join("conf"), &conf).unwrap();
        }
        kept.extend(waiting_readings(tmp.path()).await);
    }
    let kept_keys: std::collections::HashSet<(String, String, i64)> = kept
        .iter()
        .map(|(_, d, m, ts)| (d.clone(), m.clone(), *ts))
        .collect();
    let d_waiting = waiting_log.check(&got);
    let got_keys: std::collections::HashSet<(String, String, i64)> = got
        .iter()
        .map(|r| (r.device.clone(), r.metric.clone(), r.ts))
        .collect();
    let vanished: Vec<String> = waiting_log
        .records
        .iter()
        .map(|r| (r.device.clone(), r.metric.clone(), r.ts.unwrap()))
        .filter(|k| !kept_keys.contains(k) && !got_keys.contains(k))
        .map(|(d, m, ts)| format!("{d}/{m} ts {ts}"))
        .collect();
    assert!(
        vanished.len() as u64 <= missing && (vanished.is_empty() || missing > 0),
        "{test} ({damage:?}): {} of {} readings stored before the damage were neither delivered \
         nor kept in a moved-aside database (moved_aside = {moved_aside}), but only {missing} \
         seqs were reported missing, e.g. {:?}",
        vanished.len(),
        waiting_log.len(),
        &vanished[..vanished.len().min(5)]
    );

    // The cloud deduplicates on (gateway_id, seq): seqs after the restart must not repeat ones it
    // already has, or it would discard the new readings as duplicates.
    // (Run 1's probe reading, device "probe", sorts after "dev-0021" but is not new.)
    let new_seqs: Vec<u64> = got
        .iter()
        .filter(|r| r.device.as_str() >= "dev-0021" && r.device != workload::PROBE_DEVICE)
        .map(|r| r.seq)
        .collect();
    let reused = new_seqs.iter().filter(|s| **s <= max_seq_before).count();
    assert_eq!(
        reused,
        0,
        "{test} ({damage:?}): {reused} of {} readings stored after the restart reuse seqs \
         (lowest {:?}) the cloud already had from before (up to {max_seq_before}); a cloud that \
         deduplicates on (gateway_id, seq) drops them",
        new_seqs.len(),
        new_seqs.iter().min()
    );
    eprintln!(
        "{test} ({damage:?}): moved_aside {moved_aside}; of {} readings waiting, {} kept aside, \
         {} delivered and {} vanished ({missing} seqs reported missing); {} new readings \
         delivered; {:.1} s",
        waiting_log.len(),
        kept.len(),
        d_waiting.arrived,
        vanished.len(),
        new_log.len(),
        started.elapsed().as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_with_a_garbled_conf_is_moved_aside_kept_and_new_readings_flow() {
    corrupted_between_runs(Damage::GarbledConf, "fault-disk-garbled").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_log_loses_no_stored_reading_silently_and_new_readings_flow() {
    corrupted_between_runs(Damage::TruncatedLog, "fault-disk-truncated").await;
}
