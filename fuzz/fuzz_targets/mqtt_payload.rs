//! The MQTT payload decoder never panics, and whatever it accepts passes the `[ingest]` rules of
//! WIRE.md §1: ids of 1..=max_id_bytes bytes without `+`, `#` or control characters, a finite
//! value, a timestamp within the bounds of the clock.
#![no_main]

use gateway::sources::decode::{IdKind, IngestRules, MqttDecoder};
use gateway_config::{IngestConfig, TopicTemplate};
use libfuzzer_sys::fuzz_target;

const NOW: i64 = 1_764_081_600_000;

fuzz_target!(|data: &[u8]| {
    // The first byte picks the topic shape and the rules, the rest is the payload.
    let Some((&pick, payload)) = data.split_first() else { return };
    let topic = match pick % 5 {
        0 => "sensors/dev-1/temperature",
        1 => "sensors/dev-1",
        2 => "sensors//x",
        3 => "sensors/dev\u{1b}[31m/t",
        _ => "other/dev-1/t",
    };
    let rules = IngestRules::new(&IngestConfig {
        max_id_bytes: if pick & 0x10 == 0 { 128 } else { 8 },
        max_future_ts_s: 300,
        max_past_ts_s: (pick & 0x20 != 0).then_some(3600),
    });
    let templates = ["sensors/{device}/{metric}", "sensors/{device}"]
        .map(|t| TopicTemplate::new(t).unwrap());
    let decoder = MqttDecoder::new(&templates, 4096).with_rules(rules);
    if let Ok(readings) = decoder.decode(topic, payload, NOW) {
        for r in readings {
            assert!(r.value.is_finite());
            assert!(rules.check_id(IdKind::Device, &r.device).is_ok(), "{r:?}");
            assert!(rules.check_id(IdKind::Metric, &r.metric).is_ok(), "{r:?}");
            assert!(!r.device.contains(['+', '#']) && !r.device.chars().any(char::is_control));
            assert!(r.ts_ms <= NOW + 300_000, "{r:?}");
            assert!(rules.check_ts(r.ts_ms, NOW).is_ok(), "{r:?}");
        }
    }
});
