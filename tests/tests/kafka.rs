//! The Kafka sink, end to end: devices publish to mosquitto, the real gateway stores and sends
//! to its HTTP `[upstream]` and to a `[[sink]] kind = "kafka"` on a real Kafka-protocol broker
//! (tansu), and kafka-python, a client independent of the gateway's, reads every record back.
//!
//! What must hold (WIRE §4a): every acknowledged reading is in Kafka once or more, duplicates
//! only under the same seq with the same record; a record's key is its device, its value the
//! WIRE §3 record, its headers `gateway_id` and `seq`, its timestamp `ts`; each device's records
//! are in one partition, the one Kafka's default partitioner (kafka-python's own copy) picks for
//! the key, in seq order; alarm events are on the alarm topic. The broker stopped (SIGSTOP) for
//! 20 s mid-stream, or the gateway SIGKILLed mid-stream, loses nothing acknowledged.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use gateway_tests::workload::{self, Expected, Stream, compare, parse_readings};
use gateway_tests::{
    BrokerChoice, GatewayProcess, GatewaySpec, Publisher, PublisherOptions, Upstream,
};
use serde_json::Value;
use test_peers::{Kafka, KafkaRecord};

const SINK: &str = "fleet-kafka";
const READINGS: &str = "sensor-readings";
const ALARMS: &str = "sensor-alarms";
const WAIT: Duration = Duration::from_secs(180);

/// The device broker, the HTTP receiver, Kafka, and the gateway sending to both.
struct Rig {
    broker: BrokerChoice,
    receiver: Upstream,
    kafka: Kafka,
    gw: GatewayProcess,
    gateway_id: String,
}

impl Rig {
    /// `None` when mosquitto, tansu or kafka-python is missing (reported; a failure under
    /// `CI`).
    async fn start(test: &str, tables: &str) -> Option<Rig> {
        let kafka = Kafka::require(test)?;
        kafka.create_topic(READINGS, 3);
        kafka.create_topic(ALARMS, 2);
        let receiver = Upstream::start().await;
        let broker = BrokerChoice::for_test(test);
        let gateway_id = format!("gw-{test}");
        let mut spec = GatewaySpec::new(broker.mqtt_setup(), &receiver.url());
        spec.gateway_id = gateway_id.clone();
        spec.tables = format!(
            "[[sink]]\n\
             name = \"{SINK}\"\n\
             kind = \"kafka\"\n\
             brokers = [\"{bootstrap}\"]\n\
             topic = \"{READINGS}\"\n\
             alarm_topic = \"{ALARMS}\"\n\
             compression = \"lz4\"\n\
             linger_ms = 50\n\
             retry_initial_ms = 50\n\
             retry_max_ms = 1000\n\
             timeout_ms = 3000\n\
             \n{tables}",
            bootstrap = kafka.bootstrap(),
        );
        let mut gw = GatewayProcess::start(&spec);
        gw.wait_ready().await;
        gw.wait_mqtt_ingest(broker.port()).await;
        Some(Rig {
            broker,
            receiver,
            kafka,
            gw,
            gateway_id,
        })
    }

    /// Waits until every sink acked every stored record (the buffer's lanes are empty), after
    /// a barrier through the HTTP upstream.
    async fn drained(&mut self) {
        self.gw.settle(self.broker.port(), &self.receiver).await;
        self.gw
            .wait_status("every sink to ack every record", WAIT, |s| {
                let lanes = &s["buffer"]["lanes"];
                (lanes["readings"]["records"].as_u64() == Some(0)
                    && lanes["alarms"]["records"].as_u64() == Some(0))
                .then_some(())
            })
            .await;
    }

    /// Waits until the Kafka sink delivered more than `n` readings.
    async fn wait_delivered(&mut self, n: u64) {
        self.gw
            .wait_status(&format!("more than {n} readings in Kafka"), WAIT, |s| {
                let delivered = s["sinks"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|k| k["name"] == SINK)
                    .and_then(|k| k["records_delivered"]["readings"].as_u64());
                (delivered > Some(n)).then_some(())
            })
            .await;
    }

