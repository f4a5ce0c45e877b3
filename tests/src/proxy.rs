//! A fault-injecting TCP proxy to put in front of a test registry: it counts
//! blob GETs and can cut one blob download short, so tests can check that a
//! pull retries, fails cleanly, or reuses what it already has.
//!
//! Plain std threads, so it works under any (or no) async runtime. The
//! client→upstream direction is parsed as HTTP/1.1 requests (request line,
//! headers, `Content-Length` or chunked body), which counts every request on
//! a keep-alive connection; the upstream→client direction is copied as bytes.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

/// A proxy on `127.0.0.1:<free port>` forwarding to one upstream. Dropping
/// it stops accepting, shuts down every connection and joins the accept
/// thread.
pub struct Proxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

struct Shared {
    upstream: String,
    blob_gets: AtomicUsize,
    drops: AtomicUsize,
    /// The armed one-shot fault: cut the next blob response after this many
    /// bytes.
    fault: Mutex<Option<u64>>,
    stop: AtomicBool,
    /// Both sockets of every connection, to shut them down on drop.
    sockets: Mutex<Vec<TcpStream>>,
}

/// The fault one connection has taken for the response in flight: how many
/// more response bytes may pass before both sockets are shut down.
#[derive(Default)]
struct ConnFault(Mutex<Option<u64>>);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking forwarding thread must not take the whole proxy down.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Proxy {
    /// Listens on 127.0.0.1:0 and forwards each connection to `upstream`
    /// (`host:port`).
    pub fn start(upstream: &str) -> io::Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            upstream: upstream.to_string(),
            blob_gets: AtomicUsize::new(0),
            drops: AtomicUsize::new(0),
            fault: Mutex::new(None),
            stop: AtomicBool::new(false),
            sockets: Mutex::new(Vec::new()),
        });
        let accept_shared = shared.clone();
        let accept = std::thread::Builder::new()
            .name("berth-proxy-accept".into())
            .spawn(move || accept_loop(listener, accept_shared))?;
        Ok(Proxy {
            addr,
            shared,
            accept: Some(accept),
        })
    }

    /// `127.0.0.1:PORT`, to use as the registry host in image references.
    pub fn addr(&self) -> String {
        self.addr.to_string()
    }

    /// How many `GET /v2/<name>/blobs/<digest>` requests clients have sent.
    pub fn blob_gets(&self) -> usize {
        self.shared.blob_gets.load(Ordering::SeqCst)
    }

    /// How many responses a `drop_after` fault has cut so far.
    pub fn drops(&self) -> usize {
        self.shared.drops.load(Ordering::SeqCst)
    }

    /// Arms a one-shot fault: the response to the next blob GET is cut
    /// (both sockets shut down) after `bytes` bytes of it, counting the
    /// status line and headers (a registry's blob response headers are some
    /// 300 bytes, so `drop_after(100)` cuts in the headers and a larger
    /// number cuts in the body). A response that ends before `bytes` passes
    /// leaves the fault armed for the next one. Afterwards the proxy
    /// forwards normally.
    pub fn drop_after(&self, bytes: u64) {
        *lock(&self.shared.fault) = Some(bytes);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept() so it sees `stop`.
        let _ = TcpStream::connect(self.addr);
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
        for socket in lock(&self.shared.sockets).drain(..) {
            let _ = socket.shutdown(Shutdown::Both);
        }
    }
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    for client in listener.incoming() {
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(client) = client else { continue };
        let shared = shared.clone();
        // A connection that cannot reach upstream is simply closed; the
        // client sees the error.
        let _ = std::thread::Builder::new()
            .name("berth-proxy-conn".into())
            .spawn(move || {
                let _ = serve(client, &shared);
            });
    }
}

/// Forwards one client connection: requests in this thread, responses in a
/// second one.
fn serve(client: TcpStream, shared: &Arc<Shared>) -> io::Result<()> {
    let upstream = TcpStream::connect(&shared.upstream)?;
    {
        let mut sockets = lock(&shared.sockets);
        sockets.push(client.try_clone()?);
        sockets.push(upstream.try_clone()?);
    }
    let conn = Arc::new(ConnFault::default());
    let responses = {
        let (upstream, client) = (upstream.try_clone()?, client.try_clone()?);
        let (shared, conn) = (shared.clone(), conn.clone());
        std::thread::Builder::new()
            .name("berth-proxy-resp".into())
            .spawn(move || forward_responses(upstream, client, &shared, &conn))?
    };
    let result = forward_requests(&client, &upstream, shared, &conn);
    // Client done sending (or failed): let upstream finish its answer.
    let _ = upstream.shutdown(Shutdown::Write);
    let _ = responses.join();
    // A fault taken by a response that ended before its byte budget goes
    // back for the next blob response.
    rearm(shared, &conn);
    result
}

fn rearm(shared: &Shared, conn: &ConnFault) {
    if let Some(bytes) = lock(&conn.0).take() {
        lock(&shared.fault).get_or_insert(bytes);
    }
}

