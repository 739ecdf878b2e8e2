//! Runs the collector component for many tenants in one process.
//!
//! The component is compiled once (and cached on disk, see
//! [`CompileCache`]), linked once ([`InstancePre`](wasmtime::component::InstancePre)),
//! and instantiated fresh for every tick from wasmtime's pooling allocator,
//! as Spin's cron trigger does per firing. Each instance gets only its own
//! tenant's config, key-value file and outbound allow-list, and runs under
//! that tenant's limits: linear memory, guest CPU time (epoch interruption)
//! and a wall-clock deadline for the whole tick. A tenant that traps or
//! exceeds a limit fails alone, with [`HOST_FAILURE`] naming the limit.
//!
//! A `Runtime` is cheap to clone and shareable across tasks; ticks of
//! different tenants run concurrently, at most
//! [`Limits::max_concurrent_instances`] at a time (later ones wait for a
//! free slot).

use crate::kv::KvStore;
use crate::outbound::OutboundPolicy;
use crate::tenant::Tenant;
use anyhow::Context;
use onepassword_collector::error::{CollectorError, ErrorKind};
use onepassword_collector::report::{Outcome, ServiceReport, TickReport};
use onepassword_collector::validate::{Check, Status};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use wasmtime::component::{Component, HasSelf, Linker, Resource, ResourceTable};
use wasmtime::{
    CallHook, Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, ResourceLimiter, Store,
    UpdateDeadline,
};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "onepassword:collector/collector-host",
        imports: { default: trappable },
        exports: { default: async },
        with: {
            "wasi:keyvalue/store.bucket": super::Bucket,
            "wasi:keyvalue/atomics.cas": super::CasHandle,
        },
    });
}

use bindings::exports::onepassword::collector::runner as wit;
use bindings::wasi::config::store as config_store;
use bindings::wasi::keyvalue::atomics as kv_atomics;
use bindings::wasi::keyvalue::store as kv_store;

/// Id reported when the host, not the collector, ended a tick (trap,
/// exceeded limit, component missing an import).
pub const HOST_FAILURE: u32 = 900;

/// Default linear memory of one instance. A tick with three 1000-event
/// pages peaks at about 5–6 MiB (6.5 MiB with five pages per service,
/// without gzip), so this leaves more than twice that for larger events.
pub const DEFAULT_MEMORY_BYTES: usize = 16 << 20;
/// Default guest CPU time of one tick.
pub const DEFAULT_CPU_TIME: Duration = Duration::from_secs(5);
/// Default floor of a tick's wall-clock deadline: the component's default
/// tick deadline (30 s) plus four default request timeouts (30 s each: the
/// connect and first-byte waits of the last page's 1Password and Devo
/// requests).
pub const DEFAULT_WALL_DEADLINE: Duration = Duration::from_secs(150);
/// Default size of the instance pool.
pub const DEFAULT_MAX_CONCURRENT_INSTANCES: usize = 32;

/// How often the engine's epoch advances: the granularity of the CPU
/// deadline for guest code that makes no host call, and of the guest's
/// yields to other tasks.
const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Per-pool-slot room for what one instance of the component uses (it has
/// three core instances, one memory and two tables), with margin.
const CORE_INSTANCES_PER_COMPONENT: u32 = 8;
const MEMORIES_PER_COMPONENT: u32 = 2;
const TABLES_PER_COMPONENT: u32 = 4;
/// An instance may create this many core instances, tables and memories,
/// and grow a table to this many elements.
const MAX_INSTANCES_PER_STORE: usize = 32;
const MAX_TABLES_PER_STORE: usize = 32;
const MAX_MEMORIES_PER_STORE: usize = 8;
const MAX_TABLE_ELEMENTS: usize = 100_000;

/// Limits of every instance and the size of the instance pool. A tenant's
/// `[tenants.NAME.limits]` table overrides memory, CPU and wall time for
/// that tenant (see [`crate::tenant::TenantLimits`]).
#[derive(Clone, Debug)]
pub struct Limits {
    /// Linear memory one instance may hold, all its memories together.
    pub memory_bytes: usize,
    /// Upper bound of each of an outbound request's connect, first-byte and
    /// between-bytes waits.
    pub request_timeout: Duration,
    /// Time the guest may spend running WebAssembly during one tick,
    /// instantiation included. Time in host calls (waiting on the network,
    /// the key-value store) does not count. Checked at every host call and
    /// every [`EPOCH_TICK`] in between.
    pub cpu_time: Duration,
    /// Wall-clock deadline of a whole tick, instantiation to result. A
    /// tenant without its own `wall_ms` gets at least its component's tick
    /// deadline plus four request timeouts (see [`Runtime::effective_limits`]).
    pub wall_deadline: Duration,
    /// Instances alive at once (sizes the pooling allocator); ticks beyond
    /// it wait for a free slot.
    pub max_concurrent_instances: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory_bytes: DEFAULT_MEMORY_BYTES,
            request_timeout: Duration::from_secs(30),
            cpu_time: DEFAULT_CPU_TIME,
            wall_deadline: DEFAULT_WALL_DEADLINE,
            max_concurrent_instances: DEFAULT_MAX_CONCURRENT_INSTANCES,
        }
    }
}

