//! Windows and report by exception: what the `[[window]]` and `[[deadband]]` rules make of the
//! readings before they are stored for upstream, as a pure state machine. The caller feeds it
//! readings and clock ticks; it returns which readings go upstream, the aggregates windows emit,
//! and which series' state changed. It does no I/O and reads no clock of its own.
//!
//! # Which rule
//! A series (device, metric) is reduced by the first `[[window]]` whose globs match it, else the
//! first matching `[[deadband]]`, else not at all (see `gateway_config::Config::reduction_for`).
//! Alarm rules run before this, on every raw reading.
//!
//! # Windows
//! - Tumbling windows `[k·w, (k+1)·w)` of the readings' event time `ts` (ms since the epoch),
//!   aligned to the epoch. A series has at most one *open* window. A reading inside it is added
//!   (in any order: mean, min, max and count do not depend on order; `last` is the value of the
//!   latest `ts`, of equal `ts` the one that came last). A reading of a later window closes the
//!   open one (it is emitted) and opens its own.
//! - **Closed by the clock**: on [`Reducer::tick`], a window whose end lies [`CLOSE_DELAY_MS`] or
//!   more behind the gateway's clock is emitted, so a series that goes quiet still reports.
//! - **Emitted once**: one reading per function of the rule, named `<metric>.<fn>` in the order
//!   mean, min, max, count, last, with `ts` = the window's end, the device, the last unit seen
//!   (`null` for count) and the source of the last reading. The series then remembers the end
//!   of the latest emitted window; nothing before it is aggregated again. An empty window
//!   emits nothing (only a reading opens a window).
//! - **Late readings**: a reading older than the series' open window's start, or than the end of
//!   an emitted window, is counted ([`ReduceStats::late`]), never aggregated, and forwarded raw
//!   whatever `raw` says: no window can take it, and a device back-filling old data must not
//!   lose it silently.
//! - **Numbers**: values are finite (ingest rejects the rest as `bad_value`; a non-finite one
//!   reaching here is forwarded untouched and not aggregated). The mean is kept as a running
//!   convex combination (`mean·(n−1)/n + v/n`), which cannot overflow for finite inputs; window
//!   bounds saturate at the ends of `i64`, so any `ts` is safe.
//!
//! # Deadband
//! A reading is forwarded when it is the series' first, or moved more than `abs` (when `abs` >
//! 0), or more than `rel` × |last forwarded| (when `rel` > 0), from the last forwarded value; with
//! both 0, any change. Or when its `ts` is `max_interval_s` or more after the last forwarded one
//! (when > 0): a heartbeat. A forwarded reading older than the last forwarded one becomes the
//! value compared against, but the heartbeat keeps counting from the newest `ts`. Otherwise it is
//! suppressed and counted ([`ReduceStats::suppressed`]).
//!
//! # Memory
//! At most `max_series` series are tracked. A new series beyond that is refused: its readings go
//! upstream unreduced, counted in [`ReduceStats::series_refused`]. Series are never forgotten
//! while the gateway runs: a forgotten window series could emit a window twice (its emitted end
//! would be gone). Restored series are all kept, even beyond a lowered bound.
//!
//! # Persistence
//! Each series' state is one small value ([`Reducer::state_write`]) under its own key. The
//! pipeline stores the state of the series a batch changed *inside the same group commit* as
//! the batch's records (see `pipeline`), so what is durable is always exactly the aggregate of the
//! readings that were acknowledged, and an emitted window's aggregates are durable together with
//! the state that says it was emitted.

use gateway_buffer::{Reading, Source};
use gateway_config::{Config, DeadbandRule, RawReadings, WindowFn, WindowRule};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// How long after its end the clock closes a window: readings stamped inside it that are still
/// on their way (broker, group commit) get there first.
pub const CLOSE_DELAY_MS: i64 = 2_000;

/// The prefix of every series' state key in the buffer's state store.
pub const STATE_PREFIX: &str = "window/";

/// The state of one series: what a restart must not forget.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum SeriesState {
    Window {
        /// End of the latest emitted window: readings older than this are late.
        emitted_until_ms: Option<i64>,
        open: Option<OpenWindow>,
    },
    Deadband {
        /// The last forwarded value.
        value: f64,
        /// The newest `ts` forwarded (the heartbeat counts from it).
        ts_ms: i64,
    },
}

