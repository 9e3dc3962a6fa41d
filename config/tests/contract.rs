//! The contract file, the shipped example and the defaults agree with each other.

use gateway_config::{
    AlarmCondition, Compression, Config, DEFAULT_CONFIG_TOML, DataType, IngestConfig,
    KafkaCompression, KafkaSinkConfig, Limit, ModbusLink, MqttMode, MqttSinkConfig, RegisterKind,
    RegisterValue, Severity, SinkKind, SinkLane, SinkLanes, WhenFull, WordOrder,
    default_config_toml, defaults,
};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// The project's own copy of the contract, inside the repository.
const PROJECT_CONTRACT: &str = include_str!("../../docs/gateway.contract.toml");
/// Where the shared contract lives relative to a folder holding `shared/`.
const SHARED_CONTRACT: &str = "shared/spec/gateway.example.toml";

/// The shared contract, outside the repository: `$GATEWAY_SHARED_DIR/spec/…` if set, else
/// `shared/` beside this checkout, else beside the checkout this one was cloned from (a fresh
/// clone in a temp dir, as CI makes). `Err` lists where it looked.
fn shared_contract() -> Result<PathBuf, String> {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace dir");
    let mut candidates = Vec::new();
    if let Some(dir) = std::env::var_os("GATEWAY_SHARED_DIR") {
        candidates.push(Path::new(&dir).join("spec/gateway.example.toml"));
    }
    candidates.push(workspace.join("..").join(SHARED_CONTRACT));
    let origin = std::process::Command::new("git")
        .arg("-C")
        .arg(workspace)
        .args(["remote", "get-url", "origin"])
        .output();
    if let Ok(out) = origin
        && out.status.success()
    {
        let url = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        let url = url.strip_prefix("file://").unwrap_or(&url);
        if Path::new(url).is_absolute() {
            candidates.push(Path::new(url).join("..").join(SHARED_CONTRACT));
        }
    }
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .ok_or_else(|| format!("looked at {candidates:?}"))
}

fn no_env(_: &str) -> Option<String> {
    None
}

fn parse(text: &str) -> Config {
    Config::parse_with_env(text, "test.toml", no_env).unwrap_or_else(|e| panic!("{e}"))
}

fn mqtt(kind: &SinkKind) -> &MqttSinkConfig {
    match kind {
        SinkKind::Mqtt(m) => m,
        other => panic!("an mqtt sink expected, got {other:?}"),
    }
}

fn kafka(kind: &SinkKind) -> &KafkaSinkConfig {
    match kind {
        SinkKind::Kafka(k) => k,
        other => panic!("a kafka sink expected, got {other:?}"),
    }
}

#[test]
fn project_copy_of_the_contract_loads_with_every_value_as_written() {
    let config = parse(PROJECT_CONTRACT);
    assert_eq!(config.gateway_id, "gw-greenhouse-01");
    assert_eq!(config.data_dir, PathBuf::from("./data"));
    assert_eq!(config.mqtt.mode, MqttMode::External);
    assert_eq!(config.mqtt.url.as_str(), "mqtt://127.0.0.1:1883");
    assert_eq!(
        (config.mqtt.broker_host(), config.mqtt.broker_port()),
        ("127.0.0.1", 1883)
    );
    assert_eq!(config.mqtt.client_id, "gw-greenhouse-01");
    assert_eq!(config.mqtt.topics, ["sensors/#"]);
    let templates: Vec<&str> = config
        .mqtt
        .topic_templates
        .iter()
        .map(|t| t.as_str())
        .collect();
    assert_eq!(templates, ["sensors/{device}/{metric}", "sensors/{device}"]);

    assert_eq!(config.serial.len(), 1);
    assert_eq!(config.serial[0].port, PathBuf::from("/dev/ttyUSB0"));
    assert_eq!(config.serial[0].baud, 115_200);
    assert_eq!(config.serial[0].device, "uart-0");

    assert_eq!(config.buffer.max_bytes, 268_435_456);
    assert_eq!(config.buffer.when_full, WhenFull::DropOldest);
    assert_eq!(config.buffer.max_age_s, 604_800);
    assert_eq!(config.buffer.alarm_max_bytes, 16_777_216);
    assert_eq!(config.buffer.commit_interval_ms, 5);

    let up = &config.upstream;
    assert_eq!(up.url.as_str(), "http://127.0.0.1:8080/ingest");
    assert_eq!((up.batch_max_records, up.batch_max_bytes), (500, 262_144));
    assert_eq!((up.linger_ms, up.timeout_ms), (1000, 10_000));
    assert_eq!(up.compression, Compression::Gzip);
    assert_eq!(
        (up.retry_initial_ms, up.retry_max_ms, up.max_in_flight),
        (200, 60_000, 16)
    );
    assert!(up.bearer_token.is_none());

    assert_eq!(
        config.admin.listen,
        "127.0.0.1:9100".parse::<SocketAddr>().unwrap()
    );

    let rules: Vec<_> = config
        .alarm
        .iter()
        .map(|r| (r.name.as_str(), r.severity))
        .collect();
    assert_eq!(
        rules,
        [
            ("overheat", Severity::Critical),
            ("freezing", Severity::Warning),
            ("pressure-jump", Severity::Warning),
            ("silent", Severity::Warning),
        ]
    );
    assert_eq!(
        config.alarm[0].condition,
        AlarmCondition::Threshold {
            above: Some(Limit {
                trigger: 35.0,
                clear: 33.0
            }),
            below: None
        }
    );
    assert_eq!(config.alarm[0].for_s, 10);
    assert_eq!(
        config.alarm[1].condition,
        AlarmCondition::Threshold {
            above: None,
            below: Some(Limit {
                trigger: 0.0,
                clear: 1.0
            })
        }
    );
    assert_eq!(
        config.alarm[2].condition,
        AlarmCondition::Rate {
            rate_above_per_s: 5.0
        }
    );
    assert_eq!(
        config.alarm[3].condition,
        AlarmCondition::NoData { no_data_s: 120 }
    );
    assert!(config.alarm[0].matches("dev-7", "temperature"));
    assert!(!config.alarm[0].matches("dev-7", "humidity"));
    assert!(config.alarm[3].metric_glob().is_match("anything"));
}

