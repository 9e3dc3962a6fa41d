//! Payload and line decoding: WIRE.md §1 (MQTT) and §2 (serial) into readings.
//!
//! Pure functions of (bytes, where they came from, receive time). Every way a payload can be
//! unreadable is a [`Reject`] with a stable [`Reject::reason`] used as the metrics label and the
//! dead-letter reason. Nothing here panics on any input (property-tested and fuzzed).
//!
//! # One gate for every reading
//!
//! The `[ingest]` rules of WIRE.md §1 (ids of 1..`max_id_bytes` bytes of printable UTF-8 without
//! `+`, `#` or control characters; a timestamp within `max_future_ts_s` / `max_past_ts_s` of the
//! gateway's clock; a finite value) live in one place, [`IngestRules::reading`], the only way a
//! [`Reading`] is built here. Both decoders build every reading through it, and a source that
//! makes readings without a payload to decode (a Modbus poller) must use it too, so no source can
//! let a reading through that another would refuse. The check runs before anything else sees the
//! reading: the alarm engine, the buffer, the local alarm topics. One bad reading rejects its
//! whole message or line, like any other unreadable part: the message is dead-lettered as sent.
//!
//! All time arithmetic is checked: a SenML `bt + t`, seconds to milliseconds, an RFC 3339 time
//! to milliseconds and a relative time added to the clock either fit in an `i64` of milliseconds
//! or the reading is `bad_ts`. Any arithmetic on values (SenML `bv + v`) that is not finite is
//! `bad_value`.

use crate::ops::telemetry::is_unsafe_char;
use gateway_buffer::{Reading, Source};
use gateway_config::TopicTemplate;
use serde_json::{Map, Value};
use std::fmt;

/// How much of an oversized payload is kept in its dead letter: enough to see what sent it,
/// without letting one message fill the dead-letter store.
pub const TOO_LARGE_EXCERPT_BYTES: usize = 4096;

/// Why a payload or line was not turned into readings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reject {
    /// The payload is not UTF-8 (binary noise on a line, a corrupt message).
    BadUtf8,
    /// It looked like JSON (starts with `{` or `[`) but did not parse.
    BadJson(String),
    /// A value is present but not a finite number (`NaN`, a string, `true`, `1e999`).
    BadValue(String),
    /// An object or SenML record carries no value at all.
    NoValue,
    /// `ts` (or SenML `bt`/`t`) is neither epoch milliseconds nor an RFC 3339 string.
    BadTimestamp(String),
    /// The topic matches no `mqtt.topic_templates`, or names no metric for a single value.
    UnknownTopic,
    /// The payload is larger than `mqtt.max_payload_bytes`.
    TooLarge { size: usize, limit: usize },
    /// A serial line's `*HH` checksum does not match its bytes.
    BadChecksum,
    /// A serial line is longer than the port's `max_line_bytes`.
    LineTooLong,
    /// A serial line is neither a CSV reading nor a JSON object of the contract's shape.
    BadLine(String),
    /// A serial line was cut short by the port closing.
    PartialLine,
    /// The payload is empty, or an object/pack holds no reading.
    Empty,
    /// A device or metric id is empty, longer than `ingest.max_id_bytes`, or holds `+`, `#` or a
    /// control character (WIRE.md §1).
    BadId(String),
    /// A timestamp is further ahead of the gateway's clock than `ingest.max_future_ts_s`, or
    /// further back than `ingest.max_past_ts_s` (when that is set).
    TsOutOfBounds {
        /// The reading's timestamp, in ms since the epoch.
        ts_ms: i64,
        /// The gateway's clock when it was read.
        now_ms: i64,
    },
}

