//! Workloads: WIRE.md §1 messages together with the readings each must become upstream, and the
//! comparison of what a [`crate::Upstream`] got against them.

use crate::publisher::Message;
use serde_json::Value;
use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;

/// Device of the probe readings that prove the ingest path is up; left out of comparisons.
pub const PROBE_DEVICE: &str = "probe";

/// Epoch ms all generated timestamps start from (2025-11-25T14:40:00Z).
pub const BASE_TS_MS: i64 = 1_764_081_600_000;

/// An `[[alarm]]` rule `overheat`: temperature of devices `hot-*` above 35, cleared below 33.
pub const OVERHEAT_RULE: &str = "[[alarm]]\nname = \"overheat\"\nmetric = \"temperature\"\n\
                                 device = \"hot-*\"\nabove = 35.0\nclear_below = 33.0\n\
                                 severity = \"critical\"\n";

/// Two readings of device `hot-1` that raise and then clear [`OVERHEAT_RULE`], with the
/// readings they become.
pub fn overheat_raise_and_clear() -> (Vec<Message>, Vec<Expected>) {
    [40.0, 20.0]
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let ts = BASE_TS_MS + 100_000 + i as i64;
            (
                Message {
                    topic: "sensors/hot-1/temperature".into(),
                    payload: format!(r#"{{"value": {v}, "ts": {ts}}}"#).into_bytes(),
                },
                Expected {
                    device: "hot-1".into(),
                    metric: "temperature".into(),
                    value: *v,
                    ts: Some(ts),
                },
            )
        })
        .unzip()
}

/// A reading a message must produce.
#[derive(Debug, Clone, PartialEq)]
pub struct Expected {
    pub device: String,
    pub metric: String,
    pub value: f64,
    /// `None`: the payload carries no time, so the gateway's receive time is used.
    pub ts: Option<i64>,
}

/// A readings-lane record as the receiver got it.
#[derive(Debug, Clone, PartialEq)]
pub struct UpReading {
    pub seq: u64,
    pub device: String,
    pub metric: String,
    pub value: f64,
    pub unit: Option<String>,
    pub ts: i64,
    pub source: String,
}

/// Parses WIRE.md §3 reading records; panics on a record of another shape.
pub fn parse_readings(records: &[Value]) -> Vec<UpReading> {
    records
        .iter()
        .map(|r| UpReading {
            seq: r["seq"].as_u64().unwrap_or_else(|| panic!("seq in {r}")),
            device: r["device"]
                .as_str()
                .unwrap_or_else(|| panic!("device in {r}"))
                .to_owned(),
            metric: r["metric"]
                .as_str()
                .unwrap_or_else(|| panic!("metric in {r}"))
                .to_owned(),
            value: r["value"]
                .as_f64()
                .unwrap_or_else(|| panic!("value in {r}")),
            unit: match &r["unit"] {
                Value::Null => None,
                Value::String(s) => Some(s.clone()),
                other => panic!("unit {other} in {r}"),
            },
            ts: r["ts"].as_i64().unwrap_or_else(|| panic!("ts in {r}")),
            source: r["source"]
                .as_str()
                .unwrap_or_else(|| panic!("source in {r}"))
                .to_owned(),
        })
        .collect()
}

/// Messages for several publishing clients and the readings each message must become.
#[derive(Debug, Clone, Default)]
pub struct Workload {
    /// Per client, its messages in publishing order, each with its readings.
    pub clients: Vec<Vec<(Message, Vec<Expected>)>>,
}

impl Workload {
    /// The messages of client `c`, for a [`crate::Publisher`].
    pub fn messages(&self, c: usize) -> Vec<Message> {
        self.clients[c].iter().map(|(m, _)| m.clone()).collect()
    }

    /// Number of readings in all messages.
    pub fn readings(&self) -> usize {
        self.clients.iter().flatten().map(|(_, r)| r.len()).sum()
    }

    /// Every expected reading.
    pub fn all_expected(&self) -> Vec<Expected> {
        self.clients
            .iter()
            .flatten()
            .flat_map(|(_, r)| r.iter().cloned())
            .collect()
    }

