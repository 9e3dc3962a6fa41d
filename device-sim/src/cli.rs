//! Command-line interface: argument types and their translation into run settings.

use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgGroup, Args, Parser, Subcommand, ValueEnum};

use crate::metric::Metric;
use crate::modbus::{Fault, ModbusConfig};
use crate::mqtt::{Broker, FleetConfig};
use crate::payload::{LineForm, MqttForm};
use crate::scenario::Scenario;
use crate::serial::SerialConfig;

const EXAMPLES: &str = "\
Examples:
  # A greenhouse: 20 devices, one reading set every 5 s, JSON at QoS 1, until Ctrl-C
  device-sim mqtt --broker mqtt://127.0.0.1:1883 --devices 20 --rate-hz 0.2

  # Raise and clear the `overheat` alarm (above 35 °C for 10 s, clears below 33 °C) on dev-0003
  device-sim mqtt --devices 5 --rate-hz 1 --duration-s 90 \\
      --scenario spike:at=20s,for=30s,metric=temperature,to=40,devices=3

  # Mixed payload forms, 10 % garbage, a dropout and a reconnect, with a summary to check
  device-sim mqtt --devices 10 --rate-hz 2 --count 100 --form mix --seed 7 \\
      --scenario garbage:fraction=0.1 --scenario dropout:at=10s,for=15s,devices=2..4 \\
      --scenario reconnect:at=30s,for=5s,devices=5 --summary-json run.json --record-sent sent.jsonl

  # Benchmark: 100 devices over 4 connections as fast as the broker accepts, 10 000 ticks each
  device-sim mqtt --devices 100 --connections 4 --load --count 10000 --summary-json bench.json

  # Serial: create a pty and print its path for the gateway's [[serial]] port
  device-sim serial --pty --devices 3 --rate-hz 1 --checksum --noise 0.05

  # Serial into an existing port (or a file, to record the byte stream)
  device-sim serial --tty /dev/ttyUSB0 --baud 115200 --form json-multi

  # Modbus TCP slaves for units 1..=3 (prints `TCP 127.0.0.1:PORT`), unit 2 silent from 10 s to 30 s
  device-sim modbus --tcp 127.0.0.1:0 --devices 3 --fault silent:unit=2,at=10s,for=20s

  # Modbus RTU slave on a pty (prints `PTY /dev/pts/N`), every 5th answer with a bad CRC
  device-sim modbus --pty --pty-link /tmp/modbus0 --baud 19200 --fault corrupt:unit=1,every=5 \\
      --summary-json modbus.json

Scenarios (repeatable --scenario KIND[:key=value,...]; at/for accept 500ms, 10s, 2m, 1h):
  spike:metric=temperature,to=40   drift:metric=temperature,per_min=0.5   stuck[:metric=humidity]
  dropout   burst:x=10   garbage:fraction=0.2   reconnect (for defaults to 5s)
  all kinds take at=, for= and devices=all|N|A..B (1-based)

Modbus faults (repeatable --fault KIND:unit=U|all[,at=S][,for=S][,key=value]):
  silent   exception:code=C (e.g. 4 device failure, 6 busy)   corrupt:every=K (bad CRC / MBAP)
";

/// Simulated IoT sensor devices over MQTT and serial, for demos, tests and benchmarks.
#[derive(Debug, Parser)]
#[command(name = "device-sim", version, after_help = EXAMPLES)]
pub struct Cli {
    /// What to simulate.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// A fleet of devices publishing to an MQTT broker.
    #[command(after_help = EXAMPLES)]
    Mqtt(MqttArgs),
    /// Devices writing lines to a serial port or a pty.
    #[command(after_help = EXAMPLES)]
    Serial(SerialArgs),
    /// Modbus slaves (RTU on a pty or a serial port, or TCP) fed by the simulated sensors.
    #[command(after_help = EXAMPLES)]
    Modbus(ModbusArgs),
}

