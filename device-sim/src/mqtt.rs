//! The MQTT fleet: N devices publishing over one connection each or a pool of K, at a per-device
//! rate or as fast as the broker accepts.
//!
//! # Exact acknowledgement counting
//!
//! rumqttc does not say which publish a PUBACK belongs to, only its packet id. Each connection
//! therefore keeps, under one lock with its client:
//!
//! - `fifo`: messages handed to the client, in order. rumqttc reads its request channel in order
//!   and emits exactly one `Outgoing::Publish(pkid)` per publish (or first an
//!   `Outgoing::AwaitAck` on a packet-id collision, then the `Outgoing::Publish` once resolved),
//!   so the front of `fifo` is the message that event is about.
//! - `inflight`: packet id → message, filled on `Outgoing::Publish`, emptied on `PubAck`.
//!
//! When the connection fails, the event loop and client are dropped and replaced under that
//! same lock, so no publish can slip into a channel that is about to be thrown away; every
//! message not yet acknowledged is re-queued on the new client in its original order
//! (at-least-once, like a device with a persistent outbox). A message is counted `acked` once,
//! at its first PUBACK, so `acked <= sent` always holds and `acked == sent` means nothing was lost.
//!
//! Each connection has a bounded window of outstanding messages (a semaphore): a device waits for
//! a slot before publishing, which is the back-pressure of load mode.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gateway_config::{Secret, TlsClient, TlsFiles};
use rumqttc::{
    AsyncClient, Event, EventLoop, MqttOptions, Outgoing, Packet, QoS, TlsConfiguration, Transport,
};
use std::path::PathBuf;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use crate::device::{Action, DeviceConfig, DeviceSim, device_id};
use crate::metric::Metric;
use crate::payload::{MqttForm, encode_mqtt, garbage_mqtt};
use crate::scenario::Scenario;
use crate::summary::{RunInfo, SentRecord, Stats, Summary};

/// Where the broker is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Broker {
    /// Host name or address.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// `mqtts://`: always TLS, with the system's root certificates or
    /// [`FleetConfig::ca_file`].
    pub tls: bool,
}

/// A broker URL that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad broker URL {0:?}: expected mqtt://HOST[:PORT], mqtts://HOST[:PORT] or HOST:PORT")]
pub struct BadBrokerUrl(pub String);

impl FromStr for Broker {
    type Err = BadBrokerUrl;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || BadBrokerUrl(s.to_owned());
        let (tls, rest) = if let Some(r) = s.strip_prefix("mqtts://") {
            (true, r)
        } else if let Some(r) = s
            .strip_prefix("mqtt://")
            .or_else(|| s.strip_prefix("tcp://"))
        {
            (false, r)
        } else if s.contains("://") {
            return Err(bad());
        } else {
            (false, s)
        };
        let rest = rest.trim_end_matches('/');
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) => (h, p.parse::<u16>().map_err(|_| bad())?),
            None => (rest, if tls { 8883 } else { 1883 }),
        };
        if host.is_empty() {
            return Err(bad());
        }
        Ok(Broker {
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned(),
            port,
            tls,
        })
    }
}

/// Errors of a fleet run.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// A connection did not get its first CONNACK in time.
    #[error(
        "could not connect to the broker at {host}:{port} within {timeout_ms} ms: {last_error}"
    )]
    Connect {
        /// Broker host.
        host: String,
        /// Broker port.
        port: u16,
        /// How long we waited.
        timeout_ms: u64,
        /// The last connection error seen, if any.
        last_error: String,
    },
    /// The configuration is inconsistent (zero devices, rate not positive, ...).
    #[error("invalid fleet configuration: {0}")]
    Config(String),
}

