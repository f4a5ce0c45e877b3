//! CheckpointPod and RestorePod (cri-api 1.37), end to end: real daemons
//! (two of them, with separate roots and state: two "nodes"), a real
//! registry, the real CRIU (scripts/install-criu.sh).

mod common;

use std::path::{Path, PathBuf};
use std::time::Instant;

use berth_cri::proto;
use common::exec_sh as exec;
use common::pods::*;
use common::*;
use tonic::Code;

const RESTORE_ON: &str = "[checkpoint]\nrestore = true\n";

/// A server appending what it receives on port 7000 to /recv.
const SERVER: &str = "busybox tail -f /dev/null | nc -l -p 7000 > /recv";
/// A client writing /written, then counting in /count and sending each
/// number to the server every 0.1 s.
const CLIENT: &str = "echo kept > /written; sleep 1; i=0; while :; do i=$((i+1)); \
    echo $i > /count; echo $i; sleep 0.1; done | nc 127.0.0.1 7000";

async fn node(test: &str) -> Option<Env> {
    env_with_config(test, RESTORE_ON).await
}

/// A pod `name` of the [`SERVER`] ("tcp") and the [`CLIENT`] ("counter"),
/// once the server has received `n` numbers: (pod, server, client) ids.
async fn tcp_pair_pod(env: &mut Env, name: &str, n: u64) -> (String, String, String) {
    let pod_cfg = pod_named(env, name);
    let pod = run_pod(&mut env.rt, pod_cfg.clone()).await;
    let server = root_sh(env, "tcp", SERVER);
    let server = create_start(&mut env.rt, &pod, &pod_cfg, server).await;
    let client = root_sh(env, "counter", CLIENT);
    let client = create_start(&mut env.rt, &pod, &pod_cfg, client).await;
    wait_at_least(&mut env.rt, &server, "cat /recv", n).await;
    (pod, server, client)
}

/// File `name` of a container checkpoint's `rootfs-diff.tar`, as text.
fn diff_file(checkpoint: &Path, name: &str) -> String {
    let diff = std::fs::read(checkpoint.join("rootfs-diff.tar")).unwrap();
    let mut ar = tar::Archive::new(diff.as_slice());
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        if e.path().unwrap() == Path::new(name) {
            let mut s = String::new();
            std::io::Read::read_to_string(&mut e, &mut s).unwrap();
            return s;
        }
    }
    panic!("{name} not in {}", checkpoint.display());
}

/// Every file under `dir`, relative, sorted.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if e.file_type().unwrap().is_dir() {
                todo.push(p.clone());
            }
            out.push(p.strip_prefix(dir).unwrap().to_path_buf());
        }
    }
    out.sort();
    out
}

/// `dir` as the one layer (a plain tar) of an image annotated with the
/// pod's name, pushed to `env`'s registry and pulled back with another
/// client (oci-client) into the new directory `into`.
async fn through_registry(env: &Env, dir: &Path, pod: &str, into: &Path) {
    use berth_e2e::images::{pull_layers, push_image, sha256_digest, ImageSpec, Layer};
    let mut ar = tar::Builder::new(Vec::new());
    ar.append_dir_all(".", dir).unwrap();
    let bytes = ar.into_inner().unwrap();
    let layer = Layer {
        media_type: "application/vnd.oci.image.layer.v1.tar".into(),
        diff_id: sha256_digest(&bytes),
        blob: bytes,
    };
    let mut spec = ImageSpec::new(vec![layer], serde_json::json!({}));
    spec.annotations
        .insert("io.berth.checkpoint.pod".into(), pod.into());
    let (addr, repo) = (env._reg.addr(), format!("test/{pod}-pod-checkpoint"));
    push_image(&addr, &repo, "v1", &spec, None).await.unwrap();
    let (annotations, layers) = pull_layers(&addr, &repo, "v1").await.unwrap();
    assert_eq!(
        annotations
            .get("io.berth.checkpoint.pod")
            .map(String::as_str),
        Some(pod)
    );
    assert_eq!(layers.len(), 1);
    std::fs::create_dir(into).unwrap();
    let mut ar = tar::Archive::new(layers[0].as_slice());
    ar.set_preserve_permissions(true);
    ar.unpack(into).unwrap();
}

