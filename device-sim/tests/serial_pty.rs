//! Serial output over a real pty, the command line, and byte-identical seeded runs.

mod common;

use nix::poll::{PollFd, PollFlags, poll};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::AsFd;
use std::process::{Command, Stdio};
use std::sync::atomic::AtomicBool;

use common::{Decoded, decode_line};
use device_sim::{LineForm, SerialConfig, open_pty, run_serial};

const START: i64 = 1_764_081_600_000;
const BIN: &str = env!("CARGO_BIN_EXE_device-sim");

/// Counts bytes so the reader knows when it has everything.
struct Counting<W> {
    inner: W,
    bytes: u64,
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

#[test]
fn serial_lines_over_a_real_pty_decode_per_contract_and_match_the_records() {
    let pty = open_pty().unwrap();
    assert!(
        pty.path().starts_with("/dev/pts"),
        "{}",
        pty.path().display()
    );
    let mut reader = pty.slave_reader().unwrap();
    // Read concurrently: a pty buffer holds only a few KiB.
    let (tx, rx) = std::sync::mpsc::channel::<u64>();
    let reading = std::thread::spawn(move || {
        let mut all = Vec::new();
        let mut buf = [0u8; 4096];
        let mut target = None;
        loop {
            if target.is_none() {
                target = rx.try_recv().ok();
            }
            if target.is_some_and(|t| all.len() as u64 >= t) {
                return all;
            }
            // Wait for bytes at most 100 ms, then look for the target again: the reader may
            // have taken every byte before the writer said how many there were.
            let mut fds = [PollFd::new(reader.as_fd(), PollFlags::POLLIN)];
            if poll(&mut fds, 100u16).unwrap() == 0 {
                continue;
            }
            let n = reader.read(&mut buf).unwrap();
            all.extend_from_slice(&buf[..n]);
        }
    });
    let cfg = SerialConfig {
        devices: 3,
        count: Some(40),
        form: LineForm::Mix,
        checksum: true,
        noise: 0.1,
        crlf: true,
        fast: true,
        seed: 5,
        start_ts_ms: Some(START),
        record_sent: true,
        ..SerialConfig::default()
    };
    let mut w = Counting {
        inner: pty.writer().unwrap(),
        bytes: 0,
    };
    let report = run_serial(&cfg, &mut w, &AtomicBool::new(false)).unwrap();
    tx.send(w.bytes).unwrap();
    let bytes = reading.join().unwrap();
    assert_eq!(bytes.len() as u64, w.bytes);

    let mut decoded: Vec<Decoded> = Vec::new();
    let mut dropped = 0u64;
    let lines: Vec<&[u8]> = bytes.split(|b| *b == b'\n').collect();
    assert_eq!(lines.last(), Some(&&b""[..]), "ends with a terminator");
    for line in &lines[..lines.len() - 1] {
        assert!(line.ends_with(b"\r"), "CRLF terminators");
        assert!(line.len() <= 1024);
        match decode_line(line) {
            Some(d) => decoded.extend(d),
            None => dropped += 1,
        }
    }
    let s = &report.summary;
    assert_eq!(dropped, s.totals.noise_lines);
    assert!(s.totals.noise_lines > 0);
    let expected: Vec<Decoded> = report
        .records
        .iter()
        .map(|r| (r.device.clone(), r.metric.clone(), r.value, r.ts))
        .collect();
    assert_eq!(
        decoded, expected,
        "readings arrive in order, none lost or invented"
    );
    assert_eq!(decoded.len() as u64, s.totals.readings_sent);
    assert_eq!(s.totals.readings_written, s.totals.readings_sent);
    let total_readings: u64 = 3 * 40 * 3;
    assert!(
        s.totals.readings_sent < total_readings,
        "corrupted lines are not counted"
    );
    assert!(s.totals.readings_sent > total_readings * 8 / 10);
}

fn run_cli(args: &[&str]) -> std::process::Output {
    let out = Command::new(BIN).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[test]
fn serial_runs_with_the_same_seed_are_byte_identical() {
    let dir = tempfile::tempdir().unwrap();
    let path = |n: &str| dir.path().join(n).to_string_lossy().into_owned();
    let run = |name: &str, seed: &str| {
        let out = path(name);
        run_cli(&[
            "serial",
            "--tty",
            &out,
            "--fast",
            "--devices",
            "4",
            "--count",
            "50",
            "--form",
            "mix",
            "--checksum",
            "--noise",
            "0.05",
            "--seed",
            seed,
            "--start-ts-ms",
            "1764081600000",
            "--scenario",
            "garbage:fraction=0.1",
            "--scenario",
            "spike:at=10s,for=20s",
            "--metrics",
            "temperature,humidity,pressure,battery",
            "--summary-json",
            &path(&format!("{name}.json")),
            "--record-sent",
            &path(&format!("{name}.jsonl")),
        ]);
        std::fs::read(out).unwrap()
    };
    let a = run("a", "9");
    let b = run("b", "9");
    let c = run("c", "10");
    assert!(!a.is_empty());
    assert_eq!(a, b);
    assert_ne!(a, c);
    assert_eq!(
        std::fs::read(path("a.jsonl")).unwrap(),
        std::fs::read(path("b.jsonl")).unwrap()
    );
    let summary: device_sim::Summary =
        serde_json::from_slice(&std::fs::read(path("a.json")).unwrap()).unwrap();
    assert_eq!(summary.device_count, 4);
    assert_eq!(summary.metrics.len(), 4);
    assert!(summary.scenarios[0].garbage > 0);
    assert_eq!(summary.scenarios[1].affected, 4 * 20);
    let records =
        device_sim::summary::read_records(std::path::Path::new(&path("a.jsonl"))).unwrap();
    assert_eq!(records.len() as u64, summary.totals.readings_sent);
}

#[test]
fn cli_pty_mode_prints_the_path_and_serves_lines_to_whoever_opens_it() {
    let mut child = Command::new(BIN)
        .args([
            "serial",
            "--pty",
            "--devices",
            "2",
            "--count",
            "5",
            "--fast",
            "--linger-s",
            "3",
            "--form",
            "csv",
            "--checksum",
            "--start-ts-ms",
            "1764081600000",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    stdout.read_line(&mut first).unwrap();
    let path = first
        .trim()
        .strip_prefix("PTY ")
        .expect("PTY <path> line")
        .to_owned();
    let port = std::fs::File::open(&path).unwrap();
    let mut lines = BufReader::new(port);
    let mut got = Vec::new();
    while got.len() < 30 {
        let mut line = Vec::new();
        lines.read_until(b'\n', &mut line).unwrap();
        let line = line.strip_suffix(b"\n").unwrap();
        let d = decode_line(line).expect("valid line with a good checksum");
        assert!(line.contains(&b'*'));
        got.extend(d);
    }
    assert_eq!(got[0].0, "dev-0001");
    assert_eq!(got[0].3, Some(START));
    assert!(got.iter().all(|d| d.3.is_some()));
    let status = child.wait().unwrap();
    assert!(status.success());
}

#[test]
fn help_shows_worked_examples() {
    for args in [&["--help"][..], &["mqtt", "--help"], &["serial", "--help"]] {
        let out = run_cli(args);
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(text.contains("Examples:"), "{args:?}");
        assert!(text.contains("spike:at=20s"), "{args:?}");
        assert!(text.contains("--pty"), "{args:?}");
    }
}

#[test]
fn bad_arguments_are_rejected_with_the_problem_named() {
    let out = Command::new(BIN)
        .args(["mqtt", "--scenario", "spike:size=3"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("size"));
    let out = Command::new(BIN).args(["serial"]).output().unwrap();
    assert!(!out.status.success());
}
