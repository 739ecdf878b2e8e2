//! Which outbound requests a tenant may make: the operator's
//! [`OutboundSettings`] (the `[host]` keys `allow_http`,
//! `allow_private_networks`, `response_body_bytes`,
//! `extra_ca_certificates`) and the tenant's
//! allow-list, each entry binding scheme, host and port. A URL is checked
//! before anything is resolved ([`OutboundPolicy::check_uri`]); every address
//! it resolves to is checked again right before the connect
//! ([`OutboundPolicy::check_address`], called by [`super::connect`]), so a
//! name cannot point the host at its own network: every address that is not
//! globally reachable by IANA's special-purpose registries is refused
//! ([`special_range`]; an IPv4 address embedded in IPv6 is judged as that
//! IPv4 address, see [`reached`]), and so is every address of the machine's
//! own interfaces ([`super::interfaces`]), unless the operator's
//! `allow_private_networks` lists it.

use super::interfaces;
use super::network::IpNetwork;
use super::tls::TlsTrust;
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
    /// The refused networks (whatever is not globally reachable: loopback,
    /// private, link-local, documentation, …, see [`special_range`]; and
    /// the machine's own addresses) a tenant may reach nonetheless
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
    /// True when `ip` lies in one of the networks of `allow_private_networks`,
    /// or every IPv4 address it embeds does (an IPv4-mapped, NAT64, 6to4 or
    /// Teredo address counts as its IPv4 address, see [`reached`]).
    pub fn allows_network_of(&self, ip: IpAddr) -> bool {
        let allowed = |address: IpAddr| self.allow_private_networks.iter().any(|n| n.contains(address));
        allowed(ip) || reached(ip).iter().all(|r| allowed(r.address))
    }
}

/// Why the host refused a request, or could not complete its TLS handshake
/// (`handshake_warning` in `outbound/mod.rs`): what the tick's warnings show. Names
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
    /// `http://`, port 80 unless given; only with `[host] allow_http`.
    Http,
    /// `https://`, port 443 unless given.
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
    /// http or https.
    pub scheme: Scheme,
    /// A name or an IP address, lower case, an IPv6 one without brackets.
    pub host: String,
    /// The URL's port, or the scheme's default.
    pub port: u16,
}

