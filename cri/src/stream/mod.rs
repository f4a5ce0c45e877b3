//! The streaming server behind CRI `Exec`, `Attach` and `PortForward`.
//!
//! Those RPCs only hand back a URL on this server (`/exec/<token>`,
//! `/attach/<token>`, `/portforward/<token>`); the client — kubelet's
//! proxy, the API server, crictl — then upgrades an HTTP/1.1 connection on
//! it and speaks Kubernetes' streaming protocols: WebSocket
//! (`v5.channel.k8s.io`, `v4.channel.k8s.io`, their `base64.` forms and
//! the older ones) or SPDY/3.1. A token is random, single-use and expires
//! a minute after it was issued, as kubelet's own streaming server does:
//! an unknown or reused one gets 404, an expired one 410 (see [`tokens`]).
//!
//! Everything a client can make the server hold is bounded ([`Limits`]):
//! waiting URLs (count, bytes, lifetime), connections at once, the time to
//! send the request headers, the time a session may sit idle, and
//! WebSocket message sizes ([`ws`]).

pub mod attach;
pub mod exec;
pub mod job;
pub mod portforward;
pub mod session;
pub mod spdy;
pub mod tokens;
pub mod ws;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use tokio::sync::Semaphore;

use crate::conn::{AcceptBackoff, Guarded};
pub use tokens::{IssueError, TokenError};

/// What the streaming server lets clients hold. The defaults are
/// kubelet's (`pkg/kubelet/cri/streaming`: request cache TTL 1 minute, at
/// most 1000 in flight; `DefaultConfig.StreamIdleTimeout` 4 h) and Go's
/// usual header timeout (hyper's default too: 30 s).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// How long a URL stays valid.
    pub token_ttl: Duration,
    /// URLs issued and not yet used, at most; more Exec/Attach/PortForward
    /// calls get `ResourceExhausted`.
    pub max_pending: usize,
    /// What the waiting URLs' requests may hold, at most (bytes).
    pub max_pending_bytes: usize,
    /// Connections open at once, at most (upgraded sessions included);
    /// more wait in the listen backlog.
    pub max_connections: usize,
    /// The time a client has for the TLS handshake and its request headers
    /// (also between requests on a kept-alive connection).
    pub header_timeout: Duration,
    /// A connection (or session) with no data either way for this long is
    /// closed.
    pub idle_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            token_ttl: Duration::from_secs(60),
            max_pending: 1000,
            max_pending_bytes: 64 << 20,
            max_connections: 1024,
            header_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(4 * 3600),
        }
    }
}

/// What a URL was issued for.
#[derive(Debug, Clone)]
pub enum StreamRequest {
    /// A new process in a running container.
    Exec(Box<exec::ExecTarget>),
    /// The container's own process.
    Attach(attach::AttachTarget),
    /// Connections to ports inside a pod's network namespace.
    PortForward(portforward::Target),
}

impl StreamRequest {
    fn kind(&self) -> &'static str {
        match self {
            StreamRequest::Exec(_) => "exec",
            StreamRequest::Attach(_) => "attach",
            StreamRequest::PortForward(_) => "portforward",
        }
    }

    /// About the bytes the request holds while it waits for its client.
    pub fn cost(&self) -> usize {
        let variable = match self {
            StreamRequest::Exec(t) => {
                t.spec.args.iter().map(|s| s.len() + 24).sum::<usize>()
                    + t.spec.env.iter().map(|s| s.len() + 24).sum::<usize>()
                    + t.spec.cwd.as_os_str().len()
                    + t.container_id.len()
            }
            StreamRequest::Attach(t) => t.container_id.len(),
            StreamRequest::PortForward(t) => t.netns.as_os_str().len() + 2 * t.ports.len(),
        };
        // The token, the entry and the boxed target.
        256 + variable
    }
}

/// The server: its base URL and the outstanding tokens.
pub struct StreamServer {
    base: String,
    tokens: tokens::Tokens,
}

impl std::fmt::Debug for StreamServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamServer")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

/// 256 random bits, hex: safe in a URL path.
fn random_token() -> std::io::Result<String> {
    crate::store::ObjectId::random().map(|id| id.to_string())
}

impl StreamServer {
    /// A server whose URLs start with `base` (`http://127.0.0.1:port`),
    /// not yet listening (see [`StreamServer::start`]). Expired requests
    /// are only dropped when the next one is issued; `start` also sweeps
    /// them on time.
    pub fn new(base: String, limits: Limits) -> Arc<StreamServer> {
        Arc::new(StreamServer {
            base,
            tokens: tokens::Tokens::new(limits),
        })
    }

