//! A real registry for image tests: CNCF distribution (`docker-registry`,
//! Debian's `docker-registry` package) on a loopback port, with its storage,
//! config and log in a temporary directory that goes away with it; plain
//! HTTP, or TLS (optionally requiring client certificates), anonymous or
//! with htpasswd auth.

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// Where Debian installs the distribution registry.
pub const REGISTRY_BINARY: &str = "/usr/bin/docker-registry";

/// How long `start` waits for `GET /v2/` to answer.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// How many free ports `start` tries: the port is picked by binding port 0
/// and releasing it, so another process may take it before the registry does.
const PORT_ATTEMPTS: usize = 5;

/// What to start: [`Registry::start_with`].
#[derive(Debug, Clone, Default)]
pub struct RegistryOptions {
    /// HTTP basic auth for this one user (htpasswd, bcrypt).
    pub htpasswd: Option<(String, String)>,
    /// Serve HTTPS instead of HTTP.
    pub tls: Option<Tls>,
    /// Serve this storage directory (another registry's
    /// [`Registry::storage_dir`]) instead of a fresh one: images pushed over
    /// plain HTTP are then served by a TLS or auth registry too.
    pub storage: Option<PathBuf>,
}

/// The registry's TLS files (`http.tls`).
#[derive(Debug, Clone)]
pub struct Tls {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// Its PEM key.
    pub key: PathBuf,
    /// CA whose client certificates are required (`http.tls.clientcas`):
    /// with it, a client without such a certificate fails the handshake.
    pub client_ca: Option<PathBuf>,
}

/// A running `docker-registry serve`, killed (by the PID of the child this
/// process spawned) and reaped on drop.
pub struct Registry {
    child: Child,
    addr: String,
    storage: PathBuf,
    log: PathBuf,
    // Dropped after the child is killed (fields drop after `Drop::drop`).
    _dir: TempDir,
}

impl Registry {
    /// Starts an anonymous registry (push and pull open to anyone).
    ///
    /// `NotFound` with "docker-registry not installed" when the binary is
    /// missing, so that a test can print `skipped: ...`.
    pub fn start() -> io::Result<Registry> {
        Self::start_with(RegistryOptions::default())
    }

    /// Starts a registry that requires HTTP basic auth as `user`/`password`
    /// (htpasswd file made with `htpasswd -Bbn`, bcrypt being the only hash
    /// distribution accepts).
    pub fn start_with_auth(user: &str, password: &str) -> io::Result<Registry> {
        Self::start_with(RegistryOptions {
            htpasswd: Some((user.into(), password.into())),
            ..RegistryOptions::default()
        })
    }

    /// `127.0.0.1:PORT`, the registry part of an image reference.
    pub fn addr(&self) -> String {
        self.addr.clone()
    }

    /// The filesystem driver's root directory.
    pub fn storage_dir(&self) -> &Path {
        &self.storage
    }

    /// The file that holds the content of `digest` (`sha256:<hex>` or bare
    /// hex) in the registry's storage, for tests that corrupt a blob. The
    /// registry serves the file as it is, without re-checking the digest.
    pub fn blob_data_path(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
        self.storage
            .join("docker/registry/v2/blobs/sha256")
            .join(&hex[..2.min(hex.len())])
            .join(hex)
            .join("data")
    }

    /// Stores `data` as a blob of `repo` by writing the registry's storage
    /// as its filesystem driver lays it out (the blob, and the repository's
    /// link to it), for content too big to push quickly. Returns its digest.
    pub fn put_blob_file(&self, repo: &str, data: &[u8]) -> io::Result<String> {
        let digest = crate::images::sha256_digest(data);
        let hex = &digest["sha256:".len()..];
        let blob = self.blob_data_path(&digest);
        std::fs::create_dir_all(blob.parent().unwrap_or(&self.storage))?;
        std::fs::write(&blob, data)?;
        self.write_link(&format!("{repo}/_layers/sha256/{hex}"), &digest)?;
        Ok(digest)
    }

