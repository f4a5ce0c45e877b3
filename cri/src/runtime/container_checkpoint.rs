//! `CheckpointContainer`, and restoring a container from the archive it
//! writes (`CreateContainer` whose image is the archive's path).
//!
//! The archive is an uncompressed tar in the layout CRI-O and containerd
//! write, so their tools (checkpointctl) read ours and we read theirs:
//!
//! - `checkpoint/`: CRIU's images (and runc's `descriptors.json`);
//! - `config.dump`: the container's id, name, rootfs image and times (JSON,
//!   CRI-O's `ContainerConfig` fields);
//! - `spec.dump`: the container's OCI runtime spec (JSON) with the
//!   `io.kubernetes.*` annotations naming its pod and container;
//! - `rootfs-diff.tar`: what the container changed in its writable layer, as
//!   an OCI layer (an opaque directory is a `.wh..wh..opq` entry);
//! - `deleted.files`: image files the container removed (JSON list);
//! - `stats-dump`, `dump.log`: CRIU's statistics and log.
//!
//! The container is paused (cgroup freezer) while CRIU dumps it and its
//! writable layer is copied, so memory and files agree, then resumed: it
//! keeps running, as kubelet's checkpoint API expects.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::container::ContainerRecord;
use super::error::RuntimeError;
use crate::proto;

/// CRIU's images in the archive.
pub const CHECKPOINT_DIR: &str = "checkpoint";
/// The container's identity and rootfs image.
pub const CONFIG_DUMP: &str = "config.dump";
/// The container's OCI runtime spec.
pub const SPEC_DUMP: &str = "spec.dump";
/// The writable layer's changes.
pub const ROOTFS_DIFF: &str = "rootfs-diff.tar";
/// Image files the container deleted.
pub const DELETED_FILES: &str = "deleted.files";
/// CRIU's dump statistics.
pub const STATS_DUMP: &str = "stats-dump";

/// How long a checkpoint may take when the request says 0 ("the CRI
/// default"): kubelet's own runtime request timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);

/// `config.dump`: CRI-O's `ContainerConfig` (checkpointctl reads it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConfigDump {
    /// Container id.
    pub id: String,
    /// Container name (`<name>_<pod>_<attempt>`).
    pub name: String,
    /// The rootfs image's id.
    #[serde(default)]
    pub rootfs_image: String,
    /// The rootfs image's id (what it resolved to).
    #[serde(default)]
    pub rootfs_image_ref: String,
    /// The rootfs image as requested (a pullable reference).
    #[serde(default)]
    pub rootfs_image_name: String,
    /// The runtime that wrote it.
    #[serde(default, rename = "runtime")]
    pub oci_runtime: String,
    /// RFC 3339.
    #[serde(default)]
    pub created_time: String,
    /// RFC 3339.
    #[serde(default)]
    pub checkpointed_time: String,
}

/// The pod a checkpointed container belongs to (for the annotations).
#[derive(Debug, Clone, Default)]
pub struct PodMeta {
    /// Sandbox id.
    pub id: String,
    /// Pod name.
    pub name: String,
    /// Pod namespace.
    pub namespace: String,
    /// Pod uid.
    pub uid: String,
}

/// What a checkpoint needs besides the container.
pub(super) struct CheckpointRequest<'a> {
    /// runtime-core's state root.
    pub runtime_root: &'a Path,
    /// Where the work directory is made ([`super::container::Containers::checkpoint_dir`]).
    pub work_parent: &'a Path,
    /// The `criu` binary.
    pub criu: &'a Path,
    /// The container's pod.
    pub pod: PodMeta,
    /// Where the archive goes.
    pub location: &'a str,
    /// CRI `timeout` in seconds (0: [`DEFAULT_TIMEOUT`]).
    pub timeout_secs: i64,
}

