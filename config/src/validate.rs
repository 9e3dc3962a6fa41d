//! From what was written ([`crate::raw`]) to what the gateway runs with ([`crate::model`]):
//! defaults filled in, secrets resolved, every value and every cross-field rule checked.
//!
//! Each check names the dotted key it is about; the key's line comes from the [`SpanIndex`].
//! The first failing check wins, in file order of sections, so a fix-and-retry loop walks down
//! the file.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use url::Url;

use crate::defaults as d;
use crate::error::ConfigError;
use crate::locate::SpanIndex;
use crate::model::*;
use crate::raw::*;

/// The largest `mqtt.max_payload_bytes` and `serial.max_line_bytes`: one reading holds at most
/// one payload or line (its unit can be that long), and the buffer stores records of up to 4 MiB
/// (`gateway_buffer::MAX_RECORD_BYTES`), so every reading that passes ingest can be stored and
/// its message acknowledged, never refused by the buffer and redelivered forever.
pub const MAX_INPUT_BYTES: usize = 1024 * 1024;
use crate::redact::{redact_url, redact_url_text};
use crate::secret::Secret;
use crate::tls::{TlsClient, TlsFiles};

/// Looks up an environment variable; injectable so tests need not touch the real environment.
pub(crate) type EnvLookup<'a> = &'a dyn Fn(&str) -> Option<String>;

pub(crate) struct Ctx<'a> {
    pub(crate) index: &'a SpanIndex,
    pub(crate) origin: &'a str,
    pub(crate) env: EnvLookup<'a>,
}

pub(crate) type Result<T> = std::result::Result<T, ConfigError>;

impl Ctx<'_> {
    pub(crate) fn invalid(&self, key: &str, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            origin: self.origin.to_owned(),
            key: key.to_owned(),
            line: self.index.line_of(key),
            message: message.into(),
        }
    }

    pub(crate) fn missing(&self, key: &str) -> ConfigError {
        ConfigError::MissingKey {
            origin: self.origin.to_owned(),
            key: key.to_owned(),
            line: self.index.line_of(key),
        }
    }

    /// Checks that a quota, size or interval is not zero.
    pub(crate) fn positive<T: Default + PartialEq>(&self, key: &str, value: T) -> Result<T> {
        if value == T::default() {
            return Err(self.invalid(key, "must be greater than 0, found 0"));
        }
        Ok(value)
    }

    /// A size of one input (payload, line) from 1 to [`MAX_INPUT_BYTES`].
    fn input_size(&self, key: &str, value: usize) -> Result<usize> {
        let value = self.positive(key, value)?;
        if value > MAX_INPUT_BYTES {
            return Err(self.invalid(
                key,
                format!("must be at most {MAX_INPUT_BYTES} (1 MiB), found {value}"),
            ));
        }
        Ok(value)
    }

    /// Reads the secret a `*_env` key names.
    pub(crate) fn secret(&self, key: &str, variable: Option<&String>) -> Result<Option<Secret>> {
        let Some(variable) = variable else {
            return Ok(None);
        };
        if variable.trim().is_empty() {
            return Err(self.invalid(
                key,
                "expected the name of an environment variable, found an empty string",
            ));
        }
        let missing = |problem| ConfigError::MissingSecret {
            origin: self.origin.to_owned(),
            key: key.to_owned(),
            line: self.index.line_of(key),
            variable: variable.clone(),
            problem,
        };
        match (self.env)(variable) {
            None => Err(missing("not set")),
            Some(value) if value.is_empty() => Err(missing("empty")),
            Some(value) => Ok(Some(Secret::new(value))),
        }
    }

    /// Loads and checks the TLS files of `section`; an error names the key at fault.
    pub(crate) fn tls(&self, section: &str, files: &TlsFiles) -> Result<TlsClient> {
        TlsClient::load(files.clone())
            .map_err(|e| self.invalid(&format!("{section}.{}", e.key()), e.to_string()))
    }

    /// Refuses TLS keys in a section whose URL is not a TLS one: they would silently do nothing.
    fn no_tls_keys(&self, section: &str, files: &TlsFiles, needs: &str) -> Result<()> {
        let written = [
            ("ca_file", files.ca_file.is_some()),
            ("client_cert_file", files.client_cert_file.is_some()),
            ("client_key_file", files.client_key_file.is_some()),
            ("alpn", !files.alpn.is_empty()),
        ];
        match written.iter().find(|(_, set)| *set) {
            Some((key, _)) => Err(self.invalid(
                &format!("{section}.{key}"),
                format!("only used with {needs}"),
            )),
            None => Ok(()),
        }
    }

    fn socket_addr(&self, key: &str, written: Option<String>, default: &str) -> Result<SocketAddr> {
        let text = written.as_deref().unwrap_or(default);
        text.parse().map_err(|_| {
            self.invalid(
                key,
                format!(
                    "expected a socket address IP:PORT such as \"127.0.0.1:9100\" or \
                     \"[::1]:9100\", found \"{text}\""
                ),
            )
        })
    }

    fn url(
        &self,
        key: &str,
        written: Option<String>,
        default: &str,
        schemes: &[&str],
    ) -> Result<Url> {
        let text = written.as_deref().unwrap_or(default);
        // A refused URL is echoed back: never with a secret in it.
        let shown = redact_url_text(text);
        let allowed = schemes
            .iter()
            .map(|s| format!("{s}://"))
            .collect::<Vec<_>>()
            .join(" or ");
        let url = Url::parse(text).map_err(|e| {
            self.invalid(
                key,
                format!("expected a {allowed} URL, found \"{shown}\" ({e})"),
            )
        })?;
        if !schemes.contains(&url.scheme()) {
            return Err(self.invalid(
                key,
                format!(
                    "expected a {allowed} URL, found scheme \"{}\" in \"{shown}\"",
                    url.scheme()
                ),
            ));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(self.invalid(key, format!("\"{shown}\" has no host")));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(self.invalid(
                key,
                "credentials do not belong in the URL (it is logged); use the username and \
                 *_env keys",
            ));
        }
        Ok(url)
    }

    /// A name that ends up as one MQTT topic level or inside the `Idempotency-Key`.
    pub(crate) fn name_part(&self, key: &str, value: &str, forbidden: &[char]) -> Result<()> {
        if value.is_empty() {
            return Err(self.invalid(key, "must not be empty"));
        }
        if let Some(c) = value
            .chars()
            .find(|c| forbidden.contains(c) || c.is_control() || c.is_whitespace())
        {
            let list: Vec<String> = forbidden.iter().map(|c| format!("'{c}'")).collect();
            return Err(self.invalid(
                key,
                format!(
                    "{value:?} contains {c:?}; not allowed: whitespace, control characters, {}",
                    list.join(", ")
                ),
            ));
        }
        Ok(())
    }
}

