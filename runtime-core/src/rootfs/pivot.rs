//! Switching the root: `pivot_root`, or `MS_MOVE` + `chroot` where
//! `pivot_root` cannot work (a rootfs on the initramfs).

use std::os::fd::{AsRawFd, BorrowedFd};
use std::path::Path;

use nix::errno::Errno;
use nix::mount::{umount2, MntFlags, MsFlags};
use nix::unistd::{chdir, chroot, fchdir, pivot_root};

use super::mounts::mount_raw;
use super::RootfsError;

fn on_ram_fs(root: BorrowedFd<'_>) -> bool {
    const RAMFS_MAGIC: i64 = 0x8584_58f6;
    const TMPFS_MAGIC: i64 = 0x0102_1994;
    nix::sys::statfs::fstatfs(root)
        .map(|s| matches!(s.filesystem_type().0, RAMFS_MAGIC | TMPFS_MAGIC))
        .unwrap_or(false)
}

pub(crate) fn switch_root(
    root: BorrowedFd<'_>,
    rootfs: &Path,
    no_pivot: bool,
) -> Result<(), RootfsError> {
    let err = |source| RootfsError::Pivot {
        path: rootfs.into(),
        source,
    };
    // A handle on the old root, to reach its mount after the pivot (a path
    // of "." would name the new root's mount, under the stacked old one).
    let old_root = nix::fcntl::open(
        "/",
        nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(err)?;
    // SAFETY: open returned a new fd that we own.
    let old_root: std::os::fd::OwnedFd = unsafe { std::os::fd::FromRawFd::from_raw_fd(old_root) };
    fchdir(root.as_raw_fd()).map_err(err)?;
    if !no_pivot {
        match pivot_root(".", ".") {
            Ok(()) => {
                // The old root is now stacked on the new one. Make its whole
                // tree a slave first, so detaching it cannot propagate an
                // unmount to the host; only the old tree: the new root's
                // mounts keep their propagation (a bidirectional volume must
                // stay in the host's peer group).
                fchdir(old_root.as_raw_fd()).map_err(err)?;
                mount_raw(
                    None,
                    Path::new("."),
                    None,
                    MsFlags::MS_SLAVE | MsFlags::MS_REC,
                    None,
                )
                .map_err(err)?;
                umount2(".", MntFlags::MNT_DETACH).map_err(err)?;
                chdir("/").map_err(err)?;
                return Ok(());
            }
            // EINVAL on a ramfs/tmpfs root (the initramfs), which cannot be
            // pivoted; any other EINVAL (e.g. a shared parent) is an error.
            Err(Errno::EINVAL) if on_ram_fs(root) => {}
            Err(e) => return Err(err(e)),
        }
    }
    mount_raw(
        Some(".".as_ref()),
        Path::new("/"),
        None,
        MsFlags::MS_MOVE,
        None,
    )
    .map_err(err)?;
    chroot(".").map_err(err)?;
    chdir("/").map_err(err)
}
