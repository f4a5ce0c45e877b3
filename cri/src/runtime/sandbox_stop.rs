//! `StopPodSandbox`: release the pod's network and namespaces; the record
//! stays (NotReady) until `RemovePodSandbox`. Idempotent.

use berth_core::pin;

use super::error::RuntimeError;
use super::sandbox::{SandboxRecord, SandboxState, Sandboxes};

/// Stops a sandbox whose lock the caller holds (blocking: unmounts).
pub(super) fn stop(sandboxes: &Sandboxes, rec: &mut SandboxRecord) -> Result<(), RuntimeError> {
    if rec.removed {
        return Err(RuntimeError::NotFound {
            kind: "pod sandbox",
            id: rec.id.to_string(),
        });
    }
    if rec.state == SandboxState::NotReady && rec.namespaces.is_none() {
        return Ok(());
    }
    // Containers of the pod are stopped here once the container RPCs exist;
    // none can be created yet. The network is loopback only (CNI is its own
    // issue): it goes with the namespace.
    pin::unpin(&rec.dir.join("ns"))?;
    rec.namespaces = None;
    rec.state = SandboxState::NotReady;
    sandboxes.registry.save(rec)
}
