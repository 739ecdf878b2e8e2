//! The wasm32 adapter: performs the core's actions with the WIT imports
//! (wasi:config, wasi:keyvalue, wasi:http, wasi:clocks) and converts the
//! report into the WIT records. No decisions are made here.

use crate::config::Config;
use crate::error::CollectorError;
use crate::http::{HttpFailure, HttpRequest, HttpResponse, Method};
use crate::report::{Outcome, ServiceReport, TickReport};
use crate::tick::{Action, Input, Tick};
use crate::validate::{Check, Status, Validation};
use chrono::{DateTime, Utc};

wit_bindgen::generate!({
    world: "collector",
    path: "wit",
    generate_all,
});

use exports::onepassword::collector::runner as wit;
use fermyon::spin_cron::cron_types;
use wasi::http::types as http;

struct Component;
export!(Component);

impl Guest for Component {
    fn handle_cron_event(_metadata: cron_types::Metadata) -> Result<(), cron_types::Error> {
        let report = run_tick().map_err(|e| cron_types::Error::Other(e.to_string()))?;
        let mut failures = Vec::new();
        // Spin collects component stderr as the log, a record per write:
        // each line is one write, its newline included.
        let mut stderr = std::io::stderr().lock();
        for w in &report.warnings {
            let _ = crate::report::write_line(&mut stderr, &format!("warning: {w}"));
        }
        for s in &report.services {
            // One line per service, Devo's sender statistics and more.
            let _ = crate::report::write_line(&mut stderr, &s.log_line());
            if let Some(e) = &s.error {
                failures.push(format!("{}: {e}", s.service));
            }
        }
        if failures.is_empty() {
            Ok(())
        } else {
            Err(cron_types::Error::Other(failures.join("; ")))
        }
    }
}

impl wit::Guest for Component {
    fn tick() -> Result<wit::TickReport, wit::CollectorError> {
        run_tick().map(to_wit_report).map_err(to_wit_error)
    }

    fn validate() -> Vec<wit::Check> {
        run_validate()
            .into_iter()
            .map(|c| wit::Check {
                name: c.name,
                status: match c.status {
                    Status::Pass => wit::CheckStatus::Pass,
                    Status::Warn => wit::CheckStatus::Warn,
                    Status::Fail => wit::CheckStatus::Fail,
                },
                detail: c.detail,
            })
            .collect()
    }
}

