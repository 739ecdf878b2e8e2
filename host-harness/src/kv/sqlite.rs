//! The SQLite backend: a tenant's key-value store is one SQLite file, in the
//! table layout Spin's default store uses (`spin_key_value`: store, key,
//! value), so checkpoints survive restarts and a state file can move between
//! this harness and `spin up`.

use super::KvBackend;
use rusqlite::{params, Connection, OptionalExtension};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// One SQLite file; every method names the store (Spin's "bucket") it
/// works on. [`SqliteStore::bucket`] binds one store as a [`KvBackend`].
pub struct SqliteStore {
    conn: Connection,
    path: PathBuf,
}

impl SqliteStore {
    /// Opens (creating if needed) the store file and its parent folder.
    pub fn open(path: &Path) -> Result<SqliteStore, String> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        }
        let conn = Connection::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        // Two harness processes may share a file; wait for the other's write
        // rather than failing at once.
        conn.busy_timeout(Duration::from_secs(5)).map_err(|e| e.to_string())?;
        // Write-ahead log, synced at checkpoints rather than at every commit:
        // a tick commits several times, and waiting for the disk each time
        // set the tick rate of many tenants on one disk (BENCHMARKS.md). A
        // crash of the process loses nothing; a power cut may lose the last
        // commits, so a checkpoint may go back one page and that page is
        // sent again (a duplicate, never a loss: the checkpoint only ever
        // moves after Devo took the page). Processes sharing the file on one
        // machine still see each other's writes; SQLite's WAL does not work
        // on network file systems, which the rollback journal did not either.
        conn.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;")
            .map_err(|e| format!("cannot set up {}: {e}", path.display()))?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS spin_key_value (
                 store TEXT NOT NULL, key TEXT NOT NULL, value BLOB NOT NULL,
                 PRIMARY KEY (store, key));",
        )
        .map_err(|e| format!("cannot prepare {}: {e}", path.display()))?;
        Ok(SqliteStore { conn, path: path.to_path_buf() })
    }

    /// This file's store `name` as the backend of one bucket.
    pub fn bucket(self, name: &str) -> SqliteBucket {
        SqliteBucket { file: Arc::new(Mutex::new(self)), name: name.into() }
    }

    /// The file, as it was opened.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The value of `key` in `store`; `None` when it is absent.
    pub fn get(&self, store: &str, key: &str) -> Result<Option<Vec<u8>>, String> {
        self.conn
            .query_row("SELECT value FROM spin_key_value WHERE store = ?1 AND key = ?2", params![store, key], |r| {
                r.get(0)
            })
            .optional()
            .map_err(|e| e.to_string())
    }

    /// Stores `value` under `key` in `store`, replacing what was there.
    pub fn set(&self, store: &str, key: &str, value: &[u8]) -> Result<(), String> {
        self.conn
            .execute(
                "INSERT INTO spin_key_value (store, key, value) VALUES (?1, ?2, ?3)
                 ON CONFLICT (store, key) DO UPDATE SET value = excluded.value",
                params![store, key, value],
            )
            .map(drop)
            .map_err(|e| e.to_string())
    }

    /// Removes `key` from `store`; an absent key is no error.
    pub fn delete(&self, store: &str, key: &str) -> Result<(), String> {
        self.conn
            .execute("DELETE FROM spin_key_value WHERE store = ?1 AND key = ?2", params![store, key])
            .map(drop)
            .map_err(|e| e.to_string())
    }

    /// Writes `value` only if the key still holds `expected` (`None`: absent),
    /// atomically across every process sharing the file. `Ok(false)` when
    /// the value had changed; nothing is written then.
    pub fn compare_and_swap(
        &mut self,
        store: &str,
        key: &str,
        expected: Option<&[u8]>,
        value: &[u8],
    ) -> Result<bool, String> {
        self.read_modify_write(store, key, |current| Ok((current.as_deref() == expected).then(|| value.to_vec())))
            .map(|written| written.is_some())
    }

    /// Adds `delta` to a counter stored as decimal text; absent counts as 0.
    pub fn increment(&mut self, store: &str, key: &str, delta: i64) -> Result<i64, String> {
        let mut next = 0;
        self.read_modify_write(store, key, |current| {
            let now = match current {
                None => 0,
                Some(bytes) => std::str::from_utf8(&bytes)
                    .ok()
                    .and_then(|t| t.parse::<i64>().ok())
                    .ok_or_else(|| format!("key {key} does not hold a counter"))?,
            };
            next = now.checked_add(delta).ok_or("counter overflow")?;
            Ok(Some(next.to_string().into_bytes()))
        })?;
        Ok(next)
    }

    /// Reads a value and writes what `change` makes of it (nothing for
    /// `None`) in one IMMEDIATE transaction: no other writer, in this process
    /// or another, can come between the read and the write.
    fn read_modify_write(
        &mut self,
        store: &str,
        key: &str,
        change: impl FnOnce(Option<Vec<u8>>) -> Result<Option<Vec<u8>>, String>,
    ) -> Result<Option<Vec<u8>>, String> {
        let tx =
            self.conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).map_err(|e| e.to_string())?;
        let current: Option<Vec<u8>> = tx
            .query_row("SELECT value FROM spin_key_value WHERE store = ?1 AND key = ?2", params![store, key], |r| {
                r.get(0)
            })
            .optional()
            .map_err(|e| e.to_string())?;
        let Some(value) = change(current)? else { return Ok(None) };
        tx.execute(
            "INSERT INTO spin_key_value (store, key, value) VALUES (?1, ?2, ?3)
             ON CONFLICT (store, key) DO UPDATE SET value = excluded.value",
            params![store, key, value],
        )
        .map_err(|e| e.to_string())?;
        tx.commit().map_err(|e| e.to_string())?;
        Ok(Some(value))
    }

    /// Every key of `store`, in order.
    pub fn keys(&self, store: &str) -> Result<Vec<String>, String> {
        let mut stmt = self
            .conn
            .prepare("SELECT key FROM spin_key_value WHERE store = ?1 ORDER BY key")
            .map_err(|e| e.to_string())?;
        let rows = stmt.query_map(params![store], |r| r.get(0)).map_err(|e| e.to_string())?;
        rows.collect::<Result<Vec<String>, _>>().map_err(|e| e.to_string())
    }
}

