//! Monitor side: detach, create and start the container, report, pump, record.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

use berth_core::process::ProcessSpec;
use berth_core::{Container, Process, ProcessHandle};
use nix::fcntl::{fcntl, FcntlArg, FdFlag, OFlag};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};

use super::diag::warn;
use super::owner::Owner;
use super::pump::{Pump, Source};
use super::spawn::Report;
use super::{error_chain, exit, MonitorError, MonitorSpec, DETACHED_ARG, MONITOR_ARG, VERSION};
use crate::logs::{LogFile, Stream, DEFAULT_MAX_LINE_SIZE};

/// Signals the monitor takes through its signalfd instead of their default
/// action: `SIGCHLD` (reap), and the usual termination signals, which it
/// ignores — dying would lose the container's log and exit code (`SIGKILL`
/// still works for a stuck monitor). The daemon's requests come on the task
/// socket, never as signals.
const SIGNALS: [Signal; 4] = [
    Signal::SIGCHLD,
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGHUP,
];

/// First stage, started by [`spawn`](super::spawn): starts the real monitor
/// (the same binary, through `/proc/self/exe` so a binary replaced on disk by
/// an upgrade still works) and exits, so the daemon can reap it at once.
pub(super) fn detach(spec: &Path) -> i32 {
    cloexec_all_but_stdio();
    // The daemon's sealed copy, reopened while the daemon (our parent) is
    // waiting for the report, and handed on as the one inheritable fd.
    let sealed = inherit_sealed_init(spec);
    let argv0 = std::env::args_os().next().unwrap_or_else(|| "berth".into());
    let mut cmd = Command::new("/proc/self/exe");
    cmd.arg0(argv0).arg(MONITOR_ARG).arg(spec).arg(DETACHED_ARG);
    if let Some(fd) = &sealed {
        cmd.arg(fd.as_raw_fd().to_string());
    }
    let started = cmd.stdin(Stdio::null()).spawn();
    drop(sealed);
    match started {
        // Not waited for: it is reparented when this process exits.
        Ok(_) => 0,
        Err(e) => {
            let msg = format!("start the detached monitor: {e}");
            warn(&msg);
            let _ = report(&Report::Error(msg));
            1
        }
    }
}

/// Opens the daemon's sealed copy named in the spec, without close-on-exec
/// (only when the daemon really is our parent: a pid named in a file could
/// have been reused).
fn inherit_sealed_init(spec_path: &Path) -> Option<OwnedFd> {
    let spec = read_spec(spec_path).ok()?;
    let s = spec.sealed_init?;
    if nix::unistd::getppid().as_raw() != s.pid {
        return None;
    }
    let fd = OwnedFd::from(std::fs::File::open(format!("/proc/{}/fd/{}", s.pid, s.fd)).ok()?);
    fcntl(fd.as_raw_fd(), FcntlArg::F_SETFD(FdFlag::empty())).ok()?;
    Some(fd)
}

/// Adopts the sealed copy inherited as `fd` (runtime-core checks its seals)
/// and closes the inherited descriptor.
fn adopt_sealed_init(fd: RawFd) {
    let opened = std::fs::File::open(format!("/proc/self/fd/{fd}"));
    // The inherited number is closed either way: it must not stay open in
    // the monitor (nor reach the container, where every fd is close-on-exec).
    let _ = nix::unistd::close(fd);
    adopt(opened);
}

/// In the zygote, our parent is the daemon: adopts its sealed copy (fd
/// `fd` in the daemon) for every monitor the zygote forks.
pub(super) fn adopt_parent_sealed_init(fd: RawFd) {
    let parent = nix::unistd::getppid();
    adopt(std::fs::File::open(format!("/proc/{parent}/fd/{fd}")));
}

/// Hands the daemon's sealed copy, opened anew, to runtime-core; a copy
/// that cannot be used is only a warning (the monitor makes its own).
fn adopt(opened: std::io::Result<std::fs::File>) {
    match opened {
        Ok(f) => {
            if let Err(e) = berth_core::process::adopt_sealed_copy(
                berth_core::InitBinary::SelfExe,
                OwnedFd::from(f),
            ) {
                warn(&format!("not using the daemon's init binary copy: {e}"));
            }
        }
        Err(e) => warn(&format!("the daemon's init binary copy: {e}")),
    }
}

