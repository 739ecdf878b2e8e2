//! A loopback 1Password Events API: bearer auth with feature scopes,
//! introspection, and cursor paging over a `Dataset` that can grow mid-test.
//! Event requests can be faulted (planned or seeded-random) and all requests
//! rate-limited per clock minute and hour, like the real service.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, SecondsFormat, Utc};
use onepassword_collector::service::{ApiVersion, Service};
use serde_json::{json, Map, Value};
use tiny_http::Request;

use super::dataset::base32_id;
use super::{header, lock, read_body, wall_clock, Answer, Background, Clock, Dataset, Deferred, FaultPlan, Reply};

const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: u64 = 1000;
/// Paging bodies are tiny; anything far larger is a client bug.
const MAX_BODY: usize = 64 * 1024;

/// How the emulator is set up.
#[derive(Clone)]
pub struct OnePasswordOptions {
    pub token: String,
    pub dataset: Dataset,
    pub account_uuid: String,
    /// Introspection `features`; a service not listed here answers 401.
    pub features: Vec<String>,
}

impl OnePasswordOptions {
    /// All features; the account taken from the dataset when it has one.
    pub fn new(token: impl Into<String>, dataset: Dataset) -> Self {
        let account_uuid = dataset.account_uuid().map_or_else(|| Self::default().account_uuid, str::to_owned);
        OnePasswordOptions { token: token.into(), dataset, account_uuid, ..Self::default() }
    }
}

impl Default for OnePasswordOptions {
    fn default() -> Self {
        OnePasswordOptions {
            token: "op-emulator-token".to_owned(),
            dataset: Dataset::default(),
            account_uuid: "VZSYVT2LGHTBWBQGUJAIZVRABM".to_owned(),
            features: Service::ALL.iter().map(|s| s.feature().to_owned()).collect(),
        }
    }
}

// Hand-written so a test failure printing the options never shows the token.
impl fmt::Debug for OnePasswordOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OnePasswordOptions")
            .field("token", &"<redacted>")
            .field("events", &self.dataset.len())
            .field("account_uuid", &self.account_uuid)
            .field("features", &self.features)
            .finish()
    }
}

/// A way to answer an event request wrongly. Faults touch neither the
/// data nor any cursor's position: the client can repeat the request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OpFault {
    /// This status with a JSON error body; 400 reads as an invalid cursor.
    Status(u16),
    /// 429, with `Retry-After: N` (seconds) when `Some(N)`.
    TooManyRequests { retry_after: Option<u64> },
    /// The correct answer, but only after this delay.
    Slow(Duration),
    /// No answer at all: the client gets a transport error.
    Drop,
    /// 200 with an HTML login page instead of JSON.
    NotJson,
    /// 200 with the first half of the correct page body.
    Truncated,
    /// 200 with a well-formed, empty page padded to `bytes` bytes (the
    /// cursor is long): too large for a client's cap. With `declared` it
    /// says its size in `Content-Length`; without, it is sent chunked and
    /// the client finds out by reading.
    Oversized { bytes: usize, declared: bool },
    /// 200 with a well-formed page whose items have no `uuid` or
    /// `timestamp` (at least one item, even where the real page is empty).
    /// Its cursor resumes where the request started: the cursor that was
    /// sent, or for a reset request a new one at the requested start.
    MissingFields,
    /// 200 with no items, `has_more: true` and a cursor that does not move:
    /// the cursor that was sent, or for a reset request a new one at the
    /// requested start. Planned for every request (`set_random_faults` at
    /// rate 1), a 1Password that says "more" forever.
    StuckCursor,
}

/// One request as the emulator saw and answered it.
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    pub method: String,
    /// Path without the query string.
    pub path: String,
    /// 0 when the client got no answer (`OpFault::Drop`). A `Slow` request
    /// is recorded when it arrives, with the status it will get.
    pub status: u16,
    pub at: Instant,
    /// The emulator clock when the request arrived.
    pub clock_time: DateTime<Utc>,
    /// The injected fault that shaped the answer, if any.
    pub fault: Option<OpFault>,
    /// Answered 429 by the rate limit (`set_rate_limit`).
    pub rate_limited: bool,
}

pub struct OnePasswordEmulator {
    state: Arc<State>,
    server: Background,
}

impl OnePasswordEmulator {
    pub fn start(options: OnePasswordOptions) -> std::io::Result<Self> {
        let state = Arc::new(State::new(options));
        let shared = Arc::clone(&state);
        let server = Background::spawn("op-emulator", move |request, deferred| shared.handle(request, deferred))?;
        Ok(OnePasswordEmulator { state, server })
    }

