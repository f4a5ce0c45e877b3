//! Image records: what is pulled, under which names, used by which
//! containers; and garbage collection of blobs and layers nobody references.
//!
//! Records live in `<root>/images/<id hex>.json` (written atomically), leases
//! of containers on images in `<root>/leases/<container id>`. The in-memory
//! index is rebuilt from those files when berth starts.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use berth_core::ContainerId;
use serde::{Deserialize, Serialize};

use super::blobs::{write_atomic, BlobStore};
use super::error::ImageError;
use super::layers::LayerStore;
use super::reference::{Digest, ImageName};
use crate::store::{make_dir, modes, set_mode};

const RECORD_VERSION: u32 = 1;

/// One layer of an image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerRecord {
    /// The (compressed) blob.
    pub blob: Digest,
    /// Its media type.
    pub media_type: String,
    /// Blob size in bytes.
    pub size: u64,
    /// Digest of the uncompressed tar.
    pub diff_id: Digest,
    /// Chain id: names the unpacked directory.
    pub chain_id: Digest,
}

/// A pulled image, as stored on disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// Format version of this record.
    pub version: u32,
    /// The image id: the config blob's digest (what CRI calls the image ref).
    pub id: Digest,
    /// `registry/repo:tag` names pointing at this image.
    pub repo_tags: Vec<String>,
    /// `registry/repo@sha256:…` manifest digests of this image.
    pub repo_digests: Vec<String>,
    /// The platform manifest's digest.
    pub manifest: Digest,
    /// Manifest and index blobs to keep with the image (manifest first).
    pub manifest_blobs: Vec<Digest>,
    /// Layers, bottom first.
    pub layers: Vec<LayerRecord>,
    /// Config + layer blob bytes (what CRI reports as the image size).
    pub size: u64,
    /// Set by RemoveImage while containers still use the image: hidden from
    /// List/Status, deleted when the last container lets go.
    #[serde(default)]
    pub removed: bool,
    /// The image config's `User`, kept here so List/Status (called by
    /// kubelet every few seconds) need not read the config blob. `None` in
    /// records written before it existed.
    #[serde(default)]
    pub user: Option<String>,
    /// The manifest marks the image as a container checkpoint
    /// ([`marks_checkpoint`]): CreateContainer restores it instead of
    /// running it. Kept here so CreateContainer need not read the manifest.
    #[serde(default)]
    pub checkpoint: bool,
}

/// Manifest annotations that mark a checkpoint image (one layer holding a
/// checkpoint archive's contents): checkpointctl's `org.criu.checkpoint.*`
/// family, and CRI-O's, which `buildah config --annotation` sets on an image
/// made from an archive.
pub fn marks_checkpoint(annotations: &std::collections::BTreeMap<String, String>) -> bool {
    annotations.keys().any(|k| {
        k.starts_with("org.criu.checkpoint.")
            || k == "io.kubernetes.cri-o.annotations.checkpoint.name"
    })
}

impl ImageRecord {
    /// The `repo@sha256:<manifest>` a container created from `requested`
    /// runs (`ContainerStatus.image_ref`, kubelet's `imageID`): the repo
    /// digest of the repository that was asked for, else the first one, else
    /// the image id (an image with no repo digest, as containerd reports it).
    pub fn repo_digest_for(&self, requested: &str) -> String {
        let wanted = super::reference::ImageName::parse(requested)
            .ok()
            .map(|n| format!("{}@", n.repo()));
        wanted
            .and_then(|w| self.repo_digests.iter().find(|d| d.starts_with(&w)))
            .or_else(|| self.repo_digests.first())
            .cloned()
            .unwrap_or_else(|| self.id.to_string())
    }

    /// Every blob this image keeps alive.
    pub fn blobs(&self) -> impl Iterator<Item = &Digest> {
        std::iter::once(&self.id)
            .chain(self.manifest_blobs.iter())
            .chain(self.layers.iter().map(|l| &l.blob))
    }
}

