//! MQTT ingest end to end: several QoS 1 publishers → broker → gateway → receiver, every payload
//! form of WIRE.md §1, compared reading by reading.
//!
//! `E2E_INGEST_READINGS` (default 10000) sets the number of readings per run.

use gateway_tests::workload::{self, check_seq_increasing, check_seq_stable, compare};
use gateway_tests::{
    GatewayProcess, GatewaySpec, MqttSetup, Publisher, PublisherOptions, Upstream, env_usize,
    free_port, require_mosquitto,
};
use std::time::{Duration, Instant};

const CLIENTS: usize = 4;

async fn ingest_through(setup: MqttSetup, broker_port: u16, label: &str, restart_after: bool) {
    let started = Instant::now();
    let n = env_usize("E2E_INGEST_READINGS", 10_000);
    let receiver = Upstream::start().await;
    let mut spec = GatewaySpec::new(setup, &receiver.url());
    spec.upstream_extra = "batch_max_records = 500\n".into();
    let mut gw = GatewayProcess::start(&spec);
    gw.wait_ready().await;
    gw.wait_mqtt_ingest(broker_port).await;

    let work = workload::mixed_forms(CLIENTS, n, "dev");
    let publishers: Vec<Publisher> = (0..CLIENTS)
        .map(|c| {
            Publisher::spawn(
                PublisherOptions::new(broker_port, format!("{label}-pub-{c}")),
                work.messages(c),
            )
        })
        .collect();
    for p in publishers {
        let outcome = p.finish(Duration::from_secs(120)).await;
        assert_eq!(outcome.acked_count(), outcome.acked.len());
    }
    let expected = work.all_expected();
    let want = expected.len();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let got = workload::parse_readings(&receiver.delivered_records("readings"));
        let cmp = compare(&expected, &[], &got);
        if cmp.missing.is_empty() {
            break;
        }
        if Instant::now() >= deadline {
            let status = gw.status().await;
            panic!(
                "{label}: not every reading delivered within 120 s: {}\ningest: {}\n{}",
                cmp.describe(),
                status["ingest"],
                gw.stderr_tail()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Anything extra (a duplicate) would arrive before a probe published now.
    gw.barrier(broker_port, &receiver).await;
    let delivered = workload::parse_readings(&receiver.delivered_records("readings"));
    let cmp = compare(&expected, &[], &delivered);
    assert!(
        cmp.missing.is_empty() && cmp.unexpected.is_empty() && cmp.duplicates == 0,
        "{label}: readings differ from what was published: {}",
        cmp.describe()
    );
    assert!(
        delivered
            .iter()
            .filter(|r| r.device != workload::PROBE_DEVICE)
            .all(|r| r.source == "mqtt"),
        "every reading has source mqtt"
    );
    // Units travel with the readings that carry one.
    let unit_of = |metric: &str| {
        delivered
            .iter()
            .filter(|r| r.metric == metric)
            .map(|r| r.unit.clone())
            .collect::<std::collections::BTreeSet<_>>()
    };
    assert_eq!(
        unit_of("temperature"),
        [Some("C".to_owned())].into(),
        "JSON unit"
    );
    assert_eq!(
        unit_of("co2"),
        [Some("ppm".to_owned())].into(),
        "SenML unit"
    );
    assert_eq!(
        unit_of("counter"),
        [None].into(),
        "bare numbers have no unit"
    );

    let batches = receiver.batches();
    check_seq_increasing(&batches, "readings").unwrap();
    check_seq_stable(&batches).unwrap();
    assert!(receiver.errors().is_empty(), "{:?}", receiver.errors());
    assert!(
        batches
            .iter()
            .all(|b| b.gateway_id == "gw-e2e" && b.content_encoding.as_deref() == Some("gzip")),
        "every batch is gzip'd and names the gateway"
    );
    let status = gw.status().await;
    assert_eq!(status["ingest"]["rejected_total"], 0, "{status:#}");
    // Every message the gateway stored was acked, and each ack's wait was counted (the probes
    // of wait_mqtt_ingest and barrier come on top).
    let messages: usize = work.clients.iter().map(Vec::len).sum();
    let acks = &status["ingest"]["ack_latency_ms"];
    assert!(
        acks["count"].as_u64().is_some_and(|c| c >= messages as u64) && acks["p99"].is_number(),
        "{label}: {messages} messages acked, ack latency {acks}"
    );
    // Each group commit's two phases were timed, once per commit (one committer: at most one
    // commit between reading the count and the histograms).
    let commits = status["buffer"]["commits"].as_u64().unwrap();
    for phase in ["write", "flush"] {
        let t = &status["buffer"]["commit_ms"][phase];
        let n = t["count"].as_u64().unwrap();
        assert!(
            commits > 0 && (commits..=commits + 1).contains(&n) && t["p99"].is_number(),
            "{label}: {commits} commits, {phase} phase {t}"
        );
        assert!(t["max"].as_f64().is_some_and(|m| m > 0.0), "{label}: {t}");
    }
    let metrics = reqwest::get(format!("{}/metrics", gw.admin_url()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let count = metrics
        .lines()
        .find_map(|l| l.strip_prefix("gateway_buffer_commit_seconds_count{phase=\"flush\"} "))
        .and_then(|v| v.parse::<f64>().ok());
    assert!(
        count.is_some_and(|c| c >= commits as f64),
        "{label}: /metrics has the flush phase's count: {count:?}"
    );

    if restart_after {
        // Every message was stored, so every one must have been PUBACKed: after a clean stop
        // and a restart on the same persistent session the broker has nothing to redeliver.
        gw.stop().await;
        gw.spawn();
        gw.wait_ready().await;
        gw.barrier(broker_port, &receiver).await;
        let again = workload::parse_readings(&receiver.delivered_records("readings"));
        let cmp = compare(&expected, &[], &again);
        assert!(
            cmp.missing.is_empty() && cmp.unexpected.is_empty() && cmp.duplicates == 0,
            "{label}: after a clean restart the broker redelivered stored readings (PUBACKs that \
             were never sent): {}",
            cmp.describe()
        );
    }

    // Delivered readings leave the buffer.
    gw.wait_status(
        "the readings lane to drain once everything is delivered",
        Duration::from_secs(30),
        |s| (s["buffer"]["lanes"]["readings"]["records"].as_u64() == Some(0)).then_some(()),
    )
    .await;
    eprintln!(
        "{label}: {want} readings in {} messages from {CLIENTS} clients delivered in {} batches; {:.1} s",
        work.clients.iter().map(Vec::len).sum::<usize>(),
        batches.len(),
        started.elapsed().as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_readings_of_every_form_arrive_exactly_as_sent_through_mosquitto() {
    // Named after mosquitto, so only mosquitto: the embedded broker has its own test below.
    let Some(broker) = require_mosquitto("mqtt_ingest/mosquitto") else {
        return;
    };
    let setup = MqttSetup::External {
        port: broker.port(),
    };
    ingest_through(setup, broker.port(), "mosquitto", true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_readings_of_every_form_arrive_exactly_as_sent_through_the_embedded_broker() {
    let port = free_port();
    ingest_through(MqttSetup::Embedded { port }, port, "embedded", false).await;
}
