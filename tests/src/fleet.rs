//! device-sim as the fleet of a fault test, and the check of what the cloud got against what
//! device-sim says it sent.
//!
//! device-sim reports every reading it sent (`--record-sent`, or [`device_sim::FleetReport::records`])
//! and, per device and metric, how many the broker acknowledged (`--summary-json`). A
//! [`SentLog`] holds both; [`SentLog::check`] compares the receiver's readings-lane records with
//! it, reading by reading:
//!
//! - **identity**: a reading is `(device, metric, ts)` (device-sim's `ts` strictly increases per
//!   device, every form but the bare number carries it, so use the other forms), and its value
//!   must be the one sent;
//! - **at least once**: every reading the broker acknowledged is delivered; a reading delivered
//!   more than once is a duplicate (counted, allowed);
//! - **per-device order**: a reading's *first delivery* is its copy with the lowest upstream
//!   `seq`. For each device, the first deliveries' seqs increase in device-sim's send order. Later
//!   copies (a re-sent batch, or a message the broker delivered again after a crash and the
//!   gateway stored again) may come anywhere.

use crate::workload::{PROBE_DEVICE, UpReading};
use device_sim::{SentRecord, Summary};
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// What device-sim says it sent: the summary and every reading, in send order per device.
#[derive(Debug, Clone)]
pub struct SentLog {
    pub summary: Summary,
    pub records: Vec<SentRecord>,
}

/// A reading's identity.
type Key = (String, String, i64);

fn key_of(r: &SentRecord) -> Key {
    (
        r.device.clone(),
        r.metric.clone(),
        r.ts.expect("a fault test uses payload forms that carry ts"),
    )
}

/// The receiver's records compared with a [`SentLog`].
#[derive(Debug, Default, Clone)]
pub struct Delivery {
    /// Readings device-sim sent (and the broker acknowledged).
    pub sent: usize,
    /// Distinct sent readings that arrived.
    pub arrived: usize,
    /// Records of the log's devices delivered, copies included.
    pub delivered: usize,
    /// Deliveries beyond the first of a reading.
    pub duplicates: usize,
    /// ... of which the same seq again (a batch sent again).
    pub duplicate_seqs: usize,
    /// Sent and never delivered.
    pub missing: Vec<String>,
    /// Delivered for a device of the log but never sent, or with another value.
    pub unexpected: Vec<String>,
    /// First deliveries out of send order within a device.
    pub out_of_order: Vec<String>,
}

impl Delivery {
    /// No reading missing, none unexpected, order kept.
    pub fn is_clean(&self) -> bool {
        self.missing.is_empty() && self.unexpected.is_empty() && self.out_of_order.is_empty()
    }

    /// A short description for assertion messages.
    pub fn describe(&self) -> String {
        let mut s = format!(
            "{} sent, {} arrived ({} missing), {} delivered, {} duplicates ({} same seq), \
             {} unexpected, {} out of order",
            self.sent,
            self.arrived,
            self.missing.len(),
            self.delivered,
            self.duplicates,
            self.duplicate_seqs,
            self.unexpected.len(),
            self.out_of_order.len()
        );
        for (what, list) in [
            ("missing", &self.missing),
            ("unexpected", &self.unexpected),
            ("out of order", &self.out_of_order),
        ] {
            for k in list.iter().take(10) {
                let _ = write!(s, "\n  {what}: {k}");
            }
            if list.len() > 10 {
                let _ = write!(s, "\n  ... {} more {what}", list.len() - 10);
            }
        }
        s
    }
}

impl SentLog {
    /// From a library run with `record_sent` on.
    pub fn from_report(report: device_sim::FleetReport) -> SentLog {
        SentLog {
            summary: report.summary,
            records: report.records,
        }
    }

