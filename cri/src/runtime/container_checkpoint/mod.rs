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

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::container::ContainerRecord;
use super::error::RuntimeError;
use crate::proto;
use crate::task::Task;

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
    /// The container, through its monitor.
    pub task: &'a dyn Task,
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
    let location = check_location(req.location)?;
    let timeout = timeout_of(req.timeout_secs)?;
    let deadline = crate::util::deadline_after(timeout);
    let work = Work::new(req.work_parent)?;
    let dump = DumpRequest {
        task: req.task,
        criu: req.criu,
        pod: &req.pod,
        timeout,
    };
    // Frozen while CRIU reads its memory and we copy its files.
    freeze(rec, req.task)?;
    let dumped = dump_frozen(rec, &dump, &work.0);
    let thawed = thaw(rec, req.task);
    dumped?;
    thawed?;
    if std::time::Instant::now() >= deadline {
        return Err(RuntimeError::DeadlineExceeded(format!(
            "checkpoint of {} did not finish within {timeout:?}",
            rec.id
        )));
    }
    write_archive(&work.0, &location)
}

/// CRI `timeout` in seconds: 0 is [`DEFAULT_TIMEOUT`].
pub(super) fn timeout_of(secs: i64) -> Result<Duration, RuntimeError> {
    match secs {
        t if t < 0 => Err(RuntimeError::invalid("timeout", "must not be negative")),
        0 => Ok(DEFAULT_TIMEOUT),
        t => Ok(Duration::from_secs(t as u64)),
    }
}

/// Freezes container `rec` (cgroup freezer) for a dump — recorded durably
/// first, so a daemon that dies before it thaws the container thaws it at
/// start-up ([`thaw_interrupted`]).
pub(super) fn freeze(rec: &ContainerRecord, task: &dyn Task) -> Result<(), RuntimeError> {
    let marker = rec.dir.join(FROZEN_MARKER);
    crate::store::write_atomic(&marker, b"frozen for a checkpoint\n")
        .map_err(|e| RuntimeError::io(&marker, e))?;
    task.pause().map_err(|e| {
        let _ = std::fs::remove_file(&marker);
        RuntimeError::task(&rec.id)(e)
    })
}

/// Thaws what [`freeze`] froze; the marker goes once it runs again.
pub(super) fn thaw(rec: &ContainerRecord, task: &dyn Task) -> Result<(), RuntimeError> {
    task.resume().map_err(RuntimeError::task(&rec.id))?;
    let _ = std::fs::remove_file(rec.dir.join(FROZEN_MARKER));
    Ok(())
}

/// What a dump of one frozen container needs.
pub(super) struct DumpRequest<'a> {
    /// The container, through its monitor.
    pub task: &'a dyn Task,
    /// The `criu` binary.
    pub criu: &'a Path,
    /// The container's pod.
    pub pod: &'a PodMeta,
    /// How long CRIU may take.
    pub timeout: Duration,
}

/// Dumps a container [`freeze`] froze into the empty directory `out`, in the
/// archive's layout (CRIU's images, `config.dump`, `spec.dump`, its rootfs
/// changes, CRIU's statistics and log). It keeps running after the thaw.
pub(super) fn dump_frozen(
    rec: &ContainerRecord,
    req: &DumpRequest<'_>,
    out: &Path,
) -> Result<(), RuntimeError> {
    use berth_core::container::checkpoint::{CheckpointOptions, CriuOptions};
    let spec = read_monitor_spec(&rec.dir)?;
    let mut opts = CriuOptions::new(out.join(CHECKPOINT_DIR), out);
    opts.criu = req.criu.to_path_buf();
    opts.timeout = Some(req.timeout);
    req.task
        .checkpoint(&CheckpointOptions {
            criu: opts,
            leave_running: true,
        })
        .map_err(RuntimeError::task(&rec.id))?;
    match &spec.config.overlay {
        Some(o) => rootfs_diff(&o.upperdir, out)?,
        None => write_json(&out.join(DELETED_FILES), &Vec::<String>::new())?,
    }
    // CRIU writes its statistics to the work directory; older versions put
    // them with the images.
    let stats = out.join(STATS_DUMP);
    let in_images = out.join(CHECKPOINT_DIR).join(STATS_DUMP);
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
    write_json(&out.join(CONFIG_DUMP), &config_dump)?;
    let cri_config = rec.config();
    write_json(
        &out.join(SPEC_DUMP),
        &spec_dump(&spec, &cri_config, rec, req.pod),
    )
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
        let task = containers.task(&rec);
        let resumed = task
            .state()
            .and_then(|s| if s.paused { task.resume() } else { Ok(()) })
            .map_err(|e| crate::util::error_chain(&e));
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

mod archive;
mod restore;
#[cfg(test)]
mod tests;

use crate::util::blocking;
use archive::{rootfs_diff, write_archive};
pub(super) use restore::{
    apply_rootfs_diff, check_criu_joins_userns, checkpoint_image_dir, is_archive, open,
    rootfs_image, unpack,
};
use tonic::{Request, Response, Status};

impl super::RuntimeServiceImpl {
    /// Dumps a running container with CRIU into a checkpoint archive at
    /// `location`, leaving it running (see `container_checkpoint`).
    pub(in crate::runtime) async fn checkpoint_container_rpc(
        &self,
        request: Request<proto::CheckpointContainerRequest>,
    ) -> Result<Response<proto::CheckpointContainerResponse>, Status> {
        let req = request.into_inner();
        check_location(&req.location)?;
        let rec = self.locked_container(&req.container_id).await?;
        RuntimeError::require(
            &rec,
            super::container::ContainerState::Running,
            "only a running container can be checkpointed",
        )?;
        let pod = self.pod_meta(&rec.sandbox_id).await;
        timeout_of(req.timeout)?;
        let containers = self.containers.clone();
        let criu = self.criu.clone();
        let t0 = std::time::Instant::now();
        let id = rec.id.to_string();
        blocking(move || {
            checkpoint(
                &rec,
                &CheckpointRequest {
                    task: &*containers.task(&rec),
                    work_parent: &containers.checkpoint_dir,
                    criu: &criu,
                    pod,
                    location: &req.location,
                    timeout_secs: req.timeout,
                },
            )
        })
        .await
        .inspect_err(
            |e| tracing::warn!(id = %id, error = %e.message(), "CheckpointContainer failed"),
        )?;
        tracing::info!(id = %id, took = ?t0.elapsed(), "container checkpointed");
        Ok(Response::new(proto::CheckpointContainerResponse {}))
    }
}
