//! `[[modbus]]` and `[[modbus.register]]`: from what was written to [`ModbusConfig`].
//!
//! Checks, each naming its key: a `tcp://host[:port]` or `rtu:///dev/...` URL; line settings
//! (`baud`, `parity`, `stop_bits`) only with `rtu://`, and the same on every entry of one port;
//! an RTU port not also a `[[serial]]` port; a unit id the link can address; positive
//! `poll_ms`, `timeout_ms` and `backoff_max_ms`; device ids and metric names as `[ingest]`
//! allows ids (and no `/`); no device id twice; at least one register per slave, no metric name
//! twice in one; `type` and `word_order` only where they mean something; a value that ends
//! inside the 65536 addresses; finite `scale` (not 0) and `offset`.

use std::collections::HashMap;
use std::path::PathBuf;
use url::Url;

use crate::defaults as d;
use crate::model::*;
use crate::raw::{RawModbus, RawRegister};
use crate::validate::{Ctx, Result, TOPIC_LEVEL_FORBIDDEN};

/// Largest unit id on an RTU bus: 0 is broadcast (no answer) and 248–255 are reserved.
const RTU_MAX_UNIT_ID: u8 = 247;

pub(crate) fn resolve(
    raw: Vec<RawModbus>,
    serial: &[SerialConfig],
    ingest: &IngestConfig,
    cx: &Ctx<'_>,
) -> Result<Vec<ModbusConfig>> {
    let mut devices: HashMap<String, usize> = HashMap::new();
    let mut lines: HashMap<PathBuf, (usize, RtuLine)> = HashMap::new();
    let mut out = Vec::with_capacity(raw.len());
    for (i, raw) in raw.into_iter().enumerate() {
        let key = |k: &str| format!("modbus[{i}].{k}");
        let slave = slave(i, raw, ingest, cx)?;
        if let Some(first) = devices.insert(slave.device.clone(), i) {
            return Err(cx.invalid(
                &key("device"),
                format!(
                    "\"{}\" is already the device of modbus[{first}]; each slave needs its own \
                     device id",
                    slave.device
                ),
            ));
        }
        if let ModbusLink::Rtu(line) = &slave.link {
            if let Some(j) = serial.iter().position(|s| s.port == line.port) {
                return Err(cx.invalid(
                    &key("url"),
                    format!(
                        "{} is already read as serial[{j}]; one port carries either lines or \
                         Modbus RTU",
                        line.port.display()
                    ),
                ));
            }
            match lines.get(&line.port) {
                Some((first, other)) if other != line => {
                    let (what, mine, theirs) = if other.baud != line.baud {
                        ("baud", line.baud.to_string(), other.baud.to_string())
                    } else if other.parity != line.parity {
                        ("parity", line.parity.to_string(), other.parity.to_string())
                    } else {
                        (
                            "stop_bits",
                            line.stop_bits.to_string(),
                            other.stop_bits.to_string(),
                        )
                    };
                    return Err(cx.invalid(
                        &key(what),
                        format!(
                            "{mine} differs from modbus[{first}] ({theirs}) on the same port {}: \
                             slaves on one bus share its line settings",
                            line.port.display()
                        ),
                    ));
                }
                Some(_) => {}
                None => {
                    lines.insert(line.port.clone(), (i, line.clone()));
                }
            }
        }
        out.push(slave);
    }
    Ok(out)
}

