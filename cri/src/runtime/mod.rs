//! The CRI `RuntimeService`: pods and containers.
//!
//! One file per RPC (`version.rs`, `status.rs`, `runtime_config.rs`, ...).
//! RPCs not written yet answer `Unimplemented` (tonic's default stubs), so
//! kubelet and crictl get a clear code rather than a hang.

pub mod error;
mod runtime_config;
pub mod sandbox;
mod sandbox_list;
mod sandbox_remove;
mod sandbox_run;
mod sandbox_status;
mod sandbox_stop;
mod status;
mod version;

use std::path::Path;
use std::sync::Arc;

use tonic::{Request, Response, Status};

pub use error::RuntimeError;
use sandbox::Sandboxes;

use crate::proto;

/// Which cgroup driver berth uses; must match kubelet's `cgroupDriver`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CgroupDriver {
    /// cgroupfs: berth writes the cgroup tree itself.
    #[default]
    Cgroupfs,
    /// systemd: cgroups as transient systemd units.
    Systemd,
}

/// Settings of the runtime service.
#[derive(Debug, Clone, Default)]
pub struct RuntimeServiceConfig {
    /// The cgroup driver reported to kubelet.
    pub cgroup_driver: CgroupDriver,
}

/// The runtime service.
#[derive(Clone)]
pub struct RuntimeServiceImpl {
    config: RuntimeServiceConfig,
    sandboxes: Arc<Sandboxes>,
}

impl RuntimeServiceImpl {
    /// Opens the runtime service's records under `root` (persistent) and its
    /// volatile state under `state`.
    pub fn open(
        root: &Path,
        state: &Path,
        config: RuntimeServiceConfig,
    ) -> Result<RuntimeServiceImpl, RuntimeError> {
        Ok(RuntimeServiceImpl {
            config,
            sandboxes: Arc::new(Sandboxes::open(root, state)?),
        })
    }
}

/// Runs blocking work (mounts, namespaces, fsync) off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, RuntimeError> + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Status::internal(format!("task failed: {e}")))?
        .map_err(Status::from)
}

#[tonic::async_trait]
impl proto::runtime_service_server::RuntimeService for RuntimeServiceImpl {
    async fn version(
        &self,
        request: Request<proto::VersionRequest>,
    ) -> Result<Response<proto::VersionResponse>, Status> {
        Ok(Response::new(version::version(&request.into_inner())))
    }

    async fn status(
        &self,
        request: Request<proto::StatusRequest>,
    ) -> Result<Response<proto::StatusResponse>, Status> {
        Ok(Response::new(status::status(&request.into_inner())))
    }

    async fn run_pod_sandbox(
        &self,
        request: Request<proto::RunPodSandboxRequest>,
    ) -> Result<Response<proto::RunPodSandboxResponse>, Status> {
        let req = request.into_inner();
        let config = req
            .config
            .ok_or_else(|| Status::from(RuntimeError::invalid("config", "must be set")))?;
        let plan = sandbox_run::plan(&config, &req.runtime_handler)?;
        let id = crate::store::ObjectId::random();
        self.sandboxes.registry.reserve(&plan.name, &id)?;
        let sandboxes = self.sandboxes.clone();
        let (id2, plan2) = (id.clone(), plan.clone());
        let result = blocking(move || {
            sandbox_run::create(&sandboxes, &id2, &plan2, &config, &req.runtime_handler)
        })
        .await;
        match result {
            Ok(rec) => {
                tracing::info!(id = %rec.id, name = %rec.name, "pod sandbox ready");
                Ok(Response::new(proto::RunPodSandboxResponse {
                    pod_sandbox_id: rec.id.to_string(),
                }))
            }
            Err(e) => {
                self.sandboxes.registry.release_name(&plan.name, &id);
                tracing::warn!(name = %plan.name, error = %e.message(), "RunPodSandbox failed");
                Err(e)
            }
        }
    }

    async fn stop_pod_sandbox(
        &self,
        request: Request<proto::StopPodSandboxRequest>,
    ) -> Result<Response<proto::StopPodSandboxResponse>, Status> {
        let entry = self
            .sandboxes
            .registry
            .get(&request.into_inner().pod_sandbox_id, "pod_sandbox_id")?;
        let mut rec = entry.lock_owned().await;
        let sandboxes = self.sandboxes.clone();
        blocking(move || sandbox_stop::stop(&sandboxes, &mut rec)).await?;
        Ok(Response::new(proto::StopPodSandboxResponse {}))
    }

    async fn remove_pod_sandbox(
        &self,
        request: Request<proto::RemovePodSandboxRequest>,
    ) -> Result<Response<proto::RemovePodSandboxResponse>, Status> {
        let entry = match self
            .sandboxes
            .registry
            .get(&request.into_inner().pod_sandbox_id, "pod_sandbox_id")
        {
            Ok(entry) => entry,
            // Already removed: not an error (api.proto).
            Err(RuntimeError::NotFound { .. }) => {
                return Ok(Response::new(proto::RemovePodSandboxResponse {}))
            }
            Err(e) => return Err(e.into()),
        };
        let mut rec = entry.lock_owned().await;
        let sandboxes = self.sandboxes.clone();
        blocking(move || sandbox_remove::remove(&sandboxes, &mut rec)).await?;
        Ok(Response::new(proto::RemovePodSandboxResponse {}))
    }

    async fn pod_sandbox_status(
        &self,
        request: Request<proto::PodSandboxStatusRequest>,
    ) -> Result<Response<proto::PodSandboxStatusResponse>, Status> {
        let req = request.into_inner();
        let entry = self
            .sandboxes
            .registry
            .get(&req.pod_sandbox_id, "pod_sandbox_id")?;
        let rec = entry.lock().await;
        if rec.removed {
            return Err(RuntimeError::NotFound {
                kind: "pod sandbox",
                id: req.pod_sandbox_id,
            }
            .into());
        }
        Ok(Response::new(sandbox_status::status(&rec, req.verbose)))
    }

    async fn list_pod_sandbox(
        &self,
        request: Request<proto::ListPodSandboxRequest>,
    ) -> Result<Response<proto::ListPodSandboxResponse>, Status> {
        let filter = request.into_inner().filter.unwrap_or_default();
        let mut items = Vec::new();
        for entry in self.sandboxes.registry.all() {
            let rec = entry.lock().await;
            // A record removed while we waited for its lock is gone.
            if !rec.removed && sandbox_list::matches(&rec, &filter) {
                items.push(rec.to_cri());
            }
        }
        Ok(Response::new(proto::ListPodSandboxResponse { items }))
    }

    async fn runtime_config(
        &self,
        _request: Request<proto::RuntimeConfigRequest>,
    ) -> Result<Response<proto::RuntimeConfigResponse>, Status> {
        Ok(Response::new(runtime_config::runtime_config(&self.config)))
    }
}
