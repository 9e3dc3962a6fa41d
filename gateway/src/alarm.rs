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
//! - Threshold and rate rules run on *event time*, the readings' `ts`, **capped at the engine's
//!   clock**: a reading stamped ahead of `now_ms` is evaluated as made at `now_ms`, and does not
//!   move the series' ordering point (the newest event time seen) nor its rate baseline. A
//!   reading older than the ordering point (out of order) is ignored by these rules and counted
//!   in [`EngineStats::out_of_order`]: a late reading cannot re-raise or clear an alarm.
//!   This is what keeps one far-future timestamp (a device with a wrong clock, or a hostile one)
//!   from blinding its series: were it the ordering point, every real reading after it would be
//!   "out of order". The event itself still carries the reading's own `ts`. The price: a device
//!   whose clock runs ahead of the gateway's has each reading judged on its own, with no rate
//!   between them (ingest refuses readings more than `ingest.max_future_ts_s` ahead anyway).
//! - Nothing kept in a series is trusted to lie ahead of the clock either: before a reading or a
//!   tick is applied, stored times later than `now_ms` are brought back to `now_ms`. That heals
//!   state persisted by an older version that stored a far-future `ts`, and a gateway clock that
//!   was stepped back.
//! - `for_s` is confirmed by readings: a series is raised by the first reading that is still
//!   beyond the threshold `for_s` after the first one that was.
//! - Silence rules run on the gateway's clock (`now_ms` of [`Engine::on_reading`] and
//!   [`Engine::tick`]): a series that was seen goes quiet for `no_data_s` → raised on a tick;
//!   the next reading clears it.
//! - All time arithmetic saturates (timestamps anywhere in `i64` neither panic nor wrap), and a
//!   rate too large for an `f64` is reported as `f64::MAX`: the engine never emits a non-finite
//!   value. A reading whose value is not finite is ignored (the decoders reject those as
//!   `bad_value` before they get here).
//!
//! # Memory
//! The engine tracks at most `max_series` series (and as many (device, metric) routes). When a
//! new (device, metric) needs room, the *idle* route seen least recently is forgotten with its
//! series and counted in [`EngineStats::series_evicted`]: new devices are always admitted. A
//! route with an active alarm is never forgotten, because its alarm must still clear (upstream
//! and on the retained local topic). Only when every tracked route holds an active alarm is a
//! new one refused, counted in [`EngineStats::series_refused`] (its readings are still stored and
//! forwarded; it just gets no alarms until an alarm clears). A forgotten series starts afresh
//! when its device returns; its silence rule cannot fire while it is forgotten.
//!
//! Idle routes sit on a doubly linked list by last reading (indices into a slab), so finding
//! the least recently seen one and moving a route to the front are O(1).
//!
//! # Persistence
//! Routes are spread over [`SHARDS`] shards by a stable hash of (device, metric). The engine
//! marks a shard dirty when a series in it changes or leaves; the caller saves dirty shards one
//! at a time with [`Engine::shard_snapshot`], which copies only that shard (so the engine is held
//! for one shard's copy, and the bytes are encoded and written without it).

use gateway_buffer::{AlarmEvent, AlarmState, Reading, Severity};
use gateway_config::{AlarmCondition, AlarmRule, Config};
use hashbrown::HashTable;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasher, RandomState};

/// A rule ready to evaluate: a loaded `[[alarm]]` rule as the config has it (globs compiled
/// there, once), and the one thing the engine keeps in another form: its holds in milliseconds,
/// the engine's unit, converted once here rather than at every reading.
#[derive(Debug, Clone)]
pub struct Rule {
    /// The rule as loaded: name, globs, condition, severity.
    pub spec: AlarmRule,
    /// `spec.for_s` in milliseconds: how long the condition must hold before raising.
    for_ms: i64,
    /// `spec.clear_for_s` in milliseconds: how long the clear condition must hold before
    /// clearing.
    clear_for_ms: i64,
}

/// A rule built in code ([`Rule::new`]) could not be built. Rules from a config cannot fail:
/// the config checked them when it loaded.
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

