//! `wasi:keyvalue/store` and `wasi:keyvalue/atomics` for one instance: the
//! only bucket it may open is `default` (as `key_value_stores = ["default"]`
//! in Spin), and that bucket is its tenant's own store, opened on first use
//! through [`Stores`]. Every call is async: a slow store waits without
//! holding a worker thread. Compare-and-swap hands the guest a handle
//! holding the value it read; the swap writes only if the store still holds
//! that value (the backend checks atomically).
//!
//! What a tenant may store is bounded ([`StateLimits`], the config's
//! `[host]` `state_value_bytes` and `state_keys`): a larger value, a longer
//! key or a key beyond the store's limit is refused with a store error that
//! names the limit, and nothing is written. So are the handles an instance
//! may hold open at once (buckets, swaps: [`MAX_OPEN_HANDLES`] of each), and
//! the bytes the host holds for them and for the values calls carry:
//! [`StateLimits::instance_bytes`] for the whole instance (`state_host_bytes`),
//! whatever the number of handles; a handle's bytes are given back when it
//! is dropped or swapped.
//!
//! Tests can make any operation fail or stop the instance ([`KvFaultHook`]),
//! which is how the fault matrix reaches the store without a broken disk.

use crate::bindings::wasi::keyvalue::atomics as wit_atomics;
use crate::bindings::wasi::keyvalue::store as wit_store;
use crate::kv::{KvBackend, KvBackendFactory, KvLocation, Stores};
use crate::limits::StateLimits;
use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use wasmtime::component::{HasData, Linker, Resource, ResourceTable};
use wit_atomics::CasError;
use wit_store::Error;

/// The only bucket a component may open.
pub const BUCKET: &str = "default";

/// Buckets, and separately swap handles, one instance may hold open at once.
pub const MAX_OPEN_HANDLES: usize = 64;

/// The longest key a tenant may write, in bytes (the collector's are a few
/// dozen).
pub const MAX_KEY_BYTES: usize = 1024;

/// The key-value bucket resource handed to the guest.
pub struct Bucket;

/// A compare-and-swap in progress: the key and the value the guest saw.
pub struct CasHandle {
    key: String,
    seen: Option<Vec<u8>>,
}

impl CasHandle {
    /// What it holds in the host, as counted against
    /// [`StateLimits::instance_bytes`].
    fn bytes(&self) -> usize {
        self.key.len() + self.seen.as_ref().map_or(0, Vec::len)
    }
}

/// Key-value operations a test can make fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KvOp {
    /// `store.open` of the bucket (its key: the bucket's name).
    Open,
    /// `bucket.get`.
    Get,
    /// `bucket.set`, and `atomics.increment`, which writes too.
    Set,
    /// `cas.new`: the read a compare-and-swap starts with.
    CasRead,
    /// `atomics.swap`: the write a compare-and-swap ends with.
    Swap,
}

/// What an injected key-value fault does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KvFault {
    /// The operation returns this store error to the guest.
    Error(String),
    /// The host stops the instance here (as a crash or a kill would).
    Stop,
    /// For `Swap` only: the swap is carried out but always reported as
    /// written, even when the value had changed and nothing was written —
    /// what Spin 3.x's Redis store answers after a lost race.
    SwapReportsOk,
}

/// Decides, per operation and key, whether to inject a fault (tests only).
pub type KvFaultHook = Arc<dyn Fn(KvOp, &str) -> Option<KvFault> + Send + Sync>;

/// One instance's key-value state: where its store is, the store once
/// opened, what it may hold, and the faults to inject.
pub struct KeyValueCtx {
    stores: Arc<Stores>,
    location: KvLocation,
    /// Opens the store instead of `location` (tests: [`KvBackendFactory`]).
    opener: Option<KvBackendFactory>,
    backend: Option<Box<dyn KvBackend>>,
    faults: Option<KvFaultHook>,
    limits: StateLimits,
    /// Keys this instance has seen in the store (read or written).
    present: HashSet<String>,
    /// Every key of the store, listed at the first write of a key not known
    /// to be there (at most once per instance, so once per tick), then kept
    /// up to date by this instance's writes and deletes.
    listed: Option<HashSet<String>>,
    open_buckets: usize,
    open_swaps: usize,
    /// Bytes the open compare-and-swap handles hold (their [`CasHandle::bytes`]).
    held_bytes: usize,
}

