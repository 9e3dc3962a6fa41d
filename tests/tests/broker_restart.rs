//! Mosquitto stopped and started again on the same port during ingest, persistence on: the
//! gateway reconnects, resubscribes and loses nothing the broker acknowledged to publishers.
//!
//! The broker is stopped with SIGTERM, so it saves its database (sessions, subscriptions,
//! queued QoS 1 messages) on the way out; after a SIGKILL mosquitto itself loses up to one
//! `autosave_interval` of state, which no gateway can recover.
//!
//! `E2E_BROKER_RESTART_MESSAGES` (default 6000) sets the messages per run.

use gateway_tests::workload::{self, Stream, check_seq_stable, wait_delivered};
use gateway_tests::{
    GatewayProcess, GatewaySpec, MqttSetup, Upstream, env_usize, require_mosquitto,
};
use std::time::{Duration, Instant};

const CLIENTS: usize = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_reconnects_and_resubscribes_after_mosquitto_restarts_and_loses_nothing_acked() {
    let test = "broker-restart";
    let Some(mut broker) = require_mosquitto(test) else {
        return;
    };
    let started = Instant::now();
    let total = env_usize("E2E_BROKER_RESTART_MESSAGES", 6000);
    let per_client = total / CLIENTS;
    let receiver = Upstream::start().await;
    let spec = GatewaySpec::new(
        MqttSetup::External {
            port: broker.port(),
        },
        &receiver.url(),
    );
    let mut gw = GatewayProcess::start(&spec);
    gw.wait_ready().await;
    gw.wait_mqtt_ingest(broker.port()).await;

    // Paced over ~6 s: a quarter is in after ~1.5 s, so the broker restarts mid-stream even on
    // a loaded machine.
    let stream = Stream::start(
        workload::simple_json(CLIENTS, per_client, "dev"),
        broker.port(),
        Some(per_client as f64 / 6.0),
        test,
    );
    let before = (total / 4) as u64;
    gw.wait_status(
        &format!("{before} readings ingested"),
        Duration::from_secs(60),
        |s| (s["ingest"]["readings"]["mqtt"].as_u64()? >= before).then_some(()),
    )
    .await;
    broker.stop();
    let acked_then = stream.acked();
    gw.wait_status(
        "the gateway to notice the broker is gone",
        Duration::from_secs(60),
        |s| (s["ingest"]["mqtt_connected"] == false).then_some(()),
    )
    .await;
    broker.restart();
    assert!(
        acked_then < total,
        "the stream had finished before the broker stopped; slow the publishers"
    );

    let (required, allowed) = stream.finish(Duration::from_secs(120)).await;
    let cmp = wait_delivered(&receiver, &required, &allowed, Duration::from_secs(120)).await;
    let status = gw
        .wait_status("mqtt_connected again", Duration::from_secs(60), |s| {
            (s["ingest"]["mqtt_connected"] == true).then(|| s.clone())
        })
        .await;
    assert!(
        status["ingest"]["source_disconnects"].as_u64() >= Some(1),
        "{status:#}"
    );
    // Resubscribed: a reading published now, on a fresh connection, still arrives.
    gw.barrier(broker.port(), &receiver).await;
    let cmp_final = workload::compare(
        &required,
        &allowed,
        &workload::parse_readings(&receiver.delivered_records("readings")),
    );
    assert!(
        cmp_final.missing.is_empty() && cmp_final.unexpected.is_empty(),
        "{}",
        cmp_final.describe()
    );
    check_seq_stable(&receiver.batches()).unwrap();
    eprintln!(
        "{test}: broker stopped after {acked_then} of {total} PUBACKs; {} acknowledged readings \
         delivered, {} duplicates ({} before the barrier); {:.1} s",
        required.len(),
        cmp_final.duplicates,
        cmp.duplicates,
        started.elapsed().as_secs_f64()
    );
}
