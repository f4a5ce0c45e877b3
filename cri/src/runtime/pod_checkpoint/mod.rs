//! `CheckpointPod` and `RestorePod` (cri-api 1.37): a whole pod's running
//! containers dumped at one moment into a directory the caller owns, and
//! restored into a new pod (see `restore.rs`).
//!
//! The directory (`output_path`, `checkpoint_path` on restore):
//!
//! - `pod.json`: the manifest ([`PodManifest`]), written last, so a
//!   directory without it is not a checkpoint;
//! - `containers/<name>/`: each container's checkpoint, by its metadata
//!   name, in the layout of berth's `CheckpointContainer` archive (CRIU's
//!   images in `checkpoint/`, `config.dump`, `spec.dump`, `rootfs-diff.tar`,
//!   `deleted.files`, `stats-dump`, `dump.log`) — `tar -C
//!   containers/<name> -cf <name>.tar .` is that archive, for
//!   checkpointctl or a single-container restore.
//!
//! Every listed container is frozen (cgroup freezer) before the first is
//! dumped and thawed after the last, so their memory and files are of one
//! moment; they keep running. Nothing is written outside `output_path`,
//! and on error everything written there goes.
//!
//! Containers that share the pod's pid namespace are dumped each as its own
//! tree with that namespace external (berth's pod init is not dumped: the
//! restored pod has its own), and restored with their pids into the new
//! pod's. A process a container left orphaned to the pod init belongs to no
//! container's tree and is not restored.
//!
//! A pod with its own user namespace is restored into a new pod with the
//! same id maps (each container's images record them; other maps are
//! refused naming the field before anything is made): its containers join
//! the new pod's user namespace (see `berth_core`'s `checkpoint_userns`).
//!
//! Pod shapes not checkpointed yet (a clear FailedPrecondition before
//! anything is frozen): containers in the node's pid namespace or a target
//! container's. TCP connections between two
//! containers of the pod survive a restore (see `restore`'s fence).

use std::collections::BTreeMap;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tonic::{Request, Response, Status};

use super::container::{ContainerRecord, ContainerState, LiveContainer};
use super::container_checkpoint::{self as single, DumpRequest, PodMeta};
use super::error::RuntimeError;
use super::sandbox::{NsMode, SandboxRecord, SandboxState};
use crate::proto;
use crate::util::blocking;

mod restore;
pub(super) use restore::clear_restore_fences;

/// The manifest's file name.
pub const MANIFEST: &str = "pod.json";
/// The directory of the containers' checkpoints.
pub const CONTAINERS_DIR: &str = "containers";
/// The manifest format this build writes and reads.
pub const MANIFEST_VERSION: u32 = 1;
/// The most a manifest may weigh (it is read from a directory anybody
/// with the API may name).
const MAX_MANIFEST: u64 = 1 << 20;

/// `pod.json`: what a pod checkpoint holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodManifest {
    /// [`MANIFEST_VERSION`].
    pub version: u32,
    /// The runtime that wrote it (`berth`).
    pub runtime: String,
    /// RFC 3339.
    pub checkpointed_time: String,
    /// The pod's sandbox id, name, namespace, uid and attempt.
    pub pod: ManifestPod,
    /// Its RuntimeClass handler (`""`: the default).
    pub runtime_handler: String,
    /// How its namespaces were shared: `pod`, `container` or `node`.
    pub namespaces: ManifestNamespaces,
    /// Its IPs from the CNI result, primary first (a restored pod gets
    /// what its new CNI attachment gives it).
    pub ips: Vec<String>,
    /// Its `PodSandboxConfig` as kubelet sent it (protobuf, base64).
    #[serde(with = "crate::store::b64")]
    pub pod_config: Vec<u8>,
    /// The checkpointed containers in the order they are restored (their
    /// creation order).
    pub containers: Vec<ManifestContainer>,
}

/// The pod in a [`PodManifest`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestPod {
    /// Sandbox id.
    pub id: String,
    /// Metadata name.
    pub name: String,
    /// Metadata namespace.
    pub namespace: String,
    /// Metadata uid.
    pub uid: String,
    /// Metadata attempt.
    pub attempt: u32,
}

/// Namespace sharing in a [`PodManifest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestNamespaces {
    /// Network.
    pub network: String,
    /// PID.
    pub pid: String,
    /// IPC.
    pub ipc: String,
    /// Whether the pod had its own user namespace.
    pub user: bool,
}