impl Reject {
    /// The stable label used in metrics (`reason="…"`) and dead letters.
    pub fn reason(&self) -> &'static str {
        match self {
            Reject::BadUtf8 => "bad_utf8",
            Reject::BadJson(_) => "bad_json",
            Reject::BadValue(_) => "bad_value",
            Reject::NoValue => "no_value",
            Reject::BadTimestamp(_) => "bad_ts",
            Reject::UnknownTopic => "unknown_topic",
            Reject::TooLarge { .. } => "too_large",
            Reject::BadChecksum => "bad_checksum",
            Reject::LineTooLong => "line_too_long",
            Reject::BadLine(_) => "bad_line",
            Reject::PartialLine => "partial_line",
            Reject::Empty => "empty",
            Reject::BadId(_) => "bad_id",
            Reject::TsOutOfBounds { .. } => "bad_ts",
        }
    }

    /// What of `payload` goes into its dead letter: all of it, except the first
    /// [`TOO_LARGE_EXCERPT_BYTES`] of an oversized one.
    pub fn dead_letter_payload<'p>(&self, payload: &'p [u8]) -> &'p [u8] {
        match self {
            Reject::TooLarge { .. } => &payload[..payload.len().min(TOO_LARGE_EXCERPT_BYTES)],
            _ => payload,
        }
    }

    /// Every reason label, so metrics can export zeros before the first rejection.
    pub const ALL_REASONS: [&'static str; 13] = [
        "bad_utf8",
        "bad_json",
        "bad_value",
        "no_value",
        "bad_ts",
        "unknown_topic",
        "too_large",
        "bad_checksum",
        "line_too_long",
        "bad_line",
        "partial_line",
        "empty",
        "bad_id",
    ];
}

impl fmt::Display for Reject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reject::BadJson(e) => write!(f, "bad JSON: {e}"),
            Reject::BadValue(v) => write!(f, "value is not a finite number: {v}"),
            Reject::BadTimestamp(v) => write!(f, "unreadable timestamp: {v}"),
            Reject::TooLarge { size, limit } => {
                write!(f, "payload of {size} bytes is over the {limit}-byte limit")
            }
            Reject::BadLine(why) => write!(f, "unreadable line: {why}"),
            Reject::BadId(why) => write!(f, "bad id: {why}"),
            Reject::TsOutOfBounds { ts_ms, now_ms } => {
                let (dir, by) = if ts_ms > now_ms {
                    ("ahead of", ts_ms.saturating_sub(*now_ms))
                } else {
                    ("behind", now_ms.saturating_sub(*ts_ms))
                };
                write!(
                    f,
                    "timestamp {ts_ms} is {} s {dir} the gateway's clock ({now_ms})",
                    by / 1000
                )
            }
            other => f.write_str(other.reason()),
        }
    }
}

/// The `[ingest]` rules every reading must pass (WIRE.md §1), whichever source read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IngestRules {
    max_id_bytes: usize,
    max_future_ms: i64,
    /// `None`: no lower bound.
    max_past_ms: Option<i64>,
}

impl Default for IngestRules {
    /// The rules of a config without `[ingest]`.
    fn default() -> Self {
        use gateway_config::defaults as d;
        let past = d::INGEST_MAX_PAST_TS_S;
        IngestRules::new(&gateway_config::IngestConfig {
            max_id_bytes: d::INGEST_MAX_ID_BYTES,
            max_future_ts_s: d::INGEST_MAX_FUTURE_TS_S,
            max_past_ts_s: (past != 0).then_some(past),
        })
    }
}

/// Which id of a reading a rule is about (for the rejection's detail).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdKind {
    Device,
    Metric,
}

impl IngestRules {
    /// The rules of a validated `[ingest]` section.
    pub fn new(c: &gateway_config::IngestConfig) -> IngestRules {
        let ms = |s: u64| i64::try_from(s).unwrap_or(i64::MAX).saturating_mul(1000);
        IngestRules {
            max_id_bytes: c.max_id_bytes,
            max_future_ms: ms(c.max_future_ts_s),
            max_past_ms: c.max_past_ts_s.map(ms),
        }
    }

    /// Longest id in bytes.
    pub fn max_id_bytes(&self) -> usize {
        self.max_id_bytes
    }

