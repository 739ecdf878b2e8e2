//! Faults injected into 1Password, Devo and the host, one at a time: each
//! fails the tick with its error, leaves the checkpoint alone, sends nothing
//! twice, and the next fault-free tick recovers.

use end_to_end::*;
use harness_test_kit::emulator::{DevoFault, OpFault};
use host_harness::runtime::{KvFault, KvOp, TickOptions};
use onepassword_collector::error;
use onepassword_collector::report::Outcome;
use onepassword_collector::service::{ApiVersion, Service};
use std::sync::Arc;
use std::time::Duration;

/// 25 audit events, pages of 10, one page a tick, one service to keep the
/// cases readable (a fault then meets a page of events).
fn audit_fixture(seed: u64) -> Fixture {
    let mut f = Fixture::new(25, seed);
    f.set("services", "audit");
    f.set("page_size", "10");
    f.set("max_pages_per_tick", "1");
    f.set("request_timeout_ms", "700");
    f
}

fn assert_audit_once(f: &Fixture) {
    let served = f.dataset.values_for(Service::Audit, ApiVersion::V2);
    assert_eq!(f.devo.event_values(Service::Audit.default_tag()), served);
}

/// One good tick, one faulted tick (checked), then recovery.
fn fault_case(f: &Fixture, inject: impl FnOnce(&Fixture), expect_id: u32, expect_text: &str) {
    let t = f.tick();
    assert!(t.ok(), "{}", t.to_json());
    let before = f.state(Service::Audit).unwrap().checkpoint;
    let delivered = f.devo.total_events();
    inject(f);
    f.advance(1);
    let t = f.tick();
    let line = t.to_json();
    assert_no_secrets(&line.to_string());
    let report = t.result.unwrap();
    let audit = &report.services[0];
    let e = audit.error.as_ref().unwrap_or_else(|| panic!("no error: {line}"));
    assert_eq!(e.id, expect_id, "{line}");
    assert!(e.message.contains(expect_text), "{:?} lacks {expect_text:?}", e.message);
    assert_eq!(audit.outcome, Outcome::Failed);
    let after = f.state(Service::Audit).unwrap().checkpoint.unwrap();
    let before = before.unwrap();
    assert_eq!((&after.newest_event, after.total_sent), (&before.newest_event, before.total_sent), "checkpoint moved");
    if expect_id == 400 {
        assert_eq!(after.cursor, None, "a refused cursor is dropped, to re-read from the newest event");
    } else {
        assert_eq!(after.cursor, before.cursor, "cursor moved");
    }
    assert_eq!(f.devo.total_events(), delivered, "something was delivered");
    f.recover(6);
    assert_audit_once(f);
}

#[test]
fn onepassword_401() {
    let f = audit_fixture(21);
    fault_case(&f, |f| f.op.push_faults([OpFault::Status(401)]), 401, "not scoped");
}

#[test]
fn onepassword_400_invalid_cursor() {
    let f = audit_fixture(22);
    fault_case(&f, |f| f.op.push_faults([OpFault::Status(400)]), 400, "reads again");
}

#[test]
fn onepassword_429_with_retry_after() {
    let f = audit_fixture(23);
    fault_case(&f, |f| f.op.push_faults([OpFault::TooManyRequests { retry_after: Some(120) }]), 429, "rate limit");
    let budget_until = f.op.requests().iter().filter(|r| r.status == 429).count();
    assert_eq!(budget_until, 1);
}

#[test]
fn onepassword_429_without_retry_after_defers_the_next_tick() {
    let f = audit_fixture(24);
    let t = f.tick();
    assert!(t.ok());
    f.op.push_faults([OpFault::TooManyRequests { retry_after: None }]);
    let report = f.tick().result.unwrap();
    assert_eq!(report.services[0].error.as_ref().unwrap().id, 429);
    // at once again: the account is backing off, no request is made
    let requests = f.op.request_count();
    let report = f.tick().result.unwrap();
    assert_eq!(report.services[0].outcome, Outcome::Deferred, "{:?}", report.services[0]);
    assert!(report.services[0].deferred_until.is_some());
    assert_eq!(f.op.request_count(), requests);
    f.recover(6);
    assert_audit_once(&f);
}

