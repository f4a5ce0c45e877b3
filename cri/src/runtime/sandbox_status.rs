//! `PodSandboxStatus`.

use super::sandbox::{NsMode, SandboxRecord};
use crate::proto;
use crate::util::now_nanos;

fn cri_mode(m: NsMode) -> i32 {
    match m {
        NsMode::Pod => proto::NamespaceMode::Pod as i32,
        NsMode::Container => proto::NamespaceMode::Container as i32,
        NsMode::Node => proto::NamespaceMode::Node as i32,
    }
}

pub(super) fn status(rec: &SandboxRecord, verbose: bool) -> proto::PodSandboxStatusResponse {
    let c = rec.config();
    let mut info = std::collections::HashMap::new();
    if verbose {
        let v = serde_json::json!({
            "id": rec.id,
            "name": rec.name,
            "hostname": rec.hostname,
            "cgroupParent": rec.cgroup_parent,
            "ips": rec.ips,
            "namespaces": rec.namespaces,
            "dir": rec.dir,
            "logDirectory": c.log_directory,
        });
        info.insert("info".to_string(), v.to_string());
    }
    proto::PodSandboxStatusResponse {
        status: Some(proto::PodSandboxStatus {
            id: rec.id.to_string(),
            metadata: c.metadata.clone(),
            state: rec.state.to_cri() as i32,
            created_at: rec.created_at,
            // From the CNI result: the primary IP (IPv4 first) and the rest.
            network: Some(proto::PodSandboxNetworkStatus {
                ip: rec.ips.first().cloned().unwrap_or_default(),
                additional_ips: rec
                    .ips
                    .iter()
                    .skip(1)
                    .map(|ip| proto::PodIp { ip: ip.clone() })
                    .collect(),
            }),
            linux: Some(proto::LinuxPodSandboxStatus {
                namespaces: Some(proto::Namespace {
                    options: Some(proto::NamespaceOption {
                        network: cri_mode(rec.network),
                        pid: cri_mode(rec.pid),
                        ipc: cri_mode(rec.ipc),
                        ..Default::default()
                    }),
                }),
            }),
            labels: c.labels,
            annotations: c.annotations,
            runtime_handler: rec.runtime_handler.clone(),
        }),
        info,
        containers_statuses: Vec::new(),
        timestamp: now_nanos(),
    }
}
