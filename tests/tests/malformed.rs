//! Malformed payloads over MQTT: counted by reason in /status, kept as dead letters (listed by
//! `gateway dead-letters list` once the gateway is stopped), and the good readings around them
//! still arrive.

use gateway_tests::workload::{self, Expected, compare};
use gateway_tests::{
    BrokerChoice, GatewayProcess, GatewaySpec, Message, Publisher, PublisherOptions, Upstream,
};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// (topic, payload, reason) of every bad message.
fn bad_messages() -> Vec<(String, Vec<u8>, &'static str)> {
    let t = |s: &str| s.to_owned();
    vec![
        (
            t("sensors/bad-1/temperature"),
            b"{\"value\": 1,".to_vec(),
            "bad_json",
        ),
        (t("sensors/bad-1"), b"[{\"n\":".to_vec(), "bad_json"),
        (t("sensors/bad-1/temperature"), b"abc".to_vec(), "bad_value"),
        (t("sensors/bad-1/temperature"), b"NaN".to_vec(), "bad_value"),
        (
            t("sensors/bad-1/temperature"),
            b"{\"value\": \"hot\"}".to_vec(),
            "bad_value",
        ),
        (
            t("sensors/bad-1/temperature"),
            b"{\"unit\": \"C\"}".to_vec(),
            "no_value",
        ),
        (
            t("sensors/bad-1/temperature"),
            b"{\"value\": 1, \"ts\": \"yesterday\"}".to_vec(),
            "bad_ts",
        ),
        (t("sensors/a/b/c"), b"1".to_vec(), "unknown_topic"),
        (t("sensors/bad-1"), b"21.5".to_vec(), "unknown_topic"),
        (
            t("sensors/bad-1/temperature"),
            vec![b'1'; 2000],
            "too_large",
        ),
        (
            t("sensors/bad-1/temperature"),
            vec![0xff, 0xfe, 0x31],
            "bad_utf8",
        ),
        (t("sensors/bad-1/temperature"), Vec::new(), "empty"),
        (t("sensors/bad-1/temperature"), b"   ".to_vec(), "empty"),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_payloads_are_counted_dead_lettered_and_do_not_stop_good_readings() {
    let started = Instant::now();
    let broker = BrokerChoice::for_test("malformed");
    let receiver = Upstream::start().await;
    let mut spec = GatewaySpec::new(broker.mqtt_setup(), &receiver.url());
    spec.mqtt_extra = "max_payload_bytes = 1024\n".into();
    let mut gw = GatewayProcess::start(&spec);
    gw.wait_ready().await;
    gw.wait_mqtt_ingest(broker.port()).await;

    // Good readings before, between and after every bad one, all from one client, in order.
    let bad = bad_messages();
    let mut messages = Vec::new();
    let mut expected = Vec::new();
    let mut good = |i: usize, messages: &mut Vec<Message>| {
        for k in 0..5 {
            let n = i * 5 + k;
            let ts = workload::BASE_TS_MS + n as i64;
            messages.push(Message {
                topic: "sensors/good-1/temperature".into(),
                payload: format!(r#"{{"value": {n}.5, "ts": {ts}}}"#).into_bytes(),
            });
            expected.push(Expected {
                device: "good-1".into(),
                metric: "temperature".into(),
                value: n as f64 + 0.5,
                ts: Some(ts),
            });
        }
    };
    for (i, (topic, payload, _)) in bad.iter().enumerate() {
        good(i, &mut messages);
        messages.push(Message {
            topic: topic.clone(),
            payload: payload.clone(),
        });
    }
    good(bad.len(), &mut messages);
    Publisher::publish_all(
        PublisherOptions::new(broker.port(), "malformed-pub"),
        messages,
        Duration::from_secs(60),
    )
    .await;

    let mut want: BTreeMap<String, u64> = BTreeMap::new();
    for (_, _, reason) in &bad {
        *want.entry((*reason).to_owned()).or_default() += 1;
    }
    let total_bad = bad.len() as u64;
    let status = gw
        .wait_status(
            &format!("{total_bad} rejected payloads"),
            Duration::from_secs(60),
            |s| (s["ingest"]["rejected_total"].as_u64()? >= total_bad).then(|| s.clone()),
        )
        .await;
    let got: BTreeMap<String, u64> = status["ingest"]["rejected"]
        .as_object()
        .expect("ingest.rejected is an object")
        .iter()
        .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0)))
        .collect();
    assert_eq!(got, want, "rejections by reason");
    assert_eq!(status["ingest"]["rejected_total"], total_bad);

    gw.barrier(broker.port(), &receiver).await;
    let cmp = compare(
        &expected,
        &[],
        &workload::parse_readings(&receiver.delivered_records("readings")),
    );
    assert!(
        cmp.missing.is_empty() && cmp.unexpected.is_empty() && cmp.duplicates == 0,
        "good readings around the bad ones: {}",
        cmp.describe()
    );
    assert_eq!(
        gw.status().await["buffer"]["dead_letters"]["count"],
        total_bad,
        "one dead letter per bad payload"
    );

    gw.sigterm();
    let code = gw.wait_exit(Duration::from_secs(30)).await;
    assert!(code.success(), "graceful stop: {code}");
    let config = gw.config_path().to_str().expect("utf-8 path").to_owned();
    let out = gw.run_cli(&["dead-letters", "list", "--config", &config]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "dead-letters list failed: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), bad.len(), "one line per dead letter:\n{text}");
    // Each line names its reason and topic.
    let mut unmatched = lines.clone();
    for (topic, _, reason) in &bad {
        let at = unmatched
            .iter()
            .position(|l| l.contains(reason) && l.contains(topic.as_str()))
            .unwrap_or_else(|| panic!("no dead letter for {reason} on {topic}:\n{text}"));
        unmatched.remove(at);
    }
    eprintln!(
        "malformed: {} bad payloads counted and dead-lettered, {} good readings delivered; {:.1} s",
        bad.len(),
        expected.len(),
        started.elapsed().as_secs_f64()
    );
}
