//! `ContainerStatus` and `ListContainers`.

use super::container::ContainerRecord;
use crate::proto;

pub(super) fn status(rec: &ContainerRecord, verbose: bool) -> proto::ContainerStatusResponse {
    let c = rec.config();
    let mut info = std::collections::HashMap::new();
    if verbose {
        let v = serde_json::json!({
            "id": rec.id,
            "sandboxID": rec.sandbox_id,
            "pid": rec.init_pid,
            "monitorPid": rec.monitor_pid,
            "stopSignal": rec.stop_signal,
            "dir": rec.dir,
        });
        info.insert("info".to_string(), v.to_string());
    }
    proto::ContainerStatusResponse {
        status: Some(proto::ContainerStatus {
            id: rec.id.to_string(),
            metadata: c.metadata,
            state: rec.state.to_cri() as i32,
            created_at: rec.created_at,
            started_at: rec.started_at,
            finished_at: rec.finished_at,
            exit_code: rec.exit_code,
            image: c.image,
            image_ref: rec.image_ref.clone(),
            reason: rec.reason.clone(),
            message: rec.message.clone(),
            labels: c.labels,
            annotations: c.annotations,
            mounts: c.mounts,
            log_path: rec.log_path.clone(),
            stop_signal: crate::spec::signal_to_cri(rec.stop_signal),
            resources: c
                .linux
                .and_then(|l| l.resources)
                .map(|r| proto::ContainerResources {
                    linux: Some(r),
                    windows: None,
                }),
            ..Default::default()
        }),
        info,
    }
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
