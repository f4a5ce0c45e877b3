//! CRI messages of stats samples: `ContainerStats` and `PodSandboxStats`.

use berth_core::cgroups::Stats;

use super::{u64v, ContainerSample, ContainerView, PodSample, PodView, Sampler};
use crate::image::ImageStore;
use crate::proto;
use crate::runtime::netstats::IfaceCounters;

impl Sampler {
    /// Builds the CRI message of a container sample.
    pub(in crate::runtime) fn container_stats(
        &self,
        images: &ImageStore,
        view: &ContainerView,
        s: &ContainerSample,
    ) -> proto::ContainerStats {
        let c = &view.config;
        let ts = s.timestamp;
        proto::ContainerStats {
            attributes: Some(proto::ContainerAttributes {
                id: view.id.clone(),
                metadata: c.metadata.clone(),
                labels: c.labels.clone(),
                annotations: c.annotations.clone(),
            }),
            cpu: Some(cpu_usage(ts, &s.cgroup, s.nano_cores)),
            memory: Some(memory_usage(ts, &s.cgroup)),
            writable_layer: Some(proto::FilesystemUsage {
                timestamp: ts,
                fs_id: Some(proto::FilesystemIdentifier {
                    mountpoint: self.mountpoint(images),
                }),
                used_bytes: u64v(s.writable.0),
                inodes_used: u64v(s.writable.1),
            }),
            swap: Some(proto::SwapUsage {
                timestamp: ts,
                swap_available_bytes: None,
                swap_usage_bytes: u64v(s.cgroup.memory.swap),
            }),
            // Pressure (PSI) figures: not read yet.
            io: None,
        }
    }

    /// Builds the CRI message of a pod sample.
    pub(in crate::runtime) fn pod_stats(
        &self,
        images: &ImageStore,
        pod: &PodView,
        s: &PodSample,
    ) -> proto::PodSandboxStats {
        let ts = s.timestamp;
        let ifaces: Vec<_> = s.interfaces.iter().map(iface_usage).collect();
        let default_interface = ifaces
            .iter()
            .find(|i| i.name == "eth0")
            .or(ifaces.first())
            .cloned();
        proto::PodSandboxStats {
            attributes: Some(proto::PodSandboxAttributes {
                id: pod.id.clone(),
                metadata: pod.config.metadata.clone(),
                labels: pod.config.labels.clone(),
                annotations: pod.config.annotations.clone(),
            }),
            linux: Some(proto::LinuxPodSandboxStats {
                cpu: Some(cpu_usage(ts, &s.cgroup, s.nano_cores)),
                memory: Some(memory_usage(ts, &s.cgroup)),
                network: Some(proto::NetworkUsage {
                    timestamp: ts,
                    default_interface,
                    interfaces: ifaces,
                }),
                process: Some(proto::ProcessUsage {
                    timestamp: ts,
                    process_count: u64v(s.cgroup.pids.current),
                }),
                containers: s
                    .containers
                    .iter()
                    .map(|(v, cs)| self.container_stats(images, v, cs))
                    .collect(),
                io: None,
            }),
            windows: None,
        }
    }
}

fn cpu_usage(ts: i64, s: &Stats, nano_cores: Option<u64>) -> proto::CpuUsage {
    proto::CpuUsage {
        timestamp: ts,
        usage_core_nano_seconds: u64v(s.cpu.usage_ns),
        usage_nano_cores: nano_cores.and_then(u64v),
        psi: None,
    }
}

fn memory_usage(ts: i64, s: &Stats) -> proto::MemoryUsage {
    let m = &s.memory;
    proto::MemoryUsage {
        timestamp: ts,
        working_set_bytes: u64v(m.working_set),
        available_bytes: m
            .limit
            .map(|l| l.saturating_sub(m.working_set))
            .and_then(u64v),
        usage_bytes: u64v(m.usage),
        rss_bytes: u64v(m.rss),
        page_faults: u64v(m.page_faults),
        major_page_faults: u64v(m.major_page_faults),
        psi: None,
    }
}

fn iface_usage(i: &IfaceCounters) -> proto::NetworkInterfaceUsage {
    proto::NetworkInterfaceUsage {
        name: i.name.clone(),
        rx_bytes: u64v(i.rx_bytes),
        rx_errors: u64v(i.rx_errors),
        tx_bytes: u64v(i.tx_bytes),
        tx_errors: u64v(i.tx_errors),
    }
}
