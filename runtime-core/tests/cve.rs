//! Regression tests for the runc advisories of 2019–2025: each tries the
//! attack and shows it fails.

mod common;

use std::io::Read;
use std::os::fd::OwnedFd;

use berth_core::{Container, Mount, Process, Stdio};
use common::*;

fn sha(path: &std::path::Path) -> Vec<u8> {
    // Not a cryptographic need: compare the whole content.
    std::fs::read(path).unwrap()
}

/// CVE-2019-5736: the binary running as the container's init/exec is a
/// sealed memfd, and the bootstrap is not dumpable: neither the host binary
/// nor the copy can be written through /proc/PID/exe.
#[test]
fn cve_2019_5736_init_binary_cannot_be_overwritten() {
    let Some(()) = privileged("cve_2019_5736_init_binary_cannot_be_overwritten") else {
        return;
    };
    let host_bin = std::path::PathBuf::from(env!("CARGO_BIN_EXE_berth-core-init"));
    let before = sha(&host_bin);
    let state = state_root();

    // 1. A created container's init (waiting to be released) runs the sealed
    //    copy: even root on the host cannot open it for writing.
    let mut c = Container::create(state.path(), &unique_id("5736"), base_config(rootfs()))
        .unwrap()
        .with_init_binary(init_binary());
    let h = c.start(Process::new(["true"])).unwrap();
    let exe = std::fs::read_link(format!("/proc/{}/exe", h.pid())).unwrap();
    assert!(
        exe.to_string_lossy().contains("memfd:berth-init"),
        "{exe:?}"
    );
    let w = std::fs::OpenOptions::new()
        .write(true)
        .open(format!("/proc/{}/exe", h.pid()));
    assert!(w.is_err(), "the running init binary is not writable");
    c.release().unwrap();
    h.wait().unwrap();
    c.destroy().unwrap();

    // 2. A container process races to grab /proc/PID/exe of every new
    //    process (our exec bootstraps among them) and write through it later.
    let mut c = Container::create(state.path(), &unique_id("5736r"), base_config(rootfs()))
        .unwrap()
        .with_init_binary(init_binary());
    let (r, w) = pipe();
    // (A subshell: a failed redirection of `exec` would end the shell.)
    let racer = "while :; do for p in /proc/[0-9]*; do \
          ( exec 3<$p/exe && echo OPENED $p && sleep 0.05 && \
            cat /bin/busybox >/proc/self/fd/3 && echo WROTE $p ) 2>/dev/null; \
        done; done";
    let mut p = Process::new(["sh", "-c", racer]);
    p.stdout = Stdio::Fd(w);
    let init = c.run(p).unwrap();
    for _ in 0..20 {
        let e = c.exec(Process::new(["true"])).unwrap();
        assert!(e.wait().unwrap().success());
    }
    c.destroy().unwrap();
    let _ = init.wait();
    let mut out = String::new();
    std::fs::File::from(r).read_to_string(&mut out).unwrap();
    assert!(!out.contains("WROTE"), "{out}");
    assert_eq!(sha(&host_bin), before, "host binary unchanged");
}

