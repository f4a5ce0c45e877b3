//! Privileged integration tests of pinned pod namespaces: what containers
//! that join them see, and that unpin (and every failure) leaves nothing.

mod common;

use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use berth_core::pin::{is_pinned, pin, unpin, PinError, PinRequest, PinnedNamespaces};
use berth_core::{
    Config, Container, ExitStatus, Mount, Namespace, NamespaceKind, Process, ProcessHandle,
};
use common::*;
use nix::sched::{setns, unshare, CloneFlags};

/// A parent directory for one test's pod dirs; on drop, unpins what is left
/// (a failed assertion must not leave mounts behind), then removes itself.
struct Scratch(tempfile::TempDir);

impl Scratch {
    fn new() -> Self {
        Self(
            tempfile::Builder::new()
                .prefix("berth-pin")
                .tempdir()
                .unwrap(),
        )
    }

    fn pod(&self, name: &str) -> PathBuf {
        self.0.path().join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        for e in std::fs::read_dir(self.0.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            let _ = unpin(&e.path());
        }
    }
}

/// Mount points at or below `dir`, from this process's mountinfo.
fn mounts_under(dir: &Path) -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| {
            let mp = l.split(' ').nth(4).unwrap_or("");
            Path::new(mp).starts_with(dir)
        })
        .map(str::to_string)
        .collect()
}

fn ino(p: &Path) -> u64 {
    std::fs::metadata(p).unwrap().ino()
}

/// The test's rootfs config, joining `joins` instead of creating those kinds
/// (and without a hostname of its own: the UTS namespace may be the pod's).
fn joining(joins: &[(NamespaceKind, &Path)]) -> Config {
    let mut c = base_config(rootfs());
    c.hostname = None;
    c.namespaces
        .retain(|n| !joins.iter().any(|(k, _)| *k == n.kind));
    for (kind, path) in joins {
        c.namespaces.push(Namespace::join(*kind, *path));
    }
    c
}

fn pod_joins(p: &PinnedNamespaces) -> Vec<(NamespaceKind, &Path)> {
    let mut v = Vec::new();
    for (kind, path) in [
        (NamespaceKind::Network, &p.net),
        (NamespaceKind::Ipc, &p.ipc),
        (NamespaceKind::Uts, &p.uts),
    ] {
        if let Some(path) = path {
            v.push((kind, path.as_path()));
        }
    }
    v
}

fn thread_ns() -> Vec<String> {
    ["net", "ipc", "uts", "pid", "pid_for_children", "mnt"]
        .iter()
        .map(|n| {
            std::fs::read_link(format!("/proc/thread-self/ns/{n}"))
                .unwrap()
                .display()
                .to_string()
        })
        .collect()
}

fn assert_gone(dir: &Path) {
    assert!(!dir.exists(), "{} is left", dir.display());
    assert_eq!(mounts_under(dir), Vec::<String>::new(), "mounts left");
}