#[test]
fn shared_contract_file_loads_and_matches_the_project_copy() {
    let path = match shared_contract() {
        Ok(path) => path,
        Err(looked) => {
            test_peers::outside_checkout(
                "contract::shared_contract_file_loads_and_matches_the_project_copy",
                &format!("the shared contract is not beside this checkout ({looked})"),
                "set GATEWAY_SHARED_DIR to the shared/ folder, or check the project out beside it",
            );
            return;
        }
    };
    Config::load_with_env(&path, no_env).unwrap_or_else(|e| panic!("{e}"));
    let shared = std::fs::read_to_string(&path).unwrap();
    assert_eq!(
        shared, PROJECT_CONTRACT,
        "docs/gateway.contract.toml must stay a copy of the shared contract"
    );
}

#[test]
fn empty_file_is_valid_and_equals_defaults() {
    let config = parse("");
    assert_eq!(config, Config::default());
    assert_eq!(config.gateway_id, "gateway");
    assert_eq!(config.data_dir, PathBuf::from("./data"));
    assert_eq!(
        (config.shutdown_grace_s, config.alarm_max_series),
        (10, 100_000)
    );
    assert_eq!(config.mqtt.mode, MqttMode::Embedded);
    assert_eq!(config.mqtt.client_id, "gateway");
    assert_eq!(
        config.mqtt.embedded_listen,
        "127.0.0.1:1883".parse::<SocketAddr>().unwrap()
    );
    assert_eq!(
        (
            config.mqtt.max_inflight,
            config.mqtt.max_payload_bytes,
            config.mqtt.keep_alive_s
        ),
        (100, 65_536, 30)
    );
    assert!(config.serial.is_empty());
    assert_eq!(config.buffer.commit_max_records, 1000);
    assert_eq!(config.buffer.commit_stretch_ms, 50);
    assert_eq!(config.buffer.cache_capacity_bytes, 8 * 1024 * 1024);
    assert_eq!(config.buffer.dead_letter_max_bytes, 16 * 1024 * 1024);
    assert_eq!(config.upstream.url.as_str(), "http://127.0.0.1:8080/ingest");
    assert_eq!(config.upstream.retry_on_status, [408, 429]);
    assert!(config.upstream.retry_on_5xx);
    assert_eq!(
        config.admin.listen,
        "127.0.0.1:9100".parse::<SocketAddr>().unwrap()
    );
    assert!(config.alarm.is_empty());
}

#[test]
fn shipped_example_loads_to_the_defaults_plus_the_contract_rules() {
    assert_eq!(DEFAULT_CONFIG_TOML, default_config_toml());
    let example = parse(DEFAULT_CONFIG_TOML);
    let expected = Config {
        alarm: parse(PROJECT_CONTRACT).alarm,
        ..Config::default()
    };
    assert_eq!(example, expected);
}

