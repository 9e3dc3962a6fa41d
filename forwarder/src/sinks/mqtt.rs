//! The MQTT sink (WIRE §4a): a bridge to a cloud IoT broker (AWS IoT Core, Azure IoT Hub,
//! HiveMQ, EMQX) over MQTT 3.1.1 with rumqttc. `[[sink]] kind = "mqtt"` is this sink.
//!
//! Shape: [`MqttSink::new`] returns the sink (handed to [`crate::Forwarder::with_sink`]) and an
//! [`MqttConnection`] whose [`MqttConnection::run`] future owns and polls rumqttc's
//! [`EventLoop`]; the caller spawns it, the crate spawns nothing. The connection reconnects by
//! itself (a short capped backoff, every failure logged, never the password); retrying a batch
//! is the driver's job, so every attempt is answered, delivered or not, within `timeout`.
//!
//! # Guarantees
//! - **QoS 1, delivered on PUBACK.** One message per batch on its lane's topic, body = the
//!   batch's WIRE §3 JSON, byte for byte the HTTP sink's uncompressed body; the attempt is
//!   [`Outcome::Delivered`] only once the broker has PUBACKed every message of it.
//! - **Size.** A batch whose body exceeds `max_message_bytes` goes out as several messages,
//!   each a WIRE §3 batch of a consecutive run of its records (greedy, in seq order) within the
//!   limit. A record whose batch JSON alone exceeds it cannot go out at all: the attempt is
//!   [`Outcome::Refused`] (`too large`) and the driver parks the batch as a dead letter.
//! - **Same batch, same bytes.** Encoding and splitting are deterministic: every attempt of a
//!   batch publishes the same messages, parts included.
//! - **TLS never falls back.** `mqtts://` is always TLS with the given [`TlsClient`] (or the
//!   platform's roots); a TLS failure is a failed connection, retried, never a plaintext one.
//! - **No publishing into an outage.** An attempt publishes only while the connection is up;
//!   otherwise it waits up to `timeout` for it and then answers [`RetryReason::Connect`] with the
//!   last connection error, having queued nothing.
//! - **Bounded memory.** At most [`REQUEST_CAPACITY`] messages wait in rumqttc's request
//!   channel (a full channel answers the attempt with a retry instead of queueing more) and at
//!   most [`MAX_INFLIGHT`] are on the wire unacknowledged (kept by rumqttc for re-sending after a
//!   reconnect): about `(REQUEST_CAPACITY + MAX_INFLIGHT) × max_message_bytes` in all.
//!
//! # Non-guarantees
//! - **Duplicates.** A message whose PUBACK does not come within `timeout` is answered
//!   [`RetryReason::Timeout`], but stays with rumqttc, which sends it again after a reconnect;
//!   the driver's retry publishes the batch once more. A persistent session that resumes makes
//!   rumqttc re-send what was unacknowledged when the connection broke. The consumer
//!   deduplicates on `(gateway_id, seq)`; a duplicate never renumbers a record.
//! - **Order across batches.** Batches in flight at once, retries, and re-sends after a
//!   reconnect may reach the broker in any order; within one attempt the parts are published in
//!   seq order.
//! - **Refusals look like outages.** MQTT 3.1.1 has no negative PUBACK: a broker that will not
//!   take a message (AWS IoT on a topic its policy forbids) closes the connection, and the batch
//!   is retried forever, visible as repeated disconnects in the log.
//! - IPv6 literal hosts work with `mqtt://` only (rumqttc names the TLS server by the host
//!   string, brackets included).
//!
//! # Matching PUBACKs to attempts
//!
//! rumqttc 0.25 does not return a publish's packet id; it reports `Outgoing::Publish(pkid)`
//! when it writes one and `Incoming::PubAck` when the broker acks it. The [`Tracker`] (a pure
//! state machine behind a std mutex shared by the sink and the connection) pairs them: an
//! attempt queues a oneshot sender and puts its publish in the request channel under the same
//! lock, so channel order is queue order; the first `Outgoing::Publish` of a packet id that is
//! not in flight takes the oldest queued sender, one already in flight is a re-send; the PUBACK
//! fires the sender. An attempt that times out only drops its receiver.
//!
//! What that relies on in rumqttc 0.25.1 (`src/` of the crate, lines as of that release):
//! - `state.rs:311-347` `outgoing_publish`: a publish with pkid 0 gets the next id and emits
//!   `Outgoing::Publish(pkid)`; one with an id keeps it (a re-send) and emits the same event;
//!   an id still unacked is a *collision*: the publish is parked in `state.collision` and
//!   `Outgoing::AwaitAck` is emitted instead. `state.rs:222-248`: the PUBACK of that id sends the
//!   parked publish with `Outgoing::Publish(pkid)` after the `Incoming::PubAck` event. While a
//!   collision is parked, no new request is read (`eventloop.rs:243`), so the parked publish is
//!   still the oldest queued one when its `Outgoing::Publish` comes.
//! - `eventloop.rs:284-300`, `eventloop.rs:243`: requests are read one at a time, `pending`
//!   first, then the channel in order; `eventloop.rs:127-143` `clean` (run on every connection
//!   error, `eventloop.rs:175-180`) moves the unacked publishes (`state.rs:103-130`, keeping
//!   their ids) and then every request still in the channel, in order, to `pending`.
//! - `eventloop.rs:160-163`: a CONNACK without `session_present` clears `pending`: the re-sends
//!   and the requests moved there are dropped without a trace.
//! - `state.rs:166`, `eventloop.rs:193`: events are queued in `state.events` and handed out one
//!   per `poll`; those queued when the connection failed come out only after the next CONNACK.
//!
//! So on every connection error the connection first applies the queued events, then takes
//! back what rumqttc never sent: publishes in `pending` without a packet id and a parked
//! collision (their attempts are answered at once and retried by the driver). Left in `pending`
//! they would be dropped silently by a fresh session, and two of them colliding in a row make
//! rumqttc overwrite the first parked one (`state.rs:325`), which would pair every later PUBACK
//! with the wrong attempt. What stays in `pending` is then exactly what the tracker has in
//! flight: re-sent under the same ids when the session resumes, or failed at once when the
//! CONNACK says the session is gone.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use futures::FutureExt;
use futures::future::{BoxFuture, try_join_all};
use gateway_buffer::Lane;
use gateway_config::{TlsClient, TlsFiles};
use reqwest::Url;
use rumqttc::{
    AsyncClient, ConnectionError, Event, EventLoop, MqttOptions, NetworkOptions, Outgoing, Packet,
    QoS, Request, TlsConfiguration, Transport,
};
use tokio::sync::{oneshot, watch};
use tokio::time::{Instant, sleep, sleep_until, timeout, timeout_at};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::{Attempt, EncodedBatch, Sink};
use crate::error::ForwarderError;
use crate::gate::ProbeTarget;
use crate::outcome::{Outcome, RetryReason};
use crate::wire;

/// Capacity of rumqttc's request channel. Publishes wait there only while the in-flight window
/// ([`MAX_INFLIGHT`]) is full; 64 holds every part of every attempt the forwarder can have on the
/// wire at once by default (an alarms batch and 16 readings batches, a few parts each when the
/// batch cap exceeds `max_message_bytes`). A full channel is backpressure: the attempt is
/// answered with a retry instead of queueing more, which bounds memory during a slow broker.
pub const REQUEST_CAPACITY: usize = 64;

