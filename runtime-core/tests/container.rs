//! Privileged integration tests: what the container itself sees.

mod common;

use berth_core::config::IdMap;
use berth_core::{
    Container, ContainerError, ExitStatus, Namespace, NamespaceKind, Process, Status,
};
use common::*;

#[test]
fn init_is_pid_1_with_hostname_and_loopback() {
    let Some(()) = privileged("init_is_pid_1_with_hostname_and_loopback") else {
        return;
    };
    let out = run(
        base_config(rootfs()),
        &[
            "sh",
            "-c",
            "echo $$; hostname; cat /sys/class/net/lo/flags; ls /sys/class/net",
        ],
    );
    assert_eq!(out.status, ExitStatus::Exited(0), "{out:?}");
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines[0], "1", "init is PID 1 in its pid namespace");
    assert_eq!(lines[1], "testing");
    let flags = u32::from_str_radix(lines[2].trim_start_matches("0x"), 16).unwrap();
    assert_eq!(flags & libc::IFF_UP as u32, libc::IFF_UP as u32, "lo is up");
    assert_eq!(lines[3], "lo", "a new network namespace has only lo");
}

/// Effective capability mask of the default set (Docker/containerd's 14).
const DEFAULT_CAP_MASK: u64 = 0x0000_0000_a804_25fb;

fn status_field(status: &str, field: &str) -> String {
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:\t")))
        .unwrap_or_else(|| panic!("{field} not in {status}"))
        .trim()
        .to_string()
}

#[test]
fn capabilities_as_configured() {
    let Some(()) = privileged("capabilities_as_configured") else {
        return;
    };
    let out = run(base_config(rootfs()), &["cat", "/proc/self/status"]);
    assert_eq!(out.status, ExitStatus::Exited(0), "{out:?}");
    for f in ["CapEff", "CapPrm", "CapBnd"] {
        assert_eq!(
            u64::from_str_radix(&status_field(&out.stdout, f), 16).unwrap(),
            DEFAULT_CAP_MASK,
            "{f}"
        );
    }
    assert_eq!(status_field(&out.stdout, "CapInh"), "0000000000000000");
    assert_eq!(status_field(&out.stdout, "CapAmb"), "0000000000000000");
    assert_eq!(status_field(&out.stdout, "NoNewPrivs"), "1");

    // Only CAP_KILL, with it ambient too, for a non-root user: it survives exec.
    let mut config = base_config(rootfs());
    let kill = vec![berth_core::config::Capability::CAP_KILL];
    config.capabilities = berth_core::config::Capabilities {
        bounding: kill.clone(),
        effective: kill.clone(),
        permitted: kill.clone(),
        inheritable: kill.clone(),
        ambient: kill,
    };
    let state = state_root();
    let mut c = Container::create(state.path(), &unique_id("caps"), config)
        .unwrap()
        .with_init_binary(init_binary());
    let mut p = Process::new(["cat", "/proc/self/status"]);
    p.spec.user = "1000:1000".parse().unwrap();
    let (o, e) = capture(&mut p);
    let h = c.run(p).unwrap();
    let (stdout, stderr) = collect(o, e);
    assert!(h.wait().unwrap().success(), "{stderr}");
    c.destroy().unwrap();
    assert_eq!(status_field(&stdout, "CapEff"), "0000000000000020");
    assert_eq!(status_field(&stdout, "CapAmb"), "0000000000000020");
    assert_eq!(status_field(&stdout, "CapBnd"), "0000000000000020");
    assert!(status_field(&stdout, "Uid").starts_with("1000\t1000"));
}

#[test]
fn masked_and_readonly_paths() {
    let Some(()) = privileged("masked_and_readonly_paths") else {
        return;
    };
    // Which masked files exist depends on the kernel's config: check those
    // the host has (reading them on the host gives content, inside nothing).
    let files: Vec<&str> = [
        "/proc/keys",
        "/proc/timer_list",
        "/proc/kcore",
        "/proc/sched_debug",
    ]
    .into_iter()
    .filter(|p| std::path::Path::new(p).exists())
    .collect();
    assert!(!files.is_empty());
    let mut script = String::new();
    for f in &files {
        script.push_str(&format!("wc -c < {f}; "));
    }
    script.push_str(
        "ls -A /sys/firmware | wc -l; mkdir /sys/firmware/x 2>/dev/null && echo MADE; \
         echo x > /proc/sys/kernel/hostname && echo WROTE; \
         grep -w /proc/sys /proc/self/mountinfo | grep -c ' ro,'; echo done",
    );
    let out = run(base_config(rootfs()), &["sh", "-c", &script]);
    let lines: Vec<&str> = out.stdout.lines().map(str::trim).collect();
    let mut expected = vec!["0"; files.len()];
    expected.extend(["0", "1", "done"]);
    assert_eq!(lines, expected, "{out:?}");
    assert!(
        out.stderr.contains("Read-only file system"),
        "{}",
        out.stderr
    );
}