/// `(section, key)` for every `key = value` line, commented out or not (`# # key = …` too: an
/// optional key inside a commented-out table), where the section is the
/// nearest `[table]` or `[[array]]` header above it (also read through `#`). `[[modbus.register]]`
/// is its own section; a `[[sink]]` table is `sink:` and its kind (`sink:mqtt`, `sink:kafka`), as
/// each kind has its own keys.
fn keys_by_section(text: &str) -> Vec<(String, String)> {
    let mut section = String::new();
    let mut table_start = 0;
    let mut out: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        let line = line.trim_start_matches(['#', ' ']).trim();
        if let Some(header) = line.strip_prefix('[') {
            if let Some(end) = header.find(']') {
                section = header[..end].trim_start_matches('[').to_owned();
                table_start = out.len();
            }
            continue;
        }
        let Some((key, value)) = line.split_once(" = ") else {
            continue;
        };
        let key = key.trim();
        if key
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        {
            if section == "sink" && key == "kind" {
                let kind = value.split('"').nth(1).unwrap_or_default();
                section = format!("sink:{kind}");
                for (earlier, _) in &mut out[table_start..] {
                    earlier.clone_from(&section);
                }
            }
            out.push((section.clone(), key.to_owned()));
        }
    }
    out
}

#[test]
fn shipped_example_mentions_every_key_of_the_contract() {
    let example_keys = keys_by_section(DEFAULT_CONFIG_TOML);
    for (section, key) in keys_by_section(PROJECT_CONTRACT) {
        assert!(
            example_keys.contains(&(section.clone(), key.clone())),
            "example lacks contract key {key} of [{section}]"
        );
    }
    for key in [
        "shutdown_grace_s",
        "alarm_max_series",
        "max_inflight",
        "commit_max_records",
        "commit_stretch_ms",
        "cache_capacity_bytes",
        "dead_letter_max_bytes",
        "retry_on_status",
        "retry_on_5xx",
        "max_payload_bytes",
        "max_packet_bytes",
        "keep_alive_s",
        "reconnect_max_ms",
        "max_line_bytes",
        "reopen_max_ms",
    ] {
        assert!(
            example_keys.iter().any(|(_, k)| k == key),
            "example lacks project key {key}"
        );
    }
    // Every key of each kind of sink, the contract's and ours, in the example's [[sink]] table
    // of that kind.
    for (kind, keys) in [
        ("mqtt", &MQTT_SINK_KEYS[..]),
        ("kafka", &KAFKA_SINK_KEYS[..]),
    ] {
        for key in keys {
            assert!(
                example_keys.contains(&(format!("sink:{kind}"), (*key).to_owned())),
                "example lacks key {key} of a {kind} [[sink]]"
            );
        }
    }
}

/// Every key of a `kind = "mqtt"` sink (the unknown-key error of such a `[[sink]]` lists them
/// too).
const MQTT_SINK_KEYS: [&str; 20] = [
    "name",
    "kind",
    "url",
    "client_id",
    "ca_file",
    "client_cert_file",
    "client_key_file",
    "topic",
    "lanes",
    "username",
    "password_env",
    "keep_alive_s",
    "timeout_ms",
    "max_message_bytes",
    "batch_max_records",
    "batch_max_bytes",
    "linger_ms",
    "retry_initial_ms",
    "retry_max_ms",
    "max_in_flight",
];

/// Every key of a `kind = "kafka"` sink (the unknown-key error of such a `[[sink]]` lists them
/// too).
const KAFKA_SINK_KEYS: [&str; 22] = [
    "name",
    "kind",
    "brokers",
    "client_id",
    "tls",
    "ca_file",
    "client_cert_file",
    "client_key_file",
    "topic",
    "alarm_topic",
    "lanes",
    "compression",
    "sasl_mechanism",
    "username",
    "password_env",
    "timeout_ms",
    "batch_max_records",
    "batch_max_bytes",
    "linger_ms",
    "retry_initial_ms",
    "retry_max_ms",
    "max_in_flight",
];

/// The keys an unknown-key error lists for a `[[sink]]` table that says `kind` (line 1).
fn allowed_sink_keys(kind: &str) -> Vec<String> {
    let text = format!("[[sink]]\n{kind}nope = 1\n");
    let err = Config::parse_with_env(&text, "test.toml", no_env).unwrap_err();
    let gateway_config::ConfigError::UnknownKey { allowed, .. } = err else {
        panic!("{err}");
    };
    allowed
}

#[test]
fn every_key_a_sink_accepts_is_in_the_list_the_example_is_checked_against() {
    assert_eq!(allowed_sink_keys("kind = \"mqtt\"\n"), MQTT_SINK_KEYS);
    assert_eq!(allowed_sink_keys("kind = \"kafka\"\n"), KAFKA_SINK_KEYS);
    // Without a kind, the keys of every kind.
    let mut all = allowed_sink_keys("");
    let mut both: Vec<String> = MQTT_SINK_KEYS
        .iter()
        .chain(&KAFKA_SINK_KEYS)
        .map(|k| (*k).to_owned())
        .collect();
    all.sort();
    both.sort();
    both.dedup();
    assert_eq!(all, both);
}

