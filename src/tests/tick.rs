//! The tick's decisions, against the simulated world in `sim.rs`.

use super::*;
use crate::config::tests::{load, minimal};
use crate::error::{
    CHECKPOINT_UNREADABLE, DEVO_REJECTED, DEVO_TOO_LARGE, DEVO_UNREACHABLE, ONEPASSWORD_BAD_BODY,
    ONEPASSWORD_STUCK_CURSOR, ONEPASSWORD_TOO_LARGE, ONEPASSWORD_UNEXPECTED_STATUS, ONEPASSWORD_UNREACHABLE,
    PERSISTENCE,
};
use crate::tests::sim::{Fault, Sim, Step as SimStep, SwapAnswers};
use std::collections::HashMap;

fn t(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

const NOW: &str = "2026-03-02T12:00:00Z";

fn config(extra: &[(&'static str, &str)]) -> Config {
    let mut m: HashMap<&str, String> = minimal();
    m.insert("base_url", "http://127.0.0.1:1".into());
    m.insert("devo_url", "http://127.0.0.1:2".into());
    for (k, v) in extra {
        m.insert(k, v.to_string());
    }
    load(&m).unwrap()
}

fn audit_only(extra: &[(&'static str, &str)]) -> Config {
    let mut all = vec![("services", "audit")];
    all.extend_from_slice(extra);
    config(&all)
}

fn sim_with(service: Service, n: usize) -> Sim {
    let mut sim = Sim::new(t(NOW));
    sim.generate(service, n, t(NOW) - TimeDelta::hours(1), 3);
    sim
}

fn state(sim: &Sim, service: Service) -> ServiceState {
    ServiceState::decode(service, &sim.store[&ServiceState::key(service)]).unwrap()
}

fn svc<'a>(report: &'a TickReport, name: &str) -> &'a ServiceReport {
    report.services.iter().find(|s| s.service == name).unwrap()
}

/// Ticks (advancing the clock) until Devo holds every served event and a
/// tick ends without error, or `max` ticks.
fn drain(sim: &mut Sim, config: &Config, max: usize, every: TimeDelta) -> usize {
    for n in 1..=max {
        let report = sim.tick(config.clone());
        sim.now += every;
        let all_received = sim.events.iter().all(|(s, served)| {
            let got: std::collections::HashSet<&String> = sim.received(*s).iter().collect();
            served.iter().all(|e| got.contains(e))
        });
        if all_received && report.is_some_and(|r| r.ok()) {
            return n;
        }
    }
    panic!("not caught up after {max} ticks");
}

fn assert_exactly_once(sim: &Sim, service: Service) {
    assert_eq!(
        sim.received(service),
        sim.events[&service].as_slice(),
        "{service}: not every event exactly once, in order"
    );
}

#[test]
fn first_tick_introspects_starts_24h_back_delivers_then_checkpoints() {
    let mut sim = sim_with(Service::Audit, 5);
    let report = sim.tick(audit_only(&[])).unwrap();
    let s = svc(&report, "audit");
    assert_eq!((s.outcome, s.fetched, s.sent, s.pages, s.has_more), (Outcome::Delivered, 5, 5, 1, false));
    assert_exactly_once(&sim, Service::Audit);
    let cp = state(&sim, Service::Audit).checkpoint.unwrap();
    assert_eq!((cp.cursor.as_deref(), cp.total_sent), (Some("audit:5:1000"), 5));
    assert_eq!(s.checkpoint, cp.newest_event);
    assert!(s.lag_seconds.unwrap() >= 3600);
    assert!(s.bytes_sent > 0);
    assert!(state(&sim, Service::Audit).lease.is_none(), "lease released at the end");
    // the request started 24 hours back, and the account was cached
    assert!(sim.store.contains_key(&account::cache_key(&audit_only(&[]).token)));
    assert!(sim.store.contains_key("budget/ACCOUNT1"));
}

#[test]
fn later_ticks_continue_from_the_cursor_and_reuse_the_cached_introspection() {
    let mut sim = sim_with(Service::Audit, 5);
    sim.tick(audit_only(&[])).unwrap();
    sim.generate(Service::Audit, 2, t(NOW) - TimeDelta::minutes(1), 1);
    sim.now += TimeDelta::minutes(1);
    let before = sim.requests_seen;
    let report = sim.tick(audit_only(&[])).unwrap();
    assert_eq!(svc(&report, "audit").sent, 2);
    assert_eq!(svc(&report, "audit").total_sent, 7);
    assert_eq!(sim.requests_seen - before, 2, "one page and one Devo batch; no introspection");
    assert_exactly_once(&sim, Service::Audit);
}

#[test]
fn an_empty_page_sends_nothing() {
    let mut sim = Sim::new(t(NOW));
    let report = sim.tick(audit_only(&[])).unwrap();
    assert_eq!(svc(&report, "audit").outcome, Outcome::Idle);
    assert_eq!(sim.devo_requests, 0);
    assert_eq!(state(&sim, Service::Audit).checkpoint.unwrap().cursor.as_deref(), Some("audit:0:1000"));
}

#[test]
fn services_are_independent_and_use_their_own_tags() {
    let mut sim = Sim::new(t(NOW));
    for s in Service::ALL {
        sim.generate(s, 4, t(NOW) - TimeDelta::hours(2), 2);
    }
    sim.scripted.push_back(Fault::OpTransport); // hits whichever service goes first
    let report = sim.tick(config(&[])).unwrap();
    let names: Vec<_> = report.services.iter().map(|s| s.service.as_str()).collect();
    assert_eq!(names, vec!["audit", "item_usage", "sign_in_attempts"], "reported in a stable order");
    let failed: Vec<_> = report.services.iter().filter(|s| s.outcome == Outcome::Failed).collect();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].error.as_ref().unwrap().id, ONEPASSWORD_UNREACHABLE);
    assert!(!report.ok());
    for s in Service::ALL {
        if s.name() == failed[0].service {
            assert!(sim.received(s).is_empty());
        } else {
            assert_eq!(svc(&report, s.name()).outcome, Outcome::Delivered);
            assert_exactly_once(&sim, s);
        }
    }
}

/// An answer over `max_response_bytes` fails its service alone: the lease is
/// released, the checkpoint stays, the other services deliver, and a later
/// tick recovers. Both ways: the component stopped reading (an HTTP failure),
/// or a host handed the core a body over the cap anyway.
#[test]
fn an_answer_over_the_cap_fails_its_service_alone_and_releases_its_lease() {
    let mut sim = Sim::new(t(NOW));
    for s in Service::ALL {
        sim.generate(s, 3, t(NOW) - TimeDelta::hours(2), 1);
    }
    sim.scripted.push_back(Fault::OpTooLarge); // hits whichever service goes first
    let report = sim.tick(config(&[])).unwrap();
    let failed: Vec<_> = report.services.iter().filter(|s| s.outcome == Outcome::Failed).collect();
    assert_eq!(failed.len(), 1, "{report:?}");
    assert_eq!(failed[0].error.as_ref().map(|e| e.id), Some(ONEPASSWORD_TOO_LARGE));
    for s in Service::ALL {
        if s.name() == failed[0].service {
            let stored = state(&sim, s);
            assert!(stored.lease.is_none() && stored.checkpoint.is_none(), "{stored:?}");
            assert_eq!(stored.stats.last_error.map(|e| e.id), Some(ONEPASSWORD_TOO_LARGE));
            assert!(sim.received(s).is_empty());
        } else {
            assert_eq!(svc(&report, s.name()).outcome, Outcome::Delivered);
            assert_exactly_once(&sim, s);
        }
    }
    drain(&mut sim, &config(&[]), 10, TimeDelta::minutes(1));
    Service::ALL.into_iter().for_each(|s| assert_exactly_once(&sim, s));

    // One item_usage event makes its page larger than a 1 KiB cap.
    let mut sim = Sim::new(t(NOW));
    for s in Service::ALL {
        sim.generate(s, 3, t(NOW) - TimeDelta::hours(2), 1);
    }
    let first = &mut sim.events.get_mut(&Service::ItemUsage).unwrap()[0];
    *first = first.replacen("\"note\"", &format!("\"pad\":\"{}\",\"note\"", "p".repeat(1500)), 1);
    let report = sim.tick(config(&[("max_response_bytes", "1024")])).unwrap();
    let item_usage = svc(&report, "item_usage");
    let e = item_usage.error.as_ref().unwrap();
    assert_eq!((item_usage.outcome, e.id), (Outcome::Failed, ONEPASSWORD_TOO_LARGE));
    assert!(e.message.contains("1024 bytes") && e.message.contains("max_response_bytes"), "{}", e.message);
    assert!(state(&sim, Service::ItemUsage).lease.is_none());
    assert!(sim.received(Service::ItemUsage).is_empty());
    for s in [Service::Audit, Service::SignInAttempts] {
        assert_eq!(svc(&report, s.name()).outcome, Outcome::Delivered);
        assert_exactly_once(&sim, s);
    }
}

#[test]
fn every_1password_fault_keeps_the_checkpoint_and_the_next_tick_recovers() {
    let cases = [
        (Fault::OpStatus(401, None), 401),
        (Fault::OpStatus(500, None), 500),
        (Fault::OpStatus(502, None), 502),
        (Fault::OpStatus(503, None), 503),
        (Fault::OpTransport, ONEPASSWORD_UNREACHABLE),
        (Fault::OpNotJson, ONEPASSWORD_BAD_BODY),
        (Fault::OpTruncated, ONEPASSWORD_BAD_BODY),
        (Fault::OpTooLarge, ONEPASSWORD_TOO_LARGE),
        (Fault::OpStatus(900, None), ONEPASSWORD_UNEXPECTED_STATUS),
        (Fault::OpStatus(302, None), ONEPASSWORD_UNEXPECTED_STATUS),
    ];
    for (fault, id) in cases {
        let mut sim = sim_with(Service::Audit, 6);
        sim.tick(audit_only(&[("page_size", "2")])).unwrap();
        let before = state(&sim, Service::Audit).checkpoint;
        sim.scripted.push_back(fault.clone());
        sim.now += TimeDelta::minutes(5);
        let report = sim.tick(audit_only(&[("page_size", "2")])).unwrap();
        let s = svc(&report, "audit");
        assert_eq!((s.outcome, s.error.as_ref().map(|e| e.id)), (Outcome::Failed, Some(id)), "{fault:?}");
        assert_eq!(state(&sim, Service::Audit).checkpoint, before, "{fault:?}");
        let stored = state(&sim, Service::Audit).stats.last_error.unwrap();
        assert_eq!(stored.id, id);
        // The status 1Password answered is kept beside the id, never as it.
        let status = match fault {
            Fault::OpStatus(status, _) => Some(status),
            _ => None,
        };
        assert_eq!((s.error.as_ref().unwrap().http_status, stored.http_status), (status, status), "{fault:?}");
        sim.now += TimeDelta::minutes(5);
        drain(&mut sim, &audit_only(&[("page_size", "2")]), 10, TimeDelta::minutes(1));
        assert_exactly_once(&sim, Service::Audit);
    }
}

#[test]
fn a_page_with_items_lacking_fields_is_forwarded_but_not_used_to_dedupe() {
    let mut sim = sim_with(Service::Audit, 2);
    sim.scripted.push_back(Fault::OpMissingFields);
    let report = sim.tick(audit_only(&[])).unwrap();
    // Items are forwarded as received, whatever they hold.
    assert_eq!(svc(&report, "audit").sent, 1);
    assert_eq!(sim.received(Service::Audit), [r#"{"action":"x"}"#.to_string()]);
}

#[test]
fn server_errors_back_off_the_service_with_growing_waits() {
    let mut sim = sim_with(Service::Audit, 3);
    sim.scripted.push_back(Fault::OpStatus(503, None));
    sim.tick(audit_only(&[])).unwrap();
    let b1 = state(&sim, Service::Audit).backoff.unwrap();
    assert_eq!(b1.attempts, 1);
    assert!(b1.until > sim.now);
    // within the back-off: deferred, no request at all
    let before = sim.op_requests.len();
    let report = sim.tick(audit_only(&[])).unwrap();
    let s = svc(&report, "audit");
    assert_eq!(s.outcome, Outcome::Deferred);
    assert!(s.deferred_reason.as_ref().unwrap().contains("backing off"));
    assert_eq!(s.deferred_until.as_deref(), Some(rfc3339(b1.until).as_str()));
    assert_eq!(sim.op_requests.len(), before);
    // after it: retried; a second failure doubles the wait
    sim.now = b1.until;
    sim.scripted.push_back(Fault::OpStatus(500, None));
    sim.tick(audit_only(&[])).unwrap();
    let b2 = state(&sim, Service::Audit).backoff.unwrap();
    assert_eq!(b2.attempts, 2);
    sim.now = b2.until;
    sim.tick(audit_only(&[])).unwrap();
    assert_eq!(state(&sim, Service::Audit).backoff, None, "success clears the back-off");
    assert_exactly_once(&sim, Service::Audit);
}

#[test]
fn a_429_stops_every_service_of_the_account_until_retry_after() {
    let mut sim = Sim::new(t(NOW));
    for s in Service::ALL {
        sim.generate(s, 3, t(NOW) - TimeDelta::hours(2), 1);
    }
    sim.scripted.push_back(Fault::OpStatus(429, Some(40)));
    let report = sim.tick(config(&[])).unwrap();
    let failed: Vec<_> = report.services.iter().filter(|s| s.error.is_some()).collect();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].error.as_ref().unwrap().id, 429);
    let deferred: Vec<_> = report.services.iter().filter(|s| s.outcome == Outcome::Deferred).collect();
    assert_eq!(deferred.len(), 2, "the other services wait too");
    assert!(deferred[0].deferred_reason.as_ref().unwrap().contains("rate-limited"));
    let until = deferred[0].deferred_until.clone().unwrap();
    let requests = sim.op_requests.len();
    sim.now += TimeDelta::seconds(30);
    let report = sim.tick(config(&[])).unwrap();
    assert!(report.services.iter().all(|s| s.outcome == Outcome::Deferred));
    assert_eq!(sim.op_requests.len(), requests, "no request while the account backs off");
    assert_eq!(t(&until), t(NOW) + TimeDelta::seconds(40), "Retry-After: 40 from the 429 (shown to the second)");
    sim.now += TimeDelta::seconds(15);
    drain(&mut sim, &config(&[]), 3, TimeDelta::seconds(1));
    for s in Service::ALL {
        assert_exactly_once(&sim, s);
    }
}

#[test]
fn a_429_without_retry_after_backs_off_exponentially() {
    let mut sim = sim_with(Service::Audit, 3);
    sim.scripted.push_back(Fault::OpStatus(429, None));
    sim.tick(audit_only(&[])).unwrap();
    let budget = BudgetRecord::decode(sim.store.get("budget/ACCOUNT1").map(Vec::as_slice));
    let wait = budget.backoff.as_ref().unwrap().until - sim.now;
    assert!(wait >= TimeDelta::milliseconds(900) && wait <= crate::backoff::BASE, "{wait}");
}

#[test]
fn the_budget_defers_services_once_the_minute_is_spent() {
    let mut sim = Sim::new(t(NOW));
    for s in Service::ALL {
        sim.generate(s, 50, t(NOW) - TimeDelta::hours(2), 1);
    }
    // 2 requests a minute: the first service takes both (it has more), the
    // others wait for the budget
    let c = config(&[("max_requests_per_minute", "2"), ("page_size", "10")]);
    let report = sim.tick(c.clone()).unwrap();
    let deferred: Vec<_> = report.services.iter().filter(|s| s.outcome == Outcome::Deferred).collect();
    assert_eq!(deferred.len(), 2);
    for s in deferred {
        assert_eq!(s.deferred_until.as_deref(), Some("2026-03-02T12:01:01Z"));
        assert!(s.deferred_reason.as_ref().unwrap().contains("minute"));
    }
    let first = report.services.iter().find(|s| s.outcome == Outcome::Delivered).unwrap();
    assert_eq!((first.pages, first.has_more, first.deferred_until.as_deref()), (2, true, Some("2026-03-02T12:01:01Z")));
    assert_eq!(sim.op_requests.len(), 2);
    sim.now = t("2026-03-02T12:01:00Z");
    drain(&mut sim, &c, 200, TimeDelta::seconds(20));
    assert!(sim.max_per_minute() <= 2, "{}", sim.max_per_minute());
    for s in Service::ALL {
        assert_exactly_once(&sim, s);
    }
}

#[test]
fn several_pages_per_tick_drain_a_backlog_within_the_deadline() {
    let mut sim = sim_with(Service::Audit, 25);
    let report = sim.tick(audit_only(&[("page_size", "5"), ("max_pages_per_tick", "10")])).unwrap();
    let s = svc(&report, "audit");
    assert_eq!((s.pages, s.sent, s.has_more), (5, 25, false));
    assert_exactly_once(&sim, Service::Audit);

    // a deadline stops starting pages
    let mut sim = sim_with(Service::Audit, 25);
    sim.step = TimeDelta::milliseconds(400);
    let report = sim
        .tick(audit_only(&[("page_size", "5"), ("max_pages_per_tick", "10"), ("tick_deadline_ms", "1000")]))
        .unwrap();
    let s = svc(&report, "audit");
    assert!(s.pages < 5 && s.has_more, "{s:?}");
}

/// The most 1Password event requests within any `window` (both ends
/// included, which only makes it stricter).
fn most_within(sim: &Sim, window: TimeDelta) -> usize {
    let times: Vec<DateTime<Utc>> = sim.op_requests.iter().map(|(t, _, _)| *t).collect();
    let (mut most, mut first) = (0, 0);
    for (last, t) in times.iter().enumerate() {
        while *t - times[first] > window {
            first += 1;
        }
        most = most.max(last - first + 1);
    }
    most
}

#[test]
fn by_default_a_tick_pages_until_caught_up_then_one_request_per_service() {
    // 3 × 400 events in pages of 5: 240 pages, within one tick's deadline
    // and the default budget.
    let mut sim = Sim::new(t(NOW));
    for s in Service::ALL {
        sim.generate(s, 400, t(NOW) - TimeDelta::hours(2), 2);
    }
    let c = config(&[("page_size", "5")]);
    let report = sim.tick(c.clone()).unwrap();
    for s in &report.services {
        assert_eq!((s.outcome, s.pages, s.sent, s.has_more), (Outcome::Delivered, 80, 400, false), "{s:?}");
    }
    assert!(report.elapsed_ms < 30_000, "{}", report.elapsed_ms);
    for s in Service::ALL {
        assert_exactly_once(&sim, s);
    }
    // Caught up: a firing makes one request per service.
    sim.now += TimeDelta::minutes(1);
    let before = sim.op_requests.len();
    let report = sim.tick(c).unwrap();
    assert_eq!(sim.op_requests.len() - before, 3);
    assert!(report.services.iter().all(|s| (s.outcome, s.pages) == (Outcome::Idle, 1)), "{report:?}");
}

#[test]
fn a_tick_starts_no_page_its_deadline_leaves_no_room_for() {
    // Each action takes 300 ms: a page (lease, spend, fetch, delivery,
    // commit) about 3 s; the deadline is 10 s.
    let mut sim = sim_with(Service::Audit, 100);
    sim.step = TimeDelta::milliseconds(300);
    let report = sim.tick(audit_only(&[("page_size", "5"), ("tick_deadline_ms", "10000")])).unwrap();
    let s = svc(&report, "audit");
    assert!(s.has_more && s.pages >= 2, "{s:?}");
    // The last page ended before the deadline (a page's time after it is
    // the release of the lease).
    assert!(report.elapsed_ms <= 10_000 + 1_000, "{}", report.elapsed_ms);
    // A cap still caps.
    let mut sim = sim_with(Service::Audit, 100);
    let report = sim.tick(audit_only(&[("page_size", "5"), ("max_pages_per_tick", "3")])).unwrap();
    assert_eq!(svc(&report, "audit").pages, 3);
}

#[test]
fn a_backlog_drains_at_the_budgets_pace_holding_every_60_and_3600_seconds_across_boundaries() {
    // A small budget, so that both windows bind: 20 a minute, 400 an hour.
    // 3 × 1000 events in pages of 5 are 600 pages (a service caught up
    // asks once a firing too). One tick a minute, as Spin's cron fires,
    // from 30 s before a minute and an hour boundary.
    let start = t("2026-03-02T12:59:30Z");
    let mut sim = Sim::new(start);
    for s in Service::ALL {
        sim.generate(s, 1000, start - TimeDelta::hours(3), 1);
    }
    let c = config(&[("page_size", "5"), ("max_requests_per_minute", "20"), ("max_requests_per_hour", "400")]);
    let ticks = drain(&mut sim, &c, 200, TimeDelta::minutes(1));
    for s in Service::ALL {
        assert_exactly_once(&sim, s);
    }
    assert_eq!(most_within(&sim, TimeDelta::seconds(60)), 20);
    assert_eq!(most_within(&sim, TimeDelta::seconds(3600)), 400);
    // 400 pages in the first 20 minutes, the rest once the first are an
    // hour (and a minute) old, 20 a minute.
    let pages = sim.op_requests.len();
    assert!((600..=615).contains(&pages), "{pages}");
    let ticks_bound = 61 + (pages - 400).div_ceil(20) + 2;
    assert!(ticks <= ticks_bound, "{ticks} ticks, more than {ticks_bound}");
}

#[test]
fn a_tick_waits_for_the_budget_when_it_frees_up_within_the_deadline() {
    let mut sim = sim_with(Service::Audit, 200);
    let c = audit_only(&[("page_size", "5"), ("max_requests_per_minute", "5")]);
    let first = sim.tick(c.clone()).unwrap();
    assert_eq!((svc(&first, "audit").pages, svc(&first, "audit").has_more), (5, true));
    assert_eq!(sim.waited, TimeDelta::zero(), "a minute away: no wait");
    // The next firing, a minute later: the first spends leave the window
    // a second after it.
    sim.now = t(NOW) + TimeDelta::minutes(1);
    let second = sim.tick(c).unwrap();
    let s = svc(&second, "audit");
    assert_eq!((s.outcome, s.pages, s.deferred_until.is_some()), (Outcome::Delivered, 5, true), "{s:?}");
    assert!(sim.waited > TimeDelta::zero() && sim.waited <= TimeDelta::seconds(2), "{}", sim.waited);
    assert_eq!(most_within(&sim, TimeDelta::seconds(60)), 5);
    assert_exactly_once_so_far(&sim, Service::Audit, 50);
}

/// Devo holds the first `n` served events of `service`, each once, in order.
fn assert_exactly_once_so_far(sim: &Sim, service: Service, n: usize) {
    assert_eq!(sim.received(service), &sim.events[&service][..n], "{service}");
}

#[test]
fn a_cursor_that_does_not_move_is_error_604_backs_off_and_does_not_loop() {
    let mut sim = sim_with(Service::Audit, 30);
    let c = audit_only(&[("page_size", "5"), ("max_pages_per_tick", "2")]);
    sim.tick(c.clone()).unwrap();
    // Asked for its cursor, 1Password answers it again, has_more, nothing.
    for (round, items) in [(0, Vec::new()), (1, sim.events[&Service::Audit][5..10].to_vec())] {
        sim.stuck = Some(items);
        sim.now += TimeDelta::minutes(2);
        let before = (sim.op_requests.len(), sim.devo_requests);
        let report = sim.tick(c.clone()).unwrap();
        let s = svc(&report, "audit");
        let e = s.error.as_ref().unwrap();
        assert_eq!((e.id, e.kind), (ONEPASSWORD_STUCK_CURSOR, ErrorKind::PullError), "{e}");
        assert!(e.message.contains("same cursor") && e.message.contains("backs off"), "{}", e.message);
        // One request of the cursor (after a back-off, a page read from
        // the newest event's time first, its new events delivered).
        assert!(sim.op_requests.len() - before.0 <= 2, "round {round}: it looped");
        assert!(sim.devo_requests - before.1 <= 1, "round {round}");
        let received = sim.received(Service::Audit);
        assert_eq!(received, &sim.events[&Service::Audit][..received.len()], "round {round}: a duplicate");
        // (The page read from a time in between was a success: the back-off
        // starts anew.)
        let st = state(&sim, Service::Audit);
        assert!(st.backoff.as_ref().unwrap().pending(sim.now).is_some(), "round {round}");
        assert!(st.checkpoint.as_ref().unwrap().cursor.is_none(), "the cursor is dropped");
        assert_eq!(st.stats.last_error.as_ref().unwrap().id, ONEPASSWORD_STUCK_CURSOR);
        // Within the back-off: nothing asked.
        let before = sim.op_requests.len();
        let report = sim.tick(c.clone()).unwrap();
        assert_eq!(svc(&report, "audit").outcome, Outcome::Deferred);
        assert_eq!(sim.op_requests.len(), before);
    }
    // 1Password moves again: read from the newest delivered event, no duplicate.
    sim.stuck = None;
    sim.now += TimeDelta::minutes(2);
    drain(&mut sim, &c, 20, TimeDelta::minutes(1));
    assert_exactly_once(&sim, Service::Audit);
}

#[test]
fn devo_failures_keep_the_checkpoint_and_the_page_is_sent_again() {
    for (fault, id) in [
        (Fault::DevoStatus(401), DEVO_REJECTED),
        (Fault::DevoStatus(413), DEVO_REJECTED),
        (Fault::DevoStatus(500), DEVO_REJECTED),
        (Fault::DevoStatus(503), DEVO_REJECTED),
        (Fault::DevoStatus(900), DEVO_REJECTED),
        (Fault::DevoTransport, DEVO_UNREACHABLE),
        (Fault::DevoTooLarge, DEVO_TOO_LARGE),
    ] {
        let mut sim = sim_with(Service::Audit, 4);
        sim.scripted.push_back(fault.clone());
        let report = sim.tick(audit_only(&[])).unwrap();
        let e = svc(&report, "audit").error.clone().unwrap();
        assert_eq!(e.id, id, "{fault:?}");
        if let Fault::DevoStatus(status) = fault {
            assert_eq!(e.http_status, Some(status));
        }
        assert!(state(&sim, Service::Audit).checkpoint.is_none());
        sim.now += TimeDelta::minutes(2);
        drain(&mut sim, &audit_only(&[]), 3, TimeDelta::minutes(1));
        assert_exactly_once(&sim, Service::Audit);
    }
}

#[test]
fn batches_accepted_before_a_failure_are_not_sent_again() {
    let mut sim = sim_with(Service::Audit, 10);
    let c = audit_only(&[("devo_max_batch_events", "3")]);
    sim.scripted.push_back(Fault::DevoStatus(503));
    // first batch goes through? The scripted fault hits the first Devo request: make it the third.
    sim.scripted.clear();
    let mut running = sim.start(c.clone());
    let mut devo_seen = 0;
    loop {
        if sim.devo_requests != devo_seen {
            devo_seen = sim.devo_requests;
            if devo_seen == 2 {
                sim.scripted.push_back(Fault::DevoStatus(503));
            }
        }
        match sim.step(&mut running) {
            SimStep::Done(report) => {
                let s = svc(&report, "audit");
                assert_eq!((s.sent, s.outcome), (6, Outcome::Failed));
                break;
            }
            SimStep::Continue => {}
            SimStep::Stopped => unreachable!(),
        }
    }
    let st = state(&sim, Service::Audit);
    assert_eq!(st.partial.as_ref().unwrap().delivered.len(), 6);
    assert!(st.checkpoint.is_none());
    sim.now += TimeDelta::minutes(2);
    let report = sim.tick(c).unwrap();
    assert_eq!(svc(&report, "audit").sent, 4, "only the events Devo had not taken");
    assert_eq!(svc(&report, "audit").total_sent, 10);
    assert_exactly_once(&sim, Service::Audit);
    assert!(state(&sim, Service::Audit).partial.is_none());
}

#[test]
fn a_refused_cursor_rereads_from_the_newest_event_without_duplicates() {
    let mut sim = Sim::new(t(NOW));
    // many events share each timestamp, across page boundaries
    sim.generate(Service::Audit, 12, t(NOW) - TimeDelta::hours(1), 4);
    let c = audit_only(&[("page_size", "5")]);
    sim.tick(c.clone()).unwrap();
    sim.scripted.push_back(Fault::OpStatus(400, None));
    let report = sim.tick(c.clone()).unwrap();
    let e = svc(&report, "audit").error.clone().unwrap();
    assert_eq!(e.id, 400);
    assert!(e.message.contains("reads again"));
    assert_eq!(state(&sim, Service::Audit).checkpoint.unwrap().cursor, None);
    drain(&mut sim, &c, 10, TimeDelta::minutes(1));
    assert_exactly_once(&sim, Service::Audit);
}

#[test]
fn a_changed_start_time_value_resets_once() {
    let mut sim = sim_with(Service::Audit, 4);
    sim.tick(audit_only(&[])).unwrap();
    let start = rfc3339(t(NOW) - TimeDelta::hours(3));
    let changed = audit_only(&[("start_time_value", &start)]);
    let report = sim.tick(changed.clone()).unwrap();
    assert_eq!(svc(&report, "audit").sent, 4, "re-ingested from the new start");
    let cp = state(&sim, Service::Audit).checkpoint.unwrap();
    assert_eq!(cp.start_time_value.as_deref(), Some(start.as_str()));
    assert_eq!(cp.total_sent, 8);
    let report = sim.tick(changed).unwrap();
    assert_eq!(svc(&report, "audit").sent, 0, "unchanged config never resets");
}

#[test]
fn a_start_older_than_retention_is_clamped_with_a_warning() {
    let mut sim = sim_with(Service::Audit, 2);
    let report = sim.tick(audit_only(&[("start_time_value", "2025-01-01T00:00:00Z")])).unwrap();
    assert!(report.warnings.iter().any(|w| w.contains("120 days")), "{:?}", report.warnings);
    let first = &sim.op_requests[0];
    assert_eq!(first.2, 200);
}

/// Events whose timestamps carry 1Password's offsets, oldest first.
fn offset_events() -> Vec<String> {
    [
        "2026-03-02T15:30:00+05:30",     // 10:00:00Z
        "2026-03-02T03:01:30-07:00",     // 10:01:30Z
        "2026-03-02T10:02:00Z",          //
        "2026-03-02T15:32:45.500+05:30", // 10:02:45.5Z
        "2026-03-02T03:03:00.250-07:00", // 10:03:00.25Z
    ]
    .iter()
    .enumerate()
    .map(|(i, ts)| format!(r#"{{"uuid":"OFF{i:04}","timestamp":"{ts}","note":"as sent"}}"#))
    .collect()
}

/// Asserts every time a report shows, in its JSON and its log lines, is UTC.
fn assert_times_in_utc(report: &TickReport) {
    let json = serde_json::to_string(report).unwrap();
    assert!(crate::time::tests::not_utc(&json).is_empty(), "{:?} in {json}", crate::time::tests::not_utc(&json));
    for s in &report.services {
        let line = s.log_line();
        assert!(crate::time::tests::not_utc(&line).is_empty(), "{line}");
    }
}

#[test]
fn reports_show_every_time_in_utc_and_devo_gets_the_events_as_written() {
    let mut sim = Sim::new(t(NOW));
    sim.events.insert(Service::Audit, offset_events());
    // A token that expires in a day, and a start older than 1Password keeps,
    // both given with offsets: each makes a warning with a time in it.
    let exp = t("2026-03-03T17:30:00+05:30").timestamp();
    sim.token = crate::account::tests::jwt(&format!(r#"{{"features":["auditevents"],"exp":{exp}}}"#));
    let c = audit_only(&[
        ("token", &sim.token.clone()),
        ("start_time_value", "2025-06-01T10:00:00+05:30"),
        ("page_size", "2"),
        ("max_pages_per_tick", "10"),
        ("max_requests_per_minute", "1"),
    ]);

    // One page (an event at -07:00 is the newest), then the minute's budget is spent.
    let report = sim.tick(c.clone()).unwrap();
    assert_times_in_utc(&report);
    assert_eq!(report.started_at, "2026-03-02T12:00:00Z");
    let s = svc(&report, "audit");
    assert_eq!((s.outcome, s.sent, s.has_more), (Outcome::Delivered, 2, true));
    assert_eq!(s.checkpoint.as_deref(), Some("2026-03-02T10:01:30Z"));
    assert_eq!(s.lag_seconds, Some(7110), "lag is counted from the event's own instant");
    assert_eq!(s.deferred_until.as_deref(), Some("2026-03-02T12:01:01Z"));
    assert!(s.deferred_reason.as_ref().unwrap().ends_with("more from 2026-03-02T12:01:01Z"), "{s:?}");
    let line = s.log_line();
    assert!(line.contains("checkpoint=2026-03-02T10:01:30Z"), "{line}");
    assert!(line.contains("deferred_until=2026-03-02T12:01:01Z"), "{line}");
    assert_eq!(
        report.warnings,
        [
            "the 1Password token expires at 2026-03-03T12:00:00Z; issue a new one before then",
            "start_time_value 2025-06-01T04:30:00Z is older than the 120 days 1Password keeps; \
             collection starts at the oldest available events, from 2025-11-02T12:05:00Z"
        ]
    );
    // The stored checkpoint keeps the event's own text: it is what the next
    // page is read from after a refused cursor.
    let stored = state(&sim, Service::Audit);
    assert_eq!(stored.checkpoint.as_ref().unwrap().newest_event.as_deref(), Some("2026-03-02T03:01:30-07:00"));
    // Its own times (lease, statistics) are UTC, fractions kept.
    let record = String::from_utf8(stored.encode()).unwrap();
    let offsets: Vec<String> =
        crate::time::tests::not_utc(&record).into_iter().filter(|bad| bad[19..].contains(['+', '-'])).collect();
    assert_eq!(offsets, ["2026-03-02T03:01:30-07:00"], "{record}");

    // A refused cursor: the next page is read again from the newest event's time.
    sim.now = t("2026-03-02T12:01:01Z");
    sim.scripted.push_back(Fault::OpStatus(400, None));
    let report = sim.tick(c.clone()).unwrap();
    assert_times_in_utc(&report);
    assert_eq!(svc(&report, "audit").outcome, Outcome::Failed);
    assert_eq!(svc(&report, "audit").checkpoint.as_deref(), Some("2026-03-02T10:01:30Z"));

    sim.now = t("2026-03-02T12:02:02Z");
    drain(&mut sim, &c, 10, TimeDelta::minutes(1));
    let report = sim.tick(c).unwrap();
    assert_times_in_utc(&report);
    // The newest is 10:03:00.25 at -07:00: shown in UTC, whole seconds.
    assert_eq!(svc(&report, "audit").checkpoint.as_deref(), Some("2026-03-02T10:03:00Z"));
    let stored = state(&sim, Service::Audit).checkpoint.unwrap();
    assert_eq!(stored.newest_event.as_deref(), Some("2026-03-02T03:03:00.250-07:00"));

    // Devo got every event once, byte for byte as 1Password served it.
    assert_exactly_once(&sim, Service::Audit);
    let received = sim.received(Service::Audit);
    for ts in ["2026-03-02T15:30:00+05:30", "2026-03-02T03:01:30-07:00", "2026-03-02T03:03:00.250-07:00"] {
        assert_eq!(received.iter().filter(|l| l.contains(&format!(r#""timestamp":"{ts}""#))).count(), 1, "{ts}");
    }
}

#[test]
fn a_lease_held_by_another_tick_defers_the_service() {
    let mut sim = sim_with(Service::Audit, 3);
    let mut st = ServiceState::new(sim.now);
    st.lease = Some(Lease { holder: "someone-else".into(), expires: sim.now + TimeDelta::seconds(90) });
    sim.store.insert(ServiceState::key(Service::Audit), st.encode());
    let report = sim.tick(audit_only(&[])).unwrap();
    let s = svc(&report, "audit");
    assert_eq!(s.outcome, Outcome::Deferred);
    assert!(s.deferred_reason.as_ref().unwrap().contains("another instance"));
    assert!(sim.op_requests.is_empty());
    // an expired lease is taken over
    sim.now += TimeDelta::seconds(91);
    let report = sim.tick(audit_only(&[])).unwrap();
    assert_eq!(svc(&report, "audit").outcome, Outcome::Delivered);
    assert_exactly_once(&sim, Service::Audit);
}

#[test]
fn interleaved_ticks_never_collect_the_same_service_twice() {
    let mut sim = Sim::new(t(NOW));
    for s in Service::ALL {
        sim.generate(s, 40, t(NOW) - TimeDelta::hours(2), 2);
    }
    let c = config(&[("page_size", "7")]);
    for _ in 0..20 {
        let mut a = sim.start(c.clone());
        let mut b = sim.start(c.clone());
        let (mut a_done, mut b_done) = (false, false);
        while !(a_done && b_done) {
            if !a_done {
                a_done = matches!(sim.step(&mut a), SimStep::Done(_));
            }
            if !b_done {
                b_done = matches!(sim.step(&mut b), SimStep::Done(_));
            }
        }
        sim.now += TimeDelta::seconds(30);
    }
    for s in Service::ALL {
        assert_exactly_once(&sim, s);
    }
}

#[test]
fn store_failures_send_nothing_or_say_a_duplicate_follows() {
    // the gate read fails: nothing is fetched
    let mut sim = sim_with(Service::Audit, 3);
    sim.tick(audit_only(&[])).unwrap(); // cache the account
    sim.generate(Service::Audit, 1, t(NOW), 1);
    sim.scripted.push_back(Fault::KvRead);
    sim.scripted.push_back(Fault::KvRead);
    let before = sim.op_requests.len();
    let report = sim.tick(audit_only(&[])).unwrap();
    assert_eq!(svc(&report, "audit").error.as_ref().unwrap().id, PERSISTENCE);
    assert_eq!(sim.op_requests.len(), before);

    // the checkpoint write after delivery fails
    let mut sim = sim_with(Service::Audit, 3);
    let mut running = sim.start(audit_only(&[]));
    loop {
        if sim.devo_requests == 1 && sim.scripted.is_empty() && sim.received(Service::Audit).len() == 3 {
            sim.scripted.push_back(Fault::KvWrite);
        }
        if let SimStep::Done(report) = sim.step(&mut running) {
            let e = svc(&report, "audit").error.clone().unwrap();
            assert_eq!(e.id, PERSISTENCE);
            assert!(e.message.contains("duplicate"), "{}", e.message);
            break;
        }
    }
}

#[test]
fn a_corrupt_state_record_stops_that_service_without_fetching() {
    let mut sim = sim_with(Service::Audit, 3);
    sim.store.insert(ServiceState::key(Service::Audit), b"garbage".to_vec());
    let report = sim.tick(audit_only(&[])).unwrap();
    assert_eq!(svc(&report, "audit").error.as_ref().unwrap().id, CHECKPOINT_UNREADABLE);
    assert!(sim.op_requests.is_empty());
}

#[test]
fn a_stop_between_devo_and_the_checkpoint_repeats_at_most_that_page() {
    let mut sim = sim_with(Service::Audit, 6);
    let c = audit_only(&[("page_size", "3")]);
    sim.scripted.push_back(Fault::DevoAcceptThenStop);
    assert!(sim.tick(c.clone()).is_none());
    // the lease left behind expires; then collection resumes
    sim.now += TimeDelta::minutes(5);
    drain(&mut sim, &c, 5, TimeDelta::minutes(1));
    let got = sim.received(Service::Audit);
    assert_eq!(got.len(), 9, "one page of 3 sent twice");
    assert_eq!(&got[3..], sim.events[&Service::Audit].as_slice());
}

#[test]
fn a_token_without_a_scope_fails_that_service_alone() {
    let mut sim = Sim::new(t(NOW));
    for s in Service::ALL {
        sim.generate(s, 2, t(NOW) - TimeDelta::hours(2), 1);
    }
    sim.features = vec!["auditevents".into(), "signinattempts".into()];
    let report = sim.tick(config(&[])).unwrap();
    let e = svc(&report, "item_usage").error.clone().unwrap();
    assert_eq!((e.id, e.kind), (SCOPE_MISSING, ErrorKind::TokenScopeError));
    assert!(e.message.contains("itemusages"));
    assert!(sim.op_requests.iter().all(|(_, p, _)| !p.contains("itemusages")));
    assert_exactly_once(&sim, Service::Audit);
    assert_exactly_once(&sim, Service::SignInAttempts);
}

#[test]
fn a_refused_token_fails_every_service_without_fetching() {
    let mut sim = sim_with(Service::Audit, 2);
    sim.token = "another-token".into();
    let report = sim.tick(config(&[])).unwrap();
    assert!(report.services.iter().all(|s| s.error.as_ref().is_some_and(|e| e.id == 401)));
    assert!(sim.op_requests.is_empty());
    assert!(!format!("{report:?}").contains("op-secret-token"));
    // Each service's record holds the error, for `status` to show.
    assert!(!report.services.is_empty());
    for s in &report.services {
        let service: Service = s.service.parse().unwrap();
        let state = state(&sim, service);
        let e = state.stats.last_error.expect("the last error");
        assert_eq!(e.id, 401, "{service}");
        assert!(state.lease.is_none() && state.checkpoint.is_none(), "{service}");
    }
}

#[test]
fn soak_every_event_arrives_once_under_random_faults_within_the_limits() {
    soak_random_faults(1);
}

#[test]
fn soak_with_lanes_every_event_arrives_once_under_random_faults_within_the_limits() {
    // The three services' requests in flight together, answered in a
    // random order.
    soak_random_faults(3);
}

fn soak_random_faults(lanes: usize) {
    let mut sim = Sim::new(t(NOW));
    sim.lanes = lanes;
    for s in Service::ALL {
        sim.generate(s, 1500, t(NOW) - TimeDelta::hours(1), 3);
    }
    sim.op_limit_per_minute = Some(20);
    sim.random = Some((
        fastrand::Rng::with_seed(0x5eed),
        0.25,
        vec![
            Fault::OpStatus(401, None),
            Fault::OpStatus(400, None),
            Fault::OpStatus(429, Some(7)),
            Fault::OpStatus(429, None),
            Fault::OpStatus(500, None),
            Fault::OpStatus(502, None),
            Fault::OpStatus(503, None),
            Fault::OpTransport,
            Fault::OpNotJson,
            Fault::OpTruncated,
            Fault::DevoStatus(401),
            Fault::DevoStatus(413),
            Fault::DevoStatus(500),
            Fault::DevoStatus(503),
            Fault::DevoTransport,
            Fault::DevoAcceptThenStop,
            Fault::KvRead,
            Fault::KvWrite,
        ],
    ));
    let c = config(&[
        ("page_size", "25"),
        ("max_requests_per_minute", "20"),
        ("devo_max_batch_events", "10"),
        ("max_pages_per_tick", "2"),
        // Leases as long as before renewals (150 s), so that a stopped
        // tick defers its service for the next 15 ticks as it did when the
        // bounds below were set: with 15 s leases the service is worked
        // again a tick later, under the same 25% of faults, and more
        // events come back unconfirmed (not lost: counted, and resent).
        ("lease_ttl_ms", "150000"),
    ]);
    let mut ticks = 0;
    // events whose recording failed after Devo took them: resent by design
    let mut unconfirmed = 0;
    while ticks < 1000 {
        if let Some(report) = sim.tick(c.clone()) {
            unconfirmed += report.services.iter().map(|s| s.unconfirmed as usize).sum::<usize>();
        }
        ticks += 1;
        sim.now += TimeDelta::seconds(10);
    }
    // then without faults until caught up
    sim.random = None;
    sim.now += TimeDelta::minutes(5);
    let tail = drain(&mut sim, &c, 500, TimeDelta::seconds(10));
    let faulted = sim.faults_injected as f64 / sim.requests_seen as f64;
    assert!(faulted >= 0.2, "only {:.0}% of requests faulted", faulted * 100.0);
    assert!(ticks + tail >= 1000);
    for s in Service::ALL {
        let served = &sim.events[&s];
        let got = sim.received(s);
        let mut counts: HashMap<&str, usize> = HashMap::new();
        for line in got {
            *counts.entry(line.as_str()).or_default() += 1;
        }
        assert!(served.iter().all(|e| counts.contains_key(e.as_str())), "{s}: an event is missing");
        let duplicates: usize = counts.values().map(|c| c - 1).sum();
        // Only a stop (or a failed state write) between Devo's 2xx and the
        // checkpoint write may duplicate: at most one batch per stop, and
        // what the reports counted as unconfirmed.
        assert!(
            duplicates <= sim.stops * 10 + unconfirmed,
            "{s}: {duplicates} duplicates for {} stops and {unconfirmed} unconfirmed",
            sim.stops
        );
    }
    assert!(sim.stops > 0 && unconfirmed < 200, "stops {} unconfirmed {unconfirmed}", sim.stops);
    assert!(sim.max_per_minute() <= 20, "1Password saw {} requests in a minute", sim.max_per_minute());
    assert_eq!(sim.rate_limited, 0, "the budget kept 1Password's own limit from ever answering 429");
}

#[test]
fn a_lease_taken_over_mid_delivery_stops_this_tick_without_clobbering() {
    let mut sim = sim_with(Service::Audit, 9);
    let c = audit_only(&[("devo_max_batch_events", "3")]);
    let mut running = sim.start(c.clone());
    // run until the first batch was accepted, then let another holder take the lease
    loop {
        if sim.devo_requests == 1 {
            take_over(&mut sim, Service::Audit);
        }
        if let SimStep::Done(report) = sim.step(&mut running) {
            let e = svc(&report, "audit").error.clone().unwrap();
            assert_eq!(e.id, LEASE_LOST, "{e}");
            break;
        }
    }
    let st = state(&sim, Service::Audit);
    assert_eq!(st.lease.unwrap().holder, "other", "the other holder's lease is left alone");
    assert!(st.checkpoint.is_none());
}

// Stores whose answers to a compare-and-swap are wrong, as Spin's Redis store's
// are: a swap that lost the race answers ok and writes nothing, or every swap
// answers "failed", also those that wrote. The tick reads every write back and
// decides from the record whether it landed.

/// Runs ticks together, one action each in turn, to their ends: `None` for
/// one an injected stop ended.
fn run_together(sim: &mut Sim, mut ticks: Vec<crate::tests::sim::Running>) -> Vec<Option<TickReport>> {
    let mut reports: Vec<Option<TickReport>> = ticks.iter().map(|_| None).collect();
    let mut live: Vec<usize> = (0..ticks.len()).collect();
    while !live.is_empty() {
        live.retain(|&i| match sim.step(&mut ticks[i]) {
            SimStep::Continue => true,
            SimStep::Done(report) => {
                reports[i] = Some(report);
                false
            }
            SimStep::Stopped => false,
        });
    }
    reports
}

/// Steps a tick until it has read the audit record after its
/// `devo_requests`-th Devo batch: its next action is that write's swap.
fn step_to_swap_after_batch(sim: &mut Sim, running: &mut crate::tests::sim::Running, devo_requests: usize) {
    while sim.devo_requests < devo_requests {
        assert!(matches!(sim.step(running), SimStep::Continue));
    }
    assert!(matches!(sim.step(running), SimStep::Continue));
    assert_eq!(running.watching(), Some(ServiceState::key(Service::Audit).as_str()));
}

/// Another instance takes the service's lease (the tick's own expired).
fn take_over(sim: &mut Sim, service: Service) {
    let mut st = state(sim, service);
    st.lease = Some(Lease { holder: "other".into(), expires: sim.now + TimeDelta::minutes(5) });
    sim.store.insert(ServiceState::key(service), st.encode());
}

#[test]
fn on_a_lying_store_of_two_racing_ticks_one_collects_and_the_other_is_deferred_lease_lost() {
    let mut sim = sim_with(Service::Audit, 30);
    sim.swap_answers = SwapAnswers::OkWhenLost;
    let c = audit_only(&[("page_size", "7"), ("max_pages_per_tick", "1")]);
    for round in 0..8 {
        let (lies, fetches) = (sim.lies, sim.op_requests.len());
        let ticks = vec![sim.start(c.clone()), sim.start(c.clone())];
        let reports: Vec<TickReport> = run_together(&mut sim, ticks).into_iter().map(Option::unwrap).collect();
        // In lockstep, both read the free record before either wrote its lease:
        // one swap wrote, the other answered ok without writing.
        assert_eq!(sim.lies, lies + 1, "round {round}");
        assert_eq!(sim.op_requests.len(), fetches + 1, "round {round}: exactly one tick fetched");
        let (collected, deferred): (Vec<_>, Vec<_>) =
            reports.iter().map(|r| svc(r, "audit")).partition(|s| s.pages > 0);
        assert_eq!((collected.len(), deferred.len()), (1, 1), "round {round}");
        let d = deferred[0];
        assert_eq!((d.outcome, d.fetched, d.sent, &d.error), (Outcome::Deferred, 0, 0, &None), "round {round}");
        let reason = d.deferred_reason.as_deref().unwrap();
        assert!(reason.contains("lease lost") && reason.contains("another instance"), "{reason}");
        assert!(t(d.deferred_until.as_deref().unwrap()) > sim.now, "until the other's lease expires");
        sim.now += TimeDelta::seconds(30);
    }
    assert_exactly_once(&sim, Service::Audit);
    assert_eq!(sim.unleased_fetches, 0);
}

#[test]
fn on_a_lying_store_a_commit_that_did_not_land_is_lease_lost_and_counted_unconfirmed() {
    let mut sim = sim_with(Service::Audit, 3);
    sim.swap_answers = SwapAnswers::OkWhenLost;
    let c = audit_only(&[]);
    let mut running = sim.start(c.clone());
    // Devo took the page; between the commit's read and its swap, another
    // instance takes the lease over: the swap answers ok and writes nothing.
    step_to_swap_after_batch(&mut sim, &mut running, 1);
    take_over(&mut sim, Service::Audit);
    let report = sim.finish(&mut running).expect("no stop was injected");
    assert_eq!(sim.lies, 1);
    let s = svc(&report, "audit");
    assert_eq!((s.outcome, s.error.as_ref().map(|e| e.id)), (Outcome::Failed, Some(LEASE_LOST)), "{s:?}");
    assert_eq!((s.sent, s.unconfirmed), (3, 3), "delivered, and not recorded: the other instance sends it again");
    assert_eq!((s.checkpoint.as_deref(), s.total_sent), (None, 0), "the report shows the stored checkpoint");
    let st = state(&sim, Service::Audit);
    assert_eq!((st.lease.unwrap().holder.as_str(), st.checkpoint), ("other", None), "the other's record is intact");
    // The other instance stops; once its lease expires, the page is sent
    // again: the duplicates are exactly the unconfirmed events.
    sim.now += TimeDelta::minutes(6);
    drain(&mut sim, &c, 3, TimeDelta::minutes(1));
    let got = sim.received(Service::Audit);
    assert_eq!(got.len(), 3 + 3);
    assert_eq!(&got[3..], sim.events[&Service::Audit].as_slice());
}

#[test]
fn on_a_lying_store_progress_that_did_not_land_is_counted_unconfirmed() {
    let mut sim = sim_with(Service::Audit, 9);
    sim.swap_answers = SwapAnswers::OkWhenLost;
    let c = audit_only(&[("devo_max_batch_events", "3")]);
    let mut running = sim.start(c.clone());
    // The first batch is taken; the record of it is not written (another
    // instance took the lease over), though the swap answers ok.
    step_to_swap_after_batch(&mut sim, &mut running, 1);
    take_over(&mut sim, Service::Audit);
    let report = sim.finish(&mut running).expect("no stop was injected");
    assert_eq!(sim.lies, 1);
    let s = svc(&report, "audit");
    // The progress write is read back at once: the second batch is not sent.
    assert_eq!(s.error.as_ref().map(|e| e.id), Some(LEASE_LOST), "noticed at the read-back: {s:?}");
    assert_eq!((s.sent, s.unconfirmed), (3, 3), "the first batch's delivery is not in the store");
    assert!(state(&sim, Service::Audit).partial.is_none());
    sim.now += TimeDelta::minutes(6);
    drain(&mut sim, &c, 3, TimeDelta::minutes(1));
    let got = sim.received(Service::Audit);
    assert_eq!(got.len(), 9 + 3, "the duplicates are exactly the unconfirmed events");
    assert_eq!(&got[3..], sim.events[&Service::Audit].as_slice());
}

#[test]
fn soak_two_instances_on_a_lying_store_collect_every_event_once_except_unconfirmed() {
    soak_lying_store(1, SwapAnswers::OkWhenLost);
}

#[test]
fn soak_with_lanes_two_instances_on_a_lying_store_collect_every_event_once_except_unconfirmed() {
    soak_lying_store(3, SwapAnswers::OkWhenLost);
}

#[test]
fn soak_two_instances_on_spins_redis_store_collect_every_event_once_except_unconfirmed() {
    soak_lying_store(1, SwapAnswers::AlwaysChanged);
}

#[test]
fn soak_with_lanes_two_instances_whose_swap_answers_are_random_collect_every_event_once_except_unconfirmed() {
    soak_lying_store(3, SwapAnswers::Random(fastrand::Rng::with_seed(0xa5)));
}

fn soak_lying_store(lanes: usize, answers: SwapAnswers) {
    let mut sim = Sim::new(t(NOW));
    sim.lanes = lanes;
    for s in Service::ALL {
        sim.generate(s, 60, t(NOW) - TimeDelta::hours(1), 3);
    }
    sim.swap_answers = answers;
    sim.random = Some((
        fastrand::Rng::with_seed(0x11e5),
        0.1,
        vec![
            Fault::OpStatus(400, None),
            Fault::OpStatus(429, Some(7)),
            Fault::OpStatus(500, None),
            Fault::OpTransport,
            Fault::OpTruncated,
            Fault::DevoStatus(503),
            Fault::DevoTransport,
            Fault::KvRead,
            Fault::KvWrite,
        ],
    ));
    // No stops (the other soak has them): every duplicate must be one a
    // report counted as unconfirmed. Leases last 3 s; a stall of 4 s lets
    // the other instance take over in the middle of a tick.
    let c = config(&[
        ("page_size", "20"),
        ("devo_max_batch_events", "7"),
        ("max_pages_per_tick", "3"),
        ("tick_deadline_ms", "1000"),
        ("request_timeout_ms", "100"),
        ("lease_ttl_ms", "3000"),
    ]);
    let mut schedule = fastrand::Rng::with_seed(7);
    let mut unconfirmed: HashMap<String, usize> = HashMap::new();
    let (mut deferred_lease_lost, mut lease_lost) = (0, 0);
    // Per service, the stored checkpoint's newest event and count (never
    // back), and the record they were read from.
    let mut seen: HashMap<Service, (Option<DateTime<Utc>>, u64)> = HashMap::new();
    let mut records: HashMap<Service, Vec<u8>> = HashMap::new();
    for _ in 0..200 {
        // New events keep coming, so that most ticks have a page to deliver.
        for s in Service::ALL {
            sim.generate(s, 2, sim.now, 3);
        }
        let mut ticks = [sim.start(c.clone()), sim.start(c.clone())];
        let mut live = vec![0, 1];
        while !live.is_empty() {
            let i = live[schedule.usize(..live.len())];
            if schedule.f64() < 0.01 {
                sim.now += TimeDelta::seconds(4);
            }
            match sim.step(&mut ticks[i]) {
                SimStep::Continue => {}
                SimStep::Done(report) => {
                    live.retain(|&j| j != i);
                    for s in &report.services {
                        *unconfirmed.entry(s.service.clone()).or_default() += s.unconfirmed as usize;
                        deferred_lease_lost +=
                            s.deferred_reason.as_ref().is_some_and(|r| r.contains("lease lost")) as usize;
                        lease_lost += s.error.as_ref().is_some_and(|e| e.id == LEASE_LOST) as usize;
                    }
                }
                SimStep::Stopped => unreachable!("no stops are injected"),
            }
            for s in Service::ALL {
                let Some(record) = sim.store.get(&ServiceState::key(s)) else { continue };
                if records.get(&s) == Some(record) {
                    continue;
                }
                records.insert(s, record.clone());
                let Some(cp) = state(&sim, s).checkpoint else { continue };
                let now = (cp.newest_event.as_deref().map(t), cp.total_sent);
                let before = seen.insert(s, now).unwrap_or_default();
                assert!(now.0 >= before.0 && now.1 >= before.1, "{s}: checkpoint went back from {before:?} to {now:?}");
            }
        }
        sim.now += TimeDelta::seconds(10);
    }
    sim.random = None;
    sim.now += TimeDelta::minutes(5);
    drain(&mut sim, &c, 500, TimeDelta::seconds(10));
    eprintln!(
        "lies {} unconfirmed {unconfirmed:?} deferred_lease_lost {deferred_lease_lost} lease_lost {lease_lost}",
        sim.lies
    );
    assert_eq!(sim.unleased_fetches, 0, "no tick fetched under a lease the store did not give it");
    for s in Service::ALL {
        let mut counts: HashMap<&str, usize> = HashMap::new();
        for line in sim.received(s) {
            *counts.entry(line.as_str()).or_default() += 1;
        }
        assert!(sim.events[&s].iter().all(|e| counts.contains_key(e.as_str())), "{s}: an event is missing");
        let duplicates: usize = counts.values().map(|c| c - 1).sum();
        let counted = unconfirmed.get(s.name()).copied().unwrap_or_default();
        assert!(duplicates <= counted, "{s}: {duplicates} duplicates, {counted} counted as unconfirmed");
    }
    assert!(sim.lies > 30 && deferred_lease_lost > 10 && lease_lost > 0, "the races happened");
    assert_budget_counted_every_request(&sim);
}

/// The account's budget record counts at least every page request
/// 1Password saw in its hour: no spend was lost, so no instance could spend
/// past the ceiling.
fn assert_budget_counted_every_request(sim: &Sim) {
    let budget = BudgetRecord::decode(sim.store.get("budget/ACCOUNT1").map(Vec::as_slice));
    let in_hour = sim.op_requests.iter().filter(|(t, _, _)| t.timestamp().div_euclid(3600) == budget.hour).count();
    assert!(
        budget.hour_count as usize >= in_hour,
        "the budget counted {} requests of its hour, 1Password saw {in_hour}",
        budget.hour_count
    );
    assert!(sim.store.keys().all(|k| !k.starts_with("budget/token-")), "the budget was split: {:?}", sim.store.keys());
}

#[test]
fn on_spins_redis_store_a_swap_that_wrote_though_it_answered_failed_counts_as_written() {
    let mut sim = sim_with(Service::Audit, 9);
    sim.swap_answers = SwapAnswers::AlwaysChanged;
    let c = audit_only(&[("devo_max_batch_events", "3"), ("page_size", "5"), ("max_pages_per_tick", "2")]);
    let report = sim.tick(c.clone()).unwrap();
    let s = svc(&report, "audit");
    assert!(report.ok(), "{report:?}");
    assert_eq!((s.outcome, s.sent, s.unconfirmed, s.pages), (Outcome::Delivered, 9, 0, 2), "{s:?}");
    assert_exactly_once(&sim, Service::Audit);
    // Every swap wrote and answered "failed": lease, budget twice, progress
    // after each batch but a page's last, two commits (the last releases).
    assert_eq!((sim.swaps, sim.lies, sim.failed_but_written), (7, 7, 7));
    let stored = state(&sim, Service::Audit);
    assert_eq!((stored.lease, stored.checkpoint.map(|c| c.total_sent)), (None, Some(9)), "released, checkpointed");
    // Exactly one request of the budget per page, not one per try.
    let budget = BudgetRecord::decode(sim.store.get("budget/ACCOUNT1").map(Vec::as_slice));
    assert_eq!((budget.minute_count, sim.op_requests.len()), (2, 2));
    // Each write carries its own writer id.
    let (lease_writer, budget_writer) = (stored.writer.unwrap(), budget.writer.unwrap());
    assert_ne!(lease_writer, budget_writer);
    assert_eq!(lease_writer.split('-').next(), budget_writer.split('-').next(), "the same tick's id");
    // The next tick too: nothing new, no error.
    sim.now += TimeDelta::minutes(1);
    assert!(sim.tick(c).unwrap().ok());
}

#[test]
fn three_instances_at_once_on_spins_redis_store_collect_every_event_exactly_once_within_the_budget() {
    for lanes in [1, 3] {
        let mut sim = Sim::new(t(NOW));
        sim.lanes = lanes;
        for s in Service::ALL {
            sim.generate(s, 200, t(NOW) - TimeDelta::hours(1), 3);
        }
        sim.swap_answers = SwapAnswers::AlwaysChanged;
        // 1Password's own limit is the budget's ceiling: a spend the budget
        // lost would show as a 429.
        sim.op_limit_per_minute = Some(12);
        let c = config(&[("page_size", "10"), ("max_requests_per_minute", "12"), ("devo_max_batch_events", "4")]);
        let mut schedule = fastrand::Rng::with_seed(lanes as u64);
        let (mut deferred, mut failures) = (0, Vec::new());
        for _ in 0..60 {
            let mut ticks = [sim.start(c.clone()), sim.start(c.clone()), sim.start(c.clone())];
            let mut live = vec![0, 1, 2];
            while !live.is_empty() {
                let i = live[schedule.usize(..live.len())];
                match sim.step(&mut ticks[i]) {
                    SimStep::Continue => {}
                    SimStep::Done(report) => {
                        live.retain(|&j| j != i);
                        deferred += report.services.iter().filter(|s| s.outcome == Outcome::Deferred).count();
                        failures.extend(report.services.iter().filter_map(|s| s.error.clone()));
                    }
                    SimStep::Stopped => unreachable!("no stops are injected"),
                }
            }
            sim.now += TimeDelta::seconds(20);
        }
        assert!(failures.is_empty(), "lanes {lanes}: {failures:?}");
        for s in Service::ALL {
            assert_exactly_once(&sim, s);
        }
        assert!(deferred > 0, "lanes {lanes}: the instances met");
        assert!(sim.failed_but_written > 100, "lanes {lanes}: {} swaps", sim.failed_but_written);
        assert_eq!(sim.rate_limited, 0, "lanes {lanes}: 1Password answered 429");
        assert!(sim.max_per_minute() <= 12, "lanes {lanes}: {} requests in a minute", sim.max_per_minute());
        assert_eq!(sim.unleased_fetches, 0, "lanes {lanes}");
        assert_budget_counted_every_request(&sim);
    }
}

#[test]
fn a_store_whose_swaps_never_land_fails_with_200_naming_its_answer_after_bounded_tries() {
    for (answers, named) in [
        (SwapAnswers::AlwaysChanged, "the store's last answer was \"the value changed\" (compare-and-swap failed)"),
        (SwapAnswers::OkWhenLost, "the store's last answer was ok"),
    ] {
        let mut sim = sim_with(Service::Audit, 3);
        sim.swaps_write = false;
        sim.swap_answers = answers;
        let report = sim.tick(audit_only(&[])).unwrap();
        let e = svc(&report, "audit").error.clone().unwrap();
        assert_eq!(e.id, PERSISTENCE, "{e}");
        assert!(e.message.contains(named) && e.message.contains("none of 20 writes"), "{}", e.message);
        assert_eq!(sim.swaps, 20, "bounded");
        assert!(sim.op_requests.is_empty() && sim.devo_requests == 0);
    }
}

#[test]
fn after_a_failed_introspection_the_budget_is_never_counted_under_a_second_key() {
    let mut sim = sim_with(Service::Audit, 4);
    let c = audit_only(&[("page_size", "2"), ("max_pages_per_tick", "10")]);
    let budget_keys = |sim: &Sim| sim.store.keys().filter(|k| k.starts_with("budget/")).cloned().collect::<Vec<_>>();
    // No answer cached yet: the account is not known, nothing is fetched,
    // no budget is spent under the token's own key.
    sim.scripted.push_back(Fault::IntrospectionStatus(503));
    let report = sim.tick(c.clone()).unwrap();
    let e = svc(&report, "audit").error.clone().unwrap();
    assert_eq!(e.id, 503, "{e}");
    assert!(e.message.contains("the account whose request budget a page spends is not known"), "{}", e.message);
    assert!(sim.op_requests.is_empty());
    assert_eq!(budget_keys(&sim), Vec::<String>::new());
    // Once the introspection answers, the account's own key.
    sim.now += TimeDelta::minutes(1);
    assert!(sim.tick(c.clone()).unwrap().ok());
    assert_eq!(budget_keys(&sim), ["budget/ACCOUNT1"]);
    // With a stale answer cached, a failed introspection uses it.
    sim.now += TimeDelta::hours(2);
    sim.generate(Service::Audit, 2, sim.now, 1);
    sim.scripted.push_back(Fault::IntrospectionStatus(500));
    let report = sim.tick(c.clone()).unwrap();
    assert!(report.ok() && svc(&report, "audit").sent == 2, "{report:?}");
    assert!(report.warnings.iter().any(|w| w.contains("using the answer cached at")), "{:?}", report.warnings);
    // An answer without an account uuid keeps the one known.
    sim.account = None;
    sim.now += TimeDelta::hours(2);
    sim.generate(Service::Audit, 2, sim.now, 1);
    let report = sim.tick(c.clone()).unwrap();
    assert!(report.ok() && svc(&report, "audit").sent == 2, "{report:?}");
    assert_eq!(budget_keys(&sim), ["budget/ACCOUNT1"]);
    let budget = BudgetRecord::decode(sim.store.get("budget/ACCOUNT1").map(Vec::as_slice));
    let in_hour = sim.op_requests.iter().filter(|(t, _, _)| t.timestamp().div_euclid(3600) == budget.hour).count();
    assert_eq!(budget.hour_count as usize, in_hour, "every request of the hour counted under the account");
    assert_exactly_once(&sim, Service::Audit);
}

// Hostile data cannot wedge a service: a time far ahead of the clock, in an
// event or a stored record, is not obeyed (it would stall the service until
// then), and the report says so.

const YEAR_2300: &str = "2300-01-01T00:00:00Z";

#[test]
fn a_future_dated_event_is_delivered_but_moves_neither_the_checkpoint_nor_the_reread() {
    let mut sim = sim_with(Service::Audit, 4);
    let future = format!(r#"{{"uuid":"FUTURE0001","timestamp":"{YEAR_2300}","note":"x"}}"#);
    sim.events.get_mut(&Service::Audit).unwrap().insert(2, future.clone());
    let newest_real = t(NOW) - TimeDelta::hours(1) - TimeDelta::seconds(1);
    let c = audit_only(&[]);

    let report = sim.tick(c.clone()).unwrap();
    let s = svc(&report, "audit");
    assert_eq!((s.outcome, s.sent), (Outcome::Delivered, 5));
    assert!(sim.received(Service::Audit).contains(&future), "delivered unchanged");
    let cp = state(&sim, Service::Audit).checkpoint.unwrap();
    assert_eq!(cp.newest_event.as_deref(), Some(rfc3339(newest_real).as_str()), "not the year 2300");
    assert_eq!(s.checkpoint.as_deref(), Some(rfc3339(newest_real).as_str()));
    assert_eq!(s.lag_seconds, Some(3601), "the lag is not hidden");
    let warning = report.warnings.iter().find(|w| w.contains("of audit")).expect("a warning");
    assert!(warning.starts_with("1 event(s) of audit are dated more than 5 minutes after"), "{warning}");
    assert!(!warning.contains("FUTURE0001") && !warning.contains("2300"), "the event is not quoted: {warning}");

    // The cursor is refused: the page is read again from the newest real
    // event (from the year 2300 nothing would ever come).
    sim.generate(Service::Audit, 2, t(NOW), 1);
    sim.now += TimeDelta::minutes(1);
    sim.scripted.push_back(Fault::OpStatus(400, None));
    sim.tick(c.clone()).unwrap();
    sim.now += TimeDelta::minutes(1);
    let report = sim.tick(c).unwrap();
    assert_eq!(sim.op_starts.last().unwrap(), &rfc3339(newest_real));
    assert_eq!(svc(&report, "audit").sent, 2);
    assert_exactly_once(&sim, Service::Audit);
}

#[test]
fn a_stored_newest_event_or_first_start_in_the_future_is_not_read_from() {
    // A record whose newest event is in the year 2300 (written before events
    // were checked, or corrupt) and whose cursor was refused.
    let mut sim = sim_with(Service::Audit, 3);
    let mut st = ServiceState::new(t(NOW));
    st.initial_start = Some(t(NOW) - TimeDelta::hours(2));
    st.checkpoint = Some(Checkpoint { newest_event: Some(YEAR_2300.into()), ..Checkpoint::default() });
    sim.store.insert(ServiceState::key(Service::Audit), st.encode());
    let report = sim.tick(audit_only(&[])).unwrap();
    assert_eq!(sim.op_starts, [rfc3339(t(NOW) - TimeDelta::hours(2))], "the configured start, not 2300");
    assert_eq!(svc(&report, "audit").sent, 3);
    let newest = state(&sim, Service::Audit).checkpoint.unwrap().newest_event.unwrap();
    assert!(t(&newest) < t(NOW), "{newest}");

    // One with a cursor: the next page's newest event replaces it.
    let mut sim = sim_with(Service::Audit, 3);
    st.checkpoint = Some(Checkpoint {
        cursor: Some("audit:0:1000".into()),
        newest_event: Some(YEAR_2300.into()),
        ..Checkpoint::default()
    });
    sim.store.insert(ServiceState::key(Service::Audit), st.encode());
    let report = sim.tick(audit_only(&[])).unwrap();
    assert_eq!(svc(&report, "audit").sent, 3);
    assert!(svc(&report, "audit").lag_seconds.unwrap() >= 3600);
    let newest = state(&sim, Service::Audit).checkpoint.unwrap().newest_event.unwrap();
    assert!(t(&newest) < t(NOW), "{newest}");

    // A first start pinned in the year 2300: pinned again, 24 hours back.
    let mut sim = sim_with(Service::Audit, 3);
    let mut st = ServiceState::new(t(NOW));
    st.initial_start = Some(t(YEAR_2300));
    sim.store.insert(ServiceState::key(Service::Audit), st.encode());
    assert_eq!(svc(&sim.tick(audit_only(&[])).unwrap(), "audit").sent, 3);
    assert_eq!(sim.op_starts, [rfc3339(t(NOW) - TimeDelta::hours(24))]);
    assert_exactly_once(&sim, Service::Audit);
}

#[test]
fn a_stored_lease_expiring_in_the_year_2300_does_not_defer_the_service() {
    let mut sim = sim_with(Service::Audit, 3);
    let mut st = ServiceState::new(sim.now);
    // The longest lease any instance takes is obeyed...
    let longest = sim.now + Lease::longest();
    st.lease = Some(Lease { holder: "someone-else".into(), expires: longest });
    sim.store.insert(ServiceState::key(Service::Audit), st.encode());
    let report = sim.tick(audit_only(&[])).unwrap();
    let s = svc(&report, "audit");
    assert_eq!(s.outcome, Outcome::Deferred);
    assert_eq!(s.deferred_until.as_deref(), Some(rfc3339(longest).as_str()));
    assert!(report.warnings.is_empty(), "{:?}", report.warnings);
    // ... one that ends in the year 2300 is taken as expired.
    st.lease = Some(Lease { holder: "someone-else".into(), expires: t(YEAR_2300) });
    sim.store.insert(ServiceState::key(Service::Audit), st.encode());
    let report = sim.tick(audit_only(&[])).unwrap();
    let s = svc(&report, "audit");
    assert_eq!((s.outcome, s.sent, &s.deferred_until), (Outcome::Delivered, 3, &None), "{s:?}");
    assert_eq!(report.warnings.len(), 1, "{:?}", report.warnings);
    assert!(
        report.warnings[0].contains("audit holds a lease of another instance until 2300-01-01T00:00:00Z")
            && report.warnings[0].contains("(100 minutes)"),
        "{}",
        report.warnings[0]
    );
    assert_eq!(state(&sim, Service::Audit).lease, None, "released");
    assert_exactly_once(&sim, Service::Audit);
}

#[test]
fn a_stored_back_off_until_the_year_2300_does_not_defer_the_service() {
    let mut sim = sim_with(Service::Audit, 3);
    let mut st = ServiceState::new(sim.now);
    // A back-off as long as any is obeyed...
    let longest = sim.now + crate::backoff::LONGEST;
    st.backoff = Some(crate::backoff::Backoff { until: longest, attempts: 7 });
    sim.store.insert(ServiceState::key(Service::Audit), st.encode());
    let report = sim.tick(audit_only(&[])).unwrap();
    let s = svc(&report, "audit");
    assert_eq!(s.outcome, Outcome::Deferred);
    assert_eq!(s.deferred_until.as_deref(), Some(rfc3339(longest).as_str()));
    // ... one until the year 2300 is ignored, and dropped from the record.
    st.backoff = Some(crate::backoff::Backoff { until: t(YEAR_2300), attempts: 7 });
    sim.store.insert(ServiceState::key(Service::Audit), st.encode());
    let report = sim.tick(audit_only(&[])).unwrap();
    let s = svc(&report, "audit");
    assert_eq!((s.outcome, s.sent, &s.deferred_until), (Outcome::Delivered, 3, &None), "{s:?}");
    assert!(
        report.warnings.iter().any(|w| w.contains("audit holds a back-off until 2300-01-01T00:00:00Z")),
        "{:?}",
        report.warnings
    );
    assert_eq!(state(&sim, Service::Audit).backoff, None);
    assert_exactly_once(&sim, Service::Audit);
}

#[test]
fn an_account_back_off_until_the_year_2300_does_not_stop_the_account() {
    let mut sim = Sim::new(t(NOW));
    for s in Service::ALL {
        sim.generate(s, 2, t(NOW) - TimeDelta::hours(1), 1);
    }
    let budget = BudgetRecord {
        backoff: Some(crate::backoff::Backoff { until: t(YEAR_2300), attempts: 1 }),
        ..BudgetRecord::default()
    };
    sim.store.insert("budget/ACCOUNT1".into(), budget.encode());
    let report = sim.tick(config(&[])).unwrap();
    assert!(report.services.iter().all(|s| s.outcome == Outcome::Delivered), "{report:?}");
    assert!(
        report.warnings.iter().any(|w| w.contains("budget holds a back-off until 2300-01-01T00:00:00Z")),
        "{:?}",
        report.warnings
    );
    let stored = BudgetRecord::decode(sim.store.get("budget/ACCOUNT1").map(Vec::as_slice));
    assert_eq!(stored.backoff, None, "dropped by the next spend");
    for s in Service::ALL {
        assert_exactly_once(&sim, s);
    }
}

// Lanes: several services at once.

/// Drives every lane of a tick by hand until each waits: store actions are
/// answered at once from `sim.store` (a scripted `Fault::KvRead` fails the
/// next `Watch`), requests are held and returned (a lane that abandons its
/// request counts in `sim.abandoned`).
fn run_lanes_until_all_wait(sim: &mut Sim, tick: &mut Tick) -> Vec<(usize, HttpRequest)> {
    let mut held = Vec::new();
    let mut watched = None;
    loop {
        let mut progressed = false;
        for lane in 0..tick.lanes() {
            while let Some(action) = tick.poll_lane(lane) {
                progressed = true;
                let input = match action {
                    Action::Load { key } => Input::Loaded(Ok(sim.store.get(&key).cloned())),
                    Action::Store { key, value } => {
                        sim.store.insert(key, value);
                        Input::Stored(Ok(()))
                    }
                    Action::Watch { .. } if sim.scripted.front() == Some(&Fault::KvRead) => {
                        sim.scripted.pop_front();
                        Input::Loaded(Err("injected read failure".into()))
                    }
                    Action::Watch { key } => {
                        let current = sim.store.get(&key).cloned();
                        watched = Some(key);
                        Input::Loaded(Ok(current))
                    }
                    Action::Swap { value } => {
                        sim.store.insert(watched.take().expect("a swap follows its watch"), value);
                        Input::Swapped(Ok(true))
                    }
                    Action::Send { request } => {
                        held.push((lane, request));
                        break;
                    }
                    Action::Wait { until } => {
                        sim.now = sim.now.max(until);
                        Input::Woke
                    }
                    Action::Abandon => {
                        // The lane's request in flight (held by the caller,
                        // or just now) is dropped.
                        sim.abandoned += 1;
                        held.retain(|(l, _)| *l != lane);
                        continue;
                    }
                    Action::Done(_) => unreachable!("poll_lane never says Done"),
                };
                tick.handle_lane(lane, input, sim.now);
            }
        }
        if !progressed {
            return held;
        }
    }
}

#[test]
fn with_lanes_the_services_requests_are_in_flight_together_and_each_spends_the_budget() {
    let mut sim = Sim::new(t(NOW));
    for s in Service::ALL {
        sim.generate(s, 4, t(NOW) - TimeDelta::hours(1), 1);
    }
    let mut tick = Tick::new(config(&[("max_requests_per_minute", "3")]), sim.now, 5).with_lanes(3);
    // The account phase goes first, alone: the token's introspection.
    let mut held = run_lanes_until_all_wait(&mut sim, &mut tick);
    assert_eq!(held.len(), 1, "{held:?}");
    assert_eq!(tick.lanes(), 1, "the other lanes open after the account phase");
    let (lane, introspection) = held.pop().unwrap();
    let answer = sim.respond(&introspection);
    tick.handle_lane(lane, Input::Response(answer), sim.now);
    // Then one page request per lane, all in flight before any answer.
    let pages = run_lanes_until_all_wait(&mut sim, &mut tick);
    let mut lanes: Vec<usize> = pages.iter().map(|(l, _)| *l).collect();
    lanes.sort();
    assert_eq!(lanes, [0, 1, 2], "{pages:?}");
    let mut services: Vec<Service> = pages
        .iter()
        .map(|(_, r)| Service::ALL.into_iter().find(|s| r.path.ends_with(s.endpoint())).expect("a page request"))
        .collect();
    services.sort();
    services.dedup();
    assert_eq!(services.len(), 3, "each lane took another service");
    let budget = BudgetRecord::decode(sim.store.get("budget/ACCOUNT1").map(Vec::as_slice));
    assert_eq!(budget.minute_count, 3, "each request spent its own share of the budget");
    assert!(tick.done().is_none(), "the tick waits for its answers");
}

#[test]
fn with_lanes_a_tick_delivers_what_one_lane_delivers() {
    let run = |lanes: usize| {
        let mut sim = Sim::new(t(NOW));
        sim.lanes = lanes;
        for s in Service::ALL {
            sim.generate(s, 30, t(NOW) - TimeDelta::hours(1), 2);
        }
        let c = config(&[("page_size", "10"), ("max_pages_per_tick", "2"), ("devo_max_batch_events", "4")]);
        let report = sim.tick(c.clone()).unwrap();
        let mut summary: Vec<_> =
            report.services.iter().map(|s| (s.service.clone(), s.outcome, s.sent, s.pages, s.has_more)).collect();
        summary.sort_by(|a, b| a.0.cmp(&b.0));
        drain(&mut sim, &c, 10, TimeDelta::seconds(30));
        for s in Service::ALL {
            assert_exactly_once(&sim, s);
        }
        summary
    };
    let one = run(1);
    assert!(one.iter().all(|s| s.2 == 20 && s.3 == 2 && s.4), "{one:?}");
    assert_eq!(run(3), one);
}

// Lease renewal (page.rs, the lease's heartbeat): while a lane awaits an answer.

/// The stored lease of `service`.
fn stored_lease(sim: &Sim, service: Service) -> Option<Lease> {
    state(sim, service).lease
}

/// Runs the account phase and the audit lane until its page request is in
/// flight; returns the tick and the request.
fn audit_page_in_flight(sim: &mut Sim, config: Config) -> (Tick, HttpRequest) {
    let mut tick = Tick::new(config, sim.now, 9).with_lanes(1);
    let mut held = run_lanes_until_all_wait(sim, &mut tick);
    let (lane, introspection) = held.pop().expect("the introspection");
    let answer = sim.respond(&introspection);
    tick.handle_lane(lane, Input::Response(answer), sim.now);
    let mut held = run_lanes_until_all_wait(sim, &mut tick);
    let (_, page) = held.pop().expect("the page request");
    assert!(page.path.ends_with(Service::Audit.endpoint()), "{}", page.path);
    (tick, page)
}

#[test]
fn a_lane_awaiting_a_slow_answer_renews_its_lease_every_third_of_its_ttl() {
    let mut sim = sim_with(Service::Audit, 5);
    let (mut tick, page) = audit_page_in_flight(&mut sim, audit_only(&[]));
    let taken = stored_lease(&sim, Service::Audit).expect("the lease is taken");
    assert_eq!(taken.expires - sim.now, TimeDelta::seconds(15), "lease_ttl_ms defaults to 15 s");
    // Due 5 s after the lease was written, not before.
    let due = taken.expires - TimeDelta::seconds(10);
    assert_eq!(tick.next_renewal(), Some(due));
    let mut renewals = Vec::new();
    // The page answers after 28 s (under request_timeout_ms, 30 s, and
    // past the lease's 15 s): renewed at 5, 10, 15, 20 and 25 s.
    let answered = sim.now + TimeDelta::seconds(28);
    let mut expires = taken.expires;
    while let Some(due) = tick.next_renewal().filter(|d| *d < answered) {
        sim.now = due - TimeDelta::milliseconds(1);
        tick.clock(sim.now);
        assert!(run_lanes_until_all_wait(&mut sim, &mut tick).is_empty());
        assert_eq!(stored_lease(&sim, Service::Audit).unwrap().expires, expires, "nothing written before it is due");
        sim.now = due;
        tick.clock(sim.now);
        assert!(run_lanes_until_all_wait(&mut sim, &mut tick).is_empty(), "a renewal sends nothing");
        let lease = stored_lease(&sim, Service::Audit).unwrap();
        assert_eq!((lease.holder.as_str(), lease.expires), (taken.holder.as_str(), sim.now + TimeDelta::seconds(15)));
        expires = lease.expires;
        renewals.push(lease.expires);
    }
    assert_eq!(renewals.len(), 5, "{renewals:?}");
    sim.now = answered;
    assert!(stored_lease(&sim, Service::Audit).unwrap().expires > sim.now, "the lease never lapsed");
    let answer = sim.respond(&page);
    tick.handle_lane(0, Input::Response(answer), sim.now);
    let mut held = run_lanes_until_all_wait(&mut sim, &mut tick);
    let (_, batch) = held.pop().expect("the Devo batch");
    let answer = sim.respond(&batch);
    tick.handle_lane(0, Input::Response(answer), sim.now);
    assert!(run_lanes_until_all_wait(&mut sim, &mut tick).is_empty());
    let report = tick.done().expect("the tick is over");
    let s = svc(&report, "audit");
    assert_eq!((s.outcome, s.sent, s.unconfirmed, s.error.as_ref()), (Outcome::Delivered, 5, 0, None), "{s:?}");
    assert_exactly_once(&sim, Service::Audit);
    assert_eq!(stored_lease(&sim, Service::Audit), None, "released");
    assert_eq!(tick.next_renewal(), None, "nothing left to renew");
}

#[test]
fn a_renewal_that_finds_another_holder_stops_the_part_without_commit() {
    let mut sim = sim_with(Service::Audit, 5);
    let (mut tick, page) = audit_page_in_flight(&mut sim, audit_only(&[]));
    let answer = sim.respond(&page);
    tick.handle_lane(0, Input::Response(answer), sim.now);
    // The batch is in flight (Devo has it) when another instance holds the
    // lease: this tick's lapsed while it was paused, and was taken over.
    let mut held = run_lanes_until_all_wait(&mut sim, &mut tick);
    let (_, batch) = held.pop().expect("the Devo batch");
    let _ = sim.respond(&batch);
    let mut st = state(&sim, Service::Audit);
    let other = Lease { holder: "other".into(), expires: sim.now + TimeDelta::seconds(30) };
    st.lease = Some(other.clone());
    sim.store.insert(ServiceState::key(Service::Audit), st.encode());
    sim.now = tick.next_renewal().unwrap();
    tick.clock(sim.now);
    assert!(run_lanes_until_all_wait(&mut sim, &mut tick).is_empty());
    assert_eq!(sim.abandoned, 1, "the Devo request in flight is dropped");
    let report = tick.done().expect("the tick is over: the batch's answer is not awaited");
    let s = svc(&report, "audit");
    let e = s.error.as_ref().expect("an error");
    assert_eq!((s.outcome, e.id), (Outcome::Failed, LEASE_LOST), "{s:?}");
    assert!(e.message.contains("lease was lost") && e.message.contains("nothing was committed"), "{}", e.message);
    assert_eq!(s.unconfirmed, 5, "the batch in flight may have reached Devo: counted");
    let st = state(&sim, Service::Audit);
    assert_eq!((st.lease, st.checkpoint), (Some(other), None), "nothing committed, the other's lease left alone");
}

#[test]
fn a_store_failure_during_renewal_stops_the_part_before_the_lease_lapses() {
    let mut sim = sim_with(Service::Audit, 5);
    let (mut tick, _page) = audit_page_in_flight(&mut sim, audit_only(&[]));
    sim.now = tick.next_renewal().unwrap();
    tick.clock(sim.now);
    sim.scripted.push_back(Fault::KvRead);
    assert!(run_lanes_until_all_wait(&mut sim, &mut tick).is_empty());
    assert_eq!(sim.abandoned, 1, "the page request in flight is dropped");
    let report = tick.done().expect("the tick is over");
    let s = svc(&report, "audit");
    let e = s.error.as_ref().expect("an error");
    assert_eq!((s.outcome, e.id, s.sent), (Outcome::Failed, PERSISTENCE, 0), "{s:?}");
    assert!(e.message.contains("injected read failure"), "names the store's error: {}", e.message);
    assert!(e.message.contains("could not be renewed") && e.message.contains("Check the store"), "{}", e.message);
    let st = state(&sim, Service::Audit);
    assert!(st.checkpoint.is_none() && sim.received(Service::Audit).is_empty());
    assert!(st.lease.unwrap().expires > sim.now, "stopped while the lease was still in force");
}

#[test]
fn a_lane_waiting_for_the_budget_renews_its_lease_too() {
    let now = t(NOW);
    let mut tick = Tick::new(audit_only(&[]), now, 11);
    let mut run = ServiceRun::new(Service::Audit, now);
    run.state.lease = Some(Lease { holder: tick.me.clone(), expires: now + TimeDelta::seconds(15) });
    tick.run = Some(run);
    tick.step = Step::AwaitWake;
    assert_eq!(tick.next_renewal(), Some(now + TimeDelta::seconds(5)));
    tick.clock(now + TimeDelta::seconds(4));
    assert!(tick.poll_lane(0).is_none(), "not due yet");
    tick.clock(now + TimeDelta::seconds(5));
    assert!(matches!(tick.poll_lane(0), Some(Action::Watch { .. })), "the renewal starts");
    // A lease that is not this tick's is not renewed.
    let mut tick = Tick::new(audit_only(&[]), now, 12);
    let mut run = ServiceRun::new(Service::Audit, now);
    run.state.lease = Some(Lease { holder: "other".into(), expires: now + TimeDelta::seconds(15) });
    tick.run = Some(run);
    tick.step = Step::AwaitWake;
    assert_eq!(tick.next_renewal(), None);
}

/// Every answer of 1Password and Devo takes 25 s (under the 30 s timeout,
/// past the 15 s lease), over ticks that page for 10 minutes: the leases
/// are renewed while the lanes wait and never lapse, and every event
/// arrives once.
#[test]
fn the_lease_never_lapses_while_a_tick_works_on_slow_answers() {
    for lanes in [1, 3] {
        let mut sim = Sim::new(t(NOW));
        sim.lanes = lanes;
        sim.latency = TimeDelta::seconds(25);
        for s in Service::ALL {
            sim.generate(s, 120, t(NOW) - TimeDelta::hours(1), 2);
        }
        let c = config(&[("page_size", "10"), ("devo_max_batch_events", "5"), ("tick_deadline_ms", "600000")]);
        let report = sim.tick(c.clone()).unwrap();
        assert!(report.ok(), "lanes {lanes}: {report:?}");
        assert!(report.elapsed_ms > 300_000, "lanes {lanes}: the tick worked for {} ms", report.elapsed_ms);
        assert_eq!(sim.lapsed, 0, "lanes {lanes}: a lease lapsed while its tick worked");
        assert_eq!(sim.abandoned, 0, "lanes {lanes}");
        drain(&mut sim, &c, 10, TimeDelta::minutes(1));
        for s in Service::ALL {
            assert_exactly_once(&sim, s);
        }
    }
}

/// What a caught-up tick of three services asks of the store: per service a
/// lease (watch, swap, read-back), a budget spend (the same) and one commit
/// that also releases the lease (the same), plus the account's two reads.
/// Idle ticks are most of a large fleet's work (issue #18): a store call
/// more per service shows here.
#[test]
fn an_idle_tick_commits_and_releases_in_one_write() {
    let mut sim = sim_with(Service::Audit, 3);
    let config = config(&[]);
    sim.tick(config.clone()).unwrap();
    sim.now += TimeDelta::seconds(60);
    let started = sim.now;
    let mut running = sim.start(config);
    let mut store_calls = Vec::new();
    let report = loop {
        let action = running.tick.poll();
        match &action {
            Action::Load { key } => store_calls.push(format!("load {key}")),
            Action::Watch { key } => store_calls.push(format!("watch {key}")),
            Action::Swap { .. } => store_calls.push("swap".into()),
            Action::Store { key, .. } => store_calls.push(format!("store {key}")),
            Action::Done(report) => break report.clone(),
            _ => {}
        }
        let input = sim.perform_now(&mut running, action);
        sim.now += TimeDelta::milliseconds(10);
        running.tick.handle(input, sim.now);
    };
    assert!(report.ok(), "{report:?}");
    assert!(report.services.iter().all(|s| s.outcome == Outcome::Idle), "{report:?}");
    assert_eq!(store_calls.len(), 2 + 3 * 9, "{store_calls:#?}");
    for service in Service::ALL {
        let key = ServiceState::key(service);
        let writes = store_calls.iter().filter(|c| **c == format!("watch {key}")).count();
        assert_eq!(writes, 2, "{key}: one lease and one commit with release: {store_calls:#?}");
        let stored = state(&sim, service);
        assert_eq!(stored.lease, None, "{key}: released");
        assert!(
            stored.stats.last_success_at.is_some_and(|t| t >= started),
            "{key}: the idle commit counts as a success"
        );
    }
}
