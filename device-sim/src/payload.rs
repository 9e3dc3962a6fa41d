//! Encoding readings as the wire contract's forms (WIRE.md §1 MQTT payloads, §2 serial lines).
//!
//! Values are written with Rust's shortest round-trip formatting after rounding to the metric's
//! precision, so `21.5` stays `21.5` and never becomes `21.499999`. Every form except the bare
//! number carries an explicit `ts` in milliseconds (SenML: `bt` in seconds with three decimals).

use std::fmt::Write as _;

use rand::Rng;

use crate::metric::Metric;

/// MQTT payload forms of WIRE.md §1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MqttForm {
    /// `21.5` on `sensors/{device}/{metric}`; no timestamp.
    Number,
    /// `{"value":21.5,"ts":…,"unit":"C"}` on `sensors/{device}/{metric}`.
    Json,
    /// `{"ts":…,"temperature":21.5,"humidity":41}` on `sensors/{device}`.
    Multi,
    /// A SenML pack on `sensors/{device}`.
    Senml,
    /// One of the four above, picked at random (seeded) for each tick.
    Mix,
}

impl MqttForm {
    /// Name as used on the command line and in summaries.
    pub fn name(self) -> &'static str {
        match self {
            MqttForm::Number => "number",
            MqttForm::Json => "json",
            MqttForm::Multi => "multi",
            MqttForm::Senml => "senml",
            MqttForm::Mix => "mix",
        }
    }

    /// Resolve `Mix` to a concrete form; other forms are returned as they are.
    pub fn resolve(self, rng: &mut impl Rng) -> MqttForm {
        match self {
            MqttForm::Mix => [
                MqttForm::Number,
                MqttForm::Json,
                MqttForm::Multi,
                MqttForm::Senml,
            ][rng.random_range(0..4)],
            other => other,
        }
    }
}

/// Serial line forms of WIRE.md §2.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LineForm {
    /// `dev-3,temperature,21.5,1764081600123`.
    Csv,
    /// `{"device":"dev-3","metric":"temperature","value":21.5,"ts":1764081600123}`.
    Json,
    /// `{"device":"dev-3","ts":1764081600123,"temperature":21.5,"humidity":40.2}`.
    JsonMulti,
    /// One of the three above, picked at random (seeded) for each tick.
    Mix,
}

impl LineForm {
    /// Name as used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            LineForm::Csv => "csv",
            LineForm::Json => "json",
            LineForm::JsonMulti => "json-multi",
            LineForm::Mix => "mix",
        }
    }

    /// Resolve `Mix` to a concrete form.
    pub fn resolve(self, rng: &mut impl Rng) -> LineForm {
        match self {
            LineForm::Mix => {
                [LineForm::Csv, LineForm::Json, LineForm::JsonMulti][rng.random_range(0..3)]
            }
            other => other,
        }
    }
}

/// One MQTT message ready to publish.
#[derive(Debug, Clone, PartialEq)]
pub struct MqttMessage {
    /// Topic, from the contract templates `sensors/{device}/{metric}` or `sensors/{device}`.
    pub topic: String,
    /// UTF-8 payload.
    pub payload: Vec<u8>,
    /// The readings it carries (empty for garbage).
    pub metrics: Vec<Metric>,
    /// The concrete form used.
    pub form: MqttForm,
}

/// Format a value: shortest round-trip decimal, never `-0`.
pub fn format_value(v: f64) -> String {
    if v == 0.0 {
        return "0".to_owned();
    }
    format!("{v}")
}

/// SenML base time: seconds with exactly three decimals, so `bt * 1000` recovers the ms.
pub fn format_senml_time(ts_ms: i64) -> String {
    let sign = if ts_ms < 0 { "-" } else { "" };
    let a = ts_ms.unsigned_abs();
    format!("{sign}{}.{:03}", a / 1000, a % 1000)
}

