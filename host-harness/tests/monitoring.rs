//! The monitoring folder cannot drift from the code: every
//! `onepassword_collector_*` name the Grafana dashboard
//! (`monitoring/grafana-dashboard.json`) or the alerting rules
//! (`monitoring/alerts.yaml`) use must be a series in `Telemetry::render()`
//! after a few synthetic ticks (and before any tick, once a tenant is
//! added), and both files keep the shape their tools
//! need (panels with queries and a `tenant` variable; rule groups with alert,
//! expr, severity and summary).

use chrono::{DateTime, Utc};
use host_harness::runtime::TenantTick;
use host_harness::telemetry::{Format, Telemetry};
use onepassword_collector::error::{CollectorError, ErrorKind};
use onepassword_collector::report::{Outcome, ServiceReport, TickReport};
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::PathBuf;
use yaml_rust2::{Yaml, YamlLoader};

const PREFIX: &str = "onepassword_collector_";

fn monitoring(file: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../monitoring").join(file);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every `onepassword_collector_[a-z0-9_]+` token in `text`.
fn metric_names(text: &str, out: &mut BTreeSet<String>) {
    let mut rest = text;
    while let Some(at) = rest.find(PREFIX) {
        let preceded = rest[..at].chars().next_back().is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
        let tail = &rest[at + PREFIX.len()..];
        let len =
            tail.find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')).unwrap_or(tail.len());
        if !preceded && len > 0 {
            out.insert(format!("{PREFIX}{}", &tail[..len]));
        }
        rest = &tail[len..];
    }
}

/// The metric names of every sample line of an exposition.
fn exported(render: &str) -> BTreeSet<String> {
    render
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap().to_string())
        .collect()
}

/// The names in `used` that `render` has no series for. A histogram may be
/// named by its base name or with `_bucket`, `_sum` or `_count`.
fn missing(used: &BTreeSet<String>, render: &str) -> Vec<String> {
    let samples = exported(render);
    let histogram = |base: &str| samples.contains(&format!("{base}_bucket"));
    used.iter()
        .filter(|name| {
            let base = ["_bucket", "_sum", "_count"].iter().find_map(|s| name.strip_suffix(s));
            !(samples.contains(*name) || histogram(name) || base.is_some_and(histogram))
        })
        .cloned()
        .collect()
}

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

fn service(name: &str, outcome: Outcome) -> ServiceReport {
    ServiceReport {
        checkpoint: Some("2026-01-01T00:00:00Z".into()),
        elapsed_ms: 7,
        ..ServiceReport::new(name, outcome)
    }
}

fn tick(tenant: &str, result: Result<Vec<ServiceReport>, CollectorError>) -> TenantTick {
    TenantTick {
        tenant: tenant.into(),
        result: result.map(|services| TickReport {
            started_at: "2026-01-01T00:10:00Z".into(),
            elapsed_ms: 50,
            services,
            warnings: vec![],
        }),
        peak_memory_bytes: 6 << 20,
        guest_cpu_ms: 40,
        host_elapsed_ms: 300,
    }
}

/// A telemetry that has seen every kind of tick: delivered, idle, deferred,
/// failed (429 and Devo), a host failure, a skipped firing, a reload.
fn busy_telemetry() -> Telemetry {
    let t = Telemetry::new();
    t.component_loaded();
    t.instances(2, 8);
    t.reload(true);
    let now = at("2026-01-01T00:10:00Z");
    let delivered = ServiceReport {
        fetched: 1000,
        sent: 1000,
        unconfirmed: 3,
        pages: 1,
        bytes_sent: 90_000,
        ..service("audit", Outcome::Delivered)
    };
    let rate_limited = ServiceReport {
        error: Some(CollectorError::new(ErrorKind::PullError, 429, "1Password answered 429")),
        ..service("item_usage", Outcome::Failed)
    };
    let deferred = ServiceReport {
        deferred_reason: Some("1Password rate-limited this account; no requests before 2026-01-01T00:11:00Z".into()),
        ..service("sign_in_attempts", Outcome::Deferred)
    };
    t.tick_finished(&tick("acme", Ok(vec![delivered, rate_limited, deferred])), now);
    let devo_down = ServiceReport {
        error: Some(CollectorError::new(ErrorKind::DeliveryError, 701, "Devo unreachable")),
        ..service("audit", Outcome::Failed)
    };
    t.tick_finished(&tick("globex", Ok(vec![devo_down, service("item_usage", Outcome::Idle)])), now);
    let host = CollectorError::new(ErrorKind::PrePullError, 900, "the host stopped the tick: CPU deadline exceeded");
    t.tick_finished(&tick("initech", Err(host)), now);
    t.firing_skipped("acme");
    t
}

