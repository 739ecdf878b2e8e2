//! `host-harness run`: every tenant on its own schedule until stopped.
//!
//! The scheduler is the host library's `host_harness::fleet` (the bench
//! drives it too); this file reports what it does (log, JSON lines,
//! metrics), reloads and stops it. One task per tenant sleeps until the
//! tenant's next firing and starts the tick as a task of its own, so a tick
//! that is still running at the next firing is noticed: that firing is
//! skipped and counted rather than piling up instances (Spin's cron trigger
//! has no such guard; leases would keep the data safe, but the host should
//! not waste instances).
//!
//! Spreading: a tenant fires at its schedule's firings plus an offset
//! within the schedule's period, a stable hash of its name
//! (`host_harness::schedule`), unless the period is under a minute or the
//! tenant sets `spread_firings = false`; the JSON line's `fired_at` is that
//! planned time.
//!
//! Catching up: a tick that ends with a backlog it could go on with (a
//! service with more waiting that stopped at its deadline or its page cap,
//! or at a spent budget that frees up before the next firing) is followed
//! by another as soon as it can page again (`host_harness::catch_up`), not at the
//! next firing: a backlog drains at the account's budget, whatever the
//! schedule. One tick at a time still (the next starts when the last has
//! ended); the leases and the budget are the component's and hold as ever.
//! The log says when a tenant starts and stops catching up, each catch-up
//! tick's line says `"catch_up": true`, and the metrics count them. A firing
//! that meets a catch-up tick in flight is not a skipped firing: the tick is
//! doing its work. Once a tick ends caught up, the schedule resumes.
//!
//! Lifecycle:
//! - SIGHUP reloads the tenants file. New tenants start on their schedule,
//!   removed ones stop after their in-flight tick, changed ones tick with the
//!   new settings from their next firing. A file that does not load changes
//!   nothing; the log says why. The `[host]` section is not reloaded: the
//!   runtime keeps the ceilings it started with (tenants are held to them
//!   whatever the new file says), and a changed section is logged as
//!   needing a restart.
//! - SIGTERM or SIGINT: no new ticks; ticks in flight get the grace period to
//!   finish, then the process exits 0. A tick cut by the grace period loses
//!   nothing: its checkpoint had not advanced.

use crate::log::{Level, Logger};
use chrono::{DateTime, SecondsFormat, Utc};
use host_harness::fleet::{Fleet, Observer, Worker};
use host_harness::host_settings::HostSettings;
use host_harness::runtime::{Runtime, TenantTick};
use host_harness::schedule;
use host_harness::shard::Shard;
use host_harness::telemetry::Telemetry;
use host_harness::tenant::{self, Tenant};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// What `run` was asked to do.
pub struct RunOptions {
    pub config: PathBuf,
    /// The `[host]` section the runtime was built with.
    pub host: HostSettings,
    pub shard: Option<Shard>,
    /// How long in-flight ticks may take to finish once a stop is asked.
    pub grace: Duration,
    pub logger: Logger,
    pub telemetry: Arc<Telemetry>,
}

/// The scheduler and what reports its ticks.
struct Context {
    fleet: Fleet,
    logger: Logger,
    telemetry: Arc<Telemetry>,
}

/// What the fleet does, as the log, the JSON lines and the metrics say it.
struct Reporter {
    runtime: Runtime,
    logger: Logger,
    telemetry: Arc<Telemetry>,
}

impl Observer for Reporter {
    fn starting(&self, tenant: &Tenant, _fired_at: DateTime<Utc>, catch_up: bool) {
        if catch_up {
            self.telemetry.catch_up_tick(&tenant.name);
        }
    }

    /// One tick: the JSON line on stdout, the log line, the metrics.
    fn finished(&self, tick: &TenantTick, fired_at: DateTime<Utc>, catch_up: bool) {
        let capacity = self.runtime.limits().max_concurrent_instances;
        self.telemetry.instances(self.runtime.instances_in_use(), capacity);
        self.telemetry.tick_finished(tick, Utc::now());
        self.logger.tick(tick);
        let mut line = tick.to_json();
        // A firing's planned time (milliseconds when it is offset); when a
        // catch-up tick started, to the second.
        let fired =
            if catch_up { fired_at.to_rfc3339_opts(SecondsFormat::Secs, true) } else { schedule::shown(fired_at) };
        line["fired_at"] = serde_json::Value::String(fired);
        if catch_up {
            line["catch_up"] = serde_json::Value::Bool(true);
        }
        println!("{line}");
    }

    fn skipped(&self, tenant: &str, fired_at: DateTime<Utc>) {
        self.telemetry.firing_skipped(tenant);
        let why = "the previous tick is still running; this firing is skipped";
        self.logger.log(Level::Warn, Some(tenant), why, &[("fired_at", schedule::shown(fired_at))]);
    }

    fn catching_up(&self, tenant: &str, catching_up: bool) {
        self.telemetry.catching_up(tenant, catching_up);
        let msg = if catching_up {
            "catching up: the last tick ended with more waiting; ticking again before the next firing, \
             at the pace the account's request budget allows"
        } else {
            "caught up: back to the schedule"
        };
        self.logger.log(Level::Info, Some(tenant), msg, &[]);
    }
}

