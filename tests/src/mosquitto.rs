//! The brokers of the end-to-end tests: [`test_peers::Mosquitto`] set up as the gateway is
//! deployed against, and the embedded broker as a stand-in where a test allows one.

use test_peers::{Mosquitto, MosquittoBuilder, deploy_limits, free_port};

/// mosquitto as the end-to-end tests run it: the limits of `deploy/mosquitto.conf`
/// ([`deploy_limits`]), `set_tcp_nodelay`, and persistence with a 1 s autosave, so sessions,
/// subscriptions and queued QoS 1 messages survive a restart (all of them after a stop, which
/// saves on exit; up to 1 s is lost after a kill). Add lines with [`MosquittoBuilder::conf`].
pub fn broker() -> MosquittoBuilder {
    Mosquitto::builder()
        .persistent(1)
        .conf(&deploy_limits())
        .conf("set_tcp_nodelay true")
}

/// For tests that only make sense with mosquitto (persistent sessions outliving the gateway):
/// the [`broker`], or `None` after saying on stderr why the test does nothing. With `CI` set a
/// missing mosquitto is a failure, not a skip.
pub fn require_mosquitto(test: &str) -> Option<Mosquitto> {
    if Mosquitto::available() {
        return Some(broker().start());
    }
    test_peers::missing(
        test,
        "mosquitto is not installed (this test needs a broker that outlives the gateway)",
        "apt-get install mosquitto",
    );
    None
}

/// The broker a test publishes to: mosquitto when installed, else the gateway's embedded one.
#[derive(Debug)]
pub enum BrokerChoice {
    /// A mosquitto the test owns; the gateway connects to it (`mqtt.mode = "external"`).
    Mosquitto(Box<Mosquitto>),
    /// The gateway's embedded broker on this port (`mqtt.mode = "embedded"`).
    Embedded { port: u16 },
}

impl BrokerChoice {
    /// The [`broker`] if mosquitto is installed; panics if not and `CI` is set; else the
    /// embedded broker (said on stderr).
    pub fn for_test(test: &str) -> BrokerChoice {
        if Mosquitto::available() {
            return BrokerChoice::Mosquitto(Box::new(broker().start()));
        }
        test_peers::missing(
            test,
            "mosquitto is not installed; the embedded broker stands in, which acknowledges \
             devices before the gateway's fsync",
            "apt-get install mosquitto",
        );
        BrokerChoice::Embedded { port: free_port() }
    }

    /// The port devices publish to.
    pub fn port(&self) -> u16 {
        match self {
            BrokerChoice::Mosquitto(m) => m.port(),
            BrokerChoice::Embedded { port } => *port,
        }
    }

    /// How the gateway is configured for this broker.
    pub fn mqtt_setup(&self) -> crate::MqttSetup {
        match self {
            BrokerChoice::Mosquitto(m) => crate::MqttSetup::External { port: m.port() },
            BrokerChoice::Embedded { port } => crate::MqttSetup::Embedded { port: *port },
        }
    }
}
