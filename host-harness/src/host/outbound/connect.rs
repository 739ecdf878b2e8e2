//! Sends one allowed request, on a pooled connection ([`super::pool`]) or a
//! new one: resolves its host, connects only to an
//! address the policy permits (checked on the very address connected to, so
//! a second lookup cannot answer differently: no DNS rebinding; and once
//! more with the connection's own end, so one to the machine itself is not
//! used), with
//! TCP_NODELAY, then TLS for https (rustls, the stack wasmtime-wasi-http's
//! own sender uses, trusting [`super::tls::TlsTrust`]'s roots) and HTTP/1.1
//! over hyper, under the
//! request's connect, first-byte and between-bytes timeouts. The response
//! body is bounded (see [`super::body`]).

use super::body::{CappedBody, TimedBody};
use super::policy::{Destination, Refusal, Scheme};
use super::pool::{ConnectionPool, PoolKey, Pooled, ReturningBody};
use http_body_util::BodyExt;
use rustls::pki_types::ServerName;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::{timeout, timeout_at, Instant};
use wasmtime_wasi_http::io::TokioIo;
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody};

/// Why a request did not get a response.
#[derive(Debug)]
pub enum Failure {
    /// The policy refused every address the host resolved to.
    Refused(Refusal),
    /// The TLS handshake failed: the guest gets wasi-http's TLS error, the
    /// tick's warnings the reason.
    Handshake(std::io::Error),
    /// Anything else, as wasi-http reports it to the guest.
    Http(Error),
}

impl From<Error> for Failure {
    fn from(e: Error) -> Failure {
        Failure::Http(e)
    }
}

/// What wasi-http keeps with the response until its body is done: it ends
/// when the body was read to its end, failed, or was dropped (the
/// connection itself is driven by a task of its own, see [`super::pool`]).
pub type Io = Pin<Box<dyn Future<Output = Result<(), Error>> + Send>>;

/// A plain or TLS stream, one type for hyper.
trait Stream: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Stream for T {}

/// Sends `request` to `destination` (already allowed by
/// [`check_uri`](super::OutboundPolicy::check_uri)) on an idle connection
/// of `pool` or a new one, connecting only to addresses `permit` accepts
/// (`permit(ip, None)` before the connect, and `permit(ip, Some(local))`
/// after it, with the connection's local address; a pooled connection is
/// checked both ways before it is used); the body of the response ends
/// with an error past `body_limit` bytes. Timeouts are [`RequestOptions`]'
/// (all set: the policy caps them); `tls` verifies an https server.
pub async fn send(
    mut request: http::Request<WasiBody>,
    destination: &Destination,
    options: RequestOptions,
    permit: impl Fn(IpAddr, Option<IpAddr>) -> Result<(), Refusal>,
    body_limit: u64,
    tls: Arc<rustls::ClientConfig>,
    pool: &Arc<ConnectionPool>,
) -> Result<(http::Response<WasiBody>, Io), Failure> {
    let long = Duration::from_secs(600);
    let connect_timeout = options.connect_timeout.unwrap_or(long);
    let first_byte = options.first_byte_timeout.unwrap_or(long);
    let between_bytes = options.between_bytes_timeout.unwrap_or(long);

    // The request line carries the path only; hyper does not strip the
    // scheme and authority wasi-http leaves in the URI (the Host header is
    // already set).
    let path = request.uri().path_and_query().map_or("/", |p| p.as_str()).to_owned();
    *request.uri_mut() = http::Uri::builder().path_and_query(path).build().map_err(|_| Error::HttpRequestUriInvalid)?;

    let key = PoolKey::new(destination, &tls);
    let (mut connection, mut reused) = match pool.take(&key, &permit) {
        Some(connection) => (connection, true),
        None => (open(destination, connect_timeout, &permit, &tls, pool).await?, false),
    };
    let response = loop {
        // Dropped at the timeout, the request future makes hyper close the
        // connection (HTTP/1.1 cannot cancel one request and keep it).
        match timeout(first_byte, connection.sender.try_send_request(request)).await {
            Err(_) => return Err(Error::ConnectionReadTimeout.into()),
            Ok(Ok(response)) => break response,
            Ok(Err(mut e)) => match e.take_message() {
                // Never written: the pooled connection had closed (the
                // server's idle timeout, most likely). Once on a new one.
                Some(unsent) if reused => {
                    request = unsent;
                    connection = open(destination, connect_timeout, &permit, &tls, pool).await?;
                    reused = false;
                }
                _ => {
                    let e = e.into_error();
                    return Err(if e.is_timeout() { Error::HttpResponseTimeout } else { Error::from(e) }.into());
                }
            },
        }
    };
    // HTTP/1.1 keeps the connection unless the server says it closes it.
    let keep = response.version() == http::Version::HTTP_11
        && !response
            .headers()
            .get_all(http::header::CONNECTION)
            .iter()
            .any(|v| v.to_str().is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("close"))));
    let (done, ended) = tokio::sync::oneshot::channel();
    let response = response.map(|incoming| {
        let returning = ReturningBody::new(incoming, Arc::clone(pool), key, connection, keep, done);
        CappedBody::new(TimedBody::new(returning, between_bytes), body_limit).boxed_unsync()
    });
    let io: Io = Box::pin(async move {
        let _ = ended.await;
        Ok(())
    });
    Ok((response, io))
}