/// Characters that would break an MQTT topic level.
pub(crate) const TOPIC_LEVEL_FORBIDDEN: &[char] = &['/', '+', '#'];
/// …and, for `gateway_id`, the `Idempotency-Key` (`{gateway_id}:{lane}:…`) as well.
const GATEWAY_ID_FORBIDDEN: &[char] = &[':', '/', '+', '#'];
/// Longest `gateway_id`, in bytes: it is also the default MQTT client id.
const GATEWAY_ID_MAX_BYTES: usize = 128;

pub(crate) fn resolve(raw: RawConfig, cx: &Ctx<'_>) -> Result<Config> {
    let gateway_id = raw.gateway_id.unwrap_or_else(|| d::GATEWAY_ID.to_owned());
    cx.name_part("gateway_id", &gateway_id, GATEWAY_ID_FORBIDDEN)?;
    if gateway_id.len() > GATEWAY_ID_MAX_BYTES {
        return Err(cx.invalid(
            "gateway_id",
            format!(
                "must be at most {GATEWAY_ID_MAX_BYTES} bytes, found {}",
                gateway_id.len()
            ),
        ));
    }
    let data_dir = raw.data_dir.unwrap_or_else(|| PathBuf::from(d::DATA_DIR));
    if data_dir.as_os_str().is_empty() {
        return Err(cx.invalid("data_dir", "must not be empty"));
    }
    let data_dir_mode = raw.data_dir_mode.unwrap_or(d::DATA_DIR_MODE);
    if data_dir_mode & !0o777 != 0 || data_dir_mode & 0o700 != 0o700 {
        return Err(cx.invalid(
            "data_dir_mode",
            format!(
                "expected permission bits such as 0o700 or 0o750 that include 0o700 (the \
                 gateway reads and writes there) and nothing beyond 0o777, found 0o{data_dir_mode:o}"
            ),
        ));
    }
    let shutdown_grace_s = raw.shutdown_grace_s.unwrap_or(d::SHUTDOWN_GRACE_S);
    let alarm_max_series = cx.positive(
        "alarm_max_series",
        raw.alarm_max_series.unwrap_or(d::ALARM_MAX_SERIES),
    )?;

    let mqtt = mqtt(raw.mqtt, &gateway_id, cx)?;
    let serial = serial(raw.serial, cx)?;
    if mqtt.mode == MqttMode::Disabled && serial.is_empty() && raw.modbus.is_empty() {
        return Err(cx.invalid(
            "mqtt.mode",
            "\"disabled\" leaves no source of readings; use \"embedded\" or \"external\", or add \
             a [[serial]] port or a [[modbus]] slave",
        ));
    }
    let buffer = buffer(raw.buffer, cx)?;
    let upstream = upstream(raw.upstream, cx)?;
    let admin = admin(raw.admin, cx)?;
    let ingest = ingest(raw.ingest, cx)?;
    let alarm = alarms(raw.alarm, cx)?;
    let sinks = sinks(raw.sink, &gateway_id, &mqtt, cx)?;
    let modbus = crate::modbus::resolve(raw.modbus, &serial, &ingest, cx)?;
    let window_max_series = cx.positive(
        "window_max_series",
        raw.window_max_series
            .unwrap_or(crate::window::WINDOW_MAX_SERIES),
    )?;
    let window = crate::window::windows(raw.window, cx)?;
    let deadband = crate::window::deadbands(raw.deadband, &window, cx)?;

    Ok(Config {
        gateway_id,
        data_dir,
        data_dir_mode,
        shutdown_grace_s,
        alarm_max_series,
        mqtt,
        serial,
        buffer,
        upstream,
        admin,
        ingest,
        alarm,
        sinks,
        modbus,
        window_max_series,
        window,
        deadband,
    })
}

