//! The CRI socket's connections, as the gRPC server gets them.
//!
//! tonic's own accept loop retries a failed `accept` at once, so with the
//! daemon out of file descriptors (EMFILE) it spun a core at 100%; and an
//! HTTP/2 server waits for the client's preface forever, so connections
//! that send nothing held their descriptors for good. Here `accept`
//! backs off (berth_cri::conn::AcceptBackoff), and a connection reaches
//! the server only once the client has sent something — every HTTP/2
//! client sends its preface at once — or is closed after
//! [`PREFACE_TIMEOUT`].

use std::io;
use std::time::Duration;

use berth_cri::conn::AcceptBackoff;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;

/// How long a new connection may stay silent: hyper's and Go's usual
/// header timeout.
pub const PREFACE_TIMEOUT: Duration = Duration::from_secs(30);

/// The connections accepted on `listener`, each once its client has
/// spoken. Dropping the stream stops accepting (and closes `listener`).
pub fn incoming(
    listener: UnixListener,
    preface_timeout: Duration,
) -> tokio_stream::wrappers::ReceiverStream<io::Result<UnixStream>> {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(accept_loop(listener, tx, preface_timeout));
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

async fn accept_loop(
    listener: UnixListener,
    tx: mpsc::Sender<io::Result<UnixStream>>,
    preface_timeout: Duration,
) {
    let mut backoff = AcceptBackoff::default();
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            () = tx.closed() => return,
        };
        let conn = match accepted {
            Ok((conn, _)) => conn,
            Err(e) => {
                backoff.failed("cri", &e).await;
                continue;
            }
        };
        backoff.succeeded();
        let tx = tx.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(preface_timeout, first_bytes(&conn)).await {
                Ok(Ok(())) => {
                    let _ = tx.send(Ok(conn)).await;
                }
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "a CRI connection failed before its first bytes")
                }
                Err(_) => tracing::debug!(
                    timeout_s = preface_timeout.as_secs(),
                    "closing a CRI connection that sent nothing"
                ),
            }
        });
    }
}

/// Resolves once `conn` has bytes to read (or is closed), without reading
/// them. (`readable` alone may wake without data: tokio documents false
/// positives, and a fresh socket gives one.)
async fn first_bytes(conn: &UnixStream) -> io::Result<()> {
    use nix::sys::socket::{recv, MsgFlags};
    use std::os::fd::AsRawFd;
    loop {
        conn.readable().await?;
        let mut byte = [0u8; 1];
        let peeked = conn.try_io(tokio::io::Interest::READABLE, || {
            recv(
                conn.as_raw_fd(),
                &mut byte,
                MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT,
            )
            .map_err(io::Error::from)
        });
        match peeked {
            // Data, or EOF (the server will see it and close).
            Ok(_) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_stream::StreamExt;

    #[tokio::test]
    async fn silent_connections_are_closed_and_talkers_served() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let mut conns = incoming(listener, Duration::from_millis(300));
        let mut silent = UnixStream::connect(&path).await.unwrap();
        let mut talker = UnixStream::connect(&path).await.unwrap();
        talker.write_all(b"PRI * HTTP/2.0").await.unwrap();
        let mut served = tokio::time::timeout(Duration::from_secs(5), conns.next())
            .await
            .expect("the talker is handed over")
            .unwrap()
            .unwrap();
        let mut buf = [0u8; 14];
        served.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"PRI * HTTP/2.0");
        // The silent one is closed (EOF), never handed over.
        let n = tokio::time::timeout(Duration::from_secs(5), silent.read(&mut buf))
            .await
            .expect("closed after the timeout")
            .unwrap();
        assert_eq!(n, 0);
        assert!(
            tokio::time::timeout(Duration::from_millis(200), conns.next())
                .await
                .is_err()
        );
    }
}
