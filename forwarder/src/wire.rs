//! The upstream wire format, WIRE.md §3: one JSON body per batch, one lane per batch.
//!
//! ```json
//! {"gateway_id":"gw-1","lane":"readings","records":[
//!   {"seq":1042,"device":"dev-7","metric":"temperature","value":21.5,"unit":"C","ts":1764081600123,"source":"mqtt"}]}
//! {"gateway_id":"gw-1","lane":"alarms","records":[
//!   {"seq":1043,"alarm":"overheat","state":"raised","severity":"critical","device":"dev-7",
//!    "metric":"temperature","value":36.2,"threshold":35.0,"ts":1764081600123}]}
//! ```
//!
//! Encoding is deterministic: the same records and gateway id always give the same bytes, which
//! is what lets a batch re-read after a restart be byte-for-byte the batch that was in flight.

use std::io::Write;

use bytes::Bytes;
use flate2::{Compression as GzLevel, write::GzEncoder};
use gateway_buffer::{Lane, Record, Stored};
use serde::Serialize;

/// A reading as it appears on the wire (field order is the contract).
#[derive(Serialize)]
struct WireReading<'a> {
    seq: u64,
    device: &'a str,
    metric: &'a str,
    value: f64,
    unit: Option<&'a str>,
    ts: i64,
    source: &'static str,
}

/// An alarm event as it appears on the wire (field order is the contract).
#[derive(Serialize)]
struct WireAlarm<'a> {
    seq: u64,
    alarm: &'a str,
    state: &'static str,
    severity: &'static str,
    device: &'a str,
    metric: &'a str,
    value: f64,
    threshold: Option<f64>,
    ts: i64,
}

/// Appends the JSON object of one record to `out`.
pub fn encode_record(stored: &Stored, out: &mut Vec<u8>) {
    let result = match &stored.record {
        Record::Reading(r) => serde_json::to_writer(
            &mut *out,
            &WireReading {
                seq: stored.seq,
                device: &r.device,
                metric: &r.metric,
                value: r.value,
                unit: r.unit.as_deref(),
                ts: r.ts_ms,
                source: r.source.as_str(),
            },
        ),
        Record::Alarm(a) => serde_json::to_writer(
            &mut *out,
            &WireAlarm {
                seq: stored.seq,
                alarm: &a.alarm,
                state: a.state.as_str(),
                severity: a.severity.as_str(),
                device: &a.device,
                metric: &a.metric,
                value: a.value,
                threshold: a.threshold,
                ts: a.ts_ms,
            },
        ),
    };
    // Writing plain structs of strings and numbers into a Vec cannot fail.
    result.expect("serialising a record into memory cannot fail");
}

/// The bytes of a body before its first record: `{"gateway_id":…,"lane":…,"records":[`.
pub fn envelope_head(gateway_id: &str, lane: Lane) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + gateway_id.len());
    out.extend_from_slice(b"{\"gateway_id\":");
    serde_json::to_writer(&mut out, gateway_id).expect("serialising a str cannot fail");
    out.extend_from_slice(b",\"lane\":\"");
    out.extend_from_slice(lane.as_str().as_bytes());
    out.extend_from_slice(b"\",\"records\":[");
    out
}

/// The bytes of a body after its last record.
pub const ENVELOPE_TAIL: &[u8] = b"]}";

/// Size of the envelope (head + tail) for this gateway and lane.
pub fn envelope_len(gateway_id: &str, lane: Lane) -> usize {
    envelope_head(gateway_id, lane).len() + ENVELOPE_TAIL.len()
}

/// The full JSON body of a batch from already encoded records.
pub fn assemble_body<'a>(
    gateway_id: &str,
    lane: Lane,
    encoded: impl IntoIterator<Item = &'a [u8]>,
    size_hint: usize,
) -> Vec<u8> {
    let mut body = envelope_head(gateway_id, lane);
    body.reserve(size_hint.saturating_sub(body.len()));
    for (i, record) in encoded.into_iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(record);
    }
    body.extend_from_slice(ENVELOPE_TAIL);
    body
}

/// The full JSON body of a batch of records.
pub fn encode_body(gateway_id: &str, lane: Lane, records: &[Stored]) -> Vec<u8> {
    let encoded: Vec<Vec<u8>> = records
        .iter()
        .map(|r| {
            let mut out = Vec::new();
            encode_record(r, &mut out);
            out
        })
        .collect();
    assemble_body(gateway_id, lane, encoded.iter().map(Vec::as_slice), 0)
}

