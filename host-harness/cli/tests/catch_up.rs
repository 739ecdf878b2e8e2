//! `host-harness run` catches up between firings: a tick that ends with a
//! backlog is followed by another as soon as the budget allows, not at the
//! next firing; 1Password never sees more than the budget in any minute,
//! Devo gets every event once, and the log and metrics say so.

use harness_test_kit::emulator::{Dataset, DevoEmulator, DevoOptions, OnePasswordEmulator, OnePasswordOptions};
use onepassword_collector::service::Service;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const OP_TOKEN: &str = "catch-up-op-token-secret";
const DEVO_TOKEN: &str = "catchUpDevoToken0123456789abcdef";
/// The account's budget a minute, and 1Password's own limit (plus the one
/// introspection).
const BUDGET: usize = 10;

/// A `run` process whose stdout and stderr lines are collected as they come.
struct Running {
    child: Child,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl Running {
    fn start(config: &std::path::Path, dir: &std::path::Path, port: u16) -> Running {
        let mut child = Command::new(env!("CARGO_BIN_EXE_host-harness"))
            .args(["run", "--log-format", "json", "--listen", &format!("127.0.0.1:{port}"), "--config"])
            .arg(config)
            .env("CATCH_OP_TOKEN", OP_TOKEN)
            .env("CATCH_DEVO_TOKEN", DEVO_TOKEN)
            .current_dir(dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
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

    fn ticks(&self) -> Vec<serde_json::Value> {
        self.stdout.lock().unwrap().iter().map(|l| serde_json::from_str(l).unwrap()).collect()
    }

    fn logs(&self) -> Vec<serde_json::Value> {
        self.stderr.lock().unwrap().iter().map(|l| serde_json::from_str(l).unwrap()).collect()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// GET /metrics on loopback.
fn metrics(port: u16) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(stream, "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    text.split_once("\r\n\r\n").map_or(String::new(), |(_, b)| b.to_string())
}

fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

#[test]
fn run_drains_a_backlog_between_firings_within_the_budget_exactly_once() {
    // 200 audit events in pages of 10, at most 2 pages a tick: 20 pages, 10
    // ticks at least. Firings every 10 s; the budget allows 10 a minute, so
    // the backlog needs two minutes' budget: half at the first firing, half
    // a minute later.
    let now = chrono::Utc::now();
    let dataset = Dataset::generate(91, 200, now - chrono::Duration::hours(2), chrono::Duration::hours(1));
    let op = OnePasswordEmulator::start(OnePasswordOptions::new(OP_TOKEN, dataset.clone())).unwrap();
    op.set_rate_limit(Some(BUDGET as u32 + 1), None);
    let devo = DevoEmulator::start(DevoOptions { domain: "catch".into(), token: DEVO_TOKEN.into() }).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("tenants.toml");
    let shared = "shared_variables = [\"CATCH_OP_TOKEN\", \"CATCH_DEVO_TOKEN\"]\n";
    let tenant = format!(
        "[tenants.acme]\nschedule = \"*/10 * * * * *\"\n[tenants.acme.variables]\nbase_url = \"{}\"\n\
         token = \"${{CATCH_OP_TOKEN}}\"\ndevo_url = \"{}\"\ndevo_domain = \"catch\"\n\
         devo_token = \"${{CATCH_DEVO_TOKEN}}\"\nservices = \"audit\"\npage_size = 10\nmax_pages_per_tick = 2\n\
         max_requests_per_minute = {BUDGET}\n",
        op.base_url(),
        devo.base_url()
    );
    std::fs::write(&config, format!("{}{shared}\n{tenant}", harness_test_kit::loopback::HOST_SECTION)).unwrap();
    let port = free_port();
    let run = Running::start(&config, dir.path(), port);

    let served = dataset.values(Service::Audit);
    let patience = Instant::now() + Duration::from_secs(150);
    while devo.event_values(Service::Audit.default_tag()).len() < served.len() {
        assert!(Instant::now() < patience, "not drained; stderr:\n{}", run.stderr.lock().unwrap().join("\n"));
        std::thread::sleep(Duration::from_millis(200));
    }
    // Let the last tick's line (and the log saying it is caught up) arrive.
    let caught_up = Instant::now() + Duration::from_secs(20);
    while !run.logs().iter().any(|l| l["msg"].as_str().is_some_and(|m| m.starts_with("caught up"))) {
        assert!(Instant::now() < caught_up, "no 'caught up' line:\n{}", run.stderr.lock().unwrap().join("\n"));
        std::thread::sleep(Duration::from_millis(200));
    }
    let text = metrics(port);

    // Nothing twice, nothing lost.
    assert_eq!(devo.event_values(Service::Audit.default_tag()), served);
    // The budget held: never more than 10 event requests in 60 s, no 429.
    assert_eq!(op.rate_limited_count(), 0, "1Password answered 429");
    let mut times: Vec<_> =
        op.requests().iter().filter(|r| !r.path.ends_with("/introspect")).map(|r| r.clock_time).collect();
    times.sort();
    for (i, t) in times.iter().enumerate() {
        let within = times[i..].iter().take_while(|u| (**u - *t).num_milliseconds() <= 60_000).count();
        assert!(within <= BUDGET, "{within} requests within a minute from {t}");
    }
    // Between firings: the first firing's tick, then catch-up ticks at once
    // (two pages each) until the budget was spent, then from when it freed
    // up.
    let ticks = run.ticks();
    let catch_ups: Vec<_> = ticks.iter().filter(|t| t["catch_up"] == true).collect();
    let paged = |t: &serde_json::Value| t["services"]["audit"]["pages"].as_u64().unwrap_or(0) > 0;
    assert!(catch_ups.iter().filter(|t| paged(t)).count() >= 6, "catch-up ticks that paged: {ticks:?}");
    let first = ticks.iter().find(|t| t["catch_up"].is_null()).unwrap();
    let first_at = chrono::DateTime::parse_from_rfc3339(first["fired_at"].as_str().unwrap()).unwrap();
    let last = ticks.iter().rfind(|t| paged(t)).unwrap();
    let last_at = chrono::DateTime::parse_from_rfc3339(last["started_at"].as_str().unwrap()).unwrap();
    // Two minutes' budget: done a minute and a few seconds after the first
    // firing, not ten firings later.
    assert!(
        (last_at - first_at).num_seconds() <= 75,
        "drained {} s after the first firing",
        (last_at - first_at).num_seconds()
    );
    // The log and the metrics say it.
    let logs = run.logs();
    assert!(logs.iter().any(|l| l["msg"].as_str().is_some_and(|m| m.starts_with("catching up"))), "{logs:?}");
    let counted = sample(&text, r#"onepassword_collector_catch_up_ticks_total{tenant="acme"}"#).unwrap();
    assert_eq!(counted as usize, catch_ups.len(), "{text}");
    assert_eq!(sample(&text, r#"onepassword_collector_catching_up{tenant="acme"}"#), Some(0.0), "{text}");
    // A catch-up tick in flight at a firing is not a skipped firing.
    assert_eq!(sample(&text, r#"onepassword_collector_skipped_firings_total{tenant="acme"}"#), Some(0.0), "{text}");
}
