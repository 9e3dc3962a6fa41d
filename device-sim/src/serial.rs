//! Serial devices: WIRE.md §2 lines written to a tty (or any file), or to a pty pair this module
//! creates, so a gateway can open the slave side as if it were `/dev/ttyUSB0`.
//!
//! One port carries every simulated device, interleaved in virtual-time order (ties by device
//! number), so the byte stream is a pure function of the settings and the seed. Writes are paced
//! by the per-device rate and by the baud rate (10 bits per byte, as for 8N1), unless `fast`.
//!
//! Noise (`noise` fraction per line): half the time a line of binary noise is inserted before the
//! reading, half the time the reading's own line is corrupted with a non-UTF-8 byte (which also
//! breaks its `*HH` checksum) and that reading is not counted as sent.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::{Duration, Instant};

use nix::sys::termios::{self, SetArg};
use rand::Rng;

use crate::device::{Action, DeviceConfig, DeviceSim};
use crate::metric::Metric;
use crate::payload::{LineForm, corrupt_line, encode_lines, noise_line, with_checksum};
use crate::scenario::Scenario;
use crate::summary::{RunInfo, SentRecord, Stats, Summary};

/// A pseudo-terminal pair. Lines go into the master; a gateway opens [`Pty::path`].
///
/// The slave stays open for as long as this value lives, so data written before the gateway
/// opens the path waits in the kernel's buffer instead of being discarded.
#[derive(Debug)]
pub struct Pty {
    master: File,
    slave: OwnedFd,
    path: PathBuf,
}

impl Pty {
    /// Path of the slave side (`/dev/pts/N`).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A handle to write lines into.
    pub fn writer(&self) -> io::Result<File> {
        self.master.try_clone()
    }

    /// A handle on the master side, to read what the gateway writes and answer it.
    pub fn master(&self) -> io::Result<File> {
        self.master.try_clone()
    }

    /// A handle that reads what the gateway would read (for tests).
    pub fn slave_reader(&self) -> io::Result<File> {
        Ok(File::from(self.slave.try_clone()?))
    }
}

/// Create a pty pair in raw mode (no echo, no line editing, no CR/LF translation).
pub fn open_pty() -> io::Result<Pty> {
    let pair = nix::pty::openpty(None, None).map_err(io::Error::from)?;
    let mut t = termios::tcgetattr(pair.slave.as_fd()).map_err(io::Error::from)?;
    termios::cfmakeraw(&mut t);
    termios::tcsetattr(pair.slave.as_fd(), SetArg::TCSANOW, &t).map_err(io::Error::from)?;
    let path = nix::unistd::ttyname(pair.slave.as_fd()).map_err(io::Error::from)?;
    Ok(Pty {
        master: File::from(pair.master),
        slave: pair.slave,
        path,
    })
}

/// The termios speed constant for a baud rate, if it is a standard one.
pub fn baud_rate(baud: u32) -> Option<termios::BaudRate> {
    use termios::BaudRate as B;
    Some(match baud {
        1200 => B::B1200,
        2400 => B::B2400,
        4800 => B::B4800,
        9600 => B::B9600,
        19200 => B::B19200,
        38400 => B::B38400,
        57600 => B::B57600,
        115_200 => B::B115200,
        230_400 => B::B230400,
        460_800 => B::B460800,
        921_600 => B::B921600,
        _ => return None,
    })
}

/// Open a tty (or any file) for writing. A tty is put in raw mode at `baud`; anything else (a
/// plain file, a FIFO) is written as it is, which is handy for recording a run.
pub fn open_tty(path: &Path, baud: u32) -> io::Result<File> {
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create(!path.starts_with("/dev"))
        .truncate(!path.starts_with("/dev"))
        .open(path)?;
    if nix::unistd::isatty(f.as_fd()).unwrap_or(false) {
        set_raw(&f, baud)?;
    }
    Ok(f)
}

/// Put a tty in raw mode (no echo, no line editing, no translation) at `baud`.
pub fn set_raw(tty: &File, baud: u32) -> io::Result<()> {
    let speed = baud_rate(baud).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("unsupported baud rate {baud}"),
        )
    })?;
    let mut t = termios::tcgetattr(tty.as_fd()).map_err(io::Error::from)?;
    termios::cfmakeraw(&mut t);
    termios::cfsetspeed(&mut t, speed).map_err(io::Error::from)?;
    termios::tcsetattr(tty.as_fd(), SetArg::TCSANOW, &t).map_err(io::Error::from)
}

