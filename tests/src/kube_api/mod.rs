//! A stand-in for the Kubernetes API server and the kubelet behind it, so
//! that the real `kubectl` can be a client of berth's streaming server.
//!
//! It serves, over plain HTTP on 127.0.0.1, what kubectl asks before it
//! streams (`/version`, legacy discovery, `GET` of a pod), `kubectl logs`
//! from the CRI log file, and the streaming subresources `exec`, `attach`
//! and `portforward`: their query becomes the CRI request kubelet would
//! send (through the [`Cri`] the test passes in), and the client's upgrade
//! is relayed to the streaming URL berth hands back (see [`relay`]).
//! Pods and containers are registered by the test (name → CRI ids).
//! Anything else gets a 404 `Status` and is printed, so a request kubectl
//! makes that the stand-in lacks shows in the test's output.

pub mod http;
pub mod relay;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use http::{read_head, response, Head};

/// The namespace of every registered pod (the kubeconfig's default).
pub const NAMESPACE: &str = "default";

/// What kubectl asked to stream, as the CRI request kubelet makes of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamCall {
    /// CRI `Exec`.
    Exec {
        container_id: String,
        cmd: Vec<String>,
        stdin: bool,
        stdout: bool,
        stderr: bool,
        tty: bool,
    },
    /// CRI `Attach`.
    Attach {
        container_id: String,
        stdin: bool,
        stdout: bool,
        stderr: bool,
        tty: bool,
    },
    /// CRI `PortForward` (ports from the query; kubectl names none, the
    /// SPDY streams carry them).
    PortForward { sandbox_id: String, ports: Vec<u16> },
}

/// A boxed future, for [`Cri`].
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// The runtime behind the stand-in: asks it for a streaming URL.
pub trait Cri: Send + Sync + 'static {
    /// The URL of the CRI `Exec`/`Attach`/`PortForward` answer, or the
    /// error's message.
    fn streaming_url(&self, call: StreamCall) -> BoxFuture<Result<String, String>>;
}

/// A container of a registered pod.
#[derive(Debug, Clone)]
pub struct Container {
    /// Its name in the pod (kubectl's `-c`).
    pub name: String,
    /// The CRI container id.
    pub id: String,
    /// Created with stdin open (the pod spec's `stdin`: kubectl attach -i
    /// wants it).
    pub stdin: bool,
    /// Created with a terminal.
    pub tty: bool,
    /// Its CRI log file, for `kubectl logs`.
    pub log_path: Option<PathBuf>,
}

/// One streaming request as the stand-in handled it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    /// `exec`, `attach` or `portforward`.
    pub subresource: String,
    /// The client's `Upgrade` (lower case): `websocket` or `spdy/3.1`.
    pub upgrade: String,
    /// The status the client got (berth's, or the stand-in's on error).
    pub status: u16,
}

#[derive(Default)]
struct Pods {
    /// name → (sandbox id, containers)
    pods: HashMap<String, (String, Vec<Container>)>,
}

struct State {
    cri: Box<dyn Cri>,
    pods: Mutex<Pods>,
    seen: Mutex<Vec<Seen>>,
    tasks: Mutex<Vec<tokio::task::AbortHandle>>,
}

/// The running stand-in; stops (every connection too) on drop.
pub struct KubeApi {
    addr: SocketAddr,
    state: Arc<State>,
}

impl Drop for KubeApi {
    fn drop(&mut self) {
        for t in self.state.tasks.lock().unwrap().drain(..) {
            t.abort();
        }
    }
}

