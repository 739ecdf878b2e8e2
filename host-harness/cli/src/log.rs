//! The `run` log on stderr: one line per tick per tenant, plus lifecycle
//! lines (start, reload, skipped firing, stop), each with a time (UTC) and a
//! level, as logfmt (`key=value`, for people and for Loki/grep) or JSON (for
//! log pipelines). An error names its id and what to do about it.

use chrono::{SecondsFormat, Utc};
use host_harness::runtime::TenantTick;
use onepassword_collector::error::CollectorError;
use onepassword_collector::report::Outcome;
use serde_json::Value;

/// A line's fields, in the order they are written.
pub type Fields = Vec<(String, Value)>;
use std::io::Write;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Logfmt,
    Json,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Info,
    Warn,
    Error,
}

impl Level {
    fn name(self) -> &'static str {
        match self {
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
        }
    }
}

#[derive(Clone)]
pub struct Logger {
    format: LogFormat,
}

impl Logger {
    pub fn new(format: LogFormat) -> Logger {
        Logger { format }
    }

    /// A lifecycle line.
    pub fn log(&self, level: Level, tenant: Option<&str>, msg: &str, fields: &[(&str, String)]) {
        let mut record = Fields::new();
        if let Some(tenant) = tenant {
            record.push(("tenant".into(), tenant.into()));
        }
        record.push(("msg".into(), msg.into()));
        for (k, v) in fields {
            record.push(((*k).into(), v.clone().into()));
        }
        self.emit(level, record);
    }

    /// The line of one tenant's tick.
    pub fn tick(&self, tick: &TenantTick) {
        let (level, record) = tick_record(tick);
        self.emit(level, record);
    }

    fn emit(&self, level: Level, fields: Fields) {
        let line = render(self.format, Utc::now(), level, fields);
        // One write per line: lines of concurrent ticks never interleave.
        let _ = std::io::stderr().lock().write_all(format!("{line}\n").as_bytes());
    }
}

/// The fields of a tick's line and its level: error when the tick or a
/// service failed; warn, and `ok=false`, when a service only backed off
/// after earlier failures (it is still failing); info otherwise (a spent
/// budget or another instance's lease is not a problem).
pub fn tick_record(tick: &TenantTick) -> (Level, Fields) {
    let mut r = Fields::new();
    let backing_off = tick.backs_off_after_failures();
    r.push(("tenant".into(), tick.tenant.clone().into()));
    r.push(("msg".into(), "tick".into()));
    r.push(("ok".into(), (tick.ok() && !backing_off).into()));
    let failure = match &tick.result {
        Err(e) => Some((None, e)),
        Ok(report) => {
            r.push(("fetched".into(), total(report.services.iter().map(|s| s.fetched)).into()));
            r.push(("sent".into(), total(report.services.iter().map(|s| s.sent)).into()));
            for s in &report.services {
                let mut summary = s.outcome.name().to_string();
                if s.outcome == Outcome::Delivered {
                    summary.push_str(&format!(" sent={} total={}", s.sent, s.total_sent));
                }
                if let Some(lag) = s.lag_seconds {
                    summary.push_str(&format!(" lag={lag}s"));
                }
                if let Some(reason) = &s.deferred_reason {
                    summary.push_str(&format!(" ({})", first_line(reason)));
                }
                r.push((s.service.clone(), summary.into()));
            }
            report.services.iter().find_map(|s| s.error.as_ref().map(|e| (Some(s.service.as_str()), e)))
        }
    };
    r.push(("elapsed_ms".into(), tick.host_elapsed_ms.into()));
    r.push(("guest_cpu_ms".into(), tick.guest_cpu_ms.into()));
    let level = match failure {
        None if backing_off => Level::Warn,
        None => Level::Info,
        Some((service, e)) => {
            if let Some(service) = service {
                r.push(("service".into(), service.into()));
            }
            insert_error(&mut r, e);
            Level::Error
        }
    };
    (level, r)
}

/// The sum of the services' counts. The component reports them, and a
/// hostile one can report `u32::MAX` for each: summed as `u32`, that panics
/// a debug build and wraps a release one. As `u64` (saturating, though no
/// report holds enough services to need it) the total is exact.
fn total(counts: impl Iterator<Item = u32>) -> u64 {
    counts.fold(0u64, |sum, n| sum.saturating_add(u64::from(n)))
}

