//! The validated configuration: what the rest of the gateway codes against.
//!
//! Every value here has passed validation, every default is filled in and every `*_env` secret is
//! resolved. Field names are the TOML key names; units are in the names.

use globset::{GlobBuilder, GlobMatcher};
use serde::Deserialize;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use url::Url;

pub use gateway_buffer::{Severity, WhenFull};

use crate::retry::RetryPolicy;
use crate::secret::Secret;
use crate::tls::{TlsClient, TlsError, TlsFiles};

/// The whole gateway configuration. Build it with [`Config::load`], [`Config::parse`] or
/// [`Config::default`]; all three return a validated value.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Name of this gateway, sent in every upstream batch, in the `Idempotency-Key` and in every
    /// alarm event. Non-empty, at most 128 bytes, no whitespace, control characters, `:`, `/`,
    /// `+` or `#`. Default `"gateway"`.
    pub gateway_id: String,
    /// Directory of the sled buffer, alarm state and dead letters; a relative path is relative to
    /// the working directory. Default `"./data"`.
    pub data_dir: PathBuf,
    /// Permission bits the gateway gives `data_dir` when it creates or opens it; files created in
    /// it get the same bits less execute (the process umask is set from it). Must include
    /// 0700 (the gateway reads and writes there) and nothing beyond 0777. Written in octal,
    /// `data_dir_mode = 0o750`. Default 0o700: data and dead letters (which hold whatever devices
    /// sent) are the service user's alone.
    pub data_dir_mode: u32,
    /// Seconds the gateway may spend flushing and acking after SIGTERM/SIGINT before it exits
    /// anyway. Default 10.
    pub shutdown_grace_s: u64,
    /// Most rule × device × metric states the alarm engine tracks; bounds memory when devices
    /// churn. Positive. Default 100000.
    pub alarm_max_series: usize,
    /// `[mqtt]`: MQTT ingest.
    pub mqtt: MqttConfig,
    /// `[[serial]]`: serial ports to read, one entry per port. Default: none.
    pub serial: Vec<SerialConfig>,
    /// `[buffer]`: the durable on-disk buffer.
    pub buffer: BufferConfig,
    /// `[upstream]`: the HTTP endpoint batches are sent to.
    pub upstream: UpstreamConfig,
    /// `[admin]`: the local admin HTTP server.
    pub admin: AdminConfig,
    /// `[ingest]`: rules every reading must pass, whichever source it came from.
    pub ingest: IngestConfig,
    /// `[[alarm]]`: alarm rules, in file order. Default: none.
    pub alarm: Vec<AlarmRule>,
    /// `[[sink]]`: ways out besides `[upstream]`, in file order, each its own forwarder and
    /// buffer consumer (named by [`SinkConfig::name`]). Default: none. (Plural, unlike the TOML
    /// table name: one `[[sink]]` table is one sink.)
    pub sinks: Vec<SinkConfig>,
    /// `[[modbus]]`: Modbus slaves to poll, in file order. Default: none.
    pub modbus: Vec<ModbusConfig>,
    /// Most series (device × metric) the `[[window]]` and `[[deadband]]` rules track together;
    /// the readings of a series refused beyond it go upstream unreduced (counted). Positive.
    /// Default 100000.
    pub window_max_series: usize,
    /// `[[window]]`: tumbling-window aggregation, in file order. Default: none.
    pub window: Vec<crate::window::WindowRule>,
    /// `[[deadband]]`: report by exception, in file order. Default: none.
    pub deadband: Vec<crate::window::DeadbandRule>,
}

/// Where MQTT readings come from (`mqtt.mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MqttMode {
    /// `"embedded"`: run the built-in broker on `embedded_listen`; devices connect to it.
    Embedded,
    /// `"external"`: connect to the broker at `url`.
    External,
    /// `"disabled"` (project extension): no MQTT source at all; serial ports only.
    Disabled,
}

/// `[mqtt]`: MQTT ingest.
#[derive(Debug, Clone, PartialEq)]
pub struct MqttConfig {
    /// `"embedded"`, `"external"` or `"disabled"`. Default: `"external"` when `url` is written,
    /// else `"embedded"`.
    pub mode: MqttMode,
    /// Broker to connect to in external mode: `mqtt://host[:port]` (plain, port 1883 by default)
    /// or `mqtts://host[:port]` (TLS, port 8883 by default). No credentials in the URL.
    /// Default `"mqtt://127.0.0.1:1883"`. See [`MqttConfig::broker_host`].
    pub url: Url,
    /// MQTT client id of our persistent session (the broker keeps QoS 1 messages for it while we
    /// are away). Non-empty. Default: `gateway_id`.
    pub client_id: String,
    /// Username sent to the broker. Default: none.
    pub username: Option<String>,
    /// Name of the environment variable holding the broker password. Requires `username`.
    /// Default: none.
    pub password_env: Option<String>,
    /// The password read from `password_env` at load time. `Some` exactly when `password_env` is.
    pub password: Option<Secret>,
    /// PEM file of the CA certificates trusted for the broker (`mqtts://` only); replaces the
    /// platform's roots. Default: the platform's roots (see [`crate::tls`]).
    pub ca_file: Option<PathBuf>,
    /// PEM certificate chain presented to the broker (`mqtts://` only), e.g. for AWS IoT Core or
    /// Azure IoT Hub. Requires `client_key_file`. Default: none.
    pub client_cert_file: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 RSA or SEC1 EC) of `client_cert_file`; must match it.
    /// Default: none.
    pub client_key_file: Option<PathBuf>,
    /// ALPN protocol names offered to the broker (`mqtts://` only), e.g. `["x-amzn-mqtt-ca"]` for
    /// AWS IoT Core on port 443. Default: none.
    pub alpn: Vec<String>,
    /// The TLS client built and checked from the keys above: `Some` exactly when the gateway
    /// connects to an external broker over `mqtts://`. Never plaintext for `mqtts://`.
    pub tls: Option<TlsClient>,
    /// Embedded mode: socket address the built-in broker listens on. Default `127.0.0.1:1883`.
    /// An address other than loopback needs `embedded_username` (or
    /// `embedded_allow_anonymous = true`).
    pub embedded_listen: SocketAddr,
    /// Embedded mode: the username every client of the built-in broker must present (devices and
    /// the gateway itself). Default: none (no authentication; loopback only).
    pub embedded_username: Option<String>,
    /// Name of the environment variable holding the embedded broker's password. Requires
    /// `embedded_username`. Default: none.
    pub embedded_password_env: Option<String>,
    /// The password read from `embedded_password_env`.
    pub embedded_password: Option<Secret>,
    /// Embedded mode: accept clients without credentials on a non-loopback `embedded_listen`
    /// (a trusted, isolated network). Default `false`.
    pub embedded_allow_anonymous: bool,
    /// Embedded mode: most clients connected at once. Positive. Default 1000.
    pub embedded_max_connections: usize,
    /// Topic filters subscribed with QoS 1 (`+` and `#` wildcards allowed as whole levels).
    /// At least one unless disabled. Default `["sensors/#"]`.
    pub topics: Vec<String>,
    /// How device and metric are read from a topic, tried in order; a topic no template matches is
    /// rejected and counted. Default `["sensors/{device}/{metric}", "sensors/{device}"]`.
    pub topic_templates: Vec<TopicTemplate>,
    /// QoS 1 messages the broker may have in flight to us before it waits for acks (MQTT receive
    /// maximum). 1..=65535. Default 100.
    pub max_inflight: u16,
    /// Largest payload accepted, in bytes; bigger ones are dead-lettered. Positive. Default 65536.
    pub max_payload_bytes: usize,
    /// Largest MQTT packet (topic, header and payload) the gateway reads from its broker, in
    /// bytes. Set the broker's limit (mosquitto `max_packet_size`) to this value or less, so every
    /// message the broker accepts reaches the gateway and one over `max_payload_bytes` is
    /// dead-lettered and acknowledged rather than dropping the connection. Greater than
    /// `max_payload_bytes`. Default 1048576 (1 MiB).
    pub max_packet_bytes: usize,
    /// MQTT keep-alive interval in seconds; 0 turns keep-alive off. Default 30.
    pub keep_alive_s: u16,
    /// Ceiling of the reconnect backoff, in milliseconds. Positive. Default 30000.
    pub reconnect_max_ms: u64,
}

