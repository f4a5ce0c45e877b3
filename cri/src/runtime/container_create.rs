//! `CreateContainer`: reserve the name, take the image's layers (a lease and
//! a fresh upper dir), translate the request (pure, in [`crate::spec`]),
//! and have a monitor process create the container, which then waits for
//! `StartContainer`. All-or-nothing.

use std::path::{Component, Path, PathBuf};

use berth_core::ContainerId;

use super::container::{ContainerRecord, ContainerState, Containers};
use super::container_checkpoint;
use super::error::RuntimeError;
use super::node_inputs;
use super::sandbox::{LiveSandbox, NsMode, SandboxRecord, SandboxState};
use crate::image::ImageStore;
use crate::monitor::{self, MonitorError, MonitorSpec};
use crate::proto;
use crate::spec;
use crate::store::ObjectId;
use crate::util::blocking;
use crate::util::now_nanos;
use tonic::{Request, Response, Status};

/// Everything CreateContainer needs from the service.
pub(super) struct CreateCtx<'a> {
    pub containers: &'a Containers,
    pub images: &'a ImageStore,
    pub monitor_exe: &'a Path,
    /// Forks the monitors (the exec'd path is the fallback).
    pub zygote: &'a monitor::Zygote,
    /// The node's cgroup layout ([`cgroup_view`], read once at start).
    pub cgroup_view: &'a spec::CgroupView,
    /// kubelet's cgroup driver.
    pub cgroup_driver: super::CgroupDriver,
    /// The `criu` binary (restoring from a checkpoint archive).
    pub criu: &'a Path,
    /// Whether containers may be restored from checkpoints on this node.
    pub restore: bool,
    /// Pulls a checkpoint's missing rootfs image (`None`: it must be here).
    pub puller: Option<&'a crate::image::puller::Puller>,
    /// The node's default pod sysctls.
    pub pod_sysctls: spec::sysctls::PodSysctlDefaults,
    /// The node's security modules.
    pub host_lsm: spec::lsm::HostLsm,
    /// The node's CDI specs.
    pub cdi: &'a crate::cdi::Cdi,
    /// The RuntimeClass handlers (the pod's policy applies to its containers).
    pub handlers: &'a super::handlers::Handlers,
    /// A container checkpoint directory to restore from (RestorePod), in
    /// the layout of an unpacked archive; `None`: the image says.
    pub restore_dir: Option<&'a Path>,
}

/// The log file: `log_directory/log_path`, `log_path` relative and without
/// `..` (it must stay in the pod's log directory).
fn log_path(
    sandbox: &proto::PodSandboxConfig,
    config: &proto::ContainerConfig,
) -> Result<String, RuntimeError> {
    if config.log_path.is_empty() || sandbox.log_directory.is_empty() {
        return Ok(String::new());
    }
    let rel = Path::new(&config.log_path);
    if rel.is_absolute()
        || rel.components().any(|c| !matches!(c, Component::Normal(_)))
        || config.log_path.contains('\0')
    {
        return Err(RuntimeError::invalid(
            "config.log_path",
            format!(
                "{:?} must be a relative path inside the pod's log directory",
                config.log_path
            ),
        ));
    }
    Ok(Path::new(&sandbox.log_directory)
        .join(rel)
        .to_string_lossy()
        .into_owned())
}

