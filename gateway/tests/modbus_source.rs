//! The Modbus source against an independent Modbus TCP slave (tokio-modbus's server) in the
//! same process: values of every type land in the buffer as written, and silence, exceptions
//! and wrong answers are counted by reason while polling goes on. (The end-to-end tests in the
//! `tests` crate run the gateway binary against `device-sim modbus`, RTU and TCP.)

use gateway::ops::metrics::{IngestMetrics, SlaveState};
use gateway::pipeline::Pipeline;
use gateway::sources::decode::IngestRules;
use gateway::sources::modbus;
use gateway_buffer::{Buffer, Lane, Record, Source};
use gateway_config::Config;
use std::future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering::Relaxed};
use std::time::{Duration, Instant};
use tokio_modbus::server::tcp::{Server, accept_tcp_connection};
use tokio_modbus::{ExceptionCode, Request, Response, SlaveRequest};
use tokio_util::sync::CancellationToken;

/// The holding pattern of `device-sim modbus`: every type in both word orders.
fn holding() -> Vec<u16> {
    let split = |v: u32| [(v >> 16) as u16, v as u16];
    let [uh, ul] = split(3_000_000_123);
    let [ih, il] = split(-123_456_789i32 as u32);
    let [fh, fl] = split(230.5f32.to_bits());
    vec![
        51234,
        (-1234i16) as u16,
        uh,
        ul,
        ul,
        uh,
        ih,
        il,
        il,
        ih,
        fh,
        fl,
        fl,
        fh,
        1,
        0,
    ]
}

/// How the test slave behaves now.
#[derive(Default)]
struct Behaviour {
    silent: AtomicBool,
    /// Answer every request with this exception code (0: answer normally).
    exception: AtomicU8,
    /// Answer register reads with one register too few.
    short: AtomicBool,
}

#[derive(Clone)]
struct Slave(Arc<Behaviour>);

impl tokio_modbus::server::Service for Slave {
    type Request = SlaveRequest<'static>;
    type Response = Option<Response>;
    type Exception = ExceptionCode;
    type Future = future::Ready<Result<Option<Response>, ExceptionCode>>;

    fn call(&self, req: SlaveRequest<'static>) -> Self::Future {
        let b = &self.0;
        if b.silent.load(Relaxed) {
            return future::ready(Ok(None));
        }
        let code = b.exception.load(Relaxed);
        if code != 0 {
            return future::ready(Err(ExceptionCode::new(code)));
        }
        let cut = usize::from(b.short.load(Relaxed));
        let words = |addr: u16, n: u16| -> Result<Vec<u16>, ExceptionCode> {
            let all = holding();
            let (a, n) = (usize::from(addr), usize::from(n));
            all.get(a..a + n)
                .map(|w| w[..w.len() - cut.min(w.len())].to_vec())
                .ok_or(ExceptionCode::IllegalDataAddress)
        };
        let bits = |addr: u16, n: u16, odd: bool| -> Vec<bool> {
            (addr..addr + n).map(|a| (a % 2 == 1) == odd).collect()
        };
        future::ready(
            match req.request {
                Request::ReadHoldingRegisters(a, n) => {
                    words(a, n).map(Response::ReadHoldingRegisters)
                }
                Request::ReadInputRegisters(a, n) => words(a, n).map(Response::ReadInputRegisters),
                Request::ReadCoils(a, n) => Ok(Response::ReadCoils(bits(a, n, false))),
                Request::ReadDiscreteInputs(a, n) => {
                    Ok(Response::ReadDiscreteInputs(bits(a, n, true)))
                }
                _ => Err(ExceptionCode::IllegalFunction),
            }
            .map(Some),
        )
    }
}

async fn start_slave() -> (SocketAddr, Arc<Behaviour>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let behaviour = Arc::new(Behaviour::default());
    let service = Slave(behaviour.clone());
    tokio::spawn(async move {
        let server = Server::new(listener);
        let on_connected = |stream, peer| {
            let service = service.clone();
            async move { accept_tcp_connection(stream, peer, |_| Ok(Some(service.clone()))) }
        };
        let _ = server.serve(&on_connected, |_| {}).await;
    });
    (addr, behaviour)
}

struct Running {
    buffer: Buffer,
    metrics: Arc<IngestMetrics>,
    stop: CancellationToken,
    _dir: tempfile::TempDir,
}

impl Running {
    fn modbus(&self, device: &str) -> Arc<gateway::ops::metrics::ModbusSlaveStats> {
        self.metrics
            .modbus()
            .into_iter()
            .find(|s| s.device == device)
            .unwrap()
    }

