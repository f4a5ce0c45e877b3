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

enum Out {
    Frame(Frame),
    /// Flush, shut the connection down, end the writer.
    Shutdown,
}

#[derive(Debug, Clone, Copy)]
enum Reset {
    ByPeer(u32),
    ByUs(u32),
}

impl Reset {
    fn error(self) -> SpdyError {
        match self {
            Reset::ByPeer(s) => SpdyError::Reset(s),
            Reset::ByUs(s) => SpdyError::LocalReset(s),
        }
    }
}

struct StreamState {
    /// Opened by us (SYN_STREAM sent).
    local: bool,
    /// SYN_REPLY received (ours) / sent (theirs).
    replied: bool,
    /// Live handles: stream halves, or 1 while waiting in the accept queue.
    handles: u8,
    reset: Option<Reset>,
    reply_waker: Option<Waker>,

    recv_buf: VecDeque<Bytes>,
    recv_len: usize,
    recv_fin: bool,
    /// What the peer may still send before our next WINDOW_UPDATE.
    recv_window: i64,
    /// Consumed since the last WINDOW_UPDATE.
    recv_unacked: i64,
    /// The read half is gone: incoming data is discarded.
    reader_gone: bool,
    read_waker: Option<Waker>,

    /// What we may still send (the peer's window for this stream).
    send_window: i64,
    /// FIN queued.
    local_fin: bool,
    /// Our DATA frames (FIN included) queued but not yet written.
    unflushed: usize,
    write_waker: Option<Waker>,
}

impl StreamState {
    fn new(local: bool, replied: bool, handles: u8, recv_window: i64, send_window: i64) -> Self {
        StreamState {
            local,
            replied,
            handles,
            reset: None,
            reply_waker: None,
            recv_buf: VecDeque::new(),
            recv_len: 0,
            recv_fin: false,
            recv_window,
            recv_unacked: 0,
            reader_gone: false,
            read_waker: None,
            send_window,
            local_fin: false,
            unflushed: 0,
            write_waker: None,
        }
    }

    fn wake_all(&mut self) {
        for w in [
            self.read_waker.take(),
            self.write_waker.take(),
            self.reply_waker.take(),
        ]
        .into_iter()
        .flatten()
        {
            w.wake();
        }
    }
}

struct State {
    cfg: Config,
    server: bool,
    streams: HashMap<u32, StreamState>,
    next_local_id: u32,
    /// Highest stream id the peer opened.
    last_peer_id: u32,

    /// The peer has shown it implements flow control.
    peer_fc: bool,
    /// The peer's SETTINGS_INITIAL_WINDOW_SIZE.
    peer_initial_window: i64,
    session_send_window: i64,
    session_recv_window: i64,
    session_recv_unacked: i64,

    outbox: VecDeque<Out>,
    /// DATA bytes (with frame headers) queued or being written.
    outbox_data: usize,
    /// Control frames queued.
    outbox_control: usize,
    /// GOAWAY/Shutdown queued: nothing more is queued after it.
    shutdown_queued: bool,

    accept_queue: VecDeque<(u32, Arc<Headers>)>,
    accept_waker: Option<Waker>,
    acceptor_alive: bool,

    pings: HashMap<u32, oneshot::Sender<()>>,
    next_ping_id: u32,

    goaway_received: bool,
    /// Why the session is over (no new frames, no new streams).
    dead: Option<SpdyError>,
    /// The writer task has ended: nothing queued will be written any more.
    writer_done: bool,
    /// Session + stream half handles alive.
    handles: usize,
    /// The reader task waits for a stream's unread data to drain.
    reader_blocked: bool,

    // Notifications to deliver when the lock is released.
    wake_writer: bool,
    wake_reader: bool,
    signal_shutdown: bool,
}

impl State {
    fn enforce(&self) -> bool {
        match self.cfg.peer_flow_control {
            PeerFlowControl::Enforce => true,
            PeerFlowControl::Ignore => false,
            PeerFlowControl::Auto => self.peer_fc,
        }
    }

    fn push(&mut self, frame: Frame) {
        if self.shutdown_queued {
            return;
        }
        match &frame {
            Frame::Data { data, .. } => self.outbox_data += data.len() + 8,
            _ => self.outbox_control += 1,
        }
        self.outbox.push_back(Out::Frame(frame));
        self.wake_writer = true;
    }