/// Publishes rumqttc keeps on the wire unacknowledged (`MqttOptions::set_inflight`); it keeps
/// as many for re-sending after a reconnect. 32: about twice what the forwarder sends at once
/// by default, so the window rarely holds a batch back, and small enough to bound the memory of
/// re-sends.
pub const MAX_INFLIGHT: u16 = 32;

/// First wait before reconnecting after a connection error; doubled per failure up to
/// [`RECONNECT_MAX`], reset by a CONNACK.
const RECONNECT_INITIAL: Duration = Duration::from_millis(100);
/// Longest wait between reconnects: short, so a broker that is back is used within seconds
/// (the driver's attempts wait for the connection at most `timeout`).
const RECONNECT_MAX: Duration = Duration::from_secs(5);
/// How long a stopping connection waits for its DISCONNECT to be written.
const DISCONNECT_WAIT: Duration = Duration::from_secs(2);

/// PUBLISH bytes besides payload and topic: fixed header (1 + up to 4 of remaining length),
/// topic length (2), packet id (2).
const PUBLISH_OVERHEAD: usize = 9;
/// CONNECT bytes besides client id, username and password: fixed header (≤ 5), protocol name
/// (6), level (1), flags (1), keep alive (2), and the three strings' length prefixes (6).
const CONNECT_OVERHEAD: usize = 21;
/// The largest MQTT packet: 4 bytes of remaining length (256 MiB - 1).
const MQTT_MAX_PACKET: usize = 268_435_455;

/// What an MQTT sink is configured with, as plain values: built from a `[[sink]] kind = "mqtt"`
/// table by the gateway (topics filled in), or by hand in tests. `Debug` never shows the password.
#[derive(Clone)]
pub struct MqttSinkOptions {
    /// Goes into every message body (WIRE §3); must be the forwarder's `gateway_id`.
    pub gateway_id: String,
    /// `mqtt://host[:port]` (plain TCP, default port 1883) or `mqtts://host[:port]` (TLS, 8883)
    /// (`sink[].url`, as loaded).
    pub url: Url,
    /// MQTT client id of the persistent session (`sink[].client_id`); not empty.
    pub client_id: String,
    /// Sent in CONNECT when set (`sink[].username`).
    pub username: Option<String>,
    /// Sent in CONNECT with the username (resolved from `sink[].password_env`); needs a
    /// username. Redacted in `Debug`.
    pub password: Option<String>,
    /// The TLS client for `mqtts://` (`sink[].ca_file`, `client_cert_file`, `client_key_file`).
    /// `None` with `mqtts://`: the platform's roots, no client certificate. Must be `None` with
    /// `mqtt://`.
    pub tls: Option<TlsClient>,
    /// Topic of readings batches (`sink[].topic` with `{lane}` = `readings`).
    pub readings_topic: String,
    /// Topic of alarms batches (`sink[].topic` with `{lane}` = `alarms`).
    pub alarms_topic: String,
    /// MQTT keep alive, whole seconds from 1 s to 65535 s (`sink[].keep_alive_s`, default 30 s).
    pub keep_alive: Duration,
    /// Per attempt: the longest wait for the connection to be up plus the PUBACKs of every
    /// message of the batch (`sink[].timeout_ms`, default 10 s). Also rumqttc's connect timeout
    /// (rounded up to whole seconds).
    pub timeout: Duration,
    /// Largest message body in bytes (`sink[].max_message_bytes`, default 128 KiB, AWS IoT
    /// Core's limit); larger batches are split.
    pub max_message_bytes: usize,
}

impl MqttSinkOptions {
    /// Defaults for everything but the gateway id, the URL and the client id; topics
    /// `dt/gateways/{gateway_id}/{lane}` filled in.
    pub fn new(gateway_id: impl Into<String>, url: Url, client_id: impl Into<String>) -> Self {
        let gateway_id = gateway_id.into();
        MqttSinkOptions {
            readings_topic: format!("dt/gateways/{gateway_id}/readings"),
            alarms_topic: format!("dt/gateways/{gateway_id}/alarms"),
            gateway_id,
            url,
            client_id: client_id.into(),
            username: None,
            password: None,
            tls: None,
            keep_alive: Duration::from_secs(30),
            timeout: Duration::from_millis(10_000),
            max_message_bytes: 131_072,
        }
    }

    /// Checks ranges; the error names the field.
    fn validate(&self) -> Result<(), ForwarderError> {
        let bad = |field: &'static str, reason: &str| {
            Err(ForwarderError::InvalidSinkOptions {
                field,
                reason: reason.to_string(),
            })
        };
        if self.gateway_id.is_empty() {
            return bad("gateway_id", "must not be empty");
        }
        // rumqttc panics on an empty client id with a persistent session; a broker would
        // assign a random one, which is no persistent session at all.
        if self.client_id.is_empty() {
            return bad("client_id", "must not be empty");
        }
        if self.client_id.len() > usize::from(u16::MAX) {
            return bad("client_id", "longer than 65535 bytes");
        }
        if self.password.is_some() && self.username.is_none() {
            // MQTT 3.1.1 §3.1.2.9: no password flag without the user name flag.
            return bad("password_env", "a password needs a username");
        }
        for (field, topic) in [
            ("topic", &self.readings_topic),
            ("topic", &self.alarms_topic),
        ] {
            if topic.is_empty() {
                return bad(field, "must not be empty");
            }
            if topic.contains(['+', '#', '\0']) {
                return bad(field, "a topic to publish on has no `+`, `#` or NUL");
            }
            if topic.len() > usize::from(u16::MAX) {
                return bad(field, "longer than 65535 bytes");
            }
        }
        let secs = self.keep_alive.as_secs();
        // rumqttc panics below one second, and the protocol carries whole seconds in 16 bits.
        if self.keep_alive.subsec_nanos() != 0 || !(1..=u64::from(u16::MAX)).contains(&secs) {
            return bad("keep_alive_s", "must be whole seconds from 1 to 65535");
        }
        if self.timeout.is_zero() {
            return bad("timeout_ms", "must be > 0");
        }
        if !(1..=MQTT_MAX_PACKET).contains(&self.max_message_bytes) {
            return bad("max_message_bytes", "must be from 1 to 268435455");
        }
        Ok(())
    }

    fn topic(&self, lane: Lane) -> &str {
        match lane {
            Lane::Readings => &self.readings_topic,
            Lane::Alarms => &self.alarms_topic,
        }
    }
}

impl fmt::Debug for MqttSinkOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MqttSinkOptions")
            .field("gateway_id", &self.gateway_id)
            .field("url", &gateway_config::redact_url(&self.url))
            .field("client_id", &self.client_id)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("tls", &self.tls)
            .field("readings_topic", &self.readings_topic)
            .field("alarms_topic", &self.alarms_topic)
            .field("keep_alive", &self.keep_alive)
            .field("timeout", &self.timeout)
            .field("max_message_bytes", &self.max_message_bytes)
            .finish()
    }
}

/// The broker's address from an `mqtt://` or `mqtts://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Broker {
    tls: bool,
    /// As written, IPv6 brackets included (rumqttc joins it with the port for the lookup).
    host: String,
    port: u16,
}

