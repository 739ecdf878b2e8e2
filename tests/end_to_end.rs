//! The real .wasm under the harness against the emulators, over loopback.

use end_to_end as common;

use common::*;
use harness_test_kit::emulator::OpFault;
use onepassword_collector::error;
use onepassword_collector::report::Outcome;
use onepassword_collector::service::{ApiVersion, Service};

#[test]
fn every_event_of_every_service_reaches_its_tag_once_and_as_served() {
    let mut f = Fixture::new(700, 11);
    f.set("page_size", "300");
    let ticks = f.drain(10);
    assert_eq!(ticks, 1, "700 events at 300 per page: one tick pages until caught up");
    assert!(f.op.requests().iter().filter(|r| !r.path.ends_with("/introspect")).count() == 9, "three pages each");
    f.assert_all_delivered_once(ApiVersion::V2);
    // byte for byte, not only as values: the collector forwards raw JSON
    for service in Service::ALL {
        assert_eq!(f.devo.events(service.default_tag()), f.dataset.events(service), "{service}");
    }
    // caught up: another tick fetches nothing and sends nothing
    let before = f.devo.requests().len();
    let t = f.tick();
    let report = t.result.unwrap();
    assert!(report.services.iter().all(|s| s.outcome == Outcome::Idle && s.fetched == 0));
    assert_eq!(f.devo.requests().len(), before);
    assert_eq!(report.services[0].total_sent, 700);
}

#[test]
fn api_v1_paths_deliver_v1_events() {
    let mut f = Fixture::new(120, 12);
    f.set("api_version", "v1");
    f.drain(5);
    f.assert_all_delivered_once(ApiVersion::V1);
    assert!(f.op.requests().iter().all(|r| r.path.starts_with("/api/v1/") || r.path == "/api/auth/introspect"));
}

#[test]
fn new_events_are_picked_up_from_the_stored_cursor() {
    let f = Fixture::new(50, 13);
    f.drain(3);
    let later = chrono::Utc::now() - chrono::Duration::minutes(1);
    let extra =
        serde_json::json!({"uuid": "NEWEVENT0000000000000000AA", "timestamp": later.to_rfc3339(), "action": "fill"});
    f.op.push_events(Service::ItemUsage, vec![extra.clone()]);
    let report = f.tick().result.unwrap();
    let item_usage = report.services.iter().find(|s| s.service == "item_usage").unwrap();
    assert_eq!((item_usage.fetched, item_usage.sent, item_usage.total_sent), (1, 1, 51));
    let received = f.devo.event_values(Service::ItemUsage.default_tag());
    assert_eq!(received.last(), Some(&extra));
    assert_eq!(received.len(), 51);
}

#[test]
fn checkpoints_survive_a_new_runtime_and_store() {
    let mut f = Fixture::new(400, 14);
    f.set("page_size", "150");
    f.set("max_pages_per_tick", "1");
    // first "process": one tick, then everything is dropped
    {
        let rt = harness_test_kit::loopback::runtime(
            &host_harness::runtime::default_component_path(),
            host_harness::runtime::Limits::default(),
        )
        .unwrap();
        let t = tokio::runtime::Runtime::new().unwrap().block_on(rt.tick(&f.tenant));
        assert!(t.ok(), "{}", t.to_json());
    }
    assert_eq!(f.devo.total_events(), 450);
    // a second one opens the same SQLite file and carries on
    f.drain(10);
    f.assert_all_delivered_once(ApiVersion::V2);
}

#[test]
fn a_devo_failure_loses_nothing_and_the_next_tick_recovers() {
    let f = Fixture::new(80, 15);
    f.devo.set_failure(Some(503));
    let t = f.tick();
    assert!(!t.ok());
    let report = t.result.as_ref().unwrap();
    for s in &report.services {
        assert_eq!(s.outcome, Outcome::Failed);
        assert_eq!(s.error.as_ref().unwrap().id, error::DEVO_REJECTED, "{}", t.to_json());
        assert_eq!(s.total_sent, 0);
    }
    assert_no_secrets(&t.to_json().to_string());
    assert_eq!(f.devo.total_events(), 0);
    f.devo.set_failure(None);
    f.recover(3);
    f.assert_all_delivered_once(ApiVersion::V2);
}

