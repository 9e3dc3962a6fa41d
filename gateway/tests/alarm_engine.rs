//! Table-driven tests of the alarm engine on scripted readings and clock times.

use gateway::alarm::{Engine, Rule};
use gateway_buffer::{AlarmEvent, AlarmState, Reading, Severity, Source};
use gateway_config::{AlarmCondition, Limit};

#[derive(Clone, Copy)]
enum Step {
    /// A reading: device, metric, value, event time in seconds (also the gateway time).
    R(&'static str, &'static str, f64, i64),
    /// A reading that arrives at gateway time `now` but carries event time `ts`.
    Late(&'static str, &'static str, f64, i64, i64),
    /// A clock tick at this many seconds.
    Tick(i64),
}
use Step::*;

/// (state, rule, device, event time in seconds).
type Want = (&'static str, &'static str, &'static str, i64);

/// (name, rules, script, expected events).
type Case = (&'static str, Vec<Rule>, Vec<Step>, Vec<Want>);

fn above(name: &str, trigger: f64, clear: f64, for_s: u64, clear_for_s: u64) -> Rule {
    let c = AlarmCondition::Threshold {
        above: Some(Limit { trigger, clear }),
        below: None,
    };
    Rule::new(
        name,
        "*",
        "temperature",
        c,
        for_s,
        clear_for_s,
        Severity::Critical,
    )
    .unwrap()
}

fn below(name: &str, trigger: f64, clear: f64) -> Rule {
    let c = AlarmCondition::Threshold {
        above: None,
        below: Some(Limit { trigger, clear }),
    };
    Rule::new(name, "*", "temperature", c, 0, 0, Severity::Warning).unwrap()
}

fn rate(name: &str, per_s: f64) -> Rule {
    Rule::new(
        name,
        "*",
        "pressure",
        AlarmCondition::Rate {
            rate_above_per_s: per_s,
        },
        0,
        0,
        Severity::Warning,
    )
    .unwrap()
}

fn silent(name: &str, no_data_s: u64) -> Rule {
    let c = AlarmCondition::NoData { no_data_s };
    Rule::new(name, "*", "*", c, 0, 0, Severity::Warning).unwrap()
}

fn globbed(name: &str, device: &str, metric: &str) -> Rule {
    let c = AlarmCondition::Threshold {
        above: Some(Limit {
            trigger: 35.0,
            clear: 33.0,
        }),
        below: None,
    };
    Rule::new(name, device, metric, c, 0, 0, Severity::Info).unwrap()
}

fn reading(device: &str, metric: &str, value: f64, ts_s: i64) -> Reading {
    Reading {
        device: device.into(),
        metric: metric.into(),
        value,
        unit: None,
        ts_ms: ts_s * 1000,
        source: Source::Mqtt,
    }
}

fn play(engine: &mut Engine, steps: &[Step]) -> Vec<AlarmEvent> {
    let mut out = Vec::new();
    for step in steps {
        match *step {
            R(d, m, v, t) => out.extend(engine.on_reading(&reading(d, m, v, t), t * 1000)),
            Late(d, m, v, ts, now) => {
                out.extend(engine.on_reading(&reading(d, m, v, ts), now * 1000))
            }
            Tick(t) => out.extend(engine.tick(t * 1000)),
        }
    }
    out
}

fn summary(events: &[AlarmEvent]) -> Vec<(String, String, String, i64)> {
    events
        .iter()
        .map(|e| {
            let state = match e.state {
                AlarmState::Raised => "raised",
                AlarmState::Cleared => "cleared",
            };
            (
                state.to_owned(),
                e.alarm.clone(),
                e.device.clone(),
                e.ts_ms / 1000,
            )
        })
        .collect()
}

fn want(w: &[Want]) -> Vec<(String, String, String, i64)> {
    w.iter()
        .map(|(s, a, d, t)| (s.to_string(), a.to_string(), d.to_string(), *t))
        .collect()
}

const T: &str = "temperature";
const P: &str = "pressure";

#[test]
fn scripted_cases() {
    let cases: Vec<Case> = vec![
        (
            "above raises once and does not repeat while active",
            vec![above("hot", 35.0, 33.0, 0, 0)],
            vec![
                R("d1", T, 34.0, 1),
                R("d1", T, 36.0, 2),
                R("d1", T, 37.0, 3),
                R("d1", T, 38.0, 4),
            ],
            vec![("raised", "hot", "d1", 2)],
        ),
        (
            "no flapping inside the hysteresis band",
            vec![above("hot", 35.0, 33.0, 0, 0)],
            vec![
                R("d1", T, 36.0, 1),
                R("d1", T, 34.0, 2),
                R("d1", T, 35.5, 3),
                R("d1", T, 33.5, 4),
                R("d1", T, 36.0, 5),
            ],
            vec![("raised", "hot", "d1", 1)],
        ),
        (
            "clears once below the clear threshold",
            vec![above("hot", 35.0, 33.0, 0, 0)],
            vec![
                R("d1", T, 36.0, 1),
                R("d1", T, 32.9, 2),
                R("d1", T, 31.0, 3),
            ],
            vec![("raised", "hot", "d1", 1), ("cleared", "hot", "d1", 2)],
        ),
        (
            "without a clear threshold the trigger clears",
            vec![above("hot", 35.0, 35.0, 0, 0)],
            vec![R("d1", T, 36.0, 1), R("d1", T, 34.9, 2)],
            vec![("raised", "hot", "d1", 1), ("cleared", "hot", "d1", 2)],
        ),
        (
            "a value exactly at the threshold does not raise",
            vec![above("hot", 35.0, 33.0, 0, 0)],
            vec![R("d1", T, 35.0, 1)],
            vec![],
        ),
        (
            "for_s raises only after the hold time",
            vec![above("hot", 35.0, 33.0, 10, 0)],
            vec![
                R("d1", T, 36.0, 0),
                R("d1", T, 36.0, 5),
                R("d1", T, 36.0, 9),
                R("d1", T, 36.0, 10),
                R("d1", T, 36.0, 11),
            ],
            vec![("raised", "hot", "d1", 10)],
        ),
        (
            "for_s restarts when the condition is interrupted",
            vec![above("hot", 35.0, 33.0, 10, 0)],
            vec![
                R("d1", T, 36.0, 0),
                R("d1", T, 34.0, 5),
                R("d1", T, 36.0, 6),
                R("d1", T, 36.0, 12),
                R("d1", T, 36.0, 16),
            ],
            vec![("raised", "hot", "d1", 16)],
        ),
        (
            "clear_for_s clears only after the clear hold time",
            vec![above("hot", 35.0, 33.0, 0, 10)],
            vec![
                R("d1", T, 36.0, 0),
                R("d1", T, 30.0, 20),
                R("d1", T, 30.0, 25),
                R("d1", T, 30.0, 30),
            ],
            vec![("raised", "hot", "d1", 0), ("cleared", "hot", "d1", 30)],
        ),
        (
            "clear_for_s restarts when the value leaves the clear zone",
            vec![above("hot", 35.0, 33.0, 0, 10)],
            vec![
                R("d1", T, 36.0, 0),
                R("d1", T, 30.0, 20),
                R("d1", T, 34.0, 25),
                R("d1", T, 30.0, 26),
                R("d1", T, 30.0, 35),
                R("d1", T, 30.0, 36),
            ],
            vec![("raised", "hot", "d1", 0), ("cleared", "hot", "d1", 36)],
        ),
        (
            "below raises and clears above its clear threshold",
            vec![below("freezing", 0.0, 1.0)],
            vec![
                R("d1", T, 2.0, 0),
                R("d1", T, -1.0, 1),
                R("d1", T, 0.5, 2),
                R("d1", T, -3.0, 3),
                R("d1", T, 1.5, 4),
            ],
            vec![
                ("raised", "freezing", "d1", 1),
                ("cleared", "freezing", "d1", 4),
            ],
        ),
        (
            "one rule with both bands raises on either side",
            vec![
                Rule::new(
                    "band",
                    "*",
                    T,
                    AlarmCondition::Threshold {
                        above: Some(Limit {
                            trigger: 30.0,
                            clear: 28.0,
                        }),
                        below: Some(Limit {
                            trigger: 10.0,
                            clear: 12.0,
                        }),
                    },
                    0,
                    0,
                    Severity::Warning,
                )
                .unwrap(),
            ],
            vec![
                R("d1", T, 35.0, 0),
                R("d1", T, 20.0, 1),
                R("d1", T, 5.0, 2),
                R("d1", T, 11.0, 3),
                R("d1", T, 20.0, 4),
            ],
            vec![
                ("raised", "band", "d1", 0),
                ("cleared", "band", "d1", 1),
                ("raised", "band", "d1", 2),
                ("cleared", "band", "d1", 4),
            ],
        ),
        (
            "a rising rate raises and a calm rate clears",
            vec![rate("jump", 5.0)],
            vec![
                R("d1", P, 1000.0, 0),
                R("d1", P, 1001.0, 1),
                R("d1", P, 1010.0, 2),
                R("d1", P, 1012.0, 3),
            ],
            vec![("raised", "jump", "d1", 2), ("cleared", "jump", "d1", 3)],
        ),
        (
            "a falling rate raises too",
            vec![rate("jump", 5.0)],
            vec![R("d1", P, 1000.0, 0), R("d1", P, 990.0, 1)],
            vec![("raised", "jump", "d1", 1)],
        ),
        (
            "rates are per second, not per reading",
            vec![rate("jump", 5.0)],
            vec![
                R("d1", P, 1000.0, 0),
                R("d1", P, 1040.0, 10),
                R("d1", P, 1060.0, 12),
            ],
            vec![("raised", "jump", "d1", 12)],
        ),
        (
            "the first reading and same-instant readings have no rate",
            vec![rate("jump", 5.0)],
            vec![R("d1", P, 1000.0, 0), R("d1", P, 2000.0, 0)],
            vec![],
        ),
        (
            "silence raises once on the clock and clears on the next reading",
            vec![silent("silent", 120)],
            vec![
                R("d1", T, 20.0, 0),
                Tick(60),
                Tick(119),
                Tick(120),
                Tick(130),
                Tick(500),
                R("d1", T, 20.0, 501),
                Tick(502),
            ],
            vec![
                ("raised", "silent", "d1", 120),
                ("cleared", "silent", "d1", 501),
            ],
        ),
        (
            "a series never seen is never silent",
            vec![silent("silent", 10)],
            vec![Tick(0), Tick(100), Tick(1000)],
            vec![],
        ),
        (
            "silence is tracked per device and metric",
            vec![silent("silent", 10)],
            vec![
                R("d1", T, 1.0, 0),
                R("d2", T, 1.0, 0),
                R("d2", T, 1.0, 8),
                Tick(10),
                Tick(18),
            ],
            vec![
                ("raised", "silent", "d1", 10),
                ("raised", "silent", "d2", 18),
            ],
        ),
        (
            "a device glob matches several devices independently",
            vec![globbed("hot", "dev-*", T)],
            vec![
                R("dev-1", T, 36.0, 0),
                R("dev-2", T, 30.0, 1),
                R("dev-2", T, 36.0, 2),
                R("dev-1", T, 30.0, 3),
            ],
            vec![
                ("raised", "hot", "dev-1", 0),
                ("raised", "hot", "dev-2", 2),
                ("cleared", "hot", "dev-1", 3),
            ],
        ),
        (
            "devices outside the glob are ignored",
            vec![globbed("hot", "greenhouse-*", T)],
            vec![R("dev-1", T, 36.0, 0), R("greenhouse-a", T, 36.0, 1)],
            vec![("raised", "hot", "greenhouse-a", 1)],
        ),
        (
            "a metric glob matches several metrics as separate series",
            vec![globbed("hot", "*", "temp*")],
            vec![
                R("d1", "temperature", 36.0, 0),
                R("d1", "temp_in", 36.0, 1),
                R("d1", "humidity", 99.0, 2),
            ],
            vec![("raised", "hot", "d1", 0), ("raised", "hot", "d1", 1)],
        ),
        (
            "an out-of-order reading neither clears nor raises",
            vec![above("hot", 35.0, 33.0, 0, 0)],
            vec![
                R("d1", T, 36.0, 10),
                Late("d1", T, 20.0, 5, 11),
                R("d1", T, 34.0, 12),
                Late("d1", T, 20.0, 11, 13),
            ],
            vec![("raised", "hot", "d1", 10)],
        ),
        (
            "several rules judge the same reading",
            vec![above("hot", 35.0, 33.0, 0, 0), globbed("warm", "*", T)],
            vec![R("d1", T, 36.0, 0)],
            vec![("raised", "hot", "d1", 0), ("raised", "warm", "d1", 0)],
        ),
        (
            "a far-future reading does not make later real readings out of order",
            vec![above("hot", 35.0, 33.0, 0, 0)],
            vec![
                Late("d1", T, 20.0, 4_102_444_800, 10),
                R("d1", T, 40.0, 11),
                R("d1", T, 30.0, 12),
            ],
            vec![("raised", "hot", "d1", 11), ("cleared", "hot", "d1", 12)],
        ),
        (
            "a reading ahead of the clock counts as made now, and its event keeps its own ts",
            vec![above("hot", 35.0, 33.0, 0, 0)],
            vec![Late("d1", T, 40.0, 210, 10), R("d1", T, 30.0, 11)],
            vec![("raised", "hot", "d1", 210), ("cleared", "hot", "d1", 11)],
        ),
        (
            "for_s is held on the clock when the first reading is stamped in the future",
            vec![above("hot", 35.0, 33.0, 10, 0)],
            vec![
                Late("d1", T, 36.0, 1_000_000, 0),
                R("d1", T, 36.0, 5),
                R("d1", T, 36.0, 10),
            ],
            vec![("raised", "hot", "d1", 10)],
        ),
        (
            "a reading stamped in the future is judged as made now but is no rate baseline",
            vec![rate("jump", 5.0)],
            vec![
                R("d1", P, 0.0, 5),
                Late("d1", P, 1000.0, 1_000_000, 10),
                R("d1", P, 1.0, 20),
                R("d1", P, 2.0, 21),
            ],
            vec![
                ("raised", "jump", "d1", 1_000_000),
                ("cleared", "jump", "d1", 20),
            ],
        ),
        (
            "a reading stamped in the future does not hold back one decoded just before the clock read",
            vec![above("hot", 35.0, 33.0, 0, 0)],
            vec![
                R("d1", T, 20.0, 5),
                Late("d1", T, 20.0, 100, 10),
                Late("d1", T, 40.0, 9, 10),
                Late("d1", T, 40.0, 4, 11),
            ],
            vec![("raised", "hot", "d1", 9)],
        ),
    ];
    assert!(cases.len() >= 20);
    for (name, rules, steps, expected) in cases {
        let mut engine = Engine::new(rules, 1000);
        let got = summary(&play(&mut engine, &steps));
        assert_eq!(got, want(&expected), "case: {name}");
    }
}

#[test]
fn raised_events_carry_value_threshold_and_severity() {
    let mut engine = Engine::new(vec![above("overheat", 35.0, 33.0, 0, 0)], 10);
    let events = play(
        &mut engine,
        &[R("dev-7", T, 36.2, 1), R("dev-7", T, 32.0, 2)],
    );
    assert_eq!(events[0].value, 36.2);
    assert_eq!(events[0].threshold, Some(35.0));
    assert_eq!(events[0].severity, Severity::Critical);
    assert_eq!(events[0].metric, "temperature");
    assert_eq!(
        events[1].threshold,
        Some(33.0),
        "a clear reports the clear threshold"
    );
}

#[test]
fn a_restart_neither_repeats_a_raise_nor_forgets_an_active_alarm() {
    let rules = || vec![above("hot", 35.0, 33.0, 10, 0)];
    let mut engine = Engine::new(rules(), 10);
    assert_eq!(
        play(&mut engine, &[R("d1", T, 36.0, 0), R("d1", T, 36.0, 10)]).len(),
        1
    );
    play(&mut engine, &[R("d2", T, 36.0, 20)]); // d2 pending since 20
    let bytes = postcard::to_stdvec(&engine.snapshot()).unwrap();

    let mut restarted = Engine::new(rules(), 10);
    restarted.restore(postcard::from_bytes(&bytes).unwrap());
    assert_eq!(restarted.active().len(), 1);
    let events = play(
        &mut restarted,
        &[
            R("d1", T, 37.0, 40),
            R("d2", T, 36.0, 30),
            R("d1", T, 30.0, 41),
        ],
    );
    assert_eq!(
        summary(&events),
        want(&[("raised", "hot", "d2", 30), ("cleared", "hot", "d1", 41)]),
        "d1 stays raised without a repeat; d2's pending time survived"
    );
}

#[test]
fn reload_keeps_states_of_unchanged_rules_and_resets_changed_ones() {
    let mut engine = Engine::new(
        vec![above("hot", 35.0, 33.0, 0, 0), below("cold", 0.0, 1.0)],
        10,
    );
    play(&mut engine, &[R("d1", T, 36.0, 0)]);
    play(&mut engine, &[R("d2", T, -5.0, 0)]);
    assert_eq!(engine.active().len(), 2);

    engine.reload(vec![
        above("hot", 35.0, 33.0, 0, 0),
        below("cold", -10.0, -9.0),
    ]);
    let active: Vec<String> = engine.active().into_iter().map(|a| a.alarm).collect();
    assert_eq!(active, ["hot"], "the changed rule starts afresh");
    assert!(
        play(&mut engine, &[R("d1", T, 37.0, 1)]).is_empty(),
        "no repeat of the kept alarm"
    );
}

#[test]
fn when_every_tracked_series_holds_an_active_alarm_a_new_one_is_refused_and_counted() {
    let mut engine = Engine::new(vec![above("hot", 35.0, 33.0, 0, 0)], 2);
    let events = play(
        &mut engine,
        &[
            R("d1", T, 36.0, 0),
            R("d2", T, 36.0, 0),
            R("d3", T, 36.0, 0),
            R("d3", T, 36.0, 1),
        ],
    );
    assert_eq!(events.len(), 2);
    let stats = engine.stats();
    assert_eq!(
        (stats.series, stats.series_refused, stats.raised),
        (2, 2, 2)
    );
}

#[test]
fn active_alarms_are_listed_with_their_start() {
    let mut engine = Engine::new(vec![above("hot", 35.0, 33.0, 0, 0), silent("quiet", 5)], 10);
    play(&mut engine, &[R("d1", T, 36.0, 3), Tick(9)]);
    let active = engine.active();
    assert_eq!(active.len(), 2);
    assert_eq!(
        (active[0].alarm.as_str(), active[0].since_ms),
        ("hot", 3000)
    );
    assert_eq!(
        (active[1].alarm.as_str(), active[1].since_ms),
        ("quiet", 9000)
    );
}

#[test]
fn a_device_that_stays_silent_after_a_restart_still_raises() {
    let mut engine = Engine::new(vec![silent("silent", 60)], 10);
    play(&mut engine, &[R("d1", T, 1.0, 0)]);
    let mut restarted = Engine::new(vec![silent("silent", 60)], 10);
    restarted.restore(engine.snapshot());
    let events = play(&mut restarted, &[Tick(30), Tick(60)]);
    assert_eq!(summary(&events), want(&[("raised", "silent", "d1", 60)]));
}

#[test]
fn a_rule_added_by_reload_applies_to_series_already_seen() {
    let mut engine = Engine::new(vec![below("cold", 0.0, 1.0)], 10);
    play(&mut engine, &[R("d1", T, 20.0, 0)]);
    engine.reload(vec![
        below("cold", 0.0, 1.0),
        above("hot", 35.0, 33.0, 0, 0),
    ]);
    let events = play(&mut engine, &[R("d1", T, 36.0, 1)]);
    assert_eq!(summary(&events), want(&[("raised", "hot", "d1", 1)]));
}

#[test]
fn state_persisted_with_a_far_future_ts_by_an_older_version_heals() {
    use gateway::alarm::{Phase, Series, Snapshot};
    let far = 4_102_444_800_000;
    let key = |rule: &str| (rule.to_owned(), "d1".to_owned(), T.to_owned());
    let mut old = Snapshot::default();
    old.series.insert(
        key("hot"),
        Series {
            phase: Phase::Normal,
            last_ts_ms: Some(far),
            last_value: 20.0,
            last_seen_ms: 1_000,
        },
    );
    old.series.insert(
        key("held"),
        Series {
            phase: Phase::Pending { since_ms: far },
            last_ts_ms: Some(far),
            last_value: 36.0,
            last_seen_ms: 1_000,
        },
    );
    // Through postcard, as it is stored.
    let bytes = postcard::to_stdvec(&old).unwrap();
    let mut engine = Engine::new(
        vec![
            above("hot", 35.0, 33.0, 0, 0),
            above("held", 35.0, 33.0, 10, 0),
        ],
        10,
    );
    engine.restore(postcard::from_bytes(&bytes).unwrap());
    let events = play(
        &mut engine,
        &[
            R("d1", T, 40.0, 100),
            R("d1", T, 40.0, 105),
            R("d1", T, 40.0, 110),
        ],
    );
    assert_eq!(
        summary(&events),
        want(&[("raised", "hot", "d1", 100), ("raised", "held", "d1", 110)]),
        "the ordering point and the pending hold are brought back to the clock"
    );
    assert_eq!(engine.stats().out_of_order, 0);
}

#[test]
fn timestamps_at_the_ends_of_i64_neither_panic_nor_wrap() {
    let mut engine = Engine::new(
        vec![
            above("hot", 35.0, 33.0, 10, 5),
            rate("jump", 1.0),
            silent("quiet", 1),
        ],
        100,
    );
    let at = |device: &str, metric: &str, value: f64, ts_ms: i64| Reading {
        ts_ms,
        ..reading(device, metric, value, 0)
    };
    let mut events = Vec::new();
    events.extend(engine.on_reading(&at("d1", T, 36.0, i64::MIN), i64::MIN));
    // `for_s` measured from i64::MIN to i64::MAX saturates: held long enough, no wrap to < 0.
    events.extend(engine.on_reading(&at("d1", T, 36.0, i64::MAX), i64::MAX));
    events.extend(engine.on_reading(&at("d1", P, -f64::MAX, i64::MIN), i64::MIN));
    events.extend(engine.on_reading(&at("d1", P, f64::MAX, i64::MAX), i64::MAX));
    // Two readings a millisecond apart from -f64::MAX to f64::MAX: a rate past f64's range.
    events.extend(engine.on_reading(&at("d2", P, -f64::MAX, 0), 0));
    events.extend(engine.on_reading(&at("d2", P, f64::MAX, 1), 1));
    events.extend(engine.tick(i64::MIN));
    events.extend(engine.tick(i64::MAX));
    let raised: Vec<(&str, f64)> = events
        .iter()
        .filter(|e| e.state == AlarmState::Raised)
        .map(|e| (e.alarm.as_str(), e.value))
        .collect();
    assert!(raised.contains(&("hot", 36.0)), "{raised:?}");
    assert!(
        raised.contains(&("jump", f64::MAX)),
        "a rate past f64 is reported as f64::MAX: {raised:?}"
    );
    assert!(events.iter().all(|e| e.value.is_finite()), "{events:?}");
}

#[test]
fn a_reading_with_a_non_finite_value_is_ignored() {
    let mut engine = Engine::new(vec![above("hot", 35.0, 33.0, 0, 0), rate("jump", 1.0)], 10);
    let events = play(&mut engine, &[R("d1", P, 1.0, 1)]);
    assert!(events.is_empty());
    for v in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        assert!(engine.on_reading(&reading("d1", P, v, 2), 2000).is_empty());
        assert!(engine.on_reading(&reading("d2", T, v, 2), 2000).is_empty());
    }
    assert_eq!(engine.stats().series, 1, "no series for a non-finite value");
}

/// The (device) of every series tracked, sorted.
fn devices(engine: &Engine) -> Vec<String> {
    let mut d: Vec<String> = engine
        .snapshot()
        .series
        .into_keys()
        .map(|(_, device, _)| device)
        .collect();
    d.sort();
    d.dedup();
    d
}

#[test]
fn past_the_cap_the_least_recently_seen_idle_series_is_evicted_and_the_new_one_admitted() {
    let mut engine = Engine::new(vec![above("hot", 35.0, 33.0, 0, 0)], 3);
    play(
        &mut engine,
        &[
            R("d1", T, 20.0, 1),
            R("d2", T, 20.0, 2),
            R("d3", T, 20.0, 3),
            R("d1", T, 20.0, 4),
        ],
    );
    assert!(play(&mut engine, &[R("d4", T, 20.0, 5)]).is_empty());
    assert_eq!(
        devices(&engine),
        ["d1", "d3", "d4"],
        "d2 was seen least recently"
    );
    let events = play(&mut engine, &[R("d5", T, 40.0, 6)]);
    assert_eq!(summary(&events), want(&[("raised", "hot", "d5", 6)]));
    assert_eq!(devices(&engine), ["d1", "d4", "d5"]);
    let stats = engine.stats();
    assert_eq!(
        (stats.series, stats.series_evicted, stats.series_refused),
        (3, 2, 0)
    );
}

#[test]
fn a_series_with_an_active_alarm_is_never_evicted_and_still_clears() {
    let mut engine = Engine::new(vec![above("hot", 35.0, 33.0, 0, 0)], 2);
    let events = play(
        &mut engine,
        &[
            R("d1", T, 40.0, 1),
            R("d2", T, 20.0, 2),
            R("d3", T, 20.0, 3),
            R("d4", T, 20.0, 4),
            R("d1", T, 30.0, 5),
        ],
    );
    assert_eq!(
        summary(&events),
        want(&[("raised", "hot", "d1", 1), ("cleared", "hot", "d1", 5)]),
    );
    assert_eq!(engine.stats().series_evicted, 2, "d2 then d3 made room");
}

#[test]
fn when_all_are_active_a_new_series_waits_for_a_clear_then_is_admitted() {
    let mut engine = Engine::new(vec![above("hot", 35.0, 33.0, 0, 0)], 2);
    let events = play(
        &mut engine,
        &[
            R("d1", T, 40.0, 1),
            R("d2", T, 40.0, 2),
            R("d3", T, 40.0, 3),
            R("d1", T, 30.0, 4),
            R("d3", T, 40.0, 5),
        ],
    );
    assert_eq!(
        summary(&events),
        want(&[
            ("raised", "hot", "d1", 1),
            ("raised", "hot", "d2", 2),
            ("cleared", "hot", "d1", 4),
            ("raised", "hot", "d3", 5),
        ]),
    );
    let stats = engine.stats();
    assert_eq!((stats.series_refused, stats.series_evicted), (1, 1));
}

#[test]
fn routes_no_rule_matches_count_against_the_cap_and_are_evicted_too() {
    let mut engine = Engine::new(vec![above("hot", 35.0, 33.0, 0, 0)], 2);
    play(
        &mut engine,
        &[
            R("d1", "humidity", 50.0, 1),
            R("d2", "humidity", 50.0, 2),
            R("d3", "humidity", 50.0, 3),
        ],
    );
    let events = play(&mut engine, &[R("d4", T, 40.0, 4)]);
    assert_eq!(summary(&events), want(&[("raised", "hot", "d4", 4)]));
    assert_eq!(engine.stats().series_refused, 0);
}

#[test]
fn restoring_more_series_than_the_cap_keeps_the_most_recently_seen() {
    let mut big = Engine::new(vec![above("hot", 35.0, 33.0, 0, 0)], 100);
    let steps: Vec<Step> = ["d1", "d2", "d3", "d4", "d5"]
        .iter()
        .enumerate()
        .map(|(i, d)| R(d, T, 20.0, i as i64))
        .collect();
    play(&mut big, &steps);
    let mut small = Engine::new(vec![above("hot", 35.0, 33.0, 0, 0)], 2);
    small.restore(big.snapshot());
    assert_eq!(devices(&small), ["d4", "d5"]);
}

#[test]
fn shard_snapshots_together_are_the_whole_state_and_only_changed_shards_are_dirty() {
    use gateway::alarm::{SHARDS, Snapshot, shard_of};
    let mut engine = Engine::new(
        vec![above("hot", 35.0, 33.0, 0, 0), silent("quiet", 60)],
        500,
    );
    let steps: Vec<Step> = (0..200)
        .map(|i| R(Box::leak(format!("dev-{i}").into_boxed_str()), T, 20.0, i))
        .collect();
    play(&mut engine, &steps);
    let whole = engine.snapshot();
    let mut union = Snapshot::default();
    for shard in 0..SHARDS {
        let part = engine.shard_snapshot(shard);
        assert!(
            part.series.keys().all(|(_, d, m)| shard_of(d, m) == shard),
            "shard {shard} holds only its own series"
        );
        union.series.extend(part.series);
    }
    assert_eq!(union, whole);
    assert_eq!(engine.dirty_shards(), 0, "every shard copied");
    play(&mut engine, &[R("dev-7", T, 21.0, 300)]);
    assert_eq!(engine.dirty_shards(), 1 << shard_of("dev-7", T));
}

#[test]
fn an_evicted_series_leaves_its_shard_dirty_so_the_saved_state_drops_it() {
    use gateway::alarm::{SHARDS, shard_of};
    let mut engine = Engine::new(vec![above("hot", 35.0, 33.0, 0, 0)], 1);
    play(&mut engine, &[R("d1", T, 20.0, 1)]);
    for shard in 0..SHARDS {
        engine.shard_snapshot(shard);
    }
    play(&mut engine, &[R("d2", T, 20.0, 2)]);
    let dirty = engine.dirty_shards();
    assert_ne!(dirty & 1 << shard_of("d1", T), 0);
    assert!(
        engine
            .shard_snapshot(shard_of("d1", T))
            .series
            .keys()
            .all(|(_, d, _)| d != "d1")
    );
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    fn any_ts() -> impl Strategy<Value = i64> {
        prop_oneof![
            Just(i64::MIN),
            Just(i64::MAX),
            i64::MIN..i64::MIN + 100_000,
            i64::MAX - 100_000..=i64::MAX,
            -100_000i64..100_000,
            any::<i64>(),
        ]
    }

    fn any_value() -> impl Strategy<Value = f64> {
        prop_oneof![
            Just(f64::MAX),
            Just(-f64::MAX),
            Just(f64::MIN_POSITIVE),
            -100.0f64..100.0,
            any::<f64>(),
        ]
    }

    fn rules() -> Vec<Rule> {
        let any_metric = |name: &str, c: AlarmCondition, for_s: u64| {
            Rule::new(name, "*", "*", c, for_s, for_s, Severity::Warning).unwrap()
        };
        vec![
            any_metric(
                "hot",
                AlarmCondition::Threshold {
                    above: Some(Limit {
                        trigger: 35.0,
                        clear: 33.0,
                    }),
                    below: Some(Limit {
                        trigger: -1e300,
                        clear: -1e299,
                    }),
                },
                10,
            ),
            any_metric(
                "jump",
                AlarmCondition::Rate {
                    rate_above_per_s: 5.0,
                },
                0,
            ),
            any_metric(
                "held",
                AlarmCondition::Rate {
                    rate_above_per_s: 1e300,
                },
                3,
            ),
            any_metric("quiet", AlarmCondition::NoData { no_data_s: 1 }, 0),
            any_metric(
                "forever",
                AlarmCondition::NoData {
                    no_data_s: u64::MAX,
                },
                u64::MAX,
            ),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn any_timestamps_and_values_never_panic_nor_emit_non_finite_values(
            steps in proptest::collection::vec(
                (0u8..3, any_value(), any_ts(), any_ts(), any::<bool>()),
                1..40,
            ),
            cap in 1usize..8,
        ) {
            let mut engine = Engine::new(rules(), cap);
            for (device, value, ts_ms, now_ms, tick) in steps {
                let events = if tick {
                    engine.tick(now_ms)
                } else {
                    let device = format!("d{device}");
                    let r = Reading { ts_ms, ..reading(&device, T, value, 0) };
                    engine.on_reading(&r, now_ms)
                };
                for e in &events {
                    prop_assert!(e.value.is_finite(), "{e:?}");
                    prop_assert!(e.threshold.is_none_or(f64::is_finite), "{e:?}");
                }
                prop_assert!(engine.stats().series <= cap);
            }
            let bytes = postcard::to_stdvec(&engine.snapshot()).unwrap();
            let mut again = Engine::new(rules(), cap);
            again.restore(postcard::from_bytes(&bytes).unwrap());
            prop_assert_eq!(again.snapshot(), engine.snapshot());
        }
    }
}
