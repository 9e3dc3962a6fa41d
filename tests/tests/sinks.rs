//! More than one way out, end to end: the real gateway with its HTTP `[upstream]` (a real HTTP
//! receiver) and a `[[sink]] kind = "mqtt"` to a second mosquitto standing in for the cloud IoT
//! broker (TLS with `require_certificate true`; a subscriber with a certificate of its own reads
//! there). Devices publish to a local broker.
//!
//! What must hold (WIRE §4a): every reading and alarm event reaches both sinks with the same seq
//! and the same record; the cloud broker stopped for 20 s mid-stream loses nothing that was
//! acknowledged, duplicates keep their seq; the HTTP sink down never holds back the MQTT sink,
//! and its backlog drains once it is back; under a tiny quota each sink's drop count is exact:
//! per sink, the distinct readings it delivered plus those counted dropped for it are all that
//! were ingested.

use std::collections::BTreeMap;
use std::time::Duration;

use gateway_tests::workload::{self, Stream, compare, parse_readings};
use gateway_tests::{
    BrokerChoice, Cloud, GatewayProcess, GatewaySpec, Mosquitto, Publisher, PublisherOptions,
    Reply, Upstream, tls_mosquitto, wait_until,
};
use serde_json::Value;
use test_peers::Pki;

const SINK: &str = "cloud-mqtt";
const WAIT: Duration = Duration::from_secs(120);

/// A device broker, the HTTP receiver, the cloud broker with its subscriber, and the gateway
/// sending to both.
struct Rig {
    broker: BrokerChoice,
    receiver: Upstream,
    cloud_broker: Mosquitto,
    cloud: Cloud,
    gw: GatewayProcess,
    _pki_dir: tempfile::TempDir,
}

impl Rig {
    /// `None` when mosquitto is missing (reported; a failure under `CI`). `buffer_extra` goes in
    /// `[buffer]`, `tables` after the sink; `http_down`: the receiver answers 503 from the start.
    async fn start(test: &str, buffer_extra: &str, tables: &str, http_down: bool) -> Option<Rig> {
        let pki_dir = tempfile::tempdir().unwrap();
        let pki = Pki::generate(pki_dir.path());
        let (cloud_broker, tls_port) = tls_mosquitto(test, &pki.trusted, true)?;
        let gateway_id = format!("gw-{test}");
        let cloud = Cloud::subscribe(
            tls_port,
            &pki,
            &format!("cloud-{test}-{}", std::process::id()),
            &format!("dt/gateways/{gateway_id}/+"),
            &gateway_id,
        )
        .await;
        let receiver = Upstream::start().await;
        if http_down {
            receiver.set_default(Reply::Status(503));
        }
        let broker = BrokerChoice::for_test(test);
        let mut spec = GatewaySpec::new(broker.mqtt_setup(), &receiver.url());
        spec.gateway_id = gateway_id;
        spec.buffer_extra = buffer_extra.to_owned();
        let t = &pki.trusted;
        spec.tables = format!(
            "[[sink]]\n\
             name = \"{SINK}\"\n\
             kind = \"mqtt\"\n\
             url = \"mqtts://127.0.0.1:{tls_port}\"\n\
             client_id = \"sink-{test}-{pid}\"\n\
             ca_file = \"{ca}\"\n\
             client_cert_file = \"{cert}\"\n\
             client_key_file = \"{key}\"\n\
             topic = \"dt/gateways/{{gateway_id}}/{{lane}}\"\n\
             linger_ms = 50\n\
             retry_initial_ms = 50\n\
             retry_max_ms = 1000\n\
             timeout_ms = 3000\n\
             \n{tables}",
            pid = std::process::id(),
            ca = t.ca.display(),
            cert = t.client_cert.display(),
            key = t.client_key.display(),
        );
        let mut gw = GatewayProcess::start(&spec);
        gw.wait_ready().await;
        gw.wait_mqtt_ingest(broker.port()).await;
        Some(Rig {
            broker,
            receiver,
            cloud_broker,
            cloud,
            gw,
            _pki_dir: pki_dir,
        })
    }

    /// The cloud's records of `lane`.
    fn cloud_records(&self, lane: &str) -> Vec<Value> {
        self.cloud
            .records()
            .into_iter()
            .filter(|(topic, _)| topic.ends_with(&format!("/{lane}")))
            .map(|(_, r)| r)
            .collect()
    }

    /// Waits until the cloud has every `required` reading (none outside `allowed`).
    async fn wait_cloud_has(
        &self,
        required: &[workload::Expected],
        allowed: &[workload::Expected],
    ) {
        wait_until(
            "every acknowledged reading at the cloud broker",
            WAIT,
            || {
                let cmp = compare(
                    required,
                    allowed,
                    &parse_readings(&self.cloud_records("readings")),
                );
                async move { cmp.missing.is_empty().then_some(()) }
            },
        )
        .await;
        let cmp = compare(
            required,
            allowed,
            &parse_readings(&self.cloud_records("readings")),
        );
        assert!(cmp.unexpected.is_empty(), "cloud: {}", cmp.describe());
    }

