//! The gateway stopped in the middle of a stream published to mosquitto — by SIGKILL, or by
//! SIGTERM — and started again on the same data dir: every message a publisher got a PUBACK for
//! reaches the receiver.
//!
//! `E2E_RESTART_MESSAGES` (default 6000) sets the messages per run.

use gateway_tests::workload::{self, Stream, check_seq_stable, wait_delivered};
use gateway_tests::{
    GatewayProcess, GatewaySpec, MqttSetup, Upstream, env_usize, require_mosquitto,
};
use std::time::{Duration, Instant};

const CLIENTS: usize = 3;

/// Which way the gateway is stopped mid-stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    Kill,
    Term,
}

async fn stop_mid_stream_and_restart(stop: Stop, test: &str) {
    let Some(broker) = require_mosquitto(test) else {
        return;
    };
    let started = Instant::now();
    let total = env_usize("E2E_RESTART_MESSAGES", 6000);
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

    // Paced so the stream is still running when the gateway goes down (~6 s in all: a quarter is
    // in after ~1.5 s, which leaves a loaded machine seconds of slack).
    let rate = per_client as f64 / 6.0;
    let stream = Stream::start(
        workload::simple_json(CLIENTS, per_client, "dev"),
        broker.port(),
        Some(rate),
        test,
    );
    let stopped_at = (total / 4) as u64;
    gw.wait_status(
        &format!("{stopped_at} readings ingested before stopping"),
        Duration::from_secs(60),
        |s| (s["ingest"]["readings"]["mqtt"].as_u64()? >= stopped_at).then_some(()),
    )
    .await;
    let acked_then = stream.acked();
    match stop {
        Stop::Kill => gw.sigkill(),
        Stop::Term => {
            gw.sigterm();
            let code = gw.wait_exit(Duration::from_secs(30)).await;
            assert_eq!(code.code(), Some(0), "SIGTERM: exit code 0, got {code}");
        }
    }
    assert!(
        acked_then < total,
        "the stream had already finished when the gateway was stopped; slow the publishers"
    );
    gw.spawn();
    gw.wait_ready().await;

    let (required, allowed) = stream.finish(Duration::from_secs(120)).await;
    assert_eq!(
        required.len(),
        total,
        "mosquitto acknowledged every message"
    );
    let cmp = wait_delivered(&receiver, &required, &allowed, Duration::from_secs(120)).await;
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
    assert!(receiver.errors().is_empty(), "{:?}", receiver.errors());
    eprintln!(
        "{test}: stopped ({stop:?}) after {acked_then} of {total} PUBACKs; all {} acknowledged \
         readings delivered; {} duplicates ({} before the barrier); {:.1} s",
        required.len(),
        cmp_final.duplicates,
        cmp.duplicates,
        started.elapsed().as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_pubacked_reading_arrives_after_the_gateway_is_sigkilled_mid_stream() {
    stop_mid_stream_and_restart(Stop::Kill, "restart-sigkill").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_stream_exits_zero_and_every_pubacked_reading_arrives_after_restart() {
    stop_mid_stream_and_restart(Stop::Term, "restart-sigterm").await;
}