/// Settings of a fleet run. Start from [`FleetConfig::new`] and change fields.
#[derive(Debug, Clone)]
pub struct FleetConfig {
    /// Broker address.
    pub broker: Broker,
    /// Number of devices.
    pub devices: u32,
    /// 1-based number of the first device (`dev-0001` is 1).
    pub first_device: u32,
    /// Ticks per second per device; each tick reads every metric once.
    pub rate_hz: f64,
    /// Ticks per device, then stop.
    pub count: Option<u64>,
    /// Stop after this long (wall clock).
    pub duration: Option<Duration>,
    /// 0 or 1.
    pub qos: u8,
    /// Payload form.
    pub form: MqttForm,
    /// Topic prefix: topics are `{prefix}/{device}/{metric}` and `{prefix}/{device}`.
    pub topic_prefix: String,
    /// Metrics each device reads.
    pub metrics: Vec<Metric>,
    /// Scenarios.
    pub scenarios: Vec<Scenario>,
    /// Seed of every random choice.
    pub seed: u64,
    /// Timestamp of virtual time zero; `None` takes the wall clock at start.
    pub start_ts_ms: Option<i64>,
    /// `None`: one connection per device; `Some(k)`: a pool of k shared connections.
    pub connections: Option<u32>,
    /// Load mode: do not pace by `rate_hz`; publish as fast as the broker accepts, or at
    /// `target_rate` messages per second across the fleet. Timestamps then advance 1 ms per tick
    /// unless `target_rate` is set.
    pub load: bool,
    /// Fleet-wide message rate in load mode.
    pub target_rate: Option<f64>,
    /// Paced mode: device `k` of `n` publishes `k/n` of a period after device 0 instead of at
    /// the same instant (its readings keep the common timestamps).
    pub stagger: bool,
    /// Messages outstanding per connection (queued plus unacknowledged).
    pub window: u16,
    /// How long to wait at the end for outstanding acknowledgements.
    pub drain_timeout: Duration,
    /// How long to wait for each connection's first CONNACK.
    pub connect_timeout: Duration,
    /// Client id prefix; ids are `{prefix}{device}` or `{prefix}pool-{k}`.
    pub client_id_prefix: String,
    /// Keep every reading sent in the report (for `--record-sent`).
    pub record_sent: bool,
    /// Print a progress line on stderr every second.
    pub progress: bool,
    /// `mqtts://` only: PEM file of the CA certificates trusted for the broker, replacing the
    /// system's roots (a private CA, a test broker).
    pub ca_file: Option<PathBuf>,
    /// Username and password sent in every CONNECT (the password never prints).
    pub credentials: Option<(String, Secret)>,
}

impl FleetConfig {
    /// Defaults: 1 device at 1 Hz, JSON at QoS 1, default metrics, seed 0, one connection per
    /// device, runs until shut down.
    pub fn new(broker: Broker) -> FleetConfig {
        FleetConfig {
            broker,
            devices: 1,
            first_device: 1,
            rate_hz: 1.0,
            count: None,
            duration: None,
            qos: 1,
            form: MqttForm::Json,
            topic_prefix: "sensors".to_owned(),
            metrics: Metric::DEFAULT.to_vec(),
            scenarios: Vec::new(),
            seed: 0,
            start_ts_ms: None,
            connections: None,
            load: false,
            target_rate: None,
            stagger: false,
            window: 100,
            drain_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            client_id_prefix: format!("device-sim-{}-", std::process::id()),
            record_sent: false,
            progress: false,
            ca_file: None,
            credentials: None,
        }
    }

    fn validate(&self) -> Result<(), FleetError> {
        let bad = |s: &str| Err(FleetError::Config(s.to_owned()));
        if self.devices == 0 {
            return bad("devices must be at least 1");
        }
        if self.ca_file.is_some() && !self.broker.tls {
            return bad("--ca-file is for an mqtts:// broker");
        }
        if !(self.rate_hz.is_finite() && self.rate_hz > 0.0) {
            return bad("rate_hz must be a positive number");
        }
        if self.qos > 1 {
            return bad("qos must be 0 or 1");
        }
        if self.connections == Some(0) {
            return bad("connections must be at least 1");
        }
        if self.metrics.is_empty() {
            return bad("at least one metric is needed");
        }
        if self.window == 0 {
            return bad("window must be at least 1");
        }
        if let Some(r) = self.target_rate
            && !(r.is_finite() && r > 0.0)
        {
            return bad("target_rate must be a positive number");
        }
        Ok(())
    }
}

