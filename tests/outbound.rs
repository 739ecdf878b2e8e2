//! Outbound requests only where the operator allows them: the real .wasm
//! under runtimes with different `[host]` outbound rules, against the
//! emulators on 127.0.0.1 (plain http on loopback: refused by default), and
//! against the same emulators behind TLS (https, `extra_ca_certificates`).

use end_to_end as common;

use common::*;
use harness_test_kit::loopback;
use harness_test_kit::tls::{TestCa, TlsFront};
use host_harness::runtime::{default_component_path, Limits, OutboundSettings, Runtime, RuntimeOptions, TenantTick};
use onepassword_collector::report::Outcome;
use onepassword_collector::service::ApiVersion;

fn runtime_with(outbound: OutboundSettings) -> Runtime {
    Runtime::with_options(
        &default_component_path(),
        RuntimeOptions { limits: Limits::default(), outbound, ..RuntimeOptions::default() },
    )
    .expect("component loads")
}

/// The rules of `loopback::outbound`, but without the loopback network.
fn http_without_loopback() -> OutboundSettings {
    OutboundSettings { allow_private_networks: vec![], ..loopback::outbound() }
}

/// Asserts the tick reached nobody: every service failed with the host's
/// refusal, neither emulator saw a request, and the tick's warnings say why
/// (containing each of `why`).
fn assert_refused(t: &TenantTick, f: &Fixture, why: &[&str]) {
    let line = t.to_json().to_string();
    assert_no_secrets(&line);
    let report = t.result.as_ref().unwrap_or_else(|e| panic!("the tick ran: {e}"));
    assert!(!report.services.is_empty());
    for s in &report.services {
        assert_eq!(s.outcome, Outcome::Failed, "{line}");
        let e = s.error.as_ref().unwrap();
        assert!(e.message.contains("the host refused the request"), "{}: {}", s.service, e.message);
    }
    assert_eq!(f.op.request_count(), 0, "1Password was reached");
    assert_eq!(f.devo.requests().len(), 0, "Devo was reached");
    let warnings = report.warnings.join("\n");
    for w in why {
        assert!(warnings.contains(w), "warnings lack {w:?}: {warnings}");
    }
    assert_eq!(t.to_json()["warnings"], serde_json::json!(report.warnings), "the line shows them");
}

#[test]
fn loopback_emulators_are_refused_until_the_operator_allows_loopback() {
    let f = Fixture::new(30, 41);
    let refusing = runtime_with(http_without_loopback());
    let t = block_on(refusing.tick(&f.tenant));
    let op = f.op.base_url().trim_start_matches("http://").to_string();
    let why = format!("http://{op} resolves to 127.0.0.1, a loopback address: refused");
    assert_refused(&t, &f, &[&why, "`[host] allow_private_networks = [\"127.0.0.0/8\"]` allows it"]);
    // Validate mode names the address and the setting too.
    let checks = block_on(refusing.validate(&f.tenant));
    let outbound = checks.iter().find(|c| c.name == "outbound").unwrap_or_else(|| panic!("{checks:?}"));
    assert!(outbound.detail.contains(&why) && outbound.detail.contains("allow_private_networks"), "{outbound:?}");
    assert_eq!(f.op.request_count(), 0, "validate reached 1Password");
    // The default runtime refuses plain http before any address (a tick
    // past the back-off the first refusal started).
    f.advance(300);
    let t = block_on(runtime_with(OutboundSettings::default()).tick_with(&f.tenant, &later(f.clock.get())));
    assert_refused(&t, &f, &["plain http is refused; the operator's `[host] allow_http = true` allows it"]);

    // Allowed: the same tenant delivers everything.
    f.drain(5);
    f.assert_all_delivered_once(ApiVersion::V2);
}

#[test]
fn a_name_that_resolves_to_loopback_is_refused_the_same_way() {
    let mut f = Fixture::new(20, 42);
    let (op, devo) =
        (f.op.base_url().replace("127.0.0.1", "localhost"), f.devo.base_url().replace("127.0.0.1", "localhost"));
    assert!(op.starts_with("http://localhost:") && devo.starts_with("http://localhost:"), "{op} {devo}");
    f.set("base_url", &op);
    f.set("devo_url", &devo);
    let t = block_on(runtime_with(http_without_loopback()).tick(&f.tenant));
    let op_authority = op.trim_start_matches("http://");
    assert_refused(
        &t,
        &f,
        &[
            &format!("http://{op_authority} resolves to 127.0.0.1, a loopback address: refused"),
            "allow_private_networks",
        ],
    );
    // With loopback allowed the name works like the address.
    f.drain(5);
    f.assert_all_delivered_once(ApiVersion::V2);
}