/// Encode one tick of readings (all taken at `ts_ms`) in a concrete MQTT form.
///
/// `Number` and `Json` give one message per metric on `{prefix}/{device}/{metric}`; `Multi` and
/// `Senml` give one message on `{prefix}/{device}`. `Mix` must be resolved first (it is treated
/// as `Json`).
pub fn encode_mqtt(
    form: MqttForm,
    topic_prefix: &str,
    device: &str,
    ts_ms: i64,
    readings: &[(Metric, f64)],
) -> Vec<MqttMessage> {
    match form {
        MqttForm::Number => readings
            .iter()
            .map(|&(m, v)| MqttMessage {
                topic: format!("{topic_prefix}/{device}/{}", m.name()),
                payload: format_value(v).into_bytes(),
                metrics: vec![m],
                form,
            })
            .collect(),
        MqttForm::Json | MqttForm::Mix => readings
            .iter()
            .map(|&(m, v)| MqttMessage {
                topic: format!("{topic_prefix}/{device}/{}", m.name()),
                payload: format!(
                    r#"{{"value":{},"ts":{ts_ms},"unit":"{}"}}"#,
                    format_value(v),
                    m.unit()
                )
                .into_bytes(),
                metrics: vec![m],
                form: MqttForm::Json,
            })
            .collect(),
        MqttForm::Multi => {
            let mut s = format!(r#"{{"ts":{ts_ms}"#);
            for &(m, v) in readings {
                let _ = write!(s, r#","{}":{}"#, m.name(), format_value(v));
            }
            s.push('}');
            vec![MqttMessage {
                topic: format!("{topic_prefix}/{device}"),
                payload: s.into_bytes(),
                metrics: readings.iter().map(|r| r.0).collect(),
                form,
            }]
        }
        MqttForm::Senml => {
            let mut s = String::from("[");
            for (i, &(m, v)) in readings.iter().enumerate() {
                if i == 0 {
                    let _ = write!(
                        s,
                        r#"{{"bn":"{device}/","bt":{},"n":"{}","u":"{}","v":{}}}"#,
                        format_senml_time(ts_ms),
                        m.name(),
                        m.senml_unit(),
                        format_value(v)
                    );
                } else {
                    let _ = write!(
                        s,
                        r#",{{"n":"{}","u":"{}","v":{}}}"#,
                        m.name(),
                        m.senml_unit(),
                        format_value(v)
                    );
                }
            }
            s.push(']');
            vec![MqttMessage {
                topic: format!("{topic_prefix}/{device}"),
                payload: s.into_bytes(),
                metrics: readings.iter().map(|r| r.0).collect(),
                form,
            }]
        }
    }
}

/// A malformed MQTT payload the gateway must reject (bad JSON, non-finite value, no value, or
/// invalid UTF-8), on the metric topic of `metric`.
pub fn garbage_mqtt(
    rng: &mut impl Rng,
    topic_prefix: &str,
    device: &str,
    metric: Metric,
) -> MqttMessage {
    let payload: Vec<u8> = match rng.random_range(0..6) {
        0 => br#"{"value": 21.5, "ts""#.to_vec(),
        1 => b"NaN".to_vec(),
        2 => br#"{"value":"warm","unit":"C"}"#.to_vec(),
        3 => br#"{"unit":"C"}"#.to_vec(),
        4 => b"inf".to_vec(),
        _ => {
            let n = rng.random_range(4..24);
            let mut b: Vec<u8> = (0..n).map(|_| rng.random_range(0x80..=0xFF)).collect();
            b[0] = 0xFF; // never valid UTF-8
            b
        }
    };
    MqttMessage {
        topic: format!("{topic_prefix}/{device}/{}", metric.name()),
        payload,
        metrics: Vec::new(),
        form: MqttForm::Json,
    }
}

/// One serial line (without its terminator).
#[derive(Debug, Clone, PartialEq)]
pub struct Line {
    /// Line bytes, checksum included when asked for; no `\n`.
    pub bytes: Vec<u8>,
    /// The readings it carries (empty for noise).
    pub metrics: Vec<Metric>,
    /// The concrete form used.
    pub form: LineForm,
}

/// XOR of every byte: the `*HH` checksum of WIRE.md §2.
pub fn checksum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0, |acc, b| acc ^ b)
}

