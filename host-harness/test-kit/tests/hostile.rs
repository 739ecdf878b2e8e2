//! The hostile-tenant suite (issue #10): a malicious component runs next to
//! well-behaved tenants under the same limits, and must neither get what it
//! is after nor take anything from them.
//!
//! The malicious tenant is `hostile-guest/` (a component of the same
//! `collector` world as the real one, so the host links it exactly alike),
//! told by its variable `hostile_mode` what to do: spin forever, grow linear
//! memory forever, create host resources forever, fill outgoing bodies'
//! host-side buffers forever, call a host or a port it may not or a
//! private address, read keys and variables that are not its own, hold
//! requests open, or open many connections at once. Each test runs one mode on a runtime of its own (the
//! hostile component), concurrently with three tenants of the real
//! collector (another runtime, the same limits), and asserts:
//!
//! * the neighbours' ticks complete with every event delivered to Devo and
//!   their checkpoints in their own stores: they are unaffected;
//! * a hostile tick that the host must stop (CPU, memory, resources, wall
//!   time) fails with error [`HOST_FAILURE`] (900) whose message names the
//!   limit, and ends within its deadline (plus a margin for a loaded
//!   machine);
//! * a hostile tick that the host refuses something (a host, port or
//!   address outside its allow-list or policy, another tenant's keys) is not
//!   stopped — a refusal reaches the guest as an error value, and what the
//!   guest does with it is its own business — so "fails alone" means here:
//!   the guest got the refusal for every attempt (`HttpRequestDenied`, no
//!   such store, nothing found), the listeners it aimed at accepted no
//!   connection, and nobody else's data reached it. Those ticks end with the
//!   guest's own error (id 666, one line per attempt), which is what the
//!   tests read.
//!
//! Needs the release builds of both components (scripts/test.sh makes
//! them):
//! `cargo build --release --target wasm32-wasip2 -p onepassword-collector` and
//! `cargo build --release --target wasm32-wasip2 --manifest-path host-harness/test-kit/hostile-guest/Cargo.toml --target-dir target`.

use harness_test_kit::emulator::{
    tenant_variables, Dataset, DevoEmulator, DevoOptions, OnePasswordEmulator, OnePasswordOptions,
};
use harness_test_kit::loopback;
use host_harness::host::outbound::MAX_REQUESTS_IN_FLIGHT;
use host_harness::kv::SqliteStore;
use host_harness::runtime::{default_component_path, Limits, Runtime, TenantTick, HOST_FAILURE, MAX_FIELDS_BYTES};
use host_harness::tenant::Tenant;
use onepassword_collector::report::Outcome;
use onepassword_collector::service::Service;
use onepassword_collector::state::ServiceState;
use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

const OP_TOKEN: &str = "hostile-suite-op-token-DO-NOT-LEAK";
const DEVO_TOKEN: &str = "hostileSuiteDevoToken0123456789ab";
const DEVO_DOMAIN: &str = "neighbours";
/// The hostile tenant's own secrets: what it may see of itself.
const HOSTILE_TOKEN: &str = "the-hostile-tenants-own-token";

/// Tight limits, so a runaway tenant is stopped quickly; the real
/// collector's ticks here take a fraction of each.
const CPU: Duration = Duration::from_millis(500);
const MEMORY: usize = 16 << 20;
const WALL: Duration = Duration::from_secs(4);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(1);
/// How late past its deadline a stopped tick may end on a busy machine
/// (tests of this file run in parallel).
const MARGIN: Duration = Duration::from_millis(1500);

/// Events per neighbour; a page holds half, so a tick delivers 10.
const EVENTS: usize = 20;
const PAGE: usize = 10;
const NEIGHBOURS: usize = 3;

fn limits() -> Limits {
    Limits {
        cpu_time: CPU,
        memory_bytes: MEMORY,
        wall_deadline: WALL,
        request_timeout: REQUEST_TIMEOUT,
        ..Limits::default()
    }
}

fn built(path: PathBuf, build: &str) -> PathBuf {
    assert!(path.exists(), "{} is missing: run `{build}` first (scripts/test.sh does)", path.display());
    path
}

