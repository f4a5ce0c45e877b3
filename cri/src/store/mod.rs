//! berth's metadata store: versioned JSON records, one file per object.
//!
//! Why files and not an embedded database (redb, sled): records are small,
//! change only on lifecycle events (never per read), and are all loaded into
//! memory when the daemon starts; one file per object makes every write
//! independent (no store-wide lock, no compaction), a crash can only affect
//! the one record being written — and that write is atomic (temp file,
//! fsync, rename, fsync of the directory) — and operators can read them with
//! `cat`. Each record type carries a `version` field checked on load.

pub mod b64;
mod id;
mod registry;
pub mod unset;

pub use id::{is_hex_prefix, ObjectId, ObjectIdError};
pub use registry::{Entry, Live, Record, Registry};

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::de::DeserializeOwned;
use serde::Serialize;

/// How far a record write holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// fsynced (the file, then its directory) before the write returns:
    /// it survives a power loss.
    Durable,
    /// Atomic (a renamed temp file) and left to the kernel to flush
    /// (ext4 commits within 5 s): it survives a daemon crash, not a power
    /// loss. For changes a power loss makes moot — a container's exit:
    /// every container ends with the node, and one whose record still says
    /// running is then reported exited (lost, 255) — so they do not cost
    /// two disk flushes on the StopContainer path.
    Atomic,
}

/// fsync a directory so a rename in it is durable.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Modes of berth's directories, whatever the umask (see README, "Files
/// and modes"). Nothing an image or a container writes may be reachable by
/// a host user: a setuid binary or a device node there would work for them.
pub mod modes {
    /// Directories that hold only what root reads (records, blobs, a
    /// container's writable layer, an unpacked layer's tree).
    pub const PRIVATE: u32 = 0o700;
    /// Directories a container's init in a user namespace must traverse to
    /// reach its rootfs and layers: searchable, not listable. Nothing
    /// directly inside them is readable by others.
    pub const TRAVERSE: u32 = 0o711;
    /// A directory only the init of one user-namespaced pod must traverse:
    /// group-searchable, its group the host gid of the pod's root.
    pub const POD_TRAVERSE: u32 = 0o710;
}

/// Creates `dir` (and missing parents) and sets its mode to `mode` — also
/// when it already exists, so an install made with looser modes is
/// tightened. Returns whether an existing mode was changed.
pub(crate) fn make_dir(dir: &Path, mode: u32) -> io::Result<bool> {
    std::fs::create_dir_all(dir)?;
    set_mode(dir, mode)
}

