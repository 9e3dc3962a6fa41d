//! Publishes alarm events on the gateway's broker at `alarms/{device}/{rule}` (QoS 1), so local
//! actuators and dashboards react without the cloud (WIRE.md §4). A raise is retained; a clear
//! is published as a non-retained message with the cleared event's JSON (so a live subscriber
//! sees what cleared), then as an empty retained message, which removes the retained raise.
//! In a device id, `%` is written `%25` and `/` `%2F`, so the topic always has three levels.
//!
//! It is a consumer of the buffer's alarm lane with its own cursor: an event is acknowledged to
//! the buffer only after the broker has acknowledged its publishes, so events survive a broker
//! outage or a restart (a repeat after a crash is harmless: the retained state is the same).
//!
//! # Never stalled
//! An event that cannot be published must not hold back the ones behind it (the lane's cursor
//! would stop, and with `when_full = "block"` the alarm lane would fill and stop ingest). Every
//! failure is counted in `gateway_local_alarm_errors_total`, logged (throttled), and the event is
//! acknowledged to the buffer without being published:
//! - a topic no broker accepts (a `+`, `#` or NUL, or longer than MQTT allows): skipped before
//!   sending;
//! - a publish the MQTT client refuses to queue: skipped;
//! - an event the broker answers by dropping the connection (e.g. a packet over its
//!   `max_packet_size`): after a connection loss with publishes outstanding, events go one at a
//!   time until the lost round is behind; an event that was alone in flight when the connection
//!   was lost [`MAX_STRIKES`] times in a row (each time right after a successful connect) is
//!   skipped. A broker outage does not count: a strike needs a connection that was accepted.
//! - publishes not acknowledged within [`ROUND_TIMEOUT`]: handled as a lost connection.
//!
//! Each connection gets a fresh MQTT client: rumqttc would otherwise resend its unacknowledged
//! publishes on reconnect, an event that makes the broker disconnect included, before this
//! module had a say.
//!
//! The decisions are in [`Outbox`], a pure state machine; [`run`] does the I/O.

use crate::ops::metrics::IngestMetrics;
use crate::ops::telemetry::Throttle;
use crate::sources::mqtt::MqttSettings;
use gateway_buffer::{AlarmState, Buffer, Lane, Record, Stored};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The buffer consumer name of this sink.
pub const CONSUMER: &str = "local-alarms";

/// The MQTT client id of the alarm publisher, next to the source's `client_id`.
pub fn client_id(source_client_id: &str) -> String {
    format!("{source_client_id}-alarms")
}

/// Events published per round; alarms are rare, this only bounds a backlog after an outage.
const MAX_PER_ROUND: usize = 100;

/// Losses of the connection with one event alone in flight before that event is skipped.
pub const MAX_STRIKES: u32 = 3;

/// How long a round's publishes may wait for their acknowledgements before the connection is
/// treated as lost.
pub const ROUND_TIMEOUT: Duration = Duration::from_secs(30);

/// Longest MQTT topic name, in bytes (a two-byte length prefix).
const MAX_TOPIC_BYTES: usize = 65_535;

/// The topic of an event: `alarms/{device}/{rule}`, with `%` in the device written `%25` and
/// `/` written `%2F` (WIRE.md §4), so the topic always has exactly three levels. Rule names
/// cannot hold `/` (the config refuses it).
pub fn topic(device: &str, rule: &str) -> String {
    let mut t = String::with_capacity(8 + device.len() + rule.len());
    t.push_str("alarms/");
    for c in device.chars() {
        match c {
            '%' => t.push_str("%25"),
            '/' => t.push_str("%2F"),
            c => t.push(c),
        }
    }
    t.push('/');
    t.push_str(rule);
    t
}

/// Why an alarm event was not published locally (it is skipped, counted and logged).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PublishError {
    /// The topic has a `+`, `#` or NUL, or is longer than 65,535 bytes: no broker accepts it.
    #[error("topic {topic:?} is not a valid MQTT topic name")]
    BadTopic { topic: String },
    /// The MQTT client refused to queue the publish.
    #[error("the MQTT client refused the publish: {reason}")]
    Refused { reason: String },
    /// The connection was lost [`MAX_STRIKES`] times in a row while this event alone was in
    /// flight (the broker refuses it, e.g. over its packet size limit).
    #[error("the broker dropped the connection {strikes} times while this event was in flight")]
    BrokerDrops { strikes: u32 },
}

/// One MQTT message to publish.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub topic: String,
    pub payload: Vec<u8>,
    pub retain: bool,
}

