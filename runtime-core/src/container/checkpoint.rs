//! Checkpoint and restore through CRIU.
//!
//! berth runs the `criu` command line tool (`criu dump`, `criu restore`)
//! rather than its RPC service (`criu swrk` with the `rust-criu` crate):
//! every option this needs is a documented flag there (`--inherit-fd`,
//! `--external`, `--restore-sibling`, `--leave-stopped`), the tool's exit
//! status and its log file are the whole error report, and one process per
//! checkpoint costs nothing next to the dump itself. The RPC crate would add
//! a protobuf stack to the daemon for the same requests.
//!
//! How a container maps onto CRIU:
//! - The pod's network namespace, joined by path, is declared **external**
//!   (`net[<inode>]:berth-net` at dump); restore hands CRIU the new
//!   container's own network namespace for that key (`--inherit-fd`).
//! - A pid namespace joined by path (a pod's shared one, whose init is
//!   berth's pod init) is external too (`pid[<inode>]:berth-pid`), as runc
//!   and crun do for a pod's containers: only the container's own tree is
//!   dumped, and restore recreates it, with the same pids, in the pid
//!   namespace the new container joins. A checkpoint is restored only into
//!   the same shape (own pid namespace, or a joined one).
//! - IPC and UTS namespaces joined by path: CRIU itself runs in them, so
//!   they are not dumped and the restored tasks inherit the new ones.
//! - The pod's user namespace, joined by path: dumped with its maps, and
//!   restored by joining the new pod's, whose maps must be the same
//!   ([`super::checkpoint_userns`]).
//! - Bind mounts (`mnt[<destination>]`) and masked files (binds of the null
//!   device) are external mounts: restore binds the new container's sources.
//! - The init's standard fds are pipes (or sockets), or the container's
//!   terminal: [`super::checkpoint_stdio`] says how each is re-wired.
//! - The restored tree is created in the new container's cgroup (CRIU runs
//!   there; `--cgroup-root` maps the dumped cgroup onto it, `soft` mode
//!   leaves its limits to berth), with its cgroup namespace rooted there, in
//!   a fresh mount namespace whose root is the new rootfs and a fresh pid
//!   namespace (or the joined one), as a child of the caller
//!   (`--restore-sibling`), stopped (`--leave-stopped`) until
//!   [`Container::release`].
//!
//! Not supported (a clear [`ContainerError::Unsupported`]): containers that
//! create a user namespace of their own, or in the host's pid namespace.

use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use super::checkpoint_stdio::{RestoreStdio, Terminal, TERMINAL_FILE};
use super::checkpoint_userns as userns;
pub use super::checkpoint_userns::{images_user_maps, UserMaps, USERNS_FILE};
pub use super::criu::log_errors;
use super::criu::{common_args, criu_command, run_criu};
pub use super::restore_fence::RestoreFence;
use super::{Container, ContainerError, Status};
use crate::config::{MountKind, NamespaceKind};

/// File (in the images directory) naming the init's fds 0, 1 and 2 as
/// `readlink(/proc/PID/fd/N)` showed them at dump time — runc's name and
/// format, which CRI-O and Podman archives carry too.
pub const DESCRIPTORS_FILE: &str = "descriptors.json";
/// CRIU's log of a dump, in the work directory.
pub const DUMP_LOG: &str = "dump.log";
/// CRIU's log of a restore, in the work directory.
pub const RESTORE_LOG: &str = "restore.log";
/// The key of the pod's network namespace in the images.
pub(super) const NET_KEY: &str = "berth-net";
/// The key of a joined (shared) pid namespace in the images.
pub(super) const PID_KEY: &str = "berth-pid";

/// How to run CRIU: shared by checkpoint and restore.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct CriuOptions {
    /// The `criu` binary (default: `criu`, looked up in `PATH`).
    pub criu: PathBuf,
    /// Where the CRIU images are (written by a checkpoint).
    pub images_dir: PathBuf,
    /// CRIU's work directory: its log and pid file.
    pub work_dir: PathBuf,
    /// Dump and restore established TCP connections (`--tcp-established`).
    pub tcp_established: bool,
    /// Dump and restore file locks (`--file-locks`).
    pub file_locks: bool,
    /// The tree is a shell job: its session or process group leader is
    /// outside (`--shell-job`).
    pub shell_job: bool,
    /// Give up (killing CRIU) after this long.
    pub timeout: Option<Duration>,
    /// Whether `criu` has berth's join-userns patch, when the caller knows
    /// ([`criu_joins_userns`], asked once and kept); `None`: a restore into
    /// a user namespace asks criu itself.
    #[serde(default)]
    pub joins_userns: Option<bool>,
}

