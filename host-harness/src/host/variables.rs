//! `wasi:config/store`: a tenant's variables, read-only, exactly as the
//! tenants file gave them (secrets included, so this map is never printed).

use crate::bindings::wasi::config::store as wit;
use std::collections::BTreeMap;
use wasmtime::component::{HasSelf, Linker};

/// The variables one instance can read.
pub struct ConfigVars(pub BTreeMap<String, String>);

impl wit::Host for ConfigVars {
    fn get(&mut self, key: String) -> wasmtime::Result<Result<Option<String>, wit::Error>> {
        Ok(Ok(self.0.get(&key).cloned()))
    }

    fn get_all(&mut self) -> wasmtime::Result<Result<Vec<(String, String)>, wit::Error>> {
        Ok(Ok(self.0.iter().map(|(k, v)| (k.clone(), v.clone())).collect()))
    }
}

/// Links `wasi:config/store`; `get` picks the variables out of the store's
/// data.
pub fn add_to_linker<T: 'static>(linker: &mut Linker<T>, get: fn(&mut T) -> &mut ConfigVars) -> wasmtime::Result<()> {
    wit::add_to_linker::<T, HasSelf<ConfigVars>>(linker, get)
}
