//! Sends one allowed request: resolves its host, connects only to an
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
use http_body_util::BodyExt;
use rustls::pki_types::ServerName;
use std::future::{poll_fn, Future};
use std::net::{IpAddr, SocketAddr};
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::task::Poll;
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

/// What drives the connection after the response head arrived; ends when
/// the body has been read (or the connection failed).
pub type Io = Pin<Box<dyn Future<Output = Result<(), Error>> + Send>>;

/// A plain or TLS stream, one type for hyper.
trait Stream: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Stream for T {}

/// Sends `request` to `destination` (already allowed by
/// [`check_uri`](super::OutboundPolicy::check_uri)), connecting only to
/// addresses `permit` accepts (`permit(ip, None)` before the connect, and
/// `permit(ip, Some(local))` after it, with the connection's local address);
/// the body of the response ends with an error
/// past `body_limit` bytes. Timeouts are [`RequestOptions`]' (all set: the
/// policy caps them); `tls` verifies an https server.
pub async fn send(
    mut request: http::Request<WasiBody>,
    destination: &Destination,
    options: RequestOptions,
    permit: impl Fn(IpAddr, Option<IpAddr>) -> Result<(), Refusal>,
    body_limit: u64,
    tls: Arc<rustls::ClientConfig>,
) -> Result<(http::Response<WasiBody>, Io), Failure> {
    let long = Duration::from_secs(600);
    let connect_timeout = options.connect_timeout.unwrap_or(long);
    let first_byte = options.first_byte_timeout.unwrap_or(long);
    let between_bytes = options.between_bytes_timeout.unwrap_or(long);

    // One deadline for resolving, connecting and the TLS handshake.
    let deadline = Instant::now() + connect_timeout;
    let tcp = connect(destination, deadline, permit).await?;
    let stream: Box<dyn Stream> = match destination.scheme {
        Scheme::Http => Box::new(tcp),
        Scheme::Https => {
            let name = ServerName::try_from(destination.host.as_str()).map_err(Error::InvalidDnsNameError)?.to_owned();
            let tls = tokio_rustls::TlsConnector::from(tls);
            match timeout_at(deadline, tls.connect(name, tcp)).await {
                Ok(stream) => Box::new(stream.map_err(Failure::Handshake)?),
                Err(_) => return Err(Error::ConnectionTimeout.into()),
            }
        }
    };
    let (mut sender, conn) =
        timeout(connect_timeout, hyper::client::conn::http1::handshake::<_, WasiBody>(TokioIo::new(stream)))
            .await
            .map_err(|_| Error::ConnectionTimeout)?
            .map_err(Error::from)?;

    // The request line carries the path only; hyper does not strip the
    // scheme and authority wasi-http leaves in the URI (the Host header is
    // already set).
    let path = request.uri().path_and_query().map_or("/", |p| p.as_str()).to_owned();
    *request.uri_mut() = http::Uri::builder().path_and_query(path).build().map_err(|_| Error::HttpRequestUriInvalid)?;

    let send = async move {
        match timeout(first_byte, sender.send_request(request)).await {
            Ok(response) => response.map_err(Error::from),
            Err(_) => Err(Error::ConnectionReadTimeout),
        }
    };
    // The response arrives only while the connection is driven: poll both
    // until the head is in; the connection then goes back to wasi-http,
    // which drives it while the guest reads the body.
    let mut send = pin!(send);
    let mut conn = Some(conn);
    let response = poll_fn(|cx| {
        if let Poll::Ready(response) = send.as_mut().poll(cx) {
            return Poll::Ready(response);
        }
        if let Some(c) = conn.as_mut() {
            if let Poll::Ready(done) = Pin::new(c).poll(cx) {
                conn = None;
                return match done {
                    // The server closed after its response: it is complete.
                    Ok(()) => send.as_mut().poll(cx),
                    Err(e) => Poll::Ready(Err(Error::from(e))),
                };
            }
        }
        Poll::Pending
    })
    .await?;
    let io: Io = Box::pin(async move {
        match conn {
            Some(conn) => conn.await.map_err(|e| if e.is_timeout() { Error::HttpResponseTimeout } else { e.into() }),
            None => Ok(()),
        }
    });
    let response =
        response.map(|incoming| CappedBody::new(TimedBody::new(incoming, between_bytes), body_limit).boxed_unsync());
    Ok((response, io))
}

/// A TCP connection to the first address of `destination`'s host that
/// `permit` accepts and that answers. Refused only when no address was
/// permitted; a permitted address that does not answer is a connect error.
/// A connection `permit` refuses once made (by its local end, see [`send`])
/// is closed before anything is written to it.
async fn connect(
    destination: &Destination,
    deadline: Instant,
    permit: impl Fn(IpAddr, Option<IpAddr>) -> Result<(), Refusal>,
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
        let connected = connect(&destination, Instant::now() + Duration::from_secs(5), permit).await;
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
}