impl KeyValueCtx {
    /// An instance's state for the tenant store at `location`, opened
    /// through `stores` on first use; nothing is opened yet.
    pub fn new(
        stores: Arc<Stores>,
        location: KvLocation,
        limits: StateLimits,
        faults: Option<KvFaultHook>,
    ) -> KeyValueCtx {
        KeyValueCtx {
            stores,
            location,
            opener: None,
            backend: None,
            faults,
            limits,
            present: HashSet::new(),
            listed: None,
            open_buckets: 0,
            open_swaps: 0,
            held_bytes: 0,
        }
    }

    /// Whether the host may hold `bytes` more for this instance (a value a
    /// call carries, or a new handle) beside what its handles already hold:
    /// the store error naming [`StateLimits::instance_bytes`] if not.
    fn fits(&self, bytes: usize, what: &str) -> Result<(), Error> {
        let limit = self.limits.instance_bytes;
        if self.held_bytes.saturating_add(bytes) <= limit {
            return Ok(());
        }
        Err(Error::Other(format!(
            "{what} of {bytes} bytes refused: the instance's compare-and-swap handles already hold {} bytes in the \
             host, which holds at most {limit} bytes per instance (raise `[host] state_host_bytes`, or drop a handle \
             first)",
            self.held_bytes
        )))
    }

    /// A new compare-and-swap handle, its bytes counted; refused past
    /// [`StateLimits::instance_bytes`].
    fn hold(
        &mut self,
        table: &mut ResourceTable,
        cas: CasHandle,
    ) -> wasmtime::Result<Result<Resource<CasHandle>, Error>> {
        let bytes = cas.bytes();
        if let Err(e) = self.fits(bytes, "compare-and-swap handle") {
            return Ok(Err(e));
        }
        let handle = table.push(cas)?;
        self.held_bytes += bytes;
        self.open_swaps += 1;
        Ok(Ok(handle))
    }

    /// A compare-and-swap handle taken out of the table (dropped or
    /// swapped): its bytes are free again.
    fn release(&mut self, table: &mut ResourceTable, cas: Resource<CasHandle>) -> wasmtime::Result<CasHandle> {
        let cas = table.delete(cas)?;
        self.held_bytes = self.held_bytes.saturating_sub(cas.bytes());
        self.open_swaps = self.open_swaps.saturating_sub(1);
        Ok(cas)
    }

    /// Opens the store with `opener` instead of the tenant's location (a
    /// test's own backend); `None` keeps the location.
    pub fn with_backend(mut self, opener: Option<KvBackendFactory>) -> KeyValueCtx {
        self.opener = opener;
        self
    }

    /// The tenant's store, opened (and created) on first use: a tick that
    /// never reaches the store never creates it.
    async fn backend(&mut self) -> Result<&mut dyn KvBackend, Error> {
        if self.backend.is_none() {
            let opened = match &self.opener {
                Some(open) => open().await,
                None => self.stores.open(&self.location, BUCKET).await,
            };
            self.backend = Some(opened.map_err(Error::Other)?);
        }
        Ok(self.backend.as_deref_mut().expect("just opened"))
    }

    /// Runs `op` on the store, the backend's error text becoming a store error.
    async fn run<'s, R>(
        &'s mut self,
        op: impl FnOnce(&'s mut dyn KvBackend) -> BoxFuture<'s, Result<R, String>>,
    ) -> Result<R, Error> {
        op(self.backend().await?).await.map_err(Error::Other)
    }

    async fn get(&mut self, key: &str) -> Result<Option<Vec<u8>>, Error> {
        let value = self.run(|kv| kv.get(key)).await?;
        if value.is_some() {
            self.present.insert(key.to_string());
        }
        Ok(value)
    }

    /// A compare-and-swap handle's read ([`KvBackend::watch`]).
    async fn watch(&mut self, key: &str) -> Result<Option<Vec<u8>>, Error> {
        let value = self.run(|kv| kv.watch(key)).await?;
        if value.is_some() {
            self.present.insert(key.to_string());
        }
        Ok(value)
    }

