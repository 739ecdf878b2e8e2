//! A loopback 1Password Events API: bearer auth with feature scopes,
//! introspection, and cursor paging over a `Dataset` that can grow mid-test.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use chrono::{DateTime, SecondsFormat, Utc};
use onepassword_collector::service::{ApiVersion, Service};
use serde_json::{json, Map, Value};
use tiny_http::Request;

use super::dataset::base32_id;
use super::{header, lock, read_body, Background, Dataset, Reply};

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
        let account_uuid = dataset
            .account_uuid()
            .map_or_else(|| Self::default().account_uuid, str::to_owned);
        OnePasswordOptions {
            token: token.into(),
            dataset,
            account_uuid,
            ..Self::default()
        }
    }
}

impl Default for OnePasswordOptions {
    fn default() -> Self {
        OnePasswordOptions {
            token: "op-emulator-token".to_owned(),
            dataset: Dataset::default(),
            account_uuid: "VZSYVT2LGHTBWBQGUJAIZVRABM".to_owned(),
            features: Service::ALL
                .iter()
                .map(|s| s.feature().to_owned())
                .collect(),
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

/// One request as the emulator saw and answered it.
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    pub method: String,
    /// Path without the query string.
    pub path: String,
    pub status: u16,
    pub at: Instant,
}

pub struct OnePasswordEmulator {
    state: Arc<State>,
    server: Background,
}

impl OnePasswordEmulator {
    pub fn start(options: OnePasswordOptions) -> std::io::Result<Self> {
        let state = Arc::new(State::new(options));
        let shared = Arc::clone(&state);
        let server = Background::spawn("op-emulator", move |request| shared.handle(request))?;
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

    /// A copy of everything the emulator can serve right now.
    pub fn dataset(&self) -> Dataset {
        lock(&self.state.data).clone()
    }

    /// While `Some(status)`, every request gets that status and an error body
    /// (for retry and rate-limit tests); it is still recorded.
    pub fn set_failure(&self, status: Option<u16>) {
        *lock(&self.state.failure) = status;
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
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
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
    Reset {
        limit: usize,
        start: Option<DateTime<Utc>>,
        end: Option<DateTime<Utc>>,
    },
    Continue(String),
}

impl PageRequest {
    fn parse(body: &[u8]) -> Result<Self, String> {
        let value: Value =
            serde_json::from_slice(body).map_err(|e| format!("malformed request body: {e}"))?;
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
}

impl State {
    fn new(options: OnePasswordOptions) -> Self {
        // Derived from the account so introspection is stable across runs.
        let seed = options
            .account_uuid
            .bytes()
            .fold(0u64, |h, b| h.wrapping_mul(31) ^ u64::from(b));
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
        }
    }

    fn handle(&self, mut request: Request) {
        let method = request.method().as_str().to_owned();
        let path = request
            .url()
            .split('?')
            .next()
            .unwrap_or_default()
            .to_owned();
        let reply = match read_body(&mut request, MAX_BODY) {
            Ok(body) => self.answer(&method, &path, header(&request, "Authorization"), &body),
            Err(e) => error(e.status(), "request body could not be read"),
        };
        // Logged before answering, so a client that got its reply sees the record.
        lock(&self.log).push(RecordedRequest {
            method,
            path,
            status: reply.status,
            at: Instant::now(),
        });
        reply.send(request);
    }

    fn answer(&self, method: &str, path: &str, auth: Option<&str>, body: &[u8]) -> Reply {
        if let Some(status) = *lock(&self.failure) {
            return error(status, "injected failure");
        }
        let Some(route) = Route::parse(path) else {
            return error(404, "Not Found");
        };
        if method != route.method() {
            return error(405, "Method Not Allowed");
        }
        if !self.bearer_ok(auth) {
            return unauthorized();
        }
        match route {
            Route::Introspect(version) => self.introspect(version),
            Route::Events(service, _) if !self.features.iter().any(|f| f == service.feature()) => {
                unauthorized()
            }
            Route::Events(service, version) => match PageRequest::parse(body) {
                Ok(page) => self.page(service, version, page),
                Err(message) => error(400, &message),
            },
        }
    }

    fn bearer_ok(&self, auth: Option<&str>) -> bool {
        auth.and_then(|value| value.trim().split_once(' '))
            .is_some_and(|(scheme, token)| {
                scheme.eq_ignore_ascii_case("bearer") && token.trim() == self.token
            })
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

    fn page(&self, service: Service, version: ApiVersion, request: PageRequest) -> Reply {
        // Lock order data → cursors everywhere; push_events takes only data.
        let data = lock(&self.data);
        let mut cursors = lock(&self.cursors);
        let from = match request {
            PageRequest::Reset { limit, start, end } => {
                let at = data.timestamps(service);
                let index = start.map_or(0, |s| at.partition_point(|t| *t < s));
                Position {
                    service,
                    index,
                    limit,
                    end,
                }
            }
            PageRequest::Continue(key) => match cursors.table.get(&key) {
                Some(p) if p.service == service => *p,
                Some(_) => return error(400, "cursor belongs to another endpoint"),
                None => return error(400, "invalid cursor"),
            },
        };
        let at = data.timestamps(service);
        let stop = from
            .end
            .map_or(at.len(), |end| at.partition_point(|t| *t < end));
        let last = (from.index + from.limit).min(stop).max(from.index);
        let items = data
            .events_for(service, version)
            .get(from.index..last)
            .unwrap_or_default();
        let cursor = cursors.issue(Position {
            index: last,
            ..from
        });
        Reply::json(200, render_page(items, &cursor, last < stop))
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
    use super::super::test_client::{post_json, send};
    use super::*;
    use chrono::{Duration, TimeZone};

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
        texts
            .iter()
            .map(|t| serde_json::from_str(t).unwrap())
            .collect()
    }

    #[test]
    fn auth_is_required_and_scoped_by_feature() {
        let data = Dataset::generate(1, 5, start_time(), Duration::hours(1));
        let options = OnePasswordOptions {
            features: vec!["auditevents".to_owned()],
            ..OnePasswordOptions::new(TOKEN, data)
        };
        let op = OnePasswordEmulator::start(options).unwrap();
        let base = op.base_url();
        let path = Service::Audit.path(ApiVersion::V2);
        let missing = send(&base, "POST", &path, &[], b"{}");
        assert_eq!(missing.status, 401);
        assert_eq!(
            missing.json(),
            json!({"Error": {"Message": "Unauthorized"}})
        );
        assert_eq!(post_json(&base, &path, "wrong", "{}").status, 401);
        assert_eq!(post_json(&base, &path, TOKEN, "{}").status, 200);
        let usage = Service::ItemUsage.path(ApiVersion::V1);
        assert_eq!(post_json(&base, &usage, TOKEN, "{}").status, 401);
        assert_eq!(post_json(&base, "/api/v1/nothing", TOKEN, "{}").status, 404);
        let statuses: Vec<u16> = op.requests().iter().map(|r| r.status).collect();
        assert_eq!(statuses, [401, 401, 200, 401, 404]);
        assert_eq!(op.requests()[4].path, "/api/v1/nothing");
        assert!(
            !format!("{:?}", OnePasswordOptions::new(TOKEN, Dataset::default())).contains(TOKEN)
        );
    }

    #[test]
    fn introspection_reports_features_and_v2_account() {
        let op = emulator(3);
        let auth = format!("Bearer {TOKEN}");
        let headers = [("Authorization", auth.as_str())];
        let v1 = send(
            &op.base_url(),
            "GET",
            ApiVersion::V1.introspect_path(),
            &headers,
            b"",
        );
        let v2 = send(
            &op.base_url(),
            "GET",
            ApiVersion::V2.introspect_path(),
            &headers,
            b"",
        );
        assert_eq!((v1.status, v2.status), (200, 200));
        let (v1, v2) = (v1.json(), v2.json());
        assert_eq!(
            v1["features"],
            json!(["auditevents", "itemusages", "signinattempts"])
        );
        assert!(v1.get("account_uuid").is_none());
        assert_eq!(v2["account_uuid"].as_str(), op.dataset().account_uuid());
        assert_eq!(v1["uuid"].as_str().unwrap().len(), 26);
        assert!(DateTime::parse_from_rfc3339(v2["issued_at"].as_str().unwrap()).is_ok());
        let wrong = send(
            &op.base_url(),
            "POST",
            ApiVersion::V1.introspect_path(),
            &headers,
            b"",
        );
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

        let empty = post_json(
            &op.base_url(),
            &path,
            TOKEN,
            &json!({ "cursor": cursor }).to_string(),
        );
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
        let expected: Vec<Value> = data
            .values(service)
            .into_iter()
            .zip(at)
            .filter(|(_, t)| **t >= from && **t < to)
            .map(|(v, _)| v)
            .collect();
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
        assert_eq!(
            post_json(&op.base_url(), &other, TOKEN, &misused).status,
            400
        );
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