impl MqttConfig {
    /// The TLS keys of `[mqtt]` as written.
    pub fn tls_files(&self) -> TlsFiles {
        TlsFiles {
            ca_file: self.ca_file.clone(),
            client_cert_file: self.client_cert_file.clone(),
            client_key_file: self.client_key_file.clone(),
            alpn: self.alpn.clone(),
        }
    }

    /// The TLS client for [`MqttConfig::url`]: `None` for `mqtt://`; for `mqtts://` the one
    /// checked at load, or, in a config changed in code since, one built from its TLS keys now.
    /// Never `None` for `mqtts://`.
    pub fn tls_client(&self) -> Result<Option<TlsClient>, TlsError> {
        tls_client(self.uses_tls(), &self.tls, || self.tls_files())
    }

    /// Host of [`MqttConfig::url`].
    pub fn broker_host(&self) -> &str {
        // Validation rejects a URL without a host, so the fallback is never used.
        self.url.host_str().unwrap_or_default()
    }

    /// Port of [`MqttConfig::url`], or 1883 (`mqtt://`) / 8883 (`mqtts://`) when it names none.
    pub fn broker_port(&self) -> u16 {
        mqtt_port(&self.url)
    }

    /// Whether [`MqttConfig::url`] is `mqtts://`.
    pub fn uses_tls(&self) -> bool {
        self.url.scheme() == "mqtts"
    }
}

/// One entry of `mqtt.topic_templates`, checked: levels separated by `/`, `{device}` exactly
/// once, `{metric}` at most once, each placeholder a whole level, no wildcards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicTemplate {
    template: String,
}

/// Device and metric read from a topic by a [`TopicTemplate`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopicMatch<'t> {
    /// The level that matched `{device}`.
    pub device: &'t str,
    /// The level that matched `{metric}`; `None` when the template has no `{metric}` (the payload
    /// then names its metrics).
    pub metric: Option<&'t str>,
}

impl TopicTemplate {
    /// Checks one template; the error says what is wrong, without key or line. (A loaded config
    /// has its templates checked already; this is for templates made in code.)
    pub fn new(template: &str) -> Result<Self, String> {
        if template.is_empty() {
            return Err("a topic template must not be empty".into());
        }
        let (mut devices, mut metrics) = (0, 0);
        for level in template.split('/') {
            match level {
                "{device}" => devices += 1,
                "{metric}" => metrics += 1,
                _ if level.contains(['{', '}']) => {
                    return Err(format!(
                        "level \"{level}\" of \"{template}\": the only placeholders are \
                         {{device}} and {{metric}}, each a whole level"
                    ));
                }
                _ if level.contains(['+', '#']) => {
                    return Err(format!(
                        "\"{template}\" contains a wildcard; templates name levels with \
                         {{device}} and {{metric}}, wildcards belong in mqtt.topics"
                    ));
                }
                _ => {}
            }
        }
        if devices != 1 {
            return Err(format!(
                "\"{template}\" must contain {{device}} exactly once (found {devices} times)"
            ));
        }
        if metrics > 1 {
            return Err(format!(
                "\"{template}\" must contain {{metric}} at most once (found {metrics} times)"
            ));
        }
        Ok(Self {
            template: template.to_owned(),
        })
    }

    /// The template as written.
    pub fn as_str(&self) -> &str {
        &self.template
    }

    /// Reads device and metric from `topic`, or `None` when the topic does not have this shape
    /// (different number of levels, a literal level differs, or a placeholder level is empty).
    pub fn match_topic<'t>(&self, topic: &'t str) -> Option<TopicMatch<'t>> {
        let mut device = None;
        let mut metric = None;
        let mut topic_levels = topic.split('/');
        for level in self.template.split('/') {
            let got = topic_levels.next()?;
            match level {
                "{device}" if !got.is_empty() => device = Some(got),
                "{metric}" if !got.is_empty() => metric = Some(got),
                "{device}" | "{metric}" => return None,
                literal if literal == got => {}
                _ => return None,
            }
        }
        if topic_levels.next().is_some() {
            return None;
        }
        Some(TopicMatch {
            device: device?,
            metric,
        })
    }
}

impl fmt::Display for TopicTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.template)
    }
}

/// The checked TLS client of a section, or one built from its keys when a config changed in code
/// lost it: a TLS URL never goes without TLS.
fn tls_client(
    uses_tls: bool,
    checked: &Option<TlsClient>,
    files: impl FnOnce() -> TlsFiles,
) -> Result<Option<TlsClient>, TlsError> {
    match (uses_tls, checked) {
        (false, _) => Ok(None),
        (true, Some(tls)) => Ok(Some(tls.clone())),
        (true, None) => TlsClient::load(files()).map(Some),
    }
}

/// `[[serial]]`: one serial port.
#[derive(Debug, Clone, PartialEq)]
pub struct SerialConfig {
    /// Device path of the port, e.g. `/dev/ttyUSB0`. Required; unique across entries.
    pub port: PathBuf,
    /// Line speed in baud. Positive. Default 115200.
    pub baud: u32,
    /// Device id for lines that carry none. Non-empty, no `/`, `+` or `#`. Default: the file
    /// name of `port` (`ttyUSB0`).
    pub device: String,
    /// Longest accepted line in bytes, terminator excluded; longer lines are counted and dropped.
    /// Positive. Default 1024.
    pub max_line_bytes: usize,
    /// Ceiling of the backoff between attempts to reopen a vanished port, in milliseconds.
    /// Positive. Default 30000.
    pub reopen_max_ms: u64,
}

