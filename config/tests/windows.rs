//! `[[window]]` and `[[deadband]]`: the contract's tables load with the values they show, the
//! first matching rule applies, and every broken table is refused naming its key and line.

use gateway_config::{Config, ConfigError, RawReadings, Reduction, WindowFn, defaults};

const CONTRACT: &str = include_str!("../../docs/gateway.contract.toml");

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse_with_env(text, "test.toml", |_| None)
}

/// The contract with its `[[window]]` and `[[deadband]]` tables uncommented: each header and the
/// `key = value` lines under it.
fn contract_with_reductions() -> String {
    let mut out = String::new();
    let mut inside = false;
    for line in CONTRACT.lines() {
        let bare = line.strip_prefix("# ").unwrap_or(line);
        if bare == "[[window]]" || bare == "[[deadband]]" {
            inside = true;
            out.push_str(bare);
        } else if inside && bare.contains(" = ") && !bare.starts_with('#') {
            out.push_str(bare);
        } else {
            inside = false;
            out.push_str(line);
        }
        out.push('\n');
    }
    out
}

#[test]
fn the_contract_window_and_deadband_uncommented_load_as_written() {
    let text = contract_with_reductions();
    assert!(
        text.contains("\n[[window]]\nmetric = \"temperature\"\n"),
        "{text}"
    );
    assert!(
        text.contains("\n[[deadband]]\nmetric = \"humidity\"\n"),
        "{text}"
    );
    let config = parse(&text).unwrap_or_else(|e| panic!("{e}"));
    let [w] = &config.window[..] else {
        panic!("one window: {:?}", config.window)
    };
    assert_eq!((w.metric.as_str(), w.device.as_str()), ("temperature", "*"));
    assert_eq!(w.window_s, 60);
    assert_eq!(w.emit, WindowFn::ALL);
    assert_eq!(w.raw, RawReadings::Keep);
    let [d] = &config.deadband[..] else {
        panic!("one deadband: {:?}", config.deadband)
    };
    assert_eq!((d.metric.as_str(), d.device.as_str()), ("humidity", "*"));
    assert_eq!((d.abs, d.rel, d.max_interval_s), (0.5, 0.0, 300));
    assert_eq!(config.window_max_series, defaults::WINDOW_MAX_SERIES);
    assert!(matches!(
        config.reduction_for("dev-7", "temperature"),
        Some(Reduction::Window(0, _))
    ));
    assert!(matches!(
        config.reduction_for("dev-7", "humidity"),
        Some(Reduction::Deadband(0, _))
    ));
    assert_eq!(config.reduction_for("dev-7", "pressure"), None);
}

#[test]
fn omitted_keys_take_the_defaults_the_example_shows() {
    let config = parse("[[window]]\nmetric = \"t*\"\n[[deadband]]\nmetric = \"h\"\n").unwrap();
    let w = &config.window[0];
    assert_eq!(w.device, defaults::REDUCE_DEVICE_GLOB);
    assert_eq!(
        (w.window_s, w.emit.as_slice(), w.raw),
        (
            defaults::WINDOW_S,
            &defaults::WINDOW_EMIT[..],
            RawReadings::Keep
        )
    );
    let d = &config.deadband[0];
    assert_eq!(
        (d.abs, d.rel, d.max_interval_s),
        (0.0, 0.0, defaults::DEADBAND_MAX_INTERVAL_S)
    );
}

#[test]
fn the_first_matching_window_wins_and_a_window_goes_before_any_deadband() {
    let config = parse(
        "[[deadband]]\nmetric = \"*\"\n\
         [[window]]\nmetric = \"temp*\"\ndevice = \"hall-*\"\nwindow_s = 10\n\
         [[window]]\nmetric = \"temp*\"\nwindow_s = 60\nraw = \"drop\"\nemit = [\"max\"]\n",
    )
    .unwrap();
    let window_of = |device: &str| match config.reduction_for(device, "temperature") {
        Some(Reduction::Window(i, w)) => (i, w.window_s),
        other => panic!("{other:?}"),
    };
    assert_eq!(window_of("hall-1"), (0, 10));
    assert_eq!(window_of("roof-1"), (1, 60));
    assert!(matches!(
        config.reduction_for("roof-1", "humidity"),
        Some(Reduction::Deadband(0, _))
    ));
}

/// Asserts the text is refused with `key (line N): …fragment…`.
#[track_caller]
fn refused(text: &str, key: &str, line: usize, fragment: &str) {
    let err = parse(text).expect_err(text);
    let message = err.to_string();
    assert!(
        message.starts_with(&format!("{key} (line {line}): ")),
        "{message}"
    );
    assert!(message.contains(fragment), "{message}");
}

#[test]
fn broken_windows_are_refused_naming_key_and_line() {
    let table = "[[window]]\nmetric = \"t\"\n";
    refused(
        "[[window]]\nwindow_s = 5\n",
        "window[0].metric",
        1,
        "missing",
    );
    refused(
        &format!("{table}window_s = 0\n"),
        "window[0].window_s",
        3,
        "must be from 1 to 31622400",
    );
    refused(
        &format!("{table}window_s = 31622401\n"),
        "window[0].window_s",
        3,
        "found 31622401",
    );
    refused(
        &format!("{table}emit = []\n"),
        "window[0].emit",
        3,
        "expected one or more of",
    );
    refused(
        &format!("{table}emit = [\"mean\", \"p99\"]\n"),
        "window[0].emit[1]",
        3,
        "\"p99\"",
    );
    refused(
        &format!("{table}emit = [\"min\", \"min\"]\n"),
        "window[0].emit",
        3,
        "\"min\" is listed twice",
    );
    refused(
        &format!("{table}raw = \"sometimes\"\n"),
        "window[0].raw",
        3,
        "expected \"keep\" or \"drop\"",
    );
    refused(
        &format!("{table}device = \"[\"\n"),
        "window[0].device",
        3,
        "expected a glob",
    );
    refused(
        &format!("{table}{table}"),
        "window[1].metric",
        4,
        "same metric and device globs as window[0]",
    );
    refused(
        &format!("{table}every = 1\n"),
        "window[0].every",
        3,
        "unknown key",
    );
}

#[test]
fn broken_deadbands_are_refused_naming_key_and_line() {
    let table = "[[deadband]]\nmetric = \"h\"\n";
    refused(
        "[[deadband]]\nabs = 1.0\n",
        "deadband[0].metric",
        1,
        "missing",
    );
    refused(
        &format!("{table}abs = -0.5\n"),
        "deadband[0].abs",
        3,
        "expected a finite number >= 0, found -0.5",
    );
    refused(
        &format!("{table}rel = nan\n"),
        "deadband[0].rel",
        3,
        "expected a finite number >= 0, found NaN",
    );
    refused(
        &format!("{table}abs = inf\n"),
        "deadband[0].abs",
        3,
        "found inf",
    );
    refused(
        &format!("[[window]]\nmetric = \"h\"\n{table}"),
        "deadband[0].metric",
        4,
        "same metric and device globs as window[0]",
    );
    refused(
        &format!("{table}{table}"),
        "deadband[1].metric",
        4,
        "same metric and device globs as deadband[0]",
    );
    refused(
        "window_max_series = 0\n",
        "window_max_series",
        1,
        "greater than 0",
    );
}