#[test]
fn rlimits_mounts_and_user_by_name() {
    let Some(()) = privileged("rlimits_mounts_and_user_by_name") else {
        return;
    };
    let out = run(
        base_config(rootfs()),
        &[
            "sh",
            "-c",
            "ulimit -n; ulimit -Hn; cat /proc/self/mountinfo",
        ],
    );
    let mut lines = out.stdout.lines();
    assert_eq!(lines.next(), Some("1025"));
    assert_eq!(lines.next(), Some("1025"));
    let mounts: Vec<(String, String)> = lines
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let sep = f.iter().position(|x| *x == "-").unwrap();
            (f[4].to_string(), f[sep + 1].to_string())
        })
        .collect();
    let at = |p: &str| {
        mounts
            .iter()
            .find(|(mp, _)| mp == p)
            .map(|(_, t)| t.as_str())
    };
    assert_eq!(
        mounts[0].0, "/",
        "the rootfs is the first mount: {mounts:?}"
    );
    assert_eq!(at("/proc"), Some("proc"));
    assert_eq!(at("/dev"), Some("tmpfs"));
    assert_eq!(at("/dev/pts"), Some("devpts"));
    assert_eq!(at("/dev/shm"), Some("tmpfs"));
    assert_eq!(at("/dev/mqueue"), Some("mqueue"));
    assert_eq!(at("/sys"), Some("sysfs"));
    let host_root = rootfs().to_str().unwrap();
    assert!(
        !mounts
            .iter()
            .any(|(mp, _)| mp.starts_with(host_root) || mp.starts_with("/work")),
        "no host path is visible: {mounts:?}"
    );

    // A user given by name is resolved from the container's own /etc/passwd.
    let state = state_root();
    let mut c = Container::create(state.path(), &unique_id("user"), base_config(rootfs()))
        .unwrap()
        .with_init_binary(init_binary());
    let mut p = Process::new(["sh", "-c", "id; echo $HOME; ls -l /dev/null /dev/zero /dev/tty | cut -c1-10; readlink /dev/fd; readlink /dev/ptmx"]);
    p.spec.user = "alice".parse().unwrap();
    let (o, e) = capture(&mut p);
    let h = c.run(p).unwrap();
    let (stdout, stderr) = collect(o, e);
    assert!(h.wait().unwrap().success(), "{stderr}");
    c.destroy().unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines[0],
        "uid=1000(alice) gid=1000(alice) groups=100(users),1000(alice)"
    );
    assert_eq!(lines[1], "/home/alice");
    assert_eq!(&lines[2..5], ["crw-rw-rw-"; 3]);
    assert_eq!(&lines[5..7], ["/proc/self/fd", "pts/ptmx"]);
}

#[test]
fn exit_codes_and_signals() {
    let Some(()) = privileged("exit_codes_and_signals") else {
        return;
    };
    let out = run(base_config(rootfs()), &["sh", "-c", "exit 42"]);
    assert_eq!(out.status, ExitStatus::Exited(42));

    let state = state_root();
    // SIGKILL from outside always reaches a pid-namespace init.
    let mut c = Container::create(state.path(), &unique_id("sig"), base_config(rootfs()))
        .unwrap()
        .with_init_binary(init_binary());
    let h = c.run(Process::new(["sleep", "100"])).unwrap();
    assert_eq!(c.status(), Status::Running);
    c.signal(libc::SIGKILL).unwrap();
    assert_eq!(h.wait().unwrap(), ExitStatus::Signaled(libc::SIGKILL));
    assert_eq!(c.status(), Status::Stopped);
    assert!(matches!(
        c.signal(libc::SIGTERM),
        Err(ContainerError::InvalidState { .. })
    ));
    c.destroy().unwrap();

    // SIGTERM reaches an init that handles it.
    let mut c = Container::create(state.path(), &unique_id("term"), base_config(rootfs()))
        .unwrap()
        .with_init_binary(init_binary());
    let (r, w) = pipe();
    let mut p = Process::new([
        "sh",
        "-c",
        "trap 'exit 3' TERM; echo ready; while :; do sleep 0.05; done",
    ]);
    p.stdout = berth_core::Stdio::Fd(w);
    let h = c.run(p).unwrap();
    let mut buf = [0u8; 6];
    std::io::Read::read_exact(&mut std::fs::File::from(r), &mut buf).unwrap();
    c.signal(libc::SIGTERM).unwrap();
    assert_eq!(h.wait().unwrap(), ExitStatus::Exited(3));
    c.destroy().unwrap();
}