impl KubeApi {
    /// Listens on a free port of 127.0.0.1 (on the current tokio runtime).
    pub async fn start(cri: impl Cri) -> std::io::Result<KubeApi> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State {
            cri: Box::new(cri),
            pods: Mutex::default(),
            seen: Mutex::default(),
            tasks: Mutex::default(),
        });
        let s = state.clone();
        let accept = tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                let task = tokio::spawn(serve_conn(s.clone(), conn));
                let mut tasks = s.tasks.lock().unwrap();
                tasks.retain(|t| !t.is_finished());
                tasks.push(task.abort_handle());
            }
        });
        state.tasks.lock().unwrap().push(accept.abort_handle());
        Ok(KubeApi { addr, state })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Registers pod `name` (in [`NAMESPACE`]) for CRI sandbox `sandbox_id`.
    pub fn add_pod(&self, name: &str, sandbox_id: &str) {
        let mut p = self.state.pods.lock().unwrap();
        p.pods
            .insert(name.to_string(), (sandbox_id.to_string(), Vec::new()));
    }

    /// Adds `container` to pod `pod` (registered before).
    pub fn add_container(&self, pod: &str, container: Container) {
        let mut p = self.state.pods.lock().unwrap();
        let entry = p.pods.get_mut(pod).expect("add_pod first");
        entry.1.retain(|c| c.name != container.name);
        entry.1.push(container);
    }

    /// The streaming requests handled so far (and forgets them).
    pub fn take_seen(&self) -> Vec<Seen> {
        std::mem::take(&mut *self.state.seen.lock().unwrap())
    }

    /// Writes a kubeconfig for this server (no credentials, namespace
    /// [`NAMESPACE`]) to `path`.
    pub fn write_kubeconfig(&self, path: &Path) -> std::io::Result<()> {
        let url = self.url();
        std::fs::write(
            path,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: berth-test\n  cluster:\n    server: {url}\ncontexts:\n- name: berth-test\n  context:\n    cluster: berth-test\n    user: berth-test\n    namespace: {NAMESPACE}\ncurrent-context: berth-test\nusers:\n- name: berth-test\n  user: {{}}\n"
            ),
        )
    }
}

/// Serves requests on one connection until it closes or is upgraded.
async fn serve_conn(state: Arc<State>, mut conn: TcpStream) {
    let mut buf = Vec::new();
    loop {
        let Ok(Some(head)) = read_head(&mut conn, &mut buf).await else {
            return;
        };
        let path = head.path().to_string();
        let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
        let answer = match (head.method(), segs.as_slice()) {
            ("GET", ["version"]) => json_ok(&version()),
            ("GET", ["api"]) => json_ok(&json!({
                "kind": "APIVersions",
                "versions": ["v1"],
                "serverAddressByClientCIDRs": [],
            })),
            ("GET", ["apis"]) => json_ok(&json!({
                "kind": "APIGroupList", "apiVersion": "v1", "groups": [],
            })),
            ("GET", ["api", "v1"]) => json_ok(&resources()),
            ("GET", ["api", "v1", "namespaces", NAMESPACE, "pods", name]) => {
                match pod_json(&state, name) {
                    Some(pod) => json_ok(&pod),
                    None => not_found(&format!("pods \"{name}\" not found")),
                }
            }
            ("GET", ["api", "v1", "namespaces", NAMESPACE, "pods", name, "log"]) => {
                logs(&state, name, &head)
            }
            (_, ["api", "v1", "namespaces", NAMESPACE, "pods", name, sub])
                if matches!(*sub, "exec" | "attach" | "portforward") =>
            {
                let (name, sub) = (name.to_string(), sub.to_string());
                stream(&state, conn, &head, buf, &name, &sub).await;
                return;
            }
            _ => {
                println!("kube-api stand-in: unknown request {}", head.first);
                not_found(&format!("the stand-in does not serve {}", head.first))
            }
        };
        // Bodies of the requests answered here are empty or ignored (a
        // streaming request's goes on to berth with it, unread).
        let len: usize = head
            .header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        while buf.len() < len {
            let mut chunk = [0u8; 4096];
            match conn.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        buf.drain(..len);
        if conn.write_all(&answer).await.is_err() {
            return;
        }
    }
}

fn version() -> serde_json::Value {
    json!({
        "major": "1", "minor": "32", "gitVersion": "v1.32.4",
        "platform": "linux/amd64",
    })
}

/// Legacy discovery of `/api/v1`: pods and the subresources kubectl uses.
fn resources() -> serde_json::Value {
    let sub = |name: &str, kind: &str, verbs: &[&str]| json!({"name": name, "singularName": "", "namespaced": true, "kind": kind, "verbs": verbs});
    json!({
        "kind": "APIResourceList",
        "groupVersion": "v1",
        "resources": [
            {"name": "pods", "singularName": "pod", "namespaced": true, "kind": "Pod",
             "verbs": ["get", "list"], "shortNames": ["po"]},
            sub("pods/exec", "PodExecOptions", &["create", "get"]),
            sub("pods/attach", "PodAttachOptions", &["create", "get"]),
            sub("pods/portforward", "PodPortForwardOptions", &["create", "get"]),
            sub("pods/log", "Pod", &["get"]),
        ],
    })
}

fn pod_json(state: &State, name: &str) -> Option<serde_json::Value> {
    let pods = state.pods.lock().unwrap();
    let (sandbox, containers) = pods.pods.get(name)?;
    let specs: Vec<_> = containers
        .iter()
        .map(|c| json!({"name": c.name, "image": "busybox", "stdin": c.stdin, "tty": c.tty}))
        .collect();
    let statuses: Vec<_> = containers
        .iter()
        .map(|c| {
            json!({"name": c.name, "ready": true, "restartCount": 0, "image": "busybox",
                   "imageID": "", "containerID": format!("berth://{}", c.id),
                   "state": {"running": {}}})
        })
        .collect();
    Some(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": NAMESPACE, "uid": sandbox},
        "spec": {"containers": specs},
        "status": {"phase": "Running", "containerStatuses": statuses},
    }))
}

