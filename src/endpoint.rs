//! Base URLs of the two servers we talk to (1Password's events server and
//! Devo's HTTP endpoint), split into the parts an outbound request needs.
//!
//! Parsed by hand rather than with a URL crate: the accepted shape is tiny
//! (scheme, authority, optional base path) and the component stays small.

use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

impl Scheme {
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

/// `scheme://authority[/base/path]`, without a trailing slash.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub scheme: Scheme,
    /// `host[:port]`, as written (IPv6 hosts in brackets).
    pub authority: String,
    /// Base path without a trailing slash: "" or "/relay".
    pub base_path: String,
}

impl Endpoint {
    /// Parses a base URL. Plain `http` is accepted only for loopback hosts:
    /// tokens must not cross a network in clear text, but local test servers
    /// and relays on the same machine need no TLS.
    pub fn parse(value: &str) -> Result<Endpoint, String> {
        let (scheme, rest) = if let Some(rest) = value.strip_prefix("https://") {
            (Scheme::Https, rest)
        } else if let Some(rest) = value.strip_prefix("http://") {
            (Scheme::Http, rest)
        } else {
            return Err("a URL starting with https://".into());
        };
        if rest.contains(['?', '#', '@']) || rest.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err("a plain base URL (no user, query, fragment or spaces)".into());
        }
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
            None => (rest, ""),
        };
        if authority.is_empty() {
            return Err("a URL with a host name".into());
        }
        if let Some(port) = port_of(authority) {
            if port.parse::<u16>().map_or(true, |p| p == 0) {
                return Err("a URL with a valid port (1-65535)".into());
            }
        }
        let endpoint = Endpoint { scheme, authority: authority.to_ascii_lowercase(), base_path: path.to_string() };
        if scheme == Scheme::Http && !endpoint.is_loopback() {
            return Err("an https:// URL (plain http:// is allowed only for loopback hosts)".into());
        }
        Ok(endpoint)
    }

    /// The host without port or IPv6 brackets.
    pub fn host(&self) -> &str {
        let a = self.authority.as_str();
        if let Some(rest) = a.strip_prefix('[') {
            return rest.split(']').next().unwrap_or(rest);
        }
        a.rsplit_once(':').map_or(a, |(h, _)| h)
    }

    pub fn is_loopback(&self) -> bool {
        let host = self.host();
        host == "localhost" || host == "::1" || host.parse::<std::net::Ipv4Addr>().is_ok_and(|ip| ip.is_loopback())
    }

    /// The path of a request below this base, e.g. `/api/v2/auditevents`.
    pub fn path(&self, suffix: &str) -> String {
        format!("{}{}", self.base_path, suffix)
    }
}

fn port_of(authority: &str) -> Option<&str> {
    let after_host = match authority.strip_prefix('[') {
        Some(rest) => rest.split_once(']').map(|(_, tail)| tail).unwrap_or(""),
        None => authority,
    };
    after_host.rsplit_once(':').map(|(_, port)| port)
}

/// The URL as a message shows it: a Devo token in the base path
/// (`…/token!…`) is redacted, as in every URL the collector shows.
impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}{}", self.scheme.as_str(), self.authority, crate::http::redact_path(&self.base_path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_https_with_port_and_path() {
        let e = Endpoint::parse("https://HTTP-us.devo.io:443/relay/").unwrap();
        assert_eq!(e.scheme, Scheme::Https);
        assert_eq!(e.authority, "http-us.devo.io:443");
        assert_eq!(e.host(), "http-us.devo.io");
        assert_eq!(e.path("/stream/x"), "/relay/stream/x");
        assert_eq!(e.to_string(), "https://http-us.devo.io:443/relay");
    }

    #[test]
    fn a_devo_token_in_the_base_path_is_not_shown() {
        let e = Endpoint::parse("https://http-us.devo.io/stream/acme/token!S3cretDevoToken").unwrap();
        assert_eq!(e.path("/x"), "/stream/acme/token!S3cretDevoToken/x", "requests keep it");
        assert_eq!(e.to_string(), "https://http-us.devo.io/stream/acme/token!<redacted>");
    }

    #[test]
    fn plain_http_only_for_loopback() {
        assert!(Endpoint::parse("http://127.0.0.1:8080").is_ok());
        assert!(Endpoint::parse("http://localhost").is_ok());
        assert!(Endpoint::parse("http://[::1]:9000").unwrap().is_loopback());
        assert!(Endpoint::parse("http://events.1password.com").unwrap_err().contains("loopback"));
        assert!(Endpoint::parse("http://10.0.0.1").is_err());
    }

    #[test]
    fn rejects_shapes_that_are_not_base_urls() {
        for bad in [
            "events.1password.com",
            "ftp://x",
            "https://",
            "https://u:p@host",
            "https://h/?q",
            "https://h:0",
            "https://h:99999",
            "https://h x",
        ] {
            assert!(Endpoint::parse(bad).is_err(), "{bad} accepted");
        }
    }
}
