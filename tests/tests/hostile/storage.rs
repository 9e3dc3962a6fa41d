//! Hostile input against storage: blocks, dead letters, eviction accounting.

use super::*;
use gateway_tests::Reply;
use std::collections::{BTreeMap, BTreeSet};

/// `/status` path helper.
fn lane(s: &Value, lane: &str) -> Value {
    s["buffer"]["lanes"][lane].clone()
}

fn ingested_mqtt(s: &Value) -> u64 {
    s["ingest"]["readings"]["mqtt"].as_u64().unwrap_or(0)
}

/// Publishes at QoS 1 with a window of 50 (faster than [`Rig::publish`]) and waits for every
/// PUBACK.
async fn publish_fast(rig: &Rig, client_id: &str, messages: Vec<Message>) {
    let o = PublisherOptions::new(rig.broker.port(), client_id);
    let out = Publisher::publish_all(o, messages, Duration::from_secs(120)).await;
    assert_eq!(out.acked_count(), out.acked.len(), "every message PUBACKed");
}

/// Case 6: a reading close to `mqtt.max_payload_bytes` (one JSON object with a ~60 KB unit
/// string), stored right behind small readings of other devices in the same buffer block, used
/// to make the whole block undecodable (inflate capped at 64 KiB): the small readings were lost
/// with it. Now the large record gets a block of its own, and every reading arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reading_near_the_payload_limit_behind_small_ones_of_other_devices_arrives_with_them() {
    let Some(rig) = Rig::start("hostile::storage::large", RigOptions::default(), |_| {}).await
    else {
        return;
    };
    let unit: String = (0..60_000)
        .map(|k| char::from(b'a' + (k * 7 % 26) as u8))
        .collect();
    let big = format!("{{\"value\": 21.5, \"unit\": \"{unit}\"}}");
    assert!(big.len() < 65_536, "under the default max_payload_bytes");
    let mut messages = Vec::new();
    for i in 0..40 {
        messages.push(Message {
            topic: format!("sensors/small-{}/temperature", i % 8),
            payload: format!("{}", 10 + i).into_bytes(),
        });
    }
    messages.push(Message {
        topic: "sensors/big-0/temperature".into(),
        payload: big.into_bytes(),
    });
    for i in 40..80 {
        messages.push(Message {
            topic: format!("sensors/small-{}/temperature", i % 8),
            payload: format!("{}", 10 + i).into_bytes(),
        });
    }
    publish_fast(&rig, "hostile-storage-large", messages).await;

    let arrived = wait_until("all 81 readings upstream", WAIT, || async {
        let mine: Vec<Value> = rig
            .receiver
            .delivered_records("readings")
            .into_iter()
            .filter(|r| {
                let d = r["device"].as_str().unwrap_or("");
                d.starts_with("small-") || d == "big-0"
            })
            .collect();
        (mine.len() >= 81).then_some(mine)
    })
    .await;
    let small: BTreeSet<i64> = arrived
        .iter()
        .filter(|r| r["device"] != "big-0")
        .filter_map(|r| r["value"].as_f64().map(|v| v as i64))
        .collect();
    assert_eq!(small, (10..90).collect(), "every small reading arrived");
    let big = arrived
        .iter()
        .find(|r| r["device"] == "big-0")
        .expect("the large reading arrived");
    assert_eq!(big["value"], 21.5);
    assert_eq!(big["unit"].as_str().map(str::len), Some(60_000));
    let s = rig.gw.status().await;
    assert_eq!(lane(&s, "readings")["undecodable"], 0, "{s:#}");
    assert_eq!(s["buffer"]["dead_letters"]["count"], 0, "{s:#}");
    rig.assert_good_device_flows("storage-large").await;
}

