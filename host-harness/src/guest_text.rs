//! What a component says, made safe before the host keeps or shows it.
//!
//! The guest is untrusted: a hostile or broken component can put anything in
//! its report (a terminal escape sequence, a bidi override, a megabyte line,
//! a million warnings) and in the state records it stores. Every string that
//! comes from it passes here where it enters the host — its tick report,
//! tick error and validate checks (`runtime/outcome.rs`), every string of a
//! stored state record (`status.rs`) — so that logs, tables, JSON lines and
//! metrics all get bounded, inert text, in which a Devo token (`token!…`, the
//! form of Devo's URL path) is redacted wherever a URL or a message quotes it.
//! The cleaning and the redaction are the core's
//! ([`onepassword_collector::text::clean`],
//! [`onepassword_collector::text::redact_tokens`]): one definition of
//! "clean".

use onepassword_collector::backoff::Backoff;
use onepassword_collector::checkpoint::Checkpoint;
use onepassword_collector::error::CollectorError;
use onepassword_collector::error::HOST_FAILURE;
use onepassword_collector::report::{ServiceReport, TickReport};
use onepassword_collector::state::{Lease, Partial, ServiceState, Stats, StoredError};
use onepassword_collector::text::{clean, redact_tokens};
use onepassword_collector::validate::Check;

/// The longest error message or check detail kept from a guest. The
/// collector's own stay under 800 characters; more room is left for what a
/// guest says about several attempts, never room for a flood.
pub const MAX_MESSAGE_CHARS: usize = 4096;
/// The longest short field kept (times, deferral reasons, check names).
pub const MAX_FIELD_CHARS: usize = 200;
/// The longest service name: the collector's are short words, and a name
/// becomes a log key and a metric label.
pub const MAX_NAME_CHARS: usize = 64;
/// The most warnings kept from one report; more are counted in one last.
pub const MAX_WARNINGS: usize = 32;
/// The most services kept from one report (the collector has three): each
/// becomes metric series, which a guest must not multiply at will.
pub const MAX_SERVICES: usize = 16;

/// A message or a detail: one bounded line of inert text, Devo tokens
/// redacted.
pub fn message(text: &str) -> String {
    inert(text, MAX_MESSAGE_CHARS)
}

/// A short field, bounded tighter.
pub fn field(text: &str) -> String {
    inert(text, MAX_FIELD_CHARS)
}

/// `text` redacted and cleaned, at most `max` characters and an ellipsis.
/// `clean` keeps at most `max` characters of its input (each becomes one or
/// more), so only that much is redacted, plus one character to tell that
/// more was cut: a megabyte is not walked. A token cut at that point is
/// redacted as far as it goes.
fn inert(text: &str, max: usize) -> String {
    let end = text.char_indices().nth(max + 1).map_or(text.len(), |(i, _)| i);
    let mut shown = clean(&redact_tokens(&text[..end]), max);
    if end < text.len() && !shown.ends_with('…') {
        shown.push('…');
    }
    shown
}

/// A host error as a guest or a report may show it: its message and its
/// causes (`{:#}`), never the backtrace that its `{:?}` ends with when
/// `RUST_BACKTRACE` or `RUST_LIB_BACKTRACE` is set (wasmtime's and anyhow's
/// errors capture one then): host frames, the host's file paths, are not a
/// tenant's to read. Bounded and inert like a guest's text, since what the
/// host says about a tenant's request may quote the tenant's input.
pub fn host_error(e: &(impl std::fmt::Display + ?Sized)) -> String {
    message(&format!("{e:#}"))
}

/// A service name as a log key and a metric label can hold it: letters,
/// digits, `_` and `-`, anything else replaced by `_`.
pub fn name(text: &str) -> String {
    let name: String = text
        .chars()
        .take(MAX_NAME_CHARS)
        .map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == '-' { c } else { '_' })
        .collect();
    if name.is_empty() {
        "_".into()
    } else {
        name
    }
}

/// The id of an error a component reported under one of the host's ids
/// (900 and up: [`HOST_FAILURE`] is the host stopping a tick). Passed on as
/// is, it would read as the host's in logs, `status` and the operator's
/// alerts on host failures; under this id its message says what was
/// claimed.
pub use onepassword_collector::error::CLAIMED_HOST_ID;

/// A guest's id and message, moved to [`CLAIMED_HOST_ID`] when the id is
/// the host's.
fn guest_id(id: u32, text: &str) -> (u32, String) {
    if id >= HOST_FAILURE {
        (CLAIMED_HOST_ID, message(&format!("the component reported error id {id}, which only the host uses: {text}")))
    } else {
        (id, message(text))
    }
}

/// A guest's error as the host keeps it: its message bounded and inert,
/// an id of the host's moved to [`CLAIMED_HOST_ID`].
pub fn error(e: CollectorError) -> CollectorError {
    let (id, message) = guest_id(e.id, &e.message);
    CollectorError { id, message, ..e }
}

