//! The per-container monitor: a small process, not the daemon, that creates
//! and owns one container, so that the container, its log and its exit code
//! survive a restart or crash of the daemon. It is the container's **only
//! owner**: the only process that loads or changes its runtime-core state.
//!
//! runtime-core's init is a child of the process that calls
//! [`Container::start`](berth_core::Container::start) (`CLONE_PARENT`), and
//! only a parent can reap a child and learn its exit status. So the daemon
//! does not start containers itself: [`spawn`] (or the [`Zygote`]) starts a
//! monitor, which
//!
//! 1. creates and starts the container (the init then waits, status
//!    `Created`, for the daemon's Start request), listens on its task socket
//!    and reports `created` or the error on its stdout;
//! 2. serves the daemon's requests on `<dir>/task.sock` ([`crate::task`]'s
//!    typed, versioned protocol over [`berth_core::ipc`]: start, signal,
//!    exec, update, stats, pause/resume, checkpoint, reopen the log, state,
//!    wait, shutdown), from the same loop that
//! 3. pumps the container's stdout and stderr into the CRI log file
//!    ([`crate::logs`]) and to attached clients;
//! 4. when the init exits, drains the pipes, writes an [`ExitRecord`]
//!    atomically ([`read_exit`]), sends the `Exited` event to whoever waits,
//!    and exits. Removing the container is the daemon's decision
//!    (RemoveContainer: the `Shutdown` request, then [`remove`]).
//!
//! The monitor is lean because it costs memory per container: one thread, no
//! async runtime, a `poll(2)` loop over the two pipes, the init's pidfd, a
//! signalfd and the task socket (and attached clients' pipes); it runs the daemon's own binary
//! (shared code pages) with [`MONITOR_ARG`], dispatched by [`run_from_args`]
//! in `main`.
//!
//! Files, all in the directory the daemon gives [`spawn`]:
//! - `monitor.json`: the [`MonitorSpec`], written atomically by [`spawn`];
//! - `monitor.log`: the monitor's own stderr (its errors and warnings);
//! - `task.sock`: the task socket (mode 0600); a refused connection means
//!   the monitor is gone;
//! - the exit record at [`MonitorSpec::exit_file`] (anywhere the daemon likes).
//!
//! Starting: the daemon asks its [`Zygote`] — one long-lived, single-threaded
//! process running this binary — to fork each monitor, so that monitors
//! share the zygote's relocated pages instead of each writing its own copy
//! (see `zygote.rs`: per running pod this is most of a monitor's memory).
//! [`spawn`] is the exec'd path, used when no zygote can run: it starts the
//! monitor, which at once starts a second copy of itself (argument
//! `detached`) and exits. Either way the real monitor — in its own session,
//! a child subreaper — is reparented away from the daemon, so the daemon
//! never accumulates zombie monitors and never has to wait for one (conmon's
//! double fork).

pub mod attach;
mod diag;
mod exit;
pub mod oci;
mod owner;
mod pump;
mod remove;
mod run;
mod serve;
pub mod shim;
mod spawn;
mod zygote;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use exit::read_exit;
pub use remove::remove;
pub use spawn::spawn;
pub use zygote::{Zygote, ZYGOTE_ARG};

pub(crate) use crate::util::{error_chain, now_nanos};

/// `argv[1]` that makes a berth binary run as a container monitor.
pub const MONITOR_ARG: &str = "__berth_monitor";

/// `argv[3]` of the second, detached stage of the monitor.
const DETACHED_ARG: &str = "detached";

/// File name of the [`MonitorSpec`] in the monitor's directory.
pub const SPEC_FILE: &str = "monitor.json";

/// File name of the monitor's own stderr in its directory.
pub const LOG_FILE: &str = "monitor.log";

/// The current version of [`MonitorSpec`] and [`ExitRecord`].
pub const VERSION: u32 = crate::task::proto::RECORD_VERSION;

