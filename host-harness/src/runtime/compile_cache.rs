//! The compiled component, cached on disk between processes: compiling
//! with Cranelift takes seconds, loading the cached native code
//! milliseconds. A cache file is named by a hash of the `.wasm` and of every
//! engine setting that shapes compiled code, carries a SHA-256 of its
//! contents, is written atomically, and is compiled anew when missing,
//! stale or damaged.

use anyhow::Context;
use sha2::{Digest, Sha256};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use wasmtime::component::Component;
use wasmtime::Engine;

/// Where the compiled component is cached between processes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum CompileCache {
    /// Beside the `.wasm`: `<dir>/<stem>.<key>.cwasm`.
    #[default]
    NextToComponent,
    /// In this folder (created if needed): `<dir>/<stem>.<key>.cwasm`.
    Dir(PathBuf),
    /// Compile every time.
    Off,
}

/// A component ready to link, and where it came from.
pub(crate) struct Loaded {
    pub component: Component,
    /// The cache file read or written (`None`: cache off).
    pub cache_file: Option<PathBuf>,
    pub from_cache: bool,
}

/// Feeds whatever is hashed into SHA-256 (for the engine's compatibility hash).
struct Sha256Hasher(Sha256);

impl Hasher for Sha256Hasher {
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    fn finish(&self) -> u64 {
        0
    }
}

/// Identifies a compiled component: the `.wasm` bytes, the wasmtime version
/// and every engine setting that shapes compiled code.
fn cache_key(engine: &Engine, wasm: &[u8]) -> String {
    let mut hasher = Sha256Hasher(Sha256::new());
    hasher.0.update(b"host-harness compiled component v1\0");
    hasher.0.update(Sha256::digest(wasm));
    engine.precompile_compatibility_hash().hash(&mut hasher);
    hasher.0.finalize()[..16].iter().map(|b| format!("{b:02x}")).collect()
}

/// Length of the SHA-256 of the serialized component at the end of a cache file.
const CHECKSUM_LEN: usize = 32;

/// The component at `path`, from the cache when it holds a good copy,
/// otherwise compiled (and then cached).
pub(crate) fn load(engine: &Engine, path: &Path, cache: &CompileCache) -> anyhow::Result<Loaded> {
    let wasm = std::fs::read(path).with_context(|| {
        format!(
            "cannot load component {} (build it with: cargo build --release --target wasm32-wasip2 -p onepassword-collector)",
            path.display()
        )
    })?;
    let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("component");
    let name = format!("{stem}.{}.cwasm", cache_key(engine, &wasm));
    let cache_file = match cache {
        CompileCache::Off => None,
        CompileCache::NextToComponent => Some(path.parent().unwrap_or(Path::new(".")).join(name)),
        CompileCache::Dir(dir) => Some(dir.join(name)),
    };
    if let Some(component) = cache_file.as_deref().and_then(|f| read(engine, f)) {
        return Ok(Loaded { component, cache_file, from_cache: true });
    }
    let component = Component::from_binary(engine, &wasm)
        .map_err(anyhow::Error::from)
        .with_context(|| format!("cannot compile component {}", path.display()))?;
    if let Some(file) = &cache_file {
        if let Err(e) = write(&component, file, stem) {
            eprintln!("host-harness: compiled component not cached at {}: {e:#}", file.display());
        }
    }
    Ok(Loaded { component, cache_file, from_cache: false })
}

/// The cached component, or `None` when the file is missing, damaged or
/// made by an incompatible engine (it is then compiled and written anew).
fn read(engine: &Engine, file: &Path) -> Option<Component> {
    let bytes = std::fs::read(file).ok()?;
    let (serialized, checksum) = bytes.split_at(bytes.len().checked_sub(CHECKSUM_LEN)?);
    if Sha256::digest(serialized).as_slice() != checksum {
        return None;
    }
    // SAFETY: `deserialize` runs the native code in these bytes. They are
    // exactly what `Component::serialize` wrote for this `.wasm` and this
    // engine configuration (the file name is their hash, wasmtime checks
    // version and settings again) and not altered since (checksum); the
    // cache folder is trusted like the harness binary itself.
    unsafe { Component::deserialize(engine, serialized) }.ok()
}

/// Writes the cache file atomically (temporary file, then rename) and
/// removes stale cache files of the same component name.
fn write(component: &Component, file: &Path, stem: &str) -> anyhow::Result<()> {
    let mut bytes = component.serialize().map_err(anyhow::Error::from)?;
    let checksum = Sha256::digest(&bytes);
    bytes.extend_from_slice(&checksum);
    let dir = file.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
    let tmp = file.with_extension(format!("cwasm.{}-{nanos}.tmp", std::process::id()));
    std::fs::write(&tmp, &bytes).with_context(|| format!("cannot write {}", tmp.display()))?;
    if let Err(e) = std::fs::rename(&tmp, file) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("cannot rename {} to {}", tmp.display(), file.display()));
    }
    let keep = file.file_name();
    let prefix = format!("{stem}.");
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = entry.file_name();
        let stale = name.to_str().is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".cwasm"));
        if stale && Some(name.as_os_str()) != keep {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    Ok(())
}
