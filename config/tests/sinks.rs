//! `[[sink]]` tables: a `kind = "mqtt"` sink loads with every key and its defaults, and each
//! broken one is refused with a message naming `sink[i].key` and its line.

use gateway_config::{
    Config, ConfigError, ForwardingConfig, MqttSinkConfig, SinkConfig, SinkKind, SinkLane,
    SinkLanes, defaults,
};
use std::path::Path;
use test_peers::Pki;

/// The environment of these tests: one password set, one set but empty, nothing else.
fn env(name: &str) -> Option<String> {
    match name {
        "SINK_PASSWORD" => Some("sink-pw-s3cret".to_owned()),
        "EMPTY" => Some(String::new()),
        _ => None,
    }
}

fn parse(text: &str) -> Config {
    Config::parse_with_env(text, "test.toml", env).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

/// Asserts the message starts with `key (line N): ` and contains `fragment`.
#[track_caller]
fn assert_refused(text: &str, key: &str, line: usize, fragment: &str) -> ConfigError {
    let err = match Config::parse_with_env(text, "test.toml", env) {
        Ok(config) => panic!("accepted a broken config:\n{text}\nas {config:#?}"),
        Err(e) => e,
    };
    let message = err.to_string();
    let head = format!("{key} (line {line}): ");
    assert!(
        message.starts_with(&head),
        "message should start with {head:?}, got {message:?}"
    );
    assert!(
        message.contains(fragment),
        "message should contain {fragment:?}, got {message:?}"
    );
    assert_eq!(err.key(), Some(key), "{message}");
    err
}

/// A valid plain MQTT sink on lines 1 to 6, then `extra` from line 7.
fn sink(extra: &str) -> String {
    format!(
        "[[sink]]\nname = \"cloud\"\nkind = \"mqtt\"\nurl = \"mqtt://broker.example\"\n\
         client_id = \"gw-1\"\ntopic = \"dt/{{gateway_id}}/{{lane}}\"\n{extra}"
    )
}

/// [`sink`] with the line that starts `key = ` replaced by `key = value`.
fn sink_with(key: &str, value: &str) -> String {
    sink("")
        .lines()
        .map(|line| match line.starts_with(&format!("{key} = ")) {
            true => format!("{key} = {value}\n"),
            false => format!("{line}\n"),
        })
        .collect()
}

/// [`sink`] without the line that starts `key = `.
fn sink_without(key: &str) -> String {
    sink("")
        .lines()
        .filter(|line| !line.starts_with(&format!("{key} = ")))
        .map(|line| format!("{line}\n"))
        .collect()
}

fn only_sink(config: &Config) -> &SinkConfig {
    match &config.sinks[..] {
        [sink] => sink,
        other => panic!("one sink expected, got {other:?}"),
    }
}

fn mqtt(kind: &SinkKind) -> &MqttSinkConfig {
    match kind {
        SinkKind::Mqtt(m) => m,
        other => panic!("an mqtt sink expected, got {other:?}"),
    }
}

fn p(path: &Path) -> String {
    path.display().to_string()
}

#[test]
fn a_config_without_sink_tables_has_no_sinks() {
    assert!(Config::default().sinks.is_empty());
    assert!(parse("[upstream]\nlinger_ms = 5\n").sinks.is_empty());
}

#[test]
fn a_full_mqtt_sink_with_a_client_certificate_loads_every_key() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(dir.path());
    let t = &pki.trusted;
    let text = format!(
        "gateway_id = \"gw-7\"\n\
         [[sink]]\n\
         name = \"aws_iot-1\"\n\
         kind = \"mqtt\"\n\
         url = \"mqtts://a1b2c3d4e5-ats.iot.eu-west-1.amazonaws.com\"\n\
         client_id = \"gw-7-bridge\"\n\
         ca_file = \"{}\"\n\
         client_cert_file = \"{}\"\n\
         client_key_file = \"{}\"\n\
         topic = \"$aws/rules/ingest/{{gateway_id}}/{{lane}}\"\n\
         lanes = [\"alarms\"]\n\
         username = \"bridge\"\n\
         password_env = \"SINK_PASSWORD\"\n\
         keep_alive_s = 60\n\
         timeout_ms = 5000\n\
         max_message_bytes = 65536\n\
         batch_max_records = 100\n\
         batch_max_bytes = 32768\n\
         linger_ms = 250\n\
         retry_initial_ms = 50\n\
         retry_max_ms = 5000\n\
         max_in_flight = 4\n",
        p(&t.ca),
        p(&t.client_cert),
        p(&t.client_key)
    );
    let config = parse(&text);
    let sink = only_sink(&config);
    assert_eq!(sink.name, "aws_iot-1");
    assert_eq!(sink.kind.as_str(), "mqtt");
    assert_eq!(
        sink.lanes,
        SinkLanes {
            readings: false,
            alarms: true
        }
    );
    assert_eq!(sink.lanes.iter().collect::<Vec<_>>(), [SinkLane::Alarms]);
    assert_eq!(
        sink.forwarding,
        ForwardingConfig {
            batch_max_records: 100,
            batch_max_bytes: 32_768,
            linger_ms: 250,
            timeout_ms: 5000,
            retry_initial_ms: 50,
            retry_max_ms: 5000,
            max_in_flight: 4,
        }
    );
    let m = mqtt(&sink.kind);
    assert_eq!(
        (m.broker_host(), m.broker_port(), m.uses_tls()),
        ("a1b2c3d4e5-ats.iot.eu-west-1.amazonaws.com", 8883, true)
    );
    assert_eq!(m.client_id, "gw-7-bridge");
    assert_eq!(m.username.as_deref(), Some("bridge"));
    assert_eq!(m.password_env.as_deref(), Some("SINK_PASSWORD"));
    assert_eq!(m.password.as_ref().unwrap().expose(), "sink-pw-s3cret");
    assert_eq!(m.ca_file.as_deref(), Some(t.ca.as_path()));
    assert_eq!(m.client_cert_file.as_deref(), Some(t.client_cert.as_path()));
    assert_eq!(m.client_key_file.as_deref(), Some(t.client_key.as_path()));
    let tls = m.tls.as_ref().expect("mqtts:// builds a TLS client");
    assert!(tls.has_client_certificate());
    assert_eq!(tls.files(), &m.tls_files());
    assert_eq!(m.tls_client().unwrap().as_ref(), Some(tls));
    assert_eq!(m.topic.as_str(), "$aws/rules/ingest/{gateway_id}/{lane}");
    assert_eq!(
        m.topic_for(&config.gateway_id, SinkLane::Alarms),
        "$aws/rules/ingest/gw-7/alarms"
    );
    assert_eq!((m.keep_alive_s, m.max_message_bytes), (60, 65_536));
}