/// One container in a [`PodManifest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ManifestContainer {
    /// Metadata name (its directory under `containers/`).
    pub name: String,
    /// Its id when checkpointed.
    pub id: String,
    /// Metadata attempt.
    pub attempt: u32,
    /// The image as requested.
    pub image: String,
    /// The image's id.
    pub image_ref: String,
}

fn ns_name(m: NsMode) -> String {
    match m {
        NsMode::Pod => "pod",
        NsMode::Container => "container",
        NsMode::Node => "node",
    }
    .into()
}

/// A container's directory name: its metadata name, which must be one plain
/// path component.
pub(super) fn container_dir_name(name: &str) -> Option<&str> {
    let ok = !name.is_empty()
        && name != "."
        && name != ".."
        && !name.contains(['/', '\0'])
        && name.len() <= 255;
    ok.then_some(name)
}

/// `output_path`: absolute, an existing directory (not through a symlink),
/// empty.
fn check_output(output: &str) -> Result<PathBuf, RuntimeError> {
    let bad = |reason: &str| RuntimeError::invalid("output_path", format!("{output:?} {reason}"));
    let p = Path::new(output);
    if output.is_empty() {
        return Err(RuntimeError::invalid("output_path", "must not be empty"));
    }
    if !p.is_absolute() || output.contains('\0') {
        return Err(bad("must be an absolute path"));
    }
    match std::fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err(bad("is not a directory (or is a symlink)")),
        Err(_) => return Err(bad("does not exist")),
    }
    let mut entries = std::fs::read_dir(p).map_err(|e| bad(&e.to_string()))?;
    if entries.next().is_some() {
        return Err(bad("is not empty"));
    }
    Ok(p.to_path_buf())
}

/// Refuses `options` keys: berth defines none.
pub(super) fn check_options(
    options: &std::collections::HashMap<String, String>,
) -> Result<(), RuntimeError> {
    let mut keys: Vec<&String> = options.keys().collect();
    keys.sort();
    match keys.first() {
        None => Ok(()),
        Some(k) => Err(RuntimeError::invalid(
            format!("options[{k:?}]"),
            "unknown option (berth defines none)",
        )),
    }
}

/// The pod and container shapes a pod checkpoint cannot hold yet.
fn check_shape(pod: &SandboxRecord, c: &ContainerRecord) -> Result<(), RuntimeError> {
    let refuse = |what: &str| {
        Err(RuntimeError::CheckpointShape {
            id: format!("container {}", c.id),
            reason: what.to_string(),
        })
    };
    let cfg = c.config();
    let pid = cfg
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .and_then(|s| s.namespace_options.as_ref())
        .map(|o| o.pid);
    // The pod's shared pid namespace (its init berth's) is dumped as
    // external with each container's tree and rejoined on restore; the
    // node's cannot be, and a target container's would tie one container's
    // restore to another's.
    let pid = match pid.map(proto::NamespaceMode::try_from) {
        _ if pod.pid == NsMode::Node => Some("the node's"),
        Some(Ok(proto::NamespaceMode::Target)) => Some("another container's (target)"),
        Some(Ok(proto::NamespaceMode::Node)) => Some("the node's"),
        _ => None,
    };
    if let Some(whose) = pid {
        return refuse(&format!("shares {whose} pid namespace"));
    }
    Ok(())
}

/// Removes what a failed checkpoint wrote into `output` (it was empty).
struct Output<'a> {
    dir: &'a Path,
    done: bool,
}

impl Drop for Output<'_> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        for e in std::fs::read_dir(self.dir).into_iter().flatten().flatten() {
            let p = e.path();
            let _ = match e.file_type() {
                Ok(t) if t.is_dir() => std::fs::remove_dir_all(&p),
                _ => std::fs::remove_file(&p),
            };
        }
    }
}

/// What one pod checkpoint needs from the service.
struct PodDump<'a> {
    containers: &'a super::container::Containers,
    criu: &'a Path,
    output: &'a Path,
    timeout: std::time::Duration,
}

