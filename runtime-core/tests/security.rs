//! seccomp and terminals, checked from inside the container.

mod common;

use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};

use berth_core::config::SeccompProfile;
use berth_core::process::{resize_console, ConsoleSize};
use berth_core::{Container, ExitStatus, Process};
use common::*;

fn profile(json: &str) -> SeccompProfile {
    serde_json::from_str(json).unwrap()
}

const DENY_MKDIR: &str = r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
    {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13},
    {"names": ["sync"], "action": "SCMP_ACT_KILL_PROCESS"}]}"#;

#[test]
fn a_denied_syscall_returns_the_chosen_errno() {
    let Some(()) = privileged("a_denied_syscall_returns_the_chosen_errno") else {
        return;
    };
    for nnp in [true, false] {
        let mut config = base_config(rootfs());
        config.seccomp = Some(profile(DENY_MKDIR));
        config.no_new_privileges = nnp;
        let state = state_root();
        let mut c = Container::create(state.path(), &unique_id("seccomp"), config)
            .unwrap()
            .with_init_binary(init_binary());
        let mut p = Process::new([
            "sh",
            "-c",
            "mkdir /tmp/x; echo rc=$?; grep -E '^(Seccomp|NoNewPrivs|CapEff):' /proc/self/status",
        ]);
        // A user without CAP_SYS_ADMIN: without no_new_privs the filter must
        // still go in (loaded before the final capabilities are applied).
        p.spec.user = "1000:1000".parse().unwrap();
        let (o, e) = capture(&mut p);
        let h = c.run(p).unwrap_or_else(|e| panic!("{}", chain(&e)));
        let (stdout, stderr) = collect(o, e);
        assert!(h.wait().unwrap().success(), "{stderr}");
        c.destroy().unwrap();
        assert!(
            stderr.contains("Permission denied"),
            "EACCES from the filter: {stderr}"
        );
        let lines: Vec<&str> = stdout.lines().collect();
        assert_eq!(lines[0], "rc=1");
        assert!(lines.contains(&"Seccomp:\t2"), "filter mode: {stdout}");
        assert!(
            lines.contains(&format!("NoNewPrivs:\t{}", u8::from(nnp)).as_str()),
            "{stdout}"
        );
        assert!(
            lines.contains(&"CapEff:\t0000000000000000"),
            "final capabilities applied after the filter: {stdout}"
        );
    }
    // KILL_PROCESS ends the process with SIGSYS.
    let mut config = base_config(rootfs());
    config.seccomp = Some(profile(DENY_MKDIR));
    let out = run(config, &["sync"]);
    assert_eq!(out.status, ExitStatus::Signaled(libc::SIGSYS));
}

#[test]
fn an_invalid_profile_is_refused_at_create() {
    let Some(()) = privileged("an_invalid_profile_is_refused_at_create") else {
        return;
    };
    let mut config = base_config(rootfs());
    config.seccomp = Some(profile(
        r#"{"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_PDP11"]}"#,
    ));
    let state = state_root();
    let err = Container::create(state.path(), "bad-seccomp", config).unwrap_err();
    assert!(chain(&err).contains("SCMP_ARCH_PDP11"), "{}", chain(&err));
}

/// Reads the pty master until the other side is gone (EIO).
fn read_console(master: OwnedFd) -> String {
    let mut f = std::fs::File::from(master);
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.raw_os_error() == Some(libc::EIO) => break,
            Err(e) => panic!("read console: {e}"),
        }
    }
    String::from_utf8_lossy(&out).replace('\r', "")
}