fn json_ok(v: &serde_json::Value) -> Vec<u8> {
    response(200, "application/json", v.to_string().as_bytes())
}

fn status(code: u16, reason: &str, message: &str) -> Vec<u8> {
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason, "code": code,
    });
    response(code, "application/json", body.to_string().as_bytes())
}

fn not_found(message: &str) -> Vec<u8> {
    status(404, "NotFound", message)
}

/// The container named by the query's `container`, or the pod's first.
fn find_container(state: &State, pod: &str, head: &Head) -> Result<(String, Container), Vec<u8>> {
    let pods = state.pods.lock().unwrap();
    let Some((sandbox, containers)) = pods.pods.get(pod) else {
        return Err(not_found(&format!("pods \"{pod}\" not found")));
    };
    let wanted = head
        .query()
        .into_iter()
        .find(|(k, _)| k == "container")
        .map(|(_, v)| v);
    let found = match &wanted {
        Some(w) => containers.iter().find(|c| &c.name == w),
        None => containers.first(),
    };
    match found {
        Some(c) => Ok((sandbox.clone(), c.clone())),
        None => Err(status(
            400,
            "BadRequest",
            &format!("container {wanted:?} is not valid for pod {pod}"),
        )),
    }
}

/// `kubectl logs`: the CRI log file's records, as kubelet serves them
/// (a full record gets its newline back, a partial one does not).
fn logs(state: &State, pod: &str, head: &Head) -> Vec<u8> {
    let c = match find_container(state, pod, head) {
        Ok((_, c)) => c,
        Err(e) => return e,
    };
    let Some(path) = c.log_path else {
        return not_found("no log file registered");
    };
    let raw = std::fs::read(&path).unwrap_or_default();
    let mut out = Vec::new();
    for line in raw.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        // <RFC 3339 time> <stdout|stderr> <P|F> <content>
        let mut f = line.splitn(4, |b| *b == b' ');
        let (_, _, tag) = (f.next(), f.next(), f.next());
        out.extend_from_slice(f.next().unwrap_or_default());
        if tag != Some(b"P") {
            out.push(b'\n');
        }
    }
    response(200, "text/plain", &out)
}

/// A query flag as client-go writes it (`true`; absent is false).
fn flag(q: &[(String, String)], key: &str) -> bool {
    q.iter().any(|(k, v)| k == key && (v == "true" || v == "1"))
}