impl CriuOptions {
    /// Defaults with `images_dir` and `work_dir`: established TCP
    /// connections and file locks included, as Kubernetes checkpoints ask.
    pub fn new(images_dir: impl Into<PathBuf>, work_dir: impl Into<PathBuf>) -> Self {
        Self {
            criu: PathBuf::from("criu"),
            images_dir: images_dir.into(),
            work_dir: work_dir.into(),
            tcp_established: true,
            file_locks: true,
            shell_job: false,
            timeout: None,
            joins_userns: None,
        }
    }
}

/// Whether the `criu` at `criu` has berth's join-userns patch (`criu check
/// --feature join_userns`), which restoring into a user namespace needs.
/// Runs criu (tens of milliseconds): callers keep the answer.
pub fn criu_joins_userns(criu: &Path) -> bool {
    let mut o = CriuOptions::new("", "");
    o.criu = criu.to_path_buf();
    super::criu::has_feature(&o, super::checkpoint_userns::CRIU_FEATURE)
}

/// What a checkpoint does besides dumping.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct CheckpointOptions {
    /// CRIU itself.
    pub criu: CriuOptions,
    /// Keep the container running after the dump (`--leave-running`);
    /// otherwise CRIU kills its processes once they are dumped.
    pub leave_running: bool,
}

/// The standard fds of the init at dump time, as [`DESCRIPTORS_FILE`] holds them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Descriptors(pub Vec<String>);

