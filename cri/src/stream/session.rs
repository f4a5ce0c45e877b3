//! One streaming session, whatever its transport (a WebSocket channel
//! protocol or SPDY streams): the client's channels wired to a job (an
//! exec'd process or the container's own, attached), resizes read, and the
//! end reported on the error channel the way Kubernetes' remotecommand
//! does. Order: the server (`mod.rs`) → session → jobs (`exec`, `attach`)
//! → their common types (`job`); transports (`ws`, `spdy`) below.

use std::time::Duration;

use berth_core::process::ConsoleSize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use super::job::{ExecIo, Outcome};
use super::{attach, exec, spdy, ws};

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
    Exec(Box<exec::ExecTarget>),
    /// The container's own process, through its monitor.
    Attach(attach::AttachTarget),
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
            Job::Exec(t) => exec::run(*t, io, gone).await,
            Job::Attach(t) => attach::run(t, io, gone).await,
        }
    }
}

/// Exec or attach over a WebSocket channel protocol.
pub async fn serve_ws<S>(ws: tokio_tungstenite::WebSocketStream<S>, proto: ws::Protocol, job: Job)
where
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
    let mut mux = ws::Mux::start(ws, proto, &inputs, &outputs);
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
pub async fn serve_spdy(mut session: spdy::Session, job: Job, version: u8) {
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