/// A new connection to `destination` (resolved, checked, connected, TLS for
/// https), driven by a task of its own, within `connect_timeout`.
async fn open(
    destination: &Destination,
    connect_timeout: Duration,
    permit: &impl Fn(IpAddr, Option<IpAddr>) -> Result<(), Refusal>,
    tls: &Arc<rustls::ClientConfig>,
    pool: &ConnectionPool,
) -> Result<Pooled, Failure> {
    // One deadline for resolving, connecting and the TLS handshake.
    let deadline = Instant::now() + connect_timeout;
    let tcp = connect(destination, deadline, permit).await?;
    let (peer, local) = (tcp.peer_addr().map_err(Error::Connect)?, tcp.local_addr().map_err(Error::Connect)?);
    let stream: Box<dyn Stream> = match destination.scheme {
        Scheme::Http => Box::new(tcp),
        Scheme::Https => {
            let name = ServerName::try_from(destination.host.as_str()).map_err(Error::InvalidDnsNameError)?.to_owned();
            // The runtime's one configuration: its session cache lets a
            // new connection to a server resume an earlier session.
            let tls = tokio_rustls::TlsConnector::from(Arc::clone(tls));
            match timeout_at(deadline, tls.connect(name, tcp)).await {
                Ok(stream) => Box::new(stream.map_err(Failure::Handshake)?),
                Err(_) => return Err(Error::ConnectionTimeout.into()),
            }
        }
    };
    let (sender, connection) =
        timeout_at(deadline, hyper::client::conn::http1::handshake::<_, WasiBody>(TokioIo::new(stream)))
            .await
            .map_err(|_| Error::ConnectionTimeout)?
            .map_err(Error::from)?;
    pool.opened();
    Ok(Pooled::spawn(sender, connection, peer, local, pool.limits().idle_timeout))
}

/// A TCP connection to the first address of `destination`'s host that
/// `permit` accepts and that answers. Refused only when no address was
/// permitted; a permitted address that does not answer is a connect error.
/// A connection `permit` refuses once made (by its local end, see [`send`])
/// is closed before anything is written to it.
async fn connect(
    destination: &Destination,
    deadline: Instant,
    permit: &impl Fn(IpAddr, Option<IpAddr>) -> Result<(), Refusal>,
) -> Result<TcpStream, Failure> {
    let lookup = tokio::net::lookup_host((destination.host.as_str(), destination.port));
    let addresses: Vec<SocketAddr> = match timeout_at(deadline, lookup).await {
        Ok(Ok(addresses)) => addresses.collect(),
        // As wasi-http's own sender reports a failed lookup.
        Ok(Err(_)) => return Err(no_address().into()),
        Err(_) => return Err(Error::DnsTimeout.into()),
    };
    let mut refused = None;
    let mut failed = None;
    for address in addresses {
        if let Err(refusal) = permit(address.ip(), None) {
            refused.get_or_insert(refusal);
            continue;
        }
        match timeout_at(deadline, TcpStream::connect(address)).await {
            Ok(Ok(stream)) => {
                // The kernel routes a connection to one of the machine's own
                // addresses over loopback, from that same address.
                let local = stream.local_addr().map_err(Error::Connect)?;
                if let Err(refusal) = permit(address.ip(), Some(local.ip())) {
                    refused.get_or_insert(refusal);
                    continue;
                }
                // Requests are written in a few small pieces (head, then
                // body): without NODELAY, Nagle's algorithm holds the body
                // back until the peer's delayed ACK, some 40 ms per request.
                // Failing to set it costs latency only, so it is not an error.
                let _ = stream.set_nodelay(true);
                return Ok(stream);
            }
            Ok(Err(e)) => failed = Some(e),
            Err(_) => return Err(Error::ConnectionTimeout.into()),
        }
    }
    match (failed, refused) {
        (Some(e), _) => Err(Error::Connect(e).into()),
        (None, Some(refusal)) => Err(Failure::Refused(refusal)),
        (None, None) => Err(no_address().into()),
    }
}

fn no_address() -> Error {
    Error::DnsError { rcode: Some("address not available".into()), info_code: None }
}

#[cfg(test)]
mod tests {
    use super::super::policy::OutboundPolicy;
    use super::super::pool::PoolLimits;
    use super::super::OutboundSettings;
    use super::*;
    use std::io::Read;