/// The file's `[host]` section and the tenants that this process runs (its
/// shard's, or all).
fn load(options: &RunOptions) -> anyhow::Result<(HostSettings, Vec<Tenant>)> {
    load_shard(&options.config, options.shard)
}

/// `config`'s `[host]` section and the tenants of `shard` (all without
/// one); only their secrets are read from the environment, so each shard's
/// pod needs its own tenants' secrets only.
pub fn load_shard(config: &std::path::Path, shard: Option<Shard>) -> anyhow::Result<(HostSettings, Vec<Tenant>)> {
    tenant::load_config_where(config, |n| std::env::var(n).ok(), |name| shard.is_none_or(|s| s.owns(name)))
}

/// The tenants of this process's shard (all without `--shard`).
fn ours(options: &RunOptions, mut tenants: Vec<Tenant>) -> Vec<Tenant> {
    if let Some(shard) = options.shard {
        tenants.retain(|t| shard.owns(&t.name));
    }
    tenants
}

/// Runs `tenants` (the file's, as loaded at start together with the
/// `[host]` section the runtime was built from) until stopped.
pub async fn run(runtime: Runtime, options: RunOptions, tenants: Vec<Tenant>) -> anyhow::Result<()> {
    let tenants = ours(&options, tenants);
    let reporter = Reporter {
        runtime: runtime.clone(),
        logger: options.logger.clone(),
        telemetry: Arc::clone(&options.telemetry),
    };
    let cx = Context {
        fleet: Fleet::new(runtime.clone(), Arc::new(reporter)),
        logger: options.logger.clone(),
        telemetry: Arc::clone(&options.telemetry),
    };
    cx.telemetry.component_loaded();
    cx.telemetry.config_loaded(Utc::now());
    cx.telemetry.instances(runtime.instances_in_use(), runtime.limits().max_concurrent_instances);
    let shard = options.shard.map_or(String::new(), |s| format!(" (shard {s})"));
    cx.logger.log(
        Level::Info,
        None,
        &format!(
            "running {} tenant(s){shard}; SIGHUP reloads the tenants file, Ctrl-C or SIGTERM stops",
            tenants.len()
        ),
        &[],
    );
    let mut workers: BTreeMap<String, Worker> = BTreeMap::new();
    for t in tenants {
        workers.insert(t.name.clone(), start(&cx, t));
    }
    let mut signals = Signals::new()?;
    while let Signal::Reload = signals.next().await {
        reload(&cx, &options, &mut workers);
    }
    stop(&cx, workers, options.grace).await;
    Ok(())
}

fn start(cx: &Context, tenant: Tenant) -> Worker {
    cx.telemetry.tenant_added(&tenant, Utc::now());
    cx.fleet.start(tenant)
}

/// Applies a new tenants file, or keeps the old one when it does not load.
fn reload(cx: &Context, options: &RunOptions, workers: &mut BTreeMap<String, Worker>) {
    let tenants = match load(options) {
        Ok((host, tenants)) => {
            if host != options.host {
                let why = "the [host] section changed: it applies after a restart; until then the ceilings the \
                           process started with stay, and every tenant is held to them";
                cx.logger.log(Level::Warn, None, why, &[]);
            }
            tenants
        }
        Err(e) => {
            cx.telemetry.reload(false);
            let why = format!("reload failed, nothing changed: {e:#}");
            cx.logger.log(Level::Error, None, &why, &[]);
            return;
        }
    };
    let (mut added, mut changed) = (Vec::new(), Vec::new());
    let names: Vec<String> = tenants.iter().map(|t| t.name.clone()).collect();
    for t in tenants {
        match workers.get(&t.name) {
            None => {
                added.push(t.name.clone());
                workers.insert(t.name.clone(), start(cx, t));
            }
            Some(w) => {
                if w.differs(&t) {
                    changed.push(t.name.clone());
                    cx.telemetry.tenant_added(&t, Utc::now()); // a new service starts at zero
                    w.update(t);
                }
            }
        }
    }
    let removed: Vec<String> = workers.keys().filter(|n| !names.contains(n)).cloned().collect();
    for name in &removed {
        workers.remove(name); // its task ends after its in-flight tick
        cx.telemetry.tenant_removed(name);
    }
    cx.telemetry.reload(true);
    let named = |what: &str, names: &[String]| {
        if names.is_empty() {
            String::new()
        } else {
            format!("; {what}: {}", names.join(", "))
        }
    };
    let summary = format!(
        "reloaded: {} added, {} changed, {} removed{}{}{}",
        added.len(),
        changed.len(),
        removed.len(),
        named("added", &added),
        named("changed", &changed),
        named("removed", &removed)
    );
    cx.logger.log(Level::Info, None, &summary, &[]);
}

