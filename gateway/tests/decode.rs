//! Every payload form of WIRE.md §1 and line form of §2, and a table of malformed inputs.

use gateway::decode::{MqttDecoder, SerialDecoder, checksum_suffix};
use gateway_buffer::{Reading, Source};
use proptest::prelude::*;

const NOW: i64 = 1_764_081_699_000;

fn mqtt() -> MqttDecoder {
    MqttDecoder::new(&["sensors/{device}/{metric}", "sensors/{device}"], 4096)
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
fn a_senml_name_without_slash_belongs_to_the_topic_device() {
    let got = mqtt()
        .decode("sensors/dev-2", br#"[{"n":"co2","v":415}]"#, NOW)
        .unwrap();
    assert_eq!(got, [m("dev-2", "co2", 415.0, None, NOW)]);
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
        ("sensors/dev-7", b"\x0c{\"\" : 0 }", "bad_json"),
        ("sensors/dev-7", br#"[{"n":"dev-7/t"}]"#, "no_value"),
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
    assert!(mqtt_cases.len() + line_cases.len() >= 25);
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic_the_decoders(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = mqtt().decode("sensors/dev-1/t", &bytes, NOW);
        let _ = mqtt().decode("sensors/dev-1", &bytes, NOW);
        let _ = serial().decode(&bytes, NOW);
    }

    #[test]
    fn arbitrary_json_like_text_never_panics_the_decoders(text in r#"[\[\]{}"a-z0-9:,.\-e/ ]{0,120}"#) {
        let _ = mqtt().decode("sensors/dev-1", text.as_bytes(), NOW);
        let _ = serial().decode(text.as_bytes(), NOW);
    }
}
