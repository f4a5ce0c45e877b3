//! The task protocol between the daemon and a container's monitor: typed
//! requests, replies and events over [`berth_core::ipc`] on the monitor's
//! socket `<container dir>/task.sock` (mode 0600, in a private directory;
//! the monitor also checks that the peer runs as its own user).
//!
//! A connection starts with [`Request::Hello`]; a peer of another
//! [`VERSION`] is answered [`FailureKind::Version`] and closed. Then each
//! request gets one [`Reply`] in order, except [`Request::Wait`], which is
//! answered later by [`Event::Exited`] (the exit record is durable in
//! `exit.json` before that event is sent). An [`Request::Exec`] is answered
//! at once with the process's pid and pidfd, and later with
//! [`Event::ExecExited`] on the same connection. A monitor that is gone
//! refuses the connection (`ECONNREFUSED`): that is how the daemon learns
//! it — no pid files, no command-line checks.

use serde::{Deserialize, Serialize};

/// The protocol version; both ends must speak the same one.
pub const VERSION: u32 = 1;

/// The monitor's socket, in the container's directory.
pub const SOCKET_FILE: &str = "task.sock";

/// Largest request the monitor reads: an exec of the largest command line
/// CRI accepts (2 MiB of arguments) with its environment.
pub const MAX_REQUEST: usize = 3 << 20;

/// Largest reply the daemon reads.
pub const MAX_REPLY: usize = 1 << 20;

/// Most connections a monitor serves at once; more are closed at once.
pub const MAX_CLIENTS: usize = 64;

/// Daemon → monitor.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Request {
    /// First on every connection.
    Hello {
        /// The daemon's [`VERSION`].
        version: u32,
    },
    /// Let the created init `execve` (CRI StartContainer). Idempotent: a
    /// started container answers with its start time.
    Start,
    /// Send `signal` to the init.
    Signal {
        /// Signal number.
        signal: i32,
    },
    /// Run a process in the container. fds: the daemon's sealed init
    /// binary when `sealed_init`, then the stdio the mask names.
    Exec {
        /// The process.
        spec: Box<berth_core::process::ProcessSpec>,
        /// The first fd is the daemon's sealed init binary (else the
        /// monitor makes its own copy).
        sealed_init: bool,
        /// Which of stdin, stdout, stderr follow as fds (`/dev/null` for
        /// the others).
        stdio: [bool; 3],
    },
    /// Attach this connection to the container's stdio (CRI Attach). fds,
    /// in this order, for the streams asked: the read end of the client's
    /// stdin pipe, the write ends of its stdout and stderr pipes. Output
    /// goes to them as it is logged; end of file on the stdin pipe ends the
    /// client's input; closing the connection detaches.
    Attach {
        /// The client sends stdin (the container must read stdin).
        stdin: bool,
        /// The client wants stdout (with a terminal: the terminal).
        stdout: bool,
        /// The client wants stderr (never with a terminal).
        stderr: bool,
    },
    /// Resize the container's terminal (on an attached connection; a
    /// container without a terminal ignores it).
    Resize {
        /// Rows.
        rows: u16,
        /// Columns.
        cols: u16,
    },
    /// New resource limits (CRI UpdateContainerResources).
    Update {
        /// The limits.
        resources: Box<berth_core::cgroups::Resources>,
    },
    /// The cgroup's usage figures.
    Stats,
    /// Freeze the container (for a consistent checkpoint).
    Pause,
    /// Thaw it.
    Resume,
    /// Dump the (paused or running) container with CRIU, leaving it running.
    Checkpoint {
        /// Where the images go and how CRIU runs.
        options: Box<berth_core::container::checkpoint::CheckpointOptions>,
    },
    /// Reopen the CRI log file (kubelet rotated it).
    ReopenLog,
    /// Where the container is.
    State,
    /// Answer with [`Event::Exited`] once the init has exited and its
    /// record is written.
    Wait,
    /// Kill the container (SIGKILL to the init; the monitor then records
    /// the exit, removes runtime state and ends as after any exit).
    Shutdown,
}

/// Monitor → daemon.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Reply {
    /// Answer to [`Request::Hello`].
    Hello {
        /// The monitor's [`VERSION`].
        version: u32,
        /// The monitor's pid.
        pid: i32,
    },
    /// Done.
    Ok,
    /// Answer to [`Request::Start`]: when the init was released,
    /// nanoseconds since the epoch.
    Started {
        /// Release time.
        at: i64,
    },
    /// Answer to [`Request::Exec`]; fds: the process's pidfd, then the
    /// terminal's master side when the spec asked for one.
    Exec {
        /// Host pid.
        pid: i32,
    },
    /// Answer to [`Request::Stats`].
    Stats(Box<berth_core::cgroups::Stats>),
    /// Answer to [`Request::State`].
    State(TaskState),
    /// The request failed.
    Error(TaskFailure),
    /// Something happened (see [`Event`]).
    Event(Event),
}

/// Events: answers that come later.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Event {
    /// The init exited and the record is in `exit.json`.
    Exited(ExitRecord),
    /// A process of [`Request::Exec`] exited.
    ExecExited {
        /// Its pid.
        pid: i32,
        /// Exit code, or 128 + signal.
        exit_code: i32,
        /// The signal that killed it, if one did.
        signal: Option<i32>,
    },
}