impl From<AlarmRule> for Rule {
    fn from(spec: AlarmRule) -> Rule {
        Rule {
            for_ms: secs_to_ms(spec.for_s),
            clear_for_ms: secs_to_ms(spec.clear_for_s),
            spec,
        }
    }
}

impl Rule {
    /// A rule built in code rather than loaded (benchmarks, tests); see [`AlarmRule::new`].
    pub fn new(
        name: &str,
        device_glob: &str,
        metric_glob: &str,
        condition: AlarmCondition,
        for_s: u64,
        clear_for_s: u64,
        severity: Severity,
    ) -> Result<Rule, RuleError> {
        AlarmRule::new(
            name,
            device_glob,
            metric_glob,
            condition,
            for_s,
            clear_for_s,
            severity,
        )
        .map(Rule::from)
        .map_err(|e| RuleError::BadGlob {
            rule: name.to_owned(),
            pattern: e.glob().unwrap_or_default().to_owned(),
            reason: e.kind().to_string(),
        })
    }

    fn name(&self) -> &str {
        &self.spec.name
    }
}

fn secs_to_ms(s: u64) -> i64 {
    i64::try_from(s.saturating_mul(1000)).unwrap_or(i64::MAX)
}

/// The alarm rules of a config (`[[alarm]]`), ready for the engine. Used wherever rules are
/// built: at start, on reload, and by the dead-letter replay.
pub fn rules_from_config(config: &Config) -> Vec<Rule> {
    config.alarm.iter().cloned().map(Rule::from).collect()
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
///
/// The persisted form: older versions wrote the same struct, so their state still restores.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Series {
    pub phase: Phase,
    /// Newest reading seen (event time capped at the clock, value), for rates and out-of-order
    /// detection.
    pub last_ts_ms: Option<i64>,
    pub last_value: f64,
    /// Gateway time of the last reading, for silence.
    pub last_seen_ms: i64,
}

impl Series {
    /// Brings every stored time that lies ahead of `now_ms` back to it (see the module doc).
    fn heal(&mut self, now_ms: i64) {
        self.last_ts_ms = self.last_ts_ms.map(|t| t.min(now_ms));
        self.last_seen_ms = self.last_seen_ms.min(now_ms);
        match &mut self.phase {
            Phase::Normal => {}
            Phase::Pending { since_ms } => *since_ms = (*since_ms).min(now_ms),
            Phase::Active {
                raised_ms,
                clearing_since_ms,
                ..
            } => {
                *raised_ms = (*raised_ms).min(now_ms);
                *clearing_since_ms = clearing_since_ms.map(|t| t.min(now_ms));
            }
        }
    }

    fn is_active(&self) -> bool {
        matches!(self.phase, Phase::Active { .. })
    }
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
    /// Series tracked now (rule × device × metric), at most `max_series`.
    pub series: usize,
    pub raised: u64,
    pub cleared: u64,
    /// Readings older than their series' newest: ignored by threshold and rate rules.
    pub out_of_order: u64,
    /// Series not admitted because `alarm_max_series` was reached and every tracked route held
    /// an active alarm (nothing idle to forget).
    pub series_refused: u64,
    /// Idle series forgotten (least recently seen first) to make room for new ones.
    pub series_evicted: u64,
}

/// How many shards the persisted state is split into (see the module doc).
pub const SHARDS: usize = 64;

/// The shard of a (device, metric): FNV-1a, stable across runs and builds (a shard written by
/// one run must be the one the next run rewrites, or a stale copy would come back).
pub fn shard_of(device: &str, metric: &str) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in device.bytes().chain([0xff]).chain(metric.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (h % SHARDS as u64) as usize
}

/// The end of the idle list, or no neighbour.
const NIL: u32 = u32::MAX;

/// The rules matching one (device, metric), by index into `Engine::rules`, and their series
/// (`None` until the first reading after a restore or reload).
#[derive(Debug)]
struct Route {
    /// The device id followed by the metric id, in one allocation; see [`Route::device`].
    names: Box<str>,
    /// Where the metric id starts in `names`.
    split: usize,
    entries: Box<[(usize, Option<Series>)]>,
    shard: u8,
    /// Where this route is in `Engine::shards[shard]`.
    shard_pos: u32,
    /// On the idle list (no active alarm), with its neighbours: `prev` seen earlier, `next` later.
    listed: bool,
    prev: u32,
    next: u32,
}

