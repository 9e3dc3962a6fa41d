//! Simulated sensor devices for the edge gateway: fleets over MQTT and serial, with real
//! `embedded-hal` 1.0 sensor drivers reading a simulated I2C bus, signal models, fault
//! scenarios, and exact counts of what was sent and acknowledged.
//!
//! The pipeline of one device, tick by tick:
//!
//! ```text
//! signal (baseline + daily cycle + walk + noise, seeded)
//!   → scenarios (spike, drift, stuck, dropout, burst, garbage, reconnect)
//!   → bus::SimBus (SHT3x, BMP280, MAX17048 register models)
//!   → drivers (the same code that reads real chips)
//!   → payload (WIRE.md §1 MQTT forms / §2 serial lines)
//!   → mqtt::run_fleet | serial::run_serial
//!   → summary (sent / written / acked per device and metric)
//! ```
//!
//! # Guarantees
//!
//! - **Contract forms.** Payloads and lines are exactly the forms of WIRE.md §1 and §2: bare
//!   number, single-metric JSON, multi-metric JSON and SenML on `sensors/{device}/{metric}` or
//!   `sensors/{device}`; CSV and JSON lines with an optional `*HH` XOR checksum.
//! - **Identifiable readings.** Every reading except the bare-number form carries an explicit
//!   `ts` (ms) that strictly increases per device, so `(device, metric, ts)` is unique.
//! - **Exact counts.** `sent` counts readings handed to the transport; `acked` counts PUBACKs
//!   matched to the message that carried them (QoS 1), never more than once per reading; garbage
//!   and noise are counted apart and never as readings. See [`mqtt`] for how.
//! - **Determinism.** With the same settings, seed and `start_ts_ms`, the readings (values,
//!   timestamps, forms, garbage, noise) are identical run to run; the serial byte stream is
//!   identical; `--record-sent` files are identical (ordered by device, then sending order).
//! - **Drivers are portable.** Everything in [`drivers`] is generic over
//!   `embedded_hal::i2c::I2c`, so it runs on a Raspberry Pi with `linux-embedded-hal`.
//!
//! # Not promised
//!
//! - Wall-clock pacing is best effort: a slow broker or a full pty delays ticks; timestamps stay
//!   on the virtual schedule regardless.
//! - After a lost connection, unacknowledged messages are published again (at-least-once), so a
//!   receiver may see a duplicate `(device, metric, ts)`; counts are not inflated by it.
//! - QoS 0 messages have no acknowledgement; `acked` stays 0 and `written` is the best evidence.
//! - The simulated chips convert instantly and do not model clock stretching or bus timing.

pub mod bus;
pub mod cli;
pub mod device;
pub mod drivers;
pub mod metric;
pub mod modbus;
pub mod mqtt;
pub mod payload;
pub mod scenario;
pub mod serial;
pub mod signal;
pub mod summary;

pub use metric::Metric;
pub use mqtt::{Broker, FleetConfig, FleetReport, run_fleet};
pub use payload::{LineForm, MqttForm};
pub use scenario::Scenario;
pub use serial::{Pty, SerialConfig, SerialReport, open_pty, run_serial};
pub use summary::{SentRecord, Summary};
