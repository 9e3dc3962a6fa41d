//! An MQTT QoS 1 publisher that knows exactly which messages the broker acknowledged.
//!
//! rumqttc reports a PUBACK by packet id only. One task owns both the client and its event loop
//! and hands messages to the client one at a time, so the order of `Outgoing::Publish(pkid)`
//! events is the order of the hand-over (after an `Outgoing::AwaitAck`, the collided message is
//! the next one sent: rumqttc takes no new request until it is); that maps each packet id to
//! its message. On a connection error the client is thrown away and every message not yet
//! acknowledged is published again on a fresh clean session (at least once, like a device with
//! an outbox), so the broker may get duplicates but `acked[i]` is true only after a real PUBACK
//! for message `i`.

use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// One MQTT message.
#[derive(Debug, Clone)]
pub struct Message {
    pub topic: String,
    pub payload: Vec<u8>,
}

/// Where and how to publish.
#[derive(Debug, Clone)]
pub struct PublisherOptions {
    pub port: u16,
    pub client_id: String,
    /// Messages outstanding (sent, not yet acknowledged) at once.
    pub window: usize,
    /// Messages per second; `None`: as fast as the window allows.
    pub rate_per_s: Option<f64>,
}

impl PublisherOptions {
    /// 127.0.0.1:port, window 50, unpaced.
    pub fn new(port: u16, client_id: impl Into<String>) -> PublisherOptions {
        PublisherOptions {
            port,
            client_id: client_id.into(),
            window: 50,
            rate_per_s: None,
        }
    }
}

/// What a publisher achieved.
#[derive(Debug, Clone)]
pub struct PublishOutcome {
    /// `acked[i]`: message `i` got a PUBACK.
    pub acked: Vec<bool>,
    /// Connections lost and re-established.
    pub reconnects: u32,
    /// PUBLISH packets handed to the client, repeats after reconnects included.
    pub publishes: u64,
}

impl PublishOutcome {
    /// How many messages were acknowledged.
    pub fn acked_count(&self) -> usize {
        self.acked.iter().filter(|a| **a).count()
    }
}

/// A running publisher task.
#[derive(Debug)]
pub struct Publisher {
    acked: Arc<AtomicUsize>,
    total: usize,
    stop: CancellationToken,
    task: JoinHandle<PublishOutcome>,
}

impl Publisher {
    /// Starts publishing `messages` in order on the current runtime.
    pub fn spawn(opts: PublisherOptions, messages: Vec<Message>) -> Publisher {
        let acked = Arc::new(AtomicUsize::new(0));
        let stop = CancellationToken::new();
        let total = messages.len();
        let task = tokio::spawn(run(opts, messages, acked.clone(), stop.clone()));
        Publisher {
            acked,
            total,
            stop,
            task,
        }
    }

    /// Publishes everything and waits for every PUBACK; panics after `timeout`.
    pub async fn publish_all(
        opts: PublisherOptions,
        messages: Vec<Message>,
        timeout: Duration,
    ) -> PublishOutcome {
        Publisher::spawn(opts, messages).finish(timeout).await
    }

    /// Messages acknowledged so far.
    pub fn acked_count(&self) -> usize {
        self.acked.load(Relaxed)
    }

    /// Whether every message has been acknowledged.
    pub fn is_done(&self) -> bool {
        self.acked_count() == self.total
    }

    /// Waits until every message is acknowledged; panics after `timeout`.
    pub async fn finish(self, timeout: Duration) -> PublishOutcome {
        match tokio::time::timeout(timeout, self.task).await {
            Ok(outcome) => outcome.expect("publisher task panicked"),
            Err(_) => panic!(
                "publisher: only {} of {} messages acknowledged within {timeout:?}",
                self.acked.load(Relaxed),
                self.total
            ),
        }
    }

    /// Stops now and reports what was acknowledged.
    pub async fn stop(self) -> PublishOutcome {
        self.stop.cancel();
        self.task.await.expect("publisher task panicked")
    }
}