    /// [`get`](Self::get) for the guest: the value read must fit beside what
    /// the instance's handles hold.
    async fn get_out(&mut self, key: &str) -> Result<Option<Vec<u8>>, Error> {
        let value = self.get(key).await?;
        self.fits(value.as_ref().map_or(0, Vec::len), "value read")?;
        Ok(value)
    }

    /// Whether writing `value_bytes` to `key` stays within the tenant's
    /// [`StateLimits`]: the value's size, the key's length and, for a key
    /// not in the store yet, the number of keys.
    async fn admit(&mut self, key: &str, value_bytes: usize) -> Result<(), Error> {
        let limits = self.limits;
        if value_bytes > limits.value_bytes {
            return Err(Error::Other(format!(
                "value of {value_bytes} bytes refused: the host allows at most {} bytes per value (state_value_bytes)",
                limits.value_bytes
            )));
        }
        if key.len() > MAX_KEY_BYTES {
            return Err(Error::Other(format!(
                "key of {} bytes refused: the host allows keys of at most {MAX_KEY_BYTES} bytes",
                key.len()
            )));
        }
        if self.present.contains(key) {
            return Ok(());
        }
        if self.listed.is_none() {
            let keys = self.run(|kv| kv.keys()).await?;
            self.listed = Some(keys.into_iter().collect());
        }
        let listed = self.listed.as_ref().expect("just listed");
        if listed.contains(key) || listed.len() < limits.keys {
            return Ok(());
        }
        Err(Error::Other(format!(
            "new key refused: the store already holds {} keys, the most the host allows (state_keys)",
            listed.len()
        )))
    }

    /// `key` is in the store now.
    fn written(&mut self, key: &str) {
        if let Some(listed) = &mut self.listed {
            listed.insert(key.to_string());
        }
        self.present.insert(key.to_string());
    }

    /// `key` is no longer in the store.
    fn deleted(&mut self, key: &str) {
        if let Some(listed) = &mut self.listed {
            listed.remove(key);
        }
        self.present.remove(key);
    }

    /// What the fault hook says of this operation, if anything.
    fn injected(&self, op: KvOp, key: &str) -> Option<KvFault> {
        self.faults.as_ref().and_then(|hook| hook(op, key))
    }

    /// An injected fault for this operation: `Err` stops the instance.
    fn fault(&self, op: KvOp, key: &str) -> wasmtime::Result<Option<Error>> {
        match self.injected(op, key) {
            None | Some(KvFault::SwapReportsOk) => Ok(None),
            Some(KvFault::Error(message)) => Ok(Some(Error::Other(message))),
            Some(KvFault::Stop) => Err(wasmtime::format_err!("instance stopped by an injected fault at {op:?} {key}")),
        }
    }
}

/// What a [`KvBackend`]'s async methods return.
type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The view the generated host traits are implemented on: the context and
/// the resource table the bucket and swap handles live in.
pub struct KeyValue<'a> {
    /// The instance's key-value state.
    pub ctx: &'a mut KeyValueCtx,
    /// The instance's resource table.
    pub table: &'a mut ResourceTable,
}

struct HasKeyValue;

impl HasData for HasKeyValue {
    type Data<'a> = KeyValue<'a>;
}

/// Links both interfaces; `get` picks the view out of the store's data.
pub fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    get: fn(&mut T) -> KeyValue<'_>,
) -> wasmtime::Result<()> {
    wit_store::add_to_linker::<T, HasKeyValue>(linker, get)?;
    wit_atomics::add_to_linker::<T, HasKeyValue>(linker, get)
}

impl wit_store::Host for KeyValue<'_> {
    async fn open(&mut self, identifier: String) -> wasmtime::Result<Result<Resource<Bucket>, wit_store::Error>> {
        if identifier != BUCKET {
            return Ok(Err(wit_store::Error::NoSuchStore));
        }
        if let Some(e) = self.ctx.fault(KvOp::Open, &identifier)? {
            return Ok(Err(e));
        }
        if let Err(e) = self.ctx.backend().await {
            return Ok(Err(e));
        }
        if self.ctx.open_buckets >= MAX_OPEN_HANDLES {
            return Ok(Err(Error::Other(format!(
                "too many open buckets: the host allows {MAX_OPEN_HANDLES} at once; drop one first"
            ))));
        }
        let bucket = self.table.push(Bucket)?;
        self.ctx.open_buckets += 1;
        Ok(Ok(bucket))
    }
}

