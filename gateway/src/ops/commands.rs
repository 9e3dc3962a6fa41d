//! The one-shot subcommands: `status` and `dead-letters list|replay`.
//!
//! Both print what devices sent (ids, topics, payload excerpts): every such text goes through
//! [`Escaped`], so a control character in it cannot forge an output line or drive the terminal.

use crate::ops::telemetry::Escaped;
use crate::pipeline::Pipeline;
use crate::sources::decode::{IngestRules, MqttDecoder, SerialDecoder};
use gateway_buffer::{Buffer, DeadPayload, Source};
use gateway_config::Config;
use serde_json::Value;
use std::fmt::Write as _;
use tokio_util::sync::CancellationToken;

/// A one-shot command failed.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// The buffer could not be opened; most often the gateway is running and holds its lock.
    #[error("cannot open the buffer in {dir} (is the gateway running? stop it first): {source}")]
    Buffer {
        dir: String,
        source: gateway_buffer::BufferError,
    },
    /// Reading or replaying a dead letter failed.
    #[error("dead letters: {0}")]
    DeadLetters(String),
    /// The admin API did not answer as expected.
    #[error("admin API at {url}: {reason}")]
    Admin { url: String, reason: String },
}

/// Fetches `/status` from a running gateway.
pub async fn fetch_status(admin: &str, token: Option<&str>) -> Result<Value, CommandError> {
    let url = format!("{}/status", admin.trim_end_matches('/'));
    let err = |reason: String| CommandError::Admin {
        url: url.clone(),
        reason,
    };
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(5))
        .build()
        .map_err(|e| err(e.to_string()))?;
    let mut req = client.get(&url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req
        .send()
        .await
        .map_err(|e| err(format!("no answer ({e}); is the gateway running?")))?;
    if !resp.status().is_success() {
        return Err(err(format!("HTTP {}", resp.status())));
    }
    let body = resp.bytes().await.map_err(|e| err(e.to_string()))?;
    serde_json::from_slice(&body).map_err(|e| err(format!("not JSON: {e}")))
}

/// A string field of `/status`, escaped for the terminal; `?` when absent.
fn text(v: &Value) -> Escaped<'_> {
    Escaped(v.as_str().unwrap_or("?"))
}

/// A terminal summary of `/status`. Every string from it is printed through [`Escaped`].
pub fn render_status(s: &Value) -> String {
    let mut out = String::new();
    let n = |v: &Value| v.as_u64().unwrap_or(0);
    let _ = writeln!(
        out,
        "gateway {} (v{}), up {} s",
        text(&s["gateway_id"]),
        text(&s["version"]),
        n(&s["uptime_s"])
    );
    let i = &s["ingest"];
    let _ = writeln!(
        out,
        "ingest:    {} readings over MQTT ({}), {} over serial, {} over Modbus; {} rejected{}",
        n(&i["readings"]["mqtt"]),
        if i["mqtt_connected"].as_bool() == Some(true) {
            "connected"
        } else {
            "not connected"
        },
        n(&i["readings"]["serial"]),
        n(&i["readings"]["modbus"]),
        n(&i["rejected_total"]),
        i["ack_latency_ms"]["p99"]
            .as_f64()
            .map_or(String::new(), |ms| format!(
                "; PUBACK p99 ≤ {ms} ms{}",
                s["buffer"]["commit_ms"]["flush"]["p99"]
                    .as_f64()
                    .map_or(String::new(), |f| format!(" (disk flush p99 ≤ {f} ms)"))
            ))
    );
    for lane in ["alarms", "readings"] {
        let l = &s["buffer"]["lanes"][lane];
        let age = l["oldest_age_s"]
            .as_f64()
            .map_or("-".to_owned(), |a| format!("{a:.1} s"));
        let _ = writeln!(
            out,
            "buffer:    {lane:<8} {} records, {} bytes, oldest {age}; dropped {}, expired {}",
            n(&l["records"]),
            n(&l["bytes"]),
            n(&l["dropped"]),
            n(&l["expired"])
        );
    }
    let u = &s["upstream"];
    let _ = writeln!(
        out,
        "upstream:  {} (backoff {} ms); {} batches sent, {} readings and {} alarms delivered, {} retries{}",
        text(&u["state"]),
        n(&u["backoff_ms"]),
        n(&u["batches_sent"]),
        n(&u["records_delivered"]["readings"]),
        n(&u["records_delivered"]["alarms"]),
        n(&u["retries"]),
        u["last_error"]
            .as_str()
            .map(|e| format!("; last error: {}", Escaped(e)))
            .unwrap_or_default()
    );
    // `[upstream]` is the line above; every `[[sink]]` gets one of its own.
    for k in s["sinks"].as_array().into_iter().flatten().skip(1) {
        let _ = writeln!(
            out,
            "sink:      {} ({}): {}; {} readings and {} alarms delivered, {} readings and {} alarms lost to the buffer's limits{}",
            text(&k["name"]),
            text(&k["kind"]),
            text(&k["state"]),
            n(&k["records_delivered"]["readings"]),
            n(&k["records_delivered"]["alarms"]),
            n(&k["dropped"]["readings"]) + n(&k["expired"]["readings"]),
            n(&k["dropped"]["alarms"]) + n(&k["expired"]["alarms"]),
            k["last_error"]
                .as_str()
                .map(|e| format!("; last error: {}", Escaped(e)))
                .unwrap_or_default()
        );
    }
    for m in s["modbus"].as_array().into_iter().flatten() {
        let errors: Vec<String> = m["errors"]
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(_, v)| n(v) > 0)
            .map(|(reason, v)| format!("{} {}", n(v), Escaped(reason)))
            .collect();
        let _ = writeln!(
            out,
            "modbus:    {} ({} unit {}): {}; {} polls, {} complete{}{}{}",
            text(&m["device"]),
            text(&m["url"]),
            n(&m["unit_id"]),
            text(&m["state"]),
            n(&m["polls"]),
            n(&m["polls_complete"]),
            m["last_poll_latency_ms"]
                .as_f64()
                .map(|ms| format!(", last poll {ms:.1} ms"))
                .unwrap_or_default(),
            if errors.is_empty() {
                String::new()
            } else {
                format!("; errors: {}", errors.join(", "))
            },
            match n(&m["backoff_ms"]) {
                0 => String::new(),
                ms => format!("; next try in {ms} ms"),
            },
        );
    }
    let _ = writeln!(
        out,
        "dead:      {} dead letters",
        n(&s["buffer"]["dead_letters"]["count"])
    );
    let active = s["alarms"]["active"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let _ = writeln!(out, "alarms:    {} active", active.len());
    for a in active {
        let _ = writeln!(
            out,
            "  {:<9} {} on {}/{} since {}",
            text(&a["severity"]).to_string(),
            text(&a["alarm"]),
            text(&a["device"]),
            text(&a["metric"]),
            Escaped(&a["since_ms"].to_string())
        );
    }
    out
}