    /// An id is 1..=`max_id_bytes` bytes of printable UTF-8 without `+` or `#` (they would be
    /// wildcards in the local alarm topic) or control characters (they would forge log lines
    /// and drive terminals).
    pub fn check_id(&self, kind: IdKind, id: &str) -> Result<(), Reject> {
        let what = match kind {
            IdKind::Device => "device",
            IdKind::Metric => "metric",
        };
        let problem = if id.is_empty() {
            "is empty".to_owned()
        } else if id.len() > self.max_id_bytes {
            format!(
                "is {} bytes, over the {}-byte limit",
                id.len(),
                self.max_id_bytes
            )
        } else if let Some(c) = id
            .chars()
            .find(|&c| c == '+' || c == '#' || is_unsafe_char(c))
        {
            format!("contains {c:?}")
        } else {
            return Ok(());
        };
        Err(Reject::BadId(format!(
            "{what} id {:?} {problem}",
            truncate(id)
        )))
    }

    /// A timestamp no further ahead of `now_ms` than `max_future_ts_s` (nor further back than
    /// `max_past_ts_s` when that is set). Saturating: no clock or stamp overflows the check.
    pub fn check_ts(&self, ts_ms: i64, now_ms: i64) -> Result<(), Reject> {
        let too_new = ts_ms > now_ms.saturating_add(self.max_future_ms);
        let too_old = self
            .max_past_ms
            .is_some_and(|past| ts_ms < now_ms.saturating_sub(past));
        if too_new || too_old {
            return Err(Reject::TsOutOfBounds { ts_ms, now_ms });
        }
        Ok(())
    }

    /// The one way a reading is built: checks both ids, the value (finite) and the timestamp
    /// (within bounds of `now_ms`), so nothing that breaks a rule reaches the alarm engine or
    /// the buffer.
    #[allow(clippy::too_many_arguments)]
    pub fn reading(
        &self,
        device: &str,
        metric: &str,
        value: f64,
        unit: Option<String>,
        ts_ms: i64,
        now_ms: i64,
        source: Source,
    ) -> Result<Reading, Reject> {
        self.check_id(IdKind::Device, device)?;
        self.check_id(IdKind::Metric, metric)?;
        if !value.is_finite() {
            return Err(Reject::BadValue(format!(
                "{value} (the arithmetic on the values sent overflows)"
            )));
        }
        self.check_ts(ts_ms, now_ms)?;
        Ok(Reading {
            device: device.to_owned(),
            metric: metric.to_owned(),
            value,
            unit,
            ts_ms,
            source,
        })
    }
}

/// Decodes MQTT payloads per WIRE.md §1 for one set of topic templates (`mqtt.topic_templates`,
/// as loaded: each read device and metric off a topic with [`TopicTemplate::match_topic`]).
#[derive(Debug, Clone)]
pub struct MqttDecoder {
    templates: Vec<TopicTemplate>,
    max_payload_bytes: usize,
    rules: IngestRules,
}

impl MqttDecoder {
    /// A decoder with the default `[ingest]` rules; see [`MqttDecoder::with_rules`].
    pub fn new(templates: &[TopicTemplate], max_payload_bytes: usize) -> MqttDecoder {
        MqttDecoder {
            templates: templates.to_vec(),
            max_payload_bytes,
            rules: IngestRules::default(),
        }
    }

    /// The same decoder checking readings against `rules`.
    pub fn with_rules(mut self, rules: IngestRules) -> MqttDecoder {
        self.rules = rules;
        self
    }

    /// The readings in one message, or why there are none. `now_ms` stands in for a missing `ts`
    /// and bounds the timestamps.
    pub fn decode(&self, topic: &str, payload: &[u8], now_ms: i64) -> Result<Vec<Reading>, Reject> {
        if payload.len() > self.max_payload_bytes {
            return Err(Reject::TooLarge {
                size: payload.len(),
                limit: self.max_payload_bytes,
            });
        }
        let names = self
            .templates
            .iter()
            .find_map(|t| t.match_topic(topic))
            .ok_or(Reject::UnknownTopic)?;
        let text = std::str::from_utf8(payload)
            .map_err(|_| Reject::BadUtf8)?
            .trim();
        let ctx = Context {
            device: Some(names.device),
            metric: names.metric,
            source: Source::Mqtt,
            now_ms,
            rules: &self.rules,
        };
        let mut out = Vec::new();
        match text.as_bytes().first() {
            None => return Err(Reject::Empty),
            Some(b'{') => {
                let obj: Map<String, Value> = parse_json(text)?;
                object_readings(&obj, &ctx, &mut out)?;
            }
            Some(b'[') => {
                let pack: Vec<Value> = parse_json(text)?;
                senml_readings(&pack, names.device, &ctx, &mut out)?;
            }
            Some(_) => {
                let metric = names.metric.ok_or(Reject::UnknownTopic)?;
                let value = parse_number(text)?;
                out.push(ctx.reading(names.device, metric, value, None, now_ms)?);
            }
        }
        Ok(out)
    }
}