#[test]
fn container_joins_pinned_namespaces() {
    let Some(()) = privileged("container_joins_pinned_namespaces") else {
        return;
    };
    let scratch = Scratch::new();
    let dir = scratch.pod("pod");
    let before = (thread_ns(), nix::unistd::gethostname().unwrap());
    let req = PinRequest {
        net: true,
        ipc: true,
        uts: true,
        pid: false,
        hostname: Some("pod-a".into()),
        shm_size: Some(8 << 20),
        user: false,
        from_pid: None,
    };
    let p = pin(&dir, &req).unwrap();
    // The caller's own thread is untouched (the work ran in a thread of its own).
    assert_eq!(before, (thread_ns(), nix::unistd::gethostname().unwrap()));
    assert_eq!(
        p,
        PinnedNamespaces {
            dir: dir.clone(),
            net: Some(dir.join("net")),
            ipc: Some(dir.join("ipc")),
            uts: Some(dir.join("uts")),
            user: None,
            pid: None,
            shm: Some(dir.join("shm")),
        }
    );
    let (net, ipc, uts, shm) = (
        p.net.clone().unwrap(),
        p.ipc.clone().unwrap(),
        p.uts.clone().unwrap(),
        p.shm.clone().unwrap(),
    );
    assert!(is_pinned(&net, NamespaceKind::Network));
    assert!(is_pinned(&ipc, NamespaceKind::Ipc));
    assert!(is_pinned(&uts, NamespaceKind::Uts));
    assert!(!is_pinned(&net, NamespaceKind::Uts), "wrong kind");
    assert!(!is_pinned(&dir.join("pid"), NamespaceKind::Pid), "missing");
    assert!(
        !is_pinned(&dir.join("nope"), NamespaceKind::Network),
        "missing"
    );
    assert!(!is_pinned(&shm, NamespaceKind::Ipc), "a directory");
    assert!(
        !is_pinned(Path::new("/proc/self/ns/net"), NamespaceKind::Network),
        "a /proc symlink is not a pinned file"
    );
    assert_ne!(
        ino(&net),
        ino(Path::new("/proc/self/ns/net")),
        "a new netns"
    );

    // setns on the pinned files, in a throwaway thread.
    let (n, u) = (net.clone(), uts.clone());
    let (joined_ino, joined_host) = std::thread::spawn(move || {
        setns(File::open(&n).unwrap(), CloneFlags::CLONE_NEWNET).unwrap();
        setns(File::open(&u).unwrap(), CloneFlags::CLONE_NEWUTS).unwrap();
        (
            ino(Path::new("/proc/thread-self/ns/net")),
            nix::unistd::gethostname().unwrap(),
        )
    })
    .join()
    .unwrap();
    assert_eq!(joined_ino, ino(&net));
    assert_eq!(joined_host, "pod-a");

    // The shm tmpfs, as asked for.
    let m = mounts_under(&shm);
    assert_eq!(m.len(), 1, "{m:?}");
    let fields: Vec<&str> = m[0].split(' ').collect();
    let opts = fields[5];
    let sep = fields.iter().position(|f| *f == "-").unwrap();
    assert_eq!(fields[sep + 1], "tmpfs", "{m:?}");
    for o in ["nosuid", "nodev", "noexec"] {
        assert!(opts.split(',').any(|x| x == o), "{o} in {m:?}");
    }
    assert!(fields[sep + 3].contains("size=8192k"), "{m:?}");
    assert_eq!(
        std::fs::metadata(&shm).unwrap().permissions().mode() & 0o7777,
        0o1777
    );

    // A container joining net, ipc, uts, with the pod's shm as /dev/shm.
    let mut c = joining(&pod_joins(&p));
    for mnt in c.mounts.iter_mut() {
        if mnt.destination == Path::new("/dev/shm") {
            *mnt = Mount::bind(&shm, "/dev/shm", &[]);
        }
    }
    let out = run(
        c,
        &[
            "sh",
            "-c",
            "hostname; for n in net ipc uts; do stat -L -c %i /proc/self/ns/$n; done; \
             cat /sys/class/net/lo/flags; echo hi > /dev/shm/x",
        ],
    );
    assert_eq!(out.status, ExitStatus::Exited(0), "{out:?}");
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines[0], "pod-a");
    assert_eq!(lines[1], ino(&net).to_string(), "net");
    assert_eq!(lines[2], ino(&ipc).to_string(), "ipc");
    assert_eq!(lines[3], ino(&uts).to_string(), "uts");
    let flags = u32::from_str_radix(lines[4].trim_start_matches("0x"), 16).unwrap();
    assert_eq!(flags & libc::IFF_UP as u32, libc::IFF_UP as u32, "lo is up");
    assert_eq!(std::fs::read_to_string(shm.join("x")).unwrap(), "hi\n");

    unpin(&dir).unwrap();
    assert_gone(&dir);
    assert!(!is_pinned(&net, NamespaceKind::Network));
    unpin(&dir).unwrap();
}