    /// `<repositories>/<dir>/link` holding `digest`.
    fn write_link(&self, dir: &str, digest: &str) -> io::Result<()> {
        let dir = self
            .storage
            .join("docker/registry/v2/repositories")
            .join(dir);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("link"), digest)
    }

    /// What the registry has logged so far (warnings and errors only).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Starts a registry as `opts` says (`NotFound` as [`Registry::start`]).
    pub fn start_with(opts: RegistryOptions) -> io::Result<Registry> {
        if !Path::new(REGISTRY_BINARY).exists() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                "docker-registry not installed",
            ));
        }
        let dir = tempfile::Builder::new()
            .prefix("berth-registry")
            .tempdir()?;
        let storage = match &opts.storage {
            Some(shared) => shared.clone(),
            None => dir.path().join("storage"),
        };
        std::fs::create_dir_all(&storage)?;
        let htpasswd = match &opts.htpasswd {
            Some((user, password)) => Some(write_htpasswd(dir.path(), user, password)?),
            None => None,
        };
        let mut last_err = None;
        for attempt in 0..PORT_ATTEMPTS {
            let addr = format!("127.0.0.1:{}", free_port()?);
            let config = dir.path().join("config.yml");
            std::fs::write(
                &config,
                config_yaml(&addr, &storage, htpasswd.as_deref(), opts.tls.as_ref()),
            )?;
            let log = dir.path().join(format!("registry-{attempt}.log"));
            let log_file = File::create(&log)?;
            let mut child = Command::new(REGISTRY_BINARY)
                .arg("serve")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(log_file.try_clone()?)
                .stderr(log_file)
                .spawn()?;
            match wait_ready(&mut child, &addr, &log, opts.tls.is_some()) {
                Ok(()) => {
                    return Ok(Registry {
                        child,
                        addr,
                        storage,
                        log,
                        _dir: dir,
                    })
                }
                Err(e) => {
                    // Our own child, by its PID; it may already have exited.
                    let _ = child.kill();
                    let _ = child.wait();
                    if e.kind() != io::ErrorKind::AddrInUse {
                        return Err(e);
                    }
                    last_err = Some(e);
                }
            }
        }
        Err(last_err.unwrap_or_else(|| io::Error::other("docker-registry did not start")))
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        // `Child::kill` signals this child's PID only; `wait` reaps it so no
        // zombie outlives the test.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `GET /v2/` until it answers 200 (anonymous) or 401 (auth
/// required) — or, for a TLS registry, 400 (Go's answer to plain HTTP on a
/// TLS port) — the child exits, or `READY_TIMEOUT` passes. The error carries
/// the registry's log; `AddrInUse` when the port was taken meanwhile.
fn wait_ready(child: &mut Child, addr: &str, log: &Path, tls: bool) -> io::Result<()> {
    let read_log = || std::fs::read_to_string(log).unwrap_or_default();
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Some(status) = child.try_wait()? {
            let log = read_log();
            let kind = if log.contains("address already in use") {
                io::ErrorKind::AddrInUse
            } else {
                io::ErrorKind::Other
            };
            return Err(io::Error::new(
                kind,
                format!(
                    "docker-registry on {addr} exited with {status} before answering; log:\n{log}"
                ),
            ));
        }
        match http_status(addr, "/v2/") {
            Ok(200 | 401) => return Ok(()),
            Ok(400) if tls => return Ok(()),
            _ => {}
        }
        if Instant::now() >= deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "docker-registry on {addr} did not answer GET /v2/ within {READY_TIMEOUT:?}; log:\n{}",
                    read_log()
                ),
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A port nobody listens on right now (bind port 0, read it, release it).
fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Writes `htpasswd` (bcrypt) for one user into `dir`.
fn write_htpasswd(dir: &Path, user: &str, password: &str) -> io::Result<PathBuf> {
    let out = Command::new("htpasswd")
        .args(["-Bbn", user, password])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| io::Error::new(e.kind(), format!("htpasswd (apache2-utils): {e}")))?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "htpasswd -Bbn failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    let path = dir.join("htpasswd");
    std::fs::write(&path, &out.stdout)?;
    Ok(path)
}

/// The registry configuration. No `cache:` section, so nothing is cached in
/// memory and a blob corrupted on disk is served corrupted; redirects are off
/// so blobs come from the registry itself (through a `Proxy` if one sits in
/// front); the upload purger is off so it never touches storage mid-test.
fn config_yaml(addr: &str, storage: &Path, htpasswd: Option<&Path>, tls: Option<&Tls>) -> String {
    let mut yaml = format!(
        "version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: {storage}
  delete:
    enabled: true
  redirect:
    disable: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: {addr}
  secret: berth-test-secret
",
        storage = storage.display()
    );
    if let Some(tls) = tls {
        yaml.push_str(&format!(
            "  tls:\n    certificate: {}\n    key: {}\n",
            tls.cert.display(),
            tls.key.display()
        ));
        if let Some(ca) = &tls.client_ca {
            yaml.push_str(&format!("    clientcas:\n      - {}\n", ca.display()));
        }
    }
    if let Some(path) = htpasswd {
        yaml.push_str(&format!(
            "auth:
  htpasswd:
    realm: berth-test
    path: {}
",
            path.display()
        ));
    }
    yaml
}

/// The status code of an anonymous `GET path` on `addr` (HTTP/1.0, so the
/// server closes the connection after answering). For readiness checks and
/// for tests that assert a registry refuses anonymous access.
pub fn http_status(addr: &str, path: &str) -> io::Result<u16> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    // The status line is all we need.
    while !head.ends_with(b"\r\n") && head.len() < 512 {
        if stream.read(&mut byte)? == 0 {
            break;
        }
        head.push(byte[0]);
    }
    let line = String::from_utf8_lossy(&head);
    line.split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| io::Error::other(format!("bad HTTP status line from {addr}: {line:?}")))
}
