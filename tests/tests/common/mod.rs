//! What the CRI container tests share: a daemon with a pulled image from a
//! real registry and one running pod, plus small client helpers.
//! (Included by each test file with `mod common;`.)
#![allow(dead_code)]

pub mod pods;

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use berth_cri::logs::{parse_record, Stream};
use berth_cri::proto::image_service_client::ImageServiceClient;
use berth_cri::proto::runtime_service_client::RuntimeServiceClient;
use berth_cri::proto::{self, ContainerMetadata, ImageSpec, PodSandboxMetadata};
use berth_e2e::daemon::Daemon;
use berth_e2e::registry::Registry;
use berth_e2e::{berth_binary, images};
use tonic::transport::Channel;

pub type Rt = RuntimeServiceClient<Channel>;

pub struct Env {
    pub _reg: Registry,
    pub dir: tempfile::TempDir,
    pub berth: std::path::PathBuf,
    pub daemon: Daemon,
    pub rt: Rt,
    pub image: String,
    pub pod: String,
}

impl Drop for Env {
    fn drop(&mut self) {
        self.daemon.crash();
        berth_e2e::daemon::cleanup_dir(self.dir.path());
    }
}

pub async fn env(test: &str) -> Option<Env> {
    env_with_config(test, "").await
}

/// Starts the env's daemon again (after `env.daemon.crash()` or its own
/// death), with the same configuration file, and reconnects `env.rt`.
pub async fn restart(env: &mut Env) {
    restart_with_env(env, &[]).await;
}

/// [`restart`] with more environment variables for the daemon (the
/// crash-point harness's `BERTH_CRASH_AT`, a `PATH`).
pub async fn restart_with_env(env: &mut Env, vars: &[(&str, &str)]) {
    let conf = config_file(env.dir.path());
    env.daemon = Daemon::start_with_env(
        &env.berth,
        env.dir.path(),
        &["--config", conf.to_str().unwrap()],
        vars,
    );
    env.rt = RuntimeServiceClient::new(env.daemon.channel().await);
}

/// The daemon's configuration file in the env's directory (`config.toml`).
pub fn config_file(dir: &Path) -> std::path::PathBuf {
    dir.join("config.toml")
}

/// [`env`] with `config` as the daemon's configuration file (TOML; the
/// file stays in the env's directory for restarts: [`config_file`]).
pub async fn env_with_config(test: &str, config: &str) -> Option<Env> {
    if !nix::unistd::geteuid().is_root() {
        println!("skipped: {test}: needs root");
        return None;
    }
    let berth = berth_binary(test)?;
    let reg = match Registry::start() {
        Ok(r) => r,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            println!("skipped: {test}: {e}");
            return None;
        }
        Err(e) => panic!("{e}"),
    };
    images::configured_image(&reg.addr(), "test/conf", "v1")
        .await
        .unwrap();
    let image = format!("{}/test/conf:v1", reg.addr());
    let dir = tempfile::tempdir().unwrap();
    let conf = config_file(dir.path());
    std::fs::write(&conf, config).unwrap();
    let daemon = Daemon::start(&berth, dir.path(), &["--config", conf.to_str().unwrap()]);
    let ch = daemon.channel().await;
    pull(ch.clone(), &image).await;
    let mut rt = RuntimeServiceClient::new(ch);
    let pod = run_pod(&mut rt, pod_config(dir.path())).await;
    Some(Env {
        _reg: reg,
        berth,
        dir,
        daemon,
        rt,
        image,
        pod,
    })
}

/// RunPodSandbox with `config` (default runtime handler); the pod's id.
pub async fn run_pod(rt: &mut Rt, config: proto::PodSandboxConfig) -> String {
    rt.run_pod_sandbox(proto::RunPodSandboxRequest {
        config: Some(config),
        runtime_handler: String::new(),
    })
    .await
    .unwrap()
    .into_inner()
    .pod_sandbox_id
}