/// A window holding at least one reading.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OpenWindow {
    pub start_ms: i64,
    pub end_ms: i64,
    /// Bit `i` set: emit `WindowFn::ALL[i]`. Kept with the window, so a window opened under one
    /// config is emitted as that config said after a restart with another.
    pub emit: u8,
    pub count: u64,
    pub mean: f64,
    pub min: f64,
    pub max: f64,
    pub last_ts_ms: i64,
    pub last: f64,
    pub unit: Option<String>,
    pub source: Source,
}

impl OpenWindow {
    fn new(start_ms: i64, end_ms: i64, emit: u8, r: &Reading) -> OpenWindow {
        OpenWindow {
            start_ms,
            end_ms,
            emit,
            count: 1,
            mean: r.value,
            min: r.value,
            max: r.value,
            last_ts_ms: r.ts_ms,
            last: r.value,
            unit: r.unit.clone(),
            source: r.source,
        }
    }

    fn contains(&self, ts_ms: i64) -> bool {
        // The last window of i64, cut short by saturation, holds i64::MAX itself.
        self.start_ms <= ts_ms && (ts_ms < self.end_ms || self.end_ms == i64::MAX)
    }

    fn add(&mut self, r: &Reading) {
        self.count = self.count.saturating_add(1);
        let n = self.count as f64;
        // A convex combination of finite values: finite, whatever their size.
        self.mean = self.mean * ((n - 1.0) / n) + r.value / n;
        self.min = self.min.min(r.value);
        self.max = self.max.max(r.value);
        if r.ts_ms >= self.last_ts_ms {
            self.last_ts_ms = r.ts_ms;
            self.last = r.value;
        }
        if r.unit.is_some() {
            self.unit.clone_from(&r.unit);
        }
        self.source = r.source;
    }

    /// The readings this window emits for `device`/`metric`.
    fn emit(&self, device: &str, metric: &str) -> Vec<Reading> {
        WindowFn::ALL
            .iter()
            .enumerate()
            .filter(|(i, _)| self.emit & (1 << i) != 0)
            .map(|(_, f)| Reading {
                device: device.to_owned(),
                metric: format!("{metric}.{}", f.as_str()),
                value: match f {
                    WindowFn::Mean => self.mean,
                    WindowFn::Min => self.min,
                    WindowFn::Max => self.max,
                    WindowFn::Count => self.count as f64,
                    WindowFn::Last => self.last,
                },
                unit: match f {
                    WindowFn::Count => None,
                    _ => self.unit.clone(),
                },
                ts_ms: self.end_ms,
                source: self.source,
            })
            .collect()
    }
}

/// The emit mask of a rule's functions.
fn emit_mask(emit: &[WindowFn]) -> u8 {
    WindowFn::ALL
        .iter()
        .enumerate()
        .filter(|(_, f)| emit.contains(f))
        .fold(0, |m, (i, _)| m | 1 << i)
}

/// The window of length `window_ms` holding `ts_ms`, as `(start, end)`; saturating at the ends
/// of `i64`.
pub fn window_of(ts_ms: i64, window_ms: i64) -> (i64, i64) {
    let start = ts_ms
        .checked_sub(ts_ms.rem_euclid(window_ms))
        .unwrap_or(i64::MIN);
    (start, start.saturating_add(window_ms))
}

/// Whether a deadband forwards `value` at `ts_ms` after `last` (value, ts) was forwarded.
pub fn deadband_forwards(
    rule: &DeadbandRule,
    last: Option<(f64, i64)>,
    value: f64,
    ts_ms: i64,
) -> bool {
    let Some((last, last_ts)) = last else {
        return true;
    };
    let moved = (value - last).abs();
    let by_abs = rule.abs > 0.0 && moved > rule.abs;
    let by_rel = rule.rel > 0.0 && moved > rule.rel * last.abs();
    let any_change = rule.abs == 0.0 && rule.rel == 0.0 && moved > 0.0;
    let max_interval_ms = secs_to_ms(rule.max_interval_s);
    let heartbeat = max_interval_ms > 0 && ts_ms.saturating_sub(last_ts) >= max_interval_ms;
    by_abs || by_rel || any_change || heartbeat
}

fn secs_to_ms(s: u64) -> i64 {
    i64::try_from(s.saturating_mul(1000)).unwrap_or(i64::MAX)
}

/// What becomes of one reading.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Decision {
    /// The raw reading goes upstream.
    pub forward: bool,
    /// Aggregates of a window this reading closed.
    pub emitted: Vec<Reading>,
    /// The series' state changed: store [`Reducer::state_write`] with this reading.
    pub changed: bool,
}