fn forward_requests(
    client: &TcpStream,
    upstream: &TcpStream,
    shared: &Shared,
    conn: &ConnFault,
) -> io::Result<()> {
    let mut reader = BufReader::new(client);
    let mut upstream = upstream;
    loop {
        let head = match read_head(&mut reader)? {
            Some(head) => head,
            None => return Ok(()),
        };
        // HTTP/1.1 clients send the next request on a connection only after
        // reading the whole previous response, so whatever fault the last
        // request took and did not fire is free again.
        rearm(shared, conn);
        let text = String::from_utf8_lossy(&head);
        if is_blob_get(text.lines().next().unwrap_or("")) {
            shared.blob_gets.fetch_add(1, Ordering::SeqCst);
            // Taken before the request goes upstream, so every response
            // byte from here on belongs to this request.
            if let Some(bytes) = lock(&shared.fault).take() {
                *lock(&conn.0) = Some(bytes);
            }
        }
        upstream.write_all(&head)?;
        match body_framing(&text) {
            Framing::None => {}
            Framing::Length(n) => {
                let copied = io::copy(&mut (&mut reader).take(n), &mut upstream)?;
                if copied < n {
                    return Ok(());
                }
            }
            Framing::Chunked => copy_chunked(&mut reader, &mut upstream)?,
        }
    }
}

fn forward_responses(
    mut upstream: TcpStream,
    mut client: TcpStream,
    shared: &Shared,
    conn: &ConnFault,
) -> io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = upstream.read(&mut buf)?;
        if n == 0 {
            let _ = client.shutdown(Shutdown::Write);
            return Ok(());
        }
        let mut pending = lock(&conn.0);
        match *pending {
            Some(budget) if (n as u64) >= budget => {
                // Fire: pass what the budget allows, then cut both sides.
                *pending = None;
                drop(pending);
                client.write_all(&buf[..budget as usize])?;
                shared.drops.fetch_add(1, Ordering::SeqCst);
                let _ = client.shutdown(Shutdown::Both);
                let _ = upstream.shutdown(Shutdown::Both);
                return Ok(());
            }
            Some(budget) => *pending = Some(budget - n as u64),
            None => {}
        }
        drop(pending);
        client.write_all(&buf[..n])?;
    }
}

/// `GET /v2/<name>/blobs/<digest> HTTP/1.1`. Uploads live under
/// `/blobs/uploads/` and are never GETs of content we want to count.
fn is_blob_get(request_line: &str) -> bool {
    let mut parts = request_line.split_whitespace();
    let (Some("GET"), Some(target)) = (parts.next(), parts.next()) else {
        return false;
    };
    let path = target.split('?').next().unwrap_or(target);
    path.starts_with("/v2/") && path.contains("/blobs/") && !path.contains("/blobs/uploads/")
}

/// The request line and headers up to and including the blank line; `None`
/// on a clean end of stream between requests.
fn read_head(reader: &mut impl BufRead) -> io::Result<Option<Vec<u8>>> {
    let mut head = Vec::new();
    loop {
        let before = head.len();
        if reader.read_until(b'\n', &mut head)? == 0 {
            return if head.is_empty() {
                Ok(None)
            } else {
                Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed inside request headers",
                ))
            };
        }
        let line = &head[before..];
        // Blank line ends the head; stray CRLFs before a request line are
        // allowed by RFC 9112 and skipped.
        if line == b"\r\n" || line == b"\n" {
            if before == 0 {
                head.clear();
                continue;
            }
            return Ok(Some(head));
        }
    }
}

enum Framing {
    None,
    Length(u64),
    Chunked,
}

fn body_framing(head: &str) -> Framing {
    let mut framing = Framing::None;
    for line in head.lines().skip(1) {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("transfer-encoding")
            && value.to_ascii_lowercase().contains("chunked")
        {
            return Framing::Chunked;
        }
        if name.eq_ignore_ascii_case("content-length") {
            if let Ok(n) = value.parse() {
                framing = Framing::Length(n);
            }
        }
    }
    framing
}

/// Copies one chunked body (chunks, the last empty chunk, trailers) as is.
fn copy_chunked(reader: &mut impl BufRead, out: &mut impl Write) -> io::Result<()> {
    let eof = || io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed in chunk");
    loop {
        let mut size_line = Vec::new();
        if reader.read_until(b'\n', &mut size_line)? == 0 {
            return Err(eof());
        }
        out.write_all(&size_line)?;
        let text = String::from_utf8_lossy(&size_line);
        let hex = text.trim().split(';').next().unwrap_or("").trim();
        let size = u64::from_str_radix(hex, 16)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad chunk size"))?;
        if size == 0 {
            // Trailers, then the blank line.
            loop {
                let mut line = Vec::new();
                if reader.read_until(b'\n', &mut line)? == 0 {
                    return Err(eof());
                }
                out.write_all(&line)?;
                if line == b"\r\n" || line == b"\n" {
                    return Ok(());
                }
            }
        }
        // The chunk and its CRLF.
        let want = size + 2;
        if io::copy(&mut reader.by_ref().take(want), out)? < want {
            return Err(eof());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blob_gets_are_recognised() {
        assert!(is_blob_get("GET /v2/a/b/blobs/sha256:00 HTTP/1.1"));
        assert!(!is_blob_get("HEAD /v2/a/blobs/sha256:00 HTTP/1.1"));
        assert!(!is_blob_get("GET /v2/a/manifests/latest HTTP/1.1"));
        assert!(!is_blob_get("GET /v2/a/blobs/uploads/xyz HTTP/1.1"));
    }

    #[test]
    fn chunked_bodies_are_copied_whole() {
        let body = b"4\r\nabcd\r\n0\r\n\r\nGET /next";
        let mut reader = BufReader::new(&body[..]);
        let mut out = Vec::new();
        copy_chunked(&mut reader, &mut out).unwrap();
        assert_eq!(out, b"4\r\nabcd\r\n0\r\n\r\n");
    }
}
