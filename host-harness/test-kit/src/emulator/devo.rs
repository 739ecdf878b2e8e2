//! A loopback Devo HTTP ingestion endpoint: `stream` (lines in a POST body,
//! optionally gzipped) and `event` (one message in the query string).
//! The token is checked and then forgotten; it is never stored or logged.
//! Requests can be faulted (planned or seeded-random) to test redelivery.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Read;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flate2::read::MultiGzDecoder;
use serde_json::Value;
use tiny_http::Request;

use super::{header, lock, percent_decode, read_body, Answer, Background, BodyError, Deferred, FaultPlan, Reply};

/// Devo's documented per-request ceiling.
const MAX_BODY: usize = 32 * 1024 * 1024;
/// Guards against a gzip bomb in a misbehaving test.
const MAX_INFLATED: u64 = 256 * 1024 * 1024;

#[derive(Clone)]
pub struct DevoOptions {
    pub domain: String,
    pub token: String,
}

impl Default for DevoOptions {
    fn default() -> Self {
        DevoOptions { domain: "emulated_domain".to_owned(), token: "0123456789abcdefABCDEF0123456789".to_owned() }
    }
}

// Hand-written so the token never shows up in test output.
impl fmt::Debug for DevoOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DevoOptions").field("domain", &self.domain).field("token", &"<redacted>").finish()
    }
}

/// A way to answer a request wrongly.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DevoFault {
    /// This status (e.g. 401, 413, 500, 503); no events are stored.
    Status(u16),
    /// The request is read, then nothing is answered for this long, then
    /// the connection is cut; no events are stored.
    Hang(Duration),
    /// The connection is cut without an answer; no events are stored.
    Drop,
    /// Handled as usual (events stored on arrival), but the answer is held
    /// back this long: a client that gives up first has delivered anyway.
    AcceptAfter(Duration),
}

/// One request as received; path fields are empty when the path did not parse.
#[derive(Clone, Debug)]
pub struct DevoRequest {
    pub method: String,
    pub mode: String,
    pub host: String,
    pub tag: String,
    /// 0 when the client got no answer (`Hang`, `Drop`). An `AcceptAfter`
    /// request is recorded when it arrives, with the status it will get.
    pub status: u16,
    /// Payload size as sent: the body (compressed if gzip) or the raw query.
    pub bytes: usize,
    pub gzip: bool,
    /// Events stored from this request (0 unless it was accepted).
    pub events: usize,
    pub at: Instant,
    /// The injected fault that shaped the answer, if any.
    pub fault: Option<DevoFault>,
}

pub struct DevoEmulator {
    state: Arc<State>,
    server: Background,
}

impl DevoEmulator {
    pub fn start(options: DevoOptions) -> std::io::Result<Self> {
        let state = Arc::new(State {
            domain: options.domain,
            token: options.token,
            events: Mutex::default(),
            requests: Mutex::default(),
            failure: Mutex::default(),
            faults: Mutex::default(),
        });
        let shared = Arc::clone(&state);
        let server = Background::spawn("devo-emulator", move |request, deferred| shared.handle(request, deferred))?;
        Ok(DevoEmulator { state, server })
    }

    /// `http://127.0.0.1:PORT`, no trailing slash.
    pub fn base_url(&self) -> String {
        self.server.base_url()
    }

    /// Lines received for a tag, in arrival order.
    pub fn events(&self, tag: &str) -> Vec<String> {
        lock(&self.state.events).get(tag).cloned().unwrap_or_default()
    }

    /// The same lines parsed; a line that is not JSON comes back as a JSON
    /// string, so comparisons against served events fail visibly.
    pub fn event_values(&self, tag: &str) -> Vec<Value> {
        self.events(tag).into_iter().map(|line| serde_json::from_str(&line).unwrap_or(Value::String(line))).collect()
    }

    /// Tags that received at least one event, sorted.
    pub fn tags(&self) -> Vec<String> {
        lock(&self.state.events).keys().cloned().collect()
    }

    pub fn total_events(&self) -> usize {
        lock(&self.state.events).values().map(Vec::len).sum()
    }

    pub fn requests(&self) -> Vec<DevoRequest> {
        lock(&self.state.requests).clone()
    }

