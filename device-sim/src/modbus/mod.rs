//! Simulated Modbus slaves: units fed by the same drivers and signal models as the MQTT and
//! serial devices, served over Modbus TCP or Modbus RTU (a pty or a serial port), with faults a
//! library server would not produce.
//!
//! ```text
//! signal → bus::SimBus → drivers   (every unit, sampled at rate_hz)
//!   → map::input_registers          (live values; holding, coils, discretes are fixed patterns)
//!   → slave::Slaves::handle         (request → reply; faults; exact counts)
//!   → frame (RTU CRC / TCP MBAP)    → server::serve_rtu | server::serve_tcp
//! ```
//!
//! The interface (command line, register map, faults, summary) is written down in the crate's
//! README, section "Modbus".
//!
//! # Guarantees
//!
//! - **A real slave's answers.** Functions 01–04 over the map in [`map`]; exception 01 for any
//!   other function code, 02 for a range outside the map, 03 for a quantity outside 1..=125
//!   registers or 1..=2000 bits (or a request of the wrong length). TCP: a unit id not served
//!   gets exception 0x0B; RTU: no answer, as on a bus.
//! - **Faults as specified.** `silent`, `exception:code=C` and `corrupt:every=K` apply to the
//!   requests received inside their windows (see [`fault`]).
//! - **Exact counts.** Every request for a served unit is counted once in `requests`, and in
//!   exactly one of `answered`, `exceptions` or `unanswered`; `corrupted` counts the answers among
//!   `answered` that were spoiled. So `requests = answered + exceptions + unanswered`.
//! - **Hostile input is survived.** A malformed request never panics, never stalls another TCP
//!   connection, and never grows memory: each connection holds one frame's buffer, at most
//!   [`server::MAX_CONNECTIONS`] are served at once, and the RTU decoder is bounded.
//! - **Determinism of values.** The readings of unit U depend on `--seed`, U and the sample
//!   number only, as for `device-sim mqtt` device U.
//!
//! # Not promised
//!
//! - An answer decided at the moment of a stop, that the peer no longer takes, is counted but
//!   never arrives.
//! - RTU timing is approximated: answers are delayed by their length at `baud`; the standard's
//!   inter-character limits are not enforced (see [`frame::RtuDecoder`]).

pub mod fault;
pub mod frame;
pub mod map;
pub mod server;
pub mod slave;

use std::future::Future;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use fault::{Fault, FaultError, FaultKind, UnitSelector};
pub use slave::UnitCounts;

use crate::serial::{Pty, open_pty};
use server::{Line, Shared};
use slave::{Slaves, UnitsConfig};

/// The highest unit id a slave may have (248–255 are reserved).
pub const MAX_UNIT: u8 = 247;
/// The highest sampling rate: every sample reads three chips through their drivers per unit.
pub const MAX_RATE_HZ: f64 = 1000.0;

/// Settings of a Modbus run.
#[derive(Debug, Clone)]
pub struct ModbusConfig {
    /// First unit id (default 1).
    pub first_unit: u8,
    /// Number of units (default 1).
    pub devices: u8,
    /// Reading sets per second per unit (default 1).
    pub rate_hz: f64,
    /// Stop after this long; `None` runs until the shutdown future.
    pub duration: Option<Duration>,
    /// Seed of the signal models.
    pub seed: u64,
    /// RTU: paces the answers (default 9600).
    pub baud: u32,
    /// Faults, in the order given.
    pub faults: Vec<Fault>,
    /// Print a progress line on stderr every second.
    pub progress: bool,
}

impl Default for ModbusConfig {
    fn default() -> Self {
        ModbusConfig {
            first_unit: 1,
            devices: 1,
            rate_hz: 1.0,
            duration: None,
            seed: 1,
            baud: 9600,
            faults: Vec::new(),
            progress: false,
        }
    }
}

impl ModbusConfig {
    /// Check the settings; the error names the option.
    pub fn validate(&self) -> Result<(), ModbusError> {
        let last = u16::from(self.first_unit) + u16::from(self.devices);
        if self.first_unit == 0 || self.devices == 0 || last - 1 > u16::from(MAX_UNIT) {
            return Err(ModbusError::Units {
                first_unit: self.first_unit,
                devices: self.devices,
            });
        }
        if !(self.rate_hz.is_finite() && self.rate_hz > 0.0 && self.rate_hz <= MAX_RATE_HZ) {
            return Err(ModbusError::Rate(self.rate_hz));
        }
        if self.baud == 0 {
            return Err(ModbusError::Baud);
        }
        Ok(())
    }
}

