//! Container cgroups: placement, resources, device rules, freeze, stats,
//! live updates, OOM counts and removal.
//!
//! [`Cgroup`] is the one interface; its implementation is chosen at run
//! time and recorded in the container's state, so a restarted daemon or
//! monitor drives the same one: cgroupfs v1 (a directory per controller),
//! cgroupfs v2 (the unified hierarchy, eBPF device program, `cgroup.kill`),
//! or the systemd driver ([`systemd`]: a transient scope over D-Bus, then
//! cgroupfs v2 for what systemd has no property for). The version comes
//! from the hierarchy ([`detect`], [`hierarchy_mode`] from mountinfo), the
//! driver from configuration ([`Driver`]).
//!
//! Not built on the `cgroups-rs` crate (Kata): its 0.5 has a `Manager`
//! trait with cgroupfs and systemd (zbus) managers, but takes resources as
//! oci-spec's `LinuxResources` and keeps its state in a live manager
//! object, while berth validates its own [`Resources`] (errors name the
//! field) and must record exactly which directories it created — it never
//! adopts or removes a cgroup it did not make — in state it reloads later.
//!
//! The code takes the cgroup root as a parameter so unit tests run against a
//! temporary directory that mimics cgroupfs. It only ever removes directories
//! it created itself (recorded in the container state).

use std::fs;
use std::io::ErrorKind;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub mod devicefilter;
mod pressure;
mod stats;
pub mod systemd;
pub use pressure::{parse_pressure, PressureError, Psi, PsiData};
pub use stats::{read_stats, CpuStats, IoStats, MemoryStats, PidsStats, Stats};

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

/// Which cgroup hierarchy the machine has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Version {
    /// Per-controller hierarchies under `root/<controller>`.
    V1,
    /// The unified hierarchy at `root`.
    V2,
}

/// v1 controllers berth places containers in (those that are mounted).
const V1_CONTROLLERS: [&str; 9] = [
    "cpu", "cpuacct", "memory", "pids", "freezer", "blkio", "devices", "cpuset", "hugetlb",
];

/// The cgroup of one container, as recorded in its state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cgroup {
    /// Hierarchy version.
    pub version: Version,
    /// The cgroup root (`/sys/fs/cgroup`).
    pub root: PathBuf,
    /// Path below the root (no leading `/`).
    pub path: PathBuf,
    /// The container's directories (one per v1 controller, one on v2).
    pub dirs: Vec<PathBuf>,
    /// Directories berth created (deepest last); only these are removed.
    pub created: Vec<PathBuf>,
    /// With the systemd driver: the scope unit that owns the cgroup
    /// (systemd creates and removes its directory).
    #[serde(default)]
    pub systemd: Option<systemd::Scope>,
    /// The ledger of parent cgroups berth created, shared by the containers
    /// of one state root (see [`Ledger`]).
    #[serde(default)]
    pub ledger: Option<PathBuf>,
}

/// Parent cgroups berth created (`a` of `a/ctr`), shared by all containers
/// of one state root: a file of absolute paths, changed under `flock`. A
/// parent made by one container and shared with others is removed by the
/// last of them, whichever created it — and never one berth did not make
/// (kubelet's pod cgroups are kubelet's).
#[derive(Debug)]
pub struct Ledger {
    file: std::fs::File,
    dirs: std::collections::BTreeSet<PathBuf>,
}

impl Ledger {
    /// Opens (creating) and locks the ledger at `path`; the lock holds
    /// until the value is dropped.
    pub fn lock(path: &Path) -> std::io::Result<Ledger> {
        use std::io::Read;
        use std::os::fd::AsRawFd;
        let mut file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        // SAFETY: flock on an fd we own; blocks until the lock is ours.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut text = String::new();
        file.read_to_string(&mut text)?;
        let dirs = text
            .lines()
            .filter(|l| !l.is_empty())
            .map(PathBuf::from)
            .collect();
        Ok(Ledger { file, dirs })
    }

    fn save(&mut self) -> std::io::Result<()> {
        use std::io::{Seek, Write};
        let text: String = self
            .dirs
            .iter()
            .map(|d| format!("{}\n", d.display()))
            .collect();
        self.file.set_len(0)?;
        self.file.seek(std::io::SeekFrom::Start(0))?;
        self.file.write_all(text.as_bytes())
    }
}