/// `[buffer]`: the durable on-disk buffer.
#[derive(Debug, Clone, PartialEq)]
pub struct BufferConfig {
    /// Quota of the readings lane on disk, in bytes. Positive. Default 268435456 (256 MiB).
    pub max_bytes: u64,
    /// `"drop_oldest"` or `"block"`. Default `"drop_oldest"`.
    pub when_full: WhenFull,
    /// Readings older than this many seconds are expired (and counted). Positive. Default 604800
    /// (7 days).
    pub max_age_s: u64,
    /// Separate quota of the alarm lane, in bytes; readings never evict alarms. Positive. Default
    /// 16777216 (16 MiB).
    pub alarm_max_bytes: u64,
    /// Group-commit window in milliseconds: appends within it share one fsync, then are acked.
    /// Positive. Default 5.
    pub commit_interval_ms: u64,
    /// A group commit happens early once this many records wait. Positive. Default 1000.
    pub commit_max_records: usize,
    /// At a trickle (a stretched group would hold at most 16 records) the group-commit window
    /// stretches to this many ms, so messages that arrive spread out share an fsync; never for
    /// alarms. 0 (or no more than `commit_interval_ms`) turns it off. At most 1000. Default 50.
    pub commit_stretch_ms: u64,
    /// sled page cache, in bytes. Positive. Default 8388608 (8 MiB).
    pub cache_capacity_bytes: u64,
    /// Quota of the dead letters of rejected input (unreadable payloads, bad ids, timestamps
    /// or values, undecodable buffer blocks), in bytes; the oldest such letters go first.
    /// Positive. Default 16777216 (16 MiB).
    pub dead_letter_max_bytes: u64,
    /// Quota of the dead letters of batches the upstream refused (a non-retryable 4xx; what
    /// `gateway dead-letters replay` sends again), in bytes, apart from rejected input so a
    /// flood of junk never evicts them; the oldest such letters go first. Positive. Default
    /// 16777216 (16 MiB).
    pub refused_dead_letter_max_bytes: u64,
}

/// Body compression of upstream batches; the forwarder's HTTP sink takes it as is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Compression {
    /// `"gzip"`: gzip the body and send `Content-Encoding: gzip`.
    Gzip,
    /// `"none"`: send the JSON as is.
    None,
}

/// `[upstream]`: the HTTP endpoint batches are sent to. `Debug` shows the URL as
/// [`crate::redact_url`] does (its query may carry an API key).
#[derive(Clone, PartialEq)]
pub struct UpstreamConfig {
    /// Endpoint batches are POSTed to; `http://` or `https://`, no credentials in the URL.
    /// Default `"http://127.0.0.1:8080/ingest"`.
    pub url: Url,
    /// Name of the environment variable holding the bearer token. Default: none (no
    /// `Authorization` header).
    pub bearer_token_env: Option<String>,
    /// The token read from `bearer_token_env` at load time. `Some` exactly when
    /// `bearer_token_env` is.
    pub bearer_token: Option<Secret>,
    /// PEM file of the CA certificates trusted for the endpoint (`https://` only); replaces the
    /// platform's roots. Default: the platform's roots (see [`crate::tls`]).
    pub ca_file: Option<PathBuf>,
    /// PEM certificate chain presented to the endpoint (`https://` only). Requires
    /// `client_key_file`. Default: none.
    pub client_cert_file: Option<PathBuf>,
    /// PEM private key of `client_cert_file`; must match it. Default: none.
    pub client_key_file: Option<PathBuf>,
    /// The TLS client built and checked from the keys above: `Some` exactly when `url` is
    /// `https://`.
    pub tls: Option<TlsClient>,
    /// Most records in one batch. Positive. Default 500.
    pub batch_max_records: usize,
    /// Most bytes of uncompressed JSON body in one batch. Positive. Default 262144.
    pub batch_max_bytes: usize,
    /// Milliseconds a readings batch waits to fill; alarm batches never wait. Default 1000.
    pub linger_ms: u64,
    /// `"gzip"` or `"none"`. Default `"gzip"`.
    pub compression: Compression,
    /// Timeout of one attempt, in milliseconds. Positive. Default 10000.
    pub timeout_ms: u64,
    /// First retry backoff in milliseconds (exponential with full jitter up to `retry_max_ms`).
    /// Positive, at most `retry_max_ms`. Default 200.
    pub retry_initial_ms: u64,
    /// Ceiling of the retry backoff in milliseconds. Default 60000.
    pub retry_max_ms: u64,
    /// Cap on readings batches outstanding at once; the forwarder adapts between 1 and it
    /// (AIMD on latency and 429/5xx/timeouts). 1 keeps upstream order. Positive. Default 16.
    pub max_in_flight: usize,
    /// HTTP statuses (400..=599) that are retried besides timeouts and connection errors; any
    /// other non-2xx status dead-letters the batch. Default `[408, 429]`.
    pub retry_on_status: Vec<u16>,
    /// Whether every 5xx status is retried as well. Default `true`. Together with
    /// `retry_on_status` this gives WIRE.md §3: retry 408, 429 and 5xx.
    pub retry_on_5xx: bool,
}

impl fmt::Debug for UpstreamConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamConfig")
            .field("url", &crate::redact_url(&self.url))
            .field("bearer_token_env", &self.bearer_token_env)
            .field("bearer_token", &self.bearer_token)
            .field("ca_file", &self.ca_file)
            .field("client_cert_file", &self.client_cert_file)
            .field("client_key_file", &self.client_key_file)
            .field("tls", &self.tls)
            .field("batch_max_records", &self.batch_max_records)
            .field("batch_max_bytes", &self.batch_max_bytes)
            .field("linger_ms", &self.linger_ms)
            .field("compression", &self.compression)
            .field("timeout_ms", &self.timeout_ms)
            .field("retry_initial_ms", &self.retry_initial_ms)
            .field("retry_max_ms", &self.retry_max_ms)
            .field("max_in_flight", &self.max_in_flight)
            .field("retry_on_status", &self.retry_on_status)
            .field("retry_on_5xx", &self.retry_on_5xx)
            .finish()
    }
}

impl UpstreamConfig {
    /// The TLS keys of `[upstream]` as written.
    pub fn tls_files(&self) -> TlsFiles {
        TlsFiles {
            ca_file: self.ca_file.clone(),
            client_cert_file: self.client_cert_file.clone(),
            client_key_file: self.client_key_file.clone(),
            alpn: Vec::new(),
        }
    }

    /// The TLS client for [`UpstreamConfig::url`], as [`MqttConfig::tls_client`] for `https://`.
    pub fn tls_client(&self) -> Result<Option<TlsClient>, TlsError> {
        tls_client(self.url.scheme() == "https", &self.tls, || self.tls_files())
    }

    /// The forwarding keys of `[upstream]` as one value, the shape every [`SinkConfig`] has.
    pub fn forwarding(&self) -> ForwardingConfig {
        ForwardingConfig {
            batch_max_records: self.batch_max_records,
            batch_max_bytes: self.batch_max_bytes,
            linger_ms: self.linger_ms,
            timeout_ms: self.timeout_ms,
            retry_initial_ms: self.retry_initial_ms,
            retry_max_ms: self.retry_max_ms,
            max_in_flight: self.max_in_flight,
        }
    }

    /// Which answers are retried rather than dead-lettered: `retry_on_status` and
    /// `retry_on_5xx` as the forwarder applies them (plus 1xx and 3xx, never a verdict on a
    /// batch).
    pub fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy::new(self.retry_on_status.iter().copied(), self.retry_on_5xx)
    }
}

