//! The admin API of a running gateway, driven in-process through `gateway::run` with real peers:
//! the embedded MQTT broker on a free port, a small axum receiver standing in for the cloud, a
//! real HTTP client, the `prometheus-parse` crate for `/metrics`, and headless Chromium for the
//! status page.

use gateway::{RunError, RunOptions};
use gateway_config::Config;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::Value;
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU16, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Long enough for a loaded CI box; every wait polls and returns as soon as it can.
const DEADLINE: Duration = Duration::from_secs(20);
const POLL: Duration = Duration::from_millis(50);

/// A free TCP port on loopback: bound to port 0, read back, released.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// The cloud: answers every batch with `status` (200 unless a test changes it) and keeps the
/// records of the batches it accepted.
#[derive(Clone)]
struct Receiver {
    url: String,
    status: Arc<AtomicU16>,
    records: Arc<Mutex<Vec<Value>>>,
}

async fn start_receiver() -> Receiver {
    use axum::body::Bytes;
    use axum::extract::State;
    use axum::http::{HeaderMap, StatusCode};
    use std::io::Read as _;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let receiver = Receiver {
        url: format!("http://{addr}/ingest"),
        status: Arc::new(AtomicU16::new(200)),
        records: Arc::new(Mutex::new(Vec::new())),
    };
    async fn ingest(State(r): State<Receiver>, headers: HeaderMap, body: Bytes) -> StatusCode {
        let status = StatusCode::from_u16(r.status.load(Ordering::SeqCst)).unwrap();
        if !status.is_success() {
            return status;
        }
        let mut json = Vec::new();
        if headers
            .get("content-encoding")
            .is_some_and(|v| v.as_bytes() == b"gzip")
        {
            flate2::read::GzDecoder::new(&body[..])
                .read_to_end(&mut json)
                .unwrap();
        } else {
            json = body.to_vec();
        }
        let batch: Value = serde_json::from_slice(&json).unwrap();
        let records = batch["records"].as_array().cloned().unwrap_or_default();
        r.records.lock().unwrap().extend(records);
        StatusCode::OK
    }
    let app = axum::Router::new()
        .route("/ingest", axum::routing::post(ingest))
        .with_state(receiver.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    receiver
}

/// One gateway running in this process until `stop`.
struct Gateway {
    admin: String,
    mqtt_port: u16,
    dir: tempfile::TempDir,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), RunError>>>,
}

/// What a test changes in the config.
#[derive(Default)]
struct Setup<'a> {
    /// The `[admin]` table's lines besides `listen`; and the listen host.
    admin_host: Option<&'a str>,
    admin_extra: &'a str,
    /// Alarm rules (`[[alarm]]` tables).
    alarms: &'a str,
    /// Environment seen by the config (`*_env` secrets).
    env: HashMap<String, String>,
    /// Write the config to `gateway.toml` and pass it as the file to reload from.
    with_file: bool,
}

const HOT_ABOVE_50: &str = r#"
[[alarm]]
name = "hot"
metric = "temperature"
above = 50.0
clear_below = 45.0
severity = "critical"
"#;

fn config_text(dir: &Path, admin: &str, mqtt_port: u16, upstream: &str, s: &Setup) -> String {
    format!(
        r#"gateway_id = "gw-admin-test"
data_dir = "{data}"
shutdown_grace_s = 3

[mqtt]
mode = "embedded"
embedded_listen = "127.0.0.1:{mqtt_port}"
keep_alive_s = 5

[upstream]
url = "{upstream}"
linger_ms = 20
retry_initial_ms = 50
retry_max_ms = 400
timeout_ms = 2000

[admin]
listen = "{admin}"
{admin_extra}
{alarms}"#,
        data = dir.join("data").display(),
        admin_extra = s.admin_extra,
        alarms = s.alarms,
    )
}

