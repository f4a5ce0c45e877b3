//! The container object: create, load, start, run, exec, signal, processes,
//! state, status, destroy.

pub mod checkpoint;
mod checkpoint_restore;
mod checkpoint_stdio;
pub mod checkpoint_userns;
mod criu;
mod destroy;
mod exec;
mod hooks;
mod launch;
mod resources;
mod restore_check;
mod restore_fence;
mod start;
pub mod state;

use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use state::{InitState, State};

use crate::cgroups::CgroupError;
use crate::config::{Config, ConfigError, NamespaceKind};
use crate::id::{ContainerId, IdError};
use crate::process::channel::{ChannelError, InitFailure};
use crate::process::{ExitStatus, InitBinary};
use crate::sys;

/// Where a container is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Status {
    /// The init is set up and waits for [`Container::release`].
    Created,
    /// The init runs the user process.
    Running,
    /// The container's processes are frozen.
    Paused,
    /// No init: not started yet, or it has exited.
    Stopped,
}

/// An operation, for the transition checks of [`Status`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// [`Container::start`]
    Start,
    /// [`Container::release`]
    Release,
    /// [`Container::exec`]
    Exec,
    /// [`Container::signal`]
    Signal,
    /// [`Container::pause`]
    Pause,
    /// [`Container::resume`]
    Resume,
    /// [`Container::checkpoint`]
    Checkpoint,
    /// [`Container::set`]
    Update,
}

impl Status {
    /// Whether `op` is allowed in this status.
    pub fn allows(self, op: Operation) -> bool {
        matches!(
            (self, op),
            (Status::Stopped, Operation::Start)
                | (Status::Created, Operation::Release)
                | (Status::Running, Operation::Exec)
                | (
                    Status::Created | Status::Running | Status::Paused,
                    Operation::Signal | Operation::Update
                )
                | (Status::Running, Operation::Pause)
                | (Status::Paused, Operation::Resume)
        )
    }

    /// `Ok` when `op` is allowed, else [`ContainerError::InvalidState`].
    pub fn check(self, op: Operation) -> Result<(), ContainerError> {
        if self.allows(op) {
            Ok(())
        } else {
            Err(ContainerError::InvalidState { op, status: self })
        }
    }
}

