//! One instance of the component for one tick of one tenant: the data its
//! store holds (WASI, wasi-http with the tenant's outbound policy, the
//! tenant's key-value store and variables, the limit guard), how that store
//! is set up (limits, CPU accounting hooks, clock), and the linker that wires
//! every import to its host module.

use super::limits::{EffectiveLimits, Guard, Meter};
use crate::bindings;
use crate::host::keyvalue::{self, KeyValue, KeyValueCtx, KvFaultHook};
use crate::host::outbound::{ConnectionPool, OutboundPolicy, OutboundSettings};
use crate::host::variables::{self, ConfigVars};
use crate::kv::{KvBackendFactory, Stores};
#[cfg(test)]
use crate::limits::{Limits, MAX_RESOURCES};
use crate::tenant::Tenant;
use std::sync::Arc;
use std::time::Duration;
use wasmtime::component::{HasSelf, Linker, ResourceTable};
use wasmtime::{CallHook, Engine, Store, UpdateDeadline};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

/// How a tick runs beyond its tenant's config: the knobs of the
/// fault-injection tests.
#[derive(Clone, Default)]
pub struct TickOptions {
    /// Faults to inject into the tenant's key-value calls.
    pub kv_faults: Option<KvFaultHook>,
    /// Opens the tenant's store instead of its `kv`: a test's own backend
    /// (the test kit's `spin_redis`, which behaves as Spin's Redis store).
    pub kv_backend: Option<KvBackendFactory>,
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
    kv: KeyValueCtx,
    config: ConfigVars,
    guard: Guard,
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
    /// Why the host refused this instance's requests, if it did.
    pub(crate) fn outbound_refusals(&self) -> Vec<String> {
        self.outbound.refusals.list()
    }
}

// The cron trigger's types interface has no functions: linking it only
// satisfies the import.
impl bindings::fermyon::spin_cron::cron_types::Host for TickState {}

/// Links every import the component may use: WASI and wasi-http from
/// wasmtime's crates (`wasi:io/error` from [`crate::host::io_error`]),
/// key-value and config from [`crate::host`].
pub(crate) fn linker(engine: &Engine) -> anyhow::Result<Linker<TickState>> {
    let mut linker = Linker::<TickState>::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    // Its `wasi:io/error` hands the guest the host's backtraces.
    crate::host::io_error::add_to_linker(&mut linker)?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
    keyvalue::add_to_linker(&mut linker, |s| KeyValue { ctx: &mut s.kv, table: &mut s.table })?;
    variables::add_to_linker(&mut linker, |s| &mut s.config)?;
    bindings::fermyon::spin_cron::cron_types::add_to_linker::<TickState, HasSelf<TickState>>(&mut linker, |s| s)?;
    Ok(linker)
}

/// What the operator set for every tenant alike besides the limits: the
/// outbound rules.
pub(crate) struct HostRules {
    pub outbound: Arc<OutboundSettings>,
    /// The runtime's idle outbound connections.
    pub connections: Arc<ConnectionPool>,
}

/// A store for one instance of the tenant: its config, key-value store,
/// allow-list, limits (`limits` its own, `host` the runtime's) and clock.
pub(crate) fn new_store(
    engine: &Engine,
    tenant: &Tenant,
    options: &TickOptions,
    limits: &EffectiveLimits,
    host: HostRules,
    stores: Arc<Stores>,
    meter: Arc<Meter>,
) -> Store<TickState> {
    let mut table = ResourceTable::new();
    table.set_max_capacity(limits.resources);
    let state = TickState {
        // Not the host's stderr: what the guest writes is kept, and shown
        // cleaned with the tick's result (host/stderr.rs).
        wasi: WasiCtx::builder().stderr(meter.stderr.clone()).wall_clock(OffsetClock(options.clock_offset)).build(),
        http: {
            let mut http = WasiHttpCtx::new();
            http.set_field_size_limit(limits.fields_bytes);
            http
        },
        table,
        outbound: OutboundPolicy::for_urls(tenant.outbound_urls(), host.outbound, limits.request_timeout)
            .with_pool(host.connections),
        kv: KeyValueCtx::new(stores, tenant.kv.clone(), limits.state, options.kv_faults.clone())
            .with_backend(options.kv_backend.clone()),
        config: ConfigVars(tenant.variables.clone()),
        guard: Guard::new(meter, limits),
    };
    let mut store = Store::new(engine, state);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tenant::TenantLimits;

    #[test]
    fn an_instance_holds_a_bounded_number_of_resources() {
        let host = Limits { max_concurrent_instances: 1, ..Limits::default() };
        let engine = super::super::engine::new(&host).unwrap();
        let tenant = Tenant {
            name: "t".into(),
            schedule: "* * * * * *".into(),
            spread_firings: true,
            kv: std::path::PathBuf::from("/nowhere/t.sqlite").into(),
            variables: Default::default(),
            environment: Default::default(),
            allowed_outbound_hosts: None,
            limits: TenantLimits::default(),
        };
        let limits = host.for_tenant(&tenant);
        let meter = Arc::new(Meter::default());
        let rules = HostRules { outbound: Arc::default(), connections: Arc::default() };
        let mut store = new_store(&engine, &tenant, &TickOptions::default(), &limits, rules, Arc::default(), meter);
        let table = &mut store.data_mut().table;
        for _ in 0..MAX_RESOURCES {
            table.push(()).unwrap();
        }
        assert!(table.push(()).is_err(), "one resource more than the table may hold");
    }
}
