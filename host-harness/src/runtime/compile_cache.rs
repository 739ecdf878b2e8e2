//! The compiled component, cached on disk between processes: compiling
//! with Cranelift takes seconds, loading the cached native code
//! milliseconds. A cache file is named by a hash of the `.wasm` and of every
//! engine setting that shapes compiled code, is written atomically, and is
//! compiled anew when missing, stale or damaged.
//!
//! Loading a cache file runs the native code in it, so the cache must not
//! become a way to run code of someone else's choosing:
//!
//! - the folder is used only when it belongs to the harness's user and no
//!   group or other user can write to it (a missing folder is created
//!   `0700`); otherwise the component is compiled in memory, with a warning;
//! - every cache file ends with an HMAC-SHA-256 of its name and contents
//!   under a key only this user can read: 32 random bytes in
//!   [`KEY_FILE`] in the folder, made on first use with mode `0600`. A file
//!   is loaded only when it belongs to this user, no one else can write to
//!   it, and its MAC verifies; otherwise it is compiled anew and rewritten;
//! - a key file that is not this user's, is readable or writable by others,
//!   or is not exactly 32 bytes makes the whole cache untrusted.
//!
//! Someone running as the harness's own user can read the key and forge a
//! cache file; they can equally replace the harness binary, so that is
//! outside what the cache defends against. Only Unix permissions are
//! checked: elsewhere the cache is not used.

use anyhow::Context;
use sha2::{Digest, Sha256};
use std::fs::File;
use std::hash::{Hash, Hasher};
use std::io::Read;
use std::path::{Path, PathBuf};
use wasmtime::component::Component;
use wasmtime::Engine;

/// Where the compiled component is cached between processes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum CompileCache {
    /// Beside the `.wasm`: `<dir>/<stem>.<key>.cwasm`.
    #[default]
    NextToComponent,
    /// In this folder (created `0700` if needed): `<dir>/<stem>.<key>.cwasm`.
    Dir(PathBuf),
    /// Compile every time.
    Off,
}

/// The file in the cache folder holding the key that authenticates its
/// cache files (32 random bytes, mode `0600`).
pub const KEY_FILE: &str = ".host-harness-cache-key";

/// Length of the key, and of the MAC at the end of a cache file.
const KEY_LEN: usize = 32;
const MAC_LEN: usize = 32;

/// A component ready to link, and where it came from.
pub(crate) struct Loaded {
    pub component: Component,
    /// The cache file read or written (`None`: cache off, or its folder not
    /// trusted).
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
    let dir = match cache {
        CompileCache::Off => None,
        CompileCache::NextToComponent => Some(path.parent().unwrap_or(Path::new(""))),
        CompileCache::Dir(dir) => Some(dir.as_path()),
    };
    // `x.wasm`'s parent is "": the current folder.
    let dir = dir.map(|dir| if dir.as_os_str().is_empty() { Path::new(".") } else { dir });
    let store = dir.and_then(|dir| match Store::open(dir) {
        Ok(store) => Some(store),
        Err(e) => {
            eprintln!("host-harness: compile cache not used, compiling in memory: {e:#}");
            None
        }
    });
    let cache_file = store.as_ref().map(|store| store.dir.join(&name));
    if let Some(component) = store.as_ref().and_then(|store| store.read(engine, &name)) {
        return Ok(Loaded { component, cache_file, from_cache: true });
    }
    let component = Component::from_binary(engine, &wasm)
        .map_err(anyhow::Error::from)
        .with_context(|| format!("cannot compile component {}", path.display()))?;
    if let Some(store) = &store {
        if let Err(e) = store.write(&component, &name, stem) {
            let file = store.dir.join(&name);
            eprintln!("host-harness: compiled component not cached at {}: {e:#}", file.display());
        }
    }
    Ok(Loaded { component, cache_file, from_cache: false })
}

/// A cache folder that passed the checks, and its key.
struct Store {
    dir: PathBuf,
    key: [u8; KEY_LEN],
}

