//! The `host-harness` binary as a user runs it: a TOML config, secrets from
//! the environment, one JSON line per tenant, state kept across processes.

use harness_test_kit::emulator::{Dataset, DevoEmulator, DevoOptions, OnePasswordEmulator, OnePasswordOptions};
use onepassword_collector::service::Service;
use std::process::Command;

const OP_TOKEN: &str = "cli-op-token-secret";
const DEVO_TOKEN: &str = "cliDevoToken0123456789abcdefABCDE";

fn harness(args: &[&str]) -> (bool, Vec<serde_json::Value>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_host-harness"))
        .args(args)
        .env("CLI_OP_TOKEN", OP_TOKEN)
        .env("CLI_DEVO_TOKEN", DEVO_TOKEN)
        .output()
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    for text in [&stdout, &stderr] {
        assert!(!text.contains(OP_TOKEN) && !text.contains(DEVO_TOKEN), "secret printed: {text}");
    }
    let lines = stdout.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))).collect();
    (out.status.success(), lines, stderr)
}

/// Emulators with `events` per service and a config file for tenant `acme`
/// pointing at them; `tenant` and `variables` are extra TOML lines.
struct Setup {
    dataset: Dataset,
    op: OnePasswordEmulator,
    devo: DevoEmulator,
    dir: tempfile::TempDir,
    config: String,
}

fn setup(seed: u64, events: usize, tenant: &str, variables: &str, devo_token: &str) -> Setup {
    let now = chrono::Utc::now();
    let dataset = Dataset::generate(seed, events, now - chrono::Duration::hours(2), chrono::Duration::hours(1));
    let op = OnePasswordEmulator::start(OnePasswordOptions::new(OP_TOKEN, dataset.clone())).unwrap();
    let devo = DevoEmulator::start(DevoOptions { domain: "cli".into(), token: DEVO_TOKEN.into() }).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("harness.toml");
    // The emulators are plain http on loopback, refused unless allowed.
    let text = format!(
        "{}shared_variables = [\"CLI_OP_TOKEN\", \"CLI_DEVO_TOKEN\"]\n[tenants.acme]\n{tenant}\n[tenants.acme.variables]\nbase_url = \"{}\"\ntoken = \"${{CLI_OP_TOKEN}}\"\ndevo_url = \"{}\"\ndevo_domain = \"cli\"\ndevo_token = \"{devo_token}\"\n{variables}\n",
        harness_test_kit::loopback::HOST_SECTION,
        op.base_url(),
        devo.base_url()
    );
    std::fs::write(&path, text).unwrap();
    Setup { dataset, op, devo, config: path.to_str().unwrap().to_string(), dir }
}

impl Setup {
    /// Rewrites the config with another Devo token value.
    fn with_devo_token(&self, devo_token: &str) {
        let text = std::fs::read_to_string(&self.config).unwrap();
        let text = text.lines().map(|l| {
            if l.starts_with("devo_token") {
                format!("devo_token = \"{devo_token}\"")
            } else {
                l.to_string()
            }
        });
        std::fs::write(&self.config, text.collect::<Vec<_>>().join("\n")).unwrap();
    }
}

const ENV_DEVO_TOKEN: &str = "${CLI_DEVO_TOKEN}";

#[test]
fn tick_prints_a_line_per_tenant_and_state_survives_the_process() {
    let Setup { dataset, op: _op, devo, dir, config } = setup(
        3,
        30,
        "kv = \"acme.sqlite\"",
        // One page a tick: the second process has the rest to fetch.
        "page_size = 20\nmax_pages_per_tick = 1\nservices = \"audit,sign_in_attempts\"\n\n[tenants.broken.variables]\ntoken = \"x\"",
        ENV_DEVO_TOKEN,
    );
    let config = config.as_str();

    let (ok, lines, _) = harness(&["tick", "--config", config, "--tenant", "acme"]);
    assert!(ok, "{lines:?}");
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["tenant"], "acme");
    assert_eq!(lines[0]["ok"], true);
    assert_eq!(lines[0]["services"]["audit"]["fetched"], 20);
    assert_eq!(lines[0]["services"]["audit"]["has_more"], true);
    assert!(lines[0]["services"].get("item_usage").is_none());
    assert!(dir.path().join("state/acme.sqlite").exists());

    // a new process continues where the last one stopped
    let (ok, lines, _) = harness(&["tick", "--config", config, "--tenant", "acme"]);
    assert!(ok);
    assert_eq!(lines[0]["services"]["audit"]["fetched"], 10);
    assert_eq!(lines[0]["services"]["audit"]["total_sent"], 30);
    for svc in [Service::Audit, Service::SignInAttempts] {
        assert_eq!(devo.event_values(svc.default_tag()), dataset.values(svc));
    }
    assert!(devo.events(Service::ItemUsage.default_tag()).is_empty());

    // all tenants: the broken one fails with its missing key, exit status non-zero
    let (ok, lines, _) = harness(&["tick", "--config", config]);
    assert!(!ok);
    let broken = lines.iter().find(|l| l["tenant"] == "broken").unwrap();
    assert_eq!(broken["ok"], false);
    assert_eq!(broken["error"]["id"], 1);
    assert!(broken["error"]["message"].as_str().unwrap().contains("base_url"));
}

