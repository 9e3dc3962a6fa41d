//! Fault and load scenarios: selectable, combinable, each with a start and a duration.
//!
//! A scenario is written `kind[:key=value,...]`, for example `spike:at=10s,for=20s` or
//! `garbage:fraction=0.1,devices=1..5`. Keys every kind accepts:
//!
//! | key | meaning | default |
//! |---|---|---|
//! | `at` | start, after the run begins (`500ms`, `10s`, `2m`, `1h`; a bare number is seconds) | `0s` |
//! | `for` | duration; omitted means until the end of the run | (end) |
//! | `devices` | `all`, one index `3`, or an inclusive range `2..5` (1-based: `dev-0001` is 1) | `all` |
//!
//! Kinds and their own keys:
//!
//! | kind | effect | keys |
//! |---|---|---|
//! | `spike` | the metric jumps to `to` for the window, then comes back (raise and clear an alarm) | `metric` (temperature), `to` (40 °C / 98 %RH / 1040 hPa / 5 %) |
//! | `drift` | an offset growing by `per_min` each minute of the window | `metric` (temperature), `per_min` (0.5) |
//! | `stuck` | the sensor repeats the value it had when the window opened | `metric` (all) |
//! | `dropout` | the device sends nothing | — |
//! | `burst` | the device sends `x` times faster | `x` (10) |
//! | `garbage` | a fraction of messages/lines are malformed instead of readings | `fraction` (0.2) |
//! | `reconnect` | the device's MQTT connection is closed at the start and reopened at the end; silent meanwhile (serial: silent) | — (`for` defaults to 5s) |
//!
//! Scenarios combine: all that are active at a moment apply, in the order given.

use std::fmt;
use std::str::FromStr;

use crate::metric::Metric;

/// What a scenario does.
#[derive(Debug, Clone, PartialEq)]
pub enum ScenarioKind {
    /// The metric reads `to` during the window.
    Spike {
        /// Affected metric.
        metric: Metric,
        /// Value during the window.
        to: f64,
    },
    /// An offset growing linearly during the window.
    Drift {
        /// Affected metric.
        metric: Metric,
        /// Growth of the offset per minute.
        per_min: f64,
    },
    /// The value freezes when the window opens.
    Stuck {
        /// Affected metric, or every metric.
        metric: Option<Metric>,
    },
    /// Nothing is sent.
    Dropout,
    /// The rate is multiplied by `factor`.
    Burst {
        /// Rate multiplier, ≥ 1.
        factor: f64,
    },
    /// A fraction of messages are malformed.
    Garbage {
        /// Probability per message, 0..=1.
        fraction: f64,
    },
    /// The connection closes at the start and reopens at the end.
    Reconnect,
}

impl ScenarioKind {
    /// The kind's name as written in a spec.
    pub fn name(&self) -> &'static str {
        match self {
            ScenarioKind::Spike { .. } => "spike",
            ScenarioKind::Drift { .. } => "drift",
            ScenarioKind::Stuck { .. } => "stuck",
            ScenarioKind::Dropout => "dropout",
            ScenarioKind::Burst { .. } => "burst",
            ScenarioKind::Garbage { .. } => "garbage",
            ScenarioKind::Reconnect => "reconnect",
        }
    }
}

/// Which devices a scenario applies to (1-based indices).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceSelector {
    /// Every device.
    All,
    /// Devices `first..=last`.
    Range(u32, u32),
}

impl DeviceSelector {
    /// Whether device number `index` (1-based) is selected.
    pub fn contains(&self, index: u32) -> bool {
        match *self {
            DeviceSelector::All => true,
            DeviceSelector::Range(a, b) => (a..=b).contains(&index),
        }
    }
}

/// One scenario with its window.
#[derive(Debug, Clone, PartialEq)]
pub struct Scenario {
    /// What it does.
    pub kind: ScenarioKind,
    /// Start, in ms after the run begins.
    pub at_ms: u64,
    /// Duration in ms; `None` lasts until the end.
    pub for_ms: Option<u64>,
    /// Affected devices.
    pub devices: DeviceSelector,
    /// The spec it was parsed from, for reports.
    pub spec: String,
}

impl Scenario {
    /// Whether the window is open at `elapsed_ms` for device `index` (1-based).
    pub fn active(&self, elapsed_ms: u64, index: u32) -> bool {
        self.devices.contains(index)
            && elapsed_ms >= self.at_ms
            && self.for_ms.is_none_or(|d| elapsed_ms < self.at_ms + d)
    }

    /// Window length in ms, if bounded.
    pub fn duration_ms(&self) -> Option<u64> {
        self.for_ms
    }
}

impl fmt::Display for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.spec)
    }
}

/// A scenario spec that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScenarioError {
    /// The kind before `:` is not one of the known kinds.
    #[error(
        "unknown scenario kind {0:?} (spike, drift, stuck, dropout, burst, garbage, reconnect)"
    )]
    UnknownKind(String),
    /// A `key=value` pair is missing its `=`.
    #[error("expected key=value, got {0:?}")]
    NotKeyValue(String),
    /// The key is not accepted by this kind.
    #[error("scenario {kind} has no key {key:?}")]
    UnknownKey {
        /// Scenario kind.
        kind: &'static str,
        /// Offending key.
        key: String,
    },
    /// A value does not parse or is out of range.
    #[error("bad value for {key}: {value:?} ({why})")]
    BadValue {
        /// Key.
        key: String,
        /// Value as written.
        value: String,
        /// Why it was rejected.
        why: String,
    },
}

