//! `[[window]]` and `[[deadband]]`: what the gateway reduces before it forwards, as written and
//! as validated.
//!
//! A *series* is one (device, metric). Each series gets at most one reduction, chosen like a
//! routing table: the first `[[window]]` (in file order) whose globs match it, else the first
//! `[[deadband]]` that matches, else none (its readings go upstream as they came). A rule that
//! repeats the globs of an earlier rule could never apply and is refused at load, naming both.
//! Alarm rules always see every raw reading, whatever reduces it.

use serde::Deserialize;

use crate::error::ConfigError;
use crate::model::CompiledGlob;
use crate::validate::{Ctx, glob};

/// Default `window[].device` and `deadband[].device`: every device.
pub const REDUCE_DEVICE_GLOB: &str = "*";
/// Default `window[].window_s`.
pub const WINDOW_S: u64 = 60;
/// Largest `window[].window_s`: 366 days. Windows are aligned to the epoch in milliseconds;
/// a longer one would hold its readings' aggregate unsent for more than a year.
pub const WINDOW_MAX_S: u64 = 366 * 86_400;
/// Default `window[].emit`: every function.
pub const WINDOW_EMIT: [WindowFn; 5] = WindowFn::ALL;
/// Default `deadband[].max_interval_s`.
pub const DEADBAND_MAX_INTERVAL_S: u64 = 300;
/// Default `window_max_series`.
pub const WINDOW_MAX_SERIES: usize = 100_000;

/// One aggregate a window emits, as the reading `<metric>.<fn>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WindowFn {
    /// Arithmetic mean of the window's readings.
    Mean,
    /// Smallest value.
    Min,
    /// Largest value.
    Max,
    /// How many readings the window holds (unit `null`).
    Count,
    /// The value with the latest `ts` (of equal `ts`, the one that arrived last).
    Last,
}

impl WindowFn {
    /// Every function, in the order the docs list them.
    pub const ALL: [WindowFn; 5] = [
        WindowFn::Mean,
        WindowFn::Min,
        WindowFn::Max,
        WindowFn::Count,
        WindowFn::Last,
    ];

    /// The TOML spelling, also the suffix of the emitted metric.
    pub fn as_str(self) -> &'static str {
        match self {
            WindowFn::Mean => "mean",
            WindowFn::Min => "min",
            WindowFn::Max => "max",
            WindowFn::Count => "count",
            WindowFn::Last => "last",
        }
    }
}

/// Whether a window's raw readings still go upstream (`window[].raw`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RawReadings {
    /// Every raw reading goes upstream as well as the aggregates (the default).
    Keep,
    /// Only the aggregates go upstream (and late readings, which no window can take).
    Drop,
}

/// One `[[window]]` table: tumbling windows over the series it matches.
#[derive(Debug, Clone, PartialEq)]
pub struct WindowRule {
    /// Glob over metric ids. Required.
    pub metric: String,
    /// Glob over device ids. Default `"*"`.
    pub device: String,
    /// Window length in seconds; windows are `[k·window_s, (k+1)·window_s)` in Unix time (aligned
    /// to the epoch), by the readings' `ts`. 1 to 366 days' worth. Default 60.
    pub window_s: u64,
    /// What each window emits, in this order; non-empty, no repeats. Default all five.
    pub emit: Vec<WindowFn>,
    /// Whether the raw readings still go upstream. Default `"keep"`.
    pub raw: RawReadings,
    pub(crate) device_glob: CompiledGlob,
    pub(crate) metric_glob: CompiledGlob,
}

impl WindowRule {
    /// Whether this rule matches `metric` of `device` (it may still not be the one that applies:
    /// see [`crate::Config::reduction_for`]).
    pub fn matches(&self, device: &str, metric: &str) -> bool {
        self.device_glob.0.is_match(device) && self.metric_glob.0.is_match(metric)
    }
}

/// One `[[deadband]]` table: report by exception over the series it matches.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadbandRule {
    /// Glob over metric ids. Required.
    pub metric: String,
    /// Glob over device ids. Default `"*"`.
    pub device: String,
    /// Forward when |value − last forwarded| > `abs`. Finite, ≥ 0; 0 turns this test off.
    /// Default 0.
    pub abs: f64,
    /// Forward when |value − last forwarded| > `rel` × |last forwarded|. Finite, ≥ 0; 0 turns
    /// this test off. Default 0. With both `abs` and `rel` 0, any change is forwarded.
    pub rel: f64,
    /// Forward when the reading's `ts` is this many seconds or more after the last forwarded
    /// one's (a heartbeat); 0: never for that reason. Default 300.
    pub max_interval_s: u64,
    pub(crate) device_glob: CompiledGlob,
    pub(crate) metric_glob: CompiledGlob,
}

impl DeadbandRule {
    /// Whether this rule matches `metric` of `device`.
    pub fn matches(&self, device: &str, metric: &str) -> bool {
        self.device_glob.0.is_match(device) && self.metric_glob.0.is_match(metric)
    }
}

