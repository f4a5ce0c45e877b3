//! Checks of cgroup paths and resource values before anything is written,
//! with the kernel's own bounds, so a bad value is refused naming its
//! field rather than failing a write.

use std::path::{Component, Path, PathBuf};

use super::{CgroupError, DeviceType, Resources};

/// Checks `path` is a plain relative path (after an optional leading `/`).
pub fn validate_path(path: &Path) -> Result<PathBuf, CgroupError> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::RootDir => {}
            Component::Normal(n) => out.push(n),
            _ => return Err(CgroupError::BadPath(path.into())),
        }
    }
    if out.as_os_str().is_empty() {
        return Err(CgroupError::BadPath(path.into()));
    }
    Ok(out)
}

/// A value for a controller this host does not mount.
pub(super) fn missing(field: &'static str, controller: &str) -> CgroupError {
    CgroupError::BadValue {
        field,
        reason: format!("the {controller} controller is not mounted on this host"),
    }
}

/// The largest CFS quota the kernel takes, in microseconds (2^44-1).
pub const MAX_CPU_QUOTA: i64 = (1 << 44) - 1;
/// CPU numbers are below this (the kernel's largest `NR_CPUS`).
const MAX_CPUS: u32 = 8192;
/// NUMA node numbers are below this (`MAX_NUMNODES` with NODES_SHIFT 10).
const MAX_NODES: u32 = 1024;

/// Checks the values of `r`.
pub fn validate_resources(r: &Resources) -> Result<(), CgroupError> {
    let bad = |field, reason: &str| {
        Err(CgroupError::BadValue {
            field,
            reason: reason.into(),
        })
    };
    if let Some(m) = r.memory_limit {
        if m != -1 && m < 4096 {
            return bad(
                "memory_limit",
                "must be -1 (unlimited) or at least 4096 bytes",
            );
        }
    }
    if let Some(s) = r.cpu_shares {
        if !(2..=262_144).contains(&s) {
            return bad("cpu_shares", "must be between 2 and 262144");
        }
    }
    if let Some(q) = r.cpu_quota {
        // The kernel's bounds: 1 ms, and its bandwidth limit of 2^44-1 µs
        // (`max_cfs_runtime`); outside them the write fails with EINVAL.
        if q != -1 && !(1000..=MAX_CPU_QUOTA).contains(&q) {
            return bad(
                "cpu_quota",
                &format!("must be -1 (unlimited) or between 1000 and {MAX_CPU_QUOTA} microseconds"),
            );
        }
    }
    if let Some(p) = r.cpu_period {
        if !(1000..=1_000_000).contains(&p) {
            return bad(
                "cpu_period",
                "must be between 1000 and 1000000 microseconds",
            );
        }
    }
    if let Some(p) = r.pids_limit {
        if p == 0 || p < -1 {
            return bad("pids_limit", "must be -1 (unlimited) or positive");
        }
    }
    // Numbers below `max` (the kernel's largest NR_CPUS / MAX_NUMNODES),
    // ranges ascending.
    let cpu_list = |v: &str, max: u32| {
        !v.is_empty()
            && v.split(',').all(|part| {
                let mut it = part.splitn(2, '-');
                let num = |n: Option<&str>| {
                    n.filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
                        .and_then(|n| n.parse::<u32>().ok())
                        .filter(|n| *n < max)
                };
                let a = num(it.next());
                match it.next() {
                    None => a.is_some(),
                    Some(b) => matches!((a, num(Some(b))), (Some(a), Some(b)) if a <= b),
                }
            })
    };
    if r.cpuset_cpus
        .as_deref()
        .is_some_and(|v| !cpu_list(v, MAX_CPUS))
    {
        return bad(
            "cpuset_cpus",
            &format!("must be a CPU list like 0-3,6 (CPUs below {MAX_CPUS}, ranges ascending)"),
        );
    }
    if r.cpuset_mems
        .as_deref()
        .is_some_and(|v| !cpu_list(v, MAX_NODES))
    {
        return bad(
            "cpuset_mems",
            &format!("must be a node list like 0-1 (nodes below {MAX_NODES}, ranges ascending)"),
        );
    }
    if let Some(m) = r.memory_reservation {
        if m != -1 && m < 0 {
            return bad("memory_reservation", "must be -1 (none) or positive");
        }
    }
    if let Some(m) = r.memory_swap {
        if m != -1 && m < r.memory_limit.unwrap_or(0) {
            return bad(
                "memory_swap",
                "must be -1 (unlimited) or at least the memory limit (it counts memory plus swap)",
            );
        }
    }
    for (size, _) in &r.hugepage_limits {
        let digits = size.trim_end_matches(|c: char| c.is_ascii_alphabetic());
        let unit = &size[digits.len()..];
        if digits.is_empty()
            || !digits.bytes().all(|b| b.is_ascii_digit())
            || !matches!(unit, "KB" | "MB" | "GB")
        {
            return bad("hugepage_limits", "page size must be like 2MB or 1GB");
        }
    }
    if let Some(w) = r.blkio_weight {
        if !(10..=1000).contains(&w) {
            return bad("blkio_weight", "must be between 10 and 1000");
        }
    }
    for k in r.unified.keys() {
        let ok = !k.is_empty()
            && !k.contains(['/', '\0'])
            && k != "."
            && k != ".."
            && !k.starts_with("cgroup.")
            && k.contains('.');
        if !ok {
            return bad(
                "unified",
                "keys must be cgroup file names like memory.high (not cgroup.*)",
            );
        }
    }
    for t in &r.io_throttle {
        let vals = [t.read_bps, t.write_bps, t.read_iops, t.write_iops];
        if vals.iter().all(Option::is_none) {
            return bad("io_throttle", "a device entry needs at least one limit");
        }
        if vals.iter().flatten().any(|v| *v == 0) {
            return bad("io_throttle", "limits must be positive");
        }
    }
    for d in r.devices.iter().flatten() {
        if d.access.is_empty() || !d.access.chars().all(|c| matches!(c, 'r' | 'w' | 'm')) {
            return bad("devices", "access must be made of r, w and m");
        }
        if d.kind == DeviceType::All && (d.major.is_some() || d.minor.is_some()) {
            return bad("devices", "a rule for all devices takes no numbers");
        }
    }
    Ok(())
}