/// Case 7: a batch the upstream refused (400) is parked as a dead letter; a flood of garbage
/// far over the rejected-input quota then evicts only older garbage, counted by kind, and the
/// refused batch is still listed and replays (it reaches the cloud after
/// `gateway dead-letters replay`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_garbage_over_its_quota_leaves_a_refused_batch_listed_and_replayable() {
    let Some(mut rig) = Rig::start(
        "hostile::storage::dead-letters",
        RigOptions::default(),
        |spec| spec.buffer_extra.push_str("dead_letter_max_bytes = 4096\n"),
    )
    .await
    else {
        return;
    };
    // The next batch is refused for good.
    rig.receiver.push_replies([Reply::Status(400)]);
    rig.publish(
        "hostile-storage-refused",
        vec![Message {
            topic: "sensors/refused-0/temperature".into(),
            payload: b"12.5".to_vec(),
        }],
    )
    .await;
    rig.wait_metric("gateway_dead_letters{kind=\"refused\"}", 1.0)
        .await;
    let refused = rig
        .receiver
        .batches()
        .into_iter()
        .find(|b| b.status == 400)
        .expect("a batch answered 400");
    assert!(
        refused.records.iter().any(|r| r["device"] == "refused-0"),
        "the 400 went to refused-0's batch: {:?}",
        refused.records
    );

    // ~300 bytes of letter each: 200 of them are ~15 times the 4 KiB quota.
    let junk: Vec<Message> = (0..200)
        .map(|i| Message {
            topic: "sensors/junk-0/temperature".into(),
            payload: format!("{{\"value\": {i}, \"junk\": \"{}", "#".repeat(200)).into_bytes(),
        })
        .collect();
    publish_fast(&rig, "hostile-storage-junk", junk).await;
    rig.wait_metric(
        "gateway_payloads_rejected_total{reason=\"bad_json\"}",
        200.0,
    )
    .await;
    let input_dropped = rig
        .wait_metric("gateway_dead_letters_dropped_total{kind=\"input\"}", 150.0)
        .await;
    assert!(input_dropped <= 200.0);
    assert_eq!(
        rig.metric("gateway_dead_letters{kind=\"refused\"}").await,
        1.0,
        "the refused batch is kept"
    );
    assert_eq!(
        rig.metric("gateway_dead_letters_dropped_total{kind=\"refused\"}")
            .await,
        0.0
    );
    let s = rig.gw.status().await;
    assert!(
        s["buffer"]["dead_letters"]["input"]["bytes"]
            .as_u64()
            .unwrap()
            <= 4096,
        "{s:#}"
    );
    rig.assert_good_device_flows("storage-dead-letters").await;

    // Listed, then replayed, with the gateway stopped (the CLI opens the buffer itself).
    rig.gw.stop().await;
    let config = rig.gw.config_path().display().to_string();
    let out = rig
        .gw
        .run_cli(&["dead-letters", "list", "--config", &config]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{text}");
    let refused_lines: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("upstream_rejected"))
        .collect();
    assert_eq!(refused_lines.len(), 1, "{text}");
    // The refused batch may also hold the rig's readiness probe, stored just before.
    let n_refused = refused.records.len();
    assert!(
        refused_lines[0].contains(&format!("{n_refused} readings records")),
        "{refused_lines:?}"
    );
    let out = rig
        .gw
        .run_cli(&["dead-letters", "replay", "--config", &config]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains(&format!("replayed: {n_refused} upstream records")),
        "{text}"
    );
    rig.gw.spawn();
    rig.gw.wait_ready().await;
    wait_until(
        "refused-0's reading upstream after the replay",
        WAIT,
        || async {
            rig.receiver
                .delivered_records("readings")
                .into_iter()
                .find(|r| r["device"] == "refused-0" && r["value"] == 12.5)
        },
    )
    .await;
    rig.gw.wait_mqtt_ingest(rig.broker.port()).await;
    rig.assert_good_device_flows("storage-dead-letters-replayed")
        .await;
}

