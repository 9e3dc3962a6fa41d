//! Every payload form of WIRE.md §1 and line form of §2, the RFC 8428 §5.1 examples, a table of
//! malformed inputs, and properties every reading out of a decoder has.

use gateway::sources::decode::{IngestRules, MqttDecoder, Reject, SerialDecoder, checksum_suffix};
use gateway_buffer::{Reading, Source};
use gateway_config::TopicTemplate;
use proptest::prelude::*;

const NOW: i64 = 1_764_081_699_000;

fn mqtt() -> MqttDecoder {
    let templates =
        ["sensors/{device}/{metric}", "sensors/{device}"].map(|t| TopicTemplate::new(t).unwrap());
    MqttDecoder::new(&templates, 4096)
}

fn serial() -> SerialDecoder {
    SerialDecoder::new("uart-0")
}

fn r(
    device: &str,
    metric: &str,
    value: f64,
    unit: Option<&str>,
    ts_ms: i64,
    source: Source,
) -> Reading {
    Reading {
        device: device.into(),
        metric: metric.into(),
        value,
        unit: unit.map(Into::into),
        ts_ms,
        source,
    }
}

fn m(device: &str, metric: &str, value: f64, unit: Option<&str>, ts_ms: i64) -> Reading {
    r(device, metric, value, unit, ts_ms, Source::Mqtt)
}

fn s(device: &str, metric: &str, value: f64, ts_ms: i64) -> Reading {
    r(device, metric, value, None, ts_ms, Source::Serial)
}

#[test]
fn a_bare_number_takes_device_and_metric_from_the_topic_and_the_receive_time() {
    let got = mqtt()
        .decode("sensors/dev-7/temperature", b"21.5", NOW)
        .unwrap();
    assert_eq!(got, [m("dev-7", "temperature", 21.5, None, NOW)]);
}

#[test]
fn a_one_metric_object_keeps_its_ts_and_unit() {
    let p = br#"{"value": 21.5, "ts": 1764081600123, "unit": "C"}"#;
    let got = mqtt().decode("sensors/dev-7/temperature", p, NOW).unwrap();
    assert_eq!(
        got,
        [m(
            "dev-7",
            "temperature",
            21.5,
            Some("C"),
            1_764_081_600_123
        )]
    );
}

#[test]
fn a_multi_metric_object_yields_one_reading_per_metric() {
    let p = br#"{"ts": 1764081600123, "temperature": 21.5, "humidity": 41}"#;
    let got = mqtt().decode("sensors/dev-7", p, NOW).unwrap();
    assert_eq!(
        got,
        [
            m("dev-7", "temperature", 21.5, None, 1_764_081_600_123),
            m("dev-7", "humidity", 41.0, None, 1_764_081_600_123),
        ]
    );
}

#[test]
fn a_senml_pack_takes_names_from_base_name_and_times_in_seconds() {
    let p = br#"[{"bn":"dev-7/","bt":1764081600.123,"n":"temperature","u":"Cel","v":21.5},{"n":"humidity","v":41}]"#;
    let got = mqtt().decode("sensors/gw", p, NOW).unwrap();
    assert_eq!(
        got,
        [
            m("dev-7", "temperature", 21.5, Some("Cel"), 1_764_081_600_123),
            m("dev-7", "humidity", 41.0, None, 1_764_081_600_123),
        ]
    );
}

#[test]
fn senml_relative_times_and_base_units_and_values_apply() {
    let p = br#"[{"bn":"dev-1/","bu":"Pa","bv":100000,"n":"pressure","v":13,"t":-2}]"#;
    let got = mqtt().decode("sensors/dev-1", p, NOW).unwrap();
    assert_eq!(
        got,
        [m("dev-1", "pressure", 100_013.0, Some("Pa"), NOW - 2000)]
    );
}