    /// Binds `addr` (port 0: any free port), serves on it in the
    /// background (on the current tokio runtime) within `limits`, and
    /// returns the server. With `tls` (certificate chain and key, PEM
    /// files) it speaks HTTPS.
    pub fn start(
        addr: SocketAddr,
        tls: Option<&TlsFiles>,
        limits: Limits,
    ) -> std::io::Result<Arc<StreamServer>> {
        let acceptor = tls.map(tls_acceptor).transpose()?;
        let std_listener = std::net::TcpListener::bind(addr)?;
        std_listener.set_nonblocking(true)?;
        let listener = tokio::net::TcpListener::from_std(std_listener)?;
        let local = listener.local_addr()?;
        let scheme = if acceptor.is_some() { "https" } else { "http" };
        let server = StreamServer::new(format!("{scheme}://{local}"), limits);
        tokio::spawn(sweep(Arc::downgrade(&server)));
        let s = server.clone();
        tokio::spawn(async move {
            let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
            let mut backoff = AcceptBackoff::default();
            loop {
                // A slot first: past the limit, connections wait in the
                // backlog instead of taking our file descriptors.
                let Ok(slot) = slots.clone().acquire_owned().await else {
                    return;
                };
                let conn = match listener.accept().await {
                    Ok((conn, _)) => conn,
                    Err(e) => {
                        backoff.failed("streaming", &e).await;
                        continue;
                    }
                };
                backoff.succeeded();
                let conn = Guarded::new(conn, Some(slot), Some(limits.idle_timeout));
                let (s, acceptor) = (s.clone(), acceptor.clone());
                tokio::spawn(async move {
                    match acceptor {
                        None => serve_conn(conn, s, limits.header_timeout).await,
                        Some(a) => {
                            // The handshake is part of the time a client
                            // has to send its request.
                            let hs = tokio::time::timeout(limits.header_timeout, a.accept(conn));
                            if let Ok(Ok(tls)) = hs.await {
                                serve_conn(tls, s, limits.header_timeout).await;
                            }
                        }
                    }
                });
            }
        });
        Ok(server)
    }

    /// The base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// A single-use URL for `req`, unless too many (or too large) requests
    /// wait for their clients already.
    pub fn issue(&self, req: StreamRequest) -> Result<String, IssueError> {
        let token = random_token().map_err(IssueError::Random)?;
        let url = format!("{}/{}/{token}", self.base, req.kind());
        self.tokens.insert(token, req, Instant::now())?;
        Ok(url)
    }

    /// Takes the request of `token` for a URL of `kind` (once).
    pub fn take(&self, kind: &str, token: &str) -> Result<StreamRequest, TokenError> {
        self.tokens.take(kind, token, Instant::now())
    }

    /// (requests waiting for their client, the bytes they hold).
    pub fn pending(&self) -> (usize, usize) {
        self.tokens.pending()
    }

    async fn handle(self: Arc<Self>, req: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
        let path = req.uri().path().to_string();
        let mut parts = path.trim_start_matches('/').splitn(2, '/');
        let (Some(kind), Some(token)) = (parts.next(), parts.next()) else {
            return plain(StatusCode::NOT_FOUND, "not found");
        };
        if !matches!(kind, "exec" | "attach" | "portforward") {
            return plain(StatusCode::NOT_FOUND, "not found");
        }
        let upgrade = req
            .headers()
            .get(hyper::header::UPGRADE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_ascii_lowercase();
        if upgrade != "websocket" && upgrade != "spdy/3.1" {
            return plain(
                StatusCode::BAD_REQUEST,
                "upgrade to websocket or SPDY/3.1 expected",
            );
        }
        let target = match self.take(kind, token) {
            Ok(t) => t,
            Err(TokenError::Unknown) => {
                return plain(StatusCode::NOT_FOUND, "unknown or used streaming token")
            }
            Err(TokenError::Expired) => return plain(StatusCode::GONE, "streaming token expired"),
        };
        if upgrade == "websocket" {
            ws_upgrade(req, target)
        } else {
            spdy_upgrade(req, target)
        }
    }
}

/// The streaming server's certificate chain and private key (PEM files).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// Certificate chain, leaf first.
    pub cert: std::path::PathBuf,
    /// Its private key.
    pub key: std::path::PathBuf,
}

fn tls_acceptor(files: &TlsFiles) -> std::io::Result<tokio_rustls::TlsAcceptor> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let bad = |what: &std::path::Path, e: &dyn std::fmt::Display| {
        std::io::Error::other(format!("{}: {e}", what.display()))
    };
    let certs = CertificateDer::pem_file_iter(&files.cert)
        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
        .map_err(|e| bad(&files.cert, &e))?;
    if certs.is_empty() {
        return Err(bad(&files.cert, &"no certificate in it"));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| bad(&files.key, &e))?;
    let config = tokio_rustls::rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| bad(&files.cert, &e))?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// Drops expired requests on time, until the server is gone.
