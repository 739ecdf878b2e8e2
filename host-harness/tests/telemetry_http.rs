//! The telemetry endpoint over real HTTP/1.1 on loopback: `/metrics`,
//! `/healthz`, `/readyz` (200 when the component is loaded and the stores
//! reachable, whatever a tenant's ticks do; 503 naming what is missing),
//! 404 and 405 otherwise, and the server gone once its task is aborted.
//! Requests are written by hand on a std `TcpStream`.

use chrono::Utc;
use host_harness::runtime::TenantTick;
use host_harness::telemetry::{serve, Telemetry, OPENMETRICS_CONTENT_TYPE, TEXT_CONTENT_TYPE};
use onepassword_collector::error::{CollectorError, ErrorKind};
use onepassword_collector::report::{Outcome, ServiceReport, TickReport};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;
use tokio::runtime::Runtime;
use tokio::task::JoinHandle;

struct Server {
    runtime: Runtime,
    addr: SocketAddr,
    task: JoinHandle<std::io::Result<()>>,
}

fn start(telemetry: Arc<Telemetry>) -> Server {
    let runtime = Runtime::new().unwrap();
    let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let addr = listener.local_addr().unwrap();
    let task = runtime.spawn(serve(listener, telemetry));
    Server { runtime, addr, task }
}

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

fn request(addr: SocketAddr, method: &str, path: &str) -> Reply {
    request_with(addr, method, path, "")
}

