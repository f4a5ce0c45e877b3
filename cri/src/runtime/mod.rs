//! The CRI `RuntimeService`: pods and containers.
//!
//! One file per RPC (`version.rs`, `status.rs`, `runtime_config.rs`, ...).
//! RPCs not written yet answer `Unimplemented` (tonic's default stubs), so
//! kubelet and crictl get a clear code rather than a hang.

mod runtime_config;
mod status;
mod version;

use tonic::{Request, Response, Status};

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
#[derive(Debug, Clone)]
pub struct RuntimeServiceImpl {
    config: RuntimeServiceConfig,
}

impl RuntimeServiceImpl {
    /// A runtime service with `config`.
    pub fn new(config: RuntimeServiceConfig) -> RuntimeServiceImpl {
        RuntimeServiceImpl { config }
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

    async fn runtime_config(
        &self,
        _request: Request<proto::RuntimeConfigRequest>,
    ) -> Result<Response<proto::RuntimeConfigResponse>, Status> {
        Ok(Response::new(runtime_config::runtime_config(&self.config)))
    }
}