/// The container as its monitor sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskState {
    /// The init's host pid.
    pub init_pid: i32,
    /// Released to run (else: created, waiting for Start).
    pub started: bool,
    /// Release time, nanoseconds since the epoch.
    pub started_at: Option<i64>,
    /// Frozen by [`Request::Pause`].
    pub paused: bool,
}

/// Why a request failed, typed so the daemon maps it to a gRPC code in one
/// place.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FailureKind {
    /// The peers speak different versions.
    Version,
    /// The request is malformed (wrong descriptors, not a [`Request`]).
    BadRequest,
    /// What the request asks for is invalid (a process runtime-core
    /// refuses: a NUL byte in an argument, no program).
    Invalid,
    /// Not possible in the container's state (e.g. exec in a created one).
    InvalidState,
    /// The kernel refused a value (EINVAL/ERANGE on a cgroup file).
    Refused {
        /// The control file.
        path: String,
        /// The value written.
        value: String,
    },
    /// The operation cannot be done for what the container is made of.
    Unsupported,
    /// It did not finish in time (CRIU's timeout).
    Timeout,
    /// Anything else.
    Failed,
}

/// A failed request: its kind and the monitor's error chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct TaskFailure {
    /// What kind of failure.
    pub kind: FailureKind,
    /// The error chain.
    pub message: String,
}

impl TaskFailure {
    /// A failure of `kind`.
    pub fn new(kind: FailureKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    /// From a runtime-core error, kind by its variant.
    pub fn from_core(step: &str, e: &berth_core::ContainerError) -> Self {
        use berth_core::ContainerError as E;
        let message = format!("{step}: {}", crate::util::error_chain(e));
        let kind = match e {
            E::InvalidState { .. } | E::NotRunning(_) | E::AlreadyStarted(_) => {
                FailureKind::InvalidState
            }
            E::Unsupported(_) => FailureKind::Unsupported,
            E::Timeout { .. } => FailureKind::Timeout,
            E::InvalidProcess(_) => FailureKind::Invalid,
            _ => match refused_write(e) {
                Some((path, value)) => FailureKind::Refused { path, value },
                None => FailureKind::Failed,
            },
        };
        Self { kind, message }
    }
}

/// The control file and value of a cgroup write the kernel refused as
/// invalid (EINVAL, ERANGE) anywhere in `e`'s chain.
fn refused_write(e: &(dyn std::error::Error + 'static)) -> Option<(String, String)> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(berth_core::cgroups::CgroupError::Write {
            path,
            value,
            source,
        }) = err.downcast_ref::<berth_core::cgroups::CgroupError>()
        {
            if matches!(
                source.raw_os_error(),
                Some(nix::libc::EINVAL | nix::libc::ERANGE)
            ) {
                return Some((path.display().to_string(), value.clone()));
            }
        }
        cur = err.source();
    }
    None
}

/// The current version of [`ExitRecord`] (and the monitor spec).
pub const RECORD_VERSION: u32 = 1;

/// How the container's init ended, written by the monitor to `exit.json`
/// and sent as [`Event::Exited`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ExitRecord {
    /// Format version ([`RECORD_VERSION`]).
    pub version: u32,
    /// The exit code, or 128 + the signal when killed, as CRI and docker
    /// report it.
    pub exit_code: i32,
    /// The signal that killed the init, if one did.
    pub signal: Option<i32>,
    /// When the process was released to run, nanoseconds since the epoch;
    /// 0 if it never was.
    pub started_at: i64,
    /// When the monitor saw the exit, nanoseconds since the epoch.
    pub finished_at: i64,
    /// The cgroup's memory events count an OOM kill (best effort: `false`
    /// when the container has no cgroup or the counter is unavailable).
    pub oom_killed: bool,
    /// CRI reason: `Completed` (exit 0), `OOMKilled`, or `Error`.
    pub reason: String,
    /// Free text for the CRI message (empty unless something went wrong in
    /// the monitor itself, e.g. the log could not be written).
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_names_are_stable() {
        let j = serde_json::to_string(&Request::Hello { version: 1 }).unwrap();
        assert_eq!(j, r#"{"Hello":{"version":1}}"#);
        let j = serde_json::to_string(&Request::Start).unwrap();
        assert_eq!(j, r#""Start""#);
        let j = serde_json::to_string(&Reply::Started { at: 5 }).unwrap();
        assert_eq!(j, r#"{"Started":{"at":5}}"#);
    }

    #[test]
    fn refused_cgroup_writes_keep_file_and_value() {
        let e = berth_core::ContainerError::Cgroup(berth_core::cgroups::CgroupError::Write {
            path: "/sys/fs/cgroup/x/cpu.max".into(),
            value: "bogus".into(),
            source: std::io::Error::from_raw_os_error(nix::libc::EINVAL),
        });
        let f = TaskFailure::from_core("update", &e);
        assert_eq!(
            f.kind,
            FailureKind::Refused {
                path: "/sys/fs/cgroup/x/cpu.max".into(),
                value: "bogus".into()
            }
        );
    }
}
