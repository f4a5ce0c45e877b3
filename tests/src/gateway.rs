//! A front for a test registry that changes what reaches it: serve the
//! registry under a path prefix (the prefix is stripped before forwarding,
//! anything else is 404), refuse (403) requests that lack a header, answer
//! some paths itself with canned content, and/or re-send every answer
//! chunked, without its `Content-Length`. What registries behind a
//! non-standard root, a header-checking gateway or a streaming front look
//! like to a client, and what a registry serving content that distribution
//! would not (a manifest over its 4 MiB) looks like.
//!
//! One request per connection: each forwarded request goes upstream with
//! `Connection: close`, so the response ends when upstream closes and
//! nothing has to be parsed on the way back. Plain std threads.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

/// A response the gateway gives itself, to GET and HEAD of one path.
#[derive(Debug, Clone)]
pub struct Canned {
    /// The request path (after the prefix is stripped; the query is not
    /// compared), e.g. `/v2/test/big/manifests/v1`.
    pub path: String,
    /// Its `Content-Type`.
    pub content_type: String,
    /// Its body.
    pub body: Arc<Vec<u8>>,
}

/// What the gateway does with requests.
#[derive(Debug, Clone, Default)]
pub struct GatewayRules {
    /// Serve the registry under this prefix (`/registry`): `/registry/v2/x`
    /// is forwarded as `/v2/x`; paths outside it get 404.
    pub prefix: Option<String>,
    /// Refuse with 403 requests without this header (name, value; the name
    /// matched without regard to case).
    pub require_header: Option<(String, String)>,
    /// Send each response body with `Transfer-Encoding: chunked` and no
    /// `Content-Length`, so that a client learns its size only by reading
    /// it.
    pub chunked: bool,
    /// Paths answered with canned content instead of the registry's.
    pub canned: Vec<Canned>,
}

/// A gateway on `127.0.0.1:<free port>`; stops (and joins its accept
/// thread) on drop.
pub struct Gateway {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

struct Shared {
    upstream: String,
    rules: GatewayRules,
    forwarded: AtomicUsize,
    refused: AtomicUsize,
    canned: AtomicUsize,
    stop: AtomicBool,
}

impl Gateway {
    /// Listens and forwards to `upstream` (`host:port`) under `rules`.
    pub fn start(upstream: &str, rules: GatewayRules) -> io::Result<Gateway> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            upstream: upstream.to_string(),
            rules,
            forwarded: AtomicUsize::new(0),
            refused: AtomicUsize::new(0),
            canned: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
        });
        let s = shared.clone();
        let accept = std::thread::Builder::new()
            .name("berth-gateway".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    if s.stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let Ok(conn) = conn else { continue };
                    let s = s.clone();
                    let _ = std::thread::Builder::new()
                        .name("berth-gateway-conn".into())
                        .spawn(move || {
                            let _ = serve(conn, &s);
                        });
                }
            })?;
        Ok(Gateway {
            addr,
            shared,
            accept: Some(accept),
        })
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        self.addr.to_string()
    }

    /// Requests passed to the registry.
    pub fn forwarded(&self) -> usize {
        self.shared.forwarded.load(Ordering::SeqCst)
    }

    /// Requests answered with canned content.
    pub fn canned(&self) -> usize {
        self.shared.canned.load(Ordering::SeqCst)
    }

    /// Requests answered 403 or 404 by the gateway itself.
    pub fn refused(&self) -> usize {
        self.shared.refused.load(Ordering::SeqCst)
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
        if let Some(a) = self.accept.take() {
            let _ = a.join();
        }
    }
}