fn mqtt(raw: RawMqtt, gateway_id: &str, cx: &Ctx<'_>) -> Result<MqttConfig> {
    let mode = raw.mode.unwrap_or(if raw.url.is_some() {
        MqttMode::External
    } else {
        MqttMode::Embedded
    });
    let url = cx.url("mqtt.url", raw.url, d::MQTT_URL, &["mqtt", "mqtts"])?;
    let client_id = raw.client_id.unwrap_or_else(|| gateway_id.to_owned());
    if client_id.is_empty() {
        // An empty client id means a clean session: the broker would drop our QoS 1 backlog.
        return Err(cx.invalid(
            "mqtt.client_id",
            "must not be empty (the persistent session needs a client id)",
        ));
    }
    if raw.password_env.is_some() && raw.username.is_none() {
        return Err(cx.invalid(
            "mqtt.password_env",
            "needs mqtt.username: MQTT sends a password only with a username",
        ));
    }
    let password = cx.secret("mqtt.password_env", raw.password_env.as_ref())?;
    let files = TlsFiles {
        ca_file: raw.ca_file,
        client_cert_file: raw.client_cert_file,
        client_key_file: raw.client_key_file,
        alpn: raw.alpn.unwrap_or_default(),
    };
    let tls = match (mode, url.scheme()) {
        (MqttMode::External, "mqtts") => Some(cx.tls("mqtt", &files)?),
        (MqttMode::External, _) => {
            cx.no_tls_keys(
                "mqtt",
                &files,
                &format!("an mqtts:// url, but mqtt.url is \"{}\"", redact_url(&url)),
            )?;
            None
        }
        _ => None,
    };
    let embedded_listen = cx.socket_addr(
        "mqtt.embedded_listen",
        raw.embedded_listen,
        d::MQTT_EMBEDDED_LISTEN,
    )?;
    if raw.embedded_password_env.is_some() && raw.embedded_username.is_none() {
        return Err(cx.invalid(
            "mqtt.embedded_password_env",
            "needs mqtt.embedded_username: MQTT sends a password only with a username",
        ));
    }
    if let Some(user) = &raw.embedded_username {
        if user.is_empty() {
            return Err(cx.invalid("mqtt.embedded_username", "must not be empty"));
        }
        if raw.embedded_password_env.is_none() {
            return Err(cx.invalid(
                "mqtt.embedded_username",
                "needs mqtt.embedded_password_env: a username alone lets anyone in who knows it",
            ));
        }
    }
    let embedded_password = cx.secret(
        "mqtt.embedded_password_env",
        raw.embedded_password_env.as_ref(),
    )?;
    let embedded_allow_anonymous = raw.embedded_allow_anonymous.unwrap_or(false);
    if mode == MqttMode::Embedded
        && !embedded_listen.ip().is_loopback()
        && raw.embedded_username.is_none()
        && !embedded_allow_anonymous
    {
        return Err(cx.invalid(
            "mqtt.embedded_listen",
            format!(
                "{embedded_listen} is reachable from the network and the embedded broker would \
                 accept anyone: set mqtt.embedded_username and mqtt.embedded_password_env, or \
                 mqtt.embedded_allow_anonymous = true for a trusted network, or listen on \
                 127.0.0.1"
            ),
        ));
    }
    let embedded_max_connections = cx.positive(
        "mqtt.embedded_max_connections",
        raw.embedded_max_connections
            .unwrap_or(d::MQTT_EMBEDDED_MAX_CONNECTIONS),
    )?;

    let topics = raw
        .topics
        .unwrap_or_else(|| d::MQTT_TOPICS.iter().map(|t| (*t).to_owned()).collect());
    if topics.is_empty() && mode != MqttMode::Disabled {
        return Err(cx.invalid(
            "mqtt.topics",
            "expected at least one topic filter such as \"sensors/#\" (or mode = \"disabled\")",
        ));
    }
    for (i, topic) in topics.iter().enumerate() {
        check_topic_filter(topic).map_err(|why| cx.invalid(&format!("mqtt.topics[{i}]"), why))?;
    }

    let written = raw.topic_templates.unwrap_or_else(|| {
        d::MQTT_TOPIC_TEMPLATES
            .iter()
            .map(|t| (*t).to_owned())
            .collect()
    });
    if written.is_empty() && mode != MqttMode::Disabled {
        return Err(cx.invalid(
            "mqtt.topic_templates",
            "expected at least one template such as \"sensors/{device}/{metric}\"",
        ));
    }
    let topic_templates = written
        .iter()
        .enumerate()
        .map(|(i, t)| {
            TopicTemplate::new(t)
                .map_err(|why| cx.invalid(&format!("mqtt.topic_templates[{i}]"), why))
        })
        .collect::<Result<Vec<_>>>()?;

    let max_payload_bytes = cx.input_size(
        "mqtt.max_payload_bytes",
        raw.max_payload_bytes.unwrap_or(d::MQTT_MAX_PAYLOAD_BYTES),
    )?;
    let max_packet_bytes = raw.max_packet_bytes.unwrap_or(d::MQTT_MAX_PACKET_BYTES);
    if max_packet_bytes <= max_payload_bytes {
        // A message with a payload the gateway accepts must fit in a packet it reads; the packet
        // also carries the topic and headers.
        return Err(cx.invalid(
            "mqtt.max_packet_bytes",
            format!(
                "must be greater than mqtt.max_payload_bytes ({max_payload_bytes}) to leave room \
                 for the topic and headers, found {max_packet_bytes}"
            ),
        ));
    }

    Ok(MqttConfig {
        mode,
        url,
        client_id,
        username: raw.username,
        password_env: raw.password_env,
        password,
        ca_file: files.ca_file,
        client_cert_file: files.client_cert_file,
        client_key_file: files.client_key_file,
        alpn: files.alpn,
        tls,
        embedded_listen,
        embedded_username: raw.embedded_username,
        embedded_password_env: raw.embedded_password_env,
        embedded_password,
        embedded_allow_anonymous,
        embedded_max_connections,
        topics,
        topic_templates,
        max_inflight: cx.positive(
            "mqtt.max_inflight",
            raw.max_inflight.unwrap_or(d::MQTT_MAX_INFLIGHT),
        )?,
        max_payload_bytes,
        max_packet_bytes,
        keep_alive_s: raw.keep_alive_s.unwrap_or(d::MQTT_KEEP_ALIVE_S),
        reconnect_max_ms: cx.positive(
            "mqtt.reconnect_max_ms",
            raw.reconnect_max_ms.unwrap_or(d::MQTT_RECONNECT_MAX_MS),
        )?,
    })
}

/// MQTT topic filter rules: non-empty, `+` and `#` only as whole levels, `#` only last.
fn check_topic_filter(filter: &str) -> std::result::Result<(), String> {
    if filter.is_empty() {
        return Err("a topic filter must not be empty".into());
    }
    let levels: Vec<&str> = filter.split('/').collect();
    for (i, level) in levels.iter().enumerate() {
        let wildcard_inside = level.len() > 1 && level.contains(['+', '#']);
        let hash_not_last = *level == "#" && i + 1 != levels.len();
        if wildcard_inside || hash_not_last || level.contains('\0') {
            return Err(format!(
                "\"{filter}\" is not a valid MQTT topic filter: '+' and '#' must be whole levels \
                 and '#' only the last one"
            ));
        }
    }
    Ok(())
}

