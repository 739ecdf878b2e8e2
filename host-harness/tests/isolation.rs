//! Many tenants in one runtime: each has its own allow-list, checkpoints and
//! limits, fails alone, and 200 of them tick concurrently. Also the on-disk
//! cache of the compiled component.
//!
//! Needs the release build of the component:
//! `cargo build --release --target wasm32-wasip2 -p onepassword-collector`.

use harness_test_kit::emulator::{
    tenant_variables, Dataset, DevoEmulator, DevoOptions, OnePasswordEmulator, OnePasswordOptions, OpFault,
};
use harness_test_kit::loopback;
use host_harness::kv::SqliteStore;
use host_harness::runtime::{
    default_component_path, CompileCache, Limits, Runtime, RuntimeOptions, TenantTick, DEFAULT_MEMORY_BYTES,
    HOST_FAILURE,
};
use host_harness::tenant::{Tenant, TenantLimits};
use onepassword_collector::report::Outcome;
use onepassword_collector::service::Service;
use onepassword_collector::state::ServiceState;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

const OP_TOKEN: &str = "isolation-op-token-DO-NOT-LEAK";
const DEVO_TOKEN: &str = "isolationDevoToken0123456789abcd";
const DEVO_DOMAIN: &str = "iso";

fn component() -> PathBuf {
    let path = default_component_path();
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --release --target wasm32-wasip2 -p onepassword-collector` first",
        path.display()
    );
    path
}

/// One runtime for the whole test binary, as one harness process has.
fn runtime() -> &'static Runtime {
    static RUNTIME: OnceLock<Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| loopback::runtime(&component(), Limits::default()).expect("component loads"))
}

fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap().block_on(future)
}

/// A 1Password emulator (every service holding `per_service` events from
/// the last day) and a Devo emulator.
struct Services {
    dataset: Dataset,
    op: OnePasswordEmulator,
    devo: DevoEmulator,
}

impl Services {
    fn start(per_service: usize, seed: u64) -> Services {
        let now = chrono::Utc::now();
        let dataset =
            Dataset::generate(seed, per_service, now - chrono::Duration::hours(20), chrono::Duration::hours(19));
        let op = OnePasswordEmulator::start(OnePasswordOptions::new(OP_TOKEN, dataset.clone())).unwrap();
        let devo = DevoEmulator::start(DevoOptions { domain: DEVO_DOMAIN.into(), token: DEVO_TOKEN.into() }).unwrap();
        Services { dataset, op, devo }
    }

    /// A tenant collecting audit events into its own tag (`tag(name)`),
    /// with its own state file in `dir`; `extra` adds or replaces variables.
    fn tenant(&self, name: &str, dir: &Path, extra: &[(&str, &str)]) -> Tenant {
        let mut variables = tenant_variables(&self.op, OP_TOKEN, &self.devo, DEVO_DOMAIN, DEVO_TOKEN);
        variables.insert("services".into(), "audit".into());
        variables.insert("tag_audit".into(), tag(name));
        for (k, v) in extra {
            variables.insert(k.to_string(), v.to_string());
        }
        Tenant {
            name: name.into(),
            schedule: "* * * * * *".into(),
            spread_firings: true,
            kv: dir.join(format!("{name}.sqlite")).into(),
            variables,
            environment: Default::default(),
            allowed_outbound_hosts: None,
            limits: TenantLimits::default(),
        }
    }
}

fn tag(tenant: &str) -> String {
    format!("my.{tenant}.audit")
}

fn sent(tick: &TenantTick) -> u32 {
    tick.result.as_ref().map_or(0, |r| r.services.iter().map(|s| s.sent).sum())
}

fn assert_delivered(tick: &TenantTick) {
    let report = tick.result.as_ref().unwrap_or_else(|e| panic!("{}: tick failed: {e}", tick.tenant));
    assert!(report.ok(), "{}", tick.to_json());
    assert!(report.services.iter().all(|s| s.outcome == Outcome::Delivered), "{}", tick.to_json());
}

/// The tick ended in a host failure whose message contains `says`.
fn assert_host_failure(tick: &TenantTick, says: &str) {
    let e =
        tick.result.as_ref().err().unwrap_or_else(|| panic!("{} should have failed: {}", tick.tenant, tick.to_json()));
    assert_eq!(e.id, HOST_FAILURE, "{}", tick.to_json());
    assert!(e.message.contains(says), "expected {says:?} in: {}", e.message);
    let line = tick.to_json().to_string();
    assert!(!line.contains(OP_TOKEN) && !line.contains(DEVO_TOKEN), "secret printed: {line}");
}

fn keys(path: &Path) -> Vec<String> {
    SqliteStore::open(path).unwrap().keys("default").unwrap()
}

fn values(path: &Path) -> Vec<(String, Option<Vec<u8>>)> {
    let kv = SqliteStore::open(path).unwrap();
    kv.keys("default").unwrap().into_iter().map(|k| (k.clone(), kv.get("default", &k).unwrap())).collect()
}

#[test]
fn a_host_outside_the_allow_list_is_refused_for_that_tenant_only() {
    let s = Services::start(20, 1);
    let dir = tempfile::tempdir().unwrap();
    let mut fenced = s.tenant("fenced", dir.path(), &[]);
    fenced.allowed_outbound_hosts = Some(vec![s.op.base_url()]);
    let open = s.tenant("open", dir.path(), &[]);

    let ticks = block_on(runtime().tick_all(&[fenced, open], 2));

    let report = ticks[0].result.as_ref().expect("the collector itself reports the refusal");
    let error = report.services[0].error.as_ref().expect("Devo was not reachable");
    assert_eq!(error.id, 701, "{}", ticks[0].to_json());
    assert!(error.message.contains("refused"), "{}", error.message);
    assert!(s.devo.events(&tag("fenced")).is_empty(), "nothing of the fenced tenant reached Devo");
    assert!(s.devo.requests().iter().all(|r| r.tag != tag("fenced")));

    assert_delivered(&ticks[1]);
    assert_eq!(s.devo.events(&tag("open")).len(), 20);
}

#[test]
fn a_tenant_starts_from_its_own_checkpoints_not_another_tenants() {
    let s = Services::start(30, 2);
    let dir = tempfile::tempdir().unwrap();
    // A collects two services, two pages of 10 each, one a tick.
    let one_page = ("max_pages_per_tick", "1");
    let a = s.tenant("a", dir.path(), &[("page_size", "10"), ("services", "audit,item_usage"), one_page]);
    for _ in 0..2 {
        let t = block_on(runtime().tick(&a));
        assert_delivered(&t);
    }
    assert_eq!(s.devo.events(&tag("a")).len(), 20);
    let a_before = values(a.kv.sqlite_path().unwrap());
    assert!(a_before.iter().any(|(k, _)| *k == ServiceState::key(Service::ItemUsage)), "{a_before:?}");

    // B: same 1Password account and Devo, its own (new) state file.
    let b = s.tenant("b", dir.path(), &[("page_size", "10"), one_page]);
    let t = block_on(runtime().tick(&b));
    assert_delivered(&t);
    let report = t.result.as_ref().unwrap();
    assert_eq!(report.services[0].total_sent, 10, "B counts only its own deliveries: {}", t.to_json());
    // B read the first page, not the page after A's cursor.
    let first_page: Vec<serde_json::Value> = s.dataset.values(Service::Audit)[..10].to_vec();
    assert_eq!(s.devo.event_values(&tag("b")), first_page);
    assert_eq!(s.devo.event_values(&tag("a"))[..10], first_page[..]);

    // B's file holds only what B wrote; A's file is untouched.
    let b_keys = keys(b.kv.sqlite_path().unwrap());
    assert!(!b_keys.contains(&ServiceState::key(Service::ItemUsage)), "A's key in B's store: {b_keys:?}");
    let read = |path: &Path| {
        let bytes =
            SqliteStore::open(path).unwrap().get("default", &ServiceState::key(Service::Audit)).unwrap().unwrap();
        ServiceState::decode(Service::Audit, &bytes).unwrap()
    };
    assert_ne!(read(a.kv.sqlite_path().unwrap()).checkpoint, read(b.kv.sqlite_path().unwrap()).checkpoint);
    assert_eq!(values(a.kv.sqlite_path().unwrap()), a_before, "B's tick changed A's store");
}

#[test]
fn the_wall_deadline_covers_the_components_own_deadline_unless_set() {
    let s = Services::start(0, 10);
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let plain = s.tenant("plain", dir.path(), &[]);
    assert_eq!(rt.effective_limits(&plain).wall_deadline, Duration::from_secs(150));
    assert_eq!(rt.effective_limits(&plain).memory_bytes, DEFAULT_MEMORY_BYTES);
    // a 10-minute tick deadline and 20 s requests: 600 + 4 × 20 s
    let long = s.tenant("long", dir.path(), &[("tick_deadline_ms", "600000"), ("request_timeout_ms", "20000")]);
    assert_eq!(rt.effective_limits(&long).wall_deadline, Duration::from_secs(680));
    let mut own = long.clone();
    own.limits.wall_deadline = Some(Duration::from_secs(5));
    own.limits.cpu_time = Some(Duration::from_millis(7));
    assert_eq!(rt.effective_limits(&own).wall_deadline, Duration::from_secs(5));
    assert_eq!(rt.effective_limits(&own).cpu_time, Duration::from_millis(7));
}

#[test]
fn a_1000_event_tick_fits_the_default_limits() {
    let s = Services::start(1000, 3);
    let dir = tempfile::tempdir().unwrap();
    let t = s.tenant("big", dir.path(), &[("services", "audit,item_usage,sign_in_attempts")]);
    let tick = block_on(runtime().tick(&t));
    assert_delivered(&tick);
    assert_eq!(sent(&tick), 3000);
    let line = tick.to_json();
    eprintln!(
        "1000-event pages of 3 services: peak linear memory {} bytes ({:.2} MiB), guest CPU {} ms, host {} ms",
        tick.peak_memory_bytes,
        tick.peak_memory_bytes as f64 / 1048576.0,
        tick.guest_cpu_ms,
        tick.host_elapsed_ms
    );
    assert!(tick.peak_memory_bytes > 0 && tick.peak_memory_bytes <= DEFAULT_MEMORY_BYTES as u64);
    assert_eq!(line["peak_memory_bytes"], tick.peak_memory_bytes);
    assert_eq!(line["host_elapsed_ms"], tick.host_elapsed_ms);
    assert!(line["guest_cpu_ms"].is_u64());
}

#[test]
fn a_tenant_over_its_memory_limit_fails_alone() {
    let s = Services::start(1000, 4);
    let dir = tempfile::tempdir().unwrap();
    let everything = ("services", "audit,item_usage,sign_in_attempts");
    // Less than the component's initial memory (about 0.2 MiB, most of it
    // its 128 KiB stack): it cannot even start.
    let mut tiny = s.tenant("tiny", dir.path(), &[everything]);
    tiny.limits.memory_bytes = Some(64 << 10);
    // Enough to start, not enough for three 1000-event pages (they peak
    // near 2.4 MiB).
    let mut small = s.tenant("small", dir.path(), &[everything]);
    small.limits.memory_bytes = Some(1 << 20);
    let default = s.tenant("default", dir.path(), &[everything]);

    let ticks = block_on(runtime().tick_all(&[tiny, small, default], 3));

    assert_host_failure(&ticks[0], "memory limit");
    assert!(ticks[0].result.as_ref().unwrap_err().message.contains("0.1 MiB"), "{}", ticks[0].to_json());
    assert_host_failure(&ticks[1], "memory limit");
    assert!(ticks[1].peak_memory_bytes <= 1 << 20, "{}", ticks[1].to_json());
    assert_delivered(&ticks[2]);
    assert_eq!(sent(&ticks[2]), 3000);
}

#[test]
fn a_tenant_over_its_wall_deadline_fails_alone() {
    let slow = Services::start(20, 5);
    slow.op.push_faults([OpFault::Slow(Duration::from_secs(10))]);
    let fine = Services::start(20, 6);
    let dir = tempfile::tempdir().unwrap();
    let mut hung = slow.tenant("hung", dir.path(), &[]);
    hung.limits.wall_deadline = Some(Duration::from_secs(1));
    let other = fine.tenant("other", dir.path(), &[]);

    let started = std::time::Instant::now();
    let ticks = block_on(runtime().tick_all(&[hung, other], 2));

    assert_host_failure(&ticks[0], "wall deadline");
    assert!(ticks[0].host_elapsed_ms < 5_000, "{}", ticks[0].to_json());
    assert!(started.elapsed() < Duration::from_secs(9), "the hung tick was not cut short");
    assert_delivered(&ticks[1]);
    assert_eq!(fine.devo.events(&tag("other")).len(), 20);
    assert!(slow.devo.events(&tag("hung")).is_empty());
}

#[test]
fn a_tenant_over_its_cpu_deadline_fails_alone() {
    let s = Services::start(1000, 7);
    let dir = tempfile::tempdir().unwrap();
    let mut greedy = s.tenant("greedy", dir.path(), &[]);
    greedy.limits.cpu_time = Some(Duration::from_millis(1));
    let other = s.tenant("other", dir.path(), &[]);

    let ticks = block_on(runtime().tick_all(&[greedy, other], 2));

    assert_host_failure(&ticks[0], "CPU deadline");
    assert_delivered(&ticks[1]);
    assert_eq!(s.devo.events(&tag("other")).len(), 1000);
}

#[test]
fn two_hundred_tenants_each_deliver_their_own_events() {
    const TENANTS: usize = 200;
    const EVENTS: usize = 5;
    let s = Services::start(EVENTS, 8);
    let dir = tempfile::tempdir().unwrap();
    let tenants: Vec<Tenant> = (0..TENANTS).map(|n| s.tenant(&format!("tenant{n}"), dir.path(), &[])).collect();

    let started = std::time::Instant::now();
    let ticks = block_on(runtime().tick_all(&tenants, 16));
    eprintln!("{TENANTS} tenants ticked in {:?}", started.elapsed());

    assert_eq!(ticks.len(), TENANTS);
    let served = s.dataset.values(Service::Audit);
    for (n, tick) in ticks.iter().enumerate() {
        assert_eq!(tick.tenant, format!("tenant{n}"), "results keep the tenants' order");
        assert_delivered(tick);
        assert_eq!(s.devo.event_values(&tag(&tick.tenant)), served, "{}", tick.tenant);
        assert!(tenants[n].kv.sqlite_path().unwrap().exists());
    }
    assert_eq!(s.devo.total_events(), TENANTS * EVENTS);
}

#[test]
fn the_compiled_component_is_cached_on_disk_and_a_damaged_cache_is_replaced() {
    let cache = tempfile::tempdir().unwrap();
    let options = || loopback::options(Limits::default(), CompileCache::Dir(cache.path().into()));

    let first = Runtime::with_options(&component(), options()).unwrap();
    assert!(!first.loaded_from_cache());
    let file = first.cache_file().expect("cache on").to_path_buf();
    assert!(file.starts_with(cache.path()) && file.exists(), "{}", file.display());
    drop(first);

    let second = Runtime::with_options(&component(), options()).unwrap();
    assert!(second.loaded_from_cache());
    assert_eq!(second.cache_file(), Some(file.as_path()));
    // and what it loaded runs
    let s = Services::start(10, 9);
    let dir = tempfile::tempdir().unwrap();
    let tick = block_on(second.tick(&s.tenant("cached", dir.path(), &[])));
    assert_delivered(&tick);
    drop(second);

    // A damaged file (here: one flipped byte) is compiled anew and rewritten.
    let mut bytes = std::fs::read(&file).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&file, &bytes).unwrap();
    let third = Runtime::with_options(&component(), options()).unwrap();
    assert!(!third.loaded_from_cache());
    drop(third);
    std::fs::write(&file, b"not a compiled component").unwrap();
    let fourth = Runtime::with_options(&component(), options()).unwrap();
    assert!(!fourth.loaded_from_cache());
    drop(fourth);
    assert!(Runtime::with_options(&component(), options()).unwrap().loaded_from_cache(), "rewritten");
    let files = std::fs::read_dir(cache.path()).unwrap().count();
    assert_eq!(files, 2, "one cache file and the cache's key, no leftovers");

    // No cache: nothing written.
    let off = Runtime::with_options(&component(), RuntimeOptions { cache: CompileCache::Off, ..options() }).unwrap();
    assert!(!off.loaded_from_cache() && off.cache_file().is_none());
}
