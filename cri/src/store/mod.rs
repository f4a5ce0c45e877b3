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

pub use id::{is_hex_prefix, ObjectId, ObjectIdError};
pub use registry::{Entry, Record, Registry};

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::de::DeserializeOwned;
use serde::Serialize;

/// fsync a directory so a rename in it is durable.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Writes `data` to `path` atomically: a temp file in the same directory,
/// fsync, rename over `path`, fsync of the directory. Readers see the old
/// content or the new, never a mix; a crash leaves at most a `.tmp` file.
pub(crate) fn write_atomic(path: &Path, data: &[u8]) -> io::Result<()> {
    write_atomic_mode(path, data, 0o644)
}

/// [`write_atomic`] with the file created with `mode` (e.g. 0600 for what
/// holds a container's environment).
pub(crate) fn write_atomic_mode(path: &Path, data: &[u8], mode: u32) -> io::Result<()> {
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
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        sync_dir(dir)
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
        std::fs::create_dir_all(dir)?;
        for e in std::fs::read_dir(dir)?.flatten() {
            let name = e.file_name();
            let name = name.to_string_lossy();
            if name.starts_with('.') && name.ends_with(".tmp") {
                std::fs::remove_file(e.path())?;
            }
        }
        Ok(RecordDir {
            dir: dir.to_path_buf(),
        })
    }

    fn path(&self, id: &ObjectId) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    /// Saves a record atomically.
    pub fn save<T: Serialize>(&self, id: &ObjectId, record: &T) -> io::Result<()> {
        let json = serde_json::to_vec_pretty(record).map_err(io::Error::other)?;
        write_atomic(&self.path(id), &json)
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
        r.save(&id, &serde_json::json!({"version": 1, "x": 2}))
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
