//! The monitoring folder under a real Prometheus server (Debian's
//! `prometheus` package: `prometheus` and `promtool`), all on loopback:
//!
//! - `promtool check rules monitoring/alerts.yaml`;
//! - `host-harness run --listen` with two tenants against the emulators: one
//!   healthy and quiet (caught up, its newest event two hours old), one whose
//!   token 1Password refuses on every tick; `promtool check metrics` on a
//!   live scrape in the text format;
//! - Prometheus scraping that process every second and evaluating a copy of
//!   the repository's rules every second, their `for:` made `0s`: an alert
//!   fires for the failing tenant, and none for the healthy one nor for the
//!   process (the newest event's age would have tripped the old lag alert).
//!
//! A missing binary fails the test naming the package; nothing is skipped.
//! Every wait is bounded; the whole test takes well under a minute.

use harness_test_kit::emulator::{Dataset, DevoEmulator, DevoOptions, OnePasswordEmulator, OnePasswordOptions};
use serde_json::Value;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const OP_TOKEN: &str = "prometheus-op-token-secret";
const DEVO_TOKEN: &str = "prometheusDevoToken0123456789abc";
/// The longest the whole test may wait for anything.
const PATIENCE: Duration = Duration::from_secs(45);

/// `name` on the PATH, or a failure that says which package brings it.
fn binary(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).map(|dir| dir.join(name)).find(|p| p.is_file()).unwrap_or_else(|| {
        panic!(
            "{name} is not installed: this test needs Prometheus's {name}; install Debian's package \
             prometheus (apt-get install prometheus; scripts/test.sh does it)"
        )
    })
}

fn repository() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// GET `path` on 127.0.0.1:`port`: (status, body); `None` while nothing
/// answers.
fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").ok()?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).ok()?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    let body =
        if head.to_ascii_lowercase().contains("transfer-encoding: chunked") { unchunk(body) } else { body.into() };
    Some((status, body))
}

/// A chunked HTTP/1.1 body, joined.
fn unchunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else { break };
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}

