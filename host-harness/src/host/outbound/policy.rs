//! Which outbound requests a tenant may make: the operator's
//! [`OutboundSettings`] (the `[host]` keys `allow_http`,
//! `allow_private_networks`, `response_body_bytes`,
//! `extra_ca_certificates`) and the tenant's
//! allow-list, each entry binding scheme, host and port. A URL is checked
//! before anything is resolved ([`OutboundPolicy::check_uri`]); every address
//! it resolves to is checked again right before the connect
//! ([`OutboundPolicy::check_address`], called by [`super::connect`]), so a
//! name cannot point the host at its own network.

use super::tls::TlsTrust;
use crate::host_settings::IpNetwork;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use wasmtime_wasi_http::RequestOptions;

/// Default ceiling of one response body: 8 MiB, well above a 1000-event
/// page of 1Password (about 1 MiB) yet small next to the host's memory.
pub const DEFAULT_RESPONSE_BODY_BYTES: u64 = 8 << 20;

/// The operator's outbound rules, the same for every tenant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutboundSettings {
    /// Whether plain `http://` may be used at all (`allow_http`).
    pub allow_http: bool,
    /// The refused networks (loopback, private, link-local, …; see
    /// [`special_range`]) a tenant may reach nonetheless
    /// (`allow_private_networks`).
    pub allow_private_networks: Vec<IpNetwork>,
    /// The largest response body the host passes on (`response_body_bytes`);
    /// a longer one ends in an error instead of being read further.
    pub response_body_bytes: u64,
    /// The CAs https connections trust: the webpki roots, and the
    /// operator's `extra_ca_certificates`.
    pub tls: TlsTrust,
}

/// Secure by default: https only, public addresses only, the webpki roots.
impl Default for OutboundSettings {
    fn default() -> Self {
        OutboundSettings {
            allow_http: false,
            allow_private_networks: Vec::new(),
            response_body_bytes: DEFAULT_RESPONSE_BODY_BYTES,
            tls: TlsTrust::default(),
        }
    }
}

impl OutboundSettings {
    /// True when `ip` lies in one of the networks of `allow_private_networks`
    /// (an IPv4-mapped IPv6 address counts as its IPv4 address).
    pub fn allows_network_of(&self, ip: IpAddr) -> bool {
        let effective = effective(ip);
        self.allow_private_networks.iter().any(|n| n.contains(ip) || n.contains(effective))
    }
}

/// Why the host refused a request, or could not complete its TLS handshake
/// ([`super::tls::handshake_warning`]): what the tick's warnings show. Names
/// scheme, host and port only, never the path (a Devo URL may carry its
/// token there).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal(String);

impl Refusal {
    pub(crate) fn new(text: String) -> Refusal {
        Refusal(text)
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A URL's scheme, as far as the host speaks it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

impl Scheme {
    fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }
}

/// Where a request goes: scheme, host (lower case, IPv6 without brackets)
/// and port (filled in from the scheme).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Destination {
    pub scheme: Scheme,
    pub host: String,
    pub port: u16,
}

impl Destination {
    pub fn of(uri: &http::Uri) -> Option<Destination> {
        let scheme = match uri.scheme_str()? {
            "http" => Scheme::Http,
            "https" => Scheme::Https,
            _ => return None,
        };
        let host = uri.host()?.trim_start_matches('[').trim_end_matches(']').to_ascii_lowercase();
        if host.is_empty() {
            return None;
        }
        Some(Destination { scheme, port: uri.port_u16().unwrap_or(scheme.default_port()), host })
    }
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = match self.scheme {
            Scheme::Http => "http",
            Scheme::Https => "https",
        };
        if self.host.contains(':') {
            write!(f, "{scheme}://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{scheme}://{}:{}", self.host, self.port)
        }
    }
}

/// The most distinct refusals one tick keeps: a guest that retries in a
/// loop must not grow the host's memory.
const MAX_REFUSALS: usize = 8;

/// The most outgoing requests one tick may have in flight at once, each a
/// connection (a file descriptor) in the harness process from the moment it
/// is sent until its response body is read or dropped. Without it a guest
/// could open one per entry of its resource table (hundreds: a pending
/// request holds only its future there), and every concurrent tick as
/// many, until the process ran out of descriptors for all tenants. The collector needs at most
/// three at once (one page per service) plus an introspection.
pub const MAX_REQUESTS_IN_FLIGHT: usize = 16;