impl Store {
    /// The folder (created `0700` when missing) if only this user can write
    /// to it, with its key (made on first use).
    fn open(dir: &Path) -> anyhow::Result<Store> {
        os::create_private_dir(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        os::check_dir(dir)?;
        let key = key(dir)?;
        Ok(Store { dir: dir.to_path_buf(), key })
    }

    /// The cached component, or `None` when the file is missing, not
    /// private to this user, damaged, forged, or made by an incompatible
    /// engine (it is then compiled and written anew).
    fn read(&self, engine: &Engine, name: &str) -> Option<Component> {
        let path = self.dir.join(name);
        let mut file = os::open_no_follow(&path).ok()?;
        if let Err(e) = os::check_file(&file, &path, 0o022) {
            eprintln!("host-harness: cache file ignored, compiling anew: {e:#}");
            return None;
        }
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).ok()?;
        let Some(split) = bytes.len().checked_sub(MAC_LEN) else {
            eprintln!("host-harness: cache file {} ignored (truncated), compiling anew", path.display());
            return None;
        };
        let (serialized, mac_found) = bytes.split_at(split);
        if !constant_time_eq(&mac(&self.key, name, serialized), mac_found) {
            eprintln!(
                "host-harness: cache file {} ignored (not authenticated by this cache's key: damaged, an older format, or forged), compiling anew",
                path.display()
            );
            return None;
        }
        // SAFETY: `deserialize` runs the native code in these bytes. They
        // carry a MAC under this cache's key, which only this user can read
        // (checked above and in `key`), over their name and contents: this
        // user's harness wrote them with `Component::serialize` for this
        // `.wasm` and this engine configuration (the name is their hash;
        // wasmtime checks version and settings again), and they were not
        // altered since. Whoever can forge that runs as this user already.
        unsafe { Component::deserialize(engine, serialized) }.ok()
    }

    /// Writes the cache file atomically (a temporary `0600` file, then a
    /// rename) and removes stale cache files of the same component name.
    fn write(&self, component: &Component, name: &str, stem: &str) -> anyhow::Result<()> {
        let mut bytes = component.serialize().map_err(anyhow::Error::from)?;
        let mac = mac(&self.key, name, &bytes);
        bytes.extend_from_slice(&mac);
        let file = self.dir.join(name);
        let tmp = self.dir.join(format!("{name}.{}.tmp", unique()));
        if let Err(e) = os::write_private(&tmp, &bytes) {
            let _ = std::fs::remove_file(&tmp);
            return Err(e).with_context(|| format!("cannot write {}", tmp.display()));
        }
        if let Err(e) = std::fs::rename(&tmp, &file) {
            let _ = std::fs::remove_file(&tmp);
            return Err(e).with_context(|| format!("cannot rename {} to {}", tmp.display(), file.display()));
        }
        let prefix = format!("{stem}.");
        for entry in std::fs::read_dir(&self.dir).into_iter().flatten().flatten() {
            let entry_name = entry.file_name();
            let stale = entry_name.to_str().is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".cwasm"));
            if stale && entry_name.to_str() != Some(name) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        Ok(())
    }
}

