//! The compile cache cannot become a way to run native code of someone
//! else's choosing: it is used only in a folder of the harness's user that
//! no one else can write to, and a cache file is loaded only when its MAC
//! under the folder's private key verifies.
//!
//! Needs the release build of the component:
//! `cargo build --release --target wasm32-wasip2 -p onepassword-collector`.

#![cfg(unix)]

use host_harness::runtime::compile_cache::KEY_FILE;
use host_harness::runtime::{default_component_path, CompileCache, Limits, Runtime, RuntimeOptions};
use sha2::{Digest, Sha256};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

fn component() -> PathBuf {
    let path = default_component_path();
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --release --target wasm32-wasip2 -p onepassword-collector` first",
        path.display()
    );
    path
}

/// The component's file name in a test's folder.
const WASM: &str = "onepassword_collector.wasm";

/// A temporary folder with a copy of the component, where a test makes its
/// cache folders: the copy's cache file name does not change when the
/// workspace's `.wasm` is rebuilt while the test runs.
fn test_root() -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    std::fs::copy(component(), root.path().join(WASM)).unwrap();
    root
}

/// A runtime for the component copy beside `dir`, caching in `dir`.
fn runtime_in(dir: &Path) -> Runtime {
    runtime_for(&dir.parent().unwrap().join(WASM), dir)
}

fn runtime_for(wasm: &Path, dir: &Path) -> Runtime {
    let options =
        RuntimeOptions { limits: Limits::default(), cache: CompileCache::Dir(dir.into()), ..RuntimeOptions::default() };
    Runtime::with_options(wasm, options).unwrap()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().mode() & 0o7777
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// The names in `dir`, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    names
}

/// A folder made for the cache by the harness (`0700`), holding a good
/// cache file; returns the folder (in `root`) and the cache file.
fn filled_cache(root: &Path) -> (PathBuf, PathBuf) {
    let dir = root.join("cache");
    let first = runtime_in(&dir);
    assert!(!first.loaded_from_cache());
    let file = first.cache_file().expect("cache used").to_path_buf();
    (dir, file)
}

#[test]
fn a_new_cache_folder_and_its_files_are_private_and_reused() {
    let root = test_root();
    let (dir, file) = filled_cache(root.path());
    assert_eq!(mode(&dir), 0o700, "created 0700");
    let key = dir.join(KEY_FILE);
    assert_eq!(mode(&key), 0o600, "key 0600");
    assert_eq!(std::fs::read(&key).unwrap().len(), 32);
    assert_eq!(mode(&file), 0o600, "cache file 0600");
    assert_eq!(names(&dir), [KEY_FILE.to_string(), file.file_name().unwrap().to_str().unwrap().to_string()]);

    let second = runtime_in(&dir);
    assert!(second.loaded_from_cache());
    assert_eq!(second.cache_file(), Some(file.as_path()));
}

#[test]
fn a_cache_file_forged_without_the_key_is_not_loaded() {
    let root = test_root();
    let (dir, file) = filled_cache(root.path());
    let genuine = std::fs::read(&file).unwrap();
    // What someone without the key can make: a valid compiled component
    // (here the genuine one; it could be any native code) with a plain
    // SHA-256 trailer, the previous format of this cache.
    let serialized = &genuine[..genuine.len() - 32];
    let forged = [serialized, Sha256::digest(serialized).as_slice()].concat();
    std::fs::write(&file, &forged).unwrap();
    let second = runtime_in(&dir);
    assert!(!second.loaded_from_cache(), "a file with a keyless checksum is not loaded");
    drop(second);
    assert_ne!(std::fs::read(&file).unwrap(), forged, "compiled anew and rewritten with the MAC");
    assert!(runtime_in(&dir).loaded_from_cache());

    // Garbage with a correct plain checksum is not even handed to wasmtime.
    let garbage = b"\x7fELF not really native code".to_vec();
    let forged = [garbage.as_slice(), Sha256::digest(&garbage).as_slice()].concat();
    std::fs::write(&file, &forged).unwrap();
    assert!(!runtime_in(&dir).loaded_from_cache());
    assert_ne!(std::fs::read(&file).unwrap(), forged);
    assert!(runtime_in(&dir).loaded_from_cache());
}

#[test]
fn a_genuine_cache_file_of_another_name_is_not_loaded() {
    let root = test_root();
    let (dir, file) = filled_cache(root.path());
    // The same folder and key, another component name: its file carries a
    // valid MAC, but for its own name.
    let other_wasm = root.path().join("other.wasm");
    std::fs::copy(root.path().join(WASM), &other_wasm).unwrap();
    let other = runtime_for(&other_wasm, &dir);
    let other_file = other.cache_file().unwrap().to_path_buf();
    drop(other);
    assert_ne!(other_file, file);
    std::fs::copy(&other_file, &file).unwrap();
    assert!(!runtime_in(&dir).loaded_from_cache(), "a MAC binds the file's name");
    assert!(runtime_in(&dir).loaded_from_cache(), "rewritten");
}

#[test]
fn a_cache_folder_others_can_write_to_is_not_used() {
    for shared in [0o770, 0o707, 0o777] {
        let root = test_root();
        let dir = root.path().join("shared");
        std::fs::create_dir(&dir).unwrap();
        chmod(&dir, shared);
        let first = runtime_in(&dir);
        assert!(names(&dir).is_empty(), "nothing written in a {shared:o} folder: {:?}", names(&dir));
        assert!(!first.loaded_from_cache() && first.cache_file().is_none(), "{shared:o}");
        drop(first);
        assert!(!runtime_in(&dir).loaded_from_cache(), "{shared:o}");
    }

    // A good cache in a folder that becomes group-writable is not read.
    let root = test_root();
    let (dir, _) = filled_cache(root.path());
    chmod(&dir, 0o775);
    assert!(!runtime_in(&dir).loaded_from_cache(), "group-writable folder");
    chmod(&dir, 0o755);
    assert!(runtime_in(&dir).loaded_from_cache(), "0755 is fine");
}

#[test]
fn a_cache_file_others_can_write_to_is_not_loaded() {
    let root = test_root();
    let (dir, file) = filled_cache(root.path());
    chmod(&file, 0o620);
    assert!(!runtime_in(&dir).loaded_from_cache(), "group-writable file");
    assert_eq!(mode(&file), 0o600, "replaced by a private one");
    assert!(runtime_in(&dir).loaded_from_cache());

    // Nor a symbolic link to a good cache file.
    let elsewhere = root.path().join("elsewhere.cwasm");
    std::fs::rename(&file, &elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, &file).unwrap();
    assert!(!runtime_in(&dir).loaded_from_cache(), "symlink");
    assert!(!std::fs::symlink_metadata(&file).unwrap().file_type().is_symlink(), "replaced by a file");
}

#[test]
fn a_key_file_others_can_read_or_of_the_wrong_size_makes_the_cache_untrusted() {
    let root = test_root();
    let (dir, file) = filled_cache(root.path());
    let key_file = dir.join(KEY_FILE);
    let key = std::fs::read(&key_file).unwrap();
    let cached = std::fs::read(&file).unwrap();

    for readable in [0o644, 0o640, 0o604, 0o660] {
        chmod(&key_file, readable);
        let runtime = runtime_in(&dir);
        assert!(!runtime.loaded_from_cache() && runtime.cache_file().is_none(), "key {readable:o}");
        assert_eq!(std::fs::read(&key_file).unwrap(), key, "an untrusted key is left for the user to remove");
        assert_eq!(std::fs::read(&file).unwrap(), cached, "and the cache is not written");
    }
    chmod(&key_file, 0o600);
    assert!(runtime_in(&dir).loaded_from_cache(), "the cache itself was fine");

    let longer = [key.as_slice(), &[0]].concat();
    for wrong in [&key[..31], &longer[..], &[][..]] {
        std::fs::write(&key_file, wrong).unwrap();
        assert_eq!(mode(&key_file), 0o600);
        let runtime = runtime_in(&dir);
        assert!(!runtime.loaded_from_cache() && runtime.cache_file().is_none(), "key of {} bytes", wrong.len());
    }

    // Deleting the key (what the warning says) makes a new one; the old
    // cache file does not verify under it and is compiled anew.
    std::fs::remove_file(&key_file).unwrap();
    assert!(!runtime_in(&dir).loaded_from_cache());
    assert_ne!(std::fs::read(&key_file).unwrap(), key);
    assert!(runtime_in(&dir).loaded_from_cache());
}

/// Owned by someone else: only root can hand a file to another user.
#[test]
fn a_cache_folder_or_file_of_another_user_is_not_used() {
    let root = test_root();
    if std::fs::metadata(root.path()).unwrap().uid() != 0 {
        eprintln!("skipped: needs root to chown");
        return;
    }
    const NOBODY: u32 = 65534;
    let (dir, file) = filled_cache(root.path());

    std::os::unix::fs::chown(&file, Some(NOBODY), None).unwrap();
    assert!(!runtime_in(&dir).loaded_from_cache(), "cache file of another user");
    assert_eq!(std::fs::metadata(&file).unwrap().uid(), 0, "replaced by our own");
    assert!(runtime_in(&dir).loaded_from_cache());

    let key_file = dir.join(KEY_FILE);
    std::os::unix::fs::chown(&key_file, Some(NOBODY), None).unwrap();
    assert!(!runtime_in(&dir).loaded_from_cache(), "key of another user");
    std::os::unix::fs::chown(&key_file, Some(0), None).unwrap();

    std::os::unix::fs::chown(&dir, Some(NOBODY), None).unwrap();
    assert!(!runtime_in(&dir).loaded_from_cache(), "folder of another user");
    let fresh = root.path().join("fresh");
    std::fs::create_dir(&fresh).unwrap();
    std::os::unix::fs::chown(&fresh, Some(NOBODY), None).unwrap();
    assert!(runtime_in(&fresh).cache_file().is_none());
    assert!(names(&fresh).is_empty(), "nothing written in another user's folder");
}