/// The archive path: absolute, not a directory, in an existing directory.
pub(super) fn check_location(location: &str) -> Result<PathBuf, RuntimeError> {
    let bad = |reason: &str| RuntimeError::invalid("location", format!("{location:?} {reason}"));
    let p = Path::new(location);
    if location.is_empty() {
        return Err(RuntimeError::invalid("location", "must not be empty"));
    }
    if !p.is_absolute() || location.contains('\0') || location.ends_with('/') {
        return Err(bad("must be an absolute file path"));
    }
    // What is there already is replaced only when it is a regular file: a
    // symlink, a device node (`/dev/null`), a FIFO or a socket would have
    // been swapped for a file holding the container's memory.
    match std::fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => return Err(bad("is a directory")),
        Ok(m) if !m.file_type().is_file() => {
            return Err(bad(
                "exists and is not a regular file (a symlink, device, FIFO or socket)",
            ))
        }
        _ => {}
    }
    match p.parent() {
        Some(d) if d.is_dir() => Ok(p.to_path_buf()),
        _ => Err(bad("is not in an existing directory")),
    }
}

/// Checkpoints a running container into the archive (blocking). The caller
/// holds the container's lock and has checked that it runs.
pub(super) fn checkpoint(
    rec: &ContainerRecord,
    req: &CheckpointRequest<'_>,
) -> Result<(), RuntimeError> {
    use berth_core::container::checkpoint::{CheckpointOptions, CriuOptions};
    let location = check_location(req.location)?;
    let timeout = match req.timeout_secs {
        t if t < 0 => return Err(RuntimeError::invalid("timeout", "must not be negative")),
        0 => DEFAULT_TIMEOUT,
        t => Duration::from_secs(t as u64),
    };
    let deadline = crate::util::deadline_after(timeout);
    let c = berth_core::Container::load(req.runtime_root, rec.id.as_str())
        .map_err(|e| RuntimeError::FailedPrecondition(format!("container {}: {e}", rec.id)))?;
    let spec = read_monitor_spec(&rec.dir)?;
    let work = Work::new(req.work_parent)?;
    let mut opts = CriuOptions::new(work.0.join(CHECKPOINT_DIR), &work.0);
    opts.criu = req.criu.to_path_buf();
    opts.timeout = Some(timeout);

    // Frozen while CRIU reads its memory and we copy its files — recorded
    // durably first, so a daemon that dies before it thaws the container
    // thaws it at start-up ([`thaw_interrupted`]).
    let marker = rec.dir.join(FROZEN_MARKER);
    crate::store::write_atomic(&marker, b"frozen for a checkpoint\n")
        .map_err(|e| RuntimeError::io(&marker, e))?;
    if let Err(e) = c.pause() {
        let _ = std::fs::remove_file(&marker);
        return Err(core_error(e));
    }
    let dumped = c
        .checkpoint(&CheckpointOptions {
            criu: opts,
            leave_running: true,
        })
        .map_err(core_error)
        .and_then(|()| match &c.config().overlay {
            Some(o) => rootfs_diff(&o.upperdir, &work.0),
            None => write_json(&work.0.join(DELETED_FILES), &Vec::<String>::new()),
        });
    let resumed = c.resume().map_err(core_error);
    if resumed.is_ok() {
        let _ = std::fs::remove_file(&marker);
    }
    dumped?;
    resumed?;
    // CRIU writes its statistics to the work directory; older versions put
    // them with the images.
    let stats = work.0.join(STATS_DUMP);
    let in_images = work.0.join(CHECKPOINT_DIR).join(STATS_DUMP);
    if !stats.exists() && in_images.exists() {
        std::fs::rename(&in_images, &stats).map_err(|e| RuntimeError::io(&stats, e))?;
    }

    let now = crate::logs::rfc3339_nano(std::time::SystemTime::now());
    let created = crate::logs::rfc3339_nano(
        std::time::UNIX_EPOCH + Duration::from_nanos(rec.created_at.max(0) as u64),
    );
    let config_dump = ConfigDump {
        id: rec.id.to_string(),
        name: rec.name.clone(),
        rootfs_image: rec.image_ref.clone(),
        rootfs_image_ref: rec.image_ref.clone(),
        rootfs_image_name: rec.image.clone(),
        oci_runtime: "berth".into(),
        created_time: created,
        checkpointed_time: now,
    };
    write_json(&work.0.join(CONFIG_DUMP), &config_dump)?;
    let cri_config = rec.config();
    write_json(
        &work.0.join(SPEC_DUMP),
        &spec_dump(&spec, &cri_config, rec, &req.pod),
    )?;
    if std::time::Instant::now() >= deadline {
        return Err(RuntimeError::DeadlineExceeded(format!(
            "checkpoint of {} did not finish within {timeout:?}",
            rec.id
        )));
    }
    write_archive(&work.0, &location)
}

