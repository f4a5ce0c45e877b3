//! What kubelet relies on beyond berth's own expectations (the "kubelet
//! fidelity" issue), through the real daemon and registry: image ids and
//! repo digests as kubelet reports them, the evented PLEG's pod status and
//! pod events, byte-exact env values, a user-namespaced pod sharing its pid
//! namespace, containerd 2's pod sysctl defaults, a privileged container's
//! host devices, and the verbose status `info` crictl inspect users read.

use std::os::unix::fs::FileTypeExt;
use std::path::Path;

use berth_cri::proto::{self, ImageSpec};
use tonic::Code;

mod common;
use common::*;

async fn run_in(env: &mut Env, pod: &str, cfg: proto::ContainerConfig) -> String {
    let id = env
        .rt
        .create_container(proto::CreateContainerRequest {
            pod_sandbox_id: pod.into(),
            config: Some(cfg),
            sandbox_config: None,
        })
        .await
        .unwrap()
        .into_inner()
        .container_id;
    start(&mut env.rt, &id).await.unwrap();
    id
}

async fn stop_and_remove_pod(rt: &mut Rt, id: &str) {
    rt.stop_pod_sandbox(proto::StopPodSandboxRequest {
        pod_sandbox_id: id.into(),
    })
    .await
    .unwrap();
    rt.remove_pod_sandbox(proto::RemovePodSandboxRequest {
        pod_sandbox_id: id.into(),
    })
    .await
    .unwrap();
}