    /// `http://127.0.0.1:PORT`, no trailing slash.
    pub fn base_url(&self) -> String {
        self.server.base_url()
    }

    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.state.log).clone()
    }

    pub fn request_count(&self) -> usize {
        lock(&self.state.log).len()
    }

    /// Appends newer events (v2 form) to a service; see `Dataset::push`.
    pub fn push_events(&self, service: Service, events: Vec<Value>) {
        lock(&self.state.data).push(service, events);
    }

    /// Serves `text` as an event exactly as written (see [`Dataset::push_raw`]).
    pub fn push_raw_event(&self, service: Service, at: DateTime<Utc>, text: &str) {
        lock(&self.state.data).push_raw(service, at, text);
    }

    /// A copy of everything the emulator can serve right now.
    pub fn dataset(&self) -> Dataset {
        lock(&self.state.data).clone()
    }

    /// While `Some(status)`, every request gets that status and an error body
    /// (for retry and rate-limit tests); it is still recorded. It takes
    /// precedence over planned faults, which stay queued meanwhile.
    pub fn set_failure(&self, status: Option<u16>) {
        *lock(&self.state.failure) = status;
    }

    /// Faults for the next requests to the event endpoints (`POST
    /// /api/v1|v2/<service>`), one per request, in order. Introspection and
    /// requests refused by the rate limit do not use them up.
    pub fn push_faults(&self, faults: impl IntoIterator<Item = OpFault>) {
        lock(&self.state.faults).push(faults);
    }

    /// Once the planned faults are used up, each event request is faulted
    /// with probability `rate` (clamped to 0..=1), the kind drawn uniformly
    /// from `kinds`. The same seed and request sequence give the same faults.
    pub fn set_random_faults(&self, seed: u64, rate: f64, kinds: Vec<OpFault>) {
        lock(&self.state.faults).set_random(seed, rate, kinds);
    }

    /// Forgets planned and random faults (not `set_failure`).
    pub fn clear_faults(&self) {
        lock(&self.state.faults).clear();
    }

    /// At most `per_minute` requests per clock minute and `per_hour` per
    /// clock hour of the emulator clock (fixed windows), across all
    /// endpoints and tokens; more get 429 without `Retry-After`, are
    /// recorded, and do not count toward the limit. `None` is unlimited
    /// (the default). Requests made before the call count in their window.
    pub fn set_rate_limit(&self, per_minute: Option<u32>, per_hour: Option<u32>) {
        let mut limit = lock(&self.state.limit);
        limit.per_minute = per_minute;
        limit.per_hour = per_hour;
    }

    /// The clock behind rate-limit windows and `RecordedRequest::clock_time`;
    /// the wall clock by default.
    pub fn set_clock(&self, clock: Clock) {
        *lock(&self.state.clock) = clock;
    }

    /// The most requests (any endpoint, any answer, 429s included) that
    /// arrived within one clock minute of the emulator clock.
    pub fn max_requests_per_minute(&self) -> u32 {
        let mut per_minute: BTreeMap<i64, u32> = BTreeMap::new();
        for request in lock(&self.state.log).iter() {
            *per_minute.entry(minute_of(request.clock_time)).or_default() += 1;
        }
        per_minute.into_values().max().unwrap_or(0)
    }

    /// 429s given by the rate limit (injected faults not included).
    pub fn rate_limited_count(&self) -> usize {
        lock(&self.state.limit).refused
    }
}

fn minute_of(time: DateTime<Utc>) -> i64 {
    time.timestamp().div_euclid(60)
}

fn hour_of(time: DateTime<Utc>) -> i64 {
    time.timestamp().div_euclid(3600)
}

/// Fixed-window counters for the rate limit; counted even while unlimited.
#[derive(Default)]
struct RateLimit {
    per_minute: Option<u32>,
    per_hour: Option<u32>,
    /// (window, requests admitted in it)
    minute: (i64, u32),
    hour: (i64, u32),
    refused: usize,
}

impl RateLimit {
    /// Counts the request in its windows, or refuses it when one is full.
    fn admit(&mut self, now: DateTime<Utc>) -> bool {
        let (minute, hour) = (minute_of(now), hour_of(now));
        if self.minute.0 != minute {
            self.minute = (minute, 0);
        }
        if self.hour.0 != hour {
            self.hour = (hour, 0);
        }
        let full = |limit: Option<u32>, count: u32| limit.is_some_and(|l| count >= l);
        if full(self.per_minute, self.minute.1) || full(self.per_hour, self.hour.1) {
            self.refused += 1;
            return false;
        }
        self.minute.1 += 1;
        self.hour.1 += 1;
        true
    }
}

/// Where a continuation cursor resumes.
#[derive(Clone, Copy, Debug)]
struct Position {
    service: Service,
    /// Index of the next event in the service's ordered list.
    index: usize,
    limit: usize,
    end: Option<DateTime<Utc>>,
}

/// Cursors are random-looking keys into this table, so clients cannot
/// derive anything from them; issuing is counter-based, so runs repeat.
#[derive(Default)]
struct Cursors {
    issued: u64,
    table: HashMap<String, Position>,
}

impl Cursors {
    fn issue(&mut self, position: Position) -> String {
        self.issued += 1;
        let key = cursor_text(self.issued);
        self.table.insert(key.clone(), position);
        key
    }
}

/// 24 bytes as base64. `splitmix64` is a bijection, so the first eight bytes
/// alone keep every issued cursor distinct.
fn cursor_text(n: u64) -> String {
    let mut bytes = Vec::with_capacity(24);
    for salt in [0, 0x5EED_0FCA_FE00, 0xD1CE_BEEF] {
        bytes.extend_from_slice(&splitmix64(n ^ salt).to_be_bytes());
    }
    base64(&bytes)
}

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

enum Route {
    Introspect(ApiVersion),
    Events(Service, ApiVersion),
}

impl Route {
    fn parse(path: &str) -> Option<Route> {
        for version in [ApiVersion::V1, ApiVersion::V2] {
            if path == version.introspect_path() {
                return Some(Route::Introspect(version));
            }
            if let Some(service) = Service::ALL.into_iter().find(|s| s.path(version) == path) {
                return Some(Route::Events(service, version));
            }
        }
        None
    }

    fn method(&self) -> &'static str {
        match self {
            Route::Introspect(_) => "GET",
            Route::Events(..) => "POST",
        }
    }
}

/// A parsed paging body.
enum PageRequest {
    Reset { limit: usize, start: Option<DateTime<Utc>>, end: Option<DateTime<Utc>> },
    Continue(String),
}

impl PageRequest {
    fn parse(body: &[u8]) -> Result<Self, String> {
        let value: Value = serde_json::from_slice(body).map_err(|e| format!("malformed request body: {e}"))?;
        let Value::Object(fields) = value else {
            return Err("request body must be a JSON object".to_owned());
        };
        match fields.get("cursor") {
            None | Some(Value::Null) => {}
            Some(Value::String(cursor)) => return Ok(PageRequest::Continue(cursor.clone())),
            Some(_) => return Err("cursor must be a string".to_owned()),
        }
        let limit = match fields.get("limit") {
            None | Some(Value::Null) => DEFAULT_LIMIT,
            Some(value) => value
                .as_u64()
                .filter(|n| (1..=MAX_LIMIT).contains(n))
                .map(|n| n as usize)
                .ok_or_else(|| format!("limit must be an integer from 1 to {MAX_LIMIT}"))?,
        };
        let start = time_field(&fields, "start_time")?;
        let end = time_field(&fields, "end_time")?;
        Ok(PageRequest::Reset { limit, start, end })
    }
}

fn time_field(fields: &Map<String, Value>, name: &str) -> Result<Option<DateTime<Utc>>, String> {
    match fields.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => DateTime::parse_from_rfc3339(text)
            .map(|t| Some(t.with_timezone(&Utc)))
            .map_err(|_| format!("{name} must be an RFC 3339 time")),
        Some(_) => Err(format!("{name} must be an RFC 3339 time")),
    }
}

