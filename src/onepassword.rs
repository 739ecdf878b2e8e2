//! Requests to and responses from the 1Password Events Reporting API.
//!
//! Events are kept as raw JSON text (`RawValue`) from the response to Devo,
//! so what Devo receives is what 1Password served, field order and numbers
//! included.

use crate::config::Config;
use crate::error::{
    onepassword_status_id, CollectorError, ErrorKind, ONEPASSWORD_BAD_BODY, ONEPASSWORD_TOO_LARGE,
    ONEPASSWORD_UNREACHABLE,
};
use crate::http::{HttpFailure, HttpRequest, HttpResponse, Method};
use crate::service::Service;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::Deserialize;
use serde_json::value::RawValue;

/// Where a page request starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PageStart {
    /// A reset cursor: the first page from this time on.
    From(DateTime<Utc>),
    /// A continuation of a stored cursor.
    Cursor(String),
}

pub fn page_request(config: &Config, service: Service, start: &PageStart) -> HttpRequest {
    let body = match start {
        PageStart::From(time) => serde_json::json!({
            "limit": config.page_size,
            "start_time": time.to_rfc3339_opts(SecondsFormat::Secs, true),
        }),
        PageStart::Cursor(cursor) => serde_json::json!({ "cursor": cursor }),
    };
    HttpRequest {
        method: Method::Post,
        scheme: config.base_url.scheme,
        authority: config.base_url.authority.clone(),
        path: config.base_url.path(&service.path(config.api_version)),
        headers: vec![
            ("authorization".into(), format!("Bearer {}", config.token.expose())),
            ("content-type".into(), "application/json".into()),
            ("accept".into(), "application/json".into()),
            ("user-agent".into(), concat!("onepassword-collector/", env!("CARGO_PKG_VERSION")).into()),
        ],
        body: serde_json::to_vec(&body).expect("a JSON value always serialises"),
    }
}

/// One page of events, each kept as the exact JSON text 1Password sent,
/// borrowed from the response body: a page is never copied event by event.
#[derive(Debug)]
pub struct Page<'a> {
    pub items: Vec<&'a RawValue>,
    pub cursor: String,
    pub has_more: bool,
}

#[derive(Deserialize)]
struct PageBody<'a> {
    #[serde(default, borrow)]
    items: Option<Vec<&'a RawValue>>,
    cursor: String,
    #[serde(default)]
    has_more: bool,
}

/// The fields the collector itself reads from an event; all else is passed on untouched.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
pub struct EventMeta {
    #[serde(default)]
    pub uuid: Option<String>,
    #[serde(default)]
    pub timestamp: Option<String>,
}

/// The longest `uuid` the collector keeps to recognise an event it already
/// delivered (1Password's are 26 characters). Uuids are stored, up to
/// [`RECENT_UUIDS`](crate::checkpoint::RECENT_UUIDS) of them in every
/// service's record: an event with a longer one is delivered like an event
/// without one, so that the record stays small whatever the events hold.
pub const MAX_UUID_LEN: usize = 128;

impl EventMeta {
    pub fn of(item: &RawValue) -> EventMeta {
        let mut meta: EventMeta = serde_json::from_str(item.get()).unwrap_or_default();
        meta.uuid = meta.uuid.filter(|u| u.len() <= MAX_UUID_LEN);
        meta
    }

    /// [`EventMeta::of`] in one pass over the event's bytes, and whether
    /// the event needs [`crate::devo::event_line`]'s compaction (a line
    /// break between tokens). The rare event the scan cannot read as a
    /// parser would (escapes in its uuid, a repeated key) is parsed.
    pub fn read(item: &RawValue) -> (EventMeta, bool) {
        let found = crate::json::top_level_strings(item.get(), ["uuid", "timestamp"]);
        if found.irregular {
            return (EventMeta::of(item), found.multiline);
        }
        let [uuid, timestamp] = found.values;
        let meta = EventMeta {
            uuid: uuid.filter(|u| u.len() <= MAX_UUID_LEN).map(str::to_owned),
            timestamp: timestamp.map(str::to_owned),
        };
        (meta, found.multiline)
    }

    /// The `timestamp` if it is a valid RFC 3339 time, with its raw text.
    pub fn time(&self) -> Option<(DateTime<Utc>, String)> {
        let raw = self.timestamp.as_ref()?;
        let t = DateTime::parse_from_rfc3339(raw).ok()?.with_timezone(&Utc);
        Some((t, raw.clone()))
    }
}

impl PageStart {
    /// A stable name of the page this start reads, to recognise a repeat.
    pub fn id(&self) -> String {
        match self {
            PageStart::From(t) => format!("time:{}", t.to_rfc3339_opts(SecondsFormat::Secs, true)),
            PageStart::Cursor(c) => format!("cursor:{c}"),
        }
    }
}

