//! The systemd cgroup driver: each container is a transient `.scope` unit
//! in a `.slice`, created over systemd's D-Bus API (`StartTransientUnit`,
//! as runc's and crun's systemd drivers do) with `Delegate=yes` and its
//! resources as unit properties, so systemd — which owns the tree when
//! kubelet runs with `cgroupDriver: systemd` — knows and keeps them. What
//! systemd has no property for (huge pages, `unified`, device programs,
//! I/O throttles by number) is then written to the scope's cgroupfs files,
//! which delegation allows. Stats, freeze and kill use cgroupfs (v2).
//!
//! A scope needs a process when it is created, so the unit is started when
//! the first pid is added ([`super::Cgroup::add_pid`]).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use zbus::zvariant::{OwnedObjectPath, Value};

use super::{shares_to_weight, CgroupError, Resources};

/// A container's scope, as recorded in its state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scope {
    /// `berth-<id>.scope`.
    pub unit: String,
    /// The slice it goes in (`kubepods-besteffort-pod1.slice`).
    pub slice: String,
    /// Its resources (set when the unit starts).
    pub resources: Resources,
}

fn bad(reason: impl Into<String>) -> CgroupError {
    CgroupError::BadValue {
        field: "path",
        reason: reason.into(),
    }
}

/// A unit name part: what systemd accepts without escaping.
fn plain_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 200
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-:@".contains(&b))
}

/// `slice:prefix:name` → the scope (`prefix-name.scope` in `slice`; an
/// empty slice is `system.slice`, as runc does).
pub fn parse(path: &str, resources: &Resources) -> Result<Scope, CgroupError> {
    let mut parts = path.trim_start_matches('/').splitn(3, ':');
    let (Some(slice), Some(prefix), Some(name)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(bad(format!(
            "{path:?}: the systemd driver takes slice:prefix:name"
        )));
    };
    let slice = if slice.is_empty() {
        "system.slice"
    } else {
        slice
    };
    if !slice.ends_with(".slice") || !plain_name(slice) || slice.contains(':') {
        return Err(bad(format!("{slice:?} is not a slice name (x-y.slice)")));
    }
    if !plain_name(prefix) || !plain_name(name) || prefix.contains(':') || name.contains(':') {
        return Err(bad(format!(
            "{path:?}: prefix and name must be letters, digits, _ . - @"
        )));
    }
    Ok(Scope {
        unit: format!("{prefix}-{name}.scope"),
        slice: slice.to_string(),
        resources: resources.clone(),
    })
}

/// A slice's place in the tree: `a-b-c.slice` → `a.slice/a-b.slice/a-b-c.slice`
/// (systemd's nesting by dashes); `-.slice` is the root.
pub fn expand_slice(slice: &str) -> Result<PathBuf, CgroupError> {
    let name = slice
        .strip_suffix(".slice")
        .ok_or_else(|| bad(format!("{slice:?} is not a slice")))?;
    if name == "-" {
        return Ok(PathBuf::new());
    }
    if name.is_empty() || name.starts_with('-') || name.ends_with('-') || name.contains("--") {
        return Err(bad(format!("{slice:?} is not a valid slice name")));
    }
    let mut path = PathBuf::new();
    let mut prefix = String::new();
    for part in name.split('-') {
        if !prefix.is_empty() {
            prefix.push('-');
        }
        prefix.push_str(part);
        path.push(format!("{prefix}.slice"));
    }
    Ok(path)
}

/// The scope's path below the cgroup root.
pub fn scope_path(scope: &Scope) -> Result<PathBuf, CgroupError> {
    Ok(expand_slice(&scope.slice)?.join(&scope.unit))
}

/// A CPU list (`0-3,6`) as systemd's `AllowedCPUs` byte mask.
pub fn cpu_mask(list: &str) -> Option<Vec<u8>> {
    let mut bits: Vec<u8> = Vec::new();
    for part in list.split(',') {
        let (a, b) = match part.split_once('-') {
            Some((a, b)) => (a.parse::<usize>().ok()?, b.parse::<usize>().ok()?),
            None => {
                let n = part.parse::<usize>().ok()?;
                (n, n)
            }
        };
        if a > b || b >= 8192 {
            return None;
        }
        for cpu in a..=b {
            if bits.len() <= cpu / 8 {
                bits.resize(cpu / 8 + 1, 0);
            }
            bits[cpu / 8] |= 1 << (cpu % 8);
        }
    }
    Some(bits)
}

