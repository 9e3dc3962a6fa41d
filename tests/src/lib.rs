//! End-to-end harness for the gateway: real peers around the real `gateway` binary.
//!
//! Every peer a test talks to is the real thing on a port bound (or picked) at run time. The
//! peers every crate's tests share come from [`test_peers`] and are re-exported here:
//! [`Mosquitto`], the scripted cloud [`Upstream`] (it records every WIRE.md §3 [`Batch`] and
//! answers from a script of [`Reply`]s, refuses a [`Poison`]ed batch, goes down and comes back on
//! the same port), [`free_port`] and [`wait_until`]. On top of them:
//!
//! - [`broker`]: mosquitto as these tests run it (the deployed limits, persistence in a temp
//!   dir, so a restart keeps sessions); [`BrokerChoice`] falls back to the gateway's embedded
//!   broker when mosquitto is not installed (and fails instead when `CI` is set).
//! - [`GatewayProcess`]: the `gateway` binary run as a child process on a generated config in a
//!   temp dir; SIGTERM, SIGKILL and restart on the same data dir.
//! - [`Publisher`]: an MQTT QoS 1 publisher (rumqttc) that records exactly which messages were
//!   PUBACKed; [`Subscriber`] for the local alarm topics.
//! - [`tls_mosquitto`] and [`Cloud`]: a cloud IoT broker for the MQTT sink (TLS, client
//!   certificates required or not) and a subscriber there that records every batch.
//! - [`fleet`]: device-sim (binary or library) as the fleet of a fault test, and the check of
//!   the cloud's records against what device-sim says it sent and the broker acknowledged.
//! - [`workload`]: WIRE.md §1 payloads with the readings they must become, and the comparison of
//!   what the upstream got against them.
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
mod serial;
mod subscriber;
mod util;
pub mod workload;

pub use cloud::{Cloud, CloudMessage, tls_client, tls_mosquitto};
pub use gateway::{GatewayProcess, GatewaySpec, MqttSetup, gateway_bin};
pub use modbus_sim::{ModbusSim, ModbusSimAt, UnitCounts};
pub use mosquitto::{BrokerChoice, broker, require_mosquitto};
pub use publisher::{Message, PublishOutcome, Publisher, PublisherOptions};
pub use serial::PtyPair;
pub use subscriber::{Received, Subscriber, retained_messages};
pub use test_peers::{
    Batch, Mosquitto, Poison, Reply, TlsServer, Upstream, deploy_limits, free_port, wait_until,
};
pub use util::env_usize;
