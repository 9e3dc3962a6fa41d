//! Scenario parsing, their effect on devices, signal determinism.

use std::sync::Arc;

use device_sim::Metric;
use device_sim::device::{Action, DeviceConfig, DeviceSim};
use device_sim::scenario::{DeviceSelector, Scenario, ScenarioError, ScenarioKind};
use device_sim::signal::{Signal, SignalParams};

const START: i64 = 1_764_081_600_000;

fn device(index: u32, rate_hz: f64, seed: u64, scenarios: &[&str]) -> DeviceSim {
    DeviceSim::new(DeviceConfig {
        index,
        rate_hz,
        metrics: Metric::DEFAULT.to_vec(),
        seed,
        start_ts_ms: START,
        scenarios: Arc::new(scenarios.iter().map(|s| s.parse().unwrap()).collect()),
    })
}

fn value(t: &device_sim::device::Tick, m: Metric) -> f64 {
    t.readings.iter().find(|r| r.0 == m).unwrap().1
}

#[test]
fn scenario_specs_parse_with_windows_and_device_ranges() {
    let s: Scenario = "spike:at=10s,for=20s,metric=temperature,to=41.5,devices=2..4"
        .parse()
        .unwrap();
    assert_eq!(
        s.kind,
        ScenarioKind::Spike {
            metric: Metric::Temperature,
            to: 41.5
        }
    );
    assert_eq!((s.at_ms, s.for_ms), (10_000, Some(20_000)));
    assert_eq!(s.devices, DeviceSelector::Range(2, 4));
    assert!(s.active(10_000, 3) && !s.active(30_000, 3) && !s.active(15_000, 5));

    let b: Scenario = "burst:x=4,at=500ms,for=1m".parse().unwrap();
    assert_eq!(b.kind, ScenarioKind::Burst { factor: 4.0 });
    assert_eq!((b.at_ms, b.for_ms), (500, Some(60_000)));
    let r: Scenario = "reconnect:devices=2".parse().unwrap();
    assert_eq!(r.for_ms, Some(5_000));
    assert_eq!(r.devices, DeviceSelector::Range(2, 2));
    let d: Scenario = "dropout".parse().unwrap();
    assert_eq!(
        (d.at_ms, d.for_ms, d.devices),
        (0, None, DeviceSelector::All)
    );
    let g: Scenario = "garbage".parse().unwrap();
    assert_eq!(g.kind, ScenarioKind::Garbage { fraction: 0.2 });
}

#[test]
fn bad_scenario_specs_are_rejected_naming_the_problem() {
    assert!(matches!(
        "meteor".parse::<Scenario>(),
        Err(ScenarioError::UnknownKind(_))
    ));
    assert!(matches!(
        "spike:size=3".parse::<Scenario>(),
        Err(ScenarioError::UnknownKey { .. })
    ));
    assert!(matches!(
        "garbage:fraction=2".parse::<Scenario>(),
        Err(ScenarioError::BadValue { .. })
    ));
    assert!(matches!(
        "dropout:at=soon".parse::<Scenario>(),
        Err(ScenarioError::BadValue { .. })
    ));
    assert!(matches!(
        "dropout:devices=0".parse::<Scenario>(),
        Err(ScenarioError::BadValue { .. })
    ));
    assert!(matches!(
        "spike:at".parse::<Scenario>(),
        Err(ScenarioError::NotKeyValue(_))
    ));
}

#[test]
fn spike_holds_temperature_above_35_for_its_window_then_returns_below_33() {
    // The overheat rule of the example config: above 35 for 10 s, clear below 33.
    let mut d = device(
        1,
        1.0,
        42,
        &["spike:at=10s,for=20s,metric=temperature,to=40"],
    );
    let ticks: Vec<_> = (0..45).map(|_| d.next_tick()).collect();
    for t in &ticks {
        let v = value(t, Metric::Temperature);
        if (10_000..30_000).contains(&t.elapsed_ms) {
            assert!(v > 35.0, "{} at {}", v, t.elapsed_ms);
        } else {
            assert!(v < 33.0, "{} at {}", v, t.elapsed_ms);
        }
    }
    let above = ticks
        .iter()
        .filter(|t| value(t, Metric::Temperature) > 35.0)
        .count();
    assert_eq!(above, 20);
}

