//! `RunPodSandbox`: validate, reserve the name, pin the pod's namespaces,
//! write its shared files, record it. All-or-nothing: any failure undoes
//! what was done and frees the name.

use std::path::Path;

use berth_core::pin::{self, PinRequest};
use prost::Message;

use super::error::RuntimeError;
use berth_core::config::IdMap;

use super::sandbox::{files, sandbox_name, NsMode, SandboxRecord, SandboxState, Sandboxes, Userns};
use crate::proto;
use crate::store::ObjectId;
use crate::util::blocking;
use tonic::{Request, Response, Status};

/// The pod's /dev/shm size: Docker's and containerd's default.
const SHM_SIZE: u64 = 64 << 20;

/// In a pod's directory: "<pid> <start ticks>" of its pid namespace init,
/// for a start-up that finds the pod without a record.
pub(super) const POD_INIT_FILE: &str = "pod-init";

/// What a valid request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct SandboxPlan {
    pub name: String,
    pub hostname: String,
    pub network: NsMode,
    pub pid: NsMode,
    pub ipc: NsMode,
    pub cgroup_parent: String,
    /// The pod's own user namespace (`hostUsers: false`).
    pub userns: Option<Userns>,
    /// The pod's SELinux MCS level, shared by its containers (empty: no
    /// SELinux on the node).
    pub selinux_level: String,
}

/// Id ranges to check (pure): non-empty, no zero-length or overflowing
/// range, container id 0 mapped (the container's root).
fn id_maps(field: &str, maps: &[proto::IdMapping]) -> Result<Vec<IdMap>, RuntimeError> {
    if maps.is_empty() || maps.len() > 340 {
        return Err(RuntimeError::invalid(field, "must hold 1 to 340 ranges"));
    }
    let mut out = Vec::new();
    for (i, m) in maps.iter().enumerate() {
        let ok = m.length > 0
            && m.container_id.checked_add(m.length).is_some()
            && m.host_id.checked_add(m.length).is_some();
        if !ok {
            return Err(RuntimeError::invalid(
                format!("{field}[{i}]"),
                "must have a length > 0 and stay within 32-bit ids",
            ));
        }
        out.push(IdMap {
            container_id: m.container_id,
            host_id: m.host_id,
            size: m.length,
        });
    }
    if !out.iter().any(|m| m.container_id == 0) {
        return Err(RuntimeError::invalid(field, "must map container id 0"));
    }
    Ok(out)
}

fn mode(value: i32, field: &str, allowed: &[NsMode]) -> Result<NsMode, RuntimeError> {
    let m = match proto::NamespaceMode::try_from(value) {
        Ok(proto::NamespaceMode::Pod) => NsMode::Pod,
        Ok(proto::NamespaceMode::Container) => NsMode::Container,
        Ok(proto::NamespaceMode::Node) => NsMode::Node,
        Ok(proto::NamespaceMode::Target) | Err(_) => {
            return Err(RuntimeError::invalid(
                field,
                format!("mode {value} is not valid for a pod sandbox"),
            ))
        }
    };
    if allowed.contains(&m) {
        Ok(m)
    } else {
        Err(RuntimeError::invalid(
            field,
            format!("{m:?} is not valid for a pod sandbox"),
        ))
    }
}

/// No newline, carriage return or NUL: these values end up in files.
fn one_line(field: &str, v: &str) -> Result<(), RuntimeError> {
    if v.contains(['\n', '\r', '\0']) {
        return Err(RuntimeError::invalid(
            field,
            "must not contain newlines or NUL",
        ));
    }
    Ok(())
}

/// A path kubelet gives (log directory, cgroup parent): absolute, no `..`.
fn clean_abs(field: &str, v: &str) -> Result<(), RuntimeError> {
    one_line(field, v)?;
    let p = Path::new(v);
    if !p.is_absolute()
        || p.components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return Err(RuntimeError::invalid(
            field,
            format!("{v:?} must be an absolute path without .."),
        ));
    }
    Ok(())
}

