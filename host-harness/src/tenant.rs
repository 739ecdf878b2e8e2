//! The harness's config file: one or more tenants, each with a schedule, a
//! key-value store and the component's variables.
//!
//! ```toml
//! [tenants.acme]
//! schedule = "0 * * * * *"
//! kv = "state/acme.sqlite"
//! [tenants.acme.variables]
//! base_url = "https://events.1password.com"
//! token = "${ACME_OP_TOKEN}"     # taken from the environment
//! ```
//! A variable whose whole value is `${NAME}` is read from environment
//! variable NAME when the file is loaded, so secrets need not sit in it;
//! so may `kv`.
//!
//! `kv` is a SQLite file (relative to the config file; default
//! `state/<name>.sqlite`) or a Redis URL, `redis://[:password@]host:port/db`
//! or `rediss://…` (TLS), shared by tenants and replicas: each tenant's keys
//! then start with `kv_prefix` (default `onepassword-collector/<name>/`).
//!
//! A tenant may override the runtime's per-instance limits:
//! ```toml
//! [tenants.acme.limits]
//! memory_mib = 32      # linear memory of one instance
//! cpu_ms = 5000        # guest CPU time of one tick
//! wall_ms = 150000     # wall-clock time of one tick
//! ```

use crate::kv::{KvLocation, RedisLocation};
use anyhow::{bail, Context};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

pub const DEFAULT_SCHEDULE: &str = "0 * * * * *";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tenant {
    pub name: String,
    /// Cron expression with a seconds field, as Spin's cron trigger takes.
    pub schedule: String,
    /// This tenant's key-value store: a SQLite file, or a prefix in Redis.
    pub kv: KvLocation,
    /// The component's config keys and their values (secrets included:
    /// never print this map).
    pub variables: BTreeMap<String, String>,
    /// Base URLs the component may reach, like Spin's `allowed_outbound_hosts`.
    /// `None`: the hosts of `base_url` and `devo_url`, nothing else.
    pub allowed_outbound_hosts: Option<Vec<String>>,
    /// This tenant's own limits; `None` fields take the runtime's.
    pub limits: TenantLimits,
}

/// Per-tenant overrides of [`crate::runtime::Limits`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TenantLimits {
    /// Linear memory of one instance (`memory_mib`).
    pub memory_bytes: Option<usize>,
    /// Guest CPU time of one tick (`cpu_ms`).
    pub cpu_time: Option<Duration>,
    /// Wall-clock deadline of one tick (`wall_ms`).
    pub wall_deadline: Option<Duration>,
}

impl Tenant {
    /// The base URLs outbound requests may go to.
    pub fn outbound_urls(&self) -> Vec<&str> {
        match &self.allowed_outbound_hosts {
            Some(urls) => urls.iter().map(String::as_str).collect(),
            None => {
                ["base_url", "devo_url"].iter().filter_map(|k| self.variables.get(*k).map(String::as_str)).collect()
            }
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    tenants: BTreeMap<String, TenantFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TenantFile {
    schedule: Option<String>,
    kv: Option<String>,
    /// With a Redis `kv`: what every key of the tenant starts with
    /// (default `onepassword-collector/<name>/`).
    kv_prefix: Option<String>,
    allowed_outbound_hosts: Option<Vec<String>>,
    #[serde(default)]
    variables: BTreeMap<String, toml::Value>,
    #[serde(default)]
    limits: LimitsFile,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct LimitsFile {
    memory_mib: Option<u64>,
    cpu_ms: Option<u64>,
    wall_ms: Option<u64>,
}

impl LimitsFile {
    fn check(self, name: &str) -> anyhow::Result<TenantLimits> {
        let within = |key: &str, value: Option<u64>, min: u64, max: u64| -> anyhow::Result<Option<u64>> {
            match value {
                Some(v) if !(min..=max).contains(&v) => {
                    bail!("tenant {name}: limits.{key} must be from {min} to {max}, not {v}")
                }
                v => Ok(v),
            }
        };
        Ok(TenantLimits {
            memory_bytes: within("memory_mib", self.memory_mib, 1, 4096)?.map(|m| (m as usize) << 20),
            cpu_time: within("cpu_ms", self.cpu_ms, 1, 3_600_000)?.map(Duration::from_millis),
            wall_deadline: within("wall_ms", self.wall_ms, 1, 86_400_000)?.map(Duration::from_millis),
        })
    }
}

/// `path` with `.` and `..` resolved lexically, to compare store files.
fn normalized(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    out.push("..");
                }
            }
            other => out.push(other),
        }
    }
    out
}