fn run_tick() -> Result<TickReport, CollectorError> {
    let config = load_config()?;
    let bucket = wasi::keyvalue::store::open(crate::state::BUCKET)
        .map_err(|e| CollectorError::persistence("open", &kv_error_text(e)))?;
    let mut io = Io {
        bucket,
        watched: None,
        timeout_ns: config.request_timeout_ms * 1_000_000,
        max_response_bytes: config.max_response_bytes,
    };
    // Every enabled service at once: the tick takes as long as its slowest
    // service, not their sum.
    let lanes = config.services.len();
    let mut tick = Tick::new(config, now(), wasi::random::random::get_random_u64()).with_lanes(lanes);
    let mut in_flight: Vec<(usize, Pending)> = Vec::new();
    loop {
        // The time, for a lease renewal that came due while every lane
        // waited (the next poll of its lane starts it).
        tick.clock(now());
        // Each lane's store actions are answered in turn until it sends a
        // request or has nothing left (a Watch and its Swap stay together).
        // The count of lanes grows once the account phase is over.
        let mut progressed = false;
        let mut lane = 0;
        while lane < tick.lanes() {
            while let Some(action) = tick.poll_lane(lane) {
                progressed = true;
                match action {
                    Action::Send { request } => match start(request, io.timeout_ns, io.max_response_bytes) {
                        Ok(mut pending) => match pending.advance() {
                            Some(result) => tick.handle_lane(lane, Input::Response(result), now()),
                            None => {
                                in_flight.push((lane, Pending::Request(pending)));
                                break;
                            }
                        },
                        Err(failure) => tick.handle_lane(lane, Input::Response(Err(failure)), now()),
                    },
                    Action::Wait { until } => {
                        in_flight.push((lane, Pending::Wait(wake_at(until))));
                        break;
                    }
                    // The lane could not renew its lease: dropping its
                    // request cancels it.
                    Action::Abandon => in_flight.retain(|(l, _)| *l != lane),
                    action => {
                        let input = io.perform(action);
                        tick.handle_lane(lane, input, now());
                    }
                }
            }
            lane += 1;
        }
        if progressed {
            continue;
        }
        if let Some(report) = tick.done() {
            return Ok(report);
        }
        // Every lane waits for an answer (or the end of a wait): wait for
        // the first that can go on, or for the next lease renewal, whichever
        // comes first. The pollables are made for this one poll and
        // dropped with it.
        let ready = {
            let mut pollables = Vec::with_capacity(2 * in_flight.len() + 1);
            let mut owners = Vec::with_capacity(2 * in_flight.len() + 1);
            for (i, (_, pending)) in in_flight.iter().enumerate() {
                match pending {
                    Pending::Request(request) => pollables.extend(request.subscribe()),
                    Pending::Wait(at) => pollables.push(wasi::clocks::monotonic_clock::subscribe_instant(*at)),
                }
                owners.resize(pollables.len(), Some(i));
            }
            if let Some(at) = tick.next_renewal() {
                pollables.push(wasi::clocks::monotonic_clock::subscribe_instant(wake_at(at)));
                owners.push(None);
            }
            let refs: Vec<&wasi::io::poll::Pollable> = pollables.iter().collect();
            owners[wasi::io::poll::poll(&refs)[0] as usize]
        };
        // A renewal is due: the next round of polls starts it.
        let Some(ready) = ready else { continue };
        let input = match &mut in_flight[ready].1 {
            // A request goes on as far as it can without waiting: its
            // answer, or a wait for more of it.
            Pending::Request(request) => match request.advance() {
                Some(result) => Input::Response(result),
                None => continue,
            },
            Pending::Wait(_) => Input::Woke,
        };
        let (lane, _) = in_flight.swap_remove(ready);
        tick.handle_lane(lane, input, now());
    }
}

/// What a lane waits for.
enum Pending {
    Request(InFlight),
    /// The end of a wait for the budget: this instant of the monotonic
    /// clock.
    Wait(wasi::clocks::monotonic_clock::Instant),
}

/// The instant of the monotonic clock when the wall clock reads `until`
/// (and a little after: the wall clock read after the wait must not be
/// short of it).
fn wake_at(until: DateTime<Utc>) -> wasi::clocks::monotonic_clock::Instant {
    let wait = (until - now()).num_nanoseconds().unwrap_or(i64::MAX).max(0) as u64;
    wasi::clocks::monotonic_clock::now().saturating_add(wait).saturating_add(WAKE_MARGIN_NS)
}

/// How much later than asked a wait ends.
const WAKE_MARGIN_NS: u64 = 5_000_000;

fn run_validate() -> Vec<Check> {
    let config = load_config();
    let timeout_ns = config.as_ref().map_or(0, |c| c.request_timeout_ms * 1_000_000);
    let max_response_bytes =
        config.as_ref().map_or(crate::config::DEFAULT_MAX_RESPONSE_BYTES, |c| c.max_response_bytes);
    let validation = Validation::new(config, now());
    let bucket = match wasi::keyvalue::store::open(crate::state::BUCKET) {
        Ok(bucket) => bucket,
        Err(e) => {
            let mut checks = validation.into_checks();
            checks.push(Check {
                name: "key-value store".into(),
                status: Status::Fail,
                detail: CollectorError::persistence("open", &kv_error_text(e)).to_string(),
            });
            return checks;
        }
    };
    let mut io = Io { bucket, watched: None, timeout_ns, max_response_bytes };
    crate::validate::run(validation, |action| io.perform(action))
}

