//! TLS against real peers, with a CA and certificates made by the test: mosquitto with a TLS
//! listener (with and without `require_certificate`), a bare TCP listener that records what a
//! client sends first, and an HTTPS upstream (rustls) that requires a client certificate.
//!
//! What must hold: `mqtts://` is TLS whatever else is configured (never a plaintext CONNECT); a
//! broker is trusted only when `ca_file` (or a platform root) signed its certificate; a client
//! certificate is presented when configured and the peer's refusal is an error, not a fallback.

use gateway_tests::{
    GatewayProcess, GatewaySpec, Mosquitto, MqttSetup, TlsServer, Upstream, free_port,
    tls_mosquitto, wait_until,
};
use std::path::Path;
use std::time::Duration;
use test_peers::Pki;
use tokio::io::AsyncReadExt as _;

/// A TLS record of type handshake (a ClientHello) starts with this byte; an MQTT CONNECT with 0x10.
const TLS_HANDSHAKE: u8 = 0x16;

fn toml_path(path: &Path) -> String {
    format!("\"{}\"", path.display())
}

/// A gateway reading from mosquitto's TLS listener; `tls_keys` are extra `[mqtt]` lines.
fn gateway_over_tls(id: &str, broker: &Mosquitto, tls_port: u16, tls_keys: String) -> GatewaySpec {
    let mut spec = GatewaySpec::new(
        MqttSetup::External {
            port: broker.port(),
        },
        "http://127.0.0.1:1/ingest",
    );
    spec.gateway_id = id.to_owned();
    spec.mqtt_url = Some(format!("mqtts://127.0.0.1:{tls_port}"));
    spec.mqtt_extra = tls_keys;
    spec
}

fn ca_key(ca: &Path) -> String {
    format!("ca_file = {}\n", toml_path(ca))
}

fn client_keys(cert: &Path, key: &Path) -> String {
    format!(
        "client_cert_file = {}\nclient_key_file = {}\n",
        toml_path(cert),
        toml_path(key)
    )
}

/// Waits until the gateway has failed to connect at least twice (it retries) and checks it never
/// got in: not connected, a TLS error in its log, and mosquitto never saw its CONNECT.
async fn assert_refused(gw: &mut GatewayProcess, broker: &Mosquitto, client_id: &str, why: &str) {
    gw.wait_ready().await;
    let log = wait_until("two failed connections", Duration::from_secs(30), || {
        let log = gw.stderr_all();
        async move { (log.matches("broker connection lost").count() >= 2).then_some(log) }
    })
    .await;
    let status = gw.status().await;
    assert_eq!(status["ingest"]["mqtt_connected"], false, "{why}: {status}");
    assert!(
        log.contains("TLS with the broker failed"),
        "{why}: no TLS error logged\n{log}"
    );
    let broker_log = broker.log();
    assert!(
        !broker_log.contains(&format!(" as {client_id} ")),
        "{why}: mosquitto accepted a CONNECT from {client_id}:\n{broker_log}"
    );
}