async fn run(
    opts: PublisherOptions,
    messages: Vec<Message>,
    acked_count: Arc<AtomicUsize>,
    stop: CancellationToken,
) -> PublishOutcome {
    let window = opts.window.max(1);
    let interval = opts
        .rate_per_s
        .map(|r| Duration::from_secs_f64(1.0 / r.max(1e-3)));
    let mut outcome = PublishOutcome {
        acked: vec![false; messages.len()],
        reconnects: 0,
        publishes: 0,
    };
    // Messages to (re)send before new ones, and the next never-sent one.
    let mut resend: VecDeque<usize> = VecDeque::new();
    let mut next = 0usize;
    let mut next_due = Instant::now();
    let mut remaining = messages.len();

    'connection: loop {
        if remaining == 0 || stop.is_cancelled() {
            return outcome;
        }
        let mut mo = MqttOptions::new(&opts.client_id, "127.0.0.1", opts.port);
        mo.set_clean_session(true)
            .set_keep_alive(Duration::from_secs(10))
            .set_inflight(u16::try_from(window).unwrap_or(u16::MAX))
            .set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut eventloop) = AsyncClient::new(mo, window + 16);
        let mut connected = false;
        // Handed to the client, waiting for their Outgoing::Publish.
        let mut fifo: VecDeque<usize> = VecDeque::new();
        let mut collided: Option<usize> = None;
        let mut inflight: HashMap<u16, usize> = HashMap::new();

        loop {
            // Hand over as much as the window and the pace allow.
            while connected
                && fifo.len() + inflight.len() + usize::from(collided.is_some()) < window
            {
                if interval.is_some() && Instant::now() < next_due {
                    break;
                }
                let idx = match resend.pop_front() {
                    Some(i) => i,
                    None if next < messages.len() => {
                        next += 1;
                        next - 1
                    }
                    None => break,
                };
                let m = &messages[idx];
                client
                    .try_publish(&m.topic, QoS::AtLeastOnce, false, m.payload.clone())
                    .expect("request channel has room for the window");
                outcome.publishes += 1;
                fifo.push_back(idx);
                if let Some(i) = interval {
                    next_due = next_due.max(Instant::now() - i) + i;
                }
            }
            if remaining == 0 {
                let _ = client.try_disconnect();
                return outcome;
            }
            let pace = async {
                match interval {
                    Some(_) if connected => tokio::time::sleep_until(next_due.into()).await,
                    _ => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = stop.cancelled() => return outcome,
                _ = pace => {}
                event = eventloop.poll() => match event {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => connected = true,
                    Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                        let idx = collided
                            .take()
                            .or_else(|| fifo.pop_front())
                            .expect("an Outgoing::Publish for a message we handed over");
                        inflight.insert(pkid, idx);
                    }
                    Ok(Event::Outgoing(Outgoing::AwaitAck(_))) => {
                        collided = fifo.pop_front();
                    }
                    Ok(Event::Incoming(Packet::PubAck(ack))) => {
                        if let Some(idx) = inflight.remove(&ack.pkid)
                            && !outcome.acked[idx]
                        {
                            outcome.acked[idx] = true;
                            remaining -= 1;
                            acked_count.fetch_add(1, Relaxed);
                        }
                    }
                    Ok(_) => {}
                    Err(_) => {
                        // Everything not acknowledged goes out again on a new connection, in
                        // the original order.
                        let mut again: Vec<usize> = inflight
                            .values()
                            .copied()
                            .chain(collided)
                            .chain(fifo.iter().copied())
                            .chain(resend.iter().copied())
                            .filter(|i| !outcome.acked[*i])
                            .collect();
                        again.sort_unstable();
                        again.dedup();
                        resend = again.into();
                        if connected {
                            outcome.reconnects += 1;
                        }
                        tokio::select! {
                            _ = stop.cancelled() => return outcome,
                            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                        }
                        continue 'connection;
                    }
                }
            }
        }
    }
}
