//! What a cgroup is asked for: its configuration, resources, I/O
//! throttles and device rules, and the errors of working with one.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// One device's I/O limits; `None` leaves a direction unlimited.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IoThrottle {
    /// Block device major number.
    pub major: u32,
    /// Block device minor number.
    pub minor: u32,
    /// Bytes read per second.
    #[serde(default)]
    pub read_bps: Option<u64>,
    /// Bytes written per second.
    #[serde(default)]
    pub write_bps: Option<u64>,
    /// Read operations per second.
    #[serde(default)]
    pub read_iops: Option<u64>,
    /// Write operations per second.
    #[serde(default)]
    pub write_iops: Option<u64>,
}

/// Which driver manages a container's cgroup (kubelet's `cgroupDriver`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Driver {
    /// berth writes the cgroup tree itself (v1 or v2).
    #[default]
    Cgroupfs,
    /// A transient systemd scope under a slice, created over D-Bus
    /// (cgroup v2 only); `path` is then `slice:prefix:name`.
    Systemd,
}

/// Where a container's cgroup goes and what it may use.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CgroupConfig {
    /// Path below the cgroup root (`/kubepods/pod1/ctr`, leading `/`
    /// optional); with the systemd driver `slice:prefix:name`
    /// (`kubepods-besteffort-pod1.slice:berth:<id>` → the scope
    /// `berth-<id>.scope` in that slice).
    pub path: PathBuf,
    /// The driver.
    #[serde(default)]
    pub driver: Driver,
    /// Limits.
    #[serde(default)]
    pub resources: Resources,
}

/// Resource limits. `None` leaves the kernel's default.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    /// Memory limit in bytes.
    #[serde(default)]
    pub memory_limit: Option<i64>,
    /// CPU shares (v1 `cpu.shares`; converted to `cpu.weight` on v2).
    #[serde(default)]
    pub cpu_shares: Option<u64>,
    /// CFS quota in microseconds per period (`-1`: unlimited).
    #[serde(default)]
    pub cpu_quota: Option<i64>,
    /// CFS period in microseconds.
    #[serde(default)]
    pub cpu_period: Option<u64>,
    /// Maximum number of tasks (`-1`: unlimited).
    #[serde(default)]
    pub pids_limit: Option<i64>,
    /// CPUs the tasks may run on (`0-3,6`).
    #[serde(default)]
    pub cpuset_cpus: Option<String>,
    /// Memory nodes they may use (`0`).
    #[serde(default)]
    pub cpuset_mems: Option<String>,
    /// Memory reservation, the soft limit (v1 `memory.soft_limit_in_bytes`,
    /// v2 `memory.low`); `-1`: none.
    #[serde(default)]
    pub memory_reservation: Option<i64>,
    /// Memory plus swap (Docker's and CRI's meaning; v1
    /// `memory.memsw.limit_in_bytes`, v2 `memory.swap.max` = this − the
    /// memory limit); `-1`: unlimited. Left alone, as containerd does, when
    /// the kernel has no swap accounting.
    #[serde(default)]
    pub memory_swap: Option<i64>,
    /// Huge page limits: page size as the kernel names it (`2MB`, `1GB`)
    /// and bytes.
    #[serde(default)]
    pub hugepage_limits: Vec<(String, u64)>,
    /// Block I/O weight, 10–1000 (v1 `blkio.weight`; v2 `io.weight`, scaled
    /// to 1–10000).
    #[serde(default)]
    pub blkio_weight: Option<u16>,
    /// Per-device I/O limits (v1 `blkio.throttle.*`, v2 `io.max`).
    #[serde(default)]
    pub io_throttle: Vec<IoThrottle>,
    /// cgroup v2 files to write as they are (CRI `unified`); refused on v1.
    #[serde(default)]
    pub unified: std::collections::BTreeMap<String, String>,
    /// Device access rules, applied in order after denying everything
    /// (`None`: left as they are): the v1 `devices` controller, or on v2
    /// an eBPF program attached to the cgroup ([`devicefilter`]).
    #[serde(default)]
    pub devices: Option<Vec<DeviceRule>>,
}