/// A guest's tick report as the host keeps it: every string bounded and
/// inert, service names made [`name`]s, at most [`MAX_SERVICES`] services and
/// [`MAX_WARNINGS`] warnings (and one that counts the rest).
pub fn report(r: TickReport) -> TickReport {
    let mut warnings: Vec<String> = r.warnings.iter().take(MAX_WARNINGS).map(|w| message(w)).collect();
    if r.warnings.len() > MAX_WARNINGS {
        warnings.push(format!("{} more warnings not shown", r.warnings.len() - MAX_WARNINGS));
    }
    TickReport {
        started_at: field(&r.started_at),
        elapsed_ms: r.elapsed_ms,
        services: r.services.into_iter().take(MAX_SERVICES).map(service).collect(),
        warnings,
    }
}

fn service(s: ServiceReport) -> ServiceReport {
    ServiceReport {
        service: name(&s.service),
        checkpoint: s.checkpoint.as_deref().map(field),
        deferred_until: s.deferred_until.as_deref().map(field),
        deferred_reason: s.deferred_reason.as_deref().map(field),
        error: s.error.map(error),
        ..s
    }
}

/// A validate check as the host shows it: its name a short field, its
/// detail a message.
pub fn check(c: Check) -> Check {
    Check { name: field(&c.name), detail: message(&c.detail), ..c }
}

/// A stored error as `status` shows it: the record was written by the guest.
pub fn stored_error(e: StoredError) -> StoredError {
    let (id, message) = guest_id(e.id, &e.message);
    StoredError { id, message, ..e }
}

