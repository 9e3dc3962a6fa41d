//! Why the forwarder could not be built, or stopped.

use gateway_buffer::BufferError;

/// Errors of [`crate::Forwarder::new`] and [`crate::ForwarderDriver::run`]. Upstream failures are
/// never errors here: they are retried or dead-lettered, and counted.
#[derive(Debug, thiserror::Error)]
pub enum ForwarderError {
    /// A field of [`crate::ForwarderOptions`] is out of range; the message names it.
    #[error("invalid upstream option `{field}`: {reason}")]
    InvalidOptions {
        /// The config key (without the `upstream.` prefix).
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The TLS client for an `https://` URL could not be built (unreadable or mismatched
    /// files, no platform roots).
    #[error("upstream.{key}: {source}", key = .source.key())]
    Tls {
        /// What went wrong, naming the key.
        #[from]
        source: gateway_config::TlsError,
    },
    /// The URL is not `http://` or `https://`, or the bearer token is not a valid header value.
    #[error("invalid upstream `{field}`: {reason}")]
    InvalidRequest {
        /// `url` or `bearer_token_env`.
        field: &'static str,
        /// What was wrong (the token itself is never included).
        reason: String,
    },
    /// An option of a `[[sink]]` other than `[upstream]` (such as the MQTT sink's) is out of
    /// range or not of the required form; the message names the key.
    #[error("invalid sink[].{field}: {reason}")]
    InvalidSinkOptions {
        /// The config key, without the `sink[].` prefix.
        field: &'static str,
        /// What is wrong with it (never a secret).
        reason: String,
    },
    /// The TLS client of a `[[sink]]` with an `mqtts://` URL and no TLS files could not be
    /// built (no platform roots).
    #[error("sink[].{key}: {source}", key = .source.key())]
    SinkTls {
        /// What went wrong, naming the key.
        #[source]
        source: gateway_config::TlsError,
    },
    /// The HTTP client could not be built (TLS backend initialisation).
    #[error("cannot build the upstream HTTP client: {0}")]
    Client(#[source] reqwest::Error),
    /// Reading, acking, or parking a dead letter in the buffer failed. The forwarder stops: every
    /// un-acked record is still in the buffer and is sent after a restart.
    #[error("buffer failed under the forwarder: {0}")]
    Buffer(#[from] BufferError),
}
