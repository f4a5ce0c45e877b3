//! Port-forward: each forwarded connection is a TCP socket to
//! `localhost:<port>` created *inside* the pod's network namespace by a
//! short-lived thread that enters it (a socket keeps the namespace it was
//! made in), so no process is spawned per connection.

use std::collections::HashMap;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

/// What a port-forward URL was issued for.
#[derive(Debug, Clone)]
pub struct Target {
    /// The pod's pinned network namespace.
    pub netns: PathBuf,
    /// Ports named in the request (WebSocket sessions forward these).
    pub ports: Vec<u16>,
}

/// Connects to `localhost:port` in the network namespace `netns`
/// (IPv4 first, then IPv6).
pub async fn connect(netns: &Path, port: u16) -> std::io::Result<tokio::net::TcpStream> {
    let netns = netns.to_path_buf();
    let std_stream = tokio::task::spawn_blocking(move || {
        // A thread of its own: setns changes only the calling thread, and
        // this one ends right after (never reused by the runtime).
        std::thread::spawn(move || -> std::io::Result<std::net::TcpStream> {
            let f = std::fs::File::open(&netns)?;
            nix::sched::setns(f.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)?;
            let v4 = std::net::SocketAddr::from(([127, 0, 0, 1], port));
            let v6 = std::net::SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port));
            std::net::TcpStream::connect_timeout(&v4, Duration::from_secs(10)).or_else(|e| {
                std::net::TcpStream::connect_timeout(&v6, Duration::from_secs(10)).map_err(|_| e)
            })
        })
        .join()
        .map_err(|_| std::io::Error::other("the connecting thread panicked"))?
    })
    .await
    .map_err(std::io::Error::other)??;
    std_stream.set_nonblocking(true)?;
    tokio::net::TcpStream::from_std(std_stream)
}

/// Copies both ways between `client` and `pod`: when the client is done
/// sending, the pod's side is shut for writing and its answer still flows;
/// when the pod closes, the forwarding ends. The first error of either
/// direction (a pod that resets the connection) is returned for the error
/// stream, as containerd reports it: the client's data only ends with a
/// FIN, which alone would read as a clean, empty answer.
async fn splice<C>(client: C, pod: tokio::net::TcpStream) -> std::io::Result<()>
where
    C: AsyncRead + AsyncWrite + Unpin,
{
    let (mut cr, mut cw) = tokio::io::split(client);
    let (mut pr, mut pw) = pod.into_split();
    let up = async {
        let copied = tokio::io::copy(&mut cr, &mut pw).await;
        let _ = pw.shutdown().await;
        copied.map(drop)
    };
    let down = async {
        let copied = tokio::io::copy(&mut pr, &mut cw).await;
        let _ = cw.shutdown().await;
        copied.map(drop)
    };
    tokio::pin!(up, down);
    tokio::select! {
        r = &mut down => r,
        r = &mut up => r.and(down.await),
    }
}

/// The error stream's message for a forwarding that failed.
fn forward_error(port: u16, e: &std::io::Error) -> String {
    format!("error forwarding port {port} to pod: {e}")
}

/// Port-forward over a WebSocket (kubelet's v4 channel protocol): for the
/// i-th port, channel 2i carries data both ways and 2i+1 errors; each
/// channel starts with the port number (2 bytes, little endian).
pub async fn serve_ws<S>(
    ws: tokio_tungstenite::WebSocketStream<S>,
    proto: super::ws::Protocol,
    target: Target,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let n = target.ports.len();
    let data: Vec<u8> = (0..n).map(|i| (2 * i) as u8).collect();
    let all: Vec<u8> = (0..2 * n).map(|i| i as u8).collect();
    let mut mux = super::ws::Mux::start(ws, proto, &data, &all);
    for (i, port) in target.ports.iter().enumerate() {
        for ch in [2 * i, 2 * i + 1] {
            mux.send(ch as u8, port.to_le_bytes().to_vec()).await;
        }
    }
    let mut tasks = Vec::new();
    for (i, port) in target.ports.iter().copied().enumerate() {
        let (Some(rx), Some(tx), Some(mut err)) = (
            mux.readers.remove(&((2 * i) as u8)),
            mux.writers.remove(&((2 * i) as u8)),
            mux.writers.remove(&((2 * i + 1) as u8)),
        ) else {
            continue;
        };
        let netns = target.netns.clone();
        tasks.push(tokio::spawn(async move {
            let conn = connect(&netns, port).await;
            tracing::debug!(port, ok = conn.is_ok(), "port-forward connection");
            let done = match conn {
                Ok(pod) => splice(tokio::io::join(rx, tx), pod).await,
                Err(e) => Err(e),
            };
            tracing::debug!(port, ok = done.is_ok(), "port-forward connection done");
            if let Err(e) = done {
                let _ = err.write_all(forward_error(port, &e).as_bytes()).await;
            }
            let _ = err.shutdown().await;
        }));
    }
    let gone = mux.gone();
    tokio::select! {
        _ = futures::future::join_all(tasks) => {}
        () = gone => {}
    }
    mux.finish(None).await;
}