/// Counters of what the reducer did, for `/metrics` and `/status`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct ReduceStats {
    /// Series tracked now.
    pub series: usize,
    /// Windows open now.
    pub open_windows: usize,
    /// Windows emitted.
    pub windows_emitted: u64,
    /// Readings those windows emitted (one per function).
    pub readings_emitted: u64,
    /// Readings a window could not take (older than its open window or an emitted one).
    pub late: u64,
    /// Raw readings aggregated and not forwarded (`raw = "drop"`).
    pub raw_dropped: u64,
    /// Readings a deadband did not forward.
    pub suppressed: u64,
    /// Readings of new series refused by `window_max_series` (forwarded unreduced).
    pub series_refused: u64,
}

/// (device, metric).
pub type SeriesKey = (String, String);

/// The rules and every series' state.
#[derive(Debug)]
pub struct Reducer {
    windows: Vec<WindowRule>,
    deadbands: Vec<DeadbandRule>,
    series: HashMap<SeriesKey, SeriesState>,
    max_series: usize,
    stats: ReduceStats,
}

/// The rule that applies to a series now.
enum Route<'a> {
    Window(&'a WindowRule),
    Deadband(&'a DeadbandRule),
    None,
}

impl Reducer {
    pub fn new(
        windows: Vec<WindowRule>,
        deadbands: Vec<DeadbandRule>,
        max_series: usize,
    ) -> Reducer {
        Reducer {
            windows,
            deadbands,
            series: HashMap::new(),
            max_series,
            stats: ReduceStats::default(),
        }
    }

    /// The reducer of a config's `[[window]]` and `[[deadband]]` rules.
    pub fn from_config(config: &Config) -> Reducer {
        Reducer::new(
            config.window.clone(),
            config.deadband.clone(),
            config.window_max_series,
        )
    }

    /// Whether any rule is configured (without rules every reading is forwarded as it came).
    pub fn is_active(&self) -> bool {
        !(self.windows.is_empty() && self.deadbands.is_empty() && self.series.is_empty())
    }

    pub fn stats(&self) -> ReduceStats {
        ReduceStats {
            series: self.series.len(),
            open_windows: self
                .series
                .values()
                .filter(|s| matches!(s, SeriesState::Window { open: Some(_), .. }))
                .count(),
            ..self.stats
        }
    }

    fn route(&self, device: &str, metric: &str) -> Route<'_> {
        // The same precedence as `Config::reduction_for`, on the rules this reducer holds.
        if let Some(w) = self.windows.iter().find(|w| w.matches(device, metric)) {
            return Route::Window(w);
        }
        match self.deadbands.iter().find(|d| d.matches(device, metric)) {
            Some(d) => Route::Deadband(d),
            None => Route::None,
        }
    }

    /// Decides what becomes of one reading and updates its series.
    pub fn on_reading(&mut self, r: &Reading) -> Decision {
        let mut decision = Decision {
            forward: true,
            ..Decision::default()
        };
        if !r.value.is_finite() {
            return decision;
        }
        let key = (r.device.clone(), r.metric.clone());
        let (window_ms, emit, raw, deadband) = match self.route(&r.device, &r.metric) {
            Route::Window(w) => (secs_to_ms(w.window_s), emit_mask(&w.emit), w.raw, None),
            Route::Deadband(d) => (0, 0, RawReadings::Keep, Some(d.clone())),
            Route::None => {
                // A series restored under rules that no longer reduce it: its open window is
                // emitted now, and it is forgotten.
                if let Some(state) = self.series.remove(&key) {
                    decision.emitted = self.close(&key, state);
                    decision.changed = true;
                }
                return decision;
            }
        };
        let state = match self.series.remove(&key) {
            Some(state) => state,
            None if self.series.len() >= self.max_series => {
                self.stats.series_refused += 1;
                return decision;
            }
            None => {
                decision.changed = true;
                match deadband {
                    Some(_) => SeriesState::Deadband {
                        value: r.value,
                        ts_ms: r.ts_ms,
                    },
                    None => SeriesState::Window {
                        emitted_until_ms: None,
                        open: None,
                    },
                }
            }
        };
        let state = match (deadband, state) {
            (Some(rule), SeriesState::Deadband { value, ts_ms }) => {
                // A fresh series stored this reading as its last: the first is always forwarded.
                let first = decision.changed;
                if first || deadband_forwards(&rule, Some((value, ts_ms)), r.value, r.ts_ms) {
                    decision.changed = true;
                    SeriesState::Deadband {
                        value: r.value,
                        ts_ms: ts_ms.max(r.ts_ms),
                    }
                } else {
                    decision.forward = false;
                    self.stats.suppressed += 1;
                    SeriesState::Deadband { value, ts_ms }
                }
            }
            (Some(_), window @ SeriesState::Window { .. }) => {
                // Moved from a window rule to a deadband: emit what the window holds, then start
                // the deadband with this reading (forwarded).
                decision.emitted = self.close(&key, window);
                decision.changed = true;
                SeriesState::Deadband {
                    value: r.value,
                    ts_ms: r.ts_ms,
                }
            }
            (None, SeriesState::Deadband { .. }) => {
                decision.changed = true;
                self.window_reading(&key, None, None, r, window_ms, emit, raw, &mut decision)
            }
            (
                None,
                SeriesState::Window {
                    emitted_until_ms,
                    open,
                },
            ) => self.window_reading(
                &key,
                emitted_until_ms,
                open,
                r,
                window_ms,
                emit,
                raw,
                &mut decision,
            ),
        };
        self.series.insert(key, state);
        decision
    }

    /// A reading of a window series.
    #[allow(clippy::too_many_arguments)]
    fn window_reading(
        &mut self,
        key: &SeriesKey,
        emitted_until_ms: Option<i64>,
        open: Option<OpenWindow>,
        r: &Reading,
        window_ms: i64,
        emit: u8,
        raw: RawReadings,
        decision: &mut Decision,
    ) -> SeriesState {
        let late = emitted_until_ms.is_some_and(|e| r.ts_ms < e)
            || open.as_ref().is_some_and(|o| r.ts_ms < o.start_ms);
        if late {
            self.stats.late += 1;
            return SeriesState::Window {
                emitted_until_ms,
                open,
            };
        }
        decision.changed = true;
        decision.forward = raw == RawReadings::Keep;
        if !decision.forward {
            self.stats.raw_dropped += 1;
        }
        let mut emitted_until_ms = emitted_until_ms;
        let open = match open {
            Some(mut o) if o.contains(r.ts_ms) => {
                o.add(r);
                o
            }
            earlier => {
                if let Some(o) = earlier {
                    emitted_until_ms = Some(o.end_ms);
                    decision.emitted = self.emit(key, &o);
                }
                let (start, end) = window_of(r.ts_ms, window_ms);
                // After a restart with a longer window_s, the new window must not reach back
                // over one already emitted.
                let start = start.max(emitted_until_ms.unwrap_or(i64::MIN));
                OpenWindow::new(start, end, emit, r)
            }
        };
        SeriesState::Window {
            emitted_until_ms,
            open: Some(open),
        }
    }

    fn emit(&mut self, key: &SeriesKey, o: &OpenWindow) -> Vec<Reading> {
        let readings = o.emit(&key.0, &key.1);
        self.stats.windows_emitted += 1;
        self.stats.readings_emitted += readings.len() as u64;
        readings
    }

    /// What a series leaving its rule emits: the aggregates of its open window, if any.
    fn close(&mut self, key: &SeriesKey, state: SeriesState) -> Vec<Reading> {
        match state {
            SeriesState::Window { open: Some(o), .. } => self.emit(key, &o),
            _ => Vec::new(),
        }
    }

    /// Closes every window that ended [`CLOSE_DELAY_MS`] or more before `now_ms`: returns what
    /// they emit and the series that changed (store their [`Reducer::state_write`] with it).
    pub fn tick(&mut self, now_ms: i64) -> (Vec<Reading>, Vec<SeriesKey>) {
        let due: Vec<SeriesKey> = self
            .series
            .iter()
            .filter(|(_, s)| match s {
                SeriesState::Window { open: Some(o), .. } => {
                    o.end_ms.saturating_add(CLOSE_DELAY_MS) <= now_ms
                }
                _ => false,
            })
            .map(|(k, _)| k.clone())
            .collect();
        let mut emitted = Vec::new();
        for key in &due {
            if let Some(SeriesState::Window {
                emitted_until_ms,
                open,
            }) = self.series.get_mut(key)
                && let Some(o) = open.take()
            {
                *emitted_until_ms = Some(o.end_ms);
                let readings = o.emit(&key.0, &key.1);
                self.stats.windows_emitted += 1;
                self.stats.readings_emitted += readings.len() as u64;
                emitted.extend(readings);
            }
        }
        (emitted, due)
    }

    /// The state store key and value of a series; an empty value deletes the key (the series
    /// was forgotten).
    pub fn state_write(&self, device: &str, metric: &str) -> (String, Vec<u8>) {
        let key = state_key(device, metric);
        let value = self
            .series
            .get(&(device.to_owned(), metric.to_owned()))
            .and_then(|s| postcard::to_stdvec(s).ok())
            .unwrap_or_default();
        (key, value)
    }

    /// Takes back persisted series (from [`Reducer::state_write`]); keys that do not parse are
    /// returned, to be logged.
    pub fn restore(&mut self, stored: Vec<(String, Vec<u8>)>) -> Vec<String> {
        let mut unreadable = Vec::new();
        for (key, bytes) in stored {
            if bytes.is_empty() {
                continue;
            }
            let parsed =
                parse_state_key(&key).zip(postcard::from_bytes::<SeriesState>(&bytes).ok());
            match parsed {
                Some((series, state)) => {
                    self.series.insert(series, state);
                }
                None => unreadable.push(key),
            }
        }
        unreadable
    }
}

