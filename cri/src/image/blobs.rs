//! The content-addressed blob store: `<root>/blobs/sha256/<hex>`.
//!
//! A blob is written to `<root>/ingest/` while its sha256 is computed, then
//! checked against the digest and size it claims, fsynced, and renamed into
//! place (and the directory fsynced). A crash at any point leaves at most an
//! ingest file, which [`BlobStore::open`] deletes: no file under `blobs/`
//! ever holds content other than its name's digest.

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::Digest as _;

use super::reference::Digest;
pub(crate) use crate::store::{sync_dir, write_atomic};

/// Why a blob was not stored.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// The content's digest is not the one it was fetched for.
    #[error("blob {expected}: content has digest {actual} (corrupted or tampered)")]
    DigestMismatch {
        /// What was asked for.
        expected: Digest,
        /// What arrived.
        actual: Digest,
    },
    /// The content is not the size the descriptor says.
    #[error("blob {digest}: expected {expected} bytes, got {actual}")]
    SizeMismatch {
        /// The blob.
        digest: Digest,
        /// Descriptor size.
        expected: u64,
        /// Bytes received.
        actual: u64,
    },
    /// A file operation in the store failed.
    #[error("blob store {path}")]
    Io {
        /// Where.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> BlobError + '_ {
    move |source| BlobError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The blob store rooted at a directory berth owns.
#[derive(Debug)]
pub struct BlobStore {
    blobs: PathBuf,
    ingest: PathBuf,
    seq: AtomicU64,
}

impl BlobStore {
    /// Opens (creating) the store under `root`, deleting ingest files left by
    /// a crash.
    pub fn open(root: &Path) -> Result<BlobStore, BlobError> {
        let blobs = root.join("blobs/sha256");
        let ingest = root.join("ingest");
        // Blobs of private images are nobody else's business.
        let top = root.join("blobs");
        crate::store::make_dir(&top, crate::store::modes::PRIVATE).map_err(io_at(&top))?;
        std::fs::create_dir_all(&blobs).map_err(io_at(&blobs))?;
        if ingest.exists() {
            std::fs::remove_dir_all(&ingest).map_err(io_at(&ingest))?;
        }
        crate::store::make_dir(&ingest, crate::store::modes::PRIVATE).map_err(io_at(&ingest))?;
        Ok(BlobStore {
            blobs,
            ingest,
            seq: AtomicU64::new(0),
        })
    }

    /// The store under `root` as another process uses it while the daemon
    /// has it open (the pull helper): nothing is created or cleaned up.
    pub fn attach(root: &Path) -> BlobStore {
        BlobStore {
            blobs: root.join("blobs/sha256"),
            ingest: root.join("ingest"),
            seq: AtomicU64::new(0),
        }
    }

    /// Deletes what process `pid` was writing (it died before committing):
    /// its writers' files are named `<hex>.<pid>.<n>`.
    pub fn remove_ingest_of(&self, pid: u32) {
        let mark = format!(".{pid}.");
        for e in std::fs::read_dir(&self.ingest)
            .into_iter()
            .flatten()
            .flatten()
        {
            if e.file_name().to_string_lossy().contains(&mark) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }

    /// Where the blob lives (whether or not it is there).
    pub fn path(&self, digest: &Digest) -> PathBuf {
        self.blobs.join(digest.hex())
    }

    /// The blob's size if it is stored.
    pub fn size(&self, digest: &Digest) -> Option<u64> {
        std::fs::symlink_metadata(self.path(digest))
            .ok()
            .filter(|m| m.is_file())
            .map(|m| m.len())
    }

    /// Reads a whole (small) blob: manifests and configs.
    pub fn read(&self, digest: &Digest) -> Result<Vec<u8>, BlobError> {
        let p = self.path(digest);
        std::fs::read(&p).map_err(io_at(&p))
    }

    /// Stores a blob held in memory, verifying its digest.
    pub fn put(&self, digest: &Digest, data: &[u8]) -> Result<(), BlobError> {
        let mut w = self.writer(digest, Some(data.len() as u64))?;
        w.write(data)?;
        w.commit()
    }

    /// Starts writing `digest`. The writer's file is deleted unless committed.
    pub fn writer(&self, digest: &Digest, size: Option<u64>) -> Result<BlobWriter, BlobError> {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        let tmp = self
            .ingest
            .join(format!("{}.{}.{n}", digest.hex(), std::process::id()));
        let file = File::options()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(io_at(&tmp))?;
        Ok(BlobWriter {
            file,
            hasher: sha2::Sha256::new(),
            written: 0,
            tmp,
            dest: self.path(digest),
            dir: self.blobs.clone(),
            digest: digest.clone(),
            size,
            committed: false,
        })
    }

    /// Deletes a blob; absent is fine.
    pub fn delete(&self, digest: &Digest) -> Result<(), BlobError> {
        let p = self.path(digest);
        match std::fs::remove_file(&p) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_at(&p)(e)),
            _ => Ok(()),
        }
    }

    /// Bytes (allocated) and inodes used by stored blobs.
    pub fn usage(&self) -> (u64, u64) {
        use std::os::unix::fs::MetadataExt;
        let mut bytes = 0;
        let mut inodes = 0;
        for e in std::fs::read_dir(&self.blobs)
            .into_iter()
            .flatten()
            .flatten()
        {
            if let Ok(m) = e.metadata() {
                bytes += m.blocks() * 512;
                inodes += 1;
            }
        }
        (bytes, inodes)
    }
}

