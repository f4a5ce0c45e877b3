//! Small safe wrappers around the raw syscalls that `nix` does not cover.
//!
//! Every `unsafe` block of the crate that is not about fd ownership lives here,
//! each with the invariant it relies on.

use std::ffi::CStr;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::OnceLock;

use nix::errno::Errno;

fn check(ret: libc::c_long) -> nix::Result<libc::c_long> {
    if ret == -1 {
        Err(Errno::last())
    } else {
        Ok(ret)
    }
}

/// Highest capability number the running kernel knows, found by probing
/// `PR_CAPBSET_READ` (EINVAL past the last one) — never by reading a file,
/// which inside a container could say anything. The init calls it before
/// touching any namespace.
pub(crate) fn cap_last_cap() -> u8 {
    static LAST: OnceLock<u8> = OnceLock::new();
    *LAST.get_or_init(|| {
        let mut last = 0u8;
        for cap in 0..64u8 {
            // SAFETY: prctl with integer arguments only.
            let r =
                unsafe { libc::prctl(libc::PR_CAPBSET_READ, libc::c_ulong::from(cap), 0, 0, 0) };
            if r < 0 {
                break;
            }
            last = cap;
        }
        last
    })
}

/// `prctl(PR_CAPBSET_DROP, cap)`.
pub(crate) fn capbset_drop(cap: u8) -> nix::Result<()> {
    // SAFETY: prctl with integer arguments only; no memory is passed.
    let r = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, libc::c_ulong::from(cap), 0, 0, 0) };
    check(r.into()).map(drop)
}

/// `prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)`.
pub(crate) fn ambient_clear_all() -> nix::Result<()> {
    // SAFETY: prctl with integer arguments only.
    let r = unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        )
    };
    check(r.into()).map(drop)
}

/// `prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, cap)`.
pub(crate) fn ambient_raise(cap: u8) -> nix::Result<()> {
    // SAFETY: prctl with integer arguments only.
    let r = unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_RAISE,
            libc::c_ulong::from(cap),
            0,
            0,
        )
    };
    check(r.into()).map(drop)
}

/// `struct __user_cap_header_struct`.
#[repr(C)]
struct Header {
    version: u32,
    pid: libc::c_int,
}

/// `struct __user_cap_data_struct` (two of them in the v3 ABI).
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct Data {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// `capset` of the calling thread with 64-bit masks (version 3 ABI).
pub(crate) fn capset(effective: u64, permitted: u64, inheritable: u64) -> nix::Result<()> {
    const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;
    let mut header = Header {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let lo = |m: u64| m as u32;
    let hi = |m: u64| (m >> 32) as u32;
    let data = [
        Data {
            effective: lo(effective),
            permitted: lo(permitted),
            inheritable: lo(inheritable),
        },
        Data {
            effective: hi(effective),
            permitted: hi(permitted),
            inheritable: hi(inheritable),
        },
    ];
    // SAFETY: header and data are valid, properly laid out (#[repr(C)]) structs
    // of the v3 ABI, which takes exactly two data elements; both outlive the call.
    let r = unsafe { libc::syscall(libc::SYS_capset, &mut header as *mut Header, data.as_ptr()) };
    check(r).map(drop)
}

/// `prctl(PR_SET_KEEPCAPS, on)`.
pub(crate) fn set_keepcaps(on: bool) -> nix::Result<()> {
    // SAFETY: prctl with integer arguments only.
    let r = unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, libc::c_ulong::from(on), 0, 0, 0) };
    check(r.into()).map(drop)
}

/// `prctl(PR_SET_NO_NEW_PRIVS, 1)`.
pub(crate) fn set_no_new_privs() -> nix::Result<()> {
    // SAFETY: prctl with integer arguments only.
    let r = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
    check(r.into()).map(drop)
}

