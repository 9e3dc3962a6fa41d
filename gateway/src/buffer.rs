//! The durable buffer as this gateway opens it: the `[buffer]` limits, and one consumer cursor
//! per sink that runs: the `[upstream]` forwarder always (first, so the lane counters take its
//! view), each `[[sink]]` under its name on the lanes it lists, and the local alarm topics, on
//! the alarm lane only, whenever MQTT is on.
//!
//! Everything that opens the buffer (`gateway run`, and the dead-letter commands while the
//! gateway is stopped) takes its options from [`options`], so both register the same consumers
//! on the same lanes.

use crate::sinks::local_alarms;
use gateway_buffer::{BufferOptions, SystemClock};
use gateway_config::{Config, MqttMode};
use std::sync::Arc;

/// The buffer's options from the config.
pub fn options(config: &Config) -> BufferOptions {
    let mut consumers = vec![gateway_forwarder::CONSUMER.to_owned()];
    let mut alarms_only_consumers = Vec::new();
    let mut readings_only_consumers = Vec::new();
    for sink in &config.sinks {
        consumers.push(sink.name.clone());
        match (sink.lanes.readings, sink.lanes.alarms) {
            (true, false) => readings_only_consumers.push(sink.name.clone()),
            (false, true) => alarms_only_consumers.push(sink.name.clone()),
            // Config validation refuses a sink of no lane.
            _ => {}
        }
    }
    if config.mqtt.mode != MqttMode::Disabled {
        consumers.push(local_alarms::CONSUMER.to_owned());
        alarms_only_consumers.push(local_alarms::CONSUMER.to_owned());
    }
    BufferOptions {
        dir: config.data_dir.join("buffer"),
        readings_max_bytes: config.buffer.max_bytes,
        alarms_max_bytes: config.buffer.alarm_max_bytes,
        when_full: config.buffer.when_full,
        max_age_s: config.buffer.max_age_s,
        commit_interval_ms: config.buffer.commit_interval_ms,
        commit_max_records: config.buffer.commit_max_records,
        commit_stretch_ms: config.buffer.commit_stretch_ms,
        cache_capacity_bytes: config.buffer.cache_capacity_bytes,
        dead_letter_max_bytes: config.buffer.dead_letter_max_bytes,
        refused_dead_letter_max_bytes: config.buffer.refused_dead_letter_max_bytes,
        consumers,
        alarms_only_consumers,
        readings_only_consumers,
        clock: Arc::new(SystemClock),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_consumer_names_of_the_gateway_are_those_config_keeps_from_sinks() {
        let reserved = gateway_config::defaults::SINK_RESERVED_NAMES;
        assert!(reserved.contains(&gateway_forwarder::CONSUMER));
        assert!(reserved.contains(&local_alarms::CONSUMER));
    }
}
