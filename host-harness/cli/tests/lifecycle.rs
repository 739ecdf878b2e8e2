//! `host-harness run` as an operator runs it next to Prometheus: metrics
//! with values after ticks, readiness that a failing tenant leaves alone and
//! an unreachable store turns false, SIGHUP reloads
//! (add, remove, an invalid file that changes nothing), SIGTERM during a slow
//! tick (finishes within the grace period, or is cut and loses nothing),
//! overlapping firings skipped and counted; and `tick`'s table against its
//! JSON lines.

use harness_test_kit::emulator::{
    Dataset, DevoEmulator, DevoFault, DevoOptions, OnePasswordEmulator, OnePasswordOptions,
};
use onepassword_collector::service::Service;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const OP_TOKEN: &str = "lifecycle-op-token-secret";
const DEVO_TOKEN: &str = "lifecycleDevoToken0123456789abcd";

struct World {
    /// What 1Password serves at first.
    dataset: Dataset,
    op: OnePasswordEmulator,
    devo: DevoEmulator,
    dir: tempfile::TempDir,
    config: std::path::PathBuf,
}

impl World {
    fn new(seed: u64, events: usize) -> World {
        let now = chrono::Utc::now();
        let dataset = Dataset::generate(seed, events, now - chrono::Duration::hours(2), chrono::Duration::hours(1));
        let op = OnePasswordEmulator::start(OnePasswordOptions::new(OP_TOKEN, dataset.clone())).unwrap();
        let devo = DevoEmulator::start(DevoOptions { domain: "life".into(), token: DEVO_TOKEN.into() }).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("tenants.toml");
        World { dataset, op, devo, dir, config }
    }

    /// A tenant's table: audit only, every second, pages of `page`.
    fn tenant(&self, name: &str, page: usize, extra: &str) -> String {
        format!(
            "[tenants.{name}]\nschedule = \"* * * * * *\"\n[tenants.{name}.variables]\nbase_url = \"{}\"\n\
             token = \"${{LIFE_OP_TOKEN}}\"\ndevo_url = \"{}\"\ndevo_domain = \"life\"\n\
             devo_token = \"${{LIFE_DEVO_TOKEN}}\"\nservices = \"audit\"\npage_size = {page}\n{extra}\n",
            self.op.base_url(),
            self.devo.base_url()
        )
    }

    /// `n` newer audit events for 1Password to serve.
    fn more_events(&self, seed: u64, n: usize) {
        let now = chrono::Utc::now();
        let more = Dataset::generate(seed, n, now - chrono::Duration::minutes(30), chrono::Duration::minutes(20));
        self.op.push_events(Service::Audit, more.values(Service::Audit));
    }

    /// Writes the config: `text` under the `[host]` keys that let the
    /// tenants reach the emulators (plain http on loopback).
    fn write(&self, text: &str) {
        let shared = "shared_variables = [\"LIFE_OP_TOKEN\", \"LIFE_DEVO_TOKEN\"]\n";
        std::fs::write(&self.config, format!("{}{shared}\n{text}", harness_test_kit::loopback::HOST_SECTION)).unwrap();
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_host-harness"));
        c.args(args)
            .arg("--config")
            .arg(&self.config)
            .env("LIFE_OP_TOKEN", OP_TOKEN)
            .env("LIFE_DEVO_TOKEN", DEVO_TOKEN)
            .current_dir(self.dir.path());
        c
    }
}

