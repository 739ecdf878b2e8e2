//! The SQLite backend: a tenant's key-value store is one SQLite file, in the
//! table layout Spin's default store uses (`spin_key_value`: store, key,
//! value), so checkpoints survive restarts and a state file can move between
//! this harness and `spin up`.
//!
//! Files stay open across ticks ([`OpenFiles`]): opening one costs a few
//! system calls, parsing the schema and, once its last connection closes,
//! SQLite's checkpoint of the write-ahead log (two fsyncs) and the log's
//! deletion; for a tenant whose tick finds nothing new that was most of
//! what the store cost.

use super::KvBackend;
use rusqlite::{params, Connection, OptionalExtension};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// How many SQLite files [`OpenFiles`] keeps open by default. Each holds
/// three file descriptors (the file, its log and the log's index) and some
/// 75 KiB of memory (120 KiB with SQLite's lookaside allocator, which is
/// turned off); past this many the least recently used is closed.
pub const DEFAULT_OPEN_FILES: usize = 1024;

/// Writes a value, replacing the one there.
const UPSERT: &str = "INSERT INTO spin_key_value (store, key, value) VALUES (?1, ?2, ?3)
     ON CONFLICT (store, key) DO UPDATE SET value = excluded.value";

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
        conn.busy_timeout(LOCK_WAIT).map_err(|e| e.to_string())?;
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
        // A store is a handful of small rows and stays open across ticks
        // (many files at once, see [`OpenFiles`]): a page cache of 16 KiB
        // holds all of it, and without SQLite's per-connection lookaside
        // allocator (48 KiB, all touched when the connection opens) an open
        // file costs a few tens of KiB.
        conn.execute_batch("PRAGMA cache_size = -16;").map_err(|e| format!("cannot set up {}: {e}", path.display()))?;
        no_lookaside(&conn);
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

    /// Store `name` of a file already open (one of [`OpenFiles`]').
    pub fn shared_bucket(file: Arc<Mutex<SqliteStore>>, name: &str) -> SqliteBucket {
        SqliteBucket { file, name: name.into() }
    }

    /// The file, as it was opened.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The value of `key` in `store`; `None` when it is absent.
    pub fn get(&self, store: &str, key: &str) -> Result<Option<Vec<u8>>, String> {
        self.conn
            .prepare_cached("SELECT value FROM spin_key_value WHERE store = ?1 AND key = ?2")
            .and_then(|mut stmt| stmt.query_row(params![store, key], |r| r.get(0)).optional())
            .map_err(|e| e.to_string())
    }

    /// Stores `value` under `key` in `store`, replacing what was there.
    pub fn set(&self, store: &str, key: &str, value: &[u8]) -> Result<(), String> {
        self.conn
            .prepare_cached(UPSERT)
            .and_then(|mut stmt| stmt.execute(params![store, key, value]))
            .map(drop)
            .map_err(|e| e.to_string())
    }

    /// Removes `key` from `store`; an absent key is no error.
    pub fn delete(&self, store: &str, key: &str) -> Result<(), String> {
        self.conn
            .prepare_cached("DELETE FROM spin_key_value WHERE store = ?1 AND key = ?2")
            .and_then(|mut stmt| stmt.execute(params![store, key]))
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
            .prepare_cached("SELECT value FROM spin_key_value WHERE store = ?1 AND key = ?2")
            .and_then(|mut stmt| stmt.query_row(params![store, key], |r| r.get(0)).optional())
            .map_err(|e| e.to_string())?;
        let Some(value) = change(current)? else { return Ok(None) };
        tx.prepare_cached(UPSERT)
            .and_then(|mut stmt| stmt.execute(params![store, key, value]))
            .map_err(|e| e.to_string())?;
        tx.commit().map_err(|e| e.to_string())?;
        Ok(Some(value))
    }

    /// Every key of `store`, in order.
    pub fn keys(&self, store: &str) -> Result<Vec<String>, String> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT key FROM spin_key_value WHERE store = ?1 ORDER BY key")
            .map_err(|e| e.to_string())?;
        let rows = stmt.query_map(params![store], |r| r.get(0)).map_err(|e| e.to_string())?;
        rows.collect::<Result<Vec<String>, _>>().map_err(|e| e.to_string())
    }
}

