//! CreateContainer → berth-core: the pure translation of a CRI
//! `ContainerConfig` (plus the pod it runs in and its image's config) into a
//! runtime-core [`Config`] and the init's [`ProcessSpec`].
//!
//! No I/O happens here: what would need the host (the type and numbers of a
//! device node, a `Localhost` seccomp profile file) is asked of the caller
//! through the `host_device` and `seccomp_profile` functions it passes, so
//! tests pass fakes. Each concern has its own file:
//!
//! - `command`: argv (command/args/Entrypoint/Cmd), env, working directory;
//! - `user`: uid/gid/username and supplementary groups;
//! - `namespaces`: which pod namespaces are joined or created;
//! - `mounts`: CRI mounts, the pod's `/etc/{hosts,hostname,resolv.conf}` and `/dev/shm`;
//! - `devices`: CRI devices;
//! - `cdi`: the CDI devices a request names, and their resolved edits;
//! - `security`: capabilities, privileged, masked/read-only paths, no_new_privs;
//! - `seccomp`: the seccomp profile;
//! - `resources`: the cgroup path and limits, oom_score_adj;
//! - `signal`: the stop signal.
//!
//! The rules follow Kubernetes' CRI comments (`proto/api.proto`) and, where
//! those are silent, containerd's CRI plugin (`internal/cri/server/
//! container_create.go`, `internal/cri/opts/spec_opts.go`,
//! `spec_linux_opts.go`). AppArmor and SELinux requests are checked
//! against the node's security modules (`lsm`); CDI devices need the
//! node's CDI specs, so the caller resolves them and applies them to the
//! result with [`cdi::apply`].

pub mod cdi;
mod command;
mod devices;
pub mod lsm;
mod mounts;
mod namespaces;
pub mod oci;
mod resources;
mod seccomp;
mod security;
pub mod selinux;
mod signal;
pub mod sysctls;
mod user;

pub use mounts::image_volumes;
pub(crate) use resources::{
    limits as cgroup_limits, oom_score_adj as check_oom_score_adj, parent_path,
};
pub use signal::to_cri as signal_to_cri;

#[cfg(test)]
mod fixture;

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use berth_core::config::{DeviceKind, OverlayRootfs, SeccompProfile};
use berth_core::process::ProcessSpec;
use berth_core::Config;

use crate::image::rootfs::ImageConfig;
use crate::proto;

/// How a container gets its pid namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PidMode {
    /// A new pid namespace of its own (CRI `CONTAINER`, Kubernetes' default).
    Container,
    /// The pod's shared one: join the namespace file given (`/proc/<pid>/ns/pid`
    /// of a process already in it, or the target container's for CRI
    /// `TARGET`), or, when `None`, create it (the pod's first container).
    Pod(Option<PathBuf>),
    /// The host's (`hostPID: true`): no pid namespace.
    Node,
}

/// What a container takes from its pod sandbox.
#[derive(Debug, Clone)]
pub struct PodContext<'a> {
    /// The pod's hostname: already set in the pinned UTS namespace, and given
    /// to the container as `HOSTNAME` (as containerd does).
    pub hostname: &'a str,
    /// The pod's pinned network namespace to join; `None`: the host's
    /// (`hostNetwork`), and no new one is created either.
    pub net_ns: Option<&'a Path>,
    /// The pod's pinned IPC namespace to join; `None`: the host's (`hostIPC`).
    pub ipc_ns: Option<&'a Path>,
    /// The pod's pinned UTS namespace to join; `None`: the host's.
    pub uts_ns: Option<&'a Path>,
    /// What the node's cgroup hierarchy looks like, for the container's
    /// own view of its cgroup at `/sys/fs/cgroup` (`None`: no view).
    pub cgroup_view: Option<CgroupView>,
    /// The pod's pinned user namespace to join, with its uid and gid maps
    /// (`hostUsers: false`); `None`: the host's. The image's layers are
    /// then idmapped into it.
    pub user_ns: Option<PodUserns<'a>>,
    /// The pid namespace.
    pub pid: PidMode,
    /// The pod's `/dev/shm` tmpfs, bound on the container's `/dev/shm`.
    /// `None` with `ipc_ns` `None` (`hostIPC`): the host's `/dev/shm` is
    /// bound, as containerd does; `None` otherwise: a private tmpfs.
    pub shm: Option<&'a Path>,
    /// The pod's resolv.conf, bound on `/etc/resolv.conf`.
    pub resolv_conf: &'a Path,
    /// The pod's hosts file, bound on `/etc/hosts`.
    pub hosts: &'a Path,
    /// The pod's hostname file, bound on `/etc/hostname`.
    pub hostname_file: &'a Path,
    /// kubelet's `cgroup_parent`, verbatim (a cgroupfs path, or a systemd
    /// slice name such as `kubepods-besteffort-pod1.slice`).
    pub cgroup_parent: &'a str,
    /// The cgroup driver (kubelet's `cgroupDriver`, from berth's config).
    pub cgroup_driver: berth_core::cgroups::Driver,
    /// The pod's namespaced sysctls, applied by every container's init into
    /// the namespaces it joins.
    pub sysctls: &'a BTreeMap<String, String>,
    /// The security modules this node has (what AppArmor and SELinux
    /// requests are checked against).
    pub host_lsm: lsm::HostLsm,
    /// The pod's SELinux level and the node's defaults; `None`: SELinux is
    /// not enabled here.
    pub selinux: Option<selinux::PodSelinux<'a>>,
}

