//! The config exactly as written: what serde reads from TOML, before defaults and validation.
//!
//! Every field is an `Option` (or a `Vec` that defaults to empty) so that [`crate::validate`] can
//! tell "absent" from "written": some defaults depend on other keys (`mqtt.client_id` defaults to
//! `gateway_id`, `mqtt.mode` to whether `url` was written, a clear threshold to its trigger).
//! Values whose check needs a good message (URLs, socket addresses, globs) stay strings here and are
//! parsed in validation, where the key and its line are known. Enums are real enums: serde's
//! "unknown variant" error already lists the allowed values and is reworded in [`crate::locate`].

use serde::Deserialize;
use std::path::PathBuf;

use crate::model::{
    Compression, DataType, KafkaCompression, MqttMode, Parity, RegisterKind, SaslMechanism,
    Severity, SinkLane, WhenFull, WordOrder,
};

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct RawConfig {
    pub gateway_id: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub data_dir_mode: Option<u32>,
    pub shutdown_grace_s: Option<u64>,
    pub alarm_max_series: Option<usize>,
    pub mqtt: RawMqtt,
    pub serial: Vec<RawSerial>,
    pub buffer: RawBuffer,
    pub upstream: RawUpstream,
    pub admin: RawAdmin,
    pub ingest: RawIngest,
    pub alarm: Vec<RawAlarm>,
    pub sink: Vec<RawSink>,
    pub modbus: Vec<RawModbus>,
    pub window_max_series: Option<usize>,
    pub window: Vec<crate::window::RawWindow>,
    pub deadband: Vec<crate::window::RawDeadband>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct RawMqtt {
    pub mode: Option<MqttMode>,
    pub url: Option<String>,
    pub client_id: Option<String>,
    pub username: Option<String>,
    pub password_env: Option<String>,
    pub ca_file: Option<PathBuf>,
    pub client_cert_file: Option<PathBuf>,
    pub client_key_file: Option<PathBuf>,
    pub alpn: Option<Vec<String>>,
    pub embedded_listen: Option<String>,
    pub embedded_username: Option<String>,
    pub embedded_password_env: Option<String>,
    pub embedded_allow_anonymous: Option<bool>,
    pub embedded_max_connections: Option<usize>,
    pub topics: Option<Vec<String>>,
    pub topic_templates: Option<Vec<String>>,
    pub max_inflight: Option<u16>,
    pub max_payload_bytes: Option<usize>,
    pub max_packet_bytes: Option<usize>,
    pub keep_alive_s: Option<u16>,
    pub reconnect_max_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct RawSerial {
    pub port: Option<PathBuf>,
    pub baud: Option<u32>,
    pub device: Option<String>,
    pub max_line_bytes: Option<usize>,
    pub reopen_max_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct RawBuffer {
    pub max_bytes: Option<u64>,
    pub when_full: Option<WhenFull>,
    pub max_age_s: Option<u64>,
    pub alarm_max_bytes: Option<u64>,
    pub commit_interval_ms: Option<u64>,
    pub commit_max_records: Option<usize>,
    pub commit_stretch_ms: Option<u64>,
    pub cache_capacity_bytes: Option<u64>,
    pub dead_letter_max_bytes: Option<u64>,
    pub refused_dead_letter_max_bytes: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct RawUpstream {
    pub url: Option<String>,
    pub bearer_token_env: Option<String>,
    pub ca_file: Option<PathBuf>,
    pub client_cert_file: Option<PathBuf>,
    pub client_key_file: Option<PathBuf>,
    pub batch_max_records: Option<usize>,
    pub batch_max_bytes: Option<usize>,
    pub linger_ms: Option<u64>,
    pub compression: Option<Compression>,
    pub timeout_ms: Option<u64>,
    pub retry_initial_ms: Option<u64>,
    pub retry_max_ms: Option<u64>,
    pub max_in_flight: Option<usize>,
    pub retry_on_status: Option<Vec<u16>>,
    pub retry_on_5xx: Option<bool>,
}

impl RawUpstream {
    pub fn forwarding(&self) -> RawForwarding {
        RawForwarding {
            batch_max_records: self.batch_max_records,
            batch_max_bytes: self.batch_max_bytes,
            linger_ms: self.linger_ms,
            timeout_ms: self.timeout_ms,
            retry_initial_ms: self.retry_initial_ms,
            retry_max_ms: self.retry_max_ms,
            max_in_flight: self.max_in_flight,
        }
    }
}

/// The forwarding keys every sink has (`[upstream]` and each `[[sink]]`), as written; not read
/// by serde itself (serde's `flatten` does not combine with `deny_unknown_fields`), but copied
/// out of the section that holds them so one function checks them for every sink.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RawForwarding {
    pub batch_max_records: Option<usize>,
    pub batch_max_bytes: Option<usize>,
    pub linger_ms: Option<u64>,
    pub timeout_ms: Option<u64>,
    pub retry_initial_ms: Option<u64>,
    pub retry_max_ms: Option<u64>,
    pub max_in_flight: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct RawAdmin {
    pub listen: Option<String>,
    pub token_env: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct RawIngest {
    pub max_id_bytes: Option<usize>,
    pub max_future_ts_s: Option<u64>,
    pub max_past_ts_s: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct RawAlarm {
    pub name: Option<String>,
    pub device: Option<String>,
    pub metric: Option<String>,
    pub above: Option<f64>,
    pub below: Option<f64>,
    pub clear_below: Option<f64>,
    pub clear_above: Option<f64>,
    pub for_s: Option<u64>,
    pub clear_for_s: Option<u64>,
    pub rate_above_per_s: Option<f64>,
    pub no_data_s: Option<u64>,
    pub severity: Option<Severity>,
}

/// One `[[sink]]` table. It holds the keys of every kind (those of one kind only are listed in
/// [`MQTT_ONLY_SINK_KEYS`] and [`KAFKA_ONLY_SINK_KEYS`] and refused in a table of the other
/// kind); `kind` stays a string so that an unsupported kind gets its own message rather than
/// serde's. The field order is the order an unknown-key error lists them in.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct RawSink {
    pub name: Option<String>,
    pub kind: Option<String>,
    pub url: Option<String>,
    pub brokers: Option<Vec<String>>,
    pub client_id: Option<String>,
    pub tls: Option<bool>,
    pub ca_file: Option<PathBuf>,
    pub client_cert_file: Option<PathBuf>,
    pub client_key_file: Option<PathBuf>,
    pub topic: Option<String>,
    pub alarm_topic: Option<String>,
    pub lanes: Option<Vec<SinkLane>>,
    pub compression: Option<KafkaCompression>,
    pub sasl_mechanism: Option<SaslMechanism>,
    pub username: Option<String>,
    pub password_env: Option<String>,
    pub keep_alive_s: Option<u16>,
    pub timeout_ms: Option<u64>,
    pub max_message_bytes: Option<usize>,
    pub batch_max_records: Option<usize>,
    pub batch_max_bytes: Option<usize>,
    pub linger_ms: Option<u64>,
    pub retry_initial_ms: Option<u64>,
    pub retry_max_ms: Option<u64>,
    pub max_in_flight: Option<usize>,
}

/// Keys of a `[[sink]]` table that only a `kind = "mqtt"` sink has.
pub(crate) const MQTT_ONLY_SINK_KEYS: &[&str] = &["url", "keep_alive_s", "max_message_bytes"];
/// Keys of a `[[sink]]` table that only a `kind = "kafka"` sink has.
pub(crate) const KAFKA_ONLY_SINK_KEYS: &[&str] = &[
    "brokers",
    "tls",
    "alarm_topic",
    "compression",
    "sasl_mechanism",
];

impl RawSink {
    /// Whether `key`, one of [`MQTT_ONLY_SINK_KEYS`] or [`KAFKA_ONLY_SINK_KEYS`], is written.
    pub fn kind_key_written(&self, key: &str) -> bool {
        match key {
            "url" => self.url.is_some(),
            "keep_alive_s" => self.keep_alive_s.is_some(),
            "max_message_bytes" => self.max_message_bytes.is_some(),
            "brokers" => self.brokers.is_some(),
            "tls" => self.tls.is_some(),
            "alarm_topic" => self.alarm_topic.is_some(),
            "compression" => self.compression.is_some(),
            "sasl_mechanism" => self.sasl_mechanism.is_some(),
            _ => false,
        }
    }

    pub fn forwarding(&self) -> RawForwarding {
        RawForwarding {
            batch_max_records: self.batch_max_records,
            batch_max_bytes: self.batch_max_bytes,
            linger_ms: self.linger_ms,
            timeout_ms: self.timeout_ms,
            retry_initial_ms: self.retry_initial_ms,
            retry_max_ms: self.retry_max_ms,
            max_in_flight: self.max_in_flight,
        }
    }
}

/// One `[[modbus]]` table: a slave to poll.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct RawModbus {
    pub device: Option<String>,
    pub url: Option<String>,
    pub baud: Option<u32>,
    pub parity: Option<Parity>,
    pub stop_bits: Option<u8>,
    pub unit_id: Option<u8>,
    pub poll_ms: Option<u64>,
    pub timeout_ms: Option<u64>,
    pub backoff_max_ms: Option<u64>,
    pub register: Vec<RawRegister>,
}

/// One `[[modbus.register]]` table.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct RawRegister {
    pub metric: Option<String>,
    pub kind: Option<RegisterKind>,
    pub address: Option<u16>,
    pub r#type: Option<DataType>,
    pub word_order: Option<WordOrder>,
    pub scale: Option<f64>,
    pub offset: Option<f64>,
    pub unit: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_of_one_kind_of_sink_is_seen_when_written() {
        let sink: RawSink = toml::from_str(
            "url = \"mqtt://b\"\nkeep_alive_s = 5\nmax_message_bytes = 1024\n\
             brokers = [\"b:9092\"]\ntls = false\nalarm_topic = \"a\"\n\
             compression = \"none\"\nsasl_mechanism = \"PLAIN\"\n",
        )
        .unwrap();
        for key in MQTT_ONLY_SINK_KEYS.iter().chain(KAFKA_ONLY_SINK_KEYS) {
            assert!(sink.kind_key_written(key), "{key}");
            assert!(!RawSink::default().kind_key_written(key), "{key}");
        }
    }
}