/// Freezes every container, dumps each into `containers/<name>/`, thaws
/// them all, and writes the manifest (blocking).
fn dump_pod(
    d: &PodDump<'_>,
    pod: &SandboxRecord,
    recs: &[&ContainerRecord],
) -> Result<(), RuntimeError> {
    let mut out = Output {
        dir: d.output,
        done: false,
    };
    let cfg = pod.config();
    let meta = cfg.metadata.clone().unwrap_or_default();
    let pod_meta = PodMeta {
        id: pod.id.to_string(),
        name: meta.name.clone(),
        namespace: meta.namespace.clone(),
        uid: meta.uid.clone(),
    };
    let tasks: Vec<_> = recs.iter().map(|r| d.containers.task(r)).collect();
    let dir = d.output.join(CONTAINERS_DIR);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .map_err(|e| RuntimeError::io(&dir, e))?;
    let mut frozen = Vec::new();
    let mut result = Ok(());
    for (rec, task) in recs.iter().zip(&tasks) {
        match single::freeze(rec, &**task) {
            Ok(()) => frozen.push((*rec, task)),
            Err(e) => {
                result = Err(e);
                break;
            }
        }
    }
    let mut manifest_containers = Vec::new();
    if result.is_ok() {
        for (rec, task) in &frozen {
            let c = rec.config().metadata.unwrap_or_default();
            let cdir = dir.join(&c.name);
            let dumped = std::fs::DirBuilder::new()
                .mode(0o700)
                .create(&cdir)
                .map_err(|e| RuntimeError::io(&cdir, e))
                .and_then(|()| {
                    let req = DumpRequest {
                        task: &***task,
                        criu: d.criu,
                        pod: &pod_meta,
                        timeout: d.timeout,
                    };
                    single::dump_frozen(rec, &req, &cdir)
                });
            if let Err(e) = dumped {
                result = Err(e);
                break;
            }
            manifest_containers.push(ManifestContainer {
                name: c.name,
                id: rec.id.to_string(),
                attempt: c.attempt,
                image: rec.image.clone(),
                image_ref: rec.image_ref.clone(),
            });
        }
    }
    // Thawed whatever happened, each once.
    for (rec, task) in &frozen {
        let thawed = single::thaw(rec, &***task);
        if result.is_ok() {
            result = thawed;
        }
    }
    result?;
    let manifest = PodManifest {
        version: MANIFEST_VERSION,
        runtime: "berth".into(),
        checkpointed_time: crate::logs::rfc3339_nano(std::time::SystemTime::now()),
        pod: ManifestPod {
            id: pod.id.to_string(),
            name: meta.name,
            namespace: meta.namespace,
            uid: meta.uid,
            attempt: meta.attempt,
        },
        runtime_handler: pod.runtime_handler.clone(),
        namespaces: ManifestNamespaces {
            network: ns_name(pod.network),
            pid: ns_name(pod.pid),
            ipc: ns_name(pod.ipc),
            user: pod.userns.is_some(),
        },
        ips: pod.ips.clone(),
        pod_config: pod.config.clone(),
        containers: manifest_containers,
    };
    let bytes =
        serde_json::to_vec_pretty(&manifest).map_err(|e| RuntimeError::Internal(e.to_string()))?;
    let path = d.output.join(MANIFEST);
    crate::store::write_atomic(&path, &bytes).map_err(|e| RuntimeError::io(&path, e))?;
    out.done = true;
    Ok(())
}

/// Reads and checks `dir`'s manifest.
pub(super) fn read_manifest(dir: &Path) -> Result<PodManifest, RuntimeError> {
    use std::io::Read;
    let path = dir.join(MANIFEST);
    let bad = |reason: String| {
        RuntimeError::invalid(
            "checkpoint_path",
            format!("{} is not a pod checkpoint: {reason}", dir.display()),
        )
    };
    let file = std::fs::File::open(&path).map_err(|e| bad(format!("{MANIFEST}: {e}")))?;
    let mut bytes = Vec::new();
    file.take(MAX_MANIFEST + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| bad(format!("{MANIFEST}: {e}")))?;
    if bytes.len() as u64 > MAX_MANIFEST {
        return Err(bad(format!("{MANIFEST} is over {MAX_MANIFEST} bytes")));
    }
    let m: PodManifest =
        serde_json::from_slice(&bytes).map_err(|e| bad(format!("{MANIFEST}: {e}")))?;
    if m.version != MANIFEST_VERSION {
        return Err(bad(format!(
            "{MANIFEST} has format version {} (this berth reads {MANIFEST_VERSION})",
            m.version
        )));
    }
    if m.containers.is_empty() {
        return Err(bad(format!("{MANIFEST} lists no containers")));
    }
    let mut seen = std::collections::BTreeSet::new();
    for c in &m.containers {
        if container_dir_name(&c.name).is_none() || !seen.insert(c.name.as_str()) {
            return Err(bad(format!(
                "{MANIFEST} lists a container named {:?} (twice, or not a plain name)",
                c.name
            )));
        }
    }
    Ok(m)
}

