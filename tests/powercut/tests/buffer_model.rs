//! Model test of `gateway_buffer::Buffer` across real power cuts: random sequences of append,
//! flush, read, ack, clean reopen and **power cut**, checked against a queue per lane.
//!
//! The buffer lives in a child process (this test binary, re-executed) on the power-cut
//! filesystem, driven one command per line over stdin. A power cut freezes the disk, SIGKILLs
//! the child and brings back only what was fsynced, so a record whose `append` returned before
//! its fsync is gone afterwards and the model notices. (The in-process model test in `buffer/`
//! cannot: sled writes its caches out when a dropped database closes.)
//!
//! After a cut every appended record must be there with its seq, in order; acks since the last
//! commit may be lost, which brings back acked records (duplicates), never loses un-acked ones;
//! seqs handed out later are above every seq handed out before.
//!
//! `POWERCUT_MODEL_CASES` (default 24) sets the number of random sequences, `POWERCUT_SEED`
//! replays a run.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use gateway_buffer::{
    AlarmEvent, AlarmState, Buffer, BufferOptions, Lane, Reading, Record, Severity, Source,
};
use powercut::{Options, PowerCutMount, Rng, env_u64};

const TEST: &str = "random_operations_and_power_cuts_keep_every_appended_record";
const CHILD_DIR_ENV: &str = "POWERCUT_MODEL_CHILD_DIR";
const CONSUMER: &str = "forwarder";
/// Marks the child's replies (libtest may print on the same line before the first one).
const REPLY: &str = "@@ ";
/// How long one command may take in the child.
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

fn options(dir: &Path) -> BufferOptions {
    let mut o = BufferOptions::new(dir);
    o.commit_interval_ms = 1;
    // A small cache, so reads and reopens cross block boundaries often.
    o.cache_capacity_bytes = 256 * 1024;
    o
}

/// A record whose value carries its identity.
fn record(id: u64, alarm: bool) -> Record {
    if alarm {
        Record::Alarm(AlarmEvent {
            alarm: "overheat".into(),
            state: AlarmState::Raised,
            severity: Severity::Critical,
            device: format!("dev-{}", id % 5),
            metric: "temperature".into(),
            value: id as f64,
            threshold: Some(35.0),
            ts_ms: 1_764_081_600_000 + id as i64,
        })
    } else {
        Record::Reading(Reading {
            device: format!("dev-{}", id % 5),
            metric: "temperature".into(),
            value: id as f64,
            unit: Some("C".into()),
            ts_ms: 1_764_081_600_000 + id as i64,
            source: Source::Mqtt,
        })
    }
}

fn id_of(r: &Record) -> u64 {
    match r {
        Record::Reading(x) => x.value as u64,
        Record::Alarm(a) => a.value as u64,
    }
}

fn lane_name(l: Lane) -> &'static str {
    match l {
        Lane::Alarms => "a",
        Lane::Readings => "r",
    }
}

fn parse_lane(s: &str) -> Lane {
    match s {
        "a" => Lane::Alarms,
        "r" => Lane::Readings,
        other => panic!("no lane {other:?}"),
    }
}

/// The child: open the buffer, then answer one command per stdin line until `close` (a clean
/// shutdown) or until it is killed.
///
/// Commands and replies (each reply one line starting with [`REPLY`]):
/// `append <id><a|r> ...` → `seqs <seq> ...` once durable; `flush` → `ok`;
/// `read <lane> <n>` → `got <seq>:<id> ...`; `ack <lane> <seq>` → `ok`;
/// `acked <lane>` → `acked <seq|->`; `records <lane>` → `records <n>`; `close` → `closed`.
fn child(dir: &Path) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    // A fresh process: the previous child was killed or exited, so its lock is gone.
    let (buffer, committer) = Buffer::open(options(dir)).expect("child: open");
    let shutdown = tokio_util::sync::CancellationToken::new();
    let task = rt.spawn(committer.run(shutdown.clone()));
    let mut out = std::io::stdout().lock();
    for line in std::io::stdin().lock().lines() {
        let line = line.unwrap();
        let words: Vec<&str> = line.split_whitespace().collect();
        let reply = match words.as_slice() {
            ["append", items @ ..] => {
                let records: Vec<Record> = items
                    .iter()
                    .map(|w| {
                        let (id, kind) = w.split_at(w.len() - 1);
                        record(id.parse().unwrap(), kind == "a")
                    })
                    .collect();
                let seqs = rt.block_on(buffer.append(records)).expect("append");
                let seqs: Vec<String> = seqs.iter().map(u64::to_string).collect();
                format!("seqs {}", seqs.join(" "))
            }
            ["flush"] => {
                rt.block_on(buffer.flush()).expect("flush");
                "ok".to_owned()
            }
            ["read", lane, n] => {
                let got = buffer
                    .read(
                        CONSUMER,
                        parse_lane(lane),
                        None,
                        n.parse().unwrap(),
                        usize::MAX,
                    )
                    .expect("read");
                let got: Vec<String> = got
                    .iter()
                    .map(|s| format!("{}:{}", s.seq, id_of(&s.record)))
                    .collect();
                format!("got {}", got.join(" "))
            }
            ["ack", lane, seq] => {
                buffer
                    .ack(CONSUMER, parse_lane(lane), seq.parse().unwrap())
                    .expect("ack");
                "ok".to_owned()
            }
            ["acked", lane] => match buffer.acked(CONSUMER, parse_lane(lane)) {
                Some(s) => format!("acked {s}"),
                None => "acked -".to_owned(),
            },
            ["records", lane] => {
                format!("records {}", buffer.stats().lane(parse_lane(lane)).records)
            }
            ["close"] => {
                shutdown.cancel();
                rt.block_on(task)
                    .expect("committer task")
                    .expect("final flush");
                drop(buffer);
                writeln!(out, "{REPLY}closed").unwrap();
                out.flush().unwrap();
                return;
            }
            other => panic!("child: unknown command {other:?}"),
        };
        writeln!(out, "{REPLY}{reply}").unwrap();
        out.flush().unwrap();
    }
}