#[test]
fn terminal_process_gets_a_pty_with_its_size() {
    let Some(()) = privileged("terminal_process_gets_a_pty_with_its_size") else {
        return;
    };
    let state = state_root();
    let mut c = Container::create(state.path(), &unique_id("tty"), base_config(rootfs()))
        .unwrap()
        .with_init_binary(init_binary());
    let mut p = Process::new([
        "sh",
        "-c",
        "stty size; tty; read x; stty size; ls -l /dev/console | cut -c1",
    ]);
    p.spec.terminal = Some(ConsoleSize { rows: 24, cols: 80 });
    let mut h = c.run(p).unwrap_or_else(|e| panic!("{}", chain(&e)));
    let master = h.take_console().expect("a console");
    let reader = {
        let m = master.try_clone().unwrap();
        std::thread::spawn(move || read_console(m))
    };
    std::thread::sleep(std::time::Duration::from_millis(200));
    resize_console(
        master.as_fd(),
        ConsoleSize {
            rows: 40,
            cols: 132,
        },
    )
    .unwrap();
    std::io::Write::write_all(&mut std::fs::File::from(master.try_clone().unwrap()), b"\n")
        .unwrap();
    assert!(h.wait().unwrap().success());
    drop(master);
    let out = reader.join().unwrap();
    let lines: Vec<&str> = out
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    assert_eq!(lines[0], "24 80", "{out:?}");
    assert!(lines[1].starts_with("/dev/pts/"), "{out:?}");
    assert_eq!(lines[2], "40 132", "resize seen: {out:?}");
    assert_eq!(lines[3], "c", "/dev/console is the pty: {out:?}");

    // An exec'd process with its own terminal.
    let mut c2 = Container::create(state.path(), &unique_id("tty-exec"), base_config(rootfs()))
        .unwrap()
        .with_init_binary(init_binary());
    let init = c2.run(Process::new(["sleep", "100"])).unwrap();
    let mut p = Process::new(["stty", "size"]);
    p.spec.terminal = Some(ConsoleSize {
        rows: 30,
        cols: 100,
    });
    let mut h = c2.exec(p).unwrap();
    let master = h.take_console().unwrap();
    let reader = std::thread::spawn(move || read_console(master));
    assert!(h.wait().unwrap().success());
    assert_eq!(reader.join().unwrap().trim(), "30 100");
    c2.destroy().unwrap();
    let _ = init.wait();
    c.destroy().unwrap();
}

fn userns_config(rootfs: &std::path::Path, host_id: u32) -> berth_core::Config {
    let mut config = base_config(rootfs);
    config
        .namespaces
        .push(berth_core::Namespace::new(berth_core::NamespaceKind::User));
    let map = berth_core::config::IdMap {
        container_id: 0,
        host_id,
        size: 65536,
    };
    config.uid_mappings.push(map);
    config.gid_mappings.push(map);
    config
}

fn owner(path: &std::path::Path) -> u32 {
    std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(path).unwrap())
}

#[test]
fn idmapped_rootfs_and_volume_in_a_user_namespace() {
    let Some(()) = privileged("idmapped_rootfs_and_volume_in_a_user_namespace") else {
        return;
    };
    let (dir, rootfs) = private_rootfs("berth-idmap");
    let vol = dir.path().join("vol");
    std::fs::create_dir(&vol).unwrap();
    let script = "stat -c %u:%g /bin/busybox; touch /created && stat -c %u /created; \
                  touch /vol/f && echo vol-ok; id -u";

    // Without idmapping, the image's root-owned files show as the overflow id.
    let out = run(
        userns_config(&rootfs, 400_000),
        &["stat", "-c", "%u:%g", "/bin/busybox"],
    );
    assert_eq!(out.stdout.trim(), "65534:65534", "{out:?}");

    let mut config = userns_config(&rootfs, 400_000);
    config.idmap_rootfs = true;
    config
        .mounts
        .push(berth_core::Mount::bind(&vol, "/vol", &["idmap"]));
    let out = run(config, &["sh", "-c", script]);
    assert_eq!(out.status, ExitStatus::Exited(0), "{out:?}");
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines, ["0:0", "0", "vol-ok", "0"], "{out:?}");
    // On disk, through the idmapped mounts, files get the unmapped ids.
    assert_eq!(owner(&rootfs.join("created")), 0);
    assert_eq!(owner(&vol.join("f")), 0);

    // An overlayfs rootfs: overlayfs cannot be idmapped once merged, so each
    // layer is idmapped and the init builds the overlay in its own mount
    // namespace. The image layer stays untouched and nothing is chowned.
    let ovl = dir.path().join("ovl");
    let (upper, work, merged) = (
        ovl.join("upper"),
        ovl.join("work"),
        dir.path().join("merged"),
    );
    for d in [&upper, &work, &merged] {
        std::fs::create_dir_all(d).unwrap();
    }
    let mut config = userns_config(&merged, 400_000);
    config.idmap_rootfs = true;
    config.overlay = Some(berth_core::config::OverlayRootfs {
        lowerdirs: vec![rootfs.clone()],
        upperdir: upper.clone(),
        workdir: work.clone(),
    });
    let out = run(
        config,
        &[
            "sh",
            "-c",
            "stat -c %u /bin/busybox; touch /in-overlay && echo ok; id -u",
        ],
    );
    assert_eq!(
        out.stdout.lines().collect::<Vec<_>>(),
        ["0", "ok", "0"],
        "{out:?}"
    );
    assert_eq!(
        owner(&upper.join("in-overlay")),
        0,
        "written to the upper dir as host uid 0"
    );
    assert!(
        std::fs::read_dir(&merged).unwrap().next().is_none(),
        "nothing mounted on the host"
    );
    assert!(
        !rootfs.join("in-overlay").exists(),
        "the lower layer is untouched"
    );
}