impl Destination {
    /// Where `uri` goes; `None` unless it is an http or https URL with a
    /// host.
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
    /// Keeps `refusal` unless it is already kept or `MAX_REFUSALS` (8) are.
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
    /// What this tick's requests were refused, for its warnings.
    pub refusals: Refusals,
    /// [`MAX_REQUESTS_IN_FLIGHT`] permits, shared by every clone of the
    /// tick's policy (a tick's instance has one policy; the clones are the
    /// request futures').
    in_flight: Arc<Semaphore>,
    /// Where its requests find idle connections: the runtime's, shared by
    /// its tenants (a policy of its own keeps one to itself).
    pub(crate) pool: Arc<super::pool::ConnectionPool>,
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
            pool: Arc::default(),
        }
    }

    /// Takes its connections from `pool` (the runtime's).
    pub fn with_pool(mut self, pool: Arc<super::pool::ConnectionPool>) -> OutboundPolicy {
        self.pool = pool;
        self
    }

    /// The operator's rules this policy applies.
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
            // A literal address the network rule refuses too is named now,
            // not one refusal at a time.
            let also = match destination.host.trim_matches(['[', ']']).parse::<IpAddr>() {
                Ok(ip) if self.check_address(&destination, ip).is_err() => format!(
                    "; its address {ip} is refused as well, which the operator's `[host] allow_private_networks` \
                     allows (e.g. [\"{}\"])",
                    if ip.is_ipv4() { format!("{ip}/32") } else { format!("{ip}/128") }
                ),
                _ => String::new(),
            };
            return Err(Refusal(format!(
                "{destination}: plain http is refused; the operator's `[host] allow_http = true` allows it{also}"
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
    /// its host resolved to: not if it (or an IPv4 address it embeds) is
    /// not globally reachable, or is one of the machine's own addresses
    /// ([`interfaces::own_addresses`]), unless `allow_private_networks`
    /// lists it.
    pub fn check_address(&self, destination: &Destination, ip: IpAddr) -> Result<(), Refusal> {
        self.check_address_among(destination, ip, &interfaces::own_addresses())
    }

    /// [`check_address`](Self::check_address) with `own` as the machine's
    /// addresses.
    fn check_address_among(&self, destination: &Destination, ip: IpAddr, own: &[IpAddr]) -> Result<(), Refusal> {
        match blocked(&self.settings, ip, own) {
            Some(blocked) => Err(blocked.refusal(destination, ip)),
            None => Ok(()),
        }
    }

    /// Whether a connection just made to `peer` from `local` may be used: a
    /// connection whose two ends have the same address went to this
    /// machine (an address added since [`interfaces::own_addresses`] was
    /// read), refused as its own address unless allowed.
    pub fn check_connection(&self, destination: &Destination, peer: IpAddr, local: IpAddr) -> Result<(), Refusal> {
        let peer = peer.to_canonical();
        if peer != local.to_canonical() {
            return Ok(());
        }
        self.check_address_among(destination, peer, &[peer])
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

/// One address a connection to a resolved address really reaches: the
/// address itself, or an IPv4 address embedded in it (`form` names the
/// translation or tunnel that reaches it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reached {
    /// The address judged: the resolved address itself, or an IPv4
    /// address it embeds.
    pub address: IpAddr,
    /// `None` for the resolved address itself; else how it embeds
    /// `address` (`"NAT64"`, `"6to4"`, …), which a refusal names.
    pub form: Option<&'static str>,
}

/// The addresses a connection to `ip` reaches, each judged on its own: `ip`
/// itself, or, for an IPv6 address that embeds IPv4, that IPv4 address —
/// IPv4-mapped `::ffff:0:0/96` and IPv4-translated `::ffff:0:0:0/96` (the
/// last 32 bits), NAT64's well-known prefix `64:ff9b::/96` (the last 32
/// bits), 6to4 `2002::/16` (bits 16 to 48) and Teredo `2001::/32` (both the
/// server, bits 32 to 64, and the client, the last 32 bits inverted). A
/// host with such a translator or tunnel sends the packet to that IPv4
/// address. (The local-use NAT64 prefix `64:ff9b:1::/48` is refused as a
/// whole: it is the operator's own translator.)
pub fn reached(ip: IpAddr) -> Vec<Reached> {
    let v6 = match (ip, ip.to_canonical()) {
        (IpAddr::V4(_), v4) => return vec![Reached { address: v4, form: None }],
        (IpAddr::V6(_), IpAddr::V4(v4)) => return vec![Reached { address: v4.into(), form: Some("IPv4-mapped") }],
        (IpAddr::V6(_), IpAddr::V6(v6)) => v6,
    };
    let bits = u128::from(v6);
    let v4 = |bits: u128, form| Reached { address: IpAddr::V4(Ipv4Addr::from(bits as u32)), form: Some(form) };
    let s = v6.segments();
    if s[..6] == [0, 0, 0, 0, 0xffff, 0] {
        vec![v4(bits, "IPv4-translated")]
    } else if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        vec![v4(bits, "NAT64")]
    } else if s[0] == 0x2002 {
        vec![v4(bits >> 80, "6to4")]
    } else if s[..2] == [0x2001, 0] {
        vec![v4(bits >> 64, "Teredo server"), v4(!bits, "Teredo client")]
    } else {
        vec![Reached { address: ip, form: None }]
    }
}

/// Every address that is not globally reachable by IANA's IPv4 and IPv6
/// special-purpose address registries (what Python's
/// `ipaddress.is_global` says, plus multicast, IPv6 site-local and ORCHID),
/// and the IPv6 address space outside global unicast `2000::/3`; `None`
/// marks the few globally reachable blocks inside a refused one. First match
/// wins, so the specific go first. Embedded IPv4 forms are judged by their
/// IPv4 address ([`reached`]) and never looked up here.
static BLOCKS: LazyLock<Vec<(IpNetwork, Option<&'static str>)>> = LazyLock::new(|| {
    let refused = Some;
    [
        // IPv4
        ("192.0.0.9/32", None),  // Port Control Protocol anycast
        ("192.0.0.10/32", None), // TURN anycast
        ("0.0.0.0/8", refused("an unspecified (\"this network\")")),
        ("10.0.0.0/8", refused("a private (RFC 1918)")),
        ("100.64.0.0/10", refused("a shared (carrier-grade NAT)")),
        ("127.0.0.0/8", refused("a loopback")),
        ("169.254.0.0/16", refused("a link-local (cloud metadata)")),
        ("172.16.0.0/12", refused("a private (RFC 1918)")),
        ("192.0.0.0/24", refused("an IETF protocol")),
        ("192.0.2.0/24", refused("a documentation (TEST-NET-1)")),
        ("192.168.0.0/16", refused("a private (RFC 1918)")),
        ("198.18.0.0/15", refused("a benchmarking")),
        ("198.51.100.0/24", refused("a documentation (TEST-NET-2)")),
        ("203.0.113.0/24", refused("a documentation (TEST-NET-3)")),
        ("224.0.0.0/4", refused("a multicast")),
        ("255.255.255.255/32", refused("a broadcast")),
        ("240.0.0.0/4", refused("a reserved")),
        // IPv6
        ("::/128", refused("an unspecified")),
        ("::1/128", refused("a loopback")),
        ("::/96", refused("an IPv4-compatible (deprecated)")),
        ("64:ff9b:1::/48", refused("a local-use NAT64")),
        ("100::/64", refused("a discard-only")),
        ("2001:1::1/128", None),   // Port Control Protocol anycast
        ("2001:1::2/128", None),   // TURN anycast
        ("2001:3::/32", None),     // AMT
        ("2001:4:112::/48", None), // AS112
        ("2001:20::/28", None),    // ORCHIDv2
        ("2001:30::/28", None),    // drone remote ID
        ("2001:2::/48", refused("a benchmarking")),
        ("2001:10::/28", refused("an ORCHID (deprecated)")),
        ("2001::/23", refused("an IETF protocol")),
        ("2001:db8::/32", refused("a documentation")),
        ("3fff::/20", refused("a documentation")),
        ("5f00::/16", refused("a segment routing (SRv6 SID)")),
        ("fc00::/7", refused("a unique-local")),
        ("fe80::/10", refused("a link-local")),
        ("fec0::/10", refused("a site-local (deprecated)")),
        ("ff00::/8", refused("a multicast")),
        // The rest of the IPv6 address space outside 2000::/3: reserved.
        ("::/8", refused("a reserved")),
        ("100::/8", refused("a reserved")),
        ("200::/7", refused("a reserved")),
        ("400::/6", refused("a reserved")),
        ("800::/5", refused("a reserved")),
        ("1000::/4", refused("a reserved")),
        ("4000::/3", refused("a reserved")),
        ("6000::/3", refused("a reserved")),
        ("8000::/3", refused("a reserved")),
        ("a000::/3", refused("a reserved")),
        ("c000::/3", refused("a reserved")),
        ("e000::/4", refused("a reserved")),
        ("f000::/5", refused("a reserved")),
        ("f800::/6", refused("a reserved")),
        ("fe00::/9", refused("a reserved")),
    ]
    .into_iter()
    .map(|(network, what)| (network.parse().expect("a valid network"), what))
    .collect()
});

/// The refused block `address` itself lies in (no embedded address looked
/// at), and what it is; `None` for a globally reachable address.
fn block_of(address: IpAddr) -> Option<(IpNetwork, &'static str)> {
    let address = address.to_canonical();
    let (network, what) = BLOCKS.iter().find(|(network, _)| network.contains(address))?;
    what.map(|what| (*network, what))
}

/// The refused block `ip` reaches (itself, or an embedded IPv4 address, see
/// [`reached`]), and what it is; `None` for a globally reachable address.
/// The machine's own addresses are not looked at here.
pub fn special_range(ip: IpAddr) -> Option<(IpNetwork, &'static str)> {
    reached(ip).into_iter().find_map(|r| block_of(r.address))
}

/// Why an address is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Why {
    /// It lies in this block, which is this kind of address.
    Block(IpNetwork, &'static str),
    /// It is one of the machine's own.
    Own,
}

/// A refused address: which address reached, and why.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Blocked {
    reached: Reached,
    why: Why,
}

