//! The MQTT source: a persistent QoS 1 session whose PUBACKs are sent only after the readings
//! are durable.
//!
//! One task owns the rumqttc event loop and keeps polling it (rumqttc stalls if it is not
//! polled). The publishes that are already read when one arrives (up to [`MAX_BATCH`]) are
//! decoded together and queued as one append at once, in arrival order (so readings are stored
//! in the order they came), and concurrent batches share a group commit. Completions are taken
//! in arrival order (MQTT requires PUBACKs in the order the PUBLISHes came) and each message is
//! acked as soon as it and everything before it is durable.
//!
//! On a disconnect rumqttc drops PUBACKs it had not sent yet; the broker redelivers those
//! messages on the persistent session, so they are appended again (a duplicate, never a loss).
//!
//! # Message size: never a reason to drop the connection
//!
//! rumqttc reads a packet whole, and one over its incoming limit is a fatal error of the
//! connection, not a skipped message (rumqtt issue #614; thin-edge.io #3124 and others hit the
//! same loop): the broker then redelivers the same un-acked QoS 1 message on the persistent
//! session after every reconnect, forever, and nothing else gets through. MQTT 3.1.1, which the
//! gateway speaks, cannot tell the broker our limit (v5's Maximum Packet Size in CONNECT would make
//! the broker drop such messages silently, which loses them without a trace). So the limit is
//! aligned instead of negotiated:
//!
//! - `mqtt.max_packet_bytes` (default 1 MiB) is the largest packet the gateway reads, and the
//!   broker is configured to accept nothing larger from devices (mosquitto `max_packet_size`, set
//!   to the same value in `deploy/mosquitto.conf` and in the test harness; the embedded broker gets
//!   it as its packet limit). mosquitto applies its limit to the whole packet and rumqttc its own
//!   to the packet less its fixed header, so whatever the broker accepts, the gateway can read.
//!   rumqttc's limit gets [`TOPIC_HEADROOM`] on top: an MQTT v5 device may publish with a topic
//!   alias, and the broker then forwards to us a packet that carries the whole topic.
//! - A message over `mqtt.max_payload_bytes` but within that packet limit is read, rejected as
//!   `too_large` (counted), dead-lettered with only its first
//!   [`TOO_LARGE_EXCERPT_BYTES`](crate::sources::decode::TOO_LARGE_EXCERPT_BYTES) bytes, and acknowledged
//!   like any other rejected message, so it never comes back.
//! - A device sending a packet over the broker's limit is disconnected by the broker (mosquitto's
//!   behaviour for `max_packet_size`): its message never enters our queue, and the gateway's
//!   connection is not involved. mosquitto's older `message_size_limit` is not used: it acks such
//!   messages to the device and then drops them without a trace.
//! - If the broker is misconfigured and sends a bigger packet anyway, the connection still drops;
//!   that is logged as an error naming both settings.
//!
//! Memory stays bounded: each message is decoded as soon as rumqttc hands it over, and only what
//! its ack needs (packet id and QoS) is kept while its readings become durable; the raw payload
//! is dropped at once (an oversized one after its excerpt is copied). rumqttc itself holds at most
//! the ~10 packets it parses per read plus one partial packet, and the broker sends at most
//! `max_inflight` unacknowledged messages, so raw payloads in memory stay within about ten times
//! `max_packet_bytes` however large or many the messages are.