#[test]
fn runtime_default_profile_blocks_namespace_escapes() {
    let Some(()) = privileged("runtime_default_profile_blocks_namespace_escapes") else {
        return;
    };
    let mut config = base_config(rootfs());
    config.seccomp = Some(SeccompProfile::runtime_default(
        &config.capabilities.bounding,
    ));
    // The shared test rootfs is never written: a private /tmp.
    config
        .mounts
        .push(berth_core::Mount::fs("tmpfs", "/tmp", &["size=1m"]));
    let out = run(
        config,
        &["sh", "-c", "mkdir /tmp/ok && echo mkdir-ok; unshare -U true && echo UNSHARED; grep Seccomp: /proc/self/status"],
    );
    assert_eq!(out.status, ExitStatus::Exited(0), "{out:?}");
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines, ["mkdir-ok", "Seccomp:\t2"], "{out:?}");
    assert!(
        out.stderr.contains("Operation not permitted"),
        "{}",
        out.stderr
    );
}

#[test]
fn the_v2_device_program_denies_what_the_rules_do_not_allow() {
    let Some(()) = privileged("the_v2_device_program_denies_what_the_rules_do_not_allow") else {
        return;
    };
    // A cgroup v2 hierarchy: the host's own when it is v2, or the empty
    // unified one of a hybrid host (this machine's), where a program
    // attached to a cgroup applies to its tasks all the same.
    let root = ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
        .into_iter()
        .map(std::path::Path::new)
        .find(|p| p.join("cgroup.controllers").exists());
    let Some(root) = root else {
        println!("skipped: the_v2_device_program_...: no cgroup v2 hierarchy mounted");
        return;
    };
    let dir = root.join(format!("berth-test-devfilter-{}", std::process::id()));
    std::fs::create_dir(&dir).unwrap();
    struct Rm(std::path::PathBuf);
    impl Drop for Rm {
        fn drop(&mut self) {
            for _ in 0..100 {
                if std::fs::remove_dir(&self.0).is_ok() {
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        }
    }
    let _rm = Rm(dir.clone());
    berth_core::cgroups::devicefilter::attach(&dir, &berth_core::cgroups::default_device_rules())
        .unwrap();
    // A shell that moves itself into the cgroup, then tries: /dev/null
    // (allowed), a /dev/kmsg node it makes (mknod allowed, writing not).
    let t = tempfile::tempdir().unwrap();
    let script = format!(
        "echo $$ > {procs} && \
         echo x > /dev/null && echo null-ok; \
         mknod {k} c 1 11 && echo mknod-ok; \
         {{ echo berth-devfilter-test > {k}; }} 2>/dev/null && echo kmsg-ok || echo kmsg-denied",
        procs = dir.join("cgroup.procs").display(),
        k = t.path().join("kmsg").display(),
    );
    let out = std::process::Command::new("sh")
        .args(["-c", &script])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        stdout.lines().collect::<Vec<_>>(),
        ["null-ok", "mknod-ok", "kmsg-denied"],
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