/// The real collector, for the well-behaved tenants.
fn collector() -> &'static Runtime {
    static RUNTIME: OnceLock<Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        let path =
            built(default_component_path(), "cargo build --release --target wasm32-wasip2 -p onepassword-collector");
        loopback::runtime(&path, limits()).expect("the collector loads")
    })
}

/// The hostile component, under the same limits.
fn hostile() -> &'static Runtime {
    static RUNTIME: OnceLock<Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        let path = built(
            default_component_path().with_file_name("hostile_guest.wasm"),
            "cargo build --release --target wasm32-wasip2 --manifest-path host-harness/test-kit/hostile-guest/Cargo.toml --target-dir target",
        );
        loopback::runtime(&path, limits()).expect("the hostile component loads")
    })
}

fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_multi_thread().worker_threads(4).enable_all().build().unwrap().block_on(future)
}

/// Three tenants of the real collector, each collecting audit events into
/// its own Devo tag and its own store, from one 1Password and one Devo
/// emulator.
struct Neighbours {
    op: OnePasswordEmulator,
    devo: DevoEmulator,
    dataset: Dataset,
    dir: tempfile::TempDir,
    tenants: Vec<Tenant>,
}

impl Neighbours {
    fn start(seed: u64) -> Neighbours {
        let now = chrono::Utc::now();
        let dataset = Dataset::generate(seed, EVENTS, now - chrono::Duration::hours(20), chrono::Duration::hours(19));
        let op = OnePasswordEmulator::start(OnePasswordOptions::new(OP_TOKEN, dataset.clone())).unwrap();
        let devo = DevoEmulator::start(DevoOptions { domain: DEVO_DOMAIN.into(), token: DEVO_TOKEN.into() }).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let tenants = (0..NEIGHBOURS)
            .map(|n| {
                let name = format!("good{n}");
                let mut variables = tenant_variables(&op, OP_TOKEN, &devo, DEVO_DOMAIN, DEVO_TOKEN);
                variables.extend([
                    ("services".into(), "audit".into()),
                    ("page_size".into(), PAGE.to_string()),
                    // One page a tick: each tick beside a hostile one is a page.
                    ("max_pages_per_tick".into(), "1".into()),
                    ("tag_audit".into(), tag(&name)),
                ]);
                Tenant {
                    kv: dir.path().join(format!("{name}.sqlite")).into(),
                    variables,
                    name,
                    schedule: "* * * * * *".into(),
                    spread_firings: true,
                    environment: Default::default(),
                    allowed_outbound_hosts: None,
                    limits: Default::default(),
                }
            })
            .collect();
        Neighbours { op, devo, dataset, dir, tenants }
    }

    /// A hostile tenant in mode `mode` with `variables` besides; its store
    /// is a file of its own next to the neighbours'.
    fn hostile(&self, mode: &str, variables: &[(&str, &str)]) -> Tenant {
        // Its own (fake) secrets and URLs: the real collector's keys, so the
        // host treats it like any tenant.
        let mut all = tenant_variables(&self.op, HOSTILE_TOKEN, &self.devo, "hostile", HOSTILE_TOKEN);
        all.insert("hostile_mode".into(), mode.into());
        for (k, v) in variables {
            all.insert(k.to_string(), v.to_string());
        }
        Tenant {
            name: "hostile".into(),
            schedule: "* * * * * *".into(),
            spread_firings: true,
            kv: self.dir.path().join("hostile.sqlite").into(),
            variables: all,
            environment: Default::default(),
            allowed_outbound_hosts: None,
            limits: Default::default(),
        }
    }

    /// Ticks the hostile tenant and every neighbour at once; the hostile
    /// tick with its wall time, and the neighbours' ticks.
    fn run_beside(&self, hostile_tenant: &Tenant) -> (TenantTick, Duration, Vec<TenantTick>) {
        block_on(async {
            let tenant = hostile_tenant.clone();
            let bad = tokio::spawn(async move {
                let started = Instant::now();
                let tick = hostile().tick(&tenant).await;
                (tick, started.elapsed())
            });
            let good = collector().tick_all(&self.tenants, NEIGHBOURS).await;
            let (tick, elapsed) = bad.await.expect("the hostile tick's task ends");
            (tick, elapsed, good)
        })
    }

