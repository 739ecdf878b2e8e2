//! What `/metrics` and readiness say after synthetic ticks: counters grow by
//! the report's amounts, lag follows `now`, deferral texts and error ids
//! land in their labels, readiness follows the component and the stores
//! (never a tenant's failures) and recovers, removed tenants
//! vanish, no free text reaches a label; every series of a tenant exists
//! before its first event, in the text format and in OpenMetrics.

use super::*;
use onepassword_collector::error::{CollectorError, ErrorKind};
use onepassword_collector::report::TickReport;

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

fn service(name: &str, outcome: Outcome) -> ServiceReport {
    ServiceReport { elapsed_ms: 5, ..ServiceReport::new(name, outcome) }
}

fn delivered(name: &str, events: u32, checkpoint: &str) -> ServiceReport {
    ServiceReport {
        fetched: events,
        sent: events,
        pages: 1,
        bytes_sent: u64::from(events) * 20,
        checkpoint: Some(checkpoint.into()),
        ..service(name, Outcome::Delivered)
    }
}

fn failed(name: &str, id: u32, message: &str) -> ServiceReport {
    ServiceReport {
        error: Some(CollectorError::new(ErrorKind::PullError, id, message)),
        ..service(name, Outcome::Failed)
    }
}

fn deferred(name: &str, reason: &str) -> ServiceReport {
    ServiceReport { deferred_reason: Some(reason.into()), ..service(name, Outcome::Deferred) }
}

fn tick(tenant: &str, services: Vec<ServiceReport>) -> TenantTick {
    TenantTick {
        tenant: tenant.into(),
        result: Ok(TickReport {
            started_at: "2026-01-01T00:00:00Z".into(),
            elapsed_ms: 10,
            services,
            warnings: vec![],
        }),
        peak_memory_bytes: 6 << 20,
        guest_cpu_ms: 30,
        host_elapsed_ms: 400,
    }
}

fn tick_error(tenant: &str, id: u32, message: &str) -> TenantTick {
    TenantTick { result: Err(CollectorError::new(ErrorKind::PrePullError, id, message)), ..tick(tenant, vec![]) }
}

/// The value of the sample `series` (name and labels exactly as rendered).
fn sample(t: &Telemetry, series: &str) -> Option<f64> {
    let text = t.render(Format::OpenMetrics);
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (name, value) = l.rsplit_once(' ')?;
        (name == series).then(|| value.parse().unwrap())
    })
}

fn value(t: &Telemetry, series: &str) -> f64 {
    sample(t, series).unwrap_or_else(|| panic!("{series} missing from:\n{}", t.render(Format::OpenMetrics)))
}

const NOW: &str = "2026-01-01T00:10:00Z";

