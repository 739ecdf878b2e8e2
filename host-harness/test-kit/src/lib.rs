//! Everything around the host that tests, the demo and the bench need and an
//! embedder of the host does not:
//!
//! * [`emulator`]: loopback emulators of the 1Password Events API and of
//!   Devo's HTTP ingestion, with seeded, switchable faults, and the
//!   generator of their data sets;
//! * [`demo`]: the offline first run (`host-harness demo`);
//! * [`loopback`]: the outbound rules that let a runtime reach the
//!   emulators (plain http on 127.0.0.1), as settings and as `[host]` keys;
//! * [`redis_server`]: a real `redis-server` on a free loopback port;
//! * [`spin_redis`]: a key-value store that behaves exactly like Spin's
//!   Redis store (its compare-and-swap answers "failed" to every swap), for
//!   the end-to-end tests of the component under it;
//! * [`spin_check`]: the static Spin compatibility checker behind
//!   `tests/spin_compat.rs`;
//! * [`tls`]: a test CA made in memory and a TLS front before an emulator,
//!   for the host's https path;
//! * `src/bin/bench.rs`: the bench binary (`cargo run --release -p
//!   harness-test-kit --bin bench`).

pub mod demo;
pub mod emulator;
pub mod loopback;
pub mod redis_server;
pub mod spin_check;
pub mod spin_redis;
pub mod tls;
