//! Unpacked layers, one directory each, keyed by chain id:
//! `<root>/layers/<chain id hex>/fs` plus `layer.json`.
//!
//! A layer's directory holds only that layer's own changes (with OCI whiteouts
//! turned into overlayfs ones), so it does not depend on the layers below and
//! all layers of an image can be unpacked at the same time. The chain id
//! (OCI image spec, "Layer ChainID") names the stack up to it, so two images
//! share a directory exactly when they share the stack.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::Digest as _;

use super::blobs::write_atomic;
use super::reference::Digest;
use super::unpack::{unpack_layer_within, Compression, LayerUsage, UnpackBudget, UnpackError};
use crate::store::{make_dir, modes, set_mode};

/// Why a layer is not available.
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    /// Unpacking the blob failed (bad path, diff id mismatch, I/O).
    #[error("unpacking layer {blob}")]
    Unpack {
        /// The layer blob.
        blob: Digest,
        /// What failed.
        #[source]
        source: UnpackError,
    },
    /// A file operation in the layer store failed.
    #[error("layer store {path}")]
    Io {
        /// Where.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// Chain ids for a stack of diff ids, bottom first:
/// `chain[0] = diff[0]`, `chain[n] = sha256(chain[n-1] + " " + diff[n])`.
pub fn chain_ids(diff_ids: &[Digest]) -> Vec<Digest> {
    let mut out: Vec<Digest> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let next = match out.last() {
            None => d.clone(),
            Some(parent) => {
                Digest::from_sha256(sha2::Sha256::digest(format!("{parent} {d}").as_bytes()).into())
            }
        };
        out.push(next);
    }
    out
}

#[derive(Debug, Serialize, Deserialize)]
struct LayerMeta {
    version: u32,
    chain_id: Digest,
    diff_id: Digest,
    usage: LayerUsage,
}

/// The layer store.
#[derive(Debug)]
pub struct LayerStore {
    root: PathBuf,
}

impl LayerStore {
    /// Opens (creating) `<root>/layers`, deleting unpacks a crash interrupted.
    pub fn open(root: &Path) -> Result<LayerStore, LayerError> {
        let root = root.join("layers");
        let io = |source| LayerError::Io {
            path: root.clone(),
            source,
        };
        let mut tightened = make_dir(&root, modes::TRAVERSE).map_err(io)? as usize;
        for e in std::fs::read_dir(&root).map_err(io)?.flatten() {
            let p = e.path();
            let unfinished = e.file_name().to_string_lossy().starts_with("tmp-")
                || !p.join("layer.json").is_file();
            if unfinished {
                std::fs::remove_dir_all(&p).map_err(|source| LayerError::Io { path: p, source })?;
                continue;
            }
            // Layers unpacked before their trees were made private.
            let fs = p.join("fs");
            for (path, mode) in [(&p, modes::TRAVERSE), (&fs, modes::PRIVATE)] {
                tightened += set_mode(path, mode).map_err(|source| LayerError::Io {
                    path: path.clone(),
                    source,
                })? as usize;
            }
        }
        if tightened > 0 {
            tracing::info!(dirs = tightened, root = %root.display(), "layer directory modes tightened (trees 0700)");
        }
        Ok(LayerStore { root })
    }

    /// The store under `root` as another process uses it while the daemon
    /// has it open (the pull helper): nothing is created or cleaned up.
    pub fn attach(root: &Path) -> LayerStore {
        LayerStore {
            root: root.join("layers"),
        }
    }

