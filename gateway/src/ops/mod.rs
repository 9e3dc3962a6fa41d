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
//! Operations code observes and steers; it is not on the data path. Sources, the pipeline and
//! sinks count into [`metrics`] and log through [`telemetry`], and nothing here is what makes a
//! reading durable or acknowledges one.

pub mod admin;
pub mod commands;
pub mod demo;
pub mod metrics;
pub mod sd_notify;
pub mod telemetry;
