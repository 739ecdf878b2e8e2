//! A key-value store that behaves exactly like Spin's Redis store, over a
//! real Redis: a [`KvBackend`] for the harness's runtime, plugged into a
//! tick with `TickOptions::kv_backend` ([`SpinRedisStore::factory`]), so
//! that tests run the real component against what it meets under Spin.
//!
//! It copies `crates/key-value-redis/src/store.rs` of Spin v3.5.0 (the same
//! code is in every release from v3.4.0 to v4.0.2):
//!
//! - plain reads and writes go over one shared connection (`GET`, `SET`,
//!   `DEL`, `KEYS`, `INCRBY`);
//! - a compare-and-swap handle has a connection of its own, opened with the
//!   handle; reading it (`cas.current`) sends `WATCH <key>` then `GET
//!   <key>` on it;
//! - the swap sends `MULTI`, `SET <key> <value>`, `EXEC` on that connection,
//!   then `UNWATCH <key>`. Redis refuses the last (`UNWATCH` takes no
//!   argument: "wrong number of arguments"), and that error is returned as a
//!   failed swap, whether the `SET` landed or not. Were it not refused, an
//!   `EXEC` that aborted because the key changed since the `WATCH` (a lost
//!   race: nil) would come back as success, as in Spin: the transaction's
//!   reply is not looked at.
//!
//! When a swap fails, the host hands the guest a fresh handle on the
//! current value (as Spin does: a new handle, `WATCH` and `GET` on a new
//! connection). The guest sees only "failed" either way: the error's text
//! does not cross `wasi:keyvalue`.
//!
//! Unlike Spin, keys go under a prefix (`<prefix><key>`, as the harness's
//! own Redis store keeps them), so that `status` and tests can read the
//! records through the harness's store; an empty prefix is Spin's layout.
//! [`SwapCounts`] says what the swaps did.

use host_harness::kv::{KvBackend, KvBackendFactory};
use redis::aio::MultiplexedConnection;
use redis::AsyncCommands;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// What the swaps of every store a factory opened did.
#[derive(Debug, Default)]
pub struct SwapCounts {
    /// Swaps the guest asked for.
    pub swaps: AtomicUsize,
    /// Of those, `EXEC`s that ran the `SET` (the value landed).
    pub written: AtomicUsize,
    /// `EXEC`s that aborted: the key changed since the `WATCH`.
    pub aborted: AtomicUsize,
    /// Swaps answered "failed" because Redis refused `UNWATCH <key>`.
    pub unwatch_refused: AtomicUsize,
}

impl SwapCounts {
    pub fn get(counter: &AtomicUsize) -> usize {
        counter.load(Ordering::SeqCst)
    }
}

/// One tick's view of the store, as Spin's `RedisStore` and its
/// `CompareAndSwap` handles.
pub struct SpinRedisStore {
    client: redis::Client,
    shared: MultiplexedConnection,
    prefix: String,
    /// The connection of each open compare-and-swap handle, by key (a guest
    /// holds one handle per key at a time; a new one replaces the old, whose
    /// connection is dropped, as a dropped handle's is in Spin).
    handles: HashMap<String, MultiplexedConnection>,
    counts: Arc<SwapCounts>,
}

impl SpinRedisStore {
    /// Connects to `url` (`redis://127.0.0.1:PORT/DB`).
    pub async fn open(url: &str, prefix: &str, counts: Arc<SwapCounts>) -> Result<SpinRedisStore, String> {
        let client = redis::Client::open(url).map_err(|e| format!("{e:?}"))?;
        let shared = client.get_multiplexed_async_connection().await.map_err(|e| format!("{e:?}"))?;
        Ok(SpinRedisStore { client, shared, prefix: prefix.to_string(), handles: HashMap::new(), counts })
    }

    /// Opens a store for each tick it is given to (`TickOptions::kv_backend`).
    pub fn factory(url: &str, prefix: &str, counts: Arc<SwapCounts>) -> KvBackendFactory {
        let (url, prefix) = (url.to_string(), prefix.to_string());
        Arc::new(move || {
            let (url, prefix, counts) = (url.clone(), prefix.clone(), Arc::clone(&counts));
            Box::pin(async move {
                let store = SpinRedisStore::open(&url, &prefix, counts).await?;
                Ok(Box::new(store) as Box<dyn KvBackend>)
            })
        })
    }

    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }
}

/// Spin's `log_error`: the error's `Debug` text.
fn error(e: redis::RedisError) -> String {
    format!("{e:?}")
}

#[async_trait::async_trait]
impl KvBackend for SpinRedisStore {
    async fn get(&mut self, key: &str) -> Result<Option<Vec<u8>>, String> {
        self.shared.get(self.key(key)).await.map_err(error)
    }

    async fn set(&mut self, key: &str, value: &[u8]) -> Result<(), String> {
        self.shared.set(self.key(key), value).await.map_err(error)
    }

    async fn delete(&mut self, key: &str) -> Result<(), String> {
        self.shared.del(self.key(key)).await.map_err(error)
    }