/// Logs `msg` and reports it as the error; returns the exit code.
pub(super) fn fail_report(msg: &str) -> i32 {
    warn(msg);
    let _ = report(&Report::Error(msg.to_string()));
    1
}

/// Marks every fd above stderr close-on-exec, so the detached monitor
/// starts with 0, 1 and 2 only: whatever inheritable fds the daemon had (a
/// socket-activation listener, a jobserver pipe) must not live on in every
/// monitor.
fn cloexec_all_but_stdio() {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return;
    };
    let fds: Vec<RawFd> = dir
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .filter(|&fd| fd > 2)
        .collect();
    for fd in fds {
        // EBADF for the directory's own fd, closed by now.
        let _ = fcntl(fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC));
    }
}

/// Second stage: the monitor itself. Returns the process exit code.
pub(super) fn monitor(spec_path: &Path, sealed_fd: Option<RawFd>) -> i32 {
    if let Some(fd) = sealed_fd {
        adopt_sealed_init(fd);
    }
    let started = prepare().and_then(|signals| start(spec_path, signals));
    let (spec, handle, mut pump) = match started {
        Ok(s) => s,
        Err(e) => {
            let msg = error_chain(&e);
            warn(&msg);
            let _ = report(&Report::Error(msg));
            return 1;
        }
    };
    let created = Report::Created {
        init: handle.pid(),
        monitor: std::process::id() as i32,
    };
    if let Err(e) = report(&created) {
        // Nobody learnt of the container: leave nothing behind.
        warn(&format!(
            "report to the daemon: {e}; removing the container"
        ));
        kill_and_destroy(pump.task.into_owner(), &handle);
        return 1;
    }
    // The container's mount namespace, held until the exit is recorded and
    // told: the kernel then tears its mounts down when the monitor ends,
    // not in the init's exit, which the stop and its caller wait for.
    let _mount_ns = std::fs::File::open(format!("/proc/{}/ns/mnt", handle.pid()));
    let (status, message) = pump.run(&handle);
    let record = exit::record(pump.task.container(), status, message);
    if let Err(e) = exit::write(&spec.exit_file, &record) {
        warn(&error_chain(&e));
        return 1;
    }
    // Durable first, then told: a daemon that misses the event reads the file.
    pump.task.exited(&record);
    pump.task.container().finish();
    0
}

/// Process-wide setup: own session, child subreaper, cwd `/`, signals
/// blocked and routed to a signalfd.
fn prepare() -> Result<SignalFd, MonitorError> {
    let sys = |step| move |source| MonitorError::Sys { step, source };
    // EPERM: already a session leader, which is what we want.
    match nix::unistd::setsid() {
        Ok(_) | Err(nix::Error::EPERM) => {}
        Err(e) => return Err(sys("setsid")(e)),
    }
    // Processes of the container that outlive their parent (without a pid
    // namespace of its own) are reparented to us and reaped here.
    nix::sys::prctl::set_child_subreaper(true).map_err(sys("become a child subreaper"))?;
    nix::unistd::chdir("/").map_err(sys("chdir /"))?;
    // SIGPIPE is already ignored: Rust's runtime does it before main, so a
    // vanished reader is an EPIPE error, not death.
    let mut mask = SigSet::empty();
    for s in SIGNALS {
        mask.add(s);
    }
    // Blocked in the monitor only: runtime-core's init resets the mask
    // before the container's execve.
    mask.thread_block().map_err(sys("block signals"))?;
    SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
        .map_err(sys("create a signalfd"))
}

