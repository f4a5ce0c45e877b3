//! The typed message protocol between the runtime and the init it starts,
//! over a `SOCK_SEQPACKET` socketpair (one datagram per message), with fds
//! passed by `SCM_RIGHTS`.

use std::collections::BTreeMap;
use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::cmsg_space;
use nix::sys::socket::{
    recvmsg, sendmsg, socketpair, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags,
    SockFlag, SockType,
};
use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::config::{Config, NamespaceKind};
use crate::process::ProcessSpec;

/// Largest message accepted (a config with thousands of mounts fits).
const MAX_MESSAGE: usize = 1 << 20;
/// Most fds passed with one message (the kernel's `SCM_MAX_FD` is 253).
/// More go in [`ToInit::MoreFds`] messages.
pub(crate) const MAX_FDS: usize = 32;

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

/// The fd of the bootstrap socket in the bootstrap process.
pub(crate) const INIT_SOCKET_FD: RawFd = 3;
/// First fd of the process's extra fds in the bootstrap process.
pub(crate) const FIRST_EXTRA_FD: RawFd = 4;

/// One end of the channel.
#[derive(Debug)]
pub(crate) struct Channel {
    fd: OwnedFd,
}

/// A channel failure.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    /// The socket failed.
    #[error("bootstrap channel I/O")]
    Io(#[source] nix::Error),
    /// The peer closed the channel.
    #[error("the other end closed the bootstrap channel")]
    Closed,
    /// A message did not decode.
    #[error("bad message on the bootstrap channel: {0}")]
    Decode(String),
    /// A message was too big.
    #[error("bootstrap message of {0} bytes exceeds the limit")]
    TooBig(usize),
}

impl Channel {
    /// A connected pair (parent end, child end), close-on-exec.
    pub fn pair() -> Result<(Channel, OwnedFd), ChannelError> {
        let (a, b) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .map_err(ChannelError::Io)?;
        Ok((Channel { fd: a }, b))
    }

    /// Wraps an fd (the init's end).
    pub fn from_fd(fd: OwnedFd) -> Self {
        Self { fd }
    }

    /// Moves the socket to an fd number ≥ `min` (close-on-exec), freeing its
    /// old number.
    pub fn relocate_above(&mut self, min: RawFd) -> nix::Result<()> {
        if self.fd.as_raw_fd() >= min {
            return Ok(());
        }
        let new = nix::fcntl::fcntl(
            self.fd.as_raw_fd(),
            nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(min),
        )?;
        // SAFETY: fcntl returned a new fd that we own; the old one is dropped.
        self.fd = unsafe { OwnedFd::from_raw_fd(new) };
        Ok(())
    }

    /// Sends `msg` with `fds`.
    pub fn send<T: Serialize>(&self, msg: &T, fds: &[BorrowedFd<'_>]) -> Result<(), ChannelError> {
        let bytes = serde_json::to_vec(msg).map_err(|e| ChannelError::Decode(e.to_string()))?;
        if bytes.len() > MAX_MESSAGE {
            return Err(ChannelError::TooBig(bytes.len()));
        }
        let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
        let cmsg = [ControlMessage::ScmRights(&raw)];
        let cmsgs: &[ControlMessage] = if raw.is_empty() { &[] } else { &cmsg };
        loop {
            match sendmsg::<()>(
                self.fd.as_raw_fd(),
                &[IoSlice::new(&bytes)],
                cmsgs,
                MsgFlags::MSG_NOSIGNAL,
                None,
            ) {
                Ok(_) => return Ok(()),
                Err(nix::Error::EINTR) => continue,
                Err(nix::Error::EPIPE) | Err(nix::Error::ECONNRESET) => {
                    return Err(ChannelError::Closed)
                }
                Err(e) => return Err(ChannelError::Io(e)),
            }
        }
    }

    /// Receives one message and the fds that came with it.
    pub fn recv<T: DeserializeOwned>(&self) -> Result<(T, Vec<OwnedFd>), ChannelError> {
        let mut buf = vec![0u8; MAX_MESSAGE];
        let mut cmsg_buf = cmsg_space!([RawFd; MAX_FDS]);
        let (len, fds, truncated) = loop {
            let mut iov = [IoSliceMut::new(&mut buf)];
            match recvmsg::<()>(
                self.fd.as_raw_fd(),
                &mut iov,
                Some(&mut cmsg_buf),
                MsgFlags::MSG_CMSG_CLOEXEC,
            ) {
                Ok(msg) => {
                    let mut fds = Vec::new();
                    for c in msg.cmsgs().map_err(ChannelError::Io)? {
                        if let ControlMessageOwned::ScmRights(raw) = c {
                            for fd in raw {
                                // SAFETY: SCM_RIGHTS gave us new fds that we own.
                                fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
                            }
                        }
                    }
                    let truncated = msg
                        .flags
                        .intersects(MsgFlags::MSG_TRUNC | MsgFlags::MSG_CTRUNC);
                    break (msg.bytes, fds, truncated);
                }
                Err(nix::Error::EINTR) => continue,
                Err(nix::Error::ECONNRESET) => return Err(ChannelError::Closed),
                Err(e) => return Err(ChannelError::Io(e)),
            }
        };
        if truncated {
            return Err(ChannelError::TooBig(len));
        }
        if len == 0 {
            return Err(ChannelError::Closed);
        }
        let msg =
            serde_json::from_slice(&buf[..len]).map_err(|e| ChannelError::Decode(e.to_string()))?;
        Ok((msg, fds))
    }
}
