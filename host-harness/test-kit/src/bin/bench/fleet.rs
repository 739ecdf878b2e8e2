//! Part 7, a fleet's minute (issue #18, `--fleet` runs only this part):
//! 10,000 tenants (`--tenants N`) on the default schedule, `0 * * * * *`,
//! ticked for one minute by `host-harness run`'s own scheduler
//! (`host_harness::fleet::Fleet`, the code `cli/src/run.rs` drives) against
//! the loopback emulators (a child process, so its CPU is not ours), with
//! the default `[host]` ceilings (32 instances at once). Once with every
//! tenant's `spread_firings = false` (all fire at second 0, as before
//! spreading), once with spreading on (each at its offset in the minute).
//!
//! The tenants are caught up: a first tick each (`Runtime::tick_all`, not
//! measured) delivers their few events, so the minute holds idle firings,
//! the steady state of a large fleet. The window is one minute of firings,
//! from a minute's second 0; a tick belongs to it by its planned time
//! (`fired_at`). Figures:
//!
//! - peak instances in flight: the most ticks holding an instance slot at
//!   once (from each tick's start, end − `host_elapsed_ms`, to its end);
//!   peak ticks in flight also counts those waiting for a slot;
//! - delay: from a firing's planned time to its tick's start (holding an
//!   instance), p50, p99 and max;
//! - CPU: utime + stime of this process over the minute, in % of one core;
//!   the emulators' beside it;
//! - RSS: the most VmRSS sampled (every 100 ms) during the minute.

use super::{f, mib, n, self_cpu, side_by_side, Bench, Emulators, StateDir, Table};
use chrono::{DateTime, Timelike, Utc};
use host_harness::fleet::{Fleet, Observer};
use host_harness::runtime::{Limits, Runtime, TenantTick};
use host_harness::tenant::Tenant;
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Events per service in the emulator: each tenant's first tick delivers
/// them all (one page), then it is caught up.
const EVENTS: usize = 10;

/// One measured tick: when it was spawned, started (holding an instance)
/// and ended, and its planned time.
struct Timed {
    fired_at: DateTime<Utc>,
    spawned: DateTime<Utc>,
    started: DateTime<Utc>,
    ended: DateTime<Utc>,
    ok: bool,
}

/// What the fleet told, for the ticks planned in the window.
struct Recorder {
    window: (DateTime<Utc>, DateTime<Utc>),
    spawned: Mutex<HashMap<String, DateTime<Utc>>>,
    ticks: Mutex<Vec<Timed>>,
    skipped: Mutex<usize>,
    catch_up: Mutex<usize>,
}

impl Recorder {
    fn in_window(&self, at: DateTime<Utc>) -> bool {
        self.window.0 <= at && at < self.window.1
    }
}

impl Observer for Recorder {
    fn starting(&self, tenant: &Tenant, _fired_at: DateTime<Utc>, _catch_up: bool) {
        self.spawned.lock().unwrap().insert(tenant.name.clone(), Utc::now());
    }

    fn finished(&self, tick: &TenantTick, fired_at: DateTime<Utc>, catch_up: bool) {
        let ended = Utc::now();
        let spawned = self.spawned.lock().unwrap().remove(&tick.tenant).unwrap_or(ended);
        if catch_up {
            *self.catch_up.lock().unwrap() += 1;
            return;
        }
        if !self.in_window(fired_at) {
            return;
        }
        let started = ended - chrono::Duration::milliseconds(tick.host_elapsed_ms as i64);
        self.ticks.lock().unwrap().push(Timed { fired_at, spawned, started, ended, ok: tick.ok() });
    }

    fn skipped(&self, _tenant: &str, fired_at: DateTime<Utc>) {
        if self.in_window(fired_at) {
            *self.skipped.lock().unwrap() += 1;
        }
    }
}

