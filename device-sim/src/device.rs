//! One simulated device: signal models feed a simulated I2C bus, the real drivers read it, and
//! scenarios bend the result. Transport-independent; [`crate::mqtt`] and [`crate::serial`] both
//! drive it tick by tick.

use std::sync::Arc;

use rand::SeedableRng;
use rand::rngs::SmallRng;

use crate::bus::{Environment, NoDelay, SimBus};
use crate::drivers::bmp280::{self, Bmp280, Oversampling};
use crate::drivers::max17048::Max17048;
use crate::drivers::sht3x::{self, Repeatability, Sht3x};
use crate::metric::{Metric, round_to};
use crate::scenario::{Scenario, ScenarioKind};
use crate::signal::{Signal, SignalParams, derive_seed};

/// Random streams per device, so enabling one feature does not shift another's numbers.
mod stream {
    pub const SIGNAL: u64 = 1;
    pub const FAULT: u64 = 2;
    pub const FORM: u64 = 3;
    pub const OFFSET: u64 = 4;
}

/// The id of device number `index` (1-based): `dev-0001`.
pub fn device_id(index: u32) -> String {
    format!("dev-{index:04}")
}

/// What to do with a tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Send the readings.
    Send,
    /// Send nothing (a `dropout` or `reconnect` window, by scenario index).
    Skip {
        /// Index of the scenario that silenced the device.
        scenario: usize,
    },
    /// Send one malformed message instead of the readings (by scenario index).
    Garbage {
        /// Index of the `garbage` scenario.
        scenario: usize,
    },
}

/// One tick of a device.
#[derive(Debug, Clone, PartialEq)]
pub struct Tick {
    /// 0-based tick number.
    pub seq: u64,
    /// Virtual time since the run began, ms.
    pub elapsed_ms: u64,
    /// Timestamp carried by the readings: strictly increasing per device.
    pub ts_ms: i64,
    /// Readings, rounded to their published precision.
    pub readings: Vec<(Metric, f64)>,
    /// Send, skip, or send garbage.
    pub action: Action,
    /// One entry per reading a scenario changed (spike, drift, stuck), and one per tick sent at
    /// a burst rate, holding the scenario's index.
    pub affected: Vec<usize>,
    /// Set on the first tick of a `reconnect` window: (scenario index, window length ms).
    pub reconnect: Option<(usize, u64)>,
}

/// Settings of one device.
#[derive(Debug, Clone)]
pub struct DeviceConfig {
    /// 1-based device number; the id is `dev-{index:04}`.
    pub index: u32,
    /// Nominal readings per second (each tick reads every metric once).
    pub rate_hz: f64,
    /// Metrics read at every tick.
    pub metrics: Vec<Metric>,
    /// Run seed.
    pub seed: u64,
    /// Timestamp of virtual time zero, ms since the epoch.
    pub start_ts_ms: i64,
    /// Scenarios of the run.
    pub scenarios: Arc<Vec<Scenario>>,
}

/// A simulated device.
#[derive(Debug)]
pub struct DeviceSim {
    cfg: DeviceConfig,
    id: String,
    signals: Vec<(Metric, Signal)>,
    bus: SimBus,
    calibration: bmp280::Calibration,
    elapsed_ms: f64,
    seq: u64,
    last_ts: Option<i64>,
    /// Per scenario: values frozen by `stuck`, and whether the window was open last tick.
    stuck: Vec<[Option<f64>; 4]>,
    was_active: Vec<bool>,
    fault_rng: SmallRng,
    form_rng: SmallRng,
}

impl DeviceSim {
    /// A device; its signals and faults depend only on `cfg` (seed, index, rate, scenarios).
    pub fn new(cfg: DeviceConfig) -> DeviceSim {
        let dev = u64::from(cfg.index);
        let mut offset_rng = SmallRng::seed_from_u64(derive_seed(cfg.seed, dev, stream::OFFSET));
        let signals = cfg
            .metrics
            .iter()
            .map(|&m| {
                // Devices differ a little: ±1 °C, ±3 %RH, ±0.5 hPa, ±10 % around the baseline.
                let spread = match m {
                    Metric::Temperature => 1.0,
                    Metric::Humidity => 3.0,
                    Metric::Pressure => 0.5,
                    Metric::Battery => 10.0,
                };
                let offset = spread * (2.0 * rand::Rng::random::<f64>(&mut offset_rng) - 1.0);
                let params = SignalParams::for_metric(m).with_offset(offset);
                let seed = derive_seed(cfg.seed, dev, stream::SIGNAL + 16 * (m.index() as u64));
                (m, Signal::new(params, seed))
            })
            .collect();
        let mut bus = SimBus::default();
        // Read the trimming once, as firmware does at boot.
        let calibration = Bmp280::new(&mut bus, bmp280::ADDRESS_PRIMARY)
            .map(|d| d.calibration())
            .unwrap_or(bmp280::Calibration::DATASHEET_EXAMPLE);
        let n = cfg.scenarios.len();
        DeviceSim {
            id: device_id(cfg.index),
            signals,
            bus,
            calibration,
            elapsed_ms: 0.0,
            seq: 0,
            last_ts: None,
            stuck: vec![[None; 4]; n],
            was_active: vec![false; n],
            fault_rng: SmallRng::seed_from_u64(derive_seed(cfg.seed, dev, stream::FAULT)),
            form_rng: SmallRng::seed_from_u64(derive_seed(cfg.seed, dev, stream::FORM)),
            cfg,
        }
    }

    /// `dev-0001`, …
    pub fn id(&self) -> &str {
        &self.id
    }

    /// 1-based device number.
    pub fn index(&self) -> u32 {
        self.cfg.index
    }

    /// Ticks produced so far.
    pub fn ticks(&self) -> u64 {
        self.seq
    }

