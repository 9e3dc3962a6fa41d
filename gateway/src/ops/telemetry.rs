//! Logging set up once for every binary of the workspace: an env filter and text or JSON lines.
//!
//! Logs print what devices sent (topics, ids, payload excerpts in rejection details). In text
//! logs every field and message goes through [`Escaped`] (see [`EscapedFields`]), so a `\n` in a
//! device id cannot forge a log line and an ANSI escape cannot drive the terminal of whoever reads
//! the log; JSON logs are escaped by JSON itself. The CLI prints what it shows of devices' data
//! through [`Escaped`] too.

use std::fmt::{self, Write as _};
use tracing::field::{Field, Visit};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::field::{MakeVisitor, VisitFmt, VisitOutput};
use tracing_subscriber::fmt::format::Writer;

/// Whether `c` must not reach a terminal or a text log raw: C0 and C1 control characters (line
/// breaks, ESC, NUL, DEL), the Unicode line and paragraph separators, and the bidirectional
/// formatting characters that reorder what a terminal shows.
pub fn is_unsafe_char(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{2028}' | '\u{2029}' | '\u{200e}' | '\u{200f}' | '\u{061c}'
                | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
        )
}

/// Displays a string with every [`is_unsafe_char`] written as an escape (`\n`, `\r`, `\t`,
/// `\0`, else `\u{1b}`), so it always prints as one line of plain text. Everything else,
/// non-ASCII text included, is shown as is.
///
/// ```
/// use gateway::ops::telemetry::Escaped;
/// assert_eq!(Escaped("dev\n\u{1b}[31m").to_string(), "dev\\n\\u{1b}[31m");
/// ```
#[derive(Debug, Clone, Copy)]
pub struct Escaped<'a>(pub &'a str);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        EscapingWriter(f).write_str(self.0)
    }
}

/// A `fmt::Write` that escapes [`is_unsafe_char`]s on their way through.
struct EscapingWriter<W>(W);

impl<W: fmt::Write> fmt::Write for EscapingWriter<W> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let mut rest = s;
        while let Some(i) = rest.find(is_unsafe_char) {
            self.0.write_str(&rest[..i])?;
            let c = rest[i..].chars().next().unwrap_or_default();
            match c {
                '\n' => self.0.write_str("\\n")?,
                '\r' => self.0.write_str("\\r")?,
                '\t' => self.0.write_str("\\t")?,
                '\0' => self.0.write_str("\\0")?,
                c => write!(self.0, "\\u{{{:x}}}", c as u32)?,
            }
            rest = &rest[i + c.len_utf8()..];
        }
        self.0.write_str(rest)
    }
}

/// Formats the fields of text log lines like the default (`message key=value …`), with every
/// value escaped by [`Escaped`]: string fields are quoted and escaped by `Debug`, and `%` (Display)
/// fields, `?` fields and the message are escaped on their way out.
#[derive(Debug, Clone, Copy, Default)]
pub struct EscapedFields;

impl<'w> MakeVisitor<Writer<'w>> for EscapedFields {
    type Visitor = EscapedVisitor<'w>;

    fn make_visitor(&self, target: Writer<'w>) -> Self::Visitor {
        EscapedVisitor {
            writer: target,
            first: true,
            result: Ok(()),
        }
    }
}

/// The visitor of [`EscapedFields`].
pub struct EscapedVisitor<'w> {
    writer: Writer<'w>,
    first: bool,
    result: fmt::Result,
}

impl fmt::Debug for EscapedVisitor<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EscapedVisitor")
            .field("first", &self.first)
            .finish_non_exhaustive()
    }
}

impl EscapedVisitor<'_> {
    fn separate(&mut self) -> fmt::Result {
        if !std::mem::take(&mut self.first) {
            self.writer.write_char(' ')?;
        }
        Ok(())
    }
}

impl Visit for EscapedVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if self.result.is_err() || field.name().starts_with("log.") {
            return;
        }
        self.result = self.separate().and_then(|()| {
            if field.name() == "message" {
                write!(EscapingWriter(&mut self.writer), "{value}")
            } else {
                // Debug of a str quotes it and escapes control characters; the escaping writer
                // catches the separators and bidi characters Debug lets through.
                write!(
                    EscapingWriter(&mut self.writer),
                    "{}={value:?}",
                    field.name()
                )
            }
        });
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if self.result.is_err() || field.name().starts_with("log.") {
            return;
        }
        self.result = self.separate().and_then(|()| {
            if field.name() == "message" {
                write!(EscapingWriter(&mut self.writer), "{value:?}")
            } else {
                write!(
                    EscapingWriter(&mut self.writer),
                    "{}={value:?}",
                    field.name()
                )
            }
        });
    }
}

impl VisitOutput<fmt::Result> for EscapedVisitor<'_> {
    fn finish(self) -> fmt::Result {
        self.result
    }
}

impl VisitFmt for EscapedVisitor<'_> {
    fn writer(&mut self) -> &mut dyn fmt::Write {
        &mut self.writer
    }
}

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
    // Colour codes only for a terminal: in a file or the journal they are noise, and a log that
    // holds no escape sequence at all is easy to check for injected ones.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder
            .with_target(false)
            .fmt_fields(EscapedFields)
            .try_init(),
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
/// use gateway::ops::telemetry::Throttle;
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[test]
    fn escaped_keeps_text_and_escapes_every_unsafe_character() {
        assert_eq!(
            Escaped("dev-7 température/℃").to_string(),
            "dev-7 température/℃"
        );
        assert_eq!(
            Escaped("a\nb\rc\td\0e\u{1b}[31mf\u{7f}g\u{85}h\u{2028}i\u{202e}j").to_string(),
            "a\\nb\\rc\\td\\0e\\u{1b}[31mf\\u{7f}g\\u{85}h\\u{2028}i\\u{202e}j"
        );
        let out = Escaped("\u{1b}]0;title\u{7}\n\n").to_string();
        assert!(!out.chars().any(is_unsafe_char), "{out:?}");
    }

    /// Collects what a subscriber writes.
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_text_log_line_never_carries_a_raw_control_character_from_a_field() {
        let sink = Sink::default();
        let writer = sink.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .with_target(false)
            .fmt_fields(EscapedFields)
            .finish();
        let hostile = "x\nFORGED INFO fake line \u{1b}[31mred";
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!(
                origin = hostile,
                detail = %hostile,
                debug = ?hostile,
                "rejected {}",
                hostile
            );
        });
        let text = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(!text.trim_end().chars().any(is_unsafe_char), "{text:?}");
        assert!(text.contains("rejected x\\nFORGED"), "{text}");
        assert!(text.contains("detail=x\\nFORGED"), "{text}");
        assert!(text.contains("origin=\"x\\nFORGED"), "{text}");
        assert!(text.contains("\\u{1b}[31mred"), "{text}");
    }
}
