//! A container run by a containerd shim v2 (`containerd-shim-<name>-v2`:
//! runc's from Debian's containerd, Kata, gVisor, runwasi), for a
//! RuntimeClass handler of kind `shim-v2`. berth implements the caller's
//! side of the shim protocol; the container's monitor stays its one owner
//! and serves the same task protocol to the daemon:
//!
//! - the bundle is `<container dir>/<id>` (the shim's `delete` command
//!   expects a bundle named by the id, as containerd's are);
//! - the monitor mounts the rootfs at `<bundle>/rootfs` (on the host, as
//!   containerd does: the shim runs in the host's mount namespace), writes
//!   the bundle's `config.json` ([`super::oci::bundle`]) and a `log` FIFO
//!   (the shim logs there; the monitor copies it to `shim.log`);
//! - it runs `<shim> -namespace berth -address ... -id <id> start` in the
//!   bundle, which starts the shim and prints its ttrpc address (the shim
//!   chooses it: containerd-shim-runc-v2 puts its socket under
//!   `/run/containerd/s/`), then calls the Task service: Create (the
//!   container's stdio pipes given as `/proc/<monitor>/fd/<n>`, which the
//!   shim opens as the FIFOs containerd would give), Start, Kill, Exec,
//!   Update, Pause, Resume, Wait, Delete, Shutdown;
//! - the init and exec'd processes are the shim's children: the monitor
//!   watches their pidfds and learns exit codes with Wait. The shim itself
//!   is the monitor's child (a subreaper adopts it when `start` exits): if
//!   it dies, the monitor kills the container, which it then reaps itself;
//! - nobody listens on the events address: the monitor learns everything
//!   from Wait, and the shim's failed publishes are only in its log.
//!
//! One shim per container (the shim's own grouping by sandbox annotation is
//! not asked for). Not with a shim: a terminal, checkpoints.

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use berth_core::cgroups::{Resources, Stats};
use berth_core::{Config, ExitStatus, NamespaceKind, Process, ProcessHandle};
use containerd_shim_protos::api;
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::MessageField;
use containerd_shim_protos::ttrpc::context::{with_timeout, Context};
use containerd_shim_protos::{Client, TaskClient};
use serde::{Deserialize, Serialize};

mod setup;

pub use self::setup::delete_leftover;
use self::setup::{
    bundle_dir, cleanup_after_dead_shim, cleanup_bundle, mount_rootfs, resolve_user, shutdown,
    start_shim, write_config,
};
use super::oci::{bundle, CgroupPlace, OciError};

/// The containerd namespace berth's shims are started in.
const NAMESPACE: &str = "berth";
/// containerd's type URLs for the runtime-spec types in an `Any` (JSON).
const PROCESS_TYPE: &str = "types.containerd.io/opencontainers/runtime-spec/1/Process";
const RESOURCES_TYPE: &str = "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources";
/// How long one Task call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// The shim of a container, in its [`super::MonitorSpec`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShimRuntime {
    /// The shim's binary (`containerd-shim-runc-v2`).
    pub path: PathBuf,
}

/// A shim step failed.
#[derive(Debug, thiserror::Error)]
pub enum ShimError {
    /// The bundle, a file or the rootfs.
    #[error(transparent)]
    Setup(#[from] OciError),
    /// The shim did not start.
    #[error("start the shim {shim}: {message}")]
    Start {
        /// Its binary.
        shim: String,
        /// What it said.
        message: String,
    },
    /// A Task call failed.
    #[error("shim {call}: {message}")]
    Call {
        /// The call.
        call: &'static str,
        /// The shim's error.
        message: String,
    },
    /// Something berth does not ask a shim for.
    #[error("{0}: not with a containerd shim v2 handler")]
    Unsupported(&'static str),
}

fn io(step: impl Into<String>) -> impl FnOnce(std::io::Error) -> ShimError {
    let step = step.into();
    move |source| ShimError::Setup(OciError::Io { step, source })
}

fn call(name: &'static str) -> impl Fn(containerd_shim_protos::ttrpc::Error) -> ShimError {
    move |e| ShimError::Call {
        call: name,
        message: match e {
            containerd_shim_protos::ttrpc::Error::RpcStatus(s) => s.message,
            other => other.to_string(),
        },
    }
}

fn ctx() -> Context {
    with_timeout(CALL_TIMEOUT.as_nanos() as i64)
}

/// One container of a shim, owned by its monitor.
pub struct ShimContainer {
    shim: PathBuf,
    /// The shim died: the container is cleaned up without it.
    shim_dead: bool,
    id: String,
    bundle: PathBuf,
    config: Config,
    client: TaskClient,
    shim_pid: i32,
    cgroup: Option<CgroupPlace>,
    started_at: Option<u64>,
    paused: bool,
    execs: u64,
    /// Exec'd processes: pid → exec id and a pidfd to watch.
    exec_ids: HashMap<i32, (String, OwnedFd)>,
    /// The init's stdio, held until the shim has opened it (Start).
    held: Vec<OwnedFd>,
}

impl std::fmt::Debug for ShimContainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShimContainer")
            .field("id", &self.id)
            .field("bundle", &self.bundle)
            .field("shim_pid", &self.shim_pid)
            .field("started_at", &self.started_at)
            .finish_non_exhaustive()
    }
}