fn serial(raw: Vec<RawSerial>, cx: &Ctx<'_>) -> Result<Vec<SerialConfig>> {
    let mut ports = HashSet::new();
    let mut out = Vec::with_capacity(raw.len());
    for (i, s) in raw.into_iter().enumerate() {
        let key = |k: &str| format!("serial[{i}].{k}");
        let port = s.port.ok_or_else(|| cx.missing(&key("port")))?;
        if port.as_os_str().is_empty() {
            return Err(cx.invalid(
                &key("port"),
                "expected a device path such as \"/dev/ttyUSB0\"",
            ));
        }
        if !ports.insert(port.clone()) {
            return Err(cx.invalid(
                &key("port"),
                format!(
                    "{} is already used by an earlier [[serial]] entry",
                    port.display()
                ),
            ));
        }
        let device = match s.device {
            Some(device) => device,
            None => port
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .ok_or_else(|| {
                    cx.invalid(
                        &key("device"),
                        format!(
                            "cannot default to the file name of \"{}\"; set device",
                            port.display()
                        ),
                    )
                })?,
        };
        cx.name_part(&key("device"), &device, TOPIC_LEVEL_FORBIDDEN)?;
        out.push(SerialConfig {
            baud: cx.positive(&key("baud"), s.baud.unwrap_or(d::SERIAL_BAUD))?,
            max_line_bytes: cx.input_size(
                &key("max_line_bytes"),
                s.max_line_bytes.unwrap_or(d::SERIAL_MAX_LINE_BYTES),
            )?,
            reopen_max_ms: cx.positive(
                &key("reopen_max_ms"),
                s.reopen_max_ms.unwrap_or(d::SERIAL_REOPEN_MAX_MS),
            )?,
            port,
            device,
        });
    }
    Ok(out)
}

fn buffer(raw: RawBuffer, cx: &Ctx<'_>) -> Result<BufferConfig> {
    Ok(BufferConfig {
        max_bytes: cx.positive(
            "buffer.max_bytes",
            raw.max_bytes.unwrap_or(d::BUFFER_MAX_BYTES),
        )?,
        when_full: raw.when_full.unwrap_or(WhenFull::DropOldest),
        max_age_s: cx.positive(
            "buffer.max_age_s",
            raw.max_age_s.unwrap_or(d::BUFFER_MAX_AGE_S),
        )?,
        alarm_max_bytes: cx.positive(
            "buffer.alarm_max_bytes",
            raw.alarm_max_bytes.unwrap_or(d::BUFFER_ALARM_MAX_BYTES),
        )?,
        commit_interval_ms: cx.positive(
            "buffer.commit_interval_ms",
            raw.commit_interval_ms
                .unwrap_or(d::BUFFER_COMMIT_INTERVAL_MS),
        )?,
        commit_max_records: cx.positive(
            "buffer.commit_max_records",
            raw.commit_max_records
                .unwrap_or(d::BUFFER_COMMIT_MAX_RECORDS),
        )?,
        commit_stretch_ms: match raw.commit_stretch_ms.unwrap_or(d::BUFFER_COMMIT_STRETCH_MS) {
            ms if ms > d::BUFFER_COMMIT_STRETCH_MAX_MS => {
                return Err(cx.invalid(
                    "buffer.commit_stretch_ms",
                    format!(
                        "must be at most {} (devices wait this long for a PUBACK), found {ms}",
                        d::BUFFER_COMMIT_STRETCH_MAX_MS
                    ),
                ));
            }
            ms => ms,
        },
        cache_capacity_bytes: cx.positive(
            "buffer.cache_capacity_bytes",
            raw.cache_capacity_bytes
                .unwrap_or(d::BUFFER_CACHE_CAPACITY_BYTES),
        )?,
        dead_letter_max_bytes: cx.positive(
            "buffer.dead_letter_max_bytes",
            raw.dead_letter_max_bytes
                .unwrap_or(d::BUFFER_DEAD_LETTER_MAX_BYTES),
        )?,
        refused_dead_letter_max_bytes: cx.positive(
            "buffer.refused_dead_letter_max_bytes",
            raw.refused_dead_letter_max_bytes
                .unwrap_or(d::BUFFER_REFUSED_DEAD_LETTER_MAX_BYTES),
        )?,
    })
}

fn upstream(raw: RawUpstream, cx: &Ctx<'_>) -> Result<UpstreamConfig> {
    let raw_forwarding = raw.forwarding();
    let url = cx.url("upstream.url", raw.url, d::UPSTREAM_URL, &["http", "https"])?;
    let files = TlsFiles {
        ca_file: raw.ca_file,
        client_cert_file: raw.client_cert_file,
        client_key_file: raw.client_key_file,
        alpn: Vec::new(),
    };
    let tls = if url.scheme() == "https" {
        Some(cx.tls("upstream", &files)?)
    } else {
        let why = format!(
            "an https:// url, but upstream.url is \"{}\"",
            redact_url(&url)
        );
        cx.no_tls_keys("upstream", &files, &why)?;
        None
    };
    let bearer_token = cx.secret("upstream.bearer_token_env", raw.bearer_token_env.as_ref())?;
    let forwarding = forwarding("upstream", raw_forwarding, &d::UPSTREAM_FORWARDING, cx)?;
    let retry_on_status = raw
        .retry_on_status
        .unwrap_or_else(|| d::UPSTREAM_RETRY_ON_STATUS.to_vec());
    for (i, status) in retry_on_status.iter().enumerate() {
        if !(400..=599).contains(status) {
            return Err(cx.invalid(
                &format!("upstream.retry_on_status[{i}]"),
                format!("expected an HTTP error status from 400 to 599, found {status}"),
            ));
        }
    }
    let ForwardingConfig {
        batch_max_records,
        batch_max_bytes,
        linger_ms,
        timeout_ms,
        retry_initial_ms,
        retry_max_ms,
        max_in_flight,
    } = forwarding;
    Ok(UpstreamConfig {
        url,
        bearer_token_env: raw.bearer_token_env,
        bearer_token,
        ca_file: files.ca_file,
        client_cert_file: files.client_cert_file,
        client_key_file: files.client_key_file,
        tls,
        batch_max_records,
        batch_max_bytes,
        linger_ms,
        compression: raw.compression.unwrap_or(Compression::Gzip),
        timeout_ms,
        retry_initial_ms,
        retry_max_ms,
        max_in_flight,
        retry_on_status,
        retry_on_5xx: raw.retry_on_5xx.unwrap_or(d::UPSTREAM_RETRY_ON_5XX),
    })
}

