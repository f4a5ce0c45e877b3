//! `ContainerStats`, `ListContainerStats`, `PodSandboxStats`,
//! `ListPodSandboxStats`, `ListMetricDescriptors` and `ListPodSandboxMetrics`.
//!
//! Figures come from the container's cgroup (runtime-core's
//! [`read_stats`](berth_core::cgroups::read_stats)), its writable layer
//! (the overlay `upper` dir, walked like `du`) and, for pods, kubelet's pod
//! cgroup (`cgroup_parent`, read only) and the pinned netns' interface
//! counters. `usage_nano_cores` is the rate between this sample and the
//! previous one of the same object, so the first sample has none.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};

use berth_core::cgroups::{self, Stats};
use berth_core::ContainerId;

use super::container::{ContainerRecord, Containers};
use super::netstats::{self, IfaceCounters};
use super::sandbox::{NsMode, SandboxRecord};
use crate::image::ImageStore;
use crate::proto;
use crate::util::{dir_usage, now_nanos};

/// What a stats call needs to know of a container, copied out of its record
/// so the blocking sampling runs without holding the record's lock.
#[derive(Debug, Clone)]
pub(super) struct ContainerView {
    pub id: String,
    pub config: proto::ContainerConfig,
}

impl ContainerView {
    pub fn of(rec: &ContainerRecord) -> Self {
        ContainerView {
            id: rec.id.to_string(),
            config: rec.config(),
        }
    }
}

/// What a pod stats call needs of a sandbox.
#[derive(Debug, Clone)]
pub(super) struct PodView {
    pub id: String,
    pub config: proto::PodSandboxConfig,
    pub cgroup_parent: String,
    pub netns: Option<PathBuf>,
}

impl PodView {
    pub fn of(rec: &SandboxRecord) -> Self {
        let netns = match rec.network {
            NsMode::Pod => rec.namespaces.as_ref().and_then(|n| n.net.clone()),
            _ => None,
        };
        PodView {
            id: rec.id.to_string(),
            config: rec.config(),
            cgroup_parent: rec.cgroup_parent.clone(),
            netns,
        }
    }
}

/// One sample of a container.
#[derive(Debug, Clone, Default)]
pub(super) struct ContainerSample {
    pub timestamp: i64,
    pub cgroup: Stats,
    /// Writable layer bytes and inodes.
    pub writable: (u64, u64),
    pub nano_cores: Option<u64>,
}

/// One sample of a pod.
#[derive(Debug, Clone, Default)]
pub(super) struct PodSample {
    pub timestamp: i64,
    pub cgroup: Stats,
    pub nano_cores: Option<u64>,
    pub interfaces: Vec<IfaceCounters>,
    pub containers: Vec<(ContainerView, ContainerSample)>,
}

/// Takes samples; remembers the previous CPU reading of each object.
pub struct Sampler {
    cgroup_root: PathBuf,
    previous: Mutex<HashMap<String, (i64, u64)>>,
    fs_mountpoint: OnceLock<String>,
}

impl Sampler {
    /// A sampler reading cgroups under `cgroup_root`.
    pub fn new(cgroup_root: impl Into<PathBuf>) -> Self {
        Sampler {
            cgroup_root: cgroup_root.into(),
            previous: Mutex::new(HashMap::new()),
            fs_mountpoint: OnceLock::new(),
        }
    }

    /// Drops the remembered reading of a removed container or pod.
    pub fn forget(&self, id: &str) {
        self.previous
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
    }

    fn rate(&self, id: &str, ts: i64, usage_ns: u64) -> Option<u64> {
        let mut prev = self.previous.lock().unwrap_or_else(|e| e.into_inner());
        let before = prev.insert(id.to_string(), (ts, usage_ns));
        let (t0, u0) = before?;
        let dt = u128::try_from(ts.checked_sub(t0)?)
            .ok()
            .filter(|d| *d > 0)?;
        let du = u128::from(usage_ns.checked_sub(u0)?);
        u64::try_from(du * 1_000_000_000 / dt).ok()
    }