/// What a fleet run returns.
#[derive(Debug, Clone)]
pub struct FleetReport {
    /// Counts per device and metric, totals, per scenario.
    pub summary: Summary,
    /// Every reading sent, by device then in sending order (empty unless `record_sent`).
    pub records: Vec<SentRecord>,
}

/// One message on its way: enough to count it and to publish it again after a reconnect.
#[derive(Debug, Clone)]
struct Pending {
    seq: u64,
    /// Device slot within the run (0-based).
    slot: u32,
    metrics: Vec<Metric>,
    garbage: bool,
    written: bool,
    topic: String,
    payload: Vec<u8>,
}

struct ConnState {
    client: AsyncClient,
    fifo: VecDeque<Pending>,
    inflight: HashMap<u16, Pending>,
    collided: Option<Pending>,
    /// Set by a `reconnect` scenario: after the DISCONNECT goes out, stay offline this long.
    offline_for: Option<Duration>,
    next_seq: u64,
}

struct Conn {
    opts: MqttOptions,
    qos: QoS,
    channel_cap: usize,
    // A std Mutex: held only for bookkeeping and non-blocking `try_publish`, never across await.
    state: Mutex<ConnState>,
    window: Semaphore,
    outstanding: AtomicU64,
    stats: Arc<Stats>,
    shutting_down: AtomicBool,
    connected_once: watch::Sender<bool>,
    last_error: Mutex<String>,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("client_id", &self.opts.client_id())
            .finish_non_exhaustive()
    }
}

impl Conn {
    fn new(opts: MqttOptions, qos: QoS, window: u16, stats: Arc<Stats>) -> (Arc<Conn>, EventLoop) {
        // Outstanding messages are bounded by the window, so a channel a little larger never
        // fills and `try_publish` never fails for lack of room (the margin covers DISCONNECT).
        let channel_cap = usize::from(window) + 16;
        let (client, eventloop) = AsyncClient::new(opts.clone(), channel_cap);
        let conn = Conn {
            opts,
            qos,
            channel_cap,
            state: Mutex::new(ConnState {
                client,
                fifo: VecDeque::new(),
                inflight: HashMap::new(),
                collided: None,
                offline_for: None,
                next_seq: 0,
            }),
            window: Semaphore::new(usize::from(window)),
            outstanding: AtomicU64::new(0),
            stats,
            shutting_down: AtomicBool::new(false),
            connected_once: watch::channel(false).0,
            last_error: Mutex::new(String::from("no CONNACK yet")),
        };
        (Arc::new(conn), eventloop)
    }

    /// Wait for a window slot, then hand the message to the client. Returns false if `stop`
    /// fired while waiting.
    async fn publish(&self, mut p: Pending, stop: &mut watch::Receiver<bool>) -> bool {
        let permit = tokio::select! {
            permit = self.window.acquire() => permit,
            _ = stop.wait_for(|s| *s) => return false,
        };
        let Ok(permit) = permit else { return false };
        // The slot is given back by hand when the message completes (PUBACK, or written at QoS 0).
        permit.forget();
        self.outstanding.fetch_add(1, Relaxed);
        let mut st = self.state.lock().unwrap();
        p.seq = st.next_seq;
        st.next_seq += 1;
        match st
            .client
            .try_publish(p.topic.clone(), self.qos, false, p.payload.clone())
        {
            Ok(()) => {
                let dev = self.stats.device(p.slot as usize);
                for m in &p.metrics {
                    dev.metrics[m.index()].sent.fetch_add(1, Relaxed);
                }
                if p.garbage {
                    dev.garbage.fetch_add(1, Relaxed);
                }
                self.stats.messages_sent.fetch_add(1, Relaxed);
                st.fifo.push_back(p);
                true
            }
            Err(e) => {
                drop(st);
                tracing::warn!(error = %e, "publish failed");
                self.stats.errors.fetch_add(1, Relaxed);
                self.complete_slot();
                false
            }
        }
    }