/// In a container's directory while a checkpoint holds it frozen.
const FROZEN_MARKER: &str = "frozen-for-checkpoint";

/// Thaws every container a checkpoint froze and a daemon crash left frozen
/// (its CRIU died with the daemon: parent-death signal), at start-up;
/// how many.
pub(super) fn thaw_interrupted(containers: &super::container::Containers) -> usize {
    let mut thawed = 0;
    for entry in containers.registry.all() {
        let Ok(rec) = entry.try_lock() else { continue };
        let marker = rec.dir.join(FROZEN_MARKER);
        if !marker.exists() {
            continue;
        }
        let resumed = berth_core::Container::load(&containers.runtime_root, rec.id.as_str())
            .map_err(|e| e.to_string())
            .and_then(|c| {
                if c.status() == berth_core::Status::Paused {
                    c.resume().map_err(|e| crate::util::error_chain(&e))
                } else {
                    Ok(())
                }
            });
        match resumed {
            Ok(()) => {
                tracing::warn!(id = %rec.id, "thawed a container a checkpoint left frozen when the daemon stopped");
                thawed += 1;
            }
            // Gone with its processes: nothing to thaw.
            Err(e) => {
                tracing::warn!(id = %rec.id, error = %e, "a container a checkpoint left frozen could not be thawed")
            }
        }
        let _ = std::fs::remove_file(&marker);
    }
    thawed
}

/// A fresh work directory, removed (with everything in it) on drop.
pub(super) struct Work(pub PathBuf);

impl Work {
    pub(super) fn new(parent: &Path) -> Result<Work, RuntimeError> {
        let id = crate::store::ObjectId::random()
            .map_err(|e| RuntimeError::io(Path::new("/dev/urandom"), e))?;
        let dir = parent.join(&id.as_str()[..16]);
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(|e| RuntimeError::io(&dir, e))?;
        Ok(Work(dir))
    }
}

impl Drop for Work {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn core_error(e: berth_core::ContainerError) -> RuntimeError {
    use berth_core::ContainerError as E;
    let msg = crate::util::error_chain(&e);
    match e {
        E::Unsupported(_) | E::InvalidState { .. } | E::NotRunning(_) => {
            RuntimeError::FailedPrecondition(msg)
        }
        E::Timeout { .. } => RuntimeError::DeadlineExceeded(msg),
        _ => RuntimeError::Internal(msg),
    }
}

pub(super) fn read_monitor_spec(dir: &Path) -> Result<crate::monitor::MonitorSpec, RuntimeError> {
    let p = dir.join(crate::monitor::SPEC_FILE);
    let bytes = std::fs::read(&p).map_err(|e| RuntimeError::io(&p, e))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| RuntimeError::Internal(format!("{}: {e}", p.display())))
}

fn write_json<T: Serialize + ?Sized>(path: &Path, v: &T) -> Result<(), RuntimeError> {
    let bytes = serde_json::to_vec_pretty(v).map_err(|e| RuntimeError::Internal(e.to_string()))?;
    std::fs::write(path, bytes).map_err(|e| RuntimeError::io(path, e))
}

/// The container's OCI runtime spec, as `spec.dump` holds it.
fn spec_dump(
    spec: &crate::monitor::MonitorSpec,
    cri: &proto::ContainerConfig,
    rec: &ContainerRecord,
    pod: &PodMeta,
) -> serde_json::Value {
    crate::spec::oci::runtime_spec(&spec.config, &spec.process, annotations(cri, rec, pod))
}

