//! The harness's config file: one or more tenants, each with a schedule, a
//! key-value store and the component's variables.
//!
//! ```toml
//! [tenants.acme]
//! schedule = "0 * * * * *"
//! spread_firings = true          # the default: offset within the period by the name's hash
//! kv = "acme.sqlite"             # in [host] state_dir (default state/)
//! [tenants.acme.variables]
//! base_url = "https://events.1password.com"
//! token = "${ACME_OP_TOKEN}"     # taken from the environment
//! ```
//! A variable whose whole value is `${NAME}` is read from environment
//! variable NAME when the file is loaded, so secrets need not sit in it; a
//! tenant may name only its own variables (`ACME_*` for `acme`) and the
//! `[host] shared_variables` (see [`environment`]).
//!
//! `kv` is a SQLite file named inside `[host] state_dir` (default
//! `<name>.sqlite` in `state/` beside the config file) or `redis:SERVER`, a
//! Redis server the operator declared in `[host.redis]`, shared by tenants
//! and replicas: each tenant's keys then start with `kv_prefix` (default
//! `onepassword-collector/<name>/`, which a tenant may only narrow).
//!
//! The operator's `[host]` section ([`crate::host_settings`]) sets the
//! ceilings; a tenant may lower the runtime's per-instance limits, never
//! raise them (a value above the host's ceiling is refused):
//! ```toml
//! [tenants.acme.limits]
//! memory_mib = 8       # linear memory of one instance
//! cpu_ms = 2000        # guest CPU time of one tick
//! wall_ms = 60000      # wall-clock time of one tick
//! ```
//!
//! Tenants do not trust each other: a name holds only letters, digits, `-`
//! and `_`; a SQLite `kv` is a plain file name, resolved to its real
//! absolute path and refused when it is, or may be, another tenant's file,
//! or an existing file that is not a collector store (see
//! `tenant/store_path.rs`); `Debug` shows no secret variable.

pub mod environment;
mod store_path;

pub use self::environment::Provenance;
use self::store_path::StoreFile;
use crate::host_settings::{Ceiling, HostFile, HostSettings, DEFAULT_STATE_DIR};
use crate::kv::{KvLocation, RedisLocation};
use anyhow::{bail, Context};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::time::Duration;

/// The schedule of a tenant that names none: every minute, at second 0.
pub const DEFAULT_SCHEDULE: &str = "0 * * * * *";

/// The longest tenant name.
pub const MAX_NAME_LEN: usize = 64;

/// One tenant. `Debug` shows its variables with every secret's value
/// replaced (see [`Tenant::is_secret_variable`]).
#[derive(Clone, PartialEq, Eq)]
pub struct Tenant {
    /// The `NAME` of its `[tenants.NAME]` table: letters, digits, `-` and
    /// `_`, at most [`MAX_NAME_LEN`].
    pub name: String,
    /// Cron expression with a seconds field, as Spin's cron trigger takes.
    pub schedule: String,
    /// Whether `run` offsets the tenant's firings within the schedule's
    /// period by a stable hash of its name (`spread_firings`, default
    /// true; see [`crate::schedule`]). False: on the exact second.
    pub spread_firings: bool,
    /// This tenant's key-value store: a SQLite file, or a prefix in Redis.
    pub kv: KvLocation,
    /// The component's config keys and their values (secrets included:
    /// never print this map).
    pub variables: BTreeMap<String, String>,
    /// Which variables came from the environment: their values are hidden
    /// in whatever the tenant's ticks report.
    pub environment: Provenance,
    /// Base URLs the component may reach, like Spin's `allowed_outbound_hosts`.
    /// `None`: the hosts of `base_url` and `devo_url`, nothing else.
    pub allowed_outbound_hosts: Option<Vec<String>>,
    /// This tenant's own limits; `None` fields take the runtime's.
    pub limits: TenantLimits,
}

/// A tenant's own limits, each at most the runtime's
/// [`crate::runtime::Limits`] (the host's ceilings).
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
    /// True for a variable whose value is a secret: the collector's secret
    /// keys (`token`, `devo_token`, `obfuscation_key`), and, to be safe,
    /// any other key whose name speaks of a token, key, secret or password.
    pub fn is_secret_variable(key: &str) -> bool {
        let key = key.to_ascii_lowercase();
        onepassword_collector::config::SECRET_KEYS.contains(&key.as_str())
            || ["token", "key", "secret", "password"].iter().any(|word| key.contains(word))
    }

    /// The tenant's next planned firing strictly after `now` (its offset
    /// within the period, or the exact second); `None` when the schedule
    /// fires no more (or does not parse: checked when the file loaded).
    pub fn next_firing(&self, now: chrono::DateTime<chrono::Utc>) -> Option<crate::schedule::Firing> {
        let schedule = crate::schedule::parse(&self.schedule).ok()?;
        crate::schedule::next_firing(&schedule, &self.name, self.spread_firings, now)
    }

    /// The base URLs outbound requests may go to.
    pub fn outbound_urls(&self) -> Vec<&str> {
        match &self.allowed_outbound_hosts {
            Some(urls) => urls.iter().map(String::as_str).collect(),
            None => {
                use onepassword_collector::config::key;
                [key::BASE_URL, key::DEVO_URL]
                    .iter()
                    .filter_map(|k| self.variables.get(*k).map(String::as_str))
                    .collect()
            }
        }
    }
}

