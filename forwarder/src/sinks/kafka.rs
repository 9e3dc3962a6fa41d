//! The Kafka sink (WIRE §4a): one Kafka record per reading or alarm event, for a Kafka cluster
//! or a Kafka-protocol service (MSK, Confluent Cloud, Redpanda, Event Hubs). `[[sink]] kind =
//! "kafka"` is this sink.
//!
//! # The client: rskafka
//! Two Rust clients were weighed. **rdkafka** wraps librdkafka: the reference producer, with an
//! idempotent mode that removes the duplicates of a retry, but a C library to build for
//! armv7/aarch64 (or a distribution's `librdkafka-dev`, whose 2.0.2 in Debian 12 cannot even
//! negotiate API versions with some Kafka-protocol brokers) and its own threads, queues and
//! retry loop beside ours. **rskafka** is a small async client in Rust: it cross-compiles with
//! `cargo` alone (the lz4 and zstd codecs are bundled C sources built by `cc`, no system
//! library), speaks TLS through the same rustls configuration as every other sink and SASL
//! PLAIN and SCRAM-SHA-256/512, produces with `acks = all`, and leaves batching, retrying and
//! backoff to the caller: to this crate's driver, which already does them for every sink. What
//! it lacks is the idempotent producer; that costs nothing the contract relies on: delivery is
//! at least once either way, every record carries its `seq`, and the consumer deduplicates on
//! `(gateway_id, seq)`. rskafka it is.
//!
//! # Guarantees
//! - **One record per reading or event.** Topic: the lane's (`topic` for readings,
//!   `alarm_topic` for alarms); key: the device id; value: the record's WIRE §3 JSON, byte for
//!   byte a record of the HTTP sink's batch; headers `gateway_id` and `seq` (decimal text);
//!   timestamp: the record's `ts`.
//! - **A device's records stay in one partition.** The partition is Kafka's default for a keyed
//!   record: `murmur2(key) & 0x7fffffff % partitions`, as the Java producer (and kafka-python,
//!   librdkafka's `murmur2_random`) computes it, so a record lands where any other producer
//!   would put the same key.
//! - **Delivered only when Kafka has all of it.** A batch is split by partition (records kept in
//!   seq order) into produce requests of at most [`MAX_REQUEST_BYTES`], sent at once, each with
//!   `acks = all`; the attempt is [`Outcome::Delivered`] only once every request was acked.
//! - **A partial failure retries the rest.** The requests an earlier attempt of the same batch
//!   (same idempotency key) got acked are not sent again; the split is deterministic, so the
//!   rest are exactly the records still missing, under their original seqs.
//! - **Kafka down is an outage, not a refusal.** No broker reachable, no leader, a topic that
//!   does not exist (yet), authentication failing: [`Outcome::Retry`], the records wait in the
//!   buffer. Only a record Kafka will never take (larger than the broker's limit, or declared
//!   invalid) makes the attempt [`Outcome::Refused`]; the driver parks the batch.
//! - **Nothing at start-up.** Building the sink connects nothing; the first attempt does, so
//!   the gateway starts while Kafka is unreachable.
//!
//! # Non-guarantees
//! - **Duplicates.** A request whose acknowledgement is lost (a timeout, a broken connection)
//!   is sent again with the next attempt; Kafka then holds the records twice, same `seq`.
//! - **Order needs one batch at a time.** Within one attempt a partition gets its records in
//!   seq order; across batches that holds only while one batch is in flight, which is why the
//!   config allows a Kafka sink no other `max_in_flight` than 1.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;
use futures::future::{BoxFuture, join_all};
use gateway_buffer::{Lane, Record as BufferRecord, Stored};
use gateway_config::{KafkaCompression, KafkaSasl, SaslMechanism, TlsClient};
use rskafka::BackoffConfig;
use rskafka::client::error::{Error as KafkaError, ProtocolError};
use rskafka::client::partition::{Compression, PartitionClient, UnknownTopicHandling};
use rskafka::client::{Client, ClientBuilder, Credentials, SaslConfig};
use rskafka::record::Record;
use tokio::time::{Instant, timeout};

use super::{Attempt, EncodedBatch, Sink};
use crate::error::ForwarderError;
use crate::gate::ProbeTarget;
use crate::outcome::{Outcome, RetryReason, error_chain};
use crate::wire;

