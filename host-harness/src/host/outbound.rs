//! Outbound HTTP for a tenant: only to the hosts of its own `base_url` and
//! `devo_url`, with request timeouts the host caps.

use http_body_util::BodyExt;
use std::future::Future;
use std::time::Duration;
use wasmtime_wasi_http::{RequestOptions, WasiBody, WasiHttpHooks};

/// A destination as `(host, port)`, ports filled in from the scheme.
type Destination = (String, u16);

#[derive(Clone, Debug)]
pub struct OutboundPolicy {
    allowed: Vec<Destination>,
    /// Upper bound for each of connect, first-byte and between-bytes waits.
    pub max_timeout: Duration,
}

impl OutboundPolicy {
    /// Allows the hosts of the given base URLs (the tenant's `base_url` and
    /// `devo_url`); values that are not URLs allow nothing.
    pub fn for_urls<'a>(urls: impl IntoIterator<Item = &'a str>, max_timeout: Duration) -> OutboundPolicy {
        let allowed = urls.into_iter().filter_map(destination_of_url).collect();
        OutboundPolicy { allowed, max_timeout }
    }

    pub fn allows(&self, uri: &http::Uri) -> bool {
        let Some(host) = uri.host() else { return false };
        let port = uri.port_u16().unwrap_or(if uri.scheme_str() == Some("http") { 80 } else { 443 });
        let host = host.trim_start_matches('[').trim_end_matches(']').to_ascii_lowercase();
        self.allowed.iter().any(|(h, p)| *h == host && *p == port)
    }

    fn capped(&self, options: Option<RequestOptions>) -> RequestOptions {
        let cap = |t: Option<Duration>| Some(t.map_or(self.max_timeout, |t| t.min(self.max_timeout)));
        let o = options.unwrap_or_default();
        RequestOptions {
            connect_timeout: cap(o.connect_timeout),
            first_byte_timeout: cap(o.first_byte_timeout),
            between_bytes_timeout: cap(o.between_bytes_timeout),
        }
    }
}

fn destination_of_url(url: &str) -> Option<Destination> {
    let uri: http::Uri = url.trim().parse().ok()?;
    let port = uri.port_u16().unwrap_or(match uri.scheme_str()? {
        "http" => 80,
        "https" => 443,
        _ => return None,
    });
    let host = uri.host()?.trim_start_matches('[').trim_end_matches(']').to_ascii_lowercase();
    Some((host, port))
}

type SendFuture = Box<
    dyn Future<
            Output = wasmtime_wasi_http::Result<(
                http::Response<WasiBody>,
                Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
            )>,
        > + Send,
>;

impl WasiHttpHooks for OutboundPolicy {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _fut: Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
    ) -> SendFuture {
        if !self.allows(request.uri()) {
            return Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) });
        }
        let options = self.capped(options);
        Box::new(async move {
            let (response, io) = wasmtime_wasi_http::default_send_request(request, Some(options)).await?;
            Ok((response.map(BodyExt::boxed_unsync), Box::new(io) as Box<dyn Future<Output = _> + Send>))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_configured_hosts_and_ports_pass() {
        let p = OutboundPolicy::for_urls(
            ["https://events.1password.com", "http://127.0.0.1:8080", "not a url"],
            Duration::from_secs(5),
        );
        let ok = |u: &str| p.allows(&u.parse().unwrap());
        assert!(ok("https://events.1password.com/api/v2/auditevents"));
        assert!(ok("https://EVENTS.1password.com:443/x"));
        assert!(ok("http://127.0.0.1:8080/stream"));
        assert!(!ok("http://127.0.0.1:8081/stream"));
        assert!(!ok("https://evil.example.com/"));
        assert!(!ok("https://events.1password.com.evil.example/"));
    }

    #[test]
    fn timeouts_are_capped() {
        let p = OutboundPolicy::for_urls([], Duration::from_secs(5));
        let o = p.capped(Some(RequestOptions {
            connect_timeout: Some(Duration::from_secs(1)),
            first_byte_timeout: Some(Duration::from_secs(60)),
            between_bytes_timeout: None,
        }));
        assert_eq!(o.connect_timeout, Some(Duration::from_secs(1)));
        assert_eq!(o.first_byte_timeout, Some(Duration::from_secs(5)));
        assert_eq!(o.between_bytes_timeout, Some(Duration::from_secs(5)));
    }
}
