//! `berth serve`, the real daemon binary, driven over its socket by a CRI
//! client: flags and config file, Version/Status/RuntimeConfig, image pulls
//! from a real registry through a `--registry-config-dir` mirror, socket
//! permissions, refusing a second daemon on a live socket, graceful SIGTERM,
//! and images kept across a restart.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::process::Command;

use berth_cri::proto::image_service_client::ImageServiceClient;
use berth_cri::proto::runtime_service_client::RuntimeServiceClient;
use berth_cri::proto::{self, ImageSpec};
use berth_e2e::daemon::Daemon;
use berth_e2e::registry::Registry;
use berth_e2e::{berth_binary, images};

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn spec(image: &str) -> Option<ImageSpec> {
    Some(ImageSpec {
        image: image.into(),
        ..Default::default()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_answers_cri_and_pulls_through_the_configured_mirror() {
    const T: &str = "serve_answers_cri_and_pulls_through_the_configured_mirror";
    if !is_root() {
        println!("skipped: {T}: needs root");
        return;
    }
    let Some(berth) = berth_binary(T) else { return };
    let reg = match Registry::start() {
        Ok(r) => r,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            println!("skipped: {T}: {e}");
            return;
        }
        Err(e) => panic!("{e}"),
    };
    let pushed = images::busybox_image(&reg.addr(), "library/busybox", "1.36")
        .await
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    // registry.example.test does not exist: only the hosts.toml given by
    // --registry-config-dir makes the pull work.
    let certs = dir.path().join("certs.d");
    std::fs::create_dir_all(certs.join("registry.example.test")).unwrap();
    std::fs::write(
        certs.join("registry.example.test/hosts.toml"),
        format!("server = \"http://{}\"\n", reg.addr()),
    )
    .unwrap();
    let certs_arg = certs.to_str().unwrap().to_string();
    let mut d = Daemon::start(&berth, dir.path(), &["--registry-config-dir", &certs_arg]);
    let ch = d.channel().await;

    let meta = std::fs::metadata(&d.sock).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o660, "socket mode");

    let mut rt = RuntimeServiceClient::new(ch.clone());
    let v = rt
        .version(proto::VersionRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (v.runtime_name.as_str(), v.runtime_api_version.as_str()),
        ("berth", "v1")
    );
    assert_eq!(v.runtime_version, env!("CARGO_PKG_VERSION"));
    let st = rt
        .status(proto::StatusRequest { verbose: false })
        .await
        .unwrap()
        .into_inner();
    let conds = st.status.unwrap().conditions;
    assert!(conds.iter().any(|c| c.r#type == "RuntimeReady" && c.status));
    let cfg = rt
        .runtime_config(proto::RuntimeConfigRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        cfg.linux.unwrap().cgroup_driver,
        proto::CgroupDriver::Cgroupfs as i32
    );
    // Every RPC is served: an empty CheckpointPod is a bad request,
    // naming the field.
    let err = rt
        .checkpoint_pod(proto::CheckpointPodRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("output_path"), "{err:?}");

    let mut img = ImageServiceClient::new(ch.clone());
    let name = "registry.example.test/library/busybox:1.36";
    let id = img
        .pull_image(proto::PullImageRequest {
            image: spec(name),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("{e:?}\nlog:\n{}", d.log()))
        .into_inner()
        .image_ref;
    assert_eq!(id, pushed.config_digest);
    let listed = img
        .list_images(proto::ListImagesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .images;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].repo_tags, [name]);
    let fs = img
        .image_fs_info(proto::ImageFsInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(fs.image_filesystems[0].used_bytes.as_ref().unwrap().value > 1_000_000);
    assert!(
        dir.path().join("root/blobs/sha256").is_dir(),
        "--root honoured"
    );

    // A second daemon on the same live socket refuses to start.
    let out = Command::new(&berth)
        .arg("serve")
        .arg("--listen")
        .arg(&d.sock)
        .arg("--root")
        .arg(dir.path().join("root2"))
        .arg("--state")
        .arg(dir.path().join("state2"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("another daemon"),
        "{out:?}"
    );

    // SIGTERM: clean exit, socket removed, JSON logs written.
    drop(img);
    drop(rt);
    drop(ch);
    let status = d.terminate();
    assert!(status.success(), "exit {status:?}\nlog:\n{}", d.log());
    assert!(!d.sock.exists(), "socket removed on shutdown");
    let log = d.log();
    let first: serde_json::Value = serde_json::from_str(log.lines().next().unwrap()).unwrap();
    assert!(first.get("level").is_some(), "JSON log lines: {log}");
    assert!(log.contains("shutting down"));

    // Restart on the same root: the image is still there.
    let d2 = Daemon::start(&berth, dir.path(), &[]);
    let mut img = ImageServiceClient::new(d2.channel().await);
    let st = img
        .image_status(proto::ImageStatusRequest {
            image: spec(name),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(st.image.map(|i| i.id), Some(id));
}

#[test]
fn config_default_is_printed_and_bad_config_is_refused() {
    const T: &str = "config_default_is_printed_and_bad_config_is_refused";
    let Some(berth) = berth_binary(T) else { return };
    let out = Command::new(&berth)
        .args(["config", "default"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("listen = \"/run/berth/berth.sock\""),
        "{text}"
    );
    assert!(text.contains("registry_config_dir"), "{text}");

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[image]\nmax_concurent_layers = 3\n").unwrap();
    let out = Command::new(&berth)
        .arg("serve")
        .arg("--config")
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.toml") && err.contains("max_concurent_layers"),
        "{err}"
    );

    let out = Command::new(&berth)
        .args(["serve", "--root", "relative/dir"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("root must be an absolute path"));
}

/// `GET path` on `addr` (HTTP/1.0, whole answer).
fn http_get(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_calls_and_pods_and_healthz_answers() {
    const T: &str = "metrics_count_calls_and_pods_and_healthz_answers";
    if !is_root() {
        println!("skipped: {T}: needs root");
        return;
    }
    let Some(berth) = berth_binary(T) else { return };
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(&berth, dir.path(), &["--metrics-listen", "127.0.0.1:0"]);
    let mut rt = RuntimeServiceClient::new(d.channel().await);
    // The bound address is in the log (port 0 asked for any).
    let addr = d
        .log()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find_map(|v| v["fields"]["address"].as_str().map(str::to_string))
        .unwrap_or_else(|| panic!("no metrics address logged:\n{}", d.log()));
    rt.version(proto::VersionRequest::default()).await.unwrap();
    rt.version(proto::VersionRequest::default()).await.unwrap();
    let err = rt
        .pod_sandbox_status(proto::PodSandboxStatusRequest {
            pod_sandbox_id: "nope".into(),
            verbose: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    let pod = rt
        .run_pod_sandbox(proto::RunPodSandboxRequest {
            config: Some(proto::PodSandboxConfig {
                metadata: Some(proto::PodSandboxMetadata {
                    name: "m".into(),
                    uid: "uid-m".into(),
                    namespace: "default".into(),
                    attempt: 0,
                }),
                ..Default::default()
            }),
            runtime_handler: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .pod_sandbox_id;

    let addr2 = addr.clone();
    let body = tokio::task::spawn_blocking(move || http_get(&addr2, "/metrics"))
        .await
        .unwrap();
    assert!(
        body.starts_with("HTTP/1.0 200") || body.starts_with("HTTP/1.1 200"),
        "{body}"
    );
    for want in [
        r#"berth_cri_requests_total{method="Version",code="OK"} 2"#,
        r#"berth_cri_requests_total{method="PodSandboxStatus",code="NotFound"} 1"#,
        r#"berth_cri_request_duration_seconds_count{method="RunPodSandbox"} 1"#,
        r#"berth_pods{state="SANDBOX_READY"} 1"#,
        "berth_monitors 0",
        "berth_image_pull_bytes_total 0",
    ] {
        assert!(body.contains(want), "{want} missing in:\n{body}");
    }
    let addr2 = addr.clone();
    let health = tokio::task::spawn_blocking(move || http_get(&addr2, "/healthz"))
        .await
        .unwrap();
    assert!(
        health.contains("200 OK") && health.ends_with("ok\n"),
        "{health}"
    );
    rt.remove_pod_sandbox(proto::RemovePodSandboxRequest {
        pod_sandbox_id: pod,
    })
    .await
    .unwrap();
    drop(d);
    berth_e2e::daemon::cleanup_dir(dir.path());
}
