//! Telemetry for `host-harness run --listen ADDR`: Prometheus metrics per
//! tenant and service, and the health and readiness the HTTP endpoint
//! ([`serve`]) answers.
//!
//! The run loop owns one [`Telemetry`] (in an `Arc`, shared with [`serve`])
//! and tells it what happened: [`Telemetry::component_loaded`] and
//! [`Telemetry::config_loaded`] once, [`Telemetry::tenant_added`] for each
//! tenant it runs (every series of the tenant starts at zero, or NaN for a
//! value not known yet), [`Telemetry::tick_finished`] after every tick,
//! [`Telemetry::firing_skipped`] when a firing found the tenant's previous
//! tick still running, [`Telemetry::catching_up`] when a tick ends with a
//! backlog (or without one) and [`Telemetry::catch_up_tick`] for each tick
//! started before the tenant's next firing to catch up,
//! [`Telemetry::instances`] at start and as the pool
//! fills and empties, [`Telemetry::reload`] and [`Telemetry::tenant_removed`]
//! on config reloads.
//!
//! `/metrics` is the Prometheus text format 0.0.4 unless the scraper's
//! `Accept` asks for OpenMetrics ([`Format`]).
//!
//! Where to look: `metrics.rs` (every metric name, type and help text),
//! `labels.rs` (label values: bounded names, fixed sets, never free text),
//! `process.rs` (the standard `process_*` metrics), `readiness.rs` (what
//! makes `/readyz` fail), `server.rs` (the endpoint and its content
//! negotiation), `tests.rs`; `monitoring/` at the repository root has the
//! Grafana dashboard and alerting rules built on these metrics.

mod labels;
mod metrics;
mod process;
mod readiness;
mod server;
#[cfg(test)]
mod tests;

pub use self::labels::{is_onepassword_error, service_label, tenant_label, DeferralReason, TICK_SERVICE};
pub use self::metrics::PREFIX;
pub use self::readiness::Readiness;
pub use self::server::{negotiate, serve, OPENMETRICS_CONTENT_TYPE, TEXT_CONTENT_TYPE};

use self::labels::{
    service_error_ids, DeferralLabels, FailureLabels, ServiceLabels, ServiceOutcomeLabels, TenantLabels,
    TickOutcomeLabels, TICK_ERROR_IDS,
};
use self::metrics::Metrics;
use self::readiness::Health;
use crate::runtime::TenantTick;
use crate::tenant::Tenant;
use chrono::{DateTime, Utc};
use onepassword_collector::error::HOST_FAILURE;
use onepassword_collector::report::{Outcome, ServiceReport};
use prometheus_client::registry::Registry;
use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

/// Error id of a 1Password rate limit.
const RATE_LIMITED: u32 = 429;

/// Every outcome of a tenant's tick, as `ticks_total` labels it.
const TICK_OUTCOMES: [&str; 4] = ["ok", "backing_off", "failed", "host_failure"];
/// Every outcome of a service's run.
const SERVICE_OUTCOMES: [Outcome; 4] = [Outcome::Delivered, Outcome::Idle, Outcome::Failed, Outcome::Deferred];

/// The exposition format of `/metrics`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// The Prometheus text format 0.0.4 ([`TEXT_CONTENT_TYPE`]): the
    /// default, what `promtool check metrics` and any scraper read.
    Text,
    /// OpenMetrics 1.0.0 ([`OPENMETRICS_CONTENT_TYPE`]), `# EOF` at the
    /// end: only when the scraper's `Accept` asks for it.
    OpenMetrics,
}

impl Format {
    /// The `Content-Type` of a body in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Text => TEXT_CONTENT_TYPE,
            Format::OpenMetrics => OPENMETRICS_CONTENT_TYPE,
        }
    }
}

/// Metrics and readiness of one harness process. Shareable (`Send + Sync`);
/// every method takes `&self`.
pub struct Telemetry {
    registry: Registry,
    metrics: Metrics,
    state: Mutex<State>,
    /// Where each scrape reads the outbound connection counts from (the
    /// runtime's pool), once one is set.
    connection_source: Mutex<Option<ConnectionSource>>,
}

/// Reads the outbound connection counts at scrape time.
pub type ConnectionSource = Box<dyn Fn() -> crate::host::outbound::ConnectionStats + Send + Sync>;

#[derive(Default)]
struct State {
    component_loaded: bool,
    /// By tenant label.
    tenants: HashMap<String, TenantState>,
}

