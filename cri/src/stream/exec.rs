//! Exec over a stream: a new process joining the container (runtime-core's
//! `exec`), its stdio piped to the client's channels or one pseudo-terminal
//! when `tty`, terminal resizes applied, and the exit status reported the
//! way Kubernetes' remotecommand does. A client that goes away takes the
//! process with it (SIGKILL): nothing is left behind.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use berth_core::process::{ConsoleSize, ProcessSpec};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::task::{ExecProcess, ExecStdio};

/// What an exec URL was issued for (validated by the Exec RPC).
#[derive(Debug, Clone)]
pub struct ExecTarget {
    /// The container, through its monitor.
    pub task: Arc<dyn crate::task::Task>,
    /// The container's id (for messages).
    pub container_id: String,
    /// The process (command, env, cwd, user from the container's own).
    pub spec: ProcessSpec,
    /// The client sends stdin.
    pub stdin: bool,
    /// The client wants stdout.
    pub stdout: bool,
    /// The client wants stderr (never with `tty`: one terminal carries both).
    pub stderr: bool,
    /// One pseudo-terminal.
    pub tty: bool,
}

/// The client side of a session, whatever the transport.
pub struct ExecIo {
    /// What the client types (EOF: it closed stdin).
    pub stdin: Option<Box<dyn AsyncRead + Send + Unpin>>,
    /// Where the process's output goes (the terminal's, with `tty`).
    pub stdout: Option<Box<dyn AsyncWrite + Send + Unpin>>,
    /// Where its errors go.
    pub stderr: Option<Box<dyn AsyncWrite + Send + Unpin>>,
    /// Terminal sizes as the client's window changes.
    pub resize: Option<mpsc::Receiver<ConsoleSize>>,
}

/// How the process ended, or why it could not run.
pub type Outcome = Result<berth_core::ExitStatus, String>;

/// A pipe end or pty master as tokio I/O, non-blocking (tokio's pipe types
/// register any pollable fd; a pty master's EIO once the terminal's last
/// user is gone ends the copy like EOF).
fn reader(fd: OwnedFd) -> Result<tokio::net::unix::pipe::Receiver, String> {
    crate::util::set_nonblocking(fd.as_fd()).map_err(|e| e.to_string())?;
    tokio::net::unix::pipe::Receiver::from_owned_fd_unchecked(fd).map_err(|e| e.to_string())
}

fn writer(fd: OwnedFd) -> Result<tokio::net::unix::pipe::Sender, String> {
    crate::util::set_nonblocking(fd.as_fd()).map_err(|e| e.to_string())?;
    tokio::net::unix::pipe::Sender::from_owned_fd_unchecked(fd).map_err(|e| e.to_string())
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?)
}

/// Copies `from` to `to` until EOF, then shuts `to` down.
async fn pump(from: impl AsyncRead + Unpin, mut to: impl AsyncWrite + Unpin) {
    let mut from = tokio::io::BufReader::with_capacity(32 << 10, from);
    let _ = tokio::io::copy_buf(&mut from, &mut to).await;
    let _ = to.shutdown().await;
}

