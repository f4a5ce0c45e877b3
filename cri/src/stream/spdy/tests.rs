//! Unit tests of the SPDY layer: frames, header compression (against bytes
//! produced by Go's spdystream), sessions over in-memory pipes.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};

use super::frame::{self, goaway, rst, Decoder, Encoder, Frame, FrameError, Setting};
use super::header::{
    self, HeaderCompressor, HeaderDecompressor, HeaderError, DICTIONARY, DICTIONARY_ID,
};
use super::{Config, Session, SpdyError};

/// Frames written by spdystream 0.2.0's framer (Go's compress/zlib with
/// the SPDY dictionary), from `cri/tests/spdy_interop/client.go -mode
/// dump`: SYN_STREAM 1 FIN {streamType: stdin, requestID: 0, port: 8080},
/// SYN_STREAM 3 priority 2 {streamType: stdout, X-Multi: [a, b]},
/// SYN_REPLY 2 {}, DATA 3 FIN "payload" — one zlib stream across the
/// three header blocks.
const GO_FRAMES: &str = "800300010100003e0000000100000000000078f9e3c6a7c202253a703a2b294a4dcc851625acc5252999a0b4c9590489b64c507266348014d445e03c6161606100000000ffff80030001000000290000000300000000400002652d0ccd6cc52529f9e0529cbd4237b734a724135cd4322401000000ffff800300020000000e000000026260606000000000ffff00000003010000077061796c6f6164";

fn h(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect()
}

fn sorted(mut v: Vec<(String, String)>) -> Vec<(String, String)> {
    v.sort();
    v
}

fn decode_all(dec: &mut Decoder, buf: &mut BytesMut) -> Result<Vec<Frame>, FrameError> {
    let mut out = Vec::new();
    while let Some(f) = dec.decode(buf)? {
        out.push(f);
    }
    Ok(out)
}

fn adler32(data: &[u8]) -> u32 {
    let (mut a, mut b) = (1u32, 0u32);
    for &x in data {
        a = (a + u32::from(x)) % 65521;
        b = (b + a) % 65521;
    }
    (b << 16) | a
}

#[test]
fn dictionary_is_the_spdy3_one() {
    assert_eq!(DICTIONARY.len(), 1423);
    assert_eq!(adler32(DICTIONARY), DICTIONARY_ID);
    assert!(DICTIONARY.starts_with(b"\0\0\0\x07options\0\0\0\x04head"));
    assert!(DICTIONARY.ends_with(b"charset=iso-8859-1,utf-,*,enq=0."));
}