#[test]
fn onepassword_500_502_503() {
    for (i, status) in [500u16, 502, 503].into_iter().enumerate() {
        let f = audit_fixture(25 + i as u64);
        fault_case(&f, |f| f.op.push_faults([OpFault::Status(status)]), status.into(), "server error");
        assert_eq!(f.state(Service::Audit).unwrap().backoff, None, "recovery clears the back-off");
    }
}

#[test]
fn onepassword_slower_than_the_timeout() {
    let f = audit_fixture(28);
    fault_case(
        &f,
        |f| f.op.push_faults([OpFault::Slow(Duration::from_secs(3))]),
        error::ONEPASSWORD_UNREACHABLE,
        "timed out",
    );
}

#[test]
fn onepassword_connection_dropped_and_refused() {
    let f = audit_fixture(29);
    fault_case(&f, |f| f.op.push_faults([OpFault::Drop]), error::ONEPASSWORD_UNREACHABLE, "could not be reached");

    // nothing listening at all
    let mut f = audit_fixture(30);
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    f.set("base_url", &format!("http://{closed}"));
    f.tenant.allowed_outbound_hosts = Some(vec![format!("http://{closed}"), f.devo.base_url()]);
    let report = f.tick().result.unwrap();
    let e = report.services[0].error.as_ref().unwrap();
    assert_eq!(e.id, error::ONEPASSWORD_UNREACHABLE, "{e}");
    assert_eq!(f.devo.total_events(), 0);
}

#[test]
fn onepassword_bodies_that_are_not_pages() {
    let f = audit_fixture(31);
    fault_case(&f, |f| f.op.push_faults([OpFault::NotJson]), error::ONEPASSWORD_BAD_BODY, "not an events page");
    let f = audit_fixture(32);
    fault_case(&f, |f| f.op.push_faults([OpFault::Truncated]), error::ONEPASSWORD_BAD_BODY, "not an events page");
}

#[test]
fn onepassword_status_outside_4xx_5xx_keeps_its_own_field() {
    // hyper takes any three-digit status: 900 is the host's id, 700 Devo's.
    for (i, status) in [900u16, 700].into_iter().enumerate() {
        let f = audit_fixture(34 + i as u64);
        assert!(f.tick().ok());
        f.op.push_faults([OpFault::Status(status)]);
        f.advance(1);
        let t = f.tick();
        let line = t.to_json();
        let e = t.result.as_ref().unwrap().services[0].error.clone().unwrap();
        assert_eq!((e.id, e.http_status), (error::ONEPASSWORD_UNEXPECTED_STATUS, Some(status)), "{line}");
        assert_eq!(line["services"]["audit"]["error"]["http_status"], status, "{line}");
        assert_eq!(line["error"]["id"], error::ONEPASSWORD_UNEXPECTED_STATUS, "{line}");
        f.recover(6);
        assert_audit_once(&f);
    }
}

/// A 1Password page over `max_response_bytes` — announced by its
/// `Content-Length`, or found out while reading a chunked body — fails that
/// service alone with its own id (not a trap of the whole instance, 900):
/// its lease is released, the other services deliver, and it recovers.
#[test]
fn onepassword_answer_over_the_cap_fails_that_service_alone() {
    for (i, declared) in [true, false].into_iter().enumerate() {
        let mut f = Fixture::new(20, 36 + i as u64);
        f.set("max_response_bytes", "65536");
        // Twice the instance's memory: read whole, it would end the tick (900).
        f.op.push_faults([OpFault::Oversized { bytes: 32 << 20, declared }]);
        let t = f.tick();
        let line = t.to_json();
        let report = t.result.as_ref().expect("the tick itself runs");
        let failed: Vec<_> = report.services.iter().filter(|s| s.outcome == Outcome::Failed).collect();
        assert_eq!(failed.len(), 1, "{line}");
        let e = failed[0].error.as_ref().unwrap();
        assert_eq!(e.id, error::ONEPASSWORD_TOO_LARGE, "{line}");
        assert!(e.message.contains("65536 bytes") && e.message.contains("max_response_bytes"), "{}", e.message);
        let service: Service = failed[0].service.parse().unwrap();
        let state = f.state(service).unwrap();
        assert!(state.lease.is_none(), "the lease is released: {state:?}");
        assert!(f.devo.event_values(service.default_tag()).is_empty());
        for other in Service::ALL.into_iter().filter(|s| *s != service) {
            let s = report.services.iter().find(|s| s.service == other.name()).unwrap();
            assert_eq!((s.outcome, s.sent), (Outcome::Delivered, 20), "{line}");
        }
        f.recover(6);
        f.assert_all_delivered_once(ApiVersion::V2);
    }
}