/// Why a Modbus run could not start or went on.
#[derive(Debug, thiserror::Error)]
pub enum ModbusError {
    /// `--first-unit` and `--devices` leave 1..=247.
    #[error("--first-unit {first_unit} with --devices {devices}: unit ids must be within 1..=247")]
    Units {
        /// First unit id.
        first_unit: u8,
        /// Number of units.
        devices: u8,
    },
    /// `--rate-hz` is not within (0, 1000].
    #[error("--rate-hz {0}: must be above 0 and at most 1000")]
    Rate(f64),
    /// `--baud` is 0.
    #[error("--baud must be above 0")]
    Baud,
    /// The TCP address cannot be bound.
    #[error("binding Modbus TCP on {addr}: {source}")]
    Bind {
        /// Address as given.
        addr: String,
        /// The socket error.
        source: std::io::Error,
    },
    /// The pty pair cannot be made.
    #[error("creating a pty: {0}")]
    Pty(std::io::Error),
    /// The serial port cannot be opened or set up.
    #[error("opening {path}: {source}")]
    Tty {
        /// Port path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// Reading or writing the RTU line failed while serving.
    #[error("on the RTU line: {0}")]
    Line(std::io::Error),
}

/// Where the slaves listen.
#[derive(Debug)]
pub enum Transport {
    /// Modbus TCP.
    Tcp(TcpListener),
    /// Modbus RTU on a serial line.
    Rtu {
        /// The line.
        line: Line,
        /// The pty the line is the master of, kept open for the whole run so bytes the gateway
        /// writes before the simulator reads wait in the kernel.
        pty: Option<Pty>,
        /// The path a gateway opens.
        path: PathBuf,
    },
}

impl Transport {
    /// Listen for Modbus TCP on `addr` (`127.0.0.1:0` picks a free port).
    pub async fn tcp(addr: &str) -> Result<Transport, ModbusError> {
        TcpListener::bind(addr)
            .await
            .map(Transport::Tcp)
            .map_err(|source| ModbusError::Bind {
                addr: addr.to_owned(),
                source,
            })
    }

    /// Modbus RTU on a new pty; the gateway opens [`Transport::path`]. Needs a Tokio runtime.
    pub fn pty() -> Result<Transport, ModbusError> {
        let pty = open_pty().map_err(ModbusError::Pty)?;
        let line = pty.master().and_then(Line::new).map_err(ModbusError::Pty)?;
        Ok(Transport::Rtu {
            line,
            path: pty.path().to_owned(),
            pty: Some(pty),
        })
    }

    /// Modbus RTU on the serial port `path` at `baud`. Needs a Tokio runtime.
    pub fn tty(path: &Path, baud: u32) -> Result<Transport, ModbusError> {
        let line = Line::open_tty(path, baud).map_err(|source| ModbusError::Tty {
            path: path.to_owned(),
            source,
        })?;
        Ok(Transport::Rtu {
            line,
            pty: None,
            path: path.to_owned(),
        })
    }

    /// The RTU line's path (the pty slave or the port); `None` for TCP.
    pub fn path(&self) -> Option<&Path> {
        match self {
            Transport::Tcp(_) => None,
            Transport::Rtu { path, .. } => Some(path),
        }
    }

    /// The line printed on stdout once serving: `TCP 127.0.0.1:PORT`, `PTY /dev/pts/N` or
    /// `TTY /dev/ttyUSB0`.
    pub fn announcement(&self) -> String {
        match self {
            Transport::Tcp(l) => match l.local_addr() {
                Ok(addr) => format!("TCP {addr}"),
                Err(_) => "TCP ?".to_owned(),
            },
            Transport::Rtu {
                pty: Some(_), path, ..
            } => format!("PTY {}", path.display()),
            Transport::Rtu { path, .. } => format!("TTY {}", path.display()),
        }
    }
}

/// The end-of-run summary (`--summary-json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModbusSummary {
    /// Counts per unit, in unit order.
    pub units: Vec<UnitCounts>,
    /// `tcp` or `rtu`.
    pub transport: String,
    /// Requests for unit ids not served (TCP: answered with exception 0x0B; RTU: ignored).
    pub other_unit_requests: u64,
    /// RTU: bytes dropped while resynchronising (garbage, bad CRC, frames cut short).
    pub discarded_bytes: u64,
    /// TCP: connections served.
    pub connections: u64,
    /// TCP: connections closed at once because the limit of open connections was reached.
    pub refused_connections: u64,
    /// TCP: connections closed on an MBAP header no Modbus peer sends.
    pub bad_headers: u64,
    /// Seconds the run lasted.
    pub elapsed_s: f64,
}

