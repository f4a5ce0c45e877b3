//! The real `berth` binary: its own sealed copy is the container's init.

use std::process::Command;

use berth_e2e::{berth_binary, busybox_rootfs};

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}

#[test]
fn version() {
    let Some(berth) = berth_binary("version") else {
        return;
    };
    let out = Command::new(berth).arg("--version").output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("berth {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn berth_run_executes_a_container_and_passes_the_exit_code() {
    if !is_root() {
        println!("skipped: berth_run_executes_a_container_and_passes_the_exit_code: needs root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let rootfs = dir.path().join("rootfs");
    if busybox_rootfs(&rootfs).is_err() {
        println!("skipped: berth_run_executes_a_container_and_passes_the_exit_code: needs busybox-static");
        return;
    }
    let Some(berth) = berth_binary("berth_run_executes_a_container_and_passes_the_exit_code")
    else {
        return;
    };
    let state = dir.path().join("state");
    let out = Command::new(&berth)
        .args(["run", "--hostname", "e2e", "--state"])
        .arg(&state)
        .arg("--rootfs")
        .arg(&rootfs)
        .args(["--", "sh", "-c", "echo $$ $(hostname); exit 5"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(5),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1 e2e");
    assert_eq!(
        std::fs::read_dir(&state).unwrap().count(),
        0,
        "state removed"
    );

    let out = Command::new(&berth)
        .args(["run", "--id", "../escape", "--state"])
        .arg(&state)
        .arg("--rootfs")
        .arg(&rootfs)
        .args(["--", "true"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("container id"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
