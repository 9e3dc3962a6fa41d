//! Typed, validated configuration of the edge gateway.
//!
//! The gateway reads one TOML file (see [`DEFAULT_CONFIG_TOML`] for every key, its unit, default
//! and allowed values) once at start-up, through [`Config::load`], into a [`Config`] that the rest
//! of the program uses read-only. Every key has a default, so an empty file is a valid config:
//! an embedded MQTT broker on `127.0.0.1:1883`, no serial ports, upstream
//! `http://127.0.0.1:8080/ingest`, admin on `127.0.0.1:9100`, no alarm rules, no `[[sink]]`,
//! no `[[modbus]]`.
//!
//! Loading happens in three steps: the text is parsed by `toml_edit` to learn where every key is
//! (module `locate`), read by serde into types that say what was written (module `raw`), then
//! checked and completed into the public types with `*_env` secrets read from the environment
//! (module `validate`). Defaults live in [`defaults`].
//!
//! # One type per concept
//!
//! A key names a value of the component that uses it, and that value has one type, not one here
//! and a translation there. The dependencies point from here to the storage:
//!
//! - `gateway-config` → `gateway-buffer`: the buffer owns the vocabulary it persists or acts on
//!   by itself, [`Severity`] (stored in every alarm record, by variant index) and [`WhenFull`];
//!   they are re-exported here with their TOML spellings. Keeping them beside the on-disk format
//!   keeps the rule "never reorder a stored enum" where the format is, and the buffer a storage
//!   library that knows nothing of TOML.
//! - Everything else a key names is defined here and used as is downstream: [`Compression`],
//!   [`RetryPolicy`], [`TopicTemplate`], [`KafkaTopic`], compiled alarm rules ([`AlarmRule`],
//!   [`AlarmCondition`], [`Limit`]), URLs as [`url::Url`]. The forwarder and the gateway depend
//!   on this crate and take these values as they are, parsing nothing again.
//!
//! # Guarantees
//!
//! - A file that loads uses only known keys: every table is `deny_unknown_fields`, and an unknown
//!   key is an error that lists the allowed ones. The contract file
//!   (`docs/gateway.contract.toml`) loads exactly as written.
//! - Every error except an unreadable file names the dotted key (`alarm[1].clear_above`; indices
//!   from 0) and its line, and says what is allowed: see [`ConfigError`].
//! - A loaded [`Config`] has passed every check: positive quotas, batch sizes and intervals;
//!   `retry_initial_ms <= retry_max_ms`; at least one source; topic templates with `{device}`;
//!   `mqtt://`/`mqtts://` and `http://`/`https://` URLs without credentials; socket addresses;
//!   compiled alarm globs; unique alarm names; hysteresis on the right side of its trigger; a
//!   `gateway_id` safe for the `Idempotency-Key` and MQTT topics; a token for a non-loopback
//!   admin address; `[[sink]]` names unique, not reserved and safe as buffer consumer and metric
//!   label; a supported sink `kind` (`"mqtt"` or `"kafka"`), and in each sink only the keys
//!   of its kind; MQTT sink topics that fill in to valid MQTT publish topics; no two MQTT
//!   sessions of ours with one client id on one broker; Kafka sinks with `"host:port"`
//!   brokers (no repeats), a legal topic name for each lane they read and none for another,
//!   a `[A-Za-z0-9._-]` client id, TLS files only with `tls = true`, SASL with its username
//!   and password or not at all, and `max_in_flight = 1` (see the `kafka` module);
//!   `[[modbus]]` slaves with a `tcp://` or `rtu://` URL, line settings only on RTU and the
//!   same for every slave of one port, unique device ids, registers whose type fits their kind
//!   and whose value ends within the 65536 addresses (see the `modbus` module).
//!   `[[window]]` and `[[deadband]]` rules with a metric glob, `window_s` from 1 s to 366 days,
//!   a non-empty `emit` of known functions without repeats, finite non-negative `abs`/`rel`,
//!   and no rule that repeats the globs of an earlier one (it could never apply: the first
//!   matching window, else the first matching deadband, reduces a series).
//! - Secrets are read at load time (a missing variable fails the load, naming key and variable)
//!   and held as [`Secret`], whose `Debug` and `Display` print `***`; so does `{:?}` of a
//!   [`Config`].
//! - [`DEFAULT_CONFIG_TOML`] loads to [`Config::default`] plus the contract's four example alarm
//!   rules (tested).
//!
//! # Not promised
//!
//! - TLS files (`ca_file`, `client_cert_file`, `client_key_file`) are read and checked here, at
//!   load (see [`tls`]); other files (serial `port`, `data_dir`) are not opened or checked for
//!   existence here; the component that uses them reports that.
//! - Host names (a sink's broker, `[upstream]`) are not resolved and nothing is connected to:
//!   a Kafka topic that does not exist, or a SASL mechanism the cluster does not enable, is
//!   found by the sink when it runs.
//! - Only the first problem of a file is reported.
//! - A [`Config`] is validated when it is built. Mutating its fields afterwards (tests do) is not
//!   re-checked, and changing `alarm[].device`/`metric` does not recompile the rule's globs.
//! - The environment is read once; a changed secret needs a restart.

