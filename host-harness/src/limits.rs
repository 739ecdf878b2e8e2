//! The ceilings every instance runs under, as plain data: the operator's
//! [`Limits`] (from the config's `[host]` section) with their defaults, and
//! the fixed bounds of an instance's host resources. The bottom of the host
//! library: the host interfaces enforce these, the settings parser fills
//! them, the runtime builds instances with them; none of that is here.

use std::time::Duration;

/// Default linear memory of one instance. A tick with three 1000-event
/// pages peaks at about 5–6 MiB (6.5 MiB with five pages per service,
/// without gzip), so this leaves more than twice that for larger events.
pub const DEFAULT_MEMORY_BYTES: usize = 16 << 20;
/// Default guest CPU time of one tick: the component's default tick
/// deadline. A tick pages through a backlog for as long as its deadline and
/// the account's budget allow, so its CPU grows with its pages: the default
/// budget's 500 pages of 1000 events take about 5 s of guest CPU (the
/// bench's part 6), more on a slower machine or with obfuscation. A tick
/// never computes for longer than it runs, so this stops a guest that
/// spins without ever cutting one that keeps to its deadline.
pub const DEFAULT_CPU_TIME: Duration = Duration::from_secs(30);
/// Default floor of a tick's wall-clock deadline: the component's default
/// tick deadline (30 s) plus four default request timeouts (30 s each: the
/// connect and first-byte waits of the last page's 1Password and Devo
/// requests). Never above the ceiling, [`Limits::wall_deadline`].
pub const DEFAULT_WALL_DEADLINE: Duration = Duration::from_secs(150);
/// Default ceiling of a tick's wall-clock deadline: what no tenant's tick
/// may exceed, whatever its `tick_deadline_ms` and `request_timeout_ms`.
pub const DEFAULT_MAX_WALL_DEADLINE: Duration = Duration::from_secs(15 * 60);
/// Default upper bound of each outbound request's connect, first-byte and
/// between-bytes waits.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Default size of the instance pool.
pub const DEFAULT_MAX_CONCURRENT_INSTANCES: usize = 32;

/// Entries the resource table of one instance may hold at once: key-value
/// buckets and swap handles, HTTP requests, responses, bodies, streams and
/// pollables. A tick of the collector holds a dozen or so at a time; a
/// guest that leaks handles is stopped (a trap, reported as the resource
/// limit) rather than growing the host's memory. Each entry may hold host
/// memory of its own — a request up to [`MAX_FIELDS_BYTES`] of headers and
/// two 64 KiB URI parts, a body up to two chunks of
/// [`OUTGOING_BODY_CHUNK_BYTES`](crate::host::outbound::OUTGOING_BODY_CHUNK_BYTES)
/// — so this bounds what one instance can make the host hold to tens of
/// MiB (the hostile-tenant suite, test-kit/tests/hostile.rs, measures it).
pub const MAX_RESOURCES: usize = 256;

/// The most bytes of headers a guest may put in one `wasi:http` `fields`
/// (wasi-http's default is 128 KiB, which times [`MAX_RESOURCES`] would let
/// a guest park 32 MiB in the host). The collector sends a handful of short
/// headers, the longest a bearer token of a few KiB.
pub const MAX_FIELDS_BYTES: usize = 16 << 10;

/// Limits of every instance and the size of the instance pool: the
/// operator's ceilings (the config's `[host]` section, see
/// [`crate::host_settings`]). A tenant's `[tenants.NAME.limits]` table may
/// lower memory, CPU and wall time for that tenant (see
/// [`crate::tenant::TenantLimits`]), never raise them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Linear memory one instance may hold, all its memories together.
    pub memory_bytes: usize,
    /// Upper bound of each of an outbound request's connect, first-byte and
    /// between-bytes waits.
    pub request_timeout: Duration,
    /// Time the guest may spend running WebAssembly during one tick,
    /// instantiation included. Time in host calls (waiting on the network,
    /// the key-value store) does not count. Checked at every host call and
    /// every epoch tick in between.
    pub cpu_time: Duration,
    /// Ceiling of the wall-clock deadline of a whole tick, instantiation to
    /// result. A tenant without its own `wall_ms` gets its component's tick
    /// deadline plus four request timeouts, at least
    /// [`DEFAULT_WALL_DEADLINE`], but never more than this (see
    /// `Limits::for_tenant` in the runtime).
    pub wall_deadline: Duration,
    /// Instances alive at once (sizes the pooling allocator); ticks beyond
    /// it wait for a free slot.
    pub max_concurrent_instances: usize,
    /// What a tenant may keep in its key-value store.
    pub state: StateLimits,
}

/// The size of a tenant's stored state, enforced by the host's
/// `wasi:keyvalue` ([`crate::host::keyvalue`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StateLimits {
    /// The largest value one key may hold (`state_value_bytes`).
    pub value_bytes: usize,
    /// The most keys the store may hold (`state_keys`).
    pub keys: usize,
    /// The most bytes the host holds at once for one instance's key-value
    /// use (`state_host_bytes`): the key and expected value of every
    /// compare-and-swap handle it holds open, plus the value a call is
    /// carrying (being written, read, or copied out of a handle). A call
    /// that would go past it fails with a store error naming the limit;
    /// dropping or swapping a handle gives its bytes back. One ceiling per
    /// instance, whatever the number of handles: without it, 64 handles on a
    /// 1 MiB value each held 64 MiB of host memory for an instance of 2 MiB.
    pub instance_bytes: usize,
}

/// Default largest stored value: a service's checkpoint is well under a
/// kilobyte.
pub const DEFAULT_STATE_VALUE_BYTES: usize = 1 << 20;
/// Default most keys in a tenant's store: the collector keeps one per
/// service and one per account (token).
pub const DEFAULT_STATE_KEYS: usize = 1000;
/// Default most bytes the host holds for one instance's key-value handles
/// and values: eight values of the default largest size; the collector
/// holds a few handles of well under a kilobyte each.
pub const DEFAULT_STATE_INSTANCE_BYTES: usize = 8 << 20;

impl Default for StateLimits {
    fn default() -> Self {
        StateLimits {
            value_bytes: DEFAULT_STATE_VALUE_BYTES,
            keys: DEFAULT_STATE_KEYS,
            instance_bytes: DEFAULT_STATE_INSTANCE_BYTES,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory_bytes: DEFAULT_MEMORY_BYTES,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            cpu_time: DEFAULT_CPU_TIME,
            wall_deadline: DEFAULT_MAX_WALL_DEADLINE,
            max_concurrent_instances: DEFAULT_MAX_CONCURRENT_INSTANCES,
            state: StateLimits::default(),
        }
    }
}
