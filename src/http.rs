//! Plain HTTP values exchanged between the core and whoever performs I/O.
//!
//! The core builds [`HttpRequest`]s and consumes [`HttpResponse`]s; it never
//! opens a connection. `Debug` on a request is safe to log: the bearer token
//! and the token in Devo's URL path are redacted.

use crate::endpoint::Scheme;
use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
}

#[derive(Clone, PartialEq, Eq)]
pub struct HttpRequest {
    pub method: Method,
    pub scheme: Scheme,
    pub authority: String,
    /// Path and query, e.g. `/api/v2/auditevents`.
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpRequest {
    /// The URL with any Devo token in the path replaced: the only form of a
    /// URL that may appear in a log or an error.
    pub fn redacted_url(&self) -> String {
        format!("{}://{}{}", self.scheme.as_str(), self.authority, redact_path(&self.path))
    }
}

impl fmt::Debug for HttpRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let header_names: Vec<&str> = self.headers.iter().map(|(k, _)| k.as_str()).collect();
        f.debug_struct("HttpRequest")
            .field("method", &self.method)
            .field("url", &self.redacted_url())
            .field("headers", &header_names)
            .field("body_bytes", &self.body.len())
            .finish()
    }
}

pub use crate::text::redact_path;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// The start of the body as text, for error messages: error bodies are
    /// small, but an unexpected one must not flood a log, nor steer the
    /// terminal that shows it.
    pub fn body_excerpt(&self) -> String {
        // Only the bytes that can make 200 characters are decoded.
        let head = &self.body[..self.body.len().min(4 * BODY_EXCERPT_CHARS + 4)];
        crate::text::clean(&String::from_utf8_lossy(head), BODY_EXCERPT_CHARS)
    }

    /// The response, or [`HttpFailure::TooLarge`] when its body is over
    /// `limit` bytes. The component stops reading at the limit; this holds
    /// the core to it whoever performed the request.
    pub fn within(self, limit: u64) -> Result<HttpResponse, HttpFailure> {
        if self.body.len() as u64 > limit {
            return Err(HttpFailure::TooLarge { limit });
        }
        Ok(self)
    }
}

/// How much of an unexpected body an error message shows.
const BODY_EXCERPT_CHARS: usize = 200;

/// The request never produced a response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HttpFailure {
    /// The host refused the destination (not on the allow-list).
    Denied,
    /// Connect, first byte or body took longer than the host allows.
    Timeout,
    /// Any other transport failure, described by the host.
    Transport(String),
    /// The answer's body is over `max_response_bytes` (`limit`), by its
    /// `Content-Length` or as it was read: the rest was not read.
    TooLarge { limit: u64 },
}

impl HttpFailure {
    /// The failure as an error says it, for a request to the host of
    /// setting `variable` (`base_url` or `devo_url`). A refusal says which
    /// setting's host was refused and what makes a host refuse it, Spin's
    /// way included: there, one `allowed_outbound_hosts` entry it cannot
    /// read (a URL with a path) refuses every request, to either host.
    pub fn for_setting(&self, variable: &str) -> String {
        match self {
            HttpFailure::Denied => format!(
                "the host refused the request to the host of {variable} (destination not allowed): the host's allowed outbound hosts must include it. Under Spin, allowed_outbound_hosts must hold base_url and devo_url as scheme://host[:port] without a path; one entry Spin cannot read makes it refuse every request, to both"
            ),
            other => other.to_string(),
        }
    }
}

impl fmt::Display for HttpFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HttpFailure::Denied => f.write_str("the host refused the request (destination not allowed)"),
            HttpFailure::Timeout => f.write_str("the request timed out"),
            HttpFailure::Transport(detail) => write!(f, "transport error: {detail}"),
            HttpFailure::TooLarge { limit } => {
                write!(f, "the answer is larger than max_response_bytes ({limit} bytes) and was not read")
            }
        }
    }
}

