//! Pinned namespaces of a pod sandbox, as CRI-O's `pinns` makes them: new
//! net, ipc and uts namespaces bind-mounted onto files of a directory,
//! so they live without any process in them (no pause container). The pod's
//! containers then *join* them by path ([`crate::Namespace::join`]).
//!
//! The namespaces are created by a dedicated, short-lived thread: `unshare`
//! of these kinds changes only the calling thread, so the rest of the
//! (multi-threaded, tokio) caller never notices. The thread bind-mounts its
//! own `/proc/thread-self/ns/<kind>` files and ends; the bind mounts keep the
//! namespaces alive. The mounts are made in the caller's mount namespace.
//!
//! There is no pinned pid namespace ([`PinError::PidNamespace`]): the
//! kernel has none to give. After `unshare(CLONE_NEWPID)`,
//! `/proc/thread-self/ns/pid_for_children` cannot be opened (ENOENT) until a first process, the namespace's init,
//! exists in it (`pidns_for_children_get` checks `child_reaper`), and once
//! that init exits the namespace takes no new process (`clone` fails with
//! ENOMEM, `disable_pid_allocation`). A pod that shares one pid namespace
//! therefore needs a living process as its pid 1 (berth's CRI layer starts
//! a small one; CRI-O keeps an infra container for such pods). See
//! `pid_namespaces(7)` and the test `pid_namespace_needs_a_living_init`.
//!
//! A user namespace cannot be unshared by a thread of a multi-threaded
//! process either: a pod with its own is made by a single-threaded process
//! ([`unshare_pod_namespaces`]) and pinned from it
//! ([`PinRequest::from_pid`]).

use std::fs::{DirBuilder, File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};
use nix::unistd::{unlinkat, UnlinkatFlags};
use serde::{Deserialize, Serialize};

use crate::config::NamespaceKind;

/// Which namespaces a pod gets of its own, and how they are set up.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PinRequest {
    /// A new network namespace, with `lo` up.
    pub net: bool,
    /// A new IPC namespace.
    pub ipc: bool,
    /// A new UTS namespace (with [`PinRequest::hostname`]).
    pub uts: bool,
    /// A shared pid namespace for the pod: always refused with
    /// [`PinError::PidNamespace`], as the kernel cannot pin one (see the
    /// module docs); the field says what the pod asked for, so such a pod
    /// fails at once and plainly.
    pub pid: bool,
    /// Hostname set in the new UTS namespace; requires `uts`. Its length is
    /// left to the kernel (`sethostname` refuses more than 64 bytes).
    pub hostname: Option<String>,
    /// When set, a tmpfs of this many bytes (> 0) for the pod's `/dev/shm`
    /// is mounted at `dir/shm` (mode 1777, `nosuid,nodev,noexec`).
    pub shm_size: Option<u64>,
    /// Also the user namespace (requires [`PinRequest::from_pid`]: a thread
    /// of a multi-threaded process cannot make one).
    pub user: bool,
    /// Pin the namespaces of this process, already set up (see
    /// [`unshare_pod_namespaces`]), instead of creating them; `hostname`
    /// must then be `None` (the process has set it).
    pub from_pid: Option<i32>,
}

/// The pinned namespaces of one pod: paths of bind-mounted namespace files
/// (and of the shm mount), each `None` when not requested.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PinnedNamespaces {
    /// The directory that holds them all (what [`unpin`] takes).
    pub dir: PathBuf,
    /// `dir/net`: the network namespace.
    pub net: Option<PathBuf>,
    /// `dir/ipc`: the IPC namespace.
    pub ipc: Option<PathBuf>,
    /// `dir/uts`: the UTS namespace.
    pub uts: Option<PathBuf>,
    /// `dir/user`: the user namespace that owns the others (a pod with
    /// `hostUsers: false`).
    #[serde(default)]
    pub user: Option<PathBuf>,
    /// Always `None`: a pid namespace cannot be pinned (see the module docs).
    #[serde(default)]
    pub pid: Option<PathBuf>,
    /// `dir/shm`: the tmpfs for the pod's `/dev/shm`.
    pub shm: Option<PathBuf>,
}