#[test]
fn decodes_frames_written_by_spdystream() {
    let mut buf = BytesMut::from(&hex::decode(GO_FRAMES).unwrap()[..]);
    let frames = decode_all(&mut Decoder::new(), &mut buf).unwrap();
    assert!(buf.is_empty());
    assert_eq!(frames.len(), 4);
    match &frames[0] {
        Frame::SynStream {
            stream_id: 1,
            associated_to: 0,
            priority: 0,
            flags: frame::FLAG_FIN,
            headers,
            ..
        } => {
            assert_eq!(
                sorted(headers.clone()),
                h(&[
                    ("port", "8080"),
                    ("requestid", "0"),
                    ("streamtype", "stdin")
                ])
            );
        }
        other => panic!("{other:?}"),
    }
    match &frames[1] {
        Frame::SynStream {
            stream_id: 3,
            priority: 2,
            flags: 0,
            headers,
            ..
        } => {
            assert_eq!(
                sorted(headers.clone()),
                h(&[("streamtype", "stdout"), ("x-multi", "a"), ("x-multi", "b")])
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        frames[2],
        Frame::SynReply {
            stream_id: 2,
            flags: 0,
            headers: vec![]
        }
    );
    assert_eq!(
        frames[3],
        Frame::Data {
            stream_id: 3,
            flags: frame::FLAG_FIN,
            data: Bytes::from_static(b"payload")
        }
    );
}

#[test]
fn header_blocks_round_trip_through_one_context() {
    let mut c = HeaderCompressor::new().unwrap();
    let mut d = HeaderDecompressor::new();
    let blocks = [
        h(&[("streamtype", "stdin"), ("requestid", "7")]),
        h(&[
            ("streamtype", "stdout"),
            ("X-Multi", "a"),
            ("x-multi", "b"),
            ("empty", ""),
        ]),
        // The first block again, while it is still in deflate's 32 KiB
        // window (after the 100 KB block below it would not be).
        h(&[("streamtype", "stdin"), ("requestid", "7")]),
        vec![],
        h(&[("big", &"v".repeat(100_000))]),
    ];
    let mut sizes = Vec::new();
    for block in &blocks {
        let raw = header::encode_block(block).unwrap();
        let mut z = Vec::new();
        c.compress(&raw, &mut z).unwrap();
        // Every block ends with a sync flush: decodable on its own.
        assert!(z.ends_with(&[0, 0, 0xff, 0xff]), "{z:02x?}");
        sizes.push(z.len());
        let back = header::parse_block(&d.decompress(&z).unwrap()).unwrap();
        let want: Vec<_> = block
            .iter()
            .map(|(n, v)| (n.to_ascii_lowercase(), v.clone()))
            .collect();
        assert_eq!(back, want);
    }
    // The repeated block compresses to a back-reference: the context
    // really continues across blocks.
    assert!(sizes[2] < sizes[0], "{sizes:?}");
}

#[test]
fn header_block_validation() {
    let block = |pairs: &[(&[u8], &[u8])], count: u32| {
        let mut b = count.to_be_bytes().to_vec();
        for (n, v) in pairs {
            b.extend_from_slice(&(n.len() as u32).to_be_bytes());
            b.extend_from_slice(n);
            b.extend_from_slice(&(v.len() as u32).to_be_bytes());
            b.extend_from_slice(v);
        }
        b
    };
    assert!(header::parse_block(&block(&[(b"a", b"1")], 1)).is_ok());
    for bad in [
        block(&[(b"A", b"1")], 1),
        block(&[(b"a", b"1"), (b"a", b"2")], 2),
        block(&[(b"", b"1")], 1),
        block(&[(b"a", b"1")], 2),
        block(&[(b"a", b"1")], u32::MAX),
        block(&[(b"a", b"\xff")], 1),
        [block(&[(b"a", b"1")], 1), vec![0]].concat(),
        vec![0, 0],
        vec![0, 0, 0, 1, 0xff, 0xff, 0xff, 0xff],
    ] {
        assert!(
            matches!(header::parse_block(&bad), Err(HeaderError::Malformed(_))),
            "{bad:?}"
        );
    }
    assert!(header::encode_block(&h(&[("", "x")])).is_err());
    assert!(header::encode_block(&h(&[("a\0b", "x")])).is_err());
    // Garbage is a zlib error, never a panic.
    assert!(matches!(
        HeaderDecompressor::new().decompress(b"not zlib at all"),
        Err(HeaderError::Zlib(_))
    ));
    // A stream with another preset dictionary.
    assert!(HeaderDecompressor::new()
        .decompress(&[0x78, 0xbb, 0, 0, 0, 1, 0])
        .is_err());
}

fn all_frames() -> Vec<Frame> {
    vec![
        Frame::SynStream {
            stream_id: 1,
            associated_to: 0,
            priority: 3,
            slot: 0,
            flags: frame::FLAG_FIN | frame::FLAG_UNIDIRECTIONAL,
            headers: h(&[("streamtype", "stdin"), ("port", "80")]),
        },
        Frame::SynReply {
            stream_id: 1,
            flags: 0,
            headers: vec![],
        },
        Frame::Headers {
            stream_id: 1,
            flags: frame::FLAG_FIN,
            headers: h(&[("x", "1"), ("x", "2")]),
        },
        Frame::Data {
            stream_id: 1,
            flags: 0,
            data: Bytes::from_static(b"hello"),
        },
        Frame::Data {
            stream_id: 0x7fff_ffff,
            flags: frame::FLAG_FIN,
            data: Bytes::new(),
        },
        Frame::RstStream {
            stream_id: 5,
            status: rst::CANCEL,
        },
        Frame::Settings {
            flags: frame::FLAG_SETTINGS_CLEAR,
            entries: vec![
                Setting {
                    flags: 1,
                    id: frame::SETTINGS_INITIAL_WINDOW_SIZE,
                    value: 12345,
                },
                Setting {
                    flags: 0,
                    id: frame::SETTINGS_MAX_CONCURRENT_STREAMS,
                    value: 100,
                },
            ],
        },
        Frame::Settings {
            flags: 0,
            entries: vec![],
        },
        Frame::Ping { id: 0xdead_beef },
        Frame::GoAway {
            last_good_stream_id: 9,
            status: goaway::PROTOCOL_ERROR,
        },
        Frame::WindowUpdate {
            stream_id: 0,
            delta: 1,
        },
        Frame::WindowUpdate {
            stream_id: 3,
            delta: 0x7fff_ffff,
        },
        Frame::SynStream {
            stream_id: 3,
            associated_to: 1,
            priority: 7,
            slot: 9,
            flags: 0,
            headers: h(&[("streamtype", "stdin"), ("port", "80")]),
        },
    ]
}

#[test]
fn frames_round_trip() {
    let mut enc = Encoder::new().unwrap();
    let mut wire = BytesMut::new();
    for f in all_frames() {
        enc.encode(&f, &mut wire).unwrap();
    }
    let mut buf = wire.clone();
    assert_eq!(
        decode_all(&mut Decoder::new(), &mut buf).unwrap(),
        all_frames()
    );
    assert!(buf.is_empty());

    // Byte by byte: the decoder waits for whole control frames and hands
    // data out as it comes, FIN on the last piece only.
    let mut dec = Decoder::new();
    let mut buf = BytesMut::new();
    let mut got = Vec::new();
    for b in wire.iter() {
        buf.extend_from_slice(&[*b]);
        got.extend(decode_all(&mut dec, &mut buf).unwrap());
    }
    let mut merged: Vec<Frame> = Vec::new();
    for f in got {
        match (merged.last_mut(), f) {
            (
                Some(Frame::Data {
                    stream_id: a,
                    flags: fa,
                    data: da,
                }),
                Frame::Data {
                    stream_id: b,
                    flags: fb,
                    data: db,
                },
            ) if *a == b && *fa & frame::FLAG_FIN == 0 && !da.is_empty() => {
                *da = [da.as_ref(), db.as_ref()].concat().into();
                *fa = fb;
            }
            (_, f) => merged.push(f),
        }
    }
    assert_eq!(merged, all_frames());
}

#[test]
fn large_data_frames_are_delivered_in_pieces() {
    let data: Vec<u8> = (0..300_000u32).map(|i| i as u8).collect();
    let mut enc = Encoder::new().unwrap();
    let mut wire = BytesMut::new();
    enc.encode(
        &Frame::Data {
            stream_id: 7,
            flags: frame::FLAG_FIN,
            data: data.clone().into(),
        },
        &mut wire,
    )
    .unwrap();
    let frames = decode_all(&mut Decoder::new(), &mut wire).unwrap();
    assert!(frames.len() >= 300_000 / frame::MAX_DATA_CHUNK);
    let mut all = Vec::new();
    for (i, f) in frames.iter().enumerate() {
        let Frame::Data {
            stream_id: 7,
            flags,
            data,
        } = f
        else {
            panic!("{f:?}")
        };
        assert!(data.len() <= frame::MAX_DATA_CHUNK);
        assert_eq!(*flags & frame::FLAG_FIN != 0, i == frames.len() - 1);
        all.extend_from_slice(data);
    }
    assert_eq!(all, data);
}

fn decode_bytes(bytes: &[u8]) -> Result<Vec<Frame>, FrameError> {
    decode_all(&mut Decoder::new(), &mut BytesMut::from(bytes))
}

fn control(ty: u16, flags: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![0x80, 3];
    v.extend_from_slice(&ty.to_be_bytes());
    v.push(flags);
    v.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    v.extend_from_slice(body);
    v
}

#[test]
fn malformed_frames_are_errors_not_panics() {
    let session = |r: Result<Vec<Frame>, FrameError>| matches!(r, Err(FrameError::Session(_)));
    // Bad version.
    let mut v2 = control(frame::kind::PING, 0, &[0, 0, 0, 1]);
    v2[1] = 2;
    assert!(session(decode_bytes(&v2)));
    // Oversized control frame: refused from its header, before the body.
    assert!(session(decode_bytes(&[0x80, 3, 0, 1, 0, 0xff, 0xff, 0xff])));
    // Truncated frames just need more bytes.
    let ping = control(frame::kind::PING, 0, &[0, 0, 0, 1]);
    assert_eq!(decode_bytes(&ping[..7]).unwrap(), vec![]);
    assert_eq!(decode_bytes(&ping[..10]).unwrap(), vec![]);
    // Wrong fixed lengths.
    assert!(session(decode_bytes(&control(
        frame::kind::PING,
        0,
        &[0, 0, 1]
    ))));
    assert!(session(decode_bytes(&control(
        frame::kind::RST_STREAM,
        0,
        &[0, 0, 0, 1, 0, 0, 0, 5, 0]
    ))));
    assert!(session(decode_bytes(&control(
        frame::kind::GOAWAY,
        0,
        &[0, 0, 0, 1]
    ))));
    assert!(session(decode_bytes(&control(
        frame::kind::WINDOW_UPDATE,
        0,
        &[0, 0, 0, 1, 0, 0, 0]
    ))));
    assert!(session(decode_bytes(&control(
        frame::kind::SETTINGS,
        0,
        &[0, 0, 0, 2, 0, 0, 0, 7, 0, 0, 0, 1]
    ))));
    assert!(session(decode_bytes(&control(
        frame::kind::SETTINGS,
        0,
        &[0xff, 0xff, 0xff, 0xff]
    ))));
    assert!(session(decode_bytes(&control(
        frame::kind::SYN_STREAM,
        0,
        &[0, 0, 0, 1, 0, 0]
    ))));
    // Stream 0 where a stream is required; RST status 0.
    assert!(session(decode_bytes(&[0, 0, 0, 0, 0, 0, 0, 1, 0])));
    assert!(session(decode_bytes(&control(
        frame::kind::RST_STREAM,
        0,
        &[0, 0, 0, 0, 0, 0, 0, 5]
    ))));
    assert!(session(decode_bytes(&control(
        frame::kind::RST_STREAM,
        0,
        &[0, 0, 0, 1, 0, 0, 0, 0]
    ))));
    // A header block that is not zlib: the session's context is lost.
    assert!(session(decode_bytes(&control(
        frame::kind::SYN_STREAM,
        0,
        b"\0\0\0\x01\0\0\0\0\0\0garbage"
    ))));
    // A well-compressed block with an uppercase name: only the stream.
    let mut c = HeaderCompressor::new().unwrap();
    let mut z = Vec::new();
    let mut raw = 1u32.to_be_bytes().to_vec();
    raw.extend_from_slice(&[0, 0, 0, 1, b'A', 0, 0, 0, 1, b'x']);
    c.compress(&raw, &mut z).unwrap();
    let mut body = vec![0, 0, 0, 5, 0, 0, 0, 0, 0, 0];
    body.extend_from_slice(&z);
    let mut buf = BytesMut::from(&control(frame::kind::SYN_STREAM, 0, &body)[..]);
    buf.extend_from_slice(&ping);
    let mut dec = Decoder::new();
    assert!(matches!(
        dec.decode(&mut buf),
        Err(FrameError::Stream {
            stream_id: 5,
            status: rst::PROTOCOL_ERROR,
            ..
        })
    ));
    assert_eq!(dec.decode(&mut buf).unwrap(), Some(Frame::Ping { id: 1 }));
    // WINDOW_UPDATE of 0: a stream error (session error on stream 0).
    assert!(matches!(
        decode_bytes(&control(
            frame::kind::WINDOW_UPDATE,
            0,
            &[0, 0, 0, 3, 0, 0, 0, 0]
        )),
        Err(FrameError::Stream { stream_id: 3, .. })
    ));
    assert!(session(decode_bytes(&control(
        frame::kind::WINDOW_UPDATE,
        0,
        &[0, 0, 0, 0, 0, 0, 0, 0]
    ))));
    // Unknown control types (CREDENTIAL, NOOP, ...) are skipped.
    let mut skip = control(10, 0, b"whatever");
    skip.extend_from_slice(&ping);
    assert_eq!(decode_bytes(&skip).unwrap(), vec![Frame::Ping { id: 1 }]);
    // Encoder refuses what it cannot represent.
    let mut enc = Encoder::new().unwrap();
    let mut out = BytesMut::new();
    assert!(enc
        .encode(
            &Frame::Data {
                stream_id: 0,
                flags: 0,
                data: Bytes::new()
            },
            &mut out
        )
        .is_err());
    assert!(enc
        .encode(
            &Frame::RstStream {
                stream_id: 0x8000_0000,
                status: 1
            },
            &mut out
        )
        .is_err());
    assert!(enc
        .encode(
            &Frame::WindowUpdate {
                stream_id: 1,
                delta: 0
            },
            &mut out
        )
        .is_err());
}

#[test]
fn random_input_never_panics() {
    let mut seed = 0x1234_5678_9abc_def0u64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut valid = BytesMut::new();
    let mut enc = Encoder::new().unwrap();
    for f in all_frames() {
        enc.encode(&f, &mut valid).unwrap();
    }
    for round in 0..3000 {
        let mut bytes = if round % 2 == 0 {
            let n = (next() % 300) as usize;
            (0..n).map(|_| next() as u8).collect::<Vec<u8>>()
        } else {
            // Valid frames with a few bytes flipped.
            let mut v = valid.to_vec();
            for _ in 0..(1 + next() % 4) {
                let i = (next() as usize) % v.len();
                v[i] ^= 1 << (next() % 8);
            }
            v
        };
        if round % 3 == 0 && !bytes.is_empty() {
            bytes[0] |= 0x80;
            if bytes.len() > 1 {
                bytes[1] = 3;
            }
        }
        let mut dec = Decoder::new();
        let mut buf = BytesMut::from(&bytes[..]);
        while let Ok(Some(_)) = dec.decode(&mut buf) {}
    }
}

// ---------------------------------------------------------------------
// Sessions over in-memory pipes.

fn pair_with(client: Config, server: Config) -> (Session, Session) {
    let (a, b) = tokio::io::duplex(64 * 1024);
    (
        Session::with_config(a, false, client),
        Session::with_config(b, true, server),
    )
}

fn pair() -> (Session, Session) {
    pair_with(Config::default(), Config::default())
}

async fn timeout<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(30), f)
        .await
        .expect("timed out")
}

