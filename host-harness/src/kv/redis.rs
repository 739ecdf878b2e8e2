//! The Redis backend: a tenant's pairs are the Redis keys under its prefix
//! (`<prefix><key>`), so tenants sharing one Redis never read or overwrite
//! each other's state, and harness replicas on several machines share
//! leases, checkpoints and request budgets.
//!
//! Compare-and-swap runs as one Lua script (compare, then set), which Redis
//! executes atomically: a swap whose key changed since the guest read it is
//! reported as not written, and one that wrote as written. (Spin 3.x's
//! Redis store uses `WATCH`/`MULTI`/`EXEC`, takes an aborted `EXEC` — the
//! nil reply of a lost race — for success, and ends every swap with an
//! `UNWATCH key` that Redis refuses, so each swap that wrote is reported as
//! failed. The component decides from a read-back either way;
//! `harness_test_kit::spin_redis` reproduces that store, and
//! `tests/redis.rs` plays the lost race against this backend.)
//!
//! Redis servers are the operator's: the `[host.redis]` table names them
//! (`main = "${REDIS_URL}"`) and a tenant picks one by name
//! (`kv = "redis:main"`); it never writes an address. The URL may carry a
//! password (`redis://:secret@host:6379/0`), so it is never shown: errors
//! and `describe` name the server without credentials, and an error never
//! carries bytes the peer sent (only the kind of failure and, for a Redis
//! error reply, its code word).

use super::KvBackend;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::AsyncCommands;
use std::time::Duration;

/// How long one Redis command, or a connection attempt, may take before the
/// store call fails (the tick then fails that step, as for any store error).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);

/// Compare-and-swap. KEYS[1]: the key; ARGV[1]: "1" when a value is
/// expected, "0" when the key must be absent; ARGV[2]: the expected value;
/// ARGV[3]: the new value. Returns 1 when written, 0 when the key held
/// something else.
const CAS_SCRIPT: &str = r"
local current = redis.call('GET', KEYS[1])
if ARGV[1] == '1' then
  if current ~= ARGV[2] then return 0 end
elseif current then
  return 0
end
redis.call('SET', KEYS[1], ARGV[3])
return 1
";

/// The name a `kv` that stands for the store at no declared server takes
/// (tests and embedders that build a [`RedisLocation`] from a URL).
const UNNAMED_SERVER: &str = "redis";

/// A Redis server the operator declared: its name in `[host.redis]` and its
/// URL. `Debug` shows the URL without credentials.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisServer {
    name: String,
    url: String,
}

impl RedisServer {
    /// `url` is `redis://[user:password@]host[:port][/db]` or `rediss://…`
    /// (TLS). The error names the server, never the URL's credentials.
    pub fn new(name: &str, url: &str) -> Result<RedisServer, String> {
        redis::IntoConnectionInfo::into_connection_info(url)
            .map_err(|_| format!("{} is not a Redis URL (redis://host:port/db or rediss://…)", redact(url)))?;
        Ok(RedisServer { name: name.to_string(), url: url.to_string() })
    }

    /// Its name in `[host.redis]`, which a tenant's `kv = "redis:NAME"`
    /// picks.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The URL without credentials, query or fragment.
    pub fn shown_url(&self) -> String {
        redact(&self.url)
    }
}

impl std::fmt::Debug for RedisServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.name, redact(&self.url))
    }
}

/// A Redis database and the prefix of one tenant's keys in it.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisLocation {
    server: RedisServer,
    prefix: String,
}

impl RedisLocation {
    /// The store at `url` (a server of no declared name); `prefix` goes in
    /// front of every key.
    pub fn new(url: &str, prefix: &str) -> Result<RedisLocation, String> {
        RedisLocation::on(RedisServer::new(UNNAMED_SERVER, url)?, prefix)
    }

    /// Keys under `prefix` on a declared server.
    pub fn on(server: RedisServer, prefix: &str) -> Result<RedisLocation, String> {
        if prefix.is_empty() {
            return Err("the Redis key prefix must not be empty: tenants sharing a Redis need their own".into());
        }
        Ok(RedisLocation { server, prefix: prefix.to_string() })
    }

    pub(crate) fn url(&self) -> &str {
        &self.server.url
    }

    /// The server the keys are on.
    pub fn server(&self) -> &RedisServer {
        &self.server
    }

    /// What every key of the tenant's starts with (never empty).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The server and the prefix, without credentials.
    pub fn describe(&self) -> String {
        if self.server.name == UNNAMED_SERVER {
            format!("redis {} prefix {:?}", redact(&self.server.url), self.prefix)
        } else {
            format!("redis {} ({}) prefix {:?}", self.server.name, redact(&self.server.url), self.prefix)
        }
    }

    /// A connection that reconnects by itself after a failure.
    pub(crate) async fn connect(&self) -> Result<ConnectionManager, String> {
        let client = redis::Client::open(self.server.url.as_str()).map_err(|e| self.error("cannot use", &e))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(COMMAND_TIMEOUT))
            .set_response_timeout(Some(COMMAND_TIMEOUT))
            .set_number_of_retries(1);
        ConnectionManager::new_with_config(client, config).await.map_err(|e| self.error("cannot connect to", &e))
    }

    fn error(&self, what: &str, e: &redis::RedisError) -> String {
        format!("{what} Redis {}: {}", redact(&self.server.url), describe_error(e))
    }
}