/// Settings of a serial run.
#[derive(Debug, Clone)]
pub struct SerialConfig {
    /// Number of devices sharing the port.
    pub devices: u32,
    /// 1-based number of the first device.
    pub first_device: u32,
    /// Ticks per second per device.
    pub rate_hz: f64,
    /// Ticks per device, then stop.
    pub count: Option<u64>,
    /// Stop after this long (wall clock).
    pub duration: Option<Duration>,
    /// Line form.
    pub form: LineForm,
    /// Append `*HH` to every line.
    pub checksum: bool,
    /// Fraction of lines with noise, 0..=1.
    pub noise: f64,
    /// End lines with `\r\n` instead of `\n`.
    pub crlf: bool,
    /// Baud rate (for pacing, and set on a real tty).
    pub baud: u32,
    /// Write as fast as possible, ignoring rate and baud.
    pub fast: bool,
    /// Metrics per device.
    pub metrics: Vec<Metric>,
    /// Scenarios (`reconnect` means silence on serial).
    pub scenarios: Vec<Scenario>,
    /// Seed.
    pub seed: u64,
    /// Timestamp of virtual time zero; `None` takes the wall clock.
    pub start_ts_ms: Option<i64>,
    /// Keep every reading sent in the report.
    pub record_sent: bool,
    /// Progress line on stderr every second.
    pub progress: bool,
}

impl Default for SerialConfig {
    fn default() -> Self {
        SerialConfig {
            devices: 1,
            first_device: 1,
            rate_hz: 1.0,
            count: None,
            duration: None,
            form: LineForm::Csv,
            checksum: false,
            noise: 0.0,
            crlf: false,
            baud: 115_200,
            fast: false,
            metrics: Metric::DEFAULT.to_vec(),
            scenarios: Vec::new(),
            seed: 0,
            start_ts_ms: None,
            record_sent: false,
            progress: false,
        }
    }
}

