//! The real `gateway` binary as a child process on a generated config.

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use test_peers::free_port;

/// Where the gateway gets its MQTT from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MqttSetup {
    /// An external broker (mosquitto) on 127.0.0.1:port.
    External { port: u16 },
    /// The embedded broker on 127.0.0.1:port.
    Embedded { port: u16 },
    /// No MQTT (serial only).
    Disabled,
}

/// What goes into the generated config. Fields are raw TOML appended to their table.
#[derive(Debug, Clone)]
pub struct GatewaySpec {
    pub gateway_id: String,
    /// Extra top-level keys (before any table), e.g. `alarm_max_series = 5`.
    pub top_extra: String,
    pub mqtt: MqttSetup,
    /// Replaces the `mqtt://127.0.0.1:PORT` URL of [`MqttSetup::External`] (e.g. `mqtts://…`).
    pub mqtt_url: Option<String>,
    pub upstream_url: String,
    /// Extra lines of `[mqtt]`.
    pub mqtt_extra: String,
    /// Extra lines of `[buffer]`.
    pub buffer_extra: String,
    /// Extra lines of `[upstream]`.
    pub upstream_extra: String,
    /// `[[serial]]` and `[[alarm]]` tables, appended at the end.
    pub tables: String,
    /// `data_dir`; `None`: `data/` in the gateway's own temp dir.
    pub data_dir: Option<PathBuf>,
    /// Environment of the gateway process beyond `RUST_LOG` (secrets named by `*_env` keys).
    pub env: Vec<(String, String)>,
    /// `admin.token`: set through `token_env`, and sent by the harness on every admin request.
    pub admin_token: Option<String>,
}

/// The variable the harness passes [`GatewaySpec::admin_token`] in.
const ADMIN_TOKEN_ENV: &str = "E2E_ADMIN_TOKEN";

impl GatewaySpec {
    /// A gateway on `mqtt`, sending to `upstream_url`, with quick retries and a 50 ms linger.
    pub fn new(mqtt: MqttSetup, upstream_url: &str) -> GatewaySpec {
        GatewaySpec {
            gateway_id: "gw-e2e".to_owned(),
            top_extra: String::new(),
            mqtt,
            mqtt_url: None,
            upstream_url: upstream_url.to_owned(),
            mqtt_extra: String::new(),
            buffer_extra: String::new(),
            upstream_extra: String::new(),
            tables: String::new(),
            data_dir: None,
            env: Vec::new(),
            admin_token: None,
        }
    }

    fn toml(&self, data_dir: &Path, admin_port: u16) -> String {
        let mqtt = match self.mqtt {
            MqttSetup::External { port } => {
                let url = match &self.mqtt_url {
                    Some(url) => url.clone(),
                    None => format!("mqtt://127.0.0.1:{port}"),
                };
                format!("mode = \"external\"\nurl = \"{url}\"\n")
            }
            MqttSetup::Embedded { port } => {
                format!("mode = \"embedded\"\nembedded_listen = \"127.0.0.1:{port}\"\n")
            }
            MqttSetup::Disabled => "mode = \"disabled\"\n".to_owned(),
        };
        let mqtt_common = if self.mqtt == MqttSetup::Disabled {
            String::new()
        } else {
            format!(
                "client_id = \"{}\"\ntopics = [\"sensors/#\"]\nmax_inflight = 100\nreconnect_max_ms = 1000\n",
                self.gateway_id
            )
        };
        format!(
            "gateway_id = \"{id}\"\n\
             data_dir = \"{data}\"\n\
             shutdown_grace_s = 10\n\
             {top_extra}\n\
             \n[mqtt]\n{mqtt}{mqtt_common}{mqtt_extra}\n\
             \n[buffer]\n{buffer_extra}\n\
             \n[upstream]\nurl = \"{up}\"\nlinger_ms = 50\nretry_initial_ms = 50\nretry_max_ms = 500\ntimeout_ms = 5000\n{upstream_extra}\n\
             \n[admin]\nlisten = \"127.0.0.1:{admin_port}\"\n{admin_extra}\
             \n{tables}\n",
            id = self.gateway_id,
            data = data_dir.display(),
            top_extra = self.top_extra,
            mqtt_extra = self.mqtt_extra,
            buffer_extra = self.buffer_extra,
            up = self.upstream_url,
            upstream_extra = self.upstream_extra,
            tables = self.tables,
            admin_extra = match self.admin_token {
                Some(_) => format!("token_env = \"{ADMIN_TOKEN_ENV}\"\n"),
                None => String::new(),
            },
        )
    }
}