/// The contract with one optional table uncommented: its header line and the commented `key =`
/// lines after it, up to the next blank or header line. Every table with that header.
fn contract_with(header: &str) -> String {
    uncomment_tables(PROJECT_CONTRACT, header, |_| true)
}

/// The contract with its `[[sink]]` of `kind` uncommented; the other one stays commented.
fn contract_with_sink(contract: &str, kind: &str) -> String {
    uncomment_tables(contract, "[[sink]]", |table| {
        table.contains(&format!("\nkind = \"{kind}\""))
    })
}

/// `text` with the tables under `header` that `pick` accepts (it sees a table uncommented)
/// uncommented: the header line and the commented `key =` lines after it, up to the next blank,
/// bare `#` or header line. Comments inside a table (`# # …`) stay comments.
fn uncomment_tables(text: &str, header: &str, pick: impl Fn(&str) -> bool) -> String {
    let bare = |line: &'_ str| -> String { line.strip_prefix("# ").unwrap_or(line).to_owned() };
    let mut out = String::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        if bare(line).trim_end() != header {
            out.push_str(line);
            out.push('\n');
            continue;
        }
        let mut table = vec![line];
        while let Some(next) =
            lines.next_if(|l| !(l.trim() == "#" || l.trim().is_empty() || bare(l).starts_with('[')))
        {
            table.push(next);
        }
        let uncommented: Vec<String> = table
            .iter()
            .map(|line| {
                let b = bare(line);
                if b.trim_end() == header || (b.contains(" = ") && !b.starts_with(['[', '#'])) {
                    b
                } else {
                    (*line).to_owned()
                }
            })
            .collect();
        let chosen = if pick(&uncommented.join("\n")) {
            uncommented
        } else {
            table.iter().map(|l| (*l).to_owned()).collect()
        };
        for line in chosen {
            out.push_str(&line);
            out.push('\n');
        }
    }
    out
}

/// `text` with the contract's example TLS file names replaced by real files of `pki`, so a table
/// that names them can load (TLS files are read and checked at load time).
fn with_real_tls_files(text: &str, pki: &test_peers::Pki) -> String {
    let t = &pki.trusted;
    text.replace(
        "/etc/gateway/AmazonRootCA1.pem",
        &t.ca.display().to_string(),
    )
    .replace(
        "/etc/gateway/device.pem.crt",
        &t.client_cert.display().to_string(),
    )
    .replace(
        "/etc/gateway/device.pem.key",
        &t.client_key.display().to_string(),
    )
}

#[test]
fn the_contract_mqtt_sink_uncommented_loads_with_every_value_as_written() {
    let dir = tempfile::tempdir().unwrap();
    let pki = test_peers::Pki::generate(dir.path());
    let mut contracts = vec![("project copy", PROJECT_CONTRACT.to_owned())];
    // The shared file too, when it is there.
    if let Ok(shared) =
        shared_contract().and_then(|p| std::fs::read_to_string(p).map_err(|e| e.to_string()))
    {
        contracts.push(("shared contract", shared));
    }
    for (which, contract) in contracts {
        let text = with_real_tls_files(&contract_with_sink(&contract, "mqtt"), &pki);
        assert!(
            text.contains("\n[[sink]]\nname = \"cloud-mqtt\"\n"),
            "{text}"
        );
        assert!(text.contains("\n# [[sink]]\n# name = \"kafka\""), "{text}");
        let config = parse(&text);
        let [sink] = &config.sinks[..] else {
            panic!("{which}: one sink expected, got {:?}", config.sinks);
        };
        assert_eq!(sink.name, "cloud-mqtt");
        assert_eq!(sink.lanes, SinkLanes::ALL);
        assert_eq!(sink.forwarding, defaults::MQTT_SINK_FORWARDING);
        let m = mqtt(&sink.kind);
        assert_eq!(
            (m.broker_host(), m.broker_port(), m.uses_tls()),
            ("a1b2c3d4e5-ats.iot.eu-west-1.amazonaws.com", 8883, true)
        );
        assert_eq!(m.client_id, "gw-greenhouse-01");
        assert_eq!(m.ca_file.as_deref(), Some(pki.trusted.ca.as_path()));
        let tls = m.tls.as_ref().expect("mqtts:// is TLS");
        assert!(tls.has_client_certificate());
        assert_eq!(
            m.topic_for(&config.gateway_id, SinkLane::Readings),
            "dt/gateways/gw-greenhouse-01/readings"
        );
        assert_eq!(
            m.topic_for(&config.gateway_id, SinkLane::Alarms),
            "dt/gateways/gw-greenhouse-01/alarms"
        );
        assert_eq!((m.keep_alive_s, m.max_message_bytes), (30, 131_072));
        // Everything else is as in the contract as written.
        let plain = parse(&contract);
        assert_eq!(
            Config {
                sinks: Vec::new(),
                ..config
            },
            plain,
            "{which}"
        );
    }
}

