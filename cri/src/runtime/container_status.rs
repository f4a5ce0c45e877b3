//! `ContainerStatus` and `ListContainers`.

use tonic::Status;

use super::container::ContainerRecord;
use super::{container_checkpoint, RuntimeServiceImpl};
use crate::proto;

impl RuntimeServiceImpl {
    /// `ContainerStatus`. Verbose adds `info.info`, the JSON crictl inspect
    /// users script against, in containerd's shape: `pid`, `sandboxID`,
    /// `config` (the ContainerConfig kubelet sent) and `runtimeSpec` (the
    /// OCI-shaped spec berth applies), plus berth's own `monitorPid`,
    /// `stopSignal` and `dir`.
    pub(super) async fn container_status_rpc(
        &self,
        id: &str,
        verbose: bool,
    ) -> Result<proto::ContainerStatusResponse, Status> {
        let rec = self.locked_container(id).await?.clone();
        let mut resp = status(&rec);
        if verbose {
            let pod = self.pod_meta(&rec.sandbox_id).await;
            let spec = container_checkpoint::read_monitor_spec(&rec.dir)
                .map(|s| {
                    let annotations = container_checkpoint::annotations(&rec.config(), &rec, &pod);
                    crate::spec::oci::runtime_spec(&s.config, &s.process, annotations)
                })
                .unwrap_or(serde_json::Value::Null);
            let v = serde_json::json!({
                "id": rec.id,
                "sandboxID": rec.sandbox_id,
                "pid": rec.init_pid,
                "monitorPid": rec.monitor_pid,
                "stopSignal": rec.stop_signal,
                "dir": rec.dir,
                "config": rec.config(),
                "runtimeSpec": spec,
            });
            resp.info.insert("info".to_string(), v.to_string());
        }
        Ok(resp)
    }
}

/// The status of a container (no verbose `info`).
pub(super) fn status(rec: &ContainerRecord) -> proto::ContainerStatusResponse {
    let c = rec.config();
    proto::ContainerStatusResponse {
        status: Some(proto::ContainerStatus {
            id: rec.id.to_string(),
            metadata: c.metadata,
            state: rec.state.to_cri() as i32,
            created_at: rec.created_at,
            // CRI's "not yet" is 0.
            started_at: rec.started_at.unwrap_or(0),
            finished_at: rec.finished_at.unwrap_or(0),
            exit_code: rec.exit_code,
            image: rec.image_spec(c.image),
            image_ref: if rec.repo_digest.is_empty() {
                rec.image_ref.clone()
            } else {
                rec.repo_digest.clone()
            },
            image_id: rec.image_ref.clone(),
            reason: rec.reason.clone(),
            message: rec.message.clone(),
            labels: c.labels,
            annotations: c.annotations,
            mounts: c.mounts,
            log_path: rec.log_path.clone(),
            stop_signal: crate::spec::signal_to_cri(rec.stop_signal),
            user: (rec.state == super::container::ContainerState::Running)
                .then(|| effective_user(rec.init_pid))
                .flatten(),
            resources: c
                .linux
                .and_then(|l| l.resources)
                .map(|r| proto::ContainerResources {
                    linux: Some(r),
                    windows: None,
                }),
        }),
        info: Default::default(),
    }
}

/// The identity the container's process runs with (uid, gid and
/// supplementary groups as the kernel has them), which kubelet reports in
/// the pod status; from `/proc/<pid>/status` of the running init.
fn effective_user(pid: i32) -> Option<proto::ContainerUser> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_user(&status)
}

/// `Uid:` (real), `Gid:` (real) and `Groups:` of a `/proc/<pid>/status`.
fn parse_user(status: &str) -> Option<proto::ContainerUser> {
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|rest| {
                rest.split_whitespace()
                    .filter_map(|v| v.parse::<i64>().ok())
                    .collect::<Vec<_>>()
            })
    };
    Some(proto::ContainerUser {
        linux: Some(proto::LinuxContainerUser {
            uid: *field("Uid:")?.first()?,
            gid: *field("Gid:")?.first()?,
            supplemental_groups: field("Groups:").unwrap_or_default(),
        }),
    })
}

/// Whether a container passes the filter (pure).
pub(super) fn matches(rec: &ContainerRecord, filter: &proto::ContainerFilter) -> bool {
    if !filter.id.is_empty() && !rec.id.as_str().starts_with(&filter.id) {
        return false;
    }
    if !filter.pod_sandbox_id.is_empty()
        && !rec.sandbox_id.as_str().starts_with(&filter.pod_sandbox_id)
    {
        return false;
    }
    if let Some(s) = &filter.state {
        if rec.state.to_cri() as i32 != s.state {
            return false;
        }
    }
    if !filter.label_selector.is_empty() {
        let labels = rec.config().labels;
        if !crate::util::labels_match(&labels, &filter.label_selector) {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kernels_view_of_the_user() {
        let status = "Name:\tsleep\nUid:\t1000\t1000\t1000\t1000\nGid:\t3000\t3000\t3000\t3000\nGroups:\t3000 4000 \n";
        let u = parse_user(status).unwrap().linux.unwrap();
        assert_eq!((u.uid, u.gid), (1000, 3000));
        assert_eq!(u.supplemental_groups, vec![3000, 4000]);
        let none = parse_user("Name:\tx\nUid:\t0\t0\t0\t0\nGid:\t0\t0\t0\t0\nGroups:\t\n").unwrap();
        assert!(none.linux.unwrap().supplemental_groups.is_empty());
        assert!(parse_user("Name:\tgone\n").is_none());
    }
}