#[test]
fn an_allow_list_entry_binds_the_scheme() {
    let mut f = Fixture::new(10, 43);
    // The allow-list names https on the emulators' ports; the URLs are http.
    let https = |url: String| url.replace("http://", "https://");
    f.tenant.allowed_outbound_hosts = Some(vec![https(f.op.base_url()), https(f.devo.base_url())]);
    let t = tick(&f.tenant);
    assert_refused(&t, &f, &["is not in the tenant's allow-list", "scheme, host and port must match"]);
    f.tenant.allowed_outbound_hosts = Some(vec![f.op.base_url(), f.devo.base_url()]);
    f.drain(5);
    f.assert_all_delivered_once(ApiVersion::V2);
}

#[test]
fn a_response_body_over_the_hosts_ceiling_delivers_nothing() {
    let mut f = Fixture::new(200, 44);
    f.set("page_size", "200");
    // 200 events are some 100 KiB of JSON per page: far over 4 KiB.
    let small = OutboundSettings { response_body_bytes: 4096, ..loopback::outbound() };
    let t = block_on(runtime_with(small).tick(&f.tenant));
    assert_no_secrets(&t.to_json().to_string());
    let report = t.result.as_ref().unwrap_or_else(|e| panic!("the tick ran: {e}"));
    assert!(report.services.iter().all(|s| s.outcome == Outcome::Failed && s.sent == 0), "{}", t.to_json());
    assert!(f.op.request_count() > 0, "1Password was asked");
    assert_eq!(f.devo.total_events(), 0);
    // Under the default ceiling (8 MiB) the same pages go through.
    f.recover(5);
    f.assert_all_delivered_once(ApiVersion::V2);
}

/// The emulators behind TLS fronts with certificates of a test CA, and the
/// tenant's URLs pointing at the fronts (`https://localhost:PORT`).
fn behind_tls(f: &mut Fixture, ca: &TestCa) -> (TlsFront, TlsFront) {
    let op = TlsFront::start(ca, &f.op.base_url()).unwrap();
    let devo = TlsFront::start(ca, &f.devo.base_url()).unwrap();
    f.set("base_url", &op.url());
    f.set("devo_url", &devo.url());
    (op, devo)
}

/// The operator's `[host]` section as a config file would hold it: https
/// only (no `allow_http`), loopback reachable, and the test CA trusted
/// through `extra_ca_certificates`, a PEM file beside the config.
fn https_settings(ca: &TestCa, dir: &std::path::Path) -> OutboundSettings {
    std::fs::write(dir.join("relay-ca.pem"), ca.pem()).unwrap();
    let config = "[host]\nallow_private_networks = [\"127.0.0.0/8\"]\nextra_ca_certificates = \"relay-ca.pem\"\n\
                  [tenants.a]\n";
    let (host, _) = host_harness::tenant::parse_config(config, dir, |_| None).expect("the section loads");
    assert!(!host.outbound.allow_http);
    assert_eq!(host.outbound.tls.extra_count(), 1);
    host.outbound
}

#[test]
fn https_with_the_operators_ca_delivers_every_event_once() {
    let ca = TestCa::new("collector test CA");
    let mut f = Fixture::new(40, 45);
    let (op, devo) = behind_tls(&mut f, &ca);
    let dir = tempfile::tempdir().unwrap();
    let runtime = runtime_with(https_settings(&ca, dir.path()));
    // Validate mode passes every check and adds no "outbound" one.
    let checks = block_on(runtime.validate(&f.tenant));
    assert!(checks.iter().all(|c| c.status != onepassword_collector::validate::Status::Fail), "{checks:?}");
    assert!(checks.iter().any(|c| c.name == "1Password") && checks.iter().all(|c| c.name != "outbound"));
    f.drain_on(&runtime, 5);
    f.assert_all_delivered_once(ApiVersion::V2);
    // Every request went through the fronts, on connections kept alive
    // across requests and ticks: one handshake per connection opened.
    let requests = f.op.request_count() + f.devo.requests().len();
    let handshakes = op.handshakes() + devo.handshakes();
    let stats = runtime.connection_stats();
    assert_eq!(stats.opened as usize, handshakes, "{stats:?}");
    assert!(stats.opened as usize + stats.reused as usize >= requests, "{requests} requests, {stats:?}");
    assert!(handshakes < requests, "{handshakes} handshakes for {requests} requests: connections not reused");
    // Caught up, later ticks ask 1Password once per service each, on the
    // connections already open: no handshake at all.
    let (asked, shaken) = (f.op.request_count(), op.handshakes());
    for _ in 0..5 {
        f.advance(60);
        assert!(f.tick_on(&runtime).ok());
    }
    assert!(f.op.request_count() >= asked + 15, "{} requests", f.op.request_count() - asked);
    assert_eq!(op.handshakes(), shaken, "an idle tick opened a connection");
    assert_eq!(op.failed_handshakes() + devo.failed_handshakes(), 0);
}