pub mod defaults;
mod error;
mod kafka;
mod locate;
mod modbus;
mod model;
mod raw;
pub mod redact;
mod retry;
mod secret;
pub mod tls;
mod validate;
mod window;

pub use error::ConfigError;
pub use model::{
    AdminConfig, AlarmCondition, AlarmRule, BufferConfig, Compression, Config, DataType,
    ForwardingConfig, IngestConfig, KafkaCompression, KafkaSasl, KafkaSinkConfig, KafkaTopic,
    Limit, ModbusConfig, ModbusLink, ModbusRegister, MqttConfig, MqttMode, MqttSinkConfig, Parity,
    RegisterKind, RegisterValue, RtuLine, SaslMechanism, SerialConfig, Severity, SinkConfig,
    SinkKind, SinkLane, SinkLanes, SinkTopic, TopicMatch, TopicTemplate, UpstreamConfig, WhenFull,
    WordOrder,
};
pub use redact::{redact_url, redact_url_text};
pub use retry::RetryPolicy;
pub use secret::Secret;
pub use tls::{TlsClient, TlsError, TlsFiles};
pub use validate::MAX_INPUT_BYTES;
pub use window::{DeadbandRule, RawReadings, Reduction, WindowFn, WindowRule};

use std::path::Path;

/// The shipped example config (`config/gateway.toml.example`): every key, commented with unit,
/// default and allowed values. It loads to [`Config::default`] plus the contract's example alarm
/// rules; `gateway print-default-config` prints it.
pub const DEFAULT_CONFIG_TOML: &str = include_str!("../gateway.toml.example");

/// [`DEFAULT_CONFIG_TOML`], as a function.
pub fn default_config_toml() -> &'static str {
    DEFAULT_CONFIG_TOML
}