/// A wasi-http `error-code` as words: its variant's name (`ConnectionRefused`,
/// `DNS-timeout` as Rust names it, `DnsTimeout`) split and lowercased
/// ("connection refused", "DNS timeout"), with `detail` after it when there
/// is one. No Rust debug text (`ConnectionRefused`, `Some("…")`) in a message.
pub fn error_code_text(variant: &str, detail: Option<&str>) -> String {
    // `ErrorCode::ConnectionRefused`, `DnsError(DnsErrorPayload { .. })`.
    let name = variant.split(['(', ' ', '{']).next().unwrap_or_default();
    let name = name.rsplit("::").next().unwrap_or_default();
    let mut words: Vec<String> = Vec::new();
    for c in name.chars() {
        if c.is_ascii_uppercase() || words.is_empty() {
            words.push(String::new());
        }
        words.last_mut().expect("a word").push(c.to_ascii_lowercase());
    }
    let words: Vec<String> = words
        .into_iter()
        .map(|w| match w.as_str() {
            "dns" | "tls" | "http" | "ip" => w.to_ascii_uppercase(),
            _ => w,
        })
        .collect();
    let mut text = words.join(" ");
    if let Some(first) = text.get(..1) {
        if first.chars().all(|c| c.is_ascii_lowercase()) {
            text.replace_range(..1, &first.to_ascii_uppercase());
        }
    }
    match detail.map(str::trim).filter(|d| !d.is_empty()) {
        Some(d) => format!("{text} ({})", crate::error::bounded(d)),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wasi_http_error_codes_read_as_words() {
        assert_eq!(error_code_text("ConnectionRefused", None), "Connection refused");
        assert_eq!(error_code_text("ErrorCode::ConnectionRefused", None), "Connection refused");
        assert_eq!(error_code_text("DnsTimeout", None), "DNS timeout");
        assert_eq!(error_code_text("DestinationIpProhibited", None), "Destination IP prohibited");
        assert_eq!(
            error_code_text("TlsAlertReceived(..)", Some("bad certificate")),
            "TLS alert received (bad certificate)"
        );
        assert_eq!(error_code_text("InternalError", Some("  ")), "Internal error");
    }

    #[test]
    fn a_refused_request_names_the_setting_whose_host_it_was_for() {
        use crate::service::Service;
        let op = crate::onepassword::transport_error(Service::Audit, &HttpFailure::Denied).message;
        let introspection = crate::account::introspection_failure(&HttpFailure::Denied).message;
        let devo = crate::devo::transport_error(Service::Audit, &HttpFailure::Denied).message;
        for (message, setting) in [(&op, "base_url"), (&introspection, "base_url"), (&devo, "devo_url")] {
            assert!(message.contains(&format!("the host refused the request to the host of {setting}")), "{message}");
            assert!(message.contains("one entry Spin cannot read makes it refuse every request"), "{message}");
            assert!(message.chars().count() <= crate::text::MAX_MESSAGE_CHARS, "{message}");
        }
        // Other failures read as before.
        assert_eq!(HttpFailure::Timeout.for_setting("base_url"), "the request timed out");
    }

    #[test]
    fn debug_and_url_hide_tokens() {
        let req = HttpRequest {
            method: Method::Post,
            scheme: Scheme::Https,
            authority: "http-us.devo.io".into(),
            path: "/stream/acme/token!S3CR3T/host/my.tag".into(),
            headers: vec![("authorization".into(), "Bearer OPTOKEN".into())],
            body: b"x".to_vec(),
        };
        let shown = format!("{req:?}");
        assert!(!shown.contains("S3CR3T") && !shown.contains("OPTOKEN"), "{shown}");
        assert_eq!(req.redacted_url(), "https://http-us.devo.io/stream/acme/token!<redacted>/host/my.tag");
    }

    #[test]
    fn an_excerpt_is_short_and_inert_and_a_body_over_the_limit_is_refused() {
        let mut body = b"\x1b[2J\x1b]0;pwned\x07 ".to_vec();
        body.extend(std::iter::repeat_n(b'z', 1 << 20));
        let r = HttpResponse { status: 500, headers: vec![], body };
        let excerpt = r.body_excerpt();
        assert!(excerpt.starts_with("\\u{1b}[2J\\u{1b}]0;pwned\\u{7} zz") && excerpt.ends_with('…'), "{excerpt}");
        assert!(excerpt.chars().count() <= BODY_EXCERPT_CHARS + 1);
        assert_eq!(r.clone().within(1 << 20).unwrap_err(), HttpFailure::TooLarge { limit: 1 << 20 });
        assert!(r.within(2 << 20).is_ok());
    }
}
