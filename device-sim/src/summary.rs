//! Counting what was sent and acknowledged, the end-of-run summary, the `--record-sent` JSONL and
//! the live progress line.
//!
//! Counts are per device and metric, in readings (a multi-metric message carries several):
//!
//! - `sent`: handed to the transport (MQTT client queue, or serial write started). Garbage and
//!   noise are never counted here; they have their own counters.
//! - `written`: reached the socket or the tty.
//! - `acked`: MQTT QoS 1 only, the broker's PUBACK arrived. Exact: every PUBACK is matched to the
//!   message that carried its packet id. Always 0 at QoS 0 and for serial.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::device::device_id;
use crate::metric::Metric;
use crate::scenario::Scenario;

/// Live counters of one device and metric.
#[derive(Debug, Default)]
pub struct MetricCounters {
    /// Readings handed to the transport.
    pub sent: AtomicU64,
    /// Readings written to the socket or tty.
    pub written: AtomicU64,
    /// Readings acknowledged by the broker (QoS 1).
    pub acked: AtomicU64,
}

/// Live counters of one device.
#[derive(Debug, Default)]
pub struct DeviceCounters {
    /// Indexed by [`Metric::index`].
    pub metrics: [MetricCounters; 4],
    /// Ticks not sent (dropout, reconnect).
    pub skipped_ticks: AtomicU64,
    /// Malformed messages or lines sent instead of readings.
    pub garbage: AtomicU64,
}

/// Live counters of one scenario.
#[derive(Debug, Default)]
pub struct ScenarioCounters {
    /// Readings whose value the scenario changed, or ticks sent at burst rate.
    pub affected: AtomicU64,
    /// Ticks not sent.
    pub skipped_ticks: AtomicU64,
    /// Malformed messages or lines sent.
    pub garbage: AtomicU64,
    /// Connections closed and reopened.
    pub reconnects: AtomicU64,
}

/// All live counters of a run; shared by every task, updated with relaxed atomics.
#[derive(Debug)]
pub struct Stats {
    /// Per device, index 0 is `dev-0001` (or the first device of the run).
    pub devices: Vec<DeviceCounters>,
    /// 1-based number of the first device.
    pub first_device: u32,
    /// Per scenario, in the order given.
    pub scenarios: Vec<ScenarioCounters>,
    /// Messages (or lines) handed to the transport, garbage included.
    pub messages_sent: AtomicU64,
    /// Messages written to the socket or tty.
    pub messages_written: AtomicU64,
    /// Messages acknowledged (QoS 1).
    pub messages_acked: AtomicU64,
    /// Garbage messages acknowledged by the broker.
    pub garbage_acked: AtomicU64,
    /// Standalone noise lines (serial).
    pub noise_lines: AtomicU64,
    /// Publishes or writes that failed.
    pub errors: AtomicU64,
    /// MQTT connection errors seen by the event loops.
    pub connection_errors: AtomicU64,
    /// Successful MQTT connections (CONNACK), reconnections included.
    pub connects: AtomicU64,
    /// Messages re-queued after a connection was lost before their PUBACK.
    pub republished: AtomicU64,
}

impl Stats {
    /// Counters for `devices` devices starting at `first_device` and `scenarios` scenarios.
    pub fn new(first_device: u32, devices: u32, scenarios: usize) -> Stats {
        Stats {
            devices: (0..devices).map(|_| DeviceCounters::default()).collect(),
            first_device,
            scenarios: (0..scenarios)
                .map(|_| ScenarioCounters::default())
                .collect(),
            messages_sent: AtomicU64::new(0),
            messages_written: AtomicU64::new(0),
            messages_acked: AtomicU64::new(0),
            garbage_acked: AtomicU64::new(0),
            noise_lines: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            connection_errors: AtomicU64::new(0),
            connects: AtomicU64::new(0),
            republished: AtomicU64::new(0),
        }
    }

    /// Counters of device slot `slot` (0-based within the run).
    pub fn device(&self, slot: usize) -> &DeviceCounters {
        &self.devices[slot]
    }

    /// Total readings sent so far.
    pub fn readings_sent(&self) -> u64 {
        self.sum(|m| &m.sent)
    }

    /// Total readings acknowledged so far.
    pub fn readings_acked(&self) -> u64 {
        self.sum(|m| &m.acked)
    }

    fn sum(&self, f: impl Fn(&MetricCounters) -> &AtomicU64) -> u64 {
        self.devices
            .iter()
            .flat_map(|d| d.metrics.iter())
            .map(|m| f(m).load(Relaxed))
            .sum()
    }

