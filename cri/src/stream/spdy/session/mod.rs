//! The SPDY/3.1 session: a reader task decoding frames off the connection,
//! a writer task encoding queued frames onto it, and the shared state the
//! application's [`Session`] and [`Stream`] handles work on.
//!
//! All frames leave through one FIFO queue, so the wire order is the order
//! frames were queued in (SYN_REPLY before the stream's data, data before
//! its FIN, ...) and the header compression context sees blocks in wire
//! order. Data in the queue is bounded (`OUTBOX_BUDGET`): writers wait for
//! the socket. When every handle (the `Session` and all stream halves) is
//! gone, the session sends GOAWAY, flushes, closes the connection and both
//! tasks end.

use std::collections::{HashMap, VecDeque};
use std::future::poll_fn;
use std::io;
use std::ops::{Deref, DerefMut};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::{oneshot, watch, Notify};

use super::frame::{self, goaway, rst, Decoder, Encoder, Frame, FrameError, Setting};
use super::header::{self, Headers};
use super::{Config, PeerFlowControl, SpdyError};

/// The protocol's initial windows (stream and session).
const DEFAULT_WINDOW: i64 = 64 * 1024;
/// Largest window SPDY/3.1 allows.
const MAX_WINDOW: i64 = 0x7fff_ffff;
/// Largest DATA frame we send.
const WRITE_CHUNK: usize = 32 * 1024;
/// Bytes of DATA queued for the writer beyond which writers wait.
const OUTBOX_BUDGET: usize = 256 * 1024;
/// Bytes the writer encodes per socket write.
const WRITE_BATCH: usize = 64 * 1024;
/// Largest stream id.
const MAX_STREAM_ID: u32 = 0x7fff_ffff;
/// Control frames queued for the writer beyond which the reader stops
/// reading.
const MAX_QUEUED_FRAMES: usize = 4096;

mod inbound;
mod state;
mod stream;

use inbound::*;
use state::*;
#[allow(unused_imports)]
use stream::*;
pub use stream::{Stream, StreamReader, StreamWriter};
/// One SPDY/3.1 connection. Dropping it (and every stream) closes the
/// connection; streams stay usable while the `Session` is gone, but new
/// streams from the peer are then refused.
pub struct Session {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let st = self.shared.lock();
        f.debug_struct("Session")
            .field("server", &st.server)
            .field("streams", &st.streams.len())
            .field("dead", &st.dead)
            .finish()
    }
}

