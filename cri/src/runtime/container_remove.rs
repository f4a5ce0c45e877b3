//! `RemoveContainer`: kill if needed, remove runtime state, the writable
//! layer (and the image lease), the files and the record. Idempotent.

use super::container::{ContainerRecord, Containers};
use super::container_create::kill_and_destroy;
use super::container_stop;
use super::error::RuntimeError;
use crate::image::ImageStore;

/// Removes a container whose lock the caller holds.
pub(super) async fn remove(
    containers: &Containers,
    images: &ImageStore,
    rec: &mut ContainerRecord,
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
