//! Where a tenant's key-value pairs live. The host side of `wasi:keyvalue`
//! ([`crate::host::keyvalue`]) talks to a [`KvBackend`] only; each way of
//! storing the pairs is one backend beside this trait, as Spin keeps its
//! stores (`key-value-spin`, `key-value-redis`, …) behind one factor.
//!
//! Backends: [`sqlite`] (one file per tenant, Spin's table layout; the
//! embedded default) and [`redis`] (every tenant's keys under its own prefix
//! in a shared Redis, for replicas on several machines).
//!
//! Every call is async and none blocks the runtime's worker threads: SQLite
//! runs on tokio's blocking pool, Redis over an async connection.

pub mod redis;
pub mod sqlite;

pub use self::redis::{RedisBucket, RedisLocation, RedisServer};
pub use self::sqlite::{OpenFiles, SqliteBucket, SqliteStore};

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// One bucket of key-value pairs. Errors are the backend's description of
/// what failed, handed to the guest as a store error: they name the store
/// (never with its credentials) but never a value.
#[async_trait::async_trait]
pub trait KvBackend: Send {
    /// The value of `key`; `None` when it is absent.
    async fn get(&mut self, key: &str) -> Result<Option<Vec<u8>>, String>;
    /// Stores `value` under `key`, replacing what was there.
    async fn set(&mut self, key: &str, value: &[u8]) -> Result<(), String>;
    /// Removes `key`; an absent key is no error.
    async fn delete(&mut self, key: &str) -> Result<(), String>;
    /// Every key of the bucket, in order.
    async fn keys(&mut self) -> Result<Vec<String>, String>;
    /// Writes `value` only if the key still holds `expected` (`None`:
    /// absent), atomically against every other writer of the bucket, in
    /// this process or another. `Ok(false)`: the value had changed and
    /// nothing was written — never reported as written.
    async fn compare_and_swap(&mut self, key: &str, expected: Option<&[u8]>, value: &[u8]) -> Result<bool, String>;
    /// Adds `delta` to a counter stored as decimal text (absent counts as
    /// 0), atomically; returns the new value.
    async fn increment(&mut self, key: &str, delta: i64) -> Result<i64, String>;
    /// Starts a compare-and-swap of `key` and reads its current value: a
    /// guest's `wasi:keyvalue/atomics` handle (`cas.new`, whose value the
    /// swap is checked against). By default a plain [`KvBackend::get`]:
    /// [`KvBackend::compare_and_swap`] checks atomically by itself. A
    /// backend whose transactions are scoped to a connection overrides it
    /// (the test kit's copy of Spin's Redis store, `WATCH` then `GET`).
    async fn watch(&mut self, key: &str) -> Result<Option<Vec<u8>>, String> {
        self.get(key).await
    }
}

/// Opens a tenant's store some other way than its [`KvLocation`]: how a
/// test plugs a backend of its own into a tick
/// (`runtime::TickOptions::kv_backend`; the test kit's `spin_redis` store,
/// which behaves as Spin's Redis store, is one). Called once per tick, at
/// the instance's first store call; its error is the guest's store error.
pub type KvBackendFactory = Arc<
    dyn Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Box<dyn KvBackend>, String>> + Send>>
        + Send
        + Sync,
>;

/// Where one tenant's store is.
#[derive(Clone, PartialEq, Eq)]
pub enum KvLocation {
    /// A SQLite file of its own.
    Sqlite(PathBuf),
    /// Keys under the tenant's prefix in a Redis database.
    Redis(RedisLocation),
}

impl KvLocation {
    /// The SQLite file, if the store is one.
    pub fn sqlite_path(&self) -> Option<&Path> {
        match self {
            KvLocation::Sqlite(path) => Some(path),
            KvLocation::Redis(_) => None,
        }
    }

    /// What `validate` and `status` show: the file, or the Redis URL without
    /// credentials and the prefix.
    pub fn describe(&self) -> String {
        match self {
            KvLocation::Sqlite(path) => format!("sqlite {}", path.display()),
            KvLocation::Redis(r) => r.describe(),
        }
    }
}

impl std::fmt::Debug for KvLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl From<PathBuf> for KvLocation {
    fn from(path: PathBuf) -> KvLocation {
        KvLocation::Sqlite(path)
    }
}

/// Opens tenants' stores. Every tenant on one Redis shares one connection
/// (it multiplexes and reconnects by itself), so a thousand tenants do not
/// mean a thousand connections; a SQLite file stays open from one tick to
/// the next ([`OpenFiles`]). Shared by every tick of a runtime; its
/// Redis connections are driven by the tokio runtime that opened them, so
/// an embedder keeps one tokio runtime for the ticks of one `Runtime`.
#[derive(Default)]
pub struct Stores {
    /// One cell per Redis URL, filled by the first open that connects. The
    /// map's lock is held only to find or add a cell, never across a
    /// connect: a Redis that does not answer delays the tenants on it (up to
    /// the connect timeout), not those on another Redis or on SQLite.
    redis: std::sync::Mutex<HashMap<String, Arc<tokio::sync::OnceCell<::redis::aio::ConnectionManager>>>>,
    /// The SQLite files open now.
    sqlite: Arc<OpenFiles>,
}

impl Stores {
    /// Keeping at most `n` SQLite files open across ticks.
    pub fn with_open_files(n: usize) -> Stores {
        Stores { sqlite: Arc::new(OpenFiles::with_capacity(n)), ..Stores::default() }
    }

    /// The SQLite files open across ticks.
    pub fn sqlite_files(&self) -> &OpenFiles {
        &self.sqlite
    }

    /// Bucket `name` of the store at `location`, created if it does not
    /// exist yet (a SQLite file and its folder; Redis needs nothing).
    pub async fn open(&self, location: &KvLocation, name: &str) -> Result<Box<dyn KvBackend>, String> {
        match location {
            KvLocation::Sqlite(path) => {
                // A file already open costs a map lookup and a `stat`, done
                // here; only opening one (which may wait on another
                // process's lock) goes to the blocking pool.
                let file = match self.sqlite.get_open(path) {
                    Some(file) => file,
                    None => {
                        let (path, files) = (path.clone(), Arc::clone(&self.sqlite));
                        tokio::task::spawn_blocking(move || files.get(&path))
                            .await
                            .map_err(|e| format!("the store's thread ended: {e}"))??
                    }
                };
                Ok(Box::new(SqliteStore::shared_bucket(file, name)))
            }
            KvLocation::Redis(location) => {
                let cell = {
                    let mut cells = self.redis.lock().unwrap_or_else(|e| e.into_inner());
                    Arc::clone(cells.entry(location.url().to_string()).or_default())
                };
                // Opens of one URL at once wait for the same connect; a
                // failed one leaves the cell empty for the next to retry.
                let connection = cell.get_or_try_init(|| location.connect()).await?.clone();
                Ok(Box::new(RedisBucket::new(connection, location, name)))
            }
        }
    }
}
