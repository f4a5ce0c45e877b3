//! The description of a container: what [`crate::Container::create`] builds.
//!
//! The shape follows libcontainer's `configs.Config`, so people who know runc
//! find their way: a rootfs, namespaces to create or join, mounts, devices,
//! capabilities, id mappings, masked and read-only paths, hostname, rlimits,
//! sysctls and a cgroup. [`Config::validate`] checks everything that can be
//! checked before a process is started.

mod defaults;
mod mount;
pub(crate) mod validate;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use mount::{Mount, MountFlag, MountKind, Propagation};
pub use validate::ConfigError;

pub use crate::rootfs::overlay::{OverlayError, MAX_LAYERS as MAX_OVERLAY_LAYERS};

pub use crate::cgroups::{CgroupConfig, Resources};
pub use crate::hooks::{Hook, Hooks};
pub use crate::security::capabilities::{Capabilities, Capability};
pub use crate::security::rlimits::{Rlimit, RlimitKind};
pub use crate::security::seccomp::SeccompProfile;

/// A Linux namespace type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NamespaceKind {
    /// User namespace (uid/gid mappings).
    User,
    /// Mount namespace.
    Mount,
    /// UTS namespace (hostname, domainname).
    Uts,
    /// IPC namespace (SysV IPC, POSIX message queues).
    Ipc,
    /// PID namespace.
    Pid,
    /// Network namespace.
    Network,
    /// Cgroup namespace.
    Cgroup,
}

impl NamespaceKind {
    /// All kinds, in the order they are joined (user first, so the others are
    /// joined with the capabilities it grants; mount last but one so host
    /// paths stay reachable while joining; pid last, it applies to children).
    pub const JOIN_ORDER: [NamespaceKind; 7] = [
        NamespaceKind::User,
        NamespaceKind::Ipc,
        NamespaceKind::Uts,
        NamespaceKind::Network,
        NamespaceKind::Cgroup,
        NamespaceKind::Mount,
        NamespaceKind::Pid,
    ];

    /// The `CLONE_NEW*` flag of this kind.
    pub fn clone_flag(self) -> libc::c_int {
        match self {
            NamespaceKind::User => libc::CLONE_NEWUSER,
            NamespaceKind::Mount => libc::CLONE_NEWNS,
            NamespaceKind::Uts => libc::CLONE_NEWUTS,
            NamespaceKind::Ipc => libc::CLONE_NEWIPC,
            NamespaceKind::Pid => libc::CLONE_NEWPID,
            NamespaceKind::Network => libc::CLONE_NEWNET,
            NamespaceKind::Cgroup => libc::CLONE_NEWCGROUP,
        }
    }

    /// The file name under `/proc/PID/ns/`.
    pub fn proc_name(self) -> &'static str {
        match self {
            NamespaceKind::User => "user",
            NamespaceKind::Mount => "mnt",
            NamespaceKind::Uts => "uts",
            NamespaceKind::Ipc => "ipc",
            NamespaceKind::Pid => "pid",
            NamespaceKind::Network => "net",
            NamespaceKind::Cgroup => "cgroup",
        }
    }
}

/// A namespace the container gets: a new one, or an existing one joined by path
/// (`/proc/PID/ns/net`, or a bind-mounted pinned namespace).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Namespace {
    /// Which namespace.
    pub kind: NamespaceKind,
    /// `None`: create a new one. `Some(path)`: join the namespace at `path`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
}

impl Namespace {
    /// A new namespace of `kind`.
    pub fn new(kind: NamespaceKind) -> Self {
        Self { kind, path: None }
    }

    /// Join the existing namespace at `path`.
    pub fn join(kind: NamespaceKind, path: impl Into<PathBuf>) -> Self {
        Self {
            kind,
            path: Some(path.into()),
        }
    }
}

/// Kind of a device node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceKind {
    /// Character device.
    Char,
    /// Block device.
    Block,
    /// Named pipe.
    Fifo,
}

/// A device node created in the container's `/dev`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Device {
    /// Absolute path inside the container, under `/dev`.
    pub path: PathBuf,
    /// Node kind.
    pub kind: DeviceKind,
    /// Major number.
    pub major: u64,
    /// Minor number.
    pub minor: u64,
    /// Permission bits (e.g. `0o666`).
    pub file_mode: u32,
    /// Owner uid (in the container).
    pub uid: u32,
    /// Owner gid (in the container).
    pub gid: u32,
}

/// One line of `/proc/PID/uid_map` or `gid_map`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdMap {
    /// First id inside the container.
    pub container_id: u32,
    /// First id on the host.
    pub host_id: u32,
    /// Number of ids mapped.
    pub size: u32,
}