#[test]
fn a_bad_config_file_is_reported_without_a_tick() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bad.toml");
    std::fs::write(&config, "[tenants.a.variables]\ntoken = \"${A_UNSET_VARIABLE}\"\n[tenants.b]\n").unwrap();
    let (ok, lines, stderr) = harness(&["tick", "--config", config.to_str().unwrap()]);
    assert!(!ok && lines.is_empty());
    assert!(stderr.contains("A_UNSET_VARIABLE"), "{stderr}");
    // A command for tenant b alone needs none of a's secrets: b ticks (and
    // fails on its own missing base_url, error 1).
    let (ok, lines, stderr) = harness(&["tick", "--config", config.to_str().unwrap(), "--tenant", "b"]);
    assert!(!ok && !stderr.contains("A_UNSET_VARIABLE"), "{stderr}");
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!((&lines[0]["tenant"], &lines[0]["error"]["id"]), (&serde_json::json!("b"), &serde_json::json!(1)));
}

#[test]
fn demo_delivers_everything_exactly_once() {
    let mut out = Vec::new();
    let summary = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(harness_test_kit::demo::run(&host_harness::runtime::default_component_path(), 120, 50, &mut out))
        .unwrap();
    let text = String::from_utf8(out).unwrap();
    assert!(summary.complete(), "{text}");
    // One tick pages until caught up: three pages of 50 per service.
    assert_eq!(summary.ticks, 1, "{text}");
    assert!(text.contains("every event arrived exactly once"));
    // progress per tick: per tag, delivered against served
    assert!(text.lines().any(|l| l.starts_with("tick   1") && l.contains("audit 120/120")), "{text}");
    assert!(text.lines().any(|l| l.starts_with("tick   1") && l.contains("signinattempt 120/120")), "{text}");
    assert!(text.contains("auth.agilebits.onepassword.signinattempt"));
}

#[test]
fn validate_prints_a_checklist_pulls_nothing_and_fails_on_bad_credentials() {
    let setup = setup(4, 10, "", "", ENV_DEVO_TOKEN);
    let (op, devo, config) = (&setup.op, &setup.devo, std::path::PathBuf::from(&setup.config));
    let out = Command::new(env!("CARGO_BIN_EXE_host-harness"))
        .args(["validate", "--config", config.to_str().unwrap(), "--output", "table"])
        .env("CLI_OP_TOKEN", OP_TOKEN)
        .env("CLI_DEVO_TOKEN", DEVO_TOKEN)
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success(), "{text}");
    for check in [
        "configuration",
        "key-value store",
        "1Password",
        "scope audit",
        "scope item_usage",
        "scope sign_in_attempts",
        "Devo",
    ] {
        assert!(
            text.lines().any(|l| l.trim_start().starts_with("ok") && l.contains(check)),
            "{check} not ok in\n{text}"
        );
    }
    assert!(!text.contains(OP_TOKEN) && !text.contains(DEVO_TOKEN));
    assert!(op.requests().iter().all(|r| r.path.contains("introspect")), "no events pulled");
    assert_eq!(devo.total_events(), 0);

    setup.with_devo_token("wrongDevoToken0123456789");
    let out = Command::new(env!("CARGO_BIN_EXE_host-harness"))
        .args(["validate", "--config", config.to_str().unwrap(), "--output", "table"])
        .env("CLI_OP_TOKEN", OP_TOKEN)
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(!out.status.success());
    assert!(text.lines().any(|l| l.contains("FAIL") && l.contains("Devo") && l.contains("devo_token")), "{text}");
    assert!(!text.contains("wrongDevoToken"));
}

#[test]
fn status_shows_what_was_collected() {
    let setup = setup(5, 12, "", "services = \"audit\"", ENV_DEVO_TOKEN);
    let config = setup.config.as_str();
    let status = |format: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_host-harness"))
            .args(["status", "--config", config, "--output", format])
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap()
    };
    assert!(status("table").contains("never collected"));
    let (ok, _, _) = harness(&["tick", "--config", config]);
    assert!(ok);
    let text = status("table");
    let line = text.lines().find(|l| l.contains("audit")).unwrap();
    assert!(line.contains("acme") && line.contains(" 12 ") && line.ends_with("ok"), "{text}");
    // piped without --output: one JSON line per tenant, for scripts
    let out = Command::new(env!("CARGO_BIN_EXE_host-harness")).args(["status", "--config", config]).output().unwrap();
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["tenant"], "acme");
    assert_eq!(json["services"]["audit"]["total_sent"], 12);
    assert!(json["services"]["audit"]["newest_event"].as_str().unwrap().ends_with('Z'), "{json}");
}

