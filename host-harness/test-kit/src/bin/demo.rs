//! The offline first run: 1Password and Devo emulators on loopback with
//! generated events, and the collector ticking against them until it has
//! caught up, with progress per Devo tag and a summary
//! (`./scripts/demo.sh [--events N] [--page-size N] [--component WASM]`).

use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;

/// Runs the collector against built-in emulators until every generated
/// event reached the emulated Devo, exactly once.
#[derive(Parser)]
#[command(name = "demo")]
struct Demo {
    /// The component (.wasm); defaults to the workspace's release build.
    #[arg(long)]
    component: Option<PathBuf>,
    /// Events generated per service.
    #[arg(long, default_value_t = 2500)]
    events: usize,
    /// Events per 1Password page (the collector's page_size), 1 to 1000.
    #[arg(long, default_value_t = 500)]
    page_size: u16,
}

fn main() -> anyhow::Result<ExitCode> {
    let demo = Demo::parse();
    let component = demo.component.unwrap_or_else(host_harness::runtime::default_component_path);
    let runtime = tokio::runtime::Runtime::new()?;
    let summary = runtime.block_on(harness_test_kit::demo::run(
        &component,
        demo.events,
        demo.page_size,
        &mut std::io::stdout(),
    ))?;
    Ok(if summary.complete() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