    fn is_peer_id(&self, id: u32) -> bool {
        // Clients open odd streams, servers even ones.
        (id % 2 == 1) == self.server
    }

    /// Whether `id` was opened at some point (by either side).
    fn was_opened(&self, id: u32) -> bool {
        if self.is_peer_id(id) {
            id <= self.last_peer_id
        } else {
            id < self.next_local_id
        }
    }

    /// The application consumed (or we discarded) `n` bytes: credit the
    /// session window and, while the peer may still send on it, the
    /// stream's; WINDOW_UPDATE once half a window is owed.
    fn consumed(&mut self, id: Option<u32>, n: usize) {
        if n == 0 {
            return;
        }
        let n = n as i64;
        self.session_recv_unacked += n;
        let session_threshold = (i64::from(self.cfg.session_window.max(64 * 1024)) / 2).max(1);
        if self.session_recv_unacked >= session_threshold && !self.shutdown_queued {
            let delta = self.session_recv_unacked.min(MAX_WINDOW);
            self.session_recv_unacked -= delta;
            self.session_recv_window += delta;
            self.push(Frame::WindowUpdate {
                stream_id: 0,
                delta: delta as u32,
            });
        }
        let threshold = (i64::from(self.cfg.initial_window) / 2).max(1);
        let mut update = None;
        if let Some(s) = id.and_then(|id| self.streams.get_mut(&id)) {
            if !s.recv_fin && s.reset.is_none() {
                s.recv_unacked += n;
                if s.recv_unacked >= threshold {
                    let delta = s.recv_unacked.min(MAX_WINDOW);
                    s.recv_unacked -= delta;
                    s.recv_window += delta;
                    update = Some(delta);
                }
            }
        }
        if let (Some(id), Some(delta)) = (id, update) {
            self.push(Frame::WindowUpdate {
                stream_id: id,
                delta: delta as u32,
            });
        }
    }

    /// Drops the queued (not yet taken by the writer) DATA frames of one
    /// stream, or of all streams.
    fn discard_queued_data(&mut self, only: Option<u32>) {
        let mut kept = VecDeque::with_capacity(self.outbox.len());
        for out in std::mem::take(&mut self.outbox) {
            match out {
                Out::Frame(Frame::Data {
                    stream_id, data, ..
                }) if only.is_none_or(|id| id == stream_id) => {
                    self.outbox_data = self.outbox_data.saturating_sub(data.len() + 8);
                    if let Some(s) = self.streams.get_mut(&stream_id) {
                        s.unflushed = s.unflushed.saturating_sub(1);
                    }
                }
                other => kept.push_back(other),
            }
        }
        self.outbox = kept;
    }

    /// Resets a stream from our side: RST_STREAM `status`, buffered data
    /// dropped, handles see [`SpdyError::LocalReset`].
    fn reset_stream(&mut self, id: u32, status: u32) {
        let Some(s) = self.streams.get_mut(&id) else {
            self.push(Frame::RstStream {
                stream_id: id,
                status,
            });
            return;
        };
        if s.reset.is_some() || (s.local_fin && s.recv_fin && s.recv_len == 0) {
            return;
        }
        s.reset = Some(Reset::ByUs(status));
        let dropped = std::mem::take(&mut s.recv_len);
        s.recv_buf.clear();
        s.wake_all();
        self.consumed(None, dropped);
        self.push(Frame::RstStream {
            stream_id: id,
            status,
        });
        if self.reader_blocked {
            self.wake_reader = true;
        }
        self.maybe_remove(id);
    }

    fn maybe_remove(&mut self, id: u32) {
        if self.streams.get(&id).is_some_and(|s| s.handles == 0) {
            if let Some(s) = self.streams.remove(&id) {
                self.consumed(None, s.recv_len);
            }
        }
    }