#[test]
fn run_ticks_every_tenant_on_its_schedule_and_logs_each_service() {
    let Setup { dataset, op: _op, devo, dir: _dir, config } =
        setup(6, 30, "schedule = \"* * * * * *\"", "services = \"audit\"\npage_size = 10", ENV_DEVO_TOKEN);
    let mut child = Command::new(env!("CARGO_BIN_EXE_host-harness"))
        .args(["run", "--config", &config])
        .env("CLI_OP_TOKEN", OP_TOKEN)
        .env("CLI_DEVO_TOKEN", DEVO_TOKEN)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // every second: a tick pages the three pages of ten
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while devo.events(Service::Audit.default_tag()).len() < 30 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    // the tick that delivered the last page prints its line right after;
    // give it (and one more firing) time before stopping the process
    std::thread::sleep(std::time::Duration::from_millis(1500));
    child.kill().unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(devo.event_values(Service::Audit.default_tag()), dataset.values(Service::Audit));
    let lines: Vec<serde_json::Value> = stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(!lines.is_empty(), "{stdout}");
    assert!(lines.iter().all(|l| l["tenant"] == "acme" && l["fired_at"].is_string()));
    let pages: u64 = lines.iter().map(|l| l["services"]["audit"]["pages"].as_u64().unwrap_or(0)).sum();
    assert!(pages >= 3, "{stdout}");
    // one logfmt line per tick: time, level, the tenant, each service's outcome and totals
    let tick_line =
        stderr.lines().find(|l| l.contains("tenant=acme msg=tick") && l.contains("audit=\"delivered sent="));
    let tick_line = tick_line.unwrap_or_else(|| panic!("no tick line in {stderr}"));
    assert!(tick_line.starts_with("time=") && tick_line.contains("Z level=info") && tick_line.contains("total="));
    for text in [&stdout, &stderr] {
        assert!(!text.contains(OP_TOKEN) && !text.contains(DEVO_TOKEN));
    }
}

#[test]
fn validate_shows_no_devo_token_that_sits_in_devo_urls_path() {
    const IN_PATH: &str = "devoUrlPathS3cret0123";
    let setup = setup(7, 10, "", "", ENV_DEVO_TOKEN);
    let url = format!("{}/stream/cli/token!{IN_PATH}", setup.devo.base_url());
    let text = std::fs::read_to_string(&setup.config).unwrap();
    let text: Vec<String> = text
        .lines()
        .map(|l| if l.starts_with("devo_url") { format!("devo_url = \"{url}\"") } else { l.to_string() })
        .collect();
    std::fs::write(&setup.config, text.join("\n")).unwrap();
    for format in ["table", "json"] {
        let out = Command::new(env!("CARGO_BIN_EXE_host-harness"))
            .args(["validate", "--config", &setup.config, "--output", format])
            .env("CLI_OP_TOKEN", OP_TOKEN)
            .env("CLI_DEVO_TOKEN", DEVO_TOKEN)
            .output()
            .unwrap();
        let (stdout, stderr) = (String::from_utf8(out.stdout).unwrap(), String::from_utf8(out.stderr).unwrap());
        for text in [&stdout, &stderr] {
            assert!(!text.contains(IN_PATH) && !text.contains(DEVO_TOKEN), "{format}: token shown in {text}");
        }
        // The configuration check shows the URL, its token redacted.
        assert!(stdout.contains("/stream/cli/token!<redacted>"), "{format}: {stdout}");
    }
}

#[test]
fn a_config_error_quoting_a_tenants_value_shows_it_inert() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bad.toml");
    // A screen clear and a bidi override in a tenant's value, which the
    // parser's error quotes with the line it is on.
    std::fs::write(&config, "[tenants.a.variables]\nbase_url = \"https://x\u{202e}gnp\x1b[2J\"\n").unwrap();
    let (ok, lines, stderr) = harness(&["tick", "--config", config.to_str().unwrap()]);
    assert!(!ok && lines.is_empty());
    assert!(stderr.contains("line 2"), "{stderr}");
    assert!(!stderr.chars().any(|c| c != '\n' && onepassword_collector::text::is_unsafe(c)), "{stderr:?}");
    assert!(stderr.contains(r"https://x\u{202e}gnp\u{1b}[2J"), "{stderr}");
}