/// A pod config named `name` (its own network, pid namespace per container,
/// no sysctls of its own).
fn plain_pod(env: &Env, name: &str) -> proto::PodSandboxConfig {
    let mut cfg = pod_config(env.dir.path());
    let m = cfg.metadata.as_mut().unwrap();
    m.name = name.into();
    m.uid = format!("uid-{name}");
    cfg.linux.as_mut().unwrap().sysctls.clear();
    cfg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_image_under_two_names_has_one_id_and_each_names_its_repo_digest() {
    let Some(mut env) = env("one_image_under_two_names").await else {
        return;
    };
    // The same image pushed under a second repository (same config, same
    // layers: the same image id), pulled under both names.
    let addr = env._reg.addr();
    let other = berth_e2e::images::configured_image(&addr, "test/mirror", "v2")
        .await
        .unwrap();
    let second = format!("{addr}/test/mirror:v2");
    pull(env.daemon.channel().await, &second).await;
    let (a, b) = (
        image_status(&env, &env.image).await.unwrap(),
        image_status(&env, &second).await.unwrap(),
    );
    assert_eq!(a.id, b.id, "one image id whatever the name");
    assert_eq!(a.id, other.config_digest);
    assert!(a
        .repo_digests
        .contains(&format!("{addr}/test/mirror@{}", other.manifest_digest)));
    // A container from the second name: image_ref is that repository's
    // digest (kubelet's imageID), image_id the image id.
    let mut cfg = container(&env, "by-mirror", &["sleep", "100"], &[]);
    cfg.image = Some(ImageSpec {
        image: second.clone(),
        ..Default::default()
    });
    let id = create(&mut env, cfg).await.unwrap();
    let st = status(&mut env.rt, &id).await;
    assert_eq!(
        st.image_ref,
        format!("{addr}/test/mirror@{}", other.manifest_digest)
    );
    assert_eq!(st.image_id, a.id);
    assert_eq!(st.image.unwrap().image, second, "the image as requested");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_status_carries_its_containers_and_pods_send_events() {
    let Some(mut env) = env("pod_status_carries_its_containers").await else {
        return;
    };
    let mut events = env
        .rt
        .get_container_events(proto::GetEventsRequest {})
        .await
        .unwrap()
        .into_inner();
    let cfg = plain_pod(&env, "pleg");
    let pod = run_pod(&mut env.rt, cfg).await;
    // Pod events as containerd sends them: the pod's id in container_id.
    for kind in [
        proto::ContainerEventType::ContainerCreatedEvent,
        proto::ContainerEventType::ContainerStartedEvent,
    ] {
        let ev = event_for(&mut events, &pod, kind).await;
        let ps = ev
            .pod_sandbox_status
            .expect("the pod's status in its event");
        assert_eq!(ps.id, pod);
        assert_eq!(ps.state, proto::PodSandboxState::SandboxReady as i32);
    }
    let st = pod_status(&mut env.rt, &pod, false).await;
    assert!(st.timestamp > 0 && st.containers_statuses.is_empty());
    let t0 = st.timestamp;
    let c = container(&env, "a", &["sleep", "100"], &[]);
    let a = run_in(&mut env, &pod, c).await;
    let c = container(&env, "b", &["true"], &[]);
    let b = run_in(&mut env, &pod, c).await;
    wait_exited(&mut env.rt, &b).await;
    // Every container of the pod, newest first, as kubelet's evented PLEG
    // takes them when the timestamp is set.
    let st = pod_status(&mut env.rt, &pod, false).await;
    assert!(st.timestamp > t0, "the timestamp moves on");
    let ids: Vec<&str> = st
        .containers_statuses
        .iter()
        .map(|c| c.id.as_str())
        .collect();
    assert_eq!(ids, [b.as_str(), a.as_str()]);
    let states: Vec<i32> = st.containers_statuses.iter().map(|c| c.state).collect();
    assert_eq!(
        states,
        [
            proto::ContainerState::ContainerExited as i32,
            proto::ContainerState::ContainerRunning as i32
        ]
    );
    // Another pod's containers are not listed.
    assert!(pod_status(&mut env.rt, &env.pod.clone(), false)
        .await
        .containers_statuses
        .iter()
        .all(|c| c.id != a && c.id != b));
    env.rt
        .stop_pod_sandbox(proto::StopPodSandboxRequest {
            pod_sandbox_id: pod.clone(),
        })
        .await
        .unwrap();
    let ev = event_for(
        &mut events,
        &pod,
        proto::ContainerEventType::ContainerStoppedEvent,
    )
    .await;
    assert_eq!(
        ev.pod_sandbox_status.unwrap().state,
        proto::PodSandboxState::SandboxNotready as i32
    );
    env.rt
        .remove_pod_sandbox(proto::RemovePodSandboxRequest {
            pod_sandbox_id: pod.clone(),
        })
        .await
        .unwrap();
    event_for(
        &mut events,
        &pod,
        proto::ContainerEventType::ContainerDeletedEvent,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_env_value_that_is_not_utf8_reaches_the_process_byte_exact() {
    let Some(mut env) = env("env_value_not_utf8").await else {
        return;
    };
    let mut cfg = container(
        &env,
        "raw-env",
        &["sh", "-c", "printf %s \"$RAW\" | od -An -tx1"],
        &[],
    );
    cfg.envs = vec![proto::KeyValue {
        key: "RAW".into(),
        value: b"caf\xe9 \xff".to_vec(),
    }];
    let id = create(&mut env, cfg).await.unwrap();
    start(&mut env.rt, &id).await.unwrap();
    let st = wait_exited(&mut env.rt, &id).await;
    assert_eq!(st.exit_code, 0);
    let out: String = log_records(&st.log_path)
        .into_iter()
        .map(|(_, _, t)| t)
        .collect::<Vec<_>>()
        .join(" ");
    let hex: Vec<&str> = out.split_whitespace().collect();
    assert_eq!(hex, ["63", "61", "66", "e9", "20", "ff"], "{out}");
    // A NUL byte is still refused, naming the field.
    let mut bad = container(&env, "nul-env", &["true"], &[]);
    bad.envs = vec![proto::KeyValue {
        key: "X".into(),
        value: b"a\0b".to_vec(),
    }];
    let err = create(&mut env, bad).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("config.envs[0].value"), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_namespaced_pod_shares_its_pid_namespace() {
    let Some(mut env) = env("userns_pod_shared_pid").await else {
        return;
    };
    const HOST: u32 = 400_000;
    let maps = vec![proto::IdMapping {
        host_id: HOST,
        container_id: 0,
        length: 65536,
    }];
    let userns = proto::UserNamespace {
        mode: proto::NamespaceMode::Pod as i32,
        uids: maps.clone(),
        gids: maps,
    };
    let options = |pid: proto::NamespaceMode| proto::NamespaceOption {
        pid: pid as i32,
        userns_options: Some(userns.clone()),
        ..Default::default()
    };
    let mut cfg = plain_pod(&env, "userns-pid");
    cfg.linux.as_mut().unwrap().security_context = Some(proto::LinuxSandboxSecurityContext {
        namespace_options: Some(options(proto::NamespaceMode::Pod)),
        ..Default::default()
    });
    let pod = run_pod(&mut env.rt, cfg).await;
    let mut ids = Vec::new();
    for (name, pid) in [
        ("shared", proto::NamespaceMode::Pod),
        ("own", proto::NamespaceMode::Container),
    ] {
        let mut c = container(&env, name, &["sleep", "1000"], &[]);
        c.linux = Some(proto::LinuxContainerConfig {
            security_context: Some(proto::LinuxContainerSecurityContext {
                run_as_user: Some(proto::Int64Value { value: 0 }),
                namespace_options: Some(options(pid)),
                ..Default::default()
            }),
            ..Default::default()
        });
        ids.push(run_in(&mut env, &pod, c).await);
    }
    // Sharing: pid 1 is the pod's init, the other container's sleep is seen;
    // its own: the sleep is pid 1. Both root inside, mapped on the host.
    let shared = sh_in(
        &mut env.rt,
        &ids[0],
        "cat /proc/1/comm; ls /proc | grep -c '^[0-9]'; cat /proc/self/uid_map | tr -s ' '",
    )
    .await;
    let lines: Vec<&str> = shared.lines().map(str::trim).collect();
    assert_eq!(lines[0], "berth-pod-init", "{shared}");
    assert!(
        lines[1].parse::<u32>().unwrap() >= 3,
        "init, sleep, sh: {shared}"
    );
    assert_eq!(lines[2], format!("0 {HOST} 65536"));
    let own = sh_in(&mut env.rt, &ids[1], "cat /proc/1/comm; id -u").await;
    assert_eq!(own.split_whitespace().collect::<Vec<_>>(), ["sleep", "0"]);
    stop_and_remove_pod(&mut env.rt, &pod).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_namespaced_pod_on_the_host_network() {
    let Some(mut env) = env("userns_host_network").await else {
        return;
    };
    let features = runtime_status(&mut env.rt).await.features;
    assert!(
        features.unwrap().user_namespaces_host_network,
        "reported to kubelet"
    );
    const HOST: u32 = 500_000;
    let maps = vec![proto::IdMapping {
        host_id: HOST,
        container_id: 0,
        length: 65536,
    }];
    let options = proto::NamespaceOption {
        network: proto::NamespaceMode::Node as i32,
        pid: proto::NamespaceMode::Container as i32,
        userns_options: Some(proto::UserNamespace {
            mode: proto::NamespaceMode::Pod as i32,
            uids: maps.clone(),
            gids: maps,
        }),
        ..Default::default()
    };
    let mut cfg = plain_pod(&env, "userns-hostnet");
    cfg.linux.as_mut().unwrap().security_context = Some(proto::LinuxSandboxSecurityContext {
        namespace_options: Some(options.clone()),
        ..Default::default()
    });
    let pod = run_pod(&mut env.rt, cfg).await;
    let mut c = container(&env, "c", &["sleep", "1000"], &[]);
    c.linux = Some(proto::LinuxContainerConfig {
        security_context: Some(proto::LinuxContainerSecurityContext {
            run_as_user: Some(proto::Int64Value { value: 0 }),
            namespace_options: Some(options),
            ..Default::default()
        }),
        ..Default::default()
    });
    let id = run_in(&mut env, &pod, c).await;
    // Root mapped to HOST inside, in the host's network and UTS namespaces.
    let out = sh_in(
        &mut env.rt,
        &id,
        "id -u; cat /proc/self/uid_map | tr -s ' '; readlink /proc/self/ns/net; hostname",
    )
    .await;
    let lines: Vec<&str> = out.lines().map(str::trim).collect();
    let host_net = std::fs::read_link("/proc/self/ns/net").unwrap();
    let host_name = nix::unistd::gethostname().unwrap();
    assert_eq!(
        lines,
        [
            "0",
            &format!("0 {HOST} 65536"),
            &host_net.to_string_lossy(),
            &host_name.to_string_lossy()
        ],
        "{out}"
    );
    stop_and_remove_pod(&mut env.rt, &pod).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_get_containerd_2s_sysctl_defaults_unless_on_the_host_network() {
    let Some(mut env) = env("pod_sysctl_defaults").await else {
        return;
    };
    let read =
        "cat /proc/sys/net/ipv4/ip_unprivileged_port_start /proc/sys/net/ipv4/ping_group_range";
    let cfg = plain_pod(&env, "defaults");
    let pod = run_pod(&mut env.rt, cfg).await;
    let c = container(&env, "c", &["sleep", "100"], &[]);
    let id = run_in(&mut env, &pod, c).await;
    let got = sh_in(&mut env.rt, &id, read).await;
    assert_eq!(
        got.split_whitespace().collect::<Vec<_>>(),
        ["0", "0", "2147483647"]
    );
    // A non-root process binds port 80 (the image runs as 65534).
    let bind = sh_in(
        &mut env.rt,
        &id,
        "id -u; nc -l -p 80 -w 1 </dev/null >/dev/null 2>&1 & sleep 0.3; netstat -ltn | grep -c ':80 '",
    )
    .await;
    assert_eq!(
        bind.split_whitespace().collect::<Vec<_>>(),
        ["65534", "1"],
        "{bind}"
    );
    // kubelet's own value wins.
    let mut cfg = plain_pod(&env, "own-value");
    cfg.linux
        .as_mut()
        .unwrap()
        .sysctls
        .insert("net.ipv4.ip_unprivileged_port_start".into(), "2000".into());
    let pod2 = run_pod(&mut env.rt, cfg).await;
    let c = container(&env, "c", &["sleep", "100"], &[]);
    let id2 = run_in(&mut env, &pod2, c).await;
    let got = sh_in(&mut env.rt, &id2, read).await;
    assert_eq!(got.split_whitespace().next(), Some("2000"));
    // The host network keeps the node's values.
    let host = std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start").unwrap();
    let mut cfg = plain_pod(&env, "hostnet");
    cfg.linux
        .as_mut()
        .unwrap()
        .security_context
        .as_mut()
        .unwrap()
        .namespace_options
        .as_mut()
        .unwrap()
        .network = proto::NamespaceMode::Node as i32;
    let pod3 = run_pod(&mut env.rt, cfg).await;
    let c = container(&env, "c", &["sleep", "100"], &[]);
    let id3 = run_in(&mut env, &pod3, c).await;
    let got = sh_in(&mut env.rt, &id3, read).await;
    assert_eq!(got.split_whitespace().next(), Some(host.trim()));
    for p in [pod, pod2, pod3] {
        stop_and_remove_pod(&mut env.rt, &p).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_privileged_container_sees_the_hosts_devices() {
    let Some(mut env) = env("privileged_host_devices").await else {
        return;
    };
    // A host device node outside the default set (loop, fuse, a tty ...).
    let host_dev = std::fs::read_dir("/dev")
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            ![
                "null", "zero", "full", "random", "urandom", "tty", "console", "ptmx",
            ]
            .contains(&name.as_str())
                && std::fs::symlink_metadata(p).is_ok_and(|m| {
                    m.file_type().is_char_device() || m.file_type().is_block_device()
                })
        });
    let Some(host_dev) = host_dev else {
        println!("skipped: privileged_host_devices: no device node in /dev beyond the defaults");
        return;
    };
    let check = format!("test -e {} && echo yes || echo no", host_dev.display());
    let mut priv_cfg = container(&env, "priv", &["sleep", "100"], &[]);
    priv_cfg.linux = Some(proto::LinuxContainerConfig {
        security_context: Some(proto::LinuxContainerSecurityContext {
            privileged: true,
            ..Default::default()
        }),
        ..Default::default()
    });
    let privileged = create(&mut env, priv_cfg).await.unwrap();
    start(&mut env.rt, &privileged).await.unwrap();
    let c = container(&env, "plain", &["sleep", "100"], &[]);
    let plain = create(&mut env, c).await.unwrap();
    start(&mut env.rt, &plain).await.unwrap();
    assert_eq!(
        sh_in(&mut env.rt, &privileged, &check).await.trim(),
        "yes",
        "{host_dev:?}"
    );
    assert_eq!(
        sh_in(&mut env.rt, &plain, &check).await.trim(),
        "no",
        "{host_dev:?}"
    );
    // Same numbers as the host's node.
    let stat = format!("stat -c %t:%T {}", host_dev.display());
    let inside = sh_in(&mut env.rt, &privileged, &stat).await;
    let rdev = std::os::unix::fs::MetadataExt::rdev(&std::fs::metadata(&host_dev).unwrap());
    let want = format!(
        "{:x}:{:x}",
        nix::sys::stat::major(rdev),
        nix::sys::stat::minor(rdev)
    );
    assert_eq!(inside.trim(), want);
    assert!(Path::new("/dev/pts").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verbose_status_info_has_what_crictl_inspect_users_read() {
    let Some(mut env) = env("verbose_status_info").await else {
        return;
    };
    let c = container(&env, "v", &["sleep", "100"], &[]);
    let id = create(&mut env, c).await.unwrap();
    start(&mut env.rt, &id).await.unwrap();
    let resp = env
        .rt
        .container_status(proto::ContainerStatusRequest {
            container_id: id.clone(),
            verbose: true,
        })
        .await
        .unwrap()
        .into_inner();
    let info: serde_json::Value = serde_json::from_str(&resp.info["info"]).unwrap();
    let pid = info["pid"].as_i64().unwrap();
    assert!(pid > 0);
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    assert!(
        cmdline.starts_with(b"sleep\x00100"),
        "info.pid is the container's process"
    );
    assert_eq!(info["sandboxID"], env.pod.as_str());
    assert_eq!(info["config"]["metadata"]["name"], "v");
    let spec = &info["runtimeSpec"];
    assert_eq!(spec["process"]["args"], serde_json::json!(["sleep", "100"]));
    assert_eq!(spec["process"]["user"]["uid"], 65534, "the image's USER");
    assert_eq!(
        spec["annotations"]["io.kubernetes.cri.sandbox-id"],
        env.pod.as_str()
    );
    let ns = spec["linux"]["namespaces"].as_array().unwrap();
    assert!(ns
        .iter()
        .any(|n| n["type"] == "network" && n["path"].is_string()));
    assert!(spec["linux"]["cgroupsPath"].is_string());
    // The pod: pid (0: no shared pid namespace), config, namespaces, and
    // fast enough for kubelet to call it often (no CNI CHECK by default).
    let t = std::time::Instant::now();
    let st = pod_status(&mut env.rt, &env.pod.clone(), true).await;
    let took = t.elapsed();
    let info: serde_json::Value = serde_json::from_str(&st.info["info"]).unwrap();
    assert_eq!(info["pid"], 0);
    assert_eq!(info["config"]["metadata"]["name"], "pod");
    assert!(!st.info.contains_key("networkCheck"));
    assert!(info["runtimeSpec"]["linux"]["namespaces"]
        .as_array()
        .unwrap()
        .iter()
        .any(|n| n["type"] == "network"));
    println!("verbose PodSandboxStatus took {took:?}");
}
