//! The gateway binary polling the real `device-sim modbus`, over TCP on port 0 and over RTU on
//! a real pty: every type and word order of the holding pattern arrives upstream scaled, with
//! source "modbus"; a slave that falls silent is counted and retried while the others on its
//! bus keep their poll rate; corrupted frames are counted and polling resumes. Counts are
//! checked against the simulator's own summary.

use gateway_tests::{GatewayProcess, GatewaySpec, ModbusSim, MqttSetup, UnitCounts, Upstream};
use serde_json::Value;
use std::time::Duration;

fn register(metric: &str, kind: &str, address: u16, extra: &str) -> String {
    format!(
        "[[modbus.register]]\nmetric = \"{metric}\"\nkind = \"{kind}\"\naddress = {address}\n{extra}\n"
    )
}

fn slave(device: &str, url: &str, unit: u8, extra: &str, registers: &str) -> String {
    format!(
        "[[modbus]]\ndevice = \"{device}\"\nurl = \"{url}\"\nunit_id = {unit}\n{extra}\n{registers}"
    )
}

/// The slave of `device` in `/status`.
fn of<'a>(status: &'a Value, device: &str) -> &'a Value {
    status["modbus"]
        .as_array()
        .and_then(|a| a.iter().find(|s| s["device"] == device))
        .unwrap_or_else(|| panic!("no slave {device} in {status:#}"))
}