impl Config {
    /// Secrets this config sends without TLS to another host (a password over `mqtt://`, a token
    /// over `http://`), one sentence each, for `check-config` and the start-up log. Allowed (a
    /// closed network may have no TLS), but worth saying.
    pub fn cleartext_secrets(&self) -> Vec<String> {
        let remote = |url: &url::Url| match url.host() {
            Some(url::Host::Ipv4(ip)) => !ip.is_loopback(),
            Some(url::Host::Ipv6(ip)) => !ip.is_loopback(),
            // mqtt:// is not a scheme the URL standard knows, so its IP hosts come as names.
            Some(url::Host::Domain(name)) => remote_host(name),
            None => false,
        };
        let mut found = Vec::new();
        let m = &self.mqtt;
        if m.mode == MqttMode::External && m.password.is_some() && !m.uses_tls() && remote(&m.url) {
            found.push(format!(
                "mqtt.password_env: the password goes to {} in the clear; use mqtts://",
                redact_url(&m.url)
            ));
        }
        let up = &self.upstream;
        if up.bearer_token.is_some() && up.url.scheme() == "http" && remote(&up.url) {
            found.push(format!(
                "upstream.bearer_token_env: the token goes to {} in the clear; use https://",
                redact_url(&up.url)
            ));
        }
        for (i, sink) in self.sinks.iter().enumerate() {
            match &sink.kind {
                SinkKind::Mqtt(m) => {
                    if m.password.is_some() && !m.uses_tls() && remote(&m.url) {
                        found.push(format!(
                            "sink[{i}].password_env: the password of sink \"{}\" goes to {} in \
                             the clear; use mqtts://",
                            sink.name,
                            redact_url(&m.url)
                        ));
                    }
                }
                SinkKind::Kafka(k) => {
                    let remote_brokers: Vec<&str> = k
                        .brokers
                        .iter()
                        .map(String::as_str)
                        .filter(|b| {
                            b.rsplit_once(':')
                                .is_some_and(|(host, _)| remote_host(host))
                        })
                        .collect();
                    let plain = k
                        .sasl
                        .as_ref()
                        .is_some_and(|s| kafka::sends_password(s.mechanism));
                    if plain && !k.tls && !remote_brokers.is_empty() {
                        found.push(format!(
                            "sink[{i}].password_env: the SASL PLAIN password of sink \"{}\" goes \
                             to {} in the clear; set tls = true",
                            sink.name,
                            remote_brokers.join(", ")
                        ));
                    }
                }
            }
        }
        found
    }

    /// Reads and validates the config file at `path`, resolving `*_env` secrets from the process
    /// environment.
    pub fn load(path: impl AsRef<Path>) -> Result<Config, ConfigError> {
        Self::load_with_env(path, real_env)
    }

    /// [`Config::load`] with the environment lookup supplied by the caller.
    pub fn load_with_env(
        path: impl AsRef<Path>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse_with_env(&text, &path.display().to_string(), env)
    }

    /// Parses and validates config text; `origin` names it in errors (a file name, `"<stdin>"`).
    /// `*_env` secrets come from the process environment.
    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        Self::parse_with_env(text, origin, real_env)
    }

    /// [`Config::parse`] with the environment lookup supplied by the caller, so tests can
    /// provide secrets without touching the process environment:
    ///
    /// ```
    /// # use gateway_config::Config;
    /// let text = "[admin]\nlisten = \"0.0.0.0:9100\"\ntoken_env = \"ADMIN_TOKEN\"\n";
    /// let config = Config::parse_with_env(text, "example", |name| {
    ///     (name == "ADMIN_TOKEN").then(|| "s3cret".to_owned())
    /// })
    /// .unwrap();
    /// assert_eq!(config.admin.token.as_ref().unwrap().expose(), "s3cret");
    /// assert!(!format!("{config:?}").contains("s3cret"));
    /// ```
    pub fn parse_with_env(
        text: &str,
        origin: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        // The spanned parse comes first: a syntax error is reported once, from it, and every
        // later error can be placed on its line.
        let index = locate::SpanIndex::build(text, origin)?;
        let cx = validate::Ctx {
            index: &index,
            origin,
            env: &env,
        };
        let raw: raw::RawConfig = toml::from_str(text).map_err(|e| {
            validate::sink_unknown_key(locate::from_serde(&index, text, origin, &e), &cx)
        })?;
        validate::resolve(raw, &cx)
    }
}

impl Default for Config {
    /// The config of an empty file.
    fn default() -> Self {
        let index = locate::SpanIndex::default();
        let cx = validate::Ctx {
            index: &index,
            origin: "<defaults>",
            env: &|_| None,
        };
        // The defaults are constants checked by the `empty_file_is_valid_and_equals_defaults`
        // test; failing here would be a bug in this crate, not in anybody's config.
        validate::resolve(raw::RawConfig::default(), &cx).expect("built-in defaults are valid")
    }
}

/// Whether a host name or IP address (IPv6 with or without brackets) is another machine: not
/// `localhost`, not a loopback address.
fn remote_host(host: &str) -> bool {
    host != "localhost"
        && !host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The process environment; a variable that is not UTF-8 counts as not set.
fn real_env(name: &str) -> Option<String> {
    std::env::var_os(name).and_then(|v| v.into_string().ok())
}