/// The container's annotations plus the `io.kubernetes.*` ones containerd
/// and CRI-O put in its OCI spec.
pub(super) fn annotations(
    cri: &proto::ContainerConfig,
    rec: &ContainerRecord,
    pod: &PodMeta,
) -> serde_json::Map<String, serde_json::Value> {
    let container_name = cri
        .metadata
        .as_ref()
        .map(|m| m.name.clone())
        .unwrap_or_default();
    let mut annotations: serde_json::Map<String, serde_json::Value> = cri
        .annotations
        .iter()
        .map(|(k, v)| (k.clone(), v.clone().into()))
        .collect();
    for (k, v) in [
        ("io.kubernetes.pod.name", &pod.name),
        ("io.kubernetes.pod.namespace", &pod.namespace),
        ("io.kubernetes.pod.uid", &pod.uid),
        ("io.kubernetes.container.name", &container_name),
        ("io.kubernetes.cri.container-type", &"container".to_string()),
        ("io.kubernetes.cri.container-name", &container_name),
        ("io.kubernetes.cri.sandbox-id", &pod.id),
        ("io.kubernetes.cri.sandbox-name", &pod.name),
        ("io.kubernetes.cri.sandbox-namespace", &pod.namespace),
        ("io.kubernetes.cri.sandbox-uid", &pod.uid),
        ("io.kubernetes.cri.image-name", &rec.image),
    ] {
        annotations.insert(k.into(), v.clone().into());
    }
    annotations
}

const OPAQUE_XATTR: &str = "trusted.overlay.opaque";

/// Writes `rootfs-diff.tar` (the upper directory as an OCI layer, without
/// its whiteouts) and `deleted.files` (the whiteouts' paths) into `out`.
/// The container is frozen: nothing changes while the tree is walked, and
/// no symlink in it is followed.
fn rootfs_diff(upper: &Path, out: &Path) -> Result<(), RuntimeError> {
    let tar_path = out.join(ROOTFS_DIFF);
    let file = std::fs::File::create(&tar_path).map_err(|e| RuntimeError::io(&tar_path, e))?;
    let mut b = tar::Builder::new(std::io::BufWriter::new(file));
    b.follow_symlinks(false);
    let mut deleted = Vec::new();
    walk_upper(&mut b, upper, Path::new(""), &mut deleted)
        .map_err(|e| RuntimeError::io(upper, e))?;
    b.into_inner()
        .and_then(|mut w| w.flush())
        .map_err(|e| RuntimeError::io(&tar_path, e))?;
    write_json(&out.join(DELETED_FILES), &deleted)
}

fn walk_upper<W: Write>(
    b: &mut tar::Builder<W>,
    dir: &Path,
    rel: &Path,
    deleted: &mut Vec<String>,
) -> std::io::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let path = e.path();
        let name = rel.join(e.file_name());
        let m = std::fs::symlink_metadata(&path)?;
        if m.file_type().is_char_device() && m.rdev() == 0 {
            deleted.push(format!("/{}", name.display()));
            continue;
        }
        b.append_path_with_name(&path, &name)?;
        if m.is_dir() {
            let opaque =
                rustix::fs::lgetxattr(&path, OPAQUE_XATTR, &mut [0u8; 4]).is_ok_and(|n| n == 1);
            if opaque {
                let mut h = empty_file_header();
                b.append_data(&mut h, name.join(".wh..wh..opq"), std::io::empty())?;
            }
            walk_upper(b, &path, &name, deleted)?;
        }
    }
    Ok(())
}

/// The header of an empty root-owned file: what marks a whiteout or an
/// opaque directory in an OCI layer.
fn empty_file_header() -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_size(0);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_entry_type(tar::EntryType::Regular);
    h
}

