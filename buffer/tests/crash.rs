//! Crash test: a child process (this test binary, re-executed) appends continuously from
//! several concurrent appenders and prints every seq once `append` returned it; the parent
//! SIGKILLs it at random moments and checks, after reopening, that every printed seq is there,
//! holds the record it was printed with, and that order and uniqueness hold.
//!
//! `BUFFER_CRASH_TRIALS` (default 20) sets the number of kills; `BUFFER_CRASH_SEED` replays a
//! run.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use gateway_buffer::{Buffer, BufferOptions, Lane, Record};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

const CHILD_ENV: &str = "BUFFER_CRASH_CHILD_DIR";
const TEST_NAME: &str = "every_printed_seq_survives_sigkill_at_random_moments";
const APPENDERS: u64 = 4;

fn options(dir: &Path) -> BufferOptions {
    let mut o = common::opts(dir);
    o.commit_interval_ms = 1;
    o
}

/// A record whose value carries its identity, so the parent can check seq → record.
fn record(id: u64) -> Record {
    if id.is_multiple_of(7) {
        let mut r = common::alarm(id);
        if let Record::Alarm(a) = &mut r {
            a.value = id as f64;
        }
        r
    } else {
        let mut r = common::reading(id);
        if let Record::Reading(x) = &mut r {
            x.value = id as f64;
        }
        r
    }
}

fn id_of(r: &Record) -> u64 {
    match r {
        Record::Reading(x) => x.value as u64,
        Record::Alarm(a) => a.value as u64,
    }
}

fn lane_char(l: Lane) -> char {
    match l {
        Lane::Alarms => 'a',
        Lane::Readings => 'r',
    }
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        // splitmix64
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The child: append forever (until killed), printing `SEQ <lane> <seq> <id>` after each
/// durable append, and `ACK <lane> <seq>` *before* each ack.
fn child(dir: &Path, trial: u64) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let r = common::Running::open(options(dir));
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut tasks = Vec::new();
        for t in 0..APPENDERS {
            let b = r.buffer.clone();
            tasks.push(tokio::spawn(async move {
                let mut rng = Rng(trial * 1000 + t);
                let mut counter = 0u64;
                while Instant::now() < deadline {
                    let n = 1 + rng.below(20);
                    let records: Vec<Record> = (0..n)
                        .map(|_| {
                            counter += 1;
                            record(((trial * 10 + t) << 32) | counter)
                        })
                        .collect();
                    let seqs = b.append(records.clone()).await.expect("append");
                    let mut out = String::new();
                    for (seq, rec) in seqs.iter().zip(&records) {
                        out.push_str(&format!(
                            "SEQ {} {seq} {}\n",
                            lane_char(rec.lane()),
                            id_of(rec)
                        ));
                    }
                    let mut so = std::io::stdout().lock();
                    so.write_all(out.as_bytes()).unwrap();
                    so.flush().unwrap();
                }
            }));
        }
        // A consumer that drains and acks the alarms lane, so acks and block deletion crash too.
        let b = r.buffer.clone();
        tasks.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                let got = b
                    .read("forwarder", Lane::Alarms, None, 50, usize::MAX)
                    .unwrap();
                if let Some(last) = got.last() {
                    {
                        let mut so = std::io::stdout().lock();
                        writeln!(so, "ACK a {}", last.seq).unwrap();
                        so.flush().unwrap();
                    }
                    b.ack("forwarder", Lane::Alarms, last.seq).unwrap();
                }
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
        }));
        for t in tasks {
            t.await.unwrap();
        }
        r.close().await;
    });
}

