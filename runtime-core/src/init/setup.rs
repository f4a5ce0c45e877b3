//! Stage two of the init: inside the new namespaces, set the container up
//! and `execve` the process.

use std::convert::Infallible;
use std::ffi::CString;
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use nix::sys::socket::{accept4, SockFlag};
use nix::unistd::{execve, getcwd, setgroups, setresgid, setresuid, setsid, Gid, Uid};

use crate::config::{Config, NamespaceKind};
use crate::process::channel::{
    Bootstrap, Channel, FromInit, InitFailure, Task, ToInit, FIRST_EXTRA_FD,
};

fn fail(step: &str, e: impl std::fmt::Display) -> InitFailure {
    InitFailure::at(step, e)
}
use crate::process::ProcessSpec;
use crate::security::capabilities::{self, Capabilities};
use crate::security::seccomp::{self, SeccompProfile};
use crate::security::{rlimits, user};
use crate::{rootfs, sys};

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Everything ready for `execve`.
struct Exec {
    path: CString,
    args: Vec<CString>,
    env: Vec<CString>,
    /// The seccomp filter, and whether the final capability sets still have
    /// to be applied after it (see [`crate::security::seccomp`]).
    seccomp: Option<SeccompProfile>,
    deferred_caps: Option<Capabilities>,
    /// The AppArmor profile to switch to on `execve`, with the process's
    /// own `attr/exec` file (opened before `pivot_root`).
    apparmor: Option<(String, std::fs::File)>,
    /// The SELinux label to switch to on `execve`, likewise.
    selinux: Option<(String, std::fs::File)>,
}

pub(super) fn stage_two(
    ch: &mut Channel,
    b: &Bootstrap,
    mut listener: Option<OwnedFd>,
    idmapped: rootfs::Idmapped,
) -> Result<Infallible, InitFailure> {
    let (config, is_init) = match &b.task {
        Task::Init { config } => (config.as_ref(), true),
        Task::Exec { config } => (config.as_ref(), false),
    };
    let mut console = None;
    // Opened now, through the runtime's /proc (before any mount of the
    // container's), and written last.
    let apparmor = match &config.apparmor_profile {
        Some(p) => Some((
            p.clone(),
            crate::security::apparmor::open_exec_attr()
                .map_err(|e| fail("open the AppArmor exec attribute", e))?,
        )),
        None => None,
    };
    let selinux = match &config.selinux_label {
        Some(l) => Some((
            l.clone(),
            crate::security::selinux::open_exec_attr()
                .map_err(|e| fail("open the SELinux exec attribute", e))?,
        )),
        None => None,
    };
    if is_init {
        // CRIU needs the first process of the namespace to lead its session.
        setsid().map_err(|e| fail("setsid", e))?;
        setup_namespaces(config)?;
        let rootfs_err =
            |e: rootfs::RootfsError| fail("set up the root filesystem", error_chain(&e));
        let prepared = rootfs::prepare(
            config,
            config.has(NamespaceKind::User),
            b.process.terminal.is_some(),
            idmapped,
        )
        .map_err(rootfs_err)?;
        create_hooks(ch, b, config)?;
        console = prepared.switch_root(config).map_err(rootfs_err)?;
    } else {
        if b.process.terminal.is_some() {
            // An exec'd process gets its own session and pty.
            setsid().map_err(|e| fail("setsid", e))?;
            let root = std::fs::File::open("/").map_err(|e| fail("open /", e))?;
            console = Some(
                rootfs::console::open(std::os::fd::AsFd::as_fd(&root))
                    .map_err(|e| fail("open a terminal", error_chain(&e)))?,
            );
        }
    }
    if let (Some(c), Some(size)) = (console.take(), b.process.terminal) {
        attach_console(ch, c, size)?;
    }
    rlimits::apply(&config.rlimits).map_err(|e| fail("set rlimits", error_chain(&e)))?;
    let mut exec = prepare_exec(config, &b.process)?;
    exec.apparmor = apparmor;
    exec.selinux = selinux;
    place_extra_fds(b.extra_fds, ch, listener.as_mut())?;
    sys::reset_signals();
    ch.send(&FromInit::Ready, &[])
        .map_err(|e| fail("report ready", e))?;
    match listener {
        Some(l) => {
            // Wait until someone connects to the start socket (Container::release),
            // then exec; that connection gets the error if exec fails.
            let conn = loop {
                match accept4(l.as_raw_fd(), SockFlag::SOCK_CLOEXEC) {
                    Ok(fd) => break fd,
                    Err(nix::Error::EINTR) => continue,
                    Err(e) => return Err(fail("wait for start", e)),
                }
            };
            drop(l);
            // SAFETY: accept4 returned a new fd that we own.
            let mut conn = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(conn) });
            let err = match start_hooks(b, config) {
                Ok(()) => do_exec(&exec),
                Err(e) => e,
            };
            let msg = serde_json::to_vec(&err).unwrap_or_default();
            let _ = conn.write_all(&msg);
            Err(err)
        }
        None => Err(do_exec(&exec)),
    }
}