#[derive(Debug, Default)]
struct Inner {
    images: BTreeMap<Digest, ImageRecord>,
    /// container id → image id.
    leases: BTreeMap<String, Digest>,
    /// Pulls in progress: their blobs and layers are not yet referenced by a
    /// record, so collection waits until none runs.
    pulls: usize,
    gc_pending: bool,
}

/// What a pull writes: blobs and unpacked layers (the records are the
/// store's alone). Shared with the puller, in the daemon or in its pull
/// helper process.
#[derive(Debug, Clone)]
pub struct Content {
    /// The blobs.
    pub blobs: Arc<BlobStore>,
    /// The unpacked layers.
    pub layers: Arc<LayerStore>,
}

impl Content {
    /// The content under `root` as a process other than the daemon uses it
    /// (the pull helper): nothing is created or cleaned up.
    pub fn attach(root: &Path) -> Content {
        Content {
            blobs: Arc::new(BlobStore::attach(root)),
            layers: Arc::new(LayerStore::attach(root)),
        }
    }

    /// Deletes what process `pid` (a pull helper that died) was writing.
    pub fn remove_unfinished_of(&self, pid: u32) {
        self.blobs.remove_ingest_of(pid);
        self.layers.remove_unfinished_of(pid);
    }
}

/// The image store: records, blobs, layers.
#[derive(Debug)]
pub struct ImageStore {
    root: PathBuf,
    content: Content,
    pinned: Vec<String>,
    inner: Mutex<Inner>,
}

/// Held by a pull while it writes blobs and layers; collection waits for it.
pub struct PullGuard<'a>(&'a ImageStore);

impl Drop for PullGuard<'_> {
    fn drop(&mut self) {
        let mut inner = self.0.lock();
        inner.pulls -= 1;
        if inner.pulls == 0 && inner.gc_pending {
            inner.gc_pending = false;
            self.0.collect(&inner);
        }
    }
}

impl ImageStore {
    /// Opens the store under `root` (e.g. `/var/lib/berth`). `pinned` lists
    /// image names reported as pinned (kubelet's image GC skips them).
    pub fn open(root: &Path, pinned: Vec<String>) -> Result<ImageStore, ImageError> {
        let blobs = BlobStore::open(root)?;
        let layers = LayerStore::open(root)?;
        let pinned = pinned
            .iter()
            .map(|p| ImageName::parse(p).map(|n| n.to_string()))
            .collect::<Result<Vec<_>, _>>()?;
        let mut inner = Inner::default();
        // Records are root's; container dirs are traversed by a
        // user-namespaced init only (each container's own dir is private,
        // or group-searchable by its pod's root: see `grant_traversal`).
        for (dir, mode) in [
            ("images", modes::PRIVATE),
            ("leases", modes::PRIVATE),
            ("containers", modes::TRAVERSE),
        ] {
            let p = root.join(dir);
            make_dir(&p, mode).map_err(|e| ImageError::io(&p, e))?;
        }
        // The `/` of whole-image volumes (see `image_root_dir`): empty, 0755.
        let image_root = root.join("image-root");
        make_dir(&image_root, 0o755).map_err(|e| ImageError::io(&image_root, e))?;
        let mut tightened = 0;
        for e in read_dir(&root.join("containers")) {
            // Made before container dirs were private; a pod's own group
            // (a user-namespaced container) is kept.
            let p = e.path();
            if std::fs::symlink_metadata(&p).is_ok_and(|m| m.is_dir() && m.gid() == 0) {
                tightened +=
                    set_mode(&p, modes::PRIVATE).map_err(|e| ImageError::io(&p, e))? as usize;
            }
        }
        if tightened > 0 {
            tracing::info!(
                dirs = tightened,
                "container layer directories made private (0700)"
            );
        }
        for e in read_dir(&root.join("images")) {
            let Ok(rec) = std::fs::read(e.path())
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice::<ImageRecord>(&b).map_err(|e| e.to_string()))
            else {
                tracing::warn!(path = %e.path().display(), "ignoring unreadable image record");
                continue;
            };
            inner.images.insert(rec.id.clone(), rec);
        }
        for e in read_dir(&root.join("leases")) {
            let name = e.file_name().to_string_lossy().into_owned();
            let image = std::fs::read_to_string(e.path())
                .ok()
                .and_then(|s| Digest::parse(s.trim()).ok());
            if let Some(image) = image {
                inner.leases.insert(name, image);
            }
        }
        let store = ImageStore {
            root: root.to_path_buf(),
            content: Content {
                blobs: Arc::new(blobs),
                layers: Arc::new(layers),
            },
            pinned,
            inner: Mutex::new(inner),
        };
        let inner = store.lock();
        store.collect(&inner);
        drop(inner);
        Ok(store)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves plain data behind; keep going.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The blob store.
    pub fn blobs(&self) -> &BlobStore {
        &self.content.blobs
    }

