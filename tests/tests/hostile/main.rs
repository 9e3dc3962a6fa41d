//! Hostile input end to end: what careless or hostile devices send, against a real mosquitto, a
//! real pty and a real HTTP receiver around the real `gateway` binary.
//!
//! Every case asserts two things: the bad input is refused or contained, with its reason
//! counted; **and** afterwards a well-behaved device's reading and alarm still arrive upstream and
//! on the local alarm topic ([`Rig::assert_good_device_flows`]).
//!
//! The cases live in modules by the part of the gateway they attack: `ingest` (payloads, ids,
//! timestamps, sizes, logs), `alarms` (the alarm engine and the local alarm publisher),
//! `storage` (blocks, dead letters, eviction), `disk` (a full disk).

mod alarms;
mod disk;
mod ingest;
mod storage;

use gateway_tests::{
    GatewayProcess, GatewaySpec, Message, Mosquitto, PtyPair, Publisher, PublisherOptions,
    Subscriber, Upstream, broker, require_mosquitto, wait_until,
};
use serde_json::Value;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// The rule every rig carries: the well-behaved device crosses it to prove alarms still work.
pub const OVERHEAT: &str = "[[alarm]]\nname = \"overheat\"\ndevice = \"*\"\nmetric = \"temperature\"\nabove = 35.0\nclear_below = 33.0\nseverity = \"critical\"\n";

/// How long a rig waits for anything to arrive.
pub const WAIT: Duration = Duration::from_secs(30);

/// A gateway on a real mosquitto, forwarding to a real HTTP receiver, with a subscriber on the
/// local alarm topics and (optionally) a serial port on a real pty.
#[derive(Debug)]
pub struct Rig {
    pub broker: Mosquitto,
    pub receiver: Upstream,
    pub gw: GatewayProcess,
    /// Everything published on `alarms/#` since the gateway was ready.
    pub local: Subscriber,
    /// The test end of the pty, when the rig was started with serial.
    pub pty: Option<PtyPair>,
    /// Keeps the pty's links alive.
    _pty_dir: Option<tempfile::TempDir>,
}

/// Options for [`Rig::start`]; `edit` changes the generated config before the gateway starts.
#[derive(Debug, Default)]
pub struct RigOptions {
    /// Also read a `[[serial]]` port (device `uart-0`) on a socat pty.
    pub serial: bool,
    /// Appended to mosquitto's config (e.g. a `max_packet_size` to make it refuse publishes).
    pub mosquitto_conf: &'static str,
}

impl Rig {
    /// Starts mosquitto, the receiver, the gateway (with [`OVERHEAT`] plus whatever `edit` adds)
    /// and the local alarm subscriber. `None` only outside CI when mosquitto is missing.
    pub async fn start(
        test: &str,
        opts: RigOptions,
        edit: impl FnOnce(&mut GatewaySpec),
    ) -> Option<Rig> {
        if !Mosquitto::available() {
            // Fails under CI, says why it does nothing otherwise.
            require_mosquitto(test);
            return None;
        }
        let broker = broker().conf(opts.mosquitto_conf).start();
        let receiver = Upstream::start().await;
        let mut spec = GatewaySpec::new(
            gateway_tests::MqttSetup::External {
                port: broker.port(),
            },
            &receiver.url(),
        );
        spec.tables = OVERHEAT.to_owned();
        let (pty, pty_dir) = if opts.serial {
            if !PtyPair::available() {
                test_peers::missing(
                    test,
                    "socat is not installed (this test needs a pty pair)",
                    "apt-get install socat",
                );
                return None;
            }
            let dir = tempfile::tempdir().expect("pty dir");
            let pty = PtyPair::open(dir.path());
            spec.tables.push_str(&format!(
                "\n[[serial]]\nport = \"{}\"\nbaud = 115200\ndevice = \"uart-0\"\n",
                pty.gateway_end().display()
            ));
            (Some(pty), Some(dir))
        } else {
            (None, None)
        };
        edit(&mut spec);
        let mut gw = GatewayProcess::start(&spec);
        gw.wait_ready().await;
        gw.wait_mqtt_ingest(broker.port()).await;
        // Every test starts from a quiet pipeline: the start-up probe delivered, nothing in
        // flight, so a reply a test scripts for "the next batch" meets that test's batch.
        gw.wait_status(
            "the start-up probe delivered",
            Duration::from_secs(60),
            |s| {
                (s["buffer"]["lanes"]["readings"]["records"].as_u64() == Some(0)
                    && s["upstream"]["in_flight"].as_u64() == Some(0))
                .then_some(())
            },
        )
        .await;
        static N: AtomicU32 = AtomicU32::new(0);
        let id = format!("hostile-local-{}", N.fetch_add(1, Ordering::Relaxed));
        let local = Subscriber::connect(broker.port(), &id, "alarms/#").await;
        Some(Rig {
            broker,
            receiver,
            gw,
            local,
            pty,
            _pty_dir: pty_dir,
        })
    }