/// Turns off SQLite's lookaside allocator on `conn` (it falls back to
/// malloc, which SQLite documents as the only cost).
fn no_lookaside(conn: &Connection) {
    // SAFETY: the handle is `conn`'s own and live for the call; no statement
    // of it is running (it was just opened), which SQLITE_DBCONFIG_LOOKASIDE
    // requires; its arguments are a null buffer and two ints, as documented
    // (a null buffer with a size of 0 disables lookaside). A failure (BUSY)
    // leaves the default in place, which is only more memory.
    unsafe {
        let _ = rusqlite::ffi::sqlite3_db_config(
            conn.handle(),
            rusqlite::ffi::SQLITE_DBCONFIG_LOOKASIDE,
            std::ptr::null_mut::<std::ffi::c_void>(),
            0 as std::ffi::c_int,
            0 as std::ffi::c_int,
        );
    }
}

/// Which file a path names right now: its device and inode.
#[cfg(unix)]
fn identity(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

#[cfg(not(unix))]
fn identity(path: &Path) -> Option<(u64, u64)> {
    std::fs::metadata(path).ok().map(|_| (0, 0))
}

/// SQLite files kept open across ticks, at most `capacity` of them (the
/// least recently used is closed past that). A file is opened again when
/// its path no longer names the file that is open (deleted, or replaced:
/// an operator who removes a tenant's state file to start it afresh gets
/// a fresh file, not writes into the deleted one); that costs one `stat`
/// per use. The map's lock is never held across an open, which may wait
/// on another process's lock.
pub struct OpenFiles {
    files: Mutex<HashMap<PathBuf, OpenFile>>,
    /// A lock per path being opened now (see [`OpenFiles::get`]).
    opening: Mutex<HashMap<PathBuf, Arc<Mutex<()>>>>,
    capacity: usize,
    /// Uses so far: each file's last use is a tick of this clock.
    uses: AtomicU64,
    opened: AtomicU64,
}

struct OpenFile {
    file: Arc<Mutex<SqliteStore>>,
    identity: Option<(u64, u64)>,
    last_used: u64,
}

impl Default for OpenFiles {
    fn default() -> Self {
        OpenFiles::with_capacity(DEFAULT_OPEN_FILES)
    }
}

impl OpenFiles {
    /// At most `capacity` files open at once (at least one).
    pub fn with_capacity(capacity: usize) -> OpenFiles {
        OpenFiles {
            files: Mutex::default(),
            opening: Mutex::default(),
            capacity: capacity.max(1),
            uses: AtomicU64::new(0),
            opened: AtomicU64::new(0),
        }
    }

    /// The file at `path`, open already or opened now (created if need
    /// be, as [`SqliteStore::open`]). Blocks: call it off the async workers.
    pub fn get(&self, path: &Path) -> Result<Arc<Mutex<SqliteStore>>, String> {
        if let Some(file) = self.get_open(path) {
            return Ok(file);
        }
        // One open of a path at a time: two ticks of a tenant starting
        // together would both open a new file, and SQLite answers a switch
        // to WAL that meets another connection's lock with "database is
        // locked" at once, whatever the busy timeout. The second waits for
        // the first and takes the file it opened.
        let opening = {
            let mut opening = self.opening.lock().unwrap_or_else(PoisonError::into_inner);
            Arc::clone(opening.entry(path.to_path_buf()).or_default())
        };
        let opened = {
            let _only_one = opening.lock().unwrap_or_else(PoisonError::into_inner);
            self.open_new(path)
        };
        drop(opening);
        // The last to let go of the path's lock removes it (a tick that
        // takes it meanwhile holds a clone, made under this map's lock).
        let mut locks = self.opening.lock().unwrap_or_else(PoisonError::into_inner);
        if locks.get(path).is_some_and(|lock| Arc::strong_count(lock) == 1) {
            locks.remove(path);
        }
        opened
    }

    /// [`OpenFiles::get`] under the path's open lock.
    fn open_new(&self, path: &Path) -> Result<Arc<Mutex<SqliteStore>>, String> {
        if let Some(file) = self.get_open(path) {
            return Ok(file); // opened by the tick this one waited for
        }
        let tick = self.uses.fetch_add(1, Ordering::Relaxed);
        let file = Arc::new(Mutex::new(SqliteStore::open(path)?));
        self.opened.fetch_add(1, Ordering::Relaxed);
        let open = OpenFile { file: Arc::clone(&file), identity: identity(path), last_used: tick };
        let mut files = self.files.lock().unwrap_or_else(PoisonError::into_inner);
        files.insert(path.to_path_buf(), open);
        while files.len() > self.capacity {
            let Some(oldest) = files.iter().min_by_key(|(_, f)| f.last_used).map(|(p, _)| p.clone()) else { break };
            // Closed once the last tick using it lets go of it.
            files.remove(&oldest);
        }
        Ok(file)
    }

    /// The file at `path` if it is open and the path still names it; a
    /// file deleted or replaced under it is forgotten (and closes once no
    /// tick uses it). Opens nothing, so it does not block beyond a `stat`:
    /// a tick calls it on its own thread and leaves only a real open to
    /// the blocking pool.
    pub fn get_open(&self, path: &Path) -> Option<Arc<Mutex<SqliteStore>>> {
        let now = identity(path);
        let tick = self.uses.fetch_add(1, Ordering::Relaxed);
        let mut files = self.files.lock().unwrap_or_else(PoisonError::into_inner);
        let open = files.get_mut(path)?;
        if open.identity.is_some() && open.identity == now {
            open.last_used = tick;
            return Some(Arc::clone(&open.file));
        }
        // Deleted or replaced under us: open what is there now.
        files.remove(path);
        None
    }

    /// How many times a file was opened (a tick that found its file open
    /// opens nothing).
    pub fn opened(&self) -> u64 {
        self.opened.load(Ordering::Relaxed)
    }

    /// How many files are open now.
    pub fn len(&self) -> usize {
        self.files.lock().unwrap_or_else(PoisonError::into_inner).len()
    }

    /// True when no file is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// How long a call waits for another process's lock on the file before it
/// fails (on tokio's blocking pool, never on a worker thread).
const LOCK_WAIT: Duration = Duration::from_secs(5);

/// True when SQLite refused `error`'s call because another connection held
/// the file's lock (SQLITE_BUSY, whose message SQLite fixes).
fn is_busy(error: &str) -> bool {
    error.contains("database is locked")
}

/// One store of a SQLite file, as the host's key-value interface sees it.
///
/// A call on a file that stays open is a few microseconds of work, far less
/// than handing it to another thread and back; so it runs at once, on the
/// calling thread, as long as it need not wait: the file's mutex free and
/// SQLite told not to wait for another process's lock. A call that would
/// wait (the mutex held by another tick of the tenant, or the file locked by
/// another process: a second harness, `status`) runs again on tokio's
/// blocking pool, where waiting up to [`LOCK_WAIT`] stops no other tenant.
pub struct SqliteBucket {
    file: Arc<Mutex<SqliteStore>>,
    name: Arc<str>,
}

impl SqliteBucket {
    async fn run<R: Send + 'static>(
        &self,
        op: impl Fn(&mut SqliteStore, &str) -> Result<R, String> + Send + Sync + 'static,
    ) -> Result<R, String> {
        if let Ok(mut file) = self.file.try_lock() {
            if file.conn.busy_timeout(Duration::ZERO).is_ok() {
                let done = op(&mut file, &self.name);
                let _ = file.conn.busy_timeout(LOCK_WAIT);
                match done {
                    Err(e) if is_busy(&e) => {}
                    done => return done,
                }
            }
        }
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

    #[test]
    fn an_open_file_serves_many_uses_and_one_deleted_or_replaced_is_opened_anew() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.sqlite");
        let files = OpenFiles::with_capacity(4);
        for n in 0..5 {
            let file = files.get(&path).unwrap();
            file.lock().unwrap().set("default", "n", n.to_string().as_bytes()).unwrap();
        }
        assert_eq!(files.opened(), 1, "opened once for five uses");
        // The log stays while the file is open: no checkpoint, no unlink.
        assert!(dir.path().join("t.sqlite-wal").exists());

        // An operator removes the file (and its log) to start afresh.
        for side in ["t.sqlite", "t.sqlite-wal", "t.sqlite-shm"] {
            let _ = std::fs::remove_file(dir.path().join(side));
        }
        let file = files.get(&path).unwrap();
        assert_eq!(files.opened(), 2, "a deleted file is not written to");
        assert_eq!(file.lock().unwrap().get("default", "n").unwrap(), None, "a fresh file");
        file.lock().unwrap().set("default", "n", b"fresh").unwrap();
        drop(file);
        assert_eq!(SqliteStore::open(&path).unwrap().get("default", "n").unwrap(), Some(b"fresh".to_vec()));

        // Replaced by another file under the same name (a backup put back,
        // its side files with the old one removed, as SQLite needs): that
        // one is used.
        let other = dir.path().join("other.sqlite");
        SqliteStore::open(&other).unwrap().set("default", "n", b"other").unwrap();
        for side in ["t.sqlite-wal", "t.sqlite-shm"] {
            let _ = std::fs::remove_file(dir.path().join(side));
        }
        std::fs::rename(&other, &path).unwrap();
        assert_eq!(files.get(&path).unwrap().lock().unwrap().get("default", "n").unwrap(), Some(b"other".to_vec()));
        assert_eq!(files.opened(), 3);
    }

    #[test]
    fn past_its_capacity_the_least_recently_used_file_is_closed() {
        let dir = tempfile::tempdir().unwrap();
        let files = OpenFiles::with_capacity(2);
        let path = |n: u32| dir.path().join(format!("{n}.sqlite"));
        files.get(&path(1)).unwrap();
        files.get(&path(2)).unwrap();
        files.get(&path(1)).unwrap(); // 2 is now the least recently used
        files.get(&path(3)).unwrap();
        assert_eq!((files.len(), files.opened()), (2, 3));
        // Closed: its last connection checkpointed and removed the log.
        assert!(!dir.path().join("2.sqlite-wal").exists(), "2 was closed");
        files.get(&path(1)).unwrap();
        assert_eq!(files.opened(), 3, "1 stayed open");
        files.get(&path(2)).unwrap();
        assert_eq!(files.opened(), 4, "2 is opened again");
    }

    #[tokio::test]
    async fn a_call_that_meets_another_connections_lock_waits_for_it_off_the_worker_threads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.sqlite");
        let files = OpenFiles::default();
        let mut bucket = SqliteStore::shared_bucket(files.get(&path).unwrap(), "default");
        bucket.set("k", b"1").await.unwrap();
        // Another process holds the write lock for 300 ms.
        let (locked, release) = (std::sync::mpsc::channel(), std::sync::mpsc::channel::<()>());
        let other = path.clone();
        let holder = std::thread::spawn(move || {
            let mut conn = Connection::open(&other).unwrap();
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).unwrap();
            tx.execute("UPDATE spin_key_value SET value = x'32' WHERE key = 'k'", []).unwrap();
            locked.0.send(()).unwrap();
            release.1.recv().unwrap();
            std::thread::sleep(Duration::from_millis(300));
            tx.commit().unwrap();
        });
        locked.1.recv().unwrap();
        // What SQLite answers a call that may not wait: the error `run` knows.
        {
            let file = files.get(&path).unwrap();
            let file = file.lock().unwrap();
            file.conn.busy_timeout(Duration::ZERO).unwrap();
            let e = file.set("default", "k", b"x").unwrap_err();
            assert!(is_busy(&e), "{e}");
            file.conn.busy_timeout(LOCK_WAIT).unwrap();
        }
        release.0.send(()).unwrap();
        // Would fail at once inline (SQLITE_BUSY); waits on the pool instead.
        assert!(bucket.compare_and_swap("k", Some(b"2"), b"3").await.unwrap(), "saw the other's commit");
        holder.join().unwrap();
        assert_eq!(bucket.get("k").await.unwrap(), Some(b"3".to_vec()));
        // And a call without contention runs inline with SQLite's wait restored.
        let file = files.get(&path).unwrap();
        let wait: i64 = file.lock().unwrap().conn.query_row("PRAGMA busy_timeout", [], |r| r.get(0)).unwrap();
        assert_eq!(wait, LOCK_WAIT.as_millis() as i64);
    }

    #[test]
    fn ticks_opening_one_new_file_at_once_share_one_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.sqlite");
        let files = Arc::new(OpenFiles::default());
        let opened: Vec<_> = (0..8)
            .map(|_| {
                let (files, path) = (Arc::clone(&files), path.clone());
                std::thread::spawn(move || files.get(&path))
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|h| h.join().unwrap().expect("every open succeeds"))
            .collect();
        assert_eq!(files.opened(), 1, "one open for eight at once");
        assert!(opened.iter().all(|f| Arc::ptr_eq(f, &opened[0])));
        assert!(files.opening.lock().unwrap().is_empty(), "no open lock left behind");
    }
}