#[test]
fn the_contract_kafka_sink_uncommented_loads_with_every_value_as_written() {
    let mut contracts = vec![("project copy", PROJECT_CONTRACT.to_owned())];
    // The shared file too, when it is there.
    if let Ok(shared) =
        shared_contract().and_then(|p| std::fs::read_to_string(p).map_err(|e| e.to_string()))
    {
        contracts.push(("shared contract", shared));
    }
    for (which, contract) in contracts {
        let text = contract_with_sink(&contract, "kafka");
        assert!(
            text.contains("\n[[sink]]\nname = \"kafka\"\nkind = \"kafka\" "),
            "{text}"
        );
        assert!(
            text.contains("\n# [[sink]]\n# name = \"cloud-mqtt\""),
            "{text}"
        );
        // The optional keys shown on one line stay a comment.
        assert!(text.contains("\n# # tls = true / ca_file"), "{text}");
        let config = parse(&text);
        let [sink] = &config.sinks[..] else {
            panic!("{which}: one sink expected, got {:?}", config.sinks);
        };
        assert_eq!(sink.name, "kafka");
        assert_eq!(sink.kind.as_str(), "kafka");
        assert_eq!(sink.lanes, SinkLanes::ALL);
        assert_eq!(sink.forwarding, defaults::KAFKA_SINK_FORWARDING);
        let k = kafka(&sink.kind);
        assert_eq!(k.brokers, ["kafka-1.example.net:9092"]);
        assert_eq!(
            k.topic_for(SinkLane::Readings).map(|t| t.as_str()),
            Some("sensor-readings")
        );
        assert_eq!(
            k.topic_for(SinkLane::Alarms).map(|t| t.as_str()),
            Some("sensor-alarms")
        );
        assert_eq!(k.compression, KafkaCompression::Lz4);
        assert_eq!(k.client_id, "gateway-gw-greenhouse-01");
        assert!(!k.tls && k.tls_client.is_none());
        assert!(k.ca_file.is_none() && k.client_cert_file.is_none() && k.client_key_file.is_none());
        assert!(k.sasl.is_none() && k.password_env.is_none());
        // Everything else is as in the contract as written.
        assert_eq!(
            Config {
                sinks: Vec::new(),
                ..config
            },
            parse(&contract),
            "{which}"
        );
    }
}

#[test]
fn both_contract_sinks_uncommented_load_in_file_order() {
    let dir = tempfile::tempdir().unwrap();
    let both = with_real_tls_files(
        &contract_with("[[sink]]"),
        &test_peers::Pki::generate(dir.path()),
    );
    let config = parse(&both);
    let kinds: Vec<(&str, &str)> = config
        .sinks
        .iter()
        .map(|s| (s.name.as_str(), s.kind.as_str()))
        .collect();
    assert_eq!(kinds, [("cloud-mqtt", "mqtt"), ("kafka", "kafka")]);
    assert_eq!(
        config.sinks[1],
        parse(&contract_with_sink(PROJECT_CONTRACT, "kafka")).sinks[0]
    );
}

#[test]
fn the_shipped_example_sinks_uncommented_load_to_the_defaults_they_show() {
    let dir = tempfile::tempdir().unwrap();
    let pki = test_peers::Pki::generate(dir.path());
    let text = with_real_tls_files(
        &uncomment_tables(DEFAULT_CONFIG_TOML, "[[sink]]", |_| true),
        &pki,
    );
    assert!(text.contains("\n[[sink]]\n"), "{text}");
    let config = parse(&text);
    let [mqtt_sink, kafka_sink] = &config.sinks[..] else {
        panic!("two sinks expected, got {:?}", config.sinks);
    };
    assert_eq!(mqtt_sink.lanes, SinkLanes::ALL);
    assert_eq!(mqtt_sink.forwarding, defaults::MQTT_SINK_FORWARDING);
    let m = mqtt(&mqtt_sink.kind);
    assert!(m.username.is_none() && m.password.is_none());
    assert_eq!((m.keep_alive_s, m.max_message_bytes), (30, 131_072));
    assert!(m.tls.as_ref().unwrap().has_client_certificate());

    assert_eq!(kafka_sink.lanes, SinkLanes::ALL);
    assert_eq!(kafka_sink.forwarding, defaults::KAFKA_SINK_FORWARDING);
    let k = kafka(&kafka_sink.kind);
    assert_eq!(k.client_id, "gateway-gateway");
    assert_eq!(k.compression, defaults::KAFKA_SINK_COMPRESSION);
    assert!(!k.tls && k.tls_client.is_none() && k.sasl.is_none());
    // What its comments show commented out loads too, with real TLS files and the password's
    // variable set.
    let optional = text
        .replace("# # tls = true", "tls = true")
        .replace(
            "# # ca_file = \"/etc/gateway/kafka-ca.pem\"",
            &format!("ca_file = \"{}\"", pki.trusted.ca.display()),
        )
        .replace(
            "# # client_cert_file = \"/etc/gateway/kafka-client.pem\"",
            &format!(
                "client_cert_file = \"{}\"",
                pki.trusted.client_cert.display()
            ),
        )
        .replace(
            "# # client_key_file = \"/etc/gateway/kafka-client.key\"",
            &format!("client_key_file = \"{}\"", pki.trusted.client_key.display()),
        )
        .replace("# # sasl_mechanism", "sasl_mechanism")
        .replace(
            "# # username = \"gateway\"\n# # password_env",
            "username = \"gateway\"\npassword_env",
        )
        .replace("# # client_id", "client_id");
    let env = |name: &str| (name == "GATEWAY_KAFKA_PASSWORD").then(|| "kafka-pw".to_owned());
    let config =
        Config::parse_with_env(&optional, "test.toml", env).unwrap_or_else(|e| panic!("{e}"));
    let k = kafka(&config.sinks[1].kind);
    assert!(k.tls_client.as_ref().unwrap().has_client_certificate());
    let sasl = k.sasl.as_ref().unwrap();
    assert_eq!(
        (
            sasl.mechanism.as_str(),
            sasl.username.as_str(),
            sasl.password.expose()
        ),
        ("SCRAM-SHA-512", "gateway", "kafka-pw")
    );
    assert_eq!(k.client_id, "gateway-gateway");
}

