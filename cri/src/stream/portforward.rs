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
/// when the pod closes, the forwarding ends.
async fn splice<C>(client: C, pod: tokio::net::TcpStream)
where
    C: AsyncRead + AsyncWrite + Unpin,
{
    let (mut cr, mut cw) = tokio::io::split(client);
    let (mut pr, mut pw) = pod.into_split();
    let up = async {
        let _ = tokio::io::copy(&mut cr, &mut pw).await;
        let _ = pw.shutdown().await;
    };
    let down = async {
        let _ = tokio::io::copy(&mut pr, &mut cw).await;
        let _ = cw.shutdown().await;
    };
    tokio::pin!(up, down);
    tokio::select! {
        () = &mut down => {}
        () = &mut up => down.await,
    }
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
            match conn {
                Ok(pod) => {
                    splice(tokio::io::join(rx, tx), pod).await;
                    tracing::debug!(port, "port-forward connection done");
                }
                Err(e) => {
                    let _ = err
                        .write_all(format!("error forwarding port {port} to pod: {e}").as_bytes())
                        .await;
                }
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
            let Some((Some(mut err), Some(data))) = half.remove(&id) else {
                continue;
            };
            let port = data.header("port").and_then(|p| p.parse::<u16>().ok());
            let netns = target.netns.clone();
            tokio::spawn(async move {
                let result = match port {
                    Some(p) => connect(&netns, p)
                        .await
                        .map_err(|e| format!("error forwarding port {p} to pod: {e}")),
                    None => Err("port header missing or invalid".to_string()),
                };
                match result {
                    Ok(pod) => splice(data, pod).await,
                    Err(msg) => {
                        let _ = err.write_all(msg.as_bytes()).await;
                        data.reset();
                    }
                }
                let _ = err.shutdown().await;
            });
        }
    }
}