/// Whether two trees hold the same files with the same bytes and modes.
fn same_tree(a: &Path, b: &Path) {
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(files_under(a), files_under(b));
    for f in files_under(a) {
        let (ma, mb) = (
            std::fs::metadata(a.join(&f)).unwrap(),
            std::fs::metadata(b.join(&f)).unwrap(),
        );
        assert_eq!(ma.permissions().mode(), mb.permissions().mode(), "{f:?}");
        if ma.is_file() {
            assert!(
                std::fs::read(a.join(&f)).unwrap() == std::fs::read(b.join(&f)).unwrap(),
                "{f:?} differs"
            );
        }
    }
}

/// A pod of two containers joined by an established TCP connection over
/// the pod's loopback — a server appending what it receives to /recv, a
/// client counting in /count (after writing /written) and sending each
/// number every 0.1 s — is checkpointed on one node, its directory copied
/// to a second node with its own daemon, root and state — and also pushed
/// to a registry as an image and pulled back there, the copy restored — and
/// restored there: the counter continues, the files are there, and the connection
/// between the two containers carries on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_checkpointed_on_one_node_runs_on_from_where_it_was_on_another() {
    let test = "a_pod_checkpointed_on_one_node_runs_on_from_where_it_was_on_another";
    if !criu_works(test) {
        return;
    }
    let Some(mut a) = node(test).await else {
        return;
    };
    let Some(mut b) = node(test).await else {
        return;
    };
    let (pod, server_id, client_id) = tcp_pair_pod(&mut a, "mover", 5).await;
    wait_at_least(&mut a.rt, &client_id, "cat /count", 5).await;

    let out = a.dir.path().join("pod-checkpoint");
    std::fs::create_dir(&out).unwrap();
    let t0 = Instant::now();
    checkpoint_pod(&mut a.rt, &pod, &[&client_id, &server_id], &out)
        .await
        .unwrap_or_else(|e| panic!("CheckpointPod: {}", e.message()));
    println!("CheckpointPod of 2 containers took {:?}", t0.elapsed());
    // Left running, both.
    for id in [&server_id, &client_id] {
        let st = status(&mut a.rt, id).await;
        assert_eq!(st.state, proto::ContainerState::ContainerRunning as i32);
    }
    let n = last(&exec(&mut a.rt, &server_id, "cat /recv").await.1);
    wait_at_least(&mut a.rt, &server_id, "cat /recv", n + 3).await;
    // The layout: the manifest and one archive layout per container, in
    // creation order; the memory is root's alone.
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("pod.json")).unwrap()).unwrap();
    assert_eq!(manifest["version"], 1);
    assert_eq!(manifest["pod"]["id"], pod.as_str());
    assert_eq!(manifest["pod"]["name"], "mover");
    assert_eq!(manifest["namespaces"]["pid"], "container");
    let names: Vec<&str> = manifest["containers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["tcp", "counter"]);
    for name in names {
        let c = out.join("containers").join(name);
        for need in [
            "checkpoint/inventory.img",
            "checkpoint/descriptors.json",
            "config.dump",
            "spec.dump",
            "rootfs-diff.tar",
            "deleted.files",
            "dump.log",
        ] {
            assert!(c.join(need).exists(), "{name}: {need} missing");
        }
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&c).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "{name}: mode {mode:o}");
    }
    let dumped_count = last(&diff_file(&out.join("containers/counter"), "count"));
    let dumped_recv = last(&diff_file(&out.join("containers/tcp"), "recv"));
    assert!(
        dumped_count >= 5 && dumped_recv >= 5,
        "{dumped_count} {dumped_recv}"
    );

    // To the other node: copied (as scp would), the first pod gone.
    let moved = b.dir.path().join("moved");
    copy_dir(&out, &moved);
    let pulled = b.dir.path().join("pulled");
    through_registry(&a, &out, "mover", &pulled).await;
    same_tree(&moved, &pulled);
    a.rt.stop_pod_sandbox(proto::StopPodSandboxRequest {
        pod_sandbox_id: pod.clone(),
    })
    .await
    .unwrap();
    let before: Vec<_> = files_under(&pulled);
    let new_cfg = pod_named(&b, "mover");
    let t0 = Instant::now();
    let configs = vec![root_sh(&b, "counter", ""), root_sh(&b, "tcp", "")];
    let restored = restore_pod(&mut b.rt, &pulled, new_cfg, configs)
        .await
        .unwrap_or_else(|e| panic!("RestorePod: {}", e.message()));
    println!("RestorePod of 2 containers took {:?}", t0.elapsed());
    assert_eq!(files_under(&pulled), before, "the checkpoint is only read");
    let names: Vec<&str> = restored
        .restored_containers
        .iter()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(names, ["tcp", "counter"]);
    let (server2, client2) = (
        restored_id(&restored, "tcp"),
        restored_id(&restored, "counter"),
    );
    for id in [&server2, &client2] {
        let st = status(&mut b.rt, id).await;
        assert_eq!(st.state, proto::ContainerState::ContainerCreated as i32);
        assert_eq!(
            st.metadata.as_ref().map(|m| m.name.as_str()),
            Some(if *id == server2 { "tcp" } else { "counter" })
        );
    }
    // The restored containers live in the new pod on node b.
    let list = pods(&mut b.rt).await;
    assert!(list.iter().any(|p| p.id == restored.pod_sandbox_id));
    for id in [&server2, &client2] {
        start(&mut b.rt, id).await.unwrap();
    }
    // The counter goes on from where it was, the file is there, the
    // hostname is the new pod's.
    let count = wait_at_least(&mut b.rt, &client2, "cat /count", dumped_count + 3).await;
    assert!(last(&count) >= dumped_count + 3, "{count}");
    assert_eq!(exec(&mut b.rt, &client2, "cat /written").await.1, "kept\n");
    assert_eq!(
        exec(&mut b.rt, &client2, "busybox hostname").await.1,
        "mover-host\n"
    );
    // The TCP connection between the two containers survived: one stream,
    // nothing lost or repeated, going on past the dump.
    let recv = wait_at_least(&mut b.rt, &server2, "cat /recv", dumped_recv + 5).await;
    let nums: Vec<u64> = recv.lines().filter_map(|l| l.trim().parse().ok()).collect();
    let expect: Vec<u64> = (1..=nums.len() as u64).collect();
    assert_eq!(nums, expect, "one stream across the move");

    b.rt.stop_pod_sandbox(proto::StopPodSandboxRequest {
        pod_sandbox_id: restored.pod_sandbox_id.clone(),
    })
    .await
    .unwrap();
}