/// Where the compiled component is cached between processes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum CompileCache {
    /// Beside the `.wasm`: `<dir>/<stem>.<key>.cwasm`.
    #[default]
    NextToComponent,
    /// In this folder (created if needed): `<dir>/<stem>.<key>.cwasm`.
    Dir(PathBuf),
    /// Compile every time.
    Off,
}

/// Everything [`Runtime::with_options`] takes besides the component.
#[derive(Clone, Debug, Default)]
pub struct RuntimeOptions {
    pub limits: Limits,
    pub cache: CompileCache,
}

/// The limits one tenant's ticks run under: its overrides, else the
/// runtime's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EffectiveLimits {
    pub memory_bytes: usize,
    pub cpu_time: Duration,
    pub wall_deadline: Duration,
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
    pre: bindings::CollectorHostPre<TickState>,
    limits: Limits,
    /// One permit per pool slot: a tick holds one while its instance lives.
    slots: tokio::sync::Semaphore,
    cache_file: Option<PathBuf>,
    loaded_from_cache: bool,
}

/// The key-value bucket resource handed to the guest.
pub struct Bucket;

/// A compare-and-swap in progress: the key and the value the guest saw.
pub struct CasHandle {
    key: String,
    seen: Option<Vec<u8>>,
}

/// Key-value operations a test can make fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KvOp {
    Open,
    Get,
    Set,
    CasRead,
    Swap,
}

/// What an injected key-value fault does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KvFault {
    /// The operation returns this store error to the guest.
    Error(String),
    /// The host stops the instance here (as a crash or a kill would).
    Stop,
}

/// Decides, per operation and key, whether to inject a fault (tests only).
pub type KvFaultHook = Arc<dyn Fn(KvOp, &str) -> Option<KvFault> + Send + Sync>;

/// How a tick runs beyond its tenant's config: the knobs of the
/// fault-injection tests.
#[derive(Clone, Default)]
pub struct TickOptions {
    pub kv_faults: Option<KvFaultHook>,
    /// Added to the wall clock the component sees, so tests can move time
    /// forward (past a back-off or a lease) without sleeping.
    pub clock_offset: Duration,
}

/// The host's wall clock, shifted by a fixed offset.
struct OffsetClock(Duration);

impl wasmtime_wasi::HostWallClock for OffsetClock {
    fn resolution(&self) -> Duration {
        Duration::from_nanos(1)
    }

    fn now(&self) -> Duration {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default() + self.0
    }
}

/// What a tick's limits observed; shared with the host so it can still be
/// read after a wall-clock timeout dropped the store.
#[derive(Default)]
struct Meter {
    peak_memory: AtomicU64,
    /// The largest total the instance asked for and was refused (0: none).
    memory_refused: AtomicU64,
    cpu_used_us: AtomicU64,
    cpu_exceeded: AtomicBool,
}

/// Enforces one tick's memory and CPU limits from inside its store.
struct Guard {
    meter: Arc<Meter>,
    memory_limit: usize,
    /// Linear memory of every memory of the store together.
    memory_total: usize,
    /// The last growth allowed, taken back if it then failed.
    last_growth: usize,
    cpu_budget: Duration,
    cpu_used: Duration,
    /// Set while guest code runs.
    running_since: Option<Instant>,
}

impl Guard {
    fn new(meter: Arc<Meter>, limits: &EffectiveLimits) -> Guard {
        Guard {
            meter,
            memory_limit: limits.memory_bytes,
            memory_total: 0,
            last_growth: 0,
            cpu_budget: limits.cpu_time,
            cpu_used: Duration::ZERO,
            running_since: None,
        }
    }

    /// The guest starts or resumes running.
    fn resume(&mut self) {
        if self.running_since.is_none() {
            self.running_since = Some(Instant::now());
        }
    }

