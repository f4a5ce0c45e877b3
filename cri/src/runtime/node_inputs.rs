//! What CreateContainer reads from the node itself: its device nodes (for
//! CRI devices and privileged containers) and `Localhost` seccomp profiles.

use std::path::{Path, PathBuf};

use crate::spec;

/// The node's device nodes, read when a container is created.
pub(super) struct NodeDevices;

impl spec::HostDevices for NodeDevices {
    /// `stat(2)` of a CRI device's `host_path` (symlinks followed, as
    /// kubelet's device plugins hand out `/dev/...` links).
    fn get(&self, path: &Path) -> Option<spec::HostDevice> {
        host_device(&std::fs::metadata(path).ok()?)
    }

    /// runc's `HostDevices`: every char/block node under `/dev`, not
    /// following symlinks, skipping the pseudo-terminal, shm, mqueue and fd
    /// directories and `/dev/console` (the container gets its own).
    fn all(&self) -> Vec<(PathBuf, spec::HostDevice)> {
        const SKIP_DIRS: [&str; 7] = ["pts", "shm", "fd", "mqueue", ".lxc", ".lxd-mounts", ".udev"];
        let mut out = Vec::new();
        let mut dirs = vec![PathBuf::from("/dev")];
        while let Some(dir) = dirs.pop() {
            for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                let path = e.path();
                let Ok(m) = std::fs::symlink_metadata(&path) else {
                    continue;
                };
                if m.is_dir() {
                    if !SKIP_DIRS.iter().any(|s| e.file_name() == *s) {
                        dirs.push(path);
                    }
                } else if path != Path::new("/dev/console") {
                    out.extend(host_device(&m).map(|d| (path, d)));
                }
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }
}

/// A device node's kind, numbers, mode and owner from its metadata.
fn host_device(m: &std::fs::Metadata) -> Option<spec::HostDevice> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let kind = if m.file_type().is_char_device() {
        berth_core::config::DeviceKind::Char
    } else if m.file_type().is_block_device() {
        berth_core::config::DeviceKind::Block
    } else {
        return None;
    };
    let rdev = m.rdev();
    Some(spec::HostDevice {
        kind,
        major: nix::sys::stat::major(rdev),
        minor: nix::sys::stat::minor(rdev),
        file_mode: m.mode() & 0o7777,
        uid: m.uid(),
        gid: m.gid(),
    })
}

/// A `Localhost` seccomp profile: an absolute path on the node (kubelet
/// resolves it under its seccomp root), read and validated by runtime-core.
pub(super) fn load_localhost_seccomp(
    reference: &str,
) -> Result<berth_core::security::seccomp::SeccompProfile, String> {
    let path = Path::new(reference);
    if !path.is_absolute() {
        return Err("must be an absolute path".into());
    }
    berth_core::security::seccomp::SeccompProfile::from_file(path).map_err(|e| e.to_string())
}
