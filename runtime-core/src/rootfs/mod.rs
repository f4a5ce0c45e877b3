//! The container's filesystem: mounts, devices, masked and read-only paths,
//! `pivot_root`. Runs in the init, in the container's new mount namespace.

pub(crate) mod console;
mod devices;
mod mounts;
pub(crate) mod overlay;
mod paths;
mod pivot;
pub(crate) mod resolve;

use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::fcntl::{open, OFlag};
use nix::mount::MsFlags;
use nix::sys::stat::Mode;

use crate::config::{Config, MountKind};

/// A step of the rootfs setup failed.
#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    /// Setting the propagation of `/` failed.
    #[error("set the propagation of / in the container's mount namespace")]
    RootPropagation(#[source] nix::Error),
    /// The rootfs could not be bind-mounted onto itself.
    #[error("bind the rootfs {path} onto itself")]
    BindRootfs {
        /// Rootfs.
        path: PathBuf,
        /// Kernel error.
        #[source]
        source: nix::Error,
    },
    /// The rootfs could not be opened.
    #[error("open the rootfs {path}")]
    OpenRootfs {
        /// Rootfs.
        path: PathBuf,
        /// Kernel error.
        #[source]
        source: nix::Error,
    },
    /// A path could not be resolved (or created) inside the rootfs.
    #[error("resolve {path} inside the rootfs")]
    Resolve {
        /// Path inside the container.
        path: PathBuf,
        /// Kernel error.
        #[source]
        source: nix::Error,
    },
    /// A mount failed.
    #[error("mount {what} on {target}")]
    Mount {
        /// What was mounted (source and type, or the operation).
        what: String,
        /// Destination inside the container.
        target: PathBuf,
        /// Kernel error.
        #[source]
        source: nix::Error,
    },
    /// A device node could not be created.
    #[error("create device {path}")]
    Device {
        /// Path inside the container.
        path: PathBuf,
        /// Kernel error.
        #[source]
        source: nix::Error,
    },
    /// The host's /dev/null is not the null device (it is used to mask files).
    #[error("/dev/null of the runtime is not the null character device")]
    NotDevNull,
    /// `pivot_root` (or its fallback) failed.
    #[error("switch the root to {path}")]
    Pivot {
        /// Rootfs.
        path: PathBuf,
        /// Kernel error.
        #[source]
        source: nix::Error,
    },
    /// The rootfs could not be made read-only.
    #[error("remount the rootfs read-only")]
    ReadonlyRootfs(#[source] nix::Error),
    /// An overlay's options could not be prepared.
    #[error("prepare the overlay on {target}")]
    Overlay {
        /// Where it was to be mounted (inside the container for volumes).
        target: PathBuf,
        /// What is wrong.
        #[source]
        source: overlay::OverlayError,
    },
}

/// Idmapped mount trees made by the runtime, to attach instead of binding.
#[derive(Debug, Default)]
pub(crate) struct Idmapped {
    /// The rootfs.
    pub rootfs: Option<OwnedFd>,
    /// By index into `config.mounts`.
    pub mounts: std::collections::HashMap<usize, OwnedFd>,
    /// Overlay layer directories and their idmapped trees.
    pub layers: Vec<(PathBuf, OwnedFd)>,
}

/// Builds the container's filesystem and switches root into it. With
/// `console`, also opens the process's pty (bound over `/dev/console`).
pub(crate) fn prepare(
    config: &Config,
    in_user_ns: bool,
    console: bool,
    idmapped: Idmapped,
) -> Result<Prepared, RootfsError> {
    mounts::mount_raw(
        None,
        Path::new("/"),
        None,
        MsFlags::from_bits_retain(config.rootfs_propagation.ms_flags()),
        None,
    )
    .map_err(RootfsError::RootPropagation)?;
    let rootfs = &config.rootfs;
    let shared = config.rootfs_propagation == crate::config::Propagation::RShared;
    if shared {
        // `/` is rshared so that bind mounts whose host source is shared
        // stay in the host's peer group (bidirectional volumes). Nothing
        // else may propagate: the mount holding the rootfs's directory is
        // made private first (in this namespace only), so the overlay, the
        // rootfs bind and every mount under them stay ours (runc's
        // rootfsParentMountPrivate).
        parent_mount_private(rootfs).map_err(RootfsError::RootPropagation)?;
    }
    let bind_err = |source| RootfsError::BindRootfs {
        path: rootfs.clone(),
        source,
    };
    if let Some(o) = &config.overlay {
        // In this mount namespace only: each idmapped layer over its own
        // directory, then the overlay on the rootfs mount point.
        for (path, tree) in &idmapped.layers {
            let dir = open_dir(path).map_err(bind_err)?;
            crate::sys::move_mount_onto(tree.as_fd(), dir.as_fd()).map_err(bind_err)?;
        }
        let ovl = o
            .prepare_labeled(config.mount_label.as_deref())
            .map_err(|source| RootfsError::Overlay {
                target: rootfs.clone(),
                source,
            })?;
        ovl.mount_at(rootfs, rootfs, 0)?;
    }
    match &idmapped.rootfs {
        Some(tree) => {
            let dir = open_dir(rootfs).map_err(bind_err)?;
            crate::sys::move_mount_onto(tree.as_fd(), dir.as_fd()).map_err(bind_err)?;
        }
        None => mounts::mount_raw(
            Some(rootfs.as_os_str()),
            rootfs,
            None,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None,
        )
        .map_err(bind_err)?,
    }
    let root = open_dir(rootfs).map_err(|source| RootfsError::OpenRootfs {
        path: rootfs.clone(),
        source,
    })?;
    for (i, m) in config.mounts.iter().enumerate() {
        let labeled = labeled_mount(m, config.mount_label.as_deref());
        let m = labeled.as_ref().unwrap_or(m);
        mounts::mount_one(root.as_fd(), m, in_user_ns, idmapped.mounts.get(&i))?;
    }
    devices::create(root.as_fd(), &config.devices, in_user_ns)?;
    if config
        .mounts
        .iter()
        .any(|m| m.destination == Path::new("/dev"))
    {
        let has_devpts = config.mounts.iter().any(|m| {
            m.destination == Path::new("/dev/pts")
                && matches!(&m.kind, MountKind::Fs { fstype } if fstype == "devpts")
        });
        devices::symlinks(root.as_fd(), has_devpts)?;
    }
    let pty = if console {
        let c = console::open(root.as_fd())?;
        console::bind_dev_console(root.as_fd(), c.peer.as_fd())?;
        Some(c)
    } else {
        None
    };
    for p in &config.masked_paths {
        paths::mask(root.as_fd(), p)?;
    }
    for p in &config.readonly_paths {
        paths::make_readonly(root.as_fd(), p)?;
    }
    Ok(Prepared { root, pty, shared })
}

/// The rootfs with every mount in place, before `pivot_root` (the moment
/// of the `createRuntime` and `createContainer` hooks).
pub(crate) struct Prepared {
    root: OwnedFd,
    pty: Option<console::Console>,
    shared: bool,
}

impl Prepared {
    /// Makes the rootfs the process's root (then read-only if asked) and
    /// returns the console made for it.
    pub(crate) fn switch_root(
        self,
        config: &Config,
    ) -> Result<Option<console::Console>, RootfsError> {
        if self.shared {
            // pivot_root refuses a shared current root; only the root mount
            // itself changes (the shared binds are mounts of their own).
            mounts::mount_raw(None, Path::new("/"), None, MsFlags::MS_PRIVATE, None)
                .map_err(RootfsError::RootPropagation)?;
        }
        pivot::switch_root(self.root.as_fd(), &config.rootfs, config.no_pivot_root)?;
        if config.readonly_rootfs {
            mounts::remount_path(Path::new("/"), MsFlags::MS_RDONLY)
                .map_err(RootfsError::ReadonlyRootfs)?;
        }
        Ok(self.pty)
    }
}

/// `m` with the SELinux mount label in its options, when it is a
/// filesystem that takes one (`None`: `m` as it is).
fn labeled_mount(m: &crate::config::Mount, label: Option<&str>) -> Option<crate::config::Mount> {
    let label = label?;
    match &m.kind {
        MountKind::Fs { fstype } if crate::security::selinux::labels_fs(fstype) => {
            let mut m = m.clone();
            m.data = crate::security::selinux::with_context(&m.data, label);
            Some(m)
        }
        _ => None,
    }
}

/// Makes the mount that holds `rootfs`'s parent directory private: tries
/// each ancestor until one is a mount point (`EINVAL` from a directory
/// that is not one).
fn parent_mount_private(rootfs: &Path) -> nix::Result<()> {
    let mut dir = rootfs.parent().unwrap_or(Path::new("/"));
    loop {
        match mounts::mount_raw(None, dir, None, MsFlags::MS_PRIVATE, None) {
            Err(nix::Error::EINVAL) if dir != Path::new("/") => {
                dir = dir.parent().unwrap_or(Path::new("/"));
            }
            other => return other,
        }
    }
}

fn open_dir(path: &Path) -> nix::Result<OwnedFd> {
    let fd = open(
        path,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    // SAFETY: open returned a new fd that we own.
    Ok(unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) })
}
