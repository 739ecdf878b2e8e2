//! A hostile tenant's table next to a victim's, in one config file, under
//! `tick`, `validate` and `run`: whatever the hostile table names — another
//! tenant's secrets, another tenant's store, an address for its store, an
//! operator's file — the victim's secrets, store and events stay the
//! victim's, and nothing reaches loopback that the operator did not allow.
//!
//! The hostile tenant points its URLs at a "spy" listener of its own on
//! loopback: a secret it could read would arrive there.

use harness_test_kit::emulator::{Dataset, DevoEmulator, DevoOptions, OnePasswordEmulator, OnePasswordOptions};
use harness_test_kit::redis_server::RedisServer;
use onepassword_collector::service::Service;
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const ACME_OP_TOKEN: &str = "acme-op-token-the-victims-secret";
const ACME_DEVO_TOKEN: &str = "acmeDevoTokenTheVictims0123456789";
/// A value of mallory's own environment, which its errors must not quote.
const MALLORY_VALUE: &str = "mallory-own-secret-value-42";

/// A listener that counts connections: the hostile tenant's collection point.
struct Spy {
    port: u16,
    connections: Arc<AtomicUsize>,
}

impl Spy {
    fn start() -> Spy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let connections = Arc::new(AtomicUsize::new(0));
        let seen = Arc::clone(&connections);
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                seen.fetch_add(1, Ordering::SeqCst);
                drop(stream);
            }
        });
        Spy { port, connections }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn seen(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

/// A `run` process, killed if the test fails before it stops it.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct World {
    dataset: Dataset,
    _op: OnePasswordEmulator,
    devo: DevoEmulator,
    redis: RedisServer,
    spy: Spy,
    dir: tempfile::TempDir,
    config: std::path::PathBuf,
    victim: String,
}

impl World {
    fn new(seed: u64) -> World {
        let now = chrono::Utc::now();
        let dataset = Dataset::generate(seed, 30, now - chrono::Duration::hours(2), chrono::Duration::hours(1));
        let op = OnePasswordEmulator::start(OnePasswordOptions::new(ACME_OP_TOKEN, dataset.clone())).unwrap();
        let devo = DevoEmulator::start(DevoOptions { domain: "acme".into(), token: ACME_DEVO_TOKEN.into() }).unwrap();
        let redis = RedisServer::start();
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("tenants.toml");
        let victim = format!(
            "[tenants.acme]\nschedule = \"* * * * * *\"\nkv = \"redis:main\"\n[tenants.acme.variables]\n\
             base_url = \"{}\"\ntoken = \"${{ACME_OP_TOKEN}}\"\ndevo_url = \"{}\"\ndevo_domain = \"acme\"\n\
             devo_token = \"${{ACME_DEVO_TOKEN}}\"\nservices = \"audit\"\npage_size = 100\n",
            op.base_url(),
            devo.base_url()
        );
        World { dataset, _op: op, devo, redis, spy: Spy::start(), dir, config, victim }
    }

    /// Mallory's table: its URLs at the spy, plus `extra` lines (variables
    /// after `[variables]`, tenant keys before).
    fn mallory(&self, tenant_keys: &str, variables: &str) -> String {
        format!(
            "[tenants.mallory]\nschedule = \"* * * * * *\"\n{tenant_keys}\n[tenants.mallory.variables]\n\
             base_url = \"{spy}\"\ndevo_url = \"{spy}\"\ndevo_domain = \"m\"\nservices = \"audit\"\n{variables}\n",
            spy = self.spy.url()
        )
    }

    /// The file: `[host]` allowing the loopback emulators (unless `private`
    /// is false) and declaring the operator's Redis, then `tables`.
    fn write(&self, private: bool, tables: &str) {
        let mut host = String::from("[host]\nallow_http = true\n");
        if private {
            host += "allow_private_networks = [\"127.0.0.0/8\"]\n";
        }
        host += "[host.redis]\nmain = \"${REDIS_URL}\"\n\n";
        std::fs::write(&self.config, format!("{host}{tables}")).unwrap();
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_host-harness"));
        let redis_url = self.redis.url(0);
        c.args(args)
            .arg("--config")
            .arg(&self.config)
            .env("ACME_OP_TOKEN", ACME_OP_TOKEN)
            .env("ACME_DEVO_TOKEN", ACME_DEVO_TOKEN)
            .env("MALLORY_OP_TOKEN", "mallory-op-token")
            .env("MALLORY_DEVO_TOKEN", "malloryDevoToken0123456789")
            .env("MALLORY_PAGE", MALLORY_VALUE)
            .env("REDIS_URL", redis_url)
            .current_dir(self.dir.path());
        c
    }

