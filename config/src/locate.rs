//! Finding keys and lines: which dotted key a byte offset belongs to, and which line a dotted key
//! is on.
//!
//! serde only gives us a byte span and a message; validation only knows a dotted key. Both are
//! answered from one index built from `toml_edit`'s spanned parse of the same text: every key,
//! value, table header and array element with its dotted path and its spans.

use std::ops::Range;
use toml_edit::{Document, Item, Table, Value};

use crate::error::ConfigError;

/// Every key of a document with its spans.
#[derive(Debug, Default)]
pub(crate) struct SpanIndex {
    entries: Vec<Entry>,
    /// Byte offset of the start of every line, for offset → line.
    line_starts: Vec<usize>,
}

#[derive(Debug)]
struct Entry {
    path: String,
    /// Span of the key, or of the `[table]` / `[[array]]` header.
    key: Option<Range<usize>>,
    /// Span of the value (for plain values, inline tables and arrays).
    value: Option<Range<usize>>,
    /// The value, when it is a string: what a check made before serde's reading needs
    /// (`sink[].kind`).
    string: Option<String>,
}

impl SpanIndex {
    /// Indexes `text`, or returns the syntax error that stops it from being TOML at all.
    pub(crate) fn build(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let mut index = Self {
            entries: Vec::new(),
            line_starts: std::iter::once(0)
                .chain(text.match_indices('\n').map(|(i, _)| i + 1))
                .collect(),
        };
        let doc = Document::parse(text).map_err(|e| {
            let offset = e.span().map_or(0, |s| s.start);
            ConfigError::Syntax {
                origin: origin.to_owned(),
                line: index.line_at(offset),
                column: index.column_at(text, offset),
                message: e.message().trim().to_owned(),
            }
        })?;
        index.walk_table("", doc.as_table());
        Ok(index)
    }

    /// 1-based line of a byte offset.
    pub(crate) fn line_at(&self, offset: usize) -> usize {
        self.line_starts.partition_point(|&start| start <= offset)
    }

    fn column_at(&self, text: &str, offset: usize) -> usize {
        let start = self.line_starts[self.line_at(offset) - 1];
        text.get(start..offset).map_or(1, |s| s.chars().count() + 1)
    }

    /// Dotted path of the most specific key, value or header whose span holds `span`.
    pub(crate) fn path_at(&self, span: &Range<usize>) -> Option<&str> {
        let holds = |r: &Range<usize>| {
            r.start <= span.start && (span.end <= r.end || (r.is_empty() && r.start == span.start))
        };
        self.entries
            .iter()
            .flat_map(|e| {
                [&e.key, &e.value]
                    .into_iter()
                    .flatten()
                    .map(move |r| (e, r))
            })
            .filter(|(_, r)| holds(r))
            .min_by_key(|(_, r)| r.len())
            .map(|(e, _)| e.path.as_str())
    }

    /// Line of the key at `path`; when it is not written, the line of its nearest written
    /// ancestor (the table a default came from); `None` when nothing on the way is written.
    pub(crate) fn line_of(&self, path: &str) -> Option<usize> {
        let mut path = path;
        loop {
            if let Some(e) = self.entries.iter().find(|e| e.path == path) {
                let span = e.key.as_ref().or(e.value.as_ref())?;
                return Some(self.line_at(span.start));
            }
            path = &path[..path.rfind(['.', '['])?];
        }
    }

