//! Modbus faults: `--fault KIND:unit=U[,at=S][,for=S][,key=value]`, each with a window.
//!
//! | kind | effect | keys |
//! |---|---|---|
//! | `silent` | the unit never answers (TCP: the connection stays open, no bytes) | — |
//! | `exception` | the unit answers every request with exception `code` | `code` (1..=255, required) |
//! | `corrupt` | every K-th normal answer of the unit is corrupted (RTU: bad CRC; TCP: MBAP protocol id 1) | `every` (K ≥ 1, required) |
//!
//! Every kind takes `unit` (required: a unit id or `all`), `at` (start after the run begins,
//! default 0) and `for` (length, default to the end). Durations as in `--scenario`: `500ms`,
//! `10s`, `2m`, `1h`, or a bare number of seconds.
//!
//! When windows overlap on a unit, `silent` wins over `exception`, which wins over `corrupt`;
//! between two faults of one kind the first given wins. Exception answers are never corrupted
//! and do not count towards K.

use std::fmt;
use std::str::FromStr;

use crate::scenario::parse_duration_ms;

/// What a fault does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// No answer at all.
    Silent,
    /// Every request is answered with this exception code.
    Exception {
        /// Exception code, 1..=255.
        code: u8,
    },
    /// Every `every`-th normal answer is corrupted.
    Corrupt {
        /// K ≥ 1.
        every: u64,
    },
}

impl FaultKind {
    /// The kind's name as written in a spec.
    pub fn name(&self) -> &'static str {
        match self {
            FaultKind::Silent => "silent",
            FaultKind::Exception { .. } => "exception",
            FaultKind::Corrupt { .. } => "corrupt",
        }
    }
}

/// The units a fault applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnitSelector {
    /// Every unit served.
    All,
    /// One unit id.
    One(u8),
}

/// One fault with its window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    /// What it does.
    pub kind: FaultKind,
    /// Which units.
    pub unit: UnitSelector,
    /// Start, ms after the run begins.
    pub at_ms: u64,
    /// Length in ms; `None` lasts until the end.
    pub for_ms: Option<u64>,
    /// The spec it was parsed from.
    pub spec: String,
}

impl Fault {
    /// Whether the fault applies to `unit` at `elapsed_ms` after the start.
    pub fn active(&self, unit: u8, elapsed_ms: u64) -> bool {
        let selected = match self.unit {
            UnitSelector::All => true,
            UnitSelector::One(u) => u == unit,
        };
        selected
            && elapsed_ms >= self.at_ms
            && self
                .for_ms
                .is_none_or(|d| elapsed_ms < self.at_ms.saturating_add(d))
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.spec)
    }
}

/// A fault spec that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FaultError {
    /// The kind before `:` is not one of the known kinds.
    #[error("unknown fault kind {0:?} (silent, exception, corrupt)")]
    UnknownKind(String),
    /// A `key=value` pair is missing its `=`.
    #[error("expected key=value, got {0:?}")]
    NotKeyValue(String),
    /// The key is not accepted by this kind.
    #[error("fault {kind} has no key {key:?}")]
    UnknownKey {
        /// Fault kind.
        kind: &'static str,
        /// Offending key.
        key: String,
    },
    /// A key given twice.
    #[error("key {0:?} given twice")]
    DuplicateKey(String),
    /// A key the kind needs is missing.
    #[error("fault {kind} needs {key}=")]
    MissingKey {
        /// Fault kind.
        kind: &'static str,
        /// The missing key.
        key: &'static str,
    },
    /// A value does not parse or is out of range.
    #[error("bad value for {key}: {value:?} ({why})")]
    BadValue {
        /// Key.
        key: String,
        /// Value as written.
        value: String,
        /// Why it was rejected.
        why: &'static str,
    },
}

