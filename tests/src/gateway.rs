//! A front for a test registry that changes what reaches it: serve the
//! registry under a path prefix (the prefix is stripped before forwarding,
//! anything else is 404), and/or refuse (403) requests that lack a header.
//! What registries behind a non-standard root or a header-checking gateway
//! look like to a client.
//!
//! One request per connection: each forwarded request goes upstream with
//! `Connection: close`, so the response ends when upstream closes and
//! nothing has to be parsed on the way back. Plain std threads.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

/// What the gateway does with requests.
#[derive(Debug, Clone, Default)]
pub struct GatewayRules {
    /// Serve the registry under this prefix (`/registry`): `/registry/v2/x`
    /// is forwarded as `/v2/x`; paths outside it get 404.
    pub prefix: Option<String>,
    /// Refuse with 403 requests without this header (name, value; the name
    /// matched without regard to case).
    pub require_header: Option<(String, String)>,
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
    io::copy(&mut upstream, &mut out)?;
    let _ = out.shutdown(Shutdown::Both);
    Ok(())
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
