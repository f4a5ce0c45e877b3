//! Containers with a terminal (`tty: true`) through CheckpointContainer and
//! CheckpointPod, end to end: the real daemon and the real CRIU. The
//! restored container gets a new terminal, whose output reaches its CRI log
//! and whose input reaches it through Attach.

mod common;

use std::time::{Duration, Instant};

use berth_cri::proto;
use common::exec_sh as exec;
use common::pods::restored_id;
use common::*;

const RESTORE_ON: &str = "[checkpoint]\nrestore = true\n";

/// A shell on its terminal: prints `n<i>` every 0.2 s and answers each line
/// typed at it with `got-<line>`.
const CONSOLE: &str =
    "(i=0; while :; do i=$((i+1)); echo n$i; sleep 0.2; done) & while read l; do echo got-$l; done";

fn console(env: &Env, name: &str) -> proto::ContainerConfig {
    let mut c = root_sh(env, name, CONSOLE);
    c.tty = true;
    c.stdin = true;
    c
}

/// The highest `n<i>` in the log at `path` (a terminal's lines end in \r).
fn highest(path: &std::path::Path) -> u64 {
    log_records(path.to_str().unwrap())
        .iter()
        .flat_map(|(_, _, t)| {
            t.split(['\r', '\n'])
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .filter_map(|l| l.trim().strip_prefix('n').and_then(|n| n.parse().ok()))
        .max()
        .unwrap_or(0)
}

async fn wait_highest(path: &std::path::Path, n: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let h = highest(path);
        if h >= n {
            return h;
        }
        assert!(
            Instant::now() < deadline,
            "{}: at {h}, wanted {n}",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn create_in(
    rt: &mut Rt,
    pod: &(String, proto::PodSandboxConfig),
    config: proto::ContainerConfig,
) -> Result<String, tonic::Status> {
    rt.create_container(proto::CreateContainerRequest {
        pod_sandbox_id: pod.0.clone(),
        config: Some(config),
        sandbox_config: Some(pod.1.clone()),
    })
    .await
    .map(|r| r.into_inner().container_id)
}

/// The restored init's fds are a terminal, and `/dev/console` is one.
async fn on_a_terminal(rt: &mut Rt, id: &str) {
    let (code, out) = exec(
        rt,
        id,
        "[ -c /proc/1/fd/0 ] && [ -c /proc/1/fd/1 ] && [ -c /dev/console ] && echo yes",
    )
    .await;
    assert_eq!((code, out.as_str()), (0, "yes\n"));
}

/// CheckpointContainer of a container with a terminal, restored into a new
/// pod: it prints on from where it was, on a new terminal that Attach
/// reaches. Restoring it into a container without a terminal is refused and
/// leaves nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_with_a_terminal_checkpoints_and_restores_onto_a_new_one() {
    let test = "a_container_with_a_terminal_checkpoints_and_restores_onto_a_new_one";
    if !criu_works(test) {
        return;
    }
    let Some(mut env) = env_with_config(test, RESTORE_ON).await else {
        return;
    };
    let cfg = console(&env, "console");
    let id = create(&mut env, cfg).await.unwrap();
    start(&mut env.rt, &id).await.unwrap();
    let log = env.dir.path().join("logs/console/0.log");
    wait_highest(&log, 3).await;
    attach_echo(&mut env.rt, true, &id, "before", "got-before").await;
    let archive = env.dir.path().join("console.tar");
    env.rt
        .checkpoint_container(proto::CheckpointContainerRequest {
            container_id: id.clone(),
            location: archive.display().to_string(),
            timeout: 60,
        })
        .await
        .unwrap_or_else(|e| panic!("checkpoint: {}", e.message()));
    // Left running on its terminal.
    attach_echo(&mut env.rt, true, &id, "still", "got-still").await;
    let dumped = highest(&log);
    stop_and_remove(&mut env.rt, &id).await;

    let pod2 = run_pod_named(&mut env, "pod2").await;
    let from_archive = |mut c: proto::ContainerConfig| {
        c.image = Some(proto::ImageSpec {
            image: archive.display().to_string(),
            ..Default::default()
        });
        c
    };
    // No terminal asked for: refused, nothing left.
    let mut plain = from_archive(root_sh(&env, "console", ""));
    plain.stdin = true;
    let err = create_in(&mut env.rt, &pod2, plain).await.unwrap_err();
    assert_eq!(
        err.code(),
        tonic::Code::InvalidArgument,
        "{}",
        err.message()
    );
    assert!(err.message().contains("config.tty"), "{}", err.message());
    let left = env
        .rt
        .list_containers(proto::ListContainersRequest { filter: None })
        .await
        .unwrap()
        .into_inner()
        .containers;
    assert!(left.iter().all(|c| c.pod_sandbox_id != pod2.0), "{left:?}");

    let cfg = from_archive(console(&env, "console"));
    let restored = create_in(&mut env.rt, &pod2, cfg)
        .await
        .unwrap_or_else(|e| panic!("restore: {}", e.message()));
    start(&mut env.rt, &restored).await.unwrap();
    let log2 = env.dir.path().join("pod2/console/0.log");
    let now = wait_highest(&log2, dumped + 3).await;
    assert!(now > dumped, "{now} after {dumped}");
    on_a_terminal(&mut env.rt, &restored).await;
    attach_echo(&mut env.rt, true, &restored, "after", "got-after").await;
    stop_and_remove(&mut env.rt, &restored).await;
}

/// CheckpointPod of a pod with a terminal container beside a plain one;
/// RestorePod on the same node: both run on, the terminal one answers
/// through Attach.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_with_a_terminal_container_checkpoints_and_restores() {
    let test = "a_pod_with_a_terminal_container_checkpoints_and_restores";
    if !criu_works(test) {
        return;
    }
    let Some(mut env) = env_with_config(test, RESTORE_ON).await else {
        return;
    };
    let pod = run_pod_named(&mut env, "ttypod").await;
    let cfg = console(&env, "console");
    let cons = create_in(&mut env.rt, &pod, cfg).await.unwrap();
    start(&mut env.rt, &cons).await.unwrap();
    let plain_cfg = root_sh(
        &env,
        "plain",
        "i=0; while :; do i=$((i+1)); echo $i > /count; sleep 0.1; done",
    );
    let plain = create_in(&mut env.rt, &pod, plain_cfg).await.unwrap();
    start(&mut env.rt, &plain).await.unwrap();
    let log = env.dir.path().join("ttypod/console/0.log");
    wait_highest(&log, 3).await;
    let out = env.dir.path().join("pod-checkpoint");
    std::fs::create_dir(&out).unwrap();
    env.rt
        .checkpoint_pod(proto::CheckpointPodRequest {
            pod_sandbox_id: pod.0.clone(),
            output_path: out.display().to_string(),
            container_ids: vec![cons.clone(), plain.clone()],
            options: Default::default(),
        })
        .await
        .unwrap_or_else(|e| panic!("CheckpointPod: {}", e.message()));
    let terminal: serde_json::Value = serde_json::from_slice(
        &std::fs::read(out.join("containers/console/checkpoint/terminal.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(terminal["console"], true, "{terminal}");
    assert!(!out
        .join("containers/plain/checkpoint/terminal.json")
        .exists());
    env.rt
        .stop_pod_sandbox(proto::StopPodSandboxRequest {
            pod_sandbox_id: pod.0.clone(),
        })
        .await
        .unwrap();
    let dumped = highest(&log);

    let mut new_cfg = pod.1.clone();
    new_cfg.metadata.as_mut().unwrap().uid = "uid-ttypod-2".into();
    new_cfg.log_directory = env.dir.path().join("ttypod-2").display().to_string();
    let restored = env
        .rt
        .restore_pod(proto::RestorePodRequest {
            checkpoint_path: out.display().to_string(),
            config: Some(new_cfg),
            container_configs: vec![console(&env, "console"), root_sh(&env, "plain", "")],
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("RestorePod: {}", e.message()))
        .into_inner();
    let (cons2, plain2) = (
        restored_id(&restored, "console"),
        restored_id(&restored, "plain"),
    );
    for id in [&cons2, &plain2] {
        start(&mut env.rt, id).await.unwrap();
    }
    let log2 = env.dir.path().join("ttypod-2/console/0.log");
    let now = wait_highest(&log2, dumped + 3).await;
    assert!(now > dumped, "{now} after {dumped}");
    on_a_terminal(&mut env.rt, &cons2).await;
    attach_echo(&mut env.rt, true, &cons2, "moved", "got-moved").await;
    let (_, count) = exec(&mut env.rt, &plain2, "cat /count").await;
    assert!(count.trim().parse::<u64>().unwrap() > 0, "{count}");
}