/// The reduction that applies to one series.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Reduction<'a> {
    /// `window[index]`.
    Window(usize, &'a WindowRule),
    /// `deadband[index]`.
    Deadband(usize, &'a DeadbandRule),
}

impl crate::Config {
    /// The reduction of `metric` of `device`: the first matching `[[window]]`, else the first
    /// matching `[[deadband]]`, else `None` (see the module doc of `window`).
    pub fn reduction_for(&self, device: &str, metric: &str) -> Option<Reduction<'_>> {
        if let Some((i, w)) = self
            .window
            .iter()
            .enumerate()
            .find(|(_, w)| w.matches(device, metric))
        {
            return Some(Reduction::Window(i, w));
        }
        self.deadband
            .iter()
            .enumerate()
            .find(|(_, d)| d.matches(device, metric))
            .map(|(i, d)| Reduction::Deadband(i, d))
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct RawWindow {
    pub metric: Option<String>,
    pub device: Option<String>,
    pub window_s: Option<u64>,
    pub emit: Option<Vec<WindowFn>>,
    pub raw: Option<RawReadings>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct RawDeadband {
    pub metric: Option<String>,
    pub device: Option<String>,
    pub abs: Option<f64>,
    pub rel: Option<f64>,
    pub max_interval_s: Option<u64>,
}

type Result<T> = std::result::Result<T, ConfigError>;

/// The `[[window]]` tables, in file order.
pub(crate) fn windows(raw: Vec<RawWindow>, cx: &Ctx<'_>) -> Result<Vec<WindowRule>> {
    let mut rules: Vec<WindowRule> = Vec::with_capacity(raw.len());
    for (i, raw) in raw.into_iter().enumerate() {
        let key = |k: &str| format!("window[{i}].{k}");
        let (metric, device, metric_glob, device_glob) = globs(&key, raw.metric, raw.device, cx)?;
        let window_s = raw.window_s.unwrap_or(WINDOW_S);
        if window_s == 0 || window_s > WINDOW_MAX_S {
            return Err(cx.invalid(
                &key("window_s"),
                format!("must be from 1 to {WINDOW_MAX_S} (366 days), found {window_s}"),
            ));
        }
        let emit = raw.emit.unwrap_or_else(|| WINDOW_EMIT.to_vec());
        if emit.is_empty() {
            return Err(cx.invalid(
                &key("emit"),
                "expected one or more of \"mean\", \"min\", \"max\", \"count\", \"last\", found []",
            ));
        }
        for (j, f) in emit.iter().enumerate() {
            if emit[..j].contains(f) {
                return Err(cx.invalid(&key("emit"), format!("\"{}\" is listed twice", f.as_str())));
            }
        }
        if let Some(earlier) = rules
            .iter()
            .position(|r| r.metric == metric && r.device == device)
        {
            return Err(shadowed(cx, &key("metric"), "window", earlier, "window"));
        }
        rules.push(WindowRule {
            metric,
            device,
            window_s,
            emit,
            raw: raw.raw.unwrap_or(RawReadings::Keep),
            device_glob,
            metric_glob,
        });
    }
    Ok(rules)
}

/// The `[[deadband]]` tables, in file order; `windows` are the rules that take precedence.
pub(crate) fn deadbands(
    raw: Vec<RawDeadband>,
    windows: &[WindowRule],
    cx: &Ctx<'_>,
) -> Result<Vec<DeadbandRule>> {
    let mut rules: Vec<DeadbandRule> = Vec::with_capacity(raw.len());
    for (i, raw) in raw.into_iter().enumerate() {
        let key = |k: &str| format!("deadband[{i}].{k}");
        let (metric, device, metric_glob, device_glob) = globs(&key, raw.metric, raw.device, cx)?;
        let band = |k: &str, v: Option<f64>| -> Result<f64> {
            let v = v.unwrap_or(0.0);
            if !v.is_finite() || v < 0.0 {
                return Err(
                    cx.invalid(&key(k), format!("expected a finite number >= 0, found {v}"))
                );
            }
            Ok(v)
        };
        let abs = band("abs", raw.abs)?;
        let rel = band("rel", raw.rel)?;
        if let Some(earlier) = windows
            .iter()
            .position(|r| r.metric == metric && r.device == device)
        {
            return Err(shadowed(cx, &key("metric"), "deadband", earlier, "window"));
        }
        if let Some(earlier) = rules
            .iter()
            .position(|r| r.metric == metric && r.device == device)
        {
            return Err(shadowed(
                cx,
                &key("metric"),
                "deadband",
                earlier,
                "deadband",
            ));
        }
        rules.push(DeadbandRule {
            metric,
            device,
            abs,
            rel,
            max_interval_s: raw.max_interval_s.unwrap_or(DEADBAND_MAX_INTERVAL_S),
            device_glob,
            metric_glob,
        });
    }
    Ok(rules)
}

/// `metric` (required) and `device` (default `"*"`) of a table, with their compiled globs.
fn globs(
    key: &dyn Fn(&str) -> String,
    metric: Option<String>,
    device: Option<String>,
    cx: &Ctx<'_>,
) -> Result<(String, String, CompiledGlob, CompiledGlob)> {
    let metric = metric.ok_or_else(|| cx.missing(&key("metric")))?;
    let device = device.unwrap_or_else(|| REDUCE_DEVICE_GLOB.to_owned());
    let metric_glob = glob(&key("metric"), &metric, cx)?;
    let device_glob = glob(&key("device"), &device, cx)?;
    Ok((metric, device, metric_glob, device_glob))
}

/// A rule with the same globs as an earlier one: it could never apply.
fn shadowed(cx: &Ctx<'_>, key: &str, this: &str, earlier: usize, kind: &str) -> ConfigError {
    cx.invalid(
        key,
        format!(
            "this [[{this}]] has the same metric and device globs as {kind}[{earlier}], which \
             applies first (one reduction per series: the first matching [[window]], else the \
             first matching [[deadband]]), so it would never apply; remove one or narrow its globs"
        ),
    )
}
