//! Processes: what runs in a container ([`Process`]), how it is started (a
//! sealed copy of our own binary, the fd layout of the child) and how the
//! parent and the init talk (a typed message protocol over a socketpair).

pub(crate) mod channel;
pub mod env;
pub mod fdlayout;
mod fork;
pub(crate) mod sealed;
pub(crate) mod spawn;

use std::os::fd::{AsFd, BorrowedFd, OwnedFd, RawFd};
use std::path::PathBuf;

use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

pub use fork::{fork_single_threaded, is_single_threaded, ForkError, Forked};
pub use sealed::{adopt_sealed_copy, forget_sealed_copies, sealed_self, InitBinary};

use crate::security::capabilities::Capabilities;
use crate::security::user::User;

/// Hands freed heap memory back to the kernel (glibc's `malloc_trim`): a
/// long-lived process whose threads once allocated much (an image pull)
/// otherwise keeps those pages in glibc's arenas while idle. Cheap when
/// there is nothing to release; nothing on other C libraries.
pub fn release_free_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only takes glibc's own arena locks; it is safe to
    // call from any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Caps the heap arenas glibc makes for a multi-threaded process (by
/// default up to 8 per CPU: one per thread that allocates while the others'
/// are busy). Each arena keeps its own pages — after a burst of work on many
/// threads, a few hundred KiB each that `malloc_trim` cannot give back. A
/// process that is mostly idle and lightly contended (a daemon) loses
/// little by sharing `n`. Call it before starting threads; nothing on
/// other C libraries.
pub fn limit_heap_arenas(n: u32) {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets glibc's own malloc parameters (under its
    // lock); M_ARENA_MAX takes any positive count.
    unsafe {
        libc::mallopt(
            libc::M_ARENA_MAX,
            i32::try_from(n.max(1)).unwrap_or(i32::MAX),
        );
    }
}

/// Where one of a process's standard streams goes.
#[derive(Debug, Default)]
pub enum Stdio {
    /// `/dev/null`.
    #[default]
    Null,
    /// The caller's own stream of the same number.
    Inherit,
    /// Any fd: a pipe end, a file, a pty, a socket.
    Fd(OwnedFd),
}

impl From<OwnedFd> for Stdio {
    fn from(fd: OwnedFd) -> Self {
        Stdio::Fd(fd)
    }
}

/// A process to run in a container: its init ([`crate::Container::run`]) or
/// an additional one ([`crate::Container::exec`]).
#[derive(Debug)]
pub struct Process {
    /// What is serialized to the init.
    pub spec: ProcessSpec,
    /// Standard input.
    pub stdin: Stdio,
    /// Standard output.
    pub stdout: Stdio,
    /// Standard error.
    pub stderr: Stdio,
    /// More fds, given to the process as 3, 4, 5, ... in this order.
    pub extra_fds: Vec<OwnedFd>,
}

/// The serializable part of a [`Process`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessSpec {
    /// `argv`; `args[0]` without a `/` is looked up in the process's `PATH`
    /// inside the container.
    pub args: Vec<String>,
    /// Environment, `NAME=value` (any bytes but NUL: see [`env`]).
    #[serde(with = "env")]
    pub env: Vec<std::ffi::OsString>,
    /// Working directory inside the container (created when missing).
    pub cwd: PathBuf,
    /// User and groups.
    pub user: User,
    /// Capabilities; `None`: those of the container's config.
    #[serde(default)]
    pub capabilities: Option<Capabilities>,
    /// `no_new_privs`; `None`: the container config's value.
    #[serde(default)]
    pub no_new_privileges: Option<bool>,
    /// Give the process a new pseudo-terminal as its stdio (its controlling
    /// terminal, in a new session); the runtime gets the master side from
    /// [`ProcessHandle::take_console`]. Stdio fields are then ignored.
    #[serde(default)]
    pub terminal: Option<ConsoleSize>,
}

/// A terminal's size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsoleSize {
    /// Rows.
    pub rows: u16,
    /// Columns.
    pub cols: u16,
}

/// The start time of live process `pid` (clock ticks since boot,
/// `/proc/<pid>/stat` field 22); `None` when it is gone or a zombie. With
/// the pid, it names one process for the whole uptime (a reused pid has
/// another start time).
pub fn start_ticks(pid: i32) -> Option<u64> {
    crate::sys::proc_stat(pid)
        .filter(|s| !matches!(s.state, 'Z' | 'X'))
        .map(|s| s.start_ticks)
}

/// Sets the window size of the terminal whose master is `console` (the
/// process sees it, and gets SIGWINCH).
pub fn resize_console(console: BorrowedFd<'_>, size: ConsoleSize) -> nix::Result<()> {
    crate::sys::set_winsize(console, size.rows, size.cols)
}

impl Process {
    /// A process running `args` as root in `/`, with `PATH` set and stdio on
    /// `/dev/null`.
    pub fn new<S: Into<String>>(args: impl IntoIterator<Item = S>) -> Self {
        Self {
            spec: ProcessSpec {
                args: args.into_iter().map(Into::into).collect(),
                env: vec![
                    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
                ],
                cwd: PathBuf::from("/"),
                user: User::root(),
                capabilities: None,
                no_new_privileges: None,
                terminal: None,
            },
            stdin: Stdio::Null,
            stdout: Stdio::Null,
            stderr: Stdio::Null,
            extra_fds: Vec::new(),
        }
    }

