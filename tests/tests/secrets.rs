//! Secrets never leave the process except where they are sent: a gateway runs with every secret
//! set (MQTT password, embedded broker password, upstream bearer token, admin token, a token in
//! the upstream URL's query) and debug logs on, through an upstream outage (whose connection
//! errors name the URL), and its logs, `/status`, `/metrics`, `/healthz`, `check-config` and
//! `gateway status` output are searched for each secret.

use gateway_tests::{GatewayProcess, GatewaySpec, MqttSetup, Upstream, require_mosquitto};
use std::time::Duration;

const SECRETS: [(&str, &str); 5] = [
    ("GATEWAY_MQTT_PASSWORD", "mqtt-S3cret-1"),
    ("GATEWAY_EMBEDDED_PASSWORD", "embedded-S3cret-2"),
    ("GATEWAY_UPSTREAM_TOKEN", "upstream-S3cret-3"),
    ("E2E_ADMIN_TOKEN_VALUE", "admin-S3cret-4"),
    ("URL_QUERY", "query-S3cret-5"),
];

fn secret(name: &str) -> &'static str {
    SECRETS.iter().find(|(n, _)| *n == name).unwrap().1
}

#[track_caller]
fn assert_no_secret(place: &str, text: &str) {
    assert!(!text.is_empty(), "{place}: nothing to search");
    for (name, value) in SECRETS {
        assert!(!text.contains(value), "{place} shows {name}:\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_logs_status_metrics_or_check_config() {
    let test = "no_secret_reaches_logs_status_metrics_or_check_config";
    // mosquitto accepts any username and password while anonymous access is allowed and no
    // password file is set: the gateway really sends its password in CONNECT.
    let Some(broker) = require_mosquitto(test) else {
        return;
    };
    let mut upstream = Upstream::start_down().await;
    let url = format!("{}?code={}", upstream.url(), secret("URL_QUERY"));
    let mut spec = GatewaySpec::new(
        MqttSetup::External {
            port: broker.port(),
        },
        &url,
    );
    spec.mqtt_extra = "username = \"gateway\"\npassword_env = \"GATEWAY_MQTT_PASSWORD\"\n\
                       embedded_username = \"devices\"\n\
                       embedded_password_env = \"GATEWAY_EMBEDDED_PASSWORD\"\n"
        .into();
    spec.upstream_extra = "bearer_token_env = \"GATEWAY_UPSTREAM_TOKEN\"\n".into();
    spec.admin_token = Some(secret("E2E_ADMIN_TOKEN_VALUE").to_owned());
    for name in [
        "GATEWAY_MQTT_PASSWORD",
        "GATEWAY_EMBEDDED_PASSWORD",
        "GATEWAY_UPSTREAM_TOKEN",
    ] {
        spec.env.push((name.to_owned(), secret(name).to_owned()));
    }
    spec.env.push(("RUST_LOG".into(), "debug".into()));
    let mut gw = GatewayProcess::start(&spec);
    gw.wait_ready().await;
    gw.wait_mqtt_ingest(broker.port()).await;

    // The upstream is down: connection errors, retries, a last_error.
    let status = gw
        .wait_status("failed upstream attempts", Duration::from_secs(30), |s| {
            (s["upstream"]["failed_retryable"].as_u64().unwrap_or(0) >= 2).then(|| s.clone())
        })
        .await;
    assert!(
        status["upstream"]["last_error"]
            .as_str()
            .is_some_and(|e| !e.is_empty()),
        "no last_error to search: {status}"
    );
    assert_no_secret("/status during the outage", &status.to_string());
    upstream.come_up().await;
    gw.wait_status("a delivery", Duration::from_secs(30), |s| {
        (s["upstream"]["records_delivered"]["readings"]
            .as_u64()
            .unwrap_or(0)
            > 0)
        .then_some(())
    })
    .await;
    // The upstream did get the token: it is sent where it belongs.
    let auth = upstream
        .batches()
        .iter()
        .find_map(|b| b.authorization.clone());
    assert_eq!(
        auth.as_deref(),
        Some(format!("Bearer {}", secret("GATEWAY_UPSTREAM_TOKEN")).as_str())
    );

    let admin = gw.admin_url();
    let get = |path: &'static str| {
        let http = gw.http().clone();
        let url = format!("{admin}{path}");
        async move { http.get(url).send().await.unwrap().text().await.unwrap() }
    };
    assert_no_secret("/status", &get("/status").await);
    assert_no_secret("/metrics", &get("/metrics").await);
    assert_no_secret("/healthz", &get("/healthz").await);

    let config = gw.config_path().to_str().unwrap().to_owned();
    let out = gw.run_cli(&["check-config", "--config", &config]);
    assert!(out.status.success(), "{out:?}");
    assert_no_secret("check-config", &String::from_utf8_lossy(&out.stdout));
    assert_no_secret(
        "check-config stderr",
        &format!("{}.", String::from_utf8_lossy(&out.stderr)),
    );

    let out = std::process::Command::new(gateway_tests::gateway_bin())
        .args([
            "status",
            "--admin",
            &admin,
            "--token-env",
            "E2E_ADMIN_TOKEN",
        ])
        .env("E2E_ADMIN_TOKEN", secret("E2E_ADMIN_TOKEN_VALUE"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_no_secret("gateway status", &String::from_utf8_lossy(&out.stdout));

    gw.stop().await;
    assert_no_secret("the gateway's log", &gw.stderr_all());
}
