//! The alarm engine: threshold, rate-of-change and silence rules over readings, as a pure state
//! machine. The caller feeds it readings and clock ticks and stores the events it returns; it
//! does no I/O and reads no clock of its own, so every test is deterministic.
//!
//! One state machine per (rule, device, metric) series: `normal → pending → active → normal`,
//! with an optional `clearing` hold on the way back. Events are emitted only on transitions:
//! `raised` once when the condition has held for `for_s`, `cleared` once when the clear condition
//! has held for `clear_for_s`. Inside the hysteresis band nothing changes, so nothing flaps.
//!
//! # Time
//! - Threshold and rate rules run on *event time*, the readings' `ts`. A reading older than the
//!   newest one already seen for its series (out of order) is ignored by these rules and counted
//!   in [`EngineStats::out_of_order`]: a late reading cannot re-raise or clear an alarm.
//! - `for_s` is confirmed by readings: a series is raised by the first reading that is still
//!   beyond the threshold `for_s` after the first one that was.
//! - Silence rules run on the gateway's clock (`now_ms` of [`Engine::on_reading`] and
//!   [`Engine::tick`]): a series that was seen goes quiet for `no_data_s` → raised on a tick;
//!   the next reading clears it.

use gateway_buffer::{AlarmEvent, AlarmState, Reading, Severity};
use globset::{Glob, GlobMatcher};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};

/// A rule ready to evaluate, built from one `[[alarm]]` table.
#[derive(Debug, Clone)]
pub struct Rule {
    pub name: String,
    device: GlobMatcher,
    metric: GlobMatcher,
    pub condition: Condition,
    /// How long the condition must hold before raising, in milliseconds.
    pub for_ms: i64,
    /// How long the clear condition must hold before clearing, in milliseconds.
    pub clear_for_ms: i64,
    pub severity: Severity,
}

/// What a rule watches.
#[derive(Debug, Clone, PartialEq)]
pub enum Condition {
    /// Raised when `value > above` or `value < below`; cleared when the value is back on the
    /// inside of the clear thresholds (`<= clear_below` and `>= clear_above`).
    Threshold {
        above: Option<Band>,
        below: Option<Band>,
    },
    /// Raised when |Δvalue| / Δt between consecutive readings exceeds this, per second.
    Rate { above_per_s: f64 },
    /// Raised when a series that was seen sends nothing for this long.
    Silence { no_data_ms: i64 },
}

/// A trigger threshold and the threshold that clears it (hysteresis).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Band {
    pub trigger: f64,
    pub clear: f64,
}

/// A rule could not be built.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum RuleError {
    /// A `device` or `metric` pattern is not a valid glob.
    #[error("alarm {rule:?}: bad glob {pattern:?}: {reason}")]
    BadGlob {
        rule: String,
        pattern: String,
        reason: String,
    },
}

impl Rule {
    pub fn new(
        name: &str,
        device_glob: &str,
        metric_glob: &str,
        condition: Condition,
        for_s: u64,
        clear_for_s: u64,
        severity: Severity,
    ) -> Result<Rule, RuleError> {
        let glob = |pattern: &str| {
            Glob::new(pattern)
                .map(|g| g.compile_matcher())
                .map_err(|e| RuleError::BadGlob {
                    rule: name.to_owned(),
                    pattern: pattern.to_owned(),
                    reason: e.kind().to_string(),
                })
        };
        Ok(Rule {
            name: name.to_owned(),
            device: glob(device_glob)?,
            metric: glob(metric_glob)?,
            condition,
            for_ms: secs_to_ms(for_s),
            clear_for_ms: secs_to_ms(clear_for_s),
            severity,
        })
    }

    fn matches(&self, device: &str, metric: &str) -> bool {
        self.device.is_match(device) && self.metric.is_match(metric)
    }

    /// Two rules are the same if a reload would not change how they evaluate.
    fn same_as(&self, other: &Rule) -> bool {
        self.name == other.name
            && self.device.glob() == other.device.glob()
            && self.metric.glob() == other.metric.glob()
            && self.condition == other.condition
            && self.for_ms == other.for_ms
            && self.clear_for_ms == other.clear_for_ms
            && self.severity == other.severity
    }
}

fn secs_to_ms(s: u64) -> i64 {
    i64::try_from(s.saturating_mul(1000)).unwrap_or(i64::MAX)
}

