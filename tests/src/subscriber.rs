//! MQTT subscribers for the local alarm topics (WIRE.md §4).

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::task::JoinHandle;

/// One message a subscriber got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    pub topic: String,
    pub payload: Vec<u8>,
    /// The retain flag as delivered: set for a retained message sent on subscribing.
    pub retain: bool,
}

/// A subscriber that records everything on its filter until dropped.
#[derive(Debug)]
pub struct Subscriber {
    messages: Arc<Mutex<Vec<Received>>>,
    task: JoinHandle<()>,
}

impl Subscriber {
    /// Connects to 127.0.0.1:port, subscribes to `filter` at QoS 1 and returns once subscribed.
    pub async fn connect(port: u16, client_id: &str, filter: &str) -> Subscriber {
        let mut mo = MqttOptions::new(client_id, "127.0.0.1", port);
        mo.set_clean_session(true)
            .set_keep_alive(Duration::from_secs(10));
        let (client, mut eventloop) = AsyncClient::new(mo, 16);
        client
            .subscribe(filter, QoS::AtLeastOnce)
            .await
            .expect("queue SUBSCRIBE");
        let messages = Arc::new(Mutex::new(Vec::new()));
        let (subscribed_tx, subscribed_rx) = tokio::sync::oneshot::channel();
        let sink = messages.clone();
        let task = tokio::spawn(async move {
            let _client = client;
            let mut subscribed = Some(subscribed_tx);
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        if let Some(tx) = subscribed.take() {
                            let _ = tx.send(());
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        sink.lock().unwrap().push(Received {
                            topic: p.topic.clone(),
                            payload: p.payload.to_vec(),
                            retain: p.retain,
                        });
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(20), subscribed_rx)
            .await
            .expect("SUBACK within 20 s")
            .expect("subscriber task alive");
        Subscriber { messages, task }
    }

    /// Everything received so far, in order.
    pub fn messages(&self) -> Vec<Received> {
        self.messages.lock().unwrap().clone()
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The retained messages a new subscriber to `filter` gets right now.
///
/// Subscribes, then publishes a non-retained marker on `marker_topic` (which must match
/// `filter`) from the same connection: the broker queues retained messages while handling the
/// SUBSCRIBE, before it reads our PUBLISH, so every retained message arrives before the marker.
/// A message published meanwhile by someone else arrives live, without the retain flag, and is
/// not part of the set.
pub async fn retained_messages(
    port: u16,
    client_id: &str,
    filter: &str,
    marker_topic: &str,
) -> Vec<Received> {
    let mut mo = MqttOptions::new(client_id, "127.0.0.1", port);
    mo.set_clean_session(true)
        .set_keep_alive(Duration::from_secs(10));
    let (client, mut eventloop) = AsyncClient::new(mo, 16);
    client
        .subscribe(filter, QoS::AtLeastOnce)
        .await
        .expect("queue SUBSCRIBE");
    let collect = async {
        let mut got = Vec::new();
        loop {
            match eventloop
                .poll()
                .await
                .expect("retained_messages: broker connection")
            {
                Event::Incoming(Packet::SubAck(_)) => {
                    client
                        .publish(marker_topic, QoS::AtLeastOnce, false, b"marker".to_vec())
                        .await
                        .expect("queue marker");
                }
                Event::Incoming(Packet::Publish(p)) => {
                    if p.topic == marker_topic {
                        return got;
                    }
                    if !p.retain {
                        continue;
                    }
                    got.push(Received {
                        topic: p.topic.clone(),
                        payload: p.payload.to_vec(),
                        retain: p.retain,
                    });
                }
                _ => {}
            }
        }
    };
    let got = tokio::time::timeout(Duration::from_secs(20), collect)
        .await
        .expect("retained_messages: the marker came back within 20 s");
    let _ = client.try_disconnect();
    got
}