    /// Runs `args` to the end: success, stdout, stderr; no secret of the
    /// victim's or the operator's in either.
    fn harness(&self, args: &[&str]) -> (bool, String, String) {
        let out = self.command(args).output().unwrap();
        let (stdout, stderr) = (String::from_utf8(out.stdout).unwrap(), String::from_utf8(out.stderr).unwrap());
        for text in [&stdout, &stderr] {
            for secret in [ACME_OP_TOKEN, ACME_DEVO_TOKEN, MALLORY_VALUE] {
                assert!(!text.contains(secret), "{secret} shown: {text}");
            }
        }
        (out.status.success(), stdout, stderr)
    }

    /// The victim's audit events arrived, each once.
    fn assert_victim_delivered(&self) {
        let mut got = self.devo.event_values(Service::Audit.default_tag());
        let mut want = self.dataset.values(Service::Audit);
        let key = |v: &serde_json::Value| v["uuid"].as_str().unwrap_or_default().to_string();
        got.sort_by_key(key);
        want.sort_by_key(key);
        assert_eq!(got.len(), want.len(), "every audit event once");
        assert_eq!(got, want);
    }
}

#[test]
fn a_table_naming_another_tenants_secret_is_refused_under_tick_and_validate() {
    let w = World::new(301);
    for (key, victim) in [
        ("token", "${ACME_OP_TOKEN}"),
        ("devo_token", "${ACME_DEVO_TOKEN}"),
        ("page_size", "${ACME_DEVO_TOKEN}"),
        ("obfuscation_key", "${REDIS_URL}"),
        ("tag_audit", "${HOME}"),
    ] {
        let own = if key == "token" { "" } else { "token = \"${MALLORY_OP_TOKEN}\"\n" };
        let devo = if key == "devo_token" { "" } else { "devo_token = \"${MALLORY_DEVO_TOKEN}\"\n" };
        w.write(true, &format!("{}\n{}", w.victim, w.mallory("", &format!("{own}{devo}{key} = \"{victim}\""))));
        for command in ["tick", "validate"] {
            let (ok, stdout, stderr) = w.harness(&[command]);
            assert!(!ok && stdout.is_empty(), "{command} {key}: {stdout}");
            let name = &victim[2..victim.len() - 1];
            assert!(
                stderr.contains(&format!("names ${{{name}}}, which tenant mallory may not read"))
                    && stderr.contains("MALLORY_"),
                "{command} {key}: {stderr}"
            );
        }
    }
    assert_eq!(w.spy.seen(), 0, "nothing reached mallory's server");
    // The same file without the hostile line: the victim delivers.
    w.write(true, &format!("{}\n{}", w.victim, w.mallory("", "token = \"${MALLORY_OP_TOKEN}\"\n")));
    let (_, stdout, _) = w.harness(&["tick", "--tenant", "acme"]);
    assert!(stdout.contains("\"ok\":true"), "{stdout}");
    w.assert_victim_delivered();
}

#[test]
fn a_value_from_the_tenants_own_environment_is_never_quoted() {
    let w = World::new(302);
    let mallory = w.mallory(
        "kv = \"mallory.sqlite\"",
        "token = \"${MALLORY_OP_TOKEN}\"\ndevo_token = \"${MALLORY_DEVO_TOKEN}\"\npage_size = \"${MALLORY_PAGE}\"",
    );
    w.write(true, &format!("{}\n{mallory}", w.victim));
    for command in ["tick", "validate"] {
        // (harness() fails the test if the value is shown anywhere)
        let (_, stdout, _) = w.harness(&[command, "--output", "json"]);
        assert!(stdout.contains("${MALLORY_PAGE}"), "{command} names the variable instead: {stdout}");
    }
    w.assert_victim_delivered();
}

