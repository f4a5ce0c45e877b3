//! `StopPodSandbox`: release the pod's network and namespaces; the record
//! stays (NotReady) until `RemovePodSandbox`. Idempotent: CNI DEL runs once
//! (its cache entry goes when it succeeds); a failed DEL fails the call and
//! keeps the netns, so the next Stop or Remove retries it. A pod that does
//! not exist (never did, or already removed) is stopped already: success, as
//! api.proto asks ("must not return an error if all relevant resources have
//! already been reclaimed") and containerd 2 answers.

use berth_core::pin;
use tonic::Status;

use super::error::RuntimeError;
use super::sandbox::{LiveSandbox, SandboxState, Sandboxes};
use super::{container_stop, RuntimeServiceImpl};
use crate::proto::ContainerEventType;
use crate::util::blocking;

impl RuntimeServiceImpl {
    /// `StopPodSandbox`: the pod's containers (at once, as kubelet already
    /// stopped them gracefully), then its network and namespaces.
    pub(super) async fn stop_pod(&self, id: &str) -> Result<(), Status> {
        let Some(entry) = self.sandboxes.registry.find(id, "pod_sandbox_id")? else {
            return Ok(());
        };
        let mut rec = entry.lock_owned().await;
        if rec.removed {
            return Ok(());
        }
        for c in self.containers.registry.members(&rec.id) {
            let mut c = c.lock().await;
            if !c.removed {
                container_stop::stop(&self.containers, &mut c, 0).await?;
            }
        }
        let was_ready = rec.state == SandboxState::Ready;
        let pod = rec.id.clone();
        let (sandboxes, cni) = (self.sandboxes.clone(), self.cni.clone());
        blocking(move || stop(&sandboxes, &mut rec, cni.as_deref())).await?;
        if was_ready {
            self.emit(&pod, &pod, ContainerEventType::ContainerStoppedEvent)
                .await;
        }
        Ok(())
    }
}

/// Stops a sandbox whose lock the caller holds (blocking: unmounts).
pub(super) fn stop(
    sandboxes: &Sandboxes,
    rec: &mut LiveSandbox,
    cni: Option<&crate::cni::Cni>,
) -> Result<(), RuntimeError> {
    if rec.removed {
        return Err(RuntimeError::NotFound {
            kind: "pod sandbox",
            id: rec.id.to_string(),
        });
    }
    let attached = cni.is_some_and(|c| c.attached(rec.id.as_str()));
    if rec.state == SandboxState::NotReady
        && rec.namespaces.is_none()
        && rec.pod_init.is_none()
        && !attached
    {
        return Ok(());
    }
    // The caller has stopped the pod's containers.
    if let Some(cni) = cni {
        cni.teardown(rec.id.as_str())?;
        if !rec.ips.is_empty() {
            rec.ips.clear();
            sandboxes.registry.save(rec)?;
        }
    }
    if let Some(init) = rec.pod_init.take() {
        kill_pod_init(init);
    }
    pin::unpin(&rec.dir.join("ns"))?;
    rec.namespaces = None;
    rec.state = SandboxState::NotReady;
    sandboxes.registry.save(rec)
}

/// SIGKILLs a pod's pid namespace init (and so every process left in the
/// namespace) if it is still that process, and waits briefly for it to go.
pub(super) fn kill_pod_init(init: (i32, u64)) {
    if !super::sandbox::pod_init_alive(init) {
        return;
    }
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(init.0),
        nix::sys::signal::Signal::SIGKILL,
    );
    for _ in 0..200 {
        if !super::sandbox::pod_init_alive(init) {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    tracing::warn!(
        pid = init.0,
        "the pod's pid namespace init is still there 1 s after SIGKILL"
    );
}