/// The refusals of one tick, shared by every clone of its policy.
#[derive(Clone, Debug, Default)]
pub struct Refusals(Arc<Mutex<Vec<String>>>);

impl Refusals {
    pub fn record(&self, refusal: &Refusal) {
        let mut list = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if list.len() < MAX_REFUSALS && !list.contains(&refusal.0) {
            list.push(refusal.0.clone());
        }
    }

    /// Every refusal so far, first first.
    pub fn list(&self) -> Vec<String> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// One tenant's outbound policy for one tick.
#[derive(Clone, Debug)]
pub struct OutboundPolicy {
    allowed: Arc<Vec<Destination>>,
    settings: Arc<OutboundSettings>,
    /// Upper bound for each of connect, first-byte and between-bytes waits.
    pub max_timeout: Duration,
    pub refusals: Refusals,
    /// [`MAX_REQUESTS_IN_FLIGHT`] permits, shared by every clone of the
    /// tick's policy (a tick's instance has one policy; the clones are the
    /// request futures').
    in_flight: Arc<Semaphore>,
}

impl OutboundPolicy {
    /// Allows exactly the scheme, host and port of each of the given base
    /// URLs (the tenant's `base_url` and `devo_url`, or its
    /// `allowed_outbound_hosts`); values that are not http(s) URLs allow
    /// nothing.
    pub fn for_urls<'a>(
        urls: impl IntoIterator<Item = &'a str>,
        settings: Arc<OutboundSettings>,
        max_timeout: Duration,
    ) -> OutboundPolicy {
        let allowed = urls.into_iter().filter_map(|u| Destination::of(&u.trim().parse().ok()?)).collect();
        OutboundPolicy {
            allowed: Arc::new(allowed),
            settings,
            max_timeout,
            refusals: Refusals::default(),
            in_flight: Arc::new(Semaphore::new(MAX_REQUESTS_IN_FLIGHT)),
        }
    }

    pub fn settings(&self) -> &OutboundSettings {
        &self.settings
    }

    /// Whether a request to `uri` may go out at all (before any address is
    /// known): its scheme, host and port must be one of the allow-list's
    /// entries, and plain http must be allowed by the operator.
    pub fn check_uri(&self, uri: &http::Uri) -> Result<Destination, Refusal> {
        let Some(destination) = Destination::of(uri) else {
            return Err(Refusal("the URL is not an http or https URL with a host".into()));
        };
        if destination.scheme == Scheme::Http && !self.settings.allow_http {
            return Err(Refusal(format!(
                "{destination}: plain http is refused; the operator's `[host] allow_http = true` allows it"
            )));
        }
        if !self.allowed.contains(&destination) {
            return Err(Refusal(format!(
                "{destination} is not in the tenant's allow-list (its base_url and devo_url, or \
                 allowed_outbound_hosts): scheme, host and port must match"
            )));
        }
        Ok(destination)
    }

    /// Whether `destination` may be reached at `ip`, one of the addresses
    /// its host resolved to.
    pub fn check_address(&self, destination: &Destination, ip: IpAddr) -> Result<(), Refusal> {
        match special_range(ip) {
            Some((network, what)) if !self.settings.allows_network_of(ip) => Err(Refusal(format!(
                "{destination} resolves to {ip}, {what} address: refused; the operator's \
                 `[host] allow_private_networks = [\"{network}\"]` allows it"
            ))),
            _ => Ok(()),
        }
    }

    /// One of the tick's [`MAX_REQUESTS_IN_FLIGHT`] slots for a request about
    /// to be sent, or the refusal when all are taken. Never waits: a guest
    /// that queued here would only move its flood into the host's memory.
    /// The slot is free again when the permit is dropped, which the caller
    /// does when the request's connection is done.
    pub fn take_request_slot(&self) -> Result<OwnedSemaphorePermit, Refusal> {
        Arc::clone(&self.in_flight).try_acquire_owned().map_err(|_| {
            Refusal(format!(
                "more than {MAX_REQUESTS_IN_FLIGHT} requests in flight in one tick: refused until one of them is \
                 done (its response read or dropped)"
            ))
        })
    }

    /// The request's own timeouts, none above the host's.
    pub fn capped(&self, options: Option<RequestOptions>) -> RequestOptions {
        let cap = |t: Option<Duration>| Some(t.map_or(self.max_timeout, |t| t.min(self.max_timeout)));
        let o = options.unwrap_or_default();
        RequestOptions {
            connect_timeout: cap(o.connect_timeout),
            first_byte_timeout: cap(o.first_byte_timeout),
            between_bytes_timeout: cap(o.between_bytes_timeout),
        }
    }
}