/// Everything the monitor needs, written by the daemon as JSON to
/// `<dir>/monitor.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MonitorSpec {
    /// Format version ([`VERSION`]).
    pub version: u32,
    /// The runtime-core container id ([`berth_core::ContainerId`] rules).
    pub container_id: String,
    /// runtime-core's state root.
    pub state_root: PathBuf,
    /// The cgroup root given to
    /// [`Container::with_cgroup_root`](berth_core::Container::with_cgroup_root);
    /// `None`: runtime-core's default.
    pub cgroup_root: Option<PathBuf>,
    /// The container.
    pub config: berth_core::Config,
    /// Its init process.
    pub process: berth_core::process::ProcessSpec,
    /// The CRI log file (`None`: the output is read and discarded).
    pub log_path: Option<PathBuf>,
    /// Longest record content before a line is split into `P` records;
    /// `None`: [`crate::logs::DEFAULT_MAX_LINE_SIZE`].
    pub max_log_line: Option<usize>,
    /// Where the [`ExitRecord`] is written (atomically: temp, fsync, rename).
    pub exit_file: PathBuf,
    /// The daemon's sealed copy of the berth binary (its pid and fd), which
    /// the monitor adopts instead of copying the binary again: one copy per
    /// node rather than one per container start. `None` (or a copy that is
    /// gone or unsealed): the monitor makes its own.
    #[serde(default)]
    pub sealed_init: Option<SealedInit>,
    /// The container reads stdin (CRI `stdin`): the monitor holds the
    /// other end for attached clients.
    #[serde(default)]
    pub stdin: bool,
    /// Close the container's stdin when the first attached client that
    /// wrote to it goes (CRI `stdin_once`).
    #[serde(default)]
    pub stdin_once: bool,
    /// Restore the init from a checkpoint instead of starting `process`
    /// (which then only describes it).
    #[serde(default)]
    pub restore: Option<RestoreFrom>,
    /// Run the container with this external OCI runtime instead of
    /// runtime-core (a RuntimeClass handler of kind `oci`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oci: Option<oci::OciRuntime>,
    /// Run the container with this containerd shim v2 instead (a
    /// RuntimeClass handler of kind `shim-v2`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shim: Option<shim::ShimRuntime>,
}

/// Where a restored container's checkpoint is.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RestoreFrom {
    /// The `criu` binary.
    pub criu: PathBuf,
    /// The CRIU images.
    pub images_dir: PathBuf,
    /// CRIU's work directory (its `restore.log`).
    pub work_dir: PathBuf,
    /// Whether `criu` has the join-userns patch, as the daemon found (it
    /// asks once per binary); `None`: not asked (no user namespace).
    #[serde(default)]
    pub joins_userns: Option<bool>,
}

/// Where a monitor finds the daemon's sealed init binary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedInit {
    /// The daemon's pid (the first monitor stage's parent).
    pub pid: i32,
    /// The fd of the sealed memfd in the daemon.
    pub fd: i32,
}

impl SealedInit {
    /// This process's own sealed copy (made now if needed).
    pub fn of_self() -> std::io::Result<SealedInit> {
        use std::os::fd::AsRawFd;
        let fd = berth_core::process::sealed_self()?;
        Ok(SealedInit {
            pid: std::process::id() as i32,
            fd: fd.as_raw_fd(),
        })
    }
}

pub use crate::task::proto::ExitRecord;

/// The monitor started and the container is `Created`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spawned {
    /// The (detached) monitor process.
    pub monitor_pid: i32,
    /// The container's init, waiting for release.
    pub init_pid: i32,
}