/// `setrlimit(resource, {soft, hard})`.
pub(crate) fn setrlimit(
    resource: libc::__rlimit_resource_t,
    soft: u64,
    hard: u64,
) -> nix::Result<()> {
    let lim = libc::rlimit {
        rlim_cur: soft,
        rlim_max: hard,
    };
    // SAFETY: `lim` is a valid rlimit that lives for the duration of the call.
    let r = unsafe { libc::setrlimit(resource, &lim) };
    check(r.into()).map(drop)
}

/// `pidfd_open(pid, 0)`: a handle on a process that cannot be confused with a
/// later process reusing the pid.
pub(crate) fn pidfd_open(pid: i32) -> nix::Result<OwnedFd> {
    // SAFETY: integer arguments only; the result is a new fd or -1.
    let fd = check(unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) })?;
    // SAFETY: pidfd_open returned a fresh fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// `pidfd_send_signal(pidfd, sig)`.
pub(crate) fn pidfd_send_signal(pidfd: BorrowedFd<'_>, sig: i32) -> nix::Result<()> {
    // SAFETY: the fd is a valid borrowed pidfd; info is NULL as documented.
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            sig,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    check(r).map(drop)
}

/// Result of [`clone_parent`].
pub(crate) enum CloneResult {
    /// In the parent (the caller), with the child's pid.
    Parent(i32),
    /// In the child.
    Child,
}

/// A fork-like `clone(CLONE_PARENT | ns_flags | SIGCHLD)`: the child gets new
/// namespaces of `ns_flags` and becomes a child of the caller's *parent*, so the
/// process that started the bootstrap can wait for the container's init.
///
/// Only call this from a single-threaded process (the init bootstrap is one).
pub(crate) fn clone_parent(ns_flags: libc::c_int) -> nix::Result<CloneResult> {
    let flags = (libc::CLONE_PARENT | ns_flags) as libc::c_ulong | libc::SIGCHLD as libc::c_ulong;
    // SAFETY: a NULL stack makes clone behave like fork: the child gets a copy
    // of the address space. The caller is single-threaded (documented above), so
    // no lock can be held by another thread at the time of the copy.
    let r = unsafe {
        libc::syscall(
            libc::SYS_clone,
            flags,
            std::ptr::null_mut::<libc::c_void>(),
            std::ptr::null_mut::<libc::c_int>(),
            std::ptr::null_mut::<libc::c_int>(),
            0,
        )
    };
    match check(r)? {
        0 => Ok(CloneResult::Child),
        pid => Ok(CloneResult::Parent(pid as i32)),
    }
}

/// Marks every fd from `first` up close-on-exec.
pub(crate) fn cloexec_from(first: u32) -> nix::Result<()> {
    const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
    // SAFETY: integer arguments only; only changes fd flags.
    let r = unsafe { libc::syscall(libc::SYS_close_range, first, u32::MAX, CLOSE_RANGE_CLOEXEC) };
    check(r).map(drop)
}

/// `struct mount_attr` of `mount_setattr(2)`.
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// `mount_setattr(fd, "", AT_EMPTY_PATH | AT_RECURSIVE, {attr_set, userns_fd})`.
fn mount_setattr_recursive(fd: BorrowedFd<'_>, attr_set: u64, userns_fd: u64) -> nix::Result<()> {
    const AT_RECURSIVE: libc::c_uint = 0x8000;
    let attr = MountAttr {
        attr_set,
        attr_clr: 0,
        propagation: 0,
        userns_fd,
    };
    // SAFETY: `attr` is a valid mount_attr of the size passed; the path is a
    // valid NUL-terminated empty string; both outlive the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            fd.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH as libc::c_uint | AT_RECURSIVE,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    check(r).map(drop)
}

/// Makes the mount at `fd` and every mount below it read-only.
pub(crate) fn mount_setattr_recursive_rdonly(fd: BorrowedFd<'_>) -> nix::Result<()> {
    const MOUNT_ATTR_RDONLY: u64 = 0x1;
    mount_setattr_recursive(fd, MOUNT_ATTR_RDONLY, 0)
}

