//! Opening the runtime service: its records loaded, then start-up recovery
//! before anything is served (unrecorded containers and pods taken apart,
//! containers a checkpoint left frozen thawed, networks of pods without a
//! record released, live containers watched again).

use std::path::Path;
use std::sync::Arc;

use super::container::Containers;
use super::error::RuntimeError;
use super::sandbox::Sandboxes;
use super::{
    container_checkpoint, container_create, events, recover, stats, RuntimeServiceConfig,
    RuntimeServiceImpl,
};
use crate::image::ImageStore;

impl RuntimeServiceImpl {
    /// Opens the runtime service's records under `root` (persistent) and its
    /// volatile state under `state`.
    pub fn open(
        root: &Path,
        state: &Path,
        config: RuntimeServiceConfig,
        images: Arc<ImageStore>,
    ) -> Result<RuntimeServiceImpl, RuntimeError> {
        let monitor_exe = match &config.monitor_exe {
            Some(p) => p.clone(),
            None => std::env::current_exe()
                .map_err(|e| RuntimeError::io(Path::new("/proc/self/exe"), e))?,
        };
        let cni = config
            .cni
            .clone()
            .map(|s| crate::cni::Cni::start(s, root.join("cni")));
        let stream = match config.stream_addr {
            Some(addr) => Some(
                crate::stream::StreamServer::start(
                    addr,
                    config.stream_tls.as_ref(),
                    config.stream_limits,
                )
                .map_err(|e| RuntimeError::Internal(format!("streaming server on {addr}: {e}")))?,
            ),
            None => None,
        };
        if let Some(s) = &stream {
            tracing::info!(url = %s.base(), "streaming server (exec, port-forward)");
        }
        // Execs hand the monitor our sealed binary copy, when the monitors
        // run our binary (tests may use another).
        let sealed = std::env::current_exe()
            .is_ok_and(|me| me == monitor_exe)
            .then(berth_core::process::sealed_self)
            .and_then(Result::ok);
        let tasks: Arc<dyn crate::task::Tasks> = Arc::new(crate::task::MonitorTasks::new(
            state.join("runtime"),
            sealed,
        ));
        let service = RuntimeServiceImpl {
            puller: None,
            cdi: Arc::new(crate::cdi::Cdi::new(config.cdi.clone())),
            criu: config
                .criu
                .clone()
                .unwrap_or_else(|| crate::util::find_in_path("criu")),
            config,
            cni,
            stream,
            sandboxes: Arc::new(Sandboxes::open(root, state)?),
            containers: Arc::new(Containers::open(root, state, tasks)?),
            images,
            zygote: Arc::new(crate::monitor::Zygote::new(
                monitor_exe.clone(),
                state.join("containers"),
            )),
            monitor_exe,
            sampler: Arc::new(stats::Sampler::new(
                berth_core::container::DEFAULT_CGROUP_ROOT,
            )),
            events: Arc::new(events::Events::default()),
            cgroup_view: Arc::new(container_create::cgroup_view()),
        };
        let (containers, pods) =
            recover::reap_unrecorded(&service.containers, &service.sandboxes, &service.images);
        if containers + pods > 0 {
            tracing::warn!(
                containers,
                pods,
                "took apart what a daemon crash left unrecorded"
            );
        }
        service.clean_up_networks();
        container_checkpoint::thaw_interrupted(&service.containers);
        let pods: Vec<_> = service
            .sandboxes
            .registry
            .all()
            .iter()
            .filter_map(|e| {
                e.try_lock().ok().map(|r| {
                    (
                        r.dir.clone(),
                        r.namespaces.as_ref().and_then(|n| n.net.clone()),
                    )
                })
            })
            .collect();
        super::pod_checkpoint::clear_restore_fences(&pods);
        // Containers that were live when the daemon stopped are watched again
        // (their exits while the daemon was down are already in the records).
        if tokio::runtime::Handle::try_current().is_ok() {
            for entry in service.containers.registry.all() {
                if let Ok(rec) = entry.try_lock() {
                    if rec.state.is_live() {
                        service.watch_exit(&rec);
                    }
                }
            }
        }
        Ok(service)
    }

    /// In the background: DEL for attachments whose pod record is gone (a
    /// RunPodSandbox that failed and whose DEL failed too, or a crash
    /// between ADD and the record), then CNI 1.1 GC with the pods that
    /// remain.
    fn clean_up_networks(&self) {
        let Some(cni) = self.cni.clone() else {
            return;
        };
        let known: std::collections::HashSet<String> = self
            .sandboxes
            .registry
            .ids()
            .iter()
            .map(ToString::to_string)
            .collect();
        std::thread::spawn(move || {
            for pod in cni.cached_pods() {
                if !known.contains(&pod) {
                    match cni.teardown(&pod) {
                        Ok(()) => {
                            tracing::info!(pod = %pod, "released the network of a pod with no record")
                        }
                        Err(e) => {
                            tracing::warn!(pod = %pod, error = %e, "releasing the network of a pod with no record")
                        }
                    }
                }
            }
            if let Err(e) = cni.gc(&cni.cached_pods()) {
                tracing::warn!(error = %e, "CNI GC");
            }
        });
    }
}
