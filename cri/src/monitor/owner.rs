//! What the monitor owns: a container of berth's embedded runtime core, one
//! of an external OCI runtime ([`super::oci`]) or one of a containerd shim
//! v2 ([`super::shim`]). The task server and
//! the loop ask either the same things through [`Owner`].

use berth_core::cgroups::{Resources, Stats};
use berth_core::container::checkpoint::CheckpointOptions;
use berth_core::{Container, ExitStatus, Process, ProcessHandle, Status};

use super::oci::{OciContainer, OciError};
use super::shim::{ShimContainer, ShimError};
use crate::task::proto::{FailureKind, TaskFailure};

/// The monitor's container (one per monitor: the variants' sizes do not
/// matter).
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub(super) enum Owner {
    /// berth's runtime core.
    Embedded(Container),
    /// An external OCI runtime.
    Oci(OciContainer),
    /// A containerd shim v2.
    Shim(ShimContainer),
}

fn shim_failure(step: &str) -> impl Fn(ShimError) -> TaskFailure + '_ {
    move |e| {
        let kind = match e {
            ShimError::Unsupported(_) => FailureKind::Unsupported,
            _ => FailureKind::Failed,
        };
        TaskFailure::new(kind, format!("{step}: {}", crate::util::error_chain(&e)))
    }
}

fn oci_failure(step: &str) -> impl Fn(OciError) -> TaskFailure + '_ {
    move |e| {
        let kind = match e {
            OciError::Bundle(super::oci::bundle::BundleError::Unsupported(_)) => {
                FailureKind::Unsupported
            }
            OciError::User(_) => FailureKind::Invalid,
            _ => FailureKind::Failed,
        };
        TaskFailure::new(kind, format!("{step}: {}", crate::util::error_chain(&e)))
    }
}

fn core_failure(step: &str) -> impl Fn(berth_core::ContainerError) -> TaskFailure + '_ {
    move |e| TaskFailure::from_core(step, &e)
}

impl Owner {
    /// Releases the created init (a started one is left as it is).
    pub(super) fn start(&mut self) -> Result<(), TaskFailure> {
        match self {
            Owner::Embedded(c) if c.status() == Status::Created => {
                c.release().map_err(core_failure("start"))
            }
            Owner::Oci(c) if c.created() => c.release().map_err(oci_failure("start")),
            Owner::Shim(c) if c.created() => c.release().map_err(shim_failure("start")),
            _ => Ok(()),
        }
    }

    /// When the init was released.
    pub(super) fn started_at(&self) -> Option<u64> {
        match self {
            Owner::Embedded(c) => c.started_at(),
            Owner::Oci(c) => c.started_at(),
            Owner::Shim(c) => c.started_at(),
        }
    }

    /// What to say of a container that has no start time.
    pub(super) fn describe(&self) -> String {
        match self {
            Owner::Embedded(c) => format!("{:?}", c.status()),
            Owner::Oci(c) if c.created() => "Created".into(),
            Owner::Shim(c) if c.created() => "Created".into(),
            Owner::Oci(_) | Owner::Shim(_) => "Running".into(),
        }
    }

    /// Whether it is frozen.
    pub(super) fn paused(&self) -> bool {
        match self {
            Owner::Embedded(c) => c.status() == Status::Paused,
            Owner::Oci(c) => c.paused(),
            Owner::Shim(c) => c.paused(),
        }
    }

    /// Signals the init.
    pub(super) fn signal(&self, signal: i32) -> Result<(), TaskFailure> {
        match self {
            Owner::Embedded(c) => c.signal(signal).map_err(core_failure("signal")),
            Owner::Oci(c) => c.signal(signal).map_err(oci_failure("signal")),
            Owner::Shim(c) => c.signal(signal).map_err(shim_failure("signal")),
        }
    }

    /// New resource limits.
    pub(super) fn set(&mut self, r: &Resources) -> Result<(), TaskFailure> {
        match self {
            Owner::Embedded(c) => c.set(r).map_err(core_failure("update")),
            Owner::Oci(c) => c.set(r).map_err(oci_failure("update")),
            Owner::Shim(c) => c.set(r).map_err(shim_failure("update")),
        }
    }

    /// Cgroup figures.
    pub(super) fn stats(&self) -> Stats {
        match self {
            Owner::Embedded(c) => c.stats(),
            Owner::Oci(c) => c.stats(),
            Owner::Shim(c) => c.stats(),
        }
    }