#[test]
fn every_printed_seq_survives_sigkill_at_random_moments() {
    if let Ok(dir) = std::env::var(CHILD_ENV) {
        let trial = std::env::var("BUFFER_CRASH_TRIAL")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        child(Path::new(&dir), trial);
        return;
    }
    let trials: u64 = std::env::var("BUFFER_CRASH_TRIALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let seed: u64 = std::env::var("BUFFER_CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("crash test: {trials} trials, BUFFER_CRASH_SEED={seed}");
    let mut rng = Rng(seed);
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    // seq -> (lane, record id), over every trial.
    let mut printed: BTreeMap<u64, (char, u64)> = BTreeMap::new();
    let mut acked_alarms = 0u64;
    let mut total_printed = 0usize;

    for trial in 1..=trials {
        let mut child = Command::new(&exe)
            .args([TEST_NAME, "--exact", "--nocapture", "--test-threads", "1"])
            .env(CHILD_ENV, dir.path())
            .env("BUFFER_CRASH_TRIAL", trial.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut lines = Vec::new();
            let mut r = BufReader::new(stdout);
            let mut buf = Vec::new();
            while r.read_until(b'\n', &mut buf).unwrap_or(0) > 0 {
                // A line cut by the kill has no newline: it was never fully printed.
                if buf.ends_with(b"\n") {
                    lines.push(String::from_utf8_lossy(&buf).trim_end().to_string());
                }
                buf.clear();
            }
            lines
        });
        std::thread::sleep(Duration::from_millis(40 + rng.below(260)));
        kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL).unwrap();
        child.wait().unwrap();
        let lines = reader.join().unwrap();

        let mut this_trial = 0;
        let first_lines: Vec<String> = lines.iter().take(4).cloned().collect();
        for line in &lines {
            // libtest prints "test <name> ... " without a newline before the test body runs,
            // so the child's first line arrives glued to it: parse from our own marker.
            let Some(at) = ["SEQ ", "ACK "].iter().filter_map(|m| line.find(m)).min() else {
                continue;
            };
            let parts: Vec<&str> = line[at..].split_whitespace().collect();
            match parts.as_slice() {
                ["SEQ", lane, seq, id] => {
                    let seq: u64 = seq.parse().unwrap();
                    let lane = lane.chars().next().unwrap();
                    let id: u64 = id.parse().unwrap();
                    let prev = printed.insert(seq, (lane, id));
                    assert!(
                        prev.is_none(),
                        "seq {seq} handed out twice (trial {trial}, seed {seed})"
                    );
                    this_trial += 1;
                }
                ["ACK", "a", seq] => acked_alarms = acked_alarms.max(seq.parse().unwrap()),
                _ => {}
            }
        }
        total_printed += this_trial;

        // Reopen in the parent (no committer needed to read) and check.
        let (buffer, committer) = open_retrying(dir.path());
        for lane in Lane::ALL {
            let got = read_everything(&buffer, lane);
            assert!(
                got.windows(2).all(|w| w[0].0 < w[1].0),
                "lane {lane} out of order (trial {trial}, seed {seed})"
            );
            let present: HashSet<u64> = got.iter().map(|g| g.0).collect();
            let by_seq: BTreeMap<u64, u64> = got.iter().copied().collect();
            for (&seq, &(l, id)) in &printed {
                if l != lane_char(lane) || (lane == Lane::Alarms && seq <= acked_alarms) {
                    continue;
                }
                if !present.contains(&seq) {
                    let st = buffer.stats();
                    let near: Vec<u64> = got
                        .iter()
                        .map(|g| g.0)
                        .filter(|s| s.abs_diff(seq) < 40)
                        .collect();
                    let kept = dir.keep();
                    panic!(
                        "durable seq {seq} ({lane}) lost after kill in trial {trial} (seed {seed}); \
                         acked cursor {:?}, printed acks up to {acked_alarms}, near: {near:?}, \
                         stats: {st:?}, db kept at {}, first lines of the trial {first_lines:?}",
                        buffer.acked("forwarder", lane),
                        kept.display()
                    );
                }
                assert_eq!(
                    by_seq[&seq], id,
                    "seq {seq} holds another record (seed {seed})"
                );
            }
        }
        drop(committer);
        drop(buffer);
    }
    eprintln!("crash test: {total_printed} durable seqs checked across {trials} kills");
    assert!(total_printed > 0, "the child never got to append anything");
}

fn open_retrying(dir: &Path) -> (Buffer, gateway_buffer::Committer) {
    for _ in 0..500 {
        match Buffer::open(options(dir)) {
            Ok(x) => return x,
            Err(e) if e.is_retryable() => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => panic!("reopen after kill: {e}"),
        }
    }
    panic!("database still locked 5 s after the child died");
}

/// (seq, record id) of the whole lane from the forwarder's cursor.
fn read_everything(b: &Buffer, lane: Lane) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut after = None;
    loop {
        let got = b.read("forwarder", lane, after, 5000, usize::MAX).unwrap();
        let Some(last) = got.last() else {
            return out;
        };
        after = Some(last.seq);
        out.extend(got.iter().map(|s| (s.seq, id_of(&s.record))));
    }
}
