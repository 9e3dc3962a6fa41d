//! A real mosquitto broker per test, on free ports of 127.0.0.1, killed when its handle drops.
//!
//! [`Mosquitto::builder`] sets what differs between tests: persistence (sessions and queued
//! QoS 1 messages that survive a restart), extra config lines (queue limits, packet sizes; see
//! [`deploy_limits`]), a TLS listener (requiring client certificates or not), and the directory that
//! holds its config, database and logs. What every broker has: an anonymous plain listener, a log
//! file (its tail is printed when a test panics), and `user root` when the tests run as root, since
//! mosquitto would otherwise drop to a user that cannot write the test's directory.
//!
//! # Guarantees
//! - [`MosquittoBuilder::start`] returns once this mosquitto process listens on every port
//!   (checked with [`listens_on`]: another test's broker answering on a port that was free a
//!   moment ago does not count), and fails if mosquitto wrote an error at start (an unwritable
//!   log or database would quietly turn off what the test relies on). A port taken between
//!   picking and binding is retried with fresh ones.
//! - While stopped, its ports are held ([`RefusedPort::hold`]): refused to clients, and given to nobody
//!   else, so [`Mosquitto::restart`] finds them free.
//! - [`MosquittoBuilder::require`] reports a missing mosquitto through [`crate::missing`], which
//!   fails the test under `CI`.
//! - The process is killed and reaped on drop; with `E2E_KEEP` set its temp dir is kept.
//!
//! The binary is `$MOSQUITTO`, else `/usr/sbin/mosquitto`, `/usr/local/sbin/mosquitto`, or
//! `mosquitto` on `PATH`.

use crate::port::{Start, wait_listening};
use crate::{Authority, RefusedPort, free_port};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where mosquitto is, if installed.
fn mosquitto_path() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("MOSQUITTO") {
        return Some(PathBuf::from(p));
    }
    let candidates = ["/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto"];
    if let Some(p) = candidates.iter().map(Path::new).find(|p| p.exists()) {
        return Some(p.to_path_buf());
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("mosquitto"))
            .find(|p| p.exists())
    })
}

/// The broker limits `deploy/mosquitto.conf` recommends, as config lines: in-flight and queue
/// limits, `max_packet_size` (equal to the gateway's default `mqtt.max_packet_bytes`) and
/// `queue_qos0_messages`. Brokers in the tests and benchmarks take these from the file itself, so
/// they cannot drift apart.
pub fn deploy_limits() -> String {
    const KEYS: [&str; 5] = [
        "max_inflight_messages",
        "max_queued_messages",
        "max_queued_bytes",
        "max_packet_size",
        "queue_qos0_messages",
    ];
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/mosquitto.conf");
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| KEYS.contains(&l.split_whitespace().next().unwrap_or("")))
        .collect();
    assert_eq!(lines.len(), KEYS.len(), "{path} sets each of {KEYS:?} once");
    lines.join("\n") + "\n"
}

/// What a broker is started with; see [`Mosquitto::builder`].
#[derive(Debug, Default, Clone)]
pub struct MosquittoBuilder {
    /// `autosave_interval` in seconds when persistence is on.
    autosave_s: Option<u64>,
    conf: String,
    /// The TLS listener's authority, and whether it requires client certificates.
    tls: Option<(Authority, bool)>,
    dir: Option<PathBuf>,
}

impl MosquittoBuilder {
    /// Persistence in its directory, saved every `autosave_s` seconds and at a SIGTERM: sessions,
    /// subscriptions and queued QoS 1 messages survive [`Mosquitto::restart`] (up to
    /// `autosave_s` of them are lost after [`Mosquitto::kill`]). Off by default.
    pub fn persistent(mut self, autosave_s: u64) -> Self {
        self.autosave_s = Some(autosave_s);
        self
    }

    /// Appends these lines to the config (each ending in a newline or not).
    pub fn conf(mut self, lines: &str) -> Self {
        self.conf.push_str(lines);
        if !self.conf.ends_with('\n') {
            self.conf.push('\n');
        }
        self
    }

    /// A second listener, on [`Mosquitto::tls_port`], speaking TLS with `server`'s server
    /// certificate; with `require_certificate`, clients must present one signed by its CA.
    pub fn tls(mut self, server: &Authority, require_certificate: bool) -> Self {
        self.tls = Some((server.clone(), require_certificate));
        self
    }

    /// Keeps config, database and logs in `dir` (created if needed, left in place) instead of
    /// a temp dir of its own.
    pub fn dir(mut self, dir: &Path) -> Self {
        self.dir = Some(dir.to_path_buf());
        self
    }

