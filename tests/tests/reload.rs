//! SIGHUP reload, with a real signal to the real binary (docs/OPERATIONS.md "Signals"): the
//! alarm rules are read again from the config file. A file that does not load keeps the rules in
//! force and says why in the log; a valid one swaps them for the next reading. The process keeps
//! running throughout, and readings keep arriving upstream.

use gateway_tests::{
    GatewayProcess, GatewaySpec, Message, MqttSetup, Publisher, PublisherOptions, Upstream,
    require_mosquitto, wait_until,
};
use serde_json::Value;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);
const HOT_ABOVE_50: &str =
    "[[alarm]]\nname = \"hot\"\nmetric = \"temperature\"\nabove = 50.0\nclear_below = 45.0\n";
const WARM_ABOVE_30: &str =
    "[[alarm]]\nname = \"warm\"\nmetric = \"temperature\"\nabove = 30.0\nclear_below = 25.0\n";

async fn publish(port: u16, client: &str, device: &str, value: f64) {
    let mut o = PublisherOptions::new(port, client);
    o.window = 1;
    let out = Publisher::publish_all(
        o,
        vec![Message {
            topic: format!("sensors/{device}/temperature"),
            payload: value.to_string().into_bytes(),
        }],
        WAIT,
    )
    .await;
    assert_eq!(out.acked_count(), 1, "PUBACKed by the broker");
}

/// Waits until `device`'s reading is upstream: by then the gateway has judged it.
async fn delivered(receiver: &Upstream, device: &str) {
    wait_until(&format!("{device}'s reading upstream"), WAIT, || async {
        receiver
            .delivered_records("readings")
            .into_iter()
            .find(|r| r["device"] == device)
    })
    .await;
}

fn active(s: &Value) -> Vec<(String, String)> {
    s["alarms"]["active"]
        .as_array()
        .expect("alarms.active")
        .iter()
        .map(|a| {
            (
                a["alarm"].as_str().unwrap_or("?").to_owned(),
                a["device"].as_str().unwrap_or("?").to_owned(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_rereads_the_alarm_rules_and_an_invalid_file_keeps_the_old_ones() {
    let test = "reload::sighup";
    let Some(broker) = require_mosquitto(test) else {
        return;
    };
    let receiver = Upstream::start().await;
    let mut spec = GatewaySpec::new(
        MqttSetup::External {
            port: broker.port(),
        },
        &receiver.url(),
    );
    spec.tables = HOT_ABOVE_50.to_owned();
    let mut gw = GatewayProcess::start(&spec);
    gw.wait_ready().await;
    gw.wait_mqtt_ingest(broker.port()).await;
    let original = std::fs::read_to_string(gw.config_path()).expect("config");
    assert!(original.contains(HOT_ABOVE_50), "{original}");
    let warm = original.replace(HOT_ABOVE_50, WARM_ABOVE_30);

    // A file that does not load (a typo in another table): the rules in force stay.
    let broken = warm.replacen("[mqtt]\n", "[mqtt]\nmax_inflihgt = 5\n", 1);
    assert_ne!(broken, warm, "the config has an [mqtt] table");
    std::fs::write(gw.config_path(), broken).expect("write");
    gw.sighup();
    wait_until("the reload error in the log", WAIT, || async {
        let log = gw.stderr_tail();
        (log.contains("max_inflihgt") && log.contains("keeping the current rules")).then_some(())
    })
    .await;
    publish(broker.port(), "reload-1", "dev-1", 40.0).await;
    delivered(&receiver, "dev-1").await;
    assert_eq!(active(&gw.status().await), [], "40 is not above hot's 50");

    // A valid file: `warm` (above 30) judges the next reading.
    std::fs::write(gw.config_path(), &warm).expect("write");
    gw.sighup();
    wait_until("the reload in the log", WAIT, || async {
        let log = gw.stderr_tail();
        log.contains("reload: 1 alarm rule(s)").then_some(())
    })
    .await;
    publish(broker.port(), "reload-2", "dev-2", 40.0).await;
    delivered(&receiver, "dev-2").await;
    assert_eq!(
        active(&gw.status().await),
        [("warm".to_owned(), "dev-2".to_owned())]
    );
    let raised = wait_until("warm's raise upstream", WAIT, || async {
        receiver
            .delivered_records("alarms")
            .into_iter()
            .find(|r| r["alarm"] == "warm" && r["device"] == "dev-2")
    })
    .await;
    assert_eq!(raised["state"], "raised", "{raised}");

    // Still the same process: SIGTERM stops it cleanly.
    gw.sigterm();
    let code = gw.wait_exit(WAIT).await;
    assert!(
        code.success(),
        "graceful stop exits 0, got {code}\n{}",
        gw.stderr_tail()
    );
}
