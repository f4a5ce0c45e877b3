//! The init's standard fds across a checkpoint.
//!
//! - **Pipes and sockets**: their identities are kept in
//!   [`DESCRIPTORS_FILE`] (runc's file and format) and restore hands CRIU
//!   the new container's ends for them (`--inherit-fd fd[N]:pipe:[ino]`).
//! - **A terminal** (`process.terminal`): the init's fds are the peer of a
//!   pty whose master the runtime holds, outside the dumped tree. The peer is
//!   dumped as an **external tty** (`--external tty[rdev:dev]`, CRIU's
//!   documented form), its key kept in [`TERMINAL_FILE`]; the `/dev/console`
//!   bind of that peer is an external mount. Restore opens a new pty on the
//!   node's `/dev/ptmx`, hands CRIU its peer for the key (`--inherit-fd
//!   fd[N]:tty[rdev:dev]`, which also makes it the session's controlling
//!   terminal again) and binds it on `/dev/console`; the master becomes the
//!   restored init's console, as at a normal start. The terminal's modes
//!   (termios) are a new pty's defaults and its size is the requested one:
//!   CRIU keeps no state of an external tty.

use std::fs::OpenOptions;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::checkpoint::{read_json, write_json, Descriptors, DESCRIPTORS_FILE};
use super::ContainerError;
use crate::process::ConsoleSize;

/// File (in the images directory) naming the external tty the init's fds
/// were, when it had a terminal.
pub const TERMINAL_FILE: &str = "terminal.json";

/// Mount point of the terminal's bind in the container.
const CONSOLE: &str = "/dev/console";

/// The pty peer the init's fds were at dump time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Terminal {
    /// `st_rdev` of the peer.
    pub rdev: u64,
    /// `st_dev` of the peer (its devpts instance).
    pub dev: u64,
    /// Whether `/dev/console` was a bind of it.
    pub console: bool,
}

impl Terminal {
    /// CRIU's id of the external tty: `tty[<rdev>:<dev>]`, in hex.
    pub fn criu_id(&self) -> String {
        format!("tty[{:x}:{:x}]", self.rdev, self.dev)
    }
}

/// What the restored init's fds 0, 1 and 2 become.
pub enum RestoreStdio {
    /// New pipe (or socket) ends, for a checkpoint whose init had pipes.
    Pipes([OwnedFd; 3]),
    /// A new terminal of this size, for a checkpoint whose init had one; its
    /// master is the restored init's console
    /// ([`crate::process::ProcessHandle::take_console`]).
    Terminal(ConsoleSize),
}

/// The init's fds at dump time: records them next to the images and returns
/// CRIU's extra dump arguments for them.
pub(super) fn record(pid: i32, images_dir: &Path) -> Result<Vec<String>, ContainerError> {
    let (descriptors, terminal) = inspect(pid)?;
    write_json(&images_dir.join(DESCRIPTORS_FILE), &descriptors)?;
    let Some(t) = terminal else {
        return Ok(Vec::new());
    };
    write_json(&images_dir.join(TERMINAL_FILE), &t)?;
    let mut args = vec!["--external".to_string(), t.criu_id()];
    if t.console {
        args.push("--external".into());
        args.push(format!("mnt[{CONSOLE}]:{CONSOLE}"));
    }
    Ok(args)
}

/// Fds 0, 1 and 2 of `pid`: pipes and sockets, or all the same pty peer.
fn inspect(pid: i32) -> Result<(Descriptors, Option<Terminal>), ContainerError> {
    let mut out = Vec::new();
    let mut ttys = Vec::new();
    for n in 0..3 {
        let link = format!("/proc/{pid}/fd/{n}");
        let io = |source| ContainerError::StateIo {
            path: link.clone().into(),
            source,
        };
        let target = std::fs::read_link(&link).map_err(io)?;
        let s = target.display().to_string();
        if !(s.starts_with("pipe:") || s.starts_with("socket:")) {
            // What the fd is, not what its path now names.
            let m = std::fs::metadata(&link).map_err(io)?;
            if !(m.file_type().is_char_device() && is_pty_peer(m.rdev())) {
                return Err(ContainerError::Unsupported(format!(
                    "checkpoint of a container whose fd {n} is {s} (only pipes, sockets and the container's terminal can be re-wired on restore)"
                )));
            }
            ttys.push((m.rdev(), m.dev()));
        }
        out.push(s);
    }
    let terminal = match ttys.as_slice() {
        [] => None,
        [(rdev, dev), rest @ ..] if ttys.len() == 3 && rest.iter().all(|t| t == &(*rdev, *dev)) => {
            Some(Terminal {
                rdev: *rdev,
                dev: *dev,
                console: console_mounted(pid),
            })
        }
        _ => {
            return Err(ContainerError::Unsupported(
                "checkpoint of a container whose fds 0, 1 and 2 mix a terminal and pipes".into(),
            ))
        }
    };
    Ok((Descriptors(out), terminal))
}

/// Unix98 pty peers: majors 136 to 143.
fn is_pty_peer(rdev: u64) -> bool {
    (136..=143).contains(&nix::sys::stat::major(rdev))
}

/// Whether `/dev/console` is a mount point in `pid`'s mount namespace.
fn console_mounted(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/mountinfo"))
        .map(|s| s.lines().any(|l| l.split(' ').nth(4) == Some(CONSOLE)))
        .unwrap_or(false)
}