/// The forwarding keys of one sink (`section` is `upstream` or `sink[i]`), with the defaults of
/// its kind: the same rules and messages for every sink.
fn forwarding(
    section: &str,
    raw: RawForwarding,
    default: &ForwardingConfig,
    cx: &Ctx<'_>,
) -> Result<ForwardingConfig> {
    let key = |k: &str| format!("{section}.{k}");
    let retry_initial_ms = cx.positive(
        &key("retry_initial_ms"),
        raw.retry_initial_ms.unwrap_or(default.retry_initial_ms),
    )?;
    let retry_max_ms = raw.retry_max_ms.unwrap_or(default.retry_max_ms);
    if retry_initial_ms > retry_max_ms {
        return Err(cx.invalid(
            &key("retry_initial_ms"),
            format!(
                "must be <= {} ({retry_max_ms}), found {retry_initial_ms}",
                key("retry_max_ms")
            ),
        ));
    }
    Ok(ForwardingConfig {
        batch_max_records: cx.positive(
            &key("batch_max_records"),
            raw.batch_max_records.unwrap_or(default.batch_max_records),
        )?,
        batch_max_bytes: cx.positive(
            &key("batch_max_bytes"),
            raw.batch_max_bytes.unwrap_or(default.batch_max_bytes),
        )?,
        linger_ms: raw.linger_ms.unwrap_or(default.linger_ms),
        timeout_ms: cx.positive(
            &key("timeout_ms"),
            raw.timeout_ms.unwrap_or(default.timeout_ms),
        )?,
        retry_initial_ms,
        retry_max_ms,
        max_in_flight: cx.positive(
            &key("max_in_flight"),
            raw.max_in_flight.unwrap_or(default.max_in_flight),
        )?,
    })
}

fn admin(raw: RawAdmin, cx: &Ctx<'_>) -> Result<AdminConfig> {
    let listen = cx.socket_addr("admin.listen", raw.listen, d::ADMIN_LISTEN)?;
    if !listen.ip().is_loopback() && raw.token_env.is_none() {
        return Err(cx.invalid(
            "admin.listen",
            format!(
                "{listen} is reachable from the network; set admin.token_env, or listen on a \
                 loopback address such as 127.0.0.1"
            ),
        ));
    }
    let token = cx.secret("admin.token_env", raw.token_env.as_ref())?;
    Ok(AdminConfig {
        listen,
        token_env: raw.token_env,
        token,
    })
}

fn ingest(raw: RawIngest, cx: &Ctx<'_>) -> Result<IngestConfig> {
    let max_id_bytes = cx.positive(
        "ingest.max_id_bytes",
        raw.max_id_bytes.unwrap_or(d::INGEST_MAX_ID_BYTES),
    )?;
    if max_id_bytes > d::INGEST_MAX_ID_BYTES_LIMIT {
        return Err(cx.invalid(
            "ingest.max_id_bytes",
            format!(
                "must be at most {} (an id is one MQTT topic level), found {max_id_bytes}",
                d::INGEST_MAX_ID_BYTES_LIMIT
            ),
        ));
    }
    let max_past_ts_s = raw.max_past_ts_s.unwrap_or(d::INGEST_MAX_PAST_TS_S);
    Ok(IngestConfig {
        max_id_bytes,
        max_future_ts_s: raw.max_future_ts_s.unwrap_or(d::INGEST_MAX_FUTURE_TS_S),
        max_past_ts_s: (max_past_ts_s != 0).then_some(max_past_ts_s),
    })
}

fn alarms(raw: Vec<RawAlarm>, cx: &Ctx<'_>) -> Result<Vec<AlarmRule>> {
    let mut names = HashSet::new();
    raw.into_iter()
        .enumerate()
        .map(|(i, rule)| {
            let rule = alarm(i, rule, cx)?;
            if !names.insert(rule.name.clone()) {
                return Err(cx.invalid(
                    &format!("alarm[{i}].name"),
                    format!(
                        "\"{}\" is already the name of an earlier rule; names must be unique",
                        rule.name
                    ),
                ));
            }
            Ok(rule)
        })
        .collect()
}