/// The forwarding settings every sink has: how its forwarder batches, paces and retries. Read
/// from the same keys in `[upstream]` ([`UpstreamConfig::forwarding`]) and in each `[[sink]]`
/// ([`SinkConfig::forwarding`]), checked by the same rules; only the defaults differ by section.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ForwardingConfig {
    /// `batch_max_records`: most records in one batch. Positive. Default 500 (5000 in a Kafka
    /// sink).
    pub batch_max_records: usize,
    /// `batch_max_bytes`: most bytes of (uncompressed) batch JSON in one batch. Positive.
    /// Default 262144 in `[upstream]`, 131072 (AWS IoT Core's message limit) in an MQTT sink,
    /// 4194304 in a Kafka sink.
    pub batch_max_bytes: usize,
    /// `linger_ms`: milliseconds a readings batch waits to fill; alarm batches never wait.
    /// Default 1000 (200 in a Kafka sink).
    pub linger_ms: u64,
    /// `timeout_ms`: milliseconds one attempt may take before it fails and is retried (HTTP: to
    /// the last byte of the response; MQTT: until the broker's PUBACK; Kafka: until the acks=all
    /// answer). Positive. Default 10000.
    pub timeout_ms: u64,
    /// `retry_initial_ms`: first retry backoff in milliseconds (exponential with full jitter up
    /// to `retry_max_ms`). Positive, at most `retry_max_ms`. Default 200.
    pub retry_initial_ms: u64,
    /// `retry_max_ms`: ceiling of the retry backoff in milliseconds. At least
    /// `retry_initial_ms`. Default 60000.
    pub retry_max_ms: u64,
    /// `max_in_flight`: cap on readings batches outstanding at once; the forwarder adapts
    /// between 1 and it. 1 keeps order. Positive. Default 16; a Kafka sink's is 1, the only
    /// value it accepts.
    pub max_in_flight: usize,
}

/// `[[sink]]`: one more way out of the buffer besides `[upstream]`. The gateway runs one
/// forwarder per sink, reading the buffer as consumer [`SinkConfig::name`].
#[derive(Debug, Clone, PartialEq)]
pub struct SinkConfig {
    /// `name`: the sink's buffer consumer name and its Prometheus label value. Required; unique
    /// among sinks; 1 to 32 bytes of `a-z`, `0-9`, `_` and `-`; not one of
    /// [`crate::defaults::SINK_RESERVED_NAMES`] (`"upstream"`, `"local-alarms"`).
    pub name: String,
    /// `lanes`: which lanes of the buffer this sink reads and delivers. A non-empty subset of
    /// `["readings", "alarms"]`, no duplicates. Default both.
    pub lanes: SinkLanes,
    /// `batch_max_records`, `batch_max_bytes`, `linger_ms`, `timeout_ms`, `retry_initial_ms`,
    /// `retry_max_ms` and `max_in_flight`: as in `[upstream]`, with the defaults of the kind
    /// ([`crate::defaults::MQTT_SINK_FORWARDING`], [`crate::defaults::KAFKA_SINK_FORWARDING`]).
    /// A Kafka sink's `max_in_flight` is always 1.
    pub forwarding: ForwardingConfig,
    /// `kind` and the keys of that kind.
    pub kind: SinkKind,
}

/// `sink[].kind` with the settings of that kind of sink.
#[derive(Debug, Clone, PartialEq)]
pub enum SinkKind {
    /// `kind = "mqtt"`: one QoS 1 message per batch, body = the batch JSON of WIRE.md §3,
    /// delivered when the remote broker acks it (AWS IoT Core, any MQTT 3.1.1 broker).
    Mqtt(MqttSinkConfig),
    /// `kind = "kafka"`: one Kafka record per reading or alarm event, key = the device id,
    /// value = its record JSON of WIRE.md §3, headers `gateway_id` and `seq`, timestamp = `ts`;
    /// delivered when Kafka acks it with acks=all (WIRE.md §4a).
    Kafka(KafkaSinkConfig),
}

impl SinkKind {
    /// The TOML spelling of the kind (`"mqtt"`, `"kafka"`).
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Mqtt(_) => "mqtt",
            Self::Kafka(_) => "kafka",
        }
    }
}

/// A lane of the buffer, as `sink[].lanes` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SinkLane {
    /// `"readings"`: sensor readings.
    Readings,
    /// `"alarms"`: alarm events.
    Alarms,
}

/// The buffer's lane of that name (the buffer's own type, which its stored encoding fixes).
impl From<SinkLane> for gateway_buffer::Lane {
    fn from(lane: SinkLane) -> Self {
        match lane {
            SinkLane::Readings => gateway_buffer::Lane::Readings,
            SinkLane::Alarms => gateway_buffer::Lane::Alarms,
        }
    }
}

/// The lanes a sink reads (`sink[].lanes`): at least one after validation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SinkLanes {
    /// Whether `"readings"` is listed.
    pub readings: bool,
    /// Whether `"alarms"` is listed.
    pub alarms: bool,
}

impl SinkLanes {
    /// Both lanes: the default.
    pub const ALL: SinkLanes = SinkLanes {
        readings: true,
        alarms: true,
    };

    /// Whether `lane` is one of them.
    pub fn contains(self, lane: SinkLane) -> bool {
        match lane {
            SinkLane::Readings => self.readings,
            SinkLane::Alarms => self.alarms,
        }
    }

    /// The lanes in the set, alarms first (the order the forwarder serves them).
    pub fn iter(self) -> impl Iterator<Item = SinkLane> {
        [SinkLane::Alarms, SinkLane::Readings]
            .into_iter()
            .filter(move |lane| self.contains(*lane))
    }
}

/// `sink[].topic` of an MQTT sink, checked: non-empty, only the placeholders `{gateway_id}` and
/// `{lane}` (anywhere, any number of times), no `+`, `#` or NUL; filled in with the config's
/// `gateway_id` and each configured lane it is at most 65535 bytes. Fill it in with
/// [`SinkTopic::fill`]. `Debug` and `Display` show the template.
#[derive(Clone, PartialEq, Eq)]
pub struct SinkTopic {
    template: String,
    /// The template cut at its placeholders, so filling it in cannot fail.
    parts: Vec<TopicPart>,
}

#[derive(Clone, PartialEq, Eq)]
enum TopicPart {
    Literal(String),
    GatewayId,
    Lane,
}

/// Longest MQTT topic, in bytes (an MQTT UTF-8 string).
const MQTT_TOPIC_MAX_BYTES: usize = 65_535;

impl SinkTopic {
    /// Checks one template; the error says what is wrong, without key or line.
    pub(crate) fn new(template: &str) -> Result<Self, String> {
        if template.is_empty() {
            return Err("must not be empty".into());
        }
        for wildcard in ['+', '#'] {
            if template.contains(wildcard) {
                return Err(format!(
                    "\"{template}\" contains '{wildcard}': a topic to publish to has no wildcards"
                ));
            }
        }
        if template.contains('\0') {
            return Err(format!(
                "{template:?} contains a NUL character, which no MQTT topic may"
            ));
        }
        let mut parts = Vec::new();
        let mut rest = template;
        while let Some(at) = rest.find(['{', '}']) {
            if rest[at..].starts_with('}') {
                return Err(format!(
                    "\"{template}\" has a '}}' without its '{{'; the placeholders are \
                     {{gateway_id}} and {{lane}}"
                ));
            }
            let Some(len) = rest[at..].find('}') else {
                return Err(format!(
                    "\"{template}\" has a '{{' without its '}}'; the placeholders are \
                     {{gateway_id}} and {{lane}}"
                ));
            };
            if at > 0 {
                parts.push(TopicPart::Literal(rest[..at].to_owned()));
            }
            parts.push(match &rest[at + 1..at + len] {
                "gateway_id" => TopicPart::GatewayId,
                "lane" => TopicPart::Lane,
                other => {
                    return Err(format!(
                        "unknown placeholder {{{other}}} in \"{template}\"; the only \
                         placeholders are {{gateway_id}} and {{lane}}"
                    ));
                }
            });
            rest = &rest[at + len + 1..];
        }
        if !rest.is_empty() {
            parts.push(TopicPart::Literal(rest.to_owned()));
        }
        Ok(Self {
            template: template.to_owned(),
            parts,
        })
    }

