//! The CRI `RuntimeService`: pods and containers.
//!
//! This file is the wiring: the service's state and its helpers. The gRPC
//! dispatch table is `service.rs`; each RPC's body lives in its own file
//! (`version.rs`, `status.rs`, `container_start.rs`, ...). Containers are
//! reached only through their monitors ([`crate::task::Task`]). RPCs not
//! written yet answer `Unimplemented` with what is missing.

pub mod container;
mod container_checkpoint;
mod container_create;
mod container_list;
mod container_log;
mod container_remove;
mod container_start;
mod container_status;
mod container_stop;
mod container_update;
pub mod error;
mod events;
mod exec_sync;
pub mod handlers;
mod netstats;
mod node_inputs;
mod node_security;
mod open;
mod pod_checkpoint;
mod recover;
mod runtime_config;
pub mod sandbox;
mod sandbox_list;
mod sandbox_plan;
mod sandbox_remove;
mod sandbox_run;
mod sandbox_status;
mod sandbox_stop;
mod service;
mod stats;
mod stats_rpc;
mod status;
mod streaming;
#[cfg(test)]
mod task_tests;
mod version;

use std::path::PathBuf;
use std::sync::Arc;

use tonic::Status;

use container::Containers;
pub use error::RuntimeError;
use sandbox::Sandboxes;

use crate::image::ImageStore;
use crate::util::{batches, blocking};

use crate::proto;

/// Which cgroup driver berth uses; must match kubelet's `cgroupDriver`
/// (runtime-core's driver: cgroupfs, or systemd scopes over D-Bus).
pub use berth_core::cgroups::Driver as CgroupDriver;

/// Settings of the runtime service.
#[derive(Debug, Clone, Default)]
pub struct RuntimeServiceConfig {
    /// The cgroup driver reported to kubelet.
    pub cgroup_driver: CgroupDriver,
    /// The executable run as each container's monitor (`None`: this
    /// process's own, which must call `monitor::run_from_args` in main).
    pub monitor_exe: Option<PathBuf>,
    /// Pod networking through CNI. `None`: no network plugin at all — pods
    /// get loopback only and `NetworkReady` stays false (for embeddings
    /// and tests that want no pod network; `berth serve` always sets it).
    pub cni: Option<crate::cni::CniSettings>,
    /// Where the streaming server of Exec/PortForward listens (port 0: any
    /// free one). `None`: no streaming server; those RPCs answer
    /// Unavailable.
    pub stream_addr: Option<std::net::SocketAddr>,
    /// TLS for the streaming server (`None`: plain HTTP, keep it on
    /// loopback).
    pub stream_tls: Option<crate::stream::TlsFiles>,
    /// What the streaming server lets clients hold (URLs, connections,
    /// timeouts).
    pub stream_limits: crate::stream::Limits,
    /// The `criu` binary for checkpoint and restore (`None`: `criu` in `PATH`).
    pub criu: Option<PathBuf>,
    /// Whether CreateContainer may restore from a checkpoint archive or
    /// image (off by default: the restored tasks' credentials come from the
    /// checkpoint images; they are checked against the requested security
    /// context before they run).
    pub restore: bool,
    /// The sysctls every pod with its own network gets unless kubelet sets
    /// them (containerd 2.0's defaults; both on by default).
    pub pod_sysctls: crate::spec::sysctls::PodSysctlDefaults,
    /// CDI devices: whether they may be requested, and where their specs are.
    pub cdi: crate::cdi::CdiSettings,
    /// The RuntimeClass handlers configured besides the default one.
    pub handlers: handlers::Handlers,
}

/// The runtime service.
#[derive(Clone)]
pub struct RuntimeServiceImpl {
    config: RuntimeServiceConfig,
    sandboxes: Arc<Sandboxes>,
    containers: Arc<Containers>,
    images: Arc<ImageStore>,
    monitor_exe: PathBuf,
    /// The `criu` binary.
    criu: PathBuf,
    /// Pulls a checkpoint's rootfs image when it is missing (`None`: it
    /// must have been pulled).
    puller: Option<Arc<crate::image::puller::Puller>>,
    zygote: Arc<crate::monitor::Zygote>,
    sampler: Arc<stats::Sampler>,
    events: Arc<events::Events>,
    /// The node's cgroup layout, for containers' `/sys/fs/cgroup`.
    cgroup_view: Arc<crate::spec::CgroupView>,
    /// The node's CDI specs.
    cdi: Arc<crate::cdi::Cdi>,
    /// The pod network, when configured.
    cni: Option<Arc<crate::cni::Cni>>,
    /// The streaming server, when configured.
    stream: Option<Arc<crate::stream::StreamServer>>,
}

