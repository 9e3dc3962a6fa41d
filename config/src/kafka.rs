//! A `kind = "kafka"` `[[sink]]` table: from what was written to [`KafkaSinkConfig`].
//!
//! Checks, each naming its key: `brokers` a non-empty list of `"host:port"` without repeats
//! (a DNS name, an IPv4 address or a bracketed IPv6 address, and a port from 1 to 65535);
//! `client_id` 1 to 255 bytes of `[A-Za-z0-9._-]` (also when it defaults to
//! `"gateway-{gateway_id}"`); a topic for each lane the sink reads and none for a lane it does
//! not, each a legal Kafka topic name; TLS files only with `tls = true`, and with it a TLS client
//! built as every other section builds one; `username` and `password_env` exactly when
//! `sasl_mechanism` is set, the password read from the environment.
//!
//! The forwarding keys are checked with every sink's (see `validate`), with one rule of this
//! kind: `max_in_flight` is 1.

use std::net::{Ipv4Addr, Ipv6Addr};

use crate::defaults as d;
use crate::model::{KafkaSasl, KafkaSinkConfig, KafkaTopic, SaslMechanism, SinkLane, SinkLanes};
use crate::raw::RawSink;
use crate::tls::TlsFiles;
use crate::validate::{Ctx, Result};

/// Longest DNS name, in bytes (RFC 1035, without the trailing dot).
const DNS_NAME_MAX_BYTES: usize = 253;
/// Longest DNS label, in bytes.
const DNS_LABEL_MAX_BYTES: usize = 63;

/// The keys of a `kind = "kafka"` sink at `section` (`sink[i]`), which reads `lanes`.
pub(crate) fn sink(
    section: &str,
    raw: &RawSink,
    gateway_id: &str,
    lanes: SinkLanes,
    cx: &Ctx<'_>,
) -> Result<KafkaSinkConfig> {
    let key = |k: &str| format!("{section}.{k}");

    let brokers = raw
        .brokers
        .clone()
        .ok_or_else(|| cx.missing(&key("brokers")))?;
    if brokers.is_empty() {
        return Err(cx.invalid(
            &key("brokers"),
            "expected at least one broker \"host:port\" such as \"kafka-1.example.net:9092\", \
             found []",
        ));
    }
    // Compared as the client connects to them: the host without case, the port as a number.
    let mut seen: Vec<String> = Vec::with_capacity(brokers.len());
    for (j, broker) in brokers.iter().enumerate() {
        let at = format!("{}[{j}]", key("brokers"));
        let address = broker_address(broker).map_err(|why| cx.invalid(&at, why))?;
        if let Some(first) = seen.iter().position(|earlier| *earlier == address) {
            return Err(cx.invalid(
                &at,
                format!(
                    "\"{broker}\" is listed twice: it is the broker of {}[{first}] already",
                    key("brokers")
                ),
            ));
        }
        seen.push(address);
    }

    let client_id = match &raw.client_id {
        Some(written) => {
            client_id(written).map_err(|why| cx.invalid(&key("client_id"), why))?;
            written.clone()
        }
        None => {
            let default = format!("{}{gateway_id}", d::KAFKA_SINK_CLIENT_ID_PREFIX);
            client_id(&default).map_err(|why| {
                cx.invalid(
                    &key("client_id"),
                    format!(
                        "defaults to \"{}\" and the gateway_id, {why}; set client_id",
                        d::KAFKA_SINK_CLIENT_ID_PREFIX
                    ),
                )
            })?;
            default
        }
    };

    let readings_topic = topic(
        &key("topic"),
        raw.topic.as_deref(),
        lanes,
        SinkLane::Readings,
        cx,
    )?;
    let alarm_topic = topic(
        &key("alarm_topic"),
        raw.alarm_topic.as_deref(),
        lanes,
        SinkLane::Alarms,
        cx,
    )?;

    let files = TlsFiles {
        ca_file: raw.ca_file.clone(),
        client_cert_file: raw.client_cert_file.clone(),
        client_key_file: raw.client_key_file.clone(),
        alpn: Vec::new(),
    };
    let tls = raw.tls.unwrap_or(false);
    let tls_client = if tls {
        Some(cx.tls(section, &files)?)
    } else {
        // Not implied: a file named without `tls = true` is a mistake either way round, and
        // connecting in plaintext because of it would be the worse guess.
        let written = [
            ("ca_file", files.ca_file.is_some()),
            ("client_cert_file", files.client_cert_file.is_some()),
            ("client_key_file", files.client_key_file.is_some()),
        ];
        if let Some((k, _)) = written.iter().find(|(_, set)| *set) {
            return Err(cx.invalid(
                &key(k),
                format!(
                    "needs {} = true: without it the sink connects without TLS and would not \
                     use this file",
                    key("tls")
                ),
            ));
        }
        None
    };

    let sasl = sasl(section, raw, cx)?;

    // Before `forwarding` checks the key as every sink's, so that 0 is explained the same way.
    if let Some(n) = raw.max_in_flight.filter(|n| *n != 1) {
        return Err(cx.invalid(
            &key("max_in_flight"),
            format!(
                "must be 1 in a Kafka sink, found {n}: one batch at a time is what keeps each \
                 device's records in seq order in its partition (the sink has no idempotent \
                 producer, so a retried batch could land behind the batch after it)"
            ),
        ));
    }

    Ok(KafkaSinkConfig {
        brokers,
        client_id,
        topic: readings_topic,
        alarm_topic,
        compression: raw.compression.unwrap_or(d::KAFKA_SINK_COMPRESSION),
        tls,
        ca_file: files.ca_file,
        client_cert_file: files.client_cert_file,
        client_key_file: files.client_key_file,
        tls_client,
        sasl,
        password_env: raw.password_env.clone(),
    })
}