impl Route {
    fn device(&self) -> &str {
        &self.names[..self.split]
    }

    fn metric(&self) -> &str {
        &self.names[self.split..]
    }

    fn has_active(&self) -> bool {
        self.entries
            .iter()
            .any(|(_, s)| s.as_ref().is_some_and(Series::is_active))
    }
}

/// The rules and the state of every series they track.
///
/// Series are kept per (device, metric) route, each with the rules that match that pair: the
/// globs are matched once per new (device, metric), not once per reading, and a reading finds its
/// series without allocating.
#[derive(Debug)]
pub struct Engine {
    rules: Vec<Rule>,
    /// (device, metric) → route id (index into `slots`), hashed by `hasher`: the table holds
    /// only ids (a few bytes a route), the names live in the routes.
    index: HashTable<u32>,
    hasher: RandomState,
    slots: Vec<Option<Route>>,
    /// Ids of empty slots, reused before the slab grows.
    free: Vec<u32>,
    /// The route ids of each shard.
    shards: Vec<Vec<u32>>,
    /// Bit `i`: shard `i` changed since it was last copied for saving.
    dirty: u64,
    /// The idle list: routes without an active alarm, least recently seen at the head.
    idle_head: u32,
    idle_tail: u32,
    /// Series over all routes (what `max_series` bounds), counting those not yet started.
    n_series: usize,
    /// Routes known, including those no rule matches (bounded like series).
    n_routes: usize,
    max_series: usize,
    stats: EngineStats,
}

