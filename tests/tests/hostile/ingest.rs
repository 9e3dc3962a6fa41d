//! Hostile payloads, ids, timestamps and sizes at ingest, and what reaches logs and the CLI.

#[allow(unused_imports)]
use super::*;
