//! Shared set-up for the end-to-end tests: the real component under the
//! harness's runtime, against the loopback emulators.

use harness_test_kit::emulator::{
    tenant_variables, Dataset, DevoEmulator, DevoOptions, OnePasswordEmulator, OnePasswordOptions,
};
use host_harness::runtime::{default_component_path, Limits, Runtime, TenantTick, TickOptions};
use host_harness::tenant::Tenant;
use onepassword_collector::service::{ApiVersion, Service};
use std::sync::OnceLock;

pub const OP_TOKEN: &str = "e2e-op-token-DO-NOT-LEAK";
pub const DEVO_TOKEN: &str = "e2eDevoTokenDoNotLeak0123456789ab";
pub const DEVO_DOMAIN: &str = "e2e";

/// The component is compiled once per test binary.
pub fn runtime() -> &'static Runtime {
    static RUNTIME: OnceLock<Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        let path = default_component_path();
        assert!(
            path.exists(),
            "{} is missing: run `cargo build --release --target wasm32-wasip2 -p onepassword-collector` first (scripts/test.sh does)",
            path.display()
        );
        // The emulators are plain http on loopback: allowed here only.
        harness_test_kit::loopback::runtime(&path, Limits::default()).expect("component loads")
    })
}

pub struct Fixture {
    pub dataset: Dataset,
    pub op: OnePasswordEmulator,
    pub devo: std::sync::Arc<DevoEmulator>,
    pub state: tempfile::TempDir,
    pub tenant: Tenant,
    /// How far ahead of the real clock the component's clock is, in
    /// seconds: tests move time past back-offs and leases without sleeping.
    pub clock: std::cell::Cell<u64>,
    /// What every tick of the fixture runs with besides its clock (the
    /// store's backend: [`Fixture::on_spin_redis`]).
    pub options: TickOptions,
}

impl Fixture {
    /// `per_service` events per service within the default 24 h look-back.
    pub fn new(per_service: usize, seed: u64) -> Fixture {
        let now = chrono::Utc::now();
        let dataset =
            Dataset::generate(seed, per_service, now - chrono::Duration::hours(20), chrono::Duration::hours(19));
        let op = OnePasswordEmulator::start(OnePasswordOptions::new(OP_TOKEN, dataset.clone())).unwrap();
        let devo = std::sync::Arc::new(
            DevoEmulator::start(DevoOptions { domain: DEVO_DOMAIN.into(), token: DEVO_TOKEN.into() }).unwrap(),
        );
        let state = tempfile::tempdir().unwrap();
        let tenant = Tenant {
            name: "e2e".into(),
            schedule: "* * * * * *".into(),
            spread_firings: true,
            kv: state.path().join("e2e.sqlite").into(),
            variables: tenant_variables(&op, OP_TOKEN, &devo, DEVO_DOMAIN, DEVO_TOKEN),
            environment: Default::default(),
            allowed_outbound_hosts: None,
            limits: Default::default(),
        };
        Fixture { dataset, op, devo, state, tenant, clock: std::cell::Cell::new(0), options: TickOptions::default() }
    }

    pub fn set(&mut self, key: &str, value: &str) {
        self.tenant.variables.insert(key.into(), value.into());
    }

    /// One tick at the fixture's clock.
    pub fn tick(&self) -> TenantTick {
        self.tick_with(&host_harness::runtime::TickOptions::default())
    }

    /// One tick at the fixture's clock on `runtime`.
    pub fn tick_on(&self, runtime: &Runtime) -> TenantTick {
        block_on(runtime.tick_with(&self.tenant, &self.options_at(self.clock.get())))
    }

    /// The fixture's options, with the clock `seconds` ahead.
    pub fn options_at(&self, seconds: u64) -> TickOptions {
        TickOptions { clock_offset: std::time::Duration::from_secs(seconds), ..self.options.clone() }
    }

    /// Moves the component's clock forward.
    pub fn advance(&self, seconds: u64) {
        self.clock.set(self.clock.get() + seconds);
    }

    /// Ticks, each a minute after the last, until every service is caught
    /// up with no error (or `max` ticks); returns the ticks run.
    pub fn drain(&self, max: usize) -> usize {
        self.drain_on(runtime(), max)
    }

    /// [`Fixture::drain`] on `runtime`.
    pub fn drain_on(&self, runtime: &Runtime, max: usize) -> usize {
        for n in 1..=max {
            let t = self.tick_on(runtime);
            let report = t.result.as_ref().unwrap_or_else(|e| panic!("tick failed: {e}"));
            assert!(report.ok(), "{}", t.to_json());
            self.advance(60);
            if report
                .services
                .iter()
                .all(|s| !s.has_more && s.outcome != onepassword_collector::report::Outcome::Deferred)
            {
                return n;
            }
        }
        panic!("not caught up after {max} ticks");
    }