fn error(status: u16, message: &str) -> Reply {
    Reply::json(status, json!({"Error": {"Message": message}}).to_string())
}

fn unauthorized() -> Reply {
    error(401, "Unauthorized")
}

fn too_many_requests() -> Reply {
    error(429, "Too Many Requests")
}

/// What a proxy or captive portal in front of the API might answer.
const LOGIN_PAGE: &str = "<!DOCTYPE html>\n<html><head><title>Sign in</title></head>\n\
<body><form method=\"post\" action=\"/signin\"><input name=\"email\"></form></body></html>\n";

/// Stands in for items when the real page is empty, so a `MissingFields`
/// page is always visibly broken.
const FIELDLESS_ITEM: &str = r#"{"action":"fill","used_version":1}"#;

/// How the page for an event request is to be shaped.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Shape {
    Served,
    Truncated,
    MissingFields,
    Stuck,
}

struct State {
    token: String,
    account_uuid: String,
    features: Vec<String>,
    token_uuid: String,
    issued_at: String,
    data: Mutex<Dataset>,
    cursors: Mutex<Cursors>,
    log: Mutex<Vec<RecordedRequest>>,
    failure: Mutex<Option<u16>>,
    faults: Mutex<FaultPlan<OpFault>>,
    limit: Mutex<RateLimit>,
    clock: Mutex<Clock>,
}

impl State {
    fn new(options: OnePasswordOptions) -> Self {
        // Derived from the account so introspection is stable across runs.
        let seed = options.account_uuid.bytes().fold(0u64, |h, b| h.wrapping_mul(31) ^ u64::from(b));
        State {
            token: options.token,
            account_uuid: options.account_uuid,
            features: options.features,
            token_uuid: base32_id(&mut fastrand::Rng::with_seed(seed)),
            issued_at: Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true),
            data: Mutex::new(options.dataset),
            cursors: Mutex::new(Cursors::default()),
            log: Mutex::new(Vec::new()),
            failure: Mutex::new(None),
            faults: Mutex::new(FaultPlan::default()),
            limit: Mutex::new(RateLimit::default()),
            clock: Mutex::new(wall_clock()),
        }
    }

    fn now(&self) -> DateTime<Utc> {
        // Called outside the lock: a test clock may take locks of its own.
        let clock = Arc::clone(&lock(&self.clock));
        clock()
    }

    fn handle(&self, mut request: Request, deferred: &Deferred) {
        let clock_time = self.now();
        let method = request.method().as_str().to_owned();
        let path = request.url().split('?').next().unwrap_or_default().to_owned();
        let body = read_body(&mut request, MAX_BODY);
        let admitted = lock(&self.limit).admit(clock_time);
        let (answer, fault) = if !admitted {
            (Answer::Now(too_many_requests()), None)
        } else {
            match body {
                Ok(body) => self.answer(&method, &path, header(&request, "Authorization"), &body),
                Err(e) => (Answer::Now(error(e.status(), "request body could not be read")), None),
            }
        };
        // Logged before answering, so a client that got its reply sees the record.
        lock(&self.log).push(RecordedRequest {
            method,
            path,
            status: answer.status(),
            at: Instant::now(),
            clock_time,
            fault,
            rate_limited: !admitted,
        });
        answer.deliver(request, deferred);
    }

    fn answer(&self, method: &str, path: &str, auth: Option<&str>, body: &[u8]) -> (Answer, Option<OpFault>) {
        if let Some(status) = *lock(&self.failure) {
            return (Answer::Now(error(status, "injected failure")), None);
        }
        let Some(route) = Route::parse(path) else {
            return (Answer::Now(error(404, "Not Found")), None);
        };
        if method != route.method() {
            return (Answer::Now(error(405, "Method Not Allowed")), None);
        }
        let fault = match route {
            Route::Events(..) => lock(&self.faults).next(),
            Route::Introspect(_) => None,
        };
        let answer = match &fault {
            None => Answer::Now(self.route(route, auth, body, Shape::Served)),
            Some(fault) => self.faulted(fault, route, auth, body),
        };
        (answer, fault)
    }

    fn faulted(&self, fault: &OpFault, route: Route, auth: Option<&str>, body: &[u8]) -> Answer {
        match fault {
            OpFault::Status(400) => Answer::Now(error(400, "invalid cursor")),
            OpFault::Status(401) => Answer::Now(unauthorized()),
            OpFault::Status(status) => Answer::Now(error(*status, "injected fault")),
            OpFault::TooManyRequests { retry_after } => {
                let reply = too_many_requests();
                Answer::Now(match retry_after {
                    Some(seconds) => reply.with_header("Retry-After", seconds.to_string()),
                    None => reply,
                })
            }
            OpFault::Slow(delay) => Answer::After(*delay, self.route(route, auth, body, Shape::Served)),
            OpFault::Drop => Answer::Cut,
            OpFault::NotJson => {
                Answer::Now(Reply { content_type: "text/html; charset=utf-8", ..Reply::text(200, LOGIN_PAGE) })
            }
            OpFault::Truncated => {
                let mut reply = self.route(route, auth, body, Shape::Truncated);
                let mut half = reply.body.len() / 2;
                while !reply.body.is_char_boundary(half) {
                    half -= 1;
                }
                reply.body.truncate(half);
                Answer::Now(reply)
            }
            OpFault::MissingFields => Answer::Now(self.route(route, auth, body, Shape::MissingFields)),
            OpFault::StuckCursor => Answer::Now(self.route(route, auth, body, Shape::Stuck)),
            OpFault::Oversized { bytes, declared } => {
                let frame = r#"{"items":[],"cursor":"","has_more":false}"#;
                let cursor = "C".repeat(bytes.saturating_sub(frame.len()));
                let page = format!(r#"{{"items":[],"cursor":"{cursor}","has_more":false}}"#);
                Answer::Now(Reply { chunked: !declared, ..Reply::json(200, page) })
            }
        }
    }

    /// The answer past method checks: auth, then the route's own.
    fn route(&self, route: Route, auth: Option<&str>, body: &[u8], shape: Shape) -> Reply {
        if !self.bearer_ok(auth) {
            return unauthorized();
        }
        match route {
            Route::Introspect(version) => self.introspect(version),
            Route::Events(service, _) if !self.features.iter().any(|f| f == service.feature()) => unauthorized(),
            Route::Events(service, version) => match PageRequest::parse(body) {
                Ok(page) => self.page(service, version, page, shape),
                Err(message) => error(400, &message),
            },
        }
    }

    fn bearer_ok(&self, auth: Option<&str>) -> bool {
        auth.and_then(|value| value.trim().split_once(' '))
            .is_some_and(|(scheme, token)| scheme.eq_ignore_ascii_case("bearer") && token.trim() == self.token)
    }

    fn introspect(&self, version: ApiVersion) -> Reply {
        let mut body = json!({
            "uuid": self.token_uuid,
            "issued_at": self.issued_at,
            "features": self.features,
        });
        if version == ApiVersion::V2 {
            body["account_uuid"] = json!(self.account_uuid);
        }
        Reply::json(200, body.to_string())
    }

    /// A page from the request's position. Only `Shape::Served` moves a
    /// client forward: a truncated page carries a cursor never issued, and
    /// a `MissingFields` page one that resumes where the request started.
    fn page(&self, service: Service, version: ApiVersion, request: PageRequest, shape: Shape) -> Reply {
        // Lock order data → cursors everywhere; push_events takes only data.
        let data = lock(&self.data);
        let mut cursors = lock(&self.cursors);
        let (from, sent) = match request {
            PageRequest::Reset { limit, start, end } => {
                let at = data.timestamps(service);
                let index = start.map_or(0, |s| at.partition_point(|t| *t < s));
                let from = Position { service, index, limit, end };
                (from, None)
            }
            PageRequest::Continue(key) => match cursors.table.get(&key) {
                Some(p) if p.service == service => (*p, Some(key)),
                Some(_) => return error(400, "cursor belongs to another endpoint"),
                None => return error(400, "invalid cursor"),
            },
        };
        let at = data.timestamps(service);
        let stop = from.end.map_or(at.len(), |end| at.partition_point(|t| *t < end));
        let last = (from.index + from.limit).min(stop).max(from.index);
        let items = data.events_for(service, version).get(from.index..last).unwrap_or_default();
        let has_more = last < stop;
        match shape {
            Shape::Served => {
                let cursor = cursors.issue(Position { index: last, ..from });
                Reply::json(200, render_page(items, &cursor, has_more))
            }
            Shape::Truncated => {
                let unissued = cursor_text(cursors.issued + 1);
                Reply::json(200, render_page(items, &unissued, has_more))
            }
            Shape::MissingFields => {
                let cursor = sent.unwrap_or_else(|| cursors.issue(from));
                let mut stripped: Vec<String> = items.iter().map(|i| without_ids(i)).collect();
                if stripped.is_empty() {
                    stripped.push(FIELDLESS_ITEM.to_owned());
                }
                Reply::json(200, render_page(&stripped, &cursor, has_more))
            }
            Shape::Stuck => {
                let cursor = sent.unwrap_or_else(|| cursors.issue(from));
                Reply::json(200, render_page(&[], &cursor, true))
            }
        }
    }
}

