//! `bench`: measures the collector and prints the figures as tables.
//!
//! ```sh
//! cargo build --release --target wasm32-wasip2 -p onepassword-collector
//! cargo run --release -p harness-test-kit --bin bench            # full run
//! cargo run --release -p harness-test-kit --bin bench -- --quick # short run
//! ```
//!
//! Eight parts: the sans-IO core called natively (parse, obfuscate, batch,
//! gzip), the same core inside the component under wasmtime (whole ticks
//! against the loopback emulators), the host's own costs (compile,
//! instantiate, tick overhead, component size), scale (RSS and CPU time
//! of the harness process with 1, 100 and 1000 tenants), side by side,
//! the release `host-harness run` process against a plain Python poller
//! moving the same 60,000 events (`side_by_side.rs`; `--side-by-side` runs
//! only that part), and how fast a backlog of 1,000,000 events drains with
//! default settings under `run`'s catch-up and under a Spin-like one tick
//! per firing (`drain.rs`; `--drain` runs only that part), and a minute of
//! 10,000 caught-up tenants' firings under `run`'s scheduler, on the exact
//! second and spread (`fleet.rs`; `--fleet` runs only that part, `--tenants
//! N` sizes it), and what an idle tick costs the host over https for 1,000
//! caught-up tenants, with nothing kept between requests and ticks and with
//! kept-alive connections and open stores (`idle.rs`; `--idle` runs only
//! that part, `--idle-tenants N` sizes it).
//!
//! The emulators run in a child process (this binary, `serve-emulators`), so
//! the RSS and CPU time read from `/proc/self` are the harness's alone; the
//! child's CPU time is shown beside them for reference.
//!
//! Nothing here asserts a speed: it prints what it measured.