/// An overlayfs root filesystem that the container's init mounts, in its own
/// mount namespace, at [`Config::rootfs`] (nothing is mounted on the host).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OverlayRootfs {
    /// Lower layers, top first (overlayfs order).
    pub lowerdirs: Vec<PathBuf>,
    /// The writable layer.
    pub upperdir: PathBuf,
    /// overlayfs's work directory; must share its parent directory with
    /// `upperdir` (they are idmapped together).
    pub workdir: PathBuf,
}

impl OverlayRootfs {
    /// Mounts the overlay on `target` in the calling process's mount
    /// namespace, with the SELinux `context=` of `label`: for a caller that
    /// hands the rootfs to another OCI runtime, which takes a directory
    /// (the embedded runtime mounts it inside the container instead).
    pub fn mount_on(&self, target: &Path, label: Option<&str>) -> Result<(), crate::RootfsError> {
        let ovl = self
            .prepare_labeled(label)
            .map_err(|source| crate::RootfsError::Overlay {
                target: target.to_path_buf(),
                source,
            })?;
        ovl.mount_at(target, target, 0)
    }

    /// The overlayfs mount data with plain paths:
    /// `lowerdir=a:b,upperdir=u,workdir=w`. `mount(2)` takes one page of
    /// it, about 40 layers of the image store; the container's init names
    /// the directories by fd past that.
    pub fn mount_data(&self) -> String {
        let lower: Vec<String> = self
            .lowerdirs
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        format!(
            "lowerdir={},upperdir={},workdir={}",
            lower.join(":"),
            self.upperdir.display(),
            self.workdir.display()
        )
    }

    /// The overlay's `mount(2)` options: `lowerdir=a:b,upperdir=u,workdir=w`
    /// with plain paths when they fit in one page, else with the
    /// directories opened and named by fd (see `rootfs/overlay.rs`).
    pub(crate) fn prepare(&self) -> Result<crate::rootfs::overlay::OverlayMount, OverlayError> {
        let upper = crate::rootfs::overlay::Upper {
            upperdir: &self.upperdir,
            workdir: &self.workdir,
        };
        crate::rootfs::overlay::OverlayMount::prepare(&self.lowerdirs, Some(upper), "")
    }

    /// [`OverlayRootfs::prepare`] with the SELinux `context=` of `label`.
    pub(crate) fn prepare_labeled(
        &self,
        label: Option<&str>,
    ) -> Result<crate::rootfs::overlay::OverlayMount, OverlayError> {
        let upper = crate::rootfs::overlay::Upper {
            upperdir: &self.upperdir,
            workdir: &self.workdir,
        };
        let extra = label
            .map(|l| crate::security::selinux::with_context("", l))
            .unwrap_or_default();
        crate::rootfs::overlay::OverlayMount::prepare(&self.lowerdirs, Some(upper), &extra)
    }

    /// The checks of [`Config::validate`]: existing absolute directories,
    /// at most [`MAX_OVERLAY_LAYERS`] layers, upper and work dirs in one
    /// parent (they are idmapped together), no `,` or `:` in the paths.
    pub(crate) fn check(&self) -> Result<(), ConfigError> {
        check_layers("overlay", &self.lowerdirs)?;
        for p in self.lowerdirs.iter().chain([&self.upperdir, &self.workdir]) {
            if !validate::is_clean_absolute(p) || !p.is_dir() {
                return Err(ConfigError::BadPath {
                    field: "overlay (existing absolute directories)",
                    path: p.clone(),
                });
            }
        }
        if self.upperdir.parent() != self.workdir.parent() {
            return Err(ConfigError::BadPath {
                field: "overlay (upperdir and workdir in one parent)",
                path: self.workdir.clone(),
            });
        }
        if let Some(p) = [&self.upperdir, &self.workdir]
            .into_iter()
            .find(|p| bad_layer_name(p))
        {
            return Err(ConfigError::BadPath {
                field: "overlay (no ',' or ':' in layer paths)",
                path: p.clone(),
            });
        }
        Ok(())
    }
}

/// The lower layers of an overlay: at least one, at most overlayfs's
/// limit, absolute, and without the characters that separate layers and
/// options in overlayfs's mount data.
pub(crate) fn check_layers(field: &'static str, lowerdirs: &[PathBuf]) -> Result<(), ConfigError> {
    let max = MAX_OVERLAY_LAYERS;
    if lowerdirs.len() > max {
        return Err(ConfigError::TooManyLayers {
            field,
            count: lowerdirs.len(),
            max,
        });
    }
    if lowerdirs.is_empty() {
        return Err(ConfigError::BadPath {
            field: "overlay (at least one lowerdir)",
            path: PathBuf::new(),
        });
    }
    match lowerdirs
        .iter()
        .find(|p| !validate::is_clean_absolute(p) || bad_layer_name(p))
    {
        Some(p) => Err(ConfigError::BadPath {
            field: "overlay (absolute layer paths without ',' or ':')",
            path: p.clone(),
        }),
        None => Ok(()),
    }
}