fn pattern(n: usize, seed: u32) -> Vec<u8> {
    (0..n)
        .map(|i| {
            (i as u32)
                .wrapping_mul(2_654_435_761)
                .wrapping_add(seed)
                .rotate_right(13) as u8
        })
        .collect()
}

#[tokio::test]
async fn open_accept_half_close() {
    let (client, mut server) = pair();
    let srv = tokio::spawn(async move {
        let mut s = server.accept().await.unwrap();
        assert_eq!(s.id(), 1);
        assert_eq!(s.header("streamtype"), Some("stdin"));
        assert_eq!(s.header("StreamType"), Some("stdin"));
        assert_eq!(s.header("requestid"), Some("42"));
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"hello");
        // Our side is still open after the peer's FIN.
        s.write_all(b"HELLO back").await.unwrap();
        s.shutdown().await.unwrap();
        assert!(s.write_all(b"more").await.is_err());
        // EOF stays EOF.
        assert_eq!(s.read(&mut [0; 8]).await.unwrap(), 0);
        server
    });
    let mut c = timeout(client.open(&[("streamType", "stdin"), ("requestID", "42")]))
        .await
        .unwrap();
    assert_eq!(c.header("streamtype"), Some("stdin"));
    c.write_all(b"hello").await.unwrap();
    c.shutdown().await.unwrap();
    let mut back = Vec::new();
    timeout(c.read_to_end(&mut back)).await.unwrap();
    assert_eq!(back, b"HELLO back");
    let _server = srv.await.unwrap();
    // A second stream gets the next client id.
    let c2 = timeout(client.open(&[("streamtype", "stdout")]))
        .await
        .unwrap();
    assert_eq!(c2.id(), 3);
    assert!(timeout(client.ping()).await.is_ok());
}