/// Creates the container (blocking). The caller holds the sandbox's lock.
pub(super) fn create(
    ctx: &CreateCtx<'_>,
    sandbox: &LiveSandbox,
    mut config: proto::ContainerConfig,
) -> Result<ContainerRecord, RuntimeError> {
    if sandbox.removed || sandbox.state != SandboxState::Ready {
        return Err(RuntimeError::SandboxNotReady {
            id: sandbox.id.to_string(),
            reason: "is not ready",
        });
    }
    // The pod's RuntimeClass handler: what its policy forbids is refused,
    // what it sets is set, before anything else looks at the request.
    let handler = &sandbox.runtime_handler;
    let policy = ctx.handlers.policy(handler)?;
    super::handlers::apply_to_container(handler, &policy, &mut config)?;
    if config.tty && ctx.handlers.shim_runtime(handler).is_some() {
        return Err(RuntimeError::invalid(
            "config.tty",
            format!("runtime handler {handler:?} (a containerd shim) runs no containers with a terminal"),
        ));
    }
    let meta = config
        .metadata
        .clone()
        .ok_or_else(|| RuntimeError::invalid("config.metadata", "must be set"))?;
    if meta.name.is_empty() || meta.name.contains(['/', '\0', '\n']) {
        return Err(RuntimeError::invalid(
            "config.metadata.name",
            "must be a non-empty name without / or control characters",
        ));
    }
    let image = config
        .image
        .as_ref()
        .map(|i| i.image.clone())
        .filter(|i| !i.is_empty())
        .ok_or_else(|| RuntimeError::invalid("config.image.image", "must not be empty"))?;
    let pod_config = sandbox.config();
    let log = log_path(&pod_config, &config)?;
    let name = format!("{}_{}_{}", meta.name, sandbox.name, meta.attempt);
    let id = ObjectId::random().map_err(|e| RuntimeError::io(Path::new("/dev/urandom"), e))?;
    let reg = &ctx.containers.registry;
    reg.reserve(&name, &id)?;
    let result = build(ctx, sandbox, &config, &id, &name, &image, log);
    if result.is_err() {
        reg.release_name(&name, &id);
    }
    result
}