/// The `gateway` binary: `$GATEWAY_BIN`, else `target/<profile>/gateway` next to this test
/// executable, built once per test process with `cargo build -p gateway --bin gateway` (skipped
/// with `E2E_NO_BUILD=1`; a failed build fails the test).
pub fn gateway_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| workspace_bin("gateway", "GATEWAY_BIN"))
        .clone()
}

/// The binary `name` of the workspace package `name`: `$env_var` if set, else
/// `target/<profile>/<name>` next to this test executable, built with `cargo build -p <name>
/// --bin <name>` (skipped with `E2E_NO_BUILD=1` when it exists; a failed build fails the
/// test). Call once per process (callers cache it).
pub(crate) fn workspace_bin(name: &str, env_var: &str) -> PathBuf {
    if let Ok(p) = std::env::var(env_var) {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current_exe");
    // target/debug/deps/<test> → target/debug/<name>; a bench bin runs from target/<profile>.
    let exe_dir = exe.parent().expect("executable in target/<profile>");
    let profile_dir = if exe_dir.file_name().and_then(|n| n.to_str()) == Some("deps") {
        exe_dir.parent().expect("target/<profile>/deps")
    } else {
        exe_dir
    };
    let bin = profile_dir.join(name);
    if std::env::var_os("E2E_NO_BUILD").is_none() || !bin.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("workspace dir");
        let mut cmd = Command::new(cargo);
        cmd.current_dir(workspace)
            .args(["build", "--quiet", "-p", name, "--bin", name]);
        if profile_dir.file_name().and_then(|n| n.to_str()) == Some("release") {
            cmd.arg("--release");
        }
        let out = cmd.output().expect("run cargo build");
        // A failed build fails the test: an older binary would test code that is not there.
        assert!(
            out.status.success(),
            "cargo build -p {name} --bin {name} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert!(bin.exists(), "no {name} binary at {}", bin.display());
    bin
}

/// A gateway child process with its own temp dir (config, data, logs). Killed on drop.
#[derive(Debug)]
pub struct GatewayProcess {
    dir: tempfile::TempDir,
    config: PathBuf,
    admin_port: u16,
    child: Option<Child>,
    starts: u32,
    env: Vec<(String, String)>,
    http: reqwest::Client,
}

impl GatewayProcess {
    /// Writes the config and starts the gateway (not waiting for it: see [`Self::wait_ready`]).
    pub fn start(spec: &GatewaySpec) -> GatewayProcess {
        let dir = tempfile::Builder::new()
            .prefix("e2e-gateway-")
            .tempdir()
            .expect("temp dir");
        let admin_port = free_port();
        let config = dir.path().join("gateway.toml");
        let data_dir = spec
            .data_dir
            .clone()
            .unwrap_or_else(|| dir.path().join("data"));
        std::fs::write(&config, spec.toml(&data_dir, admin_port)).expect("write config");
        let mut env = spec.env.clone();
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(token) = &spec.admin_token {
            env.push((ADMIN_TOKEN_ENV.to_owned(), token.clone()));
            let value = format!("Bearer {token}").parse().expect("token header");
            headers.insert(reqwest::header::AUTHORIZATION, value);
        }
        let mut g = GatewayProcess {
            dir,
            config,
            admin_port,
            child: None,
            starts: 0,
            env,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .default_headers(headers)
                .build()
                .expect("http client"),
        };
        g.spawn();
        g
    }

    /// Starts the binary again on the same config and data dir (after a stop or kill).
    pub fn spawn(&mut self) {
        assert!(self.child.is_none(), "spawn: the gateway is still running");
        self.starts += 1;
        let log = std::fs::File::create(self.log_path(self.starts)).expect("stderr log");
        let child = Command::new(gateway_bin())
            .arg("run")
            .arg("--config")
            .arg(&self.config)
            .current_dir(self.dir.path())
            .env(
                "RUST_LOG",
                std::env::var("E2E_GATEWAY_LOG").unwrap_or_else(|_| "info".to_owned()),
            )
            // After RUST_LOG, so a spec may set its own.
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .expect("spawn gateway");
        self.child = Some(child);
    }

    fn log_path(&self, start: u32) -> PathBuf {
        self.dir.path().join(format!("stderr-{start}.log"))
    }

    /// The config file (for `gateway dead-letters list --config`).
    pub fn config_path(&self) -> &Path {
        &self.config
    }

    /// The temp dir the gateway runs in.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `http://127.0.0.1:PORT` of the admin API.
    pub fn admin_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.admin_port)
    }

    /// The last lines of the gateway's stderr (every run), for failure messages.
    pub fn stderr_tail(&self) -> String {
        let mut out = String::new();
        for start in 1..=self.starts {
            let text = std::fs::read_to_string(self.log_path(start)).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let from = lines.len().saturating_sub(40);
            out.push_str(&format!(
                "--- gateway run {start} stderr (last {} of {} lines) ---\n",
                lines.len() - from,
                lines.len()
            ));
            out.push_str(&lines[from..].join("\n"));
            out.push('\n');
        }
        out
    }

    /// The whole stderr of every run, concatenated.
    pub fn stderr_all(&self) -> String {
        (1..=self.starts)
            .map(|start| std::fs::read_to_string(self.log_path(start)).unwrap_or_default())
            .collect()
    }

    /// The admin API client of the harness (sends the admin token when one is set).
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// Panics with the stderr tail if the process has exited.
    fn assert_running(&mut self) {
        if let Some(c) = self.child.as_mut()
            && let Ok(Some(status)) = c.try_wait()
        {
            panic!(
                "the gateway exited unexpectedly ({status})\n{}",
                self.stderr_tail()
            );
        }
    }

    /// `/status`, or `None` if the admin API does not answer.
    pub async fn try_status(&self) -> Option<Value> {
        let resp = self
            .http
            .get(format!("{}/status", self.admin_url()))
            .send()
            .await
            .ok()?;
        if !resp.status().is_success() {
            return None;
        }
        serde_json::from_slice(&resp.bytes().await.ok()?).ok()
    }

    /// `/status`; panics (with the stderr tail) if it does not answer.
    pub async fn status(&self) -> Value {
        match self.try_status().await {
            Some(v) => v,
            None => panic!("/status did not answer\n{}", self.stderr_tail()),
        }
    }

    /// Waits until `/status` answers (60 s).
    pub async fn wait_ready(&mut self) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            self.assert_running();
            if let Some(v) = self.try_status().await {
                return v;
            }
            if Instant::now() >= deadline {
                panic!(
                    "the gateway's /status did not answer within 60 s\n{}",
                    self.stderr_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Polls `/status` until `check` returns `Some`; panics after `timeout` with `what`, the last
    /// status and the stderr tail.
    pub async fn wait_status<T>(
        &mut self,
        what: &str,
        timeout: Duration,
        mut check: impl FnMut(&Value) -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + timeout;
        let mut last = Value::Null;
        loop {
            self.assert_running();
            if let Some(s) = self.try_status().await {
                if let Some(v) = check(&s) {
                    return v;
                }
                last = s;
            }
            if Instant::now() >= deadline {
                panic!(
                    "timed out after {timeout:?} waiting for {what}\nlast /status: {last:#}\n{}",
                    self.stderr_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Proves the MQTT path is up (connected and subscribed): publishes a probe reading
    /// (device [`crate::workload::PROBE_DEVICE`]) to the broker on `port` every 500 ms until
    /// `/status` counts an MQTT reading. Messages published before the gateway subscribed would
    /// be lost to it, so tests call this before publishing what they check.
    pub async fn wait_mqtt_ingest(&mut self, port: u16) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut n = 0u32;
        loop {
            self.assert_running();
            n += 1;
            let probe = crate::Message {
                topic: format!("sensors/{}/ready", crate::workload::PROBE_DEVICE),
                payload: n.to_string().into_bytes(),
            };
            let opts = crate::PublisherOptions::new(port, format!("probe-{}", std::process::id()));
            let publisher = crate::Publisher::spawn(opts, vec![probe]);
            let until = Instant::now() + Duration::from_millis(500);
            while Instant::now() < until {
                if let Some(s) = self.try_status().await
                    && s["ingest"]["readings"]["mqtt"].as_u64().unwrap_or(0) > 0
                {
                    let _ = publisher.stop().await;
                    return;
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            let _ = publisher.stop().await;
            if Instant::now() >= deadline {
                panic!(
                    "no probe reading reached the gateway over MQTT within 60 s\n{}",
                    self.stderr_tail()
                );
            }
        }
    }

    /// A barrier through the whole pipeline: publishes one probe reading with a fresh value to
    /// the broker on `port` and waits until the receiver has it. Readings are forwarded in seq
    /// order, so everything the gateway stored before the probe has been delivered by then.
    pub async fn barrier(&mut self, port: u16, receiver: &crate::Upstream) {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let value = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) as f64;
        let probe = crate::Message {
            topic: format!("sensors/{}/barrier", crate::workload::PROBE_DEVICE),
            payload: format!("{value}").into_bytes(),
        };
        let opts = crate::PublisherOptions::new(port, format!("barrier-{}", std::process::id()));
        crate::Publisher::publish_all(opts, vec![probe], Duration::from_secs(30)).await;
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            self.assert_running();
            let arrived = receiver.delivered_records("readings").iter().any(|r| {
                r["device"] == crate::workload::PROBE_DEVICE
                    && r["metric"] == "barrier"
                    && r["value"].as_f64() == Some(value)
            });
            if arrived {
                return;
            }
            if Instant::now() >= deadline {
                panic!(
                    "barrier probe {value} did not reach the receiver within 90 s\n{}",
                    self.stderr_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// [`GatewayProcess::barrier`], then waits until the alarms lane is empty. Alarm events are
    /// stored with the reading that raised them, so every event of a reading before the probe
    /// has been delivered by then: a count of alarm events taken now misses no late duplicate.
    pub async fn settle(&mut self, port: u16, receiver: &crate::Upstream) {
        self.barrier(port, receiver).await;
        self.wait_status("the alarms lane to drain", Duration::from_secs(60), |s| {
            (s["buffer"]["lanes"]["alarms"]["records"].as_u64() == Some(0)).then_some(())
        })
        .await;
    }

    /// Sends SIGTERM (the graceful stop of WIRE.md §6).
    pub fn sigterm(&mut self) {
        self.signal(Signal::SIGTERM);
    }

    /// Stops the gateway with SIGTERM and checks the graceful stop exits 0 within 30 s.
    pub async fn stop(&mut self) {
        self.sigterm();
        let code = self.wait_exit(Duration::from_secs(30)).await;
        assert!(code.success(), "graceful stop exits 0, got {code}");
    }

    /// Sends SIGHUP (re-read the alarm rules from the config file).
    pub fn sighup(&mut self) {
        self.signal(Signal::SIGHUP);
    }

    /// Sends SIGKILL and reaps the process.
    pub fn sigkill(&mut self) {
        self.signal(Signal::SIGKILL);
        if let Some(mut c) = self.child.take() {
            let _ = c.wait();
        }
    }

    fn signal(&mut self, sig: Signal) {
        let c = self.child.as_ref().expect("the gateway is not running");
        kill(Pid::from_raw(c.id() as i32), sig).expect("kill(2)");
    }

    /// Waits for the process to exit (after a signal); panics after `timeout`.
    pub async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        let c = self.child.as_mut().expect("the gateway is not running");
        loop {
            if let Some(status) = c.try_wait().expect("try_wait") {
                self.child = None;
                return status;
            }
            if Instant::now() >= deadline {
                panic!(
                    "the gateway did not exit within {timeout:?}\n{}",
                    self.stderr_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Runs `gateway ARGS…` to completion (e.g. `dead-letters list --config FILE`), with the
    /// same environment as the gateway.
    pub fn run_cli(&self, args: &[&str]) -> Output {
        Command::new(gateway_bin())
            .args(args)
            .current_dir(self.dir.path())
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .output()
            .expect("run gateway CLI")
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() || std::env::var_os("E2E_KEEP").is_some() {
            eprintln!("{}", self.stderr_tail());
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