/// Runs the process with `io` until it ends or `gone` resolves (the client
/// left: the process is killed). Output is flushed to the client before
/// returning.
pub async fn run(
    target: ExecTarget,
    mut io: ExecIo,
    gone: impl std::future::Future<Output = ()> + Send,
) -> Outcome {
    let mut spec = target.spec.clone();
    let mut stdio = ExecStdio::default();
    let mut ours_in = None;
    let mut ours_out = Vec::new();
    let mut first_size = None;
    if target.tty {
        // The first size, if the client sent one already.
        if let Some(r) = io.resize.as_mut() {
            first_size = r.try_recv().ok();
        }
        spec.terminal = Some(first_size.unwrap_or(ConsoleSize { rows: 24, cols: 80 }));
    } else {
        if target.stdin {
            let (r, w) = pipe().map_err(|e| e.to_string())?;
            stdio.stdin = Some(r);
            ours_in = Some(w);
        }
        if target.stdout {
            let (r, w) = pipe().map_err(|e| e.to_string())?;
            stdio.stdout = Some(w);
            ours_out.push((1, r));
        }
        if target.stderr {
            let (r, w) = pipe().map_err(|e| e.to_string())?;
            stdio.stderr = Some(w);
            ours_out.push((2, r));
        }
    }
    let (task, id) = (target.task.clone(), target.container_id.clone());
    let mut handle = tokio::task::spawn_blocking(move || {
        task.exec(&spec, stdio)
            .map_err(|e| format!("exec in container {id}: {}", crate::util::error_chain(&e)))
    })
    .await
    .map_err(|e| e.to_string())??;
    let mut pumps = Vec::new();
    let mut resize_task = None;
    if target.tty {
        let master = handle.take_console().ok_or("the process got no terminal")?;
        let dup = master.try_clone().map_err(|e| e.to_string())?;
        let resize_fd = master.try_clone().map_err(|e| e.to_string())?;
        let from_tty = reader(master)?;
        let to_tty = writer(dup)?;
        if let Some(out) = io.stdout.take() {
            pumps.push(tokio::spawn(pump(from_tty, out)));
        }
        if let Some(input) = io.stdin.take() {
            tokio::spawn(pump(input, to_tty));
        }
        if let Some(mut sizes) = io.resize.take() {
            resize_task = Some(tokio::spawn(async move {
                while let Some(s) = sizes.recv().await {
                    let _ = berth_core::process::resize_console(resize_fd.as_fd(), s);
                }
            }));
        }
    } else {
        if let (Some(w), Some(input)) = (ours_in, io.stdin.take()) {
            tokio::spawn(pump(input, writer(w)?));
        }
        for (n, r) in ours_out {
            let out = if n == 1 {
                io.stdout.take()
            } else {
                io.stderr.take()
            };
            let r = reader(r)?;
            if let Some(out) = out {
                pumps.push(tokio::spawn(pump(r, out)));
            }
        }
    }
    let handle: Arc<dyn ExecProcess> = Arc::from(handle);
    let h = handle.clone();
    let mut wait = tokio::task::spawn_blocking(move || h.wait(None));
    let status = tokio::select! {
        s = &mut wait => s,
        () = gone => {
            let _ = handle.signal(libc::SIGKILL);
            (&mut wait).await
        }
    };
    // Output written before the exit is delivered; a background child
    // that keeps the pipe open does not hold the answer for long.
    for p in pumps {
        let _ = tokio::time::timeout(Duration::from_secs(2), p).await;
    }
    if let Some(t) = resize_task {
        t.abort();
    }
    let exit = status
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("waiting for the process: {}", crate::util::error_chain(&e)))?
        .ok_or("the process's end was not reported")?;
    Ok(match exit.signal {
        Some(sig) => berth_core::ExitStatus::Signaled(sig),
        None => berth_core::ExitStatus::Exited(exit.exit_code),
    })
}

/// The v4+ exit status message (a Kubernetes `metav1.Status`).
pub fn status_json(outcome: &Outcome) -> String {
    match outcome {
        Ok(s) if s.success() => r#"{"metadata":{},"status":"Success"}"#.to_string(),
        Ok(s) => serde_json::json!({
            "metadata": {},
            "status": "Failure",
            "message": format!("command terminated with non-zero exit code: exit code {}", s.code()),
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": s.code().to_string()}]},
        })
        .to_string(),
        Err(e) => serde_json::json!({
            "metadata": {},
            "status": "Failure",
            "message": e,
            "reason": "InternalError",
        })
        .to_string(),
    }
}

/// What pre-v4 protocols put on the error channel: nothing on success, an
/// error text otherwise.
pub fn status_text(outcome: &Outcome) -> Option<String> {
    match outcome {
        Ok(s) if s.success() => None,
        Ok(s) => Some(format!(
            "command terminated with non-zero exit code: exit code {}",
            s.code()
        )),
        Err(e) => Some(e.clone()),
    }
}

/// Reads resize events — concatenated JSON objects `{"Width":w,"Height":h}`
/// — from `r` into a channel.
pub fn resize_events(
    mut r: impl AsyncRead + Unpin + Send + 'static,
) -> mpsc::Receiver<ConsoleSize> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Size {
        width: u16,
        height: u16,
    }
    let (tx, rx) = mpsc::channel(8);
    tokio::spawn(async move {
        let mut pending = Vec::new();
        let mut buf = [0u8; 1024];
        loop {
            let n = match r.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            pending.extend_from_slice(&buf[..n]);
            let mut consumed = 0;
            let mut it = serde_json::Deserializer::from_slice(&pending).into_iter::<Size>();
            while let Some(Ok(s)) = it.next() {
                consumed = it.byte_offset();
                let _ = tx
                    .send(ConsoleSize {
                        rows: s.height,
                        cols: s.width,
                    })
                    .await;
            }
            pending.drain(..consumed);
            if pending.len() > 64 << 10 {
                return; // not resize events
            }
        }
    });
    rx
}

/// An exec or an attach: the same channels, a different process behind.
#[derive(Debug, Clone)]
pub enum Job {
    /// A new process.
    Exec(Box<ExecTarget>),
    /// The container's own process, through its monitor.
    Attach(super::attach::AttachTarget),
}

/// The stdio a session carries.
#[derive(Debug, Clone, Copy)]
pub struct Opts {
    /// stdin from the client.
    pub stdin: bool,
    /// stdout to it.
    pub stdout: bool,
    /// stderr to it.
    pub stderr: bool,
    /// One terminal.
    pub tty: bool,
}

impl Job {
    fn opts(&self) -> Opts {
        match self {
            Job::Exec(t) => Opts {
                stdin: t.stdin,
                stdout: t.stdout,
                stderr: t.stderr,
                tty: t.tty,
            },
            Job::Attach(t) => Opts {
                stdin: t.stdin,
                stdout: t.stdout,
                stderr: t.stderr,
                tty: t.tty,
            },
        }
    }

