//! Checkpoint/restore benchmark, measured at the CRI call.
//!
//! `cargo bench -p berth-e2e --bench cri_checkpoint` starts the workspace's
//! `berth serve` with a loopback registry and a busybox image (the shared
//! environment of the CRI tests, `tests/tests/common`), then for two
//! containers — `small` (a shell loop) and `200MiB` (a shell holding a
//! 200 MiB string: its RSS) — measures N times: CheckpointContainer (CRIU
//! dump, rootfs diff, archive written), and the restore into a second pod:
//! CreateContainer from the archive (unpack, CRIU restore) plus
//! StartContainer. Reports median, min and max in ms and the archive size;
//! figures also go to `target/bench-cri-checkpoint.json`. Then the same for
//! whole pods of three containers (`pod-small`: three shell loops;
//! `pod-tcp`: a server, a client connected to it over the pod's loopback
//! and a loop, restored behind the pod's network fence; `pod-200MiB`: two
//! loops and the 200 MiB shell; `pod-userns`: three loops in a pod with its
//! own user namespace, restored into one with the same maps): CheckpointPod (all three
//! frozen, dumped, thawed) and RestorePod plus the three StartContainers,
//! with the checkpoint directory's size. Under
//! `cargo test` it is a smoke run (one round of the small container).
//! Needs root and a working `criu` (scripts/install-criu.sh).

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use berth_cri::proto;
use common::*;

async fn remove(rt: &mut Rt, id: &str) {
    rt.stop_container(proto::StopContainerRequest {
        container_id: id.into(),
        timeout: 0,
    })
    .await
    .expect("StopContainer");
    rt.remove_container(proto::RemoveContainerRequest {
        container_id: id.into(),
    })
    .await
    .expect("RemoveContainer");
}