    /// Each neighbour's tick delivered a page, Devo holds every event its
    /// tag was served so far (`pages` pages), and its checkpoint is in its
    /// own store.
    fn assert_unaffected(&self, ticks: &[TenantTick], pages: usize) {
        assert_eq!(ticks.len(), NEIGHBOURS);
        let served = self.dataset.values(Service::Audit);
        for (tick, tenant) in ticks.iter().zip(&self.tenants) {
            let report = tick.result.as_ref().unwrap_or_else(|e| panic!("{}: tick failed: {e}", tick.tenant));
            assert!(report.ok(), "{}", tick.to_json());
            assert!(report.services.iter().all(|s| s.outcome == Outcome::Delivered), "{}", tick.to_json());
            assert_eq!(report.services[0].sent as usize, PAGE, "{}", tick.to_json());
            assert_eq!(self.devo.event_values(&tag(&tenant.name)), served[..pages * PAGE], "{}", tenant.name);
            let keys = store_keys(tenant.kv.sqlite_path().unwrap());
            assert!(keys.contains(&ServiceState::key(Service::Audit)), "{}: {keys:?}", tenant.name);
        }
    }
}

fn tag(tenant: &str) -> String {
    format!("my.{tenant}.audit")
}

fn store_keys(path: &Path) -> Vec<String> {
    SqliteStore::open(path).unwrap().keys("default").unwrap()
}

/// The host stopped the tick with a failure naming `limit`, within
/// `deadline` (plus [`MARGIN`]), and printed no secret.
fn assert_stopped(tick: &TenantTick, elapsed: Duration, limit: &str, deadline: Duration) {
    let e = tick.result.as_ref().err().unwrap_or_else(|| panic!("the hostile tick succeeded: {}", tick.to_json()));
    assert_eq!(e.id, HOST_FAILURE, "{}", tick.to_json());
    assert!(e.message.contains(limit), "expected {limit:?} in: {}", e.message);
    assert!(elapsed < deadline + MARGIN, "stopped after {elapsed:?}, deadline {deadline:?}: {}", tick.to_json());
    let line = tick.to_json().to_string();
    assert!(!line.contains(OP_TOKEN) && !line.contains(DEVO_TOKEN), "secret printed: {line}");
}

/// What a hostile tick that returned saw: its own error's entries (the
/// guest separates them with ` | `).
fn attempts(tick: &TenantTick) -> Vec<String> {
    let e =
        tick.result.as_ref().err().unwrap_or_else(|| panic!("the hostile tick returned a report: {}", tick.to_json()));
    assert_eq!(e.id, 666, "the guest's own answer, not a host failure: {}", tick.to_json());
    e.message.split(" | ").map(String::from).collect()
}

/// A TCP listener that accepts connections, counts them and never answers.
struct Listener {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Listener {
    fn bind(addr: &str) -> Listener {
        Listener::on(TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}")))
    }

    fn on(listener: TcpListener) -> Listener {
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (count, stopping) = (Arc::clone(&accepted), Arc::clone(&stop));
        let thread = std::thread::spawn(move || {
            // Held open, unanswered, until the listener is dropped.
            let held = Mutex::new(Vec::<TcpStream>::new());
            for stream in listener.incoming() {
                if stopping.load(Ordering::SeqCst) {
                    return;
                }
                if let Ok(mut stream) = stream {
                    count.fetch_add(1, Ordering::SeqCst);
                    // Read what is sent without blocking the accept loop.
                    let _ = stream.set_nonblocking(true);
                    let _ = stream.read(&mut [0; 1024]);
                    held.lock().unwrap().push(stream);
                }
            }
        });
        Listener { addr, accepted, stop, thread: Some(thread) }
    }

