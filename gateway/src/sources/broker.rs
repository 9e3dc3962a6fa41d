//! The embedded MQTT broker (`mqtt.mode = "embedded"`): rumqttd on `mqtt.embedded_listen`, so a
//! user with nothing installed can point devices at the gateway.
//!
//! Compared with mosquitto it is weaker where it matters for "never lose a reading":
//! - It acknowledges a device's QoS 1 message when *it* receives it, before the gateway has made
//!   it durable, and keeps it only in memory. On a graceful stop the gateway first ingests what
//!   the broker has queued for it (until the broker goes quiet with nothing of the gateway's in
//!   flight, for at most three quarters of `shutdown_grace_s`), so what devices were
//!   acknowledged before the stop began is kept; what the broker acknowledges after that, and
//!   anything in flight inside it when the process crashes (`kill -9`, power loss: typically the
//!   last few milliseconds of traffic), is lost.
//! - It keeps no sessions across a restart, has no TLS set up here, and speaks MQTT 3.1.1 only.
//!   Because it would acknowledge and drop what a device publishes before the gateway's own
//!   subscription exists (devices reconnect the moment a restarted gateway listens), devices are
//!   let in only once that subscription is granted: rumqttd listens on a loopback port of its
//!   own, where the gateway's clients connect, and `embedded_listen` relays device connections
//!   to it, accepting them only from then on (until then they wait in the listen backlog; after
//!   [`READY_TIMEOUT`] without a subscription they are let in anyway, with an error logged).
//!
//! Access: with `mqtt.embedded_username` every device must present that username and the
//! password from `embedded_password_env` (compared in constant time). The gateway's own two
//! clients log in with a password made up at each start, and only they may use their client ids:
//! a device that knows the shared password still cannot connect as the gateway and take the
//! messages meant for it. Without credentials anyone who reaches `embedded_listen` may publish
//! (or take the gateway's client id), which is why the config refuses a non-loopback address
//! without them unless `embedded_allow_anonymous = true`. A client has 5 s to send its CONNECT.
//! At most `embedded_max_connections` devices are connected at once (plus the gateway's two; not
//! reserved for them, so a full broker can keep the gateway out until a device leaves); rumqttd
//! closes a connection over the cap at once. rumqttd 0.20 has no limit on retained messages and
//! no ACLs: a device allowed in can publish anywhere and retain as much as its packets carry.
//! For anything beyond a bench or a closed network, prefer mosquitto.
//!
//! For production, run mosquitto (see `deploy/mosquitto.conf`) and use `mode = "external"`: then
//! a device is acknowledged by a broker that persists, and the gateway acknowledges the broker
//! only after its own fsync.

use gateway_config::{MqttConfig, Secret};
use rumqttd::{Broker, Config, ConnectionSettings, RouterConfig, ServerSettings};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

/// The broker could not start.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The listen address is taken or not ours to bind.
    #[error("mqtt.embedded_listen {addr}: cannot listen: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// The broker thread did not start accepting connections in time.
    #[error("embedded broker on {addr} did not start accepting connections")]
    NotReady { addr: SocketAddr },
}

/// Connections added to `embedded_max_connections` for the gateway's own clients (ingest and
/// local alarms).
const OWN_CLIENTS: usize = 2;

/// How long device connections wait for the gateway's subscription before they are let in
/// regardless.
pub const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// Relay buffer per direction and device connection.
const RELAY_BUFFER_BYTES: usize = 4096;

/// The username of the gateway's own clients when the broker asks for credentials.
const OWN_USERNAME: &str = "gateway-internal";

/// A running embedded broker.
#[derive(Debug)]
pub struct Embedded {
    /// Where devices connect (`embedded_listen`).
    pub addr: SocketAddr,
    /// Where the gateway's own clients connect (loopback, never gated).
    pub internal: SocketAddr,
    /// What the gateway's own clients log in with (`None`: the broker asks for nothing).
    pub own_login: Option<(String, Secret)>,
}