impl Engine {
    pub fn new(rules: Vec<Rule>, max_series: usize) -> Engine {
        Engine {
            rules,
            index: HashTable::new(),
            hasher: RandomState::new(),
            slots: Vec::new(),
            free: Vec::new(),
            shards: vec![Vec::new(); SHARDS],
            dirty: 0,
            idle_head: NIL,
            idle_tail: NIL,
            n_series: 0,
            n_routes: 0,
            // Route ids are u32 with one value reserved for NIL.
            max_series: max_series.min(NIL as usize - 1),
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
        if !r.value.is_finite() {
            return events;
        }
        let id = match self.lookup(&r.device, &r.metric) {
            Some(id) => id,
            None => match self.admit(&r.device, &r.metric) {
                Some(id) => id,
                None => return events,
            },
        };
        let Some(route) = self.slots[id as usize].as_mut() else {
            return events;
        };
        for (rule_idx, slot) in &mut route.entries {
            let series = slot.get_or_insert_with(|| Series {
                phase: Phase::Normal,
                last_ts_ms: None,
                last_value: r.value,
                last_seen_ms: now_ms,
            });
            if let Some(e) = step(&self.rules[*rule_idx], series, r, now_ms, &mut self.stats) {
                events.push(e);
            }
        }
        self.dirty |= 1 << route.shard;
        self.relist(id);
        events
    }

    fn lookup(&self, device: &str, metric: &str) -> Option<u32> {
        let slots = &self.slots;
        self.index
            .find(self.hasher.hash_one((device, metric)), |&id| {
                slots[id as usize]
                    .as_ref()
                    .is_some_and(|r| r.device() == device && r.metric() == metric)
            })
            .copied()
    }

    fn route_mut(&mut self, id: u32) -> Option<&mut Route> {
        self.slots.get_mut(id as usize).and_then(Option::as_mut)
    }

    /// Matches the globs for a new (device, metric) and makes room for it by forgetting idle
    /// routes, least recently seen first. Refuses (and counts) only when nothing idle is left.
    fn admit(&mut self, device: &str, metric: &str) -> Option<u32> {
        let matching: Vec<usize> = (0..self.rules.len())
            .filter(|&i| self.rules[i].spec.matches(device, metric))
            .collect();
        let need = matching.len();
        let refuse = |stats: &mut EngineStats| stats.series_refused += need.max(1) as u64;
        if need > self.max_series {
            refuse(&mut self.stats);
            return None;
        }
        while self.n_series + need > self.max_series || self.n_routes >= self.max_series {
            if self.idle_head == NIL {
                refuse(&mut self.stats);
                return None;
            }
            self.evict(self.idle_head);
        }
        let shard = shard_of(device, metric);
        let hash = self.hasher.hash_one((device, metric));
        let names: Box<str> = [device, metric].concat().into();
        let split = device.len();
        let id = match self.free.pop() {
            Some(id) => id,
            None => {
                self.slots.push(None);
                (self.slots.len() - 1) as u32
            }
        };
        let shard_pos = self.shards[shard].len() as u32;
        self.shards[shard].push(id);
        self.slots[id as usize] = Some(Route {
            names,
            split,
            entries: matching.into_iter().map(|i| (i, None)).collect(),
            shard: shard as u8,
            shard_pos,
            listed: false,
            prev: NIL,
            next: NIL,
        });
        let Engine {
            index,
            slots,
            hasher,
            ..
        } = self;
        index.insert_unique(hash, id, |&other| {
            slots[other as usize]
                .as_ref()
                .map_or(0, |r| hasher.hash_one((r.device(), r.metric())))
        });
        self.n_routes += 1;
        self.n_series += need;
        self.link_newest(id);
        Some(id)
    }

    /// Forgets a route and its series.
    fn evict(&mut self, id: u32) {
        self.unlink(id);
        let Some(route) = self.slots.get_mut(id as usize).and_then(Option::take) else {
            return;
        };
        let list = &mut self.shards[route.shard as usize];
        let pos = route.shard_pos as usize;
        list.swap_remove(pos);
        if let Some(&moved) = list.get(pos)
            && let Some(m) = self.route_mut(moved)
        {
            m.shard_pos = pos as u32;
        }
        let hash = self.hasher.hash_one((route.device(), route.metric()));
        if let Ok(entry) = self.index.find_entry(hash, |&other| other == id) {
            entry.remove();
        }
        self.free.push(id);
        self.n_routes -= 1;
        self.n_series -= route.entries.len();
        self.dirty |= 1 << route.shard;
        self.stats.series_evicted += route.entries.len() as u64;
    }

    fn unlink(&mut self, id: u32) {
        let Some(r) = self.route_mut(id) else { return };
        if !r.listed {
            return;
        }
        let (prev, next) = (r.prev, r.next);
        r.listed = false;
        r.prev = NIL;
        r.next = NIL;
        match self.route_mut(prev) {
            Some(p) => p.next = next,
            None => self.idle_head = next,
        }
        match self.route_mut(next) {
            Some(n) => n.prev = prev,
            None => self.idle_tail = prev,
        }
    }

    fn link_newest(&mut self, id: u32) {
        let tail = self.idle_tail;
        let Some(r) = self.route_mut(id) else { return };
        r.listed = true;
        r.prev = tail;
        r.next = NIL;
        match self.route_mut(tail) {
            Some(t) => t.next = id,
            None => self.idle_head = id,
        }
        self.idle_tail = id;
    }

    /// After a reading: the route is now the most recently seen; it is on the idle list only
    /// if none of its series is active.
    fn relist(&mut self, id: u32) {
        self.unlink(id);
        if self.route_mut(id).is_some_and(|r| !r.has_active()) {
            self.link_newest(id);
        }
    }

    /// Every series with state: (rule, device, metric, series).
    fn each_series(&self) -> impl Iterator<Item = (&Rule, &str, &str, &Series)> {
        self.slots.iter().flatten().flat_map(move |route| {
            route.entries.iter().filter_map(move |(i, s)| {
                s.as_ref()
                    .map(|s| (&self.rules[*i], route.device(), route.metric(), s))
            })
        })
    }

    /// Checks silence rules against the gateway clock; call it every second or so.
    pub fn tick(&mut self, now_ms: i64) -> Vec<AlarmEvent> {
        let mut events = Vec::new();
        let mut now_active = Vec::new();
        for (id, route) in self.slots.iter_mut().enumerate() {
            let Some(Route {
                names,
                split,
                entries,
                shard,
                ..
            }) = route.as_mut()
            else {
                continue;
            };
            let (device, metric) = names.split_at(*split);
            for (i, slot) in entries.iter_mut() {
                let rule = &self.rules[*i];
                let (AlarmCondition::NoData { no_data_s }, Some(s)) =
                    (&rule.spec.condition, slot.as_mut())
                else {
                    continue;
                };
                if s.last_seen_ms > now_ms {
                    // The clock was stepped back: count the silence from now.
                    s.last_seen_ms = now_ms;
                    self.dirty |= 1 << *shard;
                }
                let no_data_ms = secs_to_ms(*no_data_s);
                if s.phase != Phase::Normal || now_ms.saturating_sub(s.last_seen_ms) < no_data_ms {
                    continue;
                }
                s.phase = Phase::Active {
                    raised_ms: now_ms,
                    threshold: None,
                    clearing_since_ms: None,
                };
                self.stats.raised += 1;
                self.dirty |= 1 << *shard;
                now_active.push(id as u32);
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
        for id in now_active {
            self.unlink(id);
        }
        events
    }

    /// Swaps in new rules. Series of rules that are unchanged keep their state; the rest start
    /// afresh (a changed rule's active alarm is forgotten without a `cleared` event).
    pub fn reload(&mut self, rules: Vec<Rule>) {
        let kept: Vec<String> = rules
            .iter()
            // Unchanged: a reload would not change how it evaluates.
            .filter(|new| self.rules.iter().any(|old| old.spec == new.spec))
            .map(|r| r.name().to_owned())
            .collect();
        let mut snapshot = self.snapshot();
        snapshot
            .series
            .retain(|(name, _, _), _| kept.contains(name));
        self.rules = rules;
        self.restore(snapshot);
        self.dirty = u64::MAX;
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
                    alarm: rule.name().to_owned(),
                    device: device.to_owned(),
                    metric: metric.to_owned(),
                    severity: rule.spec.severity.as_str(),
                    threshold,
                    since_ms: raised_ms,
                }),
                _ => None,
            })
            .collect();
        out.sort_by(|a, b| (&a.alarm, &a.device, &a.metric).cmp(&(&b.alarm, &b.device, &b.metric)));
        out
    }

    /// All the state (tests, reload). To persist, save shards: [`Engine::shard_snapshot`].
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            series: self
                .each_series()
                .map(|(rule, device, metric, s)| {
                    (
                        (rule.name().to_owned(), device.to_owned(), metric.to_owned()),
                        s.clone(),
                    )
                })
                .collect(),
        }
    }

    /// Bit `i` set: shard `i` changed since its last [`Engine::shard_snapshot`].
    pub fn dirty_shards(&self) -> u64 {
        self.dirty
    }

    /// The state of one shard, to save under its own key; marks the shard clean. Costs one
    /// shard's copy (about `max_series / SHARDS` series), never the whole engine.
    pub fn shard_snapshot(&mut self, shard: usize) -> Snapshot {
        self.dirty &= !(1u64 << (shard % SHARDS));
        let mut series = BTreeMap::new();
        for &id in self.shards.get(shard).into_iter().flatten() {
            let Some(route) = self.slots.get(id as usize).and_then(Option::as_ref) else {
                continue;
            };
            for (i, s) in &route.entries {
                if let Some(s) = s {
                    series.insert(
                        (
                            self.rules[*i].name().to_owned(),
                            route.device().to_owned(),
                            route.metric().to_owned(),
                        ),
                        s.clone(),
                    );
                }
            }
        }
        Snapshot { series }
    }

    /// Replaces all state with a snapshot (or the union of shard snapshots); series of rules
    /// that no longer exist are dropped. Past `max_series` the least recently seen idle routes
    /// give way, as they would have while running.
    pub fn restore(&mut self, snapshot: Snapshot) {
        self.index.clear();
        self.slots.clear();
        self.free.clear();
        self.shards.iter_mut().for_each(Vec::clear);
        self.idle_head = NIL;
        self.idle_tail = NIL;
        self.n_series = 0;
        self.n_routes = 0;
        self.dirty = 0;
        let mut routes: HashMap<(String, String), Vec<(usize, Series)>> = HashMap::new();
        for ((name, device, metric), s) in snapshot.series {
            let Some(rule_idx) = self.rules.iter().position(|r| r.name() == name) else {
                continue;
            };
            routes
                .entry((device, metric))
                .or_default()
                .push((rule_idx, s));
        }
        let mut routes: Vec<_> = routes.into_iter().collect();
        // Oldest first, so the idle list ends up in the order the routes were last seen.
        routes.sort_by_key(|(_, series)| series.iter().map(|(_, s)| s.last_seen_ms).max());
        for ((device, metric), series) in routes {
            let Some(id) = self
                .lookup(&device, &metric)
                .or_else(|| self.admit(&device, &metric))
            else {
                continue;
            };
            if let Some(route) = self.route_mut(id) {
                for (rule_idx, s) in series {
                    if let Some((_, slot)) = route.entries.iter_mut().find(|(i, _)| *i == rule_idx)
                    {
                        *slot = Some(s);
                    }
                }
            }
            self.relist(id);
        }
    }
}

