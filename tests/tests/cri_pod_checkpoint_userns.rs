//! CheckpointPod and RestorePod, and CheckpointContainer with a restore
//! through CreateContainer, of pods with their own user namespace, end to
//! end: a real daemon, the real CRIU with berth's join-userns patch
//! (scripts/install-criu.sh).

mod common;

use berth_cri::proto;
use common::exec_sh as exec;
use common::pods::*;
use common::*;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::Command;

use tonic::Code;

/// A daemon with restore on, when CRIU works here.
async fn node(test: &str) -> Option<Env> {
    if !criu_works(test) {
        return None;
    }
    env_with_config(test, "[checkpoint]\nrestore = true\n").await
}

/// StopPodSandbox of `id`.
async fn stop_pod(rt: &mut Rt, id: impl Into<String>) {
    rt.stop_pod_sandbox(proto::StopPodSandboxRequest {
        pod_sandbox_id: id.into(),
    })
    .await
    .unwrap();
}

/// Counts in /count every 0.1 s.
const COUNTER: &str = "i=0; while :; do i=$((i+1)); echo $i > /count; sleep 0.1; done";

/// The inode of the user namespace owning `pid`'s pid namespace
/// (`NS_GET_USERNS`).
fn owner_of_pid_ns(pid: i32) -> u64 {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    const NS_GET_USERNS: nix::libc::c_ulong = 0xb701;
    let ns = std::fs::File::open(format!("/proc/{pid}/ns/pid")).unwrap();
    // SAFETY: NS_GET_USERNS takes no argument and returns a new fd (or -1).
    let fd = unsafe { nix::libc::ioctl(ns.as_raw_fd(), NS_GET_USERNS) };
    assert!(fd >= 0, "{}", std::io::Error::last_os_error());
    // SAFETY: a new fd that nothing else owns.
    let owner = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    owner.metadata().unwrap().ino()
}

/// `userns_pod` with the pod's ids at `host` instead.
fn userns_pod_at(env: &Env, name: &str, host: u32) -> proto::PodSandboxConfig {
    let mut cfg = userns_pod(env, name);
    let u = cfg
        .linux
        .as_mut()
        .and_then(|l| l.security_context.as_mut())
        .and_then(|s| s.namespace_options.as_mut())
        .and_then(|o| o.userns_options.as_mut())
        .unwrap();
    for m in u.uids.iter_mut().chain(u.gids.iter_mut()) {
        m.host_id = host;
    }
    cfg
}

/// What the container sees of its ids: its uid map's line, and the owner
/// of its counter's file.
async fn ids_inside(rt: &mut Rt, id: &str) -> (String, String) {
    let (code, out) = exec(rt, id, "cat /proc/self/uid_map; stat -c %u:%g /count").await;
    assert_eq!(code, 0, "{out}");
    let mut lines = out.lines();
    let map = lines
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    (map, lines.next().unwrap_or_default().trim().to_string())
}

