//! `StopContainer`: the stop signal (image `StopSignal`, else SIGTERM), then
//! SIGKILL once `timeout` seconds have passed. Idempotent: a stopped
//! container stays stopped, and one that does not exist (never did, or
//! already removed) is success, as api.proto asks and containerd 2 answers.

use std::time::Duration;

use tonic::Status;

use super::container::{Containers, LiveContainer};
use super::error::RuntimeError;
use super::RuntimeServiceImpl;
use crate::store::Durability;
use crate::task::{ExitRecord, Task, TaskError};

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

/// Stops a container whose lock the caller holds.
pub(super) async fn stop(
    containers: &Containers,
    rec: &mut LiveContainer,
    timeout: i64,
) -> Result<(), RuntimeError> {
    if rec.removed {
        return Err(containers.registry.not_found(rec.id.as_str()));
    }
    // An exit already recorded; otherwise the stop itself finds out whether
    // the monitor is still there (no separate liveness check first).
    let mut changed = rec.state.is_live() && rec.take_recorded_exit();
    if rec.state.is_live() {
        let grace = Duration::from_secs(u64::try_from(timeout).unwrap_or(0));
        let task = containers.task(rec);
        let (id, sig) = (rec.id.to_string(), rec.stop_signal);
        tokio::task::spawn_blocking(move || stop_task(&*task, &id, sig, grace))
            .await
            .map_err(|e| RuntimeError::Internal(format!("stop: {e}")))??;
        // The monitor wrote the record before it said so, or it is gone
        // (then the record is there, or the container is Unknown).
        changed |= containers.refresh(rec);
    }
    // An exit: durable in the monitor's exit record for a daemon restart,
    // moot after a power loss.
    match changed {
        true => containers.registry.save_with(rec, Durability::Atomic),
        false => Ok(()),
    }
}

/// The stop signal, the exit awaited for `grace` (told by the monitor, not
/// polled), then SIGKILL (blocking).
fn stop_task(task: &dyn Task, id: &str, sig: i32, grace: Duration) -> Result<(), RuntimeError> {
    let gone_is_done = |r: Result<Option<ExitRecord>, TaskError>| match r {
        Ok(exit) => Ok(exit.is_some()),
        Err(TaskError::Gone) => Ok(true),
        Err(e) => Err(RuntimeError::task(id)(e)),
    };
    if !grace.is_zero() {
        let exited = task.signal_and_wait(sig, grace);
        crate::util::crash_point("stop:signalled");
        if gone_is_done(exited)? {
            return Ok(());
        }
    } else {
        crate::util::crash_point("stop:signalled");
    }
    let killed = task.signal_and_wait(nix::sys::signal::Signal::SIGKILL as i32, KILL_GRACE);
    if gone_is_done(killed)? {
        return Ok(());
    }
    Err(RuntimeError::Internal(format!(
        "container {id} did not exit {}s after SIGKILL",
        KILL_GRACE.as_secs()
    )))
}