#[test]
fn an_mqtt_sink_with_only_its_required_keys_gets_the_defaults() {
    let config = parse(&sink(""));
    let sink = only_sink(&config);
    assert_eq!(sink.lanes, SinkLanes::ALL);
    assert_eq!(
        sink.lanes.iter().collect::<Vec<_>>(),
        [SinkLane::Alarms, SinkLane::Readings]
    );
    assert_eq!(sink.forwarding, defaults::MQTT_SINK_FORWARDING);
    assert_eq!(
        sink.forwarding,
        ForwardingConfig {
            batch_max_records: 500,
            batch_max_bytes: 131_072,
            linger_ms: 1000,
            timeout_ms: 10_000,
            retry_initial_ms: 200,
            retry_max_ms: 60_000,
            max_in_flight: 16,
        }
    );
    let m = mqtt(&sink.kind);
    assert_eq!((m.broker_host(), m.broker_port()), ("broker.example", 1883));
    assert!(!m.uses_tls() && m.tls.is_none() && m.tls_client().unwrap().is_none());
    assert!(m.username.is_none() && m.password_env.is_none() && m.password.is_none());
    assert!(m.ca_file.is_none() && m.client_cert_file.is_none() && m.client_key_file.is_none());
    assert_eq!((m.keep_alive_s, m.max_message_bytes), (30, 131_072));
    assert_eq!(
        m.topic_for("gateway", SinkLane::Readings),
        "dt/gateway/readings"
    );
    // The same forwarding rules as [upstream], whose values come in the same shape.
    assert_eq!(
        config.upstream.forwarding(),
        ForwardingConfig {
            batch_max_bytes: 262_144,
            ..defaults::MQTT_SINK_FORWARDING
        }
    );
}