#[test]
fn every_key_of_the_shipped_example_has_a_comment_before_it() {
    let body = DEFAULT_CONFIG_TOML.split("\n[[alarm]]").next().unwrap();
    let lines: Vec<&str> = body.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        if line.contains(" = ") && !line.starts_with('#') {
            assert!(
                i > 0 && lines[i - 1].starts_with('#'),
                "line {}: `{line}` has no comment above it",
                i + 1
            );
        }
    }
}

#[test]
fn mqtt_mode_is_external_when_only_a_url_is_written() {
    let config = parse("[mqtt]\nurl = \"mqtts://broker.example\"\n");
    assert_eq!(config.mqtt.mode, MqttMode::External);
    assert!(config.mqtt.uses_tls());
    assert_eq!(config.mqtt.broker_port(), 8883);
    assert_eq!(config.mqtt.broker_host(), "broker.example");
}

#[test]
fn disabled_mqtt_with_a_serial_port_is_a_valid_source() {
    let config = parse("[mqtt]\nmode = \"disabled\"\n[[serial]]\nport = \"/dev/ttyACM3\"\n");
    assert_eq!(config.mqtt.mode, MqttMode::Disabled);
    assert_eq!(
        config.serial[0].device, "ttyACM3",
        "device defaults to the port's file name"
    );
    assert_eq!(config.serial[0].max_line_bytes, 1024);
    assert_eq!(config.serial[0].reopen_max_ms, 30_000);
}

#[test]
fn client_id_defaults_to_the_gateway_id() {
    let config = parse("gateway_id = \"gw-7\"\n");
    assert_eq!(config.mqtt.client_id, "gw-7");
}

#[test]
fn integer_thresholds_and_band_rules_are_accepted() {
    let config = parse(
        "[[alarm]]\nname = \"band\"\nabove = 30\nbelow = 10\nclear_below = 28\nclear_above = 12\n",
    );
    assert_eq!(
        config.alarm[0].condition,
        AlarmCondition::Threshold {
            above: Some(Limit {
                trigger: 30.0,
                clear: 28.0
            }),
            below: Some(Limit {
                trigger: 10.0,
                clear: 12.0
            }),
        }
    );
}

#[test]
fn clear_threshold_defaults_to_the_trigger() {
    let config = parse("[[alarm]]\nname = \"hot\"\nabove = 30.0\n");
    assert_eq!(
        config.alarm[0].condition,
        AlarmCondition::Threshold {
            above: Some(Limit {
                trigger: 30.0,
                clear: 30.0
            }),
            below: None
        }
    );
    assert_eq!(config.alarm[0].severity, Severity::Warning);
    assert_eq!(
        (
            config.alarm[0].device.as_str(),
            config.alarm[0].metric.as_str()
        ),
        ("*", "*")
    );
}

#[test]
fn retryable_statuses_follow_the_wire_contract_by_default() {
    let up = Config::default().upstream.retry_policy();
    for status in [408, 429, 500, 503, 599] {
        assert!(up.retries(status), "{status}");
    }
    for status in [200, 400, 401, 404, 413] {
        assert!(!up.retries(status), "{status}");
    }
    let strict = parse("[upstream]\nretry_on_status = []\nretry_on_5xx = false\n").upstream;
    assert!(!strict.retry_policy().retries(503));
}