    /// Ends the session: `dead` set, GOAWAY `goaway` (if any) and the
    /// writer's shutdown queued, everyone woken, the reader told to stop.
    /// With `discard`, queued DATA is dropped (error paths); otherwise it
    /// is written first (graceful close).
    fn fail(&mut self, err: SpdyError, goaway: Option<u32>, discard: bool) {
        if self.dead.is_none() {
            self.dead = Some(err);
        }
        if discard {
            self.discard_queued_data(None);
        }
        if !self.shutdown_queued {
            if let Some(status) = goaway {
                let last = self.last_peer_id;
                self.push(Frame::GoAway {
                    last_good_stream_id: last,
                    status,
                });
            }
            self.outbox.push_back(Out::Shutdown);
            self.shutdown_queued = true;
            self.wake_writer = true;
        }
        self.wake_everyone();
        self.signal_shutdown = true;
    }

    fn wake_everyone(&mut self) {
        for s in self.streams.values_mut() {
            s.wake_all();
        }
        if let Some(w) = self.accept_waker.take() {
            w.wake();
        }
        // Dropping the senders fails the waiting pings.
        self.pings.clear();
        self.wake_reader = true;
    }

    fn wake_writers(&mut self) {
        for s in self.streams.values_mut() {
            if let Some(w) = s.write_waker.take() {
                w.wake();
            }
        }
    }

    /// One handle (session or stream half) fewer; the last one closes.
    fn release(&mut self) {
        self.handles = self.handles.saturating_sub(1);
        if self.handles == 0 {
            self.fail(SpdyError::Closed, Some(goaway::OK), false);
        }
    }
}

struct Shared {
    state: Mutex<State>,
    writer_wake: Notify,
    reader_wake: Notify,
    shutdown: watch::Sender<bool>,
    done: watch::Sender<bool>,
}

/// The state lock; delivers the notifications recorded in the state when
/// released (never while holding it... after the guard is gone).
struct Locked<'a> {
    shared: &'a Shared,
    guard: Option<MutexGuard<'a, State>>,
}

impl Deref for Locked<'_> {
    type Target = State;
    fn deref(&self) -> &State {
        self.guard.as_ref().expect("lock held until drop")
    }
}

impl DerefMut for Locked<'_> {
    fn deref_mut(&mut self) -> &mut State {
        self.guard.as_mut().expect("lock held until drop")
    }
}

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        let Some(mut st) = self.guard.take() else {
            return;
        };
        let writer = std::mem::take(&mut st.wake_writer);
        let reader = std::mem::take(&mut st.wake_reader);
        let shutdown = std::mem::take(&mut st.signal_shutdown);
        drop(st);
        if writer {
            self.shared.writer_wake.notify_one();
        }
        if reader {
            self.shared.reader_wake.notify_one();
        }
        if shutdown {
            self.shared.shutdown.send_replace(true);
        }
    }
}

impl Shared {
    fn lock(&self) -> Locked<'_> {
        let guard = self
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        Locked {
            shared: self,
            guard: Some(guard),
        }
    }
}

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

struct Half {
    shared: Arc<Shared>,
    id: u32,
    headers: Arc<Headers>,
}

impl Half {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn reset(&self) {
        self.shared.lock().reset_stream(self.id, rst::CANCEL);
    }
}

/// A stream: its id and headers (those of the SYN_STREAM, whichever side
/// sent it), data from the peer as [`AsyncRead`] (EOF at the peer's FIN, an
/// error after RST_STREAM or when the connection is lost first), data to
/// the peer as [`AsyncWrite`] (`poll_shutdown` sends FIN: a half-close).
///
/// Dropping the write side without `shutdown` also sends FIN (like
/// tokio's `OwnedWriteHalf`); use [`Stream::reset`] to abort instead.
/// Dropping the read side discards whatever the peer still sends.
pub struct Stream {
    reader: StreamReader,
    writer: StreamWriter,
}

/// The receiving half of a [`Stream`].
pub struct StreamReader(Half);

/// The sending half of a [`Stream`].
pub struct StreamWriter(Half);

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stream")
            .field("id", &self.id())
            .field("headers", &self.headers())
            .finish()
    }
}

impl std::fmt::Debug for StreamReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamReader")
            .field("id", &self.0.id)
            .finish()
    }
}

impl std::fmt::Debug for StreamWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamWriter")
            .field("id", &self.0.id)
            .finish()
    }
}

impl Stream {
    fn new(shared: Arc<Shared>, id: u32, headers: Arc<Headers>) -> Stream {
        Stream {
            reader: StreamReader(Half {
                shared: shared.clone(),
                id,
                headers: headers.clone(),
            }),
            writer: StreamWriter(Half {
                shared,
                id,
                headers,
            }),
        }
    }

