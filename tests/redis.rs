//! The real component with its state in a real Redis: it collects exactly
//! once, `status` reads what it wrote, and two instances ticking at once
//! stay exactly-once even when the store's swap lies about lost races
//! (what Spin's Redis store would answer after an aborted `EXEC`, were the
//! `UNWATCH <key>` it sends next not refused; `tests/spin_redis.rs` runs the
//! component on a copy of that store, whose every swap answers "failed").

use end_to_end::*;
use harness_test_kit::redis_server::RedisServer;
use host_harness::runtime::{KvFault, KvOp, TickOptions};
use onepassword_collector::report::Outcome;
use onepassword_collector::service::{ApiVersion, Service};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

#[test]
fn the_component_collects_into_redis_and_status_reads_it() {
    let redis = RedisServer::start();
    let mut f = Fixture::new(120, 71);
    f.set("page_size", "50");
    f.on_redis(&redis);
    f.drain(20);
    f.assert_all_delivered_once(ApiVersion::V2);
    assert!(!f.state.path().join("e2e.sqlite").exists(), "no SQLite file was used");
    let audit = f.state(Service::Audit).expect("the audit record is in Redis");
    assert_eq!(audit.checkpoint.unwrap().total_sent, 120);
    let rows = block_on(host_harness::status::read(&[f.tenant.clone()], &host_harness::kv::Stores::default()));
    assert_eq!(rows.len(), 3);
    assert!(rows.iter().all(|r| r.state.as_ref().is_ok_and(Option::is_some)), "status read every service");
    // Another tick finds nothing new.
    let t = f.tick();
    assert!(t.result.unwrap().services.iter().all(|s| s.outcome == Outcome::Idle));
}

/// Makes two ticks meet: each waits (up to two seconds) until both arrived.
#[derive(Default)]
struct Meeting {
    arrived: Mutex<usize>,
    all_here: Condvar,
}

impl Meeting {
    fn meet(&self) {
        let mut arrived = self.arrived.lock().unwrap();
        *arrived += 1;
        self.all_here.notify_all();
        let _ = self.all_here.wait_timeout_while(arrived, Duration::from_secs(2), |n| *n < 2).unwrap();
    }
}

/// Every swap answers "written", as Spin's Redis store does after a lost
/// race; and the first read of the audit record (the lease's) waits for the
/// other tick's, so both read "no lease" before either swaps: the race.
fn lying_swaps(meeting: Arc<Meeting>) -> TickOptions {
    let first_read = AtomicBool::new(true);
    let hook = move |op: KvOp, key: &str| {
        if op == KvOp::CasRead && key == "service/audit" && first_read.swap(false, Ordering::SeqCst) {
            meeting.meet();
        }
        (op == KvOp::Swap).then_some(KvFault::SwapReportsOk)
    };
    TickOptions { kv_faults: Some(Arc::new(hook)), ..Default::default() }
}

#[test]
fn two_ticks_at_once_whose_swaps_lie_never_duplicate() {
    let redis = RedisServer::start();
    let mut f = Fixture::new(300, 72);
    f.set("page_size", "20");
    f.on_redis(&redis);
    let tenant = f.tenant.clone();
    let mut unconfirmed = 0;
    let mut lost = 0;
    for round in 0..12u64 {
        let meeting = Arc::new(Meeting::default());
        let handles: Vec<_> = (0..2)
            .map(|_| {
                let tenant = tenant.clone();
                let clock_offset = Duration::from_secs(round * 200);
                let options = TickOptions { clock_offset, ..lying_swaps(Arc::clone(&meeting)) };
                std::thread::spawn(move || tick_with(&tenant, &options))
            })
            .collect();
        let reports: Vec<_> =
            handles.into_iter().map(|h| h.join().unwrap().result.unwrap_or_else(|e| panic!("{e}"))).collect();
        for s in reports.iter().flat_map(|r| &r.services) {
            unconfirmed += s.unconfirmed;
            lost += u64::from(s.deferred_reason.as_deref().is_some_and(|r| r.contains("lost")));
        }
    }
    f.advance(12 * 200);
    f.recover(20);
    for service in Service::ALL {
        let served = f.dataset.values_for(service, ApiVersion::V2);
        let received = f.devo.event_values(service.default_tag());
        let mut distinct = received.clone();
        distinct.sort_by_key(|v| v.to_string());
        distinct.dedup();
        assert_eq!(distinct.len(), served.len(), "{service}: every event arrived");
        // Each page is one Devo batch (no progress writes to lie about), so
        // the tick that lost the race fetched and sent nothing: no repeats,
        // not even reported ones.
        let repeats = received.len() - distinct.len();
        assert_eq!(repeats, 0, "{service}: {repeats} events sent twice ({unconfirmed} reported unconfirmed)");
    }
    assert!(lost > 0, "the two ticks never raced for the lease");
    eprintln!("lease lost {lost} times, {unconfirmed} unconfirmed");
}
