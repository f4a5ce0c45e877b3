//! Device nodes and the standard `/dev` symlinks.

use std::ffi::OsStr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::path::Path;

use nix::errno::Errno;
use nix::mount::MsFlags;
use nix::sys::stat::{makedev, mknodat, Mode, SFlag};
use nix::unistd::symlinkat;

use super::mounts::mount_raw;
use super::resolve::{create_in_root, fd_path, open_in_root, Create};
use super::RootfsError;
use crate::config::{Device, DeviceKind};

/// Creates `devices` inside `root`: `mknod` normally; in a user namespace,
/// where `mknod` is not allowed, bind mounts of the host's nodes (as runc).
pub(crate) fn create(
    root: BorrowedFd<'_>,
    devices: &[Device],
    in_user_ns: bool,
) -> Result<(), RootfsError> {
    for d in devices {
        let err = |source| RootfsError::Device {
            path: d.path.clone(),
            source,
        };
        let (parent, name) = match (d.path.parent(), d.path.file_name()) {
            (Some(p), Some(n)) => (p, n),
            _ => return Err(err(Errno::EINVAL)),
        };
        let parent_fd = create_in_root(root, parent, Create::Dir).map_err(err)?;
        if in_user_ns {
            let target = create_in_root(root, &d.path, Create::File).map_err(err)?;
            mount_raw(
                Some(d.path.as_os_str()),
                Path::new(&fd_path(target.as_fd())),
                None,
                MsFlags::MS_BIND,
                None,
            )
            .map_err(err)?;
            continue;
        }
        let kind = match d.kind {
            DeviceKind::Char => SFlag::S_IFCHR,
            DeviceKind::Block => SFlag::S_IFBLK,
            DeviceKind::Fifo => SFlag::S_IFIFO,
        };
        match mknodat(
            Some(parent_fd.as_raw_fd()),
            name,
            kind,
            Mode::from_bits_truncate(d.file_mode),
            makedev(d.major, d.minor),
        ) {
            Ok(()) => {}
            // Already there (a rootfs that ships /dev nodes): keep it.
            Err(Errno::EEXIST) => continue,
            Err(e) => return Err(err(e)),
        }
        // Fix mode (umask) and owner through an fd of the node itself, so a
        // symlink put in its place could not redirect the change.
        let node = open_in_root(root, &d.path).map_err(err)?;
        nix::sys::stat::fchmodat(
            None,
            Path::new(&fd_path(node.as_fd())),
            Mode::from_bits_truncate(d.file_mode),
            nix::sys::stat::FchmodatFlags::FollowSymlink,
        )
        .map_err(err)?;
        crate::sys::fchown_fd(node.as_fd(), d.uid, d.gid).map_err(err)?;
    }
    Ok(())
}

/// `/dev/fd`, `/dev/std{in,out,err}` and (with a devpts) `/dev/ptmx`.
pub(crate) fn symlinks(root: BorrowedFd<'_>, has_devpts: bool) -> Result<(), RootfsError> {
    let dev = open_in_root(root, Path::new("/dev")).map_err(|source| RootfsError::Resolve {
        path: "/dev".into(),
        source,
    })?;
    let mut links = vec![
        ("/proc/self/fd", "fd"),
        ("/proc/self/fd/0", "stdin"),
        ("/proc/self/fd/1", "stdout"),
        ("/proc/self/fd/2", "stderr"),
    ];
    if has_devpts {
        links.push(("pts/ptmx", "ptmx"));
    }
    for (target, name) in links {
        match symlinkat(OsStr::new(target), Some(dev.as_raw_fd()), OsStr::new(name)) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(source) => {
                return Err(RootfsError::Device {
                    path: Path::new("/dev").join(name),
                    source,
                })
            }
        }
    }
    Ok(())
}