/// Where one series stands.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum Phase {
    Normal,
    /// The condition holds since `since_ms`, not yet for long enough.
    Pending {
        since_ms: i64,
    },
    /// Raised. `clearing_since_ms` is set while the clear condition holds but not yet long enough.
    Active {
        raised_ms: i64,
        threshold: Option<f64>,
        clearing_since_ms: Option<i64>,
    },
}

/// The state of one (rule, device, metric) series; what a restart must not forget.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Series {
    pub phase: Phase,
    /// Newest reading seen (event time, value), for rates and out-of-order detection.
    pub last_ts_ms: Option<i64>,
    pub last_value: f64,
    /// Gateway time of the last reading, for silence.
    pub last_seen_ms: i64,
}

/// (rule, device, metric).
pub type SeriesKey = (String, String, String);

/// An alarm that is raised now, for `/status`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ActiveAlarm {
    pub alarm: String,
    pub device: String,
    pub metric: String,
    /// `"info"`, `"warning"` or `"critical"`.
    pub severity: &'static str,
    pub threshold: Option<f64>,
    pub since_ms: i64,
}

/// Counters of what the engine did, for `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct EngineStats {
    pub series: usize,
    pub raised: u64,
    pub cleared: u64,
    /// Readings older than their series' newest: ignored by threshold and rate rules.
    pub out_of_order: u64,
    /// New series refused because `alarm_max_series` was reached.
    pub series_refused: u64,
}

/// The rules and the state of every series they track.
///
/// Series are kept per device, then per metric, each with the rules that match that pair: the
/// globs are matched once per new (device, metric), not once per reading, and a reading finds its
/// series without allocating.
#[derive(Debug)]
pub struct Engine {
    rules: Vec<Rule>,
    routes: HashMap<String, HashMap<String, Route>>,
    /// Series with state, over all routes (what `max_series` bounds).
    n_series: usize,
    /// Routes known, including those no rule matches (bounded like series).
    n_routes: usize,
    max_series: usize,
    stats: EngineStats,
}

/// The rules matching one (device, metric), by index into `Engine::rules`, and their series
/// (`None` until the first reading after a restore or reload).
#[derive(Debug, Default)]
struct Route {
    entries: Vec<(usize, Option<Series>)>,
}