/// What a serial run returns.
#[derive(Debug, Clone)]
pub struct SerialReport {
    /// Counts (`acked` is always 0 on serial).
    pub summary: Summary,
    /// Every reading sent, in line order (empty unless `record_sent`).
    pub records: Vec<SentRecord>,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Sleep until `until`, waking every 50 ms to check `stop`. Returns false if stopped.
fn sleep_until(until: Instant, stop: &AtomicBool) -> bool {
    loop {
        if stop.load(Relaxed) {
            return false;
        }
        let now = Instant::now();
        if now >= until {
            return true;
        }
        std::thread::sleep((until - now).min(Duration::from_millis(50)));
    }
}

/// A malformed line for the `garbage` scenario (well-framed, bad content).
fn garbage_line(rng: &mut impl Rng, device: &str, metric: Metric, ts: i64) -> String {
    match rng.random_range(0..4) {
        0 => format!("{device},{},NaN,{ts}", metric.name()),
        1 => format!("{device},{}", metric.name()),
        2 => format!(
            r#"{{"device":"{device}","metric":"{}","value":"#,
            metric.name()
        ),
        _ => format!("{device},{},12..5,{ts}", metric.name()),
    }
}

/// Write lines for every device until `count`, `duration` or `stop`; blocking.
pub fn run_serial<W: Write>(
    cfg: &SerialConfig,
    out: &mut W,
    stop: &AtomicBool,
) -> io::Result<SerialReport> {
    if cfg.devices == 0 || !(cfg.rate_hz.is_finite() && cfg.rate_hz > 0.0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "devices must be at least 1 and rate_hz positive",
        ));
    }
    let started = Instant::now();
    let start_ts_ms = cfg.start_ts_ms.unwrap_or_else(now_ms);
    let stats = Stats::new(cfg.first_device, cfg.devices, cfg.scenarios.len());
    let scenarios = Arc::new(cfg.scenarios.clone());
    let mut sims: Vec<DeviceSim> = (0..cfg.devices)
        .map(|slot| {
            DeviceSim::new(DeviceConfig {
                index: cfg.first_device + slot,
                rate_hz: cfg.rate_hz,
                metrics: cfg.metrics.clone(),
                seed: cfg.seed,
                start_ts_ms,
                scenarios: Arc::clone(&scenarios),
            })
        })
        .collect();
    // Noise decisions come from their own stream so `--noise` does not change the readings.
    let mut noise_rng = <rand::rngs::SmallRng as rand::SeedableRng>::seed_from_u64(
        crate::signal::derive_seed(cfg.seed, 0, 99),
    );
    let terminator: &[u8] = if cfg.crlf { b"\r\n" } else { b"\n" };
    let bytes_per_s = f64::from(cfg.baud.max(10)) / 10.0;
    let mut wire_free_at = Instant::now();
    let mut last_progress = Instant::now();
    let mut records = Vec::new();
    let mut buf = Vec::with_capacity(1200);

    let mut write_line =
        |out: &mut W, line: &[u8], wire_free_at: &mut Instant| -> io::Result<bool> {
            if !cfg.fast && !sleep_until(*wire_free_at, stop) {
                return Ok(false);
            }
            buf.clear();
            buf.extend_from_slice(line);
            buf.extend_from_slice(terminator);
            out.write_all(&buf)?;
            let on_wire = Duration::from_secs_f64(buf.len() as f64 / bytes_per_s);
            *wire_free_at = (*wire_free_at).max(Instant::now()) + on_wire;
            Ok(true)
        };

    'run: loop {
        if stop.load(Relaxed) || cfg.duration.is_some_and(|d| started.elapsed() >= d) {
            break;
        }
        // The device whose next tick is due first; ties go to the lower number.
        let Some(slot) = (0..sims.len())
            .filter(|&s| cfg.count.is_none_or(|c| sims[s].ticks() < c))
            .min_by(|&a, &b| sims[a].next_due_ms().total_cmp(&sims[b].next_due_ms()))
        else {
            break;
        };
        if !cfg.fast {
            let due = started + Duration::from_secs_f64(sims[slot].next_due_ms() / 1000.0);
            if !sleep_until(due, stop) {
                break;
            }
        }
        let sim = &mut sims[slot];
        let tick = sim.next_tick();
        let dev = stats.device(slot);
        for &i in &tick.affected {
            stats.scenarios[i].affected.fetch_add(1, Relaxed);
        }
        if let Some((i, _)) = tick.reconnect {
            stats.scenarios[i].reconnects.fetch_add(1, Relaxed);
        }
        match tick.action {
            Action::Skip { scenario } => {
                dev.skipped_ticks.fetch_add(1, Relaxed);
                stats.scenarios[scenario]
                    .skipped_ticks
                    .fetch_add(1, Relaxed);
            }
            Action::Garbage { scenario } => {
                let metric = tick.readings.first().map_or(Metric::Temperature, |r| r.0);
                let id = sim.id().to_owned();
                let mut line = garbage_line(sim.fault_rng(), &id, metric, tick.ts_ms);
                if cfg.checksum {
                    line = with_checksum(&line);
                }
                stats.messages_sent.fetch_add(1, Relaxed);
                if !write_line(out, line.as_bytes(), &mut wire_free_at)? {
                    break 'run;
                }
                stats.messages_written.fetch_add(1, Relaxed);
                dev.garbage.fetch_add(1, Relaxed);
                stats.scenarios[scenario].garbage.fetch_add(1, Relaxed);
            }
            Action::Send => {
                let form = cfg.form.resolve(sim.form_rng());
                for line in encode_lines(form, sim.id(), tick.ts_ms, &tick.readings, cfg.checksum) {
                    let mut bytes = line.bytes;
                    let mut counts = true;
                    if cfg.noise > 0.0 && noise_rng.random_bool(cfg.noise.clamp(0.0, 1.0)) {
                        if noise_rng.random_bool(0.5) {
                            let noise = noise_line(&mut noise_rng);
                            if !write_line(out, &noise, &mut wire_free_at)? {
                                break 'run;
                            }
                            stats.noise_lines.fetch_add(1, Relaxed);
                        } else {
                            bytes = corrupt_line(&mut noise_rng, &bytes);
                            counts = false;
                        }
                    }
                    if counts {
                        for m in &line.metrics {
                            dev.metrics[m.index()].sent.fetch_add(1, Relaxed);
                        }
                    }
                    stats.messages_sent.fetch_add(1, Relaxed);
                    if !write_line(out, &bytes, &mut wire_free_at)? {
                        break 'run;
                    }
                    stats.messages_written.fetch_add(1, Relaxed);
                    if !counts {
                        stats.noise_lines.fetch_add(1, Relaxed);
                        continue;
                    }
                    for m in &line.metrics {
                        dev.metrics[m.index()].written.fetch_add(1, Relaxed);
                    }
                    if cfg.record_sent {
                        for &(m, v) in tick.readings.iter().filter(|r| line.metrics.contains(&r.0))
                        {
                            records.push(SentRecord {
                                device: sim.id().to_owned(),
                                metric: m.name().to_owned(),
                                value: v,
                                ts: Some(tick.ts_ms),
                                form: line.form.name().to_owned(),
                                topic: None,
                            });
                        }
                    }
                }
            }
        }
        if cfg.progress && last_progress.elapsed() >= Duration::from_secs(1) {
            last_progress = Instant::now();
            eprint!(
                "\r{}\x1b[K",
                stats.progress_line(started.elapsed(), &scenarios)
            );
        }
    }
    out.flush()?;
    if cfg.progress {
        eprintln!();
    }
    let summary = stats.summarize(
        RunInfo {
            transport: "serial".to_owned(),
            form: cfg.form.name().to_owned(),
            qos: None,
            seed: cfg.seed,
            metrics: cfg.metrics.clone(),
            started_ts_ms: start_ts_ms,
        },
        &scenarios,
        started.elapsed(),
    );
    Ok(SerialReport { summary, records })
}