impl ModbusSummary {
    /// A few human-readable lines for stderr.
    pub fn human(&self) -> String {
        let mut s = format!(
            "modbus {}: {:.1}s, {} requests for other units, {} bytes discarded, {} connections \
             ({} refused, {} bad headers)\n",
            self.transport,
            self.elapsed_s,
            self.other_unit_requests,
            self.discarded_bytes,
            self.connections,
            self.refused_connections,
            self.bad_headers
        );
        for u in &self.units {
            s.push_str(&format!(
                "  unit {:>3}: requests {}, answered {}, exceptions {}, unanswered {}, \
                 corrupted {}\n",
                u.unit, u.requests, u.answered, u.exceptions, u.unanswered, u.corrupted
            ));
        }
        s
    }

    /// Write as JSON to `path`.
    pub fn write_json(&self, path: &Path) -> std::io::Result<()> {
        let mut f = std::fs::File::create(path)?;
        serde_json::to_writer_pretty(&mut f, self)?;
        f.write_all(b"\n")
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Serve the units of `cfg` on `transport` until `shutdown` completes or `cfg.duration` passes,
/// then return the counts.
pub async fn run_modbus(
    cfg: &ModbusConfig,
    transport: Transport,
    shutdown: impl Future<Output = ()>,
) -> Result<ModbusSummary, ModbusError> {
    cfg.validate()?;
    let started = Instant::now();
    let shared = Arc::new(Shared {
        slaves: Mutex::new(Slaves::new(&UnitsConfig {
            first_unit: cfg.first_unit,
            devices: cfg.devices,
            rate_hz: cfg.rate_hz,
            seed: cfg.seed,
            start_ts_ms: now_ms(),
            faults: cfg.faults.clone(),
        })),
        line: server::LineCounts::default(),
        started,
    });
    let cancel = CancellationToken::new();
    let tracker = TaskTracker::new();
    tracker.spawn(server::sample(
        Arc::clone(&shared),
        Duration::from_secs_f64(1.0 / cfg.rate_hz),
        cancel.clone(),
    ));
    if cfg.progress {
        tracker.spawn(progress(Arc::clone(&shared), cancel.clone()));
    }
    let kind;
    // Kept until the end: closing the pty would hang up the gateway's side.
    let mut _pty = None;
    let mut rtu = match transport {
        Transport::Tcp(listener) => {
            kind = "tcp";
            tracker.spawn(server::serve_tcp(
                listener,
                Arc::clone(&shared),
                tracker.clone(),
                cancel.clone(),
            ));
            None
        }
        Transport::Rtu { line, pty, .. } => {
            kind = "rtu";
            _pty = pty;
            Some(tracker.spawn(server::serve_rtu(
                line,
                cfg.baud,
                Arc::clone(&shared),
                cancel.clone(),
            )))
        }
    };
    let deadline = async {
        match cfg.duration {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    let line_failed = async {
        match rtu.as_mut() {
            Some(task) => task.await,
            None => std::future::pending().await,
        }
    };
    let mut result = Ok(());
    tokio::select! {
        _ = shutdown => {}
        _ = deadline => {}
        ended = line_failed => {
            result = match ended {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(ModbusError::Line(e)),
                Err(join) => Err(ModbusError::Line(std::io::Error::other(join))),
            };
        }
    }
    cancel.cancel();
    tracker.close();
    tracker.wait().await;
    result?;
    let slaves = shared.slaves.lock().unwrap_or_else(|e| e.into_inner());
    let line = &shared.line;
    Ok(ModbusSummary {
        units: slaves.counts(),
        transport: kind.to_owned(),
        other_unit_requests: slaves.other_unit_requests(),
        discarded_bytes: line.discarded_bytes.load(Relaxed),
        connections: line.connections.load(Relaxed),
        refused_connections: line.refused_connections.load(Relaxed),
        bad_headers: line.bad_headers.load(Relaxed),
        elapsed_s: started.elapsed().as_secs_f64(),
    })
}

/// A progress line on stderr every second: totals over the units.
async fn progress(shared: Arc<Shared>, cancel: CancellationToken) {
    let mut ticks = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = ticks.tick() => {}
        }
        let counts = shared
            .slaves
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .counts();
        let sum = |f: fn(&UnitCounts) -> u64| counts.iter().map(f).sum::<u64>();
        eprint!(
            "\r{:>6.1}s  requests {}  answered {}  exceptions {}  unanswered {}  corrupted {}\x1b[K",
            shared.started.elapsed().as_secs_f64(),
            sum(|c| c.requests),
            sum(|c| c.answered),
            sum(|c| c.exceptions),
            sum(|c| c.unanswered),
            sum(|c| c.corrupted),
        );
    }
    eprintln!();
}
