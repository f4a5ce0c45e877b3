//! `StopContainer`: the stop signal (image `StopSignal`, else SIGTERM), then
//! SIGKILL once `timeout` seconds have passed. Idempotent: a stopped
//! container stays stopped, and one that does not exist (never did, or
//! already removed) is success, as api.proto asks and containerd 2 answers.

use std::time::{Duration, Instant};

use tonic::Status;

use super::container::{ContainerRecord, Containers};
use super::error::RuntimeError;
use super::RuntimeServiceImpl;

impl RuntimeServiceImpl {
    /// `StopContainer`.
    pub(super) async fn stop_container_rpc(&self, id: &str, timeout: i64) -> Result<(), Status> {
        let Some(entry) = self.containers.registry.find(id, "container_id")? else {
            return Ok(());
        };
        let mut rec = entry.lock().await;
        if rec.removed {
            return Ok(());
        }
        stop(&self.containers, &mut rec, timeout).await?;
        Ok(())
    }
}

/// How long to wait for the exit record after SIGKILL.
const KILL_GRACE: Duration = Duration::from_secs(10);

fn signal(containers: &Containers, rec: &ContainerRecord, sig: i32) {
    if let Ok(c) = berth_core::Container::load(&containers.runtime_root, rec.id.as_str()) {
        if let Err(e) = c.signal(sig) {
            tracing::debug!(id = %rec.id, sig, error = %e, "signal");
        }
    }
}

async fn wait_exit(rec: &mut ContainerRecord, deadline: Instant) -> bool {
    loop {
        if rec.refresh() || !rec.state.is_live() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Stops a container whose lock the caller holds.
pub(super) async fn stop(
    containers: &Containers,
    rec: &mut ContainerRecord,
    timeout: i64,
) -> Result<(), RuntimeError> {
    if rec.removed {
        return Err(containers.registry.not_found(rec.id.as_str()));
    }
    rec.refresh();
    if rec.state.is_live() {
        let grace = Duration::from_secs(u64::try_from(timeout).unwrap_or(0));
        if !grace.is_zero() {
            signal(containers, rec, rec.stop_signal);
        }
        crate::util::crash_point("stop:signalled");
        if !wait_exit(rec, crate::util::deadline_after(grace)).await {
            signal(containers, rec, nix::sys::signal::Signal::SIGKILL as i32);
            if !wait_exit(rec, crate::util::deadline_after(KILL_GRACE)).await {
                return Err(RuntimeError::Internal(format!(
                    "container {} did not exit {}s after SIGKILL",
                    rec.id,
                    KILL_GRACE.as_secs()
                )));
            }
        }
    }
    containers.registry.save(rec)
}