/// Settings shared by both transports.
#[derive(Debug, Args)]
pub struct CommonArgs {
    /// Number of devices (dev-0001, dev-0002, ...).
    #[arg(long, default_value_t = 1)]
    pub devices: u32,
    /// Number of the first device.
    #[arg(long, default_value_t = 1)]
    pub first_device: u32,
    /// Reading sets per second per device (each set reads every metric once).
    #[arg(long, default_value_t = 1.0)]
    pub rate_hz: f64,
    /// Reading sets per device, then stop.
    #[arg(long)]
    pub count: Option<u64>,
    /// Stop after this many seconds.
    #[arg(long)]
    pub duration_s: Option<f64>,
    /// Metrics each device reads (comma-separated: temperature, humidity, pressure, battery).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "temperature,humidity,pressure"
    )]
    pub metrics: Vec<Metric>,
    /// Fault or load scenario, repeatable: KIND[:key=value,...] (see below).
    #[arg(long = "scenario", value_name = "SPEC")]
    pub scenarios: Vec<Scenario>,
    /// Seed for every random choice; the same seed gives the same readings.
    #[arg(long, env = "DEVICE_SIM_SEED", default_value_t = 1)]
    pub seed: u64,
    /// Timestamp (ms since the epoch) of the first reading; default: now. Fix it for
    /// byte-identical runs.
    #[arg(long)]
    pub start_ts_ms: Option<i64>,
    /// Write the end-of-run summary as JSON here.
    #[arg(long, value_name = "FILE")]
    pub summary_json: Option<PathBuf>,
    /// Write every reading sent as JSON lines here (device, metric, value, ts, form, topic).
    #[arg(long, value_name = "FILE")]
    pub record_sent: Option<PathBuf>,
    /// Never print the live progress line (it is shown only when stderr is a terminal).
    #[arg(long)]
    pub quiet: bool,
}

impl CommonArgs {
    fn duration(&self) -> Option<Duration> {
        self.duration_s
            .filter(|d| d.is_finite() && *d >= 0.0)
            .map(Duration::from_secs_f64)
    }
}

/// MQTT payload form (WIRE.md §1).
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum FormArg {
    /// `21.5` on sensors/{device}/{metric}.
    Number,
    /// `{"value":21.5,"ts":...,"unit":"C"}` on sensors/{device}/{metric}.
    Json,
    /// `{"ts":...,"temperature":21.5,...}` on sensors/{device}.
    Multi,
    /// SenML pack on sensors/{device}.
    Senml,
    /// A random one of the above per reading set.
    Mix,
}

impl From<FormArg> for MqttForm {
    fn from(f: FormArg) -> Self {
        match f {
            FormArg::Number => MqttForm::Number,
            FormArg::Json => MqttForm::Json,
            FormArg::Multi => MqttForm::Multi,
            FormArg::Senml => MqttForm::Senml,
            FormArg::Mix => MqttForm::Mix,
        }
    }
}

/// Serial line form (WIRE.md §2).
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LineFormArg {
    /// `dev-0001,temperature,21.5,1764081600123`.
    Csv,
    /// `{"device":...,"metric":...,"value":...,"ts":...}`.
    Json,
    /// `{"device":...,"ts":...,"temperature":...,"humidity":...}`.
    JsonMulti,
    /// A random one of the above per reading set.
    Mix,
}

impl From<LineFormArg> for LineForm {
    fn from(f: LineFormArg) -> Self {
        match f {
            LineFormArg::Csv => LineForm::Csv,
            LineFormArg::Json => LineForm::Json,
            LineFormArg::JsonMulti => LineForm::JsonMulti,
            LineFormArg::Mix => LineForm::Mix,
        }
    }
}