/// A `run` process whose stdout and stderr lines are collected as they come.
struct Running {
    child: Child,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl Running {
    fn start(world: &World, extra: &[&str]) -> Running {
        let mut args = vec!["run", "--log-format", "json"];
        args.extend_from_slice(extra);
        let mut child = world.command(&args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        let collect = |pipe: Box<dyn Read + Send>| {
            let lines = Arc::new(Mutex::new(Vec::new()));
            let sink = Arc::clone(&lines);
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    sink.lock().unwrap().push(line);
                }
            });
            lines
        };
        let stdout = collect(Box::new(child.stdout.take().unwrap()));
        let stderr = collect(Box::new(child.stderr.take().unwrap()));
        Running { child, stdout, stderr }
    }

    fn signal(&self, signal: libc::c_int) {
        // SAFETY: kill(2) on our own child's pid.
        assert_eq!(unsafe { libc::kill(self.child.id() as libc::pid_t, signal) }, 0);
    }

    /// Waits until a stdout (tick) line satisfies `want`.
    fn wait_tick(&self, patience: Duration, want: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
        let until = Instant::now() + patience;
        loop {
            let found = self.ticks().into_iter().find(|l| want(l));
            if let Some(line) = found {
                return line;
            }
            if Instant::now() > until {
                let stderr = self.stderr.lock().unwrap().join("\n");
                panic!("no such tick; stderr:\n{stderr}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn wait_log(&self, patience: Duration, text: &str) -> serde_json::Value {
        let until = Instant::now() + patience;
        loop {
            let found = self.logs().into_iter().find(|l| l.to_string().contains(text));
            if let Some(line) = found {
                return line;
            }
            if Instant::now() > until {
                let stderr = self.stderr.lock().unwrap().join("\n");
                panic!("no log line with {text:?}:\n{stderr}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn ticks(&self) -> Vec<serde_json::Value> {
        self.stdout.lock().unwrap().iter().map(|l| serde_json::from_str(l).unwrap()).collect()
    }

    fn logs(&self) -> Vec<serde_json::Value> {
        let lines = self.stderr.lock().unwrap();
        lines.iter().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))).collect()
    }

    /// Waits for the process to exit on its own; its exit status.
    fn wait_exit(&mut self, patience: Duration) -> std::process::ExitStatus {
        let until = Instant::now() + patience;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                std::thread::sleep(Duration::from_millis(100)); // let the readers drain
                return status;
            }
            assert!(Instant::now() < until, "still running");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let stdout = self.stdout.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let stderr = self.stderr.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        for line in stdout.iter().chain(stderr.iter()) {
            assert!(!line.contains(OP_TOKEN) && !line.contains(DEVO_TOKEN), "secret printed: {line}");
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// GET `path` on loopback: (status, body).
fn get(port: u16, path: &str) -> (u16, String) {
    let until = Instant::now() + Duration::from_secs(10);
    let mut stream = loop {
        match TcpStream::connect(("127.0.0.1", port)) {
            Ok(s) => break s,
            Err(_) if Instant::now() < until => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => panic!("nothing listens on {port}: {e}"),
        }
    };
    write!(stream, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    let status = text.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_string();
    (status, body)
}

/// The value of the sample `name{labels}` in a /metrics body.
fn sample(metrics: &str, name: &str, labels: &str) -> Option<f64> {
    metrics.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (series, value) = l.rsplit_once(' ')?;
        let (n, rest) = series.split_once('{').unwrap_or((series, "}"));
        let wanted = labels.split(',').filter(|p| !p.is_empty()).all(|p| rest.contains(p));
        (n == name && wanted).then(|| value.parse().ok()).flatten()
    })
}

#[test]
fn metrics_carry_values_and_a_failing_tenant_leaves_the_process_ready() {
    let world = World::new(201, 30);
    world.write(&world.tenant("acme", 10, ""));
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    // --unready-after is accepted (old command lines still start) and ignored.
    let run = Running::start(&world, &["--listen", &listen, "--unready-after", "2"]);
    assert_eq!(get(port, "/healthz").0, 200);
    let ignored = run.wait_log(Duration::from_secs(10), "--unready-after is ignored");
    assert_eq!(ignored["level"], "warn");
    run.wait_tick(Duration::from_secs(20), |t| t["services"]["audit"]["total_sent"] == 30);
    let (status, metrics) = get(port, "/metrics");
    assert_eq!(status, 200);
    let delivered =
        sample(&metrics, "onepassword_collector_events_delivered_total", "tenant=\"acme\",service=\"audit\"");
    assert_eq!(delivered, Some(30.0), "{metrics}");
    let pages = sample(&metrics, "onepassword_collector_pages_total", "tenant=\"acme\",service=\"audit\"");
    assert!(pages.is_some_and(|p| p >= 3.0), "{metrics}");
    let lag = sample(&metrics, "onepassword_collector_lag_seconds", "tenant=\"acme\",service=\"audit\"").unwrap();
    assert!((3000.0..9000.0).contains(&lag), "lag {lag}: the newest event is about 1 h old");
    assert!(!metrics.contains(OP_TOKEN) && !metrics.contains(DEVO_TOKEN));
    let (status, body) = get(port, "/readyz");
    assert_eq!(status, 200, "{body}");

    // Devo fails every request: the tenant's ticks fail, over and over. That
    // is the tenant's failure, not the process's: the metrics say so, and
    // /readyz stays 200.
    world.devo.set_failure(Some(500));
    world.more_events(202, 10);
    let until = Instant::now() + Duration::from_secs(20);
    let metrics = loop {
        let (_, metrics) = get(port, "/metrics");
        let failing = sample(&metrics, "onepassword_collector_consecutive_failed_ticks", "tenant=\"acme\"");
        if failing.is_some_and(|f| f >= 3.0) || Instant::now() > until {
            break metrics;
        }
        assert_eq!(get(port, "/readyz").0, 200, "a failing tenant made the process unready");
        std::thread::sleep(Duration::from_millis(200));
    };
    let failing = sample(&metrics, "onepassword_collector_consecutive_failed_ticks", "tenant=\"acme\"");
    assert!(failing.is_some_and(|f| f >= 3.0), "{metrics}");
    let failures = sample(&metrics, "onepassword_collector_failures_total", "tenant=\"acme\",error_id=\"700\"");
    assert!(failures.is_some_and(|f| f >= 3.0), "{metrics}");
    let (status, body) = get(port, "/readyz");
    assert_eq!((status, body.as_str()), (200, "ready\n"));
    assert_eq!(sample(&metrics, "onepassword_collector_ready", ""), Some(1.0));

    world.devo.set_failure(None);
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, metrics) = get(port, "/metrics");
        if sample(&metrics, "onepassword_collector_consecutive_failed_ticks", "tenant=\"acme\"") == Some(0.0) {
            break;
        }
        assert!(Instant::now() < until, "still failing after Devo recovered:\n{metrics}");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(get(port, "/nope").0, 404);
}

#[test]
fn a_store_that_cannot_be_reached_makes_the_process_unready() {
    let world = World::new(205, 10);
    // acme's Redis: a loopback port nobody listens on. globex keeps its
    // SQLite store and delivers.
    let gone = free_port();
    let acme = world
        .tenant("acme", 10, "")
        .replace("[tenants.acme.variables]", "kv = \"redis:gone\"\n[tenants.acme.variables]");
    world.write(&format!(
        "[host.redis]\ngone = \"redis://127.0.0.1:{gone}/0\"\n\n{acme}\n{}",
        world.tenant("globex", 10, "")
    ));
    let port = free_port();
    let run = Running::start(&world, &["--listen", &format!("127.0.0.1:{port}")]);
    run.wait_tick(Duration::from_secs(20), |t| t["tenant"] == "globex" && t["services"]["audit"]["total_sent"] == 10);
    let until = Instant::now() + Duration::from_secs(20);
    let (status, body) = loop {
        let (status, body) = get(port, "/readyz");
        if status == 503 || Instant::now() > until {
            break (status, body);
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(status, 503, "{body}");
    assert_eq!(body, "not ready\ntenant acme: key-value store unreachable (error 200)\n");
    let (_, metrics) = get(port, "/metrics");
    assert_eq!(sample(&metrics, "onepassword_collector_ready", ""), Some(0.0), "{metrics}");
    assert_eq!(get(port, "/healthz").0, 200, "the process still answers");
}

#[test]
fn every_series_is_there_before_the_first_tick_and_reloads_are_gauged() {
    let world = World::new(206, 5);
    // A yearly schedule: no tick during the test.
    let tenant = world.tenant("acme", 10, "").replace("schedule = \"* * * * * *\"", "schedule = \"0 0 0 1 1 *\"");
    let file = format!("max_concurrent_instances = 5\n\n{tenant}");
    world.write(&file);
    let port = free_port();
    let run = Running::start(&world, &["--listen", &format!("127.0.0.1:{port}")]);
    let until = Instant::now() + Duration::from_secs(20);
    let metrics = loop {
        let (_, metrics) = get(port, "/metrics");
        if metrics.contains("onepassword_collector_freshness_seconds{tenant=\"acme\",service=\"audit\"}") {
            break metrics;
        }
        assert!(Instant::now() < until, "the tenant's series never came:\n{metrics}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let audit = "tenant=\"acme\",service=\"audit\"";
    let zero = |name: &str, labels: &str| {
        assert_eq!(sample(&metrics, name, labels), Some(0.0), "{name}{{{labels}}}:\n{metrics}");
    };
    zero("onepassword_collector_failures_total", &format!("{audit},error_id=\"700\""));
    zero("onepassword_collector_failures_total", &format!("{audit},error_id=\"401\""));
    zero("onepassword_collector_deferrals_total", &format!("{audit},reason=\"budget\""));
    zero("onepassword_collector_service_ticks_total", &format!("{audit},outcome=\"failed\""));
    zero("onepassword_collector_events_delivered_total", audit);
    zero("onepassword_collector_ticks_total", "tenant=\"acme\",outcome=\"failed\"");
    zero("onepassword_collector_instances_in_use", "");
    let capacity = sample(&metrics, "onepassword_collector_instances_capacity", "");
    assert_eq!(capacity, Some(5.0), "the pool's size before any tick:\n{metrics}");
    assert!(sample(&metrics, "onepassword_collector_lag_seconds", audit).is_some_and(f64::is_nan), "{metrics}");
    assert_eq!(sample(&metrics, "onepassword_collector_config_last_reload_successful", ""), Some(1.0));
    let loaded = sample(&metrics, "onepassword_collector_config_last_reload_success_timestamp_seconds", "").unwrap();
    let now = chrono::Utc::now().timestamp() as f64;
    assert!((now - 60.0..=now + 1.0).contains(&loaded), "loaded at {loaded}, now {now}");
    assert_eq!(sample(&metrics, "onepassword_collector_build_info", "version=\""), Some(1.0), "{metrics}");
    let started = sample(&metrics, "process_start_time_seconds", "").expect("process_start_time_seconds");
    assert!((now - 60.0..=now + 1.0).contains(&started), "started at {started}, now {now}");
    assert!(sample(&metrics, "process_cpu_seconds_total", "").is_some_and(|v| v >= 0.0), "{metrics}");
    for process in ["process_resident_memory_bytes", "process_open_fds"] {
        assert!(sample(&metrics, process, "").is_some_and(|v| v > 0.0), "{process}:\n{metrics}");
    }
    // The Prometheus text format by default: HELP and TYPE name the series.
    assert!(metrics.contains("# TYPE onepassword_collector_failures_total counter\n"), "{metrics}");

    // A reload that fails: the gauge says so, the success time stays.
    world.write("[tenants.acme]\nschedule = \"every second\"\n");
    run.signal(libc::SIGHUP);
    run.wait_log(Duration::from_secs(10), "reload failed, nothing changed");
    let (_, metrics) = get(port, "/metrics");
    assert_eq!(sample(&metrics, "onepassword_collector_config_last_reload_successful", ""), Some(0.0));
    let stays = sample(&metrics, "onepassword_collector_config_last_reload_success_timestamp_seconds", "");
    assert_eq!(stays, Some(loaded));
    // One that loads: successful again.
    world.write(&file);
    run.signal(libc::SIGHUP);
    run.wait_log(Duration::from_secs(10), "reloaded:");
    let (_, metrics) = get(port, "/metrics");
    assert_eq!(sample(&metrics, "onepassword_collector_config_last_reload_successful", ""), Some(1.0));
    let reloaded = sample(&metrics, "onepassword_collector_config_last_reload_success_timestamp_seconds", "").unwrap();
    assert!(reloaded >= loaded, "{reloaded} < {loaded}");
    assert!(run.ticks().is_empty(), "no tick ran");
}

#[test]
fn sighup_adds_and_removes_tenants_and_an_invalid_file_changes_nothing() {
    let world = World::new(211, 20);
    // One page a tick: the changed setting's first tick sends one page.
    world.write(&world.tenant("alpha", 10, "max_pages_per_tick = 1"));
    let run = Running::start(&world, &[]);
    run.wait_tick(Duration::from_secs(20), |t| t["tenant"] == "alpha");

    // alpha removed, beta added
    world.write(&world.tenant("beta", 10, "max_pages_per_tick = 1"));
    run.signal(libc::SIGHUP);
    run.wait_log(Duration::from_secs(10), "reloaded: 1 added, 0 changed, 1 removed; added: beta; removed: alpha");
    run.wait_tick(Duration::from_secs(20), |t| t["tenant"] == "beta");
    // alpha may finish the tick it had in flight, then fires no more
    std::thread::sleep(Duration::from_millis(1500));
    let alpha_ticks = run.ticks().iter().filter(|t| t["tenant"] == "alpha").count();
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(run.ticks().iter().filter(|t| t["tenant"] == "alpha").count(), alpha_ticks, "alpha still ticks");

    // a file that does not load: logged, nothing changes, beta goes on
    world.write("[tenants.beta]\nschedule = \"every second\"\n");
    run.signal(libc::SIGHUP);
    let line = run.wait_log(Duration::from_secs(10), "reload failed, nothing changed");
    assert_eq!(line["level"], "error");
    assert!(line["msg"].as_str().unwrap().contains("schedule"), "says why: {line}");
    let beta_ticks = run.ticks().iter().filter(|t| t["tenant"] == "beta").count();
    run.wait_tick(Duration::from_secs(10), |_| {
        run.ticks().iter().filter(|t| t["tenant"] == "beta").count() > beta_ticks
    });

    // a changed setting applies from the next tick: beta now also collects sign-in attempts
    let more = world
        .tenant("beta", 10, "max_pages_per_tick = 1")
        .replace("services = \"audit\"", "services = \"audit,sign_in_attempts\"");
    world.write(&more);
    run.signal(libc::SIGHUP);
    run.wait_log(Duration::from_secs(10), "reloaded: 0 added, 1 changed, 0 removed; changed: beta");
    run.wait_tick(Duration::from_secs(20), |t| {
        t["tenant"] == "beta" && t["services"]["sign_in_attempts"]["sent"] == 10
    });
}

#[test]
fn sigterm_lets_a_slow_tick_finish_within_the_grace_period() {
    let world = World::new(221, 10);
    world.write(&world.tenant("acme", 10, "request_timeout_ms = 10000"));
    // Devo stores the events at once and answers 2 s later.
    world.devo.push_faults([DevoFault::AcceptAfter(Duration::from_secs(2))]);
    let mut run = Running::start(&world, &["--grace-period", "20"]);
    let until = Instant::now() + Duration::from_secs(20);
    while world.devo.requests().is_empty() {
        assert!(Instant::now() < until, "no Devo request");
        std::thread::sleep(Duration::from_millis(20));
    }
    run.signal(libc::SIGTERM);
    let status = run.wait_exit(Duration::from_secs(15));
    assert!(status.success(), "{status}");
    let ticks = run.ticks();
    assert_eq!(ticks.len(), 1, "the tick in flight finished, no new one started: {ticks:?}");
    assert_eq!(ticks[0]["services"]["audit"]["sent"], 10);
    assert_eq!(ticks[0]["services"]["audit"]["total_sent"], 10, "its checkpoint was written");
    assert_eq!(world.devo.event_values(Service::Audit.default_tag()), world.dataset.values(Service::Audit));
    assert!(run.logs().iter().any(|l| l["msg"] == "stopped"));
}

#[test]
fn a_tick_cut_by_the_grace_period_loses_nothing() {
    let world = World::new(231, 10);
    world.write(&world.tenant("acme", 10, "request_timeout_ms = 20000"));
    // Devo takes the events but answers only after 10 s: longer than the grace.
    world.devo.push_faults([DevoFault::AcceptAfter(Duration::from_secs(10))]);
    let mut run = Running::start(&world, &["--grace-period", "1"]);
    let until = Instant::now() + Duration::from_secs(20);
    while world.devo.requests().is_empty() {
        assert!(Instant::now() < until, "no Devo request");
        std::thread::sleep(Duration::from_millis(20));
    }
    let asked = Instant::now();
    run.signal(libc::SIGTERM);
    assert!(run.wait_exit(Duration::from_secs(8)).success());
    assert!(asked.elapsed() < Duration::from_secs(5), "exited {:?} after SIGTERM", asked.elapsed());
    assert!(run.ticks().is_empty(), "the cut tick reported nothing");
    assert!(run.logs().iter().any(|l| l["msg"].as_str().unwrap_or("").contains("grace period over")));
    // Nothing was lost: the checkpoint had not moved (the next tick after the
    // cut tick's lease expires sends the page again).
    let out = world.command(&["status", "--output", "json"]).output().unwrap();
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let audit = &status["services"]["audit"];
    assert_eq!(audit["total_sent"], 0, "{status}");
    assert!(audit["newest_event"].is_null(), "{status}");
    assert!(audit["lease_until"].is_string(), "the cut tick's lease is left to expire: {status}");
}

#[test]
fn a_firing_while_the_last_tick_still_runs_is_skipped_and_counted() {
    let world = World::new(241, 10);
    world.write(&world.tenant("acme", 10, "request_timeout_ms = 10000"));
    world.devo.push_faults([DevoFault::AcceptAfter(Duration::from_millis(3500))]);
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let run = Running::start(&world, &["--listen", &listen]);
    let skipped = run.wait_log(Duration::from_secs(20), "still running");
    assert_eq!(skipped["level"], "warn");
    assert_eq!(skipped["tenant"], "acme");
    run.wait_tick(Duration::from_secs(20), |t| t["services"]["audit"]["total_sent"] == 10);
    let (_, metrics) = get(port, "/metrics");
    let count = sample(&metrics, "onepassword_collector_skipped_firings_total", "tenant=\"acme\"").unwrap_or(0.0);
    assert!(count >= 2.0, "a 3.5 s tick skips the firings in between: {count}\n{metrics}");
    let ticks = run.ticks();
    assert_eq!(ticks.iter().filter(|t| t["services"]["audit"]["sent"] == 10).count(), 1, "sent once: {ticks:?}");
}

#[test]
fn tick_prints_a_table_on_request_and_json_lines_otherwise() {
    let world = World::new(251, 15);
    // One page a tick: the first leaves more waiting.
    let one_page = "max_pages_per_tick = 1";
    world.write(&format!("{}{}", world.tenant("acme", 10, one_page), world.tenant("beta", 10, one_page)));
    let out = world.command(&["tick", "--output", "table"]).output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "a header and a row per tenant and service:\n{text}");
    assert!(lines[0].split_whitespace().eq([
        "tenant",
        "service",
        "outcome",
        "fetched",
        "sent",
        "lag",
        "checkpoint",
        "more",
        "error",
        "/",
        "why"
    ]));
    assert!(lines[1].starts_with("acme") && lines[1].contains("delivered") && lines[1].ends_with(" yes"), "{text}");
    // piped, without --output: today's JSON line per tenant
    let out = world.command(&["tick"]).output().unwrap();
    let json: Vec<serde_json::Value> =
        String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(json.len(), 2);
    assert_eq!(json[0]["services"]["audit"]["fetched"], 5);
    for line in &json {
        let checkpoint = line["services"]["audit"]["checkpoint"].as_str().unwrap();
        assert!(checkpoint.ends_with('Z'), "times are UTC: {checkpoint}");
        assert!(line["started_at"].as_str().unwrap().ends_with('Z'));
    }
}

#[test]
fn a_shard_needs_only_its_own_tenants_secrets() {
    let world = World::new(216, 10);
    // Two tenants in different shards of two; the other shard's token is
    // an environment variable this process does not have.
    let names: Vec<String> = (0..).map(|n| format!("t{n}")).take(40).collect();
    let ours = names.iter().find(|n| host_harness::shard::shard_of(n, 2) == 0).unwrap();
    let theirs = names.iter().find(|n| host_harness::shard::shard_of(n, 2) == 1).unwrap();
    // (Its own variable: a tenant reads only those named after it.)
    let unset = format!("{}_UNSET_OTHER_SHARD_TOKEN", theirs.to_uppercase());
    let other = world.tenant(theirs, 10, "").replace("${LIFE_OP_TOKEN}", &format!("${{{unset}}}"));
    world.write(&format!("{}\n{other}", world.tenant(ours, 10, "")));

    // Every shard at once needs every secret: the load fails naming it.
    let out = world.command(&["tick"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains(&unset));

    // Shard 0 of 2 runs its tenant without the other's.
    let run = Running::start(&world, &["--shard", "0/2"]);
    let tick = run.wait_tick(Duration::from_secs(20), |t| t["tenant"] == ours.as_str());
    assert_eq!(tick["ok"], true, "{tick}");
    assert!(run.ticks().iter().all(|t| t["tenant"] == ours.as_str()));
}