/// Which devices a [`DeviceRule`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeviceType {
    /// Every device (`a`).
    All,
    /// Character devices (`c`).
    Char,
    /// Block devices (`b`).
    Block,
}

/// One device cgroup rule, as in the OCI spec (`linux.resources.devices`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceRule {
    /// Allow (`true`) or deny.
    pub allow: bool,
    /// Device type.
    pub kind: DeviceType,
    /// Major number (`None`: any).
    pub major: Option<u32>,
    /// Minor number (`None`: any).
    pub minor: Option<u32>,
    /// Any of `r` (read), `w` (write), `m` (mknod).
    pub access: String,
}

impl DeviceRule {
    /// An allow rule for character device `major:minor` (`None`: any).
    pub fn allow_char(major: Option<u32>, minor: Option<u32>, access: &str) -> Self {
        DeviceRule {
            allow: true,
            kind: DeviceType::Char,
            major,
            minor,
            access: access.into(),
        }
    }

    /// Every device, every access (a privileged container).
    pub fn allow_all() -> Self {
        DeviceRule {
            allow: true,
            kind: DeviceType::All,
            major: None,
            minor: None,
            access: "rwm".into(),
        }
    }

    /// The v1 `devices.allow`/`devices.deny` line: `c 1:3 rwm`, `a *:* rwm`.
    pub fn v1_line(&self) -> String {
        let t = match self.kind {
            DeviceType::All => 'a',
            DeviceType::Char => 'c',
            DeviceType::Block => 'b',
        };
        let n = |v: Option<u32>| v.map_or("*".to_string(), |v| v.to_string());
        format!("{t} {}:{} {}", n(self.major), n(self.minor), self.access)
    }
}

/// What every container may use, as runc allows it (`specconv.AllowedDevices`):
/// creating any node (`m`), and using the nodes a container's `/dev` has —
/// null, zero, full, random, urandom, tty, ptmx and the pts, and
/// `/dev/net/tun`. Anything else (a host disk made with `mknod`, say) is
/// denied even to the container's root.
pub fn default_device_rules() -> Vec<DeviceRule> {
    let c = |major, minor| DeviceRule::allow_char(Some(major), minor, "rwm");
    vec![
        DeviceRule::allow_char(None, None, "m"),
        DeviceRule {
            allow: true,
            kind: DeviceType::Block,
            major: None,
            minor: None,
            access: "m".into(),
        },
        c(1, Some(3)),
        c(1, Some(8)),
        c(1, Some(7)),
        c(5, Some(0)),
        c(1, Some(5)),
        c(1, Some(9)),
        c(136, None),
        c(5, Some(2)),
        c(10, Some(200)),
    ]
}

/// A cgroup operation failed.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// The configured path is not a plain path below the root.
    #[error("cgroup path {0:?} must be a path below the cgroup root without '..'")]
    BadPath(PathBuf),
    /// A value is out of range.
    #[error("invalid cgroup value for {field}: {reason}")]
    BadValue {
        /// Resource field.
        field: &'static str,
        /// Why.
        reason: String,
    },
    /// The container's cgroup already exists (berth never adopts a cgroup).
    #[error("cgroup {0} already exists")]
    Exists(PathBuf),
    /// Creating a directory failed.
    #[error("create cgroup {path}")]
    Create {
        /// Directory.
        path: PathBuf,
        /// I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Writing a control file failed.
    #[error("write {value:?} to {path}")]
    Write {
        /// Control file.
        path: PathBuf,
        /// Value written.
        value: String,
        /// I/O error.
        #[source]
        source: std::io::Error,
    },
    /// systemd (the systemd driver) refused or failed.
    #[error("systemd: {0}")]
    Systemd(String),
    /// Removing a directory failed.
    #[error("remove cgroup {path}")]
    Remove {
        /// Directory.
        path: PathBuf,
        /// I/O error.
        #[source]
        source: std::io::Error,
    },
}