    /// Deletes the unpacks process `pid` left unfinished (it died): they
    /// are named `tmp-<chain id>-<pid>-<n>`.
    pub fn remove_unfinished_of(&self, pid: u32) {
        let mark = format!("-{pid}-");
        for e in std::fs::read_dir(&self.root)
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with("tmp-") && name.contains(&mark) {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }

    /// The directory for overlayfs (`lowerdir=`) of a layer.
    pub fn fs_path(&self, chain_id: &Digest) -> PathBuf {
        self.root.join(chain_id.hex()).join("fs")
    }

    /// What an unpacked layer uses, or `None` when it is not unpacked.
    pub fn usage(&self, chain_id: &Digest) -> Option<LayerUsage> {
        let meta = std::fs::read(self.root.join(chain_id.hex()).join("layer.json")).ok()?;
        serde_json::from_slice::<LayerMeta>(&meta)
            .ok()
            .map(|m| m.usage)
    }

    /// Unpacks `blob` as layer `chain_id` unless it already is. Safe to call
    /// concurrently for the same chain id: the first rename wins, the other
    /// copy is discarded.
    pub fn ensure(
        &self,
        chain_id: &Digest,
        diff_id: &Digest,
        blob_path: &Path,
        blob: &Digest,
        compression: Compression,
        budget: &UnpackBudget,
    ) -> Result<LayerUsage, LayerError> {
        if let Some(usage) = self.usage(chain_id) {
            return Ok(usage);
        }
        static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = self
            .root
            .join(format!("tmp-{}-{}-{n}", chain_id.hex(), std::process::id()));
        let unpack = |fs: &Path| {
            let file = std::fs::File::open(blob_path).map_err(|source| LayerError::Io {
                path: blob_path.to_path_buf(),
                source,
            })?;
            let reader = std::io::BufReader::with_capacity(1 << 20, file);
            unpack_layer_within(reader, compression, fs, diff_id.as_str(), budget).map_err(
                |source| LayerError::Unpack {
                    blob: blob.clone(),
                    source,
                },
            )
        };
        let result = self.unpack_into(&tmp, chain_id, diff_id, unpack);
        if result.is_err() {
            let _ = std::fs::remove_dir_all(&tmp);
        }
        result
    }

    fn unpack_into(
        &self,
        tmp: &Path,
        chain_id: &Digest,
        diff_id: &Digest,
        unpack: impl FnOnce(&Path) -> Result<LayerUsage, LayerError>,
    ) -> Result<LayerUsage, LayerError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| LayerError::Io { path, source }
        };
        // The layer's directory is only traversed (a user-namespaced
        // container's init looks its tree up by path); the tree itself is
        // root's alone: an image's setuid binaries and device nodes must not
        // be usable by host users. A container sees its own upper dir's mode
        // for `/`, not this one.
        make_dir(tmp, modes::TRAVERSE).map_err(io(tmp))?;
        let fs = tmp.join("fs");
        make_dir(&fs, modes::PRIVATE).map_err(io(&fs))?;
        let usage = unpack(&fs)?;
        // The unpacker may have given the tree's root the mode of the
        // layer's `./` entry.
        set_mode(&fs, modes::PRIVATE).map_err(io(&fs))?;
        let meta = LayerMeta {
            version: 1,
            chain_id: chain_id.clone(),
            diff_id: diff_id.clone(),
            usage,
        };
        let json = serde_json::to_vec(&meta).unwrap_or_default();
        let meta_path = tmp.join("layer.json");
        write_atomic(&meta_path, &json).map_err(io(&meta_path))?;
        let dest = self.root.join(chain_id.hex());
        match std::fs::rename(tmp, &dest) {
            Ok(()) => Ok(usage),
            // Someone else finished the same layer first: use theirs.
            Err(_) if self.usage(chain_id).is_some() => {
                let _ = std::fs::remove_dir_all(tmp);
                Ok(usage)
            }
            Err(e) => Err(io(&dest)(e)),
        }
    }

    /// Deletes a layer; absent is fine.
    pub fn remove(&self, chain_id: &Digest) -> Result<(), LayerError> {
        let dir = self.root.join(chain_id.hex());
        // Rename first so a crash mid-delete leaves a tmp- dir, not a layer
        // that claims to be complete with files missing.
        let doomed = self.root.join(format!("tmp-rm-{}", chain_id.hex()));
        match std::fs::rename(&dir, &doomed) {
            Ok(()) => std::fs::remove_dir_all(&doomed).map_err(|source| LayerError::Io {
                path: doomed,
                source,
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(LayerError::Io { path: dir, source }),
        }
    }

    /// Every complete layer on disk, with what it uses (one read of each
    /// `layer.json`).
    pub fn list(&self) -> Vec<(Digest, LayerUsage)> {
        std::fs::read_dir(&self.root)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                Digest::parse(&format!("sha256:{}", e.file_name().to_string_lossy())).ok()
            })
            .filter_map(|d| self.usage(&d).map(|u| (d, u)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_ids_follow_the_oci_spec() {
        let a = Digest::of(b"a");
        let b = Digest::of(b"b");
        let c = chain_ids(&[a.clone(), b.clone()]);
        assert_eq!(c[0], a);
        let want = Digest::of(format!("{a} {b}").as_bytes());
        assert_eq!(c[1], want);
        assert!(chain_ids(&[]).is_empty());
    }
}