/// A container operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    /// The id is not valid.
    #[error("invalid container id")]
    InvalidId(#[from] IdError),
    /// The config is not valid.
    #[error("invalid config")]
    InvalidConfig(#[from] ConfigError),
    /// The process is not valid.
    #[error("invalid process: {0}")]
    InvalidProcess(String),
    /// A container with this id exists.
    #[error("container {0} already exists")]
    AlreadyExists(ContainerId),
    /// No container with this id.
    #[error("container {0} does not exist")]
    NotFound(ContainerId),
    /// The operation is not allowed in the current status.
    #[error("cannot {op:?} a container that is {status:?}")]
    InvalidState {
        /// Operation.
        op: Operation,
        /// Current status.
        status: Status,
    },
    /// The init was already started once; a container runs one init.
    #[error("container {0} has already run its init; destroy and create it again")]
    AlreadyStarted(ContainerId),
    /// The overlay rootfs could not be prepared (for CRIU's restore).
    #[error("prepare the overlay rootfs")]
    Overlay(#[from] crate::config::OverlayError),
    /// The state directory or file could not be written or read.
    #[error("container state {path}")]
    StateIo {
        /// Path.
        path: PathBuf,
        /// I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The state file is unreadable.
    #[error("load container state")]
    StateLoad(#[from] state::LoadError),
    /// A cgroup operation failed.
    #[error("cgroup")]
    Cgroup(#[from] CgroupError),
    /// The init binary could not be prepared.
    #[error("prepare the sealed init binary")]
    InitBinary(#[source] std::io::Error),
    /// A syscall of the runtime side failed.
    #[error("{step}")]
    Sys {
        /// What was being done.
        step: &'static str,
        /// Kernel error.
        #[source]
        source: nix::Error,
    },
    /// The channel to the init failed.
    #[error("talk to the container init")]
    Channel(#[from] ChannelError),
    /// The init reported a failure.
    #[error("container init failed: {0}")]
    Init(InitFailure),
    /// The init exited without reporting.
    #[error("container init exited unexpectedly ({0:?})")]
    InitExited(Option<ExitStatus>),
    /// The container's processes are gone.
    #[error("container {0} is not running")]
    NotRunning(ContainerId),
    /// What the container is made of cannot be checkpointed or restored.
    #[error("not supported: {0}")]
    Unsupported(String),
    /// A checkpoint's files are missing or malformed.
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    /// A task restored from a checkpoint holds more privilege than the
    /// container may have; the restore was undone.
    #[error("restore refused: restored task {tid} holds {excess}, beyond the container's security context")]
    RestoreRefused {
        /// The task (thread id, as the host sees it).
        tid: i32,
        /// What it holds beyond the ceiling.
        excess: String,
    },
    /// CRIU failed; its log has the details.
    #[error("{message} (log: {})", log.display())]
    Criu {
        /// `dump` or `restore`.
        step: &'static str,
        /// What failed, with the errors CRIU logged.
        message: String,
        /// CRIU's log file.
        log: PathBuf,
    },
    /// A `prestart`, `createRuntime`, `createContainer` or
    /// `startContainer` hook failed (the step failed with it).
    #[error(transparent)]
    Hook(Box<crate::hooks::HookError>),
    /// CRIU did not finish in time (it was killed).
    #[error("criu {step} did not finish within {after:?}")]
    Timeout {
        /// `dump` or `restore`.
        step: &'static str,
        /// The timeout.
        after: std::time::Duration,
    },
}

impl From<crate::hooks::HookError> for ContainerError {
    fn from(e: crate::hooks::HookError) -> Self {
        ContainerError::Hook(Box::new(e))
    }
}

/// A container: its id, state directory and persisted [`State`].
///
/// ```no_run
/// use berth_core::{Config, Container, Process};
///
/// berth_core::init::run_if_requested();
/// let mut config = Config::new("/var/lib/mycontainer/rootfs");
/// config.hostname = Some("testing".into());
/// let mut c = Container::create("/run/mystate", "c1", config)?;
/// let p = c.run(Process::new(["/bin/echo", "hello"]).inherit_stdio())?;
/// let status = p.wait()?;
/// c.destroy()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Container {
    dir: PathBuf,
    state: State,
    init_binary: InitBinary,
    cgroup_root: PathBuf,
}

/// Default mount point of the cgroup filesystems.
pub const DEFAULT_CGROUP_ROOT: &str = "/sys/fs/cgroup";

impl Container {
    /// Validates `config` and records a new container `id` under `state_root`
    /// (the directory `state_root/id`, mode 0700). No process is started yet.
    ///
    /// Errors: [`ContainerError::InvalidId`], [`ContainerError::InvalidConfig`],
    /// [`ContainerError::AlreadyExists`]. Nothing is left behind on error.
    pub fn create(
        state_root: impl AsRef<Path>,
        id: &str,
        config: Config,
    ) -> Result<Self, ContainerError> {
        let id = ContainerId::new(id)?;
        config.validate()?;
        let state_root = state_root.as_ref();
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| ContainerError::StateIo { path, source }
        };
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(state_root)
            .map_err(io(state_root))?;
        let dir = state_root.join(id.as_str());
        match fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                return Err(ContainerError::AlreadyExists(id))
            }
            Err(e) => return Err(io(&dir)(e)),
        }
        let state = State {
            version: state::STATE_VERSION,
            id,
            config,
            created_unix_nanos: state::now_nanos(),
            init: None,
            cgroup: None,
        };
        if let Err(e) = state
            .save(&dir)
            .and_then(|()| hooks::write_bundle(&dir, &state))
        {
            let _ = fs::remove_dir_all(&dir);
            return Err(io(&dir)(e));
        }
        Ok(Self {
            dir,
            state,
            init_binary: InitBinary::default(),
            cgroup_root: DEFAULT_CGROUP_ROOT.into(),
        })
    }

    /// Loads the container `id` from `state_root` (from any process, e.g. the
    /// daemon after a restart).
    pub fn load(state_root: impl AsRef<Path>, id: &str) -> Result<Self, ContainerError> {
        let id = ContainerId::new(id)?;
        let dir = state_root.as_ref().join(id.as_str());
        if !dir.join(state::STATE_FILE).exists() {
            return Err(ContainerError::NotFound(id));
        }
        let state = State::load(&dir)?;
        Ok(Self {
            dir,
            state,
            init_binary: InitBinary::default(),
            cgroup_root: DEFAULT_CGROUP_ROOT.into(),
        })
    }

    /// Uses `bin` as the init binary (default: this executable).
    pub fn with_init_binary(mut self, bin: InitBinary) -> Self {
        self.init_binary = bin;
        self
    }

    /// Uses `root` as the cgroup root (default [`DEFAULT_CGROUP_ROOT`]).
    pub fn with_cgroup_root(mut self, root: impl Into<PathBuf>) -> Self {
        self.cgroup_root = root.into();
        self
    }

    /// The id.
    pub fn id(&self) -> &ContainerId {
        &self.state.id
    }

    /// The config.
    pub fn config(&self) -> &Config {
        &self.state.config
    }

    /// The persisted state (pid, creation time, namespace and cgroup paths).
    pub fn state(&self) -> &State {
        &self.state
    }

    /// The container's state directory.
    pub fn state_dir(&self) -> &Path {
        &self.dir
    }

    /// The init's pid while it lives.
    pub fn init_pid(&self) -> Option<i32> {
        self.state.init.as_ref().filter(|i| alive(i)).map(|i| i.pid)
    }

    /// The current status, read from the kernel.
    pub fn status(&self) -> Status {
        let Some(init) = &self.state.init else {
            return Status::Stopped;
        };
        if !alive(init) {
            return Status::Stopped;
        }
        if init.restored_stopped || self.dir.join(state::START_SOCKET).exists() {
            return Status::Created;
        }
        if self.is_frozen() {
            return Status::Paused;
        }
        Status::Running
    }

    fn is_frozen(&self) -> bool {
        let Some(cg) = &self.state.cgroup else {
            return false;
        };
        cg.dirs.iter().any(|d| {
            fs::read_to_string(d.join("freezer.state")).is_ok_and(|s| s.trim() == "FROZEN")
                || fs::read_to_string(d.join("cgroup.freeze")).is_ok_and(|s| s.trim() == "1")
        })
    }

    /// Freezes every process of the container (its cgroup's freezer) and
    /// returns once the kernel reports them frozen. Needs a cgroup.
    pub fn pause(&self) -> Result<(), ContainerError> {
        self.status().check(Operation::Pause)?;
        self.freezer()?.freeze(true).map_err(ContainerError::from)
    }

    /// Thaws a paused container.
    pub fn resume(&self) -> Result<(), ContainerError> {
        self.status().check(Operation::Resume)?;
        self.freezer()?.freeze(false).map_err(ContainerError::from)
    }

    fn freezer(&self) -> Result<&crate::cgroups::Cgroup, ContainerError> {
        self.state
            .cgroup
            .as_ref()
            .ok_or(CgroupError::BadValue {
                field: "cgroup",
                reason: "pausing needs the container to have a cgroup".into(),
            })
            .map_err(ContainerError::from)
    }

    /// Sends `sig` to the init (never to another process that reused its pid).
    pub fn signal(&self, sig: i32) -> Result<(), ContainerError> {
        self.status().check(Operation::Signal)?;
        let pidfd = self.init_pidfd()?;
        sys::pidfd_send_signal(std::os::fd::AsFd::as_fd(&pidfd), sig).map_err(|source| {
            ContainerError::Sys {
                step: "signal the init",
                source,
            }
        })
    }

    /// A pidfd of the init, checked to be the recorded process.
    pub(crate) fn init_pidfd(&self) -> Result<std::os::fd::OwnedFd, ContainerError> {
        let not_running = || ContainerError::NotRunning(self.state.id.clone());
        let init = self.state.init.as_ref().ok_or_else(not_running)?;
        let fd = sys::pidfd_open(init.pid).map_err(|_| not_running())?;
        // The pidfd pins the process; if the start time still matches now,
        // it is the init and not a later reuse of the pid.
        if sys::process_start_time(init.pid) != Some(init.start_ticks) {
            return Err(not_running());
        }
        Ok(fd)
    }

    /// Host pids of the container's processes.
    pub fn processes(&self) -> Vec<i32> {
        if let Some(cg) = &self.state.cgroup {
            let pids = cg.pids();
            if !pids.is_empty() {
                return pids;
            }
        }
        let Some(init) = self.state.init.as_ref().filter(|i| alive(i)) else {
            return Vec::new();
        };
        if !self.state.config.creates(NamespaceKind::Pid) {
            return vec![init.pid];
        }
        // Every process whose pid namespace is the init's.
        let ns = |pid: &str| fs::read_link(format!("/proc/{pid}/ns/pid")).ok();
        let Some(target) = ns(&init.pid.to_string()) else {
            return Vec::new();
        };
        let mut out: Vec<i32> = fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()))
            .filter(|pid| ns(&pid.to_string()).as_ref() == Some(&target))
            .collect();
        out.sort_unstable();
        out
    }

    fn save(&self) -> Result<(), ContainerError> {
        self.state
            .save(&self.dir)
            .map_err(|source| ContainerError::StateIo {
                path: self.dir.clone(),
                source,
            })
    }
}

/// Whether the recorded init still exists (not a zombie, not a reused pid).
fn alive(init: &InitState) -> bool {
    crate::process::start_ticks(init.pid) == Some(init.start_ticks)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transitions() {
        assert!(Status::Stopped.allows(Operation::Start));
        assert!(!Status::Running.allows(Operation::Start));
        assert!(Status::Created.allows(Operation::Release));
        assert!(!Status::Running.allows(Operation::Release));
        assert!(Status::Running.allows(Operation::Exec));
        assert!(!Status::Created.allows(Operation::Exec));
        assert!(!Status::Stopped.allows(Operation::Signal));
        assert!(matches!(
            Status::Stopped.check(Operation::Exec),
            Err(ContainerError::InvalidState { .. })
        ));
    }

    #[test]
    fn create_validates_before_touching_disk() {
        let d = tempfile::tempdir().unwrap();
        let state = d.path().join("state");
        let rootfs = d.path().join("rootfs");
        fs::create_dir(&rootfs).unwrap();
        assert!(matches!(
            Container::create(&state, "../x", Config::new(&rootfs)),
            Err(ContainerError::InvalidId(_))
        ));
        assert!(matches!(
            Container::create(&state, "c", Config::new(d.path().join("missing"))),
            Err(ContainerError::InvalidConfig(_))
        ));
        assert!(!state.join("c").exists(), "nothing left behind");
        let c = Container::create(&state, "c", Config::new(&rootfs)).unwrap();
        assert_eq!(c.status(), Status::Stopped);
        assert!(matches!(
            Container::create(&state, "c", Config::new(&rootfs)),
            Err(ContainerError::AlreadyExists(_))
        ));
        let loaded = Container::load(&state, "c").unwrap();
        assert_eq!(loaded.state(), c.state());
        assert!(matches!(
            Container::load(&state, "nope"),
            Err(ContainerError::NotFound(_))
        ));
        c.destroy().unwrap();
        assert!(!state.join("c").exists());
    }
}