fn serve(client: TcpStream, shared: &Shared) -> io::Result<()> {
    let mut reader = BufReader::new(client.try_clone()?);
    let mut lines = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let line = line.trim_end_matches(['\r', '\n']).to_string();
        if line.is_empty() {
            break;
        }
        lines.push(line);
    }
    let Some((request_line, headers)) = lines.split_first() else {
        return Ok(());
    };
    let mut parts = request_line.splitn(3, ' ');
    let (method, target, version) = (
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
        parts.next().unwrap_or("HTTP/1.1"),
    );
    let header = |name: &str| {
        headers.iter().find_map(|h| {
            let (n, v) = h.split_once(':')?;
            n.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    };
    let mut out = client;
    if let Some((name, value)) = &shared.rules.require_header {
        if header(name).as_deref() != Some(value.as_str()) {
            return refuse(&mut out, shared, "403 Forbidden", "missing required header");
        }
    }
    let target = match &shared.rules.prefix {
        Some(prefix) => match target.strip_prefix(prefix.as_str()) {
            Some(rest) if rest.starts_with('/') => rest.to_string(),
            _ => return refuse(&mut out, shared, "404 Not Found", "outside the prefix"),
        },
        None => target.to_string(),
    };
    let path = target.split('?').next().unwrap_or_default();
    if let Some(canned) = shared.rules.canned.iter().find(|c| c.path == path) {
        shared.canned.fetch_add(1, Ordering::SeqCst);
        return answer_canned(&mut out, canned, method == "HEAD", shared.rules.chunked);
    }
    let mut upstream = TcpStream::connect(&shared.upstream)?;
    let mut head = format!("{method} {target} {version}\r\n");
    for h in headers {
        let name = h.split(':').next().unwrap_or("").trim();
        if !name.eq_ignore_ascii_case("connection") {
            head.push_str(h);
            head.push_str("\r\n");
        }
    }
    head.push_str("Connection: close\r\n\r\n");
    upstream.write_all(head.as_bytes())?;
    let length: u64 = header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    io::copy(&mut reader.take(length), &mut upstream)?;
    shared.forwarded.fetch_add(1, Ordering::SeqCst);
    if shared.rules.chunked {
        copy_chunked(upstream, &mut out)?;
    } else {
        io::copy(&mut upstream, &mut out)?;
    }
    let _ = out.shutdown(Shutdown::Both);
    Ok(())
}

/// Answers with `canned` (its `Content-Length`, or chunked); the client may
/// hang up before the end.
fn answer_canned(
    out: &mut TcpStream,
    canned: &Canned,
    head_only: bool,
    chunked: bool,
) -> io::Result<()> {
    let framing = if chunked {
        "Transfer-Encoding: chunked".to_string()
    } else {
        format!("Content-Length: {}", canned.body.len())
    };
    write!(
        out,
        "HTTP/1.1 200 OK\r\nContent-Type: {}\r\n{framing}\r\nConnection: close\r\n\r\n",
        canned.content_type
    )?;
    if !head_only {
        if chunked {
            for chunk in canned.body.chunks(64 * 1024) {
                write!(out, "{:x}\r\n", chunk.len())?;
                out.write_all(chunk)?;
                out.write_all(b"\r\n")?;
            }
            out.write_all(b"0\r\n\r\n")?;
        } else {
            out.write_all(&canned.body)?;
        }
    }
    let _ = out.shutdown(Shutdown::Both);
    Ok(())
}

/// Copies upstream's response (which ends when upstream closes) with its
/// head's `Content-Length` and `Transfer-Encoding` replaced by
/// `Transfer-Encoding: chunked`, and its body re-framed in chunks.
fn copy_chunked(upstream: TcpStream, out: &mut TcpStream) -> io::Result<()> {
    let mut reader = BufReader::new(upstream);
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        if line == "\r\n" || line == "\n" {
            break;
        }
        let name = line.split(':').next().unwrap_or("").trim();
        if !name.eq_ignore_ascii_case("content-length")
            && !name.eq_ignore_ascii_case("transfer-encoding")
        {
            head.push_str(&line);
        }
    }
    head.push_str("Transfer-Encoding: chunked\r\n\r\n");
    out.write_all(head.as_bytes())?;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            break;
        }
        write!(out, "{n:x}\r\n")?;
        out.write_all(&buf[..n])?;
        out.write_all(b"\r\n")?;
    }
    out.write_all(b"0\r\n\r\n")
}

fn refuse(out: &mut TcpStream, shared: &Shared, status: &str, why: &str) -> io::Result<()> {
    shared.refused.fetch_add(1, Ordering::SeqCst);
    let body = format!("{why}\n");
    write!(
        out,
        "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let _ = out.shutdown(Shutdown::Both);
    Ok(())
}