fn insert_error(r: &mut Fields, e: &CollectorError) {
    r.push(("error_id".into(), e.id.into()));
    if let Some(status) = e.http_status {
        r.push(("http_status".into(), status.into()));
    }
    r.push(("error".into(), first_line(&e.message).into()));
    r.push(("fix".into(), remedy(e.id).into()));
}

/// What to do about an error id (the README's error table, in short).
pub fn remedy(id: u32) -> &'static str {
    onepassword_collector::error::remedy(id)
}

/// The first line of a message, without control characters.
fn first_line(text: &str) -> String {
    crate::output::first_line(text, usize::MAX)
}

/// One line: `time`, `level`, then the fields in order. Every text value is
/// shown as [`host_harness::guest_text`] makes it, one bounded inert line:
/// a tick's values were cleaned as they entered the host, but a lifecycle
/// line may quote the tenants file (why a reload failed), which holds the
/// tenants' variables. A bidi override would pass both formats' own
/// escaping (logfmt drops control characters only, JSON escapes them only).
pub fn render(format: LogFormat, now: chrono::DateTime<Utc>, level: Level, fields: Fields) -> String {
    let time = now.to_rfc3339_opts(SecondsFormat::Millis, true);
    let fields = fields.into_iter().map(|(key, value)| match value {
        Value::String(text) => (key, Value::String(host_harness::guest_text::message(&text))),
        other => (key, other),
    });
    match format {
        LogFormat::Json => {
            // Written by hand to keep the order: time, level, then the fields.
            let mut line = format!("{{\"time\":{},\"level\":{}", Value::from(time), Value::from(level.name()));
            for (key, value) in fields {
                line.push_str(&format!(",{}:{value}", Value::from(key)));
            }
            line.push('}');
            line
        }
        LogFormat::Logfmt => {
            let mut line = format!("time={time} level={}", level.name());
            for (key, value) in fields {
                let text = match value {
                    Value::String(s) => s,
                    other => other.to_string(),
                };
                line.push(' ');
                line.push_str(&key);
                line.push('=');
                line.push_str(&logfmt_value(&text));
            }
            line
        }
    }
}