#[test]
fn two_containers_share_the_pod_network() {
    let Some(()) = privileged("two_containers_share_the_pod_network") else {
        return;
    };
    let scratch = Scratch::new();
    let dir = scratch.pod("pod");
    let req = PinRequest {
        net: true,
        uts: true,
        hostname: Some("pod-b".into()),
        ..Default::default()
    };
    let p = pin(&dir, &req).unwrap();
    let net = p.net.clone().unwrap();
    let script = "stat -L -c %i /proc/self/ns/net; hostname";
    let a = run(joining(&pod_joins(&p)), &["sh", "-c", script]);
    let b = run(joining(&pod_joins(&p)), &["sh", "-c", script]);
    let alone = run(base_config(rootfs()), &["sh", "-c", script]);
    let want = format!("{}\npod-b\n", ino(&net));
    assert_eq!(a.stdout, want, "{a:?}");
    assert_eq!(b.stdout, want, "{b:?}");
    assert!(
        !alone.stdout.starts_with(&ino(&net).to_string()),
        "{alone:?}"
    );

    unpin(&dir).unwrap();
    assert_gone(&dir);
    unpin(&dir).unwrap();
}

#[test]
fn bad_requests_leave_nothing() {
    let Some(()) = privileged("bad_requests_leave_nothing") else {
        return;
    };
    let scratch = Scratch::new();
    let dir = scratch.pod("pod");
    let cases = [
        PinRequest {
            net: true,
            hostname: Some("no-uts".into()),
            ..Default::default()
        },
        PinRequest {
            uts: true,
            hostname: Some("a/b".into()),
            ..Default::default()
        },
        PinRequest {
            net: true,
            shm_size: Some(0),
            ..Default::default()
        },
    ];
    for req in cases {
        let e = pin(&dir, &req).unwrap_err();
        assert!(matches!(e, PinError::Request(_)), "{req:?}: {e:?}");
        assert_gone(&dir);
    }
    let req = PinRequest {
        net: true,
        pid: true,
        ..Default::default()
    };
    assert!(matches!(pin(&dir, &req), Err(PinError::PidNamespace)));
    assert_gone(&dir);
    let req = PinRequest {
        net: true,
        ..Default::default()
    };
    assert!(matches!(
        pin(Path::new("relative/pod"), &req),
        Err(PinError::Request(_))
    ));
    let orphan = scratch.pod("no-such-parent/pod");
    assert!(matches!(
        pin(&orphan, &req),
        Err(PinError::CreateDir { .. })
    ));
    assert!(!orphan.parent().unwrap().exists());

    // An existing directory that is not empty is refused and left as it was.
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("net"), "mine").unwrap();
    let e = pin(&dir, &req).unwrap_err();
    assert!(matches!(e, PinError::DirNotEmpty(_)), "{e:?}");
    assert_eq!(std::fs::read_to_string(dir.join("net")).unwrap(), "mine");
    std::fs::remove_file(dir.join("net")).unwrap();

    // An existing empty one is used, and unpin removes it.
    let p = pin(&dir, &req).unwrap();
    assert!(is_pinned(p.net.as_ref().unwrap(), NamespaceKind::Network));
    unpin(&dir).unwrap();
    assert_gone(&dir);
}

#[test]
fn failure_midway_undoes_everything() {
    let Some(()) = privileged("failure_midway_undoes_everything") else {
        return;
    };
    let scratch = Scratch::new();
    // net and ipc are pinned before the kernel refuses the hostname
    // (sethostname: EINVAL past 64 bytes).
    let req = PinRequest {
        net: true,
        ipc: true,
        uts: true,
        pid: false,
        hostname: Some("h".repeat(65)),
        shm_size: Some(1 << 20),
        user: false,
        from_pid: None,
    };
    let dir = scratch.pod("fresh");
    let e = pin(&dir, &req).unwrap_err();
    assert!(
        matches!(
            e,
            PinError::SetHostname {
                source: nix::errno::Errno::EINVAL,
                ..
            }
        ),
        "{e:?}"
    );
    assert_gone(&dir);

    // A directory that existed before stays, empty.
    let dir = scratch.pod("existing");
    std::fs::create_dir(&dir).unwrap();
    pin(&dir, &req).unwrap_err();
    assert_eq!(mounts_under(&dir), Vec::<String>::new());
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
    std::fs::remove_dir(&dir).unwrap();
}

