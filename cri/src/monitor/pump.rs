//! The monitor's loop: one `poll(2)` over the container's output, the init's
//! pidfd and a signalfd, until the init has exited and its output is drained.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::{Duration, Instant, SystemTime};

use berth_core::{ExitStatus, ProcessHandle};
use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::Signal;
use nix::sys::signalfd::SignalFd;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};

use super::diag::{set_nonblocking, warn};
use super::MonitorError;
use crate::logs::{LineSplitter, LogFile, Stream};

/// Bytes read from a pipe per wakeup: a pipe holds 64 KiB by default, so
/// two reads empty a full one, and a busy stream cannot starve the other.
const READ_SIZE: usize = 32 * 1024;

/// After the init has exited, processes that inherited its stdout (without a
/// pid namespace of their own they outlive it) may keep the pipes open: stop
/// reading once they have been quiet this long...
const DRAIN_QUIET: Duration = Duration::from_millis(200);
/// ...or at the latest this long after the exit, so a chatty leftover
/// cannot hold back the exit record.
const DRAIN_MAX: Duration = Duration::from_secs(2);

/// Log write errors reported on stderr before going quiet (the count and the
/// first error still end up in the exit record's message).
const MAX_WARNINGS: u64 = 5;

/// One of the container's output streams.
#[derive(Debug)]
pub(super) struct Source {
    fd: OwnedFd,
    splitter: LineSplitter,
    /// A pty master: `EIO` once the last slave closes means end of file.
    tty: bool,
}

impl Source {
    pub(super) fn new(
        fd: OwnedFd,
        stream: Stream,
        max_line: Option<usize>,
        tty: bool,
    ) -> Result<Self, MonitorError> {
        set_nonblocking(&fd)?;
        Ok(Source {
            fd,
            splitter: LineSplitter::new(stream, max_line),
            tty,
        })
    }
}

/// What a poll entry stands for.
#[derive(Debug, Clone, Copy)]
enum Slot {
    Signals,
    Init,
    Source(usize),
    /// Input from the attached client on task slot `.0`.
    AttachIn(usize),
    /// Its output stream `.1` can take more.
    AttachOut(usize, usize),
    AttachStdin,
    TaskAccept,
    TaskClient(usize),
    /// An exec'd process that is not our child (a shim's) exited.
    ForeignExec(i32),
}

/// The monitor's loop state.
#[derive(Debug)]
pub(super) struct Pump {
    /// `None` once at end of file.
    sources: Vec<Option<Source>>,
    log: Option<LogFile>,
    signals: SignalFd,
    buf: Vec<u8>,
    exit: Option<ExitStatus>,
    write_errors: u64,
    first_write_error: Option<String>,
    /// The daemon's requests.
    pub(super) task: super::serve::TaskServer,
}

impl Pump {
    pub(super) fn new(
        sources: Vec<Source>,
        log: Option<LogFile>,
        signals: SignalFd,
        task: super::serve::TaskServer,
    ) -> Self {
        Pump {
            sources: sources.into_iter().map(Some).collect(),
            log,
            signals,
            buf: vec![0; READ_SIZE],
            exit: None,
            write_errors: 0,
            first_write_error: None,
            task,
        }
    }