    /// Every record of both topics, read back by kafka-python.
    fn read_back(&self) -> Vec<KafkaRecord> {
        self.kafka
            .read_back(&[READINGS, ALARMS], usize::MAX, Duration::from_secs(5))
    }

    /// The `/status` entry of the Kafka sink.
    async fn sink_status(&self) -> Value {
        let status = self.gw.status().await;
        status["sinks"]
            .as_array()
            .expect("a sinks section")
            .iter()
            .find(|s| s["name"] == SINK)
            .unwrap_or_else(|| panic!("no sink {SINK} in {status}"))
            .clone()
    }
}

/// What the records read back say, checked record by record against WIRE §4a; returns the
/// readings' WIRE §3 records.
fn check_records(records: &[KafkaRecord], gateway_id: &str) -> (Vec<Value>, Vec<Value>) {
    let mut by_seq: BTreeMap<u64, Value> = BTreeMap::new();
    // Device -> (its partition, its seqs in offset order).
    let mut devices: HashMap<String, (i32, Vec<u64>)> = HashMap::new();
    let mut sorted: Vec<&KafkaRecord> = records.iter().collect();
    sorted.sort_by_key(|r| (r.topic.clone(), r.partition, r.offset));
    let (mut readings, mut alarms) = (Vec::new(), Vec::new());
    for r in sorted {
        let v = &r.value;
        let seq = v["seq"].as_u64().unwrap_or_else(|| panic!("no seq: {r:?}"));
        let device = v["device"].as_str().expect("a device");
        assert_eq!(r.key.as_deref(), Some(device), "key = device: {r:?}");
        assert_eq!(
            r.headers,
            vec![
                ("gateway_id".to_owned(), gateway_id.to_owned()),
                ("seq".to_owned(), seq.to_string())
            ],
            "headers: {r:?}"
        );
        assert_eq!(
            Some(r.timestamp_ms),
            v["ts"].as_i64(),
            "timestamp = ts: {r:?}"
        );
        assert_eq!(
            Some(r.partition),
            r.expected_partition,
            "the partition Kafka's default partitioner picks for the key: {r:?}"
        );
        if let Some(before) = by_seq.insert(seq, v.clone()) {
            assert_eq!(&before, v, "seq {seq} came twice with different records");
        }
        match r.topic.as_str() {
            READINGS => {
                assert!(
                    v.get("alarm").is_none(),
                    "an alarm on the readings topic: {r:?}"
                );
                readings.push(v.clone());
            }
            ALARMS => {
                assert!(
                    v.get("alarm").is_some(),
                    "a reading on the alarm topic: {r:?}"
                );
                alarms.push(v.clone());
                continue;
            }
            other => panic!("a record on topic {other}"),
        }
        let (partition, seqs) = devices
            .entry(device.to_owned())
            .or_insert((r.partition, Vec::new()));
        assert_eq!(*partition, r.partition, "{device} in two partitions");
        seqs.push(seq);
    }
    // In its partition a device's records come in seq order: the first copy of each seq comes
    // after the first copy of every lower one (a re-sent request repeats records already there).
    for (device, (_, seqs)) in &devices {
        let mut seen = std::collections::HashSet::new();
        let firsts: Vec<u64> = seqs.iter().copied().filter(|s| seen.insert(*s)).collect();
        if let Some(w) = firsts.windows(2).find(|w| w[0] > w[1]) {
            panic!("{device}: seq {} first appears after seq {}", w[1], w[0]);
        }
    }
    (readings, alarms)
}