/// Opens the buffer of a stopped gateway and runs `f` with it, committer running.
async fn with_buffer<T>(
    config: &Config,
    f: impl AsyncFnOnce(&Buffer) -> Result<T, CommandError>,
) -> Result<T, CommandError> {
    let opts = crate::buffer::options(config);
    let dir = opts.dir.display().to_string();
    let (buffer, committer) =
        Buffer::open(opts).map_err(|source| CommandError::Buffer { dir, source })?;
    let stop = CancellationToken::new();
    let task = tokio::spawn(committer.run(stop.clone()));
    let result = f(&buffer).await;
    let _ = buffer.flush().await;
    stop.cancel();
    let _ = task.await;
    result
}

/// `dead-letters list`: one line per dead letter, oldest first.
pub async fn list_dead_letters(config: &Config) -> Result<String, CommandError> {
    with_buffer(config, async |buffer: &Buffer| {
        let mut out = String::new();
        let mut after = None;
        loop {
            let page = buffer
                .dead_letters()
                .list(500, after)
                .map_err(|e| CommandError::DeadLetters(e.to_string()))?;
            let Some(last) = page.last() else { break };
            after = Some(last.id);
            for d in &page {
                out.push_str(&dead_letter_line(d));
            }
        }
        if out.is_empty() {
            out.push_str("no dead letters\n");
        }
        Ok(out)
    })
    .await
}

/// One line of `dead-letters list`; reason, origin, payload and detail escaped.
pub fn dead_letter_line(d: &gateway_buffer::DeadLetter) -> String {
    let what = match &d.payload {
        DeadPayload::Raw(bytes) => format!("{} bytes: {}", bytes.len(), preview(bytes)),
        DeadPayload::Records { lane, records } => format!(
            "{} {} records, seq {}-{}",
            records.len(),
            lane.as_str(),
            records.first().map_or(0, |r| r.seq),
            records.last().map_or(0, |r| r.seq)
        ),
    };
    format!(
        "{:>6}  {}  {:<16} {:<28} {}  ({})\n",
        d.id,
        iso(d.received_ms),
        Escaped(&d.reason).to_string(),
        Escaped(&d.origin).to_string(),
        what,
        Escaped(&d.detail)
    )
}