#[test]
fn a_senml_name_without_base_name_is_the_metric_of_the_topic_device() {
    let got = mqtt()
        .decode("sensors/dev-2", br#"[{"n":"co2","v":415}]"#, NOW)
        .unwrap();
    assert_eq!(got, [m("dev-2", "co2", 415.0, None, NOW)]);
    // A slash in a name without base name no longer splits it: the whole name is the metric.
    let got = mqtt()
        .decode("sensors/dev-2", br#"[{"n":"room-1/co2","v":415}]"#, NOW)
        .unwrap();
    assert_eq!(got, [m("dev-2", "room-1/co2", 415.0, None, NOW)]);
}

#[test]
fn a_senml_base_name_loses_exactly_one_trailing_slash_or_colon() {
    let cases: &[(&str, &str)] = &[
        ("dev-7/", "dev-7"),
        ("dev-7:", "dev-7"),
        ("dev-7", "dev-7"),
        ("site/dev-7/", "site/dev-7"),
        ("dev-7//", "dev-7/"),
        ("dev-7:/", "dev-7:"),
    ];
    for (bn, device) in cases {
        let p = format!(r#"[{{"bn":"{bn}","n":"t","v":1}}]"#);
        let got = mqtt().decode("sensors/gw", p.as_bytes(), NOW).unwrap();
        assert_eq!(got, [m(device, "t", 1.0, None, NOW)], "bn {bn:?}");
    }
    // A base name that is only the separator leaves no device id.
    let got = mqtt().decode("sensors/gw", br#"[{"bn":"/","n":"t","v":1}]"#, NOW);
    assert_eq!(got.unwrap_err().reason(), "bad_id");
}

/// The RFC 8428 §5.1 examples, each reading as WIRE.md §1 reads it (received on `sensors/gw`).
/// §5.1.1 (1 reading), §5.1.2 (2, then 7), §5.1.5 (the one numeric of four), §5.1.6 (4).
#[test]
fn every_reading_of_the_rfc_8428_examples_is_read_as_the_contract_says() {
    type Want = (&'static str, &'static str, f64, Option<&'static str>, i64);
    let urn = "urn:dev:ow:10e2073a01080063";
    let urn7 = "urn:dev:ow:10e2073a0108006";
    let bt2 = 1_276_020_076_001;
    let bt6 = 1_320_078_429_000;
    let examples: Vec<(&str, &str, Vec<Want>)> = vec![
        (
            "5.1.1 single datapoint",
            r#"[{"n":"urn:dev:ow:10e2073a01080063","u":"Cel","v":23.1}]"#,
            vec![("gw", urn, 23.1, Some("Cel"), NOW)],
        ),
        (
            "5.1.2 multiple datapoints",
            r#"[{"bn":"urn:dev:ow:10e2073a01080063:","n":"voltage","u":"V","v":120.1},
                {"n":"current","u":"A","v":1.2}]"#,
            vec![
                (urn, "voltage", 120.1, Some("V"), NOW),
                (urn, "current", 1.2, Some("A"), NOW),
            ],
        ),
        (
            "5.1.2 multiple datapoints with times",
            r#"[{"bn":"urn:dev:ow:10e2073a0108006:","bt":1.276020076001e+09,
                 "bu":"A","bver":5,"n":"voltage","u":"V","v":120.1},
                {"n":"current","t":-5,"v":1.2},
                {"n":"current","t":-4,"v":1.3},
                {"n":"current","t":-3,"v":1.4},
                {"n":"current","t":-2,"v":1.5},
                {"n":"current","t":-1,"v":1.6},
                {"n":"current","v":1.7}]"#,
            vec![
                (urn7, "voltage", 120.1, Some("V"), bt2),
                (urn7, "current", 1.2, Some("A"), bt2 - 5000),
                (urn7, "current", 1.3, Some("A"), bt2 - 4000),
                (urn7, "current", 1.4, Some("A"), bt2 - 3000),
                (urn7, "current", 1.5, Some("A"), bt2 - 2000),
                (urn7, "current", 1.6, Some("A"), bt2 - 1000),
                (urn7, "current", 1.7, Some("A"), bt2),
            ],
        ),
        (
            "5.1.5 multiple data types",
            r#"[{"bn":"urn:dev:ow:10e2073a01080063:","n":"temp","u":"Cel","v":23.1},
                {"n":"label","vs":"Machine Room"},
                {"n":"open","vb":false},
                {"n":"nfc-reader","vd":"aGkgCg"}]"#,
            vec![(urn, "temp", 23.1, Some("Cel"), NOW)],
        ),
        (
            "5.1.6 collection of resources",
            r#"[{"bn":"2001:db8::2/","bt":1.320078429e+09,"n":"temperature","u":"Cel","v":25.2},
                {"n":"humidity","u":"%RH","v":30},
                {"bn":"2001:db8::1/","n":"temperature","u":"Cel","v":12.3},
                {"n":"humidity","u":"%RH","v":67}]"#,
            vec![
                ("2001:db8::2", "temperature", 25.2, Some("Cel"), bt6),
                ("2001:db8::2", "humidity", 30.0, Some("%RH"), bt6),
                ("2001:db8::1", "temperature", 12.3, Some("Cel"), bt6),
                ("2001:db8::1", "humidity", 67.0, Some("%RH"), bt6),
            ],
        ),
    ];
    for (name, pack, want) in examples {
        let got = mqtt()
            .decode("sensors/gw", pack.as_bytes(), NOW)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let want: Vec<Reading> = want
            .into_iter()
            .map(|(d, metric, v, u, ts)| m(d, metric, v, u, ts))
            .collect();
        assert_eq!(got, want, "{name}");
    }
}

