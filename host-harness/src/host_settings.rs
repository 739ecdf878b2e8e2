//! The operator's part of the harness config: the `[host]` section. It sets
//! the ceilings every tenant runs under; a tenant's `[tenants.NAME.limits]`
//! may only lower them (a higher value is refused when the file is loaded,
//! see [`crate::tenant`]), and its variables (`tick_deadline_ms`,
//! `request_timeout_ms`) cannot raise them either.
//!
//! ```toml
//! [host]
//! wall_ms = 900000                # wall-clock time of one tick, at most
//! cpu_ms = 5000                   # guest CPU time of one tick, at most
//! memory_mib = 16                 # linear memory of one instance, at most
//! request_timeout_ms = 30000      # each connect / first-byte / between-bytes wait
//! max_concurrent_instances = 32   # instances alive at once (the pool)
//! state_value_bytes = 1048576     # largest value a tenant may store
//! state_keys = 1000               # most keys in a tenant's store
//! state_host_bytes = 8388608      # host memory one instance's store handles and values may hold
//! response_body_bytes = 8388608   # largest response body a tenant may read
//! allow_http = true               # plain http:// outbound (default: false)
//! allow_private_networks = ["127.0.0.0/8"]   # default: none
//! extra_ca_certificates = "relay-ca.pem"     # CAs https trusts besides the webpki roots
//! state_dir = "state"                        # where tenants' SQLite stores live
//! shared_variables = ["DEVO_TOKEN"]          # environment variables every tenant may read
//! [host.redis]
//! main = "${REDIS_URL}"                      # a Redis server tenants pick with kv = "redis:main"
//! ```
//! The stores and the secrets are the operator's: a tenant names a Redis
//! server only by its name here, a SQLite file only inside `state_dir`, and
//! reads from the environment only its own variables (see
//! [`crate::tenant`]) and the `shared_variables`. The values of
//! `[host.redis]` may be `${NAME}`, read from the environment.
//! Every key is optional; without the section the defaults apply (those of
//! [`Limits::default`] and [`OutboundSettings::default`]: https only, to
//! public addresses only, the webpki roots). A relative
//! `extra_ca_certificates` path is relative to the config file. The process
//! reads the section at start: a changed `[host]` section (or CA file) takes
//! a restart.

pub use crate::host::outbound::IpNetwork;
use crate::host::outbound::{OutboundSettings, TlsTrust};
use crate::kv::RedisServer;
use crate::limits::{Limits, StateLimits};
use anyhow::{bail, Context};
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The `[host]` section, checked; its default is that of an absent section.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostSettings {
    /// The ceilings: what the runtime is built with.
    pub limits: Limits,
    /// Where tenants' requests may go and how much of a response they may
    /// read (`allow_http`, `allow_private_networks`, `response_body_bytes`)
    /// and which CAs https trusts (`extra_ca_certificates`); enforced by
    /// [`crate::host::outbound`]. The default is https to public addresses
    /// only, verified against the webpki roots.
    pub outbound: OutboundSettings,
    /// The folder tenants' SQLite stores live in (`state_dir`, resolved
    /// against the config file's folder); `None`: `state/` beside it.
    pub state_dir: Option<PathBuf>,
    /// Environment variables every tenant may read (`shared_variables`).
    pub shared_variables: BTreeSet<String>,
    /// The Redis servers tenants may choose, by name (`[host.redis]`).
    pub redis: BTreeMap<String, RedisServer>,
}

/// A tenant's ceiling as the file spells it: its key in `[host]` (and in
/// `[tenants.NAME.limits]`) and its value in that key's unit.
pub(crate) struct Ceiling {
    pub key: &'static str,
    pub value: u64,
}

impl HostSettings {
    /// The ceiling of linear memory, in MiB (`memory_mib`).
    pub(crate) fn memory_mib(&self) -> Ceiling {
        Ceiling { key: "memory_mib", value: (self.limits.memory_bytes >> 20) as u64 }
    }

    /// The ceiling of guest CPU time, in ms (`cpu_ms`).
    pub(crate) fn cpu_ms(&self) -> Ceiling {
        Ceiling { key: "cpu_ms", value: self.limits.cpu_time.as_millis() as u64 }
    }

    /// The ceiling of wall-clock time, in ms (`wall_ms`).
    pub(crate) fn wall_ms(&self) -> Ceiling {
        Ceiling { key: "wall_ms", value: self.limits.wall_deadline.as_millis() as u64 }
    }
}

