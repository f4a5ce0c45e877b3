//! The per-container monitor, for real: containers created by a detached
//! `berth-cri-monitor` process, released from the test process (as the
//! daemon does on StartContainer), their logs and exit records checked.
//! Needs root and a static busybox; says `skipped: ...` otherwise.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use berth_core::cgroups::{CgroupConfig, Resources};
use berth_core::{Config, Container, NamespaceKind, Process, Status};
use berth_cri::logs::{parse_record, Stream};
use berth_cri::monitor::{self, ExitRecord, MonitorError, MonitorSpec, Spawned};
use berth_cri::task::client::MonitorTask;
use berth_cri::task::{Task, TaskError};
use nix::sys::signal::{kill, Signal};
use nix::unistd::{getsid, Pid};

const EXE: &str = env!("CARGO_BIN_EXE_berth-cri-monitor");

use berth_e2e::privileged;

/// A busybox rootfs shared by the tests (never written by them), built once
/// per machine: in a private directory, then renamed into place.
fn rootfs() -> &'static Path {
    static ROOTFS: OnceLock<PathBuf> = OnceLock::new();
    ROOTFS.get_or_init(|| {
        let fin = std::env::temp_dir().join("berth-cri-monitor-rootfs-v1");
        if fin.join("bin/busybox").exists() {
            return fin;
        }
        let tmp =
            std::env::temp_dir().join(format!("berth-cri-monitor-rootfs.{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        berth_e2e::busybox_rootfs(&tmp).unwrap();
        if std::fs::rename(&tmp, &fin).is_err() {
            let _ = std::fs::remove_dir_all(&tmp);
        }
        fin
    })
}

/// One container and its monitor, in a private temporary directory;
/// destroyed, and its monitor killed if still running, on drop.
struct Fixture {
    dir: tempfile::TempDir,
    id: String,
    spawned: Option<Spawned>,
}

impl Fixture {
    fn new(id: &str) -> Fixture {
        let dir = tempfile::Builder::new()
            .prefix("berth-monitor-test")
            .tempdir()
            .unwrap();
        std::fs::create_dir(dir.path().join("logs")).unwrap();
        Fixture {
            dir,
            id: format!("{id}-{}", std::process::id()),
            spawned: None,
        }
    }

    fn state_root(&self) -> PathBuf {
        self.dir.path().join("state")
    }
    fn monitor_dir(&self) -> PathBuf {
        self.dir.path().join("monitor")
    }
    fn log_path(&self) -> PathBuf {
        self.dir.path().join("logs/0.log")
    }
    fn exit_file(&self) -> PathBuf {
        self.dir.path().join("exit.json")
    }

    fn spec(&self, args: &[&str]) -> MonitorSpec {
        MonitorSpec {
            version: 1,
            container_id: self.id.clone(),
            state_root: self.state_root(),
            cgroup_root: None,
            config: Config::new(rootfs()),
            process: Process::new(args.iter().copied()).spec,
            log_path: Some(self.log_path()),
            max_log_line: None,
            exit_file: self.exit_file(),
            sealed_init: None,
            stdin: false,
            stdin_once: false,
            restore: None,
            oci: None,
            shim: None,
        }
    }

    fn spawn(&mut self, spec: &MonitorSpec) -> Result<Spawned, MonitorError> {
        let s = monitor::spawn(Path::new(EXE), &self.monitor_dir(), spec)?;
        self.spawned = Some(s);
        Ok(s)
    }

    fn container(&self) -> Container {
        Container::load(self.state_root(), &self.id).unwrap()
    }

    /// The container's owner, through its task socket.
    fn task(&self) -> MonitorTask {
        MonitorTask::at(&self.monitor_dir())
    }

    fn release(&self) {
        self.task().start().unwrap();
    }

    fn wait_exit(&self) -> ExitRecord {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(r) = monitor::read_exit(&self.exit_file()) {
                return r;
            }
            assert!(
                Instant::now() < deadline,
                "no exit record after 10 s; monitor.log: {}",
                self.monitor_log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits for the monitor to be gone (it exits after the record).
    fn wait_monitor_gone(&self) {
        let pid = self.spawned.unwrap().monitor_pid;
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.task().is_running() {
            assert!(Instant::now() < deadline, "monitor {pid} still running");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn monitor_log(&self) -> String {
        std::fs::read_to_string(self.monitor_dir().join("monitor.log")).unwrap_or_default()
    }

    /// (stream, partial, content) of every record of the file at `path`.
    fn records_at(path: &Path) -> Vec<(Stream, bool, String)> {
        let data = std::fs::read(path).unwrap_or_default();
        data.split_inclusive(|&b| b == b'\n')
            .map(|l| {
                let (_, stream, partial, content) =
                    parse_record(l).unwrap_or_else(|| panic!("bad record {l:?}"));
                (stream, partial, String::from_utf8(content).unwrap())
            })
            .collect()
    }

    fn records(&self) -> Vec<(Stream, bool, String)> {
        Self::records_at(&self.log_path())
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        // Killed through its monitor, which then ends; then what is left.
        monitor::remove(&self.monitor_dir(), &self.state_root(), &self.id);
    }
}

fn full(stream: Stream, s: &str) -> (Stream, bool, String) {
    (stream, false, s.to_string())
}

#[test]
fn exit_code_and_both_streams_logged() {
    let Some(()) = privileged("exit_code_and_both_streams_logged") else {
        return;
    };
    let mut f = Fixture::new("mon-exit");
    let spec = f.spec(&["sh", "-c", "echo out; echo err >&2; exit 3"]);
    let s = f.spawn(&spec).unwrap();

    // Detached: its own session, not our child, and recognisable.
    assert_eq!(
        getsid(Some(Pid::from_raw(s.monitor_pid))).unwrap().as_raw(),
        s.monitor_pid
    );
    assert_ne!(
        ppid_of(s.monitor_pid),
        std::process::id() as i32,
        "the monitor is not our child"
    );
    assert!(f.task().is_running());

    // Created, waiting for the daemon's release; nothing has run yet.
    let state = f.task().state().unwrap();
    assert!(!state.started, "{state:?}");
    assert_eq!(state.init_pid, s.init_pid);
    assert_eq!(f.container().status(), Status::Created);
    assert!(monitor::read_exit(&f.exit_file()).is_none());
    let before_release = now_nanos();
    f.release();

    let r = f.wait_exit();
    assert_eq!(r.version, 1);
    assert_eq!(r.exit_code, 3);
    assert_eq!(r.signal, None);
    assert_eq!(r.reason, "Error");
    assert!(!r.oom_killed);
    assert_eq!(r.message, "");
    assert!(r.started_at >= before_release, "{r:?}");
    assert!(r.finished_at >= r.started_at, "{r:?}");
    // The two pipes are read independently: either record may come first.
    let records = f.records();
    assert_eq!(records.len(), 2, "{records:?}");
    assert!(
        records.contains(&full(Stream::Stdout, "out")),
        "{records:?}"
    );
    assert!(
        records.contains(&full(Stream::Stderr, "err")),
        "{records:?}"
    );
    f.wait_monitor_gone();
    // The monitor recorded and left; removing the container is the daemon's.
    assert!(f.state_root().join(&f.id).exists());
    assert_eq!(f.container().status(), Status::Stopped);
}

#[test]
fn zero_exit_is_completed_and_sigterm_does_not_stop_the_monitor() {
    let Some(()) = privileged("zero_exit_is_completed_and_sigterm_does_not_stop_the_monitor")
    else {
        return;
    };
    let mut f = Fixture::new("mon-zero");
    let spec = f.spec(&["sh", "-c", "sleep 0.3; echo bye"]);
    let s = f.spawn(&spec).unwrap();
    f.release();
    kill(Pid::from_raw(s.monitor_pid), Signal::SIGTERM).unwrap();
    let r = f.wait_exit();
    assert_eq!(
        (r.exit_code, r.signal, r.reason.as_str()),
        (0, None, "Completed")
    );
    assert_eq!(f.records(), [full(Stream::Stdout, "bye")]);
    assert!(
        f.monitor_log().contains("ignoring SIGTERM"),
        "{}",
        f.monitor_log()
    );
}

#[test]
fn killed_container_reports_128_plus_signal() {
    let Some(()) = privileged("killed_container_reports_128_plus_signal") else {
        return;
    };
    let mut f = Fixture::new("mon-kill");
    let spec = f.spec(&["sleep", "100"]);
    f.spawn(&spec).unwrap();
    f.release();
    assert!(f.task().state().unwrap().started);
    f.task().signal(libc_sigkill()).unwrap();
    let r = f.wait_exit();
    assert_eq!(r.exit_code, 137);
    assert_eq!(r.signal, Some(9));
    assert_eq!(r.reason, "Error");
    assert!(f.records().is_empty());
    f.wait_monitor_gone();
}

#[test]
fn container_killed_before_release_is_recorded() {
    let Some(()) = privileged("container_killed_before_release_is_recorded") else {
        return;
    };
    let mut f = Fixture::new("mon-norelease");
    let spec = f.spec(&["echo", "never"]);
    f.spawn(&spec).unwrap();
    // RemoveContainer of a container that was never started.
    f.task().shutdown().unwrap();
    let r = f.wait_exit();
    assert_eq!((r.exit_code, r.signal, r.started_at), (137, Some(9), 0));
    assert!(f.records().is_empty());
    f.wait_monitor_gone();
}

#[test]
fn bad_config_is_a_clear_error_and_leaves_nothing() {
    let Some(()) = privileged("bad_config_is_a_clear_error_and_leaves_nothing") else {
        return;
    };
    let mut f = Fixture::new("mon-bad");
    let mut spec = f.spec(&["true"]);
    spec.config.rootfs = f.dir.path().join("no-such-rootfs");
    let err = f.spawn(&spec).unwrap_err();
    let msg = err.to_string();
    println!("missing rootfs: {msg}");
    assert!(matches!(err, MonitorError::Create(_)), "{err:?}");
    assert!(
        msg.contains("create container") && msg.contains("no-such-rootfs"),
        "{msg}"
    );
    assert!(!f.state_root().join(&f.id).exists(), "no state dir left");
    assert!(
        f.monitor_log().contains("no-such-rootfs"),
        "{}",
        f.monitor_log()
    );

    // A failure after create (the process is refused by start): the
    // monitor destroys what it created.
    let mut spec = f.spec(&["true"]);
    spec.process.cwd = "relative".into();
    let err = f.spawn(&spec).unwrap_err();
    println!("relative cwd: {err}");
    assert!(err.to_string().contains("start container"), "{err}");
    assert!(err.to_string().contains("cwd"), "{err}");
    assert!(!f.state_root().join(&f.id).exists(), "no state dir left");

    // The log directory is missing: nothing is created at all.
    let mut spec = f.spec(&["true"]);
    spec.log_path = Some(f.dir.path().join("nodir/0.log"));
    let err = f.spawn(&spec).unwrap_err();
    println!("missing log directory: {err}");
    assert!(err.to_string().contains("open the container log"), "{err}");
    assert!(!f.state_root().join(&f.id).exists());
    assert!(monitor::read_exit(&f.exit_file()).is_none());
}

#[test]
fn reopen_log_after_rotation() {
    let Some(()) = privileged("reopen_log_after_rotation") else {
        return;
    };
    let mut f = Fixture::new("mon-reopen");
    let spec = f.spec(&["sh", "-c", "echo before; sleep 2; echo after"]);
    let _s = f.spawn(&spec).unwrap();
    f.release();
    let deadline = Instant::now() + Duration::from_secs(5);
    while f.records().is_empty() {
        assert!(Instant::now() < deadline, "no 'before' record");
        std::thread::sleep(Duration::from_millis(10));
    }
    // kubelet's rotation: rename, then ReopenContainerLog.
    let rotated = f.dir.path().join("logs/0.log.20240101-000000");
    std::fs::rename(f.log_path(), &rotated).unwrap();
    let t = Instant::now();
    f.task().reopen_log().unwrap();
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    assert!(f.log_path().exists(), "reopened: the file exists again");
    // Asking again with nothing renamed returns at once.
    f.task().reopen_log().unwrap();

    let r = f.wait_exit();
    assert_eq!(r.exit_code, 0);
    assert_eq!(
        Fixture::records_at(&rotated),
        [full(Stream::Stdout, "before")]
    );
    assert_eq!(f.records(), [full(Stream::Stdout, "after")]);
    f.wait_monitor_gone();
    assert!(matches!(f.task().reopen_log(), Err(TaskError::Gone)));
}

#[test]
fn long_line_is_split_into_partial_records() {
    let Some(()) = privileged("long_line_is_split_into_partial_records") else {
        return;
    };
    let mut f = Fixture::new("mon-long");
    // 40000 = 2 × 16 KiB + 7232; then a line without a newline at the end.
    let spec = f.spec(&[
        "sh",
        "-c",
        "head -c 40000 /dev/zero | tr '\\0' x; echo; printf tail",
    ]);
    f.spawn(&spec).unwrap();
    f.release();
    assert_eq!(f.wait_exit().exit_code, 0);
    let records = f.records();
    let shape: Vec<(bool, usize)> = records.iter().map(|(_, p, c)| (*p, c.len())).collect();
    assert_eq!(
        shape,
        [(true, 16384), (true, 16384), (false, 7232), (true, 4)],
        "P, P, F, then the unterminated tail as P"
    );
    assert!(records[..3]
        .iter()
        .all(|(s, _, c)| *s == Stream::Stdout && c.bytes().all(|b| b == b'x')));
    assert_eq!(records[3].2, "tail");
}

#[test]
fn terminal_output_is_logged_as_stdout() {
    let Some(()) = privileged("terminal_output_is_logged_as_stdout") else {
        return;
    };
    let mut f = Fixture::new("mon-tty");
    let mut spec = f.spec(&["sh", "-c", "echo on-tty; echo err-on-tty >&2; test -t 1"]);
    spec.process.terminal = Some(berth_core::process::ConsoleSize { rows: 24, cols: 80 });
    f.spawn(&spec).unwrap();
    f.release();
    let r = f.wait_exit();
    assert_eq!(r.exit_code, 0, "stdout is a terminal");
    assert_eq!(
        f.records(),
        [
            full(Stream::Stdout, "on-tty"),
            full(Stream::Stdout, "err-on-tty")
        ]
    );
}

#[test]
fn leftover_process_holding_the_pipe_does_not_delay_the_record() {
    let Some(()) = privileged("leftover_process_holding_the_pipe_does_not_delay_the_record") else {
        return;
    };
    let mut f = Fixture::new("mon-leftover");
    // No pid namespace: the background sleep outlives the init, holding
    // stdout open; it is reparented to the monitor (a subreaper).
    let mut spec = f.spec(&["sh", "-c", "sleep 3 & echo done"]);
    spec.config
        .namespaces
        .retain(|n| n.kind != NamespaceKind::Pid);
    spec.log_path = None;
    f.spawn(&spec).unwrap();
    f.release();
    let t = Instant::now();
    let r = f.wait_exit();
    assert_eq!(r.exit_code, 0);
    assert!(
        t.elapsed() < Duration::from_millis(2500),
        "{:?}",
        t.elapsed()
    );
    f.wait_monitor_gone();

    // With a cgroup (as every CRI container has), what the init left behind
    // is killed when it exits, as containerd's shim does for a container
    // sharing its pid namespace: nothing of it keeps running.
    let mut f = Fixture::new("mon-leftover-cg");
    let mut spec = f.spec(&["sh", "-c", "sleep 30 & echo done"]);
    spec.config
        .namespaces
        .retain(|n| n.kind != NamespaceKind::Pid);
    spec.log_path = None;
    let rel = format!("berth-test-{}/c", f.id);
    spec.config.cgroup = Some(CgroupConfig {
        path: rel.clone().into(),
        driver: Default::default(),
        resources: Resources::default(),
    });
    if let Err(e) = f.spawn(&spec) {
        println!("skipped: leftover kill: cannot create a cgroup here: {e}");
        return;
    }
    let procs = ["pids", "memory", "cpu", "unified", ""]
        .iter()
        .map(|c| {
            Path::new("/sys/fs/cgroup")
                .join(c)
                .join(&rel)
                .join("cgroup.procs")
        })
        .find(|p| p.exists())
        .expect("the container's cgroup");
    f.release();
    assert_eq!(f.wait_exit().exit_code, 0);
    let left = std::fs::read_to_string(&procs).unwrap_or_default();
    assert!(
        left.trim().is_empty(),
        "still in the container's cgroup: {left}"
    );
    f.wait_monitor_gone();
}

#[test]
fn oom_kill_is_reported() {
    let Some(()) = privileged("oom_kill_is_reported") else {
        return;
    };
    let root = Path::new(berth_core::container::DEFAULT_CGROUP_ROOT);
    let has_memory = match berth_core::cgroups::detect(root) {
        berth_core::cgroups::Version::V1 => root.join("memory/cgroup.procs").exists(),
        _ => std::fs::read_to_string(root.join("cgroup.controllers"))
            .is_ok_and(|c| c.split_whitespace().any(|c| c == "memory")),
    };
    if !has_memory {
        println!("skipped: oom_kill_is_reported: needs a cgroup memory controller");
        return;
    }
    let mut f = Fixture::new("mon-oom");
    let mut spec = f.spec(&["sh", "-c", "a=xxxxxxxx; while :; do a=$a$a; done"]);
    spec.config.cgroup = Some(CgroupConfig {
        path: format!("berth-test-{}/c", f.id).into(),
        driver: Default::default(),
        resources: Resources {
            memory_limit: Some(16 << 20),
            ..Default::default()
        },
    });
    if let Err(e) = f.spawn(&spec) {
        println!("skipped: oom_kill_is_reported: cannot create a memory-limited cgroup here: {e}");
        return;
    }
    f.release();
    let r = f.wait_exit();
    assert_eq!((r.exit_code, r.signal), (137, Some(9)), "{r:?}");
    assert!(r.oom_killed, "{r:?}");
    assert_eq!(r.reason, "OOMKilled");
}

fn libc_sigkill() -> i32 {
    Signal::SIGKILL as i32
}

fn now_nanos() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64
}

#[test]
fn container_inherits_only_its_stdio() {
    let Some(()) = privileged("container_inherits_only_its_stdio") else {
        return;
    };
    let mut f = Fixture::new("mon-fds");
    let spec = f.spec(&["sleep", "100"]);
    // An inheritable fd of the spawner (a daemon's socket-activation
    // listener, say) must not live on in the monitor.
    let marker = f.dir.path().join("inheritable");
    let file = std::fs::File::create(&marker).unwrap();
    let inheritable = nix::unistd::dup(std::os::fd::AsRawFd::as_raw_fd(&file)).unwrap();
    let spawned = f.spawn(&spec);
    nix::unistd::close(inheritable).unwrap();
    let s = spawned.unwrap();
    let monitor_fds: Vec<PathBuf> = std::fs::read_dir(format!("/proc/{}/fd", s.monitor_pid))
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .collect();
    assert!(!monitor_fds.contains(&marker), "{monitor_fds:?}");
    let status = std::fs::read_to_string(format!("/proc/{}/status", s.monitor_pid)).unwrap();
    assert!(
        status.lines().any(|l| l == "Threads:\t1"),
        "one thread: {status}"
    );
    // For the record: what a monitor costs (shared code pages aside).
    let mem = std::fs::read_to_string(format!("/proc/{}/smaps_rollup", s.monitor_pid))
        .unwrap_or_default();
    let field = |name: &str| {
        mem.lines()
            .find(|l| l.starts_with(name))
            .map_or("?".to_string(), |l| {
                l.split_whitespace().nth(1).unwrap_or("?").to_string()
            })
    };
    println!(
        "monitor memory: Rss {} kB, Pss {} kB, Private_Dirty {} kB",
        field("Rss:"),
        field("Pss:"),
        field("Private_Dirty:")
    );
    f.release();
    // Nothing of the monitor's (report pipe, signalfd, log file, pidfd) may
    // leak into the container: its process has exactly 0, 1 and 2.
    let mut fds: Vec<(String, String)> = std::fs::read_dir(format!("/proc/{}/fd", s.init_pid))
        .unwrap()
        .flatten()
        .map(|e| {
            let target = std::fs::read_link(e.path()).unwrap();
            (
                e.file_name().into_string().unwrap(),
                target.display().to_string(),
            )
        })
        .collect();
    fds.sort();
    assert_eq!(fds.len(), 3, "{fds:?}");
    // All three pipes, none a host file (CRIU can dump pipes); stdin's
    // write end is already closed: reading gives end-of-file.
    assert!(fds.iter().all(|(_, t)| t.starts_with("pipe:")), "{fds:?}");
    assert_ne!(fds[1].1, fds[2].1, "stdout and stderr are two pipes");
    f.task().signal(libc_sigkill()).unwrap();
    assert_eq!(f.wait_exit().exit_code, 137);
}

/// KiB of private memory in the mappings of the monitor's executable (what
/// relocation dirties).
fn private_exe_kib(pid: i32) -> u64 {
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap();
    let mut in_exe = false;
    let mut kib = 0;
    for line in smaps.lines() {
        let mut f = line.split_whitespace();
        let first = f.next().unwrap_or("");
        if first.contains('-') && first.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
            in_exe = f.nth(4).is_some_and(|p| Path::new(p) == exe);
        } else if in_exe && (first == "Private_Dirty:" || first == "Private_Clean:") {
            kib += f.next().and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        }
    }
    kib
}

fn ppid_of(pid: i32) -> i32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    stat.rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn the_zygote_forks_monitors_that_share_its_memory_and_outlive_it() {
    let Some(()) = privileged("the_zygote_forks_monitors_that_share_its_memory_and_outlive_it")
    else {
        return;
    };
    let tag = tempfile::tempdir().unwrap();
    let zygote = monitor::Zygote::new(EXE, tag.path());
    let mut forked = Fixture::new("mon-zygote");
    let spec = forked.spec(&["sleep", "100"]);
    let s = zygote.spawn(&forked.monitor_dir(), &spec).unwrap();
    forked.spawned = Some(s);
    let zpid = zygote.pid().expect("the zygote runs") as i32;

    // Detached from both the zygote and us, named, and recognised.
    assert_ne!(ppid_of(s.monitor_pid), zpid);
    assert_ne!(ppid_of(s.monitor_pid), std::process::id() as i32);
    assert_eq!(
        std::fs::read_to_string(format!("/proc/{}/comm", s.monitor_pid))
            .unwrap()
            .trim(),
        "berth-monitor"
    );
    assert!(forked.task().is_running());
    // It holds none of the zygote's descriptors (its request socket): no
    // socket it has is also the zygote's. (Its sockets are its own
    // task listener, and — until it has sent its readiness
    // report and let go of it, a moment after spawn returns — the report
    // channel, which the zygote does not keep.)
    let sockets_of = |pid: i32| -> Vec<String> {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .flatten()
            .filter_map(|e| std::fs::read_link(e.path()).ok())
            .map(|p| p.display().to_string())
            .filter(|p| p.starts_with("socket:["))
            .collect()
    };
    let zygote_sockets = sockets_of(zpid);
    assert!(
        !zygote_sockets.is_empty(),
        "the zygote holds its request socket"
    );
    let fds = sockets_of(s.monitor_pid);
    assert!(
        fds.iter().all(|f| !zygote_sockets.contains(f)),
        "monitor {fds:?} zygote {zygote_sockets:?}"
    );
    // /proc/net/unix: "... Inode Path" per socket; its listener is there.
    let unix = std::fs::read_to_string("/proc/net/unix").unwrap();
    let path_of = |inode: &str| -> String {
        unix.lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .find(|f| f.get(6) == Some(&inode))
            .and_then(|f| f.get(7).map(|p| p.to_string()))
            .unwrap_or_default()
    };
    let named: Vec<String> = fds
        .iter()
        .filter_map(|f| f.strip_prefix("socket:[")?.strip_suffix(']'))
        .map(path_of)
        .filter(|p| !p.is_empty())
        .collect();
    // (A connection it accepted on the listener carries the listener's
    // path too: the liveness check above may not be closed yet.)
    assert!(
        !named.is_empty() && named.iter().all(|p| p.ends_with("/task.sock")),
        "{fds:?} {named:?}"
    );

    // The relocated pages are shared with the zygote instead of copied.
    let mut exec = Fixture::new("mon-exec");
    let spec2 = exec.spec(&["sleep", "100"]);
    let e = exec.spawn(&spec2).unwrap();
    // The exec'd monitor's relocated pages become private only once the
    // first stage it was forked from has exited: sample until they are
    // (or 2 s), keeping the largest figure.
    let forked_kib = private_exe_kib(s.monitor_pid);
    let mut exec_kib = 0;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    while std::time::Instant::now() < deadline {
        exec_kib = exec_kib.max(private_exe_kib(e.monitor_pid));
        if forked_kib * 4 < exec_kib * 3 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    println!("private memory in the executable: forked {forked_kib} KiB, exec'd {exec_kib} KiB");
    // (Measured here: forked 170–370 KiB, exec'd 440–870 KiB; the spread
    // is the machine's, the gap is the zygote's.)
    assert!(
        forked_kib * 4 < exec_kib * 3,
        "forked {forked_kib} KiB vs exec'd {exec_kib} KiB"
    );
    exec.task().signal(libc_sigkill()).unwrap();

    // A dead zygote is replaced; the monitors it forked carry on.
    kill(Pid::from_raw(zpid), Signal::SIGKILL).unwrap();
    let mut again = Fixture::new("mon-zygote2");
    let spec3 = again.spec(&["true"]);
    let s3 = zygote.spawn(&again.monitor_dir(), &spec3).unwrap();
    again.spawned = Some(s3);
    assert_ne!(zygote.pid().unwrap() as i32, zpid, "a new zygote");
    assert!(forked.task().is_running());
    again.release();
    assert_eq!(again.wait_exit().reason, "Completed");
    forked.release();
    forked.task().signal(libc_sigkill()).unwrap();
    assert_eq!(forked.wait_exit().exit_code, 137);
    forked.wait_monitor_gone();

    // Dropping the handle ends the zygote.
    let last = zygote.pid().unwrap() as i32;
    drop(zygote);
    assert!(
        std::fs::read_to_string(format!("/proc/{last}/stat")).is_err()
            || std::fs::read_to_string(format!("/proc/{last}/stat"))
                .unwrap()
                .contains(") Z"),
        "the zygote exited"
    );
}

#[test]
fn task_protocol_refuses_wrong_versions_and_oversize_messages() {
    use berth_core::ipc::Channel;
    use berth_cri::task::proto::{FailureKind, Reply, Request, SOCKET_FILE, VERSION};
    let Some(()) = privileged("task_protocol_refuses_wrong_versions_and_oversize_messages") else {
        return;
    };
    let mut f = Fixture::new("mon-proto");
    let spec = f.spec(&["sleep", "100"]);
    f.spawn(&spec).unwrap();
    f.release();
    let socket = f.monitor_dir().join(SOCKET_FILE);
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&socket).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600, "the task socket is private");

    // Another version: refused with a typed error, then closed.
    let ch = Channel::connect(&socket).unwrap();
    ch.send(
        &Request::Hello {
            version: VERSION + 1,
        },
        &[],
    )
    .unwrap();
    match ch.recv::<Reply>().unwrap().0 {
        Reply::Error(e) => assert_eq!(e.kind, FailureKind::Version, "{e:?}"),
        other => panic!("{other:?}"),
    }
    assert!(ch.recv::<Reply>().is_err(), "closed after the refusal");

    // A request before the hello: refused.
    let ch = Channel::connect(&socket).unwrap();
    ch.send(&Request::State, &[]).unwrap();
    assert!(
        matches!(ch.recv::<Reply>().unwrap().0, Reply::Error(e) if e.kind == FailureKind::BadRequest)
    );

    // An oversize message: refused unread, the connection dropped.
    let ch = Channel::connect(&socket).unwrap();
    ch.send(&Request::Hello { version: VERSION }, &[]).unwrap();
    assert!(matches!(ch.recv::<Reply>().unwrap().0, Reply::Hello { .. }));
    let mut big = Process::new(["x".repeat((3 << 20) + (512 << 10))]).spec;
    big.env.clear();
    let request = Request::Exec {
        spec: Box::new(big),
        sealed_init: false,
        stdio: [false; 3],
    };
    ch.send(&request, &[]).unwrap();
    match ch.recv::<Reply>().unwrap().0 {
        Reply::Error(e) => {
            assert_eq!(e.kind, FailureKind::BadRequest, "{e:?}");
            assert!(e.message.contains("exceeds"), "{e:?}");
        }
        other => panic!("{other:?}"),
    }
    assert!(ch.recv::<Reply>().is_err(), "closed after the refusal");

    // The container and its owner are unaffected.
    let state = f.task().state().unwrap();
    assert!(state.started, "{state:?}");

    // An exec through the owner: its output on our pipe, its exit as an event.
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
    let mut spec = Process::new(["sh", "-c", "echo hi; exit 7"]).spec;
    spec.env = vec!["PATH=/bin:/usr/bin".into()];
    let stdio = berth_cri::task::ExecStdio {
        stdin: None,
        stdout: Some(w),
        stderr: None,
    };
    let exec = f.task().exec(&spec, stdio).unwrap();
    let mut out = String::new();
    std::io::Read::read_to_string(&mut std::fs::File::from(r), &mut out).unwrap();
    assert_eq!(out, "hi\n");
    let exit = exec.wait(Some(Duration::from_secs(10))).unwrap().unwrap();
    assert_eq!((exit.exit_code, exit.signal), (7, None));

    // Stats and an update through the owner.
    f.task().stats().unwrap();
    f.task().shutdown().unwrap();
    let r = f.wait_exit();
    assert_eq!(r.exit_code, 137);
    f.wait_monitor_gone();
    assert!(matches!(f.task().state(), Err(TaskError::Gone)));
}

#[test]
fn attach_joins_the_container_stdio_through_plain_pipes() {
    use berth_cri::task::proto::FailureKind;
    use berth_cri::task::{ExecStdio, TaskError};
    let Some(()) = privileged("attach_joins_the_container_stdio_through_plain_pipes") else {
        return;
    };
    let pipe = || nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
    let mut f = Fixture::new("mon-attach");
    let mut spec = f.spec(&["sh", "-c", "cat; echo done >&2"]);
    spec.process.env = vec!["PATH=/bin:/usr/bin".into()];
    spec.stdin = true;
    spec.stdin_once = true;
    f.spawn(&spec).unwrap();
    f.release();

    // Stderr with stdin on a container without a terminal: both pipes.
    let (in_r, in_w) = pipe();
    let (out_r, out_w) = pipe();
    let (err_r, err_w) = pipe();
    let attached = f
        .task()
        .attach(ExecStdio {
            stdin: Some(in_r),
            stdout: Some(out_w),
            stderr: Some(err_w),
        })
        .unwrap();
    // A resize without a terminal is nothing to do.
    attached
        .resize(berth_core::process::ConsoleSize { rows: 5, cols: 9 })
        .unwrap();
    let mut input = std::fs::File::from(in_w);
    std::io::Write::write_all(&mut input, b"hello through the monitor\n").unwrap();
    // End of our input: stdin_once closes the container's stdin, cat ends.
    drop(input);
    let mut out = String::new();
    std::io::Read::read_to_string(&mut std::fs::File::from(out_r), &mut out).unwrap();
    assert_eq!(out, "hello through the monitor\n");
    let mut err = String::new();
    std::io::Read::read_to_string(&mut std::fs::File::from(err_r), &mut err).unwrap();
    assert_eq!(err, "done\n");
    assert_eq!(f.wait_exit().exit_code, 0);
    drop(attached);
    f.wait_monitor_gone();
    // The log has what the client saw.
    let log = std::fs::read_to_string(f.log_path()).unwrap();
    assert!(log.contains("stdout F hello through the monitor"), "{log}");

    // A container without stdin refuses stdin, typed; attaching without
    // it works.
    let mut g = Fixture::new("mon-attach-nostdin");
    let spec = g.spec(&["sleep", "100"]);
    g.spawn(&spec).unwrap();
    g.release();
    let (in_r, _in_w) = pipe();
    match g.task().attach(ExecStdio {
        stdin: Some(in_r),
        ..ExecStdio::default()
    }) {
        Err(TaskError::Failed(e)) => assert_eq!(e.kind, FailureKind::Invalid, "{e:?}"),
        other => panic!("{other:?}"),
    }
    let (out_r, out_w) = pipe();
    let attached = g
        .task()
        .attach(ExecStdio {
            stdout: Some(out_w),
            ..ExecStdio::default()
        })
        .unwrap();
    // Its output ends with the container.
    g.task().shutdown().unwrap();
    let mut out = Vec::new();
    std::io::Read::read_to_end(&mut std::fs::File::from(out_r), &mut out).unwrap();
    assert!(out.is_empty());
    drop(attached);
    g.wait_monitor_gone();
}