    /// The `/status` entry of sink `name`.
    async fn sink_status(&self, name: &str) -> Value {
        let status = self.gw.status().await;
        status["sinks"]
            .as_array()
            .expect("a sinks section")
            .iter()
            .find(|s| s["name"] == name)
            .unwrap_or_else(|| panic!("no sink {name} in {status}"))
            .clone()
    }
}

/// Every copy of a seq carries the same record (duplicates keep their seq, never another's).
fn by_seq(records: &[Value], who: &str) -> BTreeMap<u64, Value> {
    let mut out = BTreeMap::new();
    for r in records {
        let seq = r["seq"].as_u64().expect("a seq");
        if let Some(before) = out.insert(seq, r.clone()) {
            assert_eq!(
                before, *r,
                "{who}: seq {seq} came twice with different records"
            );
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readings_and_alarms_reach_the_http_upstream_and_the_cloud_broker_alike() {
    let Some(mut rig) = Rig::start("sinks-alike", "", workload::OVERHEAT_RULE, false).await else {
        return;
    };
    let work = workload::simple_json(3, 200, "alike");
    let stream = Stream::start(work, rig.broker.port(), None, "alike");
    let (mut required, mut allowed) = stream.finish(WAIT).await;
    let port = rig.broker.port();
    let (hot, hot_readings) = workload::overheat_raise_and_clear();
    Publisher::publish_all(
        PublisherOptions::new(port, format!("alike-hot-{}", std::process::id())),
        hot,
        WAIT,
    )
    .await;
    required.extend(hot_readings.iter().cloned());
    allowed.extend(hot_readings);
    rig.gw.settle(port, &rig.receiver).await;
    rig.wait_cloud_has(&required, &allowed).await;
    wait_until("the raise and the clear at the cloud broker", WAIT, || {
        let n = rig.cloud_records("alarms").len();
        async move { (n >= 2).then_some(()) }
    })
    .await;

    // Both sinks have the same readings and alarm events, seq for seq, record for record.
    let http = by_seq(&rig.receiver.delivered_records("readings"), "http");
    let mqtt = by_seq(&rig.cloud_records("readings"), "mqtt");
    let cmp = compare(
        &required,
        &allowed,
        &parse_readings(&rig.receiver.delivered_records("readings")),
    );
    assert!(
        cmp.missing.is_empty() && cmp.unexpected.is_empty(),
        "http: {}",
        cmp.describe()
    );
    wait_until(
        "the cloud to have every reading the upstream has",
        WAIT,
        || {
            let mqtt = by_seq(&rig.cloud_records("readings"), "mqtt");
            let all = http.keys().all(|s| mqtt.contains_key(s));
            async move { all.then_some(()) }
        },
    )
    .await;
    let mqtt_now = by_seq(&rig.cloud_records("readings"), "mqtt");
    for (seq, record) in &http {
        assert_eq!(mqtt_now.get(seq), Some(record), "seq {seq}");
    }
    assert!(mqtt.len() <= mqtt_now.len());
    let http_alarms = by_seq(&rig.receiver.delivered_records("alarms"), "http alarms");
    let mqtt_alarms = by_seq(&rig.cloud_records("alarms"), "mqtt alarms");
    assert_eq!(http_alarms, mqtt_alarms);
    let states: Vec<&str> = mqtt_alarms
        .values()
        .map(|a| a["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["raised", "cleared"], "in seq order, raise first");

    let sink = rig.sink_status(SINK).await;
    assert_eq!(sink["kind"], "mqtt");
    assert_eq!(sink["dropped"]["readings"], 0);
    let metrics = rig
        .gw
        .http()
        .get(format!("{}/metrics", rig.gw.admin_url()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(&format!(
            "gateway_sink_records_delivered_total{{sink=\"{SINK}\",lane=\"alarms\"}} 2"
        )),
        "{metrics}"
    );
    rig.gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cloud_broker_stopped_for_20_s_mid_stream_loses_nothing_acknowledged() {
    let Some(mut rig) = Rig::start("sinks-outage", "", "", false).await else {
        return;
    };
    // 4 devices × 300 readings at 20/s each: a 15 s stream with the outage in the middle.
    let work = workload::simple_json(4, 300, "outage");
    let stream = Stream::start(work, rig.broker.port(), Some(20.0), "outage");
    wait_until("the first readings at the cloud broker", WAIT, || {
        let n = rig.cloud_records("readings").len();
        async move { (n > 50).then_some(()) }
    })
    .await;
    rig.cloud_broker.stop();
    // The outage itself, not a wait for a condition: the cloud is away this long.
    tokio::time::sleep(Duration::from_secs(20)).await;
    let during = rig.sink_status(SINK).await;
    assert_ne!(
        during["state"], "up",
        "the sink noticed the outage: {during}"
    );
    rig.cloud_broker.restart();
    let (required, allowed) = stream.finish(WAIT).await;
    rig.wait_cloud_has(&required, &allowed).await;
    // Duplicates only with the same seq and record; the HTTP sink never noticed.
    let mqtt = by_seq(&rig.cloud_records("readings"), "mqtt");
    rig.gw.settle(rig.broker.port(), &rig.receiver).await;
    let http = by_seq(&rig.receiver.delivered_records("readings"), "http");
    for (seq, record) in &mqtt {
        if let Some(h) = http.get(seq) {
            assert_eq!(h, record, "seq {seq}");
        }
    }
    let cmp = compare(
        &required,
        &allowed,
        &parse_readings(&rig.receiver.delivered_records("readings")),
    );
    assert!(cmp.missing.is_empty(), "http: {}", cmp.describe());
    rig.gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_down_http_upstream_never_holds_back_the_cloud_broker_and_drains_when_back() {
    let Some(mut rig) = Rig::start("sinks-http-down", "", "", true).await else {
        return;
    };
    let work = workload::simple_json(3, 200, "httpdown");
    let (required, allowed) = Stream::start(work, rig.broker.port(), None, "httpdown")
        .finish(WAIT)
        .await;
    rig.wait_cloud_has(&required, &allowed).await;
    let upstream = rig.sink_status("upstream").await;
    assert_eq!(
        upstream["records_delivered"]["readings"], 0,
        "every HTTP attempt was refused: {upstream}"
    );
    assert!(
        rig.receiver.delivered_count("readings") == 0,
        "the receiver answered 503 to everything"
    );
    let backlog = rig.gw.status().await["buffer"]["lanes"]["readings"]["records"]
        .as_u64()
        .unwrap();
    assert!(
        backlog >= required.len() as u64,
        "the HTTP backlog waits in the buffer: {backlog} records"
    );
    rig.receiver.set_default(Reply::Status(200));
    let cmp = workload::wait_delivered(&rig.receiver, &required, &allowed, WAIT).await;
    assert!(cmp.unexpected.is_empty(), "http: {}", cmp.describe());
    rig.gw
        .wait_status(
            "the buffer to empty once both sinks have everything",
            WAIT,
            |s| (s["buffer"]["lanes"]["readings"]["records"].as_u64() == Some(0)).then_some(()),
        )
        .await;
    rig.gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_a_tiny_quota_each_sinks_drop_count_is_exact() {
    // 16 KiB of readings on disk while the HTTP upstream refuses everything and the cloud
    // broker is away: the quota evicts what each sink has not delivered, and counts it for
    // that sink (the upstream, whose view the buffer's own counters take, and the other).
    let Some(mut rig) = Rig::start(
        "sinks-quota",
        "max_bytes = 16384\nwhen_full = \"drop_oldest\"\n",
        "",
        true,
    )
    .await
    else {
        return;
    };
    rig.cloud_broker.stop();
    let work = workload::simple_json(4, 1_000, "quota");
    let (required, _) = Stream::start(work, rig.broker.port(), None, "quota")
        .finish(WAIT)
        .await;
    // Every acknowledged reading is counted as ingested (the count follows the PUBACK closely).
    let at_least = required.len() as u64;
    let ingested = rig
        .gw
        .wait_status(
            "every acknowledged reading counted as ingested",
            WAIT,
            |s| {
                s["ingest"]["readings"]["mqtt"]
                    .as_u64()
                    .filter(|n| *n >= at_least)
            },
        )
        .await;
    rig.receiver.set_default(Reply::Status(200));
    rig.cloud_broker.restart();
    // Per sink: distinct readings delivered + readings counted dropped or expired for it =
    // every reading ingested. Reached once both sinks drained; never passed over.
    let check = |delivered: &[Value], sink: &Value| -> (u64, u64) {
        let distinct = by_seq(delivered, "sink").len() as u64;
        let lost = sink["dropped"]["readings"].as_u64().unwrap()
            + sink["expired"]["readings"].as_u64().unwrap();
        (distinct, lost)
    };
    // Records a sink held in batches when the quota evicted them are its to deliver, not lost:
    // how many a sink loses depends on how much it held, so only the sum must be above zero
    // (the quota did evict), and each sink's own count must be exact.
    let mut lost_total = 0;
    for (name, who) in [("upstream", "http"), (SINK, "mqtt")] {
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            let sink = rig.sink_status(name).await;
            let delivered = match who {
                "http" => rig.receiver.delivered_records("readings"),
                _ => rig.cloud_records("readings"),
            };
            let (distinct, lost) = check(&delivered, &sink);
            assert!(
                distinct + lost <= ingested,
                "{name}: {distinct} delivered + {lost} lost > {ingested} ingested"
            );
            if distinct + lost == ingested {
                lost_total += lost;
                eprintln!("{name}: {distinct} delivered + {lost} dropped = {ingested} ingested");
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{name}: {distinct} delivered + {lost} lost ≠ {ingested} ingested after {WAIT:?}: {sink}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    assert!(
        lost_total > 0,
        "the quota never evicted: this run proved nothing"
    );
    rig.gw.stop().await;
}