/// The messages of one event (WIRE.md §4): a raise is its JSON, retained; a clear is its JSON,
/// not retained, then an empty retained message that removes the raise.
pub fn messages(stored: &Stored) -> Result<Vec<Message>, PublishError> {
    let Record::Alarm(e) = &stored.record else {
        return Ok(Vec::new());
    };
    let topic = topic(&e.device, &e.alarm);
    if topic.len() > MAX_TOPIC_BYTES || topic.contains(['+', '#', '\0']) {
        return Err(PublishError::BadTopic { topic });
    }
    Ok(match e.state {
        AlarmState::Raised => vec![Message {
            topic,
            payload: json(stored),
            retain: true,
        }],
        AlarmState::Cleared => vec![
            Message {
                topic: topic.clone(),
                payload: json(stored),
                retain: false,
            },
            Message {
                topic,
                payload: Vec::new(),
                retain: true,
            },
        ],
    })
}

/// A round: publishes sent and not yet acknowledged.
#[derive(Debug, Clone, PartialEq)]
struct Round {
    /// Publishes still waiting for their PUBACK.
    left: usize,
    /// The seq acknowledged to the buffer once they all are.
    last_seq: u64,
    /// The seq of the one event of a careful round.
    single: Option<u64>,
    deadline: Instant,
}

/// What to do with a batch read from the alarm lane.
#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    /// Publish these, in order.
    pub messages: Vec<Message>,
    /// Skip these events (count and log each).
    pub skipped: Vec<(u64, PublishError)>,
    /// Acknowledge up to this seq to the buffer now (nothing to wait for).
    pub ack_now: Option<u64>,
}

/// The local publisher's decisions, without I/O.
#[derive(Debug, Default)]
pub struct Outbox {
    round: Option<Round>,
    /// After a connection loss with publishes outstanding: up to this seq, one event per round.
    careful_until: Option<u64>,
    /// The event alone in flight at the last connection losses, and how many in a row.
    strikes: Option<(u64, u32)>,
}

impl Outbox {
    /// Whether a new round may start.
    pub fn idle(&self) -> bool {
        self.round.is_none()
    }

    /// How many events to read for the next round.
    pub fn round_len(&self) -> usize {
        if self.careful_until.is_some() {
            1
        } else {
            MAX_PER_ROUND
        }
    }

    /// When the round in flight times out.
    pub fn deadline(&self) -> Option<Instant> {
        self.round.as_ref().map(|r| r.deadline)
    }

    /// Starts a round over `batch` (at most [`Outbox::round_len`] events, in seq order).
    pub fn plan(&mut self, batch: &[Stored], now: Instant) -> Plan {
        let mut plan = Plan::default();
        let Some(last_seq) = batch.last().map(|s| s.seq) else {
            return plan;
        };
        let single = (batch.len() == 1 && self.careful_until.is_some()).then_some(last_seq);
        for stored in batch {
            if let Some((seq, strikes)) = self.strikes
                && seq == stored.seq
                && strikes >= MAX_STRIKES
            {
                self.strikes = None;
                plan.skipped
                    .push((stored.seq, PublishError::BrokerDrops { strikes }));
                continue;
            }
            match messages(stored) {
                Ok(m) => plan.messages.extend(m),
                Err(e) => plan.skipped.push((stored.seq, e)),
            }
        }
        if plan.messages.is_empty() {
            plan.ack_now = Some(last_seq);
            self.acked(last_seq);
        } else {
            self.round = Some(Round {
                left: plan.messages.len(),
                last_seq,
                single,
                deadline: now + ROUND_TIMEOUT,
            });
        }
        plan
    }

    /// A publish of the round will never be acknowledged (the client refused it). Returns the
    /// seq to acknowledge to the buffer if that completes the round.
    pub fn refused(&mut self) -> Option<u64> {
        self.on_puback()
    }

    /// A PUBACK arrived. Returns the seq to acknowledge to the buffer if it completes the round.
    pub fn on_puback(&mut self) -> Option<u64> {
        let round = self.round.as_mut()?;
        round.left = round.left.saturating_sub(1);
        if round.left > 0 {
            return None;
        }
        let round = self.round.take()?;
        if round.single.is_some() {
            self.strikes = None;
        }
        self.acked(round.last_seq);
        Some(round.last_seq)
    }

    fn acked(&mut self, seq: u64) {
        if self.careful_until.is_some_and(|until| seq >= until) {
            self.careful_until = None;
        }
    }

    /// The connection was lost (or the round timed out). `accepted`: the broker had accepted
    /// this connection, so the loss may be the answer to what was in flight.
    pub fn on_lost(&mut self, accepted: bool) {
        let Some(round) = self.round.take() else {
            return;
        };
        self.careful_until = Some(self.careful_until.unwrap_or(0).max(round.last_seq));
        if let (Some(seq), true) = (round.single, accepted) {
            self.strikes = match self.strikes {
                Some((s, n)) if s == seq => Some((seq, n + 1)),
                _ => Some((seq, 1)),
            };
        }
    }
}