/// The CRI request for a streaming subresource, as kubelet builds it.
fn stream_call(sub: &str, head: &Head, sandbox: String, c: Container) -> StreamCall {
    let q = head.query();
    let tty = flag(&q, "tty");
    // kubelet drops stderr with a terminal (one stream carries both).
    let stderr = flag(&q, "stderr") && !tty;
    match sub {
        "exec" => StreamCall::Exec {
            container_id: c.id,
            cmd: q
                .iter()
                .filter(|(k, _)| k == "command")
                .map(|(_, v)| v.clone())
                .collect(),
            stdin: flag(&q, "stdin"),
            stdout: flag(&q, "stdout"),
            stderr,
            tty,
        },
        "attach" => StreamCall::Attach {
            container_id: c.id,
            stdin: flag(&q, "stdin"),
            stdout: flag(&q, "stdout"),
            stderr,
            tty,
        },
        _ => StreamCall::PortForward {
            sandbox_id: sandbox,
            ports: q
                .iter()
                .filter(|(k, _)| k == "ports")
                .flat_map(|(_, v)| v.split(',').filter_map(|p| p.trim().parse().ok()))
                .collect(),
        },
    }
}

/// A streaming subresource: the CRI call, then the relay to berth.
async fn stream(
    state: &State,
    mut conn: TcpStream,
    head: &Head,
    early: Vec<u8>,
    pod: &str,
    sub: &str,
) {
    let upgrade = head.header("upgrade").unwrap_or("").to_ascii_lowercase();
    let mut seen = Seen {
        subresource: sub.to_string(),
        upgrade: upgrade.clone(),
        status: 0,
    };
    let call = match find_container(state, pod, head) {
        Ok((sandbox, c)) => stream_call(sub, head, sandbox, c),
        Err(answer) => {
            let _ = conn.write_all(&answer).await;
            return;
        }
    };
    let url = match state.cri.streaming_url(call).await {
        Ok(url) => url,
        Err(e) => {
            seen.status = 500;
            state.seen.lock().unwrap().push(seen);
            let _ = conn.write_all(&status(500, "InternalError", &e)).await;
            return;
        }
    };
    let tunneled = upgrade == "websocket"
        && head
            .header_values("sec-websocket-protocol")
            .iter()
            .any(|p| p.starts_with(relay::TUNNEL_PREFIX));
    if tunneled {
        let record = |st: u16| {
            seen.status = st;
            state.seen.lock().unwrap().push(seen);
        };
        if let Err(e) = relay::tunnel(conn, head, early, &url, record).await {
            println!("kube-api stand-in: tunnel to {url}: {e}");
        }
        return;
    }
    match relay::upgrade(head, &early, &url).await {
        Ok((answer, berth, rest)) => {
            seen.status = answer.status();
            state.seen.lock().unwrap().push(seen);
            relay::splice(conn, &answer, berth, &rest).await;
        }
        Err(e) => {
            seen.status = 502;
            state.seen.lock().unwrap().push(seen);
            let msg = format!("relaying to {url}: {e}");
            let _ = conn.write_all(&status(502, "BadGateway", &msg)).await;
        }
    }
}

/// `program` — `kubectl`, or what runs it (`setsid`) — with kubectl's own
/// configuration: `HOME` and `KUBECONFIG` under `home` (a kubeconfig for
/// `api` written there), nothing of the machine's, no transport preference
/// from the environment. Killed when dropped.
pub fn kubectl_command(api: &KubeApi, home: &Path, program: &str) -> tokio::process::Command {
    let config = home.join("kubeconfig");
    if !config.exists() {
        std::fs::create_dir_all(home).expect("kubectl home");
        api.write_kubeconfig(&config).expect("kubeconfig");
    }
    let mut cmd = tokio::process::Command::new(program);
    cmd.env("HOME", home).env("KUBECONFIG", &config);
    for v in [
        "KUBECTL_REMOTE_COMMAND_WEBSOCKETS",
        "KUBECTL_PORT_FORWARD_WEBSOCKETS",
    ] {
        cmd.env_remove(v);
    }
    cmd.kill_on_drop(true);
    cmd
}

/// `None`, after printing `skipped: <test>: why`, unless a `kubectl`
/// client runs.
pub fn kubectl_available(test: &str) -> Option<()> {
    let ok = std::process::Command::new("kubectl")
        .args(["version", "--client"])
        .env("KUBECONFIG", "/dev/null")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        println!("skipped: {test}: kubectl is not installed (or does not run)");
        return None;
    }
    Some(())
}