/// Pulls `image` through the daemon's ImageService.
pub async fn pull(ch: Channel, image: &str) {
    ImageServiceClient::new(ch)
        .pull_image(proto::PullImageRequest {
            image: Some(ImageSpec {
                image: image.into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap();
}

/// ImageStatus of `image` on the env's daemon (`None`: not there).
pub async fn image_status(env: &Env, image: &str) -> Option<proto::Image> {
    ImageServiceClient::new(env.daemon.channel().await)
        .image_status(proto::ImageStatusRequest {
            image: Some(ImageSpec {
                image: image.into(),
                ..Default::default()
            }),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner()
        .image
}

/// The id (config digest) ImageStatus reports for the env's image.
pub async fn image_id(env: &Env) -> String {
    image_status(env, &env.image)
        .await
        .expect("the env's image is pulled")
        .id
}

/// PodSandboxStatus of pod `id`.
pub async fn pod_status(rt: &mut Rt, id: &str, verbose: bool) -> proto::PodSandboxStatusResponse {
    rt.pod_sandbox_status(proto::PodSandboxStatusRequest {
        pod_sandbox_id: id.into(),
        verbose,
    })
    .await
    .unwrap()
    .into_inner()
}

/// The runtime's Status (what it says it supports).
pub async fn runtime_status(rt: &mut Rt) -> proto::StatusResponse {
    rt.status(proto::StatusRequest { verbose: false })
        .await
        .unwrap()
        .into_inner()
}

pub fn pod_config(dir: &Path) -> proto::PodSandboxConfig {
    proto::PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: "pod".into(),
            uid: "uid-1".into(),
            namespace: "default".into(),
            attempt: 0,
        }),
        hostname: "pod-host".into(),
        log_directory: dir.join("logs").to_string_lossy().into_owned(),
        linux: Some(proto::LinuxPodSandboxConfig {
            // Namespaced sysctls of the pod (kubelet's safe set includes it).
            sysctls: HashMap::from([("net.ipv4.ip_unprivileged_port_start".into(), "0".into())]),
            // What kubelet sends for a pod without shareProcessNamespace.
            security_context: Some(proto::LinuxSandboxSecurityContext {
                namespace_options: Some(proto::NamespaceOption {
                    pid: proto::NamespaceMode::Container as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A new pod on `env`'s daemon named `name`, logging under `env`'s dir.
pub fn pod_named(env: &Env, name: &str) -> proto::PodSandboxConfig {
    let mut cfg = pod_config(env.dir.path());
    let m = cfg.metadata.as_mut().unwrap();
    m.name = name.into();
    m.uid = format!("uid-{name}");
    cfg.hostname = format!("{name}-host");
    cfg.log_directory = env.dir.path().join(name).display().to_string();
    cfg
}

/// Sets a pod config's pid namespace mode (`POD`: shareProcessNamespace,
/// `NODE`: hostPID).
pub fn set_pod_pid(cfg: &mut proto::PodSandboxConfig, mode: proto::NamespaceMode) {
    let linux = cfg.linux.get_or_insert_with(Default::default);
    let sc = linux.security_context.get_or_insert_with(Default::default);
    sc.namespace_options
        .get_or_insert_with(Default::default)
        .pid = mode as i32;
}

/// Sets a container config's pid namespace mode (kubelet copies the pod's).
pub fn set_container_pid(cfg: &mut proto::ContainerConfig, mode: proto::NamespaceMode) {
    let linux = cfg.linux.get_or_insert_with(Default::default);
    let sc = linux.security_context.get_or_insert_with(Default::default);
    sc.namespace_options
        .get_or_insert_with(Default::default)
        .pid = mode as i32;
}

/// [`pod_named`], run; its id and config.
pub async fn run_pod_named(env: &mut Env, name: &str) -> (String, proto::PodSandboxConfig) {
    let cfg = pod_named(env, name);
    let id = run_pod(&mut env.rt, cfg.clone()).await;
    (id, cfg)
}

pub fn container(env: &Env, name: &str, command: &[&str], args: &[&str]) -> proto::ContainerConfig {
    proto::ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(ImageSpec {
            image: env.image.clone(),
            ..Default::default()
        }),
        command: command.iter().map(|s| s.to_string()).collect(),
        args: args.iter().map(|s| s.to_string()).collect(),
        log_path: format!("{name}/0.log"),
        labels: HashMap::from([("c".into(), name.into())]),
        ..Default::default()
    }
}

pub async fn create(
    env: &mut Env,
    config: proto::ContainerConfig,
) -> Result<String, tonic::Status> {
    env.rt
        .create_container(proto::CreateContainerRequest {
            pod_sandbox_id: env.pod.clone(),
            config: Some(config),
            sandbox_config: Some(pod_config(env.dir.path())),
        })
        .await
        .map(|r| r.into_inner().container_id)
}

/// StopContainer (no grace period) then RemoveContainer.
pub async fn stop_and_remove(rt: &mut Rt, id: &str) {
    rt.stop_container(proto::StopContainerRequest {
        container_id: id.into(),
        timeout: 0,
    })
    .await
    .unwrap();
    rt.remove_container(proto::RemoveContainerRequest {
        container_id: id.into(),
    })
    .await
    .unwrap();
}

pub async fn start(rt: &mut Rt, id: &str) -> Result<(), tonic::Status> {
    rt.start_container(proto::StartContainerRequest {
        container_id: id.into(),
    })
    .await
    .map(|_| ())
}

pub async fn status(rt: &mut Rt, id: &str) -> proto::ContainerStatus {
    rt.container_status(proto::ContainerStatusRequest {
        container_id: id.into(),
        verbose: false,
    })
    .await
    .unwrap()
    .into_inner()
    .status
    .unwrap()
}

/// The verbose `info` of ContainerStatus, as crictl inspect shows it (pid,
/// monitorPid, config, runtimeSpec).
pub async fn verbose_info(rt: &mut Rt, id: &str) -> serde_json::Value {
    let info = rt
        .container_status(proto::ContainerStatusRequest {
            container_id: id.into(),
            verbose: true,
        })
        .await
        .unwrap()
        .into_inner()
        .info;
    serde_json::from_str(&info["info"]).unwrap()
}

pub async fn wait_exited(rt: &mut Rt, id: &str) -> proto::ContainerStatus {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let st = status(rt, id).await;
        if st.state == proto::ContainerState::ContainerExited as i32 {
            return st;
        }
        assert!(
            Instant::now() < deadline,
            "container {id} did not exit: {st:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// (stream, partial, text) records of a CRI log file.
pub fn log_records(path: &str) -> Vec<(Stream, bool, String)> {
    std::fs::read(path)
        .unwrap_or_default()
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (_, s, p, c) = parse_record(l)
                .unwrap_or_else(|| panic!("not a CRI record: {:?}", String::from_utf8_lossy(l)));
            (s, p, String::from_utf8_lossy(&c).into_owned())
        })
        .collect()
}

/// The next event, or a panic after 10 s.
pub async fn next_event(
    events: &mut tonic::Streaming<proto::ContainerEventResponse>,
) -> proto::ContainerEventResponse {
    tokio::time::timeout(Duration::from_secs(10), events.message())
        .await
        .expect("an event within 10 s")
        .expect("the event stream")
        .expect("the stream ended")
}

/// Events until one of `kind` for `id` arrives (others are skipped).
pub async fn event_for(
    events: &mut tonic::Streaming<proto::ContainerEventResponse>,
    id: &str,
    kind: proto::ContainerEventType,
) -> proto::ContainerEventResponse {
    loop {
        let ev = next_event(events).await;
        if ev.container_id == id && ev.container_event_type == kind as i32 {
            return ev;
        }
    }
}

/// ExecSync of `sh -c script` in a container (10 s timeout).
async fn exec_sync_sh(rt: &mut Rt, id: &str, script: &str) -> proto::ExecSyncResponse {
    rt.exec_sync(proto::ExecSyncRequest {
        container_id: id.into(),
        cmd: vec!["sh".into(), "-c".into(), script.into()],
        timeout: 10,
    })
    .await
    .unwrap()
    .into_inner()
}

/// Exit code and stdout of `sh -c script` run in a container by ExecSync.
pub async fn exec_sh(rt: &mut Rt, id: &str, script: &str) -> (i32, String) {
    let r = exec_sync_sh(rt, id, script).await;
    (r.exit_code, String::from_utf8_lossy(&r.stdout).into_owned())
}

/// CreateContainer of `config` in `pod`, then StartContainer; its id.
pub async fn create_start(
    rt: &mut Rt,
    pod: &str,
    pod_cfg: &proto::PodSandboxConfig,
    config: proto::ContainerConfig,
) -> String {
    let id = rt
        .create_container(proto::CreateContainerRequest {
            pod_sandbox_id: pod.into(),
            config: Some(config),
            sandbox_config: Some(pod_cfg.clone()),
        })
        .await
        .unwrap_or_else(|e| panic!("CreateContainer: {}", e.message()))
        .into_inner()
        .container_id;
    start(rt, &id)
        .await
        .unwrap_or_else(|e| panic!("StartContainer: {}", e.message()));
    id
}

/// Whether a working `criu` is on PATH; prints why not.
pub fn criu_works(test: &str) -> bool {
    match std::process::Command::new("criu").arg("check").output() {
        Ok(o) if o.status.success() => true,
        Ok(o) => {
            println!(
                "skipped: {test}: `criu check` fails ({}); scripts/install-criu.sh builds a working CRIU",
                String::from_utf8_lossy(&o.stderr).trim()
            );
            false
        }
        Err(e) => {
            println!("skipped: {test}: no criu ({e}); scripts/install-criu.sh installs it");
            false
        }
    }
}

/// A container running `sh -c script` as root (CRIU reads a task's rlimits
/// with prlimit(2), which for another user's task needs CAP_SYS_RESOURCE).
pub fn root_sh(env: &Env, name: &str, script: &str) -> proto::ContainerConfig {
    let mut c = container(env, name, &["/bin/sh", "-c"], &[script]);
    c.linux = Some(proto::LinuxContainerConfig {
        security_context: Some(proto::LinuxContainerSecurityContext {
            run_as_user: Some(proto::Int64Value { value: 0 }),
            ..Default::default()
        }),
        ..Default::default()
    });
    c
}

/// Stdout of `sh -c script` run in a container by ExecSync.
pub async fn sh_in(rt: &mut Rt, id: &str, script: &str) -> String {
    let r = exec_sync_sh(rt, id, script).await;
    assert_eq!(
        r.exit_code,
        0,
        "{script}: {}",
        String::from_utf8_lossy(&r.stderr)
    );
    String::from_utf8(r.stdout).unwrap()
}

/// A WebSocket session (`v5.channel.k8s.io`) at a streaming `url` (Exec or
/// Attach).
pub async fn ws_session(url: &str) -> tokio_tungstenite::WebSocketStream<tokio::net::TcpStream> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = url
        .replacen("http://", "ws://", 1)
        .into_client_request()
        .unwrap();
    req.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        "v5.channel.k8s.io".parse().unwrap(),
    );
    let host = req.uri().authority().unwrap().to_string();
    let tcp = tokio::net::TcpStream::connect(host).await.unwrap();
    tokio_tungstenite::client_async(req, tcp).await.unwrap().0
}

/// What a streaming session at `url` (an Exec URL; WebSocket,
/// `v5.channel.k8s.io`) printed on stdout until the server closed it.
pub async fn session_stdout(url: &str) -> String {
    use futures::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    let mut ws = ws_session(url).await;
    let mut out = Vec::new();
    while let Some(Ok(m)) = tokio::time::timeout(Duration::from_secs(20), ws.next())
        .await
        .expect("the session ends")
    {
        if let Message::Binary(b) = m {
            if b.first() == Some(&1) {
                out.extend_from_slice(&b[1..]);
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A pod config `name` with a user namespace of its own (ids 0-65535 at
/// host 500000).
pub fn userns_pod(env: &Env, name: &str) -> proto::PodSandboxConfig {
    let maps = vec![proto::IdMapping {
        host_id: 500_000,
        container_id: 0,
        length: 65536,
    }];
    let mut cfg = pod_config(env.dir.path());
    cfg.metadata.as_mut().unwrap().name = name.into();
    cfg.metadata.as_mut().unwrap().uid = format!("uid-{name}");
    cfg.linux
        .get_or_insert_with(Default::default)
        .security_context = Some(proto::LinuxSandboxSecurityContext {
        namespace_options: Some(proto::NamespaceOption {
            userns_options: Some(proto::UserNamespace {
                mode: proto::NamespaceMode::Pod as i32,
                uids: maps.clone(),
                gids: maps,
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    cfg
}

/// Attaches to container `id` (stdin, stdout, and stderr unless `tty`),
/// writes `line` and reads stdout until it shows `want`, then detaches;
/// panics after 15 s.
pub async fn attach_echo(rt: &mut Rt, tty: bool, id: &str, line: &str, want: &str) -> String {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let url = rt
        .attach(proto::AttachRequest {
            container_id: id.into(),
            stdin: true,
            tty,
            stdout: true,
            stderr: !tty,
        })
        .await
        .unwrap()
        .into_inner()
        .url;
    let mut ws = ws_session(&url).await;
    let input = [&[0u8][..], line.as_bytes(), b"\n"].concat();
    ws.send(Message::Binary(input.into())).await.unwrap();
    let mut seen = String::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while !seen.contains(want) {
        match tokio::time::timeout_at(deadline.into(), ws.next()).await {
            Ok(Some(Ok(Message::Binary(b)))) if b.first() == Some(&1) => {
                seen.push_str(&String::from_utf8_lossy(&b[1..]));
            }
            Ok(Some(Ok(_))) => {}
            other => panic!("attach to {id}: no {want:?} in {seen:?}: {other:?}"),
        }
    }
    seen
}