/// `/proc/<monitor>/fd/<n>` of a descriptor: a path the shim opens as the
/// FIFO containerd would give (a pipe end opens as a FIFO).
fn fd_path(fd: BorrowedFd<'_>) -> String {
    format!("/proc/{}/fd/{}", std::process::id(), fd.as_raw_fd())
}

/// The stdio paths of `process` and the descriptors behind them.
fn stdio(process: Process) -> ([String; 3], Vec<OwnedFd>) {
    let mut held = Vec::new();
    let paths = [process.stdin, process.stdout, process.stderr].map(|s| match s {
        berth_core::Stdio::Fd(fd) => {
            let p = fd_path(fd.as_fd());
            held.push(fd);
            p
        }
        _ => String::new(),
    });
    (paths, held)
}

impl ShimContainer {
    /// Starts the shim and creates container `id` (its init waiting for
    /// [`ShimContainer::release`]); `dir` is the monitor's directory.
    pub fn create(
        rt: &ShimRuntime,
        id: &str,
        dir: &Path,
        config: &Config,
        process: Process,
    ) -> Result<(ShimContainer, ProcessHandle), ShimError> {
        if process.spec.terminal.is_some() {
            return Err(ShimError::Unsupported("a terminal"));
        }
        let bundle = bundle_dir(dir, id);
        crate::store::make_dir(&bundle, crate::store::modes::PRIVATE)
            .map_err(io(format!("create {}", bundle.display())))?;
        let rootfs = bundle.join("rootfs");
        std::fs::create_dir_all(&rootfs).map_err(io(format!("create {}", rootfs.display())))?;
        mount_rootfs(config, &rootfs)?;
        let made = (|| {
            // The shim's `start` reads the bundle already.
            write_config(config, &bundle, &process.spec)?;
            let address = start_shim(rt, id, &bundle, dir)?;
            let client = TaskClient::new(Client::connect(&address).map_err(call("connect"))?);
            let req = api::ConnectRequest {
                id: id.to_string(),
                ..Default::default()
            };
            let shim_pid = client
                .connect(ctx(), &req)
                .map_err(call("Connect"))?
                .shim_pid;
            Ok::<_, ShimError>((client, shim_pid as i32))
        })();
        let (client, shim_pid) = match made {
            Ok(m) => m,
            Err(e) => {
                delete_leftover(rt, dir, id);
                return Err(e);
            }
        };
        let mut c = ShimContainer {
            shim: rt.path.clone(),
            shim_dead: false,
            id: id.to_string(),
            bundle,
            config: config.clone(),
            client,
            shim_pid,
            cgroup: config.cgroup.as_ref().and_then(CgroupPlace::of),
            started_at: None,
            paused: false,
            execs: 0,
            exec_ids: HashMap::new(),
            held: Vec::new(),
        };
        match c.create_init(process) {
            Ok(h) => Ok((c, h)),
            Err(e) => {
                c.destroy();
                Err(e)
            }
        }
    }

    fn create_init(&mut self, process: Process) -> Result<ProcessHandle, ShimError> {
        let ([stdin, stdout, stderr], held) = stdio(process);
        let req = api::CreateTaskRequest {
            id: self.id.clone(),
            bundle: self.bundle.display().to_string(),
            stdin,
            stdout,
            stderr,
            ..Default::default()
        };
        let resp = self.client.create(ctx(), &req).map_err(call("Create"))?;
        self.held = held;
        adopt(resp.pid, self.shim_pid)
    }

    fn resolve_user(
        &self,
        p: &berth_core::process::ProcessSpec,
    ) -> Result<berth_core::security::user::ResolvedUser, ShimError> {
        resolve_user(&self.bundle, p)
    }

    /// Whether Start has not run yet.
    pub fn created(&self) -> bool {
        self.started_at.is_none()
    }