#[test]
fn a_missing_executable_is_a_clear_error_and_leaves_nothing() {
    let Some(()) = privileged("a_missing_executable_is_a_clear_error_and_leaves_nothing") else {
        return;
    };
    let state = state_root();
    let id = unique_id("noexe");
    let mut c = Container::create(state.path(), &id, base_config(rootfs()))
        .unwrap()
        .with_init_binary(init_binary());
    let err = c.run(Process::new(["no-such-program"])).unwrap_err();
    let msg = chain(&err);
    assert!(
        msg.contains("no-such-program") && msg.contains("not found"),
        "{msg}"
    );
    assert_eq!(c.status(), Status::Stopped);
    c.destroy().unwrap();
    assert!(!state.path().join(&id).exists());
}

#[test]
fn exec_joins_the_running_container() {
    let Some(()) = privileged("exec_joins_the_running_container") else {
        return;
    };
    let state = state_root();
    let mut c = Container::create(state.path(), &unique_id("exec"), base_config(rootfs()))
        .unwrap()
        .with_init_binary(init_binary());
    let init = c.run(Process::new(["sleep", "100"])).unwrap();
    let mut p = Process::new(["sh", "-c", "hostname; cat /proc/1/cmdline | tr '\\0' ' '; echo; for n in net mnt pid uts ipc; do readlink /proc/self/ns/$n; done; grep CapEff /proc/self/status; ulimit -n; exit 7"]);
    let (o, e) = capture(&mut p);
    let h = c.exec(p).unwrap();
    let (stdout, stderr) = collect(o, e);
    assert_eq!(h.wait().unwrap(), ExitStatus::Exited(7), "{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[0], "testing");
    assert_eq!(
        lines[1].trim(),
        "sleep 100",
        "PID 1 is the container's init"
    );
    for (i, ns) in ["net", "mnt", "pid", "uts", "ipc"].iter().enumerate() {
        let host_view = std::fs::read_link(format!("/proc/{}/ns/{ns}", init.pid())).unwrap();
        assert_eq!(
            lines[2 + i],
            host_view.to_str().unwrap(),
            "same {ns} namespace"
        );
    }
    assert_eq!(lines[7], "CapEff:\t00000000a80425fb");
    assert_eq!(lines[8], "1025");
    // The exec'd process was in the container's pid namespace, not the host's.
    assert_ne!(
        std::fs::read_link(format!("/proc/{}/ns/pid", init.pid())).unwrap(),
        std::fs::read_link("/proc/self/ns/pid").unwrap()
    );
    assert_eq!(
        c.processes().len(),
        1,
        "the exec'd process is gone and reaped"
    );
    c.destroy().unwrap();
    assert!(nix::sys::signal::kill(nix::unistd::Pid::from_raw(init.pid()), None).is_err());
}

#[test]
fn start_then_release_from_another_handle() {
    let Some(()) = privileged("start_then_release_from_another_handle") else {
        return;
    };
    let state = state_root();
    let id = unique_id("created");
    let mut c = Container::create(state.path(), &id, base_config(rootfs()))
        .unwrap()
        .with_init_binary(init_binary());
    let mut p = Process::new(["echo", "released"]);
    let (o, e) = capture(&mut p);
    let h = c.start(p).unwrap();
    assert_eq!(c.status(), Status::Created);
    assert!(matches!(
        c.exec(Process::new(["true"])),
        Err(ContainerError::InvalidState { .. })
    ));
    // Another process (the daemon after a restart) would load it from disk.
    let mut again = Container::load(state.path(), &id).unwrap();
    assert_eq!(again.state().init.as_ref().unwrap().pid, h.pid());
    assert_eq!(again.status(), Status::Created);
    again.release().unwrap();
    let (stdout, _) = collect(o, e);
    assert_eq!(stdout, "released\n");
    assert!(h.wait().unwrap().success());
    assert_eq!(again.status(), Status::Stopped);
    again.destroy().unwrap();
    // Idempotent.
    c.destroy().unwrap();
}

/// A container in a new user namespace mapping 0..65536 to `host_id..`.
fn userns_container(state: &tempfile::TempDir, name: &str, host_id: u32) -> Container {
    let mut config = base_config(rootfs());
    config.namespaces.push(Namespace::new(NamespaceKind::User));
    let map = IdMap {
        container_id: 0,
        host_id,
        size: 65536,
    };
    config.uid_mappings.push(map);
    config.gid_mappings.push(map);
    Container::create(state.path(), &unique_id(name), config)
        .unwrap()
        .with_init_binary(init_binary())
}

#[test]
fn user_namespace_mapping() {
    let Some(()) = privileged("user_namespace_mapping") else {
        return;
    };
    let state = state_root();
    let mut c = userns_container(&state, "userns", 200_000);
    let (r, w) = pipe();
    let mut p = Process::new([
        "sh",
        "-c",
        "id -u; id -g; cat /proc/self/uid_map; echo end; sleep 100",
    ]);
    p.stdout = berth_core::Stdio::Fd(w);
    let h = c.run(p).unwrap();
    let mut out = String::new();
    let mut f = std::io::BufReader::new(std::fs::File::from(r));
    while !out.contains("end\n") {
        let mut line = String::new();
        if std::io::BufRead::read_line(&mut f, &mut line).unwrap() == 0 {
            break;
        }
        out.push_str(&line);
    }
    let host_status = std::fs::read_to_string(format!("/proc/{}/status", h.pid())).unwrap();
    c.destroy().unwrap();
    let _ = h.wait();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "0", "root inside: {out}");
    assert_eq!(lines[1], "0");
    let map: Vec<&str> = lines[2].split_whitespace().collect();
    assert_eq!(map, ["0", "200000", "65536"]);
    assert!(
        status_field(&host_status, "Uid").starts_with("200000\t200000"),
        "the host sees the mapped uid: {host_status}"
    );
}

