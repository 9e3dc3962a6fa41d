//! A real mosquitto broker per test, on a free port, with persistence in a temp dir.

use crate::util::free_port;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where mosquitto is: `$MOSQUITTO`, `/usr/sbin/mosquitto`, or `mosquitto` on `PATH`.
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
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/mosquitto.conf");
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| KEYS.contains(&l.split_whitespace().next().unwrap_or("")))
        .collect();
    assert_eq!(lines.len(), KEYS.len(), "{path} sets each of {KEYS:?} once");
    lines.join("\n") + "\n"
}

/// Whether mosquitto is installed.
pub fn mosquitto_available() -> bool {
    mosquitto_path().is_some()
}

/// For tests that only make sense with mosquitto (persistent sessions outliving the gateway):
/// the broker, or `None` after saying on stderr why the test does nothing. With `CI` set a
/// missing mosquitto is a failure, not a skip.
pub fn require_mosquitto(test: &str) -> Option<Mosquitto> {
    if mosquitto_available() {
        return Some(Mosquitto::start());
    }
    test_peers::missing(
        test,
        "mosquitto is not installed (this test needs a broker that outlives the gateway)",
        "apt-get install mosquitto",
    );
    None
}

/// The broker a test publishes to: mosquitto when installed, else the gateway's embedded one.
#[derive(Debug)]
pub enum BrokerChoice {
    /// A mosquitto the test owns; the gateway connects to it (`mqtt.mode = "external"`).
    Mosquitto(Mosquitto),
    /// The gateway's embedded broker on this port (`mqtt.mode = "embedded"`).
    Embedded { port: u16 },
}

impl BrokerChoice {
    /// Mosquitto if installed; panics if not and `CI` is set; else the embedded broker (said on
    /// stderr).
    pub fn for_test(test: &str) -> BrokerChoice {
        if mosquitto_available() {
            return BrokerChoice::Mosquitto(Mosquitto::start());
        }
        test_peers::missing(
            test,
            "mosquitto is not installed; the embedded broker stands in, which acknowledges \
             devices before the gateway's fsync",
            "apt-get install mosquitto",
        );
        BrokerChoice::Embedded { port: free_port() }
    }

    /// The port devices publish to.
    pub fn port(&self) -> u16 {
        match self {
            BrokerChoice::Mosquitto(m) => m.port(),
            BrokerChoice::Embedded { port } => *port,
        }
    }

    /// How the gateway is configured for this broker.
    pub fn mqtt_setup(&self) -> crate::MqttSetup {
        match self {
            BrokerChoice::Mosquitto(m) => crate::MqttSetup::External { port: m.port() },
            BrokerChoice::Embedded { port } => crate::MqttSetup::Embedded { port: *port },
        }
    }
}

/// A mosquitto process. Killed on drop.
#[derive(Debug)]
pub struct Mosquitto {
    port: u16,
    /// Lines appended to the generated mosquitto.conf.
    extra_conf: String,
    dir: tempfile::TempDir,
    child: Option<Child>,
    starts: u32,
}

impl Mosquitto {
    /// Starts mosquitto on a free port and waits until it accepts connections.
    pub fn start() -> Mosquitto {
        Mosquitto::start_with("")
    }

    /// [`Mosquitto::start`] with `extra_conf` appended to its config (e.g. a
    /// `max_packet_size` to make it refuse large publishes).
    pub fn start_with(extra_conf: &str) -> Mosquitto {
        let dir = tempfile::Builder::new()
            .prefix("e2e-mosquitto-")
            .tempdir()
            .expect("temp dir");
        let mut m = Mosquitto {
            port: 0,
            extra_conf: extra_conf.to_owned(),
            dir,
            child: None,
            starts: 0,
        };
        // A free port can be taken between picking and binding; try a few.
        for _ in 0..5 {
            m.port = free_port();
            m.write_config();
            if m.spawn() {
                return m;
            }
        }
        panic!("mosquitto did not start:\n{}", m.log_tail());
    }

    fn write_config(&self) {
        let dir = self.dir.path();
        // Started as root, mosquitto drops to the `mosquitto` user, which cannot write our temp
        // dir (persistence and log would silently fail); stay root then.
        let as_root = {
            use std::os::unix::fs::MetadataExt as _;
            std::fs::metadata(dir).is_ok_and(|m| m.uid() == 0)
        };
        // persistence + a 1 s autosave: sessions, subscriptions and queued QoS 1 messages survive
        // a restart (all of them after SIGTERM, which saves on exit; up to 1 s is lost after
        // SIGKILL). The limits are deploy/mosquitto.conf's.
        let conf = format!(
            "listener {port} 127.0.0.1\n\
             allow_anonymous true\n\
             {limits}\
             persistence true\n\
             persistence_location {dir}/\n\
             persistence_file mosquitto.db\n\
             autosave_interval 1\n\
             set_tcp_nodelay true\n\
             log_dest file {dir}/mosquitto.log\n\
             log_type error\n\
             log_type warning\n\
             log_type notice\n\
             log_timestamp true\n\
             {user}{extra}\n",
            limits = deploy_limits(),
            user = if as_root { "user root\n" } else { "" },
            extra = self.extra_conf,
            port = self.port,
            dir = dir.display(),
        );
        std::fs::write(dir.join("mosquitto.conf"), conf).expect("write mosquitto.conf");
    }

    /// Spawns and waits for the port; false if mosquitto exited (e.g. the port was taken).
    fn spawn(&mut self) -> bool {
        let path = mosquitto_path().expect("mosquitto is installed");
        self.starts += 1;
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("stdout.log"))
            .expect("mosquitto stdout log");
        let child = Command::new(path)
            .arg("-c")
            .arg(self.dir.path().join("mosquitto.conf"))
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("dup"))
            .stderr(out)
            .spawn()
            .expect("spawn mosquitto");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(_)) = c.try_wait()
            {
                self.child = None;
                return false;
            }
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                // Errors here (an unwritable log or persistence dir) would quietly turn off
                // what the tests rely on.
                let early =
                    std::fs::read_to_string(self.dir.path().join("stdout.log")).unwrap_or_default();
                assert!(
                    !early.contains("Error"),
                    "mosquitto reported errors at start:\n{early}"
                );
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("mosquitto did not listen within 15 s:\n{}", self.log_tail());
    }

    /// Its TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `mqtt://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    /// SIGTERM (mosquitto saves its database on the way out) and wait for the exit.
    pub fn stop(&mut self) {
        self.signal_and_reap(Signal::SIGTERM);
    }

    /// SIGKILL and wait for the exit.
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
        }
    }

    /// Starts it again on the same port with the same persistence directory.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "restart: stop or kill it first");
        // The port was just released; mosquitto sets SO_REUSEADDR, but retry a few times.
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
        std::fs::read_to_string(self.dir.path().join("mosquitto.log")).unwrap_or_default()
    }

    /// The end of mosquitto's log, for failure messages.
    pub fn log_tail(&self) -> String {
        let mut s = String::new();
        for f in ["mosquitto.log", "stdout.log"] {
            if let Ok(text) = std::fs::read_to_string(self.dir.path().join(f)) {
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
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() || std::env::var_os("E2E_KEEP").is_some() {
            eprintln!("--- mosquitto log ---\n{}", self.log_tail());
        }
        if std::env::var_os("E2E_KEEP").is_some() {
            let dir = std::mem::replace(
                &mut self.dir,
                tempfile::tempdir().expect("placeholder temp dir"),
            );
            eprintln!("keeping {}", dir.keep().display());
        }
    }
}