/// Reads the spec, opens the log, creates and starts the container (not
/// released). On error, whatever was created is destroyed.
fn start(
    spec_path: &Path,
    signals: SignalFd,
) -> Result<(MonitorSpec, ProcessHandle, Pump), MonitorError> {
    let spec = read_spec(spec_path)?;
    let log = match &spec.log_path {
        Some(path) => Some(LogFile::open(path).map_err(|source| MonitorError::OpenLog {
            path: path.clone(),
            source,
        })?),
        None => None,
    };
    let max_line = Some(spec.max_log_line.unwrap_or(DEFAULT_MAX_LINE_SIZE));
    let (process, readers, stdin_w) = process_with_pipes(spec.process.clone(), spec.stdin)?;
    let dir = spec_path.parent().unwrap_or(Path::new("/"));
    let (owner, mut handle) = create(&spec, dir, process)?;
    // The sealed copy of the binary (tens of MB) is not needed again by this
    // process: free it (the container's init keeps its own mapping until it
    // execs the container's process).
    berth_core::process::forget_sealed_copies();
    let mut stdin = stdin_w;
    let mut pty = None;
    let sources = match readers {
        Some((out, err)) => vec![
            Source::new(out, Stream::Stdout, max_line, false),
            Source::new(err, Stream::Stderr, max_line, false),
        ],
        // A terminal merges both streams; CRI logs it as stdout.
        None => match handle.take_console() {
            Some(console) => {
                // Attached clients write to it and resize it.
                pty = console.try_clone().ok();
                if spec.stdin {
                    stdin = console.try_clone().ok();
                }
                vec![Source::new(console, Stream::Stdout, max_line, true)]
            }
            None => {
                kill_and_destroy(owner, &handle);
                return Err(MonitorError::Sys {
                    step: "get the container's terminal",
                    source: nix::Error::ENOTTY,
                });
            }
        },
    };
    let sources = sources.into_iter().collect::<Result<Vec<_>, _>>();
    let sources = match sources {
        Ok(s) => s,
        Err(e) => {
            kill_and_destroy(owner, &handle);
            return Err(e);
        }
    };
    // `kubectl attach` reaches the container's stdio through the task
    // socket too.
    let attach = match super::attach::Attach::new(stdin, spec.stdin_once, pty) {
        Ok(a) => a,
        Err(e) => {
            kill_and_destroy(owner, &handle);
            return Err(MonitorError::Sys {
                step: "set up attach",
                source: nix::Error::from_raw(e.raw_os_error().unwrap_or(nix::libc::EIO)),
            });
        }
    };
    // The daemon reaches the container only through this socket.
    let socket = dir.join(crate::task::proto::SOCKET_FILE);
    let listener = match berth_core::ipc::Listener::bind(&socket, 0o600) {
        Ok(l) => l,
        Err(e) => {
            kill_and_destroy(owner, &handle);
            return Err(MonitorError::Task(e));
        }
    };
    let task = super::serve::TaskServer::new(listener, owner, &handle, attach);
    let pump = Pump::new(sources, log, signals, task);
    Ok((spec, handle, pump))
}

/// Creates the container and its init (not released): with runtime-core,
/// or with the external OCI runtime the spec names.
fn create(
    spec: &MonitorSpec,
    dir: &Path,
    process: Process,
) -> Result<(Owner, ProcessHandle), MonitorError> {
    let id = spec.container_id.clone();
    if spec.restore.is_some() && (spec.oci.is_some() || spec.shim.is_some()) {
        return Err(MonitorError::Create(
            "restoring a checkpoint is not for a container of an external runtime handler".into(),
        ));
    }
    if let Some(rt) = &spec.shim {
        let (c, handle) = super::shim::ShimContainer::create(rt, &id, dir, &spec.config, process)
            .map_err(|source| MonitorError::Shim { id, source })?;
        return Ok((Owner::Shim(c), handle));
    }
    if let Some(rt) = &spec.oci {
        let (c, handle) = super::oci::OciContainer::create(rt, &id, dir, &spec.config, process)
            .map_err(|source| MonitorError::Oci { id, source })?;
        return Ok((Owner::Oci(c), handle));
    }
    let container_err = |step| {
        let id = id.clone();
        move |source| MonitorError::Container { step, id, source }
    };
    let mut container =
        Container::create(&spec.state_root, &spec.container_id, spec.config.clone())
            .map_err(container_err("create"))?;
    if let Some(root) = &spec.cgroup_root {
        container = container.with_cgroup_root(root);
    }
    let started = match &spec.restore {
        None => container.start(process),
        Some(r) => restore(&mut container, r, process),
    };
    match started {
        Ok(h) => Ok((Owner::Embedded(container), h)),
        Err(e) => {
            if let Err(d) = container.destroy() {
                warn(&format!(
                    "destroy after a failed start: {}",
                    error_chain(&d)
                ));
            }
            let step = if spec.restore.is_some() {
                "restore"
            } else {
                "start"
            };
            Err(container_err(step)(e))
        }
    }
}

