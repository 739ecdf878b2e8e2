//! The wasmtime host for the onepassword-collector component, as a library
//! (used by the `host-harness` binary and by the end-to-end tests).

pub mod demo;
pub mod emulator;
pub mod kv;
pub mod outbound;
pub mod runtime;
pub mod schedule;
pub mod spin_check;
pub mod status;
pub mod tenant;