/// A payload dead-lettered under one config and replayed (`gateway dead-letters replay`) under a
/// fixed one is ingested like any reading: through the alarm rules, so its overheat is raised and
/// arrives upstream with the reading, and the engine's saved state knows it afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_payload_goes_through_the_alarm_rules() {
    let Some(mut rig) = Rig::start(
        "hostile::storage::replay-through-rules",
        RigOptions::default(),
        |_| {},
    )
    .await
    else {
        return;
    };
    // Four levels: no topic template of the default config reads it.
    rig.publish(
        "hostile-storage-replay",
        vec![Message {
            topic: "sensors/boiler-1/temperature/raw".into(),
            payload: b"41".to_vec(),
        }],
    )
    .await;
    rig.wait_metric(
        "gateway_payloads_rejected_total{reason=\"unknown_topic\"}",
        1.0,
    )
    .await;
    rig.gw.stop().await;

    // The operator adds the template the device needs, then replays.
    let path = rig.gw.config_path().to_owned();
    let text = std::fs::read_to_string(&path).expect("config");
    assert!(!text.contains("topic_templates"), "{text}");
    let fixed = text.replacen(
        "[mqtt]\n",
        "[mqtt]\ntopic_templates = [\"sensors/{device}/{metric}\", \"sensors/{device}/{metric}/raw\"]\n",
        1,
    );
    assert_ne!(fixed, text, "the config has an [mqtt] table");
    std::fs::write(&path, fixed).expect("write config");
    let config = path.display().to_string();
    let out = rig
        .gw
        .run_cli(&["dead-letters", "replay", "--config", &config]);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("1 readings from payloads that now decode (1 alarm events"),
        "{stdout}"
    );

    rig.gw.spawn();
    rig.gw.wait_ready().await;
    let raised = wait_until("boiler-1's overheat upstream", WAIT, || async {
        rig.receiver
            .delivered_records("alarms")
            .into_iter()
            .find(|r| r["device"] == "boiler-1" && r["alarm"] == "overheat")
    })
    .await;
    assert_eq!(raised["state"], "raised", "{raised}");
    assert_eq!(raised["value"], 41.0, "{raised}");
    let reading = wait_until("boiler-1's reading upstream", WAIT, || async {
        rig.receiver
            .delivered_records("readings")
            .into_iter()
            .find(|r| r["device"] == "boiler-1")
    })
    .await;
    assert_eq!(reading["value"], 41.0, "{reading}");
    assert!(
        raised["seq"].as_u64() < reading["seq"].as_u64(),
        "the alarm event is stored ahead of its reading: {raised} {reading}"
    );
    // The running gateway restored the state the replay saved: the alarm is active.
    let status = rig.gw.status().await;
    let active = status["alarms"]["active"]
        .as_array()
        .expect("alarms.active");
    assert!(
        active
            .iter()
            .any(|a| a["device"] == "boiler-1" && a["alarm"] == "overheat"),
        "boiler-1's overheat among the active alarms: {active:?}"
    );
    rig.gw.wait_mqtt_ingest(rig.broker.port()).await;
    rig.assert_good_device_flows("storage-replay-through-rules")
        .await;
}

