//! What the monitor owns: a container of berth's embedded runtime core, or
//! one of an external OCI runtime ([`super::oci`]). The task server and
//! the loop ask either the same things through [`Owner`].

use berth_core::cgroups::{Resources, Stats};
use berth_core::container::checkpoint::CheckpointOptions;
use berth_core::{Container, Process, ProcessHandle, Status};

use super::oci::{OciContainer, OciError};
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
            _ => Ok(()),
        }
    }

    /// When the init was released.
    pub(super) fn started_at(&self) -> Option<u64> {
        match self {
            Owner::Embedded(c) => c.started_at(),
            Owner::Oci(c) => c.started_at(),
        }
    }

    /// What to say of a container that has no start time.
    pub(super) fn describe(&self) -> String {
        match self {
            Owner::Embedded(c) => format!("{:?}", c.status()),
            Owner::Oci(c) if c.created() => "Created".into(),
            Owner::Oci(_) => "Running".into(),
        }
    }

    /// Whether it is frozen.
    pub(super) fn paused(&self) -> bool {
        match self {
            Owner::Embedded(c) => c.status() == Status::Paused,
            Owner::Oci(c) => c.paused(),
        }
    }

    /// Signals the init.
    pub(super) fn signal(&self, signal: i32) -> Result<(), TaskFailure> {
        match self {
            Owner::Embedded(c) => c.signal(signal).map_err(core_failure("signal")),
            Owner::Oci(c) => c.signal(signal).map_err(oci_failure("signal")),
        }
    }

    /// New resource limits.
    pub(super) fn set(&mut self, r: &Resources) -> Result<(), TaskFailure> {
        match self {
            Owner::Embedded(c) => c.set(r).map_err(core_failure("update")),
            Owner::Oci(c) => c.set(r).map_err(oci_failure("update")),
        }
    }

    /// Cgroup figures.
    pub(super) fn stats(&self) -> Stats {
        match self {
            Owner::Embedded(c) => c.stats(),
            Owner::Oci(c) => c.stats(),
        }
    }

    /// Freezes it.
    pub(super) fn pause(&mut self) -> Result<(), TaskFailure> {
        match self {
            Owner::Embedded(c) => c.pause().map_err(core_failure("pause")),
            Owner::Oci(c) => c.pause().map_err(oci_failure("pause")),
        }
    }

    /// Thaws it.
    pub(super) fn resume(&mut self) -> Result<(), TaskFailure> {
        match self {
            Owner::Embedded(c) => c.resume().map_err(core_failure("resume")),
            Owner::Oci(c) => c.resume().map_err(oci_failure("resume")),
        }
    }

    /// Dumps it with CRIU (the embedded core only).
    pub(super) fn checkpoint(&self, options: &CheckpointOptions) -> Result<(), TaskFailure> {
        match self {
            Owner::Embedded(c) => c.checkpoint(options).map_err(core_failure("checkpoint")),
            Owner::Oci(_) => Err(TaskFailure::new(
                FailureKind::Unsupported,
                "checkpoint: not for a container of an external OCI runtime handler",
            )),
        }
    }

    /// Runs a process in it.
    pub(super) fn exec(&mut self, process: Process) -> Result<ProcessHandle, TaskFailure> {
        match self {
            Owner::Embedded(c) => c.exec(process).map_err(core_failure("exec")),
            Owner::Oci(c) => c.exec(process).map_err(oci_failure("exec")),
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
        }
    }

    /// The exit is recorded and told: an external runtime's container is
    /// deleted now, while the monitor's mount namespace still holds its
    /// rootfs (an embedded one is destroyed at RemoveContainer, by the
    /// daemon).
    pub(super) fn finish(&self) {
        if let Owner::Oci(c) = self {
            c.destroy();
        }
    }
}
