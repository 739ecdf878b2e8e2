//! Replicas on one Redis, as a high-availability deployment runs them: three
//! `host-harness run` processes tick the same 20 tenants (one runs them all,
//! two split them with `--shard 0/2` and `--shard 1/2`), one is killed with
//! SIGKILL mid-run and a replacement started. Every event of every tenant
//! arrives exactly once — the only repeats allowed are those a tick reported
//! `unconfirmed`, and the page the killed process may have had in flight
//! between Devo's answer and its checkpoint write — and 1Password never
//! answers 429 although the replicas together could overspend a budget that
//! was not shared.
//!
//! And fast failover, with the default `tick_deadline_ms`,
//! `request_timeout_ms` and `lease_ttl_ms`: a replica killed while its ticks
//! hold leases (Devo answers after 20 s, longer than a lease lasts) is taken
//! over by another within the 15 s lease, not the 150 s leases lasted
//! before they were renewed.

use harness_test_kit::emulator::{
    Dataset, DevoEmulator, DevoFault, DevoOptions, OnePasswordEmulator, OnePasswordOptions,
};
use harness_test_kit::redis_server::RedisServer;
use host_harness::shard::Shard;
use onepassword_collector::service::Service;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const OP_TOKEN: &str = "replicas-op-token-secret";
const DEVO_TOKEN: &str = "replicasDevoToken0123456789abcdef";
const TENANTS: usize = 20;
const EVENTS: usize = 16;
const PAGE: usize = 8;
/// Each tenant's request budget per minute; the emulator allows the sum.
const CEILING: u32 = 60;

fn tenant(n: usize) -> String {
    format!("t{n:02}")
}

fn tag(n: usize, service: Service) -> String {
    let short = match service {
        Service::Audit => "audit",
        Service::ItemUsage => "itemusage",
        Service::SignInAttempts => "signinattempt",
    };
    format!("replicas.{}.{short}", tenant(n))
}

/// A `run` process whose stdout lines are collected as they come.
struct Replica {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Replica {
    fn start(config: &str, redis_url: &str, shard: Option<&str>) -> Replica {
        let mut command = Command::new(env!("CARGO_BIN_EXE_host-harness"));
        command.args(["run", "--config", config]);
        if let Some(shard) = shard {
            command.args(["--shard", shard]);
        }
        let mut child = command
            .env("REPLICA_OP_TOKEN", OP_TOKEN)
            .env("REPLICA_DEVO_TOKEN", DEVO_TOKEN)
            .env("REPLICA_REDIS_URL", redis_url)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&lines);
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        Replica { child, lines, reader: Some(reader) }
    }

    /// SIGKILL: no chance to finish a tick or release a lease.
    fn kill(mut self) -> Vec<serde_json::Value> {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        self.reader.take().unwrap().join().unwrap();
        let lines = self.lines.lock().unwrap();
        lines.iter().filter_map(|l| serde_json::from_str(l).ok()).collect()
    }
}