#[test]
fn a_missing_config_key_is_named_and_nothing_is_fetched_or_sent() {
    let mut f = Fixture::new(10, 16);
    f.tenant.variables.remove("devo_token");
    let t = f.tick();
    let e = t.result.as_ref().unwrap_err();
    assert_eq!((e.id, e.kind), (error::MISSING_SETTING, error::ErrorKind::InitVariablesError));
    assert!(e.message.contains("\"devo_token\""), "{}", e.message);
    let line = t.to_json();
    assert_eq!(line["ok"], false);
    assert_eq!(line["error"]["id"], 1);
    assert_no_secrets(&line.to_string());
    assert_eq!(f.op.request_count(), 0);
    assert_eq!(f.devo.requests().len(), 0);
    // an empty value is its own error
    f.set("devo_token", "");
    assert_eq!(f.tick().result.unwrap_err().id, error::EMPTY_SETTING);
}

#[test]
fn a_misspelt_key_the_host_offers_is_named_and_nothing_is_fetched_or_sent() {
    let mut f = Fixture::new(10, 17);
    // Both ignored until now: the default page size used, the IPs sent as they are.
    f.set("page_sise", "100");
    f.set("obfuscate_field", "client.ip_address");
    let t = f.tick();
    let e = t.result.as_ref().unwrap_err();
    assert_eq!((e.id, e.kind), (error::INVALID_SETTING, error::ErrorKind::InitVariablesError));
    for says in ["\"page_sise\" is unknown (did you mean \"page_size\"?)", "did you mean \"obfuscate_fields\"?"] {
        assert!(e.message.contains(says), "{says}: {}", e.message);
    }
    assert_eq!(f.op.request_count(), 0);
    assert_eq!(f.devo.requests().len(), 0);
    // validate fails the same way, before any check reaches the network
    let checks = block_on(runtime().validate(&f.tenant));
    let failed: Vec<_> = checks.iter().filter(|c| c.status == onepassword_collector::validate::Status::Fail).collect();
    assert!(failed.iter().any(|c| c.detail.contains("did you mean \"page_size\"?")), "{checks:?}");
    assert_eq!(f.op.request_count(), 0);
}

#[test]
fn a_wrong_1password_token_fails_each_service_with_401_and_hides_the_token() {
    let mut f = Fixture::new(10, 17);
    f.set("token", "wrong-token-DO-NOT-LEAK");
    let t = f.tick();
    let text = t.to_json().to_string();
    assert!(!text.contains("wrong-token"), "{text}");
    for s in &t.result.unwrap().services {
        assert_eq!(s.error.as_ref().unwrap().id, 401);
    }
    assert_eq!(f.devo.total_events(), 0);
    // `status` names the 401 of each service, though none ever collected.
    let rows = block_on(host_harness::status::read(&[f.tenant.clone()], &host_harness::kv::Stores::default()));
    let status = &host_harness::status::to_json(&rows, chrono::Utc::now())[0];
    for service in Service::ALL {
        let s = &status["services"][service.name()];
        assert_eq!((s["failing"].as_bool(), s["last_error"]["id"].as_u64()), (Some(true), Some(401)), "{status}");
    }
    assert!(!status.to_string().contains("wrong-token"), "{status}");
}

#[test]
fn an_unreachable_devo_is_named_in_plain_words() {
    let mut f = Fixture::new(5, 19);
    f.set("services", "audit");
    // Nothing listens on the discard port of loopback.
    f.set("devo_url", "http://127.0.0.1:9");
    f.tenant.allowed_outbound_hosts = Some(vec![f.tenant.variables["base_url"].clone(), "http://127.0.0.1:9".into()]);
    let t = f.tick();
    let report = t.result.as_ref().unwrap();
    let e = report.services[0].error.as_ref().expect("Devo failed");
    assert_eq!(e.id, error::DEVO_UNREACHABLE, "{}", e.message);
    for debug in ["ConnectionRefused", "Some(", "::"] {
        assert!(!e.message.contains(debug), "{}", e.message);
    }
    assert!(e.message.contains("transport error: Connection refused;"), "{}", e.message);
}

