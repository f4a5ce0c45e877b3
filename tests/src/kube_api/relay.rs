//! From the stand-in API server to berth's streaming server: the two ways
//! a real cluster carries kubectl's upgrade to the runtime.
//!
//! - [`upgrade`] + [`splice`]: kubelet's upgrade-aware proxy. The client's
//!   upgrade request goes to the streaming URL unchanged but for its path
//!   and `Host`; the runtime's answer (`101` or a refusal) comes back as it
//!   is, and then bytes flow both ways untouched.
//! - [`tunnel`]: the API server's SPDY-over-WebSocket tunnel for
//!   port-forward (`SPDY/3.1+portforward.k8s.io`, client-go's
//!   `tunneling_dialer.go`, apiserver's `streamtunnel.go`): the runtime is
//!   asked for an SPDY upgrade, the client gets a WebSocket, and each
//!   binary message carries raw SPDY bytes.

use std::io;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};
use tokio_tungstenite::tungstenite::Message;

use super::http::{read_head, Head};

/// The WebSocket subprotocol prefix of SPDY tunneled over WebSocket.
pub const TUNNEL_PREFIX: &str = "SPDY/3.1+";

/// `http://host:port/path` split in two (the streaming server of a test
/// daemon speaks plain HTTP).
pub fn split_url(url: &str) -> io::Result<(String, String)> {
    let rest = url.strip_prefix("http://").ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::Unsupported,
            format!("{url}: only http:// URLs are relayed"),
        )
    })?;
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    Ok((host.to_string(), format!("/{path}")))
}

/// Sends `head` (and `early`, bytes the client sent after it) to `url`
/// with only its path and `Host` changed; returns the runtime's answer head
/// as received, the connection, and what followed the answer head.
pub async fn upgrade(
    head: &Head,
    early: &[u8],
    url: &str,
) -> io::Result<(Head, TcpStream, Vec<u8>)> {
    let (host, path) = split_url(url)?;
    let mut berth = TcpStream::connect(&host).await?;
    berth.write_all(&head.redirected(&path, &host)).await?;
    berth.write_all(early).await?;
    let mut rest = Vec::new();
    let answer = read_head(&mut berth, &mut rest)
        .await?
        .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
    Ok((answer, berth, rest))
}

/// The answer head as it goes back to the client.
pub fn raw_head(head: &Head) -> Vec<u8> {
    let mut out = format!("{}\r\n", head.first);
    for (n, v) in &head.headers {
        out.push_str(&format!("{n}: {v}\r\n"));
    }
    out.push_str("\r\n");
    out.into_bytes()
}

/// Passes the runtime's answer on, then copies both ways until both sides
/// are done (a side that ends its sending is shut down for writing on the
/// other, as a proxy must for half-closes).
pub async fn splice(mut client: TcpStream, answer: &Head, mut berth: TcpStream, rest: &[u8]) {
    if client.write_all(&raw_head(answer)).await.is_err() || client.write_all(rest).await.is_err() {
        return;
    }
    let _ = tokio::io::copy_bidirectional(&mut client, &mut berth).await;
}

/// The SPDY upgrade request the API server sends in place of the client's
/// WebSocket one (its `createSPDYRequest`): `protocols` are the client's
/// subprotocols without the tunnel prefix.
fn spdy_request(path: &str, host: &str, protocols: &[String]) -> Vec<u8> {
    let mut out = format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n"
    );
    for p in protocols {
        out.push_str(&format!("X-Stream-Protocol-Version: {p}\r\n"));
    }
    out.push_str("Content-Length: 0\r\n\r\n");
    out.into_bytes()
}

/// Tunnels SPDY through the client's WebSocket: asks `url` for an SPDY
/// upgrade with the protocols the client offered under the tunnel prefix;
/// when the runtime agrees, accepts the WebSocket with the negotiated
/// protocol (prefixed) and moves bytes until either side is done. A refusal
/// goes back to the client unchanged (kubectl then falls back to SPDY).
/// `answered` gets the status the client got, as soon as it is sent.
pub async fn tunnel(
    mut client: TcpStream,
    head: &Head,
    early: Vec<u8>,
    url: &str,
    answered: impl FnOnce(u16),
) -> io::Result<()> {
    let protocols: Vec<String> = head
        .header_values("sec-websocket-protocol")
        .iter()
        .filter_map(|p| p.strip_prefix(TUNNEL_PREFIX).map(str::to_string))
        .collect();
    let key = head.header("sec-websocket-key").unwrap_or("").to_string();
    let (host, path) = split_url(url)?;
    let mut berth = TcpStream::connect(&host).await?;
    berth
        .write_all(&spdy_request(&path, &host, &protocols))
        .await?;
    let mut rest = Vec::new();
    let answer = read_head(&mut berth, &mut rest)
        .await?
        .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
    answered(answer.status());
    if answer.status() != 101 {
        splice(client, &answer, berth, &rest).await;
        return Ok(());
    }
    let negotiated = answer.header("x-stream-protocol-version").unwrap_or("");
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    client
        .write_all(
            format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\nSec-WebSocket-Protocol: {TUNNEL_PREFIX}{negotiated}\r\n\r\n"
            )
            .as_bytes(),
        )
        .await?;
    let ws =
        tokio_tungstenite::WebSocketStream::from_partially_read(client, early, Role::Server, None)
            .await;
    bridge(ws, berth, rest).await;
    Ok(())
}

/// WebSocket binary messages ⇄ raw bytes. `first`: bytes the runtime sent
/// right after its answer head.
async fn bridge(
    ws: tokio_tungstenite::WebSocketStream<TcpStream>,
    berth: TcpStream,
    first: Vec<u8>,
) {
    let (mut sink, mut source) = ws.split();
    let (mut from_berth, mut to_berth) = berth.into_split();
    let down = async move {
        if !first.is_empty() && sink.send(Message::Binary(first.into())).await.is_err() {
            return;
        }
        let mut buf = vec![0u8; 32 << 10];
        loop {
            match from_berth.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let msg = Message::Binary(buf[..n].to_vec().into());
                    if sink.send(msg).await.is_err() {
                        return;
                    }
                }
            }
        }
        let _ = sink
            .send(Message::Close(Some(CloseFrame {
                code: CloseCode::Normal,
                reason: "".into(),
            })))
            .await;
        let _ = sink.close().await;
    };
    let up = async move {
        while let Some(Ok(m)) = source.next().await {
            match m {
                Message::Binary(b) if to_berth.write_all(&b).await.is_err() => break,
                Message::Close(_) => break,
                _ => {}
            }
        }
        let _ = to_berth.shutdown().await;
    };
    tokio::pin!(down, up);
    tokio::select! {
        () = &mut down => {}
        () = &mut up => {
            // The client is gone: what the runtime still sends has nowhere
            // to go but is drained briefly, so its session ends cleanly.
            let _ = tokio::time::timeout(Duration::from_secs(5), down).await;
        }
    }
}