/// Tars `dir` into `location` (through a temporary file next to it, renamed
/// into place once complete).
fn write_archive(dir: &Path, location: &Path) -> Result<(), RuntimeError> {
    let name = location
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // A name nobody can guess, created afresh (O_EXCL) and never through a
    // symlink (O_NOFOLLOW), owned by us with mode 0600 whatever was planted
    // in the directory.
    let suffix = crate::store::ObjectId::random()
        .map_err(|e| RuntimeError::io(Path::new("/dev/urandom"), e))?;
    let tmp = location.with_file_name(format!(".{name}.{}.berth-tmp", &suffix.as_str()[..16]));
    let res = (|| {
        // The container's memory, secrets included: for root only.
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .mode(0o600)
            .open(&tmp)?;
        let mut b = tar::Builder::new(std::io::BufWriter::new(file));
        b.follow_symlinks(false);
        let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<Result<_, _>>()?;
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            if e.file_type()?.is_dir() {
                b.append_dir_all(e.file_name(), e.path())?;
            } else {
                b.append_path_with_name(e.path(), e.file_name())?;
            }
        }
        let w = b.into_inner()?;
        let f = w.into_inner().map_err(|e| e.into_error())?;
        f.sync_all()?;
        // Checked again right before the rename: only a regular file (or
        // nothing) is replaced.
        match std::fs::symlink_metadata(location) {
            Ok(m) if !m.file_type().is_file() => Err(std::io::Error::other(
                "the location became something other than a regular file",
            )),
            _ => std::fs::rename(&tmp, location),
        }
    })();
    if let Err(e) = res {
        let _ = std::fs::remove_file(&tmp);
        return Err(RuntimeError::io(location, e));
    }
    Ok(())
}

/// Whether CreateContainer's image names a checkpoint archive: an absolute
/// path to a file (an image reference never starts with `/`).
pub(super) fn is_archive(image: &str) -> bool {
    image.starts_with('/') && Path::new(image).is_file()
}

/// A checkpoint archive unpacked for restore.
#[derive(Debug)]
pub(super) struct Unpacked {
    /// Where it was unpacked.
    pub dir: PathBuf,
    /// Its `config.dump`.
    pub config: ConfigDump,
}

impl Unpacked {
    /// CRIU's images.
    pub fn images_dir(&self) -> PathBuf {
        self.dir.join(CHECKPOINT_DIR)
    }
}

/// The checkpoint's rootfs image (`config.dump`'s name, else its ref), as
/// the image store resolves it. When it is not here and a `puller` is
/// given, it is pulled first — with no request credentials (the node's
/// auth file's, if any), through the configured registry hosts, as CRI-O
/// does (blocking: called from CreateContainer's blocking task, inside the
/// runtime).
pub(super) fn rootfs_image(
    images: &crate::image::ImageStore,
    puller: Option<&crate::image::pull::Puller>,
    c: &ConfigDump,
) -> Result<String, RuntimeError> {
    let present = || {
        [&c.rootfs_image_name, &c.rootfs_image_ref]
            .into_iter()
            .find(|r| !r.is_empty() && images.resolve(r).is_some())
            .cloned()
    };
    if let Some(r) = present() {
        return Ok(r);
    }
    let name = &c.rootfs_image_name;
    if let (Some(puller), false) = (puller, name.is_empty()) {
        let parsed = crate::image::reference::ImageName::parse(name).map_err(|e| {
            RuntimeError::FailedPrecondition(format!(
                "the checkpoint's rootfs image {name:?} is not a pullable reference: {e}"
            ))
        })?;
        tracing::info!(image = %name, "pulling the rootfs image of a checkpoint");
        tokio::runtime::Handle::current()
            .block_on(puller.pull(&parsed, &oci_client::secrets::RegistryAuth::Anonymous))
            .map_err(|e| {
                RuntimeError::FailedPrecondition(format!(
                    "pulling the checkpoint's rootfs image {name}: {}",
                    crate::util::error_chain(&e)
                ))
            })?;
    }
    present().ok_or_else(|| {
        RuntimeError::FailedPrecondition(format!(
            "the checkpoint's rootfs image {:?} ({}) is not present: pull it first",
            c.rootfs_image_name, c.rootfs_image_ref
        ))
    })
}