/// Case 12: with a tiny readings quota (`drop_oldest`) and a slow cloud, the buffer evicts
/// readings while the forwarder holds others in flight. Each sent reading is then either
/// delivered or counted dropped, never both and never neither: by identity, the readings that
/// never arrived are exactly as many as the dropped counter moved, and none arrived twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eviction_under_a_tiny_quota_with_a_slow_cloud_counts_each_reading_dropped_or_delivered_once()
 {
    let Some(mut rig) = Rig::start(
        "hostile::storage::eviction",
        RigOptions::default(),
        |spec| {
            spec.buffer_extra
                .push_str("max_bytes = 4096\nwhen_full = \"drop_oldest\"\n");
        },
    )
    .await
    else {
        return;
    };
    // Everything stored so far (the readiness probe) reaches the cloud first, so the flood is
    // all the lane holds from here on.
    let port = rig.broker.port();
    rig.gw.barrier(port, &rig.receiver).await;
    let before = rig.gw.status().await;
    let dropped_before = lane(&before, "readings")["dropped"].as_u64().unwrap();
    let delivered_before = rig.receiver.delivered_count("readings");
    rig.receiver.set_default(Reply::Slow {
        status: 200,
        delay: Duration::from_millis(400),
    });

    let devices = 6;
    let n = 1_800;
    let sent: BTreeSet<(String, i64)> = (0..n)
        .map(|i| (format!("evict-{}", i % devices), i as i64))
        .collect();
    let messages: Vec<Message> = (0..n)
        .map(|i| Message {
            topic: format!("sensors/evict-{}/temperature", i % devices),
            payload: format!("{i}").into_bytes(),
        })
        .collect();
    let ingested_before = ingested_mqtt(&before);
    publish_fast(&rig, "hostile-storage-evict", messages).await;
    rig.gw
        .wait_status(
            "every flood reading ingested",
            Duration::from_secs(120),
            |s| (ingested_mqtt(s) >= ingested_before + n as u64).then_some(()),
        )
        .await;
    rig.receiver.set_default(Reply::Status(200));
    let drained = rig
        .gw
        .wait_status("the readings lane drained", Duration::from_secs(120), |s| {
            let l = lane(s, "readings");
            (l["records"] == 0 && l["evicted_in_flight"] == 0 && s["upstream"]["in_flight"] == 0)
                .then(|| s.clone())
        })
        .await;
    let dropped = lane(&drained, "readings")["dropped"].as_u64().unwrap() - dropped_before;
    assert!(dropped > 0, "a 4 KiB quota evicted nothing: {drained:#}");

    // Everything after the baseline that reached the cloud, by identity.
    let delivered: Vec<Value> =
        rig.receiver.delivered_records("readings")[delivered_before..].to_vec();
    let mut arrived: BTreeMap<(String, i64), Vec<u64>> = BTreeMap::new();
    for r in &delivered {
        let Some(d) = r["device"].as_str().filter(|d| d.starts_with("evict-")) else {
            continue;
        };
        let key = (d.to_owned(), r["value"].as_f64().unwrap() as i64);
        arrived
            .entry(key)
            .or_default()
            .push(r["seq"].as_u64().unwrap());
    }
    let unknown: Vec<_> = arrived.keys().filter(|k| !sent.contains(*k)).collect();
    assert!(unknown.is_empty(), "arrived but never sent: {unknown:?}");
    let twice: Vec<_> = arrived.iter().filter(|(_, s)| s.len() > 1).collect();
    assert!(twice.is_empty(), "arrived more than once: {twice:?}");
    let missing: Vec<_> = sent.iter().filter(|k| !arrived.contains_key(*k)).collect();
    // Anything else that entered the readings lane meanwhile (a late readiness probe) is
    // delivered or dropped too: count it from the lane's own counters, not the flood's.
    let appended = lane(&drained, "readings")["appended"].as_u64().unwrap()
        - lane(&before, "readings")["appended"].as_u64().unwrap();
    let others_appended = appended
        .checked_sub(n as u64)
        .expect("every flood reading was appended");
    let others_delivered = delivered
        .iter()
        .filter(|r| !r["device"].as_str().unwrap_or("").starts_with("evict-"))
        .count() as u64;
    let others_dropped = others_appended
        .checked_sub(others_delivered)
        .expect("no other reading delivered twice");
    assert_eq!(
        missing.len() as u64 + others_dropped,
        dropped,
        "{} sent, {} arrived, dropped counter moved by {dropped}; {others_appended} other \
         readings appended, {others_delivered} delivered",
        sent.len(),
        arrived.len()
    );
    eprintln!(
        "hostile::storage::eviction: {} sent, {} delivered, {} dropped (counter {dropped})",
        sent.len(),
        arrived.len(),
        missing.len()
    );
    rig.assert_good_device_flows("storage-eviction").await;
}
