//! Kubernetes' WebSocket channel protocols (`channel.k8s.io` and its
//! versions): every message starts with its channel number — a byte, or
//! with `base64.` protocols an ASCII digit followed by base64 text. Exec
//! channels: 0 stdin, 1 stdout, 2 stderr, 3 error (the exit status), 4
//! resize; v5 adds the close signal (a message `[255, channel]`: the client
//! is done writing on that channel). Port-forward: channels 2i (data) and
//! 2i+1 (error) for the i-th port, each opened by the server with the port
//! number (2 bytes, little endian).

use std::collections::HashMap;

use base64::Engine;
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;

/// The close signal's channel (v5).
const CLOSE_SIGNAL: u8 = 255;

/// The largest message (and frame) a client may send. client-go writes
/// stdin in messages of its 32 KiB copy buffer (base64 forms: 4/3 of
/// that), resizes are a few bytes; tungstenite's default of 64 MiB let
/// three sessions hold 335 MiB of the daemon's memory.
pub const MAX_MESSAGE: usize = 1 << 20;

/// The session's WebSocket settings: [`MAX_MESSAGE`], and 32 KiB I/O
/// buffers instead of 128 KiB each (allocated per connection).
pub fn config() -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(MAX_MESSAGE))
        .max_frame_size(Some(MAX_MESSAGE))
        .read_buffer_size(32 << 10)
        .write_buffer_size(32 << 10)
}

/// A negotiated protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Protocol {
    /// The remotecommand version: 1 (bare), 2, 3, 4 or 5.
    pub version: u8,
    /// Text messages, base64 payloads.
    pub base64: bool,
}

impl Protocol {
    /// Parses `v5.channel.k8s.io`, `v4.base64.channel.k8s.io`,
    /// `channel.k8s.io`, ...
    pub fn parse(name: &str) -> Option<Protocol> {
        let (version, rest) = match name.split_once('.') {
            Some((v, rest)) if v.len() == 2 && v.starts_with('v') => (
                v[1..].parse::<u8>().ok().filter(|v| (2..=5).contains(v))?,
                rest,
            ),
            _ => (1, name),
        };
        match rest {
            "channel.k8s.io" => Some(Protocol {
                version,
                base64: false,
            }),
            "base64.channel.k8s.io" => Some(Protocol {
                version,
                base64: true,
            }),
            _ => None,
        }
    }

    fn encode(self, channel: u8, data: &[u8]) -> Message {
        if self.base64 {
            let mut s = String::with_capacity(1 + data.len() * 4 / 3 + 4);
            s.push(char::from(b'0' + channel));
            base64::engine::general_purpose::STANDARD.encode_string(data, &mut s);
            Message::Text(s.into())
        } else {
            let mut v = Vec::with_capacity(data.len() + 1);
            v.push(channel);
            v.extend_from_slice(data);
            Message::Binary(v.into())
        }
    }

    fn decode(self, msg: &Message) -> Option<(u8, Vec<u8>)> {
        let raw: &[u8] = match msg {
            Message::Binary(b) => b,
            Message::Text(t) => t.as_bytes(),
            _ => return None,
        };
        let (&first, rest) = raw.split_first()?;
        if self.base64 {
            let ch = first.checked_sub(b'0')?;
            let data = base64::engine::general_purpose::STANDARD
                .decode(rest)
                .ok()?;
            Some((ch, data))
        } else {
            Some((first, rest.to_vec()))
        }
    }
}

/// The close frame that ends a session: status 1000. client-go takes only
/// a normal closure for a clean end (remotecommand's websocket.go); a close
/// without a status code reads as 1005 there, and kubectl exits 1 after
/// the command succeeded.
fn normal_closure() -> Message {
    Message::Close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "".into(),
    }))
}

/// Bytes a channel buffers between the connection and its user.
const CHANNEL_BUFFER: usize = 64 << 10;

enum Out {
    Data(u8, Vec<u8>),
    Close,
}

