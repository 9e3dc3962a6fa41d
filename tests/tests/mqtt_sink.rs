//! The MQTT sink (WIRE §4a) against a real mosquitto on a TLS listener that requires client
//! certificates: a forwarder over a real buffer publishes, a subscriber with a certificate of
//! its own plays the cloud.
//!
//! What must hold: every record arrives on its lane's topic as WIRE §3 batch JSON and the cursor
//! is acked only for what the broker acknowledged; without a client certificate nothing gets in
//! and nothing is acked; a broker restart mid-stream loses nothing (duplicates keep their seq);
//! a batch over `max_message_bytes` goes out as several messages, each within the limit.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use gateway_buffer::{
    AlarmEvent, AlarmState, Buffer, BufferOptions, Lane, Reading, Record, Severity, Source,
};
use gateway_forwarder::{
    Forwarder, ForwarderError, ForwarderHandle, ForwarderOptions, MqttSink, MqttSinkOptions,
};
use gateway_tests::{Cloud, tls_client, tls_mosquitto, wait_until};
use serde_json::Value;
use test_peers::Pki;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The sink's buffer consumer, as a `[[sink]] name` would be.
const CONSUMER: &str = "cloud-mqtt";
const GATEWAY_ID: &str = "gw-e2e";
/// What the cloud subscribes to: both lanes' topics of [`MqttSinkOptions::new`].
const TOPICS: &str = "dt/gateways/gw-e2e/+";
const READINGS_TOPIC: &str = "dt/gateways/gw-e2e/readings";
const ALARMS_TOPIC: &str = "dt/gateways/gw-e2e/alarms";

/// The sink's options for the broker's TLS port, with the gateway's client certificate.
fn sink_options(tls_port: u16, pki: &Pki) -> MqttSinkOptions {
    let mut o = MqttSinkOptions::new(
        GATEWAY_ID,
        format!("mqtts://127.0.0.1:{tls_port}").parse().unwrap(),
        "gw-e2e-sink",
    );
    let t = &pki.trusted;
    o.tls = Some(tls_client(t, Some((&t.client_cert, &t.client_key))));
    o.timeout = Duration::from_secs(3);
    o
}