    /// Like `drain` after a failure: waits five minutes before each tick
    /// (past any back-off) and tolerates errors until caught up.
    pub fn recover(&self, max: usize) {
        for _ in 0..max {
            self.advance(300);
            let t = self.tick();
            if let Ok(report) = &t.result {
                if report.ok()
                    && report
                        .services
                        .iter()
                        .all(|s| !s.has_more && s.outcome != onepassword_collector::report::Outcome::Deferred)
                {
                    return;
                }
            }
        }
        panic!("not caught up after {max} ticks");
    }

    /// Asserts that Devo holds every served event of every service exactly
    /// once, under its tag, equal as JSON to what 1Password served.
    pub fn assert_all_delivered_once(&self, version: ApiVersion) {
        for service in Service::ALL {
            let served = self.dataset.values_for(service, version);
            let received = self.devo.event_values(service.default_tag());
            assert_eq!(received.len(), served.len(), "{service}: count");
            assert_eq!(received, served, "{service}: events differ from what was served (or their order)");
        }
    }
}

/// The tokio runtime every tick of a test binary runs on (tests are plain
/// #[test]s so the blocking emulators and the async host never share a
/// thread pool). One for all: the runtime's Redis connections live on it.
fn tokio_runtime() -> &'static tokio::runtime::Runtime {
    static TOKIO: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    TOKIO.get_or_init(|| tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap())
}

/// Runs a future on the tests' tokio runtime (from any thread).
pub fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio_runtime().block_on(future)
}

/// One tick.
pub fn tick(tenant: &Tenant) -> TenantTick {
    block_on(runtime().tick(tenant))
}

/// A printed tick must never carry a secret.
pub fn assert_no_secrets(text: &str) {
    assert!(!text.contains(OP_TOKEN), "1Password token leaked: {text}");
    assert!(!text.contains(DEVO_TOKEN), "Devo token leaked: {text}");
}

/// One tick with options (faults, clock offset).
pub fn tick_with(tenant: &Tenant, options: &host_harness::runtime::TickOptions) -> TenantTick {
    block_on(runtime().tick_with(tenant, options))
}

/// Options whose clock is `seconds` ahead.
pub fn later(seconds: u64) -> host_harness::runtime::TickOptions {
    host_harness::runtime::TickOptions { clock_offset: std::time::Duration::from_secs(seconds), ..Default::default() }
}

impl Fixture {
    /// A tick with faults; the clock is the fixture's, and so is the
    /// store's backend unless `options` has one.
    pub fn tick_with(&self, options: &host_harness::runtime::TickOptions) -> TenantTick {
        let options = host_harness::runtime::TickOptions {
            clock_offset: std::time::Duration::from_secs(self.clock.get()),
            kv_backend: options.kv_backend.clone().or_else(|| self.options.kv_backend.clone()),
            ..options.clone()
        };
        tick_with(&self.tenant, &options)
    }

    /// The service's state record as stored in the tenant's store.
    pub fn state(&self, service: Service) -> Option<onepassword_collector::state::ServiceState> {
        let key = onepassword_collector::state::ServiceState::key(service);
        let bytes = block_on(async {
            let mut kv = host_harness::kv::Stores::default().open(&self.tenant.kv, "default").await.unwrap();
            kv.get(&key).await.unwrap()
        })?;
        Some(onepassword_collector::state::ServiceState::decode(service, &bytes).unwrap())
    }

    /// Keeps the tenant's state in `server`'s Redis (database 0, the
    /// default prefix) instead of a SQLite file.
    pub fn on_redis(&mut self, server: &harness_test_kit::redis_server::RedisServer) {
        let prefix = format!("onepassword-collector/{}/", self.tenant.name);
        let location = host_harness::kv::RedisLocation::new(&server.url(0), &prefix).unwrap();
        self.tenant.kv = host_harness::kv::KvLocation::Redis(location);
    }

    /// Like [`Fixture::on_redis`], but every tick's store behaves exactly
    /// like Spin's Redis store (`harness_test_kit::spin_redis`: every swap
    /// answers "failed", also those that wrote). The records are where
    /// `on_redis` keeps them (the harness's Redis store keeps bucket
    /// `default` under `<prefix>default/`), so `state` and `status` read
    /// them as usual. Returns what the swaps did.
    pub fn on_spin_redis(
        &mut self,
        server: &harness_test_kit::redis_server::RedisServer,
    ) -> std::sync::Arc<harness_test_kit::spin_redis::SwapCounts> {
        self.on_redis(server);
        let counts = std::sync::Arc::default();
        let prefix = format!("onepassword-collector/{}/default/", self.tenant.name);
        let factory = harness_test_kit::spin_redis::SpinRedisStore::factory(
            &server.url(0),
            &prefix,
            std::sync::Arc::clone(&counts),
        );
        self.options.kv_backend = Some(factory);
        counts
    }
}
