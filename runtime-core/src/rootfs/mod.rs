//! The container's filesystem: mounts, devices, masked and read-only paths,
//! `pivot_root`. Runs in the init, in the container's new mount namespace.

mod devices;
mod mounts;
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
}

/// Builds the container's filesystem and switches root into it.
pub(crate) fn setup(config: &Config, in_user_ns: bool) -> Result<(), RootfsError> {
    mounts::mount_raw(
        None,
        Path::new("/"),
        None,
        MsFlags::from_bits_retain(config.rootfs_propagation.ms_flags()),
        None,
    )
    .map_err(RootfsError::RootPropagation)?;
    let rootfs = &config.rootfs;
    mounts::mount_raw(
        Some(rootfs.as_os_str()),
        rootfs,
        None,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None,
    )
    .map_err(|source| RootfsError::BindRootfs {
        path: rootfs.clone(),
        source,
    })?;
    let root = open_dir(rootfs).map_err(|source| RootfsError::OpenRootfs {
        path: rootfs.clone(),
        source,
    })?;
    for m in &config.mounts {
        mounts::mount_one(root.as_fd(), m, in_user_ns)?;
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
    for p in &config.masked_paths {
        paths::mask(root.as_fd(), p)?;
    }
    for p in &config.readonly_paths {
        paths::make_readonly(root.as_fd(), p)?;
    }
    pivot::switch_root(root.as_fd(), rootfs, config.no_pivot_root)?;
    if config.readonly_rootfs {
        mounts::remount_path(Path::new("/"), MsFlags::MS_RDONLY)
            .map_err(RootfsError::ReadonlyRootfs)?;
    }
    Ok(())
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
