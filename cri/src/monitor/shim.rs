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

use super::oci::{bundle, cgroups_path, CgroupPlace, OciError};

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

/// The bundle of container `id` whose monitor's directory is `dir`:
/// `<dir>/<id>`, named by the id as containerd names its bundles — the
/// shim's `delete` command finds the bundle as `../<id>` of its working
/// directory.
fn bundle_dir(dir: &Path, id: &str) -> PathBuf {
    dir.join(id)
}

/// `process.user` in numbers, from the rootfs's own files.
fn resolve_user(
    bundle: &Path,
    p: &berth_core::process::ProcessSpec,
) -> Result<berth_core::security::user::ResolvedUser, ShimError> {
    let rootfs = bundle.join("rootfs");
    let root = std::fs::File::open(&rootfs).map_err(io(format!("open {}", rootfs.display())))?;
    berth_core::security::user::resolve_in_root(&p.user, root.as_fd())
        .map_err(|e| ShimError::Setup(OciError::User(e)))
}

/// The bundle's `config.json`: `config` with the rootfs at
/// `<bundle>/rootfs`, where it is mounted.
fn write_config(
    config: &Config,
    bundle: &Path,
    process: &berth_core::process::ProcessSpec,
) -> Result<(), ShimError> {
    let mut cfg = config.clone();
    cfg.rootfs = bundle.join("rootfs");
    cfg.overlay = None;
    let user = resolve_user(bundle, process)?;
    let spec = bundle::spec(&cfg, process, &user, cgroups_path(&cfg).as_deref())
        .map_err(OciError::from)?;
    let data = serde_json::to_vec(&spec).map_err(|e| io("encode config.json")(e.into()))?;
    let file = bundle.join("config.json");
    super::write_private(&file, &data).map_err(io(format!("write {}", file.display())))
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

/// The rootfs at `target` on the host: the overlay, or a bind of the
/// config's directory.
fn mount_rootfs(config: &Config, target: &Path) -> Result<(), ShimError> {
    match &config.overlay {
        Some(o) => o
            .mount_on(target, config.mount_label.as_deref())
            .map_err(|e| {
                io(format!("mount the rootfs on {}", target.display()))(std::io::Error::other(
                    crate::util::error_chain(&e),
                ))
            }),
        None => nix::mount::mount(
            Some(&config.rootfs),
            target,
            None::<&str>,
            nix::mount::MsFlags::MS_BIND | nix::mount::MsFlags::MS_REC,
            None::<&str>,
        )
        .map_err(|e| io(format!("bind the rootfs on {}", target.display()))(e.into())),
    }
}

/// Runs the shim's `start` in the bundle; returns the address it prints.
/// Its log FIFO is copied to `<dir>/shim.log` by a thread.
fn start_shim(rt: &ShimRuntime, id: &str, bundle: &Path, dir: &Path) -> Result<String, ShimError> {
    let fail = |message: String| ShimError::Start {
        shim: rt.path.display().to_string(),
        message,
    };
    let log = bundle.join("log");
    nix::unistd::mkfifo(&log, nix::sys::stat::Mode::from_bits_truncate(0o600))
        .map_err(|e| io(format!("create {}", log.display()))(e.into()))?;
    // Opened read-write: never blocks, and never reads end-of-file while
    // the shim restarts its writer.
    let fifo = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&log)
        .map_err(io(format!("open {}", log.display())))?;
    let out_path = dir.join("shim.log");
    let mut out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&out_path)
        .map_err(io(format!("open {}", out_path.display())))?;
    std::thread::Builder::new()
        .name("shim-log".into())
        .spawn(move || {
            let mut fifo = fifo;
            let _ = std::io::copy(&mut fifo, &mut out);
        })
        .map_err(io("start the shim log copier"))?;
    let output = shim_command(&rt.path, id, bundle, "start")
        .output()
        .map_err(|e| fail(format!("cannot run it: {e}")))?;
    let address = String::from_utf8_lossy(&output.stdout).trim().to_string();
    if !output.status.success() || address.is_empty() {
        let err = String::from_utf8_lossy(&output.stderr);
        return Err(fail(format!("{}: {}", output.status, err.trim())));
    }
    std::fs::write(bundle.join("address"), &address).map_err(io("write the shim's address"))?;
    Ok(address)
}

/// `<shim> -namespace berth -address <bundle>/events.sock -publish-binary
/// /bin/true -id <id> <action>` in the bundle, as containerd runs it.
fn shim_command(shim: &Path, id: &str, bundle: &Path, action: &str) -> std::process::Command {
    let events = bundle.join("events.sock");
    let mut cmd = std::process::Command::new(shim);
    cmd.args(["-namespace", NAMESPACE, "-address"])
        .arg(&events)
        .args(["-publish-binary", "/bin/true", "-id", id, action])
        .current_dir(bundle)
        .env("TTRPC_ADDRESS", format!("{}.ttrpc", events.display()))
        .stdin(std::process::Stdio::null());
    if std::env::var_os("PATH").is_none() {
        cmd.env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        );
    }
    berth_core::process::default_signals(&mut cmd);
    cmd
}

/// After a shim died: its `delete` command (what containerd runs then)
/// deletes the container from its runtime and unmounts the rootfs; its
/// socket file is removed. Best effort.
fn cleanup_after_dead_shim(shim: &Path, id: &str, bundle: &Path) {
    if bundle.is_dir() {
        let _ = shim_command(shim, id, bundle, "delete")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
    if let Ok(address) = std::fs::read_to_string(bundle.join("address")) {
        remove_socket(address.trim());
    }
}

/// Removes the socket file of `address` (`unix://<path>`) that a killed
/// shim left behind, if it is one.
fn remove_socket(address: &str) {
    use std::os::unix::fs::FileTypeExt;
    if let Some(path) = address.strip_prefix("unix://") {
        if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket()) {
            let _ = std::fs::remove_file(path);
        }
    }
}

fn shutdown(client: &TaskClient, id: &str) {
    let req = api::ShutdownRequest {
        id: id.to_string(),
        now: true,
        ..Default::default()
    };
    // The shim exits while answering: an error here is the normal end.
    let _ = client.shutdown(ctx(), &req);
}

/// Unmounts the rootfs (detached: a process still in it keeps its view)
/// and removes the bundle.
fn cleanup_bundle(bundle: &Path) {
    let _ = nix::mount::umount2(&bundle.join("rootfs"), nix::mount::MntFlags::MNT_DETACH);
    let _ = std::fs::remove_dir_all(bundle);
}

/// For a container whose monitor is gone (or failed to start it): the shim
/// it left, reached at its recorded address, kills and deletes the
/// container and shuts down; the rootfs is unmounted. Best effort.
pub fn delete_leftover(rt: &ShimRuntime, dir: &Path, id: &str) {
    let bundle = bundle_dir(dir, id);
    let address = std::fs::read_to_string(bundle.join("address")).unwrap_or_default();
    match Client::connect(address.trim()) {
        Err(_) => cleanup_after_dead_shim(&rt.path, id, &bundle),
        Ok(client) => {
            let client = TaskClient::new(client);
            let kill = api::KillRequest {
                id: id.to_string(),
                signal: 9,
                all: true,
                ..Default::default()
            };
            let _ = client.kill(ctx(), &kill);
            let wait = api::WaitRequest {
                id: id.to_string(),
                ..Default::default()
            };
            let _ = client.wait(ctx(), &wait);
            let delete = api::DeleteRequest {
                id: id.to_string(),
                ..Default::default()
            };
            let _ = client.delete(ctx(), &delete);
            shutdown(&client, id);
        }
    }
    cleanup_bundle(&bundle);
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
