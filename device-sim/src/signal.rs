//! Signal models: baseline + daily cycle + random walk + noise, deterministic from a seed.
//!
//! ```text
//! x(t) = baseline + amplitude * cos(2π (hour_utc(t) - peak_hour) / 24) + w(t) + n(t)
//! w    : Ornstein-Uhlenbeck walk, dw = -reversion * w dt + walk_sigma * dW
//! n    : white Gaussian noise with noise_sigma
//! ```
//!
//! The walk reverts to zero so a long run stays plausible; the result is clamped to the
//! physical range of the metric. The same seed and the same sequence of timestamps give the same
//! values, whatever the wall clock says.

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::metric::Metric;

/// Parameters of one signal.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SignalParams {
    /// Mean value.
    pub baseline: f64,
    /// Half the peak-to-trough swing of the daily cycle.
    pub daily_amplitude: f64,
    /// Hour of the day (UTC, 0..24) at which the daily cycle peaks.
    pub peak_hour_utc: f64,
    /// Random-walk volatility per √second.
    pub walk_sigma_per_sqrt_s: f64,
    /// Pull of the walk back to zero, per second.
    pub walk_reversion_per_s: f64,
    /// Standard deviation of white measurement noise.
    pub noise_sigma: f64,
    /// Lowest physically possible value.
    pub min: f64,
    /// Highest physically possible value.
    pub max: f64,
}

impl SignalParams {
    /// Greenhouse-like defaults per metric.
    pub fn for_metric(metric: Metric) -> SignalParams {
        match metric {
            Metric::Temperature => SignalParams {
                baseline: 22.0,
                daily_amplitude: 4.0,
                peak_hour_utc: 14.0,
                walk_sigma_per_sqrt_s: 0.02,
                walk_reversion_per_s: 1.0 / 900.0,
                noise_sigma: 0.03,
                min: -40.0,
                max: 80.0,
            },
            Metric::Humidity => SignalParams {
                baseline: 60.0,
                daily_amplitude: 10.0,
                // Relative humidity is lowest when it is warmest.
                peak_hour_utc: 2.0,
                walk_sigma_per_sqrt_s: 0.05,
                walk_reversion_per_s: 1.0 / 900.0,
                noise_sigma: 0.1,
                min: 0.0,
                max: 100.0,
            },
            Metric::Pressure => SignalParams {
                baseline: 1013.25,
                daily_amplitude: 0.6,
                peak_hour_utc: 10.0,
                walk_sigma_per_sqrt_s: 0.005,
                walk_reversion_per_s: 1.0 / 3600.0,
                // Small: the pressure-jump alarm watches |Δp|/Δt, and noise must not trip it.
                noise_sigma: 0.002,
                min: 300.0,
                max: 1100.0,
            },
            Metric::Battery => SignalParams {
                baseline: 80.0,
                daily_amplitude: 5.0,
                peak_hour_utc: 16.0,
                walk_sigma_per_sqrt_s: 0.01,
                walk_reversion_per_s: 1.0 / 3600.0,
                noise_sigma: 0.02,
                min: 0.0,
                max: 100.0,
            },
        }
    }

    /// The same parameters with the baseline moved by `offset` (devices differ a little).
    pub fn with_offset(mut self, offset: f64) -> SignalParams {
        self.baseline += offset;
        self
    }
}

/// A stateful, seeded signal generator.
#[derive(Debug, Clone)]
pub struct Signal {
    params: SignalParams,
    walk: f64,
    last_ts_ms: Option<i64>,
    rng: SmallRng,
}

impl Signal {
    /// A generator with its own random stream.
    pub fn new(params: SignalParams, seed: u64) -> Signal {
        Signal {
            params,
            walk: 0.0,
            last_ts_ms: None,
            rng: SmallRng::seed_from_u64(seed),
        }
    }

    /// The parameters in use.
    pub fn params(&self) -> SignalParams {
        self.params
    }

    /// The noiseless daily cycle at `ts_ms` (ms since the Unix epoch).
    pub fn daily(&self, ts_ms: i64) -> f64 {
        let hour = (ts_ms.rem_euclid(86_400_000)) as f64 / 3_600_000.0;
        self.params.daily_amplitude
            * (2.0 * std::f64::consts::PI * (hour - self.params.peak_hour_utc) / 24.0).cos()
    }

    /// The value at `ts_ms`. Timestamps should not go backwards; if they do, the walk does not
    /// advance.
    pub fn sample(&mut self, ts_ms: i64) -> f64 {
        let dt_s = match self.last_ts_ms {
            Some(last) if ts_ms > last => (ts_ms - last) as f64 / 1000.0,
            _ => 0.0,
        };
        self.last_ts_ms = Some(ts_ms);
        if dt_s > 0.0 {
            let p = &self.params;
            // Exact OU update: mean decays by exp(-θ dt), variance of the innovation follows.
            let decay = (-p.walk_reversion_per_s * dt_s).exp();
            let var = if p.walk_reversion_per_s > 0.0 {
                p.walk_sigma_per_sqrt_s.powi(2) * (1.0 - decay * decay)
                    / (2.0 * p.walk_reversion_per_s)
            } else {
                p.walk_sigma_per_sqrt_s.powi(2) * dt_s
            };
            self.walk = self.walk * decay + var.sqrt() * gaussian(&mut self.rng);
        }
        let noise = self.params.noise_sigma * gaussian(&mut self.rng);
        (self.params.baseline + self.daily(ts_ms) + self.walk + noise)
            .clamp(self.params.min, self.params.max)
    }
}

/// A standard normal sample (Box–Muller), so no extra crate is needed.
pub fn gaussian(rng: &mut impl Rng) -> f64 {
    // 1 - u keeps the logarithm finite: random::<f64>() is in [0, 1).
    let u1: f64 = 1.0 - rng.random::<f64>();
    let u2: f64 = rng.random::<f64>();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

/// Derive an independent seed for stream `stream` of device `device` (SplitMix64 finaliser).
pub fn derive_seed(seed: u64, device: u64, stream: u64) -> u64 {
    let mut z = seed
        ^ device.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ stream.wrapping_mul(0xD1B5_4A32_D192_ED03);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}