/// Most bytes (keys, values, headers, uncompressed) in one produce request: well below the
/// 1 MiB a Kafka broker takes by default (`message.max.bytes`), and what one partition's share
/// of a large batch is split into.
pub const MAX_REQUEST_BYTES: usize = 512 * 1024;

/// Batches whose acked requests are remembered for their next attempt. One batch per lane is
/// in flight, so a handful is plenty; an older entry forgotten only costs duplicates.
const REMEMBERED_BATCHES: usize = 8;

/// What the Kafka sink is configured with, as plain values (from a `[[sink]] kind = "kafka"`).
#[derive(Clone)]
pub struct KafkaSinkOptions {
    /// Goes into the `gateway_id` header of every record.
    pub gateway_id: String,
    /// Bootstrap brokers, `host:port` (`sink[].brokers`).
    pub brokers: Vec<String>,
    /// Sent with every request (`sink[].client_id`).
    pub client_id: String,
    /// Topic of readings (`sink[].topic`); `None` when the sink does not read that lane.
    pub readings_topic: Option<String>,
    /// Topic of alarm events (`sink[].alarm_topic`); `None` likewise.
    pub alarms_topic: Option<String>,
    /// Record batch codec (`sink[].compression`, default none).
    pub compression: KafkaCompression,
    /// TLS (`sink[].tls` and its files); `None`: plaintext.
    pub tls: Option<TlsClient>,
    /// SASL mechanism and credentials (`sink[].sasl_mechanism`, `username`, `password_env`).
    pub sasl: Option<KafkaSasl>,
    /// Per attempt: connecting, finding the leaders and every produce acknowledgement
    /// (`sink[].timeout_ms`, default 10 s).
    pub timeout: Duration,
}

impl fmt::Debug for KafkaSinkOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaSinkOptions")
            .field("gateway_id", &self.gateway_id)
            .field("brokers", &self.brokers)
            .field("client_id", &self.client_id)
            .field("readings_topic", &self.readings_topic)
            .field("alarms_topic", &self.alarms_topic)
            .field("compression", &self.compression)
            .field("tls", &self.tls.is_some())
            .field("sasl", &self.sasl.as_ref().map(|s| s.mechanism))
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl KafkaSinkOptions {
    /// Defaults for everything but the gateway id, the brokers and the readings topic.
    pub fn new(
        gateway_id: impl Into<String>,
        brokers: Vec<String>,
        readings_topic: impl Into<String>,
    ) -> Self {
        let gateway_id = gateway_id.into();
        KafkaSinkOptions {
            client_id: format!("gateway-{gateway_id}"),
            gateway_id,
            brokers,
            readings_topic: Some(readings_topic.into()),
            alarms_topic: None,
            compression: KafkaCompression::None,
            tls: None,
            sasl: None,
            timeout: Duration::from_secs(10),
        }
    }

    fn validate(&self) -> Result<(), ForwarderError> {
        let bad = |field: &'static str, reason: &str| {
            Err(ForwarderError::InvalidSinkOptions {
                field,
                reason: reason.to_string(),
            })
        };
        if self.gateway_id.is_empty() {
            return bad("gateway_id", "must not be empty");
        }
        if self.brokers.is_empty() {
            return bad("brokers", "needs at least one host:port");
        }
        if self.readings_topic.is_none() && self.alarms_topic.is_none() {
            return bad("topic", "needs a topic for at least one lane");
        }
        if self.timeout.is_zero() {
            return bad("timeout_ms", "must be > 0");
        }
        Ok(())
    }

    fn topic(&self, lane: Lane) -> Option<&str> {
        match lane {
            Lane::Readings => self.readings_topic.as_deref(),
            Lane::Alarms => self.alarms_topic.as_deref(),
        }
    }
}

/// The Kafka sink: hands batches to [`crate::Forwarder::with_sink`]. Holds one rskafka client,
/// built by the first attempt that needs it, and a client per partition it produced to.
pub struct KafkaSink {
    options: KafkaSinkOptions,
    connection: tokio::sync::Mutex<Connection>,
    /// Requests of recent batches that Kafka acked, by idempotency key.
    acked: Mutex<Remembered>,
}

impl fmt::Debug for KafkaSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaSink")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

/// The client and what it learnt: partitions per topic, a client per partition.
#[derive(Default)]
struct Connection {
    client: Option<Arc<Client>>,
    partitions: HashMap<String, i32>,
    leaders: HashMap<(String, i32), Arc<PartitionClient>>,
}