    fn port(&self) -> u16 {
        self.addr.port()
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop, which then sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[test]
fn a_tenant_that_spins_forever_is_stopped_by_its_cpu_limit_alone() {
    let n = Neighbours::start(1);
    let (tick, elapsed, good) = n.run_beside(&n.hostile("spin", &[]));
    assert_stopped(&tick, elapsed, "CPU deadline exceeded", CPU);
    assert!(tick.guest_cpu_ms >= CPU.as_millis() as u64, "{}", tick.to_json());
    n.assert_unaffected(&good, 1);
}

#[test]
fn a_tenant_that_grows_memory_forever_is_stopped_by_its_memory_limit_alone() {
    let n = Neighbours::start(2);
    let (tick, elapsed, good) = n.run_beside(&n.hostile("memory", &[]));
    assert_stopped(&tick, elapsed, "memory limit exceeded", WALL);
    assert!(tick.result.as_ref().unwrap_err().message.contains("16.0 MiB"), "{}", tick.to_json());
    assert!(tick.peak_memory_bytes > (MEMORY / 2) as u64, "it did grow: {}", tick.to_json());
    assert!(tick.peak_memory_bytes <= MEMORY as u64, "{}", tick.to_json());
    n.assert_unaffected(&good, 1);
}

#[test]
fn a_tenant_that_creates_resources_forever_is_stopped_by_the_resource_limit_alone() {
    let n = Neighbours::start(3);
    // Each `fields` filled to just under the host's limit (over it is a
    // trap of its own, which would end the tick before the table is full).
    let budget = (MAX_FIELDS_BYTES - 512).to_string();
    let hostile = n.hostile("resources", &[("fields_bytes", &budget)]);
    let ((tick, elapsed, good), grown) = host_memory_growth(|| n.run_beside(&hostile));
    assert_stopped(&tick, elapsed, "resource limit exceeded", WALL);
    assert!(grown < HOST_MEMORY_BUDGET, "the host grew by {} MiB", grown >> 20);
    n.assert_unaffected(&good, 1);
}

#[test]
fn a_tenant_that_fills_body_buffers_forever_is_stopped_by_the_resource_limit_alone() {
    let n = Neighbours::start(4);
    let ((tick, elapsed, good), grown) = host_memory_growth(|| n.run_beside(&n.hostile("bodies", &[])));
    assert_stopped(&tick, elapsed, "resource limit exceeded", WALL);
    assert!(grown < HOST_MEMORY_BUDGET, "the host grew by {} MiB", grown >> 20);
    n.assert_unaffected(&good, 1);
}

/// How much the whole test process may grow while a tenant leaks host
/// resources: what the host lets one instance hold
/// ([`MAX_RESOURCES`](host_harness::runtime::MAX_RESOURCES)
/// entries of at most tens of KiB: a few MiB) plus the other tests of this
/// file running meanwhile. Without the host's bounds these tenants made it
/// grow by hundreds of MiB within the wall deadline.
const HOST_MEMORY_BUDGET: u64 = 64 << 20;

/// Runs `f` and returns its result and how far the process's resident
/// memory rose above where it was before (sampled every few ms; Linux). The
/// runtimes are loaded first so their compilation is not counted, and the
/// measuring tests take turns.
fn host_memory_growth<R>(f: impl FnOnce() -> R) -> (R, u64) {
    static TURN: Mutex<()> = Mutex::new(());
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let (_, _) = (collector(), hostile());
    let rss = || -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status (Linux)");
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).expect("VmRSS");
        line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024
    };
    let before = rss();
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let done = Arc::clone(&done);
        std::thread::spawn(move || {
            let mut peak = 0;
            while !done.load(Ordering::SeqCst) {
                peak = peak.max(rss());
                std::thread::sleep(Duration::from_millis(5));
            }
            peak.max(rss())
        })
    };
    let result = f();
    done.store(true, Ordering::SeqCst);
    let peak = sampler.join().unwrap();
    (result, peak.saturating_sub(before))
}