/// The unit properties for `r` (those systemd has; the rest go to
/// cgroupfs). `u64::MAX` is systemd's "infinity".
pub fn properties(r: &Resources) -> Vec<(&'static str, Value<'static>)> {
    let mut p: Vec<(&'static str, Value<'static>)> = Vec::new();
    let unlimited = |v: i64| if v < 0 { u64::MAX } else { v as u64 };
    if let Some(m) = r.memory_limit {
        p.push(("MemoryMax", Value::U64(unlimited(m))));
    }
    if let Some(m) = r.memory_reservation {
        p.push(("MemoryLow", Value::U64(if m < 0 { 0 } else { m as u64 })));
    }
    if let Some(t) = r.memory_swap {
        let swap = match (t, r.memory_limit) {
            (-1, _) => u64::MAX,
            (t, Some(m)) if m > 0 => (t - m).max(0) as u64,
            (t, _) => t.max(0) as u64,
        };
        p.push(("MemorySwapMax", Value::U64(swap)));
    }
    if let Some(s) = r.cpu_shares {
        p.push(("CPUWeight", Value::U64(shares_to_weight(s))));
    }
    if r.cpu_quota.is_some() || r.cpu_period.is_some() {
        let period = r.cpu_period.unwrap_or(100_000);
        p.push(("CPUQuotaPeriodUSec", Value::U64(period)));
        let per_sec = match r.cpu_quota {
            // systemd counts quota per second in steps of 10 ms: round up,
            // as runc does, so a small quota is never none.
            Some(q) if q > 0 => {
                let us = (q as u64).saturating_mul(1_000_000) / period;
                us.div_ceil(10_000) * 10_000
            }
            _ => u64::MAX,
        };
        p.push(("CPUQuotaPerSecUSec", Value::U64(per_sec)));
    }
    if let Some(n) = r.pids_limit {
        p.push(("TasksMax", Value::U64(unlimited(n))));
    }
    if let Some(mask) = r.cpuset_cpus.as_deref().and_then(cpu_mask) {
        p.push(("AllowedCPUs", Value::from(mask)));
    }
    if let Some(mask) = r.cpuset_mems.as_deref().and_then(cpu_mask) {
        p.push(("AllowedMemoryNodes", Value::from(mask)));
    }
    if let Some(w) = r.blkio_weight {
        p.push(("IOWeight", Value::U64(super::blkio_to_io_weight(w))));
    }
    p
}

fn dbus_err(what: &str, e: impl std::fmt::Display) -> CgroupError {
    CgroupError::Systemd(format!("{what}: {e}"))
}

fn manager(conn: &zbus::blocking::Connection) -> Result<zbus::blocking::Proxy<'_>, CgroupError> {
    zbus::blocking::Proxy::new(
        conn,
        "org.freedesktop.systemd1",
        "/org/freedesktop/systemd1",
        "org.freedesktop.systemd1.Manager",
    )
    .map_err(|e| dbus_err("systemd manager", e))
}

fn system_bus() -> Result<zbus::blocking::Connection, CgroupError> {
    zbus::blocking::Connection::system()
        .map_err(|e| dbus_err("connecting to the system bus (is systemd running?)", e))
}