impl Container {
    /// Dumps the container's process tree with CRIU into
    /// `opts.criu.images_dir` (created if missing), plus
    /// [`DESCRIPTORS_FILE`]; CRIU's log goes to `work_dir/dump.log`.
    ///
    /// A running container is seized with ptrace; a paused one is dumped
    /// through its frozen cgroup and stays paused (callers that also copy
    /// the rootfs pause first, so files and memory agree).
    pub fn checkpoint(&self, opts: &CheckpointOptions) -> Result<(), ContainerError> {
        let status = self.status();
        if !matches!(status, Status::Running | Status::Paused) {
            return Err(ContainerError::InvalidState {
                op: super::Operation::Checkpoint,
                status,
            });
        }
        self.check_checkpointable()?;
        let init = self
            .state
            .init
            .as_ref()
            .ok_or_else(|| ContainerError::NotRunning(self.state.id.clone()))?;
        let pid = init.pid;
        let c = &opts.criu;
        for d in [&c.images_dir, &c.work_dir] {
            std::fs::create_dir_all(d).map_err(|source| ContainerError::StateIo {
                path: d.clone(),
                source,
            })?;
        }
        let stdio_args = super::checkpoint_stdio::record(pid, &c.images_dir)?;
        if userns::joined(&self.state.config).is_some() {
            userns::record(pid, &c.images_dir)?;
        }

        let mut args: Vec<String> = vec![
            "dump".into(),
            "--tree".into(),
            pid.to_string(),
            "--log-file".into(),
            DUMP_LOG.into(),
            "-v4".into(),
        ];
        args.extend(common_args(c));
        args.extend(stdio_args);
        if opts.leave_running {
            args.push("--leave-running".into());
        }
        if status == Status::Paused {
            if let Some(dir) = self.freezer_dir() {
                args.push("--freeze-cgroup".into());
                args.push(dir.display().to_string());
            }
        }
        if let Some(ino) = self.joined_inode(NamespaceKind::Network, pid) {
            args.push("--external".into());
            args.push(format!("net[{ino}]:{NET_KEY}"));
        }
        if let Some(ino) = self.joined_inode(NamespaceKind::Pid, pid) {
            args.push("--external".into());
            args.push(format!("pid[{ino}]:{PID_KEY}"));
        }
        for key in self.external_mount_keys(pid) {
            args.push("--external".into());
            args.push(format!("mnt[{key}]:{key}"));
        }
        for key in userns::device_keys(&self.state.config) {
            args.push("--external".into());
            args.push(format!("mnt[{key}]:{key}"));
        }
        let join = self.joined_ipc_uts()?;
        let mut cmd = criu_command(c, &args);
        let fds: Vec<RawFd> = join.iter().map(|(fd, _)| fd.as_raw_fd()).collect();
        let nstypes: Vec<libc::c_int> = join.iter().map(|(_, t)| *t).collect();
        // SAFETY: the closure runs in the forked child before exec and only
        // makes raw syscalls on fds opened before the fork (no allocation,
        // no locks), which is what async-signal-safety requires.
        unsafe {
            cmd.pre_exec(move || {
                for (fd, t) in fds.iter().zip(&nstypes) {
                    if libc::setns(*fd, *t) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        run_criu(cmd, c, DUMP_LOG, "dump")?;
        drop(join);
        Ok(())
    }

    /// Refuses what CRIU cannot dump and restore here.
    pub(super) fn check_checkpointable(&self) -> Result<(), ContainerError> {
        let c = &self.state.config;
        if c.creates(NamespaceKind::User) {
            return Err(ContainerError::Unsupported(
                "checkpoint of a container that creates its own user namespace (only a \
                 joined one, its pod's, is restored by joining)"
                    .into(),
            ));
        }
        if !c.has(NamespaceKind::Pid) {
            return Err(ContainerError::Unsupported(
                "checkpoint of a container in the host's pid namespace".into(),
            ));
        }
        if !c.creates(NamespaceKind::Mount) {
            return Err(ContainerError::Unsupported(
                "checkpoint of a container without its own mount namespace".into(),
            ));
        }
        Ok(())
    }

    /// The cgroup directory whose freezer state CRIU reads.
    fn freezer_dir(&self) -> Option<PathBuf> {
        let cg = self.state.cgroup.as_ref()?;
        match cg.version {
            crate::cgroups::Version::V1 => cg.dir_of("freezer"),
            crate::cgroups::Version::V2 => cg.dirs.first().cloned(),
        }
    }

    /// The inode of the namespace of `kind` the container joined by path,
    /// as its init `pid` has it.
    fn joined_inode(&self, kind: NamespaceKind, pid: i32) -> Option<u64> {
        let joined = self.state.config.namespace(kind)?.path.is_some();
        if !joined {
            return None;
        }
        let name = match kind {
            NamespaceKind::Network => "net",
            NamespaceKind::Pid => "pid",
            _ => return None,
        };
        std::fs::metadata(format!("/proc/{pid}/ns/{name}"))
            .ok()
            .map(|m| m.ino())
    }

    /// Mount points the container got from outside its mount namespace:
    /// bind mounts, and masked files (binds of the null device).
    fn external_mount_keys(&self, pid: i32) -> Vec<String> {
        let c = &self.state.config;
        let mut keys: Vec<String> = c
            .mounts
            .iter()
            .filter(|m| matches!(m.kind, MountKind::Bind { .. }))
            .map(|m| m.destination.display().to_string())
            .collect();
        for p in &c.masked_paths {
            // Directories are masked with a tmpfs, which CRIU dumps itself;
            // paths that do not exist were not masked. Only looked at
            // (stat), through the init's root.
            let inside = format!("/proc/{pid}/root{}", p.display());
            if std::fs::metadata(&inside).is_ok_and(|m| !m.is_dir()) {
                keys.push(p.display().to_string());
            }
        }
        keys
    }

    /// Fds of the IPC and UTS namespaces the container joined by path, with
    /// their `setns` types: CRIU runs in them.
    pub(super) fn joined_ipc_uts(&self) -> Result<Vec<(OwnedFd, libc::c_int)>, ContainerError> {
        let mut out = Vec::new();
        for ns in &self.state.config.namespaces {
            let (Some(path), true) = (
                &ns.path,
                matches!(ns.kind, NamespaceKind::Ipc | NamespaceKind::Uts),
            ) else {
                continue;
            };
            let f = std::fs::File::open(path).map_err(|source| ContainerError::StateIo {
                path: path.clone(),
                source,
            })?;
            out.push((OwnedFd::from(f), ns.kind.clone_flag()));
        }
        Ok(out)
    }
}

/// Whether CRIU images were dumped with their pid namespace external (the
/// container had joined one): CRIU writes a `pidns-*.img` only for an
/// external pid namespace, holding its key.
pub fn images_join_pid_ns(images: &Path) -> Result<bool, ContainerError> {
    let io = |source| ContainerError::StateIo {
        path: images.to_path_buf(),
        source,
    };
    for e in std::fs::read_dir(images).map_err(io)? {
        let name = e.map_err(io)?.file_name();
        let name = name.as_bytes();
        if name.starts_with(b"pidns-") && name.ends_with(b".img") {
            return Ok(true);
        }
    }
    Ok(false)
}

pub(super) fn cstring(p: &Path) -> Result<CString, ContainerError> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| ContainerError::Checkpoint(format!("{}: NUL byte in path", p.display())))
}

/// Writes `v` as JSON to a new file at `path`, private (0600) whatever the
/// umask: it sits with the container's dumped memory.
pub(super) fn write_json<T: Serialize>(path: &Path, v: &T) -> Result<(), ContainerError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let bytes = serde_json::to_vec(v).map_err(std::io::Error::other);
    bytes
        .and_then(|b| {
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW)
                .open(path)?
                .write_all(&b)
        })
        .map_err(|source| ContainerError::StateIo {
            path: path.to_path_buf(),
            source,
        })
}

pub(super) fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, ContainerError> {
    let bytes = std::fs::read(path).map_err(|source| ContainerError::StateIo {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_slice(&bytes)
        .map_err(|e| ContainerError::Checkpoint(format!("{}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pidns_image_means_the_pid_namespace_was_joined() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("inventory.img"), b"x").unwrap();
        assert!(!images_join_pid_ns(dir.path()).unwrap());
        std::fs::write(dir.path().join("pidns-11.img"), b"x").unwrap();
        assert!(images_join_pid_ns(dir.path()).unwrap());
        assert!(images_join_pid_ns(&dir.path().join("missing")).is_err());
    }
}
