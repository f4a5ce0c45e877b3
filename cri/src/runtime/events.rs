//! `GetContainerEvents`: a stream of created, started, stopped and deleted
//! events, each with the pod's status and its containers' statuses (what
//! kubelet's evented PLEG consumes).
//!
//! Events go out on a broadcast channel; a subscriber that falls more than
//! [`CAPACITY`] events behind loses the oldest (kubelet then relists, as it
//! does after any gap). Stopped events come from watching each container's
//! monitor through a pidfd: the monitor exits right after recording the
//! container's exit, whether the daemon is up or not, and containers that
//! were live when the daemon started are watched again.

use std::os::fd::OwnedFd;
use std::path::Path;

use tokio::io::unix::AsyncFd;
use tokio::sync::broadcast;

use super::RuntimeServiceImpl;
use crate::proto;

/// Events kept for a slow subscriber.
pub const CAPACITY: usize = 1024;

/// The event channel.
pub struct Events {
    tx: broadcast::Sender<proto::ContainerEventResponse>,
}

impl Default for Events {
    fn default() -> Self {
        Events {
            tx: broadcast::channel(CAPACITY).0,
        }
    }
}

impl Events {
    /// A new subscription: events sent from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<proto::ContainerEventResponse> {
        self.tx.subscribe()
    }

    /// Whether anyone listens (events are not built otherwise).
    pub fn wanted(&self) -> bool {
        self.tx.receiver_count() > 0
    }

    /// Sends to every subscriber (none: dropped).
    pub fn send(&self, event: proto::ContainerEventResponse) {
        let _ = self.tx.send(event);
    }
}

impl RuntimeServiceImpl {
    /// Sends `kind` for a container, with its pod's status and the pod's
    /// containers' statuses. Takes the pod's and containers' locks, so it
    /// must be called with none held.
    pub(super) async fn emit(
        &self,
        container: &crate::store::ObjectId,
        pod: &crate::store::ObjectId,
        kind: proto::ContainerEventType,
    ) {
        if !self.events.wanted() {
            return;
        }
        let mut pod_status = None;
        if let Ok(Some(entry)) = self.sandboxes.registry.find(pod.as_str(), "pod_sandbox_id") {
            let rec = entry.lock().await;
            if !rec.removed {
                pod_status = super::sandbox_status::status(&rec, false).status;
            }
        }
        let statuses = self.pod_containers(pod).await.unwrap_or_default();
        self.events
            .send(event(container.as_str(), kind, pod_status, statuses));
    }

    /// Watches a live container's monitor; when it exits (the container
    /// ended), brings the record up to date and sends a stopped event.
    pub(super) fn watch_exit(&self, rec: &super::container::ContainerRecord) {
        let this = self.clone();
        let (id, pod, pid, dir) = (
            rec.id.clone(),
            rec.sandbox_id.clone(),
            rec.monitor_pid,
            rec.dir.clone(),
        );
        tokio::spawn(async move {
            monitor_exited(pid, &dir).await;
            let Ok(Some(entry)) = this.containers.registry.find(id.as_str(), "container_id") else {
                return;
            };
            {
                let mut rec = entry.lock().await;
                if rec.removed {
                    return;
                }
                if rec.refresh() {
                    if let Err(e) = this.containers.registry.save(&rec) {
                        tracing::warn!(id = %id, error = %e, "saving the exit of a container");
                    }
                }
                if rec.state.is_live() {
                    return; // the monitor was not this container's
                }
            }
            this.emit(&id, &pod, proto::ContainerEventType::ContainerStoppedEvent)
                .await;
        });
    }
}

/// Returns when monitor `pid` of the container in `dir` has exited (at once
/// if it is not running, or if `pid` is now some other process).
pub async fn monitor_exited(pid: i32, dir: &Path) {
    let Some(pid_t) = rustix::process::Pid::from_raw(pid) else {
        return;
    };
    let Ok(fd) = rustix::process::pidfd_open(pid_t, rustix::process::PidfdFlags::empty()) else {
        return; // already gone
    };
    // Checked after opening the pidfd: the pidfd now pins this process, so
    // the check cannot be fooled by a pid reused later.
    if !crate::monitor::is_running(pid, dir) {
        return;
    }
    wait_readable(fd).await;
}

/// A pidfd becomes readable when its process exits.
async fn wait_readable(fd: OwnedFd) {
    // SAFETY: `fd` is an owned, open pidfd; the AsyncFd owns it from here
    // and nothing else closes or replaces it while it is registered.
    match unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) } {
        Ok(afd) => {
            let _ = afd.readable().await;
        }
        Err(e) => tracing::warn!(error = %e, "watching a monitor's pidfd"),
    }
}

/// The event message.
pub fn event(
    container_id: &str,
    kind: proto::ContainerEventType,
    pod_sandbox_status: Option<proto::PodSandboxStatus>,
    containers_statuses: Vec<proto::ContainerStatus>,
) -> proto::ContainerEventResponse {
    proto::ContainerEventResponse {
        container_id: container_id.to_string(),
        container_event_type: kind as i32,
        created_at: crate::util::now_nanos(),
        pod_sandbox_status,
        containers_statuses,
    }
}