    /// The guest stops running (returns, or calls the host): its time is
    /// added up and checked against the budget.
    fn pause(&mut self) -> wasmtime::Result<()> {
        if let Some(since) = self.running_since.take() {
            self.cpu_used += since.elapsed();
            self.meter.cpu_used_us.store(self.cpu_used.as_micros() as u64, Ordering::Relaxed);
        }
        self.check_cpu()
    }

    fn check_cpu(&self) -> wasmtime::Result<()> {
        if self.cpu_used > self.cpu_budget {
            self.meter.cpu_exceeded.store(true, Ordering::Relaxed);
            return Err(wasmtime::format_err!("CPU deadline exceeded"));
        }
        Ok(())
    }
}

impl ResourceLimiter for Guard {
    fn memory_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        let growth = desired.saturating_sub(current);
        let total = self.memory_total.saturating_add(growth);
        if total > self.memory_limit {
            self.meter.memory_refused.fetch_max(total as u64, Ordering::Relaxed);
            return Ok(false);
        }
        if maximum.is_some_and(|max| desired > max) {
            return Ok(false);
        }
        self.memory_total = total;
        self.last_growth = growth;
        self.meter.peak_memory.fetch_max(total as u64, Ordering::Relaxed);
        Ok(true)
    }

    fn memory_grow_failed(&mut self, _error: wasmtime::Error) -> wasmtime::Result<()> {
        self.memory_total = self.memory_total.saturating_sub(std::mem::take(&mut self.last_growth));
        Ok(())
    }

    fn table_growing(&mut self, _current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS && maximum.is_none_or(|max| desired <= max))
    }

    fn instances(&self) -> usize {
        MAX_INSTANCES_PER_STORE
    }

    fn tables(&self) -> usize {
        MAX_TABLES_PER_STORE
    }

    fn memories(&self) -> usize {
        MAX_MEMORIES_PER_STORE
    }
}

/// What the store of one tick holds.
pub struct TickState {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    table: ResourceTable,
    outbound: OutboundPolicy,
    kv_path: PathBuf,
    kv: Option<KvStore>,
    variables: BTreeMap<String, String>,
    guard: Guard,
    kv_faults: Option<KvFaultHook>,
}

impl WasiView for TickState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl WasiHttpView for TickState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView { ctx: &mut self.http, table: &mut self.table, hooks: &mut self.outbound }
    }
}

impl TickState {
    fn store(&mut self) -> Result<&mut KvStore, kv_store::Error> {
        if self.kv.is_none() {
            self.kv = Some(KvStore::open(&self.kv_path).map_err(kv_store::Error::Other)?);
        }
        Ok(self.kv.as_mut().expect("just opened"))
    }

    /// An injected fault for this operation: `Err` stops the instance.
    fn fault(&self, op: KvOp, key: &str) -> wasmtime::Result<Option<kv_store::Error>> {
        match self.kv_faults.as_ref().and_then(|hook| hook(op, key)) {
            None => Ok(None),
            Some(KvFault::Error(message)) => Ok(Some(kv_store::Error::Other(message))),
            Some(KvFault::Stop) => Err(wasmtime::format_err!("instance stopped by an injected fault at {op:?} {key}")),
        }
    }
}

/// The only bucket a component may open, as `key_value_stores = ["default"]` in Spin.
const BUCKET: &str = "default";

impl kv_store::Host for TickState {
    fn open(&mut self, identifier: String) -> wasmtime::Result<Result<Resource<Bucket>, kv_store::Error>> {
        if identifier != BUCKET {
            return Ok(Err(kv_store::Error::NoSuchStore));
        }
        if let Some(e) = self.fault(KvOp::Open, &identifier)? {
            return Ok(Err(e));
        }
        if let Err(e) = self.store() {
            return Ok(Err(e));
        }
        Ok(Ok(self.table.push(Bucket)?))
    }
}

impl kv_store::HostBucket for TickState {
    fn get(&mut self, _: Resource<Bucket>, key: String) -> wasmtime::Result<Result<Option<Vec<u8>>, kv_store::Error>> {
        if let Some(e) = self.fault(KvOp::Get, &key)? {
            return Ok(Err(e));
        }
        Ok(self.store().and_then(|kv| kv.get(BUCKET, &key).map_err(kv_store::Error::Other)))
    }

    fn set(
        &mut self,
        _: Resource<Bucket>,
        key: String,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), kv_store::Error>> {
        if let Some(e) = self.fault(KvOp::Set, &key)? {
            return Ok(Err(e));
        }
        Ok(self.store().and_then(|kv| kv.set(BUCKET, &key, &value).map_err(kv_store::Error::Other)))
    }

