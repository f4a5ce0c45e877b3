//! Privileged SELinux tests: a container's processes (init and exec) run
//! with the label of its config, switched to on `execve`, and the
//! filesystems mounted for it (its overlay rootfs, tmpfs) carry its mount
//! label. They need a kernel booted with SELinux and a policy loaded: this
//! host has neither, so `scripts/test.sh` runs them in QEMU guest A booted
//! with `security=selinux` (permissive) and Debian's reference policy,
//! whose `svirt_t` / `svirt_image_t` types they use (bookworm's policy has
//! no `container` module).

mod common;

use std::path::Path;

use berth_core::config::{Mount, OverlayRootfs};
use berth_core::security::selinux;
use berth_core::{Container, ExitStatus, Process};
use common::*;

const PROCESS: &str = "system_u:system_r:svirt_t:s0:c1,c2";
const FILES: &str = "system_u:object_r:svirt_image_t:s0:c1,c2";

fn selinux_here(test: &str) -> Option<()> {
    privileged(test)?;
    if !selinux::enabled() {
        assert!(!no_skip(), "{test}: SELinux is not enabled here");
        println!("skipped: {test}: SELinux is not enabled on this kernel");
        return None;
    }
    Some(())
}

/// The SELinux context of `path` as the host's coreutils show it.
fn context_of(path: &Path) -> String {
    let out = std::process::Command::new("stat")
        .args(["-c", "%C"])
        .arg(path)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn the_process_and_mount_labels_are_applied_to_init_exec_rootfs_and_tmpfs() {
    let test = "the_process_and_mount_labels_are_applied_to_init_exec_rootfs_and_tmpfs";
    let Some(()) = selinux_here(test) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (upper, work, merged) = (
        dir.path().join("upper"),
        dir.path().join("work"),
        dir.path().join("merged"),
    );
    for d in [&upper, &work, &merged] {
        std::fs::create_dir_all(d).unwrap();
    }
    let mut config = base_config(&merged);
    config.overlay = Some(OverlayRootfs {
        lowerdirs: vec![rootfs().to_path_buf()],
        upperdir: upper,
        workdir: work,
    });
    config
        .mounts
        .push(Mount::fs("tmpfs", "/scratch", &["mode=755"]));
    config.selinux_label = Some(PROCESS.into());
    config.mount_label = Some(FILES.into());
    let state = state_root();
    let mut c = Container::create(state.path(), &unique_id("selinux"), config)
        .unwrap()
        .with_init_binary(init_binary());
    let mut p = Process::new([
        "sh",
        "-c",
        "tr -d '\\0' < /proc/self/attr/current; exec sleep 60",
    ]);
    let (o, e) = capture(&mut p);
    let init = c.run(p).unwrap();
    // The exec'd process too.
    let mut x = Process::new(["sh", "-c", "tr -d '\\0' < /proc/self/attr/current"]);
    let (xo, xe) = capture(&mut x);
    let h = c.exec(x).unwrap();
    let (xout, xerr) = collect(xo, xe);
    assert_eq!(h.wait().unwrap(), ExitStatus::Exited(0), "{xerr}");
    assert_eq!(xout.trim(), PROCESS);
    let root = std::path::PathBuf::from(format!("/proc/{}/root", init.pid()));
    assert_eq!(context_of(&root.join("scratch")), FILES, "the tmpfs");
    // (`root/.`: the directory, not the /proc link, whose label is the
    // process's.)
    assert_eq!(context_of(&root.join(".")), FILES, "the overlay rootfs");
    init.signal(libc::SIGKILL).unwrap();
    let _ = init.wait();
    let (out, err) = collect(o, e);
    assert_eq!(out.trim(), PROCESS, "{err}");
    c.destroy().unwrap();
}

#[test]
fn an_invalid_label_fails_the_start_and_a_malformed_one_the_create() {
    let test = "an_invalid_label_fails_the_start_and_a_malformed_one_the_create";
    let Some(()) = selinux_here(test) else {
        return;
    };
    let mut config = base_config(rootfs());
    config.selinux_label = Some("system_u:system_r:no_such_type_t:s0".into());
    let state = state_root();
    let mut c = Container::create(state.path(), &unique_id("selinux-bad"), config)
        .unwrap()
        .with_init_binary(init_binary());
    let err = match c.run(Process::new(["true"])) {
        Err(e) => e.to_string(),
        Ok(h) => panic!("started: {:?}", h.wait()),
    };
    assert!(err.contains("no_such_type_t"), "{err}");
    c.destroy().unwrap();
    let mut config = base_config(rootfs());
    config.selinux_label = Some("svirt_t".into());
    let err = Container::create(state.path(), &unique_id("selinux-bad"), config).unwrap_err();
    assert!(format!("{err:?}").contains("selinux_label"), "{err:?}");
}
