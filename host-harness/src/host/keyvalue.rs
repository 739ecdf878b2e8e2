//! `wasi:keyvalue/store` and `wasi:keyvalue/atomics` for one instance: the
//! only bucket it may open is `default` (as `key_value_stores = ["default"]`
//! in Spin), and that bucket is its tenant's own store, opened on first use
//! through [`crate::kv::open`]. Compare-and-swap hands the guest a handle
//! holding the value it read; the swap writes only if the store still holds
//! that value (the backend checks atomically).
//!
//! Tests can make any operation fail or stop the instance ([`KvFaultHook`]),
//! which is how the fault matrix reaches the store without a broken disk.

use crate::bindings::wasi::keyvalue::atomics as wit_atomics;
use crate::bindings::wasi::keyvalue::store as wit_store;
use crate::kv::{self, KvBackend};
use std::path::PathBuf;
use std::sync::Arc;
use wasmtime::component::{HasData, Linker, Resource, ResourceTable};

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
}

/// Decides, per operation and key, whether to inject a fault (tests only).
pub type KvFaultHook = Arc<dyn Fn(KvOp, &str) -> Option<KvFault> + Send + Sync>;

/// One instance's key-value state: where its store is, the store once
/// opened, and the faults to inject.
pub struct KeyValueCtx {
    location: PathBuf,
    backend: Option<Box<dyn KvBackend>>,
    faults: Option<KvFaultHook>,
}

impl KeyValueCtx {
    pub fn new(location: PathBuf, faults: Option<KvFaultHook>) -> KeyValueCtx {
        KeyValueCtx { location, backend: None, faults }
    }

    /// The tenant's store, opened (and created) on first use: a tick that
    /// never reaches the store never creates it.
    fn backend(&mut self) -> Result<&mut dyn KvBackend, wit_store::Error> {
        if self.backend.is_none() {
            self.backend = Some(kv::open(&self.location, BUCKET).map_err(wit_store::Error::Other)?);
        }
        Ok(self.backend.as_deref_mut().expect("just opened"))
    }

    /// Runs `op` on the store, the backend's error text becoming a store error.
    fn with<R>(&mut self, op: impl FnOnce(&mut dyn KvBackend) -> Result<R, String>) -> Result<R, wit_store::Error> {
        self.backend().and_then(|kv| op(kv).map_err(wit_store::Error::Other))
    }

    /// An injected fault for this operation: `Err` stops the instance.
    fn fault(&self, op: KvOp, key: &str) -> wasmtime::Result<Option<wit_store::Error>> {
        match self.faults.as_ref().and_then(|hook| hook(op, key)) {
            None => Ok(None),
            Some(KvFault::Error(message)) => Ok(Some(wit_store::Error::Other(message))),
            Some(KvFault::Stop) => Err(wasmtime::format_err!("instance stopped by an injected fault at {op:?} {key}")),
        }
    }
}

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
pub fn add_to_linker<T: 'static>(linker: &mut Linker<T>, get: fn(&mut T) -> KeyValue<'_>) -> wasmtime::Result<()> {
    wit_store::add_to_linker::<T, HasKeyValue>(linker, get)?;
    wit_atomics::add_to_linker::<T, HasKeyValue>(linker, get)
}

impl wit_store::Host for KeyValue<'_> {
    fn open(&mut self, identifier: String) -> wasmtime::Result<Result<Resource<Bucket>, wit_store::Error>> {
        if identifier != BUCKET {
            return Ok(Err(wit_store::Error::NoSuchStore));
        }
        if let Some(e) = self.ctx.fault(KvOp::Open, &identifier)? {
            return Ok(Err(e));
        }
        if let Err(e) = self.ctx.backend() {
            return Ok(Err(e));
        }
        Ok(Ok(self.table.push(Bucket)?))
    }
}

impl wit_store::HostBucket for KeyValue<'_> {
    fn get(&mut self, _: Resource<Bucket>, key: String) -> wasmtime::Result<Result<Option<Vec<u8>>, wit_store::Error>> {
        if let Some(e) = self.ctx.fault(KvOp::Get, &key)? {
            return Ok(Err(e));
        }
        Ok(self.ctx.with(|kv| kv.get(&key)))
    }

    fn set(
        &mut self,
        _: Resource<Bucket>,
        key: String,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), wit_store::Error>> {
        if let Some(e) = self.ctx.fault(KvOp::Set, &key)? {
            return Ok(Err(e));
        }
        Ok(self.ctx.with(|kv| kv.set(&key, &value)))
    }

    fn delete(&mut self, _: Resource<Bucket>, key: String) -> wasmtime::Result<Result<(), wit_store::Error>> {
        Ok(self.ctx.with(|kv| kv.delete(&key)))
    }

    fn exists(&mut self, _: Resource<Bucket>, key: String) -> wasmtime::Result<Result<bool, wit_store::Error>> {
        Ok(self.ctx.with(|kv| kv.get(&key).map(|v| v.is_some())))
    }

    fn list_keys(
        &mut self,
        _: Resource<Bucket>,
        _cursor: Option<String>,
    ) -> wasmtime::Result<Result<wit_store::KeyResponse, wit_store::Error>> {
        // One page holds every key: a tenant's store has a handful.
        Ok(self.ctx.with(|kv| kv.keys()).map(|keys| wit_store::KeyResponse { keys, cursor: None }))
    }

    fn drop(&mut self, bucket: Resource<Bucket>) -> wasmtime::Result<()> {
        self.table.delete(bucket)?;
        Ok(())
    }
}

