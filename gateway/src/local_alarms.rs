//! Publishes alarm events on the gateway's broker at `alarms/{device}/{rule}` (QoS 1), so local
//! actuators and dashboards react without the cloud. A raise is retained; a clear replaces it
//! with an empty retained message, which removes it.
//!
//! It is a consumer of the buffer's alarm lane with its own cursor: an event is acknowledged to
//! the buffer only after the broker has acknowledged its publish, so events survive a broker
//! outage or a restart (a repeat after a crash is harmless: the retained state is the same).

use crate::mqtt::MqttSettings;
use gateway_buffer::{AlarmState, Buffer, Lane, Record, Stored};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The buffer consumer name of this sink.
pub const CONSUMER: &str = "local-alarms";

/// Events published per round; alarms are rare, this only bounds a backlog after an outage.
const MAX_PER_ROUND: usize = 100;

/// The topic of an event.
pub fn topic(device: &str, rule: &str) -> String {
    format!("alarms/{device}/{rule}")
}

/// Runs until `shutdown`.
pub async fn run(settings: MqttSettings, buffer: Buffer, shutdown: CancellationToken) {
    let mut opts = MqttOptions::new(
        format!("{}-alarms", settings.client_id),
        &settings.host,
        settings.port,
    );
    opts.set_clean_session(true)
        .set_keep_alive(settings.keep_alive);
    if let Some((user, pass)) = &settings.credentials {
        opts.set_credentials(user, pass);
    }
    if let Some(ca) = &settings.tls_ca {
        opts.set_transport(rumqttc::Transport::Tls(rumqttc::TlsConfiguration::Simple {
            ca: ca.clone(),
            alpn: None,
            client_auth: None,
        }));
    }
    let (client, mut eventloop) = AsyncClient::new(opts, MAX_PER_ROUND + 8);
    let mut durable = buffer.subscribe();
    let mut connected = false;
    // Publishes sent and not yet acknowledged, with the seq that completes when they are.
    let mut awaiting: Option<(usize, u64)> = None;
    let mut backoff = Duration::from_millis(200);

    loop {
        if connected && awaiting.is_none() {
            match buffer.read(CONSUMER, Lane::Alarms, None, MAX_PER_ROUND, usize::MAX) {
                Ok(batch) if !batch.is_empty() => {
                    let last = batch.last().map(|s| s.seq).unwrap_or_default();
                    for stored in &batch {
                        if let Record::Alarm(e) = &stored.record {
                            let (payload, retain) = match e.state {
                                AlarmState::Raised => (json(stored), true),
                                AlarmState::Cleared => (Vec::new(), true),
                            };
                            if let Err(err) = client.try_publish(
                                topic(&e.device, &e.alarm),
                                QoS::AtLeastOnce,
                                retain,
                                payload,
                            ) {
                                tracing::warn!(error = %err, "alarm publish not queued");
                            }
                        }
                    }
                    awaiting = Some((batch.len(), last));
                }
                Ok(_) => {}
                Err(e) => tracing::error!(error = %e, "alarm lane unreadable for local publishing"),
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            changed = durable.changed(), if awaiting.is_none() && connected => {
                if changed.is_err() { break; }
            }
            event = eventloop.poll() => match event {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    connected = true;
                    backoff = Duration::from_millis(200);
                }
                Ok(Event::Incoming(Packet::PubAck(_))) => {
                    if let Some((left, last)) = awaiting.as_mut() {
                        *left -= 1;
                        if *left == 0 {
                            if let Err(e) = buffer.ack(CONSUMER, Lane::Alarms, *last) {
                                tracing::error!(error = %e, "could not record published alarms");
                            }
                            awaiting = None;
                        }
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    if connected {
                        tracing::warn!(error = %e, "alarm publisher lost the broker");
                    }
                    connected = false;
                    // Unacknowledged publishes are sent again from the cursor after reconnecting.
                    awaiting = None;
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
            }
        }
    }
    let _ = client.try_disconnect();
}

/// The event as the JSON object of its upstream alarm record (WIRE.md §4: the same JSON), from
/// the forwarder's own encoder so the two can never differ.
fn json(stored: &Stored) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    gateway_forwarder::encode_record(stored, &mut out);
    out
}
