//! The state the reader, the writer and every handle share: streams, windows, the outbox.

use super::*;

pub(super) enum Out {
    Frame(Frame),
    /// Flush, shut the connection down, end the writer.
    Shutdown,
}

#[derive(Debug, Clone, Copy)]
pub(super) enum Reset {
    ByPeer(u32),
    ByUs(u32),
}

impl Reset {
    pub(super) fn error(self) -> SpdyError {
        match self {
            Reset::ByPeer(s) => SpdyError::Reset(s),
            Reset::ByUs(s) => SpdyError::LocalReset(s),
        }
    }
}

pub(super) struct StreamState {
    /// Opened by us (SYN_STREAM sent).
    pub(super) local: bool,
    /// SYN_REPLY received (ours) / sent (theirs).
    pub(super) replied: bool,
    /// Live handles: stream halves, or 1 while waiting in the accept queue.
    pub(super) handles: u8,
    pub(super) reset: Option<Reset>,
    pub(super) reply_waker: Option<Waker>,

    pub(super) recv_buf: VecDeque<Bytes>,
    pub(super) recv_len: usize,
    pub(super) recv_fin: bool,
    /// What the peer may still send before our next WINDOW_UPDATE.
    pub(super) recv_window: i64,
    /// Consumed since the last WINDOW_UPDATE.
    pub(super) recv_unacked: i64,
    /// The read half is gone: incoming data is discarded.
    pub(super) reader_gone: bool,
    pub(super) read_waker: Option<Waker>,

    /// What we may still send (the peer's window for this stream).
    pub(super) send_window: i64,
    /// FIN queued.
    pub(super) local_fin: bool,
    /// Our DATA frames (FIN included) queued but not yet written.
    pub(super) unflushed: usize,
    pub(super) write_waker: Option<Waker>,
}

impl StreamState {
    pub(super) fn new(
        local: bool,
        replied: bool,
        handles: u8,
        recv_window: i64,
        send_window: i64,
    ) -> Self {
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

    pub(super) fn wake_all(&mut self) {
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

pub(super) struct State {
    pub(super) cfg: Config,
    pub(super) server: bool,
    pub(super) streams: HashMap<u32, StreamState>,
    pub(super) next_local_id: u32,
    /// Highest stream id the peer opened.
    pub(super) last_peer_id: u32,

    /// The peer has shown it implements flow control.
    pub(super) peer_fc: bool,
    /// The peer's SETTINGS_INITIAL_WINDOW_SIZE.
    pub(super) peer_initial_window: i64,
    pub(super) session_send_window: i64,
    pub(super) session_recv_window: i64,
    pub(super) session_recv_unacked: i64,

    pub(super) outbox: VecDeque<Out>,
    /// DATA bytes (with frame headers) queued or being written.
    pub(super) outbox_data: usize,
    /// Control frames queued.
    pub(super) outbox_control: usize,
    /// GOAWAY/Shutdown queued: nothing more is queued after it.
    pub(super) shutdown_queued: bool,

    pub(super) accept_queue: VecDeque<(u32, Arc<Headers>)>,
    pub(super) accept_waker: Option<Waker>,
    pub(super) acceptor_alive: bool,

    pub(super) pings: HashMap<u32, oneshot::Sender<()>>,
    pub(super) next_ping_id: u32,

    pub(super) goaway_received: bool,
    /// Why the session is over (no new frames, no new streams).
    pub(super) dead: Option<SpdyError>,
    /// The writer task has ended: nothing queued will be written any more.
    pub(super) writer_done: bool,
    /// Session + stream half handles alive.
    pub(super) handles: usize,
    /// The reader task waits for a stream's unread data to drain.
    pub(super) reader_blocked: bool,

    // Notifications to deliver when the lock is released.
    pub(super) wake_writer: bool,
    pub(super) wake_reader: bool,
    pub(super) signal_shutdown: bool,
}

impl State {
    pub(super) fn enforce(&self) -> bool {
        match self.cfg.peer_flow_control {
            PeerFlowControl::Enforce => true,
            PeerFlowControl::Ignore => false,
            PeerFlowControl::Auto => self.peer_fc,
        }
    }

    pub(super) fn push(&mut self, frame: Frame) {
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

    pub(super) fn is_peer_id(&self, id: u32) -> bool {
        // Clients open odd streams, servers even ones.
        (id % 2 == 1) == self.server
    }

    /// Whether `id` was opened at some point (by either side).
    pub(super) fn was_opened(&self, id: u32) -> bool {
        if self.is_peer_id(id) {
            id <= self.last_peer_id
        } else {
            id < self.next_local_id
        }
    }

    /// The application consumed (or we discarded) `n` bytes: credit the
    /// session window and, while the peer may still send on it, the
    /// stream's; WINDOW_UPDATE once half a window is owed.
    pub(super) fn consumed(&mut self, id: Option<u32>, n: usize) {
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
    pub(super) fn discard_queued_data(&mut self, only: Option<u32>) {
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
    pub(super) fn reset_stream(&mut self, id: u32, status: u32) {
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

    pub(super) fn maybe_remove(&mut self, id: u32) {
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
    pub(super) fn fail(&mut self, err: SpdyError, goaway: Option<u32>, discard: bool) {
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

    pub(super) fn wake_everyone(&mut self) {
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

    pub(super) fn wake_writers(&mut self) {
        for s in self.streams.values_mut() {
            if let Some(w) = s.write_waker.take() {
                w.wake();
            }
        }
    }

    /// One handle (session or stream half) fewer; the last one closes.
    pub(super) fn release(&mut self) {
        self.handles = self.handles.saturating_sub(1);
        if self.handles == 0 {
            self.fail(SpdyError::Closed, Some(goaway::OK), false);
        }
    }
}

pub(super) struct Shared {
    pub(super) state: Mutex<State>,
    pub(super) writer_wake: Notify,
    pub(super) reader_wake: Notify,
    pub(super) shutdown: watch::Sender<bool>,
    pub(super) done: watch::Sender<bool>,
}

/// The state lock; delivers the notifications recorded in the state when
/// released (never while holding it... after the guard is gone).
pub(super) struct Locked<'a> {
    pub(super) shared: &'a Shared,
    pub(super) guard: Option<MutexGuard<'a, State>>,
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
    pub(super) fn lock(&self) -> Locked<'_> {
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