/// Bad requests are refused naming the field; shapes not checkpointed yet
/// are refused before anything is frozen; a restore that fails half way
/// leaves no pod and no container.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_checkpoint_and_restore_errors_leave_nothing_behind() {
    let test = "pod_checkpoint_and_restore_errors_leave_nothing_behind";
    if !criu_works(test) {
        return;
    }
    let Some(mut env) = node(test).await else {
        return;
    };
    let pod = env.pod.clone();
    let pod_cfg = pod_config(env.dir.path());
    let cfg = root_sh(&env, "sleeper", "sleep 1000");
    let id = create_start(&mut env.rt, &pod, &pod_cfg, cfg).await;
    let out = env.dir.path().join("out");
    std::fs::create_dir(&out).unwrap();

    let code = |r: Result<(), tonic::Status>| {
        r.map_err(|e| (e.code(), e.message().to_string()))
            .unwrap_err()
    };
    let (c, m) = code(checkpoint_pod(&mut env.rt, "nope", &[&id], &out).await);
    assert_eq!(c, Code::NotFound, "{m}");
    let (c, m) = code(checkpoint_pod(&mut env.rt, &pod, &[], &out).await);
    assert_eq!(
        (c, m.contains("container_ids")),
        (Code::InvalidArgument, true),
        "{m}"
    );
    let (c, m) = code(checkpoint_pod(&mut env.rt, &pod, &[&id, &id], &out).await);
    assert_eq!(
        (c, m.contains("twice")),
        (Code::InvalidArgument, true),
        "{m}"
    );
    let (c, m) = code(checkpoint_pod(&mut env.rt, &pod, &[&id], Path::new("relative")).await);
    assert_eq!(
        (c, m.contains("output_path")),
        (Code::InvalidArgument, true),
        "{m}"
    );
    std::fs::write(out.join("mine"), b"the caller's").unwrap();
    let (c, m) = code(checkpoint_pod(&mut env.rt, &pod, &[&id], &out).await);
    assert_eq!(
        (c, m.contains("not empty")),
        (Code::InvalidArgument, true),
        "{m}"
    );
    std::fs::remove_file(out.join("mine")).unwrap();
    let mut with_option = proto::CheckpointPodRequest {
        pod_sandbox_id: pod.clone(),
        output_path: out.display().to_string(),
        container_ids: vec![id.clone()],
        ..Default::default()
    };
    with_option
        .options
        .insert("leave-running".into(), "false".into());
    let e = env.rt.checkpoint_pod(with_option).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("options"), "{}", e.message());

    // A container of another pod.
    let other_cfg = pod_named(&env, "other");
    let other = run_pod(&mut env.rt, other_cfg.clone()).await;
    let cfg = root_sh(&env, "s", "sleep 1000");
    let stranger = create_start(&mut env.rt, &other, &other_cfg, cfg).await;
    let (c, m) = code(checkpoint_pod(&mut env.rt, &pod, &[&id, &stranger], &out).await);
    assert_eq!(
        (c, m.contains("not a container of pod")),
        (Code::InvalidArgument, true),
        "{m}"
    );
    // A container in the node's pid namespace: refused, nothing written,
    // all run on (a pod sharing its own is checkpointed: see
    // cri_pod_checkpoint_pid).
    let mut host_cfg = pod_named(&env, "hostpid");
    set_pod_pid(&mut host_cfg, proto::NamespaceMode::Node);
    let host = run_pod(&mut env.rt, host_cfg.clone()).await;
    let mut in_host = root_sh(&env, "p", "sleep 1000");
    set_container_pid(&mut in_host, proto::NamespaceMode::Node);
    let p = create_start(&mut env.rt, &host, &host_cfg, in_host).await;
    let (c, m) = code(checkpoint_pod(&mut env.rt, &host, &[&p], &out).await);
    assert_eq!(
        (c, m.contains("the node's pid namespace")),
        (Code::FailedPrecondition, true),
        "{m}"
    );
    assert_eq!(exec(&mut env.rt, &p, "true").await.0, 0, "not left frozen");
    // An exited container.
    let cfg = root_sh(&env, "done", "true");
    let done = create_start(&mut env.rt, &pod, &pod_cfg, cfg).await;
    wait_exited(&mut env.rt, &done).await;
    let (c, m) = code(checkpoint_pod(&mut env.rt, &pod, &[&id, &done], &out).await);
    assert_eq!(
        (c, m.contains("running")),
        (Code::FailedPrecondition, true),
        "{m}"
    );
    assert_eq!(files_under(&out), Vec::<PathBuf>::new(), "nothing written");
    assert_eq!(exec(&mut env.rt, &id, "true").await.0, 0, "not left frozen");

    // A good checkpoint, then restores that fail.
    checkpoint_pod(&mut env.rt, &pod, &[&id], &out)
        .await
        .unwrap();
    let pods_before = pods(&mut env.rt).await.len();
    let restored_cfg = pod_named(&env, "restored");
    let fresh = || restored_cfg.clone();
    let sleeper = root_sh(&env, "sleeper", "");
    let cases: Vec<(proto::RestorePodRequest, Code, &str)> = vec![
        (
            proto::RestorePodRequest {
                checkpoint_path: env.dir.path().display().to_string(),
                config: Some(fresh()),
                container_configs: vec![sleeper.clone()],
                ..Default::default()
            },
            Code::InvalidArgument,
            "checkpoint_path",
        ),
        (
            proto::RestorePodRequest {
                checkpoint_path: out.display().to_string(),
                config: Some(fresh()),
                container_configs: vec![],
                ..Default::default()
            },
            Code::InvalidArgument,
            "no config for the checkpointed container \"sleeper\"",
        ),
        (
            proto::RestorePodRequest {
                checkpoint_path: out.display().to_string(),
                config: Some(fresh()),
                container_configs: vec![sleeper.clone(), root_sh(&env, "ghost", "")],
                ..Default::default()
            },
            Code::InvalidArgument,
            "container_configs[1].metadata.name",
        ),
        (
            proto::RestorePodRequest {
                checkpoint_path: out.display().to_string(),
                config: Some(fresh()),
                container_configs: vec![sleeper.clone()],
                runtime_handler: "no-such-handler".into(),
                ..Default::default()
            },
            Code::NotFound,
            "no-such-handler",
        ),
        // Fails at the container, after the pod was made: the log path
        // leaves the pod's log directory.
        (
            proto::RestorePodRequest {
                checkpoint_path: out.display().to_string(),
                config: Some(fresh()),
                container_configs: vec![proto::ContainerConfig {
                    log_path: "../escape.log".into(),
                    ..sleeper.clone()
                }],
                ..Default::default()
            },
            Code::InvalidArgument,
            "config.log_path",
        ),
    ];
    for (req, want, text) in cases {
        let e = env.rt.restore_pod(req).await.unwrap_err();
        assert!(
            e.code() == want || (want == Code::NotFound && e.code() == Code::InvalidArgument),
            "{text}: {:?} {}",
            e.code(),
            e.message()
        );
        assert!(
            e.message().contains(text),
            "{text:?} not in {}",
            e.message()
        );
        assert_eq!(
            pods(&mut env.rt).await.len(),
            pods_before,
            "{text}: a pod was left"
        );
    }
    // The name was released: the same restore works.
    let ok = restore_pod(&mut env.rt, &out, fresh(), vec![sleeper])
        .await
        .unwrap_or_else(|e| panic!("RestorePod: {}", e.message()));
    let restored = &ok.restored_containers[0].container_id;
    start(&mut env.rt, restored).await.unwrap();
    assert_eq!(
        exec(&mut env.rt, restored, "busybox hostname").await.1,
        "restored-host\n"
    );
    for p in [&ok.pod_sandbox_id, &host, &other] {
        env.rt
            .stop_pod_sandbox(proto::StopPodSandboxRequest {
                pod_sandbox_id: p.to_string(),
            })
            .await
            .unwrap();
    }
}

