//! Privileged integration test of checkpoint and restore with the real
//! CRIU: a counting container is dumped out of one pod's namespaces and
//! restored into another's, and counts on.

mod common;

use std::io::{BufRead, BufReader};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use berth_core::cgroups::CgroupConfig;
use berth_core::container::checkpoint::{
    CheckpointOptions, CriuOptions, RestoreStdio, DESCRIPTORS_FILE,
};
use berth_core::pin::{pin, unpin, PinRequest};
use berth_core::security::capabilities::Capabilities;
use berth_core::security::user::User;
use berth_core::{
    Config, Container, ContainerError, Namespace, NamespaceKind, Process, Status, Stdio,
};
use common::*;

/// A `criu` that works on this kernel, or why not.
fn criu() -> Result<PathBuf, String> {
    let out = std::process::Command::new("criu")
        .arg("check")
        .output()
        .map_err(|e| format!("criu: {e} (scripts/install-criu.sh installs it)"))?;
    if !out.status.success() {
        return Err(format!(
            "`criu check` fails: {} (scripts/install-criu.sh builds a working one)",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(PathBuf::from("criu"))
}

/// Pinned pod namespaces, unpinned on drop.
struct Pod(PathBuf, berth_core::pin::PinnedNamespaces);

impl Pod {
    fn new(dir: &Path, hostname: &str) -> Pod {
        let req = PinRequest {
            net: true,
            ipc: true,
            uts: true,
            hostname: Some(hostname.into()),
            ..Default::default()
        };
        Pod(dir.to_path_buf(), pin(dir, &req).unwrap())
    }

    /// `config` joining this pod's network, IPC and UTS namespaces.
    fn join(&self, config: &mut Config) {
        config.namespaces.retain(|n| {
            !matches!(
                n.kind,
                NamespaceKind::Network | NamespaceKind::Ipc | NamespaceKind::Uts
            )
        });
        for (kind, path) in [
            (NamespaceKind::Network, &self.1.net),
            (NamespaceKind::Ipc, &self.1.ipc),
            (NamespaceKind::Uts, &self.1.uts),
        ] {
            let mut ns = Namespace::new(kind);
            ns.path = path.clone();
            config.namespaces.push(ns);
        }
        config.hostname = None;
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        let _ = unpin(&self.0);
    }
}

/// Containers of a state root killed and destroyed on drop, so that a
/// failed assertion leaves no process or cgroup behind.
struct Cleanup<'a>(&'a Path, Vec<String>);

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        for id in &self.1 {
            if let Ok(c) = Container::load(self.0, id) {
                let _ = c.signal(9);
                for pid in c.processes() {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::SIGKILL,
                    );
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
                let _ = c.destroy();
            }
        }
    }
}

/// stdin (a pipe nobody writes to), stdout and stderr pipes: the ends for
/// the container and the stdout reader.
fn stdio() -> ([OwnedFd; 3], OwnedFd) {
    let (in_r, _in_w) = pipe();
    let (out_r, out_w) = pipe();
    let (_err_r, err_w) = pipe();
    ([in_r, out_w, err_w], out_r)
}

fn next_number(lines: &mut impl Iterator<Item = std::io::Result<String>>) -> Option<u64> {
    lines.next()?.ok()?.trim().parse().ok()
}