/// The address a packet to `ip` really reaches: an IPv4-mapped IPv6 address
/// (`::ffff:127.0.0.1`) and one under the NAT64 well-known prefix
/// (`64:ff9b::/96`) are their IPv4 address.
fn effective(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) if v6.segments()[..6] == [0x64, 0xff9b, 0, 0, 0, 0] => {
            IpAddr::V4(Ipv4Addr::from((u128::from(v6) & 0xffff_ffff) as u32))
        }
        other => other,
    }
}

/// The ranges no tenant reaches unless the operator allows them: the host's
/// own machine and networks, and what is not one destination (multicast,
/// broadcast, unspecified). First match wins, so the specific go first.
static SPECIAL_RANGES: LazyLock<Vec<(IpNetwork, &'static str)>> = LazyLock::new(|| {
    [
        ("0.0.0.0/8", "an unspecified (\"this network\")"),
        ("10.0.0.0/8", "a private (RFC 1918)"),
        ("100.64.0.0/10", "a shared (carrier-grade NAT)"),
        ("127.0.0.0/8", "a loopback"),
        ("169.254.0.0/16", "a link-local (cloud metadata)"),
        ("172.16.0.0/12", "a private (RFC 1918)"),
        ("192.0.0.0/24", "an IETF protocol"),
        ("192.168.0.0/16", "a private (RFC 1918)"),
        ("198.18.0.0/15", "a benchmarking"),
        ("224.0.0.0/4", "a multicast"),
        ("240.0.0.0/4", "a reserved or broadcast"),
        ("::/128", "an unspecified"),
        ("::1/128", "a loopback"),
        ("::/96", "an IPv4-compatible (deprecated)"),
        ("fc00::/7", "a unique-local"),
        ("fe80::/10", "a link-local"),
        ("fec0::/10", "a site-local (deprecated)"),
        ("ff00::/8", "a multicast"),
    ]
    .into_iter()
    .map(|(network, what)| (network.parse().expect("a valid network"), what))
    .collect()
});

