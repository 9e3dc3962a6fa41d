//! device-sim's `spike` scenario against a running gateway raises and clears the alarm, once per
//! device, and the events reach the cloud in the alarm lane.

use device_sim::{Broker, FleetConfig, Scenario, run_fleet};
use gateway_tests::{GatewayProcess, GatewaySpec, MqttSetup, Upstream, free_port, wait_until};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_spike_scenario_raises_and_clears_an_alarm_once_per_device() {
    let receiver = Upstream::start().await;
    let port = free_port();
    let mut spec = GatewaySpec::new(MqttSetup::Embedded { port }, &receiver.url());
    spec.tables = "[[alarm]]\nname = \"overheat\"\nmetric = \"temperature\"\nabove = 35.0\n\
                   clear_below = 33.0\nfor_s = 1\nseverity = \"critical\"\n"
        .to_owned();
    let mut gateway = GatewayProcess::start(&spec);
    gateway.wait_ready().await;
    gateway.wait_mqtt_ingest(port).await;

    let broker: Broker = format!("127.0.0.1:{port}").parse().unwrap();
    let mut cfg = FleetConfig::new(broker);
    cfg.devices = 3;
    cfg.rate_hz = 10.0;
    cfg.duration = Some(Duration::from_secs(6));
    cfg.scenarios = vec!["spike:at=1s,for=3s".parse::<Scenario>().unwrap()];
    cfg.progress = false;
    let report = run_fleet(cfg, std::future::pending()).await.unwrap();
    assert!(report.summary.totals.readings_acked > 0);

    wait_until(
        "a raise and a clear per device upstream",
        Duration::from_secs(30),
        || {
            let n = receiver.delivered_count("alarms");
            async move { (n >= 6).then_some(()) }
        },
    )
    .await;
    // Anything repeated was stored before this and has been delivered after it.
    gateway.settle(port, &receiver).await;
    let alarms = receiver.delivered_records("alarms");
    for device in ["dev-0001", "dev-0002", "dev-0003"] {
        let states: Vec<&str> = alarms
            .iter()
            .filter(|r| r["device"] == device && r["alarm"] == "overheat")
            .map(|r| r["state"].as_str().unwrap())
            .collect();
        assert_eq!(states, ["raised", "cleared"], "{device}: {alarms:?}");
    }
    let raised = alarms.iter().find(|r| r["state"] == "raised").unwrap();
    assert_eq!(raised["severity"], "critical");
    assert_eq!(raised["threshold"], 35.0);
    assert!(raised["value"].as_f64().unwrap() > 35.0);
}