/// Decodes serial lines per WIRE.md §2 (after framing: no line terminator).
#[derive(Debug, Clone)]
pub struct SerialDecoder {
    default_device: String,
    rules: IngestRules,
}

impl SerialDecoder {
    /// A decoder with the default `[ingest]` rules; see [`SerialDecoder::with_rules`].
    pub fn new(default_device: impl Into<String>) -> SerialDecoder {
        SerialDecoder {
            default_device: default_device.into(),
            rules: IngestRules::default(),
        }
    }

    /// The same decoder checking readings against `rules`.
    pub fn with_rules(mut self, rules: IngestRules) -> SerialDecoder {
        self.rules = rules;
        self
    }

    /// The readings on one line, or why there are none.
    pub fn decode(&self, line: &[u8], now_ms: i64) -> Result<Vec<Reading>, Reject> {
        let line = verify_checksum(line)?;
        let text = std::str::from_utf8(line)
            .map_err(|_| Reject::BadUtf8)?
            .trim();
        if text.is_empty() {
            return Err(Reject::Empty);
        }
        let ctx = Context {
            device: Some(&self.default_device),
            metric: None,
            source: Source::Serial,
            now_ms,
            rules: &self.rules,
        };
        let mut out = Vec::new();
        if text.starts_with('{') {
            let obj: Map<String, Value> = parse_json(text)?;
            object_readings(&obj, &ctx, &mut out)?;
        } else {
            out.push(self.csv_reading(text, &ctx)?);
        }
        Ok(out)
    }

    /// `device,metric,value[,ts_ms]`, or `metric,value[,ts_ms]` for the port's own device.
    fn csv_reading(&self, text: &str, ctx: &Context<'_>) -> Result<Reading, Reject> {
        let fields: Vec<&str> = text.split(',').map(str::trim).collect();
        if fields.iter().any(|f| f.is_empty()) {
            return Err(Reject::BadLine("empty field".into()));
        }
        // A number in the second field means the device was left out.
        let (device, rest) = match fields.as_slice() {
            [_, second, ..] if second.parse::<f64>().is_ok() => {
                (self.default_device.as_str(), &fields[..])
            }
            [device, rest @ ..] => (*device, rest),
            [] => return Err(Reject::Empty),
        };
        let (metric, value, ts) = match rest {
            [metric, value] => (*metric, *value, None),
            [metric, value, ts] => (*metric, *value, Some(*ts)),
            _ => {
                return Err(Reject::BadLine(format!(
                    "expected 3 or 4 fields, found {}",
                    fields.len()
                )));
            }
        };
        let value = parse_number(value)?;
        let ts_ms = match ts {
            None => ctx.now_ms,
            Some(ts) => ts
                .parse::<i64>()
                .map_err(|_| Reject::BadTimestamp(truncate(ts)))?,
        };
        ctx.reading(device, metric, value, None, ts_ms)
    }
}

/// Strips and checks an optional `*HH` suffix: two hex digits, the XOR of every byte before `*`.
pub fn verify_checksum(line: &[u8]) -> Result<&[u8], Reject> {
    let n = line.len();
    if n >= 3 && line[n - 3] == b'*' {
        let (body, hex) = (&line[..n - 3], &line[n - 2..]);
        let hex = std::str::from_utf8(hex).map_err(|_| Reject::BadChecksum)?;
        let want = u8::from_str_radix(hex, 16).map_err(|_| Reject::BadChecksum)?;
        let got = body.iter().fold(0u8, |acc, b| acc ^ b);
        return if want == got {
            Ok(body)
        } else {
            Err(Reject::BadChecksum)
        };
    }
    Ok(line)
}