#[test]
fn a_host_outside_the_allow_list_is_refused() {
    let mut f = Fixture::new(20, 18);
    // The tenant may only reach 1Password: sending to Devo must be refused
    // by the host, before any connection is made.
    f.tenant.allowed_outbound_hosts = Some(vec![f.op.base_url()]);
    let t = f.tick();
    let report = t.result.as_ref().unwrap();
    for s in &report.services {
        let e = s.error.as_ref().unwrap();
        assert_eq!(e.id, error::DEVO_UNREACHABLE);
        assert!(e.message.contains("refused"), "{}", e.message);
    }
    assert!(f.devo.requests().is_empty(), "no request may reach Devo");
    assert_no_secrets(&t.to_json().to_string());
    // nothing lost: with Devo allowed again, everything arrives once
    f.tenant.allowed_outbound_hosts = None;
    f.recover(3);
    f.assert_all_delivered_once(ApiVersion::V2);
}

#[test]
fn obfuscated_fields_are_hashed_in_every_event_shape_and_the_rest_is_untouched() {
    let mut f = Fixture::new(40, 19);
    let fields = "target_user.email,client.ip_address,actor_details.email,user.email,session.ip";
    f.set("obfuscate_fields", fields);
    f.set("obfuscation_key", "a-long-random-obfuscation-key-DO-NOT-LEAK");
    let t = f.tick();
    assert!(t.ok(), "{}", t.to_json());
    assert!(!t.to_json().to_string().contains("DO-NOT-LEAK"));
    let obfuscator = onepassword_collector::obfuscate::Obfuscator::new(
        fields,
        onepassword_collector::obfuscate::Mode::Hash,
        Some(b"a-long-random-obfuscation-key-DO-NOT-LEAK"),
    )
    .unwrap();
    for service in Service::ALL {
        let received = f.devo.events(service.default_tag());
        let served = f.dataset.events(service);
        assert_eq!(received.len(), served.len(), "{service}");
        for (got, sent) in received.iter().zip(served) {
            assert_eq!(got, &obfuscator.apply(sent).unwrap(), "{service}");
            assert_ne!(got, sent, "{service}: nothing was obfuscated");
            for clear in ["@", "\"ip_address\":\"1", "\"ip\":\"1"] {
                let value: serde_json::Value = serde_json::from_str(got).unwrap();
                let hidden = [
                    &value["target_user"]["email"],
                    &value["client"]["ip_address"],
                    &value["actor_details"]["email"],
                    &value["user"]["email"],
                    &value["session"]["ip"],
                ];
                for h in hidden.iter().filter(|h| !h.is_null()) {
                    let text = h.as_str().unwrap();
                    assert!(
                        text.len() == 64 && text.chars().all(|c| c.is_ascii_hexdigit()),
                        "{service}: {text} {clear}"
                    );
                }
            }
        }
    }
}

#[test]
fn tags_can_be_overridden_per_service() {
    let mut f = Fixture::new(15, 20);
    f.set("tag_audit", "my.custom.audit");
    f.set("services", "audit,item_usage");
    f.drain(3);
    assert_eq!(f.devo.event_values("my.custom.audit"), f.dataset.values(Service::Audit));
    assert!(f.devo.events(Service::Audit.default_tag()).is_empty());
    assert_eq!(f.devo.event_values(Service::ItemUsage.default_tag()), f.dataset.values(Service::ItemUsage));
    assert!(f.devo.events(Service::SignInAttempts.default_tag()).is_empty());
}