fn alarm(i: usize, raw: RawAlarm, cx: &Ctx<'_>) -> Result<AlarmRule> {
    let key = |k: &str| format!("alarm[{i}].{k}");
    let name = raw.name.ok_or_else(|| cx.missing(&key("name")))?;
    cx.name_part(&key("name"), &name, TOPIC_LEVEL_FORBIDDEN)?;
    let rule = format!("rule \"{name}\"");

    for (k, v) in [
        ("above", raw.above),
        ("below", raw.below),
        ("clear_below", raw.clear_below),
        ("clear_above", raw.clear_above),
        ("rate_above_per_s", raw.rate_above_per_s),
    ] {
        if let Some(v) = v.filter(|v| !v.is_finite()) {
            return Err(cx.invalid(
                &key(k),
                format!("expected a finite number, found {v} ({rule})"),
            ));
        }
    }

    let threshold_keys: Vec<&str> = [
        ("above", raw.above.is_some()),
        ("below", raw.below.is_some()),
        ("clear_below", raw.clear_below.is_some()),
        ("clear_above", raw.clear_above.is_some()),
    ]
    .into_iter()
    .filter_map(|(k, set)| set.then_some(k))
    .collect();
    let kinds: Vec<&str> = [
        threshold_keys.first().copied(),
        raw.rate_above_per_s.map(|_| "rate_above_per_s"),
        raw.no_data_s.map(|_| "no_data_s"),
    ]
    .into_iter()
    .flatten()
    .collect();
    let condition = match kinds.as_slice() {
        [] => {
            return Err(cx.invalid(
                &format!("alarm[{i}]"),
                format!(
                    "{rule} has no condition; set above and/or below (thresholds), \
                     rate_above_per_s, or no_data_s"
                ),
            ));
        }
        [_, second, ..] => {
            return Err(cx.invalid(
                &key(second),
                format!(
                    "{rule} mixes kinds of condition ({}); a rule has exactly one: thresholds \
                     (above/below/clear_*), rate_above_per_s, or no_data_s",
                    kinds.join(" and ")
                ),
            ));
        }
        ["rate_above_per_s"] => {
            let rate = raw.rate_above_per_s.unwrap_or_default();
            if rate <= 0.0 {
                return Err(cx.invalid(
                    &key("rate_above_per_s"),
                    format!("must be greater than 0, found {rate} ({rule})"),
                ));
            }
            AlarmCondition::Rate {
                rate_above_per_s: rate,
            }
        }
        ["no_data_s"] => {
            let no_data_s = cx.positive(&key("no_data_s"), raw.no_data_s.unwrap_or_default())?;
            for (k, v) in [("for_s", raw.for_s), ("clear_for_s", raw.clear_for_s)] {
                if v.is_some_and(|v| v != 0) {
                    return Err(cx.invalid(
                        &key(k),
                        format!("not used with no_data_s, whose value already is the delay ({rule}); remove it or set 0"),
                    ));
                }
            }
            AlarmCondition::NoData { no_data_s }
        }
        [_] => threshold(
            raw.above,
            raw.below,
            raw.clear_below,
            raw.clear_above,
            &key,
            &rule,
            cx,
        )?,
    };

    let device = raw.device.unwrap_or_else(|| d::ALARM_GLOB.to_owned());
    let metric = raw.metric.unwrap_or_else(|| d::ALARM_GLOB.to_owned());
    let device_glob = glob(&key("device"), &device, cx)?;
    let metric_glob = glob(&key("metric"), &metric, cx)?;
    Ok(AlarmRule {
        name,
        device,
        metric,
        condition,
        for_s: raw.for_s.unwrap_or(d::ALARM_FOR_S),
        clear_for_s: raw.clear_for_s.unwrap_or(d::ALARM_FOR_S),
        severity: raw.severity.unwrap_or(Severity::Warning),
        device_glob,
        metric_glob,
    })
}

fn threshold(
    above: Option<f64>,
    below: Option<f64>,
    clear_below: Option<f64>,
    clear_above: Option<f64>,
    key: &dyn Fn(&str) -> String,
    rule: &str,
    cx: &Ctx<'_>,
) -> Result<AlarmCondition> {
    if clear_below.is_some() && above.is_none() {
        return Err(cx.invalid(
            &key("clear_below"),
            format!("only applies with above, which is not set ({rule})"),
        ));
    }
    if clear_above.is_some() && below.is_none() {
        return Err(cx.invalid(
            &key("clear_above"),
            format!("only applies with below, which is not set ({rule})"),
        ));
    }
    let upper = above.map(|trigger| Limit {
        trigger,
        clear: clear_below.unwrap_or(trigger),
    });
    let lower = below.map(|trigger| Limit {
        trigger,
        clear: clear_above.unwrap_or(trigger),
    });
    if let Some(l) = upper.filter(|l| l.clear > l.trigger) {
        return Err(cx.invalid(
            &key("clear_below"),
            format!(
                "must be <= above ({:?}), found {:?}: the alarm would clear while still raised \
                 ({rule})",
                l.trigger, l.clear
            ),
        ));
    }
    if let Some(l) = lower.filter(|l| l.clear < l.trigger) {
        return Err(cx.invalid(
            &key("clear_above"),
            format!(
                "must be >= below ({:?}), found {:?}: the alarm would clear while still raised \
                 ({rule})",
                l.trigger, l.clear
            ),
        ));
    }
    if let (Some(u), Some(l)) = (upper, lower) {
        if l.trigger >= u.trigger {
            return Err(cx.invalid(
                &key("below"),
                format!(
                    "must be < above ({:?}) when both are set, found {:?}: every value would be \
                     an alarm ({rule})",
                    u.trigger, l.trigger
                ),
            ));
        }
        if l.clear > u.clear {
            return Err(cx.invalid(
                &key("clear_above"),
                format!(
                    "must be <= clear_below ({:?}), found {:?}: no value could clear the alarm \
                     ({rule})",
                    u.clear, l.clear
                ),
            ));
        }
    }
    Ok(AlarmCondition::Threshold {
        above: upper,
        below: lower,
    })
}

pub(crate) fn glob(key: &str, pattern: &str, cx: &Ctx<'_>) -> Result<CompiledGlob> {
    CompiledGlob::new(pattern).map_err(|e| {
        cx.invalid(
            key,
            format!(
                "expected a glob such as \"*\", \"temp*\" or \"{{a,b}}\", found \"{pattern}\": {}",
                e.kind()
            ),
        )
    })
}

