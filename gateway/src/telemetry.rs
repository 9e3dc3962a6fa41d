//! Logging set up once for every binary of the workspace: an env filter and text or JSON lines.

use tracing_subscriber::EnvFilter;

/// How log lines are written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines for a terminal or `journalctl`.
    #[default]
    Text,
    /// One JSON object per line, for journald/Loki pipelines.
    Json,
}

/// What is logged when `RUST_LOG` is not set. The embedded broker (rumqttd) logs every client
/// connect and disconnect, some at error level; it stays quiet unless asked for.
pub const DEFAULT_FILTER: &str = "info,rumqttd=off";

/// Installs the global subscriber. `RUST_LOG` overrides `default_filter` (e.g. `info`).
/// Calling it twice is harmless: the second call keeps the first subscriber.
pub fn init(format: LogFormat, default_filter: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.with_target(false).try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
    };
}

/// Lets a repeated log line through at most once per interval and counts the ones held back,
/// so a failure that repeats per message (a broken disk, a full request queue) costs one line
/// per interval instead of thousands per second. One `static` per call site:
///
/// ```
/// use gateway::telemetry::Throttle;
/// use std::time::Duration;
/// static PUBACK_FAILED: Throttle = Throttle::new(Duration::from_secs(10));
/// if let Some(suppressed) = PUBACK_FAILED.allow() {
///     tracing::warn!(suppressed, "could not queue PUBACK");
/// }
/// ```
#[derive(Debug)]
pub struct Throttle {
    every: std::time::Duration,
    /// When a line last went out, and how many were held back since. A std `Mutex`: held for
    /// two assignments, never across an await.
    state: std::sync::Mutex<(Option<std::time::Instant>, u64)>,
}

impl Throttle {
    pub const fn new(every: std::time::Duration) -> Throttle {
        Throttle {
            every,
            state: std::sync::Mutex::new((None, 0)),
        }
    }

    /// `Some(n)` when this occurrence should be logged, `n` being how many were held back since
    /// the last logged one; `None` when it is held back.
    pub fn allow(&self) -> Option<u64> {
        self.allow_at(std::time::Instant::now())
    }

    /// [`Throttle::allow`] at a given time, for tests.
    pub fn allow_at(&self, now: std::time::Instant) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (last, suppressed) = &mut *state;
        match last {
            Some(at) if now.saturating_duration_since(*at) < self.every => {
                *suppressed += 1;
                None
            }
            _ => {
                *last = Some(now);
                Some(std::mem::take(suppressed))
            }
        }
    }
}

/// Whether a panic now ends the process (armed once the buffer is open).
static EXIT_ON_PANIC: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Logs every panic; once [`exit_on_panic`] was called, also ends the process with status 101,
/// so a panicking task never leaves a half-dead daemon behind. Before that (while the buffer is
/// opened), a panic inside sled is caught by the buffer and handled as a damaged database.
pub fn install_panic_hook() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        tracing::error!(panic = %info, "panic");
        default(info);
        if EXIT_ON_PANIC.load(std::sync::atomic::Ordering::SeqCst) {
            eprintln!(
                "gateway: a task panicked; exiting so the service manager restarts a whole process"
            );
            std::process::exit(101);
        }
    }));
}

/// From now on a panic anywhere ends the process (see [`install_panic_hook`]).
pub fn exit_on_panic() {
    EXIT_ON_PANIC.store(true, std::sync::atomic::Ordering::SeqCst);
}
