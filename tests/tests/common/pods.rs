//! CheckpointPod and RestorePod helpers shared by the pod checkpoint tests.

use std::path::Path;
use std::time::{Duration, Instant};

use berth_cri::proto;

use super::{exec_sh as exec, Rt};

/// CheckpointPod of `ids` into `out`.
pub async fn checkpoint_pod(
    rt: &mut Rt,
    pod: &str,
    ids: &[&str],
    out: &Path,
) -> Result<(), tonic::Status> {
    rt.checkpoint_pod(proto::CheckpointPodRequest {
        pod_sandbox_id: pod.into(),
        output_path: out.display().to_string(),
        container_ids: ids.iter().map(|s| s.to_string()).collect(),
        options: Default::default(),
    })
    .await
    .map(drop)
}

/// RestorePod from `dir` with the default runtime handler.
pub async fn restore_pod(
    rt: &mut Rt,
    dir: &Path,
    config: proto::PodSandboxConfig,
    containers: Vec<proto::ContainerConfig>,
) -> Result<proto::RestorePodResponse, tonic::Status> {
    rt.restore_pod(proto::RestorePodRequest {
        checkpoint_path: dir.display().to_string(),
        config: Some(config),
        runtime_handler: String::new(),
        options: Default::default(),
        container_configs: containers,
    })
    .await
    .map(|r| r.into_inner())
}

/// The daemon's pod sandboxes.
pub async fn pods(rt: &mut Rt) -> Vec<proto::PodSandbox> {
    rt.list_pod_sandbox(proto::ListPodSandboxRequest { filter: None })
        .await
        .unwrap()
        .into_inner()
        .items
}

/// The last number in `text`.
pub fn last(text: &str) -> u64 {
    text.lines()
        .rev()
        .find_map(|l| l.trim().parse().ok())
        .unwrap_or(0)
}

/// Waits until `script`'s output in `id` ends with a number ≥ `n`; the output.
pub async fn wait_at_least(rt: &mut Rt, id: &str, script: &str, n: u64) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = exec(rt, id, script).await.1;
        if last(&out) >= n {
            return out;
        }
        assert!(
            Instant::now() < deadline,
            "{id}: {script}: {out:?}, wanted {n}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The new id of the restored container `name`.
pub fn restored_id(r: &proto::RestorePodResponse, name: &str) -> String {
    r.restored_containers
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("{name} not restored: {r:?}"))
        .container_id
        .clone()
}

/// `cp -a from to` (as scp would move a checkpoint between nodes).
pub fn copy_dir(from: &Path, to: &Path) {
    let cp = std::process::Command::new("cp")
        .args(["-a", from.to_str().unwrap(), to.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(cp.success());
}
