//! Outbound HTTP for a tenant: where it may go ([`policy`]: its own
//! `base_url` and `devo_url`, scheme, host and port each; plain http and
//! private networks only where the operator allows them), how a request is
//! sent ([`connect`]: the address is checked at connect time, against the
//! special-purpose registries and the machine's own addresses,
//! [`interfaces`]; [`tls`]: the CAs https trusts) and what the guest reads back ([`body`]: a bounded
//! response body; [`pool`]: keep-alive connections shared by the tenants
//! of a runtime, and why that is safe). The hook below
//! joins them for wasi-http: a refused request fails with
//! `HttpRequestDenied`, and the reason goes to the tick's warnings. It also
//! bounds the requests one tick has in flight
//! ([`MAX_REQUESTS_IN_FLIGHT`]), each holding a connection in the host.

pub mod body;
pub mod connect;
pub mod interfaces;
pub mod network;
pub mod policy;
pub mod pool;
pub mod tls;

pub use self::network::IpNetwork;
pub use self::policy::{
    OutboundPolicy, OutboundSettings, Refusal, DEFAULT_RESPONSE_BODY_BYTES, MAX_REQUESTS_IN_FLIGHT,
};
pub use self::pool::{ConnectionPool, ConnectionStats, PoolLimits};
pub use self::tls::TlsTrust;

use self::connect::Failure;
use self::policy::Destination;
use std::future::Future;
use wasmtime_wasi_http::{RequestOptions, WasiBody, WasiHttpHooks};

type SendFuture = Box<
    dyn Future<
            Output = wasmtime_wasi_http::Result<(
                http::Response<WasiBody>,
                Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
            )>,
        > + Send,
>;

/// The most bytes one write to an outgoing body may carry. wasi-http buffers
/// up to two such writes per body on the host until the request is sent (or
/// forever, if it never is); its default of 1 MiB would let a guest park
/// gigabytes in the host through bodies it never sends. The collector
/// writes 4 KiB at a time.
pub const OUTGOING_BODY_CHUNK_BYTES: usize = 16 << 10;

impl WasiHttpHooks for OutboundPolicy {
    fn p2_outgoing_body_chunk_size(&mut self) -> usize {
        OUTGOING_BODY_CHUNK_BYTES
    }

    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _fut: Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
    ) -> SendFuture {
        let destination = match self.check_uri(request.uri()) {
            Ok(d) => d,
            Err(refusal) => {
                self.refusals.record(&refusal);
                return Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) });
            }
        };
        // Taken here, synchronously in the guest's `handle` call, so a guest
        // that starts a flood gets its refusals at once, in order.
        let slot = match self.take_request_slot() {
            Ok(slot) => slot,
            Err(refusal) => {
                self.refusals.record(&refusal);
                return Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) });
            }
        };
        let options = self.capped(options);
        let policy = self.clone();
        Box::new(async move {
            let permit = |ip, local: Option<_>| match local {
                None => policy.check_address(&destination, ip),
                Some(local) => policy.check_connection(&destination, ip, local),
            };
            let limit = policy.settings().response_body_bytes;
            let tls = policy.settings().tls.client_config();
            match connect::send(request, &destination, options, permit, limit, tls, &policy.pool).await {
                Ok((response, io)) => {
                    // The slot lives as long as the connection: wasi-http
                    // drives `io` until the body is read, and drops it (with
                    // the slot) when the guest drops the response or its
                    // body, or the tick ends. Released at the response head,
                    // a guest could hold connections open without bound by
                    // never reading the bodies. On every other path the slot
                    // goes with this future.
                    let io = async move {
                        let _slot = slot;
                        io.await
                    };
                    Ok((response, Box::new(io) as Box<dyn Future<Output = _> + Send>))
                }
                Err(Failure::Refused(refusal)) => {
                    policy.refusals.record(&refusal);
                    Err(wasmtime_wasi_http::Error::HttpRequestDenied)
                }
                Err(Failure::Handshake(e)) => {
                    policy.refusals.record(&handshake_warning(&destination, &e));
                    Err(wasmtime_wasi_http::Error::Tls(e))
                }
                Err(Failure::Http(e)) => Err(e),
            }
        })
    }
}