fn dashboard() -> Value {
    serde_json::from_str(&monitoring("grafana-dashboard.json")).expect("the dashboard is JSON")
}

fn alerts() -> Yaml {
    let docs = YamlLoader::load_from_str(&monitoring("alerts.yaml")).expect("the rules are YAML");
    assert_eq!(docs.len(), 1, "one YAML document");
    docs.into_iter().next().unwrap()
}

fn json_strings<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
    match v {
        Value::String(s) => out.push(s),
        Value::Array(a) => a.iter().for_each(|v| json_strings(v, out)),
        Value::Object(o) => o.values().for_each(|v| json_strings(v, out)),
        _ => {}
    }
}

fn yaml_strings<'a>(v: &'a Yaml, out: &mut Vec<&'a str>) {
    match v {
        Yaml::String(s) => out.push(s),
        Yaml::Array(a) => a.iter().for_each(|v| yaml_strings(v, out)),
        Yaml::Hash(h) => h.values().for_each(|v| yaml_strings(v, out)),
        _ => {}
    }
}

fn names_in(strings: &[&str]) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    strings.iter().for_each(|s| metric_names(s, &mut names));
    names
}

#[test]
fn every_metric_the_dashboard_uses_is_exported() {
    let dashboard = dashboard();
    let mut strings = Vec::new();
    json_strings(&dashboard, &mut strings);
    let used = names_in(&strings);
    assert!(used.len() >= 15, "the dashboard uses only {used:?}");
    let render = busy_telemetry().render(Format::OpenMetrics);
    assert_eq!(missing(&used, &render), Vec::<String>::new(), "the dashboard uses names /metrics lacks:\n{render}");
}

#[test]
fn every_metric_the_alerts_use_is_exported() {
    let rules = alerts();
    let mut strings = Vec::new();
    yaml_strings(&rules, &mut strings);
    let used = names_in(&strings);
    assert!(used.len() >= 6, "the rules use only {used:?}");
    let render = busy_telemetry().render(Format::OpenMetrics);
    assert_eq!(missing(&used, &render), Vec::<String>::new(), "the rules use names /metrics lacks:\n{render}");
}

#[test]
fn every_metric_the_dashboard_and_alerts_use_exists_before_the_first_tick() {
    let t = Telemetry::new();
    t.component_loaded();
    t.config_loaded(at("2026-01-01T00:00:00Z"));
    t.instances(0, 8);
    let config = "[tenants.acme]\nschedule = \"0 0 0 1 1 *\"\n";
    let tenants = host_harness::tenant::parse(config, std::path::Path::new("/nonexistent"), |_| None).unwrap();
    t.tenant_added(&tenants[0], at("2026-01-01T00:00:00Z"));
    let mut strings = Vec::new();
    let (dashboard, rules) = (dashboard(), alerts());
    json_strings(&dashboard, &mut strings);
    yaml_strings(&rules, &mut strings);
    let used = names_in(&strings);
    for format in [Format::Text, Format::OpenMetrics] {
        let render = t.render(format);
        assert_eq!(missing(&used, &render), Vec::<String>::new(), "{format:?} before the first tick:\n{render}");
    }
}