    fn readings(&self) -> Vec<gateway_buffer::Reading> {
        let stored = self
            .buffer
            .read(
                gateway_forwarder::CONSUMER,
                Lane::Readings,
                None,
                100_000,
                usize::MAX,
            )
            .unwrap();
        stored
            .into_iter()
            .filter_map(|s| match s.record {
                Record::Reading(r) => Some(r),
                _ => None,
            })
            .collect()
    }
}

/// Runs the Modbus buses of `modbus_toml` (its `[[modbus]]` tables) into a fresh buffer.
async fn run(modbus_toml: &str) -> Running {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "data_dir = {:?}\n[mqtt]\nmode = \"disabled\"\n{modbus_toml}",
        dir.path().display().to_string()
    );
    let config = Config::parse(&text, "test.toml").unwrap();
    let (buffer, committer) = Buffer::open(gateway::buffer::options(&config)).unwrap();
    let stop = CancellationToken::new();
    tokio::spawn(committer.run(stop.clone()));
    let (pipeline, metrics) = Pipeline::from_config(&config, &buffer);
    for bus in modbus::buses(&config.modbus, IngestRules::new(&config.ingest), &metrics) {
        tokio::spawn(bus.run(pipeline.clone(), stop.clone()));
    }
    Running {
        buffer,
        metrics,
        stop,
        _dir: dir,
    }
}