    /// From the files of `device-sim --summary-json S --record-sent R`.
    pub fn read(summary_json: &Path, record_sent: &Path) -> SentLog {
        let text = std::fs::read_to_string(summary_json)
            .unwrap_or_else(|e| panic!("read {}: {e}", summary_json.display()));
        let summary: Summary = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("parse {}: {e}", summary_json.display()));
        let records = device_sim::summary::read_records(record_sent)
            .unwrap_or_else(|e| panic!("read {}: {e}", record_sent.display()));
        SentLog { summary, records }
    }

    /// Appends another run's log (another set of devices).
    pub fn extend(&mut self, other: SentLog) {
        self.records.extend(other.records);
        for (dev, metrics) in other.summary.devices {
            self.summary.devices.entry(dev).or_default().extend(metrics);
        }
        let (t, o) = (&mut self.summary.totals, &other.summary.totals);
        t.readings_sent += o.readings_sent;
        t.readings_acked += o.readings_acked;
        t.messages_sent += o.messages_sent;
        t.messages_acked += o.messages_acked;
        self.summary.complete &= other.summary.complete;
    }

    /// Readings sent.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether nothing was sent.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Checks that the broker acknowledged every reading device-sim sent (per device and metric
    /// `acked == sent`) and that the record file agrees with the counts. device-sim counts
    /// acknowledgements per device and metric, not per reading, so only then is the set of
    /// acknowledged readings known exactly: the whole log.
    pub fn check_all_acked(&self) -> Result<(), String> {
        let mut per: BTreeMap<(String, String), u64> = BTreeMap::new();
        for r in &self.records {
            *per.entry((r.device.clone(), r.metric.clone())).or_default() += 1;
        }
        for (dev, metrics) in &self.summary.devices {
            for (metric, c) in metrics {
                if c.acked != c.sent {
                    return Err(format!(
                        "{dev}/{metric}: the broker acknowledged {} of {} readings",
                        c.acked, c.sent
                    ));
                }
                let recorded = per.remove(&(dev.clone(), metric.clone())).unwrap_or(0);
                if recorded != c.sent {
                    return Err(format!(
                        "{dev}/{metric}: summary says {} sent, record file has {recorded}",
                        c.sent
                    ));
                }
            }
        }
        if let Some(((dev, metric), n)) = per.into_iter().next() {
            return Err(format!(
                "{dev}/{metric}: {n} readings recorded but not in the summary"
            ));
        }
        Ok(())
    }

    /// Devices of the log.
    fn devices(&self) -> std::collections::BTreeSet<&str> {
        self.records.iter().map(|r| r.device.as_str()).collect()
    }

    /// Compares delivered readings-lane records with the log (see the module doc). Records of
    /// devices not in the log (other runs, probes) are ignored.
    pub fn check(&self, delivered: &[UpReading]) -> Delivery {
        let devices = self.devices();
        let mut d = Delivery {
            sent: self.records.len(),
            ..Delivery::default()
        };
        // Index of each sent reading in the log (send order per device).
        let mut index: HashMap<Key, usize> = HashMap::with_capacity(self.records.len());
        for (i, r) in self.records.iter().enumerate() {
            if index.insert(key_of(r), i).is_some() {
                panic!("device-sim sent {key:?} twice", key = key_of(r));
            }
        }
        // Lowest seq and copies per sent reading.
        let mut first_seq: Vec<Option<u64>> = vec![None; self.records.len()];
        let mut copies: Vec<Vec<u64>> = vec![Vec::new(); self.records.len()];
        for r in delivered {
            if r.device == PROBE_DEVICE || !devices.contains(r.device.as_str()) {
                continue;
            }
            d.delivered += 1;
            let k = (r.device.clone(), r.metric.clone(), r.ts);
            match index.get(&k) {
                Some(&i) if self.records[i].value.to_bits() == r.value.to_bits() => {
                    first_seq[i] = Some(first_seq[i].map_or(r.seq, |s| s.min(r.seq)));
                    copies[i].push(r.seq);
                }
                Some(&i) => d.unexpected.push(format!(
                    "{}/{} ts {} value {} (seq {}), sent with value {}",
                    r.device, r.metric, r.ts, r.value, r.seq, self.records[i].value
                )),
                None => d.unexpected.push(format!(
                    "{}/{} ts {} value {} (seq {}) was never sent",
                    r.device, r.metric, r.ts, r.value, r.seq
                )),
            }
        }
        for (i, c) in copies.iter_mut().enumerate() {
            if c.is_empty() {
                let r = &self.records[i];
                d.missing.push(format!(
                    "{}/{} ts {:?} value {}",
                    r.device, r.metric, r.ts, r.value
                ));
                continue;
            }
            d.arrived += 1;
            d.duplicates += c.len() - 1;
            c.sort_unstable();
            d.duplicate_seqs += c.windows(2).filter(|w| w[0] == w[1]).count();
        }
        // Per device, first deliveries in send order must have increasing seqs.
        let mut last: HashMap<&str, (u64, usize)> = HashMap::new();
        for (i, r) in self.records.iter().enumerate() {
            let Some(seq) = first_seq[i] else { continue };
            if let Some(&(prev_seq, prev_i)) = last.get(r.device.as_str())
                && seq <= prev_seq
            {
                let p = &self.records[prev_i];
                d.out_of_order.push(format!(
                    "{}: {}@{:?} (sent #{i}) first arrived as seq {seq}, before {}@{:?} \
                     (sent #{prev_i}) at seq {prev_seq}",
                    r.device, r.metric, r.ts, p.metric, p.ts
                ));
            }
            last.insert(r.device.as_str(), (seq, i));
        }
        d
    }
}

