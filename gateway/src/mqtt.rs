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

use crate::decode::MqttDecoder;
use crate::pipeline::{IngestError, Pipeline};
use crate::telemetry::Throttle;
use futures::FutureExt;
use futures::stream::{FuturesOrdered, StreamExt};
use gateway_buffer::Source;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, Publish, QoS, TlsConfiguration, Transport};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How the gateway connects to its broker, resolved from the config.
#[derive(Debug, Clone)]
pub struct MqttSettings {
    pub host: String,
    pub port: u16,
    pub tls_ca: Option<Vec<u8>>,
    pub client_id: String,
    pub credentials: Option<(String, String)>,
    pub topics: Vec<String>,
    pub templates: Vec<String>,
    /// QoS 1 messages the gateway lets rumqttc keep unacknowledged at once.
    pub max_inflight: u16,
    pub max_payload_bytes: usize,
    pub keep_alive: Duration,
    pub reconnect_max: Duration,
    /// Embedded broker: on stop, keep ingesting what it has queued for up to this long.
    pub drain_on_stop: Option<Duration>,
}

/// The MQTT source could not start.
#[derive(Debug, thiserror::Error)]
pub enum MqttError {
    /// The CA file for `mqtts://` could not be read.
    #[error("mqtt.ca_file {path}: {source}")]
    CaFile {
        path: String,
        source: std::io::Error,
    },
}

type Pending = Pin<Box<dyn Future<Output = (Vec<Publish>, Result<(), IngestError>)> + Send>>;

/// Most publishes decoded into one append. Taking what rumqttc has already read costs no
/// latency; the bound keeps one append (and the acks waiting on it) small.
const MAX_BATCH: usize = 256;

impl MqttSettings {
    fn options(&self) -> MqttOptions {
        let mut o = MqttOptions::new(&self.client_id, &self.host, self.port);
        o.set_clean_session(false)
            .set_manual_acks(true)
            .set_keep_alive(self.keep_alive)
            .set_inflight(self.max_inflight.max(1))
            // Room for the envelope around the largest payload we accept; bigger messages are
            // still read (and rejected as too_large by the decoder) up to 4x the limit.
            .set_max_packet_size(
                self.max_payload_bytes.saturating_mul(4).max(16 * 1024),
                256 * 1024,
            );
        if let Some((user, pass)) = &self.credentials {
            o.set_credentials(user, pass);
        }
        if let Some(ca) = &self.tls_ca {
            o.set_transport(Transport::Tls(TlsConfiguration::Simple {
                ca: ca.clone(),
                alpn: None,
                client_auth: None,
            }));
        }
        o
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
    let decoder = MqttDecoder::new(&settings.templates, settings.max_payload_bytes);
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
            Some((publishes, result)) = pending.next(), if !pending.is_empty() => {
                acks.push(publishes, result);
                continue;
            }
            event = eventloop.poll() => event,
        };
        // Take every publish rumqttc has already read, so they share one append.
        let mut batch = Vec::new();
        let mut lost = None;
        let mut next = Some(event);
        let mut turns = 0;
        while let Some(event) = next.take() {
            turns += 1;
            match event {
                Ok(Event::Incoming(Packet::Publish(p))) => batch.push(p),
                Ok(Event::Incoming(Packet::ConnAck(c))) => {
                    backoff = Duration::from_millis(100);
                    pipeline.metrics().set_mqtt_connected(true);
                    tracing::info!(host = %settings.host, port = settings.port, session_present = c.session_present, "connected to broker");
                    // Subscribe on every connect: cheap, and correct if the broker lost our session.
                    for topic in &settings.topics {
                        if let Err(e) = client.try_subscribe(topic.as_str(), QoS::AtLeastOnce) {
                            tracing::error!(topic, error = %e, "subscribe request failed");
                        }
                    }
                }
                Ok(Event::Incoming(Packet::SubAck(s))) => {
                    tracing::debug!(pkid = s.pkid, "subscribed");
                }
                Ok(_) => {}
                Err(e) => {
                    lost = Some(e);
                    break;
                }
            }
            // Whatever else is ready (our own PUBACKs going out, mostly) does not end the batch.
            if batch.len() < MAX_BATCH && turns < 2 * MAX_BATCH {
                next = eventloop.poll().now_or_never();
            }
        }
        if !batch.is_empty() {
            pending.push_back(start(&decoder, &pipeline, batch, appends.clone()).await);
        }
        if let Some(e) = lost {
            pipeline.metrics().source_disconnects.fetch_add(1, Relaxed);
            pipeline.metrics().set_mqtt_connected(false);
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
    while let Some((publishes, result)) = pending.next().await {
        acks.push(publishes, result);
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
    /// No publish for this long: the broker's queue for us is empty.
    const QUIET: Duration = Duration::from_millis(150);
    let until = tokio::time::Instant::now() + max;
    let mut quiet = Box::pin(tokio::time::sleep(QUIET));
    loop {
        acks.flush(client);
        tokio::select! {
            _ = tokio::time::sleep_until(until) => break,
            Some((publishes, result)) = pending.next(), if !pending.is_empty() => acks.push(publishes, result),
            _ = &mut quiet => break,
            event = eventloop.poll() => match event {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    pending.push_back(start(decoder, pipeline, vec![p], appends.clone()).await);
                    quiet.as_mut().reset(tokio::time::Instant::now() + QUIET);
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    }
}

/// Decodes messages and queues their readings as one append, now, so that appends are stored
/// in the order the messages came; the returned future resolves once the messages may be acked
/// (or must not be). Poison is dead-lettered at once and acked with the rest, or it would come
/// back forever.
async fn start(
    decoder: &MqttDecoder,
    pipeline: &Pipeline,
    publishes: Vec<Publish>,
    cancel: CancellationToken,
) -> Pending {
    let now = pipeline.now_ms();
    let mut readings = Vec::with_capacity(publishes.len());
    for p in &publishes {
        match decoder.decode(&p.topic, &p.payload, now) {
            Ok(r) => readings.extend(r),
            Err(why) => pipeline.reject(&p.topic, &p.payload, &why),
        }
    }
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
        (publishes, result)
    })
}

/// Smallest request channel: room for a few subscribes and a burst of acks.
const REQUEST_CHANNEL_MIN: usize = 256;

/// PUBACKs waiting for room in rumqttc's request channel, in arrival order.
#[derive(Debug, Default)]
struct AckQueue {
    waiting: std::collections::VecDeque<Publish>,
}

impl AckQueue {
    /// Queues the acks of messages whose readings are durable; messages that could not be
    /// stored get none, so the broker redelivers them.
    fn push(&mut self, publishes: Vec<Publish>, result: Result<(), IngestError>) {
        static NOT_STORED: Throttle = Throttle::new(Duration::from_secs(10));
        match result {
            Ok(()) => self.waiting.extend(publishes),
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