/// A monitor operation failed.
#[derive(Debug, thiserror::Error)]
pub enum MonitorError {
    /// The monitor's directory or spec could not be written.
    #[error("write the monitor spec {path}")]
    WriteSpec {
        /// File or directory.
        path: PathBuf,
        /// I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The monitor process could not be started.
    #[error("start the monitor {exe}")]
    Spawn {
        /// The executable.
        exe: PathBuf,
        /// I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The monitor ended without a readiness report.
    #[error("the monitor exited without reporting ({status}); its log: {log}")]
    NoReport {
        /// How the first stage exited.
        status: String,
        /// The end of `monitor.log`.
        log: String,
    },
    /// The readiness report is not what the monitor writes.
    #[error("unreadable report from the monitor: {0:?}")]
    BadReport(String),
    /// The monitor could not create or start the container (it has removed
    /// what it created and exited); the monitor's error chain.
    #[error("{0}")]
    Create(String),
    /// In the monitor: the spec could not be read.
    #[error("read the monitor spec {path}")]
    ReadSpec {
        /// File.
        path: PathBuf,
        /// I/O error.
        #[source]
        source: std::io::Error,
    },
    /// In the monitor: the spec does not parse or has another version.
    #[error("monitor spec {path} is invalid: {reason}")]
    BadSpec {
        /// File.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// In the monitor: the CRI log file could not be opened.
    #[error("open the container log {path}")]
    OpenLog {
        /// File.
        path: PathBuf,
        /// I/O error.
        #[source]
        source: std::io::Error,
    },
    /// In the monitor: a runtime-core step failed.
    #[error("{step} container {id}")]
    Container {
        /// `create` or `start`.
        step: &'static str,
        /// Container id.
        id: String,
        /// runtime-core's error.
        #[source]
        source: berth_core::ContainerError,
    },
    /// In the monitor: the external OCI runtime could not create the
    /// container (what it made is removed).
    #[error("create container {id} with the OCI runtime")]
    Oci {
        /// Container id.
        id: String,
        /// What failed.
        #[source]
        source: oci::OciError,
    },
    /// In the monitor: the containerd shim could not create the container
    /// (what it made is removed).
    #[error("create container {id} with the shim")]
    Shim {
        /// Container id.
        id: String,
        /// What failed.
        #[source]
        source: shim::ShimError,
    },
    /// A system call failed.
    #[error("{step}")]
    Sys {
        /// What was being done.
        step: &'static str,
        /// Kernel error.
        #[source]
        source: nix::Error,
    },
    /// In the monitor: the exit record could not be written.
    #[error("write the exit record {path}")]
    WriteExit {
        /// File.
        path: PathBuf,
        /// I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The task socket could not be made.
    #[error("listen on the task socket")]
    Task(#[source] berth_core::ipc::ChannelError),
    /// The channel to the monitor zygote failed.
    #[error("talk to the monitor zygote")]
    Zygote(#[source] berth_core::ipc::ChannelError),
    /// The channel a monitor reports its start on could not be made.
    #[error("make the monitor's report channel")]
    ReportChannel(#[source] berth_core::ipc::ChannelError),
}

/// In the monitor binary's `main`, right after
/// [`berth_core::init::run_if_requested`]: when `argv[1]` is
/// [`MONITOR_ARG`], runs the monitor and exits; otherwise returns at once.
///
/// ```no_run
/// // first lines of main():
/// berth_core::init::run_if_requested();
/// berth_cri::monitor::run_from_args();
/// // ... the program's own work
/// ```
pub fn run_from_args() {
    let mut args = std::env::args_os().skip(1);
    let first = args.next();
    if first.as_deref() == Some(std::ffi::OsStr::new(ZYGOTE_ARG)) {
        // Inherited by every monitor it forks.
        diag::log_core_warnings();
        let _tag = args.next();
        let sealed_fd = args.next().and_then(|a| a.to_str()?.parse::<i32>().ok());
        std::process::exit(zygote::serve(sealed_fd));
    }
    if first.as_deref() != Some(std::ffi::OsStr::new(MONITOR_ARG)) {
        return;
    }
    let spec = args.next().map(PathBuf::from);
    let detached = args.next().as_deref() == Some(std::ffi::OsStr::new(DETACHED_ARG));
    let sealed_fd = args.next().and_then(|a| a.to_str()?.parse::<i32>().ok());
    let Some(spec) = spec else {
        eprintln!("berth monitor: usage: {MONITOR_ARG} <dir>/{SPEC_FILE}");
        std::process::exit(2);
    };
    diag::log_core_warnings();
    let code = if detached {
        run::monitor(&spec, sealed_fd)
    } else {
        run::detach(&spec)
    };
    std::process::exit(code);
}

/// `<dir>/monitor.json`, absolute (the monitor runs in `/`, and
/// [`reopen_log`] compares it with the monitor's command line).
fn spec_path(dir: &Path) -> std::io::Result<PathBuf> {
    Ok(std::path::absolute(dir)?.join(SPEC_FILE))
}

/// Writes `data` to `path` atomically, mode 0600: the spec holds the
/// container's environment, which may hold secrets.
fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    crate::store::write_atomic_mode(path, data, 0o600)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_chain_joins_sources() {
        let e = MonitorError::OpenLog {
            path: "/x/0.log".into(),
            source: std::io::Error::from_raw_os_error(libc_enoent()),
        };
        let s = error_chain(&e);
        assert!(s.starts_with("open the container log /x/0.log: "), "{s}");
        assert!(s.contains("No such file"), "{s}");
    }

    fn libc_enoent() -> i32 {
        nix::errno::Errno::ENOENT as i32
    }

    #[test]
    fn private_files_are_0600_and_replaced_whole() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("monitor.json");
        write_private(&p, b"one").unwrap();
        write_private(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(
            std::fs::read_dir(d.path()).unwrap().count(),
            1,
            "no temp left"
        );
    }

    #[test]
    fn spec_path_is_absolute() {
        let p = spec_path(Path::new("rel/dir")).unwrap();
        assert!(p.is_absolute());
        assert!(p.ends_with("rel/dir/monitor.json"));
    }
}
