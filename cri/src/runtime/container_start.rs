//! `StartContainer`: the container's monitor releases the waiting init
//! (the monitor owns the container; the daemon only asks).

use super::container::{Containers, LiveContainer};
use super::error::RuntimeError;

/// Starts a Created container whose lock the caller holds (blocking).
pub(super) fn start(containers: &Containers, rec: &mut LiveContainer) -> Result<(), RuntimeError> {
    if rec.removed {
        return Err(containers.registry.not_found(rec.id.as_str()));
    }
    containers.refresh(rec);
    RuntimeError::require(
        rec,
        super::container::ContainerState::Created,
        super::container::START_NEEDS,
    )?;
    // Idempotent in the monitor: a daemon that died after the release but
    // before it recorded it (the crash point "start:released") learns the
    // start time it missed.
    let started_at = containers
        .task(rec)
        .start()
        .map_err(RuntimeError::task(&rec.id))?;
    crate::util::crash_point("start:released");
    rec.started(started_at)?;
    containers.registry.save(rec)
}

impl super::RuntimeServiceImpl {
    /// `StartContainer`, then the started event.
    pub(super) async fn start_container_rpc(&self, id: &str) -> Result<(), tonic::Status> {
        let entry = self.containers.registry.get(id, "container_id")?;
        let mut rec = entry.lock_owned().await;
        let (id, pod) = (rec.id.clone(), rec.sandbox_id.clone());
        let containers = self.containers.clone();
        crate::util::blocking(move || start(&containers, &mut rec)).await?;
        self.emit(
            &id,
            &pod,
            crate::proto::ContainerEventType::ContainerStartedEvent,
        )
        .await;
        Ok(())
    }
}
