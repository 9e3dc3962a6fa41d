//! Payload and line decoding: WIRE.md §1 (MQTT) and §2 (serial) into readings.
//!
//! Pure functions of (bytes, where they came from, receive time). Every way a payload can be
//! unreadable is a [`Reject`] with a stable [`Reject::reason`] used as the metrics label and the
//! dead-letter reason. Nothing here panics on any input (property-tested).

use gateway_buffer::{Reading, Source};
use serde_json::{Map, Value};
use std::fmt;

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
        }
    }

    /// Every reason label, so metrics can export zeros before the first rejection.
    pub const ALL_REASONS: [&'static str; 12] = [
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
            other => f.write_str(other.reason()),
        }
    }
}

/// One `mqtt.topic_templates` entry, split into segments once.
#[derive(Debug, Clone)]
pub struct TopicTemplate {
    segments: Vec<Segment>,
}

#[derive(Debug, Clone, PartialEq)]
enum Segment {
    Literal(String),
    Device,
    Metric,
}

/// Device and metric read off a topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicNames<'a> {
    pub device: &'a str,
    pub metric: Option<&'a str>,
}

impl TopicTemplate {
    /// Parses `sensors/{device}/{metric}`; the config crate has already checked the placeholders.
    pub fn new(template: &str) -> TopicTemplate {
        let segments = template
            .split('/')
            .map(|s| match s {
                "{device}" => Segment::Device,
                "{metric}" => Segment::Metric,
                lit => Segment::Literal(lit.to_owned()),
            })
            .collect();
        TopicTemplate { segments }
    }

    /// Device and metric if `topic` has this template's shape.
    pub fn match_topic<'a>(&self, topic: &'a str) -> Option<TopicNames<'a>> {
        let parts: Vec<&str> = topic.split('/').collect();
        if parts.len() != self.segments.len() {
            return None;
        }
        let (mut device, mut metric) = (None, None);
        for (seg, part) in self.segments.iter().zip(parts) {
            match seg {
                Segment::Literal(lit) if lit == part => {}
                Segment::Literal(_) => return None,
                Segment::Device if !part.is_empty() => device = Some(part),
                Segment::Metric if !part.is_empty() => metric = Some(part),
                _ => return None,
            }
        }
        Some(TopicNames {
            device: device?,
            metric,
        })
    }
}

/// Decodes MQTT payloads per WIRE.md §1 for one set of topic templates.
#[derive(Debug, Clone)]
pub struct MqttDecoder {
    templates: Vec<TopicTemplate>,
    max_payload_bytes: usize,
}

impl MqttDecoder {
    pub fn new<S: AsRef<str>>(templates: &[S], max_payload_bytes: usize) -> MqttDecoder {
        MqttDecoder {
            templates: templates
                .iter()
                .map(|t| TopicTemplate::new(t.as_ref()))
                .collect(),
            max_payload_bytes,
        }
    }

    /// The readings in one message, or why there are none. `now_ms` stands in for a missing `ts`.
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
        let mut out = Vec::new();
        match text.as_bytes().first() {
            None => return Err(Reject::Empty),
            Some(b'{') => {
                let obj: Map<String, Value> = parse_json(text)?;
                let ctx = Context {
                    device: Some(names.device),
                    metric: names.metric,
                    source: Source::Mqtt,
                    now_ms,
                };
                object_readings(&obj, &ctx, &mut out)?;
            }
            Some(b'[') => {
                let pack: Vec<Value> = parse_json(text)?;
                senml_readings(&pack, names.device, now_ms, &mut out)?;
            }
            Some(_) => {
                let metric = names.metric.ok_or(Reject::UnknownTopic)?;
                let value = parse_number(text)?;
                out.push(reading(
                    names.device,
                    metric,
                    value,
                    None,
                    now_ms,
                    Source::Mqtt,
                ));
            }
        }
        Ok(out)
    }
}

/// Decodes serial lines per WIRE.md §2 (after framing: no line terminator).
#[derive(Debug, Clone)]
pub struct SerialDecoder {
    default_device: String,
}

impl SerialDecoder {
    pub fn new(default_device: impl Into<String>) -> SerialDecoder {
        SerialDecoder {
            default_device: default_device.into(),
        }
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
        let mut out = Vec::new();
        if text.starts_with('{') {
            let obj: Map<String, Value> = parse_json(text)?;
            let ctx = Context {
                device: Some(&self.default_device),
                metric: None,
                source: Source::Serial,
                now_ms,
            };
            object_readings(&obj, &ctx, &mut out)?;
        } else {
            out.push(self.csv_reading(text, now_ms)?);
        }
        Ok(out)
    }

