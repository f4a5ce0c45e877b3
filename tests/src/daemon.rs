//! The real `berth serve` daemon, started on directories of a test's own.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Debian's containernetworking-plugins install their plugins here.
pub const DEBIAN_CNI_BIN: &str = "/usr/lib/cni";

/// A network of the `loopback` plugin only: pods get `lo`, nothing else.
pub const LOOPBACK_CONFLIST: &str =
    r#"{"cniVersion":"1.0.0","name":"berth-test-lo","plugins":[{"type":"loopback"}]}"#;

/// A running `berth serve` with its socket, root and state under one
/// directory; killed (by its PID) on drop.
pub struct Daemon {
    pub child: Child,
    pub sock: PathBuf,
    pub log: PathBuf,
}

impl Daemon {
    /// Starts `berth serve` with `--listen DIR/berth.sock --root DIR/root
    /// --state DIR/state`, JSON debug logs to DIR/berth.log, plus `extra`.
    /// Unless `extra` names a `--cni-conf-dir`, pods get a loopback-only
    /// network through the real `loopback` CNI plugin (a config written to
    /// DIR/net.d; plugins from Debian's /usr/lib/cni), so the node's own
    /// /etc/cni/net.d never matters.
    pub fn start(berth: &Path, dir: &Path, extra: &[&str]) -> Daemon {
        Daemon::start_with_env(berth, dir, extra, &[])
    }

    /// [`Daemon::start`] with berth's own log settings (info, text: what
    /// the chart deploys) instead of JSON debug logs: what a benchmark of
    /// the daemon's memory measures, debug logging running code (and
    /// keeping pages) a node's daemon does not.
    pub fn start_as_deployed(berth: &Path, dir: &Path, extra: &[&str]) -> Daemon {
        Daemon::spawn(berth, dir, extra, &[], &[])
    }

    /// [`Daemon::start`] with more environment variables (e.g. the
    /// crash-point harness's `BERTH_CRASH_AT`).
    pub fn start_with_env(
        berth: &Path,
        dir: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Daemon {
        let log = ["--log-format", "json", "--log-level", "debug"];
        Daemon::spawn(berth, dir, extra, env, &log)
    }

    fn spawn(
        berth: &Path,
        dir: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
        log_args: &[&str],
    ) -> Daemon {
        let sock = dir.join("berth.sock");
        let log = dir.join("berth.log");
        let mut cni = Vec::new();
        if !extra.contains(&"--cni-conf-dir") {
            let conf = dir.join("net.d");
            std::fs::create_dir_all(&conf).expect("CNI config dir");
            std::fs::write(conf.join("10-lo.conflist"), LOOPBACK_CONFLIST).expect("CNI config");
            cni.push("--cni-conf-dir".to_string());
            cni.push(conf.to_string_lossy().into_owned());
            if !extra.contains(&"--cni-bin-dir") {
                cni.extend(["--cni-bin-dir".to_string(), DEBIAN_CNI_BIN.to_string()]);
            }
        }
        let child = Command::new(berth)
            .arg("serve")
            .arg("--listen")
            .arg(&sock)
            .arg("--root")
            .arg(dir.join("root"))
            .arg("--state")
            .arg(dir.join("state"))
            .args(log_args)
            .args(extra)
            .args(&cni)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&log)
                    .expect("daemon log file"),
            )
            .spawn()
            .expect("starting berth serve");
        Daemon { child, sock, log }
    }

    /// A channel to the daemon, once it accepts (20 s at most).
    pub async fn channel(&self) -> tonic::transport::Channel {
        crate::cri::wait_and_connect(&self.sock, Duration::from_secs(20))
            .await
            .unwrap_or_else(|e| panic!("{e}\nlog:\n{}", self.log()))
    }

    /// What the daemon logged.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn signal(&self, sig: i32) {
        // Only our own daemon, by its PID.
        let _ = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status();
    }

    /// SIGTERM, then the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        self.signal(15);
        self.child.wait().expect("waiting for berth serve")
    }

    /// The daemon's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL (a crash), then wait.
    pub fn crash(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Leaves nothing of a test's daemon behind under `dir` (also after a
/// failed assertion): kills the container monitors whose spec lives there
/// (by their PIDs, found through their command lines) and detaches every
/// mount under `dir` — pinned pod namespaces, /dev/shm tmpfs — all of them
/// the test's own.
pub fn cleanup_dir(dir: &Path) {
    let needle = dir.to_string_lossy().into_owned();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline);
        // Monitors, and the containerd shims of shim-v2 handlers (which
        // run in their bundles, below `dir`).
        let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap_or_default();
        if (cmdline.contains("__berth_monitor") && cmdline.contains(&needle))
            || (cmdline.contains("containerd-shim") && cwd.starts_with(dir))
        {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
    }
    // What such a shim left: its socket (recorded in the bundle) and its
    // runc state (containerd-shim-runc-v2's root for berth's namespace).
    for c in std::fs::read_dir(dir.join("state/containers"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let id = c.file_name();
        let bundle = c.path().join(&id);
        if let Ok(address) = std::fs::read_to_string(bundle.join("address")) {
            if let Some(sock) = address.trim().strip_prefix("unix://") {
                let _ = std::fs::remove_file(sock);
            }
            let _ = Command::new("runc")
                .args(["--root", "/run/containerd/runc/berth", "delete", "--force"])
                .arg(&id)
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut mounts: Vec<&str> = mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| m.starts_with(&needle))
        .collect();
    // Deepest first.
    mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
    for m in mounts {
        let _ = Command::new("umount").args(["-l", m]).status();
    }
    // The cgroups of the test's containers (named by their ids; without a
    // cgroup_parent they sit at each hierarchy's root). rmdir only removes
    // empty ones, and only these names are tried.
    let ids: Vec<String> = std::fs::read_dir(dir.join("root/metadata/containers"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_str()?
                .strip_suffix(".json")
                .map(str::to_string)
        })
        .filter(|id| id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()))
        .collect();
    remove_container_cgroups(&ids);
}

/// Removes the cgroups of containers `ids` (see [`container_cgroup_dirs`]):
/// a failed test can leave a container running (its monitor killed, its
/// init not), so what is still in a cgroup is killed first, by PID.
pub fn remove_container_cgroups(ids: &[String]) {
    let dirs = container_cgroup_dirs(ids);
    for cg in &dirs {
        let procs = std::fs::read_to_string(cg.join("cgroup.procs")).unwrap_or_default();
        for pid in procs.split_whitespace() {
            let _ = Command::new("kill").args(["-9", pid]).status();
        }
    }
    for cg in &dirs {
        for _ in 0..50 {
            if std::fs::remove_dir(cg).is_ok() || !cg.exists() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

/// The cgroup dirs of containers `ids` in every hierarchy (without a
/// cgroup_parent a container's cgroup is `<hierarchy>/<id>`).
pub fn container_cgroup_dirs(ids: &[String]) -> Vec<PathBuf> {
    let hierarchies: Vec<PathBuf> = std::fs::read_dir("/sys/fs/cgroup")
        .into_iter()
        .flatten()
        .flatten()
        .map(|h| h.path())
        .collect();
    ids.iter()
        .flat_map(|id| hierarchies.iter().map(move |h| h.join(id)))
        .collect()
}
