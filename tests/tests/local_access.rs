//! Who may reach what on the box itself: the embedded broker's credentials and connection cap,
//! and the permissions of the data directory (readings and dead letters hold whatever devices
//! sent).

use gateway_tests::{GatewayProcess, GatewaySpec, MqttSetup, free_port};
use rumqttc::{AsyncClient, ConnectionError, Event, MqttOptions, Packet, QoS};
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::time::Duration;

const PASSWORD: &str = "devices-pw-1";

/// Connects to 127.0.0.1:`port` and waits up to `wait` for the broker's answer: `Ok` with the
/// client and its event loop once CONNACK accepted us, `Err` with why not (`None`: no answer).
async fn connect(
    port: u16,
    id: &str,
    credentials: Option<(&str, &str)>,
    wait: Duration,
) -> Result<(AsyncClient, rumqttc::EventLoop), Option<ConnectionError>> {
    let mut opts = MqttOptions::new(id, "127.0.0.1", port);
    opts.set_keep_alive(Duration::from_secs(30));
    if let Some((user, pass)) = credentials {
        opts.set_credentials(user, pass);
    }
    let (client, mut eventloop) = AsyncClient::new(opts, 10);
    let answer = tokio::time::timeout(wait, async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => return Ok(()),
                Ok(_) => {}
                Err(e) => return Err(e),
            }
        }
    })
    .await;
    match answer {
        Ok(Ok(())) => Ok((client, eventloop)),
        Ok(Err(e)) => Err(Some(e)),
        Err(_) => Err(None),
    }
}