    /// While `Some(status)`, answer everything with it and store no events
    /// (the request itself is still listed by `requests`). It takes
    /// precedence over planned faults, which stay queued meanwhile.
    pub fn set_failure(&self, status: Option<u16>) {
        *lock(&self.state.failure) = status;
    }

    /// Faults for the next requests, one per request, in order.
    pub fn push_faults(&self, faults: impl IntoIterator<Item = DevoFault>) {
        lock(&self.state.faults).push(faults);
    }

    /// Once the planned faults are used up, each request is faulted with
    /// probability `rate` (clamped to 0..=1), the kind drawn uniformly from
    /// `kinds`. The same seed and request sequence give the same faults.
    pub fn set_random_faults(&self, seed: u64, rate: f64, kinds: Vec<DevoFault>) {
        lock(&self.state.faults).set_random(seed, rate, kinds);
    }

    /// Forgets planned and random faults (not `set_failure`).
    pub fn clear_faults(&self) {
        lock(&self.state.faults).clear();
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Stream,
    Event,
}

/// The decoded `/<mode>/<domain>/token!<token>/<host>/<tag>` path.
struct Target {
    mode: Mode,
    mode_name: String,
    domain: String,
    token: String,
    host: String,
    tag: String,
}

impl Target {
    fn parse(path: &str) -> Result<Target, &'static str> {
        let segments: Vec<String> = path
            .strip_prefix('/')
            .ok_or("path must start with /")?
            .split('/')
            .map(decode_text)
            .collect::<Option<_>>()
            .ok_or("path has a bad percent escape")?;
        let [mode_name, domain, token, host, tag] =
            <[String; 5]>::try_from(segments).map_err(|_| "expected /<mode>/<domain>/token!<token>/<host>/<tag>")?;
        let mode = match mode_name.as_str() {
            "stream" => Mode::Stream,
            "event" => Mode::Event,
            _ => return Err("unknown mode"),
        };
        let token = token.strip_prefix("token!").ok_or("missing token! segment")?.to_owned();
        if domain.is_empty() || host.is_empty() || tag.is_empty() {
            return Err("empty path segment");
        }
        Ok(Target { mode, mode_name, domain, token, host, tag })
    }
}

fn decode_text(text: &str) -> Option<String> {
    String::from_utf8(percent_decode(text)?).ok()
}

/// Splits a stream body into events: `\n` or `\r\n` separated, blanks dropped.
fn lines(text: &str) -> Vec<String> {
    text.split('\n')
        .map(|line| line.strip_suffix('\r').unwrap_or(line))
        .filter(|line| !line.is_empty())
        .map(str::to_owned)
        .collect()
}

fn inflate(body: &[u8]) -> Result<Vec<u8>, &'static str> {
    let mut out = Vec::new();
    MultiGzDecoder::new(body).take(MAX_INFLATED + 1).read_to_end(&mut out).map_err(|_| "body is not valid gzip")?;
    if out.len() as u64 > MAX_INFLATED {
        return Err("inflated body too large");
    }
    Ok(out)
}

struct State {
    domain: String,
    token: String,
    events: Mutex<BTreeMap<String, Vec<String>>>,
    requests: Mutex<Vec<DevoRequest>>,
    failure: Mutex<Option<u16>>,
    faults: Mutex<FaultPlan<DevoFault>>,
}

/// What one request carried, before it is judged.
struct Incoming {
    method: String,
    url: String,
    encoding: Option<String>,
    body: Result<Vec<u8>, BodyError>,
}

impl State {
    fn handle(&self, mut request: Request, deferred: &Deferred) {
        let encoding = header(&request, "Content-Encoding").map(str::to_owned);
        let body = read_body(&mut request, MAX_BODY);
        let incoming =
            Incoming { method: request.method().as_str().to_owned(), url: request.url().to_owned(), encoding, body };
        let (record, answer) = self.receive(incoming);
        // Recorded before answering so tests see it once the client has its reply.
        lock(&self.requests).push(record);
        answer.deliver(request, deferred);
    }