/// A failure to pin or unpin, named after the step that failed.
#[derive(Debug, thiserror::Error)]
pub enum PinError {
    /// The request or directory cannot be used; nothing was created.
    #[error("pin request: {0}")]
    Request(&'static str),
    /// A pid namespace was asked for; the kernel cannot pin one without a
    /// living init in it (see the module docs). Nothing was created.
    #[error(
        "a pid namespace cannot be pinned: a new one cannot be opened before its init exists, \
         and takes no process after that init has exited"
    )]
    PidNamespace,
    /// The pin directory could not be created (its parent must exist).
    #[error("create pin directory {path}")]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The pin directory could not be opened (or is not a directory).
    #[error("open pin directory {path}")]
    OpenDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The pin directory already exists and is not empty.
    #[error("pin directory {0} exists and is not empty")]
    DirNotEmpty(PathBuf),
    /// The thread that creates the namespaces could not be started.
    #[error("start the namespace thread")]
    SpawnThread(#[source] io::Error),
    /// The thread that creates the namespaces panicked.
    #[error("the namespace thread panicked")]
    ThreadPanicked,
    /// `unshare` of a new namespace failed.
    #[error("unshare a new {namespace:?} namespace")]
    Unshare {
        /// The namespace.
        namespace: NamespaceKind,
        /// Why.
        #[source]
        source: Errno,
    },
    /// `sethostname` in the new UTS namespace failed.
    #[error("set hostname {hostname:?} in the new UTS namespace")]
    SetHostname {
        /// The hostname asked for.
        hostname: String,
        /// Why.
        #[source]
        source: Errno,
    },
    /// `lo` could not be brought up in the new network namespace.
    #[error("bring lo up in the new network namespace")]
    LoopbackUp(#[source] Errno),
    /// The file (or directory) to mount on could not be created.
    #[error("create the mount point {path}")]
    CreateMountPoint {
        /// The mount point.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The bind mount of a namespace file failed.
    #[error("bind-mount the {namespace:?} namespace on {path}")]
    BindMount {
        /// The mount point.
        path: PathBuf,
        /// The namespace.
        namespace: NamespaceKind,
        /// Why.
        #[source]
        source: Errno,
    },
    /// The shm tmpfs could not be mounted.
    #[error("mount the shm tmpfs on {path}")]
    MountShm {
        /// The mount point.
        path: PathBuf,
        /// Why.
        #[source]
        source: Errno,
    },
    /// A pinned file or the shm mount could not be unmounted.
    #[error("unmount {path}")]
    Unmount {
        /// The mount point.
        path: PathBuf,
        /// Why.
        #[source]
        source: Errno,
    },
    /// A file or directory could not be removed.
    #[error("remove {path}")]
    Remove {
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// The namespaces pin handles, with their file names in the pin directory
/// (the same as in `/proc/PID/ns/`).
const KINDS: [NamespaceKind; 4] = [
    NamespaceKind::User,
    NamespaceKind::Network,
    NamespaceKind::Ipc,
    NamespaceKind::Uts,
];

/// Name of the shm mount point in the pin directory.
const SHM: &str = "shm";

/// `NSFS_MAGIC` of `statfs(2)`: the filesystem of namespace files.
const NSFS_MAGIC: i64 = 0x6e73_6673;

impl PinRequest {
    fn wants(&self, kind: NamespaceKind) -> bool {
        match kind {
            NamespaceKind::Network => self.net,
            NamespaceKind::Ipc => self.ipc,
            NamespaceKind::Uts => self.uts,
            NamespaceKind::User => self.user,
            _ => false,
        }
    }

    fn check(&self) -> Result<(), PinError> {
        if self.pid {
            return Err(PinError::PidNamespace);
        }
        if self.user && self.from_pid.is_none() {
            return Err(PinError::Request(
                "a user namespace is pinned from a process (from_pid)",
            ));
        }
        if self.hostname.is_some() && self.from_pid.is_some() {
            return Err(PinError::Request(
                "with from_pid the process sets the hostname",
            ));
        }
        if self.hostname.is_some() && !self.uts {
            return Err(PinError::Request("hostname requires a new UTS namespace"));
        }
        if let Some(h) = &self.hostname {
            if h.bytes()
                .any(|b| b == 0 || b == b'/' || b.is_ascii_control())
            {
                return Err(PinError::Request(
                    "hostname contains a NUL, '/' or control character",
                ));
            }
        }
        if self.shm_size == Some(0) {
            // tmpfs reads size=0 as "no limit", not as an empty /dev/shm.
            return Err(PinError::Request("shm_size must be more than 0 bytes"));
        }
        Ok(())
    }
}

/// Creates `dir` (which must not exist yet, or be empty; its parent must
/// exist; it must be absolute, without `..`) and pins the requested new
/// namespaces there: `dir/net`, `dir/ipc`, `dir/uts` are files
/// bind-mounted from the new namespaces, so the namespaces outlive every
/// process. The new network namespace has `lo` up; the new UTS namespace has
/// `req.hostname`; `dir/shm` is the pod's `/dev/shm` tmpfs when asked for.
///
/// All or nothing: on any failure everything created so far is undone (a
/// `dir` that existed before is left, empty).
///
/// ```no_run
/// use berth_core::pin::{pin, unpin, PinRequest};
/// use berth_core::{Config, Namespace, NamespaceKind};
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let req = PinRequest { net: true, ipc: true, uts: true, hostname: Some("web-0".into()),
///                        ..Default::default() };
/// let pod = pin("/run/berth/pods/1234".as_ref(), &req)?;
/// let mut config = Config::new("/var/lib/demo/rootfs");
/// config.namespaces.retain(|n| n.kind == NamespaceKind::Mount || n.kind == NamespaceKind::Pid);
/// config.namespaces.push(Namespace::join(NamespaceKind::Network, pod.net.clone().unwrap()));
/// // ... run containers, then when the pod goes:
/// unpin(&pod.dir)?;
/// # Ok(()) }
/// ```
pub fn pin(dir: &Path, req: &PinRequest) -> Result<PinnedNamespaces, PinError> {
    if !crate::config::validate::is_clean_absolute(dir) {
        return Err(PinError::Request(
            "dir must be an absolute path without '..'",
        ));
    }
    req.check()?;
    let created = match DirBuilder::new().mode(0o755).create(dir) {
        Ok(()) => true,
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => false,
        Err(source) => {
            return Err(PinError::CreateDir {
                path: dir.to_path_buf(),
                source,
            })
        }
    };
    let d = match open_dir(dir) {
        Ok(d) => d,
        Err(e) => {
            if created {
                // Rollback: the error to report is the one above.
                let _ = std::fs::remove_dir(dir);
            }
            return Err(e);
        }
    };
    if !created
        && std::fs::read_dir(fd_path(&d, ""))
            .map_err(|source| PinError::OpenDir {
                path: dir.to_path_buf(),
                source,
            })?
            .next()
            .is_some()
    {
        return Err(PinError::DirNotEmpty(dir.to_path_buf()));
    }
    match pin_into(&d, dir, req) {
        Ok(pinned) => Ok(pinned),
        Err(e) => {
            // Rollback, best effort: the error to report is the first one.
            let _ = clear(&d, dir);
            drop(d);
            if created {
                let _ = std::fs::remove_dir(dir);
            }
            Err(e)
        }
    }
}

/// The namespaces (in a scoped thread of their own) and the shm mount.
fn pin_into(d: &File, dir: &Path, req: &PinRequest) -> Result<PinnedNamespaces, PinError> {
    match req.from_pid {
        Some(pid) => {
            for kind in KINDS.into_iter().filter(|k| req.wants(*k)) {
                let name = kind.proc_name();
                bind_ns(d, dir, kind, &format!("/proc/{pid}/ns/{name}"))?;
            }
        }
        None => std::thread::scope(|s| {
            let worker = std::thread::Builder::new()
                .name("berth-pinns".into())
                .spawn_scoped(s, || pin_in_this_thread(d, dir, req))
                .map_err(PinError::SpawnThread)?;
            worker.join().map_err(|_| PinError::ThreadPanicked)?
        })?,
    }
    let shm = match req.shm_size {
        Some(size) => Some(mount_shm(d, dir, size)?),
        None => None,
    };
    let path = |kind: NamespaceKind| req.wants(kind).then(|| dir.join(kind.proc_name()));
    Ok(PinnedNamespaces {
        dir: dir.to_path_buf(),
        net: path(NamespaceKind::Network),
        ipc: path(NamespaceKind::Ipc),
        uts: path(NamespaceKind::Uts),
        user: path(NamespaceKind::User),
        pid: None,
        shm,
    })
}

/// Unshares each requested kind in the calling thread, sets it up, and
/// bind-mounts it into `d`. Only for a thread that ends right after: its
/// namespaces are no longer the process's.
fn pin_in_this_thread(d: &File, dir: &Path, req: &PinRequest) -> Result<(), PinError> {
    for kind in KINDS {
        if !req.wants(kind) {
            continue;
        }
        let name = kind.proc_name();
        unshare(CloneFlags::from_bits_retain(kind.clone_flag())).map_err(|source| {
            PinError::Unshare {
                namespace: kind,
                source,
            }
        })?;
        match kind {
            NamespaceKind::Network => {
                crate::sys::interface_up(c"lo").map_err(PinError::LoopbackUp)?
            }
            NamespaceKind::Uts => {
                if let Some(h) = &req.hostname {
                    nix::unistd::sethostname(h).map_err(|source| PinError::SetHostname {
                        hostname: h.clone(),
                        source,
                    })?;
                }
            }
            _ => {}
        }
        bind_ns(d, dir, kind, &format!("/proc/thread-self/ns/{name}"))?;
    }
    Ok(())
}

/// Bind-mounts the namespace file `source` onto a new `dir/<kind>`.
fn bind_ns(d: &File, dir: &Path, kind: NamespaceKind, source: &str) -> Result<(), PinError> {
    let name = kind.proc_name();
    let path = dir.join(name);
    // O_EXCL: a file of ours, never one planted (or a symlink) in its place.
    let target = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o444)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(fd_path(d, name))
        .map_err(|source| PinError::CreateMountPoint {
            path: path.clone(),
            source,
        })?;
    mount(
        Some(source),
        &fd_path(&target, ""),
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|source| PinError::BindMount {
        path,
        namespace: kind,
        source,
    })
}

/// In a single-threaded process (a fork of one): new user, IPC and — with
/// `own_network` — network and UTS namespaces at once, the others owned by
/// the new user namespace, so the pod's root has its capabilities over them,
/// with `lo` up and the hostname set. Without `own_network` (a host-network
/// pod with its own user namespace) the process stays in the host's network
/// and UTS namespaces, as runc's containers do. The process has every
/// capability in the new user namespace, mapped or not; its parent writes
/// the id maps, then pins them with [`PinRequest::from_pid`].
pub fn unshare_pod_namespaces(hostname: Option<&str>, own_network: bool) -> Result<(), PinError> {
    let mut flags = CloneFlags::CLONE_NEWUSER | CloneFlags::CLONE_NEWIPC;
    if own_network {
        flags |= CloneFlags::CLONE_NEWNET | CloneFlags::CLONE_NEWUTS;
    }
    unshare(flags).map_err(|source| PinError::Unshare {
        namespace: NamespaceKind::User,
        source,
    })?;
    if !own_network {
        return Ok(());
    }
    crate::sys::interface_up(c"lo").map_err(PinError::LoopbackUp)?;
    if let Some(h) = hostname {
        nix::unistd::sethostname(h).map_err(|source| PinError::SetHostname {
            hostname: h.to_string(),
            source,
        })?;
    }
    Ok(())
}

/// Mounts the pod's shm tmpfs at `dir/shm`.
fn mount_shm(d: &File, dir: &Path, size: u64) -> Result<PathBuf, PinError> {
    let path = dir.join(SHM);
    let mkpoint = |source| PinError::CreateMountPoint {
        path: path.clone(),
        source,
    };
    DirBuilder::new()
        .mode(0o755)
        .create(fd_path(d, SHM))
        .map_err(mkpoint)?;
    let target = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(fd_path(d, SHM))
        .map_err(mkpoint)?;
    mount(
        Some("shm"),
        &fd_path(&target, ""),
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some(format!("mode=1777,size={size}").as_str()),
    )
    .map_err(|source| PinError::MountShm {
        path: path.clone(),
        source,
    })?;
    Ok(path)
}

/// Unmounts (`MNT_DETACH`) every pinned namespace file and the shm mount in
/// `dir`, removes them and then `dir`. Idempotent: a missing `dir` or
/// missing pieces are fine (a crash may have left half of a pod). Never
/// touches anything outside `dir`: a `dir` that is a symlink is refused,
/// nothing in it is followed, and files of other names are left (then `dir`
/// is not empty and its removal fails).
///
/// A namespace lives on while a process is in it or another mount of its
/// file exists (e.g. a copy propagated into another mount namespace).
pub fn unpin(dir: &Path) -> Result<(), PinError> {
    let d = match open_dir(dir) {
        Ok(d) => d,
        Err(PinError::OpenDir { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
            return Ok(())
        }
        Err(e) => return Err(e),
    };
    clear(&d, dir)?;
    drop(d);
    match std::fs::remove_dir(dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(PinError::Remove {
            path: dir.to_path_buf(),
            source: e,
        }),
        _ => Ok(()),
    }
}

/// Unmounts and removes whatever of ours is in `d`.
fn clear(d: &File, dir: &Path) -> Result<(), PinError> {
    let names = KINDS.iter().map(|k| k.proc_name()).chain([SHM]);
    for name in names {
        // Stacked mounts come off one at a time; 8 is far more than pin makes.
        for _ in 0..8 {
            match umount2(
                &fd_path(d, name),
                MntFlags::MNT_DETACH | MntFlags::UMOUNT_NOFOLLOW,
            ) {
                Ok(()) => continue,
                // Not a mount point (any more), or not there at all.
                Err(Errno::EINVAL | Errno::ENOENT) => break,
                Err(source) => {
                    return Err(PinError::Unmount {
                        path: dir.join(name),
                        source,
                    })
                }
            }
        }
        let flag = if name == SHM {
            UnlinkatFlags::RemoveDir
        } else {
            UnlinkatFlags::NoRemoveDir
        };
        match unlinkat(Some(d.as_raw_fd()), name, flag) {
            Ok(()) | Err(Errno::ENOENT) => {}
            Err(e) => {
                return Err(PinError::Remove {
                    path: dir.join(name),
                    source: e.into(),
                })
            }
        }
    }
    Ok(())
}

/// Whether `path` is a bind-mounted namespace file of kind `kind` (asked of
/// the kernel with `NS_GET_NSTYPE`) — for recovery checks after a daemon
/// restart. A `/proc/PID/ns/*` symlink is not one (it is not followed), nor
/// is anything that is not on nsfs (opened only with `O_PATH` to check, so
/// no FIFO or device is ever really opened).
pub fn is_pinned(path: &Path, kind: NamespaceKind) -> bool {
    let Ok(f) = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
    else {
        return false;
    };
    match nix::sys::statfs::fstatfs(&f) {
        Ok(fs) if fs.filesystem_type().0 == NSFS_MAGIC => {}
        _ => return false,
    }
    // The ioctl needs a real open file: reopen the very same inode.
    let Ok(f) = File::open(fd_path(&f, "")) else {
        return false;
    };
    crate::sys::ns_type(f.as_fd()).is_ok_and(|t| t == kind.clone_flag())
}

/// Opens `dir` as a directory, refusing a symlink.
fn open_dir(dir: &Path) -> Result<File, PinError> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(dir)
        .map_err(|source| PinError::OpenDir {
            path: dir.to_path_buf(),
            source,
        })
}

/// `/proc/self/fd/N/name`: `name` inside the very directory (or, with an
/// empty name, the very file) `f` holds, whatever its path has become.
fn fd_path(f: &File, name: &str) -> PathBuf {
    let p = PathBuf::from(format!("/proc/self/fd/{}", f.as_raw_fd()));
    if name.is_empty() {
        p
    } else {
        p.join(name)
    }
}