/// `device-sim mqtt`.
#[derive(Debug, Args)]
pub struct MqttArgs {
    /// Broker URL: mqtt://HOST[:PORT] or mqtts://HOST[:PORT].
    #[arg(
        long,
        env = "DEVICE_SIM_BROKER",
        default_value = "mqtt://127.0.0.1:1883"
    )]
    pub broker: Broker,
    /// QoS of every publish (0 or 1).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=1))]
    pub qos: u8,
    /// Payload form.
    #[arg(long, value_enum, default_value_t = FormArg::Json)]
    pub form: FormArg,
    /// Topic prefix: topics are PREFIX/{device}/{metric} and PREFIX/{device}.
    #[arg(long, default_value = "sensors")]
    pub topic_prefix: String,
    /// Share K connections among the devices instead of one connection per device.
    #[arg(long, value_name = "K")]
    pub connections: Option<u32>,
    /// Spread the devices' publishes evenly over one period of --rate-hz instead of sending
    /// them all at the same instant (independent devices are not in step). Timestamps stay on
    /// the devices' common schedule.
    #[arg(long, conflicts_with = "load")]
    pub stagger: bool,
    /// Load mode: publish as fast as the broker accepts (or at --target-rate) instead of at
    /// --rate-hz; readings are then 1 ms apart in `ts`.
    #[arg(long)]
    pub load: bool,
    /// Load mode: messages per second across the whole fleet.
    #[arg(long, requires = "load")]
    pub target_rate: Option<f64>,
    /// Messages outstanding per connection (queued plus awaiting PUBACK).
    #[arg(long, default_value_t = 100)]
    pub window: u16,
    /// Seconds to wait at the end for outstanding PUBACKs.
    #[arg(long, default_value_t = 10.0)]
    pub drain_timeout_s: f64,
    /// Client id prefix (ids are PREFIX{device} or PREFIXpool-{k}).
    #[arg(long)]
    pub client_id_prefix: Option<String>,
    /// mqtts:// only: PEM file of the CA certificates to trust instead of the system's roots.
    #[arg(long, value_name = "PEM")]
    pub ca_file: Option<std::path::PathBuf>,
    /// Username sent in CONNECT (e.g. the gateway's embedded_username).
    #[arg(long, requires = "password_env")]
    pub username: Option<String>,
    /// Environment variable holding the password sent with --username.
    #[arg(long, value_name = "VAR", requires = "username")]
    pub password_env: Option<String>,
    #[command(flatten)]
    pub common: CommonArgs,
}

impl MqttArgs {
    /// The fleet settings these arguments describe; fails when `--password-env` names an unset
    /// variable.
    pub fn to_config(&self, progress: bool) -> Result<FleetConfig, String> {
        let c = &self.common;
        let mut cfg = FleetConfig::new(self.broker.clone());
        cfg.devices = c.devices;
        cfg.first_device = c.first_device;
        cfg.rate_hz = c.rate_hz;
        cfg.count = c.count;
        cfg.duration = c.duration();
        cfg.qos = self.qos;
        cfg.form = self.form.into();
        cfg.topic_prefix = self.topic_prefix.clone();
        cfg.metrics = c.metrics.clone();
        cfg.scenarios = c.scenarios.clone();
        cfg.seed = c.seed;
        cfg.start_ts_ms = c.start_ts_ms;
        cfg.connections = self.connections;
        cfg.load = self.load;
        cfg.stagger = self.stagger;
        cfg.target_rate = self.target_rate;
        cfg.window = self.window;
        cfg.drain_timeout = Duration::from_secs_f64(self.drain_timeout_s.max(0.0));
        if let Some(p) = &self.client_id_prefix {
            cfg.client_id_prefix = p.clone();
        }
        cfg.record_sent = c.record_sent.is_some();
        cfg.progress = progress && !c.quiet;
        cfg.ca_file = self.ca_file.clone();
        if let (Some(user), Some(var)) = (&self.username, &self.password_env) {
            let password = std::env::var(var)
                .map_err(|_| format!("--password-env: variable {var} is not set"))?;
            cfg.credentials = Some((user.clone(), gateway_config::Secret::new(password)));
        }
        Ok(cfg)
    }
}

/// `device-sim serial`.
#[derive(Debug, Args)]
pub struct SerialArgs {
    /// Write to this tty (or file).
    #[arg(
        long,
        value_name = "PATH",
        conflicts_with = "pty",
        required_unless_present = "pty"
    )]
    pub tty: Option<PathBuf>,
    /// Create a pty pair and print `PTY <path>` on stdout; point the gateway at that path.
    #[arg(long)]
    pub pty: bool,
    /// With --pty: also create a symlink here to the pty path (replaced if it exists).
    #[arg(long, value_name = "PATH", requires = "pty")]
    pub pty_link: Option<PathBuf>,
    /// With --pty: keep the pty open this many seconds after the last line, so the reader
    /// can drain it.
    #[arg(long, default_value_t = 2.0)]
    pub linger_s: f64,
    /// Baud rate (paces the writes; set on a real tty).
    #[arg(long, default_value_t = 115_200)]
    pub baud: u32,
    /// Line form.
    #[arg(long, value_enum, default_value_t = LineFormArg::Csv)]
    pub form: LineFormArg,
    /// Append a `*HH` XOR checksum to every line.
    #[arg(long)]
    pub checksum: bool,
    /// Fraction of lines with binary noise (0..1).
    #[arg(long, default_value_t = 0.0)]
    pub noise: f64,
    /// End lines with CRLF instead of LF.
    #[arg(long)]
    pub crlf: bool,
    /// Ignore --rate-hz and --baud pacing; write as fast as possible.
    #[arg(long)]
    pub fast: bool,
    #[command(flatten)]
    pub common: CommonArgs,
}