#[derive(Default)]
struct TenantState {
    health: Health,
    /// By service label: what its scrape-time gauges are computed from.
    services: HashMap<String, ServiceTimes>,
}

/// The times a service's `lag_seconds` and `freshness_seconds` are computed
/// from at each scrape (unix seconds), so both keep growing between ticks
/// and when ticks fail or stop firing.
struct ServiceTimes {
    /// Newest delivered event.
    checkpoint: Option<f64>,
    /// When a tick last confirmed the service caught up.
    caught_up: Option<f64>,
    /// When this process began watching the service: freshness counts from
    /// here until its first caught-up tick.
    since: f64,
}

impl ServiceTimes {
    fn new(since: f64) -> ServiceTimes {
        ServiceTimes { checkpoint: None, caught_up: None, since }
    }
}

/// True when `s` confirms its service caught up: a successful fetch with
/// nothing more waiting (delivered or idle, `has_more` false) and every
/// delivery recorded (an unconfirmed event is sent again next tick).
fn caught_up(s: &ServiceReport) -> bool {
    matches!(s.outcome, Outcome::Delivered | Outcome::Idle) && !s.has_more && s.error.is_none() && s.unconfirmed == 0
}

impl Default for Telemetry {
    fn default() -> Telemetry {
        Telemetry::new()
    }
}

impl Telemetry {
    /// Nothing recorded yet; not ready until [`Telemetry::component_loaded`].
    pub fn new() -> Telemetry {
        let (registry, metrics) = Metrics::register();
        Telemetry { registry, metrics, state: Mutex::new(State::default()), connection_source: Mutex::default() }
    }

    /// The component is compiled and linked: readiness may turn true.
    pub fn component_loaded(&self) {
        self.state().component_loaded = true;
    }

    /// Records everything one tick says: per service its events, bytes,
    /// pages, outcome, error, deferral, checkpoint, lag and freshness (as of
    /// `now`); per
    /// tenant the tick's outcome, duration, guest CPU, peak memory and
    /// failures in a row.
    pub fn tick_finished(&self, tick: &TenantTick, now: DateTime<Utc>) {
        let m = &self.metrics;
        let tenant = tenant_label(&tick.tenant);
        let now_s = unix_seconds(now);
        let tl = TenantLabels { tenant: tenant.clone() };
        m.tick_duration.get(tl.clone()).observe(tick.host_elapsed_ms as f64 / 1000.0);
        m.guest_cpu.get(tl.clone()).observe(tick.guest_cpu_ms as f64 / 1000.0);
        m.peak_memory.get(tl.clone()).set(tick.peak_memory_bytes as f64);
        m.last_tick.get(tl.clone()).set(now_s);
        // Created at zero so the first skip or 429 shows in increase().
        m.skipped_firings.get(tl.clone());

        let mut state = self.state();
        let ts = state.tenants.entry(tenant.clone()).or_default();
        let mut error_ids = Vec::new();
        let mut reported = Vec::new();
        let outcome = match &tick.result {
            Ok(report) => {
                for s in &report.services {
                    reported.push(self.record_service(&tenant, s, now, ts));
                    error_ids.extend(s.error.as_ref().map(|e| e.id));
                }
                if !error_ids.is_empty() {
                    "failed"
                } else if tick.backs_off_after_failures() {
                    // No new error, but a service is still failing.
                    "backing_off"
                } else {
                    "ok"
                }
            }
            Err(e) => {
                self.record_failure(&tenant, TICK_SERVICE, e.id);
                error_ids.push(e.id);
                if e.id == HOST_FAILURE {
                    "host_failure"
                } else {
                    "failed"
                }
            }
        };
        // Services the tick did not reach still fall behind.
        for (service, times) in &ts.services {
            if !reported.contains(service) {
                self.refresh_service(&tenant, service, times, now_s);
            }
        }
        for o in TICK_OUTCOMES {
            let counter = m.ticks.get(TickOutcomeLabels { tenant: tenant.clone(), outcome: o.into() });
            if o == outcome {
                counter.inc();
            }
        }
        let attempted =
            tick.result.as_ref().map_or(true, |r| r.services.iter().any(|s| s.outcome != Outcome::Deferred));
        ts.health.record_tick(&error_ids, tick.result.is_ok(), attempted);
        m.consecutive_failed_ticks.get(tl).set(i64::from(ts.health.consecutive_failures));
    }

