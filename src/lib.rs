//! The 1Password → Devo collector.
//!
//! Everything but [`component`] is a sans-IO core: plain Rust that takes the
//! time, stored bytes and HTTP responses as inputs and returns the requests
//! and writes to perform. It builds and is tested natively. `component` is
//! the thin wasm32 adapter from the WIT imports to that core.

pub mod account;
pub mod backoff;
pub mod budget;
pub mod checkpoint;
pub mod config;
pub mod devo;
pub mod endpoint;
pub mod error;
pub mod http;
mod json;
pub mod obfuscate;
pub mod onepassword;
pub mod report;
pub mod secret;
pub mod service;
pub mod state;
#[cfg(test)]
mod tests;
pub mod text;
pub mod tick;
pub mod time;
pub mod validate;

#[cfg(target_arch = "wasm32")]
mod component;
