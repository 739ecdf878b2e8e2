//! Runs the collector component: compiled and linked once, instantiated
//! fresh for every tick with the tenant's own config, key-value file and
//! outbound allow-list (as Spin's cron trigger does per firing).

use crate::kv::KvStore;
use crate::outbound::OutboundPolicy;
use crate::tenant::Tenant;
use anyhow::Context;
use onepassword_collector::error::{CollectorError, ErrorKind};
use onepassword_collector::report::{Outcome, ServiceReport, TickReport};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use wasmtime::component::{Component, HasSelf, Linker, Resource, ResourceTable};
use wasmtime::{Engine, Store, StoreLimits, StoreLimitsBuilder};
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

/// Per-instance limits.
#[derive(Clone, Debug)]
pub struct Limits {
    pub memory_bytes: usize,
    pub request_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { memory_bytes: 64 << 20, request_timeout: Duration::from_secs(30) }
    }
}

/// The workspace's release build of the component.
pub fn default_component_path() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("wasm32-wasip2/release/onepassword_collector.wasm")
}

pub struct Runtime {
    engine: Engine,
    pre: bindings::CollectorHostPre<TickState>,
    limits: Limits,
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

/// What the store of one tick holds.
pub struct TickState {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    table: ResourceTable,
    outbound: OutboundPolicy,
    kv_path: PathBuf,
    kv: Option<KvStore>,
    variables: BTreeMap<String, String>,
    limits: StoreLimits,
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
}

impl TenantTick {
    /// True when the tick ran and every service finished without error.
    pub fn ok(&self) -> bool {
        self.result.as_ref().is_ok_and(TickReport::ok)
    }

    /// The one-line JSON the `tick` command prints.
    pub fn to_json(&self) -> serde_json::Value {
        match &self.result {
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
        }
    }
}

impl Runtime {
    /// Compiles the component and links every import it may use.
    pub fn new(component_path: &Path, limits: Limits) -> anyhow::Result<Runtime> {
        let config = wasmtime::Config::new();
        let engine = Engine::new(&config)?;
        let component = Component::from_file(&engine, component_path).map_err(anyhow::Error::from).with_context(|| {
            format!(
                "cannot load component {} (build it with: cargo build --release --target wasm32-wasip2 -p onepassword-collector)",
                component_path.display()
            )
        })?;
        let mut linker = Linker::<TickState>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
        bindings::CollectorHost::add_to_linker::<TickState, HasSelf<TickState>>(&mut linker, |s| s)?;
        let pre = bindings::CollectorHostPre::new(linker.instantiate_pre(&component)?)?;
        Ok(Runtime { engine, pre, limits })
    }

    /// One tick for one tenant in a fresh instance.
    pub async fn tick(&self, tenant: &Tenant) -> TenantTick {
        self.tick_with(tenant, &TickOptions::default()).await
    }

    /// A tick with injected faults or a shifted clock (see [`TickOptions`]).
    pub async fn tick_with(&self, tenant: &Tenant, options: &TickOptions) -> TenantTick {
        let result = match self.run(tenant, options).await {
            Ok(r) => r,
            Err(trap) => Err(CollectorError::new(
                ErrorKind::PrePullError,
                HOST_FAILURE,
                format!("the host stopped the tick: {trap:#}"),
            )),
        };
        TenantTick { tenant: tenant.name.clone(), result }
    }

    async fn run(&self, tenant: &Tenant, options: &TickOptions) -> anyhow::Result<Result<TickReport, CollectorError>> {
        let state = TickState {
            wasi: WasiCtx::builder().inherit_stderr().wall_clock(OffsetClock(options.clock_offset)).build(),
            http: WasiHttpCtx::new(),
            table: ResourceTable::new(),
            outbound: OutboundPolicy::for_urls(tenant.outbound_urls(), self.limits.request_timeout),
            kv_path: tenant.kv_path.clone(),
            kv: None,
            variables: tenant.variables.clone(),
            kv_faults: options.kv_faults.clone(),
            limits: StoreLimitsBuilder::new().memory_size(self.limits.memory_bytes).instances(8).build(),
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limits);
        let instance = self.pre.instantiate_async(&mut store).await?;
        let result = instance.onepassword_collector_runner().call_tick(&mut store).await?;
        Ok(result.map(from_wit_report).map_err(from_wit_error))
    }
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
