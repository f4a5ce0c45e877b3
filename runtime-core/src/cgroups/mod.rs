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
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub mod devicefilter;
mod pressure;
mod stats;
pub mod systemd;
pub use pressure::{parse_pressure, PressureError, Psi, PsiData};
pub use stats::{read_stats, CpuStats, IoStats, MemoryStats, PidsStats, Stats};
pub use types::*;
pub use validate::{validate_path, validate_resources, MAX_CPU_QUOTA};

mod apply;
mod types;
mod validate;
use validate::missing;

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

    /// Sends SIGKILL once to every process of the cgroup (thawed first: a
    /// frozen task takes SIGKILL only once thawed), without waiting for them
    /// to be gone (see [`Cgroup::kill_all`]). Returns whether the kernel
    /// kills them all itself (v2 `cgroup.kill`).
    pub fn kill_once(&self) -> bool {
        if let Some(d) = self.dir_of("freezer") {
            let _ = fs::write(d.join("freezer.state"), "THAWED");
        }
        if self.version == Version::V2 {
            if let Some(d) = self.dirs.first() {
                if fs::write(d.join("cgroup.kill"), "1").is_ok() {
                    return true;
                }
            }
        }
        for pid in self.pids() {
            let _ =
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGKILL);
        }
        false
    }

    /// SIGKILLs every process in the cgroup until it is empty (v2: `cgroup.kill`).
    pub fn kill_all(&self) {
        if self.kill_once() {
            return;
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
