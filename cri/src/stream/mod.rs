//! The streaming server behind CRI `Exec`, `Attach` and `PortForward`.
//!
//! Those RPCs only hand back a URL on this server (`/exec/<token>`,
//! `/attach/<token>`, `/portforward/<token>`); the client — kubelet's
//! proxy, the API server, crictl — then upgrades an HTTP/1.1 connection on
//! it and speaks Kubernetes' streaming protocols: WebSocket
//! (`v5.channel.k8s.io`, `v4.channel.k8s.io`, their `base64.` forms and
//! the older ones) or SPDY/3.1. A token is random, single-use and expires
//! a minute after it was issued, as kubelet's own streaming server does:
//! an unknown or reused one gets 404, an expired one 410.

pub mod attach;
pub mod exec;
pub mod portforward;
pub mod spdy;
pub mod ws;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};

/// How long a URL stays valid (kubelet's streaming server: 1 minute).
pub const TOKEN_TTL: Duration = Duration::from_secs(60);

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
}

struct Pending {
    req: StreamRequest,
    expires: Instant,
}

/// The server: its base URL and the outstanding tokens.
pub struct StreamServer {
    base: String,
    pending: Mutex<HashMap<String, Pending>>,
    ttl: Duration,
}

impl std::fmt::Debug for StreamServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamServer")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

/// Why a token is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenError {
    /// Never issued, or already used.
    Unknown,
    /// Issued, but its minute is over.
    Expired,
}

/// 256 random bits, hex: safe in a URL path.
fn random_token() -> std::io::Result<String> {
    crate::store::ObjectId::random().map(|id| id.to_string())
}

impl StreamServer {
    /// A server whose URLs start with `base` (`http://127.0.0.1:port`),
    /// not yet listening (see [`StreamServer::start`]).
    pub fn new(base: String, ttl: Duration) -> Arc<StreamServer> {
        Arc::new(StreamServer {
            base,
            pending: Mutex::default(),
            ttl,
        })
    }

    /// Binds `addr` (port 0: any free port), serves on it in the
    /// background (on the current tokio runtime), and returns the server.
    /// With `tls` (certificate chain and key, PEM files) it speaks HTTPS.
    pub fn start(addr: SocketAddr, tls: Option<&TlsFiles>) -> std::io::Result<Arc<StreamServer>> {
        let acceptor = tls.map(tls_acceptor).transpose()?;
        let std_listener = std::net::TcpListener::bind(addr)?;
        std_listener.set_nonblocking(true)?;
        let listener = tokio::net::TcpListener::from_std(std_listener)?;
        let local = listener.local_addr()?;
        let scheme = if acceptor.is_some() { "https" } else { "http" };
        let server = StreamServer::new(format!("{scheme}://{local}"), TOKEN_TTL);
        let s = server.clone();
        tokio::spawn(async move {
            loop {
                let Ok((conn, _)) = listener.accept().await else {
                    continue;
                };
                let (s, acceptor) = (s.clone(), acceptor.clone());
                tokio::spawn(async move {
                    match acceptor {
                        None => serve_conn(conn, s).await,
                        Some(a) => {
                            // A client that does not finish its handshake
                            // does not hold a task for long.
                            let hs = tokio::time::timeout(Duration::from_secs(10), a.accept(conn));
                            if let Ok(Ok(tls)) = hs.await {
                                serve_conn(tls, s).await;
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

    /// A single-use URL for `req`.
    pub fn issue(&self, req: StreamRequest) -> std::io::Result<String> {
        let token = random_token()?;
        let url = format!("{}/{}/{token}", self.base, req.kind());
        let now = Instant::now();
        let mut p = self
            .pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Long-expired tokens are forgotten (a day after: 410 before that).
        p.retain(|_, v| v.expires + Duration::from_secs(86_400) > now);
        p.insert(
            token,
            Pending {
                req,
                expires: now + self.ttl,
            },
        );
        Ok(url)
    }

    /// Takes the request of `token` for a URL of `kind` (once).
    pub fn take(&self, kind: &str, token: &str) -> Result<StreamRequest, TokenError> {
        let mut p = self
            .pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match p.get(token) {
            Some(v) if v.req.kind() != kind => Err(TokenError::Unknown),
            Some(v) if v.expires < Instant::now() => {
                p.remove(token);
                Err(TokenError::Expired)
            }
            Some(_) => Ok(p.remove(token).map(|v| v.req).ok_or(TokenError::Unknown)?),
            None => Err(TokenError::Unknown),
        }
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
            ws::upgrade(req, target)
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

/// Serves HTTP/1.1 (with upgrades) on one connection.
async fn serve_conn<IO>(io: IO, s: Arc<StreamServer>)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = hyper::service::service_fn(move |req| {
        let s = s.clone();
        async move { Ok::<_, std::convert::Infallible>(s.handle(req).await) }
    });
    let _ = hyper::server::conn::http1::Builder::new()
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
        let session = spdy::Session::server(hyper_util::rt::TokioIo::new(upgraded));
        let version = ws::Protocol::parse(&proto).map_or(1, |p| p.version);
        match target {
            StreamRequest::Exec(t) => exec::serve_spdy(session, exec::Job::Exec(t), version).await,
            StreamRequest::Attach(t) => {
                exec::serve_spdy(session, exec::Job::Attach(t), version).await
            }
            StreamRequest::PortForward(t) => portforward::serve_spdy(session, t).await,
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
        let s = StreamServer::new("http://127.0.0.1:1".into(), Duration::from_millis(50));
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
}