/// The hooks of the create step, with every mount in place and before
/// `pivot_root`: the runtime's (`prestart`, `createRuntime`, in its
/// namespaces), then the init's own `createContainer` hooks, here in the
/// container's namespaces (their paths still resolve on the host).
fn create_hooks(ch: &mut Channel, b: &Bootstrap, config: &Config) -> Result<(), InitFailure> {
    let Some(state) = &b.hook_state else {
        return Ok(());
    };
    if config.hooks.runtime_create().next().is_some() {
        ch.send(&FromInit::CreateHooks, &[])
            .map_err(|e| fail("ask for the createRuntime hooks", e))?;
        match ch.recv::<ToInit>() {
            Ok((ToInit::HooksDone, _)) => {}
            Ok(_) => {
                return Err(fail(
                    "wait for the createRuntime hooks",
                    "unexpected message",
                ))
            }
            Err(e) => return Err(fail("wait for the createRuntime hooks", e)),
        }
    }
    run_own_hooks(
        "createContainer",
        &config.hooks.create_container,
        state,
        "creating",
    )
}

/// The `startContainer` hooks: after the start request, before `execve`,
/// in the container (its root, its user and capabilities).
fn start_hooks(b: &Bootstrap, config: &Config) -> Result<(), InitFailure> {
    match &b.hook_state {
        Some(state) => run_own_hooks(
            "startContainer",
            &config.hooks.start_container,
            state,
            "created",
        ),
        None => Ok(()),
    }
}

fn run_own_hooks(
    point: &'static str,
    hooks: &[crate::hooks::Hook],
    state: &crate::hooks::HookState,
    status: &str,
) -> Result<(), InitFailure> {
    if hooks.is_empty() {
        return Ok(());
    }
    let mut state = state.clone();
    state.status = status.into();
    state.pid = Some(std::process::id() as i32);
    crate::hooks::run_all(hooks.iter().map(|h| (point, h)), &state)
        .map_err(|e| fail(&format!("run the {point} hooks"), e))
}

