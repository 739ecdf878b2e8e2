//! How a tenant's tick ended, as the host reports it: the component's own
//! report (converted from its WIT types to the core's), or a host failure
//! (id [`HOST_FAILURE`]), plus what the host measured; and the one JSON
//! line the CLI prints for it.

use crate::bindings::exports::onepassword::collector::runner as wit;
use crate::guest_text;
use onepassword_collector::error::{CollectorError, ErrorKind};
use onepassword_collector::report::{Outcome, ServiceReport, TickReport, FAILURE_BACKOFF_REASON};
use onepassword_collector::validate::{Check, Status};

pub use onepassword_collector::error::HOST_FAILURE;

/// How one tenant's tick ended.
#[derive(Clone, Debug)]
pub struct TenantTick {
    /// The tenant's name.
    pub tenant: String,
    /// The component's report, or the error that ended the tick (the
    /// component's, or a [`HOST_FAILURE`]).
    pub result: Result<TickReport, CollectorError>,
    /// The most linear memory the instance held (all its memories), bytes.
    pub peak_memory_bytes: u64,
    /// Time the guest spent running WebAssembly (see
    /// [`Limits::cpu_time`](super::Limits::cpu_time)).
    pub guest_cpu_ms: u64,
    /// Wall time of the tick on the host, instantiation to result (not
    /// counting a wait for a free instance slot).
    pub host_elapsed_ms: u64,
}

impl TenantTick {
    /// True when the tick ran and every service finished without error.
    pub fn ok(&self) -> bool {
        self.result.as_ref().is_ok_and(TickReport::ok)
    }

    /// True when a service of the tick was held back by its own earlier
    /// failures ([`FAILURE_BACKOFF_REASON`]): the tick raised no new error
    /// but the service is still failing.
    pub fn backs_off_after_failures(&self) -> bool {
        self.result.as_ref().is_ok_and(|r| {
            r.services.iter().any(|s| {
                s.outcome == Outcome::Deferred
                    && s.deferred_reason.as_deref().is_some_and(|w| w.starts_with(FAILURE_BACKOFF_REASON))
            })
        })
    }

    /// The one-line JSON the `tick` command prints.
    pub fn to_json(&self) -> serde_json::Value {
        let mut line = match &self.result {
            Ok(report) => {
                let services: serde_json::Map<String, serde_json::Value> = report
                    .services
                    .iter()
                    .map(|s| (s.service.clone(), serde_json::to_value(s).expect("report serialises")))
                    .collect();
                let first_error = report.services.iter().find_map(|s| s.error.as_ref());
                serde_json::json!({
                    "tenant": self.tenant,
                    "ok": self.ok(),
                    "started_at": report.started_at,
                    "elapsed_ms": report.elapsed_ms,
                    "services": services,
                    "error": first_error,
                })
            }
            Err(e) => {
                serde_json::json!({ "tenant": self.tenant, "ok": false, "services": {}, "error": e })
            }
        };
        // Only when there are any, so a clean tick's line stays as short.
        if let Ok(report) = &self.result {
            if !report.warnings.is_empty() {
                line["warnings"] = serde_json::json!(report.warnings);
            }
        }
        line["peak_memory_bytes"] = self.peak_memory_bytes.into();
        line["guest_cpu_ms"] = self.guest_cpu_ms.into();
        line["host_elapsed_ms"] = self.host_elapsed_ms.into();
        line
    }
}

/// `report` with the host's own `warnings` (why it refused requests, or why
/// their TLS handshake failed) after the component's.
pub(crate) fn with_warnings(mut report: TickReport, warnings: Vec<String>) -> TickReport {
    // The text names a host the tenant chose: made inert like the guest's text.
    report
        .warnings
        .extend(warnings.into_iter().map(|w| guest_text::message(&format!("the host stopped a request: {w}"))));
    report
}

/// `result` with what the guest wrote to its stderr (`stderr`, cleaned
/// already), if anything: a warning of a report, or the end of an error's
/// message (a panicking component's message says why its tick failed).
pub(crate) fn with_stderr(
    result: Result<TickReport, CollectorError>,
    stderr: Option<String>,
) -> Result<TickReport, CollectorError> {
    let Some(text) = stderr else { return result };
    match result {
        Ok(mut report) => {
            report.warnings.push(guest_text::message(&format!("the component wrote to stderr: {text}")));
            Ok(report)
        }
        Err(e) => {
            let message = guest_text::message(&format!("{}; the component wrote to stderr: {text}", e.message));
            Err(CollectorError { message, ..e })
        }
    }
}

/// The error of a tick the host ended.
pub(crate) fn host_failure(message: String) -> CollectorError {
    CollectorError::new(ErrorKind::PrePullError, HOST_FAILURE, format!("the host stopped the tick: {message}"))
}

// The guest is untrusted: everything it says is bounded and made inert as
// it enters the host (guest_text.rs), for every consumer at once.

pub(crate) fn from_wit_error(e: wit::CollectorError) -> CollectorError {
    let kind = CollectorError::kind_from_str(&e.kind).unwrap_or(ErrorKind::DeliveryError);
    guest_text::error(CollectorError { id: e.id, kind, message: e.message, http_status: e.http_status })
}

pub(crate) fn from_wit_report(r: wit::TickReport) -> TickReport {
    guest_text::report(TickReport {
        started_at: r.started_at,
        elapsed_ms: r.elapsed_ms,
        services: r
            .services
            .into_iter()
            .map(|s| ServiceReport {
                service: s.service,
                outcome: match s.outcome {
                    wit::Outcome::Delivered => Outcome::Delivered,
                    wit::Outcome::Idle => Outcome::Idle,
                    wit::Outcome::Failed => Outcome::Failed,
                    wit::Outcome::Deferred => Outcome::Deferred,
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
                error: s.error.map(from_wit_error),
            })
            .collect(),
        warnings: r.warnings,
    })
}

pub(crate) fn from_wit_check(c: wit::Check) -> Check {
    guest_text::check(Check {
        name: c.name,
        status: match c.status {
            wit::CheckStatus::Pass => Status::Pass,
            wit::CheckStatus::Warn => Status::Warn,
            wit::CheckStatus::Fail => Status::Fail,
        },
        detail: c.detail,
    })
}