    fn receive(&self, incoming: Incoming) -> (DevoRequest, Answer) {
        let gzip = incoming.encoding.as_deref().is_some_and(|e| e.trim().eq_ignore_ascii_case("gzip"));
        let mut record = DevoRequest {
            method: incoming.method.clone(),
            mode: String::new(),
            host: String::new(),
            tag: String::new(),
            status: 0,
            bytes: 0,
            gzip,
            events: 0,
            at: Instant::now(),
            fault: None,
        };
        let (path, query) = incoming.url.split_once('?').unwrap_or((&incoming.url, ""));
        let target = Target::parse(path);
        if let Ok(target) = &target {
            record.mode = target.mode_name.clone();
            record.host = target.host.clone();
            record.tag = target.tag.clone();
            record.bytes = match (target.mode, &incoming.body) {
                (Mode::Stream, Ok(body)) => body.len(),
                (Mode::Stream, Err(_)) => 0,
                (Mode::Event, _) => query.len(),
            };
        }
        let answer = if let Some(status) = *lock(&self.failure) {
            Answer::Now(Reply::text(status, "injected failure"))
        } else {
            let fault = lock(&self.faults).next();
            record.fault = fault.clone();
            match fault {
                None => Answer::Now(self.judge(&incoming, target, query, gzip, &mut record)),
                Some(DevoFault::Status(status)) => Answer::Now(Reply::text(status, "injected fault")),
                Some(DevoFault::Hang(delay)) => Answer::Silence(delay),
                Some(DevoFault::Drop) => Answer::Cut,
                Some(DevoFault::AcceptAfter(delay)) => {
                    let reply = self.judge(&incoming, target, query, gzip, &mut record);
                    Answer::After(delay, reply)
                }
            }
        };
        record.status = answer.status();
        (record, answer)
    }

    /// Decides the answer, counting and storing accepted events.
    fn judge(
        &self,
        incoming: &Incoming,
        target: Result<Target, &'static str>,
        query: &str,
        gzip: bool,
        record: &mut DevoRequest,
    ) -> Reply {
        let target = match target {
            Ok(target) => target,
            Err(message) => return Reply::text(400, message),
        };
        if target.domain != self.domain || target.token != self.token {
            return Reply::text(401, "unauthorized");
        }
        let events = match target.mode {
            Mode::Stream => self.stream_events(incoming, gzip),
            Mode::Event => event_message(&incoming.method, query).map(|line| vec![line]),
        };
        let events = match events {
            Ok(events) => events,
            Err(reply) => return reply,
        };
        record.events = events.len();
        lock(&self.events).entry(target.tag).or_default().extend(events);
        match target.mode {
            Mode::Stream => Reply::text(200, "OK"),
            Mode::Event => Reply::text(204, ""),
        }
    }

    fn stream_events(&self, incoming: &Incoming, gzip: bool) -> Result<Vec<String>, Reply> {
        if incoming.method != "POST" {
            return Err(Reply::text(405, "stream mode takes POST"));
        }
        let body = incoming.body.as_ref().map_err(|e| Reply::text(e.status(), "request body could not be read"))?;
        let identity = incoming
            .encoding
            .as_deref()
            .is_none_or(|e| e.trim().is_empty() || e.trim().eq_ignore_ascii_case("identity"));
        let plain = if gzip {
            inflate(body).map_err(|message| Reply::text(400, message))?
        } else if identity {
            body.clone()
        } else {
            return Err(Reply::text(400, "unsupported Content-Encoding"));
        };
        let text = String::from_utf8(plain).map_err(|_| Reply::text(400, "body is not UTF-8"))?;
        Ok(lines(&text))
    }
}

