//! Deterministic 1Password event data for the emulators.
//!
//! Events are kept as JSON text, not `serde_json::Value`: without serde_json's
//! `preserve_order` feature a `Value` re-sorts its keys, and the emulator must
//! serve the same bytes every time. Each event is stored in its v2 form (with
//! `account_uuid`) and its v1 form (without), both in generation field order.

use std::collections::{BTreeMap, HashSet};

use chrono::{DateTime, Duration, FixedOffset, SecondsFormat, SubsecRound, Utc};
use fastrand::Rng;
use onepassword_collector::service::{ApiVersion, Service};
use serde_json::Value;

/// Per-service 1Password events, each list in ascending timestamp order.
#[derive(Clone, Debug, Default)]
pub struct Dataset {
    streams: BTreeMap<Service, Stream>,
    account_uuid: Option<String>,
}

/// One service's events; the three vectors run in parallel.
#[derive(Clone, Debug, Default)]
struct Stream {
    v2: Vec<String>,
    v1: Vec<String>,
    at: Vec<DateTime<Utc>>,
}

impl Dataset {
    /// `per_service` events for each service, timestamps inside
    /// `[start truncated to the second, start + span)`. Same seed, same bytes.
    pub fn generate(seed: u64, per_service: usize, start: DateTime<Utc>, span: Duration) -> Dataset {
        let counts: Vec<(Service, usize)> = Service::ALL.iter().map(|s| (*s, per_service)).collect();
        Dataset::generate_for(seed, &counts, start, span)
    }

    /// Like [`Dataset::generate`], with a count of its own for each service
    /// listed (the others have none): a backlog on one service alone.
    pub fn generate_for(seed: u64, counts: &[(Service, usize)], start: DateTime<Utc>, span: Duration) -> Dataset {
        let mut gen = Generator::new(seed);
        let mut dataset = Dataset { account_uuid: Some(gen.account_uuid.clone()), ..Dataset::default() };
        for &(service, per_service) in counts {
            let times = schedule(&mut gen.rng, per_service, start, span);
            let stream = dataset.streams.entry(service).or_default();
            for (at, timestamp) in times {
                let event = gen.event(service, &timestamp, at);
                stream.v2.push(event.render(None));
                stream.v1.push(event.render(Some("account_uuid")));
                stream.at.push(at);
            }
        }
        dataset
    }

    /// The account every generated event belongs to (`None` if not generated).
    pub fn account_uuid(&self) -> Option<&str> {
        self.account_uuid.as_deref()
    }

    /// The service's events as v2 JSON text, oldest first.
    pub fn events(&self, service: Service) -> &[String] {
        self.events_for(service, ApiVersion::V2)
    }

    /// The service's events as served on the given API version's path.
    pub fn events_for(&self, service: Service, version: ApiVersion) -> &[String] {
        match (self.streams.get(&service), version) {
            (Some(stream), ApiVersion::V1) => &stream.v1,
            (Some(stream), ApiVersion::V2) => &stream.v2,
            (None, _) => &[],
        }
    }

    /// The service's v2 events parsed (key order is not kept).
    pub fn values(&self, service: Service) -> Vec<Value> {
        self.values_for(service, ApiVersion::V2)
    }

    /// The service's events for an API version, parsed.
    pub fn values_for(&self, service: Service, version: ApiVersion) -> Vec<Value> {
        self.events_for(service, version)
            .iter()
            .map(|text| serde_json::from_str(text).expect("stored events are valid JSON"))
            .collect()
    }

    /// Each event's instant, parallel to `events`.
    pub fn timestamps(&self, service: Service) -> &[DateTime<Utc>] {
        self.streams.get(&service).map_or(&[], |s| &s.at)
    }

