//! `gateway run`: the one place that turns the config into components (buffer, pipeline,
//! sources, sinks, ops), wires sources → alarm engine → buffer → forwarder as tasks under one
//! cancellation protocol, and takes them down in the order that loses nothing.
//!
//! Shutdown order: stop the sources (they finish their appends and send those acks), then give
//! the forwarder `shutdown_grace_s` to deliver what it has in flight, then let the committer
//! commit anything still queued and flush the buffer.

use crate::ops::admin::{self, AdminState};
use crate::ops::demo;
use crate::pipeline::Pipeline;
use crate::sinks::{SinkView, local_alarms};
use crate::sources::modbus;
use crate::sources::mqtt::{self, MqttSettings};
use crate::sources::serial::{self, SerialSettings};
use crate::sources::{broker, decode};
use gateway_buffer::{Buffer, BufferHealth, Lane};
use gateway_config::{Config, ForwardingConfig, MqttMode, Secret, SinkConfig, SinkKind, SinkLane};
use gateway_forwarder::{
    Forwarder, ForwarderDriver, ForwarderOptions, KafkaSink, KafkaSinkOptions, MqttConnection,
    MqttSink, MqttSinkOptions, Sink,
};
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use url::Url;

/// How `run` was asked to run, beyond the config.
#[derive(Debug, Default)]
pub struct RunOptions {
    /// The file the config came from, re-read on reload. `None`: built-in defaults.
    pub config_path: Option<PathBuf>,
    /// Start the demo receiver on `upstream.url` (a stand-in for the cloud).
    pub demo_receiver: bool,
    /// Fires on SIGHUP (or anything else that wants the rules re-read).
    pub reload: Option<tokio::sync::mpsc::Receiver<()>>,
}