/// The most intervals open at once.
fn peak_overlap(intervals: impl Iterator<Item = (DateTime<Utc>, DateTime<Utc>)>) -> usize {
    let mut edges: Vec<(DateTime<Utc>, i32)> = Vec::new();
    for (from, to) in intervals {
        edges.push((from, 1));
        edges.push((to, -1));
    }
    // An end before a start at the same instant.
    edges.sort();
    let (mut open, mut peak) = (0i32, 0i32);
    for (_, step) in edges {
        open += step;
        peak = peak.max(open);
    }
    peak as usize
}

/// The `q` quantile of sorted `values` (nearest rank).
fn quantile(sorted: &[i64], q: f64) -> i64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1]
}

/// Sleeps until `at` (wall clock).
async fn until(at: DateTime<Utc>) {
    tokio::time::sleep((at - Utc::now()).to_std().unwrap_or_default()).await;
}

/// The next second 0 of a minute after `t`.
fn next_minute(t: DateTime<Utc>) -> DateTime<Utc> {
    let next = (t.timestamp().div_euclid(60) + 1) * 60;
    DateTime::from_timestamp(next, 0).expect("a time")
}

/// What one minute measured.
struct Minute {
    window: DateTime<Utc>,
    ticks: Vec<Timed>,
    skipped: usize,
    catch_up: usize,
    cpu: f64,
    emulators_cpu: f64,
    rss_peak: u64,
    last_end: Option<DateTime<Utc>>,
}

/// One minute of the fleet's firings, with `spread_firings` set as given.
async fn minute(runtime: &Runtime, emulators: &Emulators, tenants: &[Tenant], spread: bool) -> anyhow::Result<Minute> {
    // Start at least 5 s before a minute's second 0, so the fleet fires no
    // burst just before the window.
    if next_minute(Utc::now()) - Utc::now() < chrono::Duration::seconds(5) {
        until(next_minute(Utc::now()) + chrono::Duration::milliseconds(500)).await;
    }
    let t0 = next_minute(Utc::now());
    let end = t0 + chrono::Duration::seconds(60);
    let recorder = Arc::new(Recorder {
        window: (t0, end),
        spawned: Mutex::default(),
        ticks: Mutex::default(),
        skipped: Mutex::default(),
        catch_up: Mutex::default(),
    });
    let fleet = Fleet::new(runtime.clone(), Arc::clone(&recorder) as Arc<dyn Observer>);
    let workers: Vec<_> = tenants.iter().map(|t| fleet.start(Tenant { spread_firings: spread, ..t.clone() })).collect();
    until(t0).await;
    let (cpu0, emu0) = (self_cpu(), emulators.cpu());
    let mut rss_peak = 0;
    while Utc::now() < end {
        rss_peak = rss_peak.max(side_by_side::status_field("self", "VmRSS:"));
        tokio::time::sleep(Duration::from_millis(100).min((end - Utc::now()).to_std().unwrap_or_default())).await;
    }
    let (cpu, emulators_cpu) = (self_cpu() - cpu0, emulators.cpu() - emu0);
    // The window's last firings start; then no more.
    until(end + chrono::Duration::seconds(1)).await;
    fleet.stop_firing();
    if !fleet.wait(Duration::from_secs(600)).await {
        anyhow::bail!("ticks still running 10 minutes after the window");
    }
    drop(workers);
    let ticks = std::mem::take(&mut *recorder.ticks.lock().unwrap());
    let last_end = ticks.iter().map(|t| t.ended).max();
    let skipped = *recorder.skipped.lock().unwrap();
    let catch_up = *recorder.catch_up.lock().unwrap();
    Ok(Minute { window: t0, ticks, skipped, catch_up, cpu, emulators_cpu, rss_peak, last_end })
}