    /// The template as written.
    pub fn as_str(&self) -> &str {
        &self.template
    }

    /// The topic to publish `lane`'s batches of gateway `gateway_id` on: each placeholder
    /// replaced once, so a `gateway_id` that happens to contain `{lane}` stays as it is.
    pub fn fill(&self, gateway_id: &str, lane: SinkLane) -> String {
        let mut topic = String::with_capacity(self.template.len() + gateway_id.len());
        for part in &self.parts {
            topic.push_str(match part {
                TopicPart::Literal(text) => text,
                TopicPart::GatewayId => gateway_id,
                TopicPart::Lane => lane.as_str(),
            });
        }
        topic
    }

    /// Checks the topic [`SinkTopic::fill`] makes: not longer than an MQTT topic can be.
    pub(crate) fn check_filled(&self, gateway_id: &str, lane: SinkLane) -> Result<(), String> {
        let topic = self.fill(gateway_id, lane);
        if topic.len() > MQTT_TOPIC_MAX_BYTES {
            return Err(format!(
                "filled in for lane \"{lane}\" the topic is {} bytes; an MQTT topic has at most \
                 {MQTT_TOPIC_MAX_BYTES}",
                topic.len()
            ));
        }
        Ok(())
    }
}

impl fmt::Display for SinkTopic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.template)
    }
}

impl fmt::Debug for SinkTopic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.template)
    }
}

/// The keys of a `kind = "mqtt"` sink: a bridge to a cloud MQTT broker such as AWS IoT Core.
/// `Debug` shows the URL as [`crate::redact_url`] does and the password as `***`.
#[derive(Clone, PartialEq)]
pub struct MqttSinkConfig {
    /// `url`: the broker, `mqtt://host[:port]` (plain, port 1883 by default) or
    /// `mqtts://host[:port]` (always TLS, never plaintext; port 8883 by default). Nothing after
    /// the port: no path, query or credentials. Required. See [`MqttSinkConfig::broker_host`].
    pub url: Url,
    /// `client_id`: MQTT client id of the sink's session. Required; 1 to 128 bytes, no
    /// whitespace, control characters, `/`, `+` or `#`; not the client id of another sink (or of
    /// an external `[mqtt]`) on the same broker, which would take the session over.
    pub client_id: String,
    /// `username`: sent to the broker. Default: none.
    pub username: Option<String>,
    /// `password_env`: name of the environment variable holding the broker password. Requires
    /// `username`. Default: none.
    pub password_env: Option<String>,
    /// The password read from `password_env` at load time; `Some` exactly when `password_env`
    /// is. Prints as `***`.
    pub password: Option<Secret>,
    /// `ca_file`: PEM file of the CA certificates trusted for the broker (`mqtts://` only);
    /// replaces the platform's roots, e.g. `AmazonRootCA1.pem`. Default: the platform's roots.
    pub ca_file: Option<PathBuf>,
    /// `client_cert_file`: PEM certificate chain presented to the broker (`mqtts://` only), e.g.
    /// an AWS IoT Core device certificate. Requires `client_key_file`. Default: none.
    pub client_cert_file: Option<PathBuf>,
    /// `client_key_file`: PEM private key (PKCS#8, PKCS#1 RSA or SEC1 EC) of
    /// `client_cert_file`; must match it. Default: none.
    pub client_key_file: Option<PathBuf>,
    /// The TLS client built and checked from the three keys above at load time: `Some` exactly
    /// when `url` is `mqtts://`.
    pub tls: Option<TlsClient>,
    /// `topic`: where each batch is published, `{gateway_id}` and `{lane}` filled in
    /// ([`MqttSinkConfig::topic_for`]). Required.
    pub topic: SinkTopic,
    /// `keep_alive_s`: MQTT keep-alive interval in seconds. 5 to 3600. Default 30.
    pub keep_alive_s: u16,
    /// `max_message_bytes`: largest MQTT message payload the broker accepts, in bytes; the sink
    /// splits a batch whose JSON is larger. 1024 to 268435455. Default 131072 (AWS IoT Core's
    /// limit).
    pub max_message_bytes: usize,
}

impl MqttSinkConfig {
    /// The topic a batch of `lane` from gateway `gateway_id` is published on.
    pub fn topic_for(&self, gateway_id: &str, lane: SinkLane) -> String {
        self.topic.fill(gateway_id, lane)
    }

    /// The TLS keys of this sink as written.
    pub fn tls_files(&self) -> TlsFiles {
        TlsFiles {
            ca_file: self.ca_file.clone(),
            client_cert_file: self.client_cert_file.clone(),
            client_key_file: self.client_key_file.clone(),
            alpn: Vec::new(),
        }
    }

    /// The TLS client for [`MqttSinkConfig::url`], as [`MqttConfig::tls_client`]: never `None`
    /// for `mqtts://`.
    pub fn tls_client(&self) -> Result<Option<TlsClient>, TlsError> {
        tls_client(self.uses_tls(), &self.tls, || self.tls_files())
    }

    /// Host of [`MqttSinkConfig::url`].
    pub fn broker_host(&self) -> &str {
        // Validation rejects a URL without a host, so the fallback is never used.
        self.url.host_str().unwrap_or_default()
    }

    /// Port of [`MqttSinkConfig::url`], or 1883 (`mqtt://`) / 8883 (`mqtts://`) when it names
    /// none.
    pub fn broker_port(&self) -> u16 {
        mqtt_port(&self.url)
    }

    /// Whether [`MqttSinkConfig::url`] is `mqtts://`.
    pub fn uses_tls(&self) -> bool {
        self.url.scheme() == "mqtts"
    }
}

impl fmt::Debug for MqttSinkConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MqttSinkConfig")
            .field("url", &crate::redact_url(&self.url))
            .field("client_id", &self.client_id)
            .field("username", &self.username)
            .field("password_env", &self.password_env)
            .field("password", &self.password)
            .field("ca_file", &self.ca_file)
            .field("client_cert_file", &self.client_cert_file)
            .field("client_key_file", &self.client_key_file)
            .field("tls", &self.tls)
            .field("topic", &self.topic)
            .field("keep_alive_s", &self.keep_alive_s)
            .field("max_message_bytes", &self.max_message_bytes)
            .finish()
    }
}

