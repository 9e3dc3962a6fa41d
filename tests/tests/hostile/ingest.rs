//! Hostile payloads, ids, timestamps and sizes at ingest, and what reaches logs and the CLI.
//!
//! Each test sends what a careless or hostile device would, checks that it is refused with its
//! reason counted in `gateway_payloads_rejected_total{reason="…"}`, and ends with the
//! well-behaved device's reading and alarm arriving upstream and locally.

use super::*;
use gateway_tests::Message;

/// The `/metrics` sample of rejections for one reason.
fn rejected(reason: &str) -> String {
    format!("gateway_payloads_rejected_total{{reason=\"{reason}\"}}")
}

fn msg(topic: &str, payload: impl Into<Vec<u8>>) -> Message {
    Message {
        topic: topic.to_owned(),
        payload: payload.into(),
    }
}

/// Waits until the receiver has a readings record of `device`/`metric`, and returns it.
async fn wait_reading(rig: &Rig, device: &str, metric: &str) -> Value {
    wait_until(&format!("{device}/{metric} upstream"), WAIT, || async {
        rig.receiver
            .delivered_records("readings")
            .into_iter()
            .find(|r| r["device"] == device && r["metric"] == metric)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_publish_is_dead_lettered_and_acked_and_the_connection_stays_up() {
    let test = "hostile::ingest::oversized";
    let Some(rig) = Rig::start(test, RigOptions::default(), |_| {}).await else {
        return;
    };
    let disconnects_before = rig.metric("gateway_source_disconnects_total").await;
    // 300 KB: over mqtt.max_payload_bytes (64 KiB) and the old 4x read limit (256 KiB), within
    // the broker's and the gateway's packet limit (1 MiB).
    rig.publish(
        "big-client",
        vec![msg("sensors/big-dev/temperature", vec![b'7'; 300 * 1024])],
    )
    .await;
    rig.wait_metric(&rejected("too_large"), 1.0).await;
    // The message was acked: the same device's next reading gets through behind it.
    rig.publish("big-client", vec![msg("sensors/big-dev/temperature", "21")])
        .await;
    let next = wait_reading(&rig, "big-dev", "temperature").await;
    assert_eq!(next["value"], 21.0, "{next}");
    assert_eq!(
        rig.metric("gateway_source_disconnects_total").await,
        disconnects_before,
        "the gateway's broker connection never dropped\n{}",
        rig.gw.stderr_tail()
    );
    assert_eq!(
        rig.metric(&rejected("too_large")).await,
        1.0,
        "counted once, never redelivered"
    );
    rig.assert_good_device_flows("oversized").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wildcards_control_characters_and_overlong_ids_are_bad_id_from_mqtt_senml_and_serial() {
    let test = "hostile::ingest::bad_ids";
    let Some(mut rig) = Rig::start(
        test,
        RigOptions {
            serial: true,
            ..RigOptions::default()
        },
        |_| {},
    )
    .await
    else {
        return;
    };
    // 40 °C: were any of these accepted, overheat would raise on a device whose id cannot be an
    // MQTT topic level.
    let long = "d".repeat(200);
    let bad = vec![
        msg("sensors/any/temperature", r#"{"device":"x#y","value":40}"#),
        msg("sensors/any/temperature", r#"{"device":"a+b","value":40}"#),
        msg(
            "sensors/any/temperature",
            r#"{"device":"nul\u0000id","value":40}"#,
        ),
        msg(
            "sensors/any/temperature",
            format!(r#"{{"device":"{long}","value":40}}"#),
        ),
        msg("sensors/any", r#"[{"bn":"x+y/","n":"temperature","v":40}]"#),
        msg("sensors/any", r#"[{"bn":"ok/","n":"temp#rature","v":40}]"#),
    ];
    let n_mqtt = bad.len() as f64;
    rig.publish("bad-id-client", bad).await;
    rig.write_serial(b"x#y,temperature,-5\n");
    rig.wait_metric(&rejected("bad_id"), n_mqtt + 1.0).await;
    rig.assert_good_device_flows("bad-ids").await;
    // Nothing of them went upstream or raised an alarm.
    for lane in ["readings", "alarms"] {
        let leaked: Vec<Value> = rig
            .receiver
            .delivered_records(lane)
            .into_iter()
            .filter(|r| {
                let d = r["device"].as_str().unwrap_or("");
                let m = r["metric"].as_str().unwrap_or("");
                d.contains(['#', '+', '\0']) || m.contains('#') || d.len() > 128
            })
            .collect();
        assert!(leaked.is_empty(), "{lane}: {leaked:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_far_future_timestamp_is_bad_ts_and_the_series_still_raises_overheat() {
    let test = "hostile::ingest::future_ts";
    let Some(rig) = Rig::start(test, RigOptions::default(), |_| {}).await else {
        return;
    };
    let topic = "sensors/clock-dev/temperature";
    rig.publish(
        "future-client",
        vec![msg(topic, r#"{"value":20,"ts":4102444800000}"#)],
    )
    .await;
    rig.wait_metric(&rejected("bad_ts"), 1.0).await;
    // A real reading of the same device and metric, stamped now by the gateway, is not "older"
    // than anything: overheat raises.
    rig.publish("future-client", vec![msg(topic, "40")]).await;
    let raise = wait_until("clock-dev's overheat raise upstream", WAIT, || async {
        rig.receiver
            .delivered_records("alarms")
            .into_iter()
            .find(|r| r["device"] == "clock-dev" && r["alarm"] == "overheat")
    })
    .await;
    assert_eq!(raise["state"], "raised", "{raise}");
    assert_eq!(raise["value"], 40.0, "{raise}");
    let stamped: Vec<Value> = rig
        .receiver
        .delivered_records("readings")
        .into_iter()
        .filter(|r| r["ts"].as_i64().unwrap_or(0) >= 4_102_444_800_000)
        .collect();
    assert!(stamped.is_empty(), "{stamped:?}");
    rig.assert_good_device_flows("future-ts").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_senml_pack_whose_sum_overflows_is_bad_value_and_nothing_null_goes_upstream() {
    let test = "hostile::ingest::overflow";
    let Some(rig) = Rig::start(test, RigOptions::default(), |_| {}).await else {
        return;
    };
    rig.publish(
        "overflow-client",
        vec![
            msg(
                "sensors/any",
                r#"[{"bn":"ovf-dev/","n":"temperature","bv":1.7e308,"v":1.7e308}]"#,
            ),
            msg(
                "sensors/any",
                r#"[{"bn":"ovf-dev/","n":"pressure","bv":-1.7e308,"v":-1.0e308}]"#,
            ),
        ],
    )
    .await;
    rig.wait_metric(&rejected("bad_value"), 2.0).await;
    rig.assert_good_device_flows("overflow").await;
    let records = rig.receiver.delivered_records("readings");
    assert!(!records.is_empty());
    for r in &records {
        assert!(
            r["value"].is_f64() || r["value"].is_i64() || r["value"].is_u64(),
            "{r}"
        );
        assert_ne!(r["device"], "ovf-dev", "{r}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc_8428_urn_base_names_arrive_as_device_and_metric() {
    let test = "hostile::ingest::senml_urn";
    let Some(rig) = Rig::start(test, RigOptions::default(), |spec| {
        spec.tables.push_str(
            "\n[[alarm]]\nname = \"overvolt\"\nmetric = \"voltage\"\nabove = 100.0\nseverity = \"warning\"\n",
        );
    })
    .await
    else {
        return;
    };
    rig.publish(
        "senml-client",
        vec![msg(
            "sensors/senml-gw",
            r#"[{"bn":"urn:dev:ow:10e2073a01080063:","n":"voltage","u":"V","v":120.1},
                {"n":"current","u":"A","v":1.2}]"#,
        )],
    )
    .await;
    let urn = "urn:dev:ow:10e2073a01080063";
    let voltage = wait_reading(&rig, urn, "voltage").await;
    assert_eq!(
        (voltage["value"].as_f64(), voltage["unit"].as_str()),
        (Some(120.1), Some("V"))
    );
    let current = wait_reading(&rig, urn, "current").await;
    assert_eq!(
        (current["value"].as_f64(), current["unit"].as_str()),
        (Some(1.2), Some("A"))
    );
    // A rule on `voltage` now matches it.
    let raise = wait_until("overvolt raise upstream", WAIT, || async {
        rig.receiver
            .delivered_records("alarms")
            .into_iter()
            .find(|r| r["alarm"] == "overvolt")
    })
    .await;
    assert_eq!(
        (raise["device"].as_str(), raise["metric"].as_str()),
        (Some(urn), Some("voltage"))
    );
    assert_eq!(
        rig.metric("gateway_payloads_rejected_total{reason=\"bad_id\"}")
            .await,
        0.0
    );
    rig.assert_good_device_flows("senml-urn").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_characters_never_reach_the_log_or_the_cli_raw() {
    let test = "hostile::ingest::control_chars";
    let Some(mut rig) = Rig::start(test, RigOptions::default(), |_| {}).await else {
        return;
    };
    // The first rejection is logged (later ones within 5 s are counted, not logged): it carries
    // a line break that would start a forged log line and an ANSI colour sequence.
    let forged = "\u{1b}[31mRED\nFORGED-LINE gateway: all good\r\u{1b}[0m";
    rig.publish(
        "ctl-client",
        vec![
            msg("sensors/ctl-dev/temperature", forged),
            msg(
                "sensors/ctl-dev/temperature",
                r#"{"device":"evil\nFORGED-LINE \u001b[2J","value":1}"#,
            ),
        ],
    )
    .await;
    rig.wait_metric(&rejected("bad_value"), 1.0).await;
    rig.wait_metric(&rejected("bad_id"), 1.0).await;
    let clean = |what: &str, text: &str| {
        assert!(
            !text.contains('\u{1b}'),
            "{what} carries a raw ESC:\n{text}"
        );
        assert!(!text.contains('\r'), "{what} carries a raw CR:\n{text}");
        assert!(
            !text.lines().any(|l| l.starts_with("FORGED-LINE")),
            "{what} has a forged line:\n{text}"
        );
    };
    // The rejection was logged, escaped, on one line.
    let logged = wait_until("the rejection in the gateway's stderr", WAIT, || async {
        let tail = rig.gw.stderr_tail();
        tail.lines()
            .any(|l| l.contains("payload rejected") && l.contains("\\u{1b}[31mRED\\nFORGED-LINE"))
            .then_some(tail)
    })
    .await;
    clean("stderr", &logged);

    // `dead-letters list` needs the buffer, so the gateway stops for it and starts again.
    rig.gw.sigterm();
    let status = rig.gw.wait_exit(WAIT).await;
    assert!(status.success(), "{status}\n{}", rig.gw.stderr_tail());
    let config = rig.gw.config_path().display().to_string();
    let out = rig
        .gw
        .run_cli(&["dead-letters", "list", "--config", &config]);
    assert!(out.status.success(), "{out:?}");
    let listed = String::from_utf8_lossy(&out.stdout).into_owned();
    clean("dead-letters list", &listed);
    assert!(listed.contains("\\u{1b}[31mRED\\nFORGED-LINE"), "{listed}");
    assert!(
        listed.contains("bad_id") && listed.contains("bad_value"),
        "{listed}"
    );

    rig.gw.spawn();
    rig.gw.wait_ready().await;
    rig.gw.wait_mqtt_ingest(rig.broker.port()).await;
    clean("stderr after restart", &rig.gw.stderr_tail());
    rig.assert_good_device_flows("control-chars").await;
}