fn assert_all_there(required: &[Expected], allowed: &[Expected], readings: &[Value]) {
    let cmp = compare(required, allowed, &parse_readings(readings));
    assert!(
        cmp.missing.is_empty() && cmp.unexpected.is_empty(),
        "kafka: {}",
        cmp.describe()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_thousand_readings_reach_kafka_each_device_in_its_partition_in_seq_order() {
    let Some(mut rig) = Rig::start("kafka-100k", workload::OVERHEAT_RULE).await else {
        return;
    };
    let work = workload::simple_json(10, 10_000, "k100");
    let (mut required, mut allowed) = Stream::start(work, rig.broker.port(), None, "k100")
        .finish(WAIT)
        .await;
    let (hot, hot_readings) = workload::overheat_raise_and_clear();
    Publisher::publish_all(
        PublisherOptions::new(
            rig.broker.port(),
            format!("k100-hot-{}", std::process::id()),
        ),
        hot,
        WAIT,
    )
    .await;
    required.extend(hot_readings.iter().cloned());
    allowed.extend(hot_readings);
    rig.drained().await;

    let records = rig.read_back();
    let (readings, alarms) = check_records(&records, &rig.gateway_id);
    assert!(required.len() >= 100_000, "{} acknowledged", required.len());
    assert_all_there(&required, &allowed, &readings);
    let states: Vec<&str> = alarms
        .iter()
        .map(|a| a["state"].as_str().unwrap())
        .collect();
    assert_eq!(
        states,
        ["raised", "cleared"],
        "the alarm topic, raise first"
    );
    // The HTTP upstream has the same records under the same seqs.
    let http: BTreeMap<u64, Value> = rig
        .receiver
        .delivered_records("readings")
        .into_iter()
        .map(|r| (r["seq"].as_u64().unwrap(), r))
        .collect();
    for r in &readings {
        let seq = r["seq"].as_u64().unwrap();
        assert_eq!(http.get(&seq), Some(r), "seq {seq} at both sinks");
    }
    let sink = rig.sink_status().await;
    assert_eq!(sink["kind"], "kafka");
    assert_eq!(sink["records_dead_lettered"]["readings"], 0, "{sink}");
    rig.gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kafka_broker_stopped_for_20_s_mid_stream_loses_nothing_acknowledged() {
    let Some(mut rig) = Rig::start("kafka-outage", "").await else {
        return;
    };
    // 4 devices × 300 readings at 20/s each: a 15 s stream with the outage in the middle.
    let work = workload::simple_json(4, 300, "koutage");
    let stream = Stream::start(work, rig.broker.port(), Some(20.0), "koutage");
    rig.wait_delivered(50).await;
    rig.kafka.pause();
    // The outage itself, not a wait for a condition: the broker is frozen this long.
    tokio::time::sleep(Duration::from_secs(20)).await;
    let during = rig.sink_status().await;
    assert_ne!(
        during["state"], "up",
        "the sink noticed the outage: {during}"
    );
    rig.kafka.resume();
    let (required, allowed) = stream.finish(WAIT).await;
    rig.drained().await;
    let (readings, _) = check_records(&rig.read_back(), &rig.gateway_id);
    assert_all_there(&required, &allowed, &readings);
    rig.gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_sigkilled_mid_stream_loses_nothing_acknowledged_in_kafka() {
    let Some(mut rig) = Rig::start("kafka-sigkill", "").await else {
        return;
    };
    let work = workload::simple_json(4, 2_000, "kkill");
    let stream = Stream::start(work, rig.broker.port(), Some(400.0), "kkill");
    rig.wait_delivered(500).await;
    rig.gw.sigkill();
    // Down for a moment while the devices go on publishing into the broker's queue.
    tokio::time::sleep(Duration::from_secs(1)).await;
    rig.gw.spawn();
    rig.gw.wait_ready().await;
    let (required, allowed) = stream.finish(WAIT).await;
    rig.drained().await;
    let (readings, _) = check_records(&rig.read_back(), &rig.gateway_id);
    assert_all_there(&required, &allowed, &readings);
    rig.gw.stop().await;
}
