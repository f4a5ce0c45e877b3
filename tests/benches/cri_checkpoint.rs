//! Checkpoint/restore benchmark, measured at the CRI call.
//!
//! `cargo bench -p berth-e2e --bench cri_checkpoint` starts the workspace's
//! `berth serve` on private directories and a loopback registry with a
//! busybox image, then for two containers — `small` (a shell loop) and
//! `200MiB` (a shell holding a 200 MiB string: its RSS) — measures N times:
//! CheckpointContainer (CRIU dump, rootfs diff, archive written), and the
//! restore: CreateContainer from the archive (unpack, CRIU restore) plus
//! StartContainer. Reports median, min and max in ms and the archive size;
//! figures also go to `target/bench-cri-checkpoint.json`. Under
//! `cargo test` it is a smoke run (one round of the small container).
//! Needs root and a working `criu` (scripts/install-criu.sh).

use std::path::Path;
use std::time::{Duration, Instant};

use berth_cri::proto::image_service_client::ImageServiceClient;
use berth_cri::proto::runtime_service_client::RuntimeServiceClient;
use berth_cri::proto::{self, ContainerMetadata, ImageSpec, PodSandboxMetadata};
use berth_e2e::daemon::Daemon;
use berth_e2e::registry::Registry;
use tonic::transport::Channel;

type Rt = RuntimeServiceClient<Channel>;

fn pod_config(name: &str, logs: &Path) -> proto::PodSandboxConfig {
    proto::PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{name}"),
            namespace: "bench".into(),
            attempt: 0,
        }),
        log_directory: logs.join(name).display().to_string(),
        // What kubelet sends for a pod without shareProcessNamespace (a
        // container in a shared pid namespace cannot be checkpointed).
        linux: Some(proto::LinuxPodSandboxConfig {
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

fn container_config(name: &str, image: &str, script: &str) -> proto::ContainerConfig {
    proto::ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(ImageSpec {
            image: image.into(),
            ..Default::default()
        }),
        command: vec!["/bin/sh".into(), "-c".into(), script.into()],
        log_path: format!("{name}.log"),
        ..Default::default()
    }
}

async fn run_pod(rt: &mut Rt, name: &str, logs: &Path) -> (String, proto::PodSandboxConfig) {
    let cfg = pod_config(name, logs);
    let id = rt
        .run_pod_sandbox(proto::RunPodSandboxRequest {
            config: Some(cfg.clone()),
            runtime_handler: String::new(),
        })
        .await
        .expect("RunPodSandbox")
        .into_inner()
        .pod_sandbox_id;
    (id, cfg)
}

async fn create_start(
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
        .expect("CreateContainer")
        .into_inner()
        .container_id;
    rt.start_container(proto::StartContainerRequest {
        container_id: id.clone(),
    })
    .await
    .expect("StartContainer");
    id
}

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

/// Runs [`berth_e2e::daemon::cleanup_dir`] on drop.
struct Cleanup(std::path::PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        berth_e2e::daemon::cleanup_dir(&self.0);
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
    let Some(berth) = berth_e2e::berth_binary("cri_checkpoint") else {
        return;
    };
    let reg = match Registry::start() {
        Ok(r) => r,
        Err(e) => {
            println!("skipped: cri_checkpoint: {e}");
            return;
        }
    };
    berth_e2e::images::busybox_image(&reg.addr(), "bench/busybox", "v1")
        .await
        .unwrap();
    let image = format!("{}/bench/busybox:v1", reg.addr());
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    // Whatever happens (a failed expectation panics), the daemon's
    // monitors, mounts and cgroups go: dropped after the daemon.
    let _cleanup = Cleanup(dir.path().join("berth"));
    let d = Daemon::start(&berth, &dir.path().join("berth"), &[]);
    let ch = d.channel().await;
    ImageServiceClient::new(ch.clone())
        .pull_image(proto::PullImageRequest {
            image: Some(ImageSpec {
                image: image.clone(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect("PullImage");
    let mut rt = RuntimeServiceClient::new(ch);
    let (pod_a, pod_a_cfg) = run_pod(&mut rt, "a", &logs).await;
    let (pod_b, pod_b_cfg) = run_pod(&mut rt, "b", &logs).await;

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
        "{:<8} {:>5} {:>26} {:>26} {:>10}",
        "case", "runs", "checkpoint ms (med/min/max)", "restore ms (med/min/max)", "archive"
    );
    for (name, script, runs) in cases {
        let (mut dump, mut restore, mut size) = (Vec::new(), Vec::new(), 0u64);
        for i in 0..runs {
            let cname = format!("{name}-{i}");
            let id = create_start(
                &mut rt,
                &pod_a,
                &pod_a_cfg,
                container_config(&cname, &image, script),
            )
            .await;
            wait_ready(&logs.join("a").join(format!("{cname}.log"))).await;
            let archive = dir.path().join(format!("{cname}.tar"));
            let t0 = Instant::now();
            rt.checkpoint_container(proto::CheckpointContainerRequest {
                container_id: id.clone(),
                location: archive.display().to_string(),
                timeout: 0,
            })
            .await
            .expect("CheckpointContainer");
            dump.push(ms(t0.elapsed()));
            size = std::fs::metadata(&archive).map(|m| m.len()).unwrap_or(0);
            remove(&mut rt, &id).await;

            let mut from = container_config(&cname, &archive.display().to_string(), "");
            from.command.clear();
            let t0 = Instant::now();
            let restored = create_start(&mut rt, &pod_b, &pod_b_cfg, from).await;
            restore.push(ms(t0.elapsed()));
            remove(&mut rt, &restored).await;
            let _ = std::fs::remove_file(&archive);
        }
        let (dm, dl, dh) = stats(dump);
        let (rm, rl, rh) = stats(restore);
        println!(
            "{name:<8} {runs:>5} {:>26} {:>26} {:>9.1}M",
            format!("{dm:.1} / {dl:.1} / {dh:.1}"),
            format!("{rm:.1} / {rl:.1} / {rh:.1}"),
            size as f64 / (1024.0 * 1024.0)
        );
        out.insert(
            name.into(),
            serde_json::json!({
                "runs": runs,
                "checkpoint_ms": {"median": dm, "min": dl, "max": dh},
                "restore_ms": {"median": rm, "min": rl, "max": rh},
                "archive_bytes": size,
            }),
        );
    }
    for pod in [pod_a, pod_b] {
        let _ = rt
            .stop_pod_sandbox(proto::StopPodSandboxRequest {
                pod_sandbox_id: pod.clone(),
            })
            .await;
        let _ = rt
            .remove_pod_sandbox(proto::RemovePodSandboxRequest {
                pod_sandbox_id: pod,
            })
            .await;
    }
    drop(d);
    if full {
        let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target");
        let _ = std::fs::write(
            target.join("bench-cri-checkpoint.json"),
            serde_json::to_string_pretty(&out).unwrap(),
        );
    }
}