/// What the tick's warnings say when the TLS handshake with `destination`
/// failed: the guest only learns "TLS protocol error", the operator needs
/// the reason (an unknown issuer, an expired certificate, a name mismatch).
fn handshake_warning(destination: &Destination, error: &std::io::Error) -> Refusal {
    let reason = crate::guest_text::message(&error.to_string());
    let hint = if reason.contains("UnknownIssuer") {
        "; if the server's certificate comes from a private CA, the operator's \
         `[host] extra_ca_certificates` names a PEM file of CA certificates to trust"
    } else {
        ""
    };
    Refusal::new(format!("TLS handshake with {destination} failed: {reason}{hint}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http_body_util::{BodyExt, Empty};
    use std::io::{Read, Write};
    use std::net::TcpListener;
    use std::pin::Pin;
    use std::sync::{Arc, Condvar, Mutex};
    use std::time::Duration;

    type Io = Pin<Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>>;

    /// A server on loopback that answers every request with the head of a
    /// two-byte response at once and its body only once `release` is set,
    /// so each connection stays open, response head delivered, until then.
    fn held_server() -> (String, Arc<(Mutex<bool>, Condvar)>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let release = Arc::new((Mutex::new(false), Condvar::new()));
        let released = Arc::clone(&release);
        std::thread::spawn(move || {
            for mut stream in listener.incoming().flatten() {
                let released = Arc::clone(&released);
                std::thread::spawn(move || {
                    let mut request = Vec::new();
                    let mut buf = [0; 1024];
                    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut buf) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => request.extend_from_slice(&buf[..n]),
                        }
                    }
                    let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n");
                    let (lock, cvar) = &*released;
                    let _go = cvar.wait_while(lock.lock().unwrap(), |go| !*go).unwrap();
                    let _ = stream.write_all(b"ok");
                });
            }
        });
        (url, release)
    }

    async fn send(
        policy: &mut OutboundPolicy,
        url: &str,
    ) -> wasmtime_wasi_http::Result<(http::Response<WasiBody>, Io)> {
        let body = Empty::<Bytes>::new().map_err(|e| match e {}).boxed_unsync();
        let request = http::Request::get(format!("{url}/")).body(body).unwrap();
        let (response, io) = Pin::from(policy.send_request(request, None, Box::new(async { Ok(()) }))).await?;
        Ok((response, Pin::from(io)))
    }

    #[tokio::test]
    async fn a_request_holds_its_slot_until_its_connection_is_done() {
        let (url, release) = held_server();
        let settings = OutboundSettings {
            allow_http: true,
            allow_private_networks: vec!["127.0.0.0/8".parse().unwrap()],
            ..OutboundSettings::default()
        };
        let mut policy = OutboundPolicy::for_urls([url.as_str()], Arc::new(settings), Duration::from_secs(5));

        // Every slot taken by a request whose head arrived and whose body
        // has not: the connections are still open.
        let mut held = Vec::new();
        for _ in 0..MAX_REQUESTS_IN_FLIGHT {
            let (response, io) = send(&mut policy, &url).await.expect("within the cap");
            assert_eq!(response.status(), 200);
            held.push((response, io));
        }
        let refused = send(&mut policy, &url).await.err().expect("one more is refused");
        assert!(matches!(refused, wasmtime_wasi_http::Error::HttpRequestDenied), "{refused:?}");
        let refusals = policy.refusals.list();
        assert!(
            refusals.iter().any(|r| r.starts_with(&format!("more than {MAX_REQUESTS_IN_FLIGHT} requests in flight"))),
            "{refusals:?}"
        );

        // Dropping a response with its connection (what wasi-http does when
        // the guest drops it) frees its slot, and only that one.
        drop(held.pop());
        held.push(send(&mut policy, &url).await.expect("a slot was freed"));
        assert!(send(&mut policy, &url).await.is_err(), "only one slot was freed");

        // So does a connection that ends: its body read to the end.
        *release.0.lock().unwrap() = true;
        release.1.notify_all();
        let (response, io) = held.pop().unwrap();
        let (body, done) = tokio::join!(response.into_body().collect(), io);
        assert_eq!(body.unwrap().to_bytes(), "ok");
        done.unwrap();
        assert!(send(&mut policy, &url).await.is_ok(), "the finished connection's slot is free");
    }
}
