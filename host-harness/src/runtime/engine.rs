//! The wasmtime engine every tenant shares: a pooling allocator sized for
//! the instance pool (instances are created and torn down every tick, so
//! their memories and tables are reused rather than mapped anew), and epoch
//! interruption driven by a thread of its own, so guest code that never
//! calls the host still yields and has its CPU time checked.

use crate::limits::Limits;
use anyhow::Context;
use std::time::Duration;
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

/// How often the engine's epoch advances: the granularity of the CPU
/// deadline for guest code that makes no host call, and of the guest's
/// yields to other tasks.
pub(crate) const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Per-pool-slot room for what one instance of the component uses (it has
/// three core instances, one memory and two tables), with margin.
const CORE_INSTANCES_PER_COMPONENT: u32 = 8;
const MEMORIES_PER_COMPONENT: u32 = 2;
const TABLES_PER_COMPONENT: u32 = 4;

/// Bytes of a slot's linear memory zeroed in place rather than decommitted.
const KEEP_RESIDENT_BYTES: usize = 1 << 20;
/// Likewise for its tables (the component's are a few KiB).
const TABLE_KEEP_RESIDENT_BYTES: usize = 64 << 10;
/// Slots whose memory goes back to the kernel in one batch.
const DECOMMIT_BATCH: usize = 16;

/// An engine whose pool holds `limits.max_concurrent_instances` instances,
/// with its epoch ticker running.
pub(crate) fn new(limits: &Limits) -> anyhow::Result<Engine> {
    let engine = Engine::new(&config(limits))?;
    start_epoch_ticker(&engine)?;
    Ok(engine)
}

fn config(limits: &Limits) -> Config {
    let slots = u32::try_from(limits.max_concurrent_instances).unwrap_or(u32::MAX).min(100_000);
    let mut pool = PoolingAllocationConfig::new();
    pool.total_component_instances(slots)
        .total_core_instances(slots.saturating_mul(CORE_INSTANCES_PER_COMPONENT))
        .total_memories(slots.saturating_mul(MEMORIES_PER_COMPONENT))
        .total_tables(slots.saturating_mul(TABLES_PER_COMPONENT))
        // One fiber for instantiation, one for the call; margin for both.
        .total_stacks(slots.saturating_mul(2))
        // A tick's instance is torn down when the tick ends. Zeroing the
        // first MiB of its memory with memset, instead of handing it back
        // to the kernel with madvise, spares the next instance in the slot
        // a page fault for every page it touches: an idle tick uses about
        // 1.1 MiB, and the faults were a good part of its host CPU
        // (BENCHMARKS.md, part 8). The cost is that memory staying resident:
        // at most a MiB per slot that was used.
        .linear_memory_keep_resident(KEEP_RESIDENT_BYTES)
        .table_keep_resident(TABLE_KEEP_RESIDENT_BYTES)
        // Hands memory back in batches: one call for many slots.
        .decommit_batch_size(DECOMMIT_BATCH);
    let mut config = Config::new();
    config.epoch_interruption(true).allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    // For profiling only: with HOST_HARNESS_PERF_MAP=1 the engine writes
    // /tmp/perf-PID.map, so that `perf report` names the guest's functions
    // instead of showing anonymous JIT code (BENCHMARKS.md shows how).
    if std::env::var_os("HOST_HARNESS_PERF_MAP").is_some_and(|v| v == "1") {
        config.profiler(wasmtime::ProfilingStrategy::PerfMap);
    }
    config
}

/// Advances the engine's epoch every [`EPOCH_TICK`] until the engine is gone.
fn start_epoch_ticker(engine: &Engine) -> anyhow::Result<()> {
    let engine = engine.weak();
    std::thread::Builder::new()
        .name("wasm-epoch".into())
        .spawn(move || loop {
            std::thread::sleep(EPOCH_TICK);
            match engine.upgrade() {
                Some(engine) => engine.increment_epoch(),
                None => return,
            }
        })
        .context("cannot start the epoch thread")?;
    Ok(())
}