    /// Publishes each message at QoS 1 and waits for every PUBACK.
    pub async fn publish(&self, client_id: &str, messages: Vec<Message>) {
        let mut o = PublisherOptions::new(self.broker.port(), client_id);
        o.window = 1;
        let out = Publisher::publish_all(o, messages, WAIT).await;
        assert_eq!(
            out.acked_count(),
            out.acked.len(),
            "every message PUBACKed by the broker"
        );
    }

    /// Writes lines (each terminated with `\n`) to the serial pty.
    pub fn write_serial(&mut self, bytes: &[u8]) {
        self.pty
            .as_mut()
            .expect("rig started with serial")
            .write(bytes);
    }

    /// `/metrics` as text.
    pub async fn metrics(&self) -> String {
        reqwest::get(format!("{}/metrics", self.gw.admin_url()))
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("/metrics body")
    }

    /// The value of one sample in `/metrics` (`name{labels}` exactly as exported), 0 if absent.
    pub async fn metric(&self, sample: &str) -> f64 {
        metric_value(&self.metrics().await, sample)
    }

    /// Waits until the sample named `sample` reaches at least `at_least`.
    pub async fn wait_metric(&self, sample: &str, at_least: f64) -> f64 {
        wait_until(&format!("{sample} >= {at_least}"), WAIT, || async {
            let v = self.metric(sample).await;
            (v >= at_least).then_some(v)
        })
        .await
    }

    /// The proof that the gateway is still whole: a fresh well-behaved device (`good-{tag}`)
    /// sends 20 °C then 40 °C over MQTT; both readings arrive upstream with their values, the
    /// overheat raise arrives upstream in the alarms lane and on `alarms/good-{tag}/overheat`.
    pub async fn assert_good_device_flows(&self, tag: &str) {
        let device = format!("good-{tag}");
        let topic = format!("sensors/{device}/temperature");
        self.publish(
            &format!("good-client-{tag}"),
            vec![
                Message {
                    topic: topic.clone(),
                    payload: b"20".to_vec(),
                },
                Message {
                    topic,
                    payload: b"40".to_vec(),
                },
            ],
        )
        .await;
        let readings = wait_until(
            &format!("{device}'s two readings upstream"),
            WAIT,
            || async {
                let mine: Vec<f64> = self
                    .receiver
                    .delivered_records("readings")
                    .iter()
                    .filter(|r| r["device"] == device.as_str())
                    .filter_map(|r| r["value"].as_f64())
                    .collect();
                (mine.len() >= 2).then_some(mine)
            },
        )
        .await;
        assert_eq!(&readings[..2], &[20.0, 40.0], "{device}'s values upstream");
        let raised = wait_until(&format!("{device}'s overheat raise upstream"), WAIT, || {
            let records = self.receiver.delivered_records("alarms");
            let device = device.clone();
            async move {
                records
                    .into_iter()
                    .find(|r| r["device"] == device.as_str() && r["alarm"] == "overheat")
            }
        })
        .await;
        assert_eq!(raised["state"], "raised", "{raised}");
        assert_eq!(raised["value"], 40.0, "{raised}");
        let local_topic = format!("alarms/{device}/overheat");
        let local = wait_until(&format!("a raise on {local_topic}"), WAIT, || async {
            self.local
                .messages()
                .into_iter()
                .find(|m| m.topic == local_topic && !m.payload.is_empty())
        })
        .await;
        let local: Value = serde_json::from_slice(&local.payload).expect("local alarm JSON");
        assert_eq!(local["state"], "raised", "{local}");
        assert_eq!(local["device"], device.as_str(), "{local}");
    }
}

/// The value of `sample` (`name` or `name{labels}`, as written in the exposition) in Prometheus
/// text, or 0 when it is absent.
pub fn metric_value(text: &str, sample: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            (name == sample).then(|| value.parse().ok()).flatten()
        })
        .unwrap_or(0.0)
}

/// The rig itself: with nothing hostile sent, the well-behaved device's readings and alarm arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_with_no_hostile_input_delivers_the_good_device() {
    let Some(rig) = Rig::start("hostile::baseline", RigOptions::default(), |_| {}).await else {
        return;
    };
    rig.assert_good_device_flows("baseline").await;
}
