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
//!
//! # Layout
//! The folders follow the data: [`sources`] (MQTT, serial, framing, decoding, the embedded
//! broker) hand readings to the core, [`alarm`] (the rule engine), [`window`] (windows and
//! deadbands, which reduce what goes upstream) and [`pipeline`] (rules, reduction, then a durable
//! append), which writes them to the buffer opened as [`buffer`] says; [`sinks`] take
//! them out of it again (the local alarm topics here; the upstream is the `gateway-forwarder`
//! crate). [`ops`] is beside the flow: admin API, metrics, commands, demo receiver, logging,
//! systemd. [`wiring`] is the one module that turns the config into all of these and runs them.
//!
//! Each module imports only modules listed below it, so there are no cycles (not drawn: most
//! also use `ops::telemetry`, for throttled logs and escaping what devices sent):
//!
//! ```text
//! wiring ─────────────▶ everything below; only lib.rs and main.rs import it
//! ops::commands ──────▶ buffer, pipeline, sources::decode
//! ops::admin ─────────▶ pipeline, alarm (rules_from_config), ops::metrics, ops (ListenError)
//! ops::demo ──────────▶ ops (ListenError)
//! buffer ─────────────▶ sinks::local_alarms (its consumer name)
//! sinks::local_alarms ▶ sources::mqtt (MqttSettings: the same broker), ops::metrics
//! sources::mqtt ──────▶ pipeline, sources::decode, ops::metrics
//! sources::serial ────▶ pipeline, sources::{decode, framing}
//! sources::framing ───▶ sources::decode (Reject)
//! pipeline ───────────▶ alarm, window, sources::decode (Reject), ops::metrics
//! ops::metrics ───────▶ sources::decode (Reject: a counter per reason)
//! sources::decode ────▶ ops::telemetry (is_unsafe_char)
//! alarm, window, sources::broker, ops::telemetry, ops::sd_notify, ops (ListenError): nothing
//! of ours
//! ```

pub mod alarm;
pub mod buffer;
pub mod ops;
pub mod pipeline;
pub mod sinks;
pub mod sources;
pub mod window;
pub mod wiring;

pub use wiring::{RunError, RunOptions, run};