#[test]
fn a_tenant_calling_hosts_outside_its_allow_list_is_refused_and_reaches_none() {
    let n = Neighbours::start(5);
    // Its allow-list: one listener on 127.0.0.1 (its base_url and devo_url),
    // which it never calls itself; the forbidden host listens on the same
    // port of 127.0.0.2.
    let allowed = Listener::bind("127.0.0.1:0");
    let forbidden = Listener::bind(&format!("127.0.0.2:{}", allowed.port()));
    let p = allowed.port();
    let targets = [
        format!("http://127.0.0.2:{p}/"),
        // Other names of the allowed address: still other hosts.
        format!("http://localhost:{p}/"),
        format!("http://127.1:{p}/"),
        format!("http://2130706433:{p}/"),
        format!("http://127.0.0.1.:{p}/"),
        format!("http://[::ffff:127.0.0.1]:{p}/"),
        format!("http://{}.nip.io:{p}/", "127.0.0.1"),
    ];
    let hostile = n.hostile(
        "http",
        &[("base_url", &allowed.url()), ("devo_url", &allowed.url()), ("targets", &targets.join(","))],
    );

    let (tick, _, good) = n.run_beside(&hostile);

    assert_every_attempt_refused(&tick, targets.len());
    assert_eq!(forbidden.accepted(), 0, "the forbidden host was reached");
    assert_eq!(allowed.accepted(), 0, "another name of the allowed host was let through");
    n.assert_unaffected(&good, 1);
}

/// The host refused the request (or the request could not even be made):
/// nothing was sent.
fn refused(line: &str) -> bool {
    line.ends_with("=> error:ErrorCode::HttpRequestDenied") || line.contains("=> invalid:")
}

/// The guest reported one attempt per target, and the host refused each.
fn assert_every_attempt_refused(tick: &TenantTick, targets: usize) {
    let seen = attempts(tick);
    assert_eq!(seen.len(), targets, "{seen:?}");
    for line in &seen {
        assert!(refused(line), "not refused: {line}");
    }
}

#[test]
fn a_tenant_calling_another_port_or_scheme_of_its_host_is_refused_and_reaches_none() {
    let n = Neighbours::start(6);
    let allowed = Listener::bind("127.0.0.1:0");
    let forbidden = Listener::bind("127.0.0.1:0");
    let (a, f) = (allowed.port(), forbidden.port());
    let targets = [
        format!("http://127.0.0.1:{f}/"),
        format!("https://127.0.0.1:{f}/"),
        // The allowed host and port, but https where http was allowed.
        format!("https://127.0.0.1:{a}/"),
    ];
    let hostile = n.hostile(
        "http",
        &[("base_url", &allowed.url()), ("devo_url", &allowed.url()), ("targets", &targets.join(","))],
    );

    let (tick, _, good) = n.run_beside(&hostile);

    assert_every_attempt_refused(&tick, targets.len());
    assert_eq!(forbidden.accepted(), 0, "the forbidden port was reached");
    assert_eq!(allowed.accepted(), 0, "the allowed port was reached with the wrong scheme");
    n.assert_unaffected(&good, 1);
}

#[test]
fn a_tenant_calling_private_addresses_on_its_own_allow_list_is_refused() {
    let n = Neighbours::start(7);
    // Listeners the host must not let it reach although the tenant allows
    // them itself: ::1 (loopback outside the runtime's 127.0.0.0/8), and
    // 0.0.0.0, which Linux routes to a listener on 127.0.0.1.
    let v6 = Listener::bind("[::1]:0");
    let local = Listener::bind("127.0.0.1:0");
    let targets = [
        "http://10.0.0.1:9/".to_string(),
        "http://169.254.169.254/".to_string(),
        "http://[::ffff:10.0.0.1]:9/".to_string(),
        format!("http://[::1]:{}/", v6.port()),
        format!("http://0.0.0.0:{}/", local.port()),
    ];
    let mut hostile = n.hostile(
        "http",
        &[("base_url", "http://10.0.0.1:9"), ("devo_url", "http://169.254.169.254"), ("targets", &targets.join(","))],
    );
    hostile.allowed_outbound_hosts = Some(targets.iter().map(|t| t.trim_end_matches('/').to_string()).collect());

    let (tick, _, good) = n.run_beside(&hostile);

    assert_every_attempt_refused(&tick, targets.len());
    assert_eq!(v6.accepted(), 0, "::1 was reached");
    assert_eq!(local.accepted(), 0, "0.0.0.0 reached a loopback listener");
    n.assert_unaffected(&good, 1);
}

