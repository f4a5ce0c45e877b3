//! The one inter-process channel berth uses at every process boundary:
//! typed messages over a `SOCK_SEQPACKET` unix socket (one datagram per
//! message, so no framing of our own), serialized as JSON, with file
//! descriptors passed by `SCM_RIGHTS`, and a size limit on what is read.
//!
//! Used between the runtime and the init it starts (`process::channel`),
//! between berth's daemon and its monitor zygote, and between the daemon
//! and each container's monitor (its task socket): a [`Listener`] bound to a
//! path, [`Channel::connect`] to it.
//!
//! Every message is read whole or refused: a datagram larger than the
//! channel's limit is consumed and reported as [`ChannelError::TooBig`]
//! without allocating its size; truncated control data (more descriptors
//! than [`MAX_FDS`]) is an error too, and the descriptors that did arrive
//! are closed.

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::cmsg_space;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{
    accept4, bind, connect, getsockopt, listen, recv, recvmsg, sendmsg, socket, socketpair,
    sockopt, AddressFamily, Backlog, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag,
    SockType, UnixAddr,
};
use serde::{de::DeserializeOwned, Serialize};

/// The default limit on one message (a config with thousands of mounts
/// fits; so does an exec of the largest command line `execve` takes).
pub const DEFAULT_MAX_MESSAGE: usize = 4 << 20;

/// Most descriptors passed with one message (the kernel's `SCM_MAX_FD` is
/// 253); a protocol that passes more splits them over messages.
pub const MAX_FDS: usize = 32;

/// A channel failure.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    /// The socket failed.
    #[error("channel I/O")]
    Io(#[source] nix::Error),
    /// The peer closed the channel.
    #[error("the other end closed the channel")]
    Closed,
    /// A message did not encode or decode.
    #[error("bad message on the channel: {0}")]
    Decode(String),
    /// A message was larger than the limit (or came with more descriptors
    /// than [`MAX_FDS`]).
    #[error("message of {0} bytes exceeds the channel's limit")]
    TooBig(usize),
    /// Nothing came within the time asked for.
    #[error("no message within {0:?}")]
    Timeout(Duration),
    /// The peer is not the user this process runs as.
    #[error("peer runs as uid {0}, not as this process's user")]
    Peer(u32),
}

/// One end of a connected channel.
#[derive(Debug)]
pub struct Channel {
    fd: OwnedFd,
    max: usize,
}

impl Channel {
    /// A connected pair (this end, the other end as a plain fd to hand to
    /// a child), both close-on-exec.
    pub fn pair() -> Result<(Channel, OwnedFd), ChannelError> {
        let (a, b) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .map_err(ChannelError::Io)?;
        raise_sndbuf(&a);
        raise_sndbuf(&b);
        Ok((Channel::from_fd(a), b))
    }

