//! SPDY/3.1 frames: encoding, and incremental decoding from a byte buffer.
//!
//! ```text
//! control: |1| version (15) | type (16) | flags (8) | length (24) | data
//! data:    |0| stream id (31)           | flags (8) | length (24) | data
//! ```
//!
//! The decoder never panics on input: a malformed frame is a
//! [`FrameError::Session`] (the connection cannot continue: GOAWAY
//! PROTOCOL_ERROR) or, when only one stream's frame is bad but the byte
//! stream and the header compression context are intact, a
//! [`FrameError::Stream`] (RST_STREAM, the session goes on).

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::header::{self, HeaderCompressor, HeaderDecompressor, HeaderError, Headers};

/// The only protocol version spoken.
pub const VERSION: u16 = 3;
/// Largest frame payload the 24-bit length field allows.
pub const MAX_LENGTH: usize = 0x00FF_FFFF;
/// Largest control frame the decoder accepts (they carry at most a
/// compressed header block; spdystream's are a few hundred bytes).
pub const MAX_CONTROL_FRAME: usize = header::MAX_HEADER_BLOCK + 1024;
/// Largest piece of a data frame handed out at once (a big data frame is
/// delivered incrementally, never buffered whole).
pub const MAX_DATA_CHUNK: usize = 64 * 1024;

/// FIN: the sender's last frame on the stream (DATA, SYN_STREAM,
/// SYN_REPLY, HEADERS).
pub const FLAG_FIN: u8 = 0x01;
/// UNIDIRECTIONAL (SYN_STREAM): the recipient must not send on the stream.
pub const FLAG_UNIDIRECTIONAL: u8 = 0x02;
/// CLEAR_SETTINGS (SETTINGS).
pub const FLAG_SETTINGS_CLEAR: u8 = 0x01;

/// Control frame types.
pub mod kind {
    /// Opens a stream.
    pub const SYN_STREAM: u16 = 1;
    /// Accepts a stream.
    pub const SYN_REPLY: u16 = 2;
    /// Aborts a stream.
    pub const RST_STREAM: u16 = 3;
    /// Session parameters.
    pub const SETTINGS: u16 = 4;
    /// Round trip / liveness.
    pub const PING: u16 = 6;
    /// End of the session.
    pub const GOAWAY: u16 = 7;
    /// More headers on a stream.
    pub const HEADERS: u16 = 8;
    /// Flow control credit.
    pub const WINDOW_UPDATE: u16 = 9;
}

/// RST_STREAM status codes.
pub mod rst {
    /// Generic protocol violation.
    pub const PROTOCOL_ERROR: u32 = 1;
    /// A frame for a stream that is not active.
    pub const INVALID_STREAM: u32 = 2;
    /// The stream was refused before any processing.
    pub const REFUSED_STREAM: u32 = 3;
    /// The SPDY version is not supported.
    pub const UNSUPPORTED_VERSION: u32 = 4;
    /// The stream is no longer needed.
    pub const CANCEL: u32 = 5;
    /// Internal error of the sender.
    pub const INTERNAL_ERROR: u32 = 6;
    /// The peer violated flow control.
    pub const FLOW_CONTROL_ERROR: u32 = 7;
    /// A second SYN_REPLY.
    pub const STREAM_IN_USE: u32 = 8;
    /// Data or a reply after the half-close.
    pub const STREAM_ALREADY_CLOSED: u32 = 9;
    /// A frame too large to process.
    pub const FRAME_TOO_LARGE: u32 = 11;
}

/// GOAWAY status codes (as Chromium and spdystream number them).
pub mod goaway {
    /// Normal teardown.
    pub const OK: u32 = 0;
    /// The peer violated the protocol.
    pub const PROTOCOL_ERROR: u32 = 1;
    /// Internal error.
    pub const INTERNAL_ERROR: u32 = 2;
}

/// SETTINGS id of the initial per-stream flow control window.
pub const SETTINGS_INITIAL_WINDOW_SIZE: u32 = 7;
/// SETTINGS id of the peer's limit of concurrent streams.
pub const SETTINGS_MAX_CONCURRENT_STREAMS: u32 = 4;

/// One SETTINGS entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setting {
    /// Per-entry flags (PERSIST_VALUE 0x1, PERSISTED 0x2).
    pub flags: u8,
    /// 24-bit id.
    pub id: u32,
    /// Value.
    pub value: u32,
}