#[test]
fn a_table_cannot_reach_another_tenants_store_nor_an_address_of_its_choosing() {
    let w = World::new(303);
    // The victim collects into the operator's Redis first.
    w.write(true, &w.victim);
    let (ok, _, stderr) = w.harness(&["tick"]);
    assert!(ok, "{stderr}");
    w.assert_victim_delivered();
    let port = w.redis.port();
    let spy = w.spy.port;
    let own = "token = \"${MALLORY_OP_TOKEN}\"\ndevo_token = \"${MALLORY_DEVO_TOKEN}\"";
    let mut attempts: Vec<(String, &str)> = [
        format!("redis://127.0.0.1:{port}/0"),
        format!("redis://localhost:{port}"),
        format!("redis://127.1:{port}/00"),
        format!("redis://LOCALHOST:{port}/?db=0"),
        format!("redis://[::ffff:127.0.0.1]:{port}/0"),
        format!("redis://127.0.0.1:{spy}/0"),
    ]
    .into_iter()
    .map(|url| (format!("kv = {url:?}\nkv_prefix = \"onepassword-collector/acme/\""), "kv no longer takes a Redis URL"))
    .collect();
    attempts.push(("kv = \"${REDIS_URL}\"".into(), "kv no longer reads the environment"));
    attempts.push((
        "kv = \"redis:main\"\nkv_prefix = \"onepassword-collector/acme/\"".into(),
        "must start with \"onepassword-collector/mallory/\"",
    ));
    attempts.push(("kv = \"redis:main\"\nkv_prefix = \"onepassword-collector/\"".into(), "must start with"));
    // Files outside the state folder, and the operator's files inside it.
    std::fs::create_dir_all(w.dir.path().join("state")).unwrap();
    std::fs::write(w.dir.path().join("state/operators-notes"), b"").unwrap();
    std::os::unix::fs::symlink("/dev/stdout", w.dir.path().join("state/out.sqlite")).unwrap();
    for (kv, says) in [
        ("/dev/stdout", "not a file name"),
        ("../tenants.toml", "not a file name"),
        ("state/x.sqlite", "not a file name"),
        ("operators-notes", "not a SQLite store"),
        ("out.sqlite", "not a regular file"),
    ] {
        attempts.push((format!("kv = {kv:?}"), says));
    }
    for (keys, says) in &attempts {
        w.write(true, &format!("{}\n{}", w.victim, w.mallory(keys, own)));
        for command in ["tick", "validate", "status"] {
            let (ok, _, stderr) = w.harness(&[command]);
            assert!(!ok && stderr.contains(says), "{command} with {keys}: {stderr}");
        }
    }
    assert_eq!(w.spy.seen(), 0, "the host connected nowhere for mallory's store");
    assert_eq!(std::fs::metadata(w.dir.path().join("state/operators-notes")).unwrap().len(), 0);
    // The victim's store is intact: another tick finds nothing new and
    // sends nothing twice.
    w.write(true, &w.victim);
    let (ok, stdout, stderr) = w.harness(&["tick", "--output", "json"]);
    assert!(ok && stdout.contains("\"outcome\":\"idle\""), "{stdout}{stderr}");
    w.assert_victim_delivered();
}

#[test]
fn without_allow_private_networks_nothing_reaches_loopback() {
    let w = World::new(304);
    let own = "token = \"${MALLORY_OP_TOKEN}\"\ndevo_token = \"${MALLORY_DEVO_TOKEN}\"";
    w.write(false, &w.mallory("kv = \"mallory.sqlite\"", own));
    let (ok, stdout, _) = w.harness(&["tick", "--output", "json"]);
    assert!(!ok && stdout.contains("allow_private_networks"), "the warning names the setting: {stdout}");
    let spy = w.spy.port;
    w.write(false, &w.mallory(&format!("kv = \"redis://127.0.0.1:{spy}/0\""), own));
    let (ok, _, stderr) = w.harness(&["tick"]);
    assert!(!ok && stderr.contains("kv no longer takes a Redis URL"), "{stderr}");
    assert_eq!(w.spy.seen(), 0, "no connection reached loopback");
}

#[test]
fn run_keeps_the_victim_when_a_reload_brings_a_hostile_table() {
    let w = World::new(305);
    w.write(true, &w.victim);
    let child =
        w.command(&["run", "--log-format", "json"]).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    let mut child = KillOnDrop(child);
    let log = Arc::new(Mutex::new(String::new()));
    let sink = Arc::clone(&log);
    let stderr = child.0.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let mut log = sink.lock().unwrap();
            log.push_str(&line);
            log.push('\n');
        }
    });
    let wait = |text: &str| {
        let until = Instant::now() + Duration::from_secs(20);
        while !log.lock().unwrap().contains(text) {
            assert!(Instant::now() < until, "no {text:?} in:\n{}", log.lock().unwrap());
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    wait("\"tenant\":\"acme\"");
    let hostile = w.mallory("kv = \"redis:main\"", "token = \"${ACME_OP_TOKEN}\"\ndevo_token = \"${ACME_DEVO_TOKEN}\"");
    w.write(true, &format!("{}\n{hostile}", w.victim));
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(child.0.id() as libc::pid_t, libc::SIGHUP) }, 0);
    wait("reload failed, nothing changed");
    let until = Instant::now() + Duration::from_secs(20);
    while w.devo.event_values(Service::Audit.default_tag()).len() < w.dataset.values(Service::Audit).len() {
        assert!(Instant::now() < until, "the victim stopped delivering");
        std::thread::sleep(Duration::from_millis(100));
    }
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(child.0.id() as libc::pid_t, libc::SIGTERM) }, 0);
    child.0.wait().unwrap();
    let log = log.lock().unwrap().clone();
    assert!(log.contains("which tenant mallory may not read"), "{log}");
    for secret in [ACME_OP_TOKEN, ACME_DEVO_TOKEN] {
        assert!(!log.contains(secret), "{secret} in the log");
    }
    assert_eq!(w.spy.seen(), 0, "nothing reached mallory's server");
    w.assert_victim_delivered();
}
