//! Part 5, side by side (issue #11): the release `host-harness run` process
//! and a plain Python poller (`bench/python_poller.py`: requests + json)
//! move the same 60,000 events (v2, pages of 1000, gzip) from a fresh
//! 1Password emulator to a fresh Devo receiver, one after the other. For
//! each peer process: CPU time, peak RSS and wall time until the last event
//! was stored by the Devo emulator, and whether every event arrived once and
//! as served. Devo's own collector is a reference row from its docs, not run.
//!
//! Both peers are separate processes, so what is measured is theirs alone:
//! the emulators run in their own child process, and this process only
//! polls /proc and asks the emulators for their count.

use super::{
    cpu_seconds, dataset_window, f, fs_type, mib, n, Emulators, Table, DEVO_DOMAIN, DEVO_TOKEN, OP_TOKEN, PAGE,
};
use chrono::SecondsFormat;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant, SystemTime};

/// Per service; three services make the 60,000 events of the issue.
const PER_SERVICE: usize = 20_000;
const TOTAL: usize = 3 * PER_SERVICE;
/// Both peers take seconds; this only keeps a wedged one from hanging the bench.
const TIMEOUT: Duration = Duration::from_secs(180);
/// How often the peer's VmHWM and the Devo count are read.
const POLL: Duration = Duration::from_millis(10);
/// The harness is left running this long after it caught up, to show what
/// its schedule costs while there is nothing to move.
const IDLE: Duration = Duration::from_secs(3);
const TENANT: &str = "side-by-side";
/// Enough pages per tick for one tick to drain the whole backlog, as an
/// operator catching up would set it; the Python poller also drains in one go.
const MAX_PAGES_PER_TICK: usize = 100;
/// Devo's documentation of its own 1Password collector shows these RSS
/// figures for its two processes (../shared/reference/devo-collector.md).
const DEVO_COLLECTOR_RSS_MIB: (f64, f64) = (34.0, 28.0);

pub(crate) struct Options {
    /// The release `host-harness` binary.
    pub harness: PathBuf,
    /// The Python interpreter.
    pub python: String,
    pub component: PathBuf,
    /// Where the peers' state and logs go (removed afterwards unless a peer failed).
    pub parent: PathBuf,
}

/// One peer's measured run.
struct PeerRun {
    peer: String,
    watched: Watched,
    check: Check,
    notes: Vec<String>,
    failed: bool,
}