#[test]
fn senml_records_named_only_by_their_base_name_have_no_metric_and_are_bad_id() {
    // RFC 8428 §5.1.3 names its records by base name alone; under WIRE §1 the metric is `n`,
    // which they lack, so the pack is refused rather than mixing humidity and position in one
    // series.
    let pack = br#"[{"bn":"urn:dev:ow:10e2073a01080063","bt":1.320067464e+09,"bu":"%RH","v":20},
                    {"u":"lon","v":24.30621}]"#;
    let got = mqtt().decode("sensors/gw", pack, NOW).unwrap_err();
    assert_eq!(got.reason(), "bad_id", "{got}");
    // Its resolved form (§5.1.4) names them with `n` and no base name: the topic's device.
    let resolved = br#"[{"n":"urn:dev:ow:10e2073a01080063","u":"%RH","t":1.320067464e+09,"v":20},
                        {"n":"urn:dev:ow:10e2073a01080063","u":"lon","t":1.320067464e+09,"v":24.30621}]"#;
    let got = mqtt().decode("sensors/gw", resolved, NOW).unwrap();
    assert_eq!(
        got,
        [
            m(
                "gw",
                "urn:dev:ow:10e2073a01080063",
                20.0,
                Some("%RH"),
                1_320_067_464_000
            ),
            m(
                "gw",
                "urn:dev:ow:10e2073a01080063",
                24.30621,
                Some("lon"),
                1_320_067_464_000
            ),
        ]
    );
}

#[test]
fn an_rfc3339_ts_is_accepted() {
    let p = br#"{"value": 1, "ts": "2025-11-25T14:40:00.123Z"}"#;
    let got = mqtt().decode("sensors/dev-7/x", p, NOW).unwrap();
    assert_eq!(got[0].ts_ms, 1_764_081_600_123);
}

#[test]
fn csv_lines_with_and_without_ts_and_device() {
    let d = serial();
    assert_eq!(
        d.decode(b"dev-3,temperature,21.5,1764081600123", NOW)
            .unwrap(),
        [s("dev-3", "temperature", 21.5, 1_764_081_600_123)]
    );
    assert_eq!(
        d.decode(b"dev-3,humidity,40.2", NOW).unwrap(),
        [s("dev-3", "humidity", 40.2, NOW)]
    );
    assert_eq!(
        d.decode(b"humidity,40.2", NOW).unwrap(),
        [s("uart-0", "humidity", 40.2, NOW)]
    );
    assert_eq!(
        d.decode(b"humidity,40.2,17", NOW).unwrap(),
        [s("uart-0", "humidity", 40.2, 17)]
    );
}

#[test]
fn json_lines_one_metric_and_several() {
    let d = serial();
    let one = br#"{"device":"dev-3","metric":"temperature","value":21.5,"ts":1764081600123}"#;
    assert_eq!(
        d.decode(one, NOW).unwrap(),
        [s("dev-3", "temperature", 21.5, 1_764_081_600_123)]
    );
    let many = br#"{"device":"dev-3","ts":1764081600123,"temperature":21.5,"humidity":40.2}"#;
    assert_eq!(
        d.decode(many, NOW).unwrap(),
        [
            s("dev-3", "temperature", 21.5, 1_764_081_600_123),
            s("dev-3", "humidity", 40.2, 1_764_081_600_123)
        ]
    );
    let no_device = br#"{"metric":"temperature","value":3}"#;
    assert_eq!(
        d.decode(no_device, NOW).unwrap(),
        [s("uart-0", "temperature", 3.0, NOW)]
    );
}