impl wit_store::HostBucket for KeyValue<'_> {
    async fn get(&mut self, _: Resource<Bucket>, key: String) -> wasmtime::Result<Result<Option<Vec<u8>>, Error>> {
        if let Some(e) = self.ctx.fault(KvOp::Get, &key)? {
            return Ok(Err(e));
        }
        Ok(self.ctx.get_out(&key).await)
    }

    async fn set(&mut self, _: Resource<Bucket>, key: String, value: Vec<u8>) -> wasmtime::Result<Result<(), Error>> {
        if let Some(e) = self.ctx.fault(KvOp::Set, &key)? {
            return Ok(Err(e));
        }
        if let Err(e) = self.ctx.admit(&key, value.len()).await {
            return Ok(Err(e));
        }
        if let Err(e) = self.ctx.fits(value.len(), "value") {
            return Ok(Err(e));
        }
        let result = self.ctx.run(|kv| kv.set(&key, &value)).await;
        if result.is_ok() {
            self.ctx.written(&key);
        }
        Ok(result)
    }

    async fn delete(&mut self, _: Resource<Bucket>, key: String) -> wasmtime::Result<Result<(), Error>> {
        let result = self.ctx.run(|kv| kv.delete(&key)).await;
        if result.is_ok() {
            self.ctx.deleted(&key);
        }
        Ok(result)
    }

    async fn exists(&mut self, _: Resource<Bucket>, key: String) -> wasmtime::Result<Result<bool, Error>> {
        Ok(self.ctx.get(&key).await.map(|v| v.is_some()))
    }

    async fn list_keys(
        &mut self,
        _: Resource<Bucket>,
        _cursor: Option<String>,
    ) -> wasmtime::Result<Result<wit_store::KeyResponse, Error>> {
        // One page holds every key: a tenant's store has a handful.
        let keys = self.ctx.run(|kv| kv.keys()).await;
        Ok(keys.map(|keys| wit_store::KeyResponse { keys, cursor: None }))
    }

    async fn drop(&mut self, bucket: Resource<Bucket>) -> wasmtime::Result<()> {
        self.table.delete(bucket)?;
        self.ctx.open_buckets = self.ctx.open_buckets.saturating_sub(1);
        Ok(())
    }
}

impl wit_atomics::HostCas for KeyValue<'_> {
    async fn new(&mut self, _: Resource<Bucket>, key: String) -> wasmtime::Result<Result<Resource<CasHandle>, Error>> {
        if let Some(e) = self.ctx.fault(KvOp::CasRead, &key)? {
            return Ok(Err(e));
        }
        if self.ctx.open_swaps >= MAX_OPEN_HANDLES {
            return Ok(Err(Error::Other(format!(
                "too many compare-and-swap handles open: the host allows {MAX_OPEN_HANDLES} at once; drop one first"
            ))));
        }
        match self.ctx.watch(&key).await {
            Ok(seen) => self.ctx.hold(self.table, CasHandle { key, seen }),
            Err(e) => Ok(Err(e)),
        }
    }

    async fn current(&mut self, cas: Resource<CasHandle>) -> wasmtime::Result<Result<Option<Vec<u8>>, Error>> {
        let seen = &self.table.get(&cas)?.seen;
        // The copy handed out is held too, while it is.
        if let Err(e) = self.ctx.fits(seen.as_ref().map_or(0, Vec::len), "copy of the value seen") {
            return Ok(Err(e));
        }
        Ok(Ok(seen.clone()))
    }

    async fn drop(&mut self, cas: Resource<CasHandle>) -> wasmtime::Result<()> {
        self.ctx.release(self.table, cas)?;
        Ok(())
    }
}