pub(crate) fn run(options: &Options) -> anyhow::Result<()> {
    let work = options.parent.join(format!("onepassword-bench-sbs-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let component_size = std::fs::metadata(&options.component).map(|m| m.len()).unwrap_or(0);
    let mut runs = Vec::new();
    match harness(options, &work) {
        Ok(run) => runs.push(run),
        Err(e) => println!("   ! host-harness run not measured: {e:#}"),
    }
    match python(options, &work) {
        Ok(run) => runs.push(run),
        Err(e) => println!("   ! Python poller not measured: {e:#}"),
    }
    print_table(&runs);
    println!(
        "   Component {} KiB ({} bytes); state and logs in {} ({}).",
        n(component_size as f64 / 1024.0),
        n(component_size as f64),
        work.display(),
        fs_type(&work)
    );
    if runs.iter().any(|r| r.failed) {
        println!("   Logs and state kept in {}", work.display());
    } else {
        let _ = std::fs::remove_dir_all(&work);
    }
    Ok(())
}

fn print_table(runs: &[PeerRun]) {
    let title = format!(
        "5. Side by side (issue #11): {} events ({} per service, API v2, pages of {PAGE}, gzip) from a fresh 1Password \
         emulator to a fresh Devo receiver, one peer process at a time",
        n(TOTAL as f64),
        n(PER_SERVICE as f64)
    );
    let mut table = Table::new(
        &title,
        &[
            "peer",
            "events at Devo",
            "distinct",
            "as served",
            "wall s",
            "first event s",
            "CPU s",
            "µs CPU/event",
            "peak RSS MiB",
        ],
    );
    for r in runs {
        let w = &r.watched;
        table.row(vec![
            r.peer.clone(),
            n(w.delivered as f64),
            n(r.check.distinct as f64),
            n(r.check.as_served as f64),
            f(w.wall, 2),
            w.first_event.map_or("–".into(), |s| f(s, 2)),
            f(w.cpu, 2),
            f(w.cpu * 1e6 / w.delivered.max(1) as f64, 2),
            mib(w.peak_rss),
        ]);
    }
    let (a, b) = DEVO_COLLECTOR_RSS_MIB;
    table.row(vec![
        "Devo's own collector (reference, not run)".into(),
        "–".into(),
        "–".into(),
        "–".into(),
        "–".into(),
        "–".into(),
        "–".into(),
        "–".into(),
        format!("{a:.0} + {b:.0} = {:.0}", a + b),
    ]);
    table.print();
    for r in runs {
        for note in &r.notes {
            println!("   {}: {note}", r.peer);
        }
    }
    println!(
        "   CPU: utime+stime of the peer process from /proc/PID/stat when the Devo emulator had stored the last \
         event (10 ms resolution); peak RSS: its VmHWM, read every {} ms; wall: from spawning the process to the \
         last event stored; first event: spawning to the first event stored (start-up, and for the harness the \
         wait for its first cron firing). distinct: distinct uuids per tag; as served: events equal (as JSON \
         values) to the event 1Password served under that uuid.",
        POLL.as_millis()
    );
    println!(
        "   Devo's own collector: its documentation shows about {} MiB + {} MiB RSS for its two processes; it \
         publishes no CPU figure.",
        DEVO_COLLECTOR_RSS_MIB.0, DEVO_COLLECTOR_RSS_MIB.1
    );
    let per_event = |r: &PeerRun| r.watched.cpu * 1e6 / r.watched.delivered.max(1) as f64;
    let (Some(h), Some(p)) =
        (runs.iter().find(|r| r.peer.starts_with("host-harness")), runs.iter().find(|r| r.peer.starts_with("python")))
    else {
        return;
    };
    let (hc, pc) = (per_event(h), per_event(p));
    let ratio = |a: f64, b: f64| if b > 0.0 { format!("{}×", f(a / b, 2)) } else { "–".into() };
    println!(
        "   Python / harness: CPU per event {}, peak RSS {}, wall {}. Devo's collector / harness, RSS: {}.",
        ratio(pc, hc),
        ratio(p.watched.peak_rss as f64, h.watched.peak_rss as f64),
        ratio(p.watched.wall, h.watched.wall),
        ratio((DEVO_COLLECTOR_RSS_MIB.0 + DEVO_COLLECTOR_RSS_MIB.1) * 1024.0 * 1024.0, h.watched.peak_rss as f64)
    );
    println!(
        "   Issue #11's target: the harness at ≤ 4 µs CPU per event and ≥ 5× below the Python poller. This run: {} µs, \
         {} below.",
        f(hc, 2),
        ratio(pc, hc)
    );
}

// ---------------------------------------------------------------------------
// The peers

fn harness(options: &Options, work: &Path) -> anyhow::Result<PeerRun> {
    anyhow::ensure!(
        options.harness.is_file(),
        "{} is missing: build it with cargo build --release -p host-harness-cli (or give --harness)",
        options.harness.display()
    );
    let dir = work.join("harness");
    std::fs::create_dir_all(&dir)?;
    let mut emulators = start_emulators()?;
    let tenants = dir.join("tenants.toml");
    let warm_up = dir.join("warm-up.toml");
    std::fs::write(&tenants, tenants_file(&emulators, "state.sqlite"))?;
    std::fs::write(&warm_up, tenants_file(&emulators, "warm-up.sqlite"))?;
    let cache = dir.join("compile-cache");
    let component = options.component.to_string_lossy().into_owned();
    let common = |config: &Path| -> Vec<String> {
        vec![
            "--config".into(),
            config.to_string_lossy().into_owned(),
            "--compile-cache".into(),
            cache.to_string_lossy().into_owned(),
            "--component".into(),
            component.clone(),
        ]
    };
    let mut notes = Vec::new();
    // A real deployment starts from a filled compile cache; `validate` fills
    // it (and proves the setup) on a store of its own, moving no events.
    let validate =
        Command::new(&options.harness).arg("validate").args(common(&warm_up)).args(["--output", "json"]).output()?;
    if !validate.status.success() {
        let (out, err) = (String::from_utf8_lossy(&validate.stdout), String::from_utf8_lossy(&validate.stderr));
        notes.push(format!("! the warm-up validate failed: {} {}", out.trim(), err.trim()));
    }
    let cached = cache_files(&cache);

    let stdout = std::fs::File::create(dir.join("run.stdout"))?;
    let stderr = std::fs::File::create(dir.join("run.stderr"))?;
    let started = Instant::now();
    let mut child = Command::new(&options.harness)
        .arg("run")
        .args(common(&tenants))
        .args(["--grace-period", "10"])
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .spawn()?;
    let watched = watch(&child, started, &mut emulators);
    let pid = child.id().to_string();
    let mut failed = watched.as_ref().map_or(true, |w| w.delivered < TOTAL || w.exited);
    if !failed {
        // An empty tick every second from here on.
        let before = cpu_seconds(&pid);
        std::thread::sleep(IDLE);
        let idle = cpu_seconds(&pid) - before;
        notes.push(format!(
            "caught up, it used {} ms of CPU per second over the next {} s (an empty tick every second)",
            f(idle * 1e3 / IDLE.as_secs_f64(), 1),
            IDLE.as_secs()
        ));
    }
    let status = terminate(&mut child)?;
    let watched = watched?;
    if !status.success() {
        failed = true;
        notes.push(format!("! the run process ended with {status} after SIGTERM"));
    }
    let check = Check::ask(&mut emulators)?;
    failed |= !check.complete();
    if cache_files(&cache) != cached || cached.is_empty() {
        notes.push("! the compile cache changed during the run: its figures include compiling the component".into());
    }
    let ticks = Ticks::read(&dir.join("run.stdout"));
    notes.push(format!(
        "one tenant, three services, page_size {PAGE}, max_pages_per_tick {MAX_PAGES_PER_TICK}, schedule every \
         second, kv SQLite on {}, compile cache filled beforehand by validate; {} tick(s) until stopped ({} failed), \
         guest (WebAssembly) CPU {} s in all, peak linear memory {} MiB",
        fs_type(&dir),
        ticks.count,
        ticks.failed,
        f(ticks.guest_cpu_ms as f64 / 1e3, 2),
        mib(ticks.peak_memory)
    ));
    if let Some(error) = ticks.first_error {
        notes.push(format!("! a tick failed: {error}"));
        failed = true;
    }
    let emulator_cpu = emulators.cpu();
    drop(emulators);
    notes.push(format!("the emulators' process used {} s CPU over this run", f(emulator_cpu, 2)));
    Ok(PeerRun { peer: "host-harness run (release)".into(), watched, check, notes, failed })
}

fn python(options: &Options, work: &Path) -> anyhow::Result<PeerRun> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/python_poller.py");
    let probe = Command::new(&options.python)
        .args(["-c", "import sys, requests; print(sys.version.split()[0], requests.__version__)"])
        .output();
    let versions = match probe {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        _ => anyhow::bail!(
            "{} with the requests package is needed: install Python 3 (apt-get install python3) and run \
             `{} -m pip install requests` (or give --python)",
            options.python,
            options.python
        ),
    };
    let (python_version, requests_version) = versions.split_once(' ').unwrap_or((&versions, "?"));
    let dir = work.join("python");
    std::fs::create_dir_all(&dir)?;
    let mut emulators = start_emulators()?;
    let data_start = start_time(&emulators);
    let stderr_path = dir.join("poller.stderr");
    let started = Instant::now();
    let mut child = Command::new(&options.python)
        .arg(&script)
        .args(["--base-url", emulators.op_url.as_str(), "--devo-url", emulators.devo_url.as_str()])
        .args(["--devo-domain", DEVO_DOMAIN, "--start-time", data_start.as_str()])
        .arg("--state")
        .arg(dir.join("state.json"))
        .args(["--limit", PAGE.to_string().as_str()])
        .env("OP_TOKEN", OP_TOKEN)
        .env("DEVO_TOKEN", DEVO_TOKEN)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr_path)?)
        .spawn()?;
    let watched = watch(&child, started, &mut emulators);
    let status = wait_at_most(&mut child, Duration::from_secs(30))?;
    let watched = watched?;
    let mut notes = vec![format!(
        "Python {python_version}, requests {requests_version}, gzip level 1 (the collector's), cursors in a JSON \
         file on {}",
        fs_type(&dir)
    )];
    let mut failed = watched.delivered < TOTAL;
    if !status.success() {
        failed = true;
        let said = std::fs::read_to_string(&stderr_path).unwrap_or_default();
        notes.push(format!("! the poller ended with {status}: {}", said.lines().last().unwrap_or("")));
    }
    let check = Check::ask(&mut emulators)?;
    failed |= !check.complete();
    let emulator_cpu = emulators.cpu();
    drop(emulators);
    notes.push(format!("the emulators' process used {} s CPU over this run", f(emulator_cpu, 2)));
    Ok(PeerRun { peer: "python3 poller (requests + json)".into(), watched, check, notes, failed })
}

