//! The monitor's task server: the container's one owner answers the
//! daemon's requests ([`crate::task::proto`]) on `<dir>/task.sock`, from
//! the same single-threaded `poll` loop that pumps the logs (`pump.rs`).
//!
//! Every request is answered at once, in the loop, except the events: a
//! [`Request::Wait`] connection gets [`Event::Exited`] after the exit record
//! is on disk, an exec's connection gets [`Event::ExecExited`] when the loop
//! reaps that process. A client that sends something else than the protocol
//! (wrong version, oversize or undecodable message, wrong descriptors) gets
//! an error reply and is dropped; the container is not affected.

use std::collections::HashMap;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use berth_core::ipc::{Channel, ChannelError, Listener};
use berth_core::{ExitStatus, Process, ProcessHandle, Stdio};

use super::attach::{Attach, AttachFds};
use super::diag::warn;
use super::owner::Owner;
use crate::logs::LogFile;
use crate::task::proto::{
    self, Event, ExitRecord, FailureKind, Reply, Request, TaskFailure, TaskState,
};

/// One connected client.
#[derive(Debug)]
struct Client {
    ch: Channel,
    /// Said a [`Request::Hello`] of our version.
    greeted: bool,
    /// Waits for [`Event::Exited`].
    waiting: bool,
}

/// The task server of one container.
#[derive(Debug)]
pub(super) struct TaskServer {
    listener: Listener,
    /// Stable slots: a client's index does not change while it is connected.
    clients: Vec<Option<Client>>,
    container: Owner,
    init_pid: i32,
    /// Exec'd processes still running: pid → the client slot that asked.
    execs: HashMap<i32, usize>,
    /// Attached clients (on their connections' slots) and the container's
    /// stdin and terminal.
    attach: Attach,
}

impl TaskServer {
    /// The task server of `container` on `listener` (`<dir>/task.sock`).
    pub(super) fn new(
        listener: Listener,
        container: Owner,
        init: &ProcessHandle,
        attach: Attach,
    ) -> TaskServer {
        TaskServer {
            listener,
            clients: Vec::new(),
            container,
            init_pid: init.pid(),
            execs: HashMap::new(),
            attach,
        }
    }

    /// The container, to act on.
    pub(super) fn container_mut(&mut self) -> &mut Owner {
        &mut self.container
    }

    /// The container, taken back (to destroy it).
    pub(super) fn into_owner(self) -> Owner {
        self.container
    }

    /// The container (for its exit record).
    pub(super) fn container(&self) -> &Owner {
        &self.container
    }

    /// The attached clients.
    pub(super) fn attach(&self) -> &Attach {
        &self.attach
    }

    /// The attached clients, to act on.
    pub(super) fn attach_mut(&mut self) -> &mut Attach {
        &mut self.attach
    }

    /// The fds to poll for reading: the listener (slot `None`), then each
    /// client (slot `Some(i)`).
    pub(super) fn wants(&self) -> Vec<(Option<usize>, BorrowedFd<'_>)> {
        let mut w = vec![(None, self.listener.as_fd())];
        for (i, c) in self.clients.iter().enumerate() {
            if let Some(c) = c {
                w.push((Some(i), c.ch.as_fd()));
            }
        }
        w
    }

    /// Takes the pending connections.
    pub(super) fn accept(&mut self) {
        loop {
            let ch = match self.listener.accept() {
                Ok(Some(ch)) => ch.with_limit(proto::MAX_REQUEST),
                Ok(None) => return,
                Err(e) => {
                    warn(&format!("task socket: accept: {e}"));
                    return;
                }
            };
            if let Err(e) = ch.require_same_user() {
                warn(&format!("task socket: refused a client: {e}"));
                continue;
            }
            let client = Client {
                ch,
                greeted: false,
                waiting: false,
            };
            match self.clients.iter().position(Option::is_none) {
                Some(i) => self.clients[i] = Some(client),
                None if self.clients.len() < proto::MAX_CLIENTS => self.clients.push(Some(client)),
                None => {
                    let f = TaskFailure::new(FailureKind::Failed, "too many connections");
                    let _ = client.ch.try_send(&Reply::Error(f), &[]);
                }
            }
        }
    }