/// No new firings; in-flight ticks get `grace` to finish.
async fn stop(cx: &Context, workers: BTreeMap<String, Worker>, grace: Duration) {
    cx.fleet.stop_firing();
    drop(workers);
    let in_flight = cx.fleet.ticks_in_flight();
    if in_flight > 0 {
        let msg = format!("stopping: waiting up to {} s for {in_flight} tick(s) in flight", grace.as_secs());
        cx.logger.log(Level::Info, None, &msg, &[]);
    }
    if !cx.fleet.wait(grace).await {
        let msg = format!(
            "grace period over: {} tick(s) cut; their checkpoints had not advanced, the next run repeats their pages",
            cx.fleet.ticks_in_flight()
        );
        cx.logger.log(Level::Warn, None, &msg, &[]);
    }
    cx.logger.log(Level::Info, None, "stopped", &[]);
}

enum Signal {
    Reload,
    Stop,
}

/// SIGHUP, SIGTERM and Ctrl-C, as one stream.
struct Signals {
    #[cfg(unix)]
    hangup: tokio::signal::unix::Signal,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> anyhow::Result<Signals> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Ok(Signals { hangup: signal(SignalKind::hangup())?, terminate: signal(SignalKind::terminate())? })
        }
        #[cfg(not(unix))]
        Ok(Signals {})
    }

    async fn next(&mut self) -> Signal {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => Signal::Stop,
                _ = self.terminate.recv() => Signal::Stop,
                _ = self.hangup.recv() => Signal::Reload,
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            Signal::Stop
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use host_harness::catch_up::catch_up_at;
    use onepassword_collector::error::CollectorError;
    use onepassword_collector::report::{Outcome, ServiceReport, TickReport};

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn service(outcome: Outcome, has_more: bool, deferred_until: Option<&str>) -> ServiceReport {
        ServiceReport {
            service: "audit".into(),
            outcome,
            fetched: 0,
            sent: 0,
            unconfirmed: 0,
            pages: 1,
            bytes_sent: 0,
            has_more,
            checkpoint: None,
            total_sent: 0,
            lag_seconds: None,
            elapsed_ms: 0,
            deferred_until: deferred_until.map(str::to_owned),
            deferred_reason: None,
            error: None,
        }
    }

    fn tick(services: Vec<ServiceReport>) -> TenantTick {
        let report = TickReport { services, ..Default::default() };
        TenantTick {
            tenant: "acme".into(),
            result: Ok(report),
            peak_memory_bytes: 0,
            guest_cpu_ms: 0,
            host_elapsed_ms: 0,
        }
    }

    #[test]
    fn a_backlog_left_at_the_deadline_or_a_spent_budget_is_caught_up_before_the_next_firing() {
        let now = at("2026-01-01T00:00:30Z");
        // Stopped at its deadline (or cap) with more waiting: at once.
        assert_eq!(catch_up_at(&tick(vec![service(Outcome::Delivered, true, None)]), now, false), Some(now));
        // At a spent budget: when it frees up.
        let budget = service(Outcome::Delivered, true, Some("2026-01-01T00:01:01Z"));
        assert_eq!(catch_up_at(&tick(vec![budget.clone()]), now, false), Some(at("2026-01-01T00:01:01Z")));
        // The soonest service decides.
        let soon = service(Outcome::Idle, true, None);
        assert_eq!(catch_up_at(&tick(vec![budget, soon]), now, false), Some(now));
        // A time already past: at once.
        let past = service(Outcome::Delivered, true, Some("2026-01-01T00:00:00Z"));
        assert_eq!(catch_up_at(&tick(vec![past]), now, false), Some(now));
    }

    #[test]
    fn nothing_waiting_a_failure_or_a_deferral_waits_for_the_schedule() {
        let now = at("2026-01-01T00:00:30Z");
        assert_eq!(catch_up_at(&tick(vec![service(Outcome::Delivered, false, None)]), now, true), None);
        assert_eq!(catch_up_at(&tick(vec![]), now, true), None);
        let mut failed = service(Outcome::Failed, true, None);
        failed.error = Some(CollectorError::persistence("get", "x"));
        assert_eq!(catch_up_at(&tick(vec![failed]), now, true), None);
        // Deferred before its first page: by the budget, with a backlog
        // known from an earlier tick, when the budget frees up; else (or
        // for another reason) on the schedule.
        let mut budget = service(Outcome::Deferred, false, Some("2026-01-01T00:00:40Z"));
        budget.deferred_reason = Some("the account's request budget for the last minute is spent; more from x".into());
        assert_eq!(catch_up_at(&tick(vec![budget.clone()]), now, true), Some(at("2026-01-01T00:00:40Z")));
        assert_eq!(catch_up_at(&tick(vec![budget]), now, false), None);
        let mut lease = service(Outcome::Deferred, false, Some("2026-01-01T00:00:40Z"));
        lease.deferred_reason = Some("another instance is collecting this service".into());
        assert_eq!(catch_up_at(&tick(vec![lease]), now, true), None);
        let host_failure = TenantTick { result: Err(CollectorError::persistence("open", "x")), ..tick(vec![]) };
        assert_eq!(catch_up_at(&host_failure, now, true), None);
    }
}