    /// The layer store.
    pub fn layers(&self) -> &LayerStore {
        &self.content.layers
    }

    /// Blobs and layers, for the puller.
    pub fn content(&self) -> &Content {
        &self.content
    }

    /// The directory berth keeps images in (for ImageFsInfo).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// An empty directory of mode 0755, always there: the top lower layer
    /// of a whole-image volume, which gives the volume's `/` its mode (the
    /// unpacked layers' roots are private).
    pub fn image_root_dir(&self) -> PathBuf {
        self.root.join("image-root")
    }

    /// Marks a pull as running until the guard drops.
    pub fn begin_pull(&self) -> PullGuard<'_> {
        self.lock().pulls += 1;
        PullGuard(self)
    }

    /// Whether kubelet should treat the image as pinned.
    pub fn is_pinned(&self, rec: &ImageRecord) -> bool {
        rec.repo_tags.iter().any(|t| self.pinned.contains(t))
    }

    /// Finds an image by id (`sha256:…`, its hex, or a unique hex prefix),
    /// tag or digest reference. Removed images are not found.
    pub fn resolve(&self, spec: &str) -> Option<ImageRecord> {
        let inner = self.lock();
        resolve_in(&inner, spec).cloned()
    }

    /// All visible images.
    pub fn list(&self) -> Vec<ImageRecord> {
        self.lock()
            .images
            .values()
            .filter(|r| !r.removed)
            .cloned()
            .collect()
    }

    /// Records a pulled image (merging names into an existing record of the
    /// same id) and moves its tags away from any other image.
    pub fn add(&self, mut rec: ImageRecord) -> Result<ImageRecord, ImageError> {
        let mut inner = self.lock();
        if let Some(old) = inner.images.get(&rec.id) {
            if !old.removed {
                for t in &old.repo_tags {
                    if !rec.repo_tags.contains(t) {
                        rec.repo_tags.push(t.clone());
                    }
                }
                for d in &old.repo_digests {
                    if !rec.repo_digests.contains(d) {
                        rec.repo_digests.push(d.clone());
                    }
                }
            }
        }
        rec.version = RECORD_VERSION;
        rec.removed = false;
        let mut changed = Vec::new();
        for (id, other) in inner.images.iter_mut() {
            if *id == rec.id {
                continue;
            }
            let before = other.repo_tags.len();
            other.repo_tags.retain(|t| !rec.repo_tags.contains(t));
            if other.repo_tags.len() != before {
                changed.push(other.clone());
            }
        }
        self.persist(&rec)?;
        for other in changed {
            self.persist(&other)?;
            inner.images.insert(other.id.clone(), other);
        }
        inner.images.insert(rec.id.clone(), rec.clone());
        Ok(rec)
    }

    /// RemoveImage: deletes the image, or — while containers use it — hides
    /// it and deletes it when the last one is removed (as containerd does).
    /// Absent images are fine (the RPC is idempotent).
    pub fn remove(&self, spec: &str) -> Result<(), ImageError> {
        let mut inner = self.lock();
        let Some(rec) = resolve_in(&inner, spec).cloned() else {
            return Ok(());
        };
        if inner.leases.values().any(|i| *i == rec.id) {
            let mut hidden = rec;
            hidden.removed = true;
            hidden.repo_tags.clear();
            self.persist(&hidden)?;
            inner.images.insert(hidden.id.clone(), hidden);
            return Ok(());
        }
        self.delete_record(&mut inner, &rec.id)?;
        self.collect_or_defer(&mut inner);
        Ok(())
    }

    fn delete_record(&self, inner: &mut Inner, id: &Digest) -> Result<(), ImageError> {
        let p = self.root.join("images").join(format!("{}.json", id.hex()));
        match std::fs::remove_file(&p) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(ImageError::io(&p, e))
            }
            _ => {}
        }
        inner.images.remove(id);
        Ok(())
    }

    /// Records that `container` uses `image` (its layers stay until
    /// [`ImageStore::release`]).
    pub fn lease(&self, image: &Digest, container: &ContainerId) -> Result<(), ImageError> {
        let mut inner = self.lock();
        let p = self.root.join("leases").join(container.as_str());
        write_atomic(&p, image.as_str().as_bytes()).map_err(|e| ImageError::io(&p, e))?;
        inner
            .leases
            .insert(container.as_str().to_string(), image.clone());
        Ok(())
    }

    /// Leases `image` for a container's image volume number `n` (a lease
    /// of its own, `<container>.vol<n>`, ended with the container's).
    pub fn lease_volume(
        &self,
        image: &Digest,
        container: &ContainerId,
        n: usize,
    ) -> Result<(), ImageError> {
        let name = format!("{}.vol{n}", container.as_str());
        let mut inner = self.lock();
        let p = self.root.join("leases").join(&name);
        write_atomic(&p, image.as_str().as_bytes()).map_err(|e| ImageError::io(&p, e))?;
        inner.leases.insert(name, image.clone());
        Ok(())
    }

    /// Ends a container's leases (its image's and its image volumes');
    /// an image removed while in use goes now.
    pub fn release(&self, container: &ContainerId) -> Result<(), ImageError> {
        let mut inner = self.lock();
        let prefix = format!("{}.vol", container.as_str());
        let names: Vec<String> = inner
            .leases
            .keys()
            .filter(|k| k.as_str() == container.as_str() || k.starts_with(&prefix))
            .cloned()
            .collect();
        for name in names {
            let p = self.root.join("leases").join(&name);
            match std::fs::remove_file(&p) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(ImageError::io(&p, e))
                }
                _ => {}
            }
            let Some(image) = inner.leases.remove(&name) else {
                continue;
            };
            let orphan = inner.images.get(&image).is_some_and(|r| r.removed)
                && !inner.leases.values().any(|i| *i == image);
            if orphan {
                self.delete_record(&mut inner, &image)?;
                self.collect_or_defer(&mut inner);
            }
        }
        Ok(())
    }

    /// The unpacked layer directories of `image`, top first (what an
    /// overlay of it takes as `lowerdir`).
    pub fn layer_dirs(&self, image: &ImageRecord) -> Vec<PathBuf> {
        image
            .layers
            .iter()
            .rev()
            .map(|l| self.layers().fs_path(&l.chain_id))
            .collect()
    }

    fn collect_or_defer(&self, inner: &mut Inner) {
        if inner.pulls > 0 {
            inner.gc_pending = true;
        } else {
            self.collect(inner);
        }
    }

    /// Deletes layers and blobs no record references. Errors are logged:
    /// what could not be deleted now is tried again next time.
    fn collect(&self, inner: &Inner) {
        let mut chains = BTreeSet::new();
        let mut blobs = BTreeSet::new();
        for rec in inner.images.values() {
            chains.extend(rec.layers.iter().map(|l| l.chain_id.clone()));
            blobs.extend(rec.blobs().cloned());
        }
        for (chain, _) in self.content.layers.list() {
            if !chains.contains(&chain) {
                if let Err(e) = self.content.layers.remove(&chain) {
                    tracing::warn!(error = %e, "layer garbage collection");
                }
            }
        }
        let dir = self.root.join("blobs/sha256");
        for e in read_dir(&dir) {
            let Ok(d) = Digest::parse(&format!("sha256:{}", e.file_name().to_string_lossy()))
            else {
                continue;
            };
            if !blobs.contains(&d) {
                if let Err(e) = self.content.blobs.delete(&d) {
                    tracing::warn!(error = %e, "blob garbage collection");
                }
            }
        }
    }

    fn persist(&self, rec: &ImageRecord) -> Result<(), ImageError> {
        let p = self
            .root
            .join("images")
            .join(format!("{}.json", rec.id.hex()));
        let json =
            serde_json::to_vec_pretty(rec).map_err(|e| ImageError::Internal(e.to_string()))?;
        write_atomic(&p, &json).map_err(|e| ImageError::io(&p, e))
    }

    /// Bytes and inodes the image filesystem uses: blobs plus unpacked layers.
    pub fn usage(&self) -> (u64, u64) {
        let (mut bytes, mut inodes) = self.content.blobs.usage();
        for (_, u) in self.content.layers.list() {
            bytes += u.bytes;
            inodes += u.inodes;
        }
        (bytes, inodes)
    }
}