    /// Freezes it.
    pub(super) fn pause(&mut self) -> Result<(), TaskFailure> {
        match self {
            Owner::Embedded(c) => c.pause().map_err(core_failure("pause")),
            Owner::Oci(c) => c.pause().map_err(oci_failure("pause")),
            Owner::Shim(c) => c.pause().map_err(shim_failure("pause")),
        }
    }

    /// Thaws it.
    pub(super) fn resume(&mut self) -> Result<(), TaskFailure> {
        match self {
            Owner::Embedded(c) => c.resume().map_err(core_failure("resume")),
            Owner::Oci(c) => c.resume().map_err(oci_failure("resume")),
            Owner::Shim(c) => c.resume().map_err(shim_failure("resume")),
        }
    }

    /// Dumps it with CRIU (the embedded core only).
    pub(super) fn checkpoint(&self, options: &CheckpointOptions) -> Result<(), TaskFailure> {
        match self {
            Owner::Embedded(c) => c.checkpoint(options).map_err(core_failure("checkpoint")),
            Owner::Oci(_) | Owner::Shim(_) => Err(TaskFailure::new(
                FailureKind::Unsupported,
                "checkpoint: not for a container of an external OCI runtime or shim handler",
            )),
        }
    }

    /// Runs a process in it.
    pub(super) fn exec(&mut self, process: Process) -> Result<ProcessHandle, TaskFailure> {
        match self {
            Owner::Embedded(c) => c.exec(process).map_err(core_failure("exec")),
            Owner::Oci(c) => c.exec(process).map_err(oci_failure("exec")),
            Owner::Shim(c) => c.exec(process).map_err(shim_failure("exec")),
        }
    }

    /// Once the init has exited: kills what it left running.
    pub(super) fn kill_remaining(&self) {
        match self {
            Owner::Embedded(c) => {
                c.kill_remaining();
            }
            Owner::Oci(c) => {
                c.kill_remaining();
            }
            Owner::Shim(c) => c.kill_remaining(),
        }
    }

    /// Whether the kernel OOM-killed one of its processes.
    pub(super) fn oom_killed(&self) -> bool {
        match self {
            Owner::Embedded(c) => c
                .state()
                .cgroup
                .as_ref()
                .is_some_and(|cg| super::exit::oom_killed_in(&cg.dirs)),
            Owner::Oci(c) => c.oom_killed(),
            Owner::Shim(c) => c.oom_killed(),
        }
    }

    /// The exit is recorded and told: an external runtime's container is
    /// deleted now, while the monitor's mount namespace still holds its
    /// rootfs (an embedded one is destroyed at RemoveContainer, by the
    /// daemon).
    pub(super) fn finish(&self) {
        match self {
            Owner::Embedded(_) => {}
            Owner::Oci(c) => c.destroy(),
            Owner::Shim(c) => c.destroy(),
        }
    }

    /// The monitor closed the container's stdin (`stdin_once`): a shim,
    /// which holds the pipe open itself, is told to close it (CloseIO).
    pub(super) fn close_stdin(&self) {
        if let Owner::Shim(c) = self {
            c.close_stdin();
        }
    }

    /// The init's exit status when it is not the monitor's child (a shim's
    /// container: Wait); `None` when the monitor reaps it itself.
    pub(super) fn foreign_init_exit(&self) -> Option<ExitStatus> {
        match self {
            Owner::Shim(c) => c.init_exit(),
            _ => None,
        }
    }

    /// Whether reaped child `pid` was the shim (the container then has no
    /// owner but the monitor: it is killed, and cleaned up without it).
    pub(super) fn shim_reaped(&mut self, pid: i32) -> bool {
        match self {
            Owner::Shim(c) => c.shim_reaped(pid),
            _ => false,
        }
    }

    /// Exec'd processes that are not the monitor's children, to watch.
    pub(super) fn foreign_execs(&self) -> Vec<(i32, std::os::fd::BorrowedFd<'_>)> {
        match self {
            Owner::Shim(c) => c.exec_fds().collect(),
            _ => Vec::new(),
        }
    }

    /// Such an exec'd process has exited: its status.
    pub(super) fn foreign_exec_exited(&mut self, pid: i32) -> Option<ExitStatus> {
        match self {
            Owner::Shim(c) => c.exec_exited(pid),
            _ => None,
        }
    }
}