/// A request with `headers` (each line ending in CRLF) added.
fn request_with(addr: SocketAddr, method: &str, path: &str, headers: &str) -> Reply {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(stream, "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{headers}Connection: close\r\n\r\n").unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    let raw = String::from_utf8(raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").expect("a complete response");
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
    let headers =
        lines.map(|l| l.split_once(':').unwrap()).map(|(n, v)| (n.trim().to_string(), v.trim().to_string())).collect();
    Reply { status, headers, body: body.to_string() }
}

fn get(addr: SocketAddr, path: &str) -> Reply {
    request(addr, "GET", path)
}

fn service(name: &str, sent: u32, error: Option<u32>) -> ServiceReport {
    ServiceReport {
        service: name.into(),
        outcome: if error.is_some() { Outcome::Failed } else { Outcome::Delivered },
        fetched: sent,
        sent,
        unconfirmed: 0,
        pages: 1,
        bytes_sent: u64::from(sent) * 100,
        has_more: false,
        checkpoint: Some("2026-01-01T00:00:00Z".into()),
        total_sent: u64::from(sent),
        lag_seconds: Some(60),
        elapsed_ms: 12,
        deferred_until: None,
        deferred_reason: None,
        error: error.map(|id| CollectorError::new(ErrorKind::PullError, id, "1Password answered")),
    }
}

fn tick(tenant: &str, services: Vec<ServiceReport>) -> TenantTick {
    TenantTick {
        tenant: tenant.into(),
        result: Ok(TickReport {
            started_at: "2026-01-01T00:01:00Z".into(),
            elapsed_ms: 80,
            services,
            warnings: vec![],
        }),
        peak_memory_bytes: 5 << 20,
        guest_cpu_ms: 25,
        host_elapsed_ms: 90,
    }
}

#[test]
fn metrics_and_health_are_served() {
    let telemetry = Arc::new(Telemetry::new());
    telemetry.component_loaded();
    telemetry.tick_finished(&tick("acme", vec![service("audit", 250, None)]), Utc::now());
    let server = start(telemetry.clone());

    // The Prometheus text format unless OpenMetrics is asked for.
    let metrics = get(server.addr, "/metrics");
    assert_eq!(metrics.status, 200);
    assert_eq!(metrics.header("content-type"), Some(TEXT_CONTENT_TYPE));
    assert_eq!(metrics.header("vary"), Some("Accept"));
    assert!(
        metrics.body.contains("onepassword_collector_events_delivered_total{tenant=\"acme\",service=\"audit\"} 250\n"),
        "{}",
        metrics.body
    );
    assert!(metrics.body.contains("# TYPE onepassword_collector_events_delivered_total counter\n"));
    assert!(!metrics.body.contains("# EOF"));
    assert_eq!(metrics.header("content-length"), Some(metrics.body.len().to_string().as_str()));
    let accept = "Accept: application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5,*/*;q=0.1\r\n";
    let om = request_with(server.addr, "GET", "/metrics", accept);
    assert_eq!(om.header("content-type"), Some(OPENMETRICS_CONTENT_TYPE));
    assert!(om.body.contains("# TYPE onepassword_collector_events_delivered counter\n"), "{}", om.body);
    assert!(om.body.ends_with("# EOF\n"));
    let text = request_with(server.addr, "GET", "/metrics", "Accept: text/plain\r\n");
    assert_eq!(text.header("content-type"), Some(TEXT_CONTENT_TYPE));
    // A query string does not change the path.
    assert_eq!(get(server.addr, "/metrics?x=1").status, 200);

    let health = get(server.addr, "/healthz");
    assert_eq!((health.status, health.body.as_str()), (200, "ok\n"));
    let ready = get(server.addr, "/readyz");
    assert_eq!((ready.status, ready.body.as_str()), (200, "ready\n"));
    server.task.abort();
}

#[test]
fn readyz_is_about_the_process_never_a_failing_tenant() {
    let telemetry = Arc::new(Telemetry::new());
    let server = start(telemetry.clone());
    let not_loaded = get(server.addr, "/readyz");
    assert_eq!(not_loaded.status, 503);
    assert_eq!(not_loaded.body, "not ready\ncomponent not loaded\n");

    // One tenant fails every tick (a revoked token), 23 in a row; the other
    // delivers. The process can do its work: ready.
    telemetry.component_loaded();
    for _ in 0..23 {
        telemetry.tick_finished(&tick("acme", vec![service("audit", 0, Some(401))]), Utc::now());
        telemetry.tick_finished(&tick("globex", vec![service("audit", 5, None)]), Utc::now());
    }
    let failing = get(server.addr, "/readyz");
    assert_eq!((failing.status, failing.body.as_str()), (200, "ready\n"));
    let metrics = get(server.addr, "/metrics").body;
    assert!(metrics.contains("onepassword_collector_consecutive_failed_ticks{tenant=\"acme\"} 23\n"), "{metrics}");
    assert!(metrics.contains("onepassword_collector_ready 1\n"), "{metrics}");

    // A store that cannot be reached (error 200) is the process's: 503,
    // naming whose store it is, until a tick reaches it again.
    telemetry.tick_finished(&tick("globex", vec![service("audit", 0, Some(200))]), Utc::now());
    let store_down = get(server.addr, "/readyz");
    assert_eq!(store_down.status, 503);
    assert_eq!(store_down.body, "not ready\ntenant globex: key-value store unreachable (error 200)\n");
    assert!(get(server.addr, "/metrics").body.contains("onepassword_collector_ready 0\n"));
    // Health is about the process answering, nothing else.
    assert_eq!(get(server.addr, "/healthz").status, 200);

    telemetry.tick_finished(&tick("globex", vec![service("audit", 1, None)]), Utc::now());
    assert_eq!(get(server.addr, "/readyz").status, 200);
    server.task.abort();
}

/// Every metric family `/metrics` has for a tenant, as the text format
/// names its series (a histogram by its `_count`).
const FAMILIES: [&str; 28] = [
    "onepassword_collector_ticks_total",
    "onepassword_collector_service_ticks_total",
    "onepassword_collector_events_fetched_total",
    "onepassword_collector_events_delivered_total",
    "onepassword_collector_events_unconfirmed_total",
    "onepassword_collector_sent_bytes_total",
    "onepassword_collector_pages_total",
    "onepassword_collector_failures_total",
    "onepassword_collector_deferrals_total",
    "onepassword_collector_onepassword_requests_total",
    "onepassword_collector_onepassword_rate_limited_total",
    "onepassword_collector_lag_seconds",
    "onepassword_collector_checkpoint_timestamp_seconds",
    "onepassword_collector_last_caught_up_timestamp_seconds",
    "onepassword_collector_freshness_seconds",
    "onepassword_collector_tick_duration_seconds_count",
    "onepassword_collector_guest_cpu_seconds_count",
    "onepassword_collector_peak_memory_bytes",
    "onepassword_collector_last_tick_timestamp_seconds",
    "onepassword_collector_skipped_firings_total",
    "onepassword_collector_catch_up_ticks_total",
    "onepassword_collector_catching_up",
    "onepassword_collector_consecutive_failed_ticks",
    "onepassword_collector_instances_in_use",
    "onepassword_collector_instances_capacity",
    "onepassword_collector_config_reloads_total",
    "onepassword_collector_config_last_reload_successful",
    "onepassword_collector_build_info",
];

#[test]
fn both_formats_have_every_family_before_the_first_event() {
    let telemetry = Arc::new(Telemetry::new());
    telemetry.component_loaded();
    telemetry.config_loaded(Utc::now());
    telemetry.instances(0, 4);
    let config = "[tenants.acme]\nschedule = \"0 0 0 1 1 *\"\n[tenants.acme.variables]\nservices = \"audit\"\n";
    let tenants = host_harness::tenant::parse(config, std::path::Path::new("/nonexistent"), |_| None).unwrap();
    telemetry.tenant_added(&tenants[0], Utc::now());
    let server = start(telemetry);
    let text = get(server.addr, "/metrics");
    let om = request_with(server.addr, "GET", "/metrics", "Accept: application/openmetrics-text\r\n");
    assert_eq!(om.header("content-type"), Some(OPENMETRICS_CONTENT_TYPE));
    let more = [
        "onepassword_collector_config_last_reload_success_timestamp_seconds",
        "onepassword_collector_ready",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_start_time_seconds",
        "process_open_fds",
    ];
    for (format, body) in [("text", &text.body), ("OpenMetrics", &om.body)] {
        for family in FAMILIES.iter().chain(&more) {
            let found = body
                .lines()
                .any(|l| l.strip_prefix(family).is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' ')));
            assert!(found, "{format}: no {family} before the first event:\n{body}");
        }
        // Every series of the tenant's is at zero, or NaN for a value not known yet.
        for line in body.lines().filter(|l| l.contains("tenant=\"acme\"") && !l.contains("freshness")) {
            let value = line.rsplit(' ').next().unwrap();
            assert!(value == "0" || value == "0.0" || value == "NaN", "{format}: {line}");
        }
        assert!(body.contains("onepassword_collector_instances_capacity 4\n"), "{format}:\n{body}");
        assert!(body
            .contains(&format!("onepassword_collector_build_info{{version=\"{}\"}} 1\n", env!("CARGO_PKG_VERSION"))));
    }
    server.task.abort();
}