/// A user-namespace pod's counter is checkpointed and restored into a new
/// pod with the same id maps: it counts on, still root in the pod's user
/// namespace, its files its own and writable. A restore into a pod with
/// other maps, or without a user namespace, is refused naming the field and
/// leaves nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_namespace_pod_is_checkpointed_and_restored() {
    let Some(mut env) = node("a_user_namespace_pod_is_checkpointed_and_restored").await else {
        return;
    };
    let pod_cfg = userns_pod(&env, "userns-counter");
    let pod = run_pod(&mut env.rt, pod_cfg.clone()).await;
    let counter = root_sh(&env, "counter", COUNTER);
    let counter = create_start(&mut env.rt, &pod, &pod_cfg, counter).await;
    wait_at_least(&mut env.rt, &counter, "cat /count", 5).await;
    let before = ids_inside(&mut env.rt, &counter).await;
    assert_eq!(before, ("0 500000 65536".to_string(), "0:0".to_string()));

    let out = env.dir.path().join("pod-checkpoint");
    std::fs::create_dir(&out).unwrap();
    checkpoint_pod(&mut env.rt, &pod, &[&counter], &out)
        .await
        .unwrap_or_else(|e| panic!("CheckpointPod: {}", e.message()));
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("pod.json")).unwrap()).unwrap();
    assert_eq!(manifest["namespaces"]["user"], true);
    let maps: serde_json::Value = serde_json::from_slice(
        &std::fs::read(out.join("containers/counter/checkpoint/userns.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(maps["uid_map"][0]["host_id"], 500000, "{maps}");
    let dumped = last(&exec(&mut env.rt, &counter, "cat /count").await.1);
    stop_pod(&mut env.rt, pod.clone()).await;
    let restore_cfg = root_sh(&env, "counter", "");
    let configs = || vec![restore_cfg.clone()];

    // Other maps, or no user namespace: refused, nothing left.
    let pods_before = pods(&mut env.rt).await.len();
    // userns_pod's pid namespace is the pod's (CRI's default, POD).
    let mut no_userns = pod_named(&env, "no-userns");
    set_pod_pid(&mut no_userns, proto::NamespaceMode::Pod);
    for (cfg, what) in [
        (userns_pod_at(&env, "other-maps", 600_000), "other maps"),
        (no_userns, "no user namespace"),
    ] {
        let e = restore_pod(&mut env.rt, &out, cfg, configs())
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{what}: {}", e.message());
        assert!(
            e.message().contains("userns_options"),
            "{what}: {}",
            e.message()
        );
        assert_eq!(
            pods(&mut env.rt).await.len(),
            pods_before,
            "{what}: the refused restore left a pod"
        );
    }
    // Refused before a pod was made, not made and then removed.
    let log = std::fs::read_to_string(env.dir.path().join("berth.log")).unwrap();
    assert!(!log.contains("removing the new pod"), "a pod was made");

    // The same maps: it counts on, as root of the new pod's namespace.
    let new_cfg = userns_pod(&env, "userns-again");
    let restored = restore_pod(&mut env.rt, &out, new_cfg, configs())
        .await
        .unwrap_or_else(|e| {
            let m = e.message();
            if let Some(i) = m.find("(log: ") {
                let p = m[i + 6..].trim_end_matches(')');
                let _ = std::fs::copy(p, "/tmp/restore-debug.log");
            }
            panic!("RestorePod: {}", e.message())
        });
    let counter2 = restored_id(&restored, "counter");
    start(&mut env.rt, &counter2)
        .await
        .unwrap_or_else(|e| panic!("StartContainer: {}", e.message()));
    let count = wait_at_least(&mut env.rt, &counter2, "cat /count", dumped + 3).await;
    assert!(last(&count) >= dumped + 3, "{count}");
    assert_eq!(ids_inside(&mut env.rt, &counter2).await, before);
    let (code, out2) = exec(
        &mut env.rt,
        &counter2,
        "id -u; touch /new && stat -c %u /new && touch /etc/new-too && echo ok",
    )
    .await;
    assert_eq!(code, 0, "{out2}");
    assert_eq!(
        out2.split_whitespace().collect::<Vec<_>>(),
        ["0", "0", "ok"]
    );
    // The new pod's user namespace, not a copy: the pod's other processes
    // (a new container) are in the same one.
    let (peer_pod, peer) = (
        userns_pod(&env, "userns-again"),
        root_sh(&env, "peer", "sleep 100000"),
    );
    let peer = create_start(&mut env.rt, &restored.pod_sandbox_id, &peer_pod, peer).await;
    const NS: &str = "readlink /proc/self/ns/user";
    let a = exec(&mut env.rt, &counter2, NS).await.1;
    let b = exec(&mut env.rt, &peer, NS).await.1;
    assert_eq!(
        a, b,
        "restored and new containers share the pod's user namespace"
    );
    stop_pod(&mut env.rt, restored.pod_sandbox_id.clone()).await;
}

/// A container of a user-namespace pod with its own pid namespace is
/// checkpointed (CheckpointContainer, left running) and restored through
/// CreateContainer into another pod with the same maps: its counter goes on
/// in a new pid namespace (pid 1 its shell) owned by that pod's user
/// namespace. A pod with other maps refuses it naming the field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_namespace_container_with_its_own_pid_namespace_is_restored() {
    let Some(mut env) =
        node("a_user_namespace_container_with_its_own_pid_namespace_is_restored").await
    else {
        return;
    };
    let pod_cfg = userns_pod(&env, "userns-one");
    let pod = run_pod(&mut env.rt, pod_cfg.clone()).await;
    let mut counter = root_sh(&env, "counter", COUNTER);
    set_container_pid(&mut counter, proto::NamespaceMode::Container);
    let counter = create_start(&mut env.rt, &pod, &pod_cfg, counter).await;
    wait_at_least(&mut env.rt, &counter, "cat /count", 5).await;
    let archive = env.dir.path().join("counter.tar");
    env.rt
        .checkpoint_container(proto::CheckpointContainerRequest {
            container_id: counter.clone(),
            location: archive.display().to_string(),
            timeout: 0,
        })
        .await
        .unwrap_or_else(|e| panic!("CheckpointContainer: {}", e.message()));
    let dumped = last(&exec(&mut env.rt, &counter, "cat /count").await.1);

    let restore = |env: &Env| {
        let mut c = root_sh(env, "counter", "");
        set_container_pid(&mut c, proto::NamespaceMode::Container);
        c.image = Some(proto::ImageSpec {
            image: archive.display().to_string(),
            ..Default::default()
        });
        c
    };
    // Other maps: refused before anything runs.
    let other_cfg = userns_pod_at(&env, "userns-other", 600_000);
    let other = run_pod(&mut env.rt, other_cfg.clone()).await;
    let e = env
        .rt
        .create_container(proto::CreateContainerRequest {
            pod_sandbox_id: other,
            config: Some(restore(&env)),
            sandbox_config: Some(other_cfg),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{}", e.message());
    assert!(e.message().contains("userns_options"), "{}", e.message());

    let new_cfg = userns_pod(&env, "userns-two");
    let new_pod = run_pod(&mut env.rt, new_cfg.clone()).await;
    let restored = env
        .rt
        .create_container(proto::CreateContainerRequest {
            pod_sandbox_id: new_pod.clone(),
            config: Some(restore(&env)),
            sandbox_config: Some(new_cfg),
        })
        .await
        .unwrap_or_else(|e| panic!("CreateContainer (restore): {}", e.message()))
        .into_inner()
        .container_id;
    start(&mut env.rt, &restored)
        .await
        .unwrap_or_else(|e| panic!("StartContainer: {}", e.message()));
    let count = wait_at_least(&mut env.rt, &restored, "cat /count", dumped + 3).await;
    assert!(last(&count) >= dumped + 3, "{count}");
    let (code, out) = exec(
        &mut env.rt,
        &restored,
        "cat /proc/1/cmdline | tr '\\0' ' '; echo; cat /proc/self/uid_map; id -u",
    )
    .await;
    assert_eq!(code, 0, "{out}");
    assert!(
        out.lines().next().unwrap_or_default().contains("/count"),
        "{out}"
    );
    assert!(out.contains("500000"), "{out}");
    assert_eq!(out.lines().last(), Some("0"), "{out}");
    // Its pid namespace is owned by the new pod's user namespace (as a
    // start would make it), not by the host's.
    let init = verbose_info(&mut env.rt, &restored).await["pid"]
        .as_i64()
        .unwrap();
    assert_eq!(
        owner_of_pid_ns(init as i32),
        std::fs::metadata(format!("/proc/{init}/ns/user"))
            .unwrap()
            .ino()
    );
    for p in [pod, new_pod] {
        stop_pod(&mut env.rt, p).await;
    }
}

/// A shell on its terminal in a user-namespace pod, with a host directory
/// mounted idmapped (the pod's maps, as kubelet asks for volumes): it
/// counts into the volume and answers each line typed at it. Checkpointed
/// with CheckpointPod and restored into a new pod with the same maps and
/// volume: the count goes on in the volume, the files it writes there are
/// root's on the host (through the idmapping), and Attach reaches the new
/// terminal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_namespace_terminal_with_an_idmapped_volume_is_restored() {
    let Some(mut env) = node("a_user_namespace_terminal_with_an_idmapped_volume_is_restored").await
    else {
        return;
    };
    let data = env.dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("seed"), "seed\n").unwrap();
    let maps = vec![proto::IdMapping {
        host_id: 500_000,
        container_id: 0,
        length: 65536,
    }];
    let console = |env: &Env, script: &str| {
        let mut c = root_sh(env, "console", script);
        c.tty = true;
        c.stdin = true;
        c.mounts.push(proto::Mount {
            container_path: "/data".into(),
            host_path: data.display().to_string(),
            uid_mappings: maps.clone(),
            gid_mappings: maps.clone(),
            ..Default::default()
        });
        c
    };
    const SCRIPT: &str = "(i=0; while :; do i=$((i+1)); echo $i > /data/count; sleep 0.1; done) & \
        while read l; do echo got-$l; done";
    let pod_cfg = userns_pod(&env, "userns-tty");
    let pod = run_pod(&mut env.rt, pod_cfg.clone()).await;
    let c = console(&env, SCRIPT);
    let id = create_start(&mut env.rt, &pod, &pod_cfg, c).await;
    wait_at_least(&mut env.rt, &id, "cat /data/count", 5).await;
    let (code, out) = exec(&mut env.rt, &id, "stat -c %u /data/seed").await;
    assert_eq!((code, out.trim()), (0, "0"), "{out}");
    attach_echo(&mut env.rt, true, &id, "before", "got-before").await;

    let out = env.dir.path().join("pod-checkpoint");
    std::fs::create_dir(&out).unwrap();
    checkpoint_pod(&mut env.rt, &pod, &[&id], &out)
        .await
        .unwrap_or_else(|e| panic!("CheckpointPod: {}", e.message()));
    stop_pod(&mut env.rt, pod.clone()).await;
    let dumped = last(&std::fs::read_to_string(data.join("count")).unwrap());

    let new_cfg = userns_pod(&env, "userns-tty-again");
    let c = console(&env, "");
    let restored = restore_pod(&mut env.rt, &out, new_cfg, vec![c])
        .await
        .unwrap_or_else(|e| panic!("RestorePod: {}", e.message()));
    let id2 = restored_id(&restored, "console");
    start(&mut env.rt, &id2)
        .await
        .unwrap_or_else(|e| panic!("StartContainer: {}", e.message()));
    wait_at_least(&mut env.rt, &id2, "cat /data/count", dumped + 3).await;
    let (code, out) = exec(
        &mut env.rt,
        &id2,
        "touch /data/after && stat -c %u /data/after",
    )
    .await;
    assert_eq!((code, out.trim()), (0, "0"), "{out}");
    assert_eq!(std::fs::metadata(data.join("after")).unwrap().uid(), 0);
    attach_echo(&mut env.rt, true, &id2, "after", "got-after").await;
    stop_pod(&mut env.rt, restored.pod_sandbox_id.clone()).await;
}

/// A non-root container of a user-namespace pod (uid 1000, no capabilities,
/// no_new_privs, the runtime's seccomp profile) is checkpointed and
/// restored with the same context: the restored tasks' ids are checked as
/// the pod's namespace sees them (1000, not the host's 501000) and pass;
/// the same checkpoint restored as another user is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_root_user_namespace_container_is_restored_and_checked_inside() {
    let Some(mut env) =
        node("a_non_root_user_namespace_container_is_restored_and_checked_inside").await
    else {
        return;
    };
    let restricted = |uid: i64| proto::LinuxContainerSecurityContext {
        run_as_user: Some(proto::Int64Value { value: uid }),
        capabilities: Some(proto::Capability {
            drop_capabilities: vec!["ALL".into()],
            ..Default::default()
        }),
        no_new_privs: true,
        seccomp: Some(proto::SecurityProfile {
            profile_type: proto::security_profile::ProfileType::RuntimeDefault as i32,
            localhost_ref: String::new(),
        }),
        namespace_options: Some(proto::NamespaceOption {
            pid: proto::NamespaceMode::Container as i32,
            ..Default::default()
        }),
        ..Default::default()
    };
    let counter = |env: &Env, uid: i64, script: &str| {
        let mut c = container(env, "counter", &["/bin/sh", "-c"], &[script]);
        c.linux = Some(proto::LinuxContainerConfig {
            security_context: Some(restricted(uid)),
            ..Default::default()
        });
        c
    };
    const SCRIPT: &str = "i=0; while :; do i=$((i+1)); echo $i > /tmp/count; sleep 0.1; done";
    let pod_cfg = userns_pod(&env, "userns-user");
    let pod = run_pod(&mut env.rt, pod_cfg.clone()).await;
    let c = counter(&env, 1000, SCRIPT);
    let id = create_start(&mut env.rt, &pod, &pod_cfg, c).await;
    wait_at_least(&mut env.rt, &id, "cat /tmp/count", 5).await;
    let archive = env.dir.path().join("counter.tar");
    if let Err(e) = env
        .rt
        .checkpoint_container(proto::CheckpointContainerRequest {
            container_id: id.clone(),
            location: archive.display().to_string(),
            timeout: 0,
        })
        .await
    {
        panic!("CheckpointContainer: {}", e.message());
    }
    let new_cfg = userns_pod(&env, "userns-user-again");
    let new_pod = run_pod(&mut env.rt, new_cfg.clone()).await;
    let from = |env: &Env, uid: i64| {
        let mut c = counter(env, uid, "");
        c.image = Some(proto::ImageSpec {
            image: archive.display().to_string(),
            ..Default::default()
        });
        proto::CreateContainerRequest {
            pod_sandbox_id: new_pod.clone(),
            config: Some(c),
            sandbox_config: Some(new_cfg.clone()),
        }
    };
    // As another user: the tasks are 1000 inside, 2000 is asked for.
    let req = from(&env, 2000);
    let e = env.rt.create_container(req).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{}", e.message());
    assert!(e.message().contains("where only 2000"), "{}", e.message());
    // As itself: restored, counting on as 1000 inside.
    let req = from(&env, 1000);
    let restored = env
        .rt
        .create_container(req)
        .await
        .unwrap_or_else(|e| panic!("CreateContainer (restore): {}", e.message()))
        .into_inner()
        .container_id;
    start(&mut env.rt, &restored).await.unwrap();
    let (code, out) = exec(&mut env.rt, &restored, "id -u; cat /tmp/count").await;
    assert_eq!(code, 0, "{out}");
    assert_eq!(out.lines().next(), Some("1000"), "{out}");
    for p in [pod, new_pod] {
        stop_pod(&mut env.rt, p).await;
    }
}

