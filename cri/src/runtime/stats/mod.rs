//! `ContainerStats`, `ListContainerStats`, `PodSandboxStats`,
//! `ListPodSandboxStats`, `ListMetricDescriptors` and `ListPodSandboxMetrics`.
//!
//! Figures come from the container's cgroup (runtime-core's
//! [`read_stats`](berth_core::cgroups::read_stats)), its writable layer
//! (the overlay `upper` dir, walked like `du`) and, for pods, kubelet's pod
//! cgroup (`cgroup_parent`, read only) and the pinned netns' interface
//! counters. `usage_nano_cores` is the rate between this sample and the
//! previous one of the same object, so the first sample has none. Pressure
//! (PSI) of the container's and the pod's cgroup, and the swap left under a
//! swap limit, are reported where the kernel has them (cgroup v2 for PSI).
//!
//! Here: taking samples ([`Sampler`]) and the stats filters; the CRI
//! messages built from a sample are in [`convert`], the cAdvisor-named
//! metrics in [`metrics`].

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

mod convert;
mod metrics;

pub(super) use metrics::{descriptors, pod_metrics};

/// What a stats call needs to know of a container, copied out of its record
/// so the blocking sampling runs without holding the record's lock.
#[derive(Debug, Clone)]
pub(super) struct ContainerView {
    pub id: String,
    pub config: proto::ContainerConfig,
    /// The container's directory (its monitor's socket).
    pub dir: std::path::PathBuf,
}

impl ContainerView {
    pub fn of(rec: &ContainerRecord) -> Self {
        ContainerView {
            id: rec.id.to_string(),
            config: rec.config(),
            dir: rec.dir.clone(),
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
        // Asked of the container's owner; one that is gone reads as zero.
        let cgroup = containers.tasks.open(&view.dir).stats().unwrap_or_default();
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
}

fn u64v(value: u64) -> Option<proto::UInt64Value> {
    Some(proto::UInt64Value { value })
}

/// Sum of container figures, for a pod without a cgroup of its own. Limits
/// are not summed (a pod without a cgroup has none), nor is the swap left
/// under them; pressure cannot be (a share of time is not additive), so a
/// pod without a cgroup has none.
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
}
