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

/// Replaces the value of a `token!...` path segment (Devo's URL form).
pub fn redact_path(path: &str) -> String {
    path.split('/')
        .map(|seg| if seg.starts_with("token!") { "token!<redacted>" } else { seg })
        .collect::<Vec<_>>()
        .join("/")
}

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
    /// small, but an unexpected one must not flood a log.
    pub fn body_excerpt(&self) -> String {
        let text = String::from_utf8_lossy(&self.body);
        let mut excerpt: String = text.chars().take(200).collect();
        if excerpt.len() < text.len() {
            excerpt.push('…');
        }
        excerpt.replace(['\n', '\r'], " ")
    }
}

/// The request never produced a response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HttpFailure {
    /// The host refused the destination (not on the allow-list).
    Denied,
    /// Connect, first byte or body took longer than the host allows.
    Timeout,
    /// Any other transport failure, described by the host.
    Transport(String),
}

impl fmt::Display for HttpFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HttpFailure::Denied => f.write_str("the host refused the request (destination not allowed)"),
            HttpFailure::Timeout => f.write_str("the request timed out"),
            HttpFailure::Transport(detail) => write!(f, "transport error: {detail}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
