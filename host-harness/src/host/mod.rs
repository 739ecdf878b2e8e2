//! The host side of each interface the component imports beyond WASI, one
//! module per interface, each with its own context and `add_to_linker`:
//!
//! * [`keyvalue`]: `wasi:keyvalue/store` and `atomics` over a tenant's
//!   [`KvBackend`](crate::kv::KvBackend), with fault injection for tests;
//! * [`variables`]: `wasi:config/store`, the tenant's variables;
//! * [`outbound`]: every outgoing `wasi:http` request: the allow-list
//!   (scheme, host, port), the operator's `allow_http` and
//!   `allow_private_networks` checked on the address connected to, capped
//!   timeouts and a bounded response body;
//! * `io_error`: `wasi:io/error` in place of wasmtime-wasi's, so that a
//!   stream's error reaches the guest without the host's backtrace;
//! * [`stderr`]: the guest's `wasi:cli/stderr`, kept for the host to show
//!   cleaned, never written to the host's own stderr.

pub(crate) mod io_error;
pub mod keyvalue;
pub mod outbound;
pub mod stderr;
pub mod variables;
