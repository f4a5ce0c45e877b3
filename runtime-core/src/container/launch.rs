//! Starting the bootstrap and driving the protocol with it, shared by the
//! init ([`super::Container::start`]) and [`super::Container::exec`].

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};

use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::Pid;

use super::ContainerError;
use crate::cgroups::Cgroup;
use crate::config::{IdMap, NamespaceKind};
use crate::hooks::{HookState, Hooks};
use crate::init::INIT_ARG;
use crate::process::channel::{
    Bootstrap, Channel, ChannelError, FromInit, Task, ToInit, FIRST_EXTRA_FD, INIT_SOCKET_FD,
    MAX_FDS,
};
use crate::process::fdlayout::FdPlan;
use crate::process::{sealed, spawn, ExitStatus, InitBinary, Process, Stdio};

/// Everything [`launch`] needs.
pub(super) struct Launch<'a> {
    pub task: Task,
    pub process: Process,
    pub join: Vec<(NamespaceKind, OwnedFd)>,
    pub clone_flags: i32,
    pub new_user_ns: bool,
    pub uid_mappings: &'a [IdMap],
    pub gid_mappings: &'a [IdMap],
    pub listener: Option<OwnedFd>,
    pub cgroup: Option<&'a Cgroup>,
    pub init_binary: &'a InitBinary,
    /// Sources to mount idmapped: the rootfs, and `(mount index, source)`.
    pub idmap: IdmapSources,
    /// The container's state for its hooks (an init with hooks only).
    pub hook_state: Option<HookState>,
}

/// What [`idmapped_trees`] clones and maps.
#[derive(Default)]
pub(super) struct IdmapSources {
    pub rootfs: Option<std::path::PathBuf>,
    pub mounts: Vec<(usize, std::path::PathBuf)>,
    /// Overlay layer directories, idmapped one by one.
    pub layers: Vec<std::path::PathBuf>,
}

impl IdmapSources {
    /// What `config` has idmapped: its rootfs (without an overlay) or each
    /// overlay layer and the parent of its upper and work directories, when
    /// `idmap_rootfs`; and its bind mounts marked `idmap`.
    pub(super) fn of(config: &crate::config::Config) -> Self {
        IdmapSources {
            rootfs: (config.idmap_rootfs && config.overlay.is_none())
                .then(|| config.rootfs.clone()),
            layers: match (&config.overlay, config.idmap_rootfs) {
                (Some(o), true) => {
                    let mut l = o.lowerdirs.clone();
                    l.extend(o.upperdir.parent().map(|p| p.to_path_buf()));
                    l
                }
                _ => Vec::new(),
            },
            mounts: config
                .mounts
                .iter()
                .enumerate()
                .filter(|(_, m)| m.idmap)
                .filter_map(|(i, m)| Some((i, m.source.clone()?)))
                .collect(),
        }
    }

    fn is_empty(&self) -> bool {
        self.rootfs.is_none() && self.mounts.is_empty() && self.layers.is_empty()
    }
}

/// Clones each source as a detached mount tree and idmaps it through the
/// bootstrap's (new) user namespace. Done here, by the runtime: creating an
/// idmapped mount needs privilege over the source mount, which the init,
/// inside its user namespace, does not have; it only attaches the trees.
fn idmapped_trees(
    bootstrap_pid: i32,
    src: &IdmapSources,
) -> Result<(crate::process::channel::IdmappedTrees, Vec<OwnedFd>), ContainerError> {
    if src.is_empty() {
        return Ok(Default::default());
    }
    let userns_path = format!("/proc/{bootstrap_pid}/ns/user");
    let userns = File::open(&userns_path).map_err(|source| ContainerError::StateIo {
        path: userns_path.into(),
        source,
    })?;
    idmapped_trees_in(&userns, src)
}

