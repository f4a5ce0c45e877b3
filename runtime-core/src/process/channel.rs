//! The typed message protocol between the runtime and the init it starts,
//! over berth's one channel ([`crate::ipc`]): a `SOCK_SEQPACKET` socketpair,
//! fds passed by `SCM_RIGHTS`. More fds than [`MAX_FDS`] follow in
//! [`ToInit::MoreFds`] messages.

use std::collections::BTreeMap;
use std::os::fd::RawFd;

use serde::{Deserialize, Serialize};

use crate::config::{Config, NamespaceKind};
use crate::process::ProcessSpec;

pub(crate) use crate::ipc::{Channel, ChannelError, MAX_FDS};

/// What the bootstrap is asked to do.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Task {
    /// Become the init of a new container. fds: `[start listener]`.
    Init { config: Box<Config> },
    /// Run another process in a running container.
    Exec { config: Box<Config> },
}

/// The first message from the runtime.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Bootstrap {
    pub task: Task,
    pub process: ProcessSpec,
    /// Number of extra fds the process gets as 3, 4, ... (they sit at
    /// `FIRST_EXTRA_FD..` in the bootstrap).
    pub extra_fds: usize,
    /// Namespaces to join: kind → index into the fds of this message.
    pub join: BTreeMap<NamespaceKind, usize>,
    /// `CLONE_NEW*` flags of namespaces to create (user excluded).
    pub clone_flags: i32,
    /// Create a new user namespace (the runtime then writes the id maps).
    pub new_user_ns: bool,
    /// A joined user namespace and idmapped mounts: once in it, ask the
    /// runtime for the idmapped trees ([`FromInit::NeedIdTrees`]).
    #[serde(default)]
    pub idmap_in_joined_userns: bool,
    /// Index of the start listener in the fds (init only).
    pub listener: Option<usize>,
    /// The container's state for the init's hooks (init with hooks only);
    /// the init fills in its pid.
    #[serde(default)]
    pub hook_state: Option<crate::hooks::HookState>,
}

/// Messages to the bootstrap.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum ToInit {
    Bootstrap(Box<Bootstrap>),
    /// The runtime wrote the uid/gid maps of the new user namespace, and
    /// made the idmapped mount trees (fds passed with the message).
    IdMapsWritten(IdmappedTrees),
    /// More fds of the message before, which had more than [`MAX_FDS`]
    /// (an overlay of many idmapped layers).
    MoreFds,
    /// The `prestart` and `createRuntime` hooks ran: go on.
    HooksDone,
}

/// Which fds of an `IdMapsWritten` message are which idmapped trees.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct IdmappedTrees {
    /// The rootfs tree.
    pub rootfs: Option<usize>,
    /// `(index into config.mounts, fd index)`.
    pub mounts: Vec<(usize, usize)>,
    /// Overlay layers: `(path, fd index)` for each lowerdir and the parent of
    /// upperdir/workdir.
    pub layers: Vec<(std::path::PathBuf, usize)>,
    /// All the fds: [`MAX_FDS`] come with the message, the rest follow in
    /// [`ToInit::MoreFds`] messages.
    #[serde(default)]
    pub fds: usize,
}

/// Messages from the bootstrap and the init.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum FromInit {
    /// A new user namespace was created: write its id maps.
    NeedIdMaps,
    /// The bootstrap joined its user namespace: make the idmapped trees
    /// (answered with `IdMapsWritten`, no maps written).
    NeedIdTrees,
    /// The container's process was created with this host pid.
    Child { pid: i32 },
    /// The master side of the process's pty (passed with the message).
    Console,
    /// Every mount is in place, `pivot_root` is next: run the `prestart`
    /// and `createRuntime` hooks (answered with `HooksDone`).
    CreateHooks,
    /// Setup is complete; the init waits on the start socket.
    Ready,
    /// A step failed.
    Error(InitFailure),
}

/// A failure inside the init, reported to the runtime.
#[derive(Debug, Clone, Serialize, Deserialize, thiserror::Error)]
#[error("{step}: {message}")]
pub struct InitFailure {
    /// The setup step that failed.
    pub step: String,
    /// What happened, with the kernel's error.
    pub message: String,
}

impl InitFailure {
    /// A failure of `step`.
    pub(crate) fn at(step: &str, e: impl std::fmt::Display) -> InitFailure {
        InitFailure {
            step: step.to_string(),
            message: e.to_string(),
        }
    }
}

/// The fd of the bootstrap socket in the bootstrap process.
pub(crate) const INIT_SOCKET_FD: RawFd = 3;
/// First fd of the process's extra fds in the bootstrap process.
pub(crate) const FIRST_EXTRA_FD: RawFd = 4;