impl Session {
    /// Server side over an already-upgraded connection (the caller has sent
    /// the HTTP 101 with `Upgrade: SPDY/3.1`). Spawns the session's tasks:
    /// must be called within a tokio runtime.
    pub fn server<IO>(io: IO) -> Session
    where
        IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        Self::with_config(io, true, Config::default())
    }

    /// Client side (for tests and for any berth-side client).
    pub fn client<IO>(io: IO) -> Session
    where
        IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        Self::with_config(io, false, Config::default())
    }

    /// Either side, with explicit parameters.
    pub fn with_config<IO>(io: IO, server: bool, cfg: Config) -> Session
    where
        IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let mut cfg = cfg;
        cfg.initial_window = cfg.initial_window.clamp(1, MAX_WINDOW as u32);
        cfg.session_window = cfg
            .session_window
            .clamp(DEFAULT_WINDOW as u32, MAX_WINDOW as u32);
        let mut st = State {
            server,
            streams: HashMap::new(),
            next_local_id: if server { 2 } else { 1 },
            last_peer_id: 0,
            peer_fc: false,
            peer_initial_window: DEFAULT_WINDOW,
            session_send_window: DEFAULT_WINDOW,
            session_recv_window: DEFAULT_WINDOW,
            session_recv_unacked: 0,
            outbox: VecDeque::new(),
            outbox_data: 0,
            outbox_control: 0,
            shutdown_queued: false,
            accept_queue: VecDeque::new(),
            accept_waker: None,
            acceptor_alive: true,
            pings: HashMap::new(),
            next_ping_id: if server { 2 } else { 1 },
            goaway_received: false,
            dead: None,
            writer_done: false,
            handles: 1,
            reader_blocked: false,
            wake_writer: false,
            wake_reader: false,
            signal_shutdown: false,
            cfg,
        };
        // Our windows first thing, so a peer that does flow control knows
        // them before it opens or answers any stream.
        st.push(Frame::Settings {
            flags: 0,
            entries: vec![Setting {
                flags: 0,
                id: frame::SETTINGS_INITIAL_WINDOW_SIZE,
                value: st.cfg.initial_window,
            }],
        });
        let extra = i64::from(st.cfg.session_window) - DEFAULT_WINDOW;
        if extra > 0 {
            st.session_recv_window += extra;
            st.push(Frame::WindowUpdate {
                stream_id: 0,
                delta: extra as u32,
            });
        }
        st.wake_writer = false;
        let encoder = Encoder::new();
        let shared = Arc::new(Shared {
            state: Mutex::new(st),
            writer_wake: Notify::new(),
            reader_wake: Notify::new(),
            shutdown: watch::Sender::new(false),
            done: watch::Sender::new(false),
        });
        match encoder {
            Ok(encoder) => {
                let (r, w) = tokio::io::split(io);
                tokio::spawn(reader_task(shared.clone(), r));
                tokio::spawn(writer_task(shared.clone(), w, encoder));
            }
            Err(e) => {
                let mut st = shared.lock();
                st.fail(SpdyError::Protocol(e.to_string()), None, true);
                st.writer_done = true;
                drop(st);
                shared.done.send_replace(true);
            }
        }
        Session { shared }
    }

    /// The next stream the peer opened (SYN_STREAM), already answered with
    /// SYN_REPLY; `None` once the peer sent GOAWAY or the connection is gone.
    pub async fn accept(&mut self) -> Option<Stream> {
        poll_fn(|cx| {
            let mut guard = self.shared.lock();
            let st: &mut State = &mut guard;
            if let Some((id, headers)) = st.accept_queue.pop_front() {
                if let Some(s) = st.streams.get_mut(&id) {
                    s.handles += 1;
                }
                st.handles += 2;
                return Poll::Ready(Some(Stream::new(self.shared.clone(), id, headers)));
            }
            if st.dead.is_some() || st.goaway_received {
                return Poll::Ready(None);
            }
            st.accept_waker = Some(cx.waker().clone());
            Poll::Pending
        })
        .await
    }

    /// Opens a stream with these headers (names are sent lowercase) and
    /// waits for the peer's SYN_REPLY.
    pub async fn open(&self, headers: &[(&str, &str)]) -> Result<Stream, SpdyError> {
        let headers: Headers = headers
            .iter()
            .map(|(n, v)| (n.to_ascii_lowercase(), (*v).to_string()))
            .collect();
        header::encode_block(&headers).map_err(|e| SpdyError::InvalidHeader(e.to_string()))?;
        let stream = {
            let mut st = self.shared.lock();
            if let Some(e) = &st.dead {
                return Err(e.clone());
            }
            if st.goaway_received {
                return Err(SpdyError::GoAway);
            }
            let id = st.next_local_id;
            if id > MAX_STREAM_ID {
                return Err(SpdyError::StreamIdsExhausted);
            }
            st.next_local_id = id + 2;
            let (recv, send) = (i64::from(st.cfg.initial_window), st.peer_initial_window);
            st.streams
                .insert(id, StreamState::new(true, false, 2, recv, send));
            st.handles += 2;
            st.push(Frame::SynStream {
                stream_id: id,
                associated_to: 0,
                priority: 0,
                slot: 0,
                flags: 0,
                headers: headers.clone(),
            });
            Stream::new(self.shared.clone(), id, Arc::new(headers))
        };
        poll_fn(|cx| {
            let mut guard = self.shared.lock();
            let st: &mut State = &mut guard;
            let dead = st.dead.clone();
            let Some(s) = st.streams.get_mut(&stream.id()) else {
                return Poll::Ready(Err(dead.unwrap_or(SpdyError::Closed)));
            };
            if let Some(r) = s.reset {
                return Poll::Ready(Err(r.error()));
            }
            if s.replied {
                return Poll::Ready(Ok(()));
            }
            if let Some(e) = dead {
                return Poll::Ready(Err(e));
            }
            s.reply_waker = Some(cx.waker().clone());
            Poll::Pending
        })
        .await?;
        Ok(stream)
    }

    /// Sends a PING and waits for its echo: the round trip time.
    pub async fn ping(&self) -> Result<Duration, SpdyError> {
        let (tx, rx) = oneshot::channel();
        {
            let mut st = self.shared.lock();
            if let Some(e) = &st.dead {
                return Err(e.clone());
            }
            let id = st.next_ping_id;
            st.next_ping_id = if id >= MAX_STREAM_ID - 2 {
                id % 2 + 2
            } else {
                id + 2
            };
            st.pings.insert(id, tx);
            st.push(Frame::Ping { id });
        }
        let start = Instant::now();
        match rx.await {
            Ok(()) => Ok(start.elapsed()),
            Err(_) => Err(self.shared.lock().dead.clone().unwrap_or(SpdyError::Closed)),
        }
    }

    /// Ends the session: GOAWAY, what is queued is written (for at most
    /// [`Config::close_timeout`]), the connection is closed. Streams fail
    /// from then on (a stream whose FIN arrived still reads to its end).
    pub async fn close(&self) {
        self.shared
            .lock()
            .fail(SpdyError::Closed, Some(goaway::OK), false);
        let mut done = self.shared.done.subscribe();
        let _ = done.wait_for(|d| *d).await;
    }

    /// Whether the session is over (closed, failed, connection gone).
    pub fn is_closed(&self) -> bool {
        self.shared.lock().dead.is_some()
    }

    /// Why the session is over, if it is.
    pub fn error(&self) -> Option<SpdyError> {
        self.shared.lock().dead.clone()
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let mut guard = self.shared.lock();
        let st: &mut State = &mut guard;
        st.acceptor_alive = false;
        // Streams nobody will accept.
        while let Some((id, _)) = st.accept_queue.pop_front() {
            if let Some(s) = st.streams.get_mut(&id) {
                s.handles = s.handles.saturating_sub(1);
            }
            st.reset_stream(id, rst::REFUSED_STREAM);
            st.maybe_remove(id);
        }
        st.release();
    }
}
/// Test access to a session's internals.
#[cfg(test)]
pub(super) struct Probe(Arc<Shared>);

#[cfg(test)]
impl Probe {
    pub(super) fn peer_fc(&self) -> bool {
        self.0.lock().peer_fc
    }

    pub(super) fn recv_len(&self, id: u32) -> Option<usize> {
        self.0.lock().streams.get(&id).map(|s| s.recv_len)
    }

    pub(super) async fn wait_done(&self) {
        let mut done = self.0.done.subscribe();
        let _ = done.wait_for(|d| *d).await;
    }

    pub(super) fn refs(&self) -> usize {
        Arc::strong_count(&self.0)
    }
}

#[cfg(test)]
impl Session {
    pub(super) fn probe(&self) -> Probe {
        Probe(self.shared.clone())
    }
}
