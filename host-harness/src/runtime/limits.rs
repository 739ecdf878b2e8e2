//! What one instance may use, and how the host enforces it: the runtime's
//! [`Limits`] (the operator's ceilings, from the config's `[host]` section),
//! a tenant's [`EffectiveLimits`] (its own lower values, else the runtime's;
//! never above them), and the `Guard` that lives in each instance's store and
//! counts linear memory (as wasmtime's `ResourceLimiter`) and guest CPU time
//! (at every host call and every epoch). What it observed goes to a shared
//! `Meter`, readable after a wall-clock timeout dropped the store, so a
//! host failure can name the limit that was hit.

use crate::limits::*;
use crate::tenant::Tenant;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use wasmtime::ResourceLimiter;

/// An instance may create this many core instances, tables and memories,
/// and grow a table to this many elements.
const MAX_INSTANCES_PER_STORE: usize = 32;
const MAX_TABLES_PER_STORE: usize = 32;
const MAX_MEMORIES_PER_STORE: usize = 8;
const MAX_TABLE_ELEMENTS: usize = 100_000;

/// Every cap one tenant's ticks run under, computed in one place
/// ([`Limits::for_tenant`]) and read from here by whatever enforces it: the
/// tenant's own (lower) memory, CPU and wall time, else the runtime's; and
/// the host's own, the same for every tenant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EffectiveLimits {
    /// Linear memory of the instance (the instance's `Guard`).
    pub memory_bytes: usize,
    /// Guest CPU time of a tick (the instance's `Guard`, at host calls and epochs).
    pub cpu_time: Duration,
    /// Wall-clock time of a tick (the runtime's timeout around it).
    pub wall_deadline: Duration,
    /// Each outbound connect, first-byte and between-bytes wait
    /// (`host::outbound`'s policy caps the guest's own timeouts at it).
    pub request_timeout: Duration,
    /// Stored value size, key count and host bytes of the key-value store
    /// (`host::keyvalue`).
    pub state: StateLimits,
    /// Host resources alive at once (the instance's resource table).
    pub resources: usize,
    /// Header bytes of one `wasi:http` `fields`.
    pub fields_bytes: usize,
}

impl Limits {
    /// The limits a tenant's ticks run under: its own `[limits]`, else the
    /// runtime's, and never above the runtime's (the operator's ceilings;
    /// the tenants file refuses higher values, this also holds for tenants
    /// built in code). Without its own `wall_ms`, a tenant gets at least its
    /// component's tick deadline plus four request timeouts (the last
    /// page's 1Password and Devo requests, each waiting up to a timeout to
    /// connect and another for the first byte), so the host does not cut a
    /// tick the component itself would have finished — up to the wall
    /// ceiling: the tenant's variables cannot raise its deadline above it.
    pub fn for_tenant(&self, tenant: &Tenant) -> EffectiveLimits {
        use onepassword_collector::config::{key, DEFAULT_REQUEST_TIMEOUT_MS, DEFAULT_TICK_DEADLINE_MS};
        let own = &tenant.limits;
        let wall_deadline = own.wall_deadline.unwrap_or_else(|| {
            let millis = |key: &str, default: u64| {
                let value = tenant.variables.get(key).and_then(|v| v.trim().parse::<u64>().ok());
                Duration::from_millis(value.unwrap_or(default))
            };
            let tick_deadline = millis(key::TICK_DEADLINE_MS, DEFAULT_TICK_DEADLINE_MS);
            let request = millis(key::REQUEST_TIMEOUT_MS, DEFAULT_REQUEST_TIMEOUT_MS).min(self.request_timeout);
            DEFAULT_WALL_DEADLINE.max(tick_deadline.saturating_add(request.saturating_mul(4)))
        });
        EffectiveLimits {
            memory_bytes: own.memory_bytes.map_or(self.memory_bytes, |m| m.min(self.memory_bytes)),
            cpu_time: own.cpu_time.map_or(self.cpu_time, |c| c.min(self.cpu_time)),
            wall_deadline: wall_deadline.min(self.wall_deadline),
            request_timeout: self.request_timeout,
            state: self.state,
            resources: MAX_RESOURCES,
            fields_bytes: MAX_FIELDS_BYTES,
        }
    }
}

