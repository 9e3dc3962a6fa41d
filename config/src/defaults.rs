//! The default of every key, in one place, so the docs, the shipped example config and the code
//! cannot drift apart (a test parses the example and compares it with these).

/// `gateway_id`.
pub const GATEWAY_ID: &str = "gateway";
/// `data_dir`, relative to the working directory of the process.
pub const DATA_DIR: &str = "./data";
/// `data_dir_mode`: the data directory is the owner's alone; files in it get this mode without
/// the execute bits (0600).
pub const DATA_DIR_MODE: u32 = 0o700;
/// `shutdown_grace_s`: seconds to flush and ack after SIGTERM before giving up.
pub const SHUTDOWN_GRACE_S: u64 = 10;
/// `alarm_max_series`: rule × device × metric states the alarm engine tracks at most.
pub const ALARM_MAX_SERIES: usize = 100_000;

/// `window_max_series`, `window[]` and `deadband[]` defaults (kept beside their section).
pub use crate::window::{
    DEADBAND_MAX_INTERVAL_S, REDUCE_DEVICE_GLOB, WINDOW_EMIT, WINDOW_MAX_S, WINDOW_MAX_SERIES,
    WINDOW_S,
};

/// `mqtt.url` when it is not written (only used in external mode).
pub const MQTT_URL: &str = "mqtt://127.0.0.1:1883";
/// Port of an `mqtt://` URL that names none.
pub const MQTT_PORT: u16 = 1883;
/// Port of an `mqtts://` URL that names none.
pub const MQTTS_PORT: u16 = 8883;
/// `mqtt.embedded_listen`.
pub const MQTT_EMBEDDED_LISTEN: &str = "127.0.0.1:1883";
/// `mqtt.embedded_max_connections`: clients the embedded broker accepts at once.
pub const MQTT_EMBEDDED_MAX_CONNECTIONS: usize = 1000;
/// `mqtt.topics`.
pub const MQTT_TOPICS: &[&str] = &["sensors/#"];
/// `mqtt.topic_templates`.
pub const MQTT_TOPIC_TEMPLATES: &[&str] = &["sensors/{device}/{metric}", "sensors/{device}"];
/// `mqtt.max_inflight`: QoS 1 messages the broker may have in flight to us.
pub const MQTT_MAX_INFLIGHT: u16 = 100;
/// `mqtt.max_payload_bytes`.
pub const MQTT_MAX_PAYLOAD_BYTES: usize = 65_536;
/// `mqtt.max_packet_bytes` (1 MiB): set mosquitto's `max_packet_size` to the same value.
pub const MQTT_MAX_PACKET_BYTES: usize = 1024 * 1024;
/// `mqtt.keep_alive_s`.
pub const MQTT_KEEP_ALIVE_S: u16 = 30;
/// `mqtt.reconnect_max_ms`.
pub const MQTT_RECONNECT_MAX_MS: u64 = 30_000;

/// `serial[].baud`.
pub const SERIAL_BAUD: u32 = 115_200;
/// `serial[].max_line_bytes` (WIRE.md §2: at most 1024 bytes per line).
pub const SERIAL_MAX_LINE_BYTES: usize = 1024;
/// `serial[].reopen_max_ms`.
pub const SERIAL_REOPEN_MAX_MS: u64 = 30_000;

/// `buffer.max_bytes` (256 MiB).
pub const BUFFER_MAX_BYTES: u64 = 256 * 1024 * 1024;
/// `buffer.max_age_s` (7 days).
pub const BUFFER_MAX_AGE_S: u64 = 7 * 24 * 3600;
/// `buffer.alarm_max_bytes` (16 MiB).
pub const BUFFER_ALARM_MAX_BYTES: u64 = 16 * 1024 * 1024;
/// `buffer.commit_interval_ms`.
pub const BUFFER_COMMIT_INTERVAL_MS: u64 = 5;
/// `buffer.commit_stretch_ms`: PUBACKs at a trickle wait at most this long for company.
pub const BUFFER_COMMIT_STRETCH_MS: u64 = 50;
/// Largest `buffer.commit_stretch_ms`: a PUBACK held longer than a second looks like a broken
/// gateway to a device, and saves next to nothing more.
pub const BUFFER_COMMIT_STRETCH_MAX_MS: u64 = 1000;
/// `buffer.commit_max_records`.
pub const BUFFER_COMMIT_MAX_RECORDS: usize = 1000;
/// `buffer.cache_capacity_bytes` (8 MiB).
pub const BUFFER_CACHE_CAPACITY_BYTES: u64 = 8 * 1024 * 1024;
/// `buffer.dead_letter_max_bytes` (16 MiB).
pub const BUFFER_DEAD_LETTER_MAX_BYTES: u64 = 16 * 1024 * 1024;
/// `buffer.refused_dead_letter_max_bytes` (16 MiB).
pub const BUFFER_REFUSED_DEAD_LETTER_MAX_BYTES: u64 = 16 * 1024 * 1024;

