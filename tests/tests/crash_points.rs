//! The crash-point harness: for every named step of a pod's life
//! (`berth_cri::CRASH_POINTS`: PullImage, RunPodSandbox, CreateContainer,
//! StartContainer, StopContainer, RemoveContainer, RemovePodSandbox), the
//! daemon is started with `BERTH_CRASH_AT=<step>` (a debug build kills
//! itself there with SIGKILL), driven through a pod's life until it dies,
//! and restarted. Then: (1) what the API shows is consistent — every listed
//! object answers its status call; (2) after everything listed is removed,
//! nothing berth made is left — no monitor or pod process, no mount, no
//! cgroup, no container or pod directory, no image lease; (3) the same
//! requests, from the top, succeed.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use berth_cri::proto::image_service_client::ImageServiceClient;
use berth_cri::proto::runtime_service_client::RuntimeServiceClient;
use berth_cri::proto::{self, ContainerMetadata, ImageSpec};
use berth_e2e::daemon::Daemon;
use berth_e2e::registry::Registry;
use berth_e2e::{berth_binary, images};
use common::pod_config;
use tonic::transport::Channel;

type Rt = RuntimeServiceClient<Channel>;

/// One pod's life, step by step; the first error ends it (the daemon died).
async fn life(ch: Channel, dir: &Path, image: &str, attempt: u32) -> Result<(), tonic::Status> {
    let mut img = ImageServiceClient::new(ch.clone());
    let mut rt = RuntimeServiceClient::new(ch);
    img.pull_image(proto::PullImageRequest {
        image: Some(ImageSpec {
            image: image.into(),
            ..Default::default()
        }),
        ..Default::default()
    })
    .await?;
    let mut pod_cfg = pod_config(dir);
    pod_cfg.metadata.as_mut().unwrap().attempt = attempt;
    // A shared pid namespace: the pod has an init process too.
    let ns = pod_cfg
        .linux
        .as_mut()
        .unwrap()
        .security_context
        .as_mut()
        .unwrap()
        .namespace_options
        .as_mut()
        .unwrap();
    ns.pid = proto::NamespaceMode::Pod as i32;
    let pod = rt
        .run_pod_sandbox(proto::RunPodSandboxRequest {
            config: Some(pod_cfg.clone()),
            runtime_handler: String::new(),
        })
        .await?
        .into_inner()
        .pod_sandbox_id;
    let ctr = rt
        .create_container(proto::CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(proto::ContainerConfig {
                metadata: Some(ContainerMetadata {
                    name: "c".into(),
                    attempt,
                }),
                image: Some(ImageSpec {
                    image: image.into(),
                    ..Default::default()
                }),
                command: vec!["sleep".into(), "1000".into()],
                log_path: format!("c/{attempt}.log"),
                ..Default::default()
            }),
            sandbox_config: Some(pod_cfg),
        })
        .await?
        .into_inner()
        .container_id;
    rt.start_container(proto::StartContainerRequest {
        container_id: ctr.clone(),
    })
    .await?;
    rt.stop_container(proto::StopContainerRequest {
        container_id: ctr.clone(),
        timeout: 1,
    })
    .await?;
    rt.remove_container(proto::RemoveContainerRequest { container_id: ctr })
        .await?;
    rt.stop_pod_sandbox(proto::StopPodSandboxRequest {
        pod_sandbox_id: pod.clone(),
    })
    .await?;
    rt.remove_pod_sandbox(proto::RemovePodSandboxRequest {
        pod_sandbox_id: pod,
    })
    .await?;
    Ok(())
}

/// (1) Every listed pod and container answers its status call; then (2)
/// all of them are removed through the API.
async fn check_and_clear(rt: &mut Rt) -> (usize, usize) {
    let ctrs = rt
        .list_containers(proto::ListContainersRequest::default())
        .await
        .unwrap()
        .into_inner()
        .containers;
    for c in &ctrs {
        rt.container_status(proto::ContainerStatusRequest {
            container_id: c.id.clone(),
            verbose: false,
        })
        .await
        .unwrap_or_else(|e| panic!("listed container {} has no status: {e:?}", c.id));
    }
    let pods = rt
        .list_pod_sandbox(proto::ListPodSandboxRequest::default())
        .await
        .unwrap()
        .into_inner()
        .items;
    for p in &pods {
        rt.pod_sandbox_status(proto::PodSandboxStatusRequest {
            pod_sandbox_id: p.id.clone(),
            verbose: false,
        })
        .await
        .unwrap_or_else(|e| panic!("listed pod {} has no status: {e:?}", p.id));
    }
    for c in &ctrs {
        rt.remove_container(proto::RemoveContainerRequest {
            container_id: c.id.clone(),
        })
        .await
        .unwrap_or_else(|e| panic!("removing container {}: {e:?}", c.id));
    }
    for p in &pods {
        rt.stop_pod_sandbox(proto::StopPodSandboxRequest {
            pod_sandbox_id: p.id.clone(),
        })
        .await
        .unwrap_or_else(|e| panic!("stopping pod {}: {e:?}", p.id));
        rt.remove_pod_sandbox(proto::RemovePodSandboxRequest {
            pod_sandbox_id: p.id.clone(),
        })
        .await
        .unwrap_or_else(|e| panic!("removing pod {}: {e:?}", p.id));
    }
    (pods.len(), ctrs.len())
}

