//! hosts.toml's `client`, `header`, `override_path` and `dial_timeout`, and
//! the node auth file (`--auth-file`), through the real `berth serve`
//! against real `docker-registry`s: one over TLS that requires client
//! certificates (certificates made with openssl), one behind a gateway that
//! wants a header or serves under a path prefix, one behind a blackholed
//! mirror, one with htpasswd auth.
//!
//! The registries are shown to need what the keys give (curl without the
//! certificate, a request without the header), and berth to send it.

use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use berth_cri::proto::image_service_client::ImageServiceClient;
use berth_cri::proto::runtime_service_client::RuntimeServiceClient;
use berth_cri::proto::{self, ImageSpec};
use berth_e2e::berth_binary;
use berth_e2e::daemon::Daemon;
use berth_e2e::gateway::{Gateway, GatewayRules};
use berth_e2e::images::{self, PushedImage};
use berth_e2e::pki::TestPki;
use berth_e2e::registry::{self, Registry, RegistryOptions, Tls};
use tonic::Code;

/// A daemon with its own `--registry-config-dir` and `--auth-file`.
struct Node {
    dir: tempfile::TempDir,
    daemon: Daemon,
    images: ImageServiceClient<tonic::transport::Channel>,
}

impl Node {
    /// `None` after printing `skipped: ...` when this is not root or the
    /// berth binary is not built.
    async fn start(test: &str) -> Option<Node> {
        if !nix::unistd::geteuid().is_root() {
            println!("skipped: {test}: needs root");
            return None;
        }
        let berth = berth_binary(test)?;
        let dir = tempfile::tempdir().unwrap();
        let certs = dir.path().join("certs.d");
        std::fs::create_dir_all(&certs).unwrap();
        let auth = dir.path().join("auth.json");
        let daemon = Daemon::start(
            &berth,
            dir.path(),
            &[
                "--registry-config-dir",
                certs.to_str().unwrap(),
                "--auth-file",
                auth.to_str().unwrap(),
            ],
        );
        let images = ImageServiceClient::new(daemon.channel().await);
        Some(Node {
            dir,
            daemon,
            images,
        })
    }

