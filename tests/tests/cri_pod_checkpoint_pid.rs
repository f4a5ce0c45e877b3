//! CheckpointPod and RestorePod of a pod whose containers share one pid
//! namespace (kubelet's `shareProcessNamespace`, crictl's default pod
//! config), end to end: a real daemon, the real CRIU
//! (scripts/install-criu.sh).

mod common;

use berth_cri::proto;
use common::exec_sh as exec;
use common::pods::*;
use common::*;
use tonic::Code;

/// Counts in /count every 0.1 s after writing its shell's pid to /pid.
const COUNTER: &str = "echo $$ > /pid; i=0; while :; do i=$((i+1)); echo $i > /count; \
    sleep 0.1; done";

/// A container of `env` running `script` as root in its pod's shared pid
/// namespace.
fn sharing(env: &Env, name: &str, script: &str) -> proto::ContainerConfig {
    let mut c = root_sh(env, name, script);
    set_container_pid(&mut c, proto::NamespaceMode::Pod);
    c
}

/// The pid the counter's shell has (in the pod's pid namespace), and
/// whether `watcher` sees it as the counter: one namespace for both.
async fn counter_seen(rt: &mut Rt, counter: &str, watcher: &str) -> u32 {
    let pid: u32 = exec(rt, counter, "cat /pid")
        .await
        .1
        .trim()
        .parse()
        .unwrap();
    assert!(pid > 1, "pid 1 is the pod's init, not a container's: {pid}");
    let (_, cmdline) = exec(rt, watcher, &format!("cat /proc/{pid}/cmdline")).await;
    assert!(
        cmdline.contains("/count"),
        "the watcher sees the counter as {pid}: {cmdline:?}"
    );
    pid
}

/// A pod sharing one pid namespace — a counter and a watcher that sees the
/// counter's process — is checkpointed and restored into a new pod: the
/// counter goes on from where it was, with the same pid, in the new pod's
/// shared namespace (the watcher sees it there). Restoring it into a pod
/// that does not share one is refused naming the field, and leaves nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_sharing_one_pid_namespace_is_checkpointed_and_restored() {
    let test = "a_pod_sharing_one_pid_namespace_is_checkpointed_and_restored";
    if !criu_works(test) {
        return;
    }
    let Some(mut env) = env_with_config(test, "[checkpoint]\nrestore = true\n").await else {
        return;
    };
    let mut pod_cfg = pod_named(&env, "sharer");
    set_pod_pid(&mut pod_cfg, proto::NamespaceMode::Pod);
    let pod = run_pod(&mut env.rt, pod_cfg.clone()).await;
    let counter = sharing(&env, "counter", COUNTER);
    let counter = create_start(&mut env.rt, &pod, &pod_cfg, counter).await;
    let watcher = sharing(&env, "watcher", "sleep 100000");
    let watcher = create_start(&mut env.rt, &pod, &pod_cfg, watcher).await;
    wait_at_least(&mut env.rt, &counter, "cat /count", 5).await;
    let pid = counter_seen(&mut env.rt, &counter, &watcher).await;

    let out = env.dir.path().join("pod-checkpoint");
    std::fs::create_dir(&out).unwrap();
    checkpoint_pod(&mut env.rt, &pod, &[&counter, &watcher], &out)
        .await
        .unwrap_or_else(|e| panic!("CheckpointPod: {}", e.message()));
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("pod.json")).unwrap()).unwrap();
    assert_eq!(manifest["namespaces"]["pid"], "pod");
    for name in ["counter", "watcher"] {
        let images = out.join("containers").join(name).join("checkpoint");
        let pidns = std::fs::read_dir(&images)
            .unwrap()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with("pidns-"));
        assert!(pidns, "{name}: the pod's pid namespace dumped as external");
    }
    // Left running; the checkpoint holds the count of its moment.
    let dumped: u64 = {
        let diff = std::fs::read(out.join("containers/counter/rootfs-diff.tar")).unwrap();
        let mut ar = tar::Archive::new(diff.as_slice());
        let mut n = String::new();
        for e in ar.entries().unwrap() {
            let mut e = e.unwrap();
            if e.path().unwrap().as_os_str() == "count" {
                std::io::Read::read_to_string(&mut e, &mut n).unwrap();
            }
        }
        last(&n)
    };
    assert!(dumped >= 5, "{dumped}");
    env.rt
        .stop_pod_sandbox(proto::StopPodSandboxRequest {
            pod_sandbox_id: pod.clone(),
        })
        .await
        .unwrap();
    let configs = vec![sharing(&env, "watcher", ""), sharing(&env, "counter", "")];

    // Into a pod with a pid namespace per container: refused, nothing left.
    let pods_before = pods(&mut env.rt).await.len();
    let own = pod_named(&env, "own");
    let mut own_configs = configs.clone();
    for c in &mut own_configs {
        set_container_pid(c, proto::NamespaceMode::Container);
    }
    let e = restore_pod(&mut env.rt, &out, own, own_configs)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{}", e.message());
    assert!(
        e.message().contains("namespace_options.pid"),
        "{}",
        e.message()
    );
    let pods_after = pods(&mut env.rt).await.len();
    assert_eq!(pods_after, pods_before, "the refused restore left a pod");

    // Into a pod sharing one: the counter counts on, with its pid.
    let mut new_cfg = pod_named(&env, "shared-again");
    set_pod_pid(&mut new_cfg, proto::NamespaceMode::Pod);
    let restored = restore_pod(&mut env.rt, &out, new_cfg, configs)
        .await
        .unwrap_or_else(|e| panic!("RestorePod: {}", e.message()));
    let (counter2, watcher2) = (
        restored_id(&restored, "counter"),
        restored_id(&restored, "watcher"),
    );
    for id in [&counter2, &watcher2] {
        start(&mut env.rt, id)
            .await
            .unwrap_or_else(|e| panic!("StartContainer: {}", e.message()));
    }
    let count = wait_at_least(&mut env.rt, &counter2, "cat /count", dumped + 3).await;
    assert!(last(&count) >= dumped + 3, "{count}");
    assert_eq!(counter_seen(&mut env.rt, &counter2, &watcher2).await, pid);
    // Pid 1 of the new pod's namespace is its own init, not the counter.
    let (_, init) = exec(&mut env.rt, &counter2, "cat /proc/1/cmdline").await;
    assert!(!init.contains("/count"), "{init:?}");
    env.rt
        .stop_pod_sandbox(proto::StopPodSandboxRequest {
            pod_sandbox_id: restored.pod_sandbox_id.clone(),
        })
        .await
        .unwrap();
}