/// Counts, logs (throttled) and otherwise forgets an event that was not published.
fn note_error(metrics: &IngestMetrics, seq: u64, error: &PublishError) {
    static LOG: Throttle = Throttle::new(Duration::from_secs(10));
    metrics.local_alarm_errors.fetch_add(1, Relaxed);
    if let Some(suppressed) = LOG.allow() {
        tracing::warn!(seq, error = %error, suppressed, "alarm event not published locally; skipped (counted in gateway_local_alarm_errors_total)");
    }
}

fn options(settings: &MqttSettings) -> MqttOptions {
    let mut opts = settings.connect_options(&client_id(&settings.client_id));
    opts.set_clean_session(true)
        .set_keep_alive(settings.keep_alive);
    opts
}

/// Runs until `shutdown`.
pub async fn run(
    settings: MqttSettings,
    buffer: Buffer,
    metrics: Arc<IngestMetrics>,
    shutdown: CancellationToken,
) {
    let mut durable = buffer.subscribe();
    let mut outbox = Outbox::default();
    let mut backoff = Duration::from_millis(200);
    let ack = |seq: u64| {
        if let Err(e) = buffer.ack(CONSUMER, Lane::Alarms, seq) {
            tracing::error!(error = %e, "could not record published alarms");
        }
    };

    'connection: loop {
        // A clear's two messages per event: room for a whole round in the request queue.
        let (client, mut eventloop) = AsyncClient::new(options(&settings), 2 * MAX_PER_ROUND + 8);
        let mut connected = false;
        loop {
            while connected && outbox.idle() {
                let batch = match buffer.read(
                    CONSUMER,
                    Lane::Alarms,
                    None,
                    outbox.round_len(),
                    usize::MAX,
                ) {
                    Ok(batch) => batch,
                    Err(e) => {
                        tracing::error!(error = %e, "alarm lane unreadable for local publishing");
                        break;
                    }
                };
                if batch.is_empty() {
                    break;
                }
                let plan = outbox.plan(&batch, Instant::now());
                for (seq, error) in &plan.skipped {
                    note_error(&metrics, *seq, error);
                }
                if let Some(seq) = plan.ack_now {
                    ack(seq);
                }
                for m in plan.messages {
                    if let Err(e) =
                        client.try_publish(m.topic, QoS::AtLeastOnce, m.retain, m.payload)
                    {
                        let error = PublishError::Refused {
                            reason: e.to_string(),
                        };
                        note_error(&metrics, batch.last().map_or(0, |s| s.seq), &error);
                        if let Some(seq) = outbox.refused() {
                            ack(seq);
                        }
                    }
                }
            }
            let deadline = outbox.deadline();
            tokio::select! {
                _ = shutdown.cancelled() => break 'connection,
                changed = durable.changed(), if outbox.idle() && connected => {
                    if changed.is_err() { break 'connection; }
                }
                _ = async { match deadline { Some(d) => tokio::time::sleep_until(d).await, None => std::future::pending().await } } => {
                    tracing::warn!("local alarm publishes not acknowledged in time; reconnecting");
                    outbox.on_lost(connected);
                    continue 'connection;
                }
                event = eventloop.poll() => match event {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        connected = true;
                        backoff = Duration::from_millis(200);
                    }
                    Ok(Event::Incoming(Packet::PubAck(_))) => {
                        if let Some(seq) = outbox.on_puback() {
                            ack(seq);
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        if connected {
                            tracing::warn!(error = %e, "alarm publisher lost the broker");
                        }
                        // Unacknowledged events are published again from the cursor, by a
                        // fresh client, one at a time until the lost round is behind.
                        outbox.on_lost(connected);
                        tokio::select! {
                            _ = shutdown.cancelled() => break 'connection,
                            _ = tokio::time::sleep(backoff) => {}
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(10));
                        continue 'connection;
                    }
                }
            }
        }
    }
}