/// Append `*HH` (two uppercase hex digits of the XOR of every byte before `*`).
pub fn with_checksum(line: &str) -> String {
    format!("{line}*{:02X}", checksum(line.as_bytes()))
}

/// What [`verify_checksum`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChecksumStatus<'a> {
    /// No `*HH` suffix; the whole line is the body.
    Absent(&'a [u8]),
    /// The suffix matches; the body is everything before `*`.
    Valid(&'a [u8]),
    /// The suffix is not two hex digits or does not match.
    Invalid,
}

/// Check a line's optional `*HH` suffix (the last `*` followed by exactly two hex digits).
pub fn verify_checksum(line: &[u8]) -> ChecksumStatus<'_> {
    let n = line.len();
    if n >= 3 && line[n - 3] == b'*' {
        let hex = std::str::from_utf8(&line[n - 2..]).ok();
        let body = &line[..n - 3];
        return match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
            Some(sum) if sum == checksum(body) => ChecksumStatus::Valid(body),
            _ => ChecksumStatus::Invalid,
        };
    }
    ChecksumStatus::Absent(line)
}

/// Encode one tick as serial lines in a concrete form, with the `*HH` suffix if `with_sum`.
pub fn encode_lines(
    form: LineForm,
    device: &str,
    ts_ms: i64,
    readings: &[(Metric, f64)],
    with_sum: bool,
) -> Vec<Line> {
    let finish = |s: String| -> Vec<u8> {
        if with_sum {
            with_checksum(&s).into_bytes()
        } else {
            s.into_bytes()
        }
    };
    match form {
        LineForm::Csv => readings
            .iter()
            .map(|&(m, v)| Line {
                bytes: finish(format!("{device},{},{},{ts_ms}", m.name(), format_value(v))),
                metrics: vec![m],
                form,
            })
            .collect(),
        LineForm::Json | LineForm::Mix => readings
            .iter()
            .map(|&(m, v)| Line {
                bytes: finish(format!(
                    r#"{{"device":"{device}","metric":"{}","value":{},"ts":{ts_ms}}}"#,
                    m.name(),
                    format_value(v)
                )),
                metrics: vec![m],
                form: LineForm::Json,
            })
            .collect(),
        LineForm::JsonMulti => {
            let mut s = format!(r#"{{"device":"{device}","ts":{ts_ms}"#);
            for &(m, v) in readings {
                let _ = write!(s, r#","{}":{}"#, m.name(), format_value(v));
            }
            s.push('}');
            vec![Line {
                bytes: finish(s),
                metrics: readings.iter().map(|r| r.0).collect(),
                form,
            }]
        }
    }
}

/// Corrupt a line so that the gateway must drop it: one byte in 0x80..=0xFF (invalid UTF-8 on its
/// own, and it changes the XOR so a `*HH` suffix no longer matches) inserted before any suffix.
pub fn corrupt_line(rng: &mut impl Rng, line: &[u8]) -> Vec<u8> {
    let body_len = match verify_checksum(line) {
        ChecksumStatus::Valid(body) => body.len(),
        _ => line.len(),
    };
    let at = rng.random_range(0..=body_len);
    let mut out = Vec::with_capacity(line.len() + 1);
    out.extend_from_slice(&line[..at]);
    out.push(rng.random_range(0x80..=0xFF));
    out.extend_from_slice(&line[at..]);
    out
}

/// A line of binary noise (no `\n`, never valid UTF-8).
pub fn noise_line(rng: &mut impl Rng) -> Vec<u8> {
    let n = rng.random_range(3..40);
    let mut b: Vec<u8> = (0..n)
        .map(|_| {
            loop {
                let x: u8 = rng.random();
                if x != b'\n' && x != b'\r' {
                    break x;
                }
            }
        })
        .collect();
    b[0] = 0xFF;
    b
}