/// Restores the container's init from its checkpoint, with the pipes of
/// `process` as its stdio, or a new terminal when it asks for one.
fn restore(
    container: &mut Container,
    from: &super::RestoreFrom,
    process: Process,
) -> Result<ProcessHandle, berth_core::ContainerError> {
    use berth_core::container::checkpoint::RestoreStdio;
    let fd = |s: berth_core::Stdio| match s {
        berth_core::Stdio::Fd(fd) => Ok(fd),
        _ => Err(berth_core::ContainerError::Unsupported(
            "restoring a container's stdio that is not a pipe".into(),
        )),
    };
    let spec = process.spec.clone();
    let stdio = match spec.terminal {
        Some(size) => RestoreStdio::Terminal(size),
        None => RestoreStdio::Pipes([fd(process.stdin)?, fd(process.stdout)?, fd(process.stderr)?]),
    };
    let mut opts =
        berth_core::container::checkpoint::CriuOptions::new(&from.images_dir, &from.work_dir);
    opts.criu = from.criu.clone();
    opts.joins_userns = from.joins_userns;
    container.restore(&opts, stdio, &spec)
}

/// Read ends of the container's stdout and stderr pipes.
type Readers = Option<(OwnedFd, OwnedFd)>;

/// The container's process with stdout and stderr on new pipes, whose read
/// ends are returned, and stdin on a pipe whose write end is returned with
/// `stdin` — or else closed at once, so the container reads end-of-file as
/// from `/dev/null` (a pipe, not a host file, so that CRIU can checkpoint
/// it). When it asks for a terminal: no pipes (runtime-core hands us the
/// console instead).
fn process_with_pipes(
    spec: ProcessSpec,
    stdin: bool,
) -> Result<(Process, Readers, Option<OwnedFd>), MonitorError> {
    let mut process = Process::new(Vec::<String>::new());
    let terminal = spec.terminal.is_some();
    process.spec = spec;
    if terminal {
        return Ok((process, None, None));
    }
    let pipe = || {
        nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|source| MonitorError::Sys {
            step: "create the container's stdio pipes",
            source,
        })
    };
    let (out_r, out_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    process.stdout = out_w.into();
    process.stderr = err_w.into();
    let (in_r, in_w) = pipe()?;
    process.stdin = in_r.into();
    let stdin_w = stdin.then_some(in_w);
    Ok((process, Some((out_r, err_r)), stdin_w))
}

fn read_spec(path: &Path) -> Result<MonitorSpec, MonitorError> {
    let bytes = std::fs::read(path).map_err(|source| MonitorError::ReadSpec {
        path: path.to_path_buf(),
        source,
    })?;
    let bad = |reason: String| MonitorError::BadSpec {
        path: path.to_path_buf(),
        reason,
    };
    let spec: MonitorSpec = serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
    if spec.version != VERSION {
        return Err(bad(format!("unsupported version {}", spec.version)));
    }
    Ok(spec)
}

/// Kills a started, never released init and removes the container.
fn kill_and_destroy(owner: Owner, handle: &ProcessHandle) {
    let _ = handle.signal(nix::libc::SIGKILL);
    let _ = handle.wait();
    match owner {
        Owner::Embedded(c) => {
            if let Err(e) = c.destroy() {
                warn(&format!("destroy: {}", error_chain(&e)));
            }
        }
        Owner::Oci(c) => c.destroy(),
        Owner::Shim(c) => c.destroy(),
    }
}

/// Sends the report on stdout (a report channel), then points stdout at
/// `/dev/null` so the daemon's end closes (and nothing else ever goes
/// there).
fn report(report: &Report) -> std::io::Result<()> {
    use std::os::fd::AsFd;
    let sent = std::io::stdout()
        .as_fd()
        .try_clone_to_owned()
        .and_then(|fd| super::spawn::send_report(fd, report));
    let null = std::fs::File::open("/dev/null")?;
    nix::unistd::dup2(null.as_raw_fd(), std::io::stdout().as_raw_fd())?;
    sent
}
