//! The container's terminal: a pty of the container's own devpts instance.

use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use nix::fcntl::OFlag;
use nix::mount::MsFlags;

use super::mounts::mount_raw;
use super::resolve::{create_in_root, fd_path, open_in_root_with, Create};
use super::RootfsError;

const DEVPTS_SUPER_MAGIC: i64 = 0x1cd1;

/// A pty: the master (for the runtime) and the peer (the process's stdio).
pub(crate) struct Console {
    pub master: OwnedFd,
    pub peer: OwnedFd,
}

/// Opens a new pty from `/dev/pts/ptmx` inside `root`, checked to be a real
/// devpts (not a file or symlink the image planted), and its peer through
/// `TIOCGPTPEER` (no path lookup).
pub(crate) fn open(root: BorrowedFd<'_>) -> Result<Console, RootfsError> {
    let err = |source| RootfsError::Device {
        path: "/dev/pts/ptmx".into(),
        source,
    };
    let master = open_in_root_with(
        root,
        Path::new("/dev/pts/ptmx"),
        OFlag::O_RDWR | OFlag::O_NOCTTY,
    )
    .map_err(err)?;
    let fs = nix::sys::statfs::fstatfs(master.as_fd()).map_err(err)?;
    if fs.filesystem_type().0 != DEVPTS_SUPER_MAGIC {
        return Err(err(nix::Error::EXDEV));
    }
    let peer = crate::sys::pty_peer(master.as_fd()).map_err(err)?;
    Ok(Console { master, peer })
}

/// Bind-mounts the pty peer over `/dev/console` inside `root` (the target
/// resolved in the root and mounted through its fd: CVE-2025-52565 class).
pub(crate) fn bind_dev_console(
    root: BorrowedFd<'_>,
    peer: BorrowedFd<'_>,
) -> Result<(), RootfsError> {
    // /dev must resolve in the root; /dev/console itself may not be a
    // symlink (it would point the pty bind at another file of the image).
    let resolve = |source| RootfsError::Resolve {
        path: "/dev/console".into(),
        source,
    };
    let dev = create_in_root(root, Path::new("/dev"), Create::Dir).map_err(resolve)?;
    let target = match crate::sys::openat_nofollow_create(dev.as_fd(), c"console") {
        Ok(fd) => fd,
        Err(e) => return Err(resolve(e)),
    };
    mount_raw(
        Some(OsStr::new(&fd_path(peer))),
        Path::new(&fd_path(target.as_fd())),
        None,
        MsFlags::MS_BIND,
        None,
    )
    .map_err(|source| RootfsError::Mount {
        what: "bind of the console pty".into(),
        target: "/dev/console".into(),
        source,
    })
}