    /// One service's part of a tick; returns its label.
    fn record_service(&self, tenant: &str, s: &ServiceReport, now: DateTime<Utc>, ts: &mut TenantState) -> String {
        let m = &self.metrics;
        let service = service_label(&s.service);
        let sl = ServiceLabels { tenant: tenant.to_string(), service: service.clone() };
        m.events_fetched.get(sl.clone()).inc_by(u64::from(s.fetched));
        m.events_delivered.get(sl.clone()).inc_by(u64::from(s.sent));
        m.events_unconfirmed.get(sl.clone()).inc_by(u64::from(s.unconfirmed));
        m.sent_bytes.get(sl.clone()).inc_by(s.bytes_sent);
        m.pages.get(sl.clone()).inc_by(u64::from(s.pages));
        let error_id = s.error.as_ref().map(|e| e.id);
        let failed_request = error_id.is_some_and(is_onepassword_error);
        m.onepassword_requests.get(sl.clone()).inc_by(u64::from(s.pages) + u64::from(failed_request));
        m.onepassword_rate_limited.get(sl.clone()).inc_by(u64::from(error_id == Some(RATE_LIMITED)));
        let outcome = s.outcome.name();
        let ol = ServiceOutcomeLabels { tenant: tenant.to_string(), service: service.clone(), outcome: outcome.into() };
        m.service_ticks.get(ol).inc();
        if let Some(id) = error_id {
            self.record_failure(tenant, &service, id);
        }
        if s.outcome == Outcome::Deferred {
            let reason = DeferralReason::from_text(s.deferred_reason.as_deref()).as_str().to_string();
            m.deferrals.get(DeferralLabels { tenant: tenant.to_string(), service: service.clone(), reason }).inc();
        }
        let now_s = unix_seconds(now);
        let times = ts.services.entry(service.clone()).or_insert_with(|| ServiceTimes::new(now_s));
        let checkpoint = s.checkpoint.as_deref().and_then(|c| DateTime::parse_from_rfc3339(c).ok());
        if let Some(checkpoint) = checkpoint {
            let checkpoint_s = unix_seconds(checkpoint.with_timezone(&Utc));
            times.checkpoint = Some(checkpoint_s);
            m.checkpoint.get(sl.clone()).set(checkpoint_s);
        }
        if caught_up(s) {
            times.caught_up = Some(now_s);
            m.last_caught_up.get(sl.clone()).set(now_s);
        }
        if times.checkpoint.is_none() {
            if let Some(lag) = s.lag_seconds {
                m.lag.get(sl).set(lag as f64);
            }
        }
        self.refresh_service(tenant, &service, times, now_s);
        service
    }

    /// A failure with error `id`; a 1Password one of the whole tick counts
    /// as a request (and a 429) too.
    fn record_failure(&self, tenant: &str, service: &str, id: u32) {
        let m = &self.metrics;
        let fl = FailureLabels { tenant: tenant.to_string(), service: service.to_string(), error_id: id.to_string() };
        m.failures.get(fl).inc();
        if service == TICK_SERVICE && is_onepassword_error(id) {
            let sl = ServiceLabels { tenant: tenant.to_string(), service: service.to_string() };
            m.onepassword_requests.get(sl.clone()).inc();
            m.onepassword_rate_limited.get(sl).inc_by(u64::from(id == RATE_LIMITED));
        }
    }

    /// A firing of `tenant` was skipped: its previous tick was still running.
    pub fn firing_skipped(&self, tenant: &str) {
        self.metrics.skipped_firings.get(TenantLabels { tenant: tenant_label(tenant) }).inc();
    }

    /// Whether `tenant` is catching up: its last tick ended with a backlog
    /// it could go on with, and it ticks again before its next firing.
    pub fn catching_up(&self, tenant: &str, catching_up: bool) {
        self.metrics.catching_up.get(TenantLabels { tenant: tenant_label(tenant) }).set(i64::from(catching_up));
    }

    /// A tick of `tenant` started between firings, to catch up.
    pub fn catch_up_tick(&self, tenant: &str) {
        self.metrics.catch_up_ticks.get(TenantLabels { tenant: tenant_label(tenant) }).inc();
    }

    /// Instance pool occupancy: ticks running and slots in all.
    pub fn instances(&self, in_use: usize, capacity: usize) {
        self.metrics.instances_in_use.set(i64::try_from(in_use).unwrap_or(i64::MAX));
        self.metrics.instances_capacity.set(i64::try_from(capacity).unwrap_or(i64::MAX));
    }

    /// Each scrape reads the outbound connection counts from `source` (the
    /// runtime's `connection_stats`).
    pub fn watch_connections(&self, source: ConnectionSource) {
        *self.connection_source.lock().unwrap_or_else(|e| e.into_inner()) = Some(source);
    }