    /// Number of events across all services.
    pub fn len(&self) -> usize {
        self.streams.values().map(|s| s.at.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends events (v2 form) after the existing ones; the batch is sorted
    /// by timestamp first. Stored as `Value::to_string`, so keys come out sorted.
    ///
    /// # Panics
    /// If an event has no RFC 3339 `timestamp`, or is older than the newest
    /// event already held: positions handed out in cursors must stay valid.
    pub fn push(&mut self, service: Service, events: Vec<Value>) {
        let mut batch: Vec<(DateTime<Utc>, Value)> =
            events.into_iter().map(|event| (event_instant(&event), event)).collect();
        batch.sort_by_key(|(at, _)| *at);
        let stream = self.streams.entry(service).or_default();
        if let (Some(last), Some((first, _))) = (stream.at.last(), batch.first()) {
            assert!(first >= last, "pushed {service} event at {first} is older than the newest held ({last})");
        }
        for (at, event) in batch {
            stream.v2.push(event.to_string());
            stream.v1.push(without_account(event).to_string());
            stream.at.push(at);
        }
    }
}

impl Dataset {
    /// Serves `text` as an event exactly as written (for events no JSON
    /// library here would build, such as nesting deeper than serde_json
    /// parses), dated `at`.
    pub fn push_raw(&mut self, service: Service, at: DateTime<Utc>, text: &str) {
        let stream = self.streams.entry(service).or_default();
        assert!(stream.at.last().is_none_or(|last| at >= *last), "pushed {service} event is older than the newest");
        stream.v2.push(text.to_owned());
        stream.v1.push(text.to_owned());
        stream.at.push(at);
    }
}

fn event_instant(event: &Value) -> DateTime<Utc> {
    event
        .get("timestamp")
        .and_then(Value::as_str)
        .and_then(|ts| DateTime::parse_from_rfc3339(ts).ok())
        .map(|ts| ts.with_timezone(&Utc))
        .unwrap_or_else(|| panic!("event has no RFC 3339 timestamp: {event}"))
}

fn without_account(mut event: Value) -> Value {
    if let Some(fields) = event.as_object_mut() {
        fields.remove("account_uuid");
    }
    event
}

const BASE32: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

/// A 26-character uppercase base32 identifier, the shape 1Password uses.
pub(crate) fn base32_id(rng: &mut Rng) -> String {
    (0..26).map(|_| BASE32[rng.usize(..32)] as char).collect()
}

/// Offsets in seconds east of UTC; 0 renders as `Z`.
const OFFSETS: [i32; 6] = [0, -3 * 3600, 2 * 3600, 5 * 3600 + 1800, -7 * 3600, 0];

/// Ascending instants with their rendered timestamps. Indices 3 and 4 of every
/// ten (plus a few random ones) repeat the previous timestamp exactly, so runs
/// of three identical timestamps always occur.
fn schedule(rng: &mut Rng, n: usize, start: DateTime<Utc>, span: Duration) -> Vec<(DateTime<Utc>, String)> {
    let start = start.trunc_subsecs(0);
    let span_ms = i128::from(span.num_milliseconds().max(1));
    let count = n.max(1) as i128;
    let slot = (span_ms / count).max(1) as i64;
    let mut out: Vec<(DateTime<Utc>, String)> = Vec::with_capacity(n);
    for i in 0..n {
        let repeat = i % 10 == 3 || i % 10 == 4 || rng.u8(..20) == 0;
        if let (true, Some(previous)) = (repeat, out.last()) {
            out.push(previous.clone());
            continue;
        }
        let base = (span_ms * i as i128 / count) as i64;
        let mut at = (start + Duration::milliseconds(base + rng.i64(0..slot))).trunc_subsecs(0);
        if let Some((previous, _)) = out.last() {
            at = at.max(*previous);
        }
        let offset = FixedOffset::east_opt(OFFSETS[rng.usize(..OFFSETS.len())]).expect("offsets are within a day");
        let text = at.with_timezone(&offset).to_rfc3339_opts(SecondsFormat::Secs, true);
        out.push((at, text));
    }
    out
}

fn utc_text(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// Minimal JSON tree that keeps field order, so events render the way
/// 1Password lays them out.
enum Json {
    Str(String),
    Int(i64),
    Num(f64),
    Null,
    Obj(Vec<(&'static str, Json)>),
}

fn s(text: impl Into<String>) -> Json {
    Json::Str(text.into())
}

impl Json {
    /// Renders compactly, leaving out one top-level field if asked.
    fn render(&self, skip: Option<&str>) -> String {
        let mut out = String::new();
        match self {
            Json::Obj(fields) => write_fields(fields, skip, &mut out),
            other => other.write(&mut out),
        }
        out
    }

    fn write(&self, out: &mut String) {
        match self {
            Json::Str(text) => out.push_str(&Value::from(text.as_str()).to_string()),
            Json::Int(n) => out.push_str(&n.to_string()),
            Json::Num(x) => out.push_str(&Value::from(*x).to_string()),
            Json::Null => out.push_str("null"),
            Json::Obj(fields) => write_fields(fields, None, out),
        }
    }
}

fn write_fields(fields: &[(&'static str, Json)], skip: Option<&str>, out: &mut String) {
    out.push('{');
    let kept = fields.iter().filter(|(key, _)| Some(*key) != skip);
    for (i, (key, value)) in kept.enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&Value::from(*key).to_string());
        out.push(':');
        value.write(out);
    }
    out.push('}');
}

/// Names and emails chosen to stress JSON escaping: quotes, apostrophes,
/// backslashes, accents, CJK and emoji.
const PEOPLE: [(&str, &str); 7] = [
    ("Jack \"Jackie\" O'Neill", "jack@example.com"),
    ("José Müller", "jose.muller@example.de"),
    ("山田 太郎 (東京)", "taro@example.jp"),
    ("Zoë 🚀 Park", "zoe+ops@example.com"),
    ("Samantha Carter", "sam.carter@example.com"),
    ("Domain\\Admin", "admin@example.com"),
    ("Teal'c", "tealc@example.com"),
];

/// app_name, app_version, platform_name, platform_version, os_name, os_version.
const CLIENTS: [[&str; 6]; 4] = [
    ["1Password Extension", "20127", "Chrome", "85.0", "MacOSX", "10.15.6"],
    ["1Password for Windows", "81050012", "Windows", "10.0.19045", "Windows", "10.0.19045"],
    ["1Password CLI", "2.30.0", "go", "1.22.5", "Linux", "6.8.0"],
    ["1Password for iOS", "80900005", "iPhone", "17.5", "iOS", "17.5"],
];

/// country, region, city, latitude, longitude, continent.
const LOCATIONS: [(&str, &str, &str, f64, f64, &str); 5] = [
    ("CA", "Ontario", "Toronto", 43.64, -79.433, "North America"),
    ("JP", "Tokyo", "東京", 35.6895, 139.6917, "Asia"),
    ("DE", "Bayern", "München", 48.137, 11.575, "Europe"),
    ("BR", "São Paulo", "São Paulo", -23.5505, -46.6333, "South America"),
    ("FR", "Île-de-France", "Paris", 48.8566, 2.3522, "Europe"),
];

const SIGN_INS: [(&str, &str); 8] = [
    ("success", "credentials_ok"),
    ("success", "mfa_ok"),
    ("credentials_failed", "password_secret_bad"),
    ("mfa_failed", "mfa_missing"),
    ("sso_failed", "sso_user_mismatch"),
    ("modern_version_failed", "modern_version_missing"),
    ("firewall_failed", "continent_blocked"),
    ("firewall_reported_success", "country_blocked"),
];

const ITEM_ACTIONS: [&str; 10] = [
    "fill",
    "enter-item-edit-mode",
    "export",
    "reveal",
    "secure-copy",
    "server-create",
    "server-fetch",
    "server-update",
    "select-sso-provider",
    "share",
];

/// (action, object_type) pairs in the four-letter style audit events use.
const AUDIT_ACTIONS: [(&str, &str); 8] = [
    ("grnt", "vault"),
    ("revk", "vault"),
    ("join", "user"),
    ("susp", "user"),
    ("crea", "vault"),
    ("dlte", "item"),
    ("updt", "ugrp"),
    ("expt", "vault"),
];

/// Free-text fields, including a newline, a backslash path, quotes and a tab.
const AUX_INFO: [&str; 6] = [
    "",
    "line1\nline2",
    "exported to C:\\Users\\ops\\vault.1pux",
    "renamed to \"Prod \u{2728} secrets\"",
    "reason:\tpolicy",
    "A",
];

struct Person {
    uuid: String,
    name: &'static str,
    email: &'static str,
}

struct Generator {
    rng: Rng,
    used: HashSet<String>,
    people: Vec<Person>,
    account_uuid: String,
}

impl Generator {
    fn new(seed: u64) -> Self {
        let mut gen = Generator {
            rng: Rng::with_seed(seed),
            used: HashSet::new(),
            people: Vec::new(),
            account_uuid: String::new(),
        };
        gen.account_uuid = gen.fresh_id();
        gen.people = PEOPLE.iter().map(|&(name, email)| Person { uuid: gen.fresh_id(), name, email }).collect();
        gen
    }

    /// An identifier never handed out before in this dataset.
    fn fresh_id(&mut self) -> String {
        loop {
            let id = base32_id(&mut self.rng);
            if self.used.insert(id.clone()) {
                return id;
            }
        }
    }

    fn event(&mut self, service: Service, timestamp: &str, at: DateTime<Utc>) -> Json {
        match service {
            Service::SignInAttempts => self.sign_in(timestamp),
            Service::ItemUsage => self.item_usage(timestamp),
            Service::Audit => self.audit(timestamp, at),
        }
    }

    fn person(&mut self) -> usize {
        self.rng.usize(..self.people.len())
    }

    fn user_json(&self, who: usize) -> Json {
        let person = &self.people[who];
        Json::Obj(vec![("uuid", s(&person.uuid)), ("name", s(person.name)), ("email", s(person.email))])
    }

    fn ip(&mut self) -> String {
        let rng = &mut self.rng;
        format!("{}.{}.{}.{}", rng.u8(1..=223), rng.u8(..), rng.u8(..), rng.u8(1..=254))
    }

    fn client(&mut self) -> Json {
        let [app, app_version, platform, platform_version, os, os_version] = CLIENTS[self.rng.usize(..CLIENTS.len())];
        Json::Obj(vec![
            ("app_name", s(app)),
            ("app_version", s(app_version)),
            ("platform_name", s(platform)),
            ("platform_version", s(platform_version)),
            ("os_name", s(os)),
            ("os_version", s(os_version)),
            ("ip_address", s(self.ip())),
        ])
    }

    fn location(&mut self) -> (Json, &'static str, &'static str) {
        let (country, region, city, lat, lon, continent) = LOCATIONS[self.rng.usize(..LOCATIONS.len())];
        let json = Json::Obj(vec![
            ("country", s(country)),
            ("region", s(region)),
            ("city", s(city)),
            ("latitude", Json::Num(lat)),
            ("longitude", Json::Num(lon)),
        ]);
        (json, country, continent)
    }

    fn sign_in(&mut self, timestamp: &str) -> Json {
        let (category, kind) = SIGN_INS[self.rng.usize(..SIGN_INS.len())];
        let (location, country, continent) = self.location();
        let details = if category.starts_with("firewall") {
            Json::Obj(vec![("value", s(continent))])
        } else if self.rng.u8(..4) == 0 {
            Json::Obj(vec![("value", s("line1\nline2 \\ \"quoted\""))])
        } else {
            Json::Null
        };
        let who = self.person();
        let person = &self.people[who];
        let target_user = Json::Obj(vec![
            ("uuid", s(&person.uuid)),
            ("name", s(person.name)),
            ("email", s(person.email)),
            ("type", s("user")),
        ]);
        Json::Obj(vec![
            ("uuid", s(self.fresh_id())),
            ("session_uuid", s(self.fresh_id())),
            ("timestamp", s(timestamp)),
            ("category", s(category)),
            ("type", s(kind)),
            ("country", s(country)),
            ("details", details),
            ("target_user", target_user),
            ("client", self.client()),
            ("location", location),
            ("account_uuid", s(&self.account_uuid)),
        ])
    }

    fn item_usage(&mut self, timestamp: &str) -> Json {
        let who = self.person();
        let action = ITEM_ACTIONS[self.rng.usize(..ITEM_ACTIONS.len())];
        Json::Obj(vec![
            ("uuid", s(self.fresh_id())),
            ("timestamp", s(timestamp)),
            ("used_version", Json::Int(self.rng.i64(1..40))),
            ("vault_uuid", s(self.fresh_id())),
            ("item_uuid", s(self.fresh_id())),
            ("action", s(action)),
            ("user", self.user_json(who)),
            ("client", self.client()),
            ("location", self.location().0),
            ("account_uuid", s(&self.account_uuid)),
        ])
    }

    fn audit(&mut self, timestamp: &str, at: DateTime<Utc>) -> Json {
        let actor = self.person();
        let (action, object_type) = AUDIT_ACTIONS[self.rng.usize(..AUDIT_ACTIONS.len())];
        let mut fields = vec![
            ("uuid", s(self.fresh_id())),
            ("timestamp", s(timestamp)),
            ("actor_uuid", s(&self.people[actor].uuid)),
            ("actor_details", self.user_json(actor)),
            ("action", s(action)),
            ("object_type", s(object_type)),
            ("object_uuid", s(self.fresh_id())),
        ];
        // Only events about a user describe the object; the API omits it otherwise.
        if object_type == "user" {
            let subject = self.person();
            fields.push(("object_details", self.user_json(subject)));
        }
        fields.push(("aux_id", Json::Int(self.rng.i64(0..100_000))));
        fields.push(("aux_uuid", s(self.fresh_id())));
        if self.rng.bool() {
            let other = self.person();
            fields.push(("aux_details", self.user_json(other)));
        }
        fields.push(("aux_info", s(AUX_INFO[self.rng.usize(..AUX_INFO.len())])));
        let login = at - Duration::minutes(self.rng.i64(1..600));
        let session = Json::Obj(vec![
            ("uuid", s(self.fresh_id())),
            ("login_time", s(utc_text(login))),
            ("device_uuid", s(self.fresh_id())),
            ("ip", s(self.ip())),
        ]);
        fields.push(("session", session));
        fields.push(("location", self.location().0));
        fields.push(("account_uuid", s(&self.account_uuid)));
        Json::Obj(fields)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn start() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2025, 3, 1, 12, 0, 0).unwrap()
    }

    fn sample() -> Dataset {
        Dataset::generate(7, 60, start(), Duration::hours(2))
    }

    #[test]
    fn generation_is_deterministic_per_seed() {
        let a = sample();
        let b = sample();
        let c = Dataset::generate(8, 60, start(), Duration::hours(2));
        for service in Service::ALL {
            assert_eq!(a.events(service), b.events(service));
            assert_ne!(a.events(service), c.events(service));
            assert_eq!(a.events(service).len(), 60);
        }
        assert_eq!(a.len(), 180);
    }

    #[test]
    fn timestamps_are_ordered_within_span_and_repeat_in_runs() {
        let data = sample();
        let end = start() + Duration::hours(2);
        for service in Service::ALL {
            let at = data.timestamps(service);
            assert!(at.windows(2).all(|w| w[0] <= w[1]), "{service} out of order");
            assert!(at.iter().all(|t| *t >= start() && *t < end));
            let texts: Vec<String> =
                data.values(service).iter().map(|v| v["timestamp"].as_str().unwrap().to_owned()).collect();
            for (text, instant) in texts.iter().zip(at) {
                assert_eq!(DateTime::parse_from_rfc3339(text).unwrap(), *instant);
            }
            let repeats = texts.windows(2).filter(|w| w[0] == w[1]).count();
            assert!(repeats >= 60 / 5, "{service}: only {repeats} repeats");
            assert!(texts.windows(3).any(|w| w[0] == w[1] && w[1] == w[2]));
            assert!(texts.iter().any(|t| t.ends_with('Z')));
            assert!(texts.iter().any(|t| t.ends_with("-03:00") || t.ends_with("+02:00")));
        }
    }

    #[test]
    fn uuids_are_unique_base32() {
        let data = sample();
        let mut seen = HashSet::new();
        for service in Service::ALL {
            for event in data.values(service) {
                let uuid = event["uuid"].as_str().unwrap().to_owned();
                assert_eq!(uuid.len(), 26);
                assert!(uuid.bytes().all(|b| BASE32.contains(&b)));
                assert!(seen.insert(uuid), "duplicate uuid");
            }
        }
    }

    #[test]
    fn events_carry_awkward_strings_and_expected_fields() {
        let data = sample();
        let all: String = Service::ALL.iter().flat_map(|s| data.events(*s).iter().cloned()).collect();
        for needle in [r#"\"Jackie\""#, r"\n", r"\\", "José Müller", "東京", "🚀"] {
            assert!(all.contains(needle), "no {needle:?} in generated data");
        }
        let sign_in = &data.values(Service::SignInAttempts)[0];
        for key in ["session_uuid", "category", "type", "details", "target_user", "client"] {
            assert!(sign_in.get(key).is_some(), "sign-in lacks {key}");
        }
        assert!(sign_in["client"]["ip_address"].is_string());
        let usage = &data.values(Service::ItemUsage)[0];
        for key in ["used_version", "vault_uuid", "item_uuid", "action", "user", "location"] {
            assert!(usage.get(key).is_some(), "item usage lacks {key}");
        }
        let audit = &data.values(Service::Audit)[0];
        for key in ["actor_uuid", "actor_details", "object_uuid", "aux_info", "session"] {
            assert!(audit.get(key).is_some(), "audit event lacks {key}");
        }
        assert!(audit["session"]["login_time"].is_string());
    }

    #[test]
    fn v1_form_is_v2_without_account_uuid_in_same_order() {
        let data = sample();
        let account = data.account_uuid().unwrap();
        for service in Service::ALL {
            let v2 = data.events(service);
            let v1 = data.events_for(service, ApiVersion::V1);
            for (new, old) in v2.iter().zip(v1) {
                assert!(new.starts_with(r#"{"uuid":""#));
                let suffix = format!(r#","account_uuid":"{account}"}}"#);
                assert_eq!(new.strip_suffix(&suffix).map(|s| format!("{s}}}")), Some(old.clone()));
            }
        }
    }

    #[test]
    fn push_sorts_batches_and_rejects_older_events() {
        let mut data = Dataset::default();
        let late = serde_json::json!({"uuid": "B", "timestamp": "2025-01-01T10:00:00-03:00", "account_uuid": "X"});
        let early = serde_json::json!({"uuid": "A", "timestamp": "2025-01-01T12:00:00Z"});
        data.push(Service::Audit, vec![late, early]);
        let uuids: Vec<Value> = data.values(Service::Audit).iter().map(|v| v["uuid"].clone()).collect();
        assert_eq!(uuids, ["A", "B"]);
        assert!(!data.events_for(Service::Audit, ApiVersion::V1)[1].contains("account_uuid"));
        let older = serde_json::json!({"uuid": "C", "timestamp": "2024-01-01T00:00:00Z"});
        let result = std::panic::catch_unwind(move || data.push(Service::Audit, vec![older]));
        assert!(result.is_err());
    }
}
