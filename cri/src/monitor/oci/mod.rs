//! A container run by an external OCI runtime (`runc`, `crun`, `youki`,
//! `runsc`: anything that speaks runc's command line), for a RuntimeClass
//! handler of kind `oci`. The monitor stays the container's one owner and
//! serves the same task protocol; instead of runtime-core it drives the
//! runtime's CLI, as containerd's runc shim does:
//!
//! - the monitor mounts the container's overlay rootfs on its rootfs
//!   directory on the host, as containerd does for runc (the runtime takes
//!   a directory; the container's mount namespace, a copy of the host's,
//!   then shares rshared volumes both ways), and unmounts it when the
//!   container is deleted;
//! - it writes the bundle (`<dir>/bundle/config.json`, [`bundle`]) and runs
//!   `create` with the container's stdio pipes as the runtime's stdio (or
//!   `--console-socket` for a terminal), then adopts the init: the monitor
//!   is a child subreaper, so the init becomes its child when the runtime
//!   exits, and the monitor reaps it and records its exit as for an
//!   embedded container;
//! - `start`, `kill`, `pause`, `resume`, `update --resources`,
//!   `exec --detach --process` (adopted the same way) and `delete --force`
//!   are the task requests; stats are read from the cgroup the runtime
//!   made (the same files runtime-core reads).

pub mod bundle;
mod cli;
mod console;

use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use berth_core::cgroups::{Driver, Resources, Stats, Version};
use berth_core::process::ProcessSpec;
use berth_core::{Config, NamespaceKind, Process, ProcessHandle};
use serde::{Deserialize, Serialize};

pub use cli::RuntimeFailed;

/// The external runtime of a container, in its [`super::MonitorSpec`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OciRuntime {
    /// The runtime's binary.
    pub path: PathBuf,
    /// Its state directory (`--root`), berth's own per handler.
    pub root: PathBuf,
}

/// Where an external runtime put the container's cgroup, to read its
/// figures (the same files runtime-core reads).
#[derive(Debug, Clone)]
pub(in crate::monitor) struct CgroupPlace {
    version: Version,
    root: PathBuf,
    rel: PathBuf,
}

impl CgroupPlace {
    /// Where the cgroup of `c` is under the node's hierarchy.
    pub(in crate::monitor) fn of(c: &berth_core::cgroups::CgroupConfig) -> Option<Self> {
        let root = PathBuf::from(berth_core::container::DEFAULT_CGROUP_ROOT);
        let version = berth_core::cgroups::detect(&root);
        let rel = match c.driver {
            Driver::Cgroupfs => c.path.strip_prefix("/").unwrap_or(&c.path).to_path_buf(),
            Driver::Systemd => {
                let scope =
                    berth_core::cgroups::systemd::parse(&c.path.to_string_lossy(), &c.resources)
                        .ok()?;
                berth_core::cgroups::systemd::scope_path(&scope).ok()?
            }
        };
        Some(CgroupPlace { version, root, rel })
    }

    /// Its figures.
    pub(in crate::monitor) fn stats(&self) -> Stats {
        berth_core::cgroups::read_stats(self.version, &self.root, &self.rel)
    }

    /// Whether the kernel OOM-killed a process in it.
    pub(in crate::monitor) fn oom_killed(&self) -> bool {
        let dirs = match self.version {
            Version::V1 => vec![self.root.join("memory").join(&self.rel)],
            Version::V2 => vec![self.root.join(&self.rel)],
        };
        super::exit::oom_killed_in(&dirs)
    }
}

/// `cgroupsPath` for the bundle: absolute for cgroupfs (runtimes take a
/// relative path as relative to their own cgroup, runtime-core as relative
/// to the root), as it is for systemd (`slice:prefix:name`).
pub(in crate::monitor) fn cgroups_path(config: &Config) -> Option<PathBuf> {
    config.cgroup.as_ref().map(|c| match c.driver {
        Driver::Cgroupfs => Path::new("/").join(&c.path),
        Driver::Systemd => c.path.clone(),
    })
}

