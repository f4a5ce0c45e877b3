//! The defaults of runc's `spec` generator (runc/libcontainer/specconv/example.go).

use super::{Device, DeviceKind, Mount};
use std::path::PathBuf;

pub(super) fn mounts() -> Vec<Mount> {
    vec![
        Mount::fs("proc", "/proc", &["nosuid", "noexec", "nodev"]),
        Mount::fs(
            "tmpfs",
            "/dev",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        ),
        Mount::fs(
            "devpts",
            "/dev/pts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        ),
        Mount::fs(
            "tmpfs",
            "/dev/shm",
            &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        ),
        Mount::fs("mqueue", "/dev/mqueue", &["nosuid", "noexec", "nodev"]),
        Mount::fs("sysfs", "/sys", &["nosuid", "noexec", "nodev", "ro"]),
    ]
}

pub(super) fn devices() -> Vec<Device> {
    let dev = |name: &str, major, minor| Device {
        path: PathBuf::from("/dev").join(name),
        kind: DeviceKind::Char,
        major,
        minor,
        file_mode: 0o666,
        uid: 0,
        gid: 0,
    };
    vec![
        dev("null", 1, 3),
        dev("zero", 1, 5),
        dev("full", 1, 7),
        dev("random", 1, 8),
        dev("urandom", 1, 9),
        dev("tty", 5, 0),
    ]
}

pub(super) fn masked_paths() -> Vec<PathBuf> {
    [
        "/proc/acpi",
        "/proc/asound",
        "/proc/kcore",
        "/proc/keys",
        "/proc/latency_stats",
        "/proc/timer_list",
        "/proc/timer_stats",
        "/proc/sched_debug",
        "/proc/scsi",
        "/sys/firmware",
        "/sys/devices/virtual/powercap",
    ]
    .into_iter()
    .map(PathBuf::from)
    .collect()
}

pub(super) fn readonly_paths() -> Vec<PathBuf> {
    [
        "/proc/bus",
        "/proc/fs",
        "/proc/irq",
        "/proc/sys",
        "/proc/sysrq-trigger",
    ]
    .into_iter()
    .map(PathBuf::from)
    .collect()
}