/// The broker `url` names, refused unless it is `mqtt[s]://host[:port]` (what config validation
/// already ensures of `sink[].url`; options built by hand may hold any URL).
fn broker_of(url: &Url) -> Result<Broker, ForwarderError> {
    let bad = |reason: String| ForwarderError::InvalidSinkOptions {
        field: "url",
        reason,
    };
    let tls = match url.scheme() {
        "mqtt" => false,
        "mqtts" => true,
        other => return Err(bad(format!("scheme must be mqtt or mqtts, not {other}"))),
    };
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad(
            "credentials go in username and password_env, not in the URL".into(),
        ));
    }
    if !matches!(url.path(), "" | "/") || url.query().is_some() || url.fragment().is_some() {
        return Err(bad("only a host and a port: mqtt[s]://host:port".into()));
    }
    let host = match url.host_str() {
        Some(host) if !host.is_empty() => host.to_string(),
        _ => return Err(bad("no host".into())),
    };
    let port = url.port().unwrap_or(if tls { 8883 } else { 1883 });
    Ok(Broker { tls, host, port })
}

/// rumqttc's packet size limit for these options: the largest PUBLISH we make or the CONNECT,
/// whichever is larger. rumqttc refuses to write a bigger packet, and refuses it again after
/// every reconnect, so this must never be short (its default is 10 KiB).
fn packet_limit(options: &MqttSinkOptions) -> usize {
    let topic = options.readings_topic.len().max(options.alarms_topic.len());
    let publish = options.max_message_bytes + topic + PUBLISH_OVERHEAD;
    let connect = CONNECT_OVERHEAD
        + options.client_id.len()
        + options.username.as_ref().map_or(0, String::len)
        + options.password.as_ref().map_or(0, String::len);
    publish.max(connect)
}

/// The MQTT sink: publishes each batch at QoS 1 and answers once the broker PUBACKed it. See
/// the module doc. `Debug` shows no credentials.
pub struct MqttSink {
    client: AsyncClient,
    tracker: Arc<Mutex<Tracker>>,
    up: watch::Receiver<bool>,
    gateway_id: String,
    readings_topic: String,
    alarms_topic: String,
    broker: Broker,
    timeout: Duration,
    max_message_bytes: usize,
}

impl fmt::Debug for MqttSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MqttSink")
            .field("broker", &self.broker)
            .field("readings_topic", &self.readings_topic)
            .field("alarms_topic", &self.alarms_topic)
            .field("timeout", &self.timeout)
            .field("max_message_bytes", &self.max_message_bytes)
            .finish_non_exhaustive()
    }
}

/// The sink's connection to the broker: run [`MqttConnection::run`] (spawned by the caller) for
/// anything to be sent.
pub struct MqttConnection {
    eventloop: EventLoop,
    client: AsyncClient,
    tracker: Arc<Mutex<Tracker>>,
    up: watch::Sender<bool>,
    broker: Broker,
    timeout: Duration,
}

impl fmt::Debug for MqttConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MqttConnection")
            .field("broker", &self.broker)
            .field("up", &*self.up.borrow())
            .finish_non_exhaustive()
    }
}

impl MqttSink {
    /// Validates the options, builds the TLS client for `mqtts://` (the platform's roots when
    /// `options.tls` is `None`) and rumqttc's client and event loop. Connects nothing: the
    /// returned [`MqttConnection`] does, once run.
    pub fn new(options: MqttSinkOptions) -> Result<(MqttSink, MqttConnection), ForwarderError> {
        options.validate()?;
        let broker = broker_of(&options.url)?;
        let tls = match (&options.tls, broker.tls) {
            (Some(tls), true) => Some(tls.clone()),
            (None, true) => Some(
                TlsClient::load(TlsFiles::default())
                    .map_err(|source| ForwarderError::SinkTls { source })?,
            ),
            (Some(_), false) => {
                return Err(ForwarderError::InvalidSinkOptions {
                    field: "url",
                    reason: "TLS files are set but the URL is mqtt:// (plaintext); use mqtts://"
                        .into(),
                });
            }
            (None, false) => None,
        };
        let mut mqtt = MqttOptions::new(&options.client_id, &broker.host, broker.port);
        let limit = packet_limit(&options);
        mqtt.set_clean_session(false)
            .set_keep_alive(options.keep_alive)
            .set_inflight(MAX_INFLIGHT)
            // Incoming: only CONNACK, PUBACK and PINGRESP are expected; a publish from some
            // other use of this client id's session gets the same room as ours.
            .set_max_packet_size(limit, limit);
        if let Some(user) = &options.username {
            // An empty password is not sent (rumqttc `Login::write`).
            mqtt.set_credentials(user, options.password.as_deref().unwrap_or(""));
        }
        if let Some(tls) = &tls {
            // Always our own rustls configuration: the configured roots and client certificate.
            mqtt.set_transport(Transport::Tls(TlsConfiguration::Rustls(tls.config())));
        }
        let (client, mut eventloop) = AsyncClient::new(mqtt, REQUEST_CAPACITY);
        let mut network = NetworkOptions::new();
        network.set_connection_timeout(options.timeout.as_secs_f64().ceil().max(1.0) as u64);
        eventloop.set_network_options(network);

        let tracker = Arc::new(Mutex::new(Tracker::default()));
        let (up_tx, up_rx) = watch::channel(false);
        let sink = MqttSink {
            client: client.clone(),
            tracker: tracker.clone(),
            up: up_rx,
            gateway_id: options.gateway_id.clone(),
            readings_topic: options.topic(Lane::Readings).to_string(),
            alarms_topic: options.topic(Lane::Alarms).to_string(),
            broker: broker.clone(),
            timeout: options.timeout,
            max_message_bytes: options.max_message_bytes,
        };
        let connection = MqttConnection {
            eventloop,
            client,
            tracker,
            up: up_tx,
            broker,
            timeout: options.timeout,
        };
        Ok((sink, connection))
    }

    fn topic(&self, lane: Lane) -> &str {
        match lane {
            Lane::Readings => &self.readings_topic,
            Lane::Alarms => &self.alarms_topic,
        }
    }

    async fn send(&self, batch: &EncodedBatch) -> Attempt {
        let deadline = Instant::now() + self.timeout;
        let parts = match split(&self.gateway_id, batch, self.max_message_bytes) {
            Ok(parts) => parts,
            Err(too_large) => {
                return Attempt {
                    outcome: Outcome::Refused {
                        answer: "too large".into(),
                        detail: format!(
                            "record seq {} is {} bytes, over max_message_bytes {}",
                            too_large.seq, too_large.bytes, self.max_message_bytes
                        ),
                    },
                    latency: None,
                };
            }
        };
        let retry = |reason| Attempt {
            outcome: Outcome::Retry {
                reason,
                retry_after: None,
            },
            latency: None,
        };

        // Never queue into an outage: wait for the connection, or answer without publishing.
        let mut up = self.up.clone();
        if timeout_at(deadline, wait_up(&mut up)).await != Ok(true) {
            return retry(RetryReason::Connect(lock(&self.tracker).down_reason()));
        }
        let started = Instant::now();
        let acks = {
            let mut tracker = lock(&self.tracker);
            if !tracker.up {
                // It went down between the wake-up and the lock.
                return retry(RetryReason::Connect(tracker.down_reason()));
            }
            let mut acks = Vec::with_capacity(parts.len());
            for part in parts {
                // Under the tracker's lock: the channel gets the publishes in queue order.
                let ack = tracker.queue();
                let topic = self.topic(batch.lane).to_string();
                if self
                    .client
                    .try_publish(topic, QoS::AtLeastOnce, false, part)
                    .is_err()
                {
                    tracker.unqueue();
                    // The parts already queued go out and may be acked: harmless duplicates.
                    return retry(RetryReason::Transport(format!(
                        "{REQUEST_CAPACITY} messages already wait for the broker's in-flight \
                         window"
                    )));
                }
                acks.push(ack);
            }
            acks
        };
        match timeout_at(deadline, try_join_all(acks)).await {
            Ok(Ok(_)) => Attempt {
                outcome: Outcome::Delivered,
                latency: Some(started.elapsed()),
            },
            Ok(Err(_)) => retry(RetryReason::Transport(format!(
                "the message was lost before the broker acknowledged it ({})",
                lock(&self.tracker).down_reason()
            ))),
            // The publishes stay with rumqttc; a late PUBACK finds a closed sender.
            Err(_) => retry(RetryReason::Timeout),
        }
    }
}