/// Checks a request and decides what to build (pure).
/// `handler`: the pod's RuntimeClass handler, whose policy it must meet,
/// and whether it is an external OCI runtime.
pub(super) fn plan(
    config: &proto::PodSandboxConfig,
    handler: (&str, &super::handlers::EmbeddedPolicy, bool),
) -> Result<SandboxPlan, RuntimeError> {
    let m = config
        .metadata
        .as_ref()
        .ok_or_else(|| RuntimeError::invalid("config.metadata", "must be set"))?;
    for (field, v) in [
        ("config.metadata.name", &m.name),
        ("config.metadata.namespace", &m.namespace),
        ("config.metadata.uid", &m.uid),
    ] {
        if v.is_empty() {
            return Err(RuntimeError::invalid(field, "must not be empty"));
        }
        // `;` and `=` would break CNI_ARGS, where these go.
        if v.contains(['/', '\0', '\n', ';', '=']) || v.len() > 253 {
            return Err(RuntimeError::invalid(
                field,
                "must be at most 253 characters, without /, ;, = or control characters",
            ));
        }
    }
    let linux = config.linux.clone().unwrap_or_default();
    let opts = linux
        .security_context
        .as_ref()
        .and_then(|s| s.namespace_options.clone())
        .unwrap_or_default();
    let network = mode(
        opts.network,
        "config.linux.security_context.namespace_options.network",
        &[NsMode::Pod, NsMode::Node],
    )?;
    let pid = mode(
        opts.pid,
        "config.linux.security_context.namespace_options.pid",
        &[NsMode::Pod, NsMode::Container, NsMode::Node],
    )?;
    let ipc = mode(
        opts.ipc,
        "config.linux.security_context.namespace_options.ipc",
        &[NsMode::Pod, NsMode::Node],
    )?;
    const USERNS: &str = "config.linux.security_context.namespace_options.userns_options";
    let userns = match opts.userns_options.as_ref() {
        None => None,
        Some(u) => match mode(
            u.mode,
            &format!("{USERNS}.mode"),
            &[NsMode::Pod, NsMode::Node],
        )? {
            NsMode::Node => None,
            // With the host network too (cri-api 1.33
            // user_namespaces_host_network): the pod's user namespace owns
            // its IPC namespace, and its containers stay in the host's
            // network and UTS namespaces.
            _ => Some(Userns {
                uids: id_maps(&format!("{USERNS}.uids"), &u.uids)?,
                gids: id_maps(&format!("{USERNS}.gids"), &u.gids)?,
            }),
        },
    };
    super::handlers::check_pod(
        handler.0,
        handler.1,
        handler.2,
        &[
            ("network", network == NsMode::Node),
            ("pid", pid == NsMode::Node),
            ("ipc", ipc == NsMode::Node),
        ],
        userns.is_some(),
    )?;
    if network == NsMode::Pod {
        crate::cni::caps::bandwidth(&config.annotations)
            .map_err(|b| RuntimeError::invalid(b.field, b.reason))?;
    }
    let hostname = if network == NsMode::Node {
        nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_default()
    } else if config.hostname.is_empty() {
        m.name.chars().take(63).collect()
    } else {
        config.hostname.clone()
    };
    if hostname.len() > 64 || hostname.contains(['/', '\0', '\n', '\r', ' ']) {
        return Err(RuntimeError::invalid(
            "config.hostname",
            "must be at most 64 characters of a host name",
        ));
    }
    if !config.log_directory.is_empty() {
        clean_abs("config.log_directory", &config.log_directory)?;
    }
    if !linux.cgroup_parent.is_empty() {
        if linux.cgroup_parent.ends_with(".slice") && !linux.cgroup_parent.contains('/') {
            one_line("config.linux.cgroup_parent", &linux.cgroup_parent)?;
        } else {
            clean_abs("config.linux.cgroup_parent", &linux.cgroup_parent)?;
        }
    }
    if let Some(dns) = &config.dns_config {
        for (i, v) in dns.servers.iter().enumerate() {
            one_line(&format!("config.dns_config.servers[{i}]"), v)?;
        }
        for (i, v) in dns.searches.iter().enumerate() {
            one_line(&format!("config.dns_config.searches[{i}]"), v)?;
        }
        for (i, v) in dns.options.iter().enumerate() {
            one_line(&format!("config.dns_config.options[{i}]"), v)?;
        }
    }
    for (k, v) in &linux.sysctls {
        let ok_key = !k.is_empty()
            && k.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-/".contains(&b))
            && !k.contains("..");
        if !ok_key {
            return Err(RuntimeError::invalid(
                format!("config.linux.sysctls[{k:?}]"),
                "not a sysctl name",
            ));
        }
        one_line(&format!("config.linux.sysctls[{k:?}]"), v)?;
    }
    Ok(SandboxPlan {
        name: sandbox_name(m),
        hostname,
        network,
        pid,
        ipc,
        cgroup_parent: linux.cgroup_parent.clone(),
        userns,
        selinux_level: String::new(),
    })
}

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
        let req = request.into_inner();
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
                Ok(Response::new(proto::RunPodSandboxResponse {
                    pod_sandbox_id: rec.id.to_string(),
                }))
            }
            Err(e) => {
                self.sandboxes.registry.release_name(&plan.name, &id);
                tracing::warn!(name = %plan.name, error = %e.message(), "RunPodSandbox failed");
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> proto::PodSandboxConfig {
        proto::PodSandboxConfig {
            metadata: Some(proto::PodSandboxMetadata {
                name: "web".into(),
                uid: "u-1".into(),
                namespace: "default".into(),
                attempt: 0,
            }),
            hostname: "web".into(),
            log_directory: "/var/log/pods/default_web_u-1".into(),
            linux: Some(proto::LinuxPodSandboxConfig {
                cgroup_parent: "/kubepods/besteffort/podu-1".into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn err_field(c: &proto::PodSandboxConfig) -> String {
        match plan(c, ("", &Default::default(), false)) {
            Err(RuntimeError::InvalidArgument { field, .. }) => field,
            other => panic!("expected InvalidArgument, got {other:?}"),
        }
    }

    #[test]
    fn a_plain_pod_gets_its_own_namespaces() {
        let p = plan(&base(), ("", &Default::default(), false)).unwrap();
        assert_eq!(p.name, "web_default_u-1_0");
        // Zero values are POD for all three (kubelet sends CONTAINER for pid
        // explicitly unless the pod shares its process namespace).
        assert_eq!(
            (p.network, p.pid, p.ipc),
            (NsMode::Pod, NsMode::Pod, NsMode::Pod)
        );
        assert_eq!(p.hostname, "web");
        assert_eq!(p.cgroup_parent, "/kubepods/besteffort/podu-1");
    }

    #[test]
    fn host_network_uses_the_host_name() {
        let mut c = base();
        c.linux.as_mut().unwrap().security_context = Some(proto::LinuxSandboxSecurityContext {
            namespace_options: Some(proto::NamespaceOption {
                network: proto::NamespaceMode::Node as i32,
                pid: proto::NamespaceMode::Pod as i32,
                ..Default::default()
            }),
            ..Default::default()
        });
        let p = plan(&c, ("", &Default::default(), false)).unwrap();
        assert_eq!((p.network, p.pid), (NsMode::Node, NsMode::Pod));
        assert_eq!(
            p.hostname,
            nix::unistd::gethostname().unwrap().to_string_lossy()
        );
    }

    #[test]
    fn bad_requests_name_the_field() {
        let mut c = base();
        c.metadata = None;
        assert_eq!(err_field(&c), "config.metadata");
        let mut c = base();
        c.metadata.as_mut().unwrap().uid.clear();
        assert_eq!(err_field(&c), "config.metadata.uid");
        let mut c = base();
        c.metadata.as_mut().unwrap().name = "a/b".into();
        assert_eq!(err_field(&c), "config.metadata.name");
        let mut c = base();
        c.log_directory = "/var/log/pods/../../etc".into();
        assert_eq!(err_field(&c), "config.log_directory");
        let mut c = base();
        c.linux.as_mut().unwrap().cgroup_parent = "kubepods/../..".into();
        assert_eq!(err_field(&c), "config.linux.cgroup_parent");
        let mut c = base();
        c.dns_config = Some(proto::DnsConfig {
            servers: vec!["1.1.1.1\nnameserver 6.6.6.6".into()],
            ..Default::default()
        });
        assert_eq!(err_field(&c), "config.dns_config.servers[0]");
        let mut c = base();
        c.hostname = "x".repeat(65);
        assert_eq!(err_field(&c), "config.hostname");
        let mut c = base();
        c.linux
            .as_mut()
            .unwrap()
            .sysctls
            .insert("../../x".into(), "1".into());
        assert!(err_field(&c).starts_with("config.linux.sysctls"));
        let strict = super::super::handlers::EmbeddedPolicy {
            deny_host_namespaces: true,
            ..Default::default()
        };
        let mut c = base();
        c.linux
            .as_mut()
            .unwrap()
            .security_context
            .get_or_insert_with(Default::default)
            .namespace_options = Some(proto::NamespaceOption {
            network: proto::NamespaceMode::Node as i32,
            ..Default::default()
        });
        assert!(plan(&c, ("", &Default::default(), false)).is_ok());
        assert!(matches!(plan(&c, ("strict", &strict, false)),
            Err(RuntimeError::InvalidArgument { field, .. }) if field.ends_with("namespace_options.network")));
    }
}