/// The node's cgroup hierarchy, as [`PodContext::cgroup_view`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CgroupView {
    /// v1: these controllers are mounted under `root`.
    V1 {
        /// The cgroup root (`/sys/fs/cgroup`).
        root: PathBuf,
        /// Mounted controllers berth uses.
        controllers: Vec<String>,
    },
    /// v2: the unified hierarchy.
    V2,
}

/// A pod's user namespace, as [`PodContext::user_ns`].
#[derive(Debug, Clone, Copy)]
pub struct PodUserns<'a> {
    /// The pinned namespace file.
    pub path: &'a Path,
    /// Its uid ranges.
    pub uids: &'a [berth_core::config::IdMap],
    /// Its gid ranges.
    pub gids: &'a [berth_core::config::IdMap],
}

/// A host device node, as the caller's `host_device` lookup reports it
/// (from `stat(2)` of the CRI `host_path`, symlinks followed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostDevice {
    /// Character or block.
    pub kind: DeviceKind,
    /// Major number.
    pub major: u64,
    /// Minor number.
    pub minor: u64,
    /// Permission bits of the node.
    pub file_mode: u32,
    /// Owner uid of the node.
    pub uid: u32,
    /// Owner gid of the node.
    pub gid: u32,
}

/// The host's device nodes, as the caller finds them (I/O kept out of the
/// translation).
pub trait HostDevices {
    /// The device node at `path` (`stat(2)`, symlinks followed); `None`: no
    /// such device node.
    fn get(&self, path: &Path) -> Option<HostDevice>;
    /// Every device node under the host's `/dev` that a privileged container
    /// gets, with its path (runc's `HostDevices`: not `/dev/pts`, `/dev/shm`,
    /// `/dev/mqueue`, `/dev/fd` or `/dev/console`, no symlinks).
    fn all(&self) -> Vec<(PathBuf, HostDevice)>;
}

/// What [`container_spec`] takes for the host's device nodes.
pub type HostDeviceLookup<'a> = &'a dyn HostDevices;

/// The caller's loader of a `Localhost` seccomp profile: the reference is
/// the CRI `localhost_ref` (an absolute path on the node, without the
/// `localhost/` prefix); the error is a message for the user.
pub type SeccompLoader<'a> = &'a dyn Fn(&str) -> Result<SeccompProfile, String>;

/// The caller's lookup for an image volume (CRI `Mount.image`): given the
/// image and a relative sub path, the pulled image's unpacked layer
/// directories that have that path as a directory (reached without a
/// symlink), top first, as `<layer>/<sub>`; the error is a message for the
/// user (not pulled).
pub type ImageLayersLookup<'a> = &'a dyn Fn(&str, &Path) -> Result<Vec<PathBuf>, String>;

