//! Sources: where readings come in (MQTT, serial lines, Modbus polls), and what turns their bytes into
//! readings (line framing, payload decoding), with the embedded broker that an MQTT source may
//! listen behind.
//!
//! # What a source must do
//! - **Hand every reading to the pipeline.** Readings are built only through
//!   [`decode::IngestRules::reading`], so every source refuses what the others refuse, and go to
//!   [`Pipeline::ingest`](crate::pipeline::Pipeline::ingest) (or its two halves,
//!   [`Pipeline::queue`](crate::pipeline::Pipeline::queue) then
//!   [`Queued::durable`](crate::pipeline::Queued::durable)), which runs the alarm rules and
//!   appends them to the durable buffer.
//! - **Acknowledge only once durable.** Input is acknowledged to whoever sent it (a PUBACK to
//!   the broker) only after the pipeline returned `Ok` for it and everything before it, in the
//!   order it came; on an error it stays unacknowledged, to be sent again. An input that cannot
//!   be acknowledged (a serial line) is counted when it is not stored.
//! - **Never stall on bad input.** What cannot be read is handed to
//!   [`Pipeline::reject`](crate::pipeline::Pipeline::reject) (counted by
//!   [`decode::Reject::reason`], kept as a dead letter) and then acknowledged like the rest, so
//!   it neither comes back nor holds up what follows.
//! - **Stop on the token.** On cancellation a source stops reading, lets the appends in
//!   progress finish and sends their acks, and returns; the wiring waits for every source
//!   before it stops the sinks.
//!
//! Each source is one `run(settings, pipeline, shutdown)` future; the wiring builds its
//! settings from the config and spawns it.

pub mod broker;
pub mod decode;
pub mod framing;
pub mod modbus;
pub mod mqtt;
pub mod serial;