    fn delete(&mut self, _: Resource<Bucket>, key: String) -> wasmtime::Result<Result<(), kv_store::Error>> {
        Ok(self.store().and_then(|kv| kv.delete(BUCKET, &key).map_err(kv_store::Error::Other)))
    }

    fn exists(&mut self, _: Resource<Bucket>, key: String) -> wasmtime::Result<Result<bool, kv_store::Error>> {
        Ok(self.store().and_then(|kv| kv.get(BUCKET, &key).map(|v| v.is_some()).map_err(kv_store::Error::Other)))
    }

    fn list_keys(
        &mut self,
        _: Resource<Bucket>,
        _cursor: Option<String>,
    ) -> wasmtime::Result<Result<kv_store::KeyResponse, kv_store::Error>> {
        // One page holds every key: a tenant's store has a handful.
        Ok(self
            .store()
            .and_then(|kv| kv.keys(BUCKET).map_err(kv_store::Error::Other))
            .map(|keys| kv_store::KeyResponse { keys, cursor: None }))
    }

    fn drop(&mut self, bucket: Resource<Bucket>) -> wasmtime::Result<()> {
        self.table.delete(bucket)?;
        Ok(())
    }
}

impl kv_atomics::HostCas for TickState {
    fn new(
        &mut self,
        _: Resource<Bucket>,
        key: String,
    ) -> wasmtime::Result<Result<Resource<CasHandle>, kv_store::Error>> {
        if let Some(e) = self.fault(KvOp::CasRead, &key)? {
            return Ok(Err(e));
        }
        let seen = match self.store().and_then(|kv| kv.get(BUCKET, &key).map_err(kv_store::Error::Other)) {
            Ok(seen) => seen,
            Err(e) => return Ok(Err(e)),
        };
        Ok(Ok(self.table.push(CasHandle { key, seen })?))
    }

    fn current(&mut self, cas: Resource<CasHandle>) -> wasmtime::Result<Result<Option<Vec<u8>>, kv_store::Error>> {
        Ok(Ok(self.table.get(&cas)?.seen.clone()))
    }

    fn drop(&mut self, cas: Resource<CasHandle>) -> wasmtime::Result<()> {
        self.table.delete(cas)?;
        Ok(())
    }
}

impl kv_atomics::Host for TickState {
    fn increment(
        &mut self,
        _: Resource<Bucket>,
        key: String,
        delta: i64,
    ) -> wasmtime::Result<Result<i64, kv_store::Error>> {
        if let Some(e) = self.fault(KvOp::Set, &key)? {
            return Ok(Err(e));
        }
        Ok(self.store().and_then(|kv| kv.increment(BUCKET, &key, delta).map_err(kv_store::Error::Other)))
    }

    fn swap(&mut self, cas: Resource<CasHandle>, value: Vec<u8>) -> wasmtime::Result<Result<(), kv_atomics::CasError>> {
        let CasHandle { key, seen } = self.table.delete(cas)?;
        if let Some(e) = self.fault(KvOp::Swap, &key)? {
            return Ok(Err(kv_atomics::CasError::StoreError(e)));
        }
        let swapped = self
            .store()
            .and_then(|kv| kv.compare_and_swap(BUCKET, &key, seen.as_deref(), &value).map_err(kv_store::Error::Other));
        match swapped {
            Err(e) => Ok(Err(kv_atomics::CasError::StoreError(e))),
            Ok(true) => Ok(Ok(())),
            Ok(false) => {
                // Hand back a fresh handle on the current value, as the interface asks.
                let seen = match self.store().and_then(|kv| kv.get(BUCKET, &key).map_err(kv_store::Error::Other)) {
                    Ok(seen) => seen,
                    Err(e) => return Ok(Err(kv_atomics::CasError::StoreError(e))),
                };
                let handle = self.table.push(CasHandle { key, seen })?;
                Ok(Err(kv_atomics::CasError::CasFailed(handle)))
            }
        }
    }
}

impl config_store::Host for TickState {
    fn get(&mut self, key: String) -> wasmtime::Result<Result<Option<String>, config_store::Error>> {
        Ok(Ok(self.variables.get(&key).cloned()))
    }

    fn get_all(&mut self) -> wasmtime::Result<Result<Vec<(String, String)>, config_store::Error>> {
        Ok(Ok(self.variables.iter().map(|(k, v)| (k.clone(), v.clone())).collect()))
    }
}