/// `text` percent-encoded for a query string.
fn encoded(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Waits until `f` gives something, or fails saying `what`.
fn wait_for<T>(what: &str, until: Instant, mut f: impl FnMut() -> Option<T>) -> T {
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < until, "gave up waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A child process killed (and reaped) when dropped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn run(command: &mut Command) -> std::process::Output {
    let output = command.output().unwrap_or_else(|e| panic!("{command:?}: {e}"));
    assert!(
        output.status.success(),
        "{command:?} failed ({}):\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// The repository's rules with every `for:` made `0s`: an expression that
/// matches fires at the next evaluation.
fn rules_without_for(rules: &str) -> String {
    let mut out = String::new();
    for line in rules.lines() {
        match line.trim_start().strip_prefix("for:") {
            Some(_) => {
                let indent = &line[..line.len() - line.trim_start().len()];
                out.push_str(&format!("{indent}for: 0s\n"));
            }
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

/// Active alerts: (alertname, tenant label if any, state).
fn alerts(port: u16) -> Option<Vec<(String, Option<String>, String)>> {
    let (status, body) = get(port, "/api/v1/alerts")?;
    if status != 200 {
        return None;
    }
    let json: Value = serde_json::from_str(&body).ok()?;
    let list = json["data"]["alerts"].as_array()?;
    Some(
        list.iter()
            .map(|a| {
                let name = a["labels"]["alertname"].as_str().unwrap_or("").to_string();
                let tenant = a["labels"]["tenant"].as_str().map(str::to_string);
                (name, tenant, a["state"].as_str().unwrap_or("").to_string())
            })
            .collect(),
    )
}

/// The value of an instant query that returns one series.
fn query(port: u16, expr: &str) -> Option<f64> {
    let (status, body) = get(port, &format!("/api/v1/query?query={}", encoded(expr)))?;
    if status != 200 {
        return None;
    }
    let json: Value = serde_json::from_str(&body).ok()?;
    let result = json["data"]["result"].as_array()?;
    if result.len() != 1 {
        return None;
    }
    result[0]["value"][1].as_str()?.parse().ok()
}

#[test]
fn prometheus_fires_for_a_failing_tenant_and_not_for_a_quiet_caught_up_one() {
    let promtool = binary("promtool");
    let prometheus = binary("prometheus");
    let started = Instant::now();
    let until = started + PATIENCE;
    let rules = repository().join("monitoring/alerts.yaml");
    let out = run(Command::new(&promtool).arg("check").arg("rules").arg(&rules));
    assert!(String::from_utf8_lossy(&out.stdout).contains("SUCCESS"), "{out:?}");

    // The world: 1Password (two hours of quiet since its newest event) and Devo.
    let now = chrono::Utc::now();
    let dataset = Dataset::generate(301, 20, now - chrono::Duration::hours(3), chrono::Duration::hours(1));
    let op = OnePasswordEmulator::start(OnePasswordOptions::new(OP_TOKEN, dataset)).unwrap();
    let devo = DevoEmulator::start(DevoOptions { domain: "prom".into(), token: DEVO_TOKEN.into() }).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let tenant = |name: &str, token: &str| {
        format!(
            "[tenants.{name}]\nschedule = \"* * * * * *\"\n[tenants.{name}.variables]\nbase_url = \"{}\"\n\
             token = \"{token}\"\ndevo_url = \"{}\"\ndevo_domain = \"prom\"\n\
             devo_token = \"${{PROM_DEVO_TOKEN}}\"\nservices = \"audit\"\n",
            op.base_url(),
            devo.base_url()
        )
    };
    let config = dir.path().join("tenants.toml");
    std::fs::write(
        &config,
        format!(
            "{}shared_variables = [\"PROM_OP_TOKEN\", \"PROM_DEVO_TOKEN\"]\n\n{}\n{}",
            harness_test_kit::loopback::HOST_SECTION,
            tenant("healthy", "${PROM_OP_TOKEN}"),
            tenant("failing", "revoked-token-1Password-refuses")
        ),
    )
    .unwrap();
    let harness_port = free_port();
    let _harness = Killed(
        Command::new(env!("CARGO_BIN_EXE_host-harness"))
            .args(["run", "--log-format", "json", "--listen", &format!("127.0.0.1:{harness_port}"), "--config"])
            .arg(&config)
            .env("PROM_OP_TOKEN", OP_TOKEN)
            .env("PROM_DEVO_TOKEN", DEVO_TOKEN)
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );

    // The healthy tenant caught up: a scrape says so; promtool accepts it.
    let metrics = wait_for("the healthy tenant to catch up", until, || {
        let (_, body) = get(harness_port, "/metrics")?;
        let caught_up = body.lines().any(|l| {
            l.starts_with("onepassword_collector_last_caught_up_timestamp_seconds{tenant=\"healthy\"")
                && !l.ends_with(" NaN")
        });
        caught_up.then_some(body)
    });
    let mut check = Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    check.stdin.take().unwrap().write_all(metrics.as_bytes()).unwrap();
    let checked = check.wait_with_output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&checked.stdout), String::from_utf8_lossy(&checked.stderr));
    assert!(checked.status.success() && said.trim().is_empty(), "promtool check metrics:\n{said}\non:\n{metrics}");

    // Prometheus: scrape every second, the rules (for: 0s) every second.
    let fast_rules = dir.path().join("rules.yaml");
    std::fs::write(&fast_rules, rules_without_for(&std::fs::read_to_string(&rules).unwrap())).unwrap();
    let prometheus_config = dir.path().join("prometheus.yml");
    std::fs::write(
        &prometheus_config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\nscrape_configs:\n  \
             - job_name: onepassword-collector\n    static_configs:\n      - targets: [\"127.0.0.1:{harness_port}\"]\n",
            fast_rules.display()
        ),
    )
    .unwrap();
    run(Command::new(&promtool).arg("check").arg("config").arg(&prometheus_config));
    let prometheus_port = free_port();
    let _prometheus = Killed(
        Command::new(&prometheus)
            .arg(format!("--config.file={}", prometheus_config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{prometheus_port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for("Prometheus to be ready", until, || (get(prometheus_port, "/-/ready")?.0 == 200).then_some(()));
    wait_for("a scrape of the harness", until, || {
        (query(prometheus_port, "up{job=\"onepassword-collector\"}")? == 1.0).then_some(())
    });

    // The failing tenant trips an alert (five failed ticks in a row).
    let firing = wait_for("an alert for the failing tenant", until, || {
        let alerts = alerts(prometheus_port)?;
        alerts
            .iter()
            .any(|(_, tenant, state)| tenant.as_deref() == Some("failing") && state == "firing")
            .then_some(alerts)
    });
    assert!(
        firing.iter().any(
            |(name, tenant, _)| name == "OnePasswordCollectorTenantFailing" && tenant.as_deref() == Some("failing")
        ),
        "{firing:?}"
    );
    // Rules evaluate every second: a few more rounds, and still nothing for
    // the healthy tenant nor for the process.
    std::thread::sleep(Duration::from_secs(3));
    let alerts = alerts(prometheus_port).expect("the alerts");
    let wrong: Vec<_> = alerts.iter().filter(|(_, tenant, _)| tenant.as_deref() != Some("failing")).collect();
    assert!(wrong.is_empty(), "alerts for the healthy tenant or the process: {wrong:?} (all: {alerts:?})");
    // What Prometheus saw of the healthy tenant: fresh, though its newest
    // event is over an hour old (the old rule on lag_seconds would fire).
    let fresh = query(prometheus_port, "onepassword_collector_freshness_seconds{tenant=\"healthy\"}").unwrap();
    let age = query(prometheus_port, "onepassword_collector_lag_seconds{tenant=\"healthy\"}").unwrap();
    assert!(fresh < 30.0 && age > 3600.0, "healthy: freshness {fresh} s, newest event {age} s old");
    let ready = query(prometheus_port, "onepassword_collector_ready").unwrap();
    assert_eq!(ready, 1.0, "the failing tenant leaves the process ready");
    assert!(started.elapsed() < Duration::from_secs(60), "took {:?}", started.elapsed());
}

#[test]
fn the_rules_copy_keeps_everything_but_for() {
    let rules = "groups:\n  - rules:\n      - alert: A\n        expr: x > 1\n        for: 15m\n      - alert: B\n";
    assert_eq!(
        rules_without_for(rules),
        "groups:\n  - rules:\n      - alert: A\n        expr: x > 1\n        for: 0s\n      - alert: B\n"
    );
    assert_eq!(encoded("up{job=\"a b\"}"), "up%7Bjob%3D%22a%20b%22%7D");
    assert_eq!(unchunk("5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"), "hello world");
}
