//! `RuntimeConfig`: the cgroup driver, which kubelet (1.28+, with
//! `KubeletCgroupDriverFromCRI`) adopts instead of its own setting.

use super::{CgroupDriver, RuntimeServiceConfig};
use crate::proto;

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
