//! `RestorePod`: a new pod from the request's config (new id, a new CNI
//! attachment asking for the checkpointed pod's IPs — `CNI_ARGS` `IP=`,
//! which host-local and static honour — and taking any when the plugin
//! cannot give them),
//! then every checkpointed container restored into it in the checkpoint's
//! order, each through CreateContainer's restore path — the same rootfs
//! image lookup, rootfs changes and, when it starts, the same check of the
//! restored tasks against the requested security context. The containers
//! are left Created; StartContainer runs them (CRIU restore), as after a
//! container restore. A failure at any step removes the new pod and what
//! was created in it. `checkpoint_path` is only read.
//!
//! While the containers are restored one after another, a pod whose
//! checkpoint holds established TCP connections has its network namespace
//! fenced ([`RestoreFence`]): a connection between two of its containers
//! would otherwise be reset by the first restored end's probe, sent before
//! the other end exists.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use berth_core::container::checkpoint::RestoreFence;
use tonic::{Request, Response, Status};

use super::{check_options, container_dir_name, read_manifest, PodManifest, CONTAINERS_DIR};
use crate::proto;
use crate::runtime::error::RuntimeError;
use crate::util::blocking;

/// `checkpoint_path`: absolute, a directory.
fn check_path(path: &str) -> Result<PathBuf, RuntimeError> {
    let bad = |reason: &str| RuntimeError::invalid("checkpoint_path", format!("{path:?} {reason}"));
    if path.is_empty() {
        return Err(RuntimeError::invalid(
            "checkpoint_path",
            "must not be empty",
        ));
    }
    let p = Path::new(path);
    if !p.is_absolute() || path.contains('\0') {
        return Err(bad("must be an absolute path"));
    }
    if !p.is_dir() {
        return Err(bad("is not a directory"));
    }
    Ok(p.to_path_buf())
}

/// Pairs each checkpointed container with its config (matched by metadata
/// name), in the checkpoint's order: every checkpointed container needs
/// exactly one, and a config naming none is refused.
pub(super) fn match_configs(
    manifest: &PodManifest,
    configs: Vec<proto::ContainerConfig>,
) -> Result<Vec<proto::ContainerConfig>, RuntimeError> {
    let mut by_name: HashMap<String, proto::ContainerConfig> = HashMap::new();
    for (i, c) in configs.into_iter().enumerate() {
        let field = format!("container_configs[{i}].metadata.name");
        let name = c
            .metadata
            .as_ref()
            .map(|m| m.name.clone())
            .unwrap_or_default();
        if name.is_empty() {
            return Err(RuntimeError::invalid(field, "must be set"));
        }
        if !manifest.containers.iter().any(|m| m.name == name) {
            let known: Vec<&str> = manifest
                .containers
                .iter()
                .map(|m| m.name.as_str())
                .collect();
            return Err(RuntimeError::invalid(
                field,
                format!("{name:?} was not checkpointed (the checkpoint holds {known:?})"),
            ));
        }
        if by_name.insert(name.clone(), c).is_some() {
            return Err(RuntimeError::invalid(
                field,
                format!("{name:?} is given twice"),
            ));
        }
    }
    manifest
        .containers
        .iter()
        .map(|m| {
            let mut c = by_name.remove(&m.name).ok_or_else(|| {
                RuntimeError::invalid(
                    "container_configs",
                    format!("no config for the checkpointed container {:?}", m.name),
                )
            })?;
            // The image it ran: CreateContainer's restore path takes the
            // rootfs image from the checkpoint either way.
            let image = c.image.get_or_insert_with(Default::default);
            if image.image.is_empty() {
                image.image = m.image.clone();
            }
            Ok(c)
        })
        .collect()
}

