//! The admin API of a running gateway, driven in-process through `gateway::run` with real peers:
//! the embedded MQTT broker on a free port, the scripted upstream of `test-peers` standing in for
//! the cloud, a real HTTP client, the `prometheus-parse` crate for `/metrics`, and headless Chromium for the
//! status page.

use gateway::ops::admin::Limits;
use gateway::{RunError, RunOptions};
use gateway_config::Config;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::Value;
use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use test_peers::{Reply, Upstream, free_port, wait_until};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Long enough for a loaded CI box; every wait polls and returns as soon as it can.
const DEADLINE: Duration = Duration::from_secs(20);

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
    /// Files (path under `data_dir`, size in bytes) there before the gateway starts.
    data_files: &'a [(&'a str, usize)],
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

async fn start_gateway(receiver: &Upstream, setup: Setup<'_>) -> Gateway {
    let dir = tempfile::tempdir().unwrap();
    let admin_port = free_port();
    let mqtt_port = free_port();
    let admin = format!("{}:{admin_port}", setup.admin_host.unwrap_or("127.0.0.1"));
    let text = config_text(dir.path(), &admin, mqtt_port, &receiver.url(), &setup);
    let env = setup.env.clone();
    let config = Config::parse_with_env(&text, "test", |name| env.get(name).cloned())
        .unwrap_or_else(|e| panic!("test config: {e}\n{text}"));
    let config_path = setup.with_file.then(|| {
        let path = dir.path().join("gateway.toml");
        std::fs::write(&path, &text).unwrap();
        path
    });
    for (path, size) in setup.data_files {
        let path = dir.path().join("data").join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, vec![7u8; *size]).unwrap();
    }
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
    wait_until("the admin API answers", DEADLINE, || async {
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
        wait_until(
            "the gateway's subscription is granted",
            DEADLINE,
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
        wait_until(&format!("{n} readings counted"), DEADLINE, || async {
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
    let receiver = Upstream::start().await;
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
    wait_until("every reading is delivered upstream", DEADLINE, || async {
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
async fn with_a_token_every_route_needs_it_but_healthz_and_the_page_shell_which_hold_no_data() {
    let receiver = Upstream::start().await;
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
    for route in ["/metrics", "/status", "/reload"] {
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

    // /healthz answers anyone, with the status and the reasons and nothing else.
    for token in [None, Some("wrong-token"), Some("right-token")] {
        let (code, body) = get(&gw, "/healthz", token).await.unwrap();
        assert_eq!(code, 200, "/healthz with {token:?}: {body}");
        let health: Value = serde_json::from_str(&body).unwrap();
        let keys: Vec<_> = health.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["status", "degraded"], "{body}");
        assert!(health["status"].is_string() && health["degraded"].is_array());
    }
    // The page shell answers anyone too, and holds nothing of the gateway's.
    let resp = client.get(format!("{}/", gw.admin)).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let csp = resp.headers()["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("connect-src 'self'"), "{csp}");
    let page = resp.text().await.unwrap();
    assert!(page.contains("<title>Gateway status</title>"));
    assert!(
        !page.contains("gw-admin-test"),
        "the shell names the gateway"
    );
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
    let receiver = Upstream::start().await;
    let gw = start_gateway(&receiver, Setup::default()).await;
    gw.wait_until_subscribed().await;
    wait_until("healthz says ok", DEADLINE, || async {
        let (code, body) = get(&gw, "/healthz", None).await.unwrap();
        assert_eq!(code, 200);
        let h: Value = serde_json::from_str(&body).unwrap();
        (h["status"] == "ok").then_some(())
    })
    .await;

    receiver.set_default(Reply::Status(500));
    publish(gw.mqtt_port, &[reading("dev-1", "temperature", 20.0)]).await;
    let degraded = wait_until("healthz names the upstream", DEADLINE, || async {
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

    receiver.set_default(Reply::Status(200));
    wait_until("healthz recovers", DEADLINE, || async {
        let (_, body) = get(&gw, "/healthz", None).await.unwrap();
        let h: Value = serde_json::from_str(&body).unwrap();
        (h["status"] == "ok" && h["degraded"].as_array().unwrap().is_empty()).then_some(())
    })
    .await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reload_with_an_invalid_file_keeps_the_old_rules_and_a_valid_file_swaps_them() {
    let receiver = Upstream::start().await;
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

/// [`chromium`], or `None` after reporting `test` as not run for real (a failure under `CI`).
fn chromium_or_report(test: &str) -> Option<PathBuf> {
    let found = chromium();
    if found.is_none() {
        test_peers::missing(
            test,
            "chromium is not installed",
            "apt-get install chromium",
        );
    }
    found
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

/// The opening tag of the element with `id`, from a dumped DOM.
fn opening_tag<'a>(dom: &'a str, id: &str) -> &'a str {
    let at = dom
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("no #{id}"));
    let tag_start = dom[..at].rfind('<').unwrap();
    &dom[tag_start..at + dom[at..].find('>').unwrap()]
}

/// Whether the page shows its token form (`#auth` not `hidden`).
fn asks_for_token(dom: &str) -> bool {
    !opening_tag(dom, "auth").contains(" hidden")
}

/// The `data-points` attribute of the canvas with `id`.
fn chart_points(dom: &str, id: &str) -> u64 {
    let tag = opening_tag(dom, id);
    let value = tag
        .split("data-points=\"")
        .nth(1)
        .unwrap_or_else(|| panic!("chart #{id} never drew: {tag}"));
    value[..value.find('"').unwrap()].parse().unwrap()
}

/// The DOM of `url` once headless Chromium ran the page's scripts for 6 s of virtual time
/// (three refreshes of the status page).
async fn render(browser: &Path, url: &str) -> String {
    let profile = tempfile::tempdir().unwrap();
    let started = Instant::now();
    // The DOM goes to a file, so a large page can never fill a pipe nobody reads yet.
    let dom_file = profile.path().join("dom.html");
    let err_file = profile.path().join("stderr.txt");
    let mut child = std::process::Command::new(browser)
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
        .arg(url)
        .stdin(std::process::Stdio::null())
        .stdout(std::fs::File::create(&dom_file).unwrap())
        .stderr(std::fs::File::create(&err_file).unwrap())
        .spawn()
        .expect("chromium starts");
    let exit = wait_until("chromium ends", Duration::from_secs(90), || {
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
    eprintln!("chromium rendered {url} in {:?}", started.elapsed());
    dom
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_status_page_in_headless_chromium_shows_the_numbers_of_status_and_draws_its_charts() {
    let Some(browser) = chromium_or_report("admin::the_status_page_in_headless_chromium") else {
        return;
    };
    let receiver = Upstream::start().await;
    // The receiver refuses everything, so the buffer depth holds still at a known number.
    receiver.set_default(Reply::Status(503));
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
    let status = wait_until("the buffer holds every reading", DEADLINE, || async {
        let s = gw.status().await;
        (s["buffer"]["lanes"]["readings"]["records"].as_u64() == Some(base + 9)
            && s["alarms"]["active"].as_array().unwrap().len() == 2)
            .then_some(s)
    })
    .await;

    let dom = render(&browser, &format!("{}/", gw.admin)).await;

    assert!(
        dom.contains("data-refreshed="),
        "the page never refreshed: {dom}"
    );
    assert!(!asks_for_token(&dom), "no token is configured: {dom}");
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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_a_token_the_status_page_asks_for_it_and_shows_the_numbers_once_given_in_the_fragment()
{
    let Some(browser) = chromium_or_report("admin::with_a_token_the_status_page_asks_for_it")
    else {
        return;
    };
    let receiver = Upstream::start().await;
    // A token with characters a URL must escape: the page decodes the fragment.
    let token = "s3cr3t/+=x";
    let gw = start_gateway(
        &receiver,
        Setup {
            admin_extra: r#"token_env = "TEST_ADMIN_TOKEN""#,
            env: HashMap::from([("TEST_ADMIN_TOKEN".into(), token.into())]),
            ..Setup::default()
        },
    )
    .await;

    let dom = render(&browser, &format!("{}/", gw.admin)).await;
    assert!(asks_for_token(&dom), "{dom}");
    assert!(
        element_text(&dom, "auth-message").contains("needs its token (401)"),
        "{dom}"
    );
    assert!(!dom.contains("data-refreshed="), "shown without a token");
    assert_eq!(element_text(&dom, "gateway-id"), "…");

    let dom = render(&browser, &format!("{}/#token=wrong", gw.admin)).await;
    assert!(asks_for_token(&dom), "{dom}");
    assert!(
        element_text(&dom, "auth-message").contains("refused this token (401)"),
        "{dom}"
    );
    assert!(!dom.contains("data-refreshed="), "shown with a wrong token");

    let dom = render(&browser, &format!("{}/#token=s3cr3t%2F%2B%3Dx", gw.admin)).await;
    assert!(!asks_for_token(&dom), "{dom}");
    assert!(dom.contains("data-refreshed="), "never refreshed: {dom}");
    assert_eq!(element_text(&dom, "gateway-id"), "gw-admin-test");
    assert_eq!(element_text(&dom, "auth-message"), "");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn databases_moved_aside_earlier_are_listed_in_status_and_metrics_until_removed() {
    let aside = "buffer.sled.corrupt-20240101T000000Z";
    let files = [
        (format!("buffer/{aside}/db"), 1000),
        (format!("buffer/{aside}/conf"), 24),
        (format!("buffer/{aside}/blobs/7"), 4),
    ];
    let files: Vec<(&str, usize)> = files.iter().map(|(p, n)| (p.as_str(), *n)).collect();
    let receiver = Upstream::start().await;
    let gw = start_gateway(
        &receiver,
        Setup {
            data_files: &files,
            ..Setup::default()
        },
    )
    .await;
    let path = gw.dir.path().join("data/buffer").join(aside);

    let status = gw.status().await;
    let buffer = &status["buffer"];
    assert_eq!(
        buffer["moved_aside"], 0,
        "this start moved nothing: {buffer}"
    );
    assert_eq!(
        buffer["moved_aside_on_disk"],
        serde_json::json!({
            "count": 1,
            "bytes": 1028,
            "databases": [{
                "path": path.display().to_string(),
                "bytes": 1028,
                "moved_at_ms": 1_704_067_200_000_i64,
            }],
            "error": null,
        })
    );
    let metrics = scrape(&gw).await;
    assert_eq!(
        sample(&metrics, "gateway_buffer_moved_aside_on_disk", &[]),
        1.0
    );
    assert_eq!(
        sample(&metrics, "gateway_buffer_moved_aside_on_disk_bytes", &[]),
        1028.0
    );

    // What docs/OPERATIONS.md tells the operator to do, with the gateway running.
    std::fs::remove_dir_all(&path).unwrap();
    let status = gw.status().await;
    assert_eq!(status["buffer"]["moved_aside_on_disk"]["count"], 0);
    let metrics = scrape(&gw).await;
    assert_eq!(
        sample(&metrics, "gateway_buffer_moved_aside_on_disk", &[]),
        0.0
    );
    let (code, _) = get(&gw, "/healthz", None).await.unwrap();
    assert_eq!(code, 200);
    gw.stop().await;
}

// The admin server's limits, on a router of the test's own (`serve_with` serves any), so that a
// handler can hold requests and count them.

/// A route that holds each request until the test releases it, counting those inside.
struct Hold {
    inside: AtomicUsize,
    peak: AtomicUsize,
    /// One permit lets one held request go.
    release: tokio::sync::Semaphore,
}

impl Default for Hold {
    fn default() -> Self {
        Hold {
            inside: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
            release: tokio::sync::Semaphore::new(0),
        }
    }
}

fn held_router(hold: Arc<Hold>) -> axum::Router {
    let handler = move || {
        let hold = hold.clone();
        async move {
            let now = hold.inside.fetch_add(1, Ordering::SeqCst) + 1;
            hold.peak.fetch_max(now, Ordering::SeqCst);
            hold.release.acquire().await.unwrap().forget();
            hold.inside.fetch_sub(1, Ordering::SeqCst);
            "released"
        }
    };
    axum::Router::new()
        .route("/healthz", axum::routing::get(|| async { "ok" }))
        .route("/hold", axum::routing::get(handler))
        .route(
            "/echo",
            axum::routing::post(|body: String| async move { body }),
        )
}

/// Serves `router` under `limits` on a free port until the returned token is cancelled.
async fn serve_limited(
    router: axum::Router,
    limits: Limits,
) -> (SocketAddr, tokio_util::sync::CancellationToken) {
    let stop = tokio_util::sync::CancellationToken::new();
    let addr = gateway::ops::admin::serve_with(
        "127.0.0.1:0".parse().unwrap(),
        router,
        limits,
        stop.clone(),
    )
    .await
    .unwrap();
    (addr, stop)
}

/// `GET path` with `Connection: close` on `stream`, and everything the server sends back
/// until it closes the connection.
async fn get_to_close(mut stream: TcpStream, path: &str) -> String {
    let request = format!("GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    read_to_close(&mut stream).await
}

/// Everything the server sends until it closes the connection (a reset counts as closed).
/// Fails the test if the server keeps it open for [`DEADLINE`].
async fn read_to_close(stream: &mut (impl AsyncRead + Unpin)) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let read = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    };
    let closed = tokio::time::timeout(DEADLINE, read).await.is_ok();
    let got = String::from_utf8_lossy(&got).into_owned();
    assert!(
        closed,
        "the server kept the connection open for {DEADLINE:?}; it sent {got:?}"
    );
    got
}

/// The status code of a raw HTTP/1.1 response (0 for none).
fn status_code(response: &str) -> u16 {
    response
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_that_never_completes_its_request_head_is_disconnected_after_the_header_timeout() {
    let timeout = Duration::from_millis(300);
    let limits = Limits {
        header_read_timeout: timeout,
        ..Limits::default()
    };
    let (addr, _stop) = serve_limited(held_router(Arc::default()), limits).await;

    // Half a request head, then silence.
    let started = Instant::now();
    let mut stalled = TcpStream::connect(addr).await.unwrap();
    stalled
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: adm")
        .await
        .unwrap();
    let answer = read_to_close(&mut stalled).await;
    assert!(
        started.elapsed() >= timeout,
        "closed after {:?}",
        started.elapsed()
    );
    assert_ne!(status_code(&answer), 200, "{answer}");

    // A head dribbled a byte every 20 ms, which would take 8 s whole: the timeout bounds the
    // whole head, not the wait for each byte.
    let started = Instant::now();
    let (mut from_server, mut to_server) = TcpStream::connect(addr).await.unwrap().into_split();
    let head = format!(
        "GET /healthz HTTP/1.1\r\nX-Slow: {}\r\n\r\n",
        "a".repeat(360)
    );
    let dribble = async {
        for byte in head.as_bytes() {
            if to_server.write_all(&[*byte]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::select! {
        answer = read_to_close(&mut from_server) => {
            assert!(started.elapsed() >= timeout, "closed after {:?}", started.elapsed());
            assert_ne!(status_code(&answer), 200, "{answer}");
        }
        () = dribble => panic!("the whole head went through a byte at a time"),
    }

    // The server itself is fine.
    let answer = get_to_close(TcpStream::connect(addr).await.unwrap(), "/healthz").await;
    assert_eq!(status_code(&answer), 200, "{answer}");
}

/// A client that pipelines requests and never reads the answers stalls the server's writes,
/// where no read timeout runs; the connection's age bound still frees its slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_that_never_reads_its_answers_loses_its_slot_at_the_connection_age_bound() {
    let age = Duration::from_millis(500);
    let limits = Limits {
        max_connections: 1,
        header_read_timeout: Duration::from_secs(120),
        request_timeout: Duration::from_secs(120),
        max_connection_age: age,
        ..Limits::default()
    };
    let (addr, _stop) = serve_limited(held_router(Arc::default()), limits).await;
    let started = Instant::now();
    let hog = TcpStream::connect(addr).await.unwrap();
    let (_from_server, mut to_server) = hog.into_split();
    // Requests until the socket buffers are full both ways; the answers are never read.
    let flood = tokio::spawn(async move {
        let request = b"GET /healthz HTTP/1.1\r\nHost: admin\r\n\r\n".repeat(100);
        while to_server.write_all(&request).await.is_ok() {}
    });
    // The one slot is the hog's; this client is served only once the hog's connection is cut.
    let answer = get_to_close(TcpStream::connect(addr).await.unwrap(), "/healthz").await;
    assert_eq!(status_code(&answer), 200, "{answer}");
    assert!(
        started.elapsed() >= age,
        "served after {:?}",
        started.elapsed()
    );
    flood.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_more_than_max_connections_are_served_at_once_and_the_others_wait_their_turn() {
    const CAP: usize = 3;
    const EXTRA: usize = 3;
    let hold = Arc::new(Hold::default());
    let limits = Limits {
        // Far beyond the test: no connection or held request is cut for being slow.
        header_read_timeout: Duration::from_secs(120),
        request_timeout: Duration::from_secs(120),
        max_connections: CAP,
        ..Limits::default()
    };
    let (addr, _stop) = serve_limited(held_router(hold.clone()), limits).await;

    // CAP + EXTRA requests at once, each on its own connection; the route holds each one.
    let (answers_tx, mut answers) = tokio::sync::mpsc::channel(CAP + EXTRA);
    for _ in 0..CAP + EXTRA {
        let stream = TcpStream::connect(addr).await.unwrap();
        let answers_tx = answers_tx.clone();
        tokio::spawn(async move {
            let _ = answers_tx.send(get_to_close(stream, "/hold").await).await;
        });
    }
    wait_until("the route holds CAP requests", DEADLINE, || async {
        (hold.inside.load(Ordering::SeqCst) >= CAP).then_some(())
    })
    .await;
    // One release at a time: each answer closes its connection (`Connection: close`), which
    // lets one waiting connection in. A server without the cap would have let them all in
    // at once, and `peak` would say so.
    for answered in 1..=CAP + EXTRA {
        hold.release.add_permits(1);
        let answer = tokio::time::timeout(DEADLINE, answers.recv())
            .await
            .unwrap_or_else(|_| panic!("answer {answered} never came"))
            .unwrap();
        assert_eq!(status_code(&answer), 200, "{answer}");
    }
    assert_eq!(
        hold.peak.load(Ordering::SeqCst),
        CAP,
        "requests inside at once"
    );

    // CAP + EXTRA idle connections take every slot and fill the backlog; once their clients
    // drop them, the slots come back.
    let idle: Vec<_> =
        futures::future::join_all((0..CAP + EXTRA).map(|_| TcpStream::connect(addr)))
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
    drop(idle);
    let answer = get_to_close(TcpStream::connect(addr).await.unwrap(), "/healthz").await;
    assert_eq!(status_code(&answer), 200, "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn idle_connections_holding_every_slot_are_closed_by_the_header_timeout_and_others_get_in() {
    const CAP: usize = 2;
    let timeout = Duration::from_millis(500);
    let limits = Limits {
        header_read_timeout: timeout,
        max_connections: CAP,
        ..Limits::default()
    };
    let (addr, _stop) = serve_limited(held_router(Arc::default()), limits).await;
    let started = Instant::now();
    let mut idle = Vec::new();
    for _ in 0..CAP {
        idle.push(TcpStream::connect(addr).await.unwrap());
    }
    // Waits behind them: answered only once the timeout closed one.
    let answer = get_to_close(TcpStream::connect(addr).await.unwrap(), "/healthz").await;
    assert_eq!(status_code(&answer), 200, "{answer}");
    assert!(
        started.elapsed() >= timeout,
        "answered after {:?}, while the idle connections held every slot",
        started.elapsed()
    );
    for mut conn in idle {
        let got = read_to_close(&mut conn).await;
        assert_eq!(got, "", "an idle connection got an answer");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_request_body_over_the_limit_is_answered_413_a_late_one_408_and_one_within_both_is_read()
{
    let request_timeout = Duration::from_millis(300);
    let limits = Limits {
        max_body_bytes: 1024,
        request_timeout,
        ..Limits::default()
    };
    let (addr, _stop) = serve_limited(held_router(Arc::default()), limits).await;
    let post = |head: String, body: Vec<u8>| async move {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(head.as_bytes()).await.unwrap();
        stream.write_all(&body).await.unwrap();
        read_to_close(&mut stream).await
    };
    let head = |extra: &str| {
        format!("POST /echo HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n{extra}\r\n")
    };

    // Declared too large: answered before the body is sent.
    let answer = post(head("Content-Length: 1048576\r\n"), Vec::new()).await;
    assert_eq!(status_code(&answer), 413, "{answer}");
    // Chunked, so no length up front: answered once the limit is crossed.
    let mut chunk = format!("{:x}\r\n", 1025).into_bytes();
    chunk.extend(std::iter::repeat_n(b'x', 1025));
    let answer = post(head("Transfer-Encoding: chunked\r\n"), chunk).await;
    assert_eq!(status_code(&answer), 413, "{answer}");
    // Three bytes of ten, then nothing: answered 408 once the request took too long.
    let started = Instant::now();
    let answer = post(head("Content-Length: 10\r\n"), b"abc".to_vec()).await;
    assert_eq!(status_code(&answer), 408, "{answer}");
    assert!(
        started.elapsed() >= request_timeout,
        "after {:?}",
        started.elapsed()
    );
    // At the limit and in time it goes through.
    let answer = post(head("Content-Length: 1024\r\n"), vec![b'y'; 1024]).await;
    assert_eq!(status_code(&answer), 200, "{answer}");
    assert!(answer.ends_with(&"y".repeat(1024)), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn post_reload_with_a_body_over_64_kib_is_answered_413() {
    let receiver = Upstream::start().await;
    let gw = start_gateway(
        &receiver,
        Setup {
            with_file: true,
            ..Setup::default()
        },
    )
    .await;
    let addr: SocketAddr = gw.admin.trim_start_matches("http://").parse().unwrap();
    let reload = |extra: &str, body: &[u8]| {
        let mut request =
            format!("POST /reload HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n{extra}\r\n")
                .into_bytes();
        request.extend_from_slice(body);
        async move {
            let mut stream = TcpStream::connect(addr).await.unwrap();
            stream.write_all(&request).await.unwrap();
            read_to_close(&mut stream).await
        }
    };
    let answer = reload("Content-Length: 65537\r\n", b"").await;
    assert_eq!(status_code(&answer), 413, "{answer}");
    let mut chunk = format!("{:x}\r\n", 65537).into_bytes();
    chunk.extend(std::iter::repeat_n(b'x', 65537));
    let answer = reload("Transfer-Encoding: chunked\r\n", &chunk).await;
    assert_eq!(status_code(&answer), 413, "{answer}");
    // The same route with a small body reloads.
    let answer = reload("Content-Length: 2\r\n", b"{}").await;
    assert_eq!(status_code(&answer), 200, "{answer}");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_stop_the_listener_closes_idle_connections_close_and_a_request_in_progress_finishes() {
    let hold = Arc::new(Hold::default());
    let limits = Limits {
        header_read_timeout: Duration::from_secs(120),
        request_timeout: Duration::from_secs(120),
        ..Limits::default()
    };
    let (addr, stop) = serve_limited(held_router(hold.clone()), limits).await;

    // An idle keep-alive connection, after one answered request.
    let mut idle = TcpStream::connect(addr).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: admin\r\n\r\n")
        .await
        .unwrap();
    let mut first = [0u8; 12];
    tokio::time::timeout(DEADLINE, idle.read_exact(&mut first))
        .await
        .expect("/healthz answers")
        .unwrap();
    assert_eq!(&first, b"HTTP/1.1 200");
    // A request in progress.
    let busy = tokio::spawn(get_to_close(
        TcpStream::connect(addr).await.unwrap(),
        "/hold",
    ));
    wait_until("the request is in the handler", DEADLINE, || async {
        (hold.inside.load(Ordering::SeqCst) == 1).then_some(())
    })
    .await;

    stop.cancel();
    read_to_close(&mut idle).await;
    wait_until("the port refuses connections", DEADLINE, || async {
        TcpStream::connect(addr).await.is_err().then_some(())
    })
    .await;
    hold.release.add_permits(1);
    let answer = tokio::time::timeout(DEADLINE, busy)
        .await
        .expect("the request in progress is answered")
        .unwrap();
    assert_eq!(status_code(&answer), 200, "{answer}");
    assert!(answer.ends_with("released"), "{answer}");
}
