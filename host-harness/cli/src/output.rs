//! What `tick`, `validate` and `status` print: a compact table for a person
//! at a terminal, or one JSON line per tenant for scripts (`--output json`,
//! and whenever stdout is not a terminal). Times are UTC.

use host_harness::runtime::TenantTick;
use host_harness::schedule::Firing;
use host_harness::status::human_duration;
use onepassword_collector::error::CollectorError;
use onepassword_collector::report::Outcome;
use onepassword_collector::text;
use onepassword_collector::validate::{Check, Status};
use std::io::IsTerminal;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    /// A table on a terminal, JSON otherwise.
    Auto,
    Table,
    Json,
}

impl OutputFormat {
    /// `Auto` decided by whether stdout is a terminal.
    pub fn resolve(self) -> OutputFormat {
        match self {
            OutputFormat::Auto if std::io::stdout().is_terminal() => OutputFormat::Table,
            OutputFormat::Auto => OutputFormat::Json,
            other => other,
        }
    }
}

/// One row per tenant and service: outcome, fetched/sent, lag, checkpoint,
/// whether more is waiting, and the error (its id, first line and fix) or
/// why the service was deferred.
pub fn tick_table(ticks: &[TenantTick]) -> String {
    let mut rows =
        vec![["tenant", "service", "outcome", "fetched", "sent", "lag", "checkpoint", "more", "error / why"]
            .map(String::from)];
    for tick in ticks {
        match &tick.result {
            Err(e) => rows.push([
                tick.tenant.clone(),
                "-".into(),
                "failed".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                error_note(e),
            ]),
            Ok(report) => {
                for s in &report.services {
                    let note = match (&s.error, &s.deferred_reason) {
                        (Some(e), _) => error_note(e),
                        (None, Some(reason)) => first_line(reason, NOTE_CHARS),
                        (None, None) => String::new(),
                    };
                    rows.push([
                        tick.tenant.clone(),
                        s.service.clone(),
                        outcome(s.outcome).into(),
                        s.fetched.to_string(),
                        s.sent.to_string(),
                        s.lag_seconds.map_or("-".into(), |l| human_duration(i64::try_from(l).unwrap_or(i64::MAX))),
                        s.checkpoint.clone().unwrap_or_else(|| "-".into()),
                        if s.has_more { "yes" } else { "no" }.into(),
                        note,
                    ]);
                }
            }
        }
    }
    columns(&rows)
}

/// The checklist of one tenant, as a person reads it, headed by its store
/// and its next firing (`next`, `None`: its schedule fires no more).
pub fn validate_table(tenant: &str, store: &str, next: Option<&Firing>, checks: &[Check]) -> String {
    let next = next.map_or_else(|| "never: the schedule fires no more".to_string(), Firing::describe);
    let mut out = format!("tenant {tenant}\n  store   {store}\n  next    {next}\n");
    for check in checks {
        let mark = match check.status {
            Status::Pass => "  ok  ",
            Status::Warn => "  warn",
            Status::Fail => "  FAIL",
        };
        out.push_str(&format!("{mark}  {:<24} {}\n", check.name, check.detail));
    }
    out
}

/// The checklist of one tenant as one JSON line, with its next firing
/// (`next_firing`, `firing_offset_ms`, `firing`).
pub fn validate_json(tenant: &str, store: &str, next: Option<&Firing>, checks: &[Check]) -> serde_json::Value {
    let checks: Vec<serde_json::Value> = checks
        .iter()
        .map(|c| {
            let status = match c.status {
                Status::Pass => "pass",
                Status::Warn => "warn",
                Status::Fail => "fail",
            };
            serde_json::json!({ "name": c.name, "status": status, "detail": c.detail })
        })
        .collect();
    let ok = checks.iter().all(|c| c["status"] != "fail");
    let mut line = serde_json::json!({ "tenant": tenant, "store": store, "ok": ok, "checks": checks });
    for (key, value) in Firing::json_fields(next) {
        line[key] = value;
    }
    line
}

/// The outcome as a table shows it: a failure stands out.
fn outcome(o: Outcome) -> &'static str {
    match o {
        Outcome::Failed => "FAILED",
        other => other.name(),
    }
}

/// The most characters of a message a table cell shows: the last column,
/// so a long one wraps rather than pushing others aside.
const NOTE_CHARS: usize = 400;

/// An error as a table cell: its id, the upstream status when it has one
/// and it differs from the id (a 1Password 503 is id 503 already), the
/// first line of its message, and what to do (the error table's fix).
fn error_note(e: &CollectorError) -> String {
    let message = first_line(&e.message, NOTE_CHARS);
    let fix = onepassword_collector::error::remedy(e.id);
    match e.http_status {
        Some(status) if u32::from(status) != e.id => format!("{} (HTTP {status}) {message} [fix: {fix}]", e.id),
        _ => format!("{} {message} [fix: {fix}]", e.id),
    }
}

/// The first line of `text`, at most `max` characters, without control
/// characters or bidi overrides (whatever built the report).
pub fn first_line(text: &str, max: usize) -> String {
    let line: String = text.lines().next().unwrap_or_default().chars().filter(|c| !text::is_unsafe(*c)).collect();
    if line.chars().count() > max {
        format!("{}…", line.chars().take(max - 1).collect::<String>())
    } else {
        line
    }
}