/// `text`, or the environment variable it names when its whole value is
/// `${NAME}`; `what` names the setting in the error.
fn from_env(text: &str, env: &impl Fn(&str) -> Option<String>, what: impl Fn() -> String) -> anyhow::Result<String> {
    match text.strip_prefix("${").and_then(|r| r.strip_suffix('}')) {
        Some(env_name) => env(env_name)
            .with_context(|| format!("{} refers to environment variable {env_name}, which is not set", what())),
        None => Ok(text.to_string()),
    }
}

/// True when two tenants' stores could see each other's keys: the same
/// SQLite file, or prefixes of one Redis of which one starts the other.
fn overlap(a: &KvLocation, b: &KvLocation) -> bool {
    match (a, b) {
        (KvLocation::Sqlite(a), KvLocation::Sqlite(b)) => normalized(a) == normalized(b),
        (KvLocation::Redis(a), KvLocation::Redis(b)) => {
            a.same_server(b) && (a.prefix().starts_with(b.prefix()) || b.prefix().starts_with(a.prefix()))
        }
        _ => false,
    }
}

/// Loads every tenant of a config file; relative `kv` paths are relative to
/// the file. `env` resolves `${NAME}` references (the process environment
/// in production, a map in tests).
pub fn load_file(path: &Path, env: impl Fn(&str) -> Option<String>) -> anyhow::Result<Vec<Tenant>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read config file {}", path.display()))?;
    let base = path.parent().unwrap_or(Path::new("."));
    parse(&text, base, env).with_context(|| format!("in config file {}", path.display()))
}