/// What a tick's limits observed; shared with the host so it can still be
/// read after a wall-clock timeout dropped the store.
#[derive(Default)]
pub(crate) struct Meter {
    pub peak_memory: AtomicU64,
    /// The largest total the instance asked for and was refused (0: none).
    pub memory_refused: AtomicU64,
    pub cpu_used_us: AtomicU64,
    pub cpu_exceeded: AtomicBool,
    /// What the guest wrote to its stderr.
    pub stderr: crate::host::stderr::GuestStderr,
}

impl Meter {
    /// Names the limit behind a failed instantiation or call, if one was hit.
    pub fn explain(&self, trap: &anyhow::Error, limits: &EffectiveLimits) -> String {
        if self.cpu_exceeded.load(Ordering::Relaxed) {
            return format!(
                "CPU deadline exceeded: the guest ran for more than {} ms of CPU time (limit cpu_ms)",
                limits.cpu_time.as_millis()
            );
        }
        let refused = self.memory_refused.load(Ordering::Relaxed);
        if refused > 0 {
            return format!(
                "memory limit exceeded: the instance needed {} of linear memory, over its limit of {} (limit memory_mib); {}",
                mib(refused),
                mib(limits.memory_bytes as u64),
                trap.root_cause()
            );
        }
        if resource_table_full(trap) {
            return format!(
                "resource limit exceeded: the instance held more than {} host resources at once (HTTP requests, \
                 bodies, streams, headers, buckets…) and asked for another; {}",
                crate::limits::MAX_RESOURCES,
                trap.root_cause()
            );
        }
        format!("{trap:#}")
    }
}

/// True when a host call failed because the instance's resource table was
/// full ([`MAX_RESOURCES`](crate::limits::MAX_RESOURCES)): wasi-http and
/// wasi-io turn that into a trap, with wasmtime's own error somewhere in the
/// chain (by type, or as its text once converted between error types).
fn resource_table_full(trap: &anyhow::Error) -> bool {
    use wasmtime::component::ResourceTableError;
    let full = ResourceTableError::Full.to_string();
    trap.chain().any(|e| {
        matches!(e.downcast_ref::<ResourceTableError>(), Some(ResourceTableError::Full)) || e.to_string() == full
    })
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / f64::from(1 << 20))
}

/// Enforces one tick's memory and CPU limits from inside its store.
pub(crate) struct Guard {
    meter: Arc<Meter>,
    memory_limit: usize,
    /// Linear memory of every memory of the store together.
    memory_total: usize,
    /// The last growth allowed, taken back if it then failed.
    last_growth: usize,
    cpu_budget: Duration,
    cpu_used: Duration,
    /// Set while guest code runs.
    running_since: Option<Instant>,
}

impl Guard {
    pub fn new(meter: Arc<Meter>, limits: &EffectiveLimits) -> Guard {
        Guard {
            meter,
            memory_limit: limits.memory_bytes,
            memory_total: 0,
            last_growth: 0,
            cpu_budget: limits.cpu_time,
            cpu_used: Duration::ZERO,
            running_since: None,
        }
    }

    /// The guest starts or resumes running.
    pub fn resume(&mut self) {
        if self.running_since.is_none() {
            self.running_since = Some(Instant::now());
        }
    }

    /// The guest stops running (returns, or calls the host): its time is
    /// added up and checked against the budget.
    pub fn pause(&mut self) -> wasmtime::Result<()> {
        if let Some(since) = self.running_since.take() {
            self.cpu_used += since.elapsed();
            self.meter.cpu_used_us.store(self.cpu_used.as_micros() as u64, Ordering::Relaxed);
        }
        self.check_cpu()
    }