impl crate::runtime::RuntimeServiceImpl {
    /// `RestorePod`: see the module documentation.
    pub(in crate::runtime) async fn restore_pod_rpc(
        &self,
        request: Request<proto::RestorePodRequest>,
    ) -> Result<Response<proto::RestorePodResponse>, Status> {
        let req = request.into_inner();
        check_options(&req.options)?;
        let dir = check_path(&req.checkpoint_path)?;
        let config = req
            .config
            .ok_or_else(|| RuntimeError::invalid("config", "must be set"))?;
        if !self.config.restore {
            return Err(RuntimeError::RestoreDisabled {
                field: "checkpoint_path",
                image: req.checkpoint_path,
            }
            .into());
        }
        if self.config.handlers.external(&req.runtime_handler) {
            return Err(RuntimeError::invalid(
                "runtime_handler",
                format!(
                    "{:?} is an external runtime, which does not restore checkpoints",
                    req.runtime_handler
                ),
            )
            .into());
        }
        let dir2 = dir.clone();
        let manifest = blocking(move || read_manifest(&dir2)).await?;
        let configs = match_configs(&manifest, req.container_configs)?;
        // Each container's checkpoint is checked before the pod is made.
        let dirs: Vec<PathBuf> = manifest
            .containers
            .iter()
            .map(|m| {
                let name = container_dir_name(&m.name).unwrap_or_default();
                dir.join(CONTAINERS_DIR).join(name)
            })
            .collect();
        // The new pod's user namespace must have the checkpointed one's
        // maps (each container's images record them): refused here, before
        // a pod is made, as CreateContainer would refuse each container.
        let userns = crate::runtime::sandbox_plan::userns_of(
            &config
                .linux
                .as_ref()
                .and_then(|l| l.security_context.as_ref())
                .and_then(|s| s.namespace_options.clone())
                .unwrap_or_default(),
        )?;
        let dirs2 = dirs.clone();
        let criu = self.criu.clone();
        blocking(move || {
            if userns.is_some() {
                crate::runtime::container_checkpoint::check_criu_joins_userns(&criu)?;
            }
            dirs2.iter().try_for_each(|d| {
                let what = format!("{} is not a container checkpoint", d.display());
                crate::runtime::container_checkpoint::open(d, &what)
                    .map_err(|e| match e {
                        RuntimeError::InvalidArgument { reason, .. } => {
                            RuntimeError::invalid("checkpoint_path", reason)
                        }
                        other => other,
                    })?
                    .check_user_namespace(userns.as_ref())
            })
        })
        .await?;

        let t0 = std::time::Instant::now();
        // The old IPs where the network plugin can give them.
        let old_ips = manifest
            .ips
            .iter()
            .filter_map(|ip| ip.parse().ok())
            .collect();
        let pod_id = self
            .run_pod_sandbox(
                proto::RunPodSandboxRequest {
                    config: Some(config),
                    runtime_handler: req.runtime_handler,
                },
                old_ips,
            )
            .await?
            .pod_sandbox_id;
        let mut fence = self.raise_fence(&pod_id, &dirs).await;
        if fence.is_some() {
            // Not in CRASH_POINTS (a pod's plain life never gets here):
            // cri_pod_checkpoint's crash test uses it.
            crate::util::crash_point("restore_pod:fenced");
        }
        let mut restored = Vec::new();
        for ((m, config), d) in manifest.containers.iter().zip(configs).zip(dirs) {
            match self.create_container_in(&pod_id, config, Some(d)).await {
                Ok(rec) => restored.push(proto::RestoredContainer {
                    name: m.name.clone(),
                    container_id: rec.id.to_string(),
                }),
                Err(e) => {
                    tracing::warn!(pod = %pod_id, container = %m.name, error = %e.message(), "RestorePod failed; removing the new pod");
                    lower_fence(&pod_id, fence.take()).await;
                    self.discard_pod(&pod_id).await;
                    return Err(e);
                }
            }
        }
        lower_fence(&pod_id, fence).await;
        tracing::info!(pod = %pod_id, from = %dir.display(), containers = restored.len(), took = ?t0.elapsed(), "pod restored (containers created)");
        Ok(Response::new(proto::RestorePodResponse {
            pod_sandbox_id: pod_id,
            restored_containers: restored,
        }))
    }