impl wit_atomics::HostCas for KeyValue<'_> {
    fn new(
        &mut self,
        _: Resource<Bucket>,
        key: String,
    ) -> wasmtime::Result<Result<Resource<CasHandle>, wit_store::Error>> {
        if let Some(e) = self.ctx.fault(KvOp::CasRead, &key)? {
            return Ok(Err(e));
        }
        let seen = match self.ctx.with(|kv| kv.get(&key)) {
            Ok(seen) => seen,
            Err(e) => return Ok(Err(e)),
        };
        Ok(Ok(self.table.push(CasHandle { key, seen })?))
    }

    fn current(&mut self, cas: Resource<CasHandle>) -> wasmtime::Result<Result<Option<Vec<u8>>, wit_store::Error>> {
        Ok(Ok(self.table.get(&cas)?.seen.clone()))
    }

    fn drop(&mut self, cas: Resource<CasHandle>) -> wasmtime::Result<()> {
        self.table.delete(cas)?;
        Ok(())
    }
}

impl wit_atomics::Host for KeyValue<'_> {
    fn increment(
        &mut self,
        _: Resource<Bucket>,
        key: String,
        delta: i64,
    ) -> wasmtime::Result<Result<i64, wit_store::Error>> {
        if let Some(e) = self.ctx.fault(KvOp::Set, &key)? {
            return Ok(Err(e));
        }
        Ok(self.ctx.with(|kv| kv.increment(&key, delta)))
    }

    fn swap(
        &mut self,
        cas: Resource<CasHandle>,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), wit_atomics::CasError>> {
        let CasHandle { key, seen } = self.table.delete(cas)?;
        if let Some(e) = self.ctx.fault(KvOp::Swap, &key)? {
            return Ok(Err(wit_atomics::CasError::StoreError(e)));
        }
        match self.ctx.with(|kv| kv.compare_and_swap(&key, seen.as_deref(), &value)) {
            Err(e) => Ok(Err(wit_atomics::CasError::StoreError(e))),
            Ok(true) => Ok(Ok(())),
            Ok(false) => {
                // Hand back a fresh handle on the current value, as the interface asks.
                let seen = match self.ctx.with(|kv| kv.get(&key)) {
                    Ok(seen) => seen,
                    Err(e) => return Ok(Err(wit_atomics::CasError::StoreError(e))),
                };
                let handle = self.table.push(CasHandle { key, seen })?;
                Ok(Err(wit_atomics::CasError::CasFailed(handle)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::SqliteStore;
    use wit_store::{Host as _, HostBucket as _};

    #[test]
    fn only_the_default_bucket_opens_and_only_on_the_tenants_own_file() {
        let dir = tempfile::tempdir().unwrap();
        let mine = dir.path().join("mine.sqlite");
        let other = dir.path().join("other.sqlite");
        SqliteStore::open(&other).unwrap().set(BUCKET, "service/audit", b"theirs").unwrap();
        let mut ctx = KeyValueCtx::new(mine.clone(), None);
        let mut table = ResourceTable::new();
        let mut s = KeyValue { ctx: &mut ctx, table: &mut table };
        for name in ["other", "other.sqlite", other.to_str().unwrap(), "../other", "", "Default"] {
            let opened = s.open(name.into()).unwrap();
            assert!(matches!(opened, Err(wit_store::Error::NoSuchStore)), "{name:?} opened");
        }
        assert!(!mine.exists(), "nothing opened yet");
        let bucket = s.open(BUCKET.into()).unwrap().unwrap();
        let got = s.get(Resource::new_borrow(bucket.rep()), "service/audit".into());
        assert_eq!(got.unwrap().unwrap(), None, "another tenant's value is not visible");
        assert!(mine.exists());
        assert_eq!(SqliteStore::open(&other).unwrap().get(BUCKET, "service/audit").unwrap(), Some(b"theirs".to_vec()));
    }
}