async fn until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn register(metric: &str, kind: &str, address: u16, extra: &str) -> String {
    format!(
        "[[modbus.register]]\nmetric = \"{metric}\"\nkind = \"{kind}\"\naddress = {address}\n{extra}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_type_and_word_order_arrives_scaled_with_its_unit_in_three_requests_a_poll() {
    let (addr, _) = start_slave().await;
    let mut toml =
        format!("[[modbus]]\ndevice = \"meter\"\nurl = \"tcp://{addr}\"\npoll_ms = 100\n");
    for (metric, address, extra) in [
        (
            "u16",
            0,
            "type = \"u16\"\nscale = 0.5\noffset = 1.0\nunit = \"V\"",
        ),
        ("i16", 1, "type = \"i16\"\nscale = 0.1"),
        ("u32_big", 2, "type = \"u32\""),
        ("u32_little", 4, "type = \"u32\"\nword_order = \"little\""),
        ("i32_big", 6, "type = \"i32\"\nword_order = \"big\""),
        ("i32_little", 8, "type = \"i32\"\nword_order = \"little\""),
        ("f32_big", 10, "type = \"f32\"\nscale = 2.0\noffset = -1.0"),
        ("f32_little", 12, "type = \"f32\"\nword_order = \"little\""),
    ] {
        toml.push_str(&register(metric, "holding", address, extra));
    }
    for (metric, kind, address) in [
        ("coil0", "coil", 0),
        ("coil1", "coil", 1),
        ("di0", "discrete", 0),
        ("di1", "discrete", 1),
    ] {
        toml.push_str(&register(metric, kind, address, ""));
    }
    let gw = run(&toml).await;
    let stats = gw.modbus("meter");
    until("two complete polls", || {
        stats.polls_complete.load(Relaxed) >= 2
    })
    .await;
    until("the readings of the first poll", || {
        gw.readings().len() >= 12
    })
    .await;
    let readings = gw.readings();
    let first_ts = readings[0].ts_ms;
    let poll: Vec<_> = readings.iter().filter(|r| r.ts_ms == first_ts).collect();
    let value = |metric: &str| {
        let r = poll.iter().find(|r| r.metric == metric).unwrap();
        assert_eq!((r.device.as_str(), r.source), ("meter", Source::Modbus));
        r.value
    };
    assert_eq!(value("u16"), 51234.0 * 0.5 + 1.0);
    assert!((value("i16") - -123.4).abs() < 1e-9);
    assert_eq!(value("u32_big"), 3_000_000_123.0);
    assert_eq!(value("u32_little"), 3_000_000_123.0);
    assert_eq!(value("i32_big"), -123_456_789.0);
    assert_eq!(value("i32_little"), -123_456_789.0);
    assert_eq!(value("f32_big"), 230.5 * 2.0 - 1.0);
    assert_eq!(value("f32_little"), 230.5);
    assert_eq!(
        ["coil0", "coil1", "di0", "di1"].map(value),
        [1.0, 0.0, 0.0, 1.0]
    );
    assert_eq!(poll.len(), 12, "one reading per register and poll");
    let unit = poll
        .iter()
        .find(|r| r.metric == "u16")
        .unwrap()
        .unit
        .clone();
    assert_eq!(unit.as_deref(), Some("V"));
    assert!(
        poll.iter()
            .filter(|r| r.metric != "u16")
            .all(|r| r.unit.is_none())
    );
    // Holding 0..14 in one request, the coils in one, the discrete inputs in one.
    // Read in the middle of a poll, up to two requests of it may still be to come.
    let (polls, requests) = (stats.polls.load(Relaxed), stats.requests.load(Relaxed));
    assert!(
        requests <= 3 * polls && requests > 3 * (polls - 1),
        "{requests} requests in {polls} polls"
    );
    assert!(
        requests == 3 * polls || requests + 3 > 3 * polls,
        "{requests} requests in {polls} polls"
    );
    assert_eq!(stats.errors().map(|(_, n)| n).sum::<u64>(), 0);
    assert_eq!(stats.state(), SlaveState::Up);
    assert_eq!(gw.metrics.readings(Source::Modbus) % 12, 0);
    gw.stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_slave_is_counted_backs_off_and_returns_to_its_rate_on_its_first_answer() {
    let (addr, behaviour) = start_slave().await;
    let toml = format!(
        "[[modbus]]\ndevice = \"meter\"\nurl = \"tcp://{addr}\"\npoll_ms = 20\ntimeout_ms = 50\n\
         backoff_max_ms = 300\n{}",
        register("u16", "holding", 0, "")
    );
    let gw = run(&toml).await;
    let stats = gw.modbus("meter");
    until("answers", || stats.polls_complete.load(Relaxed) >= 3).await;
    behaviour.silent.store(true, Relaxed);
    let timeouts = || stats.errors().find(|(r, _)| *r == "timeout").unwrap().1;
    until("four timeouts", || timeouts() >= 4).await;
    assert_eq!(stats.state(), SlaveState::Down);
    until("the backoff to reach its ceiling", || {
        stats.backoff() == Duration::from_millis(300)
    })
    .await;
    // Backing off: a few attempts a second instead of fifty.
    let (before, since) = (stats.polls.load(Relaxed), Instant::now());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let attempts = stats.polls.load(Relaxed) - before;
    let most = since.elapsed().as_millis() as u64 / 300 + 2;
    assert!(
        (1..=most).contains(&attempts),
        "{attempts} attempts at a 300 ms backoff"
    );
    behaviour.silent.store(false, Relaxed);
    until("the slave to be up again", || {
        stats.state() == SlaveState::Up
    })
    .await;
    assert_eq!(stats.backoff(), Duration::ZERO);
    let before = stats.polls_complete.load(Relaxed);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let polls = stats.polls_complete.load(Relaxed) - before;
    assert!(
        polls > 2 * most,
        "back at its rate: {polls} polls in a second, against {attempts} while backing off"
    );
    assert!(stats.last_error().unwrap().contains("no answer within"));
    gw.stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exceptions_are_counted_by_code_without_backoff_and_short_answers_as_corrupt() {
    let (addr, behaviour) = start_slave().await;
    let toml = format!(
        "[[modbus]]\ndevice = \"meter\"\nurl = \"tcp://{addr}\"\npoll_ms = 20\ntimeout_ms = 200\n{}",
        register("f32", "holding", 10, "type = \"f32\"")
    );
    let gw = run(&toml).await;
    let stats = gw.modbus("meter");
    until("answers", || stats.polls_complete.load(Relaxed) >= 2).await;
    behaviour.exception.store(4, Relaxed);
    until("ten exceptions", || {
        stats
            .exceptions()
            .first()
            .is_some_and(|(c, n)| *c == 4 && *n >= 10)
    })
    .await;
    assert_eq!(
        stats.state(),
        SlaveState::Errors,
        "answering, without values"
    );
    assert_eq!(
        stats.backoff(),
        Duration::ZERO,
        "an exception is an answer: no backoff"
    );
    behaviour.exception.store(0, Relaxed);
    behaviour.short.store(true, Relaxed);
    let corrupt = || stats.errors().find(|(r, _)| *r == "corrupt").unwrap().1;
    until("five corrupt answers", || corrupt() >= 5).await;
    assert!(
        stats.last_error().unwrap().contains("asked for 2"),
        "{:?}",
        stats.last_error()
    );
    behaviour.short.store(false, Relaxed);
    let complete = stats.polls_complete.load(Relaxed);
    until("polling to resume", || {
        stats.polls_complete.load(Relaxed) >= complete + 5
    })
    .await;
    let readings = gw.readings();
    assert!(
        readings.iter().all(|r| r.value == 230.5),
        "only whole answers become readings"
    );
    gw.stop.cancel();
}