/// Waits until the container's log says `ready`.
async fn wait_ready(log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !std::fs::read_to_string(log).is_ok_and(|s| s.contains("ready")) {
        assert!(
            Instant::now() < deadline,
            "{} never said ready",
            log.display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn stats(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    if !nix::unistd::geteuid().is_root() {
        println!("skipped: cri_checkpoint: needs root");
        return;
    }
    if !std::process::Command::new("criu")
        .arg("check")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        println!("skipped: cri_checkpoint: no working criu (scripts/install-criu.sh)");
        return;
    }
    // The daemon, its pod "pod" (A) and a second pod (B); everything is
    // cleaned up when `env` goes, even after a failed expectation.
    let Some(mut env) = env_with_config("cri_checkpoint", "[checkpoint]\nrestore = true\n").await
    else {
        return;
    };
    let dir = env.dir.path().to_path_buf();
    let (pod_a, pod_a_cfg) = (env.pod.clone(), pod_config(&dir));
    let mut pod_b_cfg = pod_config(&dir);
    pod_b_cfg.metadata.as_mut().unwrap().name = "b".into();
    pod_b_cfg.log_directory = dir.join("logs-b").display().to_string();
    let pod_b = run_pod(&mut env.rt, pod_b_cfg.clone()).await;

    let cases: Vec<(&str, &str, usize)> = {
        let small = "echo ready; i=0; while :; do i=$((i+1)); sleep 0.1; done";
        let big = "x=$(busybox head -c 209715200 /dev/zero | busybox tr '\\0' a); \
                   echo ready; while :; do sleep 1; done";
        if full {
            vec![("small", small, 10), ("200MiB", big, 5)]
        } else {
            vec![("small", small, 1)]
        }
    };
    let mut out = serde_json::Map::new();
    println!(
        "{:<10} {:>3} {:>26} {:>26} {:>10}",
        "case", "runs", "checkpoint ms (med/min/max)", "restore ms (med/min/max)", "archive"
    );
    for (name, script, runs) in cases {
        let (mut dump, mut restore, mut size) = (Vec::new(), Vec::new(), 0u64);
        for i in 0..runs {
            let cname = format!("{name}-{i}");
            let mut cfg = container(&env, &cname, &["/bin/sh", "-c", script], &[]);
            // As root: CRIU reads a task's rlimits with prlimit(2), which for
            // another user's task needs CAP_SYS_RESOURCE — which root lacks
            // on the machine this was written on.
            cfg.linux = Some(proto::LinuxContainerConfig {
                security_context: Some(proto::LinuxContainerSecurityContext {
                    run_as_user: Some(proto::Int64Value { value: 0 }),
                    ..Default::default()
                }),
                ..Default::default()
            });
            let id = create_start(&mut env.rt, &pod_a, &pod_a_cfg, cfg).await;
            wait_ready(&dir.join("logs").join(&cname).join("0.log")).await;
            let archive = dir.join(format!("{cname}.tar"));
            let t0 = Instant::now();
            env.rt
                .checkpoint_container(proto::CheckpointContainerRequest {
                    container_id: id.clone(),
                    location: archive.display().to_string(),
                    timeout: 0,
                })
                .await
                .expect("CheckpointContainer");
            dump.push(ms(t0.elapsed()));
            size = std::fs::metadata(&archive).map(|m| m.len()).unwrap_or(0);
            remove(&mut env.rt, &id).await;

            let mut from = container(&env, &cname, &[], &[]);
            from.image.as_mut().unwrap().image = archive.display().to_string();
            let t0 = Instant::now();
            let restored = create_start(&mut env.rt, &pod_b, &pod_b_cfg, from).await;
            restore.push(ms(t0.elapsed()));
            remove(&mut env.rt, &restored).await;
            let _ = std::fs::remove_file(&archive);
        }
        out.insert(name.into(), report(name, runs, dump, restore, size));
    }
    pod_cases(&mut env, full, &mut out).await;
    if full {
        let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target");
        let _ = std::fs::write(
            target.join("bench-cri-checkpoint.json"),
            serde_json::to_string_pretty(&out).unwrap(),
        );
    }
}

/// Prints a case's row (median / min / max of each timing, the size) and
/// returns its JSON: `checkpoint_ms` and `restore_ms` (for pods: CheckpointPod,
/// and RestorePod plus the StartContainers), `bytes` (archive or directory).
fn report(
    name: &str,
    runs: usize,
    dump: Vec<f64>,
    restore: Vec<f64>,
    size: u64,
) -> serde_json::Value {
    let (dm, dl, dh) = stats(dump);
    let (rm, rl, rh) = stats(restore);
    println!(
        "{name:<10} {runs:>3} {:>26} {:>26} {:>9.1}M",
        format!("{dm:.1} / {dl:.1} / {dh:.1}"),
        format!("{rm:.1} / {rl:.1} / {rh:.1}"),
        size as f64 / (1024.0 * 1024.0)
    );
    serde_json::json!({
        "runs": runs,
        "checkpoint_ms": {"median": dm, "min": dl, "max": dh},
        "restore_ms": {"median": rm, "min": rl, "max": rh},
        "bytes": size,
    })
}

/// The size of everything under `dir`, in bytes.
fn du(dir: &Path) -> u64 {
    let mut total = 0;
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let Ok(m) = e.metadata() else { continue };
        total += if m.is_dir() { du(&e.path()) } else { m.len() };
    }
    total
}

/// Pods of three containers: CheckpointPod, and RestorePod + StartContainer
/// of each.
async fn pod_cases(
    env: &mut Env,
    full: bool,
    out: &mut serde_json::Map<String, serde_json::Value>,
) {
    let small = "echo ready; i=0; while :; do i=$((i+1)); sleep 0.1; done";
    let big = "x=$(busybox head -c 209715200 /dev/zero | busybox tr '\\0' a); \
               echo ready; while :; do sleep 1; done";
    // A TCP connection between two of the containers: RestorePod fences
    // the pod's network while it restores them.
    let server = "echo ready; busybox tail -f /dev/null | nc -l -p 7000 > /recv";
    let client = "sleep 0.3; echo ready; i=0; while :; do i=$((i+1)); echo $i; sleep 0.1; \
                  done | nc 127.0.0.1 7000";
    let cases: Vec<(&str, [&str; 3], usize)> = if full {
        vec![
            ("pod-small", [small; 3], 10),
            ("pod-tcp", [server, client, small], 10),
            ("pod-200MiB", [small, small, big], 5),
            ("pod-userns", [small; 3], 10),
        ]
    } else {
        vec![("pod-small", [small; 3], 1)]
    };
    let dir = env.dir.path().to_path_buf();
    let as_root = |mut cfg: proto::ContainerConfig| {
        cfg.linux = Some(proto::LinuxContainerConfig {
            security_context: Some(proto::LinuxContainerSecurityContext {
                run_as_user: Some(proto::Int64Value { value: 0 }),
                ..Default::default()
            }),
            ..Default::default()
        });
        cfg
    };
    for (name, scripts, runs) in cases {
        let (mut dump, mut restore, mut size) = (Vec::new(), Vec::new(), 0u64);
        for i in 0..runs {
            let base = if name == "pod-userns" {
                userns_pod(env, "")
            } else {
                pod_config(&dir)
            };
            let pod_cfg = |tag: &str| {
                let mut c = base.clone();
                let m = c.metadata.as_mut().unwrap();
                m.name = format!("{name}-{tag}-{i}");
                m.uid = format!("{name}-{tag}-{i}");
                c.log_directory = dir.join(&m.name).display().to_string();
                c
            };
            let orig_cfg = pod_cfg("orig");
            let pod = run_pod(&mut env.rt, orig_cfg.clone()).await;
            let mut ids = Vec::new();
            let mut configs = Vec::new();
            for (n, script) in scripts.iter().enumerate() {
                let cname = format!("c{n}");
                let cfg = as_root(container(env, &cname, &["/bin/sh", "-c", script], &[]));
                ids.push(create_start(&mut env.rt, &pod, &orig_cfg, cfg).await);
                configs.push(as_root(container(env, &cname, &[], &[])));
                wait_ready(
                    &Path::new(&orig_cfg.log_directory)
                        .join(&cname)
                        .join("0.log"),
                )
                .await;
            }
            let target = dir.join(format!("{name}-{i}.ckpt"));
            std::fs::create_dir(&target).unwrap();
            let t0 = Instant::now();
            env.rt
                .checkpoint_pod(proto::CheckpointPodRequest {
                    pod_sandbox_id: pod.clone(),
                    output_path: target.display().to_string(),
                    container_ids: ids.clone(),
                    options: Default::default(),
                })
                .await
                .expect("CheckpointPod");
            dump.push(ms(t0.elapsed()));
            size = du(&target);
            stop_remove_pod(&mut env.rt, &pod).await;

            let t0 = Instant::now();
            let restored = env
                .rt
                .restore_pod(proto::RestorePodRequest {
                    checkpoint_path: target.display().to_string(),
                    config: Some(pod_cfg("restored")),
                    container_configs: configs,
                    ..Default::default()
                })
                .await
                .expect("RestorePod")
                .into_inner();
            for c in &restored.restored_containers {
                start(&mut env.rt, &c.container_id)
                    .await
                    .expect("StartContainer");
            }
            restore.push(ms(t0.elapsed()));
            stop_remove_pod(&mut env.rt, &restored.pod_sandbox_id).await;
            let _ = std::fs::remove_dir_all(&target);
        }
        out.insert(name.into(), report(name, runs, dump, restore, size));
    }
}

async fn stop_remove_pod(rt: &mut Rt, id: &str) {
    rt.stop_pod_sandbox(proto::StopPodSandboxRequest {
        pod_sandbox_id: id.into(),
    })
    .await
    .expect("StopPodSandbox");
    rt.remove_pod_sandbox(proto::RemovePodSandboxRequest {
        pod_sandbox_id: id.into(),
    })
    .await
    .expect("RemovePodSandbox");
}