/// CVE-2021-30465: a directory on the mount destination's path is swapped
/// with a symlink to "/" while containers start: mounts still land inside
/// the rootfs, never on the host.
#[test]
fn cve_2021_30465_swapped_destination_stays_inside() {
    let Some(()) = privileged("cve_2021_30465_swapped_destination_stays_inside") else {
        return;
    };
    let (dir, rootfs) = private_rootfs("berth-30465");
    let vol = dir.path().join("vol");
    std::fs::create_dir_all(vol.join("real")).unwrap();
    let marker = format!("berth-30465-{}", std::process::id());
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        // The "other container": flips vol/swap between a directory and a
        // symlink to "/" as fast as it can.
        s.spawn(|| {
            let swap = vol.join("swap");
            let _ = std::fs::create_dir(vol.join("d"));
            let _ = std::os::unix::fs::symlink("/", vol.join("l"));
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = std::fs::rename(vol.join("d"), &swap);
                let _ = std::fs::rename(&swap, vol.join("d"));
                let _ = std::fs::rename(vol.join("l"), &swap);
                let _ = std::fs::rename(&swap, vol.join("l"));
            }
        });
        for _ in 0..30 {
            let mut config = base_config(&rootfs);
            config.mounts.push(Mount::bind(&vol, "/vol", &[]));
            config.mounts.push(Mount::fs(
                "tmpfs",
                format!("/vol/swap/{marker}"),
                &["size=64k"],
            ));
            let state = state_root();
            let mut c = Container::create(state.path(), &unique_id("race"), config)
                .unwrap()
                .with_init_binary(init_binary());
            // Starting may fail (the path vanished mid-way); it must never escape.
            if let Ok(h) = c.run(Process::new(["true"])) {
                let _ = h.wait();
            }
            c.destroy().unwrap();
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
    });
    assert!(
        !std::path::Path::new("/").join(&marker).exists(),
        "a mount point was made on the host"
    );
}

/// CVE-2024-21626: no fd of the runtime (here a non-close-on-exec fd of a
/// cgroup directory and of the state dir) reaches a container process, and
/// every cwd is inside the container.
#[test]
fn cve_2024_21626_no_host_fd_or_cwd_leaks() {
    let Some(()) = privileged("cve_2024_21626_no_host_fd_or_cwd_leaks") else {
        return;
    };
    let state = state_root();
    // Leaked on purpose: opened without O_CLOEXEC, as the runc bug did.
    let leak = |p: &str| {
        let c = std::ffi::CString::new(p).unwrap();
        // SAFETY: a valid path; the fd is owned by the OwnedFd below.
        let fd = unsafe { libc::open(c.as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY) };
        assert!(fd >= 0);
        // SAFETY: a fresh fd that we own.
        unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) }
    };
    let _cg = leak("/sys/fs/cgroup");
    let _st = leak(state.path().to_str().unwrap());
    let mut c = Container::create(state.path(), &unique_id("21626"), base_config(rootfs()))
        .unwrap()
        .with_init_binary(init_binary());
    let init = c.run(Process::new(["sleep", "100"])).unwrap();
    let mut p = Process::new(["sleep", "100"]);
    p.spec.cwd = "/tmp".into();
    let h = c.exec(p).unwrap();
    // Read from the host, not from a shell inside (a shell's own pipes
    // would show up while it runs a pipeline).
    let fds = |pid: i32| -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    let cwd = |pid: i32| std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap();
    let rootfs = c.config().rootfs.clone();
    let (init_fds, init_cwd) = (fds(init.pid()), cwd(init.pid()));
    let (exec_fds, exec_cwd) = (fds(h.pid()), cwd(h.pid()));
    // The exec'd process is our child: reaped before the container goes
    // (destroy waits for the pid namespace to empty).
    let _ = h.signal(libc::SIGKILL);
    let _ = h.wait();
    c.destroy().unwrap();
    let _ = init.wait();
    assert_eq!(init_fds, ["0", "1", "2"], "the init has only stdio");
    assert_eq!(
        exec_fds,
        ["0", "1", "2"],
        "the exec'd process has only stdio"
    );
    // Inside the container's root, never a host directory.
    assert!(
        init_cwd.starts_with(&rootfs) || init_cwd == std::path::Path::new("/"),
        "{init_cwd:?}"
    );
    assert!(
        exec_cwd.ends_with("tmp") && !exec_cwd.starts_with("/sys"),
        "{exec_cwd:?}"
    );
}