/// The whole query string, percent-decoded, is the one event.
fn event_message(method: &str, query: &str) -> Result<String, Reply> {
    if method != "GET" && method != "POST" {
        return Err(Reply::text(405, "event mode takes GET or POST"));
    }
    if query.is_empty() {
        return Err(Reply::text(400, "event mode needs the message in the query string"));
    }
    decode_text(query).ok_or_else(|| Reply::text(400, "query is not percent-encoded UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::super::test_client::{self, send};
    use super::*;
    use flate2::write::GzEncoder;
    use flate2::Compression;
    use std::io::Write;

    const TAG: &str = "auth.agilebits.onepassword.audit";

    fn devo() -> (DevoEmulator, DevoOptions) {
        let options = DevoOptions::default();
        (DevoEmulator::start(options.clone()).expect("start"), options)
    }

    fn url(options: &DevoOptions, mode: &str, tag: &str) -> String {
        format!("/{mode}/{}/token!{}/collector-host/{tag}", options.domain, options.token)
    }

    /// Percent-encodes everything outside RFC 3986 unreserved characters.
    fn encode(text: &str) -> String {
        text.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
                _ => format!("%{b:02X}"),
            })
            .collect()
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
        encoder.write_all(data).unwrap();
        encoder.finish().unwrap()
    }

    #[test]
    fn stream_mode_splits_lines_and_keeps_order() {
        let (devo, options) = devo();
        let body = "{\"a\":1}\r\n\n{\"b\":\"x\\ny\"}\n{\"c\":\"東京\"}\n";
        let response = send(&devo.base_url(), "POST", &url(&options, "stream", TAG), &[], body.as_bytes());
        assert_eq!(response.status, 200);
        assert_eq!(devo.events(TAG), [r#"{"a":1}"#, r#"{"b":"x\ny"}"#, r#"{"c":"東京"}"#]);
        assert_eq!(devo.event_values(TAG)[1], serde_json::json!({"b": "x\ny"}));
        assert_eq!(devo.tags(), [TAG]);
        let request = &devo.requests()[0];
        assert_eq!((request.mode.as_str(), request.host.as_str()), ("stream", "collector-host"));
        assert_eq!((request.bytes, request.events, request.gzip), (body.len(), 3, false));
    }

    #[test]
    fn gzip_bodies_are_inflated_and_bad_gzip_is_rejected() {
        let (devo, options) = devo();
        let target = url(&options, "stream", TAG);
        let packed = gzip(b"{\"n\":1}\n{\"n\":2}");
        let headers = [("Content-Encoding", "gzip")];
        let response = send(&devo.base_url(), "POST", &target, &headers, &packed);
        assert_eq!(response.status, 200);
        assert_eq!(devo.total_events(), 2);
        assert!(devo.requests()[0].gzip);
        assert_eq!(devo.requests()[0].bytes, packed.len());
        let bad = send(&devo.base_url(), "POST", &target, &headers, b"not gzip at all");
        assert_eq!(bad.status, 400);
        let latin1 = send(&devo.base_url(), "POST", &target, &[], b"caf\xe9\n");
        assert_eq!(latin1.status, 400);
        assert_eq!(devo.total_events(), 2);
    }

    #[test]
    fn event_mode_takes_the_decoded_query_by_get_or_post() {
        let (devo, options) = devo();
        let event = r#"{"name":"Jack \"Jackie\" O'Neill","ts":"2020-06-11T16:32:50+02:00"}"#;
        let target = format!("{}?{}", url(&options, "event", TAG), encode(event));
        let got = send(&devo.base_url(), "GET", &target, &[], b"");
        assert_eq!(got.status, 204);
        let posted = send(&devo.base_url(), "POST", &target, &[], b"");
        assert_eq!(posted.status, 204);
        assert_eq!(devo.events(TAG), [event, event]);
        let bare = send(&devo.base_url(), "GET", &url(&options, "event", TAG), &[], b"");
        assert_eq!(bare.status, 400);
    }

    #[test]
    fn path_segments_are_percent_decoded() {
        let (devo, options) = devo();
        let target = format!(
            "/stream/{}/token%21{}/-/auth%2Eagilebits%2Eonepassword%2Eitemusage",
            options.domain, options.token
        );
        assert_eq!(send(&devo.base_url(), "POST", &target, &[], b"{}").status, 200);
        assert_eq!(devo.events("auth.agilebits.onepassword.itemusage"), ["{}"]);
        assert_eq!(devo.requests()[0].host, "-");
    }

    #[test]
    fn wrong_credentials_and_bad_paths_store_nothing() {
        let (devo, options) = devo();
        let base = devo.base_url();
        let wrong_token = DevoOptions { token: "x".repeat(32), ..options.clone() };
        let wrong_domain = DevoOptions { domain: "other".to_owned(), ..options.clone() };
        assert_eq!(send(&base, "POST", &url(&wrong_token, "stream", TAG), &[], b"{}").status, 401);
        assert_eq!(send(&base, "POST", &url(&wrong_domain, "stream", TAG), &[], b"{}").status, 401);
        assert_eq!(send(&base, "POST", &url(&options, "batch", TAG), &[], b"{}").status, 400);
        let short = format!("/stream/{}/token!{}/{TAG}", options.domain, options.token);
        assert_eq!(send(&base, "POST", &short, &[], b"{}").status, 400);
        assert_eq!(send(&base, "POST", "/stream/d/notatoken/h/t", &[], b"{}").status, 400);
        assert_eq!(send(&base, "GET", &url(&options, "stream", TAG), &[], b"").status, 405);
        assert_eq!(devo.total_events(), 0);
        assert!(devo.tags().is_empty());
        let log = format!("{:?}{:?}", devo.requests(), options);
        assert!(!log.contains(&options.token));
    }

    #[test]
    fn injected_failure_answers_without_storing() {
        let (devo, options) = devo();
        let target = url(&options, "stream", TAG);
        devo.set_failure(Some(503));
        assert_eq!(send(&devo.base_url(), "POST", &target, &[], b"{}").status, 503);
        assert_eq!(devo.total_events(), 0);
        devo.set_failure(None);
        assert_eq!(send(&devo.base_url(), "POST", &target, &[], b"{}").status, 200);
        assert_eq!(devo.total_events(), 1);
        let statuses: Vec<u16> = devo.requests().iter().map(|r| r.status).collect();
        assert_eq!(statuses, [503, 200]);
    }

    fn stream(devo: &DevoEmulator, options: &DevoOptions, body: &str) -> u16 {
        let target = url(options, "stream", TAG);
        send(&devo.base_url(), "POST", &target, &[], body.as_bytes()).status
    }

    fn stream_bytes(devo: &DevoEmulator, options: &DevoOptions, body: &str, close: bool) -> Vec<u8> {
        let target = url(options, "stream", TAG);
        test_client::request_bytes(&devo.base_url(), "POST", &target, &[], body.as_bytes(), close)
    }

    fn await_requests(devo: &DevoEmulator, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while devo.requests().len() < n {
            assert!(Instant::now() < deadline, "request never arrived");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn status_faults_store_nothing_and_are_recorded() {
        let (devo, options) = devo();
        let planned = [401, 413, 500, 503].map(DevoFault::Status);
        devo.push_faults(planned.clone());
        let statuses: Vec<u16> = (0..4).map(|_| stream(&devo, &options, "{}\n{}")).collect();
        assert_eq!(statuses, [401, 413, 500, 503]);
        assert_eq!(devo.total_events(), 0);
        assert_eq!(stream(&devo, &options, "{}\n{}"), 200);
        assert_eq!(devo.total_events(), 2);
        let log = devo.requests();
        let recorded: Vec<Option<DevoFault>> = log.iter().map(|r| r.fault.clone()).collect();
        let mut expected: Vec<Option<DevoFault>> = planned.into_iter().map(Some).collect();
        expected.push(None);
        assert_eq!(recorded, expected);
        assert!(log.iter().all(|r| r.tag == TAG && r.bytes == 5));
        assert_eq!(log.iter().map(|r| r.events).collect::<Vec<_>>(), [0, 0, 0, 0, 2]);
        // set_failure wins while set; faults wait their turn.
        devo.push_faults([DevoFault::Status(500)]);
        devo.set_failure(Some(503));
        assert_eq!(stream(&devo, &options, "{}"), 503);
        devo.set_failure(None);
        assert_eq!(stream(&devo, &options, "{}"), 500);
        devo.push_faults([DevoFault::Drop]);
        devo.clear_faults();
        assert_eq!(stream(&devo, &options, "{}"), 200);
    }

    #[test]
    fn drop_closes_without_a_status_line_and_stores_nothing() {
        let (devo, options) = devo();
        devo.push_faults([DevoFault::Drop, DevoFault::Drop]);
        let closing =
            test_client::raw(&devo.base_url(), &stream_bytes(&devo, &options, "{}", true), Duration::from_secs(5));
        assert!(closing.closed, "connection left open");
        assert!(!closing.bytes.starts_with(b"HTTP/") && closing.bytes.len() < 8);
        let kept =
            test_client::raw(&devo.base_url(), &stream_bytes(&devo, &options, "{}", false), Duration::from_millis(500));
        assert!(!kept.bytes.is_empty() && !kept.bytes.windows(5).any(|w| w == b"HTTP/"));
        assert_eq!(devo.total_events(), 0);
        let log = devo.requests();
        assert!(log.iter().all(|r| r.status == 0 && r.events == 0));
        assert!(log.iter().all(|r| r.fault == Some(DevoFault::Drop)));
    }

    #[test]
    fn hang_answers_nothing_then_cuts_and_others_go_on() {
        let (devo, options) = devo();
        let hang = Duration::from_millis(800);
        devo.push_faults([DevoFault::Hang(hang)]);
        let started = Instant::now();
        let request = stream_bytes(&devo, &options, "{}", true);
        let base = devo.base_url();
        let client = std::thread::spawn(move || test_client::raw(&base, &request, Duration::from_secs(10)));
        await_requests(&devo, 1);
        for _ in 0..(2 * super::super::WORKERS) {
            assert_eq!(stream(&devo, &options, "{}"), 200);
        }
        assert!(started.elapsed() < hang, "a hanging request blocked the others");
        let answer = client.join().unwrap();
        assert!(started.elapsed() >= hang);
        assert!(answer.closed && !answer.bytes.starts_with(b"HTTP/"));
        assert_eq!(devo.total_events(), 2 * super::super::WORKERS);
        let first = &devo.requests()[0];
        assert_eq!((first.status, first.events), (0, 0));
        assert_eq!(first.fault, Some(DevoFault::Hang(hang)));
        // A client with a timeout sees nothing at all before it gives up.
        devo.push_faults([DevoFault::Hang(Duration::from_secs(60))]);
        let impatient =
            test_client::raw(&devo.base_url(), &stream_bytes(&devo, &options, "{}", true), Duration::from_millis(200));
        assert!(!impatient.closed && impatient.bytes.is_empty());
        // Shutting down does not wait out the hang.
        let stopping = Instant::now();
        drop(devo);
        assert!(stopping.elapsed() < Duration::from_secs(2), "drop waited {:?}", stopping.elapsed());
    }

    #[test]
    fn accept_after_stores_at_once_and_answers_late() {
        let (devo, options) = devo();
        let delay = Duration::from_millis(600);
        devo.push_faults([DevoFault::AcceptAfter(delay), DevoFault::AcceptAfter(delay)]);
        // A client that gives up first has delivered nonetheless.
        let impatient = test_client::raw(
            &devo.base_url(),
            &stream_bytes(&devo, &options, "{\"n\":1}", true),
            Duration::from_millis(150),
        );
        assert!(!impatient.closed && impatient.bytes.is_empty());
        assert_eq!(devo.events(TAG), [r#"{"n":1}"#]);
        let started = Instant::now();
        assert_eq!(stream(&devo, &options, "{\"n\":2}"), 200);
        assert!(started.elapsed() >= delay);
        assert_eq!(devo.total_events(), 2);
        let log = devo.requests();
        assert_eq!((log[0].status, log[0].events), (200, 1));
        assert_eq!(log[1].fault, Some(DevoFault::AcceptAfter(delay)));
    }

    #[test]
    fn random_faults_repeat_for_a_seed() {
        let kinds = vec![DevoFault::Status(500), DevoFault::Status(401), DevoFault::Drop];
        let run = |seed: u64, rate: f64| {
            let (devo, options) = devo();
            devo.set_random_faults(seed, rate, kinds.clone());
            let target = url(&options, "stream", TAG);
            for _ in 0..40 {
                let request = test_client::request_bytes(&devo.base_url(), "POST", &target, &[], b"{}", true);
                test_client::raw(&devo.base_url(), &request, Duration::from_secs(5));
            }
            let faults: Vec<Option<DevoFault>> = devo.requests().into_iter().map(|r| r.fault).collect();
            let stored = faults.iter().filter(|f| f.is_none()).count();
            assert_eq!(devo.total_events(), stored);
            faults
        };
        let first = run(3, 0.5);
        assert_eq!(first, run(3, 0.5));
        assert_ne!(first, run(4, 0.5));
        let hits = first.iter().flatten().count();
        assert!((8..=32).contains(&hits), "{hits} of 40 faulted");
        assert!(run(3, 0.0).iter().all(Option::is_none));
        assert!(run(3, 1.0).iter().all(Option::is_some));
    }
}
