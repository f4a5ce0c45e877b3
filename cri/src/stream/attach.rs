//! Attach: a relay between the client's channels and the container's
//! monitor, which owns the container's stdin, terminal and output (see
//! [`crate::monitor::attach`] for the monitor's socket and its frames).

use std::path::PathBuf;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use super::job::{ExecIo, Outcome};
use crate::monitor::attach as proto;

/// What an attach URL was issued for.
#[derive(Debug, Clone)]
pub struct AttachTarget {
    /// The container's directory (where the monitor's socket is).
    pub dir: PathBuf,
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
    let path = berth_core::ipc::socket_path(&target.dir.join(proto::SOCKET))
        .map_err(|e| format!("the container's directory: {e}"))?;
    let sock = tokio::net::UnixStream::connect(path.as_path())
        .await
        .map_err(|e| format!("the container's monitor does not answer ({e}): has it exited?"))?;
    tracing::debug!(dir = %target.dir.display(), "attach: connected to the monitor");
    let (mut rd, mut wr) = sock.into_split();
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(16);
    let writer = tokio::spawn(async move {
        while let Some(f) = rx.recv().await {
            if wr.write_all(&f).await.is_err() {
                break;
            }
        }
    });
    let mut helpers = Vec::new();
    if let Some(mut input) = io.stdin.take() {
        let tx = tx.clone();
        helpers.push(tokio::spawn(async move {
            let mut buf = vec![0u8; 32 << 10];
            loop {
                match input.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if tx
                            .send(proto::encode_frame(proto::IN_STDIN, &buf[..n]))
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                }
            }
            let _ = tx
                .send(proto::encode_frame(proto::IN_CLOSE_STDIN, &[]))
                .await;
        }));
    }
    if let Some(mut sizes) = io.resize.take() {
        let tx = tx.clone();
        helpers.push(tokio::spawn(async move {
            while let Some(s) = sizes.recv().await {
                let p = proto::resize_payload(s);
                if tx
                    .send(proto::encode_frame(proto::IN_RESIZE, &p))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }));
    }
    // Our write half stays open until we are done: the monitor takes a
    // half-close for "stdin is finished".
    let _keep_writing = tx;
    let (mut out, mut err) = (io.stdout.take(), io.stderr.take());
    let relay = async {
        let mut hdr = [0u8; proto::HEADER_LEN];
        let mut buf = Vec::new();
        loop {
            if rd.read_exact(&mut hdr).await.is_err() {
                break;
            }
            buf.resize(proto::frame_len(&hdr), 0);
            if rd.read_exact(&mut buf).await.is_err() {
                break;
            }
            let to = match hdr[0] {
                proto::OUT_STDERR => err.as_mut(),
                _ => out.as_mut(),
            };
            if let Some(w) = to {
                if w.write_all(&buf).await.is_err() {
                    break;
                }
            }
        }
        if let Some(w) = out.as_mut() {
            let _ = w.shutdown().await;
        }
        if let Some(w) = err.as_mut() {
            let _ = w.shutdown().await;
        }
    };
    tokio::select! {
        () = relay => tracing::debug!(dir = %target.dir.display(), "attach: the container's output ended"),
        () = gone => tracing::debug!(dir = %target.dir.display(), "attach: the client left"),
    }
    for h in helpers {
        h.abort();
    }
    writer.abort();
    Ok(berth_core::ExitStatus::Exited(0))
}