fn build(
    ctx: &CreateCtx<'_>,
    sandbox: &SandboxRecord,
    config: &proto::ContainerConfig,
    id: &ObjectId,
    name: &str,
    image: &str,
    log: String,
) -> Result<ContainerRecord, RuntimeError> {
    let cid = ContainerId::new(id.as_str()).map_err(|e| RuntimeError::Internal(e.to_string()))?;
    let dir = ctx.containers.state_dir.join(id.as_str());
    crate::store::make_dir(&dir, crate::store::modes::PRIVATE)
        .map_err(|e| RuntimeError::io(&dir, e))?;
    let undo = |dir: &PathBuf| {
        let _ = ctx.images.remove_container(&cid);
        let _ = std::fs::remove_dir_all(dir);
    };
    let result = (|| {
        // A checkpoint archive: its rootfs image, changes and CRIU images,
        // unpacked into a work directory that goes when this returns (the
        // restore is done by then, or has failed). CRIU only reads them.
        let from_archive = ctx.restore_dir.is_none() && container_checkpoint::is_archive(image);
        // Or a checkpoint image: its one layer is the unpacked archive; or
        // a pod checkpoint's directory for this container.
        let checkpoint_image = match (ctx.restore_dir, from_archive) {
            (Some(dir), _) => Some(dir.to_path_buf()),
            (None, true) => None,
            (None, false) => container_checkpoint::checkpoint_image_dir(ctx.images, image)?,
        };
        // CRIU recreates the tasks with the credentials in the checkpoint
        // images (checked against the container's security context before
        // they run); a node opts in to trusting that at all.
        if (from_archive || checkpoint_image.is_some()) && !ctx.restore {
            return Err(RuntimeError::RestoreDisabled {
                field: "config.image.image",
                image: image.to_string(),
            });
        }
        if (from_archive || checkpoint_image.is_some())
            && ctx.handlers.external(&sandbox.runtime_handler)
        {
            return Err(RuntimeError::invalid(
                "config.image.image",
                format!(
                    "{image} is a checkpoint; runtime handler {:?} (an external runtime) does not restore checkpoints",
                    sandbox.runtime_handler
                ),
            ));
        }
        let work = from_archive
            .then(|| container_checkpoint::Work::new(&ctx.containers.checkpoint_dir))
            .transpose()?;
        let restore = match (&work, checkpoint_image) {
            (Some(w), _) => Some(container_checkpoint::unpack(Path::new(image), &w.0)?),
            (None, Some(dir)) => Some(container_checkpoint::open(
                &dir,
                &match ctx.restore_dir {
                    Some(d) => format!("{} is not a container checkpoint", d.display()),
                    None => format!("checkpoint image {image} is not usable"),
                },
            )?),
            (None, None) => None,
        };
        let pid = pid_mode(ctx, sandbox, config)?;
        if let Some(u) = &restore {
            u.check_terminal(config.tty)?;
            u.check_pid_namespace(&pid)?;
            u.check_user_namespace(sandbox.userns.as_ref())?;
            if sandbox.userns.is_some() {
                container_checkpoint::check_criu_joins_userns(ctx.criu)?;
            }
        }
        let rootfs_image = restore
            .as_ref()
            .map(|u| container_checkpoint::rootfs_image(ctx.images, ctx.puller, &u.config))
            .transpose()?;
        let image = rootfs_image.as_deref().unwrap_or(image);
        let prepared = ctx.images.prepare_container(image, &cid)?;
        crate::util::crash_point("create:prepared");
        // A user-namespaced init looks up its rootfs mount point, upper and
        // work dirs by path, as the pod's root: only that pod's root group
        // may search the two private dirs on the way.
        if let Some(gid) = sandbox
            .userns
            .as_ref()
            .and_then(|u| host_id_of_root(&u.gids))
        {
            ctx.images.grant_traversal(&cid, gid)?;
            crate::store::grant_traversal(&dir, gid).map_err(|e| RuntimeError::io(&dir, e))?;
        }
        if let Some(u) = &restore {
            container_checkpoint::apply_rootfs_diff(u, &prepared.rootfs.upperdir)?;
        }
        let rootfs_dir = dir.join("rootfs");
        std::fs::create_dir_all(&rootfs_dir).map_err(|e| RuntimeError::io(&rootfs_dir, e))?;
        let ns = sandbox
            .namespaces
            .clone()
            .ok_or_else(|| RuntimeError::SandboxNotReady {
                id: sandbox.id.to_string(),
                reason: "has no namespaces (stopped?)",
            })?;
        // The pod's namespaced sysctls (kubelet's and the node defaults):
        // every container's init writes them into the pod namespaces it
        // joins (idempotent); runtime-core refuses any that would reach the
        // host's.
        let sysctls = spec::sysctls::pod_sysctls(
            sandbox.config().linux.unwrap_or_default().sysctls,
            ctx.pod_sysctls,
            sandbox.network != super::sandbox::NsMode::Node,
            sandbox.userns.is_some(),
        );
        let pod = spec::PodContext {
            hostname: &sandbox.hostname,
            net_ns: ns.net.as_deref(),
            ipc_ns: ns.ipc.as_deref(),
            uts_ns: ns.uts.as_deref(),
            cgroup_view: Some(ctx.cgroup_view.clone()),
            user_ns: match (&ns.user, &sandbox.userns) {
                (Some(path), Some(u)) => Some(spec::PodUserns {
                    path,
                    uids: &u.uids,
                    gids: &u.gids,
                }),
                _ => None,
            },
            pid,
            shm: ns.shm.as_deref(),
            resolv_conf: &sandbox.dir.join("resolv.conf"),
            hosts: &sandbox.dir.join("hosts"),
            hostname_file: &sandbox.dir.join("hostname"),
            cgroup_parent: &sandbox.cgroup_parent,
            cgroup_driver: ctx.cgroup_driver,
            sysctls: &sysctls,
            host_lsm: ctx.host_lsm,
            selinux: ctx.host_lsm.selinux.then(|| spec::selinux::PodSelinux {
                // A pod made before the node had SELinux: the policy's own.
                level: if sandbox.selinux_level.is_empty() {
                    "s0"
                } else {
                    &sandbox.selinux_level
                },
                defaults: spec::selinux::SelinuxDefaults::node(),
            }),
        };
        // Image volumes: the pulled image's layers that have the sub path.
        let image_layers = |r: &str, sub: &Path| -> Result<Vec<PathBuf>, String> {
            let rec = ctx
                .images
                .resolve(r)
                .ok_or_else(|| format!("image {r:?} is not pulled"))?;
            let mut dirs = crate::image::volumes::layer_dirs(&ctx.images.layer_dirs(&rec), sub)
                .map_err(|e| format!("reading the layers of {r}: {e}"))?;
            // The whole image: the layers' own roots are private (0700), so
            // an empty 0755 directory on top gives the volume's `/` its
            // usual mode, as the upper dir does for a container's rootfs.
            if sub.as_os_str().is_empty() && !dirs.is_empty() {
                dirs.insert(0, ctx.images.image_root_dir());
            }
            Ok(dirs)
        };
        let cs = spec::container_spec(
            id.as_str(),
            config,
            &pod,
            &prepared.config,
            prepared.rootfs.clone(),
            &rootfs_dir,
            &node_inputs::NodeDevices,
            &node_inputs::load_localhost_seccomp,
            &image_layers,
        )
        .map_err(RuntimeError::from)?;
        let mut cs = cs;
        super::node_security::cdi_devices(&mut cs, config, ctx.cdi)?;
        super::node_security::apparmor_ready(config, ctx.host_lsm)?;
        super::node_security::relabel_volumes(config, cs.config.mount_label.as_deref())?;
        // The image volumes' images stay while the container does.
        for (n, m) in config.mounts.iter().enumerate() {
            if let Some(img) = m.image.as_ref().filter(|i| !i.image.is_empty()) {
                if let Some(rec) = ctx.images.resolve(&img.image) {
                    ctx.images.lease_volume(&rec.id, &cid, n)?;
                }
            }
        }
        // The image's own volumes: a directory each, with what the image
        // has there (the spec binds them).
        for (dest, source) in spec::image_volumes(&prepared.config, config, &prepared.rootfs)? {
            std::fs::create_dir_all(&source).map_err(|e| RuntimeError::io(&source, e))?;
            crate::image::volumes::copy_up(&prepared.rootfs.lowerdirs, &dest, &source)
                .map_err(|e| RuntimeError::io(&source, e))?;
        }
        if !log.is_empty() {
            if let Some(parent) = Path::new(&log).parent() {
                std::fs::create_dir_all(parent).map_err(|e| RuntimeError::io(parent, e))?;
            }
        }
        let mut process = cs.process;
        if cs.tty {
            // The monitor reads (and logs) the terminal; attached clients
            // resize it.
            process.terminal = Some(berth_core::process::ConsoleSize { rows: 24, cols: 80 });
        }
        let mspec = MonitorSpec {
            version: 1,
            container_id: id.to_string(),
            state_root: ctx.containers.runtime_root.clone(),
            cgroup_root: None,
            config: cs.config,
            process,
            log_path: (!log.is_empty()).then(|| PathBuf::from(&log)),
            max_log_line: None,
            exit_file: dir.join("exit.json"),
            // The zygote's monitors inherit its copy of the init binary.
            sealed_init: None,
            stdin: cs.stdin,
            stdin_once: cs.stdin_once,
            restore: restore.as_ref().map(|u| monitor::RestoreFrom {
                criu: ctx.criu.to_path_buf(),
                images_dir: u.images_dir(),
                work_dir: dir.clone(),
                // Checked above for a user-namespace pod.
                joins_userns: sandbox.userns.is_some().then_some(true),
            }),
            oci: ctx.handlers.oci_runtime(&sandbox.runtime_handler).cloned(),
            shim: ctx.handlers.shim_runtime(&sandbox.runtime_handler).cloned(),
        };
        let spawned = match ctx.zygote.spawn(&dir, &mspec) {
            // The zygote itself cannot run: an exec'd monitor still can.
            Err(e @ (MonitorError::Spawn { .. } | MonitorError::Sys { .. })) => {
                tracing::warn!(error = %crate::util::error_chain(&e), "monitor zygote unusable; exec'ing the monitor");
                let ours = std::env::current_exe().is_ok_and(|me| me == ctx.monitor_exe);
                let mspec = MonitorSpec {
                    sealed_init: ours.then(monitor::SealedInit::of_self).and_then(Result::ok),
                    ..mspec
                };
                monitor::spawn(ctx.monitor_exe, &dir, &mspec)
            }
            other => other,
        }
        .map_err(RuntimeError::Create)?;
        crate::util::crash_point("create:spawned");
        let rec = ContainerRecord {
            version: super::container::RECORD_VERSION,
            id: id.clone(),
            sandbox_id: sandbox.id.clone(),
            name: name.to_string(),
            state: ContainerState::Created,
            created_at: now_nanos(),
            started_at: None,
            finished_at: None,
            exit_code: 0,
            reason: String::new(),
            message: String::new(),
            image: image.to_string(),
            image_ref: prepared.image.id.to_string(),
            repo_digest: prepared.image.repo_digest_for(image),
            log_path: log,
            monitor_pid: spawned.monitor_pid,
            init_pid: spawned.init_pid,
            stop_signal: cs.stop_signal,
            dir: dir.clone(),
            config: prost::Message::encode_to_vec(config),
        };
        if let Err(e) = ctx.containers.registry.insert(rec.clone()) {
            kill_and_destroy(ctx.containers, &rec);
            return Err(e);
        }
        crate::util::crash_point("create:recorded");
        Ok(rec)
    })();
    if result.is_err() {
        undo(&dir);
    }
    result
}