#[test]
fn unpin_cleans_half_pods_and_stays_inside_dir() {
    let Some(()) = privileged("unpin_cleans_half_pods_and_stays_inside_dir") else {
        return;
    };
    let scratch = Scratch::new();
    let req = PinRequest {
        net: true,
        ipc: true,
        shm_size: Some(1 << 20),
        ..Default::default()
    };
    // A crash left ipc unmounted (a plain file) and no shm dir.
    let dir = scratch.pod("half");
    let p = pin(&dir, &req).unwrap();
    nix::mount::umount2(p.ipc.as_ref().unwrap(), nix::mount::MntFlags::MNT_DETACH).unwrap();
    nix::mount::umount2(p.shm.as_ref().unwrap(), nix::mount::MntFlags::MNT_DETACH).unwrap();
    std::fs::remove_dir(p.shm.as_ref().unwrap()).unwrap();
    unpin(&dir).unwrap();
    assert_gone(&dir);

    // A symlink to a pod is refused, and the pod it points at is untouched.
    let real = scratch.pod("real");
    let p = pin(&real, &req).unwrap();
    let link = scratch.pod("link");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    assert!(matches!(unpin(&link), Err(PinError::OpenDir { .. })));
    assert!(is_pinned(p.net.as_ref().unwrap(), NamespaceKind::Network));
    std::fs::remove_file(&link).unwrap();

    // A file of another name is not ours: unpin unmounts and removes its own,
    // then fails to remove the directory, and leaves that file alone.
    std::fs::write(real.join("other"), "keep").unwrap();
    let e = unpin(&real).unwrap_err();
    assert!(matches!(e, PinError::Remove { .. }), "{e:?}");
    assert_eq!(mounts_under(&real), Vec::<String>::new());
    assert_eq!(std::fs::read_to_string(real.join("other")).unwrap(), "keep");
    std::fs::remove_file(real.join("other")).unwrap();
    unpin(&real).unwrap();
    assert_gone(&real);
}

/// Starts a container joining `joins` with `args` as its init; returns it
/// with its handle, the read end of its stdout, and its state root.
type Started = (Container, ProcessHandle, OwnedFd, tempfile::TempDir);

fn start(joins: &[(NamespaceKind, &Path)], args: &[&str]) -> Result<Started, String> {
    let state = state_root();
    let mut c = Container::create(state.path(), &unique_id("pin"), joining(joins))
        .unwrap()
        .with_init_binary(init_binary());
    let mut p = Process::new(args.iter().copied());
    let (o, _) = capture(&mut p);
    match c.run(p) {
        Ok(h) => Ok((c, h, o, state)),
        Err(err) => {
            let msg = chain(&err);
            c.destroy().unwrap();
            Err(msg)
        }
    }
}

