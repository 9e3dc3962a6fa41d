//! A Kafka-protocol broker and an independent client to read it back.
//!
//! The broker is tansu (a Kafka-compatible broker in Rust, from crates.io, storage in memory):
//! `TANSU`, else `target/peers/bin/tansu` of this workspace (where `scripts/test` installs it),
//! else `tansu` on the `PATH`. The client that reads back is kafka-python, a different
//! implementation than the gateway's: `KAFKA_PYTHON` (a Python where `kafka` and `lz4`, for
//! lz4-compressed batches, import), else `target/peers/venv/bin/python`. It also computes each
//! key's partition with its own copy of Kafka's default partitioner, so a test checks the
//! gateway's choice against another's.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;

use crate::port::{Start, wait_listening};
use crate::{free_port, missing};

/// How `scripts/test` provides the broker and the client.
pub const KAFKA_ENABLE: &str = "scripts/test (cargo install tansu --version 0.6.0 --features \
                                dynostore --root target/peers; python3 -m venv \
                                target/peers/venv; target/peers/venv/bin/pip install kafka-python lz4)";

/// A tansu broker on a free port, storage in memory. Killed on drop.
#[derive(Debug)]
pub struct Kafka {
    bin: PathBuf,
    python: PathBuf,
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

/// One record as kafka-python read it.
#[derive(Debug, Clone)]
pub struct KafkaRecord {
    /// Its topic.
    pub topic: String,
    /// Its partition.
    pub partition: i32,
    /// Its offset in that partition.
    pub offset: i64,
    /// The key, as UTF-8 text.
    pub key: Option<String>,
    /// The value, parsed as JSON.
    pub value: Value,
    /// Headers in order, values as UTF-8 text.
    pub headers: Vec<(String, String)>,
    /// The record's timestamp, milliseconds since the epoch.
    pub timestamp_ms: i64,
    /// The partition kafka-python's default partitioner picks for the key among the topic's
    /// partitions.
    pub expected_partition: Option<i32>,
}

fn workspace_peer(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../target/peers")
        .join(relative)
}

fn tansu_path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("TANSU") {
        return Some(PathBuf::from(p));
    }
    let local = workspace_peer("bin/tansu");
    if local.is_file() {
        return Some(local);
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("tansu"))
            .find(|p| p.is_file())
    })
}