/// [`idmapped_trees`] through the user namespace `userns` (an open
/// namespace file): the trees, and their fds by the indices the trees name.
pub(super) fn idmapped_trees_in(
    userns: &File,
    src: &IdmapSources,
) -> Result<(crate::process::channel::IdmappedTrees, Vec<OwnedFd>), ContainerError> {
    let mut trees = crate::process::channel::IdmappedTrees::default();
    let mut fds = Vec::new();
    let make = |path: &std::path::Path| -> Result<OwnedFd, ContainerError> {
        let tree = crate::sys::open_tree_clone(path).map_err(|source| ContainerError::Sys {
            step: "clone a mount tree to idmap",
            source,
        })?;
        crate::sys::mount_setattr_idmap(tree.as_fd(), userns.as_fd()).map_err(|source| {
            ContainerError::Sys {
                step: "idmap a mount (needs a filesystem that supports idmapped mounts)",
                source,
            }
        })?;
        Ok(tree)
    };
    if let Some(r) = &src.rootfs {
        trees.rootfs = Some(fds.len());
        fds.push(make(r)?);
    }
    for (i, p) in &src.mounts {
        trees.mounts.push((*i, fds.len()));
        fds.push(make(p)?);
    }
    for p in &src.layers {
        trees.layers.push((p.clone(), fds.len()));
        fds.push(make(p)?);
    }
    Ok((trees, fds))
}

/// Starts the bootstrap, waits for `Ready`, and returns the container
/// process's host pid. For an exec, also waits for the `execve` (or its error).
/// On error every process started here is killed and reaped.
pub(super) fn launch(l: Launch<'_>) -> Result<(i32, Option<OwnedFd>), ContainerError> {
    let exe = sealed::sealed_copy(l.init_binary).map_err(ContainerError::InitBinary)?;
    let (ch, child_end) = Channel::pair()?;
    let null = || {
        File::open("/dev/null")
            .map(OwnedFd::from)
            .map_err(|source| ContainerError::StateIo {
                path: "/dev/null".into(),
                source,
            })
    };
    let mut holders: Vec<OwnedFd> = Vec::new();
    let mut stdio_fd = |s: &Stdio, n: RawFd| -> Result<RawFd, ContainerError> {
        Ok(match s {
            Stdio::Null => {
                let fd = null()?;
                let raw = fd.as_raw_fd();
                holders.push(fd);
                raw
            }
            Stdio::Inherit => n,
            Stdio::Fd(fd) => fd.as_raw_fd(),
        })
    };
    let mut moves = vec![
        (stdio_fd(&l.process.stdin, 0)?, 0),
        (stdio_fd(&l.process.stdout, 1)?, 1),
        (stdio_fd(&l.process.stderr, 2)?, 2),
        (child_end.as_raw_fd(), INIT_SOCKET_FD),
    ];
    for (i, fd) in l.process.extra_fds.iter().enumerate() {
        moves.push((fd.as_raw_fd(), FIRST_EXTRA_FD + i as RawFd));
    }
    let plan = FdPlan::new(moves).map_err(|e| ContainerError::InvalidProcess(e.to_string()))?;
    let argv = [
        CString::new("berth-init").expect("no NUL"),
        CString::new(INIT_ARG).expect("no NUL"),
    ];
    let bootstrap_pid =
        spawn::spawn(exe.as_fd(), &argv, &plan).map_err(|source| ContainerError::Sys {
            step: "fork the container bootstrap",
            source,
        })?;
    drop(child_end);
    drop(holders);
    let mut run = Running {
        bootstrap: Some(bootstrap_pid),
        child: None,
    };
    match drive(&ch, l, &mut run) {
        Ok(out) => {
            run.reap_bootstrap();
            Ok(out)
        }
        Err(e) => {
            let status = run.abort();
            Err(match e {
                ContainerError::Channel(ChannelError::Closed) => ContainerError::InitExited(status),
                other => other,
            })
        }
    }
}