/// The `device-sim` binary: `$DEVICE_SIM_BIN`, else `target/<profile>/device-sim` next to this
/// test executable, built once per test process with `cargo build -p device-sim --bin
/// device-sim` (skipped with `E2E_NO_BUILD=1` when it exists; a failed build fails the test).
pub fn device_sim_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| crate::gateway::workspace_bin("device-sim", "DEVICE_SIM_BIN"))
        .clone()
}

/// A `device-sim mqtt` child process writing `--summary-json` and `--record-sent` into its own
/// temp dir. Killed on drop.
#[derive(Debug)]
pub struct DeviceSimProcess {
    dir: tempfile::TempDir,
    child: Option<Child>,
    args: Vec<String>,
}

impl DeviceSimProcess {
    /// Starts `device-sim mqtt --broker mqtt://127.0.0.1:PORT --quiet ARGS…` plus the two report
    /// files.
    pub fn start_mqtt(port: u16, args: &[String]) -> DeviceSimProcess {
        let dir = tempfile::Builder::new()
            .prefix("e2e-device-sim-")
            .tempdir()
            .expect("temp dir");
        let mut all: Vec<String> = vec![
            "mqtt".into(),
            "--broker".into(),
            format!("mqtt://127.0.0.1:{port}"),
            "--quiet".into(),
        ];
        all.extend(args.iter().cloned());
        all.push("--summary-json".into());
        all.push(dir.path().join("summary.json").display().to_string());
        all.push("--record-sent".into());
        all.push(dir.path().join("sent.jsonl").display().to_string());
        let log = std::fs::File::create(dir.path().join("stderr.log")).expect("stderr log");
        let child = Command::new(device_sim_bin())
            .args(&all)
            .env("RUST_LOG", "device_sim=warn,warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .expect("spawn device-sim");
        DeviceSimProcess {
            dir,
            child: Some(child),
            args: all,
        }
    }

    /// Whether it is still running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// device-sim's stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }

    /// Waits for a successful exit (panics after `timeout` or on failure) and reads the log.
    pub async fn finish(mut self, timeout: Duration) -> SentLog {
        let deadline = Instant::now() + timeout;
        let mut child = self.child.take().expect("running");
        let status = loop {
            if let Some(s) = child.try_wait().expect("try_wait device-sim") {
                break s;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "device-sim {:?} did not finish within {timeout:?}\n{}",
                    self.args,
                    self.stderr()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert!(
            status.success(),
            "device-sim {:?} failed ({status})\n{}",
            self.args,
            self.stderr()
        );
        SentLog::read(
            &self.dir.path().join("summary.json"),
            &self.dir.path().join("sent.jsonl"),
        )
    }
}

impl Drop for DeviceSimProcess {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A small seeded generator (splitmix64) for fault timings: the same seed makes the same
/// choices, so a failing run can be replayed.
#[derive(Debug, Clone)]
pub struct SplitMix(u64);

impl SplitMix {
    pub fn new(seed: u64) -> SplitMix {
        SplitMix(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        assert!(lo <= hi);
        lo + self.next_u64() % (hi - lo + 1)
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }
}

/// The seed of a randomized test: `$name` if set, else one from the clock. Printed either way,
/// so a failure can be replayed with `name=SEED`.
pub fn seed_from_env(name: &str) -> u64 {
    let seed = match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1),
    };
    eprintln!("{name}={seed}");
    seed
}
