//! Why a config was refused.

use std::fmt;
use std::io;
use std::path::PathBuf;

/// Why a config was refused. Every variant except [`ConfigError::Read`] names the dotted key
/// (`buffer.when_full`, `alarm[1].clear_above`; array indices count from 0) and the 1-based line
/// it is on, and its `Display` says what is allowed, e.g.
/// `buffer.when_full (line 31): expected "drop_oldest" or "block", found "drop_newest"`.
///
/// `Display` does not repeat the file name; the caller knows it and prefixes it (see
/// [`ConfigError::origin`]). Only the first problem found is reported.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The config file could not be read: it does not exist, is not readable, or is not UTF-8.
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        /// The path given to [`crate::Config::load`].
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: io::Error,
    },

    /// The text is not well-formed TOML (unclosed string, duplicate key, bare word as value...),
    /// so no key could be read at all.
    #[error("line {line}, column {column}: invalid TOML: {message}")]
    Syntax {
        /// Name of the source (file path or caller-chosen origin).
        origin: String,
        /// 1-based line of the error.
        line: usize,
        /// 1-based column (in characters) of the error.
        column: usize,
        /// What the TOML parser said.
        message: String,
    },

    /// A key that this version does not know (typo, or a key of another section); unknown keys
    /// are errors, never ignored.
    #[error("{key}{}: unknown key; allowed keys here: {}", At(*line), allowed.join(", "))]
    UnknownKey {
        /// Name of the source.
        origin: String,
        /// Dotted path of the unknown key.
        key: String,
        /// Line of the key.
        line: Option<usize>,
        /// The keys that are allowed in that table.
        allowed: Vec<String>,
    },

    /// A key without default (`serial[].port`, `alarm[].name`) is absent from its table.
    #[error("{key}{}: required key is missing", At(*line))]
    MissingKey {
        /// Name of the source.
        origin: String,
        /// Dotted path of the missing key.
        key: String,
        /// Line of the table that lacks it.
        line: Option<usize>,
    },

    /// A value has the wrong type, is not one of the allowed words of an enum, or is out of
    /// range for its type (found while reading the TOML).
    #[error("{key}{}: {message}", At(*line))]
    WrongValue {
        /// Name of the source.
        origin: String,
        /// Dotted path of the value.
        key: String,
        /// Line of the value.
        line: Option<usize>,
        /// What was expected and what was found.
        message: String,
    },

    /// A value is well-typed but not acceptable: a bad URL, socket address, glob or topic
    /// template, a zero quota, inverted hysteresis, no source at all, a duplicate name...
    /// (found while validating, after reading).
    #[error("{key}{}: {message}", At(*line))]
    Invalid {
        /// Name of the source.
        origin: String,
        /// Dotted path of the offending key.
        key: String,
        /// Line of the key, or of its table when the key is not written.
        line: Option<usize>,
        /// What is wrong and what is allowed.
        message: String,
    },

    /// A `*_env` key names an environment variable that is not set (or not UTF-8, or empty).
    #[error("{key}{}: environment variable {variable} is {problem}", At(*line))]
    MissingSecret {
        /// Name of the source.
        origin: String,
        /// Dotted path of the `*_env` key.
        key: String,
        /// Line of the key.
        line: Option<usize>,
        /// The variable it names.
        variable: String,
        /// `"not set"` or `"empty"`.
        problem: &'static str,
    },
}

impl ConfigError {
    /// Dotted path of the key at fault, when there is one.
    pub fn key(&self) -> Option<&str> {
        match self {
            Self::Read { .. } | Self::Syntax { .. } => None,
            Self::UnknownKey { key, .. }
            | Self::MissingKey { key, .. }
            | Self::WrongValue { key, .. }
            | Self::Invalid { key, .. }
            | Self::MissingSecret { key, .. } => Some(key),
        }
    }

    /// 1-based line of the problem in the source, when known.
    pub fn line(&self) -> Option<usize> {
        match self {
            Self::Read { .. } => None,
            Self::Syntax { line, .. } => Some(*line),
            Self::UnknownKey { line, .. }
            | Self::MissingKey { line, .. }
            | Self::WrongValue { line, .. }
            | Self::Invalid { line, .. }
            | Self::MissingSecret { line, .. } => *line,
        }
    }

    /// The file path or origin name the config came from.
    pub fn origin(&self) -> String {
        match self {
            Self::Read { path, .. } => path.display().to_string(),
            Self::Syntax { origin, .. }
            | Self::UnknownKey { origin, .. }
            | Self::MissingKey { origin, .. }
            | Self::WrongValue { origin, .. }
            | Self::Invalid { origin, .. }
            | Self::MissingSecret { origin, .. } => origin.clone(),
        }
    }
}

/// Formats the line part of a message: ` (line 31)`, or ` (not in file)` for a value that came
/// from a default of a table that is not written at all.
struct At(Option<usize>);

impl fmt::Display for At {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(line) => write!(f, " (line {line})"),
            None => f.write_str(" (not in file)"),
        }
    }
}
