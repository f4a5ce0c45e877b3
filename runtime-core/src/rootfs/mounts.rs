//! Mounting onto fds resolved inside the rootfs.

use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{open, OFlag};
use nix::mount::MsFlags;
use nix::sys::stat::Mode;
use nix::sys::statvfs::{fstatvfs, FsFlags};

use super::resolve::{create_in_root, fd_path, open_in_root, Create};
use super::RootfsError;
use crate::config::{Mount, MountKind};

/// `mount(2)` with raw flags.
pub(crate) fn mount_raw(
    source: Option<&OsStr>,
    target: &Path,
    fstype: Option<&str>,
    flags: MsFlags,
    data: Option<&str>,
) -> nix::Result<()> {
    nix::mount::mount(source, target, fstype, flags, data)
}

/// The flags of the mount at `fd` that an unprivileged remount must keep
/// (the kernel locks them on mounts inherited into a user namespace).
pub(crate) fn locked_flags(fd: BorrowedFd<'_>) -> MsFlags {
    let Ok(st) = fstatvfs(fd) else {
        return MsFlags::empty();
    };
    let f = st.flags();
    let mut out = MsFlags::empty();
    for (st_flag, ms) in [
        (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
        (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
    ] {
        if f.contains(st_flag) {
            out |= ms;
        }
    }
    out
}

/// Remounts the bind mount at `fd` with `flags` (see [`remount_path`]).
pub(crate) fn remount(fd: BorrowedFd<'_>, flags: MsFlags) -> nix::Result<()> {
    remount_path(Path::new(&fd_path(fd)), flags)
}

/// Remounts the bind mount at `path` with `flags`; on EPERM retries keeping
/// the flags the kernel locked (mounts inherited into a user namespace).
/// With a plain path (after `pivot_root`, for `/`) it needs no `/proc`.
pub(crate) fn remount_path(path: &Path, flags: MsFlags) -> nix::Result<()> {
    let base = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | flags;
    match mount_raw(None, path, None, base, None) {
        Err(Errno::EPERM) => {
            let fd = open_path(path)?;
            mount_raw(None, path, None, base | locked_flags(fd.as_fd()), None)
        }
        other => other,
    }
}

fn open_path(path: &Path) -> nix::Result<OwnedFd> {
    let fd = open(path, OFlag::O_PATH | OFlag::O_CLOEXEC, Mode::empty())?;
    // SAFETY: open returned a new fd that we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Mounts `m` inside `root`.
pub(crate) fn mount_one(
    root: BorrowedFd<'_>,
    m: &Mount,
    in_user_ns: bool,
    idmapped_tree: Option<&OwnedFd>,
) -> Result<(), RootfsError> {
    let dest = &m.destination;
    let err = |what: String| {
        move |source| RootfsError::Mount {
            what,
            target: dest.clone(),
            source,
        }
    };
    let resolve = |source| RootfsError::Resolve {
        path: dest.clone(),
        source,
    };
    let flags = MsFlags::from_bits_retain(m.ms_flags());
    match &m.kind {
        MountKind::Bind { recursive } => {
            let src_path = m.source.as_deref().unwrap_or(Path::new(""));
            let what = format!("bind of {}", src_path.display());
            let src = open_path(src_path).map_err(err(what.clone()))?;
            let is_dir = nix::sys::stat::fstat(std::os::fd::AsRawFd::as_raw_fd(&src))
                .map(|st| st.st_mode & libc::S_IFMT == libc::S_IFDIR)
                .map_err(err(what.clone()))?;
            let create = if is_dir { Create::Dir } else { Create::File };
            let target = create_in_root(root, dest, create).map_err(resolve)?;
            if let Some(tree) = idmapped_tree {
                crate::sys::move_mount_onto(tree.as_fd(), target.as_fd())
                    .map_err(err(format!("idmapped {what}")))?;
            } else {
                let mut bind = MsFlags::MS_BIND;
                if *recursive {
                    bind |= MsFlags::MS_REC;
                }
                mount_raw(
                    Some(OsStr::new(&fd_path(src.as_fd()))),
                    Path::new(&fd_path(target.as_fd())),
                    None,
                    bind,
                    None,
                )
                .map_err(err(what.clone()))?;
            }
            if !flags.is_empty() {
                let target = open_in_root(root, dest).map_err(resolve)?;
                remount(target.as_fd(), flags).map_err(err(format!("remount of {what}")))?;
            }
        }
        MountKind::Fs { fstype } => {
            let target = create_in_root(root, dest, Create::Dir).map_err(resolve)?;
            let source = m
                .source
                .as_deref()
                .map(|s| s.as_os_str())
                .unwrap_or(OsStr::new(fstype));
            let data = (!m.data.is_empty()).then_some(m.data.as_str());
            let target_path = fd_path(target.as_fd());
            let res = mount_raw(
                Some(source),
                Path::new(&target_path),
                Some(fstype),
                flags,
                data,
            );
            match res {
                // sysfs cannot be mounted in a user namespace that does not own
                // the network namespace: bind the host's, as runc does.
                Err(Errno::EPERM) if fstype == "sysfs" && in_user_ns => {
                    mount_raw(
                        Some(OsStr::new("/sys")),
                        Path::new(&target_path),
                        None,
                        MsFlags::MS_BIND | MsFlags::MS_REC,
                        None,
                    )
                    .map_err(err("bind of /sys".into()))?;
                    let target = open_in_root(root, dest).map_err(resolve)?;
                    remount(target.as_fd(), flags).map_err(err("remount of /sys".into()))?;
                }
                other => other.map_err(err(format!("{fstype} ({})", source.to_string_lossy())))?,
            }
        }
        MountKind::Overlay { lowerdirs } => {
            let target = create_in_root(root, dest, Create::Dir).map_err(resolve)?;
            let ovl = super::overlay::OverlayMount::prepare(lowerdirs, None, &m.data).map_err(
                |source| RootfsError::Overlay {
                    target: dest.clone(),
                    source,
                },
            )?;
            ovl.mount_at(Path::new(&fd_path(target.as_fd())), dest, flags.bits())?;
        }
    }
    if m.recursive_readonly {
        let target = open_in_root(root, dest).map_err(resolve)?;
        crate::sys::mount_setattr_recursive_rdonly(target.as_fd())
            .map_err(err("recursive read-only attribute".into()))?;
    }
    if let Some(p) = m.propagation {
        let target = open_in_root(root, dest).map_err(resolve)?;
        mount_raw(
            None,
            Path::new(&fd_path(target.as_fd())),
            None,
            MsFlags::from_bits_retain(p.ms_flags()),
            None,
        )
        .map_err(err(format!("propagation {p:?}")))?;
    }
    Ok(())
}