    /// The readings of the messages of client `c` for which `acked[i]` holds.
    pub fn expected_for(&self, c: usize, acked: &[bool]) -> Vec<Expected> {
        self.clients[c]
            .iter()
            .zip(acked)
            .filter(|(_, a)| **a)
            .flat_map(|((_, r), _)| r.iter().cloned())
            .collect()
    }
}

fn msg(topic: String, payload: String) -> Message {
    Message {
        topic,
        payload: payload.into_bytes(),
    }
}

/// Epoch ms as RFC 3339 with milliseconds (`2025-11-25T14:40:00.123Z`).
pub fn rfc3339(ts_ms: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ts_ms) * 1_000_000)
        .expect("timestamp in range");
    t.format(&time::format_description::well_known::Rfc3339)
        .expect("format RFC 3339")
}

/// `clients` clients (device `dev-{c}` each) publishing every WIRE.md §1 form in rotation until
/// about `readings` readings: bare numbers (metric `counter`, no ts, unique values), one-metric
/// JSON with epoch-ms `ts` and with an RFC 3339 `ts`, multi-metric JSON, and SenML packs with a
/// base name and base time. Timestamps are unique per device+metric.
pub fn mixed_forms(clients: usize, readings: usize, tag: &str) -> Workload {
    let per_client = readings.div_ceil(clients);
    let mut w = Workload::default();
    for c in 0..clients {
        let dev = format!("{tag}-{c}");
        let mut out = Vec::new();
        let mut n = 0usize;
        let mut i = 0i64;
        while n < per_client {
            let ts = BASE_TS_MS + i;
            let v = i as f64 * 0.25 + c as f64;
            let e = |metric: &str, value: f64, ts: Option<i64>| Expected {
                device: dev.clone(),
                metric: metric.to_owned(),
                value,
                ts,
            };
            let (m, r) = match i % 5 {
                0 => (
                    msg(format!("sensors/{dev}/counter"), format!("{}", i as f64)),
                    vec![e("counter", i as f64, None)],
                ),
                1 => (
                    msg(
                        format!("sensors/{dev}/temperature"),
                        format!(r#"{{"value": {v}, "ts": {ts}, "unit": "C"}}"#),
                    ),
                    vec![e("temperature", v, Some(ts))],
                ),
                2 => (
                    msg(
                        format!("sensors/{dev}"),
                        format!(
                            r#"{{"ts": {ts}, "humidity": {v}, "pressure": {}}}"#,
                            v + 1000.0
                        ),
                    ),
                    vec![
                        e("humidity", v, Some(ts)),
                        e("pressure", v + 1000.0, Some(ts)),
                    ],
                ),
                3 => (
                    msg(
                        format!("sensors/{dev}"),
                        format!(
                            r#"[{{"bn":"{dev}/","bt":{}.{:03},"n":"co2","u":"ppm","v":{v}}},{{"n":"voc","v":{}}}]"#,
                            ts / 1000,
                            ts % 1000,
                            v * 2.0
                        ),
                    ),
                    vec![e("co2", v, Some(ts)), e("voc", v * 2.0, Some(ts))],
                ),
                _ => (
                    msg(
                        format!("sensors/{dev}/light"),
                        format!(r#"{{"value": {v}, "ts": "{}"}}"#, rfc3339(ts)),
                    ),
                    vec![e("light", v, Some(ts))],
                ),
            };
            n += r.len();
            out.push((m, r));
            i += 1;
        }
        w.clients.push(out);
    }
    w
}

/// `clients` clients each publishing `per_client` one-metric JSON messages with a unique `ts`
/// (device `{tag}-{c}`, metric `temperature`, values below any alarm threshold).
pub fn simple_json(clients: usize, per_client: usize, tag: &str) -> Workload {
    let mut w = Workload::default();
    for c in 0..clients {
        let dev = format!("{tag}-{c}");
        w.clients.push(
            (0..per_client)
                .map(|i| {
                    let ts = BASE_TS_MS + i as i64;
                    let v = 20.0 + (i % 40) as f64 * 0.25;
                    (
                        msg(
                            format!("sensors/{dev}/temperature"),
                            format!(r#"{{"value": {v}, "ts": {ts}}}"#),
                        ),
                        vec![Expected {
                            device: dev.clone(),
                            metric: "temperature".into(),
                            value: v,
                            ts: Some(ts),
                        }],
                    )
                })
                .collect(),
        );
    }
    w
}

/// A reading's identity for comparisons: ts-less readings are matched on value only.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Key {
    device: String,
    metric: String,
    ts: Option<i64>,
    value_bits: u64,
}

/// What was delivered compared with what was expected.
#[derive(Debug, Default)]
pub struct Comparison {
    /// Expected and never delivered.
    pub missing: Vec<String>,
    /// Delivered and never published.
    pub unexpected: Vec<String>,
    /// Deliveries beyond the first of the same reading.
    pub duplicates: usize,
    /// Readings delivered (probes excluded), duplicates included.
    pub delivered: usize,
}

impl Comparison {
    /// A short description for assertion messages.
    pub fn describe(&self) -> String {
        let mut s = format!(
            "{} delivered, {} missing, {} unexpected, {} duplicates",
            self.delivered,
            self.missing.len(),
            self.unexpected.len(),
            self.duplicates
        );
        for (what, list) in [("missing", &self.missing), ("unexpected", &self.unexpected)] {
            for k in list.iter().take(10) {
                let _ = write!(s, "\n  {what}: {k}");
            }
        }
        s
    }
}

/// Compares delivered readings with `required` (must all arrive) and `allowed` (may arrive,
/// e.g. messages whose PUBACK was lost). Probe readings are ignored; `ts_less` metrics are
/// matched on device, metric and value.
pub fn compare(required: &[Expected], allowed: &[Expected], delivered: &[UpReading]) -> Comparison {
    let ts_less: HashSet<(String, String)> = required
        .iter()
        .chain(allowed)
        .filter(|e| e.ts.is_none())
        .map(|e| (e.device.clone(), e.metric.clone()))
        .collect();
    let key_of_expected = |e: &Expected| Key {
        device: e.device.clone(),
        metric: e.metric.clone(),
        ts: e.ts,
        value_bits: e.value.to_bits(),
    };
    let mut got: BTreeMap<Key, usize> = BTreeMap::new();
    let mut cmp = Comparison::default();
    for r in delivered.iter().filter(|r| r.device != PROBE_DEVICE) {
        let ts = if ts_less.contains(&(r.device.clone(), r.metric.clone())) {
            None
        } else {
            Some(r.ts)
        };
        *got.entry(Key {
            device: r.device.clone(),
            metric: r.metric.clone(),
            ts,
            value_bits: r.value.to_bits(),
        })
        .or_default() += 1;
        cmp.delivered += 1;
    }
    let required_keys: HashSet<Key> = required.iter().map(key_of_expected).collect();
    let allowed_keys: HashSet<Key> = allowed
        .iter()
        .map(key_of_expected)
        .chain(required_keys.iter().cloned())
        .collect();
    let show = |k: &Key| {
        format!(
            "{}/{} value {} ts {:?}",
            k.device,
            k.metric,
            f64::from_bits(k.value_bits),
            k.ts
        )
    };
    let mut missing: Vec<&Key> = required_keys
        .iter()
        .filter(|k| !got.contains_key(k))
        .collect();
    missing.sort();
    cmp.missing = missing.into_iter().map(show).collect();
    for (k, n) in &got {
        if !allowed_keys.contains(k) {
            cmp.unexpected.push(format!("{} (x{n})", show(k)));
        }
        cmp.duplicates += n - 1;
    }
    cmp
}

/// Checks seq within the delivered batches of one lane, as WIRE.md §3 lets a cloud rely on with
/// several batches in flight (for runs without restarts or retries of delivered batches): each
/// batch's seqs strictly increase, and the batches, ordered by their first seq, cover disjoint
/// ranges, so every seq is delivered once. Batches may arrive in any order.
pub fn check_seq_increasing(batches: &[crate::Batch], lane: &str) -> Result<(), String> {
    let mut delivered: Vec<(Vec<u64>, &crate::Batch)> = batches
        .iter()
        .filter(|b| b.delivered() && b.lane == lane)
        .map(|b| (b.seqs(), b))
        .filter(|(seqs, _)| !seqs.is_empty())
        .collect();
    delivered.sort_by_key(|(seqs, _)| seqs[0]);
    let mut last: Option<u64> = None;
    for (seqs, b) in &delivered {
        for &seq in seqs {
            if let Some(prev) = last
                && seq <= prev
            {
                return Err(format!(
                    "{lane}: seq {seq} after {prev} in seq order (batch {} key {:?})",
                    b.index, b.idempotency_key
                ));
            }
            last = Some(seq);
        }
    }
    Ok(())
}

/// Checks that a seq delivered more than once always carries the same record (a re-sent batch is
/// never renumbered) and that each batch's `Idempotency-Key` is `{gateway_id}:{lane}:{first}-{last}`.
pub fn check_seq_stable(batches: &[crate::Batch]) -> Result<(), String> {
    let mut by_seq: BTreeMap<u64, &Value> = BTreeMap::new();
    for b in batches {
        let seqs = b.seqs();
        let want = format!(
            "{}:{}:{}-{}",
            b.gateway_id,
            b.lane,
            seqs.first().copied().unwrap_or_default(),
            seqs.last().copied().unwrap_or_default()
        );
        if b.idempotency_key.as_deref() != Some(want.as_str()) {
            return Err(format!(
                "batch {}: Idempotency-Key {:?}, expected {want:?}",
                b.index, b.idempotency_key
            ));
        }
        if seqs.windows(2).any(|w| w[0] >= w[1]) {
            return Err(format!("batch {}: seqs not increasing: {seqs:?}", b.index));
        }
        for r in &b.records {
            let seq = r["seq"].as_u64().unwrap_or_default();
            if let Some(prev) = by_seq.insert(seq, r)
                && prev != r
            {
                return Err(format!("seq {seq} renumbered: {prev} then {r}"));
            }
        }
    }
    Ok(())
}

/// A workload being published by one [`crate::Publisher`] per client.
#[derive(Debug)]
pub struct Stream {
    pub work: Workload,
    publishers: Vec<crate::Publisher>,
}

impl Stream {
    /// Starts `work` on the broker at `port`, each client paced at `rate_per_s` (if any).
    pub fn start(work: Workload, port: u16, rate_per_s: Option<f64>, label: &str) -> Stream {
        let publishers = (0..work.clients.len())
            .map(|c| {
                let mut o = crate::PublisherOptions::new(
                    port,
                    format!("{label}-{}-{c}", std::process::id()),
                );
                o.rate_per_s = rate_per_s;
                crate::Publisher::spawn(o, work.messages(c))
            })
            .collect();
        Stream { work, publishers }
    }

    /// Messages acknowledged so far, all clients.
    pub fn acked(&self) -> usize {
        self.publishers
            .iter()
            .map(crate::Publisher::acked_count)
            .sum()
    }

    /// Waits until every message is acknowledged; returns (readings of acknowledged messages,
    /// every reading published) — the required and allowed sets of [`compare`].
    pub async fn finish(self, timeout: std::time::Duration) -> (Vec<Expected>, Vec<Expected>) {
        let mut required = Vec::new();
        for (c, p) in self.publishers.into_iter().enumerate() {
            let outcome = p.finish(timeout).await;
            if outcome.reconnects > 0 {
                eprintln!(
                    "publisher {c}: {} reconnects, {} PUBLISH packets for {} messages",
                    outcome.reconnects,
                    outcome.publishes,
                    outcome.acked.len()
                );
            }
            required.extend(self.work.expected_for(c, &outcome.acked));
        }
        (required, self.work.all_expected())
    }
}

/// Waits until every `required` reading has been delivered, then returns the comparison.
pub async fn wait_delivered(
    receiver: &crate::Upstream,
    required: &[Expected],
    allowed: &[Expected],
    timeout: std::time::Duration,
) -> Comparison {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let cmp = compare(
            required,
            allowed,
            &parse_readings(&receiver.delivered_records("readings")),
        );
        if cmp.missing.is_empty() {
            return cmp;
        }
        if std::time::Instant::now() >= deadline {
            panic!(
                "not every acknowledged reading was delivered within {timeout:?}: {}",
                cmp.describe()
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}