/// Cgroup directories named like berth's object ids at the roots of the
/// hierarchies (where the test's containers, without a cgroup parent, go).
fn id_cgroups() -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let roots = std::fs::read_dir("/sys/fs/cgroup")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .chain([std::path::PathBuf::from("/sys/fs/cgroup")]);
    for root in roots {
        for e in std::fs::read_dir(&root).into_iter().flatten().flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if n.len() == 64 && n.bytes().all(|b| b.is_ascii_hexdigit()) {
                out.insert(format!("{}/{n}", root.display()));
            }
        }
    }
    out
}

/// What berth left of itself in `dir` and on the host: processes that
/// mention `dir`, mounts under it, entries of its object directories.
fn remains(dir: &Path) -> Vec<String> {
    let needle = dir.to_string_lossy().into_owned();
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if cmd.contains(&needle) {
            out.push(format!("process {pid}: {cmd}"));
        }
    }
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    for m in mountinfo.lines().filter_map(|l| l.split(' ').nth(4)) {
        if m.starts_with(&needle) {
            out.push(format!("mount {m}"));
        }
    }
    for sub in [
        "state/containers",
        "state/pods",
        "root/containers",
        "root/leases",
    ] {
        for e in std::fs::read_dir(dir.join(sub))
            .into_iter()
            .flatten()
            .flatten()
        {
            out.push(format!("{sub}/{}", e.file_name().to_string_lossy()));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_crash_point_is_recovered_from() {
    let test = "every_crash_point_is_recovered_from";
    if !nix::unistd::geteuid().is_root() {
        println!("skipped: {test}: needs root");
        return;
    }
    let Some(berth) = berth_binary(test) else {
        return;
    };
    let reg = match Registry::start() {
        Ok(r) => r,
        Err(e) => {
            println!("skipped: {test}: {e}");
            return;
        }
    };
    images::configured_image(&reg.addr(), "test/conf", "v1")
        .await
        .unwrap();
    let image = format!("{}/test/conf:v1", reg.addr());
    let mut covered = 0;
    for point in berth_cri::CRASH_POINTS {
        let dir = tempfile::tempdir().unwrap();
        let cgroups_before = id_cgroups();
        let mut daemon =
            Daemon::start_with_env(&berth, dir.path(), &[], &[("BERTH_CRASH_AT", point)]);
        let died = life(daemon.channel().await, dir.path(), &image, 0).await;
        assert!(died.is_err(), "{point}: the daemon never reached it");
        // The daemon is gone (killed itself); reap it.
        daemon.crash();
        let mut daemon = Daemon::start(&berth, dir.path(), &[]);
        let ch = daemon.channel().await;
        let mut rt = RuntimeServiceClient::new(ch.clone());
        if *point == "start:released" {
            // kubelet, seeing the container still Created, starts it again:
            // that succeeds, and it runs.
            let ctrs = rt
                .list_containers(proto::ListContainersRequest::default())
                .await
                .unwrap()
                .into_inner()
                .containers;
            assert_eq!(ctrs.len(), 1, "{ctrs:?}");
            rt.start_container(proto::StartContainerRequest {
                container_id: ctrs[0].id.clone(),
            })
            .await
            .unwrap_or_else(|e| panic!("{point}: StartContainer again: {e:?}"));
            let st = rt
                .container_status(proto::ContainerStatusRequest {
                    container_id: ctrs[0].id.clone(),
                    verbose: false,
                })
                .await
                .unwrap()
                .into_inner()
                .status
                .unwrap();
            assert_eq!(st.state, proto::ContainerState::ContainerRunning as i32);
            assert!(st.started_at > 0);
        }
        check_and_clear(&mut rt).await;
        // The same life, from the top, now succeeds (a new attempt: kubelet's
        // names for a retry).
        life(ch.clone(), dir.path(), &image, 1)
            .await
            .unwrap_or_else(|e| panic!("{point}: the life after the restart: {e:?}"));
        check_and_clear(&mut rt).await;
        daemon.terminate();
        // A container's cgroup goes once the kernel has freed its last
        // task, which may be a moment after the daemon is gone: wait for
        // it (bounded) rather than a fixed time.
        let mut waited = Duration::ZERO;
        let (left, new_cgroups) = loop {
            let left = remains(dir.path());
            let new_cgroups: Vec<String> =
                id_cgroups().difference(&cgroups_before).cloned().collect();
            if (left.is_empty() && new_cgroups.is_empty()) || waited >= Duration::from_secs(5) {
                break (left, new_cgroups);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            waited += Duration::from_millis(100);
        };
        assert!(
            left.is_empty() && new_cgroups.is_empty(),
            "{point}: left behind: {left:#?} {new_cgroups:#?}\nlog:\n{}",
            std::fs::read_to_string(dir.path().join("berth.log")).unwrap_or_default()
        );
        berth_e2e::daemon::cleanup_dir(dir.path());
        covered += 1;
    }
    println!("crash points covered: {covered}");
}
