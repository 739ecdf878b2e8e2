//! The Rust side of the WIT world `onepassword:collector/collector-host`:
//! what the harness provides (`wasi:keyvalue`, `wasi:config`, the cron
//! trigger's types) and what it calls (`onepassword:collector/runner`).
//! WASI itself (`wasi:http`, clocks, I/O, …) comes from `wasmtime-wasi` and
//! `wasmtime-wasi-http`. Each imported interface's host lives in its own
//! module of [`crate::host`].

wasmtime::component::bindgen!({
    path: "../wit",
    world: "onepassword:collector/collector-host",
    // The store's calls wait on a disk or a network: they are async so
    // that no tenant's store holds up a worker thread.
    imports: {
        "wasi:keyvalue/store": async | trappable,
        "wasi:keyvalue/atomics": async | trappable,
        default: trappable,
    },
    exports: { default: async },
    with: {
        "wasi:keyvalue/store.bucket": crate::host::keyvalue::Bucket,
        "wasi:keyvalue/atomics.cas": crate::host::keyvalue::CasHandle,
    },
});
