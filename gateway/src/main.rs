//! `gateway`: the command line. Parses arguments and config, sets up logging, and hands over to
//! the library; everything that does work lives in `gateway::…` so tests drive the same code.

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use gateway::RunOptions;
use gateway::ops::commands;
use gateway::ops::telemetry::{self, LogFormat};
use gateway_config::Config;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

const AFTER_HELP: &str = "\
Examples:
  gateway run --demo                              # embedded broker + demo cloud receiver, ./data
  gateway print-default-config > gateway.toml     # a complete, commented config to start from
  gateway check-config --config gateway.toml      # validate before (re)starting the service
  gateway run --config gateway.toml               # the daemon; SIGTERM/SIGINT stop it cleanly
  gateway status                                  # what a running gateway is doing
  gateway dead-letters list --config gateway.toml # payloads and batches that were set aside

Logs go to stderr; RUST_LOG=debug (or e.g. RUST_LOG=gateway=debug,info) sets the level.
SIGHUP (or POST /reload on the admin API) re-reads the alarm rules.";

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
        /// Configuration file (TOML). Without it: the built-in defaults of
        /// `print-default-config` (embedded broker on 127.0.0.1:1883, data in ./data).
        #[arg(long, short, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Also start a demo receiver on `upstream.url` that logs each batch, standing in for
        /// the cloud. For trying the gateway out, not for production.
        #[arg(long)]
        demo: bool,
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
        /// Environment variable holding the admin token, when the admin API requires one.
        #[arg(long, value_name = "NAME")]
        token_env: Option<String>,
    },
    /// Inspect or replay payloads and batches that were set aside (gateway stopped).
    DeadLetters {
        #[command(subcommand)]
        action: DeadLetterAction,
    },
}

#[derive(Debug, Subcommand)]
enum DeadLetterAction {
    /// List dead letters, oldest first, with their reason, origin and time.
    List {
        /// Configuration file (TOML), for `data_dir`.
        #[arg(long, short, value_name = "FILE")]
        config: PathBuf,
    },
    /// Put dead letters back: upstream batches return to their lane with their original
    /// `seq`s; payloads that decode under the current config become readings.
    Replay {
        /// Configuration file (TOML), for `data_dir` and the decoders.
        #[arg(long, short, value_name = "FILE")]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init(cli.log_format, telemetry::DEFAULT_FILTER);
    telemetry::install_panic_hook();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dispatch(cli.command)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn dispatch(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::CheckConfig { config } => {
            let cfg = load(&config)?;
            println!(
                "{}: ok ({:?} MQTT{}, {} serial port(s), {} alarm rule(s), upstream {}{})",
                config.display(),
                cfg.mqtt.mode,
                tls_summary(cfg.mqtt.tls.as_ref()),
                cfg.serial.len(),
                cfg.alarm.len(),
                gateway_config::redact_url(&cfg.upstream.url),
                tls_summary(cfg.upstream.tls.as_ref()),
            );
            for warning in cfg.cleartext_secrets() {
                println!("warning: {warning}");
            }
        }
        Command::PrintDefaultConfig => print!("{}", gateway_config::default_config_toml()),
        Command::Run { config, demo } => {
            let cfg = match &config {
                Some(path) => load(path)?,
                None => Config::parse(gateway_config::default_config_toml(), "built-in defaults")
                    .context("built-in default config")?,
            };
            let (reload_tx, reload_rx) = tokio::sync::mpsc::channel(1);
            let options = RunOptions {
                config_path: config,
                demo_receiver: demo,
                reload: Some(reload_rx),
            };
            gateway::run(cfg, options, signals(reload_tx)?).await?;
        }
        Command::Status { admin, token_env } => {
            let token = match &token_env {
                Some(name) => Some(
                    std::env::var(name)
                        .with_context(|| format!("--token-env: variable {name} is not set"))?,
                ),
                None => None,
            };
            let status = commands::fetch_status(&admin, token.as_deref()).await?;
            print!("{}", commands::render_status(&status));
        }
        Command::DeadLetters {
            action: DeadLetterAction::List { config },
        } => {
            print!("{}", commands::list_dead_letters(&load(&config)?).await?);
        }
        Command::DeadLetters {
            action: DeadLetterAction::Replay { config },
        } => {
            print!("{}", commands::replay_dead_letters(&load(&config)?).await?);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// How a TLS link was checked, for `check-config`: which roots, whether a client certificate.
fn tls_summary(tls: Option<&gateway_config::TlsClient>) -> String {
    let Some(tls) = tls else {
        return String::new();
    };
    let files = tls.files();
    let roots = match &files.ca_file {
        Some(path) => format!("CA {}", path.display()),
        None => "platform roots".to_owned(),
    };
    let client = match &files.client_cert_file {
        Some(path) => format!(", client certificate {} (key matches)", path.display()),
        None => String::new(),
    };
    format!(" over TLS with {roots}{client}")
}

fn load(path: &Path) -> anyhow::Result<Config> {
    Config::load(path).with_context(|| format!("invalid configuration in {}", path.display()))
}

/// Resolves on the first SIGTERM or SIGINT; a second one exits at once (safe: nothing that is
/// not durable was acknowledged). SIGHUP asks for a reload.
fn signals(reload: tokio::sync::mpsc::Sender<()>) -> anyhow::Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    let mut hup = signal(SignalKind::hangup()).context("SIGHUP handler")?;
    let (first_tx, first_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let mut first = Some(first_tx);
        loop {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
                _ = hup.recv() => { let _ = reload.try_send(()); continue; }
            }
            match first.take() {
                Some(tx) => {
                    tracing::info!("signal received: shutting down (send again to exit at once)");
                    let _ = tx.send(());
                }
                None => {
                    eprintln!("second signal: exiting now");
                    std::process::exit(130);
                }
            }
        }
    });
    Ok(async move {
        let _ = first_rx.await;
    })
}