/// Whether the connection came up (false: the connection is gone for good).
async fn wait_up(up: &mut watch::Receiver<bool>) -> bool {
    // The returned guard is dropped here, before any other await.
    up.wait_for(|up| *up).await.is_ok()
}

impl Sink for MqttSink {
    /// The broker's host and port (a proxy is never used).
    fn probe_target(&self) -> Option<ProbeTarget> {
        Some(ProbeTarget {
            host: self.broker.host.trim_matches(['[', ']']).to_string(),
            port: self.broker.port,
        })
    }

    /// Publishes the batch (split if over `max_message_bytes`) and waits for every PUBACK, all
    /// within `timeout`. Never panics, never returns an error: every failure is an [`Outcome`].
    fn attempt<'a>(&'a self, batch: &'a EncodedBatch) -> BoxFuture<'a, Attempt> {
        self.send(batch).boxed()
    }
}

impl MqttConnection {
    /// Connects, keeps the connection up (reconnecting after errors with a backoff from 100 ms
    /// to 5 s) and matches PUBACKs to attempts until `shutdown` is cancelled. Then lets the
    /// attempts still waiting for a PUBACK finish for up to `timeout`, sends DISCONNECT (bounded)
    /// and returns; later attempts are answered with a retry.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut backoff = RECONNECT_INITIAL;
        let mut failures = 0u32;
        let mut last_logged: Option<String> = None;
        let mut stop_by: Option<Instant> = None;
        loop {
            if stop_by.is_some() && lock(&self.tracker).waiting() == 0 {
                break;
            }
            let polled = tokio::select! {
                () = shutdown.cancelled(), if stop_by.is_none() => {
                    stop_by = Some(Instant::now() + self.timeout);
                    continue;
                }
                () = sleep_until(stop_by.unwrap_or_else(Instant::now)), if stop_by.is_some() => break,
                // Dropped only on the way out (above), or by the stop deadline: rumqttc keeps
                // what it has read in its state and queues.
                polled = self.eventloop.poll() => polled,
            };
            match polled {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    backoff = RECONNECT_INITIAL;
                    failures = 0;
                    last_logged = None;
                    let lost = {
                        let mut tracker = lock(&self.tracker);
                        let lost = if ack.session_present {
                            0
                        } else {
                            tracker.session_lost()
                        };
                        tracker.connected();
                        lost
                    };
                    self.up.send_replace(true);
                    info!(
                        host = %self.broker.host,
                        port = self.broker.port,
                        session_present = ack.session_present,
                        "mqtt sink: connected to the broker"
                    );
                    if lost > 0 {
                        warn!(
                            messages = lost,
                            "mqtt sink: the broker kept no session for us; messages it had not \
                             acknowledged are sent again by the forwarder"
                        );
                    }
                }
                Ok(event) => lock(&self.tracker).apply(&event),
                Err(e) => {
                    let text = error_text(&e);
                    let taken_back = {
                        let mut tracker = lock(&self.tracker);
                        let taken_back = take_back(&mut self.eventloop, &mut tracker);
                        tracker.disconnected(text.clone());
                        taken_back
                    };
                    self.up.send_replace(false);
                    failures += 1;
                    // Every failure of a new kind, then the 1st, 2nd, 4th, 8th… of a kind: a
                    // long outage does not flood the log.
                    if last_logged.as_deref() != Some(&text) || failures.is_power_of_two() {
                        log_failure(&e, &text, failures, backoff, taken_back);
                        last_logged = Some(text);
                    }
                    if stop_by.is_some() {
                        break;
                    }
                    tokio::select! {
                        () = shutdown.cancelled() => stop_by = Some(Instant::now() + self.timeout),
                        () = sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(RECONNECT_MAX);
                }
            }
        }
        self.close().await;
    }

    /// Fails every attempt still waiting, and leaves the broker with a DISCONNECT if connected.
    async fn close(mut self) {
        let connected = {
            let mut tracker = lock(&self.tracker);
            let connected = tracker.up;
            tracker.disconnected("the MQTT sink's connection has stopped".into());
            tracker.forget_all();
            connected
        };
        self.up.send_replace(false);
        if connected && self.client.try_disconnect().is_ok() {
            let written = async {
                loop {
                    match self.eventloop.poll().await {
                        Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_) => break,
                        Ok(_) => {}
                    }
                }
            };
            let _ = timeout(DISCONNECT_WAIT, written).await;
        }
        info!(host = %self.broker.host, port = self.broker.port, "mqtt sink: connection stopped");
    }
}

/// After a connection error (rumqttc has run `EventLoop::clean`): brings the tracker in step
/// with the events rumqttc queued before the failure, then takes out of rumqttc the publishes
/// it never sent (no packet id yet in `pending`, or parked as a collision) and answers their
/// attempts. Returns how many were taken back. See the module doc for why.
fn take_back(eventloop: &mut EventLoop, tracker: &mut Tracker) -> usize {
    for event in eventloop.state.events.drain(..) {
        tracker.apply(&event);
    }
    // The collision was read from the channel before anything still in `pending` or the
    // channel, so it is the oldest queued publish.
    let mut unsent = usize::from(eventloop.state.collision.take().is_some());
    let before = eventloop.pending.len();
    eventloop
        .pending
        .retain(|request| !matches!(request, Request::Publish(p) if p.pkid == 0));
    unsent += before - eventloop.pending.len();
    tracker.dropped_unsent(unsent);
    unsent
}

/// An error and those of its sources whose text it does not already hold: rumqttc's messages
/// embed their source's, so a plain chain repeats each part up to four times.
fn error_text(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        let more = e.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = e.source();
    }
    text
}

fn log_failure(
    e: &ConnectionError,
    text: &str,
    failures: u32,
    backoff: Duration,
    taken_back: usize,
) {
    let retry_in_ms = backoff.as_millis() as u64;
    if is_tls_failure(e) {
        error!(error = %text, failures, retry_in_ms, "mqtt sink: TLS with the broker failed (nothing was sent in plaintext): check that ca_file, or a platform root when it is not set, signed the broker's certificate for this host name, and the client certificate if the broker requires one");
    } else if let ConnectionError::ConnectionRefused(code) = e {
        error!(
            ?code,
            failures,
            retry_in_ms,
            "mqtt sink: the broker refused our CONNECT: check the client id, username and password, or the client certificate"
        );
    } else {
        warn!(error = %text, failures, retry_in_ms, taken_back, "mqtt sink: broker connection lost");
    }
}