#[test]
fn debug_of_a_config_with_secrets_shows_no_secret_value() {
    let env = |name: &str| -> Option<String> { Some(format!("value-of-{name}-s3cret")) };
    let text = "[mqtt]\nusername = \"gw\"\npassword_env = \"MQTT_PW\"\n\
                [upstream]\nurl = \"https://cloud.example/ingest\"\nbearer_token_env = \"UP_TOKEN\"\n\
                [admin]\nlisten = \"0.0.0.0:9100\"\ntoken_env = \"ADMIN_TOKEN\"\n";
    let config = Config::parse_with_env(text, "secrets.toml", env).unwrap();
    assert_eq!(
        config.mqtt.password.as_ref().unwrap().expose(),
        "value-of-MQTT_PW-s3cret"
    );
    assert_eq!(
        config.upstream.bearer_token.as_ref().unwrap().expose(),
        "value-of-UP_TOKEN-s3cret"
    );
    assert!(
        config
            .admin
            .token
            .as_ref()
            .unwrap()
            .matches("value-of-ADMIN_TOKEN-s3cret")
    );
    assert!(
        !config
            .admin
            .token
            .as_ref()
            .unwrap()
            .matches("value-of-ADMIN_TOKEN-s3creT")
    );
    for shown in [format!("{config:?}"), format!("{config:#?}")] {
        assert!(!shown.contains("s3cret"), "secret leaked: {shown}");
        assert!(shown.contains("***"));
        assert!(shown.contains("MQTT_PW"), "the variable name is not secret");
    }
    assert_eq!(
        config.upstream.bearer_token.as_ref().unwrap().to_string(),
        "***"
    );
}

#[test]
fn parse_reads_secrets_from_the_process_environment() {
    // PATH is set in every test environment; setting a variable would need `unsafe`.
    let config = Config::parse("[admin]\ntoken_env = \"PATH\"\n", "env.toml").unwrap();
    let path = std::env::var("PATH").unwrap();
    assert_eq!(config.admin.token.as_ref().unwrap().expose(), path);
    assert!(!format!("{config:?}").contains(&path));
}

#[test]
fn load_reads_a_file_from_disk() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.toml");
    std::fs::write(
        &path,
        "gateway_id = \"from-disk\"\n[buffer]\nwhen_full = \"block\"\n",
    )
    .unwrap();
    let config = Config::load(&path).unwrap();
    assert_eq!(config.gateway_id, "from-disk");
    assert_eq!(config.buffer.when_full, WhenFull::Block);
}

#[test]
fn topic_templates_read_device_and_metric_from_topics() {
    let config = Config::default();
    let [with_metric, without_metric] = &config.mqtt.topic_templates[..] else {
        panic!("two default templates");
    };
    let m = with_metric
        .match_topic("sensors/dev-7/temperature")
        .unwrap();
    assert_eq!((m.device, m.metric), ("dev-7", Some("temperature")));
    assert!(with_metric.match_topic("sensors/dev-7").is_none());
    assert!(with_metric.match_topic("sensors/dev-7/a/b").is_none());
    assert!(with_metric.match_topic("other/dev-7/temperature").is_none());
    assert!(with_metric.match_topic("sensors//temperature").is_none());
    let m = without_metric.match_topic("sensors/dev-7").unwrap();
    assert_eq!((m.device, m.metric), ("dev-7", None));
}

#[test]
fn enums_print_their_toml_spelling() {
    assert_eq!(WhenFull::DropOldest.to_string(), "drop_oldest");
    assert_eq!(MqttMode::Disabled.as_str(), "disabled");
    assert_eq!(Compression::None.as_str(), "none");
    assert_eq!(Severity::Critical.to_string(), "critical");
    assert!(Severity::Critical > Severity::Warning);
}

/// The contract with its optional `[ingest]` section uncommented, exactly as the comments show it.
fn contract_with_ingest_uncommented(contract: &str) -> String {
    let mut out = String::new();
    let mut in_ingest = false;
    for line in contract.lines() {
        if line == "# [ingest]" {
            in_ingest = true;
        } else if in_ingest && !line.starts_with("# ") {
            in_ingest = false;
        }
        // Uncomment the header and its keys; the continuation comments stay comments.
        let uncommented = line.strip_prefix("# ").filter(|rest| {
            in_ingest
                && (rest.starts_with('[') || rest.starts_with(|c: char| c.is_ascii_lowercase()))
        });
        out.push_str(uncommented.unwrap_or(line));
        out.push('\n');
    }
    out
}