/// Why the gateway could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The buffer could not be opened (`data_dir`).
    #[error("buffer in {dir}: {source}")]
    Buffer {
        dir: PathBuf,
        source: gateway_buffer::BufferError,
    },
    /// A TLS client could not be built (only for a config changed in code after loading: a
    /// loaded one was checked).
    #[error("{section}.{key}: {source}", key = .source.key())]
    Tls {
        section: &'static str,
        source: gateway_config::TlsError,
    },
    /// `data_dir` could not be created or given `data_dir_mode`.
    #[error("data_dir {dir}: {source}")]
    DataDir {
        dir: PathBuf,
        source: std::io::Error,
    },
    /// The embedded broker could not start.
    #[error(transparent)]
    Broker(#[from] broker::BrokerError),
    /// A `[[sink]]` could not be built.
    #[error("sink {name}: {source}")]
    Sink {
        /// Its `name`.
        name: String,
        source: gateway_forwarder::ForwarderError,
    },
    /// The forwarder could not be built from `[upstream]`.
    #[error("upstream: {0}")]
    Forwarder(#[from] gateway_forwarder::ForwarderError),
    /// The admin or demo listener could not bind.
    #[error(transparent)]
    Listen(#[from] crate::ops::ListenError),
    /// The buffer's database failed a write (disk full, I/O error) and the disk takes writes
    /// again: sled refuses writes until the database is reopened, so the gateway stops and exits
    /// non-zero for its service manager to restart it (systemd `Restart=on-failure`).
    #[error(
        "buffer in {dir}: a write failed ({error}) and the disk takes writes again: exiting so that the service manager restarts the gateway and the database is reopened"
    )]
    BufferReopen { dir: PathBuf, error: String },
    /// A task that must not stop (the buffer's committer, the forwarder) failed.
    #[error("{task} failed: {reason}")]
    TaskFailed { task: &'static str, reason: String },
}

/// The forwarder's options from the config: the HTTP sink of `[upstream]`.
pub fn forwarder_options(config: &Config) -> ForwarderOptions {
    let up = &config.upstream;
    let mut o = forwarding_options(config, up.url.clone(), &up.forwarding());
    o.bearer_token = up.bearer_token.as_ref().map(|s| s.expose().to_owned());
    o.tls = up.tls.clone();
    o.compression = up.compression;
    o.retry_policy = up.retry_policy();
    o
}

/// What every forwarder takes from its forwarding keys (batching, timeout, backoff,
/// concurrency); consumer `upstream` until the caller names another.
fn forwarding_options(config: &Config, url: Url, f: &ForwardingConfig) -> ForwarderOptions {
    let mut o = ForwarderOptions::new(&config.gateway_id, url);
    o.batch_max_records = f.batch_max_records;
    o.batch_max_bytes = f.batch_max_bytes;
    o.linger = Duration::from_millis(f.linger_ms);
    o.timeout = Duration::from_millis(f.timeout_ms);
    o.retry_initial = Duration::from_millis(f.retry_initial_ms);
    o.retry_max = Duration::from_millis(f.retry_max_ms);
    o.max_in_flight = f.max_in_flight;
    o
}

/// One `[[sink]]`, built: its forwarder, and the connection task an MQTT bridge runs beside it
/// (it must outlive the forwarder's drain at shutdown: PUBACKs come through it).
struct BuiltSink {
    view: SinkView,
    driver: ForwarderDriver,
    connection: Option<MqttConnection>,
}

fn build_sink(config: &Config, buffer: &Buffer, sink: &SinkConfig) -> Result<BuiltSink, RunError> {
    let failed = |source| RunError::Sink {
        name: sink.name.clone(),
        source,
    };
    let (sink_impl, connection, url): (Arc<dyn Sink>, _, Url) = match &sink.kind {
        SinkKind::Mqtt(m) => {
            let mut mqtt = MqttSinkOptions::new(&config.gateway_id, m.url.clone(), &m.client_id);
            mqtt.username = m.username.clone();
            mqtt.password = m.password.as_ref().map(|s| s.expose().to_owned());
            mqtt.tls = m.tls.clone();
            mqtt.readings_topic = m.topic_for(&config.gateway_id, SinkLane::Readings);
            mqtt.alarms_topic = m.topic_for(&config.gateway_id, SinkLane::Alarms);
            mqtt.keep_alive = Duration::from_secs(u64::from(m.keep_alive_s));
            mqtt.timeout = Duration::from_millis(sink.forwarding.timeout_ms);
            mqtt.max_message_bytes = m.max_message_bytes;
            let (mqtt_sink, connection) = MqttSink::new(mqtt).map_err(failed)?;
            (Arc::new(mqtt_sink), Some(connection), m.url.clone())
        }
        SinkKind::Kafka(k) => {
            let topic = |lane| k.topic_for(lane).map(|t| t.as_str().to_owned());
            let kafka = KafkaSinkOptions {
                gateway_id: config.gateway_id.clone(),
                brokers: k.brokers.clone(),
                client_id: k.client_id.clone(),
                readings_topic: topic(SinkLane::Readings),
                alarms_topic: topic(SinkLane::Alarms),
                compression: k.compression,
                tls: k.tls_client.clone(),
                sasl: k.sasl.clone(),
                timeout: Duration::from_millis(sink.forwarding.timeout_ms),
            };
            let kafka_sink = KafkaSink::new(kafka).map_err(failed)?;
            // The forwarder's options carry a URL for the HTTP sink only; a Kafka sink names its
            // first broker there.
            let url = Url::parse(&format!("kafka://{}", k.brokers[0]))
                .unwrap_or_else(|_| Url::parse("kafka://localhost").expect("a valid URL"));
            (Arc::new(kafka_sink), None, url)
        }
    };
    let mut options = forwarding_options(config, url, &sink.forwarding);
    options.consumer = sink.name.clone();
    let (handle, driver) =
        Forwarder::with_sink(buffer.clone(), options, sink_impl).map_err(failed)?;
    Ok(BuiltSink {
        view: SinkView {
            name: sink.name.clone(),
            kind: sink.kind.as_str(),
            lanes: sink.lanes.iter().map(Lane::from).collect(),
            forwarder: handle,
        },
        driver,
        connection,
    })
}

/// Where the gateway's own MQTT clients connect, from the config (`None`: MQTT disabled).
fn mqtt_settings(
    config: &Config,
    embedded: Option<broker::Embedded>,
) -> Result<Option<MqttSettings>, RunError> {
    let m = &config.mqtt;
    let (host, port, tls) = match (m.mode, embedded.as_ref().map(|e| e.internal)) {
        (MqttMode::Disabled, _) => return Ok(None),
        (MqttMode::Embedded, Some(addr)) => (addr.ip().to_string(), addr.port(), false),
        _ => (m.broker_host().to_owned(), m.broker_port(), m.uses_tls()),
    };
    let credentials = match &embedded {
        // The embedded broker made up our login.
        Some(e) => e.own_login.clone(),
        None => m.username.as_ref().map(|u| {
            (
                u.clone(),
                m.password.clone().unwrap_or_else(|| Secret::new("")),
            )
        }),
    };
    let tls = match tls {
        true => m.tls_client().map_err(|source| RunError::Tls {
            section: "mqtt",
            source,
        })?,
        false => None,
    };
    Ok(Some(MqttSettings {
        host,
        port,
        tls,
        client_id: m.client_id.clone(),
        credentials,
        topics: m.topics.clone(),
        templates: m.topic_templates.clone(),
        max_inflight: m.max_inflight,
        max_payload_bytes: m.max_payload_bytes,
        max_packet_bytes: m.max_packet_bytes,
        rules: decode::IngestRules::new(&config.ingest),
        keep_alive: Duration::from_secs(u64::from(m.keep_alive_s)),
        reconnect_max: Duration::from_millis(m.reconnect_max_ms),
        // Three quarters of the grace, at least 1 s: the rest is for the acks and the stop.
        drain_on_stop: embedded.map(|_| {
            (Duration::from_secs(config.shutdown_grace_s) * 3 / 4).max(Duration::from_secs(1))
        }),
    }))
}

/// Creates `data_dir` with `data_dir_mode` (tightening an existing one to it) and sets the
/// process umask so that everything created in it gets the same bits less execute: readings and
/// dead letters carry whatever devices sent, and are the service user's alone by default.
fn prepare_data_dir(config: &Config) -> Result<(), RunError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let mode = config.data_dir_mode;
    let dir = &config.data_dir;
    let err = |source| RunError::DataDir {
        dir: dir.clone(),
        source,
    };
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(!mode & 0o777));
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(dir)
        .map_err(err)?;
    let current = std::fs::metadata(dir).map_err(err)?.permissions().mode() & 0o7777;
    if current != mode {
        tracing::warn!(data_dir = %dir.display(), from = format!("{current:o}"), to = format!("{mode:o}"), "data_dir had other permissions; setting data_dir_mode");
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode)).map_err(err)?;
    }
    Ok(())
}

