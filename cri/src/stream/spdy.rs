//! SPDY/3.1: the framing layer and a multiplexed session over tokio I/O.
//!
//! kubectl exec/attach/port-forward reach a runtime's streaming server over
//! SPDY/3.1 (client-go's `remotecommand`/`portforward` on top of
//! `github.com/moby/spdystream`); this module is berth's side of it:
//!
//! - [`frame`]: control and data frames, encoding and incremental decoding;
//! - [`header`]: SPDY/3 name/value header blocks and their zlib
//!   compression with the SPDY/3 dictionary;
//! - [`Session`] / [`Stream`]: one connection, its streams as
//!   `AsyncRead + AsyncWrite`, flow control, PING, GOAWAY.
//!
//! # Flow control and spdystream
//!
//! SPDY/3.1 has per-stream and per-session windows (64 KiB initially). We
//! always announce our windows (SETTINGS, WINDOW_UPDATE as the application
//! consumes data). But spdystream — every Kubernetes client — implements no
//! flow control at all (moby/spdystream#2, open since 2014): it ignores
//! SETTINGS and WINDOW_UPDATE, never sends them, and writes as much as it
//! likes. A sender that honours windows would stall after 64 KiB against
//! it. So by default ([`PeerFlowControl::Auto`]) a session enforces windows
//! — blocking our writers on the peer's windows, and resetting streams that
//! overrun ours (FLOW_CONTROL_ERROR) — only once the peer has shown it
//! implements flow control by sending SETTINGS or WINDOW_UPDATE (berth's
//! own sessions send SETTINGS first thing, so two berth ends always
//! enforce). Against a peer without flow control, memory stays bounded the
//! way spdystream itself bounds it: when a stream's unread data exceeds its
//! window, the session stops reading the connection until the application
//! reads (TCP pushes back on the peer; other streams wait meanwhile), and
//! our writers are held back by a bounded send queue and the socket.

pub mod frame;
pub mod header;
mod session;

use std::io;
use std::sync::Arc;
use std::time::Duration;

pub use header::Headers;
pub use session::{Session, Stream, StreamReader, StreamWriter};

/// Whether we honour the peer's flow control windows (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PeerFlowControl {
    /// Enforce once the peer has sent SETTINGS or WINDOW_UPDATE.
    #[default]
    Auto,
    /// Always enforce (the peer is known to implement SPDY/3.1 flow control).
    Enforce,
    /// Never enforce (spdystream behaviour).
    Ignore,
}

/// Session parameters.
#[derive(Debug, Clone)]
pub struct Config {
    /// Our per-stream receive window, announced with
    /// SETTINGS_INITIAL_WINDOW_SIZE; also the bound of a stream's unread
    /// data. Default 64 KiB (the protocol's default).
    pub initial_window: u32,
    /// Our session-level receive window (at least the protocol's 64 KiB,
    /// raised with a WINDOW_UPDATE on stream 0 at start). Default 1 MiB.
    pub session_window: u32,
    /// When to honour the peer's windows.
    pub peer_flow_control: PeerFlowControl,
    /// Streams the peer may have open at once; more are refused
    /// (RST_STREAM REFUSED_STREAM). Default 1000.
    pub max_concurrent_streams: usize,
    /// Once the session is closing, how long queued frames may take to
    /// reach a peer that does not read before the connection is dropped.
    /// Default 10 s.
    pub close_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            initial_window: 64 * 1024,
            session_window: 1024 * 1024,
            peer_flow_control: PeerFlowControl::Auto,
            max_concurrent_streams: 1000,
            close_timeout: Duration::from_secs(10),
        }
    }
}

/// Errors of a session or a stream.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SpdyError {
    /// The peer violated the protocol (we sent GOAWAY PROTOCOL_ERROR), or
    /// we could not encode a frame.
    #[error("spdy protocol error: {0}")]
    Protocol(String),
    /// Reading or writing the connection failed.
    #[error("spdy connection: {0}")]
    Io(Arc<io::Error>),
    /// The peer closed the connection.
    #[error("spdy connection closed by the peer")]
    ConnectionClosed,
    /// The session was closed on our side.
    #[error("spdy session closed")]
    Closed,
    /// The peer sent GOAWAY: no new streams.
    #[error("spdy session going away (GOAWAY from the peer)")]
    GoAway,
    /// The stream was reset by the peer (RST_STREAM status).
    #[error("spdy stream reset by the peer (status {0})")]
    Reset(u32),
    /// The stream was reset on our side (by [`Stream::reset`] or because
    /// the peer violated the protocol on it; RST_STREAM status).
    #[error("spdy stream reset (status {0})")]
    LocalReset(u32),
    /// All 2^30 stream ids of this side were used.
    #[error("spdy stream ids exhausted")]
    StreamIdsExhausted,
    /// Headers that cannot be sent (empty or NUL in a name, too large).
    #[error("spdy: invalid header: {0}")]
    InvalidHeader(String),
}

impl From<SpdyError> for io::Error {
    fn from(e: SpdyError) -> io::Error {
        let kind = match &e {
            SpdyError::Io(inner) => inner.kind(),
            SpdyError::Protocol(_) => io::ErrorKind::InvalidData,
            SpdyError::ConnectionClosed => io::ErrorKind::ConnectionAborted,
            SpdyError::Closed | SpdyError::GoAway => io::ErrorKind::NotConnected,
            SpdyError::Reset(_) | SpdyError::LocalReset(_) => io::ErrorKind::ConnectionReset,
            SpdyError::StreamIdsExhausted => io::ErrorKind::Other,
            SpdyError::InvalidHeader(_) => io::ErrorKind::InvalidInput,
        };
        io::Error::new(kind, e)
    }
}

#[cfg(test)]
mod tests;