/// Resets every signal disposition to the default and unblocks all signals,
/// so the container's process does not inherit the runtime's (Rust ignores
/// SIGPIPE, for one).
pub(crate) fn reset_signals() {
    for sig in 1..=64 {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        // SAFETY: installing SIG_DFL is always valid; invalid signal numbers
        // (32, 33 used by glibc) just return EINVAL, which is fine to ignore.
        unsafe { libc::signal(sig, libc::SIG_DFL) };
    }
    // SAFETY: `set` is a valid, emptied sigset_t that outlives the call.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
    }
}

/// Brings the interface `name` up in the caller's network namespace
/// (`SIOCGIFFLAGS` / `SIOCSIFFLAGS`), without netlink.
pub(crate) fn interface_up(name: &CStr) -> nix::Result<()> {
    // SAFETY: plain socket creation.
    let sock = check(
        unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) }.into(),
    )? as RawFd;
    // SAFETY: `sock` is a fresh fd we own.
    let sock = unsafe { OwnedFd::from_raw_fd(sock) };
    // SAFETY: an all-zero ifreq is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    let bytes = name.to_bytes();
    if bytes.len() >= req.ifr_name.len() {
        return Err(Errno::EINVAL);
    }
    for (dst, src) in req.ifr_name.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    // SAFETY: `req` is a valid ifreq with a NUL-terminated name; the ioctl
    // fills ifru_flags.
    check(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) }.into())?;
    // SAFETY: the kernel just initialised the flags member of the union.
    unsafe { req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
    // SAFETY: as above; the kernel reads the flags.
    check(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) }.into())?;
    Ok(())
}

/// Reads the 22nd field of `/proc/PID/stat`: the process start time in clock
/// ticks since boot, used to tell a pid apart from a later reuse of it.
pub(crate) fn process_start_time(pid: i32) -> Option<u64> {
    proc_stat(pid).map(|s| s.start_ticks)
}

/// The fields of `/proc/PID/stat` the runtime uses, read in one go.
pub(crate) struct ProcStat {
    /// State letter (`R`, `S`, `Z`, ...), field 3.
    pub state: char,
    /// Parent pid, field 4.
    pub ppid: i32,
    /// Start time in clock ticks after boot, field 22.
    pub start_ticks: u64,
}

/// Reads and parses `/proc/PID/stat` once.
pub(crate) fn proc_stat(pid: i32) -> Option<ProcStat> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and parentheses: split
    // after the last ')'; the rest starts at field 3.
    let mut rest = stat[stat.rfind(')')? + 2..].split(' ');
    let state = rest.next()?.chars().next()?;
    let ppid = rest.next()?.parse().ok()?;
    let start_ticks = rest.nth(17)?.parse().ok()?;
    Some(ProcStat {
        state,
        ppid,
        start_ticks,
    })
}

/// `fchownat(fd, "", uid, gid, AT_EMPTY_PATH)`: chown the file an (`O_PATH`)
/// fd refers to, never following anything.
pub(crate) fn fchown_fd(fd: BorrowedFd<'_>, uid: u32, gid: u32) -> nix::Result<()> {
    // SAFETY: valid fd and a NUL-terminated empty path.
    let r = unsafe { libc::fchownat(fd.as_raw_fd(), c"".as_ptr(), uid, gid, libc::AT_EMPTY_PATH) };
    check(r.into()).map(drop)
}

/// `ioctl(fd, NS_GET_NSTYPE)`: the `CLONE_NEW*` type of a namespace file.
pub(crate) fn ns_type(fd: BorrowedFd<'_>) -> nix::Result<libc::c_int> {
    const NS_GET_NSTYPE: libc::c_ulong = 0xb703;
    // SAFETY: NS_GET_NSTYPE takes no argument and returns the type or -1.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), NS_GET_NSTYPE) };
    check(r.into()).map(|t| t as libc::c_int)
}