    /// The runtime's outbound connections: opened and reused so far (the
    /// counters move by what changed since the last call), idle now.
    pub fn connections(&self, stats: crate::host::outbound::ConnectionStats) {
        let m = &self.metrics;
        // One caller at a time, so two cannot add the same difference.
        let _state = self.state();
        m.connections_opened.inc_by(stats.opened.saturating_sub(m.connections_opened.get()));
        m.connections_reused.inc_by(stats.reused.saturating_sub(m.connections_reused.get()));
        m.connections_idle.set(i64::try_from(stats.idle).unwrap_or(i64::MAX));
    }

    /// `tenant` is run by this process (at start, or added or changed by a
    /// reload): every one of its series is created, so dashboards show it
    /// and `increase()` sees its first event. Counters and histograms start
    /// at zero, for each service of its `services` and each outcome,
    /// deferral reason and error id of the error table; gauges of a value
    /// not known yet (lag, newest event, last caught up, last tick, peak
    /// memory) are NaN. Freshness counts from `now`. A series that already
    /// exists keeps its value.
    pub fn tenant_added(&self, tenant: &Tenant, now: DateTime<Utc>) {
        let m = &self.metrics;
        let name = tenant_label(&tenant.name);
        let now_s = unix_seconds(now);
        let nan = |gauge: (metrics::FloatGauge, bool)| {
            if gauge.1 {
                gauge.0.set(f64::NAN);
            }
        };
        let tl = TenantLabels { tenant: name.clone() };
        for o in TICK_OUTCOMES {
            m.ticks.get(TickOutcomeLabels { tenant: name.clone(), outcome: o.into() });
        }
        m.tick_duration.get(tl.clone());
        m.guest_cpu.get(tl.clone());
        nan(m.peak_memory.get_new(tl.clone()));
        nan(m.last_tick.get_new(tl.clone()));
        m.skipped_firings.get(tl.clone());
        m.catch_up_ticks.get(tl.clone());
        m.catching_up.get(tl.clone());
        m.consecutive_failed_ticks.get(tl);
        for id in TICK_ERROR_IDS {
            let error_id = id.to_string();
            m.failures.get(FailureLabels { tenant: name.clone(), service: TICK_SERVICE.into(), error_id });
        }
        let tick = ServiceLabels { tenant: name.clone(), service: TICK_SERVICE.into() };
        m.onepassword_requests.get(tick.clone());
        m.onepassword_rate_limited.get(tick);

        let mut state = self.state();
        let ts = state.tenants.entry(name.clone()).or_default();
        for service in crate::status::services(tenant) {
            let service = service_label(service.name());
            let sl = ServiceLabels { tenant: name.clone(), service: service.clone() };
            for o in SERVICE_OUTCOMES {
                let outcome = o.name().into();
                m.service_ticks.get(ServiceOutcomeLabels { tenant: name.clone(), service: service.clone(), outcome });
            }
            for counter in [
                &m.events_fetched,
                &m.events_delivered,
                &m.events_unconfirmed,
                &m.sent_bytes,
                &m.pages,
                &m.onepassword_requests,
                &m.onepassword_rate_limited,
            ] {
                counter.get(sl.clone());
            }
            for id in service_error_ids() {
                let error_id = id.to_string();
                m.failures.get(FailureLabels { tenant: name.clone(), service: service.clone(), error_id });
            }
            for reason in DeferralReason::ALL {
                let reason = reason.as_str().into();
                m.deferrals.get(DeferralLabels { tenant: name.clone(), service: service.clone(), reason });
            }
            nan(m.lag.get_new(sl.clone()));
            nan(m.checkpoint.get_new(sl.clone()));
            nan(m.last_caught_up.get_new(sl));
            let times = ts.services.entry(service.clone()).or_insert_with(|| ServiceTimes::new(now_s));
            self.refresh_service(&name, &service, times, now_s);
        }
    }

    /// The result of checking `tenant`'s key-value store outside a tick (at
    /// start, or after a reload): an unreachable store makes readiness false
    /// until a tick or check reaches it.
    pub fn store_checked(&self, tenant: &str, reachable: bool) {
        self.state().tenants.entry(tenant_label(tenant)).or_default().health.store_unreachable = !reachable;
    }

