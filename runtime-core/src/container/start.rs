//! Starting the init: `start` (set up, then wait), `release` (let it exec),
//! `run` (both).

use std::io::Read;
use std::os::fd::OwnedFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;

use super::launch::{launch, IdmapSources, Launch};
use super::state::{now_nanos, InitState, START_SOCKET};
use super::{Container, ContainerError, Operation, Status};
use crate::cgroups::Cgroup;
use crate::config::NamespaceKind;
use crate::process::channel::{InitFailure, Task};
use crate::process::{Process, ProcessHandle, ProcessSpec};
use crate::sys;

pub(super) fn validate_process(p: &ProcessSpec) -> Result<(), ContainerError> {
    let bad = |m: &str| Err(ContainerError::InvalidProcess(m.to_string()));
    if p.args.is_empty() || p.args[0].is_empty() {
        return bad("args: at least the program is required");
    }
    if !crate::config::validate::is_clean_absolute(&p.cwd) {
        return bad("cwd: must be an absolute path without '..'");
    }
    use std::os::unix::ffi::OsStrExt;
    if p.args.iter().any(|s| s.contains('\0')) || p.env.iter().any(|e| e.as_bytes().contains(&0)) {
        return bad("args/env: NUL byte");
    }
    if let Some(e) = p
        .env
        .iter()
        .find(|e| !e.as_bytes().contains(&b'=') || e.as_bytes().starts_with(b"="))
    {
        return Err(ContainerError::InvalidProcess(format!(
            "env: {e:?} is not NAME=value"
        )));
    }
    Ok(())
}

fn open_ns(
    kind: NamespaceKind,
    path: &std::path::Path,
) -> Result<(NamespaceKind, OwnedFd), ContainerError> {
    let f = std::fs::File::open(path).map_err(|source| ContainerError::StateIo {
        path: path.into(),
        source,
    })?;
    Ok((kind, OwnedFd::from(f)))
}

impl Container {
    fn start_socket_path(&self) -> PathBuf {
        self.dir.join(START_SOCKET)
    }

    /// Starts the container's init for `process`: namespaces, cgroup, rootfs,
    /// credentials are all set up, then the init waits (status
    /// [`Status::Created`]) until [`Container::release`] lets it `execve`.
    pub fn start(&mut self, process: Process) -> Result<ProcessHandle, ContainerError> {
        if self.state.init.is_some() {
            return Err(ContainerError::AlreadyStarted(self.state.id.clone()));
        }
        self.status().check(Operation::Start)?;
        validate_process(&process.spec)?;
        let cgroup = self.create_cgroup()?;
        let sock_path = self.start_socket_path();
        let res = self.start_init(process, cgroup.as_ref(), &sock_path);
        if res.is_err() {
            let _ = std::fs::remove_file(&sock_path);
            if let Some(cg) = &cgroup {
                cg.kill_all();
                let _ = cg.remove();
            }
            self.state.cgroup = None;
            let _ = self.save();
        }
        res
    }

    /// Creates the container's cgroup (if its config has one) and records it
    /// at once, so that destroy cleans it up whatever happens next.
    pub(super) fn create_cgroup(&mut self) -> Result<Option<Cgroup>, ContainerError> {
        let Some(c) = self.state.config.cgroup.clone() else {
            return Ok(None);
        };
        // Parents made for it are shared with the other containers of this
        // state root: whichever goes last removes them.
        let ledger = self.dir.parent().map(|root| root.join(".cgroup-parents"));
        let cg = Cgroup::create_with_ledger(&self.cgroup_root, &c, ledger.as_deref())?;
        self.state.cgroup = Some(cg.clone());
        if let Err(e) = self.save() {
            let _ = cg.remove();
            self.state.cgroup = None;
            return Err(e);
        }
        Ok(Some(cg))
    }

    fn start_init(
        &mut self,
        process: Process,
        cgroup: Option<&Cgroup>,
        sock_path: &std::path::Path,
    ) -> Result<ProcessHandle, ContainerError> {
        let config = &self.state.config;
        let listener = bind_start_socket(&self.dir).map_err(|source| ContainerError::StateIo {
            path: sock_path.into(),
            source,
        })?;
        let mut join = Vec::new();
        let mut clone_flags = 0;
        for ns in &config.namespaces {
            match &ns.path {
                Some(p) => join.push(open_ns(ns.kind, p)?),
                None if ns.kind == NamespaceKind::User => {}
                None => clone_flags |= ns.kind.clone_flag(),
            }
        }
        let (pid, console) = launch(Launch {
            task: Task::Init {
                config: Box::new(config.clone()),
            },
            process,
            join,
            clone_flags,
            new_user_ns: config.creates(NamespaceKind::User),
            uid_mappings: &config.uid_mappings,
            gid_mappings: &config.gid_mappings,
            listener: Some(OwnedFd::from(listener)),
            cgroup,
            init_binary: &self.init_binary,
            hook_state: (!config.hooks.is_empty()).then(|| self.hook_state("creating", None)),
            idmap: IdmapSources::of(config),
        })?;
        self.record_init(pid, console, false)
    }