/// A WebSocket session split into channels: readers for what the client
/// sends on each input channel, writers for each output channel.
pub struct Mux {
    /// Input channels (client → us); EOF when the client closes the
    /// channel (v5) or the connection.
    pub readers: HashMap<u8, DuplexStream>,
    /// Output channels (us → client).
    pub writers: HashMap<u8, DuplexStream>,
    tx: mpsc::Sender<Out>,
    forwarders: Vec<tokio::task::JoinHandle<()>>,
    sink: tokio::task::JoinHandle<()>,
    gone: watch::Receiver<bool>,
    proto: Protocol,
}

impl Mux {
    /// Starts the tasks that move data between the socket and the
    /// channels.
    pub fn start<S>(
        ws: tokio_tungstenite::WebSocketStream<S>,
        proto: Protocol,
        inputs: &[u8],
        outputs: &[u8],
    ) -> Mux
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (mut sink, mut source) = ws.split();
        let (tx, mut rx) = mpsc::channel::<Out>(16);
        let (gone_tx, gone) = watch::channel(false);
        let mut readers = HashMap::new();
        let mut feeds: HashMap<u8, DuplexStream> = HashMap::new();
        for &ch in inputs {
            let (ours, theirs) = tokio::io::duplex(CHANNEL_BUFFER);
            feeds.insert(ch, ours);
            readers.insert(ch, theirs);
        }
        // Client → channels. Ends when the client closes the connection.
        // (tungstenite answers pings itself.)
        tokio::spawn(async move {
            while let Some(Ok(msg)) = source.next().await {
                match msg {
                    Message::Close(_) => break,
                    Message::Binary(_) | Message::Text(_) => {
                        let Some((ch, data)) = proto.decode(&msg) else {
                            continue;
                        };
                        if ch == CLOSE_SIGNAL && proto.version >= 5 {
                            if let Some(&closed) = data.first() {
                                feeds.remove(&closed);
                            }
                            continue;
                        }
                        if let Some(feed) = feeds.get_mut(&ch) {
                            if feed.write_all(&data).await.is_err() {
                                feeds.remove(&ch);
                            }
                        }
                    }
                    _ => {}
                }
            }
            drop(feeds);
            let _ = gone_tx.send(true);
        });
        // One sender to the socket, in order.
        let sink_task = tokio::spawn(async move {
            while let Some(out) = rx.recv().await {
                let r = match out {
                    Out::Data(ch, data) => sink.send(proto.encode(ch, &data)).await,
                    Out::Close => {
                        let _ = sink.send(normal_closure()).await;
                        break;
                    }
                };
                if r.is_err() {
                    break;
                }
            }
            let _ = sink.close().await;
        });
        let mut writers = HashMap::new();
        let mut forwarders = Vec::new();
        for &ch in outputs {
            let (theirs, mut ours) = tokio::io::duplex(CHANNEL_BUFFER);
            writers.insert(ch, theirs);
            let tx = tx.clone();
            forwarders.push(tokio::spawn(async move {
                let mut buf = vec![0u8; 32 << 10];
                loop {
                    match ours.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if tx.send(Out::Data(ch, buf[..n].to_vec())).await.is_err() {
                                break;
                            }
                        }
                    }
                }
            }));
        }
        Mux {
            readers,
            writers,
            tx,
            forwarders,
            sink: sink_task,
            gone,
            proto,
        }
    }

    /// The negotiated protocol.
    pub fn protocol(&self) -> Protocol {
        self.proto
    }

    /// Sends `data` on `channel` directly (also an empty message: the
    /// "connection is ready" signal).
    pub async fn send(&self, channel: u8, data: Vec<u8>) {
        let _ = self.tx.send(Out::Data(channel, data)).await;
    }

    /// Resolves when the client has gone (connection closed).
    pub fn gone(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut g = self.gone.clone();
        async move {
            while !*g.borrow() {
                if g.changed().await.is_err() {
                    return;
                }
            }
        }
    }

    /// Flushes every output channel (their writers must be dropped or
    /// shut down first), sends `last` on its channel, then closes the
    /// connection.
    pub async fn finish(mut self, last: Option<(u8, Vec<u8>)>) {
        self.writers.clear();
        for f in self.forwarders.drain(..) {
            let _ = f.await;
        }
        if let Some((ch, data)) = last {
            let _ = self.tx.send(Out::Data(ch, data)).await;
        }
        let _ = self.tx.send(Out::Close).await;
        drop(self.tx);
        let _ = self.sink.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_tungstenite::tungstenite::protocol::Role;

    #[test]
    fn protocol_names() {
        assert_eq!(
            Protocol::parse("v5.channel.k8s.io"),
            Some(Protocol {
                version: 5,
                base64: false
            })
        );
        assert_eq!(
            Protocol::parse("v4.base64.channel.k8s.io"),
            Some(Protocol {
                version: 4,
                base64: true
            })
        );
        assert_eq!(
            Protocol::parse("channel.k8s.io"),
            Some(Protocol {
                version: 1,
                base64: false
            })
        );
        assert_eq!(Protocol::parse("v9.channel.k8s.io"), None);
        assert_eq!(Protocol::parse("portforward.k8s.io"), None);
    }

    #[tokio::test]
    async fn a_finished_session_closes_with_status_1000() {
        let (server, client) = tokio::io::duplex(1 << 16);
        let server =
            tokio_tungstenite::WebSocketStream::from_raw_socket(server, Role::Server, None);
        let mut client =
            tokio_tungstenite::WebSocketStream::from_raw_socket(client, Role::Client, None).await;
        let proto = Protocol {
            version: 5,
            base64: false,
        };
        let mux = Mux::start(server.await, proto, &[0], &[1]);
        mux.finish(Some((3, b"{}".to_vec()))).await;
        assert_eq!(
            client.next().await.unwrap().unwrap(),
            Message::Binary(b"\x03{}".to_vec().into())
        );
        match client.next().await.unwrap().unwrap() {
            Message::Close(Some(f)) => assert_eq!(f.code, CloseCode::Normal),
            other => panic!("not a normal closure: {other:?}"),
        }
    }

    #[tokio::test]
    async fn an_oversized_message_ends_the_session() {
        let (server, client) = tokio::io::duplex(1 << 16);
        let server = tokio_tungstenite::WebSocketStream::from_raw_socket(
            server,
            Role::Server,
            Some(config()),
        );
        let mut client =
            tokio_tungstenite::WebSocketStream::from_raw_socket(client, Role::Client, None).await;
        let proto = Protocol {
            version: 5,
            base64: false,
        };
        let mut mux = Mux::start(server.await, proto, &[0], &[1]);
        let mut stdin = mux.readers.remove(&0).unwrap();
        let sender = tokio::spawn(async move {
            let mut big = vec![0u8; MAX_MESSAGE + 1];
            big[0] = 0;
            let _ = client.send(Message::Binary(big.into())).await;
            client
        });
        // Nothing of it reaches stdin: the reader ends.
        let mut got = Vec::new();
        let n = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            stdin.read_to_end(&mut got),
        )
        .await
        .expect("the session ends")
        .unwrap();
        assert_eq!(n, 0);
        tokio::time::timeout(std::time::Duration::from_secs(10), mux.gone())
            .await
            .expect("gone");
        drop(sender);
    }

    #[test]
    fn framing_round_trips() {
        for base64 in [false, true] {
            let p = Protocol { version: 5, base64 };
            let m = p.encode(2, b"hello\x00\xff");
            assert_eq!(p.decode(&m), Some((2, b"hello\x00\xff".to_vec())));
        }
        let p = Protocol {
            version: 4,
            base64: true,
        };
        assert_eq!(p.encode(1, b"hi"), Message::Text("1aGk=".into()));
    }
}
