//! The built-in Kubernetes `RuntimeDefault` seccomp profile: containerd's
//! default profile, as generated for an x86_64 (`amd64`) host.
//!
//! Source: containerd's `DefaultProfile(sp *specs.Spec)` in
//! [`contrib/seccomp/seccomp_default.go`] (repository `containerd/containerd`,
//! branch `main`), as of May 2026. That is the state after
//! containerd#11839 (May 2025: the syscalls of kernel v6.8–v6.13 known to
//! libseccomp v2.6.0) and containerd#13327 (merged 2026-04-30: `socket` also
//! refuses `AF_ALG`, CVE-2026-31431). It was read from mirrors of that file:
//! `cyanmint/containerd` at commit `60d675ad249f` (main, with the libseccomp
//! v2.6.0 names) and `k3s-vip/containerd` at commit `93329330ef98` (with the
//! three `AF_ALG`/`AF_VSOCK` socket rules of #13327), checked against
//! `containerd/containerd` at commit `96929a5d3102` (an older v1.6-era copy)
//! and the pull-request threads. CRI-O's and Moby's `profiles/seccomp/default.json`
//! express the same allow-list.
//!
//! Notable choices that follow upstream (do not "fix" them here):
//! - `io_uring_setup`, `io_uring_enter` and `io_uring_register` are *not*
//!   allowed (removed in containerd 2.0 by containerd#9320);
//! - `keyctl`, `add_key` and `request_key` are not allowed;
//! - `socketcall` stays allowed unconditionally (a socketcall-based `socket`
//!   on 32-bit x86 therefore bypasses the `AF_ALG`/`AF_VSOCK` argument
//!   filter; containerd#13330, which would have denied it, was closed);
//! - without `CAP_SYS_ADMIN`, `clone` is allowed only without namespace
//!   flags, and `clone3` fails with `ENOSYS` (its flags live in a struct that
//!   seccomp cannot inspect, and `ENOSYS` makes libcs fall back to `clone`).
//!
//! This list **must be kept in sync** with containerd's: when containerd
//! changes its default profile, change the consts below the same way and
//! update the version noted above. Only the rules of other architectures
//! (arm, ppc64le, s390x, riscv64, ...) are left out.
//!
//! [`contrib/seccomp/seccomp_default.go`]: https://github.com/containerd/containerd/blob/main/contrib/seccomp/seccomp_default.go

use super::profile::{Action, ArgCondition, Op, SeccompProfile, SyscallRule};
use crate::security::capabilities::Capability;

/// The filter's architectures on an x86_64 host (containerd's `arches()` for
/// `amd64`): native, i386 and x32 binaries are all covered.
const ARCHITECTURES: &[&str] = &["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"];