impl FromStr for Fault {
    type Err = FaultError;

    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let spec = spec.trim();
        let (kind_name, rest) = spec.split_once(':').unwrap_or((spec, ""));
        let mut pairs: Vec<(&str, &str)> = Vec::new();
        for part in rest.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| FaultError::NotKeyValue(part.to_owned()))?;
            let (k, v) = (k.trim(), v.trim());
            if pairs.iter().any(|(seen, _)| *seen == k) {
                return Err(FaultError::DuplicateKey(k.to_owned()));
            }
            pairs.push((k, v));
        }
        let get = |key: &str| pairs.iter().find(|(k, _)| *k == key).map(|(_, v)| *v);
        let bad = |key: &str, value: &str, why| FaultError::BadValue {
            key: key.to_owned(),
            value: value.to_owned(),
            why,
        };
        let (kind, own_key): (FaultKind, Option<&str>) = match kind_name {
            "silent" => (FaultKind::Silent, None),
            "exception" => {
                let v = get("code").ok_or(FaultError::MissingKey {
                    kind: "exception",
                    key: "code",
                })?;
                let code = parse_u8(v)
                    .filter(|c| *c >= 1)
                    .ok_or_else(|| bad("code", v, "an exception code within 1..=255"))?;
                (FaultKind::Exception { code }, Some("code"))
            }
            "corrupt" => {
                let v = get("every").ok_or(FaultError::MissingKey {
                    kind: "corrupt",
                    key: "every",
                })?;
                let every = v
                    .parse::<u64>()
                    .ok()
                    .filter(|k| *k >= 1)
                    .ok_or_else(|| bad("every", v, "a whole number of answers, at least 1"))?;
                (FaultKind::Corrupt { every }, Some("every"))
            }
            other => return Err(FaultError::UnknownKind(other.to_owned())),
        };
        for (k, _) in &pairs {
            if !["unit", "at", "for"].contains(k) && own_key != Some(*k) {
                return Err(FaultError::UnknownKey {
                    kind: kind.name(),
                    key: (*k).to_owned(),
                });
            }
        }
        let unit = match get("unit") {
            None => {
                return Err(FaultError::MissingKey {
                    kind: kind.name(),
                    key: "unit",
                });
            }
            Some("all") => UnitSelector::All,
            Some(v) => UnitSelector::One(
                parse_u8(v).ok_or_else(|| bad("unit", v, "a unit id within 0..=255, or all"))?,
            ),
        };
        let duration = |key: &str| -> Result<Option<u64>, FaultError> {
            get(key)
                .map(|v| parse_duration_ms(v).ok_or_else(|| bad(key, v, "not a duration")))
                .transpose()
        };
        Ok(Fault {
            kind,
            unit,
            at_ms: duration("at")?.unwrap_or(0),
            for_ms: duration("for")?,
            spec: spec.to_owned(),
        })
    }
}

/// A byte in decimal or `0x` hex (exception codes are often written in hex).
fn parse_u8(s: &str) -> Option<u8> {
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u8::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Fault, FaultError> {
        s.parse()
    }

    #[test]
    fn specs_of_the_interface_parse() {
        let f = parse("silent:unit=2,at=10,for=5").unwrap();
        assert_eq!(
            (f.kind, f.unit, f.at_ms, f.for_ms),
            (FaultKind::Silent, UnitSelector::One(2), 10_000, Some(5_000))
        );
        let f = parse("exception:unit=all,code=6").unwrap();
        assert_eq!(
            (f.kind, f.unit, f.at_ms, f.for_ms),
            (FaultKind::Exception { code: 6 }, UnitSelector::All, 0, None)
        );
        let f = parse("corrupt:every=3,unit=1,at=500ms").unwrap();
        assert_eq!((f.kind, f.at_ms), (FaultKind::Corrupt { every: 3 }, 500));
        assert_eq!(
            parse("exception:unit=1,code=0x0B").unwrap().kind,
            FaultKind::Exception { code: 11 }
        );
        assert_eq!(f.to_string(), "corrupt:every=3,unit=1,at=500ms");
    }

    #[test]
    fn bad_specs_say_what_is_wrong() {
        let cases: &[(&str, &str)] = &[
            ("noisy:unit=1", "unknown fault kind \"noisy\""),
            ("silent", "fault silent needs unit="),
            ("silent:unit", "expected key=value, got \"unit\""),
            ("silent:unit=1,code=4", "fault silent has no key \"code\""),
            ("exception:unit=1", "fault exception needs code="),
            ("exception:unit=1,code=0", "bad value for code: \"0\""),
            ("exception:unit=1,code=256", "bad value for code: \"256\""),
            ("corrupt:unit=1,every=0", "bad value for every: \"0\""),
            ("corrupt:unit=1,every=-2", "bad value for every: \"-2\""),
            ("silent:unit=300", "bad value for unit: \"300\""),
            ("silent:unit=1,at=soon", "bad value for at: \"soon\""),
            ("silent:unit=1,for=-1", "bad value for for: \"-1\""),
            ("silent:unit=1,unit=2", "key \"unit\" given twice"),
        ];
        for (spec, want) in cases {
            let err = parse(spec).unwrap_err().to_string();
            assert!(err.starts_with(want), "{spec}: {err}");
        }
    }

    #[test]
    fn windows_open_at_at_and_close_after_for() {
        let f = parse("silent:unit=3,at=2s,for=1s").unwrap();
        assert!(!f.active(3, 1_999));
        assert!(f.active(3, 2_000));
        assert!(f.active(3, 2_999));
        assert!(!f.active(3, 3_000));
        assert!(!f.active(4, 2_500));
        let open = parse("silent:unit=all,at=1s").unwrap();
        assert!(open.active(9, u64::MAX));
        // A window too long to add to its start saturates instead of wrapping.
        let long = parse("silent:unit=all,at=1s,for=1e300h").unwrap();
        assert!(long.active(1, u64::MAX - 1));
    }
}
