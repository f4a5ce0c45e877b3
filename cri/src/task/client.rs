//! The daemon's side of the task protocol ([`super::proto`]): each call
//! connects to the monitor's socket, says hello, asks, and reads the
//! answer. A refused or missing socket is [`TaskError::Gone`].

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use berth_core::cgroups::{Resources, Stats};
use berth_core::container::checkpoint::CheckpointOptions;
use berth_core::ipc::{Channel, ChannelError};
use berth_core::process::ProcessSpec;

use super::proto::{self, Event, Reply, Request};
use super::{
    Attached, ExecExit, ExecProcess, ExecStdio, ExitRecord, Task, TaskError, TaskState, Tasks,
};

/// How long a quick request (not a checkpoint, not a wait) may take before
/// the monitor is considered stuck.
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// Opens the real tasks: the monitors' sockets.
#[derive(Debug, Clone)]
pub struct MonitorTasks {
    /// The daemon's sealed init binary, handed to the monitor with each
    /// exec so it does not copy the binary again (`None`: it makes its own).
    sealed_init: Option<Arc<OwnedFd>>,
    /// runtime-core's state root, for what a dead monitor left.
    runtime_root: PathBuf,
}

impl MonitorTasks {
    /// Tasks of containers under `runtime_root` whose execs use
    /// `sealed_init` as the init binary.
    pub fn new(runtime_root: PathBuf, sealed_init: Option<Arc<OwnedFd>>) -> Self {
        Self {
            sealed_init,
            runtime_root,
        }
    }
}

impl Tasks for MonitorTasks {
    fn open(&self, dir: &Path) -> Arc<dyn Task> {
        Arc::new(MonitorTask {
            socket: dir.join(proto::SOCKET_FILE),
            sealed_init: self.sealed_init.clone(),
            runtime_root: Some(self.runtime_root.clone()),
        })
    }
}

/// One container's monitor.
#[derive(Debug, Clone)]
pub struct MonitorTask {
    socket: PathBuf,
    sealed_init: Option<Arc<OwnedFd>>,
    runtime_root: Option<PathBuf>,
}

impl MonitorTask {
    /// The task of the monitor whose socket is `<dir>/task.sock`.
    pub fn at(dir: &Path) -> Self {
        Self {
            socket: dir.join(proto::SOCKET_FILE),
            sealed_init: None,
            runtime_root: None,
        }
    }

    /// A connection past its hello.
    pub fn connect(&self) -> Result<Channel, TaskError> {
        self.connect_then(&[])
    }

    /// A connection past its hello, with `requests` sent right behind the
    /// hello (their answers follow its answer, in order): one round trip
    /// to the monitor instead of one per request.
    fn connect_then(&self, requests: &[Request]) -> Result<Channel, TaskError> {
        let ch = Channel::connect(&self.socket)
            .map_err(gone)?
            .with_limit(proto::MAX_REPLY);
        let hello = Request::Hello {
            version: proto::VERSION,
        };
        for r in std::iter::once(&hello).chain(requests) {
            ch.send(r, &[]).map_err(gone)?;
        }
        match read(&ch, Some(REPLY_TIMEOUT))? {
            (Reply::Hello { version, .. }, _) if version == proto::VERSION => Ok(ch),
            (other, _) => Err(unexpected(other)),
        }
    }