/// Whether the connection failed in TLS: the handshake, or an alert after it (a TLS 1.3 server
/// refuses a client certificate only after the client thinks the handshake is done, so that
/// arrives as an I/O error of the first read).
fn is_tls_failure(e: &ConnectionError) -> bool {
    if matches!(e, ConnectionError::Tls(_)) {
        return true;
    }
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && io
                .get_ref()
                .is_some_and(|inner| inner.is::<rumqttc::tokio_rustls::rustls::Error>())
        {
            return true;
        }
        source = err.source();
    }
    false
}

fn lock(tracker: &Mutex<Tracker>) -> MutexGuard<'_, Tracker> {
    // A std mutex: held only for a few map operations and a channel `try_send`, never across an
    // await. The tracker stays consistent even if a holder panicked (each method completes its
    // change before anything can panic), so a poisoned lock is used as is.
    tracker
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Pairs PUBACKs with the attempts waiting for them, from what rumqttc reports (see the module
/// doc). Pure: no I/O, no clock.
#[derive(Debug, Default)]
struct Tracker {
    /// Publishes in rumqttc's request channel (or parked by it as a collision) that have no
    /// packet id yet, oldest first: channel order.
    unsent: VecDeque<oneshot::Sender<()>>,
    /// Publishes rumqttc has given a packet id and the broker has not acked yet.
    in_flight: HashMap<u16, oneshot::Sender<()>>,
    /// The connection is up: from a CONNACK to the next error.
    up: bool,
    /// The last connection error, for attempts that find the connection down.
    last_error: Option<String>,
}

impl Tracker {
    /// A publish about to go into the request channel; the receiver completes on its PUBACK
    /// and fails if the publish is lost before.
    fn queue(&mut self) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        self.unsent.push_back(tx);
        rx
    }

    /// The publish queued last did not make it into the channel.
    fn unqueue(&mut self) {
        self.unsent.pop_back();
    }

    /// Applies one event of rumqttc's (CONNACKs aside, see [`Tracker::connected`]).
    fn apply(&mut self, event: &Event) {
        match event {
            Event::Outgoing(Outgoing::Publish(pkid)) => self.sent(*pkid),
            Event::Incoming(Packet::PubAck(ack)) => self.acked(ack.pkid),
            Event::Outgoing(Outgoing::AwaitAck(pkid)) => {
                // The publish stays first in `unsent`; its `Outgoing::Publish` follows the
                // PUBACK of this id.
                debug!(
                    pkid,
                    "mqtt sink: the broker acks out of order; a publish waits for its packet id"
                );
            }
            _ => {}
        }
    }

    /// `Outgoing::Publish(pkid)`: rumqttc wrote a publish.
    fn sent(&mut self, pkid: u16) {
        if self.in_flight.contains_key(&pkid) {
            // A re-send after a reconnect: same publish, same attempt.
            return;
        }
        match self.unsent.pop_front() {
            Some(tx) => {
                self.in_flight.insert(pkid, tx);
            }
            None => debug!(pkid, "mqtt sink: a publish went out that no attempt queued"),
        }
    }

    /// `Incoming::PubAck(pkid)`: the broker has the message.
    fn acked(&mut self, pkid: u16) {
        if let Some(tx) = self.in_flight.remove(&pkid) {
            // Err: the attempt gave up waiting (timeout); nothing to tell.
            let _ = tx.send(());
        }
    }

    /// The oldest `n` queued publishes were taken out of rumqttc: their attempts fail now.
    fn dropped_unsent(&mut self, n: usize) {
        let n = n.min(self.unsent.len());
        self.unsent.drain(..n);
    }

    /// The broker resumed no session, so rumqttc dropped its re-sends: their attempts fail now
    /// and their packet ids are free. Returns how many attempts still waited.
    fn session_lost(&mut self) -> usize {
        let waiting = self.in_flight.values().filter(|tx| !tx.is_closed()).count();
        self.in_flight.clear();
        waiting
    }

    fn connected(&mut self) {
        self.up = true;
    }

    fn disconnected(&mut self, error: String) {
        self.up = false;
        self.last_error = Some(error);
    }

    /// Fails every attempt still waiting (the connection is stopping).
    fn forget_all(&mut self) {
        self.unsent.clear();
        self.in_flight.clear();
    }

    /// Attempts still waiting for a PUBACK.
    fn waiting(&self) -> usize {
        self.unsent
            .iter()
            .chain(self.in_flight.values())
            .filter(|tx| !tx.is_closed())
            .count()
    }

    /// Why an attempt finds the connection down.
    fn down_reason(&self) -> String {
        self.last_error
            .clone()
            .unwrap_or_else(|| "not connected to the broker yet".into())
    }
}

/// A record that cannot go out within the message size limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct TooLarge {
    seq: u64,
    /// Size of the record's batch JSON on its own.
    bytes: usize,
}

/// The message bodies a batch goes out as: its body when within `max` bytes, else consecutive
/// runs of its records, greedily as long as each run's WIRE §3 JSON stays within `max`.
/// Deterministic, so every attempt of a batch sends the same messages.
fn split(gateway_id: &str, batch: &EncodedBatch, max: usize) -> Result<Vec<Vec<u8>>, TooLarge> {
    if batch.body.len() <= max {
        return Ok(vec![Vec::from(Bytes::clone(&batch.body))]);
    }
    let envelope = wire::envelope_len(gateway_id, batch.lane);
    let encoded: Vec<Vec<u8>> = batch
        .records
        .iter()
        .map(|record| {
            let mut out = Vec::with_capacity(160);
            wire::encode_record(record, &mut out);
            out
        })
        .collect();
    let mut parts = Vec::new();
    let mut start = 0;
    let mut len = envelope;
    for (i, record) in encoded.iter().enumerate() {
        let alone = envelope + record.len();
        if alone > max {
            return Err(TooLarge {
                seq: batch.records[i].seq,
                bytes: alone,
            });
        }
        // A record after the first of a part costs its comma too.
        if i > start && len + 1 + record.len() > max {
            parts.push(part(gateway_id, batch.lane, &encoded[start..i], len));
            start = i;
            len = alone;
        } else {
            len += record.len() + usize::from(i > start);
        }
    }
    parts.push(part(gateway_id, batch.lane, &encoded[start..], len));
    Ok(parts)
}

fn part(gateway_id: &str, lane: Lane, records: &[Vec<u8>], len: usize) -> Vec<u8> {
    let body = wire::assemble_body(gateway_id, lane, records.iter().map(Vec::as_slice), len);
    debug_assert_eq!(body.len(), len);
    body
}

#[cfg(test)]
mod tests {
    use super::*;
    use gateway_buffer::{AlarmEvent, AlarmState, Reading, Record, Severity, Source, Stored};
    use tokio::sync::oneshot::error::TryRecvError;

    fn reading(seq: u64, device: &str) -> Stored {
        Stored {
            seq,
            record: Record::Reading(Reading {
                device: device.into(),
                metric: "temperature".into(),
                value: seq as f64 / 10.0,
                unit: Some("C".into()),
                ts_ms: 1_764_081_600_000 + seq as i64,
                source: Source::Mqtt,
            }),
        }
    }