    /// The stream id.
    pub fn id(&self) -> u32 {
        self.reader.0.id
    }

    /// A header of the SYN_STREAM (first value; names are lowercase, e.g.
    /// `streamtype`, `port`, `requestid`; looked up case-insensitively).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.reader.0.header(name)
    }

    /// All headers of the SYN_STREAM, one entry per value.
    pub fn headers(&self) -> &[(String, String)] {
        &self.reader.0.headers
    }

    /// Aborts the stream: RST_STREAM CANCEL; reads and writes fail.
    pub fn reset(&self) {
        self.reader.0.reset();
    }

    /// The two halves, usable from different tasks.
    pub fn into_split(self) -> (StreamReader, StreamWriter) {
        (self.reader, self.writer)
    }
}

impl StreamReader {
    /// The stream id.
    pub fn id(&self) -> u32 {
        self.0.id
    }

    /// A header of the SYN_STREAM.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.0.header(name)
    }

    /// Aborts the stream (RST_STREAM CANCEL).
    pub fn reset(&self) {
        self.0.reset();
    }
}

impl StreamWriter {
    /// The stream id.
    pub fn id(&self) -> u32 {
        self.0.id
    }

    /// A header of the SYN_STREAM.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.0.header(name)
    }

    /// Aborts the stream (RST_STREAM CANCEL).
    pub fn reset(&self) {
        self.0.reset();
    }
}

fn gone() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "spdy stream is gone")
}

impl AsyncRead for StreamReader {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let id = self.0.id;
        let mut guard = self.0.shared.lock();
        let st: &mut State = &mut guard;
        let dead = st.dead.clone();
        let Some(s) = st.streams.get_mut(&id) else {
            return Poll::Ready(Err(gone()));
        };
        if let Some(r) = s.reset {
            return Poll::Ready(Err(r.error().into()));
        }
        if s.recv_len > 0 {
            let mut n = 0;
            while buf.remaining() > 0 {
                let Some(front) = s.recv_buf.front_mut() else {
                    break;
                };
                let k = front.len().min(buf.remaining());
                buf.put_slice(&front[..k]);
                front.advance(k);
                if front.is_empty() {
                    s.recv_buf.pop_front();
                }
                n += k;
            }
            s.recv_len -= n;
            st.consumed(Some(id), n);
            if st.reader_blocked {
                st.wake_reader = true;
            }
            return Poll::Ready(Ok(()));
        }
        if s.recv_fin {
            return Poll::Ready(Ok(()));
        }
        if let Some(e) = dead {
            return Poll::Ready(Err(e.into()));
        }
        s.read_waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl StreamWriter {
    fn poll_flushed(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut guard = self.0.shared.lock();
        let st: &mut State = &mut guard;
        let (dead, writer_done) = (st.dead.clone(), st.writer_done);
        let Some(s) = st.streams.get_mut(&self.0.id) else {
            return Poll::Ready(Err(gone()));
        };
        if s.unflushed == 0 {
            return Poll::Ready(Ok(()));
        }
        if let Some(Reset::ByPeer(status)) = s.reset {
            return Poll::Ready(Err(SpdyError::Reset(status).into()));
        }
        if writer_done {
            return Poll::Ready(Err(dead.unwrap_or(SpdyError::Closed).into()));
        }
        s.write_waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl AsyncWrite for StreamWriter {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let id = self.0.id;
        let mut guard = self.0.shared.lock();
        let st: &mut State = &mut guard;
        let enforce = st.enforce();
        let budget_full = st.outbox_data >= OUTBOX_BUDGET;
        let session_window = st.session_send_window;
        let dead = st.dead.clone();
        let Some(s) = st.streams.get_mut(&id) else {
            return Poll::Ready(Err(gone()));
        };
        if let Some(r) = s.reset {
            return Poll::Ready(Err(r.error().into()));
        }
        if s.local_fin {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "spdy stream already half-closed",
            )));
        }
        if let Some(e) = dead {
            return Poll::Ready(Err(e.into()));
        }
        let mut n = data.len().min(WRITE_CHUNK);
        if enforce {
            let avail = s.send_window.min(session_window);
            if avail <= 0 {
                s.write_waker = Some(cx.waker().clone());
                return Poll::Pending;
            }
            n = n.min(usize::try_from(avail).unwrap_or(usize::MAX));
        }
        if budget_full {
            s.write_waker = Some(cx.waker().clone());
            return Poll::Pending;
        }
        s.send_window -= n as i64;
        s.unflushed += 1;
        st.session_send_window -= n as i64;
        st.push(Frame::Data {
            stream_id: id,
            flags: 0,
            data: Bytes::copy_from_slice(&data[..n]),
        });
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_flushed(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        {
            let id = self.0.id;
            let mut guard = self.0.shared.lock();
            let st: &mut State = &mut guard;
            let dead = st.dead.clone();
            let Some(s) = st.streams.get_mut(&id) else {
                return Poll::Ready(Err(gone()));
            };
            if !s.local_fin {
                if s.reset.is_some() {
                    return Poll::Ready(Ok(()));
                }
                if let Some(e) = dead {
                    return Poll::Ready(Err(e.into()));
                }
                s.local_fin = true;
                s.unflushed += 1;
                st.push(Frame::Data {
                    stream_id: id,
                    flags: frame::FLAG_FIN,
                    data: Bytes::new(),
                });
            }
        }
        self.poll_flushed(cx)
    }
}