#[test]
fn a_tenant_calling_addresses_that_are_not_globally_reachable_or_the_machines_own_is_refused() {
    let n = Neighbours::start(17);
    // Documentation, benchmarking, discard and reserved blocks, and private
    // IPv4 addresses spelled as IPv6 (NAT64, IPv4-translated, 6to4, Teredo):
    // all on the tenant's own allow-list, none globally reachable.
    let mut targets: Vec<String> = [
        "http://192.0.2.1:9/",
        "http://198.51.100.1:9/",
        "http://203.0.113.1:9/",
        "http://198.18.0.1:9/",
        "http://192.0.0.1:9/",
        "http://240.0.0.1:9/",
        "http://[2001:db8::1]:9/",
        "http://[3fff::1]:9/",
        "http://[100::1]:9/",
        "http://[64:ff9b::a9fe:a9fe]/",
        "http://[64:ff9b::a00:1]:9/",
        "http://[64:ff9b:1::a00:1]:9/",
        "http://[::ffff:0:a00:1]:9/",
        "http://[2002:a9fe:a9fe::1]/",
        "http://[2001:0:a00:1::f7f7:f7f7]:9/",
    ]
    .map(String::from)
    .to_vec();
    // One of the machine's own addresses (not loopback, which the test
    // runtime allows), with a listener on it: refused whatever its range.
    let own = host_harness::host::outbound::interfaces::read()
        .expect("getifaddrs")
        .into_iter()
        .find(|a| a.is_ipv4() && !a.is_loopback());
    let listener = own.map(|a| Listener::bind(&SocketAddr::new(a, 0).to_string()));
    if let Some(l) = &listener {
        targets.push(format!("{}/", l.url()));
    }
    let mut hostile = n.hostile(
        "http",
        &[("base_url", "http://192.0.2.1:9"), ("devo_url", "http://[2001:db8::1]:9"), ("targets", &targets.join(","))],
    );
    hostile.allowed_outbound_hosts = Some(targets.iter().map(|t| t.trim_end_matches('/').to_string()).collect());

    let (tick, _, good) = n.run_beside(&hostile);

    assert_every_attempt_refused(&tick, targets.len());
    if let Some(l) = &listener {
        assert_eq!(l.accepted(), 0, "the machine's own address {} was reached", l.addr);
    }
    n.assert_unaffected(&good, 1);
}

#[test]
fn a_tenant_reading_other_tenants_keys_and_variables_sees_only_its_own() {
    let n = Neighbours::start(8);
    // The neighbours tick once first, so their stores hold checkpoints.
    for tick in block_on(collector().tick_all(&n.tenants, NEIGHBOURS)) {
        assert!(tick.ok(), "{}", tick.to_json());
    }
    let victim = n.tenants[0].kv.sqlite_path().unwrap().to_path_buf();
    let before: Vec<(String, Option<Vec<u8>>)> = {
        let kv = SqliteStore::open(&victim).unwrap();
        store_keys(&victim).into_iter().map(|k| (k.clone(), kv.get("default", &k).unwrap())).collect()
    };
    assert!(!before.is_empty());
    // Every bucket name that might lead to the victim's store, and every key
    // it holds, plus the names a variable of another tenant might go by.
    let buckets = [
        "default".to_string(),
        "good0".into(),
        "good0.sqlite".into(),
        victim.display().to_string(),
        "../good0".into(),
        "../good0.sqlite".into(),
        "onepassword-collector/good0/".into(),
        "default/../good0".into(),
        "*".into(),
        "".into(),
    ];
    let mut keys: Vec<String> = before.iter().map(|(k, _)| k.clone()).collect();
    keys.extend(
        [
            "../good0.sqlite/service/audit",
            "good0/service/audit",
            "tenants.good0.variables.token",
            "good0.token",
            "good0/token",
        ]
        .map(String::from),
    );
    let hostile = n.hostile("keys", &[("buckets", &buckets.join(",")), ("keys", &keys.join(","))]);

    let (tick, _, good) = n.run_beside(&hostile);

    let seen = attempts(&tick);
    let text = seen.join("\n");
    assert!(!text.contains(OP_TOKEN) && !text.contains(DEVO_TOKEN), "another tenant's secret: {text}");
    assert!(!text.contains("my.good"), "another tenant's variable: {text}");
    for line in &seen {
        if let Some(rest) = line.strip_prefix("open ") {
            let opened = rest.ends_with("=> opened");
            assert_eq!(opened, rest.starts_with("default =>"), "only its own default bucket opens: {line}");
        } else if line.starts_with("list ") {
            assert_eq!(line, "list default => []", "its own store is empty before its write");
        } else if line.starts_with("get ") {
            assert!(line.ends_with("=> none"), "{line}");
        } else if line.starts_with("set ") {
            assert_eq!(line, "set default/hostile/marker => Ok(())");
        } else if line.starts_with("config ") {
            assert!(line.ends_with("=> None"), "{line}");
        } else {
            assert!(line.starts_with("config-all "), "{line}");
        }
    }
    // Every line the guest should have produced is there.
    assert_eq!(seen.iter().filter(|l| l.starts_with("get default/")).count(), keys.len(), "{text}");
    assert!(text.contains(&format!("config-all token => {HOSTILE_TOKEN}")), "its own variables: {text}");
    // Its write went to its own store; the victim's is as it was, and the
    // neighbours then delivered their second page.
    assert_eq!(store_keys(n.dir.path().join("hostile.sqlite").as_path()), ["hostile/marker"]);
    assert!(!store_keys(&victim).contains(&"hostile/marker".to_string()));
    n.assert_unaffected(&good, 2);
}