/// The v1 controllers mounted under `root` that berth places containers
/// in (each container gets a directory in every one of them).
pub fn v1_controllers(root: &Path) -> Vec<&'static str> {
    V1_CONTROLLERS
        .into_iter()
        .filter(|c| root.join(c).join("cgroup.procs").exists())
        .collect()
}

/// Detects the hierarchy under `root`: v2 when `root/cgroup.controllers`
/// exists (a pure unified mount), v1 otherwise.
pub fn detect(root: &Path) -> Version {
    if root.join("cgroup.controllers").exists() {
        Version::V2
    } else {
        Version::V1
    }
}

/// How the machine's cgroup hierarchies are mounted (from
/// `/proc/self/mountinfo`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Mode {
    /// Only v1 controller hierarchies.
    Legacy,
    /// v1 controllers plus an (empty or systemd-only) v2 mount.
    Hybrid,
    /// Only the unified v2 hierarchy.
    Unified,
    /// No cgroup file system mounted.
    None,
}

impl Mode {
    /// Words for messages.
    pub fn describe(self) -> &'static str {
        match self {
            Mode::Legacy => "cgroup v1",
            Mode::Hybrid => "hybrid: v1 controllers plus a v2 mount",
            Mode::Unified => "cgroup v2",
            Mode::None => "no cgroup file system",
        }
    }
}

/// Reads the hierarchy mode from a mountinfo text (pure).
pub fn mode_from_mountinfo(mountinfo: &str) -> Mode {
    let (mut v1, mut v2) = (false, false);
    for line in mountinfo.lines() {
        // `... - <fstype> <source> <options>`
        let Some((_, after)) = line.split_once(" - ") else {
            continue;
        };
        match after.split_whitespace().next() {
            Some("cgroup") => v1 = true,
            Some("cgroup2") => v2 = true,
            _ => {}
        }
    }
    match (v1, v2) {
        (true, true) => Mode::Hybrid,
        (true, false) => Mode::Legacy,
        (false, true) => Mode::Unified,
        (false, false) => Mode::None,
    }
}

/// This machine's hierarchy mode.
pub fn hierarchy_mode() -> Mode {
    mode_from_mountinfo(&fs::read_to_string("/proc/self/mountinfo").unwrap_or_default())
}

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

