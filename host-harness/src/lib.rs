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
//!   the operator's ceilings; [`schedule`]: cron schedules;
//!   [`shard`]: which tenants a process ticks when replicas split them;
//!   [`status`]: what the stored state says, without running the component;
//! * [`telemetry`]: Prometheus metrics, health and readiness over HTTP;
//! * [`guest_text`]: what a component says, bounded and made inert before
//!   the host keeps or shows it.

mod bindings;
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