use crate::ops::metrics::IngestMetrics;
use crate::ops::telemetry::Throttle;
use crate::pipeline::{IngestError, Pipeline};
use crate::sources::decode::{IngestRules, MqttDecoder};
use futures::FutureExt;
use futures::stream::{FuturesOrdered, StreamExt};
use gateway_buffer::{Reading, Source};
use gateway_config::{Secret, TlsClient, TopicTemplate};
use rumqttc::{
    AsyncClient, Event, MqttOptions, Packet, Publish, QoS, SubscribeFilter, SubscribeReasonCode,
    TlsConfiguration, Transport,
};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// How the gateway connects to its broker, resolved from the config.
#[derive(Debug, Clone)]
pub struct MqttSettings {
    pub host: String,
    pub port: u16,
    /// TLS for an `mqtts://` broker, built and checked at config load; `None`: plain TCP (an
    /// `mqtt://` broker, or the embedded one).
    pub tls: Option<TlsClient>,
    pub client_id: String,
    /// Username and password sent in CONNECT; the password never prints.
    pub credentials: Option<(String, Secret)>,
    pub topics: Vec<String>,
    /// `mqtt.topic_templates`, as loaded.
    pub templates: Vec<TopicTemplate>,
    /// QoS 1 messages the gateway lets rumqttc keep unacknowledged at once.
    pub max_inflight: u16,
    pub max_payload_bytes: usize,
    /// Largest packet read from the broker (`mqtt.max_packet_bytes`), before [`TOPIC_HEADROOM`].
    pub max_packet_bytes: usize,
    /// The `[ingest]` rules readings are checked against.
    pub rules: IngestRules,
    pub keep_alive: Duration,
    pub reconnect_max: Duration,
    /// Embedded broker: on stop, keep ingesting what it has queued for us, for up to this long
    /// (most of `shutdown_grace_s`: it acknowledged those messages to devices and holds them only
    /// in memory).
    pub drain_on_stop: Option<Duration>,
}

type Pending = Pin<Box<dyn Future<Output = Appended> + Send>>;

/// A batch whose append finished: the messages to ack if it succeeded, and when the first of
/// them arrived (for the ack latency).
struct Appended {
    publishes: Vec<Publish>,
    arrived: Instant,
    result: Result<(), IngestError>,
}

/// Added to rumqttc's incoming limit over `mqtt.max_packet_bytes`: a topic (at most 65,535 bytes
/// and its length) that a v5 device sent as a topic alias comes back to us in full.
pub const TOPIC_HEADROOM: usize = 65_535 + 2;

/// Most publishes decoded into one append. Taking what rumqttc has already read costs no
/// latency; the bound keeps one append (and the acks waiting on it) small.
const MAX_BATCH: usize = 256;

impl MqttSettings {
    /// Options of a client of this broker with `client_id`: address, credentials and TLS. Every
    /// MQTT client of the gateway starts from these, so none can connect in plaintext to an
    /// `mqtts://` broker.
    pub(crate) fn connect_options(&self, client_id: &str) -> MqttOptions {
        let mut o = MqttOptions::new(client_id, &self.host, self.port);
        if let Some((user, pass)) = &self.credentials {
            o.set_credentials(user, pass.expose());
        }
        if let Some(tls) = &self.tls {
            o.set_transport(Transport::Tls(TlsConfiguration::Rustls(tls.config())));
        }
        o
    }

    fn options(&self) -> MqttOptions {
        let mut o = self.connect_options(&self.client_id);
        o.set_clean_session(false)
            .set_manual_acks(true)
            .set_keep_alive(self.keep_alive)
            .set_inflight(self.max_inflight.max(1))
            // Everything the broker may deliver (see the module doc); outgoing: acks, subscribes
            // and local alarm events.
            .set_max_packet_size(self.incoming_limit(), 256 * 1024);
        o
    }

    /// rumqttc's incoming packet limit: the broker's limit plus room for an aliased topic.
    pub fn incoming_limit(&self) -> usize {
        self.max_packet_bytes.saturating_add(TOPIC_HEADROOM)
    }
}

