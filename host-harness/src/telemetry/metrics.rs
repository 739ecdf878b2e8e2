//! The metric families and their registration: every name, type, unit and
//! help text `/metrics` shows is here. Names get the prefix
//! `onepassword_collector_`; prometheus-client appends the unit
//! (`_seconds`, `_bytes`) and, for counters, `_total`.
//!
//! Families with a `tenant` label are [`Tracked`]: they remember which label
//! sets they created so a tenant's series can be dropped when the tenant is
//! removed from the config. The standard `process_*` metrics (no prefix)
//! come from `process.rs`.

use super::labels::{
    BuildLabels, DeferralLabels, FailureLabels, OfTenant, ResultLabels, ServiceLabels, ServiceOutcomeLabels,
    TenantLabels, TickOutcomeLabels,
};
use super::process::ProcessCollector;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::metrics::TypedMetric;
use prometheus_client::registry::{Metric, Registry, Unit};
use std::collections::HashSet;
use std::fmt::Debug;
use std::hash::Hash;
use std::sync::atomic::AtomicU64;
use std::sync::Mutex;

/// What every name starts with.
pub const PREFIX: &str = "onepassword_collector";

/// Upper bounds of `tick_duration_seconds` (the default wall limit is 150 s).
const TICK_DURATION_BUCKETS: [f64; 12] = [0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 150.0, 300.0];
/// Upper bounds of `guest_cpu_seconds` (the default CPU limit is 5 s).
const GUEST_CPU_BUCKETS: [f64; 11] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// A gauge holding a float (seconds, timestamps).
pub(super) type FloatGauge = Gauge<f64, AtomicU64>;
type HistogramFamily = Tracked<TenantLabels, Histogram, fn() -> Histogram>;

/// A family whose label sets all carry a tenant, remembering the label sets
/// it created.
pub(super) struct Tracked<S, M, C = fn() -> M> {
    family: Family<S, M, C>,
    seen: Mutex<HashSet<S>>,
}

impl<S, M, C> Tracked<S, M, C>
where
    S: Clone + Hash + Eq + OfTenant,
    M: Clone,
    C: MetricConstructor<M>,
{
    fn with(family: Family<S, M, C>) -> Self {
        Tracked { family, seen: Mutex::new(HashSet::new()) }
    }

    /// The metric of `labels`, created (at zero) if new.
    pub fn get(&self, labels: S) -> M {
        self.get_new(labels).0
    }

    /// The metric of `labels`, and whether this call created it (at zero).
    pub fn get_new(&self, labels: S) -> (M, bool) {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let metric = self.family.get_or_create_owned(&labels);
        let new = seen.insert(labels);
        (metric, new)
    }

    /// Drops every series of `tenant`.
    pub fn remove_tenant(&self, tenant: &str) {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.retain(|labels| {
            let keep = labels.tenant() != tenant;
            if !keep {
                self.family.remove(labels);
            }
            keep
        });
    }
}

impl<S: Clone + Hash + Eq, M: Default> Tracked<S, M> {
    fn new() -> Self {
        Tracked { family: Family::new_with_constructor(M::default), seen: Mutex::new(HashSet::new()) }
    }
}

/// Every family `Telemetry` writes to.
pub(super) struct Metrics {
    pub ticks: Tracked<TickOutcomeLabels, Counter>,
    pub service_ticks: Tracked<ServiceOutcomeLabels, Counter>,
    pub events_fetched: Tracked<ServiceLabels, Counter>,
    pub events_delivered: Tracked<ServiceLabels, Counter>,
    pub events_unconfirmed: Tracked<ServiceLabels, Counter>,
    pub sent_bytes: Tracked<ServiceLabels, Counter>,
    pub pages: Tracked<ServiceLabels, Counter>,
    pub failures: Tracked<FailureLabels, Counter>,
    pub deferrals: Tracked<DeferralLabels, Counter>,
    pub onepassword_requests: Tracked<ServiceLabels, Counter>,
    pub onepassword_rate_limited: Tracked<ServiceLabels, Counter>,
    pub lag: Tracked<ServiceLabels, FloatGauge>,
    pub checkpoint: Tracked<ServiceLabels, FloatGauge>,
    pub last_caught_up: Tracked<ServiceLabels, FloatGauge>,
    pub freshness: Tracked<ServiceLabels, FloatGauge>,
    pub tick_duration: HistogramFamily,
    pub guest_cpu: HistogramFamily,
    pub peak_memory: Tracked<TenantLabels, FloatGauge>,
    pub last_tick: Tracked<TenantLabels, FloatGauge>,
    pub skipped_firings: Tracked<TenantLabels, Counter>,
    pub catch_up_ticks: Tracked<TenantLabels, Counter>,
    pub catching_up: Tracked<TenantLabels, Gauge>,
    pub consecutive_failed_ticks: Tracked<TenantLabels, Gauge>,
    pub instances_in_use: Gauge,
    pub instances_capacity: Gauge,
    pub connections_opened: Counter,
    pub connections_reused: Counter,
    pub connections_idle: Gauge,
    pub config_reloads: Family<ResultLabels, Counter>,
    pub config_reload_ok: Gauge,
    pub config_reload_time: FloatGauge,
    pub ready: Gauge,
}