#[test]
fn run_reports_a_start_up_error_as_a_json_line_when_asked() {
    let (ok, _, stderr) = harness(&["run", "--config", "/nonexistent/tenants.toml", "--log-format", "json"]);
    assert!(!ok);
    let line: serde_json::Value = serde_json::from_str(stderr.trim()).unwrap_or_else(|e| panic!("{e}: {stderr}"));
    assert_eq!(line["level"], "error");
    assert!(line["msg"].as_str().unwrap().contains("cannot read config file"), "{line}");
    // logfmt (the default) keeps the plain line
    let (_, _, stderr) = harness(&["run", "--config", "/nonexistent/tenants.toml"]);
    assert!(stderr.starts_with("host-harness: cannot read config file"), "{stderr}");
}

// Spread firings, as the command shows them: a tenant on a one-minute
// schedule fires at its offset within the minute (a stable hash of its
// name), one with `spread_firings = false` on the exact second, one on a
// sub-minute schedule on the exact second too. `status` reads no component
// and no network, so these need neither.
fn status_of(config: &str, output: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("harness.toml");
    std::fs::write(&path, config).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_host-harness"))
        .args(["status", "--config", path.to_str().unwrap(), "--output", output])
        .output()
        .unwrap();
    (out.status.success(), String::from_utf8(out.stdout).unwrap())
}

const SPREAD_CONFIG: &str = "[tenants.acme]\nschedule = \"0 * * * * *\"\n\
                             [tenants.beta]\nschedule = \"0 * * * * *\"\nspread_firings = false\n\
                             [tenants.gamma]\nschedule = \"*/10 * * * * *\"\n";

#[test]
fn a_spread_tenant_fires_at_its_offset_and_an_exact_one_on_the_second() {
    use chrono::Timelike;
    let before = chrono::Utc::now();
    let (ok, stdout) = status_of(SPREAD_CONFIG, "json");
    let after = chrono::Utc::now();
    // Never collected is not a failure.
    assert!(ok, "{stdout}");
    let lines: Vec<serde_json::Value> = stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let of = |name: &str| lines.iter().find(|l| l["tenant"] == name).unwrap_or_else(|| panic!("{name}: {stdout}"));
    let next = |name: &str| {
        let text = of(name)["next_firing"].as_str().unwrap_or_else(|| panic!("{name}: {stdout}")).to_string();
        chrono::DateTime::parse_from_rfc3339(&text).unwrap().with_timezone(&chrono::Utc)
    };

    // acme: 19.872 s into each minute (the golden value of
    // host_harness::schedule's tests), within the next minute.
    let acme = next("acme");
    assert_eq!(of("acme")["firing_offset_ms"], 19_872, "{stdout}");
    assert_eq!((acme.second(), acme.nanosecond() / 1_000_000), (19, 872), "{acme}");
    assert!(acme > before && acme <= after + chrono::Duration::seconds(60), "{acme}");
    assert_eq!(of("acme")["firing"], "19.872 s into each 1 min period", "{stdout}");

    // beta: spreading off, on the exact second of the next minute.
    let beta = next("beta");
    assert_eq!(of("beta")["firing_offset_ms"], serde_json::Value::Null, "{stdout}");
    assert_eq!((beta.second(), beta.nanosecond()), (0, 0), "{beta}");
    assert!(beta > before && beta <= after + chrono::Duration::seconds(60), "{beta}");
    assert_eq!(of("beta")["firing"], "on the exact second (spread_firings = false)");

    // gamma: every 10 s is under a minute: the exact second.
    let gamma = next("gamma");
    assert_eq!(of("gamma")["firing_offset_ms"], serde_json::Value::Null, "{stdout}");
    assert_eq!((gamma.second() % 10, gamma.nanosecond()), (0, 0), "{gamma}");
    assert!(of("gamma")["firing"].as_str().unwrap().contains("is under a minute"), "{stdout}");

    // The table says the same, after the services' rows.
    let (_, table) = status_of(SPREAD_CONFIG, "table");
    let row = |name: &str| {
        table.lines().find(|l| l.starts_with(name) && l.contains("Z ")).unwrap_or_else(|| panic!("{name}: {table}"))
    };
    assert!(table.contains("next firing"), "{table}");
    assert!(row("acme").ends_with(":19.872Z  19.872 s into each 1 min period"), "{table}");
    assert!(
        row("beta").contains(":00Z ") && row("beta").ends_with(" on the exact second (spread_firings = false)"),
        "{table}"
    );
}

#[test]
fn a_misspelt_spread_setting_is_refused() {
    let (ok, stdout) = status_of("[tenants.acme]\nspread_firing = false\n", "json");
    assert!(!ok && stdout.is_empty(), "{stdout}");
}
