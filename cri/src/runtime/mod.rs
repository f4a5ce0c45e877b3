//! The CRI `RuntimeService`: pods and containers.
//!
//! One file per RPC (`version.rs`, `status.rs`, `runtime_config.rs`, ...).
//! RPCs not written yet answer `Unimplemented` (tonic's default stubs), so
//! kubelet and crictl get a clear code rather than a hang.

pub mod container;
mod container_create;
mod container_remove;
mod container_start;
mod container_status;
mod container_stop;
pub mod error;
mod exec_sync;
mod runtime_config;
pub mod sandbox;
mod sandbox_list;
mod sandbox_remove;
mod sandbox_run;
mod sandbox_status;
mod sandbox_stop;
mod status;
mod version;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tonic::{Request, Response, Status};

use container::Containers;
pub use error::RuntimeError;
use sandbox::Sandboxes;

use crate::image::ImageStore;
use crate::util::blocking;

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
    /// The executable run as each container's monitor (`None`: this
    /// process's own, which must call `monitor::run_from_args` in main).
    pub monitor_exe: Option<PathBuf>,
}

/// The runtime service.
#[derive(Clone)]
pub struct RuntimeServiceImpl {
    config: RuntimeServiceConfig,
    sandboxes: Arc<Sandboxes>,
    containers: Arc<Containers>,
    images: Arc<ImageStore>,
    monitor_exe: PathBuf,
}

