//! `RuntimeConfig`: the cgroup driver, which kubelet (1.28+, with
//! `KubeletCgroupDriverFromCRI`) adopts instead of its own setting.

use super::error::RuntimeError;
use super::{CgroupDriver, RuntimeServiceConfig};
use crate::proto;
use tonic::{Request, Response, Status};

pub(super) fn runtime_config(config: &RuntimeServiceConfig) -> proto::RuntimeConfigResponse {
    let driver = match config.cgroup_driver {
        CgroupDriver::Cgroupfs => proto::CgroupDriver::Cgroupfs,
        CgroupDriver::Systemd => proto::CgroupDriver::Systemd,
    };
    proto::RuntimeConfigResponse {
        linux: Some(proto::LinuxRuntimeConfiguration {
            cgroup_driver: driver as i32,
        }),
    }
}

impl super::RuntimeServiceImpl {
    pub(in crate::runtime) async fn update_runtime_config_rpc(
        &self,
        request: Request<proto::UpdateRuntimeConfigRequest>,
    ) -> Result<Response<proto::UpdateRuntimeConfigResponse>, Status> {
        let cidr = request
            .into_inner()
            .runtime_config
            .and_then(|c| c.network_config)
            .map(|n| n.pod_cidr)
            .unwrap_or_default();
        if !cidr.is_empty() {
            for part in cidr.split(',') {
                if part.trim().parse::<ipnet_like::Cidr>().is_err() {
                    return Err(RuntimeError::invalid(
                        "runtime_config.network_config.pod_cidr",
                        format!("{part:?} is not an IP prefix"),
                    )
                    .into());
                }
            }
            tracing::info!(pod_cidr = %cidr, "pod CIDR from kubelet");
        }
        // Kept for plugins that take the `ipRanges` capability (an empty
        // value clears it).
        if let Some(cni) = &self.cni {
            cni.set_pod_cidrs(
                cidr.split(',')
                    .map(|p| p.trim().to_string())
                    .filter(|p| !p.is_empty())
                    .collect(),
            );
        }
        Ok(Response::new(proto::UpdateRuntimeConfigResponse {}))
    }
}

/// Just enough of an IP prefix parser to check kubelet's pod CIDR.
mod ipnet_like {
    /// `addr/len` with an IPv4 or IPv6 address and a length in range.
    pub struct Cidr;

    impl std::str::FromStr for Cidr {
        type Err = ();
        fn from_str(s: &str) -> Result<Cidr, ()> {
            let (addr, len) = s.split_once('/').ok_or(())?;
            let len: u8 = len.parse().map_err(|_| ())?;
            match addr.parse::<std::net::IpAddr>().map_err(|_| ())? {
                std::net::IpAddr::V4(_) if len <= 32 => Ok(Cidr),
                std::net::IpAddr::V6(_) if len <= 128 => Ok(Cidr),
                _ => Err(()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_the_configured_driver() {
        for (d, want) in [
            (CgroupDriver::Cgroupfs, proto::CgroupDriver::Cgroupfs),
            (CgroupDriver::Systemd, proto::CgroupDriver::Systemd),
        ] {
            let r = runtime_config(&RuntimeServiceConfig {
                cgroup_driver: d,
                ..Default::default()
            });
            assert_eq!(r.linux.unwrap().cgroup_driver, want as i32);
        }
    }
}