/// The item without `uuid` and `timestamp`, as JSON text.
fn without_ids(item: &str) -> String {
    match serde_json::from_str::<Value>(item) {
        Ok(Value::Object(mut fields)) => {
            fields.remove("uuid");
            fields.remove("timestamp");
            Value::Object(fields).to_string()
        }
        _ => FIELDLESS_ITEM.to_owned(),
    }
}

/// Splices stored event text in verbatim, so served bytes never change.
fn render_page(items: &[String], cursor: &str, has_more: bool) -> String {
    let size = items.iter().map(|i| i.len() + 1).sum::<usize>() + cursor.len() + 64;
    let mut out = String::with_capacity(size);
    out.push_str(r#"{"items":["#);
    out.push_str(&items.join(","));
    out.push_str(r#"],"cursor":"#);
    out.push_str(&Value::from(cursor).to_string());
    out.push_str(r#","has_more":"#);
    out.push_str(if has_more { "true" } else { "false" });
    out.push('}');
    out
}

#[cfg(test)]
mod tests {
    use super::super::test_client::{self, post_json, send};
    use super::*;
    use chrono::{Duration, TimeZone};
    use std::time::Duration as Wait;

    const TOKEN: &str = "test-token";

    fn start_time() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2025, 5, 1, 0, 0, 0).unwrap()
    }

    fn emulator(per_service: usize) -> OnePasswordEmulator {
        let data = Dataset::generate(42, per_service, start_time(), Duration::hours(1));
        OnePasswordEmulator::start(OnePasswordOptions::new(TOKEN, data)).expect("start")
    }

    /// Follows cursors until has_more is false; returns raw items and the last cursor.
    fn drain(op: &OnePasswordEmulator, path: &str, first: &str) -> (Vec<String>, String) {
        let mut body = first.to_owned();
        let mut items = Vec::new();
        loop {
            let response = post_json(&op.base_url(), path, TOKEN, &body);
            assert_eq!(response.status, 200, "{}", response.text());
            let page = response.json();
            let page_items = page["items"].as_array().unwrap();
            items.extend(page_items.iter().map(Value::to_string));
            let cursor = page["cursor"].as_str().unwrap().to_owned();
            if !page["has_more"].as_bool().unwrap() {
                return (items, cursor);
            }
            body = json!({ "cursor": cursor }).to_string();
        }
    }

    fn values(texts: &[String]) -> Vec<Value> {
        texts.iter().map(|t| serde_json::from_str(t).unwrap()).collect()
    }

    #[test]
    fn auth_is_required_and_scoped_by_feature() {
        let data = Dataset::generate(1, 5, start_time(), Duration::hours(1));
        let options =
            OnePasswordOptions { features: vec!["auditevents".to_owned()], ..OnePasswordOptions::new(TOKEN, data) };
        let op = OnePasswordEmulator::start(options).unwrap();
        let base = op.base_url();
        let path = Service::Audit.path(ApiVersion::V2);
        let missing = send(&base, "POST", &path, &[], b"{}");
        assert_eq!(missing.status, 401);
        assert_eq!(missing.json(), json!({"Error": {"Message": "Unauthorized"}}));
        assert_eq!(post_json(&base, &path, "wrong", "{}").status, 401);
        assert_eq!(post_json(&base, &path, TOKEN, "{}").status, 200);
        let usage = Service::ItemUsage.path(ApiVersion::V1);
        assert_eq!(post_json(&base, &usage, TOKEN, "{}").status, 401);
        assert_eq!(post_json(&base, "/api/v1/nothing", TOKEN, "{}").status, 404);
        let statuses: Vec<u16> = op.requests().iter().map(|r| r.status).collect();
        assert_eq!(statuses, [401, 401, 200, 401, 404]);
        assert_eq!(op.requests()[4].path, "/api/v1/nothing");
        assert!(!format!("{:?}", OnePasswordOptions::new(TOKEN, Dataset::default())).contains(TOKEN));
    }

    #[test]
    fn an_oversized_page_is_a_valid_page_of_that_size_with_or_without_its_length() {
        let op = emulator(3);
        let path = Service::Audit.path(ApiVersion::V2);
        op.push_faults([
            OpFault::Oversized { bytes: 100_000, declared: true },
            OpFault::Oversized { bytes: 100_000, declared: false },
        ]);
        let declared = post_json(&op.base_url(), &path, TOKEN, "{}");
        assert_eq!((declared.status, declared.body.len()), (200, 100_000));
        assert_eq!(declared.header("Content-Length"), Some("100000"));
        assert_eq!(declared.json()["items"], json!([]));
        let undeclared = post_json(&op.base_url(), &path, TOKEN, "{}");
        assert_eq!((undeclared.status, undeclared.body.len()), (200, 100_000));
        assert_eq!(undeclared.header("Content-Length"), None);
        assert_eq!(undeclared.json()["has_more"], false);
    }

    #[test]
    fn introspection_reports_features_and_v2_account() {
        let op = emulator(3);
        let auth = format!("Bearer {TOKEN}");
        let headers = [("Authorization", auth.as_str())];
        let v1 = send(&op.base_url(), "GET", ApiVersion::V1.introspect_path(), &headers, b"");
        let v2 = send(&op.base_url(), "GET", ApiVersion::V2.introspect_path(), &headers, b"");
        assert_eq!((v1.status, v2.status), (200, 200));
        let (v1, v2) = (v1.json(), v2.json());
        assert_eq!(v1["features"], json!(["auditevents", "itemusages", "signinattempts"]));
        assert!(v1.get("account_uuid").is_none());
        assert_eq!(v2["account_uuid"].as_str(), op.dataset().account_uuid());
        assert_eq!(v1["uuid"].as_str().unwrap().len(), 26);
        assert!(DateTime::parse_from_rfc3339(v2["issued_at"].as_str().unwrap()).is_ok());
        let wrong = send(&op.base_url(), "POST", ApiVersion::V1.introspect_path(), &headers, b"");
        assert_eq!(wrong.status, 405);
    }

    #[test]
    fn paging_walks_everything_in_order_and_cursor_resumes_after_new_data() {
        let op = emulator(53);
        let service = Service::SignInAttempts;
        let path = service.path(ApiVersion::V2);
        let (items, cursor) = drain(&op, &path, r#"{"limit": 7}"#);
        assert_eq!(values(&items), op.dataset().values(service));
        assert_eq!(op.request_count(), 8);

        let empty = post_json(&op.base_url(), &path, TOKEN, &json!({ "cursor": cursor }).to_string());
        assert_eq!(empty.json()["items"], json!([]));
        let cursor = empty.json()["cursor"].as_str().unwrap().to_owned();

        let newer = vec![
            json!({"uuid": "N2", "timestamp": "2025-05-01T02:00:00Z", "account_uuid": "A"}),
            json!({"uuid": "N1", "timestamp": "2025-05-01T01:30:00-00:00", "account_uuid": "A"}),
        ];
        op.push_events(service, newer);
        let (fresh, _) = drain(&op, &path, &json!({ "cursor": cursor }).to_string());
        let uuids: Vec<Value> = values(&fresh).iter().map(|v| v["uuid"].clone()).collect();
        assert_eq!(uuids, ["N1", "N2"]);
    }

    #[test]
    fn served_bytes_match_stored_text_and_v1_drops_account_uuid() {
        let op = emulator(5);
        let service = Service::Audit;
        let data = op.dataset();
        let v2 = post_json(&op.base_url(), &service.path(ApiVersion::V2), TOKEN, "{}").text();
        let v1 = post_json(&op.base_url(), &service.path(ApiVersion::V1), TOKEN, "{}").text();
        assert!(v2.starts_with(&format!(r#"{{"items":[{}"#, data.events(service).join(","))));
        let v1_items = data.events_for(service, ApiVersion::V1).join(",");
        assert!(v1.starts_with(&format!(r#"{{"items":[{v1_items}]"#)));
        assert!(!v1.contains("account_uuid"));
    }

    #[test]
    fn time_window_filters_and_default_limit_applies() {
        let op = emulator(250);
        let service = Service::ItemUsage;
        let path = service.path(ApiVersion::V2);
        let data = op.dataset();
        let at = data.timestamps(service);
        let (from, to) = (at[40], at[90]);
        let body = json!({
            "start_time": from.to_rfc3339(),
            "end_time": to.with_timezone(&chrono::FixedOffset::west_opt(3 * 3600).unwrap()).to_rfc3339(),
        });
        let (items, _) = drain(&op, &path, &body.to_string());
        let expected: Vec<Value> =
            data.values(service).into_iter().zip(at).filter(|(_, t)| **t >= from && **t < to).map(|(v, _)| v).collect();
        assert!(!expected.is_empty());
        assert_eq!(values(&items), expected);

        let first = post_json(&op.base_url(), &path, TOKEN, "{}").json();
        assert_eq!(first["items"].as_array().unwrap().len(), 100);
        assert_eq!(first["has_more"], json!(true));
    }

    #[test]
    fn bad_bodies_and_cursors_are_rejected() {
        let op = emulator(3);
        let path = Service::Audit.path(ApiVersion::V1);
        for body in [
            r#"{"limit": 0}"#,
            r#"{"limit": 1001}"#,
            r#"{"limit": "ten"}"#,
            r#"{"start_time": "yesterday"}"#,
            r#"{"cursor": "bm9wZQ=="}"#,
            r#"{"cursor": 5}"#,
            "{not json",
            "",
            "[]",
        ] {
            let response = post_json(&op.base_url(), &path, TOKEN, body);
            assert_eq!(response.status, 400, "body {body:?}");
            assert!(response.json()["Error"]["Message"].is_string());
        }
        let page = post_json(&op.base_url(), &path, TOKEN, r#"{"limit": 1000}"#).json();
        let other = Service::ItemUsage.path(ApiVersion::V1);
        let misused = json!({ "cursor": page["cursor"] }).to_string();
        assert_eq!(post_json(&op.base_url(), &other, TOKEN, &misused).status, 400);
    }

    #[test]
    fn injected_failures_answer_every_request() {
        let op = emulator(3);
        let path = Service::Audit.path(ApiVersion::V2);
        op.set_failure(Some(429));
        assert_eq!(post_json(&op.base_url(), &path, TOKEN, "{}").status, 429);
        op.set_failure(None);
        assert_eq!(post_json(&op.base_url(), &path, TOKEN, "{}").status, 200);
    }

    fn cursor_body(cursor: &str) -> String {
        json!({ "cursor": cursor }).to_string()
    }

    fn request_bytes(op: &OnePasswordEmulator, path: &str, body: &str, close: bool) -> Vec<u8> {
        let auth = format!("Bearer {TOKEN}");
        let headers = [("Authorization", auth.as_str())];
        test_client::request_bytes(&op.base_url(), "POST", path, &headers, body.as_bytes(), close)
    }

    fn faults(op: &OnePasswordEmulator) -> Vec<Option<OpFault>> {
        op.requests().into_iter().map(|r| r.fault).collect()
    }

    /// Waits until the emulator has recorded `n` requests.
    fn await_requests(op: &OnePasswordEmulator, n: usize) {
        let deadline = Instant::now() + Wait::from_secs(10);
        while op.request_count() < n {
            assert!(Instant::now() < deadline, "request never arrived");
            std::thread::sleep(Wait::from_millis(5));
        }
    }

    #[test]
    fn status_faults_answer_json_errors_and_leave_the_cursor_alone() {
        let op = emulator(30);
        let path = Service::Audit.path(ApiVersion::V2);
        let first = post_json(&op.base_url(), &path, TOKEN, r#"{"limit": 10}"#).json();
        let cursor = first["cursor"].as_str().unwrap().to_owned();
        let planned = vec![
            OpFault::Status(401),
            OpFault::Status(400),
            OpFault::Status(500),
            OpFault::Status(502),
            OpFault::Status(503),
            OpFault::TooManyRequests { retry_after: Some(7) },
            OpFault::TooManyRequests { retry_after: None },
        ];
        op.push_faults(planned.clone());
        let mut answers = Vec::new();
        for _ in &planned {
            let response = post_json(&op.base_url(), &path, TOKEN, &cursor_body(&cursor));
            assert!(response.json()["Error"]["Message"].is_string());
            let retry_after = response.header("Retry-After").map(str::to_owned);
            answers.push((response.status, retry_after));
        }
        let seven = Some("7".to_owned());
        assert_eq!(
            answers,
            [(401, None), (400, None), (500, None), (502, None), (503, None), (429, seven), (429, None)]
        );
        // The same cursor still gives the second page, as if nothing happened.
        let second = post_json(&op.base_url(), &path, TOKEN, &cursor_body(&cursor)).json();
        let expected = &op.dataset().values(Service::Audit)[10..20];
        assert_eq!(second["items"].as_array().unwrap(), expected);
        let mut recorded = faults(&op);
        assert_eq!(recorded.remove(0), None);
        assert_eq!(recorded.pop(), Some(None));
        assert_eq!(recorded, planned.into_iter().map(Some).collect::<Vec<_>>());
        assert_eq!(op.rate_limited_count(), 0);
    }

    #[test]
    fn faults_hit_only_event_endpoints_and_yield_to_set_failure() {
        let op = emulator(3);
        let auth = format!("Bearer {TOKEN}");
        let headers = [("Authorization", auth.as_str())];
        let introspect = ApiVersion::V2.introspect_path();
        op.push_faults([OpFault::Status(503)]);
        assert_eq!(send(&op.base_url(), "GET", introspect, &headers, b"").status, 200);
        assert_eq!(post_json(&op.base_url(), "/api/v2/nope", TOKEN, "{}").status, 404);
        op.set_failure(Some(500));
        let path = Service::ItemUsage.path(ApiVersion::V1);
        assert_eq!(post_json(&op.base_url(), &path, TOKEN, "{}").status, 500);
        op.set_failure(None);
        assert_eq!(post_json(&op.base_url(), &path, TOKEN, "{}").status, 503);
        assert_eq!(post_json(&op.base_url(), &path, TOKEN, "{}").status, 200);
        let fault = Some(OpFault::Status(503));
        assert_eq!(faults(&op), [None, None, None, fault, None]);
        op.push_faults([OpFault::Drop, OpFault::Drop]);
        op.clear_faults();
        assert_eq!(post_json(&op.base_url(), &path, TOKEN, "{}").status, 200);
    }

    #[test]
    fn slow_answers_correctly_late_without_holding_up_other_requests() {
        let op = emulator(20);
        let path = Service::SignInAttempts.path(ApiVersion::V2);
        let expected = post_json(&op.base_url(), &path, TOKEN, r#"{"limit": 5}"#).json();
        let delay = Wait::from_millis(700);
        op.push_faults([OpFault::Slow(delay)]);
        let base = op.base_url();
        let slow_path = path.clone();
        let started = Instant::now();
        let slow = std::thread::spawn(move || {
            let response = post_json(&base, &slow_path, TOKEN, r#"{"limit": 5}"#);
            (response.status, response.json(), started.elapsed())
        });
        await_requests(&op, 2);
        // Meanwhile, others are served at once.
        for _ in 0..(2 * super::super::WORKERS) {
            let quick = Instant::now();
            assert_eq!(post_json(&op.base_url(), &path, TOKEN, "{}").status, 200);
            assert!(quick.elapsed() < delay / 2, "a slow answer blocked a worker");
        }
        let (status, page, elapsed) = slow.join().unwrap();
        assert_eq!(status, 200);
        assert!(elapsed >= delay, "answered after {elapsed:?}");
        assert_eq!(page["items"], expected["items"]);
        assert_ne!(page["cursor"], expected["cursor"]);
        // The cursor it carries is a real one.
        let next = post_json(&op.base_url(), &path, TOKEN, &cursor_body(page["cursor"].as_str().unwrap()));
        let all = op.dataset().values(Service::SignInAttempts);
        assert_eq!(next.json()["items"].as_array().unwrap()[..], all[5..10]);
        // A client with a shorter timeout gives up before any byte arrives.
        op.push_faults([OpFault::Slow(delay)]);
        let impatient =
            test_client::raw(&op.base_url(), &request_bytes(&op, &path, "{}", true), Wait::from_millis(150));
        assert!(!impatient.closed && impatient.bytes.is_empty());
        let last = op.requests().pop().unwrap();
        assert_eq!((last.status, last.fault), (200, Some(OpFault::Slow(delay))));
    }

    #[test]
    fn drop_closes_without_a_status_line() {
        let op = emulator(10);
        let path = Service::Audit.path(ApiVersion::V1);
        op.push_faults([OpFault::Drop, OpFault::Drop]);
        let closing = test_client::raw(&op.base_url(), &request_bytes(&op, &path, "{}", true), Wait::from_secs(5));
        assert!(closing.closed, "connection left open");
        assert!(!closing.bytes.starts_with(b"HTTP/"), "{:?}", closing.bytes);
        assert!(closing.bytes.len() < 8);
        // A keep-alive client gets no status line either, and no wait.
        let kept = test_client::raw(&op.base_url(), &request_bytes(&op, &path, "{}", false), Wait::from_millis(500));
        assert!(!kept.bytes.is_empty() && !kept.bytes.windows(5).any(|w| w == b"HTTP/"));
        let statuses: Vec<u16> = op.requests().iter().map(|r| r.status).collect();
        assert_eq!(statuses, [0, 0]);
        // Nothing moved: a fresh request starts at the first event.
        let page = post_json(&op.base_url(), &path, TOKEN, r#"{"limit": 1}"#).json();
        let first = &op.dataset().values_for(Service::Audit, ApiVersion::V1)[0];
        assert_eq!(&page["items"][0], first);
    }

    #[test]
    fn not_json_and_truncated_answers_are_200_but_no_page() {
        let op = emulator(12);
        let path = Service::ItemUsage.path(ApiVersion::V2);
        let reference = emulator(12);
        let full = post_json(&reference.base_url(), &path, TOKEN, r#"{"limit": 4}"#).text();
        op.push_faults([OpFault::NotJson, OpFault::Truncated]);
        let html = post_json(&op.base_url(), &path, TOKEN, r#"{"limit": 4}"#);
        assert_eq!(html.status, 200);
        assert!(html.header("Content-Type").unwrap().starts_with("text/html"));
        assert!(serde_json::from_slice::<Value>(&html.body).is_err());
        let cut = post_json(&op.base_url(), &path, TOKEN, r#"{"limit": 4}"#);
        assert_eq!(cut.status, 200);
        let cut = cut.text();
        assert!(serde_json::from_str::<Value>(&cut).is_err());
        assert!(full.starts_with(&cut), "not a prefix of the real page");
        assert!(cut.len() <= full.len() / 2 && cut.len() + 4 >= full.len() / 2);
        // No cursor was issued by either: the next one matches the reference's.
        let page = post_json(&op.base_url(), &path, TOKEN, r#"{"limit": 4}"#).text();
        assert_eq!(page, full);
    }

    #[test]
    fn missing_fields_pages_resume_where_the_request_started() {
        let op = emulator(9);
        let service = Service::SignInAttempts;
        let path = service.path(ApiVersion::V2);
        let all = op.dataset().values(service);
        op.push_faults([OpFault::MissingFields]);
        let bogus = post_json(&op.base_url(), &path, TOKEN, r#"{"limit": 4}"#).json();
        let items = bogus["items"].as_array().unwrap();
        assert_eq!(items.len(), 4);
        assert!(items.iter().all(|i| i.get("uuid").is_none() && i.get("timestamp").is_none()));
        assert_eq!(items[0]["session_uuid"], all[0]["session_uuid"]);
        assert_eq!(bogus["has_more"], json!(true));
        // Its cursor starts over at the first event.
        let cursor = bogus["cursor"].as_str().unwrap();
        let real = post_json(&op.base_url(), &path, TOKEN, &cursor_body(cursor)).json();
        assert_eq!(real["items"].as_array().unwrap()[..], all[..4]);
        // On a continuation, the same cursor comes back.
        let cursor = real["cursor"].as_str().unwrap().to_owned();
        op.push_faults([OpFault::MissingFields]);
        let bogus = post_json(&op.base_url(), &path, TOKEN, &cursor_body(&cursor)).json();
        assert_eq!(bogus["cursor"], json!(cursor));
        let (rest, end) = drain(&op, &path, &cursor_body(&cursor));
        assert_eq!(values(&rest), all[4..]);
        // Even past the end there is something visibly wrong to read.
        op.push_faults([OpFault::MissingFields]);
        let bogus = post_json(&op.base_url(), &path, TOKEN, &cursor_body(&end)).json();
        assert_eq!(bogus["items"].as_array().unwrap().len(), 1);
        assert!(bogus["items"][0].get("uuid").is_none());
        assert_eq!((&bogus["cursor"], &bogus["has_more"]), (&json!(end), &json!(false)));
    }

    #[test]
    fn a_stuck_cursor_comes_back_with_has_more_and_nothing() {
        let op = emulator(9);
        let path = Service::Audit.path(ApiVersion::V2);
        op.set_random_faults(1, 1.0, vec![OpFault::StuckCursor]);
        let first = post_json(&op.base_url(), &path, TOKEN, r#"{"limit": 4}"#).json();
        assert_eq!((first["items"].as_array().unwrap().len(), &first["has_more"]), (0, &json!(true)));
        let cursor = first["cursor"].as_str().unwrap().to_owned();
        for _ in 0..3 {
            let again = post_json(&op.base_url(), &path, TOKEN, &cursor_body(&cursor)).json();
            assert_eq!(again, json!({"items": [], "cursor": cursor, "has_more": true}));
        }
        // Without the fault, the cursor starts at the requested start.
        op.clear_faults();
        let real = post_json(&op.base_url(), &path, TOKEN, &cursor_body(&cursor)).json();
        assert_eq!(real["items"].as_array().unwrap()[..], op.dataset().values(Service::Audit)[..4]);
    }

    #[test]
    fn random_faults_repeat_for_a_seed_and_skip_introspection() {
        let kinds = vec![OpFault::Status(500), OpFault::NotJson, OpFault::TooManyRequests { retry_after: None }];
        let run = |seed: u64, rate: f64| {
            let op = emulator(3);
            op.set_random_faults(seed, rate, kinds.clone());
            let path = Service::Audit.path(ApiVersion::V2);
            let auth = format!("Bearer {TOKEN}");
            let headers = [("Authorization", auth.as_str())];
            for i in 0..60 {
                if i % 10 == 0 {
                    let introspect = ApiVersion::V1.introspect_path();
                    send(&op.base_url(), "GET", introspect, &headers, b"");
                }
                post_json(&op.base_url(), &path, TOKEN, "{}");
            }
            let log = op.requests();
            assert!(log.iter().filter(|r| r.method == "GET").all(|r| r.fault.is_none() && r.status == 200));
            let events: Vec<Option<OpFault>> =
                log.into_iter().filter(|r| r.method == "POST").map(|r| r.fault).collect();
            events
        };
        let first = run(7, 0.4);
        assert_eq!(first, run(7, 0.4));
        assert_ne!(first, run(8, 0.4));
        let hits = first.iter().flatten().count();
        assert!((10..=40).contains(&hits), "{hits} of 60 faulted");
        for kind in &kinds {
            assert!(first.iter().flatten().any(|f| f == kind), "{kind:?} never drawn");
        }
        assert!(run(7, 0.0).iter().all(Option::is_none));
        assert!(run(7, 1.0).iter().all(Option::is_some));
    }

    #[test]
    fn rate_limit_counts_clock_minutes_and_hours() {
        let op = emulator(3);
        let now = Arc::new(Mutex::new(Utc.with_ymd_and_hms(2025, 5, 1, 10, 0, 0).unwrap()));
        let shared = Arc::clone(&now);
        op.set_clock(Arc::new(move || *lock(&shared)));
        let set = |h: u32, m: u32, s: u32| {
            *lock(&now) = Utc.with_ymd_and_hms(2025, 5, 1, h, m, s).unwrap();
        };
        let path = Service::Audit.path(ApiVersion::V2);
        let auth = format!("Bearer {TOKEN}");
        let headers = [("Authorization", auth.as_str())];
        let introspect = ApiVersion::V2.introspect_path();
        let status = || post_json(&op.base_url(), &path, TOKEN, "{}").status;
        op.set_rate_limit(Some(3), Some(5));
        // Across endpoints: introspection uses the same budget.
        assert_eq!(send(&op.base_url(), "GET", introspect, &headers, b"").status, 200);
        assert_eq!((status(), status()), (200, 200));
        let refused = post_json(&op.base_url(), &path, TOKEN, "{}");
        assert_eq!(refused.status, 429);
        assert_eq!(refused.header("Retry-After"), None);
        // Refused requests do not use up planned faults.
        op.push_faults([OpFault::Status(502)]);
        set(10, 0, 59);
        assert_eq!(status(), 429);
        set(10, 1, 0);
        assert_eq!((status(), status()), (502, 200));
        // Five in the hour now: the hour's limit holds in a fresh minute too.
        set(10, 2, 0);
        assert_eq!(status(), 429);
        set(10, 59, 59);
        assert_eq!(status(), 429);
        set(11, 0, 0);
        assert_eq!(status(), 200);
        assert_eq!(op.rate_limited_count(), 4);
        let log = op.requests();
        let limited: Vec<bool> = log.iter().map(|r| r.rate_limited).collect();
        assert_eq!(limited, [false, false, false, true, true, false, false, true, true, false]);
        assert!(log.iter().filter(|r| r.rate_limited).all(|r| r.status == 429 && r.fault.is_none()));
        assert_eq!(log[4].clock_time, Utc.with_ymd_and_hms(2025, 5, 1, 10, 0, 59).unwrap());
        // Minute 10:00 saw five requests, two of them refused.
        assert_eq!(op.max_requests_per_minute(), 5);
        op.set_rate_limit(None, None);
        assert!((0..4).all(|_| status() == 200));
    }

    #[test]
    fn unlimited_by_default_and_wall_clock_times() {
        let op = emulator(2);
        let before = Utc::now();
        let path = Service::Audit.path(ApiVersion::V2);
        assert!((0..20).all(|_| post_json(&op.base_url(), &path, TOKEN, "{}").status == 200));
        let log = op.requests();
        assert!(log[0].clock_time >= before && log[19].clock_time <= Utc::now());
        assert!(op.max_requests_per_minute() >= 10);
        assert_eq!(op.rate_limited_count(), 0);
    }

    #[test]
    fn dropping_the_emulator_cuts_delayed_answers_short() {
        let op = emulator(2);
        let path = Service::Audit.path(ApiVersion::V2);
        op.push_faults([OpFault::Slow(Wait::from_secs(60))]);
        let base = op.base_url();
        let request = request_bytes(&op, &path, "{}", true);
        let client = std::thread::spawn(move || test_client::raw(&base, &request, Wait::from_secs(30)));
        await_requests(&op, 1);
        let started = Instant::now();
        drop(op);
        assert!(started.elapsed() < Wait::from_secs(2), "drop waited {:?}", started.elapsed());
        let answer = client.join().unwrap();
        assert!(answer.closed && !answer.bytes.starts_with(b"HTTP/"));
    }

    #[test]
    fn cursors_are_distinct_base64() {
        let texts: Vec<String> = (1..=50).map(cursor_text).collect();
        let unique: std::collections::HashSet<&String> = texts.iter().collect();
        assert_eq!(unique.len(), texts.len());
        assert!(texts.iter().all(|t| t.len() == 32));
        assert_eq!(base64(b"hello!"), "aGVsbG8h");
        assert_eq!(base64(b"hi"), "aGk=");
    }
}
