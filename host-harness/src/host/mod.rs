//! The host side of each interface the component imports beyond WASI, one
//! module per interface, each with its own context and `add_to_linker`:
//!
//! * [`keyvalue`]: `wasi:keyvalue/store` and `atomics` over a tenant's
//!   [`KvBackend`](crate::kv::KvBackend), with fault injection for tests;
//! * [`config`]: `wasi:config/store`, the tenant's variables;
//! * [`outbound`]: the policy every outgoing `wasi:http` request passes
//!   (allow-list, capped timeouts).

pub mod config;
pub mod keyvalue;
pub mod outbound;