    pub fn check_cpu(&self) -> wasmtime::Result<()> {
        if self.cpu_used > self.cpu_budget {
            self.meter.cpu_exceeded.store(true, Ordering::Relaxed);
            return Err(wasmtime::format_err!("CPU deadline exceeded"));
        }
        Ok(())
    }
}

impl ResourceLimiter for Guard {
    fn memory_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        let growth = desired.saturating_sub(current);
        let total = self.memory_total.saturating_add(growth);
        if total > self.memory_limit {
            self.meter.memory_refused.fetch_max(total as u64, Ordering::Relaxed);
            return Ok(false);
        }
        if maximum.is_some_and(|max| desired > max) {
            return Ok(false);
        }
        self.memory_total = total;
        self.last_growth = growth;
        self.meter.peak_memory.fetch_max(total as u64, Ordering::Relaxed);
        Ok(true)
    }

    fn memory_grow_failed(&mut self, _error: wasmtime::Error) -> wasmtime::Result<()> {
        self.memory_total = self.memory_total.saturating_sub(std::mem::take(&mut self.last_growth));
        Ok(())
    }

    fn table_growing(&mut self, _current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS && maximum.is_none_or(|max| desired <= max))
    }

    fn instances(&self) -> usize {
        MAX_INSTANCES_PER_STORE
    }

    fn tables(&self) -> usize {
        MAX_TABLES_PER_STORE
    }

    fn memories(&self) -> usize {
        MAX_MEMORIES_PER_STORE
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tenant::TenantLimits;

    fn limits(memory_bytes: usize) -> EffectiveLimits {
        EffectiveLimits {
            memory_bytes,
            cpu_time: Duration::from_millis(50),
            wall_deadline: Duration::from_secs(1),
            ..Limits::default().for_tenant(&tenant(&[], TenantLimits::default()))
        }
    }

    fn tenant(variables: &[(&str, &str)], own: TenantLimits) -> Tenant {
        Tenant {
            name: "t".into(),
            schedule: "* * * * * *".into(),
            spread_firings: true,
            kv: std::path::PathBuf::from("/nowhere/t.sqlite").into(),
            variables: variables.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            environment: Default::default(),
            allowed_outbound_hosts: None,
            limits: own,
        }
    }

    #[test]
    fn a_tenants_variables_cannot_raise_its_wall_deadline_above_the_ceiling() {
        let hour = [("tick_deadline_ms", "3600000"), ("request_timeout_ms", "600000")];
        let defaults = Limits::default();
        // 1 h + 4 × 30 s (the host's request timeout) would be 62 min
        assert_eq!(
            defaults.for_tenant(&tenant(&hour, TenantLimits::default())).wall_deadline,
            DEFAULT_MAX_WALL_DEADLINE
        );
        let strict = Limits { wall_deadline: Duration::from_secs(60), ..Limits::default() };
        assert_eq!(strict.for_tenant(&tenant(&hour, TenantLimits::default())).wall_deadline, Duration::from_secs(60));
        assert_eq!(strict.for_tenant(&tenant(&[], TenantLimits::default())).wall_deadline, Duration::from_secs(60));
        // the floor still applies below the ceiling
        let ten_min = [("tick_deadline_ms", "600000"), ("request_timeout_ms", "20000")];
        assert_eq!(defaults.for_tenant(&tenant(&ten_min, TenantLimits::default())).wall_deadline.as_secs(), 680);
        assert_eq!(defaults.for_tenant(&tenant(&[], TenantLimits::default())).wall_deadline, DEFAULT_WALL_DEADLINE);
    }

    #[test]
    fn a_tenants_own_limits_only_narrow_the_runtimes() {
        let ceilings = Limits {
            memory_bytes: 8 << 20,
            cpu_time: Duration::from_secs(1),
            wall_deadline: Duration::from_secs(60),
            ..Limits::default()
        };
        let greedy = TenantLimits {
            memory_bytes: Some(64 << 20),
            cpu_time: Some(Duration::from_secs(60)),
            wall_deadline: Some(Duration::from_secs(3600)),
        };
        let got = ceilings.for_tenant(&tenant(&[], greedy));
        assert_eq!(
            got,
            EffectiveLimits {
                memory_bytes: 8 << 20,
                cpu_time: Duration::from_secs(1),
                wall_deadline: Duration::from_secs(60),
                request_timeout: ceilings.request_timeout,
                state: ceilings.state,
                resources: MAX_RESOURCES,
                fields_bytes: MAX_FIELDS_BYTES,
            }
        );
        let modest = TenantLimits {
            memory_bytes: Some(4 << 20),
            cpu_time: Some(Duration::from_millis(500)),
            wall_deadline: Some(Duration::from_secs(5)),
        };
        let got = ceilings.for_tenant(&tenant(&[], modest));
        assert_eq!(
            got,
            EffectiveLimits {
                memory_bytes: 4 << 20,
                cpu_time: Duration::from_millis(500),
                wall_deadline: Duration::from_secs(5),
                ..got
            }
        );
    }

    #[test]
    fn the_guard_counts_every_memory_and_takes_back_failed_growth() {
        let meter = Arc::new(Meter::default());
        let mut g = Guard::new(Arc::clone(&meter), &limits(4 << 20));
        assert!(g.memory_growing(0, 2 << 20, None).unwrap());
        assert!(g.memory_growing(0, 1 << 20, None).unwrap(), "a second memory");
        assert!(!g.memory_growing(2 << 20, 4 << 20, None).unwrap(), "3 + 2 MiB is over 4 MiB");
        assert_eq!(meter.memory_refused.load(Ordering::Relaxed), 5 << 20);
        assert!(g.memory_growing(1 << 20, 2 << 20, None).unwrap());
        g.memory_grow_failed(wasmtime::format_err!("no")).unwrap();
        assert!(g.memory_growing(2 << 20, 3 << 20, None).unwrap(), "the failed growth was given back");
        assert!(!g.memory_growing(1 << 20, 2 << 20, Some(1 << 20)).unwrap(), "the memory's own maximum");
        assert_eq!(meter.peak_memory.load(Ordering::Relaxed), 4 << 20);
    }

    #[test]
    fn a_full_resource_table_is_named_as_the_resource_limit() {
        let limits = limits(1 << 20);
        let full = anyhow::Error::from(wasmtime::component::ResourceTableError::Full).context("[new_fields] pushing");
        let said = Meter::default().explain(&full, &limits);
        assert!(said.starts_with("resource limit exceeded"), "{said}");
        assert!(said.contains(&crate::limits::MAX_RESOURCES.to_string()), "{said}");
        let other = anyhow::Error::from(wasmtime::component::ResourceTableError::NotPresent);
        assert!(!Meter::default().explain(&other, &limits).contains("resource limit"));
    }

    #[test]
    fn the_guard_counts_only_time_in_guest_code() {
        let meter = Arc::new(Meter::default());
        let mut g = Guard::new(Arc::clone(&meter), &limits(1 << 20));
        g.resume();
        std::thread::sleep(Duration::from_millis(20));
        g.pause().unwrap();
        std::thread::sleep(Duration::from_millis(60)); // in the host: not counted
        g.resume();
        std::thread::sleep(Duration::from_millis(40));
        let e = g.pause().unwrap_err();
        assert!(e.to_string().contains("CPU deadline"), "{e}");
        assert!(meter.cpu_exceeded.load(Ordering::Relaxed));
        let used = meter.cpu_used_us.load(Ordering::Relaxed);
        assert!((60_000..120_000).contains(&used), "{used} µs");
    }
}