#[test]
fn joins_namespaces_by_path() {
    let Some(()) = privileged("joins_namespaces_by_path") else {
        return;
    };
    let state = state_root();
    // A "pod": the first container's net and uts namespaces, joined by the second.
    let mut pod = Container::create(state.path(), &unique_id("pod"), base_config(rootfs()))
        .unwrap()
        .with_init_binary(init_binary());
    let pod_init = pod.run(Process::new(["sleep", "100"])).unwrap();
    let mut config = base_config(rootfs());
    config.hostname = None;
    config
        .namespaces
        .retain(|n| !matches!(n.kind, NamespaceKind::Network | NamespaceKind::Uts));
    config.namespaces.push(Namespace::join(
        NamespaceKind::Network,
        format!("/proc/{}/ns/net", pod_init.pid()),
    ));
    config.namespaces.push(Namespace::join(
        NamespaceKind::Uts,
        format!("/proc/{}/ns/uts", pod_init.pid()),
    ));
    let out = run(
        config,
        &["sh", "-c", "hostname; readlink /proc/self/ns/net"],
    );
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines[0], "testing", "{out:?}");
    assert_eq!(
        lines[1],
        std::fs::read_link(format!("/proc/{}/ns/net", pod_init.pid()))
            .unwrap()
            .to_str()
            .unwrap()
    );
    pod.destroy().unwrap();
    let _ = pod_init.wait();
}

#[test]
fn config_features_seen_from_inside() {
    let Some(()) = privileged("config_features_seen_from_inside") else {
        return;
    };
    let host = tempfile::tempdir().unwrap();
    std::fs::write(host.path().join("data.txt"), "from-host").unwrap();
    std::fs::create_dir(host.path().join("sub")).unwrap();
    let mut config = base_config(rootfs());
    config.readonly_rootfs = true;
    config.domainname = Some("example.test".into());
    config.oom_score_adj = Some(500);
    config
        .sysctls
        .insert("net.ipv4.ip_forward".into(), "1".into());
    config
        .sysctls
        .insert("kernel.shmmax".into(), "123456789".into());
    config
        .mounts
        .push(berth_core::Mount::bind(host.path(), "/data", &["ro"]));
    config.mounts.push(berth_core::Mount::fs(
        "tmpfs",
        "/scratch",
        &["size=1m", "mode=0700", "noexec"],
    ));
    let script = "cat /proc/sys/kernel/domainname; cat /proc/self/oom_score_adj; cat /proc/sys/net/ipv4/ip_forward; \
        cat /proc/sys/kernel/shmmax; cat /data/data.txt; echo; \
        touch /data/x 2>/dev/null && echo DATA-WRITABLE; touch /bin/x 2>/dev/null && echo ROOT-WRITABLE; \
        touch /scratch/ok && echo scratch-ok; stat -c %a /scratch; grep ' /scratch ' /proc/self/mountinfo | grep -c noexec";
    let out = run(config, &["sh", "-c", script]);
    assert_eq!(out.status, ExitStatus::Exited(0), "{out:?}");
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(
        lines,
        [
            "example.test",
            "500",
            "1",
            "123456789",
            "from-host",
            "scratch-ok",
            "700",
            "1"
        ],
        "{out:?}"
    );
    // The sysctls changed the container's namespaces, not the host's.
    assert_ne!(
        std::fs::read_to_string("/proc/sys/kernel/shmmax")
            .unwrap()
            .trim(),
        "123456789"
    );
    assert!(!host.path().join("x").exists());
}

