//! Where a tenant's SQLite store really is, so that no two tenants share
//! one: the `kv` path made absolute with every symbolic link and `..`
//! resolved ([`resolve`]; the part that does not exist yet is kept as
//! written), and, on Unix, the (device, inode) of the file or of its
//! nearest existing folder ([`StoreFile`]), so a hard link or a bind mount
//! of another tenant's file is caught too.
//!
//! Paths that differ only in letter case are also taken as the same file:
//! on a case-insensitive file system (macOS's default, Windows, a mounted
//! volume) they are, and whether one is cannot be told from the path alone
//! (it can differ per folder). Two tenants' store names differing only in
//! case are refused everywhere rather than sharing a file somewhere.
//!
//! So are a store and another's SQLite side file (`-wal`, `-shm`,
//! `-journal`), which SQLite writes beside the database.
//!
//! The files are the operator's: a tenant's `kv` is a plain file name inside
//! `[host] state_dir` ([`file_name`]), and a file that is there already
//! must be a SQLite database with Spin's table ([`check_existing`]), so a
//! tenant can neither reach a file elsewhere nor turn one of the operator's
//! (an empty file, a device, a link to either) into its store.

use std::ffi::OsString;
use std::io;
use std::path::{Component, Path, PathBuf};

/// Symbolic links followed in one path before giving up (as Linux's
/// `ELOOP` limit).
const MAX_LINKS: usize = 40;

/// The files SQLite keeps beside a database, by suffix.
const SIDE_FILES: [&str; 3] = ["-wal", "-shm", "-journal"];

/// The longest `kv` file name.
const MAX_FILE_NAME: usize = 128;

/// The first bytes of every SQLite database file.
const SQLITE_HEADER: &[u8] = b"SQLite format 3\0";

/// Checks a tenant's `kv` as a file name inside the state folder: letters,
/// digits, `-`, `_` and `.`, not starting with `.`; no folder, no `..`, no
/// absolute path. The error says what the operator writes instead.
pub(crate) fn file_name(kv: &str) -> Result<(), String> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    if !kv.is_empty() && kv.len() <= MAX_FILE_NAME && !kv.starts_with('.') && kv.chars().all(allowed) {
        return Ok(());
    }
    let hint = match Path::new(kv).file_name().and_then(|n| n.to_str()) {
        Some(name) if name != kv && file_name(name).is_ok() => format!(" (e.g. kv = {name:?})"),
        _ => String::new(),
    };
    Err(format!(
        "kv {kv:?} is not a file name: a tenant's SQLite store is a file inside [host] state_dir (default \"state\" \
         beside the config file), named with letters, digits, '-', '_' and '.'{hint}; a Redis store is \
         kv = \"redis:NAME\" with NAME declared in [host.redis]"
    ))
}

/// A store file that exists already must be a regular file (not a link, a
/// device or a folder) holding a SQLite database with Spin's
/// `spin_key_value` table; a missing one will be created.
pub(crate) fn check_existing(path: &Path) -> Result<(), String> {
    let meta = match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(format!("cannot look at {}: {}", path.display(), e.kind())),
        Ok(meta) => meta,
    };
    if !meta.file_type().is_file() {
        return Err(format!(
            "{} is not a regular file (a link, device or folder): a store is a file the harness creates",
            path.display()
        ));
    }
    let not_a_store = || {
        format!(
            "{} exists but is not a SQLite store of the collector (Spin's spin_key_value table): move it away, or name \
             a new file",
            path.display()
        )
    };
    let mut header = [0u8; 16];
    let read = std::fs::File::open(path).and_then(|mut f| io::Read::read_exact(&mut f, &mut header));
    if read.is_err() || header != SQLITE_HEADER {
        return Err(not_a_store());
    }
    let flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let has_table = rusqlite::Connection::open_with_flags(path, flags).and_then(|db| {
        db.query_row("SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'spin_key_value'", [], |row| {
            row.get::<_, i64>(0)
        })
    });
    match has_table {
        Ok(1) => Ok(()),
        _ => Err(not_a_store()),
    }
}

