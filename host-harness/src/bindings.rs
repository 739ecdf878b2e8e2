//! The Rust side of the WIT world `onepassword:collector/collector-host`:
//! what the harness provides (`wasi:keyvalue`, `wasi:config`, the cron
//! trigger's types) and what it calls (`onepassword:collector/runner`).
//! WASI itself (`wasi:http`, clocks, I/O, …) comes from `wasmtime-wasi` and
//! `wasmtime-wasi-http`. Each imported interface's host lives in its own
//! module of [`crate::host`].

wasmtime::component::bindgen!({
    path: "../wit",
    world: "onepassword:collector/collector-host",
    imports: { default: trappable },
    exports: { default: async },
    with: {
        "wasi:keyvalue/store.bucket": crate::host::keyvalue::Bucket,
        "wasi:keyvalue/atomics.cas": crate::host::keyvalue::CasHandle,
    },
});