#[test]
fn the_contract_ingest_section_uncommented_loads_with_its_shown_defaults() {
    let text = contract_with_ingest_uncommented(PROJECT_CONTRACT);
    assert!(text.contains("\n[ingest]\nmax_id_bytes = 128 "), "{text}");
    assert!(text.contains("\nmax_past_ts_s = 0 "), "{text}");
    let config = parse(&text);
    assert_eq!(
        config.ingest,
        IngestConfig {
            max_id_bytes: 128,
            max_future_ts_s: 300,
            max_past_ts_s: None,
        }
    );
    assert_eq!(config.ingest, Config::default().ingest);
    // The shared file too, when it is there.
    if let Ok(shared) =
        shared_contract().and_then(|p| std::fs::read_to_string(p).map_err(|e| e.to_string()))
    {
        assert_eq!(
            parse(&contract_with_ingest_uncommented(&shared)).ingest,
            config.ingest
        );
    }
}

#[test]
fn ingest_keys_are_read_and_a_zero_past_bound_means_none() {
    let config = parse("[ingest]\nmax_id_bytes = 64\nmax_future_ts_s = 0\nmax_past_ts_s = 86400\n");
    assert_eq!(
        config.ingest,
        IngestConfig {
            max_id_bytes: 64,
            max_future_ts_s: 0,
            max_past_ts_s: Some(86_400),
        }
    );
}

#[test]
fn the_mqtt_packet_limit_defaults_to_one_mebibyte() {
    let config = Config::default();
    assert_eq!(config.mqtt.max_packet_bytes, 1024 * 1024);
    let raised = parse("[mqtt]\nmax_payload_bytes = 1000000\nmax_packet_bytes = 2100000\n");
    assert_eq!(raised.mqtt.max_packet_bytes, 2_100_000);
}

/// `text` with its `[[modbus]]` and `[[modbus.register]]` tables uncommented.
fn with_modbus(text: &str) -> String {
    let slave = uncomment_tables(text, "[[modbus]]", |_| true);
    uncomment_tables(&slave, "[[modbus.register]]", |_| true)
}

#[test]
fn the_contract_modbus_slave_uncommented_loads_with_every_value_as_written() {
    let mut contracts = vec![("project copy", PROJECT_CONTRACT.to_owned())];
    if let Ok(shared) =
        shared_contract().and_then(|p| std::fs::read_to_string(p).map_err(|e| e.to_string()))
    {
        contracts.push(("shared contract", shared));
    }
    for (which, contract) in contracts {
        let text = with_modbus(&contract);
        assert!(
            text.contains("\n[[modbus]]\ndevice = \"meter-1\""),
            "{text}"
        );
        assert!(
            text.contains("\n[[modbus.register]]\nmetric = \"voltage\""),
            "{text}"
        );
        let config = parse(&text);
        let [slave] = &config.modbus[..] else {
            panic!("{which}: one slave expected, got {:?}", config.modbus);
        };
        assert_eq!(slave.device, "meter-1");
        assert_eq!(
            slave.link,
            ModbusLink::Tcp {
                host: "192.168.1.50".into(),
                port: 502
            }
        );
        assert_eq!(slave.link.url(), "tcp://192.168.1.50:502");
        assert_eq!(
            (slave.unit_id, slave.poll_ms, slave.timeout_ms),
            (1, 1000, 500)
        );
        assert_eq!(slave.backoff_max_ms, defaults::MODBUS_BACKOFF_MAX_MS);
        let [register] = &slave.registers[..] else {
            panic!("{which}: one register expected");
        };
        assert_eq!(register.metric, "voltage");
        assert_eq!(register.kind, RegisterKind::Holding);
        assert_eq!(register.address, 0);
        assert_eq!(
            register.value,
            RegisterValue::DoubleWord(DataType::F32, WordOrder::Big)
        );
        assert_eq!((register.scale, register.offset), (1.0, 0.0));
        assert_eq!(register.unit.as_deref(), Some("V"));
        assert_eq!(
            Config {
                modbus: Vec::new(),
                ..config
            },
            parse(&contract),
            "{which}"
        );
    }
}

#[test]
fn the_shipped_example_modbus_slaves_uncommented_load_to_the_defaults_they_show() {
    let text = with_modbus(DEFAULT_CONFIG_TOML);
    let config = parse(&text);
    let [tcp, rtu] = &config.modbus[..] else {
        panic!("two slaves expected, got {:?}", config.modbus);
    };
    assert!(matches!(tcp.link, ModbusLink::Tcp { port: 502, .. }));
    let ModbusLink::Rtu(line) = &rtu.link else {
        panic!("{rtu:?}");
    };
    assert_eq!(
        (line.baud, line.parity.as_str(), line.stop_bits),
        (9600, "none", 1)
    );
    for slave in [tcp, rtu] {
        assert_eq!(
            (
                slave.unit_id,
                slave.poll_ms,
                slave.timeout_ms,
                slave.backoff_max_ms
            ),
            (1, 1000, 500, 30_000)
        );
        assert!(!slave.registers.is_empty());
    }
}
