//! `host-harness`: run the onepassword-collector component locally, once
//! (`tick`) or on each tenant's schedule (`run`); check a setup
//! (`validate`) or read what was collected (`status`). The offline demo
//! against emulators is the test kit's `demo` binary (`scripts/demo.sh`),
//! so this command links none of the emulators.
//!
//! This file holds the arguments and the dispatch; `run.rs` the scheduler
//! (reload, graceful stop, skipped firings), `log.rs` its log lines,
//! `output.rs` the tables and JSON lines of the other commands.

mod log;
mod output;
mod run;

use clap::{Args, Parser, Subcommand};
use host_harness::host_settings::HostSettings;
use host_harness::kv::Stores;
use host_harness::runtime::{default_component_path, CompileCache, Runtime, RuntimeOptions};
use host_harness::shard::Shard;
use host_harness::telemetry::{self, Telemetry};
use host_harness::tenant;
use log::{LogFormat, Logger};
use onepassword_collector::validate::Status;
use output::OutputFormat;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

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
    /// The runtime, under the limits and outbound rules of the config's
    /// `[host]` section.
    fn runtime(&self, host: &HostSettings) -> anyhow::Result<Runtime> {
        let component = self.component.clone().unwrap_or_else(default_component_path);
        let cache = self.compile_cache.clone().map_or(CompileCache::NextToComponent, CompileCache::Dir);
        Runtime::with_options(
            &component,
            RuntimeOptions {
                limits: host.limits.clone(),
                cache,
                outbound: host.outbound.clone(),
                ..RuntimeOptions::default()
            },
        )
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run one tick per tenant; a table on a terminal, else one JSON line per tenant.
    Tick {
        #[command(flatten)]
        setup: Setup,
        /// Only this tenant.
        #[arg(long)]
        tenant: Option<String>,
        /// Tenants ticked at once.
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
        /// A table, one JSON line per tenant, or (auto) a table on a terminal
        /// and JSON otherwise.
        #[arg(long, value_enum, default_value_t = OutputFormat::Auto)]
        output: OutputFormat,
    },
    /// Tick every tenant on its schedule until Ctrl-C or SIGTERM; SIGHUP
    /// reloads the tenants file.
    Run {
        #[command(flatten)]
        setup: Setup,
        /// Tick only the tenants rendezvous hashing assigns to shard K of N
        /// (replicas split the tenants; overlapping replicas stay safe).
        #[arg(long, value_name = "K/N", env = "HOST_HARNESS_SHARD")]
        shard: Option<Shard>,
        /// Serve /metrics (Prometheus), /healthz and /readyz here, e.g.
        /// 127.0.0.1:9464. Off by default.
        #[arg(long, value_name = "ADDR", env = "HOST_HARNESS_LISTEN")]
        listen: Option<SocketAddr>,
        /// Seconds in-flight ticks may take to finish after a stop is asked.
        #[arg(long, value_name = "SECONDS", default_value_t = 30)]
        grace_period: u64,
        /// Ignored (kept so that old command lines still start): a tenant's
        /// failing ticks no longer make /readyz fail; they show in
        /// consecutive_failed_ticks and its alert.
        #[arg(long, value_name = "N", hide = true)]
        unready_after: Option<u32>,
        /// The stderr log: logfmt lines (key=value, for people, grep and
        /// Loki) or one JSON object per line (for log pipelines).
        #[arg(long, value_enum, default_value_t = LogFormat::Logfmt)]
        log_format: LogFormat,
    },
    /// Check each tenant's setup (config, store, token scopes, 1Password,
    /// Devo) without pulling any event.
    Validate {
        #[command(flatten)]
        setup: Setup,
        /// Only this tenant.
        #[arg(long)]
        tenant: Option<String>,
        /// A table, one JSON line per tenant, or (auto) a table on a terminal
        /// and JSON otherwise.
        #[arg(long, value_enum, default_value_t = OutputFormat::Auto)]
        output: OutputFormat,
    },
    /// Print, per tenant and service, what the stored state says: last
    /// success, newest event, lag, totals, last error.
    /// No component runs and nothing is fetched: secrets need not be set.
    Status {
        /// The tenants file (TOML) whose stores are read.
        #[arg(long)]
        config: PathBuf,
        /// A table, one JSON line per tenant, or (auto) a table on a terminal
        /// and JSON otherwise.
        #[arg(long, value_enum, default_value_t = OutputFormat::Auto)]
        output: OutputFormat,
    },
}

