//! Resolving paths inside the rootfs without ever leaving it.
//!
//! CVE-2021-30465 (and the class around it): a mount destination containing a
//! symlink — or swapped for one while setup runs — made runc mount outside the
//! rootfs. Here every destination is resolved with
//! `openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)`, which treats the rootfs
//! as `/` for `..` and absolute symlinks alike, and the mount then lands on the
//! opened fd (`/proc/self/fd/N`), not on a path that could change.

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{openat, openat2, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{mkdirat, Mode};

/// What to create when a destination is missing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Create {
    Dir,
    File,
}

/// Opens `path` (absolute or relative, taken as relative to `root`) as an
/// `O_PATH` fd, resolving every component inside `root`.
pub(crate) fn open_in_root(root: BorrowedFd<'_>, path: &Path) -> nix::Result<OwnedFd> {
    open_in_root_with(root, path, OFlag::O_PATH)
}

/// [`open_in_root`] with open flags other than `O_PATH` (`O_CLOEXEC` is added).
pub(crate) fn open_in_root_with(
    root: BorrowedFd<'_>,
    path: &Path,
    flags: OFlag,
) -> nix::Result<OwnedFd> {
    let rel = relative(path);
    let how = OpenHow::new()
        .flags(flags | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    let mut tries = 0;
    loop {
        match openat2(root.as_raw_fd(), rel.as_path(), how) {
            // SAFETY: openat2 returned a new fd that we now own.
            Ok(fd) => return Ok(unsafe { OwnedFd::from_raw_fd(fd) }),
            // openat2 returns EAGAIN when a concurrent rename could have moved
            // the walk; retrying is the documented answer, within bounds.
            Err(Errno::EAGAIN) if tries < 128 => tries += 1,
            Err(e) => return Err(e),
        }
    }
}

/// Like [`open_in_root`], creating missing components (directories, and the
/// last one as `create`). A component created here is reopened through the
/// same in-root resolution, so a symlink swapped in meanwhile still resolves
/// inside `root`.
pub(crate) fn create_in_root(
    root: BorrowedFd<'_>,
    path: &Path,
    create: Create,
) -> nix::Result<OwnedFd> {
    match open_in_root(root, path) {
        Err(Errno::ENOENT) => {}
        other => return other,
    }
    let rel = relative(path);
    let (parent, name) = match (rel.parent(), rel.file_name()) {
        (Some(p), Some(n)) => (p.to_path_buf(), n.to_os_string()),
        _ => return Err(Errno::ENOENT),
    };
    let parent_fd = create_in_root(root, &parent, Create::Dir)?;
    // O_PATH directory fds are valid dirfds for the *at calls.
    let made = match create {
        Create::Dir => mkdirat(
            Some(parent_fd.as_raw_fd()),
            name.as_os_str(),
            Mode::from_bits_truncate(0o755),
        ),
        Create::File => openat(
            Some(parent_fd.as_raw_fd()),
            name.as_os_str(),
            OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_WRONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o644),
        )
        // SAFETY: openat returned a new fd that we own; it is closed at once.
        .map(|fd| drop(unsafe { OwnedFd::from_raw_fd(fd) })),
    };
    match made {
        Ok(()) | Err(Errno::EEXIST) => {}
        Err(e) => return Err(e),
    }
    open_in_root(root, &rel)
}

/// `path` without its leading `/`, with `.` components removed.
pub(crate) fn relative(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::ParentDir => out.push(".."),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    if out.as_os_str().is_empty() {
        out.push(".");
    }
    out
}

/// The `/proc/self/fd/N` path of `fd`, used to hand an opened file to
/// syscalls that take paths (mount).
pub(crate) fn fd_path(fd: BorrowedFd<'_>) -> String {
    format!("/proc/self/fd/{}", fd.as_raw_fd())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;
    use std::os::unix::fs::symlink;

    #[test]
    fn relative_paths() {
        assert_eq!(relative(Path::new("/a/./b")), PathBuf::from("a/b"));
        assert_eq!(relative(Path::new("/")), PathBuf::from("."));
    }

    #[test]
    fn symlinks_resolve_inside_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        let outside = dir.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        // An absolute symlink to "/" and a relative one climbing out.
        symlink("/", root.join("abs")).unwrap();
        symlink("../../outside", root.join("etc/rel")).unwrap();
        let rootfd = std::fs::File::open(&root).unwrap();
        let fd = create_in_root(rootfd.as_fd(), Path::new("/abs/made"), Create::Dir).unwrap();
        drop(fd);
        assert!(root.join("made").is_dir(), "created inside the root");
        std::fs::create_dir(root.join("outside")).unwrap();
        let fd = create_in_root(rootfd.as_fd(), Path::new("/etc/rel/x"), Create::File).unwrap();
        drop(fd);
        assert!(!outside.join("x").exists(), "never outside");
        assert!(root.join("outside/x").is_file());
    }
}