/// A value as `Debug` may show it: a secret's replaced, and a Devo token
/// in a URL's path (`…/token!…`) too.
fn shown(key: &str, value: &str) -> String {
    if Tenant::is_secret_variable(key) {
        "<redacted>".to_string()
    } else {
        onepassword_collector::http::redact_path(value)
    }
}

impl fmt::Debug for Tenant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let variables: BTreeMap<&str, String> = self.variables.iter().map(|(k, v)| (k.as_str(), shown(k, v))).collect();
        let hosts: Option<Vec<String>> = self
            .allowed_outbound_hosts
            .as_ref()
            .map(|urls| urls.iter().map(|u| onepassword_collector::http::redact_path(u)).collect());
        f.debug_struct("Tenant")
            .field("name", &self.name)
            .field("schedule", &self.schedule)
            .field("spread_firings", &self.spread_firings)
            .field("kv", &self.kv)
            .field("variables", &variables)
            .field("allowed_outbound_hosts", &hosts)
            .field("limits", &self.limits)
            .finish()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    #[serde(default)]
    host: HostFile,
    tenants: BTreeMap<String, TenantFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TenantFile {
    schedule: Option<String>,
    /// Offset firings within the period by the name's hash (default true).
    spread_firings: Option<bool>,
    kv: Option<String>,
    /// With a Redis `kv`: what every key of the tenant starts with
    /// (default `onepassword-collector/<name>/`).
    kv_prefix: Option<String>,
    allowed_outbound_hosts: Option<Vec<String>>,
    /// Variables handed to the component although the collector reads no
    /// such setting (for a test component, e.g. `hostile_mode`). Any other
    /// unknown variable stops the load, named with the closest known key.
    #[serde(default)]
    unknown_variables_allowed: Vec<String>,
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
    /// The tenant's limits, each from 1 to the host's ceiling.
    fn check(self, name: &str, host: &HostSettings) -> anyhow::Result<TenantLimits> {
        let within = |value: Option<u64>, ceiling: Ceiling| -> anyhow::Result<Option<u64>> {
            let Ceiling { key, value: max } = ceiling;
            match value {
                Some(0) => bail!("tenant {name}: limits.{key} must be at least 1"),
                Some(v) if v > max => {
                    bail!("tenant {name}: limits.{key} = {v} is above the host's ceiling {key} = {max} ([host])")
                }
                v => Ok(v),
            }
        };
        Ok(TenantLimits {
            memory_bytes: within(self.memory_mib, host.memory_mib())?.map(|m| (m as usize) << 20),
            cpu_time: within(self.cpu_ms, host.cpu_ms())?.map(Duration::from_millis),
            wall_deadline: within(self.wall_ms, host.wall_ms())?.map(Duration::from_millis),
        })
    }
}

/// A tenant's name is part of file paths, Redis keys, metric labels and log
/// lines: letters, digits, `-` and `_` only.
fn check_name(name: &str) -> anyhow::Result<()> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
    if name.is_empty() || name.len() > MAX_NAME_LEN || !name.chars().all(allowed) {
        bail!(
            "tenant {name:?}: a tenant name holds 1 to {MAX_NAME_LEN} letters (a-z, A-Z), digits, '-' and '_', nothing else"
        );
    }
    Ok(())
}