/// Syscalls every container may make, unconditionally (containerd's first
/// rule, in containerd's order). Names unknown to an architecture or to the
/// installed libseccomp are skipped when the profile is compiled.
const ALLOWED: &[&str] = &[
    "accept",
    "accept4",
    "access",
    "adjtimex",
    "alarm",
    "bind",
    "brk",
    "cachestat", // kernel v6.5, libseccomp v2.5.5
    "capget",
    "capset",
    "chdir",
    "chmod",
    "chown",
    "chown32",
    "clock_adjtime",
    "clock_adjtime64",
    "clock_getres",
    "clock_getres_time64",
    "clock_gettime",
    "clock_gettime64",
    "clock_nanosleep",
    "clock_nanosleep_time64",
    "close",
    "close_range",
    "connect",
    "copy_file_range",
    "creat",
    "dup",
    "dup2",
    "dup3",
    "epoll_create",
    "epoll_create1",
    "epoll_ctl",
    "epoll_ctl_old",
    "epoll_pwait",
    "epoll_pwait2",
    "epoll_wait",
    "epoll_wait_old",
    "eventfd",
    "eventfd2",
    "execve",
    "execveat",
    "exit",
    "exit_group",
    "faccessat",
    "faccessat2",
    "fadvise64",
    "fadvise64_64",
    "fallocate",
    "fanotify_mark",
    "fchdir",
    "fchmod",
    "fchmodat",
    "fchmodat2", // kernel v6.6, libseccomp v2.5.5
    "fchown",
    "fchown32",
    "fchownat",
    "fcntl",
    "fcntl64",
    "fdatasync",
    "fgetxattr",
    "flistxattr",
    "flock",
    "fork",
    "fremovexattr",
    "fsetxattr",
    "fstat",
    "fstat64",
    "fstatat64",
    "fstatfs",
    "fstatfs64",
    "fsync",
    "ftruncate",
    "ftruncate64",
    "futex",
    "futex_requeue", // kernel v6.7, libseccomp v2.5.5
    "futex_time64",
    "futex_wait", // kernel v6.7, libseccomp v2.5.5
    "futex_waitv",
    "futex_wake", // kernel v6.7, libseccomp v2.5.5
    "futimesat",
    "getcpu",
    "getcwd",
    "getdents",
    "getdents64",
    "getegid",
    "getegid32",
    "geteuid",
    "geteuid32",
    "getgid",
    "getgid32",
    "getgroups",
    "getgroups32",
    "getitimer",
    "getpeername",
    "getpgid",
    "getpgrp",
    "getpid",
    "getppid",
    "getpriority",
    "getrandom",
    "getresgid",
    "getresgid32",
    "getresuid",
    "getresuid32",
    "getrlimit",
    "get_robust_list",
    "getrusage",
    "getsid",
    "getsockname",
    "getsockopt",
    "get_thread_area",
    "gettid",
    "gettimeofday",
    "getuid",
    "getuid32",
    "getxattr",
    "getxattrat", // kernel v6.13, libseccomp v2.6.0
    "inotify_add_watch",
    "inotify_init",
    "inotify_init1",
    "inotify_rm_watch",
    "io_cancel",
    "ioctl",
    "io_destroy",
    "io_getevents",
    "io_pgetevents",
    "io_pgetevents_time64",
    "ioprio_get",
    "ioprio_set",
    "io_setup",
    "io_submit",
    "ipc",
    "kill",
    "landlock_add_rule",
    "landlock_create_ruleset",
    "landlock_restrict_self",
    "lchown",
    "lchown32",
    "lgetxattr",
    "link",
    "linkat",
    "listen",
    "listmount", // kernel v6.8, libseccomp v2.6.0
    "listxattr",
    "listxattrat", // kernel v6.13, libseccomp v2.6.0
    "llistxattr",
    "_llseek",
    "lremovexattr",
    "lseek",
    "lsetxattr",
    "lsm_get_self_attr", // kernel v6.8, libseccomp v2.6.0
    "lsm_list_modules",  // kernel v6.8, libseccomp v2.6.0
    "lsm_set_self_attr", // kernel v6.8, libseccomp v2.6.0
    "lstat",
    "lstat64",
    "madvise",
    "membarrier",
    "memfd_create",
    "memfd_secret",
    "mincore",
    "mkdir",
    "mkdirat",
    "mknod",
    "mknodat",
    "mlock",
    "mlock2",
    "mlockall",
    "map_shadow_stack", // kernel v6.6, libseccomp v2.5.5
    "mmap",
    "mmap2",
    "mprotect",
    "mq_getsetattr",
    "mq_notify",
    "mq_open",
    "mq_timedreceive",
    "mq_timedreceive_time64",
    "mq_timedsend",
    "mq_timedsend_time64",
    "mq_unlink",
    "mremap",
    "mseal", // kernel v6.10, libseccomp v2.6.0
    "msgctl",
    "msgget",
    "msgrcv",
    "msgsnd",
    "msync",
    "munlock",
    "munlockall",
    "munmap",
    "name_to_handle_at",
    "nanosleep",
    "newfstatat",
    "_newselect",
    "open",
    "openat",
    "openat2",
    "pause",
    "pidfd_open",
    "pidfd_send_signal",
    "pipe",
    "pipe2",
    "pkey_alloc",
    "pkey_free",
    "pkey_mprotect",
    "poll",
    "ppoll",
    "ppoll_time64",
    "prctl",
    "pread64",
    "preadv",
    "preadv2",
    "prlimit64",
    "process_mrelease",
    "pselect6",
    "pselect6_time64",
    "pwrite64",
    "pwritev",
    "pwritev2",
    "read",
    "readahead",
    "readlink",
    "readlinkat",
    "readv",
    "recv",
    "recvfrom",
    "recvmmsg",
    "recvmmsg_time64",
    "recvmsg",
    "remap_file_pages",
    "removexattr",
    "removexattrat", // kernel v6.13, libseccomp v2.6.0
    "rename",
    "renameat",
    "renameat2",
    "restart_syscall",
    "rmdir",
    "rseq",
    "rt_sigaction",
    "rt_sigpending",
    "rt_sigprocmask",
    "rt_sigqueueinfo",
    "rt_sigreturn",
    "rt_sigsuspend",
    "rt_sigtimedwait",
    "rt_sigtimedwait_time64",
    "rt_tgsigqueueinfo",
    "sched_getaffinity",
    "sched_getattr",
    "sched_getparam",
    "sched_get_priority_max",
    "sched_get_priority_min",
    "sched_getscheduler",
    "sched_rr_get_interval",
    "sched_rr_get_interval_time64",
    "sched_setaffinity",
    "sched_setattr",
    "sched_setparam",
    "sched_setscheduler",
    "sched_yield",
    "seccomp",
    "select",
    "semctl",
    "semget",
    "semop",
    "semtimedop",
    "semtimedop_time64",
    "send",
    "sendfile",
    "sendfile64",
    "sendmmsg",
    "sendmsg",
    "sendto",
    "setfsgid",
    "setfsgid32",
    "setfsuid",
    "setfsuid32",
    "setgid",
    "setgid32",
    "setgroups",
    "setgroups32",
    "setitimer",
    "setpgid",
    "setpriority",
    "setregid",
    "setregid32",
    "setresgid",
    "setresgid32",
    "setresuid",
    "setresuid32",
    "setreuid",
    "setreuid32",
    "setrlimit",
    "set_robust_list",
    "setsid",
    "setsockopt",
    "set_thread_area",
    "set_tid_address",
    "setuid",
    "setuid32",
    "setxattr",
    "setxattrat", // kernel v6.13, libseccomp v2.6.0
    "shmat",
    "shmctl",
    "shmdt",
    "shmget",
    "shutdown",
    "sigaltstack",
    "signalfd",
    "signalfd4",
    "sigprocmask",
    "sigreturn",
    "socketcall",
    "socketpair",
    "splice",
    "stat",
    "stat64",
    "statfs",
    "statfs64",
    "statmount", // kernel v6.8, libseccomp v2.6.0
    "statx",
    "symlink",
    "symlinkat",
    "sync",
    "sync_file_range",
    "syncfs",
    "sysinfo",
    "tee",
    "tgkill",
    "time",
    "timer_create",
    "timer_delete",
    "timer_getoverrun",
    "timer_gettime",
    "timer_gettime64",
    "timer_settime",
    "timer_settime64",
    "timerfd_create",
    "timerfd_gettime",
    "timerfd_gettime64",
    "timerfd_settime",
    "timerfd_settime64",
    "times",
    "tkill",
    "truncate",
    "truncate64",
    "ugetrlimit",
    "umask",
    "uname",
    "unlink",
    "unlinkat",
    "uretprobe", // kernel v6.11, libseccomp v2.6.0
    "utime",
    "utimensat",
    "utimensat_time64",
    "utimes",
    "vfork",
    "vmsplice",
    "wait4",
    "waitid",
    "waitpid",
    "write",
    "writev",
];