/// `path` made absolute (against the current folder), with `.`, `..` and
/// every symbolic link resolved as far as the path exists; the rest is kept
/// as written, `..` resolved lexically (nothing there can be a link).
pub(crate) fn resolve(path: &Path) -> io::Result<PathBuf> {
    let mut links = 0;
    resolve_from(std::path::absolute(path)?, &mut links)
}

fn resolve_from(path: PathBuf, links: &mut usize) -> io::Result<PathBuf> {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            Component::Prefix(_) | Component::RootDir => out.push(part.as_os_str()),
            Component::CurDir => {}
            // `out` holds no link, so its parent is the real one.
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(name) => {
                out.push(name);
                let is_link = std::fs::symlink_metadata(&out).is_ok_and(|m| m.file_type().is_symlink());
                if is_link {
                    *links += 1;
                    if *links > MAX_LINKS {
                        return Err(io::Error::other(format!(
                            "{}: more than {MAX_LINKS} symbolic links",
                            path.display()
                        )));
                    }
                    let target = std::fs::read_link(&out)?;
                    out.pop();
                    // An absolute target replaces `out`; a relative one is
                    // relative to the link's folder.
                    out = resolve_from(out.join(target), links)?;
                }
            }
        }
    }
    Ok(out)
}

/// A tenant's store file, as [`resolve`]d, and what identifies it on disk.
#[derive(Clone, Debug)]
pub(crate) struct StoreFile {
    path: PathBuf,
    /// (device, inode) of the file, or of its nearest existing folder and
    /// the path below it that does not exist yet.
    on_disk: Option<(u64, u64, PathBuf)>,
}

impl StoreFile {
    /// `path` must be [`resolve`]d.
    pub(crate) fn new(path: PathBuf) -> StoreFile {
        let on_disk = identity(&path);
        StoreFile { path, on_disk }
    }

    /// The resolved absolute path.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Why `self` and `other` may be one file (or a database and the
    /// other's side file), if they may.
    pub(crate) fn clash(&self, other: &StoreFile) -> Option<&'static str> {
        if self.path == other.path {
            return Some("the same file");
        }
        if self.on_disk.is_some() && self.on_disk == other.on_disk {
            return Some("the same file on disk (a hard link or a mount of it)");
        }
        let (a, b) = (folded(&self.path), folded(&other.path));
        if a == b {
            return Some("paths that differ only in letter case (one file on a case-insensitive file system)");
        }
        let side = |db: &str, other: &str| SIDE_FILES.iter().any(|s| other.strip_suffix(s) == Some(db));
        if side(&a, &b) || side(&b, &a) {
            return Some("a database and its SQLite side file (-wal, -shm, -journal)");
        }
        None
    }
}

/// The path in lower case, to compare as a case-insensitive file system does.
fn folded(path: &Path) -> String {
    path.to_string_lossy().to_lowercase()
}

#[cfg(unix)]
fn identity(path: &Path) -> Option<(u64, u64, PathBuf)> {
    use std::os::unix::fs::MetadataExt;
    let mut at = path;
    let mut below: Vec<OsString> = Vec::new();
    loop {
        if let Ok(m) = std::fs::metadata(at) {
            return Some((m.dev(), m.ino(), below.iter().rev().collect()));
        }
        below.push(at.file_name()?.to_os_string());
        at = at.parent()?;
    }
}

