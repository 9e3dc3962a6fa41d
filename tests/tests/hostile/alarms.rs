//! Hostile input against the alarm engine and the local alarm publisher: a `/` in a device id,
//! a publish the broker refuses, the clear contract, a reading stamped ahead of the clock, and
//! more devices than `alarm_max_series`.

use super::*;
use gateway_tests::retained_messages;

/// One message at QoS 1.
fn msg(topic: &str, payload: &str) -> Message {
    Message {
        topic: topic.to_owned(),
        payload: payload.as_bytes().to_vec(),
    }
}

/// Waits for the overheat raise of `device` upstream and returns it.
async fn raise_upstream(rig: &Rig, device: &str) -> Value {
    wait_until(&format!("{device}'s overheat raise upstream"), WAIT, || {
        let records = rig.receiver.delivered_records("alarms");
        async move {
            records.into_iter().find(|r| {
                r["device"] == device && r["alarm"] == "overheat" && r["state"] == "raised"
            })
        }
    })
    .await
}

/// Waits until `topic` got at least `n` messages on the local subscriber; returns them all.
async fn local_on(rig: &Rig, topic: &str, n: usize) -> Vec<gateway_tests::Received> {
    wait_until(&format!("{n} message(s) on {topic}"), WAIT, || async {
        let got: Vec<_> = rig
            .local
            .messages()
            .into_iter()
            .filter(|m| m.topic == topic)
            .collect();
        (got.len() >= n).then_some(got)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slash_in_a_device_id_is_escaped_so_its_alarm_topic_keeps_three_levels() {
    let Some(rig) = Rig::start("hostile::alarms::slash", RigOptions::default(), |_| {}).await
    else {
        return;
    };
    rig.publish(
        "slash-device",
        vec![msg(
            "sensors/x/temperature",
            r#"{"device":"a/b","value":40}"#,
        )],
    )
    .await;
    let local = local_on(&rig, "alarms/a%2Fb/overheat", 1).await;
    let json: Value = serde_json::from_slice(&local[0].payload).expect("alarm JSON");
    assert_eq!(
        (&json["device"], &json["state"]),
        (&"a/b".into(), &"raised".into()),
        "{json}"
    );
    raise_upstream(&rig, "a/b").await;
    assert_eq!(rig.metric("gateway_alarm_events_total").await, 1.0);
    assert_eq!(rig.metric("gateway_local_alarm_errors_total").await, 0.0);
    rig.assert_good_device_flows("alarm-slash").await;
    assert!(
        rig.local
            .messages()
            .iter()
            .all(|m| m.topic.split('/').count() == 3),
        "every local alarm topic has three levels: {:?}",
        rig.local.messages()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alarm_the_broker_refuses_is_counted_and_skipped_and_later_alarms_still_publish() {
    // Mosquitto drops the connection of a client that sends a packet over max_packet_size. The
    // alarm of a device with a long (valid, 125-byte) id is about 420 bytes with its topic and
    // JSON; every other packet of this test, the good device's alarm included, is under 250.
    let Some(rig) = Rig::start(
        "hostile-alarms-refused",
        RigOptions {
            mosquitto_conf: "max_packet_size 320",
            ..RigOptions::default()
        },
        |_| {},
    )
    .await
    else {
        return;
    };
    let long = format!("long-{}", "x".repeat(120));
    rig.publish(
        "long-device",
        vec![msg(&format!("sensors/{long}/temperature"), "40")],
    )
    .await;
    // The raise goes upstream regardless: only the local publish is refused.
    raise_upstream(&rig, &long).await;
    rig.wait_metric("gateway_local_alarm_errors_total", 1.0)
        .await;
    rig.assert_good_device_flows("alarm-refused").await;
    assert_eq!(
        rig.metric("gateway_local_alarm_errors_total").await,
        1.0,
        "only the refused event was skipped"
    );
    assert!(
        rig.local
            .messages()
            .iter()
            .all(|m| !m.topic.contains(&long)),
        "the refused alarm never reached the broker"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clear_arrives_as_the_cleared_events_json_then_an_empty_retained_message() {
    let Some(rig) = Rig::start("hostile::alarms::clear", RigOptions::default(), |_| {}).await
    else {
        return;
    };
    let topic = "alarms/clearing/overheat";
    rig.publish(
        "clearing-device",
        vec![
            msg("sensors/clearing/temperature", "40"),
            msg("sensors/clearing/temperature", "30"),
        ],
    )
    .await;
    let got = local_on(&rig, topic, 3).await;
    assert_eq!(got.len(), 3, "raise, cleared JSON, empty: {got:?}");
    let raise: Value = serde_json::from_slice(&got[0].payload).expect("raise JSON");
    let clear: Value = serde_json::from_slice(&got[1].payload).expect("clear JSON");
    assert_eq!(raise["state"], "raised", "{raise}");
    assert_eq!(
        (&clear["state"], &clear["value"]),
        (&"cleared".into(), &30.0.into()),
        "{clear}"
    );
    assert!(
        clear["seq"].as_u64() > raise["seq"].as_u64(),
        "{raise} then {clear}"
    );
    assert!(
        got[2].payload.is_empty(),
        "then an empty message: {:?}",
        got[2]
    );
    // What stays retained: nothing on this topic (the empty retained message removed the raise
    // and the cleared JSON was not retained).
    let retained = retained_messages(
        rig.broker.port(),
        "clear-retained-check",
        "alarms/+/+",
        "alarms/zz-marker/end",
    )
    .await;
    assert!(
        retained.iter().all(|m| m.topic != topic),
        "nothing retained on {topic}: {retained:?}"
    );
    assert_eq!(rig.metric("gateway_alarm_events_total").await, 2.0);
    rig.assert_good_device_flows("alarm-clear").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reading_stamped_ahead_of_the_clock_does_not_blind_its_series() {
    let Some(rig) = Rig::start("hostile::alarms::ahead", RigOptions::default(), |_| {}).await
    else {
        return;
    };
    // 200 s ahead: inside what ingest accepts (max_future_ts_s = 300), so it reaches the engine.
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as i64;
    let ahead = now_ms + 200_000;
    rig.publish(
        "ahead-device",
        vec![
            msg(
                "sensors/ahead/temperature",
                &format!(r#"{{"value":20,"ts":{ahead}}}"#),
            ),
            msg("sensors/ahead/temperature", r#"{"value":40}"#),
        ],
    )
    .await;
    let raised = raise_upstream(&rig, "ahead").await;
    assert_eq!(raised["value"], 40.0, "{raised}");
    local_on(&rig, "alarms/ahead/overheat", 1).await;
    let status = rig.gw.status().await;
    assert_eq!(
        status["alarms"]["out_of_order"], 0,
        "the real reading after the future one was in order: {status:#}"
    );
    rig.assert_good_device_flows("alarm-ahead").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_beyond_alarm_max_series_evict_idle_series_and_a_new_device_still_raises() {
    let Some(rig) = Rig::start("hostile::alarms::crowd", RigOptions::default(), |spec| {
        spec.top_extra = "alarm_max_series = 5".to_owned();
    })
    .await
    else {
        return;
    };
    let crowd: Vec<Message> = (0..30)
        .map(|i| msg(&format!("sensors/crowd-{i}/temperature"), "20"))
        .collect();
    rig.publish("crowd", crowd).await;
    rig.wait_metric("gateway_alarm_series_evicted_total", 25.0)
        .await;
    assert!(rig.metric("gateway_alarm_series").await <= 5.0);
    // A device of the crowd turning hot gets its alarm (it is admitted again).
    rig.publish("crowd-hot", vec![msg("sensors/crowd-0/temperature", "40")])
        .await;
    raise_upstream(&rig, "crowd-0").await;
    local_on(&rig, "alarms/crowd-0/overheat", 1).await;
    rig.assert_good_device_flows("alarm-crowd").await;
    assert_eq!(
        rig.metric("gateway_alarm_series_refused_total").await,
        0.0,
        "nothing refused while idle series could be evicted"
    );
    assert!(rig.metric("gateway_alarm_series").await <= 5.0);
}