/// The `*HH` suffix for a line body (for simulators and tests).
pub fn checksum_suffix(body: &[u8]) -> String {
    format!("*{:02X}", body.iter().fold(0u8, |acc, b| acc ^ b))
}

struct Context<'a> {
    device: Option<&'a str>,
    metric: Option<&'a str>,
    source: Source,
    now_ms: i64,
    rules: &'a IngestRules,
}

impl Context<'_> {
    fn reading(
        &self,
        device: &str,
        metric: &str,
        value: f64,
        unit: Option<String>,
        ts_ms: i64,
    ) -> Result<Reading, Reject> {
        self.rules
            .reading(device, metric, value, unit, ts_ms, self.now_ms, self.source)
    }
}

/// Keys of a JSON object that describe readings rather than being metrics.
const RESERVED_KEYS: [&str; 5] = ["device", "metric", "value", "ts", "unit"];

/// A one-metric object (`value` present) or a multi-metric object (every other numeric key).
fn object_readings(
    obj: &Map<String, Value>,
    ctx: &Context<'_>,
    out: &mut Vec<Reading>,
) -> Result<(), Reject> {
    let device = match obj.get("device") {
        Some(Value::String(d)) => d.as_str(),
        Some(other) => {
            return Err(Reject::BadLine(format!(
                "device must be a string, found {}",
                truncate(&other.to_string())
            )));
        }
        None => ctx.device.ok_or(Reject::UnknownTopic)?,
    };
    let ts_ms = match obj.get("ts") {
        Some(ts) => parse_ts(ts)?,
        None => ctx.now_ms,
    };
    let unit = match obj.get("unit") {
        Some(Value::String(u)) => Some(u.clone()),
        Some(Value::Null) | None => None,
        Some(other) => {
            return Err(Reject::BadValue(format!(
                "unit {}",
                truncate(&other.to_string())
            )));
        }
    };
    if let Some(value) = obj.get("value") {
        let metric = match obj.get("metric") {
            Some(Value::String(m)) => m.as_str(),
            Some(other) => {
                return Err(Reject::BadLine(format!(
                    "metric must be a string, found {}",
                    truncate(&other.to_string())
                )));
            }
            None => ctx.metric.ok_or(Reject::UnknownTopic)?,
        };
        out.push(ctx.reading(device, metric, json_number(value)?, unit, ts_ms)?);
        return Ok(());
    }
    for (metric, value) in obj
        .iter()
        .filter(|(k, _)| !RESERVED_KEYS.contains(&k.as_str()))
    {
        out.push(ctx.reading(device, metric, json_number(value)?, unit.clone(), ts_ms)?);
    }
    if out.is_empty() {
        return Err(Reject::NoValue);
    }
    Ok(())
}

