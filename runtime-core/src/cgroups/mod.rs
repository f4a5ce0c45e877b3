//! Cgroup placement and the basic resource limits (memory, cpu, pids) on the
//! cgroupfs drivers, v1 and v2.
//!
//! The code takes the cgroup root as a parameter so unit tests run against a
//! temporary directory that mimics cgroupfs. It only ever removes directories
//! it created itself (recorded in the container state).

use std::fs;
use std::io::ErrorKind;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

mod stats;
pub use stats::{read_stats, CpuStats, IoStats, MemoryStats, PidsStats, Stats};

/// Where a container's cgroup goes and what it may use.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CgroupConfig {
    /// Path below the cgroup root (`/kubepods/pod1/ctr`, leading `/` optional).
    pub path: PathBuf,
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
    /// Device access rules, applied in order after denying everything
    /// (`None`: the device controller is left as it is). Enforced through
    /// the v1 `devices` controller; on v2 (an eBPF program) not yet.
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
const V1_CONTROLLERS: [&str; 7] = [
    "cpu", "cpuacct", "memory", "pids", "freezer", "blkio", "devices",
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
        if q != -1 && q < 1000 {
            return bad(
                "cpu_quota",
                "must be -1 (unlimited) or at least 1000 microseconds",
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

impl Cgroup {
    /// Creates the cgroup of `config` under `root` and applies its limits.
    /// On failure, whatever was created is removed again.
    pub fn create(root: &Path, config: &CgroupConfig) -> Result<Self, CgroupError> {
        let path = validate_path(&config.path)?;
        validate_resources(&config.resources)?;
        let version = detect(root);
        let mut cg = Cgroup {
            version,
            root: root.to_path_buf(),
            path: path.clone(),
            dirs: Vec::new(),
            created: Vec::new(),
        };
        let res = cg.make_dirs().and_then(|()| cg.apply(&config.resources));
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
                    self.dirs.push(croot.join(&self.path));
                }
            }
            Version::V2 => {
                // Enable the controllers we use on every ancestor.
                let mut cur = self.root.clone();
                for c in self.path.components() {
                    let avail =
                        fs::read_to_string(cur.join("cgroup.controllers")).unwrap_or_default();
                    let want: Vec<String> = ["cpu", "memory", "pids", "io"]
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

    fn dir_of(&self, ctrl: &str) -> Option<PathBuf> {
        match self.version {
            Version::V1 => {
                let d = self.root.join(ctrl).join(&self.path);
                self.dirs.contains(&d).then_some(d)
            }
            Version::V2 => self.dirs.first().cloned(),
        }
    }

    /// Writes the limits of `r`.
    pub fn apply(&self, r: &Resources) -> Result<(), CgroupError> {
        validate_resources(r)?;
        match self.version {
            Version::V1 => {
                if let (Some(m), Some(d)) = (r.memory_limit, self.dir_of("memory")) {
                    write(d.join("memory.limit_in_bytes"), m.to_string())?;
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
            }
        }
        Ok(())
    }

    /// The cgroup's usage figures.
    pub fn stats(&self) -> Stats {
        read_stats(self.version, &self.root, &self.path)
    }

    /// Moves process `pid` (and its threads) into the cgroup.
    pub fn add_pid(&self, pid: i32) -> Result<(), CgroupError> {
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
        let mut created = self.created.clone();
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
            resources: Resources {
                memory_limit: Some(64 << 20),
                cpu_shares: Some(512),
                cpu_quota: Some(50_000),
                cpu_period: Some(100_000),
                pids_limit: Some(10),
                devices: Some(vec![DeviceRule::allow_char(Some(1), Some(3), "rw")]),
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
}
