//! Pod sandboxes through the real daemon: pinned namespaces (checked with
//! nsenter from the host), shared files, the name index, list filters,
//! stop/remove idempotence, recovery after `kill -9`, bad requests, and many
//! pods in parallel leaving nothing behind.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

use berth_cri::proto::runtime_service_client::RuntimeServiceClient;
use berth_cri::proto::{self, PodSandboxMetadata};
use berth_e2e::berth_binary;
use berth_e2e::daemon::Daemon;
use tonic::transport::Channel;
use tonic::Code;

/// The test's directory, cleaned (monitors, mounts) when dropped.
struct TestDir(tempfile::TempDir);

impl TestDir {
    fn new() -> TestDir {
        TestDir(tempfile::tempdir().unwrap())
    }
    fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        berth_e2e::daemon::cleanup_dir(self.0.path());
    }
}

fn setup(test: &str) -> Option<std::path::PathBuf> {
    if !nix::unistd::geteuid().is_root() {
        println!("skipped: {test}: needs root");
        return None;
    }
    berth_binary(test)
}

fn pod(name: &str) -> proto::PodSandboxConfig {
    proto::PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{name}"),
            namespace: "default".into(),
            attempt: 0,
        }),
        hostname: name.into(),
        log_directory: format!("/var/log/pods/default_{name}"),
        dns_config: Some(proto::DnsConfig {
            servers: vec!["10.96.0.10".into()],
            searches: vec!["default.svc.cluster.local".into()],
            options: vec!["ndots:5".into()],
        }),
        labels: HashMap::from([("app".into(), name.into()), ("tier".into(), "web".into())]),
        annotations: HashMap::from([("note".into(), "kept verbatim: ✓".into())]),
        linux: Some(proto::LinuxPodSandboxConfig {
            cgroup_parent: format!("/kubepods/besteffort/poduid-{name}"),
            ..Default::default()
        }),
        ..Default::default()
    }
}

async fn run(
    rt: &mut RuntimeServiceClient<Channel>,
    config: proto::PodSandboxConfig,
) -> Result<String, tonic::Status> {
    rt.run_pod_sandbox(proto::RunPodSandboxRequest {
        config: Some(config),
        runtime_handler: String::new(),
    })
    .await
    .map(|r| r.into_inner().pod_sandbox_id)
}

async fn status(
    rt: &mut RuntimeServiceClient<Channel>,
    id: &str,
) -> Result<proto::PodSandboxStatus, tonic::Status> {
    rt.pod_sandbox_status(proto::PodSandboxStatusRequest {
        pod_sandbox_id: id.into(),
        verbose: false,
    })
    .await
    .map(|r| r.into_inner().status.unwrap())
}

async fn list(
    rt: &mut RuntimeServiceClient<Channel>,
    filter: proto::PodSandboxFilter,
) -> Vec<String> {
    let mut ids: Vec<_> = rt
        .list_pod_sandbox(proto::ListPodSandboxRequest {
            filter: Some(filter),
        })
        .await
        .unwrap()
        .into_inner()
        .items
        .into_iter()
        .map(|p| p.id)
        .collect();
    ids.sort();
    ids
}