    /// The mount point reported as the writable layers' `fs_id` (that of the
    /// image store, as ImageFsInfo reports it).
    fn mountpoint(&self, images: &ImageStore) -> String {
        self.fs_mountpoint
            .get_or_init(|| {
                crate::image::service::mountpoint_of(images.root())
                    .map(|p| p.to_string_lossy().into_owned())
                    .unwrap_or_default()
            })
            .clone()
    }

    /// Samples a container (blocking: reads cgroupfs and walks its upper
    /// dir). A container whose cgroup is gone reads as zero.
    pub(super) fn sample_container(
        &self,
        containers: &Containers,
        images: &ImageStore,
        view: &ContainerView,
    ) -> ContainerSample {
        let cgroup = berth_core::container::State::load(&containers.runtime_root.join(&view.id))
            .ok()
            .and_then(|s| s.cgroup)
            .map(|cg| cg.stats())
            .unwrap_or_default();
        let writable = ContainerId::new(&view.id)
            .map(|id| dir_usage(&images.container_dir(&id).join("upper")))
            .unwrap_or_default();
        let timestamp = now_nanos();
        let nano_cores = self.rate(&view.id, timestamp, cgroup.cpu.usage_ns);
        ContainerSample {
            timestamp,
            cgroup,
            writable,
            nano_cores,
        }
    }

    /// Samples a pod and its live containers (blocking).
    pub(super) fn sample_pod(
        &self,
        containers: &Containers,
        images: &ImageStore,
        pod: &PodView,
        members: Vec<ContainerView>,
    ) -> PodSample {
        let samples: Vec<_> = members
            .into_iter()
            .map(|v| {
                let s = self.sample_container(containers, images, &v);
                (v, s)
            })
            .collect();
        let cgroup = self
            .pod_cgroup(&pod.cgroup_parent)
            .map(|(version, rel)| cgroups::read_stats(version, &self.cgroup_root, &rel))
            .unwrap_or_else(|| sum(samples.iter().map(|(_, s)| &s.cgroup)));
        let interfaces = match &pod.netns {
            Some(ns) => netstats::read_in_netns(ns).unwrap_or_else(|e| {
                tracing::debug!(pod = %pod.id, error = %e, "reading the pod's interface counters");
                Vec::new()
            }),
            None => Vec::new(),
        };
        let timestamp = now_nanos();
        let nano_cores = self.rate(&pod.id, timestamp, cgroup.cpu.usage_ns);
        PodSample {
            timestamp,
            cgroup,
            nano_cores,
            interfaces,
            containers: samples,
        }
    }

    /// kubelet's pod cgroup, when the pod has one that exists.
    fn pod_cgroup(&self, parent: &str) -> Option<(cgroups::Version, PathBuf)> {
        let rel = crate::spec::parent_path(parent).ok()?;
        let rel = cgroups::validate_path(&rel).ok()?;
        let version = cgroups::detect(&self.cgroup_root);
        let probe = match version {
            cgroups::Version::V1 => self.cgroup_root.join("cpuacct").join(&rel),
            cgroups::Version::V2 => self.cgroup_root.join(&rel),
        };
        probe.is_dir().then_some((version, rel))
    }

