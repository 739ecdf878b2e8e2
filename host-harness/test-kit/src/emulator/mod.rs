//! Loopback stand-ins for the 1Password Events API and Devo's HTTP receiver,
//! so harness tests can run the collector end to end without the internet.
//! Both can be told to misbehave (faults, planned or seeded-random, and a
//! rate limit on the 1Password side) so the collector's recovery is tested.

pub mod dataset;
pub mod devo;
pub mod onepassword;

pub use dataset::Dataset;
pub use devo::{DevoEmulator, DevoFault, DevoOptions, DevoRequest};
pub use onepassword::{OnePasswordEmulator, OnePasswordOptions, OpFault, RecordedRequest};

use std::collections::{BTreeMap, VecDeque};
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tiny_http::{Header, Request, Response, Server};

/// The collector's five required variables for a tenant that reads `op`
/// with `op_token` and delivers to `devo` under `devo_domain` with
/// `devo_token` (tests add the rest: services, tags, page size).
pub fn tenant_variables(
    op: &OnePasswordEmulator,
    op_token: &str,
    devo: &DevoEmulator,
    devo_domain: &str,
    devo_token: &str,
) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("base_url".into(), op.base_url()),
        ("token".into(), op_token.into()),
        ("devo_url".into(), devo.base_url()),
        ("devo_domain".into(), devo_domain.into()),
        ("devo_token".into(), devo_token.into()),
    ])
}

/// A few workers, so one slow client cannot stall every other request.
const WORKERS: usize = 4;

/// Where an emulator reads the time for its rate-limit windows and records:
/// the wall clock unless a test shares a virtual one with the host.
pub type Clock = Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>;

pub(crate) fn wall_clock() -> Clock {
    Arc::new(Utc::now)
}

/// A tiny_http server on 127.0.0.1 plus the threads draining it.
/// Dropping it wakes every worker and waits for them, and cuts short every
/// answer still waiting out a delay.
pub(crate) struct Background {
    server: Arc<Server>,
    stopping: Arc<AtomicBool>,
    workers: Vec<JoinHandle<()>>,
    deferred: Deferred,
    addr: SocketAddr,
}

impl Background {
    pub(crate) fn spawn<H>(name: &str, handler: H) -> io::Result<Self>
    where
        H: Fn(Request, &Deferred) + Send + Sync + 'static,
    {
        let server = Server::http("127.0.0.1:0").map_err(io::Error::other)?;
        let addr = server.server_addr().to_ip().ok_or_else(|| io::Error::other("emulator is not listening on TCP"))?;
        // Built before spawning so an error part-way still stops started workers.
        let mut background = Background {
            server: Arc::new(server),
            stopping: Arc::new(AtomicBool::new(false)),
            workers: Vec::with_capacity(WORKERS),
            deferred: Deferred::new(name),
            addr,
        };
        let handler = Arc::new(handler);
        for i in 0..WORKERS {
            let server = Arc::clone(&background.server);
            let stopping = Arc::clone(&background.stopping);
            let deferred = background.deferred.clone();
            let handler = Arc::clone(&handler);
            let worker = std::thread::Builder::new()
                .name(format!("{name}-{i}"))
                .spawn(move || serve(&server, &stopping, &deferred, &*handler))?;
            background.workers.push(worker);
        }
        Ok(background)
    }

