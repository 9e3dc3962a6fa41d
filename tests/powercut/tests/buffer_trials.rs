//! Power-cut trials of `gateway_buffer::Buffer`: a child process (this test binary,
//! re-executed) appends from several concurrent appenders into a buffer on the power-cut
//! filesystem and prints every seq once `append` returned it. At a random moment the test cuts
//! the power, SIGKILLs the child, restores the disk (only what was fsynced survives), reopens
//! the buffer and checks that every printed seq is there, holds its record, in order, and that
//! the database opened without being moved aside.
//!
//! Trials accumulate on one disk, as on a gateway that loses power again and again.
//! `POWERCUT_TRIALS` (default 20) sets the number of cuts per test, `POWERCUT_SEED` replays a
//! run, `POWERCUT_JOURNALED=1` switches the disk to the lenient ext4-like namespace rule.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use gateway_buffer::{
    AlarmEvent, AlarmState, Buffer, BufferOptions, Lane, Reading, Record, Severity, Source,
};
use powercut::{Options, PowerCutMount, Rng, env_u64};

const CHILD_DIR_ENV: &str = "POWERCUT_BUFFER_CHILD_DIR";
const CHILD_TRIAL_ENV: &str = "POWERCUT_BUFFER_CHILD_TRIAL";
const CHILD_TEST_ENV: &str = "POWERCUT_BUFFER_CHILD_TEST";
const APPENDERS: u64 = 4;
/// The child appends for at most this long; a trial cuts far earlier.
const CHILD_LIFETIME: Duration = Duration::from_secs(30);
/// How long the parent waits for the child's first durable append.
const FIRST_APPEND_TIMEOUT: Duration = Duration::from_secs(30);

fn options(dir: &Path) -> BufferOptions {
    let mut o = BufferOptions::new(dir);
    o.commit_interval_ms = 1;
    o.cache_capacity_bytes = 1024 * 1024;
    o
}

/// A record whose value carries its identity, so the parent can check seq -> record.
fn record(id: u64) -> Record {
    if id.is_multiple_of(7) {
        Record::Alarm(AlarmEvent {
            alarm: "overheat".into(),
            state: AlarmState::Raised,
            severity: Severity::Critical,
            device: "dev-7".into(),
            metric: "temperature".into(),
            value: id as f64,
            threshold: Some(35.0),
            ts_ms: 1_764_081_600_000,
        })
    } else {
        Record::Reading(Reading {
            device: "dev-0042".into(),
            metric: "temperature".into(),
            value: id as f64,
            unit: Some("C".into()),
            ts_ms: 1_764_081_600_000,
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

fn lane_char(l: Lane) -> char {
    match l {
        Lane::Alarms => 'a',
        Lane::Readings => 'r',
    }
}

/// The child: append until killed, printing `SEQ <lane> <seq> <id>` after each append
/// returned, and `ACK a <seq>` *before* acking the alarms lane (so acks crash too).
fn child(dir: &Path, trial: u64) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        // The parent checked the previous trial's disk with its own buffer, just dropped:
        // sled's threads there may hold the lock a moment longer.
        let (buffer, committer) = open_retrying(dir);
        let shutdown = tokio_util::sync::CancellationToken::new();
        let committer = tokio::spawn(committer.run(shutdown.clone()));
        let deadline = Instant::now() + CHILD_LIFETIME;
        let mut tasks = Vec::new();
        for t in 0..APPENDERS {
            let b = buffer.clone();
            tasks.push(tokio::spawn(async move {
                let mut rng = Rng(trial * 1000 + t);
                let mut counter = 0u64;
                while Instant::now() < deadline {
                    let n = 1 + rng.below(20);
                    let records: Vec<Record> = (0..n)
                        .map(|_| {
                            counter += 1;
                            // Unique across trials and appenders, exact in an f64.
                            record((trial * 10 + t) << 32 | counter)
                        })
                        .collect();
                    // After a cut appends fail with EIO: stop quietly, never print.
                    let Ok(seqs) = b.append(records.clone()).await else {
                        return;
                    };
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
        let b = buffer.clone();
        tasks.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                let Ok(got) = b.read("forwarder", Lane::Alarms, None, 50, usize::MAX) else {
                    return;
                };
                if let Some(last) = got.last() {
                    {
                        let mut so = std::io::stdout().lock();
                        writeln!(so, "ACK a {}", last.seq).unwrap();
                        so.flush().unwrap();
                    }
                    if b.ack("forwarder", Lane::Alarms, last.seq).is_err() {
                        return;
                    }
                }
                // Pacing of a consumer, not a correctness wait.
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
        }));
        for t in tasks {
            let _ = t.await;
        }
        shutdown.cancel();
        let _ = committer.await;
    });
}

/// Everything the children printed, over all trials.
#[derive(Default)]
struct Printed {
    /// seq -> (lane, record id).
    seqs: BTreeMap<u64, (char, u64)>,
    /// Highest alarms seq the consumer (may have) acked.
    acked_alarms: u64,
}

impl Printed {
    /// Parse one child's lines; returns how many seqs were new.
    fn take(&mut self, lines: &[String], trial: u64, seed: u64) -> usize {
        let mut n = 0;
        for line in lines {
            // libtest prints "test <name> ... " without a newline before the body runs.
            let Some(at) = ["SEQ ", "ACK "].iter().filter_map(|m| line.find(m)).min() else {
                continue;
            };
            let parts: Vec<&str> = line[at..].split_whitespace().collect();
            match parts.as_slice() {
                ["SEQ", lane, seq, id] => {
                    let seq: u64 = seq.parse().unwrap();
                    let prev = self
                        .seqs
                        .insert(seq, (lane.chars().next().unwrap(), id.parse().unwrap()));
                    assert!(
                        prev.is_none(),
                        "seq {seq} handed out twice (trial {trial}, POWERCUT_SEED={seed})"
                    );
                    n += 1;
                }
                ["ACK", "a", seq] => {
                    self.acked_alarms = self.acked_alarms.max(seq.parse().unwrap());
                }
                _ => {}
            }
        }
        n
    }
}

/// (seq, record id) of a whole lane from the forwarder's cursor.
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

fn open_retrying(dir: &Path) -> (Buffer, gateway_buffer::Committer) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match Buffer::open(options(dir)) {
            Ok(x) => return x,
            // The lock of a database just dropped by this process (or, for a child, by the
            // parent checking the previous trial): sled's threads finish.
            Err(e) if e.is_retryable() && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10))
            }
            Err(e) => panic!("reopen after the power cut: {e}"),
        }
    }
}

