//! Destroying a container: kill everything, remove cgroups and state.

use std::os::fd::AsFd;
use std::time::Duration;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::wait::{waitpid, WaitPidFlag};
use nix::unistd::Pid;

use super::{Container, ContainerError};
use crate::sys;

impl Container {
    /// Kills every process of the container, removes its cgroup, runs its
    /// `poststop` hooks and removes its state directory. Idempotent: destroying what is already gone is `Ok`.
    /// Mounts need no cleanup: they live in the container's own mount
    /// namespace, which dies with its last process.
    ///
    /// Processes started by [`Container::exec`] are the caller's children:
    /// the caller must reap them ([`crate::ProcessHandle::wait`]); until then
    /// the init of a pid namespace cannot finish exiting, and destroy waits
    /// for it (at most 10 s) before removing the rest.
    pub fn destroy(self) -> Result<(), ContainerError> {
        if !self.dir.exists() {
            return Ok(());
        }
        if let Some(cg) = &self.state.cgroup {
            cg.kill_all();
        }
        if let Ok(pidfd) = self.init_pidfd() {
            // With its own pid namespace, killing the init kills all of it.
            let _ = sys::pidfd_send_signal(pidfd.as_fd(), libc::SIGKILL);
            let mut fds = [PollFd::new(pidfd.as_fd(), PollFlags::POLLIN)];
            let _ = poll(&mut fds, PollTimeout::from(10_000u16));
            // Reap it if it is our child (the pidfd check proved the pid is
            // still the init's); ECHILD means someone else did or will.
            if let Some(init) = &self.state.init {
                let _ = waitpid(Pid::from_raw(init.pid), Some(WaitPidFlag::WNOHANG));
            }
        }
        if let Some(cg) = &self.state.cgroup {
            for _ in 0..500 {
                if cg.pids().is_empty() {
                    break;
                }
                cg.kill_all();
                std::thread::sleep(Duration::from_millis(2));
            }
            cg.remove()?;
        }
        self.poststop_hooks();
        match std::fs::remove_dir_all(&self.dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(ContainerError::StateIo {
                path: self.dir.clone(),
                source,
            }),
        }
    }
}