    /// Client `i` is readable (or hung up): serves one request.
    pub(super) fn serve(&mut self, i: usize, log: &mut Option<LogFile>, exited: bool) {
        let Some(client) = self.clients.get(i).and_then(Option::as_ref) else {
            return;
        };
        let (request, fds) = match client.ch.try_recv::<Request>() {
            Ok(Some(m)) => m,
            Ok(None) => return,
            Err(ChannelError::Closed) => return self.drop_client(i),
            Err(e @ (ChannelError::TooBig(_) | ChannelError::Decode(_))) => {
                let f = TaskFailure::new(FailureKind::BadRequest, e.to_string());
                self.fail_and_drop(i, f);
                return;
            }
            Err(e) => {
                warn(&format!("task socket: receive: {e}"));
                return self.drop_client(i);
            }
        };
        if !client.greeted {
            let reply = match request {
                Request::Hello { version } if version == proto::VERSION => Reply::Hello {
                    version: proto::VERSION,
                    pid: std::process::id() as i32,
                },
                Request::Hello { version } => {
                    let f = TaskFailure::new(
                        FailureKind::Version,
                        format!(
                            "task protocol version {version} asked; this monitor speaks {}",
                            proto::VERSION
                        ),
                    );
                    return self.fail_and_drop(i, f);
                }
                _ => {
                    let f = TaskFailure::new(FailureKind::BadRequest, "say Hello first");
                    return self.fail_and_drop(i, f);
                }
            };
            if let Some(c) = self.clients[i].as_mut() {
                c.greeted = true;
            }
            return self.reply(i, &reply, &[]);
        }
        let (reply, out_fds) = match self.handle(i, request, fds, log, exited) {
            Ok(Some(r)) => r,
            Ok(None) => return, // answered later (an event)
            Err(f) => (Reply::Error(f), Vec::new()),
        };
        let borrowed: Vec<BorrowedFd<'_>> = out_fds.iter().map(|f| f.as_fd()).collect();
        self.reply(i, &reply, &borrowed);
    }