/// Runs the gateway until `shutdown` resolves, then stops it cleanly. `Ok` means everything
/// that was acknowledged to a source is durable and the buffer is flushed.
pub async fn run(
    config: Config,
    mut options: RunOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RunError> {
    prepare_data_dir(&config)?;
    let dir = config.data_dir.join("buffer");
    let (buffer, committer) =
        Buffer::open(crate::buffer::options(&config)).map_err(|source| RunError::Buffer {
            dir: dir.clone(),
            source,
        })?;
    // The buffer is open: any panic from here on ends the process (when the binary installed
    // the hook), rather than leaving a task dead.
    crate::ops::telemetry::exit_on_panic();
    let (pipeline, metrics) = Pipeline::from_config(&config, &buffer);

    // Tokens in shutdown order: sources first, then the forwarder and sinks, the committer last.
    let sources = CancellationToken::new();
    let sinks = CancellationToken::new();
    let storage = CancellationToken::new();
    let source_tasks = TaskTracker::new();
    let sink_tasks = TaskTracker::new();
    // A task that must not stop reports here; the gateway then shuts down with its error.
    let (fatal_tx, mut fatal_rx) = tokio::sync::mpsc::channel::<RunError>(4);

    let committer_task = {
        let storage = storage.clone();
        let fatal = fatal_tx.clone();
        tokio::spawn(async move {
            let result = committer.run(storage.clone()).await;
            if let Err(e) = &result {
                tracing::error!(error = %e, "buffer committer: final flush failed");
            }
            // Before shutdown it returns only if something is broken.
            if !storage.is_cancelled() {
                let reason = result
                    .err()
                    .map_or_else(|| "stopped".to_owned(), |e| e.to_string());
                let _ = fatal.try_send(RunError::TaskFailed {
                    task: "buffer committer",
                    reason,
                });
            }
        })
    };

    // A database that failed a write takes none until reopened: once the disk takes writes
    // again, stop so that the service manager restarts us (see `gateway_buffer::BufferHealth`).
    {
        let mut health = buffer.watch_health();
        let fatal = fatal_tx.clone();
        let storage = storage.clone();
        let dir = dir.clone();
        tokio::spawn(async move {
            loop {
                let error = match &*health.borrow_and_update() {
                    BufferHealth::ReopenNeeded { error, .. } => Some(error.clone()),
                    _ => None,
                };
                if let Some(error) = error {
                    let _ = fatal.try_send(RunError::BufferReopen { dir, error });
                    return;
                }
                tokio::select! {
                    _ = storage.cancelled() => return,
                    changed = health.changed() => {
                        if changed.is_err() {
                            return;
                        }
                    }
                }
            }
        });
    }

    let embedded = match config.mqtt.mode {
        MqttMode::Embedded => {
            let own = [
                config.mqtt.client_id.clone(),
                local_alarms::client_id(&config.mqtt.client_id),
            ];
            let metrics = pipeline.metrics().clone();
            let subscribed = async move {
                while !metrics.mqtt_subscribed() {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            };
            Some(broker::start(&config.mqtt, own, subscribed).await?)
        }
        _ => None,
    };
    for warning in config.cleartext_secrets() {
        tracing::warn!("{warning}");
    }
    let mqtt = mqtt_settings(&config, embedded)?;
    if let Some(settings) = &mqtt {
        source_tasks.spawn(mqtt::run(
            settings.clone(),
            pipeline.clone(),
            sources.clone(),
        ));
        sink_tasks.spawn(local_alarms::run(
            settings.clone(),
            buffer.clone(),
            metrics.clone(),
            sinks.clone(),
        ));
    }
    for port in &config.serial {
        let settings = SerialSettings {
            port: port.port.clone(),
            baud: port.baud,
            device: port.device.clone(),
            max_line_bytes: port.max_line_bytes,
            rules: decode::IngestRules::new(&config.ingest),
            reopen_max: Duration::from_millis(port.reopen_max_ms),
        };
        source_tasks.spawn(serial::run(settings, pipeline.clone(), sources.clone()));
    }
    let modbus_rules = decode::IngestRules::new(&config.ingest);
    for bus in modbus::buses(&config.modbus, modbus_rules, &metrics) {
        source_tasks.spawn(bus.run(pipeline.clone(), sources.clone()));
    }
    source_tasks.spawn(alarm_clock(pipeline.clone(), sources.clone()));

    if options.demo_receiver {
        demo::start(&config.upstream.url).await?;
    }
    let (forwarder, driver) = Forwarder::new(buffer.clone(), forwarder_options(&config))?;
    let mut views = vec![SinkView {
        name: gateway_forwarder::CONSUMER.to_owned(),
        kind: "http",
        lanes: vec![Lane::Alarms, Lane::Readings],
        forwarder,
    }];
    let mut drivers = vec![driver];
    // The MQTT bridges' connections stop only after every forwarder drained.
    let links = CancellationToken::new();
    let link_tasks = TaskTracker::new();
    for sink in &config.sinks {
        let built = build_sink(&config, &buffer, sink)?;
        tracing::info!(sink = %built.view.name, kind = built.view.kind, "sink configured");
        views.push(built.view);
        drivers.push(built.driver);
        if let Some(connection) = built.connection {
            link_tasks.spawn(connection.run(links.clone()));
        }
    }
    let grace = Duration::from_secs(config.shutdown_grace_s);
    let forwarder_tasks: Vec<_> = drivers
        .into_iter()
        .zip(&views)
        .map(|(driver, view)| {
            let sinks = sinks.clone();
            let fatal = fatal_tx.clone();
            let name = view.name.clone();
            tokio::spawn(async move {
                if let Err(e) = driver.run(sinks.clone(), grace).await {
                    let _ = fatal.try_send(RunError::TaskFailed {
                        task: "forwarder",
                        reason: format!("sink {name}: {e}"),
                    });
                }
            })
        })
        .collect();

    let admin_state = AdminState::new(
        &config,
        pipeline.clone(),
        views,
        options.config_path.clone(),
    );
    let admin_addr = admin::serve(config.admin.listen, admin_state.clone(), sinks.clone()).await?;
    tracing::info!(gateway_id = %config.gateway_id, admin = %admin_addr, data_dir = %config.data_dir.display(), "gateway running");

    crate::ops::sd_notify::notify("READY=1");
    // Under systemd's watchdog, ping from this loop: a wedged runtime stops the pings.
    let mut watchdog = crate::ops::sd_notify::watchdog_interval().map(tokio::time::interval);

    // Wait for the end, reloading rules on request meanwhile.
    tokio::pin!(shutdown);
    let mut reload = options.reload.take();
    let failure = loop {
        tokio::select! {
            _ = &mut shutdown => break None,
            _ = async { match watchdog.as_mut() { Some(w) => w.tick().await, None => std::future::pending().await } } => {
                crate::ops::sd_notify::notify("WATCHDOG=1");
            }
            Some(e) = fatal_rx.recv() => break Some(e),
            Some(()) = async { match reload.as_mut() { Some(r) => r.recv().await, None => std::future::pending().await } } => {
                match admin_state.reload() {
                    Ok(msg) => tracing::info!("{msg}"),
                    Err(msg) => tracing::error!("{msg}"),
                }
            }
        }
    };
    if let Some(e) = &failure {
        tracing::error!(error = %e, "stopping after a failure");
    }

    crate::ops::sd_notify::notify("STOPPING=1");
    tracing::info!("stopping: sources first");
    // One deadline for the whole stop, so the process ends within `shutdown_grace_s` (plus the
    // final commit and flush, which are short and must not be cut).
    let deadline = tokio::time::Instant::now() + grace;
    sources.cancel();
    source_tasks.close();
    // Sources end promptly: they only finish the appends in progress and send those acks.
    let _ = tokio::time::timeout_at(deadline, source_tasks.wait()).await;
    pipeline.save_engine_state();
    tracing::info!(
        left_ms = deadline
            .saturating_duration_since(tokio::time::Instant::now())
            .as_millis() as u64,
        "stopping: forwarder delivers what it can"
    );
    sinks.cancel();
    for task in forwarder_tasks {
        let abort = task.abort_handle();
        if tokio::time::timeout_at(deadline, task).await.is_err() {
            // Batches still on the wire were not acked: they are sent again, same seqs, next run.
            abort.abort();
        }
    }
    links.cancel();
    link_tasks.close();
    let _ = tokio::time::timeout_at(deadline, link_tasks.wait()).await;
    sink_tasks.close();
    let _ = tokio::time::timeout_at(deadline, sink_tasks.wait()).await;
    // Not cut at the deadline: what was acknowledged must be on disk. A disk busy with other
    // writers can make these fsyncs slow; the log tells where the time went.
    tracing::info!("stopping: final commit and flush of the buffer");
    storage.cancel();
    let _ = committer_task.await;
    if let Err(e) = buffer.flush().await {
        tracing::error!(error = %e, "final buffer flush failed");
    }
    tracing::info!("stopped");
    match failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Silence rules on the clock, and a periodic save of the engine state (last-seen times).
async fn alarm_clock(pipeline: Pipeline, stop: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut n = 0u64;
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {
                if let Err(e) = pipeline.tick().await {
                    tracing::error!(error = %e, "silence alarms could not be stored");
                }
                n += 1;
                if n.is_multiple_of(10) {
                    pipeline.save_engine_state();
                }
            }
        }
    }
}
