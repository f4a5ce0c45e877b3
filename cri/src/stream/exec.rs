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
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::job::{ExecIo, Outcome};
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

/// A pipe end or pty master as tokio I/O, non-blocking (tokio's pipe types
/// register any pollable fd; a pty master's EIO once the terminal's last
/// user is gone ends the copy like EOF).
pub(super) fn reader(fd: OwnedFd) -> Result<tokio::net::unix::pipe::Receiver, String> {
    crate::util::set_nonblocking(fd.as_fd()).map_err(|e| e.to_string())?;
    tokio::net::unix::pipe::Receiver::from_owned_fd_unchecked(fd).map_err(|e| e.to_string())
}

pub(super) fn writer(fd: OwnedFd) -> Result<tokio::net::unix::pipe::Sender, String> {
    crate::util::set_nonblocking(fd.as_fd()).map_err(|e| e.to_string())?;
    tokio::net::unix::pipe::Sender::from_owned_fd_unchecked(fd).map_err(|e| e.to_string())
}

pub(super) fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?)
}

/// Copies `from` to `to` until EOF, then shuts `to` down.
pub(super) async fn pump(from: impl AsyncRead + Unpin, mut to: impl AsyncWrite + Unpin) {
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
