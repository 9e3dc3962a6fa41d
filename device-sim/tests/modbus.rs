//! `device-sim modbus` against an independent client (tokio-modbus): the real binary over TCP on
//! port 0 and over a real pty, every register of the map, every fault, hostile peers, and the
//! summary counts matching what the client did.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio_modbus::client::{Context, Reader, rtu, tcp};
use tokio_modbus::prelude::{ExceptionCode, Request, Slave, SlaveContext};
use tokio_serial::SerialPortBuilderExt;

const BIN: &str = env!("CARGO_BIN_EXE_device-sim");
/// How long a client waits for an answer before it calls the slave silent.
const CALL_TIMEOUT: Duration = Duration::from_millis(1500);
/// Generous bound for anything the simulator should do promptly on a loaded machine.
const DEADLINE: Duration = Duration::from_secs(20);
/// RTU tests run fast; the pacing still applies.
const BAUD: u32 = 115_200;

/// A running `device-sim modbus`, stopped with SIGTERM.
struct Sim {
    child: Child,
    /// What follows `TCP ` or `PTY ` on the first stdout line.
    endpoint: String,
    summary: PathBuf,
    _dir: tempfile::TempDir,
}

impl Sim {
    fn start(args: &[&str]) -> Sim {
        let dir = tempfile::tempdir().unwrap();
        let summary = dir.path().join("summary.json");
        let mut child = Command::new(BIN)
            .arg("modbus")
            .args(args)
            .arg("--summary-json")
            .arg(&summary)
            .arg("--quiet")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(DEADLINE).expect("the endpoint line");
        let (kind, endpoint) = line.trim_end().split_once(' ').expect("KIND ENDPOINT");
        assert!(["TCP", "PTY"].contains(&kind), "{line:?}");
        Sim {
            child,
            endpoint: endpoint.to_owned(),
            summary,
            _dir: dir,
        }
    }

    fn addr(&self) -> SocketAddr {
        self.endpoint.parse().unwrap()
    }

    /// SIGTERM, wait for a clean exit, read the summary.
    fn stop(mut self) -> Value {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
        self.wait_summary()
    }