/// The `[[sink]]` tables, in file order.
fn sinks(
    raw: Vec<RawSink>,
    gateway_id: &str,
    mqtt: &MqttConfig,
    cx: &Ctx<'_>,
) -> Result<Vec<SinkConfig>> {
    let mut names = HashSet::new();
    // MQTT sessions by broker: (host, port, client id) -> who has it. A broker disconnects a
    // session when another connects with its client id, so two of ours would take turns forever.
    let mut sessions: Vec<((String, u16, String), String)> = Vec::new();
    if mqtt.mode == MqttMode::External {
        sessions.push((
            (
                mqtt.broker_host().to_ascii_lowercase(),
                mqtt.broker_port(),
                mqtt.client_id.clone(),
            ),
            "[mqtt]".to_owned(),
        ));
    }
    let mut out = Vec::with_capacity(raw.len());
    for (i, raw) in raw.into_iter().enumerate() {
        let sink = sink(i, raw, gateway_id, cx)?;
        if !names.insert(sink.name.clone()) {
            return Err(cx.invalid(
                &format!("sink[{i}].name"),
                format!(
                    "\"{}\" is already the name of an earlier sink; names must be unique (each \
                     is a buffer consumer)",
                    sink.name
                ),
            ));
        }
        match &sink.kind {
            SinkKind::Mqtt(m) => {
                let session = (
                    m.broker_host().to_ascii_lowercase(),
                    m.broker_port(),
                    m.client_id.clone(),
                );
                if let Some((_, owner)) = sessions.iter().find(|(s, _)| *s == session) {
                    return Err(cx.invalid(
                        &format!("sink[{i}].client_id"),
                        format!(
                            "\"{}\" is already the client id of {owner} on {}:{}; the broker \
                             would disconnect one session for the other, over and over",
                            m.client_id, session.0, session.1
                        ),
                    ));
                }
                sessions.push((session, format!("sink \"{}\"", sink.name)));
            }
            // A Kafka client id names no session: producers that share one only share a line
            // in the broker's logs and quotas.
            SinkKind::Kafka(_) => {}
        }
        out.push(sink);
    }
    Ok(out)
}

/// The kinds of `[[sink]]` this build supports (their spellings are [`d::SINK_KINDS`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Mqtt,
    Kafka,
}

impl Kind {
    fn parse(kind: &str) -> Option<Kind> {
        match kind {
            "mqtt" => Some(Kind::Mqtt),
            "kafka" => Some(Kind::Kafka),
            _ => None,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Kind::Mqtt => "mqtt",
            Kind::Kafka => "kafka",
        }
    }

    /// The other kind, whose own keys this kind refuses.
    fn other(self) -> Kind {
        match self {
            Kind::Mqtt => Kind::Kafka,
            Kind::Kafka => Kind::Mqtt,
        }
    }

    /// The keys only this kind of sink has.
    fn own_keys(self) -> &'static [&'static str] {
        match self {
            Kind::Mqtt => MQTT_ONLY_SINK_KEYS,
            Kind::Kafka => KAFKA_ONLY_SINK_KEYS,
        }
    }
}

/// What is said about a `sink[].kind` this build does not support.
fn unsupported_sink_kind(kind: &str) -> String {
    let supported = d::SINK_KINDS
        .iter()
        .map(|k| format!("\"{k}\""))
        .collect::<Vec<_>>()
        .join(", ");
    format!("expected one of the supported kinds {supported}, found \"{kind}\"")
}

/// An unknown key in a `[[sink]]` table. When the table's `kind` is one this build does not
/// support, the key most likely is one of that kind: the kind is what is reported. When the kind
/// is known, the allowed keys listed are those of that kind.
pub(crate) fn sink_unknown_key(mut err: ConfigError, cx: &Ctx<'_>) -> ConfigError {
    let ConfigError::UnknownKey { key, allowed, .. } = &mut err else {
        return err;
    };
    let Some(kind_key) = key
        .strip_prefix("sink[")
        .and_then(|rest| rest.find("].").map(|end| &key[..end + "sink[]".len()]))
        .map(|table| format!("{table}.kind"))
    else {
        return err;
    };
    match cx.index.string_at(&kind_key) {
        Some(kind) => match Kind::parse(kind) {
            None => cx.invalid(&kind_key, unsupported_sink_kind(kind)),
            Some(kind) => {
                let foreign = kind.other().own_keys();
                allowed.retain(|k| !foreign.contains(&k.as_str()));
                err
            }
        },
        None => err,
    }
}

fn sink(i: usize, raw: RawSink, gateway_id: &str, cx: &Ctx<'_>) -> Result<SinkConfig> {
    let section = format!("sink[{i}]");
    let key = |k: &str| format!("{section}.{k}");
    let name = raw.name.clone().ok_or_else(|| cx.missing(&key("name")))?;
    sink_name(&key("name"), &name, cx)?;
    let written_kind = raw.kind.clone().ok_or_else(|| cx.missing(&key("kind")))?;
    let kind = Kind::parse(&written_kind)
        .ok_or_else(|| cx.invalid(&key("kind"), unsupported_sink_kind(&written_kind)))?;
    let other = kind.other();
    if let Some(k) = other.own_keys().iter().find(|k| raw.kind_key_written(k)) {
        return Err(cx.invalid(
            &key(k),
            format!(
                "is a key of kind = \"{}\" sinks; this sink is kind = \"{}\"",
                other.as_str(),
                kind.as_str()
            ),
        ));
    }
    // Before the kind's own keys: which topics a Kafka sink needs depends on its lanes.
    let lanes = sink_lanes(&key("lanes"), raw.lanes.as_deref(), cx)?;
    let (kind, default_forwarding) = match kind {
        Kind::Mqtt => {
            let m = mqtt_sink(&section, &raw, cx)?;
            for lane in lanes.iter() {
                m.topic
                    .check_filled(gateway_id, lane)
                    .map_err(|why| cx.invalid(&key("topic"), why))?;
            }
            (SinkKind::Mqtt(m), d::MQTT_SINK_FORWARDING)
        }
        Kind::Kafka => {
            let k = crate::kafka::sink(&section, &raw, gateway_id, lanes, cx)?;
            (SinkKind::Kafka(k), d::KAFKA_SINK_FORWARDING)
        }
    };
    let forwarding = forwarding(&section, raw.forwarding(), &default_forwarding, cx)?;
    Ok(SinkConfig {
        name,
        lanes,
        forwarding,
        kind,
    })
}