/// The cache folder's key: read from [`KEY_FILE`], or made there when
/// missing. An error when the key file cannot be trusted.
fn key(dir: &Path) -> anyhow::Result<[u8; KEY_LEN]> {
    let path = dir.join(KEY_FILE);
    match os::open_no_follow(&path) {
        Ok(file) => read_key(file, &path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => create_key(dir, &path),
        Err(e) => Err(e).with_context(|| format!("cannot open the cache key {}", path.display())),
    }
}

/// The key in `file` if it is this user's, private, and 32 bytes long.
fn read_key(mut file: File, path: &Path) -> anyhow::Result<[u8; KEY_LEN]> {
    let fix = format!("delete {} (a new key is made and the component compiled anew)", path.display());
    if let Err(e) = os::check_file(&file, path, 0o077) {
        anyhow::bail!("the cache key is not trusted: {e:#}: {fix}");
    }
    let len = file.metadata().with_context(|| format!("cannot read {}", path.display()))?.len();
    anyhow::ensure!(len == KEY_LEN as u64, "the cache key {} holds {len} bytes, not {KEY_LEN}: {fix}", path.display());
    let mut key = [0; KEY_LEN];
    file.read_exact(&mut key).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(key)
}

/// Makes a new key: written to a temporary `0600` file, then linked into
/// place (a link never replaces a file: a harness that makes a key at the
/// same time wins or loses as a whole, and both then use the winner's).
fn create_key(dir: &Path, path: &Path) -> anyhow::Result<[u8; KEY_LEN]> {
    let mut key = [0; KEY_LEN];
    File::open("/dev/urandom")
        .and_then(|mut random| random.read_exact(&mut key))
        .context("cannot read random bytes for the cache key from /dev/urandom")?;
    let tmp = dir.join(format!("{KEY_FILE}.{}.tmp", unique()));
    let linked = os::write_private(&tmp, &key).and_then(|()| std::fs::hard_link(&tmp, path));
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(key),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let file = os::open_no_follow(path).with_context(|| format!("cannot open {}", path.display()))?;
            read_key(file, path)
        }
        Err(e) => Err(e).with_context(|| format!("cannot write the cache key {}", path.display())),
    }
}

/// A suffix for temporary files no other writer uses at the same time.
fn unique() -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
    format!("{}-{nanos}", std::process::id())
}

/// The MAC a cache file ends with: over its name (which names the `.wasm`
/// and the engine settings, so a genuine file cannot pose as another) and
/// the serialized component.
fn mac(key: &[u8; KEY_LEN], name: &str, serialized: &[u8]) -> [u8; MAC_LEN] {
    hmac_sha256(key, &[b"host-harness compile cache v2\0", name.as_bytes(), b"\0", serialized])
}

/// HMAC-SHA-256 (RFC 2104) of the concatenated `parts`, for a key no longer
/// than SHA-256's 64-byte block (built on `sha2`, already a dependency).
fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    const BLOCK: usize = 64;
    assert!(key.len() <= BLOCK, "HMAC key longer than a block");
    let mut inner_pad = [0x36; BLOCK];
    let mut outer_pad = [0x5c; BLOCK];
    for (i, k) in key.iter().enumerate() {
        inner_pad[i] ^= k;
        outer_pad[i] ^= k;
    }
    let mut inner = Sha256::new();
    inner.update(inner_pad);
    for part in parts {
        inner.update(part);
    }
    let mut outer = Sha256::new();
    outer.update(outer_pad);
    outer.update(inner.finalize());
    outer.finalize().into()
}

/// Compares two MACs in time independent of where they differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0, |diff, (x, y)| diff | (x ^ y)) == 0
}

/// Owners and permissions: the checks that keep the cache this user's.
#[cfg(unix)]
mod os {
    use anyhow::{bail, Context};
    use std::fs::File;
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
    use std::path::Path;

    const HOW_TO_FIX: &str = "or choose a folder of the harness's own (--compile-cache DIR), which it creates 0700";

    /// The user this process acts as (the owner of the files it creates).
    fn euid() -> u32 {
        // SAFETY: geteuid takes nothing, touches no memory and cannot fail.
        unsafe { libc::geteuid() }
    }