/// `window/<device>\0<metric>`: ids never hold a NUL (ingest refuses control characters).
pub fn state_key(device: &str, metric: &str) -> String {
    format!("{STATE_PREFIX}{device}\0{metric}")
}

fn parse_state_key(key: &str) -> Option<SeriesKey> {
    let (device, metric) = key.strip_prefix(STATE_PREFIX)?.split_once('\0')?;
    Some((device.to_owned(), metric.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reducer(toml: &str) -> Reducer {
        Reducer::from_config(&Config::parse(toml, "test.toml").unwrap())
    }

    fn reading(metric: &str, value: f64, ts_ms: i64) -> Reading {
        Reading {
            device: "dev-1".to_owned(),
            metric: metric.to_owned(),
            value,
            unit: Some("C".to_owned()),
            ts_ms,
            source: Source::Mqtt,
        }
    }

    /// (metric, value, ts) of emitted readings.
    fn short(readings: &[Reading]) -> Vec<(String, f64, i64)> {
        readings
            .iter()
            .map(|r| (r.metric.clone(), r.value, r.ts_ms))
            .collect()
    }

    const WINDOW_10S: &str = "[[window]]\nmetric = \"t\"\nwindow_s = 10\n";

    #[test]
    fn window_bounds_are_aligned_to_the_epoch_and_saturate_at_the_ends_of_i64() {
        let table = [
            (0, 10_000, (0, 10_000)),
            (9_999, 10_000, (0, 10_000)),
            (10_000, 10_000, (10_000, 20_000)),
            (-1, 10_000, (-10_000, 0)),
            (
                1_764_081_600_123,
                60_000,
                (1_764_081_600_000, 1_764_081_660_000),
            ),
            (
                i64::MAX,
                60_000,
                (i64::MAX - i64::MAX.rem_euclid(60_000), i64::MAX),
            ),
            (i64::MIN, 60_000, (i64::MIN, i64::MIN + 60_000)),
            (i64::MIN + 1, 1, (i64::MIN + 1, i64::MIN + 2)),
        ];
        for (ts, w, expected) in table {
            assert_eq!(window_of(ts, w), expected, "ts {ts}, window {w}");
        }
    }

    #[test]
    fn a_window_aggregates_its_readings_in_any_order_and_emits_once_when_a_later_one_arrives() {
        let mut r = reducer(WINDOW_10S);
        // ts out of order inside [10 s, 20 s): last is the value of the latest ts.
        for (v, ts) in [(4.0, 12_000), (1.0, 19_999), (7.0, 10_000), (2.0, 15_000)] {
            let d = r.on_reading(&reading("t", v, ts));
            assert_eq!((d.forward, d.changed, d.emitted.len()), (true, true, 0));
        }
        let d = r.on_reading(&reading("t", 5.0, 20_000));
        assert_eq!(
            short(&d.emitted),
            [
                ("t.mean".to_owned(), 3.5, 20_000),
                ("t.min".to_owned(), 1.0, 20_000),
                ("t.max".to_owned(), 7.0, 20_000),
                ("t.count".to_owned(), 4.0, 20_000),
                ("t.last".to_owned(), 1.0, 20_000),
            ]
        );
        assert_eq!(d.emitted[0].unit.as_deref(), Some("C"));
        assert_eq!(d.emitted[3].unit, None, "a count has no unit");
        assert_eq!(d.emitted[0].device, "dev-1");
        let s = r.stats();
        assert_eq!(
            (s.windows_emitted, s.readings_emitted, s.open_windows),
            (1, 5, 1)
        );
    }

    #[test]
    fn of_equal_ts_the_reading_that_came_last_is_last() {
        let mut r = reducer("[[window]]\nmetric = \"t\"\nwindow_s = 10\nemit = [\"last\"]\n");
        r.on_reading(&reading("t", 1.0, 5_000));
        r.on_reading(&reading("t", 2.0, 5_000));
        let (emitted, _) = r.tick(10_000 + CLOSE_DELAY_MS);
        assert_eq!(short(&emitted), [("t.last".to_owned(), 2.0, 10_000)]);
    }

    #[test]
    fn late_readings_are_counted_not_aggregated_and_still_forwarded_with_raw_drop() {
        let mut r = reducer(
            "[[window]]\nmetric = \"t\"\nwindow_s = 10\nraw = \"drop\"\nemit = [\"count\"]\n",
        );
        let table: [(f64, i64, bool, u64); 5] = [
            // (value, ts, forwarded raw, late so far)
            (1.0, 25_000, false, 0), // opens [20 s, 30 s)
            (1.0, 19_999, true, 1),  // before the open window
            (1.0, 31_000, false, 1), // emits [20 s, 30 s), opens [30 s, 40 s)
            (1.0, 29_999, true, 2),  // inside the emitted window
            (1.0, 30_000, false, 2), // the open window's first instant
        ];
        for (i, (v, ts, forward, late)) in table.into_iter().enumerate() {
            let d = r.on_reading(&reading("t", v, ts));
            assert_eq!(d.forward, forward, "row {i}");
            assert_eq!(r.stats().late, late, "row {i}");
            assert_eq!(
                d.changed, !forward,
                "row {i}: a late reading changes nothing"
            );
        }
        let (emitted, _) = r.tick(i64::MAX);
        assert_eq!(short(&emitted), [("t.count".to_owned(), 2.0, 40_000)]);
        assert_eq!(r.stats().raw_dropped, 3);
    }

    #[test]
    fn the_clock_closes_a_window_only_after_its_end_and_the_delay_and_only_once() {
        let mut r = reducer(WINDOW_10S);
        r.on_reading(&reading("t", 3.0, 1_000));
        let table = [
            (9_999, 0),
            (10_000, 0),
            (10_000 + CLOSE_DELAY_MS - 1, 0),
            (10_000 + CLOSE_DELAY_MS, 5),
            (10_000 + CLOSE_DELAY_MS + 1, 0),
            (i64::MAX, 0),
        ];
        for (now, n) in table {
            let (emitted, changed) = r.tick(now);
            assert_eq!(emitted.len(), n, "tick at {now}");
            assert_eq!(changed.len(), usize::from(n > 0), "tick at {now}");
        }
        // After the clock closed [0, 10 s), a straggler of it is late.
        let d = r.on_reading(&reading("t", 3.0, 9_000));
        assert!(d.forward && !d.changed);
        assert_eq!(r.stats().late, 1);
    }

    #[test]
    fn an_empty_window_emits_nothing() {
        let mut r = reducer(WINDOW_10S);
        r.on_reading(&reading("t", 1.0, 1_000));
        // A gap of several windows: only the window with a reading is emitted.
        let d = r.on_reading(&reading("t", 2.0, 55_000));
        assert_eq!(d.emitted.len(), 5);
        assert!(d.emitted.iter().all(|e| e.ts_ms == 10_000));
        let (emitted, _) = r.tick(60_000 + CLOSE_DELAY_MS);
        assert!(emitted.iter().all(|e| e.ts_ms == 60_000));
        assert_eq!(r.tick(1_000_000).0, Vec::new());
        assert_eq!(r.stats().windows_emitted, 2);
    }

    #[test]
    fn extreme_values_and_timestamps_aggregate_without_overflow() {
        let mut r = reducer(WINDOW_10S);
        for (v, ts) in [
            (f64::MAX, i64::MAX - 5),
            (f64::MAX, i64::MAX - 3),
            (-f64::MAX, i64::MAX),
        ] {
            r.on_reading(&reading("t", v, ts));
        }
        let (emitted, _) = r.tick(i64::MAX);
        let values: Vec<f64> = emitted.iter().map(|e| e.value).collect();
        assert!(values.iter().all(|v| v.is_finite()), "{values:?}");
        assert_eq!(values[1..], [-f64::MAX, f64::MAX, 3.0, -f64::MAX]);
        assert!((values[0] - f64::MAX / 3.0).abs() <= f64::MAX * 1e-12);
        assert_eq!(emitted[0].ts_ms, i64::MAX);

        let mut r = reducer(WINDOW_10S);
        r.on_reading(&reading("t", f64::MIN_POSITIVE, i64::MIN));
        r.on_reading(&reading("t", 5e-324, i64::MIN + 1));
        let (emitted, _) = r.tick(i64::MAX);
        // [i64::MIN, …) is cut short at the bottom of i64, not wrapped.
        assert_eq!(emitted[0].ts_ms, i64::MIN + 10_000);
        assert!(emitted[0].value > 0.0 && emitted[0].value.is_finite());
    }

    #[test]
    fn a_non_finite_value_is_forwarded_untouched_and_never_aggregated() {
        let mut r = reducer("[[window]]\nmetric = \"t\"\nraw = \"drop\"\n");
        let d = r.on_reading(&reading("t", f64::NAN, 1_000));
        assert_eq!((d.forward, d.changed), (true, false));
        assert_eq!(r.stats().series, 0);
    }

    #[test]
    fn raw_keep_forwards_every_reading_and_raw_drop_none_of_the_aggregated() {
        for (raw, forward) in [("keep", true), ("drop", false)] {
            let mut r = reducer(&format!("[[window]]\nmetric = \"t\"\nraw = \"{raw}\"\n"));
            for ts in [1_000, 2_000, 61_000] {
                assert_eq!(
                    r.on_reading(&reading("t", 1.0, ts)).forward,
                    forward,
                    "{raw}"
                );
            }
            assert!(
                r.on_reading(&reading("other", 1.0, 1_000)).forward,
                "unmatched"
            );
        }
    }

    #[test]
    fn deadband_decisions_follow_abs_rel_and_the_heartbeat() {
        let rule = |abs: f64, rel: f64, max_interval_s: u64| {
            let text = format!(
                "[[deadband]]\nmetric = \"h\"\nabs = {abs:?}\nrel = {rel:?}\nmax_interval_s = {max_interval_s}\n"
            );
            Config::parse(&text, "t.toml").unwrap().deadband[0].clone()
        };
        let table = [
            // (abs, rel, max_interval_s, last (value, ts), value, ts, forwards)
            (0.5, 0.0, 300, None, 20.0, 0, true), // the first reading
            (0.5, 0.0, 300, Some((20.0, 0)), 20.5, 1_000, false), // exactly abs: not more
            (0.5, 0.0, 300, Some((20.0, 0)), 20.51, 1_000, true),
            (0.5, 0.0, 300, Some((20.0, 0)), 19.49, 1_000, true), // either direction
            (0.0, 0.1, 300, Some((20.0, 0)), 21.9, 1_000, false),
            (0.0, 0.1, 300, Some((20.0, 0)), 22.1, 1_000, true),
            (0.0, 0.1, 300, Some((-20.0, 0)), -22.1, 1_000, true), // |last|
            (0.0, 0.1, 300, Some((0.0, 0)), 1e-9, 1_000, true),    // rel of 0 is 0
            (0.5, 0.1, 300, Some((100.0, 0)), 100.6, 1_000, true), // abs alone suffices
            (0.0, 0.0, 300, Some((20.0, 0)), 20.0, 1_000, false),  // no change
            (0.0, 0.0, 300, Some((20.0, 0)), 20.000001, 1_000, true), // any change
            (0.5, 0.0, 300, Some((20.0, 0)), 20.0, 299_999, false),
            (0.5, 0.0, 300, Some((20.0, 0)), 20.0, 300_000, true), // heartbeat
            (0.5, 0.0, 0, Some((20.0, 0)), 20.0, i64::MAX, false), // no heartbeat
            (0.5, 0.0, 300, Some((20.0, i64::MIN)), 20.0, i64::MAX, true), // no overflow
            (0.5, 0.0, 300, Some((20.0, i64::MAX)), 20.0, i64::MIN, false), // older: no heartbeat
            (1.0, 0.0, 300, Some((f64::MAX, 0)), -f64::MAX, 1, true), // |Δ| = inf, not NaN
        ];
        for (i, (abs, rel, max_interval_s, last, value, ts, forwards)) in
            table.into_iter().enumerate()
        {
            assert_eq!(
                deadband_forwards(&rule(abs, rel, max_interval_s), last, value, ts),
                forwards,
                "row {i}"
            );
        }
    }

    #[test]
    fn a_deadband_series_compares_against_the_last_forwarded_value_not_the_last_seen() {
        let mut r = reducer("[[deadband]]\nmetric = \"h\"\nabs = 1.0\nmax_interval_s = 60\n");
        let table = [
            (10.0, 0, true),      // first
            (10.6, 1_000, false), // 0.6 from 10
            (11.2, 2_000, true),  // 1.2 from 10 (creeping drift is caught)
            (11.9, 3_000, false),
            (11.9, 63_000, true), // heartbeat: 60 s after the last forwarded ts
            (11.9, 64_000, false),
        ];
        for (i, (v, ts, forward)) in table.into_iter().enumerate() {
            let d = r.on_reading(&reading("h", v, ts));
            assert_eq!((d.forward, d.changed), (forward, forward), "row {i}");
        }
        assert_eq!(r.stats().suppressed, 3);
    }

    #[test]
    fn the_first_matching_rule_reduces_a_series_and_windows_go_before_deadbands() {
        let mut r = reducer(
            "[[deadband]]\nmetric = \"*\"\nabs = 100.0\n\
             [[window]]\nmetric = \"t\"\nraw = \"drop\"\n",
        );
        assert!(
            !r.on_reading(&reading("t", 1.0, 1_000)).forward,
            "the window drops raw"
        );
        assert!(
            r.on_reading(&reading("h", 1.0, 1_000)).forward,
            "first of the deadband"
        );
        assert!(!r.on_reading(&reading("h", 2.0, 2_000)).forward);
    }

    #[test]
    fn new_series_beyond_the_bound_are_refused_counted_and_forwarded_unreduced() {
        let text = "window_max_series = 2\n[[window]]\nmetric = \"*\"\nraw = \"drop\"\n";
        let mut r = reducer(text);
        for m in ["a", "b"] {
            assert!(!r.on_reading(&reading(m, 1.0, 1_000)).forward);
        }
        let d = r.on_reading(&reading("c", 1.0, 1_000));
        assert_eq!((d.forward, d.changed), (true, false));
        assert_eq!((r.stats().series, r.stats().series_refused), (2, 1));
        // Known series go on being reduced.
        assert!(!r.on_reading(&reading("a", 1.0, 2_000)).forward);
    }

    #[test]
    fn state_round_trips_and_a_restored_window_is_neither_lost_nor_emitted_twice() {
        let text = "[[window]]\nmetric = \"t\"\nwindow_s = 10\nraw = \"drop\"\n\
                    [[deadband]]\nmetric = \"h\"\nabs = 1.0\n";
        let mut before = reducer(text);
        for (v, ts) in [(1.0, 21_000), (2.0, 22_000)] {
            before.on_reading(&reading("t", v, ts));
        }
        before.on_reading(&reading("t", 9.0, 5_000)); // late (nothing emitted yet, before open)
        before.on_reading(&reading("h", 50.0, 1_000));
        let stored = vec![
            before.state_write("dev-1", "t"),
            before.state_write("dev-1", "h"),
            ("window/garbage".to_owned(), vec![1, 2, 3]),
        ];
        let mut after = reducer(text);
        assert_eq!(after.restore(stored), ["window/garbage"]);
        assert!(
            !after.on_reading(&reading("h", 50.5, 2_000)).forward,
            "deadband remembered"
        );
        after.on_reading(&reading("t", 3.0, 29_999));
        let d = after.on_reading(&reading("t", 4.0, 30_000));
        assert_eq!(
            short(&d.emitted)[..4],
            [
                ("t.mean".to_owned(), 2.0, 30_000),
                ("t.min".to_owned(), 1.0, 30_000),
                ("t.max".to_owned(), 3.0, 30_000),
                ("t.count".to_owned(), 3.0, 30_000),
            ]
        );
        // Emitted is remembered across a second restart too.
        let mut again = reducer(text);
        again.restore(vec![after.state_write("dev-1", "t")]);
        let d = again.on_reading(&reading("t", 5.0, 25_000));
        assert!(
            d.forward && d.emitted.is_empty(),
            "inside the emitted window: late"
        );
    }

    #[test]
    fn a_series_whose_rule_went_away_emits_its_open_window_and_is_forgotten() {
        let mut before = reducer("[[window]]\nmetric = \"t\"\nwindow_s = 10\nemit = [\"count\"]\n");
        before.on_reading(&reading("t", 1.0, 1_000));
        let mut after = reducer("");
        after.restore(vec![before.state_write("dev-1", "t")]);
        let d = after.on_reading(&reading("t", 1.0, 2_000));
        assert_eq!(short(&d.emitted), [("t.count".to_owned(), 1.0, 10_000)]);
        assert!(d.forward && d.changed);
        assert_eq!(
            after.state_write("dev-1", "t").1,
            Vec::<u8>::new(),
            "deleted"
        );
    }
}