impl bindings::fermyon::spin_cron::cron_types::Host for TickState {}

/// How one tenant's tick ended.
#[derive(Clone, Debug)]
pub struct TenantTick {
    pub tenant: String,
    pub result: Result<TickReport, CollectorError>,
    /// The most linear memory the instance held (all its memories), bytes.
    pub peak_memory_bytes: u64,
    /// Time the guest spent running WebAssembly (see [`Limits::cpu_time`]).
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
        line["peak_memory_bytes"] = self.peak_memory_bytes.into();
        line["guest_cpu_ms"] = self.guest_cpu_ms.into();
        line["host_elapsed_ms"] = self.host_elapsed_ms.into();
        line
    }
}

fn host_failure(message: String) -> CollectorError {
    CollectorError::new(ErrorKind::PrePullError, HOST_FAILURE, format!("the host stopped the tick: {message}"))
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / f64::from(1 << 20))
}

impl Runtime {
    /// Compiles (or loads from the cache beside the `.wasm`) the component
    /// and links every import it may use.
    pub fn new(component_path: &Path, limits: Limits) -> anyhow::Result<Runtime> {
        Runtime::with_options(component_path, RuntimeOptions { limits, ..RuntimeOptions::default() })
    }

    /// [`Runtime::new`] with a choice of compile cache.
    pub fn with_options(component_path: &Path, options: RuntimeOptions) -> anyhow::Result<Runtime> {
        let RuntimeOptions { limits, cache } = options;
        anyhow::ensure!(limits.max_concurrent_instances > 0, "max_concurrent_instances must be at least 1");
        let engine = Engine::new(&engine_config(&limits))?;
        let (component, cache_file, loaded_from_cache) = load_component(&engine, component_path, &cache)?;
        let mut linker = Linker::<TickState>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
        bindings::CollectorHost::add_to_linker::<TickState, HasSelf<TickState>>(&mut linker, |s| s)?;
        let pre = bindings::CollectorHostPre::new(linker.instantiate_pre(&component)?)?;
        start_epoch_ticker(&engine)?;
        let slots = tokio::sync::Semaphore::new(limits.max_concurrent_instances);
        Ok(Runtime { inner: Arc::new(Inner { engine, pre, limits, slots, cache_file, loaded_from_cache }) })
    }

    pub fn limits(&self) -> &Limits {
        &self.inner.limits
    }

    /// True when the compiled component came from the on-disk cache.
    pub fn loaded_from_cache(&self) -> bool {
        self.inner.loaded_from_cache
    }

    /// The cache file this runtime read or wrote (`None`: cache off).
    pub fn cache_file(&self) -> Option<&Path> {
        self.inner.cache_file.as_deref()
    }