/// The store a tenant's `kv` names: `redis:NAME` (a server of `[host.redis]`)
/// or a file name inside the state folder. The forms of old (a Redis URL, a
/// path, `${NAME}`) are refused with the new form named.
fn store_of(
    name: &str,
    kv: &str,
    kv_prefix: Option<String>,
    host: &HostSettings,
    base: &Path,
) -> anyhow::Result<KvLocation> {
    if kv.starts_with("redis://") || kv.starts_with("rediss://") {
        bail!(
            "tenant {name}: kv no longer takes a Redis URL: the operator declares the server in [host.redis] \
             (e.g. main = \"${{REDIS_URL}}\") and the tenant writes kv = \"redis:main\""
        );
    }
    if kv.starts_with("${") {
        bail!(
            "tenant {name}: kv no longer reads the environment: write a file name inside [host] state_dir, or \
             kv = \"redis:NAME\" with the server (and its ${{URL}}) declared in [host.redis]"
        );
    }
    let own_prefix = format!("onepassword-collector/{name}/");
    if let Some(server) = kv.strip_prefix("redis:") {
        let Some(server) = host.redis.get(server) else {
            let known: Vec<&str> = host.redis.keys().map(String::as_str).collect();
            bail!(
                "tenant {name}: kv {kv:?} names no Redis server of [host.redis] (declared: {})",
                if known.is_empty() { "none".to_string() } else { known.join(", ") }
            );
        };
        // The host derives the prefix from the tenant's name; the tenant may
        // only narrow it, so no two tenants' keys can meet.
        let prefix = kv_prefix.unwrap_or_else(|| own_prefix.clone());
        if !prefix.starts_with(&own_prefix) {
            bail!("tenant {name}: kv_prefix {prefix:?} must start with {own_prefix:?} (a tenant may only narrow its own prefix)");
        }
        let location =
            RedisLocation::on(server.clone(), &prefix).map_err(|e| anyhow::anyhow!("tenant {name}: kv: {e}"))?;
        return Ok(KvLocation::Redis(location));
    }
    if kv_prefix.is_some() {
        bail!("tenant {name}: kv_prefix applies to a Redis kv (redis:NAME) only");
    }
    store_path::file_name(kv).map_err(|e| anyhow::anyhow!("tenant {name}: {e}"))?;
    let dir = host.state_dir.clone().unwrap_or_else(|| base.join(DEFAULT_STATE_DIR));
    // The name itself, before any link is followed: a link is no store.
    store_path::check_existing(&dir.join(kv)).map_err(|e| anyhow::anyhow!("tenant {name}: kv {kv:?}: {e}"))?;
    let path = store_path::resolve(&dir.join(kv))
        .with_context(|| format!("tenant {name}: kv {kv:?}: cannot resolve the path"))?;
    Ok(KvLocation::Sqlite(path))
}

/// Loads every tenant of a config file; SQLite stores live in `[host]
/// state_dir` (default `state/` beside the file). `env` resolves `${NAME}` references (the process environment
/// in production, a map in tests). The `[host]` section is checked, and
/// each tenant's limits against it; [`load_config`] also returns it.
pub fn load_file(path: &Path, env: impl Fn(&str) -> Option<String>) -> anyhow::Result<Vec<Tenant>> {
    load_config(path, env).map(|(_, tenants)| tenants)
}

/// The config file's `[host]` section (the operator's ceilings) and its
/// tenants, as [`load_file`] loads them.
pub fn load_config(path: &Path, env: impl Fn(&str) -> Option<String>) -> anyhow::Result<(HostSettings, Vec<Tenant>)> {
    load_config_where(path, env, |_| true)
}

/// [`load_config`] for the tenants `wanted` accepts (a shard's, or the one
/// named on the command line): only their variables are read from the
/// environment, so a process needs no other tenant's secrets. Every tenant
/// is still checked (name, schedule, limits, which variables it may read)
/// and no two may share a store (`kv` is resolved for all).
pub fn load_config_where(
    path: &Path,
    env: impl Fn(&str) -> Option<String>,
    wanted: impl Fn(&str) -> bool,
) -> anyhow::Result<(HostSettings, Vec<Tenant>)> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read config file {}", path.display()))?;
    let base = path.parent().unwrap_or(Path::new("."));
    parse_config_where(&text, base, env, wanted).with_context(|| format!("in config file {}", path.display()))
}

/// The tenants of a config file's text; `base` is the folder relative `kv`
/// paths start from.
pub fn parse(text: &str, base: &Path, env: impl Fn(&str) -> Option<String>) -> anyhow::Result<Vec<Tenant>> {
    parse_config(text, base, env).map(|(_, tenants)| tenants)
}

/// The `[host]` section and the tenants of a config file's text.
pub fn parse_config(
    text: &str,
    base: &Path,
    env: impl Fn(&str) -> Option<String>,
) -> anyhow::Result<(HostSettings, Vec<Tenant>)> {
    parse_config_where(text, base, env, |_| true)
}