/// `AF_ALG` (38): the kernel crypto API, refused by `socket` (CVE-2026-31431).
const AF_ALG: u64 = libc::AF_ALG as u64;
/// `AF_VSOCK` (40): host/guest sockets, refused by `socket`.
const AF_VSOCK: u64 = libc::AF_VSOCK as u64;

/// `socket(domain, ..)` is allowed for every domain but `AF_ALG` and
/// `AF_VSOCK`: three one-condition rules (`domain < 38`, `domain == 39`,
/// `domain > 40`), since two `!=` conditions on the same argument in one rule
/// do not combine as an AND once split by the runtime.
const SOCKET_DOMAINS: &[(Op, u64)] = &[
    (Op::LessThan, AF_ALG),
    (Op::Equal, AF_ALG + 1),
    (Op::GreaterThan, AF_VSOCK),
];

/// `personality(persona)` values that are allowed: `PER_LINUX` (0x0),
/// `PER_LINUX32` (0x8), `UNAME26` (0x20000), `UNAME26 | PER_LINUX32`
/// (0x20008) and the query value 0xffffffff.
const PERSONALITIES: &[u64] = &[0x0, 0x0008, 0x20000, 0x20008, 0xffff_ffff];

/// Allowed when the kernel is at least 4.8 (since then a tracer cannot use
/// `ptrace` to bypass the tracee's seccomp filter), whatever the capabilities.
const PTRACE_SINCE_4_8: &[&str] = &["process_vm_readv", "process_vm_writev", "ptrace"];