    /// The limits a tenant's ticks run under. Without its own `wall_ms`, a
    /// tenant gets at least its component's tick deadline plus four request
    /// timeouts (the last page's 1Password and Devo requests, each waiting
    /// up to a timeout to connect and another for the first byte), so the
    /// host never cuts a tick the component itself would have finished.
    pub fn effective_limits(&self, tenant: &Tenant) -> EffectiveLimits {
        use onepassword_collector::config::{DEFAULT_REQUEST_TIMEOUT_MS, DEFAULT_TICK_DEADLINE_MS};
        let limits = &self.inner.limits;
        let own = &tenant.limits;
        let wall_deadline = own.wall_deadline.unwrap_or_else(|| {
            let millis = |key: &str, default: u64| {
                let value = tenant.variables.get(key).and_then(|v| v.trim().parse::<u64>().ok());
                Duration::from_millis(value.unwrap_or(default))
            };
            let tick_deadline = millis("tick_deadline_ms", DEFAULT_TICK_DEADLINE_MS);
            let request = millis("request_timeout_ms", DEFAULT_REQUEST_TIMEOUT_MS).min(limits.request_timeout);
            limits.wall_deadline.max(tick_deadline.saturating_add(request.saturating_mul(4)))
        });
        EffectiveLimits {
            memory_bytes: own.memory_bytes.unwrap_or(limits.memory_bytes),
            cpu_time: own.cpu_time.unwrap_or(limits.cpu_time),
            wall_deadline,
        }
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
        let result = match tokio::time::timeout(limits.wall_deadline, run).await {
            Ok(Ok(result)) => result,
            Ok(Err(trap)) => Err(host_failure(explain(&trap, &meter, &limits))),
            Err(_) => Err(host_failure(format!(
                "wall deadline exceeded: the tick did not finish within {} ms of wall-clock time (limit wall_ms)",
                limits.wall_deadline.as_millis()
            ))),
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
    /// pulled). A host failure becomes a failed "host" check.
    pub async fn validate(&self, tenant: &Tenant) -> Vec<Check> {
        let _slot = self.inner.slots.acquire().await.expect("the slot semaphore is never closed");
        let limits = self.effective_limits(tenant);
        match tokio::time::timeout(limits.wall_deadline, self.inner.validate(tenant, &limits)).await {
            Ok(Ok(checks)) => checks,
            Ok(Err(trap)) => vec![Check { name: "host".into(), status: Status::Fail, detail: format!("{trap:#}") }],
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
        let mut store = self.new_store(tenant, options, limits, meter);
        let instance = self.pre.instantiate_async(&mut store).await?;
        let result = instance.onepassword_collector_runner().call_tick(&mut store).await?;
        Ok(result.map(from_wit_report).map_err(from_wit_error))
    }

    async fn validate(&self, tenant: &Tenant, limits: &EffectiveLimits) -> anyhow::Result<Vec<Check>> {
        let mut store = self.new_store(tenant, &TickOptions::default(), limits, Arc::new(Meter::default()));
        let instance = self.pre.instantiate_async(&mut store).await?;
        let checks = instance.onepassword_collector_runner().call_validate(&mut store).await?;
        Ok(checks
            .into_iter()
            .map(|c| Check {
                name: c.name,
                status: match c.status {
                    wit::CheckStatus::Pass => Status::Pass,
                    wit::CheckStatus::Warn => Status::Warn,
                    wit::CheckStatus::Fail => Status::Fail,
                },
                detail: c.detail,
            })
            .collect())
    }

    /// A store for one instance of the tenant: its config, key-value file,
    /// allow-list, limits and clock.
    fn new_store(
        &self,
        tenant: &Tenant,
        options: &TickOptions,
        limits: &EffectiveLimits,
        meter: Arc<Meter>,
    ) -> Store<TickState> {
        let state = TickState {
            wasi: WasiCtx::builder().inherit_stderr().wall_clock(OffsetClock(options.clock_offset)).build(),
            http: WasiHttpCtx::new(),
            table: ResourceTable::new(),
            outbound: OutboundPolicy::for_urls(tenant.outbound_urls(), self.limits.request_timeout),
            kv_path: tenant.kv_path.clone(),
            kv: None,
            variables: tenant.variables.clone(),
            kv_faults: options.kv_faults.clone(),
            guard: Guard::new(meter, limits),
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.guard);
        // Guest time is the time between entering (or returning to) guest
        // code and leaving it; every host call, libcalls included, checks it.
        store.call_hook(|mut cx, hook| {
            let guard = &mut cx.data_mut().guard;
            match hook {
                CallHook::CallingWasm | CallHook::ReturningFromHost => {
                    guard.resume();
                    Ok(())
                }
                CallHook::ReturningFromWasm | CallHook::CallingHost => guard.pause(),
            }
        });
        // Guest code that calls nothing is checked at every epoch, and
        // yields to other tasks meanwhile.
        store.epoch_deadline_callback(|cx| {
            cx.data().guard.check_cpu()?;
            Ok(UpdateDeadline::Yield(1))
        });
        store.set_epoch_deadline(1);
        store
    }
}

/// Names the limit behind a failed instantiation or call, if one was hit.
fn explain(trap: &anyhow::Error, meter: &Meter, limits: &EffectiveLimits) -> String {
    if meter.cpu_exceeded.load(Ordering::Relaxed) {
        return format!(
            "CPU deadline exceeded: the guest ran for more than {} ms of CPU time (limit cpu_ms)",
            limits.cpu_time.as_millis()
        );
    }
    let refused = meter.memory_refused.load(Ordering::Relaxed);
    if refused > 0 {
        return format!(
            "memory limit exceeded: the instance needed {} of linear memory, over its limit of {} (limit memory_mib); {}",
            mib(refused),
            mib(limits.memory_bytes as u64),
            trap.root_cause()
        );
    }
    format!("{trap:#}")
}

fn engine_config(limits: &Limits) -> Config {
    let slots = u32::try_from(limits.max_concurrent_instances).unwrap_or(u32::MAX).min(100_000);
    let mut pool = PoolingAllocationConfig::new();
    pool.total_component_instances(slots)
        .total_core_instances(slots.saturating_mul(CORE_INSTANCES_PER_COMPONENT))
        .total_memories(slots.saturating_mul(MEMORIES_PER_COMPONENT))
        .total_tables(slots.saturating_mul(TABLES_PER_COMPONENT))
        // One fiber for instantiation, one for the call; margin for both.
        .total_stacks(slots.saturating_mul(2));
    let mut config = Config::new();
    config.epoch_interruption(true).allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    config
}

/// Advances the engine's epoch every [`EPOCH_TICK`] until the engine is gone.
fn start_epoch_ticker(engine: &Engine) -> anyhow::Result<()> {
    let engine = engine.weak();
    std::thread::Builder::new()
        .name("wasm-epoch".into())
        .spawn(move || loop {
            std::thread::sleep(EPOCH_TICK);
            match engine.upgrade() {
                Some(engine) => engine.increment_epoch(),
                None => return,
            }
        })
        .context("cannot start the epoch thread")?;
    Ok(())
}

/// Feeds whatever is hashed into SHA-256 (for the engine's compatibility hash).
struct Sha256Hasher(Sha256);

impl Hasher for Sha256Hasher {
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    fn finish(&self) -> u64 {
        0
    }
}

/// Identifies a compiled component: the `.wasm` bytes, the wasmtime version
/// and every engine setting that shapes compiled code.
fn cache_key(engine: &Engine, wasm: &[u8]) -> String {
    let mut hasher = Sha256Hasher(Sha256::new());
    hasher.0.update(b"host-harness compiled component v1\0");
    hasher.0.update(Sha256::digest(wasm));
    engine.precompile_compatibility_hash().hash(&mut hasher);
    hasher.0.finalize()[..16].iter().map(|b| format!("{b:02x}")).collect()
}

/// Length of the SHA-256 of the serialized component at the end of a cache file.
const CHECKSUM_LEN: usize = 32;

fn load_component(
    engine: &Engine,
    path: &Path,
    cache: &CompileCache,
) -> anyhow::Result<(Component, Option<PathBuf>, bool)> {
    let wasm = std::fs::read(path).with_context(|| {
        format!(
            "cannot load component {} (build it with: cargo build --release --target wasm32-wasip2 -p onepassword-collector)",
            path.display()
        )
    })?;
    let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("component");
    let name = format!("{stem}.{}.cwasm", cache_key(engine, &wasm));
    let file = match cache {
        CompileCache::Off => None,
        CompileCache::NextToComponent => Some(path.parent().unwrap_or(Path::new(".")).join(name)),
        CompileCache::Dir(dir) => Some(dir.join(name)),
    };
    if let Some(component) = file.as_deref().and_then(|f| read_cache(engine, f)) {
        return Ok((component, file, true));
    }
    let component = Component::from_binary(engine, &wasm)
        .map_err(anyhow::Error::from)
        .with_context(|| format!("cannot compile component {}", path.display()))?;
    if let Some(file) = &file {
        if let Err(e) = write_cache(&component, file, stem) {
            eprintln!("host-harness: compiled component not cached at {}: {e:#}", file.display());
        }
    }
    Ok((component, file, false))
}

/// The cached component, or `None` when the file is missing, damaged or
/// made by an incompatible engine (it is then compiled and written anew).
fn read_cache(engine: &Engine, file: &Path) -> Option<Component> {
    let bytes = std::fs::read(file).ok()?;
    let (serialized, checksum) = bytes.split_at(bytes.len().checked_sub(CHECKSUM_LEN)?);
    if Sha256::digest(serialized).as_slice() != checksum {
        return None;
    }
    // SAFETY: `deserialize` runs the native code in these bytes. They are
    // exactly what `Component::serialize` wrote for this `.wasm` and this
    // engine configuration (the file name is their hash, wasmtime checks
    // version and settings again) and not altered since (checksum); the
    // cache folder is trusted like the harness binary itself.
    unsafe { Component::deserialize(engine, serialized) }.ok()
}

/// Writes the cache file atomically (temporary file, then rename) and
/// removes stale cache files of the same component name.
fn write_cache(component: &Component, file: &Path, stem: &str) -> anyhow::Result<()> {
    let mut bytes = component.serialize().map_err(anyhow::Error::from)?;
    let checksum = Sha256::digest(&bytes);
    bytes.extend_from_slice(&checksum);
    let dir = file.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
    let tmp = file.with_extension(format!("cwasm.{}-{nanos}.tmp", std::process::id()));
    std::fs::write(&tmp, &bytes).with_context(|| format!("cannot write {}", tmp.display()))?;
    if let Err(e) = std::fs::rename(&tmp, file) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("cannot rename {} to {}", tmp.display(), file.display()));
    }
    let keep = file.file_name();
    let prefix = format!("{stem}.");
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = entry.file_name();
        let stale = name.to_str().is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".cwasm"));
        if stale && Some(name.as_os_str()) != keep {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    Ok(())
}