    /// Virtual time (ms since the run began) at which the next tick is due.
    pub fn next_due_ms(&self) -> f64 {
        self.elapsed_ms
    }

    /// Random stream for fault decisions (garbage payloads, noise).
    pub fn fault_rng(&mut self) -> &mut SmallRng {
        &mut self.fault_rng
    }

    /// Random stream for picking forms in `mix` mode.
    pub fn form_rng(&mut self) -> &mut SmallRng {
        &mut self.form_rng
    }

    /// The simulated bus (tests read its registers).
    pub fn bus(&self) -> &SimBus {
        &self.bus
    }

    /// Produce the tick that is due and advance virtual time to the next one.
    pub fn next_tick(&mut self) -> Tick {
        let elapsed = self.elapsed_ms.round() as u64;
        let ts = {
            let t = self.cfg.start_ts_ms + elapsed as i64;
            match self.last_ts {
                Some(last) if t <= last => last + 1,
                _ => t,
            }
        };
        self.last_ts = Some(ts);

        // The physical environment from the signal models.
        let mut values: [Option<f64>; 4] = [None; 4];
        for (m, sig) in &mut self.signals {
            values[m.index()] = Some(sig.sample(ts));
        }

        let scenarios = Arc::clone(&self.cfg.scenarios);
        let mut action = Action::Send;
        let mut affected = Vec::new();
        let mut reconnect = None;
        let mut burst = 1.0f64;
        for (i, sc) in scenarios.iter().enumerate() {
            let active = sc.active(elapsed, self.cfg.index);
            let opened = active && !self.was_active[i];
            self.was_active[i] = active;
            if !active {
                self.stuck[i] = [None; 4];
                continue;
            }
            match &sc.kind {
                ScenarioKind::Spike { metric, to } => {
                    if let Some(v) = values[metric.index()].as_mut() {
                        *v = *to;
                        affected.push(i);
                    }
                }
                ScenarioKind::Drift { metric, per_min } => {
                    if let Some(v) = values[metric.index()].as_mut() {
                        *v += per_min * (elapsed - sc.at_ms) as f64 / 60_000.0;
                        affected.push(i);
                    }
                }
                ScenarioKind::Stuck { metric } => {
                    for m in Metric::ALL {
                        if metric.is_some_and(|x| x != m) {
                            continue;
                        }
                        if let Some(v) = values[m.index()].as_mut() {
                            *v = *self.stuck[i][m.index()].get_or_insert(*v);
                            affected.push(i);
                        }
                    }
                }
                ScenarioKind::Dropout => {
                    if action == Action::Send {
                        action = Action::Skip { scenario: i };
                    }
                }
                ScenarioKind::Reconnect => {
                    if opened {
                        let left = sc
                            .for_ms
                            .unwrap_or(5_000)
                            .saturating_sub(elapsed - sc.at_ms);
                        reconnect = Some((i, left));
                    }
                    if action == Action::Send {
                        action = Action::Skip { scenario: i };
                    }
                }
                ScenarioKind::Burst { factor } => {
                    burst *= factor;
                    affected.push(i);
                }
                ScenarioKind::Garbage { fraction } => {
                    if action == Action::Send
                        && rand::Rng::random_bool(&mut self.fault_rng, *fraction)
                    {
                        action = Action::Garbage { scenario: i };
                    }
                }
            }
        }
        let readings = self.read_sensors(values);
        let tick = Tick {
            seq: self.seq,
            elapsed_ms: elapsed,
            ts_ms: ts,
            readings,
            action,
            affected,
            reconnect,
        };
        self.seq += 1;
        self.elapsed_ms += 1000.0 / (self.cfg.rate_hz * burst);
        tick
    }

    /// Load the environment into the bus and read it back through the drivers, so published
    /// values carry the chips' quantisation.
    fn read_sensors(&mut self, values: [Option<f64>; 4]) -> Vec<(Metric, f64)> {
        let base = Environment::default();
        let env = Environment {
            temperature_c: values[Metric::Temperature.index()].unwrap_or(base.temperature_c),
            humidity_pct: values[Metric::Humidity.index()].unwrap_or(base.humidity_pct),
            // Signals are in hPa; the chip measures Pa.
            pressure_pa: values[Metric::Pressure.index()].map_or(base.pressure_pa, |p| p * 100.0),
            battery_v: base.battery_v,
            battery_pct: values[Metric::Battery.index()].unwrap_or(base.battery_pct),
        };
        self.bus.set_environment(env);
        let mut out = Vec::with_capacity(self.cfg.metrics.len());
        let wants = |m: Metric| values[m.index()].is_some();
        let sht = if wants(Metric::Temperature) || wants(Metric::Humidity) {
            Sht3x::new(&mut self.bus, sht3x::ADDRESS_LOW)
                .measure(Repeatability::High, &mut NoDelay)
                .ok()
        } else {
            None
        };
        let pressure = if wants(Metric::Pressure) {
            Bmp280::with_calibration(&mut self.bus, bmp280::ADDRESS_PRIMARY, self.calibration)
                .measure_forced(Oversampling::X2, Oversampling::X16, &mut NoDelay)
                .ok()
        } else {
            None
        };
        let battery = if wants(Metric::Battery) {
            Max17048::new(&mut self.bus).state_of_charge().ok()
        } else {
            None
        };
        for &m in &self.cfg.metrics {
            let v = match m {
                Metric::Temperature => sht.map(|s| s.temperature_c),
                Metric::Humidity => sht.map(|s| s.humidity_pct),
                Metric::Pressure => pressure.map(|p| p.pressure_pa / 100.0),
                Metric::Battery => battery,
            };
            if let Some(v) = v {
                out.push((m, round_to(v, m.decimals())));
            }
        }
        out
    }
}