/// Processes started by a launch, for cleanup.
struct Running {
    bootstrap: Option<i32>,
    child: Option<i32>,
}

impl Running {
    fn reap_bootstrap(&mut self) -> Option<ExitStatus> {
        let pid = self.bootstrap.take()?;
        loop {
            match waitpid(Pid::from_raw(pid), None) {
                Ok(WaitStatus::Exited(_, c)) => return Some(ExitStatus::Exited(c)),
                Ok(WaitStatus::Signaled(_, s, _)) => return Some(ExitStatus::Signaled(s as i32)),
                Ok(_) | Err(nix::Error::EINTR) => continue,
                Err(_) => return None,
            }
        }
    }

    /// Kills and reaps everything; returns how the container process (or,
    /// when there was none, the bootstrap) ended.
    fn abort(&mut self) -> Option<ExitStatus> {
        let mut child_status = None;
        if let Some(c) = self.child.take() {
            // It may have died on its own already: look before killing.
            child_status =
                match waitpid(Pid::from_raw(c), Some(nix::sys::wait::WaitPidFlag::WNOHANG)) {
                    Ok(WaitStatus::Exited(_, code)) => Some(ExitStatus::Exited(code)),
                    Ok(WaitStatus::Signaled(_, s, _)) => Some(ExitStatus::Signaled(s as i32)),
                    _ => {
                        let _ = kill(Pid::from_raw(c), Signal::SIGKILL);
                        let _ = crate::process::wait_child(c);
                        None
                    }
                };
        }
        if let Some(b) = self.bootstrap {
            let _ = kill(Pid::from_raw(b), Signal::SIGKILL);
        }
        let bootstrap_status = self.reap_bootstrap();
        child_status.or(bootstrap_status)
    }
}

fn write_id_map(pid: i32, file: &str, maps: &[IdMap]) -> Result<(), ContainerError> {
    let text: String = maps
        .iter()
        .map(|m| format!("{} {} {}\n", m.container_id, m.host_id, m.size))
        .collect();
    let path = format!("/proc/{pid}/{file}");
    std::fs::write(&path, text).map_err(|source| ContainerError::StateIo {
        path: path.into(),
        source,
    })
}

/// The runtime's hooks of the create step, with the container's host pid;
/// then lets the init go on.
#[inline(never)]
#[cold]
fn create_hooks(
    ch: &Channel,
    hooks: &Hooks,
    state: Option<&HookState>,
    pid: i32,
) -> Result<(), ContainerError> {
    if let Some(state) = state {
        let mut state = state.clone();
        state.pid = Some(pid);
        crate::hooks::run_all(hooks.runtime_create(), &state)?;
    }
    ch.send(&ToInit::HooksDone, &[])?;
    Ok(())
}

