//! Real peers for the tests of every crate, written once: what a test talks to, how it waits
//! for it, and what it does when a peer it needs is missing.
//!
//! What it offers:
//! - [`Mosquitto`]: a mosquitto broker on free ports, with or without persistence, extra config
//!   lines (such as [`deploy_limits`]), and a TLS listener (client certificates required or
//!   not); stop, kill and restart on the same port; killed on drop.
//! - [`Upstream`]: the cloud end, a real HTTP(S) server that records every WIRE.md §3 [`Batch`]
//!   and answers from a script of [`Reply`]s (status, body, `Retry-After`, slow, never), refuses
//!   a [`Poison`]ed batch, goes down (refusing and dropping connections) and comes back on the
//!   same port.
//! - [`Kafka`]: a Kafka-protocol broker (tansu, in memory) with topics, paused and resumed,
//!   and read back by kafka-python ([`KafkaRecord`]), an independent client.
//! - [`Pki`]: certificates for TLS peers; [`Tmpfs`]: a small filesystem to fill (it needs root).
//! - [`free_port`] for addresses a config needs before its peer starts; [`wait_until`], polling a
//!   condition against a deadline.
//! - [`missing`] and [`outside_checkout`]: what a test does when a peer is missing.
//!
//! It depends on no crate of the workspace, so every crate's tests can use it. Helpers that
//! need the gateway's own types live in the `gateway-tests` crate, on top of this one.
//!
//! # Guarantees
//! - Nothing binds a fixed port; servers bind port 0, brokers retry when a picked port was
//!   taken. Every child process is killed when its handle drops.
//! - With `CI` set, a missing peer fails the test: [`missing`] panics, naming the peer and the
//!   command that provides it. Only what lives outside the repository (the shared contract) is
//!   reported without failing: [`outside_checkout`].
//! - Without `CI`, the test says on stderr why it does not run for real, and its name, the
//!   reason and that command are appended as one line to the file named by
//!   `GATEWAY_TEST_SKIPS`. `scripts/test` (the README's test command) sets it and lists every
//!   such test at the end of the run, so a green run never hides a test that touched no peer.
//!
//! It does not decide for a test whether it can run without a peer: each test says what it
//! needs ([`MosquittoBuilder::require`], [`Tmpfs::mount`]) or looks for it itself.

use std::io::Write as _;

mod kafka;
mod mosquitto;
mod pki;
mod port;
mod tmpfs;
mod upstream;
mod wait;
pub use kafka::{KAFKA_ENABLE, Kafka, KafkaRecord};
pub use mosquitto::{Mosquitto, MosquittoBuilder, deploy_limits};
pub use pki::{Authority, Pki};
pub use port::{RefusedPort, free_port, listens_on};
pub use tmpfs::{Tmpfs, fill};
pub use upstream::{Batch, Poison, Reply, TlsServer, Upstream};
pub use wait::{POLL, wait_until};

/// The environment variable naming the file that collects tests which did not run for real.
pub const SKIPS_ENV: &str = "GATEWAY_TEST_SKIPS";

/// Reports that `test` cannot run for real because `what` (e.g. "mosquitto is not installed");
/// `enable` is the command that would make it run (e.g. "apt-get install mosquitto").
///
/// Panics when `CI` is set. Otherwise records the test and returns, so the caller can return
/// early (or go on with a stand-in, which is then also not a run for real).
pub fn missing(test: &str, what: &str, enable: &str) {
    if std::env::var_os("CI").is_some() {
        panic!("{test}: {what}, and CI is set: this test must run for real ({enable})");
    }
    record(test, what, enable);
}

/// Like [`missing`], for what no install step can provide because it lives outside the
/// repository (the shared contract beside the checkout): reported and listed, also under `CI`,
/// but never fails the run, since a fresh clone cannot be required to have it.
pub fn outside_checkout(test: &str, what: &str, enable: &str) {
    record(test, what, enable);
}

/// Says on stderr that `test` did not run for real and appends it to the `SKIPS_ENV` file.
fn record(test: &str, what: &str, enable: &str) {
    eprintln!("{test}: {what}; not run for real (to run it: {enable})");
    if let Some(path) = std::env::var_os(SKIPS_ENV) {
        let line = skip_line(test, what, enable);
        // One write of one short line in append mode: lines from tests running in parallel
        // (threads or processes) do not interleave.
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut f| f.write_all(line.as_bytes()));
        if let Err(e) = written {
            eprintln!("{test}: could not record the skip in {path:?}: {e}");
        }
    }
}

/// One line of the `SKIPS_ENV` file: the three fields separated by tabs, each on one line (a
/// reason quoting a command's stderr may hold newlines and tabs, which would break the list).
fn skip_line(test: &str, what: &str, enable: &str) -> String {
    let one_line = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
    format!(
        "{}\t{}\t{}\n",
        one_line(test),
        one_line(what),
        one_line(enable)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_peer_is_recorded_with_its_install_command_or_fails_under_ci() {
        let dir = std::env::temp_dir().join(format!("test-peers-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("skips");
        // The child is this test binary again, with the variables set for it alone.
        let status = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "tests::child_reports_a_missing_peer",
                "--nocapture",
            ])
            .env(SKIPS_ENV, &file)
            .env(CHILD_ENV, "1")
            .env_remove("CI")
            .status()
            .unwrap();
        assert!(status.success());
        let text = std::fs::read_to_string(&file).unwrap();
        assert_eq!(
            text,
            "child\tthe peer is not installed\tapt-get install peer\n"
        );
        let status = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "tests::child_reports_a_missing_peer"])
            .env(SKIPS_ENV, &file)
            .env(CHILD_ENV, "1")
            .env("CI", "true")
            .stderr(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(!status.success(), "with CI set a missing peer fails");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_reason_with_newlines_and_tabs_stays_on_one_line() {
        assert_eq!(
            skip_line(
                "disk",
                "cannot mount (mount: must be superuser.\n\tdmesg(1) may have more)",
                "run as root"
            ),
            "disk\tcannot mount (mount: must be superuser. dmesg(1) may have more)\trun as root\n"
        );
    }

    /// Set by the test above for its child runs.
    const CHILD_ENV: &str = "TEST_PEERS_CHILD";

    /// Does its work only as the child of the test above, which checks what it did.
    #[test]
    fn child_reports_a_missing_peer() {
        if std::env::var_os(CHILD_ENV).is_none() {
            return;
        }
        missing("child", "the peer is not installed", "apt-get install peer");
    }
}