/// One produce request of a batch: the records of one partition, a consecutive run of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct RequestId {
    partition: i32,
    part: usize,
}

#[derive(Default)]
struct Remembered {
    order: VecDeque<String>,
    acked: HashMap<String, HashSet<RequestId>>,
}

impl Remembered {
    fn acked(&self, key: &str) -> HashSet<RequestId> {
        self.acked.get(key).cloned().unwrap_or_default()
    }

    fn add(&mut self, key: &str, done: impl IntoIterator<Item = RequestId>) {
        if !self.acked.contains_key(key) {
            if self.order.len() == REMEMBERED_BATCHES
                && let Some(oldest) = self.order.pop_front()
            {
                self.acked.remove(&oldest);
            }
            self.order.push_back(key.to_owned());
        }
        self.acked.entry(key.to_owned()).or_default().extend(done);
    }

    fn forget(&mut self, key: &str) {
        if self.acked.remove(key).is_some() {
            self.order.retain(|k| k != key);
        }
    }
}

impl KafkaSink {
    /// Checks the options; connects nothing (the first attempt does).
    pub fn new(options: KafkaSinkOptions) -> Result<KafkaSink, ForwarderError> {
        options.validate()?;
        Ok(KafkaSink {
            options,
            connection: tokio::sync::Mutex::new(Connection::default()),
            acked: Mutex::new(Remembered::default()),
        })
    }

    /// The rskafka client, built on first use: bootstrap, TLS, SASL.
    async fn client(&self) -> Result<Arc<Client>, KafkaError> {
        let mut connection = self.connection.lock().await;
        if let Some(client) = &connection.client {
            return Ok(client.clone());
        }
        let o = &self.options;
        let mut builder = ClientBuilder::new(o.brokers.clone())
            .client_id(o.client_id.as_str())
            .backoff_config(self.backoff());
        if let Some(tls) = &o.tls {
            builder = builder.tls_config(tls.config());
        }
        if let Some(sasl) = &o.sasl {
            let credentials =
                Credentials::new(sasl.username.clone(), sasl.password.expose().to_owned());
            builder = builder.sasl_config(match sasl.mechanism {
                SaslMechanism::Plain => SaslConfig::Plain(credentials),
                SaslMechanism::ScramSha256 => SaslConfig::ScramSha256(credentials),
                SaslMechanism::ScramSha512 => SaslConfig::ScramSha512(credentials),
            });
        }
        let client = Arc::new(builder.build().await?);
        connection.client = Some(client.clone());
        Ok(client)
    }

    /// rskafka retries a request itself (a leader moved, a connection broke) until this
    /// deadline; past it the attempt fails and the driver's backoff takes over.
    fn backoff(&self) -> BackoffConfig {
        BackoffConfig {
            init_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(1),
            base: 2.0,
            deadline: Some(self.options.timeout),
        }
    }

    /// How many partitions `topic` has, from the cluster's metadata the first time.
    async fn partitions(&self, client: &Client, topic: &str) -> Result<i32, Failure> {
        if let Some(n) = self.connection.lock().await.partitions.get(topic) {
            return Ok(*n);
        }
        let topics = client.list_topics().await.map_err(Failure::Kafka)?;
        let n = topics
            .iter()
            .find(|t| t.name == topic)
            .map(|t| t.partitions.len() as i32)
            .filter(|n| *n > 0)
            .ok_or_else(|| Failure::NoTopic(topic.to_owned()))?;
        self.connection
            .lock()
            .await
            .partitions
            .insert(topic.to_owned(), n);
        Ok(n)
    }

    /// The client of `topic`'s `partition`, which finds and keeps its leader.
    async fn leader(
        &self,
        client: &Client,
        topic: &str,
        partition: i32,
    ) -> Result<Arc<PartitionClient>, KafkaError> {
        let key = (topic.to_owned(), partition);
        if let Some(p) = self.connection.lock().await.leaders.get(&key) {
            return Ok(p.clone());
        }
        let p = Arc::new(
            client
                .partition_client(topic, partition, UnknownTopicHandling::Error)
                .await?,
        );
        self.connection.lock().await.leaders.insert(key, p.clone());
        Ok(p)
    }