/// A blob being written: hashes as it writes, verifies on commit.
#[derive(Debug)]
pub struct BlobWriter {
    file: File,
    hasher: sha2::Sha256,
    written: u64,
    tmp: PathBuf,
    dest: PathBuf,
    dir: PathBuf,
    digest: Digest,
    size: Option<u64>,
    committed: bool,
}

impl BlobWriter {
    /// Appends bytes.
    pub fn write(&mut self, data: &[u8]) -> Result<(), BlobError> {
        if let Some(size) = self.size {
            if self.written + data.len() as u64 > size {
                return Err(BlobError::SizeMismatch {
                    digest: self.digest.clone(),
                    expected: size,
                    actual: self.written + data.len() as u64,
                });
            }
        }
        self.file.write_all(data).map_err(io_at(&self.tmp))?;
        self.hasher.update(data);
        self.written += data.len() as u64;
        Ok(())
    }

    /// Bytes written so far (where a resumed download continues).
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Drops what was written, to start over (a registry that ignored a
    /// range request sends the whole blob again).
    pub fn reset(&mut self) -> Result<(), BlobError> {
        use std::io::Seek;
        self.file.set_len(0).map_err(io_at(&self.tmp))?;
        self.file.rewind().map_err(io_at(&self.tmp))?;
        self.hasher = sha2::Sha256::new();
        self.written = 0;
        Ok(())
    }

    /// Verifies digest and size, makes the content durable and moves it into
    /// the store.
    pub fn commit(mut self) -> Result<(), BlobError> {
        let actual = Digest::from_sha256(std::mem::take(&mut self.hasher).finalize().into());
        if let Some(size) = self.size {
            if size != self.written {
                return Err(BlobError::SizeMismatch {
                    digest: self.digest.clone(),
                    expected: size,
                    actual: self.written,
                });
            }
        }
        if actual != self.digest {
            return Err(BlobError::DigestMismatch {
                expected: self.digest.clone(),
                actual,
            });
        }
        self.file.sync_all().map_err(io_at(&self.tmp))?;
        std::fs::rename(&self.tmp, &self.dest).map_err(io_at(&self.dest))?;
        self.committed = true;
        sync_dir(&self.dir).map_err(io_at(&self.dir))
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verified_blobs_land_and_bad_ones_leave_nothing() {
        let d = tempfile::tempdir().unwrap();
        let s = BlobStore::open(d.path()).unwrap();
        let good = Digest::of(b"hello");
        s.put(&good, b"hello").unwrap();
        assert_eq!(s.read(&good).unwrap(), b"hello");
        assert_eq!(s.size(&good), Some(5));

        let other = Digest::of(b"other");
        let err = s.put(&other, b"tampered").unwrap_err();
        assert!(matches!(err, BlobError::DigestMismatch { .. }), "{err}");
        let mut w = s.writer(&other, Some(5)).unwrap();
        let err = w.write(b"tampered").unwrap_err();
        assert!(matches!(err, BlobError::SizeMismatch { .. }), "{err}");
        drop(w);
        let mut w = s.writer(&other, Some(5)).unwrap();
        w.write(b"abc").unwrap();
        let err = w.commit().unwrap_err();
        assert!(matches!(err, BlobError::SizeMismatch { .. }), "{err}");
        assert_eq!(s.size(&other), None);
        assert_eq!(
            std::fs::read_dir(d.path().join("ingest")).unwrap().count(),
            0
        );
    }

    #[test]
    fn reset_restarts_and_open_cleans_ingest() {
        let d = tempfile::tempdir().unwrap();
        let s = BlobStore::open(d.path()).unwrap();
        let dg = Digest::of(b"abc");
        let mut w = s.writer(&dg, Some(3)).unwrap();
        w.write(b"xy").unwrap();
        w.reset().unwrap();
        w.write(b"abc").unwrap();
        w.commit().unwrap();
        assert_eq!(s.read(&dg).unwrap(), b"abc");

        let crashed = s.writer(&Digest::of(b"z"), None).unwrap();
        std::mem::forget(crashed); // a crash: the ingest file stays behind
        assert_eq!(
            std::fs::read_dir(d.path().join("ingest")).unwrap().count(),
            1
        );
        let _s = BlobStore::open(d.path()).unwrap();
        assert_eq!(
            std::fs::read_dir(d.path().join("ingest")).unwrap().count(),
            0
        );
        assert_eq!(_s.read(&dg).unwrap(), b"abc");
    }
}