#[tokio::test]
async fn many_concurrent_streams() {
    let (client, mut server) = pair();
    let srv = tokio::spawn(async move {
        let mut tasks = Vec::new();
        while let Some(s) = server.accept().await {
            tasks.push(tokio::spawn(async move {
                let (mut r, mut w) = s.into_split();
                tokio::io::copy(&mut r, &mut w).await.unwrap();
                w.shutdown().await.unwrap();
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    });
    let client = std::sync::Arc::new(client);
    let mut tasks = Vec::new();
    for i in 0..64u32 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let s = client
                .open(&[("streamtype", &format!("s{i}"))])
                .await
                .unwrap();
            assert_eq!(s.header("streamtype"), Some(format!("s{i}").as_str()));
            let data = pattern(100_000 + i as usize, i);
            let (mut r, mut w) = s.into_split();
            let d2 = data.clone();
            let wr = tokio::spawn(async move {
                w.write_all(&d2).await.unwrap();
                w.shutdown().await.unwrap();
            });
            let mut back = Vec::new();
            r.read_to_end(&mut back).await.unwrap();
            wr.await.unwrap();
            assert_eq!(back, data);
        }));
    }
    for t in tasks {
        timeout(t).await.unwrap();
    }
    timeout(client.close()).await;
    timeout(srv).await.unwrap();
}