fn missing(field: &'static str, controller: &str) -> CgroupError {
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

/// The standard shares → weight conversion (runc, crun, systemd):
/// `1 + ((shares - 2) * 9999) / 262142`.
pub fn shares_to_weight(shares: u64) -> u64 {
    1 + (shares.clamp(2, 262_144) - 2) * 9999 / 262_142
}

/// The blkio weight (10–1000) as a v2 `io.weight` (1–10000), as runc
/// converts it.
pub fn blkio_to_io_weight(w: u16) -> u64 {
    1 + (u64::from(w.clamp(10, 1000)) - 10) * 9999 / 990
}

fn write(path: PathBuf, value: String) -> Result<(), CgroupError> {
    fs::write(&path, &value).map_err(|source| CgroupError::Write {
        path,
        value,
        source,
    })
}

/// Creates every missing directory of `rel` below `root`, recording those
/// made. The leaf itself must be new: an existing cgroup (a host service's,
/// another container's) is never adopted, so it can never be killed or
/// removed by this container's cleanup.
fn mkdir_recorded(root: &Path, rel: &Path, created: &mut Vec<PathBuf>) -> Result<(), CgroupError> {
    let mut cur = root.to_path_buf();
    let n = rel.components().count();
    for (i, c) in rel.components().enumerate() {
        cur.push(c);
        match fs::create_dir(&cur) {
            Ok(()) => created.push(cur.clone()),
            Err(e) if e.kind() == ErrorKind::AlreadyExists && i + 1 < n => {}
            Err(e) if e.kind() == ErrorKind::AlreadyExists => return Err(CgroupError::Exists(cur)),
            Err(source) => return Err(CgroupError::Create { path: cur, source }),
        }
    }
    Ok(())
}

/// A new v1 cpuset cgroup starts with no CPUs and no memory nodes (no task
/// could join it): each level of `rel` below `croot` that has none takes
/// its parent's, as runc does.
fn inherit_cpuset(croot: &Path, rel: &Path) -> Result<(), CgroupError> {
    let mut parent = croot.to_path_buf();
    for c in rel.components() {
        let dir = parent.join(c);
        for file in ["cpuset.cpus", "cpuset.mems"] {
            let own = fs::read_to_string(dir.join(file)).unwrap_or_default();
            if own.trim().is_empty() {
                let from = fs::read_to_string(parent.join(file)).unwrap_or_default();
                if !from.trim().is_empty() {
                    write(dir.join(file), from.trim().to_string())?;
                }
            }
        }
        parent = dir;
    }
    Ok(())
}

impl Cgroup {
    /// Creates the cgroup of `config` under `root` and applies its limits.
    /// On failure, whatever was created is removed again.
    ///
    /// With the systemd driver nothing exists until the first pid is added
    /// ([`Cgroup::add_pid`] starts the scope unit with it).
    pub fn create(root: &Path, config: &CgroupConfig) -> Result<Self, CgroupError> {
        Cgroup::create_with_ledger(root, config, None)
    }

    /// [`Cgroup::create`], recording the parents it makes in the shared
    /// [`Ledger`] at `ledger`, so whichever container is the last to use
    /// one removes it.
    pub fn create_with_ledger(
        root: &Path,
        config: &CgroupConfig,
        ledger: Option<&Path>,
    ) -> Result<Self, CgroupError> {
        validate_resources(&config.resources)?;
        let version = detect(root);
        if config.driver == Driver::Systemd {
            if version != Version::V2 {
                return Err(CgroupError::BadValue {
                    field: "driver",
                    reason: format!(
                        "the systemd driver needs the unified cgroup v2 hierarchy ({} is {})",
                        root.display(),
                        hierarchy_mode().describe()
                    ),
                });
            }
            let scope = systemd::parse(&config.path.to_string_lossy(), &config.resources)?;
            let path = systemd::scope_path(&scope)?;
            let dir = root.join(&path);
            if dir.exists() {
                return Err(CgroupError::Exists(dir));
            }
            return Ok(Cgroup {
                version,
                root: root.to_path_buf(),
                path,
                dirs: vec![dir],
                created: Vec::new(),
                systemd: Some(scope),
                ledger: None,
            });
        }
        let path = validate_path(&config.path)?;
        let mut cg = Cgroup {
            version,
            root: root.to_path_buf(),
            path: path.clone(),
            dirs: Vec::new(),
            created: Vec::new(),
            systemd: None,
            ledger: ledger.map(Path::to_path_buf),
        };
        // Held while directories are made, so a parent cannot vanish under
        // us (its last user removing it) between its check and our mkdir.
        let mut book = match ledger {
            Some(p) => Some(Ledger::lock(p).map_err(|source| CgroupError::Create {
                path: p.to_path_buf(),
                source,
            })?),
            None => None,
        };
        let res = cg.make_dirs().and_then(|()| {
            if let Some(b) = &mut book {
                for d in cg.created.iter().filter(|d| !cg.dirs.contains(d)) {
                    b.dirs.insert(d.clone());
                }
                b.save().map_err(|source| CgroupError::Create {
                    path: cg.ledger.clone().unwrap_or_default(),
                    source,
                })?;
            }
            Ok(())
        });
        drop(book);
        let res = res.and_then(|()| cg.apply(&config.resources));
        if let Err(e) = res {
            // Only what this call created is removed; nothing is killed.
            let _ = cg.remove();
            return Err(e);
        }
        Ok(cg)
    }

    fn make_dirs(&mut self) -> Result<(), CgroupError> {
        match self.version {
            Version::V1 => {
                for ctrl in V1_CONTROLLERS {
                    let croot = self.root.join(ctrl);
                    if !croot.join("cgroup.procs").exists() {
                        continue; // controller not mounted here
                    }
                    mkdir_recorded(&croot, &self.path, &mut self.created)?;
                    if ctrl == "cpuset" {
                        inherit_cpuset(&croot, &self.path)?;
                    }
                    self.dirs.push(croot.join(&self.path));
                }
            }
            Version::V2 => {
                // Enable the controllers we use on every ancestor.
                let mut cur = self.root.clone();
                for c in self.path.components() {
                    let avail =
                        fs::read_to_string(cur.join("cgroup.controllers")).unwrap_or_default();
                    let want: Vec<String> = ["cpu", "cpuset", "memory", "pids", "io", "hugetlb"]
                        .iter()
                        .filter(|c| avail.split_whitespace().any(|a| a == **c))
                        .map(|c| format!("+{c}"))
                        .collect();
                    if !want.is_empty() {
                        write(cur.join("cgroup.subtree_control"), want.join(" "))?;
                    }
                    cur.push(c);
                    match fs::create_dir(&cur) {
                        Ok(()) => self.created.push(cur.clone()),
                        Err(e)
                            if e.kind() == ErrorKind::AlreadyExists
                                && cur != self.root.join(&self.path) => {}
                        Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                            return Err(CgroupError::Exists(cur))
                        }
                        Err(source) => return Err(CgroupError::Create { path: cur, source }),
                    }
                }
                self.dirs.push(cur);
            }
        }
        Ok(())
    }

    pub(crate) fn dir_of(&self, ctrl: &str) -> Option<PathBuf> {
        match self.version {
            Version::V1 => {
                let d = self.root.join(ctrl).join(&self.path);
                self.dirs.contains(&d).then_some(d)
            }
            Version::V2 => self.dirs.first().cloned(),
        }
    }

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

    /// The cgroup's usage figures.
    pub fn stats(&self) -> Stats {
        read_stats(self.version, &self.root, &self.path)
    }

    /// Freezes (`true`) or thaws the cgroup's processes — v1 `freezer.state`
    /// FROZEN/THAWED, v2 `cgroup.freeze` — and waits (up to 5 s) until the
    /// kernel reports the new state settled (a freeze takes effect task by
    /// task).
    pub fn freeze(&self, frozen: bool) -> Result<(), CgroupError> {
        // (file to write, value, file to watch, the line it shows when done)
        let (file, value, check, want) = match self.version {
            Version::V1 => {
                let d = self
                    .dir_of("freezer")
                    .ok_or_else(|| missing("freeze", "freezer"))?;
                let v = if frozen { "FROZEN" } else { "THAWED" };
                (d.join("freezer.state"), v, d.join("freezer.state"), v)
            }
            Version::V2 => {
                let d = self
                    .dirs
                    .first()
                    .cloned()
                    .ok_or_else(|| missing("freeze", "cgroup"))?;
                let (v, w) = if frozen {
                    ("1", "frozen 1")
                } else {
                    ("0", "frozen 0")
                };
                (d.join("cgroup.freeze"), v, d.join("cgroup.events"), w)
            }
        };
        write(file.clone(), value.to_string())?;
        for _ in 0..1000 {
            let settled =
                fs::read_to_string(&check).is_ok_and(|s| s.lines().any(|l| l.trim() == want));
            if settled {
                return Ok(());
            }
            // v1 FREEZING: asking again moves stragglers along.
            if self.version == Version::V1 && frozen {
                let _ = fs::write(&file, value);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Err(CgroupError::BadValue {
            field: "freeze",
            reason: format!("{} did not settle within 5 s", check.display()),
        })
    }

    /// Moves process `pid` (and its threads) into the cgroup. With the
    /// systemd driver the first pid starts the scope, then the limits
    /// systemd has no property for are written.
    pub fn add_pid(&self, pid: i32) -> Result<(), CgroupError> {
        if let Some(scope) = &self.systemd {
            if !self.dirs.iter().all(|d| d.exists()) {
                systemd::start(&self.root, scope, pid)?;
                let fs_only = Cgroup {
                    systemd: None,
                    ..self.clone()
                };
                return fs_only.apply(&scope.resources);
            }
        }
        for d in &self.dirs {
            write(d.join("cgroup.procs"), pid.to_string())?;
        }
        Ok(())
    }

    /// Pids of the processes in the cgroup.
    pub fn pids(&self) -> Vec<i32> {
        let Some(d) = self.dirs.first() else {
            return Vec::new();
        };
        fs::read_to_string(d.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    /// SIGKILLs every process in the cgroup until it is empty (v2: `cgroup.kill`).
    pub fn kill_all(&self) {
        // A frozen task takes SIGKILL only once thawed.
        if let Some(d) = self.dir_of("freezer") {
            let _ = fs::write(d.join("freezer.state"), "THAWED");
        }
        if self.version == Version::V2 {
            if let Some(d) = self.dirs.first() {
                if fs::write(d.join("cgroup.kill"), "1").is_ok() {
                    return;
                }
            }
        }
        for _ in 0..100 {
            let pids = self.pids();
            if pids.is_empty() {
                return;
            }
            for pid in pids {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::SIGKILL,
                );
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Removes the directories berth created, deepest first, retrying while
    /// the last tasks of the container's own cgroup drain. A parent that
    /// berth created but that another cgroup still uses is left in place
    /// (its last user removes it). Missing directories are fine.
    pub fn remove(&self) -> Result<(), CgroupError> {
        if let Some(scope) = &self.systemd {
            return systemd::stop(&self.root, scope);
        }
        // With a ledger, the parents are removed under its lock (below), as
        // they are made under it: removing one here could pull it from under
        // a container being created in it.
        let mut created: Vec<PathBuf> = self
            .created
            .iter()
            .filter(|d| self.ledger.is_none() || self.dirs.contains(d))
            .cloned()
            .collect();
        created.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        for dir in created {
            let own = self.dirs.contains(&dir);
            let mut tries = 0;
            loop {
                match fs::remove_dir(&dir) {
                    Ok(()) => break,
                    Err(e) if e.kind() == ErrorKind::NotFound => break,
                    Err(e)
                        if !own
                            && matches!(
                                e.raw_os_error(),
                                Some(libc::EBUSY) | Some(libc::ENOTEMPTY)
                            ) =>
                    {
                        break
                    }
                    Err(e) if e.raw_os_error() == Some(libc::EBUSY) && tries < 200 => {
                        tries += 1;
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(source) => return Err(CgroupError::Remove { path: dir, source }),
                }
            }
        }
        self.remove_ledger_parents()
    }

    /// Removes the empty parents the ledger says berth made, nearest first,
    /// up to the first that is still in use (or not berth's).
    fn remove_ledger_parents(&self) -> Result<(), CgroupError> {
        let Some(path) = &self.ledger else {
            return Ok(());
        };
        let mut book = match Ledger::lock(path) {
            Ok(b) => b,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
            Err(source) => {
                return Err(CgroupError::Remove {
                    path: path.clone(),
                    source,
                })
            }
        };
        let before = book.dirs.len();
        for own in &self.dirs {
            let mut cur = own.parent();
            while let Some(dir) = cur {
                if !dir.starts_with(&self.root) || dir == self.root || !book.dirs.contains(dir) {
                    break;
                }
                match fs::remove_dir(dir) {
                    Ok(()) => {}
                    Err(e) if e.kind() == ErrorKind::NotFound => {}
                    // Another container's cgroup is still in it.
                    Err(_) => break,
                }
                book.dirs.remove(dir);
                cur = dir.parent();
            }
        }
        if book.dirs.len() != before {
            book.save().map_err(|source| CgroupError::Remove {
                path: path.clone(),
                source,
            })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_v1(root: &Path) {
        for c in V1_CONTROLLERS {
            fs::create_dir_all(root.join(c)).unwrap();
            fs::write(root.join(c).join("cgroup.procs"), "").unwrap();
        }
    }

    #[test]
    fn v1_creates_applies_and_removes_only_its_dirs() {
        let t = tempfile::tempdir().unwrap();
        fake_v1(t.path());
        fs::create_dir(t.path().join("memory/existing")).unwrap();
        let cfg = CgroupConfig {
            path: "/existing/ctr".into(),
            driver: Default::default(),
            resources: Resources {
                memory_limit: Some(64 << 20),
                cpu_shares: Some(512),
                cpu_quota: Some(50_000),
                cpu_period: Some(100_000),
                pids_limit: Some(10),
                devices: Some(vec![DeviceRule::allow_char(Some(1), Some(3), "rw")]),
                ..Default::default()
            },
        };
        let cg = Cgroup::create(t.path(), &cfg).unwrap();
        assert_eq!(cg.version, Version::V1);
        // Everything denied first, then the rules (the fake keeps the last
        // line written to each file).
        let rd0 = |p: &str| fs::read_to_string(t.path().join(p)).unwrap();
        assert_eq!(rd0("devices/existing/ctr/devices.deny"), "a");
        assert_eq!(rd0("devices/existing/ctr/devices.allow"), "c 1:3 rw");
        let rd = |p: &str| fs::read_to_string(t.path().join(p)).unwrap();
        assert_eq!(rd("memory/existing/ctr/memory.limit_in_bytes"), "67108864");
        assert_eq!(rd("cpu/existing/ctr/cpu.shares"), "512");
        assert_eq!(rd("cpu/existing/ctr/cpu.cfs_quota_us"), "50000");
        assert_eq!(rd("pids/existing/ctr/pids.max"), "10");
        cg.add_pid(42).unwrap();
        assert_eq!(rd("freezer/existing/ctr/cgroup.procs"), "42");
        // remove_dir fails on non-empty fake dirs; clear the files first
        for d in &cg.dirs {
            for f in fs::read_dir(d).unwrap() {
                fs::remove_file(f.unwrap().path()).unwrap();
            }
        }
        cg.remove().unwrap();
        assert!(
            t.path().join("memory/existing").is_dir(),
            "pre-existing parent kept"
        );
        assert!(!t.path().join("memory/existing/ctr").exists());
        assert!(
            !t.path().join("cpu/existing").exists(),
            "created parent removed"
        );
    }

    #[test]
    fn a_shared_parent_stays_while_another_cgroup_uses_it() {
        let t = tempfile::tempdir().unwrap();
        fake_v1(t.path());
        let cfg = |p: &str| CgroupConfig {
            path: p.into(),
            driver: Default::default(),
            resources: Resources::default(),
        };
        let a = Cgroup::create(t.path(), &cfg("shared/a")).unwrap();
        let b = Cgroup::create(t.path(), &cfg("shared/b")).unwrap();
        assert!(a.created.contains(&t.path().join("pids/shared")));
        assert!(!b.created.contains(&t.path().join("pids/shared")));
        a.remove().unwrap();
        assert!(t.path().join("pids/shared/b").is_dir(), "b untouched");
        b.remove().unwrap();
    }

    #[test]
    fn an_existing_cgroup_is_never_adopted() {
        let t = tempfile::tempdir().unwrap();
        fake_v1(t.path());
        fs::create_dir(t.path().join("pids/system.slice")).unwrap();
        let cfg = CgroupConfig {
            path: "system.slice".into(),
            driver: Default::default(),
            resources: Resources::default(),
        };
        assert!(matches!(
            Cgroup::create(t.path(), &cfg),
            Err(CgroupError::Exists(_))
        ));
        assert!(t.path().join("pids/system.slice").is_dir(), "left alone");
    }

    #[test]
    fn v2_writes_unified_files() {
        let t = tempfile::tempdir().unwrap();
        fs::write(t.path().join("cgroup.controllers"), "cpu io memory pids").unwrap();
        let cfg = CgroupConfig {
            path: "a".into(),
            driver: Default::default(),
            resources: Resources {
                memory_limit: Some(1 << 20),
                cpu_shares: Some(1024),
                cpu_quota: Some(20_000),
                pids_limit: Some(-1),
                ..Default::default()
            },
        };
        let cg = Cgroup::create(t.path(), &cfg).unwrap();
        assert_eq!(cg.dirs, vec![t.path().join("a")]);
        let rd = |p: &str| fs::read_to_string(t.path().join(p)).unwrap();
        assert_eq!(rd("cgroup.subtree_control"), "+cpu +memory +pids +io");
        assert_eq!(rd("a/memory.max"), "1048576");
        assert_eq!(rd("a/cpu.weight"), "39");
        assert_eq!(rd("a/cpu.max"), "20000 100000");
        assert_eq!(rd("a/pids.max"), "max");
    }

    #[test]
    fn rejects_bad_paths_and_values() {
        assert!(validate_path(Path::new("../x")).is_err());
        assert!(validate_path(Path::new("/")).is_err());
        assert_eq!(
            validate_path(Path::new("/a/b")).unwrap(),
            PathBuf::from("a/b")
        );
        let r = Resources {
            cpu_shares: Some(1),
            ..Default::default()
        };
        assert!(matches!(
            validate_resources(&r),
            Err(CgroupError::BadValue {
                field: "cpu_shares",
                ..
            })
        ));
        assert_eq!(shares_to_weight(2), 1);
        let r = Resources {
            devices: Some(vec![DeviceRule::allow_char(None, None, "rx")]),
            ..Default::default()
        };
        assert!(validate_resources(&r).is_err());
        assert_eq!(
            default_device_rules()[0].v1_line(),
            "c *:* m",
            "any node may be created, none used unless allowed"
        );
        assert_eq!(shares_to_weight(262_144), 10000);
    }

    #[test]
    fn v1_cpuset_inherits_and_the_other_controls_land() {
        let t = tempfile::tempdir().unwrap();
        fake_v1(t.path());
        fs::write(t.path().join("cpuset/cpuset.cpus"), "0-1\n").unwrap();
        fs::write(t.path().join("cpuset/cpuset.mems"), "0\n").unwrap();
        let r = Resources {
            memory_limit: Some(64 << 20),
            memory_reservation: Some(32 << 20),
            memory_swap: Some(128 << 20),
            blkio_weight: Some(500),
            ..Default::default()
        };
        let cg = Cgroup::create(
            t.path(),
            &CgroupConfig {
                path: "pod/ctr".into(),
                driver: Default::default(),
                resources: r,
            },
        )
        .unwrap();
        let rd = |p: &str| fs::read_to_string(t.path().join(p)).unwrap_or_default();
        // Each new level got its parent's CPUs and nodes.
        assert_eq!(rd("cpuset/pod/cpuset.cpus"), "0-1");
        assert_eq!(rd("cpuset/pod/ctr/cpuset.mems"), "0");
        assert_eq!(rd("memory/pod/ctr/memory.soft_limit_in_bytes"), "33554432");
        assert_eq!(rd("blkio/pod/ctr/blkio.weight"), "500");
        assert_eq!(
            rd("memory/pod/ctr/memory.memsw.limit_in_bytes"),
            "",
            "no swap accounting (no memsw file): left alone"
        );
        let set = Resources {
            cpuset_cpus: Some("1".into()),
            ..Default::default()
        };
        cg.apply(&set).unwrap();
        assert_eq!(rd("cpuset/pod/ctr/cpuset.cpus"), "1");
        let v2_only = Resources {
            unified: [("memory.high".to_string(), "1G".to_string())].into(),
            ..Default::default()
        };
        assert!(matches!(
            cg.apply(&v2_only),
            Err(CgroupError::BadValue {
                field: "unified",
                ..
            })
        ));
    }

    #[test]
    fn v2_swap_io_weight_hugetlb_and_unified() {
        let t = tempfile::tempdir().unwrap();
        fs::write(
            t.path().join("cgroup.controllers"),
            "cpu io memory pids hugetlb",
        )
        .unwrap();
        fs::create_dir(t.path().join("a")).unwrap();
        fs::write(t.path().join("a/memory.swap.max"), "").unwrap();
        let cg = Cgroup {
            version: Version::V2,
            root: t.path().into(),
            path: "a".into(),
            dirs: vec![t.path().join("a")],
            created: vec![],
            systemd: None,
            ledger: None,
        };
        cg.apply(&Resources {
            memory_limit: Some(100 << 20),
            memory_swap: Some(150 << 20),
            blkio_weight: Some(1000),
            hugepage_limits: vec![("2MB".into(), 4 << 20)],
            unified: [("memory.high".to_string(), "90M".to_string())].into(),
            ..Default::default()
        })
        .unwrap();
        let rd = |p: &str| fs::read_to_string(t.path().join("a").join(p)).unwrap();
        assert_eq!(
            rd("memory.swap.max"),
            (50u64 << 20).to_string(),
            "swap = total - memory"
        );
        assert_eq!(rd("io.weight"), "default 10000");
        assert_eq!(rd("hugetlb.2MB.max"), (4u64 << 20).to_string());
        assert_eq!(rd("memory.high"), "90M");
    }

    #[test]
    fn bad_extended_values_name_their_field() {
        for (r, field) in [
            (
                Resources {
                    cpuset_cpus: Some("0-".into()),
                    ..Default::default()
                },
                "cpuset_cpus",
            ),
            (
                Resources {
                    hugepage_limits: vec![("2XB".into(), 1)],
                    ..Default::default()
                },
                "hugepage_limits",
            ),
            (
                Resources {
                    blkio_weight: Some(5),
                    ..Default::default()
                },
                "blkio_weight",
            ),
            (
                Resources {
                    unified: [("cgroup.procs".to_string(), "1".to_string())].into(),
                    ..Default::default()
                },
                "unified",
            ),
            (
                Resources {
                    memory_limit: Some(1 << 30),
                    memory_swap: Some(1 << 20),
                    ..Default::default()
                },
                "memory_swap",
            ),
        ] {
            match validate_resources(&r) {
                Err(CgroupError::BadValue { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{field}: {other:?}"),
            }
        }
        assert_eq!(blkio_to_io_weight(10), 1);
        assert_eq!(blkio_to_io_weight(500), 4950);
    }

    #[test]
    fn io_throttles_on_both_versions() {
        let r = Resources {
            io_throttle: vec![IoThrottle {
                major: 8,
                minor: 0,
                read_bps: Some(1 << 20),
                write_iops: Some(100),
                ..Default::default()
            }],
            ..Default::default()
        };
        let t = tempfile::tempdir().unwrap();
        fake_v1(t.path());
        let cfg = CgroupConfig {
            path: "io".into(),
            driver: Driver::Cgroupfs,
            resources: r.clone(),
        };
        Cgroup::create(t.path(), &cfg).unwrap();
        let rd = |p: &str| fs::read_to_string(t.path().join(p)).unwrap_or_default();
        assert_eq!(rd("blkio/io/blkio.throttle.read_bps_device"), "8:0 1048576");
        assert_eq!(rd("blkio/io/blkio.throttle.write_iops_device"), "8:0 100");
        assert_eq!(rd("blkio/io/blkio.throttle.write_bps_device"), "");
        let t = tempfile::tempdir().unwrap();
        fs::write(t.path().join("cgroup.controllers"), "io").unwrap();
        Cgroup::create(t.path(), &cfg).unwrap();
        assert_eq!(
            fs::read_to_string(t.path().join("io/io.max")).unwrap(),
            "8:0 rbps=1048576 wiops=100"
        );
        let empty = Resources {
            io_throttle: vec![IoThrottle::default()],
            ..Default::default()
        };
        assert!(validate_resources(&empty).is_err());
    }

    #[test]
    fn hierarchy_mode_from_mountinfo() {
        let v1 = "30 25 0:26 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n";
        let v2 = "31 25 0:27 / /sys/fs/cgroup rw shared:9 - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(mode_from_mountinfo(v1), Mode::Legacy);
        assert_eq!(mode_from_mountinfo(v2), Mode::Unified);
        assert_eq!(mode_from_mountinfo(&format!("{v1}{v2}")), Mode::Hybrid);
        assert_eq!(mode_from_mountinfo(""), Mode::None);
    }

    #[test]
    fn the_systemd_driver_wants_v2_and_a_scope_path() {
        let t = tempfile::tempdir().unwrap();
        fake_v1(t.path());
        let cfg = CgroupConfig {
            path: "kubepods.slice:berth:abc".into(),
            driver: Driver::Systemd,
            resources: Resources::default(),
        };
        assert!(matches!(
            Cgroup::create(t.path(), &cfg),
            Err(CgroupError::BadValue {
                field: "driver",
                ..
            })
        ));
        // On v2 nothing is made until the first pid (the scope needs one).
        let t = tempfile::tempdir().unwrap();
        fs::write(t.path().join("cgroup.controllers"), "memory").unwrap();
        let cg = Cgroup::create(t.path(), &cfg).unwrap();
        assert_eq!(
            cg.dirs,
            vec![t.path().join("kubepods.slice/berth-abc.scope")]
        );
        assert!(cg.created.is_empty() && !cg.dirs[0].exists());
        let bad = CgroupConfig {
            path: "kubepods/pod1/c".into(),
            ..cfg
        };
        assert!(Cgroup::create(t.path(), &bad).is_err());
    }

    #[test]
    fn the_last_user_of_a_shared_parent_removes_it_whoever_made_it() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("cg");
        fs::create_dir(&root).unwrap();
        fs::write(root.join("cgroup.controllers"), "").unwrap();
        let ledger = t.path().join("ledger");
        fs::create_dir(root.join("kubelet-made")).unwrap();
        let cfg = |p: &str| CgroupConfig {
            path: p.into(),
            driver: Driver::Cgroupfs,
            resources: Resources::default(),
        };
        let a = Cgroup::create_with_ledger(&root, &cfg("shared/deep/a"), Some(&ledger)).unwrap();
        let b = Cgroup::create_with_ledger(&root, &cfg("shared/deep/b"), Some(&ledger)).unwrap();
        let k = Cgroup::create_with_ledger(&root, &cfg("kubelet-made/c"), Some(&ledger)).unwrap();
        // (The fake cgroupfs keeps files in the leaves: empty them so rmdir works.)
        for cg in [&a, &b, &k] {
            for d in &cg.dirs {
                for f in fs::read_dir(d).unwrap() {
                    fs::remove_file(f.unwrap().path()).unwrap();
                }
            }
        }
        for d in ["shared", "shared/deep"] {
            for f in fs::read_dir(root.join(d)).unwrap().flatten() {
                if f.path().is_file() {
                    fs::remove_file(f.path()).unwrap();
                }
            }
        }
        // The creator goes first: the parent stays for b...
        a.remove().unwrap();
        assert!(root.join("shared/deep/b").is_dir());
        // ...and b, which did not make it, removes it last.
        b.remove().unwrap();
        assert!(!root.join("shared").exists(), "no empty cgroup left behind");
        // A parent berth did not make is never removed.
        k.remove().unwrap();
        assert!(root.join("kubelet-made").is_dir());
        assert_eq!(fs::read_to_string(&ledger).unwrap(), "");
    }
}