/// Turns an answer of the events endpoint into a page or an error that says
/// what to do. Any non-200 leaves the checkpoint alone: the page is retried.
pub fn parse_page(service: Service, response: &HttpResponse) -> Result<Page<'_>, CollectorError> {
    if response.status != 200 {
        return Err(status_error(service, response));
    }
    let body: PageBody = serde_json::from_slice(&response.body).map_err(|e| {
        CollectorError::new(
            ErrorKind::PullError,
            ONEPASSWORD_BAD_BODY,
            format!(
                "1Password answered {service} with 200 but the body is not an events page ({}); \
                 the page will be requested again next tick. If this persists, check that base_url \
                 points at the Events API and not at a proxy or login page",
                // serde's complaint may quote what it read: bounded.
                crate::error::bounded(&e.to_string())
            ),
        )
    })?;
    Ok(Page { items: body.items.unwrap_or_default(), cursor: body.cursor, has_more: body.has_more })
}

fn status_error(service: Service, response: &HttpResponse) -> CollectorError {
    let status = response.status;
    let advice = match status {
        400 => "the request or stored cursor was refused as malformed; if it repeats, delete the service's checkpoint to restart from start_time_value".to_string(),
        401 => format!(
            "the token is missing, invalid, revoked or not scoped for {} events; issue a token with the \"{}\" feature",
            service,
            service.feature()
        ),
        403 => "access is forbidden for this account; check the Events Reporting integration".to_string(),
        404 => "the endpoint does not exist; check base_url and api_version".to_string(),
        429 => "the account's rate limit (600/min, 30,000/h across all tokens) was exceeded; the page is retried on a later tick".to_string(),
        500..=599 => "1Password had a server error; the page is retried on the next tick".to_string(),
        _ => "a status 1Password does not send: check that base_url is the Events API and not a proxy; the page is retried on the next tick".to_string(),
    };
    CollectorError::new(
        ErrorKind::PullError,
        onepassword_status_id(status),
        format!("1Password answered {service} with HTTP {status} ({advice}); body: {}", response.body_excerpt()),
    )
    .with_http_status(status)
}