#[test]
fn a_new_connection_to_a_server_resumes_its_tls_session() {
    let ca = TestCa::new("collector test CA");
    let mut f = Fixture::new(10, 47);
    let (op, devo) = behind_tls(&mut f, &ca);
    // rustls keeps sessions by server name: Devo's front is named by its
    // address, so neither front is offered the other's tickets.
    f.set("devo_url", &devo.url().replace("localhost", "127.0.0.1"));
    let dir = tempfile::tempdir().unwrap();
    // Nothing kept idle: every request opens a connection of its own.
    let pool = host_harness::host::outbound::PoolLimits { per_destination: 0, ..Default::default() };
    let runtime = Runtime::with_options(
        &default_component_path(),
        RuntimeOptions { outbound: https_settings(&ca, dir.path()), pool, ..RuntimeOptions::default() },
    )
    .expect("component loads");
    f.drain_on(&runtime, 5);
    f.assert_all_delivered_once(ApiVersion::V2);
    assert_eq!(runtime.connection_stats().reused, 0);
    for (name, front, requests) in [("1Password", &op, f.op.request_count()), ("Devo", &devo, f.devo.requests().len())]
    {
        let (handshakes, resumed) = (front.handshakes(), front.resumed_handshakes());
        assert!(handshakes >= requests, "{name}: {handshakes} handshakes for {requests} requests");
        // Only handshakes that began before the first one ended (the
        // services' requests start together, three at most) are full.
        assert!(resumed + 3 >= handshakes, "{name}: {resumed} of {handshakes} handshakes resumed");
    }
    assert!(op.handshakes() > 3 && op.resumed_handshakes() >= 1, "{} handshakes with 1Password", op.handshakes());
}

#[test]
fn https_to_an_unknown_ca_delivers_nothing_says_why_and_loses_nothing() {
    let ca = TestCa::new("collector test CA");
    let mut f = Fixture::new(25, 46);
    let (op, devo) = behind_tls(&mut f, &ca);
    // The webpki roots only: the test CA is unknown.
    let untrusting = runtime_with(OutboundSettings { allow_http: false, ..loopback::outbound() });
    let t = f.tick_on(&untrusting);
    let line = t.to_json().to_string();
    assert_no_secrets(&line);
    let report = t.result.as_ref().unwrap_or_else(|e| panic!("the tick ran: {e}"));
    assert!(report.services.iter().all(|s| s.outcome == Outcome::Failed && s.sent == 0), "{line}");
    assert!(op.failed_handshakes_reaching(1) > 0, "the host refused the front's certificate");
    assert_eq!(f.op.request_count(), 0, "no request reached 1Password");
    assert_eq!(f.devo.total_events(), 0);
    assert_eq!(devo.failed_handshakes(), 0, "no page was read, so nothing was sent to Devo");
    let warnings = report.warnings.join("\n");
    let op_authority = op.url();
    assert!(
        warnings.contains(&format!("TLS handshake with {op_authority} failed"))
            && warnings.contains("UnknownIssuer")
            && warnings.contains("`[host] extra_ca_certificates`"),
        "{warnings}"
    );
    // Validate mode says the same: which server, why, and the setting.
    let checks = block_on(untrusting.validate(&f.tenant));
    let outbound = checks.iter().find(|c| c.name == "outbound").unwrap_or_else(|| panic!("{checks:?}"));
    assert_eq!(outbound.status, onepassword_collector::validate::Status::Fail);
    assert!(
        outbound.detail.contains(&format!("TLS handshake with {op_authority} failed"))
            && outbound.detail.contains("extra_ca_certificates"),
        "{}",
        outbound.detail
    );
    assert!(devo.failed_handshakes_reaching(1) > 0, "validate's empty Devo request met the untrusted certificate too");

    // A different CA of the same name is no better.
    let impostor = TestCa::new("collector test CA");
    let dir = tempfile::tempdir().unwrap();
    f.advance(300);
    let t = f.tick_on(&runtime_with(https_settings(&impostor, dir.path())));
    assert!(t.result.as_ref().unwrap().services.iter().all(|s| s.outcome == Outcome::Failed), "{}", t.to_json());
    assert_eq!(f.op.request_count(), 0);

    // Once the operator trusts the right CA, everything arrives, once.
    f.advance(300);
    let dir = tempfile::tempdir().unwrap();
    f.drain_on(&runtime_with(https_settings(&ca, dir.path())), 5);
    f.assert_all_delivered_once(ApiVersion::V2);
}
