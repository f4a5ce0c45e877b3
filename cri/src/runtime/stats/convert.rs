//! CRI messages of stats samples: `ContainerStats` and `PodSandboxStats`.
//!
//! The figure → message functions are pure. Pressure (PSI) and `io` are
//! set only where the kernel gave pressure figures (cgroup v2), as
//! containerd does; `io` carries nothing else in CRI 1.37 (block I/O bytes
//! are in the `container_fs_*` metrics).

use berth_core::cgroups::{Psi, PsiData, Stats};

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
            swap: Some(swap_usage(ts, &s.cgroup)),
            io: io_usage(ts, &s.cgroup),
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
                io: io_usage(ts, &s.cgroup),
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
        psi: s.cpu.psi.as_ref().map(psi_stats),
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
        psi: m.psi.as_ref().map(psi_stats),
    }
}

/// Swap in use and, where there is a swap limit, what is left of it.
fn swap_usage(ts: i64, s: &Stats) -> proto::SwapUsage {
    proto::SwapUsage {
        timestamp: ts,
        swap_available_bytes: s.memory.swap_available.and_then(u64v),
        swap_usage_bytes: u64v(s.memory.swap),
    }
}

/// I/O pressure; no message at all without it (v1), as containerd.
fn io_usage(ts: i64, s: &Stats) -> Option<proto::IoUsage> {
    s.io.psi.as_ref().map(|p| proto::IoUsage {
        timestamp: ts,
        psi: Some(psi_stats(p)),
    })
}

fn psi_stats(p: &Psi) -> proto::PsiStats {
    proto::PsiStats {
        full: p.full.as_ref().map(psi_data),
        some: Some(psi_data(&p.some)),
    }
}

/// CRI's `Total` is nanoseconds; the kernel (and berth-core) count
/// microseconds. containerd 2 converts the same way.
fn psi_data(d: &PsiData) -> proto::PsiData {
    proto::PsiData {
        total: d.total_us.saturating_mul(1000),
        avg10: d.avg10,
        avg60: d.avg60,
        avg300: d.avg300,
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

#[cfg(test)]
mod tests {
    use super::*;

    const TS: i64 = 1_700_000_000_000_000_000;

    fn line(total_us: u64, avg10: f64) -> PsiData {
        PsiData {
            total_us,
            avg10,
            avg60: avg10 / 2.0,
            avg300: avg10 / 4.0,
        }
    }

    /// Figures as a cgroup v2 gives them: pressure everywhere, a swap limit.
    fn v2() -> Stats {
        let mut s = Stats::default();
        s.cpu.usage_ns = 5_000;
        s.cpu.psi = Some(Psi {
            some: line(1_500, 1.2),
            full: None,
        });
        s.memory.psi = Some(Psi {
            some: line(2_460, 0.0),
            full: Some(line(814, 0.0)),
        });
        s.io.psi = Some(Psi {
            some: line(355_200_895, 14.97),
            full: Some(line(139_211_831, 0.5)),
        });
        s.memory.swap = 1 << 20;
        s.memory.swap_available = Some(31 << 20);
        s
    }

    #[test]
    fn pressure_totals_become_nanoseconds() {
        let s = v2();
        let cpu = cpu_usage(TS, &s, None).psi.unwrap();
        let some = cpu.some.unwrap();
        assert_eq!(some.total, 1_500_000, "1500 us");
        assert_eq!((some.avg10, some.avg60, some.avg300), (1.2, 0.6, 0.3));
        assert_eq!(cpu.full, None, "no full line: no Full");
        let mem = memory_usage(TS, &s).psi.unwrap();
        assert_eq!(mem.some.unwrap().total, 2_460_000);
        assert_eq!(mem.full.unwrap().total, 814_000);
        let io = io_usage(TS, &s).unwrap();
        assert_eq!(io.timestamp, TS);
        let io = io.psi.unwrap();
        assert_eq!(io.some.unwrap().total, 355_200_895_000);
        assert_eq!(io.full.unwrap().avg10, 0.5);
        let mut huge = s.clone();
        huge.cpu.psi.as_mut().unwrap().some.total_us = u64::MAX;
        assert_eq!(
            cpu_usage(TS, &huge, None).psi.unwrap().some.unwrap().total,
            u64::MAX,
            "saturates, never wraps"
        );
    }

    #[test]
    fn swap_available_where_there_is_a_limit() {
        let s = v2();
        let swap = swap_usage(TS, &s);
        assert_eq!(swap.swap_usage_bytes.unwrap().value, 1 << 20);
        assert_eq!(swap.swap_available_bytes.unwrap().value, 31 << 20);
        let mut unlimited = s;
        unlimited.memory.swap_available = None;
        assert_eq!(swap_usage(TS, &unlimited).swap_available_bytes, None);
    }

    #[test]
    fn v1_figures_have_no_pressure_and_no_io_message() {
        let mut s = Stats::default();
        s.io.read_bytes = 4096;
        assert_eq!(cpu_usage(TS, &s, Some(7)).psi, None);
        assert_eq!(memory_usage(TS, &s).psi, None);
        assert_eq!(io_usage(TS, &s), None, "IoUsage holds only pressure");
        assert_eq!(swap_usage(TS, &s).swap_available_bytes, None);
    }
}
