//! When `run` ticks a tenant again between firings to catch up on a
//! backlog: the one rule `host-harness run` and the bench's drain driver
//! both follow.

use crate::runtime::TenantTick;
use crate::telemetry::DeferralReason;
use chrono::{DateTime, Utc};
use onepassword_collector::report::{Outcome, ServiceReport};

/// When to tick again without waiting for the next firing: as soon as a
/// service that ended this tick with more waiting can page again. That is
/// at once when it stopped at its deadline or its page cap, and when its
/// spent budget frees up (`deferred_until`) when it stopped there. While
/// the tenant is catching up (`backlog`: an earlier tick said more is
/// waiting), a service the budget or a 429 deferred before its first page
/// still has that backlog: again when it may page. `None` when nothing is
/// waiting, or every service with more waiting failed (it backs off; the
/// schedule retries it) or the tick itself failed.
pub fn catch_up_at(tick: &TenantTick, now: DateTime<Utc>, backlog: bool) -> Option<DateTime<Utc>> {
    let report = tick.result.as_ref().ok()?;
    let waiting = |s: &&ServiceReport| match s.outcome {
        _ if s.error.is_some() => false,
        Outcome::Delivered | Outcome::Idle => s.has_more,
        Outcome::Deferred => {
            backlog
                && matches!(
                    DeferralReason::from_text(s.deferred_reason.as_deref()),
                    DeferralReason::Budget | DeferralReason::RateLimited
                )
        }
        Outcome::Failed => false,
    };
    report
        .services
        .iter()
        .filter(waiting)
        .map(|s| {
            let until = s.deferred_until.as_deref().and_then(|t| DateTime::parse_from_rfc3339(t).ok());
            until.map_or(now, |t| t.with_timezone(&Utc).max(now))
        })
        .min()
}