    async fn keys(&mut self) -> Result<Vec<String>, String> {
        let pattern = format!("{}*", self.prefix.replace('*', "\\*"));
        let keys: Vec<String> = self.shared.keys(pattern).await.map_err(error)?;
        let mut keys: Vec<String> =
            keys.into_iter().filter_map(|k| k.strip_prefix(&self.prefix).map(str::to_owned)).collect();
        keys.sort();
        Ok(keys)
    }

    async fn increment(&mut self, key: &str, delta: i64) -> Result<i64, String> {
        self.shared.incr(self.key(key), delta).await.map_err(error)
    }

    /// Spin's `new_compare_and_swap` (a connection of the handle's own) and
    /// `current` (`WATCH`, then `GET`).
    async fn watch(&mut self, key: &str) -> Result<Option<Vec<u8>>, String> {
        let mut connection = self.client.get_multiplexed_async_connection().await.map_err(error)?;
        let key = self.key(key);
        redis::cmd("WATCH").arg(&key).exec_async(&mut connection).await.map_err(error)?;
        let value = connection.get(&key).await.map_err(error)?;
        self.handles.insert(key, connection);
        Ok(value)
    }

    /// Spin's `swap`: the transaction, then `UNWATCH <key>`, whose error is
    /// a failed swap. `expected` is not looked at: the `WATCH` is the check.
    async fn compare_and_swap(&mut self, key: &str, _expected: Option<&[u8]>, value: &[u8]) -> Result<bool, String> {
        let key = self.key(key);
        self.counts.swaps.fetch_add(1, Ordering::SeqCst);
        // A swap without a read of its handle: Spin's handle has its own
        // connection, never watched.
        let mut connection = match self.handles.remove(&key) {
            Some(connection) => connection,
            None => self.client.get_multiplexed_async_connection().await.map_err(error)?,
        };
        let transaction: Result<redis::Value, redis::RedisError> =
            redis::pipe().atomic().set(&key, value).query_async(&mut connection).await;
        match &transaction {
            Ok(redis::Value::Nil) => self.counts.aborted.fetch_add(1, Ordering::SeqCst),
            Ok(_) => self.counts.written.fetch_add(1, Ordering::SeqCst),
            Err(_) => 0,
        };
        if redis::cmd("UNWATCH").arg(&key).exec_async(&mut connection).await.is_err() {
            self.counts.unwatch_refused.fetch_add(1, Ordering::SeqCst);
            return Ok(false);
        }
        // Not reached with a Redis that refuses `UNWATCH <key>`, as every
        // release does: Spin's answer had it accepted it.
        Ok(transaction.is_ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::redis_server::RedisServer;

    /// The store answers as Spin's does: every swap "failed", the ones that
    /// wrote included; a lost race does not write.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_swap_answers_failed_whether_it_wrote_or_not() {
        let redis = RedisServer::start();
        let counts = Arc::new(SwapCounts::default());
        let mut a = SpinRedisStore::open(&redis.url(0), "t/", Arc::clone(&counts)).await.unwrap();
        let mut b = SpinRedisStore::open(&redis.url(0), "t/", Arc::clone(&counts)).await.unwrap();
        // Alone: the SET lands, the answer is "failed".
        assert_eq!(a.watch("k").await.unwrap(), None);
        assert_eq!(a.compare_and_swap("k", None, b"one").await, Ok(false));
        assert_eq!(b.get("k").await.unwrap(), Some(b"one".to_vec()));
        // A race: both watch, b writes first; a's EXEC aborts, and a's
        // answer is "failed" too (as b's was, though it wrote).
        assert_eq!(a.watch("k").await.unwrap(), Some(b"one".to_vec()));
        assert_eq!(b.watch("k").await.unwrap(), Some(b"one".to_vec()));
        assert_eq!(b.compare_and_swap("k", Some(b"one"), b"b").await, Ok(false));
        assert_eq!(a.compare_and_swap("k", Some(b"one"), b"a").await, Ok(false));
        assert_eq!(a.get("k").await.unwrap(), Some(b"b".to_vec()), "the lost race did not write");
        let n = |c: &AtomicUsize| SwapCounts::get(c);
        assert_eq!(
            (n(&counts.swaps), n(&counts.written), n(&counts.aborted), n(&counts.unwatch_refused)),
            (3, 2, 1, 3)
        );
        // Plain operations, under the prefix.
        a.set("x", b"1").await.unwrap();
        assert_eq!(a.increment("n", 5).await.unwrap(), 5);
        assert_eq!(a.keys().await.unwrap(), ["k", "n", "x"]);
        a.delete("x").await.unwrap();
        assert_eq!(b.get("x").await.unwrap(), None);
        let mut raw = redis::Client::open(redis.url(0)).unwrap().get_multiplexed_async_connection().await.unwrap();
        let value: Option<Vec<u8>> = raw.get("t/k").await.unwrap();
        assert_eq!(value, Some(b"b".to_vec()));
    }
}
