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

use std::sync::Arc;

use tokio::sync::broadcast;

use super::RuntimeServiceImpl;
use crate::proto;

/// Events kept for a slow subscriber.
pub const CAPACITY: usize = 1024;

/// The event channel. Its slots hold `Arc`s: the channel allocates and
/// initialises all [`CAPACITY`] of them up front, which for the event
/// itself (472 bytes) kept 476 KiB resident in the daemon from start-up on.
pub struct Events {
    tx: broadcast::Sender<Arc<proto::ContainerEventResponse>>,
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
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<proto::ContainerEventResponse>> {
        self.tx.subscribe()
    }

    /// Whether anyone listens (events are not built otherwise).
    pub fn wanted(&self) -> bool {
        self.tx.receiver_count() > 0
    }

    /// Sends to every subscriber (none: dropped).
    pub fn send(&self, event: proto::ContainerEventResponse) {
        let _ = self.tx.send(Arc::new(event));
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

    /// Watches a live container through its monitor; when the container
    /// has exited (the monitor's event) or the monitor is gone, brings the
    /// record up to date and sends a stopped event.
    pub(super) fn watch_exit(&self, rec: &super::container::ContainerRecord) {
        let this = self.clone();
        let (id, pod) = (rec.id.clone(), rec.sandbox_id.clone());
        let task = self.containers.task(rec);
        tokio::spawn(async move {
            let mut pause = WATCH_AGAIN_FIRST;
            loop {
                // Connecting may wait for a busy monitor: off the async
                // threads. A refused connection: the monitor is gone.
                let t = task.clone();
                if let Ok(Ok(ch)) = tokio::task::spawn_blocking(move || t.watch_exit()).await {
                    readable(ch).await;
                }
                let Ok(Some(entry)) = this.containers.registry.find(id.as_str(), "container_id")
                else {
                    return;
                };
                {
                    let mut rec = entry.lock().await;
                    if rec.removed {
                        return;
                    }
                    if let Err(e) = this.containers.refresh_and_save(&mut rec) {
                        tracing::warn!(id = %id, error = %e, "saving the exit of a container");
                    }
                    if !rec.state.is_live() {
                        break;
                    }
                }
                // The connection ended without the exit: a monitor killed
                // mid-way can drop it a moment before its listener, so it
                // still looked alive. Watch again (the next connection is
                // refused once it is gone).
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(WATCH_AGAIN_MAX);
            }
            this.emit(&id, &pod, proto::ContainerEventType::ContainerStoppedEvent)
                .await;
        });
    }
}

/// First pause before watching a container again whose watch ended
/// without its exit; it doubles up to [`WATCH_AGAIN_MAX`].
const WATCH_AGAIN_FIRST: std::time::Duration = std::time::Duration::from_millis(10);
const WATCH_AGAIN_MAX: std::time::Duration = std::time::Duration::from_secs(1);

/// Returns when `ch` is readable: its event came, or its peer is gone.
/// (tokio's pipe receiver registers any pollable fd safely; nothing is
/// read from it here.)
async fn readable(ch: berth_core::ipc::Channel) {
    let fd = ch.into_fd();
    if let Err(e) = crate::util::set_nonblocking(std::os::fd::AsFd::as_fd(&fd)) {
        tracing::warn!(error = %e, "watching a container's monitor");
        return;
    }
    match tokio::net::unix::pipe::Receiver::from_owned_fd_unchecked(fd) {
        Ok(rx) => {
            let _ = rx.readable().await;
        }
        Err(e) => tracing::warn!(error = %e, "watching a container's monitor"),
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