/// Runs the source until `shutdown`; then stops reading, lets the appends in progress finish and
/// sends their acks.
pub async fn run(settings: MqttSettings, pipeline: Pipeline, shutdown: CancellationToken) {
    // The request channel carries our PUBACKs and subscribes, and only drains while this task
    // polls the event loop; we cannot await space in it. So acks wait in `acks` (in order) and
    // go into the channel as room allows, on every turn of the loop; none is ever dropped.
    let request_capacity = usize::from(settings.max_inflight).max(REQUEST_CHANNEL_MIN);
    let (client, mut eventloop) = AsyncClient::new(settings.options(), request_capacity);
    let mut acks = AckQueue::default();
    let decoder = MqttDecoder::new(&settings.templates, settings.max_payload_bytes)
        .with_rules(settings.rules);
    // Appends in progress; cancelling them on shutdown would only lose acks, so they get their
    // own token that fires after the source has stopped reading.
    let appends = CancellationToken::new();
    let mut pending: FuturesOrdered<Pending> = FuturesOrdered::new();
    let mut backoff = Duration::from_millis(100);
    pipeline.metrics().set_mqtt_connected(false);

    loop {
        acks.flush(&client);
        // Not biased: a burst of completed appends must not keep the event loop from running
        // (it is what drains the acks), nor a flood of publishes keep the acks from being queued.
        let event = tokio::select! {
            _ = shutdown.cancelled() => break,
            Some(done) = pending.next(), if !pending.is_empty() => {
                acks.push(done, pipeline.metrics());
                continue;
            }
            event = eventloop.poll() => event,
        };
        // Take every publish rumqttc has already read, so they share one append. Each is decoded
        // as it comes and kept only for its ack.
        let mut batch = Batch::default();
        let mut lost = None;
        let mut next = Some(event);
        let mut turns = 0;
        while let Some(event) = next.take() {
            turns += 1;
            match event {
                Ok(Event::Incoming(Packet::Publish(p))) => batch.receive(&decoder, &pipeline, p),
                Ok(Event::Incoming(Packet::ConnAck(c))) => {
                    backoff = Duration::from_millis(100);
                    pipeline.metrics().set_mqtt_connected(true);
                    tracing::info!(host = %settings.host, port = settings.port, session_present = c.session_present, "connected to broker");
                    // Subscribe on every connect: cheap, and correct if the broker lost our
                    // session. One SUBSCRIBE for every filter, so its SUBACK answers for all.
                    let filters = settings
                        .topics
                        .iter()
                        .map(|t| SubscribeFilter::new(t.clone(), QoS::AtLeastOnce));
                    if let Err(e) = client.try_subscribe_many(filters) {
                        tracing::error!(topics = ?settings.topics, error = %e, "subscribe request failed");
                    }
                }
                Ok(Event::Incoming(Packet::SubAck(s))) => {
                    let granted = granted_filters(&settings.topics, &s.return_codes);
                    pipeline.metrics().set_mqtt_subscribed(granted);
                    if granted {
                        tracing::debug!(pkid = s.pkid, "subscribed");
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    lost = Some(e);
                    break;
                }
            }
            // Whatever else is ready (our own PUBACKs going out, mostly) does not end the batch.
            if batch.acks.len() < MAX_BATCH && turns < 2 * MAX_BATCH {
                next = eventloop.poll().now_or_never();
            }
        }
        if !batch.acks.is_empty() {
            pending.push_back(start(&pipeline, batch, appends.clone()).await);
        }
        if let Some(e) = lost {
            pipeline.metrics().source_disconnects.fetch_add(1, Relaxed);
            pipeline.metrics().set_mqtt_connected(false);
            if is_oversized_packet(&e) {
                tracing::error!(error = %e, limit = settings.incoming_limit(), "the broker sent a packet larger than mqtt.max_packet_bytes allows; it will send it again after every reconnect: set the broker's max_packet_size to mqtt.max_packet_bytes or less (see deploy/mosquitto.conf)");
            }
            match &e {
                _ if is_tls_failure(&e) => {
                    tracing::error!(error = %e, "TLS with the broker failed (nothing was sent in plaintext): check that mqtt.ca_file, or a platform root when it is not set, signed the broker's certificate for this host name, and the client certificate if the broker requires one")
                }
                rumqttc::ConnectionError::ConnectionRefused(code) => tracing::error!(
                    ?code,
                    "the broker refused our CONNECT: check mqtt.username and the password, or the client certificate"
                ),
                _ => {}
            }
            tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "broker connection lost");
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(settings.reconnect_max);
        }
    }

    if let Some(max) = settings.drain_on_stop {
        let source = (&decoder, &pipeline, &appends);
        drain_embedded(
            &mut eventloop,
            &client,
            source,
            &mut pending,
            &mut acks,
            max,
        )
        .await;
    }

    // Stop taking messages; finish what is being appended and send those acks.
    // The subscription stays: unsubscribing would make the broker drop what devices publish
    // while we are away. Publishes that arrive from here on are not acked, so the broker keeps
    // them for our session and redelivers them on the next start.
    appends.cancel();
    while let Some(done) = pending.next().await {
        acks.push(done, pipeline.metrics());
    }
    // Let the event loop write the acks and then the disconnect; bounded so a dead broker can't
    // hold up shutdown.
    let flush = async {
        let mut disconnecting = false;
        loop {
            acks.flush(&client);
            if acks.is_empty() && !disconnecting {
                disconnecting = client.try_disconnect().is_ok();
            }
            match eventloop.poll().await {
                Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) | Err(_) => break,
                Ok(_) => {}
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), flush).await;
    tracing::info!("mqtt source stopped");
}