#[test]
fn other_paths_and_methods_are_refused() {
    let server = start(Arc::new(Telemetry::new()));
    assert_eq!(get(server.addr, "/nope").status, 404);
    assert_eq!(get(server.addr, "/").status, 404);
    assert_eq!(get(server.addr, "/metrics/extra").status, 404);
    let post = request(server.addr, "POST", "/metrics");
    assert_eq!(post.status, 405);
    assert_eq!(post.header("allow"), Some("GET, HEAD"));
    let head = request(server.addr, "HEAD", "/healthz");
    assert_eq!((head.status, head.body.as_str()), (200, ""));
    server.task.abort();
}

#[test]
fn concurrent_scrapes_are_answered_and_an_aborted_server_is_gone() {
    let telemetry = Arc::new(Telemetry::new());
    telemetry.tick_finished(&tick("acme", vec![service("audit", 1, None)]), Utc::now());
    let server = start(telemetry);
    let addr = server.addr;
    let scrapes: Vec<_> = (0..16).map(|_| std::thread::spawn(move || get(addr, "/metrics").status)).collect();
    for scrape in scrapes {
        assert_eq!(scrape.join().unwrap(), 200);
    }
    // An idle client does not block others.
    let _idle = TcpStream::connect(addr).unwrap();
    assert_eq!(get(addr, "/healthz").status, 200);

    server.task.abort();
    let result = server.runtime.block_on(server.task);
    assert!(result.unwrap_err().is_cancelled());
    assert!(TcpStream::connect(addr).is_err(), "the listener is closed with its task");
}

#[test]
fn lag_and_freshness_are_as_of_the_scrape_not_the_last_tick() {
    let telemetry = Arc::new(Telemetry::new());
    // The last tick was an hour ago (an hourly schedule); its checkpoint is
    // the report's 2026-01-01T00:00:00Z.
    let tick_time = Utc::now() - chrono::Duration::hours(1);
    telemetry.tick_finished(&tick("acme", vec![service("audit", 1, None)]), tick_time);
    let server = start(telemetry.clone());
    let body = get(server.addr, "/metrics").body;
    let line = body
        .lines()
        .find(|l| l.starts_with("onepassword_collector_lag_seconds{tenant=\"acme\",service=\"audit\"}"))
        .unwrap_or_else(|| panic!("no lag in:\n{body}"));
    let lag: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    let checkpoint = chrono::DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z").unwrap();
    let as_of_tick = (tick_time - checkpoint.with_timezone(&Utc)).num_seconds() as f64;
    assert!(lag >= as_of_tick + 3590.0, "lag {lag} s is the tick's ({as_of_tick} s), not the scrape's");
    // That tick delivered with nothing more waiting: caught up an hour ago.
    let freshness = body
        .lines()
        .find_map(|l| l.strip_prefix("onepassword_collector_freshness_seconds{tenant=\"acme\",service=\"audit\"} "))
        .unwrap_or_else(|| panic!("no freshness in:\n{body}"));
    let freshness: f64 = freshness.parse().unwrap();
    assert!((3590.0..3700.0).contains(&freshness), "freshness {freshness} s: caught up an hour before the scrape");
    server.task.abort();
}
