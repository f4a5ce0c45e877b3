//! Taking a container apart for good (RemoveContainer, a failed create,
//! start-up recovery): its owner is asked to kill it and end, and only once
//! the owner is gone is what runtime-core left behind (cgroup, state
//! directory, stray processes) removed — here, the one place besides the
//! monitor itself that loads a container's runtime state (or, for an
//! external OCI runtime's container, asks that runtime to delete it).

use std::path::Path;
use std::time::Duration;

use crate::task::client::MonitorTask;
use crate::task::{Task, TaskError};

/// How long the monitor gets to record the killed container's exit.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(10);

/// Kills container `id` (whose monitor's directory is `dir`) through its
/// monitor, waits for the monitor to end, then destroys runtime-core's
/// state under `state_root`. Blocking; best effort (logged).
pub fn remove(dir: &Path, state_root: &Path, id: &str) {
    let task = MonitorTask::at(dir);
    match task.shutdown() {
        Ok(()) => match task.wait(SHUTDOWN_WAIT) {
            Ok(Some(_)) | Err(TaskError::Gone) => {}
            Ok(None) => tracing::warn!(id, "the monitor did not end after killing its container"),
            Err(e) => tracing::debug!(id, error = %e, "waiting for the monitor"),
        },
        Err(TaskError::Gone) => {}
        Err(e) => tracing::warn!(id, error = %e, "asking the monitor to kill its container"),
    }
    let spec = std::fs::read(dir.join(super::SPEC_FILE))
        .ok()
        .and_then(|b| serde_json::from_slice::<super::MonitorSpec>(&b).ok());
    match spec.map(|s| (s.oci, s.shim)) {
        Some((Some(rt), _)) => {
            if let Err(e) = super::oci::delete_leftover(&rt, dir, id) {
                tracing::debug!(id, error = %e, "nothing left in the OCI runtime");
            }
        }
        Some((None, Some(rt))) => super::shim::delete_leftover(&rt, dir, id),
        _ => destroy_leftovers(state_root, id),
    }
}

/// Destroys what is left of runtime-core's container once its monitor has
/// ended (a monitor killed with SIGKILL leaves its container running: it is
/// killed here).
fn destroy_leftovers(state_root: &Path, id: &str) {
    match berth_core::Container::load(state_root, id) {
        Ok(c) => {
            let _ = c.signal(nix::sys::signal::Signal::SIGKILL as i32);
            if let Err(e) = c.destroy() {
                tracing::warn!(id, error = %e, "destroying container state");
            }
        }
        Err(e) => tracing::debug!(id, error = %e, "no runtime state to destroy"),
    }
}