#[test]
fn the_topic_is_filled_in_once_per_placeholder() {
    let config = parse(&format!(
        "gateway_id = \"gw{{lane}}\"\n{}",
        sink_with("topic", "\"{lane}/x-{gateway_id}-{lane}/{gateway_id}\"")
    ));
    let m = mqtt(&only_sink(&config).kind);
    // A gateway id that happens to contain "{lane}" is not filled in again.
    assert_eq!(
        m.topic_for(&config.gateway_id, SinkLane::Readings),
        "readings/x-gw{lane}-readings/gw{lane}"
    );
    assert_eq!(
        m.topic.to_string(),
        "{lane}/x-{gateway_id}-{lane}/{gateway_id}"
    );
}

#[test]
fn mqtts_without_tls_files_uses_the_platform_roots_like_mqtt_does() {
    let config = parse(&sink_with("url", "\"mqtts://broker.example:443\""));
    let m = mqtt(&only_sink(&config).kind);
    let tls = m.tls.as_ref().expect("mqtts:// is always TLS");
    assert!(tls.files().ca_file.is_none());
    assert!(!tls.has_client_certificate());
    assert_eq!(m.broker_port(), 443);
}

#[test]
fn two_sinks_load_in_file_order() {
    let second = "[[sink]]\nname = \"backup\"\nkind = \"mqtt\"\nurl = \"mqtt://other.example\"\n\
                  client_id = \"gw-1\"\ntopic = \"t/{lane}\"\nlanes = [\"readings\"]\n";
    let config = parse(&format!("{}{second}", sink("")));
    let names: Vec<&str> = config.sinks.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["cloud", "backup"]);
    assert!(config.sinks[1].lanes.contains(SinkLane::Readings));
    assert!(!config.sinks[1].lanes.contains(SinkLane::Alarms));
}

#[test]
fn the_password_comes_from_the_environment_and_never_shows_in_debug() {
    let text = sink("username = \"bridge\"\npassword_env = \"SINK_PASSWORD\"\n");
    let config = parse(&text);
    let m = mqtt(&only_sink(&config).kind);
    assert_eq!(m.password.as_ref().unwrap().expose(), "sink-pw-s3cret");
    for shown in [
        format!("{config:?}"),
        format!("{config:#?}"),
        format!("{m:?}"),
    ] {
        assert!(!shown.contains("sink-pw-s3cret"), "secret leaked: {shown}");
        assert!(
            shown.contains("SINK_PASSWORD"),
            "the variable name is not secret"
        );
        assert!(shown.contains("***"));
    }
    // Sent over mqtt:// to another host: said, like [mqtt]'s.
    let warnings = config.cleartext_secrets();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].starts_with("sink[0].password_env: the password of sink \"cloud\""),
        "{warnings:?}"
    );
    let local = parse(&text.replace("broker.example", "127.0.0.1"));
    assert!(local.cleartext_secrets().is_empty());
}

#[test]
fn a_password_without_username_or_without_its_variable_is_refused() {
    assert_refused(
        &sink("password_env = \"SINK_PASSWORD\"\n"),
        "sink[0].password_env",
        7,
        "needs sink[0].username",
    );
    assert_refused(
        &sink("username = \"u\"\npassword_env = \"NOT_SET\"\n"),
        "sink[0].password_env",
        8,
        "environment variable NOT_SET is not set",
    );
    assert_refused(
        &sink("username = \"u\"\npassword_env = \"EMPTY\"\n"),
        "sink[0].password_env",
        8,
        "environment variable EMPTY is empty",
    );
}

#[test]
fn a_duplicate_sink_name_is_refused_at_the_second_sink() {
    let second = sink_with("client_id", "\"gw-2\"");
    assert_refused(
        &format!("{}\n{second}", sink("")),
        "sink[1].name",
        9,
        "\"cloud\" is already the name of an earlier sink",
    );
}

