//! `UpdateContainerResources` and `UpdatePodSandboxResources`.
//!
//! Container resources are checked with the same rules as at create (an
//! unsupported or out-of-range value is refused, naming the field), written
//! to the live container's cgroup, then kept in the record so
//! `ContainerStatus` reports what is in force. A container that is no longer
//! live only has its record updated, as containerd does.

use berth_core::cgroups::Resources;

use crate::task::{FailureKind, TaskError, TaskFailure};

use super::container::{Containers, LiveContainer};
use super::error::RuntimeError;
use crate::proto;
use crate::util::blocking;
use tonic::Status;

/// The limits to write, checked (pure).
pub(super) fn plan(
    res: Option<&proto::LinuxContainerResources>,
) -> Result<Resources, RuntimeError> {
    let res = res.ok_or_else(|| RuntimeError::invalid("linux", "must be set"))?;
    // What CreateContainer refuses is refused here too (the live process's
    // oom_score_adj is not changed by an update, as in containerd, but the
    // recorded value must be one a create would take).
    crate::spec::check_oom_score_adj(Some(res)).map_err(|e| rename(e.into()))?;
    crate::spec::cgroup_limits(res).map_err(|e| rename(e.into()))
}

/// The create path names `config.linux.resources.<field>`; here the
/// resources are the request's `linux`.
fn rename(e: RuntimeError) -> RuntimeError {
    match e {
        RuntimeError::InvalidArgument { field, reason } => RuntimeError::InvalidArgument {
            field: field.replacen("config.linux.resources", "linux", 1),
            reason,
        },
        other => other,
    }
}

/// Applies `limits` (through the container's monitor) and records `res`
/// (blocking).
pub(super) fn update(
    containers: &Containers,
    rec: &mut LiveContainer,
    limits: &Resources,
    res: proto::LinuxContainerResources,
) -> Result<(), RuntimeError> {
    if rec.state.is_live() {
        match containers.task(rec).update(limits) {
            Ok(()) => {}
            // Exited meanwhile: only the record changes.
            Err(TaskError::Gone) => {}
            // A value this kernel or host refuses (EINVAL; ERANGE for a CPU
            // it does not have): the caller's, named by the file.
            Err(TaskError::Failed(TaskFailure {
                kind: FailureKind::Refused { path, value },
                ..
            })) => {
                return Err(RuntimeError::invalid(
                    "linux",
                    format!("the kernel refuses {value:?} for {path}"),
                ))
            }
            Err(e) => return Err(RuntimeError::task(&rec.id)(e)),
        }
    }
    let mut config = rec.config();
    config.linux.get_or_insert_with(Default::default).resources = Some(res);
    rec.config = prost::Message::encode_to_vec(&config);
    containers.registry.save(rec)
}

impl super::RuntimeServiceImpl {
    /// UpdateContainerResources: checked as at create, written to the live
    /// cgroup, kept in the record.
    pub(super) async fn update_container_resources_rpc(
        &self,
        req: proto::UpdateContainerResourcesRequest,
    ) -> Result<(), Status> {
        let limits = plan(req.linux.as_ref())?;
        let entry = self
            .containers
            .registry
            .get(&req.container_id, "container_id")?;
        let mut rec = entry.lock_owned().await;
        if rec.removed {
            return Err(self.containers.registry.not_found(&req.container_id).into());
        }
        self.containers.refresh(&mut rec);
        let containers = self.containers.clone();
        let res = req.linux.unwrap_or_default();
        blocking(move || update(&containers, &mut rec, &limits, res)).await?;
        Ok(())
    }

    /// kubelet has already resized the pod cgroup it owns; the runtime is
    /// told so that it can act (containerd forwards it to NRI plugins).
    /// berth keeps no pod-level limits of its own, so it checks the pod
    /// exists and the values are valid.
    pub(super) async fn update_pod_sandbox_resources_rpc(
        &self,
        req: proto::UpdatePodSandboxResourcesRequest,
    ) -> Result<(), Status> {
        for (field, res) in [("overhead", &req.overhead), ("resources", &req.resources)] {
            if let Some(r) = res {
                plan(Some(r)).map_err(|e| match e {
                    RuntimeError::InvalidArgument { field: f, reason } => {
                        RuntimeError::InvalidArgument {
                            field: f.replacen("linux", field, 1),
                            reason,
                        }
                    }
                    other => other,
                })?;
            }
        }
        self.locked_sandbox(&req.pod_sandbox_id).await?;
        Ok(())
    }
}
