//! Counters of the ingest path, shared by the sources and rendered by the admin API.
//!
//! Plain atomics: every source bumps them on its hot path, and `/metrics` reads them without
//! taking a lock that ingest would wait on.

use crate::decode::Reject;
use gateway_buffer::Source;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

/// Ingest counters. Labels are fixed at construction so rendering never allocates per label.
#[derive(Debug)]
pub struct IngestMetrics {
    readings_mqtt: AtomicU64,
    readings_serial: AtomicU64,
    rejected: [AtomicU64; Reject::ALL_REASONS.len()],
    /// MQTT messages whose ack was held back because the buffer was full (`when_full = "block"`).
    pub blocked_full: AtomicU64,
    /// Times a source (broker connection or serial port) was lost.
    pub source_disconnects: AtomicU64,
    /// Alarm events emitted (raised + cleared).
    pub alarm_events: AtomicU64,
    /// Readings refused by the alarm engine's series bound (the reading itself is kept).
    pub alarm_series_refused: AtomicU64,
    /// Alarm events the local publisher could not publish on `alarms/{device}/{rule}` and skipped.
    pub local_alarm_errors: AtomicU64,
    mqtt_enabled: AtomicBool,
    mqtt_connected: AtomicBool,
    mqtt_subscribed: AtomicBool,
    /// Serial readings not stored, by [`SERIAL_DROP_REASONS`].
    serial_dropped: [AtomicU64; SERIAL_DROP_REASONS.len()],
}

/// Why serial readings were not stored: the buffer failed a write (`buffer_write_error`), or
/// shutdown cut an append short (`shutdown`).
pub const SERIAL_DROP_REASONS: [&str; 2] = ["buffer_write_error", "shutdown"];

impl Default for IngestMetrics {
    fn default() -> Self {
        IngestMetrics {
            readings_mqtt: AtomicU64::new(0),
            readings_serial: AtomicU64::new(0),
            rejected: std::array::from_fn(|_| AtomicU64::new(0)),
            blocked_full: AtomicU64::new(0),
            source_disconnects: AtomicU64::new(0),
            alarm_events: AtomicU64::new(0),
            alarm_series_refused: AtomicU64::new(0),
            local_alarm_errors: AtomicU64::new(0),
            mqtt_enabled: AtomicBool::new(false),
            mqtt_connected: AtomicBool::new(false),
            mqtt_subscribed: AtomicBool::new(false),
            serial_dropped: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl IngestMetrics {
    pub fn add_readings(&self, source: Source, n: u64) {
        match source {
            Source::Mqtt => self.readings_mqtt.fetch_add(n, Relaxed),
            Source::Serial => self.readings_serial.fetch_add(n, Relaxed),
        };
    }

    pub fn readings(&self, source: Source) -> u64 {
        match source {
            Source::Mqtt => self.readings_mqtt.load(Relaxed),
            Source::Serial => self.readings_serial.load(Relaxed),
        }
    }

    /// Called by the MQTT source on every connect (`true`) and connection loss (`false`). Either
    /// way the subscription is not confirmed yet.
    pub fn set_mqtt_connected(&self, connected: bool) {
        self.mqtt_enabled.store(true, Relaxed);
        self.mqtt_connected.store(connected, Relaxed);
        self.mqtt_subscribed.store(false, Relaxed);
    }

    /// Called by the MQTT source when the broker answered its subscription: `true` when every
    /// topic filter was granted.
    pub fn set_mqtt_subscribed(&self, subscribed: bool) {
        self.mqtt_subscribed.store(subscribed, Relaxed);
    }

    /// Connected, and the broker granted every topic filter on this connection: from now on
    /// every reading published to those topics reaches the gateway.
    pub fn mqtt_subscribed(&self) -> bool {
        self.mqtt_subscribed.load(Relaxed)
    }

    pub fn mqtt_connected(&self) -> bool {
        self.mqtt_connected.load(Relaxed)
    }

    /// Whether an MQTT source runs at all.
    pub fn mqtt_enabled(&self) -> bool {
        self.mqtt_enabled.load(Relaxed)
    }

    pub fn add_rejected(&self, reason: &Reject) {
        if let Some(i) = Reject::ALL_REASONS
            .iter()
            .position(|r| *r == reason.reason())
        {
            self.rejected[i].fetch_add(1, Relaxed);
        }
    }

    /// (reason, count) for every reason, zeros included.
    pub fn rejected(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        Reject::ALL_REASONS
            .iter()
            .zip(&self.rejected)
            .map(|(r, c)| (*r, c.load(Relaxed)))
    }

    /// Counts `n` serial readings not stored for `reason` (one of [`SERIAL_DROP_REASONS`]).
    pub fn add_serial_dropped(&self, reason: &str, n: u64) {
        if let Some(i) = SERIAL_DROP_REASONS.iter().position(|r| *r == reason) {
            self.serial_dropped[i].fetch_add(n, Relaxed);
        }
    }

    /// (reason, count) for every serial drop reason, zeros included.
    pub fn serial_dropped(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        SERIAL_DROP_REASONS
            .iter()
            .zip(&self.serial_dropped)
            .map(|(r, c)| (*r, c.load(Relaxed)))
    }

    pub fn rejected_total(&self) -> u64 {
        self.rejected.iter().map(|c| c.load(Relaxed)).sum()
    }
}
