//! Part 6, draining a backlog (issue #20): with default settings (pages of
//! 1000, a budget of 500 requests a minute, a 30 s tick deadline), how long
//! the component takes to deliver a backlog of 1,000,000 events on one
//! service, and of 300,000 on each of three, under two schedules:
//!
//! - **run**: `host-harness run`'s catch-up rule (`host_harness::catch_up::catch_up_at` in the host library, as
//!   `cli/src/run.rs` uses it): after a tick that ended with more
//!   waiting, the next one at once, or when the spent budget frees up; else
//!   at the next firing of a one-minute schedule.
//! - **Spin cron**: one tick per firing of a one-minute schedule, each all
//!   its firing gets (as Spin's cron trigger runs the component).
//!
//! The figure is the time from the first firing to the end of the tick
//! that delivered the last event, against the budget-bound minimum, pages
//! ÷ `max_requests_per_minute`. Waiting is not slept: the clock the
//! component and the 1Password emulator see (its rate limit windows) is the
//! real one plus an offset (`TickOptions::clock_offset`, the emulator's
//! shared clock), and the offset jumps to the next tick's time instead. A
//! tick itself runs in real time, its own waits for the budget included, so
//! the figure is real ticks separated by virtual waits. 1Password's own
//! limits (600 a minute, 30,000 an hour, fixed windows) are enforced by the
//! emulator: a 429 would show. Devo's events are compared with what was
//! served: exactly once, or not.

use super::{f, mib, n, Table, DEVO_DOMAIN, DEVO_TOKEN, OP_TOKEN, PAGE};
use chrono::{DateTime, Utc};
use harness_test_kit::emulator::{Dataset, DevoEmulator, DevoOptions, OnePasswordEmulator, OnePasswordOptions};
use host_harness::catch_up::catch_up_at;
use host_harness::runtime::{Limits, Runtime, TickOptions};
use host_harness::tenant::Tenant;
use onepassword_collector::budget::DEFAULT_PER_MINUTE;
use onepassword_collector::service::Service;
use std::path::Path;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const SEED: u64 = 20_261_204;
/// A run that has not drained after this many ticks is reported as such.
const MAX_TICKS: usize = 2_000;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Schedule {
    Run,
    SpinCron,
}

impl Schedule {
    fn name(self) -> &'static str {
        match self {
            Schedule::Run => "run (catch-up)",
            Schedule::SpinCron => "Spin cron (1 tick/firing)",
        }
    }
}

/// One backlog: events per service.
struct Backlog {
    name: String,
    services: Vec<(Service, usize)>,
}

impl Backlog {
    fn events(&self) -> usize {
        self.services.iter().map(|(_, n)| n).sum()
    }

    fn pages(&self) -> usize {
        self.services.iter().map(|(_, n)| n.div_ceil(PAGE)).sum()
    }

    /// Pages ÷ the budget a minute.
    fn minimum(&self) -> Duration {
        Duration::from_secs_f64(self.pages() as f64 / f64::from(DEFAULT_PER_MINUTE) * 60.0)
    }
}

/// What one drain measured.
struct Drained {
    ticks: usize,
    /// From the first firing to the end of the tick that delivered the last
    /// event, on the component's clock.
    took: Option<Duration>,
    real: Duration,
    most_in_a_minute: usize,
    rate_limited: usize,
    exactly_once: bool,
    peak_memory: u64,
    guest_cpu_max_ms: u64,
    failures: Vec<String>,
}

/// The clock the component and the 1Password emulator see: the real one
/// plus an offset in milliseconds that only moves forward.
#[derive(Clone)]
struct Clock(Arc<AtomicI64>);

impl Clock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now() + chrono::Duration::milliseconds(self.0.load(Ordering::SeqCst))
    }

    /// Moves the clock to `at`, if that is ahead.
    fn jump_to(&self, at: DateTime<Utc>) {
        let ahead = (at - self.now()).num_milliseconds();
        if ahead > 0 {
            self.0.fetch_add(ahead, Ordering::SeqCst);
        }
    }

    fn options(&self) -> TickOptions {
        let offset = self.0.load(Ordering::SeqCst).max(0) as u64;
        TickOptions { clock_offset: Duration::from_millis(offset), ..TickOptions::default() }
    }
}

/// The next firing of a one-minute schedule (second 0) after `t`.
fn next_minute(t: DateTime<Utc>) -> DateTime<Utc> {
    let next = (t.timestamp().div_euclid(60) + 1) * 60;
    DateTime::from_timestamp(next, 0).expect("a time")
}