/// The x86_64-only allowances (containerd's `case "amd64"`).
const ARCH_X86_64: &[&str] = &["arch_prctl", "modify_ldt"];

/// What `CAP_SYS_ADMIN` adds (mount API, namespaces, `bpf`, ...).
const CAP_SYS_ADMIN: &[&str] = &[
    "bpf",
    "clone",
    "clone3",
    "fanotify_init",
    "fsconfig",
    "fsmount",
    "fsopen",
    "fspick",
    "lookup_dcookie",
    "mount",
    "mount_setattr",
    "move_mount",
    "open_tree",
    "perf_event_open",
    "quotactl",
    "quotactl_fd",
    "setdomainname",
    "sethostname",
    "setns",
    "syslog",
    "umount",
    "umount2",
    "unshare",
];

/// What `CAP_SYS_MODULE` adds.
const CAP_SYS_MODULE: &[&str] = &["delete_module", "init_module", "finit_module"];

/// What `CAP_SYS_PTRACE` adds.
const CAP_SYS_PTRACE: &[&str] = &[
    "kcmp",
    "pidfd_getfd",
    "process_madvise",
    "process_vm_readv",
    "process_vm_writev",
    "ptrace",
];

/// What `CAP_SYS_RAWIO` adds.
const CAP_SYS_RAWIO: &[&str] = &["iopl", "ioperm"];

/// What `CAP_SYS_TIME` adds.
const CAP_SYS_TIME: &[&str] = &["settimeofday", "stime", "clock_settime", "clock_settime64"];

/// What `CAP_SYS_NICE` adds (NUMA memory policy).
const CAP_SYS_NICE: &[&str] = &[
    "get_mempolicy",
    "mbind",
    "set_mempolicy",
    "set_mempolicy_home_node", // kernel v5.17, libseccomp v2.5.4
];