/// A daemon killed while RestorePod's fence is up (the crash point
/// `restore_pod:fenced`): the next start-up lowers it, so the half-restored
/// pod is not left without a network.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fence_a_crash_left_up_is_lowered_at_start_up() {
    let test = "a_fence_a_crash_left_up_is_lowered_at_start_up";
    if !criu_works(test) || !cfg!(debug_assertions) {
        println!("skipped: {test}: needs criu and a debug build (crash points)");
        return;
    }
    let Some(mut env) = node(test).await else {
        return;
    };
    let (pod, server, client) = tcp_pair_pod(&mut env, "fenced", 3).await;
    let out = env.dir.path().join("pod-checkpoint");
    std::fs::create_dir(&out).unwrap();
    checkpoint_pod(&mut env.rt, &pod, &[&server, &client], &out)
        .await
        .unwrap();

    env.daemon.crash();
    restart_with_env(&mut env, &[("BERTH_CRASH_AT", "restore_pod:fenced")]).await;
    let configs = vec![root_sh(&env, "tcp", ""), root_sh(&env, "counter", "")];
    let new_cfg = pod_named(&env, "restored");
    let died = restore_pod(&mut env.rt, &out, new_cfg, configs).await;
    assert!(died.is_err(), "the daemon never reached the crash point");
    env.daemon.crash();
    let restored_dirs = |env: &Env| -> Vec<PathBuf> {
        std::fs::read_dir(env.dir.path().join("state/pods"))
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|d| d.join("restore-fence").exists())
            .collect()
    };
    let fenced = restored_dirs(&env);
    assert_eq!(fenced.len(), 1, "the marker of the raised fence");
    let chain = |dir: &Path| {
        let out = std::process::Command::new("nsenter")
            .arg(format!("--net={}", dir.join("ns/net").display()))
            .args(["iptables", "-S", "OUTPUT"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).contains("BERTH-RESTORE")
    };
    assert!(
        chain(&fenced[0]),
        "the fence is up while the daemon is down"
    );
    restart(&mut env).await;
    assert!(!chain(&fenced[0]), "the start-up lowered the fence");
    assert!(restored_dirs(&env).is_empty(), "and removed its marker");
}