/// 10 MiB each way on one stream with 16 KiB stream windows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_mib_both_ways_with_small_windows() {
    let cfg = Config {
        initial_window: 16 * 1024,
        session_window: 64 * 1024,
        ..Config::default()
    };
    let (client, mut server) = pair_with(cfg.clone(), cfg);
    const N: usize = 10 * 1024 * 1024;
    let srv = tokio::spawn(async move {
        let s = server.accept().await.unwrap();
        let (mut r, mut w) = s.into_split();
        let send = tokio::spawn(async move {
            w.write_all(&pattern(N, 2)).await.unwrap();
            w.shutdown().await.unwrap();
        });
        let mut got = Vec::new();
        r.read_to_end(&mut got).await.unwrap();
        assert!(got == pattern(N, 1), "server received corrupted data");
        send.await.unwrap();
        server
    });
    let s = timeout(client.open(&[("streamtype", "data")]))
        .await
        .unwrap();
    let (mut r, mut w) = s.into_split();
    let send = tokio::spawn(async move {
        w.write_all(&pattern(N, 1)).await.unwrap();
        w.shutdown().await.unwrap();
    });
    let mut got = Vec::new();
    timeout(r.read_to_end(&mut got)).await.unwrap();
    assert!(got == pattern(N, 2), "client received corrupted data");
    timeout(send).await.unwrap();
    let server = timeout(srv).await.unwrap();
    // Both ends enforced flow control (they announced it to each other).
    assert!(client.probe().peer_fc() && server.probe().peer_fc());
}

/// A receiver that does not read stalls the sender at the window: nothing
/// is buffered beyond what was advertised.
#[tokio::test]
async fn flow_control_bounds_buffering() {
    let window = 16 * 1024;
    let cfg = Config {
        initial_window: window,
        ..Config::default()
    };
    let (client, mut server) = pair_with(cfg.clone(), cfg);
    let s = timeout(client.open(&[("streamtype", "data")]))
        .await
        .unwrap();
    let mut srv_stream = timeout(server.accept()).await.unwrap();
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let sent2 = sent.clone();
    let writer = tokio::spawn(async move {
        let mut s = s;
        let chunk = vec![7u8; 4096];
        for _ in 0..(1024 * 1024 / 4096) {
            s.write_all(&chunk).await.unwrap();
            sent2.fetch_add(chunk.len(), std::sync::atomic::Ordering::SeqCst);
        }
        s.shutdown().await.unwrap();
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stalled_at = sent.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        stalled_at <= window as usize,
        "sender got {stalled_at} bytes out with a {window}-byte window"
    );
    let buffered = server.probe().recv_len(1).unwrap();
    assert!(buffered <= window as usize, "receiver buffered {buffered}");
    // Reading lets it all through.
    let mut got = Vec::new();
    timeout(srv_stream.read_to_end(&mut got)).await.unwrap();
    assert_eq!(got.len(), 1024 * 1024);
    timeout(writer).await.unwrap();
}

/// A raw peer: frames by hand, like a foreign implementation.
struct Raw {
    io: DuplexStream,
    enc: Encoder,
    dec: Decoder,
    buf: BytesMut,
}

impl Raw {
    fn new(io: DuplexStream) -> Raw {
        Raw {
            io,
            enc: Encoder::new().unwrap(),
            dec: Decoder::new(),
            buf: BytesMut::new(),
        }
    }

    async fn send(&mut self, f: Frame) {
        let mut out = BytesMut::new();
        self.enc.encode(&f, &mut out).unwrap();
        self.io.write_all(&out).await.unwrap();
    }

    async fn recv(&mut self) -> Option<Frame> {
        loop {
            if let Some(f) = self.dec.decode(&mut self.buf).unwrap() {
                return Some(f);
            }
            if timeout(self.io.read_buf(&mut self.buf)).await.unwrap() == 0 {
                return None;
            }
        }
    }

    /// Frames until one matches.
    async fn recv_until(&mut self, mut want: impl FnMut(&Frame) -> bool) -> Frame {
        loop {
            let f = self.recv().await.expect("connection closed");
            if want(&f) {
                return f;
            }
        }
    }
}

fn raw_server(cfg: Config) -> (Raw, Session) {
    let (a, b) = tokio::io::duplex(64 * 1024);
    (Raw::new(a), Session::with_config(b, true, cfg))
}

/// A peer without flow control (spdystream): it never sends SETTINGS or
/// WINDOW_UPDATE and writes 2 MiB on a 16 KiB window. Nothing is reset,
/// our buffering stays bounded (the connection is not read while the
/// stream is full), and everything arrives once the application reads.
#[tokio::test]
async fn peer_without_flow_control_gets_backpressure() {
    let window = 16 * 1024;
    let (mut raw, mut server) = raw_server(Config {
        initial_window: window,
        ..Config::default()
    });
    raw.send(Frame::SynStream {
        stream_id: 1,
        associated_to: 0,
        priority: 0,
        slot: 0,
        flags: 0,
        headers: h(&[("streamtype", "stdin")]),
    })
    .await;
    let data = pattern(2 * 1024 * 1024, 9);
    let mut out = BytesMut::new();
    for chunk in data.chunks(100_000) {
        raw.enc
            .encode(
                &Frame::Data {
                    stream_id: 1,
                    flags: 0,
                    data: Bytes::copy_from_slice(chunk),
                },
                &mut out,
            )
            .unwrap();
    }
    raw.enc
        .encode(
            &Frame::Data {
                stream_id: 1,
                flags: frame::FLAG_FIN,
                data: Bytes::new(),
            },
            &mut out,
        )
        .unwrap();
    let (mut rd, mut wr) = tokio::io::split(raw.io);
    let writer = tokio::spawn(async move {
        wr.write_all(&out).await.unwrap();
        wr
    });
    let mut s = timeout(server.accept()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!writer.is_finished(), "the peer's writes should be blocked");
    let buffered = server.probe().recv_len(1).unwrap();
    assert!(
        buffered <= window as usize + frame::MAX_DATA_CHUNK,
        "buffered {buffered}"
    );
    assert!(!server.probe().peer_fc());
    let mut got = Vec::new();
    timeout(s.read_to_end(&mut got)).await.unwrap();
    assert!(got == data);
    let _wr = timeout(writer).await.unwrap();
    // We sent SETTINGS, SYN_REPLY and WINDOW_UPDATEs (which spdystream
    // ignores), never a RST_STREAM.
    let mut buf = BytesMut::new();
    let mut dec = Decoder::new();
    let mut frames = Vec::new();
    while let Ok(Ok(n)) =
        tokio::time::timeout(Duration::from_millis(200), rd.read_buf(&mut buf)).await
    {
        if n == 0 {
            break;
        }
        frames.extend(decode_all(&mut dec, &mut buf).unwrap());
    }
    assert!(matches!(frames[0], Frame::Settings { .. }));
    assert!(frames
        .iter()
        .any(|f| matches!(f, Frame::SynReply { stream_id: 1, .. })));
    assert!(frames
        .iter()
        .any(|f| matches!(f, Frame::WindowUpdate { stream_id: 1, .. })));
    assert!(frames
        .iter()
        .any(|f| matches!(f, Frame::WindowUpdate { stream_id: 0, .. })));
    assert!(
        !frames.iter().any(|f| matches!(f, Frame::RstStream { .. })),
        "{frames:?}"
    );
}

/// A peer that announced flow control and then overruns a window is reset.
#[tokio::test]
async fn flow_control_violation_resets_the_stream() {
    let (mut raw, mut server) = raw_server(Config {
        initial_window: 1024,
        ..Config::default()
    });
    raw.send(Frame::Settings {
        flags: 0,
        entries: vec![],
    })
    .await;
    raw.send(Frame::SynStream {
        stream_id: 1,
        associated_to: 0,
        priority: 0,
        slot: 0,
        flags: 0,
        headers: vec![],
    })
    .await;
    raw.send(Frame::Data {
        stream_id: 1,
        flags: 0,
        data: vec![0; 2000].into(),
    })
    .await;
    let f = raw
        .recv_until(|f| matches!(f, Frame::RstStream { .. }))
        .await;
    assert_eq!(
        f,
        Frame::RstStream {
            stream_id: 1,
            status: rst::FLOW_CONTROL_ERROR
        }
    );
    let mut s = timeout(server.accept()).await.unwrap();
    let err = s.read(&mut [0; 10]).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset);
}