/// A stored state record as `status` may show it: the guest wrote it, and a
/// hostile one can put any text in any of its strings (the newest event's
/// time, the cursor, the lease holder, the last error). Every string is
/// cleaned; the record is taken apart field by field, so a string field
/// added to it later does not compile until it is cleaned here too.
pub fn stored_state(state: ServiceState) -> ServiceState {
    let ServiceState { version, checkpoint, partial, lease, backoff, initial_start, stats, writer } = state;
    let checkpoint = checkpoint.map(|c| {
        let Checkpoint { cursor, start_time_value, newest_event, total_sent, recent_uuids } = c;
        Checkpoint {
            cursor: cursor.as_deref().map(message),
            start_time_value: start_time_value.as_deref().map(field),
            newest_event: newest_event.as_deref().map(field),
            total_sent,
            recent_uuids: recent_uuids.iter().map(|u| field(u)).collect(),
        }
    });
    let partial = partial.map(|Partial { page, delivered }| Partial {
        page: message(&page),
        delivered: delivered.iter().map(|d| field(d)).collect(),
    });
    let lease = lease.map(|Lease { holder, expires }| Lease { holder: field(&holder), expires });
    // Times and counts only, nothing to clean: rebuilt field by field all
    // the same, so that a text field added to it has to be cleaned here.
    #[allow(clippy::map_identity)]
    let backoff = backoff.map(|Backoff { until, attempts }| Backoff { until, attempts });
    let Stats { created_at, last_success_at, last_error, bytes_sent, pages } = stats;
    ServiceState {
        version,
        checkpoint,
        partial,
        lease,
        backoff,
        initial_start,
        stats: Stats { created_at, last_success_at, last_error: last_error.map(stored_error), bytes_sent, pages },
        writer: writer.as_deref().map(field),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use onepassword_collector::error::ErrorKind;
    use onepassword_collector::report::Outcome;
    use onepassword_collector::text::is_unsafe;

    const HOSTILE: &str = "\x1b[2J\x1b]0;pwned\x07\u{202e}gnp.exe\n";

    fn hostile_service(name: &str) -> ServiceReport {
        ServiceReport {
            checkpoint: Some(HOSTILE.repeat(1000)),
            deferred_until: Some(HOSTILE.into()),
            deferred_reason: Some(HOSTILE.into()),
            // Built field by field, as a guest's report arrives: not cleaned by `new`.
            error: Some(CollectorError {
                id: 700,
                kind: ErrorKind::DeliveryError,
                message: format!("{HOSTILE}{}", "m".repeat(1 << 20)),
                http_status: Some(900),
            }),
            ..ServiceReport::new(name, Outcome::Failed)
        }
    }

    #[test]
    fn a_guest_cannot_report_the_hosts_ids() {
        let claimed = |id: u32| {
            let e = error(CollectorError {
                id,
                kind: ErrorKind::PrePullError,
                message: "stopped".into(),
                http_status: None,
            });
            (e.id, e.message)
        };
        for id in [900, 901, 999, u32::MAX] {
            let (got, text) = claimed(id);
            assert_eq!(got, CLAIMED_HOST_ID, "{id}");
            assert_eq!(text, format!("the component reported error id {id}, which only the host uses: stopped"));
        }
        assert_eq!(claimed(700), (700, "stopped".to_string()));
        assert_eq!(claimed(899).0, 899);
        let stored = StoredError { id: 900, message: "x".into(), at: chrono::Utc::now(), http_status: None };
        assert_eq!(stored_error(stored).id, CLAIMED_HOST_ID);
    }

    fn assert_inert(text: &str, max: usize) {
        assert!(!text.chars().any(is_unsafe), "{text:?}");
        assert!(text.chars().count() <= max + 1, "{} characters", text.chars().count());
    }

    #[test]
    fn a_hostile_report_is_bounded_and_inert() {
        let report = report(TickReport {
            started_at: HOSTILE.into(),
            elapsed_ms: 1,
            services: (0..1000).map(|i| hostile_service(&format!("audit{i} x=1\x1b"))).collect(),
            warnings: vec![HOSTILE.repeat(10_000); 1000],
        });
        assert_eq!(report.services.len(), MAX_SERVICES);
        assert_eq!(report.warnings.len(), MAX_WARNINGS + 1);
        assert_eq!(report.warnings[MAX_WARNINGS], "968 more warnings not shown");
        report.warnings.iter().for_each(|w| assert_inert(w, MAX_MESSAGE_CHARS));
        assert_inert(&report.started_at, MAX_FIELD_CHARS);
        for s in &report.services {
            assert!(s.service.starts_with("audit") && s.service.ends_with("_x_1_"), "{}", s.service);
            for text in [&s.checkpoint, &s.deferred_until, &s.deferred_reason] {
                assert_inert(text.as_ref().unwrap(), MAX_FIELD_CHARS);
            }
            let e = s.error.as_ref().unwrap();
            assert_inert(&e.message, MAX_MESSAGE_CHARS);
            assert!(e.message.starts_with("\\u{1b}[2J\\u{1b}]0;pwned\\u{7}\\u{202e}gnp.exe "), "{}", &e.message[..60]);
            assert_eq!((e.id, e.http_status), (700, Some(900)), "ids and statuses pass unchanged");
        }
        assert_eq!(name(""), "_");
        assert_eq!(name(&"s".repeat(1000)).len(), MAX_NAME_CHARS);
    }

    #[test]
    fn devo_tokens_are_redacted_in_whatever_a_guest_says() {
        let url = "https://http-us.devo.io/stream/acme/token!devoS3cret0123/host/tag";
        let c = check(Check {
            name: "Devo".into(),
            status: onepassword_collector::validate::Status::Pass,
            detail: format!("{url} accepted domain acme"),
        });
        assert_eq!(c.detail, "https://http-us.devo.io/stream/acme/token!<redacted>/host/tag accepted domain acme");
        let e = error(CollectorError {
            id: 701,
            kind: ErrorKind::DeliveryError,
            message: format!("Devo could not be reached at {url}\n\x1b[2J"),
            http_status: None,
        });
        assert_eq!(
            e.message,
            "Devo could not be reached at https://http-us.devo.io/stream/acme/token!<redacted>/host/tag \\u{1b}[2J"
        );
        let r = report(TickReport {
            started_at: "token!a".into(),
            elapsed_ms: 1,
            services: vec![ServiceReport {
                deferred_reason: Some(format!("waiting for {url}")),
                ..ServiceReport::new("audit", Outcome::Deferred)
            }],
            warnings: vec![format!("the host stopped a request to {url}")],
        });
        let text = format!("{r:?}");
        assert!(!text.contains("devoS3cret0123") && !text.contains("token!a\""), "{text}");
        // A token cut at the bound is redacted as far as it goes; what is cut
        // is marked.
        let long = format!("{}token!{}", "x".repeat(MAX_FIELD_CHARS - 30), "S".repeat(1000));
        let shown = field(&long);
        assert!(shown.ends_with("token!<redacted>…") && !shown.contains('S'), "{shown}");
        assert_inert(&shown, MAX_FIELD_CHARS);
        assert!(field(&"token!a/".repeat(1000)).chars().count() <= MAX_FIELD_CHARS + 1);
    }

    #[test]
    fn checks_and_stored_errors_are_cleaned_too() {
        let c = check(Check {
            name: HOSTILE.repeat(100),
            status: onepassword_collector::validate::Status::Fail,
            detail: HOSTILE.repeat(100_000),
        });
        assert_inert(&c.name, MAX_FIELD_CHARS);
        assert_inert(&c.detail, MAX_MESSAGE_CHARS);
        let e = stored_error(StoredError {
            id: 503,
            message: HOSTILE.repeat(100_000),
            at: chrono::DateTime::UNIX_EPOCH,
            http_status: Some(503),
        });
        assert_inert(&e.message, MAX_MESSAGE_CHARS);
        // A stored record's strings, its writer id among them.
        let mut state = ServiceState::new(chrono::DateTime::UNIX_EPOCH);
        state.writer = Some(HOSTILE.repeat(1000));
        state.lease = Some(Lease { holder: HOSTILE.repeat(1000), expires: chrono::DateTime::UNIX_EPOCH });
        let state = stored_state(state);
        assert_inert(state.writer.as_deref().unwrap(), MAX_FIELD_CHARS);
        assert_inert(&state.lease.unwrap().holder, MAX_FIELD_CHARS);
    }
}