/// The refused range `ip` lies in, and what it is; `None` for a public
/// address.
pub fn special_range(ip: IpAddr) -> Option<(IpNetwork, &'static str)> {
    let ip = effective(ip);
    SPECIAL_RANGES.iter().find(|(network, _)| network.contains(ip)).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(allow_http: bool, networks: &[&str]) -> Arc<OutboundSettings> {
        Arc::new(OutboundSettings {
            allow_http,
            allow_private_networks: networks.iter().map(|n| n.parse().unwrap()).collect(),
            ..OutboundSettings::default()
        })
    }

    fn policy(urls: &[&str], allow_http: bool, networks: &[&str]) -> OutboundPolicy {
        OutboundPolicy::for_urls(urls.iter().copied(), settings(allow_http, networks), Duration::from_secs(5))
    }

    #[test]
    fn only_the_configured_scheme_host_and_port_pass() {
        let p = policy(&["https://events.1password.com", "http://127.0.0.1:8080", "not a url"], true, &[]);
        let ok = |u: &str| p.check_uri(&u.parse().unwrap()).is_ok();
        assert!(ok("https://events.1password.com/api/v2/auditevents"));
        assert!(ok("https://EVENTS.1password.com:443/x"));
        assert!(ok("http://127.0.0.1:8080/stream"));
        assert!(!ok("http://127.0.0.1:8081/stream"));
        assert!(!ok("https://evil.example.com/"));
        assert!(!ok("https://events.1password.com.evil.example/"));
        // the scheme is part of the entry
        assert!(!ok("http://events.1password.com:443/api/v2/auditevents"));
        assert!(!ok("https://127.0.0.1:8080/stream"));
        let e = p.check_uri(&"http://events.1password.com:443/x".parse().unwrap()).unwrap_err();
        assert!(e.to_string().contains("http://events.1password.com:443 is not in the tenant's allow-list"), "{e}");
    }

    #[test]
    fn plain_http_needs_allow_http() {
        let p = policy(&["http://relay.example.com:8080"], false, &[]);
        let e = p.check_uri(&"http://relay.example.com:8080/x?token=secret".parse().unwrap()).unwrap_err();
        assert!(e.to_string().contains("`[host] allow_http = true` allows it"), "{e}");
        assert!(!e.to_string().contains("secret"), "the path never shows: {e}");
        let p = policy(&["http://relay.example.com:8080"], true, &[]);
        assert!(p.check_uri(&"http://relay.example.com:8080/x".parse().unwrap()).is_ok());
    }

    #[test]
    fn refused_ranges_are_refused_unless_allowed() {
        let p = policy(&[], true, &[]);
        let d = Destination { scheme: Scheme::Https, host: "relay.example.com".into(), port: 443 };
        for (ip, network) in [
            ("169.254.169.254", "169.254.0.0/16"),
            ("10.1.2.3", "10.0.0.0/8"),
            ("172.16.0.1", "172.16.0.0/12"),
            ("172.31.255.255", "172.16.0.0/12"),
            ("192.168.1.1", "192.168.0.0/16"),
            ("127.0.0.1", "127.0.0.0/8"),
            ("127.255.0.9", "127.0.0.0/8"),
            ("0.0.0.0", "0.0.0.0/8"),
            ("100.64.0.1", "100.64.0.0/10"),
            ("224.0.0.1", "224.0.0.0/4"),
            ("255.255.255.255", "240.0.0.0/4"),
            ("fc00::1", "fc00::/7"),
            ("fd12:3456::1", "fc00::/7"),
            ("fe80::1", "fe80::/10"),
            ("::1", "::1/128"),
            ("::", "::/128"),
            ("ff02::1", "ff00::/8"),
            ("::ffff:127.0.0.1", "127.0.0.0/8"),
            ("::ffff:169.254.169.254", "169.254.0.0/16"),
            ("64:ff9b::a00:1", "10.0.0.0/8"),
        ] {
            let e = p.check_address(&d, ip.parse().unwrap()).unwrap_err().to_string();
            assert!(e.contains(&format!("resolves to {ip},")), "{ip}: {e}");
            assert!(e.contains(&format!("`[host] allow_private_networks = [\"{network}\"]` allows it")), "{ip}: {e}");
            // allowed by the network the message suggests, and by nothing less
            let allowed = policy(&[], true, &[network]);
            assert!(allowed.check_address(&d, ip.parse().unwrap()).is_ok(), "{ip} with {network}");
        }
        for ip in ["8.8.8.8", "1.1.1.1", "172.32.0.1", "100.128.0.1", "2606:4700::1111", "::ffff:8.8.8.8"] {
            assert!(p.check_address(&d, ip.parse().unwrap()).is_ok(), "{ip} is public");
        }
    }

    #[test]
    fn an_allowed_network_allows_only_itself() {
        let p = policy(&[], true, &["127.0.0.0/8"]);
        let d = Destination { scheme: Scheme::Http, host: "localhost".into(), port: 80 };
        let ok = |ip: &str| p.check_address(&d, ip.parse().unwrap()).is_ok();
        assert!(ok("127.0.0.1") && ok("::ffff:127.0.0.1"));
        assert!(!ok("::1"), "::1 is not in 127.0.0.0/8");
        assert!(!ok("10.0.0.1") && !ok("169.254.169.254") && !ok("192.168.0.1"));
    }

    #[test]
    fn refusals_are_kept_once_and_bounded() {
        let r = Refusals::default();
        for i in 0..100 {
            r.record(&Refusal(format!("refusal {}", i % 20)));
            r.record(&Refusal("refusal 0".into()));
        }
        let list = r.list();
        assert_eq!(list.len(), MAX_REFUSALS);
        assert_eq!(list[0], "refusal 0");
        assert_eq!(list.iter().filter(|l| *l == "refusal 0").count(), 1);
    }

    #[test]
    fn timeouts_are_capped() {
        let p = policy(&[], false, &[]);
        let o = p.capped(Some(RequestOptions {
            connect_timeout: Some(Duration::from_secs(1)),
            first_byte_timeout: Some(Duration::from_secs(60)),
            between_bytes_timeout: None,
        }));
        assert_eq!(o.connect_timeout, Some(Duration::from_secs(1)));
        assert_eq!(o.first_byte_timeout, Some(Duration::from_secs(5)));
        assert_eq!(o.between_bytes_timeout, Some(Duration::from_secs(5)));
    }

    #[test]
    fn the_default_is_https_to_public_addresses() {
        let s = OutboundSettings::default();
        assert!(!s.allow_http && s.allow_private_networks.is_empty());
        assert_eq!(s.response_body_bytes, 8 << 20);
    }
}