#[test]
fn counters_grow_by_what_each_tick_reports() {
    let t = Telemetry::new();
    t.tick_finished(&tick("acme", vec![delivered("audit", 100, "2026-01-01T00:00:00Z")]), at(NOW));
    let mut second = delivered("audit", 40, "2026-01-01T00:05:00Z");
    second.unconfirmed = 2;
    t.tick_finished(&tick("acme", vec![second, service("item_usage", Outcome::Idle)]), at(NOW));
    let labels = r#"{tenant="acme",service="audit"}"#;
    assert_eq!(value(&t, &format!("onepassword_collector_events_fetched_total{labels}")), 140.0);
    assert_eq!(value(&t, &format!("onepassword_collector_events_delivered_total{labels}")), 140.0);
    assert_eq!(value(&t, &format!("onepassword_collector_events_unconfirmed_total{labels}")), 2.0);
    assert_eq!(value(&t, &format!("onepassword_collector_sent_bytes_total{labels}")), 2800.0);
    assert_eq!(value(&t, &format!("onepassword_collector_pages_total{labels}")), 2.0);
    assert_eq!(value(&t, &format!("onepassword_collector_onepassword_requests_total{labels}")), 2.0);
    assert_eq!(
        value(&t, r#"onepassword_collector_service_ticks_total{tenant="acme",service="audit",outcome="delivered"}"#),
        2.0
    );
    assert_eq!(
        value(&t, r#"onepassword_collector_service_ticks_total{tenant="acme",service="item_usage",outcome="idle"}"#),
        1.0
    );
    assert_eq!(value(&t, r#"onepassword_collector_ticks_total{tenant="acme",outcome="ok"}"#), 2.0);
    assert_eq!(value(&t, r#"onepassword_collector_ticks_total{tenant="acme",outcome="failed"}"#), 0.0);
    assert_eq!(value(&t, r#"onepassword_collector_peak_memory_bytes{tenant="acme"}"#), f64::from(6 << 20));
    assert_eq!(value(&t, r#"onepassword_collector_tick_duration_seconds_count{tenant="acme"}"#), 2.0);
    assert_eq!(value(&t, r#"onepassword_collector_tick_duration_seconds_sum{tenant="acme"}"#), 0.8);
    assert_eq!(value(&t, r#"onepassword_collector_tick_duration_seconds_bucket{le="0.5",tenant="acme"}"#), 2.0);
    assert_eq!(value(&t, r#"onepassword_collector_guest_cpu_seconds_bucket{le="0.025",tenant="acme"}"#), 0.0);
    assert_eq!(value(&t, r#"onepassword_collector_guest_cpu_seconds_bucket{le="0.05",tenant="acme"}"#), 2.0);
    assert_eq!(value(&t, r#"onepassword_collector_last_tick_timestamp_seconds{tenant="acme"}"#), 1767226200.0);
}

#[test]
fn lag_is_now_minus_the_newest_delivered_event() {
    let t = Telemetry::new();
    t.tick_finished(&tick("acme", vec![delivered("audit", 1, "2026-01-01T00:00:00.500Z")]), at(NOW));
    let labels = r#"{tenant="acme",service="audit"}"#;
    assert_eq!(value(&t, &format!("onepassword_collector_lag_seconds{labels}")), 599.5);
    assert_eq!(value(&t, &format!("onepassword_collector_checkpoint_timestamp_seconds{labels}")), 1767225600.5);
    // A deferred service reports its stored checkpoint: lag from the new now.
    let mut waiting = deferred("audit", "the account's request budget for this minute is spent; more from x");
    waiting.checkpoint = Some("2026-01-01T00:00:00.500Z".into());
    t.tick_finished(&tick("acme", vec![waiting]), at("2026-01-01T00:11:00Z"));
    assert_eq!(value(&t, &format!("onepassword_collector_lag_seconds{labels}")), 659.5);
    // A tick that failed as a whole reached no service; they still fall behind.
    t.tick_finished(
        &tick_error("acme", 900, "the host stopped the tick: wall deadline exceeded"),
        at("2026-01-01T00:12:00Z"),
    );
    assert_eq!(value(&t, &format!("onepassword_collector_lag_seconds{labels}")), 719.5);
    // Between ticks, each scrape refreshes it from the checkpoint.
    t.refresh(at("2026-01-01T01:00:00Z"));
    assert_eq!(value(&t, &format!("onepassword_collector_lag_seconds{labels}")), 3599.5);
    // A checkpoint with an offset is the same instant.
    t.tick_finished(&tick("acme", vec![delivered("item_usage", 1, "2026-01-01T05:50:00+05:50")]), at(NOW));
    assert_eq!(value(&t, r#"onepassword_collector_lag_seconds{tenant="acme",service="item_usage"}"#), 600.0);
    // Without a checkpoint the report's own lag is used, if any.
    let mut fresh = service("sign_in_attempts", Outcome::Idle);
    fresh.lag_seconds = Some(42);
    t.tick_finished(&tick("acme", vec![fresh]), at(NOW));
    assert_eq!(value(&t, r#"onepassword_collector_lag_seconds{tenant="acme",service="sign_in_attempts"}"#), 42.0);
    assert_eq!(
        sample(&t, r#"onepassword_collector_checkpoint_timestamp_seconds{tenant="acme",service="sign_in_attempts"}"#),
        None
    );
}

#[test]
fn freshness_is_how_long_ago_a_tick_confirmed_the_service_caught_up() {
    let t = Telemetry::new();
    let labels = r#"{tenant="acme",service="audit"}"#;
    let lag = |t: &Telemetry| value(t, &format!("onepassword_collector_lag_seconds{labels}"));
    let freshness = |t: &Telemetry| value(t, &format!("onepassword_collector_freshness_seconds{labels}"));
    let caught_up =
        |t: &Telemetry| value(t, &format!("onepassword_collector_last_caught_up_timestamp_seconds{labels}"));
    // A quiet account: its newest event is three days old and the tick finds
    // nothing new. Caught up: fresh, however old its newest event.
    let mut quiet = service("audit", Outcome::Idle);
    quiet.checkpoint = Some("2025-12-29T00:10:00Z".into());
    t.tick_finished(&tick("acme", vec![quiet]), at(NOW));
    assert_eq!(lag(&t), 3.0 * 86400.0);
    assert_eq!(freshness(&t), 0.0);
    assert_eq!(caught_up(&t), 1767226200.0);
    // At a scrape a minute later, both have grown by the minute.
    t.refresh(at("2026-01-01T00:11:00Z"));
    assert_eq!((lag(&t), freshness(&t)), (3.0 * 86400.0 + 60.0, 60.0));

    // Delivered with more waiting (a backlog), failed, deferred, a tick that
    // failed as a whole, delivered with an unrecorded delivery: none of them
    // confirms it caught up, and freshness keeps counting from 00:10.
    let mut backlog = delivered("audit", 100, "2025-12-30T00:00:00Z");
    backlog.has_more = true;
    t.tick_finished(&tick("acme", vec![backlog]), at("2026-01-01T00:20:00Z"));
    assert_eq!(freshness(&t), 600.0);
    assert_eq!(lag(&t), 2.0 * 86400.0 + 1200.0, "lag follows the checkpoint, freshness does not");
    t.tick_finished(&tick("acme", vec![failed("audit", 401, "revoked")]), at("2026-01-01T00:30:00Z"));
    assert_eq!(freshness(&t), 1200.0);
    t.tick_finished(&tick("acme", vec![deferred("audit", "backing off")]), at("2026-01-01T00:40:00Z"));
    assert_eq!(freshness(&t), 1800.0);
    t.tick_finished(&tick_error("acme", 900, "wall deadline exceeded"), at("2026-01-01T00:50:00Z"));
    assert_eq!(freshness(&t), 2400.0);
    let mut unrecorded = delivered("audit", 5, "2026-01-01T00:50:00Z");
    unrecorded.unconfirmed = 5;
    t.tick_finished(&tick("acme", vec![unrecorded]), at("2026-01-01T00:55:00Z"));
    assert_eq!(freshness(&t), 2700.0);
    assert_eq!(caught_up(&t), 1767226200.0);
    // Delivered with nothing more waiting: caught up again.
    t.tick_finished(&tick("acme", vec![delivered("audit", 5, "2026-01-01T00:59:00Z")]), at("2026-01-01T01:00:00Z"));
    assert_eq!((freshness(&t), lag(&t)), (0.0, 60.0));
    assert_eq!(caught_up(&t), 1767229200.0);

    // A service never caught up counts from when the process first saw it:
    // a tenant failing since the start is not fresh.
    t.tick_finished(&tick("globex", vec![failed("audit", 401, "revoked")]), at(NOW));
    t.refresh(at("2026-01-01T01:10:00Z"));
    assert_eq!(value(&t, r#"onepassword_collector_freshness_seconds{tenant="globex",service="audit"}"#), 3600.0);
    assert_eq!(
        sample(&t, r#"onepassword_collector_last_caught_up_timestamp_seconds{tenant="globex",service="audit"}"#),
        None
    );
}

#[test]
fn the_collectors_deferral_texts_map_to_fixed_reasons() {
    // The texts of src/budget.rs and src/tick/page.rs.
    let cases = [
        ("1Password rate-limited this account; no requests before 2026-01-01T00:01:00Z", "rate_limited"),
        ("the account's request budget for this minute is spent; more from 2026-01-01T00:01:00Z", "budget"),
        ("the account's request budget for this hour is spent; more from 2026-01-01T01:00:00Z", "budget"),
        ("backing off after 3 consecutive failure(s)", "backoff"),
        ("another instance is collecting this service", "lease_held"),
        (
            "lease lost: another instance took this service's lease at the same moment and is collecting it",
            "lease_lost",
        ),
        ("something new", "other"),
    ];
    let t = Telemetry::new();
    for (text, reason) in cases {
        assert_eq!(DeferralReason::from_text(Some(text)).as_str(), reason, "{text}");
        t.tick_finished(&tick("acme", vec![deferred("audit", text)]), at(NOW));
    }
    assert_eq!(DeferralReason::from_text(None), DeferralReason::Other);
    let series = |reason: &str| {
        format!(r#"onepassword_collector_deferrals_total{{tenant="acme",service="audit",reason="{reason}"}}"#)
    };
    assert_eq!(value(&t, &series("budget")), 2.0);
    for reason in ["rate_limited", "backoff", "lease_held", "lease_lost", "other"] {
        assert_eq!(value(&t, &series(reason)), 1.0, "{reason}");
    }
    // A deferral is no failure, but backing off after failures is still failing.
    assert_eq!(value(&t, r#"onepassword_collector_ticks_total{tenant="acme",outcome="ok"}"#), 6.0);
    assert_eq!(value(&t, r#"onepassword_collector_ticks_total{tenant="acme",outcome="backing_off"}"#), 1.0);
    assert_eq!(DeferralReason::ALL.len(), 6);
}

#[test]
fn errors_land_in_failures_by_id_and_tick_outcome() {
    let t = Telemetry::new();
    t.tick_finished(
        &tick("acme", vec![failed("audit", 700, "Devo answered 403"), delivered("item_usage", 5, NOW)]),
        at(NOW),
    );
    t.tick_finished(&tick_error("acme", 900, "the host stopped the tick: memory limit exceeded"), at(NOW));
    t.tick_finished(&tick_error("acme", 2, "base_url: expected https"), at(NOW));
    assert_eq!(value(&t, r#"onepassword_collector_failures_total{tenant="acme",service="audit",error_id="700"}"#), 1.0);
    assert_eq!(value(&t, r#"onepassword_collector_failures_total{tenant="acme",service="_tick",error_id="900"}"#), 1.0);
    assert_eq!(value(&t, r#"onepassword_collector_failures_total{tenant="acme",service="_tick",error_id="2"}"#), 1.0);
    assert_eq!(value(&t, r#"onepassword_collector_ticks_total{tenant="acme",outcome="failed"}"#), 2.0);
    assert_eq!(value(&t, r#"onepassword_collector_ticks_total{tenant="acme",outcome="host_failure"}"#), 1.0);
    assert_eq!(value(&t, r#"onepassword_collector_ticks_total{tenant="acme",outcome="ok"}"#), 0.0);
    assert_eq!(
        value(&t, r#"onepassword_collector_service_ticks_total{tenant="acme",service="audit",outcome="failed"}"#),
        1.0
    );
    // A Devo failure is no 1Password request of its own (the page was one).
    assert_eq!(value(&t, r#"onepassword_collector_onepassword_requests_total{tenant="acme",service="audit"}"#), 0.0);
}

#[test]
fn rate_limits_and_1password_requests_are_counted() {
    let t = Telemetry::new();
    let mut paged = delivered("item_usage", 3000, NOW);
    paged.pages = 3;
    let mut devo_down = failed("sign_in_attempts", 701, "Devo unreachable");
    devo_down.pages = 1;
    let services = vec![failed("audit", 429, "1Password answered 429"), paged, devo_down];
    t.tick_finished(&tick("acme", services), at(NOW));
    t.tick_finished(&tick("acme", vec![failed("audit", 503, "1Password answered 503")]), at(NOW));
    t.tick_finished(&tick_error("acme", 429, "1Password answered 429"), at(NOW));
    let requests = |s: &str| {
        value(&t, &format!(r#"onepassword_collector_onepassword_requests_total{{tenant="acme",service="{s}"}}"#))
    };
    let limited = |s: &str| {
        value(&t, &format!(r#"onepassword_collector_onepassword_rate_limited_total{{tenant="acme",service="{s}"}}"#))
    };
    assert_eq!((requests("audit"), limited("audit")), (2.0, 1.0));
    assert_eq!((requests("item_usage"), limited("item_usage")), (3.0, 0.0));
    assert_eq!((requests("sign_in_attempts"), limited("sign_in_attempts")), (1.0, 0.0));
    assert_eq!((requests(TICK_SERVICE), limited(TICK_SERVICE)), (1.0, 1.0));
    assert!(is_onepassword_error(600) && is_onepassword_error(601) && !is_onepassword_error(610));
}

#[test]
fn readiness_needs_the_component_and_never_counts_a_tenants_failures() {
    let t = Telemetry::new();
    let r = t.readiness();
    assert!(!r.ready);
    assert_eq!(r.reasons, ["component not loaded"]);
    assert_eq!(value(&t, "onepassword_collector_ready"), 0.0);
    t.component_loaded();
    assert_eq!(t.readiness(), Readiness { ready: true, reasons: vec![] });
    assert_eq!(value(&t, "onepassword_collector_ready"), 1.0);

    // A revoked token: every tick of acme fails, 23 in a row, and a whole
    // tick fails too. The process can still do its work: globex delivers.
    for _ in 0..23 {
        t.tick_finished(&tick("acme", vec![failed("audit", 401, "1Password answered 401")]), at(NOW));
        t.tick_finished(&tick("globex", vec![delivered("audit", 1, NOW)]), at(NOW));
    }
    t.tick_finished(&tick_error("acme", 900, "the host stopped the tick: wall deadline exceeded"), at(NOW));
    assert_eq!(t.readiness(), Readiness { ready: true, reasons: vec![] }, "a tenant's failures are not the process's");
    assert_eq!(value(&t, "onepassword_collector_ready"), 1.0);
    // They show in the metrics instead.
    assert_eq!(value(&t, r#"onepassword_collector_consecutive_failed_ticks{tenant="acme"}"#), 24.0);
    assert_eq!(
        value(&t, r#"onepassword_collector_failures_total{tenant="acme",service="audit",error_id="401"}"#),
        23.0
    );
    assert_eq!(value(&t, r#"onepassword_collector_consecutive_failed_ticks{tenant="globex"}"#), 0.0);

    // A tick that only deferred (backing off after those failures) proves
    // nothing: the count stands. A tick that gets through resets it.
    t.tick_finished(&tick("acme", vec![deferred("audit", "backing off after 3 consecutive failure(s)")]), at(NOW));
    assert_eq!(value(&t, r#"onepassword_collector_consecutive_failed_ticks{tenant="acme"}"#), 24.0);
    t.tick_finished(&tick("acme", vec![delivered("audit", 1, NOW)]), at(NOW));
    assert_eq!(value(&t, r#"onepassword_collector_consecutive_failed_ticks{tenant="acme"}"#), 0.0);
    assert!(t.readiness().ready);
}

#[test]
fn an_unreachable_store_makes_the_process_unready_until_reached() {
    let t = Telemetry::new();
    t.component_loaded();
    t.store_checked("acme", false);
    assert_eq!(t.readiness().reasons, ["tenant acme: key-value store unreachable (error 200)"]);
    t.store_checked("acme", true);
    assert!(t.readiness().ready);
    t.tick_finished(&tick_error("acme", 200, "the key-value store could not be opened"), at(NOW));
    assert_eq!(t.readiness().reasons, ["tenant acme: key-value store unreachable (error 200)"]);
    // A config error never reached the store: no news about it.
    t.tick_finished(&tick_error("acme", 1, "token is missing"), at(NOW));
    assert!(!t.readiness().ready);
    t.tick_finished(&tick("acme", vec![service("audit", Outcome::Idle)]), at(NOW));
    assert!(t.readiness().ready);
}

#[test]
fn a_removed_tenant_loses_its_series_and_its_readiness_state() {
    let t = Telemetry::new();
    t.component_loaded();
    let store_down = failed("audit", 200, "the key-value store could not be written");
    t.tick_finished(&tick("acme", vec![store_down, deferred("item_usage", "backing off")]), at(NOW));
    t.tick_finished(&tick("globex", vec![delivered("audit", 1, NOW)]), at(NOW));
    t.firing_skipped("acme");
    assert!(!t.readiness().ready);
    t.tenant_removed("acme");
    let text = t.render(Format::OpenMetrics);
    assert!(!text.contains(r#"tenant="acme""#), "{text}");
    assert!(text.contains(r#"tenant="globex""#));
    assert!(t.readiness().ready);
    // A tenant added back starts from zero.
    t.tick_finished(&tick("acme", vec![delivered("audit", 1, NOW)]), at(NOW));
    assert_eq!(value(&t, r#"onepassword_collector_events_delivered_total{tenant="acme",service="audit"}"#), 1.0);
    assert_eq!(value(&t, r#"onepassword_collector_skipped_firings_total{tenant="acme"}"#), 0.0);
}

#[test]
fn no_free_text_reaches_a_label() {
    let secret = "ops_eyJhbGciOiJFUzI1NiIsImtpZCI6InNlY3JldCJ9";
    let t = Telemetry::new();
    t.component_loaded();
    let mut hostile = failed("audit", 401, &format!("token {secret} refused by https://x.invalid/{secret}"));
    hostile.deferred_reason = Some(format!("deferred because {secret}"));
    let mut odd = deferred("item_usage\"} 1\nfake_metric{a=\"b", &format!("until {secret}"));
    odd.checkpoint = Some(secret.into());
    t.tick_finished(&tick("acme", vec![hostile, odd]), at(NOW));
    t.tick_finished(&tick_error("weird tenant\"name\n", 200, &format!("store near {secret}")), at(NOW));
    t.tick_finished(&tick(&"long".repeat(40), vec![]), at(NOW));
    let text = t.render(Format::OpenMetrics);
    assert!(!text.contains(secret) && !text.contains("x.invalid") && !text.contains("fake_metric"), "{text}");
    // Every label value is a bounded name, a number or a fixed word.
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((_, labels)) = line.split_once('{') else { continue };
        let labels = labels.rsplit_once('}').unwrap().0;
        for pair in labels.split(',') {
            let (_, v) = pair.split_once('=').unwrap();
            let v = v.trim_matches('"');
            assert!(v.len() <= 64, "{line}");
            assert!(v.chars().all(|c| c.is_ascii_alphanumeric() || "_-.:~+".contains(c)), "{line}");
        }
    }
    // The readiness text names the tenant by its label too.
    assert!(t.readiness().reasons.iter().any(|r| r.starts_with("tenant weird_tenant_name_~")));
}

#[test]
fn names_are_bounded_and_distinct() {
    assert_eq!(tenant_label("acme-eu.prod_2"), "acme-eu.prod_2");
    assert_eq!(service_label("sign_in_attempts"), "sign_in_attempts");
    let long = tenant_label(&"a".repeat(100));
    assert_eq!(long.len(), 64);
    assert_ne!(long, tenant_label(&"a".repeat(101)));
    assert_ne!(tenant_label("a b"), tenant_label("a_b"));
    assert_eq!(tenant_label("a_b"), "a_b");
    assert!(tenant_label("").starts_with('~'));
    assert!(service_label(&"s".repeat(40)).len() <= 32);
}

#[test]
fn skips_pool_and_reloads_are_counted() {
    let t = Telemetry::new();
    t.firing_skipped("acme");
    t.firing_skipped("acme");
    t.instances(3, 8);
    assert_eq!(sample(&t, "onepassword_collector_config_last_reload_successful"), Some(0.0), "nothing loaded yet");
    t.config_loaded(at(NOW));
    assert_eq!(value(&t, "onepassword_collector_config_last_reload_successful"), 1.0);
    assert_eq!(value(&t, "onepassword_collector_config_last_reload_success_timestamp_seconds"), 1767226200.0);
    t.reload(true);
    let reloaded = value(&t, "onepassword_collector_config_last_reload_success_timestamp_seconds");
    assert!(reloaded > 1767226200.0, "a reload that loads is a new success: {reloaded}");
    t.reload(false);
    t.reload(false);
    assert_eq!(value(&t, "onepassword_collector_config_last_reload_successful"), 0.0);
    assert_eq!(value(&t, "onepassword_collector_config_last_reload_success_timestamp_seconds"), reloaded);
    assert_eq!(value(&t, r#"onepassword_collector_skipped_firings_total{tenant="acme"}"#), 2.0);
    assert_eq!(value(&t, "onepassword_collector_instances_in_use"), 3.0);
    assert_eq!(value(&t, "onepassword_collector_instances_capacity"), 8.0);
    assert_eq!(value(&t, r#"onepassword_collector_config_reloads_total{result="ok"}"#), 1.0);
    assert_eq!(value(&t, r#"onepassword_collector_config_reloads_total{result="error"}"#), 2.0);
}

#[test]
fn catching_up_is_a_gauge_and_its_ticks_a_counter() {
    let t = Telemetry::new();
    t.catching_up("acme", true);
    t.catch_up_tick("acme");
    t.catch_up_tick("acme");
    assert_eq!(value(&t, r#"onepassword_collector_catching_up{tenant="acme"}"#), 1.0);
    assert_eq!(value(&t, r#"onepassword_collector_catch_up_ticks_total{tenant="acme"}"#), 2.0);
    t.catching_up("acme", false);
    assert_eq!(value(&t, r#"onepassword_collector_catching_up{tenant="acme"}"#), 0.0);
    t.tenant_removed("acme");
    assert_eq!(sample(&t, r#"onepassword_collector_catch_up_ticks_total{tenant="acme"}"#), None);
}

#[test]
fn the_text_is_openmetrics_with_one_suffix_each() {
    let t = Telemetry::new();
    t.tick_finished(&tick("acme", vec![delivered("audit", 1, NOW)]), at(NOW));
    let text = t.render(Format::OpenMetrics);
    assert!(text.ends_with("# EOF\n"), "{text}");
    assert!(text.contains("# TYPE onepassword_collector_sent_bytes counter"));
    assert!(text.contains("# UNIT onepassword_collector_lag_seconds seconds"));
    for doubled in ["_total_total", "_seconds_seconds", "_bytes_bytes"] {
        assert!(!text.contains(doubled), "{doubled} in\n{text}");
    }
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        assert!(line.starts_with(PREFIX) || line.starts_with("process_"), "{line}");
    }
}

/// A tenant as the tenants file gives it, collecting `services`.
fn configured(name: &str, services: &str) -> Tenant {
    let text = format!(
        "[tenants.{name}]\nschedule = \"0 0 0 1 1 *\"\n[tenants.{name}.variables]\n\
         base_url = \"https://events.1password.com\"\ntoken = \"op-token\"\n\
         devo_url = \"https://collector-us.devo.io:443/event\"\ndevo_domain = \"acme\"\n\
         devo_token = \"devo-token\"\nservices = \"{services}\"\n"
    );
    crate::tenant::parse(&text, std::path::Path::new("/nonexistent"), |_| None).unwrap().remove(0)
}

/// The value of `series` in an exposition `text` of either format.
fn sample_in(text: &str, series: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (name, value) = l.rsplit_once(' ')?;
        (name == series).then(|| value.parse().unwrap())
    })
}

#[test]
fn every_series_of_a_tenant_exists_before_its_first_event() {
    let t = Telemetry::new();
    t.component_loaded();
    t.config_loaded(at(NOW));
    t.instances(0, 8);
    t.tenant_added(&configured("acme", "audit,sign_in_attempts"), at(NOW));
    t.refresh(at("2026-01-01T00:10:30Z"));
    for format in [Format::Text, Format::OpenMetrics] {
        let text = t.render(format);
        let at_zero = |series: String| {
            assert_eq!(sample_in(&text, &series), Some(0.0), "{format:?}: {series} is not 0 in:\n{text}");
        };
        let unknown = |series: String| {
            let v = sample_in(&text, &series).unwrap_or_else(|| panic!("{format:?}: no {series} in:\n{text}"));
            assert!(v.is_nan(), "{format:?}: {series} is {v}, not NaN (not known yet)");
        };
        for service in ["audit", "sign_in_attempts"] {
            let l = format!(r#"{{tenant="acme",service="{service}"}}"#);
            for counter in [
                "events_fetched_total",
                "events_delivered_total",
                "events_unconfirmed_total",
                "sent_bytes_total",
                "pages_total",
                "onepassword_requests_total",
                "onepassword_rate_limited_total",
            ] {
                at_zero(format!("onepassword_collector_{counter}{l}"));
            }
            for outcome in ["delivered", "idle", "failed", "deferred"] {
                at_zero(format!(
                    r#"onepassword_collector_service_ticks_total{{tenant="acme",service="{service}",outcome="{outcome}"}}"#
                ));
            }
            for reason in ["budget", "rate_limited", "backoff", "lease_held", "lease_lost", "other"] {
                at_zero(format!(
                    r#"onepassword_collector_deferrals_total{{tenant="acme",service="{service}",reason="{reason}"}}"#
                ));
            }
            for id in ["200", "201", "202", "401", "429", "600", "601", "602", "603", "610", "700", "701", "702"] {
                at_zero(format!(
                    r#"onepassword_collector_failures_total{{tenant="acme",service="{service}",error_id="{id}"}}"#
                ));
            }
            unknown(format!("onepassword_collector_lag_seconds{l}"));
            unknown(format!("onepassword_collector_checkpoint_timestamp_seconds{l}"));
            unknown(format!("onepassword_collector_last_caught_up_timestamp_seconds{l}"));
            // Watched since it was added, 30 s ago, and never caught up.
            assert_eq!(sample_in(&text, &format!("onepassword_collector_freshness_seconds{l}")), Some(30.0));
        }
        assert!(!text.contains(r#"service="item_usage""#), "a service the tenant does not collect:\n{text}");
        let l = r#"{tenant="acme"}"#;
        for outcome in ["ok", "backing_off", "failed", "host_failure"] {
            at_zero(format!(r#"onepassword_collector_ticks_total{{tenant="acme",outcome="{outcome}"}}"#));
        }
        at_zero(format!("onepassword_collector_tick_duration_seconds_count{l}"));
        at_zero(format!("onepassword_collector_guest_cpu_seconds_count{l}"));
        at_zero(format!("onepassword_collector_skipped_firings_total{l}"));
        at_zero(format!("onepassword_collector_catch_up_ticks_total{l}"));
        at_zero(format!("onepassword_collector_catching_up{l}"));
        at_zero(format!("onepassword_collector_consecutive_failed_ticks{l}"));
        unknown(format!("onepassword_collector_peak_memory_bytes{l}"));
        unknown(format!("onepassword_collector_last_tick_timestamp_seconds{l}"));
        for id in ["1", "2", "3", "4", "200", "900", "901"] {
            at_zero(format!(
                r#"onepassword_collector_failures_total{{tenant="acme",service="_tick",error_id="{id}"}}"#
            ));
        }
        at_zero(r#"onepassword_collector_onepassword_requests_total{tenant="acme",service="_tick"}"#.into());
        at_zero(r#"onepassword_collector_onepassword_rate_limited_total{tenant="acme",service="_tick"}"#.into());
        // The process's own.
        at_zero("onepassword_collector_instances_in_use".into());
        assert_eq!(sample_in(&text, "onepassword_collector_instances_capacity"), Some(8.0));
        at_zero(r#"onepassword_collector_config_reloads_total{result="ok"}"#.into());
        at_zero(r#"onepassword_collector_config_reloads_total{result="error"}"#.into());
        assert_eq!(sample_in(&text, "onepassword_collector_config_last_reload_successful"), Some(1.0));
        assert_eq!(sample_in(&text, "onepassword_collector_ready"), Some(1.0));
        let build = format!(r#"onepassword_collector_build_info{{version="{}"}}"#, env!("CARGO_PKG_VERSION"));
        assert_eq!(sample_in(&text, &build), Some(1.0), "{text}");
        if cfg!(target_os = "linux") {
            for process in [
                "process_cpu_seconds_total",
                "process_resident_memory_bytes",
                "process_virtual_memory_bytes",
                "process_start_time_seconds",
                "process_open_fds",
                "process_max_fds",
            ] {
                let v = sample_in(&text, process).unwrap_or_else(|| panic!("{format:?}: no {process} in:\n{text}"));
                assert!(v.is_finite() && v >= 0.0, "{process} {v}");
            }
        }
    }
    // Added again (a reload that changed it): what is known stays.
    t.tick_finished(&tick("acme", vec![delivered("audit", 3, "2026-01-01T00:09:00Z")]), at(NOW));
    t.tenant_added(&configured("acme", "audit,sign_in_attempts,item_usage"), at(NOW));
    assert_eq!(value(&t, r#"onepassword_collector_events_delivered_total{tenant="acme",service="audit"}"#), 3.0);
    assert_eq!(
        value(&t, r#"onepassword_collector_checkpoint_timestamp_seconds{tenant="acme",service="audit"}"#),
        1767226140.0
    );
    assert_eq!(value(&t, r#"onepassword_collector_peak_memory_bytes{tenant="acme"}"#), f64::from(6 << 20));
    assert_eq!(value(&t, r#"onepassword_collector_pages_total{tenant="acme",service="item_usage"}"#), 0.0);
}

#[test]
fn the_text_format_is_prometheus_0_0_4_and_openmetrics_is_on_request() {
    let t = Telemetry::new();
    t.tenant_added(&configured("acme", "audit"), at(NOW));
    t.tick_finished(&tick("acme", vec![delivered("audit", 1, NOW)]), at(NOW));
    let text = t.render(Format::Text);
    // Counters' HELP and TYPE name the series, `_total` included, as the
    // text format (and promtool) want; no UNIT line, no EOF.
    assert!(text.contains("# HELP onepassword_collector_events_delivered_total Events Devo accepted"), "{text}");
    assert!(text.contains("# TYPE onepassword_collector_events_delivered_total counter\n"), "{text}");
    assert!(text.contains("# TYPE onepassword_collector_build_info gauge\n"), "{text}");
    assert!(text.contains("# TYPE onepassword_collector_lag_seconds gauge\n"), "{text}");
    assert!(!text.contains("# UNIT") && !text.contains("# EOF"), "{text}");
    let om = t.render(Format::OpenMetrics);
    assert!(om.contains("# TYPE onepassword_collector_events_delivered counter\n"), "{om}");
    assert!(om.contains("# TYPE onepassword_collector_build info\n"), "{om}");
    assert!(om.ends_with("# EOF\n"), "{om}");
    // The same samples either way (but histogram buckets, whose `le` each
    // format writes its own way: `le="1"` last, `le="1.0"` first).
    let samples = |t: &str| t.lines().filter(|l| !l.starts_with('#')).map(str::to_string).collect::<Vec<_>>();
    let (a, b) = (samples(&text), samples(&om));
    let differ: Vec<_> =
        a.iter().filter(|l| !b.contains(l) && !l.starts_with("process_") && !l.contains("_bucket{")).collect();
    assert!(differ.is_empty(), "only in the text format: {differ:?}");
}

#[test]
fn the_format_follows_the_accept_header() {
    assert_eq!(negotiate(None), Format::Text);
    assert_eq!(negotiate(Some("")), Format::Text);
    assert_eq!(negotiate(Some("*/*")), Format::Text);
    assert_eq!(negotiate(Some("text/plain; version=0.0.4")), Format::Text);
    assert_eq!(negotiate(Some("application/json")), Format::Text);
    assert_eq!(negotiate(Some("application/openmetrics-text")), Format::OpenMetrics);
    assert_eq!(negotiate(Some("Application/OpenMetrics-Text; version=1.0.0; charset=utf-8")), Format::OpenMetrics);
    // What Prometheus 2.x sends: OpenMetrics first.
    let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,\
                      text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
    assert_eq!(negotiate(Some(prometheus)), Format::OpenMetrics);
    assert_eq!(negotiate(Some("text/plain;q=1, application/openmetrics-text;q=0.5")), Format::Text);
    assert_eq!(negotiate(Some("application/openmetrics-text;q=0")), Format::Text);
    assert_eq!(negotiate(Some("application/openmetrics-text;q=0.2, */*;q=0.1")), Format::OpenMetrics);
}

#[test]
fn process_metrics_come_from_proc_self() {
    let stat = "4242 (host (harness)) S 1 2 3 4 5 6 7 8 9 10 250 150 16 17 18 19 20 21 1000 104857600 256 18446744073709551615";
    let boot = "cpu  1 2 3\nbtime 1767225600\nprocesses 10\n";
    let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                  Max cpu time              unlimited            unlimited            seconds\n\
                  Max open files            1024                 524288               files\n";
    let p = process::ProcessStats::parse(Some(stat), Some(boot), Some(limits), 100.0, 4096.0);
    assert_eq!(p.cpu_seconds, Some(4.0));
    assert_eq!(p.start_time_seconds, Some(1767225610.0));
    assert_eq!(p.virtual_bytes, Some(104857600.0));
    assert_eq!(p.resident_bytes, Some(256.0 * 4096.0));
    assert_eq!(p.max_fds, Some(1024.0));
    // What cannot be read is left out, not made up.
    let none = process::ProcessStats::parse(None, None, Some("garbage"), 100.0, 4096.0);
    assert_eq!(none, process::ProcessStats::default());
    if cfg!(target_os = "linux") {
        let live = process::ProcessStats::read();
        let started = live.start_time_seconds.unwrap();
        let now = unix_seconds(Utc::now());
        assert!(started <= now + 1.0 && started > now - 86400.0 * 365.0, "started {started}, now {now}");
        assert!(live.open_fds.unwrap() >= 3.0 && live.resident_bytes.unwrap() > 1e6, "{live:?}");
    }
}

#[test]
fn telemetry_is_shareable() {
    fn shareable<T: Send + Sync>() {}
    shareable::<Telemetry>();
}

#[test]
fn a_tick_that_only_backs_off_after_failures_counts_as_backing_off_not_ok() {
    let t = Telemetry::new();
    t.tick_finished(&tick("acme", vec![deferred("audit", "backing off after 3 consecutive failure(s)")]), at(NOW));
    t.tick_finished(&tick("acme", vec![deferred("audit", "the request budget is spent until 12:01")]), at(NOW));
    assert_eq!(value(&t, r#"onepassword_collector_ticks_total{tenant="acme",outcome="backing_off"}"#), 1.0);
    assert_eq!(
        value(&t, r#"onepassword_collector_ticks_total{tenant="acme",outcome="ok"}"#),
        1.0,
        "a spent budget is ok"
    );
}

#[test]
fn each_scrape_reads_the_pools_connection_counts() {
    use crate::host::outbound::ConnectionStats;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    let t = Telemetry::new();
    assert_eq!(sample(&t, "onepassword_collector_outbound_connections_opened_total"), Some(0.0), "at zero before");
    let reused = Arc::new(AtomicU64::new(4));
    let source = Arc::clone(&reused);
    t.watch_connections(Box::new(move || ConnectionStats {
        opened: 2,
        reused: source.load(Ordering::Relaxed),
        idle: 1,
    }));
    assert_eq!(sample(&t, "onepassword_collector_outbound_connections_opened_total"), Some(2.0));
    assert_eq!(sample(&t, "onepassword_collector_outbound_connections_reused_total"), Some(4.0));
    assert_eq!(sample(&t, "onepassword_collector_outbound_connections_idle"), Some(1.0));
    // The counters follow the pool's totals, however often it is scraped.
    reused.store(10, Ordering::Relaxed);
    assert_eq!(sample(&t, "onepassword_collector_outbound_connections_reused_total"), Some(10.0));
    assert_eq!(sample(&t, "onepassword_collector_outbound_connections_reused_total"), Some(10.0));
}