/// Drains `backlog` from fresh emulators and a fresh store under
/// `schedule`.
async fn drain(
    runtime: &Runtime,
    dataset: &Dataset,
    backlog: &Backlog,
    schedule: Schedule,
    state: &Path,
) -> anyhow::Result<Drained> {
    let clock = Clock(Arc::new(AtomicI64::new(0)));
    let op = OnePasswordEmulator::start(OnePasswordOptions::new(OP_TOKEN, dataset.clone()))?;
    let seen = clock.clone();
    op.set_clock(Arc::new(move || seen.now()));
    op.set_rate_limit(Some(600), Some(30_000));
    let devo = DevoEmulator::start(DevoOptions { domain: DEVO_DOMAIN.into(), token: DEVO_TOKEN.into() })?;
    let services: Vec<&str> = backlog.services.iter().map(|(s, _)| s.name()).collect();
    let mut variables = harness_test_kit::emulator::tenant_variables(&op, OP_TOKEN, &devo, DEVO_DOMAIN, DEVO_TOKEN);
    variables.insert("services".into(), services.join(","));
    let name = format!("drain-{}", std::process::id());
    let tenant = Tenant {
        name: name.clone(),
        schedule: "0 * * * * *".into(),
        spread_firings: true,
        kv: state.join(format!("{name}-{}.sqlite", backlog.services.len())).into(),
        variables,
        environment: Default::default(),
        allowed_outbound_hosts: None,
        limits: Default::default(),
    };
    let _ = std::fs::remove_file(state.join(format!("{name}-{}.sqlite", backlog.services.len())));
    let expected = backlog.events();
    let real = Instant::now();
    // The first firing.
    clock.jump_to(next_minute(clock.now()));
    let first_firing = clock.now();
    let mut result = Drained {
        ticks: 0,
        took: None,
        real: Duration::ZERO,
        most_in_a_minute: 0,
        rate_limited: 0,
        exactly_once: false,
        peak_memory: 0,
        guest_cpu_max_ms: 0,
        failures: Vec::new(),
    };
    let mut backlog_known = false;
    while result.ticks < MAX_TICKS {
        let tick = runtime.tick_with(&tenant, &clock.options()).await;
        result.ticks += 1;
        result.peak_memory = result.peak_memory.max(tick.peak_memory_bytes);
        result.guest_cpu_max_ms = result.guest_cpu_max_ms.max(tick.guest_cpu_ms);
        if !tick.ok() && result.failures.len() < 3 {
            result.failures.push(tick.to_json().to_string());
        }
        let now = clock.now();
        if devo.total_events() >= expected {
            result.took = Some((now - first_firing).to_std().unwrap_or_default());
            break;
        }
        let next = match schedule {
            Schedule::Run => {
                let at = catch_up_at(&tick, now, backlog_known);
                backlog_known = at.is_some();
                at.filter(|at| *at < next_minute(now)).unwrap_or_else(|| next_minute(now))
            }
            Schedule::SpinCron => next_minute(now),
        };
        clock.jump_to(next);
    }
    result.real = real.elapsed();
    let mut times: Vec<DateTime<Utc>> =
        op.requests().iter().filter(|r| !r.path.ends_with("/introspect")).map(|r| r.clock_time).collect();
    times.sort();
    let mut first = 0;
    for (last, t) in times.iter().enumerate() {
        while (*t - times[first]).num_milliseconds() > 60_000 {
            first += 1;
        }
        result.most_in_a_minute = result.most_in_a_minute.max(last - first + 1);
    }
    result.rate_limited = op.rate_limited_count();
    result.exactly_once =
        backlog.services.iter().all(|(service, _)| devo.events(service.default_tag()) == dataset.events(*service));
    Ok(result)
}

/// Part 6: prints the drain table.
pub(crate) async fn run(component: &Path, quick: bool, state_parent: &Path) -> anyhow::Result<()> {
    let scale = if quick { 10 } else { 1 };
    let backlogs = [
        Backlog {
            name: format!("{} on one service", n((1_000_000 / scale) as f64)),
            services: vec![(Service::Audit, 1_000_000 / scale)],
        },
        Backlog {
            name: format!("3 × {}", n((300_000 / scale) as f64)),
            services: Service::ALL.iter().map(|s| (*s, 300_000 / scale)).collect(),
        },
    ];
    let runtime = harness_test_kit::loopback::runtime(component, Limits::default())?;
    let state = state_parent.join(format!("onepassword-drain-{}", std::process::id()));
    std::fs::create_dir_all(&state)?;
    let mut table = Table::new(
        "Part 6: draining a backlog, default settings (pages of 1000, 500 requests a minute, 30 s deadline); \
         the time from the first firing to the last event delivered, on the component's clock",
        &[
            "backlog",
            "schedule",
            "pages",
            "ticks",
            "drained in",
            "minimum",
            "× minimum",
            "most in 60 s",
            "429s",
            "exactly once",
            "peak memory (MiB)",
            "max guest CPU/tick",
            "real time",
        ],
    );
    let mut failures = Vec::new();
    for backlog in &backlogs {
        let started = Instant::now();
        let now = Utc::now();
        let dataset = Dataset::generate_for(
            SEED,
            &backlog.services,
            now - chrono::Duration::hours(20),
            chrono::Duration::hours(19),
        );
        println!("part 6: {} generated in {} s", backlog.name, f(started.elapsed().as_secs_f64(), 1));
        for schedule in [Schedule::Run, Schedule::SpinCron] {
            let d = drain(&runtime, &dataset, backlog, schedule, &state).await?;
            let minimum = backlog.minimum();
            let (took, ratio) = match d.took {
                Some(t) => (format!("{} s", f(t.as_secs_f64(), 0)), f(t.as_secs_f64() / minimum.as_secs_f64(), 2)),
                None => (format!("not after {} ticks", d.ticks), "-".into()),
            };
            table.row(vec![
                backlog.name.clone(),
                schedule.name().into(),
                n(backlog.pages() as f64),
                d.ticks.to_string(),
                took,
                format!("{} s", f(minimum.as_secs_f64(), 0)),
                ratio,
                d.most_in_a_minute.to_string(),
                d.rate_limited.to_string(),
                if d.exactly_once { "yes".into() } else { "NO".into() },
                mib(d.peak_memory),
                format!("{} ms", d.guest_cpu_max_ms),
                format!("{} s", f(d.real.as_secs_f64(), 0)),
            ]);
            failures.extend(d.failures.into_iter().map(|l| format!("{} / {}: {l}", backlog.name, schedule.name())));
        }
    }
    let _ = std::fs::remove_dir_all(&state);
    table.print();
    println!(
        "(Waits between ticks are not slept: the component's and the emulator's clock jump to the next tick. \
         Ticks run in real time on this machine. The budget allows the first minute's 500 pages at once, so a \
         backlog of about two minutes' budget can drain in less than the minimum.)"
    );
    for failure in failures {
        println!("failed tick: {failure}");
    }
    Ok(())
}
