//! `StartContainer`: let the waiting init `execve` (runtime-core's
//! `release`, from this process; the monitor keeps owning the container).

use super::container::{ContainerRecord, Containers};
use super::error::RuntimeError;
use crate::util::now_nanos;

/// Starts a Created container whose lock the caller holds (blocking).
pub(super) fn start(
    containers: &Containers,
    rec: &mut ContainerRecord,
) -> Result<(), RuntimeError> {
    if rec.removed {
        return Err(containers.registry.not_found(rec.id.as_str()));
    }
    rec.refresh();
    let next = rec.state.start()?;
    let mut c = berth_core::Container::load(&containers.runtime_root, rec.id.as_str())
        .map_err(|e| RuntimeError::FailedPrecondition(format!("container {}: {e}", rec.id)))?;
    // Released by a daemon that died before it recorded it (the crash
    // point "start:released"): the start happened; record it.
    if c.status() == berth_core::Status::Running {
        rec.state = next;
        rec.started_at = c
            .state()
            .init
            .as_ref()
            .and_then(|i| i.started_unix_nanos)
            .and_then(|n| i64::try_from(n).ok())
            .unwrap_or_else(now_nanos);
        return containers.registry.save(rec);
    }
    // Stamped before the release: a process that exits at once must not
    // look as if it had finished before it started.
    let started_at = now_nanos();
    c.release().map_err(|e| {
        RuntimeError::FailedPrecondition(format!("starting container {}: {e}", rec.id))
    })?;
    crate::util::crash_point("start:released");
    rec.state = next;
    rec.started_at = started_at;
    containers.registry.save(rec)
}