    /// The string value written at `path`; `None` when there is none or it is not a string.
    pub(crate) fn string_at(&self, path: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|e| e.path == path)
            .and_then(|e| e.string.as_deref())
    }

    fn push(&mut self, path: String, key: Option<Range<usize>>, value: &Value) {
        self.entries.push(Entry {
            path,
            key,
            value: value.span(),
            string: value.as_str().map(str::to_owned),
        });
    }

    fn push_header(&mut self, path: String, span: Option<Range<usize>>) {
        self.entries.push(Entry {
            path,
            key: span,
            value: None,
            string: None,
        });
    }

    fn walk_table(&mut self, prefix: &str, table: &Table) {
        for (name, item) in table.iter() {
            let path = join(prefix, name);
            let key_span = table.key(name).and_then(|k| k.span());
            match item {
                Item::None => {}
                Item::Value(value) => {
                    self.push(path.clone(), key_span, value);
                    self.walk_value(&path, value);
                }
                Item::Table(sub) => {
                    // A dotted-key table (`mqtt.url = ...`) has no header; its key span is it.
                    self.push_header(path.clone(), sub.span().or(key_span));
                    self.walk_table(&path, sub);
                }
                Item::ArrayOfTables(array) => {
                    self.push_header(path.clone(), key_span);
                    for (i, sub) in array.iter().enumerate() {
                        let element = format!("{path}[{i}]");
                        self.push_header(element.clone(), sub.span());
                        self.walk_table(&element, sub);
                    }
                }
            }
        }
    }

    fn walk_value(&mut self, path: &str, value: &Value) {
        match value {
            Value::Array(array) => {
                for (i, element) in array.iter().enumerate() {
                    let element_path = format!("{path}[{i}]");
                    self.push(element_path.clone(), None, element);
                    self.walk_value(&element_path, element);
                }
            }
            Value::InlineTable(table) => {
                for (name, element) in table.iter() {
                    let element_path = join(path, name);
                    let key_span = table.key(name).and_then(|k| k.span());
                    self.push(element_path.clone(), key_span, element);
                    self.walk_value(&element_path, element);
                }
            }
            _ => {}
        }
    }
}

fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_owned()
    } else {
        format!("{prefix}.{name}")
    }
}

/// Turns a serde error from `toml::from_str` into a [`ConfigError`] that names the key and line,
/// rewording serde's messages into "expected …, found …".
pub(crate) fn from_serde(
    index: &SpanIndex,
    text: &str,
    origin: &str,
    err: &toml::de::Error,
) -> ConfigError {
    let message = err.message().trim();
    let origin = origin.to_owned();
    let span = err.span();
    let line = span.as_ref().map(|s| index.line_at(s.start));
    let path = span
        .as_ref()
        .and_then(|s| index.path_at(s))
        .unwrap_or_default()
        .to_owned();
    let quoted = backticked(message);

    if message.starts_with("unknown field `") {
        // The span is the unknown key itself, so `path` already ends in its name.
        return ConfigError::UnknownKey {
            origin,
            key: path,
            line,
            allowed: quoted.into_iter().skip(1).map(str::to_owned).collect(),
        };
    }
    if message.starts_with("missing field `") {
        // The span is the header of the table that lacks the field. Our raw types default every
        // field, so this only happens if that changes; keep the message exact anyway.
        let field = quoted.first().copied().unwrap_or_default();
        return ConfigError::MissingKey {
            origin,
            key: join(&path, field),
            line,
        };
    }
    let message = if message.starts_with("unknown variant `") {
        let found = quoted.first().copied().unwrap_or_default();
        let allowed: Vec<String> = quoted.iter().skip(1).map(|v| format!("\"{v}\"")).collect();
        format!("expected {}, found \"{found}\"", or_list(&allowed))
    } else if let Some(rest) = message
        .strip_prefix("invalid type: ")
        .or_else(|| message.strip_prefix("invalid value: "))
    {
        match rest.rsplit_once(", expected ") {
            Some((found, expected)) => {
                let found = found.replace('`', "");
                format!("expected {}, found {found}", describe_expected(expected))
            }
            None => rest.to_owned(),
        }
    } else if let Some(allowed) = (message == "wanted string or table")
        .then(|| enum_words(&path))
        .flatten()
    {
        // toml's message for a non-string where an enum goes does not say which enum.
        let found = span
            .as_ref()
            .and_then(|s| text.get(s.clone()))
            .unwrap_or("?");
        format!("expected {allowed}, found {found}")
    } else {
        message.to_owned()
    };
    ConfigError::WrongValue {
        origin,
        key: if path.is_empty() {
            "(top level)".to_owned()
        } else {
            path
        },
        line,
        message,
    }
}

