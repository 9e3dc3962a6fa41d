//! Hostile conditions on the disk: a full filesystem under the buffer.
//!
//! The gateway's `data_dir` is a small tmpfs mounted by the test (root only), filled up by a
//! filler file while a device publishes. Once the buffer cannot write, the gateway must stop
//! acknowledging (the broker keeps the messages), say so on `/healthz` (503, with the reason) and
//! count the write errors. When the filler is deleted the gateway exits non-zero so that its
//! service manager restarts it (the test plays systemd's `Restart=on-failure`); after the restart
//! every reading the broker acknowledged to the device arrives upstream.
//!
//! Without root the test is reported as not run for real ([`test_peers::missing`]); with `CI` set it
//! fails instead.

use super::*;
use gateway_tests::Publisher;
use std::collections::BTreeSet;

/// `/healthz`: (status code, body), or `None` if the admin API does not answer.
async fn healthz(rig: &Rig) -> Option<(u16, Value)> {
    let resp = reqwest::get(format!("{}/healthz", rig.gw.admin_url()))
        .await
        .ok()?;
    let code = resp.status().as_u16();
    Some((
        code,
        serde_json::from_slice(&resp.bytes().await.ok()?).ok()?,
    ))
}

const DEVICE: &str = "disk-full-dev";

/// Publishes readings `values` of [`DEVICE`] at QoS 1; every one must be PUBACKed by the broker.
async fn publish(rig: &Rig, client: &str, values: std::ops::Range<u64>) {
    let messages: Vec<Message> = values
        .map(|v| Message {
            topic: format!("sensors/{DEVICE}/level"),
            payload: v.to_string().into_bytes(),
        })
        .collect();
    let mut o = PublisherOptions::new(rig.broker.port(), client);
    o.window = 10;
    let out = Publisher::publish_all(o, messages, WAIT).await;
    assert_eq!(
        out.acked_count(),
        out.acked.len(),
        "every message PUBACKed by the broker"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_stops_acks_turns_healthz_503_and_every_acknowledged_reading_arrives_after_the_restart()
 {
    let test = "hostile::disk::full";
    let Some(fs) = test_peers::Tmpfs::mount(test, 16 * 1024) else {
        return;
    };
    let data_dir = fs.path().join("data");
    let Some(mut rig) = Rig::start(test, RigOptions::default(), |spec| {
        spec.data_dir = Some(data_dir.clone());
    })
    .await
    else {
        return;
    };
    let (code, body) = healthz(&rig).await.expect("/healthz answers");
    assert_eq!(code, 200, "healthy before the disk fills: {body}");

    // Readings stored before the disk fills.
    let mut sent = 0u64;
    publish(&rig, "disk-dev-a", sent..sent + 50).await;
    sent += 50;

    // Fill the disk, then keep publishing until the gateway reports that its buffer cannot
    // write (sled's log has to grow, and there is no room).
    let filler = fs.path().join("filler");
    assert!(
        test_peers::fill(&filler) > 0,
        "the filler took the free space"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let body = loop {
        publish(&rig, "disk-dev-a", sent..sent + 20).await;
        sent += 20;
        if let Some((code, body)) = healthz(&rig).await
            && code != 200
        {
            assert_eq!(code, 503, "{body}");
            break body;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "/healthz still 200 after {sent} readings on a full disk\n{}",
            rig.gw.stderr_tail()
        );
    };
    assert_eq!(body["status"], "unhealthy", "{body}");
    let reasons = body["degraded"].to_string();
    assert!(
        reasons.contains("buffer: writes fail") && reasons.contains("No space left"),
        "the reason is on /healthz: {body}"
    );
    assert!(
        rig.metric("gateway_buffer_write_errors_total").await >= 1.0,
        "the write error is counted"
    );
    assert_eq!(rig.metric("gateway_buffer_writable").await, 0.0);

    // While the disk is full the gateway acknowledges nothing: the broker keeps these.
    publish(&rig, "disk-dev-b", sent..sent + 30).await;
    sent += 30;
    let (code, _) = healthz(&rig).await.expect("/healthz answers while full");
    assert_eq!(code, 503, "still unhealthy while the disk is full");

    // Space returns: the gateway sees it and exits non-zero for its service manager.
    std::fs::remove_file(&filler).expect("delete the filler");
    let status = rig.gw.wait_exit(Duration::from_secs(60)).await;
    assert!(
        !status.success(),
        "the gateway exits non-zero to be restarted: {status}\n{}",
        rig.gw.stderr_tail()
    );
    // What systemd's Restart=on-failure does.
    rig.gw.spawn();
    rig.gw.wait_ready().await;
    wait_until("/healthz 200 after the restart", WAIT, || async {
        healthz(&rig).await.filter(|(code, _)| *code == 200)
    })
    .await;

    // Every reading the broker acknowledged arrives upstream, by identity.
    let expected: BTreeSet<u64> = (0..sent).collect();
    let deadline = std::time::Instant::now() + WAIT * 2;
    loop {
        let got: BTreeSet<u64> = rig
            .receiver
            .delivered_records("readings")
            .iter()
            .filter(|r| r["device"] == DEVICE && r["metric"] == "level")
            .filter_map(|r| r["value"].as_f64())
            .map(|v| v as u64)
            .collect();
        let missing: Vec<u64> = expected.difference(&got).copied().collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{} of {sent} acknowledged readings never arrived upstream (first: {:?})\n{}",
            missing.len(),
            &missing[..missing.len().min(20)],
            rig.gw.stderr_tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(rig.metric("gateway_buffer_writable").await, 1.0);

    rig.assert_good_device_flows("disk-full").await;
}