impl RuntimeServiceImpl {
    /// Opens the runtime service's records under `root` (persistent) and its
    /// volatile state under `state`.
    pub fn open(
        root: &Path,
        state: &Path,
        config: RuntimeServiceConfig,
        images: Arc<ImageStore>,
    ) -> Result<RuntimeServiceImpl, RuntimeError> {
        let monitor_exe = match &config.monitor_exe {
            Some(p) => p.clone(),
            None => std::env::current_exe()
                .map_err(|e| RuntimeError::io(Path::new("/proc/self/exe"), e))?,
        };
        Ok(RuntimeServiceImpl {
            config,
            sandboxes: Arc::new(Sandboxes::open(root, state)?),
            containers: Arc::new(Containers::open(root, state)?),
            images,
            monitor_exe,
        })
    }
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
        let id = crate::store::ObjectId::random()
            .map_err(|e| RuntimeError::io(Path::new("/dev/urandom"), e))?;
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
        for c in self.containers.registry.members(&rec.id) {
            let mut c = c.lock().await;
            if !c.removed {
                container_stop::stop(&self.containers, &mut c, 0).await?;
            }
        }
        let sandboxes = self.sandboxes.clone();
        blocking(move || sandbox_stop::stop(&sandboxes, &mut rec)).await?;
        Ok(Response::new(proto::StopPodSandboxResponse {}))
    }

    async fn remove_pod_sandbox(
        &self,
        request: Request<proto::RemovePodSandboxRequest>,
    ) -> Result<Response<proto::RemovePodSandboxResponse>, Status> {
        let Some(entry) = self
            .sandboxes
            .registry
            .find(&request.into_inner().pod_sandbox_id, "pod_sandbox_id")?
        else {
            return Ok(Response::new(proto::RemovePodSandboxResponse {}));
        };
        let mut rec = entry.lock_owned().await;
        for c in self.containers.registry.members(&rec.id) {
            let mut c = c.lock().await;
            if !c.removed {
                container_remove::remove(&self.containers, &self.images, &mut c).await?;
            }
        }
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

    async fn create_container(
        &self,
        request: Request<proto::CreateContainerRequest>,
    ) -> Result<Response<proto::CreateContainerResponse>, Status> {
        let req = request.into_inner();
        let config = req
            .config
            .ok_or_else(|| Status::from(RuntimeError::invalid("config", "must be set")))?;
        let entry = self
            .sandboxes
            .registry
            .get(&req.pod_sandbox_id, "pod_sandbox_id")?;
        let sandbox = entry.lock_owned().await;
        let (containers, images, exe) = (
            self.containers.clone(),
            self.images.clone(),
            self.monitor_exe.clone(),
        );
        let rec = blocking(move || {
            let ctx = container_create::CreateCtx {
                containers: &containers,
                images: &images,
                monitor_exe: &exe,
            };
            container_create::create(&ctx, &sandbox, config)
        })
        .await
        .inspect_err(|e| tracing::warn!(error = %e.message(), "CreateContainer failed"))?;
        tracing::info!(id = %rec.id, name = %rec.name, "container created");
        Ok(Response::new(proto::CreateContainerResponse {
            container_id: rec.id.to_string(),
        }))
    }

    async fn start_container(
        &self,
        request: Request<proto::StartContainerRequest>,
    ) -> Result<Response<proto::StartContainerResponse>, Status> {
        let entry = self
            .containers
            .registry
            .get(&request.into_inner().container_id, "container_id")?;
        let mut rec = entry.lock_owned().await;
        let containers = self.containers.clone();
        blocking(move || container_start::start(&containers, &mut rec)).await?;
        Ok(Response::new(proto::StartContainerResponse {}))
    }

    async fn stop_container(
        &self,
        request: Request<proto::StopContainerRequest>,
    ) -> Result<Response<proto::StopContainerResponse>, Status> {
        let req = request.into_inner();
        let entry = self
            .containers
            .registry
            .get(&req.container_id, "container_id")?;
        let mut rec = entry.lock().await;
        container_stop::stop(&self.containers, &mut rec, req.timeout).await?;
        Ok(Response::new(proto::StopContainerResponse {}))
    }

    async fn remove_container(
        &self,
        request: Request<proto::RemoveContainerRequest>,
    ) -> Result<Response<proto::RemoveContainerResponse>, Status> {
        let Some(entry) = self
            .containers
            .registry
            .find(&request.into_inner().container_id, "container_id")?
        else {
            return Ok(Response::new(proto::RemoveContainerResponse {}));
        };
        let mut rec = entry.lock().await;
        container_remove::remove(&self.containers, &self.images, &mut rec).await?;
        Ok(Response::new(proto::RemoveContainerResponse {}))
    }

    async fn container_status(
        &self,
        request: Request<proto::ContainerStatusRequest>,
    ) -> Result<Response<proto::ContainerStatusResponse>, Status> {
        let req = request.into_inner();
        let entry = self
            .containers
            .registry
            .get(&req.container_id, "container_id")?;
        let mut rec = entry.lock().await;
        if rec.removed {
            return Err(self.containers.registry.not_found(&req.container_id).into());
        }
        if rec.refresh() {
            self.containers.registry.save(&rec)?;
        }
        Ok(Response::new(container_status::status(&rec, req.verbose)))
    }

    async fn list_containers(
        &self,
        request: Request<proto::ListContainersRequest>,
    ) -> Result<Response<proto::ListContainersResponse>, Status> {
        let filter = request.into_inner().filter.unwrap_or_default();
        let mut containers = Vec::new();
        for entry in self.containers.registry.all() {
            let mut rec = entry.lock().await;
            if rec.removed {
                continue;
            }
            if rec.refresh() {
                self.containers.registry.save(&rec)?;
            }
            if container_status::matches(&rec, &filter) {
                containers.push(rec.to_cri());
            }
        }
        Ok(Response::new(proto::ListContainersResponse { containers }))
    }

    async fn exec_sync(
        &self,
        request: Request<proto::ExecSyncRequest>,
    ) -> Result<Response<proto::ExecSyncResponse>, Status> {
        let req = request.into_inner();
        let entry = self
            .containers
            .registry
            .get(&req.container_id, "container_id")?;
        let rec = {
            let mut rec = entry.lock().await;
            if rec.removed {
                return Err(self.containers.registry.not_found(&req.container_id).into());
            }
            if rec.refresh() {
                self.containers.registry.save(&rec)?;
            }
            rec.clone()
        };
        let containers = self.containers.clone();
        let resp =
            blocking(move || exec_sync::exec_sync(&containers, &rec, req.cmd, req.timeout)).await?;
        Ok(Response::new(resp))
    }

    async fn reopen_container_log(
        &self,
        request: Request<proto::ReopenContainerLogRequest>,
    ) -> Result<Response<proto::ReopenContainerLogResponse>, Status> {
        let req = request.into_inner();
        let entry = self
            .containers
            .registry
            .get(&req.container_id, "container_id")?;
        let mut rec = entry.lock().await;
        rec.refresh();
        if rec.removed || rec.state != container::ContainerState::Running {
            return Err(RuntimeError::FailedPrecondition(format!(
                "container {} is not running",
                req.container_id
            ))
            .into());
        }
        crate::monitor::reopen_log(rec.monitor_pid, &rec.dir)
            .map_err(|e| RuntimeError::Internal(format!("reopening the log: {e}")))?;
        Ok(Response::new(proto::ReopenContainerLogResponse {}))
    }

    async fn runtime_config(
        &self,
        _request: Request<proto::RuntimeConfigRequest>,
    ) -> Result<Response<proto::RuntimeConfigResponse>, Status> {
        Ok(Response::new(runtime_config::runtime_config(&self.config)))
    }
}
