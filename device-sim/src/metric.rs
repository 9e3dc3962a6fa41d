//! The metrics a simulated device reports, their units and the chip each comes from.

use std::fmt;
use std::str::FromStr;

/// One kind of reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Metric {
    /// Air temperature from the SHT3x, °C.
    Temperature,
    /// Relative humidity from the SHT3x, %RH.
    Humidity,
    /// Air pressure from the BMP280, hPa.
    Pressure,
    /// Battery state of charge from the MAX17048, %.
    Battery,
}

impl Metric {
    /// Every metric, in wire order.
    pub const ALL: [Metric; 4] = [
        Metric::Temperature,
        Metric::Humidity,
        Metric::Pressure,
        Metric::Battery,
    ];

    /// The metrics a device reports unless told otherwise.
    pub const DEFAULT: [Metric; 3] = [Metric::Temperature, Metric::Humidity, Metric::Pressure];

    /// Name on topics, in JSON keys and in CSV lines.
    pub fn name(self) -> &'static str {
        match self {
            Metric::Temperature => "temperature",
            Metric::Humidity => "humidity",
            Metric::Pressure => "pressure",
            Metric::Battery => "battery",
        }
    }

    /// Unit in the single-metric JSON form.
    pub fn unit(self) -> &'static str {
        match self {
            Metric::Temperature => "C",
            Metric::Humidity => "%RH",
            Metric::Pressure => "hPa",
            Metric::Battery => "%",
        }
    }

    /// Unit in SenML (RFC 8428 registry; `hPa` is a secondary unit of RFC 8798).
    pub fn senml_unit(self) -> &'static str {
        match self {
            Metric::Temperature => "Cel",
            Metric::Humidity => "%RH",
            Metric::Pressure => "hPa",
            Metric::Battery => "%EL",
        }
    }

    /// Decimal places published (the chips resolve finer; readings are rounded to this).
    pub fn decimals(self) -> i32 {
        2
    }

    /// Position in [`Metric::ALL`], used as a bit index.
    pub fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Metric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A metric name that is not one of [`Metric::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown metric {0:?} (expected temperature, humidity, pressure or battery)")]
pub struct UnknownMetric(pub String);

impl FromStr for Metric {
    type Err = UnknownMetric;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Metric::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| UnknownMetric(s.to_owned()))
    }
}

/// Round to the metric's published precision.
pub fn round_to(value: f64, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals);
    (value * scale).round() / scale
}