/// Whether the connection failed in TLS: the handshake, or an alert the broker sent after it (TLS
/// 1.3 servers refuse a client certificate only after the client thinks the handshake is done,
/// so that arrives as an I/O error of the first read).
fn is_tls_failure(e: &rumqttc::ConnectionError) -> bool {
    if matches!(e, rumqttc::ConnectionError::Tls(_)) {
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

/// The embedded broker acknowledged to devices everything it holds for us and keeps it only in
/// memory: before stopping, ingest what it has queued until it goes quiet (or `max` passes), so
/// that what devices were acknowledged before the stop began is not lost with the process.
async fn drain_embedded(
    eventloop: &mut rumqttc::EventLoop,
    client: &AsyncClient,
    (decoder, pipeline, appends): (&MqttDecoder, &Pipeline, &CancellationToken),
    pending: &mut FuturesOrdered<Pending>,
    acks: &mut AckQueue,
    max: Duration,
) {
    /// No publish for this long with nothing of ours outstanding: the broker's queue for us is
    /// empty. While appends or acks are outstanding the broker may be quiet only because our
    /// in-flight window is full, so the quiet clock runs only when they are done, from the last
    /// publish or finished append.
    const QUIET: Duration = Duration::from_millis(150);
    let until = tokio::time::Instant::now() + max;
    let mut quiet = Box::pin(tokio::time::sleep(QUIET));
    loop {
        acks.flush(client);
        let outstanding = !pending.is_empty() || !acks.is_empty();
        if outstanding {
            quiet.as_mut().reset(tokio::time::Instant::now() + QUIET);
        }
        tokio::select! {
            _ = tokio::time::sleep_until(until) => {
                tracing::warn!(waited_ms = max.as_millis() as u64, "stopped draining the embedded broker at the shutdown grace: what it still held for the gateway is lost with the process (raise shutdown_grace_s)");
                break;
            }
            Some(done) = pending.next(), if !pending.is_empty() => {
                acks.push(done, pipeline.metrics());
                quiet.as_mut().reset(tokio::time::Instant::now() + QUIET);
            }
            _ = &mut quiet, if !outstanding => break,
            event = eventloop.poll() => match event {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let mut batch = Batch::default();
                    batch.receive(decoder, pipeline, p);
                    pending.push_back(start(pipeline, batch, appends.clone()).await);
                    quiet.as_mut().reset(tokio::time::Instant::now() + QUIET);
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    }
}

/// Messages read in one turn: what their acks need, and their readings in arrival order.
#[derive(Default)]
struct Batch {
    /// The messages, payload and topic dropped: an ack needs only the packet id and QoS.
    acks: Vec<Publish>,
    readings: Vec<Reading>,
    /// When the first of them was read.
    arrived: Option<Instant>,
}

impl Batch {
    /// Decodes one message now. Poison is dead-lettered at once (an oversized payload only by
    /// its first bytes) and acked with the rest, or it would come back forever.
    fn receive(&mut self, decoder: &MqttDecoder, pipeline: &Pipeline, mut p: Publish) {
        self.arrived.get_or_insert_with(Instant::now);
        match decoder.decode(&p.topic, &p.payload, pipeline.now_ms()) {
            Ok(r) => self.readings.extend(r),
            Err(why) => pipeline.reject(&p.topic, why.dead_letter_payload(&p.payload), &why),
        }
        // Frees the raw bytes now rather than when the readings are durable.
        p.payload = Default::default();
        p.topic = String::new();
        self.acks.push(p);
    }
}

/// Queues a batch's readings as one append, now, so that appends are stored in the order the
/// messages came; the returned future resolves once the messages may be acked (or must not be).
async fn start(pipeline: &Pipeline, batch: Batch, cancel: CancellationToken) -> Pending {
    let Batch {
        acks,
        readings,
        arrived,
    } = batch;
    let arrived = arrived.unwrap_or_else(Instant::now);
    let queued = if readings.is_empty() {
        None
    } else {
        Some(pipeline.queue(Source::Mqtt, readings).await)
    };
    Box::pin(async move {
        let result = match queued {
            None => Ok(()),
            Some(Ok(queued)) => queued.durable(&cancel).await,
            Some(Err(e)) => Err(e),
        };
        Appended {
            publishes: acks,
            arrived,
            result,
        }
    })
}

/// Whether the connection was lost because the broker sent a packet over rumqttc's limit.
/// Whether a SUBACK granted every filter of our one SUBSCRIBE; logs each refused filter (a
/// broker ACL that denies it, say: the gateway would be connected and hear nothing on it).
fn granted_filters(topics: &[String], codes: &[SubscribeReasonCode]) -> bool {
    let mut granted = codes.len() == topics.len();
    if !granted {
        tracing::error!(
            filters = topics.len(),
            answers = codes.len(),
            "the broker answered the subscription with the wrong number of return codes"
        );
    }
    for (topic, code) in topics.iter().zip(codes) {
        if *code == SubscribeReasonCode::Failure {
            granted = false;
            tracing::error!(
                topic,
                "the broker refused the subscription (check its ACL for this client): readings on it do not reach the gateway"
            );
        }
    }
    granted
}

fn is_oversized_packet(e: &rumqttc::ConnectionError) -> bool {
    matches!(
        e,
        rumqttc::ConnectionError::MqttState(rumqttc::StateError::Deserialization(
            rumqttc::mqttbytes::Error::PayloadSizeLimitExceeded(_)
        ))
    )
}

/// Smallest request channel: room for a few subscribes and a burst of acks.
const REQUEST_CHANNEL_MIN: usize = 256;

/// PUBACKs waiting for room in rumqttc's request channel, in arrival order.
#[derive(Debug, Default)]
struct AckQueue {
    waiting: std::collections::VecDeque<Publish>,
}

impl AckQueue {
    /// Queues the acks of messages whose readings are durable (counting how long they waited);
    /// messages that could not be stored get none, so the broker redelivers them.
    fn push(&mut self, done: Appended, metrics: &IngestMetrics) {
        static NOT_STORED: Throttle = Throttle::new(Duration::from_secs(10));
        let Appended {
            publishes,
            arrived,
            result,
        } = done;
        match result {
            Ok(()) => {
                metrics.observe_ack(arrived.elapsed(), publishes.len() as u64);
                self.waiting.extend(publishes);
            }
            Err(e) => {
                if let Some(suppressed) = NOT_STORED.allow() {
                    tracing::warn!(error = %e, messages = publishes.len(), suppressed, "messages left unacknowledged; the broker will redeliver them");
                }
            }
        }
    }

    /// Moves as many acks as fit into the request channel.
    fn flush(&mut self, client: &AsyncClient) {
        while let Some(publish) = self.waiting.front() {
            if client.try_ack(publish).is_err() {
                // Full: the event loop drains it when polled; the rest go on a later turn.
                return;
            }
            self.waiting.pop_front();
        }
    }

    fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topics(t: &[&str]) -> Vec<String> {
        t.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn a_suback_granting_every_filter_at_any_qos_is_a_subscription() {
        let t = topics(&["sensors/#", "plant/+/data"]);
        let codes = [
            SubscribeReasonCode::Success(QoS::AtLeastOnce),
            SubscribeReasonCode::Success(QoS::AtMostOnce),
        ];
        assert!(granted_filters(&t, &codes));
    }

    #[test]
    fn one_refused_filter_or_a_missing_answer_is_not_a_subscription() {
        let t = topics(&["sensors/#", "secret/#"]);
        let refused = [
            SubscribeReasonCode::Success(QoS::AtLeastOnce),
            SubscribeReasonCode::Failure,
        ];
        assert!(!granted_filters(&t, &refused));
        let short = [SubscribeReasonCode::Success(QoS::AtLeastOnce)];
        assert!(!granted_filters(&t, &short));
    }
}