/// Starts the broker on its own threads (rumqttd runs its own runtimes) and waits until it
/// accepts connections. `own_client_ids` are the client ids of the gateway's own clients.
/// Device connections on `embedded_listen` are accepted once `ready` completes (the gateway's
/// subscription is granted) or [`READY_TIMEOUT`] passed. The broker lives as long as the
/// process.
pub async fn start(
    mqtt: &MqttConfig,
    own_client_ids: [String; 2],
    ready: impl Future<Output = ()> + Send + 'static,
) -> Result<Embedded, BrokerError> {
    let listen = mqtt.embedded_listen;
    let devices = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|source| BrokerError::Bind {
            addr: listen,
            source,
        })?;
    let addr = devices.local_addr().map_err(|source| BrokerError::Bind {
        addr: listen,
        source,
    })?;
    let internal = internal_port().map_err(|source| BrokerError::Bind { addr, source })?;

    let (connections, own_login) = connection_settings(mqtt, own_client_ids);
    let server = ServerSettings {
        name: "gateway-v4".into(),
        listen: internal,
        tls: None,
        next_connection_delay_ms: 1,
        connections,
    };
    let config = Config {
        id: 0,
        router: RouterConfig {
            max_connections: mqtt.embedded_max_connections.saturating_add(OWN_CLIENTS),
            max_outgoing_packet_count: 1000,
            // The router keeps messages in memory segments: bound them for a small box.
            max_segment_size: 16 * 1024 * 1024,
            max_segment_count: 4,
            custom_segment: None,
            initialized_filters: None,
            shared_subscriptions_strategy: Default::default(),
        },
        v4: Some(HashMap::from([("gateway-v4".to_owned(), server)])),
        ..Config::default()
    };
    std::thread::Builder::new()
        .name("embedded-broker".into())
        .spawn(move || {
            let mut broker = Broker::new(config);
            if let Err(e) = broker.start() {
                tracing::error!(error = %e, "embedded broker stopped");
            }
        })
        .map_err(|source| BrokerError::Bind { addr, source })?;

    for _ in 0..100 {
        if tokio::net::TcpStream::connect(internal).await.is_ok() {
            tracing::info!(%addr, authentication = mqtt.embedded_username.is_some(), max_connections = mqtt.embedded_max_connections, "embedded MQTT broker listening");
            tokio::spawn(let_devices_in(devices, internal, ready));
            return Ok(Embedded {
                addr,
                internal,
                own_login,
            });
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Err(BrokerError::NotReady { addr })
}

/// A free loopback address for rumqttd, where only the gateway's own clients connect. rumqttd
/// binds it itself and only logs a failure from its server thread, so the port is found free
/// first. It is drawn from below the kernel's usual ephemeral range (32768 and up), where ports
/// handed out for `bind(…:0)` elsewhere on the box cannot land on it between the check and
/// rumqttd's bind.
fn internal_port() -> std::io::Result<SocketAddr> {
    const PORTS: std::ops::Range<u16> = 20_000..32_768;
    let mut last = None;
    for _ in 0..64 {
        let port = rand::random_range(PORTS);
        match std::net::TcpListener::bind(("127.0.0.1", port)) {
            Ok(l) => return l.local_addr(),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no free loopback port")))
}

/// Once `ready` (or after [`READY_TIMEOUT`]), accepts device connections on `devices` and relays
/// each to the broker at `internal`.
async fn let_devices_in(
    devices: tokio::net::TcpListener,
    internal: SocketAddr,
    ready: impl Future<Output = ()>,
) {
    if tokio::time::timeout(READY_TIMEOUT, ready).await.is_err() {
        tracing::error!(
            waited_s = READY_TIMEOUT.as_secs(),
            "the gateway's subscription on the embedded broker is not in place; letting devices in anyway (what they publish before it is acknowledged and dropped)"
        );
    } else {
        tracing::debug!("subscribed on the embedded broker: letting devices in");
    }
    loop {
        match devices.accept().await {
            Ok((device, peer)) => {
                tokio::spawn(relay(device, peer, internal));
            }
            Err(e) => {
                // Out of file descriptors, mostly: wait rather than spin.
                tracing::warn!(error = %e, "embedded broker: accepting a device connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Copies bytes both ways between a device and the broker until either side closes.
async fn relay(mut device: tokio::net::TcpStream, peer: SocketAddr, internal: SocketAddr) {
    let mut broker = match tokio::net::TcpStream::connect(internal).await {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!(%peer, error = %e, "embedded broker: cannot reach it for a device");
            return;
        }
    };
    let _ = device.set_nodelay(true);
    let _ = broker.set_nodelay(true);
    let _ = tokio::io::copy_bidirectional_with_sizes(
        &mut device,
        &mut broker,
        RELAY_BUFFER_BYTES,
        RELAY_BUFFER_BYTES,
    )
    .await;
}

/// Connection settings, with the login check when devices must authenticate; returns the login
/// of the gateway's own clients too.
fn connection_settings(
    mqtt: &MqttConfig,
    own_client_ids: [String; 2],
) -> (ConnectionSettings, Option<(String, Secret)>) {
    let mut settings = ConnectionSettings {
        // A client that connected must send its CONNECT soon: waiting a minute per idle socket
        // lets anyone on the network pile them up.
        connection_timeout_ms: 5_000,
        // rumqttd's packet limit for what devices send (the name says payload): the gateway's
        // own client reads packets up to this size (`mqtt.max_packet_bytes`), so a payload
        // over `max_payload_bytes` reaches it and is dead-lettered, never dropping its
        // connection; a device sending more than this is disconnected by the broker.
        max_payload_size: mqtt.max_packet_bytes,
        max_inflight_count: 1000,
        auth: None,
        external_auth: None,
        dynamic_filters: true,
    };
    let (Some(device_user), Some(device_password)) = (
        mqtt.embedded_username.clone(),
        mqtt.embedded_password.clone(),
    ) else {
        return (settings, None);
    };
    // 128 bits from the thread's CSPRNG (seeded by the OS).
    let own_password = Secret::new(format!("{:032x}", rand::random::<u128>()));
    let own = own_password.clone();
    settings.set_auth_handler(move |client_id: String, user: String, password: String| {
        let admitted = if own_client_ids.contains(&client_id) {
            user == OWN_USERNAME && own.matches(&password)
        } else {
            user == device_user && device_password.matches(&password)
        };
        std::future::ready(admitted)
    });
    (settings, Some((OWN_USERNAME.to_owned(), own_password)))
}