    pub(crate) fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

fn serve(server: &Server, stopping: &AtomicBool, deferred: &Deferred, handler: &dyn Fn(Request, &Deferred)) {
    loop {
        match server.recv() {
            Ok(request) => handler(request, deferred),
            Err(_) if stopping.load(Ordering::SeqCst) => return,
            // A failed accept on one connection; keep serving the rest.
            Err(_) => continue,
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::SeqCst);
        // Each unblock releases exactly one waiting recv().
        for _ in 0..self.workers.len() {
            self.server.unblock();
        }
        for worker in self.workers.drain(..) {
            let _ = worker.join();
        }
        // Workers are gone, so nothing new gets deferred past this point.
        self.deferred.stop();
    }
}

/// Answers that wait out a delay, each on a thread of its own so a hanging
/// client never holds up a worker. Shutdown wakes every wait at once.
#[derive(Clone)]
pub(crate) struct Deferred {
    inner: Arc<DeferredInner>,
}

struct DeferredInner {
    name: String,
    stopping: Mutex<bool>,
    wake: Condvar,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl Deferred {
    fn new(name: &str) -> Self {
        Deferred {
            inner: Arc::new(DeferredInner {
                name: format!("{name}-later"),
                stopping: Mutex::new(false),
                wake: Condvar::new(),
                threads: Mutex::new(Vec::new()),
            }),
        }
    }

    /// Runs `then` after `delay` on its own thread. `then` gets `true` when
    /// the delay ran out, `false` when the emulator is shutting down first.
    pub(crate) fn after(&self, delay: Duration, then: impl FnOnce(bool) + Send + 'static) {
        let inner = Arc::clone(&self.inner);
        let spawned = std::thread::Builder::new().name(self.inner.name.clone()).spawn(move || then(inner.wait(delay)));
        // If no thread can be had, the closure and its request are dropped
        // and tiny_http answers 500: still not the planned answer, so loud.
        if let Ok(thread) = spawned {
            let mut threads = lock(&self.inner.threads);
            threads.retain(|t| !t.is_finished());
            threads.push(thread);
        }
    }

    fn stop(&self) {
        *lock(&self.inner.stopping) = true;
        self.inner.wake.notify_all();
        let threads = std::mem::take(&mut *lock(&self.inner.threads));
        for thread in threads {
            let _ = thread.join();
        }
    }
}

impl DeferredInner {
    /// Sleeps `delay` unless shutdown comes first; true when it slept it all.
    fn wait(&self, delay: Duration) -> bool {
        let deadline = Instant::now() + delay;
        let mut stopping = lock(&self.stopping);
        loop {
            if *stopping {
                return false;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return true;
            }
            stopping = self.wake.wait_timeout(stopping, left).unwrap_or_else(PoisonError::into_inner).0;
        }
    }
}

/// A queue of planned faults, then seeded random ones once it is empty.
pub(crate) struct FaultPlan<F> {
    queue: VecDeque<F>,
    random: Option<RandomFaults<F>>,
}

struct RandomFaults<F> {
    rng: fastrand::Rng,
    rate: f64,
    kinds: Vec<F>,
}

impl<F> Default for FaultPlan<F> {
    fn default() -> Self {
        FaultPlan { queue: VecDeque::new(), random: None }
    }
}

impl<F: Clone> FaultPlan<F> {
    pub(crate) fn push(&mut self, faults: impl IntoIterator<Item = F>) {
        self.queue.extend(faults);
    }

    /// `rate` is clamped to 0..=1 (NaN counts as 0); replaces an earlier
    /// random plan, leaves the queue alone.
    pub(crate) fn set_random(&mut self, seed: u64, rate: f64, kinds: Vec<F>) {
        let rate = if rate.is_nan() { 0.0 } else { rate.clamp(0.0, 1.0) };
        self.random = Some(RandomFaults { rng: fastrand::Rng::with_seed(seed), rate, kinds });
    }

    pub(crate) fn clear(&mut self) {
        *self = FaultPlan::default();
    }

    /// The fault for the next request, if any. Random draws happen only
    /// when the queue is empty: two draws per request, always, so the
    /// sequence for a seed depends only on how many requests came.
    pub(crate) fn next(&mut self) -> Option<F> {
        if let Some(fault) = self.queue.pop_front() {
            return Some(fault);
        }
        let random = self.random.as_mut()?;
        let hit = random.rng.f64() < random.rate;
        let pick = random.rng.usize(..random.kinds.len().max(1));
        if hit {
            random.kinds.get(pick).cloned()
        } else {
            None
        }
    }
}

/// Shared state is read by tests while workers write it; a panicking test
/// thread must not make the emulator unusable, so poisoning is ignored.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What a handler decided to answer.
pub(crate) struct Reply {
    pub status: u16,
    pub body: String,
    pub content_type: &'static str,
    pub headers: Vec<(&'static str, String)>,
    /// Sent without `Content-Length` (chunked), so a client learns the
    /// body's size only by reading it.
    pub chunked: bool,
}

impl Reply {
    pub(crate) fn json(status: u16, body: String) -> Self {
        Reply { status, body, content_type: "application/json", headers: Vec::new(), chunked: false }
    }