#[test]
fn onepassword_items_without_fields_are_forwarded_as_received() {
    let f = audit_fixture(33);
    assert!(f.tick().ok());
    f.op.push_faults([OpFault::MissingFields]);
    let report = f.tick().result.unwrap();
    // 1Password's items are forwarded whatever they hold; the cursor the
    // page carried resumes where the request started, so nothing is skipped.
    assert!(report.ok(), "{report:?}");
    f.recover(6);
    let got = f.devo.event_values(Service::Audit.default_tag());
    let served = f.dataset.values_for(Service::Audit, ApiVersion::V2);
    let real: Vec<_> = got.iter().filter(|v| v.get("uuid").is_some()).cloned().collect();
    assert_eq!(real, served);
}

#[test]
fn devo_statuses() {
    for (i, status) in [401u16, 413, 500, 503].into_iter().enumerate() {
        let f = audit_fixture(40 + i as u64);
        fault_case(
            &f,
            |f| f.devo.push_faults([DevoFault::Status(status)]),
            error::DEVO_REJECTED,
            &format!("HTTP {status}"),
        );
    }
}

#[test]
fn devo_hang_past_the_timeout_and_refused() {
    let f = audit_fixture(45);
    fault_case(
        &f,
        |f| f.devo.push_faults([DevoFault::Hang(Duration::from_secs(3))]),
        error::DEVO_UNREACHABLE,
        "timed out",
    );
    let f = audit_fixture(46);
    fault_case(&f, |f| f.devo.push_faults([DevoFault::Drop]), error::DEVO_UNREACHABLE, "could not be reached");

    // nothing listening at Devo's address at all
    let mut f = audit_fixture(48);
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    f.set("devo_url", &format!("http://{closed}"));
    let report = f.tick().result.unwrap();
    let e = report.services[0].error.as_ref().unwrap();
    assert_eq!(e.id, error::DEVO_UNREACHABLE, "{e}");
    assert!(f.state(Service::Audit).unwrap().checkpoint.is_none());
}

#[test]
fn devo_slow_but_within_the_timeout_delivers() {
    let f = audit_fixture(47);
    f.devo.push_faults([DevoFault::AcceptAfter(Duration::from_millis(300))]);
    let t = f.tick();
    assert!(t.ok(), "{}", t.to_json());
    f.drain(5);
    assert_audit_once(&f);
}

fn kv_fault(op: KvOp, key: &'static str) -> TickOptions {
    TickOptions {
        kv_faults: Some(Arc::new(move |o, k| (o == op && k == key).then(|| KvFault::Error("disk full".into())))),
        ..Default::default()
    }
}