fn start_emulators() -> anyhow::Result<Emulators> {
    let (start, span) = dataset_window();
    Emulators::start(PER_SERVICE, start, span)
}

/// The data set's first instant: both peers start collecting from it.
fn start_time(emulators: &Emulators) -> String {
    emulators.data_start.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// One tenant, the three services, draining as fast as the collector may.
/// The `[host]` section allows plain http to loopback, which the emulators
/// need and the host's default outbound policy refuses.
fn tenants_file(emulators: &Emulators, kv: &str) -> String {
    let start = start_time(emulators);
    format!(
        r#"[host]
allow_http = true
allow_private_networks = ["127.0.0.0/8"]

[tenants.{TENANT}]
schedule = "* * * * * *"
kv = "{kv}"

[tenants.{TENANT}.variables]
base_url = "{op}"
token = "{OP_TOKEN}"
devo_url = "{devo}"
devo_domain = "{DEVO_DOMAIN}"
devo_token = "{DEVO_TOKEN}"
api_version = "v2"
services = "audit,item_usage,sign_in_attempts"
page_size = "{PAGE}"
devo_gzip = "true"
start_time_value = "{start}"
max_pages_per_tick = "{MAX_PAGES_PER_TICK}"
max_requests_per_minute = "600"
max_requests_per_hour = "30000"
"#,
        op = emulators.op_url,
        devo = emulators.devo_url,
    )
}

/// The compile cache's files with their sizes and times, to see whether the
/// run wrote (so compiled) anything.
fn cache_files(dir: &Path) -> Vec<(PathBuf, u64, Option<SystemTime>)> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.metadata().ok().map(|m| (e.path(), m.len(), m.modified().ok())))
        .collect();
    files.sort();
    files
}

