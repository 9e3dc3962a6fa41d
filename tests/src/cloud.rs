//! A cloud IoT broker for the MQTT sink: mosquitto on a TLS listener that requires client
//! certificates (as AWS IoT Core does), and [`Cloud`], a subscriber there with a certificate of
//! its own that records every message.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gateway_config::{TlsClient, TlsFiles};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, TlsConfiguration, Transport};
use serde_json::Value;
use test_peers::{Authority, Mosquitto, Pki};
use tokio::task::JoinHandle;

/// The end-to-end [`crate::broker`] with a TLS listener (the returned port) serving `server`'s
/// certificate and, with `require_certificate`, requiring a client certificate signed by its CA;
/// `None` (reported through [`test_peers::missing`], which fails under `CI`) when mosquitto is
/// not installed.
pub fn tls_mosquitto(
    test: &str,
    server: &Authority,
    require_certificate: bool,
) -> Option<(Mosquitto, u16)> {
    let broker = crate::broker()
        .conf("log_type information")
        .tls(server, require_certificate)
        .require(test)?;
    let tls_port = broker.tls_port().expect("a TLS listener");
    Some((broker, tls_port))
}

/// A TLS client trusting `ca`'s CA, with the client certificate and key `cert` if given.
pub fn tls_client(ca: &Authority, cert: Option<(&Path, &Path)>) -> TlsClient {
    TlsClient::load(TlsFiles {
        ca_file: Some(ca.ca.clone()),
        client_cert_file: cert.map(|(c, _)| c.to_path_buf()),
        client_key_file: cert.map(|(_, k)| k.to_path_buf()),
        alpn: Vec::new(),
    })
    .expect("TLS client from the test PKI")
}

/// One message the cloud got.
#[derive(Clone, Debug)]
pub struct CloudMessage {
    pub topic: String,
    pub payload: Vec<u8>,
}

/// The cloud: a subscriber over TLS with a client certificate of its own (`pki.trusted`'s RSA
/// one), on a persistent session that it subscribes again on every connect, so it misses
/// nothing across a broker restart. Records everything until dropped.
#[derive(Debug)]
pub struct Cloud {
    gateway_id: String,
    messages: Arc<Mutex<Vec<CloudMessage>>>,
    task: JoinHandle<()>,
}

impl Cloud {
    /// Subscribes to `filter` (QoS 1) on the broker's TLS port as `client_id`, and returns once
    /// the broker granted it. Batches are expected from `gateway_id`.
    pub async fn subscribe(
        tls_port: u16,
        pki: &Pki,
        client_id: &str,
        filter: &str,
        gateway_id: &str,
    ) -> Cloud {
        let t = &pki.trusted;
        let tls = tls_client(t, Some((&t.rsa_client_cert, &t.rsa_client_key)));
        let mut mo = MqttOptions::new(client_id, "127.0.0.1", tls_port);
        mo.set_clean_session(false)
            .set_keep_alive(Duration::from_secs(5))
            .set_max_packet_size(1 << 20, 1 << 20)
            .set_transport(Transport::Tls(TlsConfiguration::Rustls(tls.config())));
        let (client, mut eventloop) = AsyncClient::new(mo, 16);
        let messages = Arc::new(Mutex::new(Vec::new()));
        let (subscribed_tx, subscribed_rx) = tokio::sync::oneshot::channel();
        let sink = messages.clone();
        let filter = filter.to_owned();
        let task = tokio::spawn(async move {
            let mut subscribed = Some(subscribed_tx);
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        client
                            .try_subscribe(filter.as_str(), QoS::AtLeastOnce)
                            .expect("queue SUBSCRIBE");
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        if let Some(tx) = subscribed.take() {
                            let _ = tx.send(());
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        sink.lock().unwrap().push(CloudMessage {
                            topic: p.topic.clone(),
                            payload: p.payload.to_vec(),
                        });
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(20), subscribed_rx)
            .await
            .expect("the cloud subscribed within 20 s")
            .expect("cloud task alive");
        Cloud {
            gateway_id: gateway_id.to_owned(),
            messages,
            task,
        }
    }

    /// Every message so far.
    pub fn messages(&self) -> Vec<CloudMessage> {
        self.messages.lock().unwrap().clone()
    }

    /// Every record received, with the topic it came on, after checking that each message is
    /// a WIRE §3 batch of this gateway whose lane is its topic's
    /// (`dt/gateways/{gateway_id}/{lane}`).
    pub fn records(&self) -> Vec<(String, Value)> {
        let mut out = Vec::new();
        for m in self.messages() {
            let batch: Value = serde_json::from_slice(&m.payload).unwrap_or_else(|e| {
                panic!("not JSON ({e}): {}", String::from_utf8_lossy(&m.payload))
            });
            assert_eq!(batch["gateway_id"], self.gateway_id.as_str(), "{batch}");
            let lane = batch["lane"].as_str().expect("a lane");
            assert_eq!(m.topic, format!("dt/gateways/{}/{lane}", self.gateway_id));
            for record in batch["records"].as_array().expect("records") {
                out.push((m.topic.clone(), record.clone()));
            }
        }
        out
    }

    /// The distinct seqs received so far.
    pub fn seqs(&self) -> std::collections::BTreeSet<u64> {
        self.records()
            .iter()
            .map(|(_, r)| r["seq"].as_u64().expect("a seq"))
            .collect()
    }
}

impl Drop for Cloud {
    fn drop(&mut self) {
        self.task.abort();
    }
}
