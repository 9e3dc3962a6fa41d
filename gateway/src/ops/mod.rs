//! Operations: what lets people and service managers see and steer a running gateway, and what
//! every part of it logs and counts.
//!
//! - [`admin`]: the admin HTTP API (`/healthz`, `/metrics`, `/status`, `POST /reload`, the
//!   status page) over the running pipeline and forwarder;
//! - [`commands`]: the one-shot subcommands (`status`, `dead-letters list|replay`);
//! - [`demo`]: the demo receiver standing in for the cloud (`run --demo`);
//! - [`metrics`]: the ingest counters, bumped by sources, pipeline and sinks on their hot paths
//!   and rendered by the admin API;
//! - [`telemetry`]: logging set up once, with escaping of what devices sent, and throttled logs;
//! - [`sd_notify`]: systemd readiness and watchdog.
//!
//! Operations code observes and steers the data path and is not part of it: sources, the
//! pipeline and sinks count into [`metrics`] and log through [`telemetry`], and nothing here
//! acknowledges a reading. What ops changes goes through the core like anything else: a reload
//! swaps rules in the [`Pipeline`](crate::pipeline::Pipeline), and a dead-letter replay ingests
//! through one as a source would.
//!
//! Nothing here imports the `wiring` module: the admin API and the commands build what they need
//! from the config through the core ([`alarm::rules_from_config`](crate::alarm::rules_from_config),
//! [`Pipeline::from_config`](crate::pipeline::Pipeline::from_config),
//! [`buffer::options`](crate::buffer::options)), and the listeners here fail with a
//! [`ListenError`] of their own.

pub mod admin;
pub mod commands;
pub mod demo;
pub mod metrics;
pub mod sd_notify;
pub mod telemetry;

/// A listener of ours (the admin API, the demo receiver) could not bind its address.
#[derive(Debug, thiserror::Error)]
#[error("{what} {addr}: cannot listen: {source}")]
pub struct ListenError {
    /// The setting the address came from, as the message names it.
    pub what: &'static str,
    /// The address that could not be bound.
    pub addr: std::net::SocketAddr,
    /// Why, as the OS said it (in use, not permitted, no such address).
    pub source: std::io::Error,
}