    /// The broker, or `None` when mosquitto is not installed: reported for `test` through
    /// [`crate::missing`] (a failure under `CI`).
    pub fn require(self, test: &str) -> Option<Mosquitto> {
        if Mosquitto::available() {
            return Some(self.start());
        }
        crate::missing(
            test,
            "mosquitto is not installed",
            "apt-get install mosquitto",
        );
        None
    }

    /// Starts it and waits until it accepts connections. Panics if mosquitto is not installed
    /// (see [`MosquittoBuilder::require`]) or does not start.
    pub fn start(self) -> Mosquitto {
        let dir = match &self.dir {
            Some(d) => {
                std::fs::create_dir_all(d).expect("mosquitto dir");
                Dir::Given(d.clone())
            }
            None => Dir::Temp(
                tempfile::Builder::new()
                    .prefix("mosquitto-")
                    .tempdir()
                    .expect("temp dir"),
            ),
        };
        let mut m = Mosquitto {
            port: 0,
            tls_port: None,
            options: self,
            dir,
            child: None,
            held: Vec::new(),
        };
        // A free port can be taken between picking and binding; try a few.
        for _ in 0..5 {
            m.port = free_port();
            m.tls_port = m.options.tls.as_ref().map(|_| free_port());
            m.write_config();
            if m.spawn() {
                return m;
            }
        }
        panic!("mosquitto did not start:\n{}", m.log_tail());
    }
}

#[derive(Debug)]
enum Dir {
    Temp(tempfile::TempDir),
    Given(PathBuf),
}

/// A mosquitto process. Killed on drop.
#[derive(Debug)]
pub struct Mosquitto {
    port: u16,
    tls_port: Option<u16>,
    options: MosquittoBuilder,
    dir: Dir,
    child: Option<Child>,
    /// Its ports while it is stopped.
    held: Vec<RefusedPort>,
}

impl Mosquitto {
    /// Whether mosquitto is installed.
    pub fn available() -> bool {
        mosquitto_path().is_some()
    }

    /// A broker to configure, then [`MosquittoBuilder::start`] or [`MosquittoBuilder::require`].
    pub fn builder() -> MosquittoBuilder {
        MosquittoBuilder::default()
    }

    fn dir(&self) -> &Path {
        match &self.dir {
            Dir::Temp(t) => t.path(),
            Dir::Given(p) => p,
        }
    }

    fn write_config(&self) {
        let dir = self.dir();
        let as_root = {
            use std::os::unix::fs::MetadataExt as _;
            std::fs::metadata(dir).is_ok_and(|m| m.uid() == 0)
        };
        let persistence = match self.options.autosave_s {
            Some(s) => format!(
                "persistence true\npersistence_location {dir}/\npersistence_file mosquitto.db\n\
                 autosave_interval {s}\n",
                dir = dir.display()
            ),
            None => "persistence false\n".to_owned(),
        };
        let tls = match (&self.options.tls, self.tls_port) {
            (Some((a, required)), Some(port)) => format!(
                "listener {port} 127.0.0.1\ncafile {}\ncertfile {}\nkeyfile {}\n\
                 require_certificate {required}\n",
                a.ca.display(),
                a.server_cert.display(),
                a.server_key.display(),
            ),
            _ => String::new(),
        };
        let conf = format!(
            "listener {port} 127.0.0.1\n\
             allow_anonymous true\n\
             {persistence}\
             log_dest file {dir}/mosquitto.log\n\
             log_type error\n\
             log_type warning\n\
             log_type notice\n\
             log_timestamp true\n\
             {user}{extra}{tls}",
            port = self.port,
            dir = dir.display(),
            user = if as_root { "user root\n" } else { "" },
            extra = self.options.conf,
        );
        std::fs::write(dir.join("mosquitto.conf"), conf).expect("write mosquitto.conf");
    }

