//! No host backtrace reaches a tenant. With `RUST_BACKTRACE` (or
//! `RUST_LIB_BACKTRACE`) set, as an operator does to debug the host, every
//! wasmtime error captures the host's stack, and its `{:?}` ends with it:
//! frames naming the host's source files. An error the guest reads through
//! `wasi:io/error`'s `to-debug-string` (a response body that broke off, or
//! grew past the host's ceiling) must carry its message only.
//!
//! A test binary of its own: the variables are read once per process, at
//! the first backtrace, so they are set before anything else runs.
//!
//! Needs the release build of the component:
//! `cargo build --release --target wasm32-wasip2 -p onepassword-collector`.

use harness_test_kit::emulator::{
    tenant_variables, Dataset, DevoEmulator, DevoOptions, OnePasswordEmulator, OnePasswordOptions,
};
use harness_test_kit::loopback;
use host_harness::runtime::{default_component_path, Limits, OutboundSettings, Runtime, RuntimeOptions};
use host_harness::tenant::Tenant;
use onepassword_collector::report::Outcome;

const OP_TOKEN: &str = "backtraces-op-token-DO-NOT-LEAK";
const DEVO_TOKEN: &str = "backtracesDevoToken0123456789abc";

/// What a host backtrace looks like in a message: wasmtime's heading, or a
/// frame's `at /path/file.rs:LINE`.
fn backtrace_in(text: &str) -> bool {
    text.contains("backtrace") || text.contains(".rs:")
}

#[test]
fn a_stream_error_the_guest_reads_carries_no_host_backtrace() {
    std::env::set_var("RUST_BACKTRACE", "1");
    std::env::set_var("RUST_LIB_BACKTRACE", "1");
    let path = default_component_path();
    assert!(path.exists(), "{} is missing: build the component first", path.display());

    let now = chrono::Utc::now();
    let dataset = Dataset::generate(61, 200, now - chrono::Duration::hours(20), chrono::Duration::hours(19));
    let op = OnePasswordEmulator::start(OnePasswordOptions::new(OP_TOKEN, dataset)).unwrap();
    let devo = DevoEmulator::start(DevoOptions { domain: "bt".into(), token: DEVO_TOKEN.into() }).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut variables = tenant_variables(&op, OP_TOKEN, &devo, "bt", DEVO_TOKEN);
    variables.insert("services".into(), "audit".into());
    variables.insert("page_size".into(), "200".into());
    let tenant = Tenant {
        name: "acme".into(),
        schedule: "* * * * * *".into(),
        spread_firings: true,
        kv: dir.path().join("acme.sqlite").into(),
        variables,
        environment: Default::default(),
        allowed_outbound_hosts: None,
        limits: Default::default(),
    };
    // 200 events are some 100 KiB of JSON: the host ends the body at 4 KiB
    // with an error, which the guest reads through `to-debug-string`.
    let outbound = OutboundSettings { response_body_bytes: 4096, ..loopback::outbound() };
    let options = RuntimeOptions { limits: Limits::default(), outbound, ..RuntimeOptions::default() };
    let runtime = Runtime::with_options(&path, options).expect("component loads");
    let tick = tokio::runtime::Runtime::new().unwrap().block_on(runtime.tick(&tenant));

    let line = tick.to_json().to_string();
    let report = tick.result.as_ref().unwrap_or_else(|e| panic!("the tick ran: {e}"));
    let e = report.services[0].error.as_ref().unwrap_or_else(|| panic!("audit failed: {line}"));
    assert_eq!(report.services[0].outcome, Outcome::Failed, "{line}");
    assert!(e.message.contains("4096"), "the guest read the host's error: {}", e.message);
    assert!(!backtrace_in(&line), "a host backtrace reached the tenant: {line}");
}
