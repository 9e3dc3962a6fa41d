//! The fleet against a real mosquitto, checked by a real subscriber.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Decoded, decode_mqtt, mosquitto};
use device_sim::mqtt::FleetError;
use device_sim::{Broker, FleetConfig, MqttForm, Scenario, run_fleet};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use test_peers::Mosquitto;

const START: i64 = 1_764_081_600_000;

type Received = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

/// A QoS 1 subscriber on `sensors/#`; returns once the subscription is acknowledged.
async fn subscribe(port: u16) -> (Received, tokio::task::JoinHandle<()>) {
    let mut opts = MqttOptions::new("test-subscriber", "127.0.0.1", port);
    opts.set_keep_alive(Duration::from_secs(30));
    opts.set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut ev) = AsyncClient::new(opts, 1000);
    client
        .subscribe("sensors/#", QoS::AtLeastOnce)
        .await
        .unwrap();
    let got: Received = Arc::default();
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let sink = Arc::clone(&got);
    let task = tokio::spawn(async move {
        let _client = client;
        let mut ready = Some(ready_tx);
        loop {
            match ev.poll().await {
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    if let Some(tx) = ready.take() {
                        let _ = tx.send(());
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    sink.lock()
                        .unwrap()
                        .push((p.topic.clone(), p.payload.to_vec()));
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    });
    ready_rx.await.unwrap();
    (got, task)
}

/// The topic of [`wait_for`]'s barrier message.
const BARRIER_TOPIC: &str = "sensors/zz-barrier/marker";

/// Waits until `n` messages arrived (or 10 s), then publishes a barrier message and waits for it
/// too: mosquitto delivers to one subscriber in the order it took the messages, and every fleet
/// message was acknowledged before the barrier was published, so an extra copy would arrive
/// before it. Returns what arrived before the barrier.
async fn wait_for(got: &Received, n: usize, port: u16) -> Vec<(String, Vec<u8>)> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while got.lock().unwrap().len() < n && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut opts = MqttOptions::new("test-barrier", "127.0.0.1", port);
    opts.set_keep_alive(Duration::from_secs(30));
    let (client, mut ev) = AsyncClient::new(opts, 10);
    client
        .publish(BARRIER_TOPIC, QoS::AtLeastOnce, false, "barrier")
        .await
        .unwrap();
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ev.poll()).await {
            Ok(Ok(Event::Incoming(Packet::PubAck(_)))) => break,
            Ok(Ok(_)) => {}
            other => panic!("barrier publish: {other:?}"),
        }
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let msgs = got.lock().unwrap().clone();
        if let Some(at) = msgs.iter().position(|(t, _)| t == BARRIER_TOPIC) {
            return msgs[..at].to_vec();
        }
        assert!(
            Instant::now() < deadline,
            "the barrier message never arrived"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn config(m: &Mosquitto) -> FleetConfig {
    let mut cfg = FleetConfig::new(m.url().parse::<Broker>().unwrap());
    cfg.start_ts_ms = Some(START);
    cfg.record_sent = true;
    cfg
}

fn decoded_multiset(msgs: &[(String, Vec<u8>)]) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for (topic, payload) in msgs {
        for d in decode_mqtt(topic, payload).unwrap_or_else(|| {
            panic!(
                "undecodable: {topic} {:?}",
                String::from_utf8_lossy(payload)
            )
        }) {
            *out.entry(key(&d)).or_default() += 1;
        }
    }
    out
}

fn key(d: &Decoded) -> String {
    format!("{}|{}|{}|{:?}", d.0, d.1, d.2, d.3)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_form_reaches_a_real_subscriber_and_matches_the_summary_and_records() {
    let Some(m) = mosquitto() else { return };
    let (got, sub) = subscribe(m.port()).await;
    let mut cfg = config(&m);
    cfg.devices = 5;
    cfg.rate_hz = 200.0;
    cfg.count = Some(40);
    cfg.form = MqttForm::Mix;
    cfg.seed = 3;
    let report = run_fleet(cfg, std::future::pending()).await.unwrap();
    let s = &report.summary;
    assert_eq!(s.totals.readings_sent, 5 * 40 * 3);
    assert_eq!(s.totals.readings_acked, s.totals.readings_sent);
    assert_eq!(s.totals.messages_acked, s.totals.messages_sent);
    assert!(s.complete);
    assert_eq!(s.devices.len(), 5);
    for (dev, metrics) in &s.devices {
        for (metric, c) in metrics {
            assert_eq!((c.sent, c.written, c.acked), (40, 40, 40), "{dev} {metric}");
        }
    }

    let msgs = wait_for(&got, s.totals.messages_sent as usize, m.port()).await;
    sub.abort();
    assert_eq!(msgs.len() as u64, s.totals.messages_sent);
    let received = decoded_multiset(&msgs);
    let mut expected = BTreeMap::new();
    for r in &report.records {
        let d: Decoded = (r.device.clone(), r.metric.clone(), r.value, r.ts);
        *expected.entry(key(&d)).or_insert(0usize) += 1;
    }
    assert_eq!(report.records.len(), 600);
    assert_eq!(received, expected);
    // Every concrete form was used, and only the bare number lacks a timestamp.
    let forms: BTreeSet<&str> = report.records.iter().map(|r| r.form.as_str()).collect();
    assert_eq!(forms, BTreeSet::from(["json", "multi", "number", "senml"]));
    for r in &report.records {
        assert_eq!(r.ts.is_none(), r.form == "number");
    }
    // (device, metric, ts) is unique.
    let ids: BTreeSet<_> = report
        .records
        .iter()
        .filter_map(|r| r.ts.map(|t| (r.device.clone(), r.metric.clone(), t)))
        .collect();
    assert_eq!(
        ids.len(),
        report.records.iter().filter(|r| r.ts.is_some()).count()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pooled_load_mode_acknowledges_every_reading_exactly() {
    let Some(m) = mosquitto() else { return };
    let (got, sub) = subscribe(m.port()).await;
    let mut cfg = config(&m);
    cfg.devices = 20;
    cfg.connections = Some(3);
    cfg.load = true;
    cfg.count = Some(150);
    cfg.form = MqttForm::Multi;
    cfg.window = 50;
    let report = run_fleet(cfg, std::future::pending()).await.unwrap();
    let s = &report.summary;
    assert_eq!(s.totals.messages_sent, 20 * 150);
    assert_eq!(s.totals.readings_acked, 20 * 150 * 3);
    assert_eq!(s.totals.connects, 3);
    assert!(s.achieved_msgs_per_s > 0.0);
    let msgs = wait_for(&got, 3000, m.port()).await;
    sub.abort();
    let distinct: BTreeSet<_> = msgs.iter().collect();
    assert_eq!(distinct.len(), 3000);
    // Load mode spaces timestamps 1 ms apart.
    let last = report
        .records
        .iter()
        .rfind(|r| r.device == "dev-0001")
        .unwrap();
    assert_eq!(last.ts, Some(START + 149));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_run_bounded_by_duration_stops_cleanly_at_its_deadline() {
    let Some(m) = mosquitto() else { return };
    let mut cfg = config(&m);
    cfg.devices = 2;
    cfg.rate_hz = 20.0;
    cfg.duration = Some(Duration::from_millis(700));
    let started = Instant::now();
    let s = run_fleet(cfg, std::future::pending())
        .await
        .unwrap()
        .summary;
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "the deadline ends the run"
    );
    assert!(s.totals.readings_sent > 0);
    assert_eq!(s.totals.readings_acked, s.totals.readings_sent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn qos0_counts_written_messages_and_no_acks() {
    let Some(m) = mosquitto() else { return };
    let mut cfg = config(&m);
    cfg.devices = 3;
    cfg.qos = 0;
    cfg.count = Some(30);
    cfg.rate_hz = 500.0;
    cfg.form = MqttForm::Number;
    let s = run_fleet(cfg, std::future::pending())
        .await
        .unwrap()
        .summary;
    assert_eq!(s.totals.readings_sent, 270);
    assert_eq!(s.totals.readings_written, 270);
    assert_eq!(s.totals.readings_acked, 0);
    assert!(s.complete);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn garbage_is_published_and_counted_apart_from_readings() {
    let Some(m) = mosquitto() else { return };
    let (got, sub) = subscribe(m.port()).await;
    let mut cfg = config(&m);
    cfg.devices = 2;
    cfg.count = Some(100);
    cfg.rate_hz = 1000.0;
    cfg.form = MqttForm::Json;
    cfg.scenarios = vec!["garbage:fraction=0.2".parse().unwrap()];
    let report = run_fleet(cfg, std::future::pending()).await.unwrap();
    let s = &report.summary;
    let garbage = s.totals.garbage_sent;
    assert!(garbage > 10 && garbage < 80, "{garbage}");
    assert_eq!(s.scenarios[0].garbage, garbage);
    assert_eq!(s.totals.garbage_acked, garbage);
    assert_eq!(s.totals.readings_sent, (200 - garbage) * 3);
    assert_eq!(s.totals.readings_acked, s.totals.readings_sent);
    let msgs = wait_for(&got, s.totals.messages_sent as usize, m.port()).await;
    sub.abort();
    let bad = msgs
        .iter()
        .filter(|(t, p)| decode_mqtt(t, p).is_none())
        .count();
    assert_eq!(bad as u64, garbage);
    assert_eq!(msgs.len() as u64 - garbage, s.totals.readings_sent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reconnect_scenario_closes_and_reopens_the_connection_without_losing_readings() {
    let Some(m) = mosquitto() else { return };
    let mut cfg = config(&m);
    cfg.devices = 2;
    cfg.count = Some(60);
    cfg.rate_hz = 100.0;
    let sc: Scenario = "reconnect:at=200ms,for=150ms,devices=1".parse().unwrap();
    cfg.scenarios = vec![sc];
    let s = run_fleet(cfg, std::future::pending())
        .await
        .unwrap()
        .summary;
    assert_eq!(s.scenarios[0].reconnects, 1);
    assert_eq!(
        s.totals.connects, 3,
        "two initial connections and one reconnection"
    );
    assert_eq!(s.scenarios[0].skipped_ticks, 15);
    assert_eq!(s.devices["dev-0001"]["temperature"].sent, 45);
    assert_eq!(s.totals.readings_acked, s.totals.readings_sent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_same_seed_makes_two_fleet_runs_identical() {
    let Some(m) = mosquitto() else { return };
    let run = |seed: u64| {
        let mut cfg = config(&m);
        cfg.devices = 3;
        cfg.count = Some(50);
        cfg.rate_hz = 500.0;
        cfg.form = MqttForm::Mix;
        cfg.seed = seed;
        cfg.scenarios = vec![
            "garbage:fraction=0.1".parse().unwrap(),
            "spike:at=20ms,for=30ms".parse().unwrap(),
        ];
        let port = m.port();
        async move {
            let (got, sub) = subscribe(port).await;
            let r = run_fleet(cfg, std::future::pending()).await.unwrap();
            let mut msgs = wait_for(&got, r.summary.totals.messages_sent as usize, port).await;
            sub.abort();
            msgs.sort();
            (r.records, msgs)
        }
    };
    let dir = tempfile::tempdir().unwrap();
    let (rec_a, msgs_a) = run(11).await;
    let (rec_b, msgs_b) = run(11).await;
    let (a, b) = (dir.path().join("a.jsonl"), dir.path().join("b.jsonl"));
    device_sim::summary::write_records(&a, &rec_a).unwrap();
    device_sim::summary::write_records(&b, &rec_b).unwrap();
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    assert_eq!(msgs_a, msgs_b, "received payloads are byte-identical");
    assert_eq!(device_sim::summary::read_records(&a).unwrap(), rec_a);
    let (rec_c, _) = run(12).await;
    assert_ne!(rec_a, rec_c);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_broker_restart_mid_run_loses_no_acknowledged_count() {
    let Some(mut m) = mosquitto() else {
        return;
    };
    let mut cfg = config(&m);
    cfg.devices = 2;
    cfg.count = Some(300);
    cfg.rate_hz = 200.0;
    cfg.connections = Some(1);
    let fleet = tokio::spawn(run_fleet(cfg, std::future::pending()));
    tokio::time::sleep(Duration::from_millis(400)).await;
    let m = tokio::task::spawn_blocking(move || {
        // Every connection drops at once; the broker is back on the same port after 300 ms.
        m.kill();
        std::thread::sleep(Duration::from_millis(300));
        m.restart();
        m
    })
    .await
    .unwrap();
    let s = fleet.await.unwrap().unwrap().summary;
    drop(m);
    assert!(s.totals.connection_errors >= 1, "{:?}", s.totals);
    assert!(s.totals.connects >= 2);
    assert_eq!(s.totals.readings_sent, 2 * 300 * 3);
    assert_eq!(
        s.totals.readings_acked, s.totals.readings_sent,
        "{:?}",
        s.totals
    );
    assert!(s.complete);
}

#[tokio::test]
async fn an_unreachable_broker_fails_fast_with_a_connect_error() {
    let port = test_peers::free_port();
    let mut cfg = FleetConfig::new(format!("127.0.0.1:{port}").parse().unwrap());
    cfg.connect_timeout = Duration::from_millis(500);
    cfg.count = Some(1);
    let err = run_fleet(cfg, std::future::pending()).await.unwrap_err();
    assert!(matches!(err, FleetError::Connect { .. }), "{err}");
}

#[test]
fn broker_urls_parse_with_defaults() {
    let b: Broker = "mqtt://localhost".parse().unwrap();
    assert_eq!((b.host.as_str(), b.port, b.tls), ("localhost", 1883, false));
    let b: Broker = "mqtts://broker.example:8884".parse().unwrap();
    assert_eq!(
        (b.host.as_str(), b.port, b.tls),
        ("broker.example", 8884, true)
    );
    let b: Broker = "10.0.0.2:1884".parse().unwrap();
    assert_eq!((b.host.as_str(), b.port), ("10.0.0.2", 1884));
    assert!("http://x".parse::<Broker>().is_err());
    assert!("mqtt://:1883".parse::<Broker>().is_err());
}

/// With `stagger`, four devices at 1 Hz publish a quarter second apart, in slot order, each
/// tick; their readings keep the fleet's common timestamps. Without it they all publish at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn staggered_devices_publish_spread_over_the_period_with_common_timestamps() {
    let Some(m) = mosquitto() else { return };
    let (got, sub) = subscribe(m.port()).await;
    let mut cfg = config(&m);
    cfg.devices = 4;
    cfg.rate_hz = 1.0;
    cfg.count = Some(2);
    cfg.form = MqttForm::Json;
    cfg.metrics = vec![device_sim::Metric::Temperature];
    cfg.stagger = true;
    // When each message arrived, by watching the subscriber's list.
    let watch = {
        let got = Arc::clone(&got);
        tokio::spawn(async move {
            let mut seen = Vec::new();
            while seen.len() < 8 {
                let n = got.lock().unwrap().len();
                seen.resize(n.min(8), Instant::now());
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            seen
        })
    };
    let report = run_fleet(cfg, std::future::pending()).await.unwrap();
    assert_eq!(report.summary.totals.messages_acked, 8);
    let arrived = tokio::time::timeout(Duration::from_secs(10), watch)
        .await
        .expect("8 messages")
        .unwrap();
    let msgs = got.lock().unwrap().clone();
    sub.abort();
    let decoded: Vec<Decoded> = msgs
        .iter()
        .take(8)
        .flat_map(|(t, p)| decode_mqtt(t, p).unwrap())
        .collect();
    let devices: Vec<&str> = decoded.iter().map(|d| d.0.as_str()).collect();
    let order = ["dev-0001", "dev-0002", "dev-0003", "dev-0004"];
    assert_eq!(devices, [order, order].concat(), "slot order in each tick");
    for tick in decoded.chunks(4) {
        assert!(
            tick.iter().all(|d| d.3 == tick[0].3),
            "one timestamp per tick: {tick:?}"
        );
    }
    // Device 4 is due 750 ms after device 1; a loaded machine may delay either a little.
    let spread = (0..2)
        .map(|t| arrived[t * 4 + 3] - arrived[t * 4])
        .max()
        .unwrap();
    assert!(
        spread >= Duration::from_millis(400),
        "the devices of a tick arrived within {spread:?} of each other"
    );
}
