//! Keep-alive connections, reused across requests, ticks and tenants.
//!
//! A tick that finds nothing new makes three small requests; opening a TCP
//! connection and doing a TLS handshake for each was most of what such a
//! tick cost the host. Connections are kept per destination — scheme, host
//! and port as the URL names them, and the CA roots they were verified
//! against — and shared by every tenant of the runtime that sends to that
//! destination.
//!
//! # Threat model
//!
//! A pooled connection carries no tenant state: HTTP/1.1 over it has no
//! connection-level authentication (no client certificate, no NTLM), each
//! request carries its own `Authorization`, and nothing but the bytes of
//! requests and responses goes over it. What a tenant could try:
//!
//! - *A hostile tenant sharing a destination with a victim* sends its own
//!   requests over the connection the victim uses next. Request framing is
//!   hyper's: it writes the head and frames the body from its length
//!   (wasi-http refuses the framing headers, `transfer-encoding`,
//!   `connection`, `upgrade` and friends, and checks a `content-length`
//!   against the bytes written), so a request cannot end early or smuggle a
//!   second one. A connection goes back to the pool only once its response
//!   was read to its very end; one whose body was dropped, cut short, timed
//!   out or capped is closed, never reused, so no unread byte of one
//!   response can be read as the start of the next.
//! - *A hostile server* (a tenant's `base_url` may name any public host) can
//!   only reach the tenants that send to it: the key is its own host and
//!   port. Bytes it sends between responses make hyper close the connection
//!   (an idle HTTP/1.1 client connection accepts no unrequested response).
//!   It cannot hold host resources either: an idle connection closes after
//!   [`PoolLimits::idle_timeout`], and the pool keeps at most
//!   [`PoolLimits::per_destination`] idle connections to one destination and
//!   [`PoolLimits::total`] in all; one in use is bounded by the request's
//!   timeouts and by the tenant's in-flight slots, as before.
//! - *Address rules*: a new connection is checked against the tenant's
//!   policy at connect time, as ever; a pooled one is checked again against
//!   the policy of the tenant that takes it (by its peer and local address),
//!   so a rule one tenant passes is never borrowed by another. A pooled
//!   connection skips the DNS lookup: its address was checked when it was
//!   made, so DNS rebinding gains nothing.
//! - *TLS*: sessions resume through rustls' in-memory cache, keyed by server
//!   name, in the runtime's one client configuration. A resumed session is
//!   the server proving itself again with a key it issued; it gives a
//!   tenant nothing of another's.
//!
//! A request sent on a connection the server had just closed comes back
//! from hyper unsent and goes out once more on a new connection; one that
//! fails after it was written fails as any failed request does (the tick
//! retries it later; the checkpoint has not moved). Idle connections close
//! after 30 s by default, sooner than servers usually close them (60 s and
//! more for common load balancers and proxies), to keep that rare.

use super::policy::{Destination, Refusal};
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::client::conn::http1::SendRequest;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;
use wasmtime_wasi_http::WasiBody;

/// How many idle connections the pool keeps, and for how long.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolLimits {
    /// Idle connections to one destination.
    pub per_destination: usize,
    /// Idle connections in all.
    pub total: usize,
    /// An idle connection closes after this long unused.
    pub idle_timeout: Duration,
}

impl Default for PoolLimits {
    fn default() -> Self {
        PoolLimits { per_destination: 32, total: 512, idle_timeout: Duration::from_secs(30) }
    }
}

/// Connections opened and reused so far, and idle now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnectionStats {
    /// New TCP connections (with a TLS handshake for https).
    pub opened: u64,
    /// Requests sent on a connection an earlier request had used.
    pub reused: u64,
    /// Connections in the pool now, waiting for a request.
    pub idle: usize,
}

/// Which connections may serve a request: its destination and the trust
/// its server certificate was verified against (the address of the
/// runtime's one rustls configuration).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct PoolKey {
    scheme_https: bool,
    host: String,
    port: u16,
    trust: usize,
}

impl PoolKey {
    pub(crate) fn new(destination: &Destination, trust: &Arc<rustls::ClientConfig>) -> PoolKey {
        PoolKey {
            scheme_https: destination.scheme == super::policy::Scheme::Https,
            host: destination.host.clone(),
            port: destination.port,
            trust: Arc::as_ptr(trust) as usize,
        }
    }
}