pub fn transport_error(service: Service, failure: &HttpFailure) -> CollectorError {
    if let HttpFailure::TooLarge { limit } = failure {
        return CollectorError::new(
            ErrorKind::PullError,
            ONEPASSWORD_TOO_LARGE,
            format!(
                "1Password's answer for {service} is larger than max_response_bytes ({limit} bytes) and was not \
                 read; lower page_size or raise max_response_bytes. Nothing was lost: the page is retried next tick"
            ),
        );
    }
    CollectorError::new(
        ErrorKind::PullError,
        ONEPASSWORD_UNREACHABLE,
        format!(
            "1Password could not be reached for {service}: {}; check base_url, the network and \
             the host's allowed outbound hosts. Nothing was lost: the page is retried next tick",
            failure.for_setting("base_url")
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::{load, minimal};

    fn response(status: u16, body: &str) -> HttpResponse {
        HttpResponse { status, headers: vec![], body: body.as_bytes().to_vec() }
    }

    #[test]
    fn first_page_uses_a_reset_cursor_then_the_stored_cursor() {
        let mut m = minimal();
        m.insert("page_size", "250".into());
        m.insert("api_version", "v1".into());
        let c = load(&m).unwrap();
        let t = DateTime::parse_from_rfc3339("2026-03-01T10:00:00+02:00").unwrap().with_timezone(&Utc);
        let req = page_request(&c, Service::Audit, &PageStart::From(t));
        assert_eq!(req.method, Method::Post);
        assert_eq!(req.authority, "events.1password.com");
        assert_eq!(req.path, "/api/v1/auditevents");
        let body: serde_json::Value = serde_json::from_slice(&req.body).unwrap();
        assert_eq!(body, serde_json::json!({"limit": 250, "start_time": "2026-03-01T08:00:00Z"}));
        assert!(req.headers.contains(&("authorization".into(), "Bearer op-secret-token".into())));

        let req = page_request(&c, Service::SignInAttempts, &PageStart::Cursor("CUR".into()));
        assert_eq!(req.path, "/api/v1/signinattempts");
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&req.body).unwrap(),
            serde_json::json!({"cursor": "CUR"})
        );
    }

    #[test]
    fn a_page_keeps_items_byte_for_byte() {
        let body = r#"{"items":[{"uuid":"A","timestamp":"2020-06-11T16:32:50-03:00","n":1.50,"s":"a\"b\nc"}],"cursor":"C2","has_more":true}"#;
        let r = response(200, body);
        let page = parse_page(Service::SignInAttempts, &r).unwrap();
        assert_eq!(
            page.items[0].get(),
            r#"{"uuid":"A","timestamp":"2020-06-11T16:32:50-03:00","n":1.50,"s":"a\"b\nc"}"#
        );
        assert_eq!(page.cursor, "C2");
        assert!(page.has_more);
        let (t, raw) = EventMeta::of(page.items[0]).time().unwrap();
        assert_eq!(raw, "2020-06-11T16:32:50-03:00");
        assert_eq!(t.to_rfc3339(), "2020-06-11T19:32:50+00:00");
        let r = response(200, r#"{"cursor":"C3","has_more":false}"#);
        let empty = parse_page(Service::Audit, &r).unwrap();
        assert!(empty.items.is_empty() && !empty.has_more);
        assert_eq!(EventMeta::of(page.items[0]).uuid.as_deref(), Some("A"));
        assert_eq!(PageStart::Cursor("C".into()).id(), "cursor:C");
    }

    #[test]
    fn statuses_and_bodies_map_to_ids_with_advice() {
        let e = parse_page(Service::ItemUsage, &response(401, r#"{"Error":{"Message":"Unauthorized"}}"#)).unwrap_err();
        assert_eq!((e.id, e.http_status), (401, Some(401)));
        assert!(e.message.contains("itemusages") && e.message.contains("Unauthorized"));
        assert_eq!(parse_page(Service::Audit, &response(429, "")).unwrap_err().id, 429);
        assert_eq!(parse_page(Service::Audit, &response(503, "")).unwrap_err().id, 503);
        for bad in ["not json", r#"{"items":[1,2"#, r#"{"items":[]}"#] {
            let e = parse_page(Service::Audit, &response(200, bad)).unwrap_err();
            assert_eq!(e.id, ONEPASSWORD_BAD_BODY, "{bad}");
        }
        let e = transport_error(Service::Audit, &HttpFailure::Timeout);
        assert_eq!(e.id, ONEPASSWORD_UNREACHABLE);
        assert!(e.message.contains("timed out"));
        // serde quotes a string of the wrong type: not a megabyte of it.
        let huge = format!(r#"{{"cursor":"C","has_more":"{}"}}"#, "x".repeat(1 << 20));
        let e = parse_page(Service::Audit, &response(200, &huge)).unwrap_err();
        assert_eq!(e.id, ONEPASSWORD_BAD_BODY);
        assert!(e.message.len() < 1000 && e.message.contains("expected a boolean"), "{}", e.message);
    }

    #[test]
    fn a_status_outside_4xx_5xx_keeps_its_own_field_and_never_poses_as_our_id() {
        for status in [100, 204, 302, 600, 700, 900, 999] {
            let e = parse_page(Service::Audit, &response(status, "")).unwrap_err();
            assert_eq!((e.id, e.http_status), (crate::error::ONEPASSWORD_UNEXPECTED_STATUS, Some(status)));
            assert!(e.message.contains(&format!("HTTP {status}")), "{}", e.message);
        }
    }

    #[test]
    fn a_hostile_error_body_reaches_the_message_short_and_inert() {
        let body = format!("\x1b[2J\x1b]0;pwned\x07{}", "A".repeat(1 << 20));
        let e = parse_page(Service::Audit, &response(503, &body)).unwrap_err();
        assert!(!e.message.chars().any(crate::text::is_unsafe), "{}", e.message);
        assert!(e.message.contains("\\u{1b}[2J") && e.message.chars().count() < 600, "{}", e.message);
    }

    #[test]
    fn an_answer_over_the_cap_has_its_own_id_naming_the_setting() {
        let e = transport_error(Service::ItemUsage, &HttpFailure::TooLarge { limit: 4096 });
        assert_eq!((e.id, e.kind, e.http_status), (ONEPASSWORD_TOO_LARGE, ErrorKind::PullError, None));
        assert!(e.message.contains("4096 bytes") && e.message.contains("max_response_bytes"), "{}", e.message);
    }

    #[test]
    fn an_overlong_uuid_is_not_kept_to_recognise_repeats() {
        let (long, longest) = ("U".repeat(MAX_UUID_LEN + 1), "U".repeat(MAX_UUID_LEN));
        let body = format!(
            r#"{{"items":[{{"uuid":"{long}","timestamp":"2026-01-01T00:00:00Z"}},{{"uuid":"{longest}"}}],"cursor":"C"}}"#
        );
        let r = response(200, &body);
        let page = parse_page(Service::Audit, &r).unwrap();
        let meta = EventMeta::of(page.items[0]);
        assert_eq!(meta.uuid, None);
        assert!(meta.time().is_some(), "the rest of the event is read");
        assert_eq!(EventMeta::of(page.items[1]).uuid, Some(longest));
    }
}
