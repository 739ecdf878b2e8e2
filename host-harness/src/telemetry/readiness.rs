//! Readiness: what `/readyz` answers. Readiness means the process can do
//! its work: the component is loaded and no key-value store is known to be
//! unreachable; when it is not, the reasons say what is missing and name the
//! tenant whose store it is.
//!
//! A tenant's own failures (a revoked token, Devo refusing its events, a
//! 1Password outage) never make the process unready: they are the tenant's,
//! not the process's, and a restart or a rollout cannot fix them. They show
//! in the metrics (`consecutive_failed_ticks`, `failures_total`), in
//! `host-harness status` and in the alerts.

use onepassword_collector::error::PERSISTENCE;
use std::collections::BTreeMap;

/// What `/readyz` reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Readiness {
    /// True when `/readyz` answers 200; false, 503.
    pub ready: bool,
    /// Why not, one line each (empty when ready), e.g.
    /// `tenant acme: key-value store unreachable (error 200)`.
    pub reasons: Vec<String>,
}

/// One tenant's health, as its ticks left it.
#[derive(Clone, Debug, Default)]
pub(super) struct Health {
    /// Failed ticks in a row (0 after a tick without error).
    pub consecutive_failures: u32,
    /// The store answered with error 200 on the last tick (or a check said
    /// it is unreachable), and nothing has reached it since.
    pub store_unreachable: bool,
}

impl Health {
    /// Updates from a tick: `error_ids` are every error id of the tick (of
    /// the tick itself or its services), in report order; `store_used` says
    /// whether the tick got as far as the store (a report came back);
    /// `attempted` whether any service was tried at all. A tick that only
    /// deferred (a service backing off after failures, a spent budget)
    /// proves nothing either way and leaves the count as it was.
    pub fn record_tick(&mut self, error_ids: &[u32], store_used: bool, attempted: bool) {
        if error_ids.is_empty() && !attempted {
            // neither a failure nor a success
        } else if error_ids.is_empty() {
            self.consecutive_failures = 0;
        } else {
            self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        }
        if error_ids.contains(&PERSISTENCE) {
            self.store_unreachable = true;
        } else if store_used {
            self.store_unreachable = false;
        }
    }
}

/// Readiness of the whole process: its component and its stores. How many
/// ticks a tenant failed plays no part.
pub(super) fn evaluate<'a>(
    component_loaded: bool,
    tenants: impl IntoIterator<Item = (&'a String, &'a Health)>,
) -> Readiness {
    let mut reasons = Vec::new();
    if !component_loaded {
        reasons.push("component not loaded".to_string());
    }
    let sorted: BTreeMap<&String, &Health> = tenants.into_iter().collect();
    for (tenant, health) in sorted {
        if health.store_unreachable {
            reasons.push(format!("tenant {tenant}: key-value store unreachable (error {PERSISTENCE})"));
        }
    }
    Readiness { ready: reasons.is_empty(), reasons }
}
