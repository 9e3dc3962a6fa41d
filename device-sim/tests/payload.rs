//! Payload and line encodings against WIRE.md §1 and §2.

use device_sim::Metric;
use device_sim::payload::{
    ChecksumStatus, LineForm, MqttForm, checksum, corrupt_line, encode_lines, encode_mqtt,
    garbage_mqtt, noise_line, verify_checksum, with_checksum,
};
use rand::SeedableRng;
use rand::rngs::SmallRng;
use serde_json::Value;

const TS: i64 = 1_764_081_600_123;

fn readings() -> Vec<(Metric, f64)> {
    vec![
        (Metric::Temperature, 21.5),
        (Metric::Humidity, 41.0),
        (Metric::Pressure, 1013.25),
    ]
}

#[test]
fn bare_number_form_is_one_number_per_metric_topic_without_ts() {
    let msgs = encode_mqtt(MqttForm::Number, "sensors", "dev-7", TS, &readings());
    assert_eq!(msgs.len(), 3);
    assert_eq!(msgs[0].topic, "sensors/dev-7/temperature");
    assert_eq!(msgs[0].payload, b"21.5");
    assert_eq!(msgs[1].payload, b"41");
    assert_eq!(msgs[2].payload, b"1013.25");
    for m in &msgs {
        let v: f64 = std::str::from_utf8(&m.payload).unwrap().parse().unwrap();
        assert!(v.is_finite());
    }
}

#[test]
fn single_metric_json_carries_value_ts_and_unit() {
    let msgs = encode_mqtt(MqttForm::Json, "sensors", "dev-7", TS, &readings());
    assert_eq!(msgs.len(), 3);
    let v: Value = serde_json::from_slice(&msgs[0].payload).unwrap();
    assert_eq!(msgs[0].topic, "sensors/dev-7/temperature");
    assert_eq!(v["value"], 21.5);
    assert_eq!(v["ts"], TS);
    assert_eq!(v["unit"], "C");
    let p: Value = serde_json::from_slice(&msgs[2].payload).unwrap();
    assert_eq!(p["unit"], "hPa");
    assert_eq!(p["value"], 1013.25);
}

#[test]
fn multi_metric_json_carries_ts_and_every_metric_on_the_device_topic() {
    let msgs = encode_mqtt(MqttForm::Multi, "sensors", "dev-7", TS, &readings());
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0].topic, "sensors/dev-7");
    assert_eq!(
        msgs[0].metrics,
        vec![Metric::Temperature, Metric::Humidity, Metric::Pressure]
    );
    let v: Value = serde_json::from_slice(&msgs[0].payload).unwrap();
    assert_eq!(v["ts"], TS);
    assert_eq!(v["temperature"], 21.5);
    assert_eq!(v["humidity"], 41.0);
    assert_eq!(v["pressure"], 1013.25);
    assert_eq!(v.as_object().unwrap().len(), 4);
}

#[test]
fn senml_pack_names_device_and_metric_through_bn_and_n() {
    let msgs = encode_mqtt(MqttForm::Senml, "sensors", "dev-7", TS, &readings());
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0].topic, "sensors/dev-7");
    let v: Value = serde_json::from_slice(&msgs[0].payload).unwrap();
    let pack = v.as_array().unwrap();
    assert_eq!(pack.len(), 3);
    assert_eq!(pack[0]["bn"], "dev-7/");
    let bt = pack[0]["bt"].as_f64().unwrap();
    assert_eq!((bt * 1000.0).round() as i64, TS);
    assert_eq!(pack[0]["n"], "temperature");
    assert_eq!(pack[0]["u"], "Cel");
    assert_eq!(pack[0]["v"], 21.5);
    assert_eq!(pack[1]["n"], "humidity");
    assert_eq!(pack[1]["u"], "%RH");
    assert_eq!(pack[1]["v"], 41.0);
    assert!(pack[1].get("bn").is_none());
    // The exact text of the contract's example shape.
    let one = encode_mqtt(
        MqttForm::Senml,
        "sensors",
        "dev-7",
        TS,
        &[(Metric::Temperature, 21.5), (Metric::Humidity, 41.0)],
    );
    assert_eq!(
        String::from_utf8(one[0].payload.clone()).unwrap(),
        r#"[{"bn":"dev-7/","bt":1764081600.123,"n":"temperature","u":"Cel","v":21.5},{"n":"humidity","u":"%RH","v":41}]"#
    );
}

#[test]
fn mix_picks_every_concrete_form_over_many_ticks() {
    let mut rng = SmallRng::seed_from_u64(3);
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..200 {
        seen.insert(MqttForm::Mix.resolve(&mut rng));
    }
    assert_eq!(seen.len(), 4);
    assert!(!seen.contains(&MqttForm::Mix));
}

