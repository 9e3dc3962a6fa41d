//! What the buffer stores: readings and alarm events, and the lane each belongs to.
//!
//! These types are serialised with postcard on disk. They carry no JSON wire encoding on
//! purpose: the forwarder owns the upstream format (WIRE.md §3) and maps these fields onto it.

use serde::{Deserialize, Serialize};

/// A lane is an independent queue inside the buffer, with its own quota and its own sled tree.
///
/// Alarms are never evicted to make room for readings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Lane {
    /// Alarm raise/clear events: small, rare, and sent first.
    Alarms,
    /// Sensor readings: the bulk of the traffic.
    Readings,
}

impl Lane {
    /// Every lane, alarms first (the order the forwarder sends them in).
    pub const ALL: [Lane; 2] = [Lane::Alarms, Lane::Readings];

    /// The lane's name on the wire and in metrics: `"alarms"` or `"readings"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Lane::Alarms => "alarms",
            Lane::Readings => "readings",
        }
    }

    /// Position in [`Lane::ALL`]; used to index per-lane arrays.
    pub(crate) fn index(self) -> usize {
        match self {
            Lane::Alarms => 0,
            Lane::Readings => 1,
        }
    }

    /// One byte that names the lane inside composite keys.
    pub(crate) fn tag(self) -> u8 {
        match self {
            Lane::Alarms => b'a',
            Lane::Readings => b'r',
        }
    }
}

impl std::fmt::Display for Lane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a reading came in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Source {
    /// An MQTT publish.
    Mqtt,
    /// A line on a serial port.
    Serial,
    /// A poll of a Modbus slave. (Last, so records stored before it existed decode as before.)
    Modbus,
}

impl Source {
    /// `"mqtt"`, `"serial"` or `"modbus"`, as on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Mqtt => "mqtt",
            Source::Serial => "serial",
            Source::Modbus => "modbus",
        }
    }
}

/// One measurement of one metric of one device.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Reading {
    /// Device name, e.g. `dev-7`.
    pub device: String,
    /// Metric name, e.g. `temperature`.
    pub metric: String,
    /// The measured value (finite; ingest rejects the rest).
    pub value: f64,
    /// Unit, if the device sent one.
    pub unit: Option<String>,
    /// Milliseconds since the Unix epoch, UTC.
    pub ts_ms: i64,
    /// Where it came in.
    pub source: Source,
}

/// Whether an alarm went up or came down.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum AlarmState {
    /// The condition started.
    Raised,
    /// The condition ended.
    Cleared,
}

impl AlarmState {
    /// `"raised"` or `"cleared"`, as on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            AlarmState::Raised => "raised",
            AlarmState::Cleared => "cleared",
        }
    }
}

/// How bad an alarm is: set by its rule (`alarm[].severity` in the gateway's config, which uses
/// this type) and copied into its events.
///
/// Stored in every alarm record by variant index (postcard): never reorder or insert variants,
/// only append. The names (`"info"`, `"warning"`, `"critical"`) are those of the config file
/// and the wire; postcard does not store them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// `"info"`: worth knowing.
    Info,
    /// `"warning"` (the config's default): worth looking at.
    Warning,
    /// `"critical"`: act now.
    Critical,
}

impl Severity {
    /// `"info"`, `"warning"` or `"critical"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }
}

impl std::fmt::Display for Severity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One alarm transition.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AlarmEvent {
    /// Rule name, e.g. `overheat`.
    pub alarm: String,
    /// Raised or cleared.
    pub state: AlarmState,
    /// How bad.
    pub severity: Severity,
    /// The device whose reading triggered it.
    pub device: String,
    /// The metric that triggered it.
    pub metric: String,
    /// The value that triggered it.
    pub value: f64,
    /// The threshold crossed, if the rule has one.
    pub threshold: Option<f64>,
    /// Milliseconds since the Unix epoch, UTC.
    pub ts_ms: i64,
}

/// Anything the buffer stores.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Record {
    /// Goes to [`Lane::Readings`].
    Reading(Reading),
    /// Goes to [`Lane::Alarms`].
    Alarm(AlarmEvent),
}

impl Record {
    /// The lane this record is queued in.
    pub fn lane(&self) -> Lane {
        match self {
            Record::Reading(_) => Lane::Readings,
            Record::Alarm(_) => Lane::Alarms,
        }
    }

    /// An upper bound of the record's encoded (postcard) size in bytes, without encoding it:
    /// its strings plus room for every number, length prefix and tag.
    pub fn encoded_len_bound(&self) -> usize {
        /// Tags, varint lengths, f64s and i64 varints, with margin.
        const FIXED: usize = 96;
        let strings = match self {
            Record::Reading(r) => {
                r.device.len() + r.metric.len() + r.unit.as_ref().map_or(0, String::len)
            }
            Record::Alarm(a) => a.alarm.len() + a.device.len() + a.metric.len(),
        };
        strings.saturating_add(FIXED)
    }

    /// The record's own timestamp (device or gateway time), ms since the epoch.
    pub fn ts_ms(&self) -> i64 {
        match self {
            Record::Reading(r) => r.ts_ms,
            Record::Alarm(a) => a.ts_ms,
        }
    }
}

impl From<Reading> for Record {
    fn from(r: Reading) -> Self {
        Record::Reading(r)
    }
}

impl From<AlarmEvent> for Record {
    fn from(a: AlarmEvent) -> Self {
        Record::Alarm(a)
    }
}

/// A record together with the sequence number it was given when it became durable.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Stored {
    /// Unique per buffer across both lanes, increasing in order of durability, never reused.
    pub seq: u64,
    /// The record.
    pub record: Record,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An alarm record as postcard writes it into a block: enum variants by index, so renaming
    /// a variant keeps the format, reordering or inserting one does not.
    fn alarm(severity: Severity) -> Record {
        Record::Alarm(AlarmEvent {
            alarm: "a".into(),
            state: AlarmState::Raised,
            severity,
            device: "d".into(),
            metric: "m".into(),
            value: 1.0,
            threshold: None,
            ts_ms: 1,
        })
    }

    #[test]
    fn the_stored_encoding_of_every_severity_is_the_one_existing_databases_hold() {
        for (severity, index) in [
            (Severity::Info, 0x00),
            (Severity::Warning, 0x01),
            (Severity::Critical, 0x02),
        ] {
            let bytes = [
                0x01, // Record::Alarm
                0x01, b'a',  // alarm
                0x00,  // AlarmState::Raised
                index, // severity
                0x01, b'd', // device
                0x01, b'm', // metric
                0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xf0, 0x3f, // value 1.0
                0x00, // no threshold
                0x02, // ts_ms 1, zigzag
            ];
            let record = alarm(severity);
            assert_eq!(postcard::to_stdvec(&record).unwrap(), bytes, "{severity:?}");
            assert_eq!(postcard::from_bytes::<Record>(&bytes).unwrap(), record);
        }
    }
}