    /// `device,metric,value[,ts_ms]`, or `metric,value[,ts_ms]` for the port's own device.
    fn csv_reading(&self, text: &str, now_ms: i64) -> Result<Reading, Reject> {
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
            None => now_ms,
            Some(ts) => ts
                .parse::<i64>()
                .map_err(|_| Reject::BadTimestamp(ts.to_owned()))?,
        };
        Ok(reading(device, metric, value, None, ts_ms, Source::Serial))
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
        Some(Value::String(d)) if !d.is_empty() => d.as_str(),
        Some(other) => {
            return Err(Reject::BadLine(format!(
                "device must be a non-empty string, found {other}"
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
        Some(other) => return Err(Reject::BadValue(format!("unit {other}"))),
    };
    if let Some(value) = obj.get("value") {
        let metric = match obj.get("metric") {
            Some(Value::String(m)) if !m.is_empty() => m.as_str(),
            Some(other) => {
                return Err(Reject::BadLine(format!(
                    "metric must be a non-empty string, found {other}"
                )));
            }
            None => ctx.metric.ok_or(Reject::UnknownTopic)?,
        };
        out.push(reading(
            device,
            metric,
            json_number(value)?,
            unit,
            ts_ms,
            ctx.source,
        ));
        return Ok(());
    }
    for (metric, value) in obj
        .iter()
        .filter(|(k, _)| !RESERVED_KEYS.contains(&k.as_str()))
    {
        if metric.trim().is_empty() {
            return Err(Reject::BadJson("a metric name is empty".into()));
        }
        out.push(reading(
            device,
            metric,
            json_number(value)?,
            unit.clone(),
            ts_ms,
            ctx.source,
        ));
    }
    if out.is_empty() {
        return Err(Reject::NoValue);
    }
    Ok(())
}

/// RFC 8428 SenML: base name/time/unit/value, names `bn`+`n` split at the last `/` into device
/// and metric (a name without `/` belongs to the topic's device), times in seconds.
fn senml_readings(
    pack: &[Value],
    topic_device: &str,
    now_ms: i64,
    out: &mut Vec<Reading>,
) -> Result<(), Reject> {
    let (mut bn, mut bt, mut bu, mut bv) = (String::new(), 0.0f64, None::<String>, 0.0f64);
    for rec in pack {
        let rec = rec
            .as_object()
            .ok_or_else(|| Reject::BadJson("SenML record is not an object".into()))?;
        if let Some(v) = rec.get("bn") {
            bn = v
                .as_str()
                .ok_or_else(|| Reject::BadJson("bn must be a string".into()))?
                .to_owned();
        }
        if let Some(v) = rec.get("bt") {
            bt = v
                .as_f64()
                .ok_or_else(|| Reject::BadTimestamp(v.to_string()))?;
        }
        if let Some(v) = rec.get("bu") {
            bu = v.as_str().map(str::to_owned);
        }
        if let Some(v) = rec.get("bv") {
            bv = json_number(v)?;
        }
        let value = match rec.get("v") {
            Some(v) => json_number(v)? + bv,
            // A record of only base fields, or with a string/bool/data value, carries no reading.
            None if rec.contains_key("vs") || rec.contains_key("vb") || rec.contains_key("vd") => {
                continue;
            }
            None if rec.contains_key("n") => return Err(Reject::NoValue),
            None => continue,
        };
        let name = format!("{bn}{}", rec.get("n").and_then(Value::as_str).unwrap_or(""));
        let (device, metric) = match name.rsplit_once('/') {
            Some((d, m)) if !d.is_empty() && !m.is_empty() => (d, m),
            Some(_) => {
                return Err(Reject::BadJson(format!(
                    "SenML name {name:?} has an empty part"
                )));
            }
            None if !name.is_empty() => (topic_device, name.as_str()),
            None => return Err(Reject::BadJson("SenML record has no name".into())),
        };
        let t = match rec.get("t") {
            Some(v) => v
                .as_f64()
                .ok_or_else(|| Reject::BadTimestamp(v.to_string()))?,
            None => 0.0,
        };
        let unit = rec
            .get("u")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .or_else(|| bu.clone());
        out.push(reading(
            device,
            metric,
            value,
            unit,
            senml_time_ms(bt + t, now_ms)?,
            Source::Mqtt,
        ));
    }
    if out.is_empty() {
        return Err(Reject::Empty);
    }
    Ok(())
}

/// SenML times below 2^28 s are relative to now (RFC 8428 §4.5.3).
fn senml_time_ms(seconds: f64, now_ms: i64) -> Result<i64, Reject> {
    if !seconds.is_finite() || seconds.abs() > 1e13 {
        return Err(Reject::BadTimestamp(seconds.to_string()));
    }
    if seconds == 0.0 {
        Ok(now_ms)
    } else if seconds.abs() < (1u64 << 28) as f64 {
        Ok(now_ms + (seconds * 1000.0).round() as i64)
    } else {
        Ok((seconds * 1000.0).round() as i64)
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

/// Epoch milliseconds (integer or float) or an RFC 3339 string.
fn parse_ts(v: &Value) -> Result<i64, Reject> {
    match v {
        Value::Number(n) => match n.as_i64() {
            Some(ms) => Ok(ms),
            None => n
                .as_f64()
                .filter(|f| f.is_finite() && f.abs() < 1e16)
                .map(|f| f.round() as i64)
                .ok_or_else(|| Reject::BadTimestamp(n.to_string())),
        },
        Value::String(s) => {
            let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
                .map_err(|_| Reject::BadTimestamp(truncate(s)))?;
            Ok((t.unix_timestamp_nanos() / 1_000_000) as i64)
        }
        other => Err(Reject::BadTimestamp(truncate(&other.to_string()))),
    }
}

fn reading(
    device: &str,
    metric: &str,
    value: f64,
    unit: Option<String>,
    ts_ms: i64,
    source: Source,
) -> Reading {
    Reading {
        device: device.to_owned(),
        metric: metric.to_owned(),
        value,
        unit,
        ts_ms,
        source,
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