/// Part 7: prints the fleet table.
pub(crate) async fn run(component: &Path, tenants: usize, state_parent: &Path) -> anyhow::Result<()> {
    let (data_start, span) = super::dataset_window();
    let emulators = Emulators::start(EVENTS, data_start, span)?;
    // tmpfs when there is one: the figure is the scheduler's, not a disk's.
    let shm = Path::new("/dev/shm");
    let parent = if shm.is_dir() && super::fs_type(shm) == "tmpfs" { shm } else { state_parent };
    let dir = StateDir::create(&parent.join("fleet"))?;
    let bench = Bench { emulators: &emulators, dirs: vec![], data_start };
    let fleet: Vec<Tenant> = (0..tenants).map(|i| bench.tenant(&dir, &format!("fleet-{i:05}"), &[])).collect();
    let limits = Limits::default();
    let slots = limits.max_concurrent_instances;
    let runtime = harness_test_kit::loopback::runtime(component, limits)?;
    println!(
        "part 7: {} tenants on \"0 * * * * *\", {slots} instance slots, kv in {} ({}); first ticks…",
        n(tenants as f64),
        dir.path.display(),
        dir.fs
    );
    let started = Instant::now();
    let first = runtime.tick_all(&fleet, slots).await;
    let ok = first.iter().filter(|t| t.ok()).count();
    let delivered: u64 = first.iter().map(super::sent).sum();
    println!(
        "part 7: first ticks {ok}/{} ok, {} events delivered, in {} s; caught up, the measured minutes \
         hold idle firings",
        first.len(),
        n(delivered as f64),
        f(started.elapsed().as_secs_f64(), 1)
    );
    if let Some(bad) = first.iter().find(|t| !t.ok()) {
        println!("   ! a first tick failed: {}", bad.to_json());
    }
    drop(first);
    let mut table = Table::new(
        &format!(
            "7. A fleet's minute: {} caught-up tenants on \"0 * * * * *\" under run's scheduler, {slots} instance \
             slots; one minute of firings (by planned time)",
            n(tenants as f64)
        ),
        &[
            "firings",
            "ticks ok",
            "skipped",
            "peak instances",
            "peak ticks in flight",
            "delay p50 ms",
            "delay p99 ms",
            "delay max ms",
            "last tick ends",
            "CPU % of a core",
            "emulators CPU %",
            "RSS peak MiB",
        ],
    );
    for spread in [false, true] {
        let label = if spread { "spread (default)" } else { "exact second (spread_firings = false)" };
        let m = minute(&runtime, &emulators, &fleet, spread).await?;
        let mut delays: Vec<i64> = m.ticks.iter().map(|t| (t.started - t.fired_at).num_milliseconds()).collect();
        delays.sort_unstable();
        let instances = peak_overlap(m.ticks.iter().map(|t| (t.started, t.ended)));
        let in_flight = peak_overlap(m.ticks.iter().map(|t| (t.spawned, t.ended)));
        let ok = m.ticks.iter().filter(|t| t.ok).count();
        let last = m.last_end.map_or("-".into(), |e| format!("+{} s", f((e - m.window).as_seconds_f64(), 1)));
        table.row(vec![
            label.into(),
            format!("{ok}/{}", m.ticks.len()),
            m.skipped.to_string(),
            instances.to_string(),
            in_flight.to_string(),
            n(quantile(&delays, 0.5) as f64),
            n(quantile(&delays, 0.99) as f64),
            n(delays.last().copied().unwrap_or(0) as f64),
            last,
            f(m.cpu / 60.0 * 100.0, 1),
            f(m.emulators_cpu / 60.0 * 100.0, 1),
            mib(m.rss_peak),
        ]);
        println!(
            "part 7: {label}: window from {}, {} ticks, {} catch-up ticks",
            m.window.with_nanosecond(0).unwrap_or(m.window),
            m.ticks.len(),
            m.catch_up
        );
    }
    let _ = std::fs::remove_dir_all(&dir.path);
    table.print();
    println!(
        "   A tick's start is when it holds an instance slot (its end − host_elapsed_ms); \"ticks in flight\" \
         also counts those waiting for a slot. \"last tick ends\": the window's last tick, after its first \
         second 0. CPU: utime+stime over the minute; RSS: the most VmRSS sampled every 100 ms in it."
    );
    Ok(())
}