/// The event as the JSON object of its upstream alarm record (WIRE.md §4: the same JSON), from
/// the forwarder's own encoder so the two can never differ.
fn json(stored: &Stored) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    gateway_forwarder::encode_record(stored, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use gateway_buffer::{AlarmEvent, Severity};

    fn alarm(seq: u64, device: &str, state: AlarmState) -> Stored {
        Stored {
            seq,
            record: Record::Alarm(AlarmEvent {
                alarm: "overheat".into(),
                state,
                severity: Severity::Critical,
                device: device.into(),
                metric: "temperature".into(),
                value: 40.0,
                threshold: Some(35.0),
                ts_ms: 1,
            }),
        }
    }

    #[test]
    fn a_slash_and_a_percent_in_a_device_id_are_escaped_to_keep_three_levels() {
        assert_eq!(topic("a/b", "overheat"), "alarms/a%2Fb/overheat");
        assert_eq!(topic("50%/x", "hot"), "alarms/50%25%2Fx/hot");
        assert_eq!(topic("a%2Fb", "hot"), "alarms/a%252Fb/hot");
        assert_eq!(topic("/a/b/", "r").split('/').count(), 3);
    }

    #[test]
    fn a_raise_is_retained_and_a_clear_is_json_then_an_empty_retained_message() {
        let raise = messages(&alarm(1, "d", AlarmState::Raised)).unwrap();
        assert_eq!(raise.len(), 1);
        assert!(raise[0].retain);
        let json: serde_json::Value = serde_json::from_slice(&raise[0].payload).unwrap();
        assert_eq!(json["state"], "raised");

        let clear = messages(&alarm(2, "d", AlarmState::Cleared)).unwrap();
        assert_eq!(clear.len(), 2);
        assert!(!clear[0].retain, "the cleared event's JSON is not retained");
        let json: serde_json::Value = serde_json::from_slice(&clear[0].payload).unwrap();
        assert_eq!(
            (&json["state"], &json["seq"]),
            (&"cleared".into(), &2.into())
        );
        assert!(clear[1].retain && clear[1].payload.is_empty());
        assert_eq!(clear[0].topic, clear[1].topic);
    }

    #[test]
    fn an_event_with_an_unpublishable_topic_is_skipped_and_acknowledged_with_the_round() {
        let mut o = Outbox::default();
        let batch = [
            alarm(1, "x#y", AlarmState::Raised),
            alarm(2, "nul\0", AlarmState::Raised),
            alarm(3, "ok", AlarmState::Raised),
        ];
        let plan = o.plan(&batch, Instant::now());
        assert_eq!(plan.skipped.iter().map(|s| s.0).collect::<Vec<_>>(), [1, 2]);
        assert_eq!(plan.messages.len(), 1);
        assert_eq!(plan.ack_now, None);
        assert_eq!(o.on_puback(), Some(3), "the round ends with the good event");
        assert!(o.idle());

        let plan = o.plan(&[alarm(4, "a+b", AlarmState::Cleared)], Instant::now());
        assert_eq!(plan.skipped.len(), 1);
        assert_eq!(
            plan.ack_now,
            Some(4),
            "nothing to wait for: acknowledged at once"
        );
        assert!(o.idle());
    }

    #[test]
    fn a_publish_the_client_refuses_still_lets_the_round_complete() {
        let mut o = Outbox::default();
        let plan = o.plan(
            &[
                alarm(1, "a", AlarmState::Cleared),
                alarm(2, "b", AlarmState::Raised),
            ],
            Instant::now(),
        );
        assert_eq!(plan.messages.len(), 3);
        assert_eq!(o.on_puback(), None);
        assert_eq!(o.refused(), None);
        assert_eq!(o.on_puback(), Some(2));
    }

    #[test]
    fn an_event_the_broker_keeps_dropping_the_connection_for_is_skipped_after_the_strikes() {
        let mut o = Outbox::default();
        let batch: Vec<Stored> = (1..=3).map(|s| alarm(s, "d", AlarmState::Raised)).collect();
        o.plan(&batch, Instant::now());
        o.on_lost(true);
        assert_eq!(o.round_len(), 1, "careful after losing a round");
        // Event 1 goes through alone; then event 2 makes the broker drop us, every time.
        o.plan(&batch[..1], Instant::now());
        assert_eq!(o.on_puback(), Some(1));
        for _ in 0..MAX_STRIKES {
            let plan = o.plan(&batch[1..2], Instant::now());
            assert_eq!(plan.messages.len(), 1);
            o.on_lost(true);
        }
        let plan = o.plan(&batch[1..2], Instant::now());
        assert_eq!(
            plan.skipped,
            [(
                2,
                PublishError::BrokerDrops {
                    strikes: MAX_STRIKES
                }
            )]
        );
        assert_eq!(plan.ack_now, Some(2));
        o.plan(&batch[2..3], Instant::now());
        assert_eq!(o.on_puback(), Some(3));
        assert_eq!(
            o.round_len(),
            MAX_PER_ROUND,
            "back to full rounds past the lost one"
        );
    }

    #[test]
    fn losses_while_the_broker_is_down_are_no_strikes() {
        let mut o = Outbox::default();
        let batch = [alarm(1, "d", AlarmState::Raised)];
        o.plan(&batch, Instant::now());
        o.on_lost(true);
        for _ in 0..10 {
            o.plan(&batch, Instant::now());
            o.on_lost(false);
        }
        let plan = o.plan(&batch, Instant::now());
        assert!(plan.skipped.is_empty(), "{plan:?}");
        assert_eq!(o.on_puback(), Some(1));
    }
}