    /// Sends one request and reads its one reply.
    fn call(
        &self,
        request: &Request,
        fds: &[BorrowedFd<'_>],
        timeout: Option<Duration>,
    ) -> Result<(Reply, Vec<OwnedFd>), TaskError> {
        let ch = self.connect()?;
        ch.send(request, fds).map_err(gone)?;
        read(&ch, timeout)
    }

    fn ok(&self, request: &Request, timeout: Option<Duration>) -> Result<(), TaskError> {
        match self.call(request, &[], timeout)?.0 {
            Reply::Ok => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    /// A connection that waits for the exit: readable when the
    /// [`Event::Exited`] comes or the monitor dies; read it with
    /// [`read_exit`].
    pub fn subscribe_exit(&self) -> Result<Channel, TaskError> {
        let ch = self.connect()?;
        ch.send(&Request::Wait, &[]).map_err(gone)?;
        Ok(ch)
    }
}

/// Reads the answer to [`MonitorTask::subscribe_exit`] (blocking at most
/// `timeout`; `Ok(None)` when nothing came yet).
pub fn read_exit(ch: &Channel, timeout: Option<Duration>) -> Result<Option<ExitRecord>, TaskError> {
    match read(ch, timeout) {
        Ok((Reply::Event(Event::Exited(record)), _)) => Ok(Some(record)),
        Ok((other, _)) => Err(unexpected(other)),
        Err(TaskError::Channel(ChannelError::Timeout(_))) => Ok(None),
        Err(e) => Err(e),
    }
}

/// One reply; a failure reply becomes [`TaskError::Failed`].
fn read(ch: &Channel, timeout: Option<Duration>) -> Result<(Reply, Vec<OwnedFd>), TaskError> {
    match ch.recv_timeout::<Reply>(timeout) {
        Ok((Reply::Error(f), _)) => Err(TaskError::Failed(f)),
        Ok(r) => Ok(r),
        Err(e) => Err(gone(e)),
    }
}

fn gone(e: ChannelError) -> TaskError {
    if e.is_gone() {
        TaskError::Gone
    } else {
        TaskError::Channel(e)
    }
}

fn unexpected(reply: Reply) -> TaskError {
    let mut s = format!("{reply:?}");
    s.truncate(200);
    TaskError::Protocol(s)
}

impl Task for MonitorTask {
    fn start(&self) -> Result<i64, TaskError> {
        match self.call(&Request::Start, &[], Some(REPLY_TIMEOUT))?.0 {
            Reply::Started { at } => Ok(at),
            other => Err(unexpected(other)),
        }
    }

    fn signal(&self, signal: i32) -> Result<(), TaskError> {
        self.ok(&Request::Signal { signal }, Some(REPLY_TIMEOUT))
    }

    fn wait(&self, timeout: Duration) -> Result<Option<ExitRecord>, TaskError> {
        let ch = self.subscribe_exit()?;
        read_exit(&ch, Some(timeout))
    }

    fn signal_and_wait(
        &self,
        signal: i32,
        timeout: Duration,
    ) -> Result<Option<ExitRecord>, TaskError> {
        // Subscribed before the signal: the exit cannot be missed.
        let ch = self.connect_then(&[Request::Wait, Request::Signal { signal }])?;
        // The signal's answer, then (within the time) the exit.
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match read(&ch, Some(left)) {
                Ok((Reply::Ok, _)) => continue,
                Ok((Reply::Event(Event::Exited(record)), _)) => return Ok(Some(record)),
                Ok((other, _)) => return Err(unexpected(other)),
                Err(TaskError::Channel(ChannelError::Timeout(_))) => return Ok(None),
                Err(e) => return Err(e),
            }
        }
    }

    fn exec(
        &self,
        spec: &ProcessSpec,
        stdio: ExecStdio,
    ) -> Result<Box<dyn ExecProcess>, TaskError> {
        let ch = self.connect()?;
        let mut fds: Vec<BorrowedFd<'_>> = Vec::new();
        if let Some(sealed) = &self.sealed_init {
            fds.push(sealed.as_fd());
        }
        let mask = [
            stdio.stdin.is_some(),
            stdio.stdout.is_some(),
            stdio.stderr.is_some(),
        ];
        for fd in [&stdio.stdin, &stdio.stdout, &stdio.stderr]
            .into_iter()
            .flatten()
        {
            fds.push(fd.as_fd());
        }
        ch.send(
            &Request::Exec {
                spec: Box::new(spec.clone()),
                sealed_init: self.sealed_init.is_some(),
                stdio: mask,
            },
            &fds,
        )
        .map_err(gone)?;
        drop(fds);
        // Only the process may hold its stdio now: EOF means it is done.
        drop(stdio);
        match read(&ch, Some(REPLY_TIMEOUT))? {
            (Reply::Exec { pid }, mut got) if !got.is_empty() => {
                let console = (got.len() > 1).then(|| got.remove(1));
                let pidfd = got.remove(0);
                Ok(Box::new(MonitorExec {
                    ch,
                    pid,
                    pidfd,
                    console,
                    exit: std::sync::Mutex::new(None),
                }))
            }
            (other, _) => Err(unexpected(other)),
        }
    }

    fn attach(&self, stdio: ExecStdio) -> Result<Box<dyn Attached>, TaskError> {
        let ch = self.connect()?;
        let request = Request::Attach {
            stdin: stdio.stdin.is_some(),
            stdout: stdio.stdout.is_some(),
            stderr: stdio.stderr.is_some(),
        };
        let fds: Vec<BorrowedFd<'_>> = [&stdio.stdin, &stdio.stdout, &stdio.stderr]
            .into_iter()
            .flatten()
            .map(|f| f.as_fd())
            .collect();
        ch.send(&request, &fds).map_err(gone)?;
        drop(fds);
        // Only the monitor holds these ends now: our side sees EOF when
        // it lets go of them.
        drop(stdio);
        match read(&ch, Some(REPLY_TIMEOUT))?.0 {
            Reply::Ok => Ok(Box::new(MonitorAttached { ch })),
            other => Err(unexpected(other)),
        }
    }

    fn update(&self, resources: &Resources) -> Result<(), TaskError> {
        let request = Request::Update {
            resources: Box::new(resources.clone()),
        };
        self.ok(&request, Some(REPLY_TIMEOUT))
    }

    fn stats(&self) -> Result<Stats, TaskError> {
        match self.call(&Request::Stats, &[], Some(REPLY_TIMEOUT))?.0 {
            Reply::Stats(s) => Ok(*s),
            other => Err(unexpected(other)),
        }
    }

    fn pause(&self) -> Result<(), TaskError> {
        self.ok(&Request::Pause, Some(REPLY_TIMEOUT))
    }

    fn resume(&self) -> Result<(), TaskError> {
        self.ok(&Request::Resume, Some(REPLY_TIMEOUT))
    }

    fn checkpoint(&self, options: &CheckpointOptions) -> Result<(), TaskError> {
        let request = Request::Checkpoint {
            options: Box::new(options.clone()),
        };
        // CRIU's own timeout (in the options) bounds it.
        self.ok(&request, None)
    }

    fn reopen_log(&self) -> Result<(), TaskError> {
        self.ok(&Request::ReopenLog, Some(REPLY_TIMEOUT))
    }

    fn state(&self) -> Result<TaskState, TaskError> {
        match self.call(&Request::State, &[], Some(REPLY_TIMEOUT))?.0 {
            Reply::State(s) => Ok(s),
            other => Err(unexpected(other)),
        }
    }

    fn shutdown(&self) -> Result<(), TaskError> {
        self.ok(&Request::Shutdown, Some(REPLY_TIMEOUT))
    }

    fn is_running(&self) -> bool {
        // A refused connection: nobody listens any more.
        Channel::connect(&self.socket).is_ok()
    }

    fn abandon(&self) {
        // The container's id is its directory's name.
        let id = self.socket.parent().and_then(Path::file_name);
        if let (Some(root), Some(id)) = (&self.runtime_root, id.and_then(|i| i.to_str())) {
            crate::monitor::remove(self.socket.parent().unwrap_or(Path::new("/")), root, id);
        }
    }

    fn watch_exit(&self) -> Result<Channel, TaskError> {
        self.subscribe_exit()
    }
}

/// An attach session: its connection.
#[derive(Debug)]
pub struct MonitorAttached {
    ch: Channel,
}

impl Attached for MonitorAttached {
    fn resize(&self, size: berth_core::process::ConsoleSize) -> Result<(), TaskError> {
        let request = Request::Resize {
            rows: size.rows,
            cols: size.cols,
        };
        self.ch.send(&request, &[]).map_err(gone)?;
        match read(&self.ch, Some(REPLY_TIMEOUT))?.0 {
            Reply::Ok => Ok(()),
            other => Err(unexpected(other)),
        }
    }
}

/// An exec'd process, on the connection that asked for it.
#[derive(Debug)]
pub struct MonitorExec {
    ch: Channel,
    pid: i32,
    pidfd: OwnedFd,
    console: Option<OwnedFd>,
    exit: std::sync::Mutex<Option<ExecExit>>,
}

impl ExecProcess for MonitorExec {
    fn pid(&self) -> i32 {
        self.pid
    }

    fn exit_fd(&self) -> BorrowedFd<'_> {
        self.pidfd.as_fd()
    }

    fn take_console(&mut self) -> Option<OwnedFd> {
        self.console.take()
    }

    fn signal(&self, signal: i32) -> Result<(), TaskError> {
        let sig = rustix::process::Signal::from_named_raw(signal)
            .ok_or_else(|| TaskError::Protocol(format!("signal {signal}")))?;
        match rustix::process::pidfd_send_signal(&self.pidfd, sig) {
            // Exited already: nothing to signal.
            Ok(()) | Err(rustix::io::Errno::SRCH) => Ok(()),
            Err(e) => Err(TaskError::Channel(ChannelError::Io(nix::Error::from_raw(
                e.raw_os_error(),
            )))),
        }
    }

    fn wait(&self, timeout: Option<Duration>) -> Result<Option<ExecExit>, TaskError> {
        let mut exit = self.exit.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = *exit {
            return Ok(Some(e));
        }
        match read(&self.ch, timeout) {
            Ok((
                Reply::Event(Event::ExecExited {
                    pid,
                    exit_code,
                    signal,
                }),
                _,
            )) if pid == self.pid => {
                let e = ExecExit { exit_code, signal };
                *exit = Some(e);
                Ok(Some(e))
            }
            Ok((other, _)) => Err(unexpected(other)),
            Err(TaskError::Channel(ChannelError::Timeout(_))) => Ok(None),
            Err(e) => Err(e),
        }
    }
}