    pub(crate) fn text(status: u16, body: &str) -> Self {
        Reply {
            status,
            body: body.to_owned(),
            content_type: "text/plain; charset=utf-8",
            headers: Vec::new(),
            chunked: false,
        }
    }

    pub(crate) fn with_header(mut self, name: &'static str, value: String) -> Self {
        self.headers.push((name, value));
        self
    }

    pub(crate) fn send(self, request: Request) {
        let length = (!self.chunked).then_some(self.body.len());
        let data = std::io::Cursor::new(self.body.into_bytes());
        // tiny_http turns bodies over 32 KiB chunked unless told otherwise.
        let mut response =
            Response::new(self.status.into(), Vec::new(), data, length, None).with_chunked_threshold(usize::MAX);
        let content_type = ("Content-Type", self.content_type);
        let extra = self.headers.iter().map(|(k, v)| (*k, v.as_str()));
        for (name, value) in std::iter::once(content_type).chain(extra) {
            if let Ok(header) = Header::from_bytes(name, value) {
                response = response.with_header(header);
            }
        }
        // The client may already have gone; nothing useful to do about it.
        let _ = request.respond(response);
    }
}

/// How a request is to be answered, delays and silences included.
pub(crate) enum Answer {
    Now(Reply),
    /// The reply, but only once the delay has passed.
    After(Duration, Reply),
    /// Nothing for this long, then the connection is cut.
    Silence(Duration),
    /// The connection is cut without an answer.
    Cut,
}

impl Answer {
    /// The status the client gets; 0 when it gets none.
    pub(crate) fn status(&self) -> u16 {
        match self {
            Answer::Now(reply) | Answer::After(_, reply) => reply.status,
            Answer::Silence(_) | Answer::Cut => 0,
        }
    }

    /// An answer still waiting when the emulator stops is cut instead.
    pub(crate) fn deliver(self, request: Request, deferred: &Deferred) {
        match self {
            Answer::Now(reply) => reply.send(request),
            Answer::After(delay, reply) => deferred.after(delay, move |waited| {
                if waited {
                    reply.send(request);
                } else {
                    cut(request);
                }
            }),
            Answer::Silence(delay) => deferred.after(delay, move |_| cut(request)),
            Answer::Cut => cut(request),
        }
    }
}

/// Ends the exchange without a status line, so the client sees a transport
/// error. tiny_http never hands out its socket, so the connection cannot be
/// closed outright while the client keeps it alive (it closes as soon as
/// the request said `Connection: close`, or when the client gives up); the
/// few bytes written first cannot start an HTTP response, which makes any
/// client fail the exchange at once instead of waiting for its timeout.
/// Taking the writer also keeps tiny_http from answering 500 on drop.
fn cut(request: Request) {
    let mut writer = request.into_writer();
    let _ = writer.write_all(CUT_BYTES);
    let _ = writer.flush();
}

/// Not `H` (as in `HTTP/`) nor whitespace a parser would skip.
pub(crate) const CUT_BYTES: &[u8] = b"\x00\x00";

/// Why a request body could not be read.
pub(crate) enum BodyError {
    TooLarge,
    Io,
}

impl BodyError {
    pub(crate) fn status(&self) -> u16 {
        match self {
            BodyError::TooLarge => 413,
            BodyError::Io => 400,
        }
    }
}

/// Reads the whole body, refusing more than `limit` bytes.
pub(crate) fn read_body(request: &mut Request, limit: usize) -> Result<Vec<u8>, BodyError> {
    let mut body = Vec::new();
    request.as_reader().take(limit as u64 + 1).read_to_end(&mut body).map_err(|_| BodyError::Io)?;
    if body.len() > limit {
        return Err(BodyError::TooLarge);
    }
    Ok(body)
}

/// First value of a header, matched case-insensitively.
pub(crate) fn header<'a>(request: &'a Request, name: &str) -> Option<&'a str> {
    request.headers().iter().find(|h| h.field.as_str().as_str().eq_ignore_ascii_case(name)).map(|h| h.value.as_str())
}

/// Decodes `%XX` escapes; `+` stays literal (RFC 3986, not form encoding).
/// `None` for a truncated or non-hex escape.
pub(crate) fn percent_decode(text: &str) -> Option<Vec<u8>> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Some(out)
}

