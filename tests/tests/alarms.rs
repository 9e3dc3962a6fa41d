//! Alarms end to end (issue 6): readings over MQTT crossing a threshold raise one alarm and
//! clear it once; both events go upstream in the alarms lane ahead of a readings backlog, and the
//! local retained topic `alarms/{device}/{rule}` appears, then the clear's JSON is published and
//! the retained raise removed.

use gateway_tests::workload::{self, Expected, Stream, wait_delivered};
use gateway_tests::{
    Batch, BrokerChoice, GatewayProcess, GatewaySpec, Message, Publisher, PublisherOptions, Reply,
    Subscriber, Upstream, retained_messages, wait_until,
};
use serde_json::Value;
use std::time::{Duration, Instant};

const RULE: &str = "[[alarm]]\nname = \"overheat\"\ndevice = \"*\"\nmetric = \"temperature\"\nabove = 35.0\nclear_below = 33.0\nseverity = \"critical\"\n";
const HOT: &str = "hot-1";
const ALARM_TOPIC: &str = "alarms/hot-1/overheat";

/// Publishes temperatures of the hot device, in order, each acknowledged before the next.
async fn publish_hot(port: u16, readings: &[(f64, i64)]) -> Vec<Expected> {
    let messages = readings
        .iter()
        .map(|(v, ts)| Message {
            topic: format!("sensors/{HOT}/temperature"),
            payload: format!(r#"{{"value": {v}, "ts": {ts}}}"#).into_bytes(),
        })
        .collect();
    let mut o = PublisherOptions::new(port, "hot-device");
    o.window = 1;
    Publisher::publish_all(o, messages, Duration::from_secs(30)).await;
    readings
        .iter()
        .map(|(v, ts)| Expected {
            device: HOT.into(),
            metric: "temperature".into(),
            value: *v,
            ts: Some(*ts),
        })
        .collect()
}

fn alarm_events(s: &Value) -> u64 {
    s["alarms"]["events"].as_u64().unwrap_or(0)
}

fn active_overheat(s: &Value) -> bool {
    s["alarms"]["active"].as_array().is_some_and(|a| {
        a.iter()
            .any(|x| x["alarm"] == "overheat" && x["device"] == HOT)
    })
}

async fn retained_now(port: u16, n: u32) -> Vec<gateway_tests::Received> {
    retained_messages(
        port,
        &format!("retained-check-{n}"),
        "alarms/+/+",
        "alarms/zz-marker/end",
    )
    .await
}

/// The retained set once it holds `want` messages (or after 20 s). /status shows an alarm as
/// soon as the engine raises it; the local publish follows once the event is durable, so a
/// single look right after /status can come too early.
async fn retained_once(port: u16, want: usize) -> Vec<gateway_tests::Received> {
    let deadline = Instant::now() + Duration::from_secs(20);
    for attempt in 100.. {
        let retained = retained_now(port, attempt).await;
        if retained.len() >= want || Instant::now() > deadline {
            return retained;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    unreachable!("the loop returns")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crossing_a_threshold_sends_one_raise_and_one_clear_ahead_of_the_backlog_and_retains_it_locally()
 {
    let started = Instant::now();
    let broker = BrokerChoice::for_test("alarms");
    let port = broker.port();
    let receiver = Upstream::start().await;
    receiver.set_default(Reply::Status(503));
    let mut spec = GatewaySpec::new(broker.mqtt_setup(), &receiver.url());
    // One readings batch at a time, so the order below says where the alarms cut in.
    spec.upstream_extra = "batch_max_records = 100\nmax_in_flight = 1\n".into();
    spec.tables = RULE.into();
    let mut gw = GatewayProcess::start(&spec);
    gw.wait_ready().await;
    gw.wait_mqtt_ingest(port).await;
    let live = Subscriber::connect(port, "alarm-watcher", "alarms/+/+").await;

    // A backlog of readings while the cloud answers 503 (all below the threshold).
    let backlog = Stream::start(
        workload::simple_json(3, 1000, "cool"),
        port,
        None,
        "backlog",
    );
    let (mut expected, _) = backlog.finish(Duration::from_secs(60)).await;
    let n = expected.len() as u64;
    gw.wait_status("the backlog ingested", Duration::from_secs(60), |s| {
        (s["ingest"]["readings"]["mqtt"].as_u64()? > n).then_some(())
    })
    .await;

    // Up across the threshold: one raise; no repeat while active.
    let t0 = workload::BASE_TS_MS + 100_000;
    expected.extend(publish_hot(port, &[(30.0, t0), (36.5, t0 + 1), (37.0, t0 + 2)]).await);
    gw.wait_status("the overheat alarm raised", Duration::from_secs(30), |s| {
        active_overheat(s).then_some(())
    })
    .await;
    let retained = retained_once(port, 1).await;
    assert_eq!(retained.len(), 1, "one retained alarm: {retained:?}");
    assert_eq!(retained[0].topic, ALARM_TOPIC, "retained: {retained:?}");
    let raised: Value = serde_json::from_slice(&retained[0].payload).expect("alarm JSON");
    assert_eq!(raised["state"], "raised", "{raised}");
    assert_eq!(raised["value"], 36.5, "{raised}");

    // Down into the hysteresis band (no clear), then below clear_below: one clear.
    expected.extend(publish_hot(port, &[(34.0, t0 + 3), (32.5, t0 + 4)]).await);
    let status = gw
        .wait_status("the overheat alarm cleared", Duration::from_secs(30), |s| {
            (!active_overheat(s) && alarm_events(s) >= 2).then(|| s.clone())
        })
        .await;
    assert_eq!(
        alarm_events(&status),
        2,
        "one raise and one clear: {status:#}"
    );
    let live_msgs = wait_until(
        "the live subscriber to see the raise and the clear's two messages",
        Duration::from_secs(30),
        || async {
            let m: Vec<_> = live
                .messages()
                .into_iter()
                .filter(|m| m.topic == ALARM_TOPIC)
                .collect();
            (m.len() >= 3).then_some(m)
        },
    )
    .await;
    assert_eq!(live_msgs.len(), 3, "{live_msgs:?}");
    let first: Value = serde_json::from_slice(&live_msgs[0].payload).expect("raise JSON");
    assert_eq!(first["state"], "raised");
    // WIRE.md §4: a clear is the cleared event's JSON (not retained), then an empty retained
    // message that removes the raise.
    let cleared: Value = serde_json::from_slice(&live_msgs[1].payload).expect("clear JSON");
    assert_eq!(cleared["state"], "cleared", "{cleared}");
    assert_eq!(cleared["value"], 32.5, "{cleared}");
    assert!(
        live_msgs[2].payload.is_empty(),
        "then an empty message: {:?}",
        live_msgs[2]
    );
    let retained = retained_now(port, 2).await;
    assert!(
        retained.iter().all(|m| m.topic != ALARM_TOPIC),
        "the clear removed the retained alarm: {retained:?}"
    );
    assert!(
        receiver.batches().iter().all(|b| !b.delivered()),
        "nothing delivered while the cloud answers 503"
    );

    // The cloud comes back: alarms first, then the backlog drains.
    receiver.set_default(Reply::Status(200));
    wait_delivered(&receiver, &expected, &[], Duration::from_secs(120)).await;
    gw.barrier(port, &receiver).await;

    let batches = receiver.batches();
    let alarms = receiver.delivered_records("alarms");
    assert_eq!(alarms.len(), 2, "exactly two alarm records: {alarms:#?}");
    let (r, c) = (&alarms[0], &alarms[1]);
    assert_eq!(
        (
            &r["alarm"],
            &r["state"],
            &r["severity"],
            &r["device"],
            &r["metric"]
        ),
        (
            &Value::from("overheat"),
            &Value::from("raised"),
            &Value::from("critical"),
            &Value::from(HOT),
            &Value::from("temperature")
        ),
        "{r}"
    );
    assert_eq!(
        (r["value"].as_f64(), r["threshold"].as_f64()),
        (Some(36.5), Some(35.0)),
        "{r}"
    );
    assert_eq!(r["ts"].as_i64(), Some(t0 + 1), "{r}");
    assert_eq!(
        (&c["alarm"], &c["state"]),
        (&Value::from("overheat"), &Value::from("cleared")),
        "{c}"
    );
    assert_eq!(c["value"].as_f64(), Some(32.5), "{c}");
    assert!(r["seq"].as_u64() < c["seq"].as_u64());

    let delivered: Vec<&Batch> = batches.iter().filter(|b| b.delivered()).collect();
    let alarm_batches = delivered.iter().filter(|b| b.lane == "alarms").count();
    let readings_before = |alarm_batch: usize| {
        let at = delivered
            .iter()
            .enumerate()
            .filter(|(_, b)| b.lane == "alarms")
            .nth(alarm_batch)
            .map(|(i, _)| i)
            .expect("an alarms batch was delivered");
        delivered[..at]
            .iter()
            .filter(|b| b.lane == "readings")
            .count()
    };
    let readings_batches = delivered.iter().filter(|b| b.lane == "readings").count();
    assert!(
        readings_batches >= 20,
        "a real backlog: {readings_batches} readings batches"
    );
    // max_in_flight = 1: at most the one readings batch that was being retried when the cloud
    // came back goes before the first alarms batch. The raise and the clear may travel in two
    // batches (one alarms batch is in flight at a time); once one is delivered, one readings
    // batch may start beside the next, so readings cannot starve under a stream of alarms.
    let (first, last) = (readings_before(0), readings_before(alarm_batches - 1));
    assert!(
        first <= 1 && last <= alarm_batches,
        "the {alarm_batches} alarms batches went upstream after {first} and {last} of \
         {readings_batches} readings batches"
    );
    let readings_before = last;
    eprintln!(
        "alarms: raise + clear delivered after {readings_before} of {readings_batches} backlog \
         batches ({} requests in all, {} answered 503); {:.1} s",
        batches.len(),
        batches.iter().filter(|b| b.status == 503).count(),
        started.elapsed().as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_active_alarm_survives_a_restart_without_being_raised_again() {
    let broker = BrokerChoice::for_test("alarm-restart");
    let port = broker.port();
    let receiver = Upstream::start().await;
    let mut spec = GatewaySpec::new(broker.mqtt_setup(), &receiver.url());
    spec.tables = RULE.into();
    let mut gw = GatewayProcess::start(&spec);
    gw.wait_ready().await;
    gw.wait_mqtt_ingest(port).await;

    let t0 = workload::BASE_TS_MS;
    publish_hot(port, &[(36.0, t0)]).await;
    wait_until("the raise upstream", Duration::from_secs(30), || async {
        (receiver.delivered_count("alarms") >= 1).then_some(())
    })
    .await;

    gw.sigterm();
    assert!(gw.wait_exit(Duration::from_secs(30)).await.success());
    gw.spawn();
    let status = gw.wait_ready().await;
    assert!(
        active_overheat(&status),
        "the active alarm is remembered across a restart: {:#}\n{}",
        status["alarms"],
        gw.stderr_tail()
    );
    gw.wait_mqtt_ingest(port).await;

    // Still hot: no second raise. Then cool: one clear.
    publish_hot(port, &[(37.0, t0 + 1)]).await;
    gw.barrier(port, &receiver).await;
    publish_hot(port, &[(32.0, t0 + 2)]).await;
    wait_until("the clear upstream", Duration::from_secs(30), || async {
        receiver
            .delivered_records("alarms")
            .iter()
            .any(|r| r["state"] == "cleared")
            .then_some(())
    })
    .await;
    gw.barrier(port, &receiver).await;
    let states: Vec<Value> = receiver
        .delivered_records("alarms")
        .iter()
        .map(|r| r["state"].clone())
        .collect();
    assert_eq!(states, ["raised", "cleared"], "one raise, one clear");
}
