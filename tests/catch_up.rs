//! Catching up, end to end: the real .wasm under the harness. A tick pages
//! while there is more, its deadline has room and the budget allows; every
//! page's host resources are dropped before the next, so a thousand pages
//! fit under the host's resource ceiling and the memory stays at one
//! page's; a cursor that does not move is an error, not a wall; and one
//! tick per firing (Spin's cron) drains at the budget's pace.

use end_to_end as common;

use chrono::{DateTime, Utc};
use common::*;
use harness_test_kit::emulator::OpFault;
use onepassword_collector::error::ONEPASSWORD_STUCK_CURSOR;
use onepassword_collector::report::{Outcome, ServiceReport};
use onepassword_collector::service::{ApiVersion, Service};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

fn audit(report: &onepassword_collector::report::TickReport) -> &ServiceReport {
    report.services.iter().find(|s| s.service == "audit").unwrap()
}

/// The most 1Password event requests (introspection left out) the emulator
/// saw within any `seconds` of its clock.
fn most_within(f: &Fixture, seconds: i64) -> usize {
    let mut times: Vec<DateTime<Utc>> =
        f.op.requests().iter().filter(|r| !r.path.ends_with("/introspect")).map(|r| r.clock_time).collect();
    times.sort();
    let (mut most, mut first) = (0, 0);
    for (last, t) in times.iter().enumerate() {
        while (*t - times[first]).num_milliseconds() > seconds * 1000 {
            first += 1;
        }
        most = most.max(last - first + 1);
    }
    most
}

/// The emulator's clock follows the component's: the real clock plus the
/// fixture's offset (moved with [`advance`]).
fn shared_clock(f: &Fixture) -> Arc<AtomicU64> {
    let offset = Arc::new(AtomicU64::new(f.clock.get()));
    let seen = Arc::clone(&offset);
    f.op.set_clock(Arc::new(move || Utc::now() + chrono::Duration::seconds(seen.load(Ordering::Relaxed) as i64)));
    offset
}

fn advance(f: &Fixture, offset: &AtomicU64, seconds: u64) {
    f.advance(seconds);
    offset.store(f.clock.get(), Ordering::Relaxed);
}

#[test]
fn a_thousand_pages_in_one_tick_stay_under_the_hosts_resource_ceiling() {
    // 1,000 pages of one event: with one host resource kept per request
    // (two per page) the instance would hold more than 256 after ~125
    // pages (error 900). The budget allows 600 a minute: the tick waits
    // (about a minute) for the rest, which a tenth of its deadline allows.
    let mut f = Fixture::new(1000, 71);
    f.set("services", "audit");
    f.set("page_size", "1");
    f.set("max_requests_per_minute", "600");
    f.set("tick_deadline_ms", "600000");
    let t = f.tick();
    let report = t.result.as_ref().unwrap_or_else(|e| panic!("tick failed: {e}"));
    let s = audit(report);
    assert!(s.error.is_none(), "{}", t.to_json());
    assert_eq!((s.outcome, s.pages, s.sent, s.has_more), (Outcome::Delivered, 1000, 1000, false), "{}", t.to_json());
    let served = f.dataset.values_for(Service::Audit, ApiVersion::V2);
    assert_eq!(f.devo.event_values(Service::Audit.default_tag()), served, "every event once, in order");
    assert!(most_within(&f, 60) <= 600, "{} requests within a minute", most_within(&f, 60));
    // Memory: a page of one event, a thousand times, is still about one page.
    assert!(t.peak_memory_bytes < 4 << 20, "{} bytes", t.peak_memory_bytes);
    // The lease is released, not left for 150 s.
    assert!(f.state(Service::Audit).unwrap().lease.is_none());
}

