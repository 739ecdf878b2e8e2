//! `host-harness status`: what each tenant's services have done, read from
//! their stored state records (no component, no network).

use crate::kv::Stores;
use crate::tenant::Tenant;
use chrono::{DateTime, Utc};
use onepassword_collector::service::Service;
use onepassword_collector::state::{ServiceState, BUCKET};
use onepassword_collector::time::{shown, utc};

/// One tenant's service, as [`read`] found it.
pub struct Row {
    /// The tenant's name.
    pub tenant: String,
    /// The service whose record this is.
    pub service: Service,
    /// Its stored state, cleaned ([`crate::guest_text::stored_state`]);
    /// `None` when it never ran, `Err` (cleaned too) when the store or the
    /// record could not be read.
    pub state: Result<Option<ServiceState>, String>,
}

/// The services a tenant collects (its `services` variable, or all).
pub(crate) fn services(tenant: &Tenant) -> Vec<Service> {
    match tenant.variables.get(onepassword_collector::config::key::SERVICES) {
        Some(list) => list.split(',').filter_map(|s| s.trim().parse().ok()).collect(),
        None => Service::ALL.to_vec(),
    }
}

/// Each tenant's services' stored state, read through `stores`.
pub async fn read(tenants: &[Tenant], stores: &Stores) -> Vec<Row> {
    let mut rows = Vec::new();
    for tenant in tenants {
        // A SQLite file never written stays uncreated: status only reads.
        let absent = tenant.kv.sqlite_path().is_some_and(|path| !path.exists());
        let mut store = if absent { None } else { Some(stores.open(&tenant.kv, BUCKET).await) };
        for service in services(tenant) {
            let state = match &mut store {
                None => Ok(None),
                Some(Err(e)) => Err(e.clone()),
                Some(Ok(kv)) => kv
                    .get(&ServiceState::key(service))
                    .await
                    .and_then(|b| b.map(|b| ServiceState::decode(service, &b).map_err(|e| e.to_string())).transpose())
                    // The component wrote the record, and a hostile one can
                    // put any text in any of its strings.
                    .map(|state| state.map(crate::guest_text::stored_state)),
            };
            // Why a record cannot be read may quote what it holds.
            let state = state.map_err(|e| crate::guest_text::message(&e));
            rows.push(Row { tenant: tenant.name.clone(), service, state });
        }
    }
    rows
}

/// True when the service's last error came after its last success (or it
/// never succeeded): it is failing now.
fn failing(s: &ServiceState) -> bool {
    s.stats.last_error.as_ref().is_some_and(|e| s.stats.last_success_at.is_none_or(|ok| ok < e.at))
}

/// The first line of a stored message, at most [`ERROR_CHARS`] characters.
fn first_line(message: &str) -> String {
    let line = message.lines().next().unwrap_or_default();
    if line.chars().count() > ERROR_CHARS {
        format!("{}…", line.chars().take(ERROR_CHARS - 1).collect::<String>())
    } else {
        line.to_string()
    }
}

/// The most characters of an error's message the table shows.
const ERROR_CHARS: usize = 160;

fn time(t: Option<DateTime<Utc>>) -> String {
    t.map_or("-".into(), utc)
}

/// Seconds from the newest delivered event (its own RFC 3339 text) to `now`.
fn lag_seconds(newest: Option<&str>, now: DateTime<Utc>) -> Option<i64> {
    let t = DateTime::parse_from_rfc3339(newest?).ok()?;
    Some((now - t.with_timezone(&Utc)).num_seconds().max(0))
}

