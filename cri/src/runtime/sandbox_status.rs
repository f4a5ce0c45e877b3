//! `PodSandboxStatus`, with the statuses of every container of the pod and
//! the time they were taken: kubelet's evented PLEG uses that list instead of
//! listing containers whenever `timestamp` is not 0 (as CRI-O fills it).

use tonic::Status;

use super::sandbox::{NsMode, SandboxRecord};
use super::{container_status, RuntimeServiceImpl};
use crate::proto;
use crate::util::{blocking, now_nanos};

impl RuntimeServiceImpl {
    /// `PodSandboxStatus`.
    pub(super) async fn pod_status(
        &self,
        id: &str,
        verbose: bool,
    ) -> Result<proto::PodSandboxStatusResponse, Status> {
        let rec = self.locked_sandbox(id).await?;
        let mut resp = status(&rec, verbose);
        let pod = rec.id.clone();
        drop(rec);
        resp.containers_statuses = self.pod_containers(&pod).await?;
        // The statuses are as of now, after every container was read.
        resp.timestamp = now_nanos();
        // Verbose: CNI CHECK of the pod's attachment, as an operator's probe,
        // only when configured: it runs the plugins, which takes milliseconds
        // to seconds, and crictl inspectp users expect an instant answer.
        if let (true, Some(cni)) = (verbose, self.cni.clone()) {
            if cni.check_on_status() {
                let id = pod.to_string();
                let check = blocking(move || Ok::<_, super::RuntimeError>(cni.check(&id))).await?;
                let text = match check {
                    Ok(true) => "ok".to_string(),
                    Ok(false) => "not checked (no attachment, or CHECK not in this config)".into(),
                    Err(e) => e.to_string(),
                };
                resp.info.insert("networkCheck".into(), text);
            }
        }
        Ok(resp)
    }

    /// The statuses of every container of pod `pod`, newest first (as
    /// kubelet sorts them), each brought up to date with its monitor.
    pub(super) async fn pod_containers(
        &self,
        pod: &crate::store::ObjectId,
    ) -> Result<Vec<proto::ContainerStatus>, Status> {
        let mut out = Vec::new();
        for entry in self.containers.registry.members(pod) {
            let mut rec = entry.lock().await;
            if rec.removed {
                continue;
            }
            self.containers.refresh_and_save(&mut rec)?;
            out.extend(container_status::status(&rec).status);
        }
        out.sort_by_key(|c| std::cmp::Reverse(c.created_at));
        Ok(out)
    }
}

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
        // containerd's keys where berth has the same thing (`pid`: the pid
        // namespace's init, 0 without one; `config`; `runtimeHandler`;
        // `runtimeSpec`: the pod's namespaces, hostname, cgroup parent and
        // annotations in OCI shape: there is no pause container), and
        // berth's own.
        let pinned = rec.namespaces.as_ref();
        let ns = |kind: &str, path: Option<&std::path::PathBuf>| {
            path.map(|p| serde_json::json!({"type": kind, "path": p}))
        };
        let namespaces: Vec<_> = [
            ns("network", pinned.and_then(|n| n.net.as_ref())),
            ns("ipc", pinned.and_then(|n| n.ipc.as_ref())),
            ns("uts", pinned.and_then(|n| n.uts.as_ref())),
            ns("user", pinned.and_then(|n| n.user.as_ref())),
        ]
        .into_iter()
        .flatten()
        .collect();
        let meta = c.metadata.clone().unwrap_or_default();
        let mut annotations: serde_json::Map<String, serde_json::Value> = c
            .annotations
            .iter()
            .map(|(k, v)| (k.clone(), v.clone().into()))
            .collect();
        for (k, v) in [
            ("io.kubernetes.cri.container-type", "sandbox"),
            ("io.kubernetes.cri.sandbox-id", rec.id.as_str()),
            ("io.kubernetes.cri.sandbox-name", &meta.name),
            ("io.kubernetes.cri.sandbox-namespace", &meta.namespace),
            ("io.kubernetes.cri.sandbox-uid", &meta.uid),
            ("io.kubernetes.cri.sandbox-log-directory", &c.log_directory),
        ] {
            annotations.insert(k.into(), v.into());
        }
        let v = serde_json::json!({
            "id": rec.id,
            "name": rec.name,
            "pid": rec.pod_init.map(|(pid, _)| pid).unwrap_or(0),
            "runtimeHandler": rec.runtime_handler,
            "hostname": rec.hostname,
            "cgroupParent": rec.cgroup_parent,
            "ips": rec.ips,
            "namespaces": rec.namespaces,
            "dir": rec.dir,
            "logDirectory": c.log_directory,
            "config": c,
            "runtimeSpec": {
                "ociVersion": crate::spec::oci::OCI_VERSION,
                "hostname": rec.hostname,
                "annotations": annotations,
                "linux": {
                    "namespaces": namespaces,
                    "cgroupsPath": rec.cgroup_parent,
                    "sysctl": c.linux.as_ref().map(|l| l.sysctls.clone()).unwrap_or_default(),
                },
            },
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
