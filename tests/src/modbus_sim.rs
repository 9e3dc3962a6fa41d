//! `device-sim modbus` as a peer of the gateway's Modbus tests: started on TCP port 0 or on a
//! new pty, its address read from its first stdout line, stopped with SIGTERM and its
//! `--summary-json` read back (see `/work/wt/modbus-interface.md` of the simulator: exact
//! counts per unit).

use crate::fleet::device_sim_bin;
use serde::Deserialize;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where the simulator serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModbusSimAt {
    /// `--tcp 127.0.0.1:0`: the address it bound.
    Tcp(String),
    /// `--pty`: the pty's slave path, for the gateway's `rtu://` url.
    Pty(PathBuf),
}

impl ModbusSimAt {
    /// The gateway's `url` for it.
    pub fn url(&self) -> String {
        match self {
            ModbusSimAt::Tcp(addr) => format!("tcp://{addr}"),
            ModbusSimAt::Pty(path) => format!("rtu://{}", path.display()),
        }
    }
}

/// One unit's counts in the summary.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
pub struct UnitCounts {
    pub unit: u8,
    pub requests: u64,
    pub answered: u64,
    pub exceptions: u64,
    pub unanswered: u64,
    pub corrupted: u64,
}

#[derive(Debug, Deserialize)]
struct Summary {
    units: Vec<UnitCounts>,
}

/// A running `device-sim modbus`; killed on drop.
#[derive(Debug)]
pub struct ModbusSim {
    dir: tempfile::TempDir,
    child: Option<Child>,
    /// Held open so that nothing it prints later meets a closed pipe.
    _stdout: BufReader<std::process::ChildStdout>,
    pub at: ModbusSimAt,
}

impl ModbusSim {
    /// Starts `device-sim modbus --tcp 127.0.0.1:0 ARGS…`.
    pub fn tcp(args: &[&str]) -> ModbusSim {
        Self::start(&["--tcp", "127.0.0.1:0"], args)
    }

    /// Starts `device-sim modbus --pty ARGS…` (RTU).
    pub fn pty(args: &[&str]) -> ModbusSim {
        Self::start(&["--pty"], args)
    }

    fn start(transport: &[&str], args: &[&str]) -> ModbusSim {
        let dir = tempfile::Builder::new()
            .prefix("e2e-modbus-sim-")
            .tempdir()
            .expect("temp dir");
        let log = std::fs::File::create(dir.path().join("stderr.log")).expect("stderr log");
        let summary = dir.path().join("summary.json").display().to_string();
        let mut child = Command::new(device_sim_bin())
            .arg("modbus")
            .args(transport)
            .args(args)
            .args(["--summary-json", &summary, "--quiet"])
            .env("RUST_LOG", "device_sim=warn,warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("spawn device-sim modbus");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        let mut stdout = BufReader::new(stdout);
        stdout
            .read_line(&mut line)
            .expect("device-sim modbus prints where it serves");
        let at = match line.trim().split_once(' ') {
            Some(("TCP", addr)) => ModbusSimAt::Tcp(addr.to_owned()),
            Some(("PTY", path)) => ModbusSimAt::Pty(PathBuf::from(path)),
            _ => {
                let _ = child.kill();
                panic!(
                    "device-sim modbus said {line:?}\n{}",
                    std::fs::read_to_string(dir.path().join("stderr.log")).unwrap_or_default()
                );
            }
        };
        ModbusSim {
            dir,
            child: Some(child),
            _stdout: stdout,
            at,
        }
    }

    /// Stops it with SIGTERM and returns its summary, by unit.
    pub async fn stop(mut self) -> Vec<UnitCounts> {
        let mut child = self.child.take().expect("running");
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(s) = child.try_wait().expect("try_wait") {
                break s;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                panic!("device-sim modbus did not stop on SIGTERM");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let log = std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default();
        assert!(
            status.success(),
            "device-sim modbus failed ({status})\n{log}"
        );
        let text = std::fs::read_to_string(self.dir.path().join("summary.json"))
            .unwrap_or_else(|e| panic!("summary: {e}\n{log}"));
        let summary: Summary = serde_json::from_str(&text).expect("summary JSON");
        summary.units
    }
}

impl Drop for ModbusSim {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
