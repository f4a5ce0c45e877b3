//! SPDY/3.1 interop with an implementation we did not write:
//! `github.com/moby/spdystream` (docker/spdystream 0.2.0), the library
//! under Kubernetes' SPDY transport (kubectl exec/attach/port-forward,
//! kubelet's streaming server).
//!
//! The Go peer, `tests/spdy_interop/client.go`, is built with `go build` in
//! GOPATH mode against Debian's packages (no network):
//! `apt-get install golang-go golang-github-docker-spdystream-dev`. Without
//! them every test prints `skipped: <why>` and passes.
//!
//! - Go client → berth server: HTTP/1.1 Upgrade as client-go's
//!   `spdy.RoundTripper` does, PING, 6 concurrent streams of 1 MiB+ each
//!   echoed back uppercased (one of them sent as a single 1 MiB DATA frame),
//!   FIN, GOAWAY.
//! - berth client → Go server: the same the other way round, plus a stream
//!   the Go server opens towards us.
//! - frames berth encodes (all types, several compressed header blocks in
//!   one zlib stream) decoded by spdystream's framer.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_cri::stream::spdy::frame::{self, Encoder, Frame, Setting};
use berth_cri::stream::spdy::{Session, SpdyError, Stream};
use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::Command;

const SPDYSTREAM: &str = "/usr/share/gocode/src/github.com/moby/spdystream";

/// Builds the Go peer once per test binary run; `Err(why)` to skip.
fn go_peer() -> Result<PathBuf, String> {
    static BUILT: std::sync::OnceLock<Result<PathBuf, String>> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let version = std::process::Command::new("go").arg("version").output();
            match version {
                Ok(o) if o.status.success() => {}
                _ => return Err("no Go toolchain (apt-get install golang-go)".into()),
            }
            if !std::path::Path::new(SPDYSTREAM).join("connection.go").exists() {
                return Err(format!(
                    "spdystream not found at {SPDYSTREAM} (apt-get install golang-github-docker-spdystream-dev)"
                ));
            }
            let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("spdy-interop");
            std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
            let bin = dir.join("spdy-interop");
            let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/spdy_interop");
            let out = std::process::Command::new("go")
                .args(["build", "-o"])
                .arg(&bin)
                .arg("client.go")
                .current_dir(&src)
                .env("GO111MODULE", "off")
                .env("GOPATH", "/usr/share/gocode")
                .env("GOCACHE", dir.join("gocache"))
                .env("GOFLAGS", "")
                .env("CGO_ENABLED", "0")
                .output()
                .map_err(|e| format!("go build: {e}"))?;
            if !out.status.success() {
                // The toolchain and the package are there: a real failure.
                panic!("go build failed:\n{}", String::from_utf8_lossy(&out.stderr));
            }
            Ok(bin)
        })
        .clone()
}

macro_rules! peer_or_skip {
    () => {
        match go_peer() {
            Ok(bin) => bin,
            Err(why) => {
                println!("skipped: {why}");
                return;
            }
        }
    };
}

async fn timeout<F: std::future::Future>(what: &str, f: F) -> F::Output {
    match tokio::time::timeout(Duration::from_secs(120), f).await {
        Ok(v) => v,
        Err(_) => panic!("timed out: {what}"),
    }
}

/// Reads an HTTP/1.1 head byte by byte (nothing past it is consumed).
async fn read_head<R: AsyncRead + Unpin>(r: &mut R) -> String {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let b = r.read_u8().await.expect("HTTP head");
        head.push(b);
        assert!(head.len() < 64 * 1024, "HTTP head too long");
    }
    String::from_utf8(head).expect("HTTP head is text")
}

fn has_header(head: &str, name: &str, value: &str) -> bool {
    head.lines().any(|l| {
        l.split_once(':').is_some_and(|(n, v)| {
            n.trim().eq_ignore_ascii_case(name) && v.trim().eq_ignore_ascii_case(value)
        })
    })
}

/// Echoes a stream back uppercased, then FIN.
async fn echo_upper(stream: Stream) -> usize {
    let (mut r, mut w) = stream.into_split();
    let mut buf = vec![0u8; 40_000];
    let mut total = 0;
    loop {
        let n = r.read(&mut buf).await.expect("read from spdystream");
        if n == 0 {
            break;
        }
        total += n;
        buf[..n].make_ascii_uppercase();
        w.write_all(&buf[..n]).await.expect("write to spdystream");
    }
    w.shutdown().await.expect("FIN");
    total
}