    /// The directory of `registry`'s hosts.toml.
    fn host_dir(&self, registry: &str) -> PathBuf {
        let d = self.dir.path().join("certs.d").join(registry);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn hosts(&self, registry: &str, toml: &str) {
        std::fs::write(self.host_dir(registry).join("hosts.toml"), toml).unwrap();
    }

    fn auth_file(&self) -> PathBuf {
        self.dir.path().join("auth.json")
    }

    async fn pull(
        &mut self,
        image: &str,
        auth: Option<(&str, &str)>,
    ) -> Result<String, tonic::Status> {
        self.images
            .pull_image(proto::PullImageRequest {
                image: Some(ImageSpec {
                    image: image.into(),
                    ..Default::default()
                }),
                auth: auth.map(|(u, p)| proto::AuthConfig {
                    username: u.into(),
                    password: p.into(),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await
            .map(|r| r.into_inner().image_ref)
    }

    /// Pulls and expects success (the daemon's log in the panic message).
    async fn pull_ok(&mut self, image: &str, auth: Option<(&str, &str)>) -> String {
        match self.pull(image, auth).await {
            Ok(id) => id,
            Err(e) => panic!("pulling {image}: {e:?}\nlog:\n{}", self.daemon.log()),
        }
    }

    async fn pull_err(&mut self, image: &str, auth: Option<(&str, &str)>) -> tonic::Status {
        match self.pull(image, auth).await {
            Ok(id) => panic!("pulling {image} succeeded ({id}); it must fail"),
            Err(e) => e,
        }
    }
}

/// A started registry, or `None` after printing why not.
fn start_registry(test: &str, opts: RegistryOptions) -> Option<Registry> {
    match Registry::start_with(opts) {
        Ok(r) => Some(r),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            println!("skipped: {test}: {e}");
            None
        }
        Err(e) => panic!("{test}: starting the registry: {e}"),
    }
}

async fn push(reg: &Registry, repo: &str, tag: &str) -> PushedImage {
    images::busybox_image(&reg.addr(), repo, tag).await.unwrap()
}

/// A loopback port nothing listens on (connections are refused at once).
fn closed_port() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

/// `curl`'s HTTP status for `GET https://<addr>/v2/` with the test CA and,
/// when given, a client certificate; `None` when curl is not installed,
/// `Some(0)` when the TLS handshake fails.
fn curl_status(addr: &str, pki: &TestPki, with_cert: bool) -> Option<u16> {
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
        .arg(&pki.ca);
    if with_cert {
        cmd.arg("--cert").arg(&pki.client_cert);
        cmd.arg("--key").arg(&pki.client_key);
    }
    let out = cmd.arg(format!("https://{addr}/v2/")).output().ok()?;
    Some(
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or(0),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_are_presented() {
    const T: &str = "client_certificates_are_presented";
    let Some(mut node) = Node::start(T).await else {
        return;
    };
    let pki = match TestPki::generate() {
        Ok(p) => p,
        Err(e) => {
            println!("skipped: {T}: no test certificates: {e}");
            return;
        }
    };
    let Some(plain) = start_registry(T, RegistryOptions::default()) else {
        return;
    };
    let pushed = push(&plain, "test/busybox", "1").await;
    // The same storage over TLS, client certificates from the test CA
    // required.
    let Some(mtls) = start_registry(
        T,
        RegistryOptions {
            tls: Some(Tls {
                cert: pki.server_cert.clone(),
                key: pki.server_key.clone(),
                client_ca: Some(pki.ca.clone()),
            }),
            storage: Some(plain.storage_dir().to_path_buf()),
            ..RegistryOptions::default()
        },
    ) else {
        return;
    };
    match (
        curl_status(&mtls.addr(), &pki, false),
        curl_status(&mtls.addr(), &pki, true),
    ) {
        (Some(without), Some(with)) => {
            assert_ne!(
                without, 200,
                "the registry must require a client certificate"
            );
            assert_eq!(
                with, 200,
                "the registry must accept the test client certificate"
            );
        }
        _ => println!("{T}: curl not installed; the registry's mTLS is not cross-checked"),
    }
    let name = "mtls.example.test";
    let image = format!("{name}/test/busybox:1");
    let dir = node.host_dir(name);
    for f in [&pki.ca, &pki.client_cert, &pki.client_key] {
        std::fs::copy(f, dir.join(f.file_name().unwrap())).unwrap();
    }

    // Without `client` the handshake fails at the registry.
    node.hosts(
        name,
        &format!("server = \"https://{}\"\nca = \"ca.pem\"\n", mtls.addr()),
    );
    let err = node.pull_err(&image, None).await;
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(!err.message().contains("`client`"), "{err:?}");

    // With `client` (a [cert, key] pair relative to the file), berth
    // presents the certificate and the pull works.
    node.hosts(
        name,
        &format!(
            "server = \"https://{}\"\nca = \"ca.pem\"\nclient = [[\"client.pem\", \"client.key\"]]\n",
            mtls.addr()
        ),
    );
    assert_eq!(node.pull_ok(&image, None).await, pushed.config_digest);

    // A certificate file that holds the key too (a single path), as a
    // mirror in front of an upstream that cannot serve: the mirror does.
    let both = std::fs::read_to_string(&pki.client_cert).unwrap()
        + &std::fs::read_to_string(&pki.client_key).unwrap();
    std::fs::write(dir.join("both.pem"), both).unwrap();
    let image2 = format!("{name}/test/busybox2:1");
    push(&plain, "test/busybox2", "1").await;
    node.hosts(
        name,
        &format!(
            "server = \"http://127.0.0.1:9\"\n[host.\"https://{}\"]\n  ca = \"ca.pem\"\n  client = \"both.pem\"\n",
            mtls.addr()
        ),
    );
    assert_eq!(node.pull_ok(&image2, None).await, pushed.config_digest);

    // A client certificate that cannot be read fails the pull, naming the
    // file, rather than connecting without it.
    let image3 = format!("{name}/test/busybox3:1");
    push(&plain, "test/busybox3", "1").await;
    node.hosts(
        name,
        &format!(
            "server = \"https://{}\"\nca = \"ca.pem\"\nclient = \"missing.pem\"\n",
            mtls.addr()
        ),
    );
    let err = node.pull_err(&image3, None).await;
    assert!(err.message().contains("missing.pem"), "{err:?}");
}

/// The status of `GET /v2/` on `addr` with one extra header line.
fn status_with_header(addr: &str, header: &str) -> u16 {
    use std::io::{Read, Write};
    let mut s = TcpStream::connect(addr).unwrap();
    write!(s, "GET /v2/ HTTP/1.0\r\nHost: {addr}\r\n{header}\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_endpoints_send_their_headers() {
    const T: &str = "header_endpoints_send_their_headers";
    let Some(mut node) = Node::start(T).await else {
        return;
    };
    let Some(reg) = start_registry(T, RegistryOptions::default()) else {
        return;
    };
    let pushed = push(&reg, "test/busybox", "1").await;
    let gw = Gateway::start(
        &reg.addr(),
        GatewayRules {
            require_header: Some(("X-Registry-Key".into(), "open-sesame".into())),
            ..GatewayRules::default()
        },
    )
    .unwrap();
    assert_eq!(registry::http_status(&gw.addr(), "/v2/").unwrap(), 403);
    assert_eq!(
        status_with_header(&gw.addr(), "x-registry-key: open-sesame"),
        200
    );
    let refused = gw.refused();
    let name = "hdr.example.test";
    let image = format!("{name}/test/busybox:1");

    // Without the header the gateway refuses berth.
    node.hosts(name, &format!("server = \"http://{}\"\n", gw.addr()));
    let err = node.pull_err(&image, None).await;
    assert!(gw.refused() > refused, "the gateway saw berth's requests");
    assert_ne!(err.code(), Code::Ok);
    let (forwarded, refused) = (gw.forwarded(), gw.refused());

    // With `[header]` (top level, i.e. the server's), berth sends it and the
    // gateway lets the pull through.
    node.hosts(
        name,
        &format!(
            "server = \"http://{}\"\n[header]\n  X-Registry-Key = \"open-sesame\"\n",
            gw.addr()
        ),
    );
    assert_eq!(node.pull_ok(&image, None).await, pushed.config_digest);
    assert!(
        gw.forwarded() > forwarded,
        "the gateway forwarded berth's requests"
    );
    assert_eq!(gw.refused(), refused, "none refused");

    // A mirror with a header list serves a pull too (the upstream cannot).
    let image2 = format!("{name}/test/busybox2:1");
    push(&reg, "test/busybox2", "1").await;
    node.hosts(
        name,
        &format!(
            "server = \"http://127.0.0.1:9\"\n[host.\"http://{}\"]\n  [host.\"http://{}\".header]\n    X-Registry-Key = [\"open-sesame\"]\n",
            gw.addr(),
            gw.addr()
        ),
    );
    assert_eq!(node.pull_ok(&image2, None).await, pushed.config_digest);
    assert_eq!(gw.refused(), refused, "none refused");
    // The secret header value is not logged.
    assert!(!node.daemon.log().contains("open-sesame"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_prefixes_and_override_path_reach_a_mirror_under_a_prefix() {
    const T: &str = "path_prefixes_and_override_path_reach_a_mirror_under_a_prefix";
    let Some(mut node) = Node::start(T).await else {
        return;
    };
    let Some(reg) = start_registry(T, RegistryOptions::default()) else {
        return;
    };
    let pushed = push(&reg, "test/busybox", "1").await;
    let gw = Gateway::start(
        &reg.addr(),
        GatewayRules {
            prefix: Some("/registry".into()),
            ..GatewayRules::default()
        },
    )
    .unwrap();
    let name = "prefix.example.test";
    let image = format!("{name}/test/busybox:1");
    // The upstream refuses connections: only the mirror can serve.
    let dead = closed_port();

    // override_path: the URL's path is the API root as it is.
    node.hosts(
        name,
        &format!(
            "server = \"http://{dead}\"\n[host.\"http://{}/registry/v2\"]\n  override_path = true\n",
            gw.addr()
        ),
    );
    assert_eq!(node.pull_ok(&image, None).await, pushed.config_digest);
    let forwarded = gw.forwarded();
    assert!(
        forwarded >= 3,
        "manifest, config and layer went through the prefix"
    );
    assert_eq!(gw.refused(), 0, "every request was under /registry");

    // Without it containerd appends /v2 to a path: the same root.
    node.hosts(
        name,
        &format!(
            "server = \"http://{dead}\"\n[host.\"http://{}/registry\"]\n",
            gw.addr()
        ),
    );
    node.pull_ok(&image, None).await;
    assert!(gw.forwarded() > forwarded);
    // And the upstream itself may have a prefix.
    let forwarded = gw.forwarded();
    node.hosts(
        name,
        &format!("server = \"http://{}/registry\"\n", gw.addr()),
    );
    node.pull_ok(&image, None).await;
    assert!(gw.forwarded() > forwarded);
    assert_eq!(gw.refused(), 0);

    // override_path with a root that does not end in /v2 (a registry
    // without the /v2 prefix): oci-client cannot address it; refused by
    // name, never contacted.
    let (forwarded, refused) = (gw.forwarded(), gw.refused());
    node.hosts(
        name,
        &format!(
            "server = \"http://{}/registry\"\noverride_path = true\n",
            gw.addr()
        ),
    );
    let err = node.pull_err(&image, None).await;
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(
        err.message().contains("`override_path`") && err.message().contains("/v2"),
        "{err:?}"
    );
    assert_eq!((gw.forwarded(), gw.refused()), (forwarded, refused));
}

/// A loopback listener that takes no connection: backlog 0 and one
/// connection already queued (kept open), so further SYNs are dropped and a
/// connect hangs. `None` when the kernel does not behave so here.
fn blackhole() -> Option<(SocketAddr, OwnedFd, TcpStream)> {
    use nix::sys::socket::{
        bind, getsockname, listen, socket, AddressFamily, Backlog, SockFlag, SockType, SockaddrIn,
    };
    let fd = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .ok()?;
    bind(fd.as_raw_fd(), &SockaddrIn::new(127, 0, 0, 1, 0)).ok()?;
    listen(&fd, Backlog::new(0).ok()?).ok()?;
    let local: SockaddrIn = getsockname(fd.as_raw_fd()).ok()?;
    let addr = SocketAddr::from(([127, 0, 0, 1], local.port()));
    let filler = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    match TcpStream::connect_timeout(&addr, Duration::from_millis(300)) {
        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => Some((addr, fd, filler)),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dial_timeout_abandons_a_blackholed_mirror_for_the_next_endpoint() {
    const T: &str = "dial_timeout_abandons_a_blackholed_mirror_for_the_next_endpoint";
    let Some(mut node) = Node::start(T).await else {
        return;
    };
    let Some(reg) = start_registry(T, RegistryOptions::default()) else {
        return;
    };
    let pushed = push(&reg, "test/busybox", "1").await;
    let Some((hole, _listener, _filler)) = blackhole() else {
        println!("skipped: {T}: a full accept queue does not drop SYNs here");
        return;
    };
    let name = "slow.example.test";
    node.hosts(
        name,
        &format!(
            "server = \"http://{}\"\n[host.\"http://{hole}\"]\n  dial_timeout = \"300ms\"\n",
            reg.addr()
        ),
    );
    let started = Instant::now();
    let id = node.pull_ok(&format!("{name}/test/busybox:1"), None).await;
    let took = started.elapsed();
    assert_eq!(id, pushed.config_digest);
    // The mirror was tried first and given up on...
    let log = node.daemon.log();
    assert!(
        log.lines()
            .any(|l| l.contains("resolve failed") && l.contains(&hole.to_string())),
        "{log}"
    );
    // ...after 300 ms per connect (resolve, config and layer each try it,
    // an auth probe and a request apiece: about 1.8 s), where a single
    // connect left to berth's default bound (10 s) would exceed the limit.
    assert!(took >= Duration::from_millis(600), "{took:?}");
    assert!(
        took < Duration::from_secs(9),
        "{took:?}: dial_timeout did not bound the connect"
    );
    println!("{T}: pull through a blackholed mirror took {took:?}");
}

/// Standard base64 (the test crate has no base64 dependency).
fn base64(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn write_private(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_auth_file_is_used_when_the_request_has_no_credentials() {
    const T: &str = "node_auth_file_is_used_when_the_request_has_no_credentials";
    const PASSWORD: &str = "n0de-s3cret-pw";
    let Some(mut node) = Node::start(T).await else {
        return;
    };
    let Some(reg) = start_registry(
        T,
        RegistryOptions {
            htpasswd: Some(("berth".into(), PASSWORD.into())),
            ..RegistryOptions::default()
        },
    ) else {
        return;
    };
    let spec = images::ImageSpec::new(
        vec![images::busybox_layer().unwrap()],
        serde_json::json!({}),
    );
    let pushed = images::push_image(
        &reg.addr(),
        "test/private",
        "1",
        &spec,
        Some(("berth", PASSWORD)),
    )
    .await
    .unwrap();
    let image = format!("{}/test/private:1", reg.addr());
    let file = node.auth_file();

    // No file: anonymous, refused by the registry.
    let err = node.pull_err(&image, None).await;
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");

    // A malformed file: a clear error naming it (and not quoting it); the
    // daemon carries on.
    write_private(
        &file,
        &format!("{{\"auths\": {{\"{}\": \"{PASSWORD}\"}}}}", reg.addr()),
    );
    let err = node.pull_err(&image, None).await;
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains(file.to_str().unwrap()), "{err:?}");
    assert!(!err.message().contains(PASSWORD), "{err:?}");
    RuntimeServiceClient::new(node.daemon.channel().await)
        .version(proto::VersionRequest::default())
        .await
        .expect("the daemon survives a bad auth file");

    // Valid, keyed the way `docker login` writes it: the pull works.
    let good = base64(format!("berth:{PASSWORD}").as_bytes());
    write_private(
        &file,
        &format!(
            "{{\"auths\": {{\"https://{}/v1/\": {{\"auth\": \"{good}\"}}}}}}",
            reg.addr()
        ),
    );
    assert_eq!(node.pull_ok(&image, None).await, pushed.config_digest);

    // Request credentials win over the file: wrong ones fail...
    let err = node.pull_err(&image, Some(("berth", "wrong"))).await;
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    // ...and right ones succeed over a wrong file.
    write_private(
        &file,
        &format!(
            "{{\"auths\": {{\"{}\": {{\"username\": \"berth\", \"password\": \"wrong\"}}}}}}",
            reg.addr()
        ),
    );
    let err = node.pull_err(&image, None).await;
    assert_eq!(
        err.code(),
        Code::Unauthenticated,
        "the file's wrong password is used: {err:?}"
    );
    assert_eq!(
        node.pull_ok(&image, Some(("berth", PASSWORD))).await,
        pushed.config_digest
    );

    let log = node.daemon.log();
    assert!(
        !log.contains(PASSWORD) && !log.contains(&good),
        "credentials in the log"
    );
}

#[test]
fn base64_matches_the_standard() {
    assert_eq!(base64(b""), "");
    assert_eq!(base64(b"f"), "Zg==");
    assert_eq!(base64(b"fo"), "Zm8=");
    assert_eq!(base64(b"foo"), "Zm9v");
    assert_eq!(base64(b"berth:s3cret"), "YmVydGg6czNjcmV0");
}