    /// `tenant` is gone from the config: its series and readiness state are
    /// dropped.
    pub fn tenant_removed(&self, tenant: &str) {
        let tenant = tenant_label(tenant);
        let m = &self.metrics;
        m.ticks.remove_tenant(&tenant);
        m.service_ticks.remove_tenant(&tenant);
        m.events_fetched.remove_tenant(&tenant);
        m.events_delivered.remove_tenant(&tenant);
        m.events_unconfirmed.remove_tenant(&tenant);
        m.sent_bytes.remove_tenant(&tenant);
        m.pages.remove_tenant(&tenant);
        m.failures.remove_tenant(&tenant);
        m.deferrals.remove_tenant(&tenant);
        m.onepassword_requests.remove_tenant(&tenant);
        m.onepassword_rate_limited.remove_tenant(&tenant);
        m.lag.remove_tenant(&tenant);
        m.checkpoint.remove_tenant(&tenant);
        m.last_caught_up.remove_tenant(&tenant);
        m.freshness.remove_tenant(&tenant);
        m.tick_duration.remove_tenant(&tenant);
        m.guest_cpu.remove_tenant(&tenant);
        m.peak_memory.remove_tenant(&tenant);
        m.last_tick.remove_tenant(&tenant);
        m.skipped_firings.remove_tenant(&tenant);
        m.catch_up_ticks.remove_tenant(&tenant);
        m.catching_up.remove_tenant(&tenant);
        m.consecutive_failed_ticks.remove_tenant(&tenant);
        self.state().tenants.remove(&tenant);
    }

    /// The tenants file loaded at start, at `now`.
    pub fn config_loaded(&self, now: DateTime<Utc>) {
        self.metrics.config_reload_ok.set(1);
        self.metrics.config_reload_time.set(unix_seconds(now));
    }

    /// A config reload (SIGHUP), by result.
    pub fn reload(&self, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.metrics.config_reloads.get_or_create(&labels::ResultLabels { result: result.into() }).inc();
        if ok {
            self.config_loaded(Utc::now());
        } else {
            self.metrics.config_reload_ok.set(0);
        }
    }

    /// Sets every service's gauges that are "now minus a time" as of `now`:
    /// `lag_seconds` (now minus its newest delivered event, once known) and
    /// `freshness_seconds` (now minus when it was last confirmed caught
    /// up). The endpoint calls it before each scrape, so both keep growing
    /// between ticks (a tenant on an hourly schedule, or one whose ticks
    /// stopped firing) instead of standing at the value of the last tick.
    pub fn refresh(&self, now: DateTime<Utc>) {
        let now_s = unix_seconds(now);
        let state = self.state();
        for (tenant, ts) in &state.tenants {
            for (service, times) in &ts.services {
                self.refresh_service(tenant, service, times, now_s);
            }
        }
    }

    fn refresh_service(&self, tenant: &str, service: &str, times: &ServiceTimes, now_s: f64) {
        let labels = ServiceLabels { tenant: tenant.to_string(), service: service.to_string() };
        if let Some(checkpoint_s) = times.checkpoint {
            self.metrics.lag.get(labels.clone()).set(seconds_between(checkpoint_s, now_s));
        }
        let confirmed = times.caught_up.unwrap_or(times.since);
        self.metrics.freshness.get(labels).set(seconds_between(confirmed, now_s));
    }

    /// The `/metrics` body in `format` (served as its
    /// [`Format::content_type`]).
    pub fn render(&self, format: Format) -> String {
        self.metrics.ready.set(i64::from(self.readiness().ready));
        let stats = self.connection_source.lock().unwrap_or_else(|e| e.into_inner()).as_ref().map(|source| source());
        if let Some(stats) = stats {
            self.connections(stats);
        }
        let mut out = String::new();
        let written = match format {
            Format::Text => prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry),
            Format::OpenMetrics => prometheus_client::encoding::text::encode(&mut out, &self.registry),
        };
        written.expect("writing to a String cannot fail");
        out
    }

    /// Ready, or why not: component not loaded, a tenant's store
    /// unreachable. A tenant's failing ticks never count (see `readiness.rs`).
    pub fn readiness(&self) -> Readiness {
        let state = self.state();
        readiness::evaluate(state.component_loaded, state.tenants.iter().map(|(t, s)| (t, &s.health)))
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere while holding the lock leaves plain counters
        // behind: still consistent enough to report.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// `to - from` in seconds, to the millisecond (the times are), never below 0.
fn seconds_between(from: f64, to: f64) -> f64 {
    ((to - from) * 1000.0).round().max(0.0) / 1000.0
}

fn unix_seconds(t: DateTime<Utc>) -> f64 {
    t.timestamp() as f64 + f64::from(t.timestamp_subsec_millis()) / 1000.0
}
