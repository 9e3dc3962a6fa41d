//! URLs as they may be shown: in logs, `/status`, `check-config` output and error messages.
//!
//! A cloud endpoint's URL can carry a secret: an API key in the query string
//! (`?code=…`, `?sig=…`) or credentials before the host. Wherever the gateway prints a URL it
//! prints [`redact_url`] of it: user and password removed, every query value replaced.

use url::Url;

/// What replaces a hidden part.
pub const REDACTED: &str = "***";

/// The URL without credentials, and with each query parameter's value replaced by
/// [`REDACTED`] (names stay, so an operator can still tell which parameters were sent). The
/// fragment is dropped: it never leaves the process.
pub fn redact_url(url: &Url) -> String {
    let mut shown = url.clone();
    // Both fail only for URLs that cannot have credentials (`data:`…), which have none to hide.
    let _ = shown.set_username("");
    let _ = shown.set_password(None);
    shown.set_fragment(None);
    if let Some(query) = url.query() {
        // A parameter without `=` may be the key itself (`?S3CRETKEY`): then hide it all.
        let bare_key = query
            .split('&')
            .any(|pair| !pair.is_empty() && !pair.contains('='));
        let names: Vec<String> = url
            .query_pairs()
            .map(|(name, _)| format!("{name}={REDACTED}"))
            .collect();
        shown.set_query(Some(&if bare_key {
            REDACTED.to_owned()
        } else {
            names.join("&")
        }));
    }
    shown.to_string()
}

/// [`redact_url`] of text that may not even parse as a URL (it is being refused): everything
/// from the first `?` or `#` on is replaced, and anything before an `@` after the scheme.
pub fn redact_url_text(text: &str) -> String {
    if let Ok(url) = Url::parse(text) {
        return redact_url(&url);
    }
    let mut shown = match text.find(['?', '#']) {
        Some(at) => format!("{}?{REDACTED}", &text[..at]),
        None => text.to_owned(),
    };
    if let Some(scheme_end) = shown.find("://") {
        let rest = &shown[scheme_end + 3..];
        let authority_end = rest.find('/').unwrap_or(rest.len());
        if let Some(at) = rest[..authority_end].rfind('@') {
            shown = format!("{}{REDACTED}@{}", &shown[..scheme_end + 3], &rest[at + 1..]);
        }
    }
    shown
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_and_credentials_are_hidden_names_are_kept() {
        let url = Url::parse("https://u:pw@cloud.example/ingest?code=s3cret&x=1#frag").unwrap();
        let shown = redact_url(&url);
        assert_eq!(shown, "https://cloud.example/ingest?code=***&x=***");
        let bare = Url::parse("https://cloud.example/ingest?S3CRETKEY&x=1").unwrap();
        assert_eq!(redact_url(&bare), "https://cloud.example/ingest?***");
        let plain = Url::parse("http://127.0.0.1:8080/ingest").unwrap();
        assert_eq!(redact_url(&plain), "http://127.0.0.1:8080/ingest");
    }

    #[test]
    fn text_that_is_not_a_url_is_cut_at_the_query_and_the_credentials() {
        let shown = redact_url_text("htp:/x y/in?token=s3cret");
        assert!(!shown.contains("s3cret"), "{shown}");
        let shown = redact_url_text("ftp://user:s3cret@[bad/in");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.starts_with("ftp://***@"), "{shown}");
    }
}