/// What failed, in the host's words: the kind of failure and, for an error
/// reply, its code word (`NOAUTH`, `WRONGTYPE`), never the rest of what
/// the peer sent (a port that is not Redis must not be read back through
/// an error) nor the URL.
fn describe_error(e: &redis::RedisError) -> String {
    use redis::ErrorKind;
    if e.is_timeout() {
        return "timed out".into();
    }
    if e.is_connection_refusal() {
        return "connection refused".into();
    }
    if e.is_connection_dropped() {
        return "the server closed the connection".into();
    }
    let kind = match e.kind() {
        ErrorKind::AuthenticationFailed => "authentication failed (check the password in the server's URL)",
        ErrorKind::Io => "a network error",
        ErrorKind::Parse | ErrorKind::UnexpectedReturnType => "the server's answer is not what Redis sends",
        ErrorKind::InvalidClientConfig => "the URL is not usable",
        _ => "the server answered an error",
    };
    match e.code().filter(|c| c.len() <= 24 && c.bytes().all(|b| b.is_ascii_uppercase() || b == b'_')) {
        Some(code) => format!("{kind} ({code})"),
        None => kind.into(),
    }
}

/// `scheme://host:port/db` of a Redis URL, credentials and query left out.
fn redact(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("redis", url));
    let rest = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
    let rest = rest.split(['?', '#']).next().unwrap_or_default();
    format!("{scheme}://{rest}")
}

/// One tenant's bucket in a shared Redis.
pub struct RedisBucket {
    connection: ConnectionManager,
    /// `<tenant prefix><bucket>/`: the bucket name keeps Spin's store
    /// namespaces apart as the SQLite layout's `store` column does.
    prefix: String,
    server: String,
}

impl RedisBucket {
    pub(crate) fn new(connection: ConnectionManager, location: &RedisLocation, bucket: &str) -> RedisBucket {
        RedisBucket {
            connection,
            prefix: format!("{}{bucket}/", location.prefix),
            server: redact(&location.server.url),
        }
    }

    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    fn fail(&self, e: redis::RedisError) -> String {
        format!("Redis {}: {}", self.server, describe_error(&e))
    }
}

/// `text` with Redis's glob characters escaped, for `SCAN MATCH`.
fn glob_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[async_trait::async_trait]
impl KvBackend for RedisBucket {
    async fn get(&mut self, key: &str) -> Result<Option<Vec<u8>>, String> {
        let key = self.key(key);
        self.connection.get(key).await.map_err(|e| self.fail(e))
    }

    async fn set(&mut self, key: &str, value: &[u8]) -> Result<(), String> {
        let key = self.key(key);
        self.connection.set(key, value).await.map_err(|e| self.fail(e))
    }

    async fn delete(&mut self, key: &str) -> Result<(), String> {
        let key = self.key(key);
        self.connection.del(key).await.map_err(|e| self.fail(e))
    }

    async fn keys(&mut self) -> Result<Vec<String>, String> {
        let pattern = format!("{}*", glob_escape(&self.prefix));
        let mut keys = Vec::new();
        let mut cursor: u64 = 0;
        loop {
            let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(500)
                .query_async(&mut self.connection)
                .await
                .map_err(|e| self.fail(e))?;
            keys.extend(batch.into_iter().filter_map(|k| k.strip_prefix(&self.prefix).map(str::to_string)));
            if next == 0 {
                break;
            }
            cursor = next;
        }
        keys.sort();
        keys.dedup();
        Ok(keys)
    }

    async fn compare_and_swap(&mut self, key: &str, expected: Option<&[u8]>, value: &[u8]) -> Result<bool, String> {
        let written: i64 = redis::Script::new(CAS_SCRIPT)
            .key(self.key(key))
            .arg(if expected.is_some() { "1" } else { "0" })
            .arg(expected.unwrap_or_default())
            .arg(value)
            .invoke_async(&mut self.connection)
            .await
            .map_err(|e| self.fail(e))?;
        Ok(written == 1)
    }

    async fn increment(&mut self, key: &str, delta: i64) -> Result<i64, String> {
        let full = self.key(key);
        self.connection.incr(full, delta).await.map_err(|e| {
            if e.to_string().contains("not an integer") {
                format!("key {key} does not hold a counter")
            } else {
                self.fail(e)
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_shown_without_credentials() {
        assert_eq!(redact("redis://:hunter2@cache.internal:6380/2"), "redis://cache.internal:6380/2");
        assert_eq!(redact("rediss://user:p%40ss@h:6379/0?x=1"), "rediss://h:6379/0");
        assert_eq!(redact("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
        let location = RedisLocation::new("redis://:hunter2@cache.internal:6380/2", "acme/").unwrap();
        assert!(!location.describe().contains("hunter2"), "{}", location.describe());
        let bad = RedisLocation::new("redis://:hunter2@[::1", "acme/").map(|_| ()).unwrap_err();
        assert!(!bad.contains("hunter2"), "{bad}");
        assert!(RedisLocation::new("redis://h:6379/0", "").is_err());
    }

    #[test]
    fn scan_patterns_match_the_prefix_literally() {
        assert_eq!(glob_escape("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\");
    }
}
