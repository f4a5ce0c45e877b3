//! The monitor zygote: one long-lived, single-threaded process that forks
//! every container's monitor, so monitors share its memory.
//!
//! Why: a monitor exec'd afresh relocates the berth binary, which writes
//! every page of `.data.rel.ro` and `.got` (about 600 KiB of a PIE binary
//! this size) into private memory — more than the rest of the monitor
//! together. Those pages are written once, during relocation, then made
//! read-only (RELRO); a monitor forked from a process that already did it
//! shares them copy-on-write and never copies them. Measured per running
//! pod: see the README's benchmark section.
//!
//! How: the daemon starts `<exe> __berth_monitor_zygote <state dir>
//! [<sealed fd>]` with one end of a `SOCK_SEQPACKET` pair as its stdin. Each
//! request is one typed message over [`berth_core::ipc`] with two
//! descriptors — the reporting end of a report channel and `monitor.log`.
//! The zygote forks an intermediate child, which forks the monitor and
//! exits at once (so the monitor is reparented away, as the exec'd path's
//! detach does); the zygote reaps the intermediate. The monitor runs
//! exactly the code an exec'd one runs ([`run::monitor`]), reports on the
//! channel and from then on is independent of both the zygote and the
//! daemon.
//!
//! Lifetime: the zygote exits when the daemon's end of the socket closes
//! (the daemon exits or dies); monitors keep running. A zygote that died is
//! started again on the next request. The zygote holds the daemon's sealed
//! init binary copy (adopted once, as an exec'd monitor would), which forked
//! monitors inherit and drop once their container started.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;

use berth_core::ipc::{Channel, ChannelError};
use berth_core::process::{fork_single_threaded, Forked};
use serde::{Deserialize, Serialize};

use super::diag::warn;
use super::spawn::{parse_report, prepare, read_report, report_channel, send_report, Report};
use super::{run, MonitorError, MonitorSpec, SealedInit, Spawned};

/// `argv[1]` that makes a berth binary run as the monitor zygote.
pub const ZYGOTE_ARG: &str = "__berth_monitor_zygote";

/// Largest request the zygote reads (a spec path and a hostname).
const MAX_REQUEST: usize = 16 << 10;

/// What the daemon asks its zygote, over [`berth_core::ipc`].
#[derive(Debug, Serialize, Deserialize)]
enum Request {
    /// Fork a container's monitor. fds: `[report, monitor.log]`.
    Monitor {
        /// `<dir>/monitor.json`, absolute.
        spec: PathBuf,
    },
    /// Fork a pod's pid namespace init. fds: `[report]`, then the pod's user
    /// namespace when `userns`.
    PodInit {
        /// The pid namespace is made inside the passed user namespace.
        userns: bool,
    },
    /// Fork a holder of a pod's new user-owned namespaces. fds:
    /// `[report, hold]`.
    UsernsHolder {
        /// The pod's hostname.
        hostname: String,
        /// A network namespace of its own (else the host's).
        own_network: bool,
    },
}

/// The daemon's handle on its zygote (started on first use).
#[derive(Debug)]
pub struct Zygote {
    exe: PathBuf,
    tag: PathBuf,
    running: Mutex<Option<Running>>,
}

#[derive(Debug)]
struct Running {
    child: Child,
    sock: Channel,
}

impl Zygote {
    /// A zygote running `exe` (a binary whose `main` calls
    /// [`run_from_args`](super::run_from_args)); `tag` (the daemon's state
    /// dir) goes on its command line so operators and tests can tell whose
    /// monitors these are.
    pub fn new(exe: impl Into<PathBuf>, tag: impl Into<PathBuf>) -> Zygote {
        Zygote {
            exe: exe.into(),
            tag: tag.into(),
            running: Mutex::new(None),
        }
    }

    /// Like [`spawn`](super::spawn), with the monitor forked by the zygote.
    /// Blocking.
    pub fn spawn(&self, dir: &Path, spec: &MonitorSpec) -> Result<Spawned, MonitorError> {
        match self.spawn_once(dir, spec) {
            // The zygote took the request as it was dying (killed between
            // our liveness check and its read): nothing was forked — a
            // forked monitor would hold the report channel — so ask a new
            // zygote.
            Err(MonitorError::NoReport { .. }) if self.died() => self.spawn_once(dir, spec),
            other => other,
        }
    }