impl Blocked {
    fn refusal(&self, destination: &Destination, ip: IpAddr) -> Refusal {
        let via = match self.reached.form {
            Some(form) => format!(" ({form} {})", self.reached.address),
            None => String::new(),
        };
        let (what, network) = match self.why {
            Why::Block(network, what) => (format!("{what} address"), network.to_string()),
            Why::Own => {
                let bits = if self.reached.address.is_ipv4() { 32 } else { 128 };
                ("an address of the harness's own machine".to_string(), format!("{}/{bits}", self.reached.address))
            }
        };
        Refusal(format!(
            "{destination} resolves to {ip}{via}, {what}: refused; the operator's \
             `[host] allow_private_networks = [\"{network}\"]` allows it"
        ))
    }
}

/// Why `settings` refuse a connection to `ip`, `own` being the machine's
/// own addresses: every address it reaches ([`reached`]) must be globally
/// reachable ([`special_range`]) and none of `own`, or lie in one of
/// `allow_private_networks` (as may `ip` itself).
fn blocked(settings: &OutboundSettings, ip: IpAddr, own: &[IpAddr]) -> Option<Blocked> {
    let allowed = |address: IpAddr| settings.allow_private_networks.iter().any(|n| n.contains(address));
    if allowed(ip) {
        return None;
    }
    let reached = reached(ip);
    let in_block = reached.iter().filter(|r| !allowed(r.address)).find_map(|r| {
        block_of(r.address).map(|(network, what)| Blocked { reached: *r, why: Why::Block(network, what) })
    });
    // `ip` itself too: an IPv6 address of the machine may embed an IPv4 one.
    let itself = Reached { address: ip.to_canonical(), form: None };
    in_block.or_else(|| {
        reached
            .iter()
            .chain([&itself])
            .find(|r| !allowed(r.address) && own.contains(&r.address.to_canonical()))
            .map(|r| Blocked { reached: *r, why: Why::Own })
    })
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
        // A literal loopback or private address: both settings named at once.
        for (url, network) in [("http://127.0.0.1:9000", "127.0.0.1/32"), ("http://[::1]:9000", "::1/128")] {
            let e = policy(&[url], false, &[]).check_uri(&url.parse().unwrap()).unwrap_err().to_string();
            assert!(e.contains("`[host] allow_http = true`") && e.contains("allow_private_networks"), "{e}");
            assert!(e.contains(network), "{e}");
        }
        // ... and not for a public one, nor for one already allowed
        let e = policy(&["http://8.8.8.8"], false, &[]).check_uri(&"http://8.8.8.8".parse().unwrap()).unwrap_err();
        assert!(!e.to_string().contains("allow_private_networks"), "{e}");
        let p = policy(&["http://127.0.0.1:9000"], false, &["127.0.0.0/8"]);
        let e = p.check_uri(&"http://127.0.0.1:9000".parse().unwrap()).unwrap_err();
        assert!(!e.to_string().contains("allow_private_networks"), "{e}");
    }

    fn https(host: &str) -> Destination {
        Destination { scheme: Scheme::Https, host: host.into(), port: 443 }
    }

    /// Addresses that are not globally reachable, each with the block the
    /// refusal must name (an embedded IPv4 address's, for the embedded forms).
    const REFUSED: &[(&str, &str)] = &[
        // IPv4 special-purpose registry
        ("0.0.0.0", "0.0.0.0/8"),
        ("0.1.2.3", "0.0.0.0/8"),
        ("10.1.2.3", "10.0.0.0/8"),
        ("100.64.0.1", "100.64.0.0/10"),
        ("100.127.255.255", "100.64.0.0/10"),
        ("127.0.0.1", "127.0.0.0/8"),
        ("127.255.0.9", "127.0.0.0/8"),
        ("169.254.169.254", "169.254.0.0/16"),
        ("172.16.0.1", "172.16.0.0/12"),
        ("172.31.255.255", "172.16.0.0/12"),
        ("192.0.0.1", "192.0.0.0/24"),
        ("192.0.0.8", "192.0.0.0/24"),
        ("192.0.0.170", "192.0.0.0/24"),
        ("192.0.0.255", "192.0.0.0/24"),
        ("192.0.2.1", "192.0.2.0/24"),
        ("192.168.1.1", "192.168.0.0/16"),
        ("198.18.0.1", "198.18.0.0/15"),
        ("198.19.255.255", "198.18.0.0/15"),
        ("198.51.100.7", "198.51.100.0/24"),
        ("203.0.113.9", "203.0.113.0/24"),
        ("224.0.0.1", "224.0.0.0/4"),
        ("239.255.255.250", "224.0.0.0/4"),
        ("240.0.0.1", "240.0.0.0/4"),
        ("255.255.255.254", "240.0.0.0/4"),
        ("255.255.255.255", "255.255.255.255/32"),
        // IPv6 special-purpose registry
        ("::", "::/128"),
        ("::1", "::1/128"),
        ("::2", "::/96"),
        ("::a00:1", "::/96"),
        ("64:ff9b:1::1", "64:ff9b:1::/48"),
        ("64:ff9b:1::808:808", "64:ff9b:1::/48"),
        ("100::1", "100::/64"),
        ("2001:2::1", "2001:2::/48"),
        ("2001:10::1", "2001:10::/28"),
        ("2001:100::1", "2001::/23"),
        ("2001:1::3", "2001::/23"),
        ("2001:db8::1", "2001:db8::/32"),
        ("2001:db8:ffff::1", "2001:db8::/32"),
        ("3fff::1", "3fff::/20"),
        ("3fff:fff::1", "3fff::/20"),
        ("5f00::1", "5f00::/16"),
        ("fc00::1", "fc00::/7"),
        ("fd12:3456::1", "fc00::/7"),
        ("fe80::1", "fe80::/10"),
        ("febf::1", "fe80::/10"),
        ("fec0::1", "fec0::/10"),
        ("ff02::1", "ff00::/8"),
        ("ff0e::1", "ff00::/8"),
        // outside global unicast 2000::/3
        ("1::1", "::/8"),
        ("64:ff9b:2::1", "::/8"),
        ("100:1::1", "100::/8"),
        ("4000::1", "4000::/3"),
        ("e000::1", "e000::/4"),
        ("fe00::1", "fe00::/9"),
        // IPv4 embedded in IPv6: judged as that IPv4 address
        ("::ffff:127.0.0.1", "127.0.0.0/8"),
        ("::ffff:169.254.169.254", "169.254.0.0/16"),
        ("::ffff:192.0.2.1", "192.0.2.0/24"),
        ("::ffff:0:10.0.0.1", "10.0.0.0/8"),
        ("::ffff:0:a9fe:a9fe", "169.254.0.0/16"),
        ("64:ff9b::a00:1", "10.0.0.0/8"),
        ("64:ff9b::127.0.0.1", "127.0.0.0/8"),
        ("64:ff9b::198.51.100.1", "198.51.100.0/24"),
        ("2002:a00:1::1", "10.0.0.0/8"),
        ("2002:7f00:1::", "127.0.0.0/8"),
        ("2002:c000:201::1", "192.0.2.0/24"),
        // Teredo: the server (bits 32..64), then the client (inverted)
        ("2001:0:a00:1::f7f7:f7f7", "10.0.0.0/8"),
        ("2001:0:808:808::f5ff:fffe", "10.0.0.0/8"),
        ("2001:0:808:808:8000:0:3f57:fefe", "192.168.0.0/16"),
    ];

    /// Globally reachable addresses, some right next to a refused block.
    const GLOBAL: &[&str] = &[
        "8.8.8.8",
        "1.1.1.1",
        "9.9.9.9",
        "11.0.0.1",
        "100.63.255.255",
        "100.128.0.1",
        "126.255.255.255",
        "128.0.0.1",
        "169.253.255.255",
        "172.15.255.255",
        "172.32.0.1",
        "192.0.0.9",
        "192.0.0.10",
        "192.0.1.1",
        "192.0.3.1",
        "192.167.255.255",
        "198.17.255.255",
        "198.20.0.1",
        "198.51.99.1",
        "198.51.101.1",
        "203.0.112.1",
        "203.0.114.1",
        "223.255.255.255",
        "2606:4700::1111",
        "2001:4860:4860::8888",
        "2620:fe::fe",
        "2001:1::1",
        "2001:1::2",
        "2001:3::1",
        "2001:4:112::1",
        "2001:20::1",
        "2001:30::1",
        "2001:200::1",
        "2001:db9::1",
        "3fff:1000::1",
        "2a00:1450:4001::200e",
        // embedded forms of a global IPv4 address
        "::ffff:8.8.8.8",
        "::ffff:0:8.8.8.8",
        "64:ff9b::8.8.8.8",
        "64:ff9b::1.1.1.1",
        "2002:808:808::1",
        "2001:0:808:808::f7f7:f7f7",
    ];

    #[test]
    fn every_address_that_is_not_globally_reachable_is_refused_unless_allowed() {
        let p = policy(&[], true, &[]);
        let d = https("relay.example.com");
        for &(ip, network) in REFUSED {
            let addr: IpAddr = ip.parse().unwrap();
            let e = p.check_address_among(&d, addr, &[]).unwrap_err().to_string();
            assert!(e.starts_with(&format!("https://relay.example.com:443 resolves to {addr}")), "{ip}: {e}");
            assert!(e.contains(" address: refused; "), "{ip}: {e}");
            assert!(e.contains(&format!("`[host] allow_private_networks = [\"{network}\"]` allows it")), "{ip}: {e}");
            assert!(special_range(addr).is_some(), "{ip}");
            // allowed by the network the message suggests
            let allowed = policy(&[], true, &[network]);
            assert!(allowed.check_address_among(&d, addr, &[]).is_ok(), "{ip} with {network}");
            // (a Teredo address embeds two: the other one is global here)
            let teredo = ip.starts_with("2001:0:");
            assert!(teredo || allowed.settings().allows_network_of(addr), "{ip} with {network}");
        }
        for &ip in GLOBAL {
            let addr: IpAddr = ip.parse().unwrap();
            assert_eq!(special_range(addr), None, "{ip} is globally reachable");
            assert!(p.check_address_among(&d, addr, &[]).is_ok(), "{ip} is globally reachable");
        }
    }

    #[test]
    fn a_refusal_names_the_embedded_address_and_what_it_is() {
        let p = policy(&[], true, &[]);
        let d = https("relay.example.com");
        let said = |ip: &str| p.check_address_among(&d, ip.parse().unwrap(), &[]).unwrap_err().to_string();
        assert_eq!(
            said("127.0.0.1"),
            "https://relay.example.com:443 resolves to 127.0.0.1, a loopback address: refused; the operator's \
             `[host] allow_private_networks = [\"127.0.0.0/8\"]` allows it"
        );
        assert!(said("::ffff:127.0.0.1").contains("resolves to ::ffff:127.0.0.1 (IPv4-mapped 127.0.0.1), a loopback"));
        assert!(said("64:ff9b::a00:1").contains("resolves to 64:ff9b::a00:1 (NAT64 10.0.0.1), a private (RFC 1918)"));
        assert!(said("::ffff:0:a00:1").contains("(IPv4-translated 10.0.0.1), a private"));
        assert!(said("2002:a00:1::1").contains("(6to4 10.0.0.1), a private"));
        assert!(said("2001:0:a00:1::f7f7:f7f7").contains("(Teredo server 10.0.0.1), a private"));
        assert!(said("2001:0:808:808::f5ff:fffe").contains("(Teredo client 10.0.0.1), a private"));
        assert!(said("198.51.100.7").contains("a documentation (TEST-NET-2) address"));
        assert!(said("2001:db8::1").contains("resolves to 2001:db8::1, a documentation address"));
    }

    #[test]
    fn an_allowed_ipv4_network_allows_its_embedded_forms() {
        let p = policy(&[], true, &["10.0.0.0/8"]);
        let d = https("relay.example.com");
        let ok = |ip: &str| p.check_address_among(&d, ip.parse().unwrap(), &[]).is_ok();
        for ip in ["10.0.0.1", "::ffff:10.0.0.1", "::ffff:0:10.0.0.1", "64:ff9b::a00:1", "2002:a00:1::1"] {
            assert!(ok(ip), "{ip}");
        }
        // Teredo: both ends must be allowed (or global)
        assert!(ok("2001:0:a00:1::f5ff:fffe") && ok("2001:0:a00:1::f7f7:f7f7"));
        let e = p.check_address_among(&d, "2001:0:a00:1::".parse().unwrap(), &[]).unwrap_err().to_string();
        assert!(e.contains("(Teredo client 255.255.255.255)") && e.contains("[\"255.255.255.255/32\"]"), "{e}");
        // the local-use NAT64 prefix is the operator's own translator: refused as a whole
        assert!(!ok("64:ff9b:1::a00:1"));
        assert!(!ok("172.16.0.1") && !ok("64:ff9b::ac10:1") && !ok("::1"));
        // an allowed IPv6 network allows what it contains, embedded or not
        let p = policy(&[], true, &["2002::/16"]);
        assert!(p.check_address_among(&d, "2002:a00:1::1".parse().unwrap(), &[]).is_ok());
    }

    #[test]
    fn the_machines_own_addresses_are_refused_unless_allowed() {
        let own: Vec<IpAddr> = ["203.0.114.7", "2a00:1450:4001::7"].iter().map(|a| a.parse().unwrap()).collect();
        let p = policy(&[], true, &[]);
        let d = https("relay.example.com");
        let check = |p: &OutboundPolicy, ip: &str| p.check_address_among(&d, ip.parse().unwrap(), &own);
        let e = check(&p, "203.0.114.7").unwrap_err().to_string();
        assert_eq!(
            e,
            "https://relay.example.com:443 resolves to 203.0.114.7, an address of the harness's own machine: \
             refused; the operator's `[host] allow_private_networks = [\"203.0.114.7/32\"]` allows it"
        );
        let e = check(&p, "2a00:1450:4001::7").unwrap_err().to_string();
        assert!(e.contains("own machine") && e.contains("[\"2a00:1450:4001::7/128\"]"), "{e}");
        // its embedded forms reach it too
        for ip in ["::ffff:203.0.114.7", "64:ff9b::cb00:7207", "2002:cb00:7207::1", "::ffff:0:203.0.114.7"] {
            let e = check(&p, ip).unwrap_err().to_string();
            assert!(e.contains("(") && e.contains(" 203.0.114.7), an address of the harness's own machine"), "{e}");
        }
        // its neighbours are public addresses like any
        assert!(check(&p, "203.0.114.8").is_ok() && check(&p, "2a00:1450:4001::8").is_ok());
        // a network listing it allows it
        let allowed = policy(&[], true, &["203.0.114.0/24"]);
        assert!(check(&allowed, "203.0.114.7").is_ok() && check(&allowed, "64:ff9b::cb00:7207").is_ok());
        assert!(check(&allowed, "2a00:1450:4001::7").is_err());
        // a block's refusal comes first
        let own = ["10.1.2.3".parse().unwrap()];
        let e = p.check_address_among(&d, "10.1.2.3".parse().unwrap(), &own).unwrap_err().to_string();
        assert!(e.contains("a private (RFC 1918) address"), "{e}");
    }

    #[test]
    fn a_connection_whose_ends_have_one_address_is_refused_as_the_machines_own() {
        let p = policy(&[], true, &[]);
        let d = https("relay.example.com");
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let e = p.check_connection(&d, ip("203.0.114.7"), ip("203.0.114.7")).unwrap_err().to_string();
        assert!(e.contains("resolves to 203.0.114.7, an address of the harness's own machine"), "{e}");
        assert!(p.check_connection(&d, ip("::ffff:203.0.114.7"), ip("203.0.114.7")).is_err());
        assert!(p.check_connection(&d, ip("203.0.114.7"), ip("198.51.100.9")).is_ok(), "from another address");
        let loopback = policy(&[], true, &["127.0.0.0/8"]);
        assert!(loopback.check_connection(&d, ip("127.0.0.1"), ip("127.0.0.1")).is_ok(), "allowed");
    }

    #[test]
    fn every_address_of_this_machines_interfaces_is_refused() {
        let p = policy(&[], true, &[]);
        let d = https("relay.example.com");
        let all = interfaces::read().expect("getifaddrs");
        let mine: Vec<IpAddr> = all.iter().copied().filter(|a| !a.is_loopback()).collect();
        if mine.is_empty() {
            eprintln!("skipped: no interface address but loopback ({all:?})");
            return;
        }
        let cached = interfaces::own_addresses();
        for address in mine {
            assert!(cached.contains(&address), "{address} is not among {cached:?}");
            let e = p.check_address(&d, address).expect_err("an interface address").to_string();
            if special_range(address).is_none() {
                assert!(e.contains("own machine"), "{address}: {e}");
            }
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