/// Why `pin` refuses a pid namespace: the kernel gives no handle on a new pid
/// namespace until its init exists, and after the init exits it takes no
/// new process. What a pod that shares one can do instead: later containers
/// join the first container's pid namespace while its init lives.
#[test]
fn pid_namespace_needs_a_living_init() {
    let Some(()) = privileged("pid_namespace_needs_a_living_init") else {
        return;
    };
    // unshare(CLONE_NEWPID) works in a thread of this multi-threaded test
    // process, but the new namespace cannot be opened yet (ENOENT).
    let opened = std::thread::spawn(|| {
        unshare(CloneFlags::CLONE_NEWPID).unwrap();
        File::open("/proc/thread-self/ns/pid_for_children").map_err(|e| e.raw_os_error())
    })
    .join()
    .unwrap();
    assert_eq!(opened.err(), Some(Some(libc::ENOENT)));

    // A creates a pid namespace; B joins it while A's init lives.
    let (a, ha, ao, _sa) = start(&[], &["sh", "-c", "echo $$; exec sleep 60"]).unwrap();
    let ns = File::open(format!("/proc/{}/ns/pid", ha.pid())).unwrap();
    let ns_path = PathBuf::from(format!("/proc/self/fd/{}", ns.as_raw_fd()));
    let joins = [(NamespaceKind::Pid, ns_path.as_path())];
    let b = run(
        joining(&joins),
        &[
            "sh",
            "-c",
            "echo $$; tr '\\0' ' ' < /proc/1/cmdline; echo; stat -L -c %i /proc/self/ns/pid",
        ],
    );
    assert_eq!(b.status, ExitStatus::Exited(0), "{b:?}");
    let lines: Vec<&str> = b.stdout.lines().collect();
    assert_ne!(lines[0], "1", "{b:?}");
    assert_eq!(lines[1].trim(), "sleep 60", "A's init is B's pid 1: {b:?}");
    assert_eq!(lines[2], ns.metadata().unwrap().ino().to_string(), "{b:?}");

    // When that init dies the namespace, still held open, takes no process.
    ha.signal(libc::SIGKILL).unwrap();
    assert_eq!(ha.wait().unwrap(), ExitStatus::Signaled(libc::SIGKILL));
    let (aout, _) = collect(ao, File::open("/dev/null").unwrap().into());
    assert_eq!(aout, "1\n", "A's init was pid 1");
    a.destroy().unwrap();
    let Err(err) = start(&joins, &["true"]) else {
        panic!("joined a pid namespace whose init is dead");
    };
    assert!(err.contains("ENOMEM"), "{err}");
}

#[test]
fn a_user_namespace_and_its_namespaces_are_pinned_from_a_process() {
    let Some(()) = privileged("a_user_namespace_and_its_namespaces_are_pinned_from_a_process")
    else {
        return;
    };
    if std::process::Command::new("unshare")
        .arg("--version")
        .output()
        .is_err()
    {
        println!("skipped: a_user_namespace_...: no unshare(1)");
        return;
    }
    let scratch = Scratch::new();
    let dir = scratch.pod("userns");
    // A user namespace of its own owning new net/ipc/uts, as the zygote's
    // holder makes them.
    let mut holder = std::process::Command::new("unshare")
        .args(["--user", "--net", "--ipc", "--uts", "sleep", "100"])
        .spawn()
        .unwrap();
    let pid = holder.id() as i32;
    // Wait for unshare to have exec'd sleep in the new namespaces.
    let own = std::fs::read_link("/proc/self/ns/user").unwrap();
    for _ in 0..200 {
        if std::fs::read_link(format!("/proc/{pid}/ns/user")).is_ok_and(|l| l != own) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    std::fs::write(format!("/proc/{pid}/uid_map"), "0 500000 65536\n").unwrap();
    std::fs::write(format!("/proc/{pid}/gid_map"), "0 500000 65536\n").unwrap();
    // A hostname with from_pid is refused: the process sets its own.
    let bad = PinRequest {
        uts: true,
        hostname: Some("x".into()),
        from_pid: Some(pid),
        ..Default::default()
    };
    assert!(matches!(pin(&dir, &bad), Err(PinError::Request(_))));
    // A user namespace without a process is refused (a thread cannot make one).
    let bad = PinRequest {
        user: true,
        ..Default::default()
    };
    assert!(matches!(pin(&dir, &bad), Err(PinError::Request(_))));
    let req = PinRequest {
        net: true,
        ipc: true,
        uts: true,
        user: true,
        from_pid: Some(pid),
        ..Default::default()
    };
    let p = pin(&dir, &req).unwrap();
    let _ = holder.kill();
    let _ = holder.wait();
    // The namespaces outlive the process.
    let user = p.user.clone().unwrap();
    assert!(is_pinned(&user, NamespaceKind::User));
    assert!(is_pinned(p.net.as_ref().unwrap(), NamespaceKind::Network));
    let uid_map = |path: &std::path::Path| {
        // A process joining the pinned user namespace sees the map.
        let out = std::process::Command::new("nsenter")
            .arg(format!("--user={}", path.display()))
            .args(["cat", "/proc/self/uid_map"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    };
    assert_eq!(uid_map(&user), "0 500000 65536");
    unpin(&dir).unwrap();
    assert!(!dir.exists());
}