/// The idle connections of one runtime.
pub struct ConnectionPool {
    idle: Mutex<HashMap<PoolKey, Vec<Pooled>>>,
    limits: PoolLimits,
    opened: AtomicU64,
    reused: AtomicU64,
}

impl Default for ConnectionPool {
    fn default() -> Self {
        ConnectionPool::new(PoolLimits::default())
    }
}

impl std::fmt::Debug for ConnectionPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ConnectionPool {{ {:?}, {:?} }}", self.limits, self.stats())
    }
}

impl ConnectionPool {
    /// An empty pool keeping at most what `limits` allow.
    pub fn new(limits: PoolLimits) -> ConnectionPool {
        ConnectionPool { idle: Mutex::default(), limits, opened: AtomicU64::new(0), reused: AtomicU64::new(0) }
    }

    /// What it keeps.
    pub fn limits(&self) -> PoolLimits {
        self.limits
    }

    /// Connections opened, reused, and idle now.
    pub fn stats(&self) -> ConnectionStats {
        let idle = self.lock().values().flatten().filter(|c| !c.sender.is_closed()).count();
        ConnectionStats {
            opened: self.opened.load(Ordering::Relaxed),
            reused: self.reused.load(Ordering::Relaxed),
            idle,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PoolKey, Vec<Pooled>>> {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The most recently used idle connection for `key` that is still open,
    /// within its idle time and that `permit` accepts (by its peer and local
    /// address, as a new one would be checked); the others met on the way
    /// are closed.
    pub(crate) fn take(
        &self,
        key: &PoolKey,
        permit: impl Fn(IpAddr, Option<IpAddr>) -> Result<(), Refusal>,
    ) -> Option<Pooled> {
        let mut idle = self.lock();
        let list = idle.get_mut(key)?;
        while let Some(connection) = list.pop() {
            let fresh = connection.life.idle_for().is_some_and(|d| d < self.limits.idle_timeout);
            if !fresh || connection.sender.is_closed() || !connection.sender.is_ready() {
                continue; // dropped: closed
            }
            let (peer, local) = (connection.peer.ip(), connection.local.ip());
            if permit(peer, None).and_then(|()| permit(peer, Some(local))).is_err() {
                // Another tenant's rules let it be made; this one's do not.
                // Closed rather than kept: the tenant's new connection will
                // be refused the same way, with the reason.
                continue;
            }
            connection.life.set(LifeState::Busy);
            self.reused.fetch_add(1, Ordering::Relaxed);
            return Some(connection);
        }
        None
    }

    /// Counts a connection opened for `key`.
    pub(crate) fn opened(&self) {
        self.opened.fetch_add(1, Ordering::Relaxed);
    }

    /// Puts `connection`, whose last response was read to its end, back
    /// for the next request; past the limits the oldest idle ones close.
    fn give_back(&self, key: PoolKey, connection: Pooled) {
        if connection.sender.is_closed() {
            return;
        }
        connection.life.set(LifeState::Idle(Instant::now()));
        let mut idle = self.lock();
        let list = idle.entry(key).or_default();
        list.retain(|c| !c.sender.is_closed());
        list.push(connection);
        if list.len() > self.limits.per_destination {
            list.remove(0);
        }
        let mut total: usize = idle.values().map(Vec::len).sum();
        while total > self.limits.total {
            // The destination whose oldest idle connection is oldest.
            let oldest = idle
                .iter()
                .filter_map(|(k, list)| Some((k.clone(), list.first()?.life.idle_for()?)))
                .max_by_key(|(_, d)| *d)
                .map(|(k, _)| k);
            let Some(k) = oldest else { break };
            if let Some(list) = idle.get_mut(&k) {
                list.remove(0);
                if list.is_empty() {
                    idle.remove(&k);
                }
            }
            total -= 1;
        }
        idle.retain(|_, list| !list.is_empty());
    }
}

/// One HTTP/1.1 connection: the handle requests are sent with, where it
/// goes from and to, and its state as the task that drives it sees it.
/// Dropped (out of the pool, or with a response not read to its end), it
/// closes.
pub(crate) struct Pooled {
    pub(crate) sender: SendRequest<WasiBody>,
    peer: SocketAddr,
    local: SocketAddr,
    life: Arc<Life>,
}

impl Drop for Pooled {
    fn drop(&mut self) {
        self.life.set(LifeState::Closed);
    }
}

impl Pooled {
    /// Drives `connection` (hyper's half that reads and writes the socket)
    /// on a task of its own until it ends, its handle is dropped, or it
    /// was idle for `idle_timeout`; `sender` is the other half.
    pub(crate) fn spawn<F>(
        sender: SendRequest<WasiBody>,
        connection: F,
        peer: SocketAddr,
        local: SocketAddr,
        idle_timeout: Duration,
    ) -> Pooled
    where
        F: std::future::Future + Send + 'static,
    {
        let life = Arc::new(Life { state: Mutex::new(LifeState::Busy), changed: Notify::new() });
        let watched = Arc::clone(&life);
        tokio::spawn(async move {
            let mut connection = pin!(connection);
            loop {
                let wake = match watched.state() {
                    LifeState::Closed => break,
                    LifeState::Idle(since) => since + idle_timeout,
                    LifeState::Busy => Instant::now() + idle_timeout,
                };
                tokio::select! {
                    _ = &mut connection => break,
                    _ = watched.changed.notified() => {}
                    _ = tokio::time::sleep_until(wake) => {
                        if watched.idle_for().is_some_and(|d| d >= idle_timeout) {
                            break;
                        }
                    }
                }
            }
            // Dropping hyper's half closes the socket.
        });
        Pooled { sender, peer, local, life }
    }
}

#[derive(Clone, Copy)]
enum LifeState {
    /// A request is being sent or its response read.
    Busy,
    /// In the pool since then.
    Idle(Instant),
    /// Not to be used again: its task ends.
    Closed,
}

struct Life {
    state: Mutex<LifeState>,
    changed: Notify,
}

impl Life {
    fn state(&self) -> LifeState {
        *self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn set(&self, state: LifeState) {
        *self.state.lock().unwrap_or_else(PoisonError::into_inner) = state;
        self.changed.notify_one();
    }

    /// How long it has been idle; `None` unless idle.
    fn idle_for(&self) -> Option<Duration> {
        match self.state() {
            LifeState::Idle(since) => Some(since.elapsed()),
            _ => None,
        }
    }
}

/// A response body that gives its connection back to the pool once read to
/// its end (when the response allows the connection to be kept), and tells
/// `done` when it ended, either way. Dropped before its end, the connection
/// closes.
pub(crate) struct ReturningBody {
    incoming: hyper::body::Incoming,
    back: Option<(Arc<ConnectionPool>, PoolKey, Pooled)>,
    done: Option<tokio::sync::oneshot::Sender<()>>,
}

impl ReturningBody {
    /// `incoming`, whose connection goes back to `pool` under `key` at its
    /// end when `keep` (the response did not ask to close it).
    pub(crate) fn new(
        incoming: hyper::body::Incoming,
        pool: Arc<ConnectionPool>,
        key: PoolKey,
        connection: Pooled,
        keep: bool,
        done: tokio::sync::oneshot::Sender<()>,
    ) -> ReturningBody {
        let mut body = ReturningBody { incoming, back: keep.then_some((pool, key, connection)), done: Some(done) };
        if body.incoming.is_end_stream() {
            // No body to read (a 204, a zero Content-Length): the guest may
            // never poll it.
            body.end(true);
        }
        body
    }

    fn end(&mut self, complete: bool) {
        if let Some((pool, key, connection)) = self.back.take() {
            if complete {
                pool.give_back(key, connection);
            }
        }
        if let Some(done) = self.done.take() {
            let _ = done.send(());
        }
    }
}

impl Body for ReturningBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.incoming).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => this.end(true),
            Poll::Ready(Some(Err(_))) => this.end(false),
            Poll::Ready(Some(Ok(_))) if this.incoming.is_end_stream() => this.end(true),
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.incoming.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.incoming.size_hint()
    }
}

impl Drop for ReturningBody {
    fn drop(&mut self) {
        // Not read to its end: the connection (if not given back) closes.
        self.end(false);
    }
}
