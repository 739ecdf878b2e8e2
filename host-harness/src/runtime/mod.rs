//! Runs the collector component for many tenants in one process.
//!
//! The component is compiled once (and cached on disk, see
//! [`compile_cache`]), linked once ([`InstancePre`](wasmtime::component::InstancePre)),
//! and instantiated fresh for every tick from wasmtime's pooling allocator
//! ([`engine`]), as Spin's cron trigger does per firing. Each instance gets
//! only its own tenant's config, key-value store and outbound allow-list
//! ([`instance`]), and runs under that tenant's limits ([`limits`]): linear
//! memory, guest CPU time (epoch interruption) and a wall-clock deadline for
//! the whole tick. A tenant that traps or exceeds a limit fails alone, with
//! [`HOST_FAILURE`] naming the limit ([`outcome`]).
//!
//! A `Runtime` is cheap to clone and shareable across tasks; ticks of
//! different tenants run concurrently, at most
//! [`Limits::max_concurrent_instances`] at a time (later ones wait for a
//! free slot).

pub mod compile_cache;
pub mod engine;
pub mod instance;
pub mod limits;
pub mod outcome;

pub use self::compile_cache::CompileCache;
pub use self::instance::{TickOptions, TickState};
pub use self::limits::EffectiveLimits;
pub use self::outcome::{TenantTick, HOST_FAILURE};
pub use crate::host::keyvalue::{KvFault, KvFaultHook, KvOp};
pub use crate::host::outbound::{OutboundSettings, TlsTrust};
pub use crate::limits::{
    Limits, StateLimits, DEFAULT_CPU_TIME, DEFAULT_MAX_CONCURRENT_INSTANCES, DEFAULT_MAX_WALL_DEADLINE,
    DEFAULT_MEMORY_BYTES, DEFAULT_REQUEST_TIMEOUT, DEFAULT_STATE_INSTANCE_BYTES, DEFAULT_STATE_KEYS,
    DEFAULT_STATE_VALUE_BYTES, DEFAULT_WALL_DEADLINE,
};
pub use crate::limits::{MAX_FIELDS_BYTES, MAX_RESOURCES};

use self::limits::Meter;
use self::outcome::{from_wit_check, from_wit_error, from_wit_report, host_failure, with_stderr, with_warnings};
use crate::bindings::CollectorHostPre;
use crate::host::outbound::{ConnectionPool, ConnectionStats, PoolLimits};
use crate::kv::Stores;
use crate::tenant::Tenant;
use onepassword_collector::error::CollectorError;
use onepassword_collector::report::TickReport;
use onepassword_collector::validate::{Check, Status};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;
use wasmtime::Engine;

/// Everything [`Runtime::with_options`] takes besides the component.
#[derive(Clone, Debug, Default)]
pub struct RuntimeOptions {
    /// The host's ceilings, which every tenant's own limits stay under.
    pub limits: Limits,
    /// Where the compiled component is cached (beside the `.wasm` by
    /// default).
    pub cache: CompileCache,
    /// Where tenants' requests may go; the default is https to public
    /// addresses only (see [`OutboundSettings`]).
    pub outbound: OutboundSettings,
    /// How many idle outbound connections are kept, and how long.
    pub pool: PoolLimits,
    /// How many tenants' SQLite files stay open across ticks (`None`:
    /// [`crate::kv::sqlite::DEFAULT_OPEN_FILES`]).
    pub open_store_files: Option<usize>,
}

/// The workspace's release build of the component.
pub fn default_component_path() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("wasm32-wasip2/release/onepassword_collector.wasm")
}

/// The compiled, linked component and its instance pool. Clones share them.
#[derive(Clone)]
pub struct Runtime {
    inner: Arc<Inner>,
}

struct Inner {
    engine: Engine,
    pre: CollectorHostPre<TickState>,
    limits: Limits,
    outbound: Arc<OutboundSettings>,
    /// One permit per pool slot: a tick holds one while its instance lives.
    slots: tokio::sync::Semaphore,
    cache_file: Option<PathBuf>,
    loaded_from_cache: bool,
    /// Tenants' key-value stores (shared Redis connections, SQLite files
    /// kept open across ticks).
    stores: Arc<Stores>,
    /// Idle outbound connections, shared by the tenants per destination.
    connections: Arc<ConnectionPool>,
}

impl Runtime {
    /// Compiles (or loads from the cache beside the `.wasm`) the component
    /// and links every import it may use. Tenants may call https URLs on
    /// public addresses only; [`Runtime::with_options`] takes other
    /// [`OutboundSettings`].
    pub fn new(component_path: &Path, limits: Limits) -> anyhow::Result<Runtime> {
        Runtime::with_options(component_path, RuntimeOptions { limits, ..RuntimeOptions::default() })
    }