/// `{gateway_id}:{lane}:{first_seq}-{last_seq}`.
pub fn idempotency_key(gateway_id: &str, lane: Lane, first_seq: u64, last_seq: u64) -> String {
    format!("{gateway_id}:{}:{first_seq}-{last_seq}", lane.as_str())
}

/// Gzips a body. Level 1: on a Pi the CPU is scarcer than the uplink's bytes, and JSON of
/// readings already shrinks ~8× at the fastest level.
pub fn gzip(body: &[u8]) -> Bytes {
    let mut encoder = GzEncoder::new(Vec::with_capacity(body.len() / 4), GzLevel::fast());
    encoder
        .write_all(body)
        .expect("gzip into memory cannot fail");
    Bytes::from(encoder.finish().expect("gzip into memory cannot fail"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use gateway_buffer::{AlarmEvent, AlarmState, Reading, Severity, Source};

    fn reading(seq: u64, unit: Option<&str>, source: Source) -> Stored {
        Stored {
            seq,
            record: Record::Reading(Reading {
                device: "dev-7".into(),
                metric: "temperature".into(),
                value: 21.5,
                unit: unit.map(Into::into),
                ts_ms: 1_764_081_600_123,
                source,
            }),
        }
    }

    fn alarm(seq: u64, threshold: Option<f64>) -> Stored {
        Stored {
            seq,
            record: Record::Alarm(AlarmEvent {
                alarm: "overheat".into(),
                state: AlarmState::Raised,
                severity: Severity::Critical,
                device: "dev-7".into(),
                metric: "temperature".into(),
                value: 36.2,
                threshold,
                ts_ms: 1_764_081_600_123,
            }),
        }
    }

    #[test]
    fn a_readings_body_matches_the_wire_contract_byte_for_byte() {
        let body = encode_body(
            "gw-greenhouse-01",
            Lane::Readings,
            &[
                reading(1042, Some("C"), Source::Mqtt),
                reading(1044, None, Source::Serial),
            ],
        );
        assert_eq!(
            String::from_utf8(body).unwrap(),
            concat!(
                r#"{"gateway_id":"gw-greenhouse-01","lane":"readings","records":["#,
                r#"{"seq":1042,"device":"dev-7","metric":"temperature","value":21.5,"unit":"C","ts":1764081600123,"source":"mqtt"},"#,
                r#"{"seq":1044,"device":"dev-7","metric":"temperature","value":21.5,"unit":null,"ts":1764081600123,"source":"serial"}"#,
                "]}"
            )
        );
    }

    #[test]
    fn an_alarms_body_matches_the_wire_contract_byte_for_byte() {
        let body = encode_body(
            "gw-greenhouse-01",
            Lane::Alarms,
            &[alarm(1043, Some(35.0)), alarm(1045, None)],
        );
        assert_eq!(
            String::from_utf8(body).unwrap(),
            concat!(
                r#"{"gateway_id":"gw-greenhouse-01","lane":"alarms","records":["#,
                r#"{"seq":1043,"alarm":"overheat","state":"raised","severity":"critical","device":"dev-7","metric":"temperature","value":36.2,"threshold":35.0,"ts":1764081600123},"#,
                r#"{"seq":1045,"alarm":"overheat","state":"raised","severity":"critical","device":"dev-7","metric":"temperature","value":36.2,"threshold":null,"ts":1764081600123}"#,
                "]}"
            )
        );
    }

    #[test]
    fn the_envelope_length_matches_an_empty_body() {
        let gw = "gw-\"quoted\"";
        assert_eq!(
            envelope_len(gw, Lane::Alarms),
            encode_body(gw, Lane::Alarms, &[]).len()
        );
        let parsed: serde_json::Value =
            serde_json::from_slice(&encode_body(gw, Lane::Alarms, &[])).unwrap();
        assert_eq!(parsed["gateway_id"], gw);
    }

    #[test]
    fn the_idempotency_key_names_gateway_lane_and_seq_range() {
        assert_eq!(
            idempotency_key("gw-1", Lane::Readings, 7, 42),
            "gw-1:readings:7-42"
        );
    }

    #[test]
    fn gzip_round_trips() {
        let body = encode_body("gw", Lane::Readings, &[reading(1, None, Source::Mqtt)]);
        let mut decoded = Vec::new();
        std::io::Read::read_to_end(
            &mut flate2::read::GzDecoder::new(&gzip(&body)[..]),
            &mut decoded,
        )
        .unwrap();
        assert_eq!(decoded, body);
    }
}