/// One container of an external runtime, owned by its monitor.
#[derive(Debug)]
pub struct OciContainer {
    rt: OciRuntime,
    id: String,
    bundle: PathBuf,
    config: Config,
    systemd: bool,
    cgroup: Option<CgroupPlace>,
    started_at: Option<u64>,
    paused: bool,
    execs: u64,
}

/// An external runtime step failed.
#[derive(Debug, thiserror::Error)]
pub enum OciError {
    /// The bundle could not be built.
    #[error(transparent)]
    Bundle(#[from] bundle::BundleError),
    /// The runtime failed or could not be run.
    #[error(transparent)]
    Runtime(#[from] RuntimeFailed),
    /// A file or mount of the monitor's.
    #[error("{step}: {source}")]
    Io {
        /// What was being done.
        step: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The user could not be resolved in the rootfs.
    #[error("resolve the user: {0}")]
    User(#[from] berth_core::security::user::UserError),
}

fn io(step: impl Into<String>) -> impl FnOnce(std::io::Error) -> OciError {
    let step = step.into();
    move |source| OciError::Io { step, source }
}

fn sys(step: &str) -> impl FnOnce(nix::Error) -> OciError + '_ {
    move |e| OciError::Io {
        step: step.to_string(),
        source: std::io::Error::from(e),
    }
}

impl OciContainer {
    /// Creates container `id` with the runtime, its init waiting for
    /// [`OciContainer::release`]; `dir` is the monitor's directory.
    pub fn create(
        rt: &OciRuntime,
        id: &str,
        dir: &Path,
        config: &Config,
        process: Process,
    ) -> Result<(OciContainer, ProcessHandle), OciError> {
        mount_overlay(config, &config.rootfs)?;
        let bundle = dir.join("bundle");
        crate::store::make_dir(&bundle, crate::store::modes::PRIVATE)
            .map_err(io(format!("create {}", bundle.display())))?;
        let systemd = config
            .cgroup
            .as_ref()
            .is_some_and(|c| c.driver == Driver::Systemd);
        let mut c = OciContainer {
            rt: rt.clone(),
            id: id.to_string(),
            bundle,
            config: config.clone(),
            systemd,
            cgroup: None,
            started_at: None,
            paused: false,
            execs: 0,
        };
        match c.create_init(process) {
            Ok(handle) => Ok((c, handle)),
            Err(e) => {
                c.destroy();
                Err(e)
            }
        }
    }

    fn create_init(&mut self, process: Process) -> Result<ProcessHandle, OciError> {
        let user = self.resolve_user(&process.spec)?;
        let cgroups_path = cgroups_path(&self.config);
        let spec = bundle::spec(&self.config, &process.spec, &user, cgroups_path.as_deref())?;
        self.write_json("config.json", &spec)?;
        self.cgroup = self.config.cgroup.as_ref().and_then(CgroupPlace::of);
        let pid_file = self.bundle.join("init.pid");
        let mut args = vec![
            "create".into(),
            format!("--bundle={}", self.bundle.display()),
            format!("--pid-file={}", pid_file.display()),
        ];
        if self.config.no_pivot_root {
            args.push("--no-pivot".into());
        }
        let console = self.run_with_stdio(args, process, None)?;
        self.adopt(&pid_file, console)
    }

    /// Runs `args` (+ the container id) with `process`'s stdio, through a
    /// console socket when it asks for a terminal; returns the terminal's
    /// master.
    fn run_with_stdio(
        &self,
        mut args: Vec<String>,
        process: Process,
        name: Option<&str>,
    ) -> Result<Option<OwnedFd>, OciError> {
        let socket = match process.spec.terminal {
            Some(_) => {
                let path = self
                    .bundle
                    .join(format!("{}.console", name.unwrap_or("init")));
                let s = console::ConsoleSocket::bind(&path)
                    .map_err(io(format!("listen on {}", path.display())))?;
                // Relative to the runtime's working directory, the bundle: a
                // socket address holds 108 bytes, less than berth's paths.
                let name = path.file_name().unwrap_or_default().to_string_lossy();
                args.push(format!("--console-socket={name}"));
                Some(s)
            }
            None => None,
        };
        args.push(self.id.clone());
        let stdio = [process.stdin, process.stdout, process.stderr].map(|s| match s {
            berth_core::Stdio::Fd(fd) => Some(fd),
            _ => None,
        });
        cli::run(&self.rt, &self.bundle, self.systemd, &args, stdio)?;
        match socket {
            Some(s) => Ok(Some(
                s.receive()
                    .map_err(io("receive the terminal from the runtime"))?,
            )),
            None => Ok(None),
        }
    }

    /// The process whose pid the runtime wrote to `pid_file`, now our child.
    fn adopt(&self, pid_file: &Path, console: Option<OwnedFd>) -> Result<ProcessHandle, OciError> {
        let pid = read_pid(pid_file)?;
        let _ = std::fs::remove_file(pid_file);
        ProcessHandle::adopt(pid, console).map_err(sys("open the process's pidfd"))
    }

    /// `process.user` in numbers, from the rootfs's own files.
    fn resolve_user(
        &self,
        p: &ProcessSpec,
    ) -> Result<berth_core::security::user::ResolvedUser, OciError> {
        let root = std::fs::File::open(&self.config.rootfs)
            .map_err(io(format!("open {}", self.config.rootfs.display())))?;
        Ok(berth_core::security::user::resolve_in_root(
            &p.user,
            root.as_fd(),
        )?)
    }

    fn write_json(&self, name: &str, value: &impl Serialize) -> Result<PathBuf, OciError> {
        let path = self.bundle.join(name);
        let data = serde_json::to_vec(value).map_err(|e| OciError::Io {
            step: format!("encode {name}"),
            source: std::io::Error::other(e),
        })?;
        super::write_private(&path, &data).map_err(io(format!("write {}", path.display())))?;
        Ok(path)
    }

    /// Runs `args` + the container id (+ `after`), without stdio.
    fn cli_then(&self, args: &[&str], after: &[&str]) -> Result<(), OciError> {
        let a: Vec<String> = args
            .iter()
            .chain([&self.id.as_str()])
            .chain(after)
            .map(|s| s.to_string())
            .collect();
        cli::run(&self.rt, &self.bundle, self.systemd, &a, [None, None, None])?;
        Ok(())
    }

    /// Runs `args` + the container id, without stdio.
    fn cli(&self, args: &[&str]) -> Result<(), OciError> {
        self.cli_then(args, &[])
    }

    /// Whether `start` has not run yet.
    pub fn created(&self) -> bool {
        self.started_at.is_none()
    }

    /// Releases the init (`start`).
    pub fn release(&mut self) -> Result<(), OciError> {
        self.cli(&["start"])?;
        self.started_at = Some(crate::util::now_nanos().max(0) as u64);
        Ok(())
    }

    /// When `start` returned.
    pub fn started_at(&self) -> Option<u64> {
        self.started_at
    }

    /// Whether it is paused.
    pub fn paused(&self) -> bool {
        self.paused
    }

    /// Signals the init (`kill`).
    pub fn signal(&self, signal: i32) -> Result<(), OciError> {
        // `kill <id> <signal>`.
        self.cli_then(&["kill"], &[&signal.to_string()])
    }

    /// New limits (`update --resources`).
    pub fn set(&mut self, r: &Resources) -> Result<(), OciError> {
        let resources = bundle::resources(r, None)?;
        let file = self.write_json("update.json", &resources)?;
        let arg = format!("--resources={}", file.display());
        let out = self.cli(&["update", &arg]);
        let _ = std::fs::remove_file(&file);
        out?;
        if let Some(cg) = self.config.cgroup.as_mut() {
            cg.resources = r.clone();
        }
        Ok(())
    }

    /// The cgroup's figures.
    pub fn stats(&self) -> Stats {
        self.cgroup
            .as_ref()
            .map(CgroupPlace::stats)
            .unwrap_or_default()
    }

    /// Freezes it.
    pub fn pause(&mut self) -> Result<(), OciError> {
        self.cli(&["pause"])?;
        self.paused = true;
        Ok(())
    }

    /// Thaws it.
    pub fn resume(&mut self) -> Result<(), OciError> {
        self.cli(&["resume"])?;
        self.paused = false;
        Ok(())
    }

    /// Runs `process` in the container (`exec --detach`).
    pub fn exec(&mut self, process: Process) -> Result<ProcessHandle, OciError> {
        self.execs += 1;
        let name = format!("exec-{}", self.execs);
        let user = self.resolve_user(&process.spec)?;
        let spec = bundle::process(&self.config, &process.spec, &user)?;
        let file = self.write_json(&format!("{name}.json"), &spec)?;
        let pid_file = self.bundle.join(format!("{name}.pid"));
        let args = vec![
            "exec".into(),
            "--detach".into(),
            format!("--process={}", file.display()),
            format!("--pid-file={}", pid_file.display()),
        ];
        let out = self.run_with_stdio(args, process, Some(&name));
        let _ = std::fs::remove_file(&file);
        let console = out?;
        self.adopt(&pid_file, console)
    }

    /// Once the init has exited: kills what it left running when it shared
    /// a pid namespace (`kill --all`, as containerd's runc shim does).
    pub fn kill_remaining(&self) -> bool {
        if self.config.creates(NamespaceKind::Pid) {
            return false;
        }
        self.cli_then(&["kill", "--all"], &["9"]).is_ok()
    }

    /// Whether the kernel OOM-killed a process of its cgroup.
    pub fn oom_killed(&self) -> bool {
        self.cgroup.as_ref().is_some_and(CgroupPlace::oom_killed)
    }

    /// Removes it from the runtime (`delete --force`: the runtime kills
    /// what is left, runs the poststop hooks and removes the cgroup) and
    /// removes the bundle. Best effort.
    pub fn destroy(&self) {
        if let Err(e) = self.cli(&["delete", "--force"]) {
            super::diag::warn(&format!("delete: {e}"));
        }
        let _ = std::fs::remove_dir_all(&self.bundle);
        if self.config.overlay.is_some() {
            unmount(&self.config.rootfs);
        }
    }
}

/// Mounts the container's overlay rootfs, if it has one, on `target` in
/// the host's mount namespace, as containerd does for runc: the runtime
/// takes a directory, and its container's mount namespace is a copy of
/// the host's, so mounts the container shares with the host (rshared
/// volumes) propagate both ways. [`unmount`] takes it down.
pub(in crate::monitor) fn mount_overlay(config: &Config, target: &Path) -> Result<(), OciError> {
    match &config.overlay {
        Some(o) => o
            .mount_on(target, config.mount_label.as_deref())
            .map_err(|e| OciError::Io {
                step: format!("mount the rootfs on {}", target.display()),
                source: std::io::Error::other(crate::util::error_chain(&e)),
            }),
        None => Ok(()),
    }
}

/// Unmounts the rootfs at `target` (detached: a process still inside keeps
/// its view); nothing mounted there is fine. Returns whether nothing is
/// mounted there now (so the directory may be removed without reaching
/// into a mounted tree).
pub(in crate::monitor) fn unmount(target: &Path) -> bool {
    // Stacked mounts come off one by one.
    while nix::mount::umount2(target, nix::mount::MntFlags::MNT_DETACH).is_ok() {}
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let target = target.to_string_lossy();
    !mountinfo
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(target.as_ref()))
}

/// The pid a runtime wrote to `file`.
pub(in crate::monitor) fn read_pid(file: &Path) -> Result<i32, OciError> {
    let text = std::fs::read_to_string(file).map_err(io(format!("read {}", file.display())))?;
    text.trim().parse().map_err(|_| OciError::Io {
        step: format!("read {}", file.display()),
        source: std::io::Error::other(format!("not a pid: {text:?}")),
    })
}

/// `delete --force` for a container whose monitor is gone (the daemon's
/// clean-up after a monitor was killed). Best effort.
pub fn delete_leftover(rt: &OciRuntime, dir: &Path, id: &str) -> Result<(), RuntimeFailed> {
    let bundle = dir.join("bundle");
    let args = ["delete".to_string(), "--force".into(), id.to_string()];
    let out = cli::run(rt, &bundle, false, &args, [None, None, None]);
    let _ = std::fs::remove_dir_all(&bundle);
    unmount(&dir.join("rootfs"));
    out
}