    /// [`Runtime::new`] with a choice of compile cache and outbound rules.
    pub fn with_options(component_path: &Path, options: RuntimeOptions) -> anyhow::Result<Runtime> {
        let RuntimeOptions { limits, cache, outbound, pool, open_store_files } = options;
        anyhow::ensure!(limits.max_concurrent_instances > 0, "max_concurrent_instances must be at least 1");
        let engine = engine::new(&limits)?;
        let loaded = compile_cache::load(&engine, component_path, &cache)?;
        let linker = instance::linker(&engine)?;
        let pre = CollectorHostPre::new(linker.instantiate_pre(&loaded.component)?)?;
        let slots = tokio::sync::Semaphore::new(limits.max_concurrent_instances);
        Ok(Runtime {
            inner: Arc::new(Inner {
                engine,
                pre,
                limits,
                outbound: Arc::new(outbound),
                slots,
                cache_file: loaded.cache_file,
                loaded_from_cache: loaded.from_cache,
                stores: Arc::new(match open_store_files {
                    Some(n) => Stores::with_open_files(n),
                    None => Stores::default(),
                }),
                connections: Arc::new(ConnectionPool::new(pool)),
            }),
        })
    }

    /// The host's ceilings this runtime was built with.
    pub fn limits(&self) -> &Limits {
        &self.inner.limits
    }

    /// Where tenants' requests may go.
    pub fn outbound(&self) -> &OutboundSettings {
        &self.inner.outbound
    }

    /// Instances alive right now (ticks holding a pool slot).
    pub fn instances_in_use(&self) -> usize {
        self.inner.limits.max_concurrent_instances - self.inner.slots.available_permits()
    }

    /// Outbound connections opened and reused so far, and idle now.
    pub fn connection_stats(&self) -> ConnectionStats {
        self.inner.connections.stats()
    }

    /// The tenants' stores this runtime keeps open (how many SQLite files
    /// were opened, how many are open now).
    pub fn stores(&self) -> &Stores {
        &self.inner.stores
    }

    /// True when the compiled component came from the on-disk cache.
    pub fn loaded_from_cache(&self) -> bool {
        self.inner.loaded_from_cache
    }

    /// The cache file this runtime read or wrote (`None`: cache off).
    pub fn cache_file(&self) -> Option<&Path> {
        self.inner.cache_file.as_deref()
    }

    /// The limits a tenant's ticks run under (see [`Limits::for_tenant`]).
    pub fn effective_limits(&self, tenant: &Tenant) -> EffectiveLimits {
        self.inner.limits.for_tenant(tenant)
    }

    /// One tick for one tenant in a fresh instance.
    pub async fn tick(&self, tenant: &Tenant) -> TenantTick {
        self.tick_with(tenant, &TickOptions::default()).await
    }

    /// A tick with injected faults or a shifted clock (see [`TickOptions`]).
    /// Waits for a free instance slot first; a tick that traps or exceeds a
    /// limit ends in a [`HOST_FAILURE`] error naming what happened.
    pub async fn tick_with(&self, tenant: &Tenant, options: &TickOptions) -> TenantTick {
        let _slot = self.inner.slots.acquire().await.expect("the slot semaphore is never closed");
        let limits = self.effective_limits(tenant);
        let meter = Arc::new(Meter::default());
        let started = Instant::now();
        let run = self.inner.run(tenant, options, &limits, Arc::clone(&meter));
        let stopped = |message: String| {
            // What the guest wrote before it was stopped (a panic's message)
            // says why; hidden like the guest's own messages.
            let result = with_stderr(Err(host_failure(message)), meter.stderr.text());
            tenant.environment.hide_in_tick(result)
        };
        let result = match tokio::time::timeout(limits.wall_deadline, run).await {
            Ok(Ok(result)) => result,
            Ok(Err(trap)) => stopped(meter.explain(&trap, &limits)),
            Err(_) => stopped(format!(
                "wall deadline exceeded: the tick did not finish within {} ms of wall-clock time (limit wall_ms)",
                limits.wall_deadline.as_millis()
            )),
        };
        TenantTick {
            tenant: tenant.name.clone(),
            result,
            peak_memory_bytes: meter.peak_memory.load(Ordering::Relaxed),
            guest_cpu_ms: meter.cpu_used_us.load(Ordering::Relaxed) / 1000,
            host_elapsed_ms: started.elapsed().as_millis() as u64,
        }
    }