    /// Builds the CRI message of a container sample.
    pub(super) fn container_stats(
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
    pub(super) fn pod_stats(
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

fn u64v(value: u64) -> Option<proto::UInt64Value> {
    Some(proto::UInt64Value { value })
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

/// Sum of container figures, for a pod without a cgroup of its own. Limits
/// are not summed (a pod without a cgroup has none).
fn sum<'a>(stats: impl Iterator<Item = &'a Stats>) -> Stats {
    let mut t = Stats::default();
    for s in stats {
        t.cpu.usage_ns += s.cpu.usage_ns;
        t.cpu.user_ns += s.cpu.user_ns;
        t.cpu.system_ns += s.cpu.system_ns;
        t.memory.usage += s.memory.usage;
        t.memory.working_set += s.memory.working_set;
        t.memory.rss += s.memory.rss;
        t.memory.cache += s.memory.cache;
        t.memory.page_faults += s.memory.page_faults;
        t.memory.major_page_faults += s.memory.major_page_faults;
        t.memory.swap += s.memory.swap;
        t.memory.oom_kills += s.memory.oom_kills;
        t.pids.current += s.pids.current;
        t.io.read_bytes += s.io.read_bytes;
        t.io.write_bytes += s.io.write_bytes;
        t.io.read_ops += s.io.read_ops;
        t.io.write_ops += s.io.write_ops;
    }
    t
}

// ---- metrics ------------------------------------------------------------

/// Labels of every container metric (kubelet adds pod, namespace and
/// container name from its own knowledge).
const CONTAINER_LABELS: [&str; 3] = ["id", "name", "image"];
/// Labels of the pod's network metrics.
const NETWORK_LABELS: [&str; 4] = ["id", "name", "image", "interface"];

struct Desc {
    name: &'static str,
    help: &'static str,
    kind: proto::MetricType,
    network: bool,
}

const fn counter(name: &'static str, help: &'static str) -> Desc {
    Desc {
        name,
        help,
        kind: proto::MetricType::Counter,
        network: false,
    }
}

const fn gauge(name: &'static str, help: &'static str) -> Desc {
    Desc {
        name,
        help,
        kind: proto::MetricType::Gauge,
        network: false,
    }
}

const fn net(name: &'static str, help: &'static str) -> Desc {
    Desc {
        name,
        help,
        kind: proto::MetricType::Counter,
        network: true,
    }
}

/// The metrics berth serves, cAdvisor's names. CPU times are whole seconds:
/// the CRI value is an integer.
const METRICS: &[Desc] = &[
    counter(
        "container_cpu_usage_seconds_total",
        "Cumulative CPU time consumed, in seconds.",
    ),
    counter(
        "container_cpu_user_seconds_total",
        "Cumulative user CPU time, in seconds.",
    ),
    counter(
        "container_cpu_system_seconds_total",
        "Cumulative system CPU time, in seconds.",
    ),
    counter(
        "container_cpu_cfs_periods_total",
        "Elapsed enforcement periods.",
    ),
    counter(
        "container_cpu_cfs_throttled_periods_total",
        "Throttled periods.",
    ),
    counter(
        "container_cpu_cfs_throttled_seconds_total",
        "Time throttled, in seconds.",
    ),
    gauge(
        "container_memory_usage_bytes",
        "Current memory usage, including cache.",
    ),
    gauge(
        "container_memory_working_set_bytes",
        "Current working set (usage minus inactive file).",
    ),
    gauge("container_memory_rss", "Anonymous memory (RSS)."),
    gauge("container_memory_cache", "Page cache."),
    gauge("container_memory_swap", "Swap usage."),
    counter(
        "container_memory_failcnt",
        "Times the memory limit was hit.",
    ),
    counter(
        "container_oom_events_total",
        "Processes killed by the OOM killer.",
    ),
    gauge(
        "container_spec_memory_limit_bytes",
        "The memory limit (0: none).",
    ),
    gauge("container_processes", "Number of processes."),
    counter(
        "container_fs_reads_bytes_total",
        "Bytes read from block devices.",
    ),
    counter(
        "container_fs_writes_bytes_total",
        "Bytes written to block devices.",
    ),
    counter("container_fs_reads_total", "Block device reads completed."),
    counter(
        "container_fs_writes_total",
        "Block device writes completed.",
    ),
    gauge(
        "container_fs_usage_bytes",
        "Bytes used by the writable layer.",
    ),
    gauge(
        "container_fs_inodes_total",
        "Inodes used by the writable layer.",
    ),
    net("container_network_receive_bytes_total", "Bytes received."),
    net("container_network_transmit_bytes_total", "Bytes sent."),
    net(
        "container_network_receive_packets_total",
        "Packets received.",
    ),
    net("container_network_transmit_packets_total", "Packets sent."),
    net("container_network_receive_errors_total", "Receive errors."),
    net("container_network_transmit_errors_total", "Send errors."),
    net(
        "container_network_receive_packets_dropped_total",
        "Received packets dropped.",
    ),
    net(
        "container_network_transmit_packets_dropped_total",
        "Sent packets dropped.",
    ),
];

/// `ListMetricDescriptors`.
pub(super) fn descriptors() -> Vec<proto::MetricDescriptor> {
    METRICS
        .iter()
        .map(|d| proto::MetricDescriptor {
            name: d.name.into(),
            help: d.help.into(),
            label_keys: if d.network {
                NETWORK_LABELS.iter().map(|s| s.to_string()).collect()
            } else {
                CONTAINER_LABELS.iter().map(|s| s.to_string()).collect()
            },
        })
        .collect()
}

fn container_value(name: &str, s: &Stats, writable: (u64, u64)) -> Option<u64> {
    const NS: u64 = 1_000_000_000;
    Some(match name {
        "container_cpu_usage_seconds_total" => s.cpu.usage_ns / NS,
        "container_cpu_user_seconds_total" => s.cpu.user_ns / NS,
        "container_cpu_system_seconds_total" => s.cpu.system_ns / NS,
        "container_cpu_cfs_periods_total" => s.cpu.periods,
        "container_cpu_cfs_throttled_periods_total" => s.cpu.throttled_periods,
        "container_cpu_cfs_throttled_seconds_total" => s.cpu.throttled_ns / NS,
        "container_memory_usage_bytes" => s.memory.usage,
        "container_memory_working_set_bytes" => s.memory.working_set,
        "container_memory_rss" => s.memory.rss,
        "container_memory_cache" => s.memory.cache,
        "container_memory_swap" => s.memory.swap,
        "container_memory_failcnt" => s.memory.failcnt,
        "container_oom_events_total" => s.memory.oom_kills,
        "container_spec_memory_limit_bytes" => s.memory.limit.unwrap_or(0),
        "container_processes" => s.pids.current,
        "container_fs_reads_bytes_total" => s.io.read_bytes,
        "container_fs_writes_bytes_total" => s.io.write_bytes,
        "container_fs_reads_total" => s.io.read_ops,
        "container_fs_writes_total" => s.io.write_ops,
        "container_fs_usage_bytes" => writable.0,
        "container_fs_inodes_total" => writable.1,
        _ => return None,
    })
}

fn net_value(name: &str, i: &IfaceCounters) -> Option<u64> {
    Some(match name {
        "container_network_receive_bytes_total" => i.rx_bytes,
        "container_network_transmit_bytes_total" => i.tx_bytes,
        "container_network_receive_packets_total" => i.rx_packets,
        "container_network_transmit_packets_total" => i.tx_packets,
        "container_network_receive_errors_total" => i.rx_errors,
        "container_network_transmit_errors_total" => i.tx_errors,
        "container_network_receive_packets_dropped_total" => i.rx_dropped,
        "container_network_transmit_packets_dropped_total" => i.tx_dropped,
        _ => return None,
    })
}

fn metric(d: &Desc, ts: i64, labels: Vec<String>, value: u64) -> proto::Metric {
    proto::Metric {
        name: d.name.into(),
        timestamp: ts,
        metric_type: d.kind as i32,
        label_values: labels,
        value: u64v(value),
    }
}

/// `ListPodSandboxMetrics` for one pod: network metrics on the pod (labelled
/// as cAdvisor labels the sandbox, name `POD`), the rest per container.
pub(super) fn pod_metrics(pod: &PodView, s: &PodSample) -> proto::PodSandboxMetrics {
    let mut metrics = Vec::new();
    for d in METRICS.iter().filter(|d| d.network) {
        for i in &s.interfaces {
            if let Some(v) = net_value(d.name, i) {
                let labels = vec![pod.id.clone(), "POD".into(), String::new(), i.name.clone()];
                metrics.push(metric(d, s.timestamp, labels, v));
            }
        }
    }
    let container_metrics = s
        .containers
        .iter()
        .map(|(v, cs)| {
            let labels = vec![
                v.id.clone(),
                v.config
                    .metadata
                    .as_ref()
                    .map(|m| m.name.clone())
                    .unwrap_or_default(),
                v.config
                    .image
                    .as_ref()
                    .map(|i| i.image.clone())
                    .unwrap_or_default(),
            ];
            proto::ContainerMetrics {
                container_id: v.id.clone(),
                metrics: METRICS
                    .iter()
                    .filter(|d| !d.network)
                    .filter_map(|d| {
                        container_value(d.name, &cs.cgroup, cs.writable)
                            .map(|val| metric(d, cs.timestamp, labels.clone(), val))
                    })
                    .collect(),
            }
        })
        .collect();
    proto::PodSandboxMetrics {
        pod_sandbox_id: pod.id.clone(),
        metrics,
        container_metrics,
    }
}

/// Whether a container passes a stats filter (pure).
pub(super) fn container_matches(rec: &ContainerRecord, f: &proto::ContainerStatsFilter) -> bool {
    super::container_status::matches(
        rec,
        &proto::ContainerFilter {
            id: f.id.clone(),
            state: None,
            pod_sandbox_id: f.pod_sandbox_id.clone(),
            label_selector: f.label_selector.clone(),
        },
    )
}

/// Whether a pod passes a stats filter (pure).
pub(super) fn pod_matches(rec: &SandboxRecord, f: &proto::PodSandboxStatsFilter) -> bool {
    super::sandbox_list::matches(
        rec,
        &proto::PodSandboxFilter {
            id: f.id.clone(),
            state: None,
            label_selector: f.label_selector.clone(),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_needs_two_samples_and_time_between() {
        let s = Sampler::new("/nonexistent");
        assert_eq!(s.rate("a", 1_000_000_000, 0), None);
        // 0.5 s of CPU over 1 s: half a core.
        assert_eq!(s.rate("a", 2_000_000_000, 500_000_000), Some(500_000_000));
        // Same timestamp or a counter that went back (a new cgroup): none.
        assert_eq!(s.rate("a", 2_000_000_000, 600_000_000), None);
        assert_eq!(s.rate("a", 3_000_000_000, 1), None);
        s.forget("a");
        assert_eq!(s.rate("a", 4_000_000_000, 10), None);
    }

    #[test]
    fn every_descriptor_has_a_value_source() {
        let s = Stats::default();
        let i = IfaceCounters::default();
        for d in METRICS {
            let v = if d.network {
                net_value(d.name, &i)
            } else {
                container_value(d.name, &s, (0, 0))
            };
            assert!(v.is_some(), "{} has no value", d.name);
        }
        assert_eq!(descriptors().len(), METRICS.len());
    }

    #[test]
    fn pod_metrics_carry_labels_in_descriptor_order() {
        let pod = PodView {
            id: "p".into(),
            config: Default::default(),
            cgroup_parent: String::new(),
            netns: None,
        };
        let view = ContainerView {
            id: "c".into(),
            config: proto::ContainerConfig {
                metadata: Some(proto::ContainerMetadata {
                    name: "app".into(),
                    attempt: 0,
                }),
                image: Some(proto::ImageSpec {
                    image: "busybox".into(),
                    ..Default::default()
                }),
                ..Default::default()
            },
        };
        let mut cs = ContainerSample::default();
        cs.cgroup.memory.working_set = 42;
        let sample = PodSample {
            interfaces: vec![IfaceCounters {
                name: "eth0".into(),
                rx_bytes: 7,
                ..Default::default()
            }],
            containers: vec![(view, cs)],
            ..Default::default()
        };
        let m = pod_metrics(&pod, &sample);
        let rx = m
            .metrics
            .iter()
            .find(|m| m.name == "container_network_receive_bytes_total")
            .unwrap();
        assert_eq!(rx.label_values, ["p", "POD", "", "eth0"]);
        assert_eq!(rx.value.as_ref().unwrap().value, 7);
        let ws = m.container_metrics[0]
            .metrics
            .iter()
            .find(|m| m.name == "container_memory_working_set_bytes")
            .unwrap();
        assert_eq!(ws.label_values, ["c", "app", "busybox"]);
        assert_eq!(ws.value.as_ref().unwrap().value, 42);
        assert_eq!(ws.metric_type, proto::MetricType::Gauge as i32);
    }
}
