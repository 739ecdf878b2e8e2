//! The Redis key-value backend against a real `redis-server`: an atomic
//! compare-and-swap that reports a lost race as lost, tenants kept apart by
//! their prefixes, counters that lose no increment, and errors that never
//! show the URL's password.

use harness_test_kit::redis_server::RedisServer;
use host_harness::kv::{KvBackend, KvLocation, RedisLocation, Stores};

fn location(server: &RedisServer, prefix: &str) -> KvLocation {
    KvLocation::Redis(RedisLocation::new(&server.url(0), prefix).unwrap())
}

/// A bucket on a connection of its own (separate `Stores` do not share one).
async fn bucket(location: &KvLocation) -> Box<dyn KvBackend> {
    Stores::default().open(location, "default").await.unwrap()
}

#[tokio::test]
async fn a_swap_whose_key_changed_since_the_read_reports_not_written() {
    let server = RedisServer::start();
    let at = location(&server, "t/");
    let (mut a, mut b) = (bucket(&at).await, bucket(&at).await);
    a.set("lease", b"v0").await.unwrap();
    // The race Spin 3.x's store loses: A reads (its WATCH), B writes in
    // between, then A's swap must fail — not report success.
    let seen_by_a = a.get("lease").await.unwrap();
    assert!(b.compare_and_swap("lease", seen_by_a.as_deref(), b"b").await.unwrap(), "B's swap is first");
    assert!(!a.compare_and_swap("lease", seen_by_a.as_deref(), b"a").await.unwrap(), "A lost and must say so");
    assert_eq!(a.get("lease").await.unwrap().as_deref(), Some(&b"b"[..]), "A wrote nothing");
    // "absent" is a value to compare with too
    assert!(a.compare_and_swap("new", None, b"1").await.unwrap());
    assert!(!b.compare_and_swap("new", None, b"2").await.unwrap(), "no longer absent");
    assert!(!b.compare_and_swap("gone", Some(b"x"), b"2").await.unwrap(), "absent is not x");
    assert_eq!(b.get("gone").await.unwrap(), None);
    // binary values compare byte for byte
    a.set("bin", &[0, 255, 10, 0]).await.unwrap();
    assert!(!b.compare_and_swap("bin", Some(&[0, 255, 10]), b"x").await.unwrap());
    assert!(b.compare_and_swap("bin", Some(&[0, 255, 10, 0]), b"y").await.unwrap());
}

#[tokio::test]
async fn many_racing_swaps_let_exactly_one_win_each_round() {
    let server = RedisServer::start();
    let at = location(&server, "race/");
    let mut first = bucket(&at).await;
    first.set("k", b"0").await.unwrap();
    for round in 0..20u32 {
        let mut contenders = Vec::new();
        for _ in 0..4 {
            contenders.push(bucket(&at).await);
        }
        let mut seen = Vec::new();
        for c in &mut contenders {
            seen.push(c.get("k").await.unwrap());
        }
        let swaps = contenders.into_iter().zip(seen).enumerate().map(|(i, (mut c, seen))| {
            tokio::spawn(
                async move { c.compare_and_swap("k", seen.as_deref(), format!("{round}-{i}").as_bytes()).await },
            )
        });
        let mut won = 0;
        for s in swaps {
            won += usize::from(s.await.unwrap().unwrap());
        }
        assert_eq!(won, 1, "round {round}: {won} swaps reported a win");
    }
}