/// The `backticked` words of a serde message, in order.
fn backticked(message: &str) -> Vec<&str> {
    message.split('`').skip(1).step_by(2).collect()
}

fn or_list(items: &[String]) -> String {
    match items {
        [] => "nothing".to_owned(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} or {last}", init.join(", ")),
    }
}

/// The allowed words of the enum-valued key at `path` (or of an element of its array).
fn enum_words(path: &str) -> Option<&'static str> {
    let key = path.rsplit('.').next()?;
    Some(match key.split('[').next()? {
        "mode" => r#""embedded", "external" or "disabled""#,
        "when_full" => r#""drop_oldest" or "block""#,
        // A Kafka sink's codecs; `[upstream]` has its own.
        "compression" if path.starts_with("sink[") => r#""none", "gzip", "lz4" or "zstd""#,
        "compression" => r#""gzip" or "none""#,
        "sasl_mechanism" => r#""PLAIN", "SCRAM-SHA-256" or "SCRAM-SHA-512""#,
        "severity" => r#""info", "warning" or "critical""#,
        "lanes" => r#""readings" or "alarms""#,
        "parity" => r#""none", "even" or "odd""#,
        "kind" => r#""holding", "input", "coil" or "discrete""#,
        "type" => r#""u16", "i16", "u32", "i32" or "f32""#,
        "word_order" => r#""big" or "little""#,
        _ => return None,
    })
}

/// Serde names Rust types; a config writer wants TOML words and ranges.
fn describe_expected(expected: &str) -> String {
    match expected {
        "u8" => "an integer from 0 to 255".to_owned(),
        "u16" => "an integer from 0 to 65535".to_owned(),
        "u32" => "an integer from 0 to 4294967295".to_owned(),
        "u64" | "usize" => "a non-negative integer".to_owned(),
        "f64" | "f32" => "a number".to_owned(),
        "a sequence" => "an array".to_owned(),
        "a boolean" => "true or false".to_owned(),
        "path string" => "a path string".to_owned(),
        other if other.starts_with("struct ") => "a table".to_owned(),
        other => other.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str =
        "a = 1\n[t]\nx = [10, 20]\ny = { z = \"q\" }\n\n[[arr]]\nk = 1\n[[arr]]\nk = 2\n";

    fn index() -> SpanIndex {
        SpanIndex::build(TEXT, "t").unwrap()
    }

    #[test]
    fn line_of_finds_keys_array_elements_and_inline_table_keys() {
        let index = index();
        assert_eq!(index.line_of("a"), Some(1));
        assert_eq!(index.line_of("t"), Some(2));
        assert_eq!(index.line_of("t.x[1]"), Some(3));
        assert_eq!(index.line_of("t.y.z"), Some(4));
        assert_eq!(index.line_of("arr[1].k"), Some(9));
    }

    #[test]
    fn line_of_an_unwritten_key_falls_back_to_its_table_header() {
        let index = index();
        assert_eq!(index.line_of("arr[1].name"), Some(8));
        assert_eq!(index.line_of("t.missing"), Some(2));
        assert_eq!(index.line_of("nowhere.at_all"), None);
    }

    #[test]
    fn path_at_picks_the_most_specific_entry() {
        let index = index();
        let offset = TEXT.find("20").unwrap();
        assert_eq!(index.path_at(&(offset..offset + 2)), Some("t.x[1]"));
        let offset = TEXT.find("\"q\"").unwrap();
        assert_eq!(index.path_at(&(offset..offset + 3)), Some("t.y.z"));
    }

    #[test]
    fn string_at_gives_string_values_only() {
        let index = index();
        assert_eq!(index.string_at("t.y.z"), Some("q"));
        assert_eq!(index.string_at("a"), None);
        assert_eq!(index.string_at("arr[0]"), None);
    }

    #[test]
    fn lines_and_columns_count_from_one() {
        let index = index();
        assert_eq!(index.line_at(0), 1);
        assert_eq!(index.line_at(6), 2);
        assert_eq!(index.column_at(TEXT, 8), 3);
    }
}