fn slave(i: usize, raw: RawModbus, ingest: &IngestConfig, cx: &Ctx<'_>) -> Result<ModbusConfig> {
    let key = |k: &str| format!("modbus[{i}].{k}");
    let device = raw.device.ok_or_else(|| cx.missing(&key("device")))?;
    id(&key("device"), &device, ingest, cx)?;
    let url = raw.url.ok_or_else(|| cx.missing(&key("url")))?;
    let link = link(&key("url"), &url, cx)?;
    let link = match link {
        Link::Tcp { host, port } => {
            for (k, written) in [
                ("baud", raw.baud.is_some()),
                ("parity", raw.parity.is_some()),
                ("stop_bits", raw.stop_bits.is_some()),
            ] {
                if written {
                    return Err(cx.invalid(
                        &key(k),
                        format!("only used with an rtu:// url, but url is \"{url}\""),
                    ));
                }
            }
            ModbusLink::Tcp { host, port }
        }
        Link::Rtu(port) => {
            let stop_bits = raw.stop_bits.unwrap_or(d::MODBUS_STOP_BITS);
            if !matches!(stop_bits, 1 | 2) {
                return Err(cx.invalid(
                    &key("stop_bits"),
                    format!("expected 1 or 2, found {stop_bits}"),
                ));
            }
            ModbusLink::Rtu(RtuLine {
                port,
                baud: cx.positive(&key("baud"), raw.baud.unwrap_or(d::MODBUS_BAUD))?,
                parity: raw.parity.unwrap_or(Parity::None),
                stop_bits,
            })
        }
    };
    let unit_id = raw.unit_id.unwrap_or(d::MODBUS_UNIT_ID);
    if matches!(link, ModbusLink::Rtu(_)) && !(1..=RTU_MAX_UNIT_ID).contains(&unit_id) {
        return Err(cx.invalid(
            &key("unit_id"),
            format!(
                "expected 1 to {RTU_MAX_UNIT_ID} on an RTU bus (0 is broadcast, which no slave \
                 answers; above {RTU_MAX_UNIT_ID} is reserved), found {unit_id}"
            ),
        ));
    }
    let poll_ms = cx.positive(&key("poll_ms"), raw.poll_ms.unwrap_or(d::MODBUS_POLL_MS))?;
    let timeout_ms = cx.positive(
        &key("timeout_ms"),
        raw.timeout_ms.unwrap_or(d::MODBUS_TIMEOUT_MS),
    )?;
    let backoff_max_ms = cx.positive(
        &key("backoff_max_ms"),
        raw.backoff_max_ms.unwrap_or(d::MODBUS_BACKOFF_MAX_MS),
    )?;
    if raw.register.is_empty() {
        return Err(cx.invalid(
            &format!("modbus[{i}]"),
            format!(
                "slave \"{device}\" has no [[modbus.register]]; add at least one, e.g. metric = \
                 \"voltage\", address = 0"
            ),
        ));
    }
    let mut metrics: HashMap<String, usize> = HashMap::new();
    let mut registers = Vec::with_capacity(raw.register.len());
    for (j, raw) in raw.register.into_iter().enumerate() {
        let section = format!("modbus[{i}].register[{j}]");
        let register = register(&section, raw, ingest, cx)?;
        if let Some(first) = metrics.insert(register.metric.clone(), j) {
            return Err(cx.invalid(
                &format!("{section}.metric"),
                format!(
                    "\"{}\" is already the metric of modbus[{i}].register[{first}]; metric names \
                     are unique within a slave",
                    register.metric
                ),
            ));
        }
        registers.push(register);
    }
    Ok(ModbusConfig {
        device,
        link,
        unit_id,
        poll_ms,
        timeout_ms,
        backoff_max_ms,
        registers,
    })
}