fn read_dir(dir: &Path) -> impl Iterator<Item = std::fs::DirEntry> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
}

fn resolve_in<'a>(inner: &'a Inner, spec: &str) -> Option<&'a ImageRecord> {
    let visible = || inner.images.values().filter(|r| !r.removed);
    if let Ok(d) = Digest::parse(spec) {
        if let Some(r) = inner.images.get(&d).filter(|r| !r.removed) {
            return Some(r);
        }
    }
    let is_hex = !spec.is_empty()
        && spec
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if is_hex && spec.len() >= 3 {
        let mut hits = visible().filter(|r| r.id.hex().starts_with(spec));
        if let (Some(r), None) = (hits.next(), hits.next()) {
            return Some(r);
        }
    }
    let name = ImageName::parse(spec).ok()?;
    if let Some(d) = name.digest() {
        let want = name.repo_digest(d);
        return visible().find(|r| r.repo_digests.contains(&want));
    }
    let want = name.repo_tag()?;
    visible().find(|r| r.repo_tags.contains(&want))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(repo_digests: &[&str]) -> ImageRecord {
        let d = |c: char| Digest::parse(&format!("sha256:{}", c.to_string().repeat(64))).unwrap();
        ImageRecord {
            version: RECORD_VERSION,
            id: d('c'),
            repo_tags: Vec::new(),
            repo_digests: repo_digests.iter().map(|s| s.to_string()).collect(),
            manifest: d('e'),
            manifest_blobs: Vec::new(),
            layers: Vec::new(),
            size: 0,
            removed: false,
            user: None,
            checkpoint: false,
        }
    }

    #[test]
    fn a_containers_repo_digest_is_that_of_the_repository_asked_for() {
        let m = format!("sha256:{}", "a".repeat(64));
        let (a, b) = (
            format!("registry.example/x/app@{m}"),
            format!("docker.io/library/busybox@{m}"),
        );
        let rec = record(&[&a, &b]);
        assert_eq!(rec.repo_digest_for("busybox:1.36"), b);
        assert_eq!(rec.repo_digest_for("registry.example/x/app"), a);
        // An image id, or a repository it was not pulled from: the first one.
        assert_eq!(rec.repo_digest_for(&rec.id.to_string()), a);
        assert_eq!(rec.repo_digest_for("other/repo:v1"), a);
        // None at all: the image id, as containerd reports it.
        let bare = record(&[]);
        assert_eq!(bare.repo_digest_for("busybox"), bare.id.to_string());
    }
}