/// Makes the pty the process's controlling terminal and stdio, and hands
/// the master to the runtime.
fn attach_console(
    ch: &Channel,
    c: rootfs::console::Console,
    size: crate::process::ConsoleSize,
) -> Result<(), InitFailure> {
    use std::os::fd::AsFd;
    sys::set_winsize(c.master.as_fd(), size.rows, size.cols)
        .map_err(|e| fail("set the terminal size", e))?;
    sys::set_controlling_tty(c.peer.as_fd())
        .map_err(|e| fail("set the controlling terminal", e))?;
    for target in 0..3 {
        nix::unistd::dup2(c.peer.as_raw_fd(), target)
            .map_err(|e| fail("make the terminal stdio", e))?;
    }
    drop(c.peer);
    ch.send(&FromInit::Console, &[c.master.as_fd()])
        .map_err(|e| fail("hand over the terminal", e))
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

fn setup_namespaces(config: &Config) -> Result<(), InitFailure> {
    // /proc/sys of the runtime's /proc shows the namespaces of the process
    // reading it: ours, the container's, so this sets the container's values.
    for (name, value) in &config.sysctls {
        let path = PathBuf::from("/proc/sys").join(name.replace('.', "/"));
        crate::sys::write_proc_file(&path, value)
            .map_err(|e| fail(&format!("set sysctl {name}"), e))?;
    }
    if let Some(h) = &config.hostname {
        nix::unistd::sethostname(h).map_err(|e| fail("set hostname", e))?;
    }
    if let Some(d) = &config.domainname {
        let c = CString::new(d.as_str()).map_err(|e| fail("set domainname", e))?;
        // SAFETY: `c` is a valid C string of the given length.
        let r = unsafe { libc::setdomainname(c.as_ptr(), d.len()) };
        if r != 0 {
            return Err(fail("set domainname", nix::Error::last()));
        }
    }
    if config.loopback && config.creates(NamespaceKind::Network) {
        sys::interface_up(c"lo").map_err(|e| fail("bring up lo", e))?;
    }
    Ok(())
}

/// Reads a file of the container (after `pivot_root`, `/` is its root);
/// see [`user::read_id_file`].
fn read_or_empty(path: &str) -> String {
    match std::fs::File::open("/") {
        Ok(root) => user::read_id_file(root.as_fd(), path),
        Err(_) => String::new(),
    }
}

fn prepare_exec(config: &Config, p: &ProcessSpec) -> Result<Exec, InitFailure> {
    let resolved = user::resolve(
        &p.user,
        &read_or_empty("/etc/passwd"),
        &read_or_empty("/etc/group"),
    )
    .map_err(|e| fail("resolve the user", e))?;
    let mut env = p.env.clone();
    if crate::process::env::get(&env, "HOME").is_none() {
        env.push(format!("HOME={}", resolved.home).into());
    }
    // The working directory: created when missing, and checked to be inside
    // the container (CVE-2024-21626: a cwd left on a host fd escaped it).
    // Resolved and created inside the container's root, never through a
    // magic link such as /proc/1/root while the init is still privileged.
    let root = std::fs::File::open("/").map_err(|e| fail("open /", e))?;
    let cwd = crate::rootfs::resolve::create_in_root(
        std::os::fd::AsFd::as_fd(&root),
        &p.cwd,
        crate::rootfs::resolve::Create::Dir,
    )
    .map_err(|e| {
        fail(
            &format!("create the working directory {}", p.cwd.display()),
            e,
        )
    })?;
    nix::unistd::fchdir(cwd.as_raw_fd())
        .map_err(|e| fail(&format!("chdir to {}", p.cwd.display()), e))?;
    drop(cwd);
    match getcwd() {
        Ok(cwd) if cwd.is_absolute() => {}
        _ => {
            return Err(fail(
                "check the working directory",
                "it is outside the container's root",
            ))
        }
    }
    let path_var = crate::process::env::get(&env, "PATH")
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .unwrap_or_else(|| DEFAULT_PATH.to_string());
    let program = lookup(&p.args[0], &path_var)?;
    let caps = p.capabilities.as_ref().unwrap_or(&config.capabilities);
    let nnp = p.no_new_privileges.unwrap_or(config.no_new_privileges);
    // Without no_new_privs, loading the filter needs CAP_SYS_ADMIN: keep the
    // permitted set effective until the filter is in, then apply the final sets.
    let defer = config.seccomp.is_some() && !nnp;
    apply_identity(caps, &resolved, nnp, defer)?;
    let cstr = |s: &str| {
        CString::new(s).map_err(|_| fail("prepare exec", format!("{s:?} contains a NUL byte")))
    };
    Ok(Exec {
        path: cstr(&program.to_string_lossy())?,
        args: p.args.iter().map(|a| cstr(a)).collect::<Result<_, _>>()?,
        env: env
            .into_iter()
            .map(|e| {
                CString::new(e.into_vec())
                    .map_err(|_| fail("prepare exec", "an environment entry contains a NUL byte"))
            })
            .collect::<Result<_, _>>()?,
        seccomp: config.seccomp.clone(),
        deferred_caps: defer.then(|| caps.clone()),
        apparmor: None,
        selinux: None,
    })
}

/// `execvp`-style lookup of `program` in `path_var`, inside the container.
fn lookup(program: &str, path_var: &str) -> Result<PathBuf, InitFailure> {
    let is_exec = |p: &Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.contains('/') {
        let p = PathBuf::from(program);
        return if is_exec(&p) {
            Ok(p)
        } else {
            Err(fail(
                "find the executable",
                format!("{program}: no such executable file"),
            ))
        };
    }
    path_var
        .split(':')
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join(program))
        .find(|p| is_exec(p))
        .ok_or_else(|| {
            fail(
                "find the executable",
                format!("{program:?} not found in $PATH ({path_var})"),
            )
        })
}