/// A decoded or to-be-encoded frame. Stream ids are 31-bit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// DATA. From the decoder, one piece of a frame: `flags` carries FIN
    /// only on the last piece.
    Data {
        stream_id: u32,
        flags: u8,
        data: Bytes,
    },
    /// SYN_STREAM.
    SynStream {
        stream_id: u32,
        associated_to: u32,
        priority: u8,
        slot: u8,
        flags: u8,
        headers: Headers,
    },
    /// SYN_REPLY.
    SynReply {
        stream_id: u32,
        flags: u8,
        headers: Headers,
    },
    /// RST_STREAM.
    RstStream { stream_id: u32, status: u32 },
    /// SETTINGS.
    Settings { flags: u8, entries: Vec<Setting> },
    /// PING.
    Ping { id: u32 },
    /// GOAWAY.
    GoAway {
        last_good_stream_id: u32,
        status: u32,
    },
    /// HEADERS.
    Headers {
        stream_id: u32,
        flags: u8,
        headers: Headers,
    },
    /// WINDOW_UPDATE (stream 0: the session window).
    WindowUpdate { stream_id: u32, delta: u32 },
}

/// A frame the decoder (or encoder) cannot accept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Fatal for the session: answer GOAWAY PROTOCOL_ERROR and close.
    #[error("{0}")]
    Session(String),
    /// Only this stream is affected: answer RST_STREAM `status`.
    #[error("stream {stream_id}: {msg}")]
    Stream {
        stream_id: u32,
        status: u32,
        msg: String,
    },
}

fn session_err(msg: impl Into<String>) -> FrameError {
    FrameError::Session(msg.into())
}

const STREAM_ID_MASK: u32 = 0x7fff_ffff;

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Encodes frames; owns the sending direction's header compression context,
/// so frames must be written in the order they were encoded.
#[derive(Debug)]
pub struct Encoder {
    headers: HeaderCompressor,
}

impl Encoder {
    /// A new encoder with a fresh compression context.
    pub fn new() -> Result<Self, HeaderError> {
        Ok(Encoder {
            headers: HeaderCompressor::new()?,
        })
    }

    fn control_header(
        out: &mut BytesMut,
        ty: u16,
        flags: u8,
        len: usize,
    ) -> Result<(), FrameError> {
        if len > MAX_LENGTH {
            return Err(session_err(format!(
                "control frame of {len} bytes is too long"
            )));
        }
        out.put_u16(0x8000 | VERSION);
        out.put_u16(ty);
        // len <= MAX_LENGTH was checked: fits in 24 bits.
        out.put_u32((u32::from(flags) << 24) | len as u32);
        Ok(())
    }

    fn check_id(id: u32, zero_ok: bool) -> Result<(), FrameError> {
        if id > STREAM_ID_MASK || (id == 0 && !zero_ok) {
            return Err(session_err(format!("invalid stream id {id}")));
        }
        Ok(())
    }

    fn header_block(&mut self, headers: &Headers) -> Result<Vec<u8>, FrameError> {
        let raw = header::encode_block(headers).map_err(|e| session_err(e.to_string()))?;
        let mut z = Vec::with_capacity(raw.len() / 2 + 64);
        self.headers
            .compress(&raw, &mut z)
            .map_err(|e| session_err(e.to_string()))?;
        Ok(z)
    }