#[test]
fn a_counter_restored_into_another_pod_counts_on() {
    let Some(()) = privileged("a_counter_restored_into_another_pod_counts_on") else {
        return;
    };
    let criu = match criu() {
        Ok(c) => c,
        Err(why) => {
            println!("skipped: {why}");
            return;
        }
    };
    let scratch = tempfile::Builder::new()
        .prefix("berth-ckpt")
        .tempdir()
        .unwrap();
    let (_rootdir, rootfs) = private_rootfs("berth-ckpt-rootfs");
    let pod_a = Pod::new(&scratch.path().join("pod-a"), "pod-a");
    let pod_b = Pod::new(&scratch.path().join("pod-b"), "pod-b");
    let state = state_root();
    let cgroup = |id: &str| CgroupConfig {
        path: format!("berth-test-ckpt/{id}").into(),
        ..Default::default()
    };

    // The counter, in pod A: one line per number, also kept in a file.
    let id = unique_id("ckpt");
    let id2 = unique_id("restored");
    let id3 = unique_id("refused");
    let _cleanup = Cleanup(state.path(), vec![id.clone(), id2.clone(), id3.clone()]);
    let mut config = base_config(&rootfs);
    pod_a.join(&mut config);
    config.cgroup = Some(cgroup(&id));
    let mut c = Container::create(state.path(), &id, config.clone())
        .unwrap()
        .with_init_binary(init_binary());
    let mut p = Process::new([
        "/bin/sh",
        "-c",
        "i=0; while :; do i=$((i+1)); echo $i > /count; echo $i; sleep 0.05; done",
    ]);
    let ([i, o, e], out) = stdio();
    (p.stdin, p.stdout, p.stderr) = (Stdio::Fd(i), Stdio::Fd(o), Stdio::Fd(e));
    let spec = p.spec.clone();
    let h = c.run(p).unwrap();
    let mut lines = BufReader::new(std::fs::File::from(out)).lines();
    for want in 1..=5 {
        assert_eq!(next_number(&mut lines), Some(want));
    }

    // Dumped while frozen, then killed by CRIU.
    let images = scratch.path().join("images");
    let mut criu_opts = CriuOptions::new(&images, scratch.path().join("work"));
    criu_opts.criu = criu;
    criu_opts.timeout = Some(std::time::Duration::from_secs(60));
    c.pause().unwrap();
    c.checkpoint(&CheckpointOptions {
        criu: criu_opts.clone(),
        leave_running: false,
    })
    .unwrap_or_else(|e| panic!("checkpoint: {}", chain(&e)));
    let status = h.wait().unwrap();
    assert_eq!(status.code(), 128 + 9, "CRIU kills the dumped tree");
    let mut last = 5;
    while let Some(n) = next_number(&mut lines) {
        last = n;
    }
    assert!(images.join(DESCRIPTORS_FILE).exists());
    assert!(images.join("inventory.img").exists());
    c.destroy().unwrap();

    // Restored into a container that asks for less than the dumped root
    // shell held (uid 1000, no capabilities, no_new_privs): refused while
    // the tasks are stopped, and nothing of it is left running.
    let mut config3 = config.clone();
    pod_b.join(&mut config3);
    config3.cgroup = Some(cgroup(&id3));
    let mut c3 = Container::create(state.path(), &id3, config3)
        .unwrap()
        .with_init_binary(init_binary());
    let mut restricted = spec.clone();
    restricted.user = User::ids(1000, 1000);
    restricted.capabilities = Some(Capabilities::none());
    restricted.no_new_privileges = Some(true);
    let (fds3, _out3) = stdio();
    let err = c3
        .restore(&criu_opts, RestoreStdio::Pipes(fds3), &restricted)
        .unwrap_err();
    let msg = chain(&err);
    assert!(
        matches!(err, ContainerError::RestoreRefused { .. }),
        "{msg}"
    );
    for want in ["uids [0, 0, 0, 0] where only 1000", "CAP_SYS_CHROOT"] {
        assert!(msg.contains(want), "{want}: {msg}");
    }
    assert!(c3.processes().is_empty(), "{:?}", c3.processes());
    // Its cgroup is gone (it could only be removed once empty).
    let rel = format!("berth-test-ckpt/{id3}");
    let mut cgroup_dirs = vec![Path::new("/sys/fs/cgroup").join(&rel)];
    for ctrl in std::fs::read_dir("/sys/fs/cgroup").unwrap().flatten() {
        cgroup_dirs.push(ctrl.path().join(&rel));
    }
    for d in cgroup_dirs {
        assert!(!d.exists(), "{} is left", d.display());
    }
    c3.destroy().unwrap();

    // Restored into pod B: stopped until released, then counting on.
    let mut config2 = config.clone();
    pod_b.join(&mut config2);
    config2.cgroup = Some(cgroup(&id2));
    let mut c2 = Container::create(state.path(), &id2, config2)
        .unwrap()
        .with_init_binary(init_binary());
    let (fds, out2) = stdio();
    let h2 = c2
        .restore(&criu_opts, RestoreStdio::Pipes(fds), &spec)
        .unwrap_or_else(|e| panic!("restore: {}", chain(&e)));
    assert_eq!(c2.status(), Status::Created);
    // The shell (and its sleep, if one was running at the dump) in the new
    // container's cgroup.
    assert!(c2.processes().contains(&h2.pid()), "{:?}", c2.processes());
    c2.release().unwrap();
    assert_eq!(c2.status(), Status::Running);
    let mut lines2 = BufReader::new(std::fs::File::from(out2)).lines();
    assert_eq!(
        next_number(&mut lines2),
        Some(last + 1),
        "continues, not from 0"
    );
    assert_eq!(next_number(&mut lines2), Some(last + 2));
    // In pod B's namespaces.
    let pid = h2.pid();
    for kind in ["net", "uts", "ipc"] {
        assert_eq!(
            std::fs::metadata(format!("/proc/{pid}/ns/{kind}"))
                .map(|m| {
                    use std::os::unix::fs::MetadataExt;
                    m.ino()
                })
                .unwrap(),
            {
                use std::os::unix::fs::MetadataExt;
                std::fs::metadata(pod_b.0.join(kind)).unwrap().ino()
            },
            "{kind} namespace"
        );
    }
    c2.signal(9).unwrap();
    h2.wait().unwrap();
    c2.destroy().unwrap();
}