#[test]
fn csv_and_json_lines_follow_wire_section_2() {
    let r = &readings()[..2];
    let csv = encode_lines(LineForm::Csv, "dev-3", TS, r, false);
    assert_eq!(csv[0].bytes, b"dev-3,temperature,21.5,1764081600123");
    assert_eq!(csv[1].bytes, b"dev-3,humidity,41,1764081600123");
    let json = encode_lines(LineForm::Json, "dev-3", TS, r, false);
    let v: Value = serde_json::from_slice(&json[0].bytes).unwrap();
    assert_eq!(v["device"], "dev-3");
    assert_eq!(v["metric"], "temperature");
    assert_eq!(v["value"], 21.5);
    assert_eq!(v["ts"], TS);
    let multi = encode_lines(LineForm::JsonMulti, "dev-3", TS, r, false);
    assert_eq!(multi.len(), 1);
    let v: Value = serde_json::from_slice(&multi[0].bytes).unwrap();
    assert_eq!(v["device"], "dev-3");
    assert_eq!(v["ts"], TS);
    assert_eq!(v["temperature"], 21.5);
    assert_eq!(v["humidity"], 41.0);
    for line in csv.iter().chain(&json).chain(&multi) {
        assert!(line.bytes.len() <= 1024);
        assert!(!line.bytes.contains(&b'\n'));
    }
}

#[test]
fn checksum_of_the_wire_example_is_1d() {
    assert_eq!(
        with_checksum("dev-3,temperature,21.5"),
        "dev-3,temperature,21.5*1D"
    );
    assert_eq!(
        verify_checksum(b"dev-3,temperature,21.5*1D"),
        ChecksumStatus::Valid(b"dev-3,temperature,21.5")
    );
    assert_eq!(
        verify_checksum(b"dev-3,temperature,21.5*1E"),
        ChecksumStatus::Invalid
    );
    assert_eq!(
        verify_checksum(b"dev-3,temperature,21.5"),
        ChecksumStatus::Absent(b"dev-3,temperature,21.5")
    );
}

#[test]
fn checksum_is_two_uppercase_hex_digits_of_the_xor_of_every_byte_before_the_star() {
    let mut rng = SmallRng::seed_from_u64(11);
    for _ in 0..500 {
        let len = rand::Rng::random_range(&mut rng, 1..80);
        let body: String = (0..len)
            .map(|_| rand::Rng::random_range(&mut rng, b' '..=b'~') as char)
            .filter(|c| *c != '*')
            .collect();
        let line = with_checksum(&body);
        let (b, hex) = line.rsplit_once('*').unwrap();
        assert_eq!(b, body);
        assert_eq!(hex.len(), 2);
        assert!(
            hex.chars()
                .all(|c| c.is_ascii_digit() || ('A'..='F').contains(&c))
        );
        let xor = body.bytes().fold(0u8, |a, x| a ^ x);
        assert_eq!(u8::from_str_radix(hex, 16).unwrap(), xor);
        assert_eq!(checksum(body.as_bytes()), xor);
    }
}

#[test]
fn corrupted_lines_and_noise_are_never_valid_utf8_and_fail_their_checksum() {
    let mut rng = SmallRng::seed_from_u64(5);
    for i in 0..500 {
        let lines = encode_lines(LineForm::Csv, "dev-1", TS + i, &readings(), true);
        let bad = corrupt_line(&mut rng, &lines[0].bytes);
        assert!(std::str::from_utf8(&bad).is_err());
        assert_eq!(verify_checksum(&bad), ChecksumStatus::Invalid);
        let noise = noise_line(&mut rng);
        assert!(std::str::from_utf8(&noise).is_err());
        assert!(!noise.contains(&b'\n') && !noise.contains(&b'\r'));
    }
}

#[test]
fn garbage_payloads_never_decode_as_a_reading() {
    let mut rng = SmallRng::seed_from_u64(9);
    for _ in 0..300 {
        let g = garbage_mqtt(&mut rng, "sensors", "dev-1", Metric::Temperature);
        assert_eq!(g.topic, "sensors/dev-1/temperature");
        assert!(g.metrics.is_empty());
        let Ok(text) = std::str::from_utf8(&g.payload) else {
            continue;
        };
        if let Ok(x) = text.trim().parse::<f64>() {
            assert!(!x.is_finite(), "{text}");
        }
        if let Ok(v) = serde_json::from_str::<Value>(text) {
            assert!(!v["value"].is_number(), "{text}");
        }
    }
}
