//! `--console-socket`: the runtime connects to a socket of ours and sends
//! the container's terminal master with `SCM_RIGHTS` (runc's protocol,
//! which crun and youki follow).

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

/// A listening console socket (its file is removed when dropped).
#[derive(Debug)]
pub struct ConsoleSocket {
    listener: UnixListener,
    path: PathBuf,
}

impl ConsoleSocket {
    /// Listens on `path` (mode 0600: only root may hand us a terminal),
    /// however long it is (the runtime is given the name relative to its
    /// working directory, the bundle).
    pub fn bind(path: &Path) -> std::io::Result<Self> {
        let _ = std::fs::remove_file(path);
        let short = berth_core::ipc::socket_path(path)?;
        let listener = UnixListener::bind(short.as_path())?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        Ok(Self {
            listener,
            path: path.to_path_buf(),
        })
    }

    /// The terminal the runtime sent (it has exited by now, so its
    /// connection waits in the backlog; none there is an error).
    pub fn receive(self) -> std::io::Result<OwnedFd> {
        self.listener.set_nonblocking(true)?;
        let (conn, _) = self.listener.accept().map_err(|e| match e.kind() {
            std::io::ErrorKind::WouldBlock => {
                std::io::Error::other("the runtime did not connect to the console socket")
            }
            _ => e,
        })?;
        conn.set_nonblocking(false)?;
        let mut buf = [0u8; 4096];
        let (_, fds) =
            berth_core::ipc::recv_with_fds(conn.as_fd(), &mut buf).map_err(std::io::Error::from)?;
        let mut fds = fds.into_iter();
        fds.next()
            .ok_or_else(|| std::io::Error::other("the runtime sent no terminal"))
    }
}

impl Drop for ConsoleSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}