/// `upstream.url`.
pub const UPSTREAM_URL: &str = "http://127.0.0.1:8080/ingest";
/// `upstream.batch_max_records`.
pub const UPSTREAM_BATCH_MAX_RECORDS: usize = 500;
/// `upstream.batch_max_bytes`.
pub const UPSTREAM_BATCH_MAX_BYTES: usize = 262_144;
/// `upstream.linger_ms`.
pub const UPSTREAM_LINGER_MS: u64 = 1000;
/// `upstream.timeout_ms`.
pub const UPSTREAM_TIMEOUT_MS: u64 = 10_000;
/// `upstream.retry_initial_ms`.
pub const UPSTREAM_RETRY_INITIAL_MS: u64 = 200;
/// `upstream.retry_max_ms`.
pub const UPSTREAM_RETRY_MAX_MS: u64 = 60_000;
/// `upstream.max_in_flight`: the cap; the forwarder adapts between 1 and it.
pub const UPSTREAM_MAX_IN_FLIGHT: usize = 16;
/// `upstream.retry_on_status` (WIRE.md §3: 408 and 429; 5xx via `retry_on_5xx`).
pub const UPSTREAM_RETRY_ON_STATUS: &[u16] = &[408, 429];
/// `upstream.retry_on_5xx`.
pub const UPSTREAM_RETRY_ON_5XX: bool = true;

/// `ingest.max_id_bytes` (WIRE.md §1).
pub const INGEST_MAX_ID_BYTES: usize = 128;
/// `ingest.max_future_ts_s` (WIRE.md §1).
pub const INGEST_MAX_FUTURE_TS_S: u64 = 300;
/// `ingest.max_past_ts_s`: 0, no lower bound (devices replay old data).
pub const INGEST_MAX_PAST_TS_S: u64 = 0;
/// Largest accepted `ingest.max_id_bytes`: an id is one MQTT topic level of the local alarm
/// topic, and MQTT strings are at most 65535 bytes.
pub const INGEST_MAX_ID_BYTES_LIMIT: usize = 65_535;

/// `admin.listen`.
pub const ADMIN_LISTEN: &str = "127.0.0.1:9100";

/// `alarm[].device` and `alarm[].metric`: every device / every metric.
pub const ALARM_GLOB: &str = "*";
/// `alarm[].for_s` and `alarm[].clear_for_s`.
pub const ALARM_FOR_S: u64 = 0;

/// `upstream.*` forwarding keys, as one value (see [`crate::ForwardingConfig`]).
pub const UPSTREAM_FORWARDING: crate::ForwardingConfig = crate::ForwardingConfig {
    batch_max_records: UPSTREAM_BATCH_MAX_RECORDS,
    batch_max_bytes: UPSTREAM_BATCH_MAX_BYTES,
    linger_ms: UPSTREAM_LINGER_MS,
    timeout_ms: UPSTREAM_TIMEOUT_MS,
    retry_initial_ms: UPSTREAM_RETRY_INITIAL_MS,
    retry_max_ms: UPSTREAM_RETRY_MAX_MS,
    max_in_flight: UPSTREAM_MAX_IN_FLIGHT,
};

/// The `sink[].kind` values this build supports.
pub const SINK_KINDS: &[&str] = &["mqtt", "kafka"];
/// Longest `sink[].name`, in bytes: it is a buffer consumer name and a Prometheus label value.
pub const SINK_NAME_MAX_BYTES: usize = 32;
/// `sink[].name` values taken by the gateway's own buffer consumers: `"upstream"` is the
/// `[upstream]` HTTP sink (`gateway_forwarder::CONSUMER`), `"local-alarms"` the local alarm
/// publisher (`gateway::sinks::local_alarms::CONSUMER`).
pub const SINK_RESERVED_NAMES: &[&str] = &["upstream", "local-alarms"];
/// `sink[].lanes`: both lanes.
pub const SINK_LANES: &[&str] = &["readings", "alarms"];

