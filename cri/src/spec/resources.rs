//! The container's cgroup (placement and limits) and oom_score_adj.

use std::path::PathBuf;

use berth_core::cgroups::{self, CgroupError};
use berth_core::config::{CgroupConfig, Resources};

use super::{invalid, SpecError};
use crate::proto;

const RES: &str = "config.linux.resources";
const PARENT: &str = "sandbox_config.linux.cgroup_parent";

/// A systemd slice name as its path in the hierarchy (runtime-core's
/// [`cgroups::systemd::expand_slice`]), the error naming kubelet's field.
fn expand_slice(slice: &str) -> Result<PathBuf, SpecError> {
    cgroups::systemd::expand_slice(slice).map_err(|_| {
        invalid(
            PARENT,
            format!("{slice:?} is not a valid systemd slice name"),
        )
    })
}

/// kubelet's `cgroup_parent` as a path below the cgroup root (a systemd
/// slice name expanded to its directory). Not checked for `..`: callers
/// validate the joined path.
pub(crate) fn parent_path(parent: &str) -> Result<PathBuf, SpecError> {
    if parent.ends_with(".slice") && !parent.contains('/') {
        expand_slice(parent)
    } else {
        Ok(PathBuf::from(parent))
    }
}

/// The cgroup's path below the cgroup root: `<cgroup_parent>/<id>`, the
/// layout containerd uses with the cgroupfs driver. kubelet's parent is
/// taken verbatim; a systemd slice name (what kubelet sends with the systemd
/// driver) is expanded to its directory, since runtime-core drives cgroupfs
/// directly. No parent: `<id>` at the root.
fn cgroup_path(id: &str, parent: &str) -> Result<PathBuf, SpecError> {
    if id.is_empty() || id.contains(['/', '\0']) || id == "." || id == ".." {
        return Err(invalid("id", format!("{id:?} is not a valid container id")));
    }
    let parent = parent_path(parent)?;
    let path = parent.join(id);
    cgroups::validate_path(&path)
        .map_err(|_| invalid(PARENT, format!("{:?} must be a path without '..'", parent)))?;
    Ok(path)
}

fn nonzero(v: i64) -> Option<i64> {
    (v != 0).then_some(v)
}

fn unsigned(field: &str, v: i64) -> Result<Option<u64>, SpecError> {
    match v {
        0 => Ok(None),
        v => u64::try_from(v).map(Some).map_err(|_| {
            invalid(
                format!("{RES}.{field}"),
                format!("{v} must not be negative"),
            )
        }),
    }
}

/// The limits: CFS period and quota, shares, the memory limit, swap,
/// cpuset, huge pages and v2 `unified` files (CRI's 0 or empty means "not
/// set"), checked with berth-core's own rules so a bad value is refused
/// here, naming the CRI field. Without `memory_swap_limit_in_bytes`, a
/// memory limit also caps memory plus swap at the same value — no swap —
/// as containerd does (where the kernel accounts swap). There is no
/// per-container pids limit in CRI; kubelet sets the pod's on the pod
/// cgroup.
pub(crate) fn limits(res: &proto::LinuxContainerResources) -> Result<Resources, SpecError> {
    let memory_limit = nonzero(res.memory_limit_in_bytes);
    let r = Resources {
        memory_limit,
        cpu_shares: unsigned("cpu_shares", res.cpu_shares)?,
        cpu_quota: nonzero(res.cpu_quota),
        cpu_period: unsigned("cpu_period", res.cpu_period)?,
        pids_limit: None,
        cpuset_cpus: (!res.cpuset_cpus.is_empty()).then(|| res.cpuset_cpus.clone()),
        cpuset_mems: (!res.cpuset_mems.is_empty()).then(|| res.cpuset_mems.clone()),
        memory_reservation: None,
        memory_swap: nonzero(res.memory_swap_limit_in_bytes).or(memory_limit.filter(|m| *m > 0)),
        hugepage_limits: res
            .hugepage_limits
            .iter()
            .map(|h| (h.page_size.clone(), h.limit))
            .collect(),
        blkio_weight: None,
        // CRI has no per-device throttles (only through `unified`).
        io_throttle: Vec::new(),
        unified: res
            .unified
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        // Device rules come from the devices and privilege, not resources
        // (an update leaves them as they are).
        devices: None,
    };
    cgroups::validate_resources(&r).map_err(|e| match e {
        CgroupError::BadValue { field, reason } => {
            let field = match field {
                "memory_limit" => "memory_limit_in_bytes",
                "memory_swap" => "memory_swap_limit_in_bytes",
                f => f,
            };
            invalid(format!("{RES}.{field}"), reason)
        }
        other => invalid(RES, other.to_string()),
    })?;
    Ok(r)
}