/// `dead-letters replay`: upstream batches go back on their lane with their original seqs;
/// payloads are decoded again with the current config and, if they now read, ingested like any
/// reading: through the alarm rules (with the engine state the gateway saved, which is saved
/// again after), alarm events first. What still does not read stays a dead letter.
pub async fn replay_dead_letters(config: &Config) -> Result<String, CommandError> {
    let mqtt = MqttDecoder::new(&config.mqtt.topic_templates, config.mqtt.max_payload_bytes)
        .with_rules(IngestRules::new(&config.ingest));
    with_buffer(config, async |buffer: &Buffer| {
        let (pipeline, metrics) = Pipeline::from_config(config, buffer);
        let (mut requeued, mut appended, mut kept, mut orphaned) = (0u64, 0u64, 0u64, 0u64);
        let err = |e: gateway_buffer::BufferError| CommandError::DeadLetters(e.to_string());
        let all = buffer.dead_letters().list(usize::MAX, None).map_err(err)?;
        for d in all {
            match &d.payload {
                // A refused batch goes back to the sink that refused it (its origin), and to
                // no other: the other sinks had it. A sink no longer configured keeps it.
                DeadPayload::Records { lane, records } => {
                    match buffer.requeue(&d.origin, *lane, records.clone()) {
                        Ok(()) => {
                            buffer.dead_letters().take(d.id).map_err(err)?;
                            requeued += records.len() as u64;
                        }
                        Err(gateway_buffer::BufferError::UnknownConsumer(_)) => orphaned += 1,
                        Err(e) => return Err(err(e)),
                    }
                }
                DeadPayload::Raw(bytes) => {
                    let serial = config.serial.iter().find(|p| p.port.display().to_string() == d.origin);
                    let decoded = match serial {
                        Some(port) => SerialDecoder::new(port.device.clone()).with_rules(IngestRules::new(&config.ingest)).decode(bytes, d.received_ms),
                        None => mqtt.decode(&d.origin, bytes, d.received_ms),
                    };
                    match decoded {
                        Ok(readings) => {
                            let n = readings.len() as u64;
                            let source = if serial.is_some() { Source::Serial } else { Source::Mqtt };
                            let readings = readings.into_iter().map(|mut r| {
                                r.source = source;
                                r
                            });
                            pipeline
                                .ingest(source, readings.collect(), &CancellationToken::new())
                                .await
                                .map_err(|e| CommandError::DeadLetters(e.to_string()))?;
                            buffer.dead_letters().take(d.id).map_err(err)?;
                            appended += n;
                        }
                        Err(_) => kept += 1,
                    }
                }
            }
        }
        pipeline.save_engine_state();
        let alarms = metrics.alarm_events.load(std::sync::atomic::Ordering::Relaxed);
        let mut text = format!(
            "replayed: {requeued} upstream records back on their lanes (original seqs), {appended} readings from payloads that now decode ({alarms} alarm events raised or cleared by them); {kept} dead letters still unreadable and kept\n"
        );
        if orphaned > 0 {
            text.push_str(&format!(
                "kept: {orphaned} refused batches of sinks no longer configured (see `gateway dead-letters list` for their origin)\n"
            ));
        }
        Ok(text)
    })
    .await
}

/// The first 60 bytes of a payload, as text with escapes.
fn preview(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(60)]);
    let text = Escaped(&text).to_string();
    if bytes.len() > 60 {
        format!("{text}…")
    } else {
        text
    }
}

fn iso(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| ms.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::telemetry::is_unsafe_char;
    use serde_json::json;

    const HOSTILE: &str = "dev\n2026-01-01T00:00:00Z INFO forged \u{1b}[31mred\u{7}";

    fn assert_clean(out: &str, lines: usize) {
        assert_eq!(out.lines().count(), lines, "{out}");
        assert!(
            !out.chars().any(|c| c != '\n' && is_unsafe_char(c)),
            "{out:?}"
        );
        assert!(out.lines().all(|l| !l.starts_with("2026-01-01")), "{out}");
        assert!(out.contains("dev\\n2026-01-01"), "{out}");
    }

    #[test]
    fn status_output_escapes_every_string_from_the_gateway() {
        let status = json!({
            "gateway_id": HOSTILE, "version": HOSTILE, "uptime_s": 3,
            "upstream": {"state": HOSTILE, "last_error": HOSTILE},
            "sinks": [
                {"name": "upstream"},
                {"name": HOSTILE, "kind": HOSTILE, "state": HOSTILE, "last_error": HOSTILE},
            ],
            "alarms": {"active": [{
                "severity": HOSTILE, "alarm": HOSTILE, "device": HOSTILE, "metric": HOSTILE,
                "since_ms": HOSTILE
            }]}
        });
        assert_clean(&render_status(&status), 9);
    }

    #[test]
    fn the_ingest_line_tells_the_puback_wait_and_the_disk_flush_apart() {
        let mut status = json!({
            "ingest": {"ack_latency_ms": {"p99": 250.0}},
            "buffer": {"commit_ms": {"flush": {"p99": 2.5}}},
        });
        let out = render_status(&status);
        assert!(
            out.contains("; PUBACK p99 ≤ 250 ms (disk flush p99 ≤ 2.5 ms)"),
            "{out}"
        );
        status["buffer"]["commit_ms"]["flush"]["p99"] = Value::Null;
        let out = render_status(&status);
        assert!(out.contains("; PUBACK p99 ≤ 250 ms\n"), "{out}");
    }

    #[test]
    fn a_dead_letter_line_escapes_origin_detail_and_payload() {
        let d = gateway_buffer::DeadLetter {
            id: 7,
            received_ms: 0,
            reason: "bad_id".into(),
            origin: HOSTILE.into(),
            detail: HOSTILE.into(),
            payload: DeadPayload::Raw(HOSTILE.as_bytes().to_vec()),
        };
        let line = dead_letter_line(&d);
        assert_clean(&line, 1);
        assert_eq!(line.matches("\\u{1b}[31m").count(), 3, "{line}");
    }
}