fn drive(
    ch: &Channel,
    l: Launch<'_>,
    run: &mut Running,
) -> Result<(i32, Option<OwnedFd>), ContainerError> {
    let bootstrap_pid = run.bootstrap.expect("bootstrap started");
    if let Some(cg) = l.cgroup {
        cg.add_pid(bootstrap_pid)?;
    }
    let mut fds: Vec<BorrowedFd<'_>> = Vec::new();
    let mut join = BTreeMap::new();
    for (kind, fd) in &l.join {
        join.insert(*kind, fds.len());
        fds.push(fd.as_fd());
    }
    let listener = l.listener.as_ref().map(|fd| {
        fds.push(fd.as_fd());
        fds.len() - 1
    });
    let is_exec = matches!(l.task, Task::Exec { .. });
    let hooks = match (&l.task, &l.hook_state) {
        (Task::Init { config }, Some(_)) => config.hooks.clone(),
        _ => Hooks::default(),
    };
    // Asked for before the bootstrap reported the child: run when it does.
    let mut hooks_pending = false;
    let msg = ToInit::Bootstrap(Box::new(Bootstrap {
        task: l.task,
        process: l.process.spec.clone(),
        extra_fds: l.process.extra_fds.len(),
        join,
        clone_flags: l.clone_flags,
        new_user_ns: l.new_user_ns,
        idmap_in_joined_userns: !l.new_user_ns
            && l.join.iter().any(|(k, _)| *k == NamespaceKind::User)
            && !l.idmap.is_empty(),
        listener,
        hook_state: l.hook_state.clone(),
    }));
    ch.send(&msg, &fds)?;
    drop(fds);
    let mut ready = false;
    let mut failure = None;
    let mut console = None;
    loop {
        let msg = match ch.recv::<FromInit>() {
            Ok((m, fds)) => {
                if matches!(m, FromInit::Console) {
                    console = fds.into_iter().next();
                }
                m
            }
            Err(ChannelError::Closed) if failure.is_some() => break,
            // For an exec, the socket closes when execve succeeds.
            Err(ChannelError::Closed) if ready && is_exec && run.child.is_some() => break,
            Err(e) => return Err(e.into()),
        };
        match msg {
            FromInit::NeedIdMaps | FromInit::NeedIdTrees => {
                if matches!(msg, FromInit::NeedIdMaps) {
                    write_id_map(bootstrap_pid, "uid_map", l.uid_mappings)?;
                    write_id_map(bootstrap_pid, "gid_map", l.gid_mappings)?;
                }
                let (mut trees, fds) = idmapped_trees(bootstrap_pid, &l.idmap)?;
                trees.fds = fds.len();
                let borrowed: Vec<BorrowedFd<'_>> = fds.iter().map(|f| f.as_fd()).collect();
                let mut batches = borrowed.chunks(MAX_FDS);
                ch.send(&ToInit::IdMapsWritten(trees), batches.next().unwrap_or(&[]))?;
                for batch in batches {
                    ch.send(&ToInit::MoreFds, batch)?;
                }
            }
            // Exactly one (it may follow Ready: two processes send), really a child of ours
            // (CLONE_PARENT): a pid from anywhere else is never trusted.
            FromInit::Child { pid } if run.child.is_none() => {
                if crate::sys::proc_stat(pid).map(|s| s.ppid) != Some(std::process::id() as i32) {
                    return Err(ContainerError::Init(crate::process::channel::InitFailure {
                        step: "bootstrap".into(),
                        message: format!("reported pid {pid} is not a child of the runtime"),
                    }));
                }
                run.child = Some(pid);
                run.reap_bootstrap();
                if hooks_pending {
                    hooks_pending = false;
                    create_hooks(ch, &hooks, l.hook_state.as_ref(), pid)?;
                }
                if ready && !is_exec {
                    break;
                }
            }
            FromInit::CreateHooks => match run.child {
                Some(pid) => create_hooks(ch, &hooks, l.hook_state.as_ref(), pid)?,
                None => hooks_pending = true,
            },
            FromInit::Console => {
                if console.is_none() {
                    return Err(ContainerError::Init(crate::process::channel::InitFailure {
                        step: "terminal".into(),
                        message: "console message without a pty fd".into(),
                    }));
                }
            }
            FromInit::Ready => {
                ready = true;
                if !is_exec && run.child.is_some() {
                    break;
                }
            }
            FromInit::Child { .. } => {
                return Err(ContainerError::Init(crate::process::channel::InitFailure {
                    step: "bootstrap".into(),
                    message: "unexpected child pid message".into(),
                }))
            }
            // Keep reading until the channel closes, so that a child reported
            // after the error is known (and killed and reaped by abort).
            FromInit::Error(f) => {
                failure.get_or_insert(f);
            }
        }
        if failure.is_some() && run.child.is_some() {
            break;
        }
    }
    if let Some(f) = failure {
        return Err(ContainerError::Init(f));
    }
    let pid = run.child.take().ok_or(ContainerError::InitExited(None))?;
    Ok((pid, console))
}
