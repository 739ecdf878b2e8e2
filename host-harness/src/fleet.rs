//! The scheduler `host-harness run` ticks its tenants with, as a library
//! piece so that the bench (`harness-test-kit`'s `bench --fleet`) drives the
//! very same code.
//!
//! One task per tenant sleeps until the tenant's next planned firing (its
//! schedule's firing plus its offset within the period, see
//! [`crate::schedule`]) and starts the tick as a task of its own, so a tick
//! that is still running at the next firing is noticed: that firing is
//! skipped and reported rather than piling up instances.
//!
//! Catching up: a tick that ends with a backlog it could go on with is
//! followed by another as soon as it can page again
//! ([`crate::catch_up::catch_up_at`]), not at the next firing. One tick at
//! a time still. A firing that meets a catch-up tick in flight is not a
//! skipped firing: the tick is doing its work. Once a tick ends caught up,
//! the schedule resumes.
//!
//! What happens is told to an [`Observer`]: the command logs it, prints the
//! JSON lines and counts metrics; the bench measures delays.

use crate::catch_up::catch_up_at;
use crate::runtime::{Runtime, TenantTick};
use crate::schedule;
use crate::tenant::Tenant;
use chrono::{DateTime, Utc};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// What a [`Fleet`] tells as its tenants tick. Every method is called from
/// the tenant's tasks: keep them short.
pub trait Observer: Send + Sync + 'static {
    /// A tick is about to start (it may still wait for a free instance
    /// slot): at the firing planned for `fired_at`, or a catch-up tick
    /// (`fired_at` is then the time it started).
    fn starting(&self, tenant: &Tenant, fired_at: DateTime<Utc>, catch_up: bool) {
        let _ = (tenant, fired_at, catch_up);
    }

    /// A tick ended.
    fn finished(&self, tick: &TenantTick, fired_at: DateTime<Utc>, catch_up: bool);

    /// The firing planned for `fired_at` found the previous scheduled tick
    /// still running: skipped.
    fn skipped(&self, tenant: &str, fired_at: DateTime<Utc>) {
        let _ = (tenant, fired_at);
    }

    /// The tenant started (`true`) or stopped catching up.
    fn catching_up(&self, tenant: &str, catching_up: bool) {
        let _ = (tenant, catching_up);
    }
}

/// Tenants ticking on their schedules in one runtime. Clones share it.
#[derive(Clone)]
pub struct Fleet {
    runtime: Runtime,
    observer: Arc<dyn Observer>,
    /// Cancelled when the fleet is asked to stop: no new firings.
    stopping: CancellationToken,
    /// Every tick in flight, so a stop can wait for them.
    ticks: TaskTracker,
}

/// A running tenant. [`Worker::update`] changes its settings from its next
/// firing on; dropping the worker stops the tenant after its in-flight tick.
pub struct Worker {
    settings: watch::Sender<Tenant>,
}

impl Worker {
    /// True when `tenant` differs from the settings the worker runs with.
    pub fn differs(&self, tenant: &Tenant) -> bool {
        *self.settings.borrow() != *tenant
    }

    /// New settings, from the next firing (a new schedule, maybe).
    pub fn update(&self, tenant: Tenant) {
        self.settings.send_replace(tenant);
    }
}

impl Fleet {
    /// A fleet ticking in `runtime`, telling `observer`.
    pub fn new(runtime: Runtime, observer: Arc<dyn Observer>) -> Fleet {
        Fleet { runtime, observer, stopping: CancellationToken::new(), ticks: TaskTracker::new() }
    }

    /// The runtime the ticks run in.
    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    /// Starts `tenant` on its schedule (a task of the current tokio
    /// runtime) until its worker is dropped or the fleet stops.
    pub fn start(&self, tenant: Tenant) -> Worker {
        let (settings, receiver) = watch::channel(tenant);
        tokio::spawn(self.clone().tenant_loop(receiver));
        Worker { settings }
    }

    /// No new firings from now on; ticks in flight go on.
    pub fn stop_firing(&self) {
        self.stopping.cancel();
        self.ticks.close();
    }

    /// Ticks in flight (waiting for an instance slot or running).
    pub fn ticks_in_flight(&self) -> usize {
        self.ticks.len()
    }

    /// Waits up to `grace` for the ticks in flight; false when some were
    /// still running then. Call after [`Fleet::stop_firing`].
    pub async fn wait(&self, grace: Duration) -> bool {
        tokio::time::timeout(grace, self.ticks.wait()).await.is_ok()
    }

    /// Fires the tenant's ticks on its schedule, and between firings while
    /// it catches up, until it is removed or the fleet stops.
    async fn tenant_loop(self, mut settings: watch::Receiver<Tenant>) {
        // The tick in flight, whether it is a catch-up tick, and what it
        // asks for when it ends (a catch-up at a time, or none).
        let mut in_flight: Option<(tokio::task::JoinHandle<Option<DateTime<Utc>>>, bool)> = None;
        let mut catch_up: Option<DateTime<Utc>> = None;
        let mut catching_up = false;
        let mut tenant = settings.borrow_and_update().clone();
        // Validated when the file was loaded.
        let Ok(mut sched) = schedule::parse(&tenant.schedule) else { return };
        let mut spread = schedule::spread(&sched, &tenant.name, tenant.spread_firings);
        let mut changed = false;
        loop {
            if std::mem::take(&mut changed) {
                tenant = settings.borrow_and_update().clone();
                let Ok(parsed) = schedule::parse(&tenant.schedule) else { return };
                sched = parsed;
                spread = schedule::spread(&sched, &tenant.name, tenant.spread_firings);
            }
            let now = Utc::now();
            let Some(next) = schedule::next_planned(&sched, &spread, now) else { return };
            // A catch-up tick comes before the next firing, or it is the firing.
            let early = catch_up.filter(|at| *at < next);
            let wake = early.unwrap_or(next);
            tokio::select! {
                _ = self.stopping.cancelled() => return,
                news = settings.changed() => {
                    if news.is_err() {
                        return; // removed: its in-flight tick finishes on its own
                    }
                    changed = true; // new settings: a new schedule, maybe
                    continue;
                }
                ended = async { (&mut in_flight.as_mut().expect("a tick in flight").0).await },
                    if in_flight.is_some() =>
                {
                    in_flight = None;
                    catch_up = ended.unwrap_or(None);
                    let now_catching_up = catch_up.is_some();
                    if now_catching_up != catching_up {
                        catching_up = now_catching_up;
                        self.observer.catching_up(&tenant.name, catching_up);
                    }
                    continue; // when to wake, anew
                }
                _ = tokio::time::sleep((wake - now).to_std().unwrap_or_default()) => {}
            }
            if let Some((tick, was_catch_up)) = &in_flight {
                if early.is_none() && !tick.is_finished() && !*was_catch_up {
                    self.observer.skipped(&tenant.name, next);
                }
                // (A catch-up tick in flight does this firing's work.)
                continue;
            }
            let is_catch_up = early.is_some();
            catch_up = None;
            // The planned time (the schedule's firing plus the offset), or
            // when a catch-up tick started.
            let fired_at = if is_catch_up { Utc::now() } else { next };
            self.observer.starting(&tenant, fired_at, is_catch_up);
            let (runtime, observer, tenant) = (self.runtime.clone(), Arc::clone(&self.observer), tenant.clone());
            let handle = self.ticks.spawn(async move {
                let tick = runtime.tick(&tenant).await;
                observer.finished(&tick, fired_at, is_catch_up);
                catch_up_at(&tick, Utc::now(), catching_up)
            });
            in_flight = Some((handle, is_catch_up));
        }
    }
}