/// When `image` names a pulled checkpoint image — one layer holding an
/// archive's contents, the manifest annotated as such
/// ([`crate::image::store::marks_checkpoint`]) — that layer's directory;
/// `None` for any other image (or one not pulled).
pub(super) fn checkpoint_image_dir(
    images: &crate::image::ImageStore,
    image: &str,
) -> Result<Option<PathBuf>, RuntimeError> {
    let Some(rec) = images.resolve(image).filter(|r| r.checkpoint) else {
        return Ok(None);
    };
    match images.layer_dirs(&rec).as_slice() {
        [one] => Ok(Some(one.clone())),
        more => Err(RuntimeError::invalid(
            "config.image.image",
            format!(
                "{image} is annotated as a checkpoint image but has {} layers (one is expected)",
                more.len()
            ),
        )),
    }
}

/// Unpacks the archive at `archive` into `dest` (created) with the image
/// layer unpacker (no entry can land outside `dest`) and checks that it is
/// a checkpoint ([`open`]).
pub(super) fn unpack(archive: &Path, dest: &Path) -> Result<Unpacked, RuntimeError> {
    let what = format!("{} is not a checkpoint archive", archive.display());
    let bad =
        |reason: String| RuntimeError::invalid("config.image.image", format!("{what}: {reason}"));
    std::fs::create_dir_all(dest).map_err(|e| RuntimeError::io(dest, e))?;
    let file = std::fs::File::open(archive).map_err(|e| bad(e.to_string()))?;
    crate::image::unpack::unpack_untrusted(std::io::BufReader::new(file), dest)
        .map_err(|e| bad(crate::util::error_chain(&e)))?;
    open(dest, &what)
}

/// Checks that `dest` holds a checkpoint — CRIU images, `config.dump`
/// naming a rootfs image, `spec.dump` — and reads its `config.dump`. `what`
/// starts the error messages.
pub(super) fn open(dest: &Path, what: &str) -> Result<Unpacked, RuntimeError> {
    let bad =
        |reason: String| RuntimeError::invalid("config.image.image", format!("{what}: {reason}"));
    for need in [
        format!("{CHECKPOINT_DIR}/inventory.img"),
        format!(
            "{CHECKPOINT_DIR}/{}",
            berth_core::container::checkpoint::DESCRIPTORS_FILE
        ),
        SPEC_DUMP.to_string(),
    ] {
        if !dest.join(&need).is_file() {
            return Err(bad(format!("{need} is missing")));
        }
    }
    let read = |name: &str| -> Result<Vec<u8>, RuntimeError> {
        std::fs::read(dest.join(name)).map_err(|e| bad(format!("{name}: {e}")))
    };
    let config: ConfigDump = serde_json::from_slice(&read(CONFIG_DUMP)?)
        .map_err(|e| bad(format!("{CONFIG_DUMP}: {e}")))?;
    serde_json::from_slice::<serde_json::Value>(&read(SPEC_DUMP)?)
        .map_err(|e| bad(format!("{SPEC_DUMP}: {e}")))?;
    if config.rootfs_image_name.is_empty() && config.rootfs_image_ref.is_empty() {
        return Err(bad(format!("{CONFIG_DUMP} names no rootfs image")));
    }
    Ok(Unpacked {
        dir: dest.to_path_buf(),
        config,
    })
}