    /// Whether the zygote has ended (waiting a moment for one that is
    /// exiting); it is then replaced on the next request.
    fn died(&self) -> bool {
        let mut guard = self.running.lock().unwrap_or_else(|e| e.into_inner());
        let Some(r) = guard.as_mut() else {
            return true;
        };
        for _ in 0..20 {
            if !matches!(r.child.try_wait(), Ok(None)) {
                *guard = None;
                return true;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        false
    }

    fn spawn_once(&self, dir: &Path, spec: &MonitorSpec) -> Result<Spawned, MonitorError> {
        let files = prepare(dir, spec)?;
        let (report_r, report_w) = report_channel()?;
        self.send(
            &Request::Monitor {
                spec: files.spec.clone(),
            },
            &[report_w.as_fd(), files.log.as_fd()],
        )?;
        // Only the monitor may hold the write end now: EOF means it died.
        drop(report_w);
        drop(files.log);
        read_report(&report_r, "forked by the zygote", &files.log_path)
    }

    /// Starts the init of a pod's own pid namespace (what a pause
    /// container is to containerd): pid 1 of a new pid namespace, in its own
    /// session, reparented away from the zygote, reaping whatever is
    /// orphaned in the namespace until it is killed. Returns its pid (in
    /// our pid namespace); containers join `/proc/<pid>/ns/pid`. With
    /// `userns` (the pod's own user namespace) the pid namespace is made
    /// inside it, so it is owned by it: a container of the pod, which joins
    /// that user namespace first, may then join it. Blocking.
    pub fn spawn_pod_init(
        &self,
        log_path: &Path,
        userns: Option<&Path>,
    ) -> Result<i32, MonitorError> {
        let (report_r, report_w) = report_channel()?;
        let userns =
            userns
                .map(std::fs::File::open)
                .transpose()
                .map_err(|e| MonitorError::Sys {
                    step: "open the pod's user namespace",
                    source: nix::Error::from_raw(e.raw_os_error().unwrap_or(nix::libc::EIO)),
                })?;
        let mut fds = vec![report_w.as_fd()];
        fds.extend(userns.as_ref().map(|f| f.as_fd()));
        let request = Request::PodInit {
            userns: userns.is_some(),
        };
        self.send(&request, &fds)?;
        drop(userns);
        drop(report_w);
        match parse_report(&report_r, "forked by the zygote", log_path)? {
            Report::PodInit(pid) if pid > 0 => Ok(pid),
            Report::Error(message) => Err(MonitorError::Create(message)),
            other => Err(MonitorError::BadReport(format!("{other:?}"))),
        }
    }

    /// Starts a process in new user, network, IPC and UTS namespaces (the
    /// others owned by the user namespace; `lo` up, `hostname` set), for a
    /// pod with its own user namespace: the caller writes its id maps and
    /// pins its namespaces, then drops the returned descriptor, and the
    /// process exits. A thread of the (multi-threaded) daemon cannot
    /// unshare a user namespace, a fork of the zygote can. Blocking.
    pub fn spawn_userns_holder(
        &self,
        hostname: &str,
        own_network: bool,
        log_path: &Path,
    ) -> Result<(i32, OwnedFd), MonitorError> {
        let sys = |step| move |source| MonitorError::Sys { step, source };
        let (report_r, report_w) = report_channel()?;
        let (hold_r, hold_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(sys("create the hold pipe"))?;
        let request = Request::UsernsHolder {
            hostname: hostname.to_string(),
            own_network,
        };
        self.send(&request, &[report_w.as_fd(), hold_r.as_fd()])?;
        drop(report_w);
        drop(hold_r);
        match parse_report(&report_r, "forked by the zygote", log_path)? {
            Report::Holder(pid) if pid > 0 => Ok((pid, hold_w)),
            Report::Error(message) => Err(MonitorError::Create(message)),
            other => Err(MonitorError::BadReport(format!("{other:?}"))),
        }
    }

    /// The zygote's pid, if it runs.
    pub fn pid(&self) -> Option<u32> {
        let guard = self.running.lock().unwrap_or_else(|e| e.into_inner());
        guard.as_ref().map(|r| r.child.id())
    }

    fn send(&self, request: &Request, fds: &[BorrowedFd<'_>]) -> Result<(), MonitorError> {
        let mut guard = self.running.lock().unwrap_or_else(|e| e.into_inner());
        let mut last = None;
        for _ in 0..2 {
            if let Some(r) = guard.as_mut() {
                if !matches!(r.child.try_wait(), Ok(None)) {
                    *guard = None; // it died (and is reaped now)
                }
            }
            if guard.is_none() {
                *guard = Some(self.start()?);
            }
            let r = guard.as_mut().expect("started");
            match r.sock.send(request, fds) {
                Ok(_) => return Ok(()),
                Err(e) => {
                    // A zygote that cannot take requests is replaced.
                    let _ = r.child.kill();
                    let _ = r.child.wait();
                    *guard = None;
                    last = Some(e);
                }
            }
        }
        Err(MonitorError::Zygote(last.unwrap_or(ChannelError::Closed)))
    }

    fn start(&self) -> Result<Running, MonitorError> {
        let (ours, theirs) = Channel::pair().map_err(MonitorError::Zygote)?;
        let mut cmd = Command::new(&self.exe);
        cmd.arg(ZYGOTE_ARG).arg(&self.tag);
        // The zygote (our child) reopens our sealed copy through /proc —
        // when it runs our binary: the copy becomes its containers' init.
        if std::env::current_exe().is_ok_and(|me| me == self.exe) {
            if let Ok(s) = SealedInit::of_self() {
                cmd.arg(s.fd.to_string());
            }
        }
        let child = cmd
            .env_clear()
            .current_dir("/")
            .stdin(Stdio::from(theirs))
            .stdout(Stdio::null())
            .spawn()
            .map_err(|source| MonitorError::Spawn {
                exe: self.exe.clone(),
                source,
            })?;
        tracing::debug!(pid = child.id(), "monitor zygote started");
        Ok(Running { child, sock: ours })
    }
}

impl Drop for Zygote {
    fn drop(&mut self) {
        let guard = self.running.get_mut().unwrap_or_else(|e| e.into_inner());
        if let Some(mut r) = guard.take() {
            drop(r.sock); // EOF: the zygote exits
            let _ = r.child.wait();
        }
    }
}

/// The zygote process (argv after [`ZYGOTE_ARG`]: the tag, then the
/// daemon's sealed-copy fd, if any). Returns the exit code.
pub(super) fn serve(sealed_fd: Option<RawFd>) -> i32 {
    if !berth_core::process::is_single_threaded() {
        warn("the monitor zygote must be single-threaded to fork; exiting");
        return 2;
    }
    if let Some(fd) = sealed_fd {
        run::adopt_parent_sealed_init(fd);
    }
    let _ = nix::unistd::chdir("/");
    // Our stdin is the daemon's socketpair: taken as a channel, and stdin
    // itself pointed at /dev/null.
    let sock = match std::io::stdin().as_fd().try_clone_to_owned() {
        Ok(fd) => Channel::from_fd(fd).with_limit(MAX_REQUEST),
        Err(e) => {
            warn(&format!("monitor zygote: its socket: {e}"));
            return 1;
        }
    };
    if let Ok(null) = std::fs::File::open("/dev/null") {
        let _ = nix::unistd::dup2(null.as_raw_fd(), 0);
    }
    let zygote = ZygoteServer { sock };
    loop {
        let (request, mut fds) = match zygote.sock.recv::<Request>() {
            Ok(m) => m,
            Err(ChannelError::Closed) => return 0, // the daemon closed its end
            Err(e @ (ChannelError::Decode(_) | ChannelError::TooBig(_))) => {
                warn(&format!(
                    "monitor zygote: a malformed request, ignored: {e}"
                ));
                continue;
            }
            Err(e) => {
                warn(&format!("monitor zygote: receive: {e}"));
                return 1;
            }
        };
        match (request, fds.len()) {
            (Request::Monitor { spec }, 2) => {
                let log = fds.pop().expect("two");
                let report = fds.pop().expect("two");
                zygote.fork_monitor(&spec, report, log);
            }
            (Request::PodInit { userns: false }, 1) => {
                zygote.fork_pod_init(fds.pop().expect("one"), None);
            }
            (Request::PodInit { userns: true }, 2) => {
                let userns = fds.pop().expect("two");
                zygote.fork_pod_init(fds.pop().expect("two"), Some(userns));
            }
            (
                Request::UsernsHolder {
                    hostname,
                    own_network,
                },
                2,
            ) => {
                let hold = fds.pop().expect("two");
                let report = fds.pop().expect("two");
                zygote.fork_userns_holder(&hostname, own_network, report, hold);
            }
            _ => warn("monitor zygote: a request with the wrong descriptors, ignored"),
        }
    }
}

/// The zygote process's side: its socket to the daemon.
struct ZygoteServer {
    sock: Channel,
}

impl ZygoteServer {
    /// In a child: closes the zygote's socket, which only the zygote
    /// serves (the child leaves by `exit`, never dropping the channel).
    fn close_in_child(&self) {
        let _ = nix::unistd::close(self.sock.as_fd().as_raw_fd());
    }

    /// Forks the intermediate child that makes the pod's pid namespace and
    /// forks its init; reaps the intermediate.
    fn fork_pod_init(&self, report: OwnedFd, userns: Option<OwnedFd>) {
        match fork_single_threaded() {
            Ok(Forked::Child) => {
                self.close_in_child();
                let code = match pod_init_intermediate(report, userns) {
                    Ok(()) => 0,
                    Err((report, msg)) => {
                        fail(report, &msg);
                        1
                    }
                };
                std::process::exit(code)
            }
            Ok(Forked::Parent(child)) => {
                drop(report);
                reap(child);
            }
            Err(e) => fail(report, &format!("fork the pod init: {e}")),
        }
    }

    /// Forks the intermediate child that forks the holder (so the holder is
    /// not the zygote's child to reap); reaps the intermediate.
    fn fork_userns_holder(
        &self,
        hostname: &str,
        own_network: bool,
        report: OwnedFd,
        hold: OwnedFd,
    ) {
        match fork_single_threaded() {
            Ok(Forked::Child) => {
                self.close_in_child();
                match fork_single_threaded() {
                    Ok(Forked::Child) => userns_holder(hostname, own_network, report, hold),
                    Ok(Forked::Parent(_)) => std::process::exit(0),
                    Err(e) => {
                        fail(report, &format!("fork the namespace holder: {e}"));
                        std::process::exit(1)
                    }
                }
            }
            Ok(Forked::Parent(child)) => {
                drop(report);
                drop(hold);
                reap(child);
            }
            Err(e) => fail(report, &format!("fork the namespace holder: {e}")),
        }
    }

    /// Forks the intermediate child (which forks the monitor) and reaps it.
    fn fork_monitor(&self, spec: &Path, report: OwnedFd, log: OwnedFd) {
        match fork_single_threaded() {
            Ok(Forked::Child) => {
                self.close_in_child();
                intermediate(spec, report, log)
            }
            Ok(Forked::Parent(child)) => {
                drop(report);
                drop(log);
                reap(child);
            }
            Err(e) => fail(report, &format!("fork the monitor: {e}")),
        }
    }
}

fn reap(child: i32) {
    let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(child), None);
}

/// In the intermediate: a new pid namespace, whose first child (pid 1 in
/// it) is the pod init; reports its pid and exits.
fn pod_init_intermediate(
    report: OwnedFd,
    userns: Option<OwnedFd>,
) -> Result<(), (OwnedFd, String)> {
    // In the pod's user namespace first (we are single-threaded, as setns
    // into a user namespace requires), so the new pid namespace is its.
    if let Some(ns) = userns {
        if let Err(e) = nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWUSER) {
            return Err((report, format!("join the pod's user namespace: {e}")));
        }
    }
    if let Err(e) = nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWPID) {
        return Err((report, format!("unshare a pid namespace: {e}")));
    }
    match fork_single_threaded() {
        Ok(Forked::Child) => {
            drop(report);
            pod_init()
        }
        Ok(Forked::Parent(child)) => {
            let _ = send_report(report, &Report::PodInit(child));
            Ok(())
        }
        Err(e) => Err((report, format!("fork the pod init: {e}"))),
    }
}

/// The holder: unshares the pod's namespaces, reports its pid, and waits
/// for the daemon to close the hold pipe.
fn userns_holder(hostname: &str, own_network: bool, report: OwnedFd, hold: OwnedFd) -> ! {
    let _ = nix::sys::prctl::set_name(c"berth-pod-ns");
    let hostname = (!hostname.is_empty()).then_some(hostname);
    if let Err(e) = berth_core::pin::unshare_pod_namespaces(hostname, own_network) {
        fail(report, &crate::util::error_chain(&e));
        std::process::exit(1);
    }
    let _ = send_report(report, &Report::Holder(std::process::id() as i32));
    // Until the daemon is done with our namespaces (EOF, or its death).
    let mut byte = [0u8; 1];
    let _ = nix::unistd::read(hold.as_raw_fd(), &mut byte);
    std::process::exit(0)
}

/// Pid 1 of a pod's pid namespace: reaps, and otherwise waits. Every signal
/// is blocked (a pid 1 ignores those it has no handler for anyway); only
/// `SIGKILL` from outside — StopPodSandbox — ends it, and with it every
/// process left in the namespace.
fn pod_init() -> ! {
    let _ = nix::unistd::setsid();
    if let Ok(null) = std::fs::File::open("/dev/null") {
        for fd in 0..=2 {
            let _ = nix::unistd::dup2(null.as_raw_fd(), fd);
        }
    }
    let _ = nix::sys::prctl::set_name(c"berth-pod-init");
    let all = nix::sys::signal::SigSet::all();
    let _ = all.thread_block();
    let mut chld = nix::sys::signal::SigSet::empty();
    chld.add(nix::sys::signal::Signal::SIGCHLD);
    loop {
        match nix::sys::wait::waitpid(None, None) {
            Ok(_) | Err(nix::Error::EINTR) => continue,
            // No children now: wait until one is reparented to us and exits
            // (SIGCHLD stays pending while blocked, so none is missed).
            Err(_) => {
                let _ = chld.wait();
            }
        }
    }
}

/// In the intermediate child: fork the monitor and exit at once.
fn intermediate(spec: &Path, report: OwnedFd, log: OwnedFd) -> ! {
    match fork_single_threaded() {
        Ok(Forked::Child) => monitor(spec, report, log),
        Ok(Forked::Parent(_)) => std::process::exit(0),
        Err(e) => {
            fail(report, &format!("fork the monitor: {e}"));
            std::process::exit(1)
        }
    }
}

/// In the monitor: stdio onto the request's descriptors, then the same code
/// as an exec'd monitor.
fn monitor(spec: &Path, report: OwnedFd, log: OwnedFd) -> ! {
    let wired = std::fs::File::open("/dev/null").and_then(|null| {
        nix::unistd::dup2(null.as_raw_fd(), 0)?;
        nix::unistd::dup2(report.as_raw_fd(), 1)?;
        nix::unistd::dup2(log.as_raw_fd(), 2)?;
        Ok(())
    });
    drop(report);
    drop(log);
    if let Err(e) = wired {
        std::process::exit(run::fail_report(&format!("monitor stdio: {e}")));
    }
    let _ = nix::sys::prctl::set_name(c"berth-monitor");
    std::process::exit(run::monitor(spec, None))
}

/// Writes an error report on `report` (the daemon is waiting for one).
fn fail(report: OwnedFd, msg: &str) {
    warn(msg);
    let _ = send_report(report, &Report::Error(msg.to_string()));
}