/// A blocking HTTP/1.1 client over `TcpStream`, only for these tests.
#[cfg(test)]
pub(crate) mod test_client {
    use std::io::{ErrorKind, Read, Write};
    use std::net::TcpStream;
    use std::time::Duration;

    pub struct TestResponse {
        pub status: u16,
        pub headers: Vec<(String, String)>,
        pub body: Vec<u8>,
    }

    impl TestResponse {
        pub fn text(&self) -> String {
            String::from_utf8(self.body.clone()).expect("response body is UTF-8")
        }

        pub fn json(&self) -> serde_json::Value {
            serde_json::from_slice(&self.body).expect("response body is JSON")
        }

        pub fn header(&self, name: &str) -> Option<&str> {
            self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
        }
    }

    /// What came back on one connection.
    pub struct Raw {
        pub bytes: Vec<u8>,
        /// The server closed the connection (rather than `patience` running out).
        pub closed: bool,
    }

    /// One request's bytes; `close` asks the server to close after answering.
    pub fn request_bytes(
        base_url: &str,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        close: bool,
    ) -> Vec<u8> {
        let authority = base_url.strip_prefix("http://").expect("http base URL");
        let mut head = format!("{method} {target} HTTP/1.1\r\nHost: {authority}\r\nContent-Length: {}\r\n", body.len());
        if close {
            head.push_str("Connection: close\r\n");
        }
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        let mut out = head.into_bytes();
        out.extend_from_slice(body);
        out
    }