fn bad_layer_name(p: &Path) -> bool {
    p.as_os_str()
        .as_encoded_bytes()
        .iter()
        .any(|b| matches!(b, b',' | b':' | 0))
}

/// Everything needed to create a container.
///
/// Build one with [`Config::new`] (a rootfs and the safe defaults runc's spec
/// generator uses) and adjust fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Config {
    /// Root filesystem directory on the host.
    pub rootfs: PathBuf,
    /// Remount the root filesystem read-only after setup.
    #[serde(default)]
    pub readonly_rootfs: bool,
    /// Propagation of the container's root mount (default: recursive private).
    #[serde(default = "Config::default_rootfs_propagation")]
    pub rootfs_propagation: Propagation,
    /// Use `MS_MOVE` + `chroot` instead of `pivot_root` (needed when the rootfs
    /// is on a ramfs). Also used automatically when `pivot_root` says `EINVAL`.
    #[serde(default)]
    pub no_pivot_root: bool,
    /// Namespaces to create or join. Types not listed are shared with the caller.
    pub namespaces: Vec<Namespace>,
    /// Mounts, in order, relative to the rootfs.
    pub mounts: Vec<Mount>,
    /// Device nodes created under `/dev`.
    pub devices: Vec<Device>,
    /// Capabilities of the container's processes.
    pub capabilities: Capabilities,
    /// uid mappings (requires a new user namespace).
    #[serde(default)]
    pub uid_mappings: Vec<IdMap>,
    /// gid mappings (requires a new user namespace).
    #[serde(default)]
    pub gid_mappings: Vec<IdMap>,
    /// Paths made unreadable: files get `/dev/null` bound over them,
    /// directories an empty read-only tmpfs.
    #[serde(default)]
    pub masked_paths: Vec<PathBuf>,
    /// Paths remounted read-only.
    #[serde(default)]
    pub readonly_paths: Vec<PathBuf>,
    /// Hostname (requires a new UTS namespace).
    #[serde(default)]
    pub hostname: Option<String>,
    /// NIS domain name (requires a new UTS namespace).
    #[serde(default)]
    pub domainname: Option<String>,
    /// Resource limits of the container's processes.
    #[serde(default)]
    pub rlimits: Vec<Rlimit>,
    /// Namespaced sysctls, by dotted name (`net.ipv4.ip_forward`).
    #[serde(default)]
    pub sysctls: BTreeMap<String, String>,
    /// `/proc/PID/oom_score_adj` of the init process.
    #[serde(default)]
    pub oom_score_adj: Option<i32>,
    /// Set `PR_SET_NO_NEW_PRIVS` before exec.
    #[serde(default)]
    pub no_new_privileges: bool,
    /// Cgroup placement and resources. `None`: stay in the caller's cgroup.
    #[serde(default)]
    pub cgroup: Option<CgroupConfig>,
    /// Bring the `lo` interface up (only meaningful in a new network namespace).
    #[serde(default)]
    pub loopback: bool,
    /// Mount the rootfs idmapped through the container's user namespace, so an
    /// image owned by host ids 0.. appears owned by container ids 0.. (and
    /// files written appear on disk with the unmapped ids), without chowning
    /// any layer. Requires a new user namespace.
    #[serde(default)]
    pub idmap_rootfs: bool,
    /// Build the rootfs as an overlay of these layers (see [`OverlayRootfs`]);
    /// with `idmap_rootfs`, every layer is idmapped before the overlay is made
    /// (overlayfs itself cannot be idmapped once merged).
    #[serde(default)]
    pub overlay: Option<OverlayRootfs>,
    /// Seccomp filter of the container's processes; `None`: unconfined.
    #[serde(default)]
    pub seccomp: Option<SeccompProfile>,
    /// The AppArmor profile every process of the container runs under
    /// (switched to on `execve`; it must be loaded); `None`: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub apparmor_profile: Option<String>,
    /// The SELinux label every process of the container runs with
    /// (switched to on `execve`); `None`: the runtime's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selinux_label: Option<String>,
    /// The SELinux label of the filesystems mounted for the container (its
    /// overlay rootfs, tmpfs and devpts mounts: `context=`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mount_label: Option<String>,
    /// OCI lifecycle hooks (see [`crate::hooks`]).
    #[serde(default, skip_serializing_if = "Hooks::is_empty")]
    pub hooks: Hooks,
    /// Annotations, shown to hooks in the container's state.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl Config {
    /// A config for `rootfs` with the defaults of runc's `spec` generator:
    /// new mount, UTS, IPC, PID and network namespaces; `/proc`, `/dev`,
    /// `/dev/pts`, `/dev/shm`, `/dev/mqueue` and a read-only `/sys`; the default
    /// device set; runc's default capability set; the default masked and
    /// read-only paths; loopback up; no_new_privileges.
    pub fn new(rootfs: impl Into<PathBuf>) -> Self {
        Self {
            rootfs: rootfs.into(),
            readonly_rootfs: false,
            rootfs_propagation: Self::default_rootfs_propagation(),
            no_pivot_root: false,
            namespaces: [
                NamespaceKind::Mount,
                NamespaceKind::Uts,
                NamespaceKind::Ipc,
                NamespaceKind::Pid,
                NamespaceKind::Network,
            ]
            .into_iter()
            .map(Namespace::new)
            .collect(),
            mounts: defaults::mounts(),
            devices: defaults::devices(),
            capabilities: Capabilities::default_set(),
            uid_mappings: Vec::new(),
            gid_mappings: Vec::new(),
            masked_paths: defaults::masked_paths(),
            readonly_paths: defaults::readonly_paths(),
            hostname: None,
            domainname: None,
            rlimits: Vec::new(),
            sysctls: BTreeMap::new(),
            oom_score_adj: None,
            no_new_privileges: true,
            cgroup: None,
            loopback: true,
            idmap_rootfs: false,
            overlay: None,
            seccomp: None,
            apparmor_profile: None,
            selinux_label: None,
            mount_label: None,
            hooks: Hooks::default(),
            annotations: BTreeMap::new(),
        }
    }

    fn default_rootfs_propagation() -> Propagation {
        Propagation::RPrivate
    }

    /// The namespace entry of `kind`, if the config lists one.
    pub fn namespace(&self, kind: NamespaceKind) -> Option<&Namespace> {
        self.namespaces.iter().find(|ns| ns.kind == kind)
    }

    /// Whether a *new* namespace of `kind` is created.
    pub fn creates(&self, kind: NamespaceKind) -> bool {
        self.namespace(kind).is_some_and(|ns| ns.path.is_none())
    }

    /// Whether the container has its own (new or joined) namespace of `kind`.
    pub fn has(&self, kind: NamespaceKind) -> bool {
        self.namespace(kind).is_some()
    }

    /// The default device set: null, zero, full, random, urandom, tty.
    pub fn default_devices() -> Vec<Device> {
        defaults::devices()
    }

    /// The default mounts (see [`Config::new`]).
    pub fn default_mounts() -> Vec<Mount> {
        defaults::mounts()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> (tempfile::TempDir, Config) {
        let d = tempfile::tempdir().unwrap();
        let c = Config::new(d.path());
        (d, c)
    }

    #[test]
    fn overlays_take_at_most_overlayfs_layers() {
        let (d, mut c) = base();
        let layer = |i: usize| d.path().join(format!("l{i}"));
        for i in 0..=super::MAX_OVERLAY_LAYERS {
            std::fs::create_dir(layer(i)).unwrap();
        }
        std::fs::create_dir_all(d.path().join("c/upper")).unwrap();
        std::fs::create_dir_all(d.path().join("c/work")).unwrap();
        c.overlay = Some(super::OverlayRootfs {
            lowerdirs: (0..super::MAX_OVERLAY_LAYERS).map(layer).collect(),
            upperdir: d.path().join("c/upper"),
            workdir: d.path().join("c/work"),
        });
        c.validate().unwrap();
        let o = c.overlay.as_mut().unwrap();
        o.lowerdirs.push(layer(super::MAX_OVERLAY_LAYERS));
        let e = c.validate().unwrap_err();
        assert!(
            matches!(e, ConfigError::TooManyLayers { count: 501, .. }),
            "{e}"
        );
        assert!(e.to_string().contains("501 layers"), "{e}");
        c.overlay = None;
        let lowers = (0..501).map(layer).collect();
        c.mounts.push(Mount::overlay(lowers, "/vol", &[]));
        assert!(matches!(
            c.validate(),
            Err(ConfigError::TooManyLayers {
                field: "mounts.overlay",
                ..
            })
        ));
        c.mounts[0] = Mount::overlay(vec!["/a:b".into()], "/vol", &[]);
        assert!(matches!(c.validate(), Err(ConfigError::BadPath { .. })));
    }
}