/// We honour the peer's windows: SETTINGS_INITIAL_WINDOW_SIZE, the session
/// window, WINDOW_UPDATE.
#[tokio::test]
async fn writer_honours_peer_windows() {
    let (mut raw, mut server) = raw_server(Config::default());
    raw.send(Frame::Settings {
        flags: 0,
        entries: vec![Setting {
            flags: 0,
            id: frame::SETTINGS_INITIAL_WINDOW_SIZE,
            value: 1000,
        }],
    })
    .await;
    raw.send(Frame::SynStream {
        stream_id: 1,
        associated_to: 0,
        priority: 0,
        slot: 0,
        flags: 0,
        headers: vec![],
    })
    .await;
    let s = timeout(server.accept()).await.unwrap();
    let writer = tokio::spawn(async move {
        let mut s = s;
        s.write_all(&[1u8; 5000]).await.unwrap();
        s.shutdown().await.unwrap();
        s
    });
    let mut received = 0;
    while received < 1000 {
        if let Frame::Data { data, .. } = raw.recv_until(|f| matches!(f, Frame::Data { .. })).await
        {
            received += data.len();
        }
    }
    assert_eq!(received, 1000);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!writer.is_finished());
    // More stream window: 4000 more; FIN follows.
    raw.send(Frame::WindowUpdate {
        stream_id: 1,
        delta: 4000,
    })
    .await;
    loop {
        match raw.recv_until(|f| matches!(f, Frame::Data { .. })).await {
            Frame::Data { data, flags, .. } => {
                received += data.len();
                if flags & frame::FLAG_FIN != 0 {
                    break;
                }
            }
            _ => unreachable!(),
        }
    }
    assert_eq!(received, 5000);
    timeout(writer).await.unwrap();
}

#[tokio::test]
async fn reset_both_ways() {
    let (client, mut server) = pair();
    let c = timeout(client.open(&[("streamtype", "a")])).await.unwrap();
    let mut s = timeout(server.accept()).await.unwrap();
    // Server resets: the client's read fails, and then its writes.
    s.reset();
    let (mut cr, mut cw) = c.into_split();
    let err = timeout(cr.read(&mut [0; 4])).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset);
    assert!(cw.write_all(b"x").await.is_err());
    // Our own side sees its reset too.
    assert!(s.read(&mut [0; 4]).await.is_err());
    assert!(s.write_all(b"x").await.is_err());
    // Client resets a second stream.
    let c2 = timeout(client.open(&[("streamtype", "b")])).await.unwrap();
    let mut s2 = timeout(server.accept()).await.unwrap();
    c2.reset();
    let err = timeout(s2.read(&mut [0; 4])).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset);
    // The session is unaffected.
    assert!(timeout(client.ping()).await.is_ok());
    let mut c3 = timeout(client.open(&[("streamtype", "c")])).await.unwrap();
    let mut s3 = timeout(server.accept()).await.unwrap();
    c3.write_all(b"ok").await.unwrap();
    c3.shutdown().await.unwrap();
    let mut got = Vec::new();
    timeout(s3.read_to_end(&mut got)).await.unwrap();
    assert_eq!(got, b"ok");
}