/// RFC 8428 SenML as WIRE.md §1 reads it: with a base name, device = `bn` less one trailing `/`
/// or `:` and metric = `n`; without one, device from the topic and metric = `n`. Base fields
/// apply to the records after them until changed; times are seconds, `bt + t`.
fn senml_readings(
    pack: &[Value],
    topic_device: &str,
    ctx: &Context<'_>,
    out: &mut Vec<Reading>,
) -> Result<(), Reject> {
    let (mut bn, mut bt, mut bu, mut bv) = (String::new(), 0.0f64, None::<String>, 0.0f64);
    for rec in pack {
        let rec = rec
            .as_object()
            .ok_or_else(|| Reject::BadJson("SenML record is not an object".into()))?;
        // RFC 8428 §4.4: labels ending in '_' must be understood; none of them is.
        if let Some(label) = rec.keys().find(|k| k.ends_with('_')) {
            return Err(Reject::BadJson(format!(
                "SenML label {:?} must be understood and is not supported",
                truncate(label)
            )));
        }
        if let Some(v) = rec.get("bn") {
            bn = v
                .as_str()
                .ok_or_else(|| Reject::BadJson("bn must be a string".into()))?
                .to_owned();
        }
        if let Some(v) = rec.get("bt") {
            bt = v
                .as_f64()
                .ok_or_else(|| Reject::BadTimestamp(truncate(&v.to_string())))?;
        }
        if let Some(v) = rec.get("bu") {
            bu = v.as_str().map(str::to_owned);
        }
        if let Some(v) = rec.get("bv") {
            bv = json_number(v)?;
        }
        let value = match rec.get("v") {
            // A finite v and bv can still sum to infinity: the reading's constructor refuses it.
            Some(v) => json_number(v)? + bv,
            // A record of only base fields, or with a string/bool/data value, carries no reading.
            None if rec.contains_key("vs") || rec.contains_key("vb") || rec.contains_key("vd") => {
                continue;
            }
            None if rec.contains_key("n") => return Err(Reject::NoValue),
            None => continue,
        };
        let n = match rec.get("n") {
            None => "",
            Some(Value::String(n)) => n.as_str(),
            Some(_) => return Err(Reject::BadJson("n must be a string".into())),
        };
        let device = if bn.is_empty() {
            topic_device
        } else {
            bn.strip_suffix(['/', ':']).unwrap_or(&bn)
        };
        let t = match rec.get("t") {
            Some(v) => v
                .as_f64()
                .ok_or_else(|| Reject::BadTimestamp(truncate(&v.to_string())))?,
            None => 0.0,
        };
        let unit = rec
            .get("u")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .or_else(|| bu.clone());
        let ts_ms = senml_time_ms(bt + t, ctx.now_ms)?;
        out.push(ctx.reading(device, n, value, unit, ts_ms)?);
    }
    if out.is_empty() {
        return Err(Reject::Empty);
    }
    Ok(())
}

/// Largest magnitude of a timestamp in ms accepted from a float (about 316,000 years): well inside
/// `i64`, so the conversion below is exact-or-rounded, never saturated.
const MAX_FLOAT_MS: f64 = 1e16;

/// SenML seconds (`bt + t`) to epoch milliseconds. Times below 2^28 s are relative to now
/// (RFC 8428 §4.5.3); 0 is now. Checked: a sum that is not finite, too large to be a time, or that
/// overflows when added to the clock is `bad_ts`.
fn senml_time_ms(seconds: f64, now_ms: i64) -> Result<i64, Reject> {
    let ms = seconds * 1000.0;
    if !ms.is_finite() || ms.abs() >= MAX_FLOAT_MS {
        return Err(Reject::BadTimestamp(seconds.to_string()));
    }
    let ms = ms.round() as i64;
    if seconds.abs() < (1u64 << 28) as f64 {
        now_ms
            .checked_add(ms)
            .ok_or_else(|| Reject::BadTimestamp(format!("now + {seconds} s")))
    } else {
        Ok(ms)
    }
}

fn parse_json<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, Reject> {
    serde_json::from_str(text).map_err(|e| Reject::BadJson(e.to_string()))
}

fn parse_number(text: &str) -> Result<f64, Reject> {
    match text.parse::<f64>() {
        Ok(v) if v.is_finite() => Ok(v),
        _ => Err(Reject::BadValue(truncate(text))),
    }
}

fn json_number(v: &Value) -> Result<f64, Reject> {
    match v.as_f64() {
        Some(f) if f.is_finite() => Ok(f),
        _ => Err(Reject::BadValue(truncate(&v.to_string()))),
    }
}

/// Epoch milliseconds (integer or float) or an RFC 3339 string; checked conversions only.
fn parse_ts(v: &Value) -> Result<i64, Reject> {
    match v {
        Value::Number(n) => match n.as_i64() {
            Some(ms) => Ok(ms),
            None => n
                .as_f64()
                .filter(|f| f.is_finite() && f.abs() < MAX_FLOAT_MS)
                .map(|f| f.round() as i64)
                .ok_or_else(|| Reject::BadTimestamp(truncate(&n.to_string()))),
        },
        Value::String(s) => {
            let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
                .map_err(|_| Reject::BadTimestamp(truncate(s)))?;
            i64::try_from(t.unix_timestamp_nanos().div_euclid(1_000_000))
                .map_err(|_| Reject::BadTimestamp(truncate(s)))
        }
        other => Err(Reject::BadTimestamp(truncate(&other.to_string()))),
    }
}

