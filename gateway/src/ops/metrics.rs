//! Counters of the ingest path, shared by the sources and rendered by the admin API.
//!
//! Plain atomics: every source bumps them on its hot path, and `/metrics` reads them without
//! taking a lock that ingest would wait on.

use crate::sources::decode::Reject;
use gateway_buffer::{DurationHistogram, Durations, Source};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU8, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Ingest counters. Labels are fixed at construction so rendering never allocates per label.
#[derive(Debug)]
pub struct IngestMetrics {
    readings_mqtt: AtomicU64,
    readings_serial: AtomicU64,
    readings_modbus: AtomicU64,
    /// Every polled Modbus slave, in config order (registered by the wiring before start).
    modbus: Mutex<Vec<Arc<ModbusSlaveStats>>>,
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
    /// MQTT messages by how long they waited between arriving and their PUBACK being queued
    /// (decoding, the group commit's window and fsync).
    ack: Durations,
}

/// Why serial readings were not stored: the buffer failed a write (`buffer_write_error`), or
/// shutdown cut an append short (`shutdown`).
pub const SERIAL_DROP_REASONS: [&str; 2] = ["buffer_write_error", "shutdown"];

impl Default for IngestMetrics {
    fn default() -> Self {
        IngestMetrics {
            readings_mqtt: AtomicU64::new(0),
            readings_serial: AtomicU64::new(0),
            readings_modbus: AtomicU64::new(0),
            modbus: Mutex::new(Vec::new()),
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
            ack: Durations::default(),
        }
    }
}

impl IngestMetrics {
    pub fn add_readings(&self, source: Source, n: u64) {
        match source {
            Source::Mqtt => self.readings_mqtt.fetch_add(n, Relaxed),
            Source::Serial => self.readings_serial.fetch_add(n, Relaxed),
            Source::Modbus => self.readings_modbus.fetch_add(n, Relaxed),
        };
    }

    pub fn readings(&self, source: Source) -> u64 {
        match source {
            Source::Mqtt => self.readings_mqtt.load(Relaxed),
            Source::Serial => self.readings_serial.load(Relaxed),
            Source::Modbus => self.readings_modbus.load(Relaxed),
        }
    }

    /// Adds a Modbus slave to what `/metrics` and `/status` show, and returns its counters.
    pub fn register_modbus(&self, device: &str, url: &str, unit_id: u8) -> Arc<ModbusSlaveStats> {
        let stats = Arc::new(ModbusSlaveStats::new(device, url, unit_id));
        self.modbus
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(stats.clone());
        stats
    }

    /// The Modbus slaves' counters, in config order.
    pub fn modbus(&self) -> Vec<Arc<ModbusSlaveStats>> {
        self.modbus
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
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

    /// Counts `messages` MQTT messages acked `waited` after they arrived.
    pub fn observe_ack(&self, waited: Duration, messages: u64) {
        self.ack.observe(waited, messages);
    }

    /// A snapshot of [`IngestMetrics::observe_ack`]'s histogram.
    pub fn ack_latency(&self) -> DurationHistogram {
        self.ack.snapshot()
    }

    pub fn rejected_total(&self) -> u64 {
        self.rejected.iter().map(|c| c.load(Relaxed)).sum()
    }
}

/// Why a Modbus request failed, as counted by [`ModbusSlaveStats::add_error`]:
/// - `timeout`: nothing came back within `timeout_ms`;
/// - `exception`: the slave answered with a Modbus exception (by code in
///   [`ModbusSlaveStats::exceptions`]);
/// - `corrupt`: bytes came back that are no answer to the request (wrong CRC, broken framing, a
///   TCP header that is not Modbus, another slave's or request's answer);
/// - `io`: the port or connection could not be opened or failed.
pub const MODBUS_ERROR_REASONS: [&str; 4] = ["timeout", "exception", "corrupt", "io"];

/// Where a Modbus slave stands, as `/status` and `gateway_modbus_up` tell it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum SlaveState {
    /// Not polled yet.
    Starting = 0,
    /// The last poll read every register.
    Up = 1,
    /// The last poll got answers, but not values for every request (exceptions, corrupt frames).
    Errors = 2,
    /// The last poll got no answer at all: the slave is polled with backoff.
    Down = 3,
}

impl SlaveState {
    pub fn as_str(self) -> &'static str {
        match self {
            SlaveState::Starting => "starting",
            SlaveState::Up => "up",
            SlaveState::Errors => "errors",
            SlaveState::Down => "down",
        }
    }

    fn from_u8(v: u8) -> SlaveState {
        match v {
            1 => SlaveState::Up,
            2 => SlaveState::Errors,
            3 => SlaveState::Down,
            _ => SlaveState::Starting,
        }
    }
}

