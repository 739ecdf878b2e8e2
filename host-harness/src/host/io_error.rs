//! `wasi:io/error`, as a guest reads a stream's error. wasmtime-wasi's
//! `to-debug-string` formats the host's error with `{:?}`, which for a
//! wasmtime error ends with the host's stack backtrace whenever
//! `RUST_BACKTRACE` or `RUST_LIB_BACKTRACE` is set (as an operator does to
//! debug the host): frames naming the host's source files, handed to the
//! tenant, which quotes them in its messages (a response body that broke
//! off, or grew past `response_body_bytes`). This interface shadows
//! wasmtime-wasi's: the error's message and its causes
//! ([`guest_text::host_error`]), never a backtrace, bounded and inert.

use crate::guest_text;
use wasmtime::component::{HasData, Linker, Resource, ResourceTable};
use wasmtime_wasi::p2::bindings::io::error;
use wasmtime_wasi::WasiView;

/// Replaces the `wasi:io/error` that `wasmtime_wasi::p2::add_to_linker_async`
/// linked (the same resource type, so streams' errors are this one's).
pub(crate) fn add_to_linker<T: WasiView>(linker: &mut Linker<T>) -> anyhow::Result<()> {
    linker.allow_shadowing(true);
    let added = error::add_to_linker::<T, Errors>(linker, |t| ErrorText(t.ctx().table));
    linker.allow_shadowing(false);
    Ok(added?)
}

struct Errors;

impl HasData for Errors {
    type Data<'a> = ErrorText<'a>;
}

/// The instance's resource table, where its stream errors are.
struct ErrorText<'a>(&'a mut ResourceTable);

impl error::Host for ErrorText<'_> {}

impl error::HostError for ErrorText<'_> {
    fn drop(&mut self, err: Resource<error::Error>) -> wasmtime::Result<()> {
        self.0.delete(err)?;
        Ok(())
    }

    fn to_debug_string(&mut self, err: Resource<error::Error>) -> wasmtime::Result<String> {
        Ok(guest_text::host_error(self.0.get(&err)?))
    }
}
