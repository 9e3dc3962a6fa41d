//! End-to-end harness for the gateway: real peers around the real `gateway` binary.
//!
//! Every peer a test talks to is the real thing on a port bound (or picked) at run time:
//!
//! - [`Mosquitto`]: a mosquitto broker on a free port with persistence in a temp dir, so a
//!   restart keeps sessions; [`BrokerChoice`] falls back to the gateway's embedded broker when
//!   mosquitto is not installed (and fails instead when `CI` is set).
//! - [`Receiver`]: an axum HTTP server standing in for the cloud; decodes gzip, parses WIRE.md §3
//!   batches, records each one, and answers from a script of status codes and delays.
//! - [`GatewayProcess`]: the `gateway` binary run as a child process on a generated config in a
//!   temp dir; SIGTERM, SIGKILL and restart on the same data dir.
//! - [`Publisher`]: an MQTT QoS 1 publisher (rumqttc) that records exactly which messages were
//!   PUBACKed; [`Subscriber`] for the local alarm topics.
//! - [`tls_mosquitto`] and [`Cloud`]: a cloud IoT broker for the MQTT sink (TLS, client
//!   certificates required) and a subscriber there that records every batch.
//! - [`FaultyUpstream`]: a cloud that goes down (connection refused) and comes back on the same
//!   port, answers any status, `Retry-After`, slowly or never, and refuses one poison batch.
//! - [`fleet`]: device-sim (binary or library) as the fleet of a fault test, and the check of
//!   the cloud's records against what device-sim says it sent and the broker acknowledged.
//! - [`workload`]: WIRE.md §1 payloads with the readings they must become, and the comparison of
//!   what the receiver got against them.
//!
//! # Guarantees
//! - Nothing binds a fixed port; waits poll a condition against a deadline ([`wait_until`]).
//! - Every child process (gateway, mosquitto, socat) is killed when its handle drops, so a failing
//!   test leaves nothing behind.
//! - A failing wait names what it waited for and shows the tail of the gateway's stderr.
//!
//! It does not promise that the `gateway` binary is fresh unless it could build it: see
//! [`gateway_bin`].

mod cloud;
pub mod fleet;
mod gateway;
mod modbus_sim;
mod mosquitto;
mod publisher;
mod receiver;
mod serial;
mod subscriber;
mod upstream;
mod util;
pub mod workload;

pub use cloud::{Cloud, CloudMessage, tls_client, tls_mosquitto};
pub use gateway::{GatewayProcess, GatewaySpec, MqttSetup, gateway_bin};
pub use modbus_sim::{ModbusSim, ModbusSimAt, UnitCounts};
pub use mosquitto::{
    BrokerChoice, Mosquitto, deploy_limits, mosquitto_available, require_mosquitto,
};
pub use publisher::{Message, PublishOutcome, Publisher, PublisherOptions};
pub use receiver::{Batch, Receiver, Reply, TlsServer};
pub use serial::PtyPair;
pub use subscriber::{Received, Subscriber, retained_messages};
pub use upstream::{Fault, FaultyUpstream, Poison};
pub use util::{env_usize, free_port, wait_until};