/// The settings, after refusing any key the host offers that the collector
/// does not read (a misspelt one would else be ignored). Under Spin
/// `get-all` lists the manifest's variables only; a host that cannot list
/// them leaves the keys unchecked, each key's own read still says what fails.
fn load_config() -> Result<Config, CollectorError> {
    if let Ok(all) = wasi::config::store::get_all() {
        crate::config::check_keys(all.iter().map(|(k, _)| k.as_str()))?;
    }
    Config::load(|key| wasi::config::store::get(key).map_err(config_error_text))
}

/// Performs the core's actions with the WIT imports.
struct Io {
    bucket: wasi::keyvalue::store::Bucket,
    /// The compare-and-swap handle between a `Watch` and its `Swap`.
    watched: Option<wasi::keyvalue::atomics::Cas>,
    timeout_ns: u64,
    /// The largest answer body read (`max_response_bytes`).
    max_response_bytes: u64,
}

impl Io {
    fn perform(&mut self, action: Action) -> Input {
        match action {
            Action::Load { key } => Input::Loaded(self.bucket.get(&key).map_err(kv_error_text)),
            Action::Store { key, value } => Input::Stored(self.bucket.set(&key, &value).map_err(kv_error_text)),
            Action::Watch { key } => {
                let cas = wasi::keyvalue::atomics::Cas::new(&self.bucket, &key).map_err(kv_error_text);
                Input::Loaded(cas.and_then(|cas| {
                    let value = cas.current().map_err(kv_error_text)?;
                    self.watched = Some(cas);
                    Ok(value)
                }))
            }
            Action::Swap { value } => {
                let cas = self.watched.take().expect("the core swaps only after a watch");
                Input::Swapped(match wasi::keyvalue::atomics::swap(cas, &value) {
                    Ok(()) => Ok(true),
                    Err(wasi::keyvalue::atomics::CasError::CasFailed(_)) => Ok(false),
                    Err(wasi::keyvalue::atomics::CasError::StoreError(e)) => Err(kv_error_text(e)),
                })
            }
            Action::Send { request } => Input::Response(send(request, self.timeout_ns, self.max_response_bytes)),
            Action::Wait { until } => {
                wasi::clocks::monotonic_clock::subscribe_instant(wake_at(until)).block();
                Input::Woke
            }
            Action::Done(_) | Action::Abandon => unreachable!("Done and Abandon are handled by the caller"),
        }
    }
}

fn now() -> DateTime<Utc> {
    let t = wasi::clocks::wall_clock::now();
    DateTime::from_timestamp(t.seconds as i64, t.nanoseconds).unwrap_or_default()
}

fn config_error_text(e: wasi::config::store::Error) -> String {
    match e {
        wasi::config::store::Error::Upstream(m) => format!("upstream: {m}"),
        wasi::config::store::Error::Io(m) => format!("io: {m}"),
    }
}

fn kv_error_text(e: wasi::keyvalue::store::Error) -> String {
    match e {
        wasi::keyvalue::store::Error::NoSuchStore => "no such store".into(),
        wasi::keyvalue::store::Error::AccessDenied => "access denied".into(),
        wasi::keyvalue::store::Error::Other(m) => m,
    }
}

/// One request and its answer, one after the other (validate mode).
fn send(req: HttpRequest, timeout_ns: u64, max_body: u64) -> Result<HttpResponse, HttpFailure> {
    start(req, timeout_ns, max_body)?.finish()
}