/// A buffer in a temp dir and a forwarder to an MQTT sink over it, all running.
struct Rig {
    buffer: Buffer,
    handle: ForwarderHandle,
    stop: CancellationToken,
    forwarder: JoinHandle<Result<(), ForwarderError>>,
    connection: JoinHandle<()>,
    committer_stop: CancellationToken,
    committer: JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl Rig {
    fn start(sink: MqttSinkOptions) -> Rig {
        let dir = tempfile::Builder::new()
            .prefix("e2e-mqtt-sink-")
            .tempdir()
            .expect("temp dir");
        let mut opts = BufferOptions::new(dir.path());
        opts.consumers = vec![CONSUMER.to_string()];
        opts.commit_interval_ms = 1;
        let (buffer, committer) = Buffer::open(opts).expect("open the buffer");
        let committer_stop = CancellationToken::new();
        let token = committer_stop.clone();
        let committer = tokio::spawn(async move {
            committer.run(token).await.expect("committer");
        });

        let mut fo = ForwarderOptions::new(GATEWAY_ID, sink.url.clone());
        fo.consumer = CONSUMER.to_string();
        fo.batch_max_records = 20;
        fo.linger = Duration::from_millis(20);
        fo.retry_initial = Duration::from_millis(50);
        fo.retry_max = Duration::from_millis(1_000);
        fo.max_in_flight = 4;
        let (sink, connection) = MqttSink::new(sink).expect("the MQTT sink");
        let (handle, driver) =
            Forwarder::with_sink(buffer.clone(), fo, Arc::new(sink)).expect("the forwarder");
        let stop = CancellationToken::new();
        let connection = tokio::spawn(connection.run(stop.clone()));
        let forwarder = tokio::spawn(driver.run(stop.clone(), Duration::from_secs(2)));
        Rig {
            buffer,
            handle,
            stop,
            forwarder,
            connection,
            committer_stop,
            committer,
            _dir: dir,
        }
    }

    /// Appends and waits until durable; returns the seqs.
    async fn append(&self, records: &[Record]) -> Vec<u64> {
        self.buffer
            .append(records.to_vec())
            .await
            .expect("append to the buffer")
    }

    fn acked(&self, lane: Lane) -> Option<u64> {
        self.buffer.acked(CONSUMER, lane)
    }

    async fn stop(self) {
        self.stop.cancel();
        self.forwarder
            .await
            .expect("forwarder task")
            .expect("forwarder");
        self.connection.await.expect("connection task");
        self.committer_stop.cancel();
        drop(self.buffer);
        self.committer.await.expect("committer task");
    }
}

/// Reading `i`: its value is unique, so a record arriving under another seq would show.
fn reading(i: usize) -> Record {
    Record::Reading(Reading {
        device: format!("dev-{}", i % 5),
        metric: if i.is_multiple_of(2) {
            "temperature"
        } else {
            "humidity"
        }
        .into(),
        value: 1000.0 + i as f64 / 4.0,
        unit: Some("C".into()),
        ts_ms: 1_764_081_600_000 + i as i64,
        source: Source::Mqtt,
    })
}

fn alarm(i: usize, state: AlarmState) -> Record {
    Record::Alarm(AlarmEvent {
        alarm: "overheat".into(),
        state,
        severity: Severity::Critical,
        device: format!("dev-{i}"),
        metric: "temperature".into(),
        value: 36.0 + i as f64,
        threshold: Some(35.0),
        ts_ms: 1_764_081_600_000 + i as i64,
    })
}

/// Checks that a received record is the one appended under its seq, on its lane's topic.
fn check_record(expected: &HashMap<u64, Record>, topic: &str, got: &Value) {
    let seq = got["seq"].as_u64().expect("a seq");
    let record = expected
        .get(&seq)
        .unwrap_or_else(|| panic!("seq {seq} was never appended: {got}"));
    match record {
        Record::Reading(r) => {
            assert_eq!(topic, READINGS_TOPIC, "{got}");
            assert_eq!(got["device"], r.device.as_str(), "{got}");
            assert_eq!(got["metric"], r.metric.as_str(), "{got}");
            assert_eq!(got["value"].as_f64(), Some(r.value), "{got}");
        }
        Record::Alarm(a) => {
            assert_eq!(topic, ALARMS_TOPIC, "{got}");
            assert_eq!(got["alarm"], a.alarm.as_str(), "{got}");
            assert_eq!(got["state"], a.state.as_str(), "{got}");
            assert_eq!(got["device"], a.device.as_str(), "{got}");
            assert_eq!(got["value"].as_f64(), Some(a.value), "{got}");
        }
    }
}

/// Waits until the cloud has every seq of `expected` and the cursor is acked at the last seq
/// of each lane; returns the received records.
async fn wait_all(
    what: &str,
    rig: &Rig,
    cloud: &Cloud,
    expected: &HashMap<u64, Record>,
    last: [(Lane, Option<u64>); 2],
) -> Vec<(String, Value)> {
    let want: std::collections::BTreeSet<u64> = expected.keys().copied().collect();
    wait_until(what, Duration::from_secs(90), || {
        let done = cloud.seqs().is_superset(&want) && last.iter().all(|(l, s)| rig.acked(*l) == *s);
        async move { done.then_some(()) }
    })
    .await;
    let records = cloud.records();
    for (topic, record) in &records {
        check_record(expected, topic, record);
    }
    records
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readings_and_alarms_reach_a_broker_that_requires_client_certificates_on_their_lane_topics()
{
    let test = "mqtt-sink-delivers";
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(dir.path());
    let Some((broker, tls_port)) = tls_mosquitto(test, &pki.trusted, true) else {
        return;
    };
    let cloud = Cloud::subscribe(tls_port, &pki, "e2e-cloud", TOPICS, GATEWAY_ID).await;
    let rig = Rig::start(sink_options(tls_port, &pki));

    let mut expected = HashMap::new();
    let mut last_reading = None;
    let mut last_alarm = None;
    for chunk in 0..5 {
        let readings: Vec<Record> = (chunk * 40..(chunk + 1) * 40).map(reading).collect();
        let seqs = rig.append(&readings).await;
        last_reading = seqs.last().copied();
        expected.extend(seqs.into_iter().zip(readings));
        if chunk == 2 {
            let alarms = vec![alarm(7, AlarmState::Raised), alarm(7, AlarmState::Cleared)];
            let seqs = rig.append(&alarms).await;
            last_alarm = seqs.last().copied();
            expected.extend(seqs.into_iter().zip(alarms));
        }
    }
    let records = wait_all(
        "every record at the cloud and the cursor at the last seq",
        &rig,
        &cloud,
        &expected,
        [(Lane::Readings, last_reading), (Lane::Alarms, last_alarm)],
    )
    .await;
    let alarms: Vec<&Value> = records
        .iter()
        .filter(|(t, _)| t == ALARMS_TOPIC)
        .map(|(_, r)| r)
        .collect();
    assert_eq!(alarms.len(), 2, "{alarms:?}");
    assert_eq!(
        alarms[0]["state"], "raised",
        "a raise arrives before its clear"
    );
    // Every message is the batch JSON exactly as the HTTP sink would POST it uncompressed.
    for m in cloud.messages() {
        let batch: Value = serde_json::from_slice(&m.payload).unwrap();
        let seqs: Vec<u64> = batch["records"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["seq"].as_u64().unwrap())
            .collect();
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "in seq order: {seqs:?}"
        );
        let records: Vec<gateway_buffer::Stored> = seqs
            .iter()
            .map(|s| gateway_buffer::Stored {
                seq: *s,
                record: expected[s].clone(),
            })
            .collect();
        let lane = if m.topic == ALARMS_TOPIC {
            Lane::Alarms
        } else {
            Lane::Readings
        };
        assert_eq!(
            m.payload,
            gateway_forwarder::encode_body(GATEWAY_ID, lane, &records),
            "the WIRE §3 bytes"
        );
    }
    assert!(
        broker.log().contains(" as gw-e2e-sink "),
        "mosquitto logs the sink's CONNECT (the refusal test looks for it):\n{}",
        broker.log()
    );
    let stats = rig.handle.stats();
    assert_eq!(
        stats.records_delivered.readings + stats.records_delivered.alarms,
        expected.len() as u64,
        "{stats:?}"
    );
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_client_certificate_the_broker_refuses_the_sink_and_nothing_is_acked() {
    let test = "mqtt-sink-no-client-cert";
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(dir.path());
    let Some((broker, tls_port)) = tls_mosquitto(test, &pki.trusted, true) else {
        return;
    };
    let cloud = Cloud::subscribe(tls_port, &pki, "e2e-cloud", TOPICS, GATEWAY_ID).await;
    let mut options = sink_options(tls_port, &pki);
    options.tls = Some(tls_client(&pki.trusted, None));
    options.timeout = Duration::from_secs(2);
    let rig = Rig::start(options);
    rig.append(&(0..30).map(reading).collect::<Vec<_>>()).await;
    rig.append(&[alarm(1, AlarmState::Raised)]).await;

    let stats = wait_until("two failed attempts", Duration::from_secs(60), || {
        let stats = rig.handle.stats();
        async move { (stats.failed_retryable >= 2).then_some(stats) }
    })
    .await;
    assert_eq!(rig.acked(Lane::Readings), None, "{stats:?}");
    assert_eq!(rig.acked(Lane::Alarms), None, "{stats:?}");
    assert_eq!(stats.records_delivered.readings, 0, "{stats:?}");
    assert_eq!(stats.records_delivered.alarms, 0, "{stats:?}");
    let error = stats.last_error.clone().unwrap_or_default();
    // Refused in TLS (TLS 1.3 sends the alert after the client's CONNECT), not in MQTT.
    assert!(
        error.contains("connect:") && error.contains("fatal alert"),
        "{stats:?}"
    );
    assert!(cloud.messages().is_empty(), "{:?}", cloud.messages());
    assert!(
        !broker.log().contains(" as gw-e2e-sink "),
        "mosquitto accepted the sink's CONNECT:\n{}",
        broker.log()
    );
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restart_mid_stream_loses_nothing_and_duplicates_keep_their_seq() {
    let test = "mqtt-sink-broker-restart";
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(dir.path());
    let Some((mut broker, tls_port)) = tls_mosquitto(test, &pki.trusted, true) else {
        return;
    };
    let cloud = Cloud::subscribe(tls_port, &pki, "e2e-cloud", TOPICS, GATEWAY_ID).await;
    let rig = Rig::start(sink_options(tls_port, &pki));

    // A steady stream of single readings, ~3 ms apart, that goes on across the outage.
    const TOTAL: usize = 600;
    let buffer = rig.buffer.clone();
    let producer = tokio::spawn(async move {
        let mut appended = HashMap::new();
        for i in 0..TOTAL {
            let record = reading(i);
            let seq = buffer.append(vec![record.clone()]).await.expect("append")[0];
            appended.insert(seq, record);
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
        appended
    });
    wait_until(
        "a quarter of the stream at the cloud",
        Duration::from_secs(60),
        || {
            let n = cloud.seqs().len();
            async move { (n >= TOTAL / 4).then_some(()) }
        },
    )
    .await;
    let failed_before = rig.handle.stats().failed_retryable;
    tokio::task::block_in_place(|| broker.stop());
    let stopped = std::time::Instant::now();
    // Down for a few seconds at least, and long enough for the sink to fail and retry.
    wait_until(
        "attempts failing while the broker is down, for 2 s",
        Duration::from_secs(60),
        || {
            let failed = rig.handle.stats().failed_retryable;
            let long_enough = stopped.elapsed() >= Duration::from_secs(2);
            async move { (failed >= failed_before + 2 && long_enough).then_some(()) }
        },
    )
    .await;
    tokio::task::block_in_place(|| broker.restart());
    let expected = producer.await.expect("producer");
    let last = expected.keys().max().copied();
    let records = wait_all(
        "every record at the cloud after the restart and the cursor at the last seq",
        &rig,
        &cloud,
        &expected,
        [(Lane::Readings, last), (Lane::Alarms, None)],
    )
    .await;
    // check_record (in wait_all) has matched every copy to its seq's record; count them.
    let mut copies: BTreeMap<u64, usize> = BTreeMap::new();
    for (_, r) in &records {
        *copies.entry(r["seq"].as_u64().unwrap()).or_default() += 1;
    }
    let duplicated = copies.values().filter(|n| **n > 1).count();
    eprintln!(
        "{test}: {} records, {} messages, {duplicated} seqs arrived more than once",
        expected.len(),
        cloud.messages().len()
    );
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tiny_max_message_bytes_splits_batches_and_every_record_still_arrives() {
    let test = "mqtt-sink-split";
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(dir.path());
    let Some((_broker, tls_port)) = tls_mosquitto(test, &pki.trusted, true) else {
        return;
    };
    let cloud = Cloud::subscribe(tls_port, &pki, "e2e-cloud", TOPICS, GATEWAY_ID).await;
    const MAX: usize = 400;
    let mut options = sink_options(tls_port, &pki);
    options.max_message_bytes = MAX;
    let rig = Rig::start(options);
    let mut expected = HashMap::new();
    let readings: Vec<Record> = (0..120).map(reading).collect();
    let seqs = rig.append(&readings).await;
    let last_reading = seqs.last().copied();
    expected.extend(seqs.iter().copied().zip(readings));
    let alarms: Vec<Record> = (0..6usize)
        .map(|i| {
            let state = if i.is_multiple_of(2) {
                AlarmState::Raised
            } else {
                AlarmState::Cleared
            };
            alarm(i, state)
        })
        .collect();
    let seqs = rig.append(&alarms).await;
    let last_alarm = seqs.last().copied();
    expected.extend(seqs.iter().copied().zip(alarms));

    let records = wait_all(
        "every record at the cloud, split, and the cursor at the last seq",
        &rig,
        &cloud,
        &expected,
        [(Lane::Readings, last_reading), (Lane::Alarms, last_alarm)],
    )
    .await;
    let messages = cloud.messages();
    for m in &messages {
        assert!(m.payload.len() <= MAX, "{} bytes", m.payload.len());
    }
    let stats = rig.handle.stats();
    // More messages than batches: batches were split (20 records would need ~3 KB).
    assert!(
        messages.len() as u64 > stats.batches_sent,
        "{} messages for {} batches",
        messages.len(),
        stats.batches_sent
    );
    assert!(messages.len() >= expected.len() / 3, "{}", messages.len());
    // Every record once per delivery: without a timeout no batch was sent twice.
    if stats.timeouts == 0 {
        let mut seen: Vec<u64> = records
            .iter()
            .map(|(_, r)| r["seq"].as_u64().unwrap())
            .collect();
        seen.sort_unstable();
        let mut want: Vec<u64> = expected.keys().copied().collect();
        want.sort_unstable();
        assert_eq!(seen, want, "{stats:?}");
    }
    rig.stop().await;
}