    async fn run(self, io: ExecIo, gone: impl std::future::Future<Output = ()> + Send) -> Outcome {
        match self {
            Job::Exec(t) => run(*t, io, gone).await,
            Job::Attach(t) => super::attach::run(t, io, gone).await,
        }
    }
}

/// Exec or attach over a WebSocket channel protocol.
pub async fn serve_ws<S>(
    ws: tokio_tungstenite::WebSocketStream<S>,
    proto: super::ws::Protocol,
    job: Job,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let target = job.opts();
    const STDIN: u8 = 0;
    const STDOUT: u8 = 1;
    const STDERR: u8 = 2;
    const ERROR: u8 = 3;
    const RESIZE: u8 = 4;
    let mut inputs = vec![];
    if target.stdin {
        inputs.push(STDIN);
    }
    if target.tty {
        inputs.push(RESIZE);
    }
    let mut outputs = vec![];
    if target.stdout {
        outputs.push(STDOUT);
    }
    if target.stderr && !target.tty {
        outputs.push(STDERR);
    }
    let mut mux = super::ws::Mux::start(ws, proto, &inputs, &outputs);
    // An empty message on the lowest channel we write: the client knows
    // the session is up (as kubelet's server does).
    let first = outputs.first().copied().unwrap_or(ERROR);
    mux.send(first, Vec::new()).await;
    let io = ExecIo {
        stdin: mux
            .readers
            .remove(&STDIN)
            .map(|r| Box::new(r) as Box<dyn AsyncRead + Send + Unpin>),
        stdout: mux
            .writers
            .remove(&STDOUT)
            .map(|w| Box::new(w) as Box<dyn AsyncWrite + Send + Unpin>),
        stderr: mux
            .writers
            .remove(&STDERR)
            .map(|w| Box::new(w) as Box<dyn AsyncWrite + Send + Unpin>),
        resize: mux.readers.remove(&RESIZE).map(resize_events),
    };
    let outcome = job.run(io, mux.gone()).await;
    let last = final_status(&outcome, proto.version).map(|t| (ERROR, t.into_bytes()));
    mux.finish(last).await;
}

/// What the error channel/stream carries at the end: a JSON `Status` from
/// protocol version 4 on, before that the failure's text (nothing on
/// success).
fn final_status(outcome: &Outcome, version: u8) -> Option<String> {
    if version >= 4 {
        Some(status_json(outcome))
    } else {
        status_text(outcome)
    }
}

/// Exec or attach over SPDY: the client opens one stream per `streamType` (error,
/// stdin, stdout, stderr, resize) before any data flows. `version`: the
/// negotiated remotecommand protocol's (1 for `channel.k8s.io`).
pub async fn serve_spdy(mut session: super::spdy::Session, job: Job, version: u8) {
    let target = job.opts();
    let mut want = vec!["error"];
    if target.stdin {
        want.push("stdin");
    }
    if target.stdout {
        want.push("stdout");
    }
    if target.stderr && !target.tty {
        want.push("stderr");
    }
    // Resize streams came with version 3.
    if target.tty && version >= 3 {
        want.push("resize");
    }
    let mut streams = std::collections::HashMap::new();
    let accepted = tokio::time::timeout(Duration::from_secs(30), async {
        while streams.len() < want.len() {
            let Some(s) = session.accept().await else {
                return false;
            };
            let ty = s.header("streamtype").unwrap_or("").to_string();
            if want.contains(&ty.as_str()) {
                streams.insert(ty, s);
            } else {
                s.reset();
            }
        }
        true
    })
    .await;
    if accepted != Ok(true) {
        session.close().await;
        return;
    }
    let error = streams.remove("error");
    let io = ExecIo {
        stdin: streams
            .remove("stdin")
            .map(|r| Box::new(r) as Box<dyn AsyncRead + Send + Unpin>),
        stdout: streams
            .remove("stdout")
            .map(|w| Box::new(w) as Box<dyn AsyncWrite + Send + Unpin>),
        stderr: streams
            .remove("stderr")
            .map(|w| Box::new(w) as Box<dyn AsyncWrite + Send + Unpin>),
        resize: streams.remove("resize").map(resize_events),
    };
    // The client is gone when the session ends: no more streams, no data.
    let (gone_tx, gone_rx) = tokio::sync::oneshot::channel::<()>();
    let watcher = tokio::spawn(async move {
        while session.accept().await.is_some() {}
        let _ = gone_tx.send(());
        session
    });
    let outcome = job
        .run(io, async move {
            let _ = gone_rx.await;
        })
        .await;
    if let Some(mut e) = error {
        if let Some(m) = final_status(&outcome, version) {
            let _ = e.write_all(m.as_bytes()).await;
        }
        let _ = e.shutdown().await;
    }
    watcher.abort();
}
