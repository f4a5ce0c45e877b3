//! `RunPodSandbox`: validate, reserve the name, pin the pod's namespaces,
//! write its shared files, record it. All-or-nothing: any failure undoes
//! what was done and frees the name.

use std::path::Path;

use berth_core::config::IdMap;
use berth_core::pin::{self, PinRequest};
use prost::Message;

use super::error::RuntimeError;

use super::sandbox::{files, NsMode, SandboxRecord, SandboxState, Sandboxes, Userns};
use super::sandbox_plan::{plan, SandboxPlan};
use crate::proto;
use crate::store::ObjectId;
use crate::util::blocking;
use tonic::{Request, Response, Status};

/// The pod's /dev/shm size: Docker's and containerd's default.
const SHM_SIZE: u64 = 64 << 20;

/// In a pod's directory: "<pid> <start ticks>" of its pid namespace init,
/// for a start-up that finds the pod without a record.
pub(super) const POD_INIT_FILE: &str = "pod-init";

/// Builds the sandbox (blocking: mounts and namespaces).
pub(super) fn create(
    sandboxes: &Sandboxes,
    id: &ObjectId,
    plan: &SandboxPlan,
    config: &proto::PodSandboxConfig,
    runtime_handler: &str,
    zygote: &crate::monitor::Zygote,
    cni: Option<&crate::cni::Cni>,
) -> Result<SandboxRecord, RuntimeError> {
    // Its resolv.conf, hosts and hostname are bind-mounted into the pod's
    // containers (a user-namespaced init looks them up by path): traversed,
    // not listable. What is secret about a pod is in its record (0600).
    let dir = sandboxes.state_dir().join(id.as_str());
    for d in [sandboxes.state_dir(), dir.as_path()] {
        crate::store::make_dir(d, crate::store::modes::TRAVERSE)
            .map_err(|e| RuntimeError::io(d, e))?;
    }
    let mut pod_init = None;
    // Without a CNI manager (an embedding that wants none) a pod network
    // is loopback only.
    let cni = cni.filter(|_| plan.network == NsMode::Pod);
    let result = (|| {
        files::write(
            &dir,
            &plan.hostname,
            config.dns_config.as_ref(),
            plan.network == NsMode::Node,
        )
        .map_err(|e| RuntimeError::io(&dir, e))?;
        let mut req = PinRequest {
            net: plan.network == NsMode::Pod,
            ipc: plan.ipc == NsMode::Pod,
            uts: plan.network == NsMode::Pod,
            // A pid namespace cannot be pinned: once its pid 1 exits no
            // process can enter it. A pod that shares one gets an init
            // process instead (below).
            pid: false,
            hostname: (plan.network == NsMode::Pod).then(|| plan.hostname.clone()),
            shm_size: (plan.ipc == NsMode::Pod).then_some(SHM_SIZE),
            user: false,
            from_pid: None,
        };
        // With a user namespace, a holder process makes all of them (owned
        // by it); we map it and pin its namespaces, then let it go.
        let mut hold = None;
        if let Some(u) = &plan.userns {
            let own_network = plan.network == NsMode::Pod;
            let (pid, fd) = zygote
                .spawn_userns_holder(&plan.hostname, own_network, &dir.join("pod-ns.log"))
                .map_err(|e| {
                    RuntimeError::Internal(format!(
                        "creating the pod's user namespace: {}",
                        crate::util::error_chain(&e)
                    ))
                })?;
            hold = Some(fd);
            write_id_maps(pid, u)?;
            req = PinRequest {
                net: own_network,
                ipc: true,
                uts: own_network,
                user: true,
                hostname: None,
                from_pid: Some(pid),
                ..req
            };
        }
        let pinned = pin::pin(&dir.join("ns"), &req);
        drop(hold); // the holder exits: the pins keep the namespaces
        let pinned = pinned?;
        crate::util::crash_point("run_pod:pinned");
        let mut ips = Vec::new();
        if let Some(cni) = cni {
            let netns = pinned.net.clone().ok_or_else(|| {
                RuntimeError::Internal("the pod's network namespace was not pinned".into())
            })?;
            ips = cni
                .setup(crate::cni::PodRef {
                    id: id.as_str(),
                    netns: &netns,
                    config,
                    preferred_ips: &plan.preferred_ips,
                })?
                .iter()
                .map(ToString::to_string)
                .collect();
        }
        crate::util::crash_point("run_pod:network");
        if plan.pid == NsMode::Pod {
            let pid = zygote
                .spawn_pod_init(
                    &dir.join("pod-init.log"),
                    pinned.user.as_deref().filter(|_| plan.userns.is_some()),
                )
                .map_err(|e| {
                    RuntimeError::Internal(format!(
                        "starting the pod's pid namespace init: {}",
                        crate::util::error_chain(&e)
                    ))
                })?;
            let start = berth_core::process::start_ticks(pid).ok_or_else(|| {
                RuntimeError::Internal(format!("the pod's pid namespace init {pid} exited at once"))
            })?;
            pod_init = Some((pid, start));
            // Found by a start-up after a crash before the record is.
            let _ = crate::store::write_atomic(
                &dir.join(POD_INIT_FILE),
                format!("{pid} {start}\n").as_bytes(),
            );
            crate::util::crash_point("run_pod:pod_init");
        }
        let rec = SandboxRecord {
            version: 1,
            id: id.clone(),
            name: plan.name.clone(),
            state: SandboxState::Ready,
            created_at: crate::util::now_nanos(),
            runtime_handler: runtime_handler.to_string(),
            namespaces: Some(pinned),
            network: plan.network,
            pid: plan.pid,
            ipc: plan.ipc,
            pod_init,
            userns: plan.userns.clone(),
            selinux_level: plan.selinux_level.clone(),
            ips,
            hostname: plan.hostname.clone(),
            cgroup_parent: plan.cgroup_parent.clone(),
            dir: dir.clone(),
            config: config.encode_to_vec(),
        };
        if let Err(e) = sandboxes.registry.insert(rec.clone()) {
            let _ = pin::unpin(&dir.join("ns"));
            return Err(e);
        }
        crate::util::crash_point("run_pod:recorded");
        Ok(rec)
    })();
    if result.is_err() {
        if let Some(cni) = cni {
            // The one DEL for a failed RunPodSandbox, whether ADD or a later
            // step failed (a no-op when nothing was cached). If it fails too,
            // the cache stays and the next daemon start DELs it.
            if let Err(e) = cni.teardown(id.as_str()) {
                tracing::warn!(pod = %id, error = %e, "DEL after a failed RunPodSandbox");
            }
        }
        if let Some(init) = pod_init {
            super::sandbox_stop::kill_pod_init(init);
        }
        let _ = pin::unpin(&dir.join("ns"));
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}

/// Writes the pod's id maps for the holder `pid` (we are root in its
/// parent user namespace).
fn write_id_maps(pid: i32, u: &Userns) -> Result<(), RuntimeError> {
    let text = |maps: &[IdMap]| {
        maps.iter()
            .map(|m| format!("{} {} {}\n", m.container_id, m.host_id, m.size))
            .collect::<String>()
    };
    for (file, maps) in [("uid_map", &u.uids), ("gid_map", &u.gids)] {
        let path = std::path::PathBuf::from(format!("/proc/{pid}/{file}"));
        std::fs::write(&path, text(maps)).map_err(|e| RuntimeError::io(&path, e))?;
    }
    Ok(())
}

impl super::RuntimeServiceImpl {
    pub(in crate::runtime) async fn run_pod_sandbox_rpc(
        &self,
        request: Request<proto::RunPodSandboxRequest>,
    ) -> Result<Response<proto::RunPodSandboxResponse>, Status> {
        self.run_pod_sandbox(request.into_inner(), Vec::new())
            .await
            .map(Response::new)
    }

    /// RunPodSandbox, asking the network plugins for `preferred_ips` (see
    /// [`crate::cni::PodRef::preferred_ips`]; RestorePod's old IPs).
    pub(in crate::runtime) async fn run_pod_sandbox(
        &self,
        req: proto::RunPodSandboxRequest,
        preferred_ips: Vec<std::net::IpAddr>,
    ) -> Result<proto::RunPodSandboxResponse, Status> {
        let config = req
            .config
            .ok_or_else(|| Status::from(RuntimeError::invalid("config", "must be set")))?;
        let policy = self.config.handlers.policy(&req.runtime_handler)?;
        let external = self
            .config
            .handlers
            .oci_runtime(&req.runtime_handler)
            .is_some();
        let mut plan = plan(&config, (&req.runtime_handler, &policy, external))?;
        plan.preferred_ips = preferred_ips;
        let id = crate::store::ObjectId::random()
            .map_err(|e| RuntimeError::io(Path::new("/dev/urandom"), e))?;
        if crate::spec::lsm::HostLsm::node().selinux {
            let options = config
                .linux
                .as_ref()
                .and_then(|l| l.security_context.as_ref())
                .and_then(|s| s.selinux_options.as_ref());
            plan.selinux_level =
                super::node_security::pod_selinux_level(&self.sandboxes, options, &id)?;
        }
        self.sandboxes.registry.reserve(&plan.name, &id)?;
        let (sandboxes, zygote) = (self.sandboxes.clone(), self.zygote.clone());
        let (id2, plan2, cni) = (id.clone(), plan.clone(), self.cni.clone());
        let result = blocking(move || {
            create(
                &sandboxes,
                &id2,
                &plan2,
                &config,
                &req.runtime_handler,
                &zygote,
                cni.as_deref(),
            )
        })
        .await;
        match result {
            Ok(rec) => {
                tracing::info!(id = %rec.id, name = %rec.name, "pod sandbox ready");
                // Pod events as containerd sends them: the sandbox's id as
                // the container id, created then started.
                for kind in [
                    proto::ContainerEventType::ContainerCreatedEvent,
                    proto::ContainerEventType::ContainerStartedEvent,
                ] {
                    self.emit(&rec.id, &rec.id, kind).await;
                }
                Ok(proto::RunPodSandboxResponse {
                    pod_sandbox_id: rec.id.to_string(),
                })
            }
            Err(e) => {
                self.sandboxes.registry.release_name(&plan.name, &id);
                tracing::warn!(name = %plan.name, error = %e.message(), "RunPodSandbox failed");
                Err(e)
            }
        }
    }
}
