//! Shared test helpers: a real mosquitto (from `test-peers`), and a decoder of the wire forms.
#![allow(dead_code)]

use serde_json::Value;
use test_peers::Mosquitto;

/// A mosquitto broker for one test (anonymous, no persistence, a deep queue), killed on drop;
/// `None` (with a note) when mosquitto is missing outside CI.
pub fn mosquitto() -> Option<Mosquitto> {
    Mosquitto::builder()
        .conf("max_queued_messages 100000")
        .require("device-sim broker test")
}

/// A reading as decoded from the wire: (device, metric, value, ts).
pub type Decoded = (String, String, f64, Option<i64>);

/// Decode an MQTT message per WIRE.md §1 with topic templates `sensors/{device}/{metric}` and
/// `sensors/{device}`. `None` when it is not a valid reading.
pub fn decode_mqtt(topic: &str, payload: &[u8]) -> Option<Vec<Decoded>> {
    let text = std::str::from_utf8(payload).ok()?;
    let parts: Vec<&str> = topic.split('/').collect();
    match parts.as_slice() {
        ["sensors", device, metric] => {
            if let Ok(v) = text.trim().parse::<f64>() {
                return v
                    .is_finite()
                    .then(|| vec![(device.to_string(), metric.to_string(), v, None)]);
            }
            let j: Value = serde_json::from_str(text).ok()?;
            let v = j.get("value")?.as_f64()?;
            let ts = j.get("ts")?.as_i64()?;
            Some(vec![(device.to_string(), metric.to_string(), v, Some(ts))])
        }
        ["sensors", _device] => {
            let j: Value = serde_json::from_str(text).ok()?;
            if let Some(pack) = j.as_array() {
                let bn = pack.first()?.get("bn")?.as_str()?.to_owned();
                let bt = pack.first()?.get("bt")?.as_f64()?;
                let mut out = Vec::new();
                for rec in pack {
                    let name = format!("{bn}{}", rec.get("n")?.as_str()?);
                    let (d, m) = name.split_once('/')?;
                    let t = bt + rec.get("t").and_then(Value::as_f64).unwrap_or(0.0);
                    out.push((
                        d.to_owned(),
                        m.to_owned(),
                        rec.get("v")?.as_f64()?,
                        Some((t * 1000.0).round() as i64),
                    ));
                }
                Some(out)
            } else {
                let obj = j.as_object()?;
                let ts = obj.get("ts")?.as_i64()?;
                let device = parts[1];
                let out: Vec<Decoded> = obj
                    .iter()
                    .filter(|(k, _)| k.as_str() != "ts")
                    .map(|(k, v)| {
                        v.as_f64()
                            .map(|x| (device.to_owned(), k.clone(), x, Some(ts)))
                    })
                    .collect::<Option<_>>()?;
                (!out.is_empty()).then_some(out)
            }
        }
        _ => None,
    }
}

/// Decode a serial line per WIRE.md §2 (checksum verified if present). `None` when dropped.
pub fn decode_line(line: &[u8]) -> Option<Vec<Decoded>> {
    use device_sim::payload::{ChecksumStatus, verify_checksum};
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let body = match verify_checksum(line) {
        ChecksumStatus::Absent(b) | ChecksumStatus::Valid(b) => b,
        ChecksumStatus::Invalid => return None,
    };
    let text = std::str::from_utf8(body).ok()?;
    if text.starts_with('{') {
        let j: Value = serde_json::from_str(text).ok()?;
        let obj = j.as_object()?;
        let device = obj.get("device")?.as_str()?.to_owned();
        let ts = obj.get("ts").and_then(Value::as_i64);
        if let Some(metric) = obj.get("metric") {
            let v = obj.get("value")?.as_f64()?;
            return Some(vec![(device, metric.as_str()?.to_owned(), v, ts)]);
        }
        let out: Vec<Decoded> = obj
            .iter()
            .filter(|(k, _)| !["device", "ts"].contains(&k.as_str()))
            .map(|(k, v)| v.as_f64().map(|x| (device.clone(), k.clone(), x, ts)))
            .collect::<Option<_>>()?;
        return (!out.is_empty()).then_some(out);
    }
    let f: Vec<&str> = text.split(',').collect();
    if !(3..=4).contains(&f.len()) {
        return None;
    }
    let v: f64 = f[2].parse().ok().filter(|x: &f64| x.is_finite())?;
    let ts = match f.get(3) {
        Some(t) => Some(t.parse().ok()?),
        None => None,
    };
    Some(vec![(f[0].to_owned(), f[1].to_owned(), v, ts)])
}
