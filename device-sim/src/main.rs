//! `device-sim`: parse arguments, set up logging, run the library, write the reports.

use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use device_sim::cli::{Cli, Command, CommonArgs, ModbusArgs};
use device_sim::summary::{SentRecord, Summary, write_records};

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "device_sim=info,warn".into()),
        )
        .init();
    let progress = std::io::stderr().is_terminal();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    match cli.command {
        Command::Mqtt(args) => {
            let cfg = args.to_config(progress).map_err(anyhow::Error::msg)?;
            let report = rt
                .block_on(device_sim::run_fleet(cfg, async {
                    let _ = tokio::signal::ctrl_c().await;
                }))
                .context("running the MQTT fleet")?;
            finish(&args.common, &report.summary, &report.records)
        }
        Command::Serial(args) => {
            let cfg = args.to_config(progress);
            let stop = Arc::new(AtomicBool::new(false));
            {
                let stop = Arc::clone(&stop);
                rt.spawn(async move {
                    let _ = tokio::signal::ctrl_c().await;
                    stop.store(true, Ordering::Relaxed);
                });
            }
            let report = if args.pty {
                let pty = device_sim::open_pty().context("creating a pty")?;
                if let Some(link) = &args.pty_link {
                    let _ = std::fs::remove_file(link);
                    std::os::unix::fs::symlink(pty.path(), link)
                        .with_context(|| format!("linking {}", link.display()))?;
                }
                println!("PTY {}", pty.path().display());
                std::io::stdout().flush()?;
                let mut w = pty.writer()?;
                let report = device_sim::run_serial(&cfg, &mut w, &stop)?;
                // Give the reader time to drain what is still buffered in the pty.
                let linger = Duration::from_secs_f64(args.linger_s.max(0.0));
                let until = std::time::Instant::now() + linger;
                while std::time::Instant::now() < until && !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(50));
                }
                if let Some(link) = &args.pty_link {
                    let _ = std::fs::remove_file(link);
                }
                report
            } else {
                let path = args.tty.as_ref().context("--tty or --pty is required")?;
                let mut f = device_sim::serial::open_tty(path, args.baud)
                    .with_context(|| format!("opening {}", path.display()))?;
                device_sim::run_serial(&cfg, &mut f, &stop)?
            };
            finish(&args.common, &report.summary, &report.records)
        }
        Command::Modbus(args) => rt.block_on(modbus(&args, progress)),
    }
}

/// `device-sim modbus`: open the transport, say where it is, serve until a signal or the
/// duration, write the counts.
async fn modbus(args: &ModbusArgs, progress: bool) -> anyhow::Result<()> {
    use device_sim::modbus::{Transport, run_modbus};
    use tokio::signal::unix::{SignalKind, signal};

    let cfg = args.to_config(progress);
    cfg.validate()?;
    // Listen for signals before announcing, so a stop sent right after the line is seen.
    let mut term = signal(SignalKind::terminate()).context("listening for SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("listening for SIGINT")?;
    let transport = match (&args.tcp, &args.tty) {
        (Some(addr), _) => Transport::tcp(addr).await?,
        (None, Some(path)) => Transport::tty(path, args.baud)?,
        (None, None) => Transport::pty()?,
    };
    let link = args.pty_link.as_ref().zip(transport.path());
    if let Some((link, path)) = link {
        let _ = std::fs::remove_file(link);
        std::os::unix::fs::symlink(path, link)
            .with_context(|| format!("linking {}", link.display()))?;
    }
    println!("{}", transport.announcement());
    std::io::stdout().flush()?;
    let summary = run_modbus(&cfg, transport, async {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
    .await;
    if let Some(link) = &args.pty_link {
        let _ = std::fs::remove_file(link);
    }
    let summary = summary?;
    eprint!("{}", summary.human());
    if let Some(path) = &args.summary_json {
        summary
            .write_json(path)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

fn finish(common: &CommonArgs, summary: &Summary, records: &[SentRecord]) -> anyhow::Result<()> {
    eprint!("{}", summary.human());
    if let Some(path) = &common.summary_json {
        summary
            .write_json(path)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &common.record_sent {
        write_records(path, records).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