impl wit_atomics::Host for KeyValue<'_> {
    async fn increment(
        &mut self,
        _: Resource<Bucket>,
        key: String,
        delta: i64,
    ) -> wasmtime::Result<Result<i64, Error>> {
        if let Some(e) = self.ctx.fault(KvOp::Set, &key)? {
            return Ok(Err(e));
        }
        // The counter's text is at most 20 bytes: only the key counts.
        if let Err(e) = self.ctx.admit(&key, 0).await {
            return Ok(Err(e));
        }
        let result = self.ctx.run(|kv| kv.increment(&key, delta)).await;
        if result.is_ok() {
            self.ctx.written(&key);
        }
        Ok(result)
    }

    async fn swap(&mut self, cas: Resource<CasHandle>, value: Vec<u8>) -> wasmtime::Result<Result<(), CasError>> {
        let CasHandle { key, seen } = self.ctx.release(self.table, cas)?;
        if let Some(e) = self.ctx.fault(KvOp::Swap, &key)? {
            return Ok(Err(CasError::StoreError(e)));
        }
        if let Err(e) = self.ctx.admit(&key, value.len()).await {
            return Ok(Err(CasError::StoreError(e)));
        }
        // The value written, beside the value seen (no longer a handle's).
        let carried = value.len() + seen.as_ref().map_or(0, Vec::len);
        if let Err(e) = self.ctx.fits(carried, "swap") {
            return Ok(Err(CasError::StoreError(e)));
        }
        let lies = self.ctx.injected(KvOp::Swap, &key) == Some(KvFault::SwapReportsOk);
        match self.ctx.run(|kv| kv.compare_and_swap(&key, seen.as_deref(), &value)).await {
            Err(e) => Ok(Err(CasError::StoreError(e))),
            Ok(true) => {
                self.ctx.written(&key);
                Ok(Ok(()))
            }
            Ok(false) if lies => Ok(Ok(())),
            // Hand back a fresh handle on the current value, as the interface asks.
            Ok(false) => {
                drop(value);
                match self.ctx.watch(&key).await {
                    Ok(seen) => match self.ctx.hold(self.table, CasHandle { key, seen })? {
                        Ok(cas) => Ok(Err(CasError::CasFailed(cas))),
                        Err(e) => Ok(Err(CasError::StoreError(e))),
                    },
                    Err(e) => Ok(Err(CasError::StoreError(e))),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::SqliteStore;
    use wit_store::{Host as _, HostBucket as _};

    #[tokio::test]
    async fn only_the_default_bucket_opens_and_only_on_the_tenants_own_file() {
        let dir = tempfile::tempdir().unwrap();
        let mine = dir.path().join("mine.sqlite");
        let other = dir.path().join("other.sqlite");
        SqliteStore::open(&other).unwrap().set(BUCKET, "service/audit", b"theirs").unwrap();
        let mut ctx = KeyValueCtx::new(Arc::default(), KvLocation::Sqlite(mine.clone()), StateLimits::default(), None);
        let mut table = ResourceTable::new();
        let mut s = KeyValue { ctx: &mut ctx, table: &mut table };
        for name in ["other", "other.sqlite", other.to_str().unwrap(), "../other", "", "Default"] {
            let opened = s.open(name.into()).await.unwrap();
            assert!(matches!(opened, Err(wit_store::Error::NoSuchStore)), "{name:?} opened");
        }
        assert!(!mine.exists(), "nothing opened yet");
        let bucket = s.open(BUCKET.into()).await.unwrap().unwrap();
        let got = s.get(Resource::new_borrow(bucket.rep()), "service/audit".into()).await;
        assert_eq!(got.unwrap().unwrap(), None, "another tenant's value is not visible");
        assert!(mine.exists());
        assert_eq!(SqliteStore::open(&other).unwrap().get(BUCKET, "service/audit").unwrap(), Some(b"theirs".to_vec()));
    }

    /// A view on a fresh store file in `dir` under `limits`.
    fn ctx_in(dir: &std::path::Path, limits: StateLimits) -> KeyValueCtx {
        KeyValueCtx::new(Arc::default(), KvLocation::Sqlite(dir.join("t.sqlite")), limits, None)
    }

    fn borrow(bucket: &Resource<Bucket>) -> Resource<Bucket> {
        Resource::new_borrow(bucket.rep())
    }

    #[tokio::test]
    async fn values_over_the_hosts_limit_are_refused_and_not_written() {
        let dir = tempfile::tempdir().unwrap();
        let mut ctx = ctx_in(dir.path(), StateLimits { value_bytes: 100, keys: 10, ..StateLimits::default() });
        let mut table = ResourceTable::new();
        let mut s = KeyValue { ctx: &mut ctx, table: &mut table };
        let bucket = s.open(BUCKET.into()).await.unwrap().unwrap();
        s.set(borrow(&bucket), "k".into(), vec![1; 100]).await.unwrap().unwrap();
        let e = s.set(borrow(&bucket), "k".into(), vec![2; 101]).await.unwrap().unwrap_err();
        assert!(matches!(&e, Error::Other(m) if m.contains("state_value_bytes") && m.contains("100 bytes")), "{e:?}");
        assert_eq!(s.get(borrow(&bucket), "k".into()).await.unwrap().unwrap(), Some(vec![1; 100]));
        // a compare-and-swap is held to the same limit
        let cas = wit_atomics::HostCas::new(&mut s, borrow(&bucket), "k".into()).await.unwrap().unwrap();
        match wit_atomics::Host::swap(&mut s, cas, vec![3; 101]).await.unwrap() {
            Err(CasError::StoreError(Error::Other(m))) => assert!(m.contains("state_value_bytes"), "{m}"),
            other => panic!("swap of 101 bytes: {:?}", other.map_err(|_| "not a store error")),
        }
        assert_eq!(s.get(borrow(&bucket), "k".into()).await.unwrap().unwrap(), Some(vec![1; 100]));
        let e = s.set(borrow(&bucket), "x".repeat(MAX_KEY_BYTES + 1), vec![1]).await.unwrap().unwrap_err();
        assert!(matches!(&e, Error::Other(m) if m.contains("key of")), "{e:?}");
    }

    #[tokio::test]
    async fn keys_beyond_the_hosts_limit_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        // two keys already in the store, written before this tick
        SqliteStore::open(&dir.path().join("t.sqlite")).unwrap().set(BUCKET, "old/1", b"v").unwrap();
        SqliteStore::open(&dir.path().join("t.sqlite")).unwrap().set(BUCKET, "old/2", b"v").unwrap();
        let mut ctx = ctx_in(dir.path(), StateLimits { value_bytes: 100, keys: 3, ..StateLimits::default() });
        let mut table = ResourceTable::new();
        let mut s = KeyValue { ctx: &mut ctx, table: &mut table };
        let bucket = s.open(BUCKET.into()).await.unwrap().unwrap();
        s.set(borrow(&bucket), "new/1".into(), b"v".to_vec()).await.unwrap().unwrap();
        let e = s.set(borrow(&bucket), "new/2".into(), b"v".to_vec()).await.unwrap().unwrap_err();
        assert!(matches!(&e, Error::Other(m) if m.contains("state_keys") && m.contains("3 keys")), "{e:?}");
        let e = wit_atomics::Host::increment(&mut s, borrow(&bucket), "new/3".into(), 1).await.unwrap().unwrap_err();
        assert!(matches!(&e, Error::Other(m) if m.contains("state_keys")), "{e:?}");
        let cas = wit_atomics::HostCas::new(&mut s, borrow(&bucket), "new/4".into()).await.unwrap().unwrap();
        assert!(matches!(
            wit_atomics::Host::swap(&mut s, cas, b"v".to_vec()).await.unwrap(),
            Err(CasError::StoreError(_))
        ));
        // keys already there may still be written, and a delete makes room
        s.set(borrow(&bucket), "old/1".into(), b"w".to_vec()).await.unwrap().unwrap();
        s.delete(borrow(&bucket), "old/2".into()).await.unwrap().unwrap();
        s.set(borrow(&bucket), "new/2".into(), b"v".to_vec()).await.unwrap().unwrap();
        let keys = SqliteStore::open(&dir.path().join("t.sqlite")).unwrap().keys(BUCKET).unwrap();
        assert_eq!(keys, ["new/1", "new/2", "old/1"]);
    }

    #[tokio::test]
    async fn an_instance_holds_a_bounded_number_of_buckets_and_swaps() {
        let dir = tempfile::tempdir().unwrap();
        let mut ctx = ctx_in(dir.path(), StateLimits::default());
        let mut table = ResourceTable::new();
        let mut s = KeyValue { ctx: &mut ctx, table: &mut table };
        let mut buckets = Vec::new();
        for _ in 0..MAX_OPEN_HANDLES {
            buckets.push(s.open(BUCKET.into()).await.unwrap().unwrap());
        }
        let e = s.open(BUCKET.into()).await.unwrap().unwrap_err();
        assert!(matches!(&e, Error::Other(m) if m.contains("too many open buckets")), "{e:?}");
        wit_store::HostBucket::drop(&mut s, buckets.pop().unwrap()).await.unwrap();
        let bucket = s.open(BUCKET.into()).await.unwrap().unwrap();

        let mut swaps = Vec::new();
        for i in 0..MAX_OPEN_HANDLES {
            swaps.push(wit_atomics::HostCas::new(&mut s, borrow(&bucket), format!("k{i}")).await.unwrap().unwrap());
        }
        let e = wit_atomics::HostCas::new(&mut s, borrow(&bucket), "k".into()).await.unwrap().unwrap_err();
        assert!(matches!(&e, Error::Other(m) if m.contains("compare-and-swap handles")), "{e:?}");
        // a swap gives its handle back, as does a drop
        wit_atomics::Host::swap(&mut s, swaps.pop().unwrap(), b"v".to_vec()).await.unwrap().unwrap();
        let again = wit_atomics::HostCas::new(&mut s, borrow(&bucket), "k".into()).await.unwrap().unwrap();
        wit_atomics::HostCas::drop(&mut s, again).await.unwrap();
        wit_atomics::HostCas::new(&mut s, borrow(&bucket), "k".into()).await.unwrap().unwrap();
    }

    async fn new_cas(s: &mut KeyValue<'_>, bucket: &Resource<Bucket>, key: &str) -> Result<Resource<CasHandle>, Error> {
        wit_atomics::HostCas::new(s, borrow(bucket), key.into()).await.unwrap()
    }

    fn limit_error(e: &Error) -> bool {
        matches!(e, Error::Other(m) if m.contains("`[host] state_host_bytes`"))
    }

    #[tokio::test]
    async fn many_handles_on_big_values_hit_the_instances_ceiling_and_drops_free_it() {
        let dir = tempfile::tempdir().unwrap();
        // the attack: as many handles as allowed, each on a value of the
        // largest size, under the default limits
        let limits = StateLimits::default();
        let mut ctx = ctx_in(dir.path(), limits);
        let mut table = ResourceTable::new();
        let mut s = KeyValue { ctx: &mut ctx, table: &mut table };
        let bucket = s.open(BUCKET.into()).await.unwrap().unwrap();
        s.set(borrow(&bucket), "big".into(), vec![7; limits.value_bytes]).await.unwrap().unwrap();
        let mut handles = Vec::new();
        let refused = loop {
            match wit_atomics::HostCas::new(&mut s, borrow(&bucket), "big".into()).await.unwrap() {
                Ok(cas) => handles.push(cas),
                Err(e) => break e,
            }
            assert!(handles.len() <= MAX_OPEN_HANDLES, "no ceiling");
        };
        assert!(limit_error(&refused), "{refused:?}");
        let Error::Other(message) = &refused else { unreachable!() };
        assert!(message.contains(&format!("at most {} bytes per instance", limits.instance_bytes)), "{message}");
        let held = handles.len() * (3 + limits.value_bytes);
        assert_eq!(handles.len(), limits.instance_bytes / (3 + limits.value_bytes), "{held} bytes held");
        assert!(held <= limits.instance_bytes && handles.len() < MAX_OPEN_HANDLES);
        assert_eq!(s.ctx.held_bytes, held);
        // nothing else that carries a big value fits beside them
        let e = s.get(borrow(&bucket), "big".into()).await.unwrap().unwrap_err();
        assert!(limit_error(&e), "{e:?}");
        let e = s.set(borrow(&bucket), "other".into(), vec![1; limits.value_bytes]).await.unwrap().unwrap_err();
        assert!(limit_error(&e), "{e:?}");
        // small values still do
        s.set(borrow(&bucket), "small".into(), b"v".to_vec()).await.unwrap().unwrap();

        // dropping the handles gives their bytes back, all of them
        for cas in handles.drain(..) {
            wit_atomics::HostCas::drop(&mut s, cas).await.unwrap();
        }
        assert_eq!(s.ctx.held_bytes, 0);
        let again = s.get(borrow(&bucket), "big".into()).await.unwrap().unwrap();
        assert_eq!(again.map(|v| v.len()), Some(limits.value_bytes));
        let mut count = 0;
        while wit_atomics::HostCas::new(&mut s, borrow(&bucket), "big".into()).await.unwrap().is_ok() {
            count += 1;
        }
        assert_eq!(count, limits.instance_bytes / (3 + limits.value_bytes), "the whole budget is free again");
    }

    #[tokio::test]
    async fn every_call_carrying_a_value_counts_beside_the_handles_and_a_swap_frees_its_handle() {
        let dir = tempfile::tempdir().unwrap();
        let limits = StateLimits { value_bytes: 1000, keys: 100, instance_bytes: 4096 };
        let mut ctx = ctx_in(dir.path(), limits);
        let mut table = ResourceTable::new();
        let mut s = KeyValue { ctx: &mut ctx, table: &mut table };
        let bucket = s.open(BUCKET.into()).await.unwrap().unwrap();
        for i in 0..5 {
            s.set(borrow(&bucket), format!("k{i}"), vec![i; 1000]).await.unwrap().unwrap();
        }
        // two handles: 2 × 1002 bytes; a copy of a value seen and a value
        // written still fit (2004 + 1000 + 1000)
        let a = new_cas(&mut s, &bucket, "k0").await.unwrap();
        let b = new_cas(&mut s, &bucket, "k1").await.unwrap();
        assert_eq!(s.ctx.held_bytes, 2004);
        let seen = wit_atomics::HostCas::current(&mut s, Resource::new_borrow(a.rep())).await.unwrap().unwrap();
        assert_eq!(seen, Some(vec![0; 1000]));
        s.set(borrow(&bucket), "k2".into(), vec![2; 1000]).await.unwrap().unwrap();
        // four handles (4008 bytes): no value of 1000 bytes fits beside them
        let c = new_cas(&mut s, &bucket, "k2").await.unwrap();
        let d = new_cas(&mut s, &bucket, "k3").await.unwrap();
        assert_eq!(s.ctx.held_bytes, 4008);
        assert!(limit_error(&new_cas(&mut s, &bucket, "k4").await.unwrap_err()));
        let e = wit_atomics::HostCas::current(&mut s, Resource::new_borrow(a.rep())).await.unwrap().unwrap_err();
        assert!(limit_error(&e), "{e:?}");
        assert!(limit_error(&s.set(borrow(&bucket), "k4".into(), vec![9; 1000]).await.unwrap().unwrap_err()));
        assert!(limit_error(&s.get(borrow(&bucket), "k4".into()).await.unwrap().unwrap_err()));
        assert_eq!(s.get(borrow(&bucket), "absent".into()).await.unwrap().unwrap(), None, "nothing to carry");
        // a swap gives its handle's bytes back and carries its own value
        wit_atomics::Host::swap(&mut s, d, vec![3; 10]).await.unwrap().unwrap();
        assert_eq!(s.ctx.held_bytes, 3006);
        assert_eq!(s.get(borrow(&bucket), "k3".into()).await.unwrap().unwrap(), Some(vec![3; 10]));
        // a failed swap hands back a handle on the current value, counted
        s.set(borrow(&bucket), "k2".into(), vec![4; 20]).await.unwrap().unwrap();
        match wit_atomics::Host::swap(&mut s, c, vec![5; 30]).await.unwrap() {
            Err(CasError::CasFailed(fresh)) => {
                assert_eq!(s.ctx.held_bytes, 2004 + 22);
                wit_atomics::HostCas::drop(&mut s, fresh).await.unwrap();
            }
            other => panic!("the swap did not fail: {:?}", other.map_err(|_| "not CasFailed")),
        }
        wit_atomics::HostCas::drop(&mut s, a).await.unwrap();
        wit_atomics::HostCas::drop(&mut s, b).await.unwrap();
        assert_eq!(s.ctx.held_bytes, 0);
        s.set(borrow(&bucket), "k4".into(), vec![9; 1000]).await.unwrap().unwrap();
    }
}