impl Engine {
    pub fn new(rules: Vec<Rule>, max_series: usize) -> Engine {
        Engine {
            rules,
            routes: HashMap::new(),
            n_series: 0,
            n_routes: 0,
            max_series,
            stats: EngineStats::default(),
        }
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    pub fn stats(&self) -> EngineStats {
        EngineStats {
            series: self.n_series,
            ..self.stats
        }
    }

    /// Evaluates one reading against every rule that matches it; returns the events it causes.
    pub fn on_reading(&mut self, r: &Reading, now_ms: i64) -> Vec<AlarmEvent> {
        let mut events = Vec::new();
        if !self.has_route(&r.device, &r.metric) && !self.add_route(&r.device, &r.metric) {
            return events;
        }
        let Some(route) = self
            .routes
            .get_mut(r.device.as_str())
            .and_then(|m| m.get_mut(r.metric.as_str()))
        else {
            return events;
        };
        for (rule_idx, slot) in &mut route.entries {
            let series = slot.get_or_insert_with(|| {
                self.n_series += 1;
                Series {
                    phase: Phase::Normal,
                    last_ts_ms: None,
                    last_value: r.value,
                    last_seen_ms: now_ms,
                }
            });
            if let Some(e) = step(&self.rules[*rule_idx], series, r, now_ms, &mut self.stats) {
                events.push(e);
            }
        }
        events
    }

    fn has_route(&self, device: &str, metric: &str) -> bool {
        self.routes
            .get(device)
            .is_some_and(|m| m.contains_key(metric))
    }

    /// Matches the globs for a new (device, metric). Refuses (and counts) when the series it
    /// would add, or the route itself, are past the bound; the reading is then not evaluated.
    fn add_route(&mut self, device: &str, metric: &str) -> bool {
        let matching: Vec<usize> = (0..self.rules.len())
            .filter(|&i| self.rules[i].matches(device, metric))
            .collect();
        if self.n_series + matching.len() > self.max_series || self.n_routes >= self.max_series {
            self.stats.series_refused += matching.len().max(1) as u64;
            return false;
        }
        let entries = matching.into_iter().map(|i| (i, None)).collect();
        self.routes
            .entry(device.to_owned())
            .or_default()
            .insert(metric.to_owned(), Route { entries });
        self.n_routes += 1;
        true
    }

    /// Every series with state: (rule, device, metric, series).
    fn each_series(&self) -> impl Iterator<Item = (&Rule, &str, &str, &Series)> {
        self.routes.iter().flat_map(move |(device, metrics)| {
            metrics.iter().flat_map(move |(metric, route)| {
                route.entries.iter().filter_map(move |(i, s)| {
                    s.as_ref()
                        .map(|s| (&self.rules[*i], device.as_str(), metric.as_str(), s))
                })
            })
        })
    }

    /// Checks silence rules against the gateway clock; call it every second or so.
    pub fn tick(&mut self, now_ms: i64) -> Vec<AlarmEvent> {
        let mut events = Vec::new();
        for (device, metrics) in &mut self.routes {
            for (metric, route) in metrics {
                for (i, slot) in &mut route.entries {
                    let rule = &self.rules[*i];
                    let (Condition::Silence { no_data_ms }, Some(s)) =
                        (&rule.condition, slot.as_mut())
                    else {
                        continue;
                    };
                    if s.phase != Phase::Normal || now_ms - s.last_seen_ms < *no_data_ms {
                        continue;
                    }
                    s.phase = Phase::Active {
                        raised_ms: now_ms,
                        threshold: None,
                        clearing_since_ms: None,
                    };
                    self.stats.raised += 1;
                    events.push(event(
                        rule,
                        device,
                        metric,
                        AlarmState::Raised,
                        s.last_value,
                        None,
                        now_ms,
                    ));
                }
            }
        }
        events
    }

    /// Swaps in new rules. Series of rules that are unchanged keep their state; the rest start
    /// afresh (a changed rule's active alarm is forgotten without a `cleared` event).
    pub fn reload(&mut self, rules: Vec<Rule>) {
        let kept: Vec<String> = rules
            .iter()
            .filter(|new| self.rules.iter().any(|old| old.same_as(new)))
            .map(|r| r.name.clone())
            .collect();
        let mut snapshot = self.snapshot();
        snapshot
            .series
            .retain(|(name, _, _), _| kept.contains(name));
        self.rules = rules;
        self.restore(snapshot);
    }

    /// Raised alarms, sorted by rule, device, metric.
    pub fn active(&self) -> Vec<ActiveAlarm> {
        let mut out: Vec<ActiveAlarm> = self
            .each_series()
            .filter_map(|(rule, device, metric, s)| match s.phase {
                Phase::Active {
                    raised_ms,
                    threshold,
                    ..
                } => Some(ActiveAlarm {
                    alarm: rule.name.clone(),
                    device: device.to_owned(),
                    metric: metric.to_owned(),
                    severity: rule.severity.as_str(),
                    threshold,
                    since_ms: raised_ms,
                }),
                _ => None,
            })
            .collect();
        out.sort_by(|a, b| (&a.alarm, &a.device, &a.metric).cmp(&(&b.alarm, &b.device, &b.metric)));
        out
    }

    /// The state to persist so that a restart neither repeats a raise nor forgets an alarm.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            series: self
                .each_series()
                .map(|(rule, device, metric, s)| {
                    (
                        (rule.name.clone(), device.to_owned(), metric.to_owned()),
                        s.clone(),
                    )
                })
                .collect(),
        }
    }

    /// Replaces all state with a snapshot; series of rules that no longer exist are dropped.
    pub fn restore(&mut self, snapshot: Snapshot) {
        self.routes.clear();
        self.n_series = 0;
        self.n_routes = 0;
        for ((name, device, metric), s) in snapshot.series {
            let Some(rule_idx) = self.rules.iter().position(|r| r.name == name) else {
                continue;
            };
            if !self.has_route(&device, &metric) && !self.add_route(&device, &metric) {
                continue;
            }
            let route = self
                .routes
                .get_mut(&device)
                .and_then(|m| m.get_mut(&metric));
            if let Some((_, slot)) =
                route.and_then(|r| r.entries.iter_mut().find(|(i, _)| *i == rule_idx))
            {
                if slot.is_none() {
                    self.n_series += 1;
                }
                *slot = Some(s);
            }
        }
    }
}

/// Persisted engine state (postcard-encoded by the caller).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    pub series: BTreeMap<SeriesKey, Series>,
}