/// The config's `[host]` section and its tenants (or only `only`); only
/// the returned tenants' secrets are read from the environment.
fn load_tenants(config: &std::path::Path, only: Option<&str>) -> anyhow::Result<(HostSettings, Vec<tenant::Tenant>)> {
    let (host, tenants) =
        tenant::load_config_where(config, |n| std::env::var(n).ok(), |name| only.is_none_or(|o| o == name))?;
    if let Some(name) = only {
        anyhow::ensure!(!tenants.is_empty(), "no tenant named {name:?} in {}", config.display());
    }
    Ok((host, tenants))
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    // `run --log-format json` promises JSON lines on stderr, start-up
    // errors included (a log shipper parses every line).
    let json = matches!(cli.command, Command::Run { log_format: LogFormat::Json, .. });
    match dispatch(cli).await {
        Ok(code) => code,
        Err(e) if json => {
            let fields = vec![("msg".to_string(), serde_json::Value::String(format!("{e:#}")))];
            eprintln!("{}", log::render(LogFormat::Json, chrono::Utc::now(), log::Level::Error, fields));
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("host-harness: {}", fatal(&e));
            ExitCode::from(2)
        }
    }
}

/// A fatal error as stderr shows it, line by line: a parse error quotes the
/// tenants file, which holds tenants' variables, so each line is made inert
/// as a guest's text is (a caret diagram keeps its lines).
fn fatal(e: &anyhow::Error) -> String {
    const MAX_LINES: usize = 64;
    let text = format!("{e:#}");
    let lines: Vec<String> = text.lines().take(MAX_LINES).map(host_harness::guest_text::message).collect();
    lines.join("\n")
}

fn exit(ok: bool) -> ExitCode {
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

async fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Tick { setup, tenant: only, concurrency, output } => {
            let (host, tenants) = load_tenants(&setup.config, only.as_deref())?;
            let runtime = setup.runtime(&host)?;
            let ticks = runtime.tick_all(&tenants, concurrency).await;
            match output.resolve() {
                OutputFormat::Json => ticks.iter().for_each(|t| println!("{}", t.to_json())),
                _ => print!("{}", output::tick_table(&ticks)),
            }
            Ok(exit(ticks.iter().all(|t| t.ok())))
        }
        Command::Validate { setup, tenant: only, output } => {
            let (host, tenants) = load_tenants(&setup.config, only.as_deref())?;
            let runtime = setup.runtime(&host)?;
            let mut all_ok = true;
            for t in &tenants {
                let checks = runtime.validate(t).await;
                all_ok &= checks.iter().all(|c| c.status != Status::Fail);
                let store = t.kv.describe();
                let next = t.next_firing(chrono::Utc::now());
                match output.resolve() {
                    OutputFormat::Json => {
                        println!("{}", output::validate_json(&t.name, &store, next.as_ref(), &checks))
                    }
                    _ => print!("{}", output::validate_table(&t.name, &store, next.as_ref(), &checks)),
                }
            }
            Ok(exit(all_ok))
        }
        Command::Run { setup, shard, listen, grace_period, unready_after, log_format } => {
            // The [host] section is read once: a change takes a restart (a
            // reload says so).
            let (host, tenants) = run::load_shard(&setup.config, shard)?;
            let logger = Logger::new(log_format);
            if unready_after.is_some() {
                let why = "--unready-after is ignored: a tenant's failing ticks no longer make /readyz fail \
                           (see consecutive_failed_ticks and the OnePasswordCollectorTenantFailing alert)";
                logger.log(log::Level::Warn, None, why, &[]);
            }
            let telemetry = Arc::new(Telemetry::new());
            if let Some(addr) = listen {
                let listener = tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(|e| anyhow::anyhow!("cannot listen on {addr} (--listen): {e}"))?;
                let served = Arc::clone(&telemetry);
                tokio::spawn(async move {
                    if let Err(e) = telemetry::serve(listener, served).await {
                        eprintln!("host-harness: the metrics endpoint stopped: {e}");
                    }
                });
            }
            let runtime = setup.runtime(&host)?;
            let pool = runtime.clone();
            telemetry.watch_connections(Box::new(move || pool.connection_stats()));
            let options = run::RunOptions {
                config: setup.config.clone(),
                host,
                shard,
                grace: Duration::from_secs(grace_period),
                logger,
                telemetry,
            };
            run::run(runtime, options, tenants).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Status { config, output } => {
            // Status reads stored state only: secrets need not be in the environment.
            let tenants = tenant::load_file(&config, |n| Some(std::env::var(n).unwrap_or_default()))?;
            let rows = host_harness::status::read(&tenants, &Stores::default()).await;
            let now = chrono::Utc::now();
            match output.resolve() {
                OutputFormat::Json => {
                    let mut lines = host_harness::status::to_json(&rows, now);
                    host_harness::status::add_firings(&mut lines, &tenants, now);
                    lines.iter().for_each(|l| println!("{l}"));
                }
                _ => print!(
                    "{}\n{}",
                    host_harness::status::table(&rows, now),
                    host_harness::status::firings_table(&tenants, now)
                ),
            }
            Ok(exit(rows.iter().all(|r| r.state.is_ok())))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Cli;
    use clap::CommandFactory;

    #[test]
    fn every_option_of_every_command_has_help() {
        let cli = Cli::command();
        for command in cli.get_subcommands() {
            for arg in command.get_arguments().filter(|a| !a.is_hide_set()) {
                let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
                assert!(!help.trim().is_empty(), "{} --{} has no help text", command.get_name(), arg.get_id());
            }
        }
    }
}