// ---------------------------------------------------------------------------
// Watching a peer

/// What a peer process had used when the last event reached Devo (or when it
/// exited, or the bench gave up on it).
struct Watched {
    delivered: usize,
    wall: f64,
    first_event: Option<f64>,
    cpu: f64,
    peak_rss: u64,
    exited: bool,
}

fn watch(child: &Child, started: Instant, emulators: &mut Emulators) -> anyhow::Result<Watched> {
    let pid = child.id().to_string();
    let mut peak_rss = 0;
    let mut first_event = None;
    loop {
        // VmHWM is gone once the process has exited: read it while it runs.
        peak_rss = peak_rss.max(status_field(&pid, "VmHWM:"));
        // Whether it exited is read before the count, so the count then
        // holds everything it delivered.
        let exited = exited(&pid);
        let delivered = emulators.delivered()?;
        let elapsed = started.elapsed().as_secs_f64();
        if delivered > 0 && first_event.is_none() {
            first_event = Some(elapsed);
        }
        if delivered >= TOTAL || exited || started.elapsed() > TIMEOUT {
            // An exited child is a zombie until it is waited for, and a
            // zombie's stat still holds its CPU time.
            let cpu = cpu_seconds(&pid);
            return Ok(Watched { delivered, wall: elapsed, first_event, cpu, peak_rss, exited });
        }
        std::thread::sleep(POLL);
    }
}