/// A logfmt value: bare when it can be, else quoted with `"` and `\` escaped.
fn logfmt_value(text: &str) -> String {
    let bare = !text.is_empty() && text.chars().all(|c| c.is_ascii_graphic() && c != '"' && c != '=' && c != '\\');
    if bare {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars().filter(|c| !c.is_control()) {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use onepassword_collector::error::{CollectorError, ErrorKind};
    use onepassword_collector::report::{ServiceReport, TickReport};

    fn tick(error: Option<CollectorError>) -> TenantTick {
        let service = ServiceReport {
            service: "audit".into(),
            outcome: if error.is_some() { Outcome::Failed } else { Outcome::Delivered },
            fetched: 20,
            sent: 20,
            unconfirmed: 0,
            pages: 1,
            bytes_sent: 100,
            has_more: false,
            checkpoint: Some("2026-11-27T10:00:00Z".into()),
            total_sent: 40,
            lag_seconds: Some(12),
            elapsed_ms: 5,
            deferred_until: None,
            deferred_reason: None,
            error,
        };
        TenantTick {
            tenant: "acme".into(),
            result: Ok(TickReport { started_at: "x".into(), elapsed_ms: 1, services: vec![service], warnings: vec![] }),
            peak_memory_bytes: 0,
            guest_cpu_ms: 3,
            host_elapsed_ms: 9,
        }
    }

    fn at() -> chrono::DateTime<Utc> {
        chrono::DateTime::parse_from_rfc3339("2026-11-27T05:59:42+05:30").unwrap().with_timezone(&Utc)
    }

    #[test]
    fn a_good_tick_is_one_info_line_in_utc() {
        let (level, fields) = tick_record(&tick(None));
        assert_eq!(level, Level::Info);
        let line = render(LogFormat::Logfmt, at(), level, fields);
        assert_eq!(
            line,
            "time=2026-11-27T00:29:42.000Z level=info tenant=acme msg=tick ok=true fetched=20 sent=20 \
             audit=\"delivered sent=20 total=40 lag=12s\" elapsed_ms=9 guest_cpu_ms=3"
        );
    }

    #[test]
    fn a_tick_that_only_backs_off_after_failures_is_a_warning_not_ok() {
        let mut t = tick(None);
        let Ok(report) = &mut t.result else { unreachable!() };
        let s = &mut report.services[0];
        (s.outcome, s.fetched, s.sent) = (Outcome::Deferred, 0, 0);
        s.deferred_reason = Some("backing off after 3 consecutive failure(s)".into());
        let (level, fields) = tick_record(&t);
        assert_eq!(level, Level::Warn);
        let line = render(LogFormat::Logfmt, at(), level, fields);
        assert!(line.contains("level=warn") && line.contains("ok=false"), "{line}");
        // a spent budget is no failure
        let Ok(report) = &mut t.result else { unreachable!() };
        report.services[0].deferred_reason = Some("the request budget is spent until 12:01".into());
        let (level, fields) = tick_record(&t);
        assert_eq!(level, Level::Info);
        assert!(render(LogFormat::Logfmt, at(), level, fields).contains("ok=true"));
    }

    #[test]
    fn a_lifecycle_line_quoting_the_tenants_file_stays_one_inert_line() {
        // What a failed reload's error may quote from a tenant's variables.
        let quoted = "bad value \"\u{202e}gnp.exe\x1b[2J\nlevel=info msg=reloaded\"";
        let fields: Fields = vec![("msg".into(), format!("reload failed, nothing changed: {quoted}").into())];
        for format in [LogFormat::Logfmt, LogFormat::Json] {
            let line = render(format, at(), Level::Error, fields.clone());
            assert!(!line.chars().any(onepassword_collector::text::is_unsafe), "{format:?}: {line:?}");
            // Escaped (the format then escapes the backslash), not dropped.
            assert!(line.contains(r"u{202e}gnp.exe") && line.contains("[2J level=info"), "{format:?}: {line}");
        }
    }

    #[test]
    fn counts_a_hostile_component_maxes_out_are_summed_without_overflow() {
        let mut t = tick(None);
        let Ok(report) = &mut t.result else { unreachable!() };
        let mut most = report.services[0].clone();
        most.fetched = u32::MAX;
        most.sent = u32::MAX;
        report.services = vec![most.clone(), ServiceReport { service: "item_usage".into(), ..most }];
        let (level, fields) = tick_record(&t);
        let twice = 2 * u64::from(u32::MAX);
        let json: Value = serde_json::from_str(&render(LogFormat::Json, at(), level, fields)).unwrap();
        assert_eq!((json["fetched"].as_u64(), json["sent"].as_u64()), (Some(twice), Some(twice)), "{json}");
    }

    #[test]
    fn an_error_names_its_id_and_the_fix_and_cannot_break_the_line() {
        // Built field by field: `new` would have cleaned it already.
        let e = CollectorError {
            id: 700,
            kind: ErrorKind::DeliveryError,
            message: "Devo said \"no\"\n\x1b[31mdetails".into(),
            http_status: Some(401),
        };
        let (level, fields) = tick_record(&tick(Some(e)));
        assert_eq!(level, Level::Error);
        let logfmt = render(LogFormat::Logfmt, at(), level, fields.clone());
        assert!(logfmt.contains(" level=error "), "{logfmt}");
        assert!(
            logfmt.contains(
                r#"error_id=700 http_status=401 error="Devo said \"no\"" fix="check devo_domain and devo_token"#
            ),
            "{logfmt}"
        );
        assert!(!logfmt.contains('\n') && !logfmt.contains('\x1b'));
        let json: Value = serde_json::from_str(&render(LogFormat::Json, at(), level, fields)).unwrap();
        assert_eq!(json["level"], "error");
        assert_eq!((json["error_id"].as_u64(), json["http_status"].as_u64()), (Some(700), Some(401)));
        assert_eq!(json["time"], "2026-11-27T00:29:42.000Z");
    }
}