/// Rows as left-aligned columns, the last one unpadded.
fn columns<const N: usize>(rows: &[[String; N]]) -> String {
    let widths: Vec<usize> = (0..N).map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == N {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<width$}  ", width = widths[i]));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use onepassword_collector::error::ErrorKind;
    use onepassword_collector::report::{ServiceReport, TickReport};

    fn service(name: &str, outcome: Outcome) -> ServiceReport {
        ServiceReport {
            service: name.into(),
            outcome,
            fetched: 20,
            sent: 20,
            unconfirmed: 0,
            pages: 1,
            bytes_sent: 100,
            has_more: true,
            checkpoint: Some("2026-11-27T10:00:00Z".into()),
            total_sent: 40,
            lag_seconds: Some(3700),
            elapsed_ms: 5,
            deferred_until: None,
            deferred_reason: None,
            error: None,
        }
    }

    #[test]
    fn the_tick_table_has_a_row_per_tenant_and_service_with_the_first_line_of_errors() {
        let mut failed = service("item_usage", Outcome::Failed);
        // Built field by field: `new` would have cleaned it already.
        failed.error = Some(CollectorError {
            id: 700,
            kind: ErrorKind::DeliveryError,
            message: "Devo answered 401\nbody: \x1b[31mno".into(),
            http_status: Some(401),
        });
        let mut odd = service("sign_in_attempts", Outcome::Failed);
        odd.error = Some(
            CollectorError::new(ErrorKind::PullError, 602, "1Password answered \u{202e}HTTP 900").with_http_status(900),
        );
        let ok = TenantTick {
            tenant: "acme".into(),
            result: Ok(TickReport {
                started_at: "2026-11-27T11:00:00Z".into(),
                elapsed_ms: 9,
                services: vec![service("audit", Outcome::Delivered), failed, odd],
                warnings: vec![],
            }),
            peak_memory_bytes: 0,
            guest_cpu_ms: 0,
            host_elapsed_ms: 0,
        };
        let broken = TenantTick {
            tenant: "beta".into(),
            result: Err(CollectorError::new(ErrorKind::InitVariablesError, 1, "base_url is missing")),
            ..ok.clone()
        };
        let text = tick_table(&[ok, broken]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 5, "{text}");
        assert!(lines[0].starts_with("tenant") && lines[0].contains("checkpoint"));
        assert!(lines[1].contains("audit") && lines[1].contains("delivered") && lines[1].contains("61m"), "{text}");
        assert!(lines[2].contains("FAILED") && lines[2].contains("700 (HTTP 401) Devo answered 401 [fix: "), "{text}");
        assert!(lines[2].ends_with(&format!("[fix: {}]", onepassword_collector::error::remedy(700))), "{text}");
        // The status a server made up shows beside our id, never as it.
        assert!(lines[3].contains("602 (HTTP 900) 1Password answered \\u{202e}HTTP 900 [fix: "), "{text}");
        assert!(lines[4].contains("beta") && lines[4].contains("1 base_url is missing [fix: set the key"), "{text}");
        // "more" is a column of its own, not an error
        assert!(lines[0].contains(" more ") && lines[1].ends_with(" yes"), "{text}");
        assert!(!text.contains("more waiting"), "{text}");
        // A long message is shown whole, with its fix.
        let long = "x".repeat(150);
        let e = CollectorError::new(ErrorKind::PullError, 503, format!("{long} check base_url"));
        assert!(error_note(&e).contains(&format!("{long} check base_url [fix: ")), "{}", error_note(&e));
        assert!(text.lines().all(|l| !l.chars().any(text::is_unsafe)), "{text:?}");
        // columns line up
        let at = lines[0].find("outcome").unwrap();
        assert!(lines[1..].iter().all(|l| l[at..].starts_with(|c: char| c.is_alphabetic())), "{text}");
    }

    #[test]
    fn validate_prints_a_checklist_or_one_json_line() {
        let checks = vec![
            Check { name: "config".into(), status: Status::Pass, detail: "5 keys".into() },
            Check { name: "Devo".into(), status: Status::Fail, detail: "401: check devo_token".into() },
        ];
        let now = chrono::DateTime::parse_from_rfc3339("2026-05-01T12:00:40Z").unwrap().to_utc();
        let minute = host_harness::schedule::parse("0 * * * * *").unwrap();
        let next = host_harness::schedule::next_firing(&minute, "acme", true, now);
        let text = validate_table("acme", "sqlite state/acme.sqlite", next.as_ref(), &checks);
        assert!(text.contains("  FAIL  Devo"), "{text}");
        assert!(text.contains("\n  next    2026-05-01T12:01:19.872Z, 19.872 s into each 1 min period\n"), "{text}");
        let json = validate_json("acme", "sqlite state/acme.sqlite", next.as_ref(), &checks);
        assert_eq!(json["ok"], false);
        assert_eq!(json["checks"][1]["status"], "fail");
        assert_eq!(json["next_firing"], "2026-05-01T12:01:19.872Z");
        assert_eq!(json["firing_offset_ms"], 19_872);
        let exact = host_harness::schedule::next_firing(&minute, "acme", false, now);
        let json = validate_json("acme", "sqlite state/acme.sqlite", exact.as_ref(), &checks);
        assert_eq!(json["next_firing"], "2026-05-01T12:01:00Z");
        assert_eq!(json["firing_offset_ms"], serde_json::Value::Null);
        assert_eq!(json["firing"], "on the exact second (spread_firings = false)");
    }
}