/// A request handed to the host, its body being written, its answer to
/// come.
///
/// Nothing here blocks: [`InFlight::advance`] goes on as far as the host
/// allows without waiting, and [`InFlight::subscribe`] says what to wait on
/// for more. The tick's poll loop waits on every lane's request at once and
/// on the next lease renewal, so a slow body — written or read, each wait
/// up to `request_timeout_ms` — never keeps a lease from being renewed.
///
/// Every host resource of a request lives only as long as the request: the
/// future and its answer, the bodies and their streams, and each pollable,
/// made for one wait and dropped after it. A tick pages for as long as its
/// deadline allows, so anything kept per request would add up until the
/// host's resource ceiling stops the instance. That is also why no
/// `request-options` is handed over: wasi-http hosts built on wasmtime
/// (the harness, Spin) keep each one in the instance's resource table
/// until the instance ends. The timeouts are kept here instead.
struct InFlight {
    /// Declared first, dropped first: its streams before the bodies and
    /// the future they belong to.
    phase: Phase,
    future: http::FutureIncomingResponse,
    /// How writing the body went: reported after the answer, which says
    /// more when the host refused or failed the request.
    written: Result<(), HttpFailure>,
    /// The answer's body is read up to this many bytes: a larger one — by
    /// its `Content-Length`, before any of it is read, or as it arrives —
    /// fails the request with [`HttpFailure::TooLarge`] instead of growing
    /// the instance's memory until the host stops the whole tick.
    max_body: u64,
    /// `request_timeout_ms`: to connect, for the first byte, between bytes.
    timeout_ns: u64,
    /// When the answer's head is due at the latest (monotonic clock): a
    /// connect and a first byte's timeout after the request was handed over.
    due: wasi::clocks::monotonic_clock::Instant,
}

/// Where a request is.
enum Phase {
    /// Writing the body: the host streams it and takes more as it can.
    Writing(Writing),
    /// The body is written (or failed): the answer's head is awaited.
    Head,
    /// Reading the answer's body.
    Body(Body),
    /// The answer was handed on.
    Over,
}

struct Writing {
    /// Declared before the body it belongs to: dropped first.
    stream: wasi::io::streams::OutputStream,
    body: http::OutgoingBody,
    bytes: Vec<u8>,
    offset: usize,
    /// The whole body is written and flushed, the flush not yet complete.
    flushing: bool,
    /// A host that takes no byte (or does not complete the flush) until
    /// then fails the request (monotonic clock).
    stalled_at: wasi::clocks::monotonic_clock::Instant,
}

struct Body {
    /// Declared before the body and the response it belongs to: dropped
    /// first.
    stream: wasi::io::streams::InputStream,
    _incoming: http::IncomingBody,
    _response: http::IncomingResponse,
    status: u16,
    headers: Vec<(String, String)>,
    bytes: Vec<u8>,
    /// No byte until then is a between-bytes timeout (monotonic clock).
    stalled_at: wasi::clocks::monotonic_clock::Instant,
}

fn start(req: HttpRequest, timeout_ns: u64, max_body: u64) -> Result<InFlight, HttpFailure> {
    let headers = http::Fields::new();
    for (name, value) in &req.headers {
        headers.append(name, value.as_bytes()).map_err(|e| {
            HttpFailure::Transport(format!("header {name}: {}", crate::http::error_code_text(&format!("{e:?}"), None)))
        })?;
    }
    if req.method == Method::Post {
        let len = req.body.len().to_string();
        headers.append("content-length", len.as_bytes()).map_err(|e| {
            HttpFailure::Transport(format!("content-length: {}", crate::http::error_code_text(&format!("{e:?}"), None)))
        })?;
    }
    let outgoing = http::OutgoingRequest::new(headers);
    let method = match req.method {
        Method::Get => http::Method::Get,
        Method::Post => http::Method::Post,
    };
    let scheme = match req.scheme {
        crate::endpoint::Scheme::Http => http::Scheme::Http,
        crate::endpoint::Scheme::Https => http::Scheme::Https,
    };
    outgoing.set_method(&method).map_err(|()| invalid("method"))?;
    outgoing.set_scheme(Some(&scheme)).map_err(|()| invalid("scheme"))?;
    outgoing.set_authority(Some(&req.authority)).map_err(|()| invalid("authority"))?;
    outgoing.set_path_with_query(Some(&req.path)).map_err(|()| invalid("path"))?;
    let body = outgoing.body().map_err(|()| invalid("body"))?;

    // Hand the request over before writing the body: the host streams it and
    // would otherwise stop accepting writes once its buffer is full.
    let future = wasi::http::outgoing_handler::handle(outgoing, None).map_err(failure)?;
    let now = wasi::clocks::monotonic_clock::now();
    let due = now.saturating_add(timeout_ns.saturating_mul(2));
    let (phase, written) = match body.write() {
        Ok(stream) => {
            let stalled_at = now.saturating_add(timeout_ns);
            let writing = Writing { stream, body, bytes: req.body, offset: 0, flushing: false, stalled_at };
            (Phase::Writing(writing), Ok(()))
        }
        Err(()) => (Phase::Head, Err(HttpFailure::Transport("the host gave no body stream".into()))),
    };
    Ok(InFlight { phase, future, written, max_body, timeout_ns, due })
}

