//! `host-harness run`: every tenant on its own schedule until stopped.
//!
//! One task per tenant sleeps until the tenant's next firing and starts the
//! tick as a task of its own, so a tick that is still running at the next
//! firing is noticed: that firing is skipped and counted rather than piling
//! up instances (Spin's cron trigger has no such guard; leases would keep the
//! data safe, but the host should not waste instances).
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
use chrono::{SecondsFormat, Utc};
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
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

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

/// Shared by every tenant's task.
#[derive(Clone)]
struct Context {
    runtime: Runtime,
    logger: Logger,
    telemetry: Arc<Telemetry>,
    /// Cancelled when the process is asked to stop: no new firings.
    stopping: CancellationToken,
    /// Every tick in flight, so a stop can wait for them.
    ticks: TaskTracker,
}

/// A running tenant: its settings (a new value applies from the next
/// firing; dropping the sender stops the tenant after its in-flight tick).
struct Worker {
    settings: watch::Sender<Tenant>,
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
    let cx = Context {
        runtime,
        logger: options.logger.clone(),
        telemetry: Arc::clone(&options.telemetry),
        stopping: CancellationToken::new(),
        ticks: TaskTracker::new(),
    };
    cx.telemetry.component_loaded();
    cx.telemetry.config_loaded(Utc::now());
    cx.telemetry.instances(cx.runtime.instances_in_use(), cx.runtime.limits().max_concurrent_instances);
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
    let (settings, receiver) = watch::channel(tenant);
    tokio::spawn(tenant_loop(cx.clone(), receiver));
    Worker { settings }
}

/// Fires the tenant's ticks on its schedule until it is removed or the
/// process stops.
async fn tenant_loop(cx: Context, mut settings: watch::Receiver<Tenant>) {
    let mut in_flight: Option<tokio::task::JoinHandle<()>> = None;
    loop {
        let tenant = settings.borrow_and_update().clone();
        // Validated when the file was loaded.
        let Ok(sched) = schedule::parse(&tenant.schedule) else { return };
        let now = Utc::now();
        let Some(next) = schedule::next_after(&sched, now) else { return };
        tokio::select! {
            _ = cx.stopping.cancelled() => return,
            changed = settings.changed() => {
                if changed.is_err() {
                    return; // removed: its in-flight tick finishes on its own
                }
                continue; // new settings: a new schedule, maybe
            }
            _ = tokio::time::sleep((next - now).to_std().unwrap_or_default()) => {}
        }
        if in_flight.as_ref().is_some_and(|t| !t.is_finished()) {
            cx.telemetry.firing_skipped(&tenant.name);
            let fired = next.to_rfc3339_opts(SecondsFormat::Secs, true);
            let why = "the previous tick is still running; this firing is skipped";
            cx.logger.log(Level::Warn, Some(&tenant.name), why, &[("fired_at", fired)]);
            continue;
        }
        let tenant = settings.borrow().clone();
        let tick_cx = cx.clone();
        in_flight = Some(cx.ticks.spawn(async move {
            let capacity = tick_cx.runtime.limits().max_concurrent_instances;
            let tick = tick_cx.runtime.tick(&tenant).await;
            tick_cx.telemetry.instances(tick_cx.runtime.instances_in_use(), capacity);
            finished(&tick_cx, &tick, next);
        }));
    }
}

/// Reports one tick: the JSON line on stdout, the log line, the metrics.
fn finished(cx: &Context, tick: &TenantTick, fired_at: chrono::DateTime<Utc>) {
    cx.telemetry.tick_finished(tick, Utc::now());
    cx.logger.tick(tick);
    let mut line = tick.to_json();
    line["fired_at"] = serde_json::Value::String(fired_at.to_rfc3339_opts(SecondsFormat::Secs, true));
    println!("{line}");
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
    let (mut added, mut changed) = (0, 0);
    let names: Vec<String> = tenants.iter().map(|t| t.name.clone()).collect();
    for t in tenants {
        match workers.get(&t.name) {
            None => {
                added += 1;
                workers.insert(t.name.clone(), start(cx, t));
            }
            Some(w) => {
                // (The borrow must end before `send`: both lock the value.)
                let differs = *w.settings.borrow() != t;
                if differs {
                    changed += 1;
                    cx.telemetry.tenant_added(&t, Utc::now()); // a new service starts at zero
                    w.settings.send_replace(t);
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
    let summary = format!("reloaded: {added} added, {changed} changed, {} removed", removed.len());
    cx.logger.log(Level::Info, None, &summary, &[]);
}

/// No new firings; in-flight ticks get `grace` to finish.
async fn stop(cx: &Context, workers: BTreeMap<String, Worker>, grace: Duration) {
    cx.stopping.cancel();
    drop(workers);
    cx.ticks.close();
    let in_flight = cx.ticks.len();
    if in_flight > 0 {
        let msg = format!("stopping: waiting up to {} s for {in_flight} tick(s) in flight", grace.as_secs());
        cx.logger.log(Level::Info, None, &msg, &[]);
    }
    if tokio::time::timeout(grace, cx.ticks.wait()).await.is_err() {
        let msg = format!(
            "grace period over: {} tick(s) cut; their checkpoints had not advanced, the next run repeats their pages",
            cx.ticks.len()
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