    /// Writes `request` on a fresh connection and reads until the server
    /// closes it or nothing arrives for `patience`.
    pub fn raw(base_url: &str, request: &[u8], patience: Duration) -> Raw {
        let authority = base_url.strip_prefix("http://").expect("http base URL");
        let mut stream = TcpStream::connect(authority).expect("connect to emulator");
        stream.set_read_timeout(Some(patience)).expect("set read timeout");
        stream.write_all(request).expect("write request");
        let mut bytes = Vec::new();
        let mut buffer = [0u8; 8192];
        loop {
            match stream.read(&mut buffer) {
                Ok(0) => return Raw { bytes, closed: true },
                Ok(n) => bytes.extend_from_slice(&buffer[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return Raw { bytes, closed: false }
                }
                // A reset is a close too, as far as these tests care.
                Err(_) => return Raw { bytes, closed: true },
            }
        }
    }

    /// Sends one request on a fresh connection and reads until the server closes it.
    pub fn send(base_url: &str, method: &str, target: &str, headers: &[(&str, &str)], body: &[u8]) -> TestResponse {
        let request = request_bytes(base_url, method, target, headers, body, true);
        let answer = raw(base_url, &request, Duration::from_secs(60));
        assert!(answer.closed, "no complete answer within a minute");
        parse(&answer.bytes)
    }

    pub fn post_json(base_url: &str, path: &str, token: &str, body: &str) -> TestResponse {
        let auth = format!("Bearer {token}");
        let headers = [("Authorization", auth.as_str()), ("Content-Type", "application/json")];
        send(base_url, "POST", path, &headers, body.as_bytes())
    }

    fn parse(raw: &[u8]) -> TestResponse {
        let split = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("response has a header block");
        let head = std::str::from_utf8(&raw[..split]).expect("ASCII response head");
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .and_then(|line| line.split(' ').nth(1))
            .and_then(|code| code.parse().ok())
            .expect("status line");
        let headers: Vec<(String, String)> = lines
            .filter_map(|line| line.split_once(':'))
            .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
            .collect();
        let mut response = TestResponse { status, headers, body: raw[split + 4..].to_vec() };
        if response.header("Transfer-Encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
            response.body = dechunk(&response.body);
        }
        response
    }

    fn dechunk(mut data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        loop {
            let line_end = data.windows(2).position(|w| w == b"\r\n").expect("chunk size line");
            let size_text = std::str::from_utf8(&data[..line_end]).expect("chunk size");
            let size_text = size_text.split(';').next().unwrap_or_default().trim();
            let size = usize::from_str_radix(size_text, 16).expect("hex chunk size");
            data = &data[line_end + 2..];
            if size == 0 {
                return out;
            }
            out.extend_from_slice(&data[..size]);
            data = &data[size + 2..];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding_handles_escapes_and_rejects_bad_ones() {
        assert_eq!(percent_decode("a%20b+c%7B%22%E6%9D%B1").unwrap(), "a b+c{\"東".as_bytes());
        assert_eq!(percent_decode("100%"), None);
        assert_eq!(percent_decode("%zz"), None);
    }

    #[test]
    fn background_server_stops_on_drop() {
        let server = Background::spawn("probe", |request, _: &Deferred| Reply::text(200, "up").send(request))
            .expect("start server");
        let base = server.base_url();
        assert_eq!(test_client::send(&base, "GET", "/", &[], b"").text(), "up");
        drop(server);
        // tiny_http closes its listener on its own thread just after drop.
        let authority = base.trim_start_matches("http://");
        let closed = (0..200).any(|_| {
            std::thread::sleep(std::time::Duration::from_millis(10));
            std::net::TcpStream::connect(authority).is_err()
        });
        assert!(closed, "listener still open after drop");
    }

    #[test]
    fn planned_faults_come_first_then_seeded_random_ones() {
        let mut plan = FaultPlan::default();
        assert_eq!(plan.next(), None::<u8>);
        plan.push([1, 2]);
        plan.set_random(9, 0.5, vec![7, 8]);
        assert_eq!((plan.next(), plan.next()), (Some(1), Some(2)));
        let draws: Vec<Option<u8>> = (0..200).map(|_| plan.next()).collect();
        let mut again = FaultPlan::default();
        again.set_random(9, 0.5, vec![7, 8]);
        assert_eq!(draws, (0..200).map(|_| again.next()).collect::<Vec<_>>());
        let hits = draws.iter().flatten().count();
        assert!((70..=130).contains(&hits), "{hits}");
        assert!(draws.contains(&Some(7)) && draws.contains(&Some(8)));
        plan.clear();
        assert_eq!(plan.next(), None);
        // Out-of-range rates are clamped; no kinds means no faults.
        plan.set_random(1, 7.0, vec![3]);
        assert!((0..50).all(|_| plan.next() == Some(3)));
        plan.set_random(1, f64::NAN, vec![3]);
        assert!((0..50).all(|_| plan.next().is_none()));
        plan.set_random(1, 1.0, Vec::new());
        assert!((0..50).all(|_| plan.next().is_none()));
    }

    #[test]
    fn deferred_work_runs_late_or_is_cut_short_by_stop() {
        let deferred = Deferred::new("probe");
        let (done, finished) = std::sync::mpsc::channel();
        let started = Instant::now();
        let quick = done.clone();
        deferred.after(Duration::from_millis(50), move |waited| quick.send((waited, started.elapsed())).unwrap());
        let (waited, after) = finished.recv().unwrap();
        assert!(waited && after >= Duration::from_millis(50));
        deferred.after(Duration::from_secs(60), move |waited| done.send((waited, started.elapsed())).unwrap());
        let stopping = Instant::now();
        deferred.stop();
        assert!(stopping.elapsed() < Duration::from_secs(2));
        assert!(!finished.recv().unwrap().0);
    }

    #[test]
    fn cut_sends_no_status_line() {
        let server = Background::spawn("cut", |request, deferred: &Deferred| Answer::Cut.deliver(request, deferred))
            .expect("start server");
        let request = test_client::request_bytes(&server.base_url(), "GET", "/", &[], b"", true);
        let answer = test_client::raw(&server.base_url(), &request, Duration::from_secs(5));
        assert!(answer.closed);
        assert_eq!(answer.bytes, CUT_BYTES);
    }
}