/// What the runtime holds, for metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inventory {
    /// Pods by CRI state name (`SANDBOX_READY`, `SANDBOX_NOTREADY`).
    pub pods: std::collections::BTreeMap<&'static str, u64>,
    /// Containers by CRI state name (`CONTAINER_RUNNING`, ...).
    pub containers: std::collections::BTreeMap<&'static str, u64>,
    /// Container monitors alive (one per created or running container).
    pub monitors: u64,
}

impl RuntimeServiceImpl {
    /// Counts pods and containers by state and the live monitors (their
    /// records brought up to date with the monitors' exit records).
    pub async fn inventory(&self) -> Inventory {
        let mut inv = Inventory::default();
        for entry in self.sandboxes.registry.all() {
            let rec = entry.lock().await;
            if !rec.removed {
                *inv.pods
                    .entry(rec.state.to_cri().as_str_name())
                    .or_default() += 1;
            }
        }
        for entry in self.containers.registry.all() {
            let mut rec = entry.lock().await;
            if rec.removed {
                continue;
            }
            let _ = self.containers.refresh_and_save(&mut rec);
            *inv.containers
                .entry(rec.state.to_cri().as_str_name())
                .or_default() += 1;
            // Still live after refresh: refresh found its monitor running
            // (or its exit record being written this instant).
            if rec.state.is_live() {
                inv.monitors += 1;
            }
        }
        inv
    }
}

impl RuntimeServiceImpl {
    /// Lets the service pull what it needs itself: the rootfs image of a
    /// checkpoint being restored (CRI-O does the same).
    pub fn with_puller(mut self, puller: Arc<crate::image::puller::Puller>) -> Self {
        self.puller = Some(puller);
        self
    }

    /// Pod sandbox `id`'s record, locked (until the guard goes); NotFound
    /// when it is gone.
    async fn locked_sandbox(
        &self,
        id: &str,
    ) -> Result<tokio::sync::OwnedMutexGuard<sandbox::LiveSandbox>, Status> {
        let entry = self.sandboxes.registry.get(id, "pod_sandbox_id")?;
        let rec = entry.lock_owned().await;
        if rec.removed {
            return Err(self.sandboxes.registry.not_found(id).into());
        }
        Ok(rec)
    }

    /// The names of pod `id` (empty when it is gone), for the annotations
    /// of a container's OCI spec.
    async fn pod_meta(&self, id: &crate::store::ObjectId) -> container_checkpoint::PodMeta {
        let mut pod = container_checkpoint::PodMeta {
            id: id.to_string(),
            ..Default::default()
        };
        if let Ok(Some(entry)) = self.sandboxes.registry.find(id.as_str(), "pod_sandbox_id") {
            let s = entry.lock().await;
            if let Some(m) = s.config().metadata {
                (pod.name, pod.namespace, pod.uid) = (m.name, m.namespace, m.uid);
            }
        }
        pod
    }

    /// A copy of container `id`'s record, brought up to date with its
    /// monitor's exit record; NotFound when it is gone.
    async fn current_container(&self, id: &str) -> Result<container::ContainerRecord, Status> {
        Ok(self.locked_container(id).await?.record().clone())
    }

    /// Container `id`'s record, locked (until the guard goes) and brought up
    /// to date with its monitor's exit record; NotFound when it is gone.
    async fn locked_container(
        &self,
        id: &str,
    ) -> Result<tokio::sync::OwnedMutexGuard<container::LiveContainer>, Status> {
        let entry = self.containers.registry.get(id, "container_id")?;
        let mut rec = entry.lock_owned().await;
        if rec.removed {
            return Err(self.containers.registry.not_found(id).into());
        }
        self.containers.refresh_and_save(&mut rec)?;
        Ok(rec)
    }
}