    /// Connects to the [`Listener`] at `path`. `ECONNREFUSED` (nobody
    /// listens there any more) and `ENOENT` come back as [`ChannelError::Io`]
    /// with that errno: see [`ChannelError::is_gone`].
    pub fn connect(path: &Path) -> Result<Channel, ChannelError> {
        let fd = socket(
            AddressFamily::Unix,
            SockType::SeqPacket,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .map_err(ChannelError::Io)?;
        raise_sndbuf(&fd);
        let short = socket_path(path).map_err(|e| ChannelError::Io(io_errno(&e)))?;
        let addr = UnixAddr::new(short.as_path()).map_err(ChannelError::Io)?;
        loop {
            match connect(fd.as_raw_fd(), &addr) {
                Ok(()) => return Ok(Channel::from_fd(fd)),
                Err(nix::Error::EINTR) => continue,
                Err(e) => return Err(ChannelError::Io(e)),
            }
        }
    }

    /// Wraps a connected `SOCK_SEQPACKET` socket.
    pub fn from_fd(fd: OwnedFd) -> Self {
        Self {
            fd,
            max: DEFAULT_MAX_MESSAGE,
        }
    }

    /// The same channel with another limit on received messages.
    pub fn with_limit(mut self, max: usize) -> Self {
        self.max = max;
        self
    }

    /// The socket itself.
    pub fn into_fd(self) -> OwnedFd {
        self.fd
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

    /// The uid of the process at the other end (`SO_PEERCRED`).
    pub fn peer_uid(&self) -> Result<u32, ChannelError> {
        getsockopt(&self.fd, sockopt::PeerCredentials)
            .map(|c| c.uid())
            .map_err(ChannelError::Io)
    }

    /// Refuses a peer that is not this process's own user.
    pub fn require_same_user(&self) -> Result<(), ChannelError> {
        let uid = self.peer_uid()?;
        if uid != nix::unistd::geteuid().as_raw() {
            return Err(ChannelError::Peer(uid));
        }
        Ok(())
    }

    /// Sends `msg` with `fds` (blocking while the peer's queue is full).
    pub fn send<T: Serialize>(&self, msg: &T, fds: &[BorrowedFd<'_>]) -> Result<(), ChannelError> {
        self.send_flags(msg, fds, MsgFlags::empty())
    }

    /// Sends `msg` with `fds`, or fails with `EAGAIN` at once when the
    /// peer's queue is full (a server must not block on a client that does
    /// not read).
    pub fn try_send<T: Serialize>(
        &self,
        msg: &T,
        fds: &[BorrowedFd<'_>],
    ) -> Result<(), ChannelError> {
        self.send_flags(msg, fds, MsgFlags::MSG_DONTWAIT)
    }

    fn send_flags<T: Serialize>(
        &self,
        msg: &T,
        fds: &[BorrowedFd<'_>],
        flags: MsgFlags,
    ) -> Result<(), ChannelError> {
        let bytes = serde_json::to_vec(msg).map_err(|e| ChannelError::Decode(e.to_string()))?;
        // (The receiver applies its own limit; this is the most any
        // receiver takes.)
        if bytes.len() > DEFAULT_MAX_MESSAGE || fds.len() > MAX_FDS {
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
                flags | MsgFlags::MSG_NOSIGNAL,
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

    /// Receives one message and the fds that came with it (blocking).
    pub fn recv<T: DeserializeOwned>(&self) -> Result<(T, Vec<OwnedFd>), ChannelError> {
        self.recv_flags(MsgFlags::empty())
    }

    /// Like [`recv`](Self::recv), waiting at most `timeout` for the message
    /// to arrive (`None`: no limit).
    pub fn recv_timeout<T: DeserializeOwned>(
        &self,
        timeout: Option<Duration>,
    ) -> Result<(T, Vec<OwnedFd>), ChannelError> {
        if let Some(t) = timeout {
            let deadline = Instant::now() + t;
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                let ms = PollTimeout::try_from(left).unwrap_or(PollTimeout::MAX);
                let mut fds = [PollFd::new(self.fd.as_fd(), PollFlags::POLLIN)];
                match poll(&mut fds, ms) {
                    Ok(0) => return Err(ChannelError::Timeout(t)),
                    Ok(_) => break,
                    Err(nix::Error::EINTR) => continue,
                    Err(e) => return Err(ChannelError::Io(e)),
                }
            }
        }
        self.recv()
    }

    /// Receives one message if one is queued (`Ok(None)` otherwise).
    pub fn try_recv<T: DeserializeOwned>(&self) -> Result<Option<(T, Vec<OwnedFd>)>, ChannelError> {
        match self.recv_flags(MsgFlags::MSG_DONTWAIT) {
            Ok(m) => Ok(Some(m)),
            Err(ChannelError::Io(nix::Error::EAGAIN)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn recv_flags<T: DeserializeOwned>(
        &self,
        flags: MsgFlags,
    ) -> Result<(T, Vec<OwnedFd>), ChannelError> {
        // The datagram's length, without taking it: the buffer is sized to
        // it (a small message does not cost the limit in memory).
        let mut probe = [0u8; 1];
        let len = loop {
            match recv(
                self.fd.as_raw_fd(),
                &mut probe,
                flags | MsgFlags::MSG_PEEK | MsgFlags::MSG_TRUNC,
            ) {
                Ok(n) => break n,
                Err(nix::Error::EINTR) => continue,
                Err(nix::Error::ECONNRESET) => return Err(ChannelError::Closed),
                Err(e) => return Err(ChannelError::Io(e)),
            }
        };
        let mut buf = vec![0u8; len.min(self.max).max(1)];
        let mut cmsg_buf = cmsg_space!([RawFd; MAX_FDS]);
        let (got, fds, truncated) = loop {
            let mut iov = [IoSliceMut::new(&mut buf)];
            match recvmsg::<()>(
                self.fd.as_raw_fd(),
                &mut iov,
                Some(&mut cmsg_buf),
                flags | MsgFlags::MSG_CMSG_CLOEXEC,
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
        if truncated || len > self.max {
            return Err(ChannelError::TooBig(len.max(got)));
        }
        if got == 0 {
            return Err(ChannelError::Closed);
        }
        let msg =
            serde_json::from_slice(&buf[..got]).map_err(|e| ChannelError::Decode(e.to_string()))?;
        Ok((msg, fds))
    }
}

/// Receives one message and the descriptors sent with it (`SCM_RIGHTS`,
/// at most [`MAX_FDS`], close-on-exec) from any unix socket: for peers
/// that speak their own protocol rather than [`Channel`]'s, such as an
/// OCI runtime handing over a terminal on `--console-socket`. Returns the
/// bytes read into `buf` and the descriptors.
pub fn recv_with_fds(sock: BorrowedFd<'_>, buf: &mut [u8]) -> nix::Result<(usize, Vec<OwnedFd>)> {
    let mut cmsg_buf = cmsg_space!([RawFd; MAX_FDS]);
    loop {
        let mut iov = [IoSliceMut::new(buf)];
        match recvmsg::<()>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg_buf),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Ok(msg) => {
                let mut fds = Vec::new();
                for c in msg.cmsgs()? {
                    if let ControlMessageOwned::ScmRights(raw) = c {
                        for fd in raw {
                            // SAFETY: SCM_RIGHTS gave us new fds that we own.
                            fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
                        }
                    }
                }
                return Ok((msg.bytes, fds));
            }
            Err(nix::Error::EINTR) => continue,
            Err(e) => return Err(e),
        }
    }
}

impl AsFd for Channel {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for Channel {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl ChannelError {
    /// The peer is gone: closed, reset, or (on connect) nobody listens.
    pub fn is_gone(&self) -> bool {
        matches!(
            self,
            ChannelError::Closed
                | ChannelError::Io(
                    nix::Error::ECONNREFUSED | nix::Error::ENOENT | nix::Error::ECONNRESET
                )
        )
    }
}

/// A listening `SOCK_SEQPACKET` socket at a path, non-blocking.
#[derive(Debug)]
pub struct Listener {
    fd: OwnedFd,
}

impl Listener {
    /// Binds `path` (replacing a stale socket file there) with `mode`, and
    /// listens. The socket is made in the directory's own permissions; the
    /// mode is set before anyone can connect (`listen` comes last).
    pub fn bind(path: &Path, mode: u32) -> Result<Listener, ChannelError> {
        let fd = socket(
            AddressFamily::Unix,
            SockType::SeqPacket,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            None,
        )
        .map_err(ChannelError::Io)?;
        match std::fs::symlink_metadata(path) {
            Ok(m) if std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()) => {
                let _ = std::fs::remove_file(path);
            }
            _ => {}
        }
        let short = socket_path(path).map_err(|e| ChannelError::Io(io_errno(&e)))?;
        let addr = UnixAddr::new(short.as_path()).map_err(ChannelError::Io)?;
        bind(fd.as_raw_fd(), &addr).map_err(ChannelError::Io)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .map_err(|e| ChannelError::Io(io_errno(&e)))?;
        listen(&fd, Backlog::new(64).unwrap_or(Backlog::MAXCONN)).map_err(ChannelError::Io)?;
        Ok(Listener { fd })
    }

    /// Takes one pending connection (`Ok(None)`: none is pending).
    pub fn accept(&self) -> Result<Option<Channel>, ChannelError> {
        loop {
            match accept4(self.fd.as_raw_fd(), SockFlag::SOCK_CLOEXEC) {
                Ok(fd) => {
                    // SAFETY: accept4 returned a new connected socket that
                    // nothing else owns.
                    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
                    raise_sndbuf(&fd);
                    return Ok(Some(Channel::from_fd(fd)));
                }
                Err(nix::Error::EINTR) => continue,
                Err(nix::Error::EAGAIN) => return Ok(None),
                // The client gave up before we took it: nothing to serve.
                Err(nix::Error::ECONNABORTED) => continue,
                Err(e) => return Err(ChannelError::Io(e)),
            }
        }
    }

    /// The socket, to `poll` it.
    pub fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// The longest socket path the kernel takes (`sun_path` less its NUL).
const MAX_SOCKET_PATH: usize = 107;

/// A path to a unix socket short enough for a socket address
/// (`sun_path`, 108 bytes): the path itself, or the same file reached
/// through `/proc/self/fd/<dir>/<name>` of its opened directory, which this
/// value keeps open while it lives.
#[derive(Debug)]
pub struct SocketPath {
    _dir: Option<std::fs::File>,
    path: std::path::PathBuf,
}

impl SocketPath {
    /// The path to hand to `bind` or `connect`.
    pub fn as_path(&self) -> &Path {
        &self.path
    }
}

/// [`SocketPath`] of `path` (`ENAMETOOLONG` when it has no parent and name).
pub fn socket_path(path: &Path) -> std::io::Result<SocketPath> {
    if path.as_os_str().len() <= MAX_SOCKET_PATH {
        return Ok(SocketPath {
            _dir: None,
            path: path.to_path_buf(),
        });
    }
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(std::io::Error::from_raw_os_error(nix::libc::ENAMETOOLONG));
    };
    let d = std::fs::File::open(dir)?;
    let path = Path::new(&format!("/proc/self/fd/{}", d.as_raw_fd())).join(name);
    Ok(SocketPath {
        _dir: Some(d),
        path,
    })
}

/// A datagram must fit the sender's send buffer whole, and the default
/// (`net.core.wmem_default`, about 200 KiB) is smaller than a message may
/// be: raise it to the limit (forced where we may, else as far as
/// `net.core.wmem_max` lets us). Memory is charged only while a message is
/// queued, not reserved.
fn raise_sndbuf(fd: &OwnedFd) {
    let want = DEFAULT_MAX_MESSAGE + (64 << 10);
    if nix::sys::socket::setsockopt(fd, sockopt::SndBufForce, &want).is_err() {
        let _ = nix::sys::socket::setsockopt(fd, sockopt::SndBuf, &want);
    }
}

fn io_errno(e: &std::io::Error) -> nix::Error {
    nix::Error::from_raw(e.raw_os_error().unwrap_or(nix::libc::EIO))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    enum Msg {
        Hello { version: u32 },
        Blob(String),
    }

    #[test]
    fn typed_messages_and_fds_cross_a_pair() {
        let (a, b) = Channel::pair().unwrap();
        let b = Channel::from_fd(b);
        let f = tempfile::tempfile().unwrap();
        a.send(&Msg::Hello { version: 3 }, &[f.as_fd()]).unwrap();
        let (m, fds): (Msg, _) = b.recv().unwrap();
        assert_eq!(m, Msg::Hello { version: 3 });
        assert_eq!(fds.len(), 1);
        drop(a);
        assert!(matches!(b.recv::<Msg>(), Err(ChannelError::Closed)));
    }

    #[test]
    fn an_oversize_message_is_refused_and_the_next_one_still_reads() {
        let (a, b) = Channel::pair().unwrap();
        let b = Channel::from_fd(b).with_limit(1024);
        a.send(&Msg::Blob("x".repeat(4096)), &[]).unwrap();
        a.send(&Msg::Hello { version: 1 }, &[]).unwrap();
        assert!(matches!(b.recv::<Msg>(), Err(ChannelError::TooBig(n)) if n > 4096));
        let (m, _): (Msg, _) = b.recv().unwrap();
        assert_eq!(m, Msg::Hello { version: 1 });
    }

    #[test]
    fn listener_connect_timeout_and_refused() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("task.sock");
        let l = Listener::bind(&path, 0o600).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(l.accept().unwrap().is_none());
        let c = Channel::connect(&path).unwrap();
        let s = l.accept().unwrap().expect("pending");
        s.require_same_user().unwrap();
        assert!(matches!(
            c.recv_timeout::<Msg>(Some(Duration::from_millis(20))),
            Err(ChannelError::Timeout(_))
        ));
        assert!(s.try_recv::<Msg>().unwrap().is_none());
        c.send(&Msg::Hello { version: 2 }, &[]).unwrap();
        assert!(s.try_recv::<Msg>().unwrap().is_some());
        drop(l);
        let err = Channel::connect(&path).unwrap_err();
        assert!(err.is_gone(), "{err:?}");
        let err = Channel::connect(&d.path().join("none")).unwrap_err();
        assert!(err.is_gone(), "{err:?}");

        // A path longer than a socket address takes still works.
        let deep = d.path().join("d".repeat(100));
        std::fs::create_dir(&deep).unwrap();
        let long = deep.join("task.sock");
        let l = Listener::bind(&long, 0o600).unwrap();
        let _c = Channel::connect(&long).unwrap();
        assert!(l.accept().unwrap().is_some());
    }
}
