//! The config file's `[host]` section as the `host-harness` command applies
//! it: the runtime of `tick` and `run` is built with its ceilings, a
//! tenant's limit above a ceiling stops the command before any tick, and a
//! changed section at a SIGHUP reload is logged as needing a restart.
//!
//! The ticks here run the hostile test component in its `memory` mode (it
//! grows its linear memory until stopped): the collector itself now fits in
//! the smallest ceiling `[host]` can set (1 MiB), so it could not show the
//! ceiling at work. Needs the release builds that scripts/test.sh makes:
//! `cargo build --release --target wasm32-wasip2 -p onepassword-collector` and
//! the hostile guest (`host-harness/test-kit/hostile-guest/`).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const TOKEN: &str = "host-section-op-token-secret";

/// A tenant that never reaches the network in these tests: it fails (or is
/// stopped) before its first request.
fn tenant(name: &str, schedule: &str, extra: &str) -> String {
    format!(
        "[tenants.{name}]\nschedule = \"{schedule}\"\nunknown_variables_allowed = [\"hostile_mode\"]\n{extra}\n\
         [tenants.{name}.variables]\n\
         base_url = \"http://127.0.0.1:9\"\ntoken = \"${{{}_TOKEN}}\"\n\
         devo_url = \"http://127.0.0.1:9\"\ndevo_domain = \"d\"\ndevo_token = \"x\"\nservices = \"audit\"\n\
         hostile_mode = \"memory\"\n",
        name.to_uppercase()
    )
}

/// The hostile test component, which grows its memory without end.
fn memory_hog() -> String {
    let path = host_harness::runtime::default_component_path().with_file_name("hostile_guest.wasm");
    assert!(path.exists(), "{} is missing: run scripts/test.sh, which builds it", path.display());
    path.to_string_lossy().into_owned()
}

fn harness(dir: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_host-harness"));
    c.args(args).env("ACME_TOKEN", TOKEN).env("BETA_TOKEN", TOKEN).current_dir(dir);
    c
}

#[test]
fn tick_runs_under_the_host_sections_memory_ceiling() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("h.toml");
    // The component grows its memory: stopped at the host's 1 MiB.
    std::fs::write(&config, format!("[host]\nmemory_mib = 1\n\n{}", tenant("acme", "0 * * * * *", ""))).unwrap();
    let out = harness(
        dir.path(),
        &["tick", "--component", &memory_hog(), "--config", config.to_str().unwrap(), "--output", "json"],
    )
    .output()
    .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(!out.status.success(), "{stdout}");
    let line: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    assert_eq!(line["error"]["id"], 900, "{line}");
    let message = line["error"]["message"].as_str().unwrap();
    assert!(message.contains("memory limit exceeded") && message.contains("1.0 MiB"), "{message}");
    assert!(!stdout.contains(TOKEN));
}

#[test]
fn a_tenant_limit_above_the_hosts_ceiling_stops_the_command() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("h.toml");
    let text = format!(
        "[host]\nmemory_mib = 32\n\n{}",
        tenant("acme", "0 * * * * *", "[tenants.acme.limits]\nmemory_mib = 64")
    );
    std::fs::write(&config, text).unwrap();
    for command in ["tick", "validate", "run"] {
        let out = harness(dir.path(), &[command, "--config", config.to_str().unwrap()]).output().unwrap();
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert_eq!(out.status.code(), Some(2), "{command}: {stderr}");
        assert!(
            stderr.contains("tenant acme: limits.memory_mib = 64 is above the host's ceiling memory_mib = 32 ([host])"),
            "{command}: {stderr}"
        );
    }
}

/// Lines of a child's pipe, collected as they come.
fn collect(pipe: impl std::io::Read + Send + 'static) -> Arc<Mutex<Vec<String>>> {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&lines);
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            sink.lock().unwrap().push(line);
        }
    });
    lines
}

fn wait_for(lines: &Mutex<Vec<String>>, text: &str) -> String {
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(line) = lines.lock().unwrap().iter().find(|l| l.contains(text)) {
            return line.clone();
        }
        assert!(Instant::now() < until, "no line with {text:?}: {:?}", lines.lock().unwrap());
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn run_uses_the_host_section_and_a_changed_one_needs_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("h.toml");
    let every_second = tenant("acme", "* * * * * *", "");
    std::fs::write(&config, format!("[host]\nmemory_mib = 1\n\n{every_second}")).unwrap();
    let mut child = harness(
        dir.path(),
        &["run", "--component", &memory_hog(), "--log-format", "json", "--config", config.to_str().unwrap()],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let stdout = collect(child.stdout.take().unwrap());
    let stderr = collect(child.stderr.take().unwrap());
    let tick = wait_for(&stdout, "\"tenant\":\"acme\"");
    assert!(tick.contains("memory limit exceeded"), "{tick}");

    // the same [host] section: no word of it
    let with_beta = format!("{every_second}\n{}", tenant("beta", "0 0 0 1 1 *", ""));
    std::fs::write(&config, format!("[host]\nmemory_mib = 1\n\n{with_beta}")).unwrap();
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGHUP) }, 0);
    wait_for(&stderr, "reloaded: 1 added");
    assert!(!stderr.lock().unwrap().iter().any(|l| l.contains("[host]")), "{:?}", stderr.lock().unwrap());

    // another [host] section: logged, and the running ceiling stays
    std::fs::write(&config, format!("[host]\nmemory_mib = 64\n\n{with_beta}")).unwrap();
    assert_eq!(unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGHUP) }, 0);
    let line = wait_for(&stderr, "[host] section changed");
    assert!(line.contains("restart") && line.contains("\"level\":\"warn\""), "{line}");
    wait_for(&stderr, "reloaded: 0 added, 0 changed, 0 removed");
    let ticks = stdout.lock().unwrap().len();
    let until = Instant::now() + Duration::from_secs(20);
    while stdout.lock().unwrap().len() == ticks {
        assert!(Instant::now() < until, "no tick after the reload");
        std::thread::sleep(Duration::from_millis(50));
    }
    let last = stdout.lock().unwrap().last().unwrap().clone();
    assert!(last.contains("memory limit exceeded"), "still 1 MiB until a restart: {last}");

    let _ = child.kill();
    let _ = child.wait();
    for line in stdout.lock().unwrap().iter().chain(stderr.lock().unwrap().iter()) {
        assert!(!line.contains(TOKEN), "secret printed: {line}");
    }
}