#[tokio::test]
async fn goaway_and_close() {
    let (client, mut server) = pair();
    let mut c = timeout(client.open(&[("streamtype", "a")])).await.unwrap();
    let mut s = timeout(server.accept()).await.unwrap();
    s.write_all(b"last words").await.unwrap();
    s.shutdown().await.unwrap();
    // Queued data goes out before the GOAWAY and the close.
    timeout(server.close()).await;
    assert!(server.is_closed());
    assert!(matches!(server.open(&[]).await, Err(SpdyError::Closed)));
    let mut got = Vec::new();
    timeout(c.read_to_end(&mut got)).await.unwrap();
    assert_eq!(got, b"last words");
    // The client saw GOAWAY then the connection go: no new streams.
    let mut client = client;
    assert!(timeout(client.accept()).await.is_none());
    assert!(client.open(&[]).await.is_err());
    assert!(c.write_all(b"x").await.is_err());
}

#[tokio::test]
async fn goaway_from_peer_refuses_new_streams() {
    let (mut raw, mut server) = raw_server(Config::default());
    raw.send(Frame::GoAway {
        last_good_stream_id: 0,
        status: goaway::OK,
    })
    .await;
    assert!(timeout(server.accept()).await.is_none());
    assert!(matches!(server.open(&[]).await, Err(SpdyError::GoAway)));
}

#[tokio::test]
async fn pings_are_echoed() {
    let (mut raw, _server) = raw_server(Config::default());
    raw.send(Frame::Ping { id: 7 }).await;
    assert_eq!(
        raw.recv_until(|f| matches!(f, Frame::Ping { .. })).await,
        Frame::Ping { id: 7 }
    );
    // A ping with our (server, even) parity is a reply, not echoed.
    raw.send(Frame::Ping { id: 8 }).await;
    raw.send(Frame::Ping { id: 9 }).await;
    assert_eq!(
        raw.recv_until(|f| matches!(f, Frame::Ping { .. })).await,
        Frame::Ping { id: 9 }
    );
}

async fn expect_protocol_error(bytes: &[u8]) {
    let (mut raw, mut server) = raw_server(Config::default());
    raw.io.write_all(bytes).await.unwrap();
    assert!(timeout(server.accept()).await.is_none());
    assert!(
        matches!(server.error(), Some(SpdyError::Protocol(_))),
        "{:?}",
        server.error()
    );
    let f = raw.recv_until(|f| matches!(f, Frame::GoAway { .. })).await;
    assert!(
        matches!(
            f,
            Frame::GoAway {
                status: goaway::PROTOCOL_ERROR,
                ..
            }
        ),
        "{f:?}"
    );
    // Then the connection closes.
    while raw.recv().await.is_some() {}
}

#[tokio::test]
async fn malformed_input_ends_the_session_with_goaway() {
    // Bad version.
    let mut v2 = control(frame::kind::PING, 0, &[0, 0, 0, 1]);
    v2[1] = 2;
    expect_protocol_error(&v2).await;
    // Oversized control frame.
    expect_protocol_error(&[0x80, 3, 0, 1, 0, 0xff, 0xff, 0xff]).await;
    // Header block that is not zlib.
    expect_protocol_error(&control(
        frame::kind::SYN_STREAM,
        0,
        b"\0\0\0\x01\0\0\0\0\0\0garbage",
    ))
    .await;
    // Wrong length.
    expect_protocol_error(&control(frame::kind::GOAWAY, 0, &[0, 0, 0, 1])).await;
}

#[tokio::test]
async fn bad_stream_ids_are_protocol_errors() {
    let syn = |id| Frame::SynStream {
        stream_id: id,
        associated_to: 0,
        priority: 0,
        slot: 0,
        flags: 0,
        headers: vec![],
    };
    // Even id from a client.
    let (mut raw, mut server) = raw_server(Config::default());
    raw.send(syn(2)).await;
    assert!(timeout(server.accept()).await.is_none());
    assert!(matches!(server.error(), Some(SpdyError::Protocol(_))));
    assert!(matches!(
        raw.recv_until(|f| matches!(f, Frame::GoAway { .. })).await,
        Frame::GoAway {
            status: goaway::PROTOCOL_ERROR,
            ..
        }
    ));
    // Not increasing.
    let (mut raw, mut server) = raw_server(Config::default());
    raw.send(syn(5)).await;
    raw.send(syn(3)).await;
    let first = timeout(server.accept()).await.unwrap();
    assert_eq!(first.id(), 5);
    assert!(timeout(server.accept()).await.is_none());
    assert!(matches!(
        raw.recv_until(|f| matches!(f, Frame::GoAway { .. })).await,
        Frame::GoAway {
            last_good_stream_id: 5,
            status: goaway::PROTOCOL_ERROR
        }
    ));
}

#[tokio::test]
async fn truncated_frame_then_eof() {
    let (mut raw, mut server) = raw_server(Config::default());
    raw.io
        .write_all(&control(frame::kind::PING, 0, &[0, 0, 0, 1])[..9])
        .await
        .unwrap();
    drop(raw);
    assert!(timeout(server.accept()).await.is_none());
    assert!(matches!(server.error(), Some(SpdyError::Protocol(_))));
}