impl Drop for StreamReader {
    fn drop(&mut self) {
        let id = self.0.id;
        let mut guard = self.0.shared.lock();
        let st: &mut State = &mut guard;
        if let Some(s) = st.streams.get_mut(&id) {
            s.reader_gone = true;
            s.read_waker = None;
            let dropped = std::mem::take(&mut s.recv_len);
            s.recv_buf.clear();
            s.handles = s.handles.saturating_sub(1);
            st.consumed(Some(id), dropped);
            if st.reader_blocked {
                st.wake_reader = true;
            }
            st.maybe_remove(id);
        }
        st.release();
    }
}

impl Drop for StreamWriter {
    fn drop(&mut self) {
        let id = self.0.id;
        let mut guard = self.0.shared.lock();
        let st: &mut State = &mut guard;
        let alive = st.dead.is_none();
        if let Some(s) = st.streams.get_mut(&id) {
            s.write_waker = None;
            s.handles = s.handles.saturating_sub(1);
            let fin = !s.local_fin && s.reset.is_none() && alive;
            if fin {
                s.local_fin = true;
                s.unflushed += 1;
                st.push(Frame::Data {
                    stream_id: id,
                    flags: frame::FLAG_FIN,
                    data: Bytes::new(),
                });
            }
            st.maybe_remove(id);
        }
        st.release();
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.reader).poll_read(cx, buf)
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.writer).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.writer).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.writer).poll_shutdown(cx)
    }
}

/// What the reader does after a frame.
enum Flow {
    Continue,
    /// Wait until this stream's unread data is within its bound.
    Block(u32),
    Stop,
}