fn register(
    section: &str,
    raw: RawRegister,
    ingest: &IngestConfig,
    cx: &Ctx<'_>,
) -> Result<ModbusRegister> {
    let key = |k: &str| format!("{section}.{k}");
    let metric = raw.metric.ok_or_else(|| cx.missing(&key("metric")))?;
    id(&key("metric"), &metric, ingest, cx)?;
    let kind = raw.kind.unwrap_or(RegisterKind::Holding);
    let address = raw.address.ok_or_else(|| cx.missing(&key("address")))?;
    let value = if kind.is_bit() {
        for (k, written) in [
            ("type", raw.r#type.is_some()),
            ("word_order", raw.word_order.is_some()),
        ] {
            if written {
                return Err(cx.invalid(
                    &key(k),
                    format!("not used with kind = \"{kind}\", whose value is one bit (0 or 1)"),
                ));
            }
        }
        RegisterValue::Bit
    } else {
        let data_type = raw.r#type.unwrap_or(DataType::U16);
        match (data_type.registers(), raw.word_order) {
            (1, Some(_)) => {
                return Err(cx.invalid(
                    &key("word_order"),
                    format!(
                        "only used with 32-bit types (u32, i32, f32); type \"{data_type}\" is \
                         one register"
                    ),
                ));
            }
            (1, None) => RegisterValue::Word(data_type),
            (_, order) => RegisterValue::DoubleWord(data_type, order.unwrap_or(WordOrder::Big)),
        }
    };
    let last = u32::from(address) + u32::from(value.span()) - 1;
    if last > u32::from(u16::MAX) {
        return Err(cx.invalid(
            &key("address"),
            format!(
                "a {}-register value at {address} would end at {last}, past the last address \
                 65535",
                value.span()
            ),
        ));
    }
    let scale = raw.scale.unwrap_or(d::MODBUS_SCALE);
    if !scale.is_finite() || scale == 0.0 {
        return Err(cx.invalid(
            &key("scale"),
            format!("expected a finite number other than 0, found {scale}"),
        ));
    }
    let offset = raw.offset.unwrap_or(d::MODBUS_OFFSET);
    if !offset.is_finite() {
        return Err(cx.invalid(
            &key("offset"),
            format!("expected a finite number, found {offset}"),
        ));
    }
    if let Some(unit) = &raw.unit {
        let bad = unit.chars().find(|c| c.is_control());
        if unit.is_empty() || unit.len() > d::MODBUS_UNIT_MAX_BYTES || bad.is_some() {
            return Err(cx.invalid(
                &key("unit"),
                format!(
                    "expected 1 to {} bytes without control characters, found {unit:?} (leave \
                     unit out for none)",
                    d::MODBUS_UNIT_MAX_BYTES
                ),
            ));
        }
    }
    Ok(ModbusRegister {
        metric,
        kind,
        address,
        value,
        scale,
        offset,
        unit: raw.unit,
    })
}

/// A device id or metric name: as `[ingest]` allows ids (1 to `max_id_bytes` bytes, no `+`,
/// `#` or control characters), and no `/` either (it is one level of the local alarm topic).
fn id(key: &str, value: &str, ingest: &IngestConfig, cx: &Ctx<'_>) -> Result<()> {
    cx.name_part(key, value, TOPIC_LEVEL_FORBIDDEN)?;
    if value.len() > ingest.max_id_bytes {
        return Err(cx.invalid(
            key,
            format!(
                "is {} bytes, over ingest.max_id_bytes ({})",
                value.len(),
                ingest.max_id_bytes
            ),
        ));
    }
    Ok(())
}

/// What a `url` names, before the line settings.
enum Link {
    Tcp { host: String, port: u16 },
    Rtu(PathBuf),
}

fn link(key: &str, text: &str, cx: &Ctx<'_>) -> Result<Link> {
    const EXPECTED: &str = "expected \"tcp://host[:port]\" or \"rtu:///dev/ttyUSB0\"";
    let url = Url::parse(text)
        .map_err(|e| cx.invalid(key, format!("{EXPECTED}, found \"{text}\" ({e})")))?;
    let nothing_after = url.query().is_none() && url.fragment().is_none();
    let no_login = url.username().is_empty() && url.password().is_none();
    match url.scheme() {
        "tcp" => {
            let host = url
                .host_str()
                .filter(|h| !h.is_empty())
                .ok_or_else(|| cx.invalid(key, format!("\"{text}\" has no host")))?;
            if !matches!(url.path(), "" | "/") || !nothing_after || !no_login {
                return Err(cx.invalid(
                    key,
                    format!("expected tcp://host[:port] with nothing else, found \"{text}\""),
                ));
            }
            Ok(Link::Tcp {
                host: host
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_owned(),
                port: url.port().unwrap_or(d::MODBUS_TCP_PORT),
            })
        }
        "rtu" => {
            let path = url.path();
            if url.host_str().is_some_and(|h| !h.is_empty())
                || !path.starts_with('/')
                || path.len() < 2
                || !nothing_after
                || !no_login
                || url.port().is_some()
            {
                return Err(cx.invalid(
                    key,
                    format!(
                        "expected rtu:// and an absolute device path, as in \
                         \"rtu:///dev/ttyUSB0\" (three slashes), found \"{text}\""
                    ),
                ));
            }
            Ok(Link::Rtu(PathBuf::from(path)))
        }
        other => Err(cx.invalid(
            key,
            format!("{EXPECTED}, found scheme \"{other}\" in \"{text}\""),
        )),
    }
}