async fn start_gateway(receiver: &Receiver, setup: Setup<'_>) -> Gateway {
    let dir = tempfile::tempdir().unwrap();
    let admin_port = free_port();
    let mqtt_port = free_port();
    let admin = format!("{}:{admin_port}", setup.admin_host.unwrap_or("127.0.0.1"));
    let text = config_text(dir.path(), &admin, mqtt_port, &receiver.url, &setup);
    let env = setup.env.clone();
    let config = Config::parse_with_env(&text, "test", |name| env.get(name).cloned())
        .unwrap_or_else(|e| panic!("test config: {e}\n{text}"));
    let config_path = setup.with_file.then(|| {
        let path = dir.path().join("gateway.toml");
        std::fs::write(&path, &text).unwrap();
        path
    });
    let (stop, stopped) = oneshot::channel::<()>();
    let options = RunOptions {
        config_path,
        ..RunOptions::default()
    };
    let task = tokio::spawn(gateway::run(config, options, async move {
        let _ = stopped.await;
    }));
    let gw = Gateway {
        admin: format!("http://127.0.0.1:{admin_port}"),
        mqtt_port,
        dir,
        stop: Some(stop),
        task: Some(task),
    };
    let token = setup.env.values().next().cloned();
    poll(DEADLINE, "the admin API answers", || async {
        get(&gw, "/healthz", token.as_deref()).await.ok()
    })
    .await;
    gw
}

impl Gateway {
    fn config_file(&self) -> PathBuf {
        self.dir.path().join("gateway.toml")
    }

    /// Stops the gateway through its shutdown future and checks it ended cleanly.
    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        let ended = tokio::time::timeout(DEADLINE, self.task.take().unwrap())
            .await
            .expect("the gateway stops within the deadline");
        ended.unwrap().expect("the gateway stops without an error");
    }

    async fn status(&self) -> Value {
        let (code, body) = get(self, "/status", None).await.unwrap();
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    }

    async fn readings_mqtt(&self) -> u64 {
        self.status().await["ingest"]["readings"]["mqtt"]
            .as_u64()
            .unwrap()
    }

    /// Waits until the broker granted the gateway's subscription (`/status`
    /// `ingest.mqtt_subscribed`): a message published before that is not queued for it, one
    /// published after is. Returns the readings count then, the baseline for a test's counters.
    async fn wait_until_subscribed(&self) -> u64 {
        poll(
            DEADLINE,
            "the gateway's subscription is granted",
            || async {
                let s = self.status().await;
                (s["ingest"]["mqtt_subscribed"] == true)
                    .then(|| s["ingest"]["readings"]["mqtt"].as_u64().unwrap())
            },
        )
        .await
    }

    /// Waits until `/status` counts `n` MQTT readings.
    async fn wait_for_readings(&self, n: u64) {
        poll(DEADLINE, &format!("{n} readings counted"), || async {
            (self.readings_mqtt().await >= n).then_some(())
        })
        .await;
    }
}

/// GET (or POST for `/reload`) on the admin API: status code and body.
async fn get(gw: &Gateway, path: &str, token: Option<&str>) -> Result<(u16, String), String> {
    request(&gw.admin, path, token).await
}

async fn request(base: &str, path: &str, token: Option<&str>) -> Result<(u16, String), String> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let url = format!("{base}{path}");
    let mut req = if path == "/reload" {
        client.post(&url)
    } else {
        client.get(&url)
    };
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.map_err(|e| e.to_string())?;
    let code = resp.status().as_u16();
    let body = resp.text().await.map_err(|e| e.to_string())?;
    Ok((code, body))
}