/// The keys of a `kind = "kafka"` sink: a producer to a Kafka cluster. `Debug` prints the
/// password as `***`.
#[derive(Clone, PartialEq)]
pub struct KafkaSinkConfig {
    /// `brokers`: the bootstrap brokers, each `"host:port"` (port required, 1 to 65535; host a
    /// DNS name, an IPv4 address, or an IPv6 address in brackets, `"[fd00::1]:9092"`), as
    /// written. Required; at least one; no broker twice.
    pub brokers: Vec<String>,
    /// `client_id`: the Kafka client id sent with every request (broker logs and quotas).
    /// 1 to 255 bytes of `A-Z`, `a-z`, `0-9`, `.`, `_` and `-`. Default
    /// `"gateway-{gateway_id}"`.
    pub client_id: String,
    /// `topic`: the topic of readings. Required when `lanes` includes `"readings"`, refused
    /// when it does not.
    pub topic: Option<KafkaTopic>,
    /// `alarm_topic`: the topic of alarm events. Required when `lanes` includes `"alarms"`,
    /// refused when it does not.
    pub alarm_topic: Option<KafkaTopic>,
    /// `compression`: codec of the record batches, `"none"`, `"gzip"`, `"lz4"` or `"zstd"`.
    /// Default `"none"`.
    pub compression: KafkaCompression,
    /// `tls`: connect to the brokers with TLS. Default `false`. Not implied by the TLS files:
    /// `ca_file`, `client_cert_file` or `client_key_file` with `tls = false` is refused.
    pub tls: bool,
    /// `ca_file`: PEM file of the CA certificates trusted for the brokers (`tls = true` only);
    /// replaces the platform's roots. Default: the platform's roots.
    pub ca_file: Option<PathBuf>,
    /// `client_cert_file`: PEM certificate chain presented to the brokers (`tls = true` only).
    /// Requires `client_key_file`. Default: none.
    pub client_cert_file: Option<PathBuf>,
    /// `client_key_file`: PEM private key (PKCS#8, PKCS#1 RSA or SEC1 EC) of
    /// `client_cert_file`; must match it. Default: none.
    pub client_key_file: Option<PathBuf>,
    /// The TLS client built and checked from the three keys above at load time: `Some` exactly
    /// when `tls` is true (the platform's roots when there is no `ca_file`).
    pub tls_client: Option<TlsClient>,
    /// `sasl_mechanism` with `username` and the password of `password_env`: SASL
    /// authentication, `"PLAIN"`, `"SCRAM-SHA-256"` or `"SCRAM-SHA-512"`. Default: none. A
    /// mechanism needs both `username` and `password_env`; either of them without a mechanism
    /// is refused.
    pub sasl: Option<KafkaSasl>,
    /// `password_env`: name of the environment variable holding the SASL password, as written
    /// (for messages). Default: none.
    pub password_env: Option<String>,
}

impl KafkaSinkConfig {
    /// The topic the records of `lane` go to: `topic` for readings, `alarm_topic` for alarms.
    /// `None` only for a lane the sink does not read.
    pub fn topic_for(&self, lane: SinkLane) -> Option<&KafkaTopic> {
        match lane {
            SinkLane::Readings => self.topic.as_ref(),
            SinkLane::Alarms => self.alarm_topic.as_ref(),
        }
    }

    /// The TLS keys of this sink as written.
    pub fn tls_files(&self) -> TlsFiles {
        TlsFiles {
            ca_file: self.ca_file.clone(),
            client_cert_file: self.client_cert_file.clone(),
            client_key_file: self.client_key_file.clone(),
            alpn: Vec::new(),
        }
    }
}

impl fmt::Debug for KafkaSinkConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaSinkConfig")
            .field("brokers", &self.brokers)
            .field("client_id", &self.client_id)
            .field("topic", &self.topic)
            .field("alarm_topic", &self.alarm_topic)
            .field("compression", &self.compression)
            .field("tls", &self.tls)
            .field("ca_file", &self.ca_file)
            .field("client_cert_file", &self.client_cert_file)
            .field("client_key_file", &self.client_key_file)
            .field("tls_client", &self.tls_client)
            .field("sasl", &self.sasl)
            .field("password_env", &self.password_env)
            .finish()
    }
}

/// SASL credentials of a Kafka sink. `Debug` prints the password as `***`.
#[derive(Clone, PartialEq)]
pub struct KafkaSasl {
    /// `sasl_mechanism`.
    pub mechanism: SaslMechanism,
    /// `username`: non-empty.
    pub username: String,
    /// The password read from `password_env` at load time.
    pub password: Secret,
}

impl fmt::Debug for KafkaSasl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Spelled out rather than left to `Secret`'s own `Debug`: this impl must never print it.
        f.debug_struct("KafkaSasl")
            .field("mechanism", &self.mechanism)
            .field("username", &self.username)
            .field("password", &format_args!("***"))
            .finish()
    }
}

/// `sasl_mechanism` of a Kafka sink.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
pub enum SaslMechanism {
    /// `"PLAIN"`: the password itself goes to the broker; use it with `tls = true`.
    #[serde(rename = "PLAIN")]
    Plain,
    /// `"SCRAM-SHA-256"`: challenge and response; the password never crosses the wire.
    #[serde(rename = "SCRAM-SHA-256")]
    ScramSha256,
    /// `"SCRAM-SHA-512"`: as SCRAM-SHA-256 with SHA-512.
    #[serde(rename = "SCRAM-SHA-512")]
    ScramSha512,
}

/// `compression` of a Kafka sink: the codec of its record batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KafkaCompression {
    /// `"none"`: records as they are.
    None,
    /// `"gzip"`.
    Gzip,
    /// `"lz4"`.
    Lz4,
    /// `"zstd"` (brokers from Kafka 2.1).
    Zstd,
}

/// A checked Kafka topic name: 1 to 249 characters of `A-Z`, `a-z`, `0-9`, `.`, `_` and `-`,
/// not `"."` or `".."` (the broker's own rule). `Debug` and `Display` show the name.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct KafkaTopic(String);

/// Longest Kafka topic name, in characters (the broker refuses longer ones).
const KAFKA_TOPIC_MAX_CHARS: usize = 249;