fn handle_frame(shared: &Shared, frame: Frame) -> Flow {
    let mut guard = shared.lock();
    let st: &mut State = &mut guard;
    match frame {
        Frame::Data {
            stream_id,
            flags,
            data,
        } => {
            let len = data.len();
            let strict = st.enforce();
            st.session_recv_window -= len as i64;
            if strict && st.session_recv_window < 0 {
                st.fail(
                    SpdyError::Protocol("peer overran the session flow control window".into()),
                    Some(goaway::PROTOCOL_ERROR),
                    true,
                );
                return Flow::Stop;
            }
            let Some(s) = st.streams.get_mut(&stream_id) else {
                st.consumed(None, len);
                if !st.was_opened(stream_id) {
                    st.push(Frame::RstStream {
                        stream_id,
                        status: rst::INVALID_STREAM,
                    });
                }
                return Flow::Continue;
            };
            if s.reset.is_some() {
                st.consumed(None, len);
                return Flow::Continue;
            }
            if s.recv_fin {
                st.consumed(None, len);
                st.reset_stream(stream_id, rst::STREAM_ALREADY_CLOSED);
                return Flow::Continue;
            }
            s.recv_window -= len as i64;
            if strict && s.recv_window < 0 {
                st.consumed(None, len);
                st.reset_stream(stream_id, rst::FLOW_CONTROL_ERROR);
                return Flow::Continue;
            }
            let discard = s.reader_gone;
            if !discard && len > 0 {
                s.recv_buf.push_back(data);
                s.recv_len += len;
            }
            if flags & frame::FLAG_FIN != 0 {
                s.recv_fin = true;
            }
            if let Some(w) = s.read_waker.take() {
                w.wake();
            }
            let over = !strict && !discard && s.recv_len > st.cfg.initial_window as usize;
            if discard {
                st.consumed(Some(stream_id), len);
            }
            if over {
                Flow::Block(stream_id)
            } else {
                Flow::Continue
            }
        }
        Frame::SynStream {
            stream_id,
            flags,
            headers,
            ..
        } => {
            if !st.is_peer_id(stream_id) {
                st.fail(
                    SpdyError::Protocol(format!(
                        "peer opened stream {stream_id}, an id of our side"
                    )),
                    Some(goaway::PROTOCOL_ERROR),
                    true,
                );
                return Flow::Stop;
            }
            if stream_id <= st.last_peer_id {
                let last = st.last_peer_id;
                st.fail(
                    SpdyError::Protocol(format!(
                        "peer opened stream {stream_id} after stream {last}"
                    )),
                    Some(goaway::PROTOCOL_ERROR),
                    true,
                );
                return Flow::Stop;
            }
            st.last_peer_id = stream_id;
            if st.dead.is_some() || st.shutdown_queued {
                return Flow::Continue;
            }
            let open = st.streams.values().filter(|s| !s.local).count();
            if !st.acceptor_alive || open >= st.cfg.max_concurrent_streams {
                st.push(Frame::RstStream {
                    stream_id,
                    status: rst::REFUSED_STREAM,
                });
                return Flow::Continue;
            }
            let (recv, send) = (i64::from(st.cfg.initial_window), st.peer_initial_window);
            let mut s = StreamState::new(false, true, 1, recv, send);
            s.recv_fin = flags & frame::FLAG_FIN != 0;
            let unidirectional = flags & frame::FLAG_UNIDIRECTIONAL != 0;
            s.local_fin = unidirectional;
            st.streams.insert(stream_id, s);
            if !unidirectional {
                st.push(Frame::SynReply {
                    stream_id,
                    flags: 0,
                    headers: Vec::new(),
                });
            }
            st.accept_queue.push_back((stream_id, Arc::new(headers)));
            if let Some(w) = st.accept_waker.take() {
                w.wake();
            }
            Flow::Continue
        }
        Frame::SynReply {
            stream_id, flags, ..
        } => {
            let Some(s) = st.streams.get_mut(&stream_id) else {
                return Flow::Continue;
            };
            if !s.local || s.replied {
                if s.reset.is_none() {
                    st.reset_stream(stream_id, rst::STREAM_IN_USE);
                }
                return Flow::Continue;
            }
            s.replied = true;
            if flags & frame::FLAG_FIN != 0 {
                s.recv_fin = true;
            }
            s.wake_all();
            Flow::Continue
        }
        Frame::Headers {
            stream_id, flags, ..
        } => {
            if let Some(s) = st.streams.get_mut(&stream_id) {
                if flags & frame::FLAG_FIN != 0 {
                    s.recv_fin = true;
                    if let Some(w) = s.read_waker.take() {
                        w.wake();
                    }
                }
            }
            Flow::Continue
        }
        Frame::RstStream { stream_id, status } => {
            let Some(s) = st.streams.get_mut(&stream_id) else {
                return Flow::Continue;
            };
            if s.reset.is_none() {
                s.reset = Some(Reset::ByPeer(status));
                let dropped = std::mem::take(&mut s.recv_len);
                s.recv_buf.clear();
                s.wake_all();
                st.consumed(None, dropped);
                st.discard_queued_data(Some(stream_id));
                if st.reader_blocked {
                    st.wake_reader = true;
                }
            }
            st.maybe_remove(stream_id);
            Flow::Continue
        }
        Frame::Settings { entries, .. } => {
            if st.cfg.peer_flow_control == PeerFlowControl::Auto {
                st.peer_fc = true;
            }
            for e in entries {
                if e.id != frame::SETTINGS_INITIAL_WINDOW_SIZE {
                    continue;
                }
                let value = i64::from(e.value);
                if value > MAX_WINDOW {
                    st.fail(
                        SpdyError::Protocol(format!(
                            "SETTINGS_INITIAL_WINDOW_SIZE {value} too large"
                        )),
                        Some(goaway::PROTOCOL_ERROR),
                        true,
                    );
                    return Flow::Stop;
                }
                let delta = value - st.peer_initial_window;
                st.peer_initial_window = value;
                for s in st.streams.values_mut() {
                    s.send_window += delta;
                }
            }
            st.wake_writers();
            Flow::Continue
        }
        Frame::Ping { id } => {
            if st.is_peer_id(id) {
                st.push(Frame::Ping { id });
            } else if let Some(tx) = st.pings.remove(&id) {
                let _ = tx.send(());
            }
            Flow::Continue
        }
        Frame::GoAway {
            last_good_stream_id,
            ..
        } => {
            st.goaway_received = true;
            let refused: Vec<u32> = st
                .streams
                .iter()
                .filter(|(id, s)| s.local && !s.replied && **id > last_good_stream_id)
                .map(|(id, _)| *id)
                .collect();
            for id in refused {
                if let Some(s) = st.streams.get_mut(&id) {
                    if s.reset.is_none() {
                        s.reset = Some(Reset::ByPeer(rst::REFUSED_STREAM));
                    }
                    s.wake_all();
                }
                st.maybe_remove(id);
            }
            if let Some(w) = st.accept_waker.take() {
                w.wake();
            }
            Flow::Continue
        }
        Frame::WindowUpdate { stream_id, delta } => {
            if st.cfg.peer_flow_control == PeerFlowControl::Auto {
                st.peer_fc = true;
            }
            let delta = i64::from(delta);
            if stream_id == 0 {
                st.session_send_window += delta;
                if st.session_send_window > MAX_WINDOW {
                    st.fail(
                        SpdyError::Protocol("session window grown past 2^31-1".into()),
                        Some(goaway::PROTOCOL_ERROR),
                        true,
                    );
                    return Flow::Stop;
                }
                st.wake_writers();
            } else if let Some(s) = st.streams.get_mut(&stream_id) {
                s.send_window += delta;
                if s.send_window > MAX_WINDOW {
                    st.reset_stream(stream_id, rst::FLOW_CONTROL_ERROR);
                } else if let Some(w) = s.write_waker.take() {
                    w.wake();
                }
            }
            Flow::Continue
        }
    }
}