fn python_path() -> Option<PathBuf> {
    let python = std::env::var_os("KAFKA_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_peer("venv/bin/python"));
    let ok = Command::new(&python)
        .args(["-c", "import kafka, lz4"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    ok.then_some(python)
}

impl Kafka {
    /// Starts a broker, or reports the test as not run for real (panicking under `CI`) and
    /// returns `None` when tansu or kafka-python is missing.
    pub fn require(test: &str) -> Option<Kafka> {
        let Some(bin) = tansu_path() else {
            missing(
                test,
                "tansu (a Kafka-protocol broker) is not installed",
                KAFKA_ENABLE,
            );
            return None;
        };
        let Some(python) = python_path() else {
            missing(test, "kafka-python is not installed", KAFKA_ENABLE);
            return None;
        };
        Some(Kafka::start(bin, python))
    }

    fn start(bin: PathBuf, python: PathBuf) -> Kafka {
        let dir = tempfile::Builder::new()
            .prefix("kafka-")
            .tempdir()
            .expect("temp dir");
        let mut k = Kafka {
            bin,
            python,
            port: 0,
            dir,
            child: None,
        };
        // A free port can be taken between picking and binding; try a few.
        for _ in 0..5 {
            k.port = free_port();
            if k.spawn() {
                return k;
            }
        }
        panic!("tansu did not start:\n{}", k.log_tail());
    }

    fn spawn(&mut self) -> bool {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("tansu.log"))
            .expect("tansu log");
        let child = Command::new(&self.bin)
            .args(["broker", "--storage-engine", "memory://tansu/"])
            .args(["--listener-url", &url, "--advertised-listener-url", &url])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("tansu log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", self.bin.display()));
        self.child = Some(child);
        // This tansu, not whoever else answers on a port that was free a moment ago.
        wait_listening(&mut self.child, &[self.port], Duration::from_secs(20)) == Start::Listening
    }

    /// `127.0.0.1:port`, for a sink's `brokers`.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Creates `topic` with `partitions` partitions (tansu does not create topics on use).
    pub fn create_topic(&self, topic: &str, partitions: u32) {
        let out = Command::new(&self.bin)
            .args(["topic", "create", "--broker"])
            .arg(format!("tcp://127.0.0.1:{}", self.port))
            .args(["--partitions", &partitions.to_string(), topic])
            .output()
            .expect("run tansu topic create");
        assert!(
            out.status.success(),
            "tansu topic create {topic}: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log_tail()
        );
    }

    /// Freezes the broker (SIGSTOP): connections stay open and nothing answers, as with a
    /// broker that hangs or a network that drops everything.
    pub fn pause(&self) {
        self.signal(Signal::SIGSTOP);
    }

    /// Lets a [`Kafka::pause`]d broker run again (SIGCONT), every record it held intact.
    pub fn resume(&self) {
        self.signal(Signal::SIGCONT);
    }

    fn signal(&self, sig: Signal) {
        if let Some(c) = &self.child {
            kill(Pid::from_raw(c.id() as i32), sig).expect("signal tansu");
        }
    }

    /// Every record of `topics` from the beginning, read by kafka-python, stopping once
    /// `expect` records were read or none came for `idle`.
    pub fn read_back(&self, topics: &[&str], expect: usize, idle: Duration) -> Vec<KafkaRecord> {
        let script = self.dir.path().join("read_back.py");
        std::fs::write(&script, READ_BACK).expect("write read_back.py");
        let out = Command::new(&self.python)
            .arg(&script)
            .arg(self.bootstrap())
            .arg(expect.to_string())
            .arg(idle.as_secs_f64().to_string())
            .args(topics)
            .stderr(Stdio::piped())
            .output()
            .expect("run kafka-python");
        assert!(
            out.status.success(),
            "kafka-python read back failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log_tail()
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|line| {
                let v: Value = serde_json::from_str(line)
                    .unwrap_or_else(|e| panic!("read back line {line:?}: {e}"));
                KafkaRecord {
                    topic: v["topic"].as_str().unwrap_or_default().to_owned(),
                    partition: v["partition"].as_i64().unwrap_or(-1) as i32,
                    offset: v["offset"].as_i64().unwrap_or(-1),
                    key: v["key"].as_str().map(str::to_owned),
                    value: serde_json::from_str(v["value"].as_str().unwrap_or("null"))
                        .unwrap_or(Value::Null),
                    headers: v["headers"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|h| {
                            (
                                h[0].as_str().unwrap_or_default().to_owned(),
                                h[1].as_str().unwrap_or_default().to_owned(),
                            )
                        })
                        .collect(),
                    timestamp_ms: v["timestamp"].as_i64().unwrap_or(-1),
                    expected_partition: v["expected_partition"].as_i64().map(|p| p as i32),
                }
            })
            .collect()
    }

    /// The last lines of tansu's log.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("tansu.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        let from = lines.len().saturating_sub(30);
        format!("--- tansu log ---\n{}", lines[from..].join("\n"))
    }
}

impl Drop for Kafka {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // A stopped process takes SIGKILL too.
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// kafka-python: read every partition of the topics from the beginning; one JSON line per
/// record on stdout.
const READ_BACK: &str = r#"
import json, sys
from kafka import KafkaConsumer, TopicPartition
from kafka.partitioner.default import murmur2

bootstrap, expect, idle = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
topics = sys.argv[4:]
consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                         auto_offset_reset="earliest", consumer_timeout_ms=int(idle * 1000))
counts = {}
assigned = []
for topic in topics:
    partitions = consumer.partitions_for_topic(topic) or set()
    counts[topic] = len(partitions)
    assigned += [TopicPartition(topic, p) for p in sorted(partitions)]
consumer.assign(assigned)
consumer.seek_to_beginning(*assigned)
read = 0
out = sys.stdout
for m in consumer:
    expected = None
    if m.key is not None and counts.get(m.topic):
        expected = (murmur2(m.key) & 0x7FFFFFFF) % counts[m.topic]
    out.write(json.dumps({
        "topic": m.topic, "partition": m.partition, "offset": m.offset,
        "key": m.key.decode() if m.key is not None else None,
        "value": m.value.decode() if m.value is not None else None,
        "headers": [[k, v.decode()] for k, v in (m.headers or [])],
        "timestamp": m.timestamp, "expected_partition": expected,
    }) + "\n")
    read += 1
    if read >= expect:
        break
consumer.close()
"#;
