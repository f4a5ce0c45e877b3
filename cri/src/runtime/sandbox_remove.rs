//! `RemovePodSandbox`: stop if needed, delete the pod's files and record,
//! free its name. Removing what is already gone is not an error.

use super::error::RuntimeError;
use super::sandbox::{SandboxRecord, Sandboxes};
use super::sandbox_stop;

/// Removes a sandbox whose lock the caller holds (blocking).
pub(super) fn remove(
    sandboxes: &Sandboxes,
    rec: &mut SandboxRecord,
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