/// Starts the scope with `pid` in it and waits until its cgroup holds it.
pub fn start(root: &Path, scope: &Scope, pid: i32) -> Result<(), CgroupError> {
    let conn = system_bus()?;
    let mgr = manager(&conn)?;
    let pid = u32::try_from(pid).map_err(|_| dbus_err("pid", pid))?;
    let mut props: Vec<(&str, Value)> = vec![
        (
            "Description",
            Value::from(format!("berth container {}", scope.unit)),
        ),
        ("Slice", Value::from(scope.slice.clone())),
        ("PIDs", Value::from(vec![pid])),
        ("Delegate", Value::Bool(true)),
        ("DefaultDependencies", Value::Bool(false)),
        ("MemoryAccounting", Value::Bool(true)),
        ("CPUAccounting", Value::Bool(true)),
        ("TasksAccounting", Value::Bool(true)),
        ("IOAccounting", Value::Bool(true)),
    ];
    props.extend(properties(&scope.resources));
    let aux: Vec<(&str, Vec<(&str, Value)>)> = Vec::new();
    let _job: OwnedObjectPath = mgr
        .call(
            "StartTransientUnit",
            &(scope.unit.as_str(), "fail", props, aux),
        )
        .map_err(|e| dbus_err(&format!("StartTransientUnit {}", scope.unit), e))?;
    // The job runs asynchronously: the scope exists once systemd moved the
    // process into it.
    let procs = root.join(scope_path(scope)?).join("cgroup.procs");
    let want = pid.to_string();
    for _ in 0..1000 {
        if std::fs::read_to_string(&procs).is_ok_and(|s| s.lines().any(|l| l.trim() == want)) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Err(CgroupError::Systemd(format!(
        "{}: pid {pid} not in {} after 5 s",
        scope.unit,
        procs.display()
    )))
}

/// Sets the properties of `r` on the running scope (UpdateContainerResources).
pub fn set(scope: &Scope, r: &Resources) -> Result<(), CgroupError> {
    let props = properties(r);
    if props.is_empty() {
        return Ok(());
    }
    let conn = system_bus()?;
    let mgr = manager(&conn)?;
    mgr.call::<_, _, ()>("SetUnitProperties", &(scope.unit.as_str(), true, props))
        .map_err(|e| dbus_err(&format!("SetUnitProperties {}", scope.unit), e))
}

/// Stops the scope (systemd removes its cgroup) and waits until the cgroup
/// is gone. A unit that is not there is fine.
pub fn stop(root: &Path, scope: &Scope) -> Result<(), CgroupError> {
    let conn = system_bus()?;
    let mgr = manager(&conn)?;
    let r: Result<OwnedObjectPath, _> = mgr.call("StopUnit", &(scope.unit.as_str(), "replace"));
    match r {
        Ok(_) => {}
        Err(zbus::Error::MethodError(name, _, _))
            if name.as_str() == "org.freedesktop.systemd1.NoSuchUnit" => {}
        Err(e) => return Err(dbus_err(&format!("StopUnit {}", scope.unit), e)),
    }
    // A scope that failed stays listed until reset.
    let _: Result<(), _> = mgr.call("ResetFailedUnit", &(scope.unit.as_str(),));
    let dir = root.join(scope_path(scope)?);
    for _ in 0..1000 {
        if !dir.exists() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Err(CgroupError::Systemd(format!(
        "{} still exists 5 s after StopUnit {}",
        dir.display(),
        scope.unit
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_nest_by_dashes() {
        assert_eq!(
            expand_slice("kubepods-besteffort-pod12.slice").unwrap(),
            PathBuf::from(
                "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod12.slice"
            )
        );
        assert_eq!(expand_slice("-.slice").unwrap(), PathBuf::new());
        assert_eq!(
            expand_slice("system.slice").unwrap(),
            PathBuf::from("system.slice")
        );
        for bad in ["a--b.slice", "-a.slice", "a-.slice", "a.scope", ".slice"] {
            assert!(expand_slice(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn paths_name_a_scope_in_a_slice() {
        let r = Resources::default();
        let s = parse("kubepods-burstable-pod1.slice:berth:abc123", &r).unwrap();
        assert_eq!(s.unit, "berth-abc123.scope");
        assert_eq!(
            scope_path(&s).unwrap(),
            PathBuf::from("kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice/berth-abc123.scope")
        );
        assert_eq!(parse(":berth:x", &r).unwrap().slice, "system.slice");
        for bad in [
            "kubepods/pod1/c",
            "a.slice:berth",
            "a.slice:ber/th:x",
            "a.service:b:c",
            "a.slice:b:c d",
        ] {
            assert!(parse(bad, &r).is_err(), "{bad}");
        }
    }

    #[test]
    fn resources_become_unit_properties() {
        let r = Resources {
            memory_limit: Some(64 << 20),
            memory_swap: Some(96 << 20),
            cpu_shares: Some(1024),
            cpu_quota: Some(25_000),
            cpu_period: Some(100_000),
            pids_limit: Some(-1),
            cpuset_cpus: Some("0-2,9".into()),
            ..Default::default()
        };
        let p: std::collections::HashMap<_, _> = properties(&r).into_iter().collect();
        assert_eq!(p["MemoryMax"], Value::U64(64 << 20));
        assert_eq!(p["MemorySwapMax"], Value::U64(32 << 20));
        assert_eq!(p["CPUWeight"], Value::U64(39));
        assert_eq!(p["CPUQuotaPerSecUSec"], Value::U64(250_000));
        assert_eq!(p["CPUQuotaPeriodUSec"], Value::U64(100_000));
        assert_eq!(p["TasksMax"], Value::U64(u64::MAX));
        assert_eq!(
            p["AllowedCPUs"],
            Value::from(vec![0b0000_0111u8, 0b0000_0010])
        );
        // A tiny quota still limits (rounded up to systemd's 10 ms step).
        let small = Resources {
            cpu_quota: Some(1000),
            cpu_period: Some(100_000),
            ..Default::default()
        };
        let p: std::collections::HashMap<_, _> = properties(&small).into_iter().collect();
        assert_eq!(p["CPUQuotaPerSecUSec"], Value::U64(10_000));
        assert_eq!(cpu_mask("3-1"), None);
    }
}