/// The counters of one polled Modbus slave; the source bumps them, ops reads them.
#[derive(Debug)]
pub struct ModbusSlaveStats {
    /// Its device id.
    pub device: String,
    /// Its link as `url` spells it.
    pub url: String,
    pub unit_id: u8,
    /// Polls started.
    pub polls: AtomicU64,
    /// Polls that read every register.
    pub polls_complete: AtomicU64,
    /// Requests sent.
    pub requests: AtomicU64,
    /// Readings made from its answers that the buffer did not store (failed write, shutdown).
    pub readings_not_stored: AtomicU64,
    errors: [AtomicU64; MODBUS_ERROR_REASONS.len()],
    /// Exception answers by exception code: a cold path, so a small locked list.
    exceptions: Mutex<Vec<(u8, u64)>>,
    state: AtomicU8,
    /// Wall clock (ms since the epoch) of the last poll's start; 0 before the first.
    last_poll_ms: AtomicI64,
    /// How long the last poll took, in microseconds.
    last_poll_us: AtomicU64,
    /// The pause before the next attempt while down, in milliseconds; 0 while answering.
    backoff_ms: AtomicU64,
    last_error: Mutex<Option<String>>,
}

impl ModbusSlaveStats {
    fn new(device: &str, url: &str, unit_id: u8) -> ModbusSlaveStats {
        ModbusSlaveStats {
            device: device.to_owned(),
            url: url.to_owned(),
            unit_id,
            polls: AtomicU64::new(0),
            polls_complete: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            readings_not_stored: AtomicU64::new(0),
            errors: std::array::from_fn(|_| AtomicU64::new(0)),
            exceptions: Mutex::new(Vec::new()),
            state: AtomicU8::new(SlaveState::Starting as u8),
            last_poll_ms: AtomicI64::new(0),
            last_poll_us: AtomicU64::new(0),
            backoff_ms: AtomicU64::new(0),
            last_error: Mutex::new(None),
        }
    }

    /// Counts a failed request for `reason` (one of [`MODBUS_ERROR_REASONS`]) and keeps its
    /// description as the last error.
    pub fn add_error(&self, reason: &str, exception_code: Option<u8>, detail: String) {
        if let Some(i) = MODBUS_ERROR_REASONS.iter().position(|r| *r == reason) {
            self.errors[i].fetch_add(1, Relaxed);
        }
        if let Some(code) = exception_code {
            let mut codes = self.exceptions.lock().unwrap_or_else(|p| p.into_inner());
            match codes.iter_mut().find(|(c, _)| *c == code) {
                Some((_, n)) => *n += 1,
                None => codes.push((code, 1)),
            }
        }
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(detail);
    }

    /// (reason, count) for every reason, zeros included.
    pub fn errors(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        MODBUS_ERROR_REASONS
            .iter()
            .zip(&self.errors)
            .map(|(r, c)| (*r, c.load(Relaxed)))
    }

    /// (exception code, count) for every code seen, by code.
    pub fn exceptions(&self) -> Vec<(u8, u64)> {
        let mut codes = self
            .exceptions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        codes.sort_unstable();
        codes
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Records a finished poll: when it started, how long it took, the state it leaves the
    /// slave in and the pause before the next attempt while down.
    pub fn poll_done(&self, started_ms: i64, took: Duration, state: SlaveState, backoff: Duration) {
        self.last_poll_ms.store(started_ms, Relaxed);
        self.last_poll_us
            .store(u64::try_from(took.as_micros()).unwrap_or(u64::MAX), Relaxed);
        self.state.store(state as u8, Relaxed);
        self.backoff_ms.store(
            u64::try_from(backoff.as_millis()).unwrap_or(u64::MAX),
            Relaxed,
        );
        if state == SlaveState::Up {
            self.polls_complete.fetch_add(1, Relaxed);
        }
    }

    pub fn state(&self) -> SlaveState {
        SlaveState::from_u8(self.state.load(Relaxed))
    }

    /// Start of the last poll, ms since the epoch; `None` before the first.
    pub fn last_poll_ms(&self) -> Option<i64> {
        Some(self.last_poll_ms.load(Relaxed)).filter(|ms| *ms != 0)
    }

    /// How long the last poll took.
    pub fn last_poll_latency(&self) -> Duration {
        Duration::from_micros(self.last_poll_us.load(Relaxed))
    }

    pub fn backoff(&self) -> Duration {
        Duration::from_millis(self.backoff_ms.load(Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gateway_buffer::LATENCY_BUCKETS_S;

    #[test]
    fn ack_latency_counts_each_message_in_its_bucket_and_estimates_quantiles_from_above() {
        let m = IngestMetrics::default();
        assert_eq!(m.ack_latency().quantile_ms(0.99), None);
        m.observe_ack(Duration::from_micros(800), 98);
        m.observe_ack(Duration::from_millis(7), 1);
        m.observe_ack(Duration::from_secs(60), 1);
        let h = m.ack_latency();
        assert_eq!(h.count(), 100);
        assert_eq!(h.cumulative[1], 98, "0.8 ms falls in the 1 ms bucket");
        assert_eq!(h.cumulative[4], 99, "7 ms falls in the 10 ms bucket");
        assert_eq!(h.cumulative[LATENCY_BUCKETS_S.len() - 1], 99);
        assert_eq!(h.quantile_ms(0.5), Some(1.0));
        assert_eq!(h.quantile_ms(0.98), Some(1.0));
        assert_eq!(h.quantile_ms(0.99), Some(10.0));
        assert_eq!(h.quantile_ms(1.0), None, "past the last bound");
        assert_eq!(h.sum_us, 78_400 + 7_000 + 60_000_000);
        assert_eq!(h.max_us, 60_000_000);
    }
}
