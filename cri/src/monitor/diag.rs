//! Small helpers every part of the monitor uses (its loop, its task server,
//! its start-up, the zygote): kept apart so that those parts depend on this
//! and not on each other.

use std::os::fd::OwnedFd;

use super::MonitorError;

/// A line on the monitor's stderr (`monitor.log`).
pub(super) fn warn(msg: &str) {
    let now = crate::logs::rfc3339_nano(std::time::SystemTime::now());
    eprintln!("{now} berth-monitor[{}]: {msg}", std::process::id());
}

/// Makes one of the container's output fds non-blocking.
pub(super) fn set_nonblocking(fd: &OwnedFd) -> Result<(), MonitorError> {
    crate::util::set_nonblocking(std::os::fd::AsFd::as_fd(fd)).map_err(|source| MonitorError::Sys {
        step: "make a pipe non-blocking",
        source,
    })
}