/// Advances one series by one reading.
fn step(
    rule: &Rule,
    s: &mut Series,
    r: &Reading,
    now_ms: i64,
    stats: &mut EngineStats,
) -> Option<AlarmEvent> {
    let previous = s.last_ts_ms.map(|ts| (ts, s.last_value));
    s.last_seen_ms = s.last_seen_ms.max(now_ms);
    if let Condition::Silence { .. } = rule.condition {
        // Any reading, late or not, ends a silence.
        if previous.is_none_or(|(ts, _)| r.ts_ms >= ts) {
            s.last_ts_ms = Some(r.ts_ms);
            s.last_value = r.value;
        }
        return match s.phase {
            Phase::Active { .. } => {
                s.phase = Phase::Normal;
                stats.cleared += 1;
                Some(event(
                    rule,
                    &r.device,
                    &r.metric,
                    AlarmState::Cleared,
                    r.value,
                    None,
                    r.ts_ms,
                ))
            }
            _ => None,
        };
    }
    if let Some((last_ts, _)) = previous
        && r.ts_ms < last_ts
    {
        stats.out_of_order += 1;
        return None;
    }
    s.last_ts_ms = Some(r.ts_ms);
    s.last_value = r.value;

    // What this reading says: is the raise condition met, is the clear condition met, and the
    // value and threshold to report.
    let (violates, clears, value, trigger, clear_at) = match rule.condition {
        Condition::Threshold { above, below } => {
            let up = above.filter(|b| r.value > b.trigger);
            let down = below.filter(|b| r.value < b.trigger);
            let clears = above.is_none_or(|b| r.value <= b.clear)
                && below.is_none_or(|b| r.value >= b.clear);
            let trigger = up.or(down).map(|b| b.trigger);
            let active_band = match s.phase {
                Phase::Active { threshold, .. } => [above, below]
                    .into_iter()
                    .flatten()
                    .find(|b| Some(b.trigger) == threshold),
                _ => None,
            };
            (
                trigger.is_some(),
                clears,
                r.value,
                trigger,
                active_band.map(|b| b.clear),
            )
        }
        Condition::Rate { above_per_s } => {
            let rate = match previous {
                Some((ts, v)) if r.ts_ms > ts => {
                    (r.value - v).abs() * 1000.0 / (r.ts_ms - ts) as f64
                }
                // The first reading, or two at the same instant: no rate to judge.
                _ => return None,
            };
            (
                rate > above_per_s,
                rate <= above_per_s,
                rate,
                Some(above_per_s),
                Some(above_per_s),
            )
        }
        Condition::Silence { .. } => return None,
    };

    match s.phase {
        Phase::Normal | Phase::Pending { .. } if violates => {
            let since = match s.phase {
                Phase::Pending { since_ms } => since_ms,
                _ => r.ts_ms,
            };
            if r.ts_ms - since >= rule.for_ms {
                s.phase = Phase::Active {
                    raised_ms: r.ts_ms,
                    threshold: trigger,
                    clearing_since_ms: None,
                };
                stats.raised += 1;
                Some(event(
                    rule,
                    &r.device,
                    &r.metric,
                    AlarmState::Raised,
                    value,
                    trigger,
                    r.ts_ms,
                ))
            } else {
                s.phase = Phase::Pending { since_ms: since };
                None
            }
        }
        Phase::Pending { .. } => {
            s.phase = Phase::Normal;
            None
        }
        Phase::Normal => None,
        Phase::Active {
            raised_ms,
            threshold,
            clearing_since_ms,
        } => {
            if !clears {
                s.phase = Phase::Active {
                    raised_ms,
                    threshold,
                    clearing_since_ms: None,
                };
                return None;
            }
            let since = clearing_since_ms.unwrap_or(r.ts_ms);
            if r.ts_ms - since >= rule.clear_for_ms {
                s.phase = Phase::Normal;
                stats.cleared += 1;
                Some(event(
                    rule,
                    &r.device,
                    &r.metric,
                    AlarmState::Cleared,
                    value,
                    clear_at.or(threshold),
                    r.ts_ms,
                ))
            } else {
                s.phase = Phase::Active {
                    raised_ms,
                    threshold,
                    clearing_since_ms: Some(since),
                };
                None
            }
        }
    }
}

fn event(
    rule: &Rule,
    device: &str,
    metric: &str,
    state: AlarmState,
    value: f64,
    threshold: Option<f64>,
    ts_ms: i64,
) -> AlarmEvent {
    AlarmEvent {
        alarm: rule.name.clone(),
        state,
        severity: rule.severity,
        device: device.to_owned(),
        metric: metric.to_owned(),
        value,
        threshold,
        ts_ms,
    }
}