/// The `[host]` section as written.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct HostFile {
    wall_ms: Option<u64>,
    cpu_ms: Option<u64>,
    memory_mib: Option<u64>,
    request_timeout_ms: Option<u64>,
    max_concurrent_instances: Option<u64>,
    state_value_bytes: Option<u64>,
    state_keys: Option<u64>,
    state_host_bytes: Option<u64>,
    response_body_bytes: Option<u64>,
    allow_http: Option<bool>,
    allow_private_networks: Option<Vec<String>>,
    extra_ca_certificates: Option<String>,
    state_dir: Option<String>,
    shared_variables: Option<Vec<String>>,
    redis: Option<BTreeMap<String, String>>,
}

/// The default `state_dir`, beside the config file.
pub const DEFAULT_STATE_DIR: &str = "state";

/// True for a name `${NAME}` can hold: what a POSIX shell exports.
pub(crate) fn is_environment_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The name a whole value `${NAME}` refers to, if it is one.
pub(crate) fn environment_reference(text: &str) -> Option<&str> {
    text.strip_prefix("${").and_then(|r| r.strip_suffix('}'))
}

impl HostFile {
    /// The section checked; `base` is the folder relative paths
    /// (`extra_ca_certificates`, `state_dir`) start from; `env` resolves
    /// the `${NAME}` URLs of `[host.redis]` (the operator's: any name).
    pub(crate) fn check(self, base: &Path, env: &impl Fn(&str) -> Option<String>) -> anyhow::Result<HostSettings> {
        let mut shared_variables = BTreeSet::new();
        for name in self.shared_variables.unwrap_or_default() {
            if !is_environment_name(&name) {
                bail!("[host] shared_variables: {name:?} is not an environment variable name (letters, digits, '_')");
            }
            shared_variables.insert(name);
        }
        let mut redis = BTreeMap::new();
        for (name, url) in self.redis.unwrap_or_default() {
            let named = name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
            if name.is_empty() || name.len() > 64 || !named {
                bail!("[host.redis] {name:?}: a server's name holds 1 to 64 letters, digits, '-' and '_'");
            }
            let url = match environment_reference(&url) {
                Some(var) => env(var).with_context(|| {
                    format!("[host.redis] {name} refers to environment variable {var}, which is not set")
                })?,
                None => url,
            };
            let server = RedisServer::new(&name, &url).map_err(|e| anyhow::anyhow!("[host.redis] {name}: {e}"))?;
            redis.insert(name, server);
        }
        let state_dir = self.state_dir.map(|dir| base.join(dir));
        let d = Limits::default();
        let within = |key: &str, value: Option<u64>, min: u64, max: u64, default: u64| -> anyhow::Result<u64> {
            match value {
                Some(v) if !(min..=max).contains(&v) => bail!("[host] {key} must be from {min} to {max}, not {v}"),
                v => Ok(v.unwrap_or(default)),
            }
        };
        let ms = |d: Duration| d.as_millis() as u64;
        let limits = Limits {
            memory_bytes: (within("memory_mib", self.memory_mib, 1, 4096, (d.memory_bytes >> 20) as u64)? as usize)
                << 20,
            request_timeout: Duration::from_millis(within(
                "request_timeout_ms",
                self.request_timeout_ms,
                100,
                600_000,
                ms(d.request_timeout),
            )?),
            cpu_time: Duration::from_millis(within("cpu_ms", self.cpu_ms, 1, 3_600_000, ms(d.cpu_time))?),
            wall_deadline: Duration::from_millis(within("wall_ms", self.wall_ms, 1, 86_400_000, ms(d.wall_deadline))?),
            max_concurrent_instances: within(
                "max_concurrent_instances",
                self.max_concurrent_instances,
                1,
                100_000,
                d.max_concurrent_instances as u64,
            )? as usize,
            state: StateLimits {
                value_bytes: within(
                    "state_value_bytes",
                    self.state_value_bytes,
                    1,
                    512 << 20,
                    d.state.value_bytes as u64,
                )? as usize,
                keys: within("state_keys", self.state_keys, 1, 1_000_000, d.state.keys as u64)? as usize,
                instance_bytes: within(
                    "state_host_bytes",
                    self.state_host_bytes,
                    65_536,
                    4 << 30,
                    d.state.instance_bytes as u64,
                )? as usize,
            },
        };
        if limits.state.instance_bytes < limits.state.value_bytes {
            bail!(
                "[host] state_host_bytes = {} is below state_value_bytes = {}: an instance could never hold its \
                 largest value; raise state_host_bytes",
                limits.state.instance_bytes,
                limits.state.value_bytes
            );
        }
        let d = OutboundSettings::default();
        let allow_private_networks = match self.allow_private_networks {
            None => d.allow_private_networks,
            Some(list) => list
                .iter()
                .map(|text| text.parse().map_err(|e| anyhow::anyhow!("[host] allow_private_networks: {e}")))
                .collect::<anyhow::Result<_>>()?,
        };
        let outbound = OutboundSettings {
            allow_http: self.allow_http.unwrap_or(d.allow_http),
            allow_private_networks,
            response_body_bytes: within(
                "response_body_bytes",
                self.response_body_bytes,
                1024,
                1 << 30,
                d.response_body_bytes,
            )?,
            tls: match self.extra_ca_certificates {
                None => d.tls,
                Some(path) => TlsTrust::with_extra_pem_file(&base.join(path))
                    .map_err(|e| anyhow::anyhow!("[host] extra_ca_certificates: {e}"))?,
            },
        };
        Ok(HostSettings { limits, outbound, state_dir, shared_variables, redis })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(text: &str) -> anyhow::Result<HostSettings> {
        toml::from_str::<HostFile>(text).map_err(anyhow::Error::from).and_then(|h| h.check(Path::new("."), &|_| None))
    }

    #[test]
    fn without_a_section_the_defaults_apply() {
        let h = host("").unwrap();
        assert_eq!(h, HostSettings::default());
        assert_eq!(h.limits, Limits::default());
        // secure: https only, and no refused network allowed
        assert!(!h.outbound.allow_http);
        assert!(h.outbound.allow_private_networks.is_empty());
        assert_eq!(h.outbound.response_body_bytes, 8 << 20);
        for ip in ["127.0.0.1", "10.1.2.3", "::1", "fe80::1", "8.8.8.8"] {
            assert!(!h.outbound.allows_network_of(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn every_key_is_read_and_checked() {
        let h = host(
            "wall_ms = 60000\ncpu_ms = 2000\nmemory_mib = 32\nrequest_timeout_ms = 10000\n\
             max_concurrent_instances = 4\nstate_value_bytes = 4096\nstate_keys = 10\nallow_http = true\n\
             state_host_bytes = 1048576\n\
             response_body_bytes = 65536\n\
             allow_private_networks = [\"10.0.0.0/8\", \"fd00::/8\", \"192.168.1.7/32\"]",
        )
        .unwrap();
        assert_eq!(
            h.limits,
            Limits {
                memory_bytes: 32 << 20,
                request_timeout: Duration::from_secs(10),
                cpu_time: Duration::from_secs(2),
                wall_deadline: Duration::from_secs(60),
                max_concurrent_instances: 4,
                state: StateLimits { value_bytes: 4096, keys: 10, instance_bytes: 1 << 20 },
            }
        );
        assert!(h.outbound.allow_http);
        assert_eq!(h.outbound.response_body_bytes, 65536);
        let allowed = |ip: &str| h.outbound.allows_network_of(ip.parse().unwrap());
        assert!(allowed("10.200.0.1") && allowed("::ffff:10.0.0.1") && allowed("fd12::1") && allowed("192.168.1.7"));
        assert!(!allowed("127.0.0.1") && !allowed("192.168.1.8") && !allowed("::1") && !allowed("11.0.0.1"));
        assert!(host("allow_private_networks = []").unwrap().outbound.allow_private_networks.is_empty());

        for (bad, says) in [
            ("wall_ms = 0", "wall_ms must be from 1"),
            ("cpu_ms = 0", "cpu_ms"),
            ("memory_mib = 5000", "memory_mib must be from 1 to 4096, not 5000"),
            ("request_timeout_ms = 10", "request_timeout_ms"),
            ("max_concurrent_instances = 0", "max_concurrent_instances"),
            ("state_value_bytes = 0", "state_value_bytes"),
            ("state_keys = 0", "state_keys"),
            ("state_host_bytes = 1024", "state_host_bytes must be from 65536"),
            ("state_value_bytes = 2097152\nstate_host_bytes = 1048576", "is below state_value_bytes"),
            ("response_body_bytes = 10", "response_body_bytes must be from 1024"),
            ("allow_private_networks = [\"10.0.0.0\"]", "ADDRESS/PREFIX"),
            ("allow_private_networks = [\"10.0.0.0/33\"]", "0 to 32"),
            ("allow_private_networks = [\"10.0.0.1/8\"]", "the network is 10.0.0.0/8"),
            ("allow_private_networks = [\"fd00::1/8\"]", "the network is fd00::/8"),
            ("allow_private_networks = [\"example.com/8\"]", "not an IP address"),
            (
                "extra_ca_certificates = \"/nonexistent/ca.pem\"",
                "[host] extra_ca_certificates: cannot read /nonexistent/ca.pem",
            ),
        ] {
            let e = host(bad).unwrap_err();
            assert!(format!("{e:#}").contains(says), "{bad}: {e:#}");
        }
        for bad in ["wall_ms = -1", "memory_mb = 16", "allow_http = \"yes\"", "allow_private_networks = \"10.0.0.0/8\""]
        {
            assert!(host(bad).is_err(), "{bad}");
        }
    }
}