/// The three services' page requests are in flight together: each answer
/// is held back two seconds, and every page request arrives before the
/// first of them is answered. One service after the other, each would
/// arrive after the one before it was answered.
#[test]
fn the_services_pages_are_requested_together() {
    let f = Fixture::new(20, 16);
    let hold = std::time::Duration::from_secs(2);
    f.op.push_faults([OpFault::Slow(hold), OpFault::Slow(hold), OpFault::Slow(hold)]);
    let report = f.tick().result.unwrap();
    assert!(report.services.iter().all(|s| s.outcome == Outcome::Delivered && s.sent == 20), "{report:?}");
    let pages: Vec<_> = f.op.requests().into_iter().filter(|r| !r.path.contains("introspect")).collect();
    assert_eq!(pages.len(), 3);
    assert!(pages.iter().all(|r| r.fault == Some(OpFault::Slow(hold))));
    let first_answered = pages[0].at + hold;
    assert!(
        pages.iter().all(|r| r.at < first_answered),
        "a page request waited for another's answer: arrivals {:?} after the first",
        pages.iter().map(|r| r.at - pages[0].at).collect::<Vec<_>>()
    );
    f.assert_all_delivered_once(ApiVersion::V2);
}

/// An event nested deep: `[[[…]]]` as deep as 1Password's JSON could go.
fn nested_event(uuid: &str, depth: usize) -> serde_json::Value {
    let later = chrono::Utc::now() - chrono::Duration::minutes(1);
    let deep = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
    let mut event =
        serde_json::json!({"uuid": uuid, "timestamp": later.to_rfc3339(), "user": {"email": "a@example.com"}});
    event["deep"] = serde_json::from_str(&deep).unwrap_or(serde_json::Value::Null);
    event
}

/// The component runs on a small stack (.cargo/config.toml): events nested
/// as deep as serde_json parses (its limit is 128 levels) are delivered,
/// obfuscation included, and deeper ones are an error of the page, never a
/// stack overflow that would stop the whole tick.
#[test]
fn deeply_nested_events_fit_the_components_stack() {
    let mut f = Fixture::new(5, 20);
    f.set("obfuscate_fields", "user.email");
    f.set("obfuscation_key", "a-long-random-obfuscation-key");
    f.drain(3);
    let event = nested_event("NESTED00000000000000000000", 120);
    assert!(!event["deep"].is_null());
    f.op.push_events(Service::ItemUsage, vec![event]);
    let t = f.tick();
    assert!(t.ok(), "{}", t.to_json());
    let got = f.devo.event_values(Service::ItemUsage.default_tag());
    assert_eq!(got.len(), 6);
    assert_eq!(got[5]["deep"].to_string().matches('[').count(), 120);

    // Deeper than any parser here goes: raw text, since serde_json would not
    // build it either.
    let later = chrono::Utc::now() - chrono::Duration::seconds(30);
    let deep = format!("{}{}", "[".repeat(50_000), "]".repeat(50_000));
    let text = format!(r#"{{"uuid":"DEEP","timestamp":"{}","deep":{deep}}}"#, later.to_rfc3339());
    f.op.push_raw_event(Service::Audit, later, &text);
    let t = f.tick();
    let report = t.result.as_ref().expect("the tick itself ran");
    let audit = report.services.iter().find(|s| s.service == "audit").unwrap();
    assert_ne!(audit.error.as_ref().map(|e| e.id), Some(host_harness::runtime::HOST_FAILURE), "{}", t.to_json());
}

#[test]
fn a_tenants_store_file_is_opened_once_for_many_ticks_and_keeps_its_log() {
    let f = Fixture::new(40, 12);
    // A runtime of its own, so that no other test's tenants count.
    let runtime = harness_test_kit::loopback::runtime(
        &host_harness::runtime::default_component_path(),
        host_harness::runtime::Limits::default(),
    )
    .expect("component loads");
    f.drain_on(&runtime, 5);
    for _ in 0..4 {
        f.advance(60);
        assert!(f.tick_on(&runtime).ok());
    }
    f.assert_all_delivered_once(ApiVersion::V2);
    let files = runtime.stores().sqlite_files();
    assert_eq!((files.opened(), files.len()), (1, 1), "one open for every tick");
    // Still open: SQLite neither checkpointed nor removed the write-ahead log.
    let path = f.tenant.kv.sqlite_path().expect("a SQLite store");
    let wal = path.with_file_name(format!("{}-wal", path.file_name().unwrap().to_str().unwrap()));
    assert!(wal.exists(), "{} is gone: the file was closed", wal.display());
}