/// `prctl(PR_SET_DUMPABLE, on)`.
pub(crate) fn set_dumpable(on: bool) -> nix::Result<()> {
    // SAFETY: prctl with integer arguments only.
    let r = unsafe { libc::prctl(libc::PR_SET_DUMPABLE, libc::c_ulong::from(on), 0, 0, 0) };
    check(r.into()).map(drop)
}

/// `ioctl(fd, TIOCSWINSZ)`.
pub(crate) fn set_winsize(fd: BorrowedFd<'_>, rows: u16, cols: u16) -> nix::Result<()> {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: `ws` is a valid winsize that outlives the call.
    check(unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &ws) }.into()).map(drop)
}

/// Unlocks the pty master `fd` and opens its peer (`TIOCGPTPEER`, no path
/// lookup at all), `O_RDWR | O_NOCTTY | O_CLOEXEC`.
pub(crate) fn pty_peer(master: BorrowedFd<'_>) -> nix::Result<OwnedFd> {
    let unlock: libc::c_int = 0;
    // SAFETY: TIOCSPTLCK reads an int that outlives the call.
    check(unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSPTLCK, &unlock) }.into())?;
    const TIOCGPTPEER: libc::c_ulong = 0x5441;
    // SAFETY: TIOCGPTPEER takes open flags and returns a new fd or -1.
    let fd = check(
        unsafe {
            libc::ioctl(
                master.as_raw_fd(),
                TIOCGPTPEER,
                libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
            )
        }
        .into(),
    )?;
    // SAFETY: a new fd that we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// `ioctl(master, TIOCGPTN)`: the index of a pty master's peer in its devpts
/// (`/dev/pts/<index>`).
pub(crate) fn pty_index(master: BorrowedFd<'_>) -> nix::Result<u32> {
    let mut index: libc::c_uint = 0;
    // SAFETY: TIOCGPTN writes one unsigned int into `index`, which outlives
    // the call.
    check(unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCGPTN, &mut index) }.into())?;
    Ok(index)
}

/// `ioctl(fd, TIOCSCTTY, 0)`: make the terminal the caller's controlling one.
pub(crate) fn set_controlling_tty(fd: BorrowedFd<'_>) -> nix::Result<()> {
    // SAFETY: integer argument only.
    check(unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSCTTY, 0) }.into()).map(drop)
}

/// `capget` of the calling thread: (effective, permitted, inheritable).
pub(crate) fn capget() -> nix::Result<(u64, u64, u64)> {
    let mut header = Header {
        version: 0x2008_0522,
        pid: 0,
    };
    let mut data = [Data::default(); 2];
    // SAFETY: valid v3 header and two data elements, both outliving the call.
    check(unsafe {
        libc::syscall(
            libc::SYS_capget,
            &mut header as *mut Header,
            data.as_mut_ptr(),
        )
    })?;
    let join = |lo: u32, hi: u32| u64::from(lo) | (u64::from(hi) << 32);
    Ok((
        join(data[0].effective, data[1].effective),
        join(data[0].permitted, data[1].permitted),
        join(data[0].inheritable, data[1].inheritable),
    ))
}

/// `open_tree(AT_FDCWD, path, OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_RECURSIVE)`:
/// a detached copy of the mount tree at `path`.
pub(crate) fn open_tree_clone(path: &std::path::Path) -> nix::Result<OwnedFd> {
    use std::os::unix::ffi::OsStrExt;
    const OPEN_TREE_CLONE: libc::c_uint = 1;
    const AT_RECURSIVE: libc::c_uint = 0x8000;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(|_| Errno::EINVAL)?;
    // SAFETY: `c` is a valid C string that outlives the call.
    let fd = check(unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            c.as_ptr(),
            OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint | AT_RECURSIVE,
        )
    })?;
    // SAFETY: a new fd that we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Idmaps the detached tree `tree` (recursively) through the user namespace `userns`.