fn n(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

fn unit(summary: &[UnitCounts], unit: u8) -> UnitCounts {
    *summary
        .iter()
        .find(|u| u.unit == unit)
        .expect("unit in summary")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_type_and_word_order_of_the_holding_pattern_arrives_upstream_scaled_over_tcp() {
    let sim = ModbusSim::tcp(&["--devices", "1"]);
    let receiver = Upstream::start().await;
    let mut spec = GatewaySpec::new(MqttSetup::Disabled, &receiver.url());
    let mut registers = String::new();
    for (metric, address, extra) in [
        (
            "u16",
            0,
            "type = \"u16\"\nscale = 0.5\noffset = 1.0\nunit = \"V\"",
        ),
        ("i16", 1, "type = \"i16\"\nscale = 0.1"),
        ("u32_big", 2, "type = \"u32\""),
        ("u32_little", 4, "type = \"u32\"\nword_order = \"little\""),
        ("i32_big", 6, "type = \"i32\""),
        ("i32_little", 8, "type = \"i32\"\nword_order = \"little\""),
        (
            "f32_big",
            10,
            "type = \"f32\"\nscale = 2.0\noffset = -1.0\nunit = \"W\"",
        ),
        ("f32_little", 12, "type = \"f32\"\nword_order = \"little\""),
        ("unit_id", 14, ""),
    ] {
        registers += &register(metric, "holding", address, extra);
    }
    registers += &register("temp_big", "input", 0, "type = \"f32\"");
    registers += &register(
        "temp_little",
        "input",
        12,
        "type = \"f32\"\nword_order = \"little\"",
    );
    registers += &register("coil0", "coil", 0, "");
    registers += &register("coil1", "coil", 1, "");
    registers += &register("di0", "discrete", 0, "");
    registers += &register("di1", "discrete", 1, "");
    spec.tables = slave("meter-1", &sim.at.url(), 1, "poll_ms = 200", &registers);
    let mut gw = GatewayProcess::start(&spec);
    gw.wait_ready().await;
    let records = gateway_tests::wait_until("two polls upstream", Duration::from_secs(30), || {
        let records = receiver.delivered_records("readings");
        async move { (records.len() >= 30).then_some(records) }
    })
    .await;
    let first_ts = records[0]["ts"].as_i64().unwrap();
    let poll: Vec<&Value> = records.iter().filter(|r| r["ts"] == first_ts).collect();
    assert_eq!(
        poll.len(),
        15,
        "one reading per register of the poll: {poll:#?}"
    );
    let get = |metric: &str| -> &Value {
        let r = poll.iter().find(|r| r["metric"] == metric).unwrap();
        assert_eq!(
            (r["device"].as_str(), r["source"].as_str()),
            (Some("meter-1"), Some("modbus"))
        );
        r
    };
    let value = |metric: &str| get(metric)["value"].as_f64().unwrap();
    assert_eq!(value("u16"), 51234.0 * 0.5 + 1.0);
    assert!((value("i16") + 123.4).abs() < 1e-9);
    assert_eq!(value("u32_big"), 3_000_000_123.0);
    assert_eq!(value("u32_little"), 3_000_000_123.0);
    assert_eq!(value("i32_big"), -123_456_789.0);
    assert_eq!(value("i32_little"), -123_456_789.0);
    assert_eq!(value("f32_big"), 230.5 * 2.0 - 1.0);
    assert_eq!(value("f32_little"), 230.5);
    assert_eq!(value("unit_id"), 1.0);
    assert_eq!(
        value("temp_big"),
        value("temp_little"),
        "one live value, both word orders"
    );
    assert!((-40.0..=85.0).contains(&value("temp_big")));
    assert_eq!(
        ["coil0", "coil1", "di0", "di1"].map(value),
        [1.0, 0.0, 0.0, 1.0]
    );
    assert_eq!(get("u16")["unit"], "V");
    assert_eq!(get("f32_big")["unit"], "W");
    assert!(get("i16")["unit"].is_null());
    let status = gw.status().await;
    assert_eq!(of(&status, "meter-1")["state"], "up");
    assert!(n(&status["ingest"]["readings"]["modbus"]) >= 30);
    let status_text = gw.run_cli(&["status", "--admin", &gw.admin_url()]);
    let text = String::from_utf8_lossy(&status_text.stdout);
    assert!(text.contains("modbus:    meter-1 (tcp://"), "{text}");
    gw.stop().await;
    let summary = sim.stop().await;
    assert_eq!(unit(&summary, 1).exceptions, 0);
}

/// RTU on a pty: three units on one bus, poll_ms 100.
fn rtu_bus(url: &str, backoff_max_ms: u64) -> String {
    let mut tables = String::new();
    for u in 1..=3u8 {
        tables += &slave(
            &format!("unit-{u}"),
            url,
            u,
            &format!("poll_ms = 100\ntimeout_ms = 150\nbackoff_max_ms = {backoff_max_ms}"),
            &(register("temperature", "input", 0, "type = \"f32\"")
                + &register("pressure_pa", "input", 10, "type = \"u32\"")
                + &register("unit", "holding", 14, "")),
        );
    }
    tables
}

/// Three units of `device-sim modbus` on a pty at 19200 baud with `fault`, the gateway polling
/// them every 2 s on one RTU bus, ready.
async fn rtu_bus_with_fault(fault: &str) -> (ModbusSim, Upstream, GatewayProcess) {
    let sim = ModbusSim::pty(&["--devices", "3", "--baud", "19200", "--fault", fault]);
    let receiver = Upstream::start().await;
    let mut spec = GatewaySpec::new(MqttSetup::Disabled, &receiver.url());
    spec.tables = rtu_bus(&sim.at.url(), 2000);
    let mut gw = GatewayProcess::start(&spec);
    gw.wait_ready().await;
    (sim, receiver, gw)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_slave_on_an_rtu_bus_is_counted_and_retried_while_the_others_keep_their_rate() {
    let (sim, receiver, mut gw) = rtu_bus_with_fault("silent:unit=2,at=3").await;
    gw.wait_status("unit-2 to go down", Duration::from_secs(30), |s| {
        (of(s, "unit-2")["state"] == "down").then_some(())
    })
    .await;
    let before = gw.status().await;
    // Long enough for the backoff to reach its 2 s ceiling and for many polls of the others.
    gw.wait_status(
        "unit-1 to poll 60 more times",
        Duration::from_secs(60),
        |s| (n(&of(s, "unit-1")["polls"]) >= n(&of(&before, "unit-1")["polls"]) + 60).then_some(()),
    )
    .await;
    let after = gw.status().await;
    let polls = |s: &Value, d: &str| n(&of(s, d)["polls"]);
    let (p1, p2, p3) = (
        polls(&after, "unit-1") - polls(&before, "unit-1"),
        polls(&after, "unit-2") - polls(&before, "unit-2"),
        polls(&after, "unit-3") - polls(&before, "unit-3"),
    );
    // The two that answer took turns: their poll counts are within a few of each other, and
    // the silent one got only backoff attempts meanwhile.
    assert!(p1.abs_diff(p3) <= 3, "unit-1 {p1} and unit-3 {p3} polls");
    assert!(
        p2 * 5 < p1,
        "unit-2 attempted {p2} times against {p1} polls of unit-1"
    );
    assert!(p2 >= 1, "unit-2 is still retried");
    for d in ["unit-1", "unit-3"] {
        let slave = of(&after, d);
        assert_eq!(slave["state"], "up", "{slave:#}");
        assert_eq!(n(&slave["errors"]["timeout"]), 0, "{slave:#}");
    }
    let two = of(&after, "unit-2");
    assert!(n(&two["backoff_ms"]) > 0, "{two:#}");
    // /healthz names the silent slave, and only it: degraded, still 200.
    let health = reqwest::get(format!("{}/healthz", gw.admin_url()))
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    let health: Value = serde_json::from_slice(&health.bytes().await.unwrap()).unwrap();
    assert_eq!(health["status"], "degraded", "{health}");
    let reasons = health["degraded"].as_array().unwrap();
    assert!(
        reasons
            .iter()
            .any(|r| r == "modbus unit-2: not answering (polled with backoff)"),
        "{health}"
    );
    assert!(
        !reasons.iter().any(|r| r
            .as_str()
            .is_some_and(|r| r.contains("unit-1") || r.contains("unit-3"))),
        "{health}"
    );
    let timeouts = n(&two["errors"]["timeout"]);
    gw.stop().await;
    let summary = sim.stop().await;
    // Every request the simulator ignored is a timeout the gateway counted (one in flight at
    // the stop may be counted by one side only).
    assert!(
        unit(&summary, 2).unanswered.abs_diff(timeouts) <= 1,
        "simulator {:?}, gateway {timeouts} timeouts",
        unit(&summary, 2)
    );
    assert_eq!(unit(&summary, 1).unanswered, 0);
    let delivered = receiver.delivered_records("readings");
    assert!(delivered.iter().all(|r| r["source"] == "modbus"));
    assert!(
        delivered
            .iter()
            .any(|r| r["device"] == "unit-3" && r["metric"] == "unit" && r["value"] == 3.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupted_rtu_frames_are_counted_and_polling_resumes() {
    let (sim, receiver, mut gw) = rtu_bus_with_fault("corrupt:unit=1,every=5").await;
    gw.wait_status(
        "ten corrupt answers of unit-1",
        Duration::from_secs(60),
        |s| (n(&of(s, "unit-1")["errors"]["corrupt"]) >= 10).then_some(()),
    )
    .await;
    let status = gw.status().await;
    let one = of(&status, "unit-1");
    // Every 5th answer is corrupt and a poll of unit-1 is three requests (inputs 0-1 and 10-11,
    // holding 14): a poll meets at most one corrupt answer, and every other poll is complete
    // (one may be under way). The slave was never taken for dead.
    let (polls, complete, corrupt) = (
        n(&one["polls"]),
        n(&one["polls_complete"]),
        n(&one["errors"]["corrupt"]),
    );
    assert!((0..=1).contains(&(polls - complete - corrupt)), "{one:#}");
    assert_eq!(n(&one["errors"]["timeout"]), 0, "{one:#}");
    for d in ["unit-2", "unit-3"] {
        let slave = of(&status, d);
        let errors: u64 = slave["errors"].as_object().unwrap().values().map(n).sum();
        assert_eq!(errors, 0, "{slave:#}");
        assert_eq!(slave["state"], "up", "{slave:#}");
    }
    // The simulator stopped first, the gateway's count is final: it is the simulator's (one
    // answer may have been on the wire when it stopped).
    let summary = sim.stop().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let counted = n(&of(&gw.status().await, "unit-1")["errors"]["corrupt"]);
    assert!(
        unit(&summary, 1).corrupted.abs_diff(counted) <= 1,
        "simulator {:?}, gateway {counted}",
        unit(&summary, 1)
    );
    gw.stop().await;
    let delivered = receiver.delivered_records("readings");
    assert!(delivered.iter().filter(|r| r["device"] == "unit-1").count() > 20);
}