/// CVE-2025-31133 / 52565 / 52881 class: an image whose /dev/null and
/// /dev/console are symlinks (no /dev tmpfs over them), and procfs writes of
/// the runtime, cannot expose or write other files.
#[test]
fn cve_2025_masks_console_and_procfs_writes_cannot_be_redirected() {
    let Some(()) = privileged("cve_2025_masks_console_and_procfs_writes_cannot_be_redirected")
    else {
        return;
    };
    let (_dir, rootfs) = private_rootfs("berth-2025");
    std::fs::write(rootfs.join("etc/secret"), "SECRET").unwrap();
    std::os::unix::fs::symlink("/etc/secret", rootfs.join("dev/null")).unwrap();
    let mut config = base_config(&rootfs);
    // Keep the image's /dev (no tmpfs over it), as an attacker would want.
    config.mounts.retain(|m| !m.destination.starts_with("/dev"));
    config.devices.clear();
    let out = run(config.clone(), &["sh", "-c", "cat /proc/keys; echo end"]);
    assert_eq!(
        out.stdout, "end\n",
        "the masked file shows nothing, not the image's /dev/null target: {out:?}"
    );

    // /dev/console as a symlink: refused, not followed.
    std::os::unix::fs::symlink("/etc/secret", rootfs.join("dev/console")).unwrap();
    let mut cfg = config.clone();
    cfg.mounts.push(Mount::fs(
        "devpts",
        "/dev/pts",
        &["newinstance", "ptmxmode=0666"],
    ));
    let state = state_root();
    let mut c = Container::create(state.path(), &unique_id("console"), cfg)
        .unwrap()
        .with_init_binary(init_binary());
    let mut p = Process::new(["true"]);
    p.spec.terminal = Some(berth_core::process::ConsoleSize { rows: 10, cols: 10 });
    let err = c.run(p).unwrap_err();
    assert!(chain(&err).contains("/dev/console"), "{}", chain(&err));
    c.destroy().unwrap();
    assert_eq!(
        std::fs::read_to_string(rootfs.join("etc/secret")).unwrap(),
        "SECRET"
    );
}

/// CVE-2025-52881 class: a container that mounted over its own procfs cannot
/// catch the runtime's procfs writes: `oom_score_adj` of an exec'd process is
/// written through the runtime's /proc before any namespace is joined.
#[test]
fn cve_2025_52881_procfs_writes_go_to_the_real_procfs() {
    let Some(()) = privileged("cve_2025_52881_procfs_writes_go_to_the_real_procfs") else {
        return;
    };
    let mut cfg = base_config(common::rootfs());
    let mut caps = berth_core::config::Capabilities::default_set().bounding;
    caps.push(berth_core::config::Capability::CAP_SYS_ADMIN);
    cfg.capabilities = berth_core::config::Capabilities::uniform(caps);
    cfg.masked_paths.clear();
    cfg.readonly_paths.clear();
    cfg.oom_score_adj = Some(300);
    let state = state_root();
    let mut c = Container::create(state.path(), &unique_id("oom"), cfg)
        .unwrap()
        .with_init_binary(init_binary());
    let (r, w) = pipe();
    let mut p = Process::new([
        "sh",
        "-c",
        "mount -t tmpfs tmpfs /proc/sys && echo mounted; exec sleep 100",
    ]);
    p.stdout = Stdio::Fd(w);
    let init = c.run(p).unwrap();
    let mut line = [0u8; 8];
    std::io::Read::read_exact(&mut std::fs::File::from(r), &mut line).unwrap();
    assert_eq!(&line, b"mounted\n");
    let h = c.exec(Process::new(["sleep", "100"])).unwrap();
    let host_view = std::fs::read_to_string(format!("/proc/{}/oom_score_adj", h.pid())).unwrap();
    // The exec'd process is the runtime's child: it must be reaped (here by
    // a waiting thread) for the namespace's init to finish exiting.
    let waiter = std::thread::spawn(move || h.wait());
    c.destroy().unwrap();
    let _ = waiter.join();
    let _ = init.wait();
    assert_eq!(host_view.trim(), "300");
}