/// Polls `check` until it gives `Some`, or fails the test naming `what`.
async fn poll<T, F, Fut>(deadline: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            start.elapsed() < deadline,
            "timed out after {deadline:?} waiting until {what}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// Publishes QoS 1 messages to the broker on `port` and waits for every PUBACK.
async fn publish(port: u16, messages: &[(String, String)]) {
    static CLIENTS: AtomicU32 = AtomicU32::new(0);
    let id = format!(
        "test-pub-{}-{}",
        std::process::id(),
        CLIENTS.fetch_add(1, Ordering::Relaxed)
    );
    let mut options = MqttOptions::new(id, "127.0.0.1", port);
    options.set_keep_alive(Duration::from_secs(5));
    let (client, mut events) = AsyncClient::new(options, messages.len() + 8);
    for (topic, payload) in messages {
        client
            .publish(topic.as_str(), QoS::AtLeastOnce, false, payload.clone())
            .await
            .unwrap();
    }
    let mut acked = 0;
    tokio::time::timeout(DEADLINE, async {
        while acked < messages.len() {
            match events.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => acked += 1,
                Ok(_) => {}
                Err(e) => panic!("publisher: {e}"),
            }
        }
    })
    .await
    .expect("every publish is acknowledged by the broker");
    let _ = client.disconnect().await;
    let _ = tokio::time::timeout(Duration::from_secs(1), events.poll()).await;
}

fn reading(device: &str, metric: &str, value: f64) -> (String, String) {
    (format!("sensors/{device}/{metric}"), value.to_string())
}

/// `/metrics` parsed by a real Prometheus text parser.
async fn scrape(gw: &Gateway) -> prometheus_parse::Scrape {
    let (code, body) = get(gw, "/metrics", None).await.unwrap();
    assert_eq!(code, 200);
    check_exposition_format(&body);
    prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_owned())))
        .unwrap_or_else(|e| panic!("/metrics does not parse: {e}\n{body}"))
}

/// What `prometheus-parse` lets through but a Prometheus server would not: every sample belongs
/// to a family announced by `# HELP` and `# TYPE`, names are valid, counters end in `_total`,
/// values are numbers, and no series appears twice.
fn check_exposition_format(body: &str) {
    let mut types: HashMap<&str, &str> = HashMap::new();
    let mut helped = BTreeSet::new();
    let mut series = BTreeSet::new();
    let valid_name = |n: &str| {
        !n.is_empty()
            && !n.starts_with(|c: char| c.is_ascii_digit())
            && n.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    };
    for line in body.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split(' ').next().unwrap();
            assert!(helped.insert(name), "HELP of {name} twice");
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split(' ');
            let (name, kind) = (parts.next().unwrap(), parts.next().unwrap());
            assert!(valid_name(name), "bad metric name {name:?}");
            assert!(
                ["counter", "gauge", "histogram"].contains(&kind),
                "{name}: type {kind}"
            );
            assert!(
                kind != "counter" || name.ends_with("_total"),
                "counter {name} does not end in _total"
            );
            assert!(types.insert(name, kind).is_none(), "TYPE of {name} twice");
        } else if !line.is_empty() {
            let (key, value) = line.rsplit_once(' ').unwrap();
            assert!(value.parse::<f64>().is_ok(), "{line:?}: value is no number");
            let name = key.split('{').next().unwrap();
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| {
                    name.strip_suffix(s)
                        .filter(|f| types.get(f) == Some(&"histogram"))
                })
                .unwrap_or(name);
            assert!(
                types.contains_key(family) && helped.contains(family),
                "{line:?}: sample without HELP and TYPE"
            );
            assert!(series.insert(key.to_owned()), "series {key} twice");
        }
    }
}