/// The systemd driver's scope prefix: containers are `berth-<id>.scope`
/// (containerd's are `cri-containerd-<id>.scope`, CRI-O's `crio-<id>.scope`).
const SCOPE_PREFIX: &str = "berth";

/// With the systemd driver kubelet's parent is a slice (or nothing: the
/// system slice).
fn systemd_slice(parent: &str) -> Result<&str, SpecError> {
    if parent.is_empty() {
        return Ok("");
    }
    if !parent.ends_with(".slice") || parent.contains('/') {
        return Err(invalid(
            PARENT,
            format!("{parent:?}: with the systemd cgroup driver this must be a slice name (kubelet must run with cgroupDriver: systemd too)"),
        ));
    }
    expand_slice(parent)?;
    Ok(parent)
}

/// The cgroup config: path per [`cgroup_path`] (cgroupfs) or
/// `slice:berth:<id>` (systemd), limits per [`limits`].
pub(super) fn cgroup(
    id: &str,
    parent: &str,
    driver: cgroups::Driver,
    res: Option<&proto::LinuxContainerResources>,
) -> Result<CgroupConfig, SpecError> {
    let path = match driver {
        cgroups::Driver::Cgroupfs => cgroup_path(id, parent)?,
        cgroups::Driver::Systemd => {
            cgroup_path(id, "")?; // the id's own checks
            PathBuf::from(format!("{}:{SCOPE_PREFIX}:{id}", systemd_slice(parent)?))
        }
    };
    Ok(CgroupConfig {
        path,
        driver,
        resources: res.map(limits).transpose()?.unwrap_or_default(),
    })
}

/// The container's cgroup directory below the root, whichever the driver.
pub(super) fn cgroup_dir(
    id: &str,
    parent: &str,
    driver: cgroups::Driver,
) -> Result<PathBuf, SpecError> {
    match driver {
        cgroups::Driver::Cgroupfs => cgroup_path(id, parent),
        cgroups::Driver::Systemd => {
            let path = format!("{}:{SCOPE_PREFIX}:{id}", systemd_slice(parent)?);
            cgroups::systemd::parse(&path, &Resources::default())
                .and_then(|s| cgroups::systemd::scope_path(&s))
                .map_err(|e| invalid(PARENT, e.to_string()))
        }
    }
}

