//! How the daemon reaches a container: the [`Task`] trait. The monitor of
//! each container is its only owner (see [`crate::monitor`]); the daemon's
//! handlers ask it through this trait and never touch runtime-core's state
//! themselves. [`MonitorTasks`] is the real implementation (the task socket
//! of each monitor, [`proto`]); [`fake::FakeTasks`] is an in-memory one for
//! unit tests of the handlers, without root.

pub mod client;
pub mod fake;
pub mod proto;

use std::os::fd::{BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use berth_core::cgroups::{Resources, Stats};
use berth_core::container::checkpoint::CheckpointOptions;
use berth_core::process::ProcessSpec;

pub use client::{MonitorExec, MonitorTasks};
pub use proto::{ExitRecord, FailureKind, TaskFailure, TaskState};

/// A task request failed.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    /// The monitor is gone (its socket refuses connections): the container
    /// has exited, or its monitor died.
    #[error("the container's monitor is not running")]
    Gone,
    /// The monitor answered with a failure.
    #[error(transparent)]
    Failed(#[from] TaskFailure),
    /// The channel failed mid-conversation.
    #[error("talk to the container's monitor")]
    Channel(#[from] berth_core::ipc::ChannelError),
    /// The monitor answered something the protocol does not allow here.
    #[error("unexpected answer from the container's monitor: {0}")]
    Protocol(String),
}

/// Which standard streams an exec gets, and the fds for them.
#[derive(Debug, Default)]
pub struct ExecStdio {
    /// Standard input (`None`: `/dev/null`).
    pub stdin: Option<OwnedFd>,
    /// Standard output.
    pub stdout: Option<OwnedFd>,
    /// Standard error.
    pub stderr: Option<OwnedFd>,
}

/// How an exec'd process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExecExit {
    /// Exit code, or 128 + signal.
    pub exit_code: i32,
    /// The signal that killed it.
    pub signal: Option<i32>,
}

/// A running exec'd process.
pub trait ExecProcess: Send + Sync + std::fmt::Debug {
    /// Its host pid.
    fn pid(&self) -> i32;
    /// An fd that becomes readable when the process has exited (its
    /// pidfd), to `poll` beside its output.
    fn exit_fd(&self) -> BorrowedFd<'_>;
    /// The terminal's master side, when it asked for one (taken once).
    fn take_console(&mut self) -> Option<OwnedFd>;
    /// Sends `signal` (through its pidfd: never to a reused pid).
    fn signal(&self, signal: i32) -> Result<(), TaskError>;
    /// Waits for the exit, at most `timeout` (`Ok(None)`: still running).
    fn wait(&self, timeout: Option<Duration>) -> Result<Option<ExecExit>, TaskError>;
}

/// An attach session on the container's stdio; dropping it detaches.
pub trait Attached: Send + Sync + std::fmt::Debug {
    /// Resizes the container's terminal.
    fn resize(&self, size: berth_core::process::ConsoleSize) -> Result<(), TaskError>;
}

/// One container, reached through its owner. Every call blocks (run it
/// where blocking is fine: `spawn_blocking`).
pub trait Task: Send + Sync + std::fmt::Debug {
    /// Releases the created init; the release time (nanoseconds since the
    /// epoch). A container already started answers its start time.
    fn start(&self) -> Result<i64, TaskError>;
    /// Signals the init.
    fn signal(&self, signal: i32) -> Result<(), TaskError>;
    /// Waits for the init's exit record, at most `timeout`; `Ok(None)`: not
    /// yet. [`TaskError::Gone`] when the monitor ended without sending it.
    fn wait(&self, timeout: Duration) -> Result<Option<ExitRecord>, TaskError>;
    /// Signals the init and waits for its exit record, at most `timeout`,
    /// on one connection (subscribed before the signal: the exit cannot be
    /// missed). As [`Task::wait`] for the result.
    fn signal_and_wait(
        &self,
        signal: i32,
        timeout: Duration,
    ) -> Result<Option<ExitRecord>, TaskError> {
        self.signal(signal)?;
        self.wait(timeout)
    }
    /// Runs a process in the container.
    fn exec(&self, spec: &ProcessSpec, stdio: ExecStdio)
        -> Result<Box<dyn ExecProcess>, TaskError>;
    /// Attaches to the container's stdio: `stdio` holds the ends the
    /// container's side uses — the read end of a stdin pipe, the write ends
    /// of stdout and stderr pipes. The output ends when the container's
    /// does (its exit).
    fn attach(&self, stdio: ExecStdio) -> Result<Box<dyn Attached>, TaskError>;
    /// Applies new resource limits.
    fn update(&self, resources: &Resources) -> Result<(), TaskError>;
    /// Cgroup usage.
    fn stats(&self) -> Result<Stats, TaskError>;
    /// Freezes the container.
    fn pause(&self) -> Result<(), TaskError>;
    /// Thaws it.
    fn resume(&self) -> Result<(), TaskError>;
    /// Dumps it with CRIU (left running).
    fn checkpoint(&self, options: &CheckpointOptions) -> Result<(), TaskError>;
    /// Reopens the CRI log file.
    fn reopen_log(&self) -> Result<(), TaskError>;
    /// Its state.
    fn state(&self) -> Result<TaskState, TaskError>;
    /// Kills it; the monitor records the exit and cleans up.
    fn shutdown(&self) -> Result<(), TaskError>;
    /// Whether its monitor still runs.
    fn is_running(&self) -> bool;
    /// Its monitor ended without recording an exit (killed): kills what the
    /// container left running and removes its runtime state, so a container
    /// reported exited is gone. Blocking; best effort.
    fn abandon(&self);
    /// A channel that becomes readable when the init's exit record is
    /// written (the [`proto::Event::Exited`] event) or the monitor ends:
    /// for watching many containers from an async loop without a thread
    /// each.
    fn watch_exit(&self) -> Result<berth_core::ipc::Channel, TaskError>;
}

/// Opens the [`Task`] of the container whose directory is `dir`.
pub trait Tasks: Send + Sync + std::fmt::Debug {
    /// The task (opening is cheap; a gone monitor shows on first use).
    fn open(&self, dir: &Path) -> Arc<dyn Task>;
}