    /// After a failure the next attempt starts from fresh metadata: partitions may have been
    /// added, leaders moved, the cluster replaced.
    async fn forget_metadata(&self, topic: &str, everything: bool) {
        let mut connection = self.connection.lock().await;
        connection.partitions.remove(topic);
        connection.leaders.retain(|(t, _), _| t != topic);
        if everything {
            *connection = Connection::default();
        }
    }

    async fn send(&self, batch: &EncodedBatch) -> Attempt {
        let started = Instant::now();
        let outcome = match timeout(self.options.timeout, self.produce(batch)).await {
            Ok(Ok(())) => Outcome::Delivered,
            Ok(Err(failure)) => failure.outcome(),
            Err(_) => Outcome::Retry {
                reason: RetryReason::Timeout,
                retry_after: None,
            },
        };
        if !matches!(outcome, Outcome::Retry { .. }) {
            self.acked_lock().forget(&batch.idempotency_key);
        }
        let latency = matches!(outcome, Outcome::Delivered).then(|| started.elapsed());
        Attempt { outcome, latency }
    }

    fn acked_lock(&self) -> std::sync::MutexGuard<'_, Remembered> {
        // A panic while holding it cannot leave the map inconsistent: every change is one call.
        self.acked.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Produces every request of `batch` not acked yet, at once; remembers those acked.
    async fn produce(&self, batch: &EncodedBatch) -> Result<(), Failure> {
        let Some(topic) = self.options.topic(batch.lane) else {
            return Err(Failure::NoLaneTopic(batch.lane));
        };
        let client = self.client().await.map_err(Failure::Connect)?;
        let partitions = match self.partitions(&client, topic).await {
            Ok(n) => n,
            Err(failure) => {
                self.forget_metadata(topic, matches!(failure, Failure::Kafka(_)))
                    .await;
                return Err(failure);
            }
        };
        let already = self.acked_lock().acked(&batch.idempotency_key);
        let requests: Vec<(RequestId, Vec<Record>)> =
            split(&self.options.gateway_id, &batch.records, partitions)
                .into_iter()
                .filter(|(id, _)| !already.contains(id))
                .collect();
        let compression = codec(self.options.compression);
        let key = batch.idempotency_key.as_str();
        // Each acked request is remembered at once, so progress survives an attempt that times
        // out on another request.
        let results = join_all(requests.into_iter().map(|(id, records)| {
            let client = client.clone();
            async move {
                let leader = self.leader(&client, topic, id.partition).await?;
                leader.produce(records, compression).await?;
                self.acked_lock().add(key, [id]);
                Ok::<_, KafkaError>(())
            }
        }))
        .await;
        match results.into_iter().find_map(Result::err) {
            None => Ok(()),
            Some(e) => {
                self.forget_metadata(topic, false).await;
                Err(Failure::Kafka(e))
            }
        }
    }
}

impl Sink for KafkaSink {
    /// The first bootstrap broker.
    fn probe_target(&self) -> Option<ProbeTarget> {
        let first = self.options.brokers.first()?;
        let (host, port) = first.rsplit_once(':')?;
        Some(ProbeTarget {
            host: host.trim_matches(['[', ']']).to_string(),
            port: port.parse().ok()?,
        })
    }

    /// Produces the batch's records not yet acked and classifies what happened; never
    /// panics, every failure is an [`Outcome`].
    fn attempt<'a>(&'a self, batch: &'a EncodedBatch) -> BoxFuture<'a, Attempt> {
        self.send(batch).boxed()
    }
}

/// Why an attempt did not deliver everything.
#[derive(Debug)]
enum Failure {
    /// No client: no bootstrap broker answered, TLS or SASL failed.
    Connect(KafkaError),
    /// The topic is not in the cluster's metadata (topics are often not auto-created).
    NoTopic(String),
    /// The sink has no topic for this lane: the config and the lanes read disagree.
    NoLaneTopic(Lane),
    /// A request failed.
    Kafka(KafkaError),
}