impl KafkaTopic {
    /// Checks a topic name; the error says what is wrong, without key or line. (A loaded config
    /// has its topics checked already; this is for topics made in code.)
    pub fn new(name: &str) -> Result<Self, String> {
        if name.is_empty() {
            return Err("must not be empty".into());
        }
        if let Some(c) = name
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
        {
            return Err(format!(
                "{name:?} contains {c:?}; a Kafka topic name has only A-Z, a-z, 0-9, '.', '_' \
                 and '-' (no placeholders)"
            ));
        }
        // Only ASCII is left, so bytes are characters.
        if name.len() > KAFKA_TOPIC_MAX_CHARS {
            return Err(format!(
                "must be at most {KAFKA_TOPIC_MAX_CHARS} characters, found {}",
                name.len()
            ));
        }
        if name == "." || name == ".." {
            return Err(format!("{name:?} is not a Kafka topic name"));
        }
        Ok(Self(name.to_owned()))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for KafkaTopic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for KafkaTopic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

/// Port of an `mqtt://` or `mqtts://` URL, or the scheme's default.
pub(crate) fn mqtt_port(url: &Url) -> u16 {
    url.port().unwrap_or(if url.scheme() == "mqtts" {
        crate::defaults::MQTTS_PORT
    } else {
        crate::defaults::MQTT_PORT
    })
}

/// `[[modbus]]`: one Modbus slave the gateway polls. Its readings get source `"modbus"`, the
/// poll's time as `ts`, `value = raw * scale + offset` and the register's `unit`.
#[derive(Debug, Clone, PartialEq)]
pub struct ModbusConfig {
    /// `device`: device id of this slave's readings. Required; an id as `[ingest]` allows
    /// (1 to `max_id_bytes` bytes, no `+`, `#` or control characters) and no `/`; unique among
    /// `[[modbus]]` entries.
    pub device: String,
    /// `url` with the line settings of an RTU port: where the slave is. Required.
    pub link: ModbusLink,
    /// `unit_id`: the slave's address. RTU 1 to 247; TCP 0 to 255. Default 1.
    pub unit_id: u8,
    /// `poll_ms`: milliseconds from the start of one poll to the start of the next. Positive.
    /// Default 1000.
    pub poll_ms: u64,
    /// `timeout_ms`: milliseconds one request waits for its answer. Positive. Default 500.
    pub timeout_ms: u64,
    /// `backoff_max_ms` (project key): a slave that stopped answering is tried again after
    /// `poll_ms`, then twice, four times … as long, up to this many milliseconds (never less
    /// than `poll_ms`); its first answer restores `poll_ms`. Positive. Default 30000.
    pub backoff_max_ms: u64,
    /// `[[modbus.register]]`: what is read, in file order. At least one; metric names unique
    /// within the slave.
    pub registers: Vec<ModbusRegister>,
}

/// Where a Modbus slave is: `tcp://host[:port]` or `rtu:///dev/...` with its line settings.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ModbusLink {
    /// `tcp://host[:port]`: Modbus TCP, port 502 by default.
    Tcp {
        /// Host name or IP address (IPv6 without brackets).
        host: String,
        /// TCP port.
        port: u16,
    },
    /// `rtu:///dev/ttyUSB0`: Modbus RTU on a serial port (an RS-485 adapter). Entries with
    /// the same port share the bus and must agree on its settings.
    Rtu(RtuLine),
}

impl ModbusLink {
    /// The link as `url` spells it.
    pub fn url(&self) -> String {
        match self {
            ModbusLink::Tcp { host, port } if host.contains(':') => {
                format!("tcp://[{host}]:{port}")
            }
            ModbusLink::Tcp { host, port } => format!("tcp://{host}:{port}"),
            ModbusLink::Rtu(line) => format!("rtu://{}", line.port.display()),
        }
    }
}

/// An RTU serial line: the port and how bytes go over it (8 data bits always, as Modbus RTU
/// says).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RtuLine {
    /// The device path from the `rtu://` URL.
    pub port: PathBuf,
    /// `baud`: line speed. Positive. Default 9600.
    pub baud: u32,
    /// `parity`: `"none"`, `"even"` or `"odd"`. Default `"none"`.
    pub parity: Parity,
    /// `stop_bits`: 1 or 2. Default 1.
    pub stop_bits: u8,
}

/// Parity of an RTU line (`parity`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Parity {
    /// `"none"`.
    None,
    /// `"even"` (the Modbus default on paper).
    Even,
    /// `"odd"`.
    Odd,
}

/// Which Modbus table a register is in (`kind`), hence the function code that reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RegisterKind {
    /// `"holding"`: holding registers, function 03.
    Holding,
    /// `"input"`: input registers, function 04.
    Input,
    /// `"coil"`: coils, function 01; one bit, value 0 or 1.
    Coil,
    /// `"discrete"`: discrete inputs, function 02; one bit, value 0 or 1.
    Discrete,
}

impl RegisterKind {
    /// Whether this table holds bits (coils, discrete inputs) rather than 16-bit registers.
    pub fn is_bit(self) -> bool {
        matches!(self, RegisterKind::Coil | RegisterKind::Discrete)
    }
}

/// The `type` of a register as written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DataType {
    /// `"u16"`: one register, unsigned.
    U16,
    /// `"i16"`: one register, two's complement.
    I16,
    /// `"u32"`: two registers, unsigned.
    U32,
    /// `"i32"`: two registers, two's complement.
    I32,
    /// `"f32"`: two registers, IEEE 754 single precision.
    F32,
}

impl DataType {
    /// Registers a value of this type spans: 1 or 2.
    pub fn registers(self) -> u16 {
        match self {
            DataType::U16 | DataType::I16 => 1,
            DataType::U32 | DataType::I32 | DataType::F32 => 2,
        }
    }
}

/// Which register of a 32-bit value comes first (`word_order`); bytes inside a register are
/// always big endian, as Modbus says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WordOrder {
    /// `"big"`: the high word at the lower address (the default).
    Big,
    /// `"little"`: the low word at the lower address.
    Little,
}

/// How the raw content of a register becomes a number, checked against its kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RegisterValue {
    /// A coil or discrete input: 0 or 1.
    Bit,
    /// A 16-bit type in one register.
    Word(DataType),
    /// A 32-bit type in two registers, in this word order.
    DoubleWord(DataType, WordOrder),
}

impl RegisterValue {
    /// Addresses the value spans in its table: 1 or 2.
    pub fn span(self) -> u16 {
        match self {
            RegisterValue::Bit => 1,
            RegisterValue::Word(t) | RegisterValue::DoubleWord(t, _) => t.registers(),
        }
    }
}

/// `[[modbus.register]]`: one value read from a slave, one metric of its readings.
#[derive(Debug, Clone, PartialEq)]
pub struct ModbusRegister {
    /// `metric`: metric name of the reading. Required; an id as `[ingest]` allows, no `/`;
    /// unique within its slave.
    pub metric: String,
    /// `kind`: `"holding"`, `"input"`, `"coil"` or `"discrete"`. Default `"holding"`.
    pub kind: RegisterKind,
    /// `address`: 0-based address in its table (the protocol address, not the 40001-style
    /// number). Required; 0 to 65535, and a 32-bit value's second register must be too.
    pub address: u16,
    /// `type` and `word_order`: for registers `type` is `"u16"` (default), `"i16"`, `"u32"`,
    /// `"i32"` or `"f32"`, and `word_order` (32-bit types only) `"big"` (default) or
    /// `"little"`; coils and discrete inputs take neither.
    pub value: RegisterValue,
    /// `scale`: value = raw * scale + offset. Finite and not 0. Default 1.0.
    pub scale: f64,
    /// `offset`: finite. Default 0.0.
    pub offset: f64,
    /// `unit`: unit of the reading, e.g. `"V"`. Default: none (`null` upstream).
    pub unit: Option<String>,
}

/// `[admin]`: the local admin HTTP server.
#[derive(Debug, Clone, PartialEq)]
pub struct AdminConfig {
    /// Socket address of `/healthz`, `/metrics` and `/status`. A non-loopback address requires
    /// `token_env`. Default `127.0.0.1:9100`.
    pub listen: SocketAddr,
    /// Name of the environment variable holding the admin bearer token. Default: none.
    pub token_env: Option<String>,
    /// The token read from `token_env` at load time. `Some` exactly when `token_env` is.
    pub token: Option<Secret>,
}

/// `[ingest]`: the rules of WIRE.md §1 every reading must pass, whichever source it came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IngestConfig {
    /// Longest device or metric id, in bytes; ids are 1..this many bytes of printable UTF-8
    /// without `+`, `#` or control characters (else the reading is rejected as `bad_id`).
    /// 1 to 65535. Default 128.
    pub max_id_bytes: usize,
    /// A reading stamped more than this many seconds ahead of the gateway's clock is rejected as
    /// `bad_ts`. Default 300.
    pub max_future_ts_s: u64,
    /// A reading stamped more than this many seconds before the gateway's clock is rejected as
    /// `bad_ts`; `None` (written as 0, the default): no lower bound.
    pub max_past_ts_s: Option<u64>,
}

/// A trigger level with its clear level (hysteresis).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limit {
    /// Level that raises the alarm (`above` or `below`).
    pub trigger: f64,
    /// Level that clears it (`clear_below` for an upper limit, `clear_above` for a lower one);
    /// equal to `trigger` when not written.
    pub clear: f64,
}

