//! `fork(2)` behind a safe function, for the single-threaded helpers berth
//! runs (its monitor zygote and the processes that zygote starts).
//!
//! `fork` is unsafe in Rust because the child of a multi-threaded process
//! holds only the calling thread: a lock another thread held stays locked
//! forever, so the child may only make async-signal-safe calls. In a
//! process with one thread nothing is lost, and the child may run any code.
//! [`fork_single_threaded`] checks that condition every time, from the
//! kernel's own count, and refuses to fork otherwise.

/// Which side of a fork this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forked {
    /// The new process.
    Child,
    /// The caller; the child's pid.
    Parent(i32),
}

/// Why [`fork_single_threaded`] did not fork.
#[derive(Debug, thiserror::Error)]
pub enum ForkError {
    /// The caller has more than one thread (or its thread count could not be
    /// read): forking would not be sound.
    #[error("refusing to fork a process with {0} threads")]
    Threads(String),
    /// `fork` failed.
    #[error("fork")]
    Fork(#[source] nix::Error),
}

/// Forks the calling process, which must have exactly one thread.
pub fn fork_single_threaded() -> Result<Forked, ForkError> {
    let threads = thread_count();
    if threads.as_deref() != Some("1") {
        return Err(ForkError::Threads(
            threads.unwrap_or_else(|| "unknown".into()),
        ));
    }
    // SAFETY: the process has one thread (checked just now; only this thread
    // could start another, and it is here), so the child gets every thread
    // there is, with no lock held by a thread that vanished: it may run any
    // code, as after a fork in a single-threaded C program.
    match unsafe { nix::unistd::fork() } {
        Ok(nix::unistd::ForkResult::Child) => Ok(Forked::Child),
        Ok(nix::unistd::ForkResult::Parent { child }) => Ok(Forked::Parent(child.as_raw())),
        Err(e) => Err(ForkError::Fork(e)),
    }
}

/// The `Threads:` line of `/proc/self/status`.
fn thread_count() -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .map(|n| n.trim().to_string())
}

/// Whether the calling process has exactly one thread.
pub fn is_single_threaded() -> bool {
    thread_count().as_deref() == Some("1")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_test_harness_with_threads_is_refused() {
        // The test harness runs tests on threads of its own.
        let _t = std::thread::spawn(|| std::thread::sleep(std::time::Duration::from_millis(200)));
        assert!(!is_single_threaded());
        assert!(matches!(fork_single_threaded(), Err(ForkError::Threads(_))));
    }
}
