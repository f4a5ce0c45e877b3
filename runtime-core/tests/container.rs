//! Privileged integration tests: what the container itself sees.

mod common;

use berth_core::config::{CgroupConfig, IdMap, Resources};
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