    /// Creates `dir` and missing parents with mode `0700`; an existing
    /// folder is left as it is (and checked by [`check_dir`]).
    pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)
    }

    /// Whether `dir` belongs to this user and no group or other user can
    /// write to it (who can write there can plant native code).
    pub fn check_dir(dir: &Path) -> anyhow::Result<()> {
        let shown = dir.display();
        let meta = std::fs::metadata(dir).with_context(|| format!("cannot inspect {shown}"))?;
        if !meta.is_dir() {
            bail!("{shown} is not a folder");
        }
        let (owner, me) = (meta.uid(), euid());
        if owner != me {
            bail!("{shown} belongs to uid {owner}, not to this process's user (uid {me}): `chown {me} {shown}`, {HOW_TO_FIX}");
        }
        let mode = meta.mode() & 0o7777;
        if mode & 0o022 != 0 {
            bail!("{shown} is writable by group or others (mode {mode:04o}): `chmod go-w {shown}`, {HOW_TO_FIX}");
        }
        Ok(())
    }

    /// Whether the opened `file` is a regular file of this user's that
    /// no one else has the `forbidden` permission bits on.
    pub fn check_file(file: &File, path: &Path, forbidden: u32) -> anyhow::Result<()> {
        let shown = path.display();
        let meta = file.metadata().with_context(|| format!("cannot inspect {shown}"))?;
        if !meta.is_file() {
            bail!("{shown} is not a regular file");
        }
        let (owner, me) = (meta.uid(), euid());
        if owner != me {
            bail!("{shown} belongs to uid {owner}, not to this process's user (uid {me})");
        }
        let mode = meta.mode() & 0o7777;
        if mode & forbidden != 0 {
            let who = if forbidden & 0o044 != 0 { "readable or writable" } else { "writable" };
            bail!("{shown} is {who} by group or others (mode {mode:04o})");
        }
        Ok(())
    }

    /// Opens `path` for reading, refusing a symbolic link.
    pub fn open_no_follow(path: &Path) -> std::io::Result<File> {
        std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW).open(path)
    }

    /// Writes a new file readable and writable by this user only (created
    /// with that mode, never replacing an existing file), and syncs it.
    pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
        let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
        file.write_all(bytes)?;
        file.sync_all()
    }
}

/// Without Unix owners and permissions the folder cannot be checked, so the
/// cache is not used.
#[cfg(not(unix))]
mod os {
    use std::fs::File;
    use std::path::Path;

    pub fn create_private_dir(_dir: &Path) -> std::io::Result<()> {
        Ok(())
    }

    pub fn check_dir(dir: &Path) -> anyhow::Result<()> {
        anyhow::bail!(
            "{}: only Unix file owners and permissions are checked, so native code is not cached on this system",
            dir.display()
        )
    }

    pub fn check_file(_file: &File, path: &Path, _forbidden: u32) -> anyhow::Result<()> {
        anyhow::bail!("{}: not checked on this system", path.display())
    }

    pub fn open_no_follow(path: &Path) -> std::io::Result<File> {
        File::open(path)
    }

    pub fn write_private(_path: &Path, _bytes: &[u8]) -> std::io::Result<()> {
        Err(std::io::Error::new(std::io::ErrorKind::Unsupported, "not on this system"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// RFC 4231, test cases 1, 2 and 4.
    #[test]
    fn hmac_sha256_matches_rfc_4231() {
        assert_eq!(
            hex(&hmac_sha256(&[0x0b; 20], &[b"Hi There"])),
            "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"
        );
        assert_eq!(
            hex(&hmac_sha256(b"Jefe", &[b"what do ya want ", b"for nothing?"])),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        let key: Vec<u8> = (1..=25).collect();
        assert_eq!(
            hex(&hmac_sha256(&key, &[&[0xcd; 50]])),
            "82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b"
        );
    }

    #[test]
    fn macs_bind_the_name_and_compare_in_full() {
        let key = [7; KEY_LEN];
        let a = mac(&key, "c.0011.cwasm", b"code");
        assert_ne!(a, mac(&key, "c.0022.cwasm", b"code"));
        assert_ne!(a, mac(&[8; KEY_LEN], "c.0011.cwasm", b"code"));
        assert!(constant_time_eq(&a, &a));
        let mut b = a;
        b[31] ^= 1;
        assert!(!constant_time_eq(&a, &b) && !constant_time_eq(&a, &a[..31]));
    }
}