    /// Releases the init (Start).
    pub fn release(&mut self) -> Result<(), ShimError> {
        let req = api::StartRequest {
            id: self.id.clone(),
            ..Default::default()
        };
        self.client.start(ctx(), &req).map_err(call("Start"))?;
        self.started_at = Some(crate::util::now_nanos().max(0) as u64);
        // The shim has opened the stdio: our copies would keep the output
        // pipes from ever ending.
        self.held.clear();
        Ok(())
    }

    /// When Start returned.
    pub fn started_at(&self) -> Option<u64> {
        self.started_at
    }

    /// Whether it is paused.
    pub fn paused(&self) -> bool {
        self.paused
    }

    fn kill(&self, signal: i32, all: bool) -> Result<(), ShimError> {
        let req = api::KillRequest {
            id: self.id.clone(),
            signal: signal as u32,
            all,
            ..Default::default()
        };
        self.client.kill(ctx(), &req).map_err(call("Kill"))?;
        Ok(())
    }

    /// Closes the init's stdin (CloseIO): the shim keeps its end of the
    /// stdin pipe open, so closing ours alone is no end of input.
    pub fn close_stdin(&self) {
        let req = api::CloseIORequest {
            id: self.id.clone(),
            stdin: true,
            ..Default::default()
        };
        if let Err(e) = self.client.close_io(ctx(), &req) {
            super::diag::warn(&format!("shim CloseIO: {e}"));
        }
    }

    /// Signals the init (Kill).
    pub fn signal(&self, signal: i32) -> Result<(), ShimError> {
        self.kill(signal, false)
    }

    /// New limits (Update, the runtime spec's LinuxResources as JSON).
    pub fn set(&mut self, r: &Resources) -> Result<(), ShimError> {
        let resources = bundle::resources(r, None).map_err(OciError::from)?;
        let value = serde_json::to_vec(&resources).map_err(|e| io("encode")(e.into()))?;
        let req = api::UpdateTaskRequest {
            id: self.id.clone(),
            resources: MessageField::some(Any {
                type_url: RESOURCES_TYPE.into(),
                value,
                ..Default::default()
            }),
            ..Default::default()
        };
        self.client.update(ctx(), &req).map_err(call("Update"))?;
        Ok(())
    }

    /// The cgroup's figures.
    pub fn stats(&self) -> Stats {
        self.cgroup
            .as_ref()
            .map(CgroupPlace::stats)
            .unwrap_or_default()
    }

    /// Freezes it.
    pub fn pause(&mut self) -> Result<(), ShimError> {
        let req = api::PauseRequest {
            id: self.id.clone(),
            ..Default::default()
        };
        self.client.pause(ctx(), &req).map_err(call("Pause"))?;
        self.paused = true;
        Ok(())
    }

    /// Thaws it.
    pub fn resume(&mut self) -> Result<(), ShimError> {
        let req = api::ResumeRequest {
            id: self.id.clone(),
            ..Default::default()
        };
        self.client.resume(ctx(), &req).map_err(call("Resume"))?;
        self.paused = false;
        Ok(())
    }

    /// Runs `process` in the container (Exec, then Start of the exec).
    pub fn exec(&mut self, process: Process) -> Result<ProcessHandle, ShimError> {
        if process.spec.terminal.is_some() {
            return Err(ShimError::Unsupported("an exec with a terminal"));
        }
        self.execs += 1;
        let exec_id = format!("exec-{}", self.execs);
        let user = self.resolve_user(&process.spec)?;
        let spec = bundle::process(&self.config, &process.spec, &user).map_err(OciError::from)?;
        let value = serde_json::to_vec(&spec).map_err(|e| io("encode")(e.into()))?;
        let ([stdin, stdout, stderr], _held) = stdio(process);
        let req = api::ExecProcessRequest {
            id: self.id.clone(),
            exec_id: exec_id.clone(),
            stdin,
            stdout,
            stderr,
            spec: MessageField::some(Any {
                type_url: PROCESS_TYPE.into(),
                value,
                ..Default::default()
            }),
            ..Default::default()
        };
        self.client.exec(ctx(), &req).map_err(call("Exec"))?;
        let start = api::StartRequest {
            id: self.id.clone(),
            exec_id: exec_id.clone(),
            ..Default::default()
        };
        let pid = match self.client.start(ctx(), &start) {
            Ok(r) => r.pid,
            Err(e) => {
                self.delete_exec(&exec_id);
                return Err(call("Start")(e));
            }
        };
        let handle = adopt(pid, self.shim_pid)?;
        let watch = handle
            .pidfd()
            .try_clone_to_owned()
            .map_err(io("clone the exec's pidfd"))?;
        self.exec_ids.insert(handle.pid(), (exec_id, watch));
        Ok(handle)
    }