async fn sweep(server: std::sync::Weak<StreamServer>) {
    loop {
        let (every, freed) = match server.upgrade() {
            Some(s) => {
                let freed = s.tokens.sweep(Instant::now());
                (s.tokens.sweep_interval(), freed)
            }
            None => return,
        };
        if freed >= 1 << 20 {
            // glibc keeps what the requests held in its per-thread arenas
            // otherwise: the daemon would stay as large as the burst made
            // it.
            let _ = tokio::task::spawn_blocking(crate::util::release_free_memory).await;
        }
        tokio::time::sleep(every).await;
    }
}

/// Serves HTTP/1.1 (with upgrades) on one connection; a client that has
/// not sent its request headers within `header_timeout` is disconnected.
async fn serve_conn<IO>(io: IO, s: Arc<StreamServer>, header_timeout: Duration)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = hyper::service::service_fn(move |req| {
        let s = s.clone();
        async move { Ok::<_, std::convert::Infallible>(s.handle(req).await) }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        // hyper enforces the header timeout only with a timer.
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(header_timeout)
        .serve_connection(hyper_util::rt::TokioIo::new(io), svc)
        .with_upgrades()
        .await;
}

/// The SPDY side: `101` with `Upgrade: SPDY/3.1` and the negotiated
/// `X-Stream-Protocol-Version`, then the session.
fn spdy_upgrade(
    mut req: Request<hyper::body::Incoming>,
    target: StreamRequest,
) -> Response<Full<Bytes>> {
    let offered: Vec<String> = req
        .headers()
        .get_all("x-stream-protocol-version")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(|s| s.trim().to_string()))
        .collect();
    let supported: &[&str] = match &target {
        StreamRequest::Exec(_) | StreamRequest::Attach(_) => &[
            "v4.channel.k8s.io",
            "v3.channel.k8s.io",
            "v2.channel.k8s.io",
            "channel.k8s.io",
        ],
        StreamRequest::PortForward(_) => &["portforward.k8s.io"],
    };
    // The client's order is its preference (kubelet picks the first of
    // the client's list that it supports).
    let Some(proto) = offered
        .iter()
        .find(|p| supported.contains(&p.as_str()))
        .cloned()
    else {
        return plain(
            StatusCode::FORBIDDEN,
            &format!(
                "no supported X-Stream-Protocol-Version; supported: {}",
                supported.join(", ")
            ),
        );
    };
    let negotiated = proto.clone();
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let sess = spdy::Session::server(hyper_util::rt::TokioIo::new(upgraded));
        let version = ws::Protocol::parse(&proto).map_or(1, |p| p.version);
        match target {
            StreamRequest::Exec(t) => {
                session::serve_spdy(sess, session::Job::Exec(t), version).await
            }
            StreamRequest::Attach(t) => {
                session::serve_spdy(sess, session::Job::Attach(t), version).await
            }
            StreamRequest::PortForward(t) => portforward::serve_spdy(sess, t).await,
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(hyper::header::CONNECTION, "Upgrade")
        .header(hyper::header::UPGRADE, "SPDY/3.1")
        .header("X-Stream-Protocol-Version", negotiated)
        .body(Full::new(Bytes::new()))
        .unwrap_or_default()
}

/// The upgrade to a WebSocket channel protocol: answers `101` with the
/// chosen subprotocol and runs the session in the background.
fn ws_upgrade(
    mut req: Request<hyper::body::Incoming>,
    target: StreamRequest,
) -> Response<Full<Bytes>> {
    let Some(key) = req
        .headers()
        .get("sec-websocket-key")
        .map(|k| k.as_bytes().to_vec())
    else {
        return plain(StatusCode::BAD_REQUEST, "Sec-WebSocket-Key missing");
    };
    let offered: Vec<String> = req
        .headers()
        .get_all("sec-websocket-protocol")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(|s| s.trim().to_string()))
        .collect();
    // The client's first protocol that we speak.
    let chosen = offered.iter().find_map(|name| {
        let p = ws::Protocol::parse(name)?;
        let ok = match &target {
            StreamRequest::Exec(_) | StreamRequest::Attach(_) => true,
            // Port-forward over WebSocket is kubelet's v4 channel protocol
            // (or the bare one).
            StreamRequest::PortForward(_) => p.version == 1 || p.version == 4,
        };
        ok.then(|| (name.clone(), p))
    });
    let Some((name, proto)) = chosen else {
        return plain(
            StatusCode::BAD_REQUEST,
            "no supported Sec-WebSocket-Protocol (v5.channel.k8s.io, v4.channel.k8s.io, their base64. forms, channel.k8s.io)",
        );
    };
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(&key);
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
            hyper_util::rt::TokioIo::new(upgraded),
            tokio_tungstenite::tungstenite::protocol::Role::Server,
            Some(ws::config()),
        )
        .await;
        match target {
            StreamRequest::Exec(t) => session::serve_ws(ws, proto, session::Job::Exec(t)).await,
            StreamRequest::Attach(t) => session::serve_ws(ws, proto, session::Job::Attach(t)).await,
            StreamRequest::PortForward(t) => portforward::serve_ws(ws, proto, t).await,
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(hyper::header::CONNECTION, "Upgrade")
        .header(hyper::header::UPGRADE, "websocket")
        .header("Sec-WebSocket-Accept", accept)
        .header("Sec-WebSocket-Protocol", name)
        .body(Full::new(Bytes::new()))
        .unwrap_or_default()
}