    fn complete_slot(&self) {
        self.outstanding.fetch_sub(1, Relaxed);
        self.window.add_permits(1);
    }

    fn on_written(&self, p: &mut Pending) {
        if p.written {
            return;
        }
        p.written = true;
        let dev = self.stats.device(p.slot as usize);
        for m in &p.metrics {
            dev.metrics[m.index()].written.fetch_add(1, Relaxed);
        }
        self.stats.messages_written.fetch_add(1, Relaxed);
    }

    fn on_outgoing_publish(&self, pkid: u16) {
        let mut st = self.state.lock().unwrap();
        let next = match st.collided.take() {
            Some(p) => Some(p),
            None => st.fifo.pop_front(),
        };
        let Some(mut p) = next else {
            tracing::warn!(pkid, "outgoing publish with nothing queued");
            return;
        };
        self.on_written(&mut p);
        if self.qos == QoS::AtMostOnce {
            drop(st);
            self.complete_slot();
        } else {
            st.inflight.insert(pkid, p);
        }
    }

    fn on_await_ack(&self) {
        let mut st = self.state.lock().unwrap();
        if st.collided.is_none() {
            st.collided = st.fifo.pop_front();
        }
    }

    fn on_puback(&self, pkid: u16) {
        let p = self.state.lock().unwrap().inflight.remove(&pkid);
        let Some(p) = p else { return };
        let dev = self.stats.device(p.slot as usize);
        for m in &p.metrics {
            dev.metrics[m.index()].acked.fetch_add(1, Relaxed);
        }
        if p.garbage {
            self.stats.garbage_acked.fetch_add(1, Relaxed);
        }
        self.stats.messages_acked.fetch_add(1, Relaxed);
        self.complete_slot();
    }

    /// Replace client and event loop, re-queueing every unfinished message in order.
    fn reset(&self) -> EventLoop {
        let (client, eventloop) = AsyncClient::new(self.opts.clone(), self.channel_cap);
        let mut st = self.state.lock().unwrap();
        let mut pending: Vec<Pending> = st.inflight.drain().map(|(_, p)| p).collect();
        pending.extend(st.collided.take());
        pending.extend(st.fifo.drain(..));
        pending.sort_by_key(|p| p.seq);
        st.client = client;
        for p in pending {
            // Cannot fail: the new channel is empty and larger than the window.
            if st
                .client
                .try_publish(p.topic.clone(), self.qos, false, p.payload.clone())
                .is_ok()
            {
                self.stats.republished.fetch_add(1, Relaxed);
                st.fifo.push_back(p);
            } else {
                self.stats.errors.fetch_add(1, Relaxed);
                self.complete_slot();
            }
        }
        eventloop
    }

    /// Close the connection now and reopen it after `offline` (the `reconnect` scenario).
    /// Returns false if a reconnect is already under way.
    fn request_reconnect(&self, offline: Duration) -> bool {
        let mut st = self.state.lock().unwrap();
        if st.offline_for.is_some() {
            return false;
        }
        st.offline_for = Some(offline);
        st.client.try_disconnect().is_ok()
    }