    /// Appends the wire form of `frame` to `out`.
    pub fn encode(&mut self, frame: &Frame, out: &mut BytesMut) -> Result<(), FrameError> {
        match frame {
            Frame::Data {
                stream_id,
                flags,
                data,
            } => {
                Self::check_id(*stream_id, false)?;
                if data.len() > MAX_LENGTH {
                    return Err(session_err(format!(
                        "data frame of {} bytes is too long",
                        data.len()
                    )));
                }
                out.reserve(8 + data.len());
                out.put_u32(*stream_id);
                out.put_u32((u32::from(*flags) << 24) | data.len() as u32);
                out.put_slice(data);
            }
            Frame::SynStream {
                stream_id,
                associated_to,
                priority,
                slot,
                flags,
                headers,
            } => {
                Self::check_id(*stream_id, false)?;
                Self::check_id(*associated_to, true)?;
                let block = self.header_block(headers)?;
                Self::control_header(out, kind::SYN_STREAM, *flags, 10 + block.len())?;
                out.put_u32(*stream_id);
                out.put_u32(*associated_to);
                out.put_u8((priority & 0x7) << 5);
                out.put_u8(*slot);
                out.put_slice(&block);
            }
            Frame::SynReply {
                stream_id,
                flags,
                headers,
            }
            | Frame::Headers {
                stream_id,
                flags,
                headers,
            } => {
                Self::check_id(*stream_id, false)?;
                let ty = if matches!(frame, Frame::SynReply { .. }) {
                    kind::SYN_REPLY
                } else {
                    kind::HEADERS
                };
                let block = self.header_block(headers)?;
                Self::control_header(out, ty, *flags, 4 + block.len())?;
                out.put_u32(*stream_id);
                out.put_slice(&block);
            }
            Frame::RstStream { stream_id, status } => {
                Self::check_id(*stream_id, false)?;
                Self::control_header(out, kind::RST_STREAM, 0, 8)?;
                out.put_u32(*stream_id);
                out.put_u32(*status);
            }
            Frame::Settings { flags, entries } => {
                Self::control_header(out, kind::SETTINGS, *flags, 4 + 8 * entries.len())?;
                out.put_u32(entries.len() as u32);
                for e in entries {
                    out.put_u32((u32::from(e.flags) << 24) | (e.id & 0x00ff_ffff));
                    out.put_u32(e.value);
                }
            }
            Frame::Ping { id } => {
                Self::control_header(out, kind::PING, 0, 4)?;
                out.put_u32(*id);
            }
            Frame::GoAway {
                last_good_stream_id,
                status,
            } => {
                Self::check_id(*last_good_stream_id, true)?;
                Self::control_header(out, kind::GOAWAY, 0, 8)?;
                out.put_u32(*last_good_stream_id);
                out.put_u32(*status);
            }
            Frame::WindowUpdate { stream_id, delta } => {
                Self::check_id(*stream_id, true)?;
                if *delta == 0 || *delta > STREAM_ID_MASK {
                    return Err(session_err(format!("invalid window delta {delta}")));
                }
                Self::control_header(out, kind::WINDOW_UPDATE, 0, 8)?;
                out.put_u32(*stream_id);
                out.put_u32(*delta);
            }
        }
        Ok(())
    }
}

/// Decodes frames from a growing buffer; owns the receiving direction's
/// header decompression context.
#[derive(Debug, Default)]
pub struct Decoder {
    headers: HeaderDecompressor,
    /// The data frame being delivered: stream, flags, bytes still to come.
    data: Option<(u32, u8, usize)>,
}

impl Decoder {
    /// A new decoder with a fresh decompression context.
    pub fn new() -> Self {
        Decoder::default()
    }