/// The one kind of condition of an alarm rule.
///
/// A rule sets keys of exactly one kind: threshold (`above`, `below`, `clear_below`,
/// `clear_above`), rate (`rate_above_per_s`) or silence (`no_data_s`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum AlarmCondition {
    /// Raised while `value > above.trigger` or `value < below.trigger` (at least one is set; both
    /// make a band). Cleared when every set limit is back: `value <= above.clear` and
    /// `value >= below.clear`. Validation guarantees `above.clear <= above.trigger`,
    /// `below.clear >= below.trigger`, and with both, `below.trigger < above.trigger` and
    /// `below.clear <= above.clear`.
    Threshold {
        /// Upper limit: `above` / `clear_below`.
        above: Option<Limit>,
        /// Lower limit: `below` / `clear_above`.
        below: Option<Limit>,
    },
    /// Raised while |change| between consecutive readings, per second, exceeds
    /// `rate_above_per_s` (positive, finite); cleared when it no longer does.
    Rate {
        /// Rate limit in units of the metric per second.
        rate_above_per_s: f64,
    },
    /// Raised when a device+metric that was seen sends nothing for `no_data_s` seconds
    /// (positive); cleared by its next reading. `for_s`/`clear_for_s` must be 0.
    NoData {
        /// Silence in seconds.
        no_data_s: u64,
    },
}

/// `[[alarm]]`: one alarm rule.
#[derive(Debug, Clone, PartialEq)]
pub struct AlarmRule {
    /// Name of the rule, unique, used in events and in the `alarms/{device}/{rule}` topic.
    /// Required; non-empty, no `/`, `+` or `#`.
    pub name: String,
    /// Glob over device ids. Default `"*"`.
    pub device: String,
    /// Glob over metric names. Default `"*"`.
    pub metric: String,
    /// What raises and clears the alarm; built from `above`, `below`, `clear_below`,
    /// `clear_above`, `rate_above_per_s` and `no_data_s`.
    pub condition: AlarmCondition,
    /// Seconds the condition must hold before the alarm raises. Default 0.
    pub for_s: u64,
    /// Seconds the clear condition must hold before the alarm clears. Default 0.
    pub clear_for_s: u64,
    /// `"info"`, `"warning"` or `"critical"`. Default `"warning"`.
    pub severity: Severity,
    pub(crate) device_glob: CompiledGlob,
    pub(crate) metric_glob: CompiledGlob,
}

impl AlarmRule {
    /// A rule made in code rather than loaded (benchmarks, tests): its globs compiled as loading
    /// compiles them. The other checks of a loaded rule (limits finite, hysteresis on the right
    /// side, `no_data_s` positive) are the caller's business.
    pub fn new(
        name: impl Into<String>,
        device: &str,
        metric: &str,
        condition: AlarmCondition,
        for_s: u64,
        clear_for_s: u64,
        severity: Severity,
    ) -> Result<AlarmRule, globset::Error> {
        Ok(AlarmRule {
            name: name.into(),
            device: device.to_owned(),
            metric: metric.to_owned(),
            condition,
            for_s,
            clear_for_s,
            severity,
            device_glob: CompiledGlob::new(device)?,
            metric_glob: CompiledGlob::new(metric)?,
        })
    }

    /// The compiled `device` glob (compiled once at load time).
    pub fn device_glob(&self) -> &GlobMatcher {
        &self.device_glob.0
    }

    /// The compiled `metric` glob (compiled once at load time).
    pub fn metric_glob(&self) -> &GlobMatcher {
        &self.metric_glob.0
    }

    /// Whether this rule watches `metric` of `device`.
    pub fn matches(&self, device: &str, metric: &str) -> bool {
        self.device_glob.0.is_match(device) && self.metric_glob.0.is_match(metric)
    }
}

/// A compiled glob that compares and prints as its pattern (a `GlobMatcher` has no `PartialEq`,
/// and its `Debug` dumps the whole regex).
#[derive(Clone)]
pub(crate) struct CompiledGlob(pub(crate) GlobMatcher);

impl CompiledGlob {
    /// `pattern` in globset's default syntax (`*` also matches `/`).
    pub(crate) fn new(pattern: &str) -> Result<Self, globset::Error> {
        GlobBuilder::new(pattern)
            .build()
            .map(|g| CompiledGlob(g.compile_matcher()))
    }
}

impl PartialEq for CompiledGlob {
    fn eq(&self, other: &Self) -> bool {
        self.0.glob() == other.0.glob()
    }
}

impl fmt::Debug for CompiledGlob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0.glob().glob())
    }
}

macro_rules! names {
    ($ty:ty { $($variant:ident => $name:literal),+ $(,)? }) => {
        impl $ty {
            /// The TOML spelling of this value.
            pub fn as_str(self) -> &'static str {
                match self { $(Self::$variant => $name),+ }
            }
        }
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

names!(MqttMode { Embedded => "embedded", External => "external", Disabled => "disabled" });
names!(Compression { Gzip => "gzip", None => "none" });
names!(SinkLane { Readings => "readings", Alarms => "alarms" });
names!(KafkaCompression { None => "none", Gzip => "gzip", Lz4 => "lz4", Zstd => "zstd" });
names!(SaslMechanism { Plain => "PLAIN", ScramSha256 => "SCRAM-SHA-256", ScramSha512 => "SCRAM-SHA-512" });
names!(Parity { None => "none", Even => "even", Odd => "odd" });
names!(RegisterKind { Holding => "holding", Input => "input", Coil => "coil", Discrete => "discrete" });
names!(DataType { U16 => "u16", I16 => "i16", U32 => "u32", I32 => "i32", F32 => "f32" });
names!(WordOrder { Big => "big", Little => "little" });

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_with_placeholders_inside_a_level_are_refused() {
        assert!(TopicTemplate::new("sensors/dev-{device}").is_err());
        assert!(TopicTemplate::new("sensors/{device}/{metric}/{metric}").is_err());
        assert!(TopicTemplate::new("sensors/{device}/{device}").is_err());
        assert!(TopicTemplate::new("sensors/+/{device}").is_err());
        assert!(TopicTemplate::new("").is_err());
        assert!(TopicTemplate::new("{device}").is_ok());
    }

    #[test]
    fn sink_topic_placeholders_may_sit_anywhere_and_repeat() {
        let t = SinkTopic::new("gw-{gateway_id}.{lane}/{lane}").unwrap();
        assert_eq!(t.fill("a", SinkLane::Alarms), "gw-a.alarms/alarms");
        assert_eq!(
            SinkTopic::new("plain")
                .unwrap()
                .fill("a", SinkLane::Readings),
            "plain"
        );
        let empty = SinkTopic::new("x/{}").unwrap_err();
        assert!(empty.contains("unknown placeholder {}"), "{empty}");
        assert!(SinkTopic::new("{Lane}").is_err());
    }

    #[test]
    fn template_literal_levels_must_match_exactly() {
        let t = TopicTemplate::new("site/{device}/data/{metric}").unwrap();
        let m = t.match_topic("site/d1/data/rh").unwrap();
        assert_eq!((m.device, m.metric), ("d1", Some("rh")));
        assert!(t.match_topic("site/d1/info/rh").is_none());
    }
}
