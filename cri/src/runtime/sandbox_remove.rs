//! `RemovePodSandbox`: stop if needed, delete the pod's files and record,
//! free its name. Removing what is already gone is not an error.

use super::error::RuntimeError;
use super::sandbox::{LiveSandbox, Sandboxes};
use super::sandbox_stop;
use crate::proto;
use crate::util::blocking;
use tonic::{Request, Response, Status};

/// Removes a sandbox whose lock the caller holds (blocking).
pub(super) fn remove(
    sandboxes: &Sandboxes,
    rec: &mut LiveSandbox,
    cni: Option<&crate::cni::Cni>,
) -> Result<(), RuntimeError> {
    if rec.removed {
        return Ok(());
    }
    sandbox_stop::stop(sandboxes, rec, cni)?;
    crate::util::crash_point("stop_pod:stopped");
    match std::fs::remove_dir_all(&rec.dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(RuntimeError::io(&rec.dir, e))
        }
        _ => {}
    }
    crate::util::crash_point("remove_pod:files_removed");
    sandboxes.registry.remove(rec)
}

impl super::RuntimeServiceImpl {
    pub(in crate::runtime) async fn remove_pod_sandbox_rpc(
        &self,
        request: Request<proto::RemovePodSandboxRequest>,
    ) -> Result<Response<proto::RemovePodSandboxResponse>, Status> {
        let Some(entry) = self
            .sandboxes
            .registry
            .find(&request.into_inner().pod_sandbox_id, "pod_sandbox_id")?
        else {
            return Ok(Response::new(proto::RemovePodSandboxResponse {}));
        };
        let mut rec = entry.lock_owned().await;
        let mut deleted = Vec::new();
        for c in self.containers.registry.members(&rec.id) {
            let mut c = c.lock().await;
            if !c.removed {
                super::container_remove::remove(&self.containers, &self.images, &mut c).await?;
                self.sampler.forget(c.id.as_str());
                deleted.push(c.id.clone());
            }
        }
        self.sampler.forget(rec.id.as_str());
        let (sandboxes, cni) = (self.sandboxes.clone(), self.cni.clone());
        let pod = rec.id.clone();
        blocking(move || remove(&sandboxes, &mut rec, cni.as_deref())).await?;
        for id in deleted.iter().chain([&pod]) {
            self.emit(id, &pod, proto::ContainerEventType::ContainerDeletedEvent)
                .await;
        }
        Ok(Response::new(proto::RemovePodSandboxResponse {}))
    }
}