#[test]
fn a_long_catching_up_tick_peaks_at_the_one_page_memory() {
    // One 1000-event page, then a tick of 20 of them.
    let one = {
        let mut f = Fixture::new(1000, 72);
        f.set("services", "audit");
        let t = f.tick();
        assert!(t.ok() && audit(t.result.as_ref().unwrap()).pages == 1, "{}", t.to_json());
        t.peak_memory_bytes
    };
    let mut f = Fixture::new(20_000, 73);
    f.set("services", "audit");
    let t = f.tick();
    let report = t.result.as_ref().unwrap();
    assert_eq!((audit(report).pages, audit(report).sent), (20, 20_000), "{}", t.to_json());
    // Within a page's worth (a 1000-event page is about 1 MiB as text):
    // the pages are not kept.
    let many = t.peak_memory_bytes;
    assert!(many <= one + (1 << 20), "one page: {one} bytes; twenty: {many} bytes");
}

#[test]
fn a_cursor_that_does_not_move_is_error_604_not_a_wall_of_pages() {
    let mut f = Fixture::new(30, 74);
    f.set("services", "audit");
    f.set("page_size", "1");
    // 1Password answers every page with has_more and a cursor that stays.
    f.op.set_random_faults(1, 1.0, vec![OpFault::StuckCursor]);
    let t = f.tick();
    let report = t.result.as_ref().unwrap_or_else(|e| panic!("tick failed: {e}"));
    let e = audit(report).error.clone().unwrap_or_else(|| panic!("{}", t.to_json()));
    assert_eq!(e.id, ONEPASSWORD_STUCK_CURSOR, "{e}");
    assert!(e.message.contains("same cursor"), "{}", e.message);
    let asked = |f: &Fixture| f.op.requests().iter().filter(|r| !r.path.ends_with("/introspect")).count();
    // The first page from a time, then its cursor once more: no loop.
    assert_eq!(asked(&f), 2);
    assert_eq!(f.devo.total_events(), 0);
    let state = f.state(Service::Audit).unwrap();
    assert!(state.lease.is_none() && state.backoff.is_some(), "{state:?}");
    // Backing off: the next tick asks nothing.
    let t = f.tick();
    assert_eq!(audit(t.result.as_ref().unwrap()).outcome, Outcome::Deferred);
    assert_eq!(asked(&f), 2);
    // 1Password recovers: everything, once.
    f.op.clear_faults();
    f.recover(5);
    let served = f.dataset.values_for(Service::Audit, ApiVersion::V2);
    assert_eq!(f.devo.event_values(Service::Audit.default_tag()), served);
}

#[test]
fn one_tick_per_firing_drains_at_the_budgets_pace() {
    // As under Spin's cron trigger: one tick a minute, each all its firing
    // gets (default deadline). 3 × 200 events in pages of 10 are 60 pages;
    // at 20 a minute that is three firings, the budget-bound minimum.
    let mut f = Fixture::new(200, 75);
    f.set("page_size", "10");
    f.set("max_requests_per_minute", "20");
    let offset = shared_clock(&f);
    // 1Password's own limit is the budget's (and the introspection).
    f.op.set_rate_limit(Some(21), None);
    let mut firings = 0;
    loop {
        firings += 1;
        assert!(firings <= 4, "not caught up after 4 firings");
        let t = f.tick();
        let report = t.result.as_ref().unwrap_or_else(|e| panic!("tick failed: {e}"));
        assert!(report.ok(), "{}", t.to_json());
        advance(&f, &offset, 60);
        if report.services.iter().all(|s| !s.has_more && s.outcome != Outcome::Deferred) {
            break;
        }
    }
    assert_eq!(firings, 3, "three firings of 20 pages");
    f.assert_all_delivered_once(ApiVersion::V2);
    assert_eq!(f.op.rate_limited_count(), 0, "1Password answered 429");
    assert!(most_within(&f, 60) <= 20, "{} requests within a minute", most_within(&f, 60));
    // Caught up: the next firing asks once per service.
    let before = f.op.request_count();
    assert!(f.tick().ok());
    assert_eq!(f.op.request_count() - before, 3);
}
