//! Part 8 (`--idle`): what a tick that finds nothing new costs the host, over
//! https, for many caught-up tenants — the cost that dominates hosting many
//! tenants. The emulators run behind TLS fronts in the child process (so
//! their TLS work is not the harness's); every tenant keeps its state in its
//! own SQLite file and asks for all three services.
//!
//! Two runtimes, one after the other on the same emulators: one configured
//! as the harness was before connections were pooled and stores kept open
//! (no idle connection kept, one SQLite file open at a time), and the
//! defaults. For each: the harness process's CPU per idle tick (the sum of
//! its threads' schedstat; the child's is shown beside), requests per tick,
//! connections opened and reused, and RSS.

use super::{f, memory, mib, n, self_cpu_fine, Bench, Emulators, StateDir, Table};
use chrono::Utc;
use host_harness::host::outbound::{OutboundSettings, PoolLimits, TlsTrust};
use host_harness::runtime::{CompileCache, Limits, Runtime, RuntimeOptions};
use onepassword_collector::service::Service;
use std::path::Path;
use std::time::Instant;

/// The environment variable that makes `serve-emulators` put TLS fronts in
/// front of the emulators; its value is the file it writes the CA to.
pub const TLS_CA_FILE_VAR: &str = "BENCH_EMULATORS_TLS_CA";

/// Ticks in flight at once.
const CONCURRENCY: usize = 8;
/// Measured rounds: every tenant ticks once per round.
const ROUNDS: usize = 3;

pub async fn run(component: &Path, tenants: usize, parent: &Path) -> anyhow::Result<()> {
    let ca_file = parent.join(format!("onepassword-bench-ca-{}.pem", std::process::id()));
    let start = Utc::now() - chrono::Duration::hours(2);
    // The child inherits the variable: it serves https.
    std::env::set_var(TLS_CA_FILE_VAR, &ca_file);
    let emulators = Emulators::start(5, start, chrono::Duration::hours(1));
    std::env::remove_var(TLS_CA_FILE_VAR);
    let emulators = emulators?;
    anyhow::ensure!(emulators.op_url.starts_with("https://"), "the emulators serve {}", emulators.op_url);
    let tls = TlsTrust::with_extra_pem_file(&ca_file).map_err(anyhow::Error::msg)?;
    let _ = std::fs::remove_file(&ca_file);
    let outbound = OutboundSettings {
        allow_private_networks: vec![
            "127.0.0.0/8".parse().map_err(anyhow::Error::msg)?,
            "::1/128".parse().map_err(anyhow::Error::msg)?,
        ],
        tls,
        ..OutboundSettings::default()
    };
    let services: Vec<&str> = Service::ALL.iter().map(|s| s.name()).collect();
    let services = services.join(",");

    let mut table = Table::new(
        &format!(
            "8. Idle ticks over https: {tenants} caught-up tenants × {ROUNDS} rounds, {CONCURRENCY} in flight, \
             3 services each, own SQLite file each"
        ),
        &[
            "host",
            "idle ticks",
            "ok",
            "harness CPU µs/tick",
            "emulators CPU µs/tick",
            "requests/tick",
            "connections opened",
            "reused",
            "connections/requests",
            "SQLite opens",
            "wall s",
            "RSS MiB",
        ],
    );
    let configurations = [
        (
            "before: new connection per request, store opened per tick",
            PoolLimits { per_destination: 0, ..PoolLimits::default() },
            Some(1),
        ),
        ("now: defaults (kept-alive connections, stores kept open)", PoolLimits::default(), None),
    ];
    // For profiling one configuration alone (`perf record`), the defaults:
    let defaults_only = std::env::var_os("BENCH_IDLE_DEFAULTS_ONLY").is_some_and(|v| v == "1");
    let skip = usize::from(defaults_only);
    for (label, pool, open_store_files) in configurations.into_iter().skip(skip) {
        let dir = StateDir::create(&parent.join(format!("onepassword-bench-idle-{}", table_rows(&table))))?;
        let bench = Bench { emulators: &emulators, dirs: vec![], data_start: emulators.data_start };
        let extra: &[(&str, &str)] = &[("services", &services), ("max_pages_per_tick", "5")];
        let list: Vec<_> = (0..tenants).map(|i| bench.tenant(&dir, &format!("idle-{i}"), extra)).collect();
        let runtime = Runtime::with_options(
            component,
            RuntimeOptions {
                limits: Limits::default(),
                cache: CompileCache::Off,
                outbound: outbound.clone(),
                pool,
                open_store_files,
            },
        )?;
        // Catch every tenant up, then one idle round to warm what is kept.
        for _ in 0..2 {
            let ticks = runtime.tick_all(&list, CONCURRENCY).await;
            if let Some(bad) = ticks.iter().find(|t| !t.ok()) {
                anyhow::bail!("a warm-up tick failed: {}", bad.to_json());
            }
        }
        let (cpu, emu, stats, opens) = (
            self_cpu_fine(),
            emulators.cpu_fine(),
            runtime.connection_stats(),
            runtime.stores().sqlite_files().opened(),
        );
        let started = Instant::now();
        let mut ok = 0;
        let mut ticks = 0;
        let mut fetched = 0;
        for _ in 0..ROUNDS {
            for t in runtime.tick_all(&list, CONCURRENCY).await {
                ticks += 1;
                ok += usize::from(t.ok());
                fetched += t.result.as_ref().map_or(0, |r| r.services.iter().map(|s| s.fetched as u64).sum::<u64>());
            }
        }
        let wall = started.elapsed().as_secs_f64();
        let (cpu, emu) = (self_cpu_fine() - cpu, emulators.cpu_fine() - emu);
        let after = runtime.connection_stats();
        let (opened, reused) = (after.opened - stats.opened, after.reused - stats.reused);
        let requests = opened + reused;
        let (rss, _) = memory();
        let per_tick = |seconds: f64| f(seconds * 1e6 / ticks.max(1) as f64, 0);
        table.row(vec![
            label.into(),
            n(ticks as f64),
            format!("{ok}/{ticks}"),
            per_tick(cpu),
            per_tick(emu),
            f(requests as f64 / ticks.max(1) as f64, 2),
            n(opened as f64),
            n(reused as f64),
            f(opened as f64 / requests.max(1) as f64, 3),
            n((runtime.stores().sqlite_files().opened() - opens) as f64),
            f(wall, 2),
            mib(rss),
        ]);
        if fetched > 0 {
            println!("   ! {label}: {fetched} events fetched in the measured rounds (not idle)");
        }
        let _ = std::fs::remove_dir_all(dir.path.parent().unwrap_or(&dir.path));
    }
    table.print();
    println!(
        "   \"before\" runs today's code with nothing kept (PoolLimits.per_destination = 0, one open store \
         file), which is how the harness behaved before: each request its own TCP connection and TLS handshake \
         (resumed sessions here), each tick its SQLite open, WAL checkpoint and unlink."
    );
    Ok(())
}

fn table_rows(table: &Table) -> usize {
    table.rows.len()
}