    /// Takes the next frame (or data piece) off the front of `buf`;
    /// `Ok(None)` when more bytes are needed. After an error of kind
    /// [`FrameError::Session`] the decoder must not be used again.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        loop {
            if let Some((stream_id, flags, remaining)) = self.data {
                let take = remaining.min(buf.len()).min(MAX_DATA_CHUNK);
                if take == 0 {
                    return Ok(None);
                }
                let data = buf.split_to(take).freeze();
                let left = remaining - take;
                let flags = if left == 0 {
                    self.data = None;
                    flags
                } else {
                    self.data = Some((stream_id, flags, left));
                    flags & !FLAG_FIN
                };
                return Ok(Some(Frame::Data {
                    stream_id,
                    flags,
                    data,
                }));
            }
            if buf.len() < 8 {
                return Ok(None);
            }
            let w0 = be32(buf, 0);
            let w1 = be32(buf, 4);
            let flags = (w1 >> 24) as u8;
            let len = (w1 & 0x00ff_ffff) as usize;
            if w0 & 0x8000_0000 == 0 {
                let stream_id = w0 & STREAM_ID_MASK;
                if stream_id == 0 {
                    return Err(session_err("DATA frame on stream 0"));
                }
                buf.advance(8);
                if len == 0 {
                    return Ok(Some(Frame::Data {
                        stream_id,
                        flags,
                        data: Bytes::new(),
                    }));
                }
                self.data = Some((stream_id, flags, len));
                continue;
            }
            let version = ((w0 >> 16) & 0x7fff) as u16;
            let ty = (w0 & 0xffff) as u16;
            if version != VERSION {
                return Err(session_err(format!(
                    "unsupported SPDY version {version} (control frame type {ty})"
                )));
            }
            if len > MAX_CONTROL_FRAME {
                return Err(session_err(format!(
                    "control frame type {ty} of {len} bytes exceeds the {MAX_CONTROL_FRAME}-byte limit"
                )));
            }
            if buf.len() < 8 + len {
                buf.reserve(8 + len - buf.len());
                return Ok(None);
            }
            buf.advance(8);
            let body = buf.split_to(len);
            if let Some(frame) = self.control(ty, flags, &body)? {
                return Ok(Some(frame));
            }
            // An unknown control frame type: ignored, as the spec requires.
        }
    }

    /// Decompresses then parses a header block. Decompression failures are
    /// fatal (the shared zlib context is lost), parse failures are not.
    fn block(&mut self, stream_id: u32, block: &[u8]) -> Result<Headers, FrameError> {
        let raw = self
            .headers
            .decompress(block)
            .map_err(|e| session_err(e.to_string()))?;
        if stream_id == 0 {
            return Err(session_err("stream id 0 in a stream frame"));
        }
        header::parse_block(&raw).map_err(|e| FrameError::Stream {
            stream_id,
            status: rst::PROTOCOL_ERROR,
            msg: e.to_string(),
        })
    }

    fn control(&mut self, ty: u16, flags: u8, b: &[u8]) -> Result<Option<Frame>, FrameError> {
        let exact = |n: usize, name: &str| {
            if b.len() == n {
                Ok(())
            } else {
                Err(session_err(format!(
                    "{name} frame of length {} (want {n})",
                    b.len()
                )))
            }
        };
        let at_least = |n: usize, name: &str| {
            if b.len() >= n {
                Ok(())
            } else {
                Err(session_err(format!(
                    "{name} frame of length {} (want at least {n})",
                    b.len()
                )))
            }
        };
        let frame = match ty {
            kind::SYN_STREAM => {
                at_least(10, "SYN_STREAM")?;
                let stream_id = be32(b, 0) & STREAM_ID_MASK;
                let associated_to = be32(b, 4) & STREAM_ID_MASK;
                let priority = b[8] >> 5;
                let slot = b[9];
                let headers = self.block(stream_id, &b[10..])?;
                Frame::SynStream {
                    stream_id,
                    associated_to,
                    priority,
                    slot,
                    flags,
                    headers,
                }
            }
            kind::SYN_REPLY => {
                at_least(4, "SYN_REPLY")?;
                let stream_id = be32(b, 0) & STREAM_ID_MASK;
                let headers = self.block(stream_id, &b[4..])?;
                Frame::SynReply {
                    stream_id,
                    flags,
                    headers,
                }
            }
            kind::HEADERS => {
                at_least(4, "HEADERS")?;
                let stream_id = be32(b, 0) & STREAM_ID_MASK;
                let headers = self.block(stream_id, &b[4..])?;
                Frame::Headers {
                    stream_id,
                    flags,
                    headers,
                }
            }
            kind::RST_STREAM => {
                exact(8, "RST_STREAM")?;
                let stream_id = be32(b, 0) & STREAM_ID_MASK;
                let status = be32(b, 4);
                if stream_id == 0 {
                    return Err(session_err("RST_STREAM on stream 0"));
                }
                if status == 0 {
                    return Err(session_err(format!(
                        "RST_STREAM with status 0 on stream {stream_id}"
                    )));
                }
                Frame::RstStream { stream_id, status }
            }
            kind::SETTINGS => {
                at_least(4, "SETTINGS")?;
                let n = be32(b, 0) as usize;
                if n > (b.len() - 4) / 8 || b.len() != 4 + 8 * n {
                    return Err(session_err(format!(
                        "SETTINGS of {n} entries in {} bytes",
                        b.len()
                    )));
                }
                let entries = (0..n)
                    .map(|i| {
                        let w = be32(b, 4 + 8 * i);
                        Setting {
                            flags: (w >> 24) as u8,
                            id: w & 0x00ff_ffff,
                            value: be32(b, 8 + 8 * i),
                        }
                    })
                    .collect();
                Frame::Settings { flags, entries }
            }
            kind::PING => {
                exact(4, "PING")?;
                Frame::Ping { id: be32(b, 0) }
            }
            kind::GOAWAY => {
                exact(8, "GOAWAY")?;
                Frame::GoAway {
                    last_good_stream_id: be32(b, 0) & STREAM_ID_MASK,
                    status: be32(b, 4),
                }
            }
            kind::WINDOW_UPDATE => {
                exact(8, "WINDOW_UPDATE")?;
                let stream_id = be32(b, 0) & STREAM_ID_MASK;
                let delta = be32(b, 4) & STREAM_ID_MASK;
                if delta == 0 {
                    if stream_id == 0 {
                        return Err(session_err("session WINDOW_UPDATE with delta 0"));
                    }
                    return Err(FrameError::Stream {
                        stream_id,
                        status: rst::PROTOCOL_ERROR,
                        msg: "WINDOW_UPDATE with delta 0".into(),
                    });
                }
                Frame::WindowUpdate { stream_id, delta }
            }
            _ => return Ok(None),
        };
        Ok(Some(frame))
    }
}