/// Without `ca_file` the gateway still speaks TLS (the platform's roots): the first byte it sends
/// to the broker's port opens a TLS handshake, and no MQTT CONNECT follows in the clear.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtts_without_a_ca_file_is_tls_never_a_plaintext_connect() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut spec = GatewaySpec::new(MqttSetup::External { port }, "http://127.0.0.1:1/ingest");
    spec.mqtt_url = Some(format!("mqtts://127.0.0.1:{port}"));
    spec.env
        .push(("GATEWAY_MQTT_PASSWORD".into(), "pw-in-clear?".into()));
    spec.mqtt_extra = "username = \"gw\"\npassword_env = \"GATEWAY_MQTT_PASSWORD\"\n".into();
    let gw = GatewayProcess::start(&spec);

    // Every attempt, the first and the retries after each failed handshake (we never answer
    // the ClientHello and hang up), opens with TLS: no fallback to plaintext.
    for attempt in 1..=3 {
        let (mut conn, _) = tokio::time::timeout(Duration::from_secs(60), listener.accept())
            .await
            .unwrap_or_else(|_| panic!("no attempt {attempt}\n{}", gw.stderr_tail()))
            .unwrap();
        let mut sent = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(10), conn.read(&mut sent))
            .await
            .unwrap_or_else(|_| panic!("attempt {attempt} sent nothing"))
            .unwrap();
        sent.truncate(n);
        assert!(!sent.is_empty(), "attempt {attempt}: nothing sent");
        assert_eq!(
            sent[0], TLS_HANDSHAKE,
            "attempt {attempt}: first byte {:#04x}, not a TLS handshake",
            sent[0]
        );
        let text = String::from_utf8_lossy(&sent);
        assert!(
            !text.contains("MQTT"),
            "attempt {attempt}: a CONNECT in the clear"
        );
        assert!(
            !text.contains("pw-in-clear"),
            "attempt {attempt}: the password in the clear"
        );
        drop(conn);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_is_trusted_only_when_the_configured_ca_signed_it() {
    let test = "the_broker_is_trusted_only_when_the_configured_ca_signed_it";
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(dir.path());
    let Some((broker, tls_port)) = tls_mosquitto(test, &pki.trusted, false) else {
        return;
    };

    let trusting = gateway_over_tls("gw-trusting", &broker, tls_port, ca_key(&pki.trusted.ca));
    let mut gw = GatewayProcess::start(&trusting);
    gw.wait_ready().await;
    // A reading published on the plain listener reaches the gateway over its TLS connection.
    gw.wait_mqtt_ingest(broker.port()).await;
    assert!(
        broker.log().contains(" as gw-trusting "),
        "mosquitto did not log our TLS client:\n{}",
        broker.log_tail()
    );
    drop(gw);

    // device-sim, the other TLS client of the project, holds to the same: trusted with the CA,
    // refused without it.
    let fleet = |ca: &Path| {
        let broker: device_sim::Broker = format!("mqtts://127.0.0.1:{tls_port}").parse().unwrap();
        let mut cfg = device_sim::FleetConfig::new(broker);
        cfg.count = Some(1);
        cfg.progress = false;
        cfg.connect_timeout = Duration::from_secs(5);
        cfg.ca_file = Some(ca.to_owned());
        device_sim::run_fleet(cfg, std::future::pending())
    };
    let report = fleet(&pki.trusted.ca).await.expect("device-sim over TLS");
    assert!(report.summary.totals.readings_acked > 0);
    let refused = fleet(&pki.untrusted.ca).await;
    assert!(
        matches!(refused, Err(device_sim::mqtt::FleetError::Connect { .. })),
        "device-sim connected to a broker its CA did not sign"
    );

    // Without ca_file, the platform's roots: here SSL_CERT_FILE, which the platform store honours.
    let mut platform = gateway_over_tls("gw-platform", &broker, tls_port, String::new());
    platform
        .env
        .push(("SSL_CERT_FILE".into(), pki.trusted.ca.display().to_string()));
    let mut gw = GatewayProcess::start(&platform);
    gw.wait_ready().await;
    gw.wait_mqtt_ingest(broker.port()).await;
    drop(gw);

    // The broker's certificate is signed by a CA the gateway was not told to trust. The platform
    // roots would trust it: ca_file replaces them, it does not add to them.
    let mut wary = gateway_over_tls("gw-wary", &broker, tls_port, ca_key(&pki.untrusted.ca));
    wary.env
        .push(("SSL_CERT_FILE".into(), pki.trusted.ca.display().to_string()));
    let mut gw = GatewayProcess::start(&wary);
    assert_refused(&mut gw, &broker, "gw-wary", "untrusted server certificate").await;
    let log = gw.stderr_all();
    assert!(
        log.contains("UnknownIssuer") || log.contains("invalid peer certificate"),
        "the error does not say the certificate is not trusted:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_that_requires_client_certificates_admits_ours_and_no_other() {
    let test = "a_broker_that_requires_client_certificates_admits_ours_and_no_other";
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(dir.path());
    let t = &pki.trusted;
    let Some((broker, tls_port)) = tls_mosquitto(test, t, true) else {
        return;
    };

    // Ours: the EC and the RSA client certificates of the broker's CA.
    for (id, cert, key) in [
        ("gw-ec-cert", &t.client_cert, &t.client_key),
        ("gw-rsa-cert", &t.rsa_client_cert, &t.rsa_client_key),
    ] {
        let keys = ca_key(&t.ca) + &client_keys(cert, key);
        let mut gw = GatewayProcess::start(&gateway_over_tls(id, &broker, tls_port, keys));
        gw.wait_ready().await;
        gw.wait_mqtt_ingest(broker.port()).await;
    }

    // No client certificate.
    let spec = gateway_over_tls("gw-no-cert", &broker, tls_port, ca_key(&t.ca));
    let mut gw = GatewayProcess::start(&spec);
    assert_refused(&mut gw, &broker, "gw-no-cert", "no client certificate").await;
    drop(gw);

    // A client certificate from another CA.
    let u = &pki.untrusted;
    let keys = ca_key(&t.ca) + &client_keys(&u.client_cert, &u.client_key);
    let mut gw = GatewayProcess::start(&gateway_over_tls("gw-other-cert", &broker, tls_port, keys));
    assert_refused(
        &mut gw,
        &broker,
        "gw-other-cert",
        "client certificate of another CA",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_upstream_that_requires_a_client_certificate_gets_batches_only_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(dir.path());
    let t = &pki.trusted;
    let receiver = Upstream::start_tls(&TlsServer {
        cert: t.server_cert.clone(),
        key: t.server_key.clone(),
        client_ca: Some(t.ca.clone()),
    })
    .await;

    let port = free_port();
    let mut spec = GatewaySpec::new(MqttSetup::Embedded { port }, &receiver.url());
    spec.upstream_extra = ca_key(&t.ca) + &client_keys(&t.client_cert, &t.client_key);
    let mut gw = GatewayProcess::start(&spec);
    gw.wait_ready().await;
    gw.wait_mqtt_ingest(port).await;
    wait_until(
        "a batch delivered over HTTPS",
        Duration::from_secs(30),
        || {
            let n = receiver.delivered_count("readings");
            async move { (n > 0).then_some(()) }
        },
    )
    .await;
    assert!(
        receiver.handshake_errors().is_empty(),
        "{:?}",
        receiver.handshake_errors()
    );
    drop(gw);

    // The same without a client certificate: the handshake fails, nothing is delivered, and the
    // readings wait in the buffer.
    let before = receiver.batches().len();
    let port = free_port();
    let mut spec = GatewaySpec::new(MqttSetup::Embedded { port }, &receiver.url());
    spec.upstream_extra = ca_key(&t.ca);
    let mut gw = GatewayProcess::start(&spec);
    gw.wait_ready().await;
    gw.wait_mqtt_ingest(port).await;
    let status = gw
        .wait_status(
            "retryable upstream failures",
            Duration::from_secs(30),
            |s| (s["upstream"]["failed_retryable"].as_u64().unwrap_or(0) >= 2).then(|| s.clone()),
        )
        .await;
    assert_eq!(
        receiver.batches().len(),
        before,
        "a batch got through without a certificate"
    );
    assert!(!receiver.handshake_errors().is_empty());
    assert!(
        status["buffer"]["lanes"]["readings"]["records"]
            .as_u64()
            .unwrap_or(0)
            > 0,
        "the readings are not kept: {status}"
    );
}