/// The value of the sample `name` whose labels include `labels`.
fn sample(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    use prometheus_parse::Value as V;
    let found = scrape
        .samples
        .iter()
        .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .unwrap_or_else(|| panic!("no sample {name}{labels:?}"));
    match &found.value {
        V::Counter(v) | V::Gauge(v) | V::Untyped(v) => *v,
        V::Histogram(buckets) => buckets.last().map_or(0.0, |b| b.count),
        V::Summary(_) => panic!("{name} is a summary"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_parse_as_prometheus_text_name_every_wire_family_and_move_as_readings_flow() {
    let receiver = start_receiver().await;
    let gw = start_gateway(
        &receiver,
        Setup {
            alarms: HOT_ABOVE_50,
            ..Setup::default()
        },
    )
    .await;
    let before_probe = scrape(&gw).await;

    // WIRE.md §5, family by family, with the labels each must carry.
    let wire_families: &[(&str, &[(&str, &str)])] = &[
        ("gateway_readings_received_total", &[("source", "mqtt")]),
        ("gateway_readings_received_total", &[("source", "serial")]),
        ("gateway_payloads_rejected_total", &[("reason", "bad_json")]),
        ("gateway_buffer_records", &[("lane", "readings")]),
        ("gateway_buffer_records", &[("lane", "alarms")]),
        ("gateway_buffer_bytes", &[("lane", "readings")]),
        ("gateway_buffer_bytes", &[("lane", "alarms")]),
        ("gateway_buffer_oldest_age_seconds", &[("lane", "readings")]),
        ("gateway_buffer_oldest_age_seconds", &[("lane", "alarms")]),
        ("gateway_buffer_dropped_total", &[("lane", "readings")]),
        ("gateway_buffer_expired_total", &[("lane", "readings")]),
        ("gateway_upstream_batches_sent_total", &[]),
        (
            "gateway_upstream_batches_failed_total",
            &[("class", "retryable")],
        ),
        (
            "gateway_upstream_batches_failed_total",
            &[("class", "permanent")],
        ),
        ("gateway_upstream_retries_total", &[]),
        ("gateway_upstream_latency_seconds", &[]),
        ("gateway_upstream_latency_seconds_sum", &[]),
        ("gateway_upstream_latency_seconds_count", &[]),
        ("gateway_alarm_events_total", &[]),
        ("gateway_alarms_active", &[]),
    ];
    for (name, labels) in wire_families {
        sample(&before_probe, name, labels);
    }
    assert!(
        before_probe
            .docs
            .contains_key("gateway_upstream_latency_seconds"),
        "the latency histogram has its HELP"
    );

    let base = gw.wait_until_subscribed().await;
    let before = scrape(&gw).await;
    let mut messages: Vec<_> = (0..20)
        .map(|i| reading(&format!("dev-{i}"), "humidity", 40.0 + f64::from(i)))
        .collect();
    messages.push(reading("dev-hot", "temperature", 99.0));
    messages.push(("sensors/dev-bad".into(), "{not json".into()));
    publish(gw.mqtt_port, &messages).await;
    gw.wait_for_readings(base + 21).await;
    poll(DEADLINE, "every reading is delivered upstream", || async {
        let s = gw.status().await;
        (s["upstream"]["records_delivered"]["readings"].as_u64() >= Some(base + 21)
            && s["upstream"]["records_delivered"]["alarms"].as_u64() >= Some(1))
        .then_some(())
    })
    .await;
    let after = scrape(&gw).await;

    let moved = |name: &str, labels: &[(&str, &str)]| {
        sample(&after, name, labels) - sample(&before, name, labels)
    };
    assert_eq!(
        moved("gateway_readings_received_total", &[("source", "mqtt")]),
        21.0
    );
    assert_eq!(
        moved("gateway_readings_received_total", &[("source", "serial")]),
        0.0
    );
    assert_eq!(
        moved("gateway_payloads_rejected_total", &[("reason", "bad_json")]),
        1.0
    );
    assert!(moved("gateway_upstream_batches_sent_total", &[]) >= 2.0);
    assert!(
        moved(
            "gateway_upstream_records_delivered_total",
            &[("lane", "readings")]
        ) >= 21.0
    );
    assert!(moved("gateway_upstream_latency_seconds_count", &[]) >= 2.0);
    assert!(moved("gateway_upstream_latency_seconds", &[]) >= 2.0);
    assert_eq!(moved("gateway_alarm_events_total", &[]), 1.0);
    assert_eq!(sample(&after, "gateway_alarms_active", &[]), 1.0);
    assert_eq!(sample(&after, "gateway_mqtt_connected", &[]), 1.0);
    assert_eq!(
        sample(&after, "gateway_dead_letters", &[("kind", "input")]),
        1.0
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_route_needs_the_bearer_token_when_the_admin_api_listens_beyond_loopback() {
    let receiver = start_receiver().await;
    let gw = start_gateway(
        &receiver,
        Setup {
            admin_host: Some("0.0.0.0"),
            admin_extra: r#"token_env = "TEST_ADMIN_TOKEN""#,
            env: HashMap::from([("TEST_ADMIN_TOKEN".into(), "right-token".into())]),
            with_file: true,
            ..Setup::default()
        },
    )
    .await;
    // Reload re-reads the file with the process environment, where the test's token variable
    // is not set; an empty file is a valid config (defaults, no rules) to reload from.
    std::fs::write(gw.config_file(), "").unwrap();
    for route in ["/", "/healthz", "/metrics", "/status", "/reload"] {
        let (code, _) = get(&gw, route, None).await.unwrap();
        assert_eq!(code, 401, "{route} without a token");
        let (code, _) = get(&gw, route, Some("wrong-token")).await.unwrap();
        assert_eq!(code, 401, "{route} with a wrong token");
        let (code, body) = get(&gw, route, Some("right-token")).await.unwrap();
        assert_eq!(code, 200, "{route} with the right token: {body}");
    }
    // A token presented any other way than `Bearer` is refused too.
    let client = reqwest::Client::new();
    let resp = client
        .get(format!("{}/status", gw.admin))
        .basic_auth("admin", Some("right-token"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    gw.stop().await;
}

#[test]
fn the_config_refuses_an_admin_address_beyond_loopback_without_token_env() {
    for listen in ["0.0.0.0:9100", "192.168.1.20:9100", "[::]:9100"] {
        let text = format!("[admin]\nlisten = \"{listen}\"\n");
        let err = Config::parse_with_env(&text, "test", |_| None)
            .expect_err("a network-reachable admin API without a token is refused");
        assert_eq!(err.key(), Some("admin.listen"), "{err}");
        assert!(err.to_string().contains("token_env"), "{err}");
    }
    for listen in ["127.0.0.1:9100", "[::1]:9100"] {
        let text = format!("[admin]\nlisten = \"{listen}\"\n");
        Config::parse_with_env(&text, "test", |_| None).expect("loopback needs no token");
    }
    // With token_env the variable must be set; an unset one fails the load, naming the key.
    let text = "[admin]\nlisten = \"0.0.0.0:9100\"\ntoken_env = \"NOT_SET_ANYWHERE\"\n";
    let err = Config::parse_with_env(text, "test", |_| None).unwrap_err();
    assert!(err.to_string().contains("NOT_SET_ANYWHERE"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn healthz_stays_200_and_names_the_upstream_as_degraded_while_the_receiver_fails() {
    let receiver = start_receiver().await;
    let gw = start_gateway(&receiver, Setup::default()).await;
    gw.wait_until_subscribed().await;
    poll(DEADLINE, "healthz says ok", || async {
        let (code, body) = get(&gw, "/healthz", None).await.unwrap();
        assert_eq!(code, 200);
        let h: Value = serde_json::from_str(&body).unwrap();
        (h["status"] == "ok").then_some(())
    })
    .await;

    receiver.status.store(500, Ordering::SeqCst);
    publish(gw.mqtt_port, &[reading("dev-1", "temperature", 20.0)]).await;
    let degraded = poll(DEADLINE, "healthz names the upstream", || async {
        let (code, body) = get(&gw, "/healthz", None).await.unwrap();
        assert_eq!(code, 200, "ingest and buffer are up: {body}");
        let h: Value = serde_json::from_str(&body).unwrap();
        (h["status"] == "degraded").then_some(h)
    })
    .await;
    let parts = degraded["degraded"].as_array().unwrap();
    assert!(
        parts
            .iter()
            .any(|p| p.as_str().unwrap().starts_with("upstream")),
        "{degraded}"
    );
    assert!(
        !parts
            .iter()
            .any(|p| p.as_str().unwrap().starts_with("mqtt")),
        "{degraded}"
    );

    receiver.status.store(200, Ordering::SeqCst);
    poll(DEADLINE, "healthz recovers", || async {
        let (_, body) = get(&gw, "/healthz", None).await.unwrap();
        let h: Value = serde_json::from_str(&body).unwrap();
        (h["status"] == "ok" && h["degraded"].as_array().unwrap().is_empty()).then_some(())
    })
    .await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reload_with_an_invalid_file_keeps_the_old_rules_and_a_valid_file_swaps_them() {
    let receiver = start_receiver().await;
    let gw = start_gateway(
        &receiver,
        Setup {
            alarms: HOT_ABOVE_50,
            with_file: true,
            ..Setup::default()
        },
    )
    .await;
    let mut expected = gw.wait_until_subscribed().await;
    let original = std::fs::read_to_string(gw.config_file()).unwrap();
    let warm_above_30 = original.replace(HOT_ABOVE_50, "")
        + "\n[[alarm]]\nname = \"warm\"\nmetric = \"temperature\"\nabove = 30.0\n";

    // Broken file: a valid rule, but a typo elsewhere. The old rules stay.
    std::fs::write(
        gw.config_file(),
        warm_above_30.clone() + "\n[buffer]\nmax_byts = 1\n",
    )
    .unwrap();
    let (code, body) = get(&gw, "/reload", None).await.unwrap();
    assert_eq!(code, 422, "{body}");
    assert!(body.contains("max_byts"), "the error names the key: {body}");
    assert!(body.contains("keeping the current rules"), "{body}");
    publish(gw.mqtt_port, &[reading("dev-1", "temperature", 40.0)]).await;
    expected += 1;
    gw.wait_for_readings(expected).await;
    let s = gw.status().await;
    assert_eq!(s["alarms"]["active"], serde_json::json!([]), "{s}");
    assert_eq!(s["alarms"]["events"], 0);

    // Valid file: the new rule is in force for the next reading.
    std::fs::write(gw.config_file(), &warm_above_30).unwrap();
    let (code, body) = get(&gw, "/reload", None).await.unwrap();
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("1 alarm rule"), "{body}");
    publish(gw.mqtt_port, &[reading("dev-1", "temperature", 41.0)]).await;
    expected += 1;
    gw.wait_for_readings(expected).await;
    let s = gw.status().await;
    let active = s["alarms"]["active"].as_array().unwrap();
    assert_eq!(active.len(), 1, "{s}");
    assert_eq!(active[0]["alarm"], "warm");
    assert_eq!(active[0]["device"], "dev-1");
    gw.stop().await;
}

/// Chromium from Debian's `chromium` package (or whatever `CHROMIUM` names).
fn chromium() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("CHROMIUM") {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH")?;
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .flat_map(|name| std::env::split_paths(&path).map(move |dir| dir.join(name)))
        .find(|p| p.is_file())
}

/// The text of the element with `id`, from a dumped DOM.
fn element_text<'a>(dom: &'a str, id: &str) -> &'a str {
    let open = format!("id=\"{id}\"");
    let at = dom
        .find(&open)
        .unwrap_or_else(|| panic!("no #{id} in the DOM"));
    let rest = &dom[at..];
    let start = rest.find('>').unwrap() + 1;
    let end = rest[start..].find('<').unwrap();
    &rest[start..start + end]
}

/// The `data-points` attribute of the canvas with `id`.
fn chart_points(dom: &str, id: &str) -> u64 {
    let at = dom
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("no #{id}"));
    let tag_start = dom[..at].rfind('<').unwrap();
    let tag = &dom[tag_start..at + dom[at..].find('>').unwrap()];
    let value = tag
        .split("data-points=\"")
        .nth(1)
        .unwrap_or_else(|| panic!("chart #{id} never drew: {tag}"));
    value[..value.find('"').unwrap()].parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_status_page_in_headless_chromium_shows_the_numbers_of_status_and_draws_its_charts() {
    let Some(browser) = chromium() else {
        test_peers::missing(
            "admin::the_status_page_in_headless_chromium",
            "chromium is not installed",
            "apt-get install chromium",
        );
        return;
    };
    let receiver = start_receiver().await;
    // The receiver refuses everything, so the buffer depth holds still at a known number.
    receiver.status.store(503, Ordering::SeqCst);
    let gw = start_gateway(
        &receiver,
        Setup {
            alarms: HOT_ABOVE_50,
            ..Setup::default()
        },
    )
    .await;
    let base = gw.wait_until_subscribed().await;
    let mut messages: Vec<_> = (0..7)
        .map(|i| reading(&format!("dev-{i}"), "humidity", 50.0))
        .collect();
    messages.push(reading("dev-a", "temperature", 70.0));
    messages.push(reading("dev-b", "temperature", 80.0));
    publish(gw.mqtt_port, &messages).await;
    gw.wait_for_readings(base + 9).await;
    let status = poll(DEADLINE, "the buffer holds every reading", || async {
        let s = gw.status().await;
        (s["buffer"]["lanes"]["readings"]["records"].as_u64() == Some(base + 9)
            && s["alarms"]["active"].as_array().unwrap().len() == 2)
            .then_some(s)
    })
    .await;

    let profile = tempfile::tempdir().unwrap();
    let started = Instant::now();
    // The DOM goes to a file, so a large page can never fill a pipe nobody reads yet.
    let dom_file = profile.path().join("dom.html");
    let err_file = profile.path().join("stderr.txt");
    let mut child = std::process::Command::new(&browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--virtual-time-budget=6000",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("{}/", gw.admin))
        .stdin(std::process::Stdio::null())
        .stdout(std::fs::File::create(&dom_file).unwrap())
        .stderr(std::fs::File::create(&err_file).unwrap())
        .spawn()
        .expect("chromium starts");
    let exit = poll(Duration::from_secs(90), "chromium ends", || {
        let exited = child.try_wait().unwrap();
        async move { exited }
    })
    .await;
    let dom = std::fs::read_to_string(&dom_file).unwrap();
    assert!(
        exit.success() && dom.contains("</html>"),
        "chromium failed after {:?}: {exit}\n{}",
        started.elapsed(),
        std::fs::read_to_string(&err_file).unwrap_or_default()
    );
    eprintln!("chromium rendered the page in {:?}", started.elapsed());

    assert!(
        dom.contains("data-refreshed="),
        "the page never refreshed: {dom}"
    );
    assert_eq!(element_text(&dom, "gateway-id"), "gw-admin-test");
    let lanes = &status["buffer"]["lanes"];
    assert_eq!(
        element_text(&dom, "depth"),
        lanes["readings"]["records"].to_string()
    );
    assert_eq!(
        element_text(&dom, "depth-readings"),
        lanes["readings"]["records"].to_string()
    );
    assert_eq!(
        element_text(&dom, "depth-alarms"),
        lanes["alarms"]["records"].to_string()
    );
    assert!(element_text(&dom, "age-readings").ends_with(" s"));
    assert_eq!(
        element_text(&dom, "dead"),
        status["buffer"]["dead_letters"]["count"].to_string()
    );
    let upstream = element_text(&dom, "upstream");
    assert!(
        ["backing_off", "down"].contains(&upstream),
        "upstream shown as {upstream}"
    );
    let active = status["alarms"]["active"].as_array().unwrap();
    assert_eq!(element_text(&dom, "alarm-count"), active.len().to_string());
    assert_eq!(dom.matches("<tr class=\"alarm\">").count(), active.len());
    for a in active {
        let row = format!(
            "<tr class=\"alarm\"><td>{}</td><td>{}</td><td>{}</td>",
            a["alarm"].as_str().unwrap(),
            a["device"].as_str().unwrap(),
            a["metric"].as_str().unwrap()
        );
        assert!(dom.contains(&row), "no row {row}");
    }
    for chart in ["c-rate", "c-depth", "c-latency"] {
        assert!(chart_points(&dom, chart) > 0, "chart {chart} drew nothing");
    }
    gw.stop().await;
}
