//! Windows end to end, with the real gateway binary, mosquitto and an HTTP receiver: a window
//! the gateway is stopped (SIGTERM) and started again in the middle of emits exactly the
//! aggregates of all its readings, once, and its raw readings never go upstream with
//! `raw = "drop"`; a series that goes quiet has its window emitted by the clock; a deadband
//! forwards only the readings that moved.

use gateway_tests::{
    GatewayProcess, GatewaySpec, Message, MqttSetup, Publisher, PublisherOptions, Upstream,
    require_mosquitto, wait_until,
};
use serde_json::Value;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Long enough that the window under test cannot be closed by the clock during the test: it is
/// chosen to start in the future (readings may be stamped up to an hour ahead, see `INGEST`).
const WINDOW_S: i64 = 600;
const INGEST: &str = "[ingest]\nmax_future_ts_s = 3600\n";

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Publishes `(value, ts)` readings of `metric` of `device`, one at a time, each acknowledged
/// (so durable in the gateway) before the next.
async fn publish(port: u16, device: &str, metric: &str, readings: &[(f64, i64)]) {
    let messages = readings
        .iter()
        .map(|(v, ts)| Message {
            topic: format!("sensors/{device}/{metric}"),
            payload: format!(r#"{{"value": {v}, "ts": {ts}, "unit": "C"}}"#).into_bytes(),
        })
        .collect();
    let mut o = PublisherOptions::new(port, format!("pub-{device}-{}", std::process::id()));
    o.window = 1;
    Publisher::publish_all(o, messages, Duration::from_secs(30)).await;
}

/// Upstream readings records of `device`.
fn records_of(receiver: &Upstream, device: &str) -> Vec<Value> {
    receiver
        .delivered_records("readings")
        .into_iter()
        .filter(|r| r["device"] == device)
        .collect()
}

/// (metric, value, ts) of upstream records of `device` whose metric starts with `prefix`.
fn upstream(receiver: &Upstream, device: &str, prefix: &str) -> Vec<(String, f64, i64)> {
    let mut out: Vec<_> = records_of(receiver, device)
        .iter()
        .filter(|r| r["metric"].as_str().is_some_and(|m| m.starts_with(prefix)))
        .map(|r| {
            (
                r["metric"].as_str().unwrap().to_owned(),
                r["value"].as_f64().unwrap(),
                r["ts"].as_i64().unwrap(),
            )
        })
        .collect();
    out.sort_by(|a, b| (a.2, &a.0).cmp(&(b.2, &b.0)));
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_cut_by_a_restart_emits_the_aggregates_of_all_its_readings_once() {
    window_cut_by(Stop::Sigterm, "windows::restart_mid_window").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_cut_by_sigkill_emits_the_aggregates_of_all_its_readings_once() {
    window_cut_by(Stop::Sigkill, "windows::sigkill_mid_window").await;
}

/// How the gateway is stopped in the middle of the window.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Stop {
    Sigterm,
    Sigkill,
}

/// Three readings of a window, the gateway stopped by `stop` and started again, three more:
/// the window's aggregates are those of all six, emitted once, and no raw reading went upstream.
async fn window_cut_by(stop: Stop, test: &str) {
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
    spec.tables = format!(
        "{INGEST}\n[[window]]\nmetric = \"temperature\"\ndevice = \"win-*\"\nwindow_s = {WINDOW_S}\nraw = \"drop\"\n"
    );
    let mut gw = GatewayProcess::start(&spec);
    gw.wait_ready().await;
    gw.wait_mqtt_ingest(broker.port()).await;

    // The window after the next one: it starts in the future and ends within the hour.
    let w = WINDOW_S * 1000;
    let start = (now_ms() / w + 1) * w;
    let end = start + w;
    // Out of order inside the window; the first half before the stop, the rest after.
    let before: Vec<(f64, i64)> = vec![
        (21.5, start + 5_000),
        (19.0, start + 1),
        (25.25, start + 300_000),
    ];
    let after: Vec<(f64, i64)> = vec![(18.0, start), (22.0, end - 1), (20.0, start + 400_000)];
    publish(broker.port(), "win-1", "temperature", &before).await;
    gw.wait_status("3 readings aggregated", Duration::from_secs(30), |s| {
        (s["windows"]["raw_dropped"].as_u64()? >= 3).then_some(())
    })
    .await;

    match stop {
        Stop::Sigterm => {
            gw.sigterm();
            let code = gw.wait_exit(Duration::from_secs(30)).await;
            assert_eq!(code.code(), Some(0), "SIGTERM: exit code 0, got {code}");
        }
        Stop::Sigkill => {
            // The three readings were aggregated; a PUBACK of the gateway's may still be on its
            // way to the broker. Give it time to leave, so that a redelivery (the duplicate
            // at-least-once allows) does not change the count this test checks.
            tokio::time::sleep(Duration::from_millis(500)).await;
            gw.sigkill();
        }
    }
    gw.spawn();
    gw.wait_ready().await;
    gw.wait_mqtt_ingest(broker.port()).await;
    let status = gw.status().await;
    assert_eq!(status["windows"]["open_windows"], 1, "restored: {status}");

    publish(broker.port(), "win-1", "temperature", &after).await;
    // A reading of the next window closes this one.
    publish(broker.port(), "win-1", "temperature", &[(30.0, end + 10)]).await;
    let emitted = wait_until(
        "the window's aggregates upstream",
        Duration::from_secs(30),
        || {
            let got = upstream(&receiver, "win-1", "temperature.");
            async move { (got.len() >= 5).then_some(got) }
        },
    )
    .await;
    // The barrier: everything the gateway stored before it has been delivered.
    gw.barrier(broker.port(), &receiver).await;

    let all: Vec<f64> = before.iter().chain(&after).map(|(v, _)| *v).collect();
    let mean = all.iter().sum::<f64>() / all.len() as f64;
    let want = [
        ("temperature.count".to_owned(), 6.0, end),
        ("temperature.last".to_owned(), 22.0, end),
        ("temperature.max".to_owned(), 25.25, end),
        ("temperature.mean".to_owned(), mean, end),
        ("temperature.min".to_owned(), 18.0, end),
    ];
    let emitted_now = upstream(&receiver, "win-1", "temperature.");
    assert_eq!(emitted_now.len(), 5, "emitted once: {emitted_now:?}");
    assert_eq!(emitted.len(), 5, "{emitted:?}");
    for ((metric, value, ts), (wm, wv, wts)) in emitted_now.iter().zip(&want) {
        assert_eq!((metric, *ts), (wm, *wts));
        assert!((value - wv).abs() < 1e-9, "{metric}: {value} != {wv}");
    }
    // Every upstream record of the device is an aggregate (units kept, null for count).
    let records = records_of(&receiver, "win-1");
    assert!(
        records
            .iter()
            .all(|r| r["metric"].as_str().unwrap().starts_with("temperature.")),
        "raw readings went upstream with raw = \"drop\": {records:?}"
    );
    for r in &records {
        let unit = if r["metric"] == "temperature.count" {
            Value::Null
        } else {
            "C".into()
        };
        assert_eq!(r["unit"], unit, "{r}");
    }
    let status = gw.status().await;
    assert_eq!(status["windows"]["windows_emitted"], 1, "{status}");
    assert_eq!(status["windows"]["late"], 0, "{status}");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_series_window_is_emitted_by_the_clock_and_a_deadband_forwards_what_moved() {
    let Some(broker) = require_mosquitto("windows::clock_and_deadband") else {
        return;
    };
    let receiver = Upstream::start().await;
    let mut spec = GatewaySpec::new(
        MqttSetup::External {
            port: broker.port(),
        },
        &receiver.url(),
    );
    spec.tables = "[[window]]\nmetric = \"temperature\"\ndevice = \"clk-*\"\nwindow_s = 1\nemit = [\"count\", \"max\"]\n\
                   [[deadband]]\nmetric = \"humidity\"\nabs = 1.0\nmax_interval_s = 0\n"
        .to_owned();
    let mut gw = GatewayProcess::start(&spec);
    gw.wait_ready().await;
    gw.wait_mqtt_ingest(broker.port()).await;

    // Two readings stamped in the current second-long window; nothing else arrives for it, so
    // a tick once its end plus the close delay has passed emits it.
    let start = now_ms() / 1000 * 1000;
    publish(
        broker.port(),
        "clk-1",
        "temperature",
        &[(3.0, start), (4.0, start + 999)],
    )
    .await;
    let emitted = wait_until(
        "the clock closes the window",
        Duration::from_secs(30),
        || {
            let got = upstream(&receiver, "clk-1", "temperature.");
            async move { (got.len() >= 2).then_some(got) }
        },
    )
    .await;
    assert_eq!(
        emitted,
        [
            ("temperature.count".to_owned(), 2.0, start + 1000),
            ("temperature.max".to_owned(), 4.0, start + 1000),
        ]
    );
    // raw = "keep" (the default): both raw readings went upstream too.
    gw.barrier(broker.port(), &receiver).await;
    assert_eq!(upstream(&receiver, "clk-1", "temperature").len(), 4);

    let t = now_ms();
    let humidity = [
        (40.0, t),
        (40.5, t + 1),
        (41.2, t + 2),
        (41.9, t + 3),
        (39.0, t + 4),
    ];
    publish(broker.port(), "hum-1", "humidity", &humidity).await;
    gw.barrier(broker.port(), &receiver).await;
    let forwarded: Vec<f64> = upstream(&receiver, "hum-1", "humidity")
        .iter()
        .map(|(_, v, _)| *v)
        .collect();
    assert_eq!(forwarded, [40.0, 41.2, 39.0]);
    let status = gw.status().await;
    assert_eq!(status["windows"]["suppressed"], 2, "{status}");
    gw.stop().await;
}