pub(crate) fn mount_setattr_idmap(tree: BorrowedFd<'_>, userns: BorrowedFd<'_>) -> nix::Result<()> {
    const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;
    mount_setattr_recursive(tree, MOUNT_ATTR_IDMAP, userns.as_raw_fd() as u64)
}

/// Attaches the detached tree `tree` onto `target` (an fd of the mount point),
/// `move_mount(tree, "", target, "", MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH)`.
pub(crate) fn move_mount_onto(tree: BorrowedFd<'_>, target: BorrowedFd<'_>) -> nix::Result<()> {
    const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;
    const MOVE_MOUNT_T_EMPTY_PATH: libc::c_uint = 0x40;
    // SAFETY: both fds are valid; the paths are NUL-terminated empty strings.
    check(unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            c"".as_ptr(),
            target.as_raw_fd(),
            c"".as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH,
        )
    })
    .map(drop)
}

/// Writes `value` to a procfs file, after checking (by `fstatfs` of the
/// opened file) that it really is on procfs and not something mounted or
/// linked in its place.
pub(crate) fn write_proc_file(
    path: impl AsRef<std::path::Path>,
    value: &str,
) -> std::io::Result<()> {
    use std::io::Write;
    open_proc_file(path)?.write_all(value.as_bytes())
}

/// Opens a procfs file for writing (never through a symlink), checked by
/// `fstatfs` to really be on procfs.
pub(crate) fn open_proc_file(path: impl AsRef<std::path::Path>) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    const PROC_SUPER_MAGIC: i64 = 0x9fa0;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)?;
    let fs = nix::sys::statfs::fstatfs(&f).map_err(std::io::Error::from)?;
    if fs.filesystem_type().0 != PROC_SUPER_MAGIC {
        return Err(std::io::Error::other("not a procfs file"));
    }
    Ok(f)
}

/// Opens (creating if missing) the file `name` in `dir` as `O_PATH`, never
/// following or accepting a symlink, never opening a device: only a regular
/// file or a character device node is accepted (else EPERM).
pub(crate) fn openat_nofollow_create(dir: BorrowedFd<'_>, name: &CStr) -> nix::Result<OwnedFd> {
    let open_path = || {
        // SAFETY: valid dir fd and NUL-terminated name; a new fd or -1.
        let fd = unsafe {
            libc::openat(
                dir.as_raw_fd(),
                name.as_ptr(),
                libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            )
        };
        check(fd.into()).map(|fd| {
            // SAFETY: a new fd that we own.
            unsafe { OwnedFd::from_raw_fd(fd as RawFd) }
        })
    };
    let f = match open_path() {
        Err(Errno::ENOENT) => {
            // SAFETY: as above; O_EXCL also refuses an existing symlink.
            let fd = unsafe {
                libc::openat(
                    dir.as_raw_fd(),
                    name.as_ptr(),
                    libc::O_CREAT
                        | libc::O_EXCL
                        | libc::O_WRONLY
                        | libc::O_NOFOLLOW
                        | libc::O_CLOEXEC,
                    0o600,
                )
            };
            // SAFETY: a new fd that we own; closed at once.
            drop(unsafe { OwnedFd::from_raw_fd(check(fd.into())? as RawFd) });
            open_path()?
        }
        other => other?,
    };
    let st = nix::sys::stat::fstat(f.as_raw_fd())?;
    match st.st_mode & libc::S_IFMT {
        libc::S_IFREG | libc::S_IFCHR => Ok(f),
        _ => Err(Errno::EPERM),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_time_of_self() {
        let pid = std::process::id() as i32;
        let me = proc_stat(pid).unwrap();
        assert!(matches!(me.state, 'R' | 'S'));
        assert_eq!(me.ppid, nix::unistd::getppid().as_raw());
        assert_eq!(process_start_time(pid), Some(me.start_ticks));
        assert!(me.start_ticks > 0);
        assert!(proc_stat(-5).is_none());
    }
}