#[test]
fn the_names_of_the_gateways_own_consumers_are_reserved() {
    for (name, whose) in [
        ("upstream", "[upstream] HTTP sink"),
        ("local-alarms", "local alarm publisher"),
    ] {
        assert_refused(
            &sink_with("name", &format!("\"{name}\"")),
            "sink[0].name",
            2,
            whose,
        );
    }
    assert_eq!(defaults::SINK_RESERVED_NAMES, ["upstream", "local-alarms"]);
}

#[test]
fn a_sink_name_outside_lowercase_digits_dash_and_underscore_or_too_long_is_refused() {
    for bad in ["Cloud", "cloud mqtt", "cloud.mqtt", "wolke-ü"] {
        assert_refused(
            &sink_with("name", &format!("\"{bad}\"")),
            "sink[0].name",
            2,
            "allowed: a-z, 0-9, '_' and '-'",
        );
    }
    for bad in ["", &"a".repeat(33)] {
        assert_refused(
            &sink_with("name", &format!("\"{bad}\"")),
            "sink[0].name",
            2,
            "expected 1 to 32 bytes",
        );
    }
    parse(&sink_with("name", &format!("\"{}\"", "a".repeat(32))));
}

#[test]
fn every_required_key_missing_is_named_at_the_table_header() {
    for key in ["name", "kind", "url", "client_id", "topic"] {
        let err = assert_refused(
            &sink_without(key),
            &format!("sink[0].{key}"),
            1,
            "required key is missing",
        );
        assert!(matches!(err, ConfigError::MissingKey { .. }), "{err}");
    }
}

#[test]
fn an_unknown_kind_lists_the_supported_kinds() {
    assert_refused(
        &sink_with("kind", "\"amqp\""),
        "sink[0].kind",
        3,
        "expected one of the supported kinds \"mqtt\", \"kafka\", found \"amqp\"",
    );
    assert_refused(
        &sink_with("kind", "\"Kafka\""),
        "sink[0].kind",
        3,
        "found \"Kafka\"",
    );
}

#[test]
fn a_sink_of_an_unknown_kind_with_keys_of_its_own_is_refused_for_its_kind_not_for_its_keys() {
    let text = "[[sink]]\nname = \"queue\"\nexchange = \"readings\"\nkind = \"amqp\"\n";
    assert_refused(
        text,
        "sink[0].kind",
        4,
        "expected one of the supported kinds \"mqtt\", \"kafka\", found \"amqp\"",
    );
}

#[test]
fn kafka_keys_in_an_mqtt_sink_are_refused_as_the_other_kinds() {
    for (key, value) in [
        ("brokers", "[\"kafka-1.example.net:9092\"]"),
        ("alarm_topic", "\"sensor-alarms\""),
        ("compression", "\"lz4\""),
        ("tls", "true"),
        ("sasl_mechanism", "\"PLAIN\""),
    ] {
        assert_refused(
            &sink(&format!("{key} = {value}\n")),
            &format!("sink[0].{key}"),
            7,
            "is a key of kind = \"kafka\" sinks; this sink is kind = \"mqtt\"",
        );
    }
}

#[test]
fn an_unknown_key_of_an_mqtt_sink_is_named_with_its_index() {
    let err = assert_refused(
        &format!("{}\n{}", sink(""), sink_with("name", "\"b\""))
            .replace("name = \"b\"\n", "name = \"b\"\nqos = 1\n"),
        "sink[1].qos",
        10,
        "unknown key; allowed keys here: name, kind, url, client_id, ca_file,",
    );
    let ConfigError::UnknownKey { allowed, .. } = err else {
        panic!("{err}");
    };
    // The keys of an MQTT sink only.
    assert!(!allowed.iter().any(|k| k == "brokers"), "{allowed:?}");
}

#[test]
fn a_url_that_is_not_mqtt_or_carries_more_than_host_and_port_is_refused() {
    assert_refused(
        &sink_with("url", "\"https://broker.example\""),
        "sink[0].url",
        4,
        "expected a mqtt:// or mqtts:// URL, found scheme \"https\"",
    );
    for bad in [
        "mqtts://broker.example/path",
        "mqtt://broker.example:1883/?x=1",
    ] {
        assert_refused(
            &sink_with("url", &format!("\"{bad}\"")),
            "sink[0].url",
            4,
            "with nothing after the port",
        );
    }
    let err = assert_refused(
        &sink_with("url", "\"mqtts://user:pw-s3cret@broker.example\""),
        "sink[0].url",
        4,
        "credentials do not belong in the URL",
    );
    assert!(!err.to_string().contains("pw-s3cret"));
}