/// One store of a SQLite file, as the host's key-value interface sees it.
/// SQLite's calls block (on the disk, on another process's lock), so each
/// runs on tokio's blocking pool, never on a worker thread that other
/// tenants' ticks need.
pub struct SqliteBucket {
    file: Arc<Mutex<SqliteStore>>,
    name: Arc<str>,
}

impl SqliteBucket {
    async fn run<R: Send + 'static>(
        &self,
        op: impl FnOnce(&mut SqliteStore, &str) -> Result<R, String> + Send + 'static,
    ) -> Result<R, String> {
        let (file, name) = (Arc::clone(&self.file), Arc::clone(&self.name));
        tokio::task::spawn_blocking(move || op(&mut file.lock().unwrap_or_else(PoisonError::into_inner), &name))
            .await
            .map_err(|e| format!("the store's thread ended: {e}"))?
    }
}

#[async_trait::async_trait]
impl KvBackend for SqliteBucket {
    async fn get(&mut self, key: &str) -> Result<Option<Vec<u8>>, String> {
        let key = key.to_string();
        self.run(move |file, name| file.get(name, &key)).await
    }

    async fn set(&mut self, key: &str, value: &[u8]) -> Result<(), String> {
        let (key, value) = (key.to_string(), value.to_vec());
        self.run(move |file, name| file.set(name, &key, &value)).await
    }

    async fn delete(&mut self, key: &str) -> Result<(), String> {
        let key = key.to_string();
        self.run(move |file, name| file.delete(name, &key)).await
    }

    async fn keys(&mut self) -> Result<Vec<String>, String> {
        self.run(|file, name| file.keys(name)).await
    }

    async fn compare_and_swap(&mut self, key: &str, expected: Option<&[u8]>, value: &[u8]) -> Result<bool, String> {
        let (key, expected, value) = (key.to_string(), expected.map(<[u8]>::to_vec), value.to_vec());
        self.run(move |file, name| file.compare_and_swap(name, &key, expected.as_deref(), &value)).await
    }

    async fn increment(&mut self, key: &str, delta: i64) -> Result<i64, String> {
        let key = key.to_string();
        self.run(move |file, name| file.increment(name, &key, delta)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_persist_across_reopen_and_stores_are_separate() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested/t.sqlite");
        {
            let kv = SqliteStore::open(&path).unwrap();
            kv.set("default", "a", b"1").unwrap();
            kv.set("default", "a", b"2").unwrap();
            kv.set("other", "a", b"x").unwrap();
            kv.set("default", "b", b"3").unwrap();
            kv.delete("default", "b").unwrap();
        }
        let kv = SqliteStore::open(&path).unwrap();
        assert_eq!(kv.get("default", "a").unwrap(), Some(b"2".to_vec()));
        assert_eq!(kv.get("other", "a").unwrap(), Some(b"x".to_vec()));
        assert_eq!(kv.get("default", "b").unwrap(), None);
        assert_eq!(kv.keys("default").unwrap(), vec!["a".to_string()]);
    }

    #[test]
    fn the_file_keeps_a_write_ahead_log_and_other_connections_see_each_commit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.sqlite");
        let a = SqliteStore::open(&path).unwrap();
        let mode: String = a.conn.query_row("PRAGMA journal_mode", [], |r| r.get(0)).unwrap();
        let sync: i64 = a.conn.query_row("PRAGMA synchronous", [], |r| r.get(0)).unwrap();
        assert_eq!((mode.as_str(), sync), ("wal", 1), "WAL with synchronous=NORMAL");
        let b = SqliteStore::open(&path).unwrap();
        a.set("default", "k", b"1").unwrap();
        assert_eq!(b.get("default", "k").unwrap(), Some(b"1".to_vec()), "committed, not yet checkpointed");
        assert!(dir.path().join("t.sqlite-wal").exists());
    }

    #[test]
    fn compare_and_swap_and_increment_are_atomic_across_connections() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.sqlite");
        let mut a = SqliteStore::open(&path).unwrap();
        let mut b = SqliteStore::open(&path).unwrap();
        assert!(a.compare_and_swap("default", "k", None, b"1").unwrap());
        assert!(!b.compare_and_swap("default", "k", None, b"2").unwrap(), "b read it absent: stale");
        assert!(b.compare_and_swap("default", "k", Some(b"1"), b"2").unwrap());
        assert!(!a.compare_and_swap("default", "k", Some(b"1"), b"3").unwrap());
        assert_eq!(a.get("default", "k").unwrap(), Some(b"2".to_vec()));
        // two writers racing on one counter lose no increment
        let handles: Vec<_> = (0..2)
            .map(|_| {
                let path = path.clone();
                std::thread::spawn(move || {
                    let mut kv = SqliteStore::open(&path).unwrap();
                    for _ in 0..50 {
                        kv.increment("default", "n", 1).unwrap();
                    }
                })
            })
            .collect();
        handles.into_iter().for_each(|h| h.join().unwrap());
        assert_eq!(a.increment("default", "n", 0).unwrap(), 100);
    }
}