/// Whether the reader must keep waiting for stream `id` to be read.
fn still_blocked(st: &State, id: Option<u32>) -> bool {
    if st.dead.is_some() {
        return false;
    }
    // Frames we owe the peer (PING echoes, RST_STREAM, WINDOW_UPDATE...)
    // pile up when it does not read: stop reading it until they drain.
    if st.outbox_control > MAX_QUEUED_FRAMES {
        return true;
    }
    id.and_then(|id| st.streams.get(&id)).is_some_and(|s| {
        !s.reader_gone && s.reset.is_none() && s.recv_len > st.cfg.initial_window as usize
    })
}

async fn reader_task<R: AsyncRead + Unpin>(shared: Arc<Shared>, mut rd: R) {
    let mut shutdown = shared.shutdown.subscribe();
    let mut decoder = Decoder::new();
    let mut buf = BytesMut::with_capacity(64 * 1024);
    loop {
        loop {
            let frame = match decoder.decode(&mut buf) {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(FrameError::Stream {
                    stream_id,
                    status,
                    msg,
                }) => {
                    tracing::debug!(stream_id, status, "spdy: resetting stream: {msg}");
                    let mut st = shared.lock();
                    // A refused SYN_STREAM still moves the peer's id forward.
                    if st.is_peer_id(stream_id)
                        && stream_id > st.last_peer_id
                        && !st.streams.contains_key(&stream_id)
                    {
                        st.last_peer_id = stream_id;
                    }
                    st.reset_stream(stream_id, status);
                    continue;
                }
                Err(FrameError::Session(msg)) => {
                    tracing::debug!("spdy: protocol error: {msg}");
                    shared.lock().fail(
                        SpdyError::Protocol(msg),
                        Some(goaway::PROTOCOL_ERROR),
                        true,
                    );
                    return;
                }
            };
            let blocked_on = match handle_frame(&shared, frame) {
                Flow::Continue => None,
                Flow::Stop => return,
                Flow::Block(id) => Some(id),
            };
            loop {
                let notified = shared.reader_wake.notified();
                {
                    let mut st = shared.lock();
                    if !still_blocked(&st, blocked_on) {
                        st.reader_blocked = false;
                        break;
                    }
                    st.reader_blocked = true;
                }
                tokio::select! {
                    () = notified => {}
                    _ = shutdown.wait_for(|v| *v) => return,
                }
            }
        }
        if buf.capacity() - buf.len() < 16 * 1024 {
            buf.reserve(64 * 1024);
        }
        tokio::select! {
            _ = shutdown.wait_for(|v| *v) => return,
            r = rd.read_buf(&mut buf) => match r {
                Ok(0) => {
                    let err = if buf.is_empty() {
                        SpdyError::ConnectionClosed
                    } else {
                        SpdyError::Protocol("connection closed in the middle of a frame".into())
                    };
                    shared.lock().fail(err, None, false);
                    return;
                }
                Ok(_) => {}
                Err(e) => {
                    shared.lock().fail(SpdyError::Io(Arc::new(e)), None, true);
                    return;
                }
            },
        }
    }
}