fn nsenter(args: &[&str]) -> String {
    let out = Command::new("nsenter")
        .args(args)
        .output()
        .expect("nsenter (util-linux)");
    assert!(
        out.status.success(),
        "nsenter {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Mount points under `dir` in our mount namespace.
fn mounts_under(dir: &Path) -> Vec<String> {
    let dir = dir.to_string_lossy().into_owned();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| m.starts_with(&dir))
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_is_pinned_namespaces_that_outlive_a_daemon_crash() {
    let Some(berth) = setup("a_pod_is_pinned_namespaces_that_outlive_a_daemon_crash") else {
        return;
    };
    let dir = TestDir::new();
    let mut d = Daemon::start(&berth, dir.path(), &[]);
    let mut rt = RuntimeServiceClient::new(d.channel().await);

    let id = run(&mut rt, pod("web")).await.unwrap();
    assert_eq!(id.len(), 64);
    let st = status(&mut rt, &id).await.unwrap();
    assert_eq!(st.state, proto::PodSandboxState::SandboxReady as i32);
    assert_eq!(st.metadata.as_ref().unwrap().name, "web");
    assert_eq!(st.labels["tier"], "web");
    assert_eq!(st.annotations["note"], "kept verbatim: ✓");
    let opts = st.linux.unwrap().namespaces.unwrap().options.unwrap();
    assert_eq!(opts.network, proto::NamespaceMode::Pod as i32);

    // The pinned namespaces, seen from the host.
    let ns = dir.path().join("state/pods").join(&id).join("ns");
    let uts = format!("--uts={}", ns.join("uts").display());
    let net = format!("--net={}", ns.join("net").display());
    assert_eq!(nsenter(&[&uts, "hostname"]), "web");
    // Netlink answers for the netns nsenter joined (sysfs would show the
    // host's, where it was mounted).
    let links = nsenter(&[&net, "ip", "-o", "link", "show"]);
    let names: Vec<_> = links.lines().filter_map(|l| l.split(": ").nth(1)).collect();
    assert_eq!(names, ["lo"], "a fresh netns has only lo: {links}");
    assert!(
        links.contains("<LOOPBACK,UP,LOWER_UP>"),
        "lo is up: {links}"
    );
    let resolv =
        std::fs::read_to_string(dir.path().join("state/pods").join(&id).join("resolv.conf"))
            .unwrap();
    assert!(
        resolv.contains("nameserver 10.96.0.10") && resolv.contains("options ndots:5"),
        "{resolv}"
    );

    // The same pod again: AlreadyExists, naming the holder.
    let err = run(&mut rt, pod("web")).await.unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");
    assert!(err.message().contains(&id));

    // kill -9 the daemon: the pod's namespaces stay, and a new daemon
    // finds the pod Ready again.
    d.crash();
    assert_eq!(
        nsenter(&[&uts, "hostname"]),
        "web",
        "namespaces outlive the daemon"
    );
    let d2 = Daemon::start(&berth, dir.path(), &[]);
    let mut rt = RuntimeServiceClient::new(d2.channel().await);
    assert_eq!(
        status(&mut rt, &id).await.unwrap().state,
        proto::PodSandboxState::SandboxReady as i32
    );
    let err = run(&mut rt, pod("web")).await.unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists, "the name index is rebuilt");

    // Stop: NotReady, namespaces released; twice is fine.
    for _ in 0..2 {
        rt.stop_pod_sandbox(proto::StopPodSandboxRequest {
            pod_sandbox_id: id.clone(),
        })
        .await
        .unwrap();
    }
    assert_eq!(
        status(&mut rt, &id).await.unwrap().state,
        proto::PodSandboxState::SandboxNotready as i32
    );
    assert!(
        mounts_under(&dir.path().join("state")).is_empty(),
        "nothing mounted after stop"
    );

    // Remove: gone, twice is fine, the name is free again; a Stop after the
    // Remove succeeds too (kubelet may retry one after the other).
    for _ in 0..2 {
        rt.remove_pod_sandbox(proto::RemovePodSandboxRequest {
            pod_sandbox_id: id.clone(),
        })
        .await
        .unwrap();
    }
    rt.stop_pod_sandbox(proto::StopPodSandboxRequest {
        pod_sandbox_id: id.clone(),
    })
    .await
    .unwrap();
    assert_eq!(
        status(&mut rt, &id).await.unwrap_err().code(),
        Code::NotFound
    );
    assert!(!dir.path().join("state/pods").join(&id).exists());
    let again = run(&mut rt, pod("web")).await.unwrap();
    rt.remove_pod_sandbox(proto::RemovePodSandboxRequest {
        pod_sandbox_id: again,
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_filters_by_id_prefix_state_and_labels() {
    let Some(berth) = setup("list_filters_by_id_prefix_state_and_labels") else {
        return;
    };
    let dir = TestDir::new();
    let d = Daemon::start(&berth, dir.path(), &[]);
    let mut rt = RuntimeServiceClient::new(d.channel().await);
    let a = run(&mut rt, pod("a")).await.unwrap();
    let b = run(&mut rt, pod("b")).await.unwrap();
    rt.stop_pod_sandbox(proto::StopPodSandboxRequest {
        pod_sandbox_id: b.clone(),
    })
    .await
    .unwrap();
    let mut both = vec![a.clone(), b.clone()];
    both.sort();
    assert_eq!(list(&mut rt, Default::default()).await, both);
    let ready = proto::PodSandboxFilter {
        state: Some(proto::PodSandboxStateValue {
            state: proto::PodSandboxState::SandboxReady as i32,
        }),
        ..Default::default()
    };
    assert_eq!(list(&mut rt, ready).await, std::slice::from_ref(&a));
    let by_label = proto::PodSandboxFilter {
        label_selector: HashMap::from([("app".into(), "b".into())]),
        ..Default::default()
    };
    assert_eq!(list(&mut rt, by_label).await, std::slice::from_ref(&b));
    let by_prefix = proto::PodSandboxFilter {
        id: a[..12].into(),
        ..Default::default()
    };
    assert_eq!(list(&mut rt, by_prefix).await, std::slice::from_ref(&a));
    // Status by a unique prefix, as crictl allows.
    assert_eq!(status(&mut rt, &a[..12]).await.unwrap().id, a);
    for id in [a, b] {
        rt.remove_pod_sandbox(proto::RemovePodSandboxRequest { pod_sandbox_id: id })
            .await
            .unwrap();
    }
    assert!(list(&mut rt, Default::default()).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_sandbox_requests_get_the_right_code_and_leave_nothing() {
    let Some(berth) = setup("bad_sandbox_requests_get_the_right_code_and_leave_nothing") else {
        return;
    };
    let dir = TestDir::new();
    let d = Daemon::start(&berth, dir.path(), &[]);
    let mut rt = RuntimeServiceClient::new(d.channel().await);
    // kubelet's pod CIDR: taken when it is one, refused naming the field.
    let cidr = |c: &str| proto::UpdateRuntimeConfigRequest {
        runtime_config: Some(proto::RuntimeConfig {
            network_config: Some(proto::NetworkConfig { pod_cidr: c.into() }),
        }),
    };
    rt.update_runtime_config(cidr("10.88.0.0/16,fd00:88::/64"))
        .await
        .unwrap();
    let err = rt
        .update_runtime_config(cidr("10.88.0.0/40"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("pod_cidr"), "{}", err.message());
    // A checkpoint needs a place for its archive.
    let err = rt
        .checkpoint_container(proto::CheckpointContainerRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("location"), "{}", err.message());
    // Exec without any stream asked for names the field.
    let err = rt.exec(proto::ExecRequest::default()).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("stdin"), "{}", err.message());
    let mut no_uid = pod("x");
    no_uid.metadata.as_mut().unwrap().uid.clear();
    let mut escape_logs = pod("y");
    escape_logs.log_directory = "/var/log/pods/../../../etc".into();
    let mut inject_dns = pod("z");
    inject_dns.dns_config.as_mut().unwrap().searches = vec!["a\nnameserver 6.6.6.6".into()];
    let cases: Vec<(proto::PodSandboxConfig, &str)> = vec![
        (proto::PodSandboxConfig::default(), "config.metadata"),
        (no_uid, "config.metadata.uid"),
        (escape_logs, "config.log_directory"),
        (inject_dns, "config.dns_config.searches[0]"),
    ];
    for (config, field) in cases {
        let err = run(&mut rt, config).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{field}: {err:?}");
        assert!(
            err.message().starts_with(field),
            "{field}: {}",
            err.message()
        );
    }
    let err = rt
        .run_pod_sandbox(proto::RunPodSandboxRequest {
            config: None,
            runtime_handler: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    for id in ["0123abcd", "../../etc", ""] {
        let err = status(&mut rt, id).await.unwrap_err();
        let want = if id.is_empty() {
            Code::InvalidArgument
        } else {
            Code::NotFound
        };
        assert_eq!(err.code(), want, "status {id:?}: {err:?}");
        // Stop and Remove of a pod that is not there succeed (api.proto: "must
        // not return an error if all relevant resources have already been
        // reclaimed"; critest's Idempotence specs); an empty id is still refused.
        let stop = rt
            .stop_pod_sandbox(proto::StopPodSandboxRequest {
                pod_sandbox_id: id.into(),
            })
            .await;
        let remove = rt
            .remove_pod_sandbox(proto::RemovePodSandboxRequest {
                pod_sandbox_id: id.into(),
            })
            .await;
        for (rpc, res) in [("stop", stop.map(|_| ())), ("remove", remove.map(|_| ()))] {
            match (id.is_empty(), res) {
                (false, Ok(())) => {}
                (true, Err(e)) => assert_eq!(e.code(), Code::InvalidArgument, "{rpc} {id:?}"),
                (_, res) => panic!("{rpc} {id:?}: {res:?}"),
            }
        }
    }
    rt.remove_pod_sandbox(proto::RemovePodSandboxRequest {
        pod_sandbox_id: "0123abcd".into(),
    })
    .await
    .unwrap();
    let state_pods = dir.path().join("state/pods");
    assert!(!state_pods.exists() || std::fs::read_dir(&state_pods).unwrap().next().is_none());
    assert!(list(&mut rt, Default::default()).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_pods_in_parallel_leave_nothing_behind() {
    let Some(berth) = setup("many_pods_in_parallel_leave_nothing_behind") else {
        return;
    };
    let dir = TestDir::new();
    let d = Daemon::start(&berth, dir.path(), &[]);
    let ch = d.channel().await;
    let tasks: Vec<_> = (0..30)
        .map(|i| {
            let mut rt = RuntimeServiceClient::new(ch.clone());
            tokio::spawn(async move {
                let id = run(&mut rt, pod(&format!("p{i}"))).await?;
                rt.stop_pod_sandbox(proto::StopPodSandboxRequest {
                    pod_sandbox_id: id.clone(),
                })
                .await?;
                rt.remove_pod_sandbox(proto::RemovePodSandboxRequest { pod_sandbox_id: id })
                    .await?;
                Ok::<_, tonic::Status>(())
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let mut rt = RuntimeServiceClient::new(ch);
    assert!(list(&mut rt, Default::default()).await.is_empty());
    assert!(mounts_under(&dir.path().join("state")).is_empty());
    assert_eq!(
        std::fs::read_dir(dir.path().join("state/pods"))
            .unwrap()
            .count(),
        0
    );
    assert_eq!(
        std::fs::read_dir(dir.path().join("root/metadata/pods"))
            .unwrap()
            .count(),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_whose_namespaces_are_gone_comes_back_not_ready() {
    let Some(berth) = setup("a_pod_whose_namespaces_are_gone_comes_back_not_ready") else {
        return;
    };
    let dir = TestDir::new();
    let mut d = Daemon::start(&berth, dir.path(), &[]);
    let mut rt = RuntimeServiceClient::new(d.channel().await);
    let id = run(&mut rt, pod("gone")).await.unwrap();
    d.crash();
    // What a reboot does to /run: the pinned namespace mounts are gone.
    let ns = dir.path().join("state/pods").join(&id).join("ns");
    for m in mounts_under(&ns) {
        assert!(
            Command::new("umount").arg(&m).status().unwrap().success(),
            "umount {m}"
        );
    }
    let d2 = Daemon::start(&berth, dir.path(), &[]);
    let mut rt = RuntimeServiceClient::new(d2.channel().await);
    let st = status(&mut rt, &id).await.unwrap();
    assert_eq!(st.state, proto::PodSandboxState::SandboxNotready as i32);
    rt.remove_pod_sandbox(proto::RemovePodSandboxRequest {
        pod_sandbox_id: id.clone(),
    })
    .await
    .unwrap();
    assert_eq!(
        status(&mut rt, &id).await.unwrap_err().code(),
        Code::NotFound
    );
}

/// Raw request bytes through tonic, as a client with a broken encoder (or a
/// fuzzer) sends them.
#[derive(Clone, Copy, Default)]
struct Raw;
struct RawEnc;
struct RawDec;

impl tonic::codec::Encoder for RawEnc {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(
        &mut self,
        item: Vec<u8>,
        buf: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        bytes::BufMut::put_slice(buf, &item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawDec {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(
        &mut self,
        buf: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Vec<u8>>, tonic::Status> {
        let n = bytes::Buf::remaining(buf);
        Ok(Some(bytes::Buf::copy_to_bytes(buf, n).to_vec()))
    }
}

impl tonic::codec::Codec for Raw {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawEnc;
    type Decoder = RawDec;
    fn encoder(&mut self) -> RawEnc {
        RawEnc
    }
    fn decoder(&mut self) -> RawDec {
        RawDec
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_that_do_not_decode_are_invalid_argument() {
    let Some(berth) = setup("requests_that_do_not_decode_are_invalid_argument") else {
        return;
    };
    let dir = TestDir::new();
    let d = Daemon::start(&berth, dir.path(), &[]);
    let mut grpc = tonic::client::Grpc::new(d.channel().await);
    for (path, body, what) in [
        (
            "/runtime.v1.RuntimeService/RunPodSandbox",
            vec![0x0a, 0x05, 0x01],
            "truncated",
        ),
        (
            "/runtime.v1.RuntimeService/ContainerStatus",
            vec![0x0a, 0x02, 0xff, 0xfe],
            "not UTF-8",
        ),
        (
            "/runtime.v1.ImageService/PullImage",
            vec![0x0b],
            "a group wire type",
        ),
    ] {
        grpc.ready().await.unwrap();
        let e = grpc
            .unary(
                tonic::Request::new(body),
                tonic::codegen::http::uri::PathAndQuery::from_static(path),
                Raw,
            )
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{what}: {}", e.message());
        assert!(
            e.message().contains("does not decode"),
            "{what}: {}",
            e.message()
        );
    }
    // The daemon is fine.
    let mut rt = RuntimeServiceClient::new(d.channel().await);
    rt.version(proto::VersionRequest::default()).await.unwrap();
}