/// The capability-conditional allowances, in containerd's order: each
/// capability in the bounding set adds one `Allow` rule for its syscalls.
const BY_CAPABILITY: &[(Capability, &[&str])] = &[
    (Capability::CAP_DAC_READ_SEARCH, &["open_by_handle_at"]),
    (Capability::CAP_SYS_ADMIN, CAP_SYS_ADMIN),
    (Capability::CAP_SYS_BOOT, &["reboot"]),
    (Capability::CAP_SYS_CHROOT, &["chroot"]),
    (Capability::CAP_SYS_MODULE, CAP_SYS_MODULE),
    (Capability::CAP_SYS_PACCT, &["acct"]),
    (Capability::CAP_SYS_PTRACE, CAP_SYS_PTRACE),
    (Capability::CAP_SYS_RAWIO, CAP_SYS_RAWIO),
    (Capability::CAP_SYS_TIME, CAP_SYS_TIME),
    (Capability::CAP_SYS_TTY_CONFIG, &["vhangup"]),
    (Capability::CAP_SYS_NICE, CAP_SYS_NICE),
    (Capability::CAP_SYSLOG, &["syslog"]),
    (Capability::CAP_BPF, &["bpf"]),
    (Capability::CAP_PERFMON, &["perf_event_open"]),
];

/// The `clone` flags that create namespaces; without `CAP_SYS_ADMIN`, `clone`
/// is allowed only when none of them is set.
const CLONE_NAMESPACE_FLAGS: u64 = (libc::CLONE_NEWNS
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUSER
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET
    | libc::CLONE_NEWCGROUP) as u64;

const _: () = assert!(CLONE_NAMESPACE_FLAGS == 0x7E02_0000);

/// containerd's `RuntimeDefault` for x86_64 hosts, given the container's
/// bounding capabilities (the cap-conditional rules depend on them).
///
/// Calls no rule allows fail with `EPERM`. The rules are, in order: the
/// unconditional allow-list; `socket` except `AF_ALG`/`AF_VSOCK`; five
/// `personality` values; `ptrace` and `process_vm_{readv,writev}` when the
/// host kernel is at least 4.8 (containerd checks the host's kernel the same
/// way); `arch_prctl` and `modify_ldt`; one rule per capability of
/// `BY_CAPABILITY` found in `caps`; and, without `CAP_SYS_ADMIN`, `clone`
/// without namespace flags plus `clone3` failing with `ENOSYS`.
pub(crate) fn runtime_default(caps: &[Capability]) -> SeccompProfile {
    let mut syscalls = vec![allow(ALLOWED)];
    syscalls.extend(
        SOCKET_DOMAINS
            .iter()
            .map(|&(op, domain)| allow_if("socket", 0, op, domain)),
    );
    syscalls.extend(
        PERSONALITIES
            .iter()
            .map(|&persona| allow_if("personality", 0, Op::Equal, persona)),
    );
    if crate::kernel::at_least(4, 8) {
        syscalls.push(allow(PTRACE_SINCE_4_8));
    }
    syscalls.push(allow(ARCH_X86_64));
    syscalls.extend(
        BY_CAPABILITY
            .iter()
            .filter(|(cap, _)| caps.contains(cap))
            .map(|(_, names)| allow(names)),
    );
    if !caps.contains(&Capability::CAP_SYS_ADMIN) {
        // Plain fork/thread creation, but no new namespaces.
        syscalls.push(SyscallRule {
            names: vec!["clone".to_string()],
            action: Action::Allow,
            errno_ret: None,
            args: vec![ArgCondition {
                index: 0,
                value: CLONE_NAMESPACE_FLAGS,
                value_two: 0,
                op: Op::MaskedEqual,
            }],
        });
        // ENOSYS (not EPERM) so that libcs fall back to the filtered clone.
        syscalls.push(fail(&["clone3"], libc::ENOSYS as u32));
    }
    SeccompProfile {
        default_action: Action::Errno,
        default_errno_ret: Some(libc::EPERM as u32),
        architectures: ARCHITECTURES.iter().map(|a| a.to_string()).collect(),
        flags: Vec::new(),
        syscalls,
    }
}

/// An unconditional `Allow` rule for `names`.
fn allow(names: &[&str]) -> SyscallRule {
    SyscallRule {
        names: names.iter().map(|n| n.to_string()).collect(),
        action: Action::Allow,
        errno_ret: None,
        args: Vec::new(),
    }
}