/// What the server saw of a stream: streamtype, requestid, port, bytes.
type Seen = (String, String, String, usize);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_spdystream_client_against_berth_server() {
    let bin = peer_or_skip!();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let seen2 = seen.clone();
    let server = tokio::spawn(async move {
        let (mut conn, _) = listener.accept().await.unwrap();
        let head = read_head(&mut conn).await;
        assert!(
            head.starts_with("POST /exec/interop HTTP/1.1\r\n"),
            "{head}"
        );
        assert!(has_header(&head, "Connection", "Upgrade"), "{head}");
        assert!(has_header(&head, "Upgrade", "SPDY/3.1"), "{head}");
        assert!(
            has_header(&head, "X-Stream-Protocol-Version", "v4.channel.k8s.io"),
            "{head}"
        );
        conn.write_all(
            b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n\
              X-Stream-Protocol-Version: v4.channel.k8s.io\r\n\r\n",
        )
        .await
        .unwrap();
        let mut session = Session::server(conn);
        let mut echoes = Vec::new();
        while let Some(stream) = session.accept().await {
            let seen = seen2.clone();
            echoes.push(tokio::spawn(async move {
                let ty = stream.header("streamtype").unwrap_or_default().to_string();
                let id = stream.header("requestid").unwrap_or_default().to_string();
                let port = stream.header("port").unwrap_or_default().to_string();
                let n = echo_upper(stream).await;
                seen.lock().unwrap().push((ty, id, port, n));
            }));
        }
        for e in echoes {
            e.await.unwrap();
        }
        // accept() ends at the peer's GOAWAY; the connection close follows.
        while !session.is_closed() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        session.error()
    });
    let out = timeout(
        "go client",
        Command::new(&bin)
            .args([
                "-mode",
                "client",
                "-addr",
                &addr.to_string(),
                "-streams",
                "6",
                "-size",
                "1060000",
            ])
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "go client failed: {}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    assert_eq!(
        stdout
            .lines()
            .filter(|l| l.ends_with(" ok 1060000 bytes"))
            .count(),
        6,
        "{stdout}"
    );
    assert_eq!(stdout.lines().last(), Some("ok"), "{stdout}");
    // The Go client sent GOAWAY and closed the connection.
    let end = timeout("server end", server).await.unwrap();
    assert!(matches!(end, Some(SpdyError::ConnectionClosed)), "{end:?}");
    let mut seen = seen.lock().unwrap().clone();
    seen.sort();
    let want: Vec<_> = (0..6)
        .map(|i| {
            (
                format!("echo-{i}"),
                i.to_string(),
                "8080".to_string(),
                1_060_000,
            )
        })
        .collect();
    assert_eq!(seen, want);
}

fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| b'a' + ((i * 7 + seed as usize) % 26) as u8)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn berth_client_against_go_spdystream_server() {
    let bin = peer_or_skip!();
    let mut child = Command::new(&bin)
        .args(["-mode", "server", "-listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = timeout("go server start", lines.next_line())
        .await
        .unwrap()
        .unwrap();
    let addr = first
        .strip_prefix("listening ")
        .expect("listening line")
        .to_string();

    let mut conn = TcpStream::connect(&addr).await.unwrap();
    conn.write_all(
        format!(
            "POST /exec/interop HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n\
             X-Stream-Protocol-Version: v4.channel.k8s.io\r\nContent-Length: 0\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let head = timeout("upgrade response", read_head(&mut conn)).await;
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    assert!(has_header(&head, "Upgrade", "SPDY/3.1"), "{head}");
    let mut session = Session::client(conn);
    timeout("ping", session.ping()).await.unwrap();

    let session_ref = &session;
    const STREAMS: u8 = 5;
    const SIZE: usize = 1024 * 1024 + 777;
    let transfers = (0..STREAMS).map(|i| async move {
        let stream = session_ref
            .open(&[
                ("streamType", &format!("echo-{i}")),
                ("requestID", &i.to_string()),
            ])
            .await
            .unwrap();
        let data = pattern(SIZE, i);
        let (mut r, mut w) = stream.into_split();
        let sent = data.clone();
        let writer = tokio::spawn(async move {
            w.write_all(&sent).await.unwrap();
            w.shutdown().await.unwrap();
        });
        let mut back = Vec::with_capacity(SIZE);
        r.read_to_end(&mut back).await.unwrap();
        writer.await.unwrap();
        assert!(
            back == data.to_ascii_uppercase(),
            "stream {i}: echo mismatch ({} bytes)",
            back.len()
        );
    });
    timeout("transfers", futures::future::join_all(transfers)).await;

    // The Go server opened a stream of its own (server ids are even).
    let mut pushed = timeout("server stream", session.accept())
        .await
        .expect("server-initiated stream");
    assert_eq!(pushed.id() % 2, 0);
    assert_eq!(pushed.header("streamtype"), Some("server-push"));
    let mut greeting = String::new();
    timeout("greeting", pushed.read_to_string(&mut greeting))
        .await
        .unwrap();
    assert_eq!(greeting, "hello from spdystream");
    drop(pushed);

    timeout("ping", session.ping()).await.unwrap();
    timeout("close", session.close()).await;
    let status = timeout("go server exit", child.wait()).await.unwrap();
    let mut rest = Vec::new();
    while let Ok(Some(l)) = lines.next_line().await {
        rest.push(l);
    }
    assert!(status.success(), "go server: {status}; output: {rest:?}");
    for i in 0..STREAMS {
        assert!(
            rest.iter()
                .any(|l| l.contains(&format!(" echo-{i} {SIZE} bytes"))),
            "stream {i} not served: {rest:?}"
        );
    }
}

#[tokio::test]
async fn berth_frames_decoded_by_spdystream() {
    let bin = peer_or_skip!();
    let long = "x".repeat(20_000);
    let frames = vec![
        Frame::Settings {
            flags: 0,
            entries: vec![Setting {
                flags: 0,
                id: frame::SETTINGS_INITIAL_WINDOW_SIZE,
                value: 65536,
            }],
        },
        Frame::SynStream {
            stream_id: 1,
            associated_to: 0,
            priority: 0,
            slot: 0,
            flags: 0,
            headers: vec![
                ("streamtype".into(), "stdin".into()),
                ("requestid".into(), "0".into()),
            ],
        },
        Frame::SynStream {
            stream_id: 3,
            associated_to: 0,
            priority: 3,
            slot: 0,
            flags: frame::FLAG_FIN,
            headers: vec![
                ("streamtype".into(), "stdout".into()),
                ("x-multi".into(), "a".into()),
                ("x-multi".into(), "b".into()),
                ("long".into(), long.clone()),
            ],
        },
        Frame::SynReply {
            stream_id: 2,
            flags: 0,
            headers: vec![],
        },
        Frame::Headers {
            stream_id: 1,
            flags: 0,
            headers: vec![("streamtype".into(), "stdin".into())],
        },
        Frame::Data {
            stream_id: 1,
            flags: frame::FLAG_FIN,
            data: Bytes::from_static(b"hi"),
        },
        Frame::RstStream {
            stream_id: 3,
            status: frame::rst::CANCEL,
        },
        Frame::Ping { id: 1 },
        Frame::WindowUpdate {
            stream_id: 0,
            delta: 1000,
        },
        Frame::GoAway {
            last_good_stream_id: 3,
            status: frame::goaway::OK,
        },
    ];
    let mut enc = Encoder::new().unwrap();
    let mut wire = BytesMut::new();
    for f in &frames {
        enc.encode(f, &mut wire).unwrap();
    }
    let mut child = Command::new(&bin)
        .args(["-mode", "decode"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin
        .write_all(hex::encode(&wire).as_bytes())
        .await
        .unwrap();
    drop(stdin);
    let out = timeout("go decode", child.wait_with_output())
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let want = [
        "SETTINGS 0:7:65536".to_string(),
        "SYN_STREAM id=1 assoc=0 pri=0 flags=0 Requestid=0 Streamtype=stdin".to_string(),
        format!("SYN_STREAM id=3 assoc=0 pri=3 flags=1 Long={long} Streamtype=stdout X-Multi=a,b"),
        "SYN_REPLY id=2 flags=0 ".to_string(),
        "HEADERS id=1 flags=0 Streamtype=stdin".to_string(),
        "DATA id=1 flags=1 \"hi\"".to_string(),
        "RST_STREAM id=3 status=5".to_string(),
        "PING id=1".to_string(),
        "WINDOW_UPDATE id=0 delta=1000".to_string(),
        "GOAWAY last=3 status=0".to_string(),
    ];
    let got: Vec<&str> = stdout.lines().collect();
    assert_eq!(got, want);
}