/// Bounding set, then uid/gid (keeping capabilities across the switch), then
/// the capability sets, then no_new_privs. Every failure is fatal: a
/// container that would run with more privilege than asked does not start.
fn apply_identity(
    caps: &Capabilities,
    u: &user::ResolvedUser,
    nnp: bool,
    defer_caps: bool,
) -> Result<(), InitFailure> {
    capabilities::apply_bounding(&caps.bounding)
        .map_err(|e| fail("drop bounding capabilities", error_chain(&e)))?;
    sys::set_keepcaps(true).map_err(|e| fail("keep capabilities", e))?;
    let groups: Vec<Gid> = u
        .additional_gids
        .iter()
        .map(|g| Gid::from_raw(*g))
        .collect();
    match setgroups(&groups) {
        Ok(()) => {}
        // A user namespace with setgroups denied: only an empty list was
        // possible anyway.
        Err(nix::Error::EPERM) if groups.is_empty() => {}
        Err(e) => return Err(fail("set supplementary groups", e)),
    }
    let gid = Gid::from_raw(u.gid);
    setresgid(gid, gid, gid).map_err(|e| fail(&format!("set gid {}", u.gid), e))?;
    let uid = Uid::from_raw(u.uid);
    setresuid(uid, uid, uid).map_err(|e| fail(&format!("set uid {}", u.uid), e))?;
    sys::set_keepcaps(false).map_err(|e| fail("reset keepcaps", e))?;
    if defer_caps {
        // Everything still permitted becomes effective until the filter is in.
        let (_, permitted, _) = sys::capget().map_err(|e| fail("read capabilities", e))?;
        sys::capset(permitted, permitted, 0)
            .map_err(|e| fail("keep capabilities for seccomp", e))?;
    } else {
        capabilities::apply_process_sets(caps)
            .map_err(|e| fail("set capabilities", error_chain(&e)))?;
    }
    if nnp {
        sys::set_no_new_privs().map_err(|e| fail("set no_new_privs", e))?;
    }
    Ok(())
}

/// Moves the process's extra fds from `FIRST_EXTRA_FD..` to `3..`, after
/// moving every fd we still need out of the way, and marks everything else
/// close-on-exec.
fn place_extra_fds(
    count: usize,
    ch: &mut Channel,
    listener: Option<&mut OwnedFd>,
) -> Result<(), InitFailure> {
    let count = RawFd::try_from(count).map_err(|e| fail("place fds", e))?;
    let moves: Vec<(RawFd, RawFd)> = (0..count).map(|i| (FIRST_EXTRA_FD + i, 3 + i)).collect();
    let plan = crate::process::fdlayout::FdPlan::new(moves).map_err(|e| fail("place fds", e))?;
    // The channel and the listener sit at low numbers that may be targets:
    // move them above the targets first (they are close-on-exec).
    ch.relocate_above(plan.scratch_base)
        .map_err(|e| fail("move the bootstrap channel", e))?;
    if let Some(l) = listener {
        if l.as_raw_fd() < plan.scratch_base {
            *l = dup_above(l.as_raw_fd(), plan.scratch_base)?;
        }
    }
    let mut scratch = Vec::new();
    for &(src, _) in &plan.moves {
        scratch.push(dup_above(src, plan.scratch_base)?);
    }
    for (tmp, &(_, dst)) in scratch.iter().zip(&plan.moves) {
        nix::unistd::dup2(tmp.as_raw_fd(), dst).map_err(|e| fail("place fds", e))?;
    }
    drop(scratch);
    sys::cloexec_from(3 + count as u32).map_err(|e| fail("mark fds close-on-exec", e))
}

fn dup_above(fd: RawFd, min: RawFd) -> Result<OwnedFd, InitFailure> {
    let new = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(min))
        .map_err(|e| fail("place fds", e))?;
    // SAFETY: fcntl returned a new fd that we own.
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

/// The last steps: the AppArmor profile or SELinux label for the exec, the
/// seccomp filter
/// (then, when deferred, the final capability sets), then `execve`.
/// Returns only on failure.
fn do_exec(e: &Exec) -> InitFailure {
    if let Some((profile, attr)) = &e.apparmor {
        if let Err(err) = crate::security::apparmor::switch_on_exec(attr, profile) {
            return fail(
                &format!("apply AppArmor profile {profile} (is it loaded?)"),
                err,
            );
        }
    }
    if let Some((label, attr)) = &e.selinux {
        if let Err(err) = crate::security::selinux::switch_on_exec(attr, label) {
            return fail(&format!("apply SELinux label {label}"), err);
        }
    }
    if let Some(p) = &e.seccomp {
        if let Err(err) = seccomp::install(p) {
            return fail("install the seccomp filter", err);
        }
    }
    if let Some(caps) = &e.deferred_caps {
        if let Err(err) = capabilities::apply_process_sets(caps) {
            return fail("set capabilities", error_chain(&err));
        }
    }
    match execve(&e.path, &e.args, &e.env) {
        Ok(never) => match never {},
        Err(err) => fail(&format!("execute {}", e.path.to_string_lossy()), err),
    }
}
