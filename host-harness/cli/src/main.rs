//! `host-harness`: run the onepassword-collector component locally, once
//! (`tick`), on each tenant's schedule (`run`), or against built-in
//! emulators (`demo`).

use clap::{Args, Parser, Subcommand};
use host_harness::kv::Stores;
use host_harness::runtime::{default_component_path, CompileCache, Limits, Runtime, RuntimeOptions};
use host_harness::shard::Shard;
use host_harness::{schedule, tenant};
use onepassword_collector::validate::Status;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

#[derive(Parser)]
#[command(name = "host-harness", version, about = "Runs the 1Password → Devo collector component under wasmtime")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Where the tenants and the component are.
#[derive(Args)]
struct Setup {
    /// The tenants file (TOML).
    #[arg(long)]
    config: PathBuf,
    /// The component (.wasm); defaults to the workspace's release build.
    #[arg(long)]
    component: Option<PathBuf>,
    /// Where the compiled component is cached (default: beside the .wasm).
    /// Must be writable; with a read-only root file system, a volume.
    #[arg(long, env = "HOST_HARNESS_COMPILE_CACHE")]
    compile_cache: Option<PathBuf>,
}

impl Setup {
    fn runtime(&self) -> anyhow::Result<Runtime> {
        let component = self.component.clone().unwrap_or_else(default_component_path);
        let cache = self.compile_cache.clone().map_or(CompileCache::NextToComponent, CompileCache::Dir);
        Runtime::with_options(&component, RuntimeOptions { limits: Limits::default(), cache })
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run one tick per tenant and print one JSON line per tenant.
    Tick {
        #[command(flatten)]
        setup: Setup,
        /// Only this tenant.
        #[arg(long)]
        tenant: Option<String>,
        /// Tenants ticked at once.
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
    },
    /// Tick every tenant on its schedule until interrupted (Ctrl-C or SIGTERM).
    Run {
        #[command(flatten)]
        setup: Setup,
        /// Tick only the tenants rendezvous hashing assigns to shard K of N
        /// (replicas split the tenants; overlapping replicas stay safe).
        #[arg(long, value_name = "K/N", env = "HOST_HARNESS_SHARD")]
        shard: Option<Shard>,
    },
    /// Check each tenant's setup (config, store, token scopes, 1Password,
    /// Devo) without pulling any event.
    Validate {
        #[command(flatten)]
        setup: Setup,
        /// Only this tenant.
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Print, per tenant and service, what the stored state says: last
    /// success, newest event, lag, totals, last error.
    Status {
        #[arg(long)]
        config: PathBuf,
    },
    /// Start emulators of 1Password and Devo on loopback and collect everything.
    Demo {
        /// The component (.wasm); defaults to the workspace's release build.
        #[arg(long)]
        component: Option<PathBuf>,
        /// Events generated per service.
        #[arg(long, default_value_t = 2500)]
        events: usize,
        #[arg(long, default_value_t = 500)]
        page_size: u16,
    },
}

fn load_tenants(config: &std::path::Path, only: Option<&str>) -> anyhow::Result<Vec<tenant::Tenant>> {
    let mut tenants = tenant::load_file(config, |n| std::env::var(n).ok())?;
    if let Some(name) = only {
        tenants.retain(|t| t.name == name);
        anyhow::ensure!(!tenants.is_empty(), "no tenant named {name:?} in {}", config.display());
    }
    Ok(tenants)
}

/// Ctrl-C, or SIGTERM (what Kubernetes and systemd send to stop a process).
/// A tick cut short loses nothing: its checkpoint had not moved.
async fn stop_signal() -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            result = tokio::signal::ctrl_c() => result?,
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    tokio::signal::ctrl_c().await?;
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    match run(Cli::parse()).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("host-harness: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Tick { setup, tenant: only, concurrency } => {
            let tenants = load_tenants(&setup.config, only.as_deref())?;
            let runtime = setup.runtime()?;
            let ticks = runtime.tick_all(&tenants, concurrency).await;
            for tick in &ticks {
                println!("{}", tick.to_json());
            }
            Ok(if ticks.iter().all(|t| t.ok()) { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        Command::Validate { setup, tenant: only } => {
            let tenants = load_tenants(&setup.config, only.as_deref())?;
            let runtime = setup.runtime()?;
            let mut all_ok = true;
            for t in &tenants {
                println!("tenant {}", t.name);
                println!("  store   {}", t.kv.describe());
                for check in runtime.validate(t).await {
                    let mark = match check.status {
                        Status::Pass => "  ok  ",
                        Status::Warn => "  warn",
                        Status::Fail => "  FAIL",
                    };
                    all_ok &= check.status != Status::Fail;
                    println!("{mark}  {:<24} {}", check.name, check.detail);
                }
            }
            Ok(if all_ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        Command::Run { setup, shard } => {
            let mut tenants = tenant::load_file(&setup.config, |n| std::env::var(n).ok())?;
            let all = tenants.len();
            if let Some(shard) = shard {
                tenants.retain(|t| shard.owns(&t.name));
            }
            let runtime = Arc::new(setup.runtime()?);
            match shard {
                Some(shard) => {
                    eprintln!(
                        "host-harness: shard {shard}: running {} of {all} tenant(s); Ctrl-C or SIGTERM stops",
                        tenants.len()
                    )
                }
                None => eprintln!("host-harness: running {all} tenant(s); Ctrl-C or SIGTERM stops"),
            }
            let mut tasks = tokio::task::JoinSet::new();
            for t in tenants {
                let runtime = runtime.clone();
                tasks.spawn(async move {
                    let sched = schedule::parse(&t.schedule).expect("validated when loaded");
                    loop {
                        let now = chrono::Utc::now();
                        let Some(next) = schedule::next_after(&sched, now) else {
                            return;
                        };
                        tokio::time::sleep((next - now).to_std().unwrap_or_default()).await;
                        let tick = runtime.tick(&t).await;
                        // A human line per service on stderr (Devo's sender
                        // statistics), the JSON line on stdout.
                        match &tick.result {
                            Ok(report) => report
                                .services
                                .iter()
                                .for_each(|s| eprintln!("{} tenant={} {}", next.to_rfc3339(), t.name, s.log_line())),
                            Err(e) => eprintln!("{} tenant={} error=\"{e}\"", next.to_rfc3339(), t.name),
                        }
                        let mut line = tick.to_json();
                        line["fired_at"] = serde_json::Value::String(next.to_rfc3339());
                        println!("{line}");
                    }
                });
            }
            stop_signal().await?;
            tasks.abort_all();
            Ok(ExitCode::SUCCESS)
        }
        Command::Status { config } => {
            // Status reads stored state only: secrets need not be in the environment.
            let tenants = tenant::load_file(&config, |n| Some(std::env::var(n).unwrap_or_default()))?;
            let rows = host_harness::status::read(&tenants, &Stores::default()).await;
            print!("{}", host_harness::status::table(&rows, chrono::Utc::now()));
            Ok(if rows.iter().all(|r| r.state.is_ok()) { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        Command::Demo { component, events, page_size } => {
            let component = component.unwrap_or_else(default_component_path);
            let summary = harness_test_kit::demo::run(&component, events, page_size, &mut std::io::stdout()).await?;
            Ok(if summary.complete() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
    }
}