impl InFlight {
    /// What a wait for this request to go on waits on: the host taking
    /// more of the body, the answer, more of its body; or the time that
    /// wait runs out.
    fn subscribe(&self) -> [wasi::io::poll::Pollable; 2] {
        let at = wasi::clocks::monotonic_clock::subscribe_instant;
        match &self.phase {
            Phase::Writing(w) => [w.stream.subscribe(), at(w.stalled_at)],
            Phase::Body(b) => [b.stream.subscribe(), at(b.stalled_at)],
            Phase::Head | Phase::Over => [self.future.subscribe(), at(self.due)],
        }
    }

    /// Waits for the answer and reads its body (validate mode).
    fn finish(mut self) -> Result<HttpResponse, HttpFailure> {
        loop {
            if let Some(result) = self.advance() {
                return result;
            }
            let [more, timer] = self.subscribe();
            wasi::io::poll::poll(&[&more, &timer]);
        }
    }

    /// Goes on as far as the host allows without waiting: writes what the
    /// host takes of the body, then takes the answer's head and reads what
    /// has arrived of its body. `None`: wait ([`InFlight::subscribe`]) and
    /// call again. An answer (or failure) is handed on once.
    fn advance(&mut self) -> Option<Result<HttpResponse, HttpFailure>> {
        loop {
            match &mut self.phase {
                Phase::Writing(w) => match w.advance(self.timeout_ns) {
                    None => return None,
                    Some(result) => {
                        let Phase::Writing(w) = std::mem::replace(&mut self.phase, Phase::Head) else {
                            unreachable!("writing")
                        };
                        let Writing { stream, body, .. } = w;
                        drop(stream);
                        self.written = result.and_then(|()| http::OutgoingBody::finish(body, None).map_err(failure));
                    }
                },
                Phase::Head => {
                    let Some(answer) = self.future.get() else {
                        if wasi::clocks::monotonic_clock::now() >= self.due {
                            // Dropping the future (with the request) cancels it.
                            return self.over(Err(HttpFailure::Timeout));
                        }
                        return None;
                    };
                    match self.head(answer) {
                        Ok(body) => self.phase = Phase::Body(body),
                        Err(e) => return self.over(Err(e)),
                    }
                }
                Phase::Body(b) => {
                    let result = b.advance(self.max_body, self.timeout_ns)?;
                    return self.over(result);
                }
                Phase::Over => panic!("a request's answer was handed on already"),
            }
        }
    }

    fn over(&mut self, result: Result<HttpResponse, HttpFailure>) -> Option<Result<HttpResponse, HttpFailure>> {
        self.phase = Phase::Over;
        Some(result)
    }

