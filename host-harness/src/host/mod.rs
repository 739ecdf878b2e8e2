//! The host side of each interface the component imports beyond WASI, one
//! module per interface, each with its own context and `add_to_linker`:
//!
//! * [`keyvalue`]: `wasi:keyvalue/store` and `atomics` over a tenant's
//!   [`KvBackend`](crate::kv::KvBackend), with fault injection for tests;
//! * [`config`]: `wasi:config/store`, the tenant's variables;
//! * [`outbound`]: every outgoing `wasi:http` request: the allow-list
//!   (scheme, host, port), the operator's `allow_http` and
//!   `allow_private_networks` checked on the address connected to, capped
//!   timeouts and a bounded response body.

pub mod config;
pub mod keyvalue;
pub mod outbound;