/// Run `trials` power cuts against one disk. Panics with the exact sequence on any loss.
fn run_trials(test: &str, disk_options: Options, trials: u64, seed: u64) {
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let mut disk = PowerCutMount::mount(&dir.path().join("backing"), &mnt, disk_options).unwrap();
    // The gateway's data directory exists and is durable (created at install time).
    let data: PathBuf = mnt.join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::File::open(&mnt).unwrap().sync_all().unwrap();

    eprintln!("{test}: {trials} power cuts, POWERCUT_SEED={seed}, disk {disk_options:?}");
    let mut rng = Rng(seed);
    let exe = std::env::current_exe().unwrap();
    let mut printed = Printed::default();
    let started = Instant::now();
    let child_stderr = dir.path().join("child.stderr");
    for trial in 1..=trials {
        let mut child = Command::new(&exe)
            .args([test, "--exact", "--nocapture", "--test-threads", "1"])
            .env(CHILD_DIR_ENV, &data)
            .env(CHILD_TRIAL_ENV, trial.to_string())
            .env(CHILD_TEST_ENV, test)
            .stdout(Stdio::piped())
            // Kept (outside the power-cut disk) for the report if the child fails.
            .stderr(std::fs::File::create(&child_stderr).unwrap())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel::<String>();
        let reader = std::thread::spawn(move || {
            let mut r = BufReader::new(stdout);
            let mut buf = Vec::new();
            while r.read_until(b'\n', &mut buf).unwrap_or(0) > 0 {
                // A line cut by the kill has no newline: it was never fully printed.
                if buf.ends_with(b"\n") {
                    let _ = tx.send(String::from_utf8_lossy(&buf).trim_end().to_string());
                }
                buf.clear();
            }
        });
        // Under load first: wait for the first acknowledged append, then cut at a random
        // moment within the next 300 ms (the randomness is the point, not a wait for state).
        let mut lines = Vec::new();
        let wait_until = Instant::now() + FIRST_APPEND_TIMEOUT;
        loop {
            let left = wait_until.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(l) => {
                    let first = l.contains("SEQ ");
                    lines.push(l);
                    if first {
                        break;
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    let stderr = std::fs::read_to_string(&child_stderr).unwrap_or_default();
                    let tail: Vec<&str> = stderr.lines().rev().take(30).collect();
                    panic!(
                        "trial {trial}: the child never acknowledged an append (lines: {lines:?}, \
                         POWERCUT_SEED={seed}); its stderr ends:\n{}",
                        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                    );
                }
            }
        }
        std::thread::sleep(Duration::from_millis(rng.below(300)));
        disk.cut_power();
        child.kill().unwrap();
        child.wait().unwrap();
        reader.join().unwrap();
        lines.extend(rx.try_iter());
        let new = printed.take(&lines, trial, seed);
        disk.restore_power().unwrap();

        let (buffer, committer) = open_retrying(&data);
        let moved_aside = buffer.stats().moved_aside;
        let mut lost = Vec::new();
        for lane in Lane::ALL {
            let got = read_everything(&buffer, lane);
            assert!(
                got.windows(2).all(|w| w[0].0 < w[1].0),
                "lane {lane} out of order after power cut {trial} (POWERCUT_SEED={seed})"
            );
            let by_seq: BTreeMap<u64, u64> = got.iter().copied().collect();
            for (&seq, &(l, id)) in &printed.seqs {
                if l != lane_char(lane) || (lane == Lane::Alarms && seq <= printed.acked_alarms) {
                    continue;
                }
                match by_seq.get(&seq) {
                    None => lost.push(seq),
                    Some(&got_id) => assert_eq!(
                        got_id, id,
                        "seq {seq} holds another record after power cut {trial} \
                         (POWERCUT_SEED={seed})"
                    ),
                }
            }
        }
        if moved_aside > 0 || !lost.is_empty() {
            let stats = disk.stats();
            let kept = dir.keep();
            let listing = list(&kept.join("backing"));
            panic!(
                "{test}: acknowledged data lost at power cut {trial} of {trials} \
                 (POWERCUT_SEED={seed}): database moved aside: {moved_aside}; {} of {} \
                 acknowledged seqs missing (first {:?}); this trial acknowledged {new}; \
                 disk stats {stats:?}; backing kept at {} ({listing})",
                lost.len(),
                printed.seqs.len(),
                &lost[..lost.len().min(10)],
                kept.display()
            );
        }
        drop(committer);
        drop(buffer);
    }
    eprintln!(
        "{test}: {} acknowledged seqs checked across {trials} power cuts in {:.1?}, none lost; \
         disk {:?}",
        printed.seqs.len(),
        started.elapsed(),
        disk.stats()
    );
    assert!(
        !printed.seqs.is_empty(),
        "the children never appended anything"
    );
}