impl Failure {
    fn outcome(self) -> Outcome {
        let retry = |reason| Outcome::Retry {
            reason,
            retry_after: None,
        };
        match self {
            Failure::Connect(e) => retry(RetryReason::Connect(error_chain(&e))),
            Failure::NoTopic(topic) => retry(RetryReason::Answered(format!(
                "topic {topic:?} does not exist in the cluster (create it; records wait)"
            ))),
            Failure::NoLaneTopic(lane) => Outcome::Refused {
                answer: "no topic".into(),
                detail: format!("the sink has no topic for the {} lane", lane.as_str()),
            },
            Failure::Kafka(e) => match refusal(&e) {
                Some(code) => Outcome::Refused {
                    answer: format!("Kafka {code:?}"),
                    detail: error_chain(&e),
                },
                None => match &e {
                    KafkaError::ServerError {
                        protocol_error,
                        error_message,
                        ..
                    } => retry(RetryReason::Answered(format!(
                        "Kafka {protocol_error:?}{}",
                        error_message
                            .as_deref()
                            .map(|m| format!(": {m}"))
                            .unwrap_or_default()
                    ))),
                    KafkaError::Timeout => retry(RetryReason::Timeout),
                    KafkaError::Connection(_) => retry(RetryReason::Connect(error_chain(&e))),
                    _ => retry(RetryReason::Transport(error_chain(&e))),
                },
            },
        }
    }
}

/// The broker's answers that mean "never these records": sending them again cannot help.
fn refusal(e: &KafkaError) -> Option<ProtocolError> {
    match e {
        KafkaError::ServerError { protocol_error, .. } => match protocol_error {
            ProtocolError::MessageTooLarge
            | ProtocolError::RecordListTooLarge
            | ProtocolError::InvalidRecord
            | ProtocolError::CorruptMessage => Some(*protocol_error),
            _ => None,
        },
        _ => None,
    }
}

fn codec(c: KafkaCompression) -> Compression {
    match c {
        KafkaCompression::None => Compression::NoCompression,
        KafkaCompression::Gzip => Compression::Gzip,
        KafkaCompression::Lz4 => Compression::Lz4,
        KafkaCompression::Zstd => Compression::Zstd,
    }
}

/// The device id a record is keyed by.
fn device(stored: &Stored) -> &str {
    match &stored.record {
        BufferRecord::Reading(r) => &r.device,
        BufferRecord::Alarm(a) => &a.device,
    }
}

/// The Kafka record of one buffer record (see the module's guarantees).
pub fn kafka_record(gateway_id: &str, stored: &Stored) -> Record {
    let mut value = Vec::with_capacity(128);
    wire::encode_record(stored, &mut value);
    let ts_ms = match &stored.record {
        BufferRecord::Reading(r) => r.ts_ms,
        BufferRecord::Alarm(a) => a.ts_ms,
    };
    Record {
        key: Some(device(stored).as_bytes().to_vec()),
        value: Some(value),
        headers: BTreeMap::from([
            ("gateway_id".to_owned(), gateway_id.as_bytes().to_vec()),
            ("seq".to_owned(), stored.seq.to_string().into_bytes()),
        ]),
        timestamp: chrono::DateTime::from_timestamp_millis(ts_ms).unwrap_or_default(),
    }
}

/// The produce requests of a batch: its records by partition, in seq order, each partition's
/// cut into runs of at most [`MAX_REQUEST_BYTES`] (a larger record goes alone). Deterministic,
/// so a retry names the same requests.
fn split(gateway_id: &str, records: &[Stored], partitions: i32) -> Vec<(RequestId, Vec<Record>)> {
    let mut by_partition: BTreeMap<i32, Vec<Vec<Record>>> = BTreeMap::new();
    let mut open_bytes: HashMap<i32, usize> = HashMap::new();
    for stored in records {
        let partition = partition_of(device(stored).as_bytes(), partitions);
        let record = kafka_record(gateway_id, stored);
        let size = record.approximate_size();
        let runs = by_partition.entry(partition).or_default();
        let bytes = open_bytes.entry(partition).or_default();
        match runs.last_mut() {
            Some(run) if *bytes + size <= MAX_REQUEST_BYTES => {
                run.push(record);
                *bytes += size;
            }
            _ => {
                runs.push(vec![record]);
                *bytes = size;
            }
        }
    }
    by_partition
        .into_iter()
        .flat_map(|(partition, runs)| {
            runs.into_iter()
                .enumerate()
                .map(move |(part, run)| (RequestId { partition, part }, run))
        })
        .collect()
}

/// Kafka's default partition of a keyed record: `toPositive(murmur2(key)) % partitions`.
pub fn partition_of(key: &[u8], partitions: i32) -> i32 {
    (murmur2(key) & 0x7fff_ffff) % partitions.max(1)
}