    /// Raises a [`RestoreFence`] in the new pod's network namespace when
    /// more than one container is restored and one of them holds an
    /// established TCP connection (CRIU's `tcp-stream-*.img`). A pod on the
    /// node's network is never fenced. A fence that cannot be raised (no
    /// `iptables`) is logged and the restore goes on: a connection between
    /// two of the pod's containers may then be reset.
    ///
    /// The pod's directory holds [`RESTORE_FENCE_FILE`] while the fence may
    /// be up, so a daemon that dies meanwhile lowers it when it starts
    /// again ([`clear_restore_fences`]).
    async fn raise_fence(&self, pod_id: &str, dirs: &[PathBuf]) -> Option<PodFence> {
        if dirs.len() < 2 {
            return None;
        }
        let (netns, marker) = {
            let pod = self.locked_sandbox(pod_id).await.ok()?;
            if pod.network != crate::runtime::sandbox::NsMode::Pod {
                return None;
            }
            let net = pod.namespaces.as_ref()?.net.clone()?;
            (net, pod.dir.join(RESTORE_FENCE_FILE))
        };
        let dirs = dirs.to_vec();
        let marker2 = marker.clone();
        let raised = tokio::task::spawn_blocking(move || {
            let tcp = dirs.iter().any(|d| {
                holds_tcp_streams(&d.join(crate::runtime::container_checkpoint::CHECKPOINT_DIR))
            });
            tcp.then(|| {
                crate::store::write_atomic(&marker2, b"")
                    .map_err(|source| berth_core::ContainerError::StateIo {
                        path: marker2.clone(),
                        source,
                    })
                    .and_then(|()| RestoreFence::raise(&netns))
                    .inspect_err(|_| {
                        let _ = std::fs::remove_file(&marker2);
                    })
            })
        })
        .await
        .ok()??;
        match raised {
            Ok(fence) => {
                if let Some(why) = &fence.ipv6_skipped {
                    tracing::info!(pod = %pod_id, reason = %why, "restore fence without IPv6");
                }
                Some(PodFence { fence, marker })
            }
            Err(e) => {
                tracing::warn!(pod = %pod_id, error = %e, "no restore fence: TCP connections between the pod's containers may be reset");
                None
            }
        }
    }

    /// Stops and removes a pod a failed RestorePod made, with its
    /// containers; failures are logged (the pod stays listed, NotReady, for
    /// kubelet's garbage collection).
    async fn discard_pod(&self, id: &str) {
        let removed = match self.stop_pod(id).await {
            Ok(()) => self
                .remove_pod_sandbox_rpc(Request::new(proto::RemovePodSandboxRequest {
                    pod_sandbox_id: id.to_string(),
                }))
                .await
                .map(drop),
            Err(e) => Err(e),
        };
        if let Err(e) = removed {
            tracing::warn!(pod = %id, error = %e.message(), "a failed RestorePod's pod could not be removed");
        }
    }
}

/// Whether a CRIU images directory holds an established TCP connection.
fn holds_tcp_streams(images: &Path) -> bool {
    std::fs::read_dir(images)
        .into_iter()
        .flatten()
        .flatten()
        .any(|e| e.file_name().to_string_lossy().starts_with("tcp-stream-"))
}

/// In a pod's directory while RestorePod's fence may be up.
pub(in crate::runtime) const RESTORE_FENCE_FILE: &str = "restore-fence";

/// A raised fence and its marker file.
struct PodFence {
    fence: RestoreFence,
    marker: PathBuf,
}

/// Lowers `fence` (blocking work, off the async threads), then removes its
/// marker; a failure is logged (the marker stays for the next start-up).
async fn lower_fence(pod_id: &str, fence: Option<PodFence>) {
    let Some(PodFence { fence, marker }) = fence else {
        return;
    };
    let lowered = tokio::task::spawn_blocking(move || {
        fence.lower()?;
        let _ = std::fs::remove_file(&marker);
        Ok::<(), berth_core::ContainerError>(())
    })
    .await;
    match lowered {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::warn!(pod = %pod_id, error = %e, "lowering the restore fence failed")
        }
        Err(e) => tracing::warn!(pod = %pod_id, error = %e, "lowering the restore fence failed"),
    }
}

/// At start-up: lowers the fences of RestorePods a dead daemon left
/// raised — the pods (directory, network namespace) whose directory holds
/// [`RESTORE_FENCE_FILE`].
pub(in crate::runtime) fn clear_restore_fences(pods: &[(PathBuf, Option<PathBuf>)]) {
    for (dir, netns) in pods {
        let marker = dir.join(RESTORE_FENCE_FILE);
        if !marker.exists() {
            continue;
        }
        if let Some(ns) = netns {
            if let Err(e) = RestoreFence::clear(ns) {
                tracing::warn!(pod = %dir.display(), error = %e, "clearing a restore fence");
                continue;
            }
        }
        let _ = std::fs::remove_file(&marker);
        tracing::warn!(pod = %dir.display(), "lowered the restore fence a daemon crash left");
    }
}