/// A field of /proc/PID/status in bytes (0 when unreadable); PID may be `self`.
pub(crate) fn status_field(pid: &str, name: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// True once the process is a zombie (exited, not yet waited for) or gone.
fn exited(pid: &str) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return true };
    stat.rfind(')').and_then(|i| stat[i + 1..].split_whitespace().next()).is_none_or(|state| state == "Z")
}

/// SIGTERM (the harness stops gracefully on it), then SIGKILL if it lingers.
fn terminate(child: &mut Child) -> anyhow::Result<ExitStatus> {
    if child.try_wait()?.is_none() {
        let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    }
    wait_at_most(child, Duration::from_secs(15))
}

fn wait_at_most(child: &mut Child, limit: Duration) -> anyhow::Result<ExitStatus> {
    let until = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if Instant::now() > until {
            child.kill()?;
            return Ok(child.wait()?);
        }
        std::thread::sleep(POLL);
    }
}

// ---------------------------------------------------------------------------
// What arrived

/// What the Devo emulator holds, summed over the three tags.
#[derive(Default)]
struct Check {
    received: usize,
    distinct: usize,
    as_served: usize,
    served: usize,
}

impl Check {
    fn ask(emulators: &mut Emulators) -> anyhow::Result<Check> {
        let answer: Value = serde_json::from_str(&emulators.ask("check")?)?;
        let mut check = Check::default();
        for per_tag in answer.as_object().into_iter().flat_map(|o| o.values()) {
            let field = |name: &str| per_tag[name].as_u64().unwrap_or(0) as usize;
            check.received += field("received");
            check.distinct += field("distinct");
            check.as_served += field("as_served");
            check.served += field("served");
        }
        Ok(check)
    }

    /// Every served event arrived exactly once, unchanged.
    fn complete(&self) -> bool {
        self.served == TOTAL && self.received == TOTAL && self.distinct == TOTAL && self.as_served == TOTAL
    }
}

/// The run process's JSON lines, one per tick.
#[derive(Default)]
struct Ticks {
    count: usize,
    failed: usize,
    guest_cpu_ms: u64,
    peak_memory: u64,
    first_error: Option<String>,
}

impl Ticks {
    fn read(path: &Path) -> Ticks {
        let mut ticks = Ticks::default();
        let text = std::fs::read_to_string(path).unwrap_or_default();
        for line in text.lines().filter_map(|l| serde_json::from_str::<Value>(l).ok()) {
            ticks.count += 1;
            ticks.guest_cpu_ms += line["guest_cpu_ms"].as_u64().unwrap_or(0);
            ticks.peak_memory = ticks.peak_memory.max(line["peak_memory_bytes"].as_u64().unwrap_or(0));
            if line["ok"] != Value::Bool(true) {
                ticks.failed += 1;
                if ticks.first_error.is_none() {
                    ticks.first_error = Some(line["error"].to_string());
                }
            }
        }
        ticks
    }
}
