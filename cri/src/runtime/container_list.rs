//! `ListContainers`: every container, brought up to date with its monitor,
//! that the filter selects.

use tonic::Status;

use super::container_status;
use crate::proto;

impl super::RuntimeServiceImpl {
    /// The containers `filter` selects.
    pub(super) async fn list_containers_rpc(
        &self,
        filter: &proto::ContainerFilter,
    ) -> Result<Vec<proto::Container>, Status> {
        let mut containers = Vec::new();
        for entry in self.containers.registry.all() {
            let mut rec = entry.lock().await;
            if rec.removed {
                continue;
            }
            self.containers.refresh_and_save(&mut rec)?;
            if container_status::matches(&rec, filter) {
                containers.push(rec.to_cri());
            }
        }
        Ok(containers)
    }
}