/// `topic` or `alarm_topic`: required for a lane the sink reads, refused for one it does not.
fn topic(
    key: &str,
    written: Option<&str>,
    lanes: SinkLanes,
    lane: SinkLane,
    cx: &Ctx<'_>,
) -> Result<Option<KafkaTopic>> {
    match (written, lanes.contains(lane)) {
        (Some(name), true) => KafkaTopic::new(name)
            .map(Some)
            .map_err(|why| cx.invalid(key, why)),
        (None, false) => Ok(None),
        (None, true) => Err(cx.invalid(
            key,
            format!(
                "required key is missing: the sink reads the {lane} lane (see lanes), whose \
                 records go to this topic"
            ),
        )),
        (Some(_), false) => Err(cx.invalid(
            key,
            format!(
                "not used: lanes does not include \"{lane}\"; remove it, or add \"{lane}\" to \
                 lanes"
            ),
        )),
    }
}

/// `sasl_mechanism`, `username` and `password_env`: all three or none.
fn sasl(section: &str, raw: &RawSink, cx: &Ctx<'_>) -> Result<Option<KafkaSasl>> {
    let key = |k: &str| format!("{section}.{k}");
    let Some(mechanism) = raw.sasl_mechanism else {
        let written = [
            ("username", raw.username.is_some()),
            ("password_env", raw.password_env.is_some()),
        ];
        if let Some((k, _)) = written.iter().find(|(_, set)| *set) {
            return Err(cx.invalid(
                &key(k),
                format!(
                    "needs {} (\"PLAIN\", \"SCRAM-SHA-256\" or \"SCRAM-SHA-512\"): a Kafka sink \
                     sends a username and password only through SASL",
                    key("sasl_mechanism")
                ),
            ));
        }
        return Ok(None);
    };
    let required = |k: &str| {
        cx.invalid(
            &key(k),
            format!(
                "required key is missing: sasl_mechanism = \"{mechanism}\" authenticates with \
                 username and the password of password_env"
            ),
        )
    };
    let username = raw.username.clone().ok_or_else(|| required("username"))?;
    if username.is_empty() {
        return Err(cx.invalid(&key("username"), "must not be empty"));
    }
    let password = cx
        .secret(&key("password_env"), raw.password_env.as_ref())?
        .ok_or_else(|| required("password_env"))?;
    Ok(Some(KafkaSasl {
        mechanism,
        username,
        password,
    }))
}

/// `client_id`: what a Kafka broker accepts in logs and quota names.
fn client_id(id: &str) -> std::result::Result<(), String> {
    if id.is_empty() {
        return Err("must not be empty".into());
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "{id:?} contains {c:?}; allowed: A-Z, a-z, 0-9, '.', '_' and '-'"
        ));
    }
    if id.len() > d::KAFKA_SINK_CLIENT_ID_MAX_BYTES {
        return Err(format!(
            "must be at most {} bytes, found {}",
            d::KAFKA_SINK_CLIENT_ID_MAX_BYTES,
            id.len()
        ));
    }
    Ok(())
}

/// Checks one `brokers` entry and gives it as the client connects to it (host in lower case,
/// IPv6 in its canonical form, the port as a number), for the duplicate check.
fn broker_address(text: &str) -> std::result::Result<String, String> {
    if let Some((scheme, _)) = text.split_once("://") {
        return Err(format!(
            "expected \"host:port\" without a scheme, found \"{text}\" (remove \"{scheme}://\")"
        ));
    }
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let Some((ip, after)) = rest.split_once(']') else {
            return Err(format!("\"{text}\" has a '[' without its ']'"));
        };
        let ip: Ipv6Addr = ip
            .parse()
            .map_err(|_| format!("\"{ip}\" in \"{text}\" is not an IPv6 address"))?;
        let Some(port) = after.strip_prefix(':') else {
            return Err(format!(
                "expected \"[{ip}]:port\" such as \"[{ip}]:9092\", found \"{text}\" (the port is \
                 required)"
            ));
        };
        (format!("[{ip}]"), port)
    } else {
        let Some((host, port)) = text.rsplit_once(':') else {
            return Err(format!(
                "expected \"host:port\" such as \"kafka-1.example.net:9092\", found \"{text}\" \
                 (the port is required)"
            ));
        };
        if host.contains(':') {
            return Err(format!(
                "\"{text}\": an IPv6 address goes in brackets, \"[{host}]:{port}\""
            ));
        }
        host_name(host).map_err(|why| format!("\"{text}\": {why}"))?;
        (host.to_ascii_lowercase(), port)
    };
    let number = match port.parse::<u16>() {
        Ok(n) if n > 0 && port.bytes().all(|b| b.is_ascii_digit()) => n,
        _ => {
            return Err(format!(
                "\"{text}\": the port must be a number from 1 to 65535, found \"{port}\""
            ));
        }
    };
    Ok(format!("{host}:{number}"))
}