    /// The pidfds of running exec'd processes (not the monitor's children:
    /// their exits come from Wait, when these become readable).
    pub fn exec_fds(&self) -> impl Iterator<Item = (i32, BorrowedFd<'_>)> {
        self.exec_ids
            .iter()
            .map(|(pid, (_, fd))| (*pid, fd.as_fd()))
    }

    /// Exec'd process `pid` has exited: its status (Wait), then Delete.
    pub fn exec_exited(&mut self, pid: i32) -> Option<ExitStatus> {
        let (exec_id, _) = self.exec_ids.remove(&pid)?;
        let req = api::WaitRequest {
            id: self.id.clone(),
            exec_id: exec_id.clone(),
            ..Default::default()
        };
        let status = self
            .client
            .wait(ctx(), &req)
            .ok()
            .map(|r| status(r.exit_status));
        self.delete_exec(&exec_id);
        Some(status.unwrap_or(ExitStatus::Exited(255)))
    }

    fn delete_exec(&self, exec_id: &str) {
        let req = api::DeleteRequest {
            id: self.id.clone(),
            exec_id: exec_id.to_string(),
            ..Default::default()
        };
        let _ = self.client.delete(ctx(), &req);
    }

    /// The init's exit status (Wait), once its pidfd says it exited.
    pub fn init_exit(&self) -> Option<ExitStatus> {
        let req = api::WaitRequest {
            id: self.id.clone(),
            ..Default::default()
        };
        self.client
            .wait(ctx(), &req)
            .ok()
            .map(|r| status(r.exit_status))
    }

    /// Whether `pid` is the shim (our child once its `start` exited); if
    /// so, it is noted dead.
    pub fn shim_reaped(&mut self, pid: i32) -> bool {
        if pid == self.shim_pid {
            self.shim_dead = true;
        }
        pid == self.shim_pid
    }

    /// Once the init has exited: kills what it left running (Kill all).
    pub fn kill_remaining(&self) {
        if !self.config.creates(NamespaceKind::Pid) {
            let _ = self.kill(9, true);
        }
    }

    /// Whether the kernel OOM-killed a process of its cgroup.
    pub fn oom_killed(&self) -> bool {
        self.cgroup.as_ref().is_some_and(CgroupPlace::oom_killed)
    }

    /// Deletes the container, shuts the shim down, unmounts the rootfs and
    /// removes the bundle. Best effort.
    pub fn destroy(&self) {
        if self.shim_dead {
            cleanup_after_dead_shim(&self.shim, &self.id, &self.bundle);
        } else {
            let req = api::DeleteRequest {
                id: self.id.clone(),
                ..Default::default()
            };
            if let Err(e) = self.client.delete(ctx(), &req) {
                super::diag::warn(&format!("shim Delete: {e}"));
            }
            shutdown(&self.client, &self.id);
        }
        cleanup_bundle(&self.bundle);
    }
}

/// containerd's exit status: 128 + the signal for a killed process.
fn status(code: u32) -> ExitStatus {
    match code {
        129..=192 => ExitStatus::Signaled((code - 128) as i32),
        c => ExitStatus::Exited(c.min(255) as i32),
    }
}

/// A handle on process `pid`, a child of the shim `shim_pid`: its pidfd,
/// or — when it is already gone (reaped by the shim; or its pid taken by
/// a process that is not the shim's child) — the read end of a pipe at end
/// of file, readable at once: the exit status comes from Wait either way.
fn adopt(pid: u32, shim_pid: i32) -> Result<ProcessHandle, ShimError> {
    let pid = pid as i32;
    let parent = |pid: i32| -> Option<i32> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        stat.rsplit_once(") ")?
            .1
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    };
    match ProcessHandle::adopt(pid, None) {
        Ok(h) if parent(pid) == Some(shim_pid) => Ok(h),
        Ok(_) | Err(nix::Error::ESRCH) => {
            let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
                .map_err(|e| io("make a pipe")(e.into()))?;
            drop(w);
            Ok(ProcessHandle::watched(pid, r))
        }
        Err(e) => Err(io("open the process's pidfd")(e.into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_statuses_as_containerd_reports_them() {
        assert_eq!(status(0), ExitStatus::Exited(0));
        assert_eq!(status(7), ExitStatus::Exited(7));
        assert_eq!(status(137), ExitStatus::Signaled(9));
        assert_eq!(status(143), ExitStatus::Signaled(15));
        assert_eq!(status(300), ExitStatus::Exited(255));
    }
}