    /// Spawns and waits until it listens on every port; false if mosquitto exited (e.g. a port
    /// was taken).
    fn spawn(&mut self) -> bool {
        let path = mosquitto_path().expect("mosquitto is installed");
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir().join("stdout.log"))
            .expect("mosquitto stdout log");
        let child = Command::new(path)
            .arg("-c")
            .arg(self.dir().join("mosquitto.conf"))
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("dup"))
            .stderr(out)
            .spawn()
            .expect("spawn mosquitto");
        self.child = Some(child);
        let ports: Vec<u16> = std::iter::once(self.port).chain(self.tls_port).collect();
        match wait_listening(&mut self.child, &ports, Duration::from_secs(15)) {
            Start::Listening => {
                let early =
                    std::fs::read_to_string(self.dir().join("stdout.log")).unwrap_or_default();
                assert!(
                    !early.contains("Error"),
                    "mosquitto reported errors at start:\n{early}"
                );
                self.held.clear();
                true
            }
            Start::Exited => false,
            Start::TimedOut => {
                panic!("mosquitto did not listen within 15 s:\n{}", self.log_tail())
            }
        }
    }

    /// Its plain TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The port of its TLS listener ([`MosquittoBuilder::tls`]).
    pub fn tls_port(&self) -> Option<u16> {
        self.tls_port
    }

    /// `mqtt://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    /// SIGTERM (mosquitto saves its database on the way out) and wait for the exit.
    pub fn stop(&mut self) {
        self.signal_and_reap(Signal::SIGTERM);
    }

    /// SIGKILL and wait for the exit: every connection drops at once.
    pub fn kill(&mut self) {
        self.signal_and_reap(Signal::SIGKILL);
    }

    fn signal_and_reap(&mut self, sig: Signal) {
        if let Some(mut c) = self.child.take() {
            let _ = kill(Pid::from_raw(c.id() as i32), sig);
            let deadline = Instant::now() + Duration::from_secs(15);
            loop {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                if Instant::now() >= deadline {
                    let _ = c.kill();
                    let _ = c.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            // Keep its ports from other tests until it restarts (best effort: a port already
            // taken shows up as a failed restart).
            let ports = std::iter::once(self.port).chain(self.tls_port);
            self.held = ports.filter_map(|p| RefusedPort::hold(p).ok()).collect();
        }
    }

    /// Starts it again on the same ports with the same directory (and database, if persistent).
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "restart: stop or kill it first");
        // Its ports were held since it stopped; mosquitto binds them anyway (SO_REUSEADDR on
        // both). Retry a few times all the same.
        for _ in 0..20 {
            if self.spawn() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "mosquitto did not restart on port {}:\n{}",
            self.port,
            self.log_tail()
        );
    }

    /// The whole of mosquitto's log file.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir().join("mosquitto.log")).unwrap_or_default()
    }

    /// The end of mosquitto's log and output, for failure messages.
    pub fn log_tail(&self) -> String {
        let mut s = String::new();
        for f in ["mosquitto.log", "stdout.log"] {
            if let Ok(text) = std::fs::read_to_string(self.dir().join(f)) {
                let lines: Vec<&str> = text.lines().collect();
                let from = lines.len().saturating_sub(60);
                s.push_str(&lines[from..].join("\n"));
                s.push('\n');
            }
        }
        s
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            if std::thread::panicking()
                && let Ok(Some(exit)) = c.try_wait()
            {
                eprintln!("mosquitto had exited ({exit}) before the test ended");
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        let keep = std::env::var_os("E2E_KEEP").is_some();
        if std::thread::panicking() || keep {
            eprintln!("--- mosquitto log ---\n{}", self.log_tail());
        }
        if keep && let Dir::Temp(t) = &mut self.dir {
            let t = std::mem::replace(t, tempfile::tempdir().expect("placeholder temp dir"));
            eprintln!("keeping {}", t.keep().display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::listens_on;

    #[test]
    fn a_persistent_broker_restarts_on_its_port_and_dies_with_its_handle() {
        let Some(mut m) = Mosquitto::builder()
            .persistent(1)
            .conf("max_queued_messages 10")
            .require("a_persistent_broker_restarts_on_its_port_and_dies_with_its_handle")
        else {
            return;
        };
        let port = m.port();
        m.stop();
        assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
        m.restart();
        assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
        assert!(std::fs::metadata(m.dir().join("mosquitto.db")).is_ok());
        drop(m);
        assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
    }

    #[test]
    fn a_port_another_server_answers_on_is_not_taken_for_the_brokers() {
        let test = "a_port_another_server_answers_on_is_not_taken_for_the_brokers";
        let Some(mut m) = Mosquitto::builder().require(test) else {
            return;
        };
        // Another test's broker, as it were, already listens where this one is told to go.
        m.kill();
        m.held.clear();
        let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        m.port = other.local_addr().unwrap().port();
        m.write_config();
        assert!(
            !m.spawn(),
            "mosquitto could not bind; a connection to the port proves nothing"
        );
        // While stopped, its port is refused to others and kept from port-0 binds.
        let mut m = Mosquitto::builder().require(test).expect("installed");
        let port = m.port();
        m.stop();
        assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
        for _ in 0..2_000 {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            assert_ne!(
                l.local_addr().unwrap().port(),
                port,
                "a stopped broker's port"
            );
        }
        m.restart();
        assert!(listens_on(m.child.as_ref().unwrap().id(), port));
    }
}