impl SerialArgs {
    /// The serial settings these arguments describe.
    pub fn to_config(&self, progress: bool) -> SerialConfig {
        let c = &self.common;
        SerialConfig {
            devices: c.devices,
            first_device: c.first_device,
            rate_hz: c.rate_hz,
            count: c.count,
            duration: c.duration(),
            form: self.form.into(),
            checksum: self.checksum,
            noise: self.noise.clamp(0.0, 1.0),
            crlf: self.crlf,
            baud: self.baud,
            fast: self.fast,
            metrics: c.metrics.clone(),
            scenarios: c.scenarios.clone(),
            seed: c.seed,
            start_ts_ms: c.start_ts_ms,
            record_sent: c.record_sent.is_some(),
            progress: progress && !c.quiet,
        }
    }
}

/// `device-sim modbus`.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("transport").required(true).args(["tcp", "pty", "tty"])))]
pub struct ModbusArgs {
    /// Serve Modbus TCP on this address (`127.0.0.1:0` picks a port) and print
    /// `TCP 127.0.0.1:PORT` on stdout once listening.
    #[arg(long, value_name = "ADDR")]
    pub tcp: Option<String>,
    /// Serve Modbus RTU on a new pty and print `PTY <path>` on stdout; point the gateway at it.
    #[arg(long)]
    pub pty: bool,
    /// With --pty: also create a symlink here to the pty path (replaced if it exists).
    #[arg(long, value_name = "PATH", requires = "pty")]
    pub pty_link: Option<PathBuf>,
    /// Serve Modbus RTU on this serial port (an RS-485 adapter).
    #[arg(long, value_name = "PATH")]
    pub tty: Option<PathBuf>,
    /// Number of units (slaves): ids FIRST_UNIT..=FIRST_UNIT+DEVICES-1.
    #[arg(long, default_value_t = 1)]
    pub devices: u8,
    /// Id of the first unit (1..=247).
    #[arg(long, default_value_t = 1)]
    pub first_unit: u8,
    /// Reading sets per second per unit (the input registers change this often).
    #[arg(long, default_value_t = 1.0)]
    pub rate_hz: f64,
    /// Stop after this many seconds.
    #[arg(long)]
    pub duration_s: Option<f64>,
    /// Seed of the signal models; the same seed gives the same readings per unit.
    #[arg(long, env = "DEVICE_SIM_SEED", default_value_t = 1)]
    pub seed: u64,
    /// RTU: baud rate (paces the answers; set on a real port).
    #[arg(long, default_value_t = 9600)]
    pub baud: u32,
    /// Fault, repeatable: KIND:unit=U|all[,at=S][,for=S][,key=value] (see below).
    #[arg(long = "fault", value_name = "SPEC")]
    pub faults: Vec<Fault>,
    /// Write the end-of-run counts as JSON here.
    #[arg(long, value_name = "FILE")]
    pub summary_json: Option<PathBuf>,
    /// Never print the live progress line (it is shown only when stderr is a terminal).
    #[arg(long)]
    pub quiet: bool,
}

impl ModbusArgs {
    /// The run settings these arguments describe.
    pub fn to_config(&self, progress: bool) -> ModbusConfig {
        ModbusConfig {
            first_unit: self.first_unit,
            devices: self.devices,
            rate_hz: self.rate_hz,
            duration: self
                .duration_s
                .filter(|d| d.is_finite() && *d >= 0.0)
                .map(Duration::from_secs_f64),
            seed: self.seed,
            baud: self.baud,
            faults: self.faults.clone(),
            progress: progress && !self.quiet,
        }
    }
}