/// The translated container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerSpec {
    /// What `Container::create` gets.
    pub config: Config,
    /// The container's init process. `terminal` is left `None`: the caller
    /// decides how a CRI tty is wired (see [`ContainerSpec::tty`]).
    pub process: ProcessSpec,
    /// The signal StopContainer sends first (the image's `StopSignal`,
    /// default `SIGTERM`).
    pub stop_signal: i32,
    /// CRI `tty`: the init wants a pseudo-terminal.
    pub tty: bool,
    /// CRI `stdin`: keep the init's stdin open for attach.
    pub stdin: bool,
    /// CRI `stdin_once`: close stdin after the first attach ends.
    pub stdin_once: bool,
}

/// A request that cannot be translated.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// A field is malformed or contradicts another; `field` is its path in
    /// the request (`config.mounts[2].container_path`), or `image.config.*`
    /// for the image's config. gRPC `InvalidArgument`.
    #[error("{field}: {reason}")]
    InvalidArgument {
        /// The field.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A well-formed request for something berth does not do (yet).
    /// gRPC `Unimplemented` (or `InvalidArgument`).
    #[error("{field}: not supported: {reason}")]
    Unsupported {
        /// The field.
        field: String,
        /// What is not supported.
        reason: String,
    },
    /// The `Localhost` seccomp profile could not be loaded.
    #[error("{field}: seccomp profile {reference:?}: {reason}")]
    SeccompProfile {
        /// The field that named it.
        field: String,
        /// The `localhost_ref`.
        reference: String,
        /// The loader's message.
        reason: String,
    },
}

pub(crate) fn invalid(field: impl Into<String>, reason: impl Into<String>) -> SpecError {
    SpecError::InvalidArgument {
        field: field.into(),
        reason: reason.into(),
    }
}

pub(crate) fn unsupported(field: impl Into<String>, reason: impl Into<String>) -> SpecError {
    SpecError::Unsupported {
        field: field.into(),
        reason: reason.into(),
    }
}

/// `p` as a clean absolute path (`.`, repeated and trailing `/` removed),
/// refusing relative paths, `..` components and NUL bytes.
pub(crate) fn clean_absolute(field: &str, p: &str) -> Result<PathBuf, SpecError> {
    if p.contains('\0') {
        return Err(invalid(field, "must not contain a NUL byte"));
    }
    let path = Path::new(p);
    if !path.is_absolute() {
        return Err(invalid(field, format!("{p:?} must be an absolute path")));
    }
    let mut out = PathBuf::from("/");
    for c in path.components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(n) => out.push(n),
            Component::ParentDir | Component::Prefix(_) => {
                return Err(invalid(field, format!("{p:?} must not contain '..'")))
            }
        }
    }
    Ok(out)
}