pub fn parse(text: &str, base: &Path, env: impl Fn(&str) -> Option<String>) -> anyhow::Result<Vec<Tenant>> {
    let file: FileConfig = toml::from_str(text).context("not a valid harness config")?;
    if file.tenants.is_empty() {
        bail!("no [tenants.NAME] table: add at least one tenant");
    }
    let mut tenants: Vec<Tenant> = Vec::new();
    for (name, t) in file.tenants {
        let schedule = t.schedule.unwrap_or_else(|| DEFAULT_SCHEDULE.to_string());
        crate::schedule::parse(&schedule).with_context(|| format!("tenant {name}: schedule {schedule:?}"))?;
        let kv = t.kv.unwrap_or_else(|| format!("state/{name}.sqlite"));
        let mut variables = BTreeMap::new();
        for (key, value) in t.variables {
            let text = match value {
                toml::Value::String(s) => s,
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                other => bail!("tenant {name}: variable {key} must be a string or number, not {}", other.type_str()),
            };
            variables.insert(key.clone(), from_env(&text, &env, || format!("tenant {name}: variable {key}"))?);
        }
        let limits = t.limits.check(&name)?;
        let kv = from_env(&kv, &env, || format!("tenant {name}: kv"))?;
        if kv.trim().is_empty() {
            bail!("tenant {name}: kv is empty: give a SQLite file or a redis:// URL");
        }
        let kv = if RedisLocation::is_redis_url(&kv) {
            let prefix = t.kv_prefix.unwrap_or_else(|| format!("onepassword-collector/{name}/"));
            KvLocation::Redis(RedisLocation::new(&kv, &prefix).map_err(|e| anyhow::anyhow!("tenant {name}: kv: {e}"))?)
        } else {
            if t.kv_prefix.is_some() {
                bail!("tenant {name}: kv_prefix applies to a Redis kv (redis://…) only");
            }
            KvLocation::Sqlite(base.join(kv))
        };
        // A tenant's checkpoints are its own: no two tenants share a file,
        // nor keys of one Redis.
        if let Some(other) = tenants.iter().find(|o| overlap(&o.kv, &kv)) {
            bail!("tenants {} and {name} use the same kv store {kv:?}: give each its own", other.name);
        }
        tenants.push(Tenant {
            name,
            schedule,
            kv,
            variables,
            allowed_outbound_hosts: t.allowed_outbound_hosts,
            limits,
        });
    }
    Ok(tenants)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenants_get_defaults_paths_and_env_secrets() {
        let text = r#"
            [tenants.acme]
            kv = "s/acme.sqlite"
            [tenants.acme.variables]
            base_url = "https://events.1password.com"
            token = "${ACME_TOKEN}"
            page_size = 500
            [tenants.beta]
            schedule = "*/5 * * * * *"
        "#;
        let env = |n: &str| (n == "ACME_TOKEN").then(|| "from-env".to_string());
        let t = parse(text, Path::new("/etc/h"), env).unwrap();
        assert_eq!(t[0].name, "acme");
        assert_eq!(t[0].schedule, DEFAULT_SCHEDULE);
        assert_eq!(t[0].kv.sqlite_path().unwrap(), Path::new("/etc/h/s/acme.sqlite"));
        assert_eq!(t[0].variables["token"], "from-env");
        assert_eq!(t[0].variables["page_size"], "500");
        assert_eq!(t[1].kv.sqlite_path().unwrap(), Path::new("/etc/h/state/beta.sqlite"));
        assert_eq!(t[0].outbound_urls(), vec!["https://events.1password.com"]);
        assert_eq!(t[0].limits, TenantLimits::default());
    }

    #[test]
    fn limits_are_per_tenant_and_checked() {
        let text = r#"
            [tenants.a.limits]
            memory_mib = 32
            cpu_ms = 2000
            wall_ms = 60000
            [tenants.b.limits]
            memory_mib = 8
        "#;
        let t = parse(text, Path::new("/h"), |_| None).unwrap();
        assert_eq!(
            t[0].limits,
            TenantLimits {
                memory_bytes: Some(32 << 20),
                cpu_time: Some(Duration::from_secs(2)),
                wall_deadline: Some(Duration::from_secs(60)),
            }
        );
        assert_eq!(t[1].limits, TenantLimits { memory_bytes: Some(8 << 20), ..TenantLimits::default() });
        for (bad, says) in [
            ("memory_mib = 0", "limits.memory_mib"),
            ("cpu_ms = 0", "limits.cpu_ms"),
            ("wall_ms = 0", "limits.wall_ms"),
        ] {
            let e = parse(&format!("[tenants.a.limits]\n{bad}"), Path::new("."), |_| None).unwrap_err();
            assert!(format!("{e:#}").contains(says), "{bad}: {e:#}");
        }
        for bad in ["wall_ms = -1", "memory_mb = 16", "memory_mib = \"16\""] {
            assert!(parse(&format!("[tenants.a.limits]\n{bad}"), Path::new("."), |_| None).is_err(), "{bad}");
        }
    }

    #[test]
    fn tenants_cannot_share_a_kv_file() {
        let text = r#"
            [tenants.a]
            kv = "state/x.sqlite"
            [tenants.b]
            kv = "state/../state/./x.sqlite"
        "#;
        let e = parse(text, Path::new("/h"), |_| None).unwrap_err();
        assert!(format!("{e:#}").contains("same kv store"), "{e:#}");
        // the default file names are distinct per tenant
        let t = parse("[tenants.a]\n[tenants.b]", Path::new("/h"), |_| None).unwrap();
        assert_ne!(t[0].kv, t[1].kv);
    }

    #[test]
    fn a_redis_kv_gets_a_prefix_of_its_own_and_keeps_its_password_out_of_sight() {
        let text = r#"
            [tenants.a]
            kv = "${REDIS_URL}"
            [tenants.b]
            kv = "${REDIS_URL}"
            [tenants.c]
            kv = "redis://127.0.0.1:6379/0"
            kv_prefix = "custom:"
        "#;
        let env = |n: &str| (n == "REDIS_URL").then(|| "redis://:hunter2@cache:6379/1".to_string());
        let t = parse(text, Path::new("/h"), env).unwrap();
        let KvLocation::Redis(a) = &t[0].kv else { panic!("not redis: {:?}", t[0].kv) };
        assert_eq!(a.prefix(), "onepassword-collector/a/");
        assert_ne!(t[0].kv, t[1].kv);
        let KvLocation::Redis(c) = &t[2].kv else { panic!() };
        assert_eq!(c.prefix(), "custom:");
        for tenant in &t {
            let shown = format!("{:?} {}", tenant.kv, tenant.kv.describe());
            assert!(!shown.contains("hunter2"), "{shown}");
        }
        // prefixes that nest would share keys
        let nested = "[tenants.a]\nkv = \"redis://h/0\"\nkv_prefix = \"x/\"\n[tenants.b]\nkv = \"redis://h/0\"\nkv_prefix = \"x/y/\"";
        let e = parse(nested, Path::new("/h"), |_| None).unwrap_err();
        assert!(format!("{e:#}").contains("same kv store"), "{e:#}");
        // the same prefix on another database is another store
        let other_db = nested.replacen("redis://h/0", "redis://h/1", 1);
        assert!(parse(&other_db, Path::new("/h"), |_| None).is_ok());
        let e = parse("[tenants.a]\nkv_prefix = \"p\"", Path::new("/h"), |_| None).unwrap_err();
        assert!(format!("{e:#}").contains("kv_prefix"), "{e:#}");
    }

    #[test]
    fn bad_files_say_what_is_wrong() {
        let e = parse("[tenants.a.variables]\ntoken = \"${NOPE}\"", Path::new("."), |_| None).unwrap_err();
        assert!(format!("{e:#}").contains("NOPE"), "{e:#}");
        let e = parse("[tenants.a]\nschedule = \"every minute\"", Path::new("."), |_| None).unwrap_err();
        assert!(format!("{e:#}").contains("schedule"), "{e:#}");
        assert!(parse("", Path::new("."), |_| None).is_err());
        assert!(parse("[tenants.a]\nshedule = \"x\"", Path::new("."), |_| None).is_err());
    }
}
