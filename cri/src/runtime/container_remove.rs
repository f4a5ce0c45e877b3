//! `RemoveContainer`: kill if needed, remove runtime state, the writable
//! layer (and the image lease), the files and the record. Idempotent.

use super::container::{Containers, LiveContainer};
use super::container_create::kill_and_destroy;
use super::container_stop;
use super::error::RuntimeError;
use crate::image::ImageStore;
use crate::proto;
use tonic::{Request, Response, Status};

/// Removes a container whose lock the caller holds.
pub(super) async fn remove(
    containers: &Containers,
    images: &ImageStore,
    rec: &mut LiveContainer,
) -> Result<(), RuntimeError> {
    if rec.removed {
        return Ok(());
    }
    container_stop::stop(containers, rec, 0).await?;
    kill_and_destroy(containers, rec);
    crate::util::crash_point("remove:destroyed");
    let cid = berth_core::ContainerId::new(rec.id.as_str())
        .map_err(|e| RuntimeError::Internal(e.to_string()))?;
    images.remove_container(&cid)?;
    crate::util::crash_point("remove:layer_removed");
    match std::fs::remove_dir_all(&rec.dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(RuntimeError::io(&rec.dir, e))
        }
        _ => {}
    }
    containers.registry.remove(rec)
}

impl super::RuntimeServiceImpl {
    pub(in crate::runtime) async fn remove_container_rpc(
        &self,
        request: Request<proto::RemoveContainerRequest>,
    ) -> Result<Response<proto::RemoveContainerResponse>, Status> {
        let Some(entry) = self
            .containers
            .registry
            .find(&request.into_inner().container_id, "container_id")?
        else {
            return Ok(Response::new(proto::RemoveContainerResponse {}));
        };
        let (id, pod) = {
            let mut rec = entry.lock().await;
            if rec.removed {
                return Ok(Response::new(proto::RemoveContainerResponse {}));
            }
            remove(&self.containers, &self.images, &mut rec).await?;
            self.sampler.forget(rec.id.as_str());
            (rec.id.clone(), rec.sandbox_id.clone())
        };
        self.emit(&id, &pod, proto::ContainerEventType::ContainerDeletedEvent)
            .await;
        Ok(Response::new(proto::RemoveContainerResponse {}))
    }
}