/// Kafka's `Utils.murmur2` (the Java producer's key hash), as a signed 32-bit value.
pub fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let mut h = SEED ^ data.len() as u32;
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        for (i, b) in rest.iter().enumerate().rev() {
            h ^= u32::from(*b) << (8 * i);
        }
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

#[cfg(test)]
mod tests {
    use super::*;
    use gateway_buffer::{Reading, Source};

    /// The values of Kafka's own `UtilsTest.testMurmur2`.
    #[test]
    fn murmur2_is_kafkas() {
        for (key, hash) in [
            ("21", -973_932_308),
            ("foobar", -790_332_482),
            ("a-little-bit-long-string", -985_981_536),
            ("a-little-bit-longer-string", -1_486_304_829),
            (
                "lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58_897_971,
            ),
            ("abc", 479_470_107),
        ] {
            assert_eq!(murmur2(key.as_bytes()), hash, "{key}");
        }
    }

    fn reading(seq: u64, device: &str, metric: &str) -> Stored {
        Stored {
            seq,
            record: BufferRecord::Reading(Reading {
                device: device.into(),
                metric: metric.into(),
                value: seq as f64,
                unit: None,
                ts_ms: 1_764_081_600_000 + seq as i64,
                source: Source::Mqtt,
            }),
        }
    }

    #[test]
    fn a_batch_splits_by_partition_in_seq_order_and_the_same_way_every_time() {
        let records: Vec<Stored> = (1..=200)
            .map(|seq| reading(seq, &format!("dev-{}", seq % 7), "t"))
            .collect();
        let requests = split("gw", &records, 3);
        assert_eq!(
            requests.iter().map(|(id, _)| id).collect::<Vec<_>>(),
            split("gw", &records, 3)
                .iter()
                .map(|(id, _)| id)
                .collect::<Vec<_>>()
        );
        let mut total = 0;
        for (id, run) in &requests {
            let seqs: Vec<u64> = run
                .iter()
                .map(|r| {
                    String::from_utf8(r.headers["seq"].clone())
                        .unwrap()
                        .parse()
                        .unwrap()
                })
                .collect();
            assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
            for r in run {
                assert_eq!(partition_of(r.key.as_deref().unwrap(), 3), id.partition);
                assert_eq!(r.headers["gateway_id"], b"gw");
            }
            total += run.len();
        }
        assert_eq!(total, 200);
    }

    #[test]
    fn a_large_batch_of_one_partition_is_cut_into_requests_under_the_limit() {
        let big = "m".repeat(10_000);
        let records: Vec<Stored> = (1..=200).map(|seq| reading(seq, "dev-1", &big)).collect();
        let requests = split("gw", &records, 1);
        assert!(requests.len() >= 4, "{}", requests.len());
        for (i, (id, run)) in requests.iter().enumerate() {
            assert_eq!(
                *id,
                RequestId {
                    partition: 0,
                    part: i
                }
            );
            let bytes: usize = run.iter().map(Record::approximate_size).sum();
            assert!(bytes <= MAX_REQUEST_BYTES, "{bytes}");
        }
    }

    #[test]
    fn the_record_is_the_wire_json_keyed_by_device_with_its_seq_and_time() {
        let stored = reading(42, "dev/7", "temperature");
        let r = kafka_record("gw-1", &stored);
        let mut json = Vec::new();
        wire::encode_record(&stored, &mut json);
        assert_eq!(r.value.as_deref(), Some(&json[..]));
        assert_eq!(r.key.as_deref(), Some(&b"dev/7"[..]));
        assert_eq!(r.headers["seq"], b"42");
        assert_eq!(r.timestamp.timestamp_millis(), 1_764_081_600_042);
    }

    #[test]
    fn remembered_batches_are_bounded_and_forgotten_when_done() {
        let mut m = Remembered::default();
        let id = RequestId {
            partition: 0,
            part: 0,
        };
        for i in 0..20 {
            m.add(&format!("k{i}"), [id]);
        }
        assert_eq!(m.acked.len(), REMEMBERED_BATCHES);
        assert!(m.acked("k19").contains(&id));
        assert!(m.acked("k0").is_empty());
        m.forget("k19");
        assert!(m.acked("k19").is_empty());
        assert_eq!(m.order.len(), REMEMBERED_BATCHES - 1);
    }
}