    /// Runs until the init has exited and the output is drained; returns how
    /// the init ended and a message for the exit record.
    pub(super) fn run(&mut self, init: &ProcessHandle) -> (ExitStatus, String) {
        let mut exited_at = None;
        let mut last_data = Instant::now();
        loop {
            let timeout = match exited_at {
                None => PollTimeout::NONE,
                Some(at) => {
                    let until = (last_data + DRAIN_QUIET).min(at + DRAIN_MAX);
                    let left = until.saturating_duration_since(Instant::now());
                    if left.is_zero() || self.sources.iter().all(Option::is_none) {
                        break;
                    }
                    PollTimeout::try_from(left).unwrap_or(PollTimeout::MAX)
                }
            };
            let ready = match self.poll(init, timeout) {
                Ok(r) => r,
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    // Cannot happen with valid fds; do not spin if it does.
                    warn(&format!("poll: {e}"));
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
            };
            for slot in ready {
                match slot {
                    Slot::Signals => self.signals(init.pid()),
                    Slot::Init => self.init_exited(init),
                    Slot::Source(i) => {
                        if self.read(i) {
                            last_data = Instant::now();
                        }
                    }
                    // A hang-up or error is met by the read or write
                    // itself (end of input; the stream let go of).
                    Slot::AttachIn(slot) => self.task.attach_mut().read(slot),
                    Slot::AttachOut(slot, n) => self.task.attach_mut().flush(slot, n),
                    Slot::AttachStdin => self.task.attach_mut().write_stdin(),
                    Slot::TaskAccept => self.task.accept(),
                    Slot::TaskClient(i) => {
                        let exited = self.exit.is_some();
                        self.task.serve(i, &mut self.log, exited);
                    }
                    Slot::ForeignExec(pid) => self.task.foreign_exec_exited(pid),
                }
            }
            if self.task.attach_mut().take_stdin_closed() {
                self.task.container().close_stdin();
            }
            if exited_at.is_none() && self.exit.is_some() {
                // The container ends with its init: what it left running
                // (sharing the pod's pid namespace) is killed, so it neither
                // outlives the container nor holds the output open.
                self.task.container().kill_remaining();
                exited_at = Some(Instant::now());
                last_data = Instant::now();
            }
        }
        for i in 0..self.sources.len() {
            self.close(i);
        }
        let status = self.exit.expect("the loop ends after the exit");
        let message = match &self.first_write_error {
            None => String::new(),
            Some(e) => format!(
                "{} container log writes failed, first: {e}",
                self.write_errors
            ),
        };
        (status, message)
    }

    /// One `poll`; returns the entries that are ready.
    fn poll(&self, init: &ProcessHandle, timeout: PollTimeout) -> Result<Vec<Slot>, Errno> {
        let mut slots = vec![Slot::Signals];
        let mut fds = vec![PollFd::new(self.signals.as_fd(), PollFlags::POLLIN)];
        if self.exit.is_none() {
            slots.push(Slot::Init);
            fds.push(PollFd::new(init.pidfd(), PollFlags::POLLIN));
        }
        for (i, s) in self.sources.iter().enumerate() {
            if let Some(s) = s {
                slots.push(Slot::Source(i));
                fds.push(PollFd::new(s.fd.as_fd(), PollFlags::POLLIN));
            }
        }
        // Attached input only while the container runs; output (also
        // what is drained after the exit) is written as it comes.
        use super::attach::Want;
        for w in self.task.attach().wants() {
            let (slot, fd, flags) = match w {
                Want::Input(_, _) if self.exit.is_some() => continue,
                Want::Input(slot, fd) => (Slot::AttachIn(slot), fd, PollFlags::POLLIN),
                Want::Output(slot, n, fd) => (Slot::AttachOut(slot, n), fd, PollFlags::POLLOUT),
                Want::Stdin(fd) => (Slot::AttachStdin, fd, PollFlags::POLLOUT),
            };
            slots.push(slot);
            fds.push(PollFd::new(fd, flags));
        }
        for (pid, fd) in self.task.container().foreign_execs() {
            slots.push(Slot::ForeignExec(pid));
            fds.push(PollFd::new(fd, PollFlags::POLLIN));
        }
        // The daemon's requests, also while the output drains.
        for (slot, fd) in self.task.wants() {
            slots.push(match slot {
                None => Slot::TaskAccept,
                Some(i) => Slot::TaskClient(i),
            });
            fds.push(PollFd::new(fd, PollFlags::POLLIN));
        }
        poll(&mut fds, timeout)?;
        Ok(slots
            .into_iter()
            .zip(&fds)
            .filter_map(|(slot, fd)| fd.revents().filter(|r| !r.is_empty()).map(|_| slot))
            .collect())
    }