fn embedded_with_credentials(port: u16, extra: &str) -> GatewaySpec {
    let mut spec = GatewaySpec::new(MqttSetup::Embedded { port }, "http://127.0.0.1:1/ingest");
    spec.mqtt_extra = format!(
        "embedded_username = \"devices\"\nembedded_password_env = \"EMBEDDED_PW\"\n{extra}"
    );
    spec.env.push(("EMBEDDED_PW".into(), PASSWORD.into()));
    spec
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_broker_admits_only_clients_with_its_credentials() {
    let port = free_port();
    let mut gw = GatewayProcess::start(&embedded_with_credentials(port, ""));
    gw.wait_ready().await;
    // The gateway's own client got in with the same credentials.
    gw.wait_status(
        "the gateway subscribed to its embedded broker",
        Duration::from_secs(30),
        |s| (s["ingest"]["mqtt_subscribed"] == true).then_some(()),
    )
    .await;

    let wait = Duration::from_secs(10);
    for (who, credentials) in [
        ("anonymous", None),
        ("wrong-password", Some(("devices", "guess"))),
        ("wrong-user", Some(("root", PASSWORD))),
    ] {
        let refused = connect(port, who, credentials, wait).await;
        assert!(refused.is_err(), "{who} was admitted");
    }
    // A device that knows the shared password still cannot take the gateway's client ids (and
    // with them the messages queued for the gateway).
    for own in ["gw-e2e", "gw-e2e-alarms"] {
        let refused = connect(port, own, Some(("devices", PASSWORD)), wait).await;
        assert!(refused.is_err(), "a device connected as {own}");
    }
    let status = gw.status().await;
    assert_eq!(status["ingest"]["mqtt_connected"], true, "{status}");

    let (client, mut eventloop) = connect(port, "sensor-1", Some(("devices", PASSWORD)), wait)
        .await
        .expect("a device with the credentials is admitted");
    publish_one_reading(&mut gw, &client, &mut eventloop, "sensor-1").await;
}

/// Publishes one reading from `device`, and waits for its PUBACK and for the gateway to count
/// it as its first reading.
async fn publish_one_reading(
    gw: &mut GatewayProcess,
    client: &AsyncClient,
    eventloop: &mut rumqttc::EventLoop,
    device: &str,
) {
    client
        .publish(
            format!("sensors/{device}/temperature"),
            QoS::AtLeastOnce,
            false,
            "21.5",
        )
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Event::Incoming(Packet::PubAck(_)) = eventloop.poll().await.unwrap() {
                return;
            }
        }
    })
    .await
    .expect("PUBACK");
    gw.wait_status("the reading ingested", Duration::from_secs(30), |s| {
        (s["ingest"]["readings"]["mqtt"].as_u64() == Some(1)).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_broker_keeps_its_connection_cap_and_the_gateway_connected() {
    let port = free_port();
    let spec = embedded_with_credentials(port, "embedded_max_connections = 2\n");
    let mut gw = GatewayProcess::start(&spec);
    gw.wait_ready().await;
    gw.wait_status("the gateway subscribed", Duration::from_secs(30), |s| {
        (s["ingest"]["mqtt_subscribed"] == true).then_some(())
    })
    .await;
    let creds = Some(("devices", PASSWORD));
    let wait = Duration::from_secs(10);
    let mut held = Vec::new();
    for id in ["dev-1", "dev-2"] {
        let (client, mut eventloop) = connect(port, id, creds, wait).await.expect(id);
        // Keep polling so the connection stays up.
        let task = tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
        held.push((client, task));
    }
    // A third device is not admitted (rumqttd closes a connection over the cap).
    let third = connect(port, "dev-3", creds, Duration::from_secs(3)).await;
    assert!(third.is_err(), "a device over the cap was admitted");
    // The gateway's own clients were not pushed out.
    let status = gw.status().await;
    assert_eq!(status["ingest"]["mqtt_connected"], true, "{status}");
    for (client, task) in held {
        let _ = client.disconnect().await;
        task.abort();
    }
    // Once one leaves, a device gets in again.
    wait_admitted(port, creds).await;
}

/// A device the embedded broker turns away (here: a client id with `/`, which rumqttd rejects)
/// keeps retrying under the same id, as devices do. Each attempt is refused on its own; the
/// gateway keeps running and other devices still get in and are ingested.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_refused_again_and_again_under_one_id_does_not_stop_the_gateway() {
    let port = free_port();
    let mut gw = GatewayProcess::start(&embedded_with_credentials(port, ""));
    gw.wait_ready().await;
    gw.wait_status("the gateway subscribed", Duration::from_secs(30), |s| {
        (s["ingest"]["mqtt_subscribed"] == true).then_some(())
    })
    .await;
    let creds = Some(("devices", PASSWORD));
    for attempt in 1..=4 {
        let refused = connect(port, "site/dev-1", creds, Duration::from_secs(3)).await;
        assert!(refused.is_err(), "attempt {attempt} was admitted");
    }
    let (client, mut eventloop) = connect(port, "dev-2", creds, Duration::from_secs(10))
        .await
        .unwrap_or_else(|e| {
            panic!(
                "dev-2 not admitted ({e:?}); gateway log:\n{}",
                gw.stderr_tail()
            )
        });
    publish_one_reading(&mut gw, &client, &mut eventloop, "dev-2").await;
    gw.stop().await;
}

async fn wait_admitted(port: u16, creds: Option<(&str, &str)>) {
    for _ in 0..20 {
        if connect(port, "dev-4", creds, Duration::from_secs(3))
            .await
            .is_ok()
        {
            return;
        }
    }
    panic!("no device admitted after the others left");
}

/// Every directory under `dir` has exactly `mode`, and no file has a bit outside it.
fn assert_modes(dir: &Path, mode: u32) {
    let meta = std::fs::metadata(dir).unwrap();
    assert_eq!(
        meta.permissions().mode() & 0o7777,
        mode,
        "{}",
        dir.display()
    );
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let meta = entry.metadata().unwrap();
        if meta.is_dir() {
            assert_modes(&entry.path(), mode);
        } else {
            let bits = meta.permissions().mode() & 0o7777;
            assert_eq!(
                bits & !mode,
                0,
                "{} has mode {bits:o}",
                entry.path().display()
            );
            assert_eq!(bits & 0o111, 0, "{} is executable", entry.path().display());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_data_directory_and_its_files_are_the_owners_alone_unless_configured() {
    for (mode, top_extra) in [(0o700, ""), (0o750, "data_dir_mode = 0o750")] {
        let data = tempfile::tempdir().unwrap();
        let dir = data.path().join("data");
        // An existing, world-readable data dir is tightened.
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let port = free_port();
        let mut spec = GatewaySpec::new(MqttSetup::Embedded { port }, "http://127.0.0.1:1/ingest");
        spec.top_extra = top_extra.to_owned();
        spec.data_dir = Some(dir.clone());
        let mut gw = GatewayProcess::start(&spec);
        gw.wait_ready().await;
        gw.wait_mqtt_ingest(port).await;
        gw.stop().await;
        let buffer_files = std::fs::read_dir(dir.join("buffer")).unwrap().count();
        assert!(buffer_files > 0, "nothing written to check");
        assert_modes(&dir, mode);
    }
}

/// Devices reconnect the moment a (re)started gateway's embedded broker listens. The broker
/// acknowledges what they publish itself, so anything published before the gateway's own
/// subscription was in place would be acknowledged and dropped: devices must not get in before
/// it. Here a device connects as early as it can and publishes at once; every message the
/// broker acknowledged must reach the upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_that_connects_the_moment_the_embedded_broker_listens_loses_nothing() {
    const N: u64 = 200;
    let port = free_port();
    let receiver = gateway_tests::Upstream::start().await;
    let spec = GatewaySpec::new(MqttSetup::Embedded { port }, &receiver.url());
    // Built before the clock starts (the first call may run cargo).
    gateway_tests::gateway_bin();
    // The device starts knocking before the gateway runs.
    let device = tokio::spawn(async move {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let mut last = None;
        let (client, mut eventloop) = loop {
            assert!(
                std::time::Instant::now() < deadline,
                "never admitted on port {port}: {last:?}"
            );
            match connect(port, "early-device", None, Duration::from_secs(15)).await {
                Ok(c) => break c,
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        };
        let publisher = tokio::spawn(async move {
            for v in 0..N {
                client
                    .publish(
                        "sensors/early/counter",
                        QoS::AtLeastOnce,
                        false,
                        v.to_string(),
                    )
                    .await
                    .unwrap();
            }
            client
        });
        let mut acked = 0;
        while acked < N {
            match tokio::time::timeout(Duration::from_secs(30), eventloop.poll()).await {
                Ok(Ok(Event::Incoming(Packet::PubAck(_)))) => acked += 1,
                Ok(Ok(_)) => {}
                other => panic!("publishing: {other:?} after {acked} acks"),
            }
        }
        publisher.await.unwrap()
    });
    let mut gw = GatewayProcess::start(&spec);
    gw.wait_ready().await;
    let Ok(_client) = device.await else {
        panic!("the device failed; gateway log:\n{}", gw.stderr_all());
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let values = || -> std::collections::BTreeSet<u64> {
        receiver
            .delivered_records("readings")
            .iter()
            .filter(|r| r["device"] == "early")
            .filter_map(|r| r["value"].as_f64())
            .map(|v| v as u64)
            .collect()
    };
    while values().len() < N as usize && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let got = values();
    let missing: Vec<u64> = (0..N).filter(|v| !got.contains(v)).collect();
    assert!(
        missing.is_empty(),
        "{} of {N} messages the embedded broker acknowledged never arrived: {missing:?}\n{}",
        missing.len(),
        gw.stderr_tail()
    );
    gw.stop().await;
}