#[test]
fn dropout_silences_only_the_selected_devices_in_the_window() {
    let spec = ["dropout:at=2s,for=3s,devices=2"];
    let mut d1 = device(1, 1.0, 1, &spec);
    let mut d2 = device(2, 1.0, 1, &spec);
    let a1: Vec<_> = (0..8).map(|_| d1.next_tick().action).collect();
    let a2: Vec<_> = (0..8).map(|_| d2.next_tick().action).collect();
    assert!(a1.iter().all(|a| *a == Action::Send));
    let skipped: Vec<usize> = (0..8)
        .filter(|&i| a2[i] == Action::Skip { scenario: 0 })
        .collect();
    assert_eq!(skipped, vec![2, 3, 4]);
}

#[test]
fn burst_multiplies_the_rate_within_its_window() {
    let mut d = device(1, 10.0, 1, &["burst:x=5,at=1s,for=1s"]);
    let ts: Vec<i64> = (0..70).map(|_| d.next_tick().ts_ms).collect();
    let in_window = ts
        .iter()
        .filter(|&&t| (START + 1000..START + 2000).contains(&t))
        .count();
    assert_eq!(in_window, 50);
    let before = ts.iter().filter(|&&t| t < START + 1000).count();
    assert_eq!(before, 10);
}

#[test]
fn stuck_repeats_the_value_it_had_when_the_window_opened() {
    let mut d = device(1, 1.0, 5, &["stuck:at=3s,for=5s,metric=humidity"]);
    let ticks: Vec<_> = (0..12).map(|_| d.next_tick()).collect();
    let stuck: Vec<f64> = ticks[3..8]
        .iter()
        .map(|t| value(t, Metric::Humidity))
        .collect();
    assert!(stuck.windows(2).all(|w| w[0] == w[1]), "{stuck:?}");
    let temps: Vec<f64> = ticks[3..8]
        .iter()
        .map(|t| value(t, Metric::Temperature))
        .collect();
    assert!(
        temps.windows(2).any(|w| w[0] != w[1]),
        "temperature is not stuck"
    );
}

#[test]
fn drift_adds_an_offset_growing_per_minute() {
    let mut plain = device(1, 1.0, 8, &[]);
    let mut drifting = device(1, 1.0, 8, &["drift:metric=pressure,per_min=6"]);
    for i in 0..60 {
        let a = value(&plain.next_tick(), Metric::Pressure);
        let b = value(&drifting.next_tick(), Metric::Pressure);
        // 6 hPa per minute is 0.1 hPa per second; allow for rounding to 0.01.
        assert!((b - a - 0.1 * f64::from(i)).abs() < 0.011, "{i}: {a} {b}");
    }
}

#[test]
fn garbage_replaces_about_the_given_fraction_of_ticks() {
    let mut d = device(1, 100.0, 2, &["garbage:fraction=0.25"]);
    let n = (0..4000)
        .filter(|_| matches!(d.next_tick().action, Action::Garbage { .. }))
        .count();
    assert!((800..1200).contains(&n), "{n}");
}

#[test]
fn timestamps_strictly_increase_per_device_even_above_1000_hz() {
    let mut d = device(1, 3000.0, 2, &["burst:x=3"]);
    let mut last = i64::MIN;
    for _ in 0..5000 {
        let t = d.next_tick().ts_ms;
        assert!(t > last);
        last = t;
    }
}

#[test]
fn the_same_seed_gives_the_same_readings_and_another_seed_does_not() {
    let run = |seed| {
        let mut d = device(
            4,
            2.0,
            seed,
            &["garbage:fraction=0.1", "spike:at=5s,for=2s"],
        );
        (0..300).map(|_| d.next_tick()).collect::<Vec<_>>()
    };
    assert_eq!(run(7), run(7));
    assert_ne!(run(7), run(8));
}

#[test]
fn signal_follows_its_daily_cycle_and_stays_in_range() {
    let params = SignalParams::for_metric(Metric::Humidity);
    let mut s = Signal::new(params, 1);
    let day = 86_400_000i64;
    for k in 0..2000 {
        let v = s.sample(START + k * 60_000);
        assert!((params.min..=params.max).contains(&v));
    }
    // Temperature peaks in the afternoon and is lowest at night.
    let t = Signal::new(SignalParams::for_metric(Metric::Temperature), 1);
    let at = |h: i64| t.daily((START / day) * day + h * 3_600_000);
    assert!(at(14) > at(2) + 7.0);
}