/// The node's cgroup hierarchy (for the container's `/sys/fs/cgroup`).
/// The host id that id 0 of a pod's user namespace maps to.
fn host_id_of_root(maps: &[berth_core::config::IdMap]) -> Option<u32> {
    maps.iter()
        .find(|m| m.container_id == 0 && m.size > 0)
        .map(|m| m.host_id)
}

pub(super) fn cgroup_view() -> spec::CgroupView {
    let root = Path::new(berth_core::container::DEFAULT_CGROUP_ROOT);
    match berth_core::cgroups::detect(root) {
        berth_core::cgroups::Version::V2 => spec::CgroupView::V2,
        berth_core::cgroups::Version::V1 => spec::CgroupView::V1 {
            root: root.to_path_buf(),
            controllers: berth_core::cgroups::v1_controllers(root)
                .into_iter()
                .map(String::from)
                .collect(),
        },
    }
}

/// Which pid namespace the container gets: the host's when the pod is
/// `hostPID`; otherwise per the container's own `namespace_options.pid`
/// (kubelet copies the pod's; absent: the pod's mode) — `POD`: the pod's
/// shared one (its init's), `CONTAINER`: a new one, `TARGET`: that of
/// another running container of the pod (`kubectl debug --target`).
fn pid_mode(
    ctx: &CreateCtx<'_>,
    sandbox: &SandboxRecord,
    config: &proto::ContainerConfig,
) -> Result<spec::PidMode, RuntimeError> {
    const FIELD: &str = "config.linux.security_context.namespace_options";
    if sandbox.pid == NsMode::Node {
        return Ok(spec::PidMode::Node);
    }
    let opts = config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .and_then(|s| s.namespace_options.as_ref());
    let mode = match opts {
        Some(o) => proto::NamespaceMode::try_from(o.pid).map_err(|_| {
            RuntimeError::invalid(
                format!("{FIELD}.pid"),
                format!("{} is not a namespace mode", o.pid),
            )
        })?,
        None if sandbox.pid == NsMode::Pod => proto::NamespaceMode::Pod,
        None => proto::NamespaceMode::Container,
    };
    match mode {
        proto::NamespaceMode::Container => Ok(spec::PidMode::Container),
        proto::NamespaceMode::Node => Err(RuntimeError::invalid(
            format!("{FIELD}.pid"),
            "NODE needs a hostPID pod sandbox",
        )),
        // A pod without a shared namespace has no init to join: the
        // container gets its own, as its pod asked.
        proto::NamespaceMode::Pod if sandbox.pid != NsMode::Pod => Ok(spec::PidMode::Container),
        proto::NamespaceMode::Pod => sandbox
            .pid_ns()
            .map(|p| spec::PidMode::Pod(Some(p)))
            .ok_or_else(|| RuntimeError::SandboxNotReady {
                id: sandbox.id.to_string(),
                reason: "has lost its pid namespace (its init exited)",
            }),
        proto::NamespaceMode::Target => {
            let target = opts.map(|o| o.target_id.as_str()).unwrap_or_default();
            let field = format!("{FIELD}.target_id");
            let entry = ctx.containers.registry.get(target, &field)?;
            let mut rec = entry.blocking_lock();
            ctx.containers.refresh(&mut rec);
            if rec.removed || rec.sandbox_id != sandbox.id {
                return Err(RuntimeError::invalid(
                    field,
                    format!("{target:?} is not a container of this pod"),
                ));
            }
            RuntimeError::require(
                &rec,
                ContainerState::Running,
                "a target container's pid namespace is shared while it runs",
            )?;
            Ok(spec::PidMode::Pod(Some(PathBuf::from(format!(
                "/proc/{}/ns/pid",
                rec.init_pid
            )))))
        }
    }
}

