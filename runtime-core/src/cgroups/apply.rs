//! Writing a cgroup's limits (cgroupfs v1 or v2, and systemd unit
//! properties for the systemd driver).

use super::validate::missing;
use super::*;

impl Cgroup {
    /// Writes the limits of `r` (systemd driver: as unit properties too,
    /// so systemd keeps them).
    pub fn apply(&self, r: &Resources) -> Result<(), CgroupError> {
        validate_resources(r)?;
        if let Some(scope) = &self.systemd {
            if !self.dirs.iter().all(|d| d.exists()) {
                return Err(CgroupError::Systemd(format!(
                    "{} is not running",
                    scope.unit
                )));
            }
            systemd::set(scope, r)?;
        }
        match self.version {
            Version::V1 => {
                if let Some(d) = self.dir_of("memory") {
                    let memsw = d.join("memory.memsw.limit_in_bytes");
                    // No swap accounting: swap is left alone (containerd too).
                    let swap = r.memory_swap.filter(|_| memsw.exists());
                    // v1 wants memory <= memory+swap at every step: raise
                    // the total first when the memory limit would pass it.
                    match (r.memory_limit, swap) {
                        (Some(m), Some(t)) => {
                            if write(d.join("memory.limit_in_bytes"), m.to_string()).is_err() {
                                write(memsw.clone(), t.to_string())?;
                                write(d.join("memory.limit_in_bytes"), m.to_string())?;
                            }
                            write(memsw, t.to_string())?;
                        }
                        (Some(m), None) => write(d.join("memory.limit_in_bytes"), m.to_string())?,
                        (None, Some(t)) => write(memsw, t.to_string())?,
                        (None, None) => {}
                    }
                }
                if let Some(d) = self.dir_of("cpu") {
                    if let Some(s) = r.cpu_shares {
                        write(d.join("cpu.shares"), s.to_string())?;
                    }
                    if let Some(p) = r.cpu_period {
                        write(d.join("cpu.cfs_period_us"), p.to_string())?;
                    }
                    if let Some(q) = r.cpu_quota {
                        write(d.join("cpu.cfs_quota_us"), q.to_string())?;
                    }
                }
                if let (Some(p), Some(d)) = (r.pids_limit, self.dir_of("pids")) {
                    let v = if p == -1 {
                        "max".to_string()
                    } else {
                        p.to_string()
                    };
                    write(d.join("pids.max"), v)?;
                }
                if let Some(d) = self.dir_of("cpuset") {
                    if let Some(c) = &r.cpuset_cpus {
                        write(d.join("cpuset.cpus"), c.clone())?;
                    }
                    if let Some(m) = &r.cpuset_mems {
                        write(d.join("cpuset.mems"), m.clone())?;
                    }
                } else if r.cpuset_cpus.is_some() || r.cpuset_mems.is_some() {
                    return Err(missing("cpuset_cpus", "cpuset"));
                }
                if let (Some(m), Some(d)) = (r.memory_reservation, self.dir_of("memory")) {
                    write(d.join("memory.soft_limit_in_bytes"), m.to_string())?;
                }
                if !r.hugepage_limits.is_empty() {
                    let d = self
                        .dir_of("hugetlb")
                        .ok_or_else(|| missing("hugepage_limits", "hugetlb"))?;
                    for (size, limit) in &r.hugepage_limits {
                        write(
                            d.join(format!("hugetlb.{size}.limit_in_bytes")),
                            limit.to_string(),
                        )?;
                    }
                }
                if let Some(w) = r.blkio_weight {
                    let d = self
                        .dir_of("blkio")
                        .ok_or_else(|| missing("blkio_weight", "blkio"))?;
                    write(d.join("blkio.weight"), w.to_string())?;
                }
                if !r.io_throttle.is_empty() {
                    let d = self
                        .dir_of("blkio")
                        .ok_or_else(|| missing("io_throttle", "blkio"))?;
                    for t in &r.io_throttle {
                        for (file, v) in [
                            ("blkio.throttle.read_bps_device", t.read_bps),
                            ("blkio.throttle.write_bps_device", t.write_bps),
                            ("blkio.throttle.read_iops_device", t.read_iops),
                            ("blkio.throttle.write_iops_device", t.write_iops),
                        ] {
                            if let Some(v) = v {
                                write(d.join(file), format!("{}:{} {v}", t.major, t.minor))?;
                            }
                        }
                    }
                }
                if !r.unified.is_empty() {
                    return Err(CgroupError::BadValue {
                        field: "unified",
                        reason: "needs cgroup v2 (this host's hierarchy is v1)".into(),
                    });
                }
                if let (Some(rules), Some(d)) = (&r.devices, self.dir_of("devices")) {
                    write(d.join("devices.deny"), "a".into())?;
                    for rule in rules {
                        let file = if rule.allow {
                            "devices.allow"
                        } else {
                            "devices.deny"
                        };
                        write(d.join(file), rule.v1_line())?;
                    }
                }
            }
            Version::V2 => {
                let Some(d) = self.dir_of("") else {
                    return Ok(());
                };
                if let Some(m) = r.memory_limit {
                    let v = if m == -1 {
                        "max".to_string()
                    } else {
                        m.to_string()
                    };
                    write(d.join("memory.max"), v)?;
                }
                if let Some(s) = r.cpu_shares {
                    write(d.join("cpu.weight"), shares_to_weight(s).to_string())?;
                }
                if r.cpu_quota.is_some() || r.cpu_period.is_some() {
                    let q = match r.cpu_quota {
                        Some(q) if q > 0 => q.to_string(),
                        _ => "max".to_string(),
                    };
                    let p = r.cpu_period.unwrap_or(100_000);
                    write(d.join("cpu.max"), format!("{q} {p}"))?;
                }
                if let Some(p) = r.pids_limit {
                    let v = if p == -1 {
                        "max".to_string()
                    } else {
                        p.to_string()
                    };
                    write(d.join("pids.max"), v)?;
                }
                if let Some(c) = &r.cpuset_cpus {
                    write(d.join("cpuset.cpus"), c.clone())?;
                }
                if let Some(m) = &r.cpuset_mems {
                    write(d.join("cpuset.mems"), m.clone())?;
                }
                if let Some(m) = r.memory_reservation {
                    let v = if m == -1 {
                        "0".to_string()
                    } else {
                        m.to_string()
                    };
                    write(d.join("memory.low"), v)?;
                }
                if let Some(total) = r.memory_swap {
                    if d.join("memory.swap.max").exists() {
                        let v = match (total, r.memory_limit) {
                            (-1, _) => "max".to_string(),
                            (t, Some(m)) if m > 0 => (t - m).max(0).to_string(),
                            (t, _) => t.to_string(),
                        };
                        write(d.join("memory.swap.max"), v)?;
                    }
                }
                for (size, limit) in &r.hugepage_limits {
                    write(d.join(format!("hugetlb.{size}.max")), limit.to_string())?;
                }
                if let Some(w) = r.blkio_weight {
                    write(
                        d.join("io.weight"),
                        format!("default {}", blkio_to_io_weight(w)),
                    )?;
                }
                for t in &r.io_throttle {
                    let mut line = format!("{}:{}", t.major, t.minor);
                    for (key, v) in [
                        ("rbps", t.read_bps),
                        ("wbps", t.write_bps),
                        ("riops", t.read_iops),
                        ("wiops", t.write_iops),
                    ] {
                        if let Some(v) = v {
                            line.push_str(&format!(" {key}={v}"));
                        }
                    }
                    write(d.join("io.max"), line)?;
                }
                for (k, v) in &r.unified {
                    write(d.join(k), v.clone())?;
                }
                if let Some(rules) = &r.devices {
                    devicefilter::attach(&d, rules).map_err(|source| CgroupError::Write {
                        path: d.clone(),
                        value: "device program".into(),
                        source,
                    })?;
                }
            }
        }
        Ok(())
    }
}