/// `oom_score_adj` of the init: set whenever the request has resources (as
/// containerd's `WithOOMScoreAdj`; kubelet always sends them), within the
/// kernel's -1000..=1000.
pub(crate) fn oom_score_adj(
    res: Option<&proto::LinuxContainerResources>,
) -> Result<Option<i32>, SpecError> {
    let Some(res) = res else {
        return Ok(None);
    };
    let adj = res.oom_score_adj;
    match i32::try_from(adj) {
        Ok(v) if (-1000..=1000).contains(&v) => Ok(Some(v)),
        _ => Err(invalid(
            format!("{RES}.oom_score_adj"),
            format!("{adj} is outside -1000..=1000"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixture::Fixture;
    use super::*;

    fn cgroup_of(f: &Fixture) -> CgroupConfig {
        f.spec().config.cgroup.expect("a cgroup")
    }

    #[test]
    fn path_is_parent_slash_id() {
        let f = Fixture::new();
        assert_eq!(
            cgroup_of(&f).path,
            PathBuf::from("/kubepods/burstable/pod1234/c1")
        );
    }

    #[test]
    fn systemd_slice_parent_is_expanded() {
        let mut f = Fixture::new();
        f.cgroup_parent = "kubepods-besteffort-pod12.slice".into();
        assert_eq!(
            cgroup_of(&f).path,
            PathBuf::from(
                "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod12.slice/c1"
            )
        );
    }

    #[test]
    fn systemd_driver_names_a_scope_in_the_pod_slice() {
        let mut f = Fixture::new();
        f.cgroup_driver = cgroups::Driver::Systemd;
        f.cgroup_parent = "kubepods-besteffort-pod12.slice".into();
        let c = cgroup_of(&f);
        assert_eq!(c.driver, cgroups::Driver::Systemd);
        assert_eq!(
            c.path,
            PathBuf::from("kubepods-besteffort-pod12.slice:berth:c1")
        );
        assert_eq!(
            cgroup_dir("c1", &f.cgroup_parent, f.cgroup_driver).unwrap(),
            PathBuf::from("kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod12.slice/berth-c1.scope")
        );
        // A cgroupfs path as parent does not fit the systemd driver.
        f.cgroup_parent = "/kubepods/besteffort/pod12".into();
        assert!(f.run().is_err());
    }

    #[test]
    fn bad_slice_name_is_invalid() {
        let mut f = Fixture::new();
        f.cgroup_parent = "kubepods--x.slice".into();
        assert_eq!(f.err_field(), PARENT);
    }

    #[test]
    fn escaping_parent_is_invalid() {
        let mut f = Fixture::new();
        f.cgroup_parent = "/kubepods/../..".into();
        assert_eq!(f.err_field(), PARENT);
    }

    #[test]
    fn no_parent_puts_the_container_at_the_root() {
        let mut f = Fixture::new();
        f.cgroup_parent.clear();
        assert_eq!(cgroup_of(&f).path, PathBuf::from("c1"));
    }

    #[test]
    fn no_resources_means_no_limits() {
        let f = Fixture::new();
        assert_eq!(
            cgroup_of(&f).resources,
            Resources {
                devices: Some(berth_core::cgroups::default_device_rules()),
                ..Resources::default()
            },
            "only the device rules"
        );
    }

    #[test]
    fn no_resources_means_no_oom_score_adj() {
        let f = Fixture::new();
        assert_eq!(f.spec().config.oom_score_adj, None);
    }

    #[test]
    fn limits_are_mapped() {
        let mut f = Fixture::new();
        *f.resources() = proto::LinuxContainerResources {
            cpu_period: 100_000,
            cpu_quota: 50_000,
            cpu_shares: 512,
            memory_limit_in_bytes: 256 << 20,
            oom_score_adj: 937,
            ..Default::default()
        };
        assert_eq!(
            cgroup_of(&f).resources,
            Resources {
                memory_limit: Some(256 << 20),
                cpu_shares: Some(512),
                cpu_quota: Some(50_000),
                cpu_period: Some(100_000),
                pids_limit: None,
                memory_swap: Some(256 << 20),
                devices: Some(berth_core::cgroups::default_device_rules()),
                ..Default::default()
            },
            "a memory limit without a swap limit means no swap"
        );
    }

    #[test]
    fn cpuset_hugepages_unified_and_swap_are_mapped() {
        let mut f = Fixture::new();
        *f.resources() = proto::LinuxContainerResources {
            memory_limit_in_bytes: 64 << 20,
            memory_swap_limit_in_bytes: 128 << 20,
            cpuset_cpus: "0-1".into(),
            cpuset_mems: "0".into(),
            hugepage_limits: vec![proto::HugepageLimit {
                page_size: "2MB".into(),
                limit: 4 << 20,
            }],
            unified: [("memory.high".to_string(), "60M".to_string())].into(),
            ..Default::default()
        };
        let r = cgroup_of(&f).resources;
        assert_eq!(r.memory_swap, Some(128 << 20));
        assert_eq!(r.cpuset_cpus.as_deref(), Some("0-1"));
        assert_eq!(r.cpuset_mems.as_deref(), Some("0"));
        assert_eq!(r.hugepage_limits, vec![("2MB".to_string(), 4 << 20)]);
        assert_eq!(
            r.unified.get("memory.high").map(String::as_str),
            Some("60M")
        );
        f.resources().memory_swap_limit_in_bytes = 1 << 20;
        let e = f.run().unwrap_err();
        assert!(e.to_string().contains("memory_swap_limit_in_bytes"), "{e}");
        f.resources().memory_swap_limit_in_bytes = 0;
        f.resources().cpuset_cpus = "a-b".into();
        let e = f.run().unwrap_err();
        assert!(e.to_string().contains("cpuset_cpus"), "{e}");
    }

    #[test]
    fn oom_score_adj_is_set() {
        let mut f = Fixture::new();
        f.resources().oom_score_adj = -997;
        assert_eq!(f.spec().config.oom_score_adj, Some(-997));
    }

    #[test]
    fn oom_score_adj_out_of_range() {
        let mut f = Fixture::new();
        f.resources().oom_score_adj = 1001;
        assert_eq!(f.err_field(), "config.linux.resources.oom_score_adj");
    }

    #[test]
    fn tiny_memory_limit_names_the_cri_field() {
        let mut f = Fixture::new();
        f.resources().memory_limit_in_bytes = 100;
        assert_eq!(
            f.err_field(),
            "config.linux.resources.memory_limit_in_bytes"
        );
    }

    #[test]
    fn negative_shares_are_invalid() {
        let mut f = Fixture::new();
        f.resources().cpu_shares = -2;
        assert_eq!(f.err_field(), "config.linux.resources.cpu_shares");
    }

    #[test]
    fn short_period_is_invalid() {
        let mut f = Fixture::new();
        f.resources().cpu_period = 10;
        assert_eq!(f.err_field(), "config.linux.resources.cpu_period");
    }
}