#[test]
fn the_contract_checksum_example_is_valid() {
    assert_eq!(checksum_suffix(b"dev-3,temperature,21.5"), "*1D");
    let got = serial().decode(b"dev-3,temperature,21.5*1D", NOW).unwrap();
    assert_eq!(got, [s("dev-3", "temperature", 21.5, NOW)]);
}

#[test]
fn malformed_inputs_map_to_their_reasons() {
    let big = vec![b'1'; 5000];
    let mqtt_cases: &[(&str, &[u8], &str)] = &[
        ("sensors/dev-7/t", b"{\"value\": 21.5", "bad_json"),
        ("sensors/dev-7/t", b"[1,2", "bad_json"),
        ("sensors/dev-7/t", b"[1, 2]", "bad_json"),
        ("sensors/dev-7/t", b"abc", "bad_value"),
        ("sensors/dev-7/t", b"NaN", "bad_value"),
        ("sensors/dev-7/t", b"inf", "bad_value"),
        ("sensors/dev-7/t", b"1e999", "bad_value"),
        ("sensors/dev-7/t", br#"{"value": "21.5"}"#, "bad_value"),
        ("sensors/dev-7/t", br#"{"value": null}"#, "bad_value"),
        ("sensors/dev-7/t", br#"{"value": true}"#, "bad_value"),
        ("sensors/dev-7", br#"{"temperature": "hot"}"#, "bad_value"),
        ("sensors/dev-7", br#"{"ts": 1764081600123}"#, "no_value"),
        ("sensors/dev-7", br#"{}"#, "no_value"),
        ("sensors/dev-7", b"\x0c{\"\" : 0 }", "bad_id"),
        ("sensors/dev-7", br#"[{"n":"dev-7/t"}]"#, "no_value"),
        (
            "sensors/dev-7",
            br#"{"device":"x#y","value":1,"metric":"t"}"#,
            "bad_id",
        ),
        (
            "sensors/dev-7",
            br#"{"device":"x+y","temperature":1}"#,
            "bad_id",
        ),
        (
            "sensors/dev-7",
            br#"{"device":"a\u0000b","temperature":1}"#,
            "bad_id",
        ),
        (
            "sensors/dev-7",
            br#"{"device":"a\nb","temperature":1}"#,
            "bad_id",
        ),
        (
            "sensors/dev-7",
            br#"{"device":"","temperature":1}"#,
            "bad_id",
        ),
        ("sensors/dev-7", br#"{"a#b":1}"#, "bad_id"),
        ("sensors/dev\u{1b}[31m/t", b"1", "bad_id"),
        (
            "sensors/dev-7",
            br#"[{"bn":"x#y/","n":"t","v":1}]"#,
            "bad_id",
        ),
        (
            "sensors/dev-7",
            br#"[{"bn":"dev/","n":"t\u001b","v":1}]"#,
            "bad_id",
        ),
        ("sensors/dev-7", br#"[{"v":1}]"#, "bad_id"),
        (
            "sensors/dev-7/t",
            br#"{"value":20,"ts":4102444800000}"#,
            "bad_ts",
        ),
        (
            "sensors/dev-7/t",
            br#"{"value":20,"ts":9223372036854775807}"#,
            "bad_ts",
        ),
        ("sensors/dev-7/t", br#"{"value":20,"ts":1e300}"#, "bad_ts"),
        (
            "sensors/dev-7/t",
            br#"{"value":20,"ts":"9999-12-31T23:59:59Z"}"#,
            "bad_ts",
        ),
        (
            "sensors/dev-7",
            br#"[{"n":"t","v":1,"bt":4102444800}]"#,
            "bad_ts",
        ),
        (
            "sensors/dev-7",
            br#"[{"n":"t","v":1,"bt":1e308,"t":1e308}]"#,
            "bad_ts",
        ),
        ("sensors/dev-7", br#"[{"n":"t","v":1,"t":1000}]"#, "bad_ts"),
        (
            "sensors/dev-7",
            br#"[{"n":"t","bv":1.7e308,"v":1.7e308}]"#,
            "bad_value",
        ),
        (
            "sensors/dev-7",
            br#"[{"n":"t","bv":-1.7e308,"v":-1.7e308}]"#,
            "bad_value",
        ),
        ("sensors/dev-7", br#"[{"n":"t","v":1,"x_":1}]"#, "bad_json"),
        (
            "sensors/dev-7/t",
            br#"{"value": 1, "ts": "yesterday"}"#,
            "bad_ts",
        ),
        ("sensors/dev-7/t", br#"{"value": 1, "ts": [1]}"#, "bad_ts"),
        (
            "sensors/dev-7",
            br#"[{"n":"dev-7/t","v":1,"t":"now"}]"#,
            "bad_ts",
        ),
        ("other/dev-7/t", b"21.5", "unknown_topic"),
        ("sensors/dev-7/t/extra", b"21.5", "unknown_topic"),
        ("sensors//t", b"21.5", "unknown_topic"),
        ("sensors/dev-7", b"21.5", "unknown_topic"),
        ("sensors/dev-7", br#"{"value": 21.5}"#, "unknown_topic"),
        ("sensors/dev-7/t", &big, "too_large"),
        ("sensors/dev-7/t", b"\xff\xfe21", "bad_utf8"),
        ("sensors/dev-7/t", b"", "empty"),
        ("sensors/dev-7/t", b"   ", "empty"),
        ("sensors/dev-7", b"[]", "empty"),
    ];
    for (topic, payload, want) in mqtt_cases {
        let got = mqtt()
            .decode(topic, payload, NOW)
            .expect_err(&format!("{topic} {payload:?}"));
        assert_eq!(
            got.reason(),
            *want,
            "{topic} {:?}: {got}",
            String::from_utf8_lossy(payload)
        );
    }
    let line_cases: &[(&[u8], &str)] = &[
        (b"dev-3,temperature,21.5*00", "bad_checksum"),
        (b"dev-3,temperature,21.5*ZZ", "bad_checksum"),
        (b"dev-3,temperature", "bad_line"),
        (b"dev-3,temperature,warm", "bad_value"),
        (b"dev-3,temperature,21.5,noon", "bad_ts"),
        (b"dev-3,temperature,21.5,1,2", "bad_line"),
        (b"dev-3,,21.5", "bad_line"),
        (b"\x00\x9f\xfe\x01", "bad_utf8"),
        (br#"{"device":"dev-3","value":1"#, "bad_json"),
        (br#"{"device":7,"metric":"t","value":1}"#, "bad_line"),
        (b"x#y,temperature,-5", "bad_id"),
        (b"dev+1,temperature,-5", "bad_id"),
        (b"dev\x1b[31m,temperature,-5", "bad_id"),
        (b"dev-3,temp\x00,1", "bad_id"),
        (b"dev-3,temperature,21.5,4102444800000", "bad_ts"),
        (b"dev-3,temperature,21.5,9223372036854775807", "bad_ts"),
        (br#"{"device":"x#y","metric":"t","value":1}"#, "bad_id"),
    ];
    for (line, want) in line_cases {
        let got = serial().decode(line, NOW).expect_err(&format!("{line:?}"));
        assert_eq!(
            got.reason(),
            *want,
            "{:?}: {got}",
            String::from_utf8_lossy(line)
        );
    }
    // Every reason a decoder can give is in the tables above (the framer's reasons,
    // line_too_long and partial_line, are tested with the framer).
    let covered: Vec<&str> = mqtt_cases
        .iter()
        .map(|c| c.2)
        .chain(line_cases.iter().map(|c| c.1))
        .collect();
    for reason in Reject::ALL_REASONS {
        if !["line_too_long", "partial_line"].contains(&reason) {
            assert!(
                covered.contains(&reason),
                "no malformed input is rejected as {reason}"
            );
        }
    }
}

#[test]
fn a_long_id_is_bad_id_one_byte_past_the_limit() {
    let ok = "d".repeat(128);
    let long = "d".repeat(129);
    let topic = |d: &str| format!("sensors/{d}/t");
    assert!(mqtt().decode(&topic(&ok), b"1", NOW).is_ok());
    assert_eq!(
        mqtt()
            .decode(&topic(&long), b"1", NOW)
            .unwrap_err()
            .reason(),
        "bad_id"
    );
    let strict = mqtt().with_rules(rules(4, 300, None));
    assert!(strict.decode("sensors/abcd/t", b"1", NOW).is_ok());
    assert_eq!(
        strict
            .decode("sensors/abcde/t", b"1", NOW)
            .unwrap_err()
            .reason(),
        "bad_id"
    );
    let line = format!("{long},t,1");
    assert_eq!(
        serial().decode(line.as_bytes(), NOW).unwrap_err().reason(),
        "bad_id"
    );
}

#[test]
fn timestamps_are_bounded_by_the_configured_window() {
    let p = |ts: i64| format!(r#"{{"value":1,"ts":{ts}}}"#);
    let d = mqtt();
    assert!(
        d.decode("sensors/d/t", p(NOW + 300_000).as_bytes(), NOW)
            .is_ok()
    );
    assert_eq!(
        d.decode("sensors/d/t", p(NOW + 300_001).as_bytes(), NOW)
            .unwrap_err()
            .reason(),
        "bad_ts"
    );
    // No lower bound by default: devices replay old data.
    assert!(d.decode("sensors/d/t", p(0).as_bytes(), NOW).is_ok());
    assert!(d.decode("sensors/d/t", p(i64::MIN).as_bytes(), NOW).is_ok());
    let windowed = mqtt().with_rules(rules(128, 10, Some(3600)));
    assert!(
        windowed
            .decode("sensors/d/t", p(NOW - 3_600_000).as_bytes(), NOW)
            .is_ok()
    );
    assert_eq!(
        windowed
            .decode("sensors/d/t", p(NOW - 3_600_001).as_bytes(), NOW)
            .unwrap_err()
            .reason(),
        "bad_ts"
    );
    assert_eq!(
        windowed
            .decode("sensors/d/t", p(NOW + 10_001).as_bytes(), NOW)
            .unwrap_err()
            .reason(),
        "bad_ts"
    );
    let serial = serial().with_rules(rules(128, 10, Some(3600)));
    let line = format!("d,t,1,{}", NOW - 3_600_001);
    assert_eq!(
        serial.decode(line.as_bytes(), NOW).unwrap_err().reason(),
        "bad_ts"
    );
}

fn rules(max_id_bytes: usize, future_s: u64, past_s: Option<u64>) -> IngestRules {
    IngestRules::new(&gateway_config::IngestConfig {
        max_id_bytes,
        max_future_ts_s: future_s,
        max_past_ts_s: past_s,
    })
}

/// What every reading out of a decoder must be (WIRE.md §1 with the default `[ingest]`).
fn assert_admissible(readings: &[Reading]) {
    let rules = IngestRules::default();
    for r in readings {
        assert!(!r.device.is_empty() && r.device.len() <= 128, "{r:?}");
        assert!(!r.metric.is_empty() && r.metric.len() <= 128, "{r:?}");
        for id in [&r.device, &r.metric] {
            assert!(
                !id.chars().any(|c| c == '+' || c == '#' || c.is_control()),
                "{r:?}"
            );
        }
        assert!(r.value.is_finite(), "{r:?}");
        assert!(r.ts_ms <= NOW + 300_000, "{r:?}");
        assert!(rules.check_ts(r.ts_ms, NOW).is_ok(), "{r:?}");
    }
}

/// The oracle of the id rule, written independently of the decoder.
fn id_is_valid(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id.chars().all(|c| {
            c != '+'
                && c != '#'
                && !c.is_control()
                && !('\u{2028}'..='\u{202e}').contains(&c)
                && !('\u{2066}'..='\u{2069}').contains(&c)
                && !['\u{200e}', '\u{200f}', '\u{61c}'].contains(&c)
        })
}

/// Strings mixing plain characters with the ones the id rule is about.
fn id_strategy() -> impl Strategy<Value = String> {
    proptest::collection::vec(
        prop_oneof![
            8 => proptest::char::range('a', 'z'),
            1 => Just('+'),
            1 => Just('#'),
            1 => Just('\n'),
            1 => Just('\u{1b}'),
            1 => Just('\0'),
            1 => Just('/'),
            1 => Just(':'),
            1 => Just('é'),
            1 => Just('\u{202e}'),
        ],
        0..140,
    )
    .prop_map(|cs| cs.into_iter().collect())
}

/// Finite and extreme numbers, as JSON text.
fn number_strategy() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        any::<f64>()
            .prop_filter("JSON has no NaN or infinity", |f| f.is_finite())
            .prop_map(|f| format!("{f:e}")),
        Just("1.7976931348623157e308".to_owned()),
        Just("-1.7976931348623157e308".to_owned()),
        (-1000i64..1000).prop_map(|n| n.to_string()),
        Just("1.764081699e9".to_owned()),
    ]
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic_the_decoders_and_what_they_accept_is_admissible(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        for topic in ["sensors/dev-1/t", "sensors/dev-1"] {
            if let Ok(r) = mqtt().decode(topic, &bytes, NOW) { assert_admissible(&r) }
        }
        if let Ok(r) = serial().decode(&bytes, NOW) { assert_admissible(&r) }
    }

    #[test]
    fn arbitrary_json_like_text_never_panics_the_decoders_and_what_they_accept_is_admissible(text in r#"[\[\]{}"a-z0-9:,.\-e/+#_ ]{0,120}"#) {
        if let Ok(r) = mqtt().decode("sensors/dev-1", text.as_bytes(), NOW) { assert_admissible(&r) }
        if let Ok(r) = serial().decode(text.as_bytes(), NOW) { assert_admissible(&r) }
    }

    #[test]
    fn a_device_id_is_accepted_exactly_when_it_follows_the_id_rule(id in id_strategy()) {
        let payload = serde_json::json!({"device": id, "metric": "t", "value": 1}).to_string();
        let got = mqtt().decode("sensors/gw", payload.as_bytes(), NOW);
        prop_assert_eq!(got.is_ok(), id_is_valid(&id), "{:?}: {:?}", id, got);
        if let Err(e) = got { prop_assert_eq!(e.reason(), "bad_id"); }
        let line = format!("{id},t,1");
        if !id.contains(',') && !id.trim().is_empty() && id.trim() == id {
            let got = serial().decode(line.as_bytes(), NOW);
            prop_assert_eq!(got.is_ok(), id_is_valid(&id), "{:?}: {:?}", id, got);
        }
    }

    #[test]
    fn senml_packs_yield_only_admissible_readings_named_as_the_contract_says(
        bn in proptest::option::of(id_strategy()),
        n in id_strategy(),
        bt in proptest::option::of(number_strategy()),
        t in proptest::option::of(number_strategy()),
        bv in proptest::option::of(number_strategy()),
        v in number_strategy(),
    ) {
        let mut rec = format!(r#""n":{},"v":{v}"#, serde_json::Value::from(n.clone()));
        if let Some(bn) = &bn { rec.push_str(&format!(r#","bn":{}"#, serde_json::Value::from(bn.clone()))); }
        for (k, x) in [("bt", &bt), ("t", &t), ("bv", &bv)] {
            if let Some(x) = x { rec.push_str(&format!(r#","{k}":{x}"#)); }
        }
        let pack = format!("[{{{rec}}}]");
        if let Ok(readings) = mqtt().decode("sensors/gw", pack.as_bytes(), NOW) {
            assert_admissible(&readings);
            prop_assert_eq!(readings.len(), 1);
            let want_device = match bn.as_deref() {
                None | Some("") => "gw",
                Some(bn) => bn.strip_suffix(['/', ':']).unwrap_or(bn),
            };
            prop_assert_eq!(&readings[0].device, want_device);
            prop_assert_eq!(&readings[0].metric, &n);
        }
    }

    #[test]
    fn a_json_ts_is_accepted_exactly_up_to_the_future_bound(ts in prop_oneof![any::<i64>(), (NOW - 1_000_000)..(NOW + 1_000_000)]) {
        let payload = format!(r#"{{"value":1,"ts":{ts}}}"#);
        let got = mqtt().decode("sensors/d/t", payload.as_bytes(), NOW);
        prop_assert_eq!(got.is_ok(), ts <= NOW + 300_000, "{}: {:?}", ts, got);
    }
}