/// [`parse_config`] returning only the tenants `wanted` accepts, with only
/// their variables read from the environment (see [`load_config_where`]).
pub fn parse_config_where(
    text: &str,
    base: &Path,
    env: impl Fn(&str) -> Option<String>,
    wanted: impl Fn(&str) -> bool,
) -> anyhow::Result<(HostSettings, Vec<Tenant>)> {
    let file: FileConfig = toml::from_str(text).context("not a valid harness config")?;
    let host = file.host.check(base, &env)?;
    if file.tenants.is_empty() {
        bail!("no [tenants.NAME] table: add at least one tenant");
    }
    for name in file.tenants.keys() {
        check_name(name)?;
    }
    environment::check_prefixes(file.tenants.keys().map(String::as_str), &host)?;
    let mut tenants: Vec<Tenant> = Vec::new();
    // The SQLite tenants' stores, by tenant, to compare the next ones with.
    let mut files: Vec<(String, StoreFile)> = Vec::new();
    // The `${NAME}`s of wanted tenants that are not set, all named at once.
    let mut unset: Vec<String> = Vec::new();
    for (name, t) in file.tenants {
        let schedule = t.schedule.unwrap_or_else(|| DEFAULT_SCHEDULE.to_string());
        crate::schedule::parse(&schedule).with_context(|| format!("tenant {name}: schedule {schedule:?}"))?;
        let unknown: Vec<String> = t
            .variables
            .keys()
            .filter(|k| {
                !onepassword_collector::config::KEYS.contains(&k.as_str()) && !t.unknown_variables_allowed.contains(k)
            })
            .map(|k| onepassword_collector::config::unknown_key(k))
            .collect();
        if !unknown.is_empty() {
            bail!(
                "tenant {name}: {}; the collector reads no such variable (a test component's own: list it in \
                 unknown_variables_allowed)",
                unknown.join("; ")
            );
        }
        let mut variables = BTreeMap::new();
        let mut environment = Provenance::default();
        for (key, value) in t.variables {
            let text = match value {
                toml::Value::String(s) => s,
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                other => bail!("tenant {name}: variable {key} must be a string or number, not {}", other.type_str()),
            };
            let what = || format!("tenant {name}: variable {key}");
            if let Some(var) = bare_reference(&text) {
                bail!(
                    "{} is {text:?}, which would be used as it is, not read from the environment: write \"${{{var}}}\"",
                    what()
                );
            }
            // Checked for every tenant; read only for ours (another
            // process's tenant: its secrets are not ours to read).
            let value = match environment::granted(&name, &text, &host, &what)? {
                Some(var) if wanted(&name) => match env(var) {
                    Some(value) => {
                        environment.add(var, &value);
                        value
                    }
                    None => {
                        // Every unset one is named, not only the first.
                        unset.push(format!("{} refers to environment variable {var}, which is not set", what()));
                        String::new()
                    }
                },
                _ => text,
            };
            variables.insert(key.clone(), value);
        }
        let limits = t.limits.check(&name, &host)?;
        let kv = t.kv.unwrap_or_else(|| format!("{name}.sqlite"));
        // A tenant's checkpoints are its own: no two tenants share a file
        // (under any name); Redis prefixes are the tenants' names.
        let kv = store_of(&name, &kv, t.kv_prefix, &host, base)?;
        if let KvLocation::Sqlite(path) = &kv {
            let store = StoreFile::new(path.clone());
            for (other, theirs) in &files {
                if let Some(why) = store.clash(theirs) {
                    bail!(
                        "tenants {other} and {name} use the same kv store ({why}: {} and {}): give each its own",
                        theirs.path().display(),
                        store.path().display()
                    );
                }
            }
            files.push((name.clone(), store));
        }
        tenants.push(Tenant {
            name,
            schedule,
            spread_firings: t.spread_firings.unwrap_or(true),
            kv,
            variables,
            environment,
            allowed_outbound_hosts: t.allowed_outbound_hosts,
            limits,
        });
    }
    if !unset.is_empty() {
        bail!("{}", unset.join("; "));
    }
    tenants.retain(|t| wanted(&t.name));
    Ok((host, tenants))
}