impl super::RuntimeServiceImpl {
    /// `CheckpointPod`: see the module documentation.
    pub(in crate::runtime) async fn checkpoint_pod_rpc(
        &self,
        request: Request<proto::CheckpointPodRequest>,
    ) -> Result<Response<proto::CheckpointPodResponse>, Status> {
        let req = request.into_inner();
        check_options(&req.options)?;
        let output = check_output(&req.output_path)?;
        if req.container_ids.is_empty() {
            return Err(RuntimeError::invalid("container_ids", "must not be empty").into());
        }
        let mut ids: Vec<&str> = req.container_ids.iter().map(String::as_str).collect();
        ids.sort_unstable();
        if let Some(w) = ids.windows(2).find(|w| w[0] == w[1]) {
            return Err(RuntimeError::invalid(
                "container_ids",
                format!("{:?} is listed twice", w[0]),
            )
            .into());
        }
        let pod = self.locked_sandbox(&req.pod_sandbox_id).await?;
        if pod.state != SandboxState::Ready {
            return Err(RuntimeError::SandboxNotReady {
                id: pod.id.to_string(),
                reason: "is not ready",
            }
            .into());
        }
        if self.config.handlers.external(&pod.runtime_handler) {
            return Err(RuntimeError::CheckpointShape {
                id: format!("pod sandbox {}", pod.id),
                reason: format!(
                    "runs under the external runtime handler {:?}",
                    pod.runtime_handler
                ),
            }
            .into());
        }
        // Locked in id order, after the pod (as StopPodSandbox does).
        let mut locked: Vec<tokio::sync::OwnedMutexGuard<LiveContainer>> = Vec::new();
        let mut names = BTreeMap::new();
        for id in &ids {
            let rec = self.locked_container(id).await?;
            if rec.sandbox_id != pod.id {
                return Err(RuntimeError::invalid(
                    "container_ids",
                    format!("{id:?} is not a container of pod {}", pod.id),
                )
                .into());
            }
            RuntimeError::require(
                &rec,
                ContainerState::Running,
                "only running containers are checkpointed",
            )?;
            check_shape(&pod, &rec)?;
            let name = rec.config().metadata.unwrap_or_default().name;
            if container_dir_name(&name).is_none() {
                return Err(RuntimeError::invalid(
                    "container_ids",
                    format!("{id:?} has the name {name:?}, which cannot name its checkpoint"),
                )
                .into());
            }
            if let Some(other) = names.insert(name.clone(), rec.id.to_string()) {
                return Err(RuntimeError::invalid(
                    "container_ids",
                    format!("{other} and {id} are both named {name:?} (a restore matches by name)"),
                )
                .into());
            }
            locked.push(rec);
        }
        // Restored in the order they were created.
        locked.sort_by_key(|r| r.created_at);
        let (containers, criu) = (self.containers.clone(), self.criu.clone());
        let t0 = std::time::Instant::now();
        let pod_id = pod.id.to_string();
        let n = locked.len();
        blocking(move || {
            let recs: Vec<&ContainerRecord> = locked.iter().map(|r| r.record()).collect();
            dump_pod(
                &PodDump {
                    containers: &containers,
                    criu: &criu,
                    output: &output,
                    timeout: single::DEFAULT_TIMEOUT,
                },
                &pod,
                &recs,
            )
        })
        .await
        .inspect_err(
            |e| tracing::warn!(pod = %pod_id, error = %e.message(), "CheckpointPod failed"),
        )?;
        tracing::info!(pod = %pod_id, containers = n, took = ?t0.elapsed(), "pod checkpointed");
        Ok(Response::new(proto::CheckpointPodResponse {}))
    }
}

#[cfg(test)]
mod tests;