/// Translates a CRI CreateContainer request into a runtime-core config and
/// init process.
///
/// - `id`: the container id (the leaf of its cgroup path);
/// - `req`: the request's `config`;
/// - `pod`: what the container takes from its pod;
/// - `image`: the image's config (Entrypoint, Cmd, Env, ...);
/// - `rootfs`: the overlay of the image's layers, mounted by the init at
///   `rootfs_dir` (which becomes [`Config::rootfs`]);
/// - `host_device`: looks up a CRI device's host node;
/// - `seccomp_profile`: loads a `Localhost` seccomp profile;
/// - `image_layers`: finds the layers of an image volume's image.
///
/// The result still goes through [`Config::validate`] in `Container::create`.
#[allow(clippy::too_many_arguments)] // the signature CreateContainer calls; all are distinct inputs
pub fn container_spec(
    id: &str,
    req: &proto::ContainerConfig,
    pod: &PodContext<'_>,
    image: &ImageConfig,
    rootfs: OverlayRootfs,
    rootfs_dir: &Path,
    host_device: HostDeviceLookup<'_>,
    seccomp_profile: SeccompLoader<'_>,
    image_layers: ImageLayersLookup<'_>,
) -> Result<ContainerSpec, SpecError> {
    let no_sc = proto::LinuxContainerSecurityContext::default();
    let linux = req.linux.as_ref();
    let sc = linux
        .and_then(|l| l.security_context.as_ref())
        .unwrap_or(&no_sc);
    let res = linux.and_then(|l| l.resources.as_ref());

    let mut config = Config::new(rootfs_dir);
    config.overlay = Some(rootfs);
    // The pod's UTS namespace already has the hostname (set when it was
    // pinned); runtime-core only sets one in a UTS namespace it creates.
    config.hostname = None;
    // The pod's network namespace was set up by the sandbox (and CNI).
    config.loopback = false;
    config.namespaces = namespaces::namespaces(pod, sc)?;
    config.sysctls = pod.sysctls.clone();
    let volumes = match &config.overlay {
        Some(o) => mounts::image_volumes(image, req, o)?,
        None => Vec::new(),
    };
    let cgroup_rel = resources::cgroup_dir(id, pod.cgroup_parent, pod.cgroup_driver)?;
    let planned = mounts::mounts(
        req,
        pod,
        sc.readonly_rootfs,
        sc.privileged,
        volumes,
        image_layers,
        &cgroup_rel,
    )?;
    config.mounts = planned.mounts;
    config.rootfs_propagation = planned.rootfs_propagation;
    config.devices = devices::devices(req, host_device, sc.privileged)?;
    let device_rules = devices::rules(req, &config.devices, sc.privileged);
    if let Some((process, mount)) = selinux::labels(sc, pod.selinux)? {
        config.selinux_label = Some(process);
        config.mount_label = Some(mount);
    }
    config.apparmor_profile = lsm::apparmor(sc, pod.host_lsm)?.map(|(_, profile)| profile);
    security::apply(&mut config, sc)?;
    config.seccomp = seccomp::profile(sc, &config.capabilities.bounding, seccomp_profile)?;
    let mut cgroup = resources::cgroup(id, pod.cgroup_parent, pod.cgroup_driver, res)?;
    cgroup.resources.devices = Some(device_rules);
    config.cgroup = Some(cgroup);
    // In the pod's user namespace the image's root-owned files must stay
    // root's: each layer is idmapped into it (nothing is chowned).
    config.idmap_rootfs = pod.user_ns.is_some();
    config.oom_score_adj = resources::oom_score_adj(res)?;

    let process = ProcessSpec {
        args: command::argv(req, image)?,
        env: command::env(req, image, pod.hostname)?,
        cwd: command::cwd(req, image)?,
        user: user::user(sc, &image.user)?,
        capabilities: None,
        no_new_privileges: None,
        terminal: None,
    };
    Ok(ContainerSpec {
        config,
        process,
        stop_signal: signal::stop_signal(req.stop_signal, &image.stop_signal)?,
        tty: req.tty,
        stdin: req.stdin,
        stdin_once: req.stdin_once,
    })
}

#[cfg(test)]
mod tests {
    use super::fixture::Fixture;
    use super::*;

    #[test]
    fn base_fixture_translates() {
        let s = Fixture::new().spec();
        assert_eq!(s.config.rootfs, PathBuf::from("/run/berth/c1/rootfs"));
        assert_eq!(
            s.config.overlay.as_ref().map(|o| o.upperdir.clone()),
            Some(PathBuf::from("/var/lib/berth/containers/c1/upper"))
        );
        assert_eq!(s.config.hostname, None);
        assert!(!s.config.loopback);
        assert_eq!(s.process.terminal, None);
        assert!(!s.tty && !s.stdin && !s.stdin_once);
    }

    #[test]
    fn tty_and_stdin_are_passed_through() {
        let mut f = Fixture::new();
        f.req.tty = true;
        f.req.stdin = true;
        f.req.stdin_once = true;
        let s = f.spec();
        assert!(s.tty && s.stdin && s.stdin_once);
        assert_eq!(s.process.terminal, None);
    }

    #[test]
    fn pod_sysctls_go_to_the_config() {
        let mut f = Fixture::new();
        f.sysctls
            .insert("net.ipv4.ip_unprivileged_port_start".into(), "0".into());
        let s = f.spec();
        assert_eq!(
            s.config
                .sysctls
                .get("net.ipv4.ip_unprivileged_port_start")
                .map(String::as_str),
            Some("0")
        );
    }

    #[test]
    fn clean_absolute_normalises_and_refuses() {
        assert_eq!(
            clean_absolute("f", "/a/./b//c/").unwrap(),
            PathBuf::from("/a/b/c")
        );
        assert!(clean_absolute("f", "a/b").is_err());
        assert!(clean_absolute("f", "/a/../b").is_err());
        assert!(clean_absolute("f", "/a\0").is_err());
    }
}