#[test]
fn exec_into_a_user_namespace_container() {
    let Some(()) = privileged("exec_into_a_user_namespace_container") else {
        return;
    };
    let state = state_root();
    let mut c = userns_container(&state, "userns-exec", 300_000);
    let init = c.run(Process::new(["sleep", "100"])).unwrap();
    let mut p = Process::new(["sh", "-c", "id -u; cat /proc/self/uid_map; hostname"]);
    p.spec.user = "alice".parse().unwrap();
    let (o, e) = capture(&mut p);
    let h = c.exec(p).unwrap();
    let (stdout, stderr) = collect(o, e);
    assert!(h.wait().unwrap().success(), "{stderr}");
    let host_status = std::fs::read_to_string(format!("/proc/{}/status", init.pid())).unwrap();
    c.destroy().unwrap();
    let _ = init.wait();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[0], "1000");
    assert_eq!(
        lines[1].split_whitespace().collect::<Vec<_>>(),
        ["0", "300000", "65536"]
    );
    assert_eq!(lines[2], "testing");
    assert!(status_field(&host_status, "Uid").starts_with("300000\t"));
}

#[test]
fn unknown_namespace_path_and_duplicate_ids_are_clear_errors() {
    let Some(()) = privileged("unknown_namespace_path_and_duplicate_ids_are_clear_errors") else {
        return;
    };
    let state = state_root();
    let mut config = base_config(rootfs());
    config
        .namespaces
        .retain(|n| n.kind != NamespaceKind::Network);
    config.namespaces.push(Namespace::join(
        NamespaceKind::Network,
        "/proc/999999999/ns/net",
    ));
    let err = Container::create(state.path(), "bad-ns", config).unwrap_err();
    assert!(matches!(err, ContainerError::InvalidConfig(_)), "{err:?}");
    assert!(
        chain(&err).contains("/proc/999999999/ns/net"),
        "{}",
        chain(&err)
    );
    assert!(!state.path().join("bad-ns").exists());
    let c = Container::create(state.path(), "dup", base_config(rootfs())).unwrap();
    assert!(matches!(
        Container::create(state.path(), "dup", base_config(rootfs())),
        Err(ContainerError::AlreadyExists(_))
    ));
    c.destroy().unwrap();
}

#[test]
fn hostile_etc_passwd_and_missing_cwd() {
    let Some(()) = privileged("hostile_etc_passwd_and_missing_cwd") else {
        return;
    };
    let (_dir, rootfs) = private_rootfs("berth-hostile");
    // A FIFO as /etc/passwd would block a naive reader forever.
    std::fs::remove_file(rootfs.join("etc/passwd")).unwrap();
    nix::unistd::mkfifo(
        &rootfs.join("etc/passwd"),
        nix::sys::stat::Mode::from_bits_truncate(0o644),
    )
    .unwrap();
    let state = state_root();
    let mut c = Container::create(state.path(), &unique_id("fifo"), base_config(&rootfs))
        .unwrap()
        .with_init_binary(init_binary());
    let mut p = Process::new(["id"]);
    p.spec.user = "alice".parse().unwrap();
    let err = c.run(p).unwrap_err();
    assert!(
        chain(&err).contains("no user named \"alice\""),
        "{}",
        chain(&err)
    );
    c.destroy().unwrap();
    // A numeric user still works, and a missing cwd is created inside the rootfs.
    let mut c = Container::create(state.path(), &unique_id("cwd"), base_config(&rootfs))
        .unwrap()
        .with_init_binary(init_binary());
    let mut p = Process::new(["pwd"]);
    p.spec.user = "1000:1000".parse().unwrap();
    p.spec.cwd = "/work/dir".into();
    let (o, e) = capture(&mut p);
    let h = c.run(p).unwrap();
    let (stdout, stderr) = collect(o, e);
    assert!(h.wait().unwrap().success(), "{stderr}");
    assert_eq!(stdout, "/work/dir\n");
    assert!(rootfs.join("work/dir").is_dir());
    c.destroy().unwrap();
}