/// An `Allow` rule for `name` when argument `index` compares `op` to `value`.
fn allow_if(name: &str, index: u32, op: Op, value: u64) -> SyscallRule {
    SyscallRule {
        names: vec![name.to_string()],
        action: Action::Allow,
        errno_ret: None,
        args: vec![ArgCondition {
            index,
            value,
            value_two: 0,
            op,
        }],
    }
}

/// A rule making `names` fail with `errno`.
fn fail(names: &[&str], errno: u32) -> SyscallRule {
    SyscallRule {
        names: names.iter().map(|n| n.to_string()).collect(),
        action: Action::Errno,
        errno_ret: Some(errno),
        args: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// containerd's (and Docker's) default capability set.
    const DEFAULT_CAPS: &[Capability] = &crate::security::capabilities::DEFAULT_CAPS;

    /// Names of the `Allow` rules; `unconditional` keeps only those without
    /// argument conditions.
    fn allowed(p: &SeccompProfile, unconditional: bool) -> BTreeSet<&str> {
        p.syscalls
            .iter()
            .filter(|r| r.action == Action::Allow && (!unconditional || r.args.is_empty()))
            .flat_map(|r| r.names.iter().map(String::as_str))
            .collect()
    }

    fn rules_for<'a>(p: &'a SeccompProfile, name: &str) -> Vec<&'a SyscallRule> {
        p.syscalls
            .iter()
            .filter(|r| r.names.iter().any(|n| n == name))
            .collect()
    }

    #[test]
    fn defaults_and_architectures() {
        let p = runtime_default(DEFAULT_CAPS);
        assert_eq!(p.default_action, Action::Errno);
        assert_eq!(p.default_errno_ret, Some(libc::EPERM as u32));
        assert_eq!(
            p.architectures,
            ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]
        );
        assert!(p.flags.is_empty());
    }

    #[test]
    fn without_sys_admin_the_dangerous_calls_are_refused() {
        let p = runtime_default(DEFAULT_CAPS);
        let all = allowed(&p, false);
        for name in [
            "mount",
            "umount2",
            "unshare",
            "setns",
            "bpf",
            "perf_event_open",
            "reboot",
            "init_module",
            "finit_module",
            "keyctl",
            "add_key",
            "request_key",
            "io_uring_setup",
            "io_uring_enter",
            "io_uring_register",
            "open_by_handle_at",
            "fsopen",
            "syslog",
            "kcmp",
            "iopl",
            "settimeofday",
            "clone3",
        ] {
            assert!(!all.contains(name), "{name} must not be allowed");
        }
        let plain = allowed(&p, true);
        for name in [
            "read",
            "write",
            "execve",
            "exit_group",
            "openat2",
            "arch_prctl",
            "modify_ldt",
            "name_to_handle_at",
            "chroot", // CAP_SYS_CHROOT is a default capability
        ] {
            assert!(plain.contains(name), "{name} must be allowed");
        }
        assert!(
            !plain.contains("clone") && !plain.contains("socket") && !plain.contains("personality")
        );
    }

    #[test]
    fn clone_is_allowed_without_namespace_flags_and_clone3_gets_enosys() {
        let p = runtime_default(DEFAULT_CAPS);
        let clone = rules_for(&p, "clone");
        assert_eq!(clone.len(), 1);
        assert_eq!(clone[0].action, Action::Allow);
        assert_eq!(
            clone[0].args,
            [ArgCondition {
                index: 0,
                value: 0x7E02_0000,
                value_two: 0,
                op: Op::MaskedEqual
            }]
        );
        let clone3 = rules_for(&p, "clone3");
        assert_eq!(clone3.len(), 1);
        assert_eq!(clone3[0].action, Action::Errno);
        assert_eq!(clone3[0].errno_ret, Some(libc::ENOSYS as u32));
        assert!(clone3[0].args.is_empty());
    }

    #[test]
    fn sys_admin_allows_mount_and_namespaces() {
        let mut caps = DEFAULT_CAPS.to_vec();
        caps.push(Capability::CAP_SYS_ADMIN);
        let p = runtime_default(&caps);
        let plain = allowed(&p, true);
        for name in [
            "mount",
            "umount2",
            "unshare",
            "setns",
            "clone",
            "clone3",
            "bpf",
            "move_mount",
        ] {
            assert!(
                plain.contains(name),
                "{name} must be allowed with CAP_SYS_ADMIN"
            );
        }
        // No conditional clone rule and no clone3 ENOSYS rule any more.
        assert!(rules_for(&p, "clone").iter().all(|r| r.args.is_empty()));
        assert!(p.syscalls.iter().all(|r| r.action == Action::Allow));
    }

    #[test]
    fn each_capability_adds_its_syscalls() {
        for (cap, names) in BY_CAPABILITY {
            let p = runtime_default(&[*cap]);
            let plain = allowed(&p, true);
            for name in *names {
                assert!(plain.contains(name), "{cap:?} must allow {name}");
            }
        }
        let none_profile = runtime_default(&[]);
        let none = allowed(&none_profile, true);
        for name in [
            "open_by_handle_at",
            "reboot",
            "chroot",
            "acct",
            "vhangup",
            "mbind",
            "iopl",
        ] {
            assert!(!none.contains(name), "{name} needs a capability");
        }
    }

    #[test]
    fn socket_refuses_only_af_alg_and_af_vsock() {
        let p = runtime_default(DEFAULT_CAPS);
        let socket = rules_for(&p, "socket");
        assert_eq!(socket.len(), 3);
        let matches = |c: &ArgCondition, arg: u64| match c.op {
            Op::NotEqual => arg != c.value,
            Op::LessThan => arg < c.value,
            Op::LessOrEqual => arg <= c.value,
            Op::Equal => arg == c.value,
            Op::GreaterOrEqual => arg >= c.value,
            Op::GreaterThan => arg > c.value,
            Op::MaskedEqual => arg & c.value == c.value_two,
        };
        for domain in 0..64u64 {
            let ok = socket.iter().any(|r| {
                r.action == Action::Allow
                    && r.args.iter().all(|c| c.index == 0 && matches(c, domain))
            });
            assert_eq!(ok, domain != 38 && domain != 40, "socket domain {domain}");
        }
    }

    #[test]
    fn personality_values() {
        let p = runtime_default(DEFAULT_CAPS);
        let values: Vec<u64> = rules_for(&p, "personality")
            .iter()
            .map(|r| {
                assert_eq!(r.action, Action::Allow);
                assert_eq!(r.args.len(), 1);
                assert_eq!((r.args[0].index, r.args[0].op), (0, Op::Equal));
                r.args[0].value
            })
            .collect();
        assert_eq!(values, [0x0, 0x8, 0x20000, 0x20008, 0xffff_ffff]);
    }

    #[test]
    fn allow_list_has_no_duplicates() {
        let unique: BTreeSet<_> = ALLOWED.iter().collect();
        assert_eq!(unique.len(), ALLOWED.len());
    }

    #[test]
    fn compiles_with_libseccomp() {
        for caps in [
            DEFAULT_CAPS.to_vec(),
            vec![],
            vec![Capability::CAP_SYS_ADMIN, Capability::CAP_SYS_PTRACE],
        ] {
            let p = runtime_default(&caps);
            let ctx = crate::security::seccomp::compile(&p).unwrap();
            let mut f = tempfile::tempfile().unwrap();
            ctx.export_bpf(&f).unwrap();
            assert!(std::io::Seek::seek(&mut f, std::io::SeekFrom::End(0)).unwrap() > 0);
        }
    }
}