#[test]
fn key_value_errors_on_get_set_and_swap_send_nothing() {
    for (op, key) in [(KvOp::CasRead, "service/audit"), (KvOp::Swap, "service/audit"), (KvOp::Get, "budget")] {
        let f = audit_fixture(50);
        assert!(f.tick().ok());
        let before = f.state(Service::Audit).unwrap().checkpoint;
        let delivered = f.devo.total_events();
        let options = if op == KvOp::Get {
            TickOptions {
                kv_faults: Some(Arc::new(|o, k: &str| {
                    (o == KvOp::Get && k.starts_with("budget/")).then(|| KvFault::Error("disk full".into()))
                })),
                clock_offset: Duration::from_secs(1),
                ..Default::default()
            }
        } else {
            kv_fault(op, key)
        };
        let report = f.tick_with(&options).result.unwrap();
        let e = report.services[0].error.as_ref().unwrap_or_else(|| panic!("{op:?}: {report:?}"));
        assert_eq!((e.id, e.kind.as_str()), (error::PERSISTENCE, "PrePullError"), "{op:?}: {e}");
        assert!(e.message.contains("disk full"));
        assert_eq!(f.devo.total_events(), delivered, "{op:?}: sent without a checkpoint");
        assert_eq!(f.state(Service::Audit).unwrap().checkpoint, before);
        f.recover(6);
        assert_audit_once(&f);
    }
    // a failing plain set (the account cache) is only a warning
    let f = audit_fixture(51);
    let options = TickOptions {
        kv_faults: Some(Arc::new(|o, k: &str| {
            (o == KvOp::Set && k.starts_with("account/")).then(|| KvFault::Error("disk full".into()))
        })),
        ..Default::default()
    };
    let report = f.tick_with(&options).result.unwrap();
    assert!(report.ok());
    assert!(report.warnings.iter().any(|w| w.contains("disk full")), "{:?}", report.warnings);
}

#[test]
fn the_store_failing_after_devo_took_the_page_resends_only_that_page() {
    let f = audit_fixture(52);
    assert!(f.tick().ok());
    let devo_before = f.devo.requests().len();
    let seen = f.devo.clone();
    let options = TickOptions {
        kv_faults: Some(Arc::new(move |o, k: &str| {
            (o == KvOp::Swap && k == "service/audit" && seen.requests().len() > devo_before)
                .then(|| KvFault::Error("disk full".into()))
        })),
        ..Default::default()
    };
    let report = f.tick_with(&options).result.unwrap();
    let audit = &report.services[0];
    assert_eq!(audit.error.as_ref().unwrap().id, error::PERSISTENCE);
    assert!(audit.error.as_ref().unwrap().message.contains("duplicate"));
    assert_eq!(audit.unconfirmed, 10);
    f.recover(6);
    let got = f.devo.events(Service::Audit.default_tag());
    assert_eq!(got.len(), 25 + 10, "exactly the unconfirmed page again");
}

#[test]
fn an_instance_stopped_between_devo_and_the_checkpoint_repeats_one_page() {
    let f = audit_fixture(53);
    assert!(f.tick().ok());
    let devo_before = f.devo.requests().len();
    let seen = f.devo.clone();
    let options = TickOptions {
        kv_faults: Some(Arc::new(move |o, k: &str| {
            (o == KvOp::Swap && k == "service/audit" && seen.requests().len() > devo_before).then_some(KvFault::Stop)
        })),
        ..Default::default()
    };
    let t = f.tick_with(&options);
    let e = t.result.as_ref().unwrap_err();
    assert_eq!(e.id, host_harness::runtime::HOST_FAILURE, "{e}");
    assert!(f.state(Service::Audit).unwrap().lease.is_some(), "the stopped tick's lease stays behind");
    // within the lease: deferred; after it: recovers
    f.advance(2);
    let report = f.tick().result.unwrap();
    assert_eq!(report.services[0].outcome, Outcome::Deferred);
    f.recover(6);
    let got = f.devo.events(Service::Audit.default_tag());
    assert_eq!(got.len(), 25 + 10, "one page sent twice, nothing lost");
}

#[test]
fn two_ticks_at_once_on_one_store_never_duplicate() {
    let mut f = Fixture::new(300, 60);
    f.set("page_size", "20");
    let tenant = f.tenant.clone();
    for round in 0..12u64 {
        let handles: Vec<_> = (0..2)
            .map(|_| {
                let tenant = tenant.clone();
                std::thread::spawn(move || tick_with(&tenant, &later(round * 200)))
            })
            .collect();
        for h in handles {
            let t = h.join().unwrap();
            let report = t.result.unwrap_or_else(|e| panic!("{e}"));
            assert!(report.services.iter().all(|s| s.error.is_none()), "{report:?}");
        }
    }
    f.advance(12 * 200);
    f.recover(20);
    f.assert_all_delivered_once(ApiVersion::V2);
}