/// `sink[].name`: a buffer consumer name and a Prometheus label value.
fn sink_name(key: &str, name: &str, cx: &Ctx<'_>) -> Result<()> {
    if name.is_empty() || name.len() > d::SINK_NAME_MAX_BYTES {
        return Err(cx.invalid(
            key,
            format!(
                "expected 1 to {} bytes, found {} ({name:?})",
                d::SINK_NAME_MAX_BYTES,
                name.len()
            ),
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '-')))
    {
        return Err(cx.invalid(
            key,
            format!(
                "{name:?} contains {c:?}; allowed: a-z, 0-9, '_' and '-' (the name is a buffer \
                 consumer and a metrics label)"
            ),
        ));
    }
    if d::SINK_RESERVED_NAMES.contains(&name) {
        let whose = match name {
            "upstream" => "the [upstream] HTTP sink",
            _ => "the gateway's local alarm publisher",
        };
        return Err(cx.invalid(
            key,
            format!("\"{name}\" is reserved: it is the buffer consumer of {whose}"),
        ));
    }
    Ok(())
}

/// `sink[].lanes`: a non-empty set, each lane at most once.
fn sink_lanes(key: &str, written: Option<&[SinkLane]>, cx: &Ctx<'_>) -> Result<SinkLanes> {
    let Some(written) = written else {
        return Ok(SinkLanes::ALL);
    };
    if written.is_empty() {
        return Err(cx.invalid(
            key,
            "expected one or both of \"readings\" and \"alarms\", found []",
        ));
    }
    let mut lanes = SinkLanes {
        readings: false,
        alarms: false,
    };
    for (j, lane) in written.iter().enumerate() {
        if lanes.contains(*lane) {
            return Err(cx.invalid(
                &format!("{key}[{j}]"),
                format!("\"{lane}\" is listed twice"),
            ));
        }
        match lane {
            SinkLane::Readings => lanes.readings = true,
            SinkLane::Alarms => lanes.alarms = true,
        }
    }
    Ok(lanes)
}

/// The keys of a `kind = "mqtt"` sink, checked like `[mqtt]`'s.
fn mqtt_sink(section: &str, raw: &RawSink, cx: &Ctx<'_>) -> Result<MqttSinkConfig> {
    let key = |k: &str| format!("{section}.{k}");
    let url = raw.url.clone().ok_or_else(|| cx.missing(&key("url")))?;
    let url = cx.url(&key("url"), Some(url), "", &["mqtt", "mqtts"])?;
    if !matches!(url.path(), "" | "/") || url.query().is_some() || url.fragment().is_some() {
        return Err(cx.invalid(
            &key("url"),
            format!(
                "expected mqtt://host[:port] or mqtts://host[:port] with nothing after the port, \
                 found \"{}\"",
                redact_url(&url)
            ),
        ));
    }

    let client_id = raw
        .client_id
        .clone()
        .ok_or_else(|| cx.missing(&key("client_id")))?;
    cx.name_part(&key("client_id"), &client_id, TOPIC_LEVEL_FORBIDDEN)?;
    if client_id.len() > d::MQTT_SINK_CLIENT_ID_MAX_BYTES {
        return Err(cx.invalid(
            &key("client_id"),
            format!(
                "must be at most {} bytes, found {}",
                d::MQTT_SINK_CLIENT_ID_MAX_BYTES,
                client_id.len()
            ),
        ));
    }

    let files = TlsFiles {
        ca_file: raw.ca_file.clone(),
        client_cert_file: raw.client_cert_file.clone(),
        client_key_file: raw.client_key_file.clone(),
        alpn: Vec::new(),
    };
    let tls = if url.scheme() == "mqtts" {
        Some(cx.tls(section, &files)?)
    } else {
        let why = format!(
            "an mqtts:// url, but {section}.url is \"{}\"",
            redact_url(&url)
        );
        cx.no_tls_keys(section, &files, &why)?;
        None
    };

    let topic = raw
        .topic
        .as_deref()
        .ok_or_else(|| cx.missing(&key("topic")))?;
    let topic = SinkTopic::new(topic).map_err(|why| cx.invalid(&key("topic"), why))?;

    if raw.password_env.is_some() && raw.username.is_none() {
        return Err(cx.invalid(
            &key("password_env"),
            format!("needs {section}.username: MQTT sends a password only with a username"),
        ));
    }
    let password = cx.secret(&key("password_env"), raw.password_env.as_ref())?;

    let keep_alive_s = raw.keep_alive_s.unwrap_or(d::MQTT_SINK_KEEP_ALIVE_S);
    let keep_alive_range = d::MQTT_SINK_KEEP_ALIVE_MIN_S..=d::MQTT_SINK_KEEP_ALIVE_MAX_S;
    if !keep_alive_range.contains(&keep_alive_s) {
        return Err(cx.invalid(
            &key("keep_alive_s"),
            format!(
                "expected {} to {} seconds, found {keep_alive_s}",
                keep_alive_range.start(),
                keep_alive_range.end()
            ),
        ));
    }
    let max_message_bytes = raw
        .max_message_bytes
        .unwrap_or(d::MQTT_SINK_MAX_MESSAGE_BYTES);
    let message_range = d::MQTT_SINK_MAX_MESSAGE_BYTES_MIN..=d::MQTT_SINK_MAX_MESSAGE_BYTES_LIMIT;
    if !message_range.contains(&max_message_bytes) {
        return Err(cx.invalid(
            &key("max_message_bytes"),
            format!(
                "expected {} to {} bytes, found {max_message_bytes}",
                message_range.start(),
                message_range.end()
            ),
        ));
    }

    Ok(MqttSinkConfig {
        url,
        client_id,
        username: raw.username.clone(),
        password_env: raw.password_env.clone(),
        password,
        ca_file: files.ca_file,
        client_cert_file: files.client_cert_file,
        client_key_file: files.client_key_file,
        tls,
        topic,
        keep_alive_s,
        max_message_bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_supported_kind_spelling_parses_to_its_kind() {
        for spelling in d::SINK_KINDS {
            let kind = Kind::parse(spelling).unwrap();
            assert_eq!(kind.as_str(), *spelling);
            assert_eq!(kind.other().other(), kind);
        }
        assert_eq!(Kind::parse("Kafka"), None);
    }
}
