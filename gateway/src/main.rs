//! `gateway`: the command line. Parses arguments and config, sets up logging, and hands over to
//! the library; everything that does work lives in `gateway::…` so tests drive the same code.

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use gateway::telemetry::{self, LogFormat};
use gateway_config::Config;
use std::path::PathBuf;
use std::process::ExitCode;

const AFTER_HELP: &str = "\
Examples:
  gateway print-default-config > gateway.toml     # a complete, commented config to start from
  gateway check-config --config gateway.toml      # validate before (re)starting the service
  gateway run --config gateway.toml               # the daemon; SIGTERM/SIGINT stop it cleanly
  gateway status --admin http://127.0.0.1:9100    # what a running gateway is doing
  gateway dead-letters list --config gateway.toml # payloads and batches that were set aside

Logs go to stderr; RUST_LOG=debug (or e.g. RUST_LOG=gateway=debug,info) sets the level.";

/// IoT edge gateway: MQTT and serial readings into a durable on-disk queue, threshold alarms,
/// and batched forwarding to a cloud HTTP endpoint.
#[derive(Debug, Parser)]
#[command(name = "gateway", version, about, after_help = AFTER_HELP)]
struct Cli {
    /// Log line format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway daemon until SIGTERM or SIGINT (then: stop ingest, flush, ack, exit 0).
    Run {
        /// Configuration file (TOML); see `gateway print-default-config`.
        #[arg(long, short, value_name = "FILE")]
        config: PathBuf,
    },
    /// Validate a configuration file: exit 0, or non-zero naming the key and line that is wrong.
    CheckConfig {
        /// Configuration file (TOML).
        #[arg(long, short, value_name = "FILE")]
        config: PathBuf,
    },
    /// Print a complete, commented configuration with every key at its default.
    PrintDefaultConfig,
    /// Print a human summary of a running gateway's /status.
    Status {
        /// Base URL of the gateway's admin listener.
        #[arg(long, value_name = "URL", default_value = "http://127.0.0.1:9100")]
        admin: String,
    },
    /// Inspect or replay payloads and batches that were set aside.
    DeadLetters {
        #[command(subcommand)]
        action: DeadLetterAction,
    },
}

#[derive(Debug, Subcommand)]
enum DeadLetterAction {
    /// List dead letters (oldest first) with their reason, origin and time.
    List {
        /// Configuration file (TOML), for `data_dir`.
        #[arg(long, short, value_name = "FILE")]
        config: PathBuf,
    },
    /// Put dead letters back: upstream batches return to their lane with their original `seq`s.
    Replay {
        /// Configuration file (TOML), for `data_dir`.
        #[arg(long, short, value_name = "FILE")]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init(cli.log_format, "info");
    match dispatch(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn dispatch(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::CheckConfig { config } => {
            let cfg = load(&config)?;
            println!(
                "{}: ok ({} MQTT, {} serial port(s), {} alarm rule(s), upstream {})",
                config.display(),
                cfg.mqtt.mode_name(),
                cfg.serial.len(),
                cfg.alarm.len(),
                cfg.upstream.url
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::PrintDefaultConfig => {
            print!("{}", gateway_config::default_config_toml());
            Ok(ExitCode::SUCCESS)
        }
        Command::Run { config } => not_built("run", &config),
        Command::Status { .. } => not_built("status", &PathBuf::new()),
        Command::DeadLetters { action: DeadLetterAction::List { config } } => not_built("dead-letters list", &config),
        Command::DeadLetters { action: DeadLetterAction::Replay { config } } => not_built("dead-letters replay", &config),
    }
}

fn load(path: &std::path::Path) -> anyhow::Result<Config> {
    Config::load(path).with_context(|| format!("invalid configuration in {}", path.display()))
}

/// Says plainly that a capability is not in this build, instead of pretending to work.
fn not_built(what: &str, _config: &std::path::Path) -> anyhow::Result<ExitCode> {
    eprintln!("gateway {what}: not available in this build yet");
    Ok(ExitCode::from(2))
}
