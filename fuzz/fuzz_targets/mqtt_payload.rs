//! The MQTT payload decoder never panics, and whatever it accepts is a finite reading.
#![no_main]

use gateway::decode::MqttDecoder;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first byte picks the topic shape, the rest is the payload.
    let Some((&pick, payload)) = data.split_first() else { return };
    let topic = match pick % 4 {
        0 => "sensors/dev-1/temperature",
        1 => "sensors/dev-1",
        2 => "sensors//x",
        _ => "other/dev-1/t",
    };
    let decoder = MqttDecoder::new(&["sensors/{device}/{metric}", "sensors/{device}"], 4096);
    if let Ok(readings) = decoder.decode(topic, payload, 1_764_081_600_000) {
        for r in readings {
            assert!(r.value.is_finite());
            assert!(!r.device.is_empty() && !r.metric.is_empty());
        }
    }
});
