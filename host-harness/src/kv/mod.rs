//! Where a tenant's key-value pairs live. The host side of `wasi:keyvalue`
//! ([`crate::host::keyvalue`]) talks to a [`KvBackend`] only; each way of
//! storing the pairs is one backend beside this trait, as Spin keeps its
//! stores (`key-value-spin`, `key-value-redis`, …) behind one factor.
//!
//! Backends: [`sqlite`] (one file per tenant, Spin's table layout; the
//! embedded default).

pub mod sqlite;

pub use sqlite::{SqliteBucket, SqliteStore};

use std::path::Path;

/// One bucket of key-value pairs. Errors are the backend's description of
/// what failed, handed to the guest as a store error: they name the store
/// but never a value.
pub trait KvBackend: Send {
    fn get(&mut self, key: &str) -> Result<Option<Vec<u8>>, String>;
    fn set(&mut self, key: &str, value: &[u8]) -> Result<(), String>;
    fn delete(&mut self, key: &str) -> Result<(), String>;
    /// Every key of the bucket, in order.
    fn keys(&mut self) -> Result<Vec<String>, String>;
    /// Writes `value` only if the key still holds `expected` (`None`:
    /// absent), atomically against every other writer of the bucket, in
    /// this process or another. `Ok(false)`: the value had changed and
    /// nothing was written.
    fn compare_and_swap(&mut self, key: &str, expected: Option<&[u8]>, value: &[u8]) -> Result<bool, String>;
    /// Adds `delta` to a counter stored as decimal text (absent counts as
    /// 0), atomically; returns the new value.
    fn increment(&mut self, key: &str, delta: i64) -> Result<i64, String>;
}

/// Opens bucket `name` of a tenant's store at `location` (a SQLite file).
pub fn open(location: &Path, name: &str) -> Result<Box<dyn KvBackend>, String> {
    Ok(Box::new(SqliteStore::open(location)?.bucket(name)))
}