/// Seconds as a short human duration: 42s, 17m, 5h, 3d (the `status` and
/// `tick` tables).
pub fn human_duration(seconds: i64) -> String {
    match seconds.max(0) {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

/// A table, one line per tenant and service.
pub fn table(rows: &[Row], now: DateTime<Utc>) -> String {
    let mut out = format!(
        "{:<16} {:<17} {:<21} {:<26} {:>6} {:>10} {:>12}  {}\n",
        "tenant", "service", "last success", "newest event", "lag", "total sent", "bytes sent", "last error / state"
    );
    for row in rows {
        let line = match &row.state {
            Err(e) => format!("{:<16} {:<17} cannot read state: {e}", row.tenant, row.service.name()),
            Ok(None) => format!("{:<16} {:<17} {:<21} never collected", row.tenant, row.service.name(), "-"),
            Ok(Some(s)) => {
                let cp = s.checkpoint.as_ref();
                let newest = cp.and_then(|c| c.newest_event.as_deref());
                let mut notes = Vec::new();
                if let Some(e) = &s.stats.last_error {
                    notes.push(format!(
                        "{}error {}{} at {}: {}",
                        if failing(s) { "FAILING: " } else { "earlier " },
                        e.id,
                        e.http_status.map_or(String::new(), |status| format!(" (HTTP {status})")),
                        utc(e.at),
                        crate::guest_text::field(&first_line(&e.message))
                    ));
                }
                if let Some(b) = s.backoff.as_ref().filter(|b| b.until > now) {
                    notes.push(format!("backing off until {} after {} failure(s)", utc(b.until), b.attempts));
                }
                if let Some(l) = s.lease.as_ref().filter(|l| l.expires > now) {
                    notes.push(format!("running (lease until {})", utc(l.expires)));
                }
                format!(
                    "{:<16} {:<17} {:<21} {:<26} {:>6} {:>10} {:>12}  {}",
                    row.tenant,
                    row.service.name(),
                    time(s.stats.last_success_at),
                    newest.map_or("-".to_string(), shown),
                    lag_seconds(newest, now).map_or("-".into(), human_duration),
                    cp.map_or(0, |c| c.total_sent),
                    s.stats.bytes_sent,
                    if notes.is_empty() { "ok".to_string() } else { notes.join("; ") }
                )
            }
        };
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// One JSON object per tenant (for scripts): per service the same facts
/// as the table, times in UTC.
pub fn to_json(rows: &[Row], now: DateTime<Utc>) -> Vec<serde_json::Value> {
    let mut tenants: Vec<(String, serde_json::Map<String, serde_json::Value>)> = Vec::new();
    for row in rows {
        let service = match &row.state {
            Err(e) => serde_json::json!({ "error": e }),
            Ok(None) => serde_json::json!({ "collected": false }),
            Ok(Some(s)) => {
                let cp = s.checkpoint.as_ref();
                let newest = cp.and_then(|c| c.newest_event.as_deref());
                let lag = lag_seconds(newest, now);
                serde_json::json!({
                    "collected": true,
                    "failing": failing(s),
                    "last_success_at": s.stats.last_success_at.map(utc),
                    "newest_event": newest.map(shown),
                    "lag_seconds": lag,
                    "total_sent": cp.map_or(0, |c| c.total_sent),
                    "bytes_sent": s.stats.bytes_sent,
                    "last_error": s.stats.last_error.as_ref().map(|e| serde_json::json!({
                        "id": e.id, "http_status": e.http_status, "message": e.message, "at": utc(e.at),
                        "remedy": onepassword_collector::error::remedy(e.id),
                    })),
                    "backoff_until": s.backoff.as_ref().filter(|b| b.until > now).map(|b| utc(b.until)),
                    "backoff_failures": s.backoff.as_ref().filter(|b| b.until > now).map(|b| b.attempts),
                    "lease_until": s.lease.as_ref().filter(|l| l.expires > now).map(|l| utc(l.expires)),
                })
            }
        };
        match tenants.last_mut() {
            Some((name, services)) if *name == row.tenant => {
                services.insert(row.service.name().to_string(), service);
            }
            _ => tenants
                .push((row.tenant.clone(), serde_json::Map::from_iter([(row.service.name().to_string(), service)]))),
        }
    }
    tenants
        .into_iter()
        .map(|(tenant, services)| serde_json::json!({ "tenant": tenant, "services": services }))
        .collect()
}

/// Each tenant's next planned firing, and where it falls in its period
/// (an offset, or the exact second): a table after the services' one.
pub fn firings_table(tenants: &[Tenant], now: DateTime<Utc>) -> String {
    let mut out = format!("{:<16} {:<25} {}\n", "tenant", "next firing", "within its period");
    for tenant in tenants {
        let line = match tenant.next_firing(now) {
            Some(f) => format!("{:<16} {:<25} {}", tenant.name, crate::schedule::shown(f.at), f.spread.describe()),
            None => format!("{:<16} {:<25} the schedule fires no more", tenant.name, "-"),
        };
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// Adds each tenant's next firing to its [`to_json`] line: `next_firing`,
/// `firing_offset_ms` (null when it fires on the exact second) and `firing`
/// (in words).
pub fn add_firings(lines: &mut [serde_json::Value], tenants: &[Tenant], now: DateTime<Utc>) {
    for line in lines {
        let Some(tenant) = tenants.iter().find(|t| line["tenant"] == t.name.as_str()) else { continue };
        for (key, value) in crate::schedule::Firing::json_fields(tenant.next_firing(now).as_ref()) {
            line[key] = value;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::SqliteStore;
    use onepassword_collector::checkpoint::Checkpoint;
    use onepassword_collector::state::StoredError;
    use std::collections::BTreeMap;

    fn tenant_of(dir: &tempfile::TempDir) -> Tenant {
        Tenant {
            name: "acme".into(),
            schedule: "0 * * * * *".into(),
            spread_firings: true,
            kv: dir.path().join("acme.sqlite").into(),
            variables: BTreeMap::from([("services".into(), "audit,sign_in_attempts".into())]),
            environment: Default::default(),
            allowed_outbound_hosts: None,
            limits: Default::default(),
        }
    }

    #[tokio::test]
    async fn shows_success_lag_totals_and_errors_per_service() {
        let dir = tempfile::tempdir().unwrap();
        let now = DateTime::parse_from_rfc3339("2026-05-01T12:00:00Z").unwrap().with_timezone(&Utc);
        let tenant = tenant_of(&dir);
        let mut state = ServiceState::new(now);
        state.checkpoint = Some(Checkpoint {
            newest_event: Some("2026-05-01T11:00:00Z".into()),
            total_sent: 42,
            ..Default::default()
        });
        state.stats.last_success_at = Some(now - chrono::TimeDelta::minutes(5));
        state.stats.bytes_sent = 1234;
        state.stats.last_error = Some(StoredError {
            id: 602,
            message: "1Password answered audit with HTTP 900\x1b]0;pwned\x07\u{202e}".into(),
            at: now - chrono::TimeDelta::minutes(1),
            http_status: Some(900),
        });
        SqliteStore::open(tenant.kv.sqlite_path().unwrap())
            .unwrap()
            .set(BUCKET, &ServiceState::key(Service::Audit), &state.encode())
            .unwrap();
        let text = table(&read(&[tenant], &Stores::default()).await, now);
        let audit = text.lines().find(|l| l.contains("audit")).unwrap();
        for part in
            ["acme", "2026-05-01T11:55:00Z", "2026-05-01T11:00:00Z", "60m", "42", "1234", "error 602 (HTTP 900)"]
        {
            assert!(audit.contains(part), "{part} missing in {audit}");
        }
        // What the component stored reaches the terminal inert.
        assert!(text.lines().all(|l| !l.chars().any(onepassword_collector::text::is_unsafe)), "{text:?}");
        assert!(audit.contains(r"HTTP 900\u{1b}]0;pwned\u{7}\u{202e}"), "{audit}");
        assert!(text.lines().any(|l| l.contains("sign_in_attempts") && l.contains("never collected")));
        assert!(!text.contains("item_usage"));
        let json = to_json(&read(&[tenant_of(&dir)], &Stores::default()).await, now);
        assert_eq!(json.len(), 1, "one object per tenant");
        assert_eq!(json[0]["services"]["audit"]["total_sent"], 42);
        assert_eq!(json[0]["services"]["audit"]["lag_seconds"], 3600);
        assert_eq!(json[0]["services"]["audit"]["last_error"]["id"], 602);
        assert_eq!(json[0]["services"]["audit"]["last_error"]["http_status"], 900);
        let message = json[0]["services"]["audit"]["last_error"]["message"].as_str().unwrap();
        assert!(!message.chars().any(onepassword_collector::text::is_unsafe), "{message:?}");
        assert_eq!(json[0]["services"]["sign_in_attempts"]["collected"], false);
    }

    #[test]
    fn next_firings_show_the_offset_or_the_exact_second() {
        let dir = tempfile::tempdir().unwrap();
        let now = DateTime::parse_from_rfc3339("2026-05-01T12:00:40Z").unwrap().with_timezone(&Utc);
        let spread = tenant_of(&dir);
        let exact = Tenant { name: "beta".into(), spread_firings: false, ..tenant_of(&dir) };
        let tenants = [spread, exact];
        let text = firings_table(&tenants, now);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(
            lines[1].starts_with("acme")
                && lines[1].contains("2026-05-01T12:01:19.872Z  19.872 s into each 1 min period"),
            "{text}"
        );
        assert!(
            lines[2].contains("2026-05-01T12:01:00Z")
                && lines[2].ends_with("on the exact second (spread_firings = false)"),
            "{text}"
        );
        let mut json = vec![serde_json::json!({ "tenant": "acme" }), serde_json::json!({ "tenant": "beta" })];
        add_firings(&mut json, &tenants, now);
        assert_eq!(json[0]["next_firing"], "2026-05-01T12:01:19.872Z");
        assert_eq!(json[0]["firing_offset_ms"], 19_872);
        assert_eq!(json[1]["next_firing"], "2026-05-01T12:01:00Z");
        assert_eq!(json[1]["firing_offset_ms"], serde_json::Value::Null);
    }

    #[tokio::test]
    async fn a_failing_service_shows_its_401_when_and_its_back_off() {
        let dir = tempfile::tempdir().unwrap();
        let now = DateTime::parse_from_rfc3339("2026-05-01T12:00:00Z").unwrap().with_timezone(&Utc);
        let tenant = tenant_of(&dir);
        // Never collected: the token was refused from the first tick on.
        let mut state = ServiceState::new(now);
        state.stats.last_error = Some(StoredError {
            id: 401,
            message: "1Password refused the token for audit (HTTP 401)".into(),
            at: now - chrono::TimeDelta::minutes(2),
            http_status: Some(401),
        });
        state.backoff =
            Some(onepassword_collector::backoff::Backoff { until: now + chrono::TimeDelta::minutes(4), attempts: 3 });
        SqliteStore::open(tenant.kv.sqlite_path().unwrap())
            .unwrap()
            .set(BUCKET, &ServiceState::key(Service::Audit), &state.encode())
            .unwrap();
        let rows = read(&[tenant], &Stores::default()).await;
        let text = table(&rows, now);
        let audit = text.lines().find(|l| l.contains("audit")).unwrap();
        for part in [
            "FAILING: error 401 (HTTP 401) at 2026-05-01T11:58:00Z: 1Password refused the token for audit (HTTP 401)",
            "backing off until 2026-05-01T12:04:00Z after 3 failure(s)",
        ] {
            assert!(audit.contains(part), "{part} missing in {audit}");
        }
        let json = &to_json(&rows, now)[0]["services"]["audit"];
        assert_eq!(json["failing"], true, "{json}");
        assert_eq!(json["last_error"]["id"], 401, "{json}");
        assert_eq!(json["last_error"]["at"], "2026-05-01T11:58:00Z", "{json}");
        assert!(json["last_error"]["remedy"].as_str().unwrap().contains("token"), "{json}");
        assert_eq!(json["backoff_until"], "2026-05-01T12:04:00Z", "{json}");
        assert_eq!(json["backoff_failures"], 3, "{json}");
    }

    /// Every string in `value`, however deep.
    fn strings(value: &serde_json::Value) -> Vec<&str> {
        match value {
            serde_json::Value::String(s) => vec![s],
            serde_json::Value::Array(a) => a.iter().flat_map(strings).collect(),
            serde_json::Value::Object(o) => o.values().flat_map(strings).collect(),
            _ => vec![],
        }
    }

    #[tokio::test]
    async fn no_stored_string_reaches_the_table_or_json_raw() {
        // A screen clear and a line that forges a whole row of the table, and
        // a bidi override, in every string of the record the component wrote.
        const FORGED: &str = "\x1b[2J\nacme             item_usage        2026-05-01T11:59:00Z \u{202e}ok\r";
        let dir = tempfile::tempdir().unwrap();
        let now = DateTime::parse_from_rfc3339("2026-05-01T12:00:00Z").unwrap().with_timezone(&Utc);
        let tenant = tenant_of(&dir);
        let mut state = ServiceState::new(now);
        state.checkpoint = Some(Checkpoint {
            cursor: Some(FORGED.into()),
            start_time_value: Some(FORGED.into()),
            newest_event: Some(FORGED.into()),
            total_sent: 1,
            recent_uuids: vec![FORGED.into()],
        });
        state.partial =
            Some(onepassword_collector::state::Partial { page: FORGED.into(), delivered: vec![FORGED.into()] });
        state.lease = Some(onepassword_collector::state::Lease {
            holder: FORGED.into(),
            expires: now + chrono::TimeDelta::minutes(1),
        });
        state.stats.last_error = Some(StoredError { id: 602, message: FORGED.into(), at: now, http_status: Some(500) });
        let store = SqliteStore::open(tenant.kv.sqlite_path().unwrap()).unwrap();
        store.set(BUCKET, &ServiceState::key(Service::Audit), &state.encode()).unwrap();
        // A record that does not decode: serde's complaint quotes it.
        let unreadable = format!(r#"{{"version":"{FORGED}"}}"#);
        store.set(BUCKET, &ServiceState::key(Service::SignInAttempts), unreadable.as_bytes()).unwrap();

        let rows = read(&[tenant], &Stores::default()).await;
        let Ok(Some(read)) = &rows[0].state else { panic!("audit's record reads") };
        for text in [
            read.checkpoint.as_ref().unwrap().cursor.as_deref().unwrap(),
            read.checkpoint.as_ref().unwrap().start_time_value.as_deref().unwrap(),
            read.checkpoint.as_ref().unwrap().newest_event.as_deref().unwrap(),
            &read.checkpoint.as_ref().unwrap().recent_uuids[0],
            &read.partial.as_ref().unwrap().page,
            &read.partial.as_ref().unwrap().delivered[0],
            &read.lease.as_ref().unwrap().holder,
            &read.stats.last_error.as_ref().unwrap().message,
        ] {
            assert!(!text.chars().any(onepassword_collector::text::is_unsafe), "{text:?}");
        }

        let text = table(&rows, now);
        assert!(!text.chars().any(|c| c != '\n' && onepassword_collector::text::is_unsafe(c)), "{text:?}");
        assert_eq!(text.lines().count(), 3, "a header and one line per service, none forged: {text}");
        assert!(text.lines().nth(1).unwrap().contains(r"\u{1b}[2J acme"), "{text}");
        assert!(text.lines().nth(2).unwrap().contains("cannot read state"), "{text}");
        for line in to_json(&rows, now) {
            let raw = line.to_string();
            assert!(!raw.chars().any(onepassword_collector::text::is_unsafe), "{raw}");
            for s in strings(&line) {
                assert!(!s.chars().any(onepassword_collector::text::is_unsafe), "{s:?}");
            }
            assert!(line["services"]["audit"]["newest_event"].as_str().unwrap().contains(r"\u{202e}ok"), "{line}");
        }
    }

    #[tokio::test]
    async fn event_times_with_offsets_are_shown_in_utc() {
        let dir = tempfile::tempdir().unwrap();
        let tenant = tenant_of(&dir);
        let now = DateTime::parse_from_rfc3339("2026-05-01T12:00:00Z").unwrap().with_timezone(&Utc);
        let mut state = ServiceState::new(now);
        let newest = "2026-05-01T04:00:00-07:00";
        state.checkpoint = Some(Checkpoint { newest_event: Some(newest.into()), ..Default::default() });
        let key = ServiceState::key(Service::Audit);
        SqliteStore::open(tenant.kv.sqlite_path().unwrap()).unwrap().set(BUCKET, &key, &state.encode()).unwrap();
        let rows = read(&[tenant], &Stores::default()).await;
        let text = table(&rows, now);
        assert!(text.contains("2026-05-01T11:00:00Z") && !text.contains("-07:00"), "{text}");
        assert_eq!(to_json(&rows, now)[0]["services"]["audit"]["newest_event"], "2026-05-01T11:00:00Z");
    }
}
