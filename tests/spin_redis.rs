//! The real component on a store that behaves exactly like Spin's Redis
//! store (`harness_test_kit::spin_redis`, over a real Redis): every
//! compare-and-swap answers "failed", also those that wrote, because Spin
//! ends each swap with an `UNWATCH <key>` that Redis refuses. Under the real
//! Spin cron trigger this made every service fail every tick with error 200
//! before the component read its writes back. Here one instance, then three
//! at once on one Redis, deliver every event exactly once, and 1Password
//! never sees more requests in a minute than the account's budget allows.

use end_to_end::*;
use harness_test_kit::redis_server::RedisServer;
use harness_test_kit::spin_redis::SwapCounts;
use onepassword_collector::budget::BudgetRecord;
use onepassword_collector::report::Outcome;
use onepassword_collector::service::{ApiVersion, Service};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier};

/// The account's request ceiling per minute in these tests.
const CEILING: u32 = 6;

/// Ties the 1Password emulator's clock (its rate-limit windows and request
/// log) to the component's: set the returned offset to the tick's.
fn shared_clock(f: &Fixture) -> Arc<AtomicU64> {
    let offset = Arc::new(AtomicU64::new(0));
    let seen = Arc::clone(&offset);
    f.op.set_clock(Arc::new(move || {
        chrono::Utc::now() + chrono::Duration::seconds(seen.load(Ordering::SeqCst) as i64)
    }));
    offset
}

/// 1Password's event requests (not introspections) per clock minute of the
/// component: none may exceed the budget's ceiling.
fn assert_within_the_budget(f: &Fixture) {
    let mut per_minute: BTreeMap<i64, u32> = BTreeMap::new();
    for r in f.op.requests().iter().filter(|r| !r.path.ends_with("/introspect")) {
        *per_minute.entry(r.clock_time.timestamp().div_euclid(60)).or_default() += 1;
    }
    let most = per_minute.values().copied().max().unwrap_or(0);
    assert!(most <= CEILING, "1Password saw {most} event requests in one minute, over the budget of {CEILING}");
    assert_eq!(f.op.rate_limited_count(), 0, "1Password answered 429");
    // One budget record: never split between the account and a token's key.
    let keys = block_on(async {
        let mut kv = host_harness::kv::Stores::default().open(&f.tenant.kv, "default").await.unwrap();
        kv.keys().await.unwrap()
    });
    let budgets: Vec<&String> = keys.iter().filter(|k| k.starts_with("budget/")).collect();
    assert_eq!(budgets.len(), 1, "{keys:?}");
    let bytes = block_on(async {
        let mut kv = host_harness::kv::Stores::default().open(&f.tenant.kv, "default").await.unwrap();
        kv.get(budgets[0]).await.unwrap()
    });
    let budget = BudgetRecord::decode(bytes.as_deref());
    let in_hour =
        f.op.requests()
            .iter()
            .filter(|r| !r.path.ends_with("/introspect") && r.clock_time.timestamp().div_euclid(3600) == budget.hour)
            .count();
    assert!(budget.hour_count as usize >= in_hour, "the budget counted {} of {in_hour} requests", budget.hour_count);
}

fn n(counter: &std::sync::atomic::AtomicUsize) -> usize {
    SwapCounts::get(counter)
}

/// A fixture whose ticks run on a Spin-like Redis store, with a small
/// budget that 1Password's own limit enforces.
fn spin_fixture(redis: &RedisServer, seed: u64, events: usize) -> (Fixture, Arc<SwapCounts>, Arc<AtomicU64>) {
    let mut f = Fixture::new(events, seed);
    f.set("page_size", "10");
    // Two batches per page: progress writes too.
    f.set("devo_max_batch_events", "5");
    f.set("max_requests_per_minute", &CEILING.to_string());
    let counts = f.on_spin_redis(redis);
    let clock = shared_clock(&f);
    // Introspection is not budgeted: one per instance.
    f.op.set_rate_limit(Some(CEILING + 3), None);
    (f, counts, clock)
}

/// Ticks until every service is caught up with no error: `max` ticks at
/// most, `every` seconds apart on the component's clock.
fn drain(f: &Fixture, clock: &AtomicU64, max: usize, every: u64) {
    for _ in 0..max {
        clock.store(f.clock.get(), Ordering::SeqCst);
        let t = f.tick();
        let report = t.result.as_ref().unwrap_or_else(|e| panic!("tick failed: {e}"));
        assert!(report.ok(), "{}", t.to_json());
        f.advance(every);
        if report.services.iter().all(|s| !s.has_more && s.outcome != Outcome::Deferred) {
            return;
        }
    }
    panic!("not caught up after {max} ticks");
}

#[test]
fn one_instance_on_a_store_like_spins_redis_delivers_every_event_exactly_once() {
    let redis = RedisServer::start();
    let (f, counts, clock) = spin_fixture(&redis, 81, 60);
    drain(&f, &clock, 40, 20);
    f.assert_all_delivered_once(ApiVersion::V2);
    // Every swap was answered "failed", and every one wrote.
    let swaps = n(&counts.swaps);
    assert!(swaps > 30, "{swaps} swaps");
    assert_eq!((n(&counts.unwatch_refused), n(&counts.written), n(&counts.aborted)), (swaps, swaps, 0));
    assert_within_the_budget(&f);
    let audit = f.state(Service::Audit).unwrap();
    assert_eq!((audit.lease, audit.checkpoint.map(|c| c.total_sent)), (None, Some(60)), "released, checkpointed");
    assert!(audit.writer.is_some(), "the record names its writer");
}

#[test]
fn three_instances_at_once_on_a_store_like_spins_redis_deliver_every_event_exactly_once_within_the_budget() {
    let redis = RedisServer::start();
    let (f, counts, clock) = spin_fixture(&redis, 82, 150);
    let mut deferred = 0;
    for round in 0..40u64 {
        // Three instances fire together, as three Spin processes on one
        // Redis (or overlapping firings of one) do; 15 s apart.
        let offset = round * 15;
        clock.store(offset, Ordering::SeqCst);
        let start = Arc::new(Barrier::new(3));
        let handles: Vec<_> = (0..3)
            .map(|_| {
                let (tenant, options, start) = (f.tenant.clone(), f.options_at(offset), Arc::clone(&start));
                std::thread::spawn(move || {
                    start.wait();
                    tick_with(&tenant, &options)
                })
            })
            .collect();
        for h in handles {
            let t = h.join().unwrap();
            let report = t.result.as_ref().unwrap_or_else(|e| panic!("tick failed: {e}"));
            assert!(report.ok(), "round {round}: {}", t.to_json());
            // Another instance held the lease, or won the race for it.
            deferred += report
                .services
                .iter()
                .filter(|s| s.deferred_reason.as_deref().is_some_and(|r| r.contains("another instance")))
                .count();
        }
    }
    f.advance(40 * 15 + 60);
    drain(&f, &clock, 40, 20);
    f.assert_all_delivered_once(ApiVersion::V2);
    assert!(deferred > 0, "the instances never met");
    let swaps = n(&counts.swaps);
    assert_eq!(n(&counts.unwatch_refused), swaps, "every swap answered failed");
    assert!(n(&counts.written) > 100, "{} swaps wrote", n(&counts.written));
    assert_within_the_budget(&f);
    eprintln!(
        "swaps {swaps}, written {}, aborted (lost races) {}, services deferred {deferred}",
        n(&counts.written),
        n(&counts.aborted)
    );
}