    /// Handles every pending signal.
    fn signals(&mut self, init_pid: i32) {
        loop {
            let info = match self.signals.read_signal() {
                Ok(Some(info)) => info,
                Ok(None) => return,
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    warn(&format!("read the signalfd: {e}"));
                    return;
                }
            };
            match Signal::try_from(info.ssi_signo as i32) {
                Ok(Signal::SIGCHLD) => self.reap(init_pid),
                Ok(sig) => warn(&format!(
                    "ignoring {sig} from pid {}: the monitor ends when its container does",
                    info.ssi_pid
                )),
                Err(_) => {}
            }
        }
    }

    /// The init's pidfd is readable: it has exited.
    fn init_exited(&mut self, init: &ProcessHandle) {
        self.reap(init.pid());
        if self.exit.is_none() {
            // A shim's child: the shim tells its status.
            self.exit = self.task.container().foreign_init_exit();
        }
        if self.exit.is_none() {
            // Not seen by the non-blocking sweep: the pidfd says it has
            // exited, so this wait returns at once.
            match init.wait() {
                Ok(status) => self.exit = Some(status),
                Err(e) => {
                    warn(&format!("wait for the init {}: {e}", init.pid()));
                    // Nothing more will come of it: record a failure
                    // rather than poll a readable pidfd forever.
                    self.exit = Some(ExitStatus::Exited(255));
                }
            }
        }
    }

    /// Reaps every exited child (we are a subreaper: orphaned processes of
    /// the container are ours to reap), noting the init's status.
    fn reap(&mut self, init_pid: i32) {
        loop {
            let (pid, status) = match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => (pid, ExitStatus::Exited(code)),
                Ok(WaitStatus::Signaled(pid, sig, _)) => (pid, ExitStatus::Signaled(sig as i32)),
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return,
                Ok(_) | Err(Errno::EINTR) => continue,
                Err(e) => {
                    warn(&format!("waitpid: {e}"));
                    return;
                }
            };
            if pid.as_raw() == init_pid {
                self.exit = Some(status);
            } else if self.task.container_mut().shim_reaped(pid.as_raw()) {
                // The container's shim died: nothing owns the container but
                // us now (its init is reparented here); it ends with it.
                warn("the container's shim died; killing the container");
                let _ = nix::sys::signal::kill(pid_of(init_pid), Signal::SIGKILL);
            } else {
                self.task.exec_exited(pid.as_raw(), status);
            }
        }
    }

    /// Reads once from source `i`; at end of file, closes it. Returns whether
    /// data came.
    fn read(&mut self, i: usize) -> bool {
        let Some(src) = &mut self.sources[i] else {
            return false;
        };
        match nix::unistd::read(src.fd.as_raw_fd(), &mut self.buf) {
            Ok(0) => {}
            Ok(n) => {
                self.task
                    .attach_mut()
                    .broadcast(src.splitter.stream(), &self.buf[..n]);
                if let Some(log) = &mut self.log {
                    let result = src.splitter.feed(&self.buf[..n], SystemTime::now(), log);
                    self.note_write(result);
                }
                return true;
            }
            Err(Errno::EAGAIN | Errno::EINTR) => return false,
            // The last holder of a pty slave has closed it.
            Err(Errno::EIO) if src.tty => {}
            Err(e) => warn(&format!(
                "read the container's {}: {e}",
                src.splitter.stream()
            )),
        }
        self.close(i);
        false
    }

    /// End of file on source `i`: writes its unfinished line and closes it.
    fn close(&mut self, i: usize) {
        let Some(mut src) = self.sources[i].take() else {
            return;
        };
        if let Some(log) = &mut self.log {
            let result = src.splitter.finish(SystemTime::now(), log);
            self.note_write(result);
        }
    }

    fn note_write(&mut self, result: std::io::Result<()>) {
        let Err(e) = result else { return };
        self.write_errors += 1;
        if self.write_errors <= MAX_WARNINGS {
            warn(&format!("write the container log: {e}"));
        }
        self.first_write_error.get_or_insert_with(|| e.to_string());
    }
}

fn pid_of(pid: i32) -> nix::unistd::Pid {
    nix::unistd::Pid::from_raw(pid)
}