    fn alarm(seq: u64) -> Stored {
        Stored {
            seq,
            record: Record::Alarm(AlarmEvent {
                alarm: "overheat".into(),
                state: AlarmState::Raised,
                severity: Severity::Critical,
                device: "dev-7".into(),
                metric: "temperature".into(),
                value: 36.2,
                threshold: Some(35.0),
                ts_ms: 1_764_081_600_000,
            }),
        }
    }

    fn batch(lane: Lane, records: Vec<Stored>) -> EncodedBatch {
        let body = wire::encode_body("gw-1", lane, &records);
        EncodedBatch::new("gw-1", lane, records, body.into())
    }

    fn seqs(part: &[u8]) -> Vec<u64> {
        let v: serde_json::Value = serde_json::from_slice(part).unwrap();
        assert_eq!(v["gateway_id"], "gw-1");
        v["records"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["seq"].as_u64().unwrap())
            .collect()
    }

    // --- the tracker -------------------------------------------------------------------

    fn delivered(rx: &mut oneshot::Receiver<()>) -> bool {
        rx.try_recv().is_ok()
    }

    fn pending(rx: &mut oneshot::Receiver<()>) -> bool {
        rx.try_recv() == Err(TryRecvError::Empty)
    }

    fn failed(rx: &mut oneshot::Receiver<()>) -> bool {
        rx.try_recv() == Err(TryRecvError::Closed)
    }

    #[test]
    fn pubacks_reach_the_attempts_in_the_order_their_publishes_were_queued() {
        let mut t = Tracker::default();
        let mut a = t.queue();
        let mut b = t.queue();
        let mut c = t.queue();
        t.sent(1);
        t.sent(2);
        t.sent(3);
        t.acked(3);
        assert!(delivered(&mut c));
        assert!(pending(&mut a) && pending(&mut b));
        t.acked(1);
        t.acked(2);
        assert!(delivered(&mut a) && delivered(&mut b));
        assert_eq!(t.waiting(), 0);
    }

    #[test]
    fn a_publish_re_sent_after_a_reconnect_keeps_its_attempt_and_takes_no_other() {
        let mut t = Tracker::default();
        let mut a = t.queue();
        t.sent(1);
        t.disconnected("reset".into());
        let mut b = t.queue();
        t.connected();
        t.sent(1); // rumqttc re-sends pkid 1 from `pending`
        t.sent(2); // then b, new
        t.acked(2);
        assert!(delivered(&mut b));
        assert!(pending(&mut a));
        t.acked(1);
        assert!(delivered(&mut a));
    }

    #[test]
    fn an_attempt_that_timed_out_leaves_the_others_matched() {
        let mut t = Tracker::default();
        let a = t.queue();
        let mut b = t.queue();
        t.sent(1);
        drop(a); // the attempt's timeout fired
        t.sent(2);
        assert_eq!(t.waiting(), 1);
        t.acked(1); // a late PUBACK finds a closed sender
        t.acked(2);
        assert!(delivered(&mut b));
        // Its packet id is free again and pairs with the next publish.
        let mut c = t.queue();
        t.sent(1);
        t.acked(1);
        assert!(delivered(&mut c));
    }

    #[test]
    fn a_publish_parked_on_a_packet_id_collision_gets_its_own_puback() {
        let mut t = Tracker::default();
        let mut a = t.queue();
        let mut b = t.queue();
        let mut c = t.queue();
        t.sent(1);
        t.sent(2);
        // c gets id 1 while 1 is unacked: rumqttc parks it (AwaitAck), then sends it after the
        // PUBACK of the first 1.
        t.apply(&Event::Outgoing(Outgoing::AwaitAck(1)));
        t.apply(&Event::Incoming(Packet::PubAck(rumqttc::PubAck::new(1))));
        t.apply(&Event::Outgoing(Outgoing::Publish(1)));
        assert!(delivered(&mut a));
        assert!(pending(&mut c));
        t.apply(&Event::Incoming(Packet::PubAck(rumqttc::PubAck::new(1))));
        assert!(delivered(&mut c));
        assert!(pending(&mut b));
    }

    #[test]
    fn publishes_taken_back_at_a_disconnect_fail_their_attempts_at_once() {
        let mut t = Tracker::default();
        let mut a = t.queue();
        let mut b = t.queue();
        let mut c = t.queue();
        let mut d = t.queue();
        t.sent(1);
        t.dropped_unsent(2); // b and c were still in the channel
        assert!(failed(&mut b) && failed(&mut c));
        t.sent(2); // d went into the channel after the clean-up
        t.acked(2);
        t.acked(1);
        assert!(delivered(&mut a) && delivered(&mut d));
    }

    #[test]
    fn a_lost_session_fails_the_publishes_in_flight_and_frees_their_packet_ids() {
        let mut t = Tracker::default();
        let mut a = t.queue();
        let b = t.queue();
        t.sent(1);
        t.sent(2);
        drop(b);
        t.disconnected("reset".into());
        assert_eq!(t.session_lost(), 1, "b had given up already");
        assert!(failed(&mut a));
        // Without the reset, pkid 1 would look like a re-send and c would never be paired.
        let mut c = t.queue();
        t.sent(1);
        t.acked(1);
        assert!(delivered(&mut c));
    }

    #[test]
    fn a_publish_that_did_not_fit_in_the_channel_is_unqueued() {
        let mut t = Tracker::default();
        let mut a = t.queue();
        let mut b = t.queue();
        t.unqueue();
        assert!(failed(&mut b));
        t.sent(1);
        t.acked(1);
        assert!(delivered(&mut a));
    }

