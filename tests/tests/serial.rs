//! Serial ingest over a real pty pair (socat): every line form of WIRE.md §2 at 115200 baud,
//! with noise, a bad checksum and an overlong line; then the pty is closed and a new one opened
//! at the same path. Good readings all arrive; bad lines are counted by reason.

use gateway_tests::workload::{self, Expected, compare};
use gateway_tests::{GatewayProcess, GatewaySpec, MqttSetup, PtyPair, Upstream, wait_until};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

const BAUD: u32 = 115_200;

fn checksummed(body: &str) -> String {
    let x = body.bytes().fold(0u8, |a, b| a ^ b);
    format!("{body}*{x:02X}")
}

/// The lines of one phase and the readings they must become; `n0` keeps values unique.
fn good_lines(phase: i64, count: i64) -> (String, Vec<Expected>) {
    let mut text = String::new();
    let mut exp = Vec::new();
    let e = |device: &str, metric: &str, value: f64, ts: Option<i64>| Expected {
        device: device.into(),
        metric: metric.into(),
        value,
        ts,
    };
    for i in 0..count {
        let n = phase * 10_000 + i;
        let ts = workload::BASE_TS_MS + n;
        let v = n as f64 * 0.5;
        match i % 6 {
            0 => {
                text += &format!("dev-3,temperature,{v},{ts}\n");
                exp.push(e("dev-3", "temperature", v, Some(ts)));
            }
            1 => {
                // No ts: the gateway's receive time; matched on value.
                text += &format!("dev-3,counter,{v}\r\n");
                exp.push(e("dev-3", "counter", v, None));
            }
            2 => {
                text += &format!(
                    "{{\"device\":\"dev-4\",\"metric\":\"pressure\",\"value\":{v},\"ts\":{ts}}}\n"
                );
                exp.push(e("dev-4", "pressure", v, Some(ts)));
            }
            3 => {
                text += &format!(
                    "{{\"device\":\"dev-4\",\"ts\":{ts},\"temperature\":{v},\"humidity\":{}}}\r\n",
                    v + 1.0
                );
                exp.push(e("dev-4", "temperature", v, Some(ts)));
                exp.push(e("dev-4", "humidity", v + 1.0, Some(ts)));
            }
            4 => {
                text += &format!("{}\n", checksummed(&format!("dev-5,temperature,{v},{ts}")));
                exp.push(e("dev-5", "temperature", v, Some(ts)));
            }
            _ => {
                // metric,value,ts: the port's own device.
                text += &format!("{}\r\n", checksummed(&format!("level,{v},{ts}")));
                exp.push(e("uart-0", "level", v, Some(ts)));
            }
        }
    }
    (text, exp)
}

async fn serial_count(gw: &mut GatewayProcess) -> u64 {
    gw.status().await["ingest"]["readings"]["serial"]
        .as_u64()
        .unwrap_or(0)
}

/// Writes probe lines until the gateway counts a new serial reading (the port is open).
async fn wait_port_open(gw: &mut GatewayProcess, pty: &mut PtyPair) {
    let before = serial_count(gw).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut n = 0;
    loop {
        n += 1;
        pty.write(format!("{},ready,{n}\n", workload::PROBE_DEVICE).as_bytes());
        let until = Instant::now() + Duration::from_millis(300);
        while Instant::now() < until {
            if serial_count(gw).await > before {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        assert!(
            Instant::now() < deadline,
            "the gateway did not read the pty within 60 s\n{}",
            gw.stderr_tail()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serial_lines_over_a_pty_arrive_bad_lines_are_counted_and_a_reopened_port_is_read_again() {
    if !PtyPair::available() {
        test_peers::missing(
            "serial",
            "socat is not installed (this test needs a pty pair)",
            "apt-get install socat",
        );
        return;
    }
    let started = Instant::now();
    let ptys = tempfile::tempdir().expect("temp dir");
    let mut pty = PtyPair::open(ptys.path());
    let receiver = Upstream::start().await;
    let mut spec = GatewaySpec::new(MqttSetup::Disabled, &receiver.url());
    spec.tables = format!(
        "[[serial]]\nport = \"{}\"\nbaud = {BAUD}\ndevice = \"uart-0\"\nmax_line_bytes = 256\nreopen_max_ms = 500\n",
        pty.gateway_end().display()
    );
    let mut gw = GatewayProcess::start(&spec);
    gw.wait_ready().await;
    wait_port_open(&mut gw, &mut pty).await;

    // Phase 1: good lines with every kind of bad line among them.
    let (a, mut expected) = good_lines(1, 60);
    let (b, more) = good_lines(2, 60);
    expected.extend(more);
    let mut bytes = a.into_bytes();
    bytes.extend((0..200u32).map(|i| 0x80 | (i * 37 % 128) as u8)); // binary noise burst
    bytes.push(b'\n');
    bytes.extend(b"dev-5,temperature,99.5,1764081600000*00\n"); // wrong checksum
    bytes.extend(vec![b'7'; 1000]); // longer than max_line_bytes
    bytes.push(b'\n');
    bytes.extend(b.into_bytes());
    pty.write_at_baud(&bytes, BAUD).await;
    let want_phase1 = expected.len();

    let probes = |r: &workload::UpReading| r.device == workload::PROBE_DEVICE;
    wait_until(
        "phase 1 readings at the receiver",
        Duration::from_secs(60),
        || async {
            let got = workload::parse_readings(&receiver.delivered_records("readings"));
            (got.iter().filter(|r| !probes(r)).count() >= want_phase1).then_some(())
        },
    )
    .await;

    // Close the pty (socat exits) and make a new one at the same path.
    pty.close();
    gw.wait_status(
        "the gateway to notice the pty closed",
        Duration::from_secs(30),
        |s| (s["ingest"]["source_disconnects"].as_u64()? >= 1).then_some(()),
    )
    .await;
    pty.reopen();
    wait_port_open(&mut gw, &mut pty).await;
    let (c, more) = good_lines(3, 60);
    expected.extend(more);
    pty.write_at_baud(c.as_bytes(), BAUD).await;

    let want = expected.len();
    wait_until(
        &format!("{want} serial readings at the receiver"),
        Duration::from_secs(60),
        || async {
            let got = workload::parse_readings(&receiver.delivered_records("readings"));
            (got.iter().filter(|r| !probes(r)).count() >= want).then_some(())
        },
    )
    .await;
    let delivered = workload::parse_readings(&receiver.delivered_records("readings"));
    let cmp = compare(&expected, &[], &delivered);
    assert!(
        cmp.missing.is_empty() && cmp.unexpected.is_empty() && cmp.duplicates == 0,
        "{}",
        cmp.describe()
    );
    assert!(delivered.iter().all(|r| r.source == "serial"));

    let status = gw.status().await;
    let rejected: BTreeMap<String, u64> = status["ingest"]["rejected"]
        .as_object()
        .expect("ingest.rejected")
        .iter()
        .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0)))
        .collect();
    let want_rejected: BTreeMap<String, u64> = [
        ("bad_utf8".to_owned(), 1),
        ("bad_checksum".to_owned(), 1),
        ("line_too_long".to_owned(), 1),
    ]
    .into();
    assert_eq!(rejected, want_rejected, "{status:#}");
    eprintln!(
        "serial: {want} readings over a pty (closed and reopened once), 3 bad lines counted; {:.1} s",
        started.elapsed().as_secs_f64()
    );
}