fn list(dir: &Path) -> String {
    let mut out = Vec::new();
    for sub in ["live", "durable"] {
        let n = std::fs::read_dir(dir.join(sub))
            .map(|d| d.count())
            .unwrap_or(0);
        out.push(format!("{sub}/: {n} files"));
    }
    out.join(", ")
}

/// Common entry: child mode, FUSE check, trial count and seed from the environment.
fn trial_test(test: &str, torn_writes: bool) {
    if let (Ok(t), Ok(dir)) = (std::env::var(CHILD_TEST_ENV), std::env::var(CHILD_DIR_ENV))
        && t == test
    {
        child(Path::new(&dir), env_u64(CHILD_TRIAL_ENV).unwrap_or(0));
        return;
    }
    if !powercut::require_fuse(test) {
        return;
    }
    let trials = env_u64("POWERCUT_TRIALS").unwrap_or(20);
    let seed = powercut::seed();
    let options = Options {
        torn_writes,
        seed,
        journaled_namespace: std::env::var("POWERCUT_JOURNALED").as_deref() == Ok("1"),
    };
    run_trials(test, options, trials, seed);
}

#[test]
fn acknowledged_appends_survive_power_cuts() {
    trial_test("acknowledged_appends_survive_power_cuts", false);
}

#[test]
fn acknowledged_appends_survive_power_cuts_with_torn_writes() {
    trial_test(
        "acknowledged_appends_survive_power_cuts_with_torn_writes",
        true,
    );
}