    #[test]
    fn a_connection_error_reads_once_however_deep_its_sources() {
        // What a broker that wants a client certificate answers over TLS 1.3.
        let io = std::io::Error::other("received fatal alert: CertificateRequired");
        let e = ConnectionError::MqttState(rumqttc::StateError::Deserialization(
            rumqttc::Error::Io(io),
        ));
        assert_eq!(
            error_text(&e),
            "Mqtt state: Mqtt serialization/deserialization error: IO: received fatal alert: \
             CertificateRequired"
        );
        let refused =
            ConnectionError::Io(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert_eq!(error_text(&refused), "I/O: connection refused");
    }

    #[test]
    fn the_reason_for_a_down_connection_is_its_last_error() {
        let mut t = Tracker::default();
        assert_eq!(t.down_reason(), "not connected to the broker yet");
        t.disconnected("I/O: connection refused".into());
        assert_eq!(t.down_reason(), "I/O: connection refused");
    }

    // --- rumqttc's queues at a disconnect ----------------------------------------------

    /// An event loop that never connected, with publishes in its request channel: `clean` (what
    /// rumqttc runs on every connection error) moves them to `pending` in order and without
    /// packet ids, and `take_back` removes them and answers their attempts, keeping the
    /// re-sends of publishes in flight.
    #[test]
    fn take_back_removes_what_rumqttc_never_sent_and_keeps_its_re_sends() {
        let (client, mut eventloop) =
            AsyncClient::new(MqttOptions::new("t", "127.0.0.1", 1), REQUEST_CAPACITY);
        let mut t = Tracker::default();
        let mut a = t.queue();
        let mut b = t.queue();
        let mut c = t.queue();
        for body in [&b"b"[..], b"c"] {
            client
                .try_publish("x", QoS::AtLeastOnce, false, body)
                .unwrap();
        }
        // a was sent as pkid 7 before the failure, and is in `pending` for re-sending.
        let mut resend = rumqttc::Publish::new("x", QoS::AtLeastOnce, &b"a"[..]);
        resend.pkid = 7;
        eventloop
            .state
            .events
            .push_back(Event::Outgoing(Outgoing::Publish(7)));
        eventloop.clean();
        eventloop.pending.push_front(Request::Publish(resend));
        let payloads: Vec<_> = eventloop
            .pending
            .iter()
            .map(|r| match r {
                Request::Publish(p) => (p.pkid, p.payload.to_vec()),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            payloads,
            [(7, b"a".to_vec()), (0, b"b".to_vec()), (0, b"c".to_vec())]
        );

        assert_eq!(take_back(&mut eventloop, &mut t), 2);
        assert!(failed(&mut b) && failed(&mut c));
        assert_eq!(eventloop.pending.len(), 1);
        assert!(eventloop.state.events.is_empty());
        t.acked(7);
        assert!(delivered(&mut a));
    }

    // --- splitting ---------------------------------------------------------------------

    #[test]
    fn a_batch_within_the_limit_is_one_message_of_its_very_body() {
        let b = batch(
            Lane::Readings,
            (1..=5).map(|s| reading(s, "dev-1")).collect(),
        );
        let parts = split("gw-1", &b, b.body.len()).unwrap();
        assert_eq!(parts, vec![b.body.to_vec()]);
    }

    #[test]
    fn a_large_batch_splits_into_valid_batches_of_consecutive_records_within_the_limit() {
        let records: Vec<Stored> = (10..60)
            .map(|s| reading(s, &"d".repeat(s as usize % 7 + 1)))
            .collect();
        let b = batch(Lane::Readings, records.clone());
        for max in [b.body.len() - 1, 1000, 400, 300] {
            let parts = split("gw-1", &b, max).unwrap();
            assert!(parts.len() > 1, "max {max}");
            let mut all = Vec::new();
            for (i, part) in parts.iter().enumerate() {
                assert!(part.len() <= max, "part {i} is {} > {max}", part.len());
                let got = seqs(part);
                // Each part is exactly the WIRE §3 body of its records.
                let mine: Vec<Stored> = records
                    .iter()
                    .filter(|r| got.contains(&r.seq))
                    .cloned()
                    .collect();
                assert_eq!(part, &wire::encode_body("gw-1", Lane::Readings, &mine));
                // Greedy: the next record would not have fitted.
                if let Some(next) = parts.get(i + 1) {
                    let mut more = mine.clone();
                    let first_next = seqs(next)[0];
                    more.push(
                        records
                            .iter()
                            .find(|r| r.seq == first_next)
                            .unwrap()
                            .clone(),
                    );
                    assert!(wire::encode_body("gw-1", Lane::Readings, &more).len() > max);
                }
                all.extend(got);
            }
            assert_eq!(all, (10..60).collect::<Vec<_>>(), "consecutive, all, once");
            // Same batch, same messages.
            assert_eq!(split("gw-1", &b, max).unwrap(), parts);
        }
    }

    #[test]
    fn a_record_too_large_on_its_own_is_refused_with_its_seq_and_size() {
        let b = batch(
            Lane::Readings,
            vec![
                reading(1, "dev"),
                reading(2, &"x".repeat(500)),
                reading(3, "dev"),
            ],
        );
        let alone = wire::encode_body("gw-1", Lane::Readings, &[b.records[1].clone()]).len();
        assert_eq!(
            split("gw-1", &b, 300),
            Err(TooLarge {
                seq: 2,
                bytes: alone
            })
        );
        // Exactly at the limit it goes, alone.
        let parts = split("gw-1", &b, alone).unwrap();
        assert_eq!(
            parts.iter().map(|p| seqs(p)).collect::<Vec<_>>(),
            [vec![1], vec![2], vec![3]]
        );
    }

    #[tokio::test]
    async fn an_oversize_record_is_refused_without_touching_the_broker() {
        let mut options = MqttSinkOptions::new("gw-1", "mqtt://127.0.0.1:1".parse().unwrap(), "c");
        options.max_message_bytes = 200;
        let (sink, _connection) = MqttSink::new(options).unwrap();
        let b = batch(Lane::Alarms, vec![alarm(41), alarm(42)]);
        let attempt = sink.attempt(&b).await;
        let Outcome::Refused { answer, detail } = attempt.outcome else {
            panic!("{attempt:?}");
        };
        assert_eq!(answer, "too large");
        let alone = wire::encode_body("gw-1", Lane::Alarms, &[alarm(41)]).len();
        assert_eq!(
            detail,
            format!("record seq 41 is {alone} bytes, over max_message_bytes 200")
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_attempt_while_the_broker_is_unreachable_is_a_connect_retry_after_the_timeout() {
        let mut options = MqttSinkOptions::new("gw-1", "mqtt://127.0.0.1:1".parse().unwrap(), "c");
        options.timeout = Duration::from_secs(3);
        let (sink, connection) = MqttSink::new(options).unwrap();
        // The connection is not run: nothing ever comes up.
        let started = Instant::now();
        let attempt = sink
            .attempt(&batch(Lane::Readings, vec![reading(1, "d")]))
            .await;
        assert_eq!(started.elapsed(), Duration::from_secs(3));
        assert_eq!(
            attempt.outcome,
            Outcome::Retry {
                reason: RetryReason::Connect("not connected to the broker yet".into()),
                retry_after: None
            }
        );
        assert_eq!(lock(&sink.tracker).unsent.len(), 0, "nothing was queued");
        drop(connection);
    }

    // --- rumqttc against a scripted broker ---------------------------------------------

    /// A broker that speaks just enough MQTT 3.1.1 for a test to script one connection at a
    /// time: CONNACK with or without a session, PUBLISHes read, PUBACKs when told.
    mod scripted {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        use tokio::net::{TcpListener, TcpStream};

        async fn packet(s: &mut TcpStream) -> (u8, Vec<u8>) {
            let first = s.read_u8().await.expect("a packet");
            let (mut len, mut shift) = (0usize, 0);
            loop {
                let b = s.read_u8().await.expect("remaining length");
                len |= usize::from(b & 0x7f) << shift;
                if b & 0x80 == 0 {
                    break;
                }
                shift += 7;
            }
            let mut body = vec![0; len];
            s.read_exact(&mut body).await.expect("packet body");
            (first, body)
        }

        /// Takes the next connection and answers its CONNECT.
        pub async fn accept(l: &TcpListener, session_present: bool) -> TcpStream {
            let (mut s, _) = l.accept().await.unwrap();
            let (kind, _) = packet(&mut s).await;
            assert_eq!(kind, 0x10, "CONNECT first");
            s.write_all(&[0x20, 2, u8::from(session_present), 0])
                .await
                .unwrap();
            s
        }

        /// The next PUBLISH (QoS 1): packet id and payload. Answers PINGREQs on the way.
        pub async fn publish(s: &mut TcpStream) -> (u16, Vec<u8>) {
            loop {
                let (kind, body) = packet(s).await;
                match kind >> 4 {
                    3 => {
                        assert_eq!(kind & 0b0110, 0b0010, "QoS 1");
                        let topic = usize::from(u16::from_be_bytes([body[0], body[1]]));
                        let at = 2 + topic;
                        let pkid = u16::from_be_bytes([body[at], body[at + 1]]);
                        return (pkid, body[at + 2..].to_vec());
                    }
                    12 => s.write_all(&[0xd0, 0]).await.unwrap(),
                    other => panic!("unexpected packet type {other}"),
                }
            }
        }

        pub async fn puback(s: &mut TcpStream, pkid: u16) {
            let [hi, lo] = pkid.to_be_bytes();
            s.write_all(&[0x40, 2, hi, lo]).await.unwrap();
        }
    }

    async fn scripted_sink() -> (
        tokio::net::TcpListener,
        MqttSink,
        CancellationToken,
        tokio::task::JoinHandle<()>,
    ) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("mqtt://{}", listener.local_addr().unwrap());
        let options = MqttSinkOptions::new("gw-1", url.parse().unwrap(), "gw-1");
        let (sink, connection) = MqttSink::new(options).unwrap();
        let stop = CancellationToken::new();
        let task = tokio::spawn(connection.run(stop.clone()));
        (listener, sink, stop, task)
    }

    #[tokio::test]
    async fn a_message_unacked_when_the_connection_broke_is_re_sent_under_its_id_and_delivers_its_attempt()
     {
        let (listener, sink, stop, task) = scripted_sink().await;
        let a = batch(Lane::Readings, vec![reading(1, "a"), reading(2, "a")]);
        let broker = async {
            let mut s = scripted::accept(&listener, false).await;
            let (pkid, payload) = scripted::publish(&mut s).await;
            assert_eq!(payload, a.body.to_vec());
            drop(s); // no PUBACK
            let mut s = scripted::accept(&listener, true).await;
            let again = scripted::publish(&mut s).await;
            assert_eq!(
                again,
                (pkid, a.body.to_vec()),
                "rumqttc re-sends it as it was"
            );
            scripted::puback(&mut s, pkid).await;
            s
        };
        let (attempt, _open) = tokio::join!(sink.attempt(&a), broker);
        assert_eq!(attempt.outcome, Outcome::Delivered);
        stop.cancel();
        task.await.unwrap();
    }

    #[tokio::test]
    async fn a_fresh_session_after_a_reconnect_fails_the_attempt_in_flight_at_once_and_the_next_is_paired_right()
     {
        let (listener, sink, stop, task) = scripted_sink().await;
        let a = batch(Lane::Readings, vec![reading(1, "a")]);
        let b = batch(Lane::Alarms, vec![alarm(2)]);
        let broker = async {
            let mut s = scripted::accept(&listener, false).await;
            let (first, _) = scripted::publish(&mut s).await;
            drop(s);
            let mut s = scripted::accept(&listener, false).await;
            // rumqttc dropped its re-send with the session: the next publish is b's.
            let (pkid, payload) = scripted::publish(&mut s).await;
            assert_eq!(payload, b.body.to_vec());
            assert_ne!(pkid, first);
            scripted::puback(&mut s, pkid).await;
            s
        };
        let attempts = async {
            let started = Instant::now();
            let first = sink.attempt(&a).await;
            let failed_after = started.elapsed();
            (first, failed_after, sink.attempt(&b).await)
        };
        let ((first, failed_after, second), _open) = tokio::join!(attempts, broker);
        assert!(
            matches!(
                &first.outcome,
                Outcome::Retry {
                    reason: RetryReason::Transport(_),
                    ..
                }
            ),
            "{first:?}"
        );
        assert!(
            failed_after < Duration::from_secs(5),
            "{failed_after:?}: not a timeout"
        );
        assert_eq!(second.outcome, Outcome::Delivered);
        stop.cancel();
        task.await.unwrap();
    }

    // --- options -----------------------------------------------------------------------

    #[test]
    fn urls_name_a_broker_and_nothing_else() {
        let parse_url = |text: &str| broker_of(&text.parse().unwrap());
        assert_eq!(
            parse_url("mqtts://a1b2-ats.iot.eu-west-1.amazonaws.com").unwrap(),
            Broker {
                tls: true,
                host: "a1b2-ats.iot.eu-west-1.amazonaws.com".into(),
                port: 8883
            }
        );
        assert_eq!(
            parse_url("mqtt://10.0.0.5:1884/").unwrap(),
            Broker {
                tls: false,
                host: "10.0.0.5".into(),
                port: 1884
            }
        );
        for bad in [
            "https://broker:443",
            "mqtt://user:pw@broker:1883",
            "mqtt://broker:1883/topic",
            "mqtt://broker:1883?x=1",
            "mqtt:broker",
            "broker:1883",
        ] {
            let err = parse_url(bad).unwrap_err().to_string();
            assert!(err.contains("url"), "{bad}: {err}");
            assert!(!err.contains("pw"), "{bad}: {err}");
        }
    }

    #[test]
    fn invalid_options_are_errors_naming_the_key_never_panics() {
        let ok = MqttSinkOptions::new("gw", "mqtt://127.0.0.1:1883".parse().unwrap(), "gw");
        type Change = Box<dyn Fn(&mut MqttSinkOptions)>;
        let cases: Vec<(&str, Change)> = vec![
            ("client_id", Box::new(|o| o.client_id.clear())),
            ("password_env", Box::new(|o| o.password = Some("pw".into()))),
            ("topic", Box::new(|o| o.readings_topic = "a/+/b".into())),
            ("topic", Box::new(|o| o.alarms_topic = String::new())),
            (
                "keep_alive_s",
                Box::new(|o| o.keep_alive = Duration::from_millis(500)),
            ),
            ("timeout_ms", Box::new(|o| o.timeout = Duration::ZERO)),
            ("max_message_bytes", Box::new(|o| o.max_message_bytes = 0)),
            (
                "url",
                Box::new(|o| {
                    o.tls = Some(TlsClient::load(TlsFiles::default()).unwrap());
                }),
            ),
        ];
        for (key, change) in cases {
            let mut o = ok.clone();
            change(&mut o);
            let err = MqttSink::new(o).unwrap_err().to_string();
            assert!(err.contains(key), "{key}: {err}");
        }
        assert!(MqttSink::new(ok).is_ok());
    }

    #[test]
    fn debug_output_never_shows_the_password() {
        let mut o = MqttSinkOptions::new("gw", "mqtt://127.0.0.1:1883".parse().unwrap(), "gw");
        o.username = Some("user".into());
        o.password = Some("s3cret".into());
        assert!(!format!("{o:?}").contains("s3cret"));
        let (sink, connection) = MqttSink::new(o).unwrap();
        assert!(!format!("{sink:?}{connection:?}").contains("s3cret"));
    }

    #[test]
    fn the_packet_limit_fits_the_largest_message_and_the_connect() {
        let mut o = MqttSinkOptions::new("gw", "mqtt://127.0.0.1:1883".parse().unwrap(), "gw");
        o.max_message_bytes = 1000;
        let topic = o.readings_topic.len();
        let publish =
            rumqttc::Publish::new(o.readings_topic.clone(), QoS::AtLeastOnce, vec![b'x'; 1000]);
        let mut with_id = publish.clone();
        with_id.pkid = 1;
        assert!(with_id.size() <= packet_limit(&o));
        assert_eq!(packet_limit(&o), 1000 + topic + PUBLISH_OVERHEAD);
        o.max_message_bytes = 1;
        o.username = Some("u".repeat(300));
        o.password = Some("p".repeat(300));
        let mut connect = rumqttc::Connect::new(o.client_id.clone());
        connect.set_login("u".repeat(300), "p".repeat(300));
        assert!(Packet::Connect(connect).size() <= packet_limit(&o));
    }
}