    /// The answer's head: its status and headers, and its body to read.
    #[allow(clippy::type_complexity)]
    fn head(
        &mut self,
        answer: Result<Result<http::IncomingResponse, http::ErrorCode>, ()>,
    ) -> Result<Body, HttpFailure> {
        let response = match answer {
            Ok(Ok(response)) => response,
            // A refused or failed request also breaks the body stream; the
            // response's error says why, so it goes first.
            Ok(Err(code)) => return Err(failure(code)),
            Err(()) => return Err(HttpFailure::Transport("response future in a bad state".into())),
        };
        std::mem::replace(&mut self.written, Ok(()))?;
        let status = response.status();
        let headers: Vec<(String, String)> = response
            .headers()
            .entries()
            .into_iter()
            .map(|(k, v)| (k, String::from_utf8_lossy(&v).into_owned()))
            .collect();
        let declared = headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.trim().parse::<u64>().ok());
        if declared.is_some_and(|len| len > self.max_body) {
            return Err(HttpFailure::TooLarge { limit: self.max_body });
        }
        let incoming = response.consume().map_err(|()| invalid("response body"))?;
        let stream = incoming.stream().map_err(|()| invalid("response stream"))?;
        // Sized once from Content-Length when there is one: growing by
        // doubling would copy the page and leave the memory at twice its size.
        let bytes = Vec::with_capacity(declared.unwrap_or(0) as usize);
        let stalled_at = wasi::clocks::monotonic_clock::now().saturating_add(self.timeout_ns);
        Ok(Body { stream, _incoming: incoming, _response: response, status, headers, bytes, stalled_at })
    }
}

impl Writing {
    /// Writes the body in pieces as large as the host accepts
    /// (`check-write`), not in the 4 KiB of `blocking-write-and-flush`: each
    /// piece is a call across the boundary and a write on the connection.
    /// `None`: the host takes nothing now. A host that takes nothing for
    /// `timeout_ns` fails it.
    fn advance(&mut self, timeout_ns: u64) -> Option<Result<(), HttpFailure>> {
        let stream_failure = |e| Some(Err(HttpFailure::Transport(stream_error_text(e))));
        let now = wasi::clocks::monotonic_clock::now();
        while self.offset < self.bytes.len() {
            let permitted = match self.stream.check_write() {
                Ok(permitted) => permitted,
                Err(e) => return stream_failure(e),
            };
            if permitted == 0 {
                return if now >= self.stalled_at { Some(Err(HttpFailure::Timeout)) } else { None };
            }
            let n = (self.bytes.len() - self.offset).min(permitted as usize);
            if let Err(e) = self.stream.write(&self.bytes[self.offset..self.offset + n]) {
                return stream_failure(e);
            }
            self.offset += n;
            self.stalled_at = now.saturating_add(timeout_ns);
        }
        if !self.flushing {
            self.bytes = Vec::new();
            match self.stream.flush() {
                Ok(()) => self.flushing = true,
                // A host may close the stream as soon as it has the whole
                // body (its Content-Length): with every byte written, that
                // is no failure.
                Err(wasi::io::streams::StreamError::Closed) => return Some(Ok(())),
                Err(e) => return stream_failure(e),
            }
        }
        if !self.stream.subscribe().ready() {
            return if now >= self.stalled_at { Some(Err(HttpFailure::Timeout)) } else { None };
        }
        match self.stream.check_write() {
            Ok(_) | Err(wasi::io::streams::StreamError::Closed) => Some(Ok(())),
            Err(e) => stream_failure(e),
        }
    }
}