    /// One request of a greeted client: its reply and fds, or `None` when
    /// the answer is an event that comes later.
    fn handle(
        &mut self,
        i: usize,
        request: Request,
        fds: Vec<OwnedFd>,
        log: &mut Option<LogFile>,
        exited: bool,
    ) -> Result<Option<(Reply, Vec<OwnedFd>)>, TaskFailure> {
        let ok = || Ok(Some((Reply::Ok, Vec::new())));
        if !fds.is_empty() && !matches!(request, Request::Exec { .. } | Request::Attach { .. }) {
            return Err(TaskFailure::new(
                FailureKind::BadRequest,
                "descriptors with a request that takes none",
            ));
        }
        match request {
            Request::Hello { .. } => Err(TaskFailure::new(FailureKind::BadRequest, "Hello twice")),
            Request::Start => {
                self.container.start()?;
                match self.container.started_at() {
                    Some(at) => Ok(Some((Reply::Started { at: clamp(at) }, Vec::new()))),
                    None => Err(TaskFailure::new(
                        FailureKind::InvalidState,
                        format!("start: the container is {}", self.container.describe()),
                    )),
                }
            }
            Request::Signal { signal } => {
                if exited {
                    return ok();
                }
                match self.container.signal(signal) {
                    // An init that has just exited (not reaped yet): the
                    // runtime says it is not running; the exit follows.
                    Err(_) if init_gone(self.init_pid) => ok(),
                    other => other.and_then(|_| ok()),
                }
            }
            Request::Shutdown => {
                if !exited {
                    // ESRCH: exited meanwhile; the loop records it either way.
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(self.init_pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
                ok()
            }
            Request::Wait => {
                if let Some(c) = self.clients[i].as_mut() {
                    c.waiting = true;
                }
                Ok(None)
            }
            Request::Exec {
                spec,
                sealed_init,
                stdio,
            } => self.exec(i, *spec, sealed_init, stdio, fds).map(Some),
            Request::Attach {
                stdin,
                stdout,
                stderr,
            } => {
                if exited {
                    return Err(TaskFailure::new(
                        FailureKind::InvalidState,
                        "attach: the container has exited",
                    ));
                }
                self.add_attached(i, [stdin, stdout, stderr], fds)?;
                ok()
            }
            Request::Resize { rows, cols } => {
                self.attach
                    .resize(berth_core::process::ConsoleSize { rows, cols })
                    .map_err(|e| {
                        TaskFailure::new(FailureKind::Failed, format!("resize the terminal: {e}"))
                    })?;
                ok()
            }
            Request::Update { resources } => {
                self.container.set(&resources)?;
                ok()
            }
            Request::Stats => Ok(Some((
                Reply::Stats(Box::new(self.container.stats())),
                Vec::new(),
            ))),
            Request::Pause => {
                self.container.pause()?;
                ok()
            }
            Request::Resume => {
                self.container.resume()?;
                ok()
            }
            Request::Checkpoint { options } => {
                self.container.checkpoint(&options)?;
                ok()
            }
            Request::ReopenLog => {
                if let Some(log) = log {
                    log.reopen().map_err(|e| {
                        TaskFailure::new(
                            FailureKind::Failed,
                            format!("reopen {}: {e}", log.path().display()),
                        )
                    })?;
                }
                ok()
            }
            Request::State => {
                let started_at = self.container.started_at().map(clamp);
                Ok(Some((
                    Reply::State(TaskState {
                        init_pid: self.init_pid,
                        started: started_at.is_some(),
                        started_at,
                        paused: self.container.paused(),
                    }),
                    Vec::new(),
                )))
            }
        }
    }

    /// Runs an exec'd process; its connection learns the exit later.
    fn exec(
        &mut self,
        i: usize,
        spec: berth_core::process::ProcessSpec,
        sealed_init: bool,
        stdio: [bool; 3],
        fds: Vec<OwnedFd>,
    ) -> Result<(Reply, Vec<OwnedFd>), TaskFailure> {
        let wanted = usize::from(sealed_init) + stdio.iter().filter(|b| **b).count();
        if fds.len() != wanted {
            return Err(TaskFailure::new(
                FailureKind::BadRequest,
                format!("exec with {} descriptors, {wanted} expected", fds.len()),
            ));
        }
        let mut fds = fds.into_iter();
        if sealed_init {
            let fd = fds.next().expect("counted");
            if let Err(e) =
                berth_core::process::adopt_sealed_copy(berth_core::InitBinary::SelfExe, fd)
            {
                warn(&format!("not using the daemon's init binary copy: {e}"));
            }
        }
        let mut next = |wanted: bool| match wanted {
            true => Stdio::Fd(fds.next().expect("counted")),
            false => Stdio::Null,
        };
        let mut process = Process::new(Vec::<String>::new());
        process.spec = spec;
        process.stdin = next(stdio[0]);
        process.stdout = next(stdio[1]);
        process.stderr = next(stdio[2]);
        let started = self.container.exec(process);
        // The copy (tens of MB) is not kept between execs.
        berth_core::process::forget_sealed_copies();
        let mut handle = started?;
        let pidfd = handle
            .pidfd()
            .try_clone_to_owned()
            .map_err(|e| TaskFailure::new(FailureKind::Failed, format!("exec: its pidfd: {e}")))?;
        let mut out = vec![pidfd];
        out.extend(handle.take_console());
        self.execs.insert(handle.pid(), i);
        Ok((Reply::Exec { pid: handle.pid() }, out))
    }

    /// Attaches connection `i` with the pipe ends in `fds`.
    fn add_attached(
        &mut self,
        i: usize,
        streams: [bool; 3],
        fds: Vec<OwnedFd>,
    ) -> Result<(), TaskFailure> {
        let wanted = streams.iter().filter(|b| **b).count();
        if fds.len() != wanted {
            return Err(TaskFailure::new(
                FailureKind::BadRequest,
                format!("attach with {} descriptors, {wanted} expected", fds.len()),
            ));
        }
        if streams[0] && !self.attach.has_stdin() {
            return Err(TaskFailure::new(
                FailureKind::Invalid,
                "attach: the container does not read stdin (or has closed it)",
            ));
        }
        if streams[2] && self.attach.has_terminal() {
            return Err(TaskFailure::new(
                FailureKind::Invalid,
                "attach: the container has a terminal, which carries stderr too",
            ));
        }
        let mut fds = fds.into_iter();
        let mut next = |wanted: bool| wanted.then(|| fds.next().expect("counted"));
        let ends = AttachFds {
            stdin: next(streams[0]),
            stdout: next(streams[1]),
            stderr: next(streams[2]),
        };
        self.attach
            .add(i, ends)
            .map_err(|e| TaskFailure::new(FailureKind::Failed, format!("attach: its pipes: {e}")))
    }

    /// An exec'd process was reaped: tells the client that started it.
    /// Returns whether `pid` was one.
    pub(super) fn exec_exited(&mut self, pid: i32, status: ExitStatus) -> bool {
        let Some(i) = self.execs.remove(&pid) else {
            return false;
        };
        let signal = match status {
            ExitStatus::Signaled(s) => Some(s),
            ExitStatus::Exited(_) => None,
        };
        let event = Event::ExecExited {
            pid,
            exit_code: status.code(),
            signal,
        };
        self.reply(i, &Reply::Event(event), &[]);
        true
    }

    /// An exec'd process that is not our child exited (its pidfd is
    /// readable): its status from its owner, told to the client.
    pub(super) fn foreign_exec_exited(&mut self, pid: i32) {
        let status = self
            .container
            .foreign_exec_exited(pid)
            .unwrap_or(ExitStatus::Exited(255));
        // False when its client went away: nothing to tell then.
        self.exec_exited(pid, status);
    }

    /// The exit record is written: tells every waiting client.
    pub(super) fn exited(&mut self, record: &ExitRecord) {
        for i in 0..self.clients.len() {
            if self.clients[i].as_ref().is_some_and(|c| c.waiting) {
                self.reply(i, &Reply::Event(Event::Exited(record.clone())), &[]);
            }
        }
    }

    /// Sends a reply; a client that does not take it is dropped (the loop
    /// never blocks on one).
    fn reply(&mut self, i: usize, reply: &Reply, fds: &[BorrowedFd<'_>]) {
        let Some(c) = self.clients.get(i).and_then(Option::as_ref) else {
            return;
        };
        if let Err(e) = c.ch.try_send(reply, fds) {
            if !e.is_gone() {
                warn(&format!("task socket: reply: {e}"));
            }
            self.drop_client(i);
        }
    }

    fn fail_and_drop(&mut self, i: usize, failure: TaskFailure) {
        self.reply(i, &Reply::Error(failure), &[]);
        self.drop_client(i);
    }

    fn drop_client(&mut self, i: usize) {
        if let Some(slot) = self.clients.get_mut(i) {
            *slot = None;
        }
        // Execs it started run on; their exits are still reaped, unreported.
        self.execs.retain(|_, c| *c != i);
        self.attach.remove(i);
    }
}

fn clamp(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Whether process `pid` has exited (a zombie, or reaped by its parent).
fn init_gone(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |s| {
        s.rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z'))
    })
}