#[test]
fn tls_files_with_a_plain_url_are_refused_naming_the_key() {
    assert_refused(
        &sink("client_cert_file = \"/x.pem\"\n"),
        "sink[0].client_cert_file",
        7,
        "only used with an mqtts:// url, but sink[0].url is \"mqtt://broker.example\"",
    );
    assert_refused(
        &sink("ca_file = \"/x.pem\"\n"),
        "sink[0].ca_file",
        7,
        "only used with an mqtts:// url",
    );
}

#[test]
fn a_client_certificate_without_its_key_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(dir.path());
    let mqtts = sink_with("url", "\"mqtts://broker.example\"");
    assert_refused(
        &format!(
            "{mqtts}client_cert_file = \"{}\"\n",
            p(&pki.trusted.client_cert)
        ),
        "sink[0].client_cert_file",
        7,
        "needs client_key_file",
    );
    assert_refused(
        &format!(
            "{mqtts}client_cert_file = \"{}\"\nclient_key_file = \"{}\"\n",
            p(&pki.trusted.client_cert),
            p(&pki.trusted.rsa_client_key)
        ),
        "sink[0].client_key_file",
        8,
        "does not belong to the certificate",
    );
    assert_refused(
        &format!(
            "{mqtts}ca_file = \"{}\"\n",
            p(&dir.path().join("nowhere.pem"))
        ),
        "sink[0].ca_file",
        7,
        "cannot read",
    );
}

#[test]
fn a_topic_placeholder_other_than_gateway_id_and_lane_is_refused_by_name() {
    assert_refused(
        &sink_with("topic", "\"dt/{device}/{lane}\""),
        "sink[0].topic",
        6,
        "unknown placeholder {device}",
    );
    assert_refused(
        &sink_with("topic", "\"dt/{gateway_id/{lane}\""),
        "sink[0].topic",
        6,
        "unknown placeholder {gateway_id/{lane}",
    );
    assert_refused(
        &sink_with("topic", "\"dt/{lane\""),
        "sink[0].topic",
        6,
        "has a '{' without its '}'",
    );
    assert_refused(
        &sink_with("topic", "\"dt/lane}\""),
        "sink[0].topic",
        6,
        "has a '}' without its '{'",
    );
}

#[test]
fn a_topic_with_a_wildcard_or_nul_or_nothing_is_refused() {
    assert_refused(
        &sink_with("topic", "\"dt/+/{lane}\""),
        "sink[0].topic",
        6,
        "contains '+': a topic to publish to has no wildcards",
    );
    assert_refused(
        &sink_with("topic", "\"dt/{lane}/#\""),
        "sink[0].topic",
        6,
        "contains '#'",
    );
    assert_refused(
        &sink_with("topic", "\"dt/\\u0000/{lane}\""),
        "sink[0].topic",
        6,
        "NUL",
    );
    assert_refused(
        &sink_with("topic", "\"\""),
        "sink[0].topic",
        6,
        "must not be empty",
    );
}

#[test]
fn a_topic_longer_than_mqtt_allows_once_filled_in_is_refused() {
    let long = format!("\"{}/{{gateway_id}}/{{lane}}\"", "t".repeat(65_520));
    assert_refused(
        &sink_with("topic", &long),
        "sink[0].topic",
        6,
        "an MQTT topic has at most 65535",
    );
}

#[test]
fn empty_duplicate_or_unknown_lanes_are_refused() {
    assert_refused(
        &sink("lanes = []\n"),
        "sink[0].lanes",
        7,
        "expected one or both of \"readings\" and \"alarms\", found []",
    );
    assert_refused(
        &sink("lanes = [\"alarms\", \"alarms\"]\n"),
        "sink[0].lanes[1]",
        7,
        "\"alarms\" is listed twice",
    );
    let err = assert_refused(
        &sink("lanes = [\n  \"readings\",\n  \"events\",\n]\n"),
        "sink[0].lanes[1]",
        9,
        "expected \"readings\" or \"alarms\", found \"events\"",
    );
    assert!(matches!(err, ConfigError::WrongValue { .. }));
}