/// Persisted engine state (postcard-encoded by the caller): the whole engine in older versions,
/// one shard now.
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
    s.heal(now_ms);
    // Event time as the rules see it: never ahead of the clock (see the module doc). A reading
    // stamped ahead is evaluated as made now but does not become the series' ordering point or
    // rate baseline: its time is not trusted, and readings decoded at the same instant (stamped
    // with a clock read a moment before `now_ms`) must stay in order behind it.
    let ahead = r.ts_ms > now_ms;
    let ts = r.ts_ms.min(now_ms);
    let previous = s.last_ts_ms.map(|t| (t, s.last_value));
    s.last_seen_ms = now_ms;
    if let AlarmCondition::NoData { .. } = rule.spec.condition {
        // Any reading, late or not, ends a silence.
        if !ahead && previous.is_none_or(|(t, _)| ts >= t) {
            s.last_ts_ms = Some(ts);
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
        && ts < last_ts
    {
        stats.out_of_order += 1;
        return None;
    }
    if !ahead {
        s.last_ts_ms = Some(ts);
        s.last_value = r.value;
    }

    // What this reading says: is the raise condition met, is the clear condition met, and the
    // value and threshold to report.
    let (violates, clears, value, trigger, clear_at) = match rule.spec.condition {
        AlarmCondition::Threshold { above, below } => {
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
        AlarmCondition::Rate {
            rate_above_per_s: above_per_s,
        } => {
            let rate = match previous {
                Some((t, v)) if ts > t => rate_per_s(v, t, r.value, ts),
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
        AlarmCondition::NoData { .. } => return None,
    };

    match s.phase {
        Phase::Normal | Phase::Pending { .. } if violates => {
            let since = match s.phase {
                Phase::Pending { since_ms } => since_ms,
                _ => ts,
            };
            if ts.saturating_sub(since) >= rule.for_ms {
                s.phase = Phase::Active {
                    raised_ms: ts,
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
            let since = clearing_since_ms.unwrap_or(ts);
            if ts.saturating_sub(since) >= rule.clear_for_ms {
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

/// |Δvalue| per second between two readings, `t0 < t1`. Finite for finite inputs: the time
/// difference is taken in `i128` (no overflow across the whole `i64` range), and a change too
/// large for an `f64` (values near ±`f64::MAX`) is reported as `f64::MAX`.
fn rate_per_s(v0: f64, t0: i64, v1: f64, t1: i64) -> f64 {
    let dt_s = (i128::from(t1) - i128::from(t0)) as f64 / 1000.0;
    // Halves first, so the difference of two finite values cannot overflow.
    let dv = ((v1 / 2.0 - v0 / 2.0).abs() / dt_s) * 2.0;
    if dv.is_finite() { dv } else { f64::MAX }
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
        alarm: rule.name().to_owned(),
        state,
        severity: rule.spec.severity,
        device: device.to_owned(),
        metric: metric.to_owned(),
        value,
        threshold,
        ts_ms,
    }
}