    /// Sets all three standard streams to [`Stdio::Inherit`].
    pub fn inherit_stdio(mut self) -> Self {
        self.stdin = Stdio::Inherit;
        self.stdout = Stdio::Inherit;
        self.stderr = Stdio::Inherit;
        self
    }
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExitStatus {
    /// It called `exit(code)`.
    Exited(i32),
    /// It was killed by this signal.
    Signaled(i32),
}

impl ExitStatus {
    /// The shell convention: the exit code, or 128 + the signal number.
    pub fn code(self) -> i32 {
        match self {
            ExitStatus::Exited(c) => c,
            ExitStatus::Signaled(s) => 128 + s,
        }
    }

    /// Exited with code 0.
    pub fn success(self) -> bool {
        self == ExitStatus::Exited(0)
    }
}

/// A started process of a container (the init or an exec'd one).
#[derive(Debug)]
pub struct ProcessHandle {
    pid: i32,
    pidfd: OwnedFd,
    console: Option<OwnedFd>,
}

impl ProcessHandle {
    pub(crate) fn new(pid: i32, pidfd: OwnedFd, console: Option<OwnedFd>) -> Self {
        Self {
            pid,
            pidfd,
            console,
        }
    }

    /// The master side of the process's terminal, when it asked for one
    /// ([`ProcessSpec::terminal`]); `None` afterwards.
    pub fn take_console(&mut self) -> Option<OwnedFd> {
        self.console.take()
    }

    /// Host pid of the process.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// A pidfd of the process (pollable: readable once it has exited).
    pub fn pidfd(&self) -> BorrowedFd<'_> {
        self.pidfd.as_fd()
    }

    /// Sends `sig` through the pidfd (never to a process that reused the pid).
    pub fn signal(&self, sig: i32) -> nix::Result<()> {
        crate::sys::pidfd_send_signal(self.pidfd.as_fd(), sig)
    }

    /// Waits for the process to end and reaps it. Only the process that
    /// started it (its parent) can wait for it.
    pub fn wait(&self) -> nix::Result<ExitStatus> {
        wait_child(self.pid)
    }

    /// A handle on process `pid`, which is not this process's child (a
    /// containerd shim's), watched through `exit_fd`: its pidfd, or — for a
    /// process already gone when the caller learnt of it — any fd that
    /// polls readable (a pipe at end of file). [`ProcessHandle::signal`]
    /// then fails, and [`ProcessHandle::wait`] always does: the caller
    /// learns the exit status from whoever reaps the process.
    pub fn watched(pid: i32, exit_fd: OwnedFd) -> Self {
        Self::new(pid, exit_fd, None)
    }

    /// A handle on process `pid`, started by something else (an external
    /// OCI runtime) and now a child of this process (a child subreaper
    /// inherits it when that runtime exits), with the terminal master it
    /// handed over. The pidfd is opened now: a process that exits later
    /// stays a zombie until this process reaps it, so the pid cannot be
    /// reused meanwhile.
    pub fn adopt(pid: i32, console: Option<OwnedFd>) -> nix::Result<Self> {
        if pid <= 0 {
            return Err(nix::Error::ESRCH);
        }
        let pidfd = crate::sys::pidfd_open(pid)?;
        Ok(Self::new(pid, pidfd, console))
    }
}

/// Makes `cmd` start its program with every signal unblocked and at its
/// default action, whatever this process blocks or ignores (a monitor
/// blocks SIGCHLD and SIGTERM for its signalfd; Rust ignores SIGPIPE):
/// for an external runtime such as runc, whose container process would
/// otherwise inherit them and never stop on SIGTERM.
pub fn default_signals(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: runs in the forked child before exec and makes only
    // async-signal-safe calls (sigaction, sigemptyset, sigprocmask) on
    // stack values; nothing is allocated.
    unsafe {
        cmd.pre_exec(|| {
            for sig in [
                libc::SIGPIPE,
                libc::SIGCHLD,
                libc::SIGTERM,
                libc::SIGINT,
                libc::SIGHUP,
            ] {
                let mut act: libc::sigaction = std::mem::zeroed();
                act.sa_sigaction = libc::SIG_DFL;
                libc::sigaction(sig, &act, std::ptr::null_mut());
            }
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            if libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut()) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

pub(crate) fn wait_child(pid: RawFd) -> nix::Result<ExitStatus> {
    loop {
        match waitpid(Pid::from_raw(pid), None) {
            Ok(WaitStatus::Exited(_, code)) => return Ok(ExitStatus::Exited(code)),
            Ok(WaitStatus::Signaled(_, sig, _)) => return Ok(ExitStatus::Signaled(sig as i32)),
            Ok(_) => continue,
            Err(nix::Error::EINTR) => continue,
            Err(e) => return Err(e),
        }
    }
}