#[test]
fn the_check_catches_a_name_the_code_does_not_export() {
    let render = busy_telemetry().render(Format::OpenMetrics);
    let mut used = BTreeSet::new();
    metric_names(
        "sum(rate(onepassword_collector_events_delivered_total[5m])) + onepassword_collector_bogus_total \
         + histogram_quantile(0.9, rate(onepassword_collector_tick_duration_seconds_bucket[5m])) \
         + onepassword_collector_tick_duration_seconds_sum + onepassword_collector_guest_cpu_seconds \
         + onepassword_collector_nope_seconds_bucket + xonepassword_collector_ignored",
        &mut used,
    );
    assert_eq!(used.len(), 6, "{used:?}");
    assert_eq!(
        missing(&used, &render),
        ["onepassword_collector_bogus_total", "onepassword_collector_nope_seconds_bucket"]
    );
    // A counter named without `_total` is not a series either.
    let bare = BTreeSet::from(["onepassword_collector_events_delivered".to_string()]);
    assert_eq!(missing(&bare, &render).len(), 1);
}

#[test]
fn the_dashboard_has_panels_with_queries_and_a_tenant_variable() {
    let d = dashboard();
    assert!(d["title"].is_string() && d["uid"].is_string(), "title and uid");
    let variables = d["templating"]["list"].as_array().expect("templating.list");
    assert!(variables.iter().any(|v| v["name"] == "tenant" && v["type"] == "query"), "a tenant query variable");
    let panels = d["panels"].as_array().expect("panels");
    let mut ids = BTreeSet::new();
    let mut exprs = Vec::new();
    for p in panels {
        assert!(ids.insert(p["id"].as_u64().expect("panel id")), "duplicate panel id {}", p["id"]);
        for key in ["h", "w", "x", "y"] {
            assert!(p["gridPos"][key].is_u64(), "gridPos.{key} of {}", p["title"]);
        }
        if p["type"] == "row" {
            continue;
        }
        let targets = p["targets"].as_array().unwrap_or_else(|| panic!("targets of {}", p["title"]));
        assert!(!targets.is_empty(), "{} has no query", p["title"]);
        for t in targets {
            let expr = t["expr"].as_str().unwrap_or_else(|| panic!("expr in {}", p["title"]));
            assert!(expr.contains(PREFIX), "{}: {expr}", p["title"]);
            exprs.push(expr);
        }
    }
    // The panels the issue asks for.
    let used = names_in(&exprs);
    for wanted in [
        "events_delivered_total",
        "lag_seconds",
        "freshness_seconds",
        "failures_total",
        "deferrals_total",
        "onepassword_requests_total",
        "onepassword_rate_limited_total",
        "tick_duration_seconds_bucket",
        "guest_cpu_seconds_bucket",
        "peak_memory_bytes",
        "instances_in_use",
        "instances_capacity",
        "skipped_firings_total",
    ] {
        assert!(used.contains(&format!("{PREFIX}{wanted}")), "no panel shows {wanted}");
    }
}

#[test]
fn the_rules_are_prometheus_rule_groups_covering_the_issue() {
    let rules = alerts();
    let groups = rules["groups"].as_vec().expect("groups");
    assert!(!groups.is_empty());
    let mut alerts = BTreeSet::new();
    let mut exprs = Vec::new();
    for group in groups {
        assert!(group["name"].as_str().is_some(), "group name");
        for rule in group["rules"].as_vec().expect("rules") {
            let name = rule["alert"].as_str().expect("alert name");
            assert!(alerts.insert(name), "duplicate alert {name}");
            exprs.push(rule["expr"].as_str().unwrap_or_else(|| panic!("expr of {name}")));
            assert!(matches!(rule["labels"]["severity"].as_str(), Some("critical" | "warning" | "info")), "{name}");
            assert!(rule["annotations"]["summary"].as_str().is_some(), "summary of {name}");
            if let Some(duration) = rule["for"].as_str() {
                assert!(duration.ends_with(['s', 'm', 'h']), "{name}: for {duration}");
            }
        }
    }
    let used = names_in(&exprs);
    for wanted in
        ["freshness_seconds", "consecutive_failed_ticks", "failures_total", "onepassword_rate_limited_total", "ready"]
    {
        assert!(used.contains(&format!("{PREFIX}{wanted}")), "no rule on {wanted}");
    }
    // The newest event's age grows on a quiet account that is caught up: no
    // alert may fire on it (freshness says whether the collector keeps up).
    assert!(!used.contains(&format!("{PREFIX}lag_seconds")), "a rule alerts on lag_seconds: a quiet account trips it");
}