    fn wait_summary(&mut self) -> Value {
        let deadline = Instant::now() + DEADLINE;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < deadline, "device-sim did not stop");
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(status.success(), "{status}");
        serde_json::from_str(&std::fs::read_to_string(&self.summary).unwrap()).unwrap()
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The summary counts of one unit: requests, answered, exceptions, unanswered, corrupted.
fn counts(summary: &Value, unit: u64) -> [u64; 5] {
    let u = summary["units"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["unit"] == unit)
        .unwrap_or_else(|| panic!("unit {unit} in {summary}"));
    [
        "requests",
        "answered",
        "exceptions",
        "unanswered",
        "corrupted",
    ]
    .map(|k| u[k].as_u64().unwrap_or_else(|| panic!("{k} in {u}")))
}

async fn tcp_client(addr: SocketAddr, unit: u8) -> Context {
    tcp::connect_slave(addr, Slave(unit)).await.unwrap()
}

fn rtu_client(path: &str, unit: u8) -> Context {
    let port = tokio_serial::new(path, BAUD).open_native_async().unwrap();
    rtu::attach_slave(port, Slave(unit))
}

/// What one call came back with.
#[derive(Debug, PartialEq)]
enum Outcome<T> {
    Ok(T),
    Exception(ExceptionCode),
    /// A transport or framing error, or no answer within [`CALL_TIMEOUT`].
    Failed,
}

async fn call<T>(fut: impl std::future::Future<Output = tokio_modbus::Result<T>>) -> Outcome<T> {
    match tokio::time::timeout(CALL_TIMEOUT, fut).await {
        Ok(Ok(Ok(v))) => Outcome::Ok(v),
        Ok(Ok(Err(code))) => Outcome::Exception(code),
        Ok(Err(_)) | Err(_) => Outcome::Failed,
    }
}

async fn holding(ctx: &mut Context, address: u16, quantity: u16) -> Vec<u16> {
    match call(ctx.read_holding_registers(address, quantity)).await {
        Outcome::Ok(v) => v,
        other => panic!("holding {address}+{quantity}: {other:?}"),
    }
}

async fn input(ctx: &mut Context) -> Vec<u16> {
    match call(ctx.read_input_registers(0, 14)).await {
        Outcome::Ok(v) => v,
        other => panic!("input registers: {other:?}"),
    }
}

fn u32_of(hi: u16, lo: u16) -> u32 {
    u32::from(hi) << 16 | u32::from(lo)
}

/// Read every table of `unit` and check every value; `answered` is the unit's count of normal
/// answers so far. Returns the number of requests made (all answered normally).
async fn check_map(ctx: &mut Context, unit: u8, answered: u16) -> u64 {
    let h = holding(ctx, 0, 16).await;
    assert_eq!(h[0], 51234, "u16");
    assert_eq!(h[1] as i16, -1234, "i16");
    assert_eq!(u32_of(h[2], h[3]), 3_000_000_123, "u32 big word order");
    assert_eq!(u32_of(h[5], h[4]), 3_000_000_123, "u32 little word order");
    assert_eq!(
        u32_of(h[6], h[7]) as i32,
        -123_456_789,
        "i32 big word order"
    );
    assert_eq!(
        u32_of(h[9], h[8]) as i32,
        -123_456_789,
        "i32 little word order"
    );
    assert_eq!(
        f32::from_bits(u32_of(h[10], h[11])),
        230.5,
        "f32 big word order"
    );
    assert_eq!(
        f32::from_bits(u32_of(h[13], h[12])),
        230.5,
        "f32 little word order"
    );
    assert_eq!(h[14], u16::from(unit), "unit id");
    assert_eq!(h[15], answered, "answers before this one");

    let i = input(ctx).await;
    let f = |at: usize| f64::from(f32::from_bits(u32_of(i[at], i[at + 1])));
    let (t, rh, p, battery) = (f(0), f(2), f(4), f(6));
    assert!((-40.0..=80.0).contains(&t), "temperature {t}");
    assert!((0.0..=100.0).contains(&rh), "humidity {rh}");
    assert!((950.0..=1080.0).contains(&p), "pressure {p}");
    assert!((0.0..=100.0).contains(&battery), "battery {battery}");
    assert!(
        (f64::from(i[8] as i16) - t * 100.0).abs() <= 1.0,
        "{} vs {t}",
        i[8]
    );
    assert!(
        (f64::from(i[9]) - rh * 100.0).abs() <= 1.0,
        "{} vs {rh}",
        i[9]
    );
    assert!(
        (f64::from(u32_of(i[10], i[11])) - p * 100.0).abs() <= 1.0,
        "Pa vs {p}"
    );
    assert_eq!(
        [i[12], i[13]],
        [i[1], i[0]],
        "temperature in little word order"
    );

    let on = |a: u16| a.is_multiple_of(2);
    let coils = call(ctx.read_coils(0, 16)).await;
    assert_eq!(coils, Outcome::Ok((0..16).map(on).collect()));
    let discretes = call(ctx.read_discrete_inputs(0, 16)).await;
    assert_eq!(discretes, Outcome::Ok((0..16).map(|a| !on(a)).collect()));
    let some = call(ctx.read_coils(3, 5)).await;
    assert_eq!(some, Outcome::Ok(vec![false, true, false, true, false]));

    assert_eq!(holding(ctx, 15, 1).await, [answered + 5], "the count moved");
    6
}

fn refusal<T: std::fmt::Debug>(outcome: Outcome<T>) -> ExceptionCode {
    match outcome {
        Outcome::Exception(code) => code,
        other => panic!("expected an exception, got {other:?}"),
    }
}

/// Requests that a real slave refuses, with the code it refuses them with.
async fn check_exceptions(ctx: &mut Context) -> u64 {
    let refused = [
        (
            refusal(call(ctx.read_holding_registers(0, 17)).await),
            ExceptionCode::IllegalDataAddress,
        ),
        (
            refusal(call(ctx.read_input_registers(13, 2)).await),
            ExceptionCode::IllegalDataAddress,
        ),
        (
            refusal(call(ctx.read_discrete_inputs(16, 1)).await),
            ExceptionCode::IllegalDataAddress,
        ),
        (
            refusal(call(ctx.read_holding_registers(0, 126)).await),
            ExceptionCode::IllegalDataValue,
        ),
        (
            refusal(call(ctx.read_coils(0, 0)).await),
            ExceptionCode::IllegalDataValue,
        ),
    ];
    for (got, want) in refused {
        assert_eq!(got, want);
    }
    // A function code this slave does not implement, of a shape RTU cannot know beforehand.
    let custom = tokio::time::timeout(
        CALL_TIMEOUT,
        tokio_modbus::client::Client::call(ctx, Request::Custom(0x41, vec![1, 2, 3].into())),
    )
    .await;
    assert!(
        matches!(custom, Ok(Ok(Err(ExceptionCode::IllegalFunction)))),
        "{custom:?}"
    );
    refused.len() as u64 + 1
}

/// Poll the input registers until they change, proving they are live.
async fn wait_for_new_values(ctx: &mut Context) -> u64 {
    let first = input(ctx).await;
    let deadline = Instant::now() + DEADLINE;
    let mut requests = 1;
    loop {
        requests += 1;
        if input(ctx).await != first {
            return requests;
        }
        assert!(Instant::now() < deadline, "input registers never changed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn tcp_serves_every_register_of_the_map_to_an_independent_client() {
    let sim = Sim::start(&[
        "--tcp",
        "127.0.0.1:0",
        "--devices",
        "2",
        "--first-unit",
        "5",
        "--rate-hz",
        "20",
    ]);
    let mut five = tcp_client(sim.addr(), 5).await;
    let mut six = tcp_client(sim.addr(), 6).await;
    let mut normal = [check_map(&mut five, 5, 0).await, 0];
    normal[1] += check_map(&mut six, 6, 0).await;
    normal[0] += wait_for_new_values(&mut five).await;
    let refused = check_exceptions(&mut six).await;
    // Every connection may address every unit; one not served is refused with 0x0B.
    let mut other = tcp_client(sim.addr(), 7).await;
    assert_eq!(
        call(other.read_holding_registers(0, 1)).await,
        Outcome::Exception(ExceptionCode::GatewayTargetDevice)
    );
    other.set_slave(Slave(5));
    holding(&mut other, 0, 1).await;
    normal[0] += 1;

    let summary = sim.stop();
    assert_eq!(counts(&summary, 5), [normal[0], normal[0], 0, 0, 0]);
    assert_eq!(
        counts(&summary, 6),
        [normal[1] + refused, normal[1], refused, 0, 0]
    );
    assert_eq!(summary["units"].as_array().unwrap().len(), 2);
    assert_eq!(summary["other_unit_requests"], 1);
    assert_eq!(summary["connections"], 3);
    assert_eq!(summary["transport"], "tcp");
}

#[tokio::test]
async fn tcp_serves_connections_concurrently_and_closes_only_a_hostile_one() {
    let sim = Sim::start(&["--tcp", "127.0.0.1:0", "--devices", "3"]);
    // Half a request, then nothing: must not hold anyone else up.
    let mut stalled = TcpStream::connect(sim.addr()).unwrap();
    stalled.write_all(&[0, 1, 0, 0, 0, 6, 1, 3]).unwrap();
    // A header no Modbus peer sends: that connection, and only it, is closed.
    let mut hostile = TcpStream::connect(sim.addr()).unwrap();
    hostile
        .write_all(&[0, 1, 0, 7, 0, 6, 1, 3, 0, 0, 0, 1])
        .unwrap();
    hostile.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut rest = Vec::new();
    assert_eq!(
        hostile.read_to_end(&mut rest).unwrap(),
        0,
        "closed, no answer"
    );
    // A length beyond any PDU is refused the same way, without waiting for 65 KiB.
    let mut huge = TcpStream::connect(sim.addr()).unwrap();
    huge.write_all(&[0, 1, 0, 0, 0xFF, 0xFF, 1]).unwrap();
    huge.set_read_timeout(Some(DEADLINE)).unwrap();
    assert_eq!(huge.read_to_end(&mut rest).unwrap(), 0);

    let clients = (0..8u8).map(|k| {
        let addr = sim.addr();
        tokio::spawn(async move {
            let unit = 1 + k % 3;
            let mut ctx = tcp_client(addr, unit).await;
            for _ in 0..25 {
                assert_eq!(holding(&mut ctx, 14, 1).await, [u16::from(unit)]);
            }
            unit
        })
    });
    let mut per_unit = [0u64; 3];
    for c in clients.collect::<Vec<_>>() {
        per_unit[usize::from(c.await.unwrap() - 1)] += 25;
    }
    drop(stalled);

    let summary = sim.stop();
    for unit in 1..=3 {
        let n = per_unit[unit - 1];
        assert_eq!(counts(&summary, unit as u64), [n, n, 0, 0, 0]);
    }
    assert_eq!(summary["connections"], 11);
    assert_eq!(summary["bad_headers"], 2);
}

#[tokio::test]
async fn tcp_faults_silence_refuse_and_corrupt_exactly_as_specified() {
    let sim = Sim::start(&[
        "--tcp",
        "127.0.0.1:0",
        "--devices",
        "4",
        "--fault",
        "silent:unit=1",
        "--fault",
        "exception:unit=2,code=6",
        "--fault",
        "corrupt:unit=3,every=3",
        "--fault",
        "exception:unit=4,code=4,for=5s",
    ]);
    let addr = sim.addr();
    // A window first, while it is open: exception 4 until it closes, then normal answers.
    let mut ctx = tcp_client(addr, 4).await;
    let failure = Outcome::Exception(ExceptionCode::ServerDeviceFailure);
    assert_eq!(call(ctx.read_input_registers(0, 2)).await, failure);
    let deadline = Instant::now() + DEADLINE;
    let mut refused = 1;
    loop {
        match call(ctx.read_input_registers(0, 2)).await {
            Outcome::Ok(_) => break,
            got => assert_eq!(got, failure),
        }
        refused += 1;
        assert!(Instant::now() < deadline, "the window never closed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Silent: no answer, the connection stays open and serves the next unit.
    let mut ctx = tcp_client(addr, 1).await;
    for _ in 0..2 {
        assert_eq!(
            call(ctx.read_holding_registers(0, 1)).await,
            Outcome::Failed
        );
    }
    // Exception 6 on every request, whatever it asks.
    let mut ctx = tcp_client(addr, 2).await;
    for _ in 0..3 {
        let busy = Outcome::Exception(ExceptionCode::ServerDeviceBusy);
        assert_eq!(call(ctx.read_holding_registers(0, 1)).await, busy);
        assert_eq!(call(ctx.read_holding_registers(0, 100)).await, busy);
    }
    // Corrupt: the client fails on exactly every third answer; a new connection works at once.
    let mut ctx = tcp_client(addr, 3).await;
    let mut failed_at = Vec::new();
    for n in 1..=9 {
        match call(ctx.read_holding_registers(14, 2)).await {
            Outcome::Ok(regs) => assert_eq!(regs[0], 3),
            Outcome::Failed => {
                failed_at.push(n);
                ctx = tcp_client(addr, 3).await;
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(failed_at, [3, 6, 9]);
    let summary = sim.stop();
    assert_eq!(counts(&summary, 1), [2, 0, 0, 2, 0]);
    assert_eq!(counts(&summary, 2), [6, 0, 6, 0, 0]);
    assert_eq!(counts(&summary, 3), [9, 9, 0, 0, 3]);
    assert_eq!(counts(&summary, 4), [refused + 1, 1, refused, 0, 0]);
}

#[tokio::test]
async fn rtu_over_a_pty_serves_the_map_and_resynchronises_after_garbage() {
    let sim = Sim::start(&[
        "--pty",
        "--devices",
        "2",
        "--baud",
        "115200",
        "--rate-hz",
        "20",
    ]);
    let path = sim.endpoint.clone();
    assert!(path.starts_with("/dev/pts/"), "{path}");
    let mut one = rtu_client(&path, 1);
    let mut normal = [check_map(&mut one, 1, 0).await, 0];
    normal[0] += wait_for_new_values(&mut one).await;
    drop(one);
    let mut two = rtu_client(&path, 2);
    normal[1] += check_map(&mut two, 2, 0).await;
    let refused = check_exceptions(&mut two).await;
    drop(two);
    // A unit not on the bus: nobody answers.
    let mut absent = rtu_client(&path, 9);
    assert_eq!(
        call(absent.read_holding_registers(0, 1)).await,
        Outcome::Failed
    );
    drop(absent);
    // Garbage on the line before a request: dropped and counted, the request still served.
    let garbage: Vec<u8> = (0..4096u32).map(|i| (i * 73 + 41) as u8 | 0x80).collect();
    {
        let mut port = tokio_serial::new(&path, BAUD).open_native_async().unwrap();
        tokio::io::AsyncWriteExt::write_all(&mut port, &garbage)
            .await
            .unwrap();
        let mut ctx = rtu::attach_slave(port, Slave(1));
        assert_eq!(holding(&mut ctx, 14, 1).await, [1]);
        normal[0] += 1;
    }

    let summary = sim.stop();
    assert_eq!(counts(&summary, 1), [normal[0], normal[0], 0, 0, 0]);
    assert_eq!(
        counts(&summary, 2),
        [normal[1] + refused, normal[1], refused, 0, 0]
    );
    assert_eq!(summary["other_unit_requests"], 1);
    assert_eq!(summary["discarded_bytes"], garbage.len() as u64);
    assert_eq!(summary["transport"], "rtu");
}

#[tokio::test]
async fn rtu_faults_silence_refuse_and_corrupt_exactly_as_specified() {
    let sim = Sim::start(&[
        "--pty",
        "--devices",
        "3",
        "--baud",
        "115200",
        "--fault",
        "silent:unit=1",
        "--fault",
        "exception:unit=2,code=4",
        "--fault",
        "corrupt:unit=3,every=2",
    ]);
    let path = sim.endpoint.clone();
    let mut ctx = rtu_client(&path, 1);
    assert_eq!(call(ctx.read_input_registers(0, 2)).await, Outcome::Failed);
    drop(ctx);
    let mut ctx = rtu_client(&path, 2);
    for _ in 0..3 {
        assert_eq!(
            call(ctx.read_coils(0, 8)).await,
            Outcome::Exception(ExceptionCode::ServerDeviceFailure)
        );
    }
    drop(ctx);
    // Every second answer has a bad CRC; the request after it, on a reopened port, works.
    let mut ctx = rtu_client(&path, 3);
    let mut failed_at = Vec::new();
    for n in 1..=6 {
        match call(ctx.read_holding_registers(0, 16)).await {
            Outcome::Ok(regs) => assert_eq!(regs[14], 3),
            Outcome::Failed => {
                failed_at.push(n);
                // The port is opened exclusively: close it before opening it again.
                drop(ctx);
                ctx = rtu_client(&path, 3);
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(failed_at, [2, 4, 6]);
    drop(ctx);

    let summary = sim.stop();
    assert_eq!(counts(&summary, 1), [1, 0, 0, 1, 0]);
    assert_eq!(counts(&summary, 2), [3, 0, 3, 0, 0]);
    assert_eq!(counts(&summary, 3), [6, 6, 0, 0, 3]);
    assert_eq!(summary["discarded_bytes"], 0);
}

#[test]
fn stops_after_its_duration_with_a_summary() {
    let mut sim = Sim::start(&["--tcp", "127.0.0.1:0", "--duration-s", "0.5"]);
    let summary = sim.wait_summary();
    assert_eq!(counts(&summary, 1), [0; 5]);
    assert!(summary["elapsed_s"].as_f64().unwrap() >= 0.5);
}

#[test]
fn bad_settings_are_refused_with_a_message_that_names_them() {
    let cases: &[(&[&str], &str)] = &[
        (&["--fault", "noisy:unit=1"], "unknown fault kind \"noisy\""),
        (&["--fault", "silent"], "fault silent needs unit="),
        (
            &["--fault", "corrupt:unit=1,every=0"],
            "bad value for every",
        ),
        (
            &["--fault", "exception:unit=1"],
            "fault exception needs code=",
        ),
        (&["--first-unit", "247", "--devices", "2"], "within 1..=247"),
        (&["--first-unit", "0"], "within 1..=247"),
        (&["--rate-hz", "0"], "--rate-hz 0"),
    ];
    for (args, want) in cases {
        let out = Command::new(BIN)
            .args(["modbus", "--tcp", "127.0.0.1:0"])
            .args(*args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}");
        assert!(stderr.contains(want), "{args:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{args:?}: nothing announced");
    }
    let out = Command::new(BIN).args(["modbus"]).output().unwrap();
    assert!(!out.status.success(), "a transport is required");
}