    /// Records `pid`, a child of this process that is not reaped yet (so its
    /// pid is stable), as the container's init and returns its handle; kills
    /// and reaps it if that fails. `restored_stopped`: see [`InitState`].
    pub(super) fn record_init(
        &mut self,
        pid: i32,
        console: Option<OwnedFd>,
        restored_stopped: bool,
    ) -> Result<ProcessHandle, ContainerError> {
        let kill_init = || {
            let _ =
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGKILL);
            let _ = crate::process::wait_child(pid);
        };
        let pidfd = match sys::pidfd_open(pid) {
            Ok(fd) => fd,
            Err(source) => {
                kill_init();
                return Err(ContainerError::Sys {
                    step: "open a pidfd of the init",
                    source,
                });
            }
        };
        let Some(start_ticks) = sys::process_start_time(pid) else {
            kill_init();
            return Err(ContainerError::InitExited(None));
        };
        self.state.init = Some(InitState {
            pid,
            start_ticks,
            started_unix_nanos: None,
            restored_stopped,
        });
        if let Err(e) = self.save() {
            kill_init();
            self.state.init = None;
            return Err(e);
        }
        Ok(ProcessHandle::new(pid, pidfd, console))
    }

    /// Lets a [`Status::Created`] container's init `execve` its process
    /// (runc's `start`). Works from any process, e.g. after [`Container::load`].
    pub fn release(&mut self) -> Result<(), ContainerError> {
        self.status().check(Operation::Release)?;
        if self.state.init.as_ref().is_some_and(|i| i.restored_stopped) {
            return self.continue_restored();
        }
        let path = self.start_socket_path();
        let io = |source| ContainerError::StateIo {
            path: path.clone(),
            source,
        };
        let mut conn = connect_start_socket(&self.dir).map_err(io)?;
        // The init closes the connection by exec (close-on-exec) or writes
        // why the exec failed.
        let mut buf = Vec::new();
        conn.read_to_end(&mut buf).map_err(io)?;
        let _ = std::fs::remove_file(&path);
        if !buf.is_empty() {
            let failure: InitFailure =
                serde_json::from_slice(&buf).unwrap_or_else(|_| InitFailure {
                    step: "exec".into(),
                    message: String::from_utf8_lossy(&buf).into_owned(),
                });
            return Err(ContainerError::Init(failure));
        }
        if let Some(init) = &mut self.state.init {
            init.started_unix_nanos = Some(now_nanos());
        }
        self.save()?;
        self.poststart_hooks();
        Ok(())
    }

    /// A restored tree was left stopped: every process of it continues.
    fn continue_restored(&mut self) -> Result<(), ContainerError> {
        for pid in self.processes() {
            // ESRCH: it exited meanwhile.
            let _ =
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGCONT);
        }
        if let Some(init) = &mut self.state.init {
            init.restored_stopped = false;
            init.started_unix_nanos = Some(now_nanos());
        }
        self.save()
    }

    /// [`Container::start`] then [`Container::release`]: libcontainer's `Run`.
    pub fn run(&mut self, process: Process) -> Result<ProcessHandle, ContainerError> {
        let handle = self.start(process)?;
        if let Err(e) = self.release() {
            // The init is ours and was never released: don't leave it waiting.
            let _ = handle.signal(libc::SIGKILL);
            let _ = handle.wait();
            return Err(e);
        }
        Ok(handle)
    }

    /// Whether the init waits to be released.
    pub fn is_created(&self) -> bool {
        self.status() == Status::Created
    }
}

// Socket paths are limited to 108 bytes; a long state directory is reached
// through /proc/self/fd (crate::ipc::socket_path).
fn bind_start_socket(dir: &std::path::Path) -> std::io::Result<UnixListener> {
    UnixListener::bind(crate::ipc::socket_path(&dir.join(START_SOCKET))?.as_path())
}

fn connect_start_socket(dir: &std::path::Path) -> std::io::Result<UnixStream> {
    UnixStream::connect(crate::ipc::socket_path(&dir.join(START_SOCKET))?.as_path())
}