/// A node whose criu lacks berth's join-userns patch (`criu check --feature
/// join_userns` fails: a stand-in criu on the daemon's PATH, otherwise the
/// real one) refuses to restore into a user-namespace pod up front, naming
/// the patch, rather than with CRIU's EPERM; nothing is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_criu_without_the_join_userns_patch_is_refused_up_front() {
    let Some(mut env) = node("a_criu_without_the_join_userns_patch_is_refused_up_front").await
    else {
        return;
    };
    let pod_cfg = userns_pod(&env, "userns-stock");
    let pod = run_pod(&mut env.rt, pod_cfg.clone()).await;
    let c = root_sh(&env, "counter", COUNTER);
    let id = create_start(&mut env.rt, &pod, &pod_cfg, c).await;
    let archive = env.dir.path().join("counter.tar");
    env.rt
        .checkpoint_container(proto::CheckpointContainerRequest {
            container_id: id,
            location: archive.display().to_string(),
            timeout: 0,
        })
        .await
        .unwrap_or_else(|e| panic!("CheckpointContainer: {}", e.message()));

    let real = Command::new("sh")
        .args(["-c", "command -v criu"])
        .output()
        .unwrap();
    let real = String::from_utf8(real.stdout).unwrap().trim().to_string();
    let bin = env.dir.path().join("stock-criu");
    std::fs::create_dir(&bin).unwrap();
    std::fs::write(
        bin.join("criu"),
        format!(
            "#!/bin/sh\n[ \"$1 $2 $3\" = \"check --feature join_userns\" ] && exit 1\nexec {real} \"$@\"\n"
        ),
    )
    .unwrap();
    std::fs::set_permissions(bin.join("criu"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    env.daemon.crash();
    restart_with_env(&mut env, &[("PATH", &path)]).await;

    let mut c = root_sh(&env, "restored", "");
    c.image = Some(proto::ImageSpec {
        image: archive.display().to_string(),
        ..Default::default()
    });
    let e = env
        .rt
        .create_container(proto::CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(c),
            sandbox_config: Some(pod_cfg),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{}", e.message());
    assert!(e.message().contains("join-userns patch"), "{}", e.message());
    let left = env
        .rt
        .list_containers(proto::ListContainersRequest {
            filter: Some(proto::ContainerFilter {
                pod_sandbox_id: pod.clone(),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .containers;
    assert_eq!(left.len(), 1, "only the checkpointed container: {left:?}");
    stop_pod(&mut env.rt, pod).await;
}
