//! Attach: the client's channels joined to the container's stdio through
//! its monitor, which owns the container's stdin, terminal and output (an
//! [`crate::task::Task::attach`]: plain pipes handed to the monitor on a
//! task connection; see [`crate::monitor::attach`]).

use std::sync::Arc;

use super::exec::{pipe, pump, reader, writer};
use super::job::{ExecIo, Outcome};
use crate::task::{ExecStdio, Task};

/// What an attach URL was issued for.
#[derive(Debug, Clone)]
pub struct AttachTarget {
    /// The container, through its monitor.
    pub task: Arc<dyn Task>,
    /// Its id (for messages).
    pub container_id: String,
    /// The client sends stdin (the container was created with stdin).
    pub stdin: bool,
    /// The client wants stdout.
    pub stdout: bool,
    /// The client wants stderr (not with a terminal).
    pub stderr: bool,
    /// The container has a terminal.
    pub tty: bool,
}

/// Relays until the container's output ends (it exited: success) or the
/// client leaves (`gone`: the container goes on).
pub async fn run(
    target: AttachTarget,
    mut io: ExecIo,
    gone: impl std::future::Future<Output = ()> + Send,
) -> Outcome {
    let mut stdio = ExecStdio::default();
    let mut to_stdin = None;
    let mut outputs = Vec::new();
    let io_err = |e: std::io::Error| e.to_string();
    if target.stdin {
        let (r, w) = pipe().map_err(io_err)?;
        stdio.stdin = Some(r);
        to_stdin = Some(w);
    }
    // Output always comes on at least one stream: its end is the
    // container's exit, which ends the session (output nobody asked for is
    // dropped).
    if target.stdout || !target.stderr {
        let (r, w) = pipe().map_err(io_err)?;
        stdio.stdout = Some(w);
        outputs.push((io.stdout.take().filter(|_| target.stdout), r));
    }
    if target.stderr {
        let (r, w) = pipe().map_err(io_err)?;
        stdio.stderr = Some(w);
        outputs.push((io.stderr.take(), r));
    }
    let (task, id) = (target.task.clone(), target.container_id.clone());
    let attached = tokio::task::spawn_blocking(move || {
        task.attach(stdio)
            .map_err(|e| format!("attach to container {id}: {}", crate::util::error_chain(&e)))
    })
    .await
    .map_err(|e| e.to_string())??;
    let attached: Arc<dyn crate::task::Attached> = Arc::from(attached);
    tracing::debug!(container = %target.container_id, "attach: attached");
    let mut helpers = Vec::new();
    if let (Some(w), Some(input)) = (to_stdin, io.stdin.take()) {
        // Its end (the pipe closed) is the end of the client's input.
        helpers.push(tokio::spawn(pump(input, writer(w)?)));
    }
    if let Some(mut sizes) = io.resize.take() {
        let a = attached.clone();
        helpers.push(tokio::spawn(async move {
            while let Some(s) = sizes.recv().await {
                let a = a.clone();
                let resized = tokio::task::spawn_blocking(move || a.resize(s)).await;
                if !matches!(resized, Ok(Ok(()))) {
                    return;
                }
            }
        }));
    }
    let mut relays = Vec::new();
    for (to, from) in outputs {
        let from = reader(from)?;
        relays.push(tokio::spawn(async move {
            match to {
                Some(to) => pump(from, to).await,
                None => pump(from, tokio::io::sink()).await,
            }
        }));
    }
    let relay = async {
        for r in relays.iter_mut() {
            let _ = r.await;
        }
    };
    tokio::select! {
        () = relay => tracing::debug!(container = %target.container_id, "attach: the container's output ended"),
        () = gone => tracing::debug!(container = %target.container_id, "attach: the client left"),
    }
    for h in helpers.into_iter().chain(relays) {
        h.abort();
    }
    // Detaches (the connection closes).
    drop(attached);
    Ok(berth_core::ExitStatus::Exited(0))
}