/// Kills the container through its monitor and removes runtime-core's
/// state once the monitor has ended (blocking; used by rollback, Remove
/// and start-up recovery).
pub(super) fn kill_and_destroy(containers: &Containers, rec: &ContainerRecord) {
    kill_and_destroy_id(containers, rec.id.as_str());
}

/// [`kill_and_destroy`] by id: also for a container that has no record
/// (start-up recovery).
pub(super) fn kill_and_destroy_id(containers: &Containers, id: &str) {
    crate::monitor::remove(&containers.state_dir.join(id), &containers.runtime_root, id);
}

impl super::RuntimeServiceImpl {
    pub(in crate::runtime) async fn create_container_rpc(
        &self,
        request: Request<proto::CreateContainerRequest>,
    ) -> Result<Response<proto::CreateContainerResponse>, Status> {
        let req = request.into_inner();
        let config = req
            .config
            .ok_or_else(|| Status::from(RuntimeError::invalid("config", "must be set")))?;
        let rec = self
            .create_container_in(&req.pod_sandbox_id, config, None)
            .await?;
        Ok(Response::new(proto::CreateContainerResponse {
            container_id: rec.id.to_string(),
        }))
    }

    /// Creates a container in pod `pod_id` — restored from the container
    /// checkpoint directory `restore_dir` when one is given (RestorePod) —
    /// watches it and sends its Created event.
    pub(in crate::runtime) async fn create_container_in(
        &self,
        pod_id: &str,
        config: proto::ContainerConfig,
        restore_dir: Option<PathBuf>,
    ) -> Result<ContainerRecord, Status> {
        let entry = self.sandboxes.registry.get(pod_id, "pod_sandbox_id")?;
        let sandbox = entry.lock_owned().await;
        let (containers, images, exe) = (
            self.containers.clone(),
            self.images.clone(),
            self.monitor_exe.clone(),
        );
        let zygote = self.zygote.clone();
        let cgroup_view = self.cgroup_view.clone();
        let cgroup_driver = self.config.cgroup_driver;
        let criu = self.criu.clone();
        let puller = self.puller.clone();
        let pod_sysctls = self.config.pod_sysctls;
        let restore = self.config.restore;
        let cdi = self.cdi.clone();
        let handlers = self.config.handlers.clone();
        let rec = blocking(move || {
            let ctx = CreateCtx {
                containers: &containers,
                images: &images,
                monitor_exe: &exe,
                zygote: &zygote,
                cgroup_view: &cgroup_view,
                cgroup_driver,
                criu: &criu,
                puller: puller.as_deref(),
                pod_sysctls,
                restore,
                host_lsm: spec::lsm::HostLsm::node(),
                cdi: &cdi,
                handlers: &handlers,
                restore_dir: restore_dir.as_deref(),
            };
            create(&ctx, &sandbox, config)
        })
        .await
        .inspect_err(|e| tracing::warn!(error = %e.message(), "CreateContainer failed"))?;
        tracing::info!(id = %rec.id, name = %rec.name, "container created");
        self.watch_exit(&rec);
        self.emit(
            &rec.id,
            &rec.sandbox_id,
            proto::ContainerEventType::ContainerCreatedEvent,
        )
        .await;
        Ok(rec)
    }
}