/// Keeps error texts short: they end up in logs and dead letters.
fn truncate(s: &str) -> String {
    const MAX: usize = 64;
    match s.char_indices().nth(MAX) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(max_id_bytes: usize, future_s: u64, past_s: Option<u64>) -> IngestRules {
        IngestRules::new(&gateway_config::IngestConfig {
            max_id_bytes,
            max_future_ts_s: future_s,
            max_past_ts_s: past_s,
        })
    }

    #[test]
    fn ids_are_printable_utf8_without_wildcards_within_the_byte_limit() {
        let r = rules(8, 300, None);
        for ok in ["d", "dev-7", "a/b:c d", &"température"[..8], "12345678"] {
            assert_eq!(r.check_id(IdKind::Device, ok), Ok(()), "{ok:?}");
        }
        for bad in [
            "",
            "123456789",
            "x#y",
            "a+b",
            "nul\0",
            "new\nline",
            "\u{1b}[31m",
            "del\u{7f}",
            "c1\u{85}",
            "rlo\u{202e}",
            "ls\u{2028}",
        ] {
            assert_eq!(
                r.check_id(IdKind::Metric, bad).map_err(|e| e.reason()),
                Err("bad_id"),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn timestamps_are_bounded_by_the_clock_without_overflow() {
        let r = rules(128, 300, Some(60));
        let now = 1_764_081_600_000;
        assert_eq!(r.check_ts(now + 300_000, now), Ok(()));
        assert!(r.check_ts(now + 300_001, now).is_err());
        assert_eq!(r.check_ts(now - 60_000, now), Ok(()));
        assert!(r.check_ts(now - 60_001, now).is_err());
        assert!(r.check_ts(i64::MAX, i64::MAX - 1).is_ok());
        assert!(r.check_ts(i64::MIN, i64::MIN).is_ok());
        assert!(r.check_ts(i64::MIN, i64::MAX).is_err());
        assert!(r.check_ts(i64::MAX, i64::MIN).is_err());
        let unbounded_past = rules(128, u64::MAX, None);
        assert!(unbounded_past.check_ts(i64::MIN, 0).is_ok());
        assert!(unbounded_past.check_ts(i64::MAX, 0).is_ok());
    }

    #[test]
    fn a_reading_with_a_non_finite_value_is_never_built() {
        let r = IngestRules::default();
        for v in [f64::INFINITY, f64::NEG_INFINITY, f64::NAN] {
            let got = r.reading("d", "m", v, None, 0, 0, Source::Mqtt);
            assert_eq!(got.map_err(|e| e.reason()), Err("bad_value"));
        }
    }

    #[test]
    fn senml_times_saturate_into_bad_ts_instead_of_overflowing() {
        assert_eq!(senml_time_ms(0.0, 5), Ok(5));
        assert_eq!(senml_time_ms(-2.0, 5000), Ok(3000));
        assert_eq!(senml_time_ms(1.5e9, 0), Ok(1_500_000_000_000));
        assert!(senml_time_ms(-1.0, i64::MIN).is_err());
        assert!(senml_time_ms(1.0, i64::MAX).is_err());
        assert!(senml_time_ms(f64::MAX, 0).is_err());
        assert!(senml_time_ms(f64::INFINITY, 0).is_err());
        assert!(senml_time_ms(f64::NAN, 0).is_err());
    }

    #[test]
    fn only_an_oversized_payload_is_cut_for_its_dead_letter() {
        let big = vec![b'x'; TOO_LARGE_EXCERPT_BYTES * 3];
        let too_large = Reject::TooLarge {
            size: big.len(),
            limit: 10,
        };
        assert_eq!(
            too_large.dead_letter_payload(&big).len(),
            TOO_LARGE_EXCERPT_BYTES
        );
        assert_eq!(Reject::Empty.dead_letter_payload(&big).len(), big.len());
    }
}