/// Sets `path`'s permission bits to `mode` unless they are already; whether
/// they changed. Never follows a symlink (one is left as it is).
pub(crate) fn set_mode(path: &Path, mode: u32) -> io::Result<bool> {
    use std::os::unix::fs::PermissionsExt;
    let m = std::fs::symlink_metadata(path)?;
    if m.file_type().is_symlink() || m.permissions().mode() & 0o7777 == mode {
        return Ok(false);
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    Ok(true)
}

/// Gives directory `dir` to group `gid` with mode 0710 (see
/// [`modes::POD_TRAVERSE`]).
pub(crate) fn grant_traversal(dir: &Path, gid: u32) -> io::Result<()> {
    std::os::unix::fs::lchown(dir, Some(0), Some(gid))?;
    set_mode(dir, modes::POD_TRAVERSE).map(|_| ())
}

/// Writes `data` to `path` atomically: a temp file in the same directory,
/// fsync, rename over `path`, fsync of the directory. Readers see the old
/// content or the new, never a mix; a crash leaves at most a `.tmp` file.
/// The file is root's alone (0600): records hold pod specs, environments
/// (secrets) and annotations.
pub(crate) fn write_atomic(path: &Path, data: &[u8]) -> io::Result<()> {
    write_atomic_mode(path, data, 0o600)
}

/// [`write_atomic`] with the file created with `mode` (e.g. 0600 for what
/// holds a container's environment).
pub(crate) fn write_atomic_mode(path: &Path, data: &[u8], mode: u32) -> io::Result<()> {
    write_with(path, data, mode, Durability::Durable)
}

/// [`write_atomic_mode`], fsynced or not as `durability` says.
pub(crate) fn write_with(
    path: &Path,
    data: &[u8],
    mode: u32,
    durability: Durability,
) -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    let tmp = dir.join(format!(".{name}.{}.{n}.tmp", std::process::id()));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(data)?;
        if durability == Durability::Durable {
            f.sync_all()?;
        }
        std::fs::rename(&tmp, path)?;
        match durability {
            Durability::Durable => sync_dir(dir),
            Durability::Atomic => Ok(()),
        }
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// A directory of `<id>.json` records.
#[derive(Debug, Clone)]
pub struct RecordDir {
    dir: PathBuf,
}

impl RecordDir {
    /// Opens (creating) `dir`, deleting temp files a crash left behind.
    pub fn open(dir: &Path) -> io::Result<RecordDir> {
        if make_dir(dir, modes::PRIVATE)? {
            tracing::info!(dir = %dir.display(), "record directory made private (0700)");
        }
        for e in std::fs::read_dir(dir)?.flatten() {
            let name = e.file_name();
            let name = name.to_string_lossy();
            if name.starts_with('.') && name.ends_with(".tmp") {
                std::fs::remove_file(e.path())?;
            } else if e.file_type().is_ok_and(|t| t.is_file()) {
                // Records written before files were made 0600.
                set_mode(&e.path(), 0o600)?;
            }
        }
        Ok(RecordDir {
            dir: dir.to_path_buf(),
        })
    }

    fn path(&self, id: &ObjectId) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    /// Saves a record atomically, as durable as asked.
    pub fn save<T: Serialize>(
        &self,
        id: &ObjectId,
        record: &T,
        durability: Durability,
    ) -> io::Result<()> {
        let json = serde_json::to_vec_pretty(record).map_err(io::Error::other)?;
        write_with(&self.path(id), &json, 0o600, durability)
    }

    /// Deletes a record; absent is fine.
    pub fn delete(&self, id: &ObjectId) -> io::Result<()> {
        match std::fs::remove_file(self.path(id)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => sync_dir(&self.dir),
        }
    }

    /// Every record, with the ones that do not parse reported by file name.
    pub fn load_all<T: DeserializeOwned>(&self) -> Loaded<T> {
        let mut ok = Vec::new();
        let mut bad = Vec::new();
        for e in std::fs::read_dir(&self.dir).into_iter().flatten().flatten() {
            let path = e.path();
            let Some(id) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".json"))
                .and_then(|n| ObjectId::parse(n).ok())
            else {
                continue;
            };
            match std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
            {
                Ok(r) => ok.push((id, r)),
                Err(e) => bad.push((path, e)),
            }
        }
        Loaded {
            records: ok,
            unreadable: bad,
        }
    }
}

/// What [`RecordDir::load_all`] found.
#[derive(Debug)]
pub struct Loaded<T> {
    /// Records that parsed, with their ids.
    pub records: Vec<(ObjectId, T)>,
    /// Files that did not parse, with why.
    pub unreadable: Vec<(PathBuf, String)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_temp_files_are_cleaned() {
        let d = tempfile::tempdir().unwrap();
        let r = RecordDir::open(d.path()).unwrap();
        let id = ObjectId::random().unwrap();
        r.save(
            &id,
            &serde_json::json!({"version": 1, "x": 2}),
            Durability::Durable,
        )
        .unwrap();
        std::fs::write(d.path().join(".junk.json.1.2.tmp"), "half").unwrap();
        std::fs::write(
            d.path()
                .join(format!("{}.json", ObjectId::random().unwrap())),
            "{broken",
        )
        .unwrap();
        let r = RecordDir::open(d.path()).unwrap();
        let Loaded {
            records: ok,
            unreadable: bad,
        } = r.load_all::<serde_json::Value>();
        assert_eq!(ok.len(), 1);
        assert_eq!(ok[0].0, id);
        assert_eq!(ok[0].1["x"], 2);
        assert_eq!(bad.len(), 1);
        assert!(!d.path().join(".junk.json.1.2.tmp").exists());
        r.delete(&id).unwrap();
        r.delete(&id).unwrap();
        assert!(r.load_all::<serde_json::Value>().records.is_empty());
    }
}