    /// One progress line: totals, rate since the start, errors, and per-scenario activity.
    pub fn progress_line(&self, elapsed: Duration, scenarios: &[Scenario]) -> String {
        let secs = elapsed.as_secs_f64().max(1e-3);
        let sent = self.messages_sent.load(Relaxed);
        let mut s = format!(
            "{:>6.1}s  sent {} msgs ({} readings, {:.0} msg/s)  acked {}  errors {}",
            secs,
            sent,
            self.readings_sent(),
            sent as f64 / secs,
            self.messages_acked.load(Relaxed),
            self.errors.load(Relaxed) + self.connection_errors.load(Relaxed),
        );
        for (sc, c) in scenarios.iter().zip(&self.scenarios) {
            s.push_str(&format!(
                "  | {}: affected {}, skipped {}, garbage {}, reconnects {}",
                sc.kind.name(),
                c.affected.load(Relaxed),
                c.skipped_ticks.load(Relaxed),
                c.garbage.load(Relaxed),
                c.reconnects.load(Relaxed),
            ));
        }
        s
    }

    /// Freeze the counters into a [`Summary`].
    pub fn summarize(&self, run: RunInfo, scenarios: &[Scenario], elapsed: Duration) -> Summary {
        let mut devices = BTreeMap::new();
        let mut totals = Totals::default();
        for (slot, d) in self.devices.iter().enumerate() {
            let mut per_metric = BTreeMap::new();
            for &m in &run.metrics {
                let c = &d.metrics[m.index()];
                let counts = Counts {
                    sent: c.sent.load(Relaxed),
                    written: c.written.load(Relaxed),
                    acked: c.acked.load(Relaxed),
                };
                totals.readings_sent += counts.sent;
                totals.readings_written += counts.written;
                totals.readings_acked += counts.acked;
                per_metric.insert(m.name().to_owned(), counts);
            }
            totals.skipped_ticks += d.skipped_ticks.load(Relaxed);
            totals.garbage_sent += d.garbage.load(Relaxed);
            devices.insert(device_id(self.first_device + slot as u32), per_metric);
        }
        totals.messages_sent = self.messages_sent.load(Relaxed);
        totals.messages_written = self.messages_written.load(Relaxed);
        totals.messages_acked = self.messages_acked.load(Relaxed);
        totals.garbage_acked = self.garbage_acked.load(Relaxed);
        totals.noise_lines = self.noise_lines.load(Relaxed);
        totals.errors = self.errors.load(Relaxed);
        totals.connection_errors = self.connection_errors.load(Relaxed);
        totals.connects = self.connects.load(Relaxed);
        totals.republished = self.republished.load(Relaxed);
        let secs = elapsed.as_secs_f64();
        let per_s = |n: u64| if secs > 0.0 { n as f64 / secs } else { 0.0 };
        let complete = match run.qos {
            Some(1) => totals.readings_acked == totals.readings_sent,
            _ => totals.readings_written == totals.readings_sent,
        };
        Summary {
            transport: run.transport,
            form: run.form,
            qos: run.qos,
            seed: run.seed,
            device_count: self.devices.len() as u32,
            metrics: run.metrics.iter().map(|m| m.name().to_owned()).collect(),
            started_ts_ms: run.started_ts_ms,
            elapsed_s: secs,
            achieved_msgs_per_s: per_s(totals.messages_sent),
            achieved_readings_per_s: per_s(totals.readings_sent),
            complete,
            totals,
            devices,
            scenarios: scenarios
                .iter()
                .zip(&self.scenarios)
                .map(|(sc, c)| ScenarioSummary {
                    spec: sc.spec.clone(),
                    kind: sc.kind.name().to_owned(),
                    affected: c.affected.load(Relaxed),
                    skipped_ticks: c.skipped_ticks.load(Relaxed),
                    garbage: c.garbage.load(Relaxed),
                    reconnects: c.reconnects.load(Relaxed),
                })
                .collect(),
        }
    }
}

/// Facts about a run that go into its summary.
#[derive(Debug, Clone)]
pub struct RunInfo {
    /// `"mqtt"` or `"serial"`.
    pub transport: String,
    /// Form name (`json`, `mix`, `csv`, …).
    pub form: String,
    /// MQTT QoS; `None` for serial.
    pub qos: Option<u8>,
    /// Run seed.
    pub seed: u64,
    /// Metrics each device reads.
    pub metrics: Vec<Metric>,
    /// Timestamp of virtual time zero.
    pub started_ts_ms: i64,
}

/// Counts of one device and metric, in readings.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Handed to the transport.
    pub sent: u64,
    /// Reached the socket or tty.
    pub written: u64,
    /// Acknowledged by the broker (QoS 1 only).
    pub acked: u64,
}

