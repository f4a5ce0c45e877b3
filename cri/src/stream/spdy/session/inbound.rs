//! The reader side: frames off the connection applied to the shared state, and the writer task.

use super::*;

/// What the reader does after a frame.
pub(super) enum Flow {
    Continue,
    /// Wait until this stream's unread data is within its bound.
    Block(u32),
    Stop,
}

pub(super) fn handle_frame(shared: &Shared, frame: Frame) -> Flow {
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
pub(super) fn still_blocked(st: &State, id: Option<u32>) -> bool {
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

pub(super) async fn reader_task<R: AsyncRead + Unpin>(shared: Arc<Shared>, mut rd: R) {
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

pub(super) async fn writer_task<W: AsyncWrite + Unpin>(
    shared: Arc<Shared>,
    mut wr: W,
    mut encoder: Encoder,
) {
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
