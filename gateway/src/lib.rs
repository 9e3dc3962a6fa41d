//! The gateway daemon: sources → alarm engine → durable buffer → forwarder.
//!
//! Readings arrive over MQTT (QoS 1, manual acks) and serial lines, are decoded per
//! `docs/WIRE.md`, checked against the alarm rules, and appended to the durable buffer; only then
//! is the MQTT message acknowledged. The forwarder drains the buffer upstream in batches, alarm
//! lane first.
//!
//! # Guarantees
//! - A QoS 1 message is acknowledged to the broker only after every reading in it is fsynced.
//! - A payload that cannot be read is counted by reason, kept as a dead letter, acknowledged, and
//!   never stops or slows the rest.
//!
//! # Not promised
//! - Exactly-once: crashes may repeat a reading (same `seq` upstream, or a broker redelivery
//!   that gets a new `seq`); the cloud deduplicates.
//! - Serial lines have no acknowledgement: up to one commit interval of lines read from a port
//!   can be lost in a crash.

pub mod alarm;
pub mod ops;
pub mod pipeline;
pub mod sinks;
pub mod sources;
pub mod wiring;

pub use wiring::{RunError, RunOptions, run};
