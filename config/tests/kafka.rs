//! `[[sink]]` tables with `kind = "kafka"`: every key loads with its defaults, and each broken
//! one is refused with a message naming `sink[i].key` and its line.

use gateway_config::{
    Config, ConfigError, ForwardingConfig, KafkaCompression, KafkaSinkConfig, KafkaTopic,
    SaslMechanism, SinkConfig, SinkKind, SinkLane, SinkLanes, defaults,
};
use std::path::Path;
use test_peers::Pki;

/// The environment of these tests: each test that needs a password names its own variable, so
/// no two tests depend on one value; `KAFKA_EMPTY` is set but empty.
fn env(name: &str) -> Option<String> {
    match name {
        "KAFKA_FULL_PW" => Some("full-pw-s3cret".to_owned()),
        "KAFKA_DEBUG_PW" => Some("debug-pw-s3cret".to_owned()),
        "KAFKA_PLAIN_PW" => Some("plain-pw-s3cret".to_owned()),
        "KAFKA_SASL_PW" => Some("sasl-pw-s3cret".to_owned()),
        "KAFKA_EMPTY" => Some(String::new()),
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

/// A valid Kafka sink on lines 1 to 6, then `extra` from line 7.
fn sink(extra: &str) -> String {
    format!(
        "[[sink]]\nname = \"events\"\nkind = \"kafka\"\nbrokers = [\"kafka-1.example.net:9092\"]\n\
         topic = \"sensor-readings\"\nalarm_topic = \"sensor-alarms\"\n{extra}"
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

/// [`sink`] without the line that starts `key = `, then `extra`.
fn sink_without(key: &str, extra: &str) -> String {
    let mut text: String = sink("")
        .lines()
        .filter(|line| !line.starts_with(&format!("{key} = ")))
        .map(|line| format!("{line}\n"))
        .collect();
    text.push_str(extra);
    text
}

fn only_sink(config: &Config) -> &SinkConfig {
    match &config.sinks[..] {
        [sink] => sink,
        other => panic!("one sink expected, got {other:?}"),
    }
}

fn kafka(sink: &SinkConfig) -> &KafkaSinkConfig {
    match &sink.kind {
        SinkKind::Kafka(k) => k,
        other => panic!("a kafka sink expected, got {other:?}"),
    }
}

fn topic(k: &KafkaSinkConfig, lane: SinkLane) -> Option<&str> {
    k.topic_for(lane).map(KafkaTopic::as_str)
}

fn p(path: &Path) -> String {
    path.display().to_string()
}

#[test]
fn a_full_kafka_sink_with_tls_and_sasl_loads_every_key() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(dir.path());
    let t = &pki.trusted;
    let text = format!(
        "gateway_id = \"gw-7\"\n\
         [[sink]]\n\
         name = \"kafka_eu-1\"\n\
         kind = \"kafka\"\n\
         brokers = [\"kafka-1.example.net:9093\", \"10.0.0.7:9093\", \"[fd00::7]:9093\"]\n\
         client_id = \"gw-7.producer_1\"\n\
         tls = true\n\
         ca_file = \"{}\"\n\
         client_cert_file = \"{}\"\n\
         client_key_file = \"{}\"\n\
         topic = \"plant.readings\"\n\
         alarm_topic = \"plant.alarms\"\n\
         lanes = [\"alarms\", \"readings\"]\n\
         compression = \"zstd\"\n\
         sasl_mechanism = \"SCRAM-SHA-256\"\n\
         username = \"gw-7\"\n\
         password_env = \"KAFKA_FULL_PW\"\n\
         timeout_ms = 5000\n\
         batch_max_records = 200\n\
         batch_max_bytes = 65536\n\
         linger_ms = 50\n\
         retry_initial_ms = 100\n\
         retry_max_ms = 10000\n\
         max_in_flight = 1\n",
        p(&t.ca),
        p(&t.client_cert),
        p(&t.client_key)
    );
    let config = parse(&text);
    let sink = only_sink(&config);
    assert_eq!(sink.name, "kafka_eu-1");
    assert_eq!(sink.kind.as_str(), "kafka");
    assert_eq!(sink.lanes, SinkLanes::ALL);
    assert_eq!(
        sink.forwarding,
        ForwardingConfig {
            batch_max_records: 200,
            batch_max_bytes: 65_536,
            linger_ms: 50,
            timeout_ms: 5000,
            retry_initial_ms: 100,
            retry_max_ms: 10_000,
            max_in_flight: 1,
        }
    );
    let k = kafka(sink);
    assert_eq!(
        k.brokers,
        [
            "kafka-1.example.net:9093",
            "10.0.0.7:9093",
            "[fd00::7]:9093"
        ]
    );
    assert_eq!(k.client_id, "gw-7.producer_1");
    assert_eq!(topic(k, SinkLane::Readings), Some("plant.readings"));
    assert_eq!(topic(k, SinkLane::Alarms), Some("plant.alarms"));
    assert_eq!(k.topic.as_ref().unwrap().to_string(), "plant.readings");
    assert_eq!(k.compression, KafkaCompression::Zstd);
    assert!(k.tls);
    assert_eq!(k.ca_file.as_deref(), Some(t.ca.as_path()));
    assert_eq!(k.client_cert_file.as_deref(), Some(t.client_cert.as_path()));
    assert_eq!(k.client_key_file.as_deref(), Some(t.client_key.as_path()));
    let tls = k
        .tls_client
        .as_ref()
        .expect("tls = true builds a TLS client");
    assert!(tls.has_client_certificate());
    assert_eq!(tls.files(), &k.tls_files());
    let sasl = k.sasl.as_ref().expect("sasl_mechanism is set");
    assert_eq!(sasl.mechanism, SaslMechanism::ScramSha256);
    assert_eq!(sasl.username, "gw-7");
    assert_eq!(sasl.password.expose(), "full-pw-s3cret");
    assert_eq!(k.password_env.as_deref(), Some("KAFKA_FULL_PW"));
    // SCRAM over TLS: nothing to warn about.
    assert!(config.cleartext_secrets().is_empty());
}

#[test]
fn a_kafka_sink_with_only_its_required_keys_gets_the_defaults() {
    let config = parse(&sink(""));
    let sink = only_sink(&config);
    assert_eq!(sink.lanes, SinkLanes::ALL);
    assert_eq!(sink.forwarding, defaults::KAFKA_SINK_FORWARDING);
    assert_eq!(
        sink.forwarding,
        ForwardingConfig {
            batch_max_records: 5000,
            batch_max_bytes: 4_194_304,
            linger_ms: 200,
            timeout_ms: 10_000,
            retry_initial_ms: 200,
            retry_max_ms: 60_000,
            max_in_flight: 1,
        }
    );
    let k = kafka(sink);
    assert_eq!(k.brokers, ["kafka-1.example.net:9092"]);
    assert_eq!(k.client_id, "gateway-gateway");
    assert_eq!(topic(k, SinkLane::Readings), Some("sensor-readings"));
    assert_eq!(topic(k, SinkLane::Alarms), Some("sensor-alarms"));
    assert_eq!(k.compression, KafkaCompression::None);
    assert!(!k.tls && k.tls_client.is_none());
    assert!(k.ca_file.is_none() && k.client_cert_file.is_none() && k.client_key_file.is_none());
    assert!(k.sasl.is_none() && k.password_env.is_none());
}

#[test]
fn the_default_client_id_follows_the_gateway_id() {
    let config = parse(&format!("gateway_id = \"gw-greenhouse-01\"\n{}", sink("")));
    assert_eq!(
        kafka(only_sink(&config)).client_id,
        "gateway-gw-greenhouse-01"
    );
}

#[test]
fn a_sink_of_one_lane_has_that_lanes_topic_only() {
    let alarms = parse(&sink_without("topic", "lanes = [\"alarms\"]\n"));
    let k = kafka(only_sink(&alarms));
    assert_eq!(
        (topic(k, SinkLane::Readings), topic(k, SinkLane::Alarms)),
        (None, Some("sensor-alarms"))
    );
    let readings = parse(&sink_without("alarm_topic", "lanes = [\"readings\"]\n"));
    let k = kafka(only_sink(&readings));
    assert_eq!(
        (topic(k, SinkLane::Readings), topic(k, SinkLane::Alarms)),
        (Some("sensor-readings"), None)
    );
    // One topic for both lanes is allowed.
    let one = parse(&sink_with("alarm_topic", "\"sensor-readings\""));
    let k = kafka(only_sink(&one));
    assert_eq!(topic(k, SinkLane::Readings), topic(k, SinkLane::Alarms));
}

#[test]
fn a_lane_without_its_topic_or_a_topic_without_its_lane_is_refused() {
    assert_refused(
        &sink_without("topic", ""),
        "sink[0].topic",
        1,
        "required key is missing: the sink reads the readings lane",
    );
    assert_refused(
        &sink_without("alarm_topic", ""),
        "sink[0].alarm_topic",
        1,
        "required key is missing: the sink reads the alarms lane",
    );
    assert_refused(
        &sink("lanes = [\"alarms\"]\n"),
        "sink[0].topic",
        5,
        "not used: lanes does not include \"readings\"",
    );
    assert_refused(
        &sink("lanes = [\"readings\"]\n"),
        "sink[0].alarm_topic",
        6,
        "not used: lanes does not include \"alarms\"",
    );
}

#[test]
fn a_topic_that_is_not_a_kafka_topic_name_is_refused() {
    for key in ["topic", "alarm_topic"] {
        let line = if key == "topic" { 5 } else { 6 };
        for (bad, fragment) in [
            (
                "dt/{lane}",
                "contains '/'; a Kafka topic name has only A-Z, a-z, 0-9",
            ),
            ("readings-{lane}", "contains '{'"),
            ("sensor readings", "contains ' '"),
            ("capteur-température", "contains 'é'"),
            ("", "must not be empty"),
            (".", "\".\" is not a Kafka topic name"),
            ("..", "\"..\" is not a Kafka topic name"),
        ] {
            assert_refused(
                &sink_with(key, &format!("\"{bad}\"")),
                &format!("sink[0].{key}"),
                line,
                fragment,
            );
        }
        assert_refused(
            &sink_with(key, &format!("\"{}\"", "t".repeat(250))),
            &format!("sink[0].{key}"),
            line,
            "must be at most 249 characters, found 250",
        );
    }
    let longest = parse(&sink_with("topic", &format!("\"{}\"", "t".repeat(249))));
    let k = kafka(only_sink(&longest));
    assert_eq!(k.topic.as_ref().unwrap().as_str().len(), 249);
    parse(&sink_with("topic", "\"...\""));
}

#[test]
fn kafka_topics_check_their_names_and_print_as_written() {
    let t = KafkaTopic::new("Plant_1.readings-v2").unwrap();
    assert_eq!(
        (t.as_str(), t.to_string(), format!("{t:?}")),
        (
            "Plant_1.readings-v2",
            "Plant_1.readings-v2".to_owned(),
            "\"Plant_1.readings-v2\"".to_owned()
        )
    );
    assert!(KafkaTopic::new("a/b").is_err());
    assert!(KafkaTopic::new("..").is_err());
}

#[test]
fn brokers_missing_or_empty_are_refused() {
    let err = assert_refused(
        &sink_without("brokers", ""),
        "sink[0].brokers",
        1,
        "required key is missing",
    );
    assert!(matches!(err, ConfigError::MissingKey { .. }), "{err}");
    assert_refused(
        &sink_with("brokers", "[]"),
        "sink[0].brokers",
        4,
        "expected at least one broker \"host:port\" such as \"kafka-1.example.net:9092\", \
         found []",
    );
    assert_refused(
        &sink_with("brokers", "\"kafka-1.example.net:9092\""),
        "sink[0].brokers",
        4,
        "expected an array",
    );
}

#[test]
fn a_broker_that_is_not_host_and_port_is_refused_by_its_index() {
    for (bad, fragment) in [
        ("kafka-2.example.net", "(the port is required)"),
        (
            "kafka-2.example.net:0",
            "the port must be a number from 1 to 65535, found \"0\"",
        ),
        ("kafka-2.example.net:65536", "found \"65536\""),
        ("kafka-2.example.net:http", "found \"http\""),
        (
            "fd00::2:9092",
            "an IPv6 address goes in brackets, \"[fd00::2]:9092\"",
        ),
        ("[fd00::2]", "expected \"[fd00::2]:port\""),
        (
            "[not-v6]:9092",
            "\"not-v6\" in \"[not-v6]:9092\" is not an IPv6 address",
        ),
        ("300.1.1.1:9092", "\"300.1.1.1\" is not an IPv4 address"),
        ("kafka_2:9092", "\"kafka_2\" is not a host name"),
        ("-kafka:9092", "is not a host name"),
        (":9092", "the host is missing"),
        ("kafka://kafka-2.example.net:9092", "without a scheme"),
    ] {
        let text = sink_with(
            "brokers",
            &format!("[\n  \"kafka-1.example.net:9092\",\n  \"{bad}\",\n]"),
        );
        assert_refused(&text, "sink[0].brokers[1]", 6, fragment);
    }
}

#[test]
fn a_broker_listed_twice_is_refused_at_the_second() {
    for second in [
        "kafka-1.example.net:9092",
        "KAFKA-1.example.net:9092",
        "kafka-1.example.net:09092",
    ] {
        assert_refused(
            &sink_with(
                "brokers",
                &format!("[\"kafka-1.example.net:9092\", \"{second}\"]"),
            ),
            "sink[0].brokers[1]",
            4,
            &format!(
                "\"{second}\" is listed twice: it is the broker of sink[0].brokers[0] already"
            ),
        );
    }
    assert_refused(
        &sink_with("brokers", "[\"[fd00::1]:9092\", \"[fd00:0::1]:9092\"]"),
        "sink[0].brokers[1]",
        4,
        "is listed twice",
    );
    // Another port of the same host is another broker.
    let config = parse(&sink_with(
        "brokers",
        "[\"kafka-1.example.net:9092\", \"kafka-1.example.net:9093\"]",
    ));
    assert_eq!(kafka(only_sink(&config)).brokers.len(), 2);
}

#[test]
fn a_client_id_outside_letters_digits_dot_underscore_and_dash_is_refused() {
    for (bad, fragment) in [
        (
            "gw 1",
            "\"gw 1\" contains ' '; allowed: A-Z, a-z, 0-9, '.', '_' and '-'",
        ),
        ("gw/1", "contains '/'"),
        ("", "must not be empty"),
    ] {
        assert_refused(
            &sink(&format!("client_id = \"{bad}\"\n")),
            "sink[0].client_id",
            7,
            fragment,
        );
    }
    assert_refused(
        &sink(&format!("client_id = \"{}\"\n", "c".repeat(256))),
        "sink[0].client_id",
        7,
        "must be at most 255 bytes, found 256",
    );
    parse(&sink(&format!("client_id = \"{}\"\n", "c".repeat(255))));
}

#[test]
fn a_gateway_id_that_makes_a_bad_default_client_id_asks_for_one() {
    let text = format!("gateway_id = \"gw@1\"\n{}", sink(""));
    assert_refused(
        &text,
        "sink[0].client_id",
        2,
        "defaults to \"gateway-\" and the gateway_id, \"gateway-gw@1\" contains '@'; allowed: \
         A-Z, a-z, 0-9, '.', '_' and '-'; set client_id",
    );
    parse(&format!("{text}client_id = \"gw-1\"\n"));
}

#[test]
fn kafka_sinks_may_share_a_client_id_with_each_other_and_with_mqtt() {
    let second = "[[sink]]\nname = \"events-2\"\nkind = \"kafka\"\n\
                  brokers = [\"kafka-1.example.net:9092\"]\nclient_id = \"gw-1\"\n\
                  topic = \"other\"\nlanes = [\"readings\"]\n";
    let mqtt = "[[sink]]\nname = \"cloud\"\nkind = \"mqtt\"\nurl = \"mqtt://kafka-1.example.net\"\n\
                client_id = \"gw-1\"\ntopic = \"t/{lane}\"\n";
    let sinks = parse(&format!("{}{second}{mqtt}", sink("client_id = \"gw-1\"\n"))).sinks;
    let kinds: Vec<&str> = sinks.iter().map(|s| s.kind.as_str()).collect();
    assert_eq!(kinds, ["kafka", "kafka", "mqtt"]);
}

#[test]
fn every_compression_loads_and_another_is_refused_with_the_list() {
    for (written, codec) in [
        ("none", KafkaCompression::None),
        ("gzip", KafkaCompression::Gzip),
        ("lz4", KafkaCompression::Lz4),
        ("zstd", KafkaCompression::Zstd),
    ] {
        let config = parse(&sink(&format!("compression = \"{written}\"\n")));
        assert_eq!(kafka(only_sink(&config)).compression, codec);
        assert_eq!(codec.as_str(), written);
        assert_eq!(codec.to_string(), written);
    }
    for (bad, found) in [("\"snappy\"", "\"snappy\""), ("1", "1")] {
        let err = assert_refused(
            &sink(&format!("compression = {bad}\n")),
            "sink[0].compression",
            7,
            &format!("expected \"none\", \"gzip\", \"lz4\" or \"zstd\", found {found}"),
        );
        assert!(matches!(err, ConfigError::WrongValue { .. }), "{err}");
    }
}

#[test]
fn tls_files_without_tls_true_are_refused_naming_the_key() {
    for key in ["ca_file", "client_cert_file", "client_key_file"] {
        for tls in ["", "tls = false\n"] {
            assert_refused(
                &sink(&format!("{tls}{key} = \"/etc/gateway/x.pem\"\n")),
                &format!("sink[0].{key}"),
                7 + tls.lines().count(),
                "needs sink[0].tls = true: without it the sink connects without TLS",
            );
        }
    }
    assert_refused(
        &sink("tls = \"yes\"\n"),
        "sink[0].tls",
        7,
        "expected true or false",
    );
}

#[test]
fn tls_without_a_ca_file_uses_the_platform_roots() {
    let config = parse(&sink("tls = true\n"));
    let k = kafka(only_sink(&config));
    let tls = k.tls_client.as_ref().expect("tls = true is always TLS");
    assert!(tls.files().ca_file.is_none());
    assert!(!tls.has_client_certificate());
    let off = parse(&sink("tls = false\n"));
    assert!(kafka(only_sink(&off)).tls_client.is_none());
}

#[test]
fn tls_files_are_checked_as_for_every_other_tls_client() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(dir.path());
    let tls = sink("tls = true\n");
    assert_refused(
        &format!(
            "{tls}client_cert_file = \"{}\"\n",
            p(&pki.trusted.client_cert)
        ),
        "sink[0].client_cert_file",
        8,
        "needs client_key_file as well",
    );
    assert_refused(
        &format!(
            "{tls}client_key_file = \"{}\"\n",
            p(&pki.trusted.client_key)
        ),
        "sink[0].client_key_file",
        8,
        "needs client_cert_file as well",
    );
    assert_refused(
        &format!(
            "{tls}client_cert_file = \"{}\"\nclient_key_file = \"{}\"\n",
            p(&pki.trusted.client_cert),
            p(&pki.trusted.rsa_client_key)
        ),
        "sink[0].client_key_file",
        9,
        "does not belong to the certificate",
    );
    assert_refused(
        &format!(
            "{tls}ca_file = \"{}\"\n",
            p(&dir.path().join("nowhere.pem"))
        ),
        "sink[0].ca_file",
        8,
        "cannot read",
    );
    assert_refused(
        &format!("{tls}ca_file = \"{}\"\n", p(&pki.trusted.client_key)),
        "sink[0].ca_file",
        8,
        "no \"BEGIN CERTIFICATE\" block found",
    );
    // A CA file alone: the brokers are trusted by it, no client certificate.
    let config = parse(&format!("{tls}ca_file = \"{}\"\n", p(&pki.trusted.ca)));
    let client = kafka(only_sink(&config)).tls_client.clone().unwrap();
    assert_eq!(
        client.files().ca_file.as_deref(),
        Some(pki.trusted.ca.as_path())
    );
    assert!(!client.has_client_certificate());
}

#[test]
fn each_sasl_mechanism_loads_with_its_username_and_password() {
    for (written, mechanism) in [
        ("PLAIN", SaslMechanism::Plain),
        ("SCRAM-SHA-256", SaslMechanism::ScramSha256),
        ("SCRAM-SHA-512", SaslMechanism::ScramSha512),
    ] {
        let config = parse(&sink(&format!(
            "tls = true\nsasl_mechanism = \"{written}\"\nusername = \"gw\"\n\
             password_env = \"KAFKA_SASL_PW\"\n"
        )));
        let sasl = kafka(only_sink(&config)).sasl.clone().unwrap();
        assert_eq!(sasl.mechanism, mechanism);
        assert_eq!(
            (mechanism.as_str(), mechanism.to_string()),
            (written, written.to_owned())
        );
        assert_eq!(sasl.username, "gw");
        assert_eq!(sasl.password.expose(), "sasl-pw-s3cret");
    }
    assert_refused(
        &sink("sasl_mechanism = \"scram-sha-256\"\n"),
        "sink[0].sasl_mechanism",
        7,
        "expected \"PLAIN\", \"SCRAM-SHA-256\" or \"SCRAM-SHA-512\", found \"scram-sha-256\"",
    );
    assert_refused(
        &sink("sasl_mechanism = 256\n"),
        "sink[0].sasl_mechanism",
        7,
        "expected \"PLAIN\", \"SCRAM-SHA-256\" or \"SCRAM-SHA-512\", found 256",
    );
}

#[test]
fn sasl_without_its_username_or_password_or_credentials_without_sasl_are_refused() {
    assert_refused(
        &sink("sasl_mechanism = \"PLAIN\"\npassword_env = \"KAFKA_SASL_PW\"\n"),
        "sink[0].username",
        1,
        "required key is missing: sasl_mechanism = \"PLAIN\" authenticates with username and \
         the password of password_env",
    );
    assert_refused(
        &sink("sasl_mechanism = \"SCRAM-SHA-512\"\nusername = \"gw\"\n"),
        "sink[0].password_env",
        1,
        "required key is missing: sasl_mechanism = \"SCRAM-SHA-512\"",
    );
    assert_refused(
        &sink("sasl_mechanism = \"PLAIN\"\nusername = \"\"\npassword_env = \"KAFKA_SASL_PW\"\n"),
        "sink[0].username",
        8,
        "must not be empty",
    );
    for (key, value) in [
        ("username", "\"gw\""),
        ("password_env", "\"KAFKA_SASL_PW\""),
    ] {
        assert_refused(
            &sink(&format!("{key} = {value}\n")),
            &format!("sink[0].{key}"),
            7,
            "needs sink[0].sasl_mechanism (\"PLAIN\", \"SCRAM-SHA-256\" or \"SCRAM-SHA-512\"): \
             a Kafka sink sends a username and password only through SASL",
        );
    }
}

#[test]
fn a_password_variable_not_set_or_empty_is_refused_as_for_mqtt() {
    let sasl = "sasl_mechanism = \"SCRAM-SHA-256\"\nusername = \"gw\"\n";
    let err = assert_refused(
        &sink(&format!("{sasl}password_env = \"KAFKA_NOT_SET\"\n")),
        "sink[0].password_env",
        9,
        "environment variable KAFKA_NOT_SET is not set",
    );
    assert!(matches!(err, ConfigError::MissingSecret { .. }), "{err}");
    assert_refused(
        &sink(&format!("{sasl}password_env = \"KAFKA_EMPTY\"\n")),
        "sink[0].password_env",
        9,
        "environment variable KAFKA_EMPTY is empty",
    );
    assert_refused(
        &sink(&format!("{sasl}password_env = \" \"\n")),
        "sink[0].password_env",
        9,
        "expected the name of an environment variable, found an empty string",
    );
}

#[test]
fn the_password_never_shows_in_debug_and_plain_in_the_clear_is_said() {
    let text =
        sink("sasl_mechanism = \"PLAIN\"\nusername = \"gw\"\npassword_env = \"KAFKA_DEBUG_PW\"\n");
    let config = parse(&text);
    let k = kafka(only_sink(&config));
    assert_eq!(
        k.sasl.as_ref().unwrap().password.expose(),
        "debug-pw-s3cret"
    );
    for shown in [
        format!("{config:?}"),
        format!("{config:#?}"),
        format!("{k:?}"),
        format!("{:?}", k.sasl),
        format!("{:#?}", k.sasl),
    ] {
        assert!(!shown.contains("debug-pw-s3cret"), "secret leaked: {shown}");
        assert!(shown.contains("***"), "{shown}");
    }
    assert!(
        format!("{k:?}").contains("KAFKA_DEBUG_PW"),
        "the variable name is not secret"
    );
    // PLAIN without TLS to another host: said, like a password over mqtt://.
    let warnings = config.cleartext_secrets();
    assert_eq!(
        warnings,
        [
            "sink[0].password_env: the SASL PLAIN password of sink \"events\" goes to \
             kafka-1.example.net:9092 in the clear; set tls = true"
        ]
    );
    // Not with TLS, not with SCRAM, not to this machine.
    assert!(
        parse(&format!("{text}tls = true\n"))
            .cleartext_secrets()
            .is_empty()
    );
    assert!(
        parse(&text.replace("\"PLAIN\"", "\"SCRAM-SHA-512\""))
            .cleartext_secrets()
            .is_empty()
    );
    for local in ["localhost:9092", "127.0.0.1:9092", "[::1]:9092"] {
        let text = sink_with("brokers", &format!("[\"{local}\"]")).replace(
            "alarm_topic",
            "sasl_mechanism = \"PLAIN\"\nusername = \"gw\"\npassword_env = \"KAFKA_PLAIN_PW\"\nalarm_topic",
        );
        assert!(parse(&text).cleartext_secrets().is_empty(), "{local}");
    }
}

#[test]
fn max_in_flight_other_than_one_is_refused_with_the_reason() {
    for n in [0, 2, 16] {
        assert_refused(
            &sink(&format!("max_in_flight = {n}\n")),
            "sink[0].max_in_flight",
            7,
            &format!(
                "must be 1 in a Kafka sink, found {n}: one batch at a time is what keeps each \
                 device's records in seq order in its partition (the sink has no idempotent \
                 producer"
            ),
        );
    }
    let config = parse(&sink("max_in_flight = 1\n"));
    assert_eq!(only_sink(&config).forwarding.max_in_flight, 1);
}

#[test]
fn forwarding_keys_are_checked_as_for_every_sink() {
    for (key, value, fragment) in [
        ("timeout_ms", "0", "must be greater than 0"),
        ("batch_max_records", "0", "must be greater than 0"),
        ("batch_max_bytes", "0", "must be greater than 0"),
        ("retry_initial_ms", "0", "must be greater than 0"),
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
    let config = parse(&sink(
        "linger_ms = 0\nretry_initial_ms = 7\nretry_max_ms = 7\n",
    ));
    let f = only_sink(&config).forwarding;
    assert_eq!((f.linger_ms, f.retry_initial_ms, f.retry_max_ms), (0, 7, 7));
}

#[test]
fn mqtt_keys_in_a_kafka_sink_are_refused_as_the_other_kinds() {
    for (key, value) in [
        ("url", "\"mqtt://broker.example\""),
        ("keep_alive_s", "30"),
        ("max_message_bytes", "131072"),
    ] {
        assert_refused(
            &sink(&format!("{key} = {value}\n")),
            &format!("sink[0].{key}"),
            7,
            "is a key of kind = \"mqtt\" sinks; this sink is kind = \"kafka\"",
        );
    }
}

#[test]
fn an_unknown_key_of_a_kafka_sink_lists_the_keys_of_a_kafka_sink() {
    let err = assert_refused(
        &sink("acks = \"all\"\n"),
        "sink[0].acks",
        7,
        "unknown key; allowed keys here: name, kind, brokers, client_id, tls, ca_file,",
    );
    let ConfigError::UnknownKey { allowed, .. } = err else {
        panic!("{err}");
    };
    for mqtt_only in ["url", "keep_alive_s", "max_message_bytes"] {
        assert!(!allowed.iter().any(|k| k == mqtt_only), "{allowed:?}");
    }
}

#[test]
fn a_kafka_sink_and_an_mqtt_sink_load_side_by_side() {
    let mqtt = "[[sink]]\nname = \"cloud\"\nkind = \"mqtt\"\nurl = \"mqtt://broker.example\"\n\
                client_id = \"gw-1\"\ntopic = \"t/{lane}\"\n";
    let config = parse(&format!("{mqtt}{}", sink("")));
    let kinds: Vec<&str> = config.sinks.iter().map(|s| s.kind.as_str()).collect();
    assert_eq!(kinds, ["mqtt", "kafka"]);
    assert_eq!(config.sinks[0].forwarding, defaults::MQTT_SINK_FORWARDING);
    assert_eq!(config.sinks[1].forwarding, defaults::KAFKA_SINK_FORWARDING);
    // Names are unique across kinds.
    assert_refused(
        &format!("{mqtt}{}", sink_with("name", "\"cloud\"")),
        "sink[1].name",
        8,
        "\"cloud\" is already the name of an earlier sink",
    );
}