    async fn drive(self: Arc<Conn>, mut eventloop: EventLoop) {
        let mut backoff = Duration::from_millis(100);
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    self.stats.connects.fetch_add(1, Relaxed);
                    self.connected_once.send_replace(true);
                    backoff = Duration::from_millis(100);
                }
                Ok(Event::Incoming(Packet::PubAck(ack))) => self.on_puback(ack.pkid),
                Ok(Event::Outgoing(Outgoing::Publish(pkid))) => self.on_outgoing_publish(pkid),
                Ok(Event::Outgoing(Outgoing::AwaitAck(_))) => self.on_await_ack(),
                Ok(Event::Outgoing(Outgoing::Disconnect)) => {
                    if self.shutting_down.load(Relaxed) {
                        return;
                    }
                    let offline = self.state.lock().unwrap().offline_for;
                    eventloop = self.reset();
                    tokio::time::sleep(offline.unwrap_or_default()).await;
                    self.state.lock().unwrap().offline_for = None;
                }
                Ok(_) => {}
                Err(e) => {
                    if self.shutting_down.load(Relaxed) {
                        return;
                    }
                    self.stats.connection_errors.fetch_add(1, Relaxed);
                    tracing::warn!(client_id = %self.opts.client_id(), error = %e, "mqtt connection error; reconnecting");
                    *self.last_error.lock().unwrap() = e.to_string();
                    eventloop = self.reset();
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Run a fleet until every device has sent `count` ticks, `duration` has passed, or `shutdown`
/// completes; then wait (up to `drain_timeout`) for outstanding acknowledgements, disconnect,
/// and report.
pub async fn run_fleet(
    cfg: FleetConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<FleetReport, FleetError> {
    cfg.validate()?;
    // mqtts:// is always TLS (the system's roots, or the CA file), plain TCP otherwise; the
    // gateway's own TLS settings decide how, so both trust the same way.
    let tls = match cfg.broker.tls {
        true => {
            let files = TlsFiles {
                ca_file: cfg.ca_file.clone(),
                ..TlsFiles::default()
            };
            let client = TlsClient::load(files)
                .map_err(|e| FleetError::Config(format!("TLS ({}): {e}", e.key())))?;
            Some(Transport::tls_with_config(TlsConfiguration::Rustls(
                client.config(),
            )))
        }
        false => None,
    };
    let started = Instant::now();
    let start_ts_ms = cfg.start_ts_ms.unwrap_or_else(now_ms);
    let stats = Arc::new(Stats::new(
        cfg.first_device,
        cfg.devices,
        cfg.scenarios.len(),
    ));
    let scenarios = Arc::new(cfg.scenarios.clone());
    let qos = if cfg.qos == 0 {
        QoS::AtMostOnce
    } else {
        QoS::AtLeastOnce
    };

    // Connections.
    let n_conns = cfg.connections.unwrap_or(cfg.devices).min(cfg.devices) as usize;
    let mut conns = Vec::with_capacity(n_conns);
    let mut pollers = JoinSet::new();
    for k in 0..n_conns {
        let client_id = match cfg.connections {
            None => format!(
                "{}{}",
                cfg.client_id_prefix,
                device_id(cfg.first_device + k as u32)
            ),
            Some(_) => format!("{}pool-{k}", cfg.client_id_prefix),
        };
        let mut opts = MqttOptions::new(client_id, cfg.broker.host.clone(), cfg.broker.port);
        opts.set_keep_alive(Duration::from_secs(30));
        opts.set_clean_session(true);
        opts.set_inflight(cfg.window);
        opts.set_max_packet_size(1 << 20, 1 << 20);
        if let Some(tls) = &tls {
            opts.set_transport(tls.clone());
        }
        if let Some((user, password)) = &cfg.credentials {
            opts.set_credentials(user, password.expose());
        }
        let (conn, eventloop) = Conn::new(opts, qos, cfg.window, Arc::clone(&stats));
        pollers.spawn(Arc::clone(&conn).drive(eventloop));
        conns.push(conn);
    }

    // Every connection must come up once before devices start, so a wrong URL fails fast.
    for conn in &conns {
        let mut rx = conn.connected_once.subscribe();
        let ok = tokio::time::timeout(cfg.connect_timeout, rx.wait_for(|c| *c)).await;
        if !matches!(ok, Ok(Ok(_))) {
            for c in &conns {
                c.shutting_down.store(true, Relaxed);
            }
            pollers.abort_all();
            return Err(FleetError::Connect {
                host: cfg.broker.host.clone(),
                port: cfg.broker.port,
                timeout_ms: cfg.connect_timeout.as_millis() as u64,
                last_error: conn.last_error.lock().unwrap().clone(),
            });
        }
    }

    let (stop_tx, stop_rx) = watch::channel(false);
    let mut devices = JoinSet::new();
    // In load mode ticks advance virtual time by 1 ms, or by the paced interval with a target.
    let per_device_target = cfg.target_rate.map(|r| r / f64::from(cfg.devices));
    let virtual_rate = if cfg.load {
        per_device_target.unwrap_or(1000.0)
    } else {
        cfg.rate_hz
    };
    for slot in 0..cfg.devices {
        let dcfg = DeviceConfig {
            index: cfg.first_device + slot,
            rate_hz: virtual_rate,
            metrics: cfg.metrics.clone(),
            seed: cfg.seed,
            start_ts_ms,
            scenarios: Arc::clone(&scenarios),
        };
        let task = DeviceTask {
            slot,
            sim: DeviceSim::new(dcfg),
            conn: Arc::clone(&conns[slot as usize % n_conns]),
            stats: Arc::clone(&stats),
            form: cfg.form,
            topic_prefix: cfg.topic_prefix.clone(),
            count: cfg.count,
            // Unpaced only in load mode without a target.
            paced: !cfg.load || per_device_target.is_some(),
            phase: if cfg.stagger && !cfg.load && virtual_rate > 0.0 {
                Duration::from_secs_f64(f64::from(slot) / f64::from(cfg.devices) / virtual_rate)
            } else {
                Duration::ZERO
            },
            record: cfg.record_sent,
            stop: stop_rx.clone(),
        };
        devices.spawn(task.run(started));
    }

    let progress = cfg.progress.then(|| {
        let stats = Arc::clone(&stats);
        let scenarios = Arc::clone(&scenarios);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            loop {
                tick.tick().await;
                eprint!(
                    "\r{}\x1b[K",
                    stats.progress_line(started.elapsed(), &scenarios)
                );
            }
        })
    });

    // Wait for the devices, the deadline, or the caller.
    let deadline = async {
        match cfg.duration {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    let mut records_by_slot: Vec<(u32, Vec<SentRecord>)> = Vec::new();
    {
        tokio::pin!(shutdown);
        tokio::pin!(deadline);
        // Both futures are polled only until they first complete: an async block must not be
        // resumed after it has returned.
        let mut stopping = false;
        loop {
            tokio::select! {
                joined = devices.join_next() => match joined {
                    Some(Ok(r)) => records_by_slot.push(r),
                    Some(Err(e)) => tracing::error!(error = %e, "device task failed"),
                    None => break,
                },
                _ = &mut deadline, if !stopping => { stopping = true; stop_tx.send_replace(true); }
                _ = &mut shutdown, if !stopping => { stopping = true; stop_tx.send_replace(true); }
            }
        }
    }

    // Drain: wait for every outstanding message to be acknowledged (or written at QoS 0).
    let drain_deadline = Instant::now() + cfg.drain_timeout;
    while conns.iter().any(|c| c.outstanding.load(Relaxed) > 0) && Instant::now() < drain_deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for c in &conns {
        c.shutting_down.store(true, Relaxed);
        let _ = c.state.lock().unwrap().client.try_disconnect();
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while pollers.join_next().await.is_some() {}
    })
    .await;
    pollers.abort_all();
    if let Some(p) = progress {
        p.abort();
        eprintln!();
    }
    let elapsed = started.elapsed();

    records_by_slot.sort_by_key(|(slot, _)| *slot);
    let records = records_by_slot.into_iter().flat_map(|(_, r)| r).collect();
    let summary = stats.summarize(
        RunInfo {
            transport: "mqtt".to_owned(),
            form: cfg.form.name().to_owned(),
            qos: Some(cfg.qos),
            seed: cfg.seed,
            metrics: cfg.metrics.clone(),
            started_ts_ms: start_ts_ms,
        },
        &scenarios,
        elapsed,
    );
    Ok(FleetReport { summary, records })
}

struct DeviceTask {
    slot: u32,
    sim: DeviceSim,
    conn: Arc<Conn>,
    stats: Arc<Stats>,
    form: MqttForm,
    topic_prefix: String,
    count: Option<u64>,
    paced: bool,
    /// Delay of this device's schedule behind the fleet's (`FleetConfig::stagger`).
    phase: Duration,
    record: bool,
    stop: watch::Receiver<bool>,
}

impl DeviceTask {
    async fn run(mut self, started: Instant) -> (u32, Vec<SentRecord>) {
        let mut records = Vec::new();
        let start = tokio::time::Instant::from_std(started);
        loop {
            if *self.stop.borrow() || self.count.is_some_and(|c| self.sim.ticks() >= c) {
                break;
            }
            if self.paced {
                let due =
                    start + self.phase + Duration::from_secs_f64(self.sim.next_due_ms() / 1000.0);
                tokio::select! {
                    _ = tokio::time::sleep_until(due) => {}
                    _ = self.stop.wait_for(|s| *s) => break,
                }
            } else if self.sim.ticks().is_multiple_of(64) {
                // Unpaced: let other tasks run now and then.
                tokio::task::yield_now().await;
            }
            let tick = self.sim.next_tick();
            for &i in &tick.affected {
                self.stats.scenarios[i].affected.fetch_add(1, Relaxed);
            }
            if let Some((i, left_ms)) = tick.reconnect
                && self.conn.request_reconnect(Duration::from_millis(left_ms))
            {
                self.stats.scenarios[i].reconnects.fetch_add(1, Relaxed);
            }
            match tick.action {
                Action::Skip { scenario } => {
                    self.stats
                        .device(self.slot as usize)
                        .skipped_ticks
                        .fetch_add(1, Relaxed);
                    self.stats.scenarios[scenario]
                        .skipped_ticks
                        .fetch_add(1, Relaxed);
                }
                Action::Garbage { scenario } => {
                    let metric = tick.readings.first().map_or(Metric::Temperature, |r| r.0);
                    let id = self.sim.id().to_owned();
                    let msg = garbage_mqtt(self.sim.fault_rng(), &self.topic_prefix, &id, metric);
                    let p = Pending {
                        seq: 0,
                        slot: self.slot,
                        metrics: Vec::new(),
                        garbage: true,
                        written: false,
                        topic: msg.topic,
                        payload: msg.payload,
                    };
                    if self.conn.publish(p, &mut self.stop).await {
                        self.stats.scenarios[scenario].garbage.fetch_add(1, Relaxed);
                    }
                }
                Action::Send => {
                    let form = self.form.resolve(self.sim.form_rng());
                    let msgs = encode_mqtt(
                        form,
                        &self.topic_prefix,
                        self.sim.id(),
                        tick.ts_ms,
                        &tick.readings,
                    );
                    for msg in msgs {
                        let carried: Vec<(Metric, f64)> = tick
                            .readings
                            .iter()
                            .filter(|r| msg.metrics.contains(&r.0))
                            .copied()
                            .collect();
                        let topic = msg.topic.clone();
                        let p = Pending {
                            seq: 0,
                            slot: self.slot,
                            metrics: msg.metrics,
                            garbage: false,
                            written: false,
                            topic: msg.topic,
                            payload: msg.payload,
                        };
                        if !self.conn.publish(p, &mut self.stop).await {
                            break;
                        }
                        if self.record {
                            for (m, v) in carried {
                                records.push(SentRecord {
                                    device: self.sim.id().to_owned(),
                                    metric: m.name().to_owned(),
                                    value: v,
                                    ts: (msg.form != MqttForm::Number).then_some(tick.ts_ms),
                                    form: msg.form.name().to_owned(),
                                    topic: Some(topic.clone()),
                                });
                            }
                        }
                    }
                }
            }
        }
        (self.slot, records)
    }
}