/// Applies the checkpoint's `rootfs-diff.tar` to the new container's
/// writable layer and whites out its `deleted.files`. Both go through the
/// image layer unpacker, so a diff can set no more than an image layer could:
/// the same path rules and the same xattr policy (no `trusted.*`, no security
/// labels, well-formed file capabilities only).
pub(super) fn apply_rootfs_diff(unpacked: &Unpacked, upper: &Path) -> Result<(), RuntimeError> {
    let bad = |what: &str, e: String| {
        RuntimeError::invalid(
            "config.image.image",
            format!("the checkpoint's {what} cannot be applied: {e}"),
        )
    };
    let diff = unpacked.dir.join(ROOTFS_DIFF);
    if diff.exists() {
        let f = std::fs::File::open(&diff).map_err(|e| bad(ROOTFS_DIFF, e.to_string()))?;
        crate::image::unpack::unpack_untrusted(std::io::BufReader::new(f), upper)
            .map_err(|e| bad(ROOTFS_DIFF, crate::util::error_chain(&e)))?;
    }
    let deleted_path = unpacked.dir.join(DELETED_FILES);
    let deleted: Vec<String> = match std::fs::read(&deleted_path) {
        Ok(b) => serde_json::from_slice(&b).map_err(|e| bad(DELETED_FILES, e.to_string()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(bad(DELETED_FILES, e.to_string())),
    };
    if deleted.is_empty() {
        return Ok(());
    }
    // As an OCI layer of whiteouts, through the same safe unpacker.
    let mut b = tar::Builder::new(Vec::new());
    for p in &deleted {
        let rel = Path::new(p.trim_start_matches('/'));
        let (Some(parent), Some(name)) = (rel.parent(), rel.file_name()) else {
            return Err(bad(DELETED_FILES, format!("{p:?} is not a file path")));
        };
        let mut wh = std::ffi::OsString::from(".wh.");
        wh.push(name);
        let mut h = empty_file_header();
        b.append_data(&mut h, parent.join(wh), std::io::empty())
            .map_err(|e| bad(DELETED_FILES, format!("{p:?}: {e}")))?;
    }
    let bytes = b
        .into_inner()
        .map_err(|e| bad(DELETED_FILES, e.to_string()))?;
    crate::image::unpack::unpack_untrusted(bytes.as_slice(), upper)
        .map_err(|e| bad(DELETED_FILES, crate::util::error_chain(&e)))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_are_checked() {
        let d = tempfile::tempdir().unwrap();
        let ok = d.path().join("c.tar");
        assert_eq!(check_location(ok.to_str().unwrap()).unwrap(), ok);
        for bad in ["", "rel.tar", "/nonexistent-dir/c.tar", "/tmp/"] {
            let e = check_location(bad).unwrap_err();
            assert!(
                matches!(&e, RuntimeError::InvalidArgument { field, .. } if field == "location"),
                "{bad:?}: {e}"
            );
        }
        let e = check_location(d.path().to_str().unwrap()).unwrap_err();
        assert!(e.to_string().contains("is a directory"), "{e}");
        // Never a device node, FIFO or symlink (not even to a regular file).
        let fifo = d.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let link = d.path().join("link");
        std::os::unix::fs::symlink(&ok, &link).unwrap();
        for bad in [Path::new("/dev/null"), &fifo, &link] {
            let e = check_location(bad.to_str().unwrap()).unwrap_err();
            assert!(e.to_string().contains("not a regular file"), "{bad:?}: {e}");
        }
        // A regular file is replaced.
        std::fs::write(&ok, "old").unwrap();
        assert_eq!(check_location(ok.to_str().unwrap()).unwrap(), ok);
    }

    #[test]
    fn the_archive_is_a_new_private_file_whatever_was_planted() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let src = d.path().join("src");
        std::fs::create_dir(&src).unwrap();
        std::fs::write(src.join("config.dump"), "{}").unwrap();
        // A planted file at the location, world-writable and another's.
        let location = d.path().join("c.tar");
        std::fs::write(&location, "planted").unwrap();
        std::fs::set_permissions(&location, std::fs::Permissions::from_mode(0o666)).unwrap();
        std::os::unix::fs::chown(&location, Some(65534), Some(65534)).unwrap();
        // And the old predictable temporary name as a symlink to a victim.
        let victim = d.path().join("victim");
        std::fs::write(&victim, "keep").unwrap();
        std::os::unix::fs::symlink(&victim, d.path().join(".c.tar.berth-tmp")).unwrap();
        write_archive(&src, &location).unwrap();
        let m = std::fs::symlink_metadata(&location).unwrap();
        assert!(m.file_type().is_file());
        assert_eq!((m.mode() & 0o777, m.uid()), (0o600, 0));
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep");
        let mut a = tar::Archive::new(std::fs::File::open(&location).unwrap());
        let names: Vec<String> = a
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["config.dump"]);
        // No temporary file left.
        let left: Vec<_> = std::fs::read_dir(d.path())
            .unwrap()
            .flatten()
            .filter(|e| {
                e.file_name().to_string_lossy().ends_with(".berth-tmp")
                    && e.file_type().is_ok_and(|t| !t.is_symlink())
            })
            .collect();
        assert!(left.is_empty());
    }

    #[test]
    fn rootfs_diff_round_trips_files_and_deletions() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let upper = d.path().join("upper");
        std::fs::create_dir_all(upper.join("etc/sub")).unwrap();
        std::fs::write(upper.join("etc/new"), "hello").unwrap();
        std::fs::set_permissions(
            upper.join("etc/new"),
            std::fs::Permissions::from_mode(0o640),
        )
        .unwrap();
        std::os::unix::fs::symlink("/etc/new", upper.join("link")).unwrap();
        // An overlay whiteout: a 0/0 character device.
        nix::sys::stat::mknod(
            &upper.join("etc/gone"),
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::empty(),
            0,
        )
        .unwrap();
        let out = d.path().join("out");
        std::fs::create_dir(&out).unwrap();
        rootfs_diff(&upper, &out).unwrap();
        let deleted: Vec<String> =
            serde_json::from_slice(&std::fs::read(out.join(DELETED_FILES)).unwrap()).unwrap();
        assert_eq!(deleted, ["/etc/gone"]);

        let unpacked = Unpacked {
            dir: out.clone(),
            config: ConfigDump {
                id: "x".into(),
                name: "x".into(),
                rootfs_image: String::new(),
                rootfs_image_ref: String::new(),
                rootfs_image_name: "img".into(),
                oci_runtime: String::new(),
                created_time: String::new(),
                checkpointed_time: String::new(),
            },
        };
        let upper2 = d.path().join("upper2");
        std::fs::create_dir(&upper2).unwrap();
        apply_rootfs_diff(&unpacked, &upper2).unwrap();
        assert_eq!(
            std::fs::read_to_string(upper2.join("etc/new")).unwrap(),
            "hello"
        );
        let mode = std::fs::metadata(upper2.join("etc/new"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o640);
        assert_eq!(
            std::fs::read_link(upper2.join("link")).unwrap(),
            Path::new("/etc/new")
        );
        assert!(upper2.join("etc/sub").is_dir());
        let wh = std::fs::symlink_metadata(upper2.join("etc/gone")).unwrap();
        assert!(
            wh.file_type().is_char_device() && wh.rdev() == 0,
            "whiteout"
        );
    }

    #[test]
    fn a_truncated_or_foreign_archive_is_refused_by_field() {
        let d = tempfile::tempdir().unwrap();
        let junk = d.path().join("junk.tar");
        std::fs::write(&junk, vec![7u8; 3000]).unwrap();
        let e = unpack(&junk, &d.path().join("x")).unwrap_err();
        assert!(
            matches!(&e, RuntimeError::InvalidArgument { field, .. } if field == "config.image.image"),
            "{e}"
        );
        // A valid tar that is not a checkpoint.
        let mut b = tar::Builder::new(Vec::new());
        let mut h = empty_file_header();
        h.set_size(2);
        b.append_data(&mut h, "hello", &b"hi"[..]).unwrap();
        let other = d.path().join("other.tar");
        std::fs::write(&other, b.into_inner().unwrap()).unwrap();
        let e = unpack(&other, &d.path().join("y")).unwrap_err();
        assert!(
            e.to_string()
                .contains("checkpoint/inventory.img is missing"),
            "{e}"
        );
    }
}