impl Body {
    /// Reads what has arrived of the body. `None`: nothing more yet.
    fn advance(&mut self, max_body: u64, timeout_ns: u64) -> Option<Result<HttpResponse, HttpFailure>> {
        loop {
            // At most one byte past the cap is asked for: enough to know.
            let room = (max_body + 1).saturating_sub(self.bytes.len() as u64).min(READ_CHUNK);
            match self.stream.read(room) {
                // Nothing yet: wait for more, a between-bytes timeout at most.
                Ok(chunk) if chunk.is_empty() => {
                    let now = wasi::clocks::monotonic_clock::now();
                    return if now >= self.stalled_at { Some(Err(HttpFailure::Timeout)) } else { None };
                }
                Ok(chunk) => {
                    self.bytes.extend_from_slice(&chunk);
                    self.stalled_at = wasi::clocks::monotonic_clock::now().saturating_add(timeout_ns);
                }
                Err(wasi::io::streams::StreamError::Closed) => break,
                Err(e) => return Some(Err(HttpFailure::Transport(stream_error_text(e)))),
            }
            if self.bytes.len() as u64 > max_body {
                return Some(Err(HttpFailure::TooLarge { limit: max_body }));
            }
        }
        let response = HttpResponse {
            status: self.status,
            headers: std::mem::take(&mut self.headers),
            body: std::mem::take(&mut self.bytes),
        };
        Some(Ok(response))
    }
}

/// The most one read of a response body asks the host for.
const READ_CHUNK: u64 = 1 << 20;

fn invalid(what: &str) -> HttpFailure {
    HttpFailure::Transport(format!("the host rejected the request {what}"))
}

fn stream_error_text(e: wasi::io::streams::StreamError) -> String {
    match e {
        wasi::io::streams::StreamError::Closed => "stream closed".into(),
        wasi::io::streams::StreamError::LastOperationFailed(err) => err.to_debug_string(),
    }
}

fn failure(code: http::ErrorCode) -> HttpFailure {
    match code {
        http::ErrorCode::HttpRequestDenied => HttpFailure::Denied,
        http::ErrorCode::ConnectionTimeout
        | http::ErrorCode::ConnectionReadTimeout
        | http::ErrorCode::ConnectionWriteTimeout
        | http::ErrorCode::HttpResponseTimeout => HttpFailure::Timeout,
        other => HttpFailure::Transport(error_code_text(&other)),
    }
}

/// A wasi-http error code as a plain phrase, with what detail it carries.
fn error_code_text(code: &http::ErrorCode) -> String {
    let detail = match code {
        http::ErrorCode::DnsError(p) => p.rcode.clone(),
        http::ErrorCode::TlsAlertReceived(p) => p.alert_message.clone(),
        http::ErrorCode::InternalError(m) => m.clone(),
        _ => None,
    };
    crate::http::error_code_text(&format!("{code:?}"), detail.as_deref())
}

fn to_wit_error(e: CollectorError) -> wit::CollectorError {
    wit::CollectorError { id: e.id, kind: e.kind.as_str().to_string(), message: e.message, http_status: e.http_status }
}

fn to_wit_report(r: TickReport) -> wit::TickReport {
    wit::TickReport {
        started_at: r.started_at,
        elapsed_ms: r.elapsed_ms,
        services: r.services.into_iter().map(to_wit_service).collect(),
        warnings: r.warnings,
    }
}

fn to_wit_service(s: ServiceReport) -> wit::ServiceReport {
    wit::ServiceReport {
        service: s.service,
        outcome: match s.outcome {
            Outcome::Delivered => wit::Outcome::Delivered,
            Outcome::Idle => wit::Outcome::Idle,
            Outcome::Failed => wit::Outcome::Failed,
            Outcome::Deferred => wit::Outcome::Deferred,
        },
        fetched: s.fetched,
        sent: s.sent,
        unconfirmed: s.unconfirmed,
        pages: s.pages,
        bytes_sent: s.bytes_sent,
        has_more: s.has_more,
        checkpoint: s.checkpoint,
        total_sent: s.total_sent,
        lag_seconds: s.lag_seconds,
        elapsed_ms: s.elapsed_ms,
        deferred_until: s.deferred_until,
        deferred_reason: s.deferred_reason,
        error: s.error.map(to_wit_error),
    }
}
