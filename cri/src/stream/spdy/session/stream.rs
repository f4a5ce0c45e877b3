//! Stream handles: the read and write halves the application uses.

use super::*;

pub(super) struct Half {
    pub(super) shared: Arc<Shared>,
    pub(super) id: u32,
    pub(super) headers: Arc<Headers>,
}

impl Half {
    pub(super) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub(super) fn reset(&self) {
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
    pub(super) reader: StreamReader,
    pub(super) writer: StreamWriter,
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
    pub(super) fn new(shared: Arc<Shared>, id: u32, headers: Arc<Headers>) -> Stream {
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

/// What both halves of a stream answer, from their [`Half`].
macro_rules! half_accessors {
    ($half:ty) => {
        impl $half {
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
    };
}

half_accessors!(StreamReader);
half_accessors!(StreamWriter);

pub(super) fn gone() -> io::Error {
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
    pub(super) fn poll_flushed(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
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