/// How the restored init's fds are handed to CRIU.
pub(super) struct Wiring {
    /// Fds for `--inherit-fd`, with their keys.
    pub inherit: Vec<(OwnedFd, String)>,
    /// Extra restore arguments.
    pub args: Vec<String>,
    /// The new terminal's master.
    pub console: Option<OwnedFd>,
}

/// Matches `stdio` to what the checkpoint in `images_dir` recorded.
pub(super) fn wiring(images_dir: &Path, stdio: RestoreStdio) -> Result<Wiring, ContainerError> {
    let descriptors: Descriptors = read_json(&images_dir.join(DESCRIPTORS_FILE))?;
    if descriptors.0.len() != 3 {
        return Err(ContainerError::Checkpoint(format!(
            "{}: expected 3 descriptors, found {}",
            DESCRIPTORS_FILE,
            descriptors.0.len()
        )));
    }
    let terminal_path = images_dir.join(TERMINAL_FILE);
    let terminal: Option<Terminal> = match std::fs::symlink_metadata(&terminal_path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        _ => Some(read_json(&terminal_path)?),
    };
    match (stdio, terminal) {
        (RestoreStdio::Pipes(fds), None) => {
            let mut inherit = Vec::new();
            for (fd, desc) in fds.into_iter().zip(&descriptors.0) {
                if desc.starts_with("pipe:") || desc.starts_with("socket:") {
                    inherit.push((fd, desc.clone()));
                }
            }
            Ok(Wiring {
                inherit,
                args: Vec::new(),
                console: None,
            })
        }
        (RestoreStdio::Terminal(size), Some(t)) => {
            let (master, peer, path) = open_pty(size)?;
            let mut args = Vec::new();
            if t.console {
                args.push("--external".into());
                args.push(format!("mnt[{CONSOLE}]:{path}"));
            }
            Ok(Wiring {
                inherit: vec![(peer, t.criu_id())],
                args,
                console: Some(master),
            })
        }
        (RestoreStdio::Pipes(_), Some(_)) => Err(ContainerError::Unsupported(
            "restore of a checkpoint whose init had a terminal into a container without one (tty)"
                .into(),
        )),
        (RestoreStdio::Terminal(_), None) => Err(ContainerError::Unsupported(
            "restore of a checkpoint whose init had no terminal into a container with one (tty)"
                .into(),
        )),
    }
}

/// A new pty of the node's devpts: (master, peer, the peer's path). The
/// peer's path is checked to name the peer itself.
fn open_pty(size: ConsoleSize) -> Result<(OwnedFd, OwnedFd, String), ContainerError> {
    let sys = |step| move |source| ContainerError::Sys { step, source };
    let master: OwnedFd = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY | libc::O_CLOEXEC)
        .open("/dev/ptmx")
        .map_err(|source| ContainerError::StateIo {
            path: "/dev/ptmx".into(),
            source,
        })?
        .into();
    let peer = crate::sys::pty_peer(master.as_fd()).map_err(sys("open a pty peer"))?;
    let index = crate::sys::pty_index(master.as_fd()).map_err(sys("read a pty's index"))?;
    crate::sys::set_winsize(master.as_fd(), size.rows, size.cols)
        .map_err(sys("set a terminal's size"))?;
    let path = format!("/dev/pts/{index}");
    let named = std::fs::metadata(&path).map(|m| (m.rdev(), m.dev()));
    let own = nix::sys::stat::fstat(peer.as_raw_fd()).map_err(sys("stat a pty peer"))?;
    if named.ok() != Some((own.st_rdev, own.st_dev)) {
        return Err(ContainerError::Checkpoint(format!(
            "{path} is not the new pty's peer (is /dev/pts the devpts of /dev/ptmx?)"
        )));
    }
    Ok((master, peer, path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn criu_ids_are_hex_as_criu_prints_them() {
        let t = Terminal {
            rdev: nix::sys::stat::makedev(136, 3),
            dev: 0x1d,
            console: true,
        };
        assert_eq!(t.criu_id(), "tty[8803:1d]");
        assert!(is_pty_peer(t.rdev));
        assert!(!is_pty_peer(nix::sys::stat::makedev(1, 3)));
    }

    #[test]
    fn a_terminal_checkpoint_is_not_restored_onto_pipes_nor_the_reverse() {
        let dir = tempfile::tempdir().unwrap();
        write_json(
            &dir.path().join(DESCRIPTORS_FILE),
            &Descriptors(vec!["/dev/pts/0".into(); 3]),
        )
        .unwrap();
        write_json(
            &dir.path().join(TERMINAL_FILE),
            &Terminal {
                rdev: 0x8800,
                dev: 0x1d,
                console: true,
            },
        )
        .unwrap();
        let pipes = || {
            let (r, w) = nix::unistd::pipe().unwrap();
            let (r2, _) = nix::unistd::pipe().unwrap();
            [r, w, r2]
        };
        let err = wiring(dir.path(), RestoreStdio::Pipes(pipes()))
            .err()
            .unwrap();
        assert!(err.to_string().contains("had a terminal"), "{err}");
        std::fs::remove_file(dir.path().join(TERMINAL_FILE)).unwrap();
        let size = ConsoleSize { rows: 24, cols: 80 };
        let err = wiring(dir.path(), RestoreStdio::Terminal(size))
            .err()
            .unwrap();
        assert!(err.to_string().contains("had no terminal"), "{err}");
    }
}
