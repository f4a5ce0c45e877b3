//! Starting the bootstrap process: fork, place fds, `execveat` the sealed init.
//!
//! The caller (the daemon) is multi-threaded, so between `fork` and `exec` the
//! child may only make async-signal-safe calls: everything it needs (argv,
//! envp, the fd plan, scratch space) is allocated before the fork, and the
//! child only calls `fcntl`, `dup2` and `execveat` (or `execve` of the
//! same fd's /proc path where `execveat` is refused).

use std::ffi::CString;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};

use nix::errno::Errno;

use super::fdlayout::FdPlan;

/// Exit codes of the forked child when it fails before exec.
pub(crate) const EXIT_DUP_FAILED: i32 = 120;
pub(crate) const EXIT_EXEC_FAILED: i32 = 121;

/// Forks a child that places `fds` per `plan` and executes `exe` with `argv`
/// and an empty environment. Returns the child's pid.
pub(crate) fn spawn(exe: BorrowedFd<'_>, argv: &[CString], plan: &FdPlan) -> nix::Result<i32> {
    let mut argv_ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    argv_ptrs.push(std::ptr::null());
    let envp: [*const libc::c_char; 1] = [std::ptr::null()];
    let exe_fd = exe.as_raw_fd();
    let moves: Vec<(RawFd, RawFd)> = plan.moves.clone();
    let mut scratch: Vec<RawFd> = vec![-1; moves.len()];
    let base = plan.scratch_base;
    // Block every signal around the fork so no handler of the runtime (a
    // signal-hook self-pipe, tokio's) runs in the child; the parent restores
    // its mask, and the init resets the mask before the container's execve.
    // SAFETY: an all-zero sigset_t is a valid value to be filled below.
    let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `all` and `old` are valid sigsets for the duration of the calls.
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
    }
    // SAFETY: fork in a possibly multi-threaded process. The child runs only
    // async-signal-safe code (child_after_fork) and never returns.
    let pid = unsafe { libc::fork() };
    if pid != 0 {
        // SAFETY: restores the mask saved above.
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut()) };
    }
    match pid {
        -1 => Err(Errno::last()),
        0 => {
            // SAFETY: see child_after_fork's contract: all pointers were built
            // before the fork and stay valid in the child's copy of memory.
            unsafe { child_after_fork(exe_fd, &moves, &mut scratch, base, &argv_ptrs, &envp) }
        }
        pid => Ok(pid),
    }
}

/// Runs in the forked child.
///
/// # Safety
/// Must only be called in the child of `fork`, with pointers prepared before
/// the fork; it does not allocate and only makes async-signal-safe syscalls.
unsafe fn child_after_fork(
    exe_fd: RawFd,
    moves: &[(RawFd, RawFd)],
    scratch: &mut [RawFd],
    base: RawFd,
    argv: &[*const libc::c_char],
    envp: &[*const libc::c_char],
) -> ! {
    // 1. Duplicate every source, and the executable, above every target.
    for (i, &(src, _)) in moves.iter().enumerate() {
        // SAFETY: fcntl is async-signal-safe; invalid fds just fail.
        let fd = unsafe { libc::fcntl(src, libc::F_DUPFD_CLOEXEC, base) };
        if fd < 0 {
            // SAFETY: _exit is async-signal-safe.
            unsafe { libc::_exit(EXIT_DUP_FAILED) };
        }
        scratch[i] = fd;
    }
    // SAFETY: as above.
    let exe = unsafe { libc::fcntl(exe_fd, libc::F_DUPFD_CLOEXEC, base) };
    if exe < 0 {
        // SAFETY: _exit is async-signal-safe.
        unsafe { libc::_exit(EXIT_DUP_FAILED) };
    }
    // 2. Place them. dup2 clears close-on-exec on the target.
    for (i, &(_, dst)) in moves.iter().enumerate() {
        // SAFETY: dup2 is async-signal-safe; both fds are valid here.
        if unsafe { libc::dup2(scratch[i], dst) } < 0 {
            // SAFETY: _exit is async-signal-safe.
            unsafe { libc::_exit(EXIT_DUP_FAILED) };
        }
    }
    // 3. Nothing else crosses the exec: low fds that are not targets, and all
    //    of the scratch area, become close-on-exec.
    for fd in 0..base {
        if !moves.iter().any(|m| m.1 == fd) {
            // SAFETY: fcntl on a possibly closed fd just fails with EBADF.
            unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
        }
    }
    // SAFETY: integer arguments only.
    if unsafe { libc::syscall(libc::SYS_close_range, base as u32, u32::MAX, 4u32) } != 0 {
        // Without it, inherited fds could cross the exec: refuse.
        // SAFETY: _exit is async-signal-safe.
        unsafe { libc::_exit(EXIT_DUP_FAILED) };
    }
    // 4. Execute the sealed binary by fd: no path, nothing to race.
    // SAFETY: argv and envp are NULL-terminated arrays of valid C strings
    // built before the fork.
    unsafe {
        libc::syscall(
            libc::SYS_execveat,
            exe,
            c"".as_ptr(),
            argv.as_ptr(),
            envp.as_ptr(),
            libc::AT_EMPTY_PATH,
        )
    };
    // 5. Where execveat is refused (a seccomp filter; valgrind, which the
    //    symbol order's profile runs monitors under, cannot execveat a
    //    memfd), the same sealed copy through its /proc path: the kernel
    //    opens it before close-on-exec closes the fd.
    let mut path = *b"/proc/self/fd/\0\0\0\0\0\0\0\0\0\0\0";
    write_decimal(&mut path[14..], exe);
    // SAFETY: `path` is NUL-terminated (the number leaves at least one
    // NUL); argv and envp as above.
    unsafe { libc::execve(path.as_ptr().cast(), argv.as_ptr(), envp.as_ptr()) };
    // SAFETY: _exit is async-signal-safe.
    unsafe { libc::_exit(EXIT_EXEC_FAILED) }
}

/// Writes `n` (not negative) in decimal at the start of `out`, without
/// allocating (it runs between fork and exec).
fn write_decimal(out: &mut [u8], n: RawFd) {
    let mut digits = [0u8; 10];
    let (mut v, mut len) = (n.max(0) as u32, 0);
    loop {
        digits[len] = b'0' + (v % 10) as u8;
        len += 1;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    for (slot, d) in out.iter_mut().zip(digits[..len].iter().rev()) {
        *slot = *d;
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn write_decimal_writes_the_digits() {
        for (n, want) in [(0, "0"), (7, "7"), (42, "42"), (1_048_575, "1048575")] {
            let mut out = [0u8; 11];
            super::write_decimal(&mut out, n);
            let end = out.iter().position(|b| *b == 0).unwrap();
            assert_eq!(std::str::from_utf8(&out[..end]).unwrap(), want);
        }
        let mut out = [0u8; 11];
        super::write_decimal(&mut out, i32::MAX);
        assert_eq!(&out[..10], b"2147483647");
    }
}