async fn writer_task<W: AsyncWrite + Unpin>(shared: Arc<Shared>, mut wr: W, mut encoder: Encoder) {
    let mut shutdown = shared.shutdown.subscribe();
    let grace = shared.lock().cfg.close_timeout;
    // Resolves `grace` after the session started closing: a peer that does
    // not read cannot hold the connection (and this task) forever.
    let abort = async move {
        let _ = shutdown.wait_for(|v| *v).await;
        tokio::time::sleep(grace).await;
    };
    tokio::pin!(abort);
    let mut buf = BytesMut::with_capacity(WRITE_BATCH + 1024);
    let result: Result<(), SpdyError> = 'run: loop {
        let notified = shared.writer_wake.notified();
        let mut batch = Vec::new();
        let mut finish = false;
        {
            let mut st = shared.lock();
            let mut bytes = 0;
            while bytes < WRITE_BATCH {
                match st.outbox.pop_front() {
                    Some(Out::Frame(f)) => {
                        bytes += match &f {
                            Frame::Data { data, .. } => data.len() + 8,
                            _ => {
                                st.outbox_control = st.outbox_control.saturating_sub(1);
                                64
                            }
                        };
                        batch.push(f);
                    }
                    Some(Out::Shutdown) => {
                        finish = true;
                        break;
                    }
                    None => break,
                }
            }
        }
        if batch.is_empty() && !finish {
            notified.await;
            continue;
        }
        buf.clear();
        let mut written: Vec<(u32, usize)> = Vec::new();
        for f in &batch {
            if let Err(e) = encoder.encode(f, &mut buf) {
                break 'run Err(SpdyError::Protocol(e.to_string()));
            }
            if let Frame::Data {
                stream_id, data, ..
            } = f
            {
                written.push((*stream_id, data.len() + 8));
            }
        }
        let io = async {
            wr.write_all(&buf).await?;
            wr.flush().await
        };
        tokio::select! {
            r = io => {
                if let Err(e) = r {
                    break 'run Err(SpdyError::Io(Arc::new(e)));
                }
            }
            () = &mut abort => break 'run Err(SpdyError::Closed),
        }
        {
            let mut st = shared.lock();
            for (id, n) in written {
                st.outbox_data = st.outbox_data.saturating_sub(n);
                if let Some(s) = st.streams.get_mut(&id) {
                    s.unflushed = s.unflushed.saturating_sub(1);
                }
            }
            st.wake_writers();
            if st.reader_blocked {
                st.wake_reader = true;
            }
        }
        if finish {
            tokio::select! {
                _ = wr.shutdown() => {}
                () = &mut abort => {}
            }
            break Ok(());
        }
    };
    {
        let mut st = shared.lock();
        if let Err(e) = result {
            st.fail(e, None, true);
        }
        st.outbox.clear();
        st.outbox_data = 0;
        st.outbox_control = 0;
        st.writer_done = true;
        st.signal_shutdown = true;
        st.wake_everyone();
    }
    shared.done.send_replace(true);
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