/// The NAME of a value that is `$NAME` (capitals, digits, `_`): an
/// environment reference missing its braces, which would be used as it is.
fn bare_reference(text: &str) -> Option<&str> {
    let name = text.strip_prefix('$')?;
    let first = name.chars().next()?;
    let looks_like = (first.is_ascii_uppercase() || first == '_')
        && name.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
    looks_like.then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_wanted_tenants_secrets_are_read() {
        let text = r#"
            [tenants.acme.variables]
            token = "${ACME_TOKEN}"
            [tenants.beta.variables]
            token = "${BETA_TOKEN}"
        "#;
        let asked = std::cell::RefCell::new(Vec::new());
        let env = |n: &str| {
            asked.borrow_mut().push(n.to_string());
            (n != "BETA_TOKEN").then(|| format!("value-of-{n}"))
        };
        // All tenants: beta's token is missing.
        let e = parse(text, Path::new("/h"), env).unwrap_err();
        assert!(format!("{e:#}").contains("tenant beta: variable token refers to environment variable BETA_TOKEN"));
        // Acme's process: beta's variables are never looked up.
        asked.borrow_mut().clear();
        let (_, t) = parse_config_where(text, Path::new("/h"), env, |n| n == "acme").unwrap();
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].variables["token"], "value-of-ACME_TOKEN");
        assert_eq!(*asked.borrow(), ["ACME_TOKEN"]);
        // ... but what beta may read is checked all the same.
        let greedy = text.replace("${BETA_TOKEN}", "${ACME_TOKEN}");
        let e = parse_config_where(&greedy, Path::new("/h"), env, |n| n == "acme").unwrap_err();
        assert!(format!("{e:#}").contains("which tenant beta may not read"), "{e:#}");
        // Tenants outside the filter are still checked.
        let bad = format!("{text}\n[tenants.gamma]\nschedule = \"not cron\"\n");
        assert!(parse_config_where(&bad, Path::new("/h"), env, |n| n == "acme").is_err());
    }

    #[test]
    fn tenants_get_defaults_paths_and_env_secrets() {
        let text = r#"
            [tenants.acme]
            kv = "acme-store.sqlite"
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
        assert_eq!(t[0].kv.sqlite_path().unwrap(), Path::new("/etc/h/state/acme-store.sqlite"));
        assert_eq!(t[0].variables["token"], "from-env");
        assert_eq!(t[0].variables["page_size"], "500");
        assert_eq!(t[1].kv.sqlite_path().unwrap(), Path::new("/etc/h/state/beta.sqlite"));
        assert_eq!(t[0].outbound_urls(), vec!["https://events.1password.com"]);
        assert_eq!(t[0].limits, TenantLimits::default());
    }

    #[test]
    fn limits_are_per_tenant_and_checked() {
        let text = r#"
            [host]
            memory_mib = 64
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
    fn the_host_section_sets_ceilings_tenants_may_only_lower() {
        let host = "[host]\nmemory_mib = 32\ncpu_ms = 1000\nwall_ms = 60000\nstate_keys = 50\n";
        let (h, t) = parse_config(
            &format!("{host}[tenants.a.limits]\nmemory_mib = 32\ncpu_ms = 500\nwall_ms = 1000\n[tenants.b]"),
            Path::new("/h"),
            |_| None,
        )
        .unwrap();
        assert_eq!(h.limits.memory_bytes, 32 << 20);
        assert_eq!(h.limits.state.keys, 50);
        assert_eq!(t[0].limits.memory_bytes, Some(32 << 20), "equal to the ceiling is allowed");
        assert_eq!(t[1].limits, TenantLimits::default());
        for (over, says) in [
            (
                "memory_mib = 64",
                "tenant acme: limits.memory_mib = 64 is above the host's ceiling memory_mib = 32 ([host])",
            ),
            ("cpu_ms = 1001", "tenant acme: limits.cpu_ms = 1001 is above the host's ceiling cpu_ms = 1000 ([host])"),
            ("wall_ms = 3600000", "limits.wall_ms = 3600000 is above the host's ceiling wall_ms = 60000 ([host])"),
        ] {
            let e = parse(&format!("{host}[tenants.acme.limits]\n{over}"), Path::new("/h"), |_| None).unwrap_err();
            assert!(format!("{e:#}").contains(says), "{over}: {e:#}");
        }
        // without a [host] section the ceilings are the defaults
        let e = parse("[tenants.acme.limits]\nmemory_mib = 17", Path::new("/h"), |_| None).unwrap_err();
        assert!(format!("{e:#}").contains("ceiling memory_mib = 16"), "{e:#}");
        let (h, _) = parse_config("[tenants.a]", Path::new("/h"), |_| None).unwrap();
        assert_eq!(h, HostSettings::default());
        let e = parse("[host]\nmemory_mib = 0\n[tenants.a]", Path::new("/h"), |_| None).unwrap_err();
        assert!(format!("{e:#}").contains("[host] memory_mib"), "{e:#}");
        assert!(parse("[host]\nmemroy_mib = 8\n[tenants.a]", Path::new("/h"), |_| None).is_err());
    }

    #[test]
    fn tenant_names_are_letters_digits_dashes_and_underscores() {
        assert!(parse("[tenants.Acme-prod_2]", Path::new("/h"), |_| None).is_ok());
        let long = "a".repeat(MAX_NAME_LEN + 1);
        for bad in ["\"a/b\"", "\"../x\"", "\"a b\"", "\"\"", "\"acmé\"", "\"a.b\"", "\"a\\nb\"", long.as_str()] {
            let e = parse(&format!("[tenants.{bad}]"), Path::new("/h"), |_| None).unwrap_err();
            let text = format!("{e:#}");
            assert!(text.contains("letters (a-z, A-Z), digits, '-' and '_'"), "{bad}: {text}");
        }
    }

    #[test]
    fn a_kv_of_the_old_forms_is_refused_naming_the_new_one() {
        for (bad, says) in [
            ("state/acme.sqlite", "kv = \"acme.sqlite\""),
            ("/var/lib/other.sqlite", "kv = \"other.sqlite\""),
            ("../acme.sqlite", "[host] state_dir"),
            ("file:x.db", "[host] state_dir"),
            ("/dev/stdout", "[host] state_dir"),
            ("redis://127.0.0.1:6379/0", "kv = \"redis:main\""),
            ("${ACME_KV}", "kv no longer reads the environment"),
            ("redis:main", "names no Redis server of [host.redis] (declared: none)"),
        ] {
            let e = parse(&format!("[tenants.acme]\nkv = {bad:?}"), Path::new("/h"), |_| None).unwrap_err();
            assert!(format!("{e:#}").contains(says), "{bad}: {e:#}");
        }
        // the state folder is the operator's to move
        let t = parse("[host]\nstate_dir = \"/srv/state\"\n[tenants.a]", Path::new("/h"), |_| None).unwrap();
        assert_eq!(t[0].kv.sqlite_path().unwrap(), Path::new("/srv/state/a.sqlite"));
        let t = parse("[host]\nstate_dir = \"data\"\n[tenants.a]\nkv = \"x.db\"", Path::new("/h"), |_| None).unwrap();
        assert_eq!(t[0].kv.sqlite_path().unwrap(), Path::new("/h/data/x.db"));
    }

    #[cfg(unix)]
    #[test]
    fn a_kv_that_is_another_tenants_file_by_any_name_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let base = store_path::resolve(dir.path()).unwrap();
        let state = base.join("state");
        std::fs::create_dir(&state).unwrap();
        crate::kv::SqliteStore::open(&state.join("a.sqlite")).unwrap();
        std::fs::hard_link(state.join("a.sqlite"), state.join("hard.sqlite")).unwrap();
        std::os::unix::fs::symlink("a.sqlite", state.join("link.sqlite")).unwrap();
        std::os::unix::fs::symlink("new.sqlite", state.join("dangling.sqlite")).unwrap();
        let pair = |a: &str, b: &str| format!("[tenants.a]\nkv = {a:?}\n[tenants.b]\nkv = {b:?}");
        for (a, b, why) in [
            ("a.sqlite", "a.sqlite", "the same file"),
            ("a.sqlite", "hard.sqlite", "on disk"),
            ("a.sqlite", "A.sqlite", "letter case"),
            ("a.sqlite", "a.sqlite-journal", "side file"),
        ] {
            let e = parse(&pair(a, b), &base, |_| None).unwrap_err();
            let text = format!("{e:#}");
            assert!(text.contains("tenants a and b use the same kv store") && text.contains(why), "{a} {b}: {text}");
        }
        // a link is no store, whether it leads to a store or nowhere
        for link in ["link.sqlite", "dangling.sqlite"] {
            let e = parse(&pair("a.sqlite", link), &base, |_| None).unwrap_err();
            assert!(format!("{e:#}").contains("not a regular file"), "{link}: {e:#}");
        }
        assert!(parse(&pair("a.sqlite", "b.sqlite"), &base, |_| None).is_ok());
    }

    #[cfg(unix)]
    #[test]
    fn an_operators_file_in_the_state_folder_is_no_store() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        std::fs::create_dir(&state).unwrap();
        std::fs::write(state.join("notes.txt"), b"").unwrap();
        std::os::unix::fs::symlink("/dev/stdout", state.join("out.sqlite")).unwrap();
        for kv in ["notes.txt", "out.sqlite"] {
            let e = parse(&format!("[tenants.a]\nkv = {kv:?}"), dir.path(), |_| None).unwrap_err();
            let text = format!("{e:#}");
            assert!(text.contains("not a SQLite store") || text.contains("not a regular file"), "{kv}: {text}");
        }
        assert_eq!(std::fs::metadata(state.join("notes.txt")).unwrap().len(), 0, "the file was not touched");
    }

    #[test]
    fn debug_shows_no_secret() {
        let text = r#"
            [tenants.acme]
            allowed_outbound_hosts = ["https://collector-us.devo.io/stream/token!devoSecretInUrl1"]
            unknown_variables_allowed = ["some_api_key"]
            [tenants.acme.variables]
            token = "opSecretToken1"
            devo_token = "devoSecretToken1"
            obfuscation_key = "obfuscationSecret1"
            devo_url = "https://collector-us.devo.io/stream/token!devoSecretInUrl1"
            some_api_key = "anotherSecret1"
            base_url = "https://events.1password.com"
        "#;
        let t = parse(text, Path::new("/h"), |_| None).unwrap();
        let shown = format!("{:?} {:#?}", t[0], t);
        for secret in ["opSecretToken1", "devoSecretToken1", "obfuscationSecret1", "devoSecretInUrl1", "anotherSecret1"]
        {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        assert!(shown.contains("https://events.1password.com") && shown.contains("<redacted>"), "{shown}");
        assert!(shown.contains("token!<redacted>"), "{shown}");
    }

    #[test]
    fn tenants_cannot_share_a_kv_file() {
        let text = "[tenants.a]\nkv = \"x.sqlite\"\n[tenants.b]\nkv = \"x.sqlite\"";
        let e = parse(text, Path::new("/h"), |_| None).unwrap_err();
        assert!(format!("{e:#}").contains("same kv store"), "{e:#}");
        // the default file names are distinct per tenant
        let t = parse("[tenants.a]\n[tenants.b]", Path::new("/h"), |_| None).unwrap();
        assert_ne!(t[0].kv, t[1].kv);
    }

    #[test]
    fn a_redis_kv_is_an_operators_server_and_a_prefix_of_the_tenants_name() {
        let text = r#"
            [host.redis]
            main = "${REDIS_URL}"
            spare = "redis://127.0.0.1:6379/3"
            [tenants.a]
            kv = "redis:main"
            [tenants.b]
            kv = "redis:main"
            [tenants.c]
            kv = "redis:spare"
            kv_prefix = "onepassword-collector/c/narrower/"
        "#;
        let env = |n: &str| (n == "REDIS_URL").then(|| "redis://:hunter2@cache:6379/1".to_string());
        let t = parse(text, Path::new("/h"), env).unwrap();
        let KvLocation::Redis(a) = &t[0].kv else { panic!("not redis: {:?}", t[0].kv) };
        assert_eq!(a.prefix(), "onepassword-collector/a/");
        assert_eq!(a.server().name(), "main");
        let KvLocation::Redis(b) = &t[1].kv else { panic!() };
        assert_eq!(b.prefix(), "onepassword-collector/b/");
        let KvLocation::Redis(c) = &t[2].kv else { panic!() };
        assert_eq!(c.prefix(), "onepassword-collector/c/narrower/");
        for tenant in &t {
            let shown = format!("{:?} {}", tenant.kv, tenant.kv.describe());
            assert!(!shown.contains("hunter2"), "{shown}");
        }
        // a tenant cannot take another's prefix, nor widen its own
        for prefix in ["onepassword-collector/a/", "onepassword-collector/", "x/", ""] {
            let bad = format!(
                "[host.redis]\nmain = \"redis://h/0\"\n[tenants.b]\nkv = \"redis:main\"\nkv_prefix = {prefix:?}"
            );
            let e = parse(&bad, Path::new("/h"), |_| None).unwrap_err();
            assert!(format!("{e:#}").contains("must start with \"onepassword-collector/b/\""), "{prefix}: {e:#}");
        }
        let e = parse("[tenants.a]\nkv_prefix = \"p\"", Path::new("/h"), |_| None).unwrap_err();
        assert!(format!("{e:#}").contains("kv_prefix"), "{e:#}");
        // the server's URL comes from the operator's environment, checked
        let e = parse("[host.redis]\nmain = \"${NOPE}\"\n[tenants.a]", Path::new("/h"), |_| None).unwrap_err();
        assert!(format!("{e:#}").contains("[host.redis] main refers to environment variable NOPE"), "{e:#}");
        let bad_url = |_: &str| Some("http://:hunter2@cache/".to_string());
        let e = parse("[host.redis]\nmain = \"${URL}\"\n[tenants.a]", Path::new("/h"), bad_url).unwrap_err();
        assert!(!format!("{e:#}").contains("hunter2") && format!("{e:#}").contains("not a Redis URL"), "{e:#}");
    }

    #[test]
    fn a_tenant_reads_only_its_own_and_the_shared_environment() {
        let text = r#"
            [host]
            shared_variables = ["DEVO_TOKEN"]
            [tenants.acme.variables]
            token = "${ACME_OP_TOKEN}"
            devo_token = "${DEVO_TOKEN}"
            [tenants.mallory.variables]
            token = "${MALLORY_OP_TOKEN}"
            devo_token = "${DEVO_TOKEN}"
        "#;
        let env = |n: &str| Some(format!("value-of-{n}-0123456789"));
        let t = parse(text, Path::new("/h"), env).unwrap();
        assert_eq!(t[0].variables["devo_token"], "value-of-DEVO_TOKEN-0123456789");
        assert_eq!(t[1].variables["token"], "value-of-MALLORY_OP_TOKEN-0123456789");
        for (key, victim) in
            [("devo_url", "${ACME_OP_TOKEN}"), ("page_size", "${ACME_OP_TOKEN}"), ("base_url", "${HOME}")]
        {
            let hostile = format!("{text}{key} = {victim:?}\n");
            let e = parse(&hostile, Path::new("/h"), env).unwrap_err();
            let text = format!("{e:#}");
            assert!(text.contains("which tenant mallory may not read") && text.contains("MALLORY_"), "{key}: {text}");
            assert!(!text.contains("value-of"), "no value is shown: {text}");
        }
        // tenants whose prefixes nest are refused
        let e = parse("[tenants.acme]\n[tenants.acme_eu]", Path::new("/h"), |_| None).unwrap_err();
        assert!(format!("{e:#}").contains("could read"), "{e:#}");
        // values that came from the environment are hidden by name
        let p = &t[0].environment;
        assert_eq!(p.hide("raw value-of-ACME_OP_TOKEN-0123456789"), "raw ${ACME_OP_TOKEN}");
    }

    #[test]
    fn an_unknown_variable_stops_the_load_naming_the_closest_key() {
        for (bad, says) in [
            ("page_sise = \"100\"", "setting \"page_sise\" is unknown (did you mean \"page_size\"?)"),
            ("obfuscate_field = \"client.ip_address\"", "(did you mean \"obfuscate_fields\"?)"),
            ("devo_tokn = \"x\"", "(did you mean \"devo_token\"?)"),
        ] {
            let e = parse(&format!("[tenants.acme.variables]\n{bad}"), Path::new("/h"), |_| None).unwrap_err();
            let text = format!("{e:#}");
            assert!(text.contains("tenant acme: ") && text.contains(says), "{bad}: {text}");
        }
        // a test component's own variable, when the tenant lists it
        let text = "[tenants.a]\nunknown_variables_allowed = [\"hostile_mode\"]\n[tenants.a.variables]\nhostile_mode = \"spin\"";
        assert_eq!(parse(text, Path::new("/h"), |_| None).unwrap()[0].variables["hostile_mode"], "spin");
        assert!(parse(&text.replace("= [\"hostile_mode\"]", "= []"), Path::new("/h"), |_| None).is_err());
    }

    #[test]
    fn a_reference_without_braces_is_refused_with_the_braces_written() {
        let e = parse("[tenants.acme.variables]\ntoken = \"$ACME_OP_TOKEN\"", Path::new("/h"), |_| None).unwrap_err();
        let text = format!("{e:#}");
        assert!(text.contains("tenant acme: variable token") && text.contains("write \"${ACME_OP_TOKEN}\""), "{text}");
        // a value that merely starts with $ is a value
        let t = parse("[tenants.acme.variables]\ntoken = \"$ecret-1\"", Path::new("/h"), |_| None).unwrap();
        assert_eq!(t[0].variables["token"], "$ecret-1");
    }

    #[test]
    fn every_unset_environment_variable_is_named() {
        let text = "[tenants.acme.variables]\ntoken = \"${ACME_OP}\"\ndevo_token = \"${ACME_DEVO}\"\n\
                    [tenants.beta.variables]\ntoken = \"${BETA_OP}\"";
        let e = parse(text, Path::new("/h"), |_| None).unwrap_err();
        let text = format!("{e:#}");
        for var in ["ACME_OP,", "ACME_DEVO,", "BETA_OP,"] {
            assert!(text.contains(&format!("refers to environment variable {var} which is not set")), "{var}: {text}");
        }
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

    #[test]
    fn firings_are_spread_unless_a_tenant_turns_it_off() {
        let t = parse("[tenants.a]\n[tenants.b]\nspread_firings = false", Path::new("/h"), |_| None).unwrap();
        assert!(t[0].spread_firings && !t[1].spread_firings);
        let now = chrono::DateTime::parse_from_rfc3339("2026-05-01T12:00:00Z").unwrap().to_utc();
        assert_eq!(t[1].next_firing(now).unwrap().at.to_rfc3339(), "2026-05-01T12:01:00+00:00");
        assert!(t[0].next_firing(now).unwrap().spread.offset_ms().is_some());
        // Still refused: a misspelt setting, or one of another type.
        for bad in ["spread_firing = false", "spread_firings = \"no\"", "spread_firings = 0"] {
            assert!(parse(&format!("[tenants.a]\n{bad}"), Path::new("/h"), |_| None).is_err(), "{bad}");
        }
    }
}