/// Run totals.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[allow(missing_docs)]
pub struct Totals {
    pub readings_sent: u64,
    pub readings_written: u64,
    pub readings_acked: u64,
    pub messages_sent: u64,
    pub messages_written: u64,
    pub messages_acked: u64,
    pub garbage_sent: u64,
    pub garbage_acked: u64,
    pub noise_lines: u64,
    pub skipped_ticks: u64,
    pub errors: u64,
    pub connection_errors: u64,
    pub connects: u64,
    pub republished: u64,
}

/// Per-scenario activity.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScenarioSummary {
    /// The spec as given.
    pub spec: String,
    /// Kind name.
    pub kind: String,
    /// Readings changed (spike, drift, stuck) or ticks at burst rate.
    pub affected: u64,
    /// Ticks not sent (dropout, reconnect).
    pub skipped_ticks: u64,
    /// Malformed messages or lines.
    pub garbage: u64,
    /// Connections closed and reopened.
    pub reconnects: u64,
}

/// The end-of-run summary, as written by `--summary-json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// `"mqtt"` or `"serial"`.
    pub transport: String,
    /// Payload or line form.
    pub form: String,
    /// MQTT QoS (absent for serial).
    pub qos: Option<u8>,
    /// Run seed.
    pub seed: u64,
    /// Number of devices.
    pub device_count: u32,
    /// Metrics per device.
    pub metrics: Vec<String>,
    /// Timestamp of virtual time zero, ms since the epoch.
    pub started_ts_ms: i64,
    /// Wall-clock run time.
    pub elapsed_s: f64,
    /// Messages (lines) per second actually achieved.
    pub achieved_msgs_per_s: f64,
    /// Readings per second actually achieved.
    pub achieved_readings_per_s: f64,
    /// True when every reading sent was acknowledged (QoS 1) or written (QoS 0, serial).
    pub complete: bool,
    /// Totals.
    pub totals: Totals,
    /// `device → metric → counts`.
    pub devices: BTreeMap<String, BTreeMap<String, Counts>>,
    /// Per-scenario activity, in the order given.
    pub scenarios: Vec<ScenarioSummary>,
}

impl Summary {
    /// Write as pretty JSON.
    pub fn write_json(&self, path: &Path) -> std::io::Result<()> {
        let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
        serde_json::to_writer_pretty(&mut f, self)?;
        f.write_all(b"\n")?;
        f.flush()
    }

    /// A short human report for stderr.
    pub fn human(&self) -> String {
        let t = &self.totals;
        let mut s = format!(
            "{} {} ({} devices, {:.1}s): {} readings in {} messages sent, {} written, {} acked; \
             {:.1} msg/s, {:.1} readings/s; garbage {}, noise {}, skipped ticks {}, errors {}, \
             connection errors {}, republished {}; {}\n",
            self.transport,
            self.form,
            self.device_count,
            self.elapsed_s,
            t.readings_sent,
            t.messages_sent,
            t.readings_written,
            t.readings_acked,
            self.achieved_msgs_per_s,
            self.achieved_readings_per_s,
            t.garbage_sent,
            t.noise_lines,
            t.skipped_ticks,
            t.errors,
            t.connection_errors,
            t.republished,
            if self.complete {
                "complete"
            } else {
                "INCOMPLETE"
            },
        );
        for sc in &self.scenarios {
            s.push_str(&format!(
                "  scenario {}: affected {}, skipped {}, garbage {}, reconnects {}\n",
                sc.spec, sc.affected, sc.skipped_ticks, sc.garbage, sc.reconnects
            ));
        }
        s
    }
}

/// One reading as sent, for `--record-sent` (one JSON object per line).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SentRecord {
    /// Device id.
    pub device: String,
    /// Metric name.
    pub metric: String,
    /// Value as published.
    pub value: f64,
    /// Timestamp carried on the wire; `None` for the bare-number form (the gateway stamps it).
    pub ts: Option<i64>,
    /// Concrete form (`number`, `json`, `multi`, `senml`, `csv`, `json-multi`).
    pub form: String,
    /// MQTT topic; `None` for serial.
    pub topic: Option<String>,
}

/// Write records as JSONL.
pub fn write_records(path: &Path, records: &[SentRecord]) -> std::io::Result<()> {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    for r in records {
        serde_json::to_writer(&mut f, r)?;
        f.write_all(b"\n")?;
    }
    f.flush()
}

/// Read a JSONL file written by [`write_records`].
pub fn read_records(path: &Path) -> std::io::Result<Vec<SentRecord>> {
    let text = std::fs::read_to_string(path)?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).map_err(std::io::Error::other))
        .collect()
}