/// The parent's handle on one child. Dropped (a failed check), it kills the child, so the disk
/// can be unmounted.
struct Driver {
    child: Child,
    stdin: BufWriter<ChildStdin>,
    replies: mpsc::Receiver<String>,
}

impl Driver {
    fn spawn(data: &Path) -> Driver {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([TEST, "--exact", "--nocapture", "--test-threads", "1"])
            .env(CHILD_DIR_ENV, data)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdin = BufWriter::new(child.stdin.take().unwrap());
        let stdout = child.stdout.take().unwrap();
        let (tx, replies) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if let Some(at) = line.find(REPLY) {
                    let _ = tx.send(line[at + REPLY.len()..].to_owned());
                }
            }
        });
        Driver {
            child,
            stdin,
            replies,
        }
    }

    /// Send one command and return the words of its reply after the first.
    fn ask(&mut self, command: &str, seed: u64) -> Vec<String> {
        writeln!(self.stdin, "{command}").unwrap();
        self.stdin.flush().unwrap();
        let reply = self
            .replies
            .recv_timeout(REPLY_TIMEOUT)
            .unwrap_or_else(|e| {
                panic!(
                    "no reply to {command:?} within {REPLY_TIMEOUT:?} ({e}; POWERCUT_SEED={seed})"
                )
            });
        reply
            .split_whitespace()
            .skip(1)
            .map(str::to_owned)
            .collect()
    }

    /// The power cut: freeze the disk, SIGKILL the child, bring back only what was fsynced.
    fn power_cut(mut self, disk: &mut PowerCutMount) {
        disk.cut_power();
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        disk.restore_power().unwrap();
    }

    fn close(mut self, seed: u64) {
        let reply = self.ask("close", seed);
        assert!(reply.is_empty(), "close: {reply:?}");
        let status = self.child.wait().unwrap();
        assert!(status.success(), "child exited with {status}");
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Default)]
struct Model {
    /// Un-acked (seq, id) per lane, oldest first: alarms, readings.
    lanes: [VecDeque<(u64, u64)>; 2],
    last_acked: [Option<u64>; 2],
    max_seq: u64,
    next_id: u64,
}

fn idx(l: Lane) -> usize {
    match l {
        Lane::Alarms => 0,
        Lane::Readings => 1,
    }
}

fn pairs(words: &[String]) -> Vec<(u64, u64)> {
    words
        .iter()
        .map(|w| {
            let (s, i) = w.split_once(':').unwrap();
            (s.parse().unwrap(), i.parse().unwrap())
        })
        .collect()
}

/// Everything in the lane from the consumer's cursor.
fn read_lane(d: &mut Driver, lane: Lane, seed: u64) -> Vec<(u64, u64)> {
    pairs(&d.ask(&format!("read {} 100000", lane_name(lane)), seed))
}