impl Metrics {
    /// The families, registered in a fresh registry: the collector's under
    /// [`PREFIX`], the build and the process's own.
    pub fn register() -> (Registry, Metrics) {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(ProcessCollector));
        let r = registry.sub_registry_with_prefix(PREFIX);
        let build = Info::new(BuildLabels { version: env!("CARGO_PKG_VERSION").into() });
        r.register("build", "The harness's version (a constant 1)", build);
        let m = Metrics {
            ticks: tracked(
                r,
                "ticks",
                "Tenant ticks by outcome: ok, failed, host_failure (error 900: trap, limit, deadline)",
                None,
                Tracked::new(),
            ),
            service_ticks: tracked(
                r,
                "service_ticks",
                "Service runs by outcome: delivered, idle, failed, deferred",
                None,
                Tracked::new(),
            ),
            events_fetched: tracked(r, "events_fetched", "Events fetched from 1Password", None, Tracked::new()),
            events_delivered: tracked(r, "events_delivered", "Events Devo accepted", None, Tracked::new()),
            events_unconfirmed: tracked(
                r,
                "events_unconfirmed",
                "Delivered events whose delivery could not be recorded (sent again)",
                None,
                Tracked::new(),
            ),
            sent_bytes: tracked(r, "sent", "Bytes sent to Devo, after compression", Some(Unit::Bytes), Tracked::new()),
            pages: tracked(r, "pages", "Pages fetched from 1Password", None, Tracked::new()),
            failures: tracked(
                r,
                "failures",
                "Failures by error id; service=\"_tick\" when the whole tick failed",
                None,
                Tracked::new(),
            ),
            deferrals: tracked(
                r,
                "deferrals",
                "Deferred services by reason (budget, rate_limited, backoff, lease_held, lease_lost, other)",
                None,
                Tracked::new(),
            ),
            onepassword_requests: tracked(
                r,
                "onepassword_requests",
                "Requests to 1Password's events API: pages fetched plus failed fetches",
                None,
                Tracked::new(),
            ),
            onepassword_rate_limited: tracked(
                r,
                "onepassword_rate_limited",
                "Requests 1Password answered with 429",
                None,
                Tracked::new(),
            ),
            lag: tracked(
                r,
                "lag",
                "Age of the newest delivered event: now, at each scrape, minus its time (NaN until known). Grows \
                 on a quiet account too: alert on freshness_seconds",
                Some(Unit::Seconds),
                Tracked::new(),
            ),
            checkpoint: tracked(
                r,
                "checkpoint_timestamp",
                "Time of the newest delivered event (unix seconds; NaN until known)",
                Some(Unit::Seconds),
                Tracked::new(),
            ),
            last_caught_up: tracked(
                r,
                "last_caught_up_timestamp",
                "When a tick last confirmed the service caught up: a successful fetch with nothing more waiting \
                 (delivered or idle, has_more false; unix seconds; NaN before the first)",
                Some(Unit::Seconds),
                Tracked::new(),
            ),
            freshness: tracked(
                r,
                "freshness",
                "Now, at each scrape, minus when the service was last confirmed caught up (before the first \
                 time: minus when this process began watching it)",
                Some(Unit::Seconds),
                Tracked::new(),
            ),
            tick_duration: tracked(
                r,
                "tick_duration",
                "Wall time of a tick on the host, instantiation to result",
                Some(Unit::Seconds),
                Tracked::with(Family::new_with_constructor(tick_duration_histogram)),
            ),
            guest_cpu: tracked(
                r,
                "guest_cpu",
                "Guest CPU time of a tick (time running WebAssembly)",
                Some(Unit::Seconds),
                Tracked::with(Family::new_with_constructor(guest_cpu_histogram)),
            ),
            peak_memory: tracked(
                r,
                "peak_memory",
                "Peak linear memory of the tenant's last tick (NaN before its first)",
                Some(Unit::Bytes),
                Tracked::new(),
            ),
            last_tick: tracked(
                r,
                "last_tick_timestamp",
                "When the tenant's last tick finished (unix seconds; NaN before its first)",
                Some(Unit::Seconds),
                Tracked::new(),
            ),
            skipped_firings: tracked(
                r,
                "skipped_firings",
                "Firings skipped because the tenant's previous tick was still running",
                None,
                Tracked::new(),
            ),
            catch_up_ticks: tracked(
                r,
                "catch_up_ticks",
                "Ticks started before the tenant's next firing because its last tick ended with a backlog it \
                 could go on with (catching up)",
                None,
                Tracked::new(),
            ),
            catching_up: tracked(
                r,
                "catching_up",
                "1 while the tenant is catching up (ticking again before its next firing), 0 on its schedule",
                None,
                Tracked::new(),
            ),
            consecutive_failed_ticks: tracked(
                r,
                "consecutive_failed_ticks",
                "Failed ticks in a row (0 after a tick without error)",
                None,
                Tracked::new(),
            ),
            instances_in_use: plain(
                r,
                "instances_in_use",
                "Instance pool slots in use (ticks running)",
                Gauge::default(),
            ),
            instances_capacity: plain(
                r,
                "instances_capacity",
                "Instance pool slots (most ticks at once)",
                Gauge::default(),
            ),
            connections_opened: plain(
                r,
                "outbound_connections_opened",
                "Outbound connections opened (TCP, and a TLS handshake for https)",
                Counter::default(),
            ),
            connections_reused: plain(
                r,
                "outbound_connections_reused",
                "Outbound requests sent on a kept-alive connection an earlier request had used",
                Counter::default(),
            ),
            connections_idle: plain(
                r,
                "outbound_connections_idle",
                "Outbound connections kept alive and idle, waiting for a request",
                Gauge::default(),
            ),
            config_reloads: plain(r, "config_reloads", "Config reloads by result: ok, error", Family::default()),
            config_reload_ok: plain(
                r,
                "config_last_reload_successful",
                "1 when the last load of the tenants file (at start or on SIGHUP) succeeded, 0 when it failed",
                Gauge::default(),
            ),
            config_reload_time: {
                let gauge = FloatGauge::default();
                let help = "When the tenants file last loaded (at start or on SIGHUP; unix seconds)";
                r.register_with_unit("config_last_reload_success_timestamp", help, Unit::Seconds, gauge.clone());
                gauge
            },
            ready: plain(
                r,
                "ready",
                "1 when /readyz answers 200: component loaded, no key-value store unreachable",
                Gauge::default(),
            ),
        };
        for result in ["ok", "error"] {
            let _created = m.config_reloads.get_or_create(&ResultLabels { result: result.into() });
        }
        (registry, m)
    }
}

fn tick_duration_histogram() -> Histogram {
    Histogram::new(TICK_DURATION_BUCKETS)
}

fn guest_cpu_histogram() -> Histogram {
    Histogram::new(GUEST_CPU_BUCKETS)
}

fn tracked<S, M, C>(
    registry: &mut Registry,
    name: &str,
    help: &str,
    unit: Option<Unit>,
    tracked: Tracked<S, M, C>,
) -> Tracked<S, M, C>
where
    S: Clone + Hash + Eq + EncodeLabelSet + Debug + Send + Sync + 'static,
    Family<S, M, C>: Metric + Clone,
{
    let family = tracked.family.clone();
    match unit {
        Some(unit) => registry.register_with_unit(name, help, unit, family),
        None => registry.register(name, help, family),
    }
    tracked
}

fn plain<M: Metric + TypedMetric + Clone>(registry: &mut Registry, name: &str, help: &str, metric: M) -> M {
    registry.register(name, help, metric.clone());
    metric
}