#[cfg(not(unix))]
fn identity(_: &Path) -> Option<(u64, u64, PathBuf)> {
    None
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn file(path: &Path) -> StoreFile {
        StoreFile::new(resolve(path).unwrap())
    }

    #[test]
    fn links_dot_dots_and_missing_parts_resolve_to_one_absolute_path() {
        let dir = tempfile::tempdir().unwrap();
        let root = resolve(dir.path()).unwrap();
        std::fs::create_dir(root.join("real")).unwrap();
        symlink(root.join("real"), root.join("link")).unwrap();
        symlink("real/a.sqlite", root.join("a-link.sqlite")).unwrap(); // relative, dangling
        assert_eq!(resolve(&root.join("link/a.sqlite")).unwrap(), root.join("real/a.sqlite"));
        assert_eq!(resolve(&root.join("a-link.sqlite")).unwrap(), root.join("real/a.sqlite"));
        assert_eq!(resolve(&root.join("link/../real/./x/../a.sqlite")).unwrap(), root.join("real/a.sqlite"));
        assert_eq!(resolve(&root.join("missing/../real/a.sqlite")).unwrap(), root.join("real/a.sqlite"));
        // `..` after a link leaves the link's target, not the link's folder
        std::fs::create_dir_all(root.join("deep/er")).unwrap();
        symlink(root.join("deep/er"), root.join("real/up")).unwrap();
        assert_eq!(resolve(&root.join("real/up/../b.sqlite")).unwrap(), root.join("deep/b.sqlite"));
        symlink(root.join("loop"), root.join("loop")).unwrap();
        assert!(resolve(&root.join("loop/x")).is_err());
        assert!(resolve(Path::new("relative.sqlite")).unwrap().is_absolute());
    }

    #[test]
    fn hard_links_case_and_side_files_clash() {
        let dir = tempfile::tempdir().unwrap();
        let root = resolve(dir.path()).unwrap();
        std::fs::write(root.join("a.sqlite"), b"").unwrap();
        std::fs::hard_link(root.join("a.sqlite"), root.join("b.sqlite")).unwrap();
        let a = file(&root.join("a.sqlite"));
        assert!(a.clash(&file(&root.join("b.sqlite"))).unwrap().contains("on disk"));
        assert!(a.clash(&file(&root.join("A.SQLITE"))).unwrap().contains("letter case"));
        assert!(a.clash(&file(&root.join("a.sqlite-wal"))).unwrap().contains("side file"));
        assert!(file(&root.join("x-journal")).clash(&file(&root.join("x"))).is_some());
        assert!(a.clash(&file(&root.join("c.sqlite"))).is_none());
        assert!(file(&root.join("new/c.sqlite")).clash(&file(&root.join("new/d.sqlite"))).is_none());
        // a folder mounted (here: linked) twice is caught through its inode
        // even before the file exists
        std::fs::create_dir(root.join("one")).unwrap();
        let two = StoreFile { path: root.join("two/c.sqlite"), on_disk: identity(&root.join("one/c.sqlite")) };
        assert!(file(&root.join("one/c.sqlite")).clash(&two).is_some());
    }

    #[test]
    fn a_kv_is_a_plain_file_name() {
        for good in ["acme.sqlite", "a", "acme-eu_2.db", "x.y.z"] {
            assert!(file_name(good).is_ok(), "{good}");
        }
        for bad in ["", "../x.sqlite", "/etc/passwd", "state/acme.sqlite", ".hidden", "a b", "a\\b", "..", "${X}"] {
            let e = file_name(bad).unwrap_err();
            assert!(e.contains("[host] state_dir"), "{bad}: {e}");
        }
        assert!(file_name("state/acme.sqlite").unwrap_err().contains("kv = \"acme.sqlite\""));
        assert!(file_name(&"a".repeat(MAX_FILE_NAME + 1)).is_err());
    }

    #[test]
    fn an_existing_file_must_be_a_collector_store() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        assert!(check_existing(&root.join("new.sqlite")).is_ok());
        std::fs::write(root.join("empty"), b"").unwrap();
        std::fs::write(root.join("text"), b"operator's notes, not a database").unwrap();
        let other = rusqlite::Connection::open(root.join("other.db")).unwrap();
        other.execute("CREATE TABLE t (x)", []).unwrap();
        drop(other);
        symlink("/dev/null", root.join("device")).unwrap();
        symlink(root.join("store.sqlite"), root.join("link.sqlite")).unwrap();
        crate::kv::SqliteStore::open(&root.join("store.sqlite")).unwrap();
        assert!(check_existing(&root.join("store.sqlite")).is_ok());
        for (bad, says) in [
            ("empty", "not a SQLite store"),
            ("text", "not a SQLite store"),
            ("other.db", "not a SQLite store"),
            ("device", "not a regular file"),
            ("link.sqlite", "not a regular file"),
        ] {
            let e = check_existing(&root.join(bad)).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
        assert!(check_existing(Path::new("/dev/null")).unwrap_err().contains("not a regular file"));
    }
}
