//! Running another process in a running container.

use super::launch::{launch, Launch};
use super::start::validate_process;
use super::{Container, ContainerError, Operation};
use crate::config::NamespaceKind;
use crate::process::channel::Task;
use crate::process::{Process, ProcessHandle};
use crate::sys;

impl Container {
    /// Runs `process` in the running container: it joins every namespace of
    /// the init, its cgroup, and gets the container's (or the process's own)
    /// capabilities, user and `no_new_privs`. What CRI `ExecSync` needs.
    pub fn exec(&self, process: Process) -> Result<ProcessHandle, ContainerError> {
        self.status().check(Operation::Exec)?;
        validate_process(&process.spec)?;
        // Hold the init with a pidfd while its namespaces are opened, and
        // check afterwards that it is still the same process.
        let init_fd = self.init_pidfd()?;
        let mut join = Vec::new();
        for (kind, path) in self.state.namespace_paths() {
            let f = std::fs::File::open(&path)
                .map_err(|_| ContainerError::NotRunning(self.state.id.clone()))?;
            join.push((kind, std::os::fd::OwnedFd::from(f)));
        }
        drop(self.init_pidfd()?);
        drop(init_fd);
        // Joining our own user namespace is an error (EINVAL): skip it when
        // the container shares the caller's.
        if let Ok(own) = std::fs::read_link("/proc/self/ns/user") {
            let init_user = self
                .state
                .init
                .as_ref()
                .and_then(|i| std::fs::read_link(format!("/proc/{}/ns/user", i.pid)).ok());
            if init_user.as_ref() == Some(&own) {
                join.retain(|(k, _)| *k != NamespaceKind::User);
            }
        }
        let (pid, console) = launch(Launch {
            task: Task::Exec {
                config: Box::new(self.state.config.clone()),
            },
            process,
            join,
            clone_flags: 0,
            new_user_ns: false,
            uid_mappings: &[],
            gid_mappings: &[],
            listener: None,
            cgroup: self.state.cgroup.as_ref(),
            init_binary: &self.init_binary,
            hook_state: None,
            idmap: Default::default(),
        })?;
        let pidfd = sys::pidfd_open(pid).map_err(|source| ContainerError::Sys {
            step: "open a pidfd of the exec'd process",
            source,
        })?;
        Ok(ProcessHandle::new(pid, pidfd, console))
    }
}