#[tokio::test]
async fn tenants_on_one_redis_never_see_each_others_keys() {
    let server = RedisServer::start();
    let (mut a, mut b) = (bucket(&location(&server, "acme/")).await, bucket(&location(&server, "beta/")).await);
    a.set("service/audit", b"acme's").await.unwrap();
    b.set("service/audit", b"beta's").await.unwrap();
    a.set("budget/x", b"1").await.unwrap();
    assert_eq!(a.get("service/audit").await.unwrap().as_deref(), Some(&b"acme's"[..]));
    assert_eq!(b.get("service/audit").await.unwrap().as_deref(), Some(&b"beta's"[..]));
    assert_eq!(a.keys().await.unwrap(), vec!["budget/x".to_string(), "service/audit".to_string()]);
    assert_eq!(b.keys().await.unwrap(), vec!["service/audit".to_string()]);
    b.delete("service/audit").await.unwrap();
    assert_eq!(a.get("service/audit").await.unwrap().as_deref(), Some(&b"acme's"[..]), "B's delete is B's");
    // A prefix with glob characters lists its own keys only.
    let mut odd = bucket(&location(&server, "a*[x]/")).await;
    odd.set("k", b"1").await.unwrap();
    assert_eq!(odd.keys().await.unwrap(), vec!["k".to_string()]);
    assert_eq!(a.keys().await.unwrap().len(), 2);
    // What is in Redis: every key under its tenant's prefix.
    let client = redis::Client::open(server.url(0)).unwrap();
    let mut raw = client.get_multiplexed_async_connection().await.unwrap();
    let mut all: Vec<String> = redis::cmd("KEYS").arg("*").query_async(&mut raw).await.unwrap();
    all.sort();
    assert_eq!(all, vec!["a*[x]/default/k", "acme/default/budget/x", "acme/default/service/audit"]);
}

#[tokio::test]
async fn counters_lose_no_increment_across_connections() {
    let server = RedisServer::start();
    let at = location(&server, "n/");
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let at = at.clone();
            tokio::spawn(async move {
                let mut kv = bucket(&at).await;
                for _ in 0..25 {
                    kv.increment("count", 1).await.unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let mut kv = bucket(&at).await;
    assert_eq!(kv.increment("count", 0).await.unwrap(), 100);
    kv.set("text", b"not a number").await.unwrap();
    let e = kv.increment("text", 1).await.unwrap_err();
    assert!(e.contains("does not hold a counter"), "{e}");
}

#[tokio::test]
async fn an_unreachable_redis_fails_with_the_server_named_and_the_password_hidden() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let url = format!("redis://:hunter2-secret@127.0.0.1:{port}/0");
    let at = KvLocation::Redis(RedisLocation::new(&url, "t/").unwrap());
    let e = Stores::default().open(&at, "default").await.map(|_| ()).unwrap_err();
    assert!(e.contains(&format!("127.0.0.1:{port}")), "{e}");
    assert!(!e.contains("hunter2"), "password shown: {e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_does_not_answer_holds_up_no_tenant_on_another_store() {
    use std::sync::Arc;
    use std::time::{Duration, Instant};
    let server = RedisServer::start();
    // Takes connections (the kernel's backlog) and never answers: the AUTH
    // of a connect waits there until the connect timeout.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_url = format!("redis://:pw@127.0.0.1:{}/0", silent.local_addr().unwrap().port());
    let stores = Arc::new(Stores::default());
    let started = Instant::now();
    let hanging = {
        let stores = Arc::clone(&stores);
        let at = KvLocation::Redis(RedisLocation::new(&silent_url, "a/").unwrap());
        tokio::spawn(async move {
            let result = stores.open(&at, "default").await.map(|_| ());
            (result, Instant::now())
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await; // its connect is under way

    // A tenant on the live Redis opens its store and works meanwhile.
    let mut live = stores.open(&location(&server, "b/"), "default").await.unwrap();
    live.set("k", b"v").await.unwrap();
    let live_done = Instant::now();

    let (result, hanging_done) = hanging.await.unwrap();
    assert!(result.is_err(), "the silent server cannot have answered");
    assert!(
        hanging_done - started > Duration::from_secs(1),
        "the silent connect did hang: {:?}",
        hanging_done - started
    );
    assert!(
        live_done + Duration::from_secs(1) < hanging_done,
        "the live store waited for the silent one: done {:?} after the start, the silent one {:?}",
        live_done - started,
        hanging_done - started
    );
}