    /// Validate mode for one tenant: the component's checklist (nothing is
    /// pulled). A host failure becomes a failed "host" check; requests the
    /// host refused or whose TLS handshake failed, a failed "outbound" check
    /// naming the address, certificate problem and setting.
    pub async fn validate(&self, tenant: &Tenant) -> Vec<Check> {
        let _slot = self.inner.slots.acquire().await.expect("the slot semaphore is never closed");
        let limits = self.effective_limits(tenant);
        let meter = Arc::new(Meter::default());
        let run = self.inner.validate(tenant, &limits, Arc::clone(&meter));
        match tokio::time::timeout(limits.wall_deadline, run).await {
            Ok(Ok(checks)) => checks,
            // Named as a tick's failure is: the limit, if one was hit. What
            // a trap says spans lines (its wasm backtrace) and names the
            // guest's functions: made one inert line, as the guest's text.
            Ok(Err(trap)) => {
                let mut detail = meter.explain(&trap, &limits);
                if let Some(stderr) = meter.stderr.text() {
                    detail = format!("{detail}; the component wrote to stderr: {stderr}");
                }
                let detail = crate::guest_text::message(&detail);
                tenant.environment.hide_in_checks(vec![Check { name: "host".into(), status: Status::Fail, detail }])
            }
            Err(_) => {
                vec![Check { name: "host".into(), status: Status::Fail, detail: "wall deadline exceeded".into() }]
            }
        }
    }

    /// One tick per tenant, at most `concurrency` at once (each on a task of
    /// its own, so they spread over the tokio runtime's threads); results in
    /// the order of `tenants`. Must be awaited inside a tokio runtime.
    pub async fn tick_all(&self, tenants: &[Tenant], concurrency: usize) -> Vec<TenantTick> {
        let mut results: Vec<Option<TenantTick>> = vec![None; tenants.len()];
        let mut tasks = tokio::task::JoinSet::new();
        let mut index_of = HashMap::new();
        let mut next = 0;
        while next < tenants.len() || !tasks.is_empty() {
            while next < tenants.len() && tasks.len() < concurrency.max(1) {
                let runtime = self.clone();
                let tenant = tenants[next].clone();
                let task = tasks.spawn(async move { runtime.tick(&tenant).await });
                index_of.insert(task.id(), next);
                next += 1;
            }
            match tasks.join_next_with_id().await {
                Some(Ok((id, tick))) => results[index_of[&id]] = Some(tick),
                Some(Err(e)) => {
                    let i = index_of[&e.id()];
                    results[i] = Some(TenantTick {
                        tenant: tenants[i].name.clone(),
                        result: Err(host_failure(format!("the tick's task ended abnormally: {e}"))),
                        peak_memory_bytes: 0,
                        guest_cpu_ms: 0,
                        host_elapsed_ms: 0,
                    });
                }
                None => {}
            }
        }
        results.into_iter().map(|t| t.expect("every tenant ticked")).collect()
    }
}

impl Inner {
    async fn run(
        &self,
        tenant: &Tenant,
        options: &TickOptions,
        limits: &EffectiveLimits,
        meter: Arc<Meter>,
    ) -> anyhow::Result<Result<TickReport, CollectorError>> {
        let stderr = meter.stderr.clone();
        let mut store = self.new_store(tenant, options, limits, meter);
        let instance = self.pre.instantiate_async(&mut store).await?;
        let result = instance.onepassword_collector_runner().call_tick(&mut store).await?;
        // Why the host refused requests: the component only learns that it
        // was refused, the operator needs to know which setting allows it.
        let refusals = store.data().outbound_refusals();
        let result = result.map(|r| with_warnings(from_wit_report(r), refusals)).map_err(from_wit_error);
        let result = with_stderr(result, stderr.text());
        // The component quotes bad values; one that came from the
        // environment is shown by its variable's name instead.
        Ok(tenant.environment.hide_in_tick(result))
    }

    async fn validate(
        &self,
        tenant: &Tenant,
        limits: &EffectiveLimits,
        meter: Arc<Meter>,
    ) -> anyhow::Result<Vec<Check>> {
        let options = TickOptions::default();
        let stderr = meter.stderr.clone();
        let mut store = self.new_store(tenant, &options, limits, meter);
        let instance = self.pre.instantiate_async(&mut store).await?;
        let checks = instance.onepassword_collector_runner().call_validate(&mut store).await?;
        let mut checks: Vec<Check> = checks.into_iter().map(from_wit_check).collect();
        // As for a tick: the component's checks say "refused" or "TLS
        // error"; which address, certificate or setting is the host's to say.
        let refusals = store.data().outbound_refusals();
        if !refusals.is_empty() {
            let detail = crate::guest_text::message(&refusals.join("; "));
            checks.push(Check { name: "outbound".into(), status: Status::Fail, detail });
        }
        if let Some(text) = stderr.text() {
            let detail = crate::guest_text::message(&format!("the component wrote to stderr: {text}"));
            checks.push(Check { name: "stderr".into(), status: Status::Warn, detail });
        }
        Ok(tenant.environment.hide_in_checks(checks))
    }

    fn new_store(
        &self,
        tenant: &Tenant,
        options: &TickOptions,
        limits: &EffectiveLimits,
        meter: Arc<Meter>,
    ) -> wasmtime::Store<TickState> {
        let stores = Arc::clone(&self.stores);
        let host =
            instance::HostRules { outbound: Arc::clone(&self.outbound), connections: Arc::clone(&self.connections) };
        instance::new_store(&self.engine, tenant, options, limits, host, stores, meter)
    }
}