/// One random sequence of `ops` operations on a fresh disk.
fn run_case(case: u64, ops: u64, seed: u64, log: &mut Vec<String>) {
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let mut disk = PowerCutMount::mount(
        &dir.path().join("backing"),
        &mnt,
        Options {
            seed,
            ..Options::default()
        },
    )
    .unwrap();
    // The gateway's data directory exists and is durable (created at install time).
    let data: PathBuf = mnt.join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::File::open(&mnt).unwrap().sync_all().unwrap();

    let mut rng = Rng(seed ^ case.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let mut m = Model::default();
    let mut d = Driver::spawn(&data);
    let lane = |rng: &mut Rng| {
        if rng.below(2) == 0 {
            Lane::Alarms
        } else {
            Lane::Readings
        }
    };
    for _ in 0..ops {
        match rng.below(16) {
            // Append (6 in 16).
            0..=5 => {
                let n = 1 + rng.below(40);
                let items: Vec<(u64, bool)> = (0..n)
                    .map(|_| {
                        m.next_id += 1;
                        (m.next_id, rng.below(5) == 0)
                    })
                    .collect();
                let words: Vec<String> = items
                    .iter()
                    .map(|(id, a)| format!("{id}{}", if *a { "a" } else { "r" }))
                    .collect();
                log.push(format!("append {n}"));
                let seqs = d.ask(&format!("append {}", words.join(" ")), seed);
                assert_eq!(seqs.len(), items.len(), "append reply {seqs:?}");
                for (seq, (id, alarm)) in seqs.iter().zip(items) {
                    let seq: u64 = seq.parse().unwrap();
                    assert!(
                        seq > m.max_seq,
                        "seq went backwards: {seq} after {} ({log:?}, POWERCUT_SEED={seed})",
                        m.max_seq
                    );
                    m.max_seq = seq;
                    let l = if alarm { Lane::Alarms } else { Lane::Readings };
                    m.lanes[idx(l)].push_back((seq, id));
                }
            }
            // Flush (1 in 16).
            6 => {
                log.push("flush".into());
                d.ask("flush", seed);
            }
            // Read (3 in 16).
            7..=9 => {
                let (l, n) = (lane(&mut rng), 1 + rng.below(50) as usize);
                log.push(format!("read {l} {n}"));
                let got = pairs(&d.ask(&format!("read {} {n}", lane_name(l)), seed));
                let want: Vec<_> = m.lanes[idx(l)].iter().take(n).copied().collect();
                assert_eq!(got, want, "read {l} {n} ({log:?}, POWERCUT_SEED={seed})");
            }
            // Ack (3 in 16).
            10..=12 => {
                let l = lane(&mut rng);
                let q = &mut m.lanes[idx(l)];
                let n = (1 + rng.below(60) as usize).min(q.len());
                if n > 0 {
                    let up_to = q[n - 1].0;
                    q.drain(..n);
                    log.push(format!("ack {l} {up_to}"));
                    d.ask(&format!("ack {} {up_to}", lane_name(l)), seed);
                    m.last_acked[idx(l)] = Some(up_to);
                }
            }
            // Clean reopen (1 in 16): nothing at all may change.
            13 => {
                log.push("reopen".into());
                d.close(seed);
                d = Driver::spawn(&data);
                for l in Lane::ALL {
                    let got = read_lane(&mut d, l, seed);
                    assert_eq!(
                        got,
                        Vec::from(m.lanes[idx(l)].clone()),
                        "lane {l} after a clean reopen ({log:?}, POWERCUT_SEED={seed})"
                    );
                    let acked = d.ask(&format!("acked {}", lane_name(l)), seed);
                    let want = m.last_acked[idx(l)].map_or("-".to_owned(), |s| s.to_string());
                    assert_eq!(acked, [want], "ack of lane {l} after a clean reopen");
                    let records = d.ask(&format!("records {}", lane_name(l)), seed);
                    assert_eq!(records, [m.lanes[idx(l)].len().to_string()]);
                }
            }
            // Power cut (2 in 16).
            _ => {
                log.push("power cut".into());
                d.power_cut(&mut disk);
                d = Driver::spawn(&data);
                for l in Lane::ALL {
                    let got = read_lane(&mut d, l, seed);
                    let want = Vec::from(m.lanes[idx(l)].clone());
                    assert!(
                        got.ends_with(&want),
                        "lane {l}: appended records lost or reordered by a power cut\n  got  \
                         {got:?}\n  want {want:?} at the end\n  ({log:?}, POWERCUT_SEED={seed})"
                    );
                    // Whatever else came back was acked before the cut (an ack not yet
                    // committed): a duplicate, delivered again, never a stranger.
                    let extra = got.len() - want.len();
                    assert!(
                        got[..extra]
                            .iter()
                            .all(|(s, _)| Some(*s) <= m.last_acked[idx(l)]),
                        "lane {l}: records came back that were never acked: {:?} ({log:?}, \
                         POWERCUT_SEED={seed})",
                        &got[..extra]
                    );
                    if let Some(a) = m.last_acked[idx(l)] {
                        d.ask(&format!("ack {} {a}", lane_name(l)), seed);
                    }
                }
            }
        }
    }
    d.close(seed);
}

#[test]
fn random_operations_and_power_cuts_keep_every_appended_record() {
    if let Ok(dir) = std::env::var(CHILD_DIR_ENV) {
        child(Path::new(&dir));
        return;
    }
    if !powercut::require_fuse(TEST) {
        return;
    }
    let cases = env_u64("POWERCUT_MODEL_CASES").unwrap_or(24);
    let seed = powercut::seed();
    eprintln!("{TEST}: {cases} sequences of 60 operations, POWERCUT_SEED={seed}");
    let started = Instant::now();
    let mut cuts = 0;
    for case in 0..cases {
        let mut log = Vec::new();
        run_case(case, 60, seed, &mut log);
        cuts += log.iter().filter(|l| *l == "power cut").count();
    }
    eprintln!(
        "{TEST}: {cases} sequences, {cuts} power cuts, every appended record kept; {:.1?}",
        started.elapsed()
    );
    assert!(cuts > 0, "no sequence cut the power (POWERCUT_SEED={seed})");
}