/// Parse a duration: `250ms`, `10s`, `2m`, `1h`, or a bare number of seconds (fractions allowed).
pub fn parse_duration_ms(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, scale) = if let Some(n) = s.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1000.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60_000.0)
    } else if let Some(n) = s.strip_suffix('h') {
        (n, 3_600_000.0)
    } else {
        (s, 1000.0)
    };
    let v: f64 = num.trim().parse().ok()?;
    (v.is_finite() && v >= 0.0).then(|| (v * scale).round() as u64)
}

fn bad(key: &str, value: &str, why: &str) -> ScenarioError {
    ScenarioError::BadValue {
        key: key.to_owned(),
        value: value.to_owned(),
        why: why.to_owned(),
    }
}

fn default_spike_to(metric: Metric) -> f64 {
    match metric {
        Metric::Temperature => 40.0,
        Metric::Humidity => 98.0,
        Metric::Pressure => 1040.0,
        Metric::Battery => 5.0,
    }
}

impl FromStr for Scenario {
    type Err = ScenarioError;

    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let spec = spec.trim();
        let (kind_name, rest) = spec.split_once(':').unwrap_or((spec, ""));
        let mut pairs = Vec::new();
        for part in rest.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| ScenarioError::NotKeyValue(part.to_owned()))?;
            pairs.push((k.trim().to_owned(), v.trim().to_owned()));
        }
        let get = |key: &str| {
            pairs
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.as_str())
        };
        let metric = |default: Option<Metric>| -> Result<Option<Metric>, ScenarioError> {
            match get("metric") {
                Some(v) => v
                    .parse::<Metric>()
                    .map(Some)
                    .map_err(|e| bad("metric", v, &e.to_string())),
                None => Ok(default),
            }
        };
        let number = |key: &str, default: f64| -> Result<f64, ScenarioError> {
            match get(key) {
                Some(v) => v
                    .parse::<f64>()
                    .ok()
                    .filter(|x| x.is_finite())
                    .ok_or_else(|| bad(key, v, "not a finite number")),
                None => Ok(default),
            }
        };
        let (kind, own_keys): (ScenarioKind, &[&str]) = match kind_name {
            "spike" => {
                let m = metric(Some(Metric::Temperature))?.unwrap_or(Metric::Temperature);
                let to = number("to", default_spike_to(m))?;
                (ScenarioKind::Spike { metric: m, to }, &["metric", "to"])
            }
            "drift" => {
                let m = metric(Some(Metric::Temperature))?.unwrap_or(Metric::Temperature);
                let per_min = number("per_min", 0.5)?;
                (
                    ScenarioKind::Drift { metric: m, per_min },
                    &["metric", "per_min"],
                )
            }
            "stuck" => (
                ScenarioKind::Stuck {
                    metric: metric(None)?,
                },
                &["metric"],
            ),
            "dropout" => (ScenarioKind::Dropout, &[]),
            "burst" => {
                let factor = number("x", 10.0)?;
                if factor < 1.0 {
                    return Err(bad("x", get("x").unwrap_or(""), "must be at least 1"));
                }
                (ScenarioKind::Burst { factor }, &["x"])
            }
            "garbage" => {
                let fraction = number("fraction", 0.2)?;
                if !(0.0..=1.0).contains(&fraction) {
                    return Err(bad(
                        "fraction",
                        get("fraction").unwrap_or(""),
                        "must be within 0..=1",
                    ));
                }
                (ScenarioKind::Garbage { fraction }, &["fraction"])
            }
            "reconnect" => (ScenarioKind::Reconnect, &[]),
            other => return Err(ScenarioError::UnknownKind(other.to_owned())),
        };
        for (k, _) in &pairs {
            if !["at", "for", "devices"].contains(&k.as_str()) && !own_keys.contains(&k.as_str()) {
                return Err(ScenarioError::UnknownKey {
                    kind: kind.name(),
                    key: k.clone(),
                });
            }
        }
        let at_ms = match get("at") {
            Some(v) => parse_duration_ms(v).ok_or_else(|| bad("at", v, "not a duration"))?,
            None => 0,
        };
        let mut for_ms = match get("for") {
            Some(v) => Some(parse_duration_ms(v).ok_or_else(|| bad("for", v, "not a duration"))?),
            None => None,
        };
        if kind == ScenarioKind::Reconnect && for_ms.is_none() {
            for_ms = Some(5_000);
        }
        let devices = match get("devices") {
            None | Some("all") => DeviceSelector::All,
            Some(v) => {
                let parse = |x: &str| x.trim().parse::<u32>().ok().filter(|n| *n >= 1);
                let sel = match v.split_once("..") {
                    Some((a, b)) => parse(a)
                        .zip(parse(b))
                        .filter(|(a, b)| a <= b)
                        .map(|(a, b)| DeviceSelector::Range(a, b)),
                    None => parse(v).map(|a| DeviceSelector::Range(a, a)),
                };
                sel.ok_or_else(|| bad("devices", v, "expected all, N or A..B (1-based)"))?
            }
        };
        Ok(Scenario {
            kind,
            at_ms,
            for_ms,
            devices,
            spec: spec.to_owned(),
        })
    }
}