#[test]
fn a_tenant_holding_requests_open_is_cut_by_the_request_timeout_and_stopped_by_its_wall_deadline() {
    let n = Neighbours::start(9);
    // Accepts, reads the request and never answers.
    let silent = Listener::bind("127.0.0.1:0");
    let hostile =
        n.hostile("hold-open", &[("base_url", &silent.url()), ("devo_url", &silent.url()), ("targets", &silent.url())]);

    let (tick, elapsed, good) = n.run_beside(&hostile);

    assert_stopped(&tick, elapsed, "wall deadline exceeded", WALL);
    assert!(elapsed >= WALL, "ended after {elapsed:?}, before its deadline: {}", tick.to_json());
    // The guest asked for an hour per wait; the host cut each request after
    // REQUEST_TIMEOUT, so it got to try again within the wall deadline.
    assert!(silent.accepted() >= 2, "{} connections: the host let a request hang", silent.accepted());
    n.assert_unaffected(&good, 1);
}

#[test]
fn a_tenant_opening_many_connections_at_once_gets_only_the_requests_in_flight_cap() {
    let n = Neighbours::start(10);
    // Its own allowed host: accepts every connection and never answers, so
    // each request the host lets through holds its connection open.
    let silent = Listener::bind("127.0.0.1:0");
    let requests = 100;
    // Well under REQUEST_TIMEOUT, which would end the held requests (and
    // free their slots) on its own.
    let wait = Duration::from_millis(300);
    let hostile = n.hostile(
        "many-requests",
        &[
            ("base_url", &silent.url()),
            ("devo_url", &silent.url()),
            ("requests", &requests.to_string()),
            ("wait_ms", &wait.as_millis().to_string()),
        ],
    );

    let (tick, elapsed, good) = n.run_beside(&hostile);

    // The tick ended with the guest's own answer, well within its deadline.
    let seen = attempts(&tick);
    assert!(elapsed < WALL, "{elapsed:?}: {}", tick.to_json());
    let cap = MAX_REQUESTS_IN_FLIGHT;
    assert!(cap < requests, "the guest must try more than the cap ({cap})");
    assert_eq!(
        seen,
        [format!("refused:{}", requests - cap), format!("pending:{cap}"), "other:0".to_string()],
        "the first {cap} held, every later one refused with HttpRequestDenied"
    );
    let accepted = silent.accepted();
    assert!(accepted <= cap, "{accepted} connections to the tenant's host, the cap is {cap}");
    assert!(accepted > 0, "the requests within the cap did connect");
    n.assert_unaffected(&good, 1);
}