/// A host written without brackets: an IPv4 address or a DNS name (labels of `A-Z`, `a-z`,
/// `0-9` and `-`, not starting or ending with `-`).
fn host_name(host: &str) -> std::result::Result<(), String> {
    if host.is_empty() {
        return Err("the host is missing".into());
    }
    if host.parse::<Ipv4Addr>().is_ok() {
        return Ok(());
    }
    if host.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return Err(format!("\"{host}\" is not an IPv4 address"));
    }
    if host.len() > DNS_NAME_MAX_BYTES {
        return Err(format!(
            "the host name is {} bytes; a DNS name has at most {DNS_NAME_MAX_BYTES}",
            host.len()
        ));
    }
    for label in host.split('.') {
        let bad_char = label
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-'));
        if label.is_empty()
            || label.len() > DNS_LABEL_MAX_BYTES
            || label.starts_with('-')
            || label.ends_with('-')
            || bad_char.is_some()
        {
            return Err(format!(
                "\"{host}\" is not a host name: each dot-separated part is 1 to \
                 {DNS_LABEL_MAX_BYTES} characters of A-Z, a-z, 0-9 and '-', not starting or \
                 ending with '-'"
            ));
        }
    }
    Ok(())
}

/// Whether `mechanism` sends the password itself (rather than a proof of it) to the broker.
pub(crate) fn sends_password(mechanism: SaslMechanism) -> bool {
    mechanism == SaslMechanism::Plain
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn brokers_are_compared_as_the_client_connects_to_them() {
        assert_eq!(
            broker_address("Kafka-1.Example.NET:09092").unwrap(),
            "kafka-1.example.net:9092"
        );
        assert_eq!(
            broker_address("[FD00:0::1]:9092").unwrap(),
            "[fd00::1]:9092"
        );
        assert_eq!(broker_address("10.0.0.7:9093").unwrap(), "10.0.0.7:9093");
        assert_eq!(broker_address("localhost:1").unwrap(), "localhost:1");
        assert_eq!(broker_address("b:65535").unwrap(), "b:65535");
    }

    #[test]
    fn brokers_without_a_port_or_with_a_bad_host_are_refused() {
        for (bad, why) in [
            ("kafka-1.example.net", "the port is required"),
            ("kafka-1.example.net:", "found \"\""),
            ("kafka:0", "from 1 to 65535, found \"0\""),
            ("kafka:65536", "found \"65536\""),
            ("kafka:+9092", "found \"+9092\""),
            (":9092", "the host is missing"),
            ("fd00::1:9092", "goes in brackets, \"[fd00::1]:9092\""),
            ("[fd00::1]", "the port is required"),
            ("[fd00::1:9092", "without its ']'"),
            ("[10.0.0.1]:9092", "not an IPv6 address"),
            ("10.0.0.256:9092", "not an IPv4 address"),
            ("kafka_1:9092", "not a host name"),
            ("-kafka:9092", "not a host name"),
            ("kafka..net:9092", "not a host name"),
            ("kafka.net.:9092", "not a host name"),
            ("kafka 1:9092", "not a host name"),
            (
                "kafka://b:9092",
                "without a scheme, found \"kafka://b:9092\"",
            ),
        ] {
            let err = broker_address(bad).unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
        }
        let long = format!("{}:9092", vec!["a".repeat(63); 4].join("."));
        assert!(broker_address(&long).unwrap_err().contains("at most 253"));
        let label = format!("{}.net:9092", "a".repeat(64));
        assert!(
            broker_address(&label)
                .unwrap_err()
                .contains("not a host name")
        );
    }

    #[test]
    fn client_ids_are_letters_digits_dot_underscore_and_dash() {
        client_id("gateway-gw_1.a").unwrap();
        client_id(&"c".repeat(255)).unwrap();
        assert!(client_id("").unwrap_err().contains("must not be empty"));
        assert!(client_id("gw 1").unwrap_err().contains("contains ' '"));
        assert!(client_id("gw/1").unwrap_err().contains("contains '/'"));
        assert!(
            client_id(&"c".repeat(256))
                .unwrap_err()
                .contains("at most 255 bytes, found 256")
        );
    }

    #[test]
    fn only_plain_sends_the_password_itself() {
        assert!(sends_password(SaslMechanism::Plain));
        assert!(!sends_password(SaslMechanism::ScramSha256));
        assert!(!sends_password(SaslMechanism::ScramSha512));
    }
}
