//! The wasmtime host for the onepassword-collector component, as a library:
//! what the `host-harness` command (`cli/`) and any other embedder link.
//! It holds the host only; the emulators, demo, Spin checker and bench are
//! in `test-kit/`, which an embedder does not need.
//!
//! * [`runtime`]: engine and instance pool, compile cache, limits, one
//!   instance per tick, tick results;
//! * [`host`]: the host side of each imported interface (key-value, config,
//!   outbound HTTP policy);
//! * [`kv`]: where a tenant's key-value pairs live (a backend trait and its
//!   SQLite backend);
//! * [`tenant`]: the tenants file; [`host_settings`]: its `[host]` section,
//!   the operator's ceilings; [`schedule`]: cron schedules and how
//!   firings are spread over their period; [`fleet`]: the scheduler that
//!   ticks tenants on them (`run`'s);
//!   [`shard`]: which tenants a process ticks when replicas split them;
//!   [`status`]: what the stored state says, without running the component;
//! * [`telemetry`]: Prometheus metrics, health and readiness over HTTP;
//! * [`guest_text`]: what a component says, bounded and made inert before
//!   the host keeps or shows it.
//!
//! # Example
//!
//! The tenants file, here from text ([`tenant::load_config`] reads a file),
//! its `${NAME}` references taken from a map instead of the process
//! environment:
//!
//! ```
//! use std::path::Path;
//!
//! let text = r#"
//!     [host]
//!     memory_mib = 64
//!
//!     [tenants.acme]
//!     schedule = "0 */5 * * * *"
//!     [tenants.acme.variables]
//!     base_url = "https://events.1password.com"
//!     token = "${ACME_OP_TOKEN}"
//! "#;
//! let env = |name: &str| (name == "ACME_OP_TOKEN").then(|| "ops_example".to_string());
//! let (host, tenants) = host_harness::tenant::parse_config(text, Path::new("/etc/host-harness"), env)?;
//! assert_eq!(host.limits.memory_bytes, 64 << 20);
//! let acme = &tenants[0];
//! assert_eq!(acme.name, "acme");
//! assert_eq!(acme.variables["token"], "ops_example");
//! // No `kv`: a SQLite file named after the tenant, in `state/` beside the file.
//! assert_eq!(acme.kv.sqlite_path(), Some(Path::new("/etc/host-harness/state/acme.sqlite")));
//! # Ok::<(), anyhow::Error>(())
//! ```
//!
//! A runtime under the `[host]` section's ceilings and outbound rules, and
//! one tick of a tenant in a fresh instance. Ticks are async: they run
//! inside a tokio runtime, one for every tick of a `Runtime` (its Redis
//! connections live on the tokio runtime that opened them).
//!
//! ```no_run
//! use host_harness::runtime::{default_component_path, Runtime, RuntimeOptions};
//! use std::path::Path;
//!
//! #[tokio::main]
//! async fn main() -> anyhow::Result<()> {
//!     let env = |name: &str| std::env::var(name).ok();
//!     let (host, tenants) = host_harness::tenant::load_config(Path::new("tenants.toml"), env)?;
//!     let options = RuntimeOptions { limits: host.limits, outbound: host.outbound, ..RuntimeOptions::default() };
//!     // Compiled once (or loaded from the cache beside the .wasm), then
//!     // instantiated per tick.
//!     let runtime = Runtime::with_options(&default_component_path(), options)?;
//!     let tick = runtime.tick(&tenants[0]).await;
//!     println!("{}", tick.to_json());
//!     anyhow::ensure!(tick.ok(), "tenant {} failed its tick", tick.tenant);
//!     Ok(())
//! }
//! ```

#![warn(missing_docs)]

mod bindings;
pub mod catch_up;
pub mod fleet;
pub mod guest_text;
pub mod host;
pub mod host_settings;
pub mod kv;
pub mod limits;
pub mod runtime;
pub mod schedule;
pub mod shard;
pub mod status;
pub mod telemetry;
pub mod tenant;