#[test]
fn a_devo_token_a_tenant_quotes_from_its_devo_url_is_redacted_in_what_the_host_shows() {
    let n = Neighbours::start(11);
    // The guest says every variable it has, its devo_url with a token in
    // the path among them, in a tick's error and in a validate check.
    const IN_PATH: &str = "devoUrlPathS3cret0123";
    let url = format!("https://http-us.devo.io/stream/hostile/token!{IN_PATH}");
    let tenant = n.hostile("keys", &[("devo_url", &url), ("keys", "devo_url")]);
    let tick = block_on(hostile().tick(&tenant));
    let checks = block_on(hostile().validate(&tenant));
    let seen = attempts(&tick).join("\n");
    assert!(
        seen.contains("config devo_url => Some(\"https://http-us.devo.io/stream/hostile/token!<redacted>"),
        "{seen}"
    );
    for text in [tick.to_json().to_string(), serde_json::to_string(&checks).unwrap()] {
        assert!(!text.contains(IN_PATH), "the token is shown: {text}");
        assert!(text.contains("/stream/hostile/token!<redacted>"), "{text}");
    }
}

#[test]
fn a_tenant_stopped_in_validate_fails_one_host_check_naming_the_limit_on_one_line() {
    let n = Neighbours::start(12);
    let tenant = n.hostile("spin", &[]);
    let started = Instant::now();
    let checks = block_on(hostile().validate(&tenant));
    assert!(started.elapsed() < CPU + MARGIN + WALL, "{:?}", started.elapsed());
    let [check] = checks.as_slice() else { panic!("one check: {checks:?}") };
    assert_eq!((check.name.as_str(), check.status), ("host", onepassword_collector::validate::Status::Fail));
    assert!(check.detail.contains("CPU deadline exceeded") && check.detail.contains("cpu_ms"), "{check:?}");
    // What the host says of a trap spans lines (its wasm backtrace) and
    // names the guest's functions: one inert line, as the guest's own text.
    assert!(!check.detail.chars().any(onepassword_collector::text::is_unsafe), "{:?}", check.detail);
}

#[test]
fn what_a_tenant_writes_to_stderr_is_shown_cleaned_with_its_tick_never_as_the_hosts() {
    let n = Neighbours::start(13);
    // A screen clear and a line that reads as `run`'s log line of another
    // tenant's tick: on the host's stderr, it would be one.
    let forged = "\x1b[2J\ntime=2026-01-01T00:00:00.000Z level=info tenant=good0 msg=tick ok=true\n";
    let shown = r"the component wrote to stderr: \u{1b}[2J time=2026-01-01T00:00:00.000Z level=info tenant=good0";
    let inert = |text: &str| !text.chars().any(onepassword_collector::text::is_unsafe);

    let tenant = n.hostile("stderr", &[("text", forged)]);
    let tick = block_on(hostile().tick(&tenant));
    let seen = attempts(&tick).join("\n");
    assert!(seen.starts_with("written; ") && seen.contains(shown) && inert(&seen), "{seen:?}");
    let checks = block_on(hostile().validate(&tenant));
    let stderr = checks.iter().find(|c| c.name == "stderr").unwrap_or_else(|| panic!("{checks:?}"));
    assert_eq!(stderr.status, onepassword_collector::validate::Status::Warn);
    assert!(stderr.detail.contains(shown) && inert(&stderr.detail), "{stderr:?}");

    // A panicking guest: its message says why the host stopped the tick.
    let tenant = n.hostile("panic", &[("text", "hostile says \x1b]0;pwned\x07")]);
    let tick = block_on(hostile().tick(&tenant));
    let e = tick.result.as_ref().err().unwrap_or_else(|| panic!("{}", tick.to_json()));
    assert_eq!(e.id, HOST_FAILURE, "{}", tick.to_json());
    assert!(e.message.contains("the component wrote to stderr: hostile says"), "{}", e.message);
    assert!(e.message.contains(r"hostile says \u{1b}]0;pwned\u{7}") && inert(&e.message), "{:?}", e.message);
}