#[test]
fn a_client_id_with_a_topic_character_or_too_long_is_refused() {
    assert_refused(
        &sink_with("client_id", "\"gw/1\""),
        "sink[0].client_id",
        5,
        "contains '/'",
    );
    assert_refused(
        &sink_with("client_id", "\"\""),
        "sink[0].client_id",
        5,
        "must not be empty",
    );
    assert_refused(
        &sink_with("client_id", &format!("\"{}\"", "c".repeat(129))),
        "sink[0].client_id",
        5,
        "must be at most 128 bytes, found 129",
    );
}

#[test]
fn one_client_id_twice_on_one_broker_is_refused() {
    // Another sink on the same broker (the host compared without case, the port with defaults).
    let second = "[[sink]]\nname = \"b\"\nkind = \"mqtt\"\nurl = \"mqtt://BROKER.example:1883\"\n\
                  client_id = \"gw-1\"\ntopic = \"t\"\n";
    assert_refused(
        &format!("{}{second}", sink("")),
        "sink[1].client_id",
        11,
        "\"gw-1\" is already the client id of sink \"cloud\" on broker.example:1883",
    );
    // The [mqtt] source's session on that broker.
    let mqtt = "[mqtt]\nurl = \"mqtt://broker.example\"\nclient_id = \"gw-1\"\n";
    assert_refused(
        &format!("{mqtt}{}", sink("")),
        "sink[0].client_id",
        8,
        "already the client id of [mqtt]",
    );
    // Another broker, or an embedded [mqtt], is no clash.
    parse(&format!(
        "{mqtt}{}",
        sink_with("url", "\"mqtt://other.example\"")
    ));
    parse(&format!(
        "[mqtt]\nmode = \"embedded\"\nclient_id = \"gw-1\"\n{}",
        sink("")
    ));
}

#[test]
fn mqtt_sink_ranges_are_refused_naming_the_key() {
    for (key, value, fragment) in [
        ("keep_alive_s", "4", "expected 5 to 3600 seconds, found 4"),
        (
            "keep_alive_s",
            "3601",
            "expected 5 to 3600 seconds, found 3601",
        ),
        (
            "keep_alive_s",
            "70000",
            "expected an integer from 0 to 65535",
        ),
        (
            "max_message_bytes",
            "1023",
            "expected 1024 to 268435455 bytes, found 1023",
        ),
        (
            "max_message_bytes",
            "268435456",
            "expected 1024 to 268435455 bytes",
        ),
        ("timeout_ms", "0", "must be greater than 0"),
        ("batch_max_records", "0", "must be greater than 0"),
        ("batch_max_bytes", "0", "must be greater than 0"),
        ("retry_initial_ms", "0", "must be greater than 0"),
        ("max_in_flight", "0", "must be greater than 0"),
        ("linger_ms", "-1", "expected a non-negative integer"),
    ] {
        assert_refused(
            &sink(&format!("{key} = {value}\n")),
            &format!("sink[0].{key}"),
            7,
            fragment,
        );
    }
    assert_refused(
        &sink("retry_initial_ms = 5000\nretry_max_ms = 1000\n"),
        "sink[0].retry_initial_ms",
        7,
        "must be <= sink[0].retry_max_ms (1000), found 5000",
    );
    // The edges are fine.
    let config = parse(&sink(
        "keep_alive_s = 5\nmax_message_bytes = 1024\nlinger_ms = 0\nretry_initial_ms = 7\nretry_max_ms = 7\n",
    ));
    let m = mqtt(&only_sink(&config).kind);
    assert_eq!((m.keep_alive_s, m.max_message_bytes), (5, 1024));
    parse(&sink(
        "keep_alive_s = 3600\nmax_message_bytes = 268435455\n",
    ));
}

#[test]
fn the_sink_table_written_as_a_value_is_a_wrong_type() {
    assert_refused("sink = 3\n", "sink", 1, "expected");
}
