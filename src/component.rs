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
        // Each lane's store actions are answered in turn until it sends a
        // request or has nothing left (a Watch and its Swap stay together).
        // The count of lanes grows once the account phase is over.
        let mut progressed = false;
        let mut lane = 0;
        while lane < tick.lanes() {
            while let Some(action) = tick.poll_lane(lane) {
                progressed = true;
                if let Action::Send { request } = action {
                    match start(&request, io.timeout_ns, io.max_response_bytes) {
                        Ok(pending) => {
                            in_flight.push((lane, Pending::Request(pending)));
                            break;
                        }
                        Err(failure) => tick.handle_lane(lane, Input::Response(Err(failure)), now()),
                    }
                } else if let Action::Wait { until } = action {
                    in_flight.push((lane, Pending::Wait(wake_at(until))));
                    break;
                } else {
                    let input = io.perform(action);
                    tick.handle_lane(lane, input, now());
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
        // Every lane waits for an answer (or the end of a wait): take the
        // first that arrives. The pollables are made for this one poll and
        // dropped with it.
        let ready = {
            let mut pollables = Vec::with_capacity(2 * in_flight.len());
            let mut owners = Vec::with_capacity(2 * in_flight.len());
            for (i, (_, pending)) in in_flight.iter().enumerate() {
                match pending {
                    Pending::Request(request) => pollables.extend(request.subscribe()),
                    Pending::Wait(at) => pollables.push(wasi::clocks::monotonic_clock::subscribe_instant(*at)),
                }
                owners.resize(pollables.len(), i);
            }
            let refs: Vec<&wasi::io::poll::Pollable> = pollables.iter().collect();
            owners[wasi::io::poll::poll(&refs)[0] as usize]
        };
        let (lane, pending) = in_flight.swap_remove(ready);
        let input = match pending {
            Pending::Request(request) => Input::Response(request.finish()),
            Pending::Wait(_) => Input::Woke,
        };
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
            Action::Send { request } => Input::Response(send(&request, self.timeout_ns, self.max_response_bytes)),
            Action::Wait { until } => {
                wasi::clocks::monotonic_clock::subscribe_instant(wake_at(until)).block();
                Input::Woke
            }
            Action::Done(_) => unreachable!("Done is handled by the caller"),
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
fn send(req: &HttpRequest, timeout_ns: u64, max_body: u64) -> Result<HttpResponse, HttpFailure> {
    start(req, timeout_ns, max_body)?.finish()
}

/// A request handed to the host, its body written, its answer to come.
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

fn start(req: &HttpRequest, timeout_ns: u64, max_body: u64) -> Result<InFlight, HttpFailure> {
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
    let due = wasi::clocks::monotonic_clock::now().saturating_add(timeout_ns.saturating_mul(2));
    let written = write_body(body, &req.body, timeout_ns);
    Ok(InFlight { future, written, max_body, timeout_ns, due })
}

impl InFlight {
    /// What a wait for this request's answer waits on: the answer, or the
    /// time it is due.
    fn subscribe(&self) -> [wasi::io::poll::Pollable; 2] {
        [self.future.subscribe(), wasi::clocks::monotonic_clock::subscribe_instant(self.due)]
    }

    /// Waits for the answer (until it is due) and reads its body.
    fn finish(self) -> Result<HttpResponse, HttpFailure> {
        let answer = loop {
            if let Some(answer) = self.future.get() {
                break answer;
            }
            if wasi::clocks::monotonic_clock::now() >= self.due {
                // Dropping the future (on return) cancels the request.
                return Err(HttpFailure::Timeout);
            }
            let [answer, due] = self.subscribe();
            wasi::io::poll::poll(&[&answer, &due]);
        };
        let response = match answer {
            Ok(Ok(response)) => response,
            // A refused or failed request also breaks the body stream; the
            // response's error says why, so it goes first.
            Ok(Err(code)) => return Err(failure(code)),
            Err(()) => return Err(HttpFailure::Transport("response future in a bad state".into())),
        };
        self.written?;
        let status = response.status();
        let headers: Vec<(String, String)> = response
            .headers()
            .entries()
            .into_iter()
            .map(|(k, v)| (k, String::from_utf8_lossy(&v).into_owned()))
            .collect();
        let too_large = HttpFailure::TooLarge { limit: self.max_body };
        let declared = headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.trim().parse::<u64>().ok());
        if declared.is_some_and(|len| len > self.max_body) {
            return Err(too_large);
        }
        let incoming = response.consume().map_err(|()| invalid("response body"))?;
        // Sized once from Content-Length when there is one: growing by
        // doubling would copy the page and leave the memory at twice its size.
        let mut bytes = Vec::with_capacity(declared.unwrap_or(0) as usize);
        {
            let stream = incoming.stream().map_err(|()| invalid("response stream"))?;
            loop {
                // At most one byte past the cap is asked for: enough to know.
                let room = (self.max_body + 1).saturating_sub(bytes.len() as u64).min(READ_CHUNK);
                match stream.read(room) {
                    // Nothing yet: wait for more, a between-bytes timeout at most.
                    Ok(chunk) if chunk.is_empty() => {
                        if !ready_within(&stream.subscribe(), self.timeout_ns) {
                            return Err(HttpFailure::Timeout);
                        }
                    }
                    Ok(chunk) => bytes.extend_from_slice(&chunk),
                    Err(wasi::io::streams::StreamError::Closed) => break,
                    Err(e) => return Err(HttpFailure::Transport(stream_error_text(e))),
                }
                if bytes.len() as u64 > self.max_body {
                    return Err(too_large);
                }
            }
        }
        drop(incoming);
        Ok(HttpResponse { status, headers, body: bytes })
    }
}

/// Waits until `pollable` is ready, for `timeout_ns` at most; false when
/// the time ran out first.
fn ready_within(pollable: &wasi::io::poll::Pollable, timeout_ns: u64) -> bool {
    let timer = wasi::clocks::monotonic_clock::subscribe_duration(timeout_ns);
    wasi::io::poll::poll(&[pollable, &timer]).contains(&0)
}

/// The most one read of a response body asks the host for.
const READ_CHUNK: u64 = 1 << 20;

fn invalid(what: &str) -> HttpFailure {
    HttpFailure::Transport(format!("the host rejected the request {what}"))
}

/// Writes the body in pieces as large as the host accepts (`check-write`),
/// not in the 4 KiB of `blocking-write-and-flush`: each piece is a call
/// across the boundary and a write on the connection. A host that accepts
/// nothing for `timeout_ns` fails it.
fn write_body(body: http::OutgoingBody, bytes: &[u8], timeout_ns: u64) -> Result<(), HttpFailure> {
    {
        let stream = body.write().map_err(|()| HttpFailure::Transport("the host gave no body stream".into()))?;
        let stream_failure = |e| HttpFailure::Transport(stream_error_text(e));
        let mut rest = bytes;
        while !rest.is_empty() {
            let permitted = stream.check_write().map_err(stream_failure)?;
            if permitted == 0 {
                if !ready_within(&stream.subscribe(), timeout_ns) {
                    return Err(HttpFailure::Timeout);
                }
                continue;
            }
            let n = rest.len().min(permitted as usize);
            stream.write(&rest[..n]).map_err(stream_failure)?;
            rest = &rest[n..];
        }
        // A host may close the stream as soon as it has the whole body (its
        // Content-Length): with every byte written, that is no failure.
        let flushed = match stream.flush() {
            Ok(()) => {
                if !ready_within(&stream.subscribe(), timeout_ns) {
                    return Err(HttpFailure::Timeout);
                }
                stream.check_write().map(drop)
            }
            failed => failed,
        };
        match flushed {
            Ok(()) | Err(wasi::io::streams::StreamError::Closed) => {}
            Err(e) => return Err(stream_failure(e)),
        }
    }
    http::OutgoingBody::finish(body, None).map_err(failure)
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