use chrono::{DateTime, SecondsFormat, Utc};
use clap::{Args, Parser, Subcommand};
use harness_test_kit::emulator::{
    Dataset, DevoEmulator, DevoOptions, OnePasswordEmulator, OnePasswordOptions, OpFault,
};
use host_harness::runtime::{default_component_path, CompileCache, Limits, Runtime, RuntimeOptions, TenantTick};
use host_harness::tenant::Tenant;
use onepassword_collector::config::Config;
use onepassword_collector::devo;
use onepassword_collector::http::HttpResponse;
use onepassword_collector::obfuscate::{Mode, Obfuscator};
use onepassword_collector::onepassword::{self, EventMeta};
use onepassword_collector::service::{ApiVersion, Service};
use std::collections::BTreeMap;
use std::hint::black_box;
use std::io::{BufRead, BufReader, Lines, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

// Under bench/ rather than beside this file: every .rs directly in src/bin
// would be a binary of its own.
#[path = "bench/side_by_side.rs"]
mod side_by_side;

#[path = "bench/drain.rs"]
mod drain;

#[path = "bench/idle.rs"]
mod idle;

#[path = "bench/fleet.rs"]
mod fleet;

const SEED: u64 = 20_261_125;
/// The service every measurement uses: its events carry the fields the
/// obfuscation rows select (`target_user.email`, `client.ip_address`).
const SERVICE: Service = Service::SignInAttempts;
const PAGE: usize = 1000;
const OP_TOKEN: &str = "bench-1password-events-token";
const DEVO_TOKEN: &str = "benchDevoToken0123456789abcdefAB";
const DEVO_DOMAIN: &str = "bench";
const OBFUSCATE_FIELDS: &str = "target_user.email,client.ip_address";
const OBFUSCATION_KEY: &str = "bench-obfuscation-key-0123456789";
/// Linux reports utime/stime in USER_HZ, which is 100 on every architecture.
const USER_HZ: f64 = 100.0;

#[derive(Parser)]
#[command(name = "bench", about = "Measures the collector core, the component under wasmtime and the harness at scale")]
struct Cli {
    #[command(subcommand)]
    command: Option<Internal>,
    #[command(flatten)]
    options: BenchOptions,
}

#[derive(Args)]
struct BenchOptions {
    /// A short run: fewer iterations, no 1000-tenant step.
    #[arg(long)]
    quick: bool,
    /// The component (.wasm); defaults to the workspace's release build.
    #[arg(long)]
    component: Option<PathBuf>,
    /// Ticks in flight at once in the scale steps.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Where tenants' SQLite files go (default: the temp dir). /dev/shm is
    /// measured as well when it is a tmpfs and this is not.
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Only part 5: the harness's `run` process and the Python poller side
    /// by side on the same 60,000 events.
    #[arg(long)]
    side_by_side: bool,
    /// Only part 6: draining a backlog of 1,000,000 events (100,000 with
    /// --quick) under run's catch-up and one tick per firing.
    #[arg(long)]
    drain: bool,
    /// Only part 7: a minute of the fleet's firings (10,000 caught-up
    /// tenants by default) under run's scheduler, on the exact second and
    /// spread: peak instances, delay from planned firing to tick start, CPU,
    /// RSS.
    #[arg(long)]
    fleet: bool,
    /// Tenants in part 7.
    #[arg(long, default_value_t = 10_000)]
    tenants: usize,
    /// Only part 8: what an idle tick costs the host over https, before and
    /// after connections were kept alive and stores kept open.
    #[arg(long)]
    idle: bool,
    /// Tenants in part 8.
    #[arg(long, default_value_t = 1_000)]
    idle_tenants: usize,
    /// The `host-harness` binary part 5 runs (default: beside this bench,
    /// i.e. target/release/host-harness).
    #[arg(long)]
    harness: Option<PathBuf>,
    /// The Python interpreter part 5 runs the poller with (needs `requests`).
    #[arg(long, default_value = "python3")]
    python: String,
}

#[derive(Subcommand)]
enum Internal {
    /// Runs both emulators until stdin closes (used by the bench itself).
    #[command(hide = true)]
    ServeEmulators {
        #[arg(long)]
        per_service: usize,
        #[arg(long)]
        start: String,
        #[arg(long)]
        span_secs: i64,
    },
}

/// How long each part runs.
struct Plan {
    native_warmup: usize,
    native_iters: usize,
    tick_warmup: usize,
    tick_iters: usize,
    instantiate_iters: usize,
    scale_steps: Vec<usize>,
    /// Tenants × 1000 events for the events-per-CPU-second figure.
    throughput_tenants: usize,
    concurrency: usize,
}

impl Plan {
    fn new(options: &BenchOptions) -> Plan {
        let concurrency = options.concurrency.max(1);
        if options.quick {
            Plan {
                native_warmup: 2,
                native_iters: 10,
                tick_warmup: 1,
                tick_iters: 5,
                instantiate_iters: 10,
                scale_steps: vec![1, 100],
                throughput_tenants: 20,
                concurrency,
            }
        } else {
            Plan {
                native_warmup: 5,
                native_iters: 41,
                tick_warmup: 2,
                tick_iters: 21,
                instantiate_iters: 41,
                scale_steps: vec![1, 100, 1000],
                throughput_tenants: 100,
                concurrency,
            }
        }
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(Internal::ServeEmulators { per_service, start, span_secs }) = cli.command {
        return serve_emulators(per_service, &start, span_secs);
    }
    let plan = Plan::new(&cli.options);
    let component = cli.options.component.clone().unwrap_or_else(default_component_path);
    let side_by_side = side_by_side::Options {
        harness: match &cli.options.harness {
            Some(path) => path.clone(),
            None => std::env::current_exe()?.with_file_name("host-harness"),
        },
        python: cli.options.python.clone(),
        component: component.clone(),
        parent: cli.options.state_dir.clone().unwrap_or_else(std::env::temp_dir),
    };
    if cli.options.side_by_side {
        print_machine(&component, " (--side-by-side)");
        let result = side_by_side::run(&side_by_side);
        println!("load average at the end: {} (1, 5, 15 min)", load_average());
        return result;
    }
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let state_parent = cli.options.state_dir.clone().unwrap_or_else(std::env::temp_dir);
    if cli.options.drain {
        print_machine(&component, " (--drain)");
        let result = rt.block_on(drain::run(&component, cli.options.quick, &state_parent));
        println!("load average at the end: {} (1, 5, 15 min)", load_average());
        return result;
    }
    if cli.options.idle {
        print_machine(&component, " (--idle)");
        let result = rt.block_on(idle::run(&component, cli.options.idle_tenants, &state_parent));
        println!("load average at the end: {} (1, 5, 15 min)", load_average());
        return result;
    }
    if cli.options.fleet {
        print_machine(&component, " (--fleet)");
        let result = rt.block_on(fleet::run(&component, cli.options.tenants, &state_parent));
        println!("load average at the end: {} (1, 5, 15 min)", load_average());
        return result;
    }
    print_setup(&plan, &component, cli.options.quick);
    native(&plan)?;
    let result = rt.block_on(hosted(&plan, &component, cli.options.state_dir.as_deref()));
    let result = result.and_then(|()| rt.block_on(drain::run(&component, cli.options.quick, &state_parent)));
    // Its own processes, after the in-process parts: nothing of theirs
    // runs meanwhile.
    let result = result.and_then(|()| side_by_side::run(&side_by_side));
    println!("load average at the end: {} (1, 5, 15 min)", load_average());
    result
}

// ---------------------------------------------------------------------------
// Output

/// An aligned table: first column left, the others right.
struct Table {
    title: String,
    head: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    fn new(title: &str, head: &[&str]) -> Table {
        Table { title: title.into(), head: head.iter().map(|h| h.to_string()).collect(), rows: Vec::new() }
    }

    fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    fn print(&self) {
        let columns = self.head.len();
        let mut widths: Vec<usize> = self.head.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate().take(columns) {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
        let line = |cells: &[String]| {
            let mut out = String::new();
            for (i, width) in widths.iter().enumerate() {
                let cell = cells.get(i).map(String::as_str).unwrap_or("");
                let pad = width - cell.chars().count();
                if i == 0 {
                    out.push_str(cell);
                    out.push_str(&" ".repeat(pad));
                } else {
                    out.push_str("  ");
                    out.push_str(&" ".repeat(pad));
                    out.push_str(cell);
                }
            }
            out.trim_end().to_string()
        };
        println!("\n{}", self.title);
        println!("{}", line(&self.head));
        let total: usize = widths.iter().sum::<usize>() + 2 * (columns - 1);
        println!("{}", "-".repeat(total));
        for row in &self.rows {
            println!("{}", line(row));
        }
    }
}

fn f(value: f64, decimals: usize) -> String {
    format!("{value:.decimals$}")
}

/// A count with thousands separators.
fn n(value: f64) -> String {
    let rounded = value.round() as i64;
    let digits = rounded.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if rounded < 0 {
        format!("-{out}")
    } else {
        out
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn mib(bytes: u64) -> String {
    f(bytes as f64 / (1024.0 * 1024.0), 1)
}

/// The first three fields of /proc/loadavg: other work on the machine skews wall times.
fn load_average() -> String {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    text.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

fn print_setup(plan: &Plan, component: &Path, quick: bool) {
    print_machine(component, if quick { " (--quick)" } else { "" });
    println!(
        "events:     {SERVICE} from Dataset::generate(seed {SEED}); pages of {PAGE}; native {} iterations (+{} warm-up), \
         ticks {} (+{} warm-up); medians unless stated",
        plan.native_iters, plan.native_warmup, plan.tick_iters, plan.tick_warmup
    );
}

/// The header every run prints: what ran where.
fn print_machine(component: &Path, mode: &str) {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    println!("onepassword-collector bench{mode}");
    println!("machine:    {cpus} CPUs, {model}; load average {} (1, 5, 15 min)", load_average());
    println!(
        "build:      host {} profile; component {}",
        if cfg!(debug_assertions) { "DEV (unoptimised own code: figures are not representative)" } else { "release" },
        component.display()
    );
}

// ---------------------------------------------------------------------------
// Timing and /proc

/// Runs `f` `warmup` times unmeasured, then `iters` times; returns sorted durations.
fn time<T>(warmup: usize, iters: usize, mut f: impl FnMut() -> T) -> Samples {
    for _ in 0..warmup {
        black_box(f());
    }
    let mut all: Vec<Duration> = (0..iters)
        .map(|_| {
            let started = Instant::now();
            black_box(f());
            started.elapsed()
        })
        .collect();
    all.sort();
    Samples(all)
}

/// Sorted durations.
struct Samples(Vec<Duration>);

impl Samples {
    fn from(mut all: Vec<Duration>) -> Samples {
        all.sort();
        Samples(all)
    }

    fn median(&self) -> Duration {
        let v = &self.0;
        if v.is_empty() {
            return Duration::ZERO;
        }
        if v.len() % 2 == 1 {
            v[v.len() / 2]
        } else {
            (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2
        }
    }

    fn min(&self) -> Duration {
        self.0.first().copied().unwrap_or_default()
    }

    fn max(&self) -> Duration {
        self.0.last().copied().unwrap_or_default()
    }
}

/// utime + stime of a process, in seconds (USER_HZ resolution: 10 ms).
fn cpu_seconds(pid: &str) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return f64::NAN };
    // The command name is in parentheses and may hold spaces: count fields after it.
    let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else { return f64::NAN };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Field 3 (state) is fields[0]; utime is field 14, stime field 15.
    let tick = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(f64::NAN);
    (tick(11) + tick(12)) / USER_HZ
}

fn self_cpu() -> f64 {
    cpu_seconds("self")
}

/// CPU time of this process's live threads in seconds, at nanosecond
/// resolution (the first field of each thread's `schedstat`). The kernel
/// brings a running thread's figure up to date only when it is scheduled, so
/// the calling thread yields first. A thread that exits takes its time with
/// it: the scale part checks the sum against [`self_cpu`].
fn self_cpu_fine() -> f64 {
    std::thread::yield_now();
    cpu_fine("self")
}

/// [`self_cpu_fine`] for any process.
fn cpu_fine(pid: &str) -> f64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return f64::NAN };
    let mut nanos = 0u64;
    for task in tasks.flatten() {
        let Ok(text) = std::fs::read_to_string(task.path().join("schedstat")) else { return f64::NAN };
        nanos += text.split_whitespace().next().and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    }
    nanos as f64 / 1e9
}

/// The file system type holding `path` (e.g. `ext4`, `tmpfs`), from /proc/mounts.
fn fs_type(path: &Path) -> String {
    let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let mut best: Option<(usize, String)> = None;
    for line in mounts.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (Some(point), Some(kind)) = (fields.get(1), fields.get(2)) else { continue };
        let point = point.replace("\\040", " ");
        // The longest mount point above the path; a later mount on the same point wins.
        if path.starts_with(&point) && best.as_ref().is_none_or(|(len, _)| point.len() >= *len) {
            best = Some((point.len(), kind.to_string()));
        }
    }
    best.map_or_else(|| "?".into(), |(_, kind)| kind)
}

/// (VmRSS, VmHWM) of this process, in bytes.
fn memory() -> (u64, u64) {
    (side_by_side::status_field("self", "VmRSS:"), side_by_side::status_field("self", "VmHWM:"))
}

// ---------------------------------------------------------------------------
// 1. The core, natively

fn dataset_window() -> (DateTime<Utc>, chrono::Duration) {
    // Inside the collector's 24-hour default look-back, ending an hour ago.
    (Utc::now() - chrono::Duration::hours(23), chrono::Duration::hours(22))
}

fn page_body(events: &[String], cursor: &str) -> Vec<u8> {
    let mut body = String::from("{\"items\":[");
    for (i, event) in events.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        body.push_str(event);
    }
    body.push_str(&format!("],\"cursor\":\"{cursor}\",\"has_more\":true}}"));
    body.into_bytes()
}

fn native_config(gzip: bool) -> anyhow::Result<Config> {
    let values: BTreeMap<&str, String> = BTreeMap::from([
        ("base_url", "https://events.1password.com".to_string()),
        ("token", OP_TOKEN.to_string()),
        ("devo_url", "https://http-us.devo.io".to_string()),
        ("devo_domain", DEVO_DOMAIN.to_string()),
        ("devo_token", DEVO_TOKEN.to_string()),
        ("devo_gzip", gzip.to_string()),
    ]);
    Config::load(|key| Ok(values.get(key).cloned())).map_err(|e| anyhow::anyhow!("bench config: {e}"))
}

fn native(plan: &Plan) -> anyhow::Result<()> {
    let (start, span) = dataset_window();
    let dataset = Dataset::generate(SEED, PAGE, start, span);
    let events = dataset.events(SERVICE);
    let body = page_body(events, "aGVsbG8gYmVuY2ggY3Vyc29yIDAwMDAwMDAx");
    let event_bytes = events.iter().map(String::len).sum::<usize>() as f64 / events.len() as f64;
    let response = HttpResponse { status: 200, headers: Vec::new(), body };
    let page = onepassword::parse_page(SERVICE, &response).map_err(|e| anyhow::anyhow!("{e}"))?;
    anyhow::ensure!(page.items.len() == PAGE, "the generated page has {} items", page.items.len());
    let per = |s: &Samples| s.median().as_nanos() as f64 / PAGE as f64;
    let (w, i) = (plan.native_warmup, plan.native_iters);

    let mut table = Table::new(
        &format!(
            "1. Core, natively: cost per event over a {PAGE}-event {SERVICE} page ({} KiB body, {} bytes/event)",
            f(response.body.len() as f64 / 1024.0, 0),
            f(event_bytes, 0)
        ),
        &["step", "ns/event", "events/s", "ms/page", "min ms/page", "max ms/page"],
    );
    let mut add = |name: &str, s: &Samples| {
        let ns = per(s);
        table.row(vec![name.into(), f(ns, 0), n(1e9 / ns), f(ms(s.median()), 3), f(ms(s.min()), 3), f(ms(s.max()), 3)]);
    };

    let parse = time(w, i, || onepassword::parse_page(SERVICE, black_box(&response)).map(|p| p.items.len()));
    add("parse_page (items kept as raw JSON)", &parse);

    let meta = time(w, i, || page.items.iter().filter_map(|item| EventMeta::of(item).time()).count());
    add("EventMeta::of + time (uuid, timestamp)", &meta);

    let lines = time(w, i, || page.items.iter().map(|item| devo::event_line(item.get()).len()).sum::<usize>());
    add("event_line (one line per event)", &lines);

    let hash = Obfuscator::new(OBFUSCATE_FIELDS, Mode::Hash, Some(OBFUSCATION_KEY.as_bytes()))?;
    let mask = Obfuscator::new(OBFUSCATE_FIELDS, Mode::Mask, None)?;
    let changed =
        page.items.iter().filter(|item| matches!(hash.apply(item.get()), Ok(std::borrow::Cow::Owned(_)))).count();
    let obfuscate = |o: &Obfuscator| {
        time(w, i, || page.items.iter().map(|item| o.apply(item.get()).map(|t| t.len()).unwrap_or(0)).sum::<usize>())
    };
    add(&format!("obfuscate hash: {OBFUSCATE_FIELDS}"), &obfuscate(&hash));
    add(&format!("obfuscate mask: {OBFUSCATE_FIELDS}"), &obfuscate(&mask));

    let mut sizes = (0usize, 0usize);
    for gzip in [false, true] {
        let config = native_config(gzip)?;
        let build = || {
            let lines: Vec<_> = page.items.iter().map(|item| devo::event_line(item.get())).collect();
            let batches = devo::batches(
                lines.iter().map(|l| l.as_ref()),
                config.devo_max_batch_bytes,
                config.devo_max_batch_events,
            );
            batches.into_iter().map(|b| devo::stream_request(&config, SERVICE, b.body).body.len()).sum::<usize>()
        };
        let bytes = build();
        if gzip {
            sizes.1 = bytes;
        } else {
            sizes.0 = bytes;
        }
        let s = time(w, i, build);
        add(&format!("devo batches + stream_request, gzip {}", if gzip { "on" } else { "off" }), &s);
    }
    table.print();
    println!(
        "   {changed}/{PAGE} events hold a selected field. Devo body: {} bytes plain, {} bytes gzip (ratio {}:1, \
         flate2 fast level).",
        n(sizes.0 as f64),
        n(sizes.1 as f64),
        f(sizes.0 as f64 / sizes.1.max(1) as f64, 2)
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// Emulators in a child process

fn serve_emulators(per_service: usize, start: &str, span_secs: i64) -> anyhow::Result<()> {
    let start = DateTime::parse_from_rfc3339(start)?.with_timezone(&Utc);
    let dataset = Dataset::generate(SEED, per_service, start, chrono::Duration::seconds(span_secs));
    let op = OnePasswordEmulator::start(OnePasswordOptions::new(OP_TOKEN, dataset))?;
    let devo = DevoEmulator::start(DevoOptions { domain: DEVO_DOMAIN.into(), token: DEVO_TOKEN.into() })?;
    // Part 8 asks for https: TLS fronts with a CA made for this run, whose
    // certificate goes to the file the variable names.
    let mut fronts = Vec::new();
    let (mut op_url, mut devo_url) = (op.base_url(), devo.base_url());
    if let Some(ca_file) = std::env::var_os(idle::TLS_CA_FILE_VAR) {
        let ca = harness_test_kit::tls::TestCa::new("bench CA");
        std::fs::write(&ca_file, ca.pem())?;
        for url in [&mut op_url, &mut devo_url] {
            let front = harness_test_kit::tls::TlsFront::start(&ca, url)?;
            *url = front.url();
            fronts.push(front);
        }
    }
    let mut out = std::io::stdout().lock();
    writeln!(out, "op {op_url}")?;
    writeln!(out, "devo {devo_url}")?;
    out.flush()?;
    // Serve until the bench closes our stdin (or exits), answering its
    // questions one line each: the bench watches Devo from outside this
    // process, so the peer it measures shares nothing with it.
    for question in std::io::stdin().lock().lines() {
        let answer = match question?.trim() {
            "count" => devo.total_events().to_string(),
            "check" => delivery_check(&op, &devo).to_string(),
            other => format!("unknown question {other:?}"),
        };
        writeln!(out, "{answer}")?;
        out.flush()?;
    }
    Ok(())
}

/// Per Devo tag: events received, distinct uuids among them, how many equal
/// (as JSON values, so a peer may re-serialise) the event served under their
/// uuid, and how many were served.
fn delivery_check(op: &OnePasswordEmulator, devo: &DevoEmulator) -> serde_json::Value {
    let dataset = op.dataset();
    let mut tags = serde_json::Map::new();
    for service in Service::ALL {
        let served: std::collections::HashMap<String, serde_json::Value> = dataset
            .values_for(service, ApiVersion::V2)
            .into_iter()
            .filter_map(|v| Some((v["uuid"].as_str()?.to_owned(), v)))
            .collect();
        let received = devo.event_values(service.default_tag());
        let mut distinct = std::collections::HashSet::new();
        let mut as_served = 0;
        for event in &received {
            let Some(uuid) = event["uuid"].as_str() else { continue };
            distinct.insert(uuid.to_owned());
            as_served += usize::from(served.get(uuid) == Some(event));
        }
        tags.insert(
            service.default_tag().to_owned(),
            serde_json::json!({
                "received": received.len(),
                "distinct": distinct.len(),
                "as_served": as_served,
                "served": served.len(),
            }),
        );
    }
    serde_json::Value::Object(tags)
}

struct Emulators {
    child: Child,
    stdin: Option<ChildStdin>,
    /// The emulator process's answers (see [`Emulators::ask`]).
    answers: Lines<BufReader<ChildStdout>>,
    op_url: String,
    devo_url: String,
    pid: String,
    /// The data set's first event time.
    data_start: DateTime<Utc>,
}

impl Emulators {
    fn start(per_service: usize, start: DateTime<Utc>, span: chrono::Duration) -> anyhow::Result<Emulators> {
        let mut child = Command::new(std::env::current_exe()?)
            .args(["serve-emulators", "--per-service", &per_service.to_string()])
            .args(["--start", &start.to_rfc3339_opts(SecondsFormat::Secs, true)])
            .args(["--span-secs", &span.num_seconds().to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdin = child.stdin.take();
        let mut answers = BufReader::new(child.stdout.take().expect("piped")).lines();
        let mut url = |name: &str| -> anyhow::Result<String> {
            let line = answers.next().transpose()?.unwrap_or_default();
            line.strip_prefix(&format!("{name} "))
                .map(str::to_owned)
                .ok_or_else(|| anyhow::anyhow!("emulator process said {line:?} instead of its {name} URL"))
        };
        let op_url = url("op")?;
        let devo_url = url("devo")?;
        let pid = child.id().to_string();
        Ok(Emulators { child, stdin, answers, op_url, devo_url, pid, data_start: start })
    }

    /// One question to the emulator process (`count`, `check`), one line back.
    fn ask(&mut self, question: &str) -> anyhow::Result<String> {
        let stdin = self.stdin.as_mut().ok_or_else(|| anyhow::anyhow!("the emulators are stopping"))?;
        writeln!(stdin, "{question}")?;
        stdin.flush()?;
        let answer = self.answers.next().transpose()?;
        answer.ok_or_else(|| anyhow::anyhow!("the emulator process ended"))
    }

    /// Events the Devo emulator has stored, all tags.
    fn delivered(&mut self) -> anyhow::Result<usize> {
        let answer = self.ask("count")?;
        answer.parse().map_err(|_| anyhow::anyhow!("the emulator process said {answer:?} instead of a count"))
    }

    fn cpu(&self) -> f64 {
        cpu_seconds(&self.pid)
    }

    /// Per-thread CPU of the emulator process (see [`self_cpu_fine`]).
    fn cpu_fine(&self) -> f64 {
        cpu_fine(&self.pid)
    }
}

impl Drop for Emulators {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.wait();
    }
}
// ---------------------------------------------------------------------------
// 2–4. The component under wasmtime

/// Where tenants keep their key-value files, and on what file system.
struct StateDir {
    path: PathBuf,
    fs: String,
}

impl StateDir {
    fn create(parent: &Path) -> anyhow::Result<StateDir> {
        let path = parent.join(format!("onepassword-bench-{}", std::process::id()));
        std::fs::create_dir_all(&path)?;
        let fs = fs_type(&path);
        Ok(StateDir { path, fs })
    }
}

struct Bench<'a> {
    emulators: &'a Emulators,
    /// The state directory asked for (`--state-dir`, else the temp dir),
    /// then /dev/shm when that is another file system: SQLite's fsyncs cost
    /// real time on a disk and next to nothing on tmpfs.
    dirs: Vec<StateDir>,
    data_start: DateTime<Utc>,
}

impl Bench<'_> {
    /// The state directory for compute figures: tmpfs when there is one.
    fn compute_dir(&self) -> &StateDir {
        self.dirs.iter().find(|d| d.fs == "tmpfs").unwrap_or(&self.dirs[0])
    }

    fn tenant(&self, dir: &StateDir, name: &str, extra: &[(&str, &str)]) -> Tenant {
        let mut variables: BTreeMap<String, String> = [
            ("base_url", self.emulators.op_url.as_str()),
            ("token", OP_TOKEN),
            ("devo_url", self.emulators.devo_url.as_str()),
            ("devo_domain", DEVO_DOMAIN),
            ("devo_token", DEVO_TOKEN),
            ("services", SERVICE.name()),
            ("page_size", "1000"),
            // The ceilings' maxima: a series of ticks must never be deferred.
            ("max_requests_per_minute", "600"),
            ("max_requests_per_hour", "30000"),
            // One page per service a tick: each measured tick is one page
            // (part 6 measures ticks that page until caught up).
            ("max_pages_per_tick", "1"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        variables.insert("start_time_value".into(), self.data_start.to_rfc3339_opts(SecondsFormat::Secs, true));
        for (k, v) in extra {
            variables.insert(k.to_string(), v.to_string());
        }
        Tenant {
            name: name.into(),
            schedule: host_harness::tenant::DEFAULT_SCHEDULE.into(),
            spread_firings: true,
            kv: dir.path.join(format!("{name}.sqlite")).into(),
            variables,
            environment: Default::default(),
            allowed_outbound_hosts: None,
            limits: Default::default(),
        }
    }
}

/// Events delivered by a tick (0 when it failed).
fn sent(tick: &TenantTick) -> u64 {
    tick.result.as_ref().map_or(0, |r| r.services.iter().map(|s| u64::from(s.sent)).sum())
}

fn bytes_sent(tick: &TenantTick) -> u64 {
    tick.result.as_ref().map_or(0, |r| r.services.iter().map(|s| s.bytes_sent).sum())
}

/// One kind of tick, repeated on one tenant: wall times and harness CPU.
struct Series {
    label: &'static str,
    fs: String,
    tenant: Tenant,
    /// The empty-page series on the same file system (for per-event figures).
    baseline: Option<usize>,
    wall: Vec<Duration>,
    cpu: f64,
    emulator_cpu: f64,
    guest_cpu_ms: u64,
    peak_memory: Vec<u64>,
    sent: u64,
    bytes: u64,
    failures: Vec<String>,
}

impl Series {
    fn new(label: &'static str, dir: &StateDir, tenant: Tenant, baseline: Option<usize>) -> Series {
        Series {
            label,
            fs: dir.fs.clone(),
            tenant,
            baseline,
            wall: Vec::new(),
            cpu: 0.0,
            emulator_cpu: 0.0,
            guest_cpu_ms: 0,
            peak_memory: Vec::new(),
            sent: 0,
            bytes: 0,
            failures: Vec::new(),
        }
    }

    async fn tick(&mut self, runtime: &Runtime, emulators: &Emulators, measured: bool) {
        let (cpu, emu) = (self_cpu_fine(), emulators.cpu_fine());
        let started = Instant::now();
        let tick = runtime.tick(&self.tenant).await;
        let wall = started.elapsed();
        let cpu = (self_cpu_fine() - cpu).max(0.0);
        let emu = (emulators.cpu_fine() - emu).max(0.0);
        if !measured {
            return;
        }
        self.wall.push(wall);
        self.cpu += cpu;
        self.emulator_cpu += emu;
        self.guest_cpu_ms += tick.guest_cpu_ms;
        self.peak_memory.push(tick.peak_memory_bytes);
        self.sent += sent(&tick);
        self.bytes += bytes_sent(&tick);
        if !tick.ok() && self.failures.len() < 3 {
            self.failures.push(tick.to_json().to_string());
        }
    }

    fn count(&self) -> f64 {
        self.wall.len().max(1) as f64
    }

    fn samples(&self) -> Samples {
        Samples::from(self.wall.clone())
    }

    fn median_ms(&self) -> f64 {
        ms(self.samples().median())
    }

    fn cpu_ms(&self) -> f64 {
        self.cpu * 1e3 / self.count()
    }

    fn guest_ms(&self) -> f64 {
        self.guest_cpu_ms as f64 / self.count()
    }

    fn peak_memory(&self) -> u64 {
        self.peak_memory.iter().copied().max().unwrap_or(0)
    }

    fn events(&self) -> f64 {
        self.sent as f64 / self.count()
    }
}

async fn hosted(plan: &Plan, component: &Path, state_dir: Option<&Path>) -> anyhow::Result<()> {
    let component_size = std::fs::metadata(component)
        .map_err(|e| {
            anyhow::anyhow!(
                "{}: {e} (build it: cargo build --release --target wasm32-wasip2 -p onepassword-collector)",
                component.display()
            )
        })?
        .len();
    let (data_start, span) = dataset_window();
    // Each series walks its own checkpoint through the same stream.
    let per_service = (plan.tick_warmup + plan.tick_iters + 1) * PAGE;
    let starting = Instant::now();
    let emulators = Emulators::start(per_service, data_start, span)?;
    let emulator_start = starting.elapsed();
    let mut dirs = vec![StateDir::create(&state_dir.map_or_else(std::env::temp_dir, Path::to_path_buf))?];
    let shm = Path::new("/dev/shm");
    if shm.is_dir() && fs_type(shm) == "tmpfs" && dirs[0].fs != "tmpfs" {
        dirs.push(StateDir::create(shm)?);
    }
    println!(
        "state:      tenants' SQLite files in {}",
        dirs.iter().map(|d| format!("{} ({})", d.path.display(), d.fs)).collect::<Vec<_>>().join(" and ")
    );
    let bench = Bench { emulators: &emulators, dirs, data_start };
    let result = hosted_parts(plan, component, component_size, &bench).await;
    for dir in &bench.dirs {
        let _ = std::fs::remove_dir_all(&dir.path);
    }
    println!(
        "\nEmulators: a child process serving {} {SERVICE} events; it started (generating the data) in {} ms \
         and used {} s CPU in all.",
        n(per_service as f64),
        f(ms(emulator_start), 0),
        f(emulators.cpu(), 2)
    );
    result
}

async fn hosted_parts(plan: &Plan, component: &Path, component_size: u64, bench: &Bench<'_>) -> anyhow::Result<()> {
    let (rss_before, _) = memory();
    // Compiled from scratch, then written to and loaded from a compile cache
    // in the bench's own temp dir (the harness's default cache sits beside
    // the .wasm; the bench leaves that alone).
    let timed = |cache: CompileCache| -> anyhow::Result<(Duration, Runtime)> {
        let started = Instant::now();
        let outbound = harness_test_kit::loopback::outbound();
        let runtime = Runtime::with_options(
            component,
            RuntimeOptions { limits: Limits::default(), cache, outbound, ..RuntimeOptions::default() },
        )?;
        Ok((started.elapsed(), runtime))
    };
    let (compile, uncached) = timed(CompileCache::Off)?;
    drop(uncached);
    let cache_dir = bench.dirs[0].path.join("compile-cache");
    let (compile_and_store, _) = timed(CompileCache::Dir(cache_dir.clone()))?;
    let (load_cached, runtime) = timed(CompileCache::Dir(cache_dir))?;
    let cached = runtime.loaded_from_cache();
    let (rss_loaded, _) = memory();
    let limits = runtime.limits();
    println!(
        "runtime:    Limits::default(): {} MiB linear memory per instance, {} ms guest CPU per tick, a pool of {} \
         instances; scale steps run {} ticks at once (Runtime::tick_all)",
        mib(limits.memory_bytes as u64),
        limits.cpu_time.as_millis(),
        limits.max_concurrent_instances,
        plan.concurrency
    );

    // 2. Whole ticks.
    let after_data = (bench.data_start + chrono::Duration::hours(22) + chrono::Duration::minutes(30))
        .to_rfc3339_opts(SecondsFormat::Secs, true);
    let empty: &[(&str, &str)] = &[("start_time_value", &after_data)];
    let hashed: &[(&str, &str)] =
        &[("devo_gzip", "true"), ("obfuscate_fields", OBFUSCATE_FIELDS), ("obfuscation_key", OBFUSCATION_KEY)];
    let three: &[(&str, &str)] = &[("devo_gzip", "true"), ("services", "audit,item_usage,sign_in_attempts")];
    let compute = bench.compute_dir();
    let mut series: Vec<Series> = Vec::new();
    for (d, dir) in bench.dirs.iter().enumerate() {
        let base = series.len();
        let mut add = |label: &'static str, name: &str, extra: &[(&str, &str)], baseline: Option<usize>| {
            series.push(Series::new(label, dir, bench.tenant(dir, &format!("{name}-{d}"), extra), baseline));
        };
        add("empty page (0 events)", "empty", empty, None);
        if std::ptr::eq(dir, compute) {
            add("1000 events, gzip off", "plain", &[("devo_gzip", "false")], Some(base));
        }
        add("1000 events, gzip on", "gzip", &[("devo_gzip", "true")], Some(base));
        if std::ptr::eq(dir, compute) {
            add("1000 events, gzip on, hash 2 fields", "hashed", hashed, Some(base));
            // All three services' pages in one tick, in flight together: its
            // wall time against the one-service tick's, its peak memory.
            add("3 services x 1000 events, gzip on", "three", three, None);
        }
    }
    // Interleaved, so drift (caches, clock frequency) touches every kind alike.
    for round in 0..plan.tick_warmup + plan.tick_iters {
        for s in series.iter_mut() {
            s.tick(&runtime, bench.emulators, round >= plan.tick_warmup).await;
        }
    }
    let mut table = Table::new(
        &format!(
            "2. Core inside the component: whole ticks against the loopback emulators ({SERVICE} unless stated, \
             page_size {PAGE}, {} ticks each)",
            plan.tick_iters
        ),
        &[
            "tick",
            "kv on",
            "events/tick",
            "median ms/tick",
            "min ms",
            "max ms",
            "host CPU ms",
            "guest CPU ms",
            "emulators CPU ms",
            "Devo KiB/tick",
            "peak linear MiB",
        ],
    );
    for s in &series {
        let samples = s.samples();
        table.row(vec![
            s.label.to_string(),
            s.fs.clone(),
            f(s.events(), 0),
            f(s.median_ms(), 2),
            f(ms(samples.min()), 2),
            f(ms(samples.max()), 2),
            f(s.cpu_ms(), 2),
            f(s.guest_ms(), 1),
            f(s.emulator_cpu * 1e3 / s.count(), 2),
            f(s.bytes as f64 / 1024.0 / s.count(), 1),
            mib(s.peak_memory()),
        ]);
    }
    table.print();
    println!(
        "   host CPU: this process (all threads' schedstat), guest included; guest CPU: time in WebAssembly as \
         TenantTick.guest_cpu_ms reports it (whole ms per tick, averaged); emulators: the child process. \
         peak linear: the largest TenantTick.peak_memory_bytes of the series."
    );
    let mut table = Table::new(
        "2b. Per event inside the component: (tick − empty-page tick on the same file system) / events",
        &["tick", "kv on", "µs/event wall", "µs/event host CPU", "µs/event guest CPU", "events/host-CPU-s"],
    );
    for s in &series {
        let events = s.events();
        let Some(base) = s.baseline.filter(|_| events > 0.0).map(|b| &series[b]) else { continue };
        let per = |a: f64, b: f64| (a - b) * 1e3 / events;
        let cpu = per(s.cpu_ms(), base.cpu_ms());
        table.row(vec![
            s.label.to_string(),
            s.fs.clone(),
            f(per(s.median_ms(), base.median_ms()), 2),
            f(cpu, 2),
            f(per(s.guest_ms(), base.guest_ms()), 2),
            if cpu > 0.0 { n(1e6 / cpu) } else { "–".into() },
        ]);
    }
    table.print();
    println!(
        "   This is the component's parse, batching (+ gzip, + hashing) and the host's share of moving the bodies \
         (wasi-http, loopback); compare with part 1 for the same work natively."
    );
    for s in &series {
        for failure in &s.failures {
            println!("   ! {} ({}): a tick failed: {failure}", s.label, s.fs);
        }
    }

    // 3. Host costs.
    let broken = {
        let mut t = bench.tenant(compute, "broken", &[]);
        t.variables.remove("devo_token");
        t
    };
    let mut wrong = 0;
    let mut instantiate = Vec::new();
    let mut instantiate_cpu = 0.0;
    let mut instantiate_peak = 0u64;
    for round in 0..plan.instantiate_iters + 3 {
        let cpu = self_cpu_fine();
        let started = Instant::now();
        let tick = runtime.tick(&broken).await;
        if round >= 3 {
            instantiate.push(started.elapsed());
            instantiate_cpu += (self_cpu_fine() - cpu).max(0.0);
        }
        instantiate_peak = instantiate_peak.max(tick.peak_memory_bytes);
        if !matches!(&tick.result, Err(e) if e.id == 1) {
            wrong += 1;
        }
    }
    let instantiate_cpu = instantiate_cpu * 1e3 / plan.instantiate_iters.max(1) as f64;
    let instantiate = Samples::from(instantiate);
    let mut table = Table::new("3. Host", &["what", "value", "unit", "notes"]);
    table.row(vec![
        "component size on disk".into(),
        n(component_size as f64 / 1024.0),
        "KiB".into(),
        format!("{} bytes", n(component_size as f64)),
    ]);
    table.row(vec![
        "Runtime: compile + link (cache off)".into(),
        f(ms(compile), 0),
        "ms".into(),
        "once per process".into(),
    ]);
    table.row(vec![
        "Runtime: compile + write cache + link".into(),
        f(ms(compile_and_store), 0),
        "ms".into(),
        "first start with a compile cache".into(),
    ]);
    table.row(vec![
        "Runtime: load cache + link".into(),
        f(ms(load_cached), 0),
        "ms".into(),
        format!(
            "{}; RSS +{} MiB for the three runtimes",
            if cached { "loaded from the cache" } else { "! NOT loaded from the cache" },
            mib(rss_loaded.saturating_sub(rss_before))
        ),
    ]);
    table.row(vec![
        "instantiate + config read + return".into(),
        f(ms(instantiate.median()) * 1e3, 0),
        "µs".into(),
        format!(
            "median of {} ticks missing devo_token; min {} µs; {} µs CPU each",
            plan.instantiate_iters,
            f(ms(instantiate.min()) * 1e3, 0),
            f(instantiate_cpu * 1e3, 0)
        ),
    ]);
    table.row(vec![
        "raw instantiate".into(),
        "n/a".into(),
        "".into(),
        "the runtime exposes no instantiate-only call".into(),
    ]);
    for s in &series {
        if s.label.ends_with("gzip off") || s.label.contains("hash") {
            continue;
        }
        table.row(vec![
            format!("tick, {}, kv on {}", s.label, s.fs),
            f(s.median_ms(), 2),
            "ms".into(),
            format!("median; {} ms host CPU, {} ms of it in WebAssembly", f(s.cpu_ms(), 2), f(s.guest_ms(), 1)),
        ]);
    }
    table.row(vec![
        "peak linear memory, config-failure tick".into(),
        mib(instantiate_peak),
        "MiB".into(),
        "TenantTick.peak_memory_bytes: the instance's initial memory".into(),
    ]);
    for s in series.iter().filter(|s| s.fs == compute.fs) {
        table.row(vec![
            format!("peak linear memory, {}", s.label),
            mib(s.peak_memory()),
            "MiB".into(),
            format!("largest of the series; the limit is {} MiB", mib(runtime.limits().memory_bytes as u64)),
        ]);
    }
    table.print();
    println!(
        "   An empty-page tick: instantiate, config, kv reads, two compare-and-swaps (lease + budget, then \
         checkpoint) and one request to 1Password; the token introspection is cached in the kv."
    );
    if wrong > 0 {
        println!("   ! {wrong} config-failure ticks did not end with error id 1: the instantiate figure is suspect");
    }

    // 3b. Waiting on 1Password.
    waiting(plan, &runtime, bench).await?;

    // 4. Scale.
    scale(plan, &runtime, bench).await
}

/// 3b. What the lanes buy: with every page answer held back as a real
/// 1Password's would be, a tick of three services against a tick of one.
/// Emulators of its own, in this process (only wall time is compared).
async fn waiting(plan: &Plan, runtime: &Runtime, bench: &Bench<'_>) -> anyhow::Result<()> {
    const LATENCY: Duration = Duration::from_millis(100);
    const PAGE_SIZE: usize = 100;
    let (start, span) = dataset_window();
    let dataset = Dataset::generate(SEED, (plan.tick_warmup + plan.tick_iters + 1) * PAGE_SIZE, start, span);
    let op = OnePasswordEmulator::start(OnePasswordOptions::new(OP_TOKEN, dataset))?;
    op.set_random_faults(SEED, 1.0, vec![OpFault::Slow(LATENCY)]);
    let devo = DevoEmulator::start(DevoOptions { domain: DEVO_DOMAIN.into(), token: DEVO_TOKEN.into() })?;
    let (op_url, devo_url) = (op.base_url(), devo.base_url());
    let page_size = PAGE_SIZE.to_string();
    let dir = bench.compute_dir();
    let tenant = |name: &str, services: &str| {
        let extra = [
            ("base_url", op_url.as_str()),
            ("devo_url", devo_url.as_str()),
            ("services", services),
            ("page_size", page_size.as_str()),
        ];
        bench.tenant(dir, name, &extra)
    };
    let mut series = [
        Series::new("one service", dir, tenant("wait-one", SERVICE.name()), None),
        Series::new("three services", dir, tenant("wait-three", "audit,item_usage,sign_in_attempts"), None),
    ];
    for round in 0..plan.tick_warmup + plan.tick_iters {
        for s in series.iter_mut() {
            s.tick(runtime, bench.emulators, round >= plan.tick_warmup).await;
        }
    }
    let mut table = Table::new(
        &format!(
            "3b. Waiting on 1Password: every page answered after {} ms, pages of {PAGE_SIZE}, {} ticks each",
            LATENCY.as_millis(),
            plan.tick_iters
        ),
        &["tick", "events/tick", "median ms/tick", "min ms", "max ms"],
    );
    for s in &series {
        let samples = s.samples();
        table.row(vec![
            s.label.to_string(),
            f(s.events(), 0),
            f(s.median_ms(), 1),
            f(ms(samples.min()), 1),
            f(ms(samples.max()), 1),
        ]);
    }
    table.print();
    println!(
        "   The three services' page requests are in flight together (the component's lanes): one after the \
         other they would take at least {} ms.",
        3 * LATENCY.as_millis()
    );
    for failure in series.iter().flat_map(|s| &s.failures) {
        println!("   ! a tick failed: {failure}");
    }
    Ok(())
}

async fn scale(plan: &Plan, runtime: &Runtime, bench: &Bench<'_>) -> anyhow::Result<()> {
    let (rss_start, _) = memory();
    let (fine_start, coarse_start) = (self_cpu_fine(), self_cpu());
    let mut table = Table::new(
        &format!(
            "4. Scale: every tenant ticks once, {} in flight ({SERVICE}, own kv file, fresh state: each tick also \
             introspects the token and creates its SQLite file)",
            plan.concurrency
        ),
        &[
            "tenants",
            "page",
            "kv on",
            "ok",
            "events",
            "wall s",
            "ticks/s",
            "events/s",
            "CPU s",
            "CPU ms/tick",
            "events/CPU-s",
            "emulators CPU s",
            "RSS after MiB",
            "RSS peak MiB",
        ],
    );
    let mut throughput = Vec::new();
    let mut steps: Vec<(usize, usize)> = plan.scale_steps.iter().map(|&count| (count, 10)).collect();
    steps.push((plan.throughput_tenants, PAGE));
    for (step, &(count, page)) in steps.iter().enumerate() {
        for dir in &bench.dirs {
            let page_size = page.to_string();
            let extra: &[(&str, &str)] = &[("page_size", &page_size), ("devo_gzip", "true")];
            let tenants: Vec<Tenant> =
                (0..count).map(|i| bench.tenant(dir, &format!("scale{step}-{i}"), extra)).collect();
            let (cpu, emu, started) = (self_cpu_fine(), bench.emulators.cpu_fine(), Instant::now());
            let ticks = runtime.tick_all(&tenants, plan.concurrency).await;
            let wall = started.elapsed().as_secs_f64();
            let (cpu, emu) = (self_cpu_fine() - cpu, bench.emulators.cpu_fine() - emu);
            let ok = ticks.iter().filter(|t| t.ok()).count();
            let events = ticks.iter().map(sent).sum::<u64>() as f64;
            let (rss, hwm) = memory();
            let per_cpu = if cpu > 0.0 { n(events / cpu) } else { "–".into() };
            table.row(vec![
                n(count as f64),
                page.to_string(),
                dir.fs.clone(),
                format!("{ok}/{}", ticks.len()),
                n(events),
                f(wall, 2),
                f(ticks.len() as f64 / wall, 0),
                n(events / wall),
                f(cpu, 2),
                f(cpu * 1e3 / ticks.len().max(1) as f64, 1),
                per_cpu,
                f(emu, 2),
                mib(rss),
                mib(hwm),
            ]);
            if let Some(bad) = ticks.iter().find(|t| !t.ok()) {
                println!("   ! a tick failed ({count} tenants, kv on {}): {}", dir.fs, bad.to_json());
            }
            if page == PAGE {
                throughput.push((dir.fs.clone(), events / cpu, events / wall));
            }
        }
    }
    table.print();
    for (fs, per_cpu, per_wall) in throughput {
        println!(
            "   Throughput, kv on {fs} ({} tenants × a {PAGE}-event page, gzip on): {} events per harness CPU \
             second (one core busy), {} events/s wall on {} CPUs.",
            plan.throughput_tenants,
            n(per_cpu),
            n(per_wall),
            std::thread::available_parallelism().map_or(1, |n| n.get())
        );
    }
    println!(
        "   CPU is the sum of the threads' schedstat; over the whole part it adds up to {} s, against {} s of \
         utime+stime in /proc/self/stat (10 ms resolution, counts exited threads too).",
        f(self_cpu_fine() - fine_start, 2),
        f(self_cpu() - coarse_start, 2)
    );
    println!(
        "   RSS when the scale steps began: {} MiB (runtime loaded, parts 2–3 done); \"RSS after\" is VmRSS after \
         the step, \"peak\" is VmHWM since the process started.",
        mib(rss_start)
    );
    Ok(())
}