    fn policy(networks: &[&str]) -> OutboundPolicy {
        let settings = OutboundSettings {
            allow_http: true,
            allow_private_networks: networks.iter().map(|n| n.parse().unwrap()).collect(),
            ..OutboundSettings::default()
        };
        OutboundPolicy::for_urls([], Arc::new(settings), Duration::from_secs(5))
    }

    /// Connects to a loopback listener with every address permitted before
    /// the connect, and `policy` judging the connection made; also says
    /// what the listener read of a refused one.
    async fn connect_checked(policy: &OutboundPolicy) -> (Result<TcpStream, Failure>, Vec<u8>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let reader = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut read = Vec::new();
            let _ = stream.read_to_end(&mut read);
            read
        });
        let destination = Destination { scheme: Scheme::Http, host: "127.0.0.1".into(), port };
        let permit = |ip, local: Option<IpAddr>| match local {
            None => Ok(()),
            Some(local) => policy.check_connection(&destination, ip, local),
        };
        let connected = connect(&destination, Instant::now() + Duration::from_secs(5), &permit).await;
        // A refused connection is closed: the listener reads to its end.
        let read = match &connected {
            Ok(_) => Vec::new(),
            Err(_) => reader.join().unwrap(),
        };
        (connected, read)
    }

    #[tokio::test]
    async fn a_connection_to_the_machine_itself_is_closed_unused_unless_allowed() {
        let (refused, read) = connect_checked(&policy(&[])).await;
        match refused {
            Err(Failure::Refused(r)) => assert!(r.to_string().contains("resolves to 127.0.0.1, a loopback"), "{r}"),
            other => panic!("not refused: {:?}", other.map(|_| "connected")),
        }
        assert!(read.is_empty(), "bytes reached the listener: {read:?}");
        let (allowed, _) = connect_checked(&policy(&["127.0.0.0/8"])).await;
        assert!(allowed.is_ok(), "{:?}", allowed.err());
    }

    /// A keep-alive HTTP/1.1 server on loopback answering `ok` to each
    /// request; counts the connections it accepted and those the client
    /// closed.
    struct KeepAliveServer {
        port: u16,
        accepted: Arc<std::sync::atomic::AtomicUsize>,
        closed: Arc<std::sync::atomic::AtomicUsize>,
    }

    impl KeepAliveServer {
        fn start() -> KeepAliveServer {
            use std::io::Write;
            use std::sync::atomic::{AtomicUsize, Ordering};
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let port = listener.local_addr().unwrap().port();
            let (accepted, closed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
            let (a, c) = (Arc::clone(&accepted), Arc::clone(&closed));
            std::thread::spawn(move || {
                for mut stream in listener.incoming().flatten() {
                    a.fetch_add(1, Ordering::SeqCst);
                    let c = Arc::clone(&c);
                    std::thread::spawn(move || {
                        let mut pending = Vec::new();
                        let mut buf = [0; 1024];
                        loop {
                            while let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                                pending.drain(..end + 4);
                                if stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").is_err() {
                                    break;
                                }
                            }
                            match stream.read(&mut buf) {
                                Ok(0) | Err(_) => break,
                                Ok(n) => pending.extend_from_slice(&buf[..n]),
                            }
                        }
                        c.fetch_add(1, Ordering::SeqCst);
                    });
                }
            });
            KeepAliveServer { port, accepted, closed }
        }

        fn destination(&self) -> Destination {
            Destination { scheme: Scheme::Http, host: "127.0.0.1".into(), port: self.port }
        }

        fn accepted(&self) -> usize {
            self.accepted.load(std::sync::atomic::Ordering::SeqCst)
        }

        /// Connections the client closed, once at least `n` are (or after 5
        /// s; the runtime's tasks run meanwhile).
        async fn closed_reaching(&self, n: usize) -> usize {
            let until = std::time::Instant::now() + Duration::from_secs(5);
            while self.closed.load(std::sync::atomic::Ordering::SeqCst) < n && std::time::Instant::now() < until {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            self.closed.load(std::sync::atomic::Ordering::SeqCst)
        }
    }

    fn get(destination: &Destination) -> http::Request<WasiBody> {
        use bytes::Bytes;
        use http_body_util::Empty;
        let body = Empty::<Bytes>::new().map_err(|e| match e {}).boxed_unsync();
        let url = format!("http://{}:{}/", destination.host, destination.port);
        http::Request::get(url).header("host", "127.0.0.1").body(body).unwrap()
    }

    fn allow_all(_: IpAddr, _: Option<IpAddr>) -> Result<(), Refusal> {
        Ok(())
    }

    /// Sends a GET with `permit` and reads the whole body.
    async fn get_ok(
        server: &KeepAliveServer,
        pool: &Arc<ConnectionPool>,
        permit: impl Fn(IpAddr, Option<IpAddr>) -> Result<(), Refusal>,
    ) -> Result<String, Failure> {
        let d = server.destination();
        let tls = crate::host::outbound::TlsTrust::default().client_config();
        let (response, io) = send(get(&d), &d, RequestOptions::default(), permit, 1 << 20, tls, pool).await?;
        let (body, _) = tokio::join!(response.into_body().collect(), io);
        Ok(String::from_utf8(body.expect("the body").to_bytes().to_vec()).unwrap())
    }

    #[tokio::test]
    async fn requests_one_after_another_share_one_kept_alive_connection() {
        let server = KeepAliveServer::start();
        let pool = Arc::new(ConnectionPool::default());
        for _ in 0..5 {
            assert_eq!(get_ok(&server, &pool, allow_all).await.map_err(|e| format!("{e:?}")).unwrap(), "ok");
        }
        assert_eq!(server.accepted(), 1, "one connection for five requests");
        let stats = pool.stats();
        assert_eq!((stats.opened, stats.reused, stats.idle), (1, 4, 1), "{stats:?}");

        // A response dropped before its body was read closes its
        // connection: the next request does not read the rest of it.
        let d = server.destination();
        let tls = crate::host::outbound::TlsTrust::default().client_config();
        let (response, io) = send(get(&d), &d, RequestOptions::default(), allow_all, 1 << 20, tls, &pool)
            .await
            .map_err(|e| format!("{e:?}"))
            .unwrap();
        drop((response, io));
        assert_eq!(server.closed_reaching(1).await, 1, "the cut connection was closed");
        assert_eq!(get_ok(&server, &pool, allow_all).await.map_err(|e| format!("{e:?}")).unwrap(), "ok");
        assert_eq!(server.accepted(), 2, "a new connection after the cut one");
    }

    #[tokio::test]
    async fn an_idle_connection_closes_after_the_idle_timeout() {
        let server = KeepAliveServer::start();
        let limits = PoolLimits { idle_timeout: Duration::from_millis(100), ..PoolLimits::default() };
        let pool = Arc::new(ConnectionPool::new(limits));
        get_ok(&server, &pool, allow_all).await.map_err(|e| format!("{e:?}")).unwrap();
        assert_eq!(server.closed_reaching(1).await, 1, "the host closed the idle connection");
        assert_eq!(pool.stats().idle, 0);
        get_ok(&server, &pool, allow_all).await.map_err(|e| format!("{e:?}")).unwrap();
        assert_eq!((server.accepted(), pool.stats().reused), (2, 0));
    }

    #[tokio::test]
    async fn a_pooled_destination_still_checks_each_connection_against_the_takers_rules() {
        let server = KeepAliveServer::start();
        let pool = Arc::new(ConnectionPool::default());
        // One tenant's rules allow loopback: its connection goes idle in the pool.
        get_ok(&server, &pool, allow_all).await.map_err(|e| format!("{e:?}")).unwrap();
        assert_eq!(pool.stats().idle, 1);
        // Another's do not: the pooled connection is not lent to it, and the
        // new connection it would need is refused before connecting.
        let refusing = policy(&[]);
        let d = server.destination();
        let strict = |ip, local: Option<IpAddr>| match local {
            None => refusing.check_address(&d, ip),
            Some(local) => refusing.check_connection(&d, ip, local),
        };
        match get_ok(&server, &pool, strict).await {
            Err(Failure::Refused(r)) => assert!(r.to_string().contains("a loopback"), "{r}"),
            other => panic!("not refused: {:?}", other.map_err(|e| format!("{e:?}"))),
        }
        assert_eq!(server.accepted(), 1, "no new connection was made");
        assert_eq!(pool.stats().reused, 0, "the pooled connection was not used");

        // While a pooled destination's connection is busy, a request needs a
        // new one: it is checked like any other.
        let allowing = policy(&["127.0.0.0/8"]);
        let checked = |ip, local: Option<IpAddr>| match local {
            None => allowing.check_address(&d, ip),
            Some(local) => allowing.check_connection(&d, ip, local),
        };
        let tls = crate::host::outbound::TlsTrust::default().client_config();
        let held = send(get(&d), &d, RequestOptions::default(), allow_all, 1 << 20, Arc::clone(&tls), &pool)
            .await
            .map_err(|e| format!("{e:?}"))
            .unwrap();
        match get_ok(&server, &pool, strict).await {
            Err(Failure::Refused(_)) => {}
            other => panic!("not refused: {:?}", other.map_err(|e| format!("{e:?}"))),
        }
        assert_eq!(get_ok(&server, &pool, checked).await.map_err(|e| format!("{e:?}")).unwrap(), "ok");
        drop(held);
        assert_eq!(server.accepted(), 3, "the held connection, then one more for the allowed request");
    }
}