#[tokio::test]
async fn peer_eof_after_fin_still_reads_to_the_end() {
    let (mut raw, mut server) = raw_server(Config::default());
    raw.send(Frame::SynStream {
        stream_id: 1,
        associated_to: 0,
        priority: 0,
        slot: 0,
        flags: 0,
        headers: vec![],
    })
    .await;
    raw.send(Frame::Data {
        stream_id: 1,
        flags: frame::FLAG_FIN,
        data: Bytes::from_static(b"bye"),
    })
    .await;
    raw.send(Frame::SynStream {
        stream_id: 3,
        associated_to: 0,
        priority: 0,
        slot: 0,
        flags: 0,
        headers: vec![],
    })
    .await;
    raw.send(Frame::Data {
        stream_id: 3,
        flags: 0,
        data: Bytes::from_static(b"cut"),
    })
    .await;
    drop(raw);
    let mut a = timeout(server.accept()).await.unwrap();
    let mut b = timeout(server.accept()).await.unwrap();
    let mut got = Vec::new();
    a.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"bye");
    // Stream 3 had no FIN: its data, then an error.
    let mut buf = [0u8; 3];
    b.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"cut");
    let err = timeout(b.read(&mut [0; 1])).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionAborted);
    assert!(timeout(server.accept()).await.is_none());
}

#[tokio::test]
async fn dropping_the_write_half_sends_fin() {
    let (client, mut server) = pair();
    let c = timeout(client.open(&[])).await.unwrap();
    let mut s = timeout(server.accept()).await.unwrap();
    let (mut r, mut w) = c.into_split();
    w.write_all(b"abc").await.unwrap();
    drop(w);
    let mut got = Vec::new();
    timeout(s.read_to_end(&mut got)).await.unwrap();
    assert_eq!(got, b"abc");
    s.write_all(b"still open").await.unwrap();
    drop(s);
    let mut back = Vec::new();
    timeout(r.read_to_end(&mut back)).await.unwrap();
    assert_eq!(back, b"still open");
}

#[tokio::test]
async fn streams_are_refused_once_the_session_handle_is_gone() {
    let (client, mut server) = pair();
    let c = timeout(client.open(&[])).await.unwrap();
    let s = timeout(server.accept()).await.unwrap();
    drop(server);
    // The accepted stream keeps the connection up; new ones are refused.
    assert!(matches!(
        timeout(client.open(&[])).await,
        Err(SpdyError::Reset(rst::REFUSED_STREAM))
    ));
    drop((c, s));
}

/// Dropping every handle sends GOAWAY, closes the connection and ends both
/// tasks of each side.
#[tokio::test]
async fn dropping_everything_ends_the_tasks() {
    let (client, mut server) = pair();
    let c = timeout(client.open(&[("a", "b")])).await.unwrap();
    let s = timeout(server.accept()).await.unwrap();
    let client_probe = client.probe();
    let server_probe = server.probe();
    drop((client, c, s));
    // The client side closed: the server sees the session end.
    assert!(timeout(server.accept()).await.is_none());
    drop(server);
    for probe in [client_probe, server_probe] {
        timeout(probe.wait_done()).await;
        // Only the probe's reference remains once both tasks are gone.
        for _ in 0..100 {
            if probe.refs() == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(probe.refs(), 1);
    }
}

/// A peer that never reads cannot keep a closing session alive forever.
#[tokio::test]
async fn close_gives_up_on_a_peer_that_does_not_read() {
    let (raw, server) = raw_server(Config {
        close_timeout: Duration::from_millis(200),
        ..Config::default()
    });
    let mut server = server;
    let _ = &mut server;
    let mut raw = raw;
    raw.send(Frame::SynStream {
        stream_id: 1,
        associated_to: 0,
        priority: 0,
        slot: 0,
        flags: 0,
        headers: vec![],
    })
    .await;
    let mut s = timeout(server.accept()).await.unwrap();
    // Fill the pipe (64 KiB) and our queue; the raw peer reads nothing.
    let w = tokio::spawn(async move {
        let _ = s.write_all(&vec![0u8; 2 * 1024 * 1024]).await;
        s
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    timeout(server.close()).await;
    let _ = timeout(w).await;
    drop(raw);
}

fn _assert_traits() {
    fn send_sync<T: Send + Sync + Unpin + 'static>() {}
    fn rw<T: AsyncRead + AsyncWrite>() {}
    send_sync::<super::Stream>();
    send_sync::<super::StreamReader>();
    send_sync::<super::StreamWriter>();
    send_sync::<Session>();
    rw::<super::Stream>();
}

/// A peer that floods PINGs without reading gets no unbounded queue: we
/// stop reading it, and all echoes arrive once it reads.
#[tokio::test]
async fn ping_flood_from_a_peer_that_does_not_read() {
    let (raw, _server) = raw_server(Config::default());
    let (mut rd, mut wr) = tokio::io::split(raw.io);
    let mut enc = raw.enc;
    const PINGS: u32 = 50_000;
    let flood = tokio::spawn(async move {
        let mut out = BytesMut::new();
        for i in 0..PINGS {
            enc.encode(&Frame::Ping { id: 2 * i + 1 }, &mut out)
                .unwrap();
        }
        wr.write_all(&out).await.unwrap();
        wr
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    // 50 000 pings = 600 KB: more than the pipes hold once our queue of
    // echoes is capped, so the flood is held back.
    assert!(!flood.is_finished());
    let mut buf = BytesMut::new();
    let mut dec = Decoder::new();
    let mut echoes = 0;
    while echoes < PINGS {
        assert!(timeout(rd.read_buf(&mut buf)).await.unwrap() > 0);
        while let Some(f) = dec.decode(&mut buf).unwrap() {
            if let Frame::Ping { id } = f {
                assert_eq!(id, 2 * echoes + 1);
                echoes += 1;
            }
        }
    }
    let _wr = timeout(flood).await.unwrap();
}