#[test]
fn three_replicas_on_one_redis_deliver_every_event_once_through_a_kill() {
    let redis = RedisServer::start();
    let now = chrono::Utc::now();
    let dataset = Dataset::generate(91, EVENTS, now - chrono::Duration::hours(2), chrono::Duration::hours(1));
    let op = OnePasswordEmulator::start(OnePasswordOptions::new(OP_TOKEN, dataset.clone())).unwrap();
    // Introspection is not budgeted: allow one per replica and tenant.
    let limit = TENANTS as u32 * (CEILING + 3);
    op.set_rate_limit(Some(limit), None);
    let devo = DevoEmulator::start(DevoOptions { domain: "replicas".into(), token: DEVO_TOKEN.into() }).unwrap();
    // A third of Devo's answers come 400 ms after it stored the events:
    // ticks are in flight (often in that very window) when the kill comes.
    devo.set_random_faults(92, 0.33, vec![DevoFault::AcceptAfter(Duration::from_millis(400))]);

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("replicas.toml");
    // The emulators are plain http on loopback, refused unless allowed.
    let mut text = String::from(harness_test_kit::loopback::HOST_SECTION);
    // Every tenant reads the same tokens, which the operator shares, and
    // keeps its state on the operator's Redis.
    text += "shared_variables = [\"REPLICA_OP_TOKEN\", \"REPLICA_DEVO_TOKEN\"]\n";
    text += "[host.redis]\nreplicas = \"${REPLICA_REDIS_URL}\"\n";
    for n in 0..TENANTS {
        let t = tenant(n);
        text += &format!(
            "[tenants.{t}]\nschedule = \"*/2 * * * * *\"\nkv = \"redis:replicas\"\n\
             [tenants.{t}.variables]\nbase_url = \"{}\"\ntoken = \"${{REPLICA_OP_TOKEN}}\"\ndevo_url = \"{}\"\n\
             devo_domain = \"replicas\"\ndevo_token = \"${{REPLICA_DEVO_TOKEN}}\"\npage_size = {PAGE}\n\
             max_requests_per_minute = {CEILING}\ntick_deadline_ms = 2000\nrequest_timeout_ms = 1000\n\
             tag_audit = \"{}\"\ntag_item_usage = \"{}\"\ntag_sign_in_attempts = \"{}\"\n\n",
            op.base_url(),
            devo.base_url(),
            tag(n, Service::Audit),
            tag(n, Service::ItemUsage),
            tag(n, Service::SignInAttempts),
        );
    }
    std::fs::write(&config, text).unwrap();
    let config = config.to_str().unwrap();
    let url = redis.url(0);
    let total = TENANTS * EVENTS * 3;
    let distinct = |tag: &str| {
        let mut values = devo.event_values(tag);
        values.sort_by_key(|v| v.to_string());
        values.dedup();
        values.len()
    };
    let wait_for = |events: usize, patience: Duration| {
        let until = Instant::now() + patience;
        while devo.total_events() < events && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let wait_for_all = |patience: Duration| {
        let until = Instant::now() + patience;
        let tags: Vec<String> = (0..TENANTS).flat_map(|n| Service::ALL.map(|s| tag(n, s))).collect();
        while tags.iter().any(|t| distinct(t) < EVENTS) && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let started = Instant::now();
    let all = Replica::start(config, &url, None);
    let shard0 = Replica::start(config, &url, Some("0/2"));
    let shard1 = Replica::start(config, &url, Some("1/2"));
    // Kill the replica once it has finished a tick and is into the next.
    wait_for(total / 4, Duration::from_secs(30));
    let until = Instant::now() + Duration::from_secs(30);
    while shard0.lines.lock().unwrap().is_empty() && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    let killed_at = devo.total_events();
    let killed = shard0.kill();
    let kill_time = started.elapsed();
    let restarted = Replica::start(config, &url, Some("0/2"));
    wait_for_all(Duration::from_secs(120));
    eprintln!(
        "{total} events: {killed_at} delivered when a replica was killed at {kill_time:?}, all by {:?}; \
         1Password saw at most {} requests a minute",
        started.elapsed(),
        op.max_requests_per_minute()
    );
    // The tick that delivered the last page prints its line just after.
    std::thread::sleep(Duration::from_millis(1500));
    let outputs = [killed, all.kill(), shard1.kill(), restarted.kill()];

    // What the ticks reported, per tag: events sent but not confirmed.
    let mut unconfirmed: BTreeMap<String, u64> = BTreeMap::new();
    for line in outputs.iter().flatten() {
        let n: usize = line["tenant"].as_str().unwrap()[1..].parse().unwrap();
        for service in Service::ALL {
            let reported = line["services"][service.to_string()]["unconfirmed"].as_u64().unwrap_or(0);
            *unconfirmed.entry(tag(n, service)).or_default() += reported;
        }
    }
    // Shards tick only their own tenants.
    for (output, shard) in [(&outputs[0], "0/2"), (&outputs[2], "1/2"), (&outputs[3], "0/2")] {
        let shard: Shard = shard.parse().unwrap();
        assert!(!output.is_empty(), "shard {shard} ticked nothing");
        assert!(output.iter().all(|l| shard.owns(l["tenant"].as_str().unwrap())), "shard {shard} ticked others");
    }

    let mut repeats_beyond_reported = 0;
    for n in 0..TENANTS {
        for service in Service::ALL {
            let tag = tag(n, service);
            let served = dataset.values(service);
            let mut received = devo.event_values(&tag);
            let got = received.len();
            received.sort_by_key(|v| v.to_string());
            received.dedup();
            assert_eq!(received.len(), served.len(), "{tag}: {} of {} events arrived", received.len(), served.len());
            let repeats = (got - received.len()) as u64;
            repeats_beyond_reported += repeats.saturating_sub(unconfirmed.get(&tag).copied().unwrap_or(0));
        }
    }
    // The killed process may have been between Devo's 2xx and its
    // checkpoint write for at most one page per service of its tenants.
    let killed_shard: Shard = "0/2".parse().unwrap();
    let killed_tenants = (0..TENANTS).filter(|n| killed_shard.owns(&tenant(*n))).count();
    let in_flight_allowance = (killed_tenants * 3 * PAGE) as u64;
    eprintln!("{repeats_beyond_reported} repeats no tick reported (allowed: {in_flight_allowance})");
    assert!(
        repeats_beyond_reported <= in_flight_allowance,
        "{repeats_beyond_reported} events repeated that no tick reported (killed after {killed_at} of {total})"
    );
    assert_eq!(op.rate_limited_count(), 0, "1Password answered 429: the replicas overspent the budget");
    assert!(op.max_requests_per_minute() <= limit);
    for line in outputs.iter().flatten() {
        let text = line.to_string();
        assert!(!text.contains(OP_TOKEN) && !text.contains(DEVO_TOKEN), "secret printed: {text}");
    }
}

/// One tenant, its three services' pages in flight together. (With a dozen
/// 20 s answers in flight, some requests reached the emulator only after
/// others' answers and timed out, in the first replica or in the second
/// after the kill: a matter of the connections to one Devo, not of the
/// leases.)
const FAILOVER_TENANTS: usize = 1;
/// Devo's every answer comes this long after it stored the events: longer
/// than a lease lasts (15 s), under the request timeout (30 s).
const SLOW_DEVO: Duration = Duration::from_secs(20);
/// How long a lease lasts by default (`lease_ttl_ms`).
const LEASE_TTL: Duration = Duration::from_secs(15);

fn failover_tag(n: usize, service: Service) -> String {
    tag(n, service).replacen("replicas.t", "failover.f", 1)
}

#[test]
fn a_replica_killed_mid_tick_is_taken_over_within_the_lease_ttl_with_default_settings() {
    let redis = RedisServer::start();
    let now = chrono::Utc::now();
    let dataset = Dataset::generate(93, EVENTS, now - chrono::Duration::hours(2), chrono::Duration::hours(1));
    let op = OnePasswordEmulator::start(OnePasswordOptions::new(OP_TOKEN, dataset.clone())).unwrap();
    let devo = DevoEmulator::start(DevoOptions { domain: "replicas".into(), token: DEVO_TOKEN.into() }).unwrap();
    // The first replica's first pages are answered late, the rest at once.
    devo.push_faults(vec![DevoFault::AcceptAfter(SLOW_DEVO); 3 * FAILOVER_TENANTS]);

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("failover.toml");
    let mut text = String::from(harness_test_kit::loopback::HOST_SECTION);
    text += "shared_variables = [\"REPLICA_OP_TOKEN\", \"REPLICA_DEVO_TOKEN\"]\n";
    text += "[host.redis]\nreplicas = \"${REPLICA_REDIS_URL}\"\n";
    // No tick_deadline_ms, request_timeout_ms or lease_ttl_ms: the defaults.
    for n in 0..FAILOVER_TENANTS {
        let t = format!("f{n:02}");
        text += &format!(
            "[tenants.{t}]\nschedule = \"* * * * * *\"\nkv = \"redis:replicas\"\n\
             [tenants.{t}.variables]\nbase_url = \"{}\"\ntoken = \"${{REPLICA_OP_TOKEN}}\"\ndevo_url = \"{}\"\n\
             devo_domain = \"replicas\"\ndevo_token = \"${{REPLICA_DEVO_TOKEN}}\"\npage_size = {PAGE}\n\
             tag_audit = \"{}\"\ntag_item_usage = \"{}\"\ntag_sign_in_attempts = \"{}\"\n\n",
            op.base_url(),
            devo.base_url(),
            failover_tag(n, Service::Audit),
            failover_tag(n, Service::ItemUsage),
            failover_tag(n, Service::SignInAttempts),
        );
    }
    std::fs::write(&config, text).unwrap();
    let config = config.to_str().unwrap();
    let url = redis.url(0);
    let tags: Vec<String> = (0..FAILOVER_TENANTS).flat_map(|n| Service::ALL.map(|s| failover_tag(n, s))).collect();

    // The first replica alone: its ticks take every lease, fetch a page per
    // service and send it to Devo, which stores it and answers 20 s later.
    let first = Replica::start(config, &url, None);
    let until = Instant::now() + Duration::from_secs(60);
    while devo.requests().is_empty() && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(20));
    }
    // The first page reached Devo: its answer comes 20 s later.
    let first_at = devo.requests().first().map(|r| r.at).expect("the first replica sent nothing to Devo");
    let second = Replica::start(config, &url, None);
    // Past the lease's 15 s while the first replica's ticks wait on Devo:
    // only renewals keep the second from taking the services over.
    std::thread::sleep((first_at + LEASE_TTL + Duration::from_secs(3)).saturating_duration_since(Instant::now()));
    let first_reports = first.lines.lock().unwrap().clone();
    assert!(first_at.elapsed() < SLOW_DEVO, "the kill must come before Devo answers");
    assert!(devo.total_events() > 0);
    for tag in &tags {
        assert!(
            devo.events(tag).len() <= PAGE,
            "{tag}: the service was sent again while the first replica still worked on it (its lease was \
             not renewed while it waited on Devo, or its tick failed); the first replica's reports: {first_reports:?}"
        );
    }
    let at_kill: BTreeMap<String, usize> = tags.iter().map(|t| (t.clone(), devo.events(t).len())).collect();
    let deferred = second.lines.lock().unwrap().iter().filter(|l| l.contains("another instance is collecting")).count();
    assert!(deferred > 0, "the second replica never met the first one's leases");

    // SIGKILL while every tick of the first replica holds its leases and
    // waits on Devo.
    let _ = first.kill();
    let killed = Instant::now();
    // Another replica resumes each service once its lease lapses: it reads
    // the killed tick's page again (its checkpoint had not moved), and Devo
    // gets it a second time.
    let mut resumed: BTreeMap<String, Duration> = BTreeMap::new();
    let until = killed + Duration::from_secs(60);
    while resumed.len() < tags.len() && Instant::now() < until {
        for tag in &tags {
            if !resumed.contains_key(tag) && devo.events(tag).len() > at_kill[tag] {
                resumed.insert(tag.clone(), killed.elapsed());
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let slowest = resumed.values().max().copied().unwrap_or_default();
    eprintln!("failover: every service resumed by {slowest:?} after the kill ({resumed:?})");
    assert_eq!(resumed.len(), tags.len(), "services never resumed after the kill: {resumed:?}");
    // The lease lapses at most 15 s after the killed tick's last renewal;
    // then the next firing (every second) takes it and sends the page.
    let allowed = LEASE_TTL + Duration::from_secs(3);
    assert!(
        slowest <= allowed,
        "a service resumed {slowest:?} after the kill, more than the lease's {LEASE_TTL:?} plus a firing and a page \
         ({allowed:?}): the killed replica's leases outlived it ({resumed:?})"
    );

    // Every event arrives, and the only repeats are the page each service
    // had in flight at the kill.
    let until = Instant::now() + Duration::from_secs(60);
    while tags.iter().any(|t| devo.events(t).len() < EVENTS + PAGE) && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(1500));
    let lines = second.kill();
    for n in 0..FAILOVER_TENANTS {
        for service in Service::ALL {
            let tag = failover_tag(n, service);
            let mut received = devo.event_values(&tag);
            let got = received.len();
            received.sort_by_key(|v| v.to_string());
            received.dedup();
            assert_eq!(received.len(), dataset.values(service).len(), "{tag}: not every event arrived");
            assert!(
                got - received.len() <= PAGE,
                "{tag}: {} repeats, more than the page in flight",
                got - received.len()
            );
        }
    }
    for line in &lines {
        let text = line.to_string();
        assert!(!text.contains("\"id\":202"), "the surviving replica lost a lease: {text}");
    }
}
