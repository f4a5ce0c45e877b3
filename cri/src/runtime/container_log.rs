//! `ReopenContainerLog`: kubelet rotated the container's log file; its
//! monitor, which writes it, opens the file at the path again.

use tonic::Status;

use super::container::ContainerState;
use super::error::RuntimeError;

impl super::RuntimeServiceImpl {
    /// Asks the running container's monitor to reopen its log.
    pub(super) async fn reopen_container_log_rpc(&self, id: &str) -> Result<(), Status> {
        let entry = self.containers.registry.get(id, "container_id")?;
        let mut rec = entry.lock().await;
        self.containers.refresh(&mut rec);
        if rec.removed {
            return Err(self.containers.registry.not_found(id).into());
        }
        RuntimeError::require(
            &rec,
            ContainerState::Running,
            "its log is reopened while it runs",
        )?;
        let task = self.containers.task(&rec);
        let id = rec.id.to_string();
        crate::util::blocking(move || task.reopen_log().map_err(RuntimeError::task(id))).await
    }
}
