//! Masked and read-only paths.

use std::ffi::OsStr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{open, OFlag};
use nix::mount::MsFlags;
use nix::sys::stat::{fstat, major, minor, Mode};

use super::mounts::{mount_raw, remount};
use super::resolve::{fd_path, open_in_root};
use super::RootfsError;

/// Makes `path` unreadable: an empty read-only tmpfs over a directory, the
/// null device over anything else. A missing path is fine (nothing to hide).
pub(crate) fn mask(root: BorrowedFd<'_>, path: &Path) -> Result<(), RootfsError> {
    let target = match open_in_root(root, path) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => return Ok(()),
        Err(source) => {
            return Err(RootfsError::Resolve {
                path: path.into(),
                source,
            })
        }
    };
    let err = |what: &str| {
        let what = what.to_string();
        move |source| RootfsError::Mount {
            what,
            target: path.into(),
            source,
        }
    };
    let st = fstat(target.as_raw_fd()).map_err(err("stat"))?;
    let target_path = fd_path(target.as_fd());
    if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
        mount_raw(
            Some(OsStr::new("tmpfs")),
            Path::new(&target_path),
            Some("tmpfs"),
            MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            Some("size=0,mode=0555"),
        )
        .map_err(err("read-only tmpfs"))
    } else {
        // The source is the runtime's own /dev/null, checked to be the real
        // null device (CVE-2025-31133: a /dev/null replaced by a symlink made
        // runc bind a host file over the masked path).
        let null = dev_null()?;
        mount_raw(
            Some(OsStr::new(&fd_path(null.as_fd()))),
            Path::new(&target_path),
            None,
            MsFlags::MS_BIND,
            None,
        )
        .map_err(err("bind of /dev/null"))
    }
}

fn dev_null() -> Result<OwnedFd, RootfsError> {
    let fd = open(
        "/dev/null",
        OFlag::O_PATH | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW,
        Mode::empty(),
    )
    .map_err(|_| RootfsError::NotDevNull)?;
    // SAFETY: open returned a new fd that we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let st = fstat(fd.as_raw_fd()).map_err(|_| RootfsError::NotDevNull)?;
    if st.st_mode & libc::S_IFMT != libc::S_IFCHR
        || major(st.st_rdev) != 1
        || minor(st.st_rdev) != 3
    {
        return Err(RootfsError::NotDevNull);
    }
    Ok(fd)
}

/// Bind-mounts `path` onto itself and remounts it read-only.
pub(crate) fn make_readonly(root: BorrowedFd<'_>, path: &Path) -> Result<(), RootfsError> {
    let resolve = |source| RootfsError::Resolve {
        path: path.into(),
        source,
    };
    let target = match open_in_root(root, path) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => return Ok(()),
        Err(e) => return Err(resolve(e)),
    };
    let p = fd_path(target.as_fd());
    let err = |what: &str| {
        let what = what.to_string();
        move |source| RootfsError::Mount {
            what,
            target: path.into(),
            source,
        }
    };
    mount_raw(
        Some(OsStr::new(&p)),
        Path::new(&p),
        None,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None,
    )
    .map_err(err("bind onto itself"))?;
    let top = open_in_root(root, path).map_err(resolve)?;
    // Keep the mount's nosuid/nodev/noexec (those of /proc, say), as runc
    // does: a read-only path must not gain what its mount had not.
    let keep = super::mounts::locked_flags(top.as_fd())
        & (MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC);
    remount(top.as_fd(), MsFlags::MS_RDONLY | keep).map_err(err("read-only remount"))
}