fn from_wit_error(e: wit::CollectorError) -> CollectorError {
    let kind = CollectorError::kind_from_str(&e.kind).unwrap_or(ErrorKind::DeliveryError);
    CollectorError { id: e.id, kind, message: e.message }
}

fn from_wit_report(r: wit::TickReport) -> TickReport {
    TickReport {
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
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(memory_bytes: usize) -> EffectiveLimits {
        EffectiveLimits { memory_bytes, cpu_time: Duration::from_millis(50), wall_deadline: Duration::from_secs(1) }
    }

    fn state(kv_path: PathBuf) -> TickState {
        TickState {
            wasi: WasiCtx::builder().build(),
            http: WasiHttpCtx::new(),
            table: ResourceTable::new(),
            outbound: OutboundPolicy::for_urls([], Duration::from_secs(1)),
            kv_path,
            kv: None,
            variables: BTreeMap::new(),
            guard: Guard::new(Arc::default(), &limits(1 << 20)),
            kv_faults: None,
        }
    }

    #[test]
    fn only_the_default_bucket_opens_and_only_on_the_tenants_own_file() {
        let dir = tempfile::tempdir().unwrap();
        let mine = dir.path().join("mine.sqlite");
        let other = dir.path().join("other.sqlite");
        KvStore::open(&other).unwrap().set(BUCKET, "service/audit", b"theirs").unwrap();
        let mut s = state(mine.clone());
        for name in ["other", "other.sqlite", other.to_str().unwrap(), "../other", "", "Default"] {
            let opened = kv_store::Host::open(&mut s, name.into()).unwrap();
            assert!(matches!(opened, Err(kv_store::Error::NoSuchStore)), "{name:?} opened");
        }
        assert!(!mine.exists(), "nothing opened yet");
        let bucket = kv_store::Host::open(&mut s, BUCKET.into()).unwrap().unwrap();
        let got = kv_store::HostBucket::get(&mut s, Resource::new_borrow(bucket.rep()), "service/audit".into());
        assert_eq!(got.unwrap().unwrap(), None, "another tenant's value is not visible");
        assert!(mine.exists());
        assert_eq!(KvStore::open(&other).unwrap().get(BUCKET, "service/audit").unwrap(), Some(b"theirs".to_vec()));
    }

    #[test]
    fn the_guard_counts_every_memory_and_takes_back_failed_growth() {
        let meter = Arc::new(Meter::default());
        let mut g = Guard::new(Arc::clone(&meter), &limits(4 << 20));
        assert!(g.memory_growing(0, 2 << 20, None).unwrap());
        assert!(g.memory_growing(0, 1 << 20, None).unwrap(), "a second memory");
        assert!(!g.memory_growing(2 << 20, 4 << 20, None).unwrap(), "3 + 2 MiB is over 4 MiB");
        assert_eq!(meter.memory_refused.load(Ordering::Relaxed), 5 << 20);
        assert!(g.memory_growing(1 << 20, 2 << 20, None).unwrap());
        g.memory_grow_failed(wasmtime::format_err!("no")).unwrap();
        assert!(g.memory_growing(2 << 20, 3 << 20, None).unwrap(), "the failed growth was given back");
        assert!(!g.memory_growing(1 << 20, 2 << 20, Some(1 << 20)).unwrap(), "the memory's own maximum");
        assert_eq!(meter.peak_memory.load(Ordering::Relaxed), 4 << 20);
    }

    #[test]
    fn the_guard_counts_only_time_in_guest_code() {
        let meter = Arc::new(Meter::default());
        let mut g = Guard::new(Arc::clone(&meter), &limits(1 << 20));
        g.resume();
        std::thread::sleep(Duration::from_millis(20));
        g.pause().unwrap();
        std::thread::sleep(Duration::from_millis(60)); // in the host: not counted
        g.resume();
        std::thread::sleep(Duration::from_millis(40));
        let e = g.pause().unwrap_err();
        assert!(e.to_string().contains("CPU deadline"), "{e}");
        assert!(meter.cpu_exceeded.load(Ordering::Relaxed));
        let used = meter.cpu_used_us.load(Ordering::Relaxed);
        assert!((60_000..120_000).contains(&used), "{used} µs");
    }
}
