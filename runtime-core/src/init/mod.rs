//! The container's init: the code that runs in the freshly executed, sealed
//! copy of our binary, single-threaded, and sets the container up.
//!
//! The runtime (a multi-threaded daemon) must not set up namespaces, mounts
//! and credentials between `fork` and `exec`, so it executes a sealed copy of
//! its own binary with [`INIT_ARG`]; the binary's `main` calls
//! [`run_if_requested`] first, which takes over:
//!
//! 1. *bootstrap*: reads the [`Bootstrap`](crate::process::channel::Bootstrap)
//!    message, creates the user namespace (the runtime writes the id maps),
//!    joins existing namespaces, then `clone`s with `CLONE_PARENT` and the
//!    new namespace flags, reports the child's pid, and exits;
//! 2. *container init*: in the new namespaces, sets sysctls, hostname,
//!    loopback, the rootfs (mounts, devices, masks, `pivot_root`), rlimits,
//!    user, capabilities and `no_new_privs`; reports `Ready`; waits for a
//!    connection on the start socket; and `execve`s the process.

mod bootstrap;
mod setup;

use std::ffi::OsStr;

/// The argument that makes a berth binary run as a container init.
pub const INIT_ARG: &str = "__berth_init";

/// Call first thing in `main` of any binary used as an init binary (the
/// `berth` daemon, examples, tests). When the process was started as a
/// container init it runs the init and never returns; otherwise it returns
/// at once.
///
/// ```no_run
/// // first line of main():
/// berth_core::init::run_if_requested();
/// // ... the program's own work
/// ```
pub fn run_if_requested() {
    if std::env::args_os().nth(1).as_deref() == Some(OsStr::new(INIT_ARG)) {
        // The bootstrap must be single-threaded (unshare of a user namespace
        // and the fork-like clone need it): refuse loudly if a runtime or
        // library already started threads before main called us.
        let threads = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("Threads:").map(|v| v.trim().to_string()))
            });
        if threads.as_deref() != Some("1") {
            eprintln!(
                "berth init: must run single-threaded; call run_if_requested() first in main"
            );
            std::process::exit(3);
        }
        std::process::exit(bootstrap::main());
    }
}