fn plain(status: StatusCode, text: &str) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(hyper::header::CONTENT_TYPE, "text/plain")
        .body(Full::new(Bytes::from(format!("{text}\n"))))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pf() -> StreamRequest {
        StreamRequest::PortForward(portforward::Target {
            netns: "/run/netns/x".into(),
            ports: vec![80],
        })
    }

    #[test]
    fn tokens_are_single_use_and_expire() {
        let limits = Limits {
            token_ttl: Duration::from_millis(50),
            ..Limits::default()
        };
        let s = StreamServer::new("http://127.0.0.1:1".into(), limits);
        let url = s.issue(pf()).unwrap();
        let token = url.rsplit('/').next().unwrap().to_string();
        assert!(url.starts_with("http://127.0.0.1:1/portforward/"));
        assert!(token.len() >= 24);
        assert_eq!(s.take("exec", &token).unwrap_err(), TokenError::Unknown);
        assert!(s.take("portforward", &token).is_ok());
        assert_eq!(
            s.take("portforward", &token).unwrap_err(),
            TokenError::Unknown
        );
        let url = s.issue(pf()).unwrap();
        let token = url.rsplit('/').next().unwrap().to_string();
        std::thread::sleep(Duration::from_millis(80));
        assert_eq!(
            s.take("portforward", &token).unwrap_err(),
            TokenError::Expired
        );
        let other = s.issue(pf()).unwrap();
        assert_ne!(other, url);
    }

    #[test]
    fn an_exec_costs_its_command_and_environment() {
        let exec = |arg: usize, env: usize| {
            let mut spec = berth_core::Process::new(vec!["x".repeat(arg)]).spec;
            spec.env = vec![("E=".to_string() + &"v".repeat(env)).into()];
            StreamRequest::Exec(Box::new(exec::ExecTarget {
                task: std::sync::Arc::new(crate::task::client::MonitorTask::at(
                    std::path::Path::new("/run/berth/containers/c"),
                )),
                container_id: "c".repeat(64),
                spec,
                stdin: false,
                stdout: true,
                stderr: true,
                tty: false,
            }))
        };
        let small = exec(10, 10).cost();
        assert!(small < 1024, "{small}");
        let big = exec(1 << 20, 0).cost();
        assert!(big > 1 << 20, "{big}");
        assert!(exec(10, 1 << 20).cost() > 1 << 20);
    }

    #[tokio::test]
    async fn a_silent_client_is_disconnected_after_the_header_timeout() {
        use tokio::io::AsyncReadExt;
        let limits = Limits {
            header_timeout: Duration::from_millis(300),
            ..Limits::default()
        };
        let s = StreamServer::start(([127, 0, 0, 1], 0).into(), None, limits).unwrap();
        let addr = s.base().trim_start_matches("http://").to_string();
        let mut c = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let start = Instant::now();
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(Duration::from_secs(5), c.read(&mut buf))
            .await
            .expect("the server closes the connection")
            .unwrap_or(0);
        // hyper answers 408 or just closes; either way, no more.
        let _ = n;
        assert!(start.elapsed() >= Duration::from_millis(250));
        assert!(start.elapsed() < Duration::from_secs(3));
    }

    #[tokio::test]
    async fn connections_past_the_limit_wait_for_a_slot() {
        use tokio::io::AsyncReadExt;
        let limits = Limits {
            max_connections: 2,
            header_timeout: Duration::from_millis(500),
            ..Limits::default()
        };
        let s = StreamServer::start(([127, 0, 0, 1], 0).into(), None, limits).unwrap();
        let addr = s.base().trim_start_matches("http://").to_string();
        let mut held = Vec::new();
        for _ in 0..3 {
            held.push(tokio::net::TcpStream::connect(&addr).await.unwrap());
        }
        let start = Instant::now();
        let mut buf = [0u8; 64];
        // The third is accepted only when one of the first two is closed
        // (header timeout), then times out itself.
        let mut third = held.pop().unwrap();
        let _ = tokio::time::timeout(Duration::from_secs(5), third.read(&mut buf))
            .await
            .expect("closed");
        assert!(
            start.elapsed() >= Duration::from_millis(900),
            "{:?}",
            start.elapsed()
        );
    }
}