/// Port-forward over SPDY (`portforward.k8s.io`): the client opens an
/// error stream and a data stream per connection, with the same
/// `requestID` and the `port`; many connections share one session.
pub async fn serve_spdy(mut session: super::spdy::Session, target: Target) {
    let mut half: HashMap<String, (Option<super::spdy::Stream>, Option<super::spdy::Stream>)> =
        HashMap::new();
    while let Some(stream) = session.accept().await {
        let (Some(ty), Some(id)) = (
            stream.header("streamtype").map(str::to_string),
            stream.header("requestid").map(str::to_string),
        ) else {
            stream.reset();
            continue;
        };
        let entry = half.entry(id.clone()).or_default();
        match ty.as_str() {
            "error" => entry.0 = Some(stream),
            "data" => entry.1 = Some(stream),
            _ => {
                stream.reset();
                continue;
            }
        }
        if let (Some(_), Some(_)) = (&entry.0, &entry.1) {
            let Some((Some(err), Some(data))) = half.remove(&id) else {
                continue;
            };
            tokio::spawn(forward_spdy(target.netns.clone(), data, err));
        }
    }
}

/// One forwarded connection of an SPDY session: its data stream spliced to
/// the pod's port; what failed is written on its error stream (before the
/// data stream is reset, when the connection never started).
async fn forward_spdy(netns: PathBuf, data: super::spdy::Stream, mut err: super::spdy::Stream) {
    let pod = match data.header("port").and_then(|p| p.parse::<u16>().ok()) {
        Some(p) => connect(&netns, p)
            .await
            .map(|conn| (conn, p))
            .map_err(|e| forward_error(p, &e)),
        None => Err("port header missing or invalid".to_string()),
    };
    match pod {
        Ok((pod, p)) => {
            if let Err(e) = splice(data, pod).await {
                let _ = err.write_all(forward_error(p, &e).as_bytes()).await;
            }
        }
        Err(msg) => {
            let _ = err.write_all(msg.as_bytes()).await;
            data.reset();
        }
    }
    let _ = err.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// A client end (duplex) spliced to a pod-side connection that `pod`
    /// then treats as it likes; what splice returned, what the client read.
    async fn spliced(pod: impl FnOnce(tokio::net::TcpStream)) -> (std::io::Result<()>, Vec<u8>) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let conn = tokio::net::TcpStream::connect(l.local_addr().unwrap())
            .await
            .unwrap();
        pod(l.accept().await.unwrap().0);
        let (ours, mut client) = tokio::io::duplex(1024);
        let done = splice(ours, conn).await;
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        (done, got)
    }

    #[tokio::test]
    async fn a_connection_the_pod_resets_is_an_error_not_an_empty_answer() {
        let (done, got) = spliced(|s| {
            s.set_zero_linger().unwrap();
            drop(s); // RST
        })
        .await;
        assert_eq!(
            done.unwrap_err().kind(),
            std::io::ErrorKind::ConnectionReset
        );
        assert!(got.is_empty());
        let e = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        assert!(forward_error(8080, &e).starts_with("error forwarding port 8080 to pod: "));

        let (done, got) = spliced(|s| {
            tokio::spawn(async move {
                let mut s = s;
                s.write_all(b"answer").await.unwrap();
            });
        })
        .await;
        assert!(done.is_ok(), "{done:?}");
        assert_eq!(got, b"answer");
    }
}