/// Longest `sink[].client_id` of an MQTT sink, in bytes (AWS IoT Core's limit).
pub const MQTT_SINK_CLIENT_ID_MAX_BYTES: usize = 128;
/// `sink[].keep_alive_s` of an MQTT sink.
pub const MQTT_SINK_KEEP_ALIVE_S: u16 = 30;
/// Smallest `sink[].keep_alive_s` of an MQTT sink.
pub const MQTT_SINK_KEEP_ALIVE_MIN_S: u16 = 5;
/// Largest `sink[].keep_alive_s` of an MQTT sink (one hour).
pub const MQTT_SINK_KEEP_ALIVE_MAX_S: u16 = 3600;
/// `sink[].max_message_bytes` of an MQTT sink (128 KiB): AWS IoT Core's message size limit.
pub const MQTT_SINK_MAX_MESSAGE_BYTES: usize = 131_072;
/// Smallest `sink[].max_message_bytes` of an MQTT sink.
pub const MQTT_SINK_MAX_MESSAGE_BYTES_MIN: usize = 1024;
/// Largest `sink[].max_message_bytes` of an MQTT sink: the largest MQTT packet there is
/// (256 MiB - 1, the 4-byte remaining-length limit).
pub const MQTT_SINK_MAX_MESSAGE_BYTES_LIMIT: usize = 268_435_455;
/// The forwarding keys of an MQTT sink (`sink[].batch_max_records` …): as `[upstream]`, but a
/// batch of at most 128 KiB, AWS IoT Core's message size limit, and `timeout_ms` is the wait for
/// the broker's PUBACK.
pub const MQTT_SINK_FORWARDING: crate::ForwardingConfig = crate::ForwardingConfig {
    batch_max_bytes: MQTT_SINK_MAX_MESSAGE_BYTES,
    ..UPSTREAM_FORWARDING
};

/// `sink[].compression` of a Kafka sink.
pub const KAFKA_SINK_COMPRESSION: crate::KafkaCompression = crate::KafkaCompression::None;
/// Longest `sink[].client_id` of a Kafka sink, in bytes.
pub const KAFKA_SINK_CLIENT_ID_MAX_BYTES: usize = 255;
/// Prefix of the default `sink[].client_id` of a Kafka sink, followed by the `gateway_id`.
pub const KAFKA_SINK_CLIENT_ID_PREFIX: &str = "gateway-";
/// The forwarding keys of a Kafka sink (`sink[].batch_max_records` …): batches of up to 5000
/// records and 4 MiB (the sink cuts each partition's share into produce requests under the
/// broker's default `message.max.bytes`; with one batch in flight, batches of 1000 left the sink
/// at 0.12× rskafka's own producer in `kafka_bench`, 5000 at 1.4×), a 200 ms linger (Kafka
/// batches cheaply, a short wait fills them), `timeout_ms` the wait for the acks=all answer,
/// and `max_in_flight` 1, the only value a Kafka sink accepts: the sink has no idempotent
/// producer, so one batch at a time is what keeps each device's records in `seq` order in its
/// partition when a batch is retried.
pub const KAFKA_SINK_FORWARDING: crate::ForwardingConfig = crate::ForwardingConfig {
    batch_max_records: 5000,
    batch_max_bytes: 4_194_304,
    linger_ms: 200,
    timeout_ms: 10_000,
    retry_initial_ms: 200,
    retry_max_ms: 60_000,
    max_in_flight: 1,
};

/// `modbus[].url` port of a `tcp://` URL that names none.
pub const MODBUS_TCP_PORT: u16 = 502;
/// `modbus[].baud` of an RTU line.
pub const MODBUS_BAUD: u32 = 9600;
/// `modbus[].stop_bits` of an RTU line.
pub const MODBUS_STOP_BITS: u8 = 1;
/// `modbus[].unit_id`.
pub const MODBUS_UNIT_ID: u8 = 1;
/// `modbus[].poll_ms`.
pub const MODBUS_POLL_MS: u64 = 1000;
/// `modbus[].timeout_ms`.
pub const MODBUS_TIMEOUT_MS: u64 = 500;
/// `modbus[].backoff_max_ms`.
pub const MODBUS_BACKOFF_MAX_MS: u64 = 30_000;
/// `modbus[].register[].scale`.
pub const MODBUS_SCALE: f64 = 1.0;
/// `modbus[].register[].offset`.
pub const MODBUS_OFFSET: f64 = 0.0;
/// Longest `modbus[].register[].unit`, in bytes.
pub const MODBUS_UNIT_MAX_BYTES: usize = 32;
