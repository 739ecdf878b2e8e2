//! `wasi:keyvalue/store` and `wasi:keyvalue/atomics` for one instance: the
//! only bucket it may open is `default` (as `key_value_stores = ["default"]`
//! in Spin), and that bucket is its tenant's own store, opened on first use
//! through [`Stores`]. Every call is async: a slow store waits without
//! holding a worker thread. Compare-and-swap hands the guest a handle
//! holding the value it read; the swap writes only if the store still holds
//! that value (the backend checks atomically).
//!
//! Tests can make any operation fail or stop the instance ([`KvFaultHook`]),
//! which is how the fault matrix reaches the store without a broken disk.

use crate::bindings::wasi::keyvalue::atomics as wit_atomics;
use crate::bindings::wasi::keyvalue::store as wit_store;
use crate::kv::{KvBackend, KvLocation, Stores};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use wasmtime::component::{HasData, Linker, Resource, ResourceTable};
use wit_atomics::CasError;
use wit_store::Error;

/// The only bucket a component may open.
pub const BUCKET: &str = "default";

/// The key-value bucket resource handed to the guest.
pub struct Bucket;

/// A compare-and-swap in progress: the key and the value the guest saw.
pub struct CasHandle {
    key: String,
    seen: Option<Vec<u8>>,
}

/// Key-value operations a test can make fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KvOp {
    Open,
    Get,
    Set,
    CasRead,
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
/// opened, and the faults to inject.
pub struct KeyValueCtx {
    stores: Arc<Stores>,
    location: KvLocation,
    backend: Option<Box<dyn KvBackend>>,
    faults: Option<KvFaultHook>,
}

impl KeyValueCtx {
    pub fn new(stores: Arc<Stores>, location: KvLocation, faults: Option<KvFaultHook>) -> KeyValueCtx {
        KeyValueCtx { stores, location, backend: None, faults }
    }

    /// The tenant's store, opened (and created) on first use: a tick that
    /// never reaches the store never creates it.
    async fn backend(&mut self) -> Result<&mut dyn KvBackend, Error> {
        if self.backend.is_none() {
            self.backend = Some(self.stores.open(&self.location, BUCKET).await.map_err(Error::Other)?);
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
        self.run(|kv| kv.get(key)).await
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
    pub ctx: &'a mut KeyValueCtx,
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
        Ok(Ok(self.table.push(Bucket)?))
    }
}

impl wit_store::HostBucket for KeyValue<'_> {
    async fn get(&mut self, _: Resource<Bucket>, key: String) -> wasmtime::Result<Result<Option<Vec<u8>>, Error>> {
        if let Some(e) = self.ctx.fault(KvOp::Get, &key)? {
            return Ok(Err(e));
        }
        Ok(self.ctx.get(&key).await)
    }

    async fn set(&mut self, _: Resource<Bucket>, key: String, value: Vec<u8>) -> wasmtime::Result<Result<(), Error>> {
        if let Some(e) = self.ctx.fault(KvOp::Set, &key)? {
            return Ok(Err(e));
        }
        Ok(self.ctx.run(|kv| kv.set(&key, &value)).await)
    }

    async fn delete(&mut self, _: Resource<Bucket>, key: String) -> wasmtime::Result<Result<(), Error>> {
        Ok(self.ctx.run(|kv| kv.delete(&key)).await)
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
        Ok(())
    }
}

impl wit_atomics::HostCas for KeyValue<'_> {
    async fn new(&mut self, _: Resource<Bucket>, key: String) -> wasmtime::Result<Result<Resource<CasHandle>, Error>> {
        if let Some(e) = self.ctx.fault(KvOp::CasRead, &key)? {
            return Ok(Err(e));
        }
        match self.ctx.get(&key).await {
            Ok(seen) => Ok(Ok(self.table.push(CasHandle { key, seen })?)),
            Err(e) => Ok(Err(e)),
        }
    }

    async fn current(&mut self, cas: Resource<CasHandle>) -> wasmtime::Result<Result<Option<Vec<u8>>, Error>> {
        Ok(Ok(self.table.get(&cas)?.seen.clone()))
    }

    async fn drop(&mut self, cas: Resource<CasHandle>) -> wasmtime::Result<()> {
        self.table.delete(cas)?;
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
        Ok(self.ctx.run(|kv| kv.increment(&key, delta)).await)
    }

    async fn swap(&mut self, cas: Resource<CasHandle>, value: Vec<u8>) -> wasmtime::Result<Result<(), CasError>> {
        let CasHandle { key, seen } = self.table.delete(cas)?;
        if let Some(e) = self.ctx.fault(KvOp::Swap, &key)? {
            return Ok(Err(CasError::StoreError(e)));
        }
        let lies = self.ctx.injected(KvOp::Swap, &key) == Some(KvFault::SwapReportsOk);
        match self.ctx.run(|kv| kv.compare_and_swap(&key, seen.as_deref(), &value)).await {
            Err(e) => Ok(Err(CasError::StoreError(e))),
            Ok(true) => Ok(Ok(())),
            Ok(false) if lies => Ok(Ok(())),
            // Hand back a fresh handle on the current value, as the interface asks.
            Ok(false) => match self.ctx.get(&key).await {
                Ok(seen) => Ok(Err(CasError::CasFailed(self.table.push(CasHandle { key, seen })?))),
                Err(e) => Ok(Err(CasError::StoreError(e))),
            },
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
        let mut ctx = KeyValueCtx::new(Arc::default(), KvLocation::Sqlite(mine.clone()), None);
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
}
