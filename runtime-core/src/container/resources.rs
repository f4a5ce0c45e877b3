//! Resource limits and usage of a running container: the `set` and `stats`
//! of libcontainer's API, so a caller never reaches into [`State`] or the
//! cgroup itself.
//!
//! [`State`]: super::State

use super::{Container, ContainerError, Operation};
use crate::cgroups::{Resources, Stats};

impl Container {
    /// Applies new resource limits to the container's cgroup (what
    /// `runc update` does). A container without a cgroup has nothing to
    /// limit: `Ok`. A value the kernel refuses is
    /// [`ContainerError::Cgroup`] with the file and value
    /// ([`CgroupError::Write`](crate::cgroups::CgroupError::Write)).
    pub fn set(&self, resources: &Resources) -> Result<(), ContainerError> {
        self.status().check(Operation::Update)?;
        match &self.state.cgroup {
            Some(cg) => cg.apply(resources).map_err(ContainerError::from),
            None => Ok(()),
        }
    }

    /// The container's cgroup usage figures (all zero without a cgroup or
    /// once it is gone).
    pub fn stats(&self) -> Stats {
        self.state
            .cgroup
            .as_ref()
            .map(|cg| cg.stats())
            .unwrap_or_default()
    }

    /// SIGKILLs every process left in the container once its init has
    /// exited, as containerd's runc shim does for a container that shares
    /// its pid namespace (`runc kill --all`): nothing outlives the
    /// container or holds its output open. A container with a pid
    /// namespace of its own needs nothing (the kernel ends it with its
    /// init): `false`, nothing done.
    pub fn kill_remaining(&self) -> bool {
        if self.state.config.creates(crate::config::NamespaceKind::Pid) {
            return false;
        }
        match &self.state.cgroup {
            // Once, without waiting: the monitor's loop sees them go (their
            // output ends); destroy() makes sure later.
            Some(cg) => {
                cg.kill_once();
            }
            None => {
                for pid in self.processes() {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::SIGKILL,
                    );
                }
            }
        }
        true
    }

    /// When the init was released to run, nanoseconds since the epoch
    /// (`None` while it waits, or if the release time was not recorded).
    pub fn started_at(&self) -> Option<u64> {
        self.state.init.as_ref().and_then(|i| i.started_unix_nanos)
    }
}
